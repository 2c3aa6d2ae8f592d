//! Input that is not what it should be never crashes the agent and never yields a
//! wrong confident verdict: binary garbage, first lines split over many reads,
//! 64 KiB headers, pipelined requests, and a protocol that is not HTTP at all on a
//! watched socket (nginx's `stream` proxy).
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    thread,
    time::Duration,
};

use classify_tests::{
    classify,
    client::{self, Conn},
    nginx::{Config, Nginx},
    upstream::Upstream,
};

use super::support::{
    assert_matches_access_log, assert_schema, require_root, status_target_complete, stop_after_log,
};
use serde_json::Value;

fn lab(extra_http: &str) -> (Upstream, Nginx, classify::Running) {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(
        &[upstream.addr().to_string()],
        Some(8),
        extra_http,
    ));
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    (upstream, nginx, running)
}

fn read_all(c: &Conn) -> Vec<u8> {
    let mut s = c.stream().try_clone().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn binary_garbage_from_a_client_is_nginx_s_400() {
    let (_up, nginx, running) = lab("");
    let c = Conn::connect(nginx.port).unwrap();
    let mut s = c.stream().try_clone().unwrap();
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.write_all(&garbage).unwrap();
    s.write_all(b"\r\n\r\n").unwrap();
    let got = read_all(&c);
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // nginx answers a bad request with a lingering close and logs it only when
    // that ends: close our side rather than wait out `lingering_timeout` (5 s).
    drop(s);
    drop(c);
    let (out, access) = stop_after_log(&nginx, running, 1);
    assert_schema(&out.records);
    assert_matches_access_log(&out.exchanges(), &access);
    let r = out.exchanges()[0];
    assert_eq!(r["verdict"], "client_error");
    assert_eq!(r["response"]["from"], "proxy");
    assert!(r["request"].is_null(), "{r}");
}

#[test]
fn a_request_line_split_over_many_reads_is_joined() {
    let (_up, nginx, running) = lab("");
    let c = Conn::connect(nginx.port).unwrap();
    let mut s = c.stream().try_clone().unwrap();
    s.set_nodelay(true).unwrap();
    for b in b"GET /status/201 HTTP/1.1\r\n" {
        s.write_all(&[*b]).unwrap();
        thread::sleep(Duration::from_millis(3));
    }
    s.write_all(b"Host: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_all(&c);
    assert!(
        got.starts_with(b"HTTP/1.1 201"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let (out, access) = stop_after_log(&nginx, running, 1);
    assert_matches_access_log(&out.exchanges(), &access);
    assert_eq!(out.exchanges()[0]["request"]["target"], "/status/201");
    assert_eq!(out.exchanges()[0]["complete"], true);
}

/// `GET /status/200` with a 64 KiB header on a connection of its own; the status.
fn big_header_request(port: u16) -> u16 {
    let big = "x".repeat(64 * 1024);
    let mut c = Conn::connect(port).unwrap();
    c.send(
        "GET",
        "/status/200",
        &[("X-Big", &big), ("Connection", "close")],
        b"",
    )
    .unwrap();
    c.read_response().unwrap().status
}

#[test]
fn sixty_four_kib_headers_are_refused_or_proxied_as_configured() {
    // Default header buffers refuse them (400); a location with big buffers proxies.
    let (_up, nginx, running) = lab("");
    // The connection is closed on return: nginx logs a refused request only when
    // its lingering close ends, which would otherwise wait for
    // `lingering_timeout` (5 s).
    assert_eq!(big_header_request(nginx.port), 400);
    let (out, access) = stop_after_log(&nginx, running, 1);
    assert_matches_access_log(&out.exchanges(), &access);
    assert_eq!(out.exchanges()[0]["verdict"], "client_error");

    require_root();
    let upstream = Upstream::start();
    let mut config = Config::proxy(&[upstream.addr().to_string()], Some(8), "");
    config.http = config.http.replace(
        "  server {",
        "  large_client_header_buffers 4 128k;\n  server {",
    );
    let nginx = Nginx::start(&config);
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    assert_eq!(big_header_request(nginx.port), 200);
    let (out, access) = stop_after_log(&nginx, running, 1);
    assert_matches_access_log(&out.exchanges(), &access);
    assert_eq!(out.exchanges()[0]["verdict"], "ok");
    assert!(
        !out.records
            .iter()
            .any(|r| r.to_string().contains("xxxxxxxx")),
        "header bytes reached the output"
    );
}

#[test]
fn pipelined_requests_each_get_their_record() {
    let (_up, nginx, running) = lab("");
    let mut c = Conn::connect(nginx.port).unwrap();
    let mut s = c.stream().try_clone().unwrap();
    // Three requests in one write: nginx reads them in one receive.
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/404 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/503 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| c.read_response().unwrap().status).collect();
    assert_eq!(statuses, [200, 404, 503]);
    drop(c);
    let (out, access) = stop_after_log(&nginx, running, 3);
    assert_schema(&out.records);
    assert_matches_access_log(&out.exchanges(), &access);
    // The first request line was on the wire; the others came in the same receive,
    // so their lines come from nginx's requests to the upstream: not complete.
    let complete: Vec<bool> = out
        .exchanges()
        .iter()
        .map(|r| r["complete"] == true)
        .collect();
    assert_eq!(
        complete.iter().filter(|c| **c).count(),
        1,
        "{:?}",
        out.exchanges()
    );
}

/// Many connections pipelining at once: nginx runs each connection's next
/// request from a posted event, after the other ready connections, so the
/// thread's last touch before that request goes upstream is another
/// connection's socket. Every request still gets its own record, with the
/// upstream socket that served it (checked against the upstream's own log).
#[test]
fn pipelined_requests_on_many_connections_keep_their_own_upstreams() {
    let (up, nginx, running) = lab("");
    let (clients, depth) = (24usize, 12usize);
    for statuses in client::pipeline_many(nginx.port, clients, depth) {
        assert_eq!(statuses, vec![200; depth]);
    }
    let (out, access) = stop_after_log(&nginx, running, clients * depth);
    assert_schema(&out.records);
    assert_matches_access_log(&out.exchanges(), &access);
    let log = up.log();
    for r in out.exchanges() {
        let target = r["request"]["target"].as_str().unwrap();
        let ups = r["upstreams"].as_array().unwrap();
        assert_eq!(ups.len(), 1, "{r:#}");
        let local = ups[0]["local_port"].as_u64().unwrap() as u16;
        assert!(
            log.iter()
                .any(|e| e.peer_port == local && e.target == target),
            "the upstream never saw {target} from port {local}: {r:#}"
        );
    }
}

#[test]
fn a_protocol_that_is_not_http_gets_no_verdict() {
    require_root();
    // A TCP echo service behind nginx's stream proxy.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let upstream = Upstream::start();
    let mut config = Config::proxy(&[upstream.addr().to_string()], None, "");
    config.main = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nstream {{ server {{ listen 127.0.0.1:{{port2}}; proxy_pass {echo_addr}; }} }}"
    );
    let nginx = Nginx::start(&config);
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    for i in 0..5u8 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", nginx.port2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let msg = [0x16, 0x03, 0x01, i, 0xff, 0x00, 0x42];
        s.write_all(&msg).unwrap();
        let mut back = [0u8; 7];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    // And HTTP on the same nginx still works.
    let mut c = Conn::connect(nginx.port).unwrap();
    assert_eq!(c.request("GET", "/status/200").unwrap().status, 200);
    drop(c);
    let access = nginx.wait_access_log(1, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(500));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_schema(&out.records);
    assert_matches_access_log(&out.exchanges(), &access);
    let stats = out.final_stats().unwrap();
    assert!(
        stats["engine"]["non_http_conversations"].as_u64().unwrap() >= 5,
        "{stats}"
    );
}

/// A pipelined request that nginx answers itself (`return 503`) between two it
/// proxies: its line came in the first request's receive and no upstream request
/// shows it, yet it is an exchange like the others.
#[test]
fn a_pipelined_request_the_proxy_answers_itself_gets_its_record() {
    let (_up, nginx, running) = lab("    location /own { return 503; }\n");
    let mut c = Conn::connect(nginx.port).unwrap();
    let port = c.local_port();
    let mut s = c.stream().try_clone().unwrap();
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\nGET /own HTTP/1.1\r\nHost: t\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| c.read_response().unwrap().status).collect();
    assert_eq!(statuses, [200, 503, 201]);
    drop(c);
    let (out, access) = stop_after_log(&nginx, running, 3);
    assert_schema(&out.records);
    assert_eq!(
        access.iter().map(|a| a.status()).collect::<Vec<_>>(),
        [200, 503, 201]
    );
    let mine: Vec<&Value> = out
        .exchanges()
        .into_iter()
        .filter(|r| r["client"]["port"] == port)
        .collect();
    let got: Vec<u64> = mine
        .iter()
        .map(|r| r["response"]["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(got, [200, 503, 201], "{mine:#?}");
    let own = mine[1];
    assert_eq!(own["response"]["from"], "proxy", "{own:#}");
    assert_eq!(own["verdict"], "proxy_error", "{own:#}");
    assert!(own["upstreams"].as_array().unwrap().is_empty(), "{own:#}");
    assert_eq!(
        own["complete"], false,
        "its request line was never seen: {own:#}"
    );
}

/// A request that comes after a body nginx read only to throw away. nginx may
/// answer before it has read a request's body (`return`, `deny`, a limit); it
/// then reads the rest to discard it, and the client's next request on the
/// connection arrives in the same direction, in a receive of its own. That
/// request keeps its line and its record is whole; the early answer is its own
/// exchange.
#[test]
fn a_request_after_a_body_nginx_discarded_keeps_its_line() {
    let (_up, nginx, running) = lab("    location /early { return 403; }\n");
    let mut c = Conn::connect(nginx.port).unwrap();
    let port = c.local_port();
    let mut s = c.stream().try_clone().unwrap();
    let body = vec![b'x'; 200_000];
    s.write_all(
        format!(
            "POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // The answer comes before the body is sent.
    assert_eq!(c.read_response().unwrap().status, 403);
    for piece in body.chunks(16_384) {
        s.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_millis(100));
    let after = c.request("GET", "/status/201").unwrap();
    assert_eq!(after.status, 201);
    let again = c.request("GET", "/status/202").unwrap();
    assert_eq!(again.status, 202);
    drop(c);
    let (out, access) = stop_after_log(&nginx, running, 3);
    assert_schema(&out.records);
    assert_matches_access_log(&out.exchanges(), &access);
    let mine: Vec<&Value> = out
        .exchanges()
        .into_iter()
        .filter(|r| r["client"]["port"] == port)
        .collect();
    assert_eq!(
        status_target_complete(&mine),
        [
            (403, "/early", true),
            (201, "/status/201", true),
            (202, "/status/202", true)
        ],
        "{mine:#?}"
    );
    assert_eq!(mine[0]["verdict"], "client_error", "{:#}", mine[0]);
    assert_eq!(mine[1]["verdict"], "ok", "{:#}", mine[1]);
}

/// nginx's `client_header_timeout`: a client that sends a request line and never
/// the end of its headers gets no response, and nginx logs 408. That is the
/// client's doing, not the proxy's.
#[test]
fn a_request_that_never_comes_whole_is_the_clients_timeout() {
    let (_up, nginx, running) = lab("    client_header_timeout 1s;\n");
    let c = Conn::connect(nginx.port).unwrap();
    let port = c.local_port();
    let mut s = c.stream().try_clone().unwrap();
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let got = read_all(&c);
    assert!(
        got.is_empty(),
        "nginx answered: {}",
        String::from_utf8_lossy(&got)
    );
    drop(c);
    let (out, access) = stop_after_log(&nginx, running, 1);
    assert_schema(&out.records);
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0].status(), 408, "{access:?}");
    let r = out
        .exchanges()
        .into_iter()
        .find(|r| r["client"]["port"] == port)
        .expect("a record for the client");
    assert_eq!(r["verdict"], "client_error", "{r:#}");
    assert_eq!(r["origin"], "client", "{r:#}");
    assert!(r["response"]["status"].is_null(), "{r:#}");
    assert!(r["duration_us"].as_u64().unwrap() >= 900_000, "{r:#}");
    assert!(r["hint"].as_str().unwrap().contains("408"), "{r:#}");
}
