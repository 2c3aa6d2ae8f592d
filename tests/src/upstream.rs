//! A small HTTP/1.1 upstream with fault injection, on raw sockets so that FIN,
//! RST and timing are exact. The request path selects the behaviour:
//!
//! | path | behaviour |
//! |---|---|
//! | `/status/{code}` | answers `{code}` |
//! | `/same` | answers a status picked at random (logged with the peer port) |
//! | `/slow/{ms}` | waits `ms` milliseconds, then answers 200 |
//! | `/fault/reset` | reads the request, sends RST before any byte |
//! | `/fault/close` | reads the request, closes (FIN) before any byte |
//! | `/fault/garbage` | answers bytes that are not an HTTP response head (no status line) |
//! | `/fault/badheader` | answers a valid status line followed by an invalid header line |
//! | `/fault/silent` | reads the request and never answers |
//! | `/fault/truncate` | sends a head with `Content-Length: 1000`, 10 body bytes, then RST |
//! | `/upgrade` | answers `101 Switching Protocols`, then echoes every byte until the peer closes (a WebSocket's shape) |
//! | `/big/{bytes}` | answers 200 with `Content-Length: {bytes}`, head and whole body in one write; keep-alive honoured |
//! | `/stream/{chunks}/{ms}` | answers 200 chunked: one small chunk every `ms` milliseconds (the first at once), then the last chunk; keep-alive honoured |
//! | `/stall/{bytes}` | sends a head with `Content-Length: 100000` and `bytes` body bytes, then nothing more: holds the connection open until the peer closes it |
//! | anything else | answers 200 |
//!
//! Every request is logged with the peer port, so tests can check which upstream
//! socket served which request, when it arrives ([`Upstream::log`]) and again once
//! everything its behaviour sends was written ([`Upstream::sent`]: the kernel took
//! the last byte; a response cut short by the peer never gets there). Only the
//! paths above that answer a status and a body are logged there.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

/// Statuses `/same` picks from.
pub const SAME_STATUSES: [u16; 6] = [200, 201, 404, 500, 502, 503];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The proxy's local port for this upstream connection.
    pub peer_port: u16,
    pub method: String,
    pub target: String,
    /// Status answered, `None` for faults that answer no status.
    pub status: Option<u16>,
    pub action: &'static str,
}

pub struct Upstream {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<LogEntry>>>,
    sent: Arc<Mutex<Vec<LogEntry>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Listens on an ephemeral loopback port.
    pub fn start() -> Self {
        Self::bind("127.0.0.1:0")
    }

    pub fn bind(addr: &str) -> Self {
        let listener = listen_deep(addr);
        let addr = listener.local_addr().expect("upstream addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, sent2, s2) = (log.clone(), sent.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, sent) = (l2.clone(), sent2.clone());
                thread::spawn(move || serve(conn, &log, &sent));
            }
        });
        Self {
            addr,
            log,
            sent,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.log.lock().expect("log lock").clone()
    }

    /// Requests whose response was written as far as their behaviour goes (the
    /// last byte handed to the kernel; for `/stall`, the head and its bytes), in
    /// that order.
    pub fn sent(&self) -> Vec<LogEntry> {
        self.sent.lock().expect("sent lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Listens with an accept queue of 4,096 instead of std's 128. A burst of 200
/// concurrent proxied requests overflowed 128: the kernel dropped a SYN, nginx's
/// connect completed only at the 1 s retransmit, and a client that waits 1 s left
/// before nginx sent the request (a CI failure on 2026-12-06). Tests about faults
/// must not get a random extra one from the harness.
pub(crate) fn listen_deep(addr: &str) -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = addr.parse().expect("upstream address");
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("upstream socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&addr.into()).expect("bind upstream");
    s.listen(4096).expect("listen upstream");
    s.into()
}

struct Request {
    method: String,
    target: String,
    keep_alive: bool,
}

/// Reads one request head (and a Content-Length body). `None` at EOF or on error.
fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let method = req.method?.to_owned();
            let target = req.path?.to_owned();
            let http11 = req.version == Some(1);
            let mut keep_alive = http11;
            let mut body = 0usize;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("connection") {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if v.contains("close") {
                        keep_alive = false;
                    } else if v.contains("keep-alive") {
                        keep_alive = true;
                    }
                }
                if h.name.eq_ignore_ascii_case("content-length") {
                    body = String::from_utf8_lossy(h.value).trim().parse().unwrap_or(0);
                }
            }
            let total = len + body;
            while buf.len() < total {
                let mut chunk = [0u8; 8192];
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..total);
            return Some(Request {
                method,
                target,
                keep_alive,
            });
        }
        let mut chunk = [0u8; 8192];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    }
}

/// Sends RST instead of FIN when the socket is closed.
pub fn set_linger_zero(conn: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an fd we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn respond(conn: &mut TcpStream, status: u16, keep_alive: bool) -> std::io::Result<()> {
    let body = format!("status {status}\n");
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    // One write: a head and body in two small writes meet Nagle and delayed ACKs
    // (40 ms stalls) on a kept-alive connection.
    conn.write_all((head + &body).as_bytes())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// `/big/{bytes}`: head and body in one write.
fn respond_big(conn: &mut TcpStream, bytes: usize, keep_alive: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {bytes}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    let mut all = Vec::with_capacity(head.len() + bytes);
    all.extend_from_slice(head.as_bytes());
    // resize, not a byte-by-byte iterator: 16 MB took 230 ms in a debug build.
    all.resize(head.len() + bytes, b'b');
    conn.write_all(&all)
}

/// `/stream/{chunks}/{ms}`: a chunked body, one chunk every `ms` milliseconds.
fn respond_stream(
    conn: &mut TcpStream,
    chunks: usize,
    every: Duration,
    keep_alive: bool,
) -> std::io::Result<()> {
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" }
        )
        .as_bytes(),
    )?;
    for i in 0..chunks {
        if i > 0 {
            thread::sleep(every);
        }
        let data = format!("chunk {i:05}\n");
        conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    }
    thread::sleep(every);
    conn.write_all(b"0\r\n\r\n")
}

fn serve(mut conn: TcpStream, log: &Mutex<Vec<LogEntry>>, sent: &Mutex<Vec<LogEntry>>) {
    let _ = conn.set_nodelay(true);
    let peer_port = conn.peer_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = Vec::new();
    let mut idle_reset: Option<Duration> = None;
    while let Some(req) = read_request(&mut conn, &mut buf) {
        let path = req.target.split('?').next().unwrap_or("").to_owned();
        let mut entry = LogEntry {
            peer_port,
            method: req.method.clone(),
            target: req.target.clone(),
            status: None,
            action: "respond",
        };
        let mut keep = req.keep_alive;
        let mut delay = Duration::ZERO;
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let status = match parts.as_slice() {
            ["status", code, ..] => code.parse().ok(),
            ["same", ..] => Some(SAME_STATUSES[fastrand::usize(..SAME_STATUSES.len())]),
            ["slow", ms, ..] => {
                delay = Duration::from_millis(ms.parse().unwrap_or(0));
                Some(200)
            }
            ["fault", "reset", ..] => {
                entry.action = "reset";
                None
            }
            ["fault", "close", ..] => {
                entry.action = "close";
                None
            }
            ["fault", "garbage", ..] => {
                entry.action = "garbage";
                None
            }
            ["fault", "badheader", ..] => {
                entry.action = "badheader";
                None
            }
            ["fault", "silent", ..] => {
                entry.action = "silent";
                None
            }
            ["fault", "truncate", ..] => {
                entry.action = "truncate";
                Some(200)
            }
            ["fault", "fincut", ..] => {
                entry.action = "fincut";
                Some(200)
            }
            ["fault", "delim", ..] => {
                entry.action = "delim";
                Some(200)
            }
            ["upgrade", ..] => {
                entry.action = "upgrade";
                Some(101)
            }
            ["big", ..] => {
                entry.action = "big";
                Some(200)
            }
            ["stream", ..] => {
                entry.action = "stream";
                Some(200)
            }
            ["stall", ..] => {
                entry.action = "stall";
                Some(200)
            }
            ["idle-reset", ms, ..] => {
                // Answered and kept alive; reset once idle this long (a server
                // whose keep-alive timeout ends connections with RST).
                idle_reset = ms.parse().ok().map(Duration::from_millis);
                Some(200)
            }
            _ => Some(200),
        };
        entry.status = status.filter(|_| {
            matches!(
                entry.action,
                "respond"
                    | "truncate"
                    | "fincut"
                    | "delim"
                    | "upgrade"
                    | "big"
                    | "stream"
                    | "stall"
            )
        });
        // Logged when the request arrives, before any delay.
        log.lock().expect("log lock").push(entry.clone());
        thread::sleep(delay);
        let number = |i: usize| {
            parts
                .get(i)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ok = match entry.action {
            "respond" => respond(&mut conn, status.unwrap_or(200), keep).is_ok(),
            "big" => respond_big(&mut conn, number(1) as usize, keep).is_ok(),
            "stream" => respond_stream(
                &mut conn,
                number(1) as usize,
                Duration::from_millis(number(2)),
                keep,
            )
            .is_ok(),
            "stall" => {
                let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".to_vec();
                head.resize(head.len() + number(1) as usize, b's');
                if conn.write_all(&head).is_ok() {
                    sent.lock().expect("sent lock").push(entry.clone());
                }
                // Silence: never another byte, until the peer closes.
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                false
            }
            "reset" => {
                set_linger_zero(&conn);
                false
            }
            "close" => {
                let _ = conn.shutdown(Shutdown::Both);
                false
            }
            "garbage" => {
                let _ = conn.write_all(b"HELLO this is not HTTP\r\n\r\n");
                keep = false;
                true
            }
            "badheader" => {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nBad Header\x00: x\r\n\r\nabc",
                );
                keep = false;
                true
            }
            "silent" => {
                // Hold the connection open without answering until the peer goes.
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                false
            }
            "truncate" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n0123456789");
                let _ = conn.flush();
                thread::sleep(Duration::from_millis(50));
                set_linger_zero(&conn);
                false
            }
            "fincut" => {
                // A FIN short of the declared length: an upstream that
                // crashed or was killed mid-body. `/fault/fincut/json`: a
                // longer Content-Type, which moves nginx's Connection line
                // past the probes' capture.
                let content_type: &[u8] = if parts.get(2) == Some(&"json") {
                    b"application/json; charset=utf-8"
                } else {
                    b"text/plain"
                };
                let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: ".to_vec();
                head.extend_from_slice(content_type);
                head.extend_from_slice(b"\r\nContent-Length: 1000\r\n\r\n0123456789");
                let _ = conn.write_all(&head);
                let _ = conn.flush();
                thread::sleep(Duration::from_millis(50));
                let _ = conn.shutdown(Shutdown::Write);
                false
            }
            "delim" => {
                // A whole reply that ends by closing: no length, no chunks.
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n0123456789");
                let _ = conn.flush();
                thread::sleep(Duration::from_millis(50));
                let _ = conn.shutdown(Shutdown::Write);
                false
            }
            "upgrade" => {
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                // Whatever came after the head, then everything until EOF.
                let _ = conn.write_all(&std::mem::take(&mut buf));
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut chunk) {
                    if conn.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                false
            }
            _ => false,
        };
        if ok && matches!(entry.action, "respond" | "big" | "stream") {
            sent.lock().expect("sent lock").push(entry.clone());
        }
        if !ok || !keep {
            break;
        }
        if let Some(idle) = idle_reset {
            let _ = conn.set_read_timeout(Some(idle));
        }
    }
    if idle_reset.is_some() {
        // No next request within the idle time (or none at all): RST.
        set_linger_zero(&conn);
    }
}
