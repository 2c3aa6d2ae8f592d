//! Command-line flags (clap), validated into the agent's and replay's settings.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Tells, for every client exchange through a reverse proxy, what really happened:
/// a true client abort, a reset, a proxy-made 502/504 or an upstream's own error,
/// and which upstream socket was involved.
#[derive(Debug, Parser)]
#[command(name = "classify", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine on a recording made with --record.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON lines (one record per line).
    Json,
    /// A readable live view and a summary table.
    Text,
}

/// Where the probes see socket I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoProbes {
    /// The socket tracepoints where the kernel has them (Linux 6.5+), else the
    /// syscall one.
    Auto,
    /// `sock/sock_send_length` and `sock/sock_recv_length`: only socket calls
    /// run a program.
    Socket,
    /// The raw tracepoint `sys_exit`: runs after every syscall on the host, so it
    /// costs more; for kernels before 6.5.
    Syscall,
}

#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Output format [default: text on a terminal, json otherwise].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write records to this file (created with mode 0600) instead of stdout.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Seconds between `stats` records in JSON output (0: only the final one).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub stats_interval: u64,
}

#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    /// Process to watch: a PID (that process and its descendants) or a process name
    /// (every process with that name and their descendants). Repeatable.
    #[arg(long = "pid", short = 'p', value_name = "PID|NAME")]
    pub pids: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Stop after this long (e.g. 30s, 5m, or plain seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Save the decoded event stream to FILE (replay it with `classify replay FILE`).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Keep query strings in request targets (by default `?…` replaces them).
    #[arg(long)]
    pub keep_query: bool,
    /// An exchange whose response has been sent ends after this long without
    /// activity on its connections.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 8)]
    pub ring_mib: u32,
    /// Ring buffer size in KiB (a power of two, at least 4); overrides --ring-mib.
    /// For tests that provoke loss.
    #[arg(long, value_name = "KIB", hide = true)]
    pub ring_kib: Option<u32>,
    /// Most sockets the probes track at once; sockets beyond it are counted as
    /// untracked and the exchanges they touch are marked incomplete.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_sockets: u32,
    /// Where the probes see socket I/O (see docs/cli/tuning.md).
    #[arg(long, value_enum, value_name = "HOOKS", default_value = "auto")]
    pub io_probes: IoProbes,
    /// Probe TLS libraries at their functions' entries and returns even where
    /// the cheaper sites inside them were found. For tests of that path.
    #[arg(long, hide = true)]
    pub tls_at_entries: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// A recording made with `classify --record FILE`.
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    /// End exchanges idle for this long, as the live agent would.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))
}
