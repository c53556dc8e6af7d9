//! Forwarding (placeholder until the forwarder lands).
use std::net::SocketAddr;

use crate::config::{CacheConfig, ForwardConfig};
use crate::wire::Proto;

pub struct Forwarder;

#[derive(Debug, thiserror::Error)]
#[error("forward")]
pub struct ForwardError;

impl Forwarder {
    pub fn new(
        _config: &ForwardConfig,
        _cache: &CacheConfig,
        _own: &[SocketAddr],
    ) -> Result<Forwarder, ForwardError> {
        Ok(Forwarder)
    }
    pub async fn resolve(&self, _request: &[u8], _proto: Proto) -> Vec<u8> {
        Vec::new()
    }
}
