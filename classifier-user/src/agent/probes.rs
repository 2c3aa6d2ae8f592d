//! Loading and attaching the probes, and the agent's side of their maps.
use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result};
use aya::{
    include_bytes_aligned,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        Program, ProgramError, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use classifier_ebpf::{ThreadSlot, ThreadState};

use super::{
    kernel::{FdOffsets, Offsets, Syscalls},
    tls_sites::{self, FastSites},
};

/// Where a TLS library's probes went (see `tls_sites`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProbes {
    /// Inside `SSL_read` and `SSL_write`, on emulated instructions.
    Fast,
    /// At the functions' entries, with a return probe.
    AtEntries,
}

/// The probes' object file, built by this crate's build script.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier"));

/// Target tracking: attached first, so no fork is missed between the /proc scan
/// and the data probes. (program, category, name)
/// Fork and exit are raw tracepoints: their arguments (task pointers) are the
/// same on every kernel, where their records' layouts are not (6.1's fork
/// record holds the names inline, its exit record has no `group_dead`).
const TRACKING_RAW: &[(&str, &str, &str)] = &[
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];
const TRACKING: &[(&str, &str, &str)] = &[("sched_process_exec", "sched", "sched_process_exec")];

/// The event-loop marker (syscall tracepoints exist only as regular ones).
/// (program, category, name)
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_epoll_wait", "syscalls", "sys_enter_epoll_wait"),
    ("sys_enter_epoll_wait", "syscalls", "sys_enter_epoll_pwait"),
    ("sys_enter_epoll_wait", "syscalls", "sys_enter_epoll_pwait2"),
    // Failed connects of unix sockets (see the probes' `unix` module).
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
];

/// Socket I/O and TCP lifecycle, as raw tracepoints: the kernel builds no record
/// for them, and skips a raw tracepoint's program only when that same program is
/// already running on the CPU (a regular tracepoint's program is skipped while
/// any BPF program or BPF map syscall is active there: a softirq ending a
/// connection inside one lost its event). (program, category, name)
const RAW_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("inet_sk_error_report", "sock", "inet_sk_error_report"),
];

/// Socket I/O where the kernel has the socket tracepoints (Linux 6.5+): programs
/// run for socket calls only. (program, category, name)
const SOCKET_IO: &[(&str, &str, &str)] = &[
    ("sock_send_length", "sock", "sock_send_length"),
    ("sock_recv_length", "sock", "sock_recv_length"),
];

/// Socket I/O on older kernels: after every syscall, a watched thread's data
/// syscalls followed from their file descriptor to the socket (dearer: see the
/// probes' `sys_io`). (program, category, name)
const SYSCALL_IO: &[(&str, &str, &str)] = &[("sys_exit_io", "raw_syscalls", "sys_exit")];

/// Which hooks see socket I/O (`--io-probes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoHooks {
    Socket,
    Syscall,
}

impl IoHooks {
    /// The hooks `choice` asks for on the kernel behind `tracefs`.
    pub fn choose(choice: crate::cli::IoProbes, tracefs: &std::path::Path) -> Result<Self> {
        use crate::cli::IoProbes;
        let has_socket = SOCKET_IO
            .iter()
            .all(|(_, category, name)| tracefs.join("events").join(category).join(name).is_dir());
        match choice {
            IoProbes::Auto if has_socket => Ok(Self::Socket),
            IoProbes::Auto | IoProbes::Syscall => Ok(Self::Syscall),
            IoProbes::Socket if has_socket => Ok(Self::Socket),
            IoProbes::Socket => anyhow::bail!(
                "this kernel has no sock/sock_send_length tracepoint (Linux 6.5+): use --io-probes syscall or auto"
            ),
        }
    }

    fn tracepoints(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Self::Socket => SOCKET_IO,
            Self::Syscall => SYSCALL_IO,
        }
    }

    /// Whether `prog` belongs to the other set: it is not loaded (no verifier
    /// time at start-up, nothing to poll for skipped runs).
    fn unused(self, prog: &str) -> bool {
        let (other, other_tls) = match self {
            Self::Socket => (SYSCALL_IO, Self::Syscall),
            Self::Syscall => (SOCKET_IO, Self::Socket),
        };
        other.iter().any(|(p, _, _)| *p == prog)
            || other_tls.tls_reads().contains(&prog)
            || other_tls.tls_write() == prog
    }

    /// Programs verified only when a probe needs them: `SSL_read`'s return
    /// probe serves only libraries without the fast sites (`tls_sites`), and
    /// start-up would wait on the verifier for it (about as long as for a
    /// socket I/O program).
    fn on_demand(prog: &str) -> bool {
        prog == Self::Socket.tls_reads()[1] || prog == Self::Syscall.tls_reads()[1]
    }

    /// The TLS read programs that go with these hooks: (inside `SSL_read`, at
    /// its return). With the socket tracepoints, the variants that check a
    /// client's plaintext for a request after a discarded body; kernels
    /// without those tracepoints (before 6.5) get the ones without that check,
    /// which 6.1's verifier refused at a million instructions.
    fn tls_reads(self) -> [&'static str; 2] {
        match self {
            Self::Socket => ["ssl_read_done_requests", "ssl_read_exit_requests"],
            Self::Syscall => ["ssl_read_done", "ssl_read_exit"],
        }
    }

    /// The TLS write program that goes with these hooks: with the socket
    /// tracepoints, the variant that checks a response's head for nginx's
    /// keep-alive promise, for the same reason as `tls_reads`.
    fn tls_write(self) -> &'static str {
        match self {
            Self::Socket => "ssl_write_enter_requests",
            Self::Syscall => "ssl_write_enter",
        }
    }

    /// How the start-up line names them.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Socket => "socket tracepoints",
            Self::Syscall => "syscall exits (no socket tracepoints: costs more per request)",
        }
    }
}

/// TLS plaintext (see the probes' `tls` module): (program, library function,
/// offset in it). Entries first, so that a return probe never runs without its
/// entry's state. This set probes the functions' entries and returns: correct
/// for any build of the library, and slow where the first instructions are not
/// emulated (see `tls_sites`).
fn tls_probes_at_entries(io: IoHooks) -> [(&'static str, &'static str, u64); 6] {
    let [_, read_exit] = io.tls_reads();
    [
        ("ssl_handshake_enter", "SSL_do_handshake", 0),
        ("ssl_read_enter", "SSL_read", 0),
        ("ssl_handshake_exit", "SSL_do_handshake", 0),
        (read_exit, "SSL_read", 0),
        (io.tls_write(), "SSL_write", 0),
        ("ssl_shutdown_enter", "SSL_shutdown", 0),
    ]
}

/// The same at the fast sites of a library that has them. `SSL_do_handshake`
/// keeps its return probe: its first instruction (a `push`) is emulated, and
/// without it the thread would stay marked as inside a TLS call after the
/// handshake, and any other socket it touched before its next `epoll_wait` (an
/// upstream's, another client's) would be taken for TLS.
fn tls_probes_at(sites: &FastSites, io: IoHooks) -> [(&'static str, &'static str, u64); 6] {
    let [read_done, _] = io.tls_reads();
    [
        ("ssl_handshake_enter", "SSL_do_handshake", 0),
        ("ssl_read_enter", "SSL_read", sites.read_call),
        (read_done, "SSL_read", sites.read_done),
        (io.tls_write(), "SSL_write", sites.write_call),
        ("ssl_shutdown_enter", "SSL_shutdown", 0),
        ("ssl_handshake_exit", "SSL_do_handshake", 0),
    ]
}

/// The agent is woken once this much waits in the ring (or half a smaller ring),
/// besides its 100 ms timer. At saturation on 2 cores (wrk, kept alive, 6
/// alternating rounds) the wakeup at half of the 8 MiB ring let a drain run ~10 ms
/// at a time and nginx's p99 latency went 1.0 → 3.6 ms (median); at 512 KiB a
/// drain is about 1 ms of the agent's CPU and p99 was 2.3 ms (256 KiB: 2.35 ms).
/// Below ~7,000 req/s the timer drains first (4,800 req/s writes ~330 KiB per
/// 100 ms), so moderate rates pay no extra wakeups: 256 KiB cost +0.27 µs of
/// agent CPU per request at 4,800 req/s, 512 KiB −0.11 (noise).
const WAKEUP_BYTES: u32 = 512 << 10;

/// Sizes of the kernel-side tables.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ring_bytes: u32,
    pub max_sockets: u32,
    pub max_threads: u32,
}

pub struct Probes {
    ebpf: Ebpf,
    threads: HashMap<MapData, u32, ThreadState>,
    slots: Array<MapData, ThreadSlot>,
    ports: HashMap<MapData, u16, u32>,
    stats: PerCpuArray<MapData, u64>,
    /// Held so the map stays alive (programs are loaded after `load`).
    _comms: HashMap<MapData, [u8; 16], u8>,
    /// Listening sockets already counted in LISTEN_PORTS (by inode).
    counted: BTreeSet<u64>,
    /// Tracepoints that this kernel lacks but that are optional (epoll_pwait2).
    pub missing_optional: Vec<&'static str>,
    /// Attachments, for `detach`.
    links: Vec<(String, TracePointLinkId)>,
    raw_links: Vec<(String, RawTracePointLinkId)>,
    uprobe_links: Vec<(String, UProbeLinkId)>,
    /// TLS libraries probed already, by (device, inode): a library mapped by
    /// many processes, or under many paths, is probed once.
    tls_libraries: BTreeSet<(u64, u64)>,
    /// The hooks that see socket I/O (the TLS read programs go with them).
    io: IoHooks,
    /// TLS libraries are probed at their functions' entries whatever their
    /// code (`--tls-at-entries`, for tests).
    pub tls_at_entries: bool,
}

impl Probes {
    /// Loads the probes; `names` are process names to watch from their exec on.
    pub fn load(
        offsets: &Offsets,
        sys: &Syscalls,
        limits: Limits,
        names: &[String],
        io: IoHooks,
    ) -> Result<Self> {
        let wakeup = u64::from((limits.ring_bytes / 2).min(WAKEUP_BYTES));
        let progress_ns: u64 = 200_000_000;
        let unix = offsets.unix.unwrap_or_default();
        let fd = match (io, offsets.fd) {
            (_, Some(fd)) => fd,
            (IoHooks::Socket, None) => FdOffsets::default(),
            (IoHooks::Syscall, None) => anyhow::bail!(
                "this kernel's BTF lacks a member the syscall I/O probe needs (task_struct.files, files_struct.fdt, fdtable.max_fds/fd, file.f_inode/private_data, inode.i_mode, socket.sk)"
            ),
        };
        let unix_sockets = u32::from(offsets.unix.is_some());
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("EVENTS", limits.ring_bytes)
            .map_max_entries("SOCKS", limits.max_sockets)
            .map_max_entries("THREADS", limits.max_threads)
            .override_global("OFF_SKC_DADDR", &offsets.skc_daddr, true)
            .override_global("OFF_SKC_RCV_SADDR", &offsets.skc_rcv_saddr, true)
            .override_global("OFF_SKC_DPORT", &offsets.skc_dport, true)
            .override_global("OFF_SKC_NUM", &offsets.skc_num, true)
            .override_global("OFF_SKC_FAMILY", &offsets.skc_family, true)
            .override_global("OFF_SKC_STATE", &offsets.skc_state, true)
            .override_global("OFF_SKC_V6_DADDR", &offsets.skc_v6_daddr, true)
            .override_global("OFF_SKC_V6_RCV_SADDR", &offsets.skc_v6_rcv_saddr, true)
            .override_global("OFF_SK_ERR", &offsets.sk_err, true)
            .override_global("OFF_SK_PROTOCOL", &offsets.sk_protocol, true)
            .override_global("OFF_TP_WRITE_SEQ", &offsets.tp_write_seq, true)
            .override_global("OFF_TP_SND_UNA", &offsets.tp_snd_una, true)
            .override_global("UNIX_SOCKETS", &unix_sockets, true)
            .override_global("OFF_SK_TYPE", &unix.sk_type, true)
            .override_global("OFF_SK_SOCKET", &unix.sk_socket, true)
            .override_global("OFF_UNIX_ADDR", &unix.unix_addr, true)
            .override_global("OFF_UNIX_PEER", &unix.unix_peer, true)
            .override_global("OFF_UNIX_ADDRESS_NAME", &unix.unix_address_name, true)
            .override_global("OFF_SOCKET_INODE", &unix.socket_inode, true)
            .override_global("OFF_INODE_INO", &unix.inode_ino, true)
            .override_global("OFF_REGS_SI", &offsets.regs_si, true)
            .override_global("OFF_REGS_ORIG_AX", &offsets.regs_orig_ax, true)
            .override_global("SYS_READ", &sys.read, true)
            .override_global("SYS_WRITE", &sys.write, true)
            .override_global("SYS_RECVFROM", &sys.recvfrom, true)
            .override_global("SYS_SENDTO", &sys.sendto, true)
            .override_global("SYS_READV", &sys.readv, true)
            .override_global("SYS_WRITEV", &sys.writev, true)
            .override_global("SYS_RECVMSG", &sys.recvmsg, true)
            .override_global("SYS_SENDMSG", &sys.sendmsg, true)
            .override_global("SYS_SENDFILE", &sys.sendfile, true)
            .override_global("OFF_REGS_DI", &offsets.regs_di, true)
            .override_global("OFF_REGS_DX", &offsets.regs_dx, true)
            .override_global("OFF_REGS_R10", &offsets.regs_r10, true)
            .override_global("OFF_TASK_FILES", &fd.task_files, true)
            .override_global("OFF_FILES_FDT", &fd.files_fdt, true)
            .override_global("OFF_FDT_MAX_FDS", &fd.fdt_max_fds, true)
            .override_global("OFF_FDT_FD", &fd.fdt_fd, true)
            .override_global("OFF_FILE_INODE", &fd.file_inode, true)
            .override_global("OFF_FILE_PRIVATE_DATA", &fd.file_private_data, true)
            .override_global("OFF_INODE_MODE", &fd.inode_mode, true)
            .override_global("OFF_SOCKET_SK", &fd.socket_sk, true)
            .override_global("OFF_TASK_PID", &offsets.task_pid, true)
            .override_global("OFF_TASK_SIGNAL", &offsets.task_signal, true)
            .override_global("OFF_SIGNAL_LIVE", &offsets.signal_live, true)
            .override_global("RING_WAKEUP_BYTES", &wakeup, true)
            .override_global("PROGRESS_NS", &progress_ns, true);
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the probes into the kernel")?;
        let mut comms: HashMap<MapData, [u8; 16], u8> =
            HashMap::try_from(ebpf.take_map("TARGET_COMMS").context("map TARGET_COMMS")?)?;
        for name in names {
            // The kernel keeps the first 15 bytes of a name, NUL-terminated.
            let mut key = [0u8; 16];
            let n = name.len().min(15);
            key[..n].copy_from_slice(&name.as_bytes()[..n]);
            comms
                .insert(key, 1, 0)
                .context("filling the process-name map (at most 64 names)")?;
        }
        verify_all(&mut ebpf, io)?;
        let threads = HashMap::try_from(ebpf.take_map("THREADS").context("map THREADS")?)?;
        let slots = Array::try_from(ebpf.take_map("THREAD_SLOTS").context("map THREAD_SLOTS")?)?;
        let ports = HashMap::try_from(ebpf.take_map("LISTEN_PORTS").context("map LISTEN_PORTS")?)?;
        let stats = PerCpuArray::try_from(ebpf.take_map("STATS").context("map STATS")?)?;
        Ok(Self {
            ebpf,
            threads,
            slots,
            ports,
            stats,
            _comms: comms,
            counted: BTreeSet::new(),
            missing_optional: Vec::new(),
            links: Vec::new(),
            raw_links: Vec::new(),
            uprobe_links: Vec::new(),
            tls_libraries: BTreeSet::new(),
            tls_at_entries: false,
            io,
        })
    }

    /// Attaches every program. `before_data` runs after target tracking is
    /// attached and before the data probes (the agent rescans /proc there).
    pub fn attach(
        &mut self,
        tracefs: &std::path::Path,
        io: IoHooks,
        mut before_data: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        for (prog, category, name) in TRACKING_RAW {
            self.attach_raw_tracepoint(tracefs, prog, category, name)?;
        }
        for (prog, category, name) in TRACKING {
            self.attach_tracepoint(tracefs, prog, category, name)?;
        }
        before_data(self)?;
        for (prog, category, name) in TRACEPOINTS {
            self.attach_tracepoint(tracefs, prog, category, name)?;
        }
        for (prog, category, name) in RAW_TRACEPOINTS.iter().chain(io.tracepoints()) {
            self.attach_raw_tracepoint(tracefs, prog, category, name)?;
        }
        Ok(())
    }

    fn attach_raw_tracepoint(
        &mut self,
        tracefs: &std::path::Path,
        prog: &str,
        category: &str,
        name: &str,
    ) -> Result<()> {
        if !tracefs.join("events").join(category).join(name).is_dir() {
            anyhow::bail!("this kernel has no tracepoint {category}/{name}, which classify needs");
        }
        let program: &mut RawTracePoint = program_mut(&mut self.ebpf, prog)?;
        let link = program
            .attach(name)
            .with_context(|| format!("attaching to raw tracepoint {name}"))?;
        self.raw_links.push((prog.to_owned(), link));
        Ok(())
    }

    /// Probes a TLS library (or a binary with the library linked in) for
    /// plaintext, once per file. Returns how, or None for a file probed
    /// already, or one without the library's functions.
    pub fn attach_tls(&mut self, file: &std::path::Path) -> Result<Option<TlsProbes>> {
        use std::os::unix::fs::MetadataExt as _;
        let meta =
            std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
        if !self.tls_libraries.insert((meta.dev(), meta.ino())) {
            return Ok(None);
        }
        let fast = tls_sites::fast_sites(file).filter(|_| !self.tls_at_entries);
        let (set, how) = match &fast {
            Some(sites) => (tls_probes_at(sites, self.io), TlsProbes::Fast),
            None => (tls_probes_at_entries(self.io), TlsProbes::AtEntries),
        };
        let mut links = Vec::new();
        for (prog, function, offset) in &set {
            let program: &mut UProbe = program_mut(&mut self.ebpf, prog)?;
            let at = UProbeAttachLocation::SymbolOffset(function, *offset);
            // A program verified on demand is never first in a set: the file
            // has shown the library's functions before it is loaded.
            let loaded = if IoHooks::on_demand(prog) {
                match program.load() {
                    Ok(()) | Err(ProgramError::AlreadyLoaded) => Ok(()),
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            match loaded.and_then(|()| program.attach(at, file, UProbeScope::AllProcesses)) {
                Ok(link) => links.push(((*prog).to_owned(), link)),
                Err(_) if links.is_empty() => {
                    // No such function: not a TLS library (the first probe
                    // decides).
                    return Ok(None);
                }
                Err(e) => {
                    // Half a set would mark sockets TLS and then miss their
                    // writes: none of it stays.
                    for (prog, id) in links {
                        if let Ok(p) = program_mut::<UProbe>(&mut self.ebpf, &prog) {
                            let _ = p.detach(id);
                        }
                    }
                    return Err(e)
                        .with_context(|| format!("attaching to {function} in {}", file.display()));
                }
            }
        }
        self.uprobe_links.extend(links);
        Ok(Some(how))
    }

    fn attach_tracepoint(
        &mut self,
        tracefs: &std::path::Path,
        prog: &str,
        category: &str,
        name: &'static str,
    ) -> Result<()> {
        if !tracefs.join("events").join(category).join(name).is_dir() {
            if name == "sys_enter_epoll_pwait2" {
                self.missing_optional.push(name);
                return Ok(());
            }
            anyhow::bail!("this kernel has no tracepoint {category}/{name}, which classify needs");
        }
        let program: &mut TracePoint = program_mut(&mut self.ebpf, prog)?;
        let link = program
            .attach(category, name)
            .with_context(|| format!("attaching to tracepoint {category}/{name}"))?;
        self.links.push((prog.to_owned(), link));
        Ok(())
    }

    /// Detaches every program, in parallel: each tracepoint detach waits for an
    /// RCU grace period (about 75 ms here), which one by one made stopping take a
    /// second. Events already in the ring stay readable.
    pub fn detach(&mut self) {
        let mut jobs: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        for (prog, id) in std::mem::take(&mut self.links) {
            let program: Option<&mut TracePoint> =
                self.ebpf.program_mut(&prog).and_then(|p| p.try_into().ok());
            if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                jobs.push(Box::new(move || drop(link)));
            }
        }
        for (prog, id) in std::mem::take(&mut self.raw_links) {
            let program: Option<&mut RawTracePoint> =
                self.ebpf.program_mut(&prog).and_then(|p| p.try_into().ok());
            if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                jobs.push(Box::new(move || drop(link)));
            }
        }
        for (prog, id) in std::mem::take(&mut self.uprobe_links) {
            let program: Option<&mut UProbe> =
                self.ebpf.program_mut(&prog).and_then(|p| p.try_into().ok());
            if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                jobs.push(Box::new(move || drop(link)));
            }
        }
        std::thread::scope(|s| {
            for job in jobs {
                s.spawn(job);
            }
        });
    }

    /// Watches these threads (idempotent).
    pub fn watch_threads(&mut self, tids: impl IntoIterator<Item = u32>) -> Result<usize> {
        let mut added = 0;
        for tid in tids {
            if self.threads.get(&tid, 0).is_ok() {
                continue;
            }
            self.threads
                .insert(tid, ThreadState::default(), 0)
                .context("filling the thread map (is it full?)")?;
            // The same protocol as the probes' (see `ThreadSlot`): recorded in
            // THREADS first, the slot marked, then taken if free.
            let index = tid % classifier_ebpf::THREAD_SLOTS;
            let mut slot = self.slots.get(&index, 0).unwrap_or_default();
            slot.overflow = 1;
            if slot.tid == 0 {
                slot.tid = tid;
                slot.state = ThreadState::default();
            }
            self.slots
                .set(index, slot, 0)
                .context("filling the thread slots")?;
            added += 1;
        }
        Ok(added)
    }

    /// Counts listening sockets found in /proc (inode → port) that are not counted
    /// yet; the probes count those opened later themselves.
    pub fn add_listeners(
        &mut self,
        listeners: &std::collections::BTreeMap<u64, u16>,
    ) -> Result<()> {
        for (inode, port) in listeners {
            if !self.counted.insert(*inode) {
                continue;
            }
            let n = self.ports.get(port, 0).unwrap_or(0);
            self.ports
                .insert(*port, n + 1, 0)
                .context("filling the listening-port map (is it full?)")?;
        }
        Ok(())
    }

    /// The ports that currently mark client connections.
    pub fn listen_ports(&self) -> BTreeSet<u16> {
        self.ports.keys().filter_map(Result::ok).collect()
    }

    pub fn ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("map EVENTS")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Program runs the kernel skipped, summed over our programs: a tracepoint
    /// does not run its program while another BPF program (or a BPF map syscall)
    /// is active on the same CPU, e.g. when a softirq ends a TCP connection
    /// inside it. Each skip is an event that never reached the ring.
    pub fn skipped_runs(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| recursion_misses(fd.as_fd()))
            .sum()
    }

    /// A kernel counter (`classifier_ebpf::stat`) summed over CPUs. Each read is a
    /// map syscall, during which this CPU runs no BPF program (the kernel skips
    /// tracepoints then): read only what is needed, rarely.
    pub fn counter(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map_or(0, |values| values.iter().sum())
    }
}

/// Program `prog` of the object, as its type (`verify_all` loaded it).
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the object"))?;
    Ok(program.try_into()?)
}

/// Loads (verifies) every program, in parallel: the verifier takes a few hundred
/// ms for each socket I/O program, and start-up waits for the slowest alone.
fn verify_all(ebpf: &mut Ebpf, io: IoHooks) -> Result<()> {
    let programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| !io.unused(name) && !IoHooks::on_demand(name))
        .collect();
    let results: Vec<(String, Result<(), ProgramError>)> = std::thread::scope(|s| {
        let jobs: Vec<_> = programs
            .into_iter()
            .map(|(name, program)| {
                s.spawn(move || {
                    let result = match program {
                        Program::TracePoint(p) => p.load(),
                        Program::RawTracePoint(p) => p.load(),
                        // TLS probes, attached only where a TLS library is
                        // mapped (nearly always: Debian's nginx links libssl).
                        Program::UProbe(p) => p.load(),
                        _ => Ok(()),
                    };
                    (name.to_owned(), result)
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("a program load panicked"))
            .collect()
    });
    for (name, result) in results {
        result
            .with_context(|| format!("loading program {name} (the kernel verifier refused it)"))?;
    }
    Ok(())
}

/// `recursion_misses` of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`; aya's
/// `ProgramInfo` does not expose it). None on kernels that do not report it.
fn recursion_misses(fd: BorrowedFd<'_>) -> Option<u64> {
    use aya_obj::generated::{bpf_attr, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_prog_info};
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = std::ptr::addr_of_mut!(info) as u64;
    // SAFETY: bpf(2) writes at most `info_len` bytes into `info`, which we own and
    // which outlives the call; `attr` is a valid, fully initialized bpf_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (rc == 0).then_some(info.recursion_misses)
}
