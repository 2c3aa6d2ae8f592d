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
pub fn hold(
    sock: *mut SockState,
    now: u64,
    pid_tgid: u64,
    prev_touch: u64,
    ret: i32,
    prev_bytes: u64,
) {
    // A request start already held (its reply's event was lost) goes first.
    release(sock);
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe {
        (*sock).held_prev_touch = prev_touch;
        (*sock).held_prev_bytes = prev_bytes.min(u64::from(u32::MAX)) as u32;
        (*sock).held_ret = ret;
        (*sock).held_tid = pid_tgid as u32;
        (*sock).held_ts = now;
    }
}

/// A request start taken from a socket's state.
pub struct Held {
    pub ts: u64,
    pub prev_touch: u64,
    pub ret: i32,
    pub prev_bytes: u32,
    /// The sending thread.
    pub pid_tgid: u64,
}

/// Takes the request start held on `sock`, if any.
#[inline(always)]
pub fn take(sock: *mut SockState) -> Option<Held> {
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
        Some(Held {
            ts,
            prev_touch: (*sock).held_prev_touch,
            ret: (*sock).held_ret,
            prev_bytes: (*sock).held_prev_bytes,
            pid_tgid,
        })
    }
}

/// Emits the request start held on `sock`, if any, as a message event of its own
/// (no first line), ahead of an event about the socket.
#[inline(always)]
pub fn release(sock: *mut SockState) {
    let Some(held) = take(sock) else {
        return;
    };
    // SAFETY: `sock` points to a map value valid for this program run.
    let id = unsafe { (*sock).id };
    emit_at::<Message>(EventKind::Message, held.ts, held.pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved Message; every byte is written (ring memory is
        // not zeroed, and no stale byte may reach the agent).
        unsafe {
            (*e).prev_touch = held.prev_touch;
            (*e).prev_msg_bytes = u64::from(held.prev_bytes);
            (*e).prev_msg_last_ns = 0;
            (*e).ret = held.ret;
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
