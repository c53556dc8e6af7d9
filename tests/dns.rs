//! signpost serving DNS over real loopback sockets: `.consul` answers from a fake Consul agent
//! that holds blocking queries, everything else forwarded to a fake upstream.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::fake_consul::FakeConsul;
use crate::support::fake_upstream::{Answer, FakeUpstream};
use crate::support::signpost::{Signpost, Via, eventually, lines};

fn config(consul: &FakeConsul, upstream: &FakeUpstream) -> String {
    format!(
        "[consul]\naddress = \"{}\"\n\n[forward]\nupstreams = [\"{}\"]\ntimeout = \"1s\"\n",
        consul.url(),
        upstream.addr
    )
}

/// An agent with `web` on three nodes: one passing, one tagged `nodns`, one critical.
async fn agent() -> FakeConsul {
    let consul = FakeConsul::start().await;
    consul.register("web", "node-1", "10.0.0.1", "", 8080, &["v1"]);
    consul.register("web", "node-2", "10.0.0.2", "", 8080, &["v1", "nodns"]);
    let id = consul.register("web", "node-3", "10.0.0.3", "", 8080, &["v2"]);
    consul.set_check("node-3", &id, "critical");
    consul
}

/// `.consul` answers come from the agent's catalog over UDP and TCP, with the health filter
/// and `filter_tags` applied, and never reach the upstream.
#[tokio::test]
async fn consul_answers_from_the_agent() {
    let consul = agent().await;
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let sp = Signpost::start(&config(&consul, &upstream)).await;
    sp.wait_ready().await;

    for via in [Via::Udp, Via::UdpEdns(1232), Via::Tcp] {
        let m = sp.query("web.service.consul.", RecordType::A, via).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{via:?}");
        assert!(m.metadata.authoritative);
        assert_eq!(
            lines(&m.answers),
            ["web.service.consul. 0 IN A 10.0.0.1"],
            "{via:?}"
        );
    }
    let m = sp
        .query("web.service.consul.", RecordType::SRV, Via::Tcp)
        .await;
    assert_eq!(
        lines(&m.answers),
        ["web.service.consul. 0 IN SRV 1 1 8080 node-1.node.dc1.consul."]
    );
    // Real agents always set node meta `consul-network-segment`; Consul adds it as TXT.
    assert_eq!(
        lines(&m.additionals),
        [
            "node-1.node.dc1.consul. 0 IN A 10.0.0.1",
            "node-1.node.dc1.consul. 0 IN TXT consul-network-segment="
        ]
    );
    // node-2 is only reachable through the nodns tag... which must not answer either.
    let m = sp
        .query("nodns.web.service.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = sp
        .query("v2.web.service.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "only instance is critical"
    );
    let m = sp
        .query("nope.service.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(upstream.queries(), 0, ".consul names are never forwarded");
    sp.stop().await;
}

/// A check turning critical and a new instance registering show in answers without a restart.
#[tokio::test]
async fn catalog_changes_reach_answers() {
    let consul = agent().await;
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let sp = Signpost::start(&config(&consul, &upstream)).await;
    sp.wait_ready().await;

    consul.register("web", "node-4", "10.0.0.4", "", 8080, &[]);
    let appeared = eventually(Duration::from_secs(5), || async {
        let m = sp
            .query("web.service.consul.", RecordType::A, Via::Tcp)
            .await;
        lines(&m.answers).contains(&"web.service.consul. 0 IN A 10.0.0.4".to_string())
    })
    .await;
    assert!(appeared, "a registered instance appears");

    consul.set_check("node-1", "web-8080", "critical");
    let gone = eventually(Duration::from_secs(5), || async {
        let m = sp
            .query("web.service.consul.", RecordType::A, Via::Tcp)
            .await;
        lines(&m.answers) == ["web.service.consul. 0 IN A 10.0.0.4"]
    })
    .await;
    assert!(gone, "an instance whose check turned critical disappears");
    sp.stop().await;
}

/// Other names are forwarded with the upstream's rcode and records intact; with every upstream
/// failing the client gets SERVFAIL.
#[tokio::test]
async fn other_names_are_forwarded() {
    let consul = agent().await;
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 7), 60)).await;
    let sp = Signpost::start(&config(&consul, &upstream)).await;
    sp.wait_ready().await;

    let m = sp.query("www.example.com.", RecordType::A, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(lines(&m.answers), ["www.example.com. 60 IN A 192.0.2.7"]);
    let m = sp.query("www.example.com.", RecordType::A, Via::Tcp).await;
    assert_eq!(m.answers.len(), 1);
    assert!(upstream.queries() >= 1);

    upstream.set_answer(Answer::rcode(ResponseCode::NXDomain));
    let m = sp
        .query("missing.example.com.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    sp.stop().await;

    let dead = FakeUpstream::start(Answer::rcode(ResponseCode::ServFail)).await;
    let sp = Signpost::start(&config(&consul, &dead)).await;
    let m = sp.query("down.example.com.", RecordType::A, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    sp.stop().await;
}

/// Malformed packets get FORMERR or nothing, never a crash: the server keeps answering.
#[tokio::test]
async fn malformed_packets_are_survived() {
    let consul = agent().await;
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let sp = Signpost::start(&config(&consul, &upstream)).await;
    sp.wait_ready().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let good = crate::support::signpost::query_bytes("web.service.consul.", RecordType::A, None);
    let mut garbage: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    garbage.push(vec![0xFF; 300]);
    let mut no_question = good[..12].to_vec();
    no_question[5] = 0;
    garbage.push(no_question);
    for packet in &garbage {
        sock.send_to(packet, sp.dns).await.unwrap();
    }
    // The one header-only packet with qdcount 0 is answered FORMERR.
    let mut buf = [0u8; 512];
    let mut formerr = 0;
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        if n >= 4 && buf[3] & 0x0F == 1 {
            formerr += 1;
        }
    }
    assert!(formerr >= 1, "FORMERR for a query without a question");
    let m = sp
        .query("web.service.consul.", RecordType::A, Via::Udp)
        .await;
    assert_eq!(m.answers.len(), 1, "still serving");
    sp.stop().await;
}

/// A client pipelining hundreds of queries on one socket (a proxy's resolver under load) gets
/// every answer as its own well-formed datagram, whatever the server grouped into one GSO send:
/// 300 queries, three names of different answer sizes interleaved in runs, all answered with the
/// right ID and question.
#[tokio::test]
async fn pipelined_queries_on_one_socket_get_whole_answers() {
    let consul = agent().await;
    consul.register("db", "node-1", "10.0.0.1", "", 5432, &[]);
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let sp = Signpost::start(&config(&consul, &upstream)).await;
    sp.wait_ready().await;
    let names = [
        "web.service.consul.",
        "db.service.consul.",
        "nope.service.consul.",
    ];
    // Room for every answer before the first is read (the default buffer holds ~200).
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    raw.set_recv_buffer_size(4 << 20).unwrap();
    raw.set_nonblocking(true).unwrap();
    raw.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let socket = tokio::net::UdpSocket::from_std(raw.into()).unwrap();
    socket.connect(sp.dns).await.unwrap();
    let mut want = std::collections::HashMap::new();
    for i in 0..300u16 {
        // Runs of 10 of the same name, so that equal answers follow each other.
        let name = names[usize::from(i / 10) % names.len()];
        let mut q = crate::support::signpost::query_bytes(name, RecordType::A, None);
        q[..2].copy_from_slice(&i.to_be_bytes());
        socket.send(&q).await.unwrap();
        want.insert(i, name);
    }
    let mut buf = vec![0u8; 4096];
    while !want.is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer for {} queries", want.len()))
            .unwrap();
        let m = hickory_proto::op::Message::from_vec(&buf[..n]).expect("a whole DNS message");
        let name = want.remove(&m.metadata.id).expect("an ID asked once");
        assert_eq!(m.queries[0].name().to_string(), name);
        let expected = if name.starts_with("nope") {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        assert_eq!(m.metadata.response_code, expected, "{name}");
    }
    sp.stop().await;
}
