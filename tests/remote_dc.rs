//! Other datacenters through the whole signpost: `web.service.dc2.consul` answered from a
//! watch on dc2 started on first use (coalesced, within the connection budget, kept fresh),
//! an unknown datacenter NXDOMAIN with the SOA, local answers untouched.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::support::fake_consul::{FakeConsul, Fault};
use crate::support::signpost::{Signpost, Via, ask, eventually, lines, query_bytes};

/// The agent's dc1 has `web` on n1; dc2 has `web` on d2a and d2b.
async fn agent() -> FakeConsul {
    let fake = FakeConsul::start().await;
    fake.register("web", "n1", "10.0.0.1", "", 8080, &[]);
    let dc2 = fake.in_dc("dc2");
    dc2.register("web", "d2a", "10.2.0.1", "", 8080, &[]);
    dc2.register("web", "d2b", "10.2.0.2", "", 9090, &[]);
    fake
}

fn toml(fake: &FakeConsul, max_connections: usize) -> String {
    format!(
        "[consul]\naddress = \"{}\"\nwait = \"2s\"\nmax_connections = {max_connections}\n",
        fake.url()
    )
}

async fn started(fake: &FakeConsul, max_connections: usize) -> Signpost {
    let sp = Signpost::start(&toml(fake, max_connections)).await;
    sp.wait_ready().await;
    sp
}

async fn answer(dns: SocketAddr, name: &str, rtype: RecordType) -> (ResponseCode, Vec<String>) {
    let m = ask(dns, name, rtype, Via::Udp).await;
    (m.metadata.response_code, lines(&m.answers))
}

const DC2_WEB: [&str; 2] = [
    "web.service.dc2.consul. 0 IN A 10.2.0.1",
    "web.service.dc2.consul. 0 IN A 10.2.0.2",
];

/// The first query for dc2 starts its watch and is answered from it (A, SRV with dc2 targets,
/// RFC 2782, node names); dc1 names, with or without the datacenter, stay local. Nothing was
/// asked of the agent about other datacenters before the first such query.
#[tokio::test]
async fn remote_service_answered_from_its_watch() {
    let fake = agent().await;
    let dc2 = fake.in_dc("dc2");
    let sp = started(&fake, 8).await;
    assert_eq!(fake.requests("datacenters"), 0, "read before any query");
    assert_eq!(dc2.requests("services"), 0, "dc2 watched before any query");

    let (code, a) = answer(sp.dns, "web.service.dc2.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(a, DC2_WEB);

    let m = ask(sp.dns, "web.service.dc2.consul.", RecordType::SRV, Via::Udp).await;
    assert_eq!(
        lines(&m.answers),
        [
            "web.service.dc2.consul. 0 IN SRV 1 1 8080 d2a.node.dc2.consul.",
            "web.service.dc2.consul. 0 IN SRV 1 1 9090 d2b.node.dc2.consul.",
        ]
    );
    let glue: Vec<String> = lines(&m.additionals)
        .into_iter()
        .filter(|l| l.contains(" IN A "))
        .collect();
    assert_eq!(
        glue,
        [
            "d2a.node.dc2.consul. 0 IN A 10.2.0.1",
            "d2b.node.dc2.consul. 0 IN A 10.2.0.2",
        ]
    );
    let (code, srv) = answer(sp.dns, "_web._tcp.service.dc2.consul.", RecordType::SRV).await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(srv.len(), 2, "{srv:?}");
    let (code, node) = answer(sp.dns, "d2b.node.dc2.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(node, ["d2b.node.dc2.consul. 0 IN A 10.2.0.2"]);
    let (code, _) = answer(sp.dns, "nope.service.dc2.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NXDomain);

    // Local names are unaffected.
    let (code, a) = answer(sp.dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(a, ["web.service.consul. 0 IN A 10.0.0.1"]);
    let (_, a) = answer(sp.dns, "web.service.dc1.consul.", RecordType::A).await;
    assert_eq!(a, ["web.service.dc1.consul. 0 IN A 10.0.0.1"]);
    let (code, _) = answer(sp.dns, "d2a.node.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NXDomain, "a dc2 node is not local");

    // One read of the list; the watch uses `?dc=dc2` for all of its requests, and holds two
    // long polls: no node list (its nodes are its instances').
    assert_eq!(fake.requests("datacenters"), 1);
    for ep in ["services", "health_state", "health_service"] {
        assert!(dc2.requests(ep) >= 1, "{ep}: no request with dc=dc2");
    }
    assert_eq!(dc2.requests("nodes"), 0);
    assert_eq!(dc2.requests("query"), 0, "prepared queries stay local");
    sp.stop().await;
}

/// dc2's watch is kept fresh like the local feed: a check flip and a new instance show up.
#[tokio::test]
async fn remote_changes_show_up() {
    let fake = agent().await;
    let dc2 = fake.in_dc("dc2");
    let sp = started(&fake, 8).await;
    let (_, a) = answer(sp.dns, "web.service.dc2.consul.", RecordType::A).await;
    assert_eq!(a, DC2_WEB);

    dc2.set_check("d2a", "web-8080", "critical");
    let flipped = eventually(Duration::from_secs(5), || async {
        answer(sp.dns, "web.service.dc2.consul.", RecordType::A)
            .await
            .1
            == ["web.service.dc2.consul. 0 IN A 10.2.0.2"]
    })
    .await;
    assert!(flipped, "the check flip in dc2 never showed");

    dc2.register("api", "d2a", "10.2.0.1", "", 7000, &[]);
    let added = eventually(Duration::from_secs(5), || async {
        answer(sp.dns, "api.service.dc2.consul.", RecordType::A)
            .await
            .0
            == ResponseCode::NoError
    })
    .await;
    assert!(added, "a service registered in dc2 never showed");
    // The local catalog did not take dc2's data.
    let (code, _) = answer(sp.dns, "api.service.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NXDomain);
    sp.stop().await;
}

/// A datacenter the agent does not know is NXDOMAIN with the SOA, at once; the list is read
/// once for both queries, and no watch is started.
#[tokio::test]
async fn unknown_datacenter_is_nxdomain_with_soa() {
    let fake = agent().await;
    let sp = started(&fake, 8).await;
    for name in ["web.service.dc9.consul.", "n1.node.dc9.consul."] {
        let m = ask(sp.dns, name, RecordType::A, Via::Udp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1, "{name}: no SOA");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    }
    assert_eq!(fake.requests("datacenters"), 1);
    assert_eq!(fake.in_dc("dc2").requests("services"), 0);
    sp.stop().await;
}

/// 1,000 simultaneous first queries for dc2 start one watch (one fetch of `web` with
/// `dc=dc2`, one list read) and all get dc2's answer; the agent never sees more connections
/// than `max_connections`.
#[tokio::test]
async fn simultaneous_first_queries_start_one_watch() {
    let fake = agent().await;
    let dc2 = fake.in_dc("dc2");
    let sp = started(&fake, 8).await;
    let replies = burst(sp.dns, "web.service.dc2.consul.", 1000).await;
    assert_eq!(replies.len(), 1000, "replies missing");
    for m in &replies {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(lines(&m.answers), DC2_WEB);
    }
    assert_eq!(fake.requests("datacenters"), 1, "list reads not coalesced");
    assert_eq!(dc2.requests("health_service"), 1, "more than one watch");
    // The first read and, at most, its blocking follow-up.
    assert!(
        dc2.requests("services") <= 2,
        "{}",
        dc2.requests("services")
    );
    assert!(fake.max_connections() <= 8, "{}", fake.max_connections());
    sp.stop().await;
}

/// Remote watches fit the connection budget (two long polls each): with 7 connections one
/// remote datacenter is watched, another is SERVFAIL without any request for it; with 8 both
/// are; with 4 none is.
#[tokio::test]
async fn remote_watches_are_bounded_by_the_budget() {
    let fake = agent().await;
    let dc3 = fake.in_dc("dc3");
    dc3.register("web", "d3a", "10.3.0.1", "", 8080, &[]);
    let sp = started(&fake, 7).await;
    let (code, a) = answer(sp.dns, "web.service.dc2.consul.", RecordType::A).await;
    assert_eq!((code, a.len()), (ResponseCode::NoError, 2));
    let (code, _) = answer(sp.dns, "web.service.dc3.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::ServFail);
    assert_eq!(dc3.requests("services"), 0);
    assert!(fake.max_connections() <= 7, "{}", fake.max_connections());
    sp.stop().await;

    // The default 8 holds two remote watches beside the local feed.
    let fake = agent().await;
    fake.in_dc("dc3")
        .register("web", "d3a", "10.3.0.1", "", 8080, &[]);
    let sp = started(&fake, 8).await;
    for dc in ["dc2", "dc3"] {
        let (code, _) = answer(sp.dns, &format!("web.service.{dc}.consul."), RecordType::A).await;
        assert_eq!(code, ResponseCode::NoError, "{dc}");
    }
    assert!(fake.max_connections() <= 8, "{}", fake.max_connections());
    sp.stop().await;

    let fake = agent().await;
    let sp = started(&fake, 4).await;
    let (code, _) = answer(sp.dns, "web.service.dc2.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::ServFail);
    assert_eq!(fake.in_dc("dc2").requests("services"), 0);
    // Local answers do not suffer.
    let (code, _) = answer(sp.dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::NoError);
    sp.stop().await;
}

/// When the agent cannot list its datacenters the query is SERVFAIL (not NXDOMAIN: the
/// datacenter may well exist), and a later query reads the list again and is answered.
#[tokio::test]
async fn failed_list_read_is_servfail_then_recovers() {
    let fake = agent().await;
    let sp = started(&fake, 8).await;
    fake.inject(
        Some("datacenters"),
        Fault::Status(500, "No cluster leader".into()),
    );
    let (code, _) = answer(sp.dns, "web.service.dc2.consul.", RecordType::A).await;
    assert_eq!(code, ResponseCode::ServFail);
    assert_eq!(fake.pending_faults(), 0);
    let recovered = eventually(Duration::from_secs(5), || async {
        answer(sp.dns, "web.service.dc2.consul.", RecordType::A)
            .await
            .1
            == DC2_WEB
    })
    .await;
    assert!(recovered, "never answered after the agent recovered");
    sp.stop().await;
}

/// Send `count` queries for `name` at once from 20 sockets (each holds what its replies need
/// in its receive buffer) and collect the replies, for at most 5 s.
pub(crate) async fn burst(dns: SocketAddr, name: &str, count: u16) -> Vec<Message> {
    const SOCKETS: u16 = 20;
    let packet = query_bytes(name, RecordType::A, None);
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    for id in 0..count {
        let mut packet = packet.clone();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        let socket = &sockets[usize::from(id % SOCKETS)];
        socket.send_to(&packet, dns).await.expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut readers = tokio::task::JoinSet::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let expected = (0..count)
            .filter(|id| usize::from(id % SOCKETS) == i)
            .count();
        readers.spawn(async move {
            let mut replies = Vec::new();
            let mut buf = vec![0; 65_535];
            while replies.len() < expected {
                let read = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
                let Ok(Ok((n, _))) = read else {
                    break;
                };
                replies.push(Message::from_vec(&buf[..n]).expect("reply parses"));
            }
            replies
        });
    }
    let mut replies = Vec::new();
    while let Some(joined) = readers.join_next().await {
        replies.extend(joined.expect("reader"));
    }
    replies
}
