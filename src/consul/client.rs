//! HTTP client for the Consul agent (to be written).
