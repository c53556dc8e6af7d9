use std::str::FromStr;

use hickory_proto::op::{Edns as HEdns, Message, MessageType, OpCode, Query as HQuery};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

use super::*;

fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0xBEEF;
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_str(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = HEdns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    let mut bytes = m.to_vec().unwrap();
    // hickory writes question names in lowercase; put the caller's case back.
    set_case(&mut bytes, name);
    bytes
}

fn set_case(bytes: &mut [u8], name: &str) {
    let mut pos = HEADER_LEN;
    for label in name.split('.').filter(|l| !l.is_empty()) {
        bytes[pos + 1..pos + 1 + label.len()].copy_from_slice(label.as_bytes());
        pos += 1 + label.len();
    }
}

/// A plain query is read without copying, case kept, no EDNS.
#[test]
fn parses_plain_query() {
    let bytes = query_bytes("WeB.service.consul.", RecordType::SRV, None);
    let q = Query::parse(&bytes).unwrap();
    assert_eq!(q.id, 0xBEEF);
    assert!(q.recursion_desired());
    assert_eq!(q.qtype, rtype::SRV);
    assert_eq!(q.qclass, CLASS_IN);
    assert_eq!(&q.qname[..4], b"\x03WeB");
    assert!(q.edns.is_none());
    assert_eq!(q.max_size(Proto::Udp), 512);
    assert_eq!(q.max_size(Proto::Tcp), 65_535);
    let mut buf = [0u8; 256];
    assert_eq!(
        dotted_lower(q.qname, &mut buf).unwrap(),
        b"web.service.consul"
    );
}

/// EDNS size and the Client Subnet option are read so they can be echoed.
#[test]
fn parses_edns_and_ecs() {
    let mut m = Message::query();
    m.add_query(HQuery::query(
        Name::from_str("a.consul.").unwrap(),
        RecordType::A,
    ));
    let mut e = HEdns::new();
    e.set_max_payload(12345);
    e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
        "198.18.0.0".parse().unwrap(),
        21,
        0,
    )));
    m.edns = Some(e);
    let bytes = m.to_vec().unwrap();
    let q = Query::parse(&bytes).unwrap();
    let edns = q.edns.unwrap();
    assert_eq!(edns.udp_size, 12345);
    assert!(edns.ecs.is_some());
    assert_eq!(q.max_size(Proto::Udp), 12345);

    let mut out = Vec::new();
    error_response(&mut out, &q, rcode::NXDOMAIN);
    let resp = Message::from_vec(&out).unwrap();
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(resp.metadata.response_code.low(), rcode::NXDOMAIN);
    let redns = resp.edns.expect("OPT echoed");
    assert_eq!(redns.max_payload(), 12345);
    assert!(
        redns
            .options()
            .as_ref()
            .iter()
            .any(|(code, _)| u16::from(*code) == 8)
    );
}

/// Responses, short packets and odd opcodes are told apart from malformed queries.
#[test]
fn rejects_what_it_must() {
    assert_eq!(Query::parse(&[0u8; 5]).unwrap_err(), ParseError::Drop);
    let mut bytes = query_bytes("a.consul.", RecordType::A, None);
    bytes[2] |= 0x80;
    assert_eq!(Query::parse(&bytes).unwrap_err(), ParseError::Drop);

    let mut bytes = query_bytes("a.consul.", RecordType::A, None);
    bytes[2] |= 2 << 3; // opcode STATUS
    assert_eq!(Query::parse(&bytes).unwrap_err(), ParseError::NotImp);

    let bytes = query_bytes("a.consul.", RecordType::A, None);
    assert_eq!(
        Query::parse(&bytes[..bytes.len() - 2]).unwrap_err(),
        ParseError::Format
    );

    let mut m = Message::query();
    m.metadata.op_code = OpCode::Query;
    let bytes = m.to_vec().unwrap();
    assert_eq!(Query::parse(&bytes).unwrap_err(), ParseError::Format);
}

/// Every truncation of a valid query is rejected without a panic.
#[test]
fn truncated_prefixes_never_panic() {
    let bytes = query_bytes(
        "some.long.name.service.consul.",
        RecordType::SRV,
        Some(1232),
    );
    for len in 0..bytes.len() {
        assert!(Query::parse(&bytes[..len]).is_err(), "prefix {len}");
    }
    assert!(Query::parse(&bytes).is_ok());
}

/// The response header keeps ID, RD and the question bytes, and sets QR, RA and AA.
#[test]
fn begin_response_copies_question() {
    let bytes = query_bytes("MiXeD.consul.", RecordType::A, None);
    let q = Query::parse(&bytes).unwrap();
    let mut out = Vec::new();
    begin_response(&mut out, &q, rcode::NOERROR, true);
    push_a_qname(&mut out, 5, Ipv4Addr::new(10, 0, 0, 1));
    set_counts(&mut out, 1, 0, 0);
    let resp = Message::from_vec(&out).unwrap();
    assert_eq!(resp.metadata.id, 0xBEEF);
    assert!(resp.metadata.authoritative);
    assert!(resp.metadata.recursion_desired);
    assert!(resp.metadata.recursion_available);
    assert_eq!(resp.queries[0].name().to_string(), "MiXeD.consul.");
    assert_eq!(resp.answers[0].name.to_string(), "MiXeD.consul.");
    assert_eq!(resp.answers[0].ttl, 5);
}
