//! `signpost import-dnsmasq` and `signpost import-consul-dns`: turn the configuration of the
//! resolver signpost replaces into a signpost TOML, with a warning for every option that
//! cannot be carried over.
//!
//! The TOML is built as a [`toml::Table`] and printed by the caller; records that signpost
//! serves from files (dnsmasq `address=`, `srv-host=`, `host-record=`) become a zone file per
//! domain and a hosts file in an output directory, referenced by absolute path so the TOML
//! can be saved anywhere.

pub mod consul;
pub mod dnsmasq;
mod hcl;

use std::path::PathBuf;

/// The result of an import: one table per section of the signpost config.
#[derive(Debug, Default)]
pub struct Imported {
    pub listen: toml::Table,
    pub consul: toml::Table,
    pub dns: toml::Table,
    pub forward: toml::Table,
    /// `[[forward.domain]]` entries.
    pub forward_domains: Vec<toml::Table>,
    pub cache: toml::Table,
    pub zones: toml::Table,
    /// Files to write next to it: (path, contents).
    pub files: Vec<(PathBuf, String)>,
    /// One line per option not carried over, or carried with a difference.
    pub warnings: Vec<String>,
}

/// Why an import failed outright.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

// === impl Imported ===

impl Imported {
    fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// The TOML text, with a header saying where it came from.
    pub fn to_toml(&self, source: &str) -> String {
        let mut config = toml::Table::new();
        let mut forward = self.forward.clone();
        if !self.forward_domains.is_empty() {
            let domains = self.forward_domains.iter().cloned().map(toml::Value::Table);
            forward.insert("domain".into(), toml::Value::Array(domains.collect()));
        }
        for (name, table) in [
            ("listen", &self.listen),
            ("consul", &self.consul),
            ("dns", &self.dns),
            ("forward", &forward),
            ("cache", &self.cache),
            ("zones", &self.zones),
        ] {
            if !table.is_empty() {
                config.insert(name.into(), toml::Value::Table(table.clone()));
            }
        }
        let body = toml::to_string(&config).unwrap_or_default();
        format!(
            "## Imported by signpost from {source}; check it with `signpost check-config`.\n\n{body}"
        )
    }
}
