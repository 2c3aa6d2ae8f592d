//! Bad input never crashes the engine and never yields a wrong confident verdict.
//! Property tests over the decoder (arbitrary ring-buffer records), first-line
//! parsing (arbitrary bytes), recordings (arbitrary text) and the engine
//! (arbitrary event sequences). They run for a bounded number of cases in CI
//! (`PROPTEST_CASES` raises it by hand); failures are kept in
//! `tests/fuzz.proptest-regressions` and replayed first.
use classifier::{
    decode::Decoder,
    event::{
        Dir, Endpoint, Event, EventKind, MsgCursor, Opened, ResetDir, Side, SockId, TcpState,
        UnixPath,
    },
    head::{self, Head, QueryPolicy, RequestLine, StatusLine},
    record::Record,
    recording,
    verdict::{Outcome, ResponseFrom},
    Engine, EngineConfig,
};
use proptest::prelude::*;

/// 512 cases per property in CI; `PROPTEST_CASES=1000000` for a long run by hand.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_arbitrary_records_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let _ = d.push(&bytes, &mut out);
        d.flush(u64::MAX, &mut out);
    }

    #[test]
    fn records_with_a_valid_kind_and_garbage_fields_never_panic(kind in 1u32..12, rest in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = kind.to_le_bytes().to_vec();
        bytes.extend(rest);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let _ = d.push(&bytes, &mut out);
        d.flush(u64::MAX, &mut out);
        for ev in out {
            // Whatever decoded serializes (recordings) and feeds the engine.
            let json = serde_json::to_string(&ev).unwrap();
            let back: Event = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, ev);
        }
    }

    #[test]
    fn first_lines_never_panic_and_keep_no_raw_bytes(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        match head::parse(&line, QueryPolicy::Elide) {
            Head::Request(r) => {
                prop_assert!(!r.method.is_empty());
                prop_assert!(!r.target.contains('\n') && !r.target.contains(' '));
                // An elided query never survives.
                if let Some(q) = r.target.find('?') {
                    prop_assert_eq!(&r.target[q + 1..], head::ELIDED);
                }
            }
            Head::Status(s) => prop_assert!((100..1000).contains(&s.code)),
            Head::Other { len, .. } => prop_assert_eq!(usize::from(len), line.len()),
            Head::None => prop_assert!(line.is_empty()),
            // A FastCGI response record's header, version 1.
            Head::ResponseUnread => prop_assert_eq!(line.first(), Some(&1)),
        }
    }

    #[test]
    fn arbitrary_recordings_are_errors_not_panics(text in "\\PC{0,300}") {
        if let Ok((_, events)) = recording::read(text.as_bytes()) {
            for e in events {
                let _ = e;
            }
        }
    }

    #[test]
    fn arbitrary_event_sequences_never_panic_and_every_record_is_well_formed(
        events in proptest::collection::vec(event(), 0..80)
    ) {
        let mut engine = Engine::new(EngineConfig { max_exchanges: 16, max_sockets: 16, max_dead_sockets: 8, ..EngineConfig::default() });
        let mut out = Vec::new();
        let mut ts = 1_000_000;
        for kind in events {
            ts += 250_000_000;
            engine.ingest(Event { ts, pid: 7, tid: 7, kind }, &mut out);
        }
        engine.flush(&mut out);
        well_formed(&out)?;
    }
}

/// What every record must satisfy whatever the input: a verdict about an upstream
/// names one, a client abort's status is a forwarded one, and the record serializes.
fn well_formed(out: &[Record]) -> Result<(), TestCaseError> {
    for r in out {
        if let Record::Exchange(e) = r {
            if e.verdict.as_str().starts_with("upstream_") && e.verdict.as_str() != "upstream_error"
            {
                prop_assert!(!e.upstreams.is_empty(), "{:?}", e);
            }
            // A client abort carries a status only when the client left mid-body
            // (the upstream's header was forwarded and the proxy dropped that
            // attempt), or stopped reading until the proxy gave up on it (any
            // response, the proxy's own included; its hint says so).
            let stopped_reading = e
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("The client stopped reading"));
            if matches!(e.verdict.as_str(), "client_abort")
                && e.response.status.is_some()
                && !stopped_reading
            {
                prop_assert!(e.response.from == Some(ResponseFrom::Upstream), "{:?}", e);
                prop_assert!(
                    e.upstreams
                        .last()
                        .is_some_and(|u| u.outcome == Outcome::Aborted),
                    "{:?}",
                    e
                );
            }
        }
        prop_assert!(serde_json::to_string(r).is_ok());
    }
    Ok(())
}

fn sock() -> impl Strategy<Value = SockId> {
    (1u64..6).prop_map(SockId)
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    // Three TCP endpoints and a unix socket's path.
    (0u16..4).prop_map(|p| match p {
        3 => Endpoint {
            unix: Some(UnixPath::new(b"/run/php/php8.2-fpm.sock")),
            ..Endpoint::default()
        },
        p => Endpoint::ip("127.0.0.1".parse().unwrap(), 8000 + p),
    })
}

fn head() -> impl Strategy<Value = Head> {
    prop_oneof![
        Just(Head::None),
        Just(Head::Request(RequestLine {
            method: "GET".into(),
            target: "/a".into(),
            version: "HTTP/1.1".into(),
            truncated: false,
            query: 0,
        })),
        (100u16..600).prop_map(|code| Head::Status(StatusLine {
            version: "HTTP/1.1".into(),
            code
        })),
        (0u16..200, any::<bool>()).prop_map(|(len, binary)| Head::Other { len, binary }),
    ]
}

fn state() -> impl Strategy<Value = TcpState> {
    (1u8..13).prop_map(TcpState::from)
}

fn dir() -> impl Strategy<Value = Dir> {
    prop_oneof![Just(Dir::Recv), Just(Dir::Send)]
}

fn event() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (
            sock(),
            any::<bool>(),
            any::<bool>(),
            endpoint(),
            endpoint(),
            proptest::option::of(sock())
        )
            .prop_map(|(sock, client, connect, local, peer, prev_touch)| {
                EventKind::SockOpen {
                    sock,
                    owner: 7,
                    side: if client { Side::Client } else { Side::Upstream },
                    how: if connect {
                        Opened::Connect
                    } else {
                        Opened::FirstUse
                    },
                    local,
                    peer,
                    prev_touch,
                }
            }),
        (
            sock(),
            dir(),
            head(),
            proptest::option::of(sock()),
            any::<bool>()
        )
            .prop_map(
                |(sock, dir, head, prev_touch, keep_alive)| EventKind::Message {
                    sock,
                    dir,
                    bytes: 10,
                    head,
                    prev_touch,
                    prev_msg_bytes: 5,
                    prev_msg_last: 3,
                    tls: false,
                    keep_alive,
                }
            ),
        (sock(), dir()).prop_map(|(sock, dir)| EventKind::Progress {
            sock,
            dir,
            msg_bytes: 100
        }),
        sock().prop_map(|sock| EventKind::Blocked {
            sock,
            msg_bytes: 50
        }),
        sock().prop_map(|sock| EventKind::Eof {
            sock,
            prev_touch: None
        }),
        (
            sock(),
            dir(),
            prop_oneof![Just(104), Just(32), Just(111), Just(110)]
        )
            .prop_map(|(sock, dir, errno)| EventKind::IoError {
                sock,
                dir,
                errno,
                prev_touch: None
            }),
        sock().prop_map(|sock| EventKind::TlsShutdown { sock }),
        (sock(), prop_oneof![Just(104), Just(110)]).prop_map(|(sock, errno)| {
            EventKind::PeekError {
                sock,
                errno,
                prev_touch: None,
            }
        }),
        (
            sock(),
            state(),
            state(),
            endpoint(),
            endpoint(),
            any::<bool>()
        )
            .prop_map(|(sock, old, new, local, peer, local_close)| {
                EventKind::State {
                    sock,
                    old,
                    new,
                    local,
                    peer,
                    local_close,
                    msg: MsgCursor::default(),
                    prev_touch: local_close.then_some(sock),
                }
            }),
        (
            sock(),
            any::<bool>(),
            state(),
            prop_oneof![Just(0u32), 1u32..100_000]
        )
            .prop_map(|(sock, received, state, unacked)| EventKind::Reset {
                sock,
                dir: if received {
                    ResetDir::Received
                } else {
                    ResetDir::Sent
                },
                state,
                unacked,
            }),
        (
            sock(),
            prop_oneof![Just(104), Just(111), Just(110)],
            state()
        )
            .prop_map(|(sock, errno, state)| EventKind::SockError { sock, errno, state }),
        (sock(), any::<bool>()).prop_map(|(sock, local_close)| EventKind::Destroy {
            sock,
            local_close,
            msg: MsgCursor::default()
        }),
        Just(EventKind::Tick),
        Just(EventKind::Lost {
            events: 1,
            sockets: 0,
            since: Some(1)
        }),
    ]
}

/// The seed corpus: event streams recorded from real nginx (`tests/fixtures`, kept
/// in the repository). Mutating real streams reaches engine states that random
/// events rarely do: lost events, duplicates, reordering across CPUs, cut files.
fn corpus() -> &'static [(String, Vec<Event>)] {
    static CORPUS: std::sync::OnceLock<Vec<(String, Vec<Event>)>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("tests/fixtures")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no recorded streams in {}",
            dir.display()
        );
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("fixture");
                let (_, events) = recording::read(text.as_bytes()).expect("fixture header");
                let events = events
                    .collect::<Result<Vec<_>, _>>()
                    .expect("fixture events");
                (text, events)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn recorded_streams_with_events_lost_doubled_or_swapped_never_panic(
        pick in any::<prop::sample::Index>(),
        drops in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        doubles in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        swaps in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let corpus = corpus();
        let (_, stream) = &corpus[pick.index(corpus.len())];
        let mut events = stream.clone();
        for s in &swaps {
            if events.len() > 1 {
                let i = s.index(events.len() - 1);
                events.swap(i, i + 1);
            }
        }
        for d in &doubles {
            if !events.is_empty() {
                let i = d.index(events.len());
                events.insert(i, events[i].clone());
            }
        }
        for d in &drops {
            if !events.is_empty() {
                let i = d.index(events.len());
                events.remove(i);
            }
        }
        let mut engine = Engine::new(EngineConfig::default());
        let mut out = Vec::new();
        for ev in events {
            engine.ingest(ev, &mut out);
        }
        engine.flush(&mut out);
        well_formed(&out)?;
    }

    #[test]
    fn recorded_files_cut_or_corrupted_are_errors_not_panics(
        pick in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let corpus = corpus();
        let (text, _) = &corpus[pick.index(corpus.len())];
        let mut bytes = text.as_bytes()[..cut.index(text.len() + 1)].to_vec();
        for (at, b) in &flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
        }
        if let Ok((_, events)) = recording::read(&bytes[..]) {
            for e in events {
                let _ = e;
            }
        }
    }
}
