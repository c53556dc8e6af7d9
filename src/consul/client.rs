//! HTTP client for the Consul agent: one connection pool, a bounded number of requests in
//! flight, `?stale` on every read, and errors sorted into a few bounded reasons.
//!
//! Every request signpost sends to the agent goes through [`Client::get_json`], which takes a
//! permit from a semaphore sized `consul.max_connections` for the whole request, body included.
//! Plain HTTP/1.1 has one request per connection at a time, so the permits bound the agent
//! connections signpost keeps busy whatever the number of services: the agent's
//! `limits.http_max_conns_per_client` (200 by default, `reference/consul-dns.md` §7.5) is the
//! limit that consul-template runs into with one long poll per dependency (`reference/peers.md`
//! §4b, consul-template#1086, #1346).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use self::plain::{BoxError, PlainError, Pool};
use crate::metrics::{CONSUL_LAST_CONTACT_TIMESTAMP_SECONDS, CONSUL_REQUESTS_TOTAL};

mod plain;

/// How much of an error body is kept in [`ConsulError::Status`].
const BODY_EXCERPT: usize = 200;

/// Extra time over `wait + wait/16` before a blocking request is abandoned (and the whole
/// budget of a plain read): the agent adds up to wait/16 of jitter (`reference/consul-dns.md`
/// §7.4), the rest covers the network and the agent's own work. The default; see
/// [`Client::with_timeout_slack`].
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// Unix time in milliseconds of the last successful answer from any agent; 0 = never.
///
/// A process-wide static rather than a handle because [`crate::consul::watch::spawn`] returns
/// only the catalog channel: the HTTP layer computes `consul_catalog_age_seconds` from
/// [`last_contact`] without any wiring. One process talks to one agent, so one value is right.
static LAST_CONTACT_MS: AtomicU64 = AtomicU64::new(0);

/// Why a request to the agent failed. Display is lowercase, one line, and never includes the
/// token.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("cannot connect to the consul agent at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("request to {path} timed out after {timeout:?}")]
    Timeout { path: String, timeout: Duration },
    #[error("{path}: permission denied (403): check the token's ACL policy: {body}")]
    Forbidden { path: String, body: String },
    #[error("{path}: the agent asks to slow down (429): {body}")]
    TooManyRequests { path: String, body: String },
    #[error("{path}: http status {code}: {body}")]
    Status {
        path: String,
        code: u16,
        body: String,
    },
    #[error("{path}: response body cut short: {source}")]
    Body {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error("{path}: cannot decode the response: {reason}")]
    Decode { path: String, reason: String },
    #[error("{}:{line}:{column}: {message}", path.display())]
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot set up the consul client: {0}")]
    Setup(String),
}

/// What a blocking query asks for: `index = 0` sends a plain (non-blocking) read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blocking {
    pub index: u64,
    pub wait: Duration,
}

/// The query metadata Consul returns in headers (`reference/consul-dns.md` §7.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `X-Consul-Index`; 0 when the header is missing.
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`.
    pub last_contact: Duration,
}

/// TLS material for an `https://` agent, as consul's `-ca-file`, `-client-cert`, `-client-key`.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A client for one agent. Cheap to clone; clones share the pool and the permits.
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    base: String,
    token: Option<HeaderValue>,
    permits: Arc<Semaphore>,
    slack: Duration,
    /// `?dc=` on every request: a watch on another datacenter (`None`: the agent's own).
    datacenter: Option<Arc<str>>,
}

/// How requests reach the agent.
enum Transport {
    /// `http://`: our own HTTP/1.1 pool, which never opens more connections than permits.
    Plain(Pool),
    /// `https://`: reqwest with rustls; requests are bounded by the permits, and its pool keeps
    /// at most `max_connections` idle connections.
    Tls(reqwest::Client),
}

/// When the agent last answered successfully, if ever (process-wide).
pub fn last_contact() -> Option<SystemTime> {
    match LAST_CONTACT_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
    }
}

// === impl ConsulError ===

impl ConsulError {
    /// The bounded `reason` label of `signpost_consul_watch_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ConsulError::Connect { .. } | ConsulError::Setup(_) => "connect",
            ConsulError::Timeout { .. } => "timeout",
            ConsulError::Forbidden { .. } => "forbidden",
            ConsulError::TooManyRequests { .. } => "too_many_requests",
            ConsulError::Status { code, .. } if *code >= 500 => "status_5xx",
            ConsulError::Status { .. } => "status_4xx",
            ConsulError::Body { .. } => "body",
            ConsulError::Decode { .. } | ConsulError::File { .. } => "decode",
        }
    }

    /// Whether the agent asked to slow down: the caller should back off harder.
    pub fn is_too_many_requests(&self) -> bool {
        matches!(self, ConsulError::TooManyRequests { .. })
    }

    /// Whether this is a 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, ConsulError::Forbidden { .. })
    }
}

// === impl Client ===

impl Client {
    /// A client for `base` (`http(s)://host:port`, no trailing slash needed) that keeps at most
    /// `max_connections` requests in flight. `token` goes in `X-Consul-Token` and is never logged.
    pub fn new(
        base: &str,
        token: Option<String>,
        max_connections: usize,
        tls: &TlsFiles,
    ) -> Result<Client, ConsulError> {
        let max_connections = max_connections.max(1);
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(max_connections)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("signpost/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &tls.ca_file {
            let pem = read_file(ca)?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ConsulError::Setup(format!("{}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            // rustls wants the certificate chain and the key in one PEM buffer.
            let mut pem = read_file(cert)?;
            pem.push(b'\n');
            pem.extend(read_file(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ConsulError::Setup(format!("{}: {e}", cert.display())))?;
            builder = builder.identity(identity);
        }
        let base = base.trim_end_matches('/').to_string();
        let transport = match base.strip_prefix("http://") {
            Some(authority) => Transport::Plain(Pool::new(authority.to_string())),
            None => Transport::Tls(
                builder
                    .build()
                    .map_err(|e| ConsulError::Setup(e.to_string()))?,
            ),
        };
        let token = match token.filter(|t| !t.is_empty()) {
            Some(t) => {
                let mut value = HeaderValue::from_str(&t).map_err(|_| {
                    ConsulError::Setup("the consul token is not a valid header value".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Client {
            transport: Arc::new(transport),
            base,
            token,
            permits: Arc::new(Semaphore::new(max_connections)),
            slack: TIMEOUT_SLACK,
            datacenter: None,
        })
    }

    /// Give up on a request `slack` after the agent should have answered (instead of 5 s): a
    /// hung agent is noticed sooner, at the cost of cutting a very slow plain read.
    pub fn with_timeout_slack(mut self, slack: Duration) -> Client {
        self.slack = slack;
        self
    }

    /// The same client (same connections, same permits: one budget for every datacenter)
    /// asking datacenter `dc` through the agent: `?dc=<dc>` on every request.
    pub fn for_datacenter(&self, dc: &str) -> Client {
        Client {
            datacenter: Some(Arc::from(encode_segment(dc))),
            ..self.clone()
        }
    }

    /// GET `path` (which may carry its own query string) with `?stale`, blocking when
    /// `query.index > 0`, and decode the JSON body.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Blocking,
    ) -> Result<(T, Meta), ConsulError> {
        let (bytes, meta) = self.get_bytes(path, query).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| ConsulError::Decode {
            path: strip_query(path).to_string(),
            reason: e.to_string(),
        })?;
        Ok((value, meta))
    }

    /// Like [`Client::get_json`], returning the raw body.
    pub async fn get_bytes(
        &self,
        path: &str,
        query: Blocking,
    ) -> Result<(bytes::Bytes, Meta), ConsulError> {
        let url = self.url(path, query);
        let timeout = request_timeout(query, self.slack);
        let short = strip_query(path);
        metrics::counter!(CONSUL_REQUESTS_TOTAL, "endpoint" => endpoint_label(short)).increment(1);
        // The semaphore is never closed, so acquire only fails if it were; treat that as a
        // connect failure rather than panicking.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ConsulError::Setup("connection permits closed".into()))?;
        tracing::debug!(
            path = short,
            index = query.index,
            ?timeout,
            "consul request"
        );
        let fut = self.send(&url, short, timeout);
        // The plain pool enforces `timeout` itself (closing the socket before the permit goes);
        // this outer bound is a backstop for connecting and for the TLS transport.
        match tokio::time::timeout(timeout + Duration::from_secs(2), fut).await {
            Ok(result) => result,
            Err(_) => Err(ConsulError::Timeout {
                path: short.to_string(),
                timeout,
            }),
        }
    }

    async fn send(
        &self,
        url: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(bytes::Bytes, Meta), ConsulError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            headers.insert("X-Consul-Token", token.clone());
        }
        let (status, meta, bytes) = match &*self.transport {
            Transport::Plain(pool) => {
                let path_and_query = url.strip_prefix(&self.base).unwrap_or(url);
                let reply =
                    pool.get(path_and_query, &headers, timeout)
                        .await
                        .map_err(|e| match e {
                            PlainError::Timeout => ConsulError::Timeout {
                                path: path.to_string(),
                                timeout,
                            },
                            PlainError::Connect(source) => ConsulError::Connect {
                                url: self.base.clone(),
                                source,
                            },
                            PlainError::Body(source) => ConsulError::Body {
                                path: path.to_string(),
                                source,
                            },
                        })?;
                (reply.status, read_meta(&reply.headers), reply.body)
            }
            Transport::Tls(http) => {
                let resp = http
                    .get(url)
                    .headers(headers)
                    .send()
                    .await
                    .map_err(|e| classify_send(e, url, path))?;
                let status = resp.status();
                let meta = read_meta(resp.headers());
                let bytes = resp.bytes().await.map_err(|e| ConsulError::Body {
                    path: path.to_string(),
                    source: Box::new(e.without_url()),
                })?;
                (status, meta, bytes)
            }
        };
        if !status.is_success() {
            return Err(status_error(status, path, &bytes));
        }
        note_contact();
        Ok((bytes, meta))
    }

    fn url(&self, path: &str, query: Blocking) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{}{path}{sep}stale", self.base);
        if let Some(dc) = &self.datacenter {
            url.push_str("&dc=");
            url.push_str(dc);
        }
        if query.index > 0 {
            url.push_str(&format!(
                "&index={}&wait={}ms",
                query.index,
                query.wait.as_millis().max(1)
            ));
        }
        url
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("max_connections", &self.permits.available_permits())
            .finish()
    }
}

/// Percent-encode one path segment (a service name) for a URL.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `wait + wait/16 + slack`: the agent may hold a blocking query for `wait` plus up to wait/16
/// of jitter, so anything shorter would cut healthy long polls.
fn request_timeout(query: Blocking, slack: Duration) -> Duration {
    if query.index == 0 {
        return slack;
    }
    query.wait + query.wait / 16 + slack
}

fn note_contact() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    LAST_CONTACT_MS.store(now.as_millis() as u64, Ordering::Relaxed);
    metrics::gauge!(CONSUL_LAST_CONTACT_TIMESTAMP_SECONDS).set(now.as_secs_f64());
}

fn read_meta(headers: &HeaderMap) -> Meta {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Meta {
        index: get("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        known_leader: get("X-Consul-KnownLeader") == Some("true"),
        last_contact: Duration::from_millis(
            get("X-Consul-LastContact")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
    }
}

fn classify_send(e: reqwest::Error, url: &str, path: &str) -> ConsulError {
    if e.is_timeout() {
        return ConsulError::Timeout {
            path: path.to_string(),
            timeout: Duration::ZERO,
        };
    }
    if e.is_connect() {
        let url = url.split('?').next().unwrap_or(url).to_string();
        return ConsulError::Connect {
            url,
            source: Box::new(e.without_url()),
        };
    }
    // A connection closed before the status line (e.g. the agent's connection limiter
    // closing it) lands here too.
    ConsulError::Body {
        path: path.to_string(),
        source: Box::new(e.without_url()),
    }
}

fn status_error(status: StatusCode, path: &str, body: &[u8]) -> ConsulError {
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text.trim().chars().take(BODY_EXCERPT).collect();
    if text.trim().chars().count() > BODY_EXCERPT {
        excerpt.push('…');
    }
    let path = path.to_string();
    match status {
        StatusCode::FORBIDDEN => ConsulError::Forbidden {
            path,
            body: excerpt,
        },
        StatusCode::TOO_MANY_REQUESTS => ConsulError::TooManyRequests {
            path,
            body: excerpt,
        },
        _ => ConsulError::Status {
            path,
            code: status.as_u16(),
            body: excerpt,
        },
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// The bounded `endpoint` label for a request path.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/agent/self" => "self",
        "/v1/catalog/services" => "services",
        "/v1/catalog/nodes" => "nodes",
        "/v1/catalog/datacenters" => "datacenters",
        "/v1/query" => "query",
        p if p.starts_with("/v1/health/state/") => "health_state",
        p if p.starts_with("/v1/health/service/") => "health_service",
        p if p.starts_with("/v1/query/") && p.ends_with("/execute") => "execute",
        p if p.starts_with("/v1/query/") => "query",
        _ => "other",
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path).map_err(|e| ConsulError::Setup(format!("{}: {e}", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A blocking request may be held for wait + wait/16 by the agent; the timeout allows it.
    #[test]
    fn timeout_covers_agent_jitter() {
        let q = Blocking {
            index: 7,
            wait: Duration::from_secs(160),
        };
        assert_eq!(request_timeout(q, TIMEOUT_SLACK), Duration::from_secs(175));
        assert_eq!(
            request_timeout(Blocking::default(), TIMEOUT_SLACK),
            TIMEOUT_SLACK
        );
    }

    /// Every read carries `stale`; `index` and `wait` only when blocking.
    #[test]
    fn url_always_stale() {
        let c = Client::new("http://127.0.0.1:8500/", None, 2, &TlsFiles::default()).unwrap();
        assert_eq!(
            c.url("/v1/catalog/services", Blocking::default()),
            "http://127.0.0.1:8500/v1/catalog/services?stale"
        );
        let q = Blocking {
            index: 12,
            wait: Duration::from_secs(5),
        };
        assert_eq!(
            c.url("/v1/health/service/web", q),
            "http://127.0.0.1:8500/v1/health/service/web?stale&index=12&wait=5000ms"
        );
        assert_eq!(
            c.for_datacenter("dc2").url("/v1/catalog/nodes", q),
            "http://127.0.0.1:8500/v1/catalog/nodes?stale&dc=dc2&index=12&wait=5000ms"
        );
    }

    /// The token never shows up in Debug output.
    #[test]
    fn debug_hides_token() {
        let c = Client::new(
            "http://127.0.0.1:8500",
            Some("s3cr3t".into()),
            2,
            &TlsFiles::default(),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn reasons_are_bounded() {
        let e = status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "/v1/x",
            b"No cluster leader",
        );
        assert_eq!(e.reason(), "status_5xx");
        assert!(e.to_string().contains("No cluster leader"));
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, "/v1/query", b"").reason(),
            "forbidden"
        );
        assert_eq!(
            status_error(StatusCode::TOO_MANY_REQUESTS, "/v1/x", b"").reason(),
            "too_many_requests"
        );
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, "/v1/x", b"").reason(),
            "status_4xx"
        );
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(endpoint_label("/v1/health/service/web"), "health_service");
        assert_eq!(endpoint_label("/v1/query/8e7d/execute"), "execute");
    }
}
