//! `sendmmsg`/`recvmmsg` on a connected UDP socket: one system call per batch of datagrams,
//! so that the load generator spends far fewer cycles per query than the server it measures.
//! The only `unsafe` in the benchmarks lives here (DESIGN.md, STYLE.md §2.2 item 15); shared
//! by `forward.rs` and the load generator (`load/generator.rs`).
#![allow(unsafe_code)]
#![allow(dead_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Largest batch.
pub(crate) const BATCH: usize = 64;
/// Room for one reply (the benchmark's answers are small).
pub(crate) const MAX_REPLY: usize = 512;

/// Reusable buffers for one socket's batches.
pub(crate) struct Batches {
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    pub(crate) replies: Vec<[u8; MAX_REPLY]>,
}

impl Batches {
    pub(crate) fn new() -> Batches {
        Batches {
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
            replies: vec![[0u8; MAX_REPLY]; BATCH],
        }
    }

    fn header(iov: *mut libc::iovec) -> libc::mmsghdr {
        // SAFETY: `mmsghdr` is a plain C struct of integers and pointers; all zeroes is a valid
        // value (no name, no control data, no flags).
        let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        header.msg_hdr.msg_iov = iov;
        header.msg_hdr.msg_iovlen = 1;
        header
    }

    /// Send `packets` (at most [`BATCH`]) on the connected `socket`; how many went out.
    pub(crate) fn send(&mut self, socket: &UdpSocket, packets: &[&[u8]]) -> io::Result<usize> {
        let n = packets.len().min(BATCH);
        self.iovecs.clear();
        for packet in &packets[..n] {
            self.iovecs.push(libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            });
        }
        self.headers.clear();
        for i in 0..n {
            let iov: *mut libc::iovec = &mut self.iovecs[i];
            self.headers.push(Self::header(iov));
        }
        // SAFETY: `headers[..n]` point at `iovecs[..n]`, which point at `packets`, all alive
        // and unmoved for the duration of the call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(sent as usize)
    }

    /// Receive up to [`BATCH`] datagrams without waiting; their lengths go to `lens`.
    pub(crate) fn recv(
        &mut self,
        socket: &UdpSocket,
        lens: &mut [usize; BATCH],
    ) -> io::Result<usize> {
        self.recv_with(socket, lens, libc::MSG_DONTWAIT)
    }

    /// Receive up to [`BATCH`] datagrams with `flags`: `MSG_DONTWAIT` never waits,
    /// `MSG_WAITFORONE` waits (on a blocking socket, up to its `SO_RCVTIMEO`) for the first and
    /// takes whatever else is queued. A timeout counts as 0 datagrams.
    pub(crate) fn recv_with(
        &mut self,
        socket: &UdpSocket,
        lens: &mut [usize; BATCH],
        flags: libc::c_int,
    ) -> io::Result<usize> {
        self.iovecs.clear();
        for reply in self.replies.iter_mut() {
            self.iovecs.push(libc::iovec {
                iov_base: reply.as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_REPLY,
            });
        }
        self.headers.clear();
        for i in 0..BATCH {
            let iov: *mut libc::iovec = &mut self.iovecs[i];
            self.headers.push(Self::header(iov));
        }
        // SAFETY: every header points at one iovec of `iovecs`, each covering one whole
        // `MAX_REPLY` buffer of `replies`; both outlive the call and are not touched during it.
        // The timeout pointer may be null.
        let got = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let got = got as usize;
        for (len, header) in lens.iter_mut().zip(&self.headers[..got]) {
            *len = header.msg_len as usize;
        }
        Ok(got)
    }
}
