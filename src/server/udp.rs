//! UDP: one `SO_REUSEPORT` socket per worker, each served by its own thread and
//! current-thread runtime (DESIGN.md, Performance design).
//!
//! The loop receives into a buffer it owns and answers local names in place: no task, no lock,
//! no allocation. A forwarded name is the exception: its bytes are copied into a task on the
//! same runtime, which sends the reply through the same socket when the upstream answers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::server::{Dispatcher, Handled};
use crate::wire::Proto;

/// Receive buffer size: the largest UDP payload.
const RECV_BUFFER: usize = 65_535;
/// Kernel socket buffer: room for bursts while the thread is busy (capped by `rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Bind one UDP socket for `addr` with `SO_REUSEPORT`, so several workers share the port.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer only means earlier drops under a burst.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Start a worker thread serving `socket` until `shutdown` turns true.
pub fn spawn_worker(
    socket: std::net::UdpSocket,
    dispatcher: Arc<Dispatcher>,
    shutdown: watch::Receiver<bool>,
    name: String,
) -> io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(async move {
            match UdpSocket::from_std(socket) {
                Ok(socket) => serve(Arc::new(socket), dispatcher, shutdown).await,
                Err(e) => tracing::error!(error = %e, "udp socket could not join the runtime"),
            }
        });
    })
}

async fn serve(
    socket: Arc<UdpSocket>,
    dispatcher: Arc<Dispatcher>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(RECV_BUFFER);
    loop {
        let (len, peer) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        let packet = &buf[..len];
        match dispatcher.answer_local(packet, Proto::Udp, &mut out) {
            Handled::Answered => send(&socket, &out, peer).await,
            Handled::Drop => {}
            Handled::Forward => {
                let packet = packet.to_vec();
                let socket = Arc::clone(&socket);
                let dispatcher = Arc::clone(&dispatcher);
                tokio::spawn(async move {
                    let reply = dispatcher.forward(&packet, Proto::Udp).await;
                    send(&socket, &reply, peer).await;
                });
            }
        }
    }
    // ops (issue 9): stop reading, but let forwarded queries already in flight answer
    // before this runtime (and its tasks) is dropped: SIGTERM drains.
    dispatcher.drain(crate::server::DRAIN_DEADLINE).await;
}

/// Send without waiting when the socket has room (the usual case), else wait for room.
async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    let sent = match socket.try_send_to(bytes, peer) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, peer).await,
        other => other,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, %peer, "udp send failed");
    }
}
