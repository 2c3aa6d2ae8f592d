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
//!
//! A connect that fails (nothing listens: `ECONNREFUSED`; no such path:
//! `ENOENT`; the server's accept queue is full: `EAGAIN`) never makes a socket
//! the I/O probes see; `connect`'s own tracepoints report it, as a socket that
//! opened, failed and ended at once.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use classifier_ebpf::{how, side, Addr, Destroy, EventKind, SockError, SockState, AF_UNIX};

use super::{
    emit::{emit, emit_open, Opening},
    globals::*,
    maps::{next_sock_id, thread_state, track, UNIX_CONNECTS},
    tp,
};

const EINPROGRESS: i64 = 115;

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
    let (id, sock) = track(sk, pid_tgid, side::UPSTREAM, ino)?;
    announce_at(sock, id, path, pid_tgid);
    Some(sock)
}

/// Announces a unix socket whose start event was lost, as first used now.
#[inline(always)]
pub fn announce(sk: u64, sock: *mut SockState, pid_tgid: u64) {
    if let Some((_, path)) = connecting_end(sk) {
        // SAFETY: `sock` points to a map value valid for this program run.
        announce_at(sock, unsafe { (*sock).id }, path, pid_tgid);
    }
}

/// Whether the unix socket tracked in `sock` is gone and `sk` is a new socket
/// at its address (a TCP entry never is).
#[inline(always)]
pub fn replaced(sk: u64, sock: *mut SockState) -> bool {
    // SAFETY: `sock` points to a map value valid for this program run.
    let known = unsafe { (*sock).unix_ino };
    known != 0 && inode_number(sk).is_some_and(|ino| ino != known)
}

/// Emits the `SockOpen` of a tracked unix socket, its peer's path read at
/// `path` (kernel memory), and notes whether it reached the ring.
#[inline(always)]
fn announce_at(sock: *mut SockState, id: u64, path: u64, pid_tgid: u64) {
    let sent = emit_open(id, pid_tgid, &opening(0, how::FIRST_USE), |dest| {
        // SAFETY: a read of kernel memory through the probe helper, up to the
        // path's NUL: nothing after it leaves the kernel.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(path as *const u8, dest) };
    });
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe { (*sock).announced = sent as u8 };
}

/// A unix upstream socket's opening: no addresses, no ports.
#[inline(always)]
fn opening(prev_touch: u64, how: u8) -> Opening {
    let unix = Addr {
        family: AF_UNIX,
        ..Addr::default()
    };
    Opening {
        local: unix,
        peer: unix,
        prev_touch,
        side: side::UPSTREAM,
        how,
    }
}

/// A watched thread calls `connect`: keeps a unix address for the return.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if UNIX_SOCKETS.load() == 0 || thread_state(tid).is_none() {
        return 0;
    }
    let addr: u64 = tp::field(&ctx, tp::connect::USERVADDR);
    // SAFETY: a read of the caller's memory through the probe helper.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }.unwrap_or(0);
    if family == AF_UNIX {
        let _ = UNIX_CONNECTS.insert(&tid, &addr, 0);
    }
    0
}

/// `connect` returns: a unix connect that failed is reported as a socket that
/// opened (for the thread's exchange), failed with the call's errno, and ended.
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(addr) = (unsafe { UNIX_CONNECTS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = UNIX_CONNECTS.remove(&tid);
    let ret: i64 = tp::field(&ctx, tp::connect::RET);
    if ret >= 0 || ret == -EINPROGRESS {
        return 0;
    }
    let Some(thread) = thread_state(tid) else {
        return 0;
    };
    let id = next_sock_id();
    // SAFETY: `thread` points to a map value valid for this program run.
    let prev_touch = unsafe {
        let prev = (*thread).last_touch;
        // The failed socket is the thread's last touch: a retry chains to it.
        (*thread).last_touch = id;
        (*thread).last_touch_receiving = 0;
        prev
    };
    emit_open(id, pid_tgid, &opening(prev_touch, how::CONNECT), |dest| {
        // SAFETY: a read of the caller's `sockaddr_un` (after its 2-byte
        // family) through the probe helper, up to the path's NUL.
        let _ = unsafe { bpf_probe_read_user_str_bytes((addr + 2) as *const u8, dest) };
    });
    emit::<SockError>(EventKind::SockError, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved SockError.
        unsafe {
            (*e).errno = (-ret) as i32;
            (*e).state = 0;
            (*e)._pad = [0; 3];
        }
    });
    emit::<Destroy>(EventKind::Destroy, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved Destroy.
        unsafe {
            (*e).msg_bytes = 0;
            (*e).msg_last_ns = 0;
            (*e).msg_dir = 0;
            (*e).local_close = 1;
            (*e)._pad = [0; 6];
        }
    });
    0
}
