//! HTTP client (placeholder until the client lands).
#[derive(Debug, thiserror::Error)]
#[error("consul")]
pub struct ConsulError;
