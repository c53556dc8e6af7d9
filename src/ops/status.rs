//! `signpost status`: a short human summary of a running signpost, read from its `/ready`
//! and `/metrics` (no endpoint of its own: what the summary shows is exactly what Prometheus
//! sees).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::metrics as m;

/// One sample: its labels as written (`a="x",b="y"`) and value.
type Samples = BTreeMap<String, Vec<(String, f64)>>;

/// `GET path` from `addr` over HTTP/1.0: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// Parse the Prometheus text format into samples by metric name.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        samples
            .entry(name.to_owned())
            .or_default()
            .push((labels.to_owned(), value));
    }
    samples
}

/// The value of label `key` in `labels`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

fn total(samples: &Samples, name: &str) -> f64 {
    samples
        .get(name)
        .map_or(0.0, |v| v.iter().fold(0.0, |sum, (_, x)| sum + x))
}

/// Sum of `name` by the value of `key`.
fn by(samples: &Samples, name: &str, key: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, value) in samples.get(name).into_iter().flatten() {
        if let Some(v) = label(labels, key) {
            *out.entry(v.to_owned()).or_insert(0.0) += value;
        }
    }
    out
}

fn counts(map: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The summary printed by `signpost status`. `catalog`: the body of `/v1/catalog` (the SRV
/// data document), which counts services for every catalog source (a `file:` catalog sets no
/// Consul gauges).
pub fn summary(addr: SocketAddr, ready: bool, metrics: &str, catalog: Option<&str>) -> String {
    let s = parse(metrics);
    let mut out = String::new();
    let state = if ready { "ready" } else { "NOT READY" };
    let _ = writeln!(out, "signpost at {addr}: {state}");

    let age = total(&s, m::CONSUL_CATALOG_AGE_SECONDS);
    let age = if age.is_nan() {
        "not confirmed by an agent".to_owned()
    } else {
        format!("confirmed {age:.1}s ago")
    };
    let document = catalog.and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
    let services = document.as_ref().and_then(|d| d["services"].as_object());
    match services {
        Some(services) => {
            let instances: usize = services
                .values()
                .filter_map(|v| v.as_array().map(Vec::len))
                .sum();
            let _ = writeln!(
                out,
                "catalog:   {} services, {instances} instances, datacenter {}, index {}, {age}",
                services.len(),
                document
                    .as_ref()
                    .map_or("?", |d| d["datacenter"].as_str().unwrap_or("?")),
                document
                    .as_ref()
                    .map_or(0, |d| d["index"].as_u64().unwrap_or(0)),
            );
        }
        None => {
            let _ = writeln!(out, "catalog:   none loaded yet, {age}");
        }
    }
    let health = by(&s, m::CONSUL_INSTANCES, "state");
    if !health.is_empty() {
        let _ = writeln!(out, "health:    {}", counts(&health));
    }
    let _ = writeln!(
        out,
        "consul:    watch errors: {}",
        counts(&by(&s, m::CONSUL_WATCH_ERRORS_TOTAL, "reason"))
    );

    let mut upstreams: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (labels, value) in s.get(m::FORWARD_REQUESTS_TOTAL).into_iter().flatten() {
        if let (Some(u), Some(r)) = (label(labels, "upstream"), label(labels, "result")) {
            *upstreams
                .entry(u.to_owned())
                .or_default()
                .entry(r.to_owned())
                .or_insert(0.0) += value;
        }
    }
    if upstreams.is_empty() {
        let _ = writeln!(out, "upstreams: no query forwarded yet");
    }
    for (upstream, results) in &upstreams {
        let _ = writeln!(out, "upstream   {upstream}: {}", counts(results));
    }
    let _ = writeln!(
        out,
        "forward:   all upstreams failed {} times, refused (in-flight limit) {}",
        total(&s, m::FORWARD_ALL_UPSTREAMS_FAILED_TOTAL),
        total(&s, m::FORWARD_REFUSED_TOTAL)
    );

    let (hits, misses) = (
        total(&s, m::CACHE_HITS_TOTAL),
        total(&s, m::CACHE_MISSES_TOTAL),
    );
    let ratio = if hits + misses > 0.0 {
        format!("{:.1}%", 100.0 * hits / (hits + misses))
    } else {
        "n/a".to_owned()
    };
    let _ = writeln!(
        out,
        "cache:     {} entries, hit ratio {ratio} ({hits} hits, {misses} misses), {} served stale",
        total(&s, m::CACHE_ENTRIES),
        total(&s, m::SERVED_STALE_TOTAL)
    );
    let _ = writeln!(
        out,
        "answers:   {}",
        counts(&by(&s, m::DNS_RESPONSES_TOTAL, "rcode"))
    );
    let _ = writeln!(
        out,
        "renders:   {}",
        counts(&by(&s, m::EMIT_RENDERS_TOTAL, "result"))
    );
    let _ = writeln!(
        out,
        "reloads:   {}",
        counts(&by(&s, m::CONFIG_RELOADS_TOTAL, "result"))
    );
    out
}
