//! `config/prometheus-alerts.yml` under the real `promtool` and a real Prometheus server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::{DEMO_CONSUL, Daemon, catalog_dir, http_get, repo};
use crate::support::dnsmasq::free_port;
use crate::support::signpost::require_tool;

/// Unit tests for the rules (`promtool test rules`): each alert fires on the series that
/// should fire it, and stays quiet on a healthy node.
const RULE_TESTS: &str = r#"
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'signpost_ready{instance="a",job="signpost"}'
        values: '0x5'
      - series: 'signpost_ready{instance="b",job="signpost"}'
        values: '1x5'
      - series: 'signpost_consul_catalog_age_seconds{instance="a",job="signpost"}'
        values: '0+60x5'
      - series: 'signpost_forward_all_upstreams_failed_total{instance="a",job="signpost"}'
        values: '0+100x10'
      - series: 'signpost_forward_requests_total{instance="a",job="signpost",upstream="10.0.0.2:53",result="ok"}'
        values: '50x10'
      - series: 'signpost_dns_responses_total{instance="a",job="signpost",zone="forward",rcode="servfail"}'
        values: '0+100x10'
      - series: 'signpost_dns_responses_total{instance="a",job="signpost",zone="consul",rcode="noerror"}'
        values: '0+100x10'
      - series: 'signpost_emit_renders_total{instance="a",job="signpost",result="check_failed"}'
        values: '0 1 1 1'
      - series: 'signpost_config_reloads_total{instance="a",job="signpost",result="error"}'
        values: '0 1 1 1'
    alert_rule_test:
      - eval_time: 4m
        alertname: SignpostNotReady
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, job: signpost}
            exp_annotations:
              summary: "signpost on a is not ready"
              description: "/ready is 503: listeners not bound or no complete catalog loaded yet."
      - eval_time: 5m
        alertname: SignpostAllUpstreamsFailing
        exp_alerts:
          - exp_labels: {severity: critical, instance: a}
            exp_annotations:
              summary: "all upstream resolvers failed on a"
              description: "Forwarded names get SERVFAIL (or stale answers); check forward.upstreams and the VPC resolver."
      - eval_time: 7m
        alertname: SignpostServfailRatio
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}
            exp_annotations:
              summary: "50% of answers on a are SERVFAIL"
      - eval_time: 2m
        alertname: SignpostRenderFailures
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, result: check_failed}
            exp_annotations:
              summary: "template renders failing on a (check_failed)"
              description: "The proxy keeps its previous config; it may disagree with DNS until fixed."
      - eval_time: 2m
        alertname: SignpostConfigReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, job: signpost, result: error}
            exp_annotations:
              summary: "signpost on a rejected a config reload"
              description: "It still runs the previous config; see its log for the file, key and line."
      - eval_time: 1m
        alertname: SignpostConsulDataStale
        exp_alerts: []
"#;

/// `promtool check rules` accepts the shipped rules, and `promtool test rules` shows each
/// alert firing on its series.
#[test]
fn promtool_checks_and_tests_the_rules() {
    if !require_tool("promtool") {
        return;
    }
    let rules = repo("config/prometheus-alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("alerts.test.yml");
    std::fs::write(
        &tests,
        RULE_TESTS.replace("RULES", &format!("'{}'", rules.display())),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus process, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes signpost every second with the shipped rules loaded; its HTTP API
/// returns `signpost_ready` = 1 and the rule group (bounded wait, 20 s).
#[test]
fn prometheus_scrapes_signpost_and_loads_the_rules() {
    if !require_tool("prometheus") {
        return;
    }
    let signpost = Daemon::start(
        catalog_dir(),
        DEMO_CONSUL,
        &["--upstream", "192.0.2.1"],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: signpost\n    static_configs:\n      - targets: ['{}']\n",
            repo("config/prometheus-alerts.yml").display(),
            signpost.http
        ),
    )
    .unwrap();
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(web, "/api/v1/query?query=signpost_ready");
        if status == 200 && body.contains("\"job\":\"signpost\"") && body.contains(",\"1\"]") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no signpost_ready from Prometheus: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, rules) = http_get(web, "/api/v1/rules");
    assert!(
        rules.contains("SignpostAllUpstreamsFailing") && rules.contains("\"health\":\"ok\""),
        "{rules}"
    );
    let (_, series) = http_get(web, "/api/v1/query?query=signpost_config_reloads_total");
    assert!(series.contains("\"result\":\"error\""), "{series}");
}
