//! Engine unit tests: scripted transcripts of what the kernel shows for one
//! exchange, written like protocol traces (h2's scripted peers).
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    event::{Endpoint, MsgCursor},
    head::{Head, RequestLine, StatusLine},
    record::ExchangeRecord,
    verdict::{Origin, Outcome, ResponseFrom, Verdict},
};

const MS: u64 = 1_000_000;
const C1: SockId = SockId(1);
const C2: SockId = SockId(2);
const C3: SockId = SockId(3);
const U1: SockId = SockId(11);
const U2: SockId = SockId(12);
const U3: SockId = SockId(13);

fn ep(port: u16) -> Endpoint {
    Endpoint::ip(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A GET request line as the decoder makes it (a query elided, its hash kept).
fn get(target: &str) -> Head {
    crate::head::parse(
        format!("GET {target} HTTP/1.1\r\n").as_bytes(),
        crate::head::QueryPolicy::Elide,
    )
}

fn status(code: u16) -> Head {
    Head::Status(StatusLine {
        version: "HTTP/1.1".into(),
        code,
    })
}

/// A transcript: events at increasing times, fed to one engine.
struct Script {
    engine: Engine,
    t: u64,
    out: Vec<Record>,
    /// Bytes of each socket's last message, as the probes report them with the
    /// next one (0 before a socket's first message).
    last_bytes: std::collections::HashMap<SockId, u64>,
}

impl Script {
    fn new() -> Self {
        Self {
            engine: Engine::new(EngineConfig {
                hold_ns: 0,
                ..EngineConfig::default()
            }),
            t: 1_000 * MS,
            out: Vec::new(),
            last_bytes: std::collections::HashMap::new(),
        }
    }

    fn at(&mut self, ms: u64) -> &mut Self {
        self.t += ms * MS;
        self
    }

    fn ev(&mut self, kind: EventKind) -> &mut Self {
        // Every event but a Tick takes 10 µs: a Tick only tells the time.
        if kind != EventKind::Tick {
            self.t += 10_000;
        }
        let ev = Event {
            ts: self.t,
            pid: 100,
            tid: 100,
            kind,
        };
        self.engine.ingest(ev, &mut self.out);
        self
    }

    fn client(&mut self, sock: SockId, port: u16) -> &mut Self {
        self.ev(EventKind::SockOpen {
            sock,
            owner: 100,
            side: Side::Client,
            how: Opened::FirstUse,
            local: ep(8080),
            peer: ep(port),
            prev_touch: None,
        })
    }

    fn recv(&mut self, sock: SockId, head: Head) -> &mut Self {
        self.tls_recv(sock, head, 80, false)
    }

    /// A received message of `bytes`, its plaintext from a TLS library or not.
    fn tls_recv(&mut self, sock: SockId, head: Head, bytes: u32, tls: bool) -> &mut Self {
        let prev_msg_bytes = self.last_bytes.insert(sock, u64::from(bytes)).unwrap_or(0);
        self.ev(EventKind::Message {
            sock,
            dir: Dir::Recv,
            bytes,
            head,
            prev_touch: None,
            prev_msg_bytes,
            prev_msg_last: 0,
            tls,
            keep_alive: false,
        })
    }

    fn send(&mut self, sock: SockId, head: Head, prev_touch: Option<SockId>) -> &mut Self {
        self.send_promising(sock, head, prev_touch, false)
    }

    /// A send whose head, if it is a response to a client, promised
    /// keep-alive or not (`Connection: keep-alive` within the capture).
    fn send_promising(
        &mut self,
        sock: SockId,
        head: Head,
        prev_touch: Option<SockId>,
        keep_alive: bool,
    ) -> &mut Self {
        let prev_msg_bytes = self.last_bytes.insert(sock, 120).unwrap_or(0);
        self.ev(EventKind::Message {
            sock,
            dir: Dir::Send,
            bytes: 120,
            head,
            prev_touch,
            prev_msg_bytes,
            prev_msg_last: 0,
            tls: false,
            keep_alive,
        })
    }

    /// A request send the probes held back (`held`), emitted only now, with
    /// the older time `at` of the call itself.
    fn held_send(&mut self, sock: SockId, at: u64, prev_touch: Option<SockId>) -> &mut Self {
        let prev_msg_bytes = self.last_bytes.insert(sock, 120).unwrap_or(0);
        let ev = Event {
            ts: at,
            pid: 100,
            tid: 100,
            kind: EventKind::Message {
                sock,
                dir: Dir::Send,
                bytes: 120,
                head: Head::None,
                prev_touch,
                prev_msg_bytes,
                prev_msg_last: 0,
                tls: false,
                keep_alive: false,
            },
        };
        self.engine.ingest(ev, &mut self.out);
        self
    }

    fn connect(
        &mut self,
        sock: SockId,
        upstream_port: u16,
        prev_touch: Option<SockId>,
    ) -> &mut Self {
        self.ev(EventKind::SockOpen {
            sock,
            owner: 100,
            side: Side::Upstream,
            how: Opened::Connect,
            local: ep(0),
            peer: ep(upstream_port),
            prev_touch,
        })
    }

    fn pooled(&mut self, sock: SockId, local_port: u16, upstream_port: u16) -> &mut Self {
        self.ev(EventKind::SockOpen {
            sock,
            owner: 100,
            side: Side::Upstream,
            how: Opened::FirstUse,
            local: ep(local_port),
            peer: ep(upstream_port),
            prev_touch: None,
        })
    }

    fn state(
        &mut self,
        sock: SockId,
        old: TcpState,
        new: TcpState,
        local_port: u16,
        local_close: bool,
    ) -> &mut Self {
        self.ev(EventKind::State {
            sock,
            old,
            new,
            local: ep(local_port),
            peer: ep(0),
            local_close,
            msg: MsgCursor::default(),
            prev_touch: None,
        })
    }

    fn established(&mut self, sock: SockId, local_port: u16) -> &mut Self {
        self.state(
            sock,
            TcpState::SynSent,
            TcpState::Established,
            local_port,
            false,
        )
    }

    fn destroy(&mut self, sock: SockId, local_close: bool) -> &mut Self {
        self.ev(EventKind::Destroy {
            sock,
            local_close,
            msg: MsgCursor::default(),
        })
    }

    fn tick_after(&mut self, ms: u64) -> &mut Self {
        self.at(ms).ev(EventKind::Tick)
    }

    fn finish(&mut self) -> Vec<ExchangeRecord> {
        self.engine.flush(&mut self.out);
        self.out
            .drain(..)
            .filter_map(|r| r.exchange().cloned())
            .collect()
    }

    /// The first record's verdict and its first attempt's outcome.
    fn verdict_and_outcome(&mut self) -> (Verdict, Outcome) {
        let r = self.finish().remove(0);
        (r.verdict, r.upstreams[0].outcome)
    }

    /// A whole exchange on client `c` through kept-alive upstream `u`, its
    /// request held by the probe (sent in the handler that read it).
    fn kept_alive(&mut self, c: SockId, u: SockId, target: &str, code: u16) -> &mut Self {
        self.recv(c, get(target))
            .send(u, Head::None, Some(c))
            .recv(u, status(code))
            .send(c, status(code), Some(u))
    }

    /// Client `c`'s request `target`, sent on a fresh connection `u` to the
    /// upstream (local port `up_local`) in the handler that read it.
    fn forwarded(&mut self, c: SockId, u: SockId, up_local: u16, target: &str) -> &mut Self {
        self.recv(c, get(target))
            .connect(u, 9000, Some(c))
            .established(u, up_local)
            .send(u, get(target), Some(c))
    }

    /// A whole proxied exchange on client `c` through a fresh upstream `u`.
    fn proxied(&mut self, c: SockId, u: SockId, up_local: u16, code: u16) -> &mut Self {
        self.recv(c, get("/a"))
            .connect(u, 9000, Some(c))
            .established(u, up_local)
            .send(u, get("/a"), Some(u))
            .at(2)
            .recv(u, status(code))
            .send(c, status(code), Some(u))
    }
}

#[test]
fn a_proxied_exchange_settles_into_one_record() {
    let mut s = Script::new();
    s.client(C1, 5000).proxied(C1, U1, 40000, 200);
    // Not yet: the connection is kept alive and the settle time has not passed.
    s.tick_after(500);
    assert!(s.out.is_empty());
    s.tick_after(600);
    assert_eq!(s.out.len(), 1, "settled after 1 s of quiet");
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::Ok);
    assert_eq!(r.response.status, Some(200));
    assert_eq!(r.client.port, 5000);
    assert_eq!(r.server.port, 8080);
    assert_eq!(r.upstreams.len(), 1);
    let u = &r.upstreams[0];
    assert_eq!(
        (u.port, u.local_port, u.outcome, u.status),
        (9000, 40000, Outcome::Response, Some(200))
    );
    assert!(u.connect_us.is_some() && u.first_byte_us.unwrap() >= 2000);
    assert!(r.complete);
    assert!(r.hint.is_none());
}

#[test]
fn the_next_request_ends_the_previous_exchange() {
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.recv(C1, get("/one"))
        .send(U1, get("/one"), Some(C1))
        .recv(U1, status(404))
        .send(C1, status(404), Some(U1));
    s.recv(C1, get("/two"));
    assert_eq!(s.out.len(), 1);
    s.send(U1, get("/two"), Some(C1))
        .recv(U1, status(503))
        .send(C1, status(503), Some(U1));
    let rs = s.finish();
    let got: Vec<_> = rs
        .iter()
        .map(|r| {
            (
                r.request.as_ref().unwrap().target.clone(),
                r.verdict,
                r.upstreams.len(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/one".into(), Verdict::ClientError, 1),
            ("/two".into(), Verdict::UpstreamError, 1)
        ]
    );
    // A pooled connection has no connect time.
    assert!(rs
        .iter()
        .all(|r| r.upstreams[0].connect_us.is_none() && r.upstreams[0].local_port == 40000));
}

#[test]
fn a_refused_attempt_chains_to_the_retry_through_its_close() {
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/a"))
        .connect(U1, 9001, Some(C1));
    s.ev(EventKind::Reset {
        sock: U1,
        dir: ResetDir::Received,
        state: TcpState::SynSent,
        unacked: 0,
    })
    .state(U1, TcpState::SynSent, TcpState::Close, 40001, false)
    .ev(EventKind::SockError {
        sock: U1,
        errno: 111,
        state: TcpState::Close,
    })
    .destroy(U1, true)
    // The socket the thread touched last is the failed one (its close).
    .connect(U2, 9002, Some(U1))
    .established(U2, 40002)
    .send(U2, get("/a"), Some(U2))
    .recv(U2, status(200))
    .send(C1, status(200), Some(U2));
    let r = s.finish().remove(0);
    let got: Vec<_> = r
        .upstreams
        .iter()
        .map(|u| (u.port, u.local_port, u.outcome))
        .collect();
    assert_eq!(
        got,
        vec![
            (9001, 40001, Outcome::Refused),
            (9002, 40002, Outcome::Response)
        ]
    );
    assert_eq!(r.verdict, Verdict::Ok);
}

#[test]
fn a_refused_last_attempt_is_upstream_refused() {
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/a"))
        .connect(U1, 9001, Some(C1));
    s.ev(EventKind::Reset {
        sock: U1,
        dir: ResetDir::Received,
        state: TcpState::SynSent,
        unacked: 0,
    })
    .ev(EventKind::SockError {
        sock: U1,
        errno: 111,
        state: TcpState::Close,
    })
    .destroy(U1, true)
    .send(C1, status(502), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::UpstreamRefused);
    assert_eq!(r.response.from, Some(crate::verdict::ResponseFrom::Proxy));
    assert!(r.hint.unwrap().contains("127.0.0.1:9001"));
}

#[test]
fn a_connect_ended_by_an_icmp_error_is_refused_not_a_connect_timeout() {
    // Port or host unreachable by ICMP, met while the proxy held the socket:
    // the error is reported without its code, and the kernel ends the connect
    // at once (SYN_SENT -> CLOSE, not the proxy's close). nginx writes 502.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/a"))
        .connect(U1, 9001, Some(C1))
        .ev(EventKind::SockError {
            sock: U1,
            errno: 0,
            state: TcpState::SynSent,
        })
        .state(U1, TcpState::SynSent, TcpState::Close, 0, false)
        .destroy(U1, true)
        .send(C1, status(502), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(
        (r.verdict, r.upstreams[0].outcome),
        (Verdict::UpstreamRefused, Outcome::Refused),
        "{r:?}"
    );
    assert!(r.hint.unwrap().contains("ICMP"));
}

#[test]
fn identical_concurrent_requests_follow_their_own_thread() {
    // Two exchanges in one loop iteration: read C1, connect U1, read C2, connect U2.
    let mut s = Script::new();
    s.client(C1, 5001).client(C2, 5002);
    s.recv(C1, get("/same"))
        .connect(U1, 9000, Some(C1))
        .recv(C2, get("/same"))
        .connect(U2, 9000, Some(C2));
    s.established(U2, 40002).established(U1, 40001);
    s.send(U2, get("/same"), Some(U2))
        .send(U1, get("/same"), Some(U1));
    s.recv(U2, status(503)).send(C2, status(503), Some(U2));
    s.recv(U1, status(201)).send(C1, status(201), Some(U1));
    let rs = s.finish();
    let got: Vec<_> = rs
        .iter()
        .map(|r| (r.client.port, r.upstreams[0].local_port, r.response.status))
        .collect();
    assert!(got.contains(&(5001, 40001, Some(201))), "{got:?}");
    assert!(got.contains(&(5002, 40002, Some(503))), "{got:?}");
}

#[test]
fn pipelined_requests_open_the_next_exchange_after_the_response() {
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40001, 9000);
    // Both requests arrived in one receive; only the first line was captured.
    s.recv(C1, get("/first"))
        .send(U1, get("/first"), Some(C1))
        .recv(U1, status(200))
        .send(C1, status(200), Some(U1));
    s.send(U1, get("/second"), Some(C1)).recv(U1, status(404));
    let rs = s.finish();
    assert_eq!(rs.len(), 2);
    assert_eq!(
        rs[1].request.as_ref().unwrap().target,
        "/second",
        "taken from the upstream request"
    );
    assert!(
        !rs[1].complete,
        "the second response was never seen on the wire"
    );
}

/// Clients C1 (port 5000) and C2 (5001), kept-alive upstream connections U1
/// (local port 40001) and U2 (40002).
fn two_clients_two_pools() -> Script {
    let mut s = Script::new();
    s.client(C1, 5000)
        .client(C2, 5001)
        .pooled(U1, 40001, 9000)
        .pooled(U2, 40002, 9000);
    s
}

/// A record's client port, request target and response status.
fn who_what(r: &ExchangeRecord) -> (u16, Option<String>, Option<u16>) {
    (
        r.client.port,
        r.request.as_ref().map(|q| q.target.to_string()),
        r.response.status,
    )
}

/// nginx runs the next pipelined request on a connection from a posted event,
/// after the other ready connections of that loop iteration: its upstream
/// request follows a touch of another client's upstream socket. The client
/// response that follows the reply names the owner; the other exchange keeps
/// only its own attempt.
#[test]
fn a_pipelined_request_run_after_other_connections_goes_to_its_own_client() {
    let mut s = two_clients_two_pools();
    // C1's first request (a second one waits in the same receive).
    s.kept_alive(C1, U1, "/first", 200);
    // C2's request in the same iteration.
    s.recv(C2, get("/other")).send(U2, Head::None, Some(C2));
    // C1's pipelined request, run last: the thread last touched U2.
    s.send(U1, get("/second"), Some(U2));
    s.recv(U2, status(201)).send(C2, status(201), Some(U2));
    s.recv(U1, status(404)).send(C1, status(404), Some(U1));
    let rs = s.finish();
    let view: Vec<_> = rs
        .iter()
        .map(|r| {
            let (port, target, code) = who_what(r);
            let ups: Vec<_> = r
                .upstreams
                .iter()
                .map(|u| (u.local_port, u.status))
                .collect();
            (port, target, code, ups)
        })
        .collect();
    assert_eq!(
        view,
        vec![
            (
                5000,
                Some("/first".into()),
                Some(200),
                vec![(40001, Some(200))]
            ),
            (
                5001,
                Some("/other".into()),
                Some(201),
                vec![(40002, Some(201))]
            ),
            (
                5000,
                Some("/second".into()),
                Some(404),
                vec![(40001, Some(404))]
            ),
        ],
        "{rs:#?}"
    );
    assert!(
        !rs[2].complete,
        "inferred: its request line was not captured"
    );
    assert_eq!(s.engine.counters().reattributed_attempts, 1);
    assert_eq!(s.engine.counters().orphan_responses, 0);
}

/// A posted request's send follows the last response on connection C2, so it
/// is first guessed to be C2's next pipelined request; C2 then closes. The
/// guess waits instead of being written, and the response that follows the
/// reply (on C1) claims the attempt; C2 gets no phantom record. Unclaimed, the
/// guess is written as it was.
#[test]
fn a_guess_on_a_connection_that_closed_waits_for_the_reply() {
    for claimed in [true, false] {
        let mut s = two_clients_two_pools();
        s.kept_alive(C1, U1, "/first", 200);
        s.kept_alive(C2, U2, "/last", 200);
        // C1's pipelined request, run after C2's response.
        s.send(U1, get("/second"), Some(C2));
        s.destroy(C2, true);
        s.recv(U1, status(404));
        if claimed {
            s.send(C1, status(404), Some(U1));
        }
        s.tick_after(1500);
        let rs = s.finish();
        let view: Vec<_> = rs.iter().map(who_what).collect();
        let mut want = vec![
            (5000, Some("/first".into()), Some(200)),
            (5001, Some("/last".into()), Some(200)),
        ];
        // Unclaimed, no client got its answer: the proxy's own request (a
        // background update, an include), no record.
        if claimed {
            want.push((5000, Some("/second".into()), Some(404)));
        }
        let mut got = view.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "claimed {claimed}: {rs:#?}");
        assert_eq!(s.engine.counters().unattributed_attempts, 0);
    }
}

/// The same, when the last touch named no exchange at all (an exchange that had
/// answered already takes no new attempt): the attempt waits as an orphan for
/// its client's response, and an orphan nobody claims writes no record.
#[test]
fn an_unclaimed_upstream_request_is_held_then_claimed_or_dropped() {
    let mut s = two_clients_two_pools();
    s.pooled(U3, 40003, 9000);
    s.kept_alive(C2, U2, "/other", 200);
    s.kept_alive(C1, U1, "/first", 200);
    // Posted: after C2's exchange answered, the thread's last touch is U2.
    s.send(U3, get("/second"), Some(U2));
    s.recv(U3, status(200)).send(C1, status(200), Some(U3));
    // Another posted request whose reply never reaches a client.
    s.send(U2, get("/lost"), Some(U3));
    let rs = s.finish();
    assert_eq!(rs.len(), 3, "{rs:#?}");
    assert_eq!(rs[1].upstreams.len(), 1, "{rs:#?}");
    let second = rs
        .iter()
        .find(|r| r.request.as_ref().is_some_and(|q| q.target == "/second"))
        .expect("the claimed request has its record");
    assert_eq!(second.client.port, 5000);
    assert_eq!(second.upstreams[0].local_port, 40003);
    assert_eq!(s.engine.counters().unattributed_attempts, 1, "/lost");
}

#[test]
fn a_client_that_leaves_before_the_response_is_a_client_abort() {
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/slow"))
        .connect(U1, 9000, Some(C1))
        .established(U1, 40001)
        .send(U1, get("/slow"), Some(U1));
    s.at(3000)
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false);
    s.ev(EventKind::Eof {
        sock: C1,
        prev_touch: None,
    });
    s.state(U1, TcpState::Established, TcpState::FinWait1, 40001, true);
    s.state(C1, TcpState::CloseWait, TcpState::LastAck, 8080, true)
        .destroy(C1, false);
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::ClientAbort);
    assert_eq!(r.response.status, None);
    assert_eq!(r.upstreams[0].outcome, Outcome::Aborted);
    assert!(r.hint.unwrap().contains("slow upstream"));
}

#[test]
fn an_attempt_with_no_candidate_is_counted_not_guessed() {
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/a"))
        .connect(U1, 9000, None);
    assert_eq!(s.engine.counters().unattributed_attempts, 1);
    // The request line matches the only exchange waiting: attributed, and counted so.
    s.established(U1, 40001)
        .send(U1, get("/a"), Some(U1))
        .recv(U1, status(200))
        .send(C1, status(200), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(r.upstreams.len(), 1);
    assert_eq!(s.engine.counters().attributed_by_request_line, 1);
    assert_eq!(s.engine.counters().unattributed_attempts, 0);
}

#[test]
fn ticks_anywhere_before_the_settle_time_change_nothing() {
    // The same transcript with a Tick after every event must give the same records.
    fn run(with_ticks: bool) -> Vec<ExchangeRecord> {
        let mut s = Script::new();
        type Step = Box<dyn Fn(&mut Script)>;
        let steps: Vec<Step> = vec![
            Box::new(|s| {
                s.client(C1, 5000);
            }),
            Box::new(|s| {
                s.recv(C1, get("/a"));
            }),
            Box::new(|s| {
                s.connect(U1, 9000, Some(C1));
            }),
            Box::new(|s| {
                s.established(U1, 40001);
            }),
            Box::new(|s| {
                s.send(U1, get("/a"), Some(U1));
            }),
            Box::new(|s| {
                s.recv(U1, status(500));
            }),
            Box::new(|s| {
                s.send(C1, status(500), Some(U1));
            }),
            Box::new(|s| {
                s.recv(C1, get("/b"));
            }),
            Box::new(|s| {
                s.connect(U3, 9000, Some(C1));
            }),
        ];
        for step in &steps {
            step(&mut s);
            if with_ticks {
                s.ev(EventKind::Tick);
            }
        }
        s.finish()
    }
    assert_eq!(run(false), run(true));
}

#[test]
fn tables_are_bounded_and_evictions_counted() {
    let mut s = Script {
        engine: Engine::new(EngineConfig {
            max_exchanges: 2,
            hold_ns: 0,
            ..EngineConfig::default()
        }),
        t: 0,
        out: Vec::new(),
        last_bytes: std::collections::HashMap::new(),
    };
    for i in 0..5u64 {
        s.client(SockId(100 + i), 5000 + i as u16)
            .recv(SockId(100 + i), get("/a"));
    }
    assert_eq!(s.engine.counters().evicted_exchanges, 3);
    assert!(s.engine.open_exchanges() <= 2);
    let rs = s.finish();
    assert_eq!(rs.len(), 5, "evicted exchanges still end in a record");
    assert_eq!(rs.iter().filter(|r| !r.complete).count(), 5);
}

#[test]
fn a_loss_found_after_an_exchange_ended_still_marks_it() {
    let mut s = Script::new();
    s.engine = Engine::new(EngineConfig {
        hold_ns: 300 * MS,
        ..EngineConfig::default()
    });
    let before = s.t;
    s.client(C1, 5000)
        .proxied(C1, U1, 40000, 200)
        .recv(C1, get("/next"));
    assert!(s.out.is_empty(), "held, not written yet");
    // The agent's poll of the loss counters finds a loss since `before`.
    s.at(50).ev(EventKind::Lost {
        events: 2,
        sockets: 0,
        since: Some(before),
    });
    s.tick_after(400);
    assert_eq!(s.out.len(), 1, "written after the hold");
    // In flight when the loss was found: marked too.
    s.send(C1, status(204), None).destroy(C1, false);
    // Started after the window: untouched.
    s.client(C2, 5001)
        .recv(C2, get("/later"))
        .send(C2, status(204), None)
        .destroy(C2, false);
    let rest = s.finish();
    let complete: Vec<_> = rest
        .iter()
        .map(|r| (r.request.as_ref().unwrap().target.clone(), r.complete))
        .collect();
    assert_eq!(
        complete,
        [
            ("/a".into(), false),
            ("/next".into(), false),
            ("/later".into(), true)
        ]
    );
}

#[test]
fn a_loss_found_by_polling_leaves_the_time_to_the_events() {
    // The agent polls its loss counters at the clock's time, which runs ahead of
    // the events while it drains a backlog: the exchange whose close is still in
    // the ring must not settle at the poll's time.
    let mut s = Script::new();
    s.client(C1, 5000).proxied(C1, U1, 40000, 200);
    let events_time = s.engine.now();
    let clock = events_time + 10_000 * MS;
    s.engine.ingest(
        Event {
            ts: clock,
            pid: 0,
            tid: 0,
            kind: EventKind::Lost {
                events: 1,
                sockets: 0,
                since: Some(clock - MS),
            },
        },
        &mut s.out,
    );
    assert_eq!(s.engine.now(), events_time);
    // The backlog's next event is the client's close, 1 ms after its response.
    s.at(1).destroy(C1, false);
    let rs = s.finish();
    assert_eq!(rs.len(), 1);
    assert!(rs[0].complete, "the loss came after the exchange ended");
    assert_eq!(rs[0].verdict, Verdict::Ok);
}

#[test]
fn a_reused_connection_whose_first_exchange_was_lost_serves_the_next_request() {
    let mut s = Script::new();
    // C1's request opens U1; its request and reply on U1 are lost with the ring
    // full, so C1's attempt on U1 never saw a request.
    s.client(C1, 5000)
        .recv(C1, get("/lost"))
        .connect(U1, 9000, Some(C1))
        .established(U1, 40000);
    s.at(5).ev(EventKind::Lost {
        events: 2,
        sockets: 0,
        since: None,
    });
    s.last_bytes.insert(U1, 100);
    // Later, U1 back in the pool carries C2's request (attributed by the loop
    // marker): C2's exchange, not C1's attempt waiting for a request.
    s.client(C2, 5001)
        .recv(C2, get("/b"))
        .send(U1, Head::None, Some(C2))
        .at(1)
        .recv(U1, status(201))
        .send(C2, status(201), Some(U1))
        .destroy(C2, false);
    let records = s.finish();
    let b = records
        .iter()
        .find(|r| r.request.as_ref().is_some_and(|q| q.target == "/b"))
        .expect("a record for /b");
    assert_eq!(b.upstreams.len(), 1, "{b:#?}");
    assert_eq!(b.upstreams[0].status, Some(201));
    assert!(b.complete, "started after the loss: {b:#?}");
    let lost = records
        .iter()
        .find(|r| r.request.as_ref().is_some_and(|q| q.target == "/lost"))
        .expect("a record for /lost");
    assert!(!lost.complete);
}

fn http2_preface() -> Head {
    Head::Request(RequestLine {
        method: "PRI".into(),
        target: "*".into(),
        version: "HTTP/2.0".into(),
        truncated: false,
        query: 0,
    })
}

#[test]
fn http2_connections_write_no_records_and_leave_others_alone() {
    let mut s = Script::new();
    s.client(C1, 5000).client(C2, 5001).pooled(U1, 40000, 9000);
    s.pooled(U2, 40001, 9000).pooled(U3, 40002, 9000);
    // An HTTP/2 client: the preface, then one read with two streams' requests,
    // sent upstream one after the other; frames back to the client, which
    // carry no status line this engine can read.
    s.recv(C1, http2_preface())
        .send(C1, Head::None, Some(C1))
        .recv(C1, Head::None)
        .send(U1, Head::None, Some(C1))
        .send(U2, Head::None, Some(U1))
        .recv(U1, status(500))
        .send(C1, Head::None, Some(U1))
        .recv(U2, status(200))
        .send(C1, Head::None, Some(U2));
    // An HTTP/1.1 client meanwhile, on the pool's third connection.
    s.kept_alive(C2, U3, "/h1", 502);
    s.tick_after(1_100);
    let records = s.finish();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r.request.as_ref().map(|q| q.target.as_str()), Some("/h1"));
    assert_eq!(r.upstreams.len(), 1);
    assert_eq!(r.upstreams[0].local_port, 40002);
    let c = s.engine.counters();
    assert_eq!(c.http2_connections, 1);
    assert_eq!(c.http2_exchanges, 2, "one per stream's request");
    assert_eq!(c.unattributed_attempts, 0);
    assert_eq!(c.orphan_responses, 0);
}

#[test]
fn the_http2_preface_answered_in_http1_is_a_bad_request() {
    // An h2c client on a port without `http2`: nginx reads the preface as a
    // request line and answers 400 (logged as `PRI * HTTP/2.0`).
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, http2_preface())
        .send(C1, status(400), None)
        .close(C1, TcpState::Established);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![("*".into(), Some(400), Verdict::ClientError, vec![])]
    );
    assert_eq!(s.engine.counters().http2_connections, 0);
}

#[test]
fn a_request_whose_client_left_before_it_was_read_is_a_client_abort() {
    // The client sent its request and closed at once: the FIN is in before the
    // proxy reads the request, proxies it, notices the client is gone (499) and
    // closes the upstream connection. Either the probes saw the FIN arrive
    // (ESTABLISHED → CLOSE_WAIT), or the accepted socket was first seen when
    // the proxy read the request, after the FIN, and only its close from
    // CLOSE_WAIT tells.
    for fin_seen in [true, false] {
        let mut s = Script::new();
        s.client(C1, 5000);
        if fin_seen {
            s.state(C1, TcpState::Established, TcpState::CloseWait, 8080, false);
        }
        s.recv(C1, get("/slow"))
            .connect(U1, 9000, Some(C1))
            .established(U1, 40001)
            .send(U1, get("/slow"), Some(U1))
            .state(U1, TcpState::Established, TcpState::FinWait1, 40001, true)
            .state(C1, TcpState::CloseWait, TcpState::LastAck, 8080, true)
            .destroy(C1, false);
        let r = s.finish().remove(0);
        assert_eq!(r.verdict, Verdict::ClientAbort, "FIN seen: {fin_seen}");
        assert_eq!(r.response.status, None);
        assert_eq!(r.upstreams[0].outcome, Outcome::Aborted);
    }
}

#[test]
fn a_forwarded_101_makes_the_connection_a_tunnel() {
    // A WebSocket: the upgrade is one exchange; the frames both ways after it
    // are not HTTP, even one that reads like a request line.
    let frame = || Head::Other {
        len: 7,
        binary: true,
    };
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/ws", 101);
    for _ in 0..3 {
        s.at(50)
            .recv(C1, frame())
            .send(U1, frame(), Some(C1))
            .recv(U1, frame())
            .send(C1, frame(), Some(U1));
    }
    s.recv(C1, get("/in-band"))
        .send(U1, get("/in-band"), Some(C1))
        .recv(U1, frame())
        .send(C1, frame(), Some(U1));
    s.state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .destroy(C1, false);
    let records = s.finish();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].verdict, Verdict::Ok);
    assert_eq!(records[0].response.status, Some(101));
    assert_eq!(s.engine.counters().unattributed_attempts, 0);
}

/// FastCGI (`fastcgi_pass`): a reply whose `Status:` the capture shows is read
/// as any status; one whose status it does not show (PHP-FPM's 200 has no
/// `Status:`, warnings come first on stderr) takes the status the proxy
/// forwards, unless the proxy answered 502 itself (it rejected the reply).
#[test]
fn fastcgi_replies_with_and_without_a_status_line() {
    let fastcgi = |code| {
        Head::Status(StatusLine {
            version: "FastCGI".into(),
            code,
        })
    };
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    for (target, reply, written) in [
        ("/ok", Head::ResponseUnread, 200),
        ("/fatal", Head::ResponseUnread, 500),
        ("/missing", fastcgi(404), 404),
        ("/broken", Head::ResponseUnread, 502),
        ("/php-500", fastcgi(500), 500),
    ] {
        s.recv(C1, get(target))
            .send(
                U1,
                Head::Other {
                    len: 40,
                    binary: true,
                },
                Some(C1),
            )
            .recv(U1, reply)
            .send(C1, status(written), Some(U1));
    }
    let records = s.finish();
    const UPSTREAM: ResponseFrom = ResponseFrom::Upstream;
    const PROXY: ResponseFrom = ResponseFrom::Proxy;
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            let u = &r.upstreams[0];
            (
                r.response.status,
                r.response.from,
                r.verdict,
                u.outcome,
                u.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                Some(200),
                Some(UPSTREAM),
                Verdict::Ok,
                Outcome::Response,
                Some(200)
            ),
            (
                Some(500),
                Some(UPSTREAM),
                Verdict::UpstreamError,
                Outcome::Response,
                Some(500)
            ),
            (
                Some(404),
                Some(UPSTREAM),
                Verdict::ClientError,
                Outcome::Response,
                Some(404)
            ),
            (
                Some(502),
                Some(PROXY),
                Verdict::UpstreamInvalid,
                Outcome::Invalid,
                None
            ),
            (
                Some(500),
                Some(UPSTREAM),
                Verdict::UpstreamError,
                Outcome::Response,
                Some(500)
            ),
        ]
    );
}

/// The upstream's FIN after its response's head: a cut response when the
/// proxy then closes the client connection with nothing more written; a
/// response ended by the close (HTTP/1.0 without a length, FastCGI without
/// `fastcgi_keep_conn`) when the proxy wrote to the client after reading the
/// FIN; and no cut when the proxy's close answers the client's own.
#[test]
fn an_upstream_fin_after_the_head_truncates_only_a_response_left_unfinished() {
    let run = |finished_after_eof: bool, client_first: bool| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .forwarded(C1, U1, 40000, "/a")
            .recv(U1, status(200));
        if !finished_after_eof {
            s.send(C1, status(200), Some(U1));
        }
        s.state(U1, TcpState::Established, TcpState::CloseWait, 40000, false)
            .ev(EventKind::Eof {
                sock: U1,
                prev_touch: None,
            });
        if finished_after_eof {
            s.send(C1, status(200), Some(U1));
        }
        s.state(U1, TcpState::CloseWait, TcpState::LastAck, 40000, true);
        if client_first {
            s.state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
                .state(C1, TcpState::CloseWait, TcpState::LastAck, 8080, true);
        } else {
            s.state(C1, TcpState::Established, TcpState::FinWait1, 8080, true);
        }
        s.verdict_and_outcome()
    };
    assert_eq!(
        run(false, false),
        (Verdict::UpstreamTruncated, Outcome::Truncated)
    );
    assert_eq!(run(true, false), (Verdict::Ok, Outcome::Response));
    assert_eq!(run(false, true), (Verdict::Ok, Outcome::Response));
}

/// nginx buffers a reply (its default) and writes the response only once it
/// read the upstream's FIN, both when the reply ended by closing and when the
/// FIN cut it short of its length. It keeps the connection of a client it
/// promised keep-alive after the first, and closes it after the second,
/// whatever the head had said: a broken promise is the cut. Without the
/// promise (`Connection: close`, or a head longer than the capture) the two
/// still look alike, and the record stays `ok`.
#[test]
fn a_buffered_reply_cut_by_a_fin_breaks_the_keep_alive_its_response_promised() {
    // `closed_after`: when nginx closed the client's connection after the
    // response's last write (ms), if it did.
    let run = |keep_alive: bool, closed_after: Option<u64>| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .forwarded(C1, U1, 40000, "/a")
            .recv(U1, status(200))
            .state(U1, TcpState::Established, TcpState::CloseWait, 40000, false)
            .ev(EventKind::Eof {
                sock: U1,
                prev_touch: None,
            })
            .state(U1, TcpState::CloseWait, TcpState::LastAck, 40000, true)
            .send_promising(C1, status(200), Some(U1), keep_alive);
        if let Some(ms) = closed_after {
            s.at(ms)
                .state(C1, TcpState::Established, TcpState::FinWait1, 8080, true);
        }
        s.verdict_and_outcome()
    };
    assert_eq!(
        run(true, Some(0)),
        (Verdict::UpstreamTruncated, Outcome::Truncated)
    );
    // A close-delimited reply, whole: the promise is kept.
    assert_eq!(run(true, None), (Verdict::Ok, Outcome::Response));
    // No promise seen: a close the client may have asked for.
    assert_eq!(run(false, Some(0)), (Verdict::Ok, Outcome::Response));
    // A close long after: the kept connection's keep-alive timeout.
    assert_eq!(run(true, Some(900)), (Verdict::Ok, Outcome::Response));
}

/// A FIN or reset that the upstream sent right behind its head arrives before
/// the proxy reads the head: it waits in the socket behind the head's bytes.
/// It still cut the reply: the proxy forwards the head, reads the failure, and
/// closes the client connection (nginx: "upstream prematurely closed
/// connection while reading upstream", "recv() failed (104 ...) while reading
/// upstream").
#[test]
fn a_failure_that_arrived_before_the_head_was_read_still_cuts_the_reply() {
    let run = |reset: bool| {
        let mut s = Script::new();
        s.client(C1, 5000).forwarded(C1, U1, 40000, "/a");
        if reset {
            s.upstream_reset(U1, 40000);
        } else {
            s.state(U1, TcpState::Established, TcpState::CloseWait, 40000, false);
        }
        s.recv(U1, status(200)).send(C1, status(200), Some(U1));
        if reset {
            s.ev(EventKind::IoError {
                sock: U1,
                dir: Dir::Recv,
                errno: libc::ECONNRESET,
                prev_touch: Some(C1),
            });
        } else {
            s.ev(EventKind::Eof {
                sock: U1,
                prev_touch: Some(C1),
            })
            .state(U1, TcpState::CloseWait, TcpState::LastAck, 40000, true);
        }
        s.state(C1, TcpState::Established, TcpState::FinWait1, 8080, true);
        s.verdict_and_outcome()
    };
    for reset in [false, true] {
        assert_eq!(
            run(reset),
            (Verdict::UpstreamTruncated, Outcome::Truncated),
            "reset: {reset}"
        );
    }
}

/// An upstream that resets its connection as it closes, right after the last
/// byte of a whole reply: the proxy takes the whole reply in its reads and
/// never meets the reset, forwards it, and closes a client that asked it to
/// (`Connection: close`). Nothing was cut, whether the reset arrived before
/// the proxy read the head or after.
#[test]
fn a_reset_behind_a_whole_reply_that_the_proxy_never_read_cuts_nothing() {
    let run = |reset_first: bool| {
        let mut s = Script::new();
        s.client(C1, 5000).forwarded(C1, U1, 40000, "/a");
        if reset_first {
            s.upstream_reset(U1, 40000);
        }
        s.recv(U1, status(200));
        if !reset_first {
            s.upstream_reset(U1, 40000);
        }
        s.send(C1, status(200), Some(U1))
            .state(C1, TcpState::Established, TcpState::FinWait1, 8080, true)
            .destroy(U1, true);
        s.verdict_and_outcome()
    };
    for reset_first in [true, false] {
        assert_eq!(
            run(reset_first),
            (Verdict::Ok, Outcome::Response),
            "reset first: {reset_first}"
        );
    }
}

/// The same reset behind a whole reply on a kept-alive connection: nginx put
/// the connection back in its pool, whose peek at it fails. The pool learned
/// of the reset there, after the reply: no cut of the exchange it served, even
/// when nginx closes its client afterwards.
#[test]
fn a_reset_behind_a_whole_reply_that_the_pool_peeked_at_cuts_nothing() {
    let run = |peek_before_client_close: bool| {
        let mut s = Script::new();
        s.client(C1, 5000).forwarded(C1, U1, 40000, "/a");
        s.upstream_reset(U1, 40000)
            .recv(U1, status(200))
            .send(C1, status(200), Some(U1));
        let peek = EventKind::PeekError {
            sock: U1,
            errno: libc::ECONNRESET,
            prev_touch: Some(C1),
        };
        if peek_before_client_close {
            s.ev(peek.clone());
        }
        s.state(C1, TcpState::Established, TcpState::FinWait1, 8080, true);
        if !peek_before_client_close {
            s.ev(peek);
        }
        s.destroy(U1, true);
        s.verdict_and_outcome()
    };
    for peek_first in [true, false] {
        assert_eq!(
            run(peek_first),
            (Verdict::Ok, Outcome::Response),
            "peek before the client's close: {peek_first}"
        );
    }
}

/// nginx closes an HTTP/1.0 client's connection after a reply the upstream
/// ended by closing (HTTP/1.0 has no chunks to announce its end), so that close
/// says nothing of a cut when the reply was an HTTP/1.0 one. An HTTP/1.1 reply
/// announces its end: the same close after its upstream's FIN is a cut.
#[test]
fn an_http_1_0_client_closed_after_a_reply_ended_by_its_upstreams_close_got_it_whole() {
    let run = |reply_version: &'static str| {
        let mut s = Script::new();
        let get10 = |t: &str| {
            crate::head::parse(
                format!("GET {t} HTTP/1.0\r\n").as_bytes(),
                crate::head::QueryPolicy::Elide,
            )
        };
        s.client(C1, 5000)
            .recv(C1, get10("/a"))
            .connect(U1, 9000, Some(C1))
            .established(U1, 40000)
            .send(U1, get10("/a"), Some(C1))
            .recv(
                U1,
                Head::Status(StatusLine {
                    version: reply_version.into(),
                    code: 200,
                }),
            )
            .send(C1, status(200), Some(U1))
            .state(U1, TcpState::Established, TcpState::CloseWait, 40000, false)
            .ev(EventKind::Eof {
                sock: U1,
                prev_touch: Some(C1),
            })
            .state(U1, TcpState::CloseWait, TcpState::LastAck, 40000, true)
            .state(C1, TcpState::Established, TcpState::FinWait1, 8080, true);
        s.verdict_and_outcome()
    };
    assert_eq!(run("HTTP/1.0"), (Verdict::Ok, Outcome::Response));
    assert_eq!(
        run("HTTP/1.1"),
        (Verdict::UpstreamTruncated, Outcome::Truncated)
    );
}

#[test]
fn a_client_leaving_a_reply_its_upstream_closed_after_is_the_clients_cut() {
    // An upstream without keep-alive (nginx's default HTTP/1.0) sends the
    // whole reply and closes; nginx holds more than the slow client took.
    // Then the client leaves (a FIN, then a reset with the body unread), or
    // stops reading until nginx gives up on it. The upstream's close was the
    // reply's end; the client cut the response.
    for leaves in [true, false] {
        let mut s = Script::new();
        s.client(C1, 5000)
            .forwarded(C1, U1, 40000, "/big")
            .recv(U1, status(200))
            .send(C1, status(200), Some(U1))
            .at(10)
            .ev(EventKind::Blocked {
                sock: C1,
                msg_bytes: 3_000_000,
            })
            .state(U1, TcpState::Established, TcpState::CloseWait, 40000, false)
            .ev(EventKind::Eof {
                sock: U1,
                prev_touch: None,
            })
            .close(U1, TcpState::CloseWait)
            .at(1000);
        if leaves {
            s.state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
                .close(C1, TcpState::CloseWait)
                .reset_in(C1, 2_000_000);
        } else {
            s.close(C1, TcpState::Established);
        }
        s.destroy(C1, false);
        let r = s.finish().remove(0);
        let verdict = if leaves {
            Verdict::ClientReset
        } else {
            Verdict::ClientAbort
        };
        assert_eq!(
            (r.verdict, r.upstreams[0].outcome),
            (verdict, Outcome::Response),
            "leaves: {leaves}: {r:?}"
        );
        assert_eq!(r.origin, Origin::Client);
    }
}

#[test]
fn a_reset_answering_the_proxys_own_close_leaves_its_timeout() {
    // nginx gives up on a silent upstream (proxy_read_timeout) and closes; the
    // peer, whose socket was gone (its own reset lost), resets in answer to
    // that FIN. nginx writes 504: a timeout, whatever answered its close.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/slow"))
        .connect(U1, 9000, Some(C1))
        .established(U1, 40000)
        .send(U1, get("/slow"), Some(U1))
        .at(2000)
        .close(U1, TcpState::Established)
        .reset_in(U1, 1)
        .destroy(U1, false)
        .send(C1, status(504), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(
        (r.verdict, r.upstreams[0].outcome),
        (Verdict::UpstreamTimeout, Outcome::Timeout),
        "{r:?}"
    );
}

#[test]
fn a_client_fin_that_meets_the_proxy_finishing_is_no_abort() {
    // A client that closes once it has the response (it sent `Connection:
    // close`), an upstream without keep-alive: nginx writes the last bytes,
    // then closes the upstream and the client in the same handler; the
    // client's FIN arrives in between. The close came right after this
    // exchange's own write. Against it, the client leaving mid-body: its FIN
    // wakes nginx, which drops the upstream with nothing done before it.
    let run = |touched: Option<SockId>| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .forwarded(C1, U1, 40000, "/a")
            .recv(U1, status(200))
            .send(C1, status(200), Some(U1))
            .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
            .ev(EventKind::State {
                sock: U1,
                old: TcpState::Established,
                new: TcpState::FinWait1,
                local: ep(40000),
                peer: ep(9000),
                local_close: true,
                msg: MsgCursor::default(),
                prev_touch: touched,
            })
            .close(C1, TcpState::CloseWait)
            .destroy(C1, false);
        s.verdict_and_outcome()
    };
    assert_eq!(run(Some(C1)), (Verdict::Ok, Outcome::Response));
    assert_eq!(run(None), (Verdict::ClientAbort, Outcome::Aborted));
    assert_eq!(run(Some(C2)), (Verdict::ClientAbort, Outcome::Aborted));
}

#[test]
fn a_cache_lock_waiters_timed_out_request_is_claimed_by_its_504() {
    // `proxy_cache_lock`: C1 holds the lock and times out (504 at 1 s); C2
    // waited on the lock, whose timeout fires then: nginx sends C2's request
    // from that timer, right after writing C1's 504, so the thread's last
    // touch is C1, which had answered (its request looks like the proxy's
    // own). It times out too; the 504 nginx writes to C2 names its socket.
    let mut s = Script::new();
    s.client(C1, 5000)
        .client(C2, 5001)
        .recv(C1, get("/lock/a"))
        .recv(C2, get("/lock/a"))
        .connect(U1, 9000, Some(C1))
        .established(U1, 40001)
        .send(U1, get("/lock/a"), Some(U1))
        .at(1000)
        .close(U1, TcpState::Established)
        .send(C1, status(504), Some(U1))
        .connect(U2, 9000, Some(C1))
        .established(U2, 40002)
        .send(U2, get("/lock/a"), Some(U2))
        .at(2000)
        .close(U2, TcpState::Established)
        .send(C2, status(504), Some(U2));
    let rs = s.finish();
    for (port, local) in [(5000, 40001), (5001, 40002)] {
        let r = rs.iter().find(|r| r.client.port == port).unwrap();
        let attempts: Vec<(u16, Outcome)> = r
            .upstreams
            .iter()
            .map(|u| (u.local_port, u.outcome))
            .collect();
        assert_eq!(
            (r.verdict, attempts),
            (Verdict::UpstreamTimeout, vec![(local, Outcome::Timeout)]),
            "{r:?}"
        );
    }
    assert_eq!(s.engine.counters().subrequests, 0);
}

impl Script {
    /// The upstream resets connection `u` (local port `local`): the reset,
    /// the state change it makes, and the kernel's error report.
    fn upstream_reset(&mut self, u: SockId, local: u16) -> &mut Self {
        self.reset_in(u, 0)
            .state(u, TcpState::Established, TcpState::Close, local, false)
            .ev(EventKind::SockError {
                sock: u,
                errno: libc::ECONNRESET,
                state: TcpState::Close,
            })
    }

    fn reset_in(&mut self, sock: SockId, unacked: u32) -> &mut Self {
        self.ev(EventKind::Reset {
            sock,
            dir: ResetDir::Received,
            state: TcpState::Unknown,
            unacked,
        })
    }

    /// The proxy closes `sock` itself (a FIN out of ESTABLISHED or CLOSE_WAIT).
    fn close(&mut self, sock: SockId, from: TcpState) -> &mut Self {
        let to = if from == TcpState::CloseWait {
            TcpState::LastAck
        } else {
            TcpState::FinWait1
        };
        self.state(sock, from, to, 0, true)
    }
}

#[test]
fn a_client_reset_before_it_acknowledged_the_body_cuts_the_response() {
    let mut s = Script::new();
    // The reply was read whole and its connection kept; the client stopped
    // reading, then reset with bytes of the body still unacknowledged.
    s.client(C1, 5000)
        .pooled(U1, 40000, 9000)
        .kept_alive(C1, U1, "/big", 200)
        .at(1500)
        .reset_in(C1, 2_000_000)
        .destroy(C1, true);
    // The same with everything acknowledged: the client had the whole response.
    s.client(C2, 5001)
        .pooled(U2, 40001, 9000)
        .kept_alive(C2, U2, "/small", 200)
        .at(5)
        .reset_in(C2, 0)
        .destroy(C2, true);
    let rs = s.finish();
    let cut = rs.iter().find(|r| r.client.port == 5000).unwrap();
    assert_eq!(cut.verdict, Verdict::ClientReset);
    assert_eq!(
        (cut.response.status, cut.response.from),
        (Some(200), Some(ResponseFrom::Upstream))
    );
    assert_eq!(cut.upstreams[0].outcome, Outcome::Response);
    assert!(cut.duration_us >= 1_500_000, "ends at the reset");
    assert!(cut.hint.as_deref().unwrap().contains("nginx logs 200"));
    let whole = rs.iter().find(|r| r.client.port == 5001).unwrap();
    assert_eq!(whole.verdict, Verdict::Ok);
}

#[test]
fn a_client_leaving_mid_body_while_the_upstream_streams_is_an_abort() {
    for (reset, verdict) in [(false, Verdict::ClientAbort), (true, Verdict::ClientReset)] {
        let mut s = Script::new();
        s.client(C1, 5000)
            .pooled(U1, 40000, 9000)
            .kept_alive(C1, U1, "/stream", 200)
            .at(500);
        if reset {
            s.reset_in(C1, 0);
        } else {
            s.state(C1, TcpState::Established, TcpState::CloseWait, 8080, false);
        }
        // nginx drops the upstream, then closes the client: back to back.
        s.close(U1, TcpState::Established);
        if reset {
            s.destroy(C1, true);
        } else {
            s.close(C1, TcpState::CloseWait).destroy(C1, false);
        }
        let r = s.finish().remove(0);
        assert_eq!(r.verdict, verdict, "reset: {reset}");
        assert_eq!(
            (r.response.status, r.response.from),
            (Some(200), Some(ResponseFrom::Upstream))
        );
        assert_eq!(r.upstreams[0].outcome, Outcome::Aborted);
        assert_eq!(r.origin, Origin::Client);
    }
}

#[test]
fn a_pooled_connection_evicted_after_its_client_left_was_not_aborted() {
    // The reply was whole and its connection went back to the pool; the client
    // then left, and the pool evicted the connection while serving another
    // client, before this client's connection was closed.
    let mut s = Script::new();
    s.client(C1, 5000)
        .client(C2, 5001)
        .pooled(U1, 40000, 9000)
        .kept_alive(C1, U1, "/a", 200)
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .recv(C2, get("/b"))
        .close(U1, TcpState::Established)
        .connect(U2, 9000, Some(C2))
        .established(U2, 40001)
        .send(U2, get("/b"), Some(C2))
        .close(C1, TcpState::CloseWait)
        .destroy(C1, false);
    let rs = s.finish();
    let r = rs.iter().find(|r| r.client.port == 5000).unwrap();
    assert_eq!(r.verdict, Verdict::Ok);
    assert_eq!(r.upstreams[0].outcome, Outcome::Response);
}

#[test]
fn an_upstream_silent_mid_body_until_the_read_timeout_truncates() {
    // Unbuffered: the head went out at once; buffered: the proxy wrote it only
    // when it gave up on the upstream, right before closing the client.
    for buffered in [false, true] {
        let mut s = Script::new();
        s.client(C1, 5000)
            .forwarded(C1, U1, 40000, "/stall")
            .recv(U1, status(200));
        if !buffered {
            s.send(C1, status(200), Some(U1));
        }
        s.at(800).close(U1, TcpState::Established);
        if buffered {
            s.send(C1, status(200), Some(U1));
        }
        s.close(C1, TcpState::Established);
        let r = s.finish().remove(0);
        assert_eq!(
            r.verdict,
            Verdict::UpstreamTruncated,
            "buffered: {buffered}"
        );
        assert_eq!(r.upstreams[0].outcome, Outcome::Timeout);
        assert_eq!(r.response.from, Some(ResponseFrom::Upstream));
        assert!(
            r.hint.as_deref().unwrap().contains("went silent"),
            "{:?}",
            r.hint
        );
        assert!(r.duration_us >= 800_000);
    }
    // A reply read whole, its connection closed at once (no keep-alive), then
    // the client's closed after the response: nothing was dropped.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40000, "/a")
        .recv(U1, status(200))
        .close(U1, TcpState::Established)
        .send(C1, status(200), Some(U1))
        .close(C1, TcpState::Established);
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::Ok);
}

#[test]
fn a_request_that_never_came_whole_is_the_clients_timeout_not_the_proxys() {
    // nginx's client_header_timeout: the first line came, the rest never did;
    // the proxy closed the connection without a response.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/slow"))
        .at(1_200)
        .close(C1, TcpState::Established)
        .destroy(C1, false);
    // `return 444`: closed at once, no response, the proxy's own doing.
    s.client(C2, 5001)
        .recv(C2, get("/r444"))
        .close(C2, TcpState::Established)
        .destroy(C2, false);
    let rs = s.finish();
    let slow = rs.iter().find(|r| r.client.port == 5000).unwrap();
    assert_eq!(
        (slow.verdict, slow.origin),
        (Verdict::ClientError, Origin::Client)
    );
    assert_eq!(slow.response.status, None);
    assert!(slow.duration_us >= 1_200_000, "{}", slow.duration_us);
    let hint = slow.hint.as_deref().unwrap();
    assert!(hint.contains("408") && hint.contains("1.20 s"), "{hint}");
    let closed = rs.iter().find(|r| r.client.port == 5001).unwrap();
    assert_eq!(closed.verdict, Verdict::ProxyError);
}

#[test]
fn hints_name_the_upstreams_own_status_when_the_proxy_replaced_it() {
    // proxy_intercept_errors + error_page: the upstream's 503 became a 404.
    let mut s = Script::new();
    s.client(C1, 5000)
        .pooled(U1, 40000, 9000)
        .recv(C1, get("/a"))
        .send(U1, Head::None, Some(C1))
        .recv(U1, status(503))
        .send(C1, status(404), Some(U1));
    // A status line, then a header too big for the proxy's buffer: its own 502.
    s.client(C2, 5001)
        .pooled(U2, 40001, 9000)
        .recv(C2, get("/b"))
        .send(U2, Head::None, Some(C2))
        .recv(U2, status(200))
        .send(C2, status(502), Some(U2));
    let rs = s.finish();
    let replaced = rs.iter().find(|r| r.client.port == 5000).unwrap();
    assert_eq!(replaced.verdict, Verdict::ClientError);
    let hint = replaced.hint.as_deref().unwrap();
    assert!(
        hint.contains("answered 503") && hint.contains("wrote 404"),
        "{hint}"
    );
    let big = rs.iter().find(|r| r.client.port == 5001).unwrap();
    assert_eq!(big.verdict, Verdict::UpstreamInvalid);
    let hint = big.hint.as_deref().unwrap();
    assert!(
        hint.contains("status line (200)") && hint.contains("too big header"),
        "{hint}"
    );
}

#[test]
fn a_pipelined_request_the_proxy_answers_itself_gets_a_record() {
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40001, 9000);
    // Three requests in one receive: the first proxied, the second answered by
    // the proxy itself (`return 503`), the third proxied.
    s.recv(C1, get("/first"))
        .send(U1, get("/first"), Some(C1))
        .recv(U1, status(200))
        .send(C1, status(200), Some(U1))
        .send(C1, status(503), None)
        .send(U1, get("/third"), Some(C1))
        .recv(U1, status(201))
        .send(C1, status(201), Some(U1));
    let rs = s.finish();
    let got: Vec<_> = rs.iter().map(who_what).collect();
    assert_eq!(
        got,
        [
            (5000, Some("/first".into()), Some(200)),
            (5000, None, Some(503)),
            (5000, Some("/third".into()), Some(201)),
        ]
    );
    assert_eq!(rs[1].verdict, Verdict::ProxyError);
    assert!(!rs[1].complete, "its request line was never seen");
}

#[test]
fn a_tunnel_closed_by_its_client_is_not_an_abort() {
    // A WebSocket: 101 forwarded, frames both ways, the client closes; the proxy
    // closes the upstream and then the client, back to back.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40000, "/ws")
        .recv(U1, status(101))
        .send(C1, status(101), Some(U1))
        .at(80)
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .close(U1, TcpState::Established)
        .close(C1, TcpState::CloseWait)
        .destroy(C1, false);
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::Ok);
    assert_eq!(r.upstreams[0].outcome, Outcome::Response);
}

#[test]
fn a_retried_attempt_that_sent_a_status_line_then_broke_is_not_a_response() {
    // The head never came whole: a status line, then a reset; nginx retried on
    // another connection, which failed the same way, and wrote its own 502.
    let mut s = Script::new();
    s.client(C1, 5000).recv(C1, get("/a"));
    for (u, port) in [(U1, 40001), (U2, 40002)] {
        s.connect(u, 9000, Some(C1))
            .established(u, port)
            .send(u, get("/a"), Some(C1))
            .recv(u, status(200))
            .at(100)
            .reset_in(u, 0)
            .ev(EventKind::IoError {
                sock: u,
                dir: Dir::Recv,
                errno: libc::ECONNRESET,
                prev_touch: None,
            })
            .close(u, TcpState::Close);
    }
    s.send(C1, status(502), None);
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::UpstreamReset);
    let outcomes: Vec<Outcome> = r.upstreams.iter().map(|u| u.outcome).collect();
    assert_eq!(outcomes, [Outcome::Reset, Outcome::Reset]);
}

#[test]
fn an_auth_check_that_allowed_the_request_is_a_response_a_rejected_head_is_not() {
    // `auth_request`: the check's 200, then the request itself on another
    // connection. Over a pooled connection (kept: still open when the next
    // attempt starts), over a fresh one the check's server closes (another
    // request line than the next one's); then, as control, a retry after a
    // head the proxy rejected: the same request again, its connection closed
    // first.
    let run = |case: &str| {
        let mut s = Script::new();
        s.client(C1, 5000).recv(C1, get("/app/x"));
        match case {
            "pooled" => {
                s.pooled(U1, 40001, 9001).send(U1, Head::None, Some(C1));
            }
            _ => {
                let line = if case == "fresh" { "/check" } else { "/app/x" };
                s.connect(U1, 9001, Some(C1))
                    .established(U1, 40001)
                    .send(U1, get(line), Some(C1));
            }
        }
        s.at(1).recv(U1, status(200));
        if case == "fresh" {
            s.state(U1, TcpState::Established, TcpState::CloseWait, 40001, false)
                .close(U1, TcpState::CloseWait);
        }
        if case == "retried" {
            s.close(U1, TcpState::Established);
        }
        s.at(2)
            .connect(U2, 9000, Some(U1))
            .established(U2, 40002)
            .send(U2, get("/app/x"), Some(U1))
            .at(3)
            .recv(U2, status(200))
            .send(C1, status(200), Some(U2));
        let r = s.finish().remove(0);
        let outcomes: Vec<Outcome> = r.upstreams.iter().map(|u| u.outcome).collect();
        (r.verdict, outcomes)
    };
    for case in ["pooled", "fresh"] {
        assert_eq!(
            run(case),
            (Verdict::Ok, vec![Outcome::Response, Outcome::Response]),
            "{case}"
        );
    }
    assert_eq!(
        run("retried"),
        (Verdict::Ok, vec![Outcome::Invalid, Outcome::Response])
    );
}

#[test]
fn a_client_that_stops_mid_body_while_it_streams_upstream_is_the_clients_timeout() {
    // proxy_request_buffering off: the request went upstream as it came; the
    // body stopped, and after client_body_timeout the proxy closed both.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40000, "/upload")
        .at(1_000)
        .close(U1, TcpState::Established)
        .ev(EventKind::State {
            sock: C1,
            old: TcpState::Established,
            new: TcpState::FinWait1,
            local: ep(8080),
            peer: ep(5000),
            local_close: true,
            msg: MsgCursor {
                dir: Some(Dir::Recv),
                bytes: 1_000,
                last: 1_000 * MS,
            },
            prev_touch: None,
        })
        .destroy(C1, false);
    let r = s.finish().remove(0);
    assert_eq!(
        (r.verdict, r.origin),
        (Verdict::ClientError, Origin::Client)
    );
    assert_eq!(r.upstreams[0].outcome, Outcome::Aborted);
}

#[test]
fn a_body_the_proxy_refuses_while_streaming_it_drops_the_attempt() {
    // client_max_body_size reached mid-stream: the proxy answers 413 itself and
    // closes the upstream connection it was passing the body to.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40000, "/upload")
        .at(2)
        .send(C1, status(413), None)
        .close(U1, TcpState::Established);
    let r = s.finish().remove(0);
    assert_eq!(r.verdict, Verdict::ClientError);
    assert_eq!(r.response.from, Some(ResponseFrom::Proxy));
    assert_eq!(r.upstreams[0].outcome, Outcome::Aborted);
    let hint = r.hint.unwrap();
    assert!(
        hint.contains("The proxy answered 413 itself before"),
        "{hint}"
    );
}

/// The upstream's RST on an idle pooled connection (`reset` after the reply).
fn idle_reset(s: &mut Script, u: SockId) {
    s.ev(EventKind::Reset {
        sock: u,
        dir: ResetDir::Received,
        state: TcpState::Established,
        unacked: 0,
    })
    .ev(EventKind::SockError {
        sock: u,
        errno: libc::ECONNRESET,
        state: TcpState::Close,
    });
}

#[test]
fn a_pooled_connection_reset_while_idle_then_taken_is_a_reset_attempt() {
    // nginx takes the connection, finds its pending ECONNRESET before sending
    // (no read, no write), closes it and retries on a fresh connection.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/one", 200).at(300);
    idle_reset(&mut s, U1);
    s.at(10)
        .recv(C1, get("/two"))
        .destroy(U1, true)
        .connect(U2, 9000, Some(U1))
        .established(U2, 40002)
        .send(U2, get("/two"), Some(U2))
        .recv(U2, status(200))
        .send(C1, status(200), Some(U2));
    // Without a retry (`proxy_next_upstream off`): the proxy's own 502.
    s.at(300);
    idle_reset(&mut s, U2);
    s.at(10)
        .recv(C1, get("/three"))
        .destroy(U2, true)
        .send(C1, status(502), Some(U2));
    let rs = s.finish();
    assert_eq!(
        attempts_by_port(&rs),
        vec![
            ("/one".into(), Verdict::Ok, vec![(40000, Outcome::Response)]),
            (
                "/two".into(),
                Verdict::Ok,
                vec![(40000, Outcome::Reset), (40002, Outcome::Response)]
            ),
            (
                "/three".into(),
                Verdict::UpstreamReset,
                vec![(40002, Outcome::Reset)]
            ),
        ]
    );
    let hint = rs[2].hint.as_deref().unwrap_or_default();
    assert!(hint.contains("idled in the proxy's pool"), "{hint}");
    // The retry is attributed through the failed connection, not guessed.
    assert_eq!(s.engine.counters().attributed_by_request_line, 0);
}

#[test]
fn the_pool_closing_a_reset_idle_connection_itself_is_no_attempt() {
    // nginx's keep-alive pool peeks at an idle connection (`MSG_PEEK`), finds
    // it reset and closes it, here right after reading a client's request
    // that waits for its body: no attempt of that exchange.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/one", 200).at(300);
    idle_reset(&mut s, U1);
    s.at(10).recv(C1, get("/two"));
    s.ev(EventKind::PeekError {
        sock: U1,
        errno: libc::ECONNRESET,
        prev_touch: Some(C1),
    })
    .destroy(U1, true)
    .connect(U2, 9000, Some(C1))
    .established(U2, 40002)
    .send(U2, get("/two"), Some(U2))
    .recv(U2, status(200))
    .send(C1, status(200), Some(U2));
    let rs = s.finish();
    let two = &rs[1];
    let ups: Vec<_> = two
        .upstreams
        .iter()
        .map(|u| (u.local_port, u.outcome))
        .collect();
    assert_eq!(ups, vec![(40002, Outcome::Response)]);
}

/// A thread reads a client's request and sends it on a kept-alive connection
/// (a send the probes hold back until its reply), reads another exchange's
/// whole reply, forwards it, and closes that reply's connection, which the
/// upstream had reset behind it. The held send comes out later, when the
/// kept-alive connection's FIN arrives (its upstream answers and closes), with
/// its own, older time: it is not the thread's action before the close, and
/// the close is no attempt of the waiting exchange.
#[test]
fn a_held_send_released_late_is_no_later_action_of_its_thread() {
    let mut s = Script::new();
    s.client(C3, 5003)
        .forwarded(C3, U2, 40002, "/zero")
        .recv(U2, status(503))
        .send(C3, status(503), Some(U2))
        .state(C3, TcpState::Established, TcpState::FinWait1, 8080, true)
        .at(2);
    s.client(C1, 5000).forwarded(C1, U1, 40000, "/one").at(1);
    s.client(C2, 5001).recv(C2, get("/two"));
    let sent_at = s.t + 10_000;
    s.at(1)
        .recv(U1, status(200))
        .upstream_reset(U1, 40000)
        .send(C1, status(200), Some(U1))
        .held_send(U2, sent_at, Some(C2))
        .state(U2, TcpState::Established, TcpState::CloseWait, 40002, false)
        .destroy(U1, true)
        .state(C1, TcpState::Established, TcpState::FinWait1, 8080, true)
        .recv(U2, status(404))
        .send(C2, status(404), Some(U2));
    let rs = s.finish();
    assert_eq!(
        attempts_by_port(&rs),
        vec![
            (
                "/zero".into(),
                Verdict::UpstreamError,
                vec![(40002, Outcome::Response)]
            ),
            ("/one".into(), Verdict::Ok, vec![(40000, Outcome::Response)]),
            (
                "/two".into(),
                Verdict::ClientError,
                vec![(40002, Outcome::Response)]
            ),
        ]
    );
}

/// Records of a finished script: target, verdict, and each attempt's local
/// port and outcome.
#[allow(clippy::type_complexity)]
fn attempts_by_port(rs: &[ExchangeRecord]) -> Vec<(String, Verdict, Vec<(u16, Outcome)>)> {
    rs.iter()
        .map(|r| {
            let ups = r
                .upstreams
                .iter()
                .map(|u| (u.local_port, u.outcome))
                .collect();
            (
                r.request.as_ref().unwrap().target.to_string(),
                r.verdict,
                ups,
            )
        })
        .collect()
}

/// Records of a finished script: target, response status, verdict, upstream
/// outcomes.
fn summary(rs: &[ExchangeRecord]) -> Vec<(String, Option<u16>, Verdict, Vec<Outcome>)> {
    rs.iter()
        .map(|r| {
            (
                r.request
                    .as_ref()
                    .map_or("-".into(), |q| q.target.to_string()),
                r.response.status,
                r.verdict,
                r.upstreams.iter().map(|u| u.outcome).collect(),
            )
        })
        .collect()
}

#[test]
fn a_background_update_after_a_stale_hit_is_no_request_of_the_client() {
    // A stale cache hit answered at once, then the proxy's own request for the
    // same target (proxy_cache_background_update); the client's next requests
    // on the connection keep their own responses.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/page", 200).at(1500);
    s.recv(C1, get("/page"))
        .send(C1, status(200), None)
        .send(U1, get("/page"), Some(C1))
        .at(500)
        .recv(U1, status(200));
    s.kept_alive(C1, U1, "/x", 200);
    s.kept_alive(C1, U1, "/status/503", 503);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![
            (
                "/page".into(),
                Some(200),
                Verdict::Ok,
                vec![Outcome::Response]
            ),
            ("/page".into(), Some(200), Verdict::Ok, vec![]),
            ("/x".into(), Some(200), Verdict::Ok, vec![Outcome::Response]),
            (
                "/status/503".into(),
                Some(503),
                Verdict::UpstreamError,
                vec![Outcome::Response]
            ),
        ]
    );
    assert_eq!(s.engine.counters().subrequests, 1);
}

#[test]
fn slices_fetched_while_the_response_streams_are_no_requests_of_the_client() {
    // The slice module: the first range with the request, the next ones each
    // sent after writing the previous one to the client; then a client that
    // closes its connection, as curl does once it has the whole body.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40001, "/big")
        .recv(U1, status(206))
        .send(C1, status(200), Some(U1));
    for _ in 0..3 {
        s.send(U1, get("/big"), Some(C1))
            .at(1)
            .recv(U1, status(206));
    }
    s.at(1)
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .destroy(C1, true);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![(
            "/big".into(),
            Some(200),
            Verdict::Ok,
            vec![Outcome::Response]
        )]
    );
    assert_eq!(s.engine.counters().subrequests, 3);
}

#[test]
fn an_include_fetched_for_an_answered_exchange_is_dropped_at_the_next_request() {
    // An SSI include: the proxy's own request for another target once the page
    // started, guessed as a pipelined request until the client's next request
    // shows that none was pending.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/page.html", 200)
        .send(U1, get("/include"), Some(C1))
        .recv(U1, status(200));
    s.at(5).kept_alive(C1, U1, "/next", 404);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![
            (
                "/page.html".into(),
                Some(200),
                Verdict::Ok,
                vec![Outcome::Response]
            ),
            (
                "/next".into(),
                Some(404),
                Verdict::ClientError,
                vec![Outcome::Response]
            ),
        ]
    );
    assert_eq!(s.engine.counters().subrequests, 1);
}

#[test]
fn a_response_lost_to_a_full_ring_does_not_shift_the_connections_next_exchanges() {
    // /b's response event never arrives (the ring was full): the next request
    // line ends /b, incomplete, and /c and /d keep their own responses.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/a", 200);
    s.recv(C1, get("/b"))
        .send(U1, Head::None, Some(C1))
        .recv(U1, status(503));
    s.kept_alive(C1, U1, "/c", 200);
    s.kept_alive(C1, U1, "/d", 404);
    let rs = s.finish();
    let got: Vec<_> = rs
        .iter()
        .map(|r| {
            (
                r.request.as_ref().unwrap().target.to_string(),
                r.response.status,
                r.complete,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a".into(), Some(200), true),
            ("/b".into(), None, false),
            ("/c".into(), Some(200), true),
            ("/d".into(), Some(404), true),
        ]
    );
    assert_eq!(s.engine.counters().unanswered_before_next_request, 1);
}

#[test]
fn a_refused_connect_closed_after_another_clients_request_stays_its_own() {
    // The thread reads /b's request between /a's connect and the close of that
    // refused connect: the refusal is /a's, not a pooled connection of /b's.
    let mut s = Script::new();
    s.client(C1, 5000).client(C2, 5001);
    s.recv(C1, get("/a")).connect(U1, 9001, Some(C1));
    s.recv(C2, get("/b"));
    s.ev(EventKind::Reset {
        sock: U1,
        dir: ResetDir::Received,
        state: TcpState::SynSent,
        unacked: 0,
    })
    .state(U1, TcpState::SynSent, TcpState::Close, 40001, false)
    .ev(EventKind::SockError {
        sock: U1,
        errno: 111,
        state: TcpState::Close,
    })
    .destroy(U1, true)
    .send(C1, status(502), Some(U1))
    .connect(U2, 9000, Some(C2))
    .established(U2, 40002)
    .send(U2, get("/b"), Some(U2))
    .recv(U2, status(200))
    .send(C2, status(200), Some(U2));
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![
            (
                "/a".into(),
                Some(502),
                Verdict::UpstreamRefused,
                vec![Outcome::Refused]
            ),
            ("/b".into(), Some(200), Verdict::Ok, vec![Outcome::Response]),
        ]
    );
}

#[test]
fn a_stream_cut_by_a_worker_shutting_down_is_the_proxys_doing() {
    // An old worker after a reload: its worker_shutdown_timeout runs out 150 ms
    // after the upstream's last event, it closes the upstream and the client,
    // and exits half a millisecond later.
    // `exit`: none, seen before the exchange ended, or after (its record
    // built and held by then).
    let run = |exit: Option<bool>| {
        let mut s = Script::new();
        // Records held as the agent holds them, for the loss checks.
        s.engine = Engine::new(EngineConfig {
            hold_ns: 500 * MS,
            ..EngineConfig::default()
        });
        s.client(C1, 5000)
            .recv(C1, get("/events"))
            .connect(U1, 9000, Some(C1))
            .established(U1, 40000)
            .send(U1, get("/events"), Some(U1))
            .recv(U1, status(200))
            .send(C1, status(200), Some(U1))
            .at(150)
            .close(U1, TcpState::Established)
            .close(C1, TcpState::Established);
        let exited = EventKind::Exit {
            task: 100,
            group_dead: true,
        };
        if exit == Some(true) {
            s.ev(exited.clone());
        }
        s.destroy(C1, false).destroy(U1, false);
        if exit == Some(false) {
            s.ev(exited);
        }
        let r = s.finish().remove(0);
        (
            r.verdict,
            r.upstreams[0].outcome,
            r.hint.unwrap_or_default(),
        )
    };
    for before_the_end in [true, false] {
        let (verdict, outcome, hint) = run(Some(before_the_end));
        assert_eq!((verdict, outcome), (Verdict::ProxyError, Outcome::Aborted));
        assert!(hint.contains("worker_shutdown_timeout"), "{hint}");
    }
    // The same cut without the exit: the proxy gave up on a silent upstream.
    let (verdict, outcome, _) = run(None);
    assert_eq!(
        (verdict, outcome),
        (Verdict::UpstreamTruncated, Outcome::Timeout)
    );
}

#[test]
fn a_worker_killed_mid_request_is_the_proxys_failure_not_a_configuration() {
    let mut s = Script::new();
    s.client(C1, 5000).forwarded(C1, U1, 40001, "/slow");
    // A kept-alive exchange answered before the exit stays as it was.
    s.client(C2, 5001)
        .pooled(U2, 40002, 9000)
        .kept_alive(C2, U2, "/done", 200);
    s.at(400)
        .ev(EventKind::Exit {
            task: 100,
            group_dead: true,
        })
        .destroy(C1, false)
        .destroy(U1, false)
        .destroy(C2, false);
    // The dead worker's exchange waits out the settle time (a request held on
    // a pooled connection may still come): written after the other.
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![
            (
                "/done".into(),
                Some(200),
                Verdict::Ok,
                vec![Outcome::Response]
            ),
            (
                "/slow".into(),
                None,
                Verdict::ProxyError,
                vec![Outcome::Aborted]
            ),
        ]
    );
    let hint = rs[1].hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("exited") && hint.contains("killed or crashed"),
        "{hint}"
    );
    assert!(rs[1].duration_us >= 400_000, "{}", rs[1].duration_us);
}

#[test]
fn a_client_that_half_closes_and_is_answered_did_not_abort() {
    // The client shuts down its sending side after its request and reads on;
    // the proxy goes on (`proxy_ignore_client_abort on`) and answers the
    // upstream's failure: that failure is the verdict.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40001, "/slow")
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .at(2000)
        .ev(EventKind::Reset {
            sock: U1,
            dir: ResetDir::Received,
            state: TcpState::Established,
            unacked: 0,
        })
        .ev(EventKind::IoError {
            sock: U1,
            dir: Dir::Recv,
            errno: libc::ECONNRESET,
            prev_touch: Some(C1),
        })
        .destroy(U1, true)
        .send(C1, status(502), Some(U1));
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![(
            "/slow".into(),
            Some(502),
            Verdict::UpstreamReset,
            vec![Outcome::Reset]
        )]
    );
}

#[test]
fn a_response_blocked_on_a_slow_reader_does_not_settle_until_it_moves() {
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/big", 200);
    s.ev(EventKind::Blocked {
        sock: C1,
        msg_bytes: 4_000_000,
    });
    // Far past the settle time: still going.
    s.tick_after(3000);
    assert!(s.out.is_empty(), "settled while blocked");
    s.ev(EventKind::Progress {
        sock: C1,
        dir: Dir::Send,
        msg_bytes: 10_000_000,
    });
    s.tick_after(1100);
    let rs = s.finish();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].verdict, Verdict::Ok);
    assert!(rs[0].duration_us >= 3_000_000, "{}", rs[0].duration_us);
}

#[test]
fn a_slow_reader_the_proxy_resets_is_the_clients_abort() {
    // nginx's send_timeout with reset_timedout_connection on: the proxy's own
    // RST ends the connection, and the ECONNRESET it leaves is no client reset.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.kept_alive(C1, U1, "/big", 200);
    s.ev(EventKind::Blocked {
        sock: C1,
        msg_bytes: 4_000_000,
    })
    .at(3000)
    .state(C1, TcpState::Established, TcpState::Close, 8080, false)
    .ev(EventKind::Reset {
        sock: C1,
        dir: ResetDir::Sent,
        state: TcpState::Close,
        unacked: 0,
    })
    .ev(EventKind::SockError {
        sock: C1,
        errno: libc::ECONNRESET,
        state: TcpState::Close,
    })
    .destroy(C1, true);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![(
            "/big".into(),
            Some(200),
            Verdict::ClientAbort,
            vec![Outcome::Response]
        )]
    );
    assert!(rs[0].duration_us >= 3_000_000, "{}", rs[0].duration_us);
    let hint = rs[0].hint.as_deref().unwrap_or_default();
    assert!(hint.contains("stopped reading"), "{hint}");
}

#[test]
fn an_upstream_fin_the_proxy_never_read_cuts_nothing() {
    // nginx's default HTTP/1.0 to the upstream, which closes right after its
    // length-delimited reply: nginx stops reading at the reply's end, so that
    // FIN arrives unread before nginx closes the connection itself, then writes
    // the response and closes the client's (`Connection: close`).
    let run = |eof_read: bool| {
        let mut s = Script::new();
        s.client(C1, 5000).proxied(C1, U1, 40000, 200).state(
            U1,
            TcpState::Established,
            TcpState::CloseWait,
            40000,
            false,
        );
        if eof_read {
            s.ev(EventKind::Eof {
                sock: U1,
                prev_touch: None,
            });
        }
        s.close(U1, TcpState::CloseWait)
            .close(C1, TcpState::Established);
        s.verdict_and_outcome()
    };
    assert_eq!(run(false), (Verdict::Ok, Outcome::Response));
    // A FIN the proxy read before the client's close cut the body.
    assert_eq!(run(true), (Verdict::UpstreamTruncated, Outcome::Truncated));
}

#[test]
fn a_connection_the_proxy_drops_before_its_request_is_a_rejected_upstream() {
    // A TLS upstream whose certificate fails nginx's verification: connected,
    // the handshake's ciphertext is no event, nginx closes at once and writes
    // 502. The upstream answering the alert with a FIN first changes nothing.
    let run = |upstream_fin_first: bool| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .recv(C1, get("/a"))
            .connect(U1, 9443, Some(C1))
            .established(U1, 40000)
            .at(2);
        let from = if upstream_fin_first {
            s.state(U1, TcpState::Established, TcpState::CloseWait, 40000, false);
            TcpState::CloseWait
        } else {
            TcpState::Established
        };
        s.close(U1, from).send(C1, status(502), Some(U1));
        let r = s.finish().remove(0);
        (
            r.verdict,
            r.upstreams[0].outcome,
            r.hint.unwrap_or_default(),
        )
    };
    for fin_first in [false, true] {
        let (verdict, outcome, hint) = run(fin_first);
        assert_eq!(
            (verdict, outcome),
            (Verdict::UpstreamInvalid, Outcome::Invalid)
        );
        assert!(hint.contains("certificate"), "{hint}");
    }
}

#[test]
fn bytes_that_are_no_http_end_as_the_upstreams_or_the_proxys_fault() {
    // An upstream that speaks first and stays open: nginx logs 009, writes
    // nothing, and closes at its read timeout.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40000, "/ssh")
        .recv(
            U1,
            Head::Other {
                len: 21,
                binary: false,
            },
        )
        .at(60_000)
        .close(U1, TcpState::Established)
        .close(C1, TcpState::Established);
    let r = s.finish().remove(0);
    assert_eq!(
        (r.verdict, r.response.status, r.upstreams[0].outcome),
        (Verdict::UpstreamInvalid, None, Outcome::Invalid)
    );
    // HTTP/2 frames to an HTTP/1 request (`listen 80 http2` before nginx 1.25):
    // the client cannot read them.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/a"))
        .send(
            C1,
            Head::Other {
                len: 57,
                binary: true,
            },
            None,
        )
        .close(C1, TcpState::Established);
    let r = s.finish().remove(0);
    assert_eq!((r.verdict, r.response.status), (Verdict::ProxyError, None));
    assert!(r.hint.unwrap_or_default().contains("http2"));
}

#[test]
fn a_connect_made_from_a_timer_keeps_its_completed_handshake() {
    // `limit_req` with a burst delays the request: nginx connects from a
    // timer (no touch names the exchange), and the attempt is found by its
    // request line at the first send, after the connect completed.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/x"))
        .at(300)
        .connect(U1, 9000, None)
        .established(U1, 40000)
        .send(U1, get("/x"), None)
        .reset_in(U1, 0)
        .ev(EventKind::SockError {
            sock: U1,
            errno: libc::ECONNRESET,
            state: TcpState::Close,
        })
        .send(C1, status(502), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(
        (r.verdict, r.upstreams[0].outcome),
        (Verdict::UpstreamReset, Outcome::Reset)
    );
    assert!(r.upstreams[0].connect_us.is_some());
}

#[test]
fn a_background_update_under_a_rewritten_uri_writes_no_record() {
    // A stale hit answered from the cache, then the proxy's own update of it
    // under the URI `proxy_pass` rewrote (`/bg/x` → `/x`), going on after the
    // client has left.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.recv(C1, get("/bg/x"))
        .send(C1, status(200), None)
        .send(U1, get("/x"), Some(C1))
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .close(C1, TcpState::CloseWait)
        .destroy(C1, true)
        .recv(U1, status(200))
        .tick_after(1500);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![("/bg/x".into(), Some(200), Verdict::Ok, vec![])]
    );
    assert_eq!(s.engine.counters().subrequests, 1);
}

#[test]
fn a_mirror_request_beside_the_exchanges_own_is_not_its_attempt() {
    // `mirror` with `proxy_pass http://shadow$request_uri`: the shadow gets the
    // same request line while the exchange's own attempt still waits. nginx
    // never runs two attempts of one request at once: the shadow's is the
    // proxy's own, and its 500 decides nothing.
    let mut s = Script::new();
    s.client(C1, 5000)
        .forwarded(C1, U1, 40000, "/m")
        .connect(U2, 9001, Some(U1))
        .established(U2, 40001)
        .send(U2, get("/m"), Some(U1))
        .at(1)
        .recv(U2, status(500))
        .recv(U1, status(200))
        .send(C1, status(200), Some(U1));
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![("/m".into(), Some(200), Verdict::Ok, vec![Outcome::Response])]
    );
    assert_eq!(rs[0].upstreams[0].port, 9000);
    assert_eq!(s.engine.counters().subrequests, 1);
}

#[test]
fn delayed_requests_for_one_url_each_get_their_own_attempt() {
    // `limit_req` with a burst: two clients ask for the same URL, and nginx
    // connects for each from its own timer, the first still waiting on its
    // reply when the second goes out.
    let mut s = Script::new();
    s.client(C1, 5000).client(C2, 5001);
    s.recv(C1, get("/slow")).recv(C2, get("/slow")).at(100);
    for (u, port) in [(U1, 40000), (U2, 40001)] {
        s.connect(u, 9000, None)
            .established(u, port)
            .send(u, get("/slow"), None)
            .at(100);
    }
    s.recv(U1, status(200))
        .send(C1, status(200), Some(U1))
        .recv(U2, status(201))
        .send(C2, status(201), Some(U2));
    let mut rs = summary(&s.finish());
    rs.sort_by_key(|r| r.1);
    assert_eq!(
        rs,
        vec![
            (
                "/slow".into(),
                Some(200),
                Verdict::Ok,
                vec![Outcome::Response]
            ),
            (
                "/slow".into(),
                Some(201),
                Verdict::Ok,
                vec![Outcome::Response]
            ),
        ]
    );
}

#[test]
fn a_delayed_request_with_another_query_is_not_a_waiting_clients() {
    // `limit_req` delays an HTTP/1 client's request and an HTTP/2 stream's
    // for the same path (the stream's frames are not read: no exchange of its
    // own to match). nginx sends the stream's first, from a timer, on the pool
    // the client's request then uses. The records elide queries; their hashes
    // tell the stream's request from the client's.
    let mut s = Script::new();
    s.client(C1, 5000).pooled(U1, 40000, 9000);
    s.recv(C1, get("/slow?page=1")).at(100);
    // The stream's request and its reply (forwarded in frames, unseen).
    s.send(U1, get("/slow?page=9"), None)
        .recv(U1, status(200))
        .at(100);
    // The client's, from its own timer.
    s.send(U1, get("/slow?page=1"), None)
        .recv(U1, status(201))
        .send(C1, status(201), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(r.response.status, Some(201));
    let statuses: Vec<_> = r.upstreams.iter().map(|u| u.status).collect();
    assert_eq!(statuses, [Some(201)], "{:?}", r.upstreams);
}

#[test]
fn a_retried_status_with_no_server_left_is_the_upstreams_error() {
    // `proxy_next_upstream http_503` and the group's other server down: nginx
    // takes the 503 as a failure, finds no live upstream, and writes 502.
    // A 200 replaced by the proxy's 502 was a header it rejected.
    let run = |theirs: u16| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .forwarded(C1, U1, 40000, "/a")
            .recv(U1, status(theirs))
            .close(U1, TcpState::Established)
            .send(C1, status(502), None);
        let r = s.finish().remove(0);
        (
            r.verdict,
            r.upstreams[0].outcome,
            r.hint.unwrap_or_default(),
        )
    };
    let (verdict, outcome, hint) = run(503);
    assert_eq!(
        (verdict, outcome),
        (Verdict::UpstreamError, Outcome::Response)
    );
    assert!(hint.contains("no live upstreams"), "{hint}");
    let (verdict, outcome, _) = run(200);
    assert_eq!(
        (verdict, outcome),
        (Verdict::UpstreamInvalid, Outcome::Invalid)
    );
}

#[test]
fn a_tls_upstreams_reset_of_the_close_notify_after_its_fin_is_no_failure() {
    // An HTTP/1.0 upstream over TLS sends its whole reply and closes; nginx
    // ends the connection with a `close_notify`, which the closed socket
    // answers with a reset (the alert unacknowledged), and the alert's write
    // fails with EPIPE. The response then goes out whole.
    let run = |unacked: u32| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .recv(C1, get("/a"))
            .connect(U1, 9443, Some(C1))
            .established(U1, 40000)
            .send(U1, get("/a"), Some(U1));
        s.tls_recv(U1, status(200), 97, true)
            .state(U1, TcpState::Established, TcpState::CloseWait, 40000, false)
            .reset_in(U1, unacked)
            .ev(EventKind::SockError {
                sock: U1,
                errno: libc::EPIPE,
                state: TcpState::Close,
            })
            .destroy(U1, true)
            .send(C1, status(200), Some(U1))
            // `Connection: close`: nginx closes the client right after.
            .close(C1, TcpState::Established)
            .destroy(C1, false);
        s.verdict_and_outcome()
    };
    assert_eq!(run(31), (Verdict::Ok, Outcome::Response));
    // Whatever the proxy still sent: the upstream had answered and closed.
    assert_eq!(run(500), (Verdict::Ok, Outcome::Response));
}

#[test]
fn an_upload_answered_early_and_closed_is_the_apps_answer() {
    // An app answers 413 to a large upload without reading it, in one segment
    // with its body, and closes: its FIN, then a reset for the upload's bytes
    // still coming (1.8 MB unacknowledged), and the proxy's next write of the
    // body fails with EPIPE, all before the proxy forwards the whole answer
    // and closes the client's connection.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/upload"))
        .connect(U1, 9000, Some(C1))
        .established(U1, 40000)
        .send(U1, get("/upload"), Some(U1))
        .recv(U1, status(413))
        .state(U1, TcpState::Established, TcpState::CloseWait, 40000, false)
        .reset_in(U1, 1_801_344)
        .ev(EventKind::SockError {
            sock: U1,
            errno: libc::EPIPE,
            state: TcpState::Close,
        })
        .destroy(U1, true)
        .send(C1, status(413), Some(U1))
        .close(C1, TcpState::Established)
        .destroy(C1, false);
    assert_eq!(
        s.verdict_and_outcome(),
        (Verdict::ClientError, Outcome::Response)
    );
}

#[test]
fn a_delayed_request_sent_after_another_clients_response_is_not_that_clients() {
    // `limit_req` delays C2's request. Its timer fires in the loop iteration
    // that just answered C1 on the pooled connection U1, so the send's last
    // touch is C1, whose exchange already has its response. The reply is
    // forwarded to C2: the attempt is C2's.
    let mut s = Script::new();
    s.client(C1, 5000).client(C2, 5001).pooled(U1, 40000, 9000);
    s.recv(C1, get("/lq/a"))
        .recv(C2, get("/lq/b"))
        .send(U1, get("/a"), Some(C1))
        .at(20)
        .recv(U1, status(200))
        .send(C1, status(200), Some(U1))
        .send(U1, get("/b"), Some(C1))
        .recv(C1, get("/next"))
        .send(C1, status(204), None)
        .at(50)
        .recv(U1, status(201))
        .send(C2, status(201), Some(U1));
    let rs = s.finish();
    let got: Vec<_> = rs
        .iter()
        .map(|r| {
            (
                r.request.as_ref().map(|q| q.target.to_string()),
                r.response.status,
                r.upstreams.iter().map(|u| u.status).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert!(
        got.contains(&(Some("/lq/b".into()), Some(201), vec![Some(201)])),
        "{got:?}"
    );
    assert!(
        got.contains(&(Some("/lq/a".into()), Some(200), vec![Some(200)])),
        "{got:?}"
    );
}

#[test]
fn delayed_requests_connecting_one_after_another_find_their_clients() {
    // One timer releases three delayed requests: three connects in a row, each
    // touching the one before, then their sends. `proxy_pass` rewrites the
    // path, so no request line matches its client's.
    let mut s = Script::new();
    let (c3, u3) = (SockId(3), SockId(13));
    s.client(C1, 5000).client(C2, 5001).client(c3, 5002);
    s.recv(C1, get("/lq/x?q=1"))
        .recv(C2, get("/lq/x?q=2"))
        .recv(c3, get("/lq/x?q=3"))
        .at(50);
    s.connect(U1, 9000, None).established(U1, 40001);
    s.connect(U2, 9000, Some(U1)).established(U2, 40002);
    s.connect(u3, 9000, Some(U2)).established(u3, 40003);
    s.send(U1, get("/x?q=1"), Some(C1))
        .send(U2, get("/x?q=2"), Some(U1))
        .send(u3, get("/x?q=3"), Some(U2))
        .at(50);
    s.recv(U1, status(201))
        .send(C1, status(201), Some(U1))
        .recv(U2, status(202))
        .send(C2, status(202), Some(U2))
        .recv(u3, status(203))
        .send(c3, status(203), Some(u3));
    let mut got: Vec<_> = s
        .finish()
        .iter()
        .map(|r| {
            (
                r.response.status,
                r.upstreams.iter().map(|u| u.status).collect::<Vec<_>>(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (Some(201), vec![Some(201)]),
            (Some(202), vec![Some(202)]),
            (Some(203), vec![Some(203)])
        ]
    );
}

#[test]
fn a_delayed_request_sent_after_a_stream_goes_to_the_client_with_its_query() {
    // A timer sends an HTTP/1 client's delayed request in an iteration that
    // served an HTTP/2 connection last: the thread's touch names a stream, the
    // request's query names the client.
    let mut s = Script::new();
    let h2 = SockId(7);
    s.client(h2, 6000).client(C1, 5000).pooled(U1, 40000, 9000);
    s.recv(h2, http2_preface())
        .send(h2, Head::None, Some(h2))
        .recv(C1, get("/lq/x?q=1"))
        .at(50)
        .recv(h2, Head::None)
        .send(U1, get("/x?q=1"), Some(h2))
        .recv(U1, status(201))
        .send(C1, status(201), Some(U1));
    let r = s.finish().remove(0);
    assert_eq!(r.response.status, Some(201));
    let statuses: Vec<_> = r.upstreams.iter().map(|u| u.status).collect();
    assert_eq!(statuses, [Some(201)]);
}

#[test]
fn an_error_page_fallback_keeps_the_failure_it_covered() {
    // `proxy_intercept_errors on; error_page 502 503 /fallback;` (no `=`): the
    // first upstream answers 503 or resets, the fallback answers 200, and nginx
    // sends the fallback's body under the 503 or its own 502.
    let run = |first: Option<u16>| {
        let mut s = Script::new();
        s.client(C1, 5000)
            .recv(C1, get("/fb/a"))
            .connect(U1, 9000, Some(C1))
            .established(U1, 40000)
            .send(U1, get("/a"), Some(U1));
        let written = match first {
            Some(code) => {
                s.recv(U1, status(code)).close(U1, TcpState::Established);
                code
            }
            None => {
                s.reset_in(U1, 0).destroy(U1, true);
                502
            }
        };
        s.connect(U2, 9001, Some(U1))
            .established(U2, 40001)
            .send(U2, get("/fallback"), Some(U2))
            .recv(U2, status(200))
            .close(U2, TcpState::Established)
            .send(C1, status(written), Some(U2));
        let r = s.finish().remove(0);
        let outcomes: Vec<_> = r.upstreams.iter().map(|u| u.outcome).collect();
        (r.verdict, outcomes)
    };
    assert_eq!(
        run(Some(503)),
        (
            Verdict::UpstreamError,
            vec![Outcome::Response, Outcome::Response]
        )
    );
    assert_eq!(
        run(None),
        (
            Verdict::UpstreamReset,
            vec![Outcome::Reset, Outcome::Response]
        )
    );
}

#[test]
fn a_streamed_upload_going_on_after_an_early_answer_is_no_new_attempt() {
    // `proxy_request_buffering off`: the app answers 401 without reading the
    // upload, its header in one write and its 7-byte body in another; between
    // them the proxy sends the next piece of the client's body.
    let mut s = Script::new();
    s.client(C1, 5000)
        .pooled(U1, 40000, 9000)
        .recv(C1, get("/upload"))
        .send(U1, get("/upload"), Some(C1))
        .recv(U1, status(401))
        .recv(C1, Head::None)
        .send(U1, Head::None, Some(C1))
        .recv(
            U1,
            Head::Other {
                len: 7,
                binary: false,
            },
        )
        .close(U1, TcpState::Established)
        .send(C1, status(401), Some(U1))
        .close(C1, TcpState::Established)
        .destroy(C1, false);
    let r = s.finish().remove(0);
    let outcomes: Vec<_> = r.upstreams.iter().map(|u| u.outcome).collect();
    assert_eq!(
        (r.verdict, outcomes),
        (Verdict::ClientError, vec![Outcome::Response])
    );
}

/// nginx met the upstream's reset mid-body and ends its TLS client's
/// connection: `SSL_shutdown` sends its `close_notify`, and nginx waits for the
/// client's answer before it closes the socket. A client that closes at the
/// alert sends its FIN before nginx's close; the response was cut all the
/// same.
#[test]
fn a_tls_clients_close_at_the_proxys_close_notify_after_a_cut_is_a_truncation() {
    let mut s = Script::new();
    s.client(C1, 5000);
    s.tls_recv(C1, get("/a"), 80, true)
        .connect(U1, 9000, Some(C1))
        .established(U1, 40000)
        .send(U1, get("/a"), Some(U1))
        .recv(U1, status(200))
        .send(C1, status(200), Some(U1))
        .at(20)
        .upstream_reset(U1, 40000)
        .ev(EventKind::IoError {
            sock: U1,
            dir: Dir::Recv,
            errno: libc::ECONNRESET,
            prev_touch: Some(U1),
        })
        .destroy(U1, true)
        .ev(EventKind::TlsShutdown { sock: C1 })
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .state(C1, TcpState::CloseWait, TcpState::LastAck, 8080, true);
    assert_eq!(
        s.verdict_and_outcome(),
        (Verdict::UpstreamTruncated, Outcome::Truncated)
    );
}

#[test]
fn a_tls_clients_reset_of_the_close_notify_loses_nothing() {
    // A TLS client reads the whole response and closes; the proxy's
    // `close_notify` then meets a closed socket, whose RST leaves those 31
    // bytes unacknowledged. Plain bytes unacknowledged are response lost.
    let run = |tls: bool, unacked: u32| {
        let mut s = Script::new();
        s.client(C1, 5000);
        s.tls_recv(C1, get("/a"), 80, tls)
            .send(C1, status(200), None)
            .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
            .reset_in(C1, unacked)
            .destroy(C1, true);
        s.finish().remove(0).verdict
    };
    assert_eq!(run(true, 31), Verdict::Ok);
    assert_eq!(run(true, 4000), Verdict::ClientReset);
    assert_eq!(run(false, 31), Verdict::ClientReset);
}

#[test]
fn a_reset_after_the_proxys_close_loses_only_what_the_client_never_had() {
    // nginx wrote a 120-byte response and closed first (its FIN); the client
    // then reset, `after_ms` after that last write, leaving `unacked` bytes
    // unacknowledged (the FIN takes one).
    let run_with = |tls: bool, unacked: u32, after_ms: u64, proxy_closed: bool| {
        let mut s = Script::new();
        s.client(C1, 5000);
        s.tls_recv(C1, get("/a"), 80, tls)
            .send(C1, status(200), None);
        if proxy_closed {
            s.state(C1, TcpState::Established, TcpState::FinWait1, 8080, true);
        }
        s.at(after_ms).reset_in(C1, unacked).destroy(C1, false);
        s.finish().remove(0).verdict
    };
    let run = |tls, unacked, after_ms| run_with(tls, unacked, after_ms, true);
    // Only the FIN: the client had every byte.
    assert_eq!(run(false, 1, 0), Verdict::Ok);
    assert_eq!(run(true, 1, 0), Verdict::Ok);
    // Plain bytes the client never acknowledged: it did not have them all.
    assert_eq!(run(false, 121, 0), Verdict::ClientReset);
    // Over TLS, the response's record (120 + 29), the `close_notify` (31) and
    // the FIN: a client that closed as soon as it read the response, its
    // delayed ACK not yet sent.
    assert_eq!(run(true, 181, 0), Verdict::Ok);
    // The reset can overtake the proxy's close (its alert went out first).
    assert_eq!(run_with(true, 180, 0, false), Verdict::Ok);
    assert_eq!(run_with(false, 180, 0, false), Verdict::ClientReset);
    // But not long after the write (a received segment is acknowledged within
    // 200 ms), nor more than the response could have put on the wire.
    assert_eq!(run(true, 181, 300), Verdict::ClientReset);
    assert_eq!(run(true, 4000, 0), Verdict::ClientReset);
}

#[test]
fn a_response_does_not_claim_a_reply_whose_status_it_does_not_carry() {
    // An HTTP/2 stream's upstream request that found no exchange (an orphan)
    // on the keep-alive pool its HTTP/1 neighbours share: its 503 came back
    // just before an HTTP/1 client's 200 went out, right after the thread
    // touched that connection.
    let mut s = Script::new();
    s.client(C2, 5001)
        .pooled(U1, 40000, 9000)
        .pooled(U2, 40001, 9000);
    s.send(U1, get("/s503"), None)
        .recv(C2, get("/ok"))
        .send(U2, Head::None, Some(C2))
        .recv(U2, status(200))
        .recv(U1, status(503))
        .send(C2, status(200), Some(U1))
        .tick_after(1500);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![(
            "/ok".into(),
            Some(200),
            Verdict::Ok,
            vec![Outcome::Response]
        )]
    );
    assert_eq!(rs[0].upstreams[0].local_port, 40001);
    assert_eq!(s.engine.counters().reattributed_attempts, 0);
}

#[test]
fn a_handshake_that_outlasts_a_short_connect_timeout_is_a_timeout() {
    // `proxy_connect_timeout 50ms` and a TLS upstream that never handshakes:
    // closed soon after connecting with no request, as a rejected
    // certificate is, but nginx writes 504: its timeout.
    let mut s = Script::new();
    s.client(C1, 5000)
        .recv(C1, get("/a"))
        .connect(U1, 9443, Some(C1))
        .established(U1, 40000)
        .at(50)
        .close(U1, TcpState::Established)
        .send(C1, status(504), Some(U1));
    assert_eq!(
        s.verdict_and_outcome(),
        (Verdict::UpstreamTimeout, Outcome::Timeout)
    );
}

#[test]
fn a_pipelined_request_dropped_when_its_client_left_keeps_its_record() {
    // Two requests in one segment; the client reads the first answer and
    // leaves while the second waits on its upstream: nginx closes that
    // upstream connection at once and logs 499. Not the proxy's own request.
    let mut s = Script::new();
    s.client(C1, 5000)
        .proxied(C1, U1, 40000, 200)
        .connect(U2, 9000, Some(C1))
        .established(U2, 40001)
        .send(U2, get("/slow"), None)
        .at(300)
        .state(C1, TcpState::Established, TcpState::CloseWait, 8080, false)
        .close(U2, TcpState::Established)
        .close(C1, TcpState::CloseWait)
        .destroy(C1, false);
    let rs = s.finish();
    assert_eq!(
        summary(&rs),
        vec![
            ("/a".into(), Some(200), Verdict::Ok, vec![Outcome::Response]),
            (
                "/slow".into(),
                None,
                Verdict::ClientAbort,
                vec![Outcome::Aborted]
            ),
        ]
    );
}
