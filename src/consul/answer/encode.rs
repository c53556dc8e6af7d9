//! Build time: turning catalog entries into encoded records (`reference/consul-dns.md` §2).
//!
//! An [`AnswerSet`] is the answers of one set of instances (a service, or a prepared query):
//! each instance's records for A, AAAA, ANY and SRV in one arena, and per tag and type the list
//! of instances that answer, after Consul's dedup and CNAME rules.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use rand::seq::SliceRandom;

use crate::config::DnsConfig;
use crate::consul::catalog::{Catalog, Health, HealthEntry, Node};
use crate::consul::name::{self, ConsulName, Locality};
use crate::wire::{self, rtype};

/// Keys are shared (`Arc`), so that an update copies a map of thousands of names without
/// copying the names.
pub(super) type Map<V> = HashMap<Arc<[u8]>, V, RandomState>;

/// How deep host names under the Consul domain are followed (Consul: 3, "Infinite recursion
/// detected" beyond).
const MAX_DEPTH: u8 = 3;

/// Records of one kind for one instance: the answer part and the additional part.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Records {
    pub(super) answer: Span,
    pub(super) answer_count: u16,
    pub(super) extra: Span,
    pub(super) extra_count: u16,
    /// The answer is a CNAME (a host name instance), not an address.
    pub(super) cname: bool,
}

/// Where bytes are in an arena.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) len: u32,
}

/// An instance's records per question type.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Instance {
    pub(super) a: Records,
    pub(super) aaaa: Records,
    pub(super) any: Records,
    pub(super) srv: Records,
}

/// Which records a question type wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    A,
    Aaaa,
    Any,
    Srv,
}

/// Which instances answer each type, in order, after dedup.
#[derive(Debug, Default)]
pub(super) struct Lists {
    pub(super) a: Box<[u32]>,
    pub(super) aaaa: Box<[u32]>,
    pub(super) any: Box<[u32]>,
    pub(super) srv: Box<[u32]>,
}

/// The answers of one set of instances under one domain.
#[derive(Debug, Default)]
pub(super) struct AnswerSet {
    pub(super) arena: Box<[u8]>,
    pub(super) instances: Box<[Instance]>,
    pub(super) untagged: Lists,
    pub(super) tags: Map<Lists>,
}

/// One service's entries in the catalog.
type Entries<'a> = &'a Arc<[HealthEntry]>;
/// Lowercase service name → the entries of every spelling of it.
type Folded<'a> = HashMap<Cow<'a, str>, Vec<Entries<'a>>, RandomState>;

/// What the encoders need to know about the whole catalog: the services by lowercase name and
/// the nodes, to follow host names inside the Consul domain. Cheap to make: the instances DNS
/// may answer are filtered per service on demand, so that an incremental update of the table
/// costs in proportion to the services that changed, not to the catalog.
pub(super) struct Context<'a> {
    pub(super) datacenter: &'a str,
    /// Every Consul domain (lowercase dotted, no final dot), to recognise internal names.
    pub(super) domains: &'a [String],
    /// The domain the answers are for.
    pub(super) domain: &'a str,
    pub(super) dns: &'a DnsConfig,
    /// Lowercase service name → its entries under every spelling (Consul's index is
    /// case-insensitive), in catalog order; `None` when every name is lowercase already (the
    /// usual case), and the catalog's own map serves as the index without a copy.
    folded: Option<Folded<'a>>,
    catalog: &'a Catalog,
    /// Lowercase node name → node, made on first use (only host-name chains need it).
    nodes: OnceCell<HashMap<String, &'a Arc<Node>, RandomState>>,
}

// === impl Context ===

impl<'a> Context<'a> {
    pub(super) fn new(
        catalog: &'a Catalog,
        datacenter: &'a str,
        domains: &'a [String],
        domain: &'a str,
        dns: &'a DnsConfig,
    ) -> Context<'a> {
        let upper = |name: &String| name.bytes().any(|b| b.is_ascii_uppercase());
        let folded = catalog.services.keys().any(upper).then(|| {
            let mut services: Folded<'a> =
                HashMap::with_capacity_and_hasher(catalog.services.len(), RandomState::default());
            for (name, entries) in &catalog.services {
                let key = if upper(name) {
                    Cow::Owned(name.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(name.as_str())
                };
                services.entry(key).or_default().push(entries);
            }
            services
        });
        Context {
            datacenter,
            domains,
            domain,
            dns,
            folded,
            catalog,
            nodes: OnceCell::new(),
        }
    }

    /// Every instance of `service` (lowercase), whatever its health.
    pub(super) fn catalog_entries(
        &self,
        service: &str,
    ) -> impl Iterator<Item = &'a HealthEntry> + '_ {
        let (plain, folded): (Option<Entries<'a>>, &[Entries<'a>]) = match &self.folded {
            Some(map) => (None, map.get(service).map_or(&[][..], Vec::as_slice)),
            None => (self.catalog.services.get(service), &[]),
        };
        plain
            .into_iter()
            .chain(folded.iter().copied())
            .flat_map(|entries| entries.iter())
    }

    /// The instances DNS may answer for `service` (lowercase).
    pub(super) fn serving(&self, service: &str) -> Vec<&'a HealthEntry> {
        self.catalog_entries(service)
            .filter(|e| answers_dns(e, self.dns))
            .collect()
    }

    /// Whether the catalog has `service` (lowercase) under any spelling.
    pub(super) fn has_service(&self, service: &str) -> bool {
        match &self.folded {
            Some(map) => map.contains_key(service),
            None => self.catalog.services.contains_key(service),
        }
    }

    /// The lowercase names of every service, once each.
    pub(super) fn service_keys(&self) -> impl Iterator<Item = &str> + '_ {
        let folded = self
            .folded
            .iter()
            .flat_map(|map| map.keys().map(|k| k.as_ref()));
        let plain = self.folded.is_none().then(|| self.catalog.services.keys());
        folded.chain(plain.into_iter().flatten().map(String::as_str))
    }

    fn node(&self, lower: &str) -> Option<&'a Arc<Node>> {
        self.nodes
            .get_or_init(|| {
                self.catalog
                    .nodes
                    .values()
                    .map(|n| (n.node.to_ascii_lowercase(), n))
                    .collect()
            })
            .get(lower)
            .copied()
    }

    /// `name` with one of the Consul domains stripped, if it is under one.
    fn internal<'n>(&self, name: &'n str) -> Option<&'n str> {
        self.domains.iter().find_map(|d| {
            if name == d {
                Some("")
            } else {
                name.strip_suffix(d.as_str())?.strip_suffix('.')
            }
        })
    }

    /// Records for `host` (lowercase, no final dot) resolved inside the Consul zone, owned by
    /// `host`, as Consul's internal ANY lookup gives them (§2.2). Empty for outside names:
    /// the client's resolver follows those.
    fn chain(&self, host: &str, ttl: u32, depth: u8, out: &mut Vec<u8>) -> u16 {
        if depth >= MAX_DEPTH {
            tracing::debug!(host, "host name chain too deep inside the Consul zone");
            return 0;
        }
        let Some(rel) = self.internal(host) else {
            return 0;
        };
        let local = |l: Locality<'_>| match l {
            Locality::Local => true,
            Locality::Datacenter(dc) => dc == self.datacenter.as_bytes(),
            Locality::Peer(_) => false,
        };
        let targets: Vec<Target> = match name::parse(rel.as_bytes(), rtype::ANY) {
            ConsulName::Service {
                service,
                tag,
                locality,
            } if local(locality) => {
                let service = String::from_utf8_lossy(service);
                self.serving(&service)
                    .iter()
                    .filter(|e| tag.is_none_or(|t| has_tag(e, t)))
                    .filter_map(|e| select(e, Family::Any, self.domains))
                    .collect()
            }
            ConsulName::Node { node, locality } if local(locality) => {
                let node = String::from_utf8_lossy(node);
                self.node(node.as_ref())
                    .and_then(|n| select(&node_entry(n), Family::Any, self.domains))
                    .into_iter()
                    .collect()
            }
            ConsulName::Addr { hex } => {
                name::decode_addr(hex).map(Target::Ip).into_iter().collect()
            }
            _ => Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut count = 0;
        let has_ip = targets.iter().any(|t| matches!(t, Target::Ip(_)));
        for target in targets {
            match target {
                Target::Ip(ip) if seen.insert(ip) => {
                    push_address(out, host, ip, ttl);
                    count += 1;
                }
                // Only the first chain, and only when no instance gave an address (§2.3).
                Target::Host(next) if !has_ip && count == 0 => {
                    wire::push_name(out, host);
                    let at = wire::push_rr_header(out, rtype::CNAME, ttl);
                    wire::push_name(out, &next);
                    wire::end_rdata(out, at);
                    count += 1 + self.chain(&next, ttl, depth + 1, out);
                }
                _ => {}
            }
        }
        count
    }
}

// === impl AnswerSet ===

impl AnswerSet {
    /// Encode `entries` (already filtered), shuffled once; per-tag lists when `by_tag`.
    pub(super) fn build(
        cx: &Context<'_>,
        entries: &[&HealthEntry],
        ttl: u32,
        by_tag: bool,
    ) -> AnswerSet {
        let mut serving = entries.to_vec();
        // Consul shuffles per request; signpost shuffles once here and rotates per request.
        serving.shuffle(&mut rand::rng());
        let mut arena = Vec::new();
        let instances: Vec<Instance> = serving
            .iter()
            .map(|e| InstanceEncoder { cx, entry: e, ttl }.encode(&mut arena))
            .collect();
        let all: Vec<u32> = (0..serving.len() as u32).collect();
        let untagged = Lists::build(&serving, &instances, &all);
        let mut tags = Map::with_hasher(RandomState::default());
        if by_tag {
            let mut members: BTreeMap<Arc<[u8]>, Vec<u32>> = BTreeMap::new();
            for (i, e) in serving.iter().enumerate() {
                for tag in &e.service.tags {
                    let list = members.entry(lower_key(tag)).or_default();
                    if list.last() != Some(&(i as u32)) {
                        list.push(i as u32);
                    }
                }
            }
            for (tag, list) in members {
                tags.insert(tag, Lists::build(&serving, &instances, &list));
            }
        }
        AnswerSet {
            arena: arena.into_boxed_slice(),
            instances: instances.into_boxed_slice(),
            untagged,
            tags,
        }
    }
}

// === impl Lists ===

impl Lists {
    /// The per-type lists for `members`, with Consul's rules (§2.3, §2.4): A/AAAA/ANY keep one
    /// record per address, and a host name instance (a CNAME) answers only when no instance
    /// has an address, and then only the first; SRV keeps one per node + address + port.
    fn build(entries: &[&HealthEntry], instances: &[Instance], members: &[u32]) -> Lists {
        let addresses = |kind: Kind| {
            let records = |i: u32| instances[i as usize].records(kind);
            let has_ip = members
                .iter()
                .any(|&i| records(i).answer_count > 0 && !records(i).cname);
            let mut seen = HashSet::new();
            let mut cname_taken = false;
            members
                .iter()
                .copied()
                .filter(|&i| {
                    let r = records(i);
                    if r.answer_count == 0 {
                        return false;
                    }
                    if r.cname {
                        let take = !has_ip && !cname_taken;
                        cname_taken |= take;
                        return take;
                    }
                    seen.insert(entries[i as usize].address().to_ascii_lowercase())
                })
                .collect::<Box<[u32]>>()
        };
        let mut seen = HashSet::new();
        let srv = members
            .iter()
            .copied()
            .filter(|&i| {
                let e = entries[i as usize];
                seen.insert((&e.node.node, e.address(), e.service.port))
            })
            .collect();
        Lists {
            a: addresses(Kind::A),
            aaaa: addresses(Kind::Aaaa),
            any: addresses(Kind::Any),
            srv,
        }
    }

    pub(super) fn get(&self, kind: Kind) -> &[u32] {
        match kind {
            Kind::A => &self.a,
            Kind::Aaaa => &self.aaaa,
            Kind::Any => &self.any,
            Kind::Srv => &self.srv,
        }
    }
}

// === impl Instance ===

impl Instance {
    pub(super) fn records(&self, kind: Kind) -> Records {
        match kind {
            Kind::A => self.a,
            Kind::Aaaa => self.aaaa,
            Kind::Any => self.any,
            Kind::Srv => self.srv,
        }
    }
}

impl Span {
    pub(super) fn of(self, arena: &[u8]) -> &[u8] {
        &arena[self.start as usize..(self.start + self.len) as usize]
    }
}

/// Encodes one instance's records into an arena.
struct InstanceEncoder<'a, 'c> {
    cx: &'a Context<'c>,
    entry: &'a HealthEntry,
    ttl: u32,
}

/// How an address answers (§2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Ip(IpAddr),
    /// Lowercase, no final dot.
    Host(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Any,
}

impl InstanceEncoder<'_, '_> {
    fn encode(&self, arena: &mut Vec<u8>) -> Instance {
        Instance {
            a: self.address_records(arena, Family::V4),
            aaaa: self.address_records(arena, Family::V6),
            any: self.address_records(arena, Family::Any),
            srv: self.srv_records(arena),
        }
    }

    /// An A/AAAA owned by the question name, or for a host name a CNAME to it followed by
    /// the chain inside the Consul zone, all in the answer section (§2.2, FQDN form).
    fn address_records(&self, arena: &mut Vec<u8>, family: Family) -> Records {
        let start = arena.len();
        let (count, cname) = match select(self.entry, family, self.cx.domains) {
            Some(Target::Ip(ip)) => {
                arena.extend_from_slice(&wire::OWNER_QNAME);
                push_address_rdata(arena, ip, self.ttl);
                (1, false)
            }
            Some(Target::Host(host)) => {
                arena.extend_from_slice(&wire::OWNER_QNAME);
                let at = wire::push_rr_header(arena, rtype::CNAME, self.ttl);
                wire::push_name(arena, &host);
                wire::end_rdata(arena, at);
                (1 + self.cx.chain(&host, self.ttl, 0, arena), true)
            }
            None => (0, false),
        };
        Records {
            answer: span(start, arena.len()),
            answer_count: count,
            cname,
            ..Records::default()
        }
    }

    fn srv_records(&self, arena: &mut Vec<u8>) -> Records {
        let start = arena.len();
        let (target, ip) = srv_target_of(
            self.entry,
            self.cx.datacenter,
            self.cx.domains,
            self.cx.domain,
        );
        arena.extend_from_slice(&wire::OWNER_QNAME);
        let at = wire::push_rr_header(arena, rtype::SRV, self.ttl);
        arena.extend_from_slice(&1u16.to_be_bytes()); // Consul: priority is always 1
        arena.extend_from_slice(&srv_weight(self.entry).to_be_bytes());
        arena.extend_from_slice(&self.entry.service.port.to_be_bytes());
        // RFC 2782: the target is not compressed.
        wire::push_name(arena, &target);
        wire::end_rdata(arena, at);
        let answer = span(start, arena.len());

        let start = arena.len();
        let mut extra_count = match ip {
            Some(ip) => {
                push_address(arena, &target, ip, self.ttl);
                1
            }
            None => self.cx.chain(&target, self.ttl, 0, arena),
        };
        if self.cx.dns.enable_additional_node_meta_txt {
            // Owned by the node name even when the target is an `.addr` name (§2.4).
            let owner = format!(
                "{}.node.{}.{}",
                self.entry.node.node,
                node_dc(self.entry, self.cx.datacenter),
                self.cx.domain
            );
            for (key, value) in &self.entry.node.meta {
                wire::push_name(arena, &owner);
                let at = wire::push_rr_header(arena, rtype::TXT, self.ttl);
                wire::push_txt_rdata(arena, encode_meta_txt(key, value).as_bytes());
                wire::end_rdata(arena, at);
                extra_count += 1;
            }
        }
        Records {
            answer,
            answer_count: 1,
            extra: span(start, arena.len()),
            extra_count,
            cname: false,
        }
    }
}

/// The SRV target and, for an address target, the address (§2.2): `<hex>.addr.<dc>.<domain>`
/// for a service IP (even one equal to the node's), `<node>.node.<dc>.<domain>` when the
/// instance uses its node's own address, the host name itself for a host name.
fn srv_target_of(
    e: &HealthEntry,
    datacenter: &str,
    domains: &[String],
    domain: &str,
) -> (String, Option<IpAddr>) {
    let dc = node_dc(e, datacenter);
    let node_form = || format!("{}.node.{dc}.{domain}", e.node.node);
    let uses_node = e.service.address.is_empty() || is_self_reference(e, domains);
    match select(e, Family::Any, domains) {
        Some(Target::Ip(ip)) if uses_node && ip.to_string() == e.node.address => {
            (node_form(), Some(ip))
        }
        Some(Target::Ip(ip)) => (format!("{}.addr.{dc}.{domain}", hex_ip(ip)), Some(ip)),
        Some(Target::Host(host)) => (host, None),
        None => (node_form(), None),
    }
}

/// Address selection (`TranslateServiceAddress`, §2.1): a tagged `lan_ipv6`/`lan_ipv4` of the
/// accepted family first, then the plain address if its family fits or it is a host name. A
/// service address naming the service itself (`db.service.consul` on `db`) is ignored in
/// favour of the node's, so it cannot loop (§2.2 rule 5).
fn select(e: &HealthEntry, family: Family, domains: &[String]) -> Option<Target> {
    let use_node = e.service.address.is_empty() || is_self_reference(e, domains);
    let (default, v4, v6) = if use_node {
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
        (None, _) => Some(Target::Host(
            default.trim_end_matches('.').to_ascii_lowercase(),
        )),
    }
}

/// Whether any of `entries` answers with a host name (a CNAME) rather than an address: its
/// records may follow other services and nodes inside the zone, so it is rebuilt with every
/// catalog rather than reused.
pub(super) fn names_a_host<'e>(
    mut entries: impl Iterator<Item = &'e HealthEntry>,
    domains: &[String],
) -> bool {
    entries.any(|e| {
        [Family::V4, Family::V6, Family::Any]
            .into_iter()
            .any(|f| matches!(select(e, f, domains), Some(Target::Host(_))))
    })
}

/// Whether the service address is the service's own DNS name.
fn is_self_reference(e: &HealthEntry, domains: &[String]) -> bool {
    let addr = e.service.address.trim_end_matches('.').to_ascii_lowercase();
    let service = e.service.service.to_ascii_lowercase();
    domains.iter().any(|d| {
        addr.strip_suffix(d.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .and_then(|rest| rest.strip_prefix(service.as_str()))
            .is_some_and(|rest| rest == ".service" || rest.starts_with(".service."))
    })
}

fn has_tag(e: &HealthEntry, tag: &[u8]) -> bool {
    e.service
        .tags
        .iter()
        .any(|t| t.as_bytes().eq_ignore_ascii_case(tag))
}

fn node_dc<'a>(e: &'a HealthEntry, datacenter: &'a str) -> &'a str {
    if e.node.datacenter.is_empty() {
        datacenter
    } else {
        &e.node.datacenter
    }
}

/// A node as an instance with no service, so node lookups share the address rules.
pub(super) fn node_entry(node: &Arc<Node>) -> HealthEntry {
    HealthEntry {
        node: Arc::clone(node),
        service: Default::default(),
        checks: Vec::new(),
    }
}

/// An A/AAAA owned by `owner` written in full.
fn push_address(out: &mut Vec<u8>, owner: &str, ip: IpAddr, ttl: u32) {
    wire::push_name(out, owner);
    push_address_rdata(out, ip, ttl);
}

/// The rest of an A/AAAA after its owner.
fn push_address_rdata(out: &mut Vec<u8>, ip: IpAddr, ttl: u32) {
    match ip {
        IpAddr::V4(v4) => {
            let at = wire::push_rr_header(out, rtype::A, ttl);
            out.extend_from_slice(&v4.octets());
            wire::end_rdata(out, at);
        }
        IpAddr::V6(v6) => {
            let at = wire::push_rr_header(out, rtype::AAAA, ttl);
            out.extend_from_slice(&v6.octets());
            wire::end_rdata(out, at);
        }
    }
}

/// A node's answers: owners are the question name, so they suit every domain.
#[derive(Debug, Default)]
pub(super) struct NodeAnswers {
    pub(super) bytes: Box<[u8]>,
    pub(super) a: Records,
    pub(super) aaaa: Records,
    pub(super) txt: Span,
    pub(super) txt_count: u16,
}

impl NodeAnswers {
    pub(super) fn build(cx: &Context<'_>, node: &Arc<Node>) -> NodeAnswers {
        let entry = node_entry(node);
        let enc = InstanceEncoder {
            cx,
            entry: &entry,
            ttl: cx.dns.node_ttl,
        };
        let mut bytes = Vec::new();
        let a = enc.address_records(&mut bytes, Family::V4);
        let aaaa = enc.address_records(&mut bytes, Family::V6);
        let start = bytes.len();
        for (key, value) in &node.meta {
            bytes.extend_from_slice(&wire::OWNER_QNAME);
            let at = wire::push_rr_header(&mut bytes, rtype::TXT, cx.dns.node_ttl);
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

/// The SRV target Consul would give `entry` under `domain` (lowercase dotted, no final dot),
/// with the final dot: the same name the SRV answer carries, for the SRV data document.
pub fn srv_target(entry: &HealthEntry, domain: &str, datacenter: &str) -> String {
    let domains = [domain.to_owned()];
    let mut target = srv_target_of(entry, datacenter, &domains, domain).0;
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
/// a leading or trailing space of the key escaped (§2.5, case 65).
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

pub(super) fn lower_key(s: &str) -> Arc<[u8]> {
    Arc::from(s.to_ascii_lowercase().into_bytes())
}

pub(super) fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        len: (end - start) as u32,
    }
}
