//! The forwarder: every name that is not signpost's own goes to upstream resolvers.
//!
//! A query goes cache → coalesce → upstreams. The upstream list is chosen by the longest
//! `[[forward.domain]]` suffix (conditional forwarding, like dnsmasq `server=/name/ip`), else the
//! default `forward.upstreams`. Upstreams are tried one after another as Consul's recursors are
//! (`reference/consul-dns.md` §5.1): NOERROR, NXDOMAIN and any answer with TC are relayed as the
//! upstream sent them; SERVFAIL, REFUSED, FORMERR, NOTIMP, a timeout or an I/O error moves on; when
//! none answers, the client gets SERVFAIL with RA=1 and its EDNS echoed.
//!
//! hickory's `ForwardZoneHandler` and `NameServerPool` turn every rcode but NOERROR and NXDOMAIN
//! into an error and drop the upstream's bytes (`reference/hickory.md` §3.2), so the upstream
//! path here is our own (§3.3 of the same).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::Name;
use metrics::{Counter, Gauge};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{CacheConfig, ForwardConfig, Upstream};
use crate::metrics::{
    CACHE_ENTRIES, CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, FORWARD_ALL_UPSTREAMS_FAILED_TOTAL,
    FORWARD_REFUSED_TOTAL, SERVED_STALE_TOTAL,
};
use crate::wire::Proto;

mod cache;
mod flight;
mod packet;
mod resolv_conf;
mod upstream;

use cache::{Cache, CacheKey, Lookup};
use flight::Flights;
use upstream::{Pool, Target};

/// Forwards queries to upstream resolvers. `Send + Sync`; share it as `Arc<Forwarder>`.
pub struct Forwarder {
    default: Pool,
    /// `[[forward.domain]]` entries, most labels first, so the first match is the longest suffix.
    domains: Vec<(Name, Pool)>,
    timeout: Duration,
    in_flight: Semaphore,
    cache: Option<Cache>,
    flights: Flights<FlightKey, Arc<Round>>,
    failure_log: RateLimit,
    /// Built on first use, so a metrics recorder installed after `new()` still sees them.
    handles: OnceLock<Handles>,
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
    last: std::sync::Mutex<Option<Instant>>,
}

/// A parsed client request.
struct Request<'a> {
    wire: &'a [u8],
    message: Message,
    question: Query,
    key: CacheKey,
}

/// How often the "all upstream resolvers failed" warning may be logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
        Ok(Forwarder {
            default,
            domains,
            timeout: config.timeout,
            in_flight: Semaphore::new(permits),
            cache: Cache::new(cache),
            flights: Flights::new(),
            failure_log: RateLimit::new(FAILURE_LOG_INTERVAL),
            handles: OnceLock::new(),
        })
    }

    /// Answer the client's request (the whole message as received; the caller has already checked
    /// it parses, is a query, and has one question). Returns the response wire bytes carrying the
    /// client's ID and question. Never fails: no usable upstream answer → SERVFAIL (RA=1, EDNS
    /// echoed if the client sent it).
    pub async fn resolve(&self, request: &[u8], proto: Proto) -> Vec<u8> {
        let Some(parsed) = Request::parse(request) else {
            return packet::minimal_response(request, ResponseCode::FormErr);
        };
        let answer = self.answer(&parsed, proto).await;
        if proto == Proto::Udp && answer.len() > packet::udp_limit(&parsed.message) {
            return packet::truncate(&answer);
        }
        answer
    }

    async fn answer(&self, request: &Request<'_>, proto: Proto) -> Vec<u8> {
        let handles = self.handles();
        let now = Instant::now();
        let mut stale = None;
        if let Some(cache) = &self.cache {
            match cache.get(&request.key, now).await {
                Lookup::Fresh(entry) => {
                    if let Some(answer) = entry.answer(request.wire, &request.message, now) {
                        handles.hits.increment(1);
                        return answer;
                    }
                }
                Lookup::Stale(entry) => stale = Some(entry),
                Lookup::Miss => {}
            }
            handles.misses.increment(1);
        }
        if self.pool_for(request.question.name()).targets.is_empty() {
            return packet::error_response(&request.message, ResponseCode::Refused);
        }
        // DESIGN.md rule 4: a bound on forwarded queries in flight. Beyond it the client is
        // refused at once rather than queued (CoreDNS `max_concurrent`); REFUSED is never cached.
        let Ok(_permit) = self.in_flight.try_acquire() else {
            handles.refused.increment(1);
            return packet::error_response(&request.message, ResponseCode::Refused);
        };
        let key = (request.key.clone(), proto);
        let round = self.flights.run(key, || self.round(request, proto)).await;
        match &*round {
            Round::Answer(wire) => {
                let mut answer = wire.to_vec();
                packet::copy_id_and_question(&mut answer, request.wire);
                answer
            }
            Round::AllFailed => self.failed(request, stale.as_ref()),
        }
    }

    /// When every upstream failed: a stale answer if there is one (RFC 8767 §4), else SERVFAIL.
    fn failed(&self, request: &Request<'_>, stale: Option<&cache::Entry>) -> Vec<u8> {
        let stale_ttl = self
            .cache
            .as_ref()
            .map(|c| c.stale_ttl())
            .unwrap_or_default();
        if let Some(answer) =
            stale.and_then(|e| e.answer_stale(request.wire, &request.message, stale_ttl))
        {
            self.handles().stale.increment(1);
            return answer;
        }
        packet::error_response(&request.message, ResponseCode::ServFail)
    }

    /// One upstream round for a cache miss, run once per coalesced group: ask the upstreams in
    /// order, cache the outcome, count a total failure once.
    async fn round(&self, request: &Request<'_>, proto: Proto) -> Arc<Round> {
        let pool = self.pool_for(request.question.name());
        for index in pool.order() {
            let target = &pool.targets[index];
            let (outcome, result) = target
                .ask(request.wire, &request.question, proto, self.timeout)
                .await;
            match result {
                Ok(reply) if outcome.is_usable() => {
                    let wire: Arc<[u8]> = reply.wire.into();
                    if let Some(cache) = &self.cache {
                        cache
                            .insert_answer(
                                request.key.clone(),
                                &reply.message,
                                wire.clone(),
                                Instant::now(),
                            )
                            .await;
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
        if let Some(cache) = &self.cache {
            cache
                .insert_servfail(request.key.clone(), Instant::now())
                .await;
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
            Upstream::Addr(addr) => targets.push(Target::new(*addr, addr.to_string())),
            Upstream::ResolvConf(path) => {
                let servers =
                    resolv_conf::read(path, own).map_err(|source| ForwardError::ResolvConf {
                        path: path.clone(),
                        source,
                    })?;
                targets.extend(
                    servers
                        .into_iter()
                        .map(|addr| Target::new(addr, addr.to_string())),
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

// === impl Request ===

impl<'a> Request<'a> {
    fn parse(wire: &'a [u8]) -> Option<Request<'a>> {
        let message = Message::from_vec(wire).ok()?;
        let question = message.queries.first()?.clone();
        let key = CacheKey::of(&message)?;
        Some(Request {
            wire,
            message,
            question,
            key,
        })
    }
}

// === impl RateLimit ===

impl RateLimit {
    fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Whether an event at `now` may go through; if so, it starts a new interval.
    fn allow(&self, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
