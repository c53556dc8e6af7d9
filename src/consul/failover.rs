//! Prepared-query failover through the agent: `<q>.query.consul` whose local answer is empty
//! and whose definition has failover targets is asked of `GET /v1/query/<id>/execute`
//! (DESIGN.md, rule 1's first exception; `reference/consul-dns.md` §6).
//!
//! # Why through the agent
//!
//! The servers know the other datacenters (and their RTTs for `NearestN`); signpost only knows
//! the local catalog. So the local try stays local, as for every prepared query, and only an
//! empty one with somewhere else to go costs a request: the server tries the local datacenter
//! again, then the failover ones, and says which datacenter answered.
//!
//! # Why coalesced, bounded and cached
//!
//! A service that is down everywhere locally is exactly when clients retry hardest. So one
//! request per query is in flight at a time (every simultaneous query waits for it), it is
//! given up after [`EXECUTE_WAIT`] (SERVFAIL), and its result is kept per query for the
//! answer's TTL ([`fresh_for`]): an answer for `DNS.TTL` (else [`DEFAULT_FRESH`]), an empty
//! result for [`EMPTY_HOLD`], a failure for [`FAILED_HOLD`], so that a failing agent is not
//! asked once per query either.
//!
//! Cached results are answered on the async path (`Dispatcher::forward`), never on the hot
//! path: they are re-encoded per query, which is cheap next to the request they save.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::catalog::{HealthEntry, QueryDns, null_default};
use super::client::{Blocking, Client, encode_segment};
use super::query::parse_go_duration;

/// How long one `/execute` may take before its queries are SERVFAIL.
pub const EXECUTE_WAIT: Duration = Duration::from_secs(2);
/// How long an answer is kept when the query sets no `DNS.TTL`.
pub const DEFAULT_FRESH: Duration = Duration::from_secs(5);
/// How long an empty result (NXDOMAIN) is kept.
pub const EMPTY_HOLD: Duration = Duration::from_secs(2);
/// How long a failure (SERVFAIL) is kept: an agent that fails is not asked once per query.
pub const FAILED_HOLD: Duration = Duration::from_secs(1);
/// The shortest and longest an answer is kept, whatever its TTL: a `0s` TTL still coalesces
/// a burst, and a long one does not pin another datacenter's instances for long.
const MIN_FRESH: Duration = Duration::from_secs(1);
const MAX_FRESH: Duration = Duration::from_secs(60);
/// Most queries cached; past it, expired entries go, then everything.
const MAX_CACHED: usize = 1024;

/// What `/execute` said for one query.
#[derive(Clone, Debug)]
pub enum Failover {
    /// The instances of the datacenter that answered.
    Answer(Arc<Executed>),
    /// No datacenter had an instance: NXDOMAIN.
    Empty,
    /// The request failed or timed out: SERVFAIL.
    Unavailable,
}

/// A non-empty `/execute` answer.
#[derive(Debug)]
pub struct Executed {
    /// The datacenter that answered (lowercase): SRV targets and node names are in it.
    pub datacenter: String,
    pub nodes: Vec<HealthEntry>,
    /// `DNS.TTL` in seconds, when set.
    pub ttl: Option<u32>,
}

/// The `/execute` body, as far as DNS cares (§6.4).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExecuteResponse {
    #[serde(default, deserialize_with = "null_default")]
    nodes: Vec<HealthEntry>,
    #[serde(rename = "DNS", default, deserialize_with = "null_default")]
    dns: QueryDns,
    #[serde(default, deserialize_with = "null_default")]
    datacenter: String,
    #[serde(default)]
    failovers: u64,
}

/// The `/execute` results, per query ID (or template name). One per process.
pub struct Failovers {
    client: Client,
    /// The runtime requests run on (the main one, which owns the connection pool).
    runtime: tokio::runtime::Handle,
    cache: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One query's request: in flight while `done` is unset, then its result until `until`.
#[derive(Default)]
struct Slot {
    done: tokio::sync::OnceCell<Done>,
}

#[derive(Clone, Debug)]
struct Done {
    outcome: Failover,
    until: Instant,
}

// === impl Failovers ===

impl Failovers {
    /// Failover through the agent `client`. Must be called on the runtime requests run on.
    pub fn new(client: Client) -> Failovers {
        Failovers {
            client,
            runtime: tokio::runtime::Handle::current(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The failover answer of query `key` (its ID, or a template's name): cached, else one
    /// `/execute` shared with every simultaneous caller, bounded by [`EXECUTE_WAIT`].
    pub async fn resolve(&self, key: &str) -> Failover {
        let client = self.client.clone();
        let owned = key.to_string();
        let runtime = self.runtime.clone();
        self.get(key, Instant::now(), EXECUTE_WAIT, move || async move {
            // On the main runtime: the request uses the shared pool. Bounded there too, so
            // that a request given up here does not hold a permit any longer.
            let task = runtime.spawn(async move {
                tokio::time::timeout(EXECUTE_WAIT, execute(&client, &owned)).await
            });
            match task.await {
                Ok(Ok(outcome)) => outcome,
                _ => Failover::Unavailable,
            }
        })
        .await
    }

    /// The cached result of `key` at `now`, else `fetch`'s (run by one caller; the others
    /// wait), a failure when it takes longer than `wait`.
    async fn get<F, Fut>(&self, key: &str, now: Instant, wait: Duration, fetch: F) -> Failover
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Failover>,
    {
        let slot = self.slot(key, now);
        let done = slot
            .done
            .get_or_init(|| async {
                let outcome = tokio::time::timeout(wait, fetch())
                    .await
                    .unwrap_or(Failover::Unavailable);
                Done {
                    until: Instant::now() + fresh_for(&outcome),
                    outcome,
                }
            })
            .await;
        done.outcome.clone()
    }

    /// The slot of `key`: the cached or in-flight one, or a new one when it expired.
    fn slot(&self, key: &str, now: Instant) -> Arc<Slot> {
        let mut cache = lock(&self.cache);
        if let Some(slot) = cache.get(key)
            && slot.live(now)
        {
            return Arc::clone(slot);
        }
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, s| s.live(now));
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        let slot = Arc::new(Slot::default());
        cache.insert(key.to_string(), Arc::clone(&slot));
        slot
    }
}

// === impl Slot ===

impl Slot {
    /// In flight, or done and not expired at `now`.
    fn live(&self, now: Instant) -> bool {
        self.done.get().is_none_or(|d| now < d.until)
    }
}

/// How long a result is kept: the answer's TTL (`DNS.TTL`, else [`DEFAULT_FRESH`]) within
/// [`MIN_FRESH`]..[`MAX_FRESH`]; an empty result [`EMPTY_HOLD`]; a failure [`FAILED_HOLD`].
pub fn fresh_for(outcome: &Failover) -> Duration {
    match outcome {
        Failover::Answer(e) => e
            .ttl
            .map_or(DEFAULT_FRESH, |t| Duration::from_secs(u64::from(t)))
            .clamp(MIN_FRESH, MAX_FRESH),
        Failover::Empty => EMPTY_HOLD,
        Failover::Unavailable => FAILED_HOLD,
    }
}

/// One `GET /v1/query/<key>/execute`.
async fn execute(client: &Client, key: &str) -> Failover {
    let path = format!("/v1/query/{}/execute", encode_segment(key));
    match client
        .get_json::<ExecuteResponse>(&path, Blocking::default())
        .await
    {
        Ok((body, _)) => {
            tracing::debug!(
                query = key,
                dc = %body.datacenter,
                nodes = body.nodes.len(),
                failovers = body.failovers,
                "prepared query executed by the agent"
            );
            into_failover(body)
        }
        Err(e) => {
            tracing::warn!(query = key, error = %e, "prepared query failover failed; SERVFAIL");
            Failover::Unavailable
        }
    }
}

fn into_failover(body: ExecuteResponse) -> Failover {
    if body.nodes.is_empty() {
        return Failover::Empty;
    }
    let ttl = Some(body.dns.ttl.as_str())
        .filter(|t| !t.is_empty())
        .and_then(parse_go_duration)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32);
    Failover::Answer(Arc::new(Executed {
        datacenter: body.datacenter.to_ascii_lowercase(),
        nodes: body.nodes,
        ttl,
    }))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::consul::client::TlsFiles;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn failovers() -> Failovers {
        let client = Client::new("http://127.0.0.1:1", None, 4, &TlsFiles::default()).unwrap();
        Failovers::new(client)
    }

    const WAIT: Duration = Duration::from_secs(5);

    fn answer(ttl: Option<u32>) -> Failover {
        Failover::Answer(Arc::new(Executed {
            datacenter: "dc2".into(),
            nodes: Vec::new(),
            ttl,
        }))
    }

    #[test]
    fn results_are_kept_for_their_ttl() {
        assert_eq!(fresh_for(&answer(None)), DEFAULT_FRESH);
        assert_eq!(fresh_for(&answer(Some(10))), Duration::from_secs(10));
        assert_eq!(fresh_for(&answer(Some(0))), MIN_FRESH, "0s still coalesces");
        assert_eq!(fresh_for(&answer(Some(86400))), MAX_FRESH);
        assert_eq!(fresh_for(&Failover::Empty), EMPTY_HOLD);
        assert_eq!(fresh_for(&Failover::Unavailable), FAILED_HOLD);
    }

    #[test]
    fn body_decodes_like_consul() {
        let body: ExecuteResponse = serde_json::from_str(
            r#"{"Service":"db","Nodes":[{"Node":{"Node":"d2a","Address":"10.2.0.1",
            "Datacenter":"dc2"},"Service":{"ID":"db-1","Service":"db","Port":5432},
            "Checks":[]}],"DNS":{"TTL":"10s"},"Datacenter":"DC2","Failovers":1,"Index":7}"#,
        )
        .unwrap();
        match into_failover(body) {
            Failover::Answer(e) => {
                assert_eq!((e.datacenter.as_str(), e.ttl), ("dc2", Some(10)));
                assert_eq!(e.nodes[0].node.node, "d2a");
            }
            other => panic!("{other:?}"),
        }
        let empty: ExecuteResponse =
            serde_json::from_str(r#"{"Nodes":null,"DNS":{"TTL":""},"Datacenter":"dc1"}"#).unwrap();
        assert!(matches!(into_failover(empty), Failover::Empty));
    }

    /// Simultaneous callers share one fetch; a later one within the TTL gets the cached
    /// result; once expired, the next one fetches again.
    #[tokio::test]
    async fn coalesced_and_cached_until_expiry() {
        let f = failovers();
        let fetches = AtomicUsize::new(0);
        let fetch = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer(Some(10))
        };
        let now = Instant::now();
        let all = futures_join(&f, now, &fetch).await;
        assert!(all.iter().all(|o| matches!(o, Failover::Answer(_))));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        f.get("q", now + Duration::from_secs(9), WAIT, fetch).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "fresh: cached");
        f.get("q", now + Duration::from_secs(11), WAIT, fetch).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "expired: fetched again");
        f.get("other", now, WAIT, fetch).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 3, "per query");
    }

    async fn futures_join<F, Fut>(f: &Failovers, now: Instant, fetch: &F) -> Vec<Failover>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Failover>,
    {
        let (a, b, c) = tokio::join!(
            f.get("q", now, WAIT, fetch),
            f.get("q", now, WAIT, fetch),
            f.get("q", now, WAIT, fetch)
        );
        vec![a, b, c]
    }

    /// A fetch slower than its bound is a failure, kept for [`FAILED_HOLD`].
    #[tokio::test]
    async fn slow_fetch_is_unavailable() {
        let f = failovers();
        let now = Instant::now();
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            answer(None)
        };
        let outcome = f.get("q", now, Duration::from_millis(20), slow).await;
        assert!(matches!(outcome, Failover::Unavailable));
        let quick = || async { answer(None) };
        let held = f.get("q", now, WAIT, quick).await;
        assert!(matches!(held, Failover::Unavailable), "failure held");
        let later = f.get("q", now + FAILED_HOLD * 2, WAIT, quick).await;
        assert!(matches!(later, Failover::Answer(_)), "then asked again");
    }
}
