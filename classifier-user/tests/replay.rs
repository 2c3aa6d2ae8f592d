//! Replays event streams recorded from real nginx (`tests/fixtures/*.events.jsonl`,
//! made by `cargo xtask fixtures`) through the engine, with no kernel:
//! - the records must agree one to one with nginx's access log of that run;
//! - they must equal the blessed records (`*.records.jsonl`); after an intended
//!   change, re-bless with `CLASSIFY_BLESS=1 cargo test -p classifier-user --test replay`.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::BufReader,
    path::{Path, PathBuf},
};

use classifier::{record::Record, recording, Engine, EngineConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn replay(events: &Path) -> Vec<Value> {
    let (header, stream) =
        recording::read(BufReader::new(File::open(events).expect("open fixture"))).expect("header");
    let mut engine = Engine::new(EngineConfig {
        realtime_offset_ns: header.realtime_offset_ns,
        ..EngineConfig::default()
    });
    for (pid, comm) in &header.processes {
        engine.set_comm(*pid, comm);
    }
    let mut out = Vec::new();
    let mut records = Vec::new();
    for ev in stream {
        engine.ingest(ev.expect("event"), &mut out);
        // As the agent does: write the records out, then give them back for reuse,
        // so the records below are built into reused ones.
        written(&out, &mut records);
        engine.recycle(&mut out);
    }
    engine.flush(&mut out);
    written(&out, &mut records);
    records
}

/// Each exchange record as the agent writes it, parsed back.
fn written(out: &[Record], into: &mut Vec<Value>) {
    for r in out.iter().filter(|r| matches!(r, Record::Exchange(_))) {
        // The agent writes records with `classifier::json`: byte for byte serde's.
        let mut line = Vec::new();
        classifier::json::write_record(&mut line, r).expect("write");
        assert_eq!(
            String::from_utf8_lossy(&line),
            serde_json::to_string(r).expect("serialize")
        );
        into.push(serde_json::from_slice(&line).expect("valid JSON"));
    }
}

type Key = (u16, String, String, u16, Vec<String>);

fn record_key(r: &Value) -> Key {
    (
        r["client"]["port"].as_u64().unwrap_or(0) as u16,
        r["request"]["method"].as_str().unwrap_or("-").to_owned(),
        r["request"]["target"].as_str().unwrap_or("-").to_owned(),
        r["response"]["status"].as_u64().unwrap_or(0) as u16,
        r["upstreams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|u| format!("{}:{}", u["address"].as_str().unwrap(), u["port"]))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn access_key(a: &Value) -> Key {
    let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
    let upstreams = s("upstream_addr")
        .split(", ")
        .filter(|u| !u.is_empty() && *u != "-")
        .map(str::to_owned)
        .collect();
    (
        s("remote_port").parse().unwrap_or(0),
        s("method"),
        s("uri"),
        s("status").parse().unwrap_or(0),
        upstreams,
    )
}

fn check(name: &str) {
    let dir = fixtures();
    let records = replay(&dir.join(format!("{name}.events.jsonl")));
    let access: Vec<Value> = fs::read_to_string(dir.join(format!("{name}.access.jsonl")))
        .expect("access log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("access line"))
        .collect();
    let mut diff: BTreeMap<Key, i64> = BTreeMap::new();
    for a in &access {
        *diff.entry(access_key(a)).or_default() += 1;
    }
    for r in &records {
        *diff.entry(record_key(r)).or_default() -= 1;
    }
    diff.retain(|_, n| *n != 0);
    assert!(
        diff.is_empty(),
        "{name}: replay disagrees with the access log: {diff:#?}"
    );

    let blessed = dir.join(format!("{name}.records.jsonl"));
    let text: String = records.iter().map(|r| r.to_string() + "\n").collect();
    if std::env::var_os("CLASSIFY_BLESS").is_some() {
        fs::write(&blessed, &text).expect("bless");
        return;
    }
    let want = fs::read_to_string(&blessed)
        .unwrap_or_else(|_| panic!("{} missing: bless it", blessed.display()));
    for (i, (got, want)) in text.lines().zip(want.lines()).enumerate() {
        assert_eq!(got, want, "{name}: record {i} differs from the blessed one");
    }
    assert_eq!(
        text.lines().count(),
        want.lines().count(),
        "{name}: record count differs from the blessed one"
    );
}

macro_rules! fixture {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

fixture!(
    statuses_and_keepalive,
    concurrent_identical,
    refused_then_retried,
    pipelined_on_many_connections,
);

#[test]
fn every_fixture_has_a_test() {
    let names = [
        "statuses_and_keepalive",
        "concurrent_identical",
        "refused_then_retried",
        "pipelined_on_many_connections",
    ];
    for entry in fs::read_dir(fixtures()).expect("fixtures dir") {
        let file = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        if let Some(name) = file.strip_suffix(".events.jsonl") {
            assert!(
                names.contains(&name),
                "fixture {name} has no test: add it to fixture!()"
            );
        }
    }
}
