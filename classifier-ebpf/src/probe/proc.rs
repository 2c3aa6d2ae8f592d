//! Target tracking and the event-loop marker: `sched/sched_process_fork`,
//! `sched/sched_process_exit`, `syscalls/sys_enter_epoll_wait` (and the `pwait`
//! variants).
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use classifier_ebpf::{EventKind, Exit, Fork};

use super::{
    emit::emit,
    globals::{OFF_SIGNAL_LIVE, OFF_TASK_PID, OFF_TASK_SIGNAL},
    maps::{thread_state, unwatch_thread, watch_thread, TARGET_COMMS},
};

/// A watched task's children (processes and threads) are watched from birth, so
/// workers forked after a reload are covered before they handle a request.
/// A raw tracepoint: `TP_PROTO(struct task_struct *parent, struct task_struct
/// *child)` on every kernel, where the record's layout is not.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if thread_state(pid_tgid as u32).is_none() {
        return 0;
    }
    let child_task: u64 = ctx.arg(1);
    // SAFETY: read of kernel memory through the probe helper, at a BTF offset.
    let Ok(child) =
        (unsafe { bpf_probe_read_kernel((child_task + OFF_TASK_PID.load() as u64) as *const i32) })
    else {
        return 0;
    };
    // Not recorded (full): counted; the agent still learns of the child below.
    let _ = watch_thread(child as u32);
    // The child starts with the parent's name.
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit::<Fork>(EventKind::Fork, pid_tgid, 0, |e| {
        // SAFETY: `e` is a reserved Fork.
        unsafe {
            (*e).child_pid = child as u32;
            (*e)._pad = 0;
            (*e).child_comm = comm;
        }
    });
    0
}

/// A watched thread exits. A raw tracepoint (`TP_PROTO(struct task_struct *p,
/// ...)`; 6.1 passes no `group_dead`): the thread was its process's last when
/// the process's count of live threads, already decremented, is 0.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if !unwatch_thread(tid) {
        return 0;
    }
    // SAFETY: helper without arguments; the task is read through the probe helper.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: reads of kernel memory through the probe helper, at BTF offsets.
    let live = unsafe {
        bpf_probe_read_kernel((task + OFF_TASK_SIGNAL.load() as u64) as *const u64).and_then(
            |signal| bpf_probe_read_kernel((signal + OFF_SIGNAL_LIVE.load() as u64) as *const i32),
        )
    };
    // Unreadable: say the process lives on (a later exit or rescan ends it).
    let group_dead = live == Ok(0);
    emit::<Exit>(EventKind::Exit, pid_tgid, 0, |e| {
        // SAFETY: `e` is a reserved Exit.
        unsafe {
            (*e).pid = tid;
            (*e).group_dead = group_dead as u8;
            (*e)._pad = [0; 3];
        }
    });
    0
}

/// A task became a process named like a target (`--pid NAME`): watch it now. The
/// agent learns of it from the event and names it.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    if TARGET_COMMS.get_ptr(comm).is_none() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watch_thread(pid_tgid as u32) {
        return 0;
    }
    emit::<Fork>(EventKind::Fork, pid_tgid, 0, |e| {
        // SAFETY: `e` is a reserved Fork; an exec reports the task as its own child.
        unsafe {
            (*e).child_pid = pid_tgid as u32;
            (*e)._pad = 0;
            (*e).child_comm = comm;
        }
    });
    0
}

/// The top of a watched thread's event loop: the "last touched socket" starts over.
#[tracepoint]
pub fn sys_enter_epoll_wait(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(thread) = thread_state(pid_tgid as u32) {
        // SAFETY: `thread` points to a map value valid for this program run.
        unsafe {
            (*thread).last_touch = 0;
            (*thread).last_touch_receiving = 0;
            // No TLS call spans an epoll_wait: a return probe that never ran
            // (the kernel's limit on pending returns) must not mark the thread's
            // plain sockets as TLS.
            (*thread).in_tls = 0;
        }
    }
    0
}
