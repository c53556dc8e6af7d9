//! The systemd notification protocol (`sd_notify(3)`): one datagram per state change to the
//! unix socket named by `$NOTIFY_SOCKET`.
//!
//! Written here rather than taken from a crate: the protocol is a single `sendto` of
//! `KEY=VALUE` lines to a path or an abstract (`@`) socket, which std's `UnixDatagram` does
//! without `unsafe`; a dependency would add more code than it saves. Outside systemd
//! (`$NOTIFY_SOCKET` unset) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, read once from the environment at start-up.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
    socket: Option<UnixDatagram>,
    /// Half of `$WATCHDOG_USEC` (systemd's advice), when the watchdog is on.
    watchdog: Option<Duration>,
}

// === impl Notifier ===

impl Notifier {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC` (ignored unless `WATCHDOG_PID` is unset or ours).
    pub fn from_env() -> Notifier {
        let socket_var = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(socket_var.as_deref(), usec.as_deref(), pid.as_deref())
    }

    /// From the three values, for tests.
    pub fn new(
        socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let target = socket.and_then(|path| address(path).ok());
        let ours = watchdog_pid.is_none_or(|p| p.parse() == Ok(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(|u| Duration::from_micros(u / 2));
        let socket = target.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        Notifier {
            target,
            socket,
            watchdog,
        }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`, if the unit has `WatchdogSec=`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send `state` (`READY=1`, `STATUS=...`, several lines allowed). Failures are returned
    /// for the caller to log; systemd going away must not stop DNS.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match (&self.socket, &self.target) {
            (Some(socket), Some(target)) => {
                socket.send_to_addr(state.as_bytes(), target).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

/// `@name` is an abstract socket (Linux), anything else a path.
fn address(path: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None => SocketAddr::from_pathname(path),
    }
}

/// `CLOCK_MONOTONIC` now in microseconds, for `RELOADING=1`'s `MONOTONIC_USEC=` (systemd 253
/// `Type=notify-reload` wants it; older ones ignore it).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}
