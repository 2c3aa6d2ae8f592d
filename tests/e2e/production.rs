//! What a production proxy does to its watcher: reloads, binary upgrades,
//! restarts, signals, loss, and input that is not what it should be.
use std::{
    io::Write as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use classify_tests::{
    classify,
    client::{self, Conn},
    nginx::{Config, Nginx},
    upstream::Upstream,
    wait_for,
};
use serde_json::Value;

use super::support::{
    access_key, assert_matches_access_log, assert_schema, record_key, require_root, stop_after_log,
};

/// Client threads sending requests in a loop (kept-alive connections, reopened
/// when the proxy closes them) until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|i| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let paths = ["/status/200", "/slow/150", "/status/404", "/status/503"];
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = Conn::connect(port) else {
                            thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        for _ in 0..5 {
                            n += 1;
                            if stop.load(Ordering::Relaxed)
                                || c.request("GET", paths[n % paths.len()]).is_err()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, handles }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// Waits until nginx's access log stops growing.
fn settled_log(nginx: &Nginx) -> Vec<classify_tests::nginx::AccessEntry> {
    let mut last = usize::MAX;
    wait_for(Duration::from_secs(10), || {
        let log = nginx.access_log();
        let n = log.len();
        if n == last {
            return Some(log);
        }
        last = n;
        thread::sleep(Duration::from_millis(300));
        None
    })
    .unwrap_or_else(|| nginx.access_log())
}

fn worker_pids(records: &[&Value]) -> std::collections::BTreeSet<u64> {
    records
        .iter()
        .filter_map(|r| r["proxy"]["pid"].as_u64())
        .collect()
}

#[test]
fn reload_under_traffic_follows_new_workers_and_ends_old_exchanges() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], Some(8), ""));
    let old_workers = nginx.worker_pids();
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let traffic = Traffic::start(nginx.port, 4);
    thread::sleep(Duration::from_millis(800));
    nginx.signal(libc::SIGHUP);
    let new_workers = wait_for(Duration::from_secs(10), || {
        let w = nginx.worker_pids();
        (!w.is_empty() && w.iter().all(|p| !old_workers.contains(p))).then_some(w)
    })
    .expect("new workers after reload");
    thread::sleep(Duration::from_millis(1200));
    traffic.stop();
    let access = settled_log(&nginx);
    thread::sleep(Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    let pids = worker_pids(&exchanges);
    assert!(
        old_workers.iter().any(|p| pids.contains(&u64::from(*p))),
        "no record from old workers"
    );
    assert!(
        new_workers.iter().any(|p| pids.contains(&u64::from(*p))),
        "no record from new workers {new_workers:?}: {pids:?}"
    );
    assert!(exchanges.iter().all(|r| r["complete"] == true));
}

#[test]
fn binary_upgrade_under_traffic_follows_the_new_master() {
    require_root();
    let upstream = Upstream::start();
    let mut config = Config::proxy(&[upstream.addr().to_string()], Some(8), "");
    config.daemon = true;
    let nginx = Nginx::start(&config);
    let first = nginx.master_pid();
    let running = classify::start(&["--pid", &first.to_string()]);
    let traffic = Traffic::start(nginx.port, 4);
    thread::sleep(Duration::from_millis(800));
    // USR2: the master execs a new binary (a child of the old master), which
    // starts its own workers; QUIT: the old master and its workers leave.
    nginx.signal(libc::SIGUSR2);
    let new_master = wait_for(Duration::from_secs(10), || {
        let m = nginx.master_pid();
        (m != first && nginx.worker_pids().len() >= 2).then_some(m)
    })
    .expect("a new master after USR2");
    thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the master this test started.
    unsafe { libc::kill(first as i32, libc::SIGQUIT) };
    thread::sleep(Duration::from_millis(1500));
    let new_workers = nginx.worker_pids();
    traffic.stop();
    let access = settled_log(&nginx);
    thread::sleep(Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        !out.stderr.contains("stopping"),
        "classify stopped when the old master left: {}",
        out.stderr
    );
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    let pids = worker_pids(&exchanges);
    assert!(
        new_workers.iter().any(|p| pids.contains(&u64::from(*p))),
        "no record from the new master {new_master}'s workers {new_workers:?}: {pids:?}"
    );
}

/// A copy of the nginx binary under a name no other test uses.
fn renamed_nginx(dir: &std::path::Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/usr/sbin/nginx", &path).expect("copy nginx");
    path
}

#[test]
fn watching_by_name_survives_a_stop_and_start() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let binary = renamed_nginx(dir.path(), "ngx-restart");
    let upstream = Upstream::start();
    let config = || {
        let mut c = Config::proxy(&[upstream.addr().to_string()], Some(4), "");
        c.binary = Some(binary.clone());
        c
    };
    let first = Nginx::start(&config());
    let running = classify::start(&["--pid", "ngx-restart"]);
    let mut c = Conn::connect(first.port).unwrap();
    assert_eq!(c.request("GET", "/status/200").unwrap().status, 200);
    drop(c);
    let access1 = first.wait_access_log(1, Duration::from_secs(5));
    drop(first);
    // Started again: new PIDs, new port. The exec is seen by the probes at once.
    let second = Nginx::start(&config());
    let mut c = Conn::connect(second.port).unwrap();
    assert_eq!(c.request("GET", "/status/201").unwrap().status, 201);
    assert_eq!(c.request("GET", "/status/404").unwrap().status, 404);
    drop(c);
    let (out, access2) = stop_after_log(&second, running, 2);
    let mut access = access1;
    access.extend(access2);
    assert_matches_access_log(&out.exchanges(), &access);
}

/// An agent started before its proxy (a DaemonSet's pod scheduled first):
/// it waits for a process of that name, and watches it from its exec.
#[test]
fn watching_by_name_waits_for_a_proxy_started_later() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let binary = renamed_nginx(dir.path(), "ngx-later");
    let upstream = Upstream::start();
    let running = classify::start(&["--pid", "ngx-later"]);
    let mut c = Config::proxy(&[upstream.addr().to_string()], Some(4), "");
    c.binary = Some(binary);
    let nginx = Nginx::start(&c);
    let mut c = Conn::connect(nginx.port).unwrap();
    assert_eq!(c.request("GET", "/status/200").unwrap().status, 200);
    assert_eq!(c.request("GET", "/status/503").unwrap().status, 503);
    drop(c);
    let (out, access) = stop_after_log(&nginx, running, 2);
    assert!(
        out.stderr
            .contains("no process named \"ngx-later\" is running yet"),
        "{}",
        out.stderr
    );
    assert_matches_access_log(&out.exchanges(), &access);
}

#[test]
fn a_watched_pid_that_exits_ends_the_run_with_a_summary() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], None, ""));
    let mut running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let port = nginx.port;
    let mut c = Conn::connect(port).unwrap();
    assert_eq!(c.request("GET", "/status/200").unwrap().status, 200);
    drop(c);
    nginx.wait_access_log(1, Duration::from_secs(5));
    drop(nginx);
    let exited = wait_for(Duration::from_secs(5), || {
        running.has_exited().then_some(())
    });
    assert!(
        exited.is_some(),
        "classify kept running after its PID exited"
    );
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("exited"),
        "no clear message: {}",
        out.stderr
    );
    assert_eq!(out.exchanges().len(), 1);
    assert!(out.final_stats().is_some(), "no final stats record");
}

/// A worker killed mid-request: nginx logs nothing for the request, its
/// master forks a new worker. The record says the proxy's process exited,
/// not that the proxy's configuration answered, and the new worker is watched.
#[test]
fn a_worker_killed_mid_request_is_said_so() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], None, ""));
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let workers = nginx.worker_pids();
    let mut c = Conn::connect(nginx.port).unwrap();
    let port = c.local_port();
    c.send("GET", "/slow/3000", &[], b"").unwrap();
    thread::sleep(Duration::from_millis(300));
    for w in &workers {
        // SAFETY: a signal to the lab's own nginx workers.
        unsafe { libc::kill(*w as i32, libc::SIGKILL) };
    }
    assert!(c.read_response().is_err(), "a killed worker answered");
    let respawned = wait_for(Duration::from_secs(5), || {
        let now = nginx.worker_pids();
        (!now.is_empty() && now.iter().all(|w| !workers.contains(w))).then_some(now)
    });
    assert!(respawned.is_some(), "no new worker");
    assert_eq!(client::get(nginx.port, "/status/200").unwrap().status, 200);
    thread::sleep(Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let ex = out.exchanges();
    let killed = ex
        .iter()
        .find(|r| r["client"]["port"] == port)
        .expect("a record for the killed request");
    assert_eq!(killed["verdict"], "proxy_error", "{killed:#}");
    let hint = killed["hint"].as_str().unwrap();
    assert!(
        hint.contains("exited") && hint.contains("killed or crashed"),
        "{killed:#}"
    );
    assert!(
        killed["duration_us"].as_u64().unwrap() >= 250_000,
        "{killed:#}"
    );
    // The respawned worker's exchange.
    assert!(
        ex.iter()
            .any(|r| r["request"]["target"] == "/status/200" && r["verdict"] == "ok"),
        "{ex:#?}"
    );
}

#[test]
fn sigterm_flushes_and_sigkill_leaves_nothing_attached() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], None, ""));
    // SIGTERM with an exchange in flight: flushed with complete: false.
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let c = Conn::connect(nginx.port).unwrap();
    let mut s = c.stream().try_clone().unwrap();
    s.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let out = running.stop_with(libc::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    let ex = out.exchanges();
    assert_eq!(ex.len(), 1, "{:?}", out.records);
    assert_eq!(ex[0]["complete"], false);
    assert!(
        ex[0]["hint"].as_str().unwrap().contains("in flight"),
        "{}",
        ex[0]
    );
    assert!(out.final_stats().is_some());
    drop(c);

    // SIGKILL: the kernel drops every program and link with the process's fds.
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let ids = running.bpf_prog_ids();
    assert!(
        ids.len() >= 10,
        "expected the probes' program ids, got {ids:?}"
    );
    let out = running.stop_with(libc::SIGKILL);
    assert!(!out.status.success());
    let left = wait_for(Duration::from_secs(5), || {
        let alive: Vec<u32> = ids.iter().copied().filter(|id| prog_exists(*id)).collect();
        alive.is_empty().then_some(())
    });
    assert!(left.is_some(), "programs still loaded after SIGKILL");
}

fn prog_exists(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn loss_is_counted_and_marks_records_incomplete() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], Some(8), ""));
    let running = classify::start(&["--pid", &nginx.master_pid().to_string(), "--ring-kib", "16"]);
    // Stop the agent so the 16 KiB ring fills while traffic runs.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(running.pid() as i32, libc::SIGSTOP) };
    let traffic = Traffic::start(nginx.port, 4);
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: as above.
    unsafe { libc::kill(running.pid() as i32, libc::SIGCONT) };
    thread::sleep(Duration::from_millis(500));
    traffic.stop();
    let access = settled_log(&nginx);
    thread::sleep(Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_schema(&out.records);
    let stats = out.final_stats().unwrap();
    assert!(
        stats["lost_events"].as_u64().unwrap() > 0,
        "no loss provoked: {stats}"
    );
    let incomplete = out
        .exchanges()
        .iter()
        .filter(|r| r["complete"] == false)
        .count();
    assert!(incomplete > 0, "loss marked no record incomplete");
    // No wrong confident record: every complete record matches an access-log line.
    let logged: std::collections::BTreeSet<_> = access.iter().map(access_key).collect();
    for r in out.exchanges().iter().filter(|r| r["complete"] == true) {
        assert!(
            logged.contains(&record_key(r)),
            "a complete record nginx did not log: {r}"
        );
    }
}

#[test]
fn a_full_socket_map_is_counted_and_marks_records_incomplete() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], Some(8), ""));
    let running = classify::start(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--max-sockets",
        "6",
    ]);
    // Twelve client connections held open at once, each with its request.
    let mut conns: Vec<Conn> = (0..12)
        .filter_map(|_| Conn::connect(nginx.port).ok())
        .collect();
    for c in conns.iter_mut() {
        let _ = c.request("GET", "/status/200");
    }
    let (out, access) = stop_after_log(&nginx, running, 12);
    let stats = out.final_stats().unwrap();
    assert!(stats["untracked_sockets"].as_u64().unwrap() > 0, "{stats}");
    let logged: std::collections::BTreeSet<_> = access.iter().map(access_key).collect();
    for r in out.exchanges().iter().filter(|r| r["complete"] == true) {
        assert!(
            logged.contains(&record_key(r)),
            "a complete record nginx did not log: {r}"
        );
    }
}

#[test]
fn replaying_a_truncated_or_corrupt_recording_is_a_clear_error() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], None, ""));
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    let running = classify::start(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--record",
        rec.to_str().unwrap(),
    ]);
    for _ in 0..3 {
        let _ = classify_tests::client::get(nginx.port, "/status/200");
    }
    nginx.wait_access_log(3, Duration::from_secs(5));
    let out = running.stop();
    assert!(out.status.success());
    let full = std::fs::read(&rec).unwrap();
    let replay = |bytes: &[u8]| {
        let p = dir.path().join("cut.jsonl");
        std::fs::write(&p, bytes).unwrap();
        let o = std::process::Command::new(classify::binary())
            .args(["replay", p.to_str().unwrap(), "--format", "json"])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, stdout, _) = replay(&full);
    assert!(ok);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("\"exchange\""))
            .count(),
        3
    );
    let (ok, _, stderr) = replay(&full[..full.len() - 7]);
    assert!(!ok && stderr.contains("truncated"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut corrupt = full.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 5].copy_from_slice(b"\x00\xff{]x");
    let (ok, _, stderr) = replay(&corrupt);
    assert!(!ok && stderr.contains("corrupt at line"), "{stderr}");
    let (ok, _, stderr) = replay(b"not a recording\n");
    assert!(
        !ok && stderr.contains("not a classify recording"),
        "{stderr}"
    );
}

#[test]
fn output_files_are_private() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], None, ""));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.jsonl");
    let running = classify::start(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    let _ = classify_tests::client::get(nginx.port, "/status/200");
    nginx.wait_access_log(1, Duration::from_secs(5));
    let started = Instant::now();
    let out = running.stop();
    assert!(out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        started.elapsed()
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("\"exchange\""));
}
