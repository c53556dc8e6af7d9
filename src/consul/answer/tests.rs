//! Answer-table tests: expected answers are zone-file text, as in CoreDNS's lookup tests.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, Query as HQuery};
use hickory_proto::rr::{Name, RecordType};

use super::*;
use crate::config::{DnsConfig, ServiceTtl, SoaConfig};
use crate::consul::catalog::{Check, Node, Service, Weights};

pub(crate) fn dns_config() -> DnsConfig {
    DnsConfig {
        node_ttl: 0,
        service_ttl: ServiceTtl::default(),
        only_passing: false,
        udp_answer_limit: 3,
        a_record_limit: 0,
        enable_truncate: true,
        enable_additional_node_meta_txt: true,
        filter_tags: vec!["nodns".into()],
        soa: SoaConfig {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        },
    }
}

pub(crate) fn entry(node: &str, node_addr: &str, svc: &str, addr: &str, port: u16) -> HealthEntry {
    HealthEntry {
        node: Arc::new(Node {
            node: node.into(),
            address: node_addr.into(),
            datacenter: "dc1".into(),
            ..Node::default()
        }),
        service: Service {
            id: format!("{svc}-{node}-{port}"),
            service: svc.into(),
            address: addr.into(),
            port,
            weights: Some(Weights {
                passing: 10,
                warning: 1,
            }),
            ..Service::default()
        },
        checks: vec![],
    }
}

fn with_check(mut e: HealthEntry, status: &str) -> HealthEntry {
    e.checks.push(Check {
        check_id: "c".into(),
        status: status.into(),
        ..Check::default()
    });
    e
}

fn with_tags(mut e: HealthEntry, tags: &[&str]) -> HealthEntry {
    e.service.tags = tags.iter().map(|t| t.to_string()).collect();
    e
}

pub(crate) fn catalog(entries: Vec<HealthEntry>) -> Catalog {
    let mut services: BTreeMap<String, Vec<HealthEntry>> = BTreeMap::new();
    for e in entries {
        services
            .entry(e.service.service.clone())
            .or_default()
            .push(e);
    }
    let mut c = Catalog {
        datacenter: "dc1".into(),
        services: services
            .into_iter()
            .map(|(k, v)| (k, Arc::from(v)))
            .collect(),
        ..Catalog::default()
    };
    c.index_nodes_from_services();
    c
}

struct Asked {
    msg: Message,
    len: usize,
}

fn ask_with(
    table: &AnswerTable,
    name: &str,
    rtype: RecordType,
    proto: Proto,
    edns: Option<u16>,
) -> Asked {
    let mut m = Message::query();
    m.metadata.id = 7;
    m.add_query(HQuery::query(Name::from_str(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    let mut bytes = m.to_vec().unwrap();
    // hickory writes question names in lowercase; put the test's case back.
    let mut pos = wire::HEADER_LEN;
    for label in name.split('.').filter(|l| !l.is_empty()) {
        bytes[pos + 1..pos + 1 + label.len()].copy_from_slice(label.as_bytes());
        pos += 1 + label.len();
    }
    let q = Query::parse(&bytes).unwrap();
    let mut buf = [0u8; 256];
    let dotted = wire::dotted_lower(q.qname, &mut buf).unwrap().to_vec();
    let (rel, domain) = if dotted == b"consul" {
        (&b""[..], 0)
    } else if let Some(rel) = dotted.strip_suffix(b".consul") {
        (rel, 0)
    } else {
        panic!("test names end in .consul");
    };
    let mut out = Vec::new();
    table.answer(&q, rel, domain, proto, &mut out);
    Asked {
        len: out.len(),
        msg: Message::from_vec(&out).unwrap(),
    }
}

fn ask(table: &AnswerTable, name: &str, rtype: RecordType) -> Message {
    ask_with(table, name, rtype, Proto::Tcp, None).msg
}

fn lines(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| {
            r.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

fn table(entries: Vec<HealthEntry>) -> AnswerTable {
    AnswerTable::build(
        Arc::new(catalog(entries)),
        &["consul".into()],
        &dns_config(),
    )
}

/// An update after one service changed rebuilds that service (and those naming hosts in the
/// zone) and shares every other service's answers with the previous table; its answers are
/// those of a full build, across services, node lookups and reverse names.
#[test]
fn update_reuses_unchanged_services_and_matches_a_full_build() {
    let domains: Vec<String> = vec!["consul".into()];
    let dns = dns_config();
    let alias = entry("n3", "10.0.0.3", "alias", "db.service.consul", 90);
    let before = catalog(vec![
        entry("n1", "10.0.0.1", "web", "", 80),
        entry("n2", "10.0.0.2", "web", "", 80),
        entry("n1", "10.0.0.1", "db", "10.0.1.1", 5432),
        entry("n2", "10.0.0.2", "Cache", "", 6379),
        alias,
    ]);
    let t1 = AnswerTable::build(Arc::new(before.clone()), &domains, &dns);

    // db: one instance goes critical, one is added; the web and cache `Arc`s stay shared.
    let mut after = before.clone();
    after.services.insert(
        "db".into(),
        Arc::from(vec![
            with_check(entry("n1", "10.0.0.1", "db", "10.0.1.1", 5432), "critical"),
            entry("n2", "10.0.0.2", "db", "10.0.1.2", 5432),
        ]),
    );
    after.services.insert(
        "new".into(),
        Arc::from(vec![entry("n4", "10.0.0.4", "new", "", 1)]),
    );
    after.index_nodes_from_services();
    let after = Arc::new(after);
    let t2 = AnswerTable::update(&t1, Arc::clone(&after), &domains, &dns);
    let full = AnswerTable::build(after, &domains, &dns);

    assert!(t2.shares_service(&t1, "web"), "unchanged service is reused");
    assert!(
        t2.shares_service(&t1, "cache"),
        "unchanged (mixed case) is reused"
    );
    assert!(!t2.shares_service(&t1, "db"), "changed service is rebuilt");
    assert!(
        !t2.shares_service(&t1, "alias"),
        "a host name in the zone is rebuilt"
    );
    assert!(
        !full.shares_service(&t1, "web"),
        "a full build shares nothing"
    );

    let questions = [
        ("web.service.consul.", RecordType::A),
        ("web.service.consul.", RecordType::SRV),
        ("db.service.consul.", RecordType::A),
        ("db.service.consul.", RecordType::SRV),
        ("cache.service.consul.", RecordType::A),
        ("alias.service.consul.", RecordType::A),
        ("alias.service.consul.", RecordType::ANY),
        ("new.service.consul.", RecordType::A),
        ("n4.node.consul.", RecordType::A),
        ("gone.service.consul.", RecordType::A),
    ];
    for (name, rt) in questions {
        let (a, b) = (ask(&t2, name, rt), ask(&full, name, rt));
        assert_eq!(
            a.metadata.response_code, b.metadata.response_code,
            "{name} {rt}"
        );
        assert_eq!(lines(&a.answers), lines(&b.answers), "{name} {rt}");
        assert_eq!(lines(&a.additionals), lines(&b.additionals), "{name} {rt}");
    }
    assert_eq!(
        ask(&t2, "db.service.consul.", RecordType::A).answers.len(),
        1
    );
    assert_eq!(
        ask(&t2, "alias.service.consul.", RecordType::A)
            .answers
            .len(),
        2
    );
    for table in [&t2, &full] {
        let mut m = Message::query();
        m.add_query(HQuery::query(
            Name::from_str("2.1.0.10.in-addr.arpa.").unwrap(),
            RecordType::PTR,
        ));
        let bytes = m.to_vec().unwrap();
        let q = Query::parse(&bytes).unwrap();
        let mut out = Vec::new();
        assert!(
            table
                .answer_reverse(&q, b"2.1.0.10.in-addr.arpa", &mut out)
                .is_some()
        );
    }

    // Removing a service drops its answers.
    let mut gone = (*t2.catalog).clone();
    gone.services.remove("web");
    let t3 = AnswerTable::update(&t2, Arc::new(gone), &domains, &dns);
    assert_eq!(t3.service_count(), t2.service_count() - 1);
    assert!(t3.shares_service(&t2, "cache"));
    assert_eq!(
        ask(&t3, "web.service.consul.", RecordType::A)
            .metadata
            .response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
}

/// A, SRV with additional A, ANY and NODATA for a service with two IP instances.
#[test]
fn service_records() {
    let t = table(vec![
        entry("n1", "10.0.0.1", "web", "", 80),
        entry("n2", "10.0.0.2", "web", "10.0.0.22", 8080),
    ]);
    let m = ask(&t, "web.service.consul.", RecordType::A);
    assert!(m.metadata.authoritative);
    assert_eq!(
        lines(&m.answers),
        vec![
            "web.service.consul. 0 IN A 10.0.0.1",
            "web.service.consul. 0 IN A 10.0.0.22"
        ]
    );
    let m = ask(&t, "web.service.consul.", RecordType::SRV);
    assert_eq!(
        lines(&m.answers),
        vec![
            "web.service.consul. 0 IN SRV 1 10 80 n1.node.dc1.consul.",
            "web.service.consul. 0 IN SRV 1 10 8080 0a000016.addr.dc1.consul.",
        ]
    );
    assert_eq!(
        lines(&m.additionals),
        vec![
            "0a000016.addr.dc1.consul. 0 IN A 10.0.0.22",
            "n1.node.dc1.consul. 0 IN A 10.0.0.1",
        ]
    );
    let m = ask(&t, "web.service.consul.", RecordType::AAAA);
    assert_eq!(m.metadata.response_code.low(), 0);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1, "NODATA carries the SOA");
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
}

/// Critical instances and `nodns` instances are never answered; none left is NXDOMAIN.
#[test]
fn health_and_filter_tags() {
    let t = table(vec![
        with_check(entry("n1", "10.0.0.1", "web", "", 80), "critical"),
        with_check(entry("n2", "10.0.0.2", "web", "", 80), "warning"),
        with_tags(entry("n3", "10.0.0.3", "web", "", 80), &["NoDNS"]),
        with_check(entry("n4", "10.0.0.4", "dead", "", 80), "critical"),
        with_tags(entry("n5", "10.0.0.5", "standby", "", 80), &["nodns"]),
    ]);
    let m = ask(&t, "web.service.consul.", RecordType::ANY);
    assert_eq!(
        lines(&m.answers),
        vec!["web.service.consul. 0 IN A 10.0.0.2"]
    );
    let m = ask(&t, "web.service.consul.", RecordType::SRV);
    assert_eq!(
        lines(&m.answers),
        vec!["web.service.consul. 0 IN SRV 1 1 80 n2.node.dc1.consul."],
        "a warning instance advertises Weights.Warning"
    );
    for svc in ["dead", "standby", "nope"] {
        let m = ask(&t, &format!("{svc}.service.consul."), RecordType::A);
        assert_eq!(m.metadata.response_code.low(), 3, "{svc}");
        assert_eq!(m.authorities.len(), 1);
    }
}

/// Tag lookups in both grammars, case-insensitive, with the client's case echoed.
#[test]
fn tags_and_case() {
    let t = table(vec![
        with_tags(entry("n1", "10.0.0.1", "Db", "", 5432), &["Primary"]),
        entry("n2", "10.0.0.2", "db", "", 5432),
    ]);
    let m = ask(&t, "PRIMARY.dB.service.consul.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        vec!["PRIMARY.dB.service.consul. 0 IN A 10.0.0.1"]
    );
    let m = ask(&t, "_db._primary.consul.", RecordType::SRV);
    assert_eq!(m.answers.len(), 1);
    let m = ask(&t, "_db._tcp.service.dc1.consul.", RecordType::SRV);
    assert_eq!(
        m.answers.len(),
        2,
        "Db and db are one service to DNS, as in Consul's index"
    );
    let m = ask(&t, "replica.db.service.consul.", RecordType::A);
    assert_eq!(m.metadata.response_code.low(), 3);
    let m = ask(&t, "db.service.dc2.consul.", RecordType::A);
    assert_eq!(m.metadata.response_code.low(), 3, "unknown datacenter");
}

/// Consul's dedup: same IP once for A/ANY; same node and port once for SRV (§9 cases 31, 32).
#[test]
fn dedup() {
    let t = table(vec![
        entry("foo", "127.0.0.1", "db", "", 12345),
        entry("foo", "127.0.0.1", "db", "", 12346),
    ]);
    let m = ask(&t, "db.service.consul.", RecordType::ANY);
    assert_eq!(
        lines(&m.answers),
        vec!["db.service.consul. 0 IN A 127.0.0.1"]
    );
    let m = ask(&t, "db.service.consul.", RecordType::SRV);
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.additionals.len(), 2);
}

/// Non-EDNS UDP answers stop at udp_answer_limit with TC set; EDNS and TCP get everything;
/// rotation shows different first records.
#[test]
fn limits_truncation_and_rotation() {
    let entries = (1..=20)
        .map(|i| entry(&format!("n{i}"), &format!("10.0.1.{i}"), "big", "", 80))
        .collect();
    let t = table(entries);
    let plain = ask_with(&t, "big.service.consul.", RecordType::A, Proto::Udp, None);
    assert_eq!(plain.msg.answers.len(), 3);
    assert!(plain.msg.metadata.truncation);
    let edns = ask_with(
        &t,
        "big.service.consul.",
        RecordType::A,
        Proto::Udp,
        Some(1232),
    );
    assert_eq!(edns.msg.answers.len(), 20);
    assert!(!edns.msg.metadata.truncation);
    assert_eq!(edns.msg.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let srv = ask_with(
        &t,
        "big.service.consul.",
        RecordType::SRV,
        Proto::Udp,
        Some(600),
    );
    assert!(srv.len <= 600);
    assert!(srv.msg.metadata.truncation);
    assert_eq!(srv.msg.answers.len(), srv.msg.additionals.len());
    let firsts: std::collections::HashSet<String> = (0..10)
        .map(|_| ask(&t, "big.service.consul.", RecordType::A).answers[0].to_string())
        .collect();
    assert!(firsts.len() >= 2, "rotation changes the first record");
}

/// Node lookups: A with the TXT meta in additional, ANY with both in the answer, SRV empty.
#[test]
fn node_records() {
    let mut e = entry("foo", "127.0.0.1", "web", "", 80);
    let node = Arc::make_mut(&mut e.node);
    node.meta.insert("key".into(), "value".into());
    node.meta.insert("rfc1035-00".into(), "value0".into());
    let t = table(vec![e]);
    let m = ask(&t, "foo.node.consul.", RecordType::A);
    assert_eq!(lines(&m.answers), vec!["foo.node.consul. 0 IN A 127.0.0.1"]);
    assert_eq!(m.additionals.len(), 2);
    let m = ask(&t, "FOO.node.dc1.consul.", RecordType::ANY);
    assert_eq!(
        lines(&m.answers),
        vec![
            "FOO.node.dc1.consul. 0 IN A 127.0.0.1",
            "FOO.node.dc1.consul. 0 IN TXT key=value",
            "FOO.node.dc1.consul. 0 IN TXT value0",
        ]
    );
    let m = ask(&t, "foo.node.consul.", RecordType::SRV);
    assert_eq!(m.metadata.response_code.low(), 0);
    assert!(m.answers.is_empty() && m.authorities.is_empty());
    let m = ask(&t, "nofoo.node.dc1.consul.", RecordType::ANY);
    assert_eq!(m.metadata.response_code.low(), 3);
}

/// `.addr` decodes without the catalog; a mismatched type goes to additional (§9 61–63).
#[test]
fn addr_names() {
    let t = table(vec![]);
    let m = ask(&t, "7f000001.addr.dc1.consul.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        vec!["7f000001.addr.dc1.consul. 0 IN A 127.0.0.1"]
    );
    let m = ask(&t, "7f000001.addr.dc1.consul.", RecordType::SRV);
    assert!(m.answers.is_empty());
    assert_eq!(m.additionals.len(), 1);
    let m = ask(
        &t,
        "2607112040051808ffffffffffff200e.addr.consul.",
        RecordType::AAAA,
    );
    assert_eq!(
        lines(&m.answers),
        vec![
            "2607112040051808ffffffffffff200e.addr.consul. 0 IN AAAA 2607:1120:4005:1808:ffff:ffff:ffff:200e"
        ]
    );
}

/// Invalid shapes are NXDOMAIN with the SOA `ns.consul.`/`hostmaster.consul.` (§9 67, 68).
#[test]
fn invalid_names_and_soa() {
    let t = table(vec![entry("n1", "10.0.0.1", "web", "", 80)]);
    for name in [
        "consul.",
        "service.consul.",
        "node.consul.",
        "nonexisting.consul.",
    ] {
        let m = ask(&t, name, RecordType::A);
        assert_eq!(m.metadata.response_code.low(), 3, "{name}");
        let soa = lines(&m.authorities);
        assert_eq!(soa.len(), 1);
        assert!(
            soa[0].starts_with("consul. 0 IN SOA ns.consul. hostmaster.consul."),
            "{soa:?}"
        );
        assert!(soa[0].ends_with("3600 600 86400 0"), "{soa:?}");
    }
    let m = ask(&t, "anything.consul.", RecordType::SOA);
    assert_eq!(m.metadata.response_code.low(), 0);
    assert_eq!(m.answers.len(), 1);
}

/// RFC 1464 encoding of node meta (§9 case 65).
#[test]
fn meta_txt_encoding() {
    assert_eq!(encode_meta_txt("color", "blue"), "color=blue");
    assert_eq!(encode_meta_txt("a=a", "true"), "a`=a=true");
    assert_eq!(encode_meta_txt("abc ", "123 "), "abc` =123 ");
    assert_eq!(encode_meta_txt(" abc", " 321"), "` abc= 321");
    assert_eq!(encode_meta_txt("`a", "b"), "``a=b");
    assert_eq!(encode_meta_txt("novalue", ""), "novalue=");
    assert_eq!(encode_meta_txt("RFC1035-x", "bare"), "bare");
}

mod property {
    //! `nodns`: no A, AAAA, SRV, ANY, TXT, PTR or prepared-query answer ever contains a
    //! filter-tagged instance, whatever the catalog.

    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::consul::catalog::{PreparedQuery, QueryService, QueryTemplate};

    /// (service 0..3, filter-tagged, health 0..3, address kind 0..3, extra tag 0..3)
    type Spec = (u8, bool, u8, u8, u8);

    fn build(specs: &[Spec]) -> (Catalog, HashSet<String>, HashSet<IpAddr>) {
        let mut entries = Vec::new();
        let mut banned_names = HashSet::new();
        let mut banned_ips = HashSet::new();
        for (i, &(svc, tagged, health, kind, extra)) in specs.iter().enumerate() {
            let node_ip = format!("10.1.{}.{}", i / 200, i % 200 + 1);
            let svc_addr = match kind {
                0 => String::new(),
                1 => format!("10.2.{}.{}", i / 200, i % 200 + 1),
                _ => format!("fd00::{:x}", i + 1),
            };
            let mut e = entry(
                &format!("n{i}"),
                &node_ip,
                &format!("s{svc}"),
                &svc_addr,
                80 + i as u16,
            );
            let mut tags: Vec<String> = vec![["v1", "primary", "V1"][extra as usize % 3].into()];
            if tagged {
                tags.push(["nodns", "NoDNS"][i % 2].into());
            }
            e.service.tags = tags;
            e.checks.push(Check {
                check_id: "c".into(),
                status: ["passing", "warning", "critical"][health as usize % 3].into(),
                ..Check::default()
            });
            if tagged {
                let ip: IpAddr = e.address().parse().unwrap();
                banned_ips.insert(ip);
                banned_names.insert(format!("{}.addr.dc1.consul.", hex_ip(ip)));
                if kind == 0 {
                    banned_names.insert(format!("n{i}.node.dc1.consul."));
                } else {
                    banned_names.insert(format!("s{svc}.service.dc1.consul."));
                }
            }
            entries.push(e);
        }
        let mut c = catalog(entries);
        let mut queries: Vec<PreparedQuery> = (0..3)
            .map(|s| PreparedQuery {
                id: format!("id-{s}"),
                name: format!("q-s{s}"),
                service: QueryService {
                    service: format!("s{s}"),
                    tags: vec!["v1".into()],
                    ..QueryService::default()
                },
                ..PreparedQuery::default()
            })
            .collect();
        queries.push(PreparedQuery {
            id: "catch-all".into(),
            template: Some(QueryTemplate::default()),
            service: QueryService {
                service: "${name.full}".into(),
                ..QueryService::default()
            },
            ..PreparedQuery::default()
        });
        c.queries = queries.into();
        (c, banned_names, banned_ips)
    }

    fn offending(m: &Message, names: &HashSet<String>, ips: &HashSet<IpAddr>) -> Option<String> {
        use hickory_proto::rr::RData;
        m.answers.iter().chain(&m.additionals).find_map(|r| {
            let bad = match &r.data {
                RData::A(a) => ips.contains(&IpAddr::V4(a.0)),
                RData::AAAA(a) => ips.contains(&IpAddr::V6(a.0)),
                RData::SRV(srv) => names.contains(&srv.target.to_ascii()),
                // A node's PTR names the node, which is not an instance; a service PTR must
                // never name a standby's service.
                RData::PTR(p) => {
                    let target = p.0.to_ascii();
                    target.contains(".service.") && names.contains(&target)
                }
                _ => false,
            };
            bad.then(|| r.to_string())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn filter_tagged_instances_never_answer(specs in proptest::collection::vec(
            (0u8..3, any::<bool>(), 0u8..3, 0u8..3, 0u8..3), 1..16)
        ) {
            let (c, names, ips) = build(&specs);
            let t = AnswerTable::build(Arc::new(c), &["consul".into()], &dns_config());
            let mut questions = Vec::new();
            for s in 0..3 {
                for n in [
                    format!("s{s}.service.consul."),
                    format!("v1.s{s}.service.consul."),
                    format!("_s{s}._primary.consul."),
                    format!("_s{s}._tcp.service.dc1.consul."),
                    format!("q-s{s}.query.consul."),
                    format!("id-{s}.query.consul."),
                    format!("s{s}.query.consul."),
                ] {
                    for rt in [RecordType::A, RecordType::AAAA, RecordType::ANY, RecordType::SRV, RecordType::TXT] {
                        questions.push((n.clone(), rt));
                    }
                }
            }
            for ip in &ips {
                let rev = match ip {
                    IpAddr::V4(v4) => {
                        let o = v4.octets();
                        format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
                    }
                    IpAddr::V6(v6) => v6
                        .octets()
                        .iter()
                        .rev()
                        .map(|b| format!("{:x}.{:x}.", b & 0xF, b >> 4))
                        .collect::<String>() + "ip6.arpa.",
                };
                questions.push((rev, RecordType::PTR));
            }
            for (name, rt) in questions {
                for proto in [Proto::Udp, Proto::Tcp] {
                    let m = if rt == RecordType::PTR {
                        ask_reverse(&t, &name, proto)
                    } else {
                        ask_with(&t, &name, rt, proto, Some(4096)).msg
                    };
                    prop_assert!(offending(&m, &names, &ips).is_none(),
                        "{name} {rt}: {:?}", offending(&m, &names, &ips));
                }
            }
        }
    }

    fn ask_reverse(t: &AnswerTable, name: &str, proto: Proto) -> Message {
        let _ = proto;
        let mut m = Message::query();
        m.add_query(HQuery::query(
            Name::from_str(name).unwrap(),
            RecordType::PTR,
        ));
        let bytes = m.to_vec().unwrap();
        let q = Query::parse(&bytes).unwrap();
        let mut buf = [0u8; 256];
        let dotted = wire::dotted_lower(q.qname, &mut buf).unwrap().to_vec();
        let mut out = Vec::new();
        match t.answer_reverse(&q, &dotted, &mut out) {
            Some(_) => Message::from_vec(&out).unwrap(),
            None => Message::query(),
        }
    }
}

/// Failover detection: a prepared query whose local answer is empty and which has failover
/// targets is handed back (by ID, name or template name); with a local instance, or without
/// targets, it is answered here. `/execute` entries are encoded in the answering datacenter.
mod failover {
    use super::*;
    use crate::consul::catalog::{PreparedQuery, QueryService, QueryTemplate};

    fn query(id: &str, name: &str, service: &str, failover: bool) -> PreparedQuery {
        PreparedQuery {
            id: id.into(),
            name: name.into(),
            service: QueryService {
                service: service.into(),
                failover: failover.then(|| serde_json::json!({"Datacenters": ["dc2"]})),
                ..QueryService::default()
            },
            ..PreparedQuery::default()
        }
    }

    fn failover_table() -> AnswerTable {
        let mut c = catalog(vec![
            with_check(entry("n1", "10.0.0.1", "db", "", 5432), "critical"),
            entry("n2", "10.0.0.2", "web", "", 80),
        ]);
        let mut template = query("t-id", "geo-", "${name.suffix}", true);
        template.template = Some(QueryTemplate::default());
        c.queries = vec![
            query("id-db", "db-fo", "db", true),
            query("id-web", "web-fo", "web", true),
            query("id-plain", "db-plain", "db", false),
            template,
        ]
        .into();
        AnswerTable::build(Arc::new(c), &["consul".into()], &dns_config())
    }

    /// What the table does with `rel`: `Err(key)` for a failover, else the rcode.
    fn route(t: &AnswerTable, rel: &str) -> Result<u8, Option<Arc<str>>> {
        let mut m = Message::query();
        let name = format!("{rel}.consul.");
        m.add_query(HQuery::query(Name::from_str(&name).unwrap(), RecordType::A));
        let bytes = m.to_vec().unwrap();
        let q = Query::parse(&bytes).unwrap();
        let mut out = Vec::new();
        match t.answer_or_remote(&q, rel.as_bytes(), 0, Proto::Udp, &mut out) {
            Answered::Done(o) => Ok(o.rcode),
            Answered::Remote(_) => panic!("remote"),
            Answered::Failover => {
                assert!(out.is_empty(), "nothing written");
                Err(t.failover_target(&q, rel.as_bytes(), 0).map(|f| f.key))
            }
        }
    }

    #[test]
    fn only_empty_queries_with_targets_fail_over() {
        let t = failover_table();
        assert_eq!(route(&t, "db-fo.query"), Err(Some("id-db".into())));
        assert_eq!(route(&t, "id-db.query"), Err(Some("id-db".into())));
        assert_eq!(
            route(&t, "geo-db.query"),
            Err(Some("geo-db".into())),
            "by name"
        );
        assert_eq!(
            route(&t, "web-fo.query"),
            Ok(rcode::NOERROR),
            "local instance"
        );
        assert_eq!(route(&t, "geo-web.query"), Ok(rcode::NOERROR));
        assert_eq!(
            route(&t, "db-plain.query"),
            Ok(rcode::NXDOMAIN),
            "no targets"
        );
        // The plain `answer` never hands anything back: NXDOMAIN as before.
        assert_eq!(
            ask(&t, "db-fo.query.consul.", RecordType::A)
                .metadata
                .response_code,
            hickory_proto::op::ResponseCode::NXDomain
        );
    }

    #[test]
    fn executed_entries_answer_in_their_datacenter() {
        let t = failover_table();
        let mut e = entry("d2a", "10.2.0.1", "db", "", 5432);
        Arc::make_mut(&mut e.node).datacenter = "dc2".into();
        let standby = with_tags(entry("d2b", "10.2.0.2", "db", "", 5432), &["nodns"]);
        let mut m = Message::query();
        m.add_query(HQuery::query(
            Name::from_str("db-fo.query.consul.").unwrap(),
            RecordType::SRV,
        ));
        let bytes = m.to_vec().unwrap();
        let q = Query::parse(&bytes).unwrap();
        let mut out = Vec::new();
        let o = t.answer_executed(&q, 0, Proto::Udp, "DC2", &[e, standby], 7, &mut out);
        assert_eq!(o.rcode, rcode::NOERROR);
        let msg = Message::from_vec(&out).unwrap();
        assert_eq!(
            lines(&msg.answers),
            ["db-fo.query.consul. 7 IN SRV 1 10 5432 d2a.node.dc2.consul."],
            "filter-tagged instances never answer"
        );
        assert_eq!(
            lines(&msg.additionals)
                .into_iter()
                .filter(|l| l.contains(" IN A "))
                .collect::<Vec<_>>(),
            ["d2a.node.dc2.consul. 7 IN A 10.2.0.1"]
        );
    }
}
