//! Agent faults seen through the whole signpost: DNS keeps answering from the last complete
//! catalog while the agent fails, the metrics say so, and the feed recovers without a restart.
//! Also: a partial fetch never publishes, and an idle feed sends nothing but its long polls.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use signpost::config::{ConsulConfig, ConsulSource};
use signpost::consul::Catalog;
use signpost::consul::catalog::Health;
use signpost::consul::watch::{self, CatalogRx};
use tokio::time::Instant;

use crate::support::fake_consul::{FakeConsul, Fault};
use crate::support::signpost::{Signpost, Via, ask, eventually, lines};

/// Both `web` instances passing.
const TWO: [&str; 2] = [
    "web.service.consul. 0 IN A 10.0.0.1",
    "web.service.consul. 0 IN A 10.0.1.2",
];
/// `web` on n1 gone or critical.
const ONE: [&str; 1] = ["web.service.consul. 0 IN A 10.0.1.2"];

/// `web` on n1 and n2, `db` on n2.
async fn agent() -> FakeConsul {
    let fake = FakeConsul::start().await;
    fake.register("web", "n1", "10.0.0.1", "", 8080, &[]);
    fake.register("web", "n2", "10.0.0.2", "10.0.1.2", 8080, &[]);
    fake.register("db", "n2", "10.0.0.2", "", 5432, &[]);
    fake
}

/// A config with a 2 s `wait`, so that hung requests are given up after about a second.
fn toml(fake: &FakeConsul) -> String {
    format!("[consul]\naddress = \"{}\"\nwait = \"2s\"\n", fake.url())
}

/// The A answer for `web.service.consul.`; panics on anything but NOERROR with answers.
async fn web(dns: SocketAddr) -> Vec<String> {
    let m = ask(dns, "web.service.consul.", RecordType::A, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let answer = lines(&m.answers);
    assert!(!answer.is_empty(), "an empty answer");
    answer
}

/// Inject `faults`, deregister web on n1, and check that DNS keeps answering the whole old
/// catalog for `old_for`, then shows the change within `within`; every fault is served. (A
/// deregistration needs the service read again: a status change alone is applied from the
/// `/v1/health/state/any` answer and would not reach the `health_service` faults.)
async fn survives(faults: &[(Option<&'static str>, Fault)], old_for: Duration, within: Duration) {
    survives_change(faults, old_for, within, |fake| {
        fake.deregister("n1", "web-8080")
    })
    .await;
}

/// [`survives`] with the change made by `change`.
async fn survives_change(
    faults: &[(Option<&'static str>, Fault)],
    old_for: Duration,
    within: Duration,
    change: impl Fn(&FakeConsul),
) {
    let fake = agent().await;
    let sp = Signpost::start(&toml(&fake)).await;
    sp.wait_ready().await;
    assert_eq!(web(sp.dns).await, TWO);
    for (endpoint, fault) in faults {
        fake.inject(*endpoint, fault.clone());
    }
    change(&fake);
    let changed = Instant::now();
    while changed.elapsed() < old_for {
        assert_eq!(web(sp.dns).await, TWO, "changed during the fault");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = eventually(within, || async { web(sp.dns).await == ONE }).await;
    assert!(recovered, "the change never showed ({faults:?})");
    // The prepared-query read that follows a change may start up to a second later.
    let served = eventually(Duration::from_secs(3), || async {
        fake.pending_faults() == 0
    })
    .await;
    assert!(served, "a fault was not served");
    sp.stop().await;
}

/// 500 `No cluster leader` on every endpoint the change goes through: answers stay, then the
/// change shows.
#[tokio::test]
async fn no_cluster_leader_is_survived() {
    let leader = || Fault::Status(500, "No cluster leader".into());
    let faults = [
        (Some("health_state"), leader()),
        (Some("health_service"), leader()),
        (Some("health_service"), leader()),
        (Some("query"), leader()),
    ];
    survives(&faults, Duration::ZERO, Duration::from_secs(5)).await;
}

/// A hung fetch is given up (1 s with `wait = 2s`) while the old answers are served, then
/// retried.
#[tokio::test]
async fn hung_request_is_given_up_and_retried() {
    let faults = [(Some("health_service"), Fault::Hang)];
    survives(&faults, Duration::from_millis(700), Duration::from_secs(5)).await;
}

/// A connection closed in the middle of a body is retried on a new connection.
#[tokio::test]
async fn connection_closed_mid_body_is_survived() {
    let faults = [
        (Some("health_state"), Fault::CloseMidBody),
        (Some("health_service"), Fault::CloseMidBody),
    ];
    survives(&faults, Duration::ZERO, Duration::from_secs(5)).await;
}

/// Malformed JSON is an error like any other: the last catalog stays.
#[tokio::test]
async fn malformed_json_is_survived() {
    let faults = [
        (Some("health_state"), Fault::Malformed),
        (Some("health_service"), Fault::Malformed),
    ];
    survives(&faults, Duration::ZERO, Duration::from_secs(5)).await;
}

/// A status change, applied from `/v1/health/state/any` without a service read, survives that
/// endpoint failing every way in a row: 500, malformed JSON, a connection cut mid-body.
#[tokio::test]
async fn status_change_survives_state_faults() {
    let faults = [
        (
            Some("health_state"),
            Fault::Status(500, "No cluster leader".into()),
        ),
        (Some("health_state"), Fault::Malformed),
        (Some("health_state"), Fault::CloseMidBody),
    ];
    let flip = |fake: &FakeConsul| fake.set_check("n1", "web-8080", "critical");
    survives_change(&faults, Duration::ZERO, Duration::from_secs(5), flip).await;
}

/// A 429 means "slow down": the retry waits at least a second, the old answers meanwhile.
#[tokio::test]
async fn too_many_requests_slows_down() {
    let faults = [(
        Some("health_service"),
        Fault::Status(429, "rate limit exceeded, try again later".into()),
    )];
    survives(&faults, Duration::from_millis(800), Duration::from_secs(5)).await;
}

/// An index going backwards (snapshot restore) is followed by a reset; the change made below
/// the old index shows.
#[tokio::test]
async fn index_going_backwards_is_followed() {
    let fake = agent().await;
    let sp = Signpost::start(&toml(&fake)).await;
    sp.wait_ready().await;
    let before = fake.index();
    fake.reset_index(2);
    fake.set_check("n1", "web-8080", "critical");
    assert!(fake.index() < before);
    let recovered = eventually(Duration::from_secs(6), || async {
        web(sp.dns).await == ONE
    })
    .await;
    assert!(recovered, "the change below the old index never showed");
    sp.stop().await;
}

/// A signpost process killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// `GET http://<http><path>`: (status, body); (0, "") when nothing answers.
async fn get(http: SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{http}{path}")).await {
        Ok(resp) => (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// The value of the sample `series` (name with labels) in a Prometheus scrape; 0 if absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The agent down for a while (listener closed, connections cut), with the real binary in its
/// own process so that the metrics are its own: DNS keeps answering the last catalog, `/ready`
/// stays 200, `consul_catalog_age_seconds` grows, `consul_watch_errors_total{reason="connect"}`
/// counts, and once the agent is back on the same port the change made meanwhile shows without
/// a restart. The token comes from `CONSUL_HTTP_TOKEN`, which the agent requires.
#[tokio::test]
async fn agent_down_then_back() {
    let mut fake = agent().await;
    fake.require_token(Some("s3cr3t"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signpost.toml");
    std::fs::write(&config, toml(&fake)).unwrap();
    let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &dns.to_string(), "--http", &http.to_string()])
        .env("CONSUL_HTTP_TOKEN", "s3cr3t")
        .env("SIGNPOST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn signpost");
    let _daemon = Daemon(child);
    let ready = eventually(Duration::from_secs(10), || async {
        get(http, "/ready").await.0 == 200
    })
    .await;
    assert!(ready, "not ready");
    assert!(fake.tokens_seen().contains("s3cr3t"));
    assert_eq!(web(dns).await, TWO);

    fake.stop().await;
    fake.set_check("n1", "web-8080", "critical");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, first) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(get(http, "/ready").await.0, 200, "/ready must stay 200");
    assert_eq!(web(dns).await, TWO, "the last catalog is served");
    let age = |s: &str| sample(s, "signpost_consul_catalog_age_seconds");
    let connect = r#"signpost_consul_watch_errors_total{reason="connect"}"#;
    assert!(age(&first) >= 1.0, "age {}", age(&first));
    assert!(sample(&first, connect) >= 1.0, "{first}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, second) = get(http, "/metrics").await;
    assert!(age(&second) >= age(&first) + 0.9, "the age does not grow");
    assert!(sample(&second, connect) > sample(&first, connect));
    assert_eq!(web(dns).await, TWO);

    fake.restart().await;
    let recovered = eventually(Duration::from_secs(12), || async { web(dns).await == ONE }).await;
    assert!(recovered, "no recovery after the agent came back");
    let (_, after) = get(http, "/metrics").await;
    assert!(age(&after) < 3.0, "age {} after recovery", age(&after));
}

fn config(fake: &FakeConsul, wait: Duration) -> ConsulConfig {
    ConsulConfig {
        address: ConsulSource::Agent(fake.url()),
        token_file: None,
        domain: Name::from_ascii("consul.").unwrap(),
        alt_domain: None,
        datacenter: None,
        node_name: None,
        max_connections: 4,
        ca_file: None,
        cert_file: None,
        key_file: None,
        wait,
        query_poll_interval: Duration::from_secs(1),
    }
}

async fn first(rx: &mut CatalogRx) -> Arc<Catalog> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(c) = rx.borrow_and_update().clone() {
            return c;
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("a first catalog")
            .expect("the feed runs");
    }
}

fn health(c: &Catalog, service: &str, node: &str) -> Option<Health> {
    c.services
        .get(service)?
        .iter()
        .find(|e| e.node.node == node)
        .map(|e| e.health())
}

/// Two services change in one agent write (an instance of each deregistered, so that both are
/// read again) and the fetch of one fails three times: no catalog with only one of the changes
/// is ever published. The fetches are retried after backoffs of at
/// least 125 + 250 + 500 ms, and `web`'s fetch succeeded at the first attempt, so a
/// half-updated catalog would have been published, and seen here, for most of a second.
#[tokio::test]
async fn partial_fetch_never_publishes() {
    let fake = agent().await;
    fake.register("db", "n1", "10.0.0.1", "", 5433, &[]);
    let (mut rx, _task) = watch::spawn(&config(&fake, Duration::from_secs(2))).unwrap();
    first(&mut rx).await;
    for _ in 0..3 {
        fake.inject_service("db", Fault::Status(500, "rpc error".into()));
    }
    fake.deregister_all(&[("n1", "web-8080"), ("n2", "db-5432")]);
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(8);
    let mut seen = 0;
    loop {
        if let Some(c) = rx.borrow_and_update().clone() {
            seen += 1;
            let web = health(&c, "web", "n1").is_none();
            let db = health(&c, "db", "n2").is_none();
            assert_eq!(web, db, "a half-updated catalog was published");
            if web && db {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the change never showed");
        // Sample every 10 ms as well as on every publish.
        let _ = tokio::time::timeout(Duration::from_millis(10), rx.changed()).await;
    }
    assert_eq!(fake.pending_faults(), 0);
    assert!(
        changed.elapsed() >= Duration::from_millis(800),
        "no failure window"
    );
    assert!(seen > 50, "sampled only {seen} times");
}

/// While nothing changes the feed sends only its three long polls, re-issued when `wait`
/// expires, and the prepared-query poll: no service fetches, no `/v1/agent/self`.
#[tokio::test]
async fn idle_feed_sends_only_long_polls() {
    let fake = agent().await;
    let wait = Duration::from_millis(500);
    let (mut rx, _task) = watch::spawn(&config(&fake, wait)).unwrap();
    first(&mut rx).await;
    // Let the first catalog's follow-up query poll land outside the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fake.all_requests();
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let after = fake.all_requests();
    let delta = |ep: &str| after.get(ep).unwrap_or(&0) - before.get(ep).unwrap_or(&0);
    // Each long poll returns after wait + up to wait/16, then waits 100-120 ms.
    for ep in ["services", "health_state", "nodes"] {
        let n = delta(ep);
        assert!((3..=7).contains(&n), "{ep}: {n} requests in {window:?}");
    }
    let n = delta("query");
    assert!((2..=4).contains(&n), "query: {n} polls in {window:?}");
    for ep in ["health_service", "self", "execute", "other"] {
        assert_eq!(delta(ep), 0, "{ep}: requests while idle");
    }
    assert!(
        rx.has_changed().is_ok_and(|c| !c),
        "nothing changed, nothing published"
    );
}
