//! A FastCGI application server (what `fastcgi_pass` talks to, PHP-FPM's
//! protocol) with fault injection. `REQUEST_URI` selects the behaviour:
//!
//! | URI | behaviour |
//! |---|---|
//! | `/status/{code}` | `Status: {code}` as the first header (PHP-FPM for codes other than 200) |
//! | `/php/ok` | no `Status:` header: 200 by the CGI rule (PHP-FPM's 200) |
//! | `/php/warn/{code}` | an `FCGI_STDERR` record (a PHP warning) before the reply; `Status:` unless 200 |
//! | `/fault/badheader` | a header line without a colon (nginx: "upstream sent invalid header", 502) |
//! | `/fault/reset` | reads the request, sends RST before any byte |
//! | `/fault/close` | reads the request, closes (FIN) before any byte |
//! | `/fault/silent` | reads the request and never answers |
//!
//! The connection is kept when nginx asks for it (`fastcgi_keep_conn on`).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::upstream::{listen_deep, set_linger_zero};

const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const KEEP_CONN: u8 = 1;

pub struct FastCgi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FastCgi {
    /// Listens on an ephemeral loopback port.
    pub fn start() -> Self {
        let listener = listen_deep("127.0.0.1:0");
        let addr = listener.local_addr().expect("fastcgi addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || serve(conn));
                }
            }
        });
        Self { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FastCgi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

struct Record {
    kind: u8,
    id: u16,
    content: Vec<u8>,
}

fn read_record(conn: &mut TcpStream) -> Option<Record> {
    let mut h = [0u8; 8];
    conn.read_exact(&mut h).ok()?;
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut content = vec![0u8; len + usize::from(h[6])];
    conn.read_exact(&mut content).ok()?;
    content.truncate(len);
    Some(Record {
        kind: h[1],
        id: u16::from_be_bytes([h[2], h[3]]),
        content,
    })
}

fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    // Padded to 8 bytes, as PHP-FPM does.
    let pad = (8 - content.len() % 8) % 8;
    let len = content.len() as u16;
    let mut r = vec![
        1,
        kind,
        (id >> 8) as u8,
        id as u8,
        (len >> 8) as u8,
        len as u8,
        pad as u8,
        0,
    ];
    r.extend_from_slice(content);
    r.resize(r.len() + pad, 0);
    r
}

/// `REQUEST_URI` from a PARAMS stream (name-value pairs with 1- or 4-byte lengths).
fn request_uri(params: &[u8]) -> String {
    let mut i = 0;
    let length = |i: &mut usize| -> Option<usize> {
        let b = *params.get(*i)?;
        if b >> 7 == 0 {
            *i += 1;
            return Some(usize::from(b));
        }
        let v = params.get(*i..*i + 4)?;
        *i += 4;
        Some(u32::from_be_bytes([b & 0x7f, v[1], v[2], v[3]]) as usize)
    };
    while let (Some(n), Some(v)) = (length(&mut i), length(&mut i)) {
        let (name, value) = (params.get(i..i + n), params.get(i + n..i + n + v));
        i += n + v;
        if name == Some(b"REQUEST_URI".as_slice()) {
            return String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
        }
    }
    String::new()
}

fn serve(mut conn: TcpStream) {
    loop {
        // BEGIN_REQUEST, PARAMS up to an empty one, STDIN up to an empty one.
        let Some(begin) = read_record(&mut conn).filter(|r| r.kind == BEGIN_REQUEST) else {
            return;
        };
        let keep = begin.content.get(2).is_some_and(|f| f & KEEP_CONN != 0);
        let mut params = Vec::new();
        loop {
            match read_record(&mut conn) {
                Some(r) if r.kind == PARAMS && !r.content.is_empty() => {
                    params.extend_from_slice(&r.content)
                }
                Some(r) if r.kind == PARAMS => break,
                _ => return,
            }
        }
        loop {
            match read_record(&mut conn) {
                Some(r) if r.kind == STDIN && r.content.is_empty() => break,
                Some(r) if r.kind == STDIN => {}
                _ => return,
            }
        }
        let id = begin.id;
        let uri = request_uri(&params);
        let mut reply = Vec::new();
        let head = match uri.as_str() {
            "/fault/reset" => {
                set_linger_zero(&conn);
                return;
            }
            "/fault/close" => return,
            "/fault/silent" => {
                thread::sleep(Duration::from_secs(5));
                return;
            }
            "/fault/badheader" => "this is no header line\r\n\r\n".to_owned(),
            "/php/ok" => "X-Powered-By: PHP/8.2.7\r\nContent-Type: text/html\r\n\r\n".to_owned(),
            _ => {
                let (warn, code) = match uri.strip_prefix("/php/warn/") {
                    Some(code) => (true, code),
                    None => (false, uri.strip_prefix("/status/").unwrap_or("200")),
                };
                if warn {
                    reply.extend(record(
                        STDERR,
                        id,
                        b"PHP message: PHP Deprecated:  Creation of dynamic property in /srv/index.php on line 3",
                    ));
                }
                let status = if code == "200" && warn {
                    String::new()
                } else {
                    format!("Status: {code} Reason\r\n")
                };
                format!("{status}X-Powered-By: PHP/8.2.7\r\nContent-Type: text/html\r\n\r\n")
            }
        };
        reply.extend(record(
            STDOUT,
            id,
            format!("{head}body of {uri}\n").as_bytes(),
        ));
        reply.extend(record(STDOUT, id, b""));
        reply.extend(record(END_REQUEST, id, &[0; 8]));
        if conn.write_all(&reply).is_err() || !keep {
            return;
        }
    }
}
