//! TCP (RFC 7766): length-prefixed messages, several queries per connection, answered in order.
//!
//! A semaphore bounds the connections served at once (`listen.tcp_max_connections`, like
//! mini-redis's listener); a connection idle for `listen.tcp_idle_timeout` is closed. Answers
//! may be up to 64 KiB, so large `.consul` answers that UDP cuts are whole here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::server::{Dispatcher, Handled};
use crate::wire::Proto;

/// Serve `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    limit: Arc<Semaphore>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let dispatcher = Arc::clone(&dispatcher);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &dispatcher, idle, shutdown).await {
                tracing::debug!(error = %e, %peer, "tcp connection ended");
            }
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    dispatcher: &Dispatcher,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let len = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            len = tokio::time::timeout(idle, stream.read_u16()) => match len {
                Ok(Ok(len)) => usize::from(len),
                // Idle timeout or the client closed: both end the connection quietly.
                Ok(Err(_)) | Err(_) => return Ok(()),
            },
        };
        let packet = &mut buf[..len];
        tokio::time::timeout(idle, stream.read_exact(packet))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let reply = match dispatcher.answer_local(packet, Proto::Tcp, &mut out) {
            Handled::Answered => &out[..],
            Handled::Drop => continue,
            Handled::Forward => {
                out = dispatcher.forward(packet, Proto::Tcp).await;
                &out[..]
            }
        };
        if reply.is_empty() {
            continue;
        }
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len().min(65_535) as u16).to_be_bytes());
        framed.extend_from_slice(&reply[..reply.len().min(65_535)]);
        stream.write_all(&framed).await?;
    }
}

/// Bind a TCP listener on `addr`.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
