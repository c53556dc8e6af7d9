//! `signpost import-dnsmasq` and `signpost import-consul-dns`: the imported configs pass
//! `check-config`, warn about what they cannot carry, and answer like the resolver they replace.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use super::daemon::{Daemon, catalog_dir};
use crate::support::dnsmasq::free_port;
use crate::support::fake_upstream::{Answer, FakeUpstream};
use crate::support::signpost::{Via, ask, require_tool};

fn signpost(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

/// Import `file` with `subcommand`, write the TOML to `dir/signpost.toml`, check it with
/// `check-config`; (TOML, stderr).
fn import(subcommand: &str, file: &Path, dir: &Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .arg(subcommand)
        .arg(file)
        .args(if subcommand == "import-dnsmasq" {
            vec!["--dir".to_owned(), dir.display().to_string()]
        } else {
            vec![]
        })
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let config = dir.join("signpost.toml");
    std::fs::write(&config, &toml).unwrap();
    let check = signpost(&["check-config", "--config"], &config);
    assert!(
        check.status.success(),
        "imported config fails check-config: {}\n{toml}",
        String::from_utf8_lossy(&check.stderr)
    );
    (toml, stderr)
}

/// Examples from dnsmasq's man page and its shipped `dnsmasq.conf.example` import into a
/// config that passes `check-config`, with a warning for each option signpost does not carry.
#[test]
fn dnsmasq_man_page_examples_import() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dnsmasq.conf");
    std::fs::write(
        &file,
        "# from dnsmasq.conf.example and dnsmasq(8)\n\
         domain-needed\n\
         bogus-priv\n\
         no-resolv\n\
         server=/localnet/192.168.0.1\n\
         server=/3.168.192.in-addr.arpa/10.1.2.3\n\
         server=/google.com/1.2.3.4\n\
         server=/www.google.com/#\n\
         server=10.1.2.3@eth1\n\
         server=1.2.3.4#1234\n\
         server=/consul/127.0.0.1#8600\n\
         address=/double-click.net/127.0.0.1\n\
         address=/www.thekelleys.org.uk/fe80::20d:60ff:fe36:f83\n\
         host-record=laptop,laptop.thekelleys.org,192.168.0.1,1234::100\n\
         srv-host=_ldap._tcp.example.com,ldapserver.example.com,389\n\
         srv-host=_ldap._tcp.example.com,ldapserver.example.com,389,1\n\
         srv-host=_ldap._tcp,ldapserver.example.com,389\n\
         cache-size=150\n\
         neg-ttl=60\n\
         min-cache-ttl=30\n\
         listen-address=127.0.0.1\n\
         port=5353\n",
    )
    .unwrap();
    let (toml, stderr) = import("import-dnsmasq", &file, dir.path());
    for want in [
        "\"10.1.2.3:53\"",
        "\"1.2.3.4:1234\"",
        "name = \"localnet.\"",
        "name = \"3.168.192.in-addr.arpa.\"",
        "size = 150",
        "min_ttl = \"30s\"",
        "dns = [\"127.0.0.1:5353\"]",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    assert!(!toml.contains("resolv.conf"), "no-resolv: {toml}");
    for warned in [
        "domain-needed",
        "bogus-priv",
        "neg-ttl=60",
        "signpost answers consul.",
        "www.google.com/#",
        "@source/@interface",
        "srv-host=_ldap._tcp,",
        "subdomains",
    ] {
        assert!(
            stderr.contains(warned),
            "no warning for {warned}:\n{stderr}"
        );
    }
    let hosts = std::fs::read_to_string(dir.path().join("hosts")).unwrap();
    assert!(
        hosts.contains("192.168.0.1 laptop laptop.thekelleys.org"),
        "{hosts}"
    );
    assert!(
        hosts.contains("1234::100 laptop laptop.thekelleys.org"),
        "{hosts}"
    );
    let srv =
        std::fs::read_to_string(dir.path().join("zones/_ldap._tcp.example.com.zone")).unwrap();
    assert!(
        srv.contains("@ IN SRV 1 0 389 ldapserver.example.com."),
        "{srv}"
    );
}

/// A dnsmasq process started from a config file, killed when dropped.
struct RealDnsmasq(Child);

impl Drop for RealDnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The answer's records as sorted `TYPE RDATA` strings (TTL and owner left out).
async fn rdata(server: SocketAddr, name: &str, rtype: RecordType) -> BTreeSet<String> {
    ask(server, name, rtype, Via::Udp)
        .await
        .answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect()
}

/// Before and after: a dnsmasq config with forwarding, conditional forwarding, `address=`,
/// `host-record=` and `srv-host=` is served by the real dnsmasq and by signpost running the
/// imported config, and both give the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_dnsmasq_config_answers_like_dnsmasq() {
    if !require_tool("dnsmasq") {
        return;
    }
    let default = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 300)).await;
    let corp = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 2), 300)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("dnsmasq.conf");
    std::fs::write(
        &file,
        format!(
            "no-resolv\nno-hosts\nserver=127.0.0.1#{}\nserver=/corp.example/127.0.0.1#{}\n\
             address=/blocked.example/127.0.0.1\nhost-record=laptop.lan,192.168.0.10\n\
             srv-host=_ldap._tcp.example.com,ldapserver.example.com,389,1,5\n\
             cache-size=1000\nlisten-address=127.0.0.1\nport={port}\nbind-interfaces\n",
            default.addr.port(),
            corp.addr.port()
        ),
    )
    .unwrap();
    let _dnsmasq = RealDnsmasq(
        Command::new("dnsmasq")
            .arg(format!("--conf-file={}", file.display()))
            .args(["--keep-in-foreground", "--user=root", "--pid-file="])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dnsmasq: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(dnsmasq).is_err() {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let out_dir = tempfile::tempdir().unwrap();
    let (toml, _) = import("import-dnsmasq", &file, out_dir.path());
    let dir = catalog_dir();
    let catalog = format!("file:{}", dir.path().join("catalog.json").display());
    let signpost = Daemon::start(dir, &toml, &["--consul", &catalog], &[]);
    let cases = [
        ("www.example.net.", RecordType::A),
        ("host.corp.example.", RecordType::A),
        ("blocked.example.", RecordType::A),
        ("laptop.lan.", RecordType::A),
        ("_ldap._tcp.example.com.", RecordType::SRV),
    ];
    for (name, rtype) in cases {
        let before = rdata(dnsmasq, name, rtype).await;
        let after = rdata(signpost.dns, name, rtype).await;
        assert!(!before.is_empty(), "dnsmasq has no answer for {name}");
        assert_eq!(before, after, "{name} {rtype}");
    }
}

/// A Consul agent's DNS settings in HCL and in JSON (shapes from Consul's agent configuration
/// docs) import into the same signpost config, which passes `check-config`.
#[test]
fn consul_dns_config_imports_from_hcl_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let hcl = dir.path().join("consul.hcl");
    std::fs::write(
        &hcl,
        r#"
datacenter = "dc1"
domain = "consul"
alt_domain = "test-domain"
recursors = ["10.0.0.2", "10.0.0.3:53"]
ports {
  dns = 8600
  http = 8500
}
dns_config {
  allow_stale = true
  max_stale = "87600h"
  node_ttl = "30s"
  service_ttl {
    "*" = "5s"
    "web" = "30s"
  }
  udp_answer_limit = 1
  enable_truncate = true
  only_passing = true
  recursor_timeout = "3s"
  soa { min_ttl = 60 }
}
"#,
    )
    .unwrap();
    let json = dir.path().join("consul.json");
    std::fs::write(
        &json,
        r#"{"datacenter": "dc1", "domain": "consul", "alt_domain": "test-domain",
            "recursors": ["10.0.0.2", "10.0.0.3:53"], "ports": {"dns": 8600, "http": 8500},
            "dns_config": {"allow_stale": true, "max_stale": "87600h", "node_ttl": "30s",
              "service_ttl": {"*": "5s", "web": "30s"}, "udp_answer_limit": 1,
              "enable_truncate": true, "only_passing": true, "recursor_timeout": "3s",
              "soa": {"min_ttl": 60}}}"#,
    )
    .unwrap();
    let (from_hcl, stderr) = import("import-consul-dns", &hcl, dir.path());
    let (from_json, _) = import("import-consul-dns", &json, dir.path());
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&from_hcl), body(&from_json));
    for want in [
        "address = \"http://127.0.0.1:8500\"",
        "alt_domain = \"test-domain.\"",
        "upstreams = [\"10.0.0.2\", \"10.0.0.3:53\"]",
        "udp_answer_limit = 1",
        "timeout = \"3s\"",
        "web = \"30s\"",
    ] {
        assert!(from_hcl.contains(want), "{want} missing:\n{from_hcl}");
    }
    assert!(
        stderr.contains("allow_stale") && stderr.contains("dns = -1"),
        "{stderr}"
    );
}

/// Before and after for Consul's DNS port: the imported knobs (`udp_answer_limit = 1`,
/// `service_ttl`, `recursors`) are what signpost serves, against a static catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_consul_config_serves_its_knobs() {
    let recursor = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 3), 300)).await;
    let dir = catalog_dir();
    let hcl = dir.path().join("consul.hcl");
    std::fs::write(
        &hcl,
        format!(
            "recursors = [\"{}\"]\ndns_config {{\n  udp_answer_limit = 1\n  service_ttl {{ \"web\" = \"30s\" }}\n}}\n",
            recursor.addr
        ),
    )
    .unwrap();
    let (toml, _) = import("import-consul-dns", &hcl, dir.path());
    let catalog = format!("file:{}", dir.path().join("catalog.json").display());
    let signpost = Daemon::start(dir, &toml, &["--consul", &catalog], &[]);
    let web = ask(signpost.dns, "web.service.consul", RecordType::A, Via::Udp).await;
    assert_eq!(web.answers.len(), 1, "{web:?}");
    assert_eq!(web.answers[0].ttl, 30);
    let other = rdata(signpost.dns, "www.example.net.", RecordType::A).await;
    assert_eq!(other, BTreeSet::from(["A 192.0.2.3".to_owned()]));
}
