//! `cargo xtask soak [--minutes 10]`: a long run with a fault mix under load.
//! Checks that classify does not crash, that its memory stays flat, and that its
//! records agree with nginx's access log; prints the figures. Not part of CI
//! (too long): run it by hand.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write as _},
    net::{Ipv4Addr, Shutdown},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use classify_tests::{
    client::{self, Conn},
    free_port,
    netfilter::DropPort,
    nginx::{Config, Nginx},
    upstream::{set_linger_zero, Upstream},
    wait_for,
};

const PATHS: [&str; 14] = [
    "/status/200",
    "/status/200",
    "/status/200",
    "/status/404",
    "/status/503",
    "/slow/80",
    "/fault/reset",
    "/fault/close",
    "/fault/badheader",
    "/fault/silent",
    "/refused/x",
    "/blackhole/x",
    "/fault/truncate",
    "abort",
];

pub fn run(minutes: u64) -> Result<()> {
    let upstream = Upstream::start();
    let up = upstream.addr();
    let closed = free_port();
    let blackhole = free_port();
    let _drop = DropPort::new(blackhole);
    let nginx = Nginx::start(&Config::fault_lab(up, closed, blackhole));
    let dir = tempfile::tempdir()?;
    let records = dir.path().join("records.jsonl");
    let bin = crate::workspace_root().join("target/release/classify");
    let mut child = Command::new(&bin)
        .args([
            "--pid",
            &nginx.master_pid().to_string(),
            "--format",
            "json",
            "--output",
        ])
        .arg(&records)
        // CLASSIFY_SOAK_RECORD=FILE keeps the event stream, to study a disagreement.
        .args(
            std::env::var("CLASSIFY_SOAK_RECORD")
                .map(|f| vec!["--record".to_owned(), f])
                .unwrap_or_default(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(15))
        .context("classify did not start")?;
    eprintln!("soak: {ready}");
    let pid = child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let port = nginx.port;
    let clients: Vec<_> = (0..8)
        .map(|w| {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                let source = Ipv4Addr::new(127, 0, 0, 2 + w as u8);
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let path = PATHS[i % PATHS.len()];
                    if path == "abort" {
                        if let Ok(c) = Conn::connect(port) {
                            let mut s = c.stream().try_clone().unwrap();
                            let _ = s.write_all(b"GET /slow/2000 HTTP/1.1\r\nHost: t\r\n\r\n");
                            thread::sleep(Duration::from_millis(200));
                            if i % 2 == 0 {
                                set_linger_zero(&s);
                            } else {
                                let _ = s.shutdown(Shutdown::Write);
                            }
                        }
                    } else if i % 3 == 0 {
                        let _ = client::one_shot(source, port, path);
                    } else if let Ok(mut c) = Conn::connect(port) {
                        let _ = c.request("GET", path);
                        let _ = c.request("GET", "/status/200");
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // Steady load beside the fault mix: h2load at 1,000 req/s on kept-alive
    // connections for the whole run.
    let mut load = Command::new("h2load")
        .args([
            "--h1",
            "-c",
            "10",
            "--rps",
            "100",
            "-D",
            &(minutes * 60).to_string(),
        ])
        .arg(format!("http://127.0.0.1:{port}/status/200"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting h2load (cargo xtask setup installs nghttp2-client)")?;
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut samples = Vec::new();
    while Instant::now() < end {
        thread::sleep(Duration::from_secs(10));
        if let Ok(Some(status)) = child.try_wait() {
            bail!("classify exited during the soak: {status}");
        }
        let rss = classify_tests::rss_kib(pid);
        samples.push((started.elapsed().as_secs(), rss));
        eprintln!(
            "soak: {:>4} s  {} requests  classify RSS {} KiB",
            started.elapsed().as_secs(),
            sent.load(Ordering::Relaxed),
            rss
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.wait();
    clients.into_iter().for_each(|h| {
        let _ = h.join();
    });
    // Let slow and timed-out requests finish and be logged.
    let mut last = 0;
    wait_for(Duration::from_secs(15), || {
        let n = nginx.access_log().len();
        let settled = n == last;
        last = n;
        thread::sleep(Duration::from_millis(500));
        settled.then_some(())
    });
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait()?;
    let summary: Vec<String> = rx.try_iter().collect();
    if !status.success() {
        bail!("classify exited with {status}: {summary:?}");
    }

    // Agreement: every access-log line has its record and vice versa.
    let key = |port: &str, method: &str, uri: &str, status: &str| {
        format!("{port} {method} {uri} {status}")
    };
    let mut want: HashMap<String, i64> = HashMap::new();
    let access = nginx.access_log();
    for a in &access {
        let status = if a.status == "499" || a.status == "009" {
            "-"
        } else {
            a.status.as_str()
        };
        *want
            .entry(key(&a.remote_port, &a.method, &a.uri, status))
            .or_default() += 1;
    }
    let mut exchanges = 0u64;
    let mut incomplete = 0u64;
    for line in BufReader::new(std::fs::File::open(&records)?).lines() {
        let r: serde_json::Value = serde_json::from_str(&line?)?;
        if r["kind"] == "stats" && r["final"] == true {
            println!("soak: engine counters {}", r["engine"]);
        }
        if r["kind"] != "exchange" {
            continue;
        }
        exchanges += 1;
        if r["complete"] == false {
            incomplete += 1;
        }
        let status = r["response"]["status"]
            .as_u64()
            .map_or("-".to_owned(), |s| s.to_string());
        let k = key(
            &r["client"]["port"].to_string(),
            r["request"]["method"].as_str().unwrap_or("-"),
            r["request"]["target"].as_str().unwrap_or("-"),
            &status,
        );
        *want.entry(k).or_default() -= 1;
    }
    let missing: i64 = want.values().filter(|n| **n > 0).sum();
    let extra: i64 = -want.values().filter(|n| **n < 0).sum::<i64>();
    let first = samples.get(samples.len() / 5).map_or(0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let lastrss = samples.last().map_or(0, |s| s.1);
    println!("soak: {minutes} min, {} access-log lines, {exchanges} records ({incomplete} incomplete), {missing} missing, {extra} extra", access.len());
    println!("soak: classify RSS at 1/5 {first} KiB, peak {peak} KiB, at the end {lastrss} KiB");
    for l in summary {
        println!("soak: {l}");
    }
    if missing > 0 || extra > 0 {
        for (k, n) in want.iter().filter(|(_, n)| **n != 0).take(20) {
            println!("soak: {} {k}", if *n > 0 { "missing" } else { "extra" });
        }
        bail!("records disagree with the access log");
    }
    if lastrss > first + 8 * 1024 {
        bail!("classify's memory grew from {first} to {lastrss} KiB");
    }
    Ok(())
}
