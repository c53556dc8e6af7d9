//! The forwarder: every name that is not signpost's own goes to upstream resolvers.
//!
//! A query goes cache → coalesce → upstreams. The upstream list is chosen by the longest
//! `[[forward.domain]]` suffix (conditional forwarding, like dnsmasq `server=/name/ip`), else the
//! default `forward.upstreams`. Upstreams are tried one after another as Consul's recursors are
//! (`reference/consul-dns.md` §5.1): NOERROR, NXDOMAIN and any answer with TC are relayed as the
//! upstream sent them; SERVFAIL, REFUSED, FORMERR, NOTIMP, a timeout or an I/O error moves on; when
//! none answers, the client gets SERVFAIL with RA=1 and its EDNS echoed.
//!
//! A fresh cache hit never reaches [`Forwarder::resolve`]: the dispatcher calls
//! [`Forwarder::answer_cached`] in the UDP loop itself, which keys the cache from the raw
//! question bytes and writes the answer into the listener's buffer (no task, no hickory
//! parsing). Everything else (misses, stale entries) goes through `resolve`.
//!
//! Serve-stale follows RFC 8767: an expired entry (within `cache.serve_stale`) is answered with
//! TTL `cache.stale_ttl` when every upstream fails, or when the upstream has not answered within
//! `cache.stale_answer_timeout` (the §5 client response timer, 1.8 s); the refresh then keeps
//! running in its own task and updates the cache.
//!
//! At start, [`Forwarder::check_loops`] sends each upstream one query for a random name under
//! `signpost-loop-check.`; the dispatcher reports such a name arriving on signpost's own
//! listener ([`Forwarder::is_loop_probe`]), and an upstream whose probe came back is disabled
//! (CoreDNS `loop`, dnsmasq `--dns-loop-detect`).
//!
//! hickory's `ForwardZoneHandler` and `NameServerPool` turn every rcode but NOERROR and NXDOMAIN
//! into an error and drop the upstream's bytes (`reference/hickory.md` §3.2), so the upstream
//! path here is our own (§3.3 of the same).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use metrics::{Counter, Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{CacheConfig, ForwardConfig, Upstream};
use crate::metrics::{
    CACHE_ENTRIES, CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, FORWARD_ALL_UPSTREAMS_FAILED_TOTAL,
    FORWARD_REFUSED_TOTAL, SERVED_STALE_TOTAL,
};
use crate::wire::{self, Proto};

mod cache;
mod flight;
// Issue 8: the per-thread front that keeps the hit path allocation-free.
mod front;
mod packet;
mod resolv_conf;
mod upstream;

use cache::{Cache, CacheKey, KeyBuf, Lookup};
use flight::Flights;
use upstream::{Pool, Target};

/// Forwards queries to upstream resolvers. A cheap handle: clones share one forwarder.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

/// Why the forwarder cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot read {}", path.display())]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Inner {
    default: Pool,
    /// `[[forward.domain]]` entries, most labels first, so the first match is the longest suffix.
    domains: Vec<(Name, Pool)>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    cache: Option<Cache>,
    flights: Flights<FlightKey, Arc<Round>>,
    failure_log: RateLimit,
    /// Loop-check names sent and not yet settled (dotted lowercase, no final dot) → seen on
    /// our own listener.
    loop_probes: Mutex<HashMap<Box<[u8]>, bool>>,
    /// Built on first use, so a metrics recorder installed after `new()` still sees them.
    handles: OnceLock<Handles>,
}

/// Identical queries share a round only if they also came over the same transport: a TCP
/// client must not get the TC answer a UDP round may end with.
type FlightKey = (CacheKey, Proto);

/// The shared result of one upstream round.
#[derive(Debug)]
enum Round {
    /// Upstream wire bytes (ID not yet the client's).
    Answer(Arc<[u8]>),
    AllFailed,
}

#[derive(Debug)]
struct Handles {
    hits: Counter,
    misses: Counter,
    stale: Counter,
    refused: Counter,
    all_failed: Counter,
    entries: Gauge,
}

/// Allows one event per `interval` (for the "all upstream resolvers failed" warning).
#[derive(Debug)]
struct RateLimit {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

/// What one upstream round needs, owned so that the round can outlive the client that started
/// it (a stale answer sent at the client response timer leaves the refresh running).
struct Ask {
    wire: Vec<u8>,
    question: Query,
    /// `None` for a query the raw reader does not take (compressed question, several OPT
    /// options it cannot key): such a query is neither cached nor coalesced.
    key: Option<CacheKey>,
    proto: Proto,
}

/// How often the "all upstream resolvers failed" warning may be logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Loop-check names end with this label (dotted lowercase, as the dispatcher sees names).
const LOOP_CHECK_SUFFIX: &[u8] = b".signpost-loop-check";

// === impl Forwarder ===

impl Forwarder {
    /// Build the forwarder. `own`: signpost's own listen addresses, never used as upstreams.
    /// `Upstream::ResolvConf` files are read here.
    pub fn new(
        config: &ForwardConfig,
        cache: &CacheConfig,
        own: &[SocketAddr],
    ) -> Result<Forwarder, ForwardError> {
        let default = pool(&config.upstreams, config, own, "forward.upstreams")?;
        let mut domains = Vec::with_capacity(config.domains.len());
        for domain in &config.domains {
            let list = format!("forward.domain {}", domain.name);
            let name = domain.name.to_lowercase();
            domains.push((name, pool(&domain.upstreams, config, own, &list)?));
        }
        domains.sort_by_key(|(name, _)| std::cmp::Reverse(name.num_labels()));
        // 0 means unbounded (still a bound: the semaphore's maximum).
        let permits = match config.max_in_flight {
            0 => Semaphore::MAX_PERMITS,
            n => n.min(Semaphore::MAX_PERMITS),
        };
        let inner = Inner {
            default,
            domains,
            timeout: config.timeout,
            in_flight: Arc::new(Semaphore::new(permits)),
            cache: Cache::new(cache),
            flights: Flights::new(),
            failure_log: RateLimit::new(FAILURE_LOG_INTERVAL),
            loop_probes: Mutex::new(HashMap::new()),
            handles: OnceLock::new(),
        };
        Ok(Forwarder {
            inner: Arc::new(inner),
        })
    }

    /// The hit path: answer `query` into `out` from a fresh cache entry and return `true`, or
    /// return `false` (miss, stale, or no cache) and leave the query to [`Forwarder::resolve`].
    /// Synchronous and allocation-free apart from growing `out`: the key is built on the stack
    /// from the question bytes.
    pub fn answer_cached(&self, query: &wire::Query<'_>, proto: Proto, out: &mut Vec<u8>) -> bool {
        let Some(cache) = &self.inner.cache else {
            return false;
        };
        let Some(key) = KeyBuf::of(query) else {
            return false;
        };
        let now = Instant::now();
        // Through the per-thread front: moka's own get allocates now and then (`front.rs`).
        let Lookup::Fresh(entry) = front::get(cache, &key, now) else {
            return false;
        };
        if !entry.answer(query, now, out) {
            return false;
        }
        if proto == Proto::Udp && out.len() > query.max_size(Proto::Udp) {
            // Rare (a big answer for a small client): RFC 2181 §9, TC and retry over TCP.
            *out = packet::truncate(out);
        }
        self.inner.handles().hits.increment(1);
        true
    }

    /// Whether `name` (dotted lowercase, no final dot) is one of our own loop-check probes
    /// coming back to us through an upstream: if so it is recorded, and the caller answers it
    /// locally (REFUSED) instead of forwarding it round the loop again.
    pub fn is_loop_probe(&self, name: &[u8]) -> bool {
        if !name.ends_with(LOOP_CHECK_SUFFIX) {
            return false;
        }
        let mut probes = self
            .inner
            .loop_probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match probes.get_mut(name) {
            Some(seen) => {
                *seen = true;
                true
            }
            None => false,
        }
    }

    /// Answer the client's request (the whole message as received; the caller has already checked
    /// it parses, is a query, and has one question). Returns the response wire bytes carrying the
    /// client's ID and question. Never fails: no usable upstream answer → SERVFAIL (RA=1, EDNS
    /// echoed if the client sent it).
    pub async fn resolve(&self, request: &[u8], proto: Proto) -> Vec<u8> {
        let Ok(message) = Message::from_vec(request) else {
            return packet::minimal_response(request, ResponseCode::FormErr);
        };
        let Some(question) = message.queries.first().cloned() else {
            return packet::minimal_response(request, ResponseCode::FormErr);
        };
        let answer = self.answer(request, &message, question, proto).await;
        if proto == Proto::Udp && answer.len() > packet::udp_limit(&message) {
            return packet::truncate(&answer);
        }
        answer
    }

    /// Send every upstream a query for a fresh random name under `signpost-loop-check.` and
    /// disable each one whose query arrives back on signpost's own listener (a forwarding loop:
    /// resolv.conf pointing at a local resolver that forwards to us). Run once after the
    /// listeners are bound; every probe waits at most `forward.timeout`.
    pub async fn check_loops(self) {
        let mut targets: Vec<Arc<Target>> = Vec::new();
        let pools = std::iter::once(&self.inner.default)
            .chain(self.inner.domains.iter().map(|(_, pool)| pool));
        for target in pools.flat_map(|pool| pool.targets.iter()) {
            if !targets.iter().any(|t| t.addr == target.addr) {
                targets.push(Arc::clone(target));
            }
        }
        let mut checks = tokio::task::JoinSet::new();
        for target in targets {
            let this = self.clone();
            checks.spawn(async move { this.check_loop(target).await });
        }
        while checks.join_next().await.is_some() {}
    }

    async fn check_loop(&self, target: Arc<Target>) {
        let label = format!("{:016x}", rand::random::<u64>());
        let dotted = format!("{label}{}", String::from_utf8_lossy(LOOP_CHECK_SUFFIX));
        let Ok(name) = Name::from_ascii(format!("{dotted}.")) else {
            return;
        };
        // HINFO, as CoreDNS's `loop` probe: a type nothing else asks for.
        let question = Query::query(name, RecordType::HINFO);
        let mut message = Message::query();
        message.metadata.id = rand::random();
        message.metadata.recursion_desired = true;
        message.add_query(question.clone());
        let Ok(wire) = message.to_vec() else {
            return;
        };
        let key: Box<[u8]> = dotted.into_bytes().into();
        self.inner.lock_probes().insert(key.clone(), false);
        let result = upstream::exchange(
            target.addr,
            &wire,
            &question,
            Proto::Udp,
            self.inner.timeout,
        )
        .await;
        let seen = self.inner.lock_probes().remove(&key).unwrap_or(false);
        if seen {
            target.disable();
            tracing::error!(
                upstream = %target.label,
                "forwarding loop: a query sent to this upstream came back to signpost; upstream disabled (point resolv.conf or forward.upstreams at the real resolver)"
            );
        } else {
            tracing::debug!(upstream = %target.label, answered = result.is_ok(), "no forwarding loop");
        }
    }

    async fn answer(
        &self,
        request: &[u8],
        message: &Message,
        question: Query,
        proto: Proto,
    ) -> Vec<u8> {
        let inner = &self.inner;
        let handles = inner.handles();
        let parsed = wire::Query::parse(request).ok();
        let key = parsed.as_ref().and_then(KeyBuf::of);
        let mut stale = None;
        if let (Some(cache), Some(key), Some(query)) = (&inner.cache, &key, &parsed) {
            let now = Instant::now();
            match cache.get(key.as_bytes(), now) {
                Lookup::Fresh(entry) => {
                    let mut out = Vec::new();
                    if entry.answer(query, now, &mut out) {
                        handles.hits.increment(1);
                        return out;
                    }
                }
                Lookup::Stale(entry) => stale = Some(entry),
                Lookup::Miss => {}
            }
            handles.misses.increment(1);
        }
        if inner.pool_for(question.name()).is_empty() {
            return packet::error_response(message, ResponseCode::Refused);
        }
        // DESIGN.md rule 4: a bound on forwarded queries in flight. Beyond it the client is
        // refused at once rather than queued (CoreDNS `max_concurrent`); REFUSED is never cached.
        let Ok(permit) = Arc::clone(&inner.in_flight).try_acquire_owned() else {
            handles.refused.increment(1);
            return packet::error_response(message, ResponseCode::Refused);
        };
        let ask = Ask {
            wire: request.to_vec(),
            question,
            key: key.map(|k| k.to_key()),
            proto,
        };
        let timer = inner
            .cache
            .as_ref()
            .map(|c| c.stale_answer_timeout())
            .unwrap_or_default();
        let round = match (&stale, parsed.as_ref()) {
            (Some(entry), Some(query)) if !timer.is_zero() => {
                // RFC 8767 §5: "If the answer has not been completely determined by the time
                // the client response timer has elapsed, the resolver SHOULD then check its
                // cache to see whether there is expired data". The round runs in its own task
                // so that it goes on refreshing the cache after the stale answer is sent.
                let this = self.clone();
                let mut refresh = tokio::spawn(async move { this.coalesced(ask, permit).await });
                tokio::select! {
                    joined = &mut refresh => joined.unwrap_or_else(|_| Arc::new(Round::AllFailed)),
                    _ = tokio::time::sleep(timer) => {
                        let mut out = Vec::new();
                        if entry.answer_stale(query, inner.stale_ttl(), &mut out) {
                            handles.stale.increment(1);
                            return out;
                        }
                        refresh.await.unwrap_or_else(|_| Arc::new(Round::AllFailed))
                    }
                }
            }
            _ => self.coalesced(ask, permit).await,
        };
        match &*round {
            Round::Answer(wire) => {
                let mut answer = wire.to_vec();
                packet::copy_id_and_question(&mut answer, request);
                answer
            }
            Round::AllFailed => {
                // RFC 8767 §4: every upstream failed; an expired answer beats SERVFAIL.
                let mut out = Vec::new();
                if let (Some(entry), Some(query)) = (&stale, &parsed)
                    && entry.answer_stale(query, inner.stale_ttl(), &mut out)
                {
                    handles.stale.increment(1);
                    return out;
                }
                packet::error_response(message, ResponseCode::ServFail)
            }
        }
    }

    /// One upstream round, shared by every identical query in flight.
    async fn coalesced(&self, ask: Ask, _permit: OwnedSemaphorePermit) -> Arc<Round> {
        match &ask.key {
            Some(key) => {
                let flight = (key.clone(), ask.proto);
                self.inner
                    .flights
                    .run(flight, || self.inner.round(&ask))
                    .await
            }
            None => self.inner.round(&ask).await,
        }
    }
}

// === impl Inner ===

impl Inner {
    fn lock_probes(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, bool>> {
        self.loop_probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stale_ttl(&self) -> Duration {
        self.cache
            .as_ref()
            .map(|c| c.stale_ttl())
            .unwrap_or_default()
    }

    /// One upstream round for a cache miss, run once per coalesced group: ask the usable
    /// upstreams in order, cache the outcome, count a total failure once. When every upstream
    /// is down this fails at once (CoreDNS `failfast_all_unhealthy_upstreams`): no query is
    /// sprayed at resolvers known to be dead.
    async fn round(&self, ask: &Ask) -> Arc<Round> {
        let pool = self.pool_for(ask.question.name());
        for index in pool.order() {
            let target = &pool.targets[index];
            let (outcome, result) = target
                .ask(&ask.wire, &ask.question, ask.proto, self.timeout)
                .await;
            match result {
                Ok(reply) if outcome.is_usable() => {
                    let wire: Arc<[u8]> = reply.wire.into();
                    if let (Some(cache), Some(key)) = (&self.cache, &ask.key) {
                        cache.insert_answer(
                            key.clone(),
                            &reply.message,
                            wire.clone(),
                            Instant::now(),
                        );
                        self.handles().entries.set(cache.entry_count() as f64);
                    }
                    return Arc::new(Round::Answer(wire));
                }
                Ok(_) => {
                    tracing::debug!(upstream = %target.label, result = outcome.as_str(), "trying the next upstream")
                }
                Err(error) => {
                    tracing::debug!(upstream = %target.label, %error, "trying the next upstream")
                }
            }
        }
        self.handles().all_failed.increment(1);
        if self.failure_log.allow(Instant::now()) {
            tracing::warn!(
                upstreams = pool.targets.len(),
                "all upstream resolvers failed"
            );
        }
        if let (Some(cache), Some(key)) = (&self.cache, &ask.key) {
            cache.insert_servfail(key.clone(), Instant::now());
            self.handles().entries.set(cache.entry_count() as f64);
        }
        Arc::new(Round::AllFailed)
    }

    /// The longest `[[forward.domain]]` suffix of `name`, else the default upstreams.
    fn pool_for(&self, name: &Name) -> &Pool {
        self.domains
            .iter()
            .find(|(domain, _)| domain.zone_of(name))
            .map(|(_, pool)| pool)
            .unwrap_or(&self.default)
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| Handles {
            hits: metrics::counter!(CACHE_HITS_TOTAL),
            misses: metrics::counter!(CACHE_MISSES_TOTAL),
            stale: metrics::counter!(SERVED_STALE_TOTAL),
            refused: metrics::counter!(FORWARD_REFUSED_TOTAL),
            all_failed: metrics::counter!(FORWARD_ALL_UPSTREAMS_FAILED_TOTAL),
            entries: metrics::gauge!(CACHE_ENTRIES),
        })
    }
}

/// The targets of one upstream list; resolv.conf entries are expanded and signpost's own
/// addresses left out (never forward to ourselves: `reference/peers.md` §6).
fn pool(
    upstreams: &[Upstream],
    config: &ForwardConfig,
    own: &[SocketAddr],
    list: &str,
) -> Result<Pool, ForwardError> {
    let mut targets = Vec::new();
    for upstream in upstreams {
        match upstream {
            Upstream::Addr(addr) if resolv_conf::is_own(*addr, own) => {
                tracing::warn!(upstream = %addr, list, "left out an upstream that is signpost itself");
            }
            Upstream::Addr(addr) => targets.push(Arc::new(Target::new(*addr, addr.to_string()))),
            Upstream::ResolvConf(path) => {
                let servers =
                    resolv_conf::read(path, own).map_err(|source| ForwardError::ResolvConf {
                        path: path.clone(),
                        source,
                    })?;
                targets.extend(
                    servers
                        .into_iter()
                        .map(|addr| Arc::new(Target::new(addr, addr.to_string()))),
                );
            }
        }
    }
    if targets.is_empty() {
        // Consul without recursors answers REFUSED for names outside its domain; signpost does
        // the same rather than refusing to start (a node with an empty resolv.conf still gets
        // its `.consul` answers).
        tracing::warn!(
            list,
            "no upstream resolvers: forwarded names will be REFUSED"
        );
    }
    Ok(Pool {
        targets,
        strategy: config.strategy,
    })
}

// === impl RateLimit ===

impl RateLimit {
    fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Whether an event at `now` may go through; if so, it starts a new interval.
    fn allow(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests;
