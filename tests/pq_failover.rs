//! Prepared-query failover through the whole signpost: a prepared query with no local instance
//! and failover targets is answered from the agent's `/execute` (in the datacenter that
//! answered), one request for a burst, cached for the answer's TTL, SERVFAIL when the agent
//! fails; every other prepared query never asks the agent.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

use crate::remote_dc::burst;
use crate::support::fake_consul::{FakeConsul, Fault};
use crate::support::signpost::{Signpost, Via, ask, eventually, lines};

/// dc1 has `db` on n1 (critical) and `web` on n2 (passing); dc2 has `db` on d2a and d2b.
/// Queries: `db-fo` (db, failover to dc2, TTL 10s), `web-fo` (web, failover to dc2),
/// `db-plain` (db, no failover), `gone-fo` (a service nowhere, failover to dc2).
async fn agent() -> FakeConsul {
    let fake = FakeConsul::start().await;
    let id = fake.register("db", "n1", "10.0.0.1", "", 5432, &[]);
    fake.set_check("n1", &id, "critical");
    fake.register("web", "n2", "10.0.0.2", "", 80, &[]);
    let dc2 = fake.in_dc("dc2");
    dc2.register("db", "d2a", "10.2.0.1", "", 5432, &[]);
    dc2.register("db", "d2b", "10.2.0.2", "", 5433, &[]);
    let failover = json!({"Datacenters": ["dc2"]});
    fake.add_query(
        json!({"ID": "f0000000-0000-4000-8000-000000000001", "Name": "db-fo",
        "Service": {"Service": "db", "Failover": failover}, "DNS": {"TTL": "10s"}}),
    );
    fake.add_query(
        json!({"ID": "f0000000-0000-4000-8000-000000000002", "Name": "web-fo",
        "Service": {"Service": "web", "Failover": failover}}),
    );
    fake.add_query(
        json!({"ID": "f0000000-0000-4000-8000-000000000003", "Name": "db-plain",
        "Service": {"Service": "db"}}),
    );
    fake.add_query(
        json!({"ID": "f0000000-0000-4000-8000-000000000004", "Name": "gone-fo",
        "Service": {"Service": "gone", "Failover": failover}}),
    );
    fake
}

async fn started(fake: &FakeConsul) -> Signpost {
    let toml = format!(
        "[consul]\naddress = \"{}\"\nwait = \"2s\"\n[forward]\nupstreams = []\n",
        fake.url()
    );
    let sp = Signpost::start(&toml).await;
    sp.wait_ready().await;
    sp
}

async fn answer(dns: SocketAddr, name: &str, rtype: RecordType) -> (ResponseCode, Vec<String>) {
    let m = ask(dns, name, rtype, Via::Udp).await;
    (m.metadata.response_code, lines(&m.answers))
}

const DC2_DB: [&str; 2] = [
    "db-fo.query.consul. 10 IN A 10.2.0.1",
    "db-fo.query.consul. 10 IN A 10.2.0.2",
];

/// With no healthy local instance, A and SRV come from dc2 (SRV targets and glue in dc2, the
/// query's TTL), by name and by ID; the later queries, within the TTL, send no new
/// `/execute`.
#[tokio::test]
async fn empty_local_answer_fails_over_to_dc2() {
    let fake = agent().await;
    let sp = started(&fake).await;
    assert_eq!(fake.requests("execute"), 0, "asked before any query");

    let (code, a) = answer(sp.dns, "db-fo.query.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(a, DC2_DB);
    assert_eq!(fake.requests("execute"), 1);

    let m = ask(sp.dns, "db-fo.query.consul.", RecordType::SRV, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        lines(&m.answers),
        [
            "db-fo.query.consul. 10 IN SRV 1 1 5432 d2a.node.dc2.consul.",
            "db-fo.query.consul. 10 IN SRV 1 1 5433 d2b.node.dc2.consul.",
        ]
    );
    let glue: Vec<String> = lines(&m.additionals)
        .into_iter()
        .filter(|l| l.contains(" IN A "))
        .collect();
    assert_eq!(
        glue,
        [
            "d2a.node.dc2.consul. 10 IN A 10.2.0.1",
            "d2b.node.dc2.consul. 10 IN A 10.2.0.2",
        ]
    );
    assert_eq!(fake.requests("execute"), 1, "cached answer asked again");

    // By ID it is the same query, cached per ID: no new request either.
    let (code, a) = answer(
        sp.dns,
        "f0000000-0000-4000-8000-000000000001.query.consul.",
        RecordType::A,
    )
    .await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(a.len(), 2);
    assert_eq!(fake.requests("execute"), 1, "cached per query ID");
    sp.stop().await;
}

/// 200 simultaneous queries for a query to fail over send one `/execute`, and all get dc2's
/// answer.
#[tokio::test]
async fn simultaneous_queries_send_one_execute() {
    let fake = agent().await;
    let sp = started(&fake).await;
    let replies = burst(sp.dns, "db-fo.query.consul.", 200).await;
    assert_eq!(replies.len(), 200, "replies missing");
    for m in &replies {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(lines(&m.answers), DC2_DB);
    }
    assert_eq!(fake.requests("execute"), 1, "not coalesced");
    sp.stop().await;
}

/// A query with a healthy local instance is answered locally, one without failover targets
/// stays NXDOMAIN, and neither asks the agent; one whose service is nowhere is NXDOMAIN after
/// one `/execute`, cached.
#[tokio::test]
async fn other_queries_never_ask_the_agent() {
    let fake = agent().await;
    let sp = started(&fake).await;
    let (code, a) = answer(sp.dns, "web-fo.query.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(a, ["web-fo.query.consul. 0 IN A 10.0.0.2"]);
    let (code, a) = answer(sp.dns, "db-plain.query.consul.", RecordType::A).await;
    assert_eq!((code, a.len()), (ResponseCode::NXDomain, 0));
    assert_eq!(fake.requests("execute"), 0);

    for _ in 0..2 {
        let m = ask(sp.dns, "gone-fo.query.consul.", RecordType::A, Via::Udp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1, "no SOA");
    }
    assert_eq!(fake.requests("execute"), 1, "empty result not cached");
    sp.stop().await;
}

/// `/execute` failing is SERVFAIL (signpost keeps answering), and once the agent recovers the
/// query is answered from dc2.
#[tokio::test]
async fn failing_execute_is_servfail_then_recovers() {
    let fake = agent().await;
    let sp = started(&fake).await;
    fake.inject(
        Some("execute"),
        Fault::Status(500, "No cluster leader".into()),
    );
    let (code, _) = answer(sp.dns, "db-fo.query.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::ServFail);
    assert_eq!(fake.pending_faults(), 0);
    let (code, _) = answer(sp.dns, "web-fo.query.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError, "local answers suffer");
    let recovered = eventually(Duration::from_secs(5), || async {
        answer(sp.dns, "db-fo.query.consul.", RecordType::A).await.1 == DC2_DB
    })
    .await;
    assert!(recovered, "never answered after the agent recovered");
    sp.stop().await;
}

/// The fake agent's `/execute` is Consul's (§6.3, §6.4): by ID or name, the local datacenter
/// first (`Failovers` 0), then the failover ones in order; an unknown query is 404.
#[tokio::test]
async fn fake_execute_follows_consul() {
    let fake = agent().await;
    let get = |path: &str| reqwest::get(format!("{}{path}", fake.url()));
    let body: serde_json::Value = get("/v1/query/db-fo/execute")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&body["Datacenter"], &body["Failovers"]),
        (&json!("dc2"), &json!(1))
    );
    assert_eq!(body["Nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["DNS"]["TTL"], "10s");
    let body: serde_json::Value = get("/v1/query/f0000000-0000-4000-8000-000000000002/execute")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&body["Datacenter"], &body["Failovers"]),
        (&json!("dc1"), &json!(0))
    );
    assert_eq!(body["Nodes"][0]["Node"]["Node"], "n2");
    let body: serde_json::Value = get("/v1/query/db-plain/execute")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["Nodes"],
        json!([]),
        "critical instances are not answered"
    );
    let missing = get("/v1/query/nope/execute").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "Query not found");
}
