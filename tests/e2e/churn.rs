//! Bounded memory under connection churn: a million short connections through
//! nginx. The agent's resident memory must stay under `RSS_BOUND` and flat, and
//! every exchange must be accounted for.
use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use classify_tests::{
    classify,
    client::one_shot,
    nginx::{Config, Nginx},
    upstream::Upstream,
};

use super::support::require_root;

/// The agent's stated bound on resident memory, whatever the number of
/// connections it has seen.
const RSS_BOUND_KIB: u64 = 64 * 1024;

#[test]
fn a_million_short_connections_keep_memory_bounded() {
    require_root();
    let total: usize = std::env::var("CLASSIFY_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], Some(32), ""));
    let running = classify::start(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--output",
        "/dev/null",
    ]);
    let pid = running.pid();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // RSS samples at each tenth of the run (the peak is the kernel's own).
    let sampler = {
        let (done, stop) = (done.clone(), stop.clone());
        thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = total / 10;
            while !stop.load(Ordering::Relaxed) {
                let rss = classify_tests::rss_kib(pid);
                if done.load(Ordering::Relaxed) >= next {
                    samples.push((next, rss));
                    next += total / 10;
                }
                thread::sleep(Duration::from_millis(200));
            }
            samples
        })
    };
    let started = Instant::now();
    let port = nginx.port;
    // Four clients: enough to churn connections, without starving the agent of
    // CPU on a two-core machine (loss would still be counted, see below).
    let workers = 4;
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (done, failed) = (done.clone(), failed.clone());
            thread::spawn(move || {
                // Spread ephemeral ports over several loopback addresses.
                let source = Ipv4Addr::new(127, 0, 0, 2 + w as u8);
                for _ in 0..total / workers {
                    match one_shot(source, port, "/status/200") {
                        Ok(200) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    // Start-up included: what the agent promises is its whole footprint.
    let peak = classify_tests::peak_rss_kib(pid);
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let summary = out
        .stderr
        .lines()
        .find(|l| l.contains("stopped after"))
        .expect("final line")
        .to_owned();
    eprintln!(
        "{total} connections in {took:.1?} ({:.0}/s); classify RSS peak {peak} KiB; samples {samples:?}; {summary}",
        total as f64 / took.as_secs_f64()
    );
    let sent = (total / workers) * workers;
    let failed = failed.load(Ordering::Relaxed);
    assert!(failed * 1000 <= sent, "{failed} of {sent} requests failed");
    assert!(
        peak < RSS_BOUND_KIB,
        "classify's RSS peaked at {peak} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    // Flat: the last sample within 8 MiB of the one at half the run. The
    // tables and the record pools reach their caps in the first part, and a
    // drain delayed by a busy machine can grow them once more (a step of 9 MiB
    // between 300,000 and 500,000 connections in one clean-clone run, flat
    // after); a leak of 16 bytes per connection still fails here.
    if samples.len() >= 9 {
        let (early, late) = (samples[4].1, samples[samples.len() - 1].1);
        assert!(
            late <= early + 8 * 1024,
            "RSS grew from {early} to {late} KiB: {samples:?}"
        );
    }
    let exchanges: usize = summary
        .split("after")
        .nth(1)
        .and_then(|s| s.split(": ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("exchange count");
    assert!(summary.contains(" 0 lost"), "{summary}");
    assert_eq!(exchanges, sent - failed, "{summary}");
}
