//! Maps shared by the programs. Every map is bounded; a failed insert is counted in
//! `STATS`, never silent.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use classifier_ebpf::{stat, SockState, ThreadSlot, ThreadState};

/// The address a watched thread passed to `connect` on a unix socket (key:
/// tid), from the call's entry to its return (see `unix::sys_exit_connect`).
/// LRU: an entry whose return was never seen makes room.
#[map]
pub static UNIX_CONNECTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Scratch space for the second look at a long response head
/// (`sock_io::promised_further`): its bytes never leave the kernel.
#[map]
pub static HEAD_TAIL: PerCpuArray<[u64; classifier_ebpf::head_scan::TAIL_WORDS]> =
    PerCpuArray::with_max_entries(1, 0);

/// The event stream to the agent. The agent resizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Fast path of the watched-thread filter, by `tid % THREAD_SLOTS` (see
/// `classifier_ebpf::ThreadSlot`).
#[map]
pub static THREAD_SLOTS: Array<ThreadSlot> =
    Array::with_max_entries(classifier_ebpf::THREAD_SLOTS, 0);

/// Watched threads (key: tid). The agent fills it from /proc; `sched_process_fork`
/// adds children of watched threads, `sched_process_exec` tasks that become a
/// target name, and `sched_process_exit` removes them.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn slot_of(tid: u32) -> Option<*mut ThreadSlot> {
    THREAD_SLOTS.get_ptr_mut(tid % classifier_ebpf::THREAD_SLOTS)
}

/// The state of a watched thread, or None: the filter every probe starts with.
#[inline(always)]
pub fn thread_state(tid: u32) -> Option<*mut ThreadState> {
    if tid == 0 {
        // The idle task: never watched (and 0 marks a free slot).
        return None;
    }
    let slot = slot_of(tid)?;
    // SAFETY: `slot` points to an array element valid for this program run.
    unsafe {
        if (*slot).tid == tid {
            return Some(core::ptr::addr_of_mut!((*slot).state));
        }
        if (*slot).overflow == 0 {
            return None;
        }
    }
    THREADS.get_ptr_mut(tid)
}

/// Starts watching a thread (from its fork or exec). Returns false when it could
/// not be recorded (`THREADS` full; counted).
#[inline(always)]
pub fn watch_thread(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Some(slot) = slot_of(tid) else {
        return false;
    };
    if THREADS.insert(tid, ThreadState::default(), 0).is_err() {
        count(stat::THREADS_FULL);
        return false;
    }
    // SAFETY: `slot` points to an array element valid for this program run. A new
    // thread cannot run before its fork returns, so nobody reads its state yet.
    unsafe {
        (*slot).overflow = 1;
        if (*slot).tid == 0 {
            (*slot).state = ThreadState::default();
            (*slot).tid = tid;
        }
    }
    true
}

/// Stops watching a thread (its exit). Returns whether it was watched.
#[inline(always)]
pub fn unwatch_thread(tid: u32) -> bool {
    if tid == 0 || THREADS.remove(tid).is_err() {
        return false;
    }
    if let Some(slot) = slot_of(tid) {
        // SAFETY: `slot` points to an array element valid for this program run.
        unsafe {
            if (*slot).tid == tid {
                (*slot).tid = 0;
            }
        }
    }
    true
}

/// Sockets of watched processes (key: `struct sock` address). Entries live from the
/// socket's start (connect or first use) to `tcp_destroy_sock`.
#[map]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(65536, 0);

/// The watched processes' listening ports (host order) and how many of their
/// listening sockets use each. A socket first used with one of these as its local
/// port is a client connection. The agent fills it at start; afterwards the probes
/// keep it current from LISTEN transitions in watched threads (a reload that adds
/// a `listen` directive), so the agent never rescans /proc for it.
#[map]
pub static LISTEN_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(1024, 0);

/// Process names to watch from their first instruction (`--pid NAME`): a task
/// that execs into one of these names is watched at once, before it forks workers
/// or accepts a connection.
#[map]
pub static TARGET_COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

/// Counters, indexed by `classifier_ebpf::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Evidence gaps so far, one counter shared by all CPUs (see `Header::gaps`).
/// Every event carries its current value and the agent reports each rise where it
/// sees it, so a gap is reported by the next event any CPU submits. A per-CPU
/// count reported only by its own CPU's next event could come too late: a thread
/// whose event was lost on one CPU and that then ran on the other finished its
/// exchange, complete, before that CPU submitted anything.
#[map]
pub static GAPS: Array<u32> = Array::with_max_entries(1, 0);

/// Counts an evidence gap. The increment is not atomic (this BPF target has no
/// read-modify-write atomics): two CPUs racing may count one gap instead of two,
/// but the counter still rises after both failures, so neither goes unreported.
#[inline(always)]
pub fn gap() {
    if let Some(slot) = GAPS.get_ptr_mut(0) {
        // SAFETY: a map value valid for this program run; see above for the race.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

/// The gap counter's current value, for an event's header.
#[inline(always)]
pub fn gaps_so_far() -> u32 {
    match GAPS.get_ptr(0) {
        // SAFETY: a map value valid for this program run.
        Some(slot) => unsafe { core::ptr::read_volatile(slot) },
        None => 0,
    }
}

/// Per-CPU counter behind socket ids.
#[map]
pub static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Enters a new socket in `SOCKS` under a fresh id (replacing any entry at
/// `sk`), owned by the current process; `unix_ino` is 0 for TCP. A full map is
/// counted and leaves a gap in the evidence. Returns the id and the entry.
#[inline(always)]
pub fn track(sk: u64, pid_tgid: u64, side: u8, unix_ino: u64) -> Option<(u64, *mut SockState)> {
    let id = next_sock_id();
    let state = SockState {
        id,
        owner_tgid: (pid_tgid >> 32) as u32,
        side,
        unix_ino,
        ..SockState::default()
    };
    if SOCKS.insert(sk, state, 0).is_err() {
        count(stat::SOCKS_FULL);
        gap();
        return None;
    }
    Some((id, SOCKS.get_ptr_mut(sk)?))
}

/// A socket id unique for the agent's lifetime: CPU number in the top 16 bits, a
/// per-CPU counter below.
#[inline(always)]
pub fn next_sock_id() -> u64 {
    // SAFETY: helper without arguments.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as u64;
    let Some(slot) = NEXT_ID.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let n = unsafe {
        *slot += 1;
        *slot
    };
    ((cpu + 1) << 48) | (n & 0xffff_ffff_ffff)
}
