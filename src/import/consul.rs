//! `signpost import-consul-dns FILE`: the DNS part of a Consul agent configuration (JSON or
//! HCL: `domain`, `alt_domain`, `recursors`, `recursor_timeout`, `dns_config`, `ports`,
//! `addresses`, `client_addr`) to a signpost configuration.
//!
//! signpost's `[dns]` keeps Consul's `dns_config` names, so most keys copy across. Staleness
//! and caching knobs (`allow_stale`, `max_stale`, `use_cache`, `cache_max_age`) have no
//! counterpart: signpost always serves the last catalog it watched (`?stale` blocking
//! queries) and reports its age as `signpost_consul_catalog_age_seconds`.

use std::path::Path;

use serde_json::Value;

use super::{ImportError, Imported, hcl};

/// `dns_config` keys copied to `[dns]` unchanged.
const SAME: [&str; 7] = [
    "node_ttl",
    "only_passing",
    "udp_answer_limit",
    "a_record_limit",
    "enable_truncate",
    "enable_additional_node_meta_txt",
    "service_ttl",
];

/// Import `text` (read from `path`; JSON if it starts with `{`, else HCL).
pub fn import(text: &str, path: &Path) -> Result<Imported, ImportError> {
    let parse_error = |line: usize, message: String| ImportError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let agent: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| parse_error(e.line(), e.to_string()))?
    } else {
        hcl::parse(text).map_err(|(line, message)| parse_error(line, message))?
    };
    let mut out = Imported::default();

    for key in ["domain", "alt_domain"] {
        if let Some(domain) = agent.get(key).and_then(Value::as_str) {
            let dotted = format!("{}.", domain.trim_end_matches('.'));
            out.consul.insert(key.into(), dotted.into());
        }
    }
    // The agent's HTTP API is where signpost reads the catalog from.
    let http_port = agent
        .pointer("/ports/http")
        .and_then(Value::as_i64)
        .unwrap_or(8500);
    let http_addr = agent
        .pointer("/addresses/http")
        .or_else(|| agent.get("client_addr"))
        .and_then(Value::as_str)
        .map(|a| a.split_whitespace().next().unwrap_or(a))
        .filter(|a| !a.is_empty() && *a != "0.0.0.0" && *a != "::")
        .unwrap_or("127.0.0.1");
    if http_port < 0 {
        out.warn("ports.http is disabled: point [consul] address at the agent's HTTPS API");
    }
    out.consul.insert(
        "address".into(),
        format!("http://{http_addr}:{}", http_port.max(0)).into(),
    );

    match agent.get("recursors").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let upstreams: Vec<toml::Value> = list
                .iter()
                .filter_map(Value::as_str)
                .map(|r| toml::Value::from(r.to_owned()))
                .collect();
            out.forward
                .insert("upstreams".into(), toml::Value::Array(upstreams));
        }
        _ => out.warn(
            "no recursors: Consul answers only .consul names; signpost forwards the rest to \
             the resolvers of /etc/resolv.conf (forward.upstreams = [\"resolv.conf\"])",
        ),
    }
    if let Some(timeout) = agent
        .pointer("/dns_config/recursor_timeout")
        .and_then(Value::as_str)
    {
        out.forward.insert("timeout".into(), timeout.into());
    }
    if let Some(strategy) = agent
        .pointer("/dns_config/recursor_strategy")
        .and_then(Value::as_str)
    {
        out.forward.insert("strategy".into(), strategy.into());
    }

    let port = agent.pointer("/ports/dns").and_then(Value::as_i64);
    let dns_addr = agent
        .pointer("/addresses/dns")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1");
    out.listen.insert(
        "dns".into(),
        toml::Value::Array(vec![format!("{dns_addr}:53").into()]),
    );
    out.warn(format!(
        "listen.dns is {dns_addr}:53 for resolv.conf; Consul served DNS on port {} — set \
         ports {{ dns = -1 }} in the agent once signpost is in place",
        port.unwrap_or(8600)
    ));

    if let Some(Value::Object(dns)) = agent.get("dns_config") {
        for (key, value) in dns {
            match key.as_str() {
                k if SAME.contains(&k) => {
                    if let Some(v) = to_toml(value) {
                        out.dns.insert(k.into(), v);
                    }
                }
                "soa" => {
                    if let Some(v) = to_toml(value) {
                        out.dns.insert("soa".into(), v);
                    }
                }
                "recursor_timeout" | "recursor_strategy" => {}
                "allow_stale" | "max_stale" | "use_cache" | "cache_max_age" => out.warn(format!(
                    "dns_config.{key}: not needed; signpost always answers from its last watched \
                     catalog and exports its age (signpost_consul_catalog_age_seconds)"
                )),
                other => out.warn(format!("dns_config.{other}: not carried")),
            }
        }
        if !dns.contains_key("enable_truncate") {
            out.warn(
                "dns_config.enable_truncate is unset (Consul: false); signpost sets TC when it \
                 cuts an answer (enable_truncate = true) so clients retry over TCP",
            );
        }
    }
    Ok(out)
}

/// A JSON value as TOML (`null` has no TOML form).
fn to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().filter_map(to_toml).collect()),
        Value::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect(),
        ),
    })
}
