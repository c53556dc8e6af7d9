//! Local data: RFC 1035 master files (`zones.dir`) and a hosts file (`zones.hosts`, [`hosts`])
//! served authoritatively, reloaded when they change ([`reload`]).
//!
//! Files are parsed with hickory-proto's zone parser and every RRset is encoded once at load
//! time, so an answer is a copy like the `.consul` path. Answers follow RFC 1034 §4.3.2: the
//! RRset when it exists, a CNAME followed inside the zone, NODATA with the SOA when the name
//! exists without the type (empty non-terminals included), NXDOMAIN with the SOA otherwise.
//! Wildcards and delegations are not interpreted (a static zone here is local data, not a
//! parent zone).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use hickory_proto::rr::{LowerName, Name, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_proto::serialize::txt::Parser;

use crate::config::ZonesConfig;
use crate::consul::answer::Outcome;
use crate::wire::{self, Query, rcode};

pub mod hosts;
pub mod reload;

pub use hosts::Hosts;
pub use reload::spawn_reload;

/// A zone file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ZoneError {
    pub path: PathBuf,
    pub message: String,
}

/// Every static zone, loaded from `zones.dir`, and the hosts file.
#[derive(Debug, Default)]
pub struct Zones {
    zones: Vec<Zone>,
    hosts: Hosts,
}

/// One zone: its encoded RRsets by (lowercase name, type).
#[derive(Debug)]
pub struct Zone {
    /// Lowercase dotted origin without the final dot (`example.org`).
    pub origin: String,
    rrsets: HashMap<(LowerName, RecordType), Encoded>,
    /// Every owner name and every name between an owner and the origin.
    names: HashSet<LowerName>,
    soa: Encoded,
}

/// Wire bytes of an RRset and how many records it holds.
#[derive(Clone, Debug, Default)]
struct Encoded {
    bytes: Vec<u8>,
    count: u16,
    /// For a CNAME: where it points.
    target: Option<LowerName>,
}

/// How many CNAMEs one answer follows inside a zone.
const MAX_CNAME_CHAIN: usize = 8;

// === impl Zones ===

impl Zones {
    /// Load `zones.dir` and `zones.hosts` (either may be unset).
    pub fn load(config: &ZonesConfig) -> Result<Zones, ZoneError> {
        let mut zones = match &config.dir {
            Some(dir) => Zones::load_dir(dir)?,
            None => Zones::default(),
        };
        if let Some(path) = &config.hosts {
            zones.hosts = Hosts::load(path)?;
        }
        Ok(zones)
    }

    /// The hosts-file data.
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// Answer `query` for `name` (dotted lowercase, no final dot) from the hosts file, if it
    /// lists the name.
    pub fn answer_hosts(
        &self,
        name: &[u8],
        query: &Query<'_>,
        out: &mut Vec<u8>,
    ) -> Option<Outcome> {
        if self.hosts.is_empty() {
            return None;
        }
        self.hosts.answer(name, query, out)
    }

    /// Load every `*.zone` file in `dir`. The origin is the file's `$ORIGIN` or SOA owner, else
    /// the file name without `.zone`.
    pub fn load_dir(dir: &Path) -> Result<Zones, ZoneError> {
        let err = |message: String| ZoneError {
            path: dir.to_path_buf(),
            message,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "zone"))
            .collect();
        files.sort();
        let zones = files
            .iter()
            .map(|p| Zone::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Zones {
            zones,
            hosts: Hosts::default(),
        })
    }

    /// The zones, for the router.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Answer `query` from zone number `index`.
    pub fn answer(&self, index: usize, query: &Query<'_>, out: &mut Vec<u8>) -> Outcome {
        match self.zones.get(index) {
            Some(zone) => zone.answer(query, out),
            None => {
                wire::error_response(out, query, rcode::REFUSED);
                Outcome {
                    rcode: rcode::REFUSED,
                }
            }
        }
    }
}

// === impl Zone ===

impl Zone {
    /// Parse one master file.
    pub fn load(path: &Path) -> Result<Zone, ZoneError> {
        let err = |message: String| ZoneError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let origin = Name::from_ascii(stem).ok().map(|mut n| {
            n.set_fqdn(true);
            n
        });
        let (origin, records) =
            Parser::new(text.as_str(), Some(path.to_path_buf()), origin.clone())
                .parse()
                .map_err(|e| match failing_line(&text, path, origin) {
                    Some(line) => err(format!("line {line}: {e}")),
                    None => err(e.to_string()),
                })?;
        Self::from_records(&origin, records).map_err(err)
    }

    fn from_records(origin: &Name, records: BTreeMap<RrKey, RecordSet>) -> Result<Zone, String> {
        let origin_lower = LowerName::new(origin);
        let mut rrsets = HashMap::new();
        let mut names = HashSet::new();
        for (key, set) in &records {
            if !origin_lower.zone_of(&key.name) {
                return Err(format!("{} is outside the zone {origin}", key.name));
            }
            let mut name = key.name.clone();
            while names.insert(name.clone()) && name != origin_lower {
                name = name.base_name();
            }
            rrsets.insert((key.name.clone(), key.record_type), encode(set)?);
        }
        let soa = rrsets
            .get(&(origin_lower.clone(), RecordType::SOA))
            .cloned()
            .ok_or_else(|| format!("no SOA record at the origin {origin}"))?;
        Ok(Zone {
            origin: origin.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
            rrsets,
            names,
            soa,
        })
    }

    fn answer(&self, query: &Query<'_>, out: &mut Vec<u8>) -> Outcome {
        let Some(mut name) = lower_name(query.qname) else {
            return negative(query, &self.soa, rcode::NXDOMAIN, out);
        };
        let qtype = RecordType::from(query.qtype);
        wire::begin_response(out, query, rcode::NOERROR, true);
        let mut answers = 0u16;
        for _ in 0..MAX_CNAME_CHAIN {
            if let Some(set) = self.rrsets.get(&(name.clone(), qtype)) {
                out.extend_from_slice(&set.bytes);
                answers += set.count;
                break;
            }
            // RFC 1034 §4.3.2 step 3.a: a CNAME at the name is returned and followed.
            match self.rrsets.get(&(name.clone(), RecordType::CNAME)) {
                Some(cname) if qtype != RecordType::CNAME => {
                    out.extend_from_slice(&cname.bytes);
                    answers += cname.count;
                    match &cname.target {
                        Some(t) if self.names.contains(t) => name = t.clone(),
                        _ => break,
                    }
                }
                _ => {
                    if answers == 0 {
                        let code = if self.names.contains(&name) {
                            rcode::NOERROR
                        } else {
                            rcode::NXDOMAIN
                        };
                        return negative(query, &self.soa, code, out);
                    }
                    break;
                }
            }
        }
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, answers, 0, opt);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }
}

/// The line of `text` where parsing first fails: hickory's parser does not say, so find the
/// shortest failing prefix that ends outside parentheses (RFC 1035 §5.1: a record may span
/// lines inside `( )`) by bisection. Only whole-record prefixes are compared, and once a bad
/// record is in a prefix every longer one fails too, so the search is sound; it costs a few
/// parses, on the error path only.
fn failing_line(text: &str, path: &Path, origin: Option<Name>) -> Option<usize> {
    let mut ends = Vec::new(); // (line number, byte offset after the line)
    let mut depth = 0i32;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        offset += line.len();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ';' if !quoted => break,
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth -= 1,
                _ => {}
            }
        }
        if depth <= 0 {
            depth = 0;
            ends.push((index + 1, offset));
        }
    }
    let fails = |end: usize| {
        Parser::new(&text[..end], Some(path.to_path_buf()), origin.clone())
            .parse()
            .is_err()
    };
    let (mut lo, mut hi) = (0, ends.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(ends[mid].1) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    ends.get(lo).map(|(line, _)| *line)
}

/// NXDOMAIN or NODATA with the zone's SOA in the authority section (RFC 2308 §2).
fn negative(query: &Query<'_>, soa: &Encoded, code: u8, out: &mut Vec<u8>) -> Outcome {
    wire::begin_response(out, query, code, true);
    out.extend_from_slice(&soa.bytes);
    let opt = u16::from(wire::write_opt(out, query, 0));
    wire::set_counts(out, 0, soa.count, opt);
    Outcome { rcode: code }
}

fn encode(set: &RecordSet) -> Result<Encoded, String> {
    encode_records(set.records_without_rrsigs())
}

fn encode_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<Encoded, String> {
    let mut out = Encoded::default();
    for record in records {
        // Canonical form writes every name in full: the record is copied into responses at
        // other offsets, so a compression pointer into its own buffer would point elsewhere.
        let mut encoder = BinEncoder::new(&mut out.bytes);
        encoder.set_canonical_form(true);
        record.emit(&mut encoder).map_err(|e| e.to_string())?;
        out.count += 1;
        if let hickory_proto::rr::RData::CNAME(target) = &record.data {
            out.target = Some(LowerName::new(&target.0));
        }
    }
    Ok(out)
}

fn lower_name(wire_name: &[u8]) -> Option<LowerName> {
    let mut buf = [0u8; 256];
    let dotted = wire::dotted_lower(wire_name, &mut buf)?;
    let text = std::str::from_utf8(dotted).ok()?;
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(LowerName::new(&name))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query as HQuery};

    use super::*;

    const ZONE: &str = "$ORIGIN example.org.\n$TTL 300\n\
        @ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
        @ IN NS ns1\n\
        ns1 IN A 192.0.2.1\n\
        www IN CNAME web\n\
        web IN A 192.0.2.10\n\
        out IN CNAME elsewhere.example.net.\n\
        a.b IN TXT \"deep\"\n";

    fn ask(zone: &Zone, name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(HQuery::query(Name::from_str(name).unwrap(), rtype));
        let bytes = m.to_vec().unwrap();
        let q = Query::parse(&bytes).unwrap();
        let mut out = Vec::new();
        zone.answer(&q, &mut out);
        Message::from_vec(&out).unwrap()
    }

    fn zone() -> Zone {
        let origin = Name::from_str("example.org.").unwrap();
        let (origin, records) = Parser::new(ZONE, None, Some(origin)).parse().unwrap();
        Zone::from_records(&origin, records).unwrap()
    }

    /// CNAMEs are followed inside the zone; NODATA and NXDOMAIN carry the SOA.
    #[test]
    fn answers_like_an_authority() {
        let z = zone();
        let m = ask(&z, "www.example.org.", RecordType::A);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 2);
        assert_eq!(
            m.answers[1].to_string().split_whitespace().last(),
            Some("192.0.2.10")
        );
        let m = ask(&z, "out.example.org.", RecordType::A);
        assert_eq!(
            m.answers.len(),
            1,
            "a CNAME out of the zone is left to the client"
        );
        let m = ask(&z, "web.example.org.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code.low(), 0);
        assert_eq!(m.authorities.len(), 1);
        let m = ask(&z, "b.example.org.", RecordType::A);
        assert_eq!(
            m.metadata.response_code.low(),
            0,
            "empty non-terminal is NODATA"
        );
        let m = ask(&z, "nope.example.org.", RecordType::A);
        assert_eq!(m.metadata.response_code.low(), 3);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    }

    /// A broken master file is reported with its path and the line (what the reload task
    /// logs while it keeps the previous data).
    #[test]
    fn broken_zone_error_names_path_and_line() {
        let dir = std::env::temp_dir().join(format!("signpost-zone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broken.test.zone");
        std::fs::write(&path, "$ORIGIN broken.test.\n@ 60 IN SOA a b (\n 1 2 3 4 5 )\nok IN A 192.0.2.1\nwww IN A\nz IN A 192.0.2.2\n").unwrap();
        let err = Zone::load(&path).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("broken.test.zone"), "{err}");
        assert!(err.contains("line 5:"), "{err}");
    }

    /// A zone without an SOA is refused at load time with a message naming it.
    #[test]
    fn zone_without_soa_is_an_error() {
        let origin = Name::from_str("x.test.").unwrap();
        let (origin, records) = Parser::new("a 60 IN A 192.0.2.1\n", None, Some(origin))
            .parse()
            .unwrap();
        let err = Zone::from_records(&origin, records).unwrap_err();
        assert!(err.contains("no SOA"), "{err}");
    }
}
