//! The catalog feed (placeholder until the watcher lands).
use std::sync::Arc;

use crate::config::ConsulConfig;
use crate::consul::Catalog;

pub type CatalogRx = tokio::sync::watch::Receiver<Option<Arc<Catalog>>>;

pub fn spawn(
    _config: &ConsulConfig,
) -> Result<(CatalogRx, tokio::task::JoinHandle<()>), crate::consul::client::ConsulError> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    Ok((rx, tokio::spawn(async move { tx.closed().await })))
}

/// Placeholder.
pub fn refresh_age_gauge() {}
