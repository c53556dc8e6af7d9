use super::*;
use crate::consul::catalog::Service;

fn feed() -> Feed {
    let client = Client::new("http://127.0.0.1:1", None, 2, &TlsFiles::default()).unwrap();
    let settings = Settings {
        datacenter: Some("dc1".into()),
        node_name: Some("me".into()),
        wait: Duration::from_secs(1),
        query_poll_interval: Duration::from_secs(30),
        max_connections: 2,
        remote: false,
    };
    let (tx, _rx) = watch::channel(None);
    Feed::new(client, settings, tx)
}

fn check(node: &str, service: &str, status: &str) -> Check {
    Check {
        node: node.into(),
        check_id: if service.is_empty() {
            "serfHealth".into()
        } else {
            format!("service:{service}")
        },
        status: status.into(),
        service_id: service.into(),
        service_name: service.into(),
        ..Check::default()
    }
}

fn entry(node: &str, service: &str) -> HealthEntry {
    HealthEntry {
        node: Arc::new(Node {
            node: node.into(),
            ..Node::default()
        }),
        service: Service {
            id: service.into(),
            service: service.into(),
            ..Service::default()
        },
        checks: vec![],
    }
}

fn services(names: &[&str]) -> BTreeMap<String, Vec<String>> {
    names.iter().map(|n| (n.to_string(), vec![])).collect()
}

/// A feed that has seen `web` on n1 and `db` on n2, all fetched and nothing dirty.
fn settled() -> Feed {
    let mut f = feed();
    f.apply(Event::Services(services(&["web", "db"]), 5));
    f.apply(checks_event(
        vec![check("n1", "web", "passing"), check("n2", "db", "passing")],
        5,
    ));
    f.apply(Event::Nodes(vec![], 5));
    for (name, node) in [("web", "n1"), ("db", "n2")] {
        let q = Blocking::default();
        let meta = Meta {
            index: 5,
            ..Meta::default()
        };
        f.store(name.into(), q, vec![entry(node, name)], meta);
    }
    f.queries = Some(Arc::from(Vec::new()));
    assert!(f.dirty.is_empty());
    f
}

/// The first answer is always a change, whatever its index.
#[test]
fn first_answer_is_a_change() {
    assert_eq!(next_index(0, 42), (Step::Changed, 42));
}

/// Same index back means the wait timed out: continue at the same index without rebuilding.
#[test]
fn same_index_is_a_timeout() {
    assert_eq!(next_index(42, 42), (Step::Unchanged, 42));
}

/// A higher index is a change and becomes the next index.
#[test]
fn higher_index_is_a_change() {
    assert_eq!(next_index(42, 43), (Step::Changed, 43));
}

/// An index that went backwards resets the loop to 0 (`reference/consul-dns.md` §7.4).
#[test]
fn backwards_index_resets_to_zero() {
    assert_eq!(next_index(42, 7), (Step::Reset, 0));
}

/// An index below 1 counts as 1, so the next request still blocks instead of spinning.
#[test]
fn index_below_one_counts_as_one() {
    assert_eq!(next_index(0, 0), (Step::Changed, 1));
    assert_eq!(next_index(1, 0), (Step::Unchanged, 1));
}

/// Loops wait at least 100 ms between iterations, with at most 20 ms of jitter.
#[test]
fn minimum_gap_between_iterations() {
    assert_eq!(min_gap(0), Duration::from_millis(100));
    assert_eq!(min_gap(1000), Duration::from_millis(120));
    assert_eq!(min_gap(5000), Duration::from_millis(120));
}

/// Backoff doubles from 250 ms, is capped at 30 s, and a 429 waits at least 2 s.
#[test]
fn backoff_doubles_caps_and_slows_down() {
    assert_eq!(backoff_delay(0, false, 1000), Duration::from_millis(250));
    assert_eq!(backoff_delay(0, false, 0), Duration::from_millis(125));
    assert_eq!(backoff_delay(1, false, 1000), Duration::from_millis(500));
    assert_eq!(backoff_delay(30, false, 1000), BACKOFF_MAX);
    assert_eq!(backoff_delay(0, true, 1000), SLOW_DOWN_MIN);
}

/// Nothing is fetched before the three loops answered, and nothing is published before every
/// service was fetched and queries were loaded.
#[test]
fn publishes_only_complete_catalogs() {
    let mut f = feed();
    f.apply(Event::Services(services(&["web"]), 3));
    assert!(!f.loops_answered());
    f.apply(checks_event(vec![], 3));
    f.apply(Event::Nodes(vec![], 3));
    assert!(f.loops_answered());
    assert!(f.build().is_none(), "web not fetched yet");
    let meta = Meta {
        index: 4,
        ..Meta::default()
    };
    f.store(
        "web".into(),
        Blocking::default(),
        vec![entry("n1", "web")],
        meta,
    );
    assert!(f.build().is_none(), "queries not loaded yet");
    f.queries = Some(Arc::from(Vec::new()));
    let c = f.build().unwrap();
    assert_eq!(c.index, 4);
    assert!(c.nodes.contains_key("n1"));
    assert!(f.publish());
    assert!(!f.publish(), "same content is not published twice");
}

/// A service check change marks only that service dirty.
#[test]
fn service_check_change_marks_service() {
    let mut f = settled();
    f.apply(checks_event(
        vec![check("n1", "web", "critical"), check("n2", "db", "passing")],
        6,
    ));
    assert_eq!(f.dirty.keys().collect::<Vec<_>>(), ["web"]);
}

/// A node check change marks the services with an instance on that node.
#[test]
fn node_check_change_marks_services_on_node() {
    let mut f = settled();
    f.apply(checks_event(
        vec![
            check("n1", "web", "passing"),
            check("n2", "db", "passing"),
            check("n2", "", "critical"),
        ],
        6,
    ));
    assert_eq!(f.dirty.keys().collect::<Vec<_>>(), ["db"]);
}

/// A new service is fetched at once; a removed one leaves the catalog.
#[test]
fn new_and_removed_services() {
    let mut f = settled();
    f.apply(Event::Services(services(&["web", "api"]), 7));
    assert_eq!(f.dirty.get("api"), Some(&Fetch::Now));
    assert!(!f.fetched.contains_key("db"));
    assert_eq!(f.dirty.len(), 1);
}

/// When the services index moves without a visible reason, every service is probed.
#[test]
fn unexplained_services_change_probes_all() {
    let mut f = settled();
    f.apply(Event::Services(services(&["web", "db"]), 8));
    assert_eq!(f.dirty.len(), 2);
    assert!(f.dirty.values().all(|h| *h == Fetch::Probe));
}

/// A probe that returns the same index keeps the stored entries.
#[test]
fn unchanged_probe_keeps_entries() {
    let mut f = settled();
    let q = Blocking {
        index: 5,
        wait: PROBE_WAIT,
    };
    let meta = Meta {
        index: 5,
        ..Meta::default()
    };
    f.store("web".into(), q, vec![], meta);
    assert_eq!(f.fetched["web"].entries.len(), 1);
}

/// The token comes from `token_file` when set (trimmed), else from the environment value the
/// caller passes; blank means none.
#[test]
fn token_from_file_else_environment() {
    let dir = std::env::temp_dir().join(format!("signpost-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "from-file\n").unwrap();
    let overrides = crate::config::Overrides::default();
    let mut config = crate::config::Config::parse("", &dir.join("signpost.toml"), &overrides)
        .unwrap()
        .consul;
    assert_eq!(
        token(&config, Some(" from-env ".into()))
            .unwrap()
            .as_deref(),
        Some("from-env")
    );
    assert_eq!(token(&config, Some("  ".into())).unwrap(), None);
    assert_eq!(token(&config, None).unwrap(), None);
    config.token_file = Some(path.clone());
    assert_eq!(
        token(&config, Some("from-env".into())).unwrap().as_deref(),
        Some("from-file")
    );
    config.token_file = Some(dir.join("missing"));
    assert!(
        token(&config, None)
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn checks_event(checks: Vec<Check>, index: u64) -> Event {
    // The rows a reader would give for a body that differs from the last in these checks.
    let rows = checks
        .iter()
        .map(|c| serde_json::to_vec(&[c]).unwrap())
        .flat_map(|body| CheckReader::default().read(&body).unwrap().rows.unwrap())
        .collect();
    let read = CheckRead {
        prints: CheckPrints::new(&checks),
        rows: Some(rows),
    };
    Event::Checks(read, index)
}

/// `/v1/health/state/any` parses straight into fingerprints that tell a status change, and
/// the order of checks in the body does not matter.
#[test]
fn check_prints_parse_from_the_body() {
    let a = r#"[{"Node":"n1","CheckID":"serfHealth","Status":"passing","ServiceID":"",
        "ServiceName":"","Output":"ok","Notes":null,"Definition":{}},
        {"Node":"n1","CheckID":"service:web","Status":"passing","ServiceID":"web",
        "ServiceName":"web"},{"Node":"n2","CheckID":"service:db","Status":"passing",
        "ServiceID":"db","ServiceName":"d\u0062"}]"#;
    let b = r#"[{"Node":"n2","CheckID":"service:db","Status":"passing","ServiceID":"db",
        "ServiceName":"db"},{"Node":"n1","CheckID":"service:web","Status":"critical",
        "ServiceID":"web","ServiceName":"web"},{"Node":"n1","CheckID":"serfHealth",
        "Status":"passing","ServiceID":"","ServiceName":""}]"#;
    let pa: CheckPrints = serde_json::from_str(a).unwrap();
    let pb: CheckPrints = serde_json::from_str(b).unwrap();
    assert_eq!(pa.services.len(), 2);
    assert_eq!(pa.nodes.len(), 1);
    assert_eq!(pa.services.get("db"), pb.services.get("db"));
    assert_ne!(pa.services.get("web"), pb.services.get("web"));
    assert_eq!(pa.nodes, pb.nodes);
    let null: CheckPrints = serde_json::from_str("null").unwrap();
    assert_eq!(null, CheckPrints::default());
}

/// `settled()` with each instance carrying its passing service check, as the agent returns it.
fn settled_with_checks() -> Feed {
    let mut f = settled();
    for (name, node) in [("web", "n1"), ("db", "n2")] {
        let mut e = entry(node, name);
        e.checks = vec![check(node, name, "passing")];
        let meta = Meta {
            index: 6,
            ..Meta::default()
        };
        f.store(name.into(), Blocking::default(), vec![e], meta);
    }
    f
}

fn status_of(f: &Feed, service: &str) -> String {
    f.fetched[service].entries[0].checks[0].status.clone()
}

/// A status change is applied from the state/any body itself: nothing left to fetch, and the
/// other service keeps its entries (the same `Arc`).
#[tokio::test]
async fn status_change_is_patched_without_a_fetch() {
    let mut f = settled_with_checks();
    let db = Arc::clone(&f.fetched["db"].entries);
    f.apply(checks_event(
        vec![check("n1", "web", "critical"), check("n2", "db", "passing")],
        7,
    ));
    assert_eq!(f.dirty.get("web"), Some(&Fetch::Checks));
    assert_eq!(f.patch_checks(), 1);
    assert!(f.dirty.is_empty());
    assert_eq!(status_of(&f, "web"), "critical");
    assert!(Arc::ptr_eq(&db, &f.fetched["db"].entries));
    assert!(f.publish());
}

/// A check of an unknown instance (a registration) is not patched: the service is fetched.
#[tokio::test]
async fn new_instance_check_is_fetched_not_patched() {
    let mut f = settled_with_checks();
    let mut extra = check("n3", "web", "passing");
    extra.service_id = "web-2".into();
    f.apply(checks_event(
        vec![
            check("n1", "web", "passing"),
            extra,
            check("n2", "db", "passing"),
        ],
        7,
    ));
    assert_eq!(f.patch_checks(), 0);
    assert_eq!(f.dirty.get("web"), Some(&Fetch::Now));
    assert_eq!(status_of(&f, "web"), "passing");
}

/// A probe asked for by a services change wins over a patch.
#[test]
fn probe_replaces_a_pending_patch() {
    let mut f = settled_with_checks();
    f.apply(checks_event(
        vec![check("n1", "web", "critical"), check("n2", "db", "passing")],
        7,
    ));
    f.apply(Event::Services(services(&["web", "db"]), 8));
    assert_eq!(f.dirty.get("web"), Some(&Fetch::Probe));
    assert_eq!(f.dirty.get("db"), Some(&Fetch::Probe));
}

/// Remote watches fit in what the local feed leaves: two long polls each, one permit kept.
#[test]
fn remote_watches_fit_the_budget() {
    assert_eq!(remote_watches(4), 0);
    assert_eq!(remote_watches(5), 0);
    assert_eq!(remote_watches(6), 1);
    assert_eq!(remote_watches(7), 1);
    assert_eq!(remote_watches(8), 2);
    assert_eq!(remote_watches(10), 3);
    assert_eq!(remote_watches(1), 0);
}
