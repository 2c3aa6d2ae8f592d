//! Failures after nginx has sent the response header: the status line went out
//! (nginx logs it, 200), then the body was cut — by the client resetting or
//! leaving, or by the upstream going silent. The status alone says "fine"; the
//! verdict must not. Controls read the whole body and must stay `ok`, however the
//! client closes afterwards. Ground truth: nginx's access and error logs, and the
//! upstream's own account of what it finished sending.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use classify_tests::{
    classify,
    client::Conn,
    nginx::{AccessEntry, Config, Nginx},
    upstream::{set_linger_zero, Upstream},
    wait_for,
};
use serde_json::Value;

use super::support::{
    assert_matches_access_log, assert_schema, require_root, start_classify, stop_after_log,
};

/// `/` proxies with nginx's defaults (proxy_buffering on); `/unbuffered/` streams
/// (proxy_buffering off); `/timeout/` and `/timeout-unbuffered/` give up on a
/// silent upstream after 1 s, buffered and not; `/slowread/` and
/// `/slowread-unbuffered/` give up on a client that stops reading after 1 s;
/// `/close/` asks without keep-alive (nginx's own default), so the upstream
/// closes its connection after every reply.
const LOCATIONS: &str = "    location /unbuffered/ { proxy_pass http://up/; proxy_buffering off; }
    location /slowread/ { proxy_pass http://up/; send_timeout 1s; }
    location /slowread-unbuffered/ { proxy_pass http://up/; send_timeout 1s; proxy_buffering off; }
    location /timeout/ { proxy_pass http://up/; proxy_read_timeout 500ms; }
    location /timeout-unbuffered/ { proxy_pass http://up/; proxy_read_timeout 500ms; proxy_buffering off; }
    location /close/ { proxy_pass http://up/; proxy_http_version 1.0; proxy_set_header Connection close; }
";

/// nginx in front of the test upstream, classify attached.
struct Lab {
    upstream: Upstream,
    nginx: Nginx,
    running: classify::Running,
}

/// What a lab run produced.
struct Run {
    exchanges: Vec<Value>,
    access: Vec<AccessEntry>,
    error_log: String,
    upstream: Upstream,
}

impl Lab {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A lab whose classify gets `extra` flags too.
    fn start_with(extra: &[&str]) -> Self {
        require_root();
        let upstream = Upstream::start();
        let nginx = Nginx::start(&Config::front(upstream.addr(), "", LOCATIONS));
        let running = start_classify(nginx.master_pid(), extra);
        Self {
            upstream,
            nginx,
            running,
        }
    }

    fn port(&self) -> u16 {
        self.nginx.port
    }

    /// Waits for `n` access-log lines, stops classify, and checks the records
    /// against the schema and the access log.
    fn finish(self, n: usize) -> Run {
        let (out, access) = stop_after_log(&self.nginx, self.running, n);
        assert_eq!(access.len(), n, "nginx logged {access:?}, wanted {n} lines");
        assert_schema(&out.records);
        let exchanges: Vec<Value> = out.exchanges().into_iter().cloned().collect();
        let refs: Vec<&Value> = exchanges.iter().collect();
        assert_matches_access_log(&refs, &access);
        Run {
            exchanges,
            access,
            error_log: self.nginx.error_log(),
            upstream: self.upstream,
        }
    }
}

impl Run {
    /// The records of client connection `port`, in the order their requests came.
    fn records(&self, port: u16) -> Vec<&Value> {
        let mut rs: Vec<&Value> = self
            .exchanges
            .iter()
            .filter(|r| r["client"]["port"].as_u64() == Some(u64::from(port)))
            .collect();
        rs.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        rs
    }

    /// The one record of client connection `port`.
    fn record(&self, port: u16) -> &Value {
        let rs = self.records(port);
        assert_eq!(rs.len(), 1, "client port {port}: {rs:#?}");
        rs[0]
    }

    /// nginx logged `status` for every request of client connection `port`.
    fn assert_logged(&self, port: u16, status: &str) {
        let lines: Vec<&AccessEntry> = self
            .access
            .iter()
            .filter(|a| a.remote_port() == port)
            .collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|a| a.status == status),
            "nginx should have logged {status} for client port {port}: {:?}",
            self.access
        );
    }

    fn assert_error_log(&self, needle: &str) {
        assert!(
            self.error_log.contains(needle),
            "nginx's error log lacks {needle:?}:\n{}",
            self.error_log
        );
    }

    /// `r` is a forwarded 200 with one attempt, whose verdict and attempt
    /// outcome are `want` (checked together, so a failure shows both, with what
    /// nginx's error log said).
    fn assert_midbody(&self, r: &Value, want: (&str, &str)) {
        assert_eq!(r["response"]["status"], 200, "{r:#}");
        assert_eq!(r["response"]["from"], "upstream", "{r:#}");
        let attempts = r["upstreams"].as_array().expect("upstreams");
        assert_eq!(attempts.len(), 1, "{r:#}");
        let got = (
            r["verdict"].as_str().unwrap_or("?"),
            attempts[0]["outcome"].as_str().unwrap_or("?"),
        );
        let said: Vec<&str> = self
            .error_log
            .lines()
            .filter(|l| {
                ["[info]", "[warn]", "[error]"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect();
        assert_eq!(
            got,
            want,
            "(verdict, attempt outcome): {r:#}\nnginx's error log:\n{}",
            said.join("\n")
        );
        assert!(
            r["hint"].as_str().is_some_and(|h| h.len() > 20) || want.0 == "ok",
            "{r:#}"
        );
        assert_eq!(r["complete"], true, "{r:#}");
    }

    /// Whether the upstream finished sending the response to `target`.
    fn upstream_sent(&self, target: &str) -> bool {
        self.upstream.sent().iter().any(|e| e.target == target)
    }
}

/// A connection to nginx; `rcvbuf` fixes the client's receive buffer (no
/// autotuning: a client that stops reading stops the transfer there).
fn connect(port: u16, rcvbuf: Option<usize>) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect to nginx");
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `GET path` and reads the response head. Returns the head and the body
/// bytes read with it.
fn get_head(s: &mut TcpStream, path: &str) -> (String, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = got.split_off(end + 4);
            let head = String::from_utf8_lossy(&got).into_owned();
            assert!(head.starts_with("HTTP/1.1 200 "), "{path}: {head}");
            return (head, body);
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("{path}: nginx closed before the response head"),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{path}: reading the response head: {e}"),
        }
    }
}

/// Whatever is readable right now, without waiting.
fn drain_now(s: &mut TcpStream, into: &mut Vec<u8>) {
    s.set_nonblocking(true).unwrap();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => panic!("nginx closed the stream early"),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
}

/// Reads until nginx closes the connection.
fn read_to_eof(s: &mut TcpStream, into: &mut Vec<u8>) {
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("waiting for nginx to close: {e}"),
        }
    }
}

/// The client takes the head and a little of a 20 MB body, then stops reading
/// (a small receive buffer: its window closes at once); nginx gives up after
/// `send_timeout 1s` and closes the connection.
fn client_stops_reading(prefix: &str, attempt: &str) {
    let lab = Lab::start();
    let mut s = connect(lab.port(), Some(4096));
    let client_port = s.local_addr().unwrap().port();
    let (_head, _body) = get_head(&mut s, &format!("{prefix}/big/20000000"));
    thread::sleep(Duration::from_millis(2500));
    // nginx has given up by now: what is left in the window, then its close.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(n @ 1..) = s.read(&mut chunk) {
        rest.extend_from_slice(&chunk[..n]);
    }
    assert!(rest.len() < 19_000_000, "the client got the whole body");
    drop(s);
    let run = lab.finish(1);
    run.assert_logged(client_port, "200");
    run.assert_error_log("client timed out");
    let r = run.record(client_port);
    run.assert_midbody(r, ("client_abort", attempt));
    let hint = r["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("stopped reading"), "{r:#}");
    assert!(r["duration_us"].as_u64().unwrap() >= 900_000, "{r:#}");
}

#[test]
fn a_client_that_stops_reading_until_the_send_timeout_buffered() {
    // nginx reads the whole reply into its buffers and temp file.
    client_stops_reading("/slowread", "response");
}

#[test]
fn a_client_that_stops_reading_until_the_send_timeout_unbuffered() {
    // nginx drops the upstream connection with the client's.
    client_stops_reading("/slowread-unbuffered", "aborted");
}

#[test]
fn client_reset_mid_body_of_a_complete_buffered_reply() {
    client_reset_mid_body_of_a_complete_reply("");
}

#[test]
fn client_reset_mid_body_of_a_reply_its_upstream_closed_after() {
    // The upstream closes once it has sent the reply: its FIN is the reply's
    // end, not a cut, and the response is still the client's to leave.
    client_reset_mid_body_of_a_complete_reply("/close");
}

/// nginx reads the whole 16 MB reply into its buffers and temp file while the
/// client, having taken 64 KiB, reads no more; then the client resets. The
/// upstream answered in full: the client cut the exchange.
fn client_reset_mid_body_of_a_complete_reply(prefix: &str) {
    let lab = Lab::start();
    let path = &format!("{prefix}/big/16000000");
    let sent_as = "/big/16000000";
    let mut s = connect(lab.port(), Some(128 * 1024));
    let client_port = s.local_addr().unwrap().port();
    let (head, mut body) = get_head(&mut s, path);
    assert!(head.contains("Content-Length: 16000000"), "{head}");
    let mut chunk = [0u8; 16384];
    while body.len() < 64 * 1024 {
        let n = s.read(&mut chunk).expect("read the body");
        assert!(n > 0, "nginx closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    thread::sleep(Duration::from_millis(300));
    // The upstream's last byte is with the kernel; nginx reads it from there.
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .upstream
            .sent()
            .iter()
            .any(|e| e.target == sent_as)
            .then_some(()))
        .is_some(),
        "the upstream did not finish sending {sent_as}"
    );
    thread::sleep(Duration::from_millis(200));
    set_linger_zero(&s);
    drop(s);

    let run = lab.finish(1);
    // The header had gone out: nginx logs the forwarded 200.
    run.assert_logged(client_port, "200");
    // The reply went to a temp file in full; nginx's send to the client failed.
    run.assert_error_log("an upstream response is buffered to a temporary file");
    run.assert_error_log("(104: Connection reset by peer) while sending to client");
    let r = run.record(client_port);
    assert_eq!(r["upstreams"][0]["status"], 200, "{r:#}");
    run.assert_midbody(r, ("client_reset", "response"));
}

/// Reads a slow unbuffered stream for about 500 ms, then closes right after a
/// chunk arrived with nothing left unread: a FIN, or an RST with `reset`.
/// Returns the client's port.
fn leave_stream(port: u16, path: &str, reset: bool) -> u16 {
    let mut s = connect(port, None);
    let client_port = s.local_addr().unwrap().port();
    let (head, mut body) = get_head(&mut s, path);
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let start = Instant::now();
    let mut chunk = [0u8; 16384];
    while start.elapsed() < Duration::from_millis(500) {
        let n = s.read(&mut chunk).expect("read the stream");
        assert!(n > 0, "nginx closed the stream early");
        body.extend_from_slice(&chunk[..n]);
    }
    // Just after a chunk: the next is ~100 ms away, and the receive buffer is
    // empty, so a plain close sends a FIN, not an RST.
    drain_now(&mut s, &mut body);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("chunk 00002"), "too little streamed: {text}");
    assert!(!text.contains("\r\n0\r\n\r\n"), "the stream ended: {text}");
    if reset {
        set_linger_zero(&s);
    }
    drop(s);
    client_port
}

fn client_leaves_an_unbuffered_stream(reset: bool, verdict: &str, extra: &[&str]) {
    let lab = Lab::start_with(extra);
    let path = "/unbuffered/stream/50/100";
    let client_port = leave_stream(lab.port(), path, reset);
    let run = lab.finish(1);
    run.assert_logged(client_port, "200");
    run.assert_error_log("client prematurely closed connection");
    // nginx saw a FIN, or an RST (reported with ECONNRESET).
    assert_eq!(
        run.error_log.contains("(104: Connection reset by peer)"),
        reset,
        "{}",
        run.error_log
    );
    // nginx dropped the attempt: the upstream never got to its last chunk.
    assert!(
        !run.upstream_sent("/stream/50/100"),
        "{:?}",
        run.upstream.sent()
    );
    run.assert_midbody(run.record(client_port), (verdict, "aborted"));
}

#[test]
fn client_fin_mid_body_of_an_unbuffered_stream_is_a_client_abort() {
    client_leaves_an_unbuffered_stream(false, "client_abort", &[]);
}

/// The mid-body rule reads the worker's own actions in order: the same with
/// socket I/O seen at syscall exits (kernels before 6.5).
#[test]
fn client_fin_mid_body_seen_at_syscall_exits_is_a_client_abort() {
    client_leaves_an_unbuffered_stream(false, "client_abort", &["--io-probes", "syscall"]);
}

#[test]
fn client_reset_mid_body_of_an_unbuffered_stream() {
    client_leaves_an_unbuffered_stream(true, "client_reset", &[]);
}

/// The upstream sends the head and 2,000 of 100,000 body bytes, then nothing;
/// nginx gives up after `proxy_read_timeout 500ms` and closes the client connection.
/// (Buffered, nginx holds the small head back with the body it has: the client
/// gets both only when nginx gives up.)
fn upstream_stalls_mid_body(prefix: &str, extra: &[&str]) {
    let lab = Lab::start_with(extra);
    let path = format!("{prefix}/stall/2000");
    let mut s = connect(lab.port(), None);
    let client_port = s.local_addr().unwrap().port();
    let start = Instant::now();
    let (head, mut body) = get_head(&mut s, &path);
    assert!(head.contains("Content-Length: 100000"), "{head}");
    read_to_eof(&mut s, &mut body);
    let waited = start.elapsed();
    assert!(body.len() <= 2000, "{} body bytes", body.len());
    if prefix.contains("unbuffered") {
        assert_eq!(body.len(), 2000, "unbuffered: every byte sent is forwarded");
    }
    assert!(
        waited >= Duration::from_millis(400),
        "nginx closed {waited:?} after the request, before its read timeout"
    );
    drop(s);

    let run = lab.finish(1);
    run.assert_logged(client_port, "200");
    run.assert_error_log("upstream timed out");
    run.assert_midbody(run.record(client_port), ("upstream_truncated", "timeout"));
}

#[test]
fn upstream_stalls_mid_body_buffered() {
    upstream_stalls_mid_body("/timeout", &[]);
}

#[test]
fn upstream_stalls_mid_body_unbuffered() {
    upstream_stalls_mid_body("/timeout-unbuffered", &[]);
}

#[test]
fn upstream_stalls_mid_body_seen_at_syscall_exits() {
    upstream_stalls_mid_body("/timeout-unbuffered", &["--io-probes", "syscall"]);
}

#[test]
fn control_a_reset_after_the_whole_body_is_ok() {
    let lab = Lab::start();
    let mut c = Conn::connect(lab.port()).unwrap();
    let client_port = c.local_port();
    let resp = c.request("GET", "/big/200000").unwrap();
    assert_eq!((resp.status, resp.body.len()), (200, 200_000));
    set_linger_zero(c.stream());
    drop(c);
    let run = lab.finish(1);
    run.assert_logged(client_port, "200");
    run.assert_midbody(run.record(client_port), ("ok", "response"));
}

#[test]
fn control_two_whole_bodies_on_a_kept_alive_connection_are_ok() {
    let lab = Lab::start();
    let mut c = Conn::connect(lab.port()).unwrap();
    let client_port = c.local_port();
    for _ in 0..2 {
        let resp = c.request("GET", "/big/200000").unwrap();
        assert_eq!((resp.status, resp.body.len()), (200, 200_000));
    }
    drop(c);
    let run = lab.finish(2);
    run.assert_logged(client_port, "200");
    let rs = run.records(client_port);
    assert_eq!(rs.len(), 2, "{rs:#?}");
    for r in rs {
        run.assert_midbody(r, ("ok", "response"));
    }
}

#[test]
fn control_an_unbuffered_stream_read_to_the_end_is_ok() {
    let lab = Lab::start();
    let mut c = Conn::connect(lab.port()).unwrap();
    let client_port = c.local_port();
    let resp = c.request("GET", "/unbuffered/stream/5/20").unwrap();
    assert_eq!(resp.status, 200);
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    assert!(
        text.starts_with("chunk 00000") && text.ends_with("chunk 00004\n"),
        "{text}"
    );
    drop(c);
    let run = lab.finish(1);
    run.assert_logged(client_port, "200");
    assert!(
        run.upstream_sent("/stream/5/20"),
        "{:?}",
        run.upstream.sent()
    );
    run.assert_midbody(run.record(client_port), ("ok", "response"));
}
