//! What the running kernel looks like: struct offsets from its BTF, tracepoint
//! record layouts from tracefs, and this architecture's syscall numbers. Nothing
//! kernel-specific is compiled into the probes.
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use btf_rs::{Btf, BtfType, Type};

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets the probes need, read from BTF.
#[derive(Debug, Clone, Copy)]
pub struct Offsets {
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub sk_err: u32,
    pub sk_protocol: u32,
    pub tp_write_seq: u32,
    pub tp_snd_una: u32,
    /// Unix stream sockets (upstreams behind `unix:/path`), if this kernel's
    /// BTF describes them (not when AF_UNIX is a module).
    pub unix: Option<UnixOffsets>,
    pub regs_si: u32,
    pub regs_orig_ax: u32,
    pub regs_di: u32,
    pub regs_dx: u32,
    pub regs_r10: u32,
    /// From a file descriptor to its socket, for the syscall I/O probe (kernels
    /// without the socket I/O tracepoints). Needed only there: a kernel whose
    /// BTF lacks one of these members still runs with the socket tracepoints.
    pub fd: Option<FdOffsets>,
    /// task_struct.pid, task_struct.signal, signal_struct.live: a forked task's
    /// id and whether an exiting thread was its process's last (the raw
    /// `sched_process_fork`/`exit` tracepoints pass task pointers, the same on
    /// every kernel, where the records' layouts differ).
    pub task_pid: u32,
    pub task_signal: u32,
    pub signal_live: u32,
}

/// Byte offsets from the current task to a file descriptor's `struct sock`
/// (see the probes' `sys_io`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FdOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
}

/// Byte offsets for unix stream sockets (see `probe/unix.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixOffsets {
    pub sk_type: u32,
    pub sk_socket: u32,
    pub unix_addr: u32,
    pub unix_peer: u32,
    pub unix_address_name: u32,
    /// From a `struct socket` to the inode allocated with it (`socket_alloc`).
    pub socket_inode: u32,
    pub inode_ino: u32,
}

impl Offsets {
    pub fn from_btf(path: &Path) -> Result<Self> {
        // Mapped where the kernel allows it (less to parse and to give back);
        // kernels before 6.x cannot map this sysfs file (ENODEV on 6.1): read it.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(path, btf_rs::Backend::Cache))
            .with_context(|| format!("reading kernel BTF from {}", path.display()))?;
        let off = |ty: &str, member: &str| -> Result<u32> {
            member_offset(&btf, ty, member)
                .with_context(|| format!("kernel BTF has no {ty}.{member}"))
        };
        let (regs_si, regs_orig_ax, regs_di, regs_dx, regs_r10) = if cfg!(target_arch = "x86_64") {
            (
                off("pt_regs", "si")?,
                off("pt_regs", "orig_ax")?,
                off("pt_regs", "di")?,
                off("pt_regs", "dx")?,
                off("pt_regs", "r10")?,
            )
        } else {
            bail!("this build of classify supports x86_64 only");
        };
        Ok(Self {
            skc_daddr: off("sock_common", "skc_daddr")?,
            skc_rcv_saddr: off("sock_common", "skc_rcv_saddr")?,
            skc_dport: off("sock_common", "skc_dport")?,
            skc_num: off("sock_common", "skc_num")?,
            skc_family: off("sock_common", "skc_family")?,
            skc_state: off("sock_common", "skc_state")?,
            skc_v6_daddr: off("sock_common", "skc_v6_daddr")?,
            skc_v6_rcv_saddr: off("sock_common", "skc_v6_rcv_saddr")?,
            sk_err: off("sock", "sk_err")?,
            sk_protocol: off("sock", "sk_protocol")?,
            tp_write_seq: off("tcp_sock", "write_seq")?,
            tp_snd_una: off("tcp_sock", "snd_una")?,
            unix: (|| {
                Ok::<_, anyhow::Error>(UnixOffsets {
                    sk_type: off("sock", "sk_type")?,
                    sk_socket: off("sock", "sk_socket")?,
                    unix_addr: off("unix_sock", "addr")?,
                    unix_peer: off("unix_sock", "peer")?,
                    unix_address_name: off("unix_address", "name")?,
                    socket_inode: off("socket_alloc", "vfs_inode")?
                        - off("socket_alloc", "socket")?,
                    inode_ino: off("inode", "i_ino")?,
                })
            })()
            .ok(),
            regs_si,
            regs_orig_ax,
            regs_di,
            regs_dx,
            regs_r10,
            task_pid: off("task_struct", "pid")?,
            task_signal: off("task_struct", "signal")?,
            signal_live: off("signal_struct", "live")?,
            fd: (|| {
                Ok::<_, anyhow::Error>(FdOffsets {
                    task_files: off("task_struct", "files")?,
                    files_fdt: off("files_struct", "fdt")?,
                    fdt_max_fds: off("fdtable", "max_fds")?,
                    fdt_fd: off("fdtable", "fd")?,
                    file_inode: off("file", "f_inode")?,
                    file_private_data: off("file", "private_data")?,
                    inode_mode: off("inode", "i_mode")?,
                    socket_sk: off("socket", "sk")?,
                })
            })()
            .ok(),
        })
    }
}

/// Byte offset of `member` in struct `ty`, looking through anonymous structs and
/// unions.
fn member_offset(btf: &Btf, ty: &str, member: &str) -> Result<u32> {
    for t in btf.resolve_types_by_name(ty)? {
        if let Type::Struct(s) = t {
            if let Some(bits) = find_member(btf, &s, member, 0)? {
                if bits % 8 != 0 {
                    bail!("{ty}.{member} is a bitfield");
                }
                return Ok(bits / 8);
            }
        }
    }
    bail!("not found")
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Result<Option<u32>> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let bits = base_bits + m.bit_offset();
        if name == member {
            return Ok(Some(bits));
        }
        if name.is_empty() {
            let Some(id) = m.get_type_id() else { continue };
            let inner = resolve(btf, id)?;
            if let Type::Struct(inner) | Type::Union(inner) = inner {
                if let Some(found) = find_member(btf, &inner, member, bits)? {
                    return Ok(Some(found));
                }
            }
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn resolve(btf: &Btf, mut id: u32) -> Result<Type> {
    for _ in 0..16 {
        let t = btf.resolve_type_by_id(id)?;
        match &t {
            Type::Typedef(x) => id = x.get_type_id().context("typedef without type")?,
            Type::Const(x) => id = x.get_type_id().context("const without type")?,
            Type::Volatile(x) => id = x.get_type_id().context("volatile without type")?,
            Type::Restrict(x) => id = x.get_type_id().context("restrict without type")?,
            Type::TypeTag(x) => id = x.get_type_id().context("type tag without type")?,
            _ => return Ok(t),
        }
    }
    bail!("type chain too deep")
}

/// Syscall numbers whose second argument is a data buffer, iovec array or msghdr.
#[derive(Debug, Clone, Copy)]
pub struct Syscalls {
    pub read: u32,
    pub write: u32,
    pub recvfrom: u32,
    pub sendto: u32,
    pub readv: u32,
    pub writev: u32,
    pub recvmsg: u32,
    pub sendmsg: u32,
    pub sendfile: u32,
}

impl Syscalls {
    pub fn native() -> Self {
        // Linux x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl).
        Self {
            read: 0,
            write: 1,
            recvfrom: 45,
            sendto: 44,
            readv: 19,
            writev: 20,
            recvmsg: 47,
            sendmsg: 46,
            sendfile: 40,
        }
    }
}

/// A tracepoint field the probes read at a fixed offset.
pub struct Field {
    pub tracepoint: &'static str,
    pub name: &'static str,
    pub offset: usize,
}

/// The record layouts the probes are compiled against (classifier-ebpf `probe/tp.rs`).
pub const FIELDS: &[Field] = &[
    Field {
        tracepoint: "syscalls/sys_enter_connect",
        name: "uservaddr",
        offset: 24,
    },
    Field {
        tracepoint: "syscalls/sys_exit_connect",
        name: "ret",
        offset: 16,
    },
];

/// Checks that every field the probes read sits where they expect it.
pub fn check_formats(tracefs: &Path) -> Result<()> {
    for f in FIELDS {
        let path = tracefs.join("events").join(f.tracepoint).join("format");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "this kernel has no tracepoint {}, which classify needs",
                f.tracepoint
            )
        })?;
        let found = text.lines().find_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            let name = decl.split_whitespace().last()?.split('[').next()?;
            if name != f.name {
                return None;
            }
            let offset = line
                .split("offset:")
                .nth(1)?
                .split(';')
                .next()?
                .trim()
                .parse::<usize>()
                .ok()?;
            Some(offset)
        });
        match found {
            Some(o) if o == f.offset => {}
            Some(o) => bail!(
                "tracepoint {} has field {} at offset {o}, the probes expect {}: this kernel's layout is not supported",
                f.tracepoint,
                f.name,
                f.offset
            ),
            None => bail!("tracepoint {} has no field {}: this kernel is not supported", f.tracepoint, f.name),
        }
    }
    Ok(())
}
