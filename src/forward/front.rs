//! A small per-thread front of the forward cache, so that a hit allocates nothing.
//!
//! Why it exists: `moka::sync::Cache::get` is lock-free, but every ~64 reads it runs the
//! cache's maintenance on the reading thread, and that ends with `crossbeam_epoch`'s
//! `Guard::flush`, which pushes a garbage bag onto a global queue: one heap allocation per
//! maintenance pass, forever (found by `tests/alloc.rs`). The request path must not allocate
//! (DESIGN.md, Performance design), so each thread keeps the fresh entries it served last in
//! [`SLOTS`] direct-mapped slots and answers repeated names from there; moka is asked on a
//! slot miss, or once the slot's copy is no longer fresh.
//!
//! Sound because an [`Entry`] is immutable and carries its own insert time and TTL: a copy is
//! a correct answer for exactly as long as the original (the TTLs are counted down from the
//! same instant). Slots are tagged with the cache they came from, so two forwarders in one
//! process (tests) never share answers. The price, accepted: hits served here do not reach
//! moka's recency and frequency counts, so under size pressure moka may evict a name this
//! front keeps serving; that costs at most one upstream query per name per TTL.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};

use tokio::time::Instant;

use crate::forward::cache::{Cache, Entry, KEY_MAX, KeyBuf, Lookup};

/// Slots per thread (a power of two). Each holds a key (up to 280 bytes) and an `Entry`.
const SLOTS: usize = 64;

struct Slot {
    cache: u64,
    len: usize,
    key: [u8; KEY_MAX],
    entry: Option<Entry>,
}

thread_local! {
    /// Allocated on the thread's first lookup (warm-up), reused ever after.
    static FRONT: RefCell<Option<Box<[Slot]>>> = const { RefCell::new(None) };
}

/// A fresh entry for `key` at `now`: from this thread's front, else from `cache` (then kept in
/// the front). Stale and missing entries are the caller's business, as with [`Cache::get`].
pub(crate) fn get(cache: &Cache, key: &KeyBuf, now: Instant) -> Lookup {
    let bytes = key.as_bytes();
    let mut hasher = foldhash::fast::FixedState::with_seed(0x5167_6e70).build_hasher();
    hasher.write(bytes);
    let at = (hasher.finish() as usize) & (SLOTS - 1);
    let hit = FRONT.with(|front| {
        let front = front.borrow();
        let slot = front.as_ref()?.get(at)?;
        let entry = slot.entry.as_ref()?;
        (slot.cache == cache.id() && &slot.key[..slot.len] == bytes && entry.is_fresh(now))
            .then(|| entry.clone())
    });
    if let Some(entry) = hit {
        return Lookup::Fresh(entry);
    }
    let found = cache.get(bytes, now);
    if let Lookup::Fresh(entry) = &found {
        FRONT.with(|front| {
            let mut front = front.borrow_mut();
            let slots = front.get_or_insert_with(|| {
                (0..SLOTS)
                    .map(|_| Slot {
                        cache: 0,
                        len: 0,
                        key: [0; KEY_MAX],
                        entry: None,
                    })
                    .collect()
            });
            if let Some(slot) = slots.get_mut(at) {
                slot.cache = cache.id();
                slot.len = bytes.len();
                slot.key[..bytes.len()].copy_from_slice(bytes);
                slot.entry = Some(entry.clone());
            }
        });
    }
    found
}
