//! Reading a DNS query and writing an answer without allocating.
//!
//! The hot path never builds a `hickory_proto::op::Message`: [`Query::parse`] reads the header,
//! the one question and an optional OPT record straight from the client's bytes, and the
//! answerers append pre-encoded records to a reused buffer. Anything unusual (several questions,
//! records in the answer or authority section, TSIG, a compressed question name) is reported as
//! [`ParseError::Unusual`] so the caller can take the general path built on hickory-proto.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

/// Record types signpost answers itself.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

/// Response codes (RFC 1035 §4.1.1, RFC 6891 for BADVERS).
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
}

/// The class IN.
pub const CLASS_IN: u16 = 1;
/// Size of the DNS header.
pub const HEADER_LEN: usize = 12;
/// Largest UDP answer without EDNS (RFC 1035 §4.2.1).
pub const MAX_PLAIN_UDP: usize = 512;
/// Largest message over TCP (the 2-byte length prefix).
pub const MAX_TCP: usize = 65_535;
/// EDNS option code of Client Subnet (RFC 7871).
const OPTION_ECS: u16 = 8;

/// What the client's OPT record said (RFC 6891).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns<'a> {
    /// The requestor's UDP payload size, as sent.
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// The raw data of a Client Subnet option, echoed back (RFC 7871 §7.2.1).
    pub ecs: Option<&'a [u8]>,
}

/// A query read from the wire. Borrowed from the packet: nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub packet: &'a [u8],
    pub id: u16,
    /// The header flags word as sent (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode).
    pub flags: u16,
    /// The question name in wire form, exactly as sent (client's letter case kept).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section in `packet`.
    pub question_end: usize,
    pub edns: Option<Edns<'a>>,
}

/// Why a packet is not a query the fast path can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header, or a response (QR=1): dropped without an answer, like hickory's
    /// server does, so that signpost never answers an answer.
    #[error("not a query")]
    Drop,
    /// Malformed: answered FORMERR when the header could be read.
    #[error("malformed query")]
    Format,
    /// An opcode other than QUERY: answered NOTIMP.
    #[error("opcode not implemented")]
    NotImp,
    /// Valid but unusual: take the general path.
    #[error("unusual query")]
    Unusual,
}

// === impl Query ===

impl<'a> Query<'a> {
    /// Read a query. Checks everything the fast path relies on: one question, no answer or
    /// authority records, at most one additional record and it must be an OPT.
    pub fn parse(packet: &'a [u8]) -> Result<Query<'a>, ParseError> {
        if packet.len() < HEADER_LEN {
            return Err(ParseError::Drop);
        }
        let id = be16(packet, 0);
        let flags = be16(packet, 2);
        if flags & 0x8000 != 0 {
            return Err(ParseError::Drop);
        }
        if (flags >> 11) & 0xF != 0 {
            return Err(ParseError::NotImp);
        }
        let (qd, an, ns, ar) = (
            be16(packet, 4),
            be16(packet, 6),
            be16(packet, 8),
            be16(packet, 10),
        );
        if qd != 1 {
            return Err(if qd == 0 {
                ParseError::Format
            } else {
                ParseError::Unusual
            });
        }
        if an != 0 || ns != 0 || ar > 1 {
            return Err(ParseError::Unusual);
        }
        let name_end = name_end_uncompressed(packet, HEADER_LEN)?;
        let question_end = name_end + 4;
        if packet.len() < question_end {
            return Err(ParseError::Format);
        }
        let qtype = be16(packet, name_end);
        let qclass = be16(packet, name_end + 2);
        let edns = if ar == 1 {
            Some(parse_opt(packet, question_end)?)
        } else if packet.len() != question_end {
            // Trailing bytes after the question: tolerated by most servers, but not ours to guess.
            return Err(ParseError::Unusual);
        } else {
            None
        };
        Ok(Query {
            packet,
            id,
            flags,
            qname: &packet[HEADER_LEN..name_end],
            qtype,
            qclass,
            question_end,
            edns,
        })
    }

    /// The question section as the client sent it.
    pub fn question(&self) -> &'a [u8] {
        &self.packet[HEADER_LEN..self.question_end]
    }

    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    /// The largest answer this client takes over `proto`: 512 without EDNS, the advertised size
    /// (at least 512, RFC 6891 §6.2.5) with it, 65,535 over TCP.
    pub fn max_size(&self, proto: Proto) -> usize {
        match (proto, self.edns) {
            (Proto::Tcp, _) => MAX_TCP,
            (Proto::Udp, None) => MAX_PLAIN_UDP,
            (Proto::Udp, Some(e)) => usize::from(e.udp_size).max(MAX_PLAIN_UDP),
        }
    }
}

/// Where a wire name starting at `start` ends. Compression pointers are not expected in a
/// question (the question is the first name in the message) and make the query unusual.
fn name_end_uncompressed(packet: &[u8], start: usize) -> Result<usize, ParseError> {
    let mut pos = start;
    loop {
        let len = *packet.get(pos).ok_or(ParseError::Format)? as usize;
        if len == 0 {
            let end = pos + 1;
            // RFC 1035 §2.3.4: names are 255 octets or less.
            return if end - start > 255 {
                Err(ParseError::Format)
            } else {
                Ok(end)
            };
        }
        if len & 0xC0 != 0 {
            return Err(ParseError::Unusual);
        }
        pos += 1 + len;
    }
}

/// Read the one additional record, which must be an OPT with the root name.
fn parse_opt(packet: &[u8], start: usize) -> Result<Edns<'_>, ParseError> {
    // name (root) + type + class + ttl + rdlen
    if packet.len() < start + 11 || packet[start] != 0 {
        return Err(ParseError::Unusual);
    }
    if be16(packet, start + 1) != rtype::OPT {
        return Err(ParseError::Unusual);
    }
    let udp_size = be16(packet, start + 3);
    let version = packet[start + 6];
    let dnssec_ok = packet[start + 7] & 0x80 != 0;
    let rdlen = usize::from(be16(packet, start + 9));
    let data_start = start + 11;
    if packet.len() != data_start + rdlen {
        return Err(ParseError::Format);
    }
    let mut ecs = None;
    let mut pos = data_start;
    while pos < data_start + rdlen {
        if pos + 4 > data_start + rdlen {
            return Err(ParseError::Format);
        }
        let code = be16(packet, pos);
        let len = usize::from(be16(packet, pos + 2));
        let body = packet
            .get(pos + 4..pos + 4 + len)
            .ok_or(ParseError::Format)?;
        if code == OPTION_ECS {
            ecs = Some(body);
        }
        pos += 4 + len;
    }
    Ok(Edns {
        udp_size,
        version,
        dnssec_ok,
        ecs,
    })
}

/// Read a big-endian u16. Callers check bounds first.
#[inline]
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Write `name` (a lowercase wire name) as dotted text into `out`, without the final dot;
/// the root is "". Returns `None` for a label holding a `.` (which dotted text cannot show),
/// so such names never match a key.
pub fn dotted_lower<'b>(name: &[u8], out: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let mut pos = 0;
    let mut len = 0;
    while let Some(&l) = name.get(pos) {
        let l = l as usize;
        if l == 0 {
            break;
        }
        if len != 0 {
            out[len] = b'.';
            len += 1;
        }
        let label = name.get(pos + 1..pos + 1 + l)?;
        if label.contains(&b'.') || len + l > 255 {
            return None;
        }
        for (dst, src) in out[len..len + l].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        len += l;
        pos += 1 + l;
    }
    Some(&out[..len])
}

// === Writing ===

/// Start a response in `out`: the header (flags from the query, QR set, RA set, the given
/// rcode and AA) and the client's question, byte for byte (so 0x20 letter case is kept).
/// Counts are zero; [`set_counts`] fills them in at the end.
pub fn begin_response(out: &mut Vec<u8>, query: &Query<'_>, rcode: u8, authoritative: bool) {
    out.clear();
    out.extend_from_slice(&query.id.to_be_bytes());
    // Keep opcode, RD and CD from the request (RFC 1035 §4.1.1, RFC 4035 §3.1.6); QR=1, RA=1.
    let mut flags = (query.flags & (0x7800 | 0x0100 | 0x0010)) | 0x8000 | 0x0080;
    if authoritative {
        flags |= 0x0400;
    }
    flags |= u16::from(rcode & 0x0F);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(query.question());
}

/// Write the section counts (question count stays 1).
pub fn set_counts(out: &mut [u8], answer: u16, authority: u16, additional: u16) {
    out[6..8].copy_from_slice(&answer.to_be_bytes());
    out[8..10].copy_from_slice(&authority.to_be_bytes());
    out[10..12].copy_from_slice(&additional.to_be_bytes());
}

/// Set the TC bit.
pub fn set_truncated(out: &mut [u8]) {
    out[2] |= 0x02;
}

/// The size of the OPT record [`write_opt`] writes for this query (0 without EDNS).
pub fn opt_len(query: &Query<'_>) -> usize {
    match query.edns {
        None => 0,
        Some(Edns { ecs: None, .. }) => 11,
        Some(Edns { ecs: Some(ecs), .. }) => 11 + 4 + ecs.len(),
    }
}

/// Echo EDNS: the client's UDP size (Consul echoes it, `reference/consul-dns.md` §5.3), version 0,
/// and the Client Subnet option with the scope prefix set to `ecs_scope` (0 = "valid for
/// everyone", RFC 7871 §7.2.1). Returns whether an OPT was written.
pub fn write_opt(out: &mut Vec<u8>, query: &Query<'_>, ecs_scope: u8) -> bool {
    let Some(edns) = query.edns else {
        return false;
    };
    let udp_size = edns.udp_size.max(MAX_PLAIN_UDP as u16);
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&udp_size.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    match edns.ecs {
        None => out.extend_from_slice(&[0, 0]),
        Some(ecs) => {
            let rdlen = (4 + ecs.len()) as u16;
            out.extend_from_slice(&rdlen.to_be_bytes());
            out.extend_from_slice(&OPTION_ECS.to_be_bytes());
            out.extend_from_slice(&(ecs.len() as u16).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(ecs);
            // family(2) source-prefix(1) scope-prefix(1) address...
            if let Some(scope) = out.get_mut(start + 3) {
                *scope = ecs_scope;
            }
        }
    }
    true
}

/// A bare error response: header and question (when readable), the rcode, EDNS echoed.
pub fn error_response(out: &mut Vec<u8>, query: &Query<'_>, rcode: u8) {
    begin_response(out, query, rcode, false);
    let opt = u16::from(write_opt(out, query, 0));
    set_counts(out, 0, 0, opt);
}

/// A response to a packet that could not be read as a query but has a header: the ID and
/// opcode back with `rcode` and no question (RFC 1035 §4.1.1 allows echoing nothing).
pub fn header_only_response(out: &mut Vec<u8>, packet: &[u8], rcode: u8) -> bool {
    if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
        return false;
    }
    out.clear();
    out.extend_from_slice(&packet[0..2]);
    let flags = (be16(packet, 2) & (0x7800 | 0x0100)) | 0x8000 | 0x0080 | u16::from(rcode);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    true
}

/// Append a name given as dotted text (no trailing dot needed; "" is the root) in wire form,
/// uncompressed. Labels longer than 63 bytes are cut (they cannot come from a valid catalog
/// name; Consul's own names are checked at registration).
pub fn push_name(out: &mut Vec<u8>, dotted: &str) {
    for label in dotted.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

/// Append a resource record header: owner already written by the caller, then type, class,
/// TTL and a placeholder RDLENGTH. Returns the RDLENGTH position for [`end_rdata`].
pub fn push_rr_header(out: &mut Vec<u8>, rtype: u16, ttl: u32) -> usize {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    at
}

/// Fill in the RDLENGTH written by [`push_rr_header`].
pub fn end_rdata(out: &mut [u8], rdlen_at: usize) {
    let len = (out.len() - rdlen_at - 2) as u16;
    out[rdlen_at..rdlen_at + 2].copy_from_slice(&len.to_be_bytes());
}

/// The owner name "the question name": a compression pointer to offset 12 (RFC 1035 §4.1.4).
pub const OWNER_QNAME: [u8; 2] = [0xC0, 0x0C];

/// Append an A record owned by the question name.
pub fn push_a_qname(out: &mut Vec<u8>, ttl: u32, ip: Ipv4Addr) {
    out.extend_from_slice(&OWNER_QNAME);
    let at = push_rr_header(out, rtype::A, ttl);
    out.extend_from_slice(&ip.octets());
    end_rdata(out, at);
}

/// Append an AAAA record owned by the question name.
pub fn push_aaaa_qname(out: &mut Vec<u8>, ttl: u32, ip: Ipv6Addr) {
    out.extend_from_slice(&OWNER_QNAME);
    let at = push_rr_header(out, rtype::AAAA, ttl);
    out.extend_from_slice(&ip.octets());
    end_rdata(out, at);
}

/// Append one TXT character-string holding `text`, split into 255-byte strings (RFC 1035 §3.3).
pub fn push_txt_rdata(out: &mut Vec<u8>, text: &[u8]) {
    if text.is_empty() {
        out.push(0);
    }
    for chunk in text.chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests;
