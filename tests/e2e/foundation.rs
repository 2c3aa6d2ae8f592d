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
