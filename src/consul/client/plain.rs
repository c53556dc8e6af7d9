//! A strictly bounded HTTP/1.1 connection pool for `http://` agents.
//!
//! reqwest's pool may open a new connection while a finished one is still on its way back to
//! the idle list, so with N requests in flight it can briefly hold N+1 connections (seen in the
//! 2,000-service test). Here a connection is owned either by the request holding a permit or
//! by the idle list, and a new one is opened only when the idle list is empty, so open
//! connections never exceed the permits (`consul.max_connections`).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Any error below the status line.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a broken connection's task may take to close its socket before it is aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Idle connections to one `host:port`.
pub(super) struct Pool {
    authority: String,
    idle: Mutex<Vec<Conn>>,
}

/// One connection: the request half and the task driving the socket.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
}

/// Where a request failed.
pub(super) enum PlainError {
    Connect(BoxError),
    Body(BoxError),
    Timeout,
}

/// A response read to the end.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

// === impl Pool ===

impl Pool {
    pub(super) fn new(authority: String) -> Pool {
        Pool {
            authority,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Send a GET for `path_and_query`, giving up after `timeout`. The caller holds a permit
    /// for the whole call.
    pub(super) async fn get(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Reply, PlainError> {
        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        let sent = send(&mut conn, &self.authority, path_and_query, headers);
        let Ok(result) = tokio::time::timeout(timeout, sent).await else {
            // A hung request: its socket is closed here, before the permit is released.
            conn.task.abort();
            let _ = conn.task.await;
            return Err(PlainError::Timeout);
        };
        match result {
            Ok(reply) => {
                self.put_back(conn).await;
                Ok(reply)
            }
            // An idle connection the agent closed meanwhile fails before the request is sent:
            // retry once on a fresh one. Failures after sending are not retried here.
            Err((true, _)) if reused => {
                close(conn).await;
                let mut conn = self.connect().await?;
                let reply = send(&mut conn, &self.authority, path_and_query, headers).await;
                match reply {
                    Ok(reply) => {
                        self.put_back(conn).await;
                        Ok(reply)
                    }
                    Err((_, e)) => {
                        close(conn).await;
                        Err(PlainError::Body(e))
                    }
                }
            }
            Err((_, e)) => {
                close(conn).await;
                Err(PlainError::Body(e))
            }
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    async fn put_back(&self, mut conn: Conn) {
        // After the body was read to the end the connection is ready at once; one that is not
        // (the agent said `Connection: close`) is closed instead of pooled.
        let ready = tokio::time::timeout(CLOSE_GRACE, conn.sender.ready()).await;
        if matches!(ready, Ok(Ok(()))) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(conn);
        } else {
            close(conn).await;
        }
    }

    async fn connect(&self) -> Result<Conn, PlainError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| PlainError::Connect(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PlainError::Connect(Box::new(e)))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "consul connection closed");
            }
        });
        Ok(Conn { sender, task })
    }
}

async fn send(
    conn: &mut Conn,
    authority: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Reply, (bool, BoxError)> {
    // `true`: the request never left, so it may be retried on another connection.
    conn.sender.ready().await.map_err(|e| (true, e.into()))?;
    let mut req = Request::get(path_and_query)
        .header(hyper::header::HOST, authority)
        .body(Empty::new())
        .map_err(|e| (false, e.into()))?;
    req.headers_mut()
        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let resp = conn
        .sender
        .send_request(req)
        .await
        .map_err(|e| (e.is_canceled(), e.into()))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| (false, e.into()))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Close a connection and wait until its socket is gone, so that the permit released after
/// this never lets a new connection overlap the old one.
async fn close(conn: Conn) {
    let Conn { sender, task } = conn;
    drop(sender);
    let abort = task.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, task).await.is_err() {
        abort.abort();
    }
}
