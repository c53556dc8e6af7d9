//! The `signpost` binary: exit codes and messages, the shipped configs, and the demo answering
//! the real `dig`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::signpost::require_tool;

fn signpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("signpost runs")
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A signpost process killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the binary with `args` and wait (at most 10 s) for `/ready` on `http`.
fn start(args: &[&str], http: SocketAddr) -> Daemon {
    let child = signpost()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn signpost");
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(http) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") {
                return daemon;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("signpost {args:?} not ready within 10 s");
}

/// Every shipped config passes `check-config`.
#[test]
fn shipped_configs_check() {
    for name in ["config/signpost.toml", "config/demo.toml"] {
        let out = run(signpost()
            .args(["check-config", "--config"])
            .arg(repo(name)));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An invalid config exits 78 from `check-config` and `run`, naming the file, key and line.
#[test]
fn invalid_config_exits_78_naming_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\ndns = [\"127.0.0.1:0\"]\n\n[forward]\ntimeout = \"soon\"\n",
    )
    .unwrap();
    for sub in ["check-config", "run"] {
        let out = run(signpost().args([sub, "--config"]).arg(&path));
        assert_eq!(out.status.code(), Some(78), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml:5"), "{sub}: {err}");
        assert!(err.contains("forward.timeout"), "{sub}: {err}");
    }
    std::fs::write(&path, "[dns]\nbogus = 1\n").unwrap();
    let out = run(signpost().args(["check-config", "--config"]).arg(&path));
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2") && err.contains("bogus"), "{err}");
}

/// A flag that does not parse is a command-line error (2); a port in use is 1, naming it.
#[test]
fn bad_flag_and_port_in_use() {
    let out = run(signpost().args(["run", "--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(signpost().args(["check-config", "--listen", "not-an-address"]));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let out = run(signpost()
        .args(["run", "--config"])
        .arg(repo("config/demo.toml"))
        .args(["--listen", "127.0.0.1:0", "--http", &addr.to_string()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr.to_string()));
}

/// The README's demo: `dig @127.0.0.1 -p PORT web.service.consul SRV` gets SRV records with the
/// targets' A records, and never the `nodns` standby of `db`.
#[test]
fn demo_answers_dig() {
    if !require_tool("dig") {
        return;
    }
    let (dns, http) = (free_port(), free_port());
    let http_addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let dns_arg = format!("127.0.0.1:{dns}");
    let _daemon = start(
        &[
            "run",
            "--config",
            repo("config/demo.toml").to_str().unwrap(),
            "--listen",
            &dns_arg,
            "--http",
            &http_addr.to_string(),
        ],
        http_addr,
    );
    let dig = |args: &[&str]| {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &dns.to_string(), "+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("dig runs");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = dig(&["web.service.consul", "SRV"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa rd ra"), "{out}");
    let srv = out.lines().filter(|l| l.contains("\tSRV\t")).count();
    assert!(srv >= 2, "{out}");
    assert!(out.contains("ADDITIONAL SECTION"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(".node.dc1.consul.") && l.contains("\tA\t")),
        "{out}"
    );

    let out = dig(&["+short", "db.service.consul", "A"]);
    let ips: Vec<&str> = out.lines().collect();
    assert_eq!(ips.len(), 1, "the nodns standby is never answered: {out}");
    let out = dig(&["+tcp", "+short", "web.service.consul", "A"]);
    assert!(out.lines().count() >= 2, "{out}");
    let out = dig(&["nope.service.consul", "A"]);
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("SOA"),
        "{out}"
    );
}
