//! TLS in front: nginx terminates TLS, so the bytes on a client socket are
//! ciphertext. classify takes the requests and responses from the TLS library's
//! plaintext (uprobes on the `libssl` nginx maps) and must agree with the access
//! log exactly as it does for plain HTTP, faults and client aborts included.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use classify_tests::{
    classify,
    nginx::{Config, Nginx},
    upstream::Upstream,
};

use super::support::{
    assert_all_ok, assert_matches_access_log, assert_schema, require_root, status_target_complete,
    stop_after_log,
};

/// A self-signed certificate and its key, made with the `openssl` tool.
fn certificate(dir: &Path) -> (String, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (run `cargo xtask setup`)");
    assert!(status.success(), "openssl could not make a certificate");
    (cert.display().to_string(), key.display().to_string())
}

/// nginx in front of the test upstream with a TLS listener (and a self-signed
/// certificate): on its main port, or, with `plain_too`, on `tls_port` beside a
/// plain main port.
struct TlsFront {
    _upstream: Upstream,
    dir: tempfile::TempDir,
    nginx: Nginx,
    tls_port: u16,
}

impl TlsFront {
    fn start(plain_too: bool) -> Self {
        Self::start_with(plain_too, "")
    }

    /// The same, with `locations` (or other directives) in the server.
    fn start_with(plain_too: bool, locations: &str) -> Self {
        require_root();
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = certificate(dir.path());
        let mut server =
            format!("    ssl_certificate {cert};\n    ssl_certificate_key {key};\n{locations}");
        let tls_port = if plain_too {
            let port = classify_tests::free_port();
            server.push_str(&format!("    listen 127.0.0.1:{port} ssl;\n"));
            Some(port)
        } else {
            None
        };
        let main = if plain_too { "" } else { " ssl" };
        let nginx = Nginx::start(&Config::front(upstream.addr(), main, &server));
        let tls_port = tls_port.unwrap_or(nginx.port);
        Self {
            _upstream: upstream,
            dir,
            nginx,
            tls_port,
        }
    }
}

/// `curl` over HTTP/1.1 and TLS: each URL in turn on one kept-alive connection.
/// Returns the statuses it printed (000 for a request it gave up on).
fn curl(port: u16, paths: &[&str], extra: &[&str]) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["--http1.1", "-sk", "-o", "/dev/null"])
        .args(["-w", "%{http_code}\\n"])
        .args(extra);
    for p in paths {
        cmd.arg(format!("https://127.0.0.1:{port}{p}"));
        cmd.args(["-o", "/dev/null"]);
    }
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .expect("run curl (run `cargo xtask setup`)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

#[test]
fn tls_exchanges_agree_with_the_access_log() {
    tls_exchanges_agree(false);
}

/// The same with the probes at the TLS functions' entries and returns, as on
/// a library whose code the cheaper sites were not found in (their read
/// return probe is verified only then).
#[test]
fn tls_exchanges_agree_with_the_access_log_at_the_function_entries() {
    tls_exchanges_agree(true);
}

fn tls_exchanges_agree(at_entries: bool) {
    let lab = TlsFront::start(false);
    let nginx = &lab.nginx;
    let pid = nginx.master_pid().to_string();
    let mut args = vec!["--pid", &pid];
    if at_entries {
        args.push("--tls-at-entries");
    }
    let running = classify::start(&args);

    // One connection, kept alive across statuses of every class.
    let kept = ["/status/200", "/status/404", "/status/500", "/status/201"];
    assert_eq!(curl(nginx.port, &kept, &[]), [200, 404, 500, 201]);
    // A request body larger than a TLS record: its plaintext is no request.
    let body = lab.dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 100_000]).expect("write body");
    let upload = format!("@{}", body.display());
    assert_eq!(
        curl(nginx.port, &["/status/200"], &["--data-binary", &upload]),
        [200]
    );
    // The upstream resets: nginx answers 502 itself.
    assert_eq!(curl(nginx.port, &["/fault/reset"], &[]), [502]);
    // The client gives up while the upstream is slow: nginx logs 499.
    assert_eq!(
        curl(nginx.port, &["/slow/3000"], &["--max-time", "0.5"]),
        [0]
    );

    let (out, access) = stop_after_log(nginx, running, 7);
    assert_eq!(access.len(), 7, "{access:?}");
    // The probes sat at the cheap sites inside this libssl, unless told not to.
    assert_eq!(
        out.stderr.contains("TLS probes at the function entries"),
        at_entries,
        "{}",
        out.stderr
    );
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    for r in &exchanges {
        let target = r["request"]["target"].as_str().unwrap_or("-");
        let (verdict, from) = match target {
            "/status/200" | "/status/201" => ("ok", "upstream"),
            "/status/404" => ("client_error", "upstream"),
            "/status/500" => ("upstream_error", "upstream"),
            "/fault/reset" => ("upstream_reset", "proxy"),
            "/slow/3000" => ("client_abort", ""),
            _ => panic!("unexpected record {r}"),
        };
        assert_eq!(r["verdict"], verdict, "{r}");
        if !from.is_empty() {
            assert_eq!(r["response"]["from"], from, "{r}");
        }
        assert_eq!(r["complete"], true, "{r}");
        assert_eq!(r["server"]["port"], nginx.port, "{r}");
    }
}

/// `wrk` for `seconds` against `url` with `connections`, `extra` arguments.
fn wrk(url: &str, connections: u32, seconds: u32, extra: &[&str]) -> std::process::Child {
    Command::new("wrk")
        .args(["-t1", "-c", &connections.to_string(), "-d"])
        .arg(format!("{seconds}s"))
        .args(extra)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wrk (run `cargo xtask setup`)")
}

#[test]
fn tls_handshakes_amid_plain_traffic_leave_plain_sockets_alone() {
    // A handshake marks the thread as inside a TLS call; the socket it reads
    // there is marked TLS. nginx may handle other connections' events before
    // its next epoll_wait: none of their sockets may be taken for TLS (when one
    // was, its messages went missing and ~40 % of records lost their upstream).
    let lab = TlsFront::start(true);
    let (nginx, tls_port) = (&lab.nginx, lab.tls_port);
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let close = ["-H", "Connection: close"];
    let mut loads = [
        wrk(
            &format!("https://127.0.0.1:{tls_port}/tls/new"),
            4,
            2,
            &close,
        ),
        wrk(&format!("https://127.0.0.1:{tls_port}/tls/kept"), 4, 2, &[]),
        wrk(&format!("http://127.0.0.1:{}/plain", nginx.port), 4, 2, &[]),
    ];
    for l in &mut loads {
        assert!(l.wait().expect("wait for wrk").success());
    }
    let logged = classify_tests::wait_for(std::time::Duration::from_secs(5), || {
        let n = nginx.access_log().len();
        std::thread::sleep(std::time::Duration::from_millis(300));
        (nginx.access_log().len() == n).then_some(n)
    })
    .expect("the access log settles");
    let (out, access) = stop_after_log(nginx, running, logged);
    assert!(access.len() > 1_000, "{} requests", access.len());
    assert_matches_access_log(&out.exchanges(), &access);
}

/// A kept-alive TLS connection through `openssl s_client`, opened before classify
/// attaches.
struct TlsConn {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl TlsConn {
    fn connect(port: u16) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client (run `cargo xtask setup`)");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, out }
    }

    /// Sends a GET for `/status/{code}` and reads until the test upstream's body
    /// (`status {code}`).
    fn status(&mut self, code: u16) {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("send the request");
        let body = format!("status {code}");
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).expect("read the response");
            assert!(n > 0, "the TLS connection closed");
            if line.trim_end() == body {
                return;
            }
        }
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_connections_older_than_the_agent_are_picked_up_at_their_next_request() {
    // Its handshake was never seen: the socket is taken for TLS at the first
    // read inside SSL_read after classify attached.
    let lab = TlsFront::start(false);
    let nginx = &lab.nginx;
    let mut old = TlsConn::connect(nginx.port);
    old.status(200);
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    old.status(500);
    old.status(404);
    old.status(200);
    drop(old);
    let (out, access) = stop_after_log(nginx, running, 4);
    assert_schema(&out.records);
    // The request served before classify attached has no record; the others do.
    assert_matches_access_log(&out.exchanges(), &access[1..]);
}

/// nginx in front of the test upstream whose own TLS listener (a self-signed
/// certificate) serves as a TLS upstream for the locations `locations(tls port,
/// scratch dir)` gives.
struct OwnTlsUpstream {
    _upstream: Upstream,
    _dir: tempfile::TempDir,
    nginx: Nginx,
    tls_port: u16,
}

impl OwnTlsUpstream {
    fn start(locations: impl FnOnce(u16, &Path) -> String) -> Self {
        require_root();
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = certificate(dir.path());
        let tls_port = classify_tests::free_port();
        let server = format!(
            "    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    listen 127.0.0.1:{tls_port} ssl;\n    {}\n",
            locations(tls_port, dir.path())
        );
        let nginx = Nginx::start(&Config::front(upstream.addr(), "", &server));
        Self {
            _upstream: upstream,
            _dir: dir,
            nginx,
            tls_port,
        }
    }
}

/// A TLS upstream whose certificate fails nginx's verification
/// (`proxy_ssl_verify on`, a certificate it does not trust): nginx closes the
/// connection after the handshake, before any request, and writes 502. The
/// record says the upstream was rejected and points at its certificate, not
/// at a timeout or a crash (it once read `upstream_timeout`, "(504)").
#[test]
fn a_tls_upstream_whose_certificate_fails_verification_is_rejected() {
    let lab = OwnTlsUpstream::start(|tls_port, dir| {
        let other = dir.join("other");
        std::fs::create_dir(&other).expect("dir");
        let (untrusted_ca, _) = certificate(&other);
        format!("location /verify/ {{ proxy_pass https://127.0.0.1:{tls_port}/; proxy_ssl_verify on; proxy_ssl_trusted_certificate {untrusted_ca}; }}")
    });
    let (nginx, tls_port) = (&lab.nginx, lab.tls_port);
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let url = format!("http://127.0.0.1:{}/verify/status/200", nginx.port);
    for _ in 0..3 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .expect("run curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
    }
    let (out, access) = stop_after_log(nginx, running, 3);
    assert!(
        nginx.error_log().contains("certificate verify"),
        "{}",
        nginx.error_log()
    );
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    for r in &exchanges {
        assert_eq!(r["verdict"], "upstream_invalid", "{r}");
        assert_eq!(r["upstreams"][0]["outcome"], "invalid", "{r}");
        assert_eq!(r["upstreams"][0]["port"], tls_port, "{r}");
        let hint = r["hint"].as_str().unwrap_or_default();
        assert!(hint.contains("certificate"), "{hint}");
    }
}

/// A TLS client that reads the whole response and closes (here nginx itself,
/// proxying over `https` with its default HTTP/1.0): the server's
/// `close_notify` meets a closed socket and is reset. Nothing was lost (a
/// share of such responses was once called `client_reset`).
#[test]
fn a_tls_clients_reset_of_the_close_notify_is_no_lost_response() {
    let lab = OwnTlsUpstream::start(|tls_port, _| {
        format!("location /over-tls/ {{ proxy_pass https://127.0.0.1:{tls_port}/; proxy_http_version 1.0; proxy_set_header Connection close; }}\n    location = /direct {{ return 200 \"fine\\n\"; }}")
    });
    let nginx = &lab.nginx;
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let n = 200;
    let paths = vec!["/over-tls/direct"; n];
    // One curl, one plain connection kept alive; each request opens its own
    // TLS connection from nginx to itself, answered at once.
    let statuses = curl_plain(nginx.port, &paths);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (out, access) = stop_after_log(nginx, running, 2 * n);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    assert_all_ok(exchanges.iter().copied());
}

/// A TLS client that closes as soon as it has read the response (Python's
/// `ssl` module, `Connection: close`): nginx closes first, its `close_notify`
/// is left unread, so the client's close is a reset, and the client's kernel
/// may not have acknowledged the response's last segment yet (a delayed ACK).
/// Every response was read whole: no `client_reset` (a third of them were).
#[test]
fn a_tls_client_that_closes_once_it_has_the_response_lost_nothing() {
    let lab = OwnTlsUpstream::start(|_, _| "location = /direct { return 200 \"fine\\n\"; }".into());
    let nginx = &lab.nginx;
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let n = 100;
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         whole = 0\n\
         for i in range({n}):\n\
         \x20   s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         \x20   s.sendall(b'GET /direct HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   buf = b''\n\
         \x20   while b'fine\\n' not in buf:\n\
         \x20       chunk = s.recv(4096)\n\
         \x20       if not chunk: break\n\
         \x20       buf += chunk\n\
         \x20   whole += b'fine\\n' in buf\n\
         \x20   s.close()\n\
         print(whole)\n",
        port = lab.tls_port
    );
    assert_eq!(python(&script), n.to_string());
    let (out, access) = stop_after_log(nginx, running, n);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    assert_all_ok(exchanges.iter().copied());
}

/// An upstream that resets its connection mid-body, behind TLS clients that
/// close as soon as nginx does. nginx ends a TLS connection with its
/// `close_notify` and waits for the client's answer before it closes the
/// socket, so such a client's FIN comes first (Python's `ssl` closes at the
/// alert). The response was cut all the same: nginx had met the reset, and
/// the client got 10 of the 1,000 bytes announced.
#[test]
fn a_reply_cut_mid_body_behind_a_tls_client_that_closes_first_is_truncated() {
    let lab = TlsFront::start(false);
    let nginx = &lab.nginx;
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let n = 20;
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         short = 0\n\
         for i in range({n}):\n\
         \x20   s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         \x20   s.sendall(b'GET /fault/truncate HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         \x20   buf = b''\n\
         \x20   while True:\n\
         \x20       try:\n\
         \x20           chunk = s.recv(4096)\n\
         \x20       except (ssl.SSLError, OSError):\n\
         \x20           break\n\
         \x20       if not chunk: break\n\
         \x20       buf += chunk\n\
         \x20   head, _, body = buf.partition(b'\\r\\n\\r\\n')\n\
         \x20   short += head.startswith(b'HTTP/1.1 200') and len(body) < 1000\n\
         \x20   s.close()\n\
         print(short)\n",
        port = nginx.port
    );
    assert_eq!(python(&script), n.to_string());
    let (out, access) = stop_after_log(nginx, running, n);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    assert_eq!(exchanges.len(), n);
    for r in &exchanges {
        assert_eq!(r["verdict"], "upstream_truncated", "{r}");
        assert_eq!(r["upstreams"][0]["outcome"], "truncated", "{r}");
    }
}

/// `faults::a_buffered_reply_cut_by_its_upstreams_fin_is_truncated` over
/// TLS: nginx writes the response after the upstream's FIN, through
/// `SSL_write`, and its head's keep-alive promise is read from that
/// plaintext. A cut breaks the promise (nginx's `close_notify`, then its
/// close); a reply that ends by closing keeps it.
#[test]
fn a_buffered_reply_cut_by_its_upstreams_fin_is_truncated_over_tls() {
    let lab = TlsFront::start(false);
    let nginx = &lab.nginx;
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let n = 10;
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         seen = 0\n\
         for i in range({n}):\n\
         \x20   for path, cut in ((b'/fault/fincut', True), (b'/fault/delim', False)):\n\
         \x20       s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         \x20       s.sendall(b'GET ' + path + b' HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         \x20       buf = b''\n\
         \x20       while not buf.endswith(b'0\\r\\n\\r\\n'):\n\
         \x20           try:\n\
         \x20               chunk = s.recv(4096)\n\
         \x20           except (ssl.SSLError, OSError):\n\
         \x20               break\n\
         \x20           if not chunk: break\n\
         \x20           buf += chunk\n\
         \x20       head, _, body = buf.partition(b'\\r\\n\\r\\n')\n\
         \x20       whole = body.endswith(b'0\\r\\n\\r\\n')\n\
         \x20       seen += head.startswith(b'HTTP/1.1 200') and b'keep-alive' in head and whole != cut\n\
         \x20       s.close()\n\
         print(seen)\n",
        port = nginx.port
    );
    assert_eq!(python(&script), (2 * n).to_string());
    let (out, access) = stop_after_log(nginx, running, 2 * n);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    assert_eq!(exchanges.len(), 2 * n);
    for r in &exchanges {
        let (verdict, outcome) = if r["request"]["target"] == "/fault/fincut" {
            ("upstream_truncated", "truncated")
        } else {
            ("ok", "response")
        };
        assert_eq!(r["verdict"], verdict, "{r}");
        assert_eq!(r["upstreams"][0]["outcome"], outcome, "{r}");
    }
}

/// A request after a body nginx read only to discard it, over TLS: nginx
/// answers `POST /early` at once (`return 403`), reads the 200 KB body to
/// throw it away, and the client's next requests on the connection come in
/// the same direction. They keep their lines, as on a plain connection
/// (`bad_input::a_request_after_a_body_nginx_discarded_keeps_its_line`).
#[test]
fn a_request_after_a_body_nginx_discarded_keeps_its_line_over_tls() {
    let lab = TlsFront::start_with(false, "    location /early { return 403; }\n");
    let nginx = &lab.nginx;
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let script = format!(
        "import socket, ssl, time\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         buf = b''\n\
         def response():\n\
         \x20   global buf\n\
         \x20   while b'\\r\\n\\r\\n' not in buf:\n\
         \x20       buf += s.recv(65536)\n\
         \x20   head, _, buf = buf.partition(b'\\r\\n\\r\\n')\n\
         \x20   length = 0\n\
         \x20   for line in head.split(b'\\r\\n')[1:]:\n\
         \x20       k, _, v = line.partition(b':')\n\
         \x20       if k.strip().lower() == b'content-length': length = int(v)\n\
         \x20   while len(buf) < length:\n\
         \x20       buf += s.recv(65536)\n\
         \x20   buf = buf[length:]\n\
         \x20   return int(head.split()[1])\n\
         body = b'x' * 200000\n\
         s.sendall(b'POST /early HTTP/1.1\\r\\nHost: t\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body))\n\
         codes = [response()]\n\
         for i in range(0, len(body), 16384):\n\
         \x20   s.sendall(body[i:i + 16384]); time.sleep(0.002)\n\
         time.sleep(0.1)\n\
         for path in (b'/status/201', b'/status/202'):\n\
         \x20   s.sendall(b'GET ' + path + b' HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n\
         \x20   codes.append(response())\n\
         s.close()\n\
         print(*codes)\n",
        port = nginx.port
    );
    assert_eq!(python(&script), "403 201 202");
    let (out, access) = stop_after_log(nginx, running, 3);
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    assert_eq!(
        status_target_complete(&exchanges),
        [
            (403, "/early", true),
            (201, "/status/201", true),
            (202, "/status/202", true)
        ],
        "{exchanges:#?}"
    );
}

/// Runs a Python client script (its `ssl` module is a TLS client that closes
/// at once, unlike curl) and returns what it printed, trimmed.
fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `curl` over plain HTTP/1.1: each URL in turn on one kept-alive connection.
fn curl_plain(port: u16, paths: &[&str]) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\\n"]);
    for p in paths {
        cmd.arg(format!("http://127.0.0.1:{port}{p}"));
        cmd.args(["-o", "/dev/null"]);
    }
    let out = cmd.output().expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}
