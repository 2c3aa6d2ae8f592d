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

/// `syscalls/sys_enter_connect` and `syscalls/sys_exit_connect`.
pub mod connect {
    pub const USERVADDR: usize = 24;
    pub const RET: usize = 16;
}
