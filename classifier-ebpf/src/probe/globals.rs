//! Values the agent sets at load time (`EbpfLoader::override_global`). They load as
//! constants, so the verifier prunes branches that depend on them. Kernel struct
//! offsets come from the running kernel's BTF, syscall numbers from the agent's
//! per-architecture table: nothing kernel-specific is compiled in.
use aya_ebpf::Global;

macro_rules! global {
    ($($name:ident: $ty:ty = $default:expr;)*) => {
        $(
            #[unsafe(no_mangle)]
            pub static $name: Global<$ty> = Global::new($default);
        )*
    };
}

global! {
    // struct sock_common members (struct sock starts with it).
    OFF_SKC_DADDR: u32 = 0;
    OFF_SKC_RCV_SADDR: u32 = 4;
    OFF_SKC_DPORT: u32 = 12;
    OFF_SKC_NUM: u32 = 14;
    OFF_SKC_FAMILY: u32 = 16;
    OFF_SKC_STATE: u32 = 18;
    OFF_SKC_V6_DADDR: u32 = 56;
    OFF_SKC_V6_RCV_SADDR: u32 = 72;
    // struct sock.sk_err, struct sock.sk_protocol (u16).
    OFF_SK_ERR: u32 = 0;
    OFF_SK_PROTOCOL: u32 = 0;
    // struct tcp_sock.write_seq and .snd_una (u32): bytes written and not yet
    // acknowledged.
    OFF_TP_WRITE_SEQ: u32 = 0;
    OFF_TP_SND_UNA: u32 = 0;
    // Unix stream sockets (an upstream behind `unix:/path`): struct sock's
    // sk_type (u16) and sk_socket, struct unix_sock's addr and peer, struct
    // unix_address's name, the inode after a struct socket (socket_alloc), and
    // struct inode's i_ino.
    UNIX_SOCKETS: u32 = 0;
    OFF_SK_TYPE: u32 = 0;
    OFF_SK_SOCKET: u32 = 0;
    OFF_UNIX_ADDR: u32 = 0;
    OFF_UNIX_PEER: u32 = 0;
    OFF_UNIX_ADDRESS_NAME: u32 = 0;
    OFF_SOCKET_INODE: u32 = 0;
    OFF_INODE_INO: u32 = 0;
    // struct pt_regs members (user registers saved at syscall entry).
    OFF_REGS_SI: u32 = 104;
    OFF_REGS_ORIG_AX: u32 = 120;
    OFF_REGS_DI: u32 = 112;
    OFF_REGS_DX: u32 = 96;
    OFF_REGS_R10: u32 = 56;
    // From the current task to a file descriptor's socket (`sys_io`, kernels
    // without the socket I/O tracepoints): task_struct.files, files_struct.fdt,
    // fdtable.max_fds (u32) and .fd, file.f_inode and .private_data,
    // inode.i_mode (u16), socket.sk.
    OFF_TASK_FILES: u32 = 0;
    OFF_FILES_FDT: u32 = 0;
    OFF_FDT_MAX_FDS: u32 = 0;
    OFF_FDT_FD: u32 = 0;
    OFF_FILE_INODE: u32 = 0;
    OFF_FILE_PRIVATE_DATA: u32 = 0;
    OFF_INODE_MODE: u32 = 0;
    OFF_SOCKET_SK: u32 = 0;
    // task_struct.pid and .signal, signal_struct.live (atomic_t): a forked
    // task's id, and whether an exiting thread was its process's last.
    OFF_TASK_PID: u32 = 0;
    OFF_TASK_SIGNAL: u32 = 0;
    OFF_SIGNAL_LIVE: u32 = 0;
    // Syscall numbers whose second argument is the data buffer, an iovec array, or
    // a msghdr. u32::MAX when the architecture has no such syscall.
    SYS_READ: u32 = u32::MAX;
    SYS_WRITE: u32 = u32::MAX;
    SYS_RECVFROM: u32 = u32::MAX;
    SYS_SENDTO: u32 = u32::MAX;
    SYS_READV: u32 = u32::MAX;
    SYS_WRITEV: u32 = u32::MAX;
    SYS_RECVMSG: u32 = u32::MAX;
    SYS_SENDMSG: u32 = u32::MAX;
    // sendfile: counted as a send by `sys_io` (its data is not in user memory).
    SYS_SENDFILE: u32 = u32::MAX;
    // Force a wakeup of the agent once this many bytes wait in the ring.
    RING_WAKEUP_BYTES: u64 = 1 << 20;
    // At most one progress event per socket per this many nanoseconds.
    PROGRESS_NS: u64 = 200_000_000;
}
