//! The hot path's rules, checked rather than asserted in a comment (issue 8): answering a
//! `.consul` A or SRV hit, an NXDOMAIN and a forward-cache hit allocates nothing once warm,
//! and takes no lock that a writer could hold.
//!
//! A counting global allocator counts, on the calling thread only (the test harness runs other
//! tests on other threads), every allocation made while counting is on. It is its own test
//! binary because a `#[global_allocator]` is process-wide.
//!
//! Why no lock, argued once: `Dispatcher::answer_untimed` reads its data through two
//! `ArcSwap` loads (the answer table and the local zones/router), which take a thread-local
//! debt slot and never a mutex; the answer table is immutable once built (the one mutex in
//! it guards prepared-query *templates*, which are not on this path); the rotation counter is
//! thread-local; metrics are stored `Counter` handles and atomic histograms; the forward cache
//! is a `moka::sync::Cache`, whose reads are lock-free (a concurrent hash map and a bounded
//! read-log channel; its maintenance takes only a `try_lock`, never waiting). What a test can
//! show is asserted below: the dispatcher's data types are `ArcSwap` (a compile-time check of
//! `Dispatcher::new`'s signature), and readers keep answering correctly while a writer swaps
//! tables as fast as it can.

// The allocator wrapper is the one `unsafe` here: a `GlobalAlloc` impl cannot be written
// without it.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, Query as HQuery};
use hickory_proto::rr::{Name, RecordType};
use signpost::config::{Config, Overrides};
use signpost::consul::answer::AnswerTable;
use signpost::consul::file;
use signpost::forward::Forwarder;
use signpost::metrics::Zone;
use signpost::router::Router;
use signpost::server::{Dispatcher, Handled, Local, Served};
use signpost::wire::{Proto, rcode};
use signpost::zones::Zones;

/// Counts allocations made on a thread while its `COUNTING` flag is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the thread-locals may already be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged, so `System`'s guarantees are this allocator's; the counting touches only
// const-initialised thread-locals of plain `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made on this thread by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

/// Queries answered per measured loop (the answer rotation goes round many times).
const ROUNDS: usize = 1_000;

fn config(upstream: Option<SocketAddr>) -> Config {
    let upstreams = upstream.map_or(String::new(), |a| format!("\"{a}\""));
    Config::parse(
        &format!("[forward]\nupstreams = [{upstreams}]\n"),
        Path::new("alloc.toml"),
        &Overrides::default(),
    )
    .expect("valid config")
}

/// The demo catalog's table (service `web` with 3 instances) behind a dispatcher, with the
/// Prometheus recorder installed so the metric handles are real atomics as in production.
fn dispatcher(config: &Config) -> (Dispatcher, Arc<ArcSwap<AnswerTable>>) {
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-catalog.json");
    let catalog = file::load(&path, "dc1", "node-1").expect("demo catalog parses");
    let domains = vec!["consul".to_string()];
    let table = Arc::new(ArcSwap::from_pointee(AnswerTable::build(
        Arc::new(catalog),
        &domains,
        &config.dns,
    )));
    let local = Local {
        router: Router::new(&domains, &[]),
        zones: Zones::default(),
    };
    let forwarder = Forwarder::new(&config.forward, &config.cache, &[]).expect("forwarder");
    let d = Dispatcher::new(
        Arc::clone(&table),
        Arc::new(ArcSwap::from_pointee(local)),
        Arc::new(forwarder),
    );
    (d, table)
}

fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 7;
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_str(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Answer `packet` [`ROUNDS`] times after a warm-up and return the allocations counted, with
/// what the last answer was.
fn measure(d: &Dispatcher, packet: &[u8]) -> (usize, Handled, Option<Served>) {
    let mut out = Vec::with_capacity(512);
    // Warm-up: the thread's ArcSwap debt slot, the rotation counter, `out`'s growth.
    for _ in 0..64 {
        d.answer_untimed(packet, Proto::Udp, &mut out);
        d.answer_local(packet, Proto::Udp, &mut out);
    }
    let mut last = (Handled::Drop, None);
    let n = allocations(|| {
        for _ in 0..ROUNDS {
            last = d.answer_untimed(std::hint::black_box(packet), Proto::Udp, &mut out);
            // The timed variant (TCP, tests) follows the same rules.
            d.answer_local(std::hint::black_box(packet), Proto::Udp, &mut out);
        }
    });
    (n, last.0, last.1)
}

/// A `.consul` A hit (3 instances, rotated) allocates nothing once warm.
#[test]
fn consul_a_hit_allocates_nothing() {
    let (d, _) = dispatcher(&config(None));
    let (n, handled, served) = measure(&d, &query("web.service.consul.", RecordType::A, false));
    assert_eq!(handled, Handled::Answered);
    assert_eq!(
        served,
        Some(Served {
            zone: Zone::Consul,
            rcode: rcode::NOERROR
        })
    );
    assert_eq!(n, 0, "allocations on the .consul A hit path");
}

/// A `.consul` SRV hit with EDNS (answers plus additional records) allocates nothing.
#[test]
fn consul_srv_hit_allocates_nothing() {
    let (d, _) = dispatcher(&config(None));
    let (n, handled, served) = measure(&d, &query("web.service.consul.", RecordType::SRV, true));
    assert_eq!(handled, Handled::Answered);
    assert_eq!(served.map(|s| s.rcode), Some(rcode::NOERROR));
    assert_eq!(n, 0, "allocations on the .consul SRV hit path");
}

/// An NXDOMAIN for an unknown service (with the SOA) allocates nothing.
#[test]
fn consul_nxdomain_allocates_nothing() {
    let (d, _) = dispatcher(&config(None));
    let (n, handled, served) = measure(&d, &query("nope.service.consul.", RecordType::A, false));
    assert_eq!(handled, Handled::Answered);
    assert_eq!(served.map(|s| s.rcode), Some(rcode::NXDOMAIN));
    assert_eq!(n, 0, "allocations on the NXDOMAIN path");
}

/// A fresh forward-cache hit is answered in place and allocates nothing once warm.
#[test]
fn forward_cache_hit_allocates_nothing() {
    let upstream = fake_upstream();
    let (d, _) = dispatcher(&config(Some(upstream)));
    let packet = query("www.example.net.", RecordType::A, false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The miss goes upstream once and fills the cache.
    let reply = runtime.block_on(d.forward(&packet, Proto::Udp));
    assert_eq!(reply[3] & 0x0F, rcode::NOERROR);
    let mut out = Vec::new();
    assert_eq!(
        d.answer_untimed(&packet, Proto::Udp, &mut out).0,
        Handled::Answered,
        "the second ask is a cache hit"
    );
    let (n, handled, served) = measure(&d, &packet);
    assert_eq!(handled, Handled::Answered);
    assert_eq!(
        served,
        Some(Served {
            zone: Zone::Forward,
            rcode: rcode::NOERROR
        })
    );
    assert_eq!(n, 0, "allocations on the forward-cache hit path");
}

/// Another datacenter's name, once its table is built, is answered like a local one: no
/// allocation (and, for a datacenter the agent does not know, NXDOMAIN without one either).
#[test]
fn remote_datacenter_hit_allocates_nothing() {
    use signpost::consul::remote::Remotes;
    let config = config(None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let domains = vec!["consul".to_string()];
    let (_dns_tx, dns_rx) = tokio::sync::watch::channel(Arc::new(config.dns.clone()));
    // No agent (`None`): a datacenter without a table is unknown.
    let remotes = Arc::new(Remotes::new(None, domains.clone(), dns_rx));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-catalog.json");
    let dc2 = file::load(&path, "dc2", "node-1").expect("demo catalog parses");
    let table = AnswerTable::build(Arc::new(dc2), &domains, &config.dns);
    remotes.serve_table("dc2", Arc::new(ArcSwap::from_pointee(table)));
    let (d, _) = dispatcher(&config);
    let d = d.with_remotes(remotes);

    for rtype in [RecordType::A, RecordType::SRV] {
        let packet = query("web.service.dc2.consul.", rtype, true);
        let (n, handled, served) = measure(&d, &packet);
        assert_eq!(handled, Handled::Answered);
        assert_eq!(served.map(|s| s.rcode), Some(rcode::NOERROR));
        assert_eq!(n, 0, "allocations on the remote {rtype} hit path");
    }
    let (n, handled, served) = measure(&d, &query("web.service.dc9.consul.", RecordType::A, false));
    assert_eq!(handled, Handled::Answered);
    assert_eq!(served.map(|s| s.rcode), Some(rcode::NXDOMAIN));
    assert_eq!(n, 0, "allocations on the unknown datacenter path");
}

/// The data the hot path reads is published through `ArcSwap` (lock-free loads); this only
/// compiles while `Dispatcher::new` takes it that way.
#[test]
fn dispatcher_data_is_behind_arc_swap() {
    type Table = Arc<ArcSwap<AnswerTable>>;
    type LocalData = Arc<ArcSwap<Local>>;
    let _: fn(Table, LocalData, Arc<Forwarder>) -> Dispatcher = Dispatcher::new;
}

/// Readers keep answering, every answer complete, while a writer swaps in new tables as fast as
/// it can: a catalog update never makes the hot path wait or see a half-built table.
#[test]
fn answers_stay_whole_while_tables_swap() {
    let config = config(None);
    let (d, table) = dispatcher(&config);
    let spare = table.load_full();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                table.store(Arc::clone(&spare));
                swaps += 1;
            }
            swaps
        })
    };
    let packet = query("web.service.consul.", RecordType::A, false);
    let mut out = Vec::new();
    for _ in 0..50_000 {
        let (handled, _) = d.answer_untimed(&packet, Proto::Udp, &mut out);
        assert_eq!(handled, Handled::Answered);
        assert_eq!(&out[6..8], &[0, 3], "three A records");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
}

/// A tiny upstream: `A 192.0.2.1`, TTL 3600, for any question.
fn fake_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = socket.recv_from(&mut buf) {
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
            reply.metadata.recursion_desired = request.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            for q in &request.queries {
                reply.add_query(q.clone());
                reply.add_answer(hickory_proto::rr::Record::from_rdata(
                    q.name().clone(),
                    3600,
                    hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
                ));
            }
            reply.edns = request.edns.clone();
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
        }
    });
    addr
}
