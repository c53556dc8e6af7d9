//! Other datacenters: `web.service.dc2.consul` answered from a watch on `dc2` started on first
//! use (DESIGN.md, rule 1's second exception).
//!
//! # Why on first use, and why bounded
//!
//! Watching every datacenter the agent knows from the start would hold two long polls per
//! datacenter for names nobody may ask, and the connection budget (`consul.max_connections`)
//! is shared with the local feed. So a datacenter is watched only once asked for, with the
//! local feed's own code and [`Client`](super::client::Client) (`?dc=<dc>` on every request,
//! the same permits): at most [`RemoteSource::max_watches`] of them, so that the local feed
//! always keeps its three long polls and a permit for fetches. Beyond that a datacenter is
//! SERVFAIL, with one warning.
//!
//! # The request path
//!
//! - [`Remotes::answer`] is the hot path: a datacenter whose first table is in is answered
//!   from it exactly like a local name (lock-free loads, no allocation, no await); a
//!   datacenter the agent's list (read less than [`REREAD`] ago) does not name is NXDOMAIN
//!   with the SOA at once. Anything else goes the async way.
//! - [`Remotes::resolve`] is that way: read `/v1/catalog/datacenters` when it was never read
//!   (or is older than [`REREAD`] and names not the datacenter asked), start the watch once
//!   (any number of simultaneous first queries share it) and wait at most [`FIRST_WAIT`] for
//!   its first table. The list is read only on demand: an idle signpost sends no request for it.
//!
//! Prepared queries stay local: a `.query.dc2` name never reaches this module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::answer::{AnswerTable, Outcome};
use super::watch::RemoteSource;
use crate::config::DnsConfig;
use crate::wire::{Proto, Query};

/// How long the first query for a datacenter waits (for the list and its first catalog)
/// before SERVFAIL.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);
/// After a failed read of the list, queries are SERVFAIL for this long without reading again:
/// an agent that is down is not asked once per query.
const READ_FAILED_HOLD: Duration = Duration::from_secs(1);
/// A datacenter the last read of the list did not name is NXDOMAIN until the list is this old;
/// then the next query for an unknown name reads it again.
pub const REREAD: Duration = Duration::from_secs(60);

/// The other datacenters' watches and tables. One per process, shared by every listener.
pub struct Remotes {
    /// `None` for a `file:` catalog: no agent, so every other datacenter is unknown.
    source: Option<RemoteSource>,
    domains: Vec<String>,
    dns: watch::Receiver<Arc<DnsConfig>>,
    /// The runtime the watches run on (the main one: a query's own runtime may be a UDP
    /// worker's, which should not own them).
    runtime: tokio::runtime::Handle,
    /// Datacenters whose first table is in: what the hot path reads.
    ready: Arc<ArcSwap<Vec<Ready>>>,
    /// The agent's datacenters as last read.
    known: ArcSwapOption<Known>,
    /// Held while the list is read, so simultaneous queries share one read; holds when the
    /// last read failed.
    reading: tokio::sync::Mutex<Option<Instant>>,
    /// Watches started, by datacenter: whether its first table is in.
    watches: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// The feeds and table builders, stopped by [`Remotes::stop`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
    over_budget_logged: AtomicBool,
}

/// One datacenter's table, once built.
#[derive(Clone)]
struct Ready {
    dc: Arc<[u8]>,
    table: Arc<ArcSwap<AnswerTable>>,
}

/// The agent's datacenter list and when it was read.
#[derive(Debug)]
struct Known {
    dcs: Vec<Box<[u8]>>,
    at: Instant,
}

/// What [`Remotes::resolve`] found.
pub enum Remote {
    /// The datacenter's table, built at least once.
    Table(Arc<ArcSwap<AnswerTable>>),
    /// The agent does not know this datacenter: NXDOMAIN with the SOA.
    Unknown,
    /// Known, but not answerable now (the list or the first catalog could not be read in
    /// time, or no budget is left for another watch): SERVFAIL.
    Unavailable,
}

// === impl Remotes ===

impl Remotes {
    /// Remote datacenters for the agent `source` (`None`: none), answering under `domains`
    /// with the DNS knobs `dns` follows. Must be called on the runtime the watches run on.
    pub fn new(
        source: Option<RemoteSource>,
        domains: Vec<String>,
        dns: watch::Receiver<Arc<DnsConfig>>,
    ) -> Remotes {
        Remotes {
            source,
            domains,
            dns,
            runtime: tokio::runtime::Handle::current(),
            ready: Arc::new(ArcSwap::from_pointee(Vec::new())),
            known: ArcSwapOption::empty(),
            reading: tokio::sync::Mutex::new(None),
            watches: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            over_budget_logged: AtomicBool::new(false),
        }
    }

    /// The hot path for a service or node name in datacenter `dc` (lowercase): answered from
    /// its table when built, NXDOMAIN (from `local`) when the agent's list does not name it,
    /// `None` when only [`Remotes::resolve`] can tell. No lock, no allocation, no await.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &self,
        local: &AnswerTable,
        dc: &[u8],
        query: &Query<'_>,
        rel: &[u8],
        domain: usize,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Option<Outcome> {
        if let Some(ready) = self.ready.load().iter().find(|r| &*r.dc == dc) {
            return Some(ready.table.load().answer(query, rel, domain, proto, out));
        }
        if self.source.is_none() {
            return Some(local.nxdomain(query, domain, out));
        }
        let known = self.known.load();
        let unknown = known
            .as_ref()
            .is_some_and(|k| !k.contains(dc) && k.at.elapsed() < REREAD);
        unknown.then(|| local.nxdomain(query, domain, out))
    }

    /// The async path for datacenter `dc`: learn whether the agent knows it, start its watch
    /// if not started, wait for its first table; all within [`FIRST_WAIT`].
    pub async fn resolve(self: &Arc<Self>, dc: &[u8]) -> Remote {
        if let Some(table) = self.ready_table(dc) {
            return Remote::Table(table);
        }
        let dc = String::from_utf8_lossy(dc).into_owned();
        // On the main runtime: the list read and the watch use the shared connection pool
        // and must outlive the query's own runtime.
        let this = Arc::clone(self);
        let resolving = self
            .runtime
            .spawn(async move { tokio::time::timeout(FIRST_WAIT, this.resolve_here(dc)).await });
        match resolving.await {
            Ok(Ok(remote)) => remote,
            Ok(Err(_)) => {
                tracing::debug!("another datacenter not answerable in time");
                Remote::Unavailable
            }
            Err(_) => Remote::Unavailable,
        }
    }

    /// Serve `dc` (lowercase) from `table` as if its watch had built it: for tests and
    /// benchmarks of the request path.
    pub fn serve_table(&self, dc: &str, table: Arc<ArcSwap<AnswerTable>>) {
        let entry = Ready {
            dc: Arc::from(dc.as_bytes()),
            table,
        };
        push(&self.ready, entry);
    }

    /// Stop every watch (shutdown).
    pub fn stop(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    async fn resolve_here(&self, dc: String) -> Remote {
        let Some(source) = &self.source else {
            return Remote::Unknown;
        };
        match self.knows(source, dc.as_bytes()).await {
            Some(true) => {}
            Some(false) => return Remote::Unknown,
            None => return Remote::Unavailable,
        }
        let Some(mut built) = self.watch(source, &dc) else {
            return Remote::Unavailable;
        };
        // Bounded by the caller's timeout; an error means the watch is gone (shutdown).
        match built.wait_for(|b| *b).await {
            Ok(_) => self
                .ready_table(dc.as_bytes())
                .map_or(Remote::Unavailable, Remote::Table),
            Err(_) => Remote::Unavailable,
        }
    }

    fn ready_table(&self, dc: &[u8]) -> Option<Arc<ArcSwap<AnswerTable>>> {
        let ready = self.ready.load();
        let found = ready.iter().find(|r| &*r.dc == dc)?;
        Some(Arc::clone(&found.table))
    }

    /// Whether the agent knows `dc`, reading its list when never read, or when the list does
    /// not name `dc` and is older than [`REREAD`]. `None`: the list could not be read.
    async fn knows(&self, source: &RemoteSource, dc: &[u8]) -> Option<bool> {
        if let Some(known) = self.known.load_full()
            && (known.contains(dc) || known.at.elapsed() < REREAD)
        {
            return Some(known.contains(dc));
        }
        let mut failed_at = self.reading.lock().await;
        // Someone else may have read it while this query waited for the lock.
        if let Some(known) = self.known.load_full()
            && (known.contains(dc) || known.at.elapsed() < REREAD)
        {
            return Some(known.contains(dc));
        }
        if failed_at.is_some_and(|at| at.elapsed() < READ_FAILED_HOLD) {
            return None;
        }
        match source.datacenters().await {
            Ok(names) => {
                tracing::debug!(?names, "datacenters read");
                let known = Known::new(names);
                let found = known.contains(dc);
                self.known.store(Some(Arc::new(known)));
                *failed_at = None;
                Some(found)
            }
            Err(e) => {
                if failed_at.is_none() {
                    tracing::warn!(error = %e, "cannot read the agent's datacenters");
                }
                *failed_at = Some(Instant::now());
                None
            }
        }
    }

    /// The "first table built" signal of `dc`'s watch, starting the watch if this is the
    /// first query for it. `None` when the budget has no room for another watch.
    fn watch(&self, source: &RemoteSource, dc: &str) -> Option<watch::Receiver<bool>> {
        let mut watches = lock(&self.watches);
        if let Some(built) = watches.get(dc) {
            return Some(built.clone());
        }
        let max = source.max_watches();
        if watches.len() >= max {
            if !self.over_budget_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    dc,
                    max,
                    "no room in consul.max_connections for another datacenter's watch; \
                     its names are SERVFAIL (each watch needs 3 more connections)"
                );
            }
            return None;
        }
        tracing::info!(dc, "watching another datacenter");
        let built = self.start(source, dc);
        watches.insert(dc.to_string(), built.clone());
        Some(built)
    }

    /// Start `dc`'s feed and its table builder; the table joins the hot path's list when first
    /// built.
    fn start(&self, source: &RemoteSource, dc: &str) -> watch::Receiver<bool> {
        let (catalogs, feed) = source.spawn(dc);
        let empty = AnswerTable::empty(&self.domains, &self.dns.borrow());
        let entry = Ready {
            dc: Arc::from(dc.as_bytes()),
            table: Arc::new(ArcSwap::from_pointee(empty)),
        };
        let (built_tx, built_rx) = watch::channel(false);
        let ready = Arc::clone(&self.ready);
        let table = Arc::clone(&entry.table);
        let on_built = move || {
            if !*built_tx.borrow() {
                push(&ready, entry.clone());
                built_tx.send_replace(true);
            }
        };
        let follow = self.runtime.spawn(crate::app::follow_catalog(
            catalogs,
            self.dns.clone(),
            self.domains.clone(),
            table,
            on_built,
        ));
        lock(&self.tasks).extend([feed, follow]);
        built_rx
    }
}

/// Add a built table to the hot path's list (copied: readers never wait).
fn push(ready: &ArcSwap<Vec<Ready>>, entry: Ready) {
    ready.rcu(|list| {
        let mut list = Vec::clone(list);
        list.push(entry.clone());
        list
    });
}

impl Drop for Remotes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Known ===

impl Known {
    fn new(names: Vec<String>) -> Known {
        Known {
            dcs: names
                .into_iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect(),
            at: Instant::now(),
        }
    }

    fn contains(&self, dc: &[u8]) -> bool {
        self.dcs.iter().any(|d| **d == *dc)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn known_matches_lowercase() {
        let known = Known::new(vec!["DC1".into(), "dc2".into()]);
        assert!(known.contains(b"dc1"));
        assert!(known.contains(b"dc2"));
        assert!(!known.contains(b"dc3"));
    }

    /// Without an agent (a `file:` catalog) another datacenter is NXDOMAIN at once, and the
    /// async path says so too.
    #[tokio::test]
    async fn file_catalog_knows_no_other_datacenter() {
        let dns = crate::consul::answer::tests::dns_config();
        let domains = vec!["consul".to_string()];
        let (_tx, rx) = watch::channel(Arc::new(dns.clone()));
        let remotes = Arc::new(Remotes::new(None, domains.clone(), rx));
        let local = AnswerTable::empty(&domains, &dns);
        let mut message = hickory_proto::op::Message::query();
        let name = hickory_proto::rr::Name::from_ascii("web.service.dc2.consul.").unwrap();
        message.add_query(hickory_proto::op::Query::query(
            name,
            hickory_proto::rr::RecordType::A,
        ));
        let packet = message.to_vec().unwrap();
        let query = Query::parse(&packet).unwrap();
        let mut out = Vec::new();
        let outcome = remotes.answer(
            &local,
            b"dc2",
            &query,
            b"web.service.dc2",
            0,
            Proto::Udp,
            &mut out,
        );
        assert_eq!(outcome.map(|o| o.rcode), Some(crate::wire::rcode::NXDOMAIN));
        assert!(matches!(remotes.resolve(b"dc2").await, Remote::Unknown));
    }
}
