//! Upstreams behind a unix stream socket (`proxy_pass http://unix:/path`,
//! `fastcgi_pass unix:/run/php/php-fpm.sock`): the proxy's end of such a
//! connection is tracked like a TCP upstream connection, named by its peer's
//! path.
//!
//! Only the connecting end qualifies: an unbound socket (no `addr` of its own)
//! whose peer is bound (the server's accepted socket shares its listener's
//! address). The proxy's socketpairs (nginx's master-worker channels: neither
//! end bound) and connections accepted on a unix listener (bound) stay out.
//!
//! The kernel has no tracepoint for a unix socket's end, so an entry stays in
//! `SOCKS` after its socket is gone; the socket's inode number, kept in the
//! entry, tells a new socket at the same address apart (slab addresses are
//! reused soon), and the old entry is then ended (`Destroy`) and replaced.
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use classifier_ebpf::{how, side, stat, Addr, EventKind, SockOpen, SockState, AF_UNIX};

use super::{
    emit::emit,
    globals::*,
    maps::{count, gap, next_sock_id, SOCKS},
};

const SOCK_STREAM: u16 = 1;

/// Reads a kernel pointer at `base + offset`; `None` if unreadable or NULL.
#[inline(always)]
fn pointer_at(base: u64, offset: u32) -> Option<u64> {
    // SAFETY: a read of kernel memory through the probe helper, at a BTF offset.
    let p: u64 = unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64) }.ok()?;
    (p != 0).then_some(p)
}

/// The inode number of the socket `sk` belongs to.
#[inline(always)]
fn inode_number(sk: u64) -> Option<u64> {
    let socket = pointer_at(sk, OFF_SK_SOCKET.load())?;
    let at = socket + OFF_SOCKET_INODE.load() as u64 + OFF_INODE_INO.load() as u64;
    // SAFETY: as in `pointer_at`.
    unsafe { bpf_probe_read_kernel(at as *const u64) }.ok()
}

/// If `sk` is the connecting end of a unix stream connection: its inode number
/// and the address of its peer's `sun_path`.
#[inline(always)]
fn connecting_end(sk: u64) -> Option<(u64, u64)> {
    // 0 when this kernel's BTF did not describe unix sockets.
    if UNIX_SOCKETS.load() == 0 {
        return None;
    }
    // SAFETY: reads of kernel memory through the probe helper, at BTF offsets.
    let (family, kind) = unsafe {
        (
            bpf_probe_read_kernel((sk + OFF_SKC_FAMILY.load() as u64) as *const u16).ok()?,
            bpf_probe_read_kernel((sk + OFF_SK_TYPE.load() as u64) as *const u16).ok()?,
        )
    };
    if family != AF_UNIX || kind != SOCK_STREAM || pointer_at(sk, OFF_UNIX_ADDR.load()).is_some() {
        return None;
    }
    let peer = pointer_at(sk, OFF_UNIX_PEER.load())?;
    let peer_addr = pointer_at(peer, OFF_UNIX_ADDR.load())?;
    // `struct sockaddr_un`: a 2-byte family, then the path.
    let path = peer_addr + OFF_UNIX_ADDRESS_NAME.load() as u64 + 2;
    Some((inode_number(sk)?, path))
}

/// Starts tracking `sk` if it is the connecting end of a unix stream socket.
#[inline(always)]
pub fn adopt(sk: u64, pid_tgid: u64) -> Option<*mut SockState> {
    let (ino, path) = connecting_end(sk)?;
    let id = next_sock_id();
    let state = SockState {
        id,
        owner_tgid: (pid_tgid >> 32) as u32,
        side: side::UPSTREAM,
        unix: 1,
        unix_ino: ino,
        ..SockState::default()
    };
    if SOCKS.insert(sk, state, 0).is_err() {
        count(stat::SOCKS_FULL);
        gap();
        return None;
    }
    let sock = SOCKS.get_ptr_mut(sk)?;
    emit_open(sock, id, path, pid_tgid);
    Some(sock)
}

/// Announces a unix socket whose start event was lost, as first used now.
#[inline(always)]
pub fn announce(sk: u64, sock: *mut SockState, pid_tgid: u64) {
    if let Some((_, path)) = connecting_end(sk) {
        // SAFETY: `sock` points to a map value valid for this program run.
        emit_open(sock, unsafe { (*sock).id }, path, pid_tgid);
    }
}

/// Whether the unix socket tracked in `sock` is gone and `sk` is a new socket
/// at its address (a TCP entry never is).
#[inline(always)]
pub fn replaced(sk: u64, sock: *mut SockState) -> bool {
    // SAFETY: `sock` points to a map value valid for this program run.
    if unsafe { (*sock).unix } == 0 {
        return false;
    }
    // SAFETY: as above.
    let known = unsafe { (*sock).unix_ino };
    inode_number(sk).is_some_and(|ino| ino != known)
}

#[inline(always)]
fn emit_open(sock: *mut SockState, id: u64, path: u64, pid_tgid: u64) {
    let unix = Addr {
        family: AF_UNIX,
        ..Addr::default()
    };
    let sent = emit::<SockOpen>(EventKind::SockOpen, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved SockOpen; the path is read into its own
        // zeroed field, up to its NUL (nothing after it leaves the kernel).
        unsafe {
            (*e).local = unix;
            (*e).peer = unix;
            (*e).prev_touch = 0;
            (*e).owner_tgid = (pid_tgid >> 32) as u32;
            (*e).side = side::UPSTREAM;
            (*e).how = how::FIRST_USE;
            (*e)._pad = [0; 2];
            (*e).unix_path = [0; classifier_ebpf::UNIX_PATH_CAP];
            let _ = bpf_probe_read_kernel_str_bytes(path as *const u8, &mut (*e).unix_path);
        }
    });
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe { (*sock).announced = sent as u8 };
}
