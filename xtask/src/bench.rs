//! `cargo xtask bench`: what watching nginx costs, measured side by side.
//!
//! On loopback, nginx (1 worker, then 2) proxies to a fast upstream (a second nginx
//! answering `return 200`). Every figure comes from paired, alternating rounds in
//! one run, without and with classify attached:
//! - fixed rate (the low-noise figure): CPU time per request of nginx's workers, the
//!   upstream, the load generator and classify, from `/proc/PID/task/*/schedstat`;
//!   kept-alive connections (h2load --rps) and a new connection per request (a
//!   paced client);
//! - saturation: wrk, req/s and p50/p99 latency, both connection modes;
//! - evidence kept: events and ring-buffer bytes per request, lost events, at
//!   saturation and in a burst of ten times the fixed rate;
//! - where the time goes: run time per program (`kernel.bpf_stats_enabled` on only
//!   for that run);
//! - the engine alone, replaying a recorded stream on one core.
//!
//! Results go to `target/bench/results.json` and `docs/benchmarks.md`.
use std::{
    fs,
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use classify_tests::nginx::{Config, Nginx};
use serde_json::{json, Value};

#[derive(Clone)]
pub struct Options {
    pub rounds: usize,
    pub sat_rounds: usize,
    pub seconds: u64,
    pub workers: Vec<u32>,
    /// Requests per second of the fixed-rate runs (kept-alive).
    pub rate: u32,
}

// ===== processes =====

pub(crate) fn classify_bin() -> PathBuf {
    crate::workspace_root().join("target/release/classify")
}

/// CPU nanoseconds of every thread of `pid` so far.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// nginx as the tests run it, minus the access log (`Config::quiet`).
fn nginx(workers: u32, http: &str) -> Nginx {
    Nginx::start(&Config {
        workers,
        http: http.to_owned(),
        binary: None,
        daemon: false,
        main: String::new(),
        quiet: true,
    })
}

/// classify attached to the proxy, writing records nowhere.
struct Agent {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

#[derive(Default, Clone, Copy)]
struct AgentCounts {
    /// Events the agent decoded, and the ring records they came in (a record can
    /// carry two).
    events: u64,
    records: u64,
    bytes: u64,
    lost: u64,
    exchanges: u64,
    /// Exchange records marked `complete: false`.
    incomplete: u64,
}

impl Agent {
    fn start(bin: &Path, master: u32, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args([
                "--pid",
                &master.to_string(),
                "--format",
                "json",
                "--output",
                "/dev/null",
                "--stats-interval",
                "0",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting classify (cargo xtask bench builds it in release)")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().context("stderr")?;
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(15))
            .context("classify did not start")?;
        if !ready.contains("ready") {
            bail!("classify: {ready}");
        }
        Ok(Self { child, lines: rx })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops classify and reads its final counts.
    fn stop(mut self) -> Result<AgentCounts> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        // The reader thread may still be passing the last lines on: wait for them
        // (the channel closes when stderr does).
        let line = self
            .lines
            .iter()
            .find(|l| l.contains("stopped after"))
            .context("no final line from classify")?;
        // "... N exchanges (I incomplete), E events (B bytes), L lost, ..."
        let num = |after: &str| -> u64 {
            line.split(after)
                .next()
                .and_then(|s| s.rsplit([' ', '(']).find(|t| !t.is_empty()))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(AgentCounts {
            exchanges: num(" exchanges"),
            incomplete: num(" incomplete"),
            events: num(" events"),
            records: num(" ring records"),
            bytes: num(" bytes"),
            lost: num(" lost"),
        })
    }
}

// ===== load =====

/// What a load run did.
struct Load {
    requests: u64,
    /// CPU of the load generator.
    cpu_ns: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Reaps a child and returns its CPU time (user + system).
fn wait_cpu(child: &mut Child) -> Result<u64> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4 failed");
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// h2load at a fixed rate on kept-alive connections.
fn h2load_fixed(port: u16, clients: u32, rps_per_client: u32, seconds: u64) -> Result<Load> {
    let mut child = Command::new("h2load")
        .args([
            "--h1",
            "-c",
            &clients.to_string(),
            "--rps",
            &rps_per_client.to_string(),
            "-D",
            &seconds.to_string(),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting h2load (cargo xtask setup installs nghttp2-client)")?;
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().context("stdout")?, &mut out)?;
    let cpu = wait_cpu(&mut child)?;
    // "requests: 24000 total, 24000 started, 24000 done, 24000 succeeded, ..."
    let done = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("h2load printed no request count")?;
    Ok(Load {
        requests: done,
        cpu_ns: cpu,
        rps: done as f64 / seconds as f64,
        p50_ms: 0.0,
        p99_ms: 0.0,
    })
}

/// A paced client: `threads` threads, each making `rate` new connections a second
/// (one request each, `Connection: close`), for `seconds`.
fn paced_new_connections(port: u16, threads: u32, rate: u32, seconds: u64) -> Load {
    let done = Arc::new(AtomicU64::new(0));
    let cpu = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (done, cpu) = (done.clone(), cpu.clone());
            thread::spawn(move || {
                let source = Ipv4Addr::new(127, 0, 0, 2 + (t % 8) as u8);
                let gap = Duration::from_secs_f64(1.0 / rate as f64);
                let mut next = Instant::now();
                while Instant::now() < end {
                    if classify_tests::client::one_shot(source, port, "/").is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    next += gap;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime into a timespec we own.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                cpu.fetch_add(
                    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
                    Ordering::Relaxed,
                );
            })
        })
        .collect();
    hs.into_iter().for_each(|h| {
        let _ = h.join();
    });
    let n = done.load(Ordering::Relaxed);
    Load {
        requests: n,
        cpu_ns: cpu.load(Ordering::Relaxed),
        rps: n as f64 / seconds as f64,
        p50_ms: 0.0,
        p99_ms: 0.0,
    }
}

fn parse_ms(v: &str) -> f64 {
    let v = v.trim();
    if let Some(x) = v.strip_suffix("us") {
        x.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        x.parse().unwrap_or(0.0)
    } else if let Some(x) = v.strip_suffix('s') {
        x.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

/// wrk at saturation.
fn wrk(port: u16, seconds: u64, new_connections: bool) -> Result<Load> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c32", "--latency", &format!("-d{seconds}s")]);
    if new_connections {
        cmd.args(["-H", "Connection: close"]);
    }
    let mut child = cmd
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wrk")?;
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().context("stdout")?, &mut out)?;
    let cpu = wait_cpu(&mut child)?;
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("wrk printed no Requests/sec")?;
    let requests = out
        .lines()
        .find_map(|l| {
            l.trim()
                .split(" requests in ")
                .next()
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    Ok(Load {
        requests,
        cpu_ns: cpu,
        rps,
        p50_ms: field("50%").map_or(0.0, |v| parse_ms(&v)),
        p99_ms: field("99%").map_or(0.0, |v| parse_ms(&v)),
    })
}

// ===== runs =====

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    FixedKeepalive,
    FixedNewConnection,
    SatKeepalive,
    SatNewConnection,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::FixedKeepalive => "fixed rate, kept-alive connections",
            Mode::FixedNewConnection => "fixed rate, a new connection per request",
            Mode::SatKeepalive => "saturation, kept-alive connections",
            Mode::SatNewConnection => "saturation, a new connection per request",
        }
    }
}

pub(crate) struct Env {
    upstream: Nginx,
    proxy: Nginx,
}

impl Env {
    pub(crate) fn start(workers: u32) -> Self {
        let upstream = nginx(
            1,
            "  server { listen 127.0.0.1:{port}; location / { return 200 \"ok\\n\"; } }",
        );
        let proxy = nginx(
            workers,
            &format!(
                "  upstream up {{ server 127.0.0.1:{}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{{port}}; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
                upstream.port
            ),
        );
        Self { upstream, proxy }
    }
}

/// One run: load in `mode`, with or without classify. CPU per request of each party.
/// `with` names the classify binary to attach, if any.
pub(crate) fn one_run(
    env: &Env,
    mode: Mode,
    with: Option<&Path>,
    opts: &Options,
    agent_args: &[&str],
) -> Result<Value> {
    let agent = match with {
        Some(bin) => Some(Agent::start(bin, env.proxy.master_pid(), agent_args)?),
        None => None,
    };
    let workers = env.proxy.worker_pids();
    let upstream_workers = env.upstream.worker_pids();
    let before = |pids: &[u32]| pids.iter().map(|p| cpu_ns(*p)).sum::<u64>();
    let (w0, u0, a0) = (
        before(&workers),
        before(&upstream_workers),
        agent.as_ref().map_or(0, |a| cpu_ns(a.pid())),
    );
    let load = match mode {
        Mode::FixedKeepalive => h2load_fixed(env.proxy.port, 32, opts.rate / 32, opts.seconds)?,
        Mode::FixedNewConnection => {
            paced_new_connections(env.proxy.port, 8, opts.rate / 4 / 8, opts.seconds)
        }
        Mode::SatKeepalive => wrk(env.proxy.port, opts.seconds, false)?,
        Mode::SatNewConnection => wrk(env.proxy.port, opts.seconds, true)?,
    };
    let (w1, u1, a1) = (
        before(&workers),
        before(&upstream_workers),
        agent.as_ref().map_or(0, |a| cpu_ns(a.pid())),
    );
    let counts = match agent {
        Some(a) => a.stop()?,
        None => AgentCounts::default(),
    };
    let n = load.requests.max(1) as f64;
    let us = |ns: u64| ns as f64 / n / 1000.0;
    Ok(json!({
        "requests": load.requests,
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "us_per_request": {
            "nginx_workers": us(w1 - w0),
            "upstream": us(u1 - u0),
            "load_generator": us(load.cpu_ns),
            "classify": us(a1 - a0),
        },
        "events_per_request": counts.events as f64 / n,
        "ring_records_per_request": counts.records as f64 / n,
        "event_bytes_per_request": counts.bytes as f64 / n,
        "lost_events": counts.lost,
        "exchanges": counts.exchanges,
        "incomplete_exchanges": counts.incomplete,
    }))
}

/// A median with its spread, as the results files write it.
pub(crate) fn triple(t: (f64, f64, f64)) -> Value {
    json!({"median": t.0, "min": t.1, "max": t.2})
}

pub(crate) fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let m = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (m, v[0], v[v.len() - 1])
}

/// Alternating paired rounds (order flipped every round).
fn paired(env: &Env, mode: Mode, rounds: usize, opts: &Options) -> Result<Value> {
    let bin = classify_bin();
    let mut runs = Vec::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut pair = [Value::Null, Value::Null];
        for with in order {
            pair[with as usize] = one_run(env, mode, with.then_some(bin.as_path()), opts, &[])?;
        }
        eprintln!(
            "bench: {} round {}: {:.0} → {:.0} req/s, worker {:.2} → {:.2} µs/req",
            mode.name(),
            r + 1,
            pair[0]["rps"].as_f64().unwrap_or(0.0),
            pair[1]["rps"].as_f64().unwrap_or(0.0),
            pair[0]["us_per_request"]["nginx_workers"]
                .as_f64()
                .unwrap_or(0.0),
            pair[1]["us_per_request"]["nginx_workers"]
                .as_f64()
                .unwrap_or(0.0),
        );
        runs.push(json!({"without": pair[0], "with": pair[1]}));
    }
    let diff = |who: &str| {
        median(
            runs.iter()
                .map(|p| {
                    p["with"]["us_per_request"][who].as_f64().unwrap_or(0.0)
                        - p["without"]["us_per_request"][who].as_f64().unwrap_or(0.0)
                })
                .collect(),
        )
    };
    let all = median(
        runs.iter()
            .map(|p| {
                ["nginx_workers", "upstream", "load_generator", "classify"]
                    .iter()
                    .map(|w| {
                        p["with"]["us_per_request"][w].as_f64().unwrap_or(0.0)
                            - p["without"]["us_per_request"][w].as_f64().unwrap_or(0.0)
                    })
                    .sum()
            })
            .collect(),
    );
    let ratio = |k: &str| {
        median(
            runs.iter()
                .map(|p| {
                    p["with"][k].as_f64().unwrap_or(0.0)
                        / p["without"][k].as_f64().unwrap_or(1.0).max(1e-9)
                })
                .collect(),
        )
    };
    // Median over rounds of a per-request figure of the runs with classify.
    let with_median = |k: &str| {
        median(
            runs.iter()
                .map(|p| p["with"][k].as_f64().unwrap_or(0.0))
                .collect(),
        )
        .0
    };
    let lost: u64 = runs
        .iter()
        .map(|p| p["with"]["lost_events"].as_u64().unwrap_or(0))
        .sum();
    Ok(json!({
        "mode": mode.name(),
        "rounds": rounds,
        "delta_us_per_request": {
            "nginx_workers": triple(diff("nginx_workers")),
            "upstream": triple(diff("upstream")),
            "load_generator": triple(diff("load_generator")),
            "classify": triple(diff("classify")),
            "all": triple(all),
        },
        "throughput_ratio": triple(ratio("rps")),
        "p50_ratio": triple(ratio("p50_ms")),
        "p99_ratio": triple(ratio("p99_ms")),
        "events_per_request": with_median("events_per_request"),
        "ring_records_per_request": with_median("ring_records_per_request"),
        "event_bytes_per_request": with_median("event_bytes_per_request"),
        "lost_events": lost,
        "runs": runs,
    }))
}

/// Per-program run time at the fixed rate, with BPF statistics on for that run only.
pub(crate) fn program_times(env: &Env, bin: &Path, opts: &Options) -> Result<Value> {
    let read = || -> Result<Vec<(u64, String, u64, u64)>> {
        let out = Command::new("bpftool")
            .args(["prog", "show", "-j"])
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        Some((
                            p["id"].as_u64()?,
                            p["name"].as_str()?.to_owned(),
                            p["run_time_ns"].as_u64().unwrap_or(0),
                            p["run_cnt"].as_u64().unwrap_or(0),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    };
    // Programs loaded before this agent (another classify on the machine shares
    // the program names) are not this agent's: matched by id, never by name.
    let others: Vec<u64> = read()?.iter().map(|p| p.0).collect();
    let agent = Agent::start(bin, env.proxy.master_pid(), &[])?;
    Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .status()?;
    let before = read()?;
    let load = h2load_fixed(env.proxy.port, 32, opts.rate / 32, opts.seconds)?;
    let after = read()?;
    Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=0"])
        .status()?;
    agent.stop()?;
    const OURS: [&str; 12] = [
        "sock_send_length",
        "sock_recv_length",
        "sys_exit_io",
        "inet_sock_set_state",
        "tcp_destroy_sock",
        "tcp_receive_reset",
        "tcp_send_reset",
        "inet_sk_error_repo",
        "sys_enter_epoll_w",
        "sched_process_for",
        "sched_process_exi",
        "sched_process_exe",
    ];
    let n = load.requests.max(1) as f64;
    let mut rows = Vec::new();
    let mut total = 0.0;
    for (id, name, t1, c1) in &after {
        if others.contains(id) || !OURS.iter().any(|o| name.starts_with(o)) {
            continue;
        }
        let (t0, c0) = before
            .iter()
            .find(|(id0, ..)| id0 == id)
            .map_or((0, 0), |(_, _, t, c)| (*t, *c));
        let (t, c) = (t1.saturating_sub(t0), c1.saturating_sub(c0));
        if c == 0 {
            continue;
        }
        total += t as f64 / n;
        rows.push(json!({"program": name, "runs_per_request": c as f64 / n, "ns_per_run": t as f64 / c as f64, "ns_per_request": t as f64 / n}));
    }
    Ok(json!({"requests": load.requests, "programs": rows, "ns_per_request": total}))
}

/// The engine alone: a stream recorded at saturation, replayed on one core.
fn engine_replay(env: &Env, opts: &Options, dir: &Path) -> Result<Value> {
    let rec = dir.join("stream.jsonl");
    let agent = Agent::start(
        &classify_bin(),
        env.proxy.master_pid(),
        &["--record", rec.to_str().unwrap()],
    )?;
    wrk(env.proxy.port, opts.seconds.min(5), false)?;
    agent.stop()?;
    // The release example, not this (debug) xtask: the engine's figures are the
    // shipped agent's optimization level and allocator.
    let bin = crate::workspace_root().join("target/release/examples/engine_bench");
    let out = Command::new(&bin)
        .arg(&rec)
        .arg("--json")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "engine_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("engine_bench output")?;
    let mut engine = v["ingest"].clone();
    engine["with_json"] = v["ingest + classifier::json"].clone();
    Ok(engine)
}

fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let nginx = Command::new("/usr/sbin/nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": cores, "kernel": kernel, "nginx": nginx})
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut by_workers = Vec::new();
    let mut engine = Value::Null;
    for &w in &opts.workers {
        let env = Env::start(w);
        eprintln!(
            "bench: nginx with {w} worker(s) on port {}, upstream on {}",
            env.proxy.port, env.upstream.port
        );
        let fixed_ka = paired(&env, Mode::FixedKeepalive, opts.rounds, opts)?;
        let fixed_new = paired(&env, Mode::FixedNewConnection, opts.rounds, opts)?;
        let sat_ka = paired(&env, Mode::SatKeepalive, opts.sat_rounds, opts)?;
        let sat_new = paired(&env, Mode::SatNewConnection, opts.sat_rounds, opts)?;
        // A burst of ten times the fixed rate.
        let burst = one_run(
            &env,
            Mode::FixedKeepalive,
            Some(&classify_bin()),
            &Options {
                rate: opts.rate * 10,
                workers: Vec::new(),
                ..*opts
            },
            &[],
        )?;
        let programs = program_times(&env, &classify_bin(), opts)?;
        if engine.is_null() {
            engine = engine_replay(&env, opts, dir.path())?;
        }
        by_workers.push(json!({
            "workers": w,
            "fixed_keepalive": fixed_ka,
            "fixed_new_connection": fixed_new,
            "saturation_keepalive": sat_ka,
            "saturation_new_connection": sat_new,
            "burst": burst,
            "programs": programs,
        }));
    }
    let results = json!({
        "machine": machine(),
        "rate": opts.rate,
        "seconds_per_run": opts.seconds,
        "took_s": started.elapsed().as_secs(),
        "runs": by_workers,
        "engine": engine,
    });
    let out_dir = crate::workspace_root().join("target/bench");
    fs::create_dir_all(&out_dir)?;
    fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    fs::write(
        crate::workspace_root().join("docs/benchmarks.md"),
        report(&results, opts),
    )?;
    eprintln!(
        "bench: wrote target/bench/results.json and docs/benchmarks.md in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn tri(v: &Value, digits: usize) -> String {
    format!(
        "{:.d$} [{:.d$} .. {:.d$}]",
        f(&v["median"]),
        f(&v["min"]),
        f(&v["max"]),
        d = digits
    )
}

/// docs/benchmarks.md from the results (numbers are never typed in).
fn report(r: &Value, opts: &Options) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = &r["machine"];
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench` (do not edit: rerun it). Machine: {} cores ({}), Linux {}, {}. \
         Loopback; nginx proxies to a second nginx answering `return 200` through a kept-alive upstream pool; \
         `access_log off`. Fixed rate: {} req/s; {} s per run; {} paired rounds at the fixed rate, {} at saturation, \
         alternating without/with classify (order flipped every round). Figures: median [min .. max] over rounds.\n",
        m["cores"], m["cpu"].as_str().unwrap_or(""), m["kernel"].as_str().unwrap_or(""), m["nginx"].as_str().unwrap_or(""),
        r["rate"], r["seconds_per_run"], opts.rounds, opts.sat_rounds
    );
    for w in r["runs"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "## nginx with {} worker(s)\n", w["workers"]);
        let _ = writeln!(
            s,
            "### CPU added per request at a fixed rate (µs, with − without, paired)\n"
        );
        let _ = writeln!(s, "| connections | nginx workers | upstream | load generator | classify | all | events/req | ring records/req | bytes/req | lost |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for (label, k) in [
            ("kept alive", "fixed_keepalive"),
            ("new per request", "fixed_new_connection"),
        ] {
            let x = &w[k];
            let d = &x["delta_us_per_request"];
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {} |",
                tri(&d["nginx_workers"], 2),
                tri(&d["upstream"], 2),
                tri(&d["load_generator"], 2),
                tri(&d["classify"], 2),
                tri(&d["all"], 2),
                f(&x["events_per_request"]),
                f(&x["ring_records_per_request"]),
                f(&x["event_bytes_per_request"]),
                x["lost_events"]
            );
        }
        let _ = writeln!(s, "\n### Saturation (wrk -t1 -c32; ratio with/without)\n");
        let _ = writeln!(s, "| connections | req/s without (median) | throughput ratio | p50 ratio | p99 ratio | events/req | ring records/req | lost |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for (label, k) in [
            ("kept alive", "saturation_keepalive"),
            ("new per request", "saturation_new_connection"),
        ] {
            let x = &w[k];
            let base = median(
                x["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| f(&p["without"]["rps"]))
                    .collect(),
            )
            .0;
            let _ = writeln!(
                s,
                "| {label} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {} |",
                base,
                tri(&x["throughput_ratio"], 3),
                tri(&x["p50_ratio"], 3),
                tri(&x["p99_ratio"], 3),
                f(&x["events_per_request"]),
                f(&x["ring_records_per_request"]),
                x["lost_events"]
            );
        }
        let b = &w["burst"];
        let _ = writeln!(
            s,
            "\nBurst at ten times the fixed rate: {:.0} req/s served, {:.2} events in {:.2} ring records and {:.0} ring bytes per request, {} lost events; {} of {} records `complete: false`. (Once nginx falls behind, h2load writes a connection's next requests without waiting: they arrive pipelined, several in one read, and only the first one's line is captured; see verdicts.md.)\n",
            f(&b["rps"]), f(&b["events_per_request"]), f(&b["ring_records_per_request"]), f(&b["event_bytes_per_request"]), b["lost_events"],
            b["incomplete_exchanges"], b["exchanges"]
        );
        let _ = writeln!(s, "### Where the time goes (fixed rate, kept alive; BPF statistics on for this run only)\n");
        let _ = writeln!(s, "| program | runs/request | ns/run | ns/request |");
        let _ = writeln!(s, "|---|---|---|---|");
        for p in w["programs"]["programs"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| `{}` | {:.2} | {:.0} | {:.0} |",
                p["program"].as_str().unwrap_or(""),
                f(&p["runs_per_request"]),
                f(&p["ns_per_run"]),
                f(&p["ns_per_request"])
            );
        }
        let _ = writeln!(
            s,
            "| all | | | {:.0} |\n",
            f(&w["programs"]["ns_per_request"])
        );
    }
    let e = &r["engine"];
    let _ = writeln!(s, "## The engine alone\n");
    let _ = writeln!(
        s,
        "A stream recorded at saturation ({} events, {} records) replayed on one core by the release build (`examples/engine_bench`), best of five: **{:.0} events/s**, {:.0} records/s, {:.2} allocations per event; with every record written as JSON as the agent does, {:.0} events/s.\n",
        e["events"], e["records"], f(&e["events_per_s"]), f(&e["records_per_s"]), f(&e["allocations_per_event"]), f(&e["with_json"]["events_per_s"])
    );
    let _ = writeln!(s, "## Reproduce\n\n```\ncargo xtask bench                # full run (rounds as above)\ncargo xtask bench --quick        # 3 rounds of 3 s, for a smoke test\n```\n\nRaw figures of every round: `target/bench/results.json`.");
    s
}
