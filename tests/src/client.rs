//! Raw HTTP/1.1 clients over TcpStream: exact control of connections (keep-alive,
//! concurrency), and the local port of each request for matching the access log.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

#[derive(Clone, Debug)]
pub struct Response {
    /// The client's local port (nginx's `$remote_port`).
    pub local_port: u16,
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends a request (keep-alive) and reads the whole response.
    pub fn request(&mut self, method: &str, path: &str) -> std::io::Result<Response> {
        self.send(method, path, &[], b"")?;
        self.read_response()
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes())?;
        self.stream.write_all(body)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut length = None;
                    let mut chunked = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = String::from_utf8_lossy(h.value)
                                .trim()
                                .parse::<usize>()
                                .ok();
                        }
                        if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && String::from_utf8_lossy(h.value).contains("chunked")
                        {
                            chunked = true;
                        }
                    }
                    self.buf.drain(..len);
                    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
                    let body = if bodyless {
                        Vec::new()
                    } else if chunked {
                        self.read_chunked()?
                    } else {
                        self.read_length(length)?
                    };
                    return Ok(Response {
                        local_port: self.local_port(),
                        status,
                        body,
                    });
                }
                Ok(httparse::Status::Partial) => self.fill()?,
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
    }

    fn read_length(&mut self, length: Option<usize>) -> std::io::Result<Vec<u8>> {
        match length {
            Some(n) => {
                while self.buf.len() < n {
                    self.fill()?;
                }
                Ok(self.buf.drain(..n).collect())
            }
            None => {
                while self.fill().is_ok() {}
                Ok(std::mem::take(&mut self.buf))
            }
        }
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill()?;
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&self.buf[..line_end]).trim(), 16)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// One request on a new connection.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut c = Conn::connect(port)?;
    c.request("GET", path)
}

/// A short connection: connect from `source` (a loopback address, to spread
/// ephemeral ports over several addresses), one request with `Connection: close`,
/// read the response, close. Returns the status.
pub fn one_shot(source: std::net::Ipv4Addr, port: u16, path: &str) -> std::io::Result<u16> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // The source port is picked at connect time, against the four-tuples in
    // use: a port bind() picks alone may be one whose connection to the same
    // port still waits in TIME_WAIT on nginx's side, and the SYN then went
    // unanswered until connect() timed out (os error 110 in a CI run).
    set_bind_address_no_port(&socket)?;
    socket.bind(&std::net::SocketAddr::from((source, 0)).into())?;
    socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    c.send("GET", path, &[("Connection", "close")], b"")?;
    Ok(c.read_response()?.status)
}

/// `IP_BIND_ADDRESS_NO_PORT`: a bind to port 0 leaves the port to connect().
fn set_bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `clients` connections that each write `depth` requests (`/p/{client}/{i}`) in
/// one write, all at the same moment, then read every response: nginx runs each
/// connection's next request from a posted event, after the other connections.
/// Returns the statuses, per connection in order.
pub fn pipeline_many(port: u16, clients: usize, depth: usize) -> Vec<Vec<u16>> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::connect(port).expect("connect");
                let batch: String = (0..depth)
                    .map(|i| format!("GET /p/{c}/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
                    .collect();
                b.wait();
                conn.stream.write_all(batch.as_bytes()).expect("write");
                (0..depth)
                    .map(|_| conn.read_response().expect("response").status)
                    .collect()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}
