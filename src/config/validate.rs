//! Phase two: [`RawConfig`] → [`Config`], and the whole-config checks.
//!
//! Every check names its key as a [`KeyPath`]; [`Source::error`] turns that into a
//! [`ConfigError`] with the line the key sits on (from `toml_edit` spans), or names the flag
//! when the value came from the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;

use super::raw::{
    RawCache, RawConfig, RawConsul, RawDns, RawDuration, RawEmit, RawForward, RawListen, RawPerms,
    RawTemplate, RawZones, default_wait_max, default_wait_min,
};
use super::{
    CacheConfig, Config, ConfigError, ConsulConfig, ConsulSource, DnsConfig, EmitConfig,
    ForwardConfig, ForwardDomain, ListenConfig, LogConfig, Overrides, ServiceTtl, SoaConfig,
    Strategy, TemplateConfig, TemplateMode, Upstream, ZonesConfig,
};

/// What `resolv.conf` in an upstream list stands for.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Consul caps the non-EDNS UDP answer count at 8 whatever `udp_answer_limit` says
/// (`reference/consul-dns.md` §4, `trimDNSResponse`).
const MAX_UDP_ANSWER_LIMIT: usize = 8;

/// Consul's `max_query_time`: a blocking query never waits longer than this.
const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// RFC 2181 §8: a TTL is an unsigned 31-bit number of seconds.
const MAX_TTL_SECS: u64 = (1 << 31) - 1;

/// Where the text came from: file name for messages, directory for relative paths, spans for
/// lines, and which keys the command line replaced.
pub(super) struct Source {
    /// Named in messages.
    file: PathBuf,
    /// Relative paths in the file resolve against this (the config file's directory).
    base: Option<PathBuf>,
    /// Line starts come from here.
    text: String,
    /// Spans of keys and values; `None` for built-in defaults.
    doc: Option<toml_edit::Document<String>>,
    /// `(key prefix, flag)` for each value replaced by a flag.
    overridden: Vec<(&'static str, &'static str)>,
}

/// A dotted key path: `forward.domain[1].upstreams`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyPath(Vec<Seg>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

// === impl KeyPath ===

impl KeyPath {
    /// `dotted` must not hold map keys that contain dots; use [`KeyPath::key`] for those.
    fn new(dotted: &str) -> Self {
        KeyPath(dotted.split('.').map(|k| Seg::Key(k.to_owned())).collect())
    }

    fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }

    fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// === impl Source ===

impl Source {
    /// A file's text. `doc` is parsed here only for spans; syntax errors are reported by the
    /// serde pass, which runs first.
    pub(super) fn file(path: &Path, text: &str) -> Self {
        let base = path.parent().map(Path::to_path_buf);
        Source {
            file: path.to_path_buf(),
            base,
            text: text.to_owned(),
            doc: toml_edit::Document::parse(text.to_owned()).ok(),
            overridden: Vec::new(),
        }
    }

    /// No file: built-in defaults (plus flags).
    pub(super) fn defaults() -> Self {
        Source {
            file: PathBuf::from("built-in defaults"),
            base: None,
            text: String::new(),
            doc: None,
            overridden: Vec::new(),
        }
    }

    /// An error found while reading the text, at a byte span.
    pub(super) fn error_at(
        &self,
        key: &str,
        span: Option<std::ops::Range<usize>>,
        message: &str,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: if key.is_empty() || key == "?" {
                "(top level)".to_owned()
            } else {
                key.to_owned()
            },
            line: span.map(|s| self.line_at(s.start)),
            message: message.to_owned(),
        }
    }

    /// A line number (1-based) for a byte offset into the text.
    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The error for `key`. `element` points the line at one entry of a list of scalars
    /// (`listen.dns`), whose key is named without the index.
    fn error(
        &self,
        key: &KeyPath,
        element: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let dotted = key.to_string();
        if let Some(flag) = self.flag_for(&dotted) {
            return ConfigError {
                file: PathBuf::from("command line"),
                key: flag.to_owned(),
                line: None,
                message: message.into(),
            };
        }
        let line = match element {
            Some(n) => self.line_of(&key.index(n)),
            None => self.line_of(key),
        };
        ConfigError {
            file: self.file.clone(),
            key: dotted,
            line,
            message: message.into(),
        }
    }

    fn flag_for(&self, dotted: &str) -> Option<&'static str> {
        self.overridden.iter().find_map(|(prefix, flag)| {
            let rest = dotted.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')).then_some(*flag)
        })
    }

    /// The line of `key`, or of the nearest enclosing key present in the file (a value left
    /// to its default is reported at its table).
    fn line_of(&self, key: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        let mut span = None;
        for seg in &key.0 {
            let next = match seg {
                Seg::Key(k) => item
                    .as_table_like()
                    .and_then(|t| t.get_key_value(k))
                    .map(|(key, value)| (key.span().or_else(|| value.span()), value)),
                Seg::Index(n) => item.get(*n).map(|value| (value.span(), value)),
            };
            let Some((s, value)) = next else { break };
            span = s.or(span);
            item = value;
        }
        span.map(|s| self.line_at(s.start))
    }

    /// A path from the file, relative to its directory.
    fn resolve(&self, path: &str) -> PathBuf {
        match &self.base {
            Some(base) => base.join(path),
            None => PathBuf::from(path),
        }
    }

    /// A path from `key`: relative to the config file, or as given when it came from a flag
    /// (relative to the working directory, as a shell user expects).
    fn resolve_at(&self, key: &KeyPath, path: &str) -> PathBuf {
        if self.flag_for(&key.to_string()).is_some() {
            PathBuf::from(path)
        } else {
            self.resolve(path)
        }
    }
}

/// Flags replace file values before validation; errors in them name the flag.
pub(super) fn apply_overrides(raw: &mut RawConfig, src: &mut Source, overrides: &Overrides) {
    if !overrides.listen.is_empty() {
        raw.listen.dns = overrides.listen.clone();
        src.overridden.push(("listen.dns", "--listen"));
    }
    if let Some(http) = &overrides.http {
        raw.listen.http = http.clone();
        src.overridden.push(("listen.http", "--http"));
    }
    if let Some(consul) = &overrides.consul {
        raw.consul.address = consul.clone();
        src.overridden.push(("consul.address", "--consul"));
    }
    if !overrides.upstreams.is_empty() {
        raw.forward.upstreams = overrides.upstreams.clone();
        src.overridden.push(("forward.upstreams", "--upstream"));
    }
}

/// Phase two: typed values, then the checks that span tables.
pub(super) fn validate(
    raw: RawConfig,
    src: &Source,
    path: Option<PathBuf>,
) -> Result<Config, ConfigError> {
    let listen = listen(&raw.listen, src)?;
    let consul = consul(&raw.consul, src)?;
    let dns = dns(&raw.dns, src)?;
    let forward = forward(&raw.forward, src)?;
    let cache = cache(&raw.cache, src)?;
    let zones = zones(&raw.zones, src)?;
    let emit = emit(&raw.emit, src)?;
    let config = Config {
        path,
        listen,
        consul,
        dns,
        forward,
        cache,
        zones,
        emit,
        log: LogConfig {
            queries: raw.log.queries,
        },
    };
    check_forward_domains(&config, src)?;
    check_loops(&config, src)?;
    Ok(config)
}

// === [listen] ===

fn listen(raw: &RawListen, src: &Source) -> Result<ListenConfig, ConfigError> {
    let key = KeyPath::new("listen.dns");
    if raw.dns.is_empty() {
        return Err(src.error(&key, None, "at least one address is needed"));
    }
    let mut dns = Vec::with_capacity(raw.dns.len());
    for (i, text) in raw.dns.iter().enumerate() {
        let addr = socket_addr(text).map_err(|m| src.error(&key, Some(i), m))?;
        if dns.contains(&addr) {
            return Err(src.error(&key, Some(i), format!("`{addr}` is listed twice")));
        }
        dns.push(addr);
    }
    let key = KeyPath::new("listen.http");
    let http = match raw.http.trim() {
        "" => None,
        text => Some(socket_addr(text).map_err(|m| src.error(&key, None, m))?),
    };
    if raw.tcp_max_connections == 0 {
        return Err(src.error(
            &KeyPath::new("listen.tcp_max_connections"),
            None,
            "must be at least 1",
        ));
    }
    let tcp_idle_timeout = positive(
        src,
        &KeyPath::new("listen.tcp_idle_timeout"),
        &raw.tcp_idle_timeout,
    )?;
    Ok(ListenConfig {
        dns,
        http,
        udp_workers: raw.udp_workers,
        tcp_max_connections: raw.tcp_max_connections,
        tcp_idle_timeout,
    })
}

/// `IP:port` or `[v6]:port`; port 0 is allowed (tests bind ephemeral ports).
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("`{text}` is not an address of the form IP:port or [IPv6]:port"))
}

// === [consul] ===

fn consul(raw: &RawConsul, src: &Source) -> Result<ConsulConfig, ConfigError> {
    let address = consul_source(src, &KeyPath::new("consul.address"), &raw.address)?;
    let domain_key = KeyPath::new("consul.domain");
    let domain = domain_name(&raw.domain).map_err(|m| src.error(&domain_key, None, m))?;
    let alt_key = KeyPath::new("consul.alt_domain");
    let alt_domain = match raw.alt_domain.trim() {
        "" => None,
        text => {
            let alt = domain_name(text).map_err(|m| src.error(&alt_key, None, m))?;
            if alt == domain {
                return Err(src.error(
                    &alt_key,
                    None,
                    format!("`{alt}` is the same as consul.domain"),
                ));
            }
            // One may contain the other, as in Consul (`alt_domain = "test.consul."` beside
            // `consul.`, its AltDomains_Overlap test): the longest matching domain wins.
            Some(alt)
        }
    };
    let datacenter = optional_word(src, &KeyPath::new("consul.datacenter"), &raw.datacenter)?;
    let node_name = optional_word(src, &KeyPath::new("consul.node_name"), &raw.node_name)?;
    if raw.max_connections < crate::consul::watch::MIN_CONNECTIONS {
        // Three blocking watches (services, health state, nodes) each hold a connection for up
        // to `wait`, and fetches, prepared-query polls and `/execute` need at least one more.
        return Err(src.error(
            &KeyPath::new("consul.max_connections"),
            None,
            format!(
                "must be at least {} (three watches and one fetch), not {}",
                crate::consul::watch::MIN_CONNECTIONS,
                raw.max_connections
            ),
        ));
    }
    let token_file = optional_path(
        src,
        &KeyPath::new("consul.token_file"),
        &raw.token_file,
        false,
    )?;
    let ca_file = optional_path(src, &KeyPath::new("consul.ca_file"), &raw.ca_file, true)?;
    let cert_file = optional_path(src, &KeyPath::new("consul.cert_file"), &raw.cert_file, true)?;
    let key_file = optional_path(src, &KeyPath::new("consul.key_file"), &raw.key_file, true)?;
    if cert_file.is_some() != key_file.is_some() {
        let missing = if cert_file.is_some() {
            "consul.key_file"
        } else {
            "consul.cert_file"
        };
        let given = if cert_file.is_some() {
            "consul.cert_file"
        } else {
            "consul.key_file"
        };
        return Err(src.error(
            &KeyPath::new(given),
            None,
            format!("needs {missing} as well"),
        ));
    }
    let wait_key = KeyPath::new("consul.wait");
    let wait = positive(src, &wait_key, &raw.wait)?;
    if wait > MAX_CONSUL_WAIT {
        return Err(src.error(
            &wait_key,
            None,
            "must be at most 10m (Consul's max_query_time)",
        ));
    }
    let query_poll_interval = positive(
        src,
        &KeyPath::new("consul.query_poll_interval"),
        &raw.query_poll_interval,
    )?;
    Ok(ConsulConfig {
        address,
        token_file,
        domain,
        alt_domain,
        datacenter,
        node_name,
        max_connections: raw.max_connections,
        ca_file,
        cert_file,
        key_file,
        wait,
        query_poll_interval,
    })
}

/// `http://host:port`, `https://host:port` (a trailing `/` dropped) or `file:PATH`.
fn consul_source(src: &Source, key: &KeyPath, text: &str) -> Result<ConsulSource, ConfigError> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("file:") {
        if path.is_empty() {
            return Err(src.error(key, None, "`file:` needs a path"));
        }
        let path = src.resolve_at(key, path);
        if !path.is_file() {
            return Err(src.error(
                key,
                None,
                format!("catalog file `{}` does not exist", path.display()),
            ));
        }
        return Ok(ConsulSource::File(path));
    }
    let bad = || {
        src.error(
            key,
            None,
            format!("`{text}` is not http://host:port, https://host:port or file:PATH"),
        )
    };
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.contains(char::is_whitespace)
    {
        return Err(bad());
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
        src.error(
            key,
            None,
            format!("`{text}` needs a port (the agent's HTTP port is 8500)"),
        )
    })?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains([':', '[', ']']),
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && host_ok => {
            Ok(ConsulSource::Agent(text.trim_end_matches('/').to_owned()))
        }
        _ => Err(bad()),
    }
}

/// A domain name, fully qualified and lowercased (`consul` → `consul.`); never the root.
fn domain_name(text: &str) -> Result<Name, String> {
    let text = text.trim();
    let mut name =
        Name::from_ascii(text).map_err(|e| format!("`{text}` is not a domain name: {e}"))?;
    name.set_fqdn(true);
    if name.is_root() {
        return Err("the root domain `.` is not allowed here".to_owned());
    }
    Ok(name.to_lowercase())
}

/// `""` → `None`; else a datacenter or node name: letters, digits, `-`, `_`, `.`.
fn optional_word(src: &Source, key: &KeyPath, text: &str) -> Result<Option<String>, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(src.error(
            key,
            None,
            format!("`{text}` may only hold letters, digits, `-`, `_` and `.`"),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// `""` → `None`; else a path resolved against the config file, checked to exist when
/// `must_exist`.
fn optional_path(
    src: &Source,
    key: &KeyPath,
    text: &str,
    must_exist: bool,
) -> Result<Option<PathBuf>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let path = src.resolve_at(key, text);
    if must_exist && !path.exists() {
        return Err(src.error(key, None, format!("`{}` does not exist", path.display())));
    }
    Ok(Some(path))
}

// === [dns] ===

fn dns(raw: &RawDns, src: &Source) -> Result<DnsConfig, ConfigError> {
    let node_ttl = ttl_secs(src, &KeyPath::new("dns.node_ttl"), &raw.node_ttl)?;
    let ttl_key = KeyPath::new("dns.service_ttl");
    let mut entries = BTreeMap::new();
    for (name, value) in &raw.service_ttl {
        let key = ttl_key.key(name);
        let lower = name.trim().to_ascii_lowercase();
        let star = lower.find('*');
        if lower.is_empty() || star.is_some_and(|i| i + 1 != lower.len()) {
            return Err(src.error(
                &key,
                None,
                "a key is a service name, a `prefix*` or `*` (`*` only at the end)",
            ));
        }
        let secs = ttl_secs(src, &key, value)?;
        if entries.insert(lower.clone(), secs).is_some() {
            return Err(src.error(
                &key,
                None,
                format!("`{lower}` is listed twice (keys are case-insensitive)"),
            ));
        }
    }
    let tags_key = KeyPath::new("dns.filter_tags");
    let mut filter_tags: Vec<String> = Vec::with_capacity(raw.filter_tags.len());
    for (i, tag) in raw.filter_tags.iter().enumerate() {
        // Consul matches tags case-insensitively; so do filter tags (DESIGN.md).
        let tag = tag.trim().to_lowercase();
        if tag.is_empty() {
            return Err(src.error(&tags_key, Some(i), "a tag cannot be empty"));
        }
        if !filter_tags.contains(&tag) {
            filter_tags.push(tag);
        }
    }
    let soa = SoaConfig {
        refresh: ttl_secs(src, &KeyPath::new("dns.soa.refresh"), &raw.soa.refresh)?,
        retry: ttl_secs(src, &KeyPath::new("dns.soa.retry"), &raw.soa.retry)?,
        expire: ttl_secs(src, &KeyPath::new("dns.soa.expire"), &raw.soa.expire)?,
        min_ttl: ttl_secs(src, &KeyPath::new("dns.soa.min_ttl"), &raw.soa.min_ttl)?,
    };
    Ok(DnsConfig {
        node_ttl,
        service_ttl: ServiceTtl { entries },
        only_passing: raw.only_passing,
        udp_answer_limit: raw.udp_answer_limit.min(MAX_UDP_ANSWER_LIMIT),
        a_record_limit: raw.a_record_limit,
        enable_truncate: raw.enable_truncate,
        enable_additional_node_meta_txt: raw.enable_additional_node_meta_txt,
        filter_tags,
        soa,
    })
}

// === [forward] ===

fn forward(raw: &RawForward, src: &Source) -> Result<ForwardConfig, ConfigError> {
    let upstreams = upstream_list(src, &KeyPath::new("forward.upstreams"), &raw.upstreams)?;
    let timeout = positive(src, &KeyPath::new("forward.timeout"), &raw.timeout)?;
    let strategy = match raw.strategy.trim() {
        "sequential" => Strategy::Sequential,
        "random" => Strategy::Random,
        "fastest" => Strategy::Fastest,
        other => {
            return Err(src.error(
                &KeyPath::new("forward.strategy"),
                None,
                format!("`{other}` is not one of sequential, random, fastest"),
            ));
        }
    };
    if raw.max_in_flight == 0 {
        return Err(src.error(
            &KeyPath::new("forward.max_in_flight"),
            None,
            "must be at least 1",
        ));
    }
    let mut domains = Vec::with_capacity(raw.domain.len());
    for (i, d) in raw.domain.iter().enumerate() {
        let key = KeyPath::new("forward.domain").index(i);
        let name = domain_name(&d.name).map_err(|m| src.error(&key.key("name"), None, m))?;
        let upstreams_key = key.key("upstreams");
        if d.upstreams.is_empty() {
            return Err(src.error(&upstreams_key, None, "at least one upstream is needed"));
        }
        let upstreams = upstream_list(src, &upstreams_key, &d.upstreams)?;
        domains.push(ForwardDomain { name, upstreams });
    }
    Ok(ForwardConfig {
        upstreams,
        timeout,
        strategy,
        domains,
        max_in_flight: raw.max_in_flight,
    })
}

fn upstream_list(
    src: &Source,
    key: &KeyPath,
    list: &[String],
) -> Result<Vec<Upstream>, ConfigError> {
    let mut out: Vec<Upstream> = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let upstream = upstream(src, key, text).map_err(|m| src.error(key, Some(i), m))?;
        if out.contains(&upstream) {
            return Err(src.error(key, Some(i), format!("`{text}` is listed twice")));
        }
        out.push(upstream);
    }
    Ok(out)
}

/// `IP` (port 53), `IP:port`, `[v6]:port`, `resolv.conf` or `resolv.conf:PATH`.
fn upstream(src: &Source, key: &KeyPath, text: &str) -> Result<Upstream, String> {
    let text = text.trim();
    if text == "resolv.conf" {
        return Ok(Upstream::ResolvConf(PathBuf::from(RESOLV_CONF)));
    }
    if let Some(path) = text.strip_prefix("resolv.conf:") {
        if path.is_empty() {
            return Err("`resolv.conf:` needs a path".to_owned());
        }
        return Ok(Upstream::ResolvConf(src.resolve_at(key, path)));
    }
    let addr = match text.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 53),
        Err(_) => match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| SocketAddr::new(IpAddr::V6(ip), 53))
                .map_err(|_| format!("`{text}` is not an IPv6 address"))?,
            None => text.parse::<SocketAddr>().map_err(|_| {
                format!("`{text}` is not IP, IP:port, [IPv6]:port, resolv.conf or resolv.conf:PATH")
            })?,
        },
    };
    // Consul rejects these as recursors too: they are "any address", not a server.
    if addr.ip().is_unspecified() {
        return Err(format!(
            "`{text}` is the unspecified address, not a resolver"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("`{text}` has port 0"));
    }
    Ok(Upstream::Addr(addr))
}

// === [cache] ===

fn cache(raw: &RawCache, src: &Source) -> Result<CacheConfig, ConfigError> {
    let min_ttl = duration(src, &KeyPath::new("cache.min_ttl"), &raw.min_ttl)?;
    let max_key = KeyPath::new("cache.max_ttl");
    let max_ttl = duration(src, &max_key, &raw.max_ttl)?;
    if max_ttl < min_ttl {
        return Err(src.error(&max_key, None, "must not be below cache.min_ttl"));
    }
    let negative_max_ttl = duration(
        src,
        &KeyPath::new("cache.negative_max_ttl"),
        &raw.negative_max_ttl,
    )?;
    let servfail_ttl = duration(src, &KeyPath::new("cache.servfail_ttl"), &raw.servfail_ttl)?;
    let serve_stale = duration(src, &KeyPath::new("cache.serve_stale"), &raw.serve_stale)?;
    let stale_key = KeyPath::new("cache.stale_ttl");
    let stale_ttl = duration(src, &stale_key, &raw.stale_ttl)?;
    if !serve_stale.is_zero() && stale_ttl.is_zero() {
        // RFC 8767 §4: "a TTL of 30 seconds is RECOMMENDED"; 0 would make clients come straight back.
        return Err(src.error(
            &stale_key,
            None,
            "must be above 0 while cache.serve_stale is on",
        ));
    }
    let stale_answer_timeout = duration(
        src,
        &KeyPath::new("cache.stale_answer_timeout"),
        &raw.stale_answer_timeout,
    )?;
    Ok(CacheConfig {
        size: raw.size,
        min_ttl,
        max_ttl,
        negative_max_ttl,
        servfail_ttl,
        serve_stale,
        stale_ttl,
        stale_answer_timeout,
    })
}

// === [zones] ===

fn zones(raw: &RawZones, src: &Source) -> Result<ZonesConfig, ConfigError> {
    let dir_key = KeyPath::new("zones.dir");
    let dir = optional_path(src, &dir_key, &raw.dir, true)?;
    if let Some(dir) = &dir
        && !dir.is_dir()
    {
        return Err(src.error(
            &dir_key,
            None,
            format!("`{}` is not a directory", dir.display()),
        ));
    }
    let hosts = optional_path(src, &KeyPath::new("zones.hosts"), &raw.hosts, true)?;
    Ok(ZonesConfig { dir, hosts })
}

// === [emit] ===

fn emit(raw: &RawEmit, src: &Source) -> Result<EmitConfig, ConfigError> {
    let srv_key = KeyPath::new("emit.srv_file");
    let srv_file = optional_path(src, &srv_key, &raw.srv_file, false)?;
    if let Some(file) = &srv_file {
        check_parent_dir(src, &srv_key, file)?;
    }
    let mut templates: Vec<TemplateConfig> = Vec::with_capacity(raw.template.len());
    for (i, t) in raw.template.iter().enumerate() {
        let key = KeyPath::new("emit.template").index(i);
        let template = template(src, &key, t)?;
        if templates
            .iter()
            .any(|o| o.destination == template.destination)
            || srv_file.as_ref() == Some(&template.destination)
        {
            return Err(src.error(
                &key.key("destination"),
                None,
                format!(
                    "`{}` is written by another entry",
                    template.destination.display()
                ),
            ));
        }
        templates.push(template);
    }
    Ok(EmitConfig {
        srv_file,
        templates,
    })
}

fn template(src: &Source, key: &KeyPath, raw: &RawTemplate) -> Result<TemplateConfig, ConfigError> {
    let (source_key, text, mode) = match (raw.source.trim(), raw.template_dir.trim()) {
        (s, "") => (key.key("source"), s, TemplateMode::File),
        ("", d) => (key.key("template_dir"), d, TemplateMode::Dir),
        _ => {
            return Err(src.error(
                &key.key("template_dir"),
                None,
                "give either `source` or `template_dir`, not both",
            ));
        }
    };
    let source = optional_path(src, &source_key, text, true)?
        .ok_or_else(|| src.error(&source_key, None, "cannot be empty"))?;
    let (is_kind, kind) = match mode {
        TemplateMode::File => (source.is_file(), "a file"),
        TemplateMode::Dir => (source.is_dir(), "a directory"),
    };
    if !is_kind {
        return Err(src.error(
            &source_key,
            None,
            format!("`{}` is not {kind}", source.display()),
        ));
    }
    let dest_key = key.key("destination");
    let destination = optional_path(src, &dest_key, &raw.destination, false)?
        .ok_or_else(|| src.error(&dest_key, None, "cannot be empty"))?;
    if destination == source {
        return Err(src.error(&dest_key, None, "is the template itself"));
    }
    // Commands run without a shell; a line that does not split (an unclosed quote) is a
    // config error now rather than a failed check at the first render.
    let command = |name: &str, s: &str| -> Result<Option<String>, ConfigError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        shell_words::split(s)
            .map_err(|e| src.error(&key.key(name), None, format!("cannot split `{s}`: {e}")))?;
        Ok(Some(s.to_owned()))
    };
    let wait_key = key.key("wait");
    let (wait_min, wait_max) = match (&raw.wait.min, &raw.wait.max) {
        (None, None) => (
            duration(src, &wait_key, &default_wait_min())?,
            duration(src, &wait_key, &default_wait_max())?,
        ),
        // consul-template: giving only a min sets max = 4 × min.
        (Some(min), None) => {
            let min = duration(src, &wait_key.key("min"), min)?;
            (min, min.saturating_mul(4))
        }
        (None, Some(max)) => {
            let max = duration(src, &wait_key.key("max"), max)?;
            (duration(src, &wait_key, &default_wait_min())?.min(max), max)
        }
        (Some(min), Some(max)) => {
            let min = duration(src, &wait_key.key("min"), min)?;
            let max = duration(src, &wait_key.key("max"), max)?;
            if max < min {
                return Err(src.error(&wait_key.key("max"), None, "must not be below wait.min"));
            }
            (min, max)
        }
    };
    let perms_key = key.key("perms");
    let perms = match &raw.perms {
        None => None,
        Some(p) => Some(perms(p).map_err(|m| src.error(&perms_key, None, m))?),
    };
    let command_timeout = positive(src, &key.key("command_timeout"), &raw.command_timeout)?;
    Ok(TemplateConfig {
        source,
        mode,
        destination,
        check: command("check", &raw.check)?,
        reload: command("reload", &raw.reload)?,
        wait_min,
        wait_max,
        perms,
        command_timeout,
    })
}

/// `"0644"`, `"644"`, `"0o644"` or an integer (TOML `0o644`). Bits above 0o777 are refused:
/// they are never wanted on a rendered config, and `perms = 644` (decimal, meaning octal) lands
/// there, so the mistake is caught instead of applied.
fn perms(raw: &RawPerms) -> Result<u32, String> {
    let mode = match raw {
        RawPerms::Text(text) => {
            let digits = text.trim();
            let digits = digits.strip_prefix("0o").unwrap_or(digits);
            u32::from_str_radix(digits, 8)
                .map_err(|_| format!("`{text}` is not an octal mode like \"0644\""))?
        }
        RawPerms::Int(n) => u32::try_from(*n).map_err(|_| format!("`{n}` is not a file mode"))?,
    };
    if mode > 0o777 {
        return Err(format!(
            "mode {mode:#o} has bits above 0o777; write octal as \"0644\" or 0o644"
        ));
    }
    Ok(mode)
}

fn check_parent_dir(src: &Source, key: &KeyPath, file: &Path) -> Result<(), ConfigError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(src.error(
            key,
            None,
            format!("directory `{}` does not exist", dir.display()),
        )),
        _ => Ok(()),
    }
}

// === whole-config checks ===

/// Each answerer owns its names (DESIGN.md rule 3): a `.consul` name is never forwarded, so a
/// forward domain under the Consul domains could never be used. A domain listed twice is
/// ambiguous.
fn check_forward_domains(config: &Config, src: &Source) -> Result<(), ConfigError> {
    let consul = &config.consul;
    let owned: Vec<&Name> = std::iter::once(&consul.domain)
        .chain(consul.alt_domain.as_ref())
        .collect();
    let mut seen = BTreeSet::new();
    for (i, d) in config.forward.domains.iter().enumerate() {
        let key = KeyPath::new("forward.domain").index(i).key("name");
        if let Some(zone) = owned.iter().find(|zone| zone.zone_of(&d.name)) {
            return Err(src.error(
                &key,
                None,
                format!(
                    "`{}` is inside the Consul domain `{zone}`, which is never forwarded",
                    d.name
                ),
            ));
        }
        if !seen.insert(d.name.to_string()) {
            return Err(src.error(&key, None, format!("`{}` is listed twice", d.name)));
        }
    }
    Ok(())
}

/// Forwarding to ourselves is a loop that only ends at the timeout.
fn check_loops(config: &Config, src: &Source) -> Result<(), ConfigError> {
    let own = &config.listen.dns;
    let is_own = |addr: &SocketAddr| {
        own.iter().any(|l| {
            l == addr
                || (l.port() == addr.port()
                    && l.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
        })
    };
    let lists = std::iter::once((KeyPath::new("forward.upstreams"), &config.forward.upstreams))
        .chain(config.forward.domains.iter().enumerate().map(|(i, d)| {
            (
                KeyPath::new("forward.domain").index(i).key("upstreams"),
                &d.upstreams,
            )
        }));
    for (key, list) in lists {
        for (i, upstream) in list.iter().enumerate() {
            if let Upstream::Addr(addr) = upstream
                && is_own(addr)
            {
                return Err(src.error(
                    &key,
                    Some(i),
                    format!(
                        "`{addr}` is one of signpost's own listen.dns addresses (a forwarding loop)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

// === durations ===

/// Any duration, `0s` included. Integers are accepted only where Consul takes them (SOA timers
/// go through [`ttl_secs`]); elsewhere a bare number is ambiguous.
fn duration(src: &Source, key: &KeyPath, raw: &RawDuration) -> Result<Duration, ConfigError> {
    match raw {
        RawDuration::Text(text) => parse_duration(text).map_err(|m| src.error(key, None, m)),
        RawDuration::Seconds(n) => Err(src.error(
            key,
            None,
            format!("`{n}` has no unit; write a duration string like \"{n}s\""),
        )),
    }
}

/// A duration above zero.
fn positive(src: &Source, key: &KeyPath, raw: &RawDuration) -> Result<Duration, ConfigError> {
    let d = duration(src, key, raw)?;
    if d.is_zero() {
        return Err(src.error(key, None, "must be above 0s"));
    }
    Ok(d)
}

/// A TTL in whole seconds: a duration string, or an integer number of seconds (as Consul's SOA
/// fields).
fn ttl_secs(src: &Source, key: &KeyPath, raw: &RawDuration) -> Result<u32, ConfigError> {
    let secs = match raw {
        RawDuration::Seconds(n) => *n,
        RawDuration::Text(text) => {
            let d = parse_duration(text).map_err(|m| src.error(key, None, m))?;
            if d.subsec_nanos() != 0 {
                return Err(src.error(
                    key,
                    None,
                    format!("`{text}` is not a whole number of seconds"),
                ));
            }
            d.as_secs()
        }
    };
    if secs > MAX_TTL_SECS {
        return Err(src.error(
            key,
            None,
            format!("{secs}s is above the largest TTL (2^31-1 seconds, RFC 2181 §8)"),
        ));
    }
    u32::try_from(secs).map_err(|_| src.error(key, None, "too large"))
}

/// Go/humantime durations: `"2s"`, `"5m"`, `"1h30m"`, `"300ms"`, `"0s"` (and `"0"`, as Go).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` has no unit; write \"{t}s\""));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{text}` is not a duration like \"2s\" or \"1h30m\": {e}"))
}
