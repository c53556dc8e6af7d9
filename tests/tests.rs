//! The one integration binary: each module tests one part of signpost against real sockets on
//! 127.0.0.1; `support` holds the fakes they run against and the in-process harness.

// `support` items are `pub` so that every test module can use them; in a test binary nothing
// is reachable from outside, which is all `unreachable_pub` would report.
#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// The command line: exit codes, messages, the shipped configs, the demo under the real `dig`.
mod cli;
/// Consul's own DNS test cases (`reference/consul-dns.md` §9) over UDP, TCP and `dig`.
mod conformance;
/// Agent faults through the whole signpost (and the binary, for the outage), partial fetches,
/// and the idle request budget.
mod consul_faults;
/// The Consul feed (`consul::watch`, `consul::file`) against the fake agent.
mod consul_feed;
/// DNS over real sockets: `.consul` from the fake agent, other names to a fake upstream.
mod dns;
/// The emitter: templates, quiescence, check/replace/reload, `render --once`, the HAProxy template.
mod emit;
/// The forwarder against scripted fake upstreams.
mod forward;
/// The forwarder inside the whole signpost: a real dnsmasq upstream, loop check, coalescing.
mod forward_e2e;
/// A real HAProxy fed by signpost's SRV records follows the catalog.
mod haproxy_srv;
/// `/health`, `/ready`, `/metrics`, `/v1/catalog`.
mod http;
/// Local data: zones and the hosts file, reloaded on change.
mod local_data;
/// Running on a node: reload and shutdown, systemd, privileges, alerts, status, imports, netns.
mod ops;
/// Prepared-query failover through the agent's `/execute`.
mod pq_failover;
/// Other datacenters: watched on first use, within the connection budget.
mod remote_dc;
