//! Ring-buffer submission. Never wakes the agent per event: the agent drains on a
//! short timer, and a wakeup is forced only when the ring fills past a threshold
//! (measured here: a wakeup per event cut nginx's throughput to a third).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
};
use classifier_ebpf::{stat, Addr, EventKind, Header, SockOpen, UNIX_PATH_CAP};

use super::{
    globals::RING_WAKEUP_BYTES,
    maps::{count, gap, gaps_so_far, EVENTS},
};

/// Reserves an event of type `T`, lets `fill` write it, and submits it. `T` must
/// start with a [`Header`]; the header is written here. Returns whether the event
/// reached the ring.
#[inline(always)]
pub fn emit<T: 'static>(
    kind: EventKind,
    pid_tgid: u64,
    sock_id: u64,
    fill: impl FnOnce(*mut T),
) -> bool {
    // SAFETY: helper without arguments.
    emit_at(kind, unsafe { bpf_ktime_get_ns() }, pid_tgid, sock_id, fill)
}

/// [`emit`] with a timestamp the caller already read (one clock read per run on
/// the hot path).
#[inline(always)]
pub fn emit_at<T: 'static>(
    kind: EventKind,
    ts_ns: u64,
    pid_tgid: u64,
    sock_id: u64,
    fill: impl FnOnce(*mut T),
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(stat::RING_FULL);
        gap();
        return false;
    };
    let ptr = entry.as_mut_ptr();
    // SAFETY: `ptr` points to reserved ring memory of size_of::<T>() bytes and every
    // event type starts with a Header.
    unsafe {
        let header = ptr.cast::<Header>();
        (*header).kind = kind as u32;
        (*header).gaps = gaps_so_far();
        (*header).ts_ns = ts_ns;
        (*header).pid_tgid = pid_tgid;
        (*header).sock_id = sock_id;
    }
    fill(ptr);
    entry.submit(wakeup_flag());
    true
}

#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RING_WAKEUP_BYTES.load() {
        count(stat::WAKEUPS);
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// What a `SockOpen` says besides its header.
pub struct Opening {
    pub local: Addr,
    pub peer: Addr,
    pub prev_touch: u64,
    pub side: u8,
    pub how: u8,
}

/// Emits socket `id`'s `SockOpen`. `path` may write a unix socket's path into
/// its field, zeroed first. Returns whether the event reached the ring.
#[inline(always)]
pub fn emit_open(
    id: u64,
    pid_tgid: u64,
    o: &Opening,
    path: impl FnOnce(&mut [u8; UNIX_PATH_CAP]),
) -> bool {
    emit::<SockOpen>(EventKind::SockOpen, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved SockOpen, ours until it is submitted.
        let e = unsafe { &mut *e };
        e.local = o.local;
        e.peer = o.peer;
        e.prev_touch = o.prev_touch;
        e.owner_tgid = (pid_tgid >> 32) as u32;
        e.side = o.side;
        e.how = o.how;
        e._pad = [0; 2];
        e.unix_path = [0; UNIX_PATH_CAP];
        path(&mut e.unix_path);
    })
}
