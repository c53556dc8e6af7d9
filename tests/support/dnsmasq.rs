//! A real dnsmasq on a loopback port, started per test with its options on the command line,
//! logging every query it receives (`--log-queries`) so tests can count upstream queries.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running dnsmasq; killed when dropped.
pub(crate) struct Dnsmasq {
    pub(crate) addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// A loopback port free for UDP and TCP right now.
pub(crate) fn free_port() -> u16 {
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

impl Dnsmasq {
    /// Start dnsmasq on `127.0.0.1:<free port>` with no resolv.conf, no hosts file and `args`
    /// (e.g. `--address=/example.test/192.0.2.1`, `--server=127.0.0.1#5353`); waits until it
    /// answers.
    pub(crate) fn start(args: &[&str]) -> Dnsmasq {
        let port = free_port();
        let mut child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--keep-in-foreground",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--user=root",
                "--log-queries",
                "--log-facility=-",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let dnsmasq = Dnsmasq {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dnsmasq.log_contains("started") {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start: {:?}",
                dnsmasq.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        dnsmasq
    }

    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Queries received for `name` (lowercase, no final dot) of type `qtype` (`A`, `AAAA`).
    pub(crate) fn queries(&self, qtype: &str, name: &str) -> usize {
        let needle = format!("query[{qtype}] {name} from");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
