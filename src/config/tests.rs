//! Tests for config loading: defaults, every error path with its key and line, flags,
//! relative paths, and every shipped file in `config/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;

use super::*;
use crate::consul::catalog::HealthEntry;

/// The repository's `config/` directory.
fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Every `config/*.toml`, sorted.
fn shipped_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected signpost.toml and demo.toml, found {files:?}"
    );
    files
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("/nonexistent/test.toml"),
        &Overrides::default(),
    )
}

#[track_caller]
fn parse_ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected {text:?} to parse, got: {e}"))
}

/// Expects `text` to fail naming `key` at `line`, with `needle` in the message.
#[track_caller]
fn assert_error(text: &str, key: &str, line: usize, needle: &str) {
    let err = match parse(text) {
        Ok(_) => panic!("expected an error for key {key} in:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(err.file, Path::new("/nonexistent/test.toml"), "{err}");
    assert_eq!(err.key, key, "{err}");
    assert_eq!(err.line, Some(line), "{err}");
    assert!(
        err.message.contains(needle),
        "expected {needle:?} in: {err}"
    );
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// Tests that an empty file gives exactly the defaults of DESIGN.md's contract.
#[test]
fn defaults_match_the_contract() {
    let c = parse_ok("");
    assert_eq!(c.listen.dns, vec![sock("127.0.0.1:53")]);
    assert_eq!(c.listen.http, Some(sock("127.0.0.1:9153")));
    assert_eq!(c.listen.udp_workers, 0);
    assert_eq!(c.listen.tcp_max_connections, 1024);
    assert_eq!(c.listen.tcp_idle_timeout, Duration::from_secs(10));

    assert_eq!(
        c.consul.address,
        ConsulSource::Agent("http://127.0.0.1:8500".into())
    );
    assert_eq!(c.consul.token_file, None);
    assert_eq!(c.consul.domain, name("consul."));
    assert!(c.consul.domain.is_fqdn());
    assert_eq!(c.consul.alt_domain, None);
    assert_eq!(c.consul.datacenter, None);
    assert_eq!(c.consul.node_name, None);
    assert_eq!(c.consul.max_connections, 8);
    assert_eq!(
        (&c.consul.ca_file, &c.consul.cert_file, &c.consul.key_file),
        (&None, &None, &None)
    );
    assert_eq!(c.consul.wait, Duration::from_secs(300));
    assert_eq!(c.consul.query_poll_interval, Duration::from_secs(30));

    assert_eq!(c.dns.node_ttl, 0);
    assert_eq!(
        c.dns.service_ttl.entries,
        BTreeMap::from([("*".to_owned(), 0)])
    );
    assert!(!c.dns.only_passing);
    assert_eq!(c.dns.udp_answer_limit, 3);
    assert_eq!(c.dns.a_record_limit, 0);
    assert!(c.dns.enable_truncate);
    assert!(c.dns.enable_additional_node_meta_txt);
    assert_eq!(c.dns.filter_tags, vec!["nodns".to_owned()]);
    assert_eq!(
        c.dns.soa,
        SoaConfig {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0
        }
    );

    assert_eq!(
        c.forward.upstreams,
        vec![Upstream::ResolvConf("/etc/resolv.conf".into())]
    );
    assert_eq!(c.forward.timeout, Duration::from_secs(2));
    assert_eq!(c.forward.strategy, Strategy::Sequential);
    assert!(c.forward.domains.is_empty());
    assert_eq!(c.forward.max_in_flight, 4096);

    assert_eq!(c.cache.size, 100_000);
    assert_eq!(c.cache.min_ttl, Duration::ZERO);
    assert_eq!(c.cache.max_ttl, Duration::from_secs(86400));
    assert_eq!(c.cache.negative_max_ttl, Duration::from_secs(3600));
    assert_eq!(c.cache.servfail_ttl, Duration::from_secs(5));
    assert_eq!(c.cache.serve_stale, Duration::from_secs(86400));
    assert_eq!(c.cache.stale_ttl, Duration::from_secs(30));
    assert_eq!(c.cache.stale_answer_timeout, Duration::from_millis(1800));

    assert_eq!(c.zones.dir, None);
    assert_eq!(c.zones.hosts, None);
    assert_eq!(c.emit.srv_file, None);
    assert!(c.emit.templates.is_empty());
}

/// Tests that without a file and without `/etc/signpost/signpost.toml`, `load` gives the
/// defaults and flags still apply.
#[test]
fn load_without_a_file() {
    if Path::new(DEFAULT_CONFIG_PATH).exists() {
        return; // this machine has a real config; nothing to test here
    }
    let overrides = Overrides {
        listen: vec!["127.0.0.1:5353".into()],
        ..Overrides::default()
    };
    let c = Config::load(None, &overrides).unwrap();
    assert_eq!(c.path, None);
    assert_eq!(c.listen.dns, vec![sock("127.0.0.1:5353")]);
}

/// Tests that a missing `--config` file is a config error naming the flag.
#[test]
fn load_missing_file() {
    let err = Config::load(
        Some(Path::new("/nonexistent/signpost.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(err.key, "--config");
    assert_eq!(err.file, Path::new("/nonexistent/signpost.toml"));
    assert_eq!(err.line, None);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/signpost.toml: --config: cannot read"),
        "{err}"
    );
}

/// Tests the message shape `main.rs` prints: `file:line: key: message`.
#[test]
fn error_display() {
    let text = "[forward]\ntimeout = \"soon\"\n";
    let err = parse(text).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/test.toml:2: forward.timeout: `soon` is not a duration"),
        "{err}"
    );
}

/// Tests that every shipped config loads and validates as-is.
#[test]
fn shipped_configs_load() {
    for path in shipped_configs() {
        if let Err(e) = Config::load(Some(&path), &Overrides::default()) {
            panic!("{} does not load: {e}", path.display());
        }
    }
}

/// Tests that the annotated reference lists exactly the built-in defaults.
#[test]
fn reference_config_is_the_defaults() {
    let path = config_dir().join("signpost.toml");
    let mut shipped = Config::load(Some(&path), &Overrides::default()).unwrap();
    shipped.path = None;
    let mut defaults = parse_ok("");
    defaults.path = None;
    assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
}

/// Tests that the reference config writes out every key `RawConfig` knows, so "every key with
/// its default" stays true when a key is added. Keys of `[[...]]` tables and `wait` may be
/// commented out (they would need files that do not exist).
#[test]
fn reference_config_lists_every_key() {
    let text = std::fs::read_to_string(config_dir().join("signpost.toml")).unwrap();
    // Uncomment the examples: `# key = ` lines become `key = `.
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| !r.starts_with('#'))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let doc: toml_edit::DocumentMut = uncommented.parse().unwrap();
    let mut keys = Vec::new();
    collect_keys(doc.as_item(), String::new(), &mut keys);
    for expected in [
        "listen.dns",
        "listen.http",
        "listen.udp_workers",
        "listen.tcp_max_connections",
        "listen.tcp_idle_timeout",
        "consul.address",
        "consul.token_file",
        "consul.domain",
        "consul.alt_domain",
        "consul.datacenter",
        "consul.node_name",
        "consul.max_connections",
        "consul.ca_file",
        "consul.cert_file",
        "consul.key_file",
        "consul.wait",
        "consul.query_poll_interval",
        "dns.node_ttl",
        "dns.service_ttl",
        "dns.only_passing",
        "dns.udp_answer_limit",
        "dns.a_record_limit",
        "dns.enable_truncate",
        "dns.enable_additional_node_meta_txt",
        "dns.filter_tags",
        "dns.soa.refresh",
        "dns.soa.retry",
        "dns.soa.expire",
        "dns.soa.min_ttl",
        "forward.upstreams",
        "forward.timeout",
        "forward.strategy",
        "forward.max_in_flight",
        "forward.domain.name",
        "forward.domain.upstreams",
        "cache.size",
        "cache.min_ttl",
        "cache.max_ttl",
        "cache.negative_max_ttl",
        "cache.servfail_ttl",
        "cache.serve_stale",
        "cache.stale_ttl",
        "zones.dir",
        "zones.hosts",
        "emit.srv_file",
        "emit.template.source",
        "emit.template.template_dir",
        "emit.template.destination",
        "emit.template.check",
        "emit.template.reload",
        "emit.template.wait.min",
        "emit.template.wait.max",
        "emit.template.perms",
        "emit.template.command_timeout",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "signpost.toml does not list {expected}"
        );
    }
}

fn collect_keys(item: &toml_edit::Item, prefix: String, out: &mut Vec<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    if let Some(aot) = item.as_array_of_tables() {
        for t in aot.iter() {
            for (k, v) in t.iter() {
                collect_keys(v, join(k), out);
            }
        }
    } else if let Some(table) = item.as_table_like()
        && !prefix.ends_with("service_ttl")
    {
        for (k, v) in table.iter() {
            collect_keys(v, join(k), out);
        }
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

/// A config with every table present, `[[forward.domain]]` and `[[emit.template]]` included,
/// for the unknown-key test; returns its path.
fn full_config(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("haproxy.cfg.tmpl"), "global\n").unwrap();
    std::fs::create_dir(dir.join("zones")).unwrap();
    let text = r#"
[listen]
dns = ["127.0.0.1:0"]
[consul]
address = "http://127.0.0.1:8500"
[dns]
service_ttl = { "*" = "5s", "db" = "10s" }
soa = { refresh = 3600 }
[forward]
upstreams = ["192.0.2.1"]
[[forward.domain]]
name = "corp.example."
upstreams = ["10.1.0.2"]
[[forward.domain]]
name = "lab.example."
upstreams = ["10.1.0.3"]
[cache]
[zones]
dir = "zones"
[emit]
[[emit.template]]
source = "haproxy.cfg.tmpl"
destination = "haproxy.cfg"
wait = { min = "1s", max = "4s" }
"#;
    let path = dir.join("full.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// hickory's `test_reject_unknown_fields`: a bogus key added to every table (and inline
/// table) of every shipped config is a `ConfigError` naming it, at its line.
#[test]
fn reject_unknown_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = shipped_configs();
    files.push(full_config(tmp.path()));
    let mut checked = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        let mut tables = Vec::new();
        table_paths(doc.as_item(), Vec::new(), &mut tables);
        assert!(
            tables.len() > 3,
            "{}: found only {tables:?}",
            path.display()
        );
        for table in tables {
            let mut doc = doc.clone();
            let expected_key = insert_bogus(doc.as_item_mut(), &table);
            let text = doc.to_string();
            let line = text.lines().position(|l| l.contains(BOGUS)).unwrap() + 1;
            // Same path as the original, so relative paths still resolve.
            let err = match Config::parse(&text, &path, &Overrides::default()) {
                Ok(_) => panic!(
                    "{}: bogus key in {expected_key} accepted:\n{text}",
                    path.display()
                ),
                Err(e) => e,
            };
            assert_eq!(err.key, expected_key, "{}: {err}", path.display());
            assert_eq!(err.line, Some(line), "{}: {err}", path.display());
            assert_eq!(err.file, path);
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} tables checked");
}

const BOGUS: &str = "signpost_bogus_key";

#[derive(Clone, Debug)]
enum PathSeg {
    Key(String),
    Index(usize),
}

/// Every table, inline table and array-of-tables element, as a path from the root.
fn table_paths(item: &toml_edit::Item, path: Vec<PathSeg>, out: &mut Vec<Vec<PathSeg>>) {
    if let Some(aot) = item.as_array_of_tables() {
        for (i, t) in aot.iter().enumerate() {
            let mut p = path.clone();
            p.push(PathSeg::Index(i));
            out.push(p.clone());
            for (k, v) in t.iter() {
                let mut p = p.clone();
                p.push(PathSeg::Key(k.to_owned()));
                table_paths(v, p, out);
            }
        }
    } else if let Some(t) = item.as_table_like() {
        out.push(path.clone());
        for (k, v) in t.iter() {
            let mut p = path.clone();
            p.push(PathSeg::Key(k.to_owned()));
            table_paths(v, p, out);
        }
    }
}

/// Inserts `BOGUS = true` into the table at `path`; returns the dotted key expected in the
/// error. In a map table (`dns.service_ttl`) the key is valid but `true` is not a duration.
fn insert_bogus(root: &mut toml_edit::Item, path: &[PathSeg]) -> String {
    let mut item = root;
    let mut dotted = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                dotted.push_str(k);
                item = &mut item[k.as_str()];
            }
            PathSeg::Index(i) => {
                dotted.push_str(&format!("[{i}]"));
                item = &mut item[*i];
            }
        }
    }
    let table = item.as_table_like_mut().unwrap();
    table.insert(BOGUS, toml_edit::value(true));
    if dotted.is_empty() {
        BOGUS.to_owned()
    } else {
        format!("{dotted}.{BOGUS}")
    }
}

/// Tests that type and syntax errors name the key and line.
#[test]
fn serde_errors_name_key_and_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "[listen]\n\nbogus = 1\n",
            "listen.bogus",
            3,
            "unknown key `bogus`",
        ),
        ("\n\nbogus = 1\n", "bogus", 3, "unknown key"),
        (
            "[listen]\ndns = [\"127.0.0.1:53\",\n  53]\n",
            "listen.dns[1]",
            3,
            "expected a string",
        ),
        (
            "[listen]\nudp_workers = \"4\"\n",
            "listen.udp_workers",
            2,
            "invalid type",
        ),
        (
            "[consul]\nmax_connections = -1\n",
            "consul.max_connections",
            2,
            "invalid value",
        ),
        (
            "[dns]\nonly_passing = \"yes\"\n",
            "dns.only_passing",
            2,
            "expected a boolean",
        ),
        (
            "[dns]\nsoa = { refresh = 1, bogus = 2 }\n",
            "dns.soa.bogus",
            2,
            "unknown key",
        ),
        (
            "[forward]\ntimeout = true\n",
            "forward.timeout",
            2,
            "a duration like",
        ),
        (
            "[forward]\n[[forward.domain]]\nname = \"a.example\"\nupstreams = [\"10.0.0.1\"]\n[[forward.domain]]\nname = \"b.example\"\nupstreams = \"10.0.0.2\"\n",
            "forward.domain[1].upstreams",
            7,
            "expected a sequence",
        ),
        (
            "[forward]\n[[forward.domain]]\nname = \"a.example\"\n",
            "forward.domain[0]",
            2,
            "missing field `upstreams`",
        ),
        ("[listen\ndns = []\n", "syntax", 1, ""),
        ("[listen]\n[listen]\n", "syntax", 2, "duplicate"),
        ("listen = 3\n", "listen", 1, "invalid type"),
    ];
    for (text, key, line, needle) in cases {
        assert_error(text, key, *line, needle);
    }
}

/// Tests that validation errors name the key and the line it is written on.
#[test]
fn validation_errors_name_key_and_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        // durations
        (
            "# 1\n# 2\n# 3\n# 4\n[forward]\nupstreams = [\"192.0.2.1\"]\ntimeout = \"2 parsecs\"\n",
            "forward.timeout",
            7,
            "is not a duration",
        ),
        (
            "[forward]\ntimeout = \"0s\"\n",
            "forward.timeout",
            2,
            "above 0s",
        ),
        ("[forward]\ntimeout = 2\n", "forward.timeout", 2, "no unit"),
        (
            "[forward]\ntimeout = \"2\"\n",
            "forward.timeout",
            2,
            "no unit",
        ),
        (
            "forward.timeout = \"x\"\n",
            "forward.timeout",
            1,
            "not a duration",
        ),
        (
            "[consul]\nwait = \"11m\"\n",
            "consul.wait",
            2,
            "at most 10m",
        ),
        (
            "[dns]\nnode_ttl = \"1.5s\"\n",
            "dns.node_ttl",
            2,
            "whole number of seconds",
        ),
        (
            "[dns]\nsoa = { refresh = 3600,\n  retry = \"ten\" }\n",
            "dns.soa.retry",
            3,
            "not a duration",
        ),
        (
            "[dns]\n[dns.soa]\nexpire = 4294967296\n",
            "dns.soa.expire",
            3,
            "largest TTL",
        ),
        (
            "[dns]\nservice_ttl = { db = \"1x\" }\n",
            "dns.service_ttl.db",
            2,
            "not a duration",
        ),
        (
            "[dns]\nservice_ttl = { \"d*b\" = \"1s\" }\n",
            "dns.service_ttl.d*b",
            2,
            "only at the end",
        ),
        (
            "[dns]\nservice_ttl = { DB = \"1s\", db = \"2s\" }\n",
            "dns.service_ttl.db",
            2,
            "listed twice",
        ),
        (
            "[cache]\nmin_ttl = \"1h\"\nmax_ttl = \"1m\"\n",
            "cache.max_ttl",
            3,
            "cache.min_ttl",
        ),
        (
            "[cache]\nstale_ttl = \"0s\"\n",
            "cache.stale_ttl",
            2,
            "serve_stale",
        ),
        // addresses
        (
            "[listen]\ndns = [\n  \"127.0.0.1:53\",\n  \"127.0.0.1\",\n]\n",
            "listen.dns",
            4,
            "IP:port",
        ),
        ("[listen]\ndns = []\n", "listen.dns", 2, "at least one"),
        (
            "[listen]\ndns = [\"127.0.0.1:53\", \"127.0.0.1:53\"]\n",
            "listen.dns",
            2,
            "twice",
        ),
        (
            "[listen]\nhttp = \"localhost:9153\"\n",
            "listen.http",
            2,
            "IP:port",
        ),
        (
            "[listen]\ntcp_max_connections = 0\n",
            "listen.tcp_max_connections",
            2,
            "at least 1",
        ),
        (
            "[forward]\nupstreams = [\"8.8.8.8\", \"dns.google\"]\n",
            "forward.upstreams",
            2,
            "dns.google",
        ),
        (
            "[forward]\nupstreams = [\"0.0.0.0\"]\n",
            "forward.upstreams",
            2,
            "unspecified",
        ),
        (
            "[forward]\nupstreams = [\"8.8.8.8:0\"]\n",
            "forward.upstreams",
            2,
            "port 0",
        ),
        (
            "[forward]\nupstreams = [\"8.8.8.8\", \"8.8.8.8:53\"]\n",
            "forward.upstreams",
            2,
            "twice",
        ),
        (
            "[forward]\nstrategy = \"round-robin\"\n",
            "forward.strategy",
            2,
            "sequential, random, fastest",
        ),
        (
            "[forward]\nmax_in_flight = 0\n",
            "forward.max_in_flight",
            2,
            "at least 1",
        ),
        // consul
        (
            "[consul]\naddress = \"127.0.0.1:8500\"\n",
            "consul.address",
            2,
            "http://host:port",
        ),
        (
            "[consul]\naddress = \"http://127.0.0.1\"\n",
            "consul.address",
            2,
            "needs a port",
        ),
        (
            "[consul]\naddress = \"http://127.0.0.1:8500/v1\"\n",
            "consul.address",
            2,
            "http://host:port",
        ),
        (
            "[consul]\naddress = \"file:\"\n",
            "consul.address",
            2,
            "needs a path",
        ),
        (
            "[consul]\naddress = \"file:missing.json\"\n",
            "consul.address",
            2,
            "does not exist",
        ),
        (
            "[consul]\nmax_connections = 3\n",
            "consul.max_connections",
            2,
            "at least 4 (three watches and one fetch)",
        ),
        (
            "[consul]\ndomain = \"bad..name\"\n",
            "consul.domain",
            2,
            "not a domain name",
        ),
        ("[consul]\ndomain = \".\"\n", "consul.domain", 2, "root"),
        (
            "[consul]\nalt_domain = \"CONSUL\"\n",
            "consul.alt_domain",
            2,
            "same as consul.domain",
        ),
        (
            "[consul]\ndatacenter = \"dc 1\"\n",
            "consul.datacenter",
            2,
            "letters, digits",
        ),
        (
            "[consul]\nca_file = \"ca.pem\"\n",
            "consul.ca_file",
            2,
            "does not exist",
        ),
        // filter tags
        (
            "[dns]\nfilter_tags = [\"nodns\", \"\"]\n",
            "dns.filter_tags",
            2,
            "empty",
        ),
        // zones and emit
        (
            "[zones]\ndir = \"no-such-dir\"\n",
            "zones.dir",
            2,
            "does not exist",
        ),
        (
            "[emit]\nsrv_file = \"no-such-dir/srv.json\"\n",
            "emit.srv_file",
            2,
            "does not exist",
        ),
        (
            "[emit]\n[[emit.template]]\nsource = \"missing.tmpl\"\ndestination = \"/tmp/out.cfg\"\n",
            "emit.template[0].source",
            3,
            "does not exist",
        ),
    ];
    for (text, key, line, needle) in cases {
        assert_error(text, key, *line, needle);
    }
}

/// Tests the checks that span tables: forward domains, loops.
#[test]
fn whole_config_checks() {
    let domain = |name: &str| {
        format!(
            "[forward]\nupstreams = [\"192.0.2.1\"]\n[[forward.domain]]\nname = \"{name}\"\nupstreams = [\"10.0.0.1\"]\n"
        )
    };
    assert_error(
        &domain("web.service.consul"),
        "forward.domain[0].name",
        4,
        "never forwarded",
    );
    assert_error(
        &domain("Consul."),
        "forward.domain[0].name",
        4,
        "never forwarded",
    );
    let alt = format!(
        "[consul]\nalt_domain = \"cluster.local\"\n{}",
        domain("svc.cluster.local")
    );
    assert_error(&alt, "forward.domain[0].name", 6, "cluster.local.");
    let twice = format!(
        "{}[[forward.domain]]\nname = \"CORP.example.\"\nupstreams = [\"10.0.0.2\"]\n",
        domain("corp.example")
    );
    assert_error(&twice, "forward.domain[1].name", 7, "listed twice");
    assert_error(
        "[forward]\n[[forward.domain]]\nname = \"corp.example\"\nupstreams = []\n",
        "forward.domain[0].upstreams",
        4,
        "at least one",
    );

    // Loops: an upstream that is one of our own listen addresses.
    assert_error(
        "[listen]\ndns = [\"127.0.0.1:5353\"]\n[forward]\nupstreams = [\n\"192.0.2.1\",\n\"127.0.0.1:5353\"]\n",
        "forward.upstreams",
        6,
        "forwarding loop",
    );
    assert_error(
        "[listen]\ndns = [\"0.0.0.0:53\"]\n[forward]\nupstreams = [\"127.0.0.1\"]\n",
        "forward.upstreams",
        4,
        "forwarding loop",
    );
    assert_error(
        "[listen]\ndns = [\"127.0.0.1:53\"]\n[forward]\nupstreams = [\"192.0.2.1\"]\n[[forward.domain]]\nname = \"corp.example\"\nupstreams = [\"127.0.0.1\"]\n",
        "forward.domain[0].upstreams",
        7,
        "forwarding loop",
    );
    // The default upstream is resolv.conf, which is filtered at run time, never a loop here.
    parse_ok("[listen]\ndns = [\"127.0.0.1:53\"]\n");
    // Same IP, other port: not a loop.
    parse_ok("[listen]\ndns = [\"127.0.0.1:5353\"]\n[forward]\nupstreams = [\"127.0.0.1\"]\n");
}

/// Tests the accepted value forms: names, upstreams, limits, tags.
#[test]
fn value_forms() {
    let c = parse_ok(
        r#"
[listen]
dns = ["127.0.0.1:0", "[::1]:8600"]
http = ""
[consul]
address = "https://consul.example:8501/"
domain = "Consul"
alt_domain = "cluster.LOCAL."
datacenter = "dc-1"
[dns]
udp_answer_limit = 20
filter_tags = ["NoDNS", "standby", "nodns"]
service_ttl = { "*" = "5s", "DB*" = "1m", web = 30 }
soa = { refresh = "1h", retry = 600, expire = "1d", min_ttl = "0s" }
[forward]
upstreams = ["192.0.2.1", "192.0.2.2:5353", "2001:db8::1", "[2001:db8::2]:5353", "[2001:db8::3]", "resolv.conf", "resolv.conf:/run/resolv.conf"]
strategy = "fastest"
"#,
    );
    assert_eq!(c.listen.dns, vec![sock("127.0.0.1:0"), sock("[::1]:8600")]);
    assert_eq!(c.listen.http, None);
    assert_eq!(
        c.consul.address,
        ConsulSource::Agent("https://consul.example:8501".into())
    );
    assert_eq!(c.consul.domain.to_string(), "consul.");
    assert_eq!(
        c.consul
            .alt_domain
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("cluster.local.")
    );
    assert_eq!(c.consul.datacenter.as_deref(), Some("dc-1"));
    // Consul's cap: min(8, udp_answer_limit).
    assert_eq!(c.dns.udp_answer_limit, 8);
    assert_eq!(
        c.dns.filter_tags,
        vec!["nodns".to_owned(), "standby".to_owned()]
    );
    assert_eq!(
        c.dns.service_ttl.entries,
        BTreeMap::from([
            ("*".to_owned(), 5),
            ("db*".to_owned(), 60),
            ("web".to_owned(), 30)
        ])
    );
    assert_eq!(
        c.dns.soa,
        SoaConfig {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0
        }
    );
    assert_eq!(
        c.forward.upstreams,
        vec![
            Upstream::Addr(sock("192.0.2.1:53")),
            Upstream::Addr(sock("192.0.2.2:5353")),
            Upstream::Addr(sock("[2001:db8::1]:53")),
            Upstream::Addr(sock("[2001:db8::2]:5353")),
            Upstream::Addr(sock("[2001:db8::3]:53")),
            Upstream::ResolvConf("/etc/resolv.conf".into()),
            Upstream::ResolvConf("/run/resolv.conf".into()),
        ]
    );
    assert_eq!(c.forward.strategy, Strategy::Fastest);

    let c = parse_ok("[forward]\nstrategy = \"random\"\ntimeout = \"1h30m\"\n");
    assert_eq!(c.forward.strategy, Strategy::Random);
    assert_eq!(c.forward.timeout, Duration::from_secs(5400));
    let c = parse_ok("[cache]\nserve_stale = \"0s\"\nstale_ttl = \"0s\"\nmin_ttl = \"300ms\"\n");
    assert_eq!(c.cache.serve_stale, Duration::ZERO);
    assert_eq!(c.cache.min_ttl, Duration::from_millis(300));
}

/// Tests that `--listen`, `--http`, `--consul` and `--upstream` replace the file's values, and
/// that a bad flag is reported as the flag, from the command line.
#[test]
fn flags_override_file_values() {
    let text = "[listen]\ndns = [\"127.0.0.1:53\", \"127.0.0.2:53\"]\nhttp = \"127.0.0.1:9153\"\n[forward]\nupstreams = [\"192.0.2.1\"]\n";
    let overrides = Overrides {
        listen: vec!["127.0.0.1:5300".into()],
        http: Some(String::new()),
        consul: Some("http://10.0.0.1:8500".into()),
        upstreams: vec!["192.0.2.9:5353".into(), "192.0.2.10".into()],
    };
    let c = Config::parse(text, Path::new("/nonexistent/test.toml"), &overrides).unwrap();
    assert_eq!(c.listen.dns, vec![sock("127.0.0.1:5300")]);
    assert_eq!(c.listen.http, None);
    assert_eq!(
        c.consul.address,
        ConsulSource::Agent("http://10.0.0.1:8500".into())
    );
    assert_eq!(
        c.forward.upstreams,
        vec![
            Upstream::Addr(sock("192.0.2.9:5353")),
            Upstream::Addr(sock("192.0.2.10:53"))
        ]
    );

    let bad = |overrides: Overrides, flag: &str| {
        let err = Config::parse(text, Path::new("/nonexistent/test.toml"), &overrides).unwrap_err();
        assert_eq!(err.file, Path::new("command line"), "{err}");
        assert_eq!(err.key, flag, "{err}");
        assert_eq!(err.line, None, "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("command line: {flag}: ")),
            "{err}"
        );
    };
    bad(
        Overrides {
            listen: vec!["localhost".into()],
            ..Overrides::default()
        },
        "--listen",
    );
    bad(
        Overrides {
            http: Some("9153".into()),
            ..Overrides::default()
        },
        "--http",
    );
    bad(
        Overrides {
            consul: Some("consul:8500".into()),
            ..Overrides::default()
        },
        "--consul",
    );
    bad(
        Overrides {
            upstreams: vec!["nope".into()],
            ..Overrides::default()
        },
        "--upstream",
    );
    // A loop made by a flag names the flag that made it.
    bad(
        Overrides {
            upstreams: vec!["127.0.0.1:53".into()],
            ..Overrides::default()
        },
        "--upstream",
    );
    // Flags are validated even without a file.
    if !Path::new(DEFAULT_CONFIG_PATH).exists() {
        let err = Config::load(
            None,
            &Overrides {
                listen: vec!["x".into()],
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (Path::new("command line"), "--listen")
        );
    }
}

/// Tests that relative paths resolve against the config file's directory, and that a
/// relative `--consul file:` path stays relative to the working directory.
#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    std::fs::create_dir_all(dir.join("zones")).unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("catalog.json"), "{}").unwrap();
    std::fs::write(dir.join("hosts"), "").unwrap();
    std::fs::write(dir.join("ca.pem"), "").unwrap();
    std::fs::write(dir.join("haproxy.tmpl"), "").unwrap();
    let text = r#"
[consul]
address = "file:catalog.json"
ca_file = "ca.pem"
token_file = "token"
[forward]
upstreams = ["resolv.conf:resolv.test"]
[zones]
dir = "zones"
hosts = "hosts"
[emit]
srv_file = "out/srv.json"
[[emit.template]]
source = "haproxy.tmpl"
destination = "out/haproxy.cfg"
check = "  "
reload = "systemctl reload haproxy"
wait = { min = "3s" }
perms = "0640"
[[emit.template]]
source = "ABS_TEMPLATE"
destination = "/tmp/signpost-never-written"
wait = { max = "1s" }
perms = 0o600
command_timeout = "5s"
"#;
    let abs_template = dir.join("haproxy.tmpl");
    let text = text.replace("ABS_TEMPLATE", abs_template.to_str().unwrap());
    let path = dir.join("signpost.toml");
    std::fs::write(&path, text).unwrap();
    let c = Config::load(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(c.path.as_deref(), Some(path.as_path()));
    assert_eq!(
        c.consul.address,
        ConsulSource::File(dir.join("catalog.json"))
    );
    assert_eq!(c.consul.ca_file, Some(dir.join("ca.pem")));
    // The token file is read when connecting, so it need not exist yet.
    assert_eq!(c.consul.token_file, Some(dir.join("token")));
    assert_eq!(
        c.forward.upstreams,
        vec![Upstream::ResolvConf(dir.join("resolv.test"))]
    );
    assert_eq!(c.zones.dir, Some(dir.join("zones")));
    assert_eq!(c.zones.hosts, Some(dir.join("hosts")));
    assert_eq!(c.emit.srv_file, Some(dir.join("out/srv.json")));
    let t = &c.emit.templates[0];
    assert_eq!(t.source, dir.join("haproxy.tmpl"));
    assert_eq!(t.destination, dir.join("out/haproxy.cfg"));
    assert_eq!(t.check, None);
    assert_eq!(t.reload.as_deref(), Some("systemctl reload haproxy"));
    // consul-template: only a min given → max = 4 × min.
    assert_eq!(
        (t.wait_min, t.wait_max),
        (Duration::from_secs(3), Duration::from_secs(12))
    );
    assert_eq!(t.perms, Some(0o640));
    assert_eq!(t.command_timeout, Duration::from_secs(30));
    let t = &c.emit.templates[1];
    assert_eq!(t.source, abs_template);
    assert_eq!(
        (t.wait_min, t.wait_max),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(t.perms, Some(0o600));
    assert_eq!(t.command_timeout, Duration::from_secs(5));

    // A flag's relative path is the shell's: relative to the working directory (cargo runs
    // tests in the package root).
    let overrides = Overrides {
        consul: Some("file:config/demo-catalog.json".into()),
        ..Overrides::default()
    };
    let c = Config::load(Some(&path), &overrides).unwrap();
    assert_eq!(
        c.consul.address,
        ConsulSource::File("config/demo-catalog.json".into())
    );

    // The demo's `../zones` is the repository's zones/.
    let demo = Config::load(Some(&config_dir().join("demo.toml")), &Overrides::default()).unwrap();
    let zones = demo.zones.dir.unwrap();
    assert_eq!(
        zones.canonicalize().unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("zones")
    );
    assert_eq!(
        demo.consul.address,
        ConsulSource::File(config_dir().join("demo-catalog.json"))
    );
    assert_eq!(demo.listen.dns, vec![sock("127.0.0.1:8600")]);
}

/// Tests template checks: wait order, perms, commands that do not split, `source` with
/// `template_dir`, duplicate destinations.
#[test]
fn template_checks() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("t.tmpl"), "").unwrap();
    let path = tmp.path().join("c.toml");
    let check = |extra: &str, key: &str, line: usize, needle: &str| {
        let text =
            format!("[[emit.template]]\nsource = \"t.tmpl\"\ndestination = \"out.cfg\"\n{extra}");
        let err = Config::parse(&text, &path, &Overrides::default()).unwrap_err();
        assert_eq!((err.key.as_str(), err.line), (key, Some(line)), "{err}");
        assert!(err.message.contains(needle), "{err}");
    };
    check(
        "wait = { min = \"5s\", max = \"1s\" }\n",
        "emit.template[0].wait.max",
        4,
        "wait.min",
    );
    check("perms = 644\n", "emit.template[0].perms", 4, "0o777");
    check(
        "perms = \"rw-r--r--\"\n",
        "emit.template[0].perms",
        4,
        "octal",
    );
    check(
        "perms = -1\n",
        "emit.template[0].perms",
        4,
        "not a file mode",
    );
    check(
        "command_timeout = \"0s\"\n",
        "emit.template[0].command_timeout",
        4,
        "above 0s",
    );
    check(
        "check = \"haproxy -c -f '{file}\"\n",
        "emit.template[0].check",
        4,
        "cannot split",
    );
    check(
        "template_dir = \".\"\n",
        "emit.template[0].template_dir",
        4,
        "not both",
    );
    check(
        "destination2 = 1\n",
        "emit.template[0].destination2",
        4,
        "unknown key",
    );
    check(
        "[[emit.template]]\nsource = \"t.tmpl\"\ndestination = \"out.cfg\"\n",
        "emit.template[1].destination",
        6,
        "another entry",
    );
    check(
        "wait = { min = \"1s\", mx = \"2s\" }\n",
        "emit.template[0].wait.mx",
        4,
        "unknown key",
    );
    let err = Config::parse(
        "[[emit.template]]\nsource = \"t.tmpl\"\n",
        &path,
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(
        (err.key.as_str(), err.line),
        ("emit.template[0]", Some(1)),
        "{err}"
    );
    assert!(err.message.contains("missing field `destination`"), "{err}");
}

/// Consul's own test case for the service TTL map (`reference/consul-dns.md` §4).
#[test]
fn service_ttl_lookup() {
    let c = parse_ok(
        "[dns]\nservice_ttl = { \"d*\" = \"42s\", \"db\" = \"10s\", \"db*\" = \"66s\", \"*\" = \"5s\" }\n",
    );
    let ttl = &c.dns.service_ttl;
    assert_eq!(ttl.lookup("db"), 10);
    assert_eq!(ttl.lookup("dblb"), 66);
    assert_eq!(ttl.lookup("dk"), 42);
    assert_eq!(ttl.lookup("api"), 5);
    assert_eq!(ServiceTtl::default().lookup("api"), 0);
    let c = parse_ok("[dns]\nservice_ttl = { \"web\" = \"7s\" }\n");
    assert_eq!(
        (
            c.dns.service_ttl.lookup("web"),
            c.dns.service_ttl.lookup("api")
        ),
        (7, 0)
    );
}

/// Tests that the demo catalog is in `/v1/health/service` shape and holds what the demo and
/// the tests rely on.
#[test]
fn demo_catalog_parses() {
    let text = std::fs::read_to_string(config_dir().join("demo-catalog.json")).unwrap();
    let catalog: BTreeMap<String, Vec<HealthEntry>> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = catalog.keys().map(String::as_str).collect();
    assert_eq!(names, ["api", "consul", "db", "redis", "web"]);
    let status = |svc: &str, i: usize| -> Vec<String> {
        catalog[svc][i]
            .checks
            .iter()
            .map(|c| c.status.clone())
            .collect()
    };
    assert_eq!(catalog["web"].len(), 3);
    assert!(catalog["web"].iter().all(|e| e.service.port == 8080));
    assert!(status("web", 2).contains(&"warning".to_owned()));
    assert!(status("api", 1).contains(&"critical".to_owned()));
    assert!(catalog["db"][1].service.tags.contains(&"nodns".to_owned()));
    assert!(
        catalog["redis"][0]
            .service
            .tagged_addresses
            .contains_key("lan_ipv6")
    );
    assert_eq!(catalog["consul"][0].service.port, 8300);
    assert!(catalog.values().flatten().any(|e| !e.node.meta.is_empty()));
    for (svc, entries) in &catalog {
        for e in entries {
            assert_eq!(&e.service.service, svc);
            assert_eq!(e.node.datacenter, "dc1");
        }
    }
}

/// Tests that every shipped zone file parses as RFC 1035 master-file text and that
/// `example.org` has the record types the demo and the zone tests use.
#[test]
fn shipped_zones_parse() {
    use hickory_proto::rr::RecordType;
    use hickory_proto::serialize::txt::Parser;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "zone") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (origin, records) = Parser::new(text, Some(path.clone()), None)
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if origin == name("example.org.") {
            let types: Vec<RecordType> = records.keys().map(|k| k.record_type).collect();
            for t in [
                RecordType::SOA,
                RecordType::NS,
                RecordType::A,
                RecordType::AAAA,
                RecordType::CNAME,
                RecordType::MX,
                RecordType::TXT,
            ] {
                assert!(types.contains(&t), "example.org has no {t}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 1, "no zone files in {}", dir.display());
}

/// Tests that `template_dir` must name a directory and selects the python-confd mode.
#[test]
fn template_dir_mode() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("haproxy.d")).unwrap();
    std::fs::write(tmp.path().join("t.tmpl"), "").unwrap();
    let path = tmp.path().join("c.toml");
    let c = Config::parse(
        "[[emit.template]]\ntemplate_dir = \"haproxy.d\"\ndestination = \"out.cfg\"\n",
        &path,
        &Overrides::default(),
    )
    .unwrap();
    let t = &c.emit.templates[0];
    assert_eq!(t.mode, TemplateMode::Dir);
    assert_eq!(t.source, tmp.path().join("haproxy.d"));
    let err = Config::parse(
        "[[emit.template]]\ntemplate_dir = \"t.tmpl\"\ndestination = \"out.cfg\"\n",
        &path,
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(err.key, "emit.template[0].template_dir", "{err}");
    assert!(err.message.contains("not a directory"), "{err}");
}

/// `[log] queries` is off by default, turned on by the file, and the table rejects unknown keys.
#[test]
fn log_queries_key() {
    assert!(!parse("").unwrap().log.queries);
    assert!(parse("[log]\nqueries = true\n").unwrap().log.queries);
    let err = parse("[log]\nquery = true\n").unwrap_err();
    assert!(err.to_string().contains("query"), "{err}");
}
