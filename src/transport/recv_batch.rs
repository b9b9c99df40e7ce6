//! Several UDP datagrams per system call (`recvmmsg(2)`), into buffers reused from one call
//! to the next.
//!
//! Why: under load the receive loop found a datagram waiting on nearly every wake-up and paid
//! one `recvfrom` per datagram, two per SUBSCRIBE or REGISTER (the request and the answer to
//! our NOTIFY, or the two REGISTERs of a digest exchange). One `recvmmsg` takes whatever has
//! queued up since the last call, up to [`RecvBatch`]'s size, so the system call's fixed cost
//! is shared out. The unsafe code of the transport is here and nowhere else: the `msghdr`
//! array points into buffers this struct owns, and is rebuilt before each call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Datagrams at most per call. More shares the system call further but lets one receive loop
/// hold more work at once (each datagram is handled before the loop reads again), which the
/// other loop of the socket could have taken on another core.
pub(super) const RECV_BATCH: usize = 16;

/// Buffers for up to [`RECV_BATCH`] datagrams of up to `capacity` bytes each, and where each
/// came from.
pub(super) struct RecvBatch {
    /// One buffer, `RECV_BATCH` slots of `capacity` bytes, allocated once per receive loop.
    /// Zeroed (from fresh memory the allocator need not write it) and then written by the
    /// kernel only as far as datagrams reach.
    bufs: Vec<u8>,
    capacity: usize,
    addrs: Vec<libc::sockaddr_storage>,
    /// Byte count of each datagram of the last call.
    lens: [usize; RECV_BATCH],
    filled: usize,
}

impl RecvBatch {
    /// `capacity`: the largest datagram accepted plus one, so an oversized one shows as
    /// longer than the limit (truncated to `capacity`), not as something shorter that parses.
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecvBatch {
            bufs: vec![0u8; capacity * RECV_BATCH],
            capacity,
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC)
            // value.
            addrs: (0..RECV_BATCH).map(|_| unsafe { zeroed() }).collect(),
            lens: [0; RECV_BATCH],
            filled: 0,
        }
    }

    /// Reads whatever datagrams are waiting on `sock`, up to [`RECV_BATCH`], without blocking
    /// (`WouldBlock` when there are none: for tokio's readiness). Returns how many; they are
    /// then [`RecvBatch::get`]`(0..n)`.
    pub(super) fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.filled = 0;
        let capacity = self.capacity;
        // SAFETY: iovec and mmsghdr are plain old data; zeroed is valid for both, and every
        // pointer field is set below before the call.
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for (i, (slot, addr)) in self
            .bufs
            .chunks_exact_mut(capacity)
            .zip(self.addrs.iter_mut())
            .enumerate()
        {
            iovs[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: capacity,
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds RECV_BATCH headers, each pointing at one iovec of `iovs` (alive
        // until the call returns), whose buffer is a distinct `capacity`-byte slot of
        // `self.bufs`, and at one sockaddr_storage of `self.addrs` with its size; the kernel
        // writes no further than those lengths. MSG_DONTWAIT: never block the runtime's thread.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (n as usize).min(RECV_BATCH);
        for (len, msg) in self.lens.iter_mut().zip(&msgs[..n]) {
            // A truncated datagram reports the bytes copied (at most `capacity`).
            *len = (msg.msg_len as usize).min(capacity);
        }
        self.filled = n;
        Ok(n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: its bytes (at most `capacity`) and its
    /// source. `None` past the datagrams read, or for a source that is neither IPv4 nor IPv6.
    pub(super) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.filled {
            return None;
        }
        let start = i * self.capacity;
        let bytes = &self.bufs[start..start + self.lens[i]];
        Some((bytes, socket_addr(&self.addrs[i])?))
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, which is smaller than
            // and layout-compatible with the start of sockaddr_storage.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
