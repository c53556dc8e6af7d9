//! Micro-benchmarks of the `.consul` path (criterion): reading a question, the table lookup
//! and answer write alone, routing and answering as the UDP worker does (per request with its
//! own clock and metrics, as before issue 8, and untimed with the batch's tally, as now), a
//! forward-cache hit, and building and serving a service with 5,000 instances (Consul needs
//! ~100 ms for SRV at that size, consul#4036).
//!
//!     cargo bench --bench answer

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query as HQuery};
use hickory_proto::rr::{Name, RecordType};
use signpost::config::{Config, Overrides};
use signpost::consul::answer::AnswerTable;
use signpost::consul::catalog::{Catalog, HealthEntry, Node, Service, Weights};
use signpost::forward::Forwarder;
use signpost::metrics::Tally;
use signpost::router::Router;
use signpost::server::{Dispatcher, Handled, Local};
use signpost::wire::{Proto, Query};
use signpost::zones::Zones;

fn config() -> Config {
    Config::parse(
        "[forward]\nupstreams = []\n",
        Path::new("bench.toml"),
        &Overrides::default(),
    )
    .expect("defaults are valid")
}

fn entry(i: usize, service: &str) -> HealthEntry {
    HealthEntry {
        node: Node {
            node: format!("node-{i}"),
            address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            datacenter: "dc1".into(),
            meta: BTreeMap::from([("consul-network-segment".into(), String::new())]),
            ..Node::default()
        }
        .into(),
        service: Service {
            id: format!("{service}-{i}"),
            service: service.into(),
            tags: vec!["v1".into()],
            port: 8080,
            weights: Some(Weights {
                passing: 1,
                warning: 1,
            }),
            ..Service::default()
        },
        checks: vec![],
    }
}

fn catalog(services: &[(&str, usize)]) -> Arc<Catalog> {
    let mut c = Catalog {
        datacenter: "dc1".into(),
        ..Catalog::default()
    };
    let mut base = 0;
    for (name, n) in services {
        let entries: Vec<HealthEntry> = (0..*n).map(|i| entry(base + i, name)).collect();
        base += n;
        c.services.insert((*name).into(), entries.into());
    }
    c.index_nodes_from_services();
    Arc::new(c)
}

fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 42;
    m.add_query(HQuery::query(Name::from_str(name).expect("name"), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m.to_vec().expect("encode")
}

fn dispatcher(table: AnswerTable, config: &Config) -> Dispatcher {
    let local = Local {
        router: Router::new(&["consul".into()], &[]),
        zones: Zones::default(),
    };
    let forwarder = Forwarder::new(&config.forward, &config.cache, &[]).expect("forwarder");
    Dispatcher::new(
        Arc::new(ArcSwap::from_pointee(table)),
        Arc::new(ArcSwap::from_pointee(local)),
        Arc::new(forwarder),
    )
}

fn hot_path(c: &mut Criterion) {
    let config = config();
    let domains = vec!["consul".to_string()];
    let table = AnswerTable::build(
        catalog(&[("web", 3), ("api", 3), ("db", 2)]),
        &domains,
        &config.dns,
    );
    let d = dispatcher(table, &config);
    let a = query("web.service.consul.", RecordType::A, false);
    let srv = query("web.service.consul.", RecordType::SRV, true);
    let mut out = Vec::with_capacity(65_535);

    c.bench_function("question parse", |b| {
        b.iter(|| Query::parse(std::hint::black_box(&a)).map(|q| q.qtype))
    });
    {
        let table = AnswerTable::build(
            catalog(&[("web", 3), ("api", 3), ("db", 2)]),
            &domains,
            &config.dns,
        );
        let q = Query::parse(&a).unwrap();
        let outcome = table.answer(&q, b"web.service", 0, Proto::Udp, &mut out);
        assert_eq!((outcome.rcode, out[7]), (0, 3), "NOERROR with 3 records");
        c.bench_function("table answer (lookup + write): web A", |b| {
            b.iter(|| {
                table.answer(
                    std::hint::black_box(&q),
                    b"web.service",
                    0,
                    Proto::Udp,
                    &mut out,
                )
            })
        });
    }
    c.bench_function("udp answer: web A (3 instances)", |b| {
        b.iter(|| {
            let h = d.answer_local(std::hint::black_box(&a), Proto::Udp, &mut out);
            assert_eq!(h, Handled::Answered);
        })
    });
    // The worker's path: no clock per request; metrics added once per batch of 32.
    let mut tally = Tally::default();
    let mut n = 0u32;
    c.bench_function("udp answer untimed + batch tally: web A", |b| {
        b.iter(|| {
            let (h, served) = d.answer_untimed(std::hint::black_box(&a), Proto::Udp, &mut out);
            if let Some(s) = served {
                tally.add(s.zone, s.rcode);
            }
            n += 1;
            if n.is_multiple_of(32) {
                tally.flush(d.metrics(), Proto::Udp, std::time::Duration::from_micros(5));
            }
            h
        })
    });
    c.bench_function("udp answer: web SRV + additional (EDNS)", |b| {
        b.iter(|| d.answer_local(std::hint::black_box(&srv), Proto::Udp, &mut out))
    });
    let nx = query("nope.service.consul.", RecordType::A, false);
    c.bench_function("udp answer: NXDOMAIN + SOA", |b| {
        b.iter(|| d.answer_local(std::hint::black_box(&nx), Proto::Udp, &mut out))
    });
}

fn large_service(c: &mut Criterion) {
    let config = config();
    let domains = vec!["consul".to_string()];
    let big = catalog(&[("big", 5_000)]);
    let mut group = c.benchmark_group("5,000 instances");
    group.sample_size(20);
    group.bench_function("build answer table", |b| {
        b.iter_batched(
            || Arc::clone(&big),
            |cat| AnswerTable::build(cat, &domains, &config.dns),
            BatchSize::SmallInput,
        )
    });
    let d = dispatcher(
        AnswerTable::build(Arc::clone(&big), &domains, &config.dns),
        &config,
    );
    let srv = query("big.service.consul.", RecordType::SRV, false);
    let a = query("big.service.consul.", RecordType::A, false);
    let mut out = Vec::with_capacity(65_535);
    group.bench_function("SRV over TCP (64 KiB answer)", |b| {
        b.iter(|| d.answer_local(std::hint::black_box(&srv), Proto::Tcp, &mut out))
    });
    group.bench_function("A over TCP", |b| {
        b.iter(|| d.answer_local(std::hint::black_box(&a), Proto::Tcp, &mut out))
    });
    group.finish();
}

/// A fresh forward-cache hit: key built on the stack, moka lookup, copy, ID/case and TTL patch.
fn forward_cache_hit(c: &mut Criterion) {
    let upstream = fake_upstream();
    let config = Config::parse(
        &format!("[forward]\nupstreams = [\"{upstream}\"]\n"),
        Path::new("bench.toml"),
        &Overrides::default(),
    )
    .unwrap();
    let d = dispatcher(
        AnswerTable::empty(&["consul".to_string()], &config.dns),
        &config,
    );
    let q = query("www.example.net.", RecordType::A, false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(d.forward(&q, Proto::Udp));
    let mut out = Vec::with_capacity(512);
    assert_eq!(d.answer_local(&q, Proto::Udp, &mut out), Handled::Answered);
    c.bench_function("udp answer: forward cache hit", |b| {
        b.iter(|| d.answer_untimed(std::hint::black_box(&q), Proto::Udp, &mut out))
    });
}

/// `A 192.0.2.1`, TTL 3600, for any question.
fn fake_upstream() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
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
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
        }
    });
    addr
}

criterion_group!(benches, hot_path, forward_cache_hit, large_service);
criterion_main!(benches);
