//! Shared assertions: schema validation and agreement with the access log.
use std::{collections::BTreeMap, sync::OnceLock};

use classify_tests::{nginx::AccessEntry, workspace_root};
use serde_json::Value;

/// Fails the test unless it runs as root: the probes need it, and a test that
/// silently skips cannot fail.
pub fn require_root() {
    assert!(
        classify_tests::is_root(),
        "end-to-end tests load kernel probes and need root: run `sudo cargo xtask test`"
    );
}

fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = workspace_root().join("docs/schema/records.schema.json");
        let text = std::fs::read_to_string(&path).expect("read the JSON Schema");
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    })
}

/// Every record must validate against `docs/schema/records.schema.json`.
pub fn assert_schema(records: &[Value]) {
    for r in records {
        let errors: Vec<String> = schema()
            .iter_errors(r)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "record does not match the schema: {errors:?}\n{r}"
        );
    }
}

/// What a record and an access-log line must agree on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub client_port: u16,
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub upstreams: Vec<String>,
}

pub fn record_key(r: &Value) -> Key {
    Key {
        client_port: r["client"]["port"].as_u64().unwrap_or(0) as u16,
        method: r["request"]["method"].as_str().unwrap_or("-").to_owned(),
        uri: r["request"]["target"].as_str().unwrap_or("-").to_owned(),
        status: r["response"]["status"].as_u64().unwrap_or(0) as u16,
        upstreams: r["upstreams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|u| match u["address"].as_str().unwrap_or("?") {
                        // nginx logs a unix socket upstream as `unix:/path`.
                        unix if unix.starts_with("unix:") => unix.to_owned(),
                        address => format!("{address}:{}", u["port"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The access log's key. Where nginx logs a status it never sent, the wire wins:
/// 499 (client gone first) and 009 (an invalid upstream head passed through as
/// HTTP/0.9) have no status line on the wire, so the record's status is null (0).
pub fn access_key(a: &AccessEntry) -> Key {
    let status = match a.status() {
        499 | 9 => 0,
        s => s,
    };
    let uri = if a.uri.is_empty() {
        "-"
    } else {
        a.uri.as_str()
    };
    Key {
        client_port: a.remote_port(),
        // nginx logs an empty method and URI for bytes that were no request line.
        method: if a.method.is_empty() {
            "-".to_owned()
        } else {
            a.method.clone()
        },
        uri: uri.split('?').next().unwrap_or("").to_owned()
            + if uri.contains('?') { "?…" } else { "" },
        status,
        upstreams: a.upstreams(),
    }
}

/// Records and access-log lines correspond one to one: nothing missing, nothing
/// doubled.
pub fn assert_matches_access_log(exchanges: &[&Value], access: &[AccessEntry]) {
    let mut want: BTreeMap<Key, i64> = BTreeMap::new();
    for a in access {
        *want.entry(access_key(a)).or_default() += 1;
    }
    for r in exchanges {
        *want.entry(record_key(r)).or_default() -= 1;
    }
    let diff: Vec<String> = want
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(k, n)| {
            format!(
                "{} {k:?}",
                if *n > 0 {
                    "missing from classify"
                } else {
                    "extra in classify"
                }
            )
        })
        .collect();
    assert!(
        diff.is_empty(),
        "classify disagrees with nginx's access log ({} records, {} log lines):\n{}",
        exchanges.len(),
        access.len(),
        diff.join("\n")
    );
}

/// The end of most tests: waits until nginx has logged `n` requests (10 s at
/// most), gives the agent 300 ms to drain what the kernel still holds, stops it,
/// and checks that it exited cleanly. Returns its output and the access log.
pub fn stop_after_log(
    nginx: &classify_tests::nginx::Nginx,
    running: classify_tests::classify::Running,
    n: usize,
) -> (classify_tests::classify::Output, Vec<AccessEntry>) {
    let access = nginx.wait_access_log(n, std::time::Duration::from_secs(10));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = running.stop();
    assert!(out.status.success(), "{}", out.stderr);
    (out, access)
}

/// Each record's verdict is the one its case calls for: `cases` maps a request
/// path to a verdict, and a record's target is that path behind one of
/// `prefixes` (a location per connection mode). Returns the verdict found.
pub fn expected_verdict<'a>(r: &Value, cases: &'a [(&str, &str)], prefixes: &[&str]) -> &'a str {
    let target = r["request"]["target"].as_str().unwrap_or("");
    let path = prefixes
        .iter()
        .find_map(|p| target.strip_prefix(p).filter(|rest| rest.starts_with('/')))
        .unwrap_or(target);
    let (_, verdict) = cases
        .iter()
        .find(|(p, _)| *p == path)
        .unwrap_or_else(|| panic!("unexpected record {r}"));
    assert_eq!(r["verdict"], *verdict, "{r}");
    verdict
}

/// Starts classify on process `pid` with `extra` flags. With `--io-probes
/// syscall` it checks that classify says so: a test of that path must not pass
/// on the socket tracepoints.
pub fn start_classify(pid: u32, extra: &[&str]) -> classify_tests::classify::Running {
    let pid = pid.to_string();
    let args: Vec<&str> = ["--pid", pid.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let running = classify_tests::classify::start(&args);
    if extra.contains(&"syscall") {
        let said = running.stderr_so_far();
        assert!(said.contains("I/O from syscall exits"), "{said}");
    }
    running
}

/// Every record is `ok`; otherwise says how many are not, and shows the
/// first few (client port, target, verdict).
pub fn assert_all_ok<'a>(exchanges: impl IntoIterator<Item = &'a Value>) {
    let mut total = 0;
    let not_ok: Vec<_> = exchanges
        .into_iter()
        .inspect(|_| total += 1)
        .filter(|r| r["verdict"] != "ok")
        .map(|r| {
            (
                r["client"]["port"].clone(),
                r["request"]["target"].clone(),
                r["verdict"].clone(),
            )
        })
        .collect();
    assert!(
        not_ok.is_empty(),
        "{} of {total} records not ok, first: {:?}",
        not_ok.len(),
        &not_ok[..not_ok.len().min(5)]
    );
}

/// Each record's response status (0 for none), request target ("-" for none)
/// and `complete` flag: what a connection's records say, in order.
pub fn status_target_complete<'a>(records: &[&'a Value]) -> Vec<(u64, &'a str, bool)> {
    records
        .iter()
        .map(|r| {
            (
                r["response"]["status"].as_u64().unwrap_or(0),
                r["request"]["target"].as_str().unwrap_or("-"),
                r["complete"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}
