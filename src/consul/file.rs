//! The `file:` catalog source: a static catalog read from JSON and re-read when it changes.
//!
//! The file holds `{"<service>": [<entry as in /v1/health/service/<service>>, ...], ...}`
//! (DESIGN.md, "Details that tests rely on"). It is polled once a second by modification time
//! and size rather than watched with inotify: one `stat` a second costs nothing, works on every
//! filesystem and sees editors that replace the file by renaming. A file that does not parse
//! keeps the last good catalog and logs the path with serde_json's line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tracing::Instrument;

use super::catalog::{self, Catalog, HealthEntry};
use super::client::ConsulError;
use super::watch::CatalogTx;

/// How often the file's modification time and size are checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of the file without reading it.
type Stamp = (Option<SystemTime>, u64);

/// Load `path` once (an unreadable or invalid file at start is an error), publish it, then
/// re-publish whenever it changes.
pub(crate) fn spawn(
    path: PathBuf,
    datacenter: Option<String>,
    node_name: Option<String>,
    tx: CatalogTx,
) -> Result<JoinHandle<()>, ConsulError> {
    let datacenter = datacenter.unwrap_or_else(|| "dc1".to_string());
    let node_name = node_name.unwrap_or_else(host_name);
    let mut stamp = stamp(&path);
    let first = load(&path, &datacenter, &node_name)?;
    tx.send_replace(Some(Arc::new(first)));
    let span = tracing::info_span!("consul.file", path = %path.display());
    let task = async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = self::stamp(&path);
            if now == stamp {
                continue;
            }
            stamp = now;
            match load(&path, &datacenter, &node_name) {
                Ok(catalog) => {
                    tracing::info!(services = catalog.services.len(), "catalog file reloaded");
                    tx.send_replace(Some(Arc::new(catalog)));
                }
                Err(e) => tracing::warn!(error = %e, "catalog file invalid; keeping the last one"),
            }
        }
    };
    Ok(tokio::spawn(task.instrument(span)))
}

/// Parse a catalog file into a [`Catalog`].
pub fn load(path: &Path, datacenter: &str, node_name: &str) -> Result<Catalog, ConsulError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConsulError::File {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    parse(&text, path, datacenter, node_name)
}

/// Parse catalog JSON read from `path` (for messages).
pub fn parse(
    text: &str,
    path: &Path,
    datacenter: &str,
    node_name: &str,
) -> Result<Catalog, ConsulError> {
    let raw: BTreeMap<String, Vec<HealthEntry>> =
        serde_json::from_str(text).map_err(|e| ConsulError::File {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
    let services = raw
        .into_iter()
        .map(|(name, mut entries)| {
            catalog::sort_entries(&mut entries);
            (name, Arc::from(entries))
        })
        .collect();
    let mut catalog = Catalog {
        datacenter: datacenter.to_string(),
        node_name: node_name.to_string(),
        index: 1,
        services,
        nodes: BTreeMap::new(),
        queries: Arc::from(Vec::new()),
    };
    catalog.index_nodes_from_services();
    Ok(catalog)
}

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, u64::MAX),
    }
}

/// The host name, read from the kernel without `unsafe` (`gethostname` would need it).
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            let name = std::fs::read_to_string(p).ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A catalog file parses into sorted instances with nodes indexed from them.
    #[test]
    fn parses_and_sorts() {
        let text = r#"{"web": [
            {"Node": {"Node": "n2", "Address": "10.0.0.2"}, "Service": {"ID": "w2", "Service": "web", "Port": 80}},
            {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": "w1", "Service": "web", "Port": 80}}
        ], "db": []}"#;
        let c = parse(text, Path::new("c.json"), "dc1", "me").unwrap();
        let web = &c.services["web"];
        assert_eq!(web[0].node.node, "n1");
        assert_eq!(c.nodes.len(), 2);
        assert!(c.services["db"].is_empty());
    }

    /// A parse error names the file, the line and the column.
    #[test]
    fn error_has_line_and_column() {
        let e = parse("{\n  \"web\": [,]\n}", Path::new("/x/c.json"), "dc1", "me").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/x/c.json:2:"), "{msg}");
    }
}
