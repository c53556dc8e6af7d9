//! A real HAProxy reading SRV records from signpost (`resolvers` + `server-template`), its
//! servers read back through the runtime API (`show servers state` on the stats socket).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::fake_consul::FakeConsul;
use crate::support::signpost::{Signpost, require_tool};

/// An HAProxy process killed when dropped.
struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `config/haproxy-srv.cfg` with loopback ports, a socket in the test's directory and short
/// timers, so that a change shows within a second.
fn haproxy_config(dns_port: u16, socket: &Path, http_port: u16) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy-srv.cfg"),
    )
    .unwrap();
    let replace = [
        ("/run/haproxy/admin.sock", socket.display().to_string()),
        ("127.0.0.1:53", format!("127.0.0.1:{dns_port}")),
        ("bind *:80", format!("bind 127.0.0.1:{http_port}")),
        ("timeout resolve 1s", "timeout resolve 100ms".into()),
        ("timeout retry 1s", "timeout retry 100ms".into()),
        ("hold valid 10s", "hold valid 100ms".into()),
        ("hold obsolete 5s", "hold obsolete 0s".into()),
        // No health checks: the instances' addresses do not exist.
        (" init-addr none check", " init-addr none".into()),
        ("server-template web 10", "server-template web 5".into()),
        ("log stdout format raw local0\n", String::new()),
    ];
    let mut text = shipped;
    for (from, to) in replace {
        assert!(
            text.contains(from),
            "haproxy-srv.cfg no longer has `{from}`"
        );
        text = text.replace(from, &to);
    }
    text
}

/// `address:port` of every server of `backend` that HAProxy is using: an address from the SRV
/// answer and not in maintenance set by resolution (`SRV_ADMF_RMAINT`, 0x08).
async fn servers(socket: &Path, backend: &str) -> Option<BTreeSet<String>> {
    let mut s = UnixStream::connect(socket).await.ok()?;
    s.write_all(format!("show servers state {backend}\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let _version = lines.next()?;
    let header: Vec<&str> = lines
        .next()?
        .trim_start_matches('#')
        .split_whitespace()
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (addr, admin, port) = (col("srv_addr")?, col("srv_admin_state")?, col("srv_port")?);
    let mut out = BTreeSet::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let admin_state: u32 = f.get(admin)?.parse().ok()?;
        let a = *f.get(addr)?;
        if admin_state & 0x08 == 0 && a != "-" && a != "0.0.0.0" {
            out.insert(format!("{a}:{}", f.get(port)?));
        }
    }
    Some(out)
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn expected(n: usize) -> BTreeSet<String> {
    (1..=n).map(|i| format!("192.0.2.{i}:8080")).collect()
}

/// HAProxy with `server-template web 5 _web._tcp.service.consul resolvers signpost` follows
/// `web` scaling from 2 to 5 instances and back to 2 on the fake agent.
#[tokio::test]
async fn haproxy_follows_srv_records() {
    if !require_tool("haproxy") {
        return;
    }
    // The shipped example itself is valid as written.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy-srv.cfg");
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let consul = FakeConsul::start().await;
    let mut ids = Vec::new();
    for i in 1..=2 {
        ids.push(consul.register(
            "web",
            &format!("n{i}"),
            &format!("192.0.2.{i}"),
            "",
            8080,
            &[],
        ));
    }
    let sp = Signpost::start(&format!("[consul]\naddress = \"{}\"\n", consul.url())).await;
    sp.wait_ready().await;

    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("admin.sock");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        haproxy_config(sp.dns.port(), &socket, free_tcp_port()),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut haproxy = HaProxy(child);

    let follows = |n: usize| {
        let socket = socket.clone();
        async move {
            // Bounded: 8 s at 50 ms per look.
            let mut last = None;
            for _ in 0..160 {
                last = servers(&socket, "web").await;
                if last.as_ref() == Some(&expected(n)) {
                    return (true, last);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (false, last)
        }
    };
    let (ok, last) = follows(2).await;
    if !ok && let Ok(Some(status)) = haproxy.0.try_wait() {
        let mut err = String::new();
        use std::io::Read;
        let _ = haproxy.0.stderr.take().unwrap().read_to_string(&mut err);
        panic!("haproxy exited ({status}):\n{err}");
    }
    assert!(ok, "2 instances: HAProxy has {last:?}");

    for i in 3..=5 {
        ids.push(consul.register(
            "web",
            &format!("n{i}"),
            &format!("192.0.2.{i}"),
            "",
            8080,
            &[],
        ));
    }
    let (ok, last) = follows(5).await;
    assert!(ok, "5 instances: HAProxy has {last:?}");

    for i in 3..=5 {
        consul.deregister(&format!("n{i}"), &ids[i - 1]);
    }
    let (ok, last) = follows(2).await;
    assert!(ok, "back to 2 instances: HAProxy has {last:?}");

    drop(haproxy);
    sp.stop().await;
}
