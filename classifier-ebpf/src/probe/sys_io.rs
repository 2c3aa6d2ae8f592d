//! Socket I/O on kernels without `sock/sock_send_length` and `sock/sock_recv_length`
//! (before Linux 6.5): the raw tracepoint `sys_exit`, after every syscall of
//! every process. Only a watched thread's data syscalls go further: their file
//! descriptor is followed to its `struct sock`, and the call then counts exactly
//! as the socket tracepoints would count it (`sock_io::socket_call`).
//!
//! Dearer than the socket tracepoints: the program runs after every syscall on
//! the host, not only socket calls, and a watched call walks five kernel
//! structures to find its socket. The agent attaches it only where the socket
//! tracepoints are missing, or when asked to (`--io-probes syscall`).
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use classifier_ebpf::dir;

use super::{globals::*, maps::thread_state, sock_io::socket_call};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_io(ctx: RawTracePointContext) -> i32 {
    let _ = on_sys_exit(&ctx);
    0
}

#[inline(always)]
fn on_sys_exit(ctx: &RawTracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = thread_state(pid_tgid as u32)?;
    // TP_PROTO(struct pt_regs *regs, long ret). The registers are read through
    // the task's BTF pointer (direct loads the verifier checks), as `sock_io` does.
    let ret = ctx.arg::<u64>(1) as i64;
    // SAFETY: helpers returning the current task and its saved user registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // SAFETY: in-bounds loads of pt_regs fields (offsets from BTF).
    let nr =
        unsafe { core::ptr::read_volatile((regs + OFF_REGS_ORIG_AX.load() as u64) as *const u64) }
            as u32;
    let direction = if nr == SYS_READ.load()
        || nr == SYS_READV.load()
        || nr == SYS_RECVFROM.load()
        || nr == SYS_RECVMSG.load()
    {
        dir::RECV
    } else if nr == SYS_WRITE.load()
        || nr == SYS_WRITEV.load()
        || nr == SYS_SENDTO.load()
        || nr == SYS_SENDMSG.load()
        || nr == SYS_SENDFILE.load()
    {
        dir::SEND
    } else {
        return None;
    };
    // The flags of recvfrom (fourth argument) and recvmsg (third): MSG_PEEK is
    // all the counting needs.
    // SAFETY: as above.
    let (fd, flags) = unsafe {
        let arg = |off: u32| core::ptr::read_volatile((regs + off as u64) as *const u64);
        let flags = if nr == SYS_RECVFROM.load() {
            arg(OFF_REGS_R10.load())
        } else if nr == SYS_RECVMSG.load() {
            arg(OFF_REGS_DX.load())
        } else {
            0
        };
        (arg(OFF_REGS_DI.load()), flags)
    };
    let sk = socket_of(fd)?;
    // The socket tracepoints see the `int` the socket layer returns.
    socket_call::<false, false>(thread, pid_tgid, sk, ret as i32, flags as i32, direction, 0)
}

/// The `struct sock` behind the current task's file descriptor `fd`, if it is a
/// socket: task → files → fdtable → file; the file's inode says whether it is a
/// socket, and then its private data is the `struct socket`.
#[inline(always)]
fn socket_of(fd: u64) -> Option<u64> {
    // SAFETY: helper without arguments; the pointer is only read through the
    // probe helper below.
    let task = unsafe { bpf_get_current_task() };
    let files = read_u64(task + OFF_TASK_FILES.load() as u64)?;
    let fdt = read_u64(files + OFF_FILES_FDT.load() as u64)?;
    // SAFETY: read of kernel memory through the probe helper, at a BTF offset.
    let max_fds: u32 =
        unsafe { bpf_probe_read_kernel((fdt + OFF_FDT_MAX_FDS.load() as u64) as *const u32) }
            .ok()?;
    if fd >= max_fds as u64 {
        return None;
    }
    let table = read_u64(fdt + OFF_FDT_FD.load() as u64)?;
    let file = read_u64(table + fd * 8)?;
    let inode = read_u64(file + OFF_FILE_INODE.load() as u64)?;
    // SAFETY: as above.
    let mode: u16 =
        unsafe { bpf_probe_read_kernel((inode + OFF_INODE_MODE.load() as u64) as *const u16) }
            .ok()?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket = read_u64(file + OFF_FILE_PRIVATE_DATA.load() as u64)?;
    read_u64(socket + OFF_SOCKET_SK.load() as u64)
}

/// A non-null pointer-sized value at kernel address `at`.
#[inline(always)]
fn read_u64(at: u64) -> Option<u64> {
    // SAFETY: read of kernel memory through the probe helper (a fault returns an
    // error, never a crash).
    let v = unsafe { bpf_probe_read_kernel(at as *const u64) }.ok()?;
    (v != 0).then_some(v)
}
