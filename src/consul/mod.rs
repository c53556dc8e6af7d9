//! Consul: the catalog snapshot, its feed from the agent, the `.consul` name grammar and the
//! pre-encoded answer table.

pub mod answer;
pub mod catalog;
pub mod client;
pub mod failover;
pub mod file;
pub mod name;
pub mod query;
pub mod remote;
pub mod watch;

pub use catalog::Catalog;
