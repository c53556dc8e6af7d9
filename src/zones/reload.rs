//! Reload local data on change: `zones.dir` and `zones.hosts` are polled every
//! [`POLL_INTERVAL`] (file names, sizes and modification times); on a change everything is
//! loaded again and swapped in whole (the router is rebuilt with the new zone origins). A file
//! that fails to load keeps the previous data in service and is logged with its path and line,
//! once per change (CoreDNS `hosts` re-reads every 5 s; `file` by mtime).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Zones;
use crate::config::ZonesConfig;
use crate::router::Router;
use crate::server::Local;

/// How often the files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the files looked like: (path, length, modification time) of each.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Start the reload task. `domains`: the Consul domains the router keeps in front of the zones.
pub fn spawn_reload(
    config: &ZonesConfig,
    domains: Vec<String>,
    local: Arc<ArcSwap<Local>>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let config = config.clone();
    tokio::spawn(async move {
        if config.dir.is_none() && config.hosts.is_none() {
            return;
        }
        let mut seen = fingerprint(&config);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let now = fingerprint(&config);
            if now == seen {
                continue;
            }
            seen = now;
            match Zones::load(&config) {
                Ok(zones) => {
                    let origins: Vec<String> =
                        zones.zones().iter().map(|z| z.origin.clone()).collect();
                    tracing::info!(
                        zones = origins.len(),
                        hosts = zones.hosts().len(),
                        "local data reloaded"
                    );
                    local.store(Arc::new(Local {
                        router: Router::new(&domains, &origins),
                        zones,
                    }));
                }
                Err(error) => {
                    tracing::warn!(%error, "local data not reloaded; still serving the previous data")
                }
            }
        }
    })
}

/// The state of every file that feeds the local data (a missing file or directory is part of
/// the state, so it appearing again counts as a change).
fn fingerprint(config: &ZonesConfig) -> Fingerprint {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &config.dir {
        files.push(dir.clone());
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "zone")),
            );
        }
    }
    files.extend(config.hosts.iter().cloned());
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect()
}
