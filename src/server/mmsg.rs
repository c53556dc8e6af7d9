//! Batched UDP receive and send: `recvmmsg(2)` and `sendmmsg(2)` through `libc`.
//!
//! One system call moves up to [`BATCH`] datagrams each way, which is where a DNS server on
//! loopback spends its time (`reference/hickory.md` §6.2: about +19% over one `recv_from` /
//! `send_to` per query, +45% over a tokio loop). This is the only module of the crate allowed
//! `unsafe` (STYLE.md §2.2 item 15): every block says why it is sound. The buffers, addresses
//! and headers live in boxed slices allocated once per worker, so a batch allocates nothing.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per system call. 64 halves the system calls per query against 32 when the
/// server is saturated (`reference/hickory.md` §6.2 measured batch 64); a full batch is still
/// only ~20 µs of answering, and at low rates a receive returns what is there at once
/// (`MSG_WAITFORONE`), so the batch size costs no latency.
pub const BATCH: usize = 64;
/// Receive room per datagram. A query is a header, one question and an OPT record: far less.
/// A bigger datagram arrives cut (`MSG_TRUNC`) and is dropped, like hickory's 4,096-byte reader.
pub const SLOT: usize = 4096;

/// The receive and send state of one worker's batches.
pub struct Batch {
    bufs: Box<[[u8; SLOT]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    /// Datagrams held after the last [`Batch::recv`].
    received: usize,
}

// === impl Batch ===

impl Batch {
    pub fn new() -> Batch {
        // SAFETY: `sockaddr_storage`, `iovec` and `mmsghdr` are plain C structs of integers and
        // pointers, for which all zeroes is a valid value (null pointers, zero lengths).
        let (addr, iovec, header) = unsafe {
            (
                zeroed::<libc::sockaddr_storage>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::mmsghdr>(),
            )
        };
        Batch {
            bufs: vec![[0u8; SLOT]; BATCH].into_boxed_slice(),
            addrs: vec![addr; BATCH].into_boxed_slice(),
            iovecs: vec![iovec; BATCH].into_boxed_slice(),
            headers: vec![header; BATCH].into_boxed_slice(),
            received: 0,
        }
    }

    /// Wait for at least one datagram (up to the socket's `SO_RCVTIMEO`), then take whatever
    /// else is queued without waiting (`MSG_WAITFORONE`), up to [`BATCH`]. Returns how many.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received = 0;
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let hdr = &mut self.headers[i].msg_hdr;
            hdr.msg_name = (&raw mut self.addrs[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: each of the BATCH headers points at its own `iovecs[i]`, which covers exactly
        // the SLOT bytes of `bufs[i]`, and at `addrs[i]` with its full size as `msg_namelen`.
        // All are boxed slices owned by `self`, borrowed mutably for the whole call, so nothing
        // else reads or moves them while the kernel writes; no control buffer is passed. The
        // timeout pointer may be null (the socket's SO_RCVTIMEO bounds the wait).
        let got = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = (got as usize).min(BATCH);
        Ok(self.received)
    }

    /// Datagram `i` of the last receive; `None` if it was cut (bigger than [`SLOT`]).
    pub fn packet(&self, i: usize) -> Option<&[u8]> {
        if i >= self.received {
            return None;
        }
        let header = &self.headers[i];
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        self.bufs[i].get(..header.msg_len as usize)
    }

    /// The sender of datagram `i` of the last receive.
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.received {
            return None;
        }
        let len = self.headers[i].msg_hdr.msg_namelen as usize;
        sockaddr_to_std(&self.addrs[i], len)
    }

    /// Send `outs[slot]` back to the sender of datagram `slot`, for every `slot` in `slots`
    /// (indices of the last receive, each at most once). A datagram the kernel refuses is
    /// skipped (UDP: the client retries), so one bad peer cannot stall the others. Returns
    /// how many were sent.
    pub fn send(&mut self, socket: &UdpSocket, slots: &[usize], outs: &[Vec<u8>]) -> usize {
        let mut n = 0;
        for &slot in slots.iter().take(BATCH) {
            let (Some(out), true) = (outs.get(slot), slot < self.received) else {
                continue;
            };
            self.iovecs[n] = libc::iovec {
                iov_base: out.as_ptr().cast_mut().cast(),
                iov_len: out.len(),
            };
            // Compact the addresses of the answered datagrams to the front. `slot >= n`
            // always (slots are increasing and distinct), so this never overwrites an address
            // still to be read.
            if slot != n {
                self.addrs[n] = self.addrs[slot];
                self.headers[n].msg_hdr.msg_namelen = self.headers[slot].msg_hdr.msg_namelen;
            }
            let hdr = &mut self.headers[n].msg_hdr;
            hdr.msg_name = (&raw mut self.addrs[n]).cast();
            hdr.msg_iov = &raw mut self.iovecs[n];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            n += 1;
        }
        // The received datagrams' addresses are now partly overwritten.
        self.received = 0;
        let mut done = 0;
        while done < n {
            // SAFETY: headers `done..n` each point at their own `iovecs[k]` (covering the bytes
            // of one `outs` vector, borrowed for the whole call and not mutated) and at
            // `addrs[k]` with the length the kernel gave on receive. The kernel only reads
            // them; `self` is borrowed mutably, so nothing moves them meanwhile.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers.as_mut_ptr().add(done),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if sent > 0 {
                done += sent as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first remaining datagram failed (full buffer past SO_SNDTIMEO, unreachable
            // peer): drop it and go on with the rest.
            tracing::debug!(error = %e, "udp send failed");
            done += 1;
        }
        n
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// A kernel socket address as a std one; `None` for a family other than IPv4 and IPv6.
fn sockaddr_to_std(addr: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, the kernel wrote at
            // least its size, and `sockaddr_storage` is large and aligned enough for any
            // socket address (that is its purpose).
            let sin =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Datagrams from two clients arrive in one batch and each gets its own reply back.
    #[test]
    fn batch_round_trip() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for c in [&a, &b] {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        a.send_to(b"one", server.local_addr().unwrap()).unwrap();
        b.send_to(b"two", server.local_addr().unwrap()).unwrap();
        let mut batch = Batch::new();
        let mut got = 0;
        let mut outs = vec![Vec::new(); BATCH];
        let mut slots = Vec::new();
        while got < 2 {
            let n = batch.recv(&server).unwrap();
            let mut seen = Vec::new();
            for (i, out) in outs.iter_mut().enumerate().take(n) {
                let packet = batch.packet(i).unwrap();
                let peer = batch.peer(i).unwrap();
                *out = [packet, b"!"].concat();
                seen.push((i, peer));
            }
            slots.clear();
            slots.extend(seen.iter().map(|(i, _)| *i));
            assert_eq!(batch.send(&server, &slots, &outs), n);
            got += n;
        }
        let mut buf = [0u8; 16];
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one!");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two!");
    }

    /// Only the slots asked for are sent, each to its own sender.
    #[test]
    fn send_skips_unanswered_slots() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for m in [b"a", b"b", b"c"] {
            client.send_to(m, server.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new();
        let mut outs = vec![Vec::new(); BATCH];
        let mut received = Vec::new();
        while received.len() < 3 {
            let n = batch.recv(&server).unwrap();
            for (i, out) in outs.iter_mut().enumerate().take(n) {
                received.push(batch.packet(i).unwrap().to_vec());
                *out = batch.packet(i).unwrap().to_vec();
            }
            // Answer only the datagrams other than "b" from this receive.
            let slots: Vec<usize> = (0..n).filter(|&i| outs[i] != b"b").collect();
            batch.send(&server, &slots, &outs);
        }
        let mut replies = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(n) = client.recv(&mut buf) {
            replies.push(buf[..n].to_vec());
        }
        assert_eq!(replies, vec![b"a".to_vec(), b"c".to_vec()]);
    }
}
