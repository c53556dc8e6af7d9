//! The load generator: one thread, one connected UDP socket on loopback, `sendmmsg` /
//! `recvmmsg` in batches of 64 (`forward/mmsg.rs`), hundreds of queries outstanding.
//!
//! Two modes: **max** keeps `window` queries outstanding and sends as fast as answers come
//! back (closed loop: the rate found is the server's, unless the generator's own CPU is at
//! 100%, which the report shows); **rate** sends on a fixed schedule whatever the answers do
//! (open loop: latency at a given load, and loss when the server cannot keep up). Every query
//! carries its own ID; the send time is kept per ID, so each answer gives a latency, and a
//! query unanswered after [`TIMEOUT`] is lost. A run is bounded by time and by count.
//!
//! The generator never sleeps: it polls with `MSG_DONTWAIT`. On this kind of VM a core that
//! goes idle takes tens of microseconds to wake (the vCPU halts), and a generator that blocks
//! whenever its window is full falls into lock-step with the server, both half idle, which
//! measures wake-ups instead of either program (first version of this bench: every server
//! "saturated" at ~0.45 of a core). Its CPU is therefore always about one core; what shows
//! whether it is the bottleneck is `idle_polls`, the share of receives that found nothing:
//! near 0, the generator never waited for the server and may be the limit; well above 0,
//! the server is.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::mmsg::{BATCH, Batches};

/// A query unanswered for this long counts as lost.
pub(crate) const TIMEOUT: Duration = Duration::from_millis(100);
/// Most latencies kept (a run stops sending beyond this many queries anyway).
const MAX_SAMPLES: usize = 4_000_000;
/// Time left for late answers after the last send.
const DRAIN: Duration = Duration::from_millis(300);

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub target: SocketAddr,
    /// Queries in wire form; the ID bytes are overwritten. Sent round-robin.
    pub queries: Vec<Vec<u8>>,
    pub duration: Duration,
    /// `None`: max rate (closed loop, `window` outstanding). `Some(qps)`: open loop.
    pub rate: Option<u64>,
    /// Most queries outstanding (the whole window in max mode, a safety bound at a fixed rate).
    pub window: usize,
    /// Stop sending after this many queries.
    pub max_queries: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    /// Answers whose rcode was not NOERROR.
    pub errors: u64,
    /// The sending phase.
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// This process's CPU time (user + system) over the run.
    pub cpu: Duration,
    /// Receives that found no answer waiting, as a share of all receives.
    pub idle_polls: f64,
}

// === impl Report ===

impl Report {
    pub(crate) fn qps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn loss(&self) -> f64 {
        self.lost as f64 / (self.sent.max(1)) as f64
    }

    /// The generator's CPU share of the run (1.0 = one whole core).
    pub(crate) fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run `spec` and report.
pub(crate) fn run(spec: &Spec) -> std::io::Result<Report> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Room for a window's worth of answers arriving while the generator sends.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let socket: UdpSocket = socket.into();
    socket.connect(spec.target)?;

    let mut batches = Batches::new();
    let mut lens = [0usize; BATCH];
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    // Send time per ID in ns since `start`, plus one; 0 = free.
    let mut sent_at = vec![0u64; 1 << 16];
    let mut latencies: Vec<u32> = Vec::with_capacity(MAX_SAMPLES.min(spec.max_queries as usize));
    let (mut next_id, mut oldest) = (0u16, 0u16);
    let mut outstanding = 0usize;
    let mut report = Report::default();
    let mut next_query = 0usize;
    let window = spec.window.min(30_000);

    let cpu_before = process_cpu();
    let start = Instant::now();
    let mut sending = true;
    let (mut polls, mut empty_polls) = (0u64, 0u64);
    let mut drain_until = None;
    loop {
        let now = Instant::now();
        let t = now.duration_since(start);
        if sending && (t >= spec.duration || report.sent >= spec.max_queries) {
            sending = false;
            report.elapsed = t;
            drain_until = Some(now + DRAIN);
        }
        if !sending && (outstanding == 0 || drain_until.is_some_and(|d| now >= d)) {
            break;
        }
        // How many to send now.
        let room = window.saturating_sub(outstanding);
        let due = match spec.rate {
            _ if !sending => 0,
            None => room,
            Some(rate) => {
                let scheduled = (t.as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
                (scheduled.saturating_sub(report.sent) as usize).min(room)
            }
        };
        let n = due
            .min(BATCH)
            .min((spec.max_queries - report.sent.min(spec.max_queries)) as usize);
        if n > 0 {
            let stamp = now.duration_since(start).as_nanos() as u64 + 1;
            let mut refs: [&[u8]; BATCH] = [&[]; BATCH];
            for (k, buf) in bufs.iter_mut().enumerate().take(n) {
                let id = next_id.wrapping_add(k as u16);
                buf.clear();
                buf.extend_from_slice(&spec.queries[(next_query + k) % spec.queries.len()]);
                buf[..2].copy_from_slice(&id.to_be_bytes());
            }
            for (k, r) in refs.iter_mut().enumerate().take(n) {
                *r = &bufs[k];
            }
            let out = batches.send(&socket, &refs[..n]).unwrap_or(0);
            for k in 0..out {
                let id = next_id.wrapping_add(k as u16) as usize;
                if sent_at[id] != 0 {
                    // The ID came round while its query was still out: it is lost.
                    report.lost += 1;
                    outstanding -= 1;
                }
                sent_at[id] = stamp;
            }
            next_id = next_id.wrapping_add(out as u16);
            next_query = (next_query + out) % spec.queries.len();
            outstanding += out;
            report.sent += out as u64;
        }
        // Take every answer queued (full batches mean more may wait), so that answers do not
        // sit in this socket's buffer and inflate the latencies measured.
        polls += 1;
        let mut first = true;
        loop {
            let got = batches
                .recv_with(&socket, &mut lens, libc::MSG_DONTWAIT)
                .unwrap_or(0);
            if got == 0 {
                if first {
                    empty_polls += 1;
                }
                break;
            }
            first = false;
            let stamp = Instant::now().duration_since(start).as_nanos() as u64 + 1;
            for (reply, &len) in batches.replies.iter().zip(&lens).take(got) {
                let reply = &reply[..len.min(mmsg_reply_len())];
                if reply.len() < 12 {
                    continue;
                }
                let id = usize::from(u16::from_be_bytes([reply[0], reply[1]]));
                let at = sent_at[id];
                if at == 0 {
                    // Late (already counted lost) or not ours.
                    continue;
                }
                sent_at[id] = 0;
                outstanding -= 1;
                report.answered += 1;
                if reply[3] & 0x0F != 0 {
                    report.errors += 1;
                }
                if latencies.len() < MAX_SAMPLES {
                    latencies.push(u32::try_from(stamp - at).unwrap_or(u32::MAX));
                }
            }
            if got < BATCH {
                break;
            }
        }
        // Expire the oldest queries (IDs are handed out in order, so they are the oldest).
        let now_ns = Instant::now().duration_since(start).as_nanos() as u64 + 1;
        let timeout = TIMEOUT.as_nanos() as u64;
        while oldest != next_id {
            let at = sent_at[oldest as usize];
            if at != 0 {
                if now_ns - at < timeout {
                    break;
                }
                sent_at[oldest as usize] = 0;
                outstanding -= 1;
                report.lost += 1;
            }
            oldest = oldest.wrapping_add(1);
        }
    }
    report.lost += outstanding as u64;
    report.cpu = process_cpu().saturating_sub(cpu_before);
    report.idle_polls = empty_polls as f64 / polls.max(1) as f64;
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |&ns| Duration::from_nanos(u64::from(ns)))
    };
    report.p50 = pick(0.50);
    report.p99 = pick(0.99);
    Ok(report)
}

fn mmsg_reply_len() -> usize {
    super::mmsg::MAX_REPLY
}

/// CPU time (user + system) of process `pid` ("self" for this one), from `/proc/<pid>/stat`.
pub(crate) fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks(utime + stime))
}

fn process_cpu() -> Duration {
    cpu_of("self").unwrap_or_default()
}

/// Clock ticks as time. `_SC_CLK_TCK` is 100 on every Linux this runs on.
fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 10)
}

/// A query for `name` (dotted) of type `qtype`, RD set, no EDNS.
pub(crate) fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&[0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}
