//! Project tasks: `cargo xtask <setup|build|test|demo|fixtures>`.
mod bench;
mod compare;
mod demo;
mod kernels;
mod setup;
mod soak;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: Debian packages, rust-src, bpf-linker.
    Setup {
        /// Say what is already present too.
        #[arg(long)]
        verbose: bool,
    },
    /// Set up, then build everything (the probes are built by classifier-user's build script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run every test: unit, engine replay, end-to-end, and
    /// a smoke test on Debian's 6.1 kernel under QEMU.
    Test {
        /// Only tests whose name contains this (`kernels`: the 6.1 smoke test).
        filter: Option<String>,
    },
    /// Set up, build, start nginx in front of a test upstream, watch it live.
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// Record the engine's replay fixtures from real nginx into tests/fixtures.
    Fixtures,
    /// Measure what watching nginx costs (docs/benchmarks.md, target/bench/results.json).
    Bench {
        /// Paired rounds at the fixed rate.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Paired rounds at saturation.
        #[arg(long, default_value_t = 9)]
        sat_rounds: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Fixed rate, requests per second (kept-alive mode; a quarter of it with a
        /// new connection per request).
        #[arg(long, default_value_t = 4800)]
        rate: u32,
        /// nginx worker counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        workers: Vec<u32>,
        /// 3 rounds of 3 s: a smoke test.
        #[arg(long)]
        quick: bool,
    },
    /// This build against another classify binary, paired in one run (fixed rate,
    /// kept alive): CPU per request and BPF time per program.
    Compare(compare::CompareOptions),
    /// A long run with a fault mix under load (not in CI): no crash, flat memory,
    /// agreement with the access log.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup { verbose } => setup::run(&setup::Options { quiet: !verbose }),
        Task::Build { release } => {
            prepare()?;
            build(release)
        }
        Task::Test { filter } => {
            prepare()?;
            test(filter.as_deref())
        }
        Task::Demo { seconds } => {
            prepare()?;
            build(false)?;
            demo::run(seconds)
        }
        Task::Bench {
            rounds,
            sat_rounds,
            seconds,
            rate,
            workers,
            quick,
        } => {
            prepare()?;
            build(true)?;
            let opts = if quick {
                bench::Options {
                    rounds: 3,
                    sat_rounds: 3,
                    seconds: 3,
                    workers,
                    rate,
                }
            } else {
                bench::Options {
                    rounds,
                    sat_rounds,
                    seconds,
                    workers,
                    rate,
                }
            };
            bench::run(&opts)
        }
        Task::Compare(options) => {
            prepare()?;
            build(true)?;
            compare::run(&options)
        }
        Task::Soak { minutes } => {
            prepare()?;
            build(true)?;
            soak::run(minutes)
        }
        Task::Fixtures => {
            prepare()?;
            build(false)?;
            cargo(&[
                "test",
                "-p",
                "classify-tests",
                "--test",
                "e2e",
                "fixtures::",
                "--",
                "--ignored",
                "--test-threads=1",
            ])
        }
    }
}

/// Setup, and bpf-linker on PATH for the probes' build.
fn prepare() -> Result<()> {
    setup::run(&setup::Options { quiet: true })?;
    let dir = setup::bpf_linker_dir();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !paths.contains(&dir) {
        paths.insert(0, dir);
        // SAFETY-free: single-threaded at this point; children inherit it.
        std::env::set_var("PATH", std::env::join_paths(paths)?);
    }
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs cargo in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--workspace", "--all-targets"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (relative to the
/// workspace root, where cargo runs), else `<root>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || workspace_root().join("target"),
            |d| workspace_root().join(d),
        )
}

/// Unit and replay tests in parallel; end-to-end tests one at a time (each starts
/// its own nginx and probes, and some measure time).
fn test(filter: Option<&str>) -> Result<()> {
    build(false)?;
    let bin = target_dir().join("debug/classify");
    // SAFETY-free: single-threaded; children inherit it.
    std::env::set_var("CLASSIFY_BIN", &bin);
    let mut unit = vec!["test", "--workspace", "--exclude", "classify-tests"];
    let mut e2e = vec!["test", "-p", "classify-tests"];
    if let Some(f) = filter {
        unit.extend(["--", f]);
        e2e.extend(["--", f, "--test-threads=1"]);
    } else {
        e2e.extend(["--", "--test-threads=1"]);
    }
    cargo(&unit)?;
    cargo(&e2e)?;
    // The whole suite, or asked for by name: the same binary on Debian's 6.1.
    if filter.is_none_or(|f| f == "kernels") {
        kernels::smoke_test_on_debian_6_1(&bin, &target_dir().join("kernels"))?;
    }
    Ok(())
}
