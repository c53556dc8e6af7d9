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
        node: Node {
            node: node.into(),
            address: node_addr.into(),
            datacenter: "dc1".into(),
            ..Node::default()
        },
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
    e.node.meta.insert("key".into(), "value".into());
    e.node.meta.insert("rfc1035-00".into(), "value0".into());
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
