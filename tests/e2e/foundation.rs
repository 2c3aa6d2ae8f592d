//! The foundation: exchanges that succeed or that the upstream answers with an
//! error, on fresh and kept-alive connections, attributed exactly.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use classify_tests::{
    classify,
    client::{self, Conn},
    nginx::{Config, Nginx},
    upstream::Upstream,
    wait_for,
};
use serde_json::Value;

use super::support::{assert_matches_access_log, assert_schema, require_root};

fn start(upstream: &Upstream, keepalive: Option<u32>) -> (Nginx, classify::Running) {
    let nginx = Nginx::start(&Config::proxy(
        &[upstream.addr().to_string()],
        keepalive,
        "",
    ));
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    (nginx, running)
}

#[test]
fn records_match_the_access_log_for_upstream_statuses_and_keepalive() {
    require_root();
    let upstream = Upstream::start();
    let (nginx, running) = start(&upstream, Some(16));
    let paths = ["/status/200", "/status/404", "/status/502", "/status/503"];
    let mut expected = 0;
    for p in paths {
        assert_eq!(
            client::get(nginx.port, p).expect("request").status,
            p[8..].parse::<u16>().unwrap()
        );
        expected += 1;
    }
    // Client keep-alive: several requests per connection, through the upstream pool.
    for c in 0..3 {
        let mut conn = Conn::connect(nginx.port).expect("connect");
        for i in 0..5 {
            let p = paths[(c + i) % paths.len()];
            let r = conn.request("GET", p).expect("request");
            assert_eq!(r.status, p[8..].parse::<u16>().unwrap());
            expected += 1;
        }
    }
    let access = nginx.wait_access_log(expected, Duration::from_secs(5));
    assert_eq!(access.len(), expected);
    // Records come live: within the settle time, before classify stops.
    let live = wait_for(Duration::from_secs(5), || {
        let n = running
            .records_so_far()
            .iter()
            .filter(|r| r["kind"] == "exchange")
            .count();
        (n >= expected).then_some(n)
    });
    let out = running.stop();
    assert!(out.status.success(), "classify failed: {}", out.stderr);
    assert!(live.is_some(), "records were not emitted live");
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    let pids: Vec<String> = access.iter().map(|a| a.pid.clone()).collect();
    for r in &exchanges {
        let status = r["response"]["status"].as_u64().unwrap();
        let verdict = match status {
            200 => "ok",
            404 => "client_error",
            _ => "upstream_error",
        };
        assert_eq!(r["verdict"], verdict, "{r}");
        assert_eq!(r["response"]["from"], "upstream", "{r}");
        assert_eq!(r["upstreams"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(r["upstreams"][0]["outcome"], "response", "{r}");
        assert_eq!(r["upstreams"][0]["status"], status, "{r}");
        assert_eq!(r["complete"], true, "{r}");
        assert!(pids.contains(&r["proxy"]["pid"].to_string()), "{r}");
        assert_eq!(r["proxy"]["comm"], "nginx");
        if verdict == "ok" {
            assert!(r["hint"].is_null(), "{r}");
        } else {
            assert!(r["hint"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
        }
    }
    // The kept-alive upstream connections were reused: fewer connects than requests.
    let connects = exchanges
        .iter()
        .filter(|r| !r["upstreams"][0]["connect_us"].is_null())
        .count();
    assert!(
        connects < exchanges.len(),
        "no upstream keep-alive reuse seen"
    );
    let stats = out.final_stats().expect("final stats record");
    assert_eq!(stats["lost_events"], 0);
    assert_eq!(stats["engine"]["unattributed_attempts"], 0);
    // Written after the flush: nothing left in flight or held, and the
    // connections' sockets gone (kept-alive upstream ones may remain).
    assert_eq!(stats["tables"]["exchanges"], 0, "{stats}");
    assert_eq!(stats["tables"]["held_records"], 0, "{stats}");
    let resident = stats["resident_kib"].as_u64().unwrap_or(0);
    assert!((1_024..1_048_576).contains(&resident), "{stats}");
}

#[test]
fn attributes_64_concurrent_identical_requests_exactly() {
    require_root();
    let upstream = Upstream::start();
    let (nginx, running) = start(&upstream, Some(16));
    let n = 64;
    let barrier = Arc::new(Barrier::new(n));
    let port = nginx.port;
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let b = barrier.clone();
            thread::spawn(move || {
                let mut c = Conn::connect(port).expect("connect");
                b.wait();
                c.request("GET", "/same").expect("request")
            })
        })
        .collect();
    let responses: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let access = nginx.wait_access_log(n, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "classify failed: {}", out.stderr);
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    assert_eq!(exchanges.len(), n);

    // What the client saw, by its port.
    let client_status: HashMap<u16, u16> =
        responses.iter().map(|r| (r.local_port, r.status)).collect();
    // What the upstream answered, in order, per upstream connection (its peer port).
    let mut by_conn: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    for e in upstream.log() {
        by_conn
            .entry(e.peer_port)
            .or_default()
            .push(e.status.expect("status"));
    }
    // What classify says, in time order, per upstream connection.
    let mut sorted: Vec<&Value> = exchanges.clone();
    sorted.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let mut seen: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    for r in &sorted {
        let port = r["client"]["port"].as_u64().unwrap() as u16;
        let status = r["response"]["status"].as_u64().unwrap() as u16;
        assert_eq!(
            client_status.get(&port),
            Some(&status),
            "status differs from what the client got: {r}"
        );
        assert_eq!(r["upstreams"].as_array().unwrap().len(), 1, "{r}");
        let up_port = r["upstreams"][0]["local_port"].as_u64().unwrap() as u16;
        assert_eq!(r["upstreams"][0]["status"], status, "{r}");
        seen.entry(up_port).or_default().push(status);
    }
    assert_eq!(
        seen, by_conn,
        "upstream sockets attributed differently from what the upstream logged"
    );
}

#[test]
fn connections_older_than_the_agent_are_picked_up_on_first_use() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], Some(4), ""));
    // A kept-alive client connection and a pooled upstream connection, both opened
    // before classify attaches.
    let mut old = Conn::connect(nginx.port).expect("connect");
    assert_eq!(old.request("GET", "/status/200").unwrap().status, 200);
    let before = upstream.log().len();
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    assert_eq!(old.request("GET", "/status/404").unwrap().status, 404);
    assert_eq!(old.request("GET", "/status/200").unwrap().status, 200);
    // HTTP/1.0 on a new connection.
    let mut c10 = Conn::connect(nginx.port).expect("connect");
    let mut s = c10.stream().try_clone().unwrap();
    std::io::Write::write_all(&mut s, b"GET /status/201 HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(c10.read_response().unwrap().status, 201);
    let access = nginx.wait_access_log(4, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    // The request served before classify attached has no record; the others do.
    assert_matches_access_log(&exchanges, &access[1..]);
    let old_port = old.local_port();
    let on_old: Vec<_> = exchanges
        .iter()
        .filter(|r| r["client"]["port"] == old_port)
        .collect();
    assert_eq!(on_old.len(), 2);
    for r in on_old {
        assert_eq!(r["upstreams"][0]["outcome"], "response", "{r}");
        assert!(
            r["upstreams"][0]["connect_us"].is_null(),
            "reused pooled connection: {r}"
        );
    }
    let v10 = exchanges
        .iter()
        .find(|r| r["request"]["version"] == "HTTP/1.0")
        .expect("HTTP/1.0 record");
    assert_eq!(v10["response"]["status"], 201);
    // The pooled connection the upstream saw before is the one classify names.
    let pooled = upstream.log()[before - 1].peer_port;
    assert!(
        exchanges
            .iter()
            .any(|r| r["upstreams"][0]["local_port"] == pooled),
        "pooled port {pooled} not named"
    );
}

#[test]
fn ready_within_a_second() {
    require_root();
    let upstream = Upstream::start();
    let nginx = Nginx::start(&Config::proxy(&[upstream.addr().to_string()], None, ""));
    // Other tests' agents do not load their probes meanwhile (see
    // `classify::start`); their traffic may still run.
    let running = classify::start(&["--pid", "nginx"]);
    let took = running.start_up;
    let out = running.stop();
    let said: u64 = out
        .stderr
        .split("ready in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("ready line");
    assert!(said < 1000, "classify said it took {said} ms");
    assert!(
        took < Duration::from_millis(1500),
        "ready line after {took:?}"
    );
    assert!(out.stderr.contains("watching"), "{}", out.stderr);
    drop(nginx);
}
