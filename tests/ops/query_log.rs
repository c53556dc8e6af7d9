//! The opt-in query log: lines in both log formats, and answers unaffected when the log
//! cannot be written.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use super::daemon::{DEMO_CONSUL, Daemon, catalog_dir};
use super::lifecycle::{Load, generate};
use crate::support::signpost::{Via, ask, eventually};

/// `--log-queries` logs each query (name, type, answerer, rcode) in text, and `[log] queries`
/// in JSON; without either, no query line is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_appear_in_the_log() {
    let text = Daemon::start(
        catalog_dir(),
        DEMO_CONSUL,
        &["--log-queries", "--upstream", "192.0.2.1"],
        &[],
    );
    ask(text.dns, "web.service.consul", RecordType::SRV, Via::Udp).await;
    ask(text.dns, "nope.service.consul", RecordType::A, Via::Tcp).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            let log = text.log();
            log.contains("qname=web.service.consul qtype=SRV proto=\"udp\" zone=\"consul\" rcode=\"noerror\"")
                && log.contains("qname=nope.service.consul qtype=A proto=\"tcp\" zone=\"consul\" rcode=\"nxdomain\"")
        })
        .await,
        "{}",
        text.log()
    );

    let config = format!("{DEMO_CONSUL}\n[log]\nqueries = true\n");
    let json = Daemon::start(
        catalog_dir(),
        &config,
        &[
            "--log-format",
            "json",
            "--log-level",
            "warn",
            "--upstream",
            "192.0.2.1",
        ],
        &[],
    );
    ask(json.dns, "api.service.consul", RecordType::A, Via::Udp).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            json.log().lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["fields"]["qname"] == "api.service.consul" && v["fields"]["zone"] == "consul"
                })
            })
        })
        .await,
        "{}",
        json.log()
    );

    let quiet = Daemon::start(
        catalog_dir(),
        DEMO_CONSUL,
        &["--upstream", "192.0.2.1"],
        &[],
    );
    ask(quiet.dns, "web.service.consul", RecordType::A, Via::Udp).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!quiet.log().contains("qname="), "{}", quiet.log());
}

/// With the query log on and stderr a pipe nobody reads (the writer blocks after 64 KiB),
/// 10,000 queries in a second are all answered, and the lines that could not be queued are
/// dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_log_never_slows_answers() {
    let daemon = Daemon::spawn_full(
        catalog_dir(),
        DEMO_CONSUL,
        &[
            "--log-queries",
            "--upstream",
            "192.0.2.1",
            "--log-level",
            "warn",
        ],
        &[],
        None,
        true,
        true,
    );
    daemon.wait_ready();
    let load = Arc::new(Load::default());
    let started = Instant::now();
    generate(
        daemon.dns,
        10_000,
        Duration::from_secs(1),
        2,
        Arc::clone(&load),
    )
    .await;
    let sent = load.sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while load.answered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        load.answered.load(Ordering::Relaxed),
        sent,
        "in {:?}",
        started.elapsed()
    );
    let dropped = daemon
        .metric("signpost_query_log_dropped_total")
        .unwrap_or(0.0);
    assert!(
        dropped > 0.0 && dropped < sent as f64,
        "dropped {dropped} of {sent}"
    );
}
