//! The system resolver for real: glibc's `getent` in a network namespace whose
//! `/etc/netns/<ns>/resolv.conf` points at signpost on 127.0.0.1:53.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::{DEMO_CONSUL, catalog_dir};
use crate::support::signpost::require_tool;

/// A network namespace with its own `/etc/netns/<name>/`, and the processes started in it;
/// all removed when dropped, whatever the test did.
struct Netns {
    name: String,
    etc: PathBuf,
    children: Vec<Child>,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("signpost-test-{}", std::process::id());
        // A namespace left by a killed earlier run with our pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = Netns {
            name,
            etc,
            children: Vec::new(),
        };
        std::fs::create_dir_all(&ns.etc).unwrap();
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec <ns> args...`: its output, after checking it succeeded.
    fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Start `args` in the namespace, stopped when the namespace is dropped.
    fn spawn(&mut self, args: &[&str]) {
        let child = self
            .exec(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// In a namespace of its own with `nameserver 127.0.0.1`, `search service.consul` and
/// `options edns0`, glibc resolves through signpost: `getent hosts` and `getent ahosts`
/// for `web.service.consul`, a forwarded name (answered by a dnsmasq upstream in the same
/// namespace), and the short name `web` through the search list.
#[test]
fn getent_resolves_through_signpost_in_a_netns() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("SIGNPOST_REQUIRE_TOOLS").is_none(),
            "the resolv.conf test creates a network namespace and needs root \
             (SIGNPOST_REQUIRE_TOOLS is set)"
        );
        eprintln!("skipping: not root");
        return;
    }
    if !require_tool("ip") || !require_tool("getent") || !require_tool("dnsmasq") {
        return;
    }
    let mut ns = Netns::create();
    std::fs::write(
        ns.etc.join("resolv.conf"),
        "nameserver 127.0.0.1\nsearch service.consul\noptions edns0 ndots:1 timeout:1 attempts:2\n",
    )
    .unwrap();
    ns.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--port=5353",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--address=/forwarded.example/192.0.2.44",
    ]);
    let dir = catalog_dir();
    let config = dir.path().join("signpost.toml");
    std::fs::write(
        &config,
        format!("{DEMO_CONSUL}\n[listen]\ndns = [\"127.0.0.1:53\"]\nhttp = \"\"\n[forward]\nupstreams = [\"127.0.0.1:5353\"]\n"),
    )
    .unwrap();
    ns.spawn(&[
        env!("CARGO_BIN_EXE_signpost"),
        "run",
        "--config",
        config.to_str().unwrap(),
    ]);

    let getent = |args: &[&str]| {
        let out = ns.exec(&[&["getent"], args].concat()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut hosts = String::new();
    while Instant::now() < deadline {
        hosts = getent(&["hosts", "web.service.consul"]);
        if !hosts.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        hosts.contains("web.service.consul"),
        "getent hosts: {hosts:?}"
    );

    let ahosts = getent(&["ahosts", "web.service.consul"]);
    assert!(
        ahosts.lines().filter(|l| l.contains("STREAM")).count() >= 2,
        "both web instances through getaddrinfo: {ahosts}"
    );
    let forwarded = getent(&["hosts", "forwarded.example"]);
    assert!(
        forwarded.starts_with("192.0.2.44"),
        "forwarded: {forwarded:?}"
    );
    let short = getent(&["hosts", "web"]);
    assert!(
        short.contains("web.service.consul"),
        "the search list turns `web` into web.service.consul: {short:?}"
    );
    let first_ip = |s: &str| s.split_whitespace().next().map(str::to_owned);
    assert!(
        hosts.lines().any(|l| first_ip(l) == first_ip(&short)),
        "{hosts} / {short}"
    );
    let _ = ns.run(&["true"]);
}
