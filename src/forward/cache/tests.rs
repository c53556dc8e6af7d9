#![allow(clippy::unwrap_used, clippy::expect_used)]

use hickory_proto::op::{Edns, MessageType, OpCode, Query};
use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::{A, SOA};

use super::*;

fn config() -> CacheConfig {
    CacheConfig {
        size: 100,
        min_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(3600),
        negative_max_ttl: Duration::from_secs(600),
        servfail_ttl: Duration::from_secs(5),
        serve_stale: Duration::from_secs(60),
        stale_ttl: Duration::from_secs(30),
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

/// The key ignores case but not the DO bit, the type or the presence of EDNS.
#[test]
fn key_separates_what_changes_the_answer() {
    let plain = CacheKey::of(&request("WWW.example.org.")).unwrap();
    assert_eq!(plain, CacheKey::of(&request("www.EXAMPLE.org.")).unwrap());
    let mut with_edns = request("www.example.org.");
    with_edns.set_edns(Edns::new());
    let edns_key = CacheKey::of(&with_edns).unwrap();
    assert_ne!(plain, edns_key);
    with_edns.edns.as_mut().unwrap().set_dnssec_ok(true);
    assert_ne!(edns_key, CacheKey::of(&with_edns).unwrap());
}

/// An entry is fresh for its TTL, then stale for `serve_stale`, then gone; TTLs count down on
/// each hit and a stale answer carries `stale_ttl`.
#[tokio::test]
async fn entries_age_with_now() {
    let cache = Cache::new(&config()).unwrap();
    let message = answer(ResponseCode::NoError, &[100], None);
    let wire: Arc<[u8]> = message.to_vec().unwrap().into();
    let key = CacheKey::of(&request("www.example.org.")).unwrap();
    let t0 = Instant::now();
    cache.insert_answer(key.clone(), &message, wire, t0).await;

    let client = request("WWW.example.org.");
    let client_wire = client.to_vec().unwrap();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let Lookup::Fresh(entry) = cache.get(&key, at(40)).await else {
        panic!("not fresh at 40 s")
    };
    let hit = Message::from_vec(&entry.answer(&client_wire, &client, at(40)).unwrap()).unwrap();
    assert_eq!(hit.metadata.id, 0x4242);
    assert_eq!(hit.queries[0].name().to_ascii(), "WWW.example.org.");
    assert_eq!(hit.answers[0].ttl, 60);

    let Lookup::Stale(entry) = cache.get(&key, at(130)).await else {
        panic!("not stale at 130 s")
    };
    let stale = Message::from_vec(
        &entry
            .answer_stale(&client_wire, &client, Duration::from_secs(30))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stale.answers[0].ttl, 30);
    assert!(matches!(cache.get(&key, at(161)).await, Lookup::Miss));
}

/// A SERVFAIL entry answers SERVFAIL for `servfail_ttl`, is never stale, and does not replace
/// an entry that can still be served stale.
#[tokio::test]
async fn servfail_entries() {
    let cache = Cache::new(&config()).unwrap();
    let key = CacheKey::of(&request("down.example.org.")).unwrap();
    let t0 = Instant::now();
    cache.insert_servfail(key.clone(), t0).await;
    let client = request("down.example.org.");
    let Lookup::Fresh(entry) = cache.get(&key, t0 + Duration::from_secs(4)).await else {
        panic!("not fresh")
    };
    let reply = Message::from_vec(
        &entry
            .answer(&client.to_vec().unwrap(), &client, t0)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(matches!(
        cache.get(&key, t0 + Duration::from_secs(6)).await,
        Lookup::Miss
    ));

    let good = answer(ResponseCode::NoError, &[10], None);
    let key = CacheKey::of(&request("www.example.org.")).unwrap();
    cache
        .insert_answer(key.clone(), &good, good.to_vec().unwrap().into(), t0)
        .await;
    cache
        .insert_servfail(key.clone(), t0 + Duration::from_secs(20))
        .await;
    assert!(matches!(
        cache.get(&key, t0 + Duration::from_secs(21)).await,
        Lookup::Stale(_)
    ));
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
