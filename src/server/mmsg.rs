//! Batched UDP receive and send: `recvmmsg(2)` and `sendmmsg(2)` through `libc`.
//!
//! One system call moves up to [`BATCH`] datagrams each way, which is where a DNS server on
//! loopback spends its time (`reference/hickory.md` §6.2: about +19% over one `recv_from` /
//! `send_to` per query, +45% over a tokio loop). This is the only module of the crate allowed
//! `unsafe` (STYLE.md §2.2 item 15): every block says why it is sound. The buffers, addresses
//! and headers live in boxed slices allocated once per worker, so a batch allocates nothing.
//!
//! Answers of one batch to the same client with the same size (a client pipelining queries
//! on one socket: a proxy's resolver, a stub resolver under load) leave as one UDP GSO send
//! (`UDP_SEGMENT`, Linux 4.18): the kernel walks the output path once for the group and cuts
//! it into the same datagrams at the receiving socket (or the NIC), so the client sees no
//! difference. A kernel or route that refuses GSO turns it off for the socket, and the group
//! is sent one datagram at a time as before.

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
/// `UDP_SEGMENT` (linux/udp.h), which the libc crate does not define for glibc targets.
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Largest answer sent as a GSO segment: a segment must fit the route's MTU, and 1,232 bytes
/// (the DNS Flag Day 2020 size) fits every IPv6 path. Bigger answers go alone.
const GSO_MAX_SEGMENT: usize = 1232;
/// Most bytes in one GSO send (an IP datagram carries at most 65,507 bytes of UDP payload).
const GSO_MAX_BYTES: usize = 60_000;
/// Control buffer of one message: `CMSG_SPACE(size_of::<u16>())` is 24 bytes on 64-bit Linux.
const CONTROL: usize = 32;

/// What one [`Batch::send`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Answers handed to the kernel.
    pub answers: usize,
    /// Messages they went out as (fewer than `answers` when some were grouped for GSO).
    pub messages: usize,
}

/// The receive and send state of one worker's batches.
pub struct Batch {
    bufs: Box<[[u8; SLOT]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    /// One `UDP_SEGMENT` control message per send header (8-byte aligned, as `cmsghdr` is).
    controls: Box<[[u64; CONTROL / 8]]>,
    /// For each send header, the first of the answers it carries (an index into `iovecs`).
    firsts: Box<[usize]>,
    /// Address lengths of the answers being sent (compacted like `addrs`).
    namelens: Box<[libc::socklen_t]>,
    /// Datagrams held after the last [`Batch::recv`].
    received: usize,
    /// Answers to one peer may be grouped into a GSO send (until the kernel refuses one).
    gso: bool,
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
            controls: vec![[0u64; CONTROL / 8]; BATCH].into_boxed_slice(),
            firsts: vec![0; BATCH].into_boxed_slice(),
            namelens: vec![0; BATCH].into_boxed_slice(),
            received: 0,
            gso: true,
        }
    }

    /// Never group answers into GSO sends (tests, and the comparison benchmark's reference).
    pub fn without_gso(mut self) -> Batch {
        self.gso = false;
        self
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
    /// skipped (UDP: the client retries), so one bad peer cannot stall the others.
    pub fn send(&mut self, socket: &UdpSocket, slots: &[usize], outs: &[Vec<u8>]) -> Sent {
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
            }
            self.namelens[n] = self.headers[slot].msg_hdr.msg_namelen;
            n += 1;
        }
        // The received datagrams' addresses are now partly overwritten.
        self.received = 0;
        let mut messages = self.build(0, n, 0);
        let mut done = 0;
        while done < messages {
            // SAFETY: headers `done..messages` each point at `msg_iovlen` consecutive
            // `iovecs` (each covering the bytes of one `outs` vector, borrowed for the whole
            // call and not mutated), at the `addrs` entry of their first answer with the
            // length the kernel gave on receive, and at their own `controls` entry (or none).
            // The kernel only reads them; `self` is borrowed mutably, so nothing moves them.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers.as_mut_ptr().add(done),
                    (messages - done) as libc::c_uint,
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
            if self.headers[done].msg_hdr.msg_iovlen > 1 && refuses_gso(&e) {
                // This kernel or route cannot segment: send the rest one by one, from now on.
                tracing::debug!(error = %e, "udp gso refused; sending datagrams one by one");
                self.gso = false;
                messages = self.build(self.firsts[done], n, done);
                continue;
            }
            // The first remaining message failed (full buffer past SO_SNDTIMEO, unreachable
            // peer): drop it and go on with the rest.
            tracing::debug!(error = %e, "udp send failed");
            done += 1;
        }
        Sent {
            answers: n,
            messages,
        }
    }

    /// Fill send headers from `header` on for the answers `first..n` (compacted in `iovecs`
    /// and `addrs`): one header per answer, or, with GSO, one per run of answers to the same
    /// peer of the same size (the last of a run may be shorter). Returns the header count.
    fn build(&mut self, first: usize, n: usize, mut header: usize) -> usize {
        let mut k = first;
        while k < n {
            let start = k;
            let size = self.iovecs[k].iov_len;
            k += 1;
            if self.gso && size <= GSO_MAX_SEGMENT {
                let mut bytes = size;
                while k < n
                    && k - start < GSO_MAX_SEGMENTS
                    && self.iovecs[k].iov_len <= size
                    && bytes + self.iovecs[k].iov_len <= GSO_MAX_BYTES
                    && self.same_peer(start, k)
                {
                    bytes += self.iovecs[k].iov_len;
                    k += 1;
                    if self.iovecs[k - 1].iov_len < size {
                        break;
                    }
                }
            }
            let segments = k - start;
            let control = if segments > 1 {
                self.segment_control(header, size as u16)
            } else {
                (std::ptr::null_mut(), 0)
            };
            let hdr = &mut self.headers[header].msg_hdr;
            hdr.msg_name = (&raw mut self.addrs[start]).cast();
            hdr.msg_namelen = self.namelens[start];
            hdr.msg_iov = &raw mut self.iovecs[start];
            hdr.msg_iovlen = segments;
            hdr.msg_control = control.0;
            hdr.msg_controllen = control.1;
            hdr.msg_flags = 0;
            self.firsts[header] = start;
            header += 1;
        }
        header
    }

    /// Whether answers `a` and `b` go to the same address (family, port, address).
    fn same_peer(&self, a: usize, b: usize) -> bool {
        let len = |i: usize| self.namelens[i] as usize;
        if len(a) != len(b) {
            return false;
        }
        let bytes = |i: usize| {
            // SAFETY: `sockaddr_storage` is plain bytes of `size_of` length; `len(i)` is what
            // the kernel wrote, never more than that size.
            unsafe {
                std::slice::from_raw_parts(
                    (&raw const self.addrs[i]).cast::<u8>(),
                    len(i).min(size_of::<libc::sockaddr_storage>()),
                )
            }
        };
        match i32::from(self.addrs[a].ss_family) {
            // Compare family, port and address only: `sin_zero` need not match.
            libc::AF_INET => bytes(a)[..8] == bytes(b)[..8],
            _ => bytes(a) == bytes(b),
        }
    }

    /// Write a `UDP_SEGMENT` control message of `size` into `controls[header]`; returns the
    /// pointer and length for the message header.
    fn segment_control(&mut self, header: usize, size: u16) -> (*mut libc::c_void, usize) {
        let buf = &mut self.controls[header];
        *buf = [0; CONTROL / 8];
        // SAFETY: `CMSG_SPACE`/`CMSG_LEN` are pure arithmetic. `buf` is CONTROL bytes, 8-byte
        // aligned like `cmsghdr`, and CMSG_SPACE(2) (24 on 64-bit Linux, asserted below) fits
        // it; the header and the u16 after it are written inside it.
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<u16>() as libc::c_uint) as usize;
            debug_assert!(space <= CONTROL);
            let cmsg = buf.as_mut_ptr().cast::<libc::cmsghdr>();
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as libc::c_uint) as usize;
            libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(size);
            (buf.as_mut_ptr().cast(), space)
        }
    }
}

/// Whether a send failed because the kernel or the route cannot do UDP GSO (no
/// `UDP_SEGMENT`, no checksum offload, a segment over the MTU).
fn refuses_gso(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
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
            assert_eq!(batch.send(&server, &slots, &outs).answers, n);
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

    /// Answers to one client of one size leave as one GSO send and arrive as the same
    /// datagrams, in order; a shorter answer may end a run, a longer one starts a new one.
    /// Over IPv4 and IPv6.
    #[test]
    fn runs_to_one_peer_are_grouped_and_arrive_whole() {
        grouped_runs_arrive_whole("127.0.0.1:0");
        grouped_runs_arrive_whole("[::1]:0");
    }

    fn grouped_runs_arrive_whole(local: &str) {
        let server = UdpSocket::bind(local).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind(local).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Sizes 100 x5, 40, 100 x3, 300: runs [100 x5 + 40], [100 x3], [300].
        let sizes = [100, 100, 100, 100, 100, 40, 100, 100, 100, 300];
        for (i, _) in sizes.iter().enumerate() {
            client
                .send_to(&[i as u8], server.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut batch = Batch::new();
        let n = batch.recv(&server).unwrap();
        assert_eq!(n, sizes.len(), "all queued datagrams in one receive");
        let mut outs = vec![Vec::new(); BATCH];
        for (i, out) in outs.iter_mut().enumerate().take(n) {
            let tag = batch.packet(i).unwrap()[0];
            *out = vec![tag; sizes[usize::from(tag)]];
        }
        let slots: Vec<usize> = (0..n).collect();
        let sent = batch.send(&server, &slots, &outs);
        assert_eq!(sent.answers, sizes.len());
        assert_eq!(sent.messages, 3, "grouped into three GSO sends");
        let mut buf = [0u8; 1024];
        for (i, size) in sizes.iter().enumerate() {
            let got = client.recv(&mut buf).unwrap();
            assert_eq!(got, *size, "datagram {i}");
            assert!(buf[..got].iter().all(|&b| b == i as u8), "datagram {i}");
        }
        assert!(client.recv(&mut buf).is_err(), "nothing more");
    }

    /// Answers to different clients are never grouped, and `without_gso` sends one each.
    #[test]
    fn different_peers_and_no_gso_send_one_by_one() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for gso in [true, false] {
            for c in &clients {
                c.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                c.send_to(b"q", server.local_addr().unwrap()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
            let mut batch = if gso {
                Batch::new()
            } else {
                Batch::new().without_gso()
            };
            let n = batch.recv(&server).unwrap();
            assert_eq!(n, 3);
            let outs = vec![vec![7u8; 64]; BATCH];
            let slots: Vec<usize> = (0..n).collect();
            let sent = batch.send(&server, &slots, &outs);
            assert_eq!((sent.answers, sent.messages), (3, 3));
            for c in &clients {
                let mut buf = [0u8; 128];
                assert_eq!(c.recv(&mut buf).unwrap(), 64);
            }
        }
        // Without GSO, one client's run is not grouped either.
        let client = &clients[0];
        for _ in 0..4 {
            client.send_to(b"q", server.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut batch = Batch::new().without_gso();
        let n = batch.recv(&server).unwrap();
        let outs = vec![vec![7u8; 64]; BATCH];
        let slots: Vec<usize> = (0..n).collect();
        assert_eq!(batch.send(&server, &slots, &outs).messages, 4);
    }

    /// A socket the kernel refuses GSO on (`SO_NO_CHECK`: no UDP checksum, which GSO needs)
    /// gets every answer anyway, one datagram each, and GSO stays off for it.
    #[test]
    fn refused_gso_falls_back_to_single_datagrams() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a plain setsockopt of an int option on a socket this test owns; `on` lives
        // across the call and its size is passed.
        let set = unsafe {
            libc::setsockopt(
                server.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_NO_CHECK");
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for i in 0..4u8 {
            client.send_to(&[i], server.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut batch = Batch::new();
        let n = batch.recv(&server).unwrap();
        assert_eq!(n, 4);
        let mut outs = vec![Vec::new(); BATCH];
        for (i, out) in outs.iter_mut().enumerate().take(n) {
            *out = vec![batch.packet(i).unwrap()[0]; 50];
        }
        let slots: Vec<usize> = (0..n).collect();
        let sent = batch.send(&server, &slots, &outs);
        assert_eq!((sent.answers, sent.messages), (4, 4));
        assert!(!batch.gso, "GSO turned off after the refusal");
        let mut buf = [0u8; 128];
        for i in 0..4u8 {
            assert_eq!(client.recv(&mut buf).unwrap(), 50);
            assert_eq!(buf[0], i);
        }
    }
}
