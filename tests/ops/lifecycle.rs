//! Reload (SIGHUP) and shutdown (SIGTERM) of the real binary.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use nix::sys::signal::Signal;
use tokio::net::UdpSocket;

use super::daemon::{DEMO_CONSUL, Daemon, catalog_dir};
use crate::support::fake_upstream::{Answer, Behaviour, FakeUpstream};
use crate::support::signpost::{Via, ask, eventually, query_bytes};

/// The IPv4 addresses in the answer to `name` A.
async fn a_records(server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    ask(server, name, RecordType::A, Via::Udp)
        .await
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn config(upstreams: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "{DEMO_CONSUL}\n[forward]\nupstreams = [{}]\n{extra}",
        list.join(", ")
    )
}

async fn reloads(daemon: &Daemon, result: &str, want: f64) -> bool {
    let series = format!("signpost_config_reloads_total{{result=\"{result}\"}}");
    eventually(Duration::from_secs(5), || async {
        daemon.metric(&series) == Some(want)
    })
    .await
}

/// SIGHUP applies a new upstream, a DNS knob (`udp_answer_limit`) and a new hosts file, counts
/// `result="ok"`, and logs that a changed `[listen]` needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_upstreams_knobs_and_hosts() {
    let a = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 300)).await;
    let b = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 2), 300)).await;
    let daemon = Daemon::start(catalog_dir(), &config(&[a.addr], ""), &[], &[]);
    assert_eq!(
        a_records(daemon.dns, "one.example.net").await,
        [Ipv4Addr::new(192, 0, 2, 1)]
    );
    assert!(a_records(daemon.dns, "web.service.consul").await.len() >= 2);
    assert!(reloads(&daemon, "ok", 0.0).await, "counter present at 0");

    std::fs::write(daemon.dir.path().join("hosts"), "192.0.2.77 printer.lan\n").unwrap();
    let v2 = config(
        &[b.addr],
        "[dns]\nudp_answer_limit = 1\n[zones]\nhosts = \"hosts\"\n[listen]\nudp_workers = 3\n",
    );
    std::fs::write(daemon.config_path(), v2).unwrap();
    daemon.signal(Signal::SIGHUP);
    assert!(reloads(&daemon, "ok", 1.0).await, "log:\n{}", daemon.log());

    assert_eq!(
        a_records(daemon.dns, "two.example.net").await,
        [Ipv4Addr::new(192, 0, 2, 2)],
        "the new upstream answers"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            a_records(daemon.dns, "web.service.consul").await.len() == 1
        })
        .await,
        "udp_answer_limit = 1 applies"
    );
    assert_eq!(
        a_records(daemon.dns, "printer.lan").await,
        [Ipv4Addr::new(192, 0, 2, 77)]
    );
    let log = daemon.log();
    assert!(
        log.contains("only a restart applies it") && log.contains("listen"),
        "{log}"
    );
}

/// An invalid file at SIGHUP keeps the running config serving, counts `result="error"` and
/// logs why (file, key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_running_config() {
    let a = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 300)).await;
    let daemon = Daemon::start(catalog_dir(), &config(&[a.addr], ""), &[], &[]);
    std::fs::write(daemon.config_path(), "[dns]\nbogus = 1\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    assert!(
        reloads(&daemon, "error", 1.0).await,
        "log:\n{}",
        daemon.log()
    );
    assert_eq!(
        daemon.metric("signpost_config_reloads_total{result=\"ok\"}"),
        Some(0.0)
    );
    let log = daemon.log();
    assert!(
        log.contains("not reloaded") && log.contains("bogus"),
        "{log}"
    );
    assert_eq!(
        a_records(daemon.dns, "still.example.net").await,
        [Ipv4Addr::new(192, 0, 2, 1)]
    );
    assert!(a_records(daemon.dns, "web.service.consul").await.len() >= 2);

    // A valid file whose zone directory does not load is refused as a whole, too.
    std::fs::create_dir(daemon.dir.path().join("zones")).unwrap();
    std::fs::write(
        daemon.dir.path().join("zones/bad.zone"),
        "this is not a zone\n",
    )
    .unwrap();
    std::fs::write(
        daemon.config_path(),
        config(&[a.addr], "[zones]\ndir = \"zones\"\n"),
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    assert!(
        reloads(&daemon, "error", 2.0).await,
        "log:\n{}",
        daemon.log()
    );
    assert_eq!(
        a_records(daemon.dns, "again.example.net").await,
        [Ipv4Addr::new(192, 0, 2, 1)]
    );
}

/// SIGTERM stops accepting, lets a forwarded query already in flight get its answer, and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_and_exits_0() {
    let slow = FakeUpstream::with(
        Behaviour::Slow(Duration::from_millis(800)),
        Ipv4Addr::new(192, 0, 2, 9),
    )
    .await;
    let mut daemon = Daemon::start(catalog_dir(), &config(&[slow.addr], ""), &[], &[]);
    let dns = daemon.dns;
    let pending = tokio::spawn(async move { a_records(dns, "slow.example.net").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.signal(Signal::SIGTERM);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the in-flight query is answered")
        .unwrap();
    assert_eq!(answer, [Ipv4Addr::new(192, 0, 2, 9)]);
    let code = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(8)));
    assert_eq!(code, Some(0), "log:\n{}", daemon.log());
}

/// Queries sent, answered, and answered with an error, by the load generator.
#[derive(Default)]
pub(super) struct Load {
    pub(super) sent: AtomicU64,
    pub(super) answered: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// A bounded UDP load generator: `lanes` sockets, each pacing its share of `qps` every
/// millisecond for `duration` and counting replies, at most 2,000 queries outstanding per
/// socket. Returns when sending is done; replies keep being counted by the receiver tasks.
pub(super) async fn generate(
    target: SocketAddr,
    qps: u64,
    duration: Duration,
    lanes: usize,
    load: Arc<Load>,
) {
    let mut senders = Vec::new();
    for lane in 0..lanes {
        // A big receive buffer: on a busy machine this test's runtime may fall behind for a
        // moment, and a reply dropped here would count against signpost.
        let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let _ = raw.set_recv_buffer_size(8 << 20);
        raw.set_nonblocking(true).unwrap();
        raw.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let socket = Arc::new(UdpSocket::from_std(raw.into()).unwrap());
        let load = Arc::clone(&load);
        let rx = Arc::clone(&socket);
        let counting = Arc::clone(&load);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = rx.recv(&mut buf).await {
                counting.answered.fetch_add(1, Ordering::Relaxed);
                if n < 4 || buf[3] & 0x0F != 0 {
                    counting.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let names = [
            query_bytes("web.service.consul.", RecordType::A, None),
            query_bytes("api.service.consul.", RecordType::SRV, None),
            query_bytes("cached.example.net.", RecordType::A, None),
        ];
        let per_ms = qps / 1000 / lanes as u64;
        senders.push(tokio::spawn(async move {
            socket.connect(target).await.unwrap();
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i: u64 = 0;
            while start.elapsed() < duration {
                tick.tick().await;
                for _ in 0..per_ms {
                    let outstanding = load
                        .sent
                        .load(Ordering::Relaxed)
                        .saturating_sub(load.answered.load(Ordering::Relaxed));
                    if outstanding > 2_000 * lanes as u64 {
                        break;
                    }
                    let mut packet = names[(i % 3) as usize].clone();
                    packet[..2].copy_from_slice(&((i as u16) ^ (lane as u16) << 12).to_be_bytes());
                    if socket.send(&packet).await.is_ok() {
                        load.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
}

/// 20,000 queries a second for 3 s over loopback (`.consul` A and SRV, and a cached forwarded
/// name), with a SIGHUP every 500 ms that swaps the forwarder and the answer table: every
/// query is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_query() {
    let a = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 300)).await;
    let b = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 2), 300)).await;
    let daemon = Daemon::spawn_with(
        catalog_dir(),
        &config(&[a.addr, b.addr], "[listen]\nudp_workers = 2\n"),
        &[],
        &[],
        None,
        true,
    );
    daemon.wait_ready();
    let load = Arc::new(Load::default());
    let generator = tokio::spawn(generate(
        daemon.dns,
        20_000,
        Duration::from_secs(3),
        4,
        Arc::clone(&load),
    ));
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (order, limit) = if i % 2 == 0 {
            ([b.addr, a.addr], 1)
        } else {
            ([a.addr, b.addr], 3)
        };
        let extra = format!("[listen]\nudp_workers = 2\n[dns]\nudp_answer_limit = {limit}\n");
        std::fs::write(daemon.config_path(), config(&order, &extra)).unwrap();
        daemon.signal(Signal::SIGHUP);
    }
    generator.await.unwrap();
    let sent = load.sent.load(Ordering::Relaxed);
    let settled = Instant::now() + Duration::from_secs(5);
    while load.answered.load(Ordering::Relaxed) < sent && Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = load.answered.load(Ordering::Relaxed);
    let metrics = daemon.get("/metrics").1;
    let received: f64 = ["consul", "zone", "forward", "invalid"]
        .iter()
        .filter_map(|z| {
            let series = format!("signpost_dns_requests_total{{proto=\"udp\",zone=\"{z}\"}}");
            super::daemon::metric_value(&metrics, &series)
        })
        .sum();
    eprintln!(
        "load: sent {sent} in 3 s ({} qps), signpost counted {received}, answered {answered}, errors {}",
        sent / 3,
        load.errors.load(Ordering::Relaxed)
    );
    assert!(reloads(&daemon, "ok", 5.0).await, "log:\n{}", daemon.log());
    assert_eq!(answered, sent, "lost {} queries", sent - answered);
    assert_eq!(load.errors.load(Ordering::Relaxed), 0);
    assert!(
        sent >= 30_000,
        "the generator reached only {} qps",
        sent / 3
    );
    let _ = ResponseCode::NoError;
}
