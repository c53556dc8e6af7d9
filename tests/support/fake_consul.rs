//! A fake Consul agent for tests: the HTTP API signpost reads, with real blocking queries,
//! Consul's headers and index rules, connection counting and fault injection.
//!
//! What it mirrors (`reference/consul-dns.md` §7): a global Raft-like index bumped by every
//! write; per-service indexes (last write touching the service, including node changes and node
//! checks of nodes hosting it); `/v1/catalog/services` moving on registration changes only;
//! `/v1/health/state/any` on check changes; `/v1/catalog/nodes` on node changes. A request with
//! `index=N` is held until the relevant index passes N or `wait` (plus up to wait/16) elapses.
//! `X-Consul-Index` is never 0.
//!
//! Other datacenters: [`FakeConsul::in_dc`] gives a handle whose writes go to that
//! datacenter's own catalog (own indexes); `?dc=` picks the catalog a read sees (none: the
//! agent's `dc1`), `/v1/catalog/datacenters` lists them, and an unknown `dc` is answered as
//! Consul does: `500 No path to datacenter`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Consul's default `wait` and its cap (`default_query_time`, `max_query_time`).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A running fake agent on `127.0.0.1:<random port>`; stops when dropped.
pub struct FakeConsul {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; `None` while stopped (and in an [`FakeConsul::in_dc`] handle).
    task: Option<JoinHandle<()>>,
    /// The datacenter this handle writes to and counts requests of; `None`: the agent's own
    /// (and requests of every datacenter are counted).
    dc: Option<String>,
}

/// Which requests a fault replaces.
#[derive(Clone, Debug)]
enum Target {
    /// Any endpoint but `self`.
    Any,
    Endpoint(&'static str),
    /// `/v1/health/service/<name>`.
    Service(String),
}

/// A failure to serve instead of the next matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An HTTP status with a plain-text body, e.g. `500 No cluster leader`.
    Status(u16, String),
    /// `200` with a body that is not JSON.
    Malformed,
    /// Never answer (until the client gives up).
    Hang,
    /// Send the headers and part of the body, then close the connection.
    CloseMidBody,
}

struct Shared {
    state: Mutex<Catalog>,
    changed: watch::Sender<u64>,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests per (`dc` parameter, endpoint), for requests that carried one.
    dc_requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    conns_now: AtomicUsize,
    conns_max: AtomicUsize,
    /// Concurrent connections beyond this get a raw 429 and are closed, like the agent's
    /// `limits.http_max_conns_per_client`; 0 = no limit.
    conn_limit: AtomicUsize,
    rejected: AtomicUsize,
    /// A duplicate of every open connection's socket, so that [`FakeConsul::stop`] can shut
    /// them all down; removed when the connection closes.
    sockets: Mutex<BTreeMap<u64, socket2::Socket>>,
    next_conn: AtomicU64,
    /// `X-Consul-Token` values seen.
    tokens: Mutex<BTreeSet<String>>,
    /// When set, requests without this token get `403 ACL not found`.
    required_token: Mutex<Option<String>>,
    /// Per path of answered reads: (when received, when its body was rendered) of the last
    /// few answers, so that a benchmark can tell the agent's own time from its client's.
    answered: Mutex<HashMap<String, VecDeque<(Instant, Instant)>>>,
}

#[derive(Default)]
struct Catalog {
    index: u64,
    datacenter: String,
    node_name: String,
    nodes: BTreeMap<String, NodeRec>,
    /// (node, service ID) → instance.
    instances: BTreeMap<(String, String), Instance>,
    /// Service name → keys of its instances, so that a service is rendered without a scan.
    by_service: BTreeMap<String, BTreeSet<(String, String)>>,
    /// (node, check ID) → check.
    checks: BTreeMap<(String, String), CheckRec>,
    service_index: BTreeMap<String, u64>,
    services_index: u64,
    health_index: u64,
    nodes_index: u64,
    queries: Vec<Value>,
    queries_index: u64,
    faults: VecDeque<(Target, Fault)>,
    /// Other datacenters' catalogs, by name (only in the agent's own).
    others: BTreeMap<String, Catalog>,
}

struct NodeRec {
    address: String,
    meta: BTreeMap<String, String>,
    index: u64,
}

struct Instance {
    service: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    index: u64,
}

#[derive(Clone)]
struct CheckRec {
    service_id: String,
    service_name: String,
    status: String,
    index: u64,
}

/// Query parameters the fake understands.
#[derive(Default)]
struct Params {
    index: u64,
    wait: Option<Duration>,
    passing: bool,
    dc: Option<String>,
}

/// A listener that counts open connections and rejects those over the limit.
struct CountingListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

/// A connection that decrements the open count when dropped.
struct CountedStream {
    inner: TcpStream,
    shared: Arc<Shared>,
    id: u64,
}

// === impl FakeConsul ===

impl FakeConsul {
    /// Start an agent for datacenter `dc1` on node `agent-node`.
    pub async fn start() -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake consul");
        let addr = listener.local_addr().expect("local addr");
        let (changed, _) = watch::channel(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(Catalog {
                index: 1,
                datacenter: "dc1".into(),
                node_name: "agent-node".into(),
                ..Catalog::default()
            }),
            changed,
            requests: Mutex::new(BTreeMap::new()),
            dc_requests: Mutex::new(BTreeMap::new()),
            answered: Mutex::new(HashMap::new()),
            conns_now: AtomicUsize::new(0),
            conns_max: AtomicUsize::new(0),
            conn_limit: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            sockets: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            tokens: Mutex::new(BTreeSet::new()),
            required_token: Mutex::new(None),
        });
        let task = Some(serve(listener, shared.clone()));
        FakeConsul {
            addr,
            shared,
            task,
            dc: None,
        }
    }

    /// A handle on datacenter `dc` of this agent, created (empty) if new: its writes
    /// (`register`, `set_check`, ...) go to that datacenter and [`FakeConsul::requests`]
    /// counts the requests that asked for it with `?dc=`. Dropping it stops nothing.
    pub fn in_dc(&self, dc: &str) -> FakeConsul {
        {
            let mut st = self.shared.lock();
            if st.datacenter != dc {
                st.others.entry(dc.to_string()).or_insert_with(|| Catalog {
                    index: 1,
                    datacenter: dc.to_string(),
                    ..Catalog::default()
                });
            }
        }
        FakeConsul {
            addr: self.addr,
            shared: self.shared.clone(),
            task: None,
            dc: Some(dc.to_string()),
        }
    }

    /// The agent goes down: the listener closes (connecting is refused) and every open
    /// connection is shut down, held blocking queries included. The catalog is kept.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let sockets = std::mem::take(
            &mut *self
                .shared
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for socket in sockets.values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The agent comes back on the same port with the same catalog.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("rebind the fake consul port");
        self.task = Some(serve(listener, self.shared.clone()));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn write(&self, f: impl FnOnce(&mut Catalog, u64)) {
        let index = {
            let mut guard = self.shared.lock();
            let Some(st) = guard.pick_mut(self.dc.as_deref()) else {
                panic!("no datacenter {:?} in the fake agent", self.dc);
            };
            st.index += 1;
            let i = st.index;
            f(st, i);
            i
        };
        self.shared.changed.send_replace(index);
    }

    /// Register an instance with a passing service check `service:<id>`; the node is created
    /// (with a passing `serfHealth`) when new. Returns the service ID (`<service>-<port>`).
    pub fn register(
        &self,
        service: &str,
        node: &str,
        node_addr: &str,
        service_addr: &str,
        port: u16,
        tags: &[&str],
    ) -> String {
        self.register_inner(service, node, node_addr, service_addr, port, tags, true)
    }

    /// Like [`FakeConsul::register`] without any service check, so that only
    /// `/v1/catalog/services` moves.
    pub fn register_unchecked(
        &self,
        service: &str,
        node: &str,
        node_addr: &str,
        port: u16,
    ) -> String {
        self.register_inner(service, node, node_addr, "", port, &[], false)
    }

    #[allow(clippy::too_many_arguments)]
    fn register_inner(
        &self,
        service: &str,
        node: &str,
        node_addr: &str,
        service_addr: &str,
        port: u16,
        tags: &[&str],
        with_check: bool,
    ) -> String {
        let id = format!("{service}-{port}");
        self.write(|st, i| {
            st.ensure_node(node, node_addr, i);
            let inst = Instance {
                service: service.into(),
                address: service_addr.into(),
                port,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                index: i,
            };
            st.insert_instance(node, &id, inst);
            if with_check {
                let check = CheckRec {
                    service_id: id.clone(),
                    service_name: service.into(),
                    status: "passing".into(),
                    index: i,
                };
                st.checks
                    .insert((node.into(), format!("service:{id}")), check);
                st.health_index = i;
            }
            st.service_index.insert(service.into(), i);
            st.services_index = i;
        });
        id
    }

    /// Register many services in one write (one index), one instance each on node `n1`.
    pub fn register_many(&self, count: usize, port: u16) {
        self.write(|st, i| {
            st.ensure_node("n1", "10.0.0.1", i);
            for k in 0..count {
                let service = format!("svc{k:05}");
                let id = format!("{service}-{port}");
                let inst = Instance {
                    service: service.clone(),
                    address: String::new(),
                    port,
                    tags: vec![],
                    index: i,
                };
                st.insert_instance("n1", &id, inst);
                let check = CheckRec {
                    service_id: id.clone(),
                    service_name: service.clone(),
                    status: "passing".into(),
                    index: i,
                };
                st.checks
                    .insert(("n1".into(), format!("service:{id}")), check);
                st.service_index.insert(service, i);
            }
            st.health_index = i;
            st.services_index = i;
        });
    }

    /// Register `services` services (`s00000`, ...) with `per_service` instances each, spread
    /// over `nodes` nodes (`node0000`, ... at 10.x.y.z), every instance with a passing service
    /// check, in one write. For benchmarks: instance `k` of service `s` is on node
    /// `(s * per_service + k) % nodes` and has ID `s<s>-<k>`.
    pub fn register_bulk(&self, services: usize, per_service: usize, nodes: usize) {
        self.write(|st, i| {
            for n in 0..nodes {
                let addr = format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256);
                st.ensure_node(&bulk_node(n), &addr, i);
            }
            for s in 0..services {
                let service = format!("s{s:05}");
                for k in 0..per_service {
                    let node = bulk_node((s * per_service + k) % nodes);
                    let id = format!("{service}-{k}");
                    let inst = Instance {
                        service: service.clone(),
                        address: String::new(),
                        port: 8000 + k as u16,
                        tags: vec!["v1".into()],
                        index: i,
                    };
                    st.insert_instance(&node, &id, inst);
                    let check = CheckRec {
                        service_id: id.clone(),
                        service_name: service.clone(),
                        status: "passing".into(),
                        index: i,
                    };
                    st.checks.insert((node, format!("service:{id}")), check);
                }
                st.service_index.insert(service, i);
            }
            st.health_index = i;
            st.services_index = i;
        });
    }

    /// Set several service checks `(node, service ID, status)` in one write (one index).
    pub fn set_checks(&self, changes: &[(&str, &str, &str)]) {
        self.write(|st, i| {
            for (node, service_id, status) in changes {
                let key = (node.to_string(), format!("service:{service_id}"));
                if let Some(c) = st.checks.get_mut(&key) {
                    c.status = status.to_string();
                    c.index = i;
                }
                let service = st
                    .instances
                    .get(&(node.to_string(), service_id.to_string()))
                    .map(|inst| inst.service.clone());
                if let Some(service) = service {
                    st.service_index.insert(service, i);
                }
            }
            st.health_index = i;
        });
    }

    /// Remove an instance and its checks.
    pub fn deregister(&self, node: &str, service_id: &str) {
        self.deregister_all(&[(node, service_id)]);
    }

    /// Remove several instances `(node, service ID)` and their checks in one write (one index).
    pub fn deregister_all(&self, instances: &[(&str, &str)]) {
        self.write(|st, i| {
            for (node, service_id) in instances {
                let Some(inst) = st.remove_instance(node, service_id) else {
                    continue;
                };
                st.checks
                    .retain(|(n, _), c| !(n == node && c.service_id == *service_id));
                st.service_index.insert(inst.service, i);
            }
            st.services_index = i;
            st.health_index = i;
        });
    }

    /// Set a check's status: the service check of `service_id`, or the node's `serfHealth`
    /// when `service_id` is "".
    pub fn set_check(&self, node: &str, service_id: &str, status: &str) {
        self.write(|st, i| {
            let check_id = if service_id.is_empty() {
                "serfHealth".to_string()
            } else {
                format!("service:{service_id}")
            };
            if let Some(c) = st.checks.get_mut(&(node.to_string(), check_id)) {
                c.status = status.into();
                c.index = i;
            }
            st.health_index = i;
            let touched = if service_id.is_empty() {
                st.services_on(node)
            } else {
                st.instances
                    .get(&(node.to_string(), service_id.to_string()))
                    .map(|inst| BTreeSet::from([inst.service.clone()]))
                    .unwrap_or_default()
            };
            for s in touched {
                st.service_index.insert(s, i);
            }
        });
    }

    /// Set one node meta key.
    pub fn set_node_meta(&self, node: &str, key: &str, value: &str) {
        self.write(|st, i| {
            if let Some(n) = st.nodes.get_mut(node) {
                n.meta.insert(key.into(), value.into());
                n.index = i;
            }
            st.nodes_index = i;
            for s in st.services_on(node) {
                st.service_index.insert(s, i);
            }
        });
    }

    /// Add a prepared query definition (as `GET /v1/query` lists it).
    pub fn add_query(&self, query: Value) {
        self.write(|st, i| {
            st.queries.push(query);
            st.queries_index = i;
        });
    }

    /// Move every index back to `to`, as after a snapshot restore: watchers holding a higher
    /// index see it go backwards.
    pub fn reset_index(&self, to: u64) {
        let to = to.max(1);
        {
            let mut st = self.shared.lock();
            st.index = to;
            for i in st.service_index.values_mut() {
                *i = (*i).min(to);
            }
            st.services_index = st.services_index.min(to);
            st.health_index = st.health_index.min(to);
            st.nodes_index = st.nodes_index.min(to);
            st.queries_index = st.queries_index.min(to);
        }
        self.shared.changed.send_replace(to);
    }

    /// The current global index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// Serve `fault` instead of the next request to `endpoint` (see [`FakeConsul::requests`]
    /// for names), or to any endpoint but `self` when `None`.
    pub fn inject(&self, endpoint: Option<&'static str>, fault: Fault) {
        let target = endpoint.map_or(Target::Any, Target::Endpoint);
        self.shared.lock().faults.push_back((target, fault));
    }

    /// Serve `fault` instead of the next `/v1/health/service/<service>`.
    pub fn inject_service(&self, service: &str, fault: Fault) {
        let target = Target::Service(service.to_string());
        self.shared.lock().faults.push_back((target, fault));
    }

    /// Answer `403 ACL not found` to requests without `X-Consul-Token: <token>`.
    pub fn require_token(&self, token: Option<&str>) {
        *self
            .shared
            .required_token
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = token.map(str::to_string);
    }

    /// Every `X-Consul-Token` value received.
    pub fn tokens_seen(&self) -> BTreeSet<String> {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests served per endpoint, all endpoints.
    /// (received, body rendered) of the last answers (up to 64) to reads of `path`, oldest
    /// first. A blocking read that waited counts from the write that released it.
    pub fn answers(&self, path: &str) -> Vec<(Instant, Instant)> {
        self.shared
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn all_requests(&self) -> BTreeMap<&'static str, u64> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Faults injected and not served yet.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.len()
    }

    /// Reject connections beyond `limit` open at once with a raw 429; 0 = no limit.
    pub fn set_connection_limit(&self, limit: usize) {
        self.shared.conn_limit.store(limit, Ordering::SeqCst);
    }

    /// Requests served per endpoint: self, services, health_state, health_service, nodes,
    /// query, execute, datacenters, other.
    /// On an [`FakeConsul::in_dc`] handle: only the requests that asked for its datacenter.
    pub fn requests(&self, endpoint: &str) -> u64 {
        if let Some(dc) = &self.dc {
            let map = self
                .shared
                .dc_requests
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            return map
                .iter()
                .filter(|((d, ep), _)| d == dc && *ep == endpoint)
                .map(|(_, n)| n)
                .sum();
        }
        let map = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(endpoint).copied().unwrap_or(0)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.conns_now.load(Ordering::SeqCst)
    }

    /// Most connections open at once since start.
    pub fn max_connections(&self) -> usize {
        self.shared.conns_max.load(Ordering::SeqCst)
    }

    /// Connections rejected with 429 by the connection limit.
    pub fn rejected_connections(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Serve `shared` on `listener` until aborted.
fn serve(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let listener = CountingListener {
        inner: listener,
        shared,
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Catalog> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, endpoint: &'static str, dc: Option<&str>) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(endpoint).or_default() += 1;
        if let Some(dc) = dc {
            let mut map = self.dc_requests.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry((dc.to_string(), endpoint)).or_default() += 1;
        }
    }

    fn take_fault(&self, endpoint: &'static str, path: &str) -> Option<Fault> {
        let mut st = self.lock();
        let service = path.strip_prefix("/v1/health/service/").map(percent_decode);
        let pos = st.faults.iter().position(|(target, _)| match target {
            Target::Endpoint(ep) => *ep == endpoint,
            Target::Any => endpoint != "self",
            Target::Service(name) => service.as_deref() == Some(name.as_str()),
        })?;
        st.faults.remove(pos).map(|(_, f)| f)
    }
}

// === impl Catalog ===

impl Catalog {
    /// The catalog of datacenter `dc` (`None`: this agent's own); `None` if unknown.
    fn pick(&self, dc: Option<&str>) -> Option<&Catalog> {
        match dc {
            None => Some(self),
            Some(dc) if dc == self.datacenter => Some(self),
            Some(dc) => self.others.get(dc),
        }
    }

    fn pick_mut(&mut self, dc: Option<&str>) -> Option<&mut Catalog> {
        match dc {
            None => Some(self),
            Some(dc) if dc == self.datacenter => Some(self),
            Some(dc) => self.others.get_mut(dc),
        }
    }

    fn insert_instance(&mut self, node: &str, id: &str, inst: Instance) {
        self.remove_instance(node, id);
        let key = (node.to_string(), id.to_string());
        self.by_service
            .entry(inst.service.clone())
            .or_default()
            .insert(key.clone());
        self.instances.insert(key, inst);
    }

    fn remove_instance(&mut self, node: &str, id: &str) -> Option<Instance> {
        let key = (node.to_string(), id.to_string());
        let inst = self.instances.remove(&key)?;
        if let Some(keys) = self.by_service.get_mut(&inst.service) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_service.remove(&inst.service);
            }
        }
        Some(inst)
    }

    /// The checks of `node`, node checks and service checks.
    fn checks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (&'a str, &'a CheckRec)> {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|((_, id), c)| (id.as_str(), c))
    }

    fn ensure_node(&mut self, node: &str, address: &str, i: u64) {
        let changed = self.nodes.get(node).is_none_or(|n| n.address != address);
        if !changed {
            return;
        }
        let meta = BTreeMap::from([("consul-network-segment".to_string(), String::new())]);
        self.nodes.insert(
            node.into(),
            NodeRec {
                address: address.into(),
                meta,
                index: i,
            },
        );
        self.nodes_index = i;
        let serf = (node.to_string(), "serfHealth".to_string());
        if let std::collections::btree_map::Entry::Vacant(slot) = self.checks.entry(serf) {
            slot.insert(CheckRec {
                service_id: String::new(),
                service_name: String::new(),
                status: "passing".into(),
                index: i,
            });
            self.health_index = i;
        }
        for s in self.services_on(node) {
            self.service_index.insert(s, i);
        }
    }

    fn services_on(&self, node: &str) -> BTreeSet<String> {
        self.instances
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, inst)| inst.service.clone())
            .collect()
    }

    fn node_json(&self, name: &str) -> Value {
        let (address, meta, index) = match self.nodes.get(name) {
            Some(n) => (n.address.as_str(), json!(n.meta), n.index),
            None => ("", Value::Null, 1),
        };
        // Agents tag their node address by family: lan_ipv4/wan_ipv4 or lan_ipv6/wan_ipv6.
        let tagged = if address.contains(':') {
            json!({"lan": address, "lan_ipv6": address, "wan": address, "wan_ipv6": address})
        } else {
            json!({"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address})
        };
        json!({
            "ID": format!("id-{name}"), "Node": name, "Address": address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": tagged,
            "Meta": meta, "CreateIndex": index, "ModifyIndex": index,
        })
    }

    fn check_json(node: &str, check_id: &str, c: &CheckRec) -> Value {
        json!({
            "Node": node, "CheckID": check_id, "Name": check_id, "Status": c.status,
            "Notes": "", "Output": "", "ServiceID": c.service_id, "ServiceName": c.service_name,
            "ServiceTags": [], "Type": "", "CreateIndex": c.index, "ModifyIndex": c.index,
        })
    }

    fn health_service(&self, name: &str, passing: bool) -> Value {
        let mut out = Vec::new();
        for (node, id) in self.by_service.get(name).into_iter().flatten() {
            let Some(inst) = self.instances.get(&(node.clone(), id.clone())) else {
                continue;
            };
            let checks: Vec<Value> = self
                .checks_on(node)
                .filter(|(_, c)| c.service_id.is_empty() || c.service_id == *id)
                .map(|(cid, c)| Catalog::check_json(node, cid, c))
                .collect();
            if passing && checks.iter().any(|c| c["Status"] != "passing") {
                continue;
            }
            let mut service = json!({
                "ID": id, "Service": inst.service, "Tags": inst.tags, "Address": inst.address,
                "Meta": {}, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                "CreateIndex": inst.index, "ModifyIndex": inst.index,
            });
            // Consul omits Port when it is 0.
            if inst.port != 0 {
                service["Port"] = json!(inst.port);
            }
            out.push(json!({"Node": self.node_json(node), "Service": service, "Checks": checks}));
        }
        Value::Array(out)
    }

    /// `GET /v1/query/<id or name>/execute` (§6.3, §6.4): the query's service here, with its
    /// health and tag filters; when nothing answers, each of `Failover.Datacenters` in order,
    /// the first with an answer winning. `Failovers` counts the datacenters tried.
    fn execute(&self, path: &str) -> Response {
        let key = path
            .strip_prefix("/v1/query/")
            .and_then(|p| p.strip_suffix("/execute"))
            .map(percent_decode)
            .unwrap_or_default();
        let found = self
            .queries
            .iter()
            .find(|q| q["ID"] == key.as_str())
            .or_else(|| self.queries.iter().find(|q| q["Name"] == key.as_str()));
        let Some(query) = found else {
            return plain(StatusCode::NOT_FOUND, "Query not found");
        };
        let service = &query["Service"];
        let name = service["Service"].as_str().unwrap_or("");
        let failover: Vec<&str> = service["Failover"]["Datacenters"]
            .as_array()
            .map(|dcs| dcs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut answered = (self.datacenter.as_str(), self.selected(name, service));
        let mut tried = 0;
        for dc in failover {
            if !answered.1.is_empty() {
                break;
            }
            let Some(other) = self.others.get(dc) else {
                continue;
            };
            tried += 1;
            answered = (dc, other.selected(name, service));
        }
        let (dc, nodes) = answered;
        let ttl = query["DNS"]["TTL"].as_str().unwrap_or("");
        let body = json!({
            "Service": name, "Nodes": nodes, "DNS": {"TTL": ttl},
            "Datacenter": dc, "Failovers": tried, "Index": self.index,
        });
        json_response(body.to_string(), self.index)
    }

    /// The instances of `name` a query's `Service` block selects here: critical out (and,
    /// with `OnlyPassing`, warning too), every `Tags` entry present, no `!tag` present.
    fn selected(&self, name: &str, service: &Value) -> Vec<Value> {
        let only_passing = service["OnlyPassing"].as_bool().unwrap_or(false);
        let tags: Vec<String> = service["Tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        let Value::Array(entries) = self.health_service(name, false) else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter(|e| {
                let statuses: Vec<&str> = e["Checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["Status"].as_str())
                    .collect();
                let healthy = if only_passing {
                    statuses.iter().all(|s| *s == "passing")
                } else {
                    !statuses.contains(&"critical")
                };
                let has: Vec<String> = e["Service"]["Tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_lowercase))
                    .collect();
                let tagged = tags.iter().all(|t| match t.strip_prefix('!') {
                    Some(not) => !has.iter().any(|h| h == not),
                    None => has.contains(t),
                });
                healthy && tagged
            })
            .collect()
    }

    fn service_index(&self, name: &str) -> u64 {
        // A missing service answers with the services table index, like Consul's
        // "service extinction" index.
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index)
    }

    /// The index a blocking query on `endpoint` waits on; `None` for an unknown path.
    fn index_of(&self, endpoint: &str, path: &str) -> Option<u64> {
        Some(match endpoint {
            "self" => self.index,
            "services" => self.services_index,
            "health_state" => self.health_index,
            "nodes" => self.nodes_index,
            "health_service" => {
                let name = path.strip_prefix("/v1/health/service/")?;
                self.service_index(&percent_decode(name))
            }
            "query" => self.queries_index,
            "datacenters" => self.index,
            _ => return None,
        })
    }

    /// The body of `endpoint`; only built once the index says the request returns.
    fn body(&self, endpoint: &str, path: &str, params: &Params) -> Value {
        match endpoint {
            "self" => json!({"Config": {"Datacenter": self.datacenter, "NodeName": self.node_name,
                    "Server": false, "Version": "1.20.0"}, "Member": {}, "Meta": {}}),
            "services" => {
                let map: BTreeMap<&str, BTreeSet<&str>> = self
                    .by_service
                    .iter()
                    .map(|(name, keys)| {
                        let tags = keys
                            .iter()
                            .filter_map(|k| self.instances.get(k))
                            .flat_map(|inst| inst.tags.iter().map(String::as_str))
                            .collect();
                        (name.as_str(), tags)
                    })
                    .collect();
                json!(map)
            }
            // "health_state" is rendered outside the lock: see `render_checks`.
            "nodes" => Value::Array(self.nodes.keys().map(|n| self.node_json(n)).collect()),
            "health_service" => {
                let name = path.strip_prefix("/v1/health/service/").unwrap_or("");
                self.health_service(&percent_decode(name), params.passing)
            }
            "query" => Value::Array(self.queries.clone()),
            "datacenters" => {
                let names = std::iter::once(&self.datacenter).chain(self.others.keys());
                Value::Array(names.map(|n| json!(n)).collect())
            }
            _ => Value::Null,
        }
    }
}

// === impl CountingListener ===

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            let Ok((mut stream, addr)) = self.inner.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let now = self.shared.conns_now.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.conns_max.fetch_max(now, Ordering::SeqCst);
            let limit = self.shared.conn_limit.load(Ordering::SeqCst);
            if limit > 0 && now > limit {
                // Like the agent's connection limiter: a raw 429, then close.
                self.shared.conns_now.fetch_sub(1, Ordering::SeqCst);
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let body = "Your IP is issuing too many concurrent connections, please rate limit your calls\n";
                    let resp = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
                continue;
            }
            let id = self.shared.next_conn.fetch_add(1, Ordering::SeqCst);
            if let Ok(dup) = socket2::SockRef::from(&stream).try_clone() {
                let mut sockets = self
                    .shared
                    .sockets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                sockets.insert(id, dup);
            }
            let stream = CountedStream {
                inner: stream,
                shared: self.shared.clone(),
                id,
            };
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

// === impl CountedStream ===

impl Drop for CountedStream {
    fn drop(&mut self) {
        // The duplicate goes first: while it is open the socket would outlive this stream.
        let dup = self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        drop(dup);
        self.shared.conns_now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === the handler ===

/// A body read under the lock: text, or the checks to render after it.
enum Rendered {
    Text(String),
    Checks(BTreeMap<(String, String), CheckRec>),
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let path = uri.path().to_string();
    let endpoint = endpoint(&path);
    let params = parse_params(uri.query().unwrap_or(""));
    shared.count(endpoint, params.dc.as_deref());
    let token = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(t) = &token {
        shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t.clone());
    }
    let required = shared
        .required_token
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if required.is_some() && required != token {
        return plain(StatusCode::FORBIDDEN, "ACL not found");
    }
    if let Some(fault) = shared.take_fault(endpoint, &path) {
        return fault_response(fault).await;
    }
    let dc = params.dc.as_deref();
    if endpoint == "execute" {
        return shared.lock().execute(&path);
    }
    if shared.lock().pick(dc).is_none() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    // Subscribe before the first read so that no write between the read and the wait is missed.
    let mut changed = shared.changed.subscribe();
    let wait = params.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let jitter_ms = wait.as_millis() as u64 / 16;
    let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
    let deadline = Instant::now() + wait + jitter;
    let mut received = Instant::now();
    loop {
        let rendered = {
            let guard = shared.lock();
            // Datacenters are only added, so the one checked above is still there.
            let st = guard.pick(dc).unwrap_or(&*guard);
            st.index_of(endpoint, &path).map(|index| {
                let blocking = params.index > 0 && endpoint != "self" && endpoint != "query";
                let returns = !blocking || index > params.index || Instant::now() >= deadline;
                // Read under the lock, so that body and index always agree. The 20,000-check
                // list is copied under the lock and rendered after it, as the agent serves
                // reads from a snapshot: rendering it under the lock held every other read
                // (a service fetch) up for as long, which is not the agent's behaviour.
                let body = returns.then(|| {
                    if endpoint == "health_state" {
                        Rendered::Checks(st.checks.clone())
                    } else {
                        Rendered::Text(st.body(endpoint, &path, &params).to_string())
                    }
                });
                (body, index)
            })
        };
        let rendered = rendered.map(|(body, index)| {
            let body = body.map(|b| match b {
                Rendered::Text(text) => text,
                Rendered::Checks(checks) => render_checks(&checks),
            });
            (body, index)
        });
        match rendered {
            None => return plain(StatusCode::NOT_FOUND, "Not found"),
            Some((Some(body), index)) => {
                let mut answered = shared.answered.lock().unwrap_or_else(|e| e.into_inner());
                let log = answered.entry(path).or_default();
                if log.len() >= 64 {
                    log.pop_front();
                }
                log.push_back((received, Instant::now()));
                return json_response(body, index);
            }
            Some((None, _)) => {}
        }
        let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
        received = Instant::now();
    }
}

/// The `/v1/health/state/any` body, written straight from the records (the same fields as
/// [`Catalog::check_json`]): building a `Value` per check first took ~50 ms of a benchmark's
/// shared core per change at 15,000 checks, which the agent's Go encoder does not spend.
fn render_checks(checks: &BTreeMap<(String, String), CheckRec>) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Out<'a> {
        node: &'a str,
        #[serde(rename = "CheckID")]
        check_id: &'a str,
        name: &'a str,
        status: &'a str,
        notes: &'a str,
        output: &'a str,
        #[serde(rename = "ServiceID")]
        service_id: &'a str,
        service_name: &'a str,
        service_tags: [&'a str; 0],
        #[serde(rename = "Type")]
        kind: &'a str,
        create_index: u64,
        modify_index: u64,
    }
    let out: Vec<Out<'_>> = checks
        .iter()
        .map(|((node, id), c)| Out {
            node,
            check_id: id,
            name: id,
            status: &c.status,
            notes: "",
            output: "",
            service_id: &c.service_id,
            service_name: &c.service_name,
            service_tags: [],
            kind: "",
            create_index: c.index,
            modify_index: c.index,
        })
        .collect();
    serde_json::to_string(&out).unwrap_or_default()
}

fn endpoint(path: &str) -> &'static str {
    match path {
        "/v1/agent/self" => "self",
        "/v1/catalog/services" => "services",
        "/v1/catalog/nodes" => "nodes",
        "/v1/catalog/datacenters" => "datacenters",
        "/v1/health/state/any" => "health_state",
        "/v1/query" => "query",
        p if p.starts_with("/v1/health/service/") => "health_service",
        p if p.starts_with("/v1/query/") && p.ends_with("/execute") => "execute",
        _ => "other",
    }
}

fn consul_headers(
    builder: axum::http::response::Builder,
    index: u64,
) -> axum::http::response::Builder {
    builder
        .header("X-Consul-Index", index.max(1).to_string())
        .header("X-Consul-KnownLeader", "true")
        .header("X-Consul-LastContact", "0")
        .header("X-Consul-Effective-Consistency", "stale")
}

fn json_response(body: String, index: u64) -> Response {
    let builder = consul_headers(Response::builder(), index)
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

fn plain(status: StatusCode, body: &str) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::Status(code, body) => plain(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        ),
        Fault::Malformed => consul_headers(Response::builder(), 1)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"web\": [ {\"Node\": "))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response")),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            plain(StatusCode::INTERNAL_SERVER_ERROR, "hung")
        }
        // A Content-Length longer than the body: hyper sends what it has and closes the
        // connection, which the client sees as a body cut short.
        Fault::CloseMidBody => consul_headers(Response::builder(), 1)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "1000")
            .body(Body::from("[{\"Node\": {"))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response")),
    }
}

fn bulk_node(n: usize) -> String {
    format!("node{n:04}")
}

fn parse_params(query: &str) -> Params {
    let mut params = Params::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "index" => params.index = value.parse().unwrap_or(0),
            // The same Go-duration reader signpost uses for prepared-query TTLs.
            "wait" => params.wait = signpost::consul::query::parse_go_duration(value),
            "passing" => params.passing = value != "false" && value != "0",
            "dc" => params.dc = Some(percent_decode(value)),
            _ => {}
        }
    }
    params
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s.get(i + 1..i + 3).filter(|_| bytes[i] == b'%');
        if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
