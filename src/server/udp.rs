//! UDP: one `SO_REUSEPORT` socket per worker, each served by its own plain thread
//! (DESIGN.md, Performance design; `reference/hickory.md` §6.3).
//!
//! The worker is a blocking loop with no async runtime in it: `recvmmsg` takes up to
//! [`mmsg::BATCH`] queries in one system call, each is answered from local data into its own
//! reused buffer ([`Dispatcher::answer_untimed`]: no task, no lock, no allocation), and one
//! `sendmmsg` sends every answer. The clock is read twice per batch and the metrics are added
//! once per batch ([`Tally`]).
//!
//! A forwarded name is the exception: its bytes are copied into a task on the worker's own
//! current-thread runtime, run by a companion thread, which sends the reply with a
//! non-blocking `sendto` on a clone of the socket when the upstream answers. The companion
//! also waits for shutdown: it raises the stop flag that the loop checks after every receive,
//! then wakes the loop with `shutdown(SHUT_RD)` on the socket. Linux wakes a blocked reader
//! even on an unconnected UDP socket ("hack to wake up other listeners", `inet_shutdown`; the
//! call itself reports ENOTCONN) and later receives return at once. The receive therefore
//! needs no timeout: a socket timeout would arm a kernel timer every time the loop blocks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::watch;

use crate::metrics::Tally;
use crate::server::mmsg::{self, Batch};
use crate::server::{Dispatcher, Handled};
use crate::wire::Proto;

/// Longest a send of answers may block on a full socket buffer before they are dropped.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);
/// Starting room of each answer buffer; it grows to the largest answer sent and stays.
const ANSWER_BUFFER: usize = 4096;
/// Tries of a forwarded reply's non-blocking send on a full buffer, 1 ms apart.
const FORWARD_SEND_TRIES: usize = 10;
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

/// Start a worker serving `socket` until `shutdown` turns true: the hot loop on a thread
/// named `name`, and its forwarding runtime on `name-fwd`. The handle returned joins both.
pub fn spawn_worker(
    socket: std::net::UdpSocket,
    dispatcher: Arc<Dispatcher>,
    shutdown: watch::Receiver<bool>,
    name: String,
) -> io::Result<JoinHandle<()>> {
    // The hot loop blocks in recvmmsg until a datagram arrives or the companion wakes it.
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(None)?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    // Replies to forwarded names go out through a clone of the socket (same port, so the
    // client sees the address it asked). The clone shares the blocking mode, so its sends
    // pass MSG_DONTWAIT instead.
    let replies = Arc::new(Socket::from(socket.try_clone()?));
    let wake = Socket::from(socket.try_clone()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let forwarding = runtime.handle().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let raise = Arc::clone(&stop);
    let draining = Arc::clone(&dispatcher);
    let companion = std::thread::Builder::new()
        .name(format!("{name}-fwd"))
        .spawn(move || {
            let mut shutdown = shutdown;
            runtime.block_on(async move {
                // Err: the sender is gone, which also means stop.
                while shutdown.changed().await.is_ok() {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                raise.store(true, Ordering::Release);
                // Wake the loop out of recvmmsg; the ENOTCONN it reports is expected (see
                // above). Only reading stops: forwarded replies still go out.
                let _ = wake.shutdown(std::net::Shutdown::Read);
                // ops (issue 9): let forwarded queries already in flight answer before this
                // runtime (and its tasks) is dropped: SIGTERM drains.
                draining.drain(crate::server::DRAIN_DEADLINE).await;
            });
        })?;
    std::thread::Builder::new().name(name).spawn(move || {
        let worker = Worker {
            socket,
            dispatcher,
            replies,
            forwarding,
        };
        worker.run(&stop);
        let _ = companion.join();
    })
}

/// One UDP worker's state.
struct Worker {
    socket: std::net::UdpSocket,
    dispatcher: Arc<Dispatcher>,
    /// The socket again, for forwarded replies sent from the forwarding runtime.
    replies: Arc<Socket>,
    forwarding: tokio::runtime::Handle,
}

// === impl Worker ===

impl Worker {
    fn run(&self, stop: &AtomicBool) {
        let mut batch = Batch::new();
        let mut outs: Vec<Vec<u8>> = (0..mmsg::BATCH)
            .map(|_| Vec::with_capacity(ANSWER_BUFFER))
            .collect();
        let mut answered = [0usize; mmsg::BATCH];
        let mut tally = Tally::default();
        while !stop.load(Ordering::Acquire) {
            let n = match batch.recv(&self.socket) {
                Ok(n) => n,
                Err(e) => {
                    // An ICMP error from an earlier send or EINTR: not the socket's end.
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            };
            let received = Instant::now();
            let mut k = 0;
            for (i, out) in outs.iter_mut().enumerate().take(n) {
                let Some(packet) = batch.packet(i) else {
                    continue;
                };
                match self.dispatcher.answer_untimed(packet, Proto::Udp, out) {
                    (Handled::Answered, served) => {
                        answered[k] = i;
                        k += 1;
                        if let Some(s) = served {
                            tally.add(s.zone, s.rcode);
                        }
                    }
                    (Handled::Drop, _) => {}
                    (Handled::Forward, _) => {
                        if let Some(peer) = batch.peer(i) {
                            self.forward(packet.to_vec(), peer);
                        }
                    }
                }
            }
            if k > 0 {
                batch.send(&self.socket, &answered[..k], &outs);
                tally.flush(self.dispatcher.metrics(), Proto::Udp, received.elapsed());
            }
        }
    }

    /// Resolve `packet` on the forwarding runtime and send the reply to `peer`.
    fn forward(&self, packet: Vec<u8>, peer: SocketAddr) {
        let dispatcher = Arc::clone(&self.dispatcher);
        let socket = Arc::clone(&self.replies);
        self.forwarding.spawn(async move {
            let reply = dispatcher.forward(&packet, Proto::Udp).await;
            send_forwarded(&socket, &reply, peer).await;
        });
    }
}

/// Send a forwarded reply without blocking the runtime: MSG_DONTWAIT, and a few short waits
/// when the socket buffer is full.
async fn send_forwarded(socket: &Socket, bytes: &[u8], peer: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    let to = SockAddr::from(peer);
    for _ in 0..FORWARD_SEND_TRIES {
        match socket.send_to_with_flags(bytes, &to, libc::MSG_DONTWAIT) {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, %peer, "udp send failed");
                return;
            }
        }
    }
    tracing::debug!(%peer, "udp send buffer full: forwarded reply dropped");
}
