//! Direct reads of tracepoint records. Offsets come from each tracepoint's
//! `format` file; the agent checks them against the running kernel before
//! attaching (classifier-user `probes::formats`).
use aya_ebpf::{programs::TracePointContext, EbpfContext};

/// Reads a field of the tracepoint record at a constant offset.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the verifier checks that `offset..offset + size_of::<T>()` lies inside
    // the tracepoint record (PTR_TO_CTX with a constant offset); the offsets are the
    // format file's, checked at start-up.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Reads an array field through the probe helper: the verifier refuses loads
/// through a context pointer that LLVM has offset, which it does for arrays.
#[inline(always)]
pub fn array_field<T: Copy + Default>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: bounded read of the tracepoint record through the probe helper.
    unsafe { ctx.read_at::<T>(offset) }.unwrap_or_default()
}

/// `sock/sock_send_length`, `sock/sock_recv_length`.
pub mod sock_length {
    pub const SK: usize = 8;
    pub const FAMILY: usize = 16;
    pub const PROTOCOL: usize = 18;
    pub const RET: usize = 20;
    pub const FLAGS: usize = 24;
}

/// `sock/inet_sock_set_state`.
pub mod set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// `tcp/tcp_destroy_sock`, `tcp/tcp_receive_reset`.
pub mod tcp_sk {
    pub const SKADDR: usize = 8;
}

/// `tcp/tcp_send_reset`.
pub mod send_reset {
    pub const SKADDR: usize = 16;
    pub const STATE: usize = 24;
}

/// `sched/sched_process_fork`.
pub mod fork {
    pub const CHILD_PID: usize = 20;
}

/// `sched/sched_process_exit`.
pub mod exit {
    pub const PID: usize = 24;
    pub const GROUP_DEAD: usize = 32;
}
