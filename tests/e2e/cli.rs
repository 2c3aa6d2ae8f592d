//! Preconditions fail fast with one clear sentence.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use classify_tests::classify::binary;

fn run(cmd: &mut Command) -> (bool, String, Duration) {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("run classify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn fails_fast_without_root() {
    super::support::require_root();
    // Drop to an unprivileged user with no capabilities.
    let (ok, stderr, took) = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(binary())
        .args(["--pid", "1"]));
    assert!(!ok, "classify succeeded without privileges");
    assert!(stderr.contains("needs root"), "unclear message: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one sentence expected: {stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn fails_fast_for_a_process_that_does_not_exist() {
    super::support::require_root();
    let (ok, stderr, took) = run(Command::new(binary()).args(["--pid", "4000000"]));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!ok);
    assert!(
        stderr.contains("no process with PID 4000000"),
        "unclear message: {stderr}"
    );
}

#[test]
fn asks_for_a_target() {
    let (ok, stderr, _) = run(&mut Command::new(binary()));
    assert!(!ok);
    assert!(stderr.contains("--pid"), "unclear message: {stderr}");
}
