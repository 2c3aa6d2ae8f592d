//! Records the engine's replay fixtures from real nginx (`cargo xtask fixtures`):
//! for each scenario, the decoded event stream (`--record`) and nginx's access
//! log, into `tests/fixtures/`. The engine's replay tests (classifier-user
//! `tests/replay.rs`) check that replaying them gives records that agree with the
//! access log, and equal the blessed records.
use std::{
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use classify_tests::{
    classify,
    client::{self, Conn},
    free_port,
    nginx::{Config, Nginx},
    upstream::Upstream,
    workspace_root,
};

use super::support::require_root;

fn record(
    name: &str,
    config: impl FnOnce(&Upstream) -> Config,
    traffic: impl FnOnce(u16) -> usize,
) {
    require_root();
    let dir = workspace_root().join("tests/fixtures");
    std::fs::create_dir_all(&dir).expect("fixtures dir");
    let upstream = Upstream::start();
    let nginx = Nginx::start(&config(&upstream));
    let events = dir.join(format!("{name}.events.jsonl"));
    let running = classify::start(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--record",
        events.to_str().unwrap(),
    ]);
    let n = traffic(nginx.port);
    let access = nginx.wait_access_log(n, Duration::from_secs(10));
    assert_eq!(access.len(), n, "access log incomplete");
    thread::sleep(Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<String> = access
        .iter()
        .map(|a| {
            serde_json::to_string(&serde_json::json!({
                "remote_port": a.remote_port, "method": a.method, "uri": a.uri, "status": a.status,
                "upstream_addr": a.upstream_addr, "upstream_status": a.upstream_status,
                "connection": a.connection, "pid": a.pid,
            }))
            .unwrap()
        })
        .collect();
    std::fs::write(
        dir.join(format!("{name}.access.jsonl")),
        lines.join("\n") + "\n",
    )
    .expect("write access log");
    eprintln!("recorded {} ({} exchanges)", events.display(), n);
}

#[test]
#[ignore = "records fixtures: cargo xtask fixtures"]
fn statuses_and_keepalive() {
    record(
        "statuses_and_keepalive",
        |up| {
            Config::proxy(
                &[up.addr().to_string()],
                Some(8),
                "    location = /local503 { return 503; }\n",
            )
        },
        |port| {
            let paths = [
                "/status/200",
                "/status/404",
                "/status/502",
                "/status/503",
                "/local503",
            ];
            let mut n = 0;
            for p in paths {
                let _ = client::get(port, p);
                n += 1;
            }
            for c in 0..3 {
                let mut conn = Conn::connect(port).expect("connect");
                for i in 0..4 {
                    let _ = conn.request("GET", paths[(c + i) % paths.len()]);
                    n += 1;
                }
            }
            n
        },
    );
}

#[test]
#[ignore = "records fixtures: cargo xtask fixtures"]
fn concurrent_identical() {
    record(
        "concurrent_identical",
        |up| Config::proxy(&[up.addr().to_string()], Some(8), ""),
        |port| {
            let n = 48;
            let barrier = Arc::new(Barrier::new(n));
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let b = barrier.clone();
                    thread::spawn(move || {
                        let mut c = Conn::connect(port).expect("connect");
                        b.wait();
                        let _ = c.request("GET", "/same");
                    })
                })
                .collect();
            hs.into_iter().for_each(|h| h.join().unwrap());
            n
        },
    );
}

#[test]
#[ignore = "records fixtures: cargo xtask fixtures"]
fn refused_then_retried() {
    let closed = free_port();
    record(
        "refused_then_retried",
        move |up| {
            Config::proxy(
                &[format!("127.0.0.1:{closed}"), up.addr().to_string()],
                None,
                "",
            )
        },
        |port| {
            for _ in 0..6 {
                let _ = client::get(port, "/status/200");
            }
            6
        },
    );
}

/// 24 connections each pipelining 12 requests at once: nginx runs each next
/// request from a posted event, after other connections (the engine's
/// reattribution at the client response).
#[test]
#[ignore = "records fixtures: cargo xtask fixtures"]
fn pipelined_on_many_connections() {
    record(
        "pipelined_on_many_connections",
        |up| Config::proxy(&[up.addr().to_string()], Some(8), ""),
        |port| {
            let (clients, depth) = (24usize, 12usize);
            client::pipeline_many(port, clients, depth);
            clients * depth
        },
    );
}
