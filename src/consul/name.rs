//! The `.consul` name grammar (`reference/consul-dns.md` §1.2–§1.3), read without allocating.
//!
//! Input is the question name in lowercase dotted form with the domain already stripped
//! (`v1.web.service.dc1` for `v1.web.service.dc1.consul.`). Like Consul's `dispatch`, the labels
//! are scanned right to left for the first keyword; labels left of it are the query parts, labels
//! right of it the locality. Parts joined with dots are returned as one slice of the input, so a
//! tag or node name with dots (`v1.primary`) costs nothing.

use crate::wire::rtype;

/// What a name under the Consul domain asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsulName<'a> {
    /// `[tag.]svc.service`, or the RFC 2782 `_svc._tag[.service]` form (`_tcp` = no tag).
    Service {
        service: &'a [u8],
        tag: Option<&'a [u8]>,
        locality: Locality<'a>,
    },
    /// `node.node`: all parts joined are the node name.
    Node {
        node: &'a [u8],
        locality: Locality<'a>,
    },
    /// `name.query` or `_name._proto.query`: all parts joined are the query name or ID.
    Query {
        name: &'a [u8],
        locality: Locality<'a>,
    },
    /// `<hex>.addr`: an address spelled in hex; the locality is ignored, as Consul does.
    Addr { hex: &'a [u8] },
    /// `connect`, `ingress`, `virtual`: names signpost does not serve (answered NXDOMAIN; README).
    Unsupported,
    /// No keyword, no parts, a bad locality: NXDOMAIN + SOA, as Consul's "QName invalid".
    Invalid,
}

/// The labels after the keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locality<'a> {
    Local,
    Datacenter(&'a [u8]),
    Peer(&'a [u8]),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Service,
    Connect,
    Virtual,
    Ingress,
    Node,
    Query,
    Addr,
}

/// Most labels a 255-byte name can have.
const MAX_LABELS: usize = 128;

/// Parse `rel` (lowercase, dotted, domain stripped, "" for the apex) asked with `qtype`.
pub fn parse(rel: &[u8], qtype: u16) -> ConsulName<'_> {
    let mut bounds = [(0u16, 0u16); MAX_LABELS];
    let Some(n) = split_labels(rel, &mut bounds) else {
        return ConsulName::Invalid;
    };
    let labels = &bounds[..n];
    let label = |i: usize| &rel[labels[i].0 as usize..labels[i].1 as usize];
    // Joined labels a..b as one slice of `rel` (dots included).
    let join = |a: usize, b: usize| &rel[labels[a].0 as usize..labels[b - 1].1 as usize];

    let mut found = None;
    for i in (0..n).rev() {
        if let Some(kw) = keyword(label(i)) {
            found = Some((i, kw, i + 1));
            break;
        }
        // Consul: an SRV question meeting a `_label` before any keyword is a service lookup
        // with everything up to that label as parts (`_db._tcp.dc1.consul`).
        if qtype == rtype::SRV && label(i).first() == Some(&b'_') {
            found = Some((i + 1, Keyword::Service, i + 1));
            break;
        }
    }
    let Some((parts_end, kw, suffix_start)) = found else {
        return ConsulName::Invalid;
    };
    if parts_end == 0 {
        return ConsulName::Invalid;
    }
    let suffix = Vec2::new(rel, &labels[suffix_start..]);

    match kw {
        Keyword::Service => {
            let Some(locality) = locality(&suffix) else {
                return ConsulName::Invalid;
            };
            let (service, tag) = if parts_end == 2
                && label(0).first() == Some(&b'_')
                && label(1).first() == Some(&b'_')
            {
                let tag = &label(1)[1..];
                (&label(0)[1..], (tag != b"tcp").then_some(tag))
            } else if parts_end == 1 {
                (label(0), None)
            } else {
                (label(parts_end - 1), Some(join(0, parts_end - 1)))
            };
            if service.is_empty() {
                return ConsulName::Invalid;
            }
            ConsulName::Service {
                service,
                tag: tag.filter(|t| !t.is_empty()),
                locality,
            }
        }
        Keyword::Node => match locality(&suffix) {
            Some(locality) => ConsulName::Node {
                node: join(0, parts_end),
                locality,
            },
            None => ConsulName::Invalid,
        },
        Keyword::Query => {
            // Only a bare datacenter is accepted after `.query` (`reference/consul-dns.md` §1.3).
            let locality = match suffix.len() {
                0 => Locality::Local,
                1 => Locality::Datacenter(suffix.get(0)),
                _ => return ConsulName::Invalid,
            };
            let name = if parts_end >= 2
                && label(0).first() == Some(&b'_')
                && label(parts_end - 1).first() == Some(&b'_')
            {
                &join(0, parts_end - 1)[1..]
            } else {
                join(0, parts_end)
            };
            ConsulName::Query { name, locality }
        }
        Keyword::Addr if parts_end == 1 => ConsulName::Addr { hex: label(0) },
        Keyword::Addr => ConsulName::Invalid,
        Keyword::Connect | Keyword::Ingress | Keyword::Virtual => ConsulName::Unsupported,
    }
}

/// Decode the hex of an `.addr` name: 8 hex digits are IPv4, 32 are IPv6.
pub fn decode_addr(hex: &[u8]) -> Option<std::net::IpAddr> {
    fn nibbles<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *out.get_mut(i)? = (hi * 16 + lo) as u8;
        }
        Some(out)
    }
    match hex.len() {
        8 => nibbles::<4>(hex).map(std::net::IpAddr::from),
        32 => nibbles::<16>(hex).map(std::net::IpAddr::from),
        _ => None,
    }
}

fn keyword(label: &[u8]) -> Option<Keyword> {
    Some(match label {
        b"service" => Keyword::Service,
        b"connect" => Keyword::Connect,
        b"virtual" => Keyword::Virtual,
        b"ingress" => Keyword::Ingress,
        b"node" => Keyword::Node,
        b"query" => Keyword::Query,
        b"addr" => Keyword::Addr,
        _ => return None,
    })
}

/// Locality suffix (`parseLocality`, CE): none; one label (a datacenter); `<x>.dc`; `<x>.peer`.
fn locality<'a>(suffix: &Vec2<'a, '_>) -> Option<Locality<'a>> {
    match suffix.len() {
        0 => Some(Locality::Local),
        1 => Some(Locality::Datacenter(suffix.get(0))),
        2 => match suffix.get(1) {
            b"dc" => Some(Locality::Datacenter(suffix.get(0))),
            b"peer" => Some(Locality::Peer(suffix.get(0))),
            _ => None,
        },
        _ => None,
    }
}

/// Label boundaries of a dotted name; `None` for an empty label (`a..b`).
fn split_labels(rel: &[u8], out: &mut [(u16, u16); MAX_LABELS]) -> Option<usize> {
    if rel.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    let mut start = 0;
    for (i, &b) in rel
        .iter()
        .enumerate()
        .chain(std::iter::once((rel.len(), &b'.')))
    {
        if b == b'.' {
            if i == start || n == MAX_LABELS {
                return None;
            }
            out[n] = (start as u16, i as u16);
            n += 1;
            start = i + 1;
        }
    }
    Some(n)
}

/// A view of some labels of a name.
struct Vec2<'a, 'l> {
    rel: &'a [u8],
    labels: &'l [(u16, u16)],
}

impl<'a, 'l> Vec2<'a, 'l> {
    fn new(rel: &'a [u8], labels: &'l [(u16, u16)]) -> Self {
        Vec2 { rel, labels }
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, i: usize) -> &'a [u8] {
        let (a, b) = self.labels[i];
        &self.rel[a as usize..b as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rtype::{A, SRV};

    fn svc<'a>(service: &'a str, tag: Option<&'a str>, locality: Locality<'a>) -> ConsulName<'a> {
        ConsulName::Service {
            service: service.as_bytes(),
            tag: tag.map(str::as_bytes),
            locality,
        }
    }

    /// The name forms of `reference/consul-dns.md` §1.3, including §9 cases 28, 29, 42, 43, 68.
    #[test]
    fn grammar_table() {
        use Locality::*;
        let dc1 = Datacenter(b"dc1");
        let cases: &[(&str, u16, ConsulName<'_>)] = &[
            ("web.service", A, svc("web", None, Local)),
            ("v1.web.service", A, svc("web", Some("v1"), Local)),
            (
                "v1.primary.db.service",
                SRV,
                svc("db", Some("v1.primary"), Local),
            ),
            (
                "dummy.primary.db.service",
                SRV,
                svc("db", Some("dummy.primary"), Local),
            ),
            ("web.service.dc1", A, svc("web", None, dc1)),
            ("web.service.dc1.dc", A, svc("web", None, dc1)),
            ("web.service.p1.peer", A, svc("web", None, Peer(b"p1"))),
            (
                "_db._primary.service.dc1",
                SRV,
                svc("db", Some("primary"), dc1),
            ),
            (
                "_db._primary.service",
                SRV,
                svc("db", Some("primary"), Local),
            ),
            ("_db._primary.dc1", SRV, svc("db", Some("primary"), dc1)),
            ("_db._primary", SRV, svc("db", Some("primary"), Local)),
            ("_db._tcp", SRV, svc("db", None, Local)),
            ("_db._tcp.service.dc1", SRV, svc("db", None, dc1)),
            ("_db._tcp", A, ConsulName::Invalid),
            (
                "banana._db._primary.service",
                SRV,
                svc("_primary", Some("banana._db"), Local),
            ),
            (
                "foo.node",
                A,
                ConsulName::Node {
                    node: b"foo",
                    locality: Local,
                },
            ),
            (
                "foo.bar.node",
                A,
                ConsulName::Node {
                    node: b"foo.bar",
                    locality: Local,
                },
            ),
            (
                "foo.node.dc1",
                A,
                ConsulName::Node {
                    node: b"foo",
                    locality: dc1,
                },
            ),
            ("foo.node.dc1.extra.more", SRV, ConsulName::Invalid),
            (
                "some.query.we.like.query",
                SRV,
                ConsulName::Query {
                    name: b"some.query.we.like",
                    locality: Local,
                },
            ),
            (
                "_geo._tcp.query",
                SRV,
                ConsulName::Query {
                    name: b"geo",
                    locality: Local,
                },
            ),
            (
                "q.query.dc1",
                A,
                ConsulName::Query {
                    name: b"q",
                    locality: dc1,
                },
            ),
            ("q.query.dc1.dc", A, ConsulName::Invalid),
            (
                "7f000001.addr.dc1",
                A,
                ConsulName::Addr { hex: b"7f000001" },
            ),
            ("db.connect", A, ConsulName::Unsupported),
            ("", A, ConsulName::Invalid),
            ("service", A, ConsulName::Invalid),
            ("node", A, ConsulName::Invalid),
            ("query", A, ConsulName::Invalid),
            ("foo.bar", A, ConsulName::Invalid),
            ("nonexisting", A, ConsulName::Invalid),
            ("web.service.a.b.c", A, ConsulName::Invalid),
        ];
        for (name, qtype, want) in cases {
            assert_eq!(parse(name.as_bytes(), *qtype), *want, "{name} {qtype}");
        }
    }

    #[test]
    fn decodes_addr_hex() {
        assert_eq!(decode_addr(b"7f000001"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            decode_addr(b"2607112040051808ffffffffffff200e"),
            Some("2607:1120:4005:1808:ffff:ffff:ffff:200e".parse().unwrap())
        );
        assert_eq!(decode_addr(b"7f00001"), None);
        assert_eq!(decode_addr(b"7f00000g"), None);
    }
}
