//! Forwarded cache-hit throughput: signpost against Unbound's and dnsmasq's forwarding caches,
//! in one run, with the same names and the same load generator; then the upstream query count
//! for a burst of 1,000 identical misses.
//!
//! `cargo bench --bench forward` (release build). Each server forwards to the same in-process
//! origin resolver, is pinned with `taskset -c 1` and gets the same warmed names; the load
//! generator (this process, pinned to core 0) keeps a window of queries outstanding on a few
//! connected UDP sockets with `sendmmsg`/`recvmmsg` (`forward/mmsg.rs`), so it spends far fewer
//! system calls per query than a server that answers one datagram per `recvfrom`/`sendto`.
//! Figures are qps over a fixed run and the loss (sent − answered). A server that is missing
//! is reported as skipped. See FORWARD_BENCH.md for figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "load/machine.rs"]
mod machine;
#[path = "forward/mmsg.rs"]
mod mmsg;

use machine::{command, free_port, installed, pin_self};

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mmsg::{BATCH, Batches};

/// Distinct names in the hit set.
const NAMES: usize = 100;
/// How long each server is loaded.
const RUN: Duration = Duration::from_secs(5);
/// Sockets the load generator spreads its queries over.
const SOCKETS: usize = 4;
/// Queries outstanding per socket.
const WINDOW: usize = 128;
/// Identical misses in the burst.
const BURST: usize = 1000;
/// Client sockets the burst comes from.
const BURST_SOCKETS: usize = 20;
/// The origin delays its answer to burst names by this much, so the burst is in flight together.
const BURST_DELAY: Duration = Duration::from_millis(200);

struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The origin resolver every server forwards to: A 192.0.2.1 TTL 3600 for any name, burst
/// names after [`BURST_DELAY`]; counts the queries per name.
struct Origin {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

fn main() {
    let pinned = pin_self();
    let origin = Origin::start();
    println!(
        "# forwarded cache hits, {NAMES} names, {RUN:?} per server, {SOCKETS}x{WINDOW} outstanding, pinned: {pinned}\n"
    );
    println!(
        "| server | qps | sent | answered | lost | burst of {BURST}: upstream queries | burst answered |"
    );
    println!("|---|---|---|---|---|---|---|");
    type Starter = fn(&Origin, bool) -> Option<Server>;
    let starters: [(&str, Starter); 3] = [
        ("signpost", start_signpost),
        ("unbound", start_unbound),
        ("dnsmasq", start_dnsmasq),
    ];
    for (name, start) in starters {
        let Some(server) = start(&origin, pinned) else {
            println!("| {name} | skipped (not installed) | | | | | |");
            continue;
        };
        if !warm(server.addr) {
            println!("| {name} | did not answer | | | | | |");
            continue;
        }
        let (sent, answered, elapsed) = load(server.addr);
        let qps = answered as f64 / elapsed.as_secs_f64();
        let burst_name = format!("burst-{}.bench.example", server.name);
        let burst_answered = burst(server.addr, &burst_name);
        let upstream = origin.count(&burst_name);
        println!(
            "| {} | {:.0} | {sent} | {answered} | {} | {upstream} | {burst_answered} |",
            server.name,
            qps,
            sent.saturating_sub(answered)
        );
    }
}

fn start_signpost(origin: &Origin, pinned: bool) -> Option<Server> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("catalog.json"), "{}").unwrap();
    let config = format!(
        "[listen]\ndns = [\"127.0.0.1:{port}\"]\nhttp = \"\"\nudp_workers = 1\n\n\
         [consul]\naddress = \"file:catalog.json\"\n\n\
         [forward]\nupstreams = [\"{}\"]\n\n[cache]\nsize = 100000\n",
        origin.addr
    );
    let path = dir.path().join("signpost.toml");
    std::fs::write(&path, config).unwrap();
    let child = command(pinned, env!("CARGO_BIN_EXE_signpost"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    Some(Server {
        name: "signpost",
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
        _dir: dir,
    })
}

fn start_unbound(origin: &Origin, pinned: bool) -> Option<Server> {
    if !installed("unbound") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let config = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  do-tcp: yes\n\
         \x20 access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  num-threads: 1\n\
         \x20 chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n\
         \x20 use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  module-config: \"iterator\"\n\
         \x20 qname-minimisation: no\n  msg-cache-size: 16m\n  rrset-cache-size: 16m\n\
         \x20 auto-trust-anchor-file: \"\"\n\
         forward-zone:\n  name: \".\"\n  forward-addr: {}@{}\n",
        origin.addr.ip(),
        origin.addr.port()
    );
    let path = dir.path().join("unbound.conf");
    std::fs::write(&path, config).unwrap();
    let child = command(pinned, "unbound")
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    Some(Server {
        name: "unbound",
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
        _dir: dir,
    })
}

fn start_dnsmasq(origin: &Origin, pinned: bool) -> Option<Server> {
    if !installed("dnsmasq") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = command(pinned, "dnsmasq")
        .args([
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--cache-size=10000",
            &format!("--server={}#{}", origin.addr.ip(), origin.addr.port()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Server {
        name: "dnsmasq",
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
        _dir: dir,
    })
}

/// A plain recursive A query for `name` with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn hit_names() -> Vec<String> {
    (0..NAMES).map(|i| format!("n{i}.bench.example")).collect()
}

/// Ask every hit name until each has an answer (waits up to 10 s for the server to start).
fn warm(server: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    for (i, name) in hit_names().iter().enumerate() {
        loop {
            if Instant::now() > deadline {
                return false;
            }
            let _ = socket.send(&query(i as u16, name));
            match socket.recv(&mut buf) {
                // NOERROR with one answer.
                Ok(n) if n > 12 && buf[3] & 0x0F == 0 && buf[7] == 1 => break,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    true
}

/// Load `server` for [`RUN`] with the hit names; (sent, answered, elapsed).
fn load(server: SocketAddr) -> (u64, u64, Duration) {
    let queries: Vec<Vec<u8>> = hit_names()
        .iter()
        .enumerate()
        .map(|(i, n)| query(i as u16, n))
        .collect();
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(server).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut batches: Vec<Batches> = (0..SOCKETS).map(|_| Batches::new()).collect();
    let mut outstanding = [0usize; SOCKETS];
    let mut lens = [0usize; BATCH];
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut next = 0usize;
    let mut last_progress = Instant::now();
    let start = Instant::now();
    while start.elapsed() < RUN {
        for (s, socket) in sockets.iter().enumerate() {
            let room = WINDOW - outstanding[s];
            if room > 0 {
                let n = room.min(BATCH);
                let batch: Vec<&[u8]> = (0..n)
                    .map(|k| queries[(next + k) % queries.len()].as_slice())
                    .collect();
                let out = batches[s].send(socket, &batch).unwrap_or(0);
                next = (next + out) % queries.len();
                outstanding[s] += out;
                sent += out as u64;
            }
            let got = batches[s].recv(socket, &mut lens).unwrap_or(0);
            outstanding[s] = outstanding[s].saturating_sub(got);
            answered += got as u64;
            if got > 0 {
                last_progress = Instant::now();
            }
        }
        // Replies lost (server queue overflow): forget them after a pause so the window refills.
        if last_progress.elapsed() > Duration::from_millis(20) {
            outstanding = [0; SOCKETS];
            last_progress = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    // Late answers still count toward "answered" but not toward the rate.
    let drain = Instant::now();
    let mut late = 0u64;
    while drain.elapsed() < Duration::from_millis(200) {
        for (s, socket) in sockets.iter().enumerate() {
            late += batches[s].recv(socket, &mut lens).unwrap_or(0) as u64;
        }
    }
    (sent, answered + late, elapsed)
}

/// Send [`BURST`] identical queries for an uncached `name` at once, spread over
/// [`BURST_SOCKETS`] sockets (one socket's receive buffer cannot hold 1,000 replies arriving
/// together); how many were answered.
fn burst(server: SocketAddr, name: &str) -> usize {
    let per_socket = BURST / BURST_SOCKETS;
    let sockets: Vec<UdpSocket> = (0..BURST_SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(server).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let queries: Vec<Vec<u8>> = (0..per_socket).map(|i| query(i as u16, name)).collect();
    let mut batches = Batches::new();
    let mut lens = [0usize; BATCH];
    for socket in &sockets {
        let mut sent = 0;
        while sent < per_socket {
            let batch: Vec<&[u8]> = queries[sent..(sent + BATCH).min(per_socket)]
                .iter()
                .map(Vec::as_slice)
                .collect();
            sent += batches.send(socket, &batch).unwrap_or(0);
        }
    }
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while answered < BURST && Instant::now() < deadline {
        for socket in &sockets {
            answered += batches.recv(socket, &mut lens).unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    answered
}

impl Origin {
    fn start() -> Origin {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let seen = counts.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Some((name, end)) = question(&buf[..len]) else {
                    continue;
                };
                *seen.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
                let reply = answer(&buf[..end]);
                if name.starts_with("burst") {
                    let socket = socket.try_clone().unwrap();
                    std::thread::spawn(move || {
                        std::thread::sleep(BURST_DELAY);
                        let _ = socket.send_to(&reply, peer);
                    });
                } else {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        Origin { addr, counts }
    }

    fn count(&self, name: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| c)
            .sum()
    }
}

/// The lowercase dotted question name and where the question ends.
fn question(packet: &[u8]) -> Option<(String, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *packet.get(pos)? as usize;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(packet.get(pos + 1..pos + 1 + len)?).to_lowercase());
        pos += 1 + len;
    }
    Some((labels.join("."), pos + 5))
}

/// The answer to the query `header_and_question`: A 192.0.2.1, TTL 3600, RA set, no EDNS.
fn answer(header_and_question: &[u8]) -> Vec<u8> {
    let mut reply = header_and_question.to_vec();
    reply[2] |= 0x80; // QR
    reply[3] = 0x80; // RA, NOERROR
    reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
    reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 192, 0, 2, 1]);
    reply
}
