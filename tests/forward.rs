//! The forwarder through its public API, against fake upstreams on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use signpost::config::{CacheConfig, ForwardConfig, ForwardDomain, Strategy, Upstream};
use signpost::forward::{ForwardError, Forwarder};
use signpost::wire::Proto;

use crate::support::fake_upstream::{Answer, Behaviour, FAKE_OPTION_CODE, FakeUpstream};

/// The EDNS option a test client sends, expected back unchanged (local use, RFC 6891 §9).
const CLIENT_OPTION_CODE: u16 = 65002;
const TIMEOUT: Duration = Duration::from_millis(300);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn forward_config(upstreams: &[&FakeUpstream]) -> ForwardConfig {
    ForwardConfig {
        upstreams: upstreams.iter().map(|f| Upstream::Addr(f.addr)).collect(),
        timeout: TIMEOUT,
        strategy: Strategy::Sequential,
        domains: Vec::new(),
        max_in_flight: 2000,
    }
}

fn no_cache() -> CacheConfig {
    CacheConfig {
        size: 0,
        ..with_cache()
    }
}

fn with_cache() -> CacheConfig {
    CacheConfig {
        size: 10_000,
        min_ttl: Duration::ZERO,
        max_ttl: Duration::from_secs(3600),
        negative_max_ttl: Duration::from_secs(3600),
        servfail_ttl: Duration::from_secs(5),
        serve_stale: Duration::ZERO,
        stale_ttl: Duration::from_secs(30),
        stale_answer_timeout: Duration::from_millis(1800),
    }
}

fn forwarder(upstreams: &[&FakeUpstream], cache: CacheConfig) -> Forwarder {
    Forwarder::new(&forward_config(upstreams), &cache, &[]).unwrap()
}

/// A recursive query with ID `id`, plain.
fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    query_message(id, name, qtype).to_vec().unwrap()
}

fn query_message(id: u16, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, hickory_proto::op::OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

/// A query with EDNS (payload 1232, DO set) carrying [`CLIENT_OPTION_CODE`].
fn query_with_edns(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = query_message(id, name, qtype);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(true);
    edns.options_mut()
        .insert(EdnsOption::Unknown(CLIENT_OPTION_CODE, b"client".to_vec()));
    message.set_edns(edns);
    message.to_vec().unwrap()
}

fn parse(wire: &[u8]) -> Message {
    Message::from_vec(wire).unwrap()
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn option(message: &Message, code: u16) -> Option<Vec<u8>> {
    match message.edns.as_ref()?.option(EdnsCode::from(code))? {
        EdnsOption::Unknown(_, data) => Some(data.clone()),
        _ => None,
    }
}

/// Relays a NOERROR answer with the client's ID and question case, the upstream's flags and
/// TTLs, and EDNS options both ways: the client's option reaches the upstream, the upstream's
/// option reaches the client.
#[tokio::test]
async fn relays_answer_with_flags_and_edns() {
    let mut answer = Answer::a(ip(1), 123);
    answer.authoritative = true;
    let fake = FakeUpstream::start(answer).await;
    let forwarder = forwarder(&[&fake], no_cache());

    let reply = parse(
        &forwarder
            .resolve(
                &query_with_edns(0xBEEF, "WwW.Example.ORG.", RecordType::A),
                Proto::Udp,
            )
            .await,
    );

    assert_eq!(reply.metadata.id, 0xBEEF);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative && reply.metadata.recursion_available);
    assert_eq!(reply.queries[0].name().to_ascii(), "WwW.Example.ORG.");
    assert_eq!(a_records(&reply), vec![ip(1)]);
    assert_eq!(reply.answers[0].ttl, 123);
    assert_eq!(reply.edns.as_ref().unwrap().max_payload(), 1232);
    assert!(reply.edns.as_ref().unwrap().flags().dnssec_ok);
    assert_eq!(
        option(&reply, CLIENT_OPTION_CODE).as_deref(),
        Some(&b"client"[..])
    );
    assert_eq!(
        option(&reply, FAKE_OPTION_CODE).as_deref(),
        Some(&b"fake"[..])
    );

    let sent = fake.last_query().unwrap();
    assert_eq!(sent.queries[0].name().to_ascii(), "WwW.Example.ORG.");
    assert!(sent.metadata.recursion_desired);
    assert_eq!(
        option(&sent, CLIENT_OPTION_CODE).as_deref(),
        Some(&b"client"[..])
    );
}

/// Sends each attempt with a fresh random ID, not the client's.
#[tokio::test]
async fn upstream_ids_are_random() {
    let fake = FakeUpstream::start(Answer::a(ip(1), 60)).await;
    let forwarder = forwarder(&[&fake], no_cache());
    let mut ids = Vec::new();
    for _ in 0..4 {
        let reply = parse(
            &forwarder
                .resolve(&query(7, "www.example.org.", RecordType::A), Proto::Udp)
                .await,
        );
        assert_eq!(reply.metadata.id, 7);
        ids.push(fake.last_query().unwrap().metadata.id);
    }
    assert!(
        ids.iter().any(|id| *id != 7),
        "upstream saw only the client's ID: {ids:?}"
    );
}

/// Relays NXDOMAIN with the SOA in the authority section, as the upstream sent it.
#[tokio::test]
async fn relays_nxdomain_with_soa() {
    let fake = FakeUpstream::start(Answer::negative(
        ResponseCode::NXDomain,
        "example.org.",
        900,
        60,
    ))
    .await;
    let forwarder = forwarder(&[&fake], no_cache());

    let reply = parse(
        &forwarder
            .resolve(&query(1, "nope.example.org.", RecordType::A), Proto::Udp)
            .await,
    );

    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.metadata.authoritative);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.authorities.len(), 1);
    assert_eq!(reply.authorities[0].name.to_ascii(), "example.org.");
    assert_eq!(reply.authorities[0].ttl, 900);
    assert!(matches!(&reply.authorities[0].data, RData::SOA(soa) if soa.minimum == 60));
    assert!(
        reply.edns.is_none(),
        "an OPT record appeared for a client without EDNS"
    );
}

/// SERVFAIL, REFUSED, FORMERR or silence from the first upstream moves on to the second.
#[tokio::test]
async fn failing_first_upstream_moves_on() {
    for behaviour in [
        Behaviour::ServFail,
        Behaviour::Refused,
        Behaviour::FormErr,
        Behaviour::Silent,
    ] {
        let first = FakeUpstream::with(behaviour.clone(), ip(1)).await;
        let second = FakeUpstream::with(Behaviour::Answer, ip(2)).await;
        let forwarder = forwarder(&[&first, &second], no_cache());

        let reply = parse(
            &forwarder
                .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Udp)
                .await,
        );

        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{behaviour:?}"
        );
        assert_eq!(a_records(&reply), vec![ip(2)], "{behaviour:?}");
        assert_eq!((first.queries(), second.queries()), (1, 1), "{behaviour:?}");
    }
}

/// A closed upstream port (ICMP unreachable) moves on at once, without waiting for the timeout.
#[tokio::test]
async fn closed_port_moves_on_fast() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let good = FakeUpstream::with(Behaviour::Answer, ip(2)).await;
    let mut config = forward_config(&[&good]);
    config.upstreams.insert(0, Upstream::Addr(closed_addr));
    config.timeout = Duration::from_secs(5);
    let forwarder = Forwarder::new(&config, &no_cache(), &[]).unwrap();

    let start = Instant::now();
    let reply = parse(
        &forwarder
            .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Udp)
            .await,
    );

    assert_eq!(a_records(&reply), vec![ip(2)]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

/// When every upstream fails the client gets SERVFAIL with RA=1 and its EDNS echoed, within the
/// sum of the timeouts; identical queries in flight share the one failed round, which is counted
/// once in `signpost_forward_all_upstreams_failed_total`.
#[test]
fn all_upstreams_fail_servfail_counted_once() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let silent = FakeUpstream::with(Behaviour::Silent, ip(1)).await;
            let failing = FakeUpstream::with(Behaviour::ServFail, ip(2)).await;
            let forwarder = Arc::new(forwarder(&[&silent, &failing], with_cache()));

            let start = Instant::now();
            let tasks: Vec<_> = (0..20u16)
                .map(|id| {
                    let forwarder = forwarder.clone();
                    tokio::spawn(async move {
                        forwarder
                            .resolve(
                                &query_with_edns(id, "down.example.org.", RecordType::A),
                                Proto::Udp,
                            )
                            .await
                    })
                })
                .collect();
            for (id, task) in tasks.into_iter().enumerate() {
                let reply = parse(&task.await.unwrap());
                assert_eq!(reply.metadata.id, id as u16);
                assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
                assert!(reply.metadata.recursion_available);
                assert_eq!(reply.queries.len(), 1);
                assert_eq!(reply.edns.as_ref().unwrap().max_payload(), 1232);
            }
            assert!(
                start.elapsed() < TIMEOUT * 2 + Duration::from_millis(500),
                "took {:?}",
                start.elapsed()
            );
            assert_eq!((silent.queries(), failing.queries()), (1, 1));

            // The SERVFAIL is cached for `servfail_ttl` (RFC 2308 §7.1): no new upstream query.
            let again = query_with_edns(99, "down.example.org.", RecordType::A);
            let reply = parse(&forwarder.resolve(&again, Proto::Udp).await);
            assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            assert_eq!((silent.queries(), failing.queries()), (1, 1));
        });
    });
    let text = handle.render();
    assert!(
        text.contains("signpost_forward_all_upstreams_failed_total 1"),
        "{text}"
    );
    assert!(text.contains(r#"result="timeout""#), "{text}");
    assert!(text.contains(r#"result="servfail""#), "{text}");
}

/// A UDP answer with TC is retried over TCP, and the client gets the full answer.
#[tokio::test]
async fn truncated_udp_answer_retried_over_tcp() {
    let fake = FakeUpstream::start(Answer::many_a(20, 60)).await;
    fake.set_behaviour(Behaviour::Truncated);
    let forwarder = forwarder(&[&fake], no_cache());

    let reply = parse(
        &forwarder
            .resolve(
                &query_with_edns(1, "big.example.org.", RecordType::A),
                Proto::Udp,
            )
            .await,
    );

    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 20);
    assert_eq!((fake.udp_queries(), fake.tcp_queries()), (1, 1));
}

/// A TCP client's query goes to the upstream over TCP directly (Consul mirrors the transport).
#[tokio::test]
async fn tcp_client_uses_tcp_upstream() {
    let fake = FakeUpstream::with(Behaviour::Answer, ip(1)).await;
    let forwarder = forwarder(&[&fake], no_cache());

    let reply = parse(
        &forwarder
            .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Tcp)
            .await,
    );

    assert_eq!(a_records(&reply), vec![ip(1)]);
    assert_eq!((fake.udp_queries(), fake.tcp_queries()), (0, 1));
}

/// An answer bigger than a UDP client can take comes back as header and question with TC set;
/// over TCP the same answer comes whole.
#[tokio::test]
async fn oversized_answer_truncated_for_udp_client() {
    let fake = FakeUpstream::start(Answer::many_a(60, 60)).await;
    let forwarder = forwarder(&[&fake], no_cache());

    let wire = forwarder
        .resolve(&query(5, "big.example.org.", RecordType::A), Proto::Udp)
        .await;
    assert!(wire.len() <= 512, "{} bytes", wire.len());
    let reply = parse(&wire);
    assert!(reply.metadata.truncation);
    assert_eq!(reply.metadata.id, 5);
    assert_eq!(reply.queries[0].name().to_ascii(), "big.example.org.");

    let reply = parse(
        &forwarder
            .resolve(&query(6, "big.example.org.", RecordType::A), Proto::Tcp)
            .await,
    );
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 60);
}

/// A reply with a wrong ID, or the right ID for another question, is ignored, and the real reply
/// that follows is taken (RFC 5452 §9.1).
#[tokio::test]
async fn mismatched_replies_ignored() {
    for behaviour in [Behaviour::WrongId, Behaviour::WrongQuestion] {
        let fake = FakeUpstream::with(behaviour.clone(), ip(1)).await;
        let forwarder = forwarder(&[&fake], no_cache());

        let reply = parse(
            &forwarder
                .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Udp)
                .await,
        );

        assert_eq!(a_records(&reply), vec![ip(1)], "{behaviour:?}");
        assert_eq!(reply.queries[0].name().to_ascii(), "www.example.org.");
    }
}

/// `[[forward.domain]]` routes by the longest matching suffix, case-insensitively; other names go
/// to the default upstreams.
#[tokio::test]
async fn conditional_forwarding_by_longest_suffix() {
    let default = FakeUpstream::with(Behaviour::Answer, ip(1)).await;
    let corp = FakeUpstream::with(Behaviour::Answer, ip(2)).await;
    let deep = FakeUpstream::with(Behaviour::Answer, ip(3)).await;
    let mut config = forward_config(&[&default]);
    for (name, fake) in [("deep.corp.example.", &deep), ("Corp.Example.", &corp)] {
        config.domains.push(ForwardDomain {
            name: Name::from_ascii(name).unwrap(),
            upstreams: vec![Upstream::Addr(fake.addr)],
        });
    }
    let forwarder = Forwarder::new(&config, &no_cache(), &[]).unwrap();

    let cases = [
        ("www.example.org.", ip(1)),
        ("corp.example.", ip(2)),
        ("www.corp.example.", ip(2)),
        ("notdeep.corp.example.", ip(2)),
        ("a.b.DEEP.corp.EXAMPLE.", ip(3)),
        ("deep.corp.example.", ip(3)),
        ("corp.example.net.", ip(1)),
    ];
    for (name, expected) in cases {
        let reply = parse(
            &forwarder
                .resolve(&query(1, name, RecordType::A), Proto::Udp)
                .await,
        );
        assert_eq!(a_records(&reply), vec![expected], "{name}");
    }
}

/// A resolv.conf that lists only signpost itself leaves no upstream: signpost still starts
/// (its `.consul` answers do not depend on upstreams) and refuses forwarded names, as Consul
/// does without recursors; an unreadable resolv.conf is a start-up error.
#[tokio::test]
async fn resolv_conf_without_other_servers_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
    let own: [SocketAddr; 1] = ["127.0.0.1:53".parse().unwrap()];
    let mut config = ForwardConfig {
        upstreams: vec![Upstream::ResolvConf(path.clone())],
        timeout: TIMEOUT,
        strategy: Strategy::Sequential,
        domains: Vec::new(),
        max_in_flight: 10,
    };
    let forwarder = Forwarder::new(&config, &no_cache(), &own).unwrap();
    let reply = parse(
        &forwarder
            .resolve(&query(9, "example.com.", RecordType::A), Proto::Udp)
            .await,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert_eq!(reply.metadata.id, 9);

    config.upstreams = vec![Upstream::ResolvConf(dir.path().join("missing"))];
    assert!(matches!(
        Forwarder::new(&config, &no_cache(), &own),
        Err(ForwardError::ResolvConf { .. })
    ));
}

/// Beyond `max_in_flight` forwarded queries, a client is refused at once.
#[tokio::test]
async fn max_in_flight_refuses_beyond_the_bound() {
    let fake = FakeUpstream::with(Behaviour::Slow(Duration::from_millis(200)), ip(1)).await;
    let mut config = forward_config(&[&fake]);
    config.max_in_flight = 1;
    let forwarder = Arc::new(Forwarder::new(&config, &no_cache(), &[]).unwrap());

    let first = {
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            forwarder
                .resolve(&query(1, "slow.example.org.", RecordType::A), Proto::Udp)
                .await
        })
    };
    for _ in 0..100 {
        if fake.queries() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    let second = parse(
        &forwarder
            .resolve(
                &query_with_edns(2, "other.example.org.", RecordType::A),
                Proto::Udp,
            )
            .await,
    );
    assert_eq!(second.metadata.response_code, ResponseCode::Refused);
    assert_eq!(second.metadata.id, 2);
    assert!(second.edns.is_some());
    assert!(start.elapsed() < Duration::from_millis(100));

    assert_eq!(a_records(&parse(&first.await.unwrap())), vec![ip(1)]);
    let third = parse(
        &forwarder
            .resolve(&query(3, "other.example.org.", RecordType::A), Proto::Udp)
            .await,
    );
    assert_eq!(a_records(&third), vec![ip(1)]);
}

/// A second identical query is answered from the cache with the client's own ID and case; the
/// DO bit makes a different entry.
#[tokio::test]
async fn cache_hit_skips_upstream() {
    let fake = FakeUpstream::start(Answer::a(ip(1), 300)).await;
    let forwarder = forwarder(&[&fake], with_cache());

    let first = parse(
        &forwarder
            .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Udp)
            .await,
    );
    let second = parse(
        &forwarder
            .resolve(&query(2, "WWW.example.ORG.", RecordType::A), Proto::Udp)
            .await,
    );

    assert_eq!(fake.queries(), 1);
    assert_eq!(a_records(&first), a_records(&second));
    assert_eq!(second.metadata.id, 2);
    assert_eq!(second.queries[0].name().to_ascii(), "WWW.example.ORG.");
    assert!(second.answers[0].ttl <= 300);

    forwarder
        .resolve(
            &query_with_edns(3, "www.example.org.", RecordType::A),
            Proto::Udp,
        )
        .await;
    assert_eq!(fake.queries(), 2);
    forwarder
        .resolve(&query(4, "www.example.org.", RecordType::AAAA), Proto::Udp)
        .await;
    assert_eq!(fake.queries(), 3);
}

/// NXDOMAIN is cached from the SOA (RFC 2308 §5); an answer without SOA is not.
#[tokio::test]
async fn negative_answers_cached_from_soa() {
    let fake = FakeUpstream::start(Answer::negative(
        ResponseCode::NXDomain,
        "example.org.",
        900,
        60,
    ))
    .await;
    fake.set_name("nosoa.example.org.", Answer::rcode(ResponseCode::NXDomain));
    let forwarder = forwarder(&[&fake], with_cache());

    for id in 0..3 {
        let reply = parse(
            &forwarder
                .resolve(&query(id, "nope.example.org.", RecordType::A), Proto::Udp)
                .await,
        );
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(reply.authorities.len(), 1);
    }
    assert_eq!(fake.queries(), 1);
    for id in 0..3 {
        forwarder
            .resolve(&query(id, "nosoa.example.org.", RecordType::A), Proto::Udp)
            .await;
    }
    assert_eq!(fake.queries(), 4);
}

/// 1,000 concurrent identical misses make one upstream query, and every client gets the answer
/// with its own ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_misses_coalesced() {
    let fake = FakeUpstream::with(Behaviour::Slow(Duration::from_millis(200)), ip(1)).await;
    let forwarder = Arc::new(forwarder(&[&fake], with_cache()));

    let tasks: Vec<_> = (0..1000u16)
        .map(|id| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                forwarder
                    .resolve(
                        &query(id, "popular.example.org.", RecordType::A),
                        Proto::Udp,
                    )
                    .await
            })
        })
        .collect();
    for (id, task) in tasks.into_iter().enumerate() {
        let reply = parse(&task.await.unwrap());
        assert_eq!(reply.metadata.id, id as u16);
        assert_eq!(a_records(&reply), vec![ip(1)]);
    }
    assert_eq!(fake.queries(), 1);
}

/// With serve-stale on, an expired answer is served (TTL `stale_ttl`) when every upstream fails
/// (RFC 8767 §4).
#[tokio::test]
async fn stale_answer_served_when_upstreams_fail() {
    let fake = FakeUpstream::start(Answer::a(ip(1), 1)).await;
    let cache = CacheConfig {
        serve_stale: Duration::from_secs(60),
        ..with_cache()
    };
    let forwarder = forwarder(&[&fake], cache);
    forwarder
        .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Udp)
        .await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.set_behaviour(Behaviour::ServFail);
    let reply = parse(
        &forwarder
            .resolve(&query(2, "www.example.org.", RecordType::A), Proto::Udp)
            .await,
    );

    assert_eq!(fake.queries(), 2);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&reply), vec![ip(1)]);
    assert_eq!(reply.answers[0].ttl, 30);
}

/// A silent first upstream costs `sequential` two timeouts, then it is skipped (queries go
/// straight to the second) and probed with `. IN NS`; once it answers again it is used again.
/// When every upstream is down, SERVFAIL comes at once instead of after the timeouts.
#[tokio::test]
async fn dead_upstream_skipped_then_probed_back() {
    let first = FakeUpstream::with(Behaviour::Silent, ip(1)).await;
    let second = FakeUpstream::with(Behaviour::Answer, ip(2)).await;
    let forwarder = forwarder(&[&first, &second], no_cache());
    let ask = |id: u16| {
        let forwarder = forwarder.clone();
        async move {
            let start = Instant::now();
            let reply = forwarder
                .resolve(&query(id, "www.example.org.", RecordType::A), Proto::Udp)
                .await;
            (parse(&reply), start.elapsed())
        }
    };
    for id in 0..2 {
        let (reply, took) = ask(id).await;
        assert_eq!(a_records(&reply), vec![ip(2)]);
        assert!(took >= TIMEOUT, "{took:?}");
    }
    let (reply, took) = ask(2).await;
    assert_eq!(a_records(&reply), vec![ip(2)]);
    assert!(took < TIMEOUT / 2, "down upstream skipped: {took:?}");
    assert_eq!(first.queries(), 2);

    first.set_behaviour(Behaviour::Answer);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (reply, _) = ask(3).await;
        if a_records(&reply) == vec![ip(1)] {
            break;
        }
        assert!(Instant::now() < deadline, "never probed back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first.probes() >= 1);

    first.set_behaviour(Behaviour::Silent);
    second.set_behaviour(Behaviour::Silent);
    for id in 10..12 {
        ask(id).await;
    }
    let (reply, took) = ask(12).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(took < TIMEOUT / 2, "all down fails fast: {took:?}");
}

/// RFC 8767 §5: with a stale entry and a slow upstream, the client gets the stale answer (TTL
/// `stale_ttl`) at the client response timer; the refresh carries on and fills the cache, so
/// the next query is a fresh hit without another upstream query.
#[tokio::test]
async fn stale_answer_at_client_response_timer() {
    let fake = FakeUpstream::start(Answer::a(ip(1), 1)).await;
    let cache = CacheConfig {
        serve_stale: Duration::from_secs(60),
        stale_answer_timeout: Duration::from_millis(100),
        ..with_cache()
    };
    let config = ForwardConfig {
        timeout: Duration::from_secs(2),
        ..forward_config(&[&fake])
    };
    let forwarder = Forwarder::new(&config, &cache, &[]).unwrap();
    forwarder
        .resolve(&query(1, "www.example.org.", RecordType::A), Proto::Udp)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    fake.set_answer(Answer::a(ip(2), 300));
    fake.set_behaviour(Behaviour::Slow(Duration::from_millis(400)));
    let start = Instant::now();
    let reply = parse(
        &forwarder
            .resolve(&query(2, "www.example.org.", RecordType::A), Proto::Udp)
            .await,
    );
    let took = start.elapsed();
    assert_eq!(a_records(&reply), vec![ip(1)]);
    assert_eq!(reply.answers[0].ttl, 30);
    assert!(took < Duration::from_millis(350), "{took:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = parse(
        &forwarder
            .resolve(&query(3, "www.example.org.", RecordType::A), Proto::Udp)
            .await,
    );
    assert_eq!(a_records(&reply), vec![ip(2)]);
    assert_eq!(fake.queries(), 2);
}
