//! Running signpost on a node (issue 9): what systemd, an init script or an operator needs
//! beyond answering DNS.
//!
//! - [`notify`]: `sd_notify` (`READY=1`, `WATCHDOG=1`, `RELOADING=1`, `STOPPING=1`).
//! - [`privileges`]: `--user`: drop root after binding port 53.
//! - [`query_log`]: the opt-in query log, off the request path.
//! - [`status`]: `signpost status`, a summary read from a running signpost's `/metrics`.

pub mod notify;
pub mod privileges;
pub mod query_log;
pub mod status;
