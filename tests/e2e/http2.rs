//! HTTP/2 clients: their streams interleave on one connection in HPACK-coded
//! frames, which classify does not decode yet. It must say so (counted in the
//! stats record) and write no record for them, rather than records that invent
//! a verdict; HTTP/1.1 clients of the same nginx are classified as always.
use std::process::{Command, Stdio};

use classify_tests::{
    classify, client, free_port,
    nginx::{Config, Nginx},
    upstream::Upstream,
};

use super::support::{assert_matches_access_log, assert_schema, require_root, stop_after_log};

#[test]
fn http2_clients_get_no_invented_records() {
    require_root();
    let upstream = Upstream::start();
    let h2_port = free_port();
    let server = format!("    listen 127.0.0.1:{h2_port} http2;\n");
    let nginx = Nginx::start(&Config::front(upstream.addr(), "", &server));
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);

    // HTTP/2 without TLS (prior knowledge): 2 connections, 4 streams at a time,
    // some answered 500 by the upstream.
    let h2 = 40;
    for path in ["/status/200", "/status/500"] {
        let status = Command::new("h2load")
            .args(["-n", &(h2 / 2).to_string(), "-c", "2", "-m", "4"])
            .arg(format!("http://127.0.0.1:{h2_port}{path}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run h2load (run `cargo xtask setup`)");
        assert!(status.success());
    }
    // HTTP/1.1 clients of the same server meanwhile.
    for path in ["/h1/status/200", "/status/503", "/h1/x"] {
        client::get(nginx.port, path).expect("request");
    }

    let (out, access) = stop_after_log(&nginx, running, h2 + 3);
    assert_schema(&out.records);
    let h1: Vec<_> = access
        .iter()
        .filter(|a| a.uri.starts_with("/h1/") || a.uri == "/status/503")
        .cloned()
        .collect();
    assert_eq!(h1.len(), 3);
    assert_eq!(access.len(), h2 + 3);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &h1);
    let stats = out.final_stats().expect("a final stats record");
    assert_eq!(stats["engine"]["http2_connections"], 4, "{stats}");
    let counted = stats["engine"]["http2_exchanges"].as_u64().unwrap_or(0);
    assert!(counted > 0 && counted <= h2 as u64, "{stats}");
    // Whoever reads stderr is told too.
    assert!(
        out.stderr.contains("4 HTTP/2 client connections"),
        "{}",
        out.stderr
    );
}
