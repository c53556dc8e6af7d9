//! The HTTP endpoints: `/metrics`, `/health`, `/ready`, `/v1/catalog`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::DnsConfig;
use crate::consul::Catalog;
use crate::consul::watch::CatalogRx;
use crate::emit::SrvData;
use crate::server::Dispatcher;

/// What `/ready` waits for: the listeners bound and the first complete catalog loaded.
#[derive(Debug, Default)]
pub struct Readiness {
    pub listeners_bound: AtomicBool,
    pub catalog_loaded: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.listeners_bound.load(Ordering::Acquire) && self.catalog_loaded.load(Ordering::Acquire)
    }
}

/// Shared state of the endpoints.
pub struct HttpState {
    pub prometheus: PrometheusHandle,
    pub dispatcher: Arc<Dispatcher>,
    pub readiness: Arc<Readiness>,
    /// The SRV data document of the current catalog, rendered when asked for.
    pub srv_document: Arc<SrvDocument>,
    /// Called at each scrape to refresh gauges that depend on the time of the scrape.
    pub before_scrape: Box<dyn Fn() + Send + Sync>,
}

/// Serve the endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/v1/catalog", get(catalog))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (state.before_scrape)();
    let mut body = state.prometheus.render();
    state.dispatcher.metrics().render_durations(&mut body);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn catalog(State(state): State<Arc<HttpState>>) -> Response {
    if !state.readiness.catalog_loaded.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "no catalog yet\n").into_response();
    }
    match state.srv_document.current().await {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no catalog yet\n").into_response(),
    }
}

/// The SRV data document (`/v1/catalog`), rendered on request from the current catalog and DNS
/// knobs and kept until either changes. At 50,000 instances the document is ~18 MB and takes
/// tens of ms to render: doing it per catalog change, whether or not anyone asks, cost memory
/// and delayed nothing useful (`benches/feed.rs`).
pub struct SrvDocument {
    catalogs: CatalogRx,
    dns: watch::Receiver<Arc<DnsConfig>>,
    domain: String,
    cache: Mutex<Option<Rendered>>,
}

/// The last render and what it was rendered from (weak: an old catalog is not kept alive).
type Rendered = (Weak<Catalog>, Weak<DnsConfig>, Bytes);

impl SrvDocument {
    pub fn new(catalogs: CatalogRx, dns: watch::Receiver<Arc<DnsConfig>>, domain: String) -> Self {
        SrvDocument {
            catalogs,
            dns,
            domain,
            cache: Mutex::new(None),
        }
    }

    /// The document of the current catalog; `None` before the first one.
    pub async fn current(&self) -> Option<Bytes> {
        let catalog = self.catalogs.borrow().clone()?;
        let dns = Arc::clone(&self.dns.borrow());
        if let Some((c, d, bytes)) = &*self.cache.lock().unwrap_or_else(|e| e.into_inner())
            && Weak::ptr_eq(c, &Arc::downgrade(&catalog))
            && Weak::ptr_eq(d, &Arc::downgrade(&dns))
        {
            return Some(bytes.clone());
        }
        let (c, d, domain) = (Arc::clone(&catalog), Arc::clone(&dns), self.domain.clone());
        let doc = tokio::task::spawn_blocking(move || SrvData::render_json(&c, &d, &domain, 0))
            .await
            .ok()?;
        let bytes = Bytes::from(doc);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            Arc::downgrade(&catalog),
            Arc::downgrade(&dns),
            bytes.clone(),
        ));
        Some(bytes)
    }
}
