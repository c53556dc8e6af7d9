//! Byte-level edits of DNS messages (RFC 1035 §4.1) that the forwarder makes without
//! re-encoding what an upstream sent, and the few answers it writes itself.
//!
//! Upstream answers are stored and relayed as wire bytes so that rcodes, flags, every section and
//! the EDNS OPT record reach the client exactly as the upstream sent them (`reference/hickory.md`
//! §3.3). Only the ID, the question's letter case and TTLs are ever patched in place.

use std::ops::Range;

use hickory_proto::op::{Edns, Message, ResponseCode};

/// RFC 1035 §4.1.1: the header is 12 bytes.
pub(crate) const HEADER_LEN: usize = 12;
/// RFC 1035 §4.2.1: "Messages carried by UDP are restricted to 512 bytes".
pub(crate) const UDP_MIN_LIMIT: usize = 512;
/// RFC 6891 §6.1.2: the OPT pseudo-RR's TTL field holds extended rcode and flags, not a TTL.
const OPT_TYPE: u16 = 41;
/// The TC bit in the third header byte (RFC 1035 §4.1.1).
const TC_BIT: u8 = 0x02;

/// The message ID, if there is a header.
pub(crate) fn id(wire: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*wire.first()?, *wire.get(1)?]))
}

/// Overwrite the message ID (no-op on a message shorter than the ID).
pub(crate) fn set_id(wire: &mut [u8], id: u16) {
    if let Some(bytes) = wire.get_mut(0..2) {
        bytes.copy_from_slice(&id.to_be_bytes());
    }
}

fn count(wire: &[u8], index: usize) -> Option<usize> {
    let at = 4 + 2 * index;
    Some(u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]) as usize)
}

/// Where the name starting at `pos` ends. A compression pointer (RFC 1035 §4.1.4) ends a name.
fn skip_name(wire: &[u8], mut pos: usize) -> Option<usize> {
    // A name has at most 127 labels (RFC 1035 §2.3.4: 255 octets); the bound keeps a hostile
    // message from looping.
    for _ in 0..128 {
        let len = *wire.get(pos)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len,
            0xC0 => return (pos + 2 <= wire.len()).then_some(pos + 2),
            _ => return None,
        }
    }
    None
}

/// The bytes of the first question's name, if the message has a question.
fn question_name(wire: &[u8]) -> Option<Range<usize>> {
    if count(wire, 0)? == 0 {
        return None;
    }
    let end = skip_name(wire, HEADER_LEN)?;
    (end <= wire.len()).then_some(HEADER_LEN..end)
}

/// The header and the question section.
fn header_and_question(wire: &[u8]) -> Option<&[u8]> {
    let mut pos = HEADER_LEN;
    for _ in 0..count(wire, 0)? {
        pos = skip_name(wire, pos)? + 4;
    }
    wire.get(..pos)
}

/// Give `reply` the ID and the question name bytes of `request`, so the client sees its own
/// letter case (RFC 1035 §7.3 matching; DNS 0x20 clients compare case). Names of different
/// lengths are left alone: they cannot be the same question.
pub(crate) fn copy_id_and_question(reply: &mut [u8], request: &[u8]) {
    if let Some(id) = id(request) {
        set_id(reply, id);
    }
    let (Some(theirs), Some(ours)) = (question_name(request), question_name(reply)) else {
        return;
    };
    if theirs.len() == ours.len()
        && request[theirs.clone()].eq_ignore_ascii_case(&reply[ours.clone()])
    {
        reply[ours].copy_from_slice(&request[theirs]);
    }
}

/// Rewrite the TTL of every resource record except OPT with `ttl(old)`. `None` if the message
/// is malformed (it is then partly rewritten and must not be used).
pub(crate) fn rewrite_ttls(wire: &mut [u8], ttl: impl Fn(u32) -> u32) -> Option<()> {
    let records = count(wire, 1)? + count(wire, 2)? + count(wire, 3)?;
    let mut pos = header_and_question(wire)?.len();
    for _ in 0..records {
        pos = skip_name(wire, pos)?;
        let fixed = wire.get(pos..pos + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let old = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlength = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        if rtype != OPT_TYPE {
            wire.get_mut(pos + 4..pos + 8)?
                .copy_from_slice(&ttl(old).to_be_bytes());
        }
        pos += 10 + rdlength;
    }
    (pos <= wire.len()).then_some(())
}

/// The most a UDP client can take: its EDNS payload size, at least 512 (RFC 6891 §6.2.5), else
/// 512 (RFC 1035 §4.2.1).
pub(crate) fn udp_limit(request: &Message) -> usize {
    match &request.edns {
        Some(edns) => usize::from(edns.max_payload()).max(UDP_MIN_LIMIT),
        None => UDP_MIN_LIMIT,
    }
}

/// `reply` cut to fit a UDP client: the header and question with TC set, and the OPT record when
/// the reply had one (RFC 2181 §9: a truncated answer has TC set; the client retries over TCP).
pub(crate) fn truncate(reply: &[u8]) -> Vec<u8> {
    if let Ok(message) = Message::from_vec(reply)
        && let Ok(wire) = message.truncate().to_vec()
    {
        return wire;
    }
    let mut wire = header_and_question(reply)
        .unwrap_or(reply.get(..HEADER_LEN).unwrap_or(reply))
        .to_vec();
    if let Some(flags) = wire.get_mut(2) {
        *flags |= TC_BIT;
    }
    if let Some(counts) = wire.get_mut(6..HEADER_LEN) {
        counts.fill(0);
    }
    wire
}

/// An answer signpost writes itself (SERVFAIL when every upstream failed, REFUSED beyond
/// `max_in_flight`): the client's ID, opcode, RD and question, RA=1, and an OPT record when the
/// client sent one, as Consul does (`agent/dns.go` `handleRecurse`, `reference/consul-dns.md`
/// §5.1). The DO bit is copied (RFC 3225 §3: "the DO bit of the query MUST be copied in the
/// response").
pub(crate) fn error_response(request: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.metadata.recursion_available = true;
    response.metadata.response_code = rcode;
    response.add_queries(request.queries.iter().cloned());
    if let Some(theirs) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(theirs.max_payload().max(UDP_MIN_LIMIT as u16));
        edns.set_dnssec_ok(theirs.flags().dnssec_ok);
        response.set_edns(edns);
    }
    response
        .to_vec()
        .unwrap_or_else(|_| minimal_response(&[], rcode))
}

/// A header-only response for a request that cannot be parsed (RFC 1035 §4.1.1: FORMERR, "the
/// name server was unable to interpret the query").
pub(crate) fn minimal_response(request: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut wire = vec![0u8; HEADER_LEN];
    set_id(&mut wire, id(request).unwrap_or(0));
    wire[2] = 0x80 | (request.get(2).copied().unwrap_or(0) & 0x79); // QR, opcode, RD
    wire[3] = 0x80 | (u16::from(rcode) as u8 & 0x0F); // RA, rcode
    wire
}

#[cfg(test)]
mod tests;
