//! The HTTP endpoints: `/health`, `/ready`, `/metrics`, `/v1/catalog`.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::fake_consul::FakeConsul;
use crate::support::signpost::{Signpost, Via};

/// `/ready` is 503 until the first catalog, then 200; `/health` is 200 throughout.
#[tokio::test]
async fn ready_waits_for_the_first_catalog() {
    // An agent address where nothing listens: no catalog will ever arrive.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let sp = Signpost::start(&format!(
        "[consul]\naddress = \"http://{addr}\"\ndatacenter = \"dc1\"\nnode_name = \"n\"\n[forward]\nupstreams = []\n"
    ))
    .await;
    assert_eq!(sp.get("/health").await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sp.get("/ready").await.0, 503);
    assert_eq!(sp.get("/v1/catalog").await.0, 503);
    let m = sp
        .query("web.service.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(
        m.metadata.response_code.low(),
        3,
        "no catalog yet: NXDOMAIN, no hang"
    );
    sp.stop().await;
}

/// `/metrics` shows the contract's metric names; `/v1/catalog` is the SRV data document.
#[tokio::test]
async fn metrics_and_catalog() {
    let consul = FakeConsul::start().await;
    consul.register("web", "node-1", "10.0.0.1", "", 8080, &["v1"]);
    consul.register("db", "node-2", "10.0.0.2", "", 5432, &["nodns"]);
    let sp = Signpost::start(&format!(
        "[consul]\naddress = \"{}\"\n[forward]\nupstreams = []\n",
        consul.url()
    ))
    .await;
    sp.wait_ready().await;
    sp.query("web.service.consul.", RecordType::A, Via::Udp)
        .await;

    let (status, body) = sp.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "signpost_dns_requests_total{proto=\"udp\",zone=\"consul\"}",
        "signpost_dns_responses_total{",
        "signpost_dns_request_duration_seconds_bucket{zone=\"consul\"",
        "signpost_consul_services ",
        "signpost_consul_instances{state=\"passing\"}",
        "signpost_consul_last_contact_timestamp_seconds ",
        "signpost_consul_catalog_age_seconds ",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}\n{body}");
    }
    let (status, body) = sp.get("/v1/catalog").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["datacenter"], "dc1");
    assert_eq!(
        doc["services"]["web"][0]["target"],
        "node-1.node.dc1.consul."
    );
    assert_eq!(doc["services"]["db"][0]["role"], "standby");
    assert!(doc["index"].as_u64().unwrap() >= 1);
    sp.stop().await;
}
