#![allow(clippy::unwrap_used, clippy::expect_used)]

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;

fn query(name: &str) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message
}

fn reply(name: &str, ttls: &[u32], edns: bool) -> Vec<u8> {
    let mut message = query(name);
    message.metadata.message_type = MessageType::Response;
    message.metadata.id = 0x9999;
    for (i, ttl) in ttls.iter().enumerate() {
        let a = RData::A(A::new(10, 0, 0, i as u8));
        message.add_answer(Record::from_rdata(Name::from_ascii(name).unwrap(), *ttl, a));
    }
    if edns {
        let mut opt = Edns::new();
        opt.set_dnssec_ok(true);
        message.set_edns(opt);
    }
    message.to_vec().unwrap()
}

/// The reply takes the client's ID and the client's letter case in the question.
#[test]
fn copies_id_and_question_case() {
    let request = query("WwW.Example.ORG.").to_vec().unwrap();
    let mut wire = reply("www.example.org.", &[60], false);
    copy_id_and_question(&mut wire, &request);
    let message = Message::from_vec(&wire).unwrap();
    assert_eq!(message.metadata.id, 0x1234);
    assert_eq!(message.queries[0].name().to_ascii(), "WwW.Example.ORG.");
}

/// A different name of the same length is not copied over.
#[test]
fn leaves_other_names_alone() {
    let request = query("aaa.example.org.").to_vec().unwrap();
    let mut wire = reply("bbb.example.org.", &[60], false);
    copy_id_and_question(&mut wire, &request);
    assert_eq!(
        Message::from_vec(&wire).unwrap().queries[0]
            .name()
            .to_ascii(),
        "bbb.example.org."
    );
}

/// Every record TTL is rewritten; the OPT record's flags (its TTL field) are not.
#[test]
fn rewrites_ttls_but_not_opt() {
    let mut wire = reply("www.example.org.", &[300, 100], true);
    rewrite_ttls(&mut wire, |ttl| ttl - 40).unwrap();
    let message = Message::from_vec(&wire).unwrap();
    let ttls: Vec<u32> = message.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(ttls, vec![260, 60]);
    assert!(message.edns.unwrap().flags().dnssec_ok);
}

/// A cut-off message is reported, not panicked on.
#[test]
fn malformed_messages_do_not_panic() {
    let wire = reply("www.example.org.", &[300, 100], true);
    for len in 0..wire.len() {
        let mut cut = wire[..len].to_vec();
        let _ = rewrite_ttls(&mut cut, |t| t);
        copy_id_and_question(&mut cut, &wire);
        let _ = truncate(&cut);
    }
    let mut looping = vec![0u8; 12];
    looping[5] = 1;
    looping.extend_from_slice(&[0xC0, 12]);
    assert!(rewrite_ttls(&mut looping, |t| t).is_none());
}

/// Truncation keeps the header, question and OPT, with TC set and no records.
#[test]
fn truncate_keeps_question_and_sets_tc() {
    let wire = reply("www.example.org.", &[300; 50], true);
    let cut = Message::from_vec(&truncate(&wire)).unwrap();
    assert!(cut.metadata.truncation);
    assert!(cut.answers.is_empty());
    assert_eq!(cut.queries.len(), 1);
    assert!(cut.edns.is_some());
}

/// SERVFAIL written by signpost: RA=1, the client's question, and EDNS only if the client sent it.
#[test]
fn error_response_echoes_edns() {
    let mut request = query("www.example.org.");
    let plain = Message::from_vec(&error_response(&request, ResponseCode::ServFail)).unwrap();
    assert_eq!(plain.metadata.response_code, ResponseCode::ServFail);
    assert!(plain.metadata.recursion_available && plain.metadata.recursion_desired);
    assert_eq!(plain.metadata.id, 0x1234);
    assert!(plain.edns.is_none());

    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    request.set_edns(edns);
    let with_edns = Message::from_vec(&error_response(&request, ResponseCode::ServFail)).unwrap();
    assert_eq!(with_edns.edns.unwrap().max_payload(), 4096);
    assert_eq!(udp_limit(&request), 4096);
}

/// An unparseable request gets a header-only FORMERR with its ID.
#[test]
fn minimal_formerr() {
    let wire = minimal_response(&[0xAB, 0xCD, 0x01], ResponseCode::FormErr);
    assert_eq!(wire.len(), HEADER_LEN);
    let message = Message::from_vec(&wire).unwrap();
    assert_eq!(message.metadata.id, 0xABCD);
    assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    assert!(message.metadata.recursion_desired);
}
