//! Emit: the catalog written out for other programs. For now the SRV data document, served at
//! `/v1/catalog` and written to `emit.srv_file`; templates come with their own issue.
//!
//! The document is deterministic (sorted maps, instances sorted by node, port, ID) so that it
//! is written only when its content changes, and so that diffs of it mean something.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::config::DnsConfig;
use crate::consul::answer::{srv_target, srv_weight};
use crate::consul::catalog::{Catalog, Health};

/// The SRV data document (DESIGN.md, "SRV data").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SrvData {
    pub datacenter: String,
    pub index: u64,
    pub services: BTreeMap<String, Vec<SrvInstance>>,
}

/// One instance: what DNS answers (`role = "active"`), or a filter-tagged standby that DNS
/// never returns but a template may render as a backup server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SrvInstance {
    pub id: String,
    pub node: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub status: &'static str,
    pub weight: u16,
    pub role: &'static str,
    pub target: String,
}

// === impl SrvData ===

impl SrvData {
    /// Build the document from `catalog`. Critical instances are left out; with
    /// `only_passing`, warning ones too, as DNS would. `domain` is the primary domain, lowercase
    /// dotted without the final dot.
    pub fn build(catalog: &Catalog, dns: &DnsConfig, domain: &str) -> SrvData {
        let services = catalog
            .services
            .iter()
            .map(|(name, entries)| {
                let instances = entries
                    .iter()
                    .filter_map(|e| {
                        let status = match e.health() {
                            Health::Passing => "passing",
                            Health::Warning if !dns.only_passing => "warning",
                            _ => return None,
                        };
                        let standby = e.has_any_tag(&dns.filter_tags);
                        Some(SrvInstance {
                            id: e.service.id.clone(),
                            node: e.node.node.clone(),
                            address: e.address().to_owned(),
                            port: e.service.port,
                            tags: e.service.tags.clone(),
                            meta: e.service.meta.clone(),
                            status,
                            weight: srv_weight(e),
                            role: if standby { "standby" } else { "active" },
                            target: srv_target(e, domain, &catalog.datacenter),
                        })
                    })
                    .collect();
                (name.clone(), instances)
            })
            .collect();
        SrvData {
            datacenter: catalog.datacenter.clone(),
            index: catalog.index,
            services,
        }
    }

    /// Pretty, sorted JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Replace `path` with `bytes` atomically (a temporary file in the same directory, fsync,
/// rename) unless it already holds exactly those bytes. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("srv");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::answer::tests::{catalog, dns_config, entry};

    /// Standbys are listed with role "standby", critical instances are left out, the document
    /// is sorted, and an unchanged document is not rewritten.
    #[test]
    fn srv_data_document() {
        let mut standby = entry("n2", "10.0.0.2", "db", "", 5432);
        standby.service.tags = vec!["nodns".into()];
        let mut critical = entry("n3", "10.0.0.3", "db", "", 5432);
        critical.checks.push(crate::consul::catalog::Check {
            status: "critical".into(),
            ..Default::default()
        });
        let c = catalog(vec![
            entry("n1", "10.0.0.1", "db", "", 5432),
            standby,
            critical,
            entry("n1", "10.0.0.1", "api", "10.0.0.9", 80),
        ]);
        let doc = SrvData::build(&c, &dns_config(), "consul");
        assert_eq!(doc.services.keys().collect::<Vec<_>>(), ["api", "db"]);
        let db = &doc.services["db"];
        assert_eq!(db.len(), 2);
        assert_eq!((db[0].role, db[1].role), ("active", "standby"));
        assert_eq!(db[0].target, "n1.node.dc1.consul.");
        assert_eq!(doc.services["api"][0].target, "0a000009.addr.dc1.consul.");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("srv.json");
        assert!(write_if_changed(&path, &doc.to_json()).unwrap());
        assert!(!write_if_changed(&path, &doc.to_json()).unwrap());
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["services"]["db"][1]["role"], "standby");
    }
}
