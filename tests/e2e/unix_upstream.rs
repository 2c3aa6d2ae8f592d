//! An upstream behind a unix stream socket (`proxy_pass http://unix:/path`, as
//! gunicorn, puma and PHP-FPM are often run). The kernel shows no TCP state for
//! it; the probes track the proxy's end of each connection and name it by the
//! server's path. Every record must agree with the access log and carry the
//! verdict the fault calls for: before, every one of these exchanges had no
//! upstream, and an application's 500 read "the proxy produced 500 itself".
use std::{
    io::{Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    thread,
    time::Duration,
};

use classify_tests::{
    classify, client,
    nginx::{Config, Nginx},
};

use super::support::{
    assert_matches_access_log, assert_schema, expected_verdict, require_root, stop_after_log,
};

/// Path and the verdict it must get.
const CASES: [(&str, &str); 8] = [
    ("/status/200", "ok"),
    ("/status/404", "client_error"),
    ("/status/500", "upstream_error"),
    ("/status/502", "upstream_error"),
    ("/fault/close", "upstream_closed"),
    ("/fault/reset", "upstream_reset"),
    ("/fault/silent", "upstream_timeout"),
    ("/status/201", "ok"),
];

/// A small HTTP/1.x server on a unix socket: `/status/{code}` answers `code`,
/// `/fault/close` closes after reading the request, `/fault/reset` closes
/// without reading it (the proxy's read fails with ECONNRESET),
/// `/fault/silent` never answers. HTTP/1.1 connections are kept alive.
fn serve_unix(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind the unix upstream");
    thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || answer(conn));
        }
    });
}

fn answer(mut conn: UnixStream) {
    loop {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (target, keep) = loop {
            // Peek at the request line first: `/fault/reset` leaves it unread.
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                break (target, head.contains("HTTP/1.1"));
            }
            let mut peek = [0u8; 64];
            // SAFETY: recv with MSG_PEEK into a buffer we own, of its length.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&conn),
                    peek.as_mut_ptr().cast(),
                    peek.len(),
                    libc::MSG_PEEK,
                )
            };
            if n > 0
                && buf.is_empty()
                && peek[..n as usize].windows(12).any(|w| w == b"/fault/reset")
            {
                return; // closed with the request unread
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let code = match target.as_str() {
            "/fault/close" => return,
            "/fault/silent" => {
                thread::sleep(Duration::from_secs(3));
                return;
            }
            t => t
                .strip_prefix("/status/")
                .and_then(|c| c.parse().ok())
                .unwrap_or(200u16),
        };
        let body = format!("status {code}\n");
        let reply = format!(
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if keep { "keep-alive" } else { "close" }
        );
        if conn.write_all(reply.as_bytes()).is_err() || !keep {
            return;
        }
    }
}

#[test]
fn unix_socket_upstreams_agree_with_the_access_log() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("app.sock");
    serve_unix(&socket);
    // A socket file nobody listens on (connect: ECONNREFUSED), and a path with
    // no socket file (ENOENT).
    let bound_only = dir.path().join("bound.sock");
    let _bound = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .and_then(|s| s.bind(&socket2::SockAddr::unix(&bound_only)?).map(|()| s))
        .expect("bind a socket that never listens");
    let (bound_only, missing) = (bound_only.display(), dir.path().join("missing.sock"));
    let missing = missing.display();
    let socket = socket.display();
    // nginx's default (HTTP/1.0, a connection per request), and a kept-alive pool.
    let http = format!(
        r#"  upstream pool {{ server unix:{socket}; keepalive 8; }}
  upstream second_serves {{ server unix:{missing} max_fails=0; server unix:{socket} max_fails=0; }}
  server {{
    listen 127.0.0.1:{{port}};
    proxy_read_timeout 1s;
    location / {{ proxy_pass http://unix:{socket}; }}
    location /refused/ {{ proxy_pass http://unix:{bound_only}:/; }}
    location /missing/ {{ proxy_pass http://unix:{missing}:/; }}
    location /retry/ {{ proxy_pass http://second_serves/; }}
    location /pool/ {{
      proxy_pass http://pool/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"#
    );
    let nginx = Nginx::start(&Config {
        http,
        ..Config::proxy(&[], None, "")
    });
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let mut sent = 0;
    for round in 0..2 {
        for prefix in ["", "/pool"] {
            for (path, _) in CASES {
                // The slow case once per location: it takes a second.
                if round == 1 && path == "/fault/silent" {
                    continue;
                }
                let _ = client::get(nginx.port, &format!("{prefix}{path}"));
                sent += 1;
            }
        }
    }
    // Connects that fail at once, and a retry on the second server (nginx
    // round-robins: the first request may go to either).
    for path in [
        "/refused/x",
        "/missing/x",
        "/retry/status/200",
        "/retry/status/200",
    ] {
        let _ = client::get(nginx.port, path);
        sent += 1;
    }
    let (out, access) = stop_after_log(&nginx, running, sent);
    assert_eq!(access.len(), sent, "{access:?}");
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    for r in &exchanges {
        let target = r["request"]["target"].as_str().unwrap_or("");
        let outcomes: Vec<&str> = r["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .map(|u| u["outcome"].as_str().unwrap_or(""))
            .collect();
        match target {
            "/refused/x" | "/missing/x" => {
                assert_eq!(r["verdict"], "upstream_refused", "{r}");
                assert_eq!(outcomes, ["refused"], "{r}");
                continue;
            }
            "/retry/status/200" => {
                assert_eq!(r["verdict"], "ok", "{r}");
                assert!(
                    outcomes == ["response"] || outcomes == ["refused", "response"],
                    "{r}"
                );
                continue;
            }
            _ => {}
        }
        expected_verdict(r, &CASES, &["/pool"]);
        let upstreams = r["upstreams"].as_array().expect("upstreams");
        assert!(
            upstreams
                .iter()
                .all(|u| u["address"] == format!("unix:{socket}")),
            "{r}"
        );
    }
}
