//! signpost: a node-local DNS sidecar for Consul.
//!
//! # Layout
//!
//! In request-path order:
//! - [`server`]: UDP and TCP listeners; the pre-encoded `.consul` hot path.
//! - [`wire`]: allocation-free reading of a query and writing of an answer.
//! - [`router`]: longest-suffix routing of a name to the Consul zone, a static zone or the forwarder.
//! - [`consul`]: the catalog ([`consul::catalog`]), its feed from the agent ([`consul::watch`],
//!   [`consul::client`]), the name grammar ([`consul::name`]) and the answer table
//!   ([`consul::answer`]).
//! - [`zones`]: static RFC 1035 zones served authoritatively.
//! - [`forward`]: everything else, to the upstream resolvers.
//! - [`emit`]: the SRV data document (file and `/v1/catalog`) and templates rendered from it,
//!   checked, swapped in and reloaded.
//! - [`metrics`]: every metric name; [`http`]: `/metrics`, `/health`, `/ready`, `/v1/catalog`.
//! - [`config`]: TOML → validated [`config::Config`]; [`app`]: wiring, reload and shutdown.
//! - [`ops`]: running on a node: systemd notifications, dropping privileges, the query log,
//!   `signpost status`; [`import`]: dnsmasq and Consul DNS configurations to signpost's.

pub mod app;
pub mod config;
pub mod consul;
pub mod emit;
pub mod forward;
pub mod http;
pub mod import;
pub mod metrics;
pub mod ops;
pub mod router;
pub mod server;
pub mod wire;
pub mod zones;
