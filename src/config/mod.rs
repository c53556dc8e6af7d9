//! Configuration: TOML text → validated [`Config`].
//!
//! Two phases, like hickory's `--validate` and pingora's `validate(self)`: serde reads the raw
//! file with `deny_unknown_fields` on every table, then validation turns strings into typed
//! values (`Duration`, `SocketAddr`, `Name`) and runs whole-config checks. Every error names the
//! file, the key and the line ([`ConfigError`]); `main.rs` exits 78 on one.
//!
//! - `raw.rs`: the file as written (`RawConfig`), its `default_*` values, and phase one (TOML →
//!   `RawConfig`, with `serde_path_to_error` for the dotted key and toml's span for the line).
//! - `validate.rs`: phase two (`RawConfig` → [`Config`]), flags applied first, lines of keys
//!   found with `toml_edit` spans.
//! - `config/signpost.toml` at the repository root lists every key with its default and why.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;

mod raw;
mod validate;

use validate::Source;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/signpost/signpost.toml";

/// A validated configuration. Relative paths are already resolved against the config file's
/// directory.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this came from, if any (for messages).
    pub path: Option<PathBuf>,
    pub listen: ListenConfig,
    pub consul: ConsulConfig,
    pub dns: DnsConfig,
    pub forward: ForwardConfig,
    pub cache: CacheConfig,
    pub zones: ZonesConfig,
    pub emit: EmitConfig,
    pub log: LogConfig,
}

/// `[log]`
#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    /// Log every query (`--log-queries` also turns it on). Lines go through a bounded queue
    /// to a writer thread; when it is full they are dropped and counted
    /// (`signpost_query_log_dropped_total`), so logging never slows an answer.
    pub queries: bool,
}

/// `[listen]`
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// Each address serves UDP and TCP.
    pub dns: Vec<SocketAddr>,
    /// `None` when `http = ""`.
    pub http: Option<SocketAddr>,
    /// UDP sockets (and threads) per DNS address; 0 = one per core.
    pub udp_workers: usize,
    /// Most TCP connections served at once, over all addresses.
    pub tcp_max_connections: usize,
    /// A TCP connection with no query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

/// Where the catalog comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsulSource {
    /// `http://host:port` or `https://host:port` (kept without a trailing slash).
    Agent(String),
    /// `file:PATH`: a static catalog, re-read when it changes.
    File(PathBuf),
}

/// `[consul]`
#[derive(Clone, Debug)]
pub struct ConsulConfig {
    pub address: ConsulSource,
    pub token_file: Option<PathBuf>,
    /// Lowercase, fully qualified (`consul.`).
    pub domain: Name,
    pub alt_domain: Option<Name>,
    /// `None` = ask the agent.
    pub datacenter: Option<String>,
    /// `None` = ask the agent.
    pub node_name: Option<String>,
    pub max_connections: usize,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The `wait` of blocking queries.
    pub wait: Duration,
    /// How often prepared query definitions are polled.
    pub query_poll_interval: Duration,
}

/// `[dns]`: Consul's `dns_config` names and defaults, except where DESIGN.md marks a difference.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Seconds.
    pub node_ttl: u32,
    pub service_ttl: ServiceTtl,
    pub only_passing: bool,
    /// At most 8: like Consul, larger values count as 8 (`reference/consul-dns.md` §4).
    pub udp_answer_limit: usize,
    pub a_record_limit: usize,
    pub enable_truncate: bool,
    pub enable_additional_node_meta_txt: bool,
    /// Lowercased.
    pub filter_tags: Vec<String>,
    pub soa: SoaConfig,
}

/// `dns.service_ttl`: exact name beats the longest `prefix*` beats `*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTtl {
    /// Keys as written (lowercased), values in seconds.
    pub entries: BTreeMap<String, u32>,
}

/// `dns.soa` (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoaConfig {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub min_ttl: u32,
}

/// One upstream resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    Addr(SocketAddr),
    /// The `nameserver` lines of a resolv.conf file (normally `/etc/resolv.conf`), minus
    /// signpost's own listen addresses.
    ResolvConf(PathBuf),
}

/// How the upstreams of one list are tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    Sequential,
    Random,
    Fastest,
}

/// `[forward]`
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub upstreams: Vec<Upstream>,
    pub timeout: Duration,
    pub strategy: Strategy,
    pub domains: Vec<ForwardDomain>,
    /// Forwarded queries in flight at once; beyond it clients get REFUSED.
    pub max_in_flight: usize,
}

/// `[[forward.domain]]`: conditional forwarding, like dnsmasq `server=/name/ip`.
#[derive(Clone, Debug)]
pub struct ForwardDomain {
    pub name: Name,
    pub upstreams: Vec<Upstream>,
}

/// `[cache]` (forwarded answers only).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub size: u64,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_max_ttl: Duration,
    pub servfail_ttl: Duration,
    /// How long past expiry an entry may still be served when every upstream fails.
    pub serve_stale: Duration,
    /// TTL of a stale answer.
    pub stale_ttl: Duration,
    /// RFC 8767 §5 client response timer: how long a client whose question has a stale entry
    /// waits for the upstream before it gets the stale answer (the refresh goes on). Zero: only
    /// when every upstream has failed.
    pub stale_answer_timeout: Duration,
}

/// `[zones]`
#[derive(Clone, Debug, Default)]
pub struct ZonesConfig {
    pub dir: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
}

/// `[emit]`
#[derive(Clone, Debug, Default)]
pub struct EmitConfig {
    pub srv_file: Option<PathBuf>,
    pub templates: Vec<TemplateConfig>,
}

/// `[[emit.template]]`
#[derive(Clone, Debug)]
pub struct TemplateConfig {
    /// The template file, or with [`TemplateMode::Dir`] the `template_dir`.
    pub source: PathBuf,
    pub mode: TemplateMode,
    pub destination: PathBuf,
    pub check: Option<String>,
    pub reload: Option<String>,
    pub wait_min: Duration,
    pub wait_max: Duration,
    pub perms: Option<u32>,
    pub command_timeout: Duration,
}

/// What `source` of a [`TemplateConfig`] names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TemplateMode {
    /// One minijinja template file (`source`).
    #[default]
    File,
    /// A directory (`template_dir`): `*.tmpl` rendered, `*.conf` copied, in name order, into
    /// one destination (python-confd).
    Dir,
}

/// Values from the command line; each replaces the file's value (`--listen` replaces
/// `listen.dns`, it does not add to it).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub http: Option<String>,
    pub consul: Option<String>,
    pub upstreams: Vec<String>,
}

/// An invalid configuration: which file, which key, which line, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The config file, or `command line` for a flag.
    pub file: PathBuf,
    /// Dotted key path (`forward.timeout`), or the flag (`--listen`).
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

// === impl Config ===

impl Config {
    /// Read the configuration: `path`, else [`DEFAULT_CONFIG_PATH`] if it exists, else built-in
    /// defaults; then apply `overrides` and validate everything.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let path = match path {
            Some(path) => path,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => Path::new(DEFAULT_CONFIG_PATH),
            None => return Config::from_source("", None, overrides),
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: "--config".to_owned(),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::from_source(&text, Some(path), overrides)
    }

    /// Parse and validate `text` as if read from `path` (relative paths resolve against its
    /// directory).
    ///
    /// `Config::parse("", Path::new("signpost.toml"), &Overrides::default())` gives the
    /// built-in defaults.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::from_source(text, Some(path), overrides)
    }

    fn from_source(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut src = match path {
            Some(path) => Source::file(path, text),
            None => Source::defaults(),
        };
        let mut raw = raw::parse(text, &src)?;
        validate::apply_overrides(&mut raw, &mut src, overrides);
        validate::validate(raw, &src, path.map(Path::to_path_buf))
    }
}

// === impl ServiceTtl ===

impl ServiceTtl {
    /// The TTL for `service` (lowercase): exact key, else the longest matching `prefix*`, else
    /// `*`, else 0 (`reference/consul-dns.md` §4).
    pub fn lookup(&self, service: &str) -> u32 {
        if let Some(ttl) = self.entries.get(service) {
            return *ttl;
        }
        let mut best: Option<(usize, u32)> = None;
        for (key, ttl) in &self.entries {
            if let Some(prefix) = key.strip_suffix('*')
                && service.starts_with(prefix)
                && best.is_none_or(|(len, _)| prefix.len() > len)
            {
                best = Some((prefix.len(), *ttl));
            }
        }
        best.map(|(_, ttl)| ttl).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
