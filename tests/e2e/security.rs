//! Secrets in headers and bodies never reach the output or the recording.
use std::{io::Write as _, time::Duration};

use classify_tests::{
    classify,
    client::Conn,
    nginx::{Config, Nginx},
    upstream::Upstream,
};

use super::support::require_root;

const SECRETS: [&str; 4] = [
    "Bearer-s3cr3t-token",
    "session=c00kie-s3cr3t",
    "body-s3cr3t-value",
    "query-s3cr3t",
];

#[test]
fn headers_bodies_and_queries_stay_out_of_records_and_recordings() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], Some(4), ""));
    let dir = tempfile::tempdir().expect("temp dir");
    let recording = dir.path().join("rec.jsonl");
    let running = classify::start(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--record",
        recording.to_str().unwrap(),
    ]);

    let headers = [
        ("Authorization", "Bearer-s3cr3t-token"),
        ("Cookie", "session=c00kie-s3cr3t"),
    ];
    // Head and body in one write.
    let mut c = Conn::connect(nginx.port).expect("connect");
    c.send(
        "POST",
        "/status/200?token=query-s3cr3t",
        &headers,
        b"body-s3cr3t-value\r\nmore",
    )
    .expect("send");
    assert_eq!(c.read_response().expect("response").status, 200);
    // A body sent after `100 Continue`: the proxy wrote in between, so the body's
    // first bytes start a message of their own and reach the probe's capture.
    let mut c = Conn::connect(nginx.port).expect("connect");
    let body = b"body-s3cr3t-value\r\n";
    let head = format!(
        "POST /status/201 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer-s3cr3t-token\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = c.stream().try_clone().expect("clone");
    s.write_all(head.as_bytes()).expect("head");
    assert_eq!(c.read_response().expect("100 Continue").status, 100);
    s.write_all(body).expect("body");
    assert_eq!(c.read_response().expect("response").status, 201);

    nginx.wait_access_log(2, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.exchanges().len(), 2, "{:?}", out.records);
    let stdout: String = out.records.iter().map(|r| r.to_string()).collect();
    let recorded = std::fs::read_to_string(&recording).expect("recording");
    for secret in SECRETS {
        assert!(!stdout.contains(secret), "{secret} reached the output");
        assert!(!recorded.contains(secret), "{secret} reached the recording");
    }
    assert!(
        stdout.contains("/status/200?…"),
        "query string not elided: {stdout}"
    );
    // The body after 100 Continue did reach the decoder, which kept only its shape.
    assert!(
        recorded.contains(r#""type":"other""#),
        "the 100-continue body never started a message"
    );
    // Both files classify creates are private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&recording)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
