//! The cache of forwarded answers: positive and negative (RFC 2308) entries, SERVFAIL for a short
//! time (RFC 2308 §7.1), and expired entries kept for serve-stale (RFC 8767).
//!
//! Entries hold the upstream's wire bytes. A hit copies them into the caller's buffer, patches
//! the ID and question case for the client and counts TTLs down (RFC 1035 §3.2.1: the TTL is the
//! time the record may still be cached). Freshness is decided here against a `now` the caller
//! passes (tests use any instant); moka's own expiry only drops entries that are past even the
//! serve-stale window.
//!
//! The store is a `moka::sync::Cache`: bounded by `cache.size` entries (TinyLFU admission, LRU
//! eviction), lookups are synchronous so the UDP loop answers a hit in place without a task,
//! and a lookup key is built on the stack from the raw question bytes ([`KeyBuf`]): a hit
//! parses nothing with hickory and allocates nothing beyond the response buffer it fills.
//! Entries pushed out by the size bound are counted in `signpost_cache_evictions_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use moka::Expiry;
use moka::notification::RemovalCause;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::forward::packet;
use crate::metrics::CACHE_EVICTIONS_TOTAL;
use crate::wire::{self, rcode};

/// The longest ECS option body that still gets a cache entry: family (2), prefix lengths (2)
/// and a full IPv6 address (16), RFC 7871 §6. Anything longer is not cached.
const MAX_ECS_IN_KEY: usize = 20;
/// Longest key: a name (255), type and class (4), flags (1), ECS.
pub(crate) const KEY_MAX: usize = 255 + 4 + 1 + MAX_ECS_IN_KEY;

/// What makes two queries the same question for the cache, as bytes: the lowercased wire name
/// (length octets are below 64 and unaffected by lowercasing), QTYPE, QCLASS, a flag byte, and
/// the client's ECS option body if any.
///
/// The flags are the DO and CD bits, which change the answer (RFC 4035 §3.2.1, §3.2.2), RD
/// (RD=0 asks for cached data only) and whether the client sent EDNS (an EDNS-less client must
/// not get an OPT record, RFC 6891 §7). ECS (RFC 7871) is keyed on the client's exact option
/// (family, source prefix, address): answers tailored to one subnet never reach another, at the
/// price of one entry per subnet. RFC 7871 §7.3.1 allows finer sharing by scope; signpost's
/// clients are local processes that rarely send ECS, so exactness wins over hit rate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey(Box<[u8]>);

/// A key built on the stack for a lookup (no allocation on the hit path).
pub(crate) struct KeyBuf {
    bytes: [u8; KEY_MAX],
    len: usize,
}

/// A cached answer.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// Upstream wire bytes; `None` for a cached SERVFAIL.
    wire: Option<Arc<[u8]>>,
    inserted: Instant,
    /// How long the entry is fresh.
    ttl: Duration,
    /// How long moka keeps it (ttl + the serve-stale window).
    keep: Duration,
}

/// The result of a lookup at `now`.
#[derive(Debug)]
pub(crate) enum Lookup {
    Fresh(Entry),
    /// Past its TTL but within `cache.serve_stale`: usable only when every upstream fails or
    /// is slower than `cache.stale_answer_timeout`.
    Stale(Entry),
    Miss,
}

/// The forwarded-answer cache.
pub(crate) struct Cache {
    /// Unique per cache in the process: tags this cache's entries in the per-thread front
    /// (`front.rs`, issue 8).
    id: u64,
    entries: moka::sync::Cache<CacheKey, Entry>,
    config: CacheConfig,
    /// Also counted in the metric; kept here so tests can read it without a recorder.
    #[cfg_attr(not(test), allow(dead_code))]
    evictions: Arc<AtomicU64>,
}

struct KeepFor;

// === impl KeyBuf ===

impl KeyBuf {
    /// The key of `query`; `None` if it cannot be cached (an oversized ECS option).
    pub(crate) fn of(query: &wire::Query<'_>) -> Option<KeyBuf> {
        let mut key = KeyBuf {
            bytes: [0; KEY_MAX],
            len: 0,
        };
        let name = query.qname;
        let ecs = query.edns.and_then(|e| e.ecs).unwrap_or_default();
        if name.len() > 255 || ecs.len() > MAX_ECS_IN_KEY {
            return None;
        }
        let dnssec_ok = query.edns.is_some_and(|e| e.dnssec_ok);
        let flags = u8::from(dnssec_ok)
            | u8::from(query.flags & 0x0010 != 0) << 1 // CD
            | u8::from(query.recursion_desired()) << 2
            | u8::from(query.edns.is_some()) << 3;
        let mut push = |bytes: &[u8]| {
            key.bytes[key.len..key.len + bytes.len()].copy_from_slice(bytes);
            key.len += bytes.len();
        };
        push(name);
        push(&query.qtype.to_be_bytes());
        push(&query.qclass.to_be_bytes());
        push(&[flags]);
        push(ecs);
        key.bytes[..name.len()].make_ascii_lowercase();
        Some(key)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub(crate) fn to_key(&self) -> CacheKey {
        CacheKey(self.as_bytes().into())
    }
}

impl std::borrow::Borrow<[u8]> for CacheKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

// === impl Entry ===

impl Entry {
    /// This entry as an answer to `query` at `now`, written into `out`: the client's ID and
    /// question case, TTLs counted down and never past the entry's own remaining lifetime. A
    /// SERVFAIL entry is written afresh for the client. `false` if the stored bytes cannot be
    /// patched (`out` is then garbage).
    pub(crate) fn answer(&self, query: &wire::Query<'_>, now: Instant, out: &mut Vec<u8>) -> bool {
        let elapsed = now.saturating_duration_since(self.inserted).as_secs();
        let left = self.ttl.as_secs().saturating_sub(elapsed);
        let elapsed = u32::try_from(elapsed).unwrap_or(u32::MAX);
        let left = u32::try_from(left).unwrap_or(u32::MAX);
        self.render(query, out, |ttl| ttl.saturating_sub(elapsed).min(left))
    }

    /// This (expired) entry as a stale answer: every TTL is `stale_ttl` (RFC 8767 §4: "a TTL
    /// of 30 seconds is RECOMMENDED").
    pub(crate) fn answer_stale(
        &self,
        query: &wire::Query<'_>,
        stale_ttl: Duration,
        out: &mut Vec<u8>,
    ) -> bool {
        let stale_ttl = u32::try_from(stale_ttl.as_secs()).unwrap_or(u32::MAX);
        self.render(query, out, |_| stale_ttl)
    }

    /// Whether the entry is still within its TTL at `now` (what [`Cache::get`] calls fresh).
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.inserted) < self.ttl
    }

    pub(crate) fn is_servfail(&self) -> bool {
        self.wire.is_none()
    }

    fn render(&self, query: &wire::Query<'_>, out: &mut Vec<u8>, ttl: impl Fn(u32) -> u32) -> bool {
        let Some(stored) = &self.wire else {
            wire::error_response(out, query, rcode::SERVFAIL);
            return true;
        };
        out.clear();
        out.extend_from_slice(stored);
        packet::copy_id_and_question(out, query.packet);
        packet::rewrite_ttls(out, ttl).is_some()
    }
}

// === impl Cache ===

impl Cache {
    /// `None` when `cache.size` is 0 (caching off).
    pub(crate) fn new(config: &CacheConfig) -> Option<Cache> {
        if config.size == 0 {
            return None;
        }
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&evictions);
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.size)
            .expire_after(KeepFor)
            .eviction_listener(move |_key, _entry, cause| {
                // Only the size bound evicts; expiry and replacement are the entry's own life.
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(CACHE_EVICTIONS_TOTAL).increment(1);
                }
            })
            .build();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Some(Cache {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entries,
            config: config.clone(),
            evictions,
        })
    }

    /// This cache's process-unique ID.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn get(&self, key: &[u8], now: Instant) -> Lookup {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(entry.inserted);
        if entry.is_fresh(now) {
            Lookup::Fresh(entry)
        } else if age < entry.keep && !entry.is_servfail() {
            Lookup::Stale(entry)
        } else {
            Lookup::Miss
        }
    }

    /// Cache an upstream answer for as long as [`Cache::ttl_of`] allows.
    pub(crate) fn insert_answer(
        &self,
        key: CacheKey,
        message: &Message,
        wire: Arc<[u8]>,
        now: Instant,
    ) {
        if let Some(ttl) = self.ttl_of(message) {
            let keep = ttl + self.config.serve_stale;
            let entry = Entry {
                wire: Some(wire),
                inserted: now,
                ttl,
                keep,
            };
            self.entries.insert(key, entry);
        }
    }

    /// Remember that every upstream failed, for `cache.servfail_ttl` (RFC 2308 §7.1: "MUST NOT
    /// be cached for longer than five (5) minutes"). An entry still usable as stale is kept
    /// instead, so that serve-stale outlives the outage.
    pub(crate) fn insert_servfail(&self, key: CacheKey, now: Instant) {
        let ttl = self.config.servfail_ttl.min(Duration::from_secs(300));
        if ttl.is_zero() {
            return;
        }
        if let Lookup::Stale(_) = self.get(&key.0, now) {
            return;
        }
        let entry = Entry {
            wire: None,
            inserted: now,
            ttl,
            keep: ttl,
        };
        self.entries.insert(key, entry);
    }

    /// The TTL given to a stale answer (`cache.stale_ttl`).
    pub(crate) fn stale_ttl(&self) -> Duration {
        self.config.stale_ttl
    }

    /// How long a client waits for the upstream before a stale entry is served instead
    /// (`cache.stale_answer_timeout`, RFC 8767 §5 "client response timer"); zero = never early.
    pub(crate) fn stale_answer_timeout(&self) -> Duration {
        self.config.stale_answer_timeout
    }

    /// Entries held, after moka has applied pending inserts and evictions, so the gauge never
    /// shows more than `cache.size`. Called on the miss path only (after an insert).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Entries pushed out by the size bound since start.
    #[cfg(test)]
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// How long `message` may be cached, `None` for not at all:
    /// - an answer with TC is partial and never cached;
    /// - NOERROR with answers: the lowest answer TTL, clamped to `cache.min_ttl..=cache.max_ttl`;
    /// - NXDOMAIN, or NOERROR without answers (NODATA): RFC 2308 §5, "the TTL of this record is
    ///   set from the minimum of the MINIMUM field of the SOA record and the TTL of the SOA
    ///   itself", at most `cache.negative_max_ttl`; without an SOA, "SHOULD NOT be cached";
    /// - any other rcode is not cached here.
    pub(crate) fn ttl_of(&self, message: &Message) -> Option<Duration> {
        if message.metadata.truncation {
            return None;
        }
        let rcode = message.metadata.response_code;
        let seconds = match rcode {
            ResponseCode::NoError if !message.answers.is_empty() => {
                let lowest = message.answers.iter().map(|r| r.ttl).min()?;
                let lowest = Duration::from_secs(u64::from(lowest));
                lowest.clamp(
                    self.config.min_ttl,
                    self.config.max_ttl.max(self.config.min_ttl),
                )
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let soa = message.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })?;
                Duration::from_secs(u64::from(soa)).min(self.config.negative_max_ttl)
            }
            _ => return None,
        };
        (!seconds.is_zero()).then_some(seconds)
    }
}

// === impl KeepFor ===

impl Expiry<CacheKey, Entry> for KeepFor {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.keep)
    }

    // A replaced entry starts its own lifetime (moka's default would keep the old deadline).
    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep)
    }
}

#[cfg(test)]
mod tests;
