//! The `.consul` answer table: every answer the catalog can give, encoded once per catalog.
//!
//! [`AnswerTable::build`] runs when a new catalog is published, off the request path. It applies
//! the health filter and `filter_tags`, then encodes each instance's records (A, AAAA, the record
//! for ANY, SRV and the SRV target's additional records) into one byte arena per service, and
//! lists, per tag and per type, which instances answer (after Consul's dedup rules). A request
//! then costs a name parse, two hash lookups and a few `memcpy`s into the worker's buffer: no
//! lock, no allocation, no task (DESIGN.md, Performance design).
//!
//! Every precomputed record is self-contained: answer owners are the pointer to the question
//! (0xC00C) and every other name is written out in full, so any subset of instances, in any
//! rotation, can be copied into a response without fixing up compression offsets. Per-request
//! shuffling rotates the instance list (the order within a list is itself shuffled at build).
//!
//! Record construction follows Consul's `agent/dns.go` as summarised in
//! `reference/consul-dns.md` §2; deliberate differences are marked "Deliberate".

use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use foldhash::fast::RandomState;
use rand::seq::SliceRandom;

use crate::config::{DnsConfig, SoaConfig};
use crate::consul::catalog::{Catalog, Health, HealthEntry, Node};
use crate::consul::name::{self, ConsulName, Locality};
use crate::wire::{self, Proto, Query, rcode, rtype};

type Map<V> = HashMap<Box<[u8]>, V, RandomState>;

/// What one request got, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub rcode: u8,
}

/// Every `.consul` answer for one catalog. Immutable; swapped whole when the catalog changes.
#[derive(Debug)]
pub struct AnswerTable {
    /// Lowercase local datacenter.
    datacenter: Box<[u8]>,
    /// One entry per configured domain: the primary first, then the alt domain.
    domains: Vec<DomainAnswers>,
    /// Node answers do not mention the domain, so both domains share them.
    nodes: Arc<Map<NodeAnswers>>,
    limits: Limits,
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    udp_answer_limit: usize,
    a_record_limit: usize,
    enable_truncate: bool,
    node_ttl: u32,
    node_meta_txt: bool,
}

#[derive(Debug)]
struct DomainAnswers {
    /// The zone SOA, owner = this domain, with the serial patched per request.
    soa: Vec<u8>,
    soa_serial_at: usize,
    services: Map<ServiceAnswers>,
}

/// One service's answers under one domain.
#[derive(Debug)]
struct ServiceAnswers {
    arena: Box<[u8]>,
    instances: Box<[Instance]>,
    untagged: Lists,
    tags: Map<Lists>,
}

/// Where an instance's encoded records are in the arena. An empty span is "no such record".
#[derive(Clone, Copy, Debug, Default)]
struct Instance {
    a: Span,
    aaaa: Span,
    any: Span,
    srv: Span,
    /// The SRV target's address and node-meta TXT records, for the additional section.
    srv_extra: Span,
    srv_extra_count: u16,
}

#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// Which instances answer each type, in order, after dedup.
#[derive(Debug, Default)]
struct Lists {
    a: Box<[u32]>,
    aaaa: Box<[u32]>,
    any: Box<[u32]>,
    srv: Box<[u32]>,
}

/// A node's answers: owners are the question name, so they suit every domain.
#[derive(Debug, Default)]
struct NodeAnswers {
    bytes: Box<[u8]>,
    a: Span,
    aaaa: Span,
    txt: Span,
    txt_count: u16,
}

/// Which section a list of instances fills.
#[derive(Clone, Copy)]
enum Kind {
    A,
    Aaaa,
    Any,
    Srv,
}

thread_local! {
    /// Per-thread rotation counter: shuffling without a shared atomic between cores.
    static ROTATION: Cell<u32> = const { Cell::new(0) };
}

// === impl AnswerTable ===

impl AnswerTable {
    /// Encode every answer of `catalog` for `domains` (lowercase dotted without the final dot,
    /// primary first) under the `dns` knobs.
    pub fn build(catalog: &Catalog, domains: &[String], dns: &DnsConfig) -> AnswerTable {
        let datacenter = catalog.datacenter.to_ascii_lowercase();
        let domains = domains
            .iter()
            .map(|domain| DomainAnswers::build(catalog, domain, &datacenter, dns))
            .collect();
        let mut nodes = Map::with_hasher(RandomState::default());
        for node in catalog.nodes.values() {
            nodes.insert(
                lower_key(&node.node),
                NodeAnswers::build(node, dns.node_ttl, dns),
            );
        }
        AnswerTable {
            datacenter: datacenter.into_bytes().into_boxed_slice(),
            domains,
            nodes: Arc::new(nodes),
            limits: Limits {
                udp_answer_limit: dns.udp_answer_limit.min(8),
                a_record_limit: dns.a_record_limit,
                enable_truncate: dns.enable_truncate,
                node_ttl: dns.node_ttl,
                node_meta_txt: dns.enable_additional_node_meta_txt,
            },
        }
    }

    /// A table with no services and no nodes: every name is NXDOMAIN until the first catalog.
    pub fn empty(domains: &[String], dns: &DnsConfig) -> AnswerTable {
        Self::build(&Catalog::default(), domains, dns)
    }

    /// Answer `query`, whose name is `rel` (lowercase dotted, domain stripped) under domain
    /// number `domain` (0 = primary). Writes the whole response into `out`.
    pub fn answer(
        &self,
        query: &Query<'_>,
        rel: &[u8],
        domain: usize,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(zone) = self.domains.get(domain) else {
            return self.nxdomain(query, 0, out);
        };
        // RFC 1034 §4.3.2 and Consul: SOA and NS under the domain answer whatever the name.
        if query.qtype == rtype::SOA {
            return self.soa_answer(query, zone, out);
        }
        if query.qtype == rtype::AXFR {
            wire::error_response(out, query, rcode::NOTIMP);
            return Outcome {
                rcode: rcode::NOTIMP,
            };
        }
        match name::parse(rel, query.qtype) {
            ConsulName::Service {
                service,
                tag,
                locality,
            } if self.is_local(locality) => match zone.services.get(service) {
                Some(answers) => self.service(query, zone, answers, tag, proto, out),
                None => self.nxdomain(query, domain, out),
            },
            ConsulName::Node { node, locality } if self.is_local(locality) => {
                match self.nodes.get(node) {
                    Some(answers) => self.node(query, answers, out),
                    None => self.nxdomain(query, domain, out),
                }
            }
            ConsulName::Addr { hex } => self.addr(query, hex, out, domain),
            _ => self.nxdomain(query, domain, out),
        }
    }

    /// Whether a locality names this datacenter. Other datacenters and peers are NXDOMAIN until
    /// signpost watches them (DESIGN.md: an unknown datacenter is NXDOMAIN at once).
    fn is_local(&self, locality: Locality<'_>) -> bool {
        match locality {
            Locality::Local => true,
            Locality::Datacenter(dc) => dc == &*self.datacenter,
            Locality::Peer(_) => false,
        }
    }

    fn service(
        &self,
        query: &Query<'_>,
        zone: &DomainAnswers,
        answers: &ServiceAnswers,
        tag: Option<&[u8]>,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if answers.instances.is_empty() {
            // Consul: a service with no healthy instance is NXDOMAIN, not NODATA (§0.2).
            return self.nxdomain_in(query, zone, out);
        }
        let lists = match tag {
            None => &answers.untagged,
            Some(tag) => match answers.tags.get(tag) {
                Some(lists) => lists,
                None => return self.nxdomain_in(query, zone, out),
            },
        };
        let (kind, list) = match query.qtype {
            rtype::A => (Kind::A, &lists.a),
            rtype::AAAA => (Kind::Aaaa, &lists.aaaa),
            rtype::SRV => (Kind::Srv, &lists.srv),
            // Consul builds the same records for TXT as for ANY (`reference/consul-dns.md` §2.2).
            rtype::ANY | rtype::TXT => (Kind::Any, &lists.any),
            _ => return self.nodata(query, zone, out),
        };
        if list.is_empty() {
            return self.nodata(query, zone, out);
        }
        self.write_instances(query, answers, kind, list, proto, out);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    /// Copy as many instances as the limits and the client's size allow, rotated.
    fn write_instances(
        &self,
        query: &Query<'_>,
        answers: &ServiceAnswers,
        kind: Kind,
        list: &[u32],
        proto: Proto,
        out: &mut Vec<u8>,
    ) {
        let mut count_cap = list.len();
        if proto == Proto::Udp && query.edns.is_none() {
            // Consul caps non-EDNS UDP answers at udp_answer_limit (at most 8), SRV included.
            count_cap = count_cap.min(self.limits.udp_answer_limit);
        }
        let a_limit = match kind {
            Kind::Srv => 0,
            _ => self.limits.a_record_limit,
        };
        // a_record_limit is a policy (RFC 3484 resolvers), not a cut: it never sets TC.
        let limit = if a_limit > 0 {
            count_cap.min(a_limit)
        } else {
            count_cap
        };
        let cut_by_count = count_cap < list.len() && (a_limit == 0 || count_cap < a_limit);
        let max = query.max_size(proto);
        let start = ROTATION.with(|r| {
            let n = r.get().wrapping_add(1);
            r.set(n);
            n as usize % list.len()
        });
        let rotated = list[start..].iter().chain(&list[..start]);

        wire::begin_response(out, query, rcode::NOERROR, true);
        let mut size = out.len() + wire::opt_len(query);
        let mut taken = 0;
        let mut extra_count = 0u16;
        for &i in rotated.clone().take(limit) {
            let inst = &answers.instances[i as usize];
            let (ans, extra, n) = inst.spans(kind);
            let more = (ans.len + extra.len) as usize;
            if size + more > max {
                break;
            }
            size += more;
            taken += 1;
            extra_count += n;
        }
        for &i in rotated.clone().take(taken) {
            out.extend_from_slice(
                answers.instances[i as usize]
                    .spans(kind)
                    .0
                    .of(&answers.arena),
            );
        }
        for &i in rotated.take(taken) {
            out.extend_from_slice(
                answers.instances[i as usize]
                    .spans(kind)
                    .1
                    .of(&answers.arena),
            );
        }
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, taken as u16, 0, extra_count + opt);
        let cut = taken < limit || cut_by_count;
        if cut && proto == Proto::Udp && self.limits.enable_truncate {
            // Deliberate: Consul leaves TC clear by default; signpost sets it when the answer
            // was cut, so a client that wants everything knows to retry over TCP.
            wire::set_truncated(out);
        }
    }

    fn node(&self, query: &Query<'_>, node: &NodeAnswers, out: &mut Vec<u8>) -> Outcome {
        wire::begin_response(out, query, rcode::NOERROR, true);
        let bytes = &node.bytes;
        let (answer, count, extra_txt) = match query.qtype {
            rtype::A => (node.a, u16::from(node.a.len > 0), true),
            rtype::AAAA => (node.aaaa, u16::from(node.aaaa.len > 0), true),
            rtype::TXT => (node.txt, node.txt_count, false),
            rtype::ANY => {
                // ANY: the address (IPv4 unless the node only has IPv6) and the TXT meta.
                let addr = if node.a.len > 0 { node.a } else { node.aaaa };
                out.extend_from_slice(addr.of(bytes));
                let n = u16::from(addr.len > 0);
                (node.txt, n + node.txt_count, false)
            }
            // Consul: a node asked for a type it has no record of is NOERROR with nothing at all.
            _ => (Span::default(), 0, false),
        };
        out.extend_from_slice(answer.of(bytes));
        let mut additional = 0;
        if extra_txt && self.limits.node_meta_txt && count > 0 {
            out.extend_from_slice(node.txt.of(bytes));
            additional = node.txt_count;
        }
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, count, 0, additional + opt);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    /// `<hex>.addr`: decoded without a catalog lookup; a type that does not match the address
    /// puts the record in the additional section (`reference/consul-dns.md` §2.6).
    fn addr(&self, query: &Query<'_>, hex: &[u8], out: &mut Vec<u8>, domain: usize) -> Outcome {
        let Some(ip) = name::decode_addr(hex) else {
            return self.nxdomain(query, domain, out);
        };
        wire::begin_response(out, query, rcode::NOERROR, true);
        let ttl = self.limits.node_ttl;
        match ip {
            IpAddr::V4(v4) => wire::push_a_qname(out, ttl, v4),
            IpAddr::V6(v6) => wire::push_aaaa_qname(out, ttl, v6),
        }
        let in_answer = matches!(
            (query.qtype, ip),
            (rtype::ANY, _) | (rtype::A, IpAddr::V4(_)) | (rtype::AAAA, IpAddr::V6(_))
        );
        let opt = u16::from(wire::write_opt(out, query, 0));
        if in_answer {
            wire::set_counts(out, 1, 0, opt);
        } else {
            wire::set_counts(out, 0, 0, 1 + opt);
        }
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    fn soa_answer(&self, query: &Query<'_>, zone: &DomainAnswers, out: &mut Vec<u8>) -> Outcome {
        wire::begin_response(out, query, rcode::NOERROR, true);
        zone.push_soa(out);
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, 1, 0, opt);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    /// NXDOMAIN with the SOA of domain number `domain` in the authority section.
    pub fn nxdomain(&self, query: &Query<'_>, domain: usize, out: &mut Vec<u8>) -> Outcome {
        match self.domains.get(domain) {
            Some(zone) => self.nxdomain_in(query, zone, out),
            None => {
                wire::error_response(out, query, rcode::NXDOMAIN);
                Outcome {
                    rcode: rcode::NXDOMAIN,
                }
            }
        }
    }

    fn nxdomain_in(&self, query: &Query<'_>, zone: &DomainAnswers, out: &mut Vec<u8>) -> Outcome {
        negative(query, zone, rcode::NXDOMAIN, out)
    }

    /// RFC 2308 NODATA: NOERROR, no answer, the SOA in the authority section.
    fn nodata(&self, query: &Query<'_>, zone: &DomainAnswers, out: &mut Vec<u8>) -> Outcome {
        negative(query, zone, rcode::NOERROR, out)
    }

    /// Number of services (for tests and status).
    pub fn service_count(&self) -> usize {
        self.domains.first().map_or(0, |d| d.services.len())
    }
}

fn negative(query: &Query<'_>, zone: &DomainAnswers, code: u8, out: &mut Vec<u8>) -> Outcome {
    wire::begin_response(out, query, code, true);
    zone.push_soa(out);
    let opt = u16::from(wire::write_opt(out, query, 0));
    wire::set_counts(out, 0, 1, opt);
    Outcome { rcode: code }
}

// === impl DomainAnswers ===

impl DomainAnswers {
    fn build(catalog: &Catalog, domain: &str, datacenter: &str, dns: &DnsConfig) -> Self {
        let (soa, soa_serial_at) = encode_soa(domain, &dns.soa);
        let mut services = Map::with_hasher(RandomState::default());
        for (name, entries) in &catalog.services {
            let answers = ServiceAnswers::build(name, entries, domain, datacenter, dns);
            // Two registrations whose names differ only in case: Consul's index is
            // case-insensitive, so the first (sorted) one wins, as a lookup would find it.
            services.entry(lower_key(name)).or_insert(answers);
        }
        DomainAnswers {
            soa,
            soa_serial_at,
            services,
        }
    }

    /// Append the SOA with the serial set to the current Unix time, as Consul does.
    fn push_soa(&self, out: &mut Vec<u8>) {
        let at = out.len() + self.soa_serial_at;
        out.extend_from_slice(&self.soa);
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        out[at..at + 4].copy_from_slice(&serial.to_be_bytes());
    }
}

/// The zone SOA: `ns.<domain>` / `hostmaster.<domain>`, TTL = min_ttl
/// (`reference/consul-dns.md` §1.6). Returns the bytes and where the serial is.
fn encode_soa(domain: &str, soa: &SoaConfig) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    wire::push_name(&mut out, domain);
    let at = wire::push_rr_header(&mut out, rtype::SOA, soa.min_ttl);
    wire::push_name(&mut out, &format!("ns.{domain}"));
    wire::push_name(&mut out, &format!("hostmaster.{domain}"));
    let serial_at = out.len();
    for v in [0, soa.refresh, soa.retry, soa.expire, soa.min_ttl] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    wire::end_rdata(&mut out, at);
    (out, serial_at)
}

// === impl ServiceAnswers ===

impl ServiceAnswers {
    fn build(
        service: &str,
        entries: &[HealthEntry],
        domain: &str,
        datacenter: &str,
        dns: &DnsConfig,
    ) -> Self {
        let ttl = dns.service_ttl.lookup(&service.to_ascii_lowercase());
        let mut serving: Vec<&HealthEntry> =
            entries.iter().filter(|e| answers_dns(e, dns)).collect();
        // Consul shuffles per request; signpost shuffles once here and rotates per request.
        serving.shuffle(&mut rand::rng());

        let mut arena = Vec::new();
        let mut instances = Vec::with_capacity(serving.len());
        for e in &serving {
            let enc = InstanceEncoder {
                entry: e,
                ttl,
                domain,
                datacenter,
                node_meta_txt: dns.enable_additional_node_meta_txt,
            };
            instances.push(enc.encode(&mut arena));
        }
        let all: Vec<u32> = (0..serving.len() as u32).collect();
        let untagged = Lists::build(&serving, &instances, &all);
        let mut by_tag: Map<Vec<u32>> = Map::with_hasher(RandomState::default());
        for (i, e) in serving.iter().enumerate() {
            for tag in &e.service.tags {
                let list = by_tag.entry(lower_key(tag)).or_default();
                if list.last() != Some(&(i as u32)) {
                    list.push(i as u32);
                }
            }
        }
        let tags = by_tag
            .into_iter()
            .map(|(tag, members)| (tag, Lists::build(&serving, &instances, &members)))
            .collect::<HashMap<_, _, RandomState>>();
        ServiceAnswers {
            arena: arena.into_boxed_slice(),
            instances: instances.into_boxed_slice(),
            untagged,
            tags,
        }
    }
}

/// Consul's default health filter (drop any instance with a critical check; with
/// `only_passing`, any check not passing) and signpost's `filter_tags`.
pub fn answers_dns(entry: &HealthEntry, dns: &DnsConfig) -> bool {
    let health_ok = match entry.health() {
        Health::Passing => true,
        Health::Warning => !dns.only_passing,
        Health::Critical => false,
    };
    health_ok && !entry.has_any_tag(&dns.filter_tags)
}

// === impl Lists ===

impl Lists {
    /// The per-type lists for `members` (indices into `instances`), with Consul's dedup:
    /// A/AAAA/ANY by record content (same IP once), SRV by node + address + port.
    fn build(entries: &[&HealthEntry], instances: &[Instance], members: &[u32]) -> Lists {
        let pick = |span: fn(&Instance) -> Span, key: &dyn Fn(u32) -> String| {
            let mut seen = std::collections::HashSet::new();
            members
                .iter()
                .copied()
                .filter(|&i| span(&instances[i as usize]).len > 0 && seen.insert(key(i)))
                .collect::<Box<[u32]>>()
        };
        let a = pick(|i| i.a, &|i| {
            entries[i as usize].address().to_owned() + "/a"
        });
        let aaaa = pick(|i| i.aaaa, &|i| {
            entries[i as usize].address().to_owned() + "/aaaa"
        });
        let any = pick(|i| i.any, &|i| entries[i as usize].address().to_owned());
        let srv = pick(|i| i.srv, &|i| {
            let e = entries[i as usize];
            format!("{}:{}:{}", e.node.node, e.address(), e.service.port)
        });
        Lists { a, aaaa, any, srv }
    }
}

// === impl Instance ===

impl Instance {
    /// The answer span, the additional span and the number of additional records for `kind`.
    fn spans(&self, kind: Kind) -> (Span, Span, u16) {
        match kind {
            Kind::A => (self.a, Span::default(), 0),
            Kind::Aaaa => (self.aaaa, Span::default(), 0),
            Kind::Any => (self.any, Span::default(), 0),
            Kind::Srv => (self.srv, self.srv_extra, self.srv_extra_count),
        }
    }
}

impl Span {
    fn of(self, arena: &[u8]) -> &[u8] {
        &arena[self.start as usize..(self.start + self.len) as usize]
    }
}

/// Encodes one instance's records into the service's arena.
struct InstanceEncoder<'a> {
    entry: &'a HealthEntry,
    ttl: u32,
    domain: &'a str,
    datacenter: &'a str,
    node_meta_txt: bool,
}

/// How an address answers (`reference/consul-dns.md` §2.2).
enum Target {
    Ip(IpAddr),
    Host(String),
}

impl InstanceEncoder<'_> {
    fn encode(&self, arena: &mut Vec<u8>) -> Instance {
        let mut inst = Instance {
            a: self.record(arena, self.select(Family::V4)),
            aaaa: self.record(arena, self.select(Family::V6)),
            any: self.record(arena, self.select(Family::Any)),
            ..Instance::default()
        };
        let start = arena.len();
        self.push_srv(arena);
        inst.srv = span(start, arena.len());
        let start = arena.len();
        inst.srv_extra_count = self.push_srv_extra(arena);
        inst.srv_extra = span(start, arena.len());
        inst
    }

    /// Address selection (`TranslateServiceAddress`, §2.1): a tagged `lan_ipv6`/`lan_ipv4` of
    /// the accepted family first, then the plain address if its family fits (or it is a host).
    fn select(&self, family: Family) -> Option<Target> {
        let e = self.entry;
        let (default, v4, v6) = if e.service.address.is_empty() {
            let tagged = |k: &str| e.node.tagged_addresses.get(k).cloned();
            (
                e.node.address.clone(),
                tagged("lan_ipv4"),
                tagged("lan_ipv6"),
            )
        } else {
            let tagged = |k: &str| e.service.tagged_addresses.get(k).map(|a| a.address.clone());
            (
                e.service.address.clone(),
                tagged("lan_ipv4"),
                tagged("lan_ipv6"),
            )
        };
        let parse = |s: &str| s.parse::<IpAddr>().ok();
        if family != Family::V4
            && let Some(ip) = v6.as_deref().and_then(parse)
        {
            return Some(Target::Ip(ip));
        }
        if family != Family::V6
            && let Some(ip) = v4.as_deref().and_then(parse)
        {
            return Some(Target::Ip(ip));
        }
        if default.is_empty() {
            return None;
        }
        match (parse(&default), family) {
            (Some(ip @ IpAddr::V4(_)), Family::V4 | Family::Any) => Some(Target::Ip(ip)),
            (Some(ip @ IpAddr::V6(_)), Family::V6 | Family::Any) => Some(Target::Ip(ip)),
            (Some(_), _) => None,
            (None, _) => Some(Target::Host(default)),
        }
    }

    /// An A/AAAA (or CNAME for a host name) owned by the question name.
    fn record(&self, arena: &mut Vec<u8>, target: Option<Target>) -> Span {
        let start = arena.len();
        match target {
            Some(Target::Ip(IpAddr::V4(v4))) => wire::push_a_qname(arena, self.ttl, v4),
            Some(Target::Ip(IpAddr::V6(v6))) => wire::push_aaaa_qname(arena, self.ttl, v6),
            Some(Target::Host(host)) => {
                arena.extend_from_slice(&wire::OWNER_QNAME);
                let at = wire::push_rr_header(arena, rtype::CNAME, self.ttl);
                wire::push_name(arena, &host);
                wire::end_rdata(arena, at);
            }
            None => {}
        }
        span(start, arena.len())
    }

    fn node_dc(&self) -> &str {
        if self.entry.node.datacenter.is_empty() {
            self.datacenter
        } else {
            &self.entry.node.datacenter
        }
    }

    /// The SRV target: `<hex>.addr.<dc>.<domain>` for a service IP, `<node>.node.<dc>.<domain>`
    /// when the instance uses its node's untranslated address, the host name itself otherwise.
    fn srv_target(&self) -> (String, Option<IpAddr>) {
        let e = self.entry;
        let dc = self.node_dc();
        match self.select(Family::Any) {
            Some(Target::Ip(ip))
                if e.service.address.is_empty() && ip.to_string() == e.node.address =>
            {
                (
                    format!("{}.node.{dc}.{}", e.node.node, self.domain),
                    Some(ip),
                )
            }
            Some(Target::Ip(ip)) => (
                format!("{}.addr.{dc}.{}", hex_ip(ip), self.domain),
                Some(ip),
            ),
            Some(Target::Host(host)) => (host, None),
            None => (format!("{}.node.{dc}.{}", e.node.node, self.domain), None),
        }
    }

    fn push_srv(&self, arena: &mut Vec<u8>) {
        let e = self.entry;
        let weight = srv_weight(e);
        arena.extend_from_slice(&wire::OWNER_QNAME);
        let at = wire::push_rr_header(arena, rtype::SRV, self.ttl);
        arena.extend_from_slice(&1u16.to_be_bytes()); // Consul: priority is always 1
        arena.extend_from_slice(&weight.to_be_bytes());
        arena.extend_from_slice(&e.service.port.to_be_bytes());
        // RFC 2782: the target is not compressed.
        wire::push_name(arena, &self.srv_target().0);
        wire::end_rdata(arena, at);
    }

    /// The target's A/AAAA and, with `enable_additional_node_meta_txt`, one TXT per node-meta
    /// key owned by `<node>.node.<dc>.<domain>` (§2.4). Returns the number of records.
    fn push_srv_extra(&self, arena: &mut Vec<u8>) -> u16 {
        let mut count = 0;
        let (target, ip) = self.srv_target();
        if let Some(ip) = ip {
            wire::push_name(arena, &target);
            let (rt, bytes): (u16, Vec<u8>) = match ip {
                IpAddr::V4(v4) => (rtype::A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (rtype::AAAA, v6.octets().to_vec()),
            };
            let at = wire::push_rr_header(arena, rt, self.ttl);
            arena.extend_from_slice(&bytes);
            wire::end_rdata(arena, at);
            count += 1;
        }
        if self.node_meta_txt {
            let owner = format!(
                "{}.node.{}.{}",
                self.entry.node.node,
                self.node_dc(),
                self.domain
            );
            for (key, value) in &self.entry.node.meta {
                wire::push_name(arena, &owner);
                let at = wire::push_rr_header(arena, rtype::TXT, self.ttl);
                wire::push_txt_rdata(arena, encode_meta_txt(key, value).as_bytes());
                wire::end_rdata(arena, at);
                count += 1;
            }
        }
        count
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Any,
}

// === impl NodeAnswers ===

impl NodeAnswers {
    fn build(node: &Node, ttl: u32, _dns: &DnsConfig) -> NodeAnswers {
        let entry = HealthEntry {
            node: node.clone(),
            service: Default::default(),
            checks: Vec::new(),
        };
        let enc = InstanceEncoder {
            entry: &entry,
            ttl,
            domain: "",
            datacenter: "",
            node_meta_txt: false,
        };
        let mut bytes = Vec::new();
        let a = enc.record(&mut bytes, enc.select(Family::V4));
        let aaaa = enc.record(&mut bytes, enc.select(Family::V6));
        let start = bytes.len();
        for (key, value) in &node.meta {
            bytes.extend_from_slice(&wire::OWNER_QNAME);
            let at = wire::push_rr_header(&mut bytes, rtype::TXT, ttl);
            wire::push_txt_rdata(&mut bytes, encode_meta_txt(key, value).as_bytes());
            wire::end_rdata(&mut bytes, at);
        }
        NodeAnswers {
            a,
            aaaa,
            txt: span(start, bytes.len()),
            txt_count: node.meta.len() as u16,
            bytes: bytes.into_boxed_slice(),
        }
    }
}

/// The SRV target Consul would give `entry` under `domain` (lowercase dotted, no final dot):
/// the same name the SRV answer carries, for the SRV data document.
pub fn srv_target(entry: &HealthEntry, domain: &str, datacenter: &str) -> String {
    let enc = InstanceEncoder {
        entry,
        ttl: 0,
        domain,
        datacenter,
        node_meta_txt: false,
    };
    let mut target = enc.srv_target().0;
    target.push('.');
    target
}

/// The SRV weight Consul advertises for `entry`: `Weights.Passing` or `Weights.Warning` by its
/// check state, 1 when the registration has no weights (§2.4).
pub fn srv_weight(entry: &HealthEntry) -> u16 {
    match (entry.service.weights, entry.health()) {
        (None, _) => 1,
        (Some(w), Health::Passing) => w.passing,
        (Some(w), _) => w.warning,
    }
}

/// Node meta as TXT: a key starting with `rfc1035-` gives the bare value; any other pair is
/// RFC 1464 `key=value` with backquotes doubled, `=` in the key escaped with a backquote, and
/// a leading or trailing space of the key escaped (`reference/consul-dns.md` §2.5, case 65).
pub fn encode_meta_txt(key: &str, value: &str) -> String {
    if key.len() >= 8 && key[..8].eq_ignore_ascii_case("rfc1035-") {
        return value.to_owned();
    }
    let mut out = String::with_capacity(key.len() + value.len() + 1);
    let last = key.len().saturating_sub(1);
    for (i, c) in key.char_indices() {
        match c {
            '`' => out.push_str("``"),
            '=' => out.push_str("`="),
            ' ' if i == 0 || i == last => out.push_str("` "),
            c => out.push(c),
        }
    }
    out.push('=');
    out.push_str(&value.replace('`', "``"));
    out
}

/// An address as `.addr` hex: 8 lowercase digits for IPv4, 32 for IPv6.
pub fn hex_ip(ip: IpAddr) -> String {
    use std::fmt::Write;
    let octets: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn lower_key(s: &str) -> Box<[u8]> {
    s.to_ascii_lowercase().into_bytes().into_boxed_slice()
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        len: (end - start) as u32,
    }
}

#[cfg(test)]
pub(crate) mod tests;
