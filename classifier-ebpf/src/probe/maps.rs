//! Maps shared by the programs. Every map is bounded; a failed insert is counted in
//! `STATS`, never silent.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use classifier_ebpf::{stat, SockState, ThreadState};

/// The event stream to the agent. The agent resizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Watched threads (key: tid). The agent fills it from /proc; `sched_process_fork`
/// adds children of watched threads and `sched_process_exit` removes them.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(16384, 0);

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

/// Per-CPU evidence gaps not yet reported in an event header (see `Header::gaps`).
#[map]
pub static GAPS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Counts an evidence gap: reported in the next event this CPU submits.
#[inline(always)]
pub fn gap() {
    if let Some(slot) = GAPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Takes the gaps counted so far on this CPU.
#[inline(always)]
pub fn take_gaps() -> u32 {
    match GAPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        Some(slot) => unsafe { core::mem::replace(&mut *slot, 0) },
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
