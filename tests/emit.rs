//! The emitter: templates rendered from the catalog, checked, swapped in and reloaded; the
//! shipped HAProxy template under the real `haproxy -c`; `signpost render --once`.
//!
//! Most tests drive `emit::spawn` with a catalog channel they own, so that they control
//! exactly when the catalog changes; one runs the whole signpost against the fake agent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use signpost::config::{Config, Overrides, TemplateConfig, TemplateMode};
use signpost::consul::Catalog;
use signpost::emit::{self, Emitter, RenderResult, SrvData};
use tokio::sync::watch;

use crate::support::fake_consul::FakeConsul;
use crate::support::signpost::{Signpost, eventually, require_tool};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The demo catalog as JSON, to be varied by the tests.
fn demo_json() -> Value {
    let text = std::fs::read_to_string(repo("config/demo-catalog.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The demo catalog with `web`'s first instance at meta `version = 1.4.<n>`.
fn demo_version(n: usize) -> Value {
    let mut v = demo_json();
    v["web"][0]["Service"]["Meta"]["version"] = Value::from(format!("1.4.{n}"));
    v
}

fn catalog(json: &Value) -> Arc<Catalog> {
    let c = signpost::consul::file::parse(
        &json.to_string(),
        Path::new("demo-catalog.json"),
        "dc1",
        "node-1",
    )
    .unwrap();
    Arc::new(c)
}

/// An executable shell script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The template the fixture renders: one line per `web` instance.
const WEB_TEMPLATE: &str = "{% for i in services.web %}\nserver {{ i.node|ident }} {{ i|addr_port }} {{ i.meta.version }}\n{% endfor %}\n";

/// An emitter over a catalog channel the test drives, in a temp dir holding the template, a
/// check script and a reload script. Both scripts read `dir/mode` to decide how to fail, and
/// the reload script appends a line to `dir/reloads` each time it runs.
struct Fixture {
    dir: tempfile::TempDir,
    dest: PathBuf,
    catalogs: watch::Sender<Option<Arc<Catalog>>>,
    emitter: Option<Emitter>,
    _shutdown: watch::Sender<bool>,
}

impl Fixture {
    fn start(wait: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("mode"), "ok").unwrap();
        std::fs::write(dir.path().join("t.tmpl"), WEB_TEMPLATE).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let check = script(
            dir.path(),
            "check.sh",
            &format!(
                "test -s \"$1\" || exit 9\ncase \"$(cat {d}/mode)\" in\n  check_fail) echo \"bad server line in $1\"; exit 1 ;;\n  check_hang) sleep 30 ;;\nesac\nexit 0\n"
            ),
        );
        let reload = script(
            dir.path(),
            "reload.sh",
            &format!(
                "echo reload >> {d}/reloads\ncase \"$(cat {d}/mode)\" in\n  reload_fail) echo 'reload refused' >&2; exit 3 ;;\nesac\nexit 0\n"
            ),
        );
        let toml = format!(
            "[emit]\n[[emit.template]]\nsource = \"t.tmpl\"\ndestination = \"out/app.cfg\"\n\
             check = \"'{}' {{file}}\"\nreload = \"{}\"\nwait = {wait}\ncommand_timeout = \"300ms\"\n",
            check.display(),
            reload.display()
        );
        let config = Config::parse(
            &toml,
            &dir.path().join("signpost.toml"),
            &Overrides::default(),
        )
        .unwrap();
        let (catalogs, rx) = watch::channel(Some(catalog(&demo_version(0))));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let emitter = emit::spawn(&config.emit, &config.dns, "consul".into(), rx, shutdown_rx);
        Fixture {
            dest: dir.path().join("out/app.cfg"),
            dir,
            catalogs,
            emitter: Some(emitter),
            _shutdown: shutdown,
        }
    }

    fn count(&self, result: RenderResult) -> u64 {
        self.emitter
            .as_ref()
            .unwrap()
            .counts(0)
            .unwrap()
            .get(result)
    }

    fn total(&self) -> u64 {
        self.emitter.as_ref().unwrap().counts(0).unwrap().total()
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("reloads"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    fn send(&self, json: &Value) {
        self.catalogs.send_replace(Some(catalog(json)));
    }

    /// Wait (at most 5 s) until `result` was counted `n` times.
    async fn wait_count(&self, result: RenderResult, n: u64) {
        let ok = eventually(Duration::from_secs(5), || async { self.count(result) >= n }).await;
        assert!(
            ok,
            "{result} not counted {n} times (total {})",
            self.total()
        );
    }

    /// Files left in `out/` besides the destination (temp files must never stay).
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "app.cfg")
            .collect()
    }

    async fn stop(mut self) {
        if let Some(e) = self.emitter.take() {
            e.stop().await;
        }
    }
}

/// A catalog change re-renders and reloads exactly once; a catalog that differs only in its
/// index renders nothing.
#[tokio::test]
async fn change_rerenders_and_reloads_once() {
    let f = Fixture::start("{ min = \"100ms\", max = \"1s\" }");
    f.wait_count(RenderResult::Ok, 1).await;
    assert_eq!(f.reloads(), 1);
    let first = std::fs::read_to_string(&f.dest).unwrap();
    assert!(
        first.contains("server node-1 10.0.1.11:8080 1.4.0"),
        "{first}"
    );

    // Same services, new index: not an input change, so no timer and no render.
    let mut same = (*catalog(&demo_version(0))).clone();
    same.index += 100;
    f.catalogs.send_replace(Some(Arc::new(same)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.total(), 1);

    f.send(&demo_version(1));
    f.wait_count(RenderResult::Ok, 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!((f.total(), f.reloads()), (2, 2));
    assert!(
        std::fs::read_to_string(&f.dest)
            .unwrap()
            .contains("10.0.1.11:8080 1.4.1")
    );
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    f.stop().await;
}

/// A burst of 100 changes inside the quiescence window renders (and reloads) once, with the
/// last catalog.
#[tokio::test]
async fn burst_of_changes_renders_once() {
    let f = Fixture::start("{ min = \"300ms\", max = \"10s\" }");
    f.wait_count(RenderResult::Ok, 1).await;
    for n in 1..=100 {
        f.send(&demo_version(n));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    f.wait_count(RenderResult::Ok, 2).await;
    // Well past another `min`: nothing else renders.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!((f.total(), f.reloads()), (2, 2));
    assert!(
        std::fs::read_to_string(&f.dest)
            .unwrap()
            .contains("1.4.100")
    );
    f.stop().await;
}

/// A template error, a failing check, a hanging check and a failing reload each leave the
/// previous file byte for byte, count their own result and leave no temp file; the next good
/// change goes through.
#[tokio::test]
async fn failures_leave_the_previous_file() {
    let f = Fixture::start("{ min = \"50ms\", max = \"500ms\" }");
    f.wait_count(RenderResult::Ok, 1).await;
    let good = std::fs::read(&f.dest).unwrap();

    // An undefined attribute of an undefined value: minijinja (SemiStrict) refuses it.
    std::fs::write(
        f.dir.path().join("t.tmpl"),
        "# header\n{{ services.web[0].nope.deeper }}\n",
    )
    .unwrap();
    f.send(&demo_version(1));
    f.wait_count(RenderResult::RenderError, 1).await;
    assert_eq!(std::fs::read(&f.dest).unwrap(), good);
    std::fs::write(f.dir.path().join("t.tmpl"), WEB_TEMPLATE).unwrap();

    f.set_mode("check_fail");
    f.send(&demo_version(2));
    f.wait_count(RenderResult::CheckFailed, 1).await;
    assert_eq!(std::fs::read(&f.dest).unwrap(), good);

    f.set_mode("check_hang");
    let started = std::time::Instant::now();
    f.send(&demo_version(3));
    f.wait_count(RenderResult::Timeout, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the hung check was not killed"
    );
    assert_eq!(std::fs::read(&f.dest).unwrap(), good);

    f.set_mode("reload_fail");
    f.send(&demo_version(4));
    f.wait_count(RenderResult::ReloadFailed, 1).await;
    assert_eq!(std::fs::read(&f.dest).unwrap(), good, "old file restored");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    // Only the initial reload and the failed one ran.
    assert_eq!(f.reloads(), 2);

    f.set_mode("ok");
    f.send(&demo_version(5));
    f.wait_count(RenderResult::Ok, 2).await;
    assert!(std::fs::read_to_string(&f.dest).unwrap().contains("1.4.5"));
    f.stop().await;
}

/// A render error names the template file and the line minijinja points at.
#[test]
fn render_error_names_template_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("broken.tmpl");
    std::fs::write(&source, "ok\nok\n{% for x in %}\n").unwrap();
    let t = template_config(&source, TemplateMode::File);
    let data = demo_data();
    let err = emit::render(&t, &data, "consul").unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
    assert!(err.to_string().starts_with("broken.tmpl:3:"), "{err}");
}

fn template_config(source: &Path, mode: TemplateMode) -> TemplateConfig {
    TemplateConfig {
        source: source.to_path_buf(),
        mode,
        destination: source.with_extension("out"),
        check: None,
        reload: None,
        wait_min: Duration::from_secs(1),
        wait_max: Duration::from_secs(4),
        perms: None,
        command_timeout: Duration::from_secs(5),
    }
}

fn demo_data() -> SrvData {
    let config = Config::parse("", Path::new("signpost.toml"), &Overrides::default()).unwrap();
    SrvData::build(&catalog(&demo_json()), &config.dns, "consul")
}

/// `template_dir` (python-confd): `*.tmpl` rendered, `*.conf` copied, in name order, other
/// files ignored.
#[test]
fn template_dir_renders_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("02-web.tmpl"), "{{ services.web|length }} web\n").unwrap();
    std::fs::write(d.join("01-global.conf"), "global {{ not rendered }}\n").unwrap();
    std::fs::write(
        d.join("03-db.tmpl"),
        "{% for i in services.db|standby %}backup {{ i.node }}\n{% endfor %}",
    )
    .unwrap();
    std::fs::write(d.join("README"), "ignored\n").unwrap();
    let out = emit::render(
        &template_config(d, TemplateMode::Dir),
        &demo_data(),
        "consul",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "global {{ not rendered }}\n3 web\nbackup node-3\n"
    );
}

/// The helpers: by tag, by role, by meta, addresses and HAProxy-safe names.
#[test]
fn template_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("h.tmpl");
    std::fs::write(
        &source,
        "{{ services_tagged('HTTP')|list }}|{{ services_with_meta('tcp_port')|list }}|\
         {{ services.db|active|map(attribute='node')|join(',') }}|\
         {{ services.db|standby|map(attribute='node')|join(',') }}|\
         {{ services.web|tagged('v2')|length }}|{{ services.web|meta_value('http_host') }}|\
         {{ services.redis[0]|addr_port }}|{{ 'a b/c:d.e'|ident }}|{{ domain }}",
    )
    .unwrap();
    let out = emit::render(
        &template_config(&source, TemplateMode::File),
        &demo_data(),
        "consul",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[\"api\", \"web\"]|[\"db\", \"redis\"]|node-2|node-3|1|www.example.org|10.0.1.13:6379|a_b_c:d.e|consul"
    );
}

/// The shipped HAProxy template, rendered from the demo catalog (HTTP by tag and by
/// `http_host`, TCP by `tcp_port`, a `nodns` standby), matches the golden file and passes
/// the real `haproxy -c`.
///
/// Regenerate the golden file after changing the template or the demo catalog with
/// `SIGNPOST_BLESS=1 cargo test --test integration emit::shipped_haproxy_template`, and
/// review the diff.
#[test]
fn shipped_haproxy_template() {
    let t = template_config(&repo("config/haproxy.cfg.tmpl"), TemplateMode::File);
    let rendered = String::from_utf8(emit::render(&t, &demo_data(), "consul").unwrap()).unwrap();
    for line in [
        "use_backend http_web if { var(txn.host) -m str www.example.org }",
        "use_backend http_api if { var(txn.host) -m str api.service.consul }",
        "server node-3_db-standby 10.0.1.13:5432 check weight 1 backup",
        "bind *:6379",
    ] {
        assert!(rendered.contains(line), "missing `{line}` in\n{rendered}");
    }
    let golden = repo("tests/golden/haproxy.cfg");
    if std::env::var_os("SIGNPOST_BLESS").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        rendered,
        expected,
        "rendered config differs from {}",
        golden.display()
    );

    if !require_tool("haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, &rendered).unwrap();
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy -c failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `signpost render --once`: renders and checks with the real `haproxy -c`, exits 0; a
/// broken template exits 1 and leaves the destination alone; `--dry-run` prints and writes
/// nothing.
#[test]
fn render_once_cli() {
    if !require_tool("haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(repo("config/demo-catalog.json"), d.join("catalog.json")).unwrap();
    std::fs::copy(repo("config/haproxy.cfg.tmpl"), d.join("haproxy.cfg.tmpl")).unwrap();
    let toml = "[consul]\naddress = \"file:catalog.json\"\ndatacenter = \"dc1\"\nnode_name = \"node-1\"\n\
                [emit]\nsrv_file = \"srv.json\"\n[[emit.template]]\nsource = \"haproxy.cfg.tmpl\"\n\
                destination = \"haproxy.cfg\"\ncheck = \"haproxy -c -q -f {file}\"\n";
    std::fs::write(d.join("signpost.toml"), toml).unwrap();
    let render = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_signpost"))
            .args(["render", "--once", "--config"])
            .arg(d.join("signpost.toml"))
            .args(extra)
            .output()
            .unwrap()
    };

    let out = render(&["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("backend tcp_db"), "{stdout}");
    assert!(stdout.contains("\"datacenter\": \"dc1\""), "{stdout}");
    assert!(!d.join("haproxy.cfg").exists() && !d.join("srv.json").exists());

    let out = render(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = std::fs::read_to_string(d.join("haproxy.cfg")).unwrap();
    assert_eq!(
        good,
        std::fs::read_to_string(repo("tests/golden/haproxy.cfg")).unwrap()
    );
    assert!(d.join("srv.json").exists());

    std::fs::write(d.join("haproxy.cfg.tmpl"), "{% if %}\n").unwrap();
    let out = render(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("render_error"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(d.join("haproxy.cfg")).unwrap(),
        good
    );
}

/// The whole signpost against the fake agent: the SRV data file and a template follow a
/// registration, the reload runs once per change, and `/metrics` counts the renders.
#[tokio::test]
async fn signpost_renders_from_the_agent() {
    let consul = FakeConsul::start().await;
    consul.register("web", "n1", "10.0.2.1", "", 8080, &[]);
    consul.register("web", "n2", "10.0.2.2", "", 8080, &[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("t.tmpl"),
        WEB_TEMPLATE.replace(" {{ i.meta.version }}", ""),
    )
    .unwrap();
    let reload = script(
        &d,
        "reload.sh",
        &format!("echo reload >> '{}/reloads'\n", d.display()),
    );
    let toml = format!(
        "[consul]\naddress = \"{}\"\n[emit]\nsrv_file = \"srv.json\"\n[[emit.template]]\n\
         source = \"t.tmpl\"\ndestination = \"web.cfg\"\nreload = \"'{}'\"\n\
         wait = {{ min = \"100ms\", max = \"1s\" }}\n",
        consul.url(),
        reload.display()
    );
    let sp = Signpost::start_in(dir, &toml).await;
    sp.wait_ready().await;
    let reloads = || {
        std::fs::read_to_string(d.join("reloads"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let servers = || {
        std::fs::read_to_string(d.join("web.cfg"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads() == 1 && servers() == 2
        })
        .await
    );
    let srv: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("srv.json")).unwrap()).unwrap();
    assert_eq!(srv["services"]["web"].as_array().unwrap().len(), 2);

    consul.register("web", "n3", "10.0.2.3", "", 8080, &[]);
    assert!(eventually(Duration::from_secs(5), || async { servers() == 3 }).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(reloads(), 2);
    let (_, metrics) = sp.get("/metrics").await;
    assert!(
        metrics.contains("signpost_emit_renders_total{result=\"ok\"}"),
        "{metrics}"
    );
    sp.stop().await;
}
