//! glibc malloc tuning. A sidecar on every node should hold the memory its data needs, not what
//! glibc keeps after rebuilds: by default glibc gives each thread that allocates its own arena
//! (up to 8 per core) and keeps freed pages in them. Every catalog change re-encodes answers on
//! the blocking pool and drops the previous ones, so freed memory piles up in arenas that are
//! rarely reused (`benches/feed.rs`: 157 MiB after ready at 50,000 instances by default).
//! Two arenas and a trim after rebuilds keep RSS close to the live data. The same as setting
//! `MALLOC_ARENA_MAX=2` in the environment, but always in effect.

// The only unsafe here: two plain libc calls that take integers and touch no Rust memory.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Most trims per second: `malloc_trim` walks the heap.
const TRIM_INTERVAL_MS: u64 = 1_000;

static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);

/// Limit glibc to two malloc arenas. Call before starting threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes allocator parameters; M_ARENA_MAX
    // is a documented parameter and 2 a valid value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Give freed heap memory back to the kernel, at most once per second.
pub fn trim() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < TRIM_INTERVAL_MS
        || LAST_TRIM_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer (the padding to keep) and only releases free pages
    // of the allocator's own heaps; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
