#![allow(clippy::unwrap_used, clippy::expect_used)]

use hickory_proto::op::{Edns, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, Record, RecordType};

use super::*;
use crate::wire;

fn config() -> CacheConfig {
    CacheConfig {
        size: 100,
        min_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(3600),
        negative_max_ttl: Duration::from_secs(600),
        servfail_ttl: Duration::from_secs(5),
        serve_stale: Duration::from_secs(60),
        stale_ttl: Duration::from_secs(30),
        stale_answer_timeout: Duration::from_millis(1800),
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn request(qname: &str) -> Message {
    let mut message = Message::new(0x4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), RecordType::A));
    message
}

fn answer(rcode: ResponseCode, ttls: &[u32], soa: Option<(u32, u32)>) -> Message {
    let mut message = request("www.example.org.");
    message.metadata.message_type = MessageType::Response;
    message.metadata.response_code = rcode;
    for ttl in ttls {
        message.add_answer(Record::from_rdata(
            name("www.example.org."),
            *ttl,
            RData::A(A::new(10, 0, 0, 1)),
        ));
    }
    if let Some((ttl, minimum)) = soa {
        let soa = SOA::new(
            name("ns.example.org."),
            name("h.example.org."),
            1,
            1,
            1,
            1,
            minimum,
        );
        message.add_authority(Record::from_rdata(
            name("example.org."),
            ttl,
            RData::SOA(soa),
        ));
    }
    message
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

/// Positive TTL: the lowest answer TTL within min_ttl..=max_ttl.
#[test]
fn positive_ttl_is_lowest_clamped() {
    let cache = Cache::new(&config()).unwrap();
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NoError, &[300, 60], None)),
        secs(60)
    );
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NoError, &[1], None)),
        secs(5)
    );
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NoError, &[86400], None)),
        secs(3600)
    );
}

/// Negative TTL: min(SOA TTL, SOA MINIMUM) (RFC 2308 §5), at most negative_max_ttl; no SOA, no
/// caching; TC and SERVFAIL answers are never cached here.
#[test]
fn negative_ttl_from_soa() {
    let cache = Cache::new(&config()).unwrap();
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NXDomain, &[], Some((900, 60)))),
        secs(60)
    );
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NoError, &[], Some((30, 60)))),
        secs(30)
    );
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NXDomain, &[], Some((9000, 9000)))),
        secs(600)
    );
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::NXDomain, &[], None)),
        None
    );
    assert_eq!(
        cache.ttl_of(&answer(ResponseCode::ServFail, &[], Some((60, 60)))),
        None
    );
    let mut truncated = answer(ResponseCode::NoError, &[60], None);
    truncated.metadata.truncation = true;
    assert_eq!(cache.ttl_of(&truncated), None);
}

/// The wire form of `message`, and the key of its question.
fn wire_and_key(message: &Message) -> (Vec<u8>, KeyBuf) {
    let wire = message.to_vec().unwrap();
    let key = KeyBuf::of(&wire::Query::parse(&wire).unwrap()).unwrap();
    (wire, key)
}

fn key_of(message: &Message) -> Vec<u8> {
    wire_and_key(message).1.as_bytes().to_vec()
}

/// The key ignores case but not the DO bit, the type, the presence of EDNS or the ECS subnet.
#[test]
fn key_separates_what_changes_the_answer() {
    let plain = key_of(&request("WWW.example.org."));
    assert_eq!(plain, key_of(&request("www.EXAMPLE.org.")));
    let mut with_edns = request("www.example.org.");
    with_edns.set_edns(Edns::new());
    let edns_key = key_of(&with_edns);
    assert_ne!(plain, edns_key);
    with_edns.edns.as_mut().unwrap().set_dnssec_ok(true);
    assert_ne!(edns_key, key_of(&with_edns));
    let mut aaaa = request("www.example.org.");
    aaaa.queries[0].set_query_type(RecordType::AAAA);
    assert_ne!(plain, key_of(&aaaa));

    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    let subnet = |net: &str| {
        let mut m = request("www.example.org.");
        let mut edns = Edns::new();
        let subnet: ClientSubnet = net.parse().unwrap();
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
        m.set_edns(edns);
        key_of(&m)
    };
    assert_ne!(subnet("192.0.2.0/24"), subnet("198.51.100.0/24"));
    assert_eq!(subnet("192.0.2.0/24"), subnet("192.0.2.0/24"));
}

/// An entry is fresh for its TTL, then stale for `serve_stale`, then gone; TTLs count down on
/// each hit and a stale answer carries `stale_ttl`.
#[test]
fn entries_age_with_now() {
    let cache = Cache::new(&config()).unwrap();
    let message = answer(ResponseCode::NoError, &[100], None);
    let wire: Arc<[u8]> = message.to_vec().unwrap().into();
    let (_, key) = wire_and_key(&request("www.example.org."));
    let t0 = Instant::now();
    cache.insert_answer(key.to_key(), &message, wire, t0);

    let (client_wire, _) = wire_and_key(&request("www.example.org."));
    // The client's own case: hickory writes lowercase, so patch it in.
    let mut client_wire = client_wire;
    client_wire[13..16].copy_from_slice(b"WWW");
    let client = wire::Query::parse(&client_wire).unwrap();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let Lookup::Fresh(entry) = cache.get(key.as_bytes(), at(40)) else {
        panic!("not fresh at 40 s")
    };
    let mut out = Vec::new();
    assert!(entry.answer(&client, at(40), &mut out));
    let hit = Message::from_vec(&out).unwrap();
    assert_eq!(hit.metadata.id, 0x4242);
    assert_eq!(hit.queries[0].name().to_ascii(), "WWW.example.org.");
    assert_eq!(hit.answers[0].ttl, 60);

    let Lookup::Stale(entry) = cache.get(key.as_bytes(), at(130)) else {
        panic!("not stale at 130 s")
    };
    assert!(entry.answer_stale(&client, Duration::from_secs(30), &mut out));
    let stale = Message::from_vec(&out).unwrap();
    assert_eq!(stale.answers[0].ttl, 30);
    assert!(matches!(cache.get(key.as_bytes(), at(161)), Lookup::Miss));
}

/// A SERVFAIL entry answers SERVFAIL for `servfail_ttl`, is never stale, and does not replace
/// an entry that can still be served stale.
#[test]
fn servfail_entries() {
    let cache = Cache::new(&config()).unwrap();
    let (client_wire, key) = wire_and_key(&request("down.example.org."));
    let t0 = Instant::now();
    cache.insert_servfail(key.to_key(), t0);
    let Lookup::Fresh(entry) = cache.get(key.as_bytes(), t0 + Duration::from_secs(4)) else {
        panic!("not fresh")
    };
    let mut out = Vec::new();
    assert!(entry.answer(&wire::Query::parse(&client_wire).unwrap(), t0, &mut out));
    let reply = Message::from_vec(&out).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(matches!(
        cache.get(key.as_bytes(), t0 + Duration::from_secs(6)),
        Lookup::Miss
    ));

    let good = answer(ResponseCode::NoError, &[10], None);
    let (_, key) = wire_and_key(&request("www.example.org."));
    cache.insert_answer(key.to_key(), &good, good.to_vec().unwrap().into(), t0);
    cache.insert_servfail(key.to_key(), t0 + Duration::from_secs(20));
    assert!(matches!(
        cache.get(key.as_bytes(), t0 + Duration::from_secs(21)),
        Lookup::Stale(_)
    ));
}

/// The cache never holds more than `cache.size` entries; what the bound pushes out is counted
/// as an eviction, and the entry count the gauge shows is exact after each insert.
#[test]
fn size_bound_evicts_and_counts() {
    let cache = Cache::new(&CacheConfig {
        size: 10,
        ..config()
    })
    .unwrap();
    let good = answer(ResponseCode::NoError, &[300], None);
    let wire: Arc<[u8]> = good.to_vec().unwrap().into();
    let t0 = Instant::now();
    for i in 0..50 {
        let (_, key) = wire_and_key(&request(&format!("n{i}.example.org.")));
        cache.insert_answer(key.to_key(), &good, wire.clone(), t0);
        assert!(cache.entry_count() <= 10, "{} entries", cache.entry_count());
    }
    assert_eq!(cache.entry_count() + cache.evictions(), 50);
    assert!(cache.evictions() >= 40);
}

/// `size = 0` turns the cache off.
#[test]
fn size_zero_is_off() {
    assert!(
        Cache::new(&CacheConfig {
            size: 0,
            ..config()
        })
        .is_none()
    );
}
