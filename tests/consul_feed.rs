//! The catalog feed against the fake agent: first publish, changes, the connection budget,
//! faults and index resets; and the `file:` source.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use serde_json::json;
use signpost::config::{ConsulConfig, ConsulSource};
use signpost::consul::Catalog;
use signpost::consul::catalog::Health;
use signpost::consul::watch::{self, CatalogRx};
use tokio::time::Instant;

use crate::support::fake_consul::{FakeConsul, Fault};

fn config(source: ConsulSource, max_connections: usize, wait: Duration) -> ConsulConfig {
    ConsulConfig {
        address: source,
        token_file: None,
        domain: Name::from_ascii("consul.").unwrap(),
        alt_domain: None,
        datacenter: None,
        node_name: None,
        max_connections,
        ca_file: None,
        cert_file: None,
        key_file: None,
        wait,
        query_poll_interval: Duration::from_secs(30),
    }
}

fn agent(fake: &FakeConsul) -> ConsulConfig {
    config(ConsulSource::Agent(fake.url()), 4, Duration::from_secs(2))
}

/// Wait (at most `within`) for a published catalog for which `pred` holds; every catalog seen
/// on the way is checked with `each`.
async fn wait_for(
    rx: &mut CatalogRx,
    within: Duration,
    mut each: impl FnMut(&Catalog),
    pred: impl Fn(&Catalog) -> bool,
) -> Arc<Catalog> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(c) = rx.borrow_and_update().clone() {
            each(&c);
            if pred(&c) {
                return c;
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the feed stopped"),
            Err(_) => panic!("no matching catalog within {within:?}"),
        }
    }
}

async fn first(rx: &mut CatalogRx) -> Arc<Catalog> {
    wait_for(rx, Duration::from_secs(5), |_| {}, |_| true).await
}

fn health_of(c: &Catalog, service: &str, node: &str) -> Option<Health> {
    c.services
        .get(service)?
        .iter()
        .find(|e| e.node.node == node)
        .map(|e| e.health())
}

async fn web_and_db() -> FakeConsul {
    let fake = FakeConsul::start().await;
    fake.register("web", "n1", "10.0.0.1", "", 8080, &["v1"]);
    fake.register("web", "n2", "10.0.0.2", "10.0.1.2", 8080, &["v1"]);
    fake.register("db", "n2", "10.0.0.2", "", 5432, &[]);
    fake
}

/// The first catalog is published once, complete: every service, the nodes, the agent's
/// datacenter and node name, and the prepared queries.
#[tokio::test]
async fn first_catalog_has_all_services() {
    let fake = web_and_db().await;
    fake.add_query(json!({"ID": "q1", "Name": "web-q", "Service": {"Service": "web"}}));
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    let c = first(&mut rx).await;
    assert_eq!(c.services.keys().collect::<Vec<_>>(), ["db", "web"]);
    assert_eq!(c.services["web"].len(), 2);
    assert_eq!(
        c.services["web"][0].node.node, "n1",
        "instances sorted by node"
    );
    assert_eq!(c.datacenter, "dc1");
    assert_eq!(c.node_name, "agent-node");
    assert_eq!(c.queries.len(), 1);
    assert!(c.nodes.contains_key("n1") && c.nodes.contains_key("n2"));
    assert_eq!(c.index, fake.index());
    assert!(watch::last_contact().is_some());
}

/// A check turning critical shows up in a new catalog within a second, applied from the
/// `/v1/health/state/any` answer itself: no service is read again.
#[tokio::test]
async fn critical_check_shows_up_within_a_second() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    let reads = fake.requests("health_service");
    fake.set_check("n1", "web-8080", "critical");
    let within = Duration::from_secs(1);
    let c = wait_for(
        &mut rx,
        within,
        |_| {},
        |c| health_of(c, "web", "n1") == Some(Health::Critical),
    )
    .await;
    assert_eq!(health_of(&c, "web", "n2"), Some(Health::Passing));
    assert_eq!(
        fake.requests("health_service"),
        reads,
        "patched, not fetched"
    );
}

/// A node check (serfHealth) turning critical marks every service on that node, also without
/// reading them again.
#[tokio::test]
async fn node_check_marks_services_on_the_node() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    let reads = fake.requests("health_service");
    fake.set_check("n2", "", "critical");
    let c = wait_for(
        &mut rx,
        Duration::from_secs(2),
        |_| {},
        |c| {
            health_of(c, "db", "n2") == Some(Health::Critical)
                && health_of(c, "web", "n2") == Some(Health::Critical)
        },
    )
    .await;
    assert_eq!(health_of(&c, "web", "n1"), Some(Health::Passing));
    assert_eq!(
        fake.requests("health_service"),
        reads,
        "patched, not fetched"
    );
}

/// A newly registered instance appears and a deregistered one disappears.
#[tokio::test]
async fn registered_appears_and_deregistered_disappears() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    fake.register("web", "n3", "10.0.0.3", "", 8080, &["v1"]);
    let within = Duration::from_secs(2);
    let c = wait_for(&mut rx, within, |_| {}, |c| c.services["web"].len() == 3).await;
    assert!(c.nodes.contains_key("n3"));
    fake.deregister("n1", "web-8080");
    wait_for(
        &mut rx,
        within,
        |_| {},
        |c| c.services["web"].len() == 2 && health_of(c, "web", "n1").is_none(),
    )
    .await;
    fake.register("api", "n1", "10.0.0.1", "", 9000, &[]);
    wait_for(&mut rx, within, |_| {}, |c| c.services.contains_key("api")).await;
}

/// An instance registered without any check moves only `/v1/catalog/services`: the feed
/// cannot tell which service changed, probes them all and finds it.
#[tokio::test]
async fn unchecked_registration_is_found_by_probing() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    fake.register_unchecked("db", "n3", "10.0.0.3", 5432);
    let c = wait_for(
        &mut rx,
        Duration::from_secs(2),
        |_| {},
        |c| c.services["db"].len() == 2,
    )
    .await;
    assert_eq!(health_of(&c, "db", "n3"), Some(Health::Passing));
}

/// With 2,000 services the feed never holds more agent connections than `max_connections`,
/// and a later change still arrives through the few watches.
#[tokio::test]
async fn connection_budget_holds_with_2000_services() {
    let fake = FakeConsul::start().await;
    fake.register_many(2000, 80);
    let mut cfg = agent(&fake);
    cfg.max_connections = 4;
    let started = Instant::now();
    let (mut rx, _task) = watch::spawn(&cfg).unwrap();
    let c = wait_for(&mut rx, Duration::from_secs(10), |_| {}, |_| true).await;
    assert_eq!(c.services.len(), 2000);
    eprintln!("first catalog of 2000 services in {:?}", started.elapsed());
    fake.set_check("n1", "svc01234-80", "critical");
    wait_for(
        &mut rx,
        Duration::from_secs(2),
        |_| {},
        |c| health_of(c, "svc01234", "n1") == Some(Health::Critical),
    )
    .await;
    assert!(
        fake.max_connections() <= 4,
        "max concurrent connections {} > 4",
        fake.max_connections()
    );
    assert!(fake.requests("health_service") <= 2001 + 5);
}

/// The agent's connection limiter (429 beyond `http_max_conns_per_client`) is never hit when
/// the limit is at least `max_connections`.
#[tokio::test]
async fn agent_connection_limit_is_not_hit() {
    let fake = FakeConsul::start().await;
    fake.register_many(300, 80);
    fake.set_connection_limit(4);
    let mut cfg = agent(&fake);
    cfg.max_connections = 4;
    let (mut rx, _task) = watch::spawn(&cfg).unwrap();
    let c = wait_for(&mut rx, Duration::from_secs(10), |_| {}, |_| true).await;
    assert_eq!(c.services.len(), 300);
    assert_eq!(fake.rejected_connections(), 0);
    assert!(fake.max_connections() <= 4);
}

/// A 500 ("No cluster leader") on every endpoint keeps the last catalog published, whole, and
/// the feed recovers and picks up the change (a registration: the service is read again).
#[tokio::test]
async fn status_500_keeps_last_catalog_and_recovers() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    for endpoint in ["health_service", "health_service", "health_state", "query"] {
        fake.inject(
            Some(endpoint),
            Fault::Status(500, "No cluster leader".into()),
        );
    }
    fake.register("web", "n3", "10.0.0.3", "", 8080, &["v1"]);
    let whole = |c: &Catalog| assert_eq!(c.services.len(), 2, "a catalog lost services");
    wait_for(&mut rx, Duration::from_secs(5), whole, |c| {
        health_of(c, "web", "n3") == Some(Health::Passing)
    })
    .await;
    assert!(fake.pending_faults() <= 2, "faults were served");
}

/// A malformed JSON body keeps the last catalog and the feed recovers.
#[tokio::test]
async fn malformed_json_keeps_last_catalog_and_recovers() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    fake.inject(Some("health_service"), Fault::Malformed);
    fake.inject(Some("health_state"), Fault::Malformed);
    fake.register("db", "n3", "10.0.0.3", "", 5432, &[]);
    let whole = |c: &Catalog| assert_eq!(c.services.len(), 2, "a catalog lost services");
    wait_for(&mut rx, Duration::from_secs(5), whole, |c| {
        health_of(c, "db", "n3") == Some(Health::Passing)
    })
    .await;
    assert_eq!(fake.pending_faults(), 0);
}

/// A connection closed mid-body is an error like any other: the feed keeps the last catalog
/// and recovers.
#[tokio::test]
async fn closed_mid_body_recovers() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    fake.inject(Some("health_service"), Fault::CloseMidBody);
    fake.register("web", "n3", "10.0.0.3", "", 8080, &["v1"]);
    wait_for(
        &mut rx,
        Duration::from_secs(5),
        |_| {},
        |c| health_of(c, "web", "n3") == Some(Health::Passing),
    )
    .await;
    assert_eq!(fake.pending_faults(), 0);
}

/// When the agent's index goes backwards (snapshot restore), the feed resets to 0 and still
/// sees changes made after the reset.
#[tokio::test]
async fn index_going_backwards_resets() {
    let fake = web_and_db().await;
    let cfg = config(
        ConsulSource::Agent(fake.url()),
        4,
        Duration::from_millis(500),
    );
    let (mut rx, _task) = watch::spawn(&cfg).unwrap();
    let before = first(&mut rx).await;
    fake.reset_index(2);
    fake.set_check("n1", "web-8080", "critical");
    assert!(
        fake.index() < before.index,
        "the change sits below the old index"
    );
    let c = wait_for(
        &mut rx,
        Duration::from_secs(5),
        |_| {},
        |c| health_of(c, "web", "n1") == Some(Health::Critical),
    )
    .await;
    assert_eq!(c.services.len(), 2);
}

/// A 403 on `/v1/query` (no `query:read`) does not hold the first catalog back.
#[tokio::test]
async fn forbidden_queries_do_not_block_readiness() {
    let fake = web_and_db().await;
    fake.add_query(json!({"ID": "q1", "Name": "web-q", "Service": {"Service": "web"}}));
    fake.inject(
        Some("query"),
        Fault::Status(403, "Permission denied".into()),
    );
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    let c = first(&mut rx).await;
    assert_eq!(c.services.len(), 2);
    assert!(c.queries.is_empty());
}

/// The feed waits for the agent: the first catalog comes once `/v1/agent/self` answers.
#[tokio::test]
async fn waits_for_agent_self() {
    let fake = web_and_db().await;
    fake.inject(
        Some("self"),
        Fault::Status(500, "No known Consul servers".into()),
    );
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    let c = first(&mut rx).await;
    assert_eq!(c.datacenter, "dc1");
    assert!(fake.requests("self") >= 2);
}

/// The `file:` source publishes the file, re-publishes it when it changes, and keeps the last
/// good catalog when the file becomes invalid.
#[tokio::test]
async fn file_source_reloads_and_keeps_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let entry = |node: &str, port: u16| {
        json!({"Node": {"Node": node, "Address": "10.0.0.9"},
               "Service": {"ID": format!("web-{port}"), "Service": "web", "Port": port}})
    };
    std::fs::write(&path, json!({"web": [entry("n1", 80)]}).to_string()).unwrap();
    let mut cfg = config(ConsulSource::File(path.clone()), 1, Duration::from_secs(1));
    cfg.node_name = Some("me".into());
    let (mut rx, _task) = watch::spawn(&cfg).unwrap();
    let c = first(&mut rx).await;
    assert_eq!((c.datacenter.as_str(), c.node_name.as_str()), ("dc1", "me"));
    assert_eq!(c.services["web"].len(), 1);

    std::fs::write(&path, "{\"web\": [").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.borrow().as_ref().unwrap().services["web"].len(), 1);

    let two = json!({"web": [entry("n2", 81), entry("n1", 80)]});
    std::fs::write(&path, two.to_string()).unwrap();
    let c = wait_for(
        &mut rx,
        Duration::from_secs(3),
        |_| {},
        |c| c.services["web"].len() == 2,
    )
    .await;
    assert_eq!(c.services["web"][0].node.node, "n1");
}

/// A `file:` catalog that does not parse at start is an error naming the file and line.
#[tokio::test]
async fn invalid_file_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    std::fs::write(&path, "{\n \"web\": 3\n}").unwrap();
    let cfg = config(ConsulSource::File(path.clone()), 1, Duration::from_secs(1));
    let err = watch::spawn(&cfg).unwrap_err().to_string();
    assert!(err.contains("catalog.json:2:"), "{err}");
}

/// Prepared-query definitions follow catalog changes at most about once a second: 30 check
/// flips in 3 s (each published) cause a handful of `/v1/query` reads, not one per change, and
/// the last change is still followed by a read.
#[tokio::test]
async fn query_rereads_are_spaced_under_churn() {
    let fake = web_and_db().await;
    let (mut rx, _task) = watch::spawn(&agent(&fake)).unwrap();
    first(&mut rx).await;
    // Let the first catalog's follow-up read land before counting.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = fake.requests("query");
    let started = tokio::time::Instant::now();
    for i in 0..30 {
        let status = if i % 2 == 0 { "critical" } else { "passing" };
        fake.set_check("n1", "web-8080", status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let churn = started.elapsed();
    // After the last change: one trailing read within the gap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reads = fake.requests("query") - before;
    let most = churn.as_secs() + 2;
    assert!(
        (1..=most).contains(&reads),
        "{reads} query reads for 30 changes in {churn:?} (at most {most})"
    );
    let c = rx.borrow().clone().unwrap();
    assert_eq!(health_of(&c, "web", "n1"), Some(Health::Passing));
}
