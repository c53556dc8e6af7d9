//! Shared test support: fakes for the services signpost talks to, and the harness that starts
//! signpost in-process.

pub(crate) mod dnsmasq;
pub mod fake_consul;
pub(crate) mod fake_upstream;
pub(crate) mod signpost;
