//! Wiring: build every part from a [`Config`], bind the listeners, run, shut down.
//!
//! ```text
//! consul::watch ──Arc<Catalog>──► table task ──► ArcSwap<AnswerTable> ──► server::Dispatcher
//!         │                           └──────► SRV data (/v1/catalog)
//!         └──────────────────────► emit::spawn ──► emit.srv_file, templates → check → reload
//! ```

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::consul::answer::AnswerTable;
use crate::consul::{self, Catalog};
use crate::emit::{self, SrvData};
use crate::forward::{ForwardError, Forwarder};
use crate::http::{self, HttpState, Readiness};
use crate::metrics;
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
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&table),
        local,
        Arc::new(forwarder.clone()),
    ));
    let srv_data = Arc::new(ArcSwap::from_pointee(Bytes::new()));

    let mut tasks = Vec::new();
    // CONSUL_HTTP_TOKEN is read here, at the config boundary, only when token_file is unset.
    let token = consul::watch::token(&config.consul, std::env::var("CONSUL_HTTP_TOKEN").ok())?;
    let (catalogs, feed) = consul::watch::spawn_with_token(&config.consul, token)?;
    tasks.push(feed);
    // The emitter reads the same catalogs as the answer table, so the SRV data file, the
    // rendered templates and DNS cannot disagree.
    let emitter = emit::spawn(
        &config.emit,
        &config.dns,
        domains[0].clone(),
        catalogs.clone(),
        shutdown_rx.clone(),
    );
    tasks.push(emitter.into_handle());
    tasks.push(tokio::spawn(follow_catalog(
        catalogs,
        Arc::clone(&config_arc(&config)),
        domains,
        table,
        Arc::clone(&srv_data),
        Arc::clone(&readiness),
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
            let state = Arc::new(HttpState {
                prometheus: prometheus.clone(),
                dispatcher: Arc::clone(&dispatcher),
                readiness: Arc::clone(&readiness),
                srv_data,
                before_scrape: Box::new(refresh_catalog_age),
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
    tasks.push(tokio::spawn(upkeep(prometheus, shutdown_rx)));
    tasks.push(reload);
    // Once the listeners are bound: disable any upstream that forwards back to us (issue 6).
    tasks.push(tokio::spawn(forwarder.check_loops()));
    readiness.listeners_bound.store(true, Ordering::Release);
    Ok(Running {
        dns_addrs,
        http_addr,
        readiness,
        shutdown,
        udp_threads,
        tasks,
    })
}

/// `consul_catalog_age_seconds`, computed at scrape time from the last successful contact with
/// the agent (or the last read of a `file:` catalog).
fn refresh_catalog_age() {
    let age = consul::watch::last_contact()
        .and_then(|t| t.elapsed().ok())
        .map_or(f64::NAN, |d| d.as_secs_f64());
    ::metrics::gauge!(metrics::CONSUL_CATALOG_AGE_SECONDS).set(age);
}

fn config_arc(config: &Config) -> Arc<Config> {
    Arc::new(config.clone())
}

// === impl Running ===

impl Running {
    /// Stop accepting, stop every task, and wait for the UDP threads.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
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
/// must not stall the runtime. The table is updated incrementally from the previous one; the
/// SRV document follows in its own task, so that rendering it (tens of ms at thousands of
/// instances) never holds up the next table. Ready once both reflect a catalog.
async fn follow_catalog(
    mut catalogs: consul::watch::CatalogRx,
    config: Arc<Config>,
    domains: Vec<String>,
    table: Arc<ArcSwap<AnswerTable>>,
    srv_data: Arc<ArcSwap<Bytes>>,
    readiness: Arc<Readiness>,
) {
    let loaded = Arc::new(Loaded::default());
    tokio::spawn(follow_srv_data(
        catalogs.clone(),
        Arc::clone(&config),
        domains.first().cloned().unwrap_or_default(),
        srv_data,
        Arc::clone(&readiness),
        Arc::clone(&loaded),
    ));
    loop {
        let current: Option<Arc<Catalog>> = catalogs.borrow_and_update().clone();
        if let Some(catalog) = current {
            let config = Arc::clone(&config);
            let domains = domains.clone();
            let table = Arc::clone(&table);
            let built = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let answers = AnswerTable::update(&table.load(), catalog, &domains, &config.dns);
                table.store(Arc::new(answers));
                tracing::debug!(took = ?started.elapsed(), "answer table updated");
            })
            .await;
            match built {
                Ok(()) => loaded.table_done(&readiness),
                Err(e) => tracing::error!(error = %e, "building the answer table failed"),
            }
        }
        if catalogs.changed().await.is_err() {
            return;
        }
    }
}

/// Which of the table and the SRV document reflect a catalog yet.
#[derive(Default)]
struct Loaded {
    table: std::sync::atomic::AtomicBool,
    doc: std::sync::atomic::AtomicBool,
}

impl Loaded {
    fn table_done(&self, readiness: &Readiness) {
        self.table.store(true, Ordering::SeqCst);
        if self.doc.load(Ordering::SeqCst) {
            readiness.catalog_loaded.store(true, Ordering::Release);
        }
    }

    fn doc_done(&self, readiness: &Readiness) {
        self.doc.store(true, Ordering::SeqCst);
        if self.table.load(Ordering::SeqCst) {
            readiness.catalog_loaded.store(true, Ordering::Release);
        }
    }
}

/// Render the SRV data document for the latest catalog (a watch receiver: catalogs published
/// during a render coalesce into one).
async fn follow_srv_data(
    mut catalogs: consul::watch::CatalogRx,
    config: Arc<Config>,
    domain: String,
    srv_data: Arc<ArcSwap<Bytes>>,
    readiness: Arc<Readiness>,
    loaded: Arc<Loaded>,
) {
    loop {
        let current: Option<Arc<Catalog>> = catalogs.borrow_and_update().clone();
        if let Some(catalog) = current {
            let config = Arc::clone(&config);
            let domain = domain.clone();
            let hint = srv_data.load().len();
            let built = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let doc = SrvData::render_json(&catalog, &config.dns, &domain, hint);
                tracing::debug!(took = ?started.elapsed(), bytes = doc.len(), "srv data rendered");
                doc
            })
            .await;
            match built {
                Ok(doc) => {
                    srv_data.store(Arc::new(Bytes::from(doc)));
                    loaded.doc_done(&readiness);
                }
                Err(e) => tracing::error!(error = %e, "rendering the SRV data failed"),
            }
        }
        if catalogs.changed().await.is_err() {
            return;
        }
    }
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
