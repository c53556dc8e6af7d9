//! The catalog feed: keeps an [`Arc<Catalog>`] fresh from the agent with a few blocking queries
//! and publishes it on a `tokio::sync::watch` channel.
//!
//! # Strategy: a connection budget, not one long poll per service
//!
//! One long poll per service needs one agent connection per service, which trips the agent's
//! `http_max_conns_per_client` (200) and is how consul-template ended up with hundreds of
//! connections (`reference/peers.md` §4b). Instead three loops hold one blocking query each:
//!
//! - `/v1/catalog/services`: the set of services (its index moves on registration changes only);
//! - `/v1/health/state/any`: every check; a change in a service's checks, or in the node checks
//!   of a node hosting it, marks that service dirty;
//! - `/v1/catalog/nodes`: nodes for `<node>.node` lookups; a changed node marks its services dirty.
//!
//! A builder task turns their results into bounded fan-out fetches of `/v1/health/service/<name>`
//! for the dirty services only. When `/v1/catalog/services` moved and nothing says which service
//! changed (an instance registered without checks), every known service is probed with a
//! *blocking* request at its last index and a very short wait, so unchanged ones cost little.
//! Every request goes through [`Client`], whose semaphore bounds requests in flight to
//! `max_connections` whatever the number of services.
//!
//! A check whose status flipped needs no fetch at all: the `/v1/health/state/any` answer that
//! reported it carries the new status, and the service's stored entries are patched from it
//! when that gives exactly what the answer describes (see [`checks`]).
//!
//! # Publishing
//!
//! A catalog is published only when it is complete: after the three loops answered once, every
//! service was fetched and prepared queries were loaded (or refused with 403). A failed fetch
//! leaves its services dirty and nothing is published until they are fetched, so no half-updated
//! catalog is ever seen; the last good catalog stays published through any error. A catalog
//! whose content equals the published one is not published again.
//!
//! # Freshness
//!
//! [`last_contact`] (a process-wide static, see [`super::client`]) is the time of the last
//! successful answer from the agent; the HTTP layer derives `consul_catalog_age_seconds` from it.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

#[cfg(test)]
use super::catalog::Check;
use super::catalog::{self, Catalog, Health, HealthEntry, Node, PreparedQuery};
use super::client::{Blocking, Client, ConsulError, Meta, TlsFiles, encode_segment};
use crate::config::{ConsulConfig, ConsulSource};
use crate::metrics::{CONSUL_INSTANCES, CONSUL_SERVICES, CONSUL_WATCH_ERRORS_TOTAL};
use checks::{CheckPrints, CheckRead, CheckReader, Rows};

pub use super::client::last_contact;

/// The published catalog: `None` until the first complete catalog.
pub type CatalogRx = watch::Receiver<Option<Arc<Catalog>>>;

/// The sending half, shared with the `file:` source.
pub(crate) type CatalogTx = watch::Sender<Option<Arc<Catalog>>>;

/// Least time between two iterations of a blocking loop, so that a loop can never spin even
/// when the agent answers at once (consul-template `watch/view.go` waits 100 ms too).
const MIN_GAP: Duration = Duration::from_millis(100);
/// Up to this much is added to [`MIN_GAP`] so that loops do not move in lock step.
const GAP_JITTER_MS: u64 = 20;
/// First delay after an error; doubles per consecutive error up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A 429 means "slow down": never retry sooner than this.
const SLOW_DOWN_MIN: Duration = Duration::from_secs(2);
/// Fewest connections the feed works with: the three long polls plus one for fetches.
pub const MIN_CONNECTIONS: usize = 4;
/// Bounds of the time a request may take beyond what the agent should need.
const SLACK_MIN: Duration = Duration::from_secs(1);
const SLACK_MAX: Duration = Duration::from_secs(5);
/// Least time between the starts of two prepared-query reads (they follow catalog changes).
const QUERY_REREAD_GAP: Duration = Duration::from_secs(1);
/// The `wait` of a probe: an unchanged service returns after this, a changed one at once.
const PROBE_WAIT: Duration = Duration::from_millis(10);

/// What the three loops tell the builder.
#[derive(Debug)]
enum Event {
    Services(BTreeMap<String, Vec<String>>, u64),
    Checks(CheckRead, u64),
    Nodes(Vec<Node>, u64),
}

/// What the index of a blocking response means for the loop (`reference/consul-dns.md` §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The index moved forwards (or this is the first answer): the body may be new.
    Changed,
    /// Same index back: the wait timed out (or an idempotent write); nothing to rebuild.
    Unchanged,
    /// The index went backwards (snapshot restore, a stale read from a lagging server,
    /// consul#7939): start over from 0.
    Reset,
}

/// How a dirty service is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetch {
    /// Known to have changed: a plain read.
    Now,
    /// Only its checks' statuses may have changed: patched from the rows of the
    /// `/v1/health/state/any` answers when they did ([`checks::patch`]), else read like
    /// [`Fetch::Now`].
    Checks,
    /// Might have changed: a blocking read at its last index with [`PROBE_WAIT`].
    Probe,
}

/// What a read of `/v1/query` gives.
type QueryRead = Result<(Vec<PreparedQuery>, Meta), ConsulError>;

/// Settings of one agent watch.
#[derive(Clone, Debug)]
struct Settings {
    datacenter: Option<String>,
    node_name: Option<String>,
    wait: Duration,
    query_poll_interval: Duration,
    max_connections: usize,
    /// A watch on another datacenter: no prepared queries (they stay local) and no gauges
    /// (those describe the local catalog).
    remote: bool,
}

/// What starting a watch on another datacenter needs: the local feed's [`Client`] (so every
/// watch shares its one connection budget) and settings. See [`super::remote`].
#[derive(Clone, Debug)]
pub struct RemoteSource {
    client: Client,
    settings: Settings,
}

/// One service's last fetch.
#[derive(Clone, Debug)]
struct Fetched {
    index: u64,
    entries: Arc<[HealthEntry]>,
    /// Some entry's node was not in `/v1/catalog/nodes` when fetched: the catalog adds it.
    foreign_nodes: bool,
}

/// The builder: everything known so far, and what still has to be fetched.
struct Feed {
    client: Client,
    settings: Settings,
    tx: CatalogTx,
    datacenter: String,
    node_name: String,
    services: Option<(BTreeMap<String, Vec<String>>, u64)>,
    checks: Option<(CheckPrints, u64)>,
    nodes: Option<(BTreeMap<String, Arc<Node>>, u64)>,
    fetched: BTreeMap<String, Fetched>,
    dirty: BTreeMap<String, Fetch>,
    /// Checks changed in the `/v1/health/state/any` answers since the last patch.
    rows: Rows,
    queries: Option<Arc<[PreparedQuery]>>,
    queries_index: u64,
    queries_forbidden_logged: bool,
    /// A catalog change came while a query read was running: read again after it.
    reread_again: bool,
    /// The earliest start of the next prepared-query read.
    next_reread: Instant,
    streak: Streak,
    backoff: Backoff,
}

/// Logs an error streak once (warn) and its end once (info); counts every error.
#[derive(Debug)]
struct Streak {
    what: &'static str,
    failing: bool,
}

/// Exponential backoff with jitter.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

#[derive(Deserialize)]
struct AgentSelf {
    #[serde(rename = "Config")]
    config: AgentConfig,
}

#[derive(Deserialize)]
struct AgentConfig {
    #[serde(rename = "Datacenter", default)]
    datacenter: String,
    #[serde(rename = "NodeName", default)]
    node_name: String,
}

/// Start the catalog feed for `config.address` on the current tokio runtime. The token is read
/// from `consul.token_file` when set; the environment is not read (see [`token`]).
pub fn spawn(config: &ConsulConfig) -> Result<(CatalogRx, JoinHandle<()>), ConsulError> {
    spawn_with_token(config, token(config, None)?)
}

/// The ACL token: the contents of `consul.token_file` when set, else `env_token` (the value of
/// `CONSUL_HTTP_TOKEN`, which only the caller reads, as consul's own CLI does). Blank = none.
pub fn token(
    config: &ConsulConfig,
    env_token: Option<String>,
) -> Result<Option<String>, ConsulError> {
    let token = match &config.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ConsulError::Setup(format!("{}: {e}", path.display())))?,
        None => env_token.unwrap_or_default(),
    };
    let token = token.trim();
    Ok((!token.is_empty()).then(|| token.to_string()))
}

/// Like [`spawn`] with the token given (e.g. from `CONSUL_HTTP_TOKEN`); `token_file` is ignored.
pub fn spawn_with_token(
    config: &ConsulConfig,
    token: Option<String>,
) -> Result<(CatalogRx, JoinHandle<()>), ConsulError> {
    spawn_feeds(config, token).map(|(rx, handle, _)| (rx, handle))
}

/// Like [`spawn_with_token`], also giving what other datacenters' watches start from (`None`
/// for a `file:` catalog, which knows no other datacenter).
pub fn spawn_feeds(
    config: &ConsulConfig,
    token: Option<String>,
) -> Result<(CatalogRx, JoinHandle<()>, Option<RemoteSource>), ConsulError> {
    let (tx, rx) = watch::channel(None);
    let (handle, remote) = match &config.address {
        ConsulSource::File(path) => {
            let handle = super::file::spawn(
                path.clone(),
                config.datacenter.clone(),
                config.node_name.clone(),
                tx,
            )?;
            (handle, None)
        }
        ConsulSource::Agent(url) => {
            let tls = TlsFiles {
                ca_file: config.ca_file.clone(),
                cert_file: config.cert_file.clone(),
                key_file: config.key_file.clone(),
            };
            // The three long polls hold three permits for up to `wait`; with fewer than four,
            // service fetches would starve until a poll returns.
            let max_connections = config.max_connections.max(MIN_CONNECTIONS);
            if max_connections != config.max_connections {
                tracing::warn!(
                    configured = config.max_connections,
                    used = max_connections,
                    "consul.max_connections raised to the minimum the feed needs"
                );
            }
            // A hung request is given up a quarter of `wait` after the agent should have
            // answered (1 s to 5 s): short test waits notice a hung agent quickly.
            let slack = (config.wait / 4).clamp(SLACK_MIN, SLACK_MAX);
            let client = Client::new(url, token, max_connections, &tls)?.with_timeout_slack(slack);
            let settings = Settings {
                datacenter: config.datacenter.clone(),
                node_name: config.node_name.clone(),
                wait: config.wait,
                query_poll_interval: config.query_poll_interval,
                max_connections,
                remote: false,
            };
            let remote = RemoteSource {
                client: client.clone(),
                settings: settings.clone(),
            };
            let span = tracing::info_span!("consul.watch");
            let handle = tokio::spawn(run(client, settings, tx).instrument(span));
            (handle, Some(remote))
        }
    };
    Ok((rx, handle, remote))
}

// === impl RemoteSource ===

impl RemoteSource {
    /// How many other datacenters can be watched at once: each holds [`REMOTE_LOOPS`] long
    /// polls, and the local feed keeps its own three plus one permit for fetches.
    pub fn max_watches(&self) -> usize {
        remote_watches(self.settings.max_connections)
    }

    /// The agent's client (same connections, same permits as the feeds).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The datacenters the agent knows (`GET /v1/catalog/datacenters`), lowercase.
    pub async fn datacenters(&self) -> Result<Vec<String>, ConsulError> {
        let (names, _) = self
            .client
            .get_json::<Vec<String>>("/v1/catalog/datacenters", Blocking::default())
            .await?;
        Ok(names.into_iter().map(|n| n.to_lowercase()).collect())
    }

    /// Start the feed of datacenter `dc` (lowercase): the local feed's code with `?dc=<dc>` on
    /// every request. Runs until the receiver is dropped.
    pub fn spawn(&self, dc: &str) -> (CatalogRx, JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let settings = Settings {
            datacenter: Some(dc.to_string()),
            node_name: Some(self.settings.node_name.clone().unwrap_or_default()),
            remote: true,
            ..self.settings.clone()
        };
        let client = self.client.for_datacenter(dc);
        let span = tracing::info_span!("consul.watch", dc);
        (rx, tokio::spawn(run(client, settings, tx).instrument(span)))
    }
}

/// Long polls the local feed holds.
pub const LOOPS: usize = 3;
/// Long polls a remote datacenter's feed holds: no `/v1/catalog/nodes` watch; its nodes are
/// those of its instances (a node's own checks still arrive with the health list).
pub const REMOTE_LOOPS: usize = 2;

/// Remote datacenter watches `max_connections` allows: what is left after the local feed's
/// [`MIN_CONNECTIONS`], [`REMOTE_LOOPS`] per watch.
fn remote_watches(max_connections: usize) -> usize {
    max_connections.saturating_sub(MIN_CONNECTIONS) / REMOTE_LOOPS
}

/// The agent feed: start the three loops, then build and publish until the receivers are gone.
async fn run(client: Client, settings: Settings, tx: CatalogTx) {
    let (events_tx, events) = mpsc::channel(16);
    let mut loops = JoinSet::new();
    let wait = settings.wait;
    loops.spawn(blocking_loop(
        client.clone(),
        "/v1/catalog/services",
        wait,
        events_tx.clone(),
        Json::default(),
        Event::Services,
    ));
    loops.spawn(blocking_loop(
        client.clone(),
        "/v1/health/state/any",
        wait,
        events_tx.clone(),
        CheckReader::default(),
        Event::Checks,
    ));
    if !settings.remote {
        loops.spawn(blocking_loop(
            client.clone(),
            "/v1/catalog/nodes",
            wait,
            events_tx,
            Json::default(),
            Event::Nodes,
        ));
    }
    let mut feed = Feed::new(client, settings, tx);
    feed.resolve_agent().await;
    feed.run(events).await;
    // Dropping the JoinSet aborts the loops.
}

/// One blocking query held in a loop, following the index rules; sends every change to the
/// builder. Returns when the builder is gone.
async fn blocking_loop<R: Reader>(
    client: Client,
    path: &'static str,
    wait: Duration,
    events: mpsc::Sender<Event>,
    mut reader: R,
    wrap: fn(R::Out, u64) -> Event,
) {
    let mut index = 0;
    let mut streak = Streak::new(path);
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let (read, back) = get_parsed(&client, path, Blocking { index, wait }, reader).await;
        // A parse that panicked loses the reader's memory of the last body: start afresh.
        reader = back.unwrap_or_default();
        match read {
            Ok((body, meta)) => {
                streak.ok();
                backoff.reset();
                let (step, next) = next_index(index, meta.index);
                index = next;
                match step {
                    Step::Changed => {
                        if events.send(wrap(body, index)).await.is_err() {
                            return;
                        }
                    }
                    Step::Unchanged => {}
                    Step::Reset => {
                        metrics::counter!(CONSUL_WATCH_ERRORS_TOTAL, "reason" => "index_reset")
                            .increment(1);
                        tracing::debug!(path, got = meta.index, "index went backwards; reset");
                    }
                }
                let gap = min_gap(rand::rng().random_range(0..=1000));
                tokio::time::sleep_until(started + gap).await;
            }
            Err(e) => {
                streak.fail(&e);
                tokio::time::sleep(backoff.next_delay(&e)).await;
            }
        }
        if events.is_closed() {
            return;
        }
    }
}

/// Turns a response body into what a loop sends; may remember something of the last body.
trait Reader: Default + Send + 'static {
    type Out: Send + 'static;
    fn read(&mut self, body: &[u8]) -> Result<Self::Out, serde_json::Error>;
}

/// A plain JSON body.
struct Json<T>(PhantomData<fn() -> T>);

impl<T> Default for Json<T> {
    fn default() -> Self {
        Json(PhantomData)
    }
}

impl<T: DeserializeOwned + Send + 'static> Reader for Json<T> {
    type Out = T;
    fn read(&mut self, body: &[u8]) -> Result<T, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

impl Reader for CheckReader {
    type Out = CheckRead;
    fn read(&mut self, body: &[u8]) -> Result<CheckRead, serde_json::Error> {
        CheckReader::read(self, body)
    }
}

/// Like [`Client::get_json`], reading the body with `reader` on the blocking pool:
/// `/v1/health/state/any` is megabytes at thousands of services, and parsing it on the
/// runtime held up service fetches and the publish behind it. Gives the reader back (`None`
/// if the parse panicked).
async fn get_parsed<R: Reader>(
    client: &Client,
    path: &'static str,
    query: Blocking,
    mut reader: R,
) -> (Result<(R::Out, Meta), ConsulError>, Option<R>) {
    let (bytes, meta) = match client.get_bytes(path, query).await {
        Ok(got) => got,
        Err(e) => return (Err(e), Some(reader)),
    };
    let joined = tokio::task::spawn_blocking(move || {
        let read = reader.read(&bytes);
        (read, reader)
    })
    .await;
    let decode = |reason: String| ConsulError::Decode {
        path: path.to_string(),
        reason,
    };
    match joined {
        Ok((Ok(value), reader)) => (Ok((value, meta)), Some(reader)),
        Ok((Err(e), reader)) => (Err(decode(e.to_string())), Some(reader)),
        Err(e) => (Err(decode(e.to_string())), None),
    }
}

/// The index rules of `reference/consul-dns.md` §7.4, returning what the answer means and the
/// index to send next.
fn next_index(prev: u64, got: u64) -> (Step, u64) {
    // An index below 1 is treated as 1: sending 0 would turn the next request into a
    // non-blocking read and the loop would spin.
    let got = got.max(1);
    if prev == 0 {
        (Step::Changed, got)
    } else if got == prev {
        (Step::Unchanged, got)
    } else if got < prev {
        // Reset to 0: the next request returns at once with the current data and index,
        // which is then taken as a change.
        (Step::Reset, 0)
    } else {
        (Step::Changed, got)
    }
}

/// [`MIN_GAP`] plus a jitter in `0..=GAP_JITTER_MS` scaled by `permille`.
fn min_gap(permille: u64) -> Duration {
    MIN_GAP + Duration::from_millis(GAP_JITTER_MS * permille.min(1000) / 1000)
}

// === impl Feed ===

impl Feed {
    fn new(client: Client, settings: Settings, tx: CatalogTx) -> Feed {
        Feed {
            client,
            datacenter: settings.datacenter.clone().unwrap_or_default(),
            node_name: settings.node_name.clone().unwrap_or_default(),
            // A remote watch serves no prepared queries: it starts with none and never reads.
            queries: settings.remote.then(|| Arc::from(Vec::new())),
            // Nor watches nodes: with none listed, every instance's node is kept from its entry
            // (`Fetched::foreign_nodes`).
            nodes: settings.remote.then(|| (BTreeMap::new(), 0)),
            settings,
            tx,
            services: None,
            checks: None,
            fetched: BTreeMap::new(),
            dirty: BTreeMap::new(),
            rows: Rows::default(),
            queries_index: 0,
            queries_forbidden_logged: false,
            reread_again: false,
            next_reread: Instant::now(),
            streak: Streak::new("/v1/health/service"),
            backoff: Backoff::default(),
        }
    }

    /// Learn the datacenter and node name from `/v1/agent/self` unless both are configured;
    /// retries with backoff until the agent answers.
    async fn resolve_agent(&mut self) {
        if self.settings.datacenter.is_some() && self.settings.node_name.is_some() {
            return;
        }
        let mut streak = Streak::new("/v1/agent/self");
        let mut backoff = Backoff::default();
        loop {
            match self
                .client
                .get_json::<AgentSelf>("/v1/agent/self", Blocking::default())
                .await
            {
                Ok((agent, _)) => {
                    streak.ok();
                    if self.settings.datacenter.is_none() {
                        self.datacenter = agent.config.datacenter.to_lowercase();
                    }
                    if self.settings.node_name.is_none() {
                        self.node_name = agent.config.node_name;
                    }
                    return;
                }
                Err(e) => {
                    streak.fail(&e);
                    tokio::time::sleep(backoff.next_delay(&e)).await;
                }
            }
        }
    }

    async fn run(&mut self, mut events: mpsc::Receiver<Event>) {
        let mut query_tick = tokio::time::interval(self.settings.query_poll_interval);
        query_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        // Prepared query reads after a change or a tick run beside the loop (at most one at a
        // time), so that a change arriving meanwhile is not held up behind them.
        let mut rereads: JoinSet<QueryRead> = JoinSet::new();
        loop {
            let retry = retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.apply(ev),
                    None => return,
                },
                _ = query_tick.tick(), if self.queries.is_some() && !self.settings.remote => {
                    self.reread_queries(&mut rereads);
                }
                Some(joined) = rereads.join_next(), if !rereads.is_empty() => {
                    if let Ok(read) = joined
                        && let Err(e) = self.take_queries(read)
                    {
                        record_error(&e);
                        tracing::debug!(error = %e, "prepared query poll failed");
                    }
                    if std::mem::take(&mut self.reread_again) {
                        self.reread_queries(&mut rereads);
                    }
                }
                _ = tokio::time::sleep_until(retry), if retry_at.is_some() => retry_at = None,
            }
            while let Ok(ev) = events.try_recv() {
                self.apply(ev);
            }
            if self.tx.is_closed() {
                return;
            }
            if retry_at.is_none()
                && let Err(e) = self.step(&mut rereads).await
            {
                self.streak.fail(&e);
                retry_at = Some(Instant::now() + self.backoff.next_delay(&e));
            }
        }
    }

    /// Fetch what is dirty, load queries if never loaded, publish if complete.
    async fn step(&mut self, rereads: &mut JoinSet<QueryRead>) -> Result<(), ConsulError> {
        if !self.loops_answered() {
            return Ok(());
        }
        let started = Instant::now();
        let dirty = self.dirty.len();
        let patched = self.patch_checks();
        if !self.dirty.is_empty() {
            self.fetch_dirty().await?;
        }
        tracing::debug!(dirty, patched, took = ?started.elapsed(), "fetched");
        if self.queries.is_none() {
            self.poll_queries().await?;
        }
        self.streak.ok();
        self.backoff.reset();
        if self.publish() && !self.settings.remote {
            // Prepared queries cannot be watched: re-read them after every catalog change.
            // The read runs beside the loop; its result is published by the next step.
            self.reread_queries(rereads);
        }
        Ok(())
    }

    /// Start a read of the prepared queries unless one is running; then ask for another once
    /// it is done, so that the last change is always followed by a read.
    ///
    /// Reads start at least [`QUERY_REREAD_GAP`] apart: under a stream of catalog changes the
    /// definitions are read about once a second, not once per change, and the last change is
    /// still followed by a read.
    fn reread_queries(&mut self, rereads: &mut JoinSet<QueryRead>) {
        if !rereads.is_empty() {
            self.reread_again = true;
            return;
        }
        let now = Instant::now();
        let start = self.next_reread.max(now);
        self.next_reread = start + QUERY_REREAD_GAP;
        let client = self.client.clone();
        rereads.spawn(async move {
            tokio::time::sleep_until(start).await;
            client
                .get_json::<Vec<PreparedQuery>>("/v1/query", Blocking::default())
                .await
        });
    }

    /// Services are fetched only once the three loops answered, so that any later check or
    /// node change arrives as an event after the fetch saw the earlier state.
    fn loops_answered(&self) -> bool {
        self.services.is_some() && self.checks.is_some() && self.nodes.is_some()
    }

    fn apply(&mut self, ev: Event) {
        let started = Instant::now();
        let what = match &ev {
            Event::Services(..) => "services",
            Event::Checks(..) => "checks",
            Event::Nodes(..) => "nodes",
        };
        self.apply_event(ev);
        tracing::debug!(what, took = ?started.elapsed(), "applied");
    }

    fn apply_event(&mut self, ev: Event) {
        match ev {
            Event::Services(services, index) => self.apply_services(services, index),
            Event::Checks(read, index) => self.apply_checks(read, index),
            Event::Nodes(nodes, index) => self.apply_nodes(nodes, index),
        }
    }

    fn apply_services(&mut self, services: BTreeMap<String, Vec<String>>, index: u64) {
        let old = self.services.take();
        self.fetched.retain(|name, _| services.contains_key(name));
        self.dirty.retain(|name, _| services.contains_key(name));
        let mut explained = old.as_ref().is_some_and(|(o, _)| o.len() != services.len());
        for (name, tags) in &services {
            let known = old.as_ref().and_then(|(o, _)| o.get(name));
            if known != Some(tags) || !self.fetched.contains_key(name) {
                explained = true;
                self.dirty.insert(name.clone(), Fetch::Now);
            }
        }
        if let Some((_, old_index)) = old
            && !explained
            && old_index != index
        {
            // The index moved but the names and tags did not: an instance was registered or
            // removed somewhere. Probe every service; unchanged ones return after PROBE_WAIT.
            // A probe also sees a check change, and more than a patch would.
            for name in self.fetched.keys() {
                let how = self.dirty.entry(name.clone()).or_insert(Fetch::Probe);
                if *how == Fetch::Checks {
                    *how = Fetch::Probe;
                }
            }
        }
        self.services = Some((services, index));
    }

    fn apply_checks(&mut self, read: CheckRead, index: u64) {
        let CheckRead { prints, rows } = read;
        if let Some((old, _)) = &self.checks {
            let mut touched: BTreeSet<String> = BTreeSet::new();
            for name in old.services.keys().chain(prints.services.keys()) {
                if old.services.get(name) != prints.services.get(name) {
                    touched.insert(name.clone());
                }
            }
            let nodes: BTreeSet<&str> = old
                .nodes
                .keys()
                .chain(prints.nodes.keys())
                .filter(|n| old.nodes.get(*n) != prints.nodes.get(*n))
                .map(String::as_str)
                .collect();
            touched.extend(self.services_on(&nodes));
            self.mark_dirty(touched, Fetch::Checks);
        }
        // Rows given up: the patch of what is marked fails its fingerprint check and the
        // service is fetched.
        checks::keep_rows(&mut self.rows, rows.unwrap_or_default());
        self.checks = Some((prints, index));
    }

    fn apply_nodes(&mut self, nodes: Vec<Node>, index: u64) {
        // Unchanged nodes keep their `Arc`, which the stored entries share.
        let old = self.nodes.as_ref().map(|(o, _)| o);
        let nodes: BTreeMap<String, Arc<Node>> = nodes
            .into_iter()
            .map(|n| {
                let shared = old
                    .and_then(|o| o.get(&n.node))
                    .filter(|o| ***o == n)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(n));
                (shared.node.clone(), shared)
            })
            .collect();
        if let Some((old, _)) = &self.nodes {
            let changed: BTreeSet<&str> = old
                .keys()
                .chain(nodes.keys())
                .filter(|n| old.get(*n) != nodes.get(*n))
                .map(String::as_str)
                .collect();
            let touched = self.services_on(&changed);
            self.mark_dirty(touched, Fetch::Now);
        }
        self.nodes = Some((nodes, index));
    }

    /// Names of the fetched services with an instance on one of `nodes`.
    fn services_on(&self, nodes: &BTreeSet<&str>) -> BTreeSet<String> {
        if nodes.is_empty() {
            return BTreeSet::new();
        }
        self.fetched
            .iter()
            .filter(|(_, f)| {
                f.entries
                    .iter()
                    .any(|e| nodes.contains(e.node.node.as_str()))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Mark `names` to be fetched `how`. [`Fetch::Checks`] never replaces a fetch already
    /// asked for, and needs entries to patch.
    fn mark_dirty(&mut self, names: BTreeSet<String>, how: Fetch) {
        for name in names {
            // A service the catalog does not list (yet) comes with the next services event.
            let listed = self
                .services
                .as_ref()
                .is_some_and(|(s, _)| s.contains_key(&name));
            if !listed {
                continue;
            }
            if how == Fetch::Checks && self.fetched.contains_key(&name) {
                self.dirty.entry(name).or_insert(Fetch::Checks);
            } else {
                self.dirty.insert(name, Fetch::Now);
            }
        }
    }

    /// Apply the checks changed in the `/v1/health/state/any` answers to the services
    /// marked [`Fetch::Checks`]; those that do not then match the latest answer's fingerprints
    /// become [`Fetch::Now`]. Returns how many were patched.
    fn patch_checks(&mut self) -> usize {
        let rows = std::mem::take(&mut self.rows);
        let Some((prints, _)) = &self.checks else {
            return 0;
        };
        let mut patched = 0;
        for (name, how) in &mut self.dirty {
            if *how != Fetch::Checks {
                continue;
            }
            let Some(old) = self.fetched.get_mut(name) else {
                *how = Fetch::Now;
                continue;
            };
            match checks::patch(name, &old.entries, &rows, prints) {
                Some(entries) => {
                    patched += 1;
                    // The index stays the service's own, for probes of it.
                    if *old.entries != *entries {
                        old.entries = entries.into();
                    }
                }
                None => *how = Fetch::Now,
            }
        }
        self.dirty.retain(|_, how| *how != Fetch::Checks);
        patched
    }

    /// Fetch every dirty service, at most `max_connections` at a time. Services fetched are
    /// stored and leave the dirty set; on any error the rest stay dirty and the first error is
    /// returned, so nothing is published until all of them are in.
    async fn fetch_dirty(&mut self) -> Result<(), ConsulError> {
        let mut todo: Vec<(String, Blocking)> = self
            .dirty
            .iter()
            .map(|(name, how)| {
                let query = match how {
                    Fetch::Now | Fetch::Checks => Blocking::default(),
                    Fetch::Probe => Blocking {
                        index: self.fetched.get(name).map_or(0, |f| f.index),
                        wait: PROBE_WAIT,
                    },
                };
                (name.clone(), query)
            })
            .collect();
        let mut tasks = JoinSet::new();
        let mut first_error = None;
        loop {
            while tasks.len() < self.settings.max_connections {
                let Some((name, query)) = todo.pop() else {
                    break;
                };
                let client = self.client.clone();
                tasks.spawn(async move {
                    let path = format!("/v1/health/service/{}", encode_segment(&name));
                    let result = client.get_json::<Vec<HealthEntry>>(&path, query).await;
                    (name, query, result)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let Ok((name, query, result)) = joined else {
                continue;
            };
            match result {
                Ok((entries, meta)) => self.store(name, query, entries, meta),
                Err(e) => {
                    tracing::debug!(service = %name, error = %e, "fetch failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn store(&mut self, name: String, query: Blocking, mut entries: Vec<HealthEntry>, meta: Meta) {
        self.dirty.remove(&name);
        let (step, _) = next_index(query.index, meta.index);
        if step == Step::Unchanged && self.fetched.contains_key(&name) {
            return;
        }
        catalog::sort_entries(&mut entries);
        // One node record per node: the catalog's, when the entry's copy is the same.
        let mut foreign_nodes = false;
        if let Some((nodes, _)) = &self.nodes {
            for e in &mut entries {
                match nodes.get(&e.node.node) {
                    Some(shared) if **shared == *e.node => e.node = Arc::clone(shared),
                    Some(_) => {}
                    None => foreign_nodes = true,
                }
            }
        }
        let index = meta.index.max(1);
        if let Some(old) = self.fetched.get_mut(&name)
            && *old.entries == *entries
        {
            // Same content: keep the `Arc`, so the catalog and the answer table see the
            // service as unchanged and reuse what they built from it.
            old.index = index;
            old.foreign_nodes = foreign_nodes;
            return;
        }
        let fetched = Fetched {
            index,
            entries: entries.into(),
            foreign_nodes,
        };
        self.fetched.insert(name, fetched);
    }

    /// Read prepared query definitions. A 403 (the token lacks `query:read`) is logged once and
    /// means "no queries", so that it does not hold readiness back.
    async fn poll_queries(&mut self) -> Result<(), ConsulError> {
        let read = self
            .client
            .get_json::<Vec<PreparedQuery>>("/v1/query", Blocking::default())
            .await;
        self.take_queries(read)
    }

    /// Keep what a read of `/v1/query` gave (see [`Feed::poll_queries`]).
    fn take_queries(&mut self, read: QueryRead) -> Result<(), ConsulError> {
        match read {
            Ok((queries, meta)) => {
                self.queries = Some(queries.into());
                self.queries_index = meta.index;
                Ok(())
            }
            Err(e) if e.is_forbidden() => {
                if !self.queries_forbidden_logged {
                    self.queries_forbidden_logged = true;
                    tracing::warn!(error = %e, "cannot read prepared queries; serving none");
                }
                if self.queries.is_none() {
                    self.queries = Some(Arc::from(Vec::new()));
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Publish the catalog if it is complete and differs from the published one. Returns
    /// whether something was published.
    fn publish(&mut self) -> bool {
        let started = Instant::now();
        let Some(next) = self.build() else {
            return false;
        };
        let same = self
            .tx
            .borrow()
            .as_deref()
            .is_some_and(|c| same_content(c, &next));
        if same {
            return false;
        }
        if !self.settings.remote {
            set_gauges(&next);
        }
        tracing::debug!(
            index = next.index,
            services = next.services.len(),
            built = ?started.elapsed(),
            "catalog published"
        );
        self.tx.send_replace(Some(Arc::new(next)));
        true
    }

    /// The catalog from what is known, or `None` while anything is missing.
    fn build(&self) -> Option<Catalog> {
        let (services, services_index) = self.services.as_ref()?;
        let (_, checks_index) = self.checks.as_ref()?;
        let (nodes, nodes_index) = self.nodes.as_ref()?;
        let queries = self.queries.clone()?;
        if !self.dirty.is_empty() {
            return None;
        }
        let mut index = (*services_index)
            .max(*checks_index)
            .max(*nodes_index)
            .max(self.queries_index);
        let mut map = BTreeMap::new();
        let mut nodes = nodes.clone();
        for name in services.keys() {
            let fetched = self.fetched.get(name)?;
            index = index.max(fetched.index);
            map.insert(name.clone(), fetched.entries.clone());
            if fetched.foreign_nodes {
                // A node the node list did not have yet (registered since): keep it known.
                for e in fetched.entries.iter() {
                    if !nodes.contains_key(&e.node.node) {
                        nodes.insert(e.node.node.clone(), Arc::clone(&e.node));
                    }
                }
            }
        }
        Some(Catalog {
            datacenter: self.datacenter.clone(),
            node_name: self.node_name.clone(),
            index,
            services: map,
            nodes,
            queries,
        })
    }
}

/// Whether two catalogs hold the same data. Unchanged services share their entries' `Arc`
/// with the published catalog, so comparing pointers first skips the deep comparison of all
/// but the services just fetched.
fn same_content(a: &Catalog, b: &Catalog) -> bool {
    a.datacenter == b.datacenter
        && a.node_name == b.node_name
        && a.services.len() == b.services.len()
        && a.services
            .iter()
            .zip(&b.services)
            .all(|((na, ea), (nb, eb))| na == nb && (Arc::ptr_eq(ea, eb) || ea == eb))
        && a.nodes == b.nodes
        && a.queries == b.queries
}

fn set_gauges(catalog: &Catalog) {
    metrics::gauge!(CONSUL_SERVICES).set(catalog.services.len() as f64);
    for (health, count) in catalog.instance_counts() {
        let state = match health {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        };
        metrics::gauge!(CONSUL_INSTANCES, "state" => state).set(count as f64);
    }
}

fn record_error(e: &ConsulError) {
    metrics::counter!(CONSUL_WATCH_ERRORS_TOTAL, "reason" => e.reason()).increment(1);
}

// === impl Streak ===

impl Streak {
    fn new(what: &'static str) -> Streak {
        Streak {
            what,
            failing: false,
        }
    }

    /// Count the error; warn only on the first of a streak so that an agent outage logs one
    /// line per loop, not one per retry.
    fn fail(&mut self, e: &ConsulError) {
        record_error(e);
        if self.failing {
            tracing::debug!(what = self.what, reason = e.reason(), error = %e, "consul still failing");
        } else {
            self.failing = true;
            tracing::warn!(what = self.what, reason = e.reason(), error = %e,
                "consul request failed; serving the last catalog");
        }
    }

    fn ok(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(what = self.what, "consul requests recovered");
        }
    }
}

// === impl Backoff ===

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_delay(&mut self, e: &ConsulError) -> Duration {
        let delay = backoff_delay(
            self.failures,
            e.is_too_many_requests(),
            rand::rng().random_range(0..=1000),
        );
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// `BACKOFF_START` doubled per earlier failure, capped at `BACKOFF_MAX`, then "equal jitter":
/// half fixed, half scaled by `permille`. A 429 never waits less than `SLOW_DOWN_MIN`.
fn backoff_delay(failures: u32, slow_down: bool, permille: u64) -> Duration {
    let exp = BACKOFF_START.saturating_mul(1u32 << failures.min(16));
    let mut base = exp.min(BACKOFF_MAX);
    if slow_down {
        base = base.max(SLOW_DOWN_MIN);
    }
    let half = base / 2;
    half + half.mul_f64(permille.min(1000) as f64 / 1000.0)
}

mod checks;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
