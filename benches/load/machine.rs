//! What the comparison benchmarks need from the machine: pinning to cores, finding programs,
//! free loopback ports. Shared by `benches/compare.rs` and `benches/forward.rs`.

use std::net::UdpSocket;
use std::process::{Command, Stdio};

/// Pin this process (all threads) to core 0 and say whether it worked.
pub(crate) fn pin_self() -> bool {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores >= 2
        && Command::new("taskset")
            .args(["-a", "-c", "-p", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `program` under `taskset -c 1` when pinned.
pub(crate) fn command(pinned: bool, program: &str) -> Command {
    if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", program]);
        c
    } else {
        Command::new(program)
    }
}

/// Whether `program` is on PATH.
pub(crate) fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A loopback port free for UDP and TCP right now.
pub(crate) fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
