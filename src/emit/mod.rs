//! Emit: the catalog written out for other programs: the SRV data document (served at
//! `/v1/catalog`, written to `emit.srv_file`) and templates rendered from it, checked,
//! swapped in and reloaded, so that the proxy and DNS never disagree and a bad render never
//! reaches the proxy.
//!
//! The document is deterministic (sorted maps, instances sorted by node, port, ID) so that it
//! is written only when its content changes, and so that diffs of it mean something.
//!
//! - `task.rs`: [`spawn`], the data loop and one quiescence loop per template.
//! - `pipeline.rs`: one render: render → compare → temp file → check → rename → reload.
//! - `render.rs`: minijinja and the template helpers.
//! - `command.rs`: check and reload commands, without a shell, with a timeout.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

mod command;
mod pipeline;
mod render;
mod task;

pub use command::{CommandOutcome, split as split_command};
pub use pipeline::{RenderCounts, RenderResult, write_if_changed};
pub use render::{RenderError, ident, render};
pub use task::{Emitter, spawn};

use crate::config::{DnsConfig, EmitConfig};
use crate::consul::answer::{srv_target, srv_weight};
use crate::consul::catalog::{Catalog, Health, HealthEntry};

/// The SRV data document (DESIGN.md, "SRV data").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SrvData {
    pub datacenter: String,
    pub index: u64,
    /// Each service's list is shared between successive documents while its entries in the
    /// catalog are (see [`SrvData::update`]).
    pub services: BTreeMap<String, Arc<Vec<SrvInstance>>>,
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
        Self::make(None, catalog, dns, domain)
    }

    /// [`SrvData::build`] for `catalog`, reusing the instance list of every service whose
    /// entries are the same `Arc` as in `prev_catalog` (the watcher shares unchanged services
    /// between catalogs), from `prev`, which was built from `prev_catalog` with the same `dns`
    /// and `domain`. A change of one service at 50,000 instances then costs that service, not
    /// a copy of every instance.
    pub fn update(
        prev: &SrvData,
        prev_catalog: &Catalog,
        catalog: &Catalog,
        dns: &DnsConfig,
        domain: &str,
    ) -> SrvData {
        let same_dc =
            prev.datacenter == catalog.datacenter && prev_catalog.datacenter == catalog.datacenter;
        Self::make(
            same_dc.then_some((prev, prev_catalog)),
            catalog,
            dns,
            domain,
        )
    }

    fn make(
        prev: Option<(&SrvData, &Catalog)>,
        catalog: &Catalog,
        dns: &DnsConfig,
        domain: &str,
    ) -> SrvData {
        let services = catalog
            .services
            .iter()
            .map(|(name, entries)| {
                let reused = prev.and_then(|(doc, old)| {
                    let same = old
                        .services
                        .get(name)
                        .is_some_and(|o| Arc::ptr_eq(o, entries));
                    same.then(|| doc.services.get(name).cloned()).flatten()
                });
                let instances = reused.unwrap_or_else(|| {
                    Arc::new(
                        entries
                            .iter()
                            .filter_map(|e| SrvInstance::of(e, dns, domain, &catalog.datacenter))
                            .collect(),
                    )
                });
                (name.clone(), instances)
            })
            .collect();
        SrvData {
            datacenter: catalog.datacenter.clone(),
            index: catalog.index,
            services,
        }
    }

    /// `SrvData::build(..).to_json()`, byte for byte, serialized straight from the catalog:
    /// no document is built in memory (at 50,000 instances it was tens of MiB next to the
    /// output on every catalog), and the output starts with `size_hint` bytes of capacity
    /// (the previous document's length) so that it is not regrown.
    pub fn render_json(
        catalog: &Catalog,
        dns: &DnsConfig,
        domain: &str,
        size_hint: usize,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(size_hint.saturating_add(4096));
        let view = DocView {
            catalog,
            dns,
            domain,
        };
        if serde_json::to_writer_pretty(&mut out, &view).is_err() {
            out.clear();
        }
        out.push(b'\n');
        out.shrink_to_fit();
        out
    }

    /// Pretty, sorted JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

// === impl SrvInstance ===

impl SrvInstance {
    /// The instance as the document lists it, or `None` when DNS would not answer it for its
    /// health (critical; warning with `only_passing`).
    fn of(e: &HealthEntry, dns: &DnsConfig, domain: &str, datacenter: &str) -> Option<SrvInstance> {
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
            target: srv_target(e, domain, datacenter),
        })
    }
}

/// The document as [`SrvData`] serializes, borrowed from the catalog (same field order).
struct DocView<'a> {
    catalog: &'a Catalog,
    dns: &'a DnsConfig,
    domain: &'a str,
}

impl Serialize for DocView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};

        struct Instances<'a>(&'a DocView<'a>, &'a [HealthEntry]);
        impl Serialize for Instances<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let Instances(doc, entries) = self;
                let dc = &doc.catalog.datacenter;
                s.collect_seq(
                    entries
                        .iter()
                        .filter_map(|e| SrvInstance::of(e, doc.dns, doc.domain, dc)),
                )
            }
        }
        struct Services<'a>(&'a DocView<'a>);
        impl Serialize for Services<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let services = &self.0.catalog.services;
                let mut map = s.serialize_map(Some(services.len()))?;
                for (name, entries) in services {
                    map.serialize_entry(name, &Instances(self.0, entries))?;
                }
                map.end()
            }
        }
        let mut st = s.serialize_struct("SrvData", 3)?;
        st.serialize_field("datacenter", &self.catalog.datacenter)?;
        st.serialize_field("index", &self.catalog.index)?;
        st.serialize_field("services", &Services(self))?;
        st.end()
    }
}

/// What one output of [`render_once`] came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnceResult {
    /// The SRV data file or the template's source.
    pub name: String,
    pub result: RenderResult,
}

/// `signpost render --once`: write the SRV data file and apply every template once to `data`,
/// without quiescence. With `dry_run`, print each output to `out` instead (headed by
/// `==> destination <==` when there are several) and write or run nothing.
pub async fn render_once(
    config: &EmitConfig,
    data: std::sync::Arc<SrvData>,
    domain: &str,
    dry_run: bool,
    out: &mut dyn Write,
) -> Vec<OnceResult> {
    let mut results = Vec::new();
    let several = config.templates.len() + usize::from(config.srv_file.is_some()) > 1;
    let mut print = |dest: &std::path::Path, bytes: &[u8]| -> RenderResult {
        let header = format!("==> {} <==\n", dest.display());
        let written = (if several {
            out.write_all(header.as_bytes())
        } else {
            Ok(())
        })
        .and_then(|()| out.write_all(bytes))
        .and_then(|()| out.flush());
        match written {
            Ok(()) => RenderResult::Ok,
            Err(_) => RenderResult::WriteError,
        }
    };
    if let Some(path) = &config.srv_file {
        let json = data.to_json();
        let result = if dry_run {
            print(path, &json)
        } else {
            match write_if_changed(path, &json) {
                Ok(true) => RenderResult::Ok,
                Ok(false) => RenderResult::Unchanged,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the SRV data file");
                    RenderResult::WriteError
                }
            }
        };
        results.push(OnceResult {
            name: path.display().to_string(),
            result,
        });
    }
    for template in &config.templates {
        let name = template.source.display().to_string();
        let result = if dry_run {
            match render(template, &data, domain) {
                Ok(bytes) => print(&template.destination, &bytes),
                Err(e) => {
                    tracing::warn!(template = %name, line = ?e.line(), error = %e, "template failed to render");
                    RenderResult::RenderError
                }
            }
        } else {
            pipeline::apply(template, std::sync::Arc::clone(&data), domain).await
        };
        if !dry_run {
            result.record();
        }
        results.push(OnceResult { name, result });
    }
    results
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
        assert_eq!(
            SrvData::render_json(&c, &dns_config(), "consul", 0),
            doc.to_json(),
            "the streamed document is the built one"
        );
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

    /// An update equals a full build of the new catalog, shares the lists of services whose
    /// entries did not change, and rebuilds the changed and the new ones.
    #[test]
    fn update_reuses_unchanged_services() {
        let before = catalog(vec![
            entry("n1", "10.0.0.1", "db", "", 5432),
            entry("n1", "10.0.0.1", "api", "", 80),
        ]);
        let mut after = before.clone();
        let mut critical = entry("n1", "10.0.0.1", "api", "", 80);
        critical.checks.push(crate::consul::catalog::Check {
            status: "critical".into(),
            ..Default::default()
        });
        after
            .services
            .insert("api".into(), Arc::from(vec![critical]));
        after.services.insert(
            "web".into(),
            Arc::from(vec![entry("n2", "10.0.0.2", "web", "", 8080)]),
        );
        let dns = dns_config();
        let old = SrvData::build(&before, &dns, "consul");
        let new = SrvData::update(&old, &before, &after, &dns, "consul");
        assert_eq!(new, SrvData::build(&after, &dns, "consul"));
        assert!(Arc::ptr_eq(&old.services["db"], &new.services["db"]));
        assert!(
            new.services["api"].is_empty(),
            "rebuilt: the instance is critical"
        );
        assert_eq!(new.services["web"].len(), 1);
        // Another datacenter shares nothing.
        let mut elsewhere = after.clone();
        elsewhere.datacenter = "dc2".into();
        let moved = SrvData::update(&new, &after, &elsewhere, &dns, "consul");
        assert!(!Arc::ptr_eq(&new.services["db"], &moved.services["db"]));
        assert_eq!(moved.datacenter, "dc2");
    }

    /// Commands split like a shell (quotes kept together), expand nothing, and get `{file}`
    /// replaced inside any argument.
    #[test]
    fn commands_split_without_a_shell() {
        let file = std::path::Path::new("/tmp/a b.cfg");
        assert_eq!(
            split_command("haproxy -c -q -f {file}", Some(file)).unwrap(),
            ["haproxy", "-c", "-q", "-f", "/tmp/a b.cfg"]
        );
        assert_eq!(
            split_command("check --config={file} 'two words' $HOME", Some(file)).unwrap(),
            ["check", "--config=/tmp/a b.cfg", "two words", "$HOME"]
        );
        assert!(split_command("  ", None).is_err());
        assert!(split_command("echo 'open", None).is_err());
    }
}
