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
/// Requests sent to the Consul agent, by `endpoint` (self, services, health_state, health_service, nodes, query).
pub const CONSUL_REQUESTS_TOTAL: &str = "signpost_consul_requests_total";
/// Template and SRV data renders, by `result` (ok, unchanged, render_error, check_failed, timeout, reload_failed, write_error).
pub const EMIT_RENDERS_TOTAL: &str = "signpost_emit_renders_total";
