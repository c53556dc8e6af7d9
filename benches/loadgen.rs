//! The load generator on its own, against any server on loopback (issue 8):
//!
//!     cargo bench --bench loadgen -- 127.0.0.1:8600 [NAME] [A|SRV|AAAA] [--rate QPS] [--secs S] [--window N]
//!
//! One thread, one socket, `sendmmsg`/`recvmmsg`, `--window` queries outstanding (default 256)
//! at the maximum rate, or an open-loop `--rate`. Prints qps, loss, p50/p99 latency, the
//! generator's own CPU share (always about a core: it polls) and its idle polls (near 0%: the
//! generator, not the server, may be the limit).
//! See `compare.rs` for the full comparison against Unbound, dnsmasq and an echo server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "load/generator.rs"]
mod generator;
#[path = "forward/mmsg.rs"]
mod mmsg;

use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    // `cargo bench` adds `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut positional = Vec::new();
    let (mut rate, mut secs, mut window) = (None, 3u64, 256usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rate" => rate = it.next().and_then(|v| v.parse().ok()),
            "--secs" => secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(secs),
            "--window" => window = it.next().and_then(|v| v.parse().ok()).unwrap_or(window),
            _ => positional.push(a.clone()),
        }
    }
    let Some(target) = positional
        .first()
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        eprintln!(
            "usage: cargo bench --bench loadgen -- ADDR [NAME] [A|SRV|AAAA] [--rate QPS] [--secs S] [--window N]"
        );
        return;
    };
    assert!(target.ip().is_loopback(), "loopback targets only");
    let name = positional
        .get(1)
        .map_or("web.service.consul", String::as_str);
    let qtype = match positional.get(2).map(|t| t.to_ascii_uppercase()).as_deref() {
        Some("SRV") => 33,
        Some("AAAA") => 28,
        _ => 1,
    };
    let spec = generator::Spec {
        target,
        queries: vec![generator::query(name, qtype)],
        duration: Duration::from_secs(secs.min(60)),
        rate,
        window,
        max_queries: 20_000_000,
    };
    let r = generator::run(&spec).expect("socket");
    println!(
        "{target} {name} type {qtype}: {:.0} qps, sent {}, answered {}, lost {} ({:.3}%), errors {}, p50 {:?}, p99 {:?}, generator CPU {:.0}%, idle polls {:.0}%",
        r.qps(),
        r.sent,
        r.answered,
        r.lost,
        r.loss() * 100.0,
        r.errors,
        r.p50,
        r.p99,
        r.cpu_share() * 100.0,
        r.idle_polls * 100.0
    );
}
