//! The live agent: preflight, targets, probes, the ring-buffer drain loop.
pub mod kernel;
pub mod listeners;
pub mod preflight;
pub mod probes;
pub mod targets;
mod tls_files;
mod tls_sites;
mod wait;

use std::{
    collections::BTreeMap,
    io::BufWriter,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapData, RingBuf};
use classifier::{
    decode::Decoder,
    event::{Event, EventKind},
    head::QueryPolicy,
    record::{Record, StatsRecord},
    recording, Engine, EngineConfig,
};
use classifier_ebpf::stat;

use self::{
    probes::{IoHooks, Limits, Probes},
    targets::Spec,
    wait::{Waiter, Wake},
};
use crate::{cli::WatchArgs, sink::Sink};

const PROC: &str = "/proc";
/// How often the ring is drained when no forced wakeup comes, and the engine is
/// told the time (so quiet exchanges settle). Each timed wakeup costs the agent
/// tens of µs whatever the traffic, and records are held for the settle time
/// anyway; the probes force a wakeup when the ring passes half full, so a burst
/// never waits for this.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often the kernel's loss counters are polled. Events carry their CPU's
/// gaps themselves; the poll catches losses no later event reported, and each
/// poll is a few map syscalls that blind the probes on that CPU meanwhile.
const LOSS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the programs' skipped runs are read: one program-info syscall per
/// program (18), about 5 µs each here, which every 100 ms was a fifth of the
/// agent's CPU at 2,300 req/s. No event reports a skipped run, so an ended
/// exchange's record waits until a poll has covered its end (the engine's
/// `hold_ns`, checked below with a drain period of slack).
const SKIPPED_CHECK_EVERY: Duration = Duration::from_millis(300);
const _: () = assert!(
    SKIPPED_CHECK_EVERY.as_nanos() + 2 * DRAIN_EVERY.as_nanos()
        <= classifier::engine::DEFAULT_HOLD_NS as u128
);
/// How long a message whose first line is still open is held for the rest of it.
const HOLD_LINES: Duration = Duration::from_secs(5);
/// How often /proc is rescanned for new processes and listening ports. The probes
/// follow forks, execs of a watched name and new listening sockets themselves;
/// the rescan is the safety net (and it reads every process's stat file, so it
/// stays rare). A watched process's exit triggers one at once.
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// How often freed memory is given back to the kernel (see `memory::give_back`).
const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);

/// Whether `every` has passed since `last`, which then restarts.
fn due(last: &mut Instant, every: Duration) -> bool {
    let due = last.elapsed() >= every;
    if due {
        *last = Instant::now();
    }
    due
}

pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Probes the TLS library of each process for plaintext. TLS is optional: a
/// failure is reported and the run goes on (its TLS connections then get no
/// request or status lines).
fn attach_tls(probes: &mut Probes, proc_root: &Path, pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        for file in tls_files::tls_files(proc_root, pid) {
            match probes.attach_tls(&file) {
                Ok(Some(probes::TlsProbes::AtEntries)) => eprintln!(
                    "classify: TLS probes at the function entries of {} (its code has an unknown shape): TLS requests cost more",
                    file.display()
                ),
                Ok(_) => {}
                // A process gone meanwhile (nginx's daemonizing parent) has no
                // TLS connections to miss.
                Err(_) if !proc_root.join(pid.to_string()).exists() => {}
                Err(e) => {
                    eprintln!("classify: TLS connections of process {pid} stay opaque: {e:#}")
                }
            }
        }
    }
}

pub fn run(args: &WatchArgs) -> Result<()> {
    if args.pids.is_empty() {
        bail!("name the process to watch: classify --pid <PID|NAME> (e.g. --pid nginx)");
    }
    let start_up = crate::memory::StartUp::begin();
    let specs: Vec<Spec> = args.pids.iter().map(|s| Spec::parse(s)).collect();
    preflight::check_privileges()?;
    preflight::check_btf(Path::new(kernel::BTF_PATH))?;
    let tracefs = preflight::tracefs()?;
    kernel::check_formats(&tracefs)?;

    let proc_root = Path::new(PROC);
    let initial = targets::resolve(&specs, &targets::scan(proc_root));
    for spec in &specs {
        let found = match spec {
            Spec::Pid(p) => initial.contains_key(p),
            Spec::Name(n) => initial.values().any(|p| &p.comm == n),
        };
        if !found {
            match spec {
                Spec::Pid(p) => bail!("no process with PID {p} is running"),
                // A DaemonSet's agent may start before the proxy: the probes
                // watch every exec of that name from now on.
                Spec::Name(n) => eprintln!(
                    "classify: no process named {n:?} is running yet; watching for one to start (check the name with `pgrep -l {n}`)"
                ),
            }
        }
    }

    let started = Instant::now();
    let offsets = kernel::Offsets::from_btf(Path::new(kernel::BTF_PATH))?;
    let ring_bytes = match args.ring_kib {
        Some(kib) => kib.saturating_mul(1024),
        None => args.ring_mib.saturating_mul(1 << 20),
    };
    if !ring_bytes.is_power_of_two() || ring_bytes < 4096 {
        bail!("the ring buffer size must be a power of two of at least 4 KiB (e.g. --ring-mib 8)");
    }
    if args.max_sockets == 0 {
        bail!("--max-sockets must be at least 1");
    }
    let limits = Limits {
        ring_bytes,
        max_sockets: args.max_sockets,
        max_threads: 16_384,
    };
    let names: Vec<String> = specs
        .iter()
        .filter_map(|s| match s {
            Spec::Name(n) => Some(n.clone()),
            Spec::Pid(_) => None,
        })
        .collect();
    let io = IoHooks::choose(args.io_probes, &tracefs)?;
    let mut probes = Probes::load(&offsets, &kernel::Syscalls::native(), limits, &names, io)?;
    probes.tls_at_entries = args.tls_at_entries;
    let mut watched: BTreeMap<u32, String> = BTreeMap::new();
    probes.attach(&tracefs, io, |p| {
        // Rescan after fork tracking is attached: a process forked in between is
        // caught here, one forked later by the probe.
        let now = targets::resolve(&specs, &targets::scan(proc_root));
        for (pid, info) in &now {
            p.watch_threads(targets::threads(proc_root, *pid))?;
            watched.insert(*pid, info.comm.clone());
        }
        p.add_listeners(&listeners::listeners(proc_root, now.keys().copied()))
    })?;
    attach_tls(&mut probes, proc_root, watched.keys().copied());
    let ring = probes.ring()?;

    let realtime_offset_ns = clock_ns(libc::CLOCK_REALTIME) as i64 - monotonic_ns() as i64;
    let mut engine = Engine::new(EngineConfig {
        settle_ns: args.settle.as_nanos() as u64,
        realtime_offset_ns,
        ..EngineConfig::default()
    });
    for (pid, comm) in &watched {
        engine.set_comm(*pid, comm);
    }
    let recorder = match &args.record {
        Some(path) => {
            let file = crate::sink::create_private(path).context("creating the recording")?;
            let header = recording::Header::new(
                realtime_offset_ns,
                args.keep_query,
                watched.iter().map(|(p, c)| (*p, c.clone())).collect(),
            );
            Some(recording::Writer::new(BufWriter::new(file), &header)?)
        }
        None => None,
    };
    let sink = Sink::open(&args.output)?;
    let names: Vec<String> = watched.iter().map(|(p, c)| format!("{c} {p}")).collect();
    start_up.done();
    eprintln!(
        "classify: watching {} process{} ({}); listening ports {:?}; I/O from {}; ready in {} ms",
        watched.len(),
        if watched.len() == 1 { "" } else { "es" },
        names.join(", "),
        probes.listen_ports(),
        io.describe(),
        started.elapsed().as_millis()
    );

    let mut agent = Agent {
        specs,
        probes,
        engine,
        decoder: Decoder::new(if args.keep_query {
            QueryPolicy::Keep
        } else {
            QueryPolicy::Elide
        }),
        sink,
        recorder,
        watched,
        out: Vec::with_capacity(64),
        decoded: Vec::with_capacity(8),
        events: 0,
        ring_records: 0,
        event_bytes: 0,
        map_loss: LossWatch::new(monotonic_ns()),
        skipped: LossWatch::new(monotonic_ns()),
        undecodable: 0,
        rescan_due: false,
        started,
        stats_interval: (args.output.stats_interval > 0)
            .then(|| Duration::from_secs(args.output.stats_interval)),
    };
    agent.run(ring, args.duration)
}

struct Agent {
    specs: Vec<Spec>,
    probes: Probes,
    engine: Engine,
    decoder: Decoder,
    sink: Sink,
    recorder: Option<recording::Writer<BufWriter<std::fs::File>>>,
    watched: BTreeMap<u32, String>,
    out: Vec<Record>,
    decoded: Vec<Event>,
    events: u64,
    /// Records read from the ring (one may carry more than one event).
    ring_records: u64,
    event_bytes: u64,
    /// Events lost to a full ring or socket map (polled once a second: each read
    /// is a map syscall), and probe runs the kernel skipped (polled every tick).
    map_loss: LossWatch,
    skipped: LossWatch,
    undecodable: u64,
    /// A watched process exited since the last rescan.
    rescan_due: bool,
    started: Instant,
    stats_interval: Option<Duration>,
}

impl Agent {
    fn run(&mut self, mut ring: RingBuf<MapData>, duration: Option<Duration>) -> Result<()> {
        let waiter = Waiter::new(std::os::fd::AsRawFd::as_raw_fd(&ring))?;
        let deadline = duration.map(|d| Instant::now() + d);
        let mut next_drain = Instant::now() + DRAIN_EVERY;
        let mut last_loss_check = Instant::now();
        let mut last_skipped_check = Instant::now();
        let mut last_rescan = Instant::now();
        let mut last_give_back = Instant::now();
        let mut last_stats = Instant::now();
        // Events left in the ring when the last drain reached its deadline.
        let mut behind = false;
        let stop_reason;
        loop {
            let now = Instant::now();
            // Behind: no sleep (the ring's wakeup is edge-triggered, and what is
            // left would not raise another).
            let until = if behind {
                now
            } else {
                deadline.map_or(next_drain, |d| d.min(next_drain))
            };
            let wake = waiter.wait(until.saturating_duration_since(now))?;
            if wake == Wake::Signal || deadline.is_some_and(|d| Instant::now() >= d) {
                stop_reason = None;
                break;
            }
            behind = self.drain(&mut ring, Some(next_drain))?;
            if Instant::now() >= next_drain {
                next_drain = Instant::now() + DRAIN_EVERY;
                let skipped = due(&mut last_skipped_check, SKIPPED_CHECK_EVERY);
                let maps = due(&mut last_loss_check, LOSS_CHECK_EVERY);
                self.check_loss(skipped, maps)?;
                // Behind, the engine's time is that of the last event drained,
                // older than the clock's: a tick at the clock's time would settle
                // exchanges whose last events are still in the ring.
                let now = if behind {
                    self.engine.now()
                } else {
                    monotonic_ns()
                };
                self.release_lines(now.saturating_sub(HOLD_LINES.as_nanos() as u64))?;
                self.feed(&mut Event {
                    ts: now,
                    pid: 0,
                    tid: 0,
                    kind: EventKind::Tick,
                })?;
            }
            if due(&mut last_give_back, GIVE_BACK_EVERY) {
                crate::memory::give_back();
            }
            if self.rescan_due || last_rescan.elapsed() >= RESCAN_EVERY {
                last_rescan = Instant::now();
                self.rescan_due = false;
                if let Some(reason) = self.rescan()? {
                    stop_reason = Some(reason);
                    break;
                }
            }
            if let Some(every) = self.stats_interval {
                if due(&mut last_stats, every) {
                    let s = self.stats(false);
                    self.sink.stats(&s)?;
                }
            }
            self.sink.flush()?;
        }
        // Detach first, then drain what is left and flush.
        self.probes.detach();
        self.drain(&mut ring, None)?;
        self.release_lines(u64::MAX)?;
        self.check_loss(true, true)?;
        let mut out = std::mem::take(&mut self.out);
        self.engine.flush(&mut out);
        for r in &out {
            self.sink.record(r)?;
        }
        if let Some(rec) = &mut self.recorder {
            rec.flush()?;
        }
        let s = self.stats(true);
        self.sink.finish(&s)?;
        if let Some(reason) = stop_reason {
            eprintln!("classify: {reason}");
        }
        // One line for whoever reads stderr (records may have gone to a pipeline).
        eprintln!(
            "classify: stopped after {:.1} s: {} exchanges ({} incomplete), {} events ({} ring records, {} bytes), {} lost, {} sockets untracked, {} probe runs skipped, {} undecodable",
            s.uptime_s, s.exchanges, s.incomplete_exchanges, s.events, s.ring_records, s.event_bytes, s.lost_events, s.untracked_sockets, s.skipped_probe_runs, s.undecodable_events
        );
        if let Some(line) = s.unclassified_http2() {
            eprintln!("classify: {line}");
        }
        Ok(())
    }

    /// Feeds what the ring holds to the engine, until it is empty or, with a
    /// deadline, until the deadline passes. Returns whether events were left:
    /// under a backlog the ring would never empty, and the loop's periodic work
    /// (ticks that release held records, loss checks, stats, flushes) must still
    /// come; held records waited for the end of the whole backlog before, and
    /// their memory grew with it.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, until: Option<Instant>) -> Result<bool> {
        let mut decoded = std::mem::take(&mut self.decoded);
        let mut left = false;
        let mut n: u32 = 0;
        while let Some(item) = ring.next() {
            self.ring_records += 1;
            self.event_bytes += item.len() as u64;
            if self.decoder.push(&item, &mut decoded).is_err() {
                self.undecodable += 1;
            }
            drop(item);
            // In place: events are large, and the engine takes only a message's
            // first line out of them.
            for ev in decoded.iter_mut() {
                self.feed(ev)?;
            }
            decoded.clear();
            n = n.wrapping_add(1);
            // The clock read once per 1,024 records: a fraction of a µs each.
            if n.is_multiple_of(1024) && until.is_some_and(|u| Instant::now() >= u) {
                left = true;
                break;
            }
        }
        self.decoded = decoded;
        Ok(left)
    }

    /// Releases first lines held for longer than `HOLD_LINES` (a client that
    /// stopped mid-line), or all of them when stopping.
    fn release_lines(&mut self, before: u64) -> Result<()> {
        let mut decoded = std::mem::take(&mut self.decoded);
        self.decoder.flush(before, &mut decoded);
        for ev in decoded.iter_mut() {
            self.feed(ev)?;
        }
        decoded.clear();
        self.decoded = decoded;
        Ok(())
    }

    fn feed(&mut self, ev: &mut Event) -> Result<()> {
        if !matches!(ev.kind, EventKind::Tick) {
            self.events += 1;
        }
        if let Some(rec) = &mut self.recorder {
            rec.write(ev)?;
        }
        match &ev.kind {
            EventKind::Fork { child, comm } if self.watched.len() < 65_536 => {
                self.watched.entry(*child).or_insert_with(|| comm.clone());
            }
            EventKind::Exit {
                task,
                group_dead: true,
            } => {
                // A watched process ended: rescan now (a numeric PID that exits
                // ends the run; a restarted one is found sooner).
                self.rescan_due |= self.watched.remove(task).is_some();
            }
            _ => {}
        }
        self.engine.ingest_in_place(ev, &mut self.out);
        for r in &self.out {
            self.sink.record(r)?;
        }
        self.engine.recycle(&mut self.out);
        Ok(())
    }

    /// Polls the kernel's loss counters (events lost to a full ring, sockets
    /// left untracked). A rise means evidence went missing since the last poll:
    /// the engine marks every exchange that overlaps that window.
    fn check_loss(&mut self, skipped: bool, maps: bool) -> Result<()> {
        let now = monotonic_ns();
        // Program info, not a map syscall: read often enough that a skipped run
        // marks only the exchanges of the last few hundred ms.
        let skipped = if skipped {
            self.skipped.update(self.probes.skipped_runs(), now)
        } else {
            None
        };
        let map_loss = if maps {
            let total =
                self.probes.counter(stat::RING_FULL) + self.probes.counter(stat::SOCKS_FULL);
            self.map_loss.update(total, now)
        } else {
            None
        };
        for (events, since) in [skipped, map_loss].into_iter().flatten() {
            self.feed(&mut Event {
                ts: now,
                pid: 0,
                tid: 0,
                kind: EventKind::Lost {
                    events,
                    sockets: 0,
                    since: Some(since),
                },
            })?;
        }
        Ok(())
    }

    /// Picks up processes that appeared since (by name) and new listening ports.
    /// Returns why to stop, if every watched PID is gone.
    fn rescan(&mut self) -> Result<Option<String>> {
        let proc_root = Path::new(PROC);
        // Processes already watched stay roots: after a binary upgrade the new master
        // outlives the old one and is no longer its descendant.
        let mut roots = self.specs.clone();
        roots.extend(self.watched.keys().map(|p| Spec::Pid(*p)));
        let now = targets::resolve(&roots, &targets::scan(proc_root));
        let mut new = Vec::new();
        for (pid, info) in &now {
            // A process not seen before, or one whose main thread the probes do not
            // know yet: watch all its threads.
            if !self.watched.contains_key(pid) || self.probes.watch_threads([*pid]).unwrap_or(0) > 0
            {
                self.probes
                    .watch_threads(targets::threads(proc_root, *pid))?;
                self.engine.set_comm(*pid, &info.comm);
                new.push(*pid);
            }
        }
        if !new.is_empty() {
            if self.watched.is_empty() {
                // What was waited for (a name not running at the start) or
                // came back (a proxy restarted): say so once.
                let mut found: Vec<String> = now
                    .iter()
                    .map(|(p, i)| format!("{} ({p})", i.comm))
                    .collect();
                found.truncate(8);
                eprintln!("classify: watching {}", found.join(", "));
            }
            attach_tls(&mut self.probes, proc_root, new.iter().copied());
            self.probes
                .add_listeners(&listeners::listeners(proc_root, new))?;
        }
        // Forget what exited (threads included: they have no /proc/PID of their own
        // in the scan).
        self.watched = now.iter().map(|(p, i)| (*p, i.comm.clone())).collect();
        let only_pids = self.specs.iter().all(|s| matches!(s, Spec::Pid(_)));
        if only_pids && self.watched.is_empty() {
            let pids: Vec<String> = self.specs.iter().map(|s| s.to_string()).collect();
            return Ok(Some(format!(
                "{} exited (and no descendant is left); stopping",
                pids.join(", ")
            )));
        }
        Ok(None)
    }

    fn stats(&self, last: bool) -> StatsRecord {
        let uptime = self.started.elapsed().as_secs_f64();
        StatsRecord {
            time: classifier::engine::wall_time(
                monotonic_ns(),
                self.engine.config().realtime_offset_ns,
            ),
            uptime_s: (uptime * 1000.0).round() / 1000.0,
            last,
            watched_processes: self.watched.len() as u64,
            events: self.events,
            ring_records: self.ring_records,
            event_bytes: self.event_bytes,
            events_per_s: if uptime > 0.0 {
                (self.events as f64 / uptime).round()
            } else {
                0.0
            },
            lost_events: self.probes.counter(stat::RING_FULL),
            untracked_sockets: self.probes.counter(stat::SOCKS_FULL),
            skipped_probe_runs: self.probes.skipped_runs(),
            undecodable_events: self.undecodable,
            exchanges: self.sink.exchanges,
            incomplete_exchanges: self.sink.incomplete,
            verdicts: self.sink.verdicts(),
            engine: self.engine.counters().clone(),
            tables: self.engine.table_sizes(),
            resident_kib: crate::memory::resident_kib().unwrap_or(0),
        }
    }
}

/// A kernel loss counter already reported, and when it was last read.
struct LossWatch {
    seen: u64,
    checked_at: u64,
}

impl LossWatch {
    fn new(now: u64) -> Self {
        Self {
            seen: 0,
            checked_at: now,
        }
    }

    /// How much the counter rose since the last read, and since when.
    fn update(&mut self, total: u64, now: u64) -> Option<(u64, u64)> {
        let since = std::mem::replace(&mut self.checked_at, now);
        (total > self.seen).then(|| {
            let rose = total - std::mem::replace(&mut self.seen, total);
            (rose, since)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LossWatch;

    #[test]
    fn loss_watch_reports_each_rise_once_with_its_window() {
        let mut w = LossWatch::new(100);
        assert_eq!(w.update(0, 200), None);
        assert_eq!(w.update(3, 300), Some((3, 200)));
        assert_eq!(w.update(3, 400), None);
        assert_eq!(w.update(5, 500), Some((2, 400)));
    }
}
