//! Request starts held back on upstream sockets (see `SockState::held_ts`).
//!
//! A send that starts a request on an upstream connection right after its thread
//! read a client's request is attributed by the loop marker alone: its first line
//! is not captured and its event is not emitted at once. It rides on the socket's
//! next event: the reply's first bytes (one `Reply` event for both), or, on any
//! other path (a state change, reset, error, end of file, progress, destroy), a
//! message event of its own emitted just before that event. Either way the agent
//! sees it before anything else about the socket, with its own timestamp.
use classifier_ebpf::{dir, EventKind, Message, SockState, LINE_CAP};

use super::emit::emit_at;

/// Holds the request start that a send just made on `sock`.
#[inline(always)]
pub fn hold(sock: *mut SockState, now: u64, pid_tgid: u64, prev_touch: u64, ret: i32) {
    // A request start already held (its reply's event was lost) goes first.
    release(sock);
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe {
        (*sock).held_prev_touch = prev_touch;
        (*sock).held_ret = ret;
        (*sock).held_tid = pid_tgid as u32;
        (*sock).held_ts = now;
    }
}

/// Takes the request start held on `sock`, if any: (when, previous touch, bytes,
/// the sending thread's `pid_tgid`).
#[inline(always)]
pub fn take(sock: *mut SockState) -> Option<(u64, u64, i32, u64)> {
    // SAFETY: `sock` points to a map value valid for this program run. A reset or
    // error report in softirq may race with the owning thread here; the worst case
    // is the same held send emitted twice with one timestamp, which the agent
    // recognises.
    unsafe {
        let ts = (*sock).held_ts;
        if ts == 0 {
            return None;
        }
        (*sock).held_ts = 0;
        let pid_tgid = (u64::from((*sock).owner_tgid) << 32) | u64::from((*sock).held_tid);
        Some((ts, (*sock).held_prev_touch, (*sock).held_ret, pid_tgid))
    }
}

/// Emits the request start held on `sock`, if any, as a message event of its own
/// (no first line), ahead of an event about the socket.
#[inline(always)]
pub fn release(sock: *mut SockState) {
    let Some((ts, prev_touch, ret, pid_tgid)) = take(sock) else {
        return;
    };
    // SAFETY: `sock` points to a map value valid for this program run.
    let id = unsafe { (*sock).id };
    emit_at::<Message>(EventKind::Message, ts, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved Message; every byte is written (ring memory is
        // not zeroed, and no stale byte may reach the agent).
        unsafe {
            (*e).prev_touch = prev_touch;
            (*e).prev_msg_bytes = 0;
            (*e).prev_msg_last_ns = 0;
            (*e).ret = ret;
            (*e).dir = dir::SEND;
            (*e).flags = 0;
            (*e).line_len = 0;
            let words = (*e).line.as_mut_ptr().cast::<u64>();
            let mut i = 0;
            while i < LINE_CAP / 8 {
                *words.add(i) = 0;
                i += 1;
            }
        }
    });
}
