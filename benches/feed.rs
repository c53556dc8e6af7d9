//! The Consul feed benchmark: the real `signpost` binary, in its own process, against the fake
//! agent of `tests/support/fake_consul.rs` running here.
//!
//! ```text
//! cargo bench --bench feed
//! ```
//!
//! Reports, for 5,000 services × 3 instances: time from start to `/ready`, the most agent
//! connections open at once, agent requests per minute while idle (by endpoint), propagation
//! latency p50/p99 from a check change on the agent to the DNS answer changing (10 changes/s,
//! UDP on loopback), and signpost's RSS; for 10,000 × 5 (50,000 instances): time to `/ready`
//! and RSS. A baseline first measures the fake agent alone, so that its share of the figures is
//! known. `FEED_BENCH_QUICK=1` shortens the idle window and the change count.

#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/fake_consul.rs"]
mod fake_consul;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use fake_consul::FakeConsul;

/// `wait` and `query_poll_interval` of the benchmark config: idle traffic is 3 long polls per
/// `wait` plus one query poll per interval.
const WAIT_S: u64 = 10;
const QUERY_POLL_S: u64 = 10;

struct Scale {
    services: usize,
    per_service: usize,
    nodes: usize,
}

/// A signpost process killed when dropped.
struct Daemon {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

fn main() {
    let quick = std::env::var_os("FEED_BENCH_QUICK").is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("# signpost feed benchmark");
        println!(
            "cpus: {}",
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        let small = Scale {
            services: 5_000,
            per_service: 3,
            nodes: 1_000,
        };
        let big = Scale {
            services: 10_000,
            per_service: 5,
            nodes: 2_000,
        };
        run_main(&small, quick).await;
        run_memory(&big).await;
    });
}

/// 5,000 × 3: every figure.
async fn run_main(scale: &Scale, quick: bool) {
    let instances = scale.services * scale.per_service;
    println!(
        "\n## {} services x {} instances = {instances} on {} nodes",
        scale.services, scale.per_service, scale.nodes
    );
    let fake = FakeConsul::start().await;
    fake.register_bulk(scale.services, scale.per_service, scale.nodes);
    baseline(&fake, scale.services).await;
    let fake = FakeConsul::start().await;
    fake.register_bulk(scale.services, scale.per_service, scale.nodes);

    let started = Instant::now();
    let sp = Daemon::start(&fake);
    let ready = sp.wait_ready(Duration::from_secs(30)).await;
    println!("time to /ready: {:.0} ms", ready.as_secs_f64() * 1e3);
    println!("rss after ready: {} MiB", sp.rss_mib());
    assert_eq!(sp.a_count("s00000").await, scale.per_service);

    // Idle: nothing changes for a window that covers two wait periods.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(if quick { WAIT_S } else { 2 * WAIT_S });
    let before = fake.all_requests();
    tokio::time::sleep(window).await;
    let after = fake.all_requests();
    let per_min = 60.0 / window.as_secs_f64();
    let mut total = 0;
    let mut by_endpoint = Vec::new();
    for (ep, n) in &after {
        let d = n - before.get(ep).copied().unwrap_or(0);
        total += d;
        if d > 0 {
            by_endpoint.push(format!("{ep}={d}"));
        }
    }
    println!(
        "idle requests: {total} in {window:?} = {:.1}/min ({}); expected about {:.1}/min \
         (3 long polls per {WAIT_S}s wait + 1 query poll per {QUERY_POLL_S}s)",
        total as f64 * per_min,
        by_endpoint.join(", "),
        3.0 * 60.0 / WAIT_S as f64 + 60.0 / QUERY_POLL_S as f64,
    );

    // Propagation: 10 check changes per second, each on another service.
    let changes = if quick { 30 } else { 100 };
    let mut pollers = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let fake = Arc::new(fake);
    for i in 0..changes {
        tick.tick().await;
        let service = format!("s{:05}", (i * 37 + 11) % scale.services);
        let node = format!(
            "node{:04}",
            ((i * 37 + 11) % scale.services * scale.per_service) % scale.nodes
        );
        let id = format!("{service}-0");
        let dns = sp.dns;
        let want = scale.per_service - 1;
        let changed = Instant::now();
        fake.set_checks(&[(&node, &id, "critical")]);
        let fake = Arc::clone(&fake);
        pollers.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let name = format!("{service}.service.consul.");
            loop {
                if a_count(&socket, dns, &name).await == want {
                    let seen = changed.elapsed();
                    let (agent, answered) = agent_time(&fake, changed, &service);
                    let after = answered.map(|at| Instant::now().saturating_duration_since(at));
                    return Some((seen, agent, after));
                }
                if changed.elapsed() > Duration::from_secs(5) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut agent = Vec::new();
    let mut own = Vec::new();
    let mut after_answer = Vec::new();
    let mut lost = 0;
    for p in pollers {
        match p.await.unwrap() {
            Some((d, a, after)) => {
                latencies.push(d);
                agent.push(a);
                own.push(d.saturating_sub(a));
                after_answer.extend(after);
            }
            None => lost += 1,
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    };
    println!(
        "propagation ({} changes at 10/s, {lost} not seen within 5 s): p50 {:.1} ms, p90 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        pct(&mut latencies, 0.50),
        pct(&mut latencies, 0.90),
        pct(&mut latencies, 0.99),
        pct(&mut latencies, 1.0),
    );
    println!(
        "  of which the fake agent's own answer time (state/any + any service read): p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        pct(&mut agent, 0.50),
        pct(&mut agent, 0.99),
        pct(&mut agent, 1.0),
    );
    println!(
        "  signpost's share (total - agent): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut own, 0.50),
        pct(&mut own, 0.90),
        pct(&mut own, 0.99),
        pct(&mut own, 1.0),
    );
    println!(
        "  from the agent's answer carrying the change (state/any, or the service read when \
         there was one) to the DNS answer changing, {} changes: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        after_answer.len(),
        pct(&mut after_answer, 0.50),
        pct(&mut after_answer, 0.90),
        pct(&mut after_answer, 0.99),
        pct(&mut after_answer, 1.0),
    );
    println!(
        "rss after changes: {} MiB (peak {} MiB)",
        sp.rss_mib(),
        sp.hwm_mib()
    );
    println!(
        "max concurrent agent connections: {} (max_connections = 8); rejected: {}",
        fake.max_connections(),
        fake.rejected_connections()
    );
    println!("agent requests in total: {:?}", fake.all_requests());
    println!("whole scenario: {:.1} s", started.elapsed().as_secs_f64());
}

/// 10,000 × 5: time to ready and memory.
async fn run_memory(scale: &Scale) {
    let instances = scale.services * scale.per_service;
    println!(
        "\n## {} services x {} instances = {instances} on {} nodes",
        scale.services, scale.per_service, scale.nodes
    );
    let fake = FakeConsul::start().await;
    fake.register_bulk(scale.services, scale.per_service, scale.nodes);
    baseline(&fake, scale.services).await;
    // A fresh agent, so that the baseline's connections are not counted.
    let fake = FakeConsul::start().await;
    fake.register_bulk(scale.services, scale.per_service, scale.nodes);
    let sp = Daemon::start(&fake);
    let ready = sp.wait_ready(Duration::from_secs(60)).await;
    println!("time to /ready: {:.0} ms", ready.as_secs_f64() * 1e3);
    assert_eq!(sp.a_count("s00000").await, 3, "udp_answer_limit = 3");
    println!(
        "rss after ready: {} MiB (peak {} MiB)",
        sp.rss_mib(),
        sp.hwm_mib()
    );
    // A few changes, so that the catalog and the answer table are rebuilt.
    for i in 0..10 {
        let id = format!("s{:05}-0", i * 100);
        let node = format!("node{:04}", (i * 100 * scale.per_service) % scale.nodes);
        fake.set_checks(&[(&node, &id, "critical")]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "rss after 10 changes: {} MiB (peak {} MiB)",
        sp.rss_mib(),
        sp.hwm_mib()
    );
    println!(
        "max concurrent agent connections: {}",
        fake.max_connections()
    );
}

/// The fake agent's own time to answer what signpost read for one change made at `changed`:
/// the first `/v1/health/state/any` answer rendered after the change (from when the write
/// released it, or it arrived, to its body) plus, if signpost read the service again (a
/// change a patch could not apply), the first read of it received after the change. What
/// remains of the propagation time is signpost's: parsing, patching or asking, publishing,
/// rebuilding the answers, and the client's 2 ms poll.
///
/// Also returns when the agent rendered the last of those answers: the agent's answer that
/// carries the change, from which "within 100 ms of the agent's answer" is measured.
fn agent_time(fake: &FakeConsul, changed: Instant, service: &str) -> (Duration, Option<Instant>) {
    let first_after = |path: &str| {
        fake.answers(path)
            .into_iter()
            .map(|(rx, done)| (rx.into_std(), done.into_std()))
            .find(|(rx, done)| *done >= changed && *rx + Duration::from_millis(1) >= changed)
    };
    let took = |read: Option<(Instant, Instant)>| {
        read.map_or(Duration::ZERO, |(rx, done)| done - rx.max(changed))
    };
    let state_read = first_after("/v1/health/state/any");
    let service_read = first_after(&format!("/v1/health/service/{service}"));
    let answered = match (state_read, service_read) {
        (Some((_, a)), Some((_, b))) => Some(a.max(b)),
        (a, b) => a.or(b).map(|(_, done)| done),
    };
    (took(state_read) + took(service_read), answered)
}

/// How fast the fake agent alone serves what signpost reads at start: the three list
/// endpoints and every service over 8 connections, with a plain HTTP client.
async fn baseline(fake: &FakeConsul, services: usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let url = fake.url();
    let started = Instant::now();
    let mut bytes = 0;
    for path in [
        "/v1/catalog/services",
        "/v1/health/state/any",
        "/v1/catalog/nodes",
    ] {
        let body = client
            .get(format!("{url}{path}?stale"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        bytes += body.len();
    }
    let lists = started.elapsed();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, next) = (client.clone(), url.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= services {
                    return bytes;
                }
                let u = format!("{url}/v1/health/service/s{i:05}?stale");
                bytes += client
                    .get(u)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .len();
            }
        }));
    }
    for t in tasks {
        bytes += t.await.unwrap();
    }
    println!(
        "baseline, the fake agent alone: lists {:.0} ms, lists + {services} service reads {:.0} ms, \
         {:.1} MiB of JSON",
        lists.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
        bytes as f64 / 1048576.0
    );
}

// === impl Daemon ===

impl Daemon {
    fn start(fake: &FakeConsul) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("signpost.toml");
        let toml = format!(
            "[consul]\naddress = \"{}\"\nmax_connections = 8\nwait = \"{WAIT_S}s\"\n\
             query_poll_interval = \"{QUERY_POLL_S}s\"\n",
            fake.url()
        );
        std::fs::write(&config, toml).unwrap();
        let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(env!("CARGO_BIN_EXE_signpost"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &dns.to_string(), "--http", &http.to_string()])
            .env(
                "SIGNPOST_LOG",
                std::env::var("FEED_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn signpost (run through cargo bench)");
        Daemon {
            child,
            dns,
            http,
            _dir: dir,
        }
    }

    /// Time until `/ready` answers 200, polled every 5 ms.
    async fn wait_ready(&self, within: Duration) -> Duration {
        let started = Instant::now();
        let client = reqwest::Client::new();
        let url = format!("http://{}/ready", self.http);
        while started.elapsed() < within {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("signpost not ready within {within:?}");
    }

    async fn a_count(&self, service: &str) -> usize {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a_count(&socket, self.dns, &format!("{service}.service.consul.")).await
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn rss_mib(&self) -> String {
        format!("{:.1}", self.status_kib("VmRSS:") as f64 / 1024.0)
    }

    fn hwm_mib(&self) -> String {
        format!("{:.1}", self.status_kib("VmHWM:") as f64 / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number of A records for `name` (0 on a timeout or an error).
async fn a_count(socket: &UdpSocket, dns: SocketAddr, name: &str) -> usize {
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let bytes = m.to_vec().unwrap();
    if socket.send_to(&bytes, dns).await.is_err() {
        return 0;
    }
    let mut buf = vec![0; 4096];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Message::from_vec(&buf[..n]).map_or(0, |r| r.answers.len()),
        _ => 0,
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}
