//! Shared test support: fakes for the services signpost talks to.

pub mod fake_consul;
