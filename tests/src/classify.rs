//! Runs the `classify` binary against a process and collects its JSON records.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;

/// Path of the classify binary: `$CLASSIFY_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CLASSIFY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    target.join("debug").join("classify")
}

pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout_done: mpsc::Receiver<()>,
    /// Closed when the stderr reader has passed on classify's last line (its
    /// final summary comes just before it exits).
    stderr_done: mpsc::Receiver<()>,
    /// From the process's start to its ready line reaching the test.
    pub start_up: Duration,
}

/// What a stopped run produced.
pub struct Output {
    pub status: ExitStatus,
    /// Every stdout line parsed as JSON.
    pub records: Vec<Value>,
    pub stderr: String,
}

impl Output {
    pub fn exchanges(&self) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["kind"] == "exchange")
            .collect()
    }

    pub fn final_stats(&self) -> Option<&Value> {
        self.records
            .iter()
            .rev()
            .find(|r| r["kind"] == "stats" && r["final"] == true)
    }
}

/// Held while a classify this process started loads its probes: start-up is
/// the kernel verifier's work, on this machine's two cores, and two agents
/// verifying at once (tests run in parallel) each take about twice as long.
/// A test's start then measures classify's own start-up, as a user's would.
static STARTING: Mutex<()> = Mutex::new(());

/// Starts `classify --format json ARGS...` and waits until it says it is ready.
pub fn start(args: &[&str]) -> Running {
    // A test that panicked while starting leaves the lock poisoned: the lock
    // itself is still good.
    let _starting = STARTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let spawned = std::time::Instant::now();
    let mut child = Command::new(binary())
        .args(["--format", "json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (build it with `cargo build`)",
                binary().display()
            )
        });
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (err_done_tx, err_done_rx) = mpsc::channel::<()>();
    let out = child.stdout.take().expect("stdout");
    let s2 = stdout.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            s2.lock().expect("lock").push(line);
        }
        let _ = done_tx.send(());
    });
    let err = child.stderr.take().expect("stderr");
    let e2 = stderr.clone();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let ready = line.contains("ready in");
            e2.lock().expect("lock").push(line);
            if ready {
                let _ = ready_tx.send(());
            }
        }
        drop(err_done_tx);
    });
    let mut running = Running {
        child,
        stdout,
        stderr,
        stdout_done: done_rx,
        stderr_done: err_done_rx,
        start_up: Duration::ZERO,
    };
    if ready_rx.recv_timeout(Duration::from_secs(15)).is_err() {
        let _ = running.child.kill();
        let _ = running.child.wait();
        panic!(
            "classify did not become ready:\n{}",
            running.stderr.lock().expect("lock").join("\n")
        );
    }
    running.start_up = spawned.elapsed();
    running
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What classify wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Records emitted so far (live, before stopping).
    pub fn records_so_far(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether classify has exited on its own.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Ids of the BPF programs this classify holds (from its fds' fdinfo).
    pub fn bpf_prog_ids(&self) -> Vec<u32> {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        let mut ids: Vec<u32> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|info| {
                        info.lines().find_map(|l| {
                            l.strip_prefix("prog_id:")
                                .and_then(|v| v.trim().parse().ok())
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// SIGINT, then collects everything (bounded wait).
    pub fn stop(self) -> Output {
        self.stop_with(libc::SIGINT)
    }

    /// Sends `signal` (if classify still runs), then collects everything (bounded wait).
    pub fn stop_with(mut self, signal: i32) -> Output {
        if !self.has_exited() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
        let status = crate::wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| {
            let _ = self.child.kill();
            self.child.wait().expect("wait")
        });
        let _ = self.stdout_done.recv_timeout(Duration::from_secs(5));
        // Disconnected (Err) once the reader has read to the end of stderr.
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(5));
        let lines = self.stdout.lock().expect("lock").clone();
        let records = lines
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("classify wrote a line that is not JSON: {l}: {e}"))
            })
            .collect();
        let stderr = self.stderr.lock().expect("lock").join("\n");
        Output {
            status,
            records,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
