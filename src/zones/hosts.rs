//! A hosts file (`zones.hosts`, `/etc/hosts` syntax) served as local data: A and AAAA for each
//! name, PTR for each address (to the first name listed with it, as dnsmasq does).
//!
//! Unlike a zone, a hosts file owns exact names, not a suffix: a name it lists is answered
//! authoritatively (a type it has no record of is NODATA), and every other name, including the
//! rest of a private reverse zone such as `10.in-addr.arpa`, is forwarded as usual. So reverse
//! lookups for RFC 1918 addresses are answered locally only for the addresses configured here
//! (or in a zone file for that reverse zone); by default they go upstream like any name.
//! Answers carry TTL 0, dnsmasq's `--local-ttl` default: local data changes take effect at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record};

use super::{Encoded, ZoneError, encode_records};
use crate::consul::answer::Outcome;
use crate::wire::{self, Query, rcode, rtype};

/// TTL of hosts-file answers.
const HOSTS_TTL: u32 = 0;

/// The names of a hosts file, by dotted lowercase name without the final dot.
#[derive(Debug, Default)]
pub struct Hosts {
    names: HashMap<Box<[u8]>, HostName>,
}

/// What one name has.
#[derive(Debug, Default)]
struct HostName {
    a: Option<Encoded>,
    aaaa: Option<Encoded>,
    ptr: Option<Encoded>,
}

#[derive(Default)]
struct Records {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    ptr: Vec<Record>,
}

// === impl Hosts ===

impl Hosts {
    /// Read and parse `path`. An error names the file and the line.
    pub fn load(path: &Path) -> Result<Hosts, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|e| ZoneError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Hosts::parse(&text).map_err(|(line, message)| ZoneError {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        })
    }

    /// Parse hosts-file text: `ADDRESS NAME [ALIAS...]` per line, `#` starts a comment.
    fn parse(text: &str) -> Result<Hosts, (usize, String)> {
        let mut records: HashMap<Box<[u8]>, Records> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let Some(addr) = fields.next() else {
                continue;
            };
            // A zone index (fe80::1%eth0) has no meaning in DNS data.
            let addr = addr.split('%').next().unwrap_or(addr);
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| (line_no, format!("`{addr}` is not an IP address")))?;
            let mut first = None;
            for host in fields {
                let mut name = Name::from_ascii(host)
                    .map_err(|e| (line_no, format!("`{host}` is not a valid name: {e}")))?;
                name.set_fqdn(true);
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                let record = Record::from_rdata(name.clone(), HOSTS_TTL, rdata);
                let entry = records.entry(key(&name)).or_default();
                let list = match ip {
                    IpAddr::V4(_) => &mut entry.a,
                    IpAddr::V6(_) => &mut entry.aaaa,
                };
                if !list.contains(&record) {
                    list.push(record);
                }
                first.get_or_insert(name);
            }
            let Some(first) = first else {
                return Err((line_no, format!("`{addr}` has no name")));
            };
            let reverse = Name::from(ip);
            let entry = records.entry(key(&reverse)).or_default();
            // The first line that lists an address gives its PTR (dnsmasq, glibc).
            if entry.ptr.is_empty() {
                entry.ptr.push(Record::from_rdata(
                    reverse,
                    HOSTS_TTL,
                    RData::PTR(PTR(first)),
                ));
            }
        }
        let mut names = HashMap::with_capacity(records.len());
        for (name, records) in records {
            let encode = |list: &[Record]| -> Result<Option<Encoded>, (usize, String)> {
                if list.is_empty() {
                    return Ok(None);
                }
                encode_records(list).map(Some).map_err(|e| (0, e))
            };
            let host = HostName {
                a: encode(&records.a)?,
                aaaa: encode(&records.aaaa)?,
                ptr: encode(&records.ptr)?,
            };
            names.insert(name, host);
        }
        Ok(Hosts { names })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Answer `query` for `name` (dotted lowercase, no final dot) if the file lists it.
    pub fn answer(&self, name: &[u8], query: &Query<'_>, out: &mut Vec<u8>) -> Option<Outcome> {
        let host = self.names.get(name)?;
        let set = match query.qtype {
            rtype::A => host.a.as_ref(),
            rtype::AAAA => host.aaaa.as_ref(),
            rtype::PTR => host.ptr.as_ref(),
            _ => None,
        };
        wire::begin_response(out, query, rcode::NOERROR, true);
        let answers = match set {
            Some(set) => {
                out.extend_from_slice(&set.bytes);
                set.count
            }
            // NODATA: the name exists here, without that type (RFC 2308 §2.2).
            None => 0,
        };
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, answers, 0, opt);
        Some(Outcome {
            rcode: rcode::NOERROR,
        })
    }
}

/// Dotted lowercase without the final dot, as the dispatcher hands names over.
fn key(name: &Name) -> Box<[u8]> {
    name.to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .into_bytes()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names get A/AAAA, addresses get a PTR to their first name; comments and blank lines are
    /// skipped; a bad line is reported with its number.
    #[test]
    fn parses_hosts_syntax() {
        let hosts = Hosts::parse(
            "# comment\n\n127.0.0.1 localhost\n10.0.0.5 db.internal db # primary\n\
             fd00::5 db.internal\n10.0.0.6 DB.internal\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let db = &hosts.names[&b"db.internal"[..]];
        assert_eq!(db.a.as_ref().map(|e| e.count), Some(2));
        assert_eq!(db.aaaa.as_ref().map(|e| e.count), Some(1));
        assert!(hosts.names.contains_key(&b"db"[..]));
        assert!(hosts.names.contains_key(&b"5.0.0.10.in-addr.arpa"[..]));
        assert!(hosts.names.contains_key(&b"1.0.0.127.in-addr.arpa"[..]));
        assert_eq!(
            Hosts::parse("10.0.0.1 ok\nnot-an-ip host\n").unwrap_err().0,
            2
        );
        assert_eq!(Hosts::parse("10.0.0.1\n").unwrap_err().0, 1);
    }
}
