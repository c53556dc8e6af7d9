//! The configuration file as written: serde structs with `deny_unknown_fields` on every table.
//!
//! Values stay close to the text (strings for durations, addresses and names) so that
//! [`super::validate`] can say which key and line is wrong. Every default is a named
//! `default_*` function; `config/signpost.toml` lists the same values with the reason for each.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::ConfigError;
use super::validate::Source;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `[listen]`: where signpost serves DNS and HTTP.
    #[serde(default)]
    pub(super) listen: RawListen,
    /// `[consul]`: where the catalog comes from and the names it is served under.
    #[serde(default)]
    pub(super) consul: RawConsul,
    /// `[dns]`: Consul's `dns_config` knobs.
    #[serde(default)]
    pub(super) dns: RawDns,
    /// `[forward]`: upstream resolvers for every other name.
    #[serde(default)]
    pub(super) forward: RawForward,
    /// `[cache]`: the cache of forwarded answers.
    #[serde(default)]
    pub(super) cache: RawCache,
    /// `[zones]`: static zones served authoritatively.
    #[serde(default)]
    pub(super) zones: RawZones,
    /// `[emit]`: SRV data file and rendered templates.
    #[serde(default)]
    pub(super) emit: RawEmit,
    /// `[log]`: the query log.
    #[serde(default)]
    pub(super) log: RawLog,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// Log every query (like dnsmasq `--log-queries`), off the request path.
    #[serde(default)]
    pub(super) queries: bool,
}

/// `[listen]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    /// `IP:port` addresses; each serves UDP and TCP.
    #[serde(default = "default_listen_dns")]
    pub(super) dns: Vec<String>,
    /// `IP:port` of the HTTP endpoints; `""` disables them.
    #[serde(default = "default_listen_http")]
    pub(super) http: String,
    /// UDP sockets (and threads) per DNS address; 0 = one per core.
    #[serde(default = "default_udp_workers")]
    pub(super) udp_workers: usize,
    /// Most TCP connections served at once, over all addresses.
    #[serde(default = "default_tcp_max_connections")]
    pub(super) tcp_max_connections: usize,
    /// A TCP connection with no query for this long is closed.
    #[serde(default = "default_tcp_idle_timeout")]
    pub(super) tcp_idle_timeout: RawDuration,
}

/// `[consul]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsul {
    /// `http://host:port`, `https://host:port` or `file:PATH`.
    #[serde(default = "default_consul_address")]
    pub(super) address: String,
    /// File holding the ACL token; `""` = `CONSUL_HTTP_TOKEN`, else none.
    #[serde(default)]
    pub(super) token_file: String,
    /// The Consul DNS domain.
    #[serde(default = "default_consul_domain")]
    pub(super) domain: String,
    /// A second domain answered like `domain`; `""` = none.
    #[serde(default)]
    pub(super) alt_domain: String,
    /// The local datacenter; `""` = ask the agent.
    #[serde(default)]
    pub(super) datacenter: String,
    /// The local node name; `""` = ask the agent.
    #[serde(default)]
    pub(super) node_name: String,
    /// HTTP connections to the agent, all watches and fetches included.
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: usize,
    /// CA bundle for `https://` agents.
    #[serde(default)]
    pub(super) ca_file: String,
    /// Client certificate for `https://` agents (with `key_file`).
    #[serde(default)]
    pub(super) cert_file: String,
    /// Client key for `https://` agents (with `cert_file`).
    #[serde(default)]
    pub(super) key_file: String,
    /// The `wait` of blocking queries.
    #[serde(default = "default_consul_wait")]
    pub(super) wait: RawDuration,
    /// How often prepared query definitions are polled.
    #[serde(default = "default_query_poll_interval")]
    pub(super) query_poll_interval: RawDuration,
}

/// `[dns]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// TTL of node records.
    #[serde(default = "default_node_ttl")]
    pub(super) node_ttl: RawDuration,
    /// Service name, `prefix*` or `*` → TTL.
    #[serde(default = "default_service_ttl")]
    pub(super) service_ttl: BTreeMap<String, RawDuration>,
    /// Answer only instances whose checks are all passing.
    #[serde(default)]
    pub(super) only_passing: bool,
    /// Most answers in a non-EDNS UDP response (at most 8, as Consul).
    #[serde(default = "default_udp_answer_limit")]
    pub(super) udp_answer_limit: usize,
    /// Most A/AAAA answers; 0 = no limit.
    #[serde(default)]
    pub(super) a_record_limit: usize,
    /// Set TC when an answer is cut.
    #[serde(default = "default_true")]
    pub(super) enable_truncate: bool,
    /// Node meta as TXT records in the additional section.
    #[serde(default = "default_true")]
    pub(super) enable_additional_node_meta_txt: bool,
    /// Instances carrying any of these tags are never answered.
    #[serde(default = "default_filter_tags")]
    pub(super) filter_tags: Vec<String>,
    /// SOA timers.
    #[serde(default)]
    pub(super) soa: RawSoa,
}

/// `dns.soa`: integers (seconds, as Consul) or duration strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSoa {
    /// SOA refresh.
    #[serde(default = "default_soa_refresh")]
    pub(super) refresh: RawDuration,
    /// SOA retry.
    #[serde(default = "default_soa_retry")]
    pub(super) retry: RawDuration,
    /// SOA expire.
    #[serde(default = "default_soa_expire")]
    pub(super) expire: RawDuration,
    /// SOA minimum, the TTL of negative answers.
    #[serde(default = "default_soa_min_ttl")]
    pub(super) min_ttl: RawDuration,
}

/// `[forward]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    /// `IP`, `IP:port`, `[v6]:port`, `resolv.conf` or `resolv.conf:PATH`.
    #[serde(default = "default_upstreams")]
    pub(super) upstreams: Vec<String>,
    /// How long one upstream gets to answer.
    #[serde(default = "default_forward_timeout")]
    pub(super) timeout: RawDuration,
    /// `sequential`, `random` or `fastest`.
    #[serde(default = "default_strategy")]
    pub(super) strategy: String,
    /// Forwarded queries in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub(super) max_in_flight: usize,
    /// `[[forward.domain]]`: conditional forwarding.
    #[serde(default)]
    pub(super) domain: Vec<RawForwardDomain>,
}

/// `[[forward.domain]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardDomain {
    /// The domain whose names go to `upstreams`.
    pub(super) name: String,
    /// Upstreams for this domain, same forms as `forward.upstreams`.
    pub(super) upstreams: Vec<String>,
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    /// Most cached answers; 0 disables the cache.
    #[serde(default = "default_cache_size")]
    pub(super) size: u64,
    /// TTLs below this are raised to it.
    #[serde(default = "default_cache_min_ttl")]
    pub(super) min_ttl: RawDuration,
    /// TTLs above this are lowered to it.
    #[serde(default = "default_cache_max_ttl")]
    pub(super) max_ttl: RawDuration,
    /// Cap on the TTL of NXDOMAIN/NODATA answers.
    #[serde(default = "default_negative_max_ttl")]
    pub(super) negative_max_ttl: RawDuration,
    /// How long a SERVFAIL (all upstreams failed) is cached.
    #[serde(default = "default_servfail_ttl")]
    pub(super) servfail_ttl: RawDuration,
    /// How long past expiry an answer may be served when every upstream fails.
    #[serde(default = "default_serve_stale")]
    pub(super) serve_stale: RawDuration,
    /// TTL of a stale answer.
    #[serde(default = "default_stale_ttl")]
    pub(super) stale_ttl: RawDuration,
    /// How long a client waits for the upstream before a stale answer is served (RFC 8767 §5).
    #[serde(default = "default_stale_answer_timeout")]
    pub(super) stale_answer_timeout: RawDuration,
}

/// `[zones]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZones {
    /// Directory of `*.zone` RFC 1035 master files; `""` = none.
    #[serde(default)]
    pub(super) dir: String,
    /// A hosts file served like `/etc/hosts`; `""` = none.
    #[serde(default)]
    pub(super) hosts: String,
}

/// `[emit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmit {
    /// SRV data as JSON, written atomically on every change; `""` = none.
    #[serde(default)]
    pub(super) srv_file: String,
    /// `[[emit.template]]`
    #[serde(default)]
    pub(super) template: Vec<RawTemplate>,
}

/// `[[emit.template]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    /// The template file (minijinja). Exactly one of `source` and `template_dir`.
    #[serde(default)]
    pub(super) source: String,
    /// python-confd mode: a directory whose `*.tmpl` files are rendered and `*.conf` files
    /// copied, in name order, into the one destination.
    #[serde(default)]
    pub(super) template_dir: String,
    /// The rendered file.
    pub(super) destination: String,
    /// Command run on the new file (`{file}` is its path) before it replaces the old one.
    #[serde(default)]
    pub(super) check: String,
    /// Command run after a successful replace.
    #[serde(default)]
    pub(super) reload: String,
    /// Quiescence before rendering: `{ min, max }`.
    #[serde(default)]
    pub(super) wait: RawWait,
    /// Mode of the rendered file: `"0644"` or an integer (`0o644`); unset = keep or 0644.
    #[serde(default)]
    pub(super) perms: Option<RawPerms>,
    /// Longest a check or reload command may run.
    #[serde(default = "default_command_timeout")]
    pub(super) command_timeout: RawDuration,
}

/// `emit.template.wait`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWait {
    /// Render no sooner than this after the last change.
    #[serde(default)]
    pub(super) min: Option<RawDuration>,
    /// Render at most this long after the first change, even if changes keep coming.
    #[serde(default)]
    pub(super) max: Option<RawDuration>,
}

/// A duration as written: a string (`"2s"`, `"1h30m"`) or, where Consul takes one, an integer
/// number of seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RawDuration {
    Text(String),
    Seconds(u64),
}

/// A file mode as written: `"0644"` or an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RawPerms {
    Text(String),
    Int(i64),
}

/// Phase one: the text into [`RawConfig`]. Syntax errors, unknown keys and wrong types come
/// out here, with the dotted key from `serde_path_to_error` and the line from toml's span.
pub(super) fn parse(text: &str, src: &Source) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        // A syntax error has no key path; the line says where.
        src.error_at("syntax", e.span(), e.message())
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let message = match inner.message().strip_prefix("unknown field ") {
            Some(rest) => format!("unknown key {rest}"),
            None => inner.message().to_owned(),
        };
        src.error_at(&key, inner.span(), &message)
    })
}

// === defaults ===

pub(super) fn default_listen_dns() -> Vec<String> {
    vec!["127.0.0.1:53".to_owned()]
}
pub(super) fn default_listen_http() -> String {
    "127.0.0.1:9153".to_owned()
}
pub(super) fn default_udp_workers() -> usize {
    0
}
pub(super) fn default_tcp_max_connections() -> usize {
    1024
}
pub(super) fn default_tcp_idle_timeout() -> RawDuration {
    RawDuration::text("10s")
}
pub(super) fn default_consul_address() -> String {
    "http://127.0.0.1:8500".to_owned()
}
pub(super) fn default_consul_domain() -> String {
    "consul.".to_owned()
}
pub(super) fn default_max_connections() -> usize {
    8
}
pub(super) fn default_consul_wait() -> RawDuration {
    RawDuration::text("5m")
}
pub(super) fn default_query_poll_interval() -> RawDuration {
    RawDuration::text("30s")
}
pub(super) fn default_node_ttl() -> RawDuration {
    RawDuration::text("0s")
}
pub(super) fn default_service_ttl() -> BTreeMap<String, RawDuration> {
    BTreeMap::from([("*".to_owned(), RawDuration::text("0s"))])
}
pub(super) fn default_udp_answer_limit() -> usize {
    3
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_filter_tags() -> Vec<String> {
    vec!["nodns".to_owned()]
}
pub(super) fn default_soa_refresh() -> RawDuration {
    RawDuration::Seconds(3600)
}
pub(super) fn default_soa_retry() -> RawDuration {
    RawDuration::Seconds(600)
}
pub(super) fn default_soa_expire() -> RawDuration {
    RawDuration::Seconds(86400)
}
pub(super) fn default_soa_min_ttl() -> RawDuration {
    RawDuration::Seconds(0)
}
pub(super) fn default_upstreams() -> Vec<String> {
    vec!["resolv.conf".to_owned()]
}
pub(super) fn default_forward_timeout() -> RawDuration {
    RawDuration::text("2s")
}
pub(super) fn default_strategy() -> String {
    "sequential".to_owned()
}
pub(super) fn default_max_in_flight() -> usize {
    4096
}
pub(super) fn default_cache_size() -> u64 {
    100_000
}
pub(super) fn default_cache_min_ttl() -> RawDuration {
    RawDuration::text("0s")
}
pub(super) fn default_cache_max_ttl() -> RawDuration {
    RawDuration::text("1d")
}
pub(super) fn default_negative_max_ttl() -> RawDuration {
    RawDuration::text("1h")
}
pub(super) fn default_servfail_ttl() -> RawDuration {
    RawDuration::text("5s")
}
pub(super) fn default_serve_stale() -> RawDuration {
    RawDuration::text("1d")
}
pub(super) fn default_stale_ttl() -> RawDuration {
    RawDuration::text("30s")
}
/// RFC 8767 §5: "the client response timer ... is 1.8 seconds" (Unbound's
/// serve-expired-client-timeout 1800).
pub(super) fn default_stale_answer_timeout() -> RawDuration {
    RawDuration::text("1800ms")
}
pub(super) fn default_wait_min() -> RawDuration {
    RawDuration::text("2s")
}
pub(super) fn default_wait_max() -> RawDuration {
    RawDuration::text("10s")
}
pub(super) fn default_command_timeout() -> RawDuration {
    RawDuration::text("30s")
}

// === impl Default ===
//
// A table left out of the file gets the same values as an empty one.

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            dns: default_listen_dns(),
            http: default_listen_http(),
            udp_workers: default_udp_workers(),
            tcp_max_connections: default_tcp_max_connections(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
        }
    }
}

impl Default for RawConsul {
    fn default() -> Self {
        RawConsul {
            address: default_consul_address(),
            token_file: String::new(),
            domain: default_consul_domain(),
            alt_domain: String::new(),
            datacenter: String::new(),
            node_name: String::new(),
            max_connections: default_max_connections(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            wait: default_consul_wait(),
            query_poll_interval: default_query_poll_interval(),
        }
    }
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            node_ttl: default_node_ttl(),
            service_ttl: default_service_ttl(),
            only_passing: false,
            udp_answer_limit: default_udp_answer_limit(),
            a_record_limit: 0,
            enable_truncate: true,
            enable_additional_node_meta_txt: true,
            filter_tags: default_filter_tags(),
            soa: RawSoa::default(),
        }
    }
}

impl Default for RawSoa {
    fn default() -> Self {
        RawSoa {
            refresh: default_soa_refresh(),
            retry: default_soa_retry(),
            expire: default_soa_expire(),
            min_ttl: default_soa_min_ttl(),
        }
    }
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            upstreams: default_upstreams(),
            timeout: default_forward_timeout(),
            strategy: default_strategy(),
            max_in_flight: default_max_in_flight(),
            domain: Vec::new(),
        }
    }
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            size: default_cache_size(),
            min_ttl: default_cache_min_ttl(),
            max_ttl: default_cache_max_ttl(),
            negative_max_ttl: default_negative_max_ttl(),
            servfail_ttl: default_servfail_ttl(),
            serve_stale: default_serve_stale(),
            stale_ttl: default_stale_ttl(),
            stale_answer_timeout: default_stale_answer_timeout(),
        }
    }
}

// === impl RawDuration ===

impl RawDuration {
    fn text(s: &str) -> Self {
        RawDuration::Text(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration like "2s", "5m" or "1h30m""#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

// === impl RawPerms ===

impl<'de> Deserialize<'de> for RawPerms {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PermsVisitor;

        impl Visitor<'_> for PermsVisitor {
            type Value = RawPerms;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a file mode like "0644" or 0o644"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPerms, E> {
                Ok(RawPerms::Text(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPerms, E> {
                Ok(RawPerms::Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPerms, E> {
                Ok(RawPerms::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }

        deserializer.deserialize_any(PermsVisitor)
    }
}
