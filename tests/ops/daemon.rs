//! The `signpost` binary started per test from a config written into a temporary directory
//! (next to a copy of the demo catalog), on free loopback ports; killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::dnsmasq::free_port;

/// A running signpost process.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) dns: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    stderr: PathBuf,
}

/// The repository file `path`.
pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A fresh directory holding `catalog.json` (the demo catalog) for `file:catalog.json`.
pub(crate) fn catalog_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo("config/demo-catalog.json"),
        dir.path().join("catalog.json"),
    )
    .unwrap();
    dir
}

/// The top of a config serving the demo catalog from `catalog.json`; listen addresses come
/// from the command line.
pub(crate) const DEMO_CONSUL: &str = r#"
[consul]
address = "file:catalog.json"
datacenter = "dc1"
node_name = "node-1"
"#;

impl Daemon {
    /// Write `toml` to `dir/signpost.toml` and run `signpost run` on it with `extra` arguments
    /// and environment `env`, on free loopback ports; waits (10 s at most) for `/ready`.
    pub(crate) fn start(
        dir: tempfile::TempDir,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let daemon = Daemon::spawn(dir, toml, extra, env, None);
        daemon.wait_ready();
        daemon
    }

    /// Like [`Daemon::start`] without waiting; `dns` replaces the free DNS port.
    pub(crate) fn spawn(
        dir: tempfile::TempDir,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        dns: Option<SocketAddr>,
    ) -> Daemon {
        Daemon::spawn_with(dir, toml, extra, env, dns, false)
    }

    /// [`Daemon::spawn`]; `niced`: at a higher CPU priority (`nice -n -10`) when root.
    pub(crate) fn spawn_with(
        dir: tempfile::TempDir,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        dns: Option<SocketAddr>,
        niced: bool,
    ) -> Daemon {
        Daemon::spawn_full(dir, toml, extra, env, dns, niced, false)
    }

    /// [`Daemon::spawn_with`]; `stderr_blocked`: stderr is a pipe this side never reads.
    pub(crate) fn spawn_full(
        dir: tempfile::TempDir,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        dns: Option<SocketAddr>,
        niced: bool,
        stderr_blocked: bool,
    ) -> Daemon {
        let config = dir.path().join("signpost.toml");
        std::fs::write(&config, toml).unwrap();
        let dns = dns.unwrap_or_else(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stderr = dir.path().join("stderr.log");
        // On a shared machine (other builds and tests) the daemon under load runs at a higher
        // priority when we may raise it, so a load test measures signpost and not its neighbours.
        let mut command = if nix::unistd::Uid::effective().is_root() && niced {
            let mut c = Command::new("nice");
            c.args(["-n", "-10"]).arg(env!("CARGO_BIN_EXE_signpost"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_signpost"))
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &dns.to_string(), "--http", &http.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("SIGNPOST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if stderr_blocked {
                // A pipe nobody reads: after 64 KiB every write to stderr blocks.
                Stdio::piped()
            } else {
                Stdio::from(std::fs::File::create(&stderr).unwrap())
            })
            .spawn()
            .expect("spawn signpost");
        Daemon {
            child,
            dns,
            http,
            dir,
            stderr,
        }
    }

    pub(crate) fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// The config file; rewrite it and [`Daemon::signal`] `SIGHUP` to reload.
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("signpost.toml")
    }

    /// Everything written to stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET `path` over plain HTTP/1.0: (status, body); (0, "") if it cannot connect.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path)
    }

    /// Wait (10 s at most) until `/ready` is 200.
    pub(crate) fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.get("/ready").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("signpost not ready within 10 s; log:\n{}", self.log());
    }

    /// The value of the `/metrics` sample `series` (name with labels exactly as printed).
    pub(crate) fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.get("/metrics").1, series)
    }

    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Wait (at most `within`) for the process to exit; its exit code.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` from `addr` over HTTP/1.0: (status, body); (0, "") on a connection failure.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of `series` in a Prometheus text exposition.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
