//! The DNS server: listeners ([`udp`], [`tcp`]) and the [`Dispatcher`] they share.
//!
//! The dispatcher reads the query ([`crate::wire`]), routes its name ([`crate::router`]) and
//! either answers at once from data (the `.consul` table or a static zone: synchronous, no
//! allocation) or tells the listener to forward, which is the only path that awaits (and the
//! one `.consul` names that need the agent take: another datacenter's before its table is
//! built, a prepared query to fail over through `/execute`). It is
//! also the one place where a packet that is not a clean query becomes FORMERR, NOTIMP or
//! nothing (STYLE.md: client errors map to rcodes in one place).

pub mod mmsg;
pub mod tcp;
pub mod udp;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::Message;

use crate::consul::answer::{AnswerTable, Answered, Outcome};
use crate::consul::failover::{Failover, Failovers};
use crate::consul::remote::{Remote, Remotes};
use crate::forward::Forwarder;
use crate::metrics::{DnsMetrics, Zone};
use crate::ops::query_log::QueryLog;
use crate::router::{Route, Router};
use crate::wire::{self, ParseError, Proto, Query, rcode};
use crate::zones::Zones;

/// What the dispatcher did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The response is in the output buffer.
    Answered,
    /// The name belongs to the forwarder: call [`Dispatcher::forward`].
    Forward,
    /// Not a query (too short, or a response): send nothing.
    Drop,
}

/// What an answered request counts as, for metrics: its `zone` label and rcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub zone: Zone,
    pub rcode: u8,
}

/// The local data a request may be answered from, swapped whole on a new catalog or reload.
pub struct Local {
    pub router: Router,
    pub zones: Zones,
}

/// Everything a listener needs to answer.
pub struct Dispatcher {
    table: Arc<ArcSwap<AnswerTable>>,
    local: Arc<ArcSwap<Local>>,
    /// Swapped whole at a config reload (`app::Running::reload`); a forward already running
    /// keeps the forwarder it started with, so a reload drops no query.
    forwarder: ArcSwap<Forwarder>,
    /// Forwarded queries not yet answered, for the drain at shutdown.
    in_flight: AtomicUsize,
    drained: tokio::sync::Notify,
    metrics: DnsMetrics,
    /// The opt-in query log (issue 9); checked with one relaxed load per answer.
    query_log: Option<Arc<QueryLog>>,
    /// Other datacenters' tables; `None`: their names are NXDOMAIN.
    remotes: Option<Arc<Remotes>>,
    /// Prepared-query failover through the agent; `None` (a `file:` catalog): a prepared
    /// query with no local instance is NXDOMAIN, failover targets or not.
    failovers: Option<Arc<Failovers>>,
}

/// How long a listener waits at shutdown for its forwarded queries to be answered.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Counts one forwarded query in flight; wakes the drain when the last one ends.
struct InFlight<'a>(&'a Dispatcher);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

// === impl Dispatcher ===

impl Dispatcher {
    pub fn new(
        table: Arc<ArcSwap<AnswerTable>>,
        local: Arc<ArcSwap<Local>>,
        forwarder: Arc<Forwarder>,
    ) -> Dispatcher {
        Dispatcher {
            table,
            local,
            forwarder: ArcSwap::new(forwarder),
            in_flight: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            metrics: DnsMetrics::new(),
            query_log: None,
            remotes: None,
            failovers: None,
        }
    }

    /// Ask the agent's `/execute` for prepared queries with no local instance and failover
    /// targets.
    pub fn with_failovers(mut self, failovers: Arc<Failovers>) -> Dispatcher {
        self.failovers = Some(failovers);
        self
    }

    /// Answer names in other datacenters from `remotes`.
    pub fn with_remotes(mut self, remotes: Arc<Remotes>) -> Dispatcher {
        self.remotes = Some(remotes);
        self
    }

    /// Log answered queries to `log` while it is enabled.
    pub fn with_query_log(mut self, log: Arc<QueryLog>) -> Dispatcher {
        self.query_log = Some(log);
        self
    }

    /// Queue a query-log line if the log is on.
    #[inline]
    fn log_query(
        &self,
        name: &[u8],
        qtype: u16,
        proto: Proto,
        zone: Zone,
        rcode: u8,
        start: Instant,
    ) {
        if let Some(log) = &self.query_log
            && log.enabled()
        {
            log.record(name, qtype, proto, zone, rcode, start.elapsed());
        }
    }

    /// Serve forwarded names from `forwarder` from now on (config reload).
    pub fn replace_forwarder(&self, forwarder: Forwarder) {
        self.forwarder.store(Arc::new(forwarder));
    }

    /// The forwarder in service now.
    pub fn forwarder(&self) -> Arc<Forwarder> {
        self.forwarder.load_full()
    }

    /// Forwarded queries not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Wait until no forwarded query is in flight, or `deadline` passes; `true` if drained.
    /// Listeners call it after they stop reading, so the replies still go out (SIGTERM drain).
    pub async fn drain(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.drained.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// Answer `packet` from local data into `out`, or say it must be forwarded or dropped.
    /// Never awaits and, for a `.consul` or zone answer, never allocates (`out` is reused).
    /// Times and counts the request itself (TCP, tests); the UDP worker uses
    /// [`Dispatcher::answer_untimed`] and counts a whole batch at once.
    pub fn answer_local(&self, packet: &[u8], proto: Proto, out: &mut Vec<u8>) -> Handled {
        let start = Instant::now();
        let (handled, served) = self.answer_untimed(packet, proto, out);
        if let Some(s) = served {
            self.metrics.record(proto, s.zone, s.rcode, start.elapsed());
        }
        handled
    }

    /// [`Dispatcher::answer_local`] without the clock and the metrics: the caller records
    /// what [`Served`] says. This is the hot path's whole user-space work: a parse, a route,
    /// two `ArcSwap` loads (lock-free: a thread-local debt slot, no mutex) and `memcpy`s into
    /// `out`. No task, no lock, no allocation once `out` has grown to its working size
    /// (checked by `tests/alloc.rs` with a counting allocator).
    pub fn answer_untimed(
        &self,
        packet: &[u8],
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> (Handled, Option<Served>) {
        // The query log (ops) wants a duration: read the clock only while it is on.
        let log_start = self
            .query_log
            .as_ref()
            .is_some_and(|l| l.enabled())
            .then(Instant::now);
        let query = match Query::parse(packet) {
            Ok(q) => q,
            Err(ParseError::Drop) => return (Handled::Drop, None),
            Err(ParseError::Unusual) => return self.answer_unusual(packet, proto, out),
            Err(e) => {
                let code = match e {
                    ParseError::NotImp => rcode::NOTIMP,
                    _ => rcode::FORMERR,
                };
                if !wire::header_only_response(out, packet, code) {
                    return (Handled::Drop, None);
                }
                let served = Served {
                    zone: Zone::Invalid,
                    rcode: code,
                };
                return (Handled::Answered, Some(served));
            }
        };
        let mut buf = [0u8; 256];
        let Some(name) = wire::dotted_lower(query.qname, &mut buf) else {
            return (Handled::Forward, None);
        };
        let local = self.local.load();
        let (route, rel) = local.router.route(name);
        let answered = match route {
            Route::Consul { domain } => {
                let table = self.table.load();
                match table.answer_or_remote(&query, rel, domain, proto, out) {
                    Answered::Done(outcome) => Some((Zone::Consul, outcome)),
                    // Another datacenter: its table when built, else the async path.
                    Answered::Remote(dc) => match &self.remotes {
                        Some(remotes) => remotes
                            .answer(&table, dc, &query, rel, domain, proto, out)
                            .map(|outcome| (Zone::Consul, outcome)),
                        None => Some((Zone::Consul, table.nxdomain(&query, domain, out))),
                    },
                    // A prepared query to fail over: the agent's `/execute`, on the async path.
                    Answered::Failover => match &self.failovers {
                        Some(_) => None,
                        None => Some((Zone::Consul, table.nxdomain(&query, domain, out))),
                    },
                }
            }
            Route::Zone { zone } => Some((Zone::Static, local.zones.answer(zone, &query, out))),
            // A reverse name the catalog knows is answered from it (§1.7); any other goes the
            // forwarder's way, where the hosts file may still know it.
            Route::Reverse => match self.table.load().answer_reverse(&query, name, out) {
                Some(outcome) => Some((Zone::Consul, outcome)),
                None => self.answer_before_forwarding(&local, name, &query, proto, out),
            },
            Route::Forward => self.answer_before_forwarding(&local, name, &query, proto, out),
        };
        let Some((zone, outcome)) = answered else {
            return (Handled::Forward, None);
        };
        if let Some(start) = log_start {
            self.log_query(name, query.qtype, proto, zone, outcome.rcode, start);
        }
        let served = Served {
            zone,
            rcode: outcome.rcode,
        };
        (Handled::Answered, Some(served))
    }

    /// Names for the forwarder, answered here when possible: the hosts file first (local data
    /// beats the upstream, as dnsmasq's /etc/hosts); then a fresh cache hit, written straight
    /// into `out` (no task, no lock, no hickory parsing); a loop-check probe of ours that came
    /// back through an upstream is recorded and refused instead of going round the loop.
    /// `None`: only an upstream can answer.
    fn answer_before_forwarding(
        &self,
        local: &Local,
        name: &[u8],
        query: &Query<'_>,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Option<(Zone, Outcome)> {
        if let Some(outcome) = local.zones.answer_hosts(name, query, out) {
            return Some((Zone::Static, outcome));
        }
        let forwarder = self.forwarder.load();
        if forwarder.answer_cached(query, proto, out) {
            let code = out.get(3).map_or(rcode::SERVFAIL, |b| b & 0x0F);
            return Some((Zone::Forward, Outcome { rcode: code }));
        }
        if forwarder.is_loop_probe(name) {
            wire::error_response(out, query, rcode::REFUSED);
            return Some((
                Zone::Forward,
                Outcome {
                    rcode: rcode::REFUSED,
                },
            ));
        }
        None
    }

    /// Forward `packet` (already checked by [`Dispatcher::answer_local`]) and return the reply.
    /// A name in another datacenter whose table is not built yet comes this way too: it waits
    /// for that datacenter's watch instead; and so does a prepared query to fail over, which
    /// waits for the agent's `/execute` ([`Dispatcher::answer_consul`]).
    pub async fn forward(&self, packet: &[u8], proto: Proto) -> Vec<u8> {
        let start = Instant::now();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(self);
        if let Some((reply, code)) = self.answer_consul(packet, proto).await {
            self.record_awaited(packet, proto, Zone::Consul, code, start);
            return reply;
        }
        let forwarder = self.forwarder.load_full();
        let reply = forwarder.resolve(packet, proto).await;
        let code = reply.get(3).map_or(rcode::SERVFAIL, |b| b & 0x0F);
        self.record_awaited(packet, proto, Zone::Forward, code, start);
        reply
    }

    /// Count an answer given on the async path, and log it if the query log is on.
    fn record_awaited(&self, packet: &[u8], proto: Proto, zone: Zone, code: u8, start: Instant) {
        self.metrics.record(proto, zone, code, start.elapsed());
        if self.query_log.as_ref().is_some_and(|l| l.enabled())
            && let Ok(query) = Query::parse(packet)
        {
            let mut buf = [0u8; 256];
            if let Some(name) = wire::dotted_lower(query.qname, &mut buf) {
                self.log_query(name, query.qtype, proto, zone, code, start);
            }
        }
    }

    /// The async path of a `.consul` name (DESIGN.md rule 1's two exceptions): a name in
    /// another datacenter waits for its watch (bounded by `remote::FIRST_WAIT`), then is
    /// answered from its table; NXDOMAIN for a datacenter the agent does not know, SERVFAIL
    /// when it cannot be answered now. A prepared query to fail over waits for `/execute`
    /// ([`Dispatcher::answer_failover`]). `None` for any other name.
    async fn answer_consul(&self, packet: &[u8], proto: Proto) -> Option<(Vec<u8>, u8)> {
        if self.remotes.is_none() && self.failovers.is_none() {
            return None;
        }
        let query = Query::parse(packet).ok()?;
        let mut buf = [0u8; 256];
        let name = wire::dotted_lower(query.qname, &mut buf)?;
        let (route, rel) = self.local.load_full().router.route(name);
        let Route::Consul { domain } = route else {
            return None;
        };
        // Owned loads: the guards of `load()` must not be held across the wait.
        let table = self.table.load_full();
        let mut out = Vec::with_capacity(512);
        let dc = match table.answer_or_remote(&query, rel, domain, proto, &mut out) {
            Answered::Done(outcome) => return Some((out, outcome.rcode)),
            Answered::Remote(dc) => dc,
            Answered::Failover => {
                let outcome = self
                    .answer_failover(&table, &query, rel, domain, proto, &mut out)
                    .await;
                return Some((out, outcome.rcode));
            }
        };
        let Some(remotes) = &self.remotes else {
            let code = table.nxdomain(&query, domain, &mut out).rcode;
            return Some((out, code));
        };
        let outcome = match remotes.resolve(dc).await {
            Remote::Table(remote) => remote
                .load_full()
                .answer(&query, rel, domain, proto, &mut out),
            Remote::Unknown => table.nxdomain(&query, domain, &mut out),
            Remote::Unavailable => {
                wire::error_response(&mut out, &query, rcode::SERVFAIL);
                Outcome {
                    rcode: rcode::SERVFAIL,
                }
            }
        };
        Some((out, outcome.rcode))
    }

    /// A prepared query with no local instance and failover targets: answered from the
    /// agent's `/execute` (coalesced, cached, bounded by `failover::EXECUTE_WAIT`), in the
    /// datacenter that answered; NXDOMAIN when none did, SERVFAIL when the agent could not
    /// say in time.
    async fn answer_failover(
        &self,
        table: &AnswerTable,
        query: &Query<'_>,
        rel: &[u8],
        domain: usize,
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let (Some(failovers), Some(target)) =
            (&self.failovers, table.failover_target(query, rel, domain))
        else {
            return table.nxdomain(query, domain, out);
        };
        match failovers.resolve(&target.key).await {
            Failover::Answer(executed) => table.answer_executed(
                query,
                domain,
                proto,
                &executed.datacenter,
                &executed.nodes,
                executed.ttl.unwrap_or(target.ttl),
                out,
            ),
            Failover::Empty => table.nxdomain(query, domain, out),
            Failover::Unavailable => {
                wire::error_response(out, query, rcode::SERVFAIL);
                Outcome {
                    rcode: rcode::SERVFAIL,
                }
            }
        }
    }

    /// A valid message the fast reader does not take (several questions, extra records, a
    /// compressed question name): rebuilt as a plain query and answered the usual way. More
    /// or fewer than one question is FORMERR, as in Consul (miekg's accept function).
    fn answer_unusual(
        &self,
        packet: &[u8],
        proto: Proto,
        out: &mut Vec<u8>,
    ) -> (Handled, Option<Served>) {
        let Ok(message) = Message::from_vec(packet) else {
            return format_error(packet, out);
        };
        if message.queries.len() != 1 || !message.answers.is_empty() {
            return format_error(packet, out);
        }
        let mut clean = Message::query();
        clean.metadata = message.metadata;
        clean.add_query(message.queries[0].clone());
        clean.edns = message.edns.clone();
        let Ok(bytes) = clean.to_vec() else {
            return format_error(packet, out);
        };
        match Query::parse(&bytes) {
            Ok(_) => self.answer_untimed(&bytes, proto, out),
            Err(_) => format_error(packet, out),
        }
    }
}

/// FORMERR with the header only, or nothing for a packet without a readable header.
fn format_error(packet: &[u8], out: &mut Vec<u8>) -> (Handled, Option<Served>) {
    if wire::header_only_response(out, packet, rcode::FORMERR) {
        let served = Served {
            zone: Zone::Invalid,
            rcode: rcode::FORMERR,
        };
        (Handled::Answered, Some(served))
    } else {
        (Handled::Drop, None)
    }
}
