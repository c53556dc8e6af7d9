//! The HTTP endpoints: `/metrics`, `/health`, `/ready`, `/v1/catalog`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

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
    /// The SRV data document of the current catalog, as served and written.
    pub srv_data: Arc<ArcSwap<Bytes>>,
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
    let body = Bytes::clone(&state.srv_data.load());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
