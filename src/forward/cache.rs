//! The cache of forwarded answers: positive and negative (RFC 2308) entries, SERVFAIL for a short
//! time (RFC 2308 §7.1), and expired entries kept for serve-stale (RFC 8767).
//!
//! Entries hold the upstream's wire bytes. A hit patches the ID and question case for the client
//! and counts TTLs down (RFC 1035 §3.2.1: the TTL is the time the record may still be cached).
//! Freshness is decided here against a `now` the caller passes (tests use any instant); moka's
//! own expiry only drops entries that are past even the serve-stale window.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use moka::Expiry;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::forward::packet;

/// What makes two queries the same question for the cache. The DO and CD bits change the
/// answer (RFC 4035 §3.2.1, §3.2.2); an EDNS-less client must not get an OPT record
/// (RFC 6891 §7); RD=0 asks for cached data only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    name: Name,
    qtype: RecordType,
    qclass: DNSClass,
    flags: u8,
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
    /// Past its TTL but within `cache.serve_stale`: usable only when every upstream fails.
    Stale(Entry),
    Miss,
}

/// The forwarded-answer cache.
pub(crate) struct Cache {
    entries: moka::future::Cache<CacheKey, Entry>,
    config: CacheConfig,
}

struct KeepFor;

// === impl CacheKey ===

impl CacheKey {
    /// The key of a parsed client query (`None` without a question).
    pub(crate) fn of(request: &Message) -> Option<CacheKey> {
        let query = request.queries.first()?;
        let edns = request.edns.as_ref();
        let flags = u8::from(edns.is_some_and(|e| e.flags().dnssec_ok))
            | u8::from(request.metadata.checking_disabled) << 1
            | u8::from(request.metadata.recursion_desired) << 2
            | u8::from(edns.is_some()) << 3;
        Some(CacheKey {
            name: query.name().to_lowercase(),
            qtype: query.query_type(),
            qclass: query.query_class(),
            flags,
        })
    }
}

// === impl Entry ===

impl Entry {
    /// This entry as an answer to `request` at `now`: the client's ID and question case, TTLs
    /// counted down and never past the entry's own remaining lifetime. A SERVFAIL entry is
    /// written afresh for the client. `None` if the stored bytes cannot be patched.
    pub(crate) fn answer(&self, request: &[u8], parsed: &Message, now: Instant) -> Option<Vec<u8>> {
        let elapsed = now.saturating_duration_since(self.inserted).as_secs();
        let left = self.ttl.as_secs().saturating_sub(elapsed);
        let elapsed = u32::try_from(elapsed).unwrap_or(u32::MAX);
        let left = u32::try_from(left).unwrap_or(u32::MAX);
        self.render(request, parsed, |ttl| ttl.saturating_sub(elapsed).min(left))
    }

    /// This (expired) entry as a stale answer: every TTL is `stale_ttl` (RFC 8767 §4: "a TTL
    /// of 30 seconds is RECOMMENDED").
    pub(crate) fn answer_stale(
        &self,
        request: &[u8],
        parsed: &Message,
        stale_ttl: Duration,
    ) -> Option<Vec<u8>> {
        let stale_ttl = u32::try_from(stale_ttl.as_secs()).unwrap_or(u32::MAX);
        self.render(request, parsed, |_| stale_ttl)
    }

    pub(crate) fn is_servfail(&self) -> bool {
        self.wire.is_none()
    }

    fn render(
        &self,
        request: &[u8],
        parsed: &Message,
        ttl: impl Fn(u32) -> u32,
    ) -> Option<Vec<u8>> {
        let Some(stored) = &self.wire else {
            return Some(packet::error_response(parsed, ResponseCode::ServFail));
        };
        let mut wire = stored.to_vec();
        packet::copy_id_and_question(&mut wire, request);
        packet::rewrite_ttls(&mut wire, ttl)?;
        Some(wire)
    }
}

// === impl Cache ===

impl Cache {
    /// `None` when `cache.size` is 0 (caching off).
    pub(crate) fn new(config: &CacheConfig) -> Option<Cache> {
        if config.size == 0 {
            return None;
        }
        let entries = moka::future::Cache::builder()
            .max_capacity(config.size)
            .expire_after(KeepFor)
            .build();
        Some(Cache {
            entries,
            config: config.clone(),
        })
    }

    pub(crate) async fn get(&self, key: &CacheKey, now: Instant) -> Lookup {
        let Some(entry) = self.entries.get(key).await else {
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(entry.inserted);
        if age < entry.ttl {
            Lookup::Fresh(entry)
        } else if age < entry.keep && !entry.is_servfail() {
            Lookup::Stale(entry)
        } else {
            Lookup::Miss
        }
    }

    /// Cache an upstream answer for as long as [`Cache::ttl_of`] allows.
    pub(crate) async fn insert_answer(
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
            self.entries.insert(key, entry).await;
        }
    }

    /// Remember that every upstream failed, for `cache.servfail_ttl` (RFC 2308 §7.1: "MUST NOT
    /// be cached for longer than five (5) minutes"). An entry still usable as stale is kept
    /// instead, so that serve-stale outlives the outage.
    pub(crate) async fn insert_servfail(&self, key: CacheKey, now: Instant) {
        let ttl = self.config.servfail_ttl.min(Duration::from_secs(300));
        if ttl.is_zero() {
            return;
        }
        if let Lookup::Stale(_) = self.get(&key, now).await {
            return;
        }
        let entry = Entry {
            wire: None,
            inserted: now,
            ttl,
            keep: ttl,
        };
        self.entries.insert(key, entry).await;
    }

    /// The TTL given to a stale answer (`cache.stale_ttl`).
    pub(crate) fn stale_ttl(&self) -> Duration {
        self.config.stale_ttl
    }

    /// Entries held (eventually consistent, as moka counts).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
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
