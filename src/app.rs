//! Wiring: build every part from a [`Config`], bind the listeners, run, shut down.
//!
//! ```text
//! consul::watch ──Arc<Catalog>──► table task ──► ArcSwap<AnswerTable> ──► server::Dispatcher
//!         │                           └──────► SRV data (/v1/catalog)
//!         └──────────────────────► emit::spawn ──► emit.srv_file, templates → check → reload
//! ```
//!
//! A reload ([`Running::reload`], SIGHUP) builds the new parts first and swaps them in only
//! when all of them could be built: the forwarder (`Dispatcher::replace_forwarder`), the local
//! data (`ArcSwap<Local>`), the DNS knobs (a watch channel the table task rebuilds from) and
//! the emitter (restarted). Listeners and the Consul feed are not rebuilt: changing `[listen]`
//! or `[consul]` needs a restart, which the reload logs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, DnsConfig};
use crate::consul::answer::AnswerTable;
use crate::consul::failover::Failovers;
use crate::consul::remote::Remotes;
use crate::consul::{self, Catalog};
use crate::emit;
use crate::forward::{ForwardError, Forwarder};
use crate::http::{self, HttpState, Readiness, SrvDocument};
use crate::metrics;
use crate::ops::query_log::QueryLog;
use crate::router::Router;
use crate::server::{Dispatcher, Local, tcp, udp};
use crate::zones::{self, ZoneError, Zones};

/// Why signpost could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Zone(#[from] ZoneError),
    #[error("forwarder: {0}")]
    Forward(#[from] ForwardError),
    #[error("consul: {0}")]
    Consul(#[from] consul::client::ConsulError),
    #[error("cannot start the query log: {0}")]
    QueryLog(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running signpost.
pub struct Running {
    /// The DNS addresses actually bound (port 0 in the config becomes a real port).
    pub dns_addrs: Vec<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    live: Live,
}

/// The parts a reload replaces, and what it needs to build them.
struct Live {
    /// The configuration in service (its `[listen]` and `[consul]` are the ones started with).
    config: Config,
    domains: Vec<String>,
    dispatcher: Arc<Dispatcher>,
    local: Arc<ArcSwap<Local>>,
    dns: watch::Sender<Arc<DnsConfig>>,
    catalogs: consul::watch::CatalogRx,
    shutdown: watch::Receiver<bool>,
    emitter: JoinHandle<()>,
    zones_reload: JoinHandle<()>,
    query_log: Arc<QueryLog>,
    /// Other datacenters' watches, stopped with the rest.
    remotes: Arc<Remotes>,
}

/// What a successful reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Changed settings that were not applied because they need a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The domains of the Consul zone, lowercase dotted without the final dot, primary first.
pub fn consul_domains(config: &Config) -> Vec<String> {
    let dotted =
        |n: &hickory_proto::rr::Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    std::iter::once(dotted(&config.consul.domain))
        .chain(config.consul.alt_domain.as_ref().map(dotted))
        .collect()
}

/// Build everything and bind every listener. Returns once signpost is serving (it may not be
/// ready yet: `/ready` waits for the first catalog).
pub async fn start(config: Config) -> Result<Running, AppError> {
    let prometheus = prometheus();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let readiness = Arc::new(Readiness::default());
    let domains = consul_domains(&config);

    let forwarder = Forwarder::new(&config.forward, &config.cache, &config.listen.dns)?;
    let zones = Zones::load(&config.zones)?;
    let origins: Vec<String> = zones.zones().iter().map(|z| z.origin.clone()).collect();
    let local = Arc::new(ArcSwap::from_pointee(Local {
        router: Router::new(&domains, &origins),
        zones,
    }));
    let table = Arc::new(ArcSwap::from_pointee(AnswerTable::empty(
        &domains,
        &config.dns,
    )));
    // Local data is polled and swapped on change (issue 6).
    let reload = zones::spawn_reload(
        &config.zones,
        domains.clone(),
        Arc::clone(&local),
        shutdown_rx.clone(),
    );
    let query_log = QueryLog::start().map_err(AppError::QueryLog)?;
    query_log.set_enabled(config.log.queries);

    let mut tasks = Vec::new();
    // CONSUL_HTTP_TOKEN is read here, at the config boundary, only when token_file is unset.
    let token = consul::watch::token(&config.consul, std::env::var("CONSUL_HTTP_TOKEN").ok())?;
    let (catalogs, feed, remote_source) = consul::watch::spawn_feeds(&config.consul, token)?;
    tasks.push(feed);
    let (dns_tx, dns_rx) = watch::channel(Arc::new(config.dns.clone()));
    // Other datacenters are watched on first use, on this runtime, with the feed's client.
    // Prepared-query failover asks the same agent, with the same client (a `file:` catalog
    // has none: no failover).
    let failovers = remote_source
        .as_ref()
        .map(|source| Arc::new(Failovers::new(source.client())));
    let remotes = Arc::new(Remotes::new(remote_source, domains.clone(), dns_rx.clone()));
    let mut dispatcher = Dispatcher::new(
        Arc::clone(&table),
        Arc::clone(&local),
        Arc::new(forwarder.clone()),
    )
    .with_query_log(Arc::clone(&query_log))
    .with_remotes(Arc::clone(&remotes));
    if let Some(failovers) = failovers {
        dispatcher = dispatcher.with_failovers(failovers);
    }
    let dispatcher = Arc::new(dispatcher);
    // The emitter reads the same catalogs as the answer table, so the SRV data file, the
    // rendered templates and DNS cannot disagree.
    let emitter = emit::spawn(
        &config.emit,
        &config.dns,
        domains[0].clone(),
        catalogs.clone(),
        shutdown_rx.clone(),
    )
    .into_handle();
    let srv_document = Arc::new(SrvDocument::new(
        catalogs.clone(),
        dns_rx.clone(),
        domains[0].clone(),
    ));
    let ready = Arc::clone(&readiness);
    tasks.push(tokio::spawn(follow_catalog(
        catalogs.clone(),
        dns_rx,
        domains.clone(),
        table,
        move || ready.catalog_loaded.store(true, Ordering::Release),
    )));

    let mut dns_addrs = Vec::new();
    let mut udp_threads = Vec::new();
    let tcp_limit = Arc::new(Semaphore::new(config.listen.tcp_max_connections.max(1)));
    let workers = match config.listen.udp_workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    for &addr in &config.listen.dns {
        let (bound, sockets, listener) =
            bind_dns(addr, workers).map_err(|source| AppError::Bind { addr, source })?;
        for (i, socket) in sockets.into_iter().enumerate() {
            let thread = udp::spawn_worker(
                socket,
                Arc::clone(&dispatcher),
                shutdown_rx.clone(),
                format!("signpost-udp-{i}"),
            )
            .map_err(|source| AppError::Bind { addr, source })?;
            udp_threads.push(thread);
        }
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| AppError::Bind { addr, source })?;
        tasks.push(tokio::spawn(tcp::serve(
            listener,
            Arc::clone(&dispatcher),
            Arc::clone(&tcp_limit),
            config.listen.tcp_idle_timeout,
            shutdown_rx.clone(),
        )));
        tracing::info!(addr = %bound, workers, "dns listening (udp and tcp)");
        dns_addrs.push(bound);
    }

    let http_addr = match config.listen.http {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| AppError::Bind { addr, source })?;
            let ready = Arc::clone(&readiness);
            let state = Arc::new(HttpState {
                prometheus: prometheus.clone(),
                dispatcher: Arc::clone(&dispatcher),
                readiness: Arc::clone(&readiness),
                srv_document,
                before_scrape: Box::new(move || {
                    refresh_catalog_age();
                    ::metrics::gauge!(metrics::READY).set(f64::from(u8::from(ready.is_ready())));
                }),
            });
            let stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = http::serve(listener, state, stop).await {
                    tracing::error!(error = %e, "http server failed");
                }
            }));
            tracing::info!(addr = %bound, "http listening");
            Some(bound)
        }
    };
    tasks.push(tokio::spawn(upkeep(prometheus, shutdown_rx.clone())));
    // Once the listeners are bound: disable any upstream that forwards back to us (issue 6).
    tasks.push(tokio::spawn(forwarder.check_loops()));
    readiness.listeners_bound.store(true, Ordering::Release);
    // Both reload counters exist from the start, so `rate()` and alerts see them at 0.
    for result in ["ok", "error"] {
        ::metrics::counter!(metrics::CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
    }
    let live = Live {
        config,
        domains,
        dispatcher,
        local,
        dns: dns_tx,
        catalogs,
        shutdown: shutdown_rx,
        emitter,
        zones_reload: reload,
        query_log,
        remotes,
    };
    Ok(Running {
        dns_addrs,
        http_addr,
        readiness,
        shutdown,
        udp_threads,
        tasks,
        live,
    })
}

/// Count a reload's result and log it once: `ok`, or `error` (the running config stays).
pub fn record_reload(result: &Result<Reloaded, String>) {
    match result {
        Ok(reloaded) => {
            ::metrics::counter!(metrics::CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
            for key in &reloaded.needs_restart {
                tracing::warn!(
                    key,
                    "changed at reload but only a restart applies it; still using the old value"
                );
            }
            tracing::info!("configuration reloaded");
        }
        Err(error) => {
            ::metrics::counter!(metrics::CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
            tracing::error!(%error, "configuration not reloaded; still serving the previous one");
        }
    }
}

/// `consul_catalog_age_seconds`, computed at scrape time from the last successful contact with
/// the agent (or the last read of a `file:` catalog).
fn refresh_catalog_age() {
    let age = consul::watch::last_contact()
        .and_then(|t| t.elapsed().ok())
        .map_or(f64::NAN, |d| d.as_secs_f64());
    ::metrics::gauge!(metrics::CONSUL_CATALOG_AGE_SECONDS).set(age);
}

// === impl Running ===

impl Running {
    /// Apply `new` (already validated) in place of the running configuration: upstreams and
    /// cache, DNS knobs, zones and hosts, SRV data file and templates. Everything is built
    /// before anything is swapped, so an error (a zone file that does not load, an unreadable
    /// resolv.conf) leaves the running configuration whole. Queries keep being answered
    /// throughout: readers load whichever version is current, and a forward already running
    /// finishes on the forwarder it started with.
    pub async fn reload(&mut self, mut new: Config) -> Result<Reloaded, AppError> {
        let live = &mut self.live;
        let old = &live.config;
        let mut reloaded = Reloaded::default();
        // Listeners are bound once (and privileges may be dropped since), and the Consul
        // feed's connections and domains are wired through every part: both need a restart.
        if !same(&old.listen, &new.listen) {
            reloaded.needs_restart.push("listen");
        }
        if !same(&old.consul, &new.consul) {
            reloaded.needs_restart.push("consul");
        }
        new.listen = old.listen.clone();
        new.consul = old.consul.clone();

        // Build everything first.
        let zones = Zones::load(&new.zones)?;
        let forward_changed = !same(&old.forward, &new.forward) || !same(&old.cache, &new.cache);
        let forwarder = if forward_changed {
            Some(Forwarder::new(&new.forward, &new.cache, &self.dns_addrs)?)
        } else {
            None
        };

        // Then swap.
        let origins: Vec<String> = zones.zones().iter().map(|z| z.origin.clone()).collect();
        live.local.store(Arc::new(Local {
            router: Router::new(&live.domains, &origins),
            zones,
        }));
        live.zones_reload.abort();
        live.zones_reload = zones::spawn_reload(
            &new.zones,
            live.domains.clone(),
            Arc::clone(&live.local),
            live.shutdown.clone(),
        );
        if let Some(forwarder) = forwarder {
            live.dispatcher.replace_forwarder(forwarder.clone());
            tokio::spawn(forwarder.check_loops());
        }
        if !same(&old.dns, &new.dns) {
            let _ = live.dns.send(Arc::new(new.dns.clone()));
        }
        if !same(&old.emit, &new.emit) || !same(&old.dns, &new.dns) {
            live.emitter.abort();
            live.emitter = emit::spawn(
                &new.emit,
                &new.dns,
                live.domains[0].clone(),
                live.catalogs.clone(),
                live.shutdown.clone(),
            )
            .into_handle();
        }
        live.query_log.set_enabled(new.log.queries);
        live.config = new;
        Ok(reloaded)
    }

    /// The configuration in service.
    pub fn config(&self) -> &Config {
        &self.live.config
    }

    /// Stop accepting, let forwarded queries in flight answer (at most
    /// [`crate::server::DRAIN_DEADLINE`]), stop every task, and wait for the UDP threads.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        // UDP workers drain on their own threads; TCP connections are tasks on this runtime.
        if !self
            .live
            .dispatcher
            .drain(crate::server::DRAIN_DEADLINE)
            .await
        {
            tracing::warn!(
                in_flight = self.live.dispatcher.in_flight(),
                "forwarded queries still in flight at the drain deadline"
            );
        }
        self.live.remotes.stop();
        let mut tasks = self.tasks;
        tasks.push(self.live.emitter);
        tasks.push(self.live.zones_reload);
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let threads = self.udp_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Rebuild the answer table and the SRV data served at `/v1/catalog` for each new catalog
/// (the emitter writes `emit.srv_file`). Building runs on a
/// blocking thread: a catalog of thousands of services takes milliseconds to encode, which
/// must not stall the runtime. The table is updated incrementally from the previous one. The
/// SRV document is not rendered here: `/v1/catalog` renders it when asked (`http::SrvDocument`)
/// and the emitter when a file or template needs it, so a node nobody asks holds no copy.
///
/// `on_built` runs after every table stored: the local table marks readiness, another
/// datacenter's joins the request path ([`consul::remote`]).
pub(crate) async fn follow_catalog(
    mut catalogs: consul::watch::CatalogRx,
    mut dns_configs: watch::Receiver<Arc<DnsConfig>>,
    domains: Vec<String>,
    table: Arc<ArcSwap<AnswerTable>>,
    on_built: impl Fn() + Send + 'static,
) {
    loop {
        let current: Option<Arc<Catalog>> = catalogs.borrow_and_update().clone();
        let dns = Arc::clone(&dns_configs.borrow_and_update());
        if let Some(catalog) = current {
            let domains = domains.clone();
            let table = Arc::clone(&table);
            let built = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let answers = AnswerTable::update(&table.load(), catalog, &domains, &dns);
                table.store(Arc::new(answers));
                tracing::debug!(took = ?started.elapsed(), "answer table updated");
                // The previous table is freed by now unless a request still holds it; give the
                // pages back without holding up the next update.
                drop(tokio::task::spawn_blocking(crate::ops::memory::trim));
            })
            .await;
            match built {
                Ok(()) => on_built(),
                Err(e) => tracing::error!(error = %e, "building the answer table failed"),
            }
        }
        // A new catalog or new DNS knobs (reload): rebuild from the current pair.
        let changed = tokio::select! {
            c = catalogs.changed() => c.is_ok(),
            d = dns_configs.changed() => d.is_ok(),
        };
        if !changed {
            return;
        }
    }
}

/// Whether two config sections are equal. Config types do not derive `PartialEq` (they hold
/// `Name`s, paths and durations that all print exactly), so compare their `Debug` forms; this
/// runs once per reload.
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The process-wide Prometheus recorder, installed once. A second `start` in the same process
/// (tests) shares it.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// The exporter keeps histogram samples until upkeep drains them (`reference/hickory.md` §5).
async fn upkeep(handle: PrometheusHandle, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
        }
    }
}

/// Bind `workers` UDP sockets and one TCP listener on the same address. Port 0 picks a free
/// port for UDP first and then asks for the same port over TCP, retrying if TCP has it taken.
fn bind_dns(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<(SocketAddr, Vec<std::net::UdpSocket>, std::net::TcpListener)> {
    let mut last_error = None;
    for _ in 0..16 {
        let first = udp::bind(addr)?;
        let bound = first.local_addr()?;
        let listener = match tcp::bind(bound) {
            Ok(l) => l,
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last_error = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(udp::bind(bound)?);
        }
        return Ok((bound, sockets, listener));
    }
    Err(last_error.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()))
}
