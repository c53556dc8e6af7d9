//! Every `signpost_*` metric name, documented once; the README's `## Metrics` mirrors this list.
//!
//! Labels are bounded enums (`proto`, `zone`, `rcode`, `result`, `reason`, `state`) or config
//! values (`upstream`), never a query name, a client address or a service name.

/// Requests received, by `proto` (udp, tcp) and `zone` (consul, zone, forward, invalid).
pub const DNS_REQUESTS_TOTAL: &str = "signpost_dns_requests_total";
/// Responses sent, by `zone` and `rcode` (noerror, formerr, servfail, nxdomain, notimp, refused, other).
pub const DNS_RESPONSES_TOTAL: &str = "signpost_dns_responses_total";
/// Time from receiving a request to handing its answer to the socket, by `zone`.
pub const DNS_REQUEST_DURATION_SECONDS: &str = "signpost_dns_request_duration_seconds";
/// Forward cache hits.
pub const CACHE_HITS_TOTAL: &str = "signpost_cache_hits_total";
/// Forward cache misses.
pub const CACHE_MISSES_TOTAL: &str = "signpost_cache_misses_total";
/// Entries in the forward cache.
pub const CACHE_ENTRIES: &str = "signpost_cache_entries";
/// Entries evicted from the forward cache before they expired.
pub const CACHE_EVICTIONS_TOTAL: &str = "signpost_cache_evictions_total";
/// Answers served from an expired cache entry because every upstream failed (RFC 8767).
pub const SERVED_STALE_TOTAL: &str = "signpost_served_stale_total";
/// Queries sent upstream, by `upstream` (as configured) and `result`
/// (ok, nxdomain, servfail, refused, formerr, timeout, error, truncated).
pub const FORWARD_REQUESTS_TOTAL: &str = "signpost_forward_requests_total";
/// Upstream round-trip time, by `upstream`.
pub const FORWARD_REQUEST_DURATION_SECONDS: &str = "signpost_forward_request_duration_seconds";
/// Forwarded queries for which no upstream gave a usable answer.
pub const FORWARD_ALL_UPSTREAMS_FAILED_TOTAL: &str = "signpost_forward_all_upstreams_failed_total";
/// Forwarded queries refused because `forward.max_in_flight` were already in flight.
pub const FORWARD_REFUSED_TOTAL: &str = "signpost_forward_refused_total";
/// Errors talking to the Consul agent, by `reason`
/// (connect, timeout, status_4xx, status_5xx, too_many_requests, forbidden, body, decode, index_reset).
pub const CONSUL_WATCH_ERRORS_TOTAL: &str = "signpost_consul_watch_errors_total";
/// Unix time of the last successful answer from the agent.
pub const CONSUL_LAST_CONTACT_TIMESTAMP_SECONDS: &str =
    "signpost_consul_last_contact_timestamp_seconds";
/// Seconds since the catalog being served was last confirmed fresh by the agent.
pub const CONSUL_CATALOG_AGE_SECONDS: &str = "signpost_consul_catalog_age_seconds";
/// Services in the catalog being served.
pub const CONSUL_SERVICES: &str = "signpost_consul_services";
/// Instances in the catalog being served, by `state` (passing, warning, critical).
pub const CONSUL_INSTANCES: &str = "signpost_consul_instances";
/// Requests sent to the Consul agent, by `endpoint` (self, services, health_state, health_service, nodes, query, datacenters, execute).
pub const CONSUL_REQUESTS_TOTAL: &str = "signpost_consul_requests_total";
/// Template and SRV data renders, by `result` (ok, unchanged, render_error, check_failed, timeout, reload_failed, write_error).
pub const EMIT_RENDERS_TOTAL: &str = "signpost_emit_renders_total";
/// Configuration reloads (SIGHUP), by `result` (ok, error). An error keeps the running config.
pub const CONFIG_RELOADS_TOTAL: &str = "signpost_config_reloads_total";
/// 1 while `/ready` would answer 200 (listeners bound, first catalog loaded), else 0.
pub const READY: &str = "signpost_ready";
/// Query-log lines dropped because the log writer was behind (`log.queries`).
pub const QUERY_LOG_DROPPED_TOTAL: &str = "signpost_query_log_dropped_total";

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;

use crate::wire::{Proto, rcode};

/// The `zone` label: which answerer a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Consul = 0,
    Static = 1,
    Forward = 2,
    /// Malformed or refused before routing.
    Invalid = 3,
}

impl Zone {
    pub const ALL: [Zone; 4] = [Zone::Consul, Zone::Static, Zone::Forward, Zone::Invalid];

    pub fn label(self) -> &'static str {
        match self {
            Zone::Consul => "consul",
            Zone::Static => "zone",
            Zone::Forward => "forward",
            Zone::Invalid => "invalid",
        }
    }
}

const RCODE_LABELS: [&str; 7] = [
    "noerror", "formerr", "servfail", "nxdomain", "notimp", "refused", "other",
];

/// Request-path metric handles, registered once so that counting is an atomic add
/// (`reference/hickory.md` §5: about 5 ns with a stored handle, about 100 ns through the macro).
pub struct DnsMetrics {
    requests: [[Counter; 4]; 2],
    responses: [[Counter; 7]; 4],
    durations: [LatencyHistogram; 4],
}

impl DnsMetrics {
    /// Register every series now, so they show in `/metrics` from the start.
    pub fn new() -> DnsMetrics {
        let requests = [Proto::Udp, Proto::Tcp].map(|proto| {
            let p = match proto {
                Proto::Udp => "udp",
                Proto::Tcp => "tcp",
            };
            Zone::ALL
                .map(|z| metrics::counter!(DNS_REQUESTS_TOTAL, "proto" => p, "zone" => z.label()))
        });
        let responses = Zone::ALL.map(|z| {
            RCODE_LABELS
                .map(|r| metrics::counter!(DNS_RESPONSES_TOTAL, "zone" => z.label(), "rcode" => r))
        });
        DnsMetrics {
            requests,
            responses,
            durations: Default::default(),
        }
    }

    /// Count one request and its response.
    #[inline]
    pub fn record(&self, proto: Proto, zone: Zone, rcode_value: u8, elapsed: Duration) {
        self.record_many(proto, zone, rcode_index(rcode_value), 1, elapsed);
    }

    /// Count `n` requests of one kind that took `elapsed` each: one atomic add per series
    /// instead of one per request (the UDP worker counts a whole batch this way).
    #[inline]
    fn record_many(&self, proto: Proto, zone: Zone, rcode_at: usize, n: u64, elapsed: Duration) {
        self.requests[proto as usize][zone as usize].increment(n);
        self.responses[zone as usize][rcode_at].increment(n);
        self.durations[zone as usize].observe_n(elapsed, n);
    }

    /// Append `dns_request_duration_seconds` in the Prometheus text format.
    pub fn render_durations(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {DNS_REQUEST_DURATION_SECONDS} Time from receiving a request to handing its answer to the socket."
        );
        let _ = writeln!(out, "# TYPE {DNS_REQUEST_DURATION_SECONDS} histogram");
        for zone in Zone::ALL {
            self.durations[zone as usize].render(out, DNS_REQUEST_DURATION_SECONDS, zone.label());
        }
    }
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The rcode label index: the six named codes, then "other".
#[inline]
fn rcode_index(rcode_value: u8) -> usize {
    match rcode_value {
        rcode::NOERROR..=rcode::REFUSED => rcode_value as usize,
        _ => RCODE_LABELS.len() - 1,
    }
}

/// Counts of one batch of requests, kept on the worker's stack and added to the shared
/// [`DnsMetrics`] once per batch: the per-request cost is a plain increment, and the shared
/// atomics (whose cache lines move between cores) are touched a few times per batch.
#[derive(Default)]
pub struct Tally {
    counts: [[u32; RCODE_LABELS.len()]; 4],
    any: bool,
}

// === impl Tally ===

impl Tally {
    #[inline]
    pub fn add(&mut self, zone: Zone, rcode_value: u8) {
        self.counts[zone as usize][rcode_index(rcode_value)] += 1;
        self.any = true;
    }

    /// Add the counts to `metrics`, every request having taken `elapsed`, and reset.
    pub fn flush(&mut self, metrics: &DnsMetrics, proto: Proto, elapsed: Duration) {
        if !self.any {
            return;
        }
        for zone in Zone::ALL {
            for (r, n) in self.counts[zone as usize].iter_mut().enumerate() {
                if *n > 0 {
                    metrics.record_many(proto, zone, r, u64::from(*n), elapsed);
                    *n = 0;
                }
            }
        }
        self.any = false;
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.25,
    1.0, 2.5,
];
/// [`BUCKETS`] in nanoseconds, for the request path.
const BUCKET_NANOS: [u64; BUCKETS.len()] = {
    let mut out = [0u64; BUCKETS.len()];
    let mut i = 0;
    while i < BUCKETS.len() {
        out[i] = (BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    out
};

/// A fixed-bucket histogram made of atomics. The exporter's own histograms store samples in
/// blocks that are allocated as they fill; this one never allocates, which the request path
/// requires.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        self.observe_n(elapsed, 1);
    }

    /// `n` samples of `elapsed`. Integer nanoseconds against [`BUCKET_NANOS`]: no float maths.
    #[inline]
    pub fn observe_n(&self, elapsed: Duration, n: u64) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKET_NANOS.iter().position(|&b| nanos <= b) {
            self.buckets[i].fetch_add(n, Ordering::Relaxed);
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, zone: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{zone=\"{zone}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{zone=\"{zone}\",le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{zone=\"{zone}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{zone=\"{zone}\"}} {count}");
    }
}
