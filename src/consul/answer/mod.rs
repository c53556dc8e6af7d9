//! The `.consul` answer table: every answer the catalog can give, encoded once per catalog.
//!
//! [`AnswerTable::build`] runs when a new catalog is published, off the request path. It applies
//! the health filter and `filter_tags`, then encodes each instance's records (A, AAAA, the record
//! for ANY, SRV and the SRV target's additional records) into one byte arena per service, and
//! lists, per tag and per type, which instances answer (after Consul's dedup rules). A request
//! then costs a name parse, two hash lookups and a few `memcpy`s into the worker's buffer: no
//! lock, no allocation, no task (DESIGN.md, Performance design). The one exception is a
//! prepared query *template*, whose answer depends on the name asked: it is built on first use
//! and kept in a small cache behind a mutex.
//!
//! Every precomputed record is self-contained: answer owners are the pointer to the question
//! (0xC00C) and every other name is written out in full, so any subset of instances, in any
//! rotation, can be copied into a response without fixing up compression offsets. Per-request
//! shuffling rotates the instance list (the order within a list is itself shuffled at build).
//!
//! Record construction follows Consul's `agent/dns.go` as summarised in
//! `reference/consul-dns.md` §2; deliberate differences are marked "Deliberate".

mod encode;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use foldhash::fast::RandomState;

use crate::config::{DnsConfig, SoaConfig};
use crate::consul::catalog::{Catalog, HealthEntry};
use crate::consul::name::{self, ConsulName, Locality};
use crate::consul::query::{self, Queries, Rendered};
use crate::wire::{self, Proto, Query, rcode, rtype};

use encode::{AnswerSet, Context, Kind, Map, NodeAnswers, lower_key, names_a_host};
pub use encode::{answers_dns, encode_meta_txt, hex_ip, srv_target, srv_weight};

/// A set of lowercase service names.
type Keys = HashSet<Arc<[u8]>, RandomState>;

/// What [`AnswerTable::answer_or_remote`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered<'a> {
    /// The response is in `out`.
    Done(Outcome),
    /// A service or node name in this other datacenter (lowercase): only that datacenter's
    /// table can answer it (`consul::remote`). Nothing was written.
    Remote(&'a [u8]),
    /// A prepared query with no local instance and failover targets: only the agent's
    /// `/execute` can answer it (`consul::failover`; [`AnswerTable::failover_target`] says
    /// which query). Nothing was written.
    Failover,
}

/// The prepared query a [`Answered::Failover`] name asks the agent for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverTarget {
    /// The query's ID (a template's: the name asked, as Consul only executes templates by
    /// name).
    pub key: Arc<str>,
    /// The TTL of the answer when `/execute` gives none: the local one.
    pub ttl: u32,
}

/// What one request got, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub rcode: u8,
}

/// Every `.consul` answer for one catalog. Immutable but for the template cache; swapped whole
/// when the catalog changes. [`AnswerTable::update`] makes the next table sharing every part
/// that the change did not touch (per-service answer sets, node answers, the PTR map).
pub struct AnswerTable {
    /// Lowercase local datacenter.
    datacenter: Box<[u8]>,
    /// One entry per configured domain: the primary first, then the alt domain.
    domains: Vec<DomainAnswers>,
    /// Node answers do not mention the domain, so both domains share them.
    nodes: Arc<Map<NodeAnswers>>,
    /// Reverse names: address → PTR target (the primary domain, as Consul).
    ptr: Arc<HashMap<IpAddr, String, RandomState>>,
    limits: Limits,
    queries: Queries,
    /// Kept to build prepared query template answers on first use, and to tell what changed.
    catalog: Arc<Catalog>,
    dns: DnsConfig,
    /// `dns` as text: `DnsConfig` has no `PartialEq`, and a changed config rebuilds all.
    dns_key: String,
    domain_names: Vec<String>,
    /// Lowercase names of services with an instance answering with a host name: their
    /// answers may follow other services and nodes, so they are rebuilt every time.
    by_name: Keys,
    /// Some node answers with a host name (then node answers are rebuilt every time).
    nodes_by_name: bool,
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    udp_answer_limit: usize,
    a_record_limit: usize,
    enable_truncate: bool,
    node_ttl: u32,
    node_meta_txt: bool,
}

struct DomainAnswers {
    /// The zone SOA, owner = this domain, with the serial patched per request.
    soa: Vec<u8>,
    soa_serial_at: usize,
    /// NS records (owner = this domain) and their glue, one pair per Consul server.
    ns: Vec<(Vec<u8>, Vec<u8>)>,
    services: Map<Arc<AnswerSet>>,
    /// Prepared queries that are not templates, by ID and by name.
    queries: Map<Arc<PreparedAnswers>>,
    /// Template answers built on first use (bounded; cleared when full).
    templates: Mutex<HashMap<Box<[u8]>, Arc<PreparedAnswers>>>,
}

/// A prepared query's answers and what the response needs from its definition.
struct PreparedAnswers {
    set: AnswerSet,
    ttl: u32,
    /// Set when the definition has failover targets: what to ask `/execute` for when `set`
    /// is empty.
    failover: Option<Arc<str>>,
}

/// Most template answers cached per table.
const TEMPLATE_CACHE: usize = 1024;
/// Most NS records in an answer (Consul: 3 random healthy servers).
const MAX_NS: usize = 3;

thread_local! {
    /// Per-thread rotation counter: shuffling without a shared atomic between cores.
    static ROTATION: Cell<u32> = const { Cell::new(0) };
}

// === impl AnswerTable ===

impl AnswerTable {
    /// Encode every answer of `catalog` for `domains` (lowercase dotted without the final dot,
    /// primary first) under the `dns` knobs.
    pub fn build(catalog: Arc<Catalog>, domains: &[String], dns: &DnsConfig) -> AnswerTable {
        Self::make(None, catalog, domains, dns)
    }

    /// The table for `catalog`, reusing from `prev` everything the change from `prev`'s catalog
    /// did not touch: the answer set of every service whose entries are the same `Arc` (the
    /// watcher shares unchanged services between snapshots), the node answers and the PTR map
    /// when the nodes did not change. Services answering with host names, NS and prepared
    /// queries depend on other services and are rebuilt every time. A different datacenter,
    /// domain list or `dns` config means a full build. Answers equal those of
    /// [`AnswerTable::build`] (up to the once-per-build shuffle of reused sets).
    pub fn update(
        prev: &AnswerTable,
        catalog: Arc<Catalog>,
        domains: &[String],
        dns: &DnsConfig,
    ) -> AnswerTable {
        let same_setup = prev.domain_names == domains
            && prev.catalog.datacenter == catalog.datacenter
            && prev.dns_key == format!("{dns:?}");
        Self::make(same_setup.then_some(prev), catalog, domains, dns)
    }

    fn make(
        prev: Option<&AnswerTable>,
        catalog: Arc<Catalog>,
        domains: &[String],
        dns: &DnsConfig,
    ) -> AnswerTable {
        let datacenter = catalog.datacenter.to_ascii_lowercase();
        let queries = Queries::new(&catalog.queries);
        let changes = prev.map(|p| Changes::between(&p.catalog, &catalog));
        // Services to (re)build: every one, or those that changed plus those naming hosts.
        let mut by_name = prev.map_or_else(
            || HashSet::with_hasher(RandomState::default()),
            |p| p.by_name.clone(),
        );
        let rebuild: Option<Keys> = changes.as_ref().map(|c| {
            let mut keys = c.services.clone();
            keys.extend(by_name.iter().cloned());
            keys
        });
        let domain_answers = domains
            .iter()
            .enumerate()
            .map(|(i, domain)| {
                let cx = Context::new(&catalog, &datacenter, domains, domain, dns);
                let reuse = prev.and_then(|p| p.domains.get(i)).zip(rebuild.as_ref());
                DomainAnswers::build(&cx, &catalog, &queries, reuse)
            })
            .collect();
        // Which services name hosts, for the next update.
        if let Some(domain) = domains.first() {
            let cx = Context::new(&catalog, &datacenter, domains, domain, dns);
            match &changes {
                None => {
                    by_name.clear();
                    for key in cx.service_keys() {
                        if names_a_host(cx.catalog_entries(key), domains) {
                            by_name.insert(key.as_bytes().into());
                        }
                    }
                }
                Some(c) => {
                    for key in &c.services {
                        by_name.remove(key);
                        let text = String::from_utf8_lossy(key);
                        if names_a_host(cx.catalog_entries(&text), domains) {
                            by_name.insert(key.clone());
                        }
                    }
                }
            }
        }
        let nodes_by_name = match (prev, &changes) {
            (Some(p), Some(c)) if !c.nodes => p.nodes_by_name,
            _ => catalog
                .nodes
                .values()
                .any(|n| !n.address.is_empty() && n.address.parse::<IpAddr>().is_err()),
        };
        let nodes = match (prev, &changes) {
            (Some(p), Some(c)) if !c.nodes && !nodes_by_name => Arc::clone(&p.nodes),
            _ => {
                let mut nodes = Map::with_hasher(RandomState::default());
                if let Some(domain) = domains.first() {
                    let cx = Context::new(&catalog, &datacenter, domains, domain, dns);
                    for node in catalog.nodes.values() {
                        nodes
                            .entry(lower_key(&node.node))
                            .or_insert_with(|| NodeAnswers::build(&cx, node));
                    }
                }
                Arc::new(nodes)
            }
        };
        let ptr = match (prev, &changes) {
            (Some(p), Some(c)) if !c.nodes && !c.service_addresses => Arc::clone(&p.ptr),
            _ => Arc::new(reverse_map(
                &catalog,
                &datacenter,
                domains.first().map_or("consul", |d| d),
                dns,
            )),
        };
        AnswerTable {
            datacenter: datacenter.into_bytes().into_boxed_slice(),
            domains: domain_answers,
            nodes,
            ptr,
            limits: Limits {
                udp_answer_limit: dns.udp_answer_limit.min(8),
                a_record_limit: dns.a_record_limit,
                enable_truncate: dns.enable_truncate,
                node_ttl: dns.node_ttl,
                node_meta_txt: dns.enable_additional_node_meta_txt,
            },
            queries,
            catalog,
            dns: dns.clone(),
            dns_key: format!("{dns:?}"),
            domain_names: domains.to_vec(),
            by_name,
            nodes_by_name,
        }
    }

    /// A table with no services and no nodes: every name is NXDOMAIN until the first catalog.
    pub fn empty(domains: &[String], dns: &DnsConfig) -> AnswerTable {
        Self::build(Arc::new(Catalog::default()), domains, dns)
    }

    /// Answer `query`, whose name is `rel` (lowercase dotted, domain stripped) under domain
    /// number `domain` (0 = primary). Writes the whole response into `out`.
    /// A service or node name in another datacenter is NXDOMAIN here: see
    /// [`AnswerTable::answer_or_remote`].
    pub fn answer(
        &self,
        query: &Query<'_>,
        rel: &[u8],
        domain: usize,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match self.answer_or_remote(query, rel, domain, proto, out) {
            Answered::Done(outcome) => outcome,
            Answered::Remote(_) | Answered::Failover => self.nxdomain(query, domain, out),
        }
    }

    /// Like [`AnswerTable::answer`], but a service or node name (any form the grammar reads)
    /// in a datacenter other than this table's is handed back as [`Answered::Remote`] for
    /// that datacenter's own table, and a prepared query with no local instance but failover
    /// targets as [`Answered::Failover`]. Everything stays local until the first catalog says
    /// which datacenter is local.
    pub fn answer_or_remote<'r>(
        &self,
        query: &Query<'_>,
        rel: &'r [u8],
        domain: usize,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Answered<'r> {
        Answered::Done(match self.remote_or_local(query, rel, domain, proto, out) {
            Ok(outcome) => outcome,
            Err(elsewhere) => return elsewhere,
        })
    }

    fn remote_or_local<'r>(
        &self,
        query: &Query<'_>,
        rel: &'r [u8],
        domain: usize,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, Answered<'r>> {
        let Some(zone) = self.domains.get(domain) else {
            wire::error_response(out, query, rcode::REFUSED);
            return Ok(Outcome {
                rcode: rcode::REFUSED,
            });
        };
        // Consul answers SOA and NS for any name under the domain, existing or not (§1.5).
        match query.qtype {
            rtype::SOA => return Ok(zone.soa_answer(query, out)),
            rtype::NS => return Ok(self.ns_answer(query, zone, out)),
            rtype::AXFR => {
                wire::error_response(out, query, rcode::NOTIMP);
                return Ok(Outcome {
                    rcode: rcode::NOTIMP,
                });
            }
            _ => {}
        }
        let outcome = match name::parse(rel, query.qtype) {
            ConsulName::Service {
                locality: Locality::Datacenter(dc),
                ..
            }
            | ConsulName::Node {
                locality: Locality::Datacenter(dc),
                ..
            } if self.is_remote(dc) => return Err(Answered::Remote(dc)),
            ConsulName::Service {
                service,
                tag,
                locality,
            } if self.is_local(locality) => match zone.services.get(service) {
                Some(set) => self.set_answer(query, zone, set, tag, proto, 0, out),
                None => negative(query, zone, rcode::NXDOMAIN, out),
            },
            ConsulName::Node { node, locality } if self.is_local(locality) => {
                match self.nodes.get(node) {
                    Some(answers) => self.node(query, answers, out),
                    None => negative(query, zone, rcode::NXDOMAIN, out),
                }
            }
            ConsulName::Query { name, locality } if self.is_local(locality) => {
                match self.prepared(zone, domain, name) {
                    Some(answers)
                        if answers.set.instances.is_empty() && answers.failover.is_some() =>
                    {
                        return Err(Answered::Failover);
                    }
                    Some(answers) => {
                        // Prepared queries are the one answer whose ECS scope is the source
                        // prefix: the answer may depend on where the client is (§5.3).
                        let scope = ecs_source_prefix(query);
                        self.set_answer(query, zone, &answers.set, None, proto, scope, out)
                    }
                    None => negative(query, zone, rcode::NXDOMAIN, out),
                }
            }
            ConsulName::Addr { hex } => self.addr(query, hex, zone, out),
            _ => negative(query, zone, rcode::NXDOMAIN, out),
        };
        Ok(outcome)
    }

    /// The query an [`Answered::Failover`] name (`rel` under domain number `domain`) asks the
    /// agent for; `None` when the name is not one (any more).
    pub fn failover_target(
        &self,
        query: &Query<'_>,
        rel: &[u8],
        domain: usize,
    ) -> Option<FailoverTarget> {
        let zone = self.domains.get(domain)?;
        let ConsulName::Query { name, locality } = name::parse(rel, query.qtype) else {
            return None;
        };
        if !self.is_local(locality) {
            return None;
        }
        let answers = self.prepared(zone, domain, name)?;
        let key = answers.failover.clone()?;
        answers.set.instances.is_empty().then_some(FailoverTarget {
            key,
            ttl: answers.ttl,
        })
    }

    /// Answer `query` (a prepared query under domain number `domain`) with `entries`, the
    /// instances `/execute` returned from datacenter `datacenter`: encoded as a local answer
    /// would be, but in that datacenter (SRV targets `<node>.node.<datacenter>.<domain>`),
    /// with TTL `ttl`. Allocates (a catalog of just these entries): the async path only.
    #[allow(clippy::too_many_arguments)]
    pub fn answer_executed(
        &self,
        query: &Query<'_>,
        domain: usize,
        proto: Proto,
        datacenter: &str,
        entries: &[HealthEntry],
        ttl: u32,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let (Some(zone), Some(domain_name)) =
            (self.domains.get(domain), self.domain_names.get(domain))
        else {
            return self.nxdomain(query, domain, out);
        };
        let catalog = executed_catalog(datacenter, entries, &self.dns.filter_tags);
        let cx = Context::new(
            &catalog,
            &catalog.datacenter,
            &self.domain_names,
            domain_name,
            &self.dns,
        );
        let serving: Vec<&HealthEntry> = catalog.services.values().flat_map(|e| e.iter()).collect();
        let set = AnswerSet::build(&cx, &serving, ttl, false);
        let scope = ecs_source_prefix(query);
        self.set_answer(query, zone, &set, None, proto, scope, out)
    }

    /// Answer a reverse name (`rel` is the lowercase dotted name without the final dot) when the
    /// catalog knows the address: node first, then service, PTR TTL 0, for any type (§1.7).
    /// `None` when it does not: the caller forwards it.
    pub fn answer_reverse(
        &self,
        query: &Query<'_>,
        name: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Outcome> {
        let ip = parse_reverse(name)?;
        let target = self.ptr.get(&ip)?;
        wire::begin_response(out, query, rcode::NOERROR, true);
        out.extend_from_slice(&wire::OWNER_QNAME);
        let at = wire::push_rr_header(out, rtype::PTR, 0);
        wire::push_name(out, target);
        wire::end_rdata(out, at);
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, 1, 0, opt);
        Some(Outcome {
            rcode: rcode::NOERROR,
        })
    }

    /// Whether a locality names this datacenter. Other datacenters are answered from their own
    /// tables (`consul::remote`); peers are NXDOMAIN (not watched; README).
    fn is_local(&self, locality: Locality<'_>) -> bool {
        match locality {
            Locality::Local => true,
            Locality::Datacenter(dc) => dc == &*self.datacenter,
            Locality::Peer(_) => false,
        }
    }

    /// Whether `dc` names a datacenter other than this table's. Before the first catalog the
    /// local datacenter is not known and nothing is remote.
    fn is_remote(&self, dc: &[u8]) -> bool {
        !self.datacenter.is_empty() && dc != &*self.datacenter
    }

    /// A prepared query's answers: fixed definitions precomputed, templates built on first use.
    fn prepared(
        &self,
        zone: &DomainAnswers,
        domain: usize,
        name: &[u8],
    ) -> Option<Arc<PreparedAnswers>> {
        if let Some(fixed) = zone.queries.get(name) {
            return Some(Arc::clone(fixed));
        }
        let text = std::str::from_utf8(name).ok()?;
        let rendered = self.queries.resolve(text)?;
        let mut cache = zone.templates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(name) {
            return Some(Arc::clone(hit));
        }
        let domain_name = self.domain_names.get(domain)?;
        let datacenter = String::from_utf8_lossy(&self.datacenter).into_owned();
        let cx = Context::new(
            &self.catalog,
            &datacenter,
            &self.domain_names,
            domain_name,
            &self.dns,
        );
        // Consul executes a template by the name asked, never by its ID.
        let key = String::from_utf8_lossy(name);
        let built = Arc::new(PreparedAnswers::build(&cx, &rendered, &key));
        if cache.len() >= TEMPLATE_CACHE {
            cache.clear();
        }
        cache.insert(name.into(), Arc::clone(&built));
        Some(built)
    }

    #[allow(clippy::too_many_arguments)]
    fn set_answer(
        &self,
        query: &Query<'_>,
        zone: &DomainAnswers,
        set: &AnswerSet,
        tag: Option<&[u8]>,
        proto: Proto,
        ecs_scope: u8,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if set.instances.is_empty() {
            // Consul: a service with no healthy instance is NXDOMAIN, not NODATA (§0.2).
            return negative(query, zone, rcode::NXDOMAIN, out);
        }
        let lists = match tag {
            None => &set.untagged,
            Some(tag) => match set.tags.get(tag) {
                Some(lists) => lists,
                None => return negative(query, zone, rcode::NXDOMAIN, out),
            },
        };
        let kind = match query.qtype {
            rtype::A => Kind::A,
            rtype::AAAA => Kind::Aaaa,
            rtype::SRV => Kind::Srv,
            // Consul builds the same records for TXT as for ANY (§2.2).
            rtype::ANY | rtype::TXT => Kind::Any,
            _ => return negative(query, zone, rcode::NOERROR, out),
        };
        let list = lists.get(kind);
        if list.is_empty() {
            return negative(query, zone, rcode::NOERROR, out);
        }
        self.write_instances(query, set, kind, list, proto, ecs_scope, out);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    /// Copy as many instances as the limits and the client's size allow, rotated.
    #[allow(clippy::too_many_arguments)]
    fn write_instances(
        &self,
        query: &Query<'_>,
        set: &AnswerSet,
        kind: Kind,
        list: &[u32],
        proto: Proto,
        ecs_scope: u8,
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
        let (mut taken, mut answers, mut extras) = (0, 0u16, 0u16);
        for &i in rotated.clone().take(limit) {
            let r = set.instances[i as usize].records(kind);
            let more = (r.answer.len + r.extra.len) as usize;
            if size + more > max {
                break;
            }
            size += more;
            taken += 1;
            answers += r.answer_count;
            extras += r.extra_count;
        }
        for &i in rotated.clone().take(taken) {
            let r = set.instances[i as usize].records(kind);
            out.extend_from_slice(r.answer.of(&set.arena));
        }
        for &i in rotated.take(taken) {
            let r = set.instances[i as usize].records(kind);
            out.extend_from_slice(r.extra.of(&set.arena));
        }
        let opt = u16::from(wire::write_opt(out, query, ecs_scope));
        wire::set_counts(out, answers, 0, extras + opt);
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
        let mut answers = 0;
        let mut txt_in_additional = false;
        match query.qtype {
            rtype::A | rtype::AAAA => {
                let r = if query.qtype == rtype::A {
                    node.a
                } else {
                    node.aaaa
                };
                out.extend_from_slice(r.answer.of(bytes));
                answers = r.answer_count;
                txt_in_additional = answers > 0 && self.limits.node_meta_txt;
            }
            rtype::TXT => {
                out.extend_from_slice(node.txt.of(bytes));
                answers = node.txt_count;
            }
            rtype::ANY => {
                // ANY: the address (IPv4 unless the node only has IPv6) and the TXT meta.
                let r = if node.a.answer_count > 0 {
                    node.a
                } else {
                    node.aaaa
                };
                out.extend_from_slice(r.answer.of(bytes));
                out.extend_from_slice(node.txt.of(bytes));
                answers = r.answer_count + node.txt_count;
            }
            // Consul: a node asked for a type it has no record of is NOERROR with nothing at all.
            _ => {}
        }
        let mut additional = 0;
        if txt_in_additional {
            out.extend_from_slice(node.txt.of(bytes));
            additional = node.txt_count;
        }
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, answers, 0, additional + opt);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    /// `<hex>.addr`: decoded without a catalog lookup; a type that does not match the address
    /// puts the record in the additional section (§2.6).
    fn addr(
        &self,
        query: &Query<'_>,
        hex: &[u8],
        zone: &DomainAnswers,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(ip) = name::decode_addr(hex) else {
            return negative(query, zone, rcode::NXDOMAIN, out);
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

    /// NS under the domain: up to three Consul servers, with their addresses as glue (§1.5).
    fn ns_answer(&self, query: &Query<'_>, zone: &DomainAnswers, out: &mut Vec<u8>) -> Outcome {
        if zone.ns.is_empty() {
            return negative(query, zone, rcode::NOERROR, out);
        }
        let start = ROTATION.with(|r| r.get() as usize) % zone.ns.len();
        let picked = || {
            zone.ns
                .iter()
                .cycle()
                .skip(start)
                .take(zone.ns.len().min(MAX_NS))
        };
        wire::begin_response(out, query, rcode::NOERROR, true);
        for (ns, _) in picked() {
            out.extend_from_slice(ns);
        }
        for (_, glue) in picked() {
            out.extend_from_slice(glue);
        }
        let n = picked().count() as u16;
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, n, 0, n + opt);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }

    /// NXDOMAIN with the SOA of domain number `domain` in the authority section.
    pub fn nxdomain(&self, query: &Query<'_>, domain: usize, out: &mut Vec<u8>) -> Outcome {
        match self.domains.get(domain) {
            Some(zone) => negative(query, zone, rcode::NXDOMAIN, out),
            None => {
                wire::error_response(out, query, rcode::NXDOMAIN);
                Outcome {
                    rcode: rcode::NXDOMAIN,
                }
            }
        }
    }

    /// Number of services (for tests and status).
    pub fn service_count(&self) -> usize {
        self.domains.first().map_or(0, |d| d.services.len())
    }

    /// Whether `self` and `other` share the primary domain's answers for `service` (lowercase),
    /// i.e. an update reused them: for tests.
    pub fn shares_service(&self, other: &AnswerTable, service: &str) -> bool {
        let get = |t: &AnswerTable| {
            t.domains
                .first()
                .and_then(|d| d.services.get(service.as_bytes()))
                .cloned()
        };
        matches!((get(self), get(other)), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b))
    }
}

/// What differs between two catalogs, as far as the answer table cares.
struct Changes {
    /// Lowercase names of services added, removed or whose entries are another `Arc`.
    services: Keys,
    /// Some node was added, removed or changed.
    nodes: bool,
    /// A changed service has (or had) an instance with its own IP address: the PTR map may
    /// change.
    service_addresses: bool,
}

impl Changes {
    fn between(old: &Catalog, new: &Catalog) -> Changes {
        let mut services = HashSet::with_hasher(RandomState::default());
        let mut service_addresses = false;
        let mut note = |name: &str, entries: &[HealthEntry]| {
            services.insert(lower_key(name));
            service_addresses |= entries
                .iter()
                .any(|e| e.service.address.parse::<IpAddr>().is_ok());
        };
        // Both maps are sorted by name: one merge pass, no lookups.
        let mut olds = old.services.iter().peekable();
        for (name, entries) in &new.services {
            while let Some((gone, prev)) = olds.next_if(|(o, _)| *o < name) {
                note(gone, prev);
            }
            match olds.next_if(|(o, _)| *o == name) {
                Some((_, prev)) if Arc::ptr_eq(prev, entries) => {}
                Some((_, prev)) => {
                    note(name, prev);
                    note(name, entries);
                }
                None => note(name, entries),
            }
        }
        for (gone, prev) in olds {
            note(gone, prev);
        }
        let nodes = old.nodes.len() != new.nodes.len()
            || old
                .nodes
                .iter()
                .zip(&new.nodes)
                .any(|((ka, a), (kb, b))| ka != kb || !(Arc::ptr_eq(a, b) || a == b));
        Changes {
            services,
            nodes,
            service_addresses,
        }
    }
}

/// NXDOMAIN, or NODATA (RFC 2308: NOERROR, no answer), with the SOA in the authority section.
fn negative(query: &Query<'_>, zone: &DomainAnswers, code: u8, out: &mut Vec<u8>) -> Outcome {
    wire::begin_response(out, query, code, true);
    zone.push_soa(out);
    let opt = u16::from(wire::write_opt(out, query, 0));
    wire::set_counts(out, 0, 1, opt);
    Outcome { rcode: code }
}

/// The source prefix of the client's ECS option, 0 without one.
fn ecs_source_prefix(query: &Query<'_>) -> u8 {
    query
        .edns
        .and_then(|e| e.ecs)
        .and_then(|ecs| ecs.get(2).copied())
        .unwrap_or(0)
}

// === impl DomainAnswers ===

impl DomainAnswers {
    /// The answers under `cx.domain`; with `reuse`, the previous table's answers for this
    /// domain and the lowercase names to rebuild: every other service's set is shared.
    fn build(
        cx: &Context<'_>,
        catalog: &Catalog,
        queries: &Queries,
        reuse: Option<(&DomainAnswers, &Keys)>,
    ) -> Self {
        let (soa, soa_serial_at) = encode_soa(cx.domain, &cx.dns.soa);
        let set_for = |lower: &str| {
            let ttl = cx.dns.service_ttl.lookup(lower);
            // Consul's index is case-insensitive: registrations differing only in case are
            // one service for DNS.
            Arc::new(AnswerSet::build(cx, &cx.serving(lower), ttl, true))
        };
        let services = match reuse {
            None => {
                let mut services =
                    Map::with_capacity_and_hasher(catalog.services.len(), RandomState::default());
                for key in cx.service_keys() {
                    services.insert(key.as_bytes().into(), set_for(key));
                }
                services
            }
            Some((prev, rebuild)) => {
                let mut services = prev.services.clone();
                for key in rebuild {
                    let lower = String::from_utf8_lossy(key);
                    if cx.has_service(&lower) {
                        services.insert(key.clone(), set_for(&lower));
                    } else {
                        services.remove(key);
                    }
                }
                services
            }
        };
        let mut prepared = Map::with_hasher(RandomState::default());
        for (names, rendered) in queries.fixed() {
            let key = match names.last() {
                _ if !rendered.id.is_empty() => rendered.id.as_str(),
                Some(name) => name.as_str(),
                None => "",
            };
            let answers = Arc::new(PreparedAnswers::build(cx, &rendered, key));
            for name in names {
                prepared.insert(Arc::from(name.into_bytes()), Arc::clone(&answers));
            }
        }
        DomainAnswers {
            soa,
            soa_serial_at,
            ns: encode_ns(cx, catalog),
            services,
            queries: prepared,
            templates: Mutex::new(HashMap::new()),
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

    fn soa_answer(&self, query: &Query<'_>, out: &mut Vec<u8>) -> Outcome {
        wire::begin_response(out, query, rcode::NOERROR, true);
        self.push_soa(out);
        let opt = u16::from(wire::write_opt(out, query, 0));
        wire::set_counts(out, 1, 0, opt);
        Outcome {
            rcode: rcode::NOERROR,
        }
    }
}

// === impl PreparedAnswers ===

impl PreparedAnswers {
    /// The instances of the rendered query's service that it selects, with its TTL: `DNS.TTL`,
    /// else the service's `service_ttl` (§4). `key` names the query to `/execute` when it has
    /// failover targets.
    fn build(cx: &Context<'_>, q: &Rendered, key: &str) -> PreparedAnswers {
        let entries: Vec<&HealthEntry> = cx
            .catalog_entries(&q.service)
            .filter(|e| query::selects(e, q, &cx.dns.filter_tags))
            .collect();
        let ttl = q
            .ttl
            .unwrap_or_else(|| cx.dns.service_ttl.lookup(&q.service));
        PreparedAnswers {
            set: AnswerSet::build(cx, &entries, ttl, false),
            ttl,
            failover: (q.has_failover && !key.is_empty()).then(|| Arc::from(key)),
        }
    }
}

/// A catalog of just the instances `/execute` returned (without filter-tagged ones, as every
/// answer), in the datacenter that answered: what the encoders need to answer from them.
fn executed_catalog(datacenter: &str, entries: &[HealthEntry], filter_tags: &[String]) -> Catalog {
    let mut services: BTreeMap<String, Vec<HealthEntry>> = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.has_any_tag(filter_tags)) {
        nodes
            .entry(e.node.node.clone())
            .or_insert_with(|| Arc::clone(&e.node));
        services
            .entry(e.service.service.clone())
            .or_default()
            .push(e.clone());
    }
    Catalog {
        datacenter: datacenter.to_ascii_lowercase(),
        services: services
            .into_iter()
            .map(|(name, entries)| (name, Arc::from(entries)))
            .collect(),
        nodes,
        ..Catalog::default()
    }
}

/// The zone SOA: `ns.<domain>` / `hostmaster.<domain>`, TTL = min_ttl (§1.6). Returns the
/// bytes and where the serial is.
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

/// NS records for the healthy instances of the `consul` service (the servers), owner = the
/// domain, target `<node>.node.<dc>.<domain>`, glue A/AAAA; node names that are not plain
/// host names are skipped, as Consul does (§1.5).
fn encode_ns(cx: &Context<'_>, _catalog: &Catalog) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut seen = std::collections::HashSet::new();
    cx.serving("consul")
        .iter()
        .filter(|e| {
            e.node
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && seen.insert(e.node.node.to_ascii_lowercase())
        })
        .filter_map(|e| {
            let ip: IpAddr = e.node.address.parse().ok()?;
            let target = format!(
                "{}.node.{}.{}",
                e.node.node.to_ascii_lowercase(),
                cx.datacenter,
                cx.domain
            );
            let mut ns = Vec::new();
            wire::push_name(&mut ns, cx.domain);
            let at = wire::push_rr_header(&mut ns, rtype::NS, cx.dns.node_ttl);
            wire::push_name(&mut ns, &target);
            wire::end_rdata(&mut ns, at);
            let mut glue = Vec::new();
            wire::push_name(&mut glue, &target);
            let (rt, bytes) = match ip {
                IpAddr::V4(v4) => (rtype::A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (rtype::AAAA, v6.octets().to_vec()),
            };
            let at = wire::push_rr_header(&mut glue, rt, cx.dns.node_ttl);
            glue.extend_from_slice(&bytes);
            wire::end_rdata(&mut glue, at);
            Some((ns, glue))
        })
        .collect()
}

/// Address → PTR target: every node address first, then service addresses not already a
/// node's (§1.7). Always the primary domain.
fn reverse_map(
    catalog: &Catalog,
    datacenter: &str,
    domain: &str,
    dns: &DnsConfig,
) -> HashMap<IpAddr, String, RandomState> {
    let mut ptr = HashMap::with_hasher(RandomState::default());
    for node in catalog.nodes.values() {
        if let Ok(ip) = node.address.parse::<IpAddr>() {
            ptr.entry(ip)
                .or_insert_with(|| format!("{}.node.{datacenter}.{domain}", node.node));
        }
    }
    for (name, entries) in &catalog.services {
        // Deliberate: a filter-tagged (standby) instance's address does not name its service.
        for e in entries.iter().filter(|e| !e.has_any_tag(&dns.filter_tags)) {
            if let Ok(ip) = e.service.address.parse::<IpAddr>() {
                ptr.entry(ip)
                    .or_insert_with(|| format!("{name}.service.{datacenter}.{domain}"));
            }
        }
    }
    ptr
}

/// The address of a full reverse name: `d.c.b.a.in-addr.arpa` or 32 nibbles `.ip6.arpa`.
fn parse_reverse(name: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(name).ok()?;
    if let Some(rest) = text.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut n = 0;
        for (i, label) in rest.rsplit('.').enumerate() {
            *octets.get_mut(i)? = label.parse().ok()?;
            n += 1;
        }
        return (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = text.strip_suffix(".ip6.arpa")?;
    let mut bytes = [0u8; 16];
    let mut n = 0;
    for (i, label) in rest.rsplit('.').enumerate() {
        let nibble = u8::from_str_radix(label, 16)
            .ok()
            .filter(|_| label.len() == 1)?;
        let byte = bytes.get_mut(i / 2)?;
        *byte |= if i % 2 == 0 { nibble << 4 } else { nibble };
        n += 1;
    }
    (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
pub(crate) mod tests;
