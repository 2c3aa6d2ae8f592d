//! TCP lifecycle and errors: `sock/inet_sock_set_state`, `tcp/tcp_destroy_sock`,
//! `tcp/tcp_receive_reset`, `tcp/tcp_send_reset` and the raw tracepoint
//! `inet_sk_error_report`.
//!
//! These fire for every TCP socket on the host, often in softirq context under
//! whatever task was on the CPU, so they filter on `SOCKS` (a known socket), never
//! on the current task alone. The one exception is CLOSE → SYN_SENT, which runs
//! inside `connect()` in the connecting thread: that is where upstream sockets start.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use classifier_ebpf::{
    how, reset, side, stat, Addr, Destroy, EventKind, Reset, SockError, SockState, State,
};

use super::{
    emit::{emit, emit_open, Opening},
    globals::*,
    held,
    maps::{count, thread_state, track, LISTEN_PORTS, SOCKS},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    on_set_state(&ctx);
    0
}

#[inline(always)]
fn on_set_state(ctx: &RawTracePointContext) -> Option<()> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    let pid_tgid = bpf_get_current_pid_tgid();
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        return on_connect(sk, pid_tgid);
    }
    if old == TCP_LISTEN && new == TCP_SYN_RECV {
        // An accepted connection is born (the listener's clone). A known socket at
        // this address is a stale entry whose destroy we missed.
        end_stale(sk, pid_tgid);
        return None;
    }
    if new == TCP_LISTEN || (old == TCP_LISTEN && new == TCP_CLOSE) {
        return on_listen(sk, new == TCP_LISTEN, pid_tgid);
    }
    let sock = SOCKS.get_ptr_mut(sk)?;
    // A watched thread's own close: the first FIN_WAIT1 (close or shutdown) or
    // LAST_ACK (close after the peer's FIN). Only a syscall makes these changes.
    let close = if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK {
        touch_close(sock, pid_tgid)
    } else {
        None
    };
    let local_close = close.is_some();
    // Only changes the engine reads: the connect's result, the peer's FIN, the
    // owner's close, and an abortive end (RST) of an open connection. The rest of
    // a close handshake (FIN_WAIT2, LAST_ACK → CLOSE...) says nothing new.
    let informative = old == TCP_SYN_SENT
        || new == TCP_CLOSE_WAIT
        || local_close
        || (new == TCP_CLOSE && (old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT));
    if !informative {
        return None;
    }
    held::release(sock);
    let (local, peer) = read_endpoints(sk)?;
    // SAFETY: `sock` points to a map value valid for this program run.
    let (id, msg_bytes, msg_last_ns, msg_dir) = unsafe {
        (
            (*sock).id,
            (*sock).msg_bytes,
            (*sock).msg_last_ns,
            (*sock).dir,
        )
    };
    emit::<State>(EventKind::State, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved State.
        unsafe {
            (*e).local = local;
            (*e).peer = peer;
            (*e).msg_bytes = msg_bytes;
            (*e).msg_last_ns = msg_last_ns;
            (*e).old = old as u8;
            (*e).new = new as u8;
            (*e).msg_dir = msg_dir;
            (*e).local_close = local_close as u8;
            (*e)._pad = 0;
            (*e).prev_touch = close.unwrap_or(0);
        }
    });
    Some(())
}

/// CLOSE → SYN_SENT in a watched thread: the proxy connects somewhere. The local
/// port is not chosen yet (it shows at the next state change).
#[inline(always)]
fn on_connect(sk: u64, pid_tgid: u64) -> Option<()> {
    let thread = thread_state(pid_tgid as u32)?;
    if !is_inet_tcp(sk) {
        return None;
    }
    end_stale(sk, pid_tgid);
    // A reused socket pointer whose destroy we missed is replaced: the identity
    // starts here.
    let (id, sock) = track(sk, pid_tgid, side::UPSTREAM, 0)?;
    // SAFETY: `thread` points to a map value valid for this program run.
    let prev_touch = unsafe {
        let prev = (*thread).last_touch;
        (*thread).last_touch = id;
        (*thread).last_touch_receiving = 0;
        prev
    };
    let (local, peer) = read_endpoints(sk).unwrap_or_default();
    let opening = Opening {
        local,
        peer,
        prev_touch,
        side: side::UPSTREAM,
        how: how::CONNECT,
    };
    let sent = emit_open(id, pid_tgid, &opening, |_| {});
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe { (*sock).announced = sent as u8 };
    Some(())
}

/// A socket is born at `sk`: an entry still there belongs to a socket whose
/// destroy never reached us (the kernel skips a tracepoint's program while another
/// BPF program or map syscall is active on that CPU). Ends it now, so the agent
/// closes the old identity and the new socket is never mistaken for it.
#[inline(always)]
fn end_stale(sk: u64, pid_tgid: u64) {
    let Some(sock) = SOCKS.get_ptr_mut(sk) else {
        return;
    };
    count(stat::STALE_SOCKS);
    end_entry(sk, sock, pid_tgid, false);
}

/// `listen()` or the close of a listening socket in a watched thread: keeps the
/// count of the proxy's listening sockets per port.
#[inline(always)]
fn on_listen(sk: u64, opened: bool, pid_tgid: u64) -> Option<()> {
    thread_state(pid_tgid as u32)?;
    if !is_inet_tcp(sk) {
        return None;
    }
    // SAFETY: read of kernel memory through the probe helper, at a BTF offset.
    let port: u16 =
        unsafe { bpf_probe_read_kernel((sk + OFF_SKC_NUM.load() as u64) as *const u16) }.ok()?;
    match LISTEN_PORTS.get_ptr_mut(port) {
        // SAFETY: `n` points to a map value valid for this program run.
        Some(n) => unsafe {
            if opened {
                *n += 1;
            } else if *n > 1 {
                *n -= 1;
            } else {
                let _ = LISTEN_PORTS.remove(port);
            }
        },
        None if opened => {
            let _ = LISTEN_PORTS.insert(port, 1, 0);
        }
        None => {}
    }
    Some(())
}

/// Marks the socket closed by its thread, once, and records the close as that
/// thread's touch. Returns, when this call was that close, the thread's touch
/// before it (0: none).
#[inline(always)]
fn touch_close(sock: *mut SockState, pid_tgid: u64) -> Option<u64> {
    let thread = thread_state(pid_tgid as u32)?;
    // SAFETY: both pointers point to map values valid for this program run.
    unsafe {
        if (*sock).closed != 0 {
            return None;
        }
        (*sock).closed = 1;
        let prev = (*thread).last_touch;
        (*thread).last_touch = (*sock).id;
        (*thread).last_touch_receiving = 0;
        Some(prev)
    }
}

/// Whether `sk` is a TCP socket over IPv4 or IPv6 (`sk_family`, `sk_protocol`).
#[inline(always)]
pub fn is_inet_tcp(sk: u64) -> bool {
    // SAFETY: reads of kernel memory through the probe helper, at BTF offsets.
    let (family, protocol) = unsafe {
        (
            bpf_probe_read_kernel((sk + OFF_SKC_FAMILY.load() as u64) as *const u16),
            bpf_probe_read_kernel((sk + OFF_SK_PROTOCOL.load() as u64) as *const u16),
        )
    };
    matches!(family, Ok(AF_INET) | Ok(AF_INET6)) && protocol == Ok(IPPROTO_TCP)
}

/// Local and peer endpoints read from `struct sock_common`.
#[inline(always)]
pub fn read_endpoints(sk: u64) -> Option<(Addr, Addr)> {
    // SAFETY: reads of kernel memory through the probe helper, at BTF offsets.
    unsafe {
        let family: u16 =
            bpf_probe_read_kernel((sk + OFF_SKC_FAMILY.load() as u64) as *const u16).ok()?;
        let local_port: u16 =
            bpf_probe_read_kernel((sk + OFF_SKC_NUM.load() as u64) as *const u16).ok()?;
        let peer_port: u16 =
            bpf_probe_read_kernel((sk + OFF_SKC_DPORT.load() as u64) as *const u16).ok()?;
        let mut local = Addr {
            family,
            port: local_port,
            ..Addr::default()
        };
        let mut peer = Addr {
            family,
            port: u16::from_be(peer_port),
            ..Addr::default()
        };
        if family == AF_INET6 {
            local.addr =
                bpf_probe_read_kernel((sk + OFF_SKC_V6_RCV_SADDR.load() as u64) as *const [u8; 16])
                    .ok()?;
            peer.addr =
                bpf_probe_read_kernel((sk + OFF_SKC_V6_DADDR.load() as u64) as *const [u8; 16])
                    .ok()?;
        } else {
            let s: [u8; 4] =
                bpf_probe_read_kernel((sk + OFF_SKC_RCV_SADDR.load() as u64) as *const [u8; 4])
                    .ok()?;
            let d: [u8; 4] =
                bpf_probe_read_kernel((sk + OFF_SKC_DADDR.load() as u64) as *const [u8; 4]).ok()?;
            local.addr[..4].copy_from_slice(&s);
            peer.addr[..4].copy_from_slice(&d);
        }
        Some((local, peer))
    }
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    on_destroy(ctx.arg(0));
    0
}

#[inline(always)]
fn on_destroy(sk: u64) -> Option<()> {
    let sock = SOCKS.get_ptr_mut(sk)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // A socket not yet closed by its thread is destroyed inside that thread's
    // close() (it was already in CLOSE: refused, reset, or closed with linger 0).
    let local_close = touch_close(sock, pid_tgid).is_some();
    end_entry(sk, sock, pid_tgid, local_close);
    Some(())
}

/// Reports a socket's end (`Destroy`, with where its last message stood) and
/// forgets it.
#[inline(always)]
pub(super) fn end_entry(sk: u64, sock: *mut SockState, pid_tgid: u64, local_close: bool) {
    held::release(sock);
    // SAFETY: `sock` points to a map value valid for this program run.
    let (id, msg_bytes, msg_last_ns, msg_dir) = unsafe {
        (
            (*sock).id,
            (*sock).msg_bytes,
            (*sock).msg_last_ns,
            (*sock).dir,
        )
    };
    emit::<Destroy>(EventKind::Destroy, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved Destroy.
        unsafe {
            (*e).msg_bytes = msg_bytes;
            (*e).msg_last_ns = msg_last_ns;
            (*e).msg_dir = msg_dir;
            (*e).local_close = local_close as u8;
            (*e)._pad = [0; 6];
        }
    });
    let _ = SOCKS.remove(sk);
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    emit_reset(ctx.arg(0), reset::RECEIVED);
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, reason]): sk is
    // NULL for a reset answering a packet no socket owns.
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        emit_reset(sk, reset::SENT);
    }
    0
}

#[inline(always)]
fn emit_reset(sk: u64, direction: u8) -> Option<()> {
    let sock = SOCKS.get_ptr_mut(sk)?;
    held::release(sock);
    // SAFETY: `sock` points to a map value valid for this program run; the state is
    // read through the probe helper at a BTF offset (the socket's state when the
    // reset was sent; the engine reads it for sent resets only).
    let (id, state, unacked) = unsafe {
        let (state, unacked) = if direction == reset::SENT {
            let state =
                bpf_probe_read_kernel((sk + OFF_SKC_STATE.load() as u64) as *const u8).unwrap_or(0);
            (state, 0)
        } else {
            // The tracepoint fires before the write queue is purged.
            let write_seq: u32 =
                bpf_probe_read_kernel((sk + OFF_TP_WRITE_SEQ.load() as u64) as *const u32)
                    .unwrap_or(0);
            let snd_una: u32 =
                bpf_probe_read_kernel((sk + OFF_TP_SND_UNA.load() as u64) as *const u32)
                    .unwrap_or(0);
            (0, write_seq.wrapping_sub(snd_una))
        };
        ((*sock).id, state, unacked)
    };
    emit::<Reset>(EventKind::Reset, bpf_get_current_pid_tgid(), id, |e| {
        // SAFETY: `e` is a reserved Reset.
        unsafe {
            (*e).dir = direction;
            (*e).state = state;
            (*e)._pad = [0; 2];
            (*e).unacked = unacked;
        }
    });
    Some(())
}

/// Raw tracepoint: its regular twin carries the 4-tuple but not the socket.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    on_error_report(sk);
    0
}

#[inline(always)]
fn on_error_report(sk: u64) -> Option<()> {
    let sock = SOCKS.get_ptr_mut(sk)?;
    held::release(sock);
    // SAFETY: `sock` points to a map value valid for this program run; the rest are
    // reads of kernel memory through the probe helper at BTF offsets.
    let (id, errno, state) = unsafe {
        let errno: i32 =
            bpf_probe_read_kernel((sk + OFF_SK_ERR.load() as u64) as *const i32).ok()?;
        let state: u8 =
            bpf_probe_read_kernel((sk + OFF_SKC_STATE.load() as u64) as *const u8).ok()?;
        ((*sock).id, errno, state)
    };
    emit::<SockError>(EventKind::SockError, bpf_get_current_pid_tgid(), id, |e| {
        // SAFETY: `e` is a reserved SockError.
        unsafe {
            (*e).errno = errno;
            (*e).state = state;
            (*e)._pad = [0; 3];
        }
    });
    Some(())
}
