//! One query to one upstream resolver, and the order in which a list of upstreams is tried.
//!
//! Each UDP attempt uses a fresh socket on a random ephemeral port and a fresh random ID, and
//! accepts only a reply from the upstream's address with that ID and the same question
//! (RFC 5452 §4.1, §9.1). The client's message is otherwise sent unchanged (flags, EDNS OPT and
//! its options, the question as written), as Consul's recursor path does
//! (`reference/consul-dns.md` §5.1). A UDP reply with TC set is retried over TCP (RFC 7766 §5).
//!
//! In-band health, as CoreDNS `forward` does it: [`MAX_FAILS`] timeouts or network errors in a
//! row mark an upstream down; a down upstream is skipped by every strategy and probed with
//! `. IN NS` every [`PROBE_INTERVAL`] until anything answers, then it is back. So a dead first
//! upstream costs `sequential` two timeouts, not one per query. A reply of any rcode proves
//! the server is alive: SERVFAIL or REFUSED still moves a query on, but does not mark it down
//! (a resolver that cannot reach one zone is not dead). Health is judged per upstream attempt,
//! never per client: a coalesced round that fails is one failure however many clients waited
//! on it (coredns#717). An upstream found to loop back to signpost at start is disabled for
//! good ([`Target::disable`]).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use metrics::{Counter, Histogram};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use crate::config::Strategy;
use crate::forward::packet;
use crate::metrics::{FORWARD_REQUEST_DURATION_SECONDS, FORWARD_REQUESTS_TOTAL};
use crate::wire::Proto;

/// Room for any DNS message over UDP (RFC 6891 §6.2.5 caps the payload at 65535).
const MAX_UDP_REPLY: usize = 65_535;
/// Timeouts or network errors in a row that mark an upstream down (CoreDNS `max_fails 2`).
pub(crate) const MAX_FAILS: u32 = 2;
/// How often a down upstream is probed (CoreDNS `health_check 0.5s`).
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// An upstream reply that passed the checks, with the client's ID not yet restored.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) wire: Vec<u8>,
    pub(crate) message: Message,
}

/// Why an upstream gave no reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("timed out")]
    Timeout,
    #[error("i/o error")]
    Io(#[source] io::Error),
    #[error("malformed reply")]
    Malformed,
}

/// What became of one attempt, as the `result` label of `signpost_forward_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    NxDomain,
    ServFail,
    Refused,
    FormErr,
    Timeout,
    Error,
    Truncated,
}

/// One configured upstream with its metric handles and smoothed round-trip time.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The configured address, as the `upstream` label (bounded by the config).
    pub(crate) label: String,
    /// Smoothed RTT in microseconds (0 = not measured yet), for [`Strategy::Fastest`].
    srtt_micros: AtomicU64,
    /// Timeouts and network errors in a row.
    fails: AtomicU32,
    /// Skipped and probed until it answers.
    down: AtomicBool,
    /// Loops back to signpost: never used again.
    disabled: AtomicBool,
    /// Built on first use, so that a recorder installed after [`crate::forward::Forwarder::new`]
    /// still sees them.
    handles: OnceLock<TargetHandles>,
}

#[derive(Debug)]
struct TargetHandles {
    results: [Counter; Outcome::ALL.len()],
    duration: Histogram,
}

/// A list of upstreams and the strategy that orders them.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) targets: Vec<Arc<Target>>,
    pub(crate) strategy: Strategy,
}

// === impl Outcome ===

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::NxDomain,
        Outcome::ServFail,
        Outcome::Refused,
        Outcome::FormErr,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::Truncated,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NxDomain => "nxdomain",
            Outcome::ServFail => "servfail",
            Outcome::Refused => "refused",
            Outcome::FormErr => "formerr",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Truncated => "truncated",
        }
    }

    pub(crate) fn of(result: &Result<Reply, ExchangeError>) -> Outcome {
        match result {
            Err(ExchangeError::Timeout) => Outcome::Timeout,
            Err(_) => Outcome::Error,
            Ok(reply) if reply.message.metadata.truncation => Outcome::Truncated,
            Ok(reply) => Outcome::of_rcode(reply.message.metadata.response_code),
        }
    }

    fn of_rcode(rcode: ResponseCode) -> Outcome {
        match rcode {
            ResponseCode::NoError => Outcome::Ok,
            ResponseCode::NXDomain => Outcome::NxDomain,
            ResponseCode::ServFail => Outcome::ServFail,
            ResponseCode::Refused => Outcome::Refused,
            ResponseCode::FormErr => Outcome::FormErr,
            _ => Outcome::Error,
        }
    }

    /// Consul relays NOERROR, NXDOMAIN and any answer with TC verbatim; every other rcode moves
    /// on to the next recursor (`agent/dns.go` `handleRecurse`, `reference/consul-dns.md` §5.1).
    pub(crate) fn is_usable(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NxDomain | Outcome::Truncated)
    }
}

// === impl Target ===

impl Target {
    pub(crate) fn new(addr: SocketAddr, label: String) -> Target {
        Target {
            addr,
            label,
            srtt_micros: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            down: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            handles: OnceLock::new(),
        }
    }

    /// Whether queries may go to this upstream now.
    pub(crate) fn is_usable(&self) -> bool {
        !self.down.load(Ordering::Relaxed) && !self.disabled.load(Ordering::Relaxed)
    }

    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Never use this upstream again (it forwards back to signpost).
    pub(crate) fn disable(&self) {
        self.disabled.store(true, Ordering::Relaxed);
    }

    /// Count a timeout or network error; the [`MAX_FAILS`]th in a row marks the upstream down
    /// and starts the probe (only one probe per down period: `swap` decides who starts it).
    pub(crate) fn record_failure(self: &Arc<Self>, timeout: Duration) {
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= MAX_FAILS && !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.label, fails, "upstream marked down; probing it until it answers");
            tokio::spawn(probe(Arc::downgrade(self), timeout));
        }
    }

    pub(crate) fn record_alive(&self) {
        self.fails.store(0, Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %self.label, "upstream answers again");
        }
    }

    fn handles(&self) -> &TargetHandles {
        self.handles.get_or_init(|| TargetHandles {
            results: Outcome::ALL.map(|outcome| {
                metrics::counter!(FORWARD_REQUESTS_TOTAL, "upstream" => self.label.clone(), "result" => outcome.as_str())
            }),
            duration: metrics::histogram!(FORWARD_REQUEST_DURATION_SECONDS, "upstream" => self.label.clone()),
        })
    }

    /// Ask this upstream; record the outcome, the duration, the smoothed RTT and its health.
    pub(crate) async fn ask(
        self: &Arc<Self>,
        request: &[u8],
        question: &Query,
        proto: Proto,
        timeout: Duration,
    ) -> (Outcome, Result<Reply, ExchangeError>) {
        let start = Instant::now();
        let result = exchange(self.addr, request, question, proto, timeout).await;
        let elapsed = start.elapsed();
        let outcome = Outcome::of(&result);
        let handles = self.handles();
        handles.results[outcome as usize].increment(1);
        handles.duration.record(elapsed.as_secs_f64());
        self.observe(outcome, elapsed, timeout);
        match &result {
            Err(ExchangeError::Timeout | ExchangeError::Io(_)) => self.record_failure(timeout),
            _ => self.record_alive(),
        }
        (outcome, result)
    }

    /// Exponentially smoothed RTT (weight 1/8, as RFC 6298 §2.3); a failure counts as a full
    /// timeout so that a dead upstream sinks to the end of a `fastest` list.
    pub(crate) fn observe(&self, outcome: Outcome, elapsed: Duration, timeout: Duration) {
        let sample = if outcome.is_usable() {
            elapsed
        } else {
            timeout
        };
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.srtt_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.srtt_micros.store(new, Ordering::Relaxed);
    }
}

// === impl Pool ===

impl Pool {
    /// The order in which to try the targets for one query: usable targets only (down and
    /// disabled ones are skipped), so it is empty when every upstream is down.
    pub(crate) fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].is_usable())
            .collect();
        match self.strategy {
            Strategy::Sequential => {}
            Strategy::Random => order.shuffle(&mut rand::rng()),
            // Unmeasured targets (0) first, so each gets tried; then the lowest smoothed RTT.
            Strategy::Fastest => {
                order.sort_by_key(|&i| self.targets[i].srtt_micros.load(Ordering::Relaxed))
            }
        }
        order
    }

    /// Whether every target is disabled (or there are none): such a pool refuses, like an
    /// empty upstream list.
    pub(crate) fn is_empty(&self) -> bool {
        self.targets.iter().all(|t| t.is_disabled())
    }
}

/// Probe a down upstream with `. IN NS` (as CoreDNS) every [`PROBE_INTERVAL`] until any
/// matching reply comes back. Holds only a weak reference between probes, so a dropped
/// forwarder ends it.
async fn probe(target: Weak<Target>, timeout: Duration) {
    let question = Query::query(Name::root(), RecordType::NS);
    let mut message = Message::query();
    message.add_query(question.clone());
    let Ok(request) = message.to_vec() else {
        return;
    };
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(target) = target.upgrade() else {
            return;
        };
        if target.is_disabled() || !target.down.load(Ordering::Relaxed) {
            return;
        }
        let probe_timeout = timeout.min(PROBE_INTERVAL * 4);
        if exchange_udp(target.addr, &request, &question, probe_timeout)
            .await
            .is_ok()
        {
            target.record_alive();
            return;
        }
    }
}

/// Send `request` to `addr` and wait up to `timeout` for a matching reply; over TCP when the
/// client came over TCP (Consul mirrors the client's transport), or when the UDP reply has TC
/// set (the TCP leg gets its own `timeout`, so one upstream costs at most twice the timeout).
/// If the TCP retry fails, the truncated UDP reply is returned: relayed with TC, it sends
/// the client to TCP itself (`reference/consul-dns.md` §5.1).
pub(crate) async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    question: &Query,
    proto: Proto,
    timeout: Duration,
) -> Result<Reply, ExchangeError> {
    if proto == Proto::Tcp {
        return exchange_tcp(addr, request, question, timeout).await;
    }
    let reply = exchange_udp(addr, request, question, timeout).await?;
    if !reply.message.metadata.truncation {
        return Ok(reply);
    }
    match exchange_tcp(addr, request, question, timeout).await {
        Ok(full) => Ok(full),
        Err(error) => {
            tracing::debug!(upstream = %addr, %error, "tcp retry after truncation failed");
            Ok(reply)
        }
    }
}

/// The client's message with a fresh random ID (RFC 5452 §9.2).
fn with_fresh_id(request: &[u8]) -> (Vec<u8>, u16) {
    let id = rand::random::<u16>();
    let mut wire = request.to_vec();
    packet::set_id(&mut wire, id);
    (wire, id)
}

async fn exchange_udp(
    addr: SocketAddr,
    request: &[u8],
    question: &Query,
    timeout: Duration,
) -> Result<Reply, ExchangeError> {
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let (wire, id) = with_fresh_id(request);
    let socket = UdpSocket::bind(local).await.map_err(ExchangeError::Io)?;
    // Connected, so the kernel drops datagrams from other addresses and reports an ICMP port
    // unreachable as an error at once instead of a timeout.
    socket.connect(addr).await.map_err(ExchangeError::Io)?;
    socket.send(&wire).await.map_err(ExchangeError::Io)?;
    let mut buf = vec![0u8; MAX_UDP_REPLY];
    loop {
        let (len, from) = timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout)?
            .map_err(ExchangeError::Io)?;
        if from != addr {
            continue;
        }
        // RFC 5452 §9.1: a reply that does not match ID and question is not the answer; keep
        // waiting for the real one until the deadline.
        if let Some(reply) = check_reply(&buf[..len], id, question) {
            return Ok(reply);
        }
        tracing::debug!(upstream = %addr, "ignored a non-matching reply");
    }
}

async fn exchange_tcp(
    addr: SocketAddr,
    request: &[u8],
    question: &Query,
    timeout: Duration,
) -> Result<Reply, ExchangeError> {
    let (wire, id) = with_fresh_id(request);
    let len = u16::try_from(wire.len()).map_err(|_| ExchangeError::Malformed)?;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        // RFC 1035 §4.2.2: a two-byte length prefix; one write so it goes in one segment.
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&wire);
        stream.write_all(&framed).await?;
        let reply_len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(reply_len)];
        stream.read_exact(&mut reply).await?;
        Ok::<_, io::Error>(reply)
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ExchangeError::Timeout)?
        .map_err(ExchangeError::Io)?;
    check_reply(&reply, id, question).ok_or(ExchangeError::Malformed)
}

/// A reply is ours when it is a response, carries our ID and asks our question (names compared
/// case-insensitively, RFC 4343). An error reply without a question section is accepted: some
/// servers send FORMERR and NOTIMP that way, and it only moves on to the next upstream.
fn check_reply(wire: &[u8], id: u16, question: &Query) -> Option<Reply> {
    if packet::id(wire)? != id {
        return None;
    }
    let message = Message::from_vec(wire).ok()?;
    if message.metadata.message_type != MessageType::Response {
        return None;
    }
    let matches = match message.queries.as_slice() {
        [] => !Outcome::of_rcode(message.metadata.response_code).is_usable(),
        [q] => {
            q.name() == question.name()
                && q.query_type() == question.query_type()
                && q.query_class() == question.query_class()
        }
        _ => false,
    };
    matches.then(|| Reply {
        wire: wire.to_vec(),
        message,
    })
}
