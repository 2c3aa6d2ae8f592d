//! `cargo xtask demo`: a local nginx (2 workers) in front of the test upstream,
//! classify attached in text mode, and a mix of traffic, then the summary.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use classify_tests::{
    client::{self, Conn},
    free_port,
    nginx::{Config, Nginx},
    upstream::Upstream,
};

pub fn run(seconds: u64) -> Result<()> {
    let upstream = Upstream::start();
    let closed = free_port();
    let extra = format!(
        "    location /gone/ {{ proxy_pass http://127.0.0.1:{closed}; }}\n    location = /maintenance {{ return 503; }}\n"
    );
    let nginx = Nginx::start(&Config::proxy(
        &[upstream.addr().to_string()],
        Some(16),
        &extra,
    ));
    eprintln!(
        "demo: nginx (master {}) on 127.0.0.1:{} → upstream {}",
        nginx.master_pid(),
        nginx.port,
        upstream.addr()
    );
    let bin = crate::workspace_root().join("target/debug/classify");
    let mut child = Command::new(&bin)
        .args(["--pid", &nginx.master_pid().to_string(), "--format", "text"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let stderr = child.stderr.take().context("stderr")?;
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.contains("ready in") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .context("classify did not become ready")?;

    let port = nginx.port;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut round = 0u64;
    while Instant::now() < deadline {
        let path = match round % 10 {
            0..=3 => "/status/200".to_owned(),
            4 => "/status/404".to_owned(),
            5 => "/status/503".to_owned(),
            6 => "/gone/x".to_owned(),
            7 => "/maintenance".to_owned(),
            8 => format!("/slow/{}", 20 + round % 50),
            _ => "/status/502".to_owned(),
        };
        let _ = client::get(port, &path);
        if round.is_multiple_of(7) {
            // A kept-alive client with a few requests.
            if let Ok(mut c) = Conn::connect(port) {
                for _ in 0..3 {
                    let _ = c.request("GET", "/status/200");
                }
            }
        }
        round += 1;
        thread::sleep(Duration::from_millis(150));
    }
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "classify exited with {status}");
    Ok(())
}
