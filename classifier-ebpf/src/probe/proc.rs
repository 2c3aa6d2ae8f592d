//! Target tracking and the event-loop marker: `sched/sched_process_fork`,
//! `sched/sched_process_exit`, `syscalls/sys_enter_epoll_wait` (and the `pwait`
//! variants).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use classifier_ebpf::{EventKind, Exit, Fork};

use super::{
    emit::emit,
    maps::{thread_state, unwatch_thread, watch_thread, TARGET_COMMS},
    tp::{exit, field, fork},
};

/// A watched task's children (processes and threads) are watched from birth, so
/// workers forked after a reload are covered before they handle a request.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if thread_state(pid_tgid as u32).is_none() {
        return 0;
    }
    let child: i32 = field(&ctx, fork::CHILD_PID);
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

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if !unwatch_thread(tid) {
        return 0;
    }
    let group_dead: u8 = field(&ctx, exit::GROUP_DEAD);
    let pid: i32 = field(&ctx, exit::PID);
    emit::<Exit>(EventKind::Exit, pid_tgid, 0, |e| {
        // SAFETY: `e` is a reserved Exit.
        unsafe {
            (*e).pid = pid as u32;
            (*e).group_dead = group_dead;
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
