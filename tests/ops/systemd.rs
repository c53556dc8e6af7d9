//! Port 53 without running as root: the systemd unit, `sd_notify`, and `--user`.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;

use super::daemon::{DEMO_CONSUL, Daemon, catalog_dir, repo};
use crate::support::signpost::{Via, ask, require_tool};

/// `systemd-analyze verify` accepts the shipped unit without a warning (with `ExecStart=`
/// pointing at the built binary, since verify checks that it exists), and the unit keeps the
/// settings the issue asks for.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo("config/signpost.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "missing {line}");
    }
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signpost.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/signpost", env!("CARGO_BIN_EXE_signpost")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("signpost.service"),
        "warnings about the unit: {stderr}"
    );
}

/// Read datagrams from `socket` until one contains `want` (5 s at most); all seen so far.
fn wait_for(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.lines().any(|l| l == want);
            seen.push(message);
            if found {
                return;
            }
        }
    }
    panic!("no {want} from signpost; got {seen:?}");
}

/// With `$NOTIFY_SOCKET` set, signpost sends `READY=1` once ready, `WATCHDOG=1` every half
/// `$WATCHDOG_USEC`, `RELOADING=1` then `READY=1` around a SIGHUP, and `STOPPING=1` at SIGTERM.
#[test]
fn sd_notify_ready_watchdog_reload_stop() {
    let dir = catalog_dir();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Daemon::start(
        dir,
        DEMO_CONSUL,
        &["--upstream", "192.0.2.1"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut seen = Vec::new();
    wait_for(&socket, "READY=1", &mut seen);
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    daemon.signal(Signal::SIGHUP);
    wait_for(&socket, "RELOADING=1", &mut seen);
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    wait_for(&socket, "READY=1", &mut seen);
    daemon.signal(Signal::SIGTERM);
    wait_for(&socket, "STOPPING=1", &mut seen);
    assert_eq!(daemon.wait_exit(Duration::from_secs(8)), Some(0));
}

/// `Uid:` and `Gid:` lines of `/proc/<pid>/task/<tid>/status` for every thread.
fn thread_ids(pid: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        ids.extend(
            status
                .lines()
                .filter(|l| {
                    l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:")
                })
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    }
    ids
}

/// Started as root with `--user nobody`: binds port 53 on a loopback address, then every
/// thread runs as nobody (uid and gid 65534, no supplementary groups) and still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_drops_root_after_binding_port_53() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("SIGNPOST_REQUIRE_TOOLS").is_none(),
            "binding port 53 and dropping privileges needs root (SIGNPOST_REQUIRE_TOOLS is set)"
        );
        eprintln!("skipping: not root");
        return;
    }
    let dir = catalog_dir();
    // nobody must be able to read the catalog when it is re-read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dns: SocketAddr = "127.83.9.1:53".parse().unwrap();
    let daemon = Daemon::spawn(
        dir,
        DEMO_CONSUL,
        &[
            "--upstream",
            "192.0.2.1",
            "--user",
            "nobody",
            "--log-level",
            "info",
        ],
        &[],
        Some(dns),
    );
    daemon.wait_ready();
    let pid = daemon.child_id();
    let ids = thread_ids(pid);
    assert!(ids.len() >= 9, "{ids:?}");
    for line in &ids {
        assert!(
            line == "Uid: 65534 65534 65534 65534"
                || line == "Gid: 65534 65534 65534 65534"
                || line == "Groups: 65534"
                || line == "Groups:",
            "a thread kept root: {ids:?}"
        );
    }
    let reply = ask(dns, "web.service.consul", RecordType::A, Via::Udp).await;
    assert!(reply.answers.len() >= 2, "{reply:?}");
    let reply = ask(dns, "web.service.consul", RecordType::A, Via::Tcp).await;
    assert!(reply.answers.len() >= 2, "{reply:?}");
    assert!(
        daemon.log().contains("privileges dropped"),
        "{}",
        daemon.log()
    );
}
