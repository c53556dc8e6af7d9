//! `signpost status` against a running signpost.

use std::net::Ipv4Addr;
use std::process::Command;

use hickory_proto::rr::RecordType;

use super::daemon::{DEMO_CONSUL, Daemon, catalog_dir};
use crate::support::dnsmasq::free_port;
use crate::support::fake_upstream::{Answer, FakeUpstream};
use crate::support::signpost::{Via, ask};

fn status(http: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["status", "--http", http])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status` summarises a running signpost: ready, catalog size and age, each upstream's
/// results, the cache hit ratio, renders and reloads; an address with nothing behind it
/// exits 1 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_summarises_a_running_signpost() {
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 300)).await;
    let daemon = Daemon::start(
        catalog_dir(),
        DEMO_CONSUL,
        &["--upstream", &upstream.addr.to_string()],
        &[],
    );
    for _ in 0..3 {
        ask(daemon.dns, "www.example.net", RecordType::A, Via::Udp).await;
    }
    ask(daemon.dns, "web.service.consul", RecordType::A, Via::Udp).await;
    let (code, out, err) = status(&daemon.http.to_string());
    assert_eq!(code, Some(0), "{err}");
    let services = std::fs::read_to_string(daemon.dir.path().join("catalog.json"))
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
        .unwrap()
        .as_object()
        .unwrap()
        .len();
    for want in [
        format!("signpost at {}: ready", daemon.http),
        format!("catalog:   {services} services"),
        "datacenter dc1".to_owned(),
        format!("upstream   {}: ok 1", upstream.addr),
        "hit ratio 66.7% (2 hits, 1 misses)".to_owned(),
        "reloads:   none".to_owned(),
    ] {
        assert!(out.contains(&want), "{want:?} missing:\n{out}");
    }

    let nothing = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = status(&nothing);
    assert_eq!(code, Some(1));
    assert!(err.contains(&nothing), "{err}");
}
