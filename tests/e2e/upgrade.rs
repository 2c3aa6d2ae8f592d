//! A connection that switches protocols (`101`, a WebSocket): the upgrade is one
//! exchange; the frames after it, both ways, are not HTTP and make no records,
//! even a frame that reads like a request line.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use classify_tests::{
    classify, client,
    nginx::{Config, Nginx},
    upstream::Upstream,
};

use super::support::{assert_matches_access_log, assert_schema, require_root, stop_after_log};

/// Upgrades a connection to `/upgrade`, then sends `frames` and reads each echo.
fn websocket(port: u16, frames: &[&[u8]]) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).expect("read the 101 head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for frame in frames {
        c.write_all(frame).unwrap();
        let mut echo = vec![0u8; frame.len()];
        c.read_exact(&mut echo).expect("read the echo");
        assert_eq!(&echo, frame);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_upgraded_connection_is_one_exchange() {
    require_root();
    let upstream = Upstream::start();
    let server = "    location /upgrade {\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n    }\n";
    let nginx = Nginx::start(&Config::front(upstream.addr(), "", server));
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let frames: [&[u8]; 4] = [
        b"\x81\x05hello",
        b"\x82\x03\x00\x01\x02",
        b"GET /in-band HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 500 Not a reply\r\n\r\n",
    ];
    websocket(nginx.port, &frames);
    websocket(nginx.port, &frames[..2]);
    assert_eq!(client::get(nginx.port, "/status/200").unwrap().status, 200);

    let (out, access) = stop_after_log(&nginx, running, 3);
    assert_eq!(access.len(), 3, "{access:?}");
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    for r in &exchanges {
        assert_eq!(r["verdict"], "ok", "{r}");
    }
}
