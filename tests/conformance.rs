//! Conformance with Consul's DNS interface: the cases of `reference/consul-dns.md` §9 (taken
//! from Consul's own `agent/dns*_test.go`) as a table, expected answers as zone-file lines,
//! run against a real signpost over UDP and TCP, and a sample of rows through the real `dig`.
//!
//! Each row names its §9 number. Rows not here, and why:
//! - 10, 19, 20, 57: a host name outside the Consul domain is resolved by Consul through its
//!   `recursors` and the chain appended; signpost gives the CNAME/SRV target and leaves the
//!   chain to the client's resolver (README, differences).
//! - 24–26: WAN address translation across datacenters; other datacenters are not served yet.
//! - 44: ACL filtering happens in the agent (signpost reads with the agent's token).
//! - 47, 48, 64: `connect`, `ingress` and `virtual` names are answered NXDOMAIN (README).
//! - 50, 51: cluster peering.
//! - 69, 78: without recursors Consul refuses other names and answers NXDOMAIN for unknown
//!   reverse names; signpost forwards both (its job), see `tests/forward.rs`.
//! - 79–81: recursor behaviour: `tests/forward.rs` and `tests/dns.rs`.
//! - 84–86: `Near` sorting by network coordinates, `max_stale`, agent source for `/execute`.
//! - 2, 27 (query part), 30, 35 (query part): prepared queries are checked against the fake
//!   agent in `prepared_queries_from_the_agent` below, since the `file:` source carries none.
//! - 65: RFC 1464 escaping is a unit test (`consul::answer::tests::meta_txt_encoding`).

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

use crate::support::fake_consul::FakeConsul;
use crate::support::signpost::{Signpost, Via, lines, require_tool};

/// One instance in `/v1/health/service` shape.
#[derive(Clone)]
struct Inst(Value);

fn inst(node: &str, node_addr: &str, service: &str, port: u16) -> Inst {
    Inst(json!({
        "Node": {"Node": node, "Address": node_addr, "Datacenter": "dc1", "Meta": {}, "TaggedAddresses": {}},
        "Service": {"ID": format!("{service}-{node}-{port}"), "Service": service, "Tags": [],
                    "Address": "", "Port": port, "Meta": {}, "TaggedAddresses": {}},
        "Checks": []
    }))
}

impl Inst {
    fn addr(mut self, a: &str) -> Self {
        self.0["Service"]["Address"] = json!(a);
        self
    }
    fn tags(mut self, t: &[&str]) -> Self {
        self.0["Service"]["Tags"] = json!(t);
        self
    }
    fn check(mut self, status: &str) -> Self {
        let id = self.0["Service"]["ID"].clone();
        self.0["Checks"]
            .as_array_mut()
            .unwrap()
            .push(json!({"CheckID": "svc", "Status": status, "ServiceID": id}));
        self
    }
    fn node_check(mut self, status: &str) -> Self {
        self.0["Checks"]
            .as_array_mut()
            .unwrap()
            .push(json!({"CheckID": "serfHealth", "Status": status, "ServiceID": ""}));
        self
    }
    fn meta(mut self, k: &str, v: &str) -> Self {
        self.0["Node"]["Meta"][k] = json!(v);
        self
    }
    fn node_tagged(mut self, k: &str, v: &str) -> Self {
        self.0["Node"]["TaggedAddresses"][k] = json!(v);
        self
    }
    fn svc_tagged(mut self, k: &str, v: &str) -> Self {
        self.0["Service"]["TaggedAddresses"][k] = json!({"Address": v, "Port": 0});
        self
    }
}

/// One row: the catalog, extra config, the question and what must come back.
struct Case {
    id: &'static str,
    catalog: Vec<Inst>,
    config: &'static str,
    name: &'static str,
    qtype: RecordType,
    rcode: ResponseCode,
    /// Sorted zone-file lines; `None` = only the count in `answer_count` is checked.
    answer: Option<Vec<&'static str>>,
    answer_count: usize,
    additional: Option<Vec<&'static str>>,
    /// SOA records expected in the authority section.
    soa: usize,
}

fn case(id: &'static str, catalog: Vec<Inst>, name: &'static str, qtype: RecordType) -> Case {
    Case {
        id,
        catalog,
        config: "",
        name,
        qtype,
        rcode: ResponseCode::NoError,
        answer: None,
        answer_count: 0,
        additional: None,
        soa: 0,
    }
}

impl Case {
    fn answer(mut self, lines: &[&'static str]) -> Self {
        self.answer_count = lines.len();
        self.answer = Some(lines.to_vec());
        self
    }
    fn count(mut self, n: usize) -> Self {
        self.answer_count = n;
        self
    }
    fn additional(mut self, lines: &[&'static str]) -> Self {
        self.additional = Some(lines.to_vec());
        self
    }
    fn nxdomain(mut self) -> Self {
        self.rcode = ResponseCode::NXDomain;
        self.soa = 1;
        self
    }
    fn nodata(mut self) -> Self {
        self.soa = 1;
        self
    }
    fn config(mut self, toml: &'static str) -> Self {
        self.config = toml;
        self
    }
}

fn foo_db() -> Vec<Inst> {
    vec![inst("foo", "127.0.0.1", "db", 12345).tags(&["primary"])]
}

fn table() -> Vec<Case> {
    use RecordType::*;
    let alt = "[consul]\nalt_domain = \"test-domain.\"\n";
    vec![
        case("1", foo_db(), "db.service.consul.", SRV)
            .answer(&["db.service.consul. 0 IN SRV 1 1 12345 foo.node.dc1.consul."])
            .additional(&["foo.node.dc1.consul. 0 IN A 127.0.0.1"]),
        case("3", foo_db(), "nodb.service.consul.", SRV).nxdomain(),
        case("4", vec![inst("foo", "127.0.0.1", "db", 12345).addr("127.0.0.2")], "db.service.consul.", SRV)
            .answer(&["db.service.consul. 0 IN SRV 1 1 12345 7f000002.addr.dc1.consul."])
            .additional(&["7f000002.addr.dc1.consul. 0 IN A 127.0.0.2"]),
        case("5", vec![
                inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.1").tags(&["primary"]),
                inst("bar", "127.0.0.2", "db", 2).addr("127.0.0.2").tags(&["secondary"]),
            ], "_db._primary.service.dc1.consul.", SRV)
            .answer(&["_db._primary.service.dc1.consul. 0 IN SRV 1 1 1 7f000001.addr.dc1.consul."]),
        case("5", vec![inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.1").tags(&["primary"])],
             "primary.db.service.dc1.consul.", SRV).count(1),
        case("6", foo_db(), "banana._db._primary.service.dc1.consul.", SRV).nxdomain(),
        case("7", vec![inst("foo", "127.0.0.1", "db", 12345).addr("2607:20:4005:808::200e")], "db.service.consul.", SRV)
            .answer(&["db.service.consul. 0 IN SRV 1 1 12345 2607002040050808000000000000200e.addr.dc1.consul."])
            .additional(&["2607002040050808000000000000200e.addr.dc1.consul. 0 IN AAAA 2607:20:4005:808::200e"]),
        case("8", vec![inst("foo", "127.0.0.1", "db", 12345).addr("127.0.0.2")], "db.service.test-domain.", SRV)
            .config(alt)
            .answer(&["db.service.test-domain. 0 IN SRV 1 1 12345 7f000002.addr.dc1.test-domain."])
            .additional(&["7f000002.addr.dc1.test-domain. 0 IN A 127.0.0.2"]),
        case("9", vec![inst("test-node", "127.0.0.1", "db", 12345).meta("key", "value")], "db.service.test-domain.", SRV)
            .config(alt)
            .answer(&["db.service.test-domain. 0 IN SRV 1 1 12345 test-node.node.dc1.test-domain."])
            .additional(&["test-node.node.dc1.test-domain. 0 IN A 127.0.0.1", "test-node.node.dc1.test-domain. 0 IN TXT key=value"]),
        case("11", vec![inst("foo", "www.google.com", "db", 12345)], "db.service.consul.", SRV)
            .answer(&["db.service.consul. 0 IN SRV 1 1 12345 www.google.com."])
            .additional(&[]),
        case("12", vec![inst("web", "127.0.0.1", "web", 80), inst("alias", "web.service.consul", "alias", 80)],
             "alias.service.consul.", SRV)
            .answer(&["alias.service.consul. 0 IN SRV 1 1 80 web.service.consul."])
            .additional(&["web.service.consul. 0 IN A 127.0.0.1"]),
        case("13", vec![
                inst("web", "127.0.0.1", "web", 80),
                inst("alias", "web.service.consul", "alias", 80),
                inst("alias2", "alias.service.consul", "alias2", 80),
            ], "alias2.service.consul.", SRV)
            .answer(&["alias2.service.consul. 0 IN SRV 1 1 80 alias.service.consul."])
            .additional(&["alias.service.consul. 0 IN CNAME web.service.consul.", "web.service.consul. 0 IN A 127.0.0.1"]),
        case("14", vec![inst("foo", "127.0.0.1", "db", 12345).addr("db.service.consul")], "db.service.consul.", SRV)
            .answer(&["db.service.consul. 0 IN SRV 1 1 12345 foo.node.dc1.consul."])
            .additional(&["foo.node.dc1.consul. 0 IN A 127.0.0.1"]),
        case("16", vec![
                inst("foo", "127.0.0.1", "db", 1).addr("foo.node.consul"),
                inst("bar", "127.0.0.2", "db", 2).addr("bar.node.consul"),
            ], "db.service.consul.", ANY).count(2),
        case("17", vec![
                inst("foo", "198.18.0.1", "db", 1),
                inst("bar", "www.example.com", "db", 2),
            ], "db.service.consul.", ANY)
            .answer(&["db.service.consul. 0 IN A 198.18.0.1"]),
        case("18", vec![
                inst("foo", "198.18.0.1", "db", 1),
                inst("bar", "198.18.0.2", "db", 2),
                inst("baz", "www.example.com", "db", 3),
            ], "db.service.consul.", ANY)
            .answer(&["db.service.consul. 0 IN A 198.18.0.1", "db.service.consul. 0 IN A 198.18.0.2"]),
        case("21", vec![inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.2")], "db.service.consul.", A)
            .answer(&["db.service.consul. 0 IN A 127.0.0.2"]),
        case("21", vec![inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.2")], "db.service.consul.", AAAA).nodata(),
        case("22", vec![inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.2").svc_tagged("lan_ipv6", "::2").node_tagged("lan_ipv6", "::1")],
             "db.service.consul.", AAAA)
            .answer(&["db.service.consul. 0 IN AAAA ::2"]),
        case("22", vec![inst("foo", "127.0.0.1", "db", 1).node_tagged("lan_ipv6", "::1")], "foo.node.consul.", AAAA)
            .answer(&["foo.node.consul. 0 IN AAAA ::1"]),
        case("23", vec![inst("foo", "::1", "db", 1).addr("::2").svc_tagged("lan_ipv4", "127.0.0.2").node_tagged("lan_ipv4", "127.0.0.1")],
             "db.service.consul.", A)
            .answer(&["db.service.consul. 0 IN A 127.0.0.2"]),
        case("27", vec![inst("foo", "127.0.0.1", "Db", 1).tags(&["Primary"])], "PRIMARY.dB.service.consul.", SRV).count(1),
        case("27", vec![inst("foo", "127.0.0.1", "Db", 1)], "DB.service.consul.", SRV).count(1),
        case("28", vec![inst("foo", "127.0.0.1", "db", 1).tags(&["v1.primary"])], "v1.primary.db.service.consul.", SRV)
            .answer(&["v1.primary.db.service.consul. 0 IN SRV 1 1 1 foo.node.dc1.consul."]),
        case("28", vec![inst("foo", "127.0.0.1", "db", 1).tags(&["v1.primary"])], "v1.primary2.db.service.consul.", SRV).nxdomain(),
        case("29", foo_db(), "dummy.primary.db.service.consul.", SRV).nxdomain(),
        case("31", vec![
                inst("foo", "127.0.0.1", "db", 12345),
                inst("foo", "127.0.0.1", "db", 12346),
            ], "db.service.consul.", ANY)
            .answer(&["db.service.consul. 0 IN A 127.0.0.1"]),
        case("32", vec![
                inst("foo", "127.0.0.1", "db", 12345),
                inst("foo", "127.0.0.1", "db", 12346),
            ], "db.service.consul.", SRV)
            .answer(&["db.service.consul. 0 IN SRV 1 1 12345 foo.node.dc1.consul.", "db.service.consul. 0 IN SRV 1 1 12346 foo.node.dc1.consul."]),
        case("33", vec![
                inst("foo", "127.0.0.1", "db", 1).node_check("critical"),
                inst("bar", "127.0.0.2", "db", 2).node_check("critical").check("critical"),
                inst("baz", "127.0.0.3", "db", 3),
                inst("quux", "127.0.0.4", "db", 4).check("warning"),
            ], "db.service.consul.", ANY)
            .answer(&["db.service.consul. 0 IN A 127.0.0.3", "db.service.consul. 0 IN A 127.0.0.4"]),
        case("34", vec![inst("foo", "127.0.0.1", "db", 1).check("critical"), inst("bar", "127.0.0.2", "db", 2).check("critical")],
             "db.service.consul.", ANY).nxdomain(),
        case("35", vec![
                inst("foo", "127.0.0.1", "db", 1).check("passing"),
                inst("bar", "127.0.0.2", "db", 2).check("warning"),
                inst("baz", "127.0.0.3", "db", 3).check("critical"),
            ], "db.service.consul.", ANY)
            .config("[dns]\nonly_passing = true\n")
            .answer(&["db.service.consul. 0 IN A 127.0.0.1"]),
        case("36", many("db", 96), "db.service.consul.", ANY).count(3),
        case("39", many("db", 30), "db.service.consul.", A).config("[dns]\nudp_answer_limit = 0\n").count(0),
        case("39", many("db", 30), "db.service.consul.", A).config("[dns]\nudp_answer_limit = 1\n").count(1),
        case("39", many("db", 30), "db.service.consul.", A).config("[dns]\nudp_answer_limit = 30\n").count(8),
        case("41", vec![inst("foo", "127.0.0.1", "db", 1)], "db.service.consul.", SRV)
            .config("[dns]\nservice_ttl = { \"d*\" = \"42s\", \"db\" = \"10s\", \"db*\" = \"66s\", \"*\" = \"5s\" }\n")
            .answer(&["db.service.consul. 10 IN SRV 1 1 1 foo.node.dc1.consul."])
            .additional(&["foo.node.dc1.consul. 10 IN A 127.0.0.1"]),
        case("41", vec![inst("foo", "127.0.0.1", "dblb", 1)], "dblb.service.consul.", A)
            .config("[dns]\nservice_ttl = { \"d*\" = \"42s\", \"db\" = \"10s\", \"db*\" = \"66s\", \"*\" = \"5s\" }\n")
            .answer(&["dblb.service.consul. 66 IN A 127.0.0.1"]),
        case("41", vec![inst("foo", "127.0.0.1", "dk", 1)], "dk.service.consul.", A)
            .config("[dns]\nservice_ttl = { \"d*\" = \"42s\", \"db\" = \"10s\", \"db*\" = \"66s\", \"*\" = \"5s\" }\n")
            .answer(&["dk.service.consul. 42 IN A 127.0.0.1"]),
        case("42", foo_db(), "_db._primary.service.dc1.consul.", SRV).count(1),
        case("42", foo_db(), "_db._primary.service.consul.", SRV).count(1),
        case("42", foo_db(), "_db._primary.dc1.consul.", SRV).count(1),
        case("42", foo_db(), "_db._primary.consul.", SRV).count(1),
        case("43", foo_db(), "_db._tcp.service.dc1.consul.", SRV).count(1),
        case("43", foo_db(), "_db._tcp.consul.", SRV).count(1),
        case("45", vec![inst("bar", "127.0.0.1", "db", 1).meta("key", "value")], "db.service.consul.", SRV)
            .count(1)
            .additional(&["bar.node.dc1.consul. 0 IN A 127.0.0.1", "bar.node.dc1.consul. 0 IN TXT key=value"]),
        case("46", vec![inst("bar", "127.0.0.1", "db", 1).meta("key", "value")], "db.service.consul.", SRV)
            .config("[dns]\nenable_additional_node_meta_txt = false\n")
            .count(1)
            .additional(&["bar.node.dc1.consul. 0 IN A 127.0.0.1"]),
        case("49", vec![inst("foo", "127.0.0.1", "webv4", 1)], "webv4.service.consul.", AAAA).nodata(),
        case("49", vec![inst("foo", "fe80::1", "webv6", 1)], "webv6.service.consul.", A).nodata(),
        case("52", vec![inst("foo", "127.0.0.1", "web", 1).meta("key", "value").node_tagged("wan", "127.0.0.2")], "foo.node.consul.", ANY)
            .answer(&["foo.node.consul. 0 IN A 127.0.0.1", "foo.node.consul. 0 IN TXT key=value"])
            .additional(&[]),
        case("53", vec![inst("foo", "127.0.0.1", "web", 1).meta("key", "value")], "foo.node.consul.", A)
            .answer(&["foo.node.consul. 0 IN A 127.0.0.1"])
            .additional(&["foo.node.consul. 0 IN TXT key=value"]),
        case("54", vec![inst("foo", "127.0.0.1", "web", 1)], "nofoo.node.dc1.consul.", ANY).nxdomain(),
        case("55", vec![inst("Foo", "127.0.0.1", "web", 1)], "fOO.node.dc1.consul.", ANY).count(1),
        case("55", vec![inst("foo.bar", "127.0.0.1", "web", 1)], "foo.bar.node.consul.", ANY).count(1),
        case("56", vec![inst("bar", "::4242:4242", "web", 1)], "bar.node.consul.", AAAA)
            .answer(&["bar.node.consul. 0 IN AAAA ::4242:4242"]),
        case("58", vec![inst("google", "127.0.0.1", "web", 1).meta("rfc1035-00", "value0").meta("key0", "value1")],
             "google.node.consul.", TXT)
            .answer(&["google.node.consul. 0 IN TXT key0=value1", "google.node.consul. 0 IN TXT value0"]),
        case("59", vec![inst("foo", "127.0.0.1", "web", 1).meta("key", "value")], "foo.node.consul.", A)
            .config("[dns]\nenable_additional_node_meta_txt = false\n")
            .count(1)
            .additional(&[]),
        case("60", vec![inst("foo", "127.0.0.1", "web", 1)], "foo.node.consul.", ANY)
            .config("[dns]\nnode_ttl = \"10s\"\n")
            .answer(&["foo.node.consul. 10 IN A 127.0.0.1"]),
        case("61", vec![], "7f000001.addr.dc1.consul.", A).answer(&["7f000001.addr.dc1.consul. 0 IN A 127.0.0.1"]),
        case("62", vec![], "7f000001.addr.dc1.consul.", SRV).count(0).additional(&["7f000001.addr.dc1.consul. 0 IN A 127.0.0.1"]),
        case("63", vec![], "2607112040051808ffffffffffff200e.addr.consul.", AAAA)
            .answer(&["2607112040051808ffffffffffff200e.addr.consul. 0 IN AAAA 2607:1120:4005:1808:ffff:ffff:ffff:200e"]),
        case("66", foo_db(), "consul.service.dc2.consul.", ANY).nxdomain(),
        case("67", foo_db(), "nonexisting.consul.", ANY).nxdomain(),
        case("68", foo_db(), "consul.", A).nxdomain(),
        case("68", foo_db(), "node.consul.", A).nxdomain(),
        case("68", foo_db(), "service.consul.", A).nxdomain(),
        case("68", foo_db(), "query.consul.", A).nxdomain(),
        case("68", foo_db(), "foo.node.dc1.extra.more.consul.", SRV).nxdomain(),
        case("71", vec![inst("server1", "127.0.0.1", "consul", 8300)], "something.node.consul.", NS)
            .answer(&["consul. 0 IN NS server1.node.dc1.consul."])
            .additional(&["server1.node.dc1.consul. 0 IN A 127.0.0.1"]),
        case("73", vec![inst("test-node", "127.0.0.1", "web", 1)], "test-node.node.test-domain.", SOA)
            .config(alt)
            .count(1),
        case("74", vec![inst("test-node", "127.0.0.1", "web", 1)], "test-node.node.test.consul.", A)
            .config("[consul]\nalt_domain = \"test.consul.\"\n")
            .answer(&["test-node.node.test.consul. 0 IN A 127.0.0.1"]),
        case("74", vec![inst("test-node", "127.0.0.1", "web", 1)], "test-node.node.dc1.test.consul.", A)
            .config("[consul]\nalt_domain = \"test.consul.\"\n")
            .count(1),
        case("75", vec![inst("foo2", "127.0.0.2", "web", 1)], "2.0.0.127.in-addr.arpa.", ANY)
            .answer(&["2.0.0.127.in-addr.arpa. 0 IN PTR foo2.node.dc1.consul."]),
        case("76", vec![inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.2")], "2.0.0.127.in-addr.arpa.", ANY)
            .answer(&["2.0.0.127.in-addr.arpa. 0 IN PTR db.service.dc1.consul."]),
        case("77", vec![inst("foo", "127.0.0.1", "db", 1).addr("127.0.0.1")], "1.0.0.127.in-addr.arpa.", ANY)
            .answer(&["1.0.0.127.in-addr.arpa. 0 IN PTR foo.node.dc1.consul."]),
    ]
}

/// `n` instances of `service` on distinct nodes 10.0.x.y.
fn many(service: &str, n: usize) -> Vec<Inst> {
    (0..n)
        .map(|i| {
            inst(
                &format!("n{i}"),
                &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                service,
                80,
            )
        })
        .collect()
}

async fn start(case: &Case) -> Signpost {
    let dir = tempfile::tempdir().unwrap();
    let mut services: serde_json::Map<String, Value> = serde_json::Map::new();
    for i in &case.catalog {
        let name = i.0["Service"]["Service"].as_str().unwrap().to_owned();
        services
            .entry(name)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(i.0.clone());
    }
    std::fs::write(
        dir.path().join("catalog.json"),
        Value::Object(services).to_string(),
    )
    .unwrap();
    // The case's own [consul]/[dns] lines are merged into the tables written here.
    let (consul_extra, dns_extra) = split_config(case.config);
    let toml = format!(
        "[consul]\naddress = \"file:catalog.json\"\ndatacenter = \"dc1\"\nnode_name = \"foo\"\n{consul_extra}\n[dns]\n{dns_extra}\n[forward]\nupstreams = []\n"
    );
    let sp = Signpost::start_in(dir, &toml).await;
    sp.wait_ready().await;
    sp
}

fn split_config(extra: &str) -> (String, String) {
    let (mut consul, mut dns, mut current) = (String::new(), String::new(), 0);
    for line in extra.lines() {
        match line.trim() {
            "[consul]" => current = 1,
            "[dns]" => current = 2,
            l if current == 1 => consul.push_str(&format!("{l}\n")),
            l if current == 2 => dns.push_str(&format!("{l}\n")),
            _ => {}
        }
    }
    (consul, dns)
}

fn check(case: &Case, m: &hickory_proto::op::Message, via: Via) {
    let what = format!("§9 #{} {} {} via {via:?}", case.id, case.name, case.qtype);
    assert_eq!(m.metadata.response_code, case.rcode, "{what}");
    assert!(m.metadata.authoritative, "{what}: AA");
    assert_eq!(
        m.answers.len(),
        case.answer_count,
        "{what}: {:?}",
        lines(&m.answers)
    );
    if let Some(want) = &case.answer {
        assert_eq!(lines(&m.answers), *want, "{what}");
    }
    if let Some(want) = &case.additional {
        assert_eq!(lines(&m.additionals), *want, "{what}");
    }
    let soa = m
        .authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA)
        .count();
    assert_eq!(soa, case.soa, "{what}: SOA in authority");
}

/// Every row over UDP (no EDNS, as Consul's tests ask) and over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_test_cases_over_udp_and_tcp() {
    for case in table() {
        let sp = start(&case).await;
        for via in [Via::Udp, Via::Tcp] {
            // The UDP answer limit applies to UDP only; #36/#39 rows are about it.
            if matches!(via, Via::Tcp) && matches!(case.id, "36" | "39") {
                continue;
            }
            let m = sp.query(case.name, case.qtype, via).await;
            check(&case, &m, via);
        }
        sp.stop().await;
    }
}

/// §9 #36, #37, #38: per-request shuffling; TC set when the non-EDNS UDP answer is cut
/// (Consul with `enable_truncate`, signpost's default); a large SRV answer stays ≤ 512 bytes.
#[tokio::test]
async fn shuffling_and_truncation() {
    let case = case("36", many("db", 96), "db.service.consul.", RecordType::ANY);
    let sp = start(&case).await;
    let mut orders = std::collections::HashSet::new();
    for _ in 0..10 {
        let m = sp
            .query("db.service.consul.", RecordType::ANY, Via::Udp)
            .await;
        assert_eq!(m.answers.len(), 3);
        assert!(m.metadata.truncation, "#37: TC when cut");
        orders.insert(lines(&m.answers).join(","));
    }
    assert!(orders.len() >= 2, "#36: at least two orderings");
    let m = sp
        .query("db.service.consul.", RecordType::A, Via::Tcp)
        .await;
    assert_eq!(m.answers.len(), 96, "TCP gets every instance");
    sp.stop().await;

    let name = "this-is-a-very-long-service-name-for-the-large-responses-01";
    let catalog: Vec<Inst> = (0..4)
        .map(|i| {
            inst(
                &format!("node-{i}"),
                &format!("127.0.0.{}", i + 1),
                name,
                80,
            )
            .tags(&["primary"])
        })
        .collect();
    let sp = start(&case_owned(catalog)).await;
    let qname = format!("_{name}._primary.service.consul.");
    let bytes = crate::support::signpost::query_bytes(&qname, RecordType::SRV, None);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&bytes, sp.dns).await.unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n <= 512, "#38: {n} bytes");
    let m = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
    assert!(m.metadata.truncation, "#38: TC");
    assert!(!m.answers.is_empty());
    assert_eq!(m.answers.len(), m.additionals.len(), "#38: one A per SRV");
    sp.stop().await;
}

fn case_owned(catalog: Vec<Inst>) -> Case {
    case("38", catalog, "", RecordType::SRV)
}

/// §9 #82, #83: EDNS size echoed; ECS echoed with scope 0 for a service.
#[tokio::test]
async fn edns_echo() {
    let case = case("82", foo_db(), "", RecordType::ANY);
    let sp = start(&case).await;
    let m = sp
        .query("foo.node.dc1.consul.", RecordType::ANY, Via::UdpEdns(12345))
        .await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(12345));
    sp.stop().await;
}

/// §9 #2, #3, #27, #30, #49: prepared queries by ID, by name (dots, any case) and template,
/// with `DNS.TTL`, answered from the local catalog; `!nodns` and the filter tags hold.
#[tokio::test]
async fn prepared_queries_from_the_agent() {
    let consul = FakeConsul::start().await;
    consul.register("db", "foo", "127.0.0.1", "", 12345, &["primary"]);
    consul.register("db", "bar", "127.0.0.2", "", 12345, &["nodns"]);
    consul.register("webv6", "v6", "fe80::1", "", 80, &[]);
    consul.add_query(
        json!({"ID": "8e7d3b4a-0000-4000-8000-000000000001", "Name": "test",
        "Service": {"Service": "db"}, "DNS": {"TTL": "3s"}}),
    );
    consul.add_query(
        json!({"ID": "8e7d3b4a-0000-4000-8000-000000000002", "Name": "some.query.we.like",
        "Service": {"Service": "db"}}),
    );
    consul.add_query(
        json!({"ID": "8e7d3b4a-0000-4000-8000-000000000003", "Name": "SomeQuery",
        "Service": {"Service": "db", "Tags": ["primary"]}}),
    );
    consul.add_query(
        json!({"ID": "8e7d3b4a-0000-4000-8000-000000000004", "Name": "webv6",
        "Service": {"Service": "webv6"}}),
    );
    consul.add_query(
        json!({"ID": "8e7d3b4a-0000-4000-8000-000000000005", "Name": "geo-",
        "Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.*)$"},
        "Service": {"Service": "${match(1)}", "Tags": ["!nodns"]}}),
    );
    let sp = Signpost::start(&format!(
        "[consul]\naddress = \"{}\"\n[forward]\nupstreams = []\n",
        consul.url()
    ))
    .await;
    sp.wait_ready().await;

    let m = sp
        .query(
            "8e7d3b4a-0000-4000-8000-000000000001.query.consul.",
            RecordType::SRV,
            Via::Tcp,
        )
        .await;
    assert_eq!(
        lines(&m.answers),
        [
            "8e7d3b4a-0000-4000-8000-000000000001.query.consul. 3 IN SRV 1 1 12345 foo.node.dc1.consul."
        ],
        "#2 (bar is nodns)"
    );
    assert!(
        m.additionals.iter().all(|r| r.ttl == 3),
        "#2: additional TTL 3 too"
    );
    let m = sp
        .query("nope.query.consul.", RecordType::SRV, Via::Udp)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "#3");
    let m = sp
        .query("SomeQuery.query.consul.", RecordType::SRV, Via::Udp)
        .await;
    assert_eq!(m.answers.len(), 1, "#27");
    let m = sp
        .query(
            "some.query.we.like.query.consul.",
            RecordType::SRV,
            Via::Udp,
        )
        .await;
    assert_eq!(
        lines(&m.answers),
        ["some.query.we.like.query.consul. 0 IN SRV 1 1 12345 foo.node.dc1.consul."],
        "#30"
    );
    let m = sp
        .query(
            "_some.query.we.like._tcp.query.consul.",
            RecordType::SRV,
            Via::Udp,
        )
        .await;
    assert_eq!(m.answers.len(), 1, "_name._proto.query form");
    let m = sp
        .query("webv6.query.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(
        (
            m.metadata.response_code,
            m.answers.len(),
            m.authorities.len()
        ),
        (ResponseCode::NoError, 0, 1),
        "#49"
    );
    let m = sp
        .query("geo-db.query.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(
        lines(&m.answers),
        ["geo-db.query.consul. 0 IN A 127.0.0.1"],
        "template"
    );
    sp.stop().await;
}

/// A sample of rows through the real `dig`, over UDP and TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_rows_through_dig() {
    if !require_tool("dig") {
        return;
    }
    let rows: Vec<Case> = table()
        .into_iter()
        .filter(|c| ["1", "4", "12", "33", "53", "67", "75"].contains(&c.id))
        .collect();
    assert!(rows.len() >= 7);
    for case in rows {
        let sp = start(&case).await;
        for tcp in [false, true] {
            let out = tokio::process::Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &sp.dns.port().to_string(),
                    "+noedns",
                    "+time=2",
                    "+tries=1",
                ])
                .arg(if tcp { "+tcp" } else { "+notcp" })
                .args([case.name, &case.qtype.to_string()])
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let status = match case.rcode {
                ResponseCode::NXDomain => "status: NXDOMAIN",
                _ => "status: NOERROR",
            };
            assert!(text.contains(status), "§9 #{} dig: {text}", case.id);
            assert!(
                text.contains(&format!("ANSWER: {}", case.answer_count)),
                "§9 #{} dig: {text}",
                case.id
            );
            for want in case.answer.iter().flatten() {
                let fields: Vec<&str> = want.split_whitespace().collect();
                let found = text.lines().any(|l| {
                    let got: Vec<&str> =
                        l.split_whitespace().map(|f| f.trim_matches('"')).collect();
                    got == fields
                });
                assert!(found, "§9 #{}: dig lacks `{want}`:\n{text}", case.id);
            }
        }
        sp.stop().await;
    }
}
