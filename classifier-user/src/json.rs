//! Exchange records as JSON, written straight into a byte buffer.
//!
//! The agent writes one exchange record per client request; with serde every key
//! and value goes through the serializer's escaping and dispatch, which made JSON
//! the agent's largest cost per request (measured: about a fifth of its CPU).
//! Here the keys are constants and only text that can hold arbitrary bytes is
//! escaped. The output is byte-for-byte what `serde_json::to_writer` writes for
//! the same [`Record`] (tested on every fixture and on arbitrary strings), so the
//! contract in `docs/schema/records.schema.json` does not depend on which is used.
use crate::record::{Address, ExchangeRecord, Record, Upstream};

/// Appends `r` as one JSON object (no newline). Stats records, written once a
/// stats interval, go through serde.
pub fn write_record(out: &mut Vec<u8>, r: &Record) -> serde_json::Result<()> {
    match r {
        Record::Exchange(e) => {
            write_exchange(out, e);
            Ok(())
        }
        Record::Stats(_) => serde_json::to_writer(out, r),
    }
}

/// Appends an exchange record, with its `"kind":"exchange"` tag, as serde would.
pub fn write_exchange(out: &mut Vec<u8>, e: &ExchangeRecord) {
    out.extend_from_slice(b"{\"kind\":\"exchange\",\"time\":");
    string(out, &e.time);
    out.extend_from_slice(b",\"proxy\":{\"pid\":");
    uint(out, e.proxy.pid as u64);
    out.extend_from_slice(b",\"comm\":");
    string(out, &e.proxy.comm);
    out.extend_from_slice(b"},\"client\":");
    address(out, &e.client);
    out.extend_from_slice(b",\"server\":");
    address(out, &e.server);
    out.extend_from_slice(b",\"request\":");
    match &e.request {
        Some(r) => {
            out.extend_from_slice(b"{\"method\":");
            string(out, &r.method);
            out.extend_from_slice(b",\"target\":");
            string(out, &r.target);
            out.extend_from_slice(b",\"version\":");
            string(out, &r.version);
            out.push(b'}');
        }
        None => null(out),
    }
    out.extend_from_slice(b",\"response\":{\"status\":");
    opt_uint(out, e.response.status.map(u64::from));
    out.extend_from_slice(b",\"from\":");
    match e.response.from {
        Some(from) => word(out, from.as_str()),
        None => null(out),
    }
    out.extend_from_slice(b"},\"verdict\":");
    word(out, e.verdict.as_str());
    out.extend_from_slice(b",\"origin\":");
    word(out, e.origin.as_str());
    out.extend_from_slice(b",\"upstreams\":[");
    for (i, u) in e.upstreams.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        upstream(out, u);
    }
    out.extend_from_slice(b"],\"duration_us\":");
    uint(out, e.duration_us);
    out.extend_from_slice(b",\"hint\":");
    match &e.hint {
        Some(h) => string(out, h),
        None => null(out),
    }
    out.extend_from_slice(if e.complete {
        b",\"complete\":true}"
    } else {
        b",\"complete\":false}"
    });
}

/// `{"address":…,"port":…`, the opening both address objects share.
fn open_address(out: &mut Vec<u8>, address: &str, port: u16) {
    out.extend_from_slice(b"{\"address\":");
    string(out, address);
    out.extend_from_slice(b",\"port\":");
    uint(out, port as u64);
}

fn address(out: &mut Vec<u8>, a: &Address) {
    open_address(out, &a.address, a.port);
    out.push(b'}');
}

fn upstream(out: &mut Vec<u8>, u: &Upstream) {
    open_address(out, &u.address, u.port);
    out.extend_from_slice(b",\"local_address\":");
    string(out, &u.local_address);
    out.extend_from_slice(b",\"local_port\":");
    uint(out, u.local_port as u64);
    out.extend_from_slice(b",\"outcome\":");
    word(out, u.outcome.as_str());
    out.extend_from_slice(b",\"status\":");
    opt_uint(out, u.status.map(u64::from));
    out.extend_from_slice(b",\"connect_us\":");
    opt_uint(out, u.connect_us);
    out.extend_from_slice(b",\"first_byte_us\":");
    opt_uint(out, u.first_byte_us);
    out.extend_from_slice(b",\"elapsed_us\":");
    opt_uint(out, u.elapsed_us);
    out.push(b'}');
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

/// A name from our own vocabulary (verdicts, outcomes): never needs escaping.
fn word(out: &mut Vec<u8>, w: &str) {
    out.push(b'"');
    out.extend_from_slice(w.as_bytes());
    out.push(b'"');
}

fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_uint(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => uint(out, n),
        None => null(out),
    }
}

/// A JSON string, escaped exactly as serde_json escapes it: `"` and `\`, and
/// control bytes below 0x20 (`\b \t \n \f \r` by name, the rest as `\u00XX`).
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let named: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if named.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(named);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        record::{Proxy, Request, Response},
        verdict::{Origin, Outcome, ResponseFrom, Verdict},
    };

    fn same_as_serde(r: &Record) {
        let mut ours = Vec::new();
        write_record(&mut ours, r).unwrap();
        let theirs = serde_json::to_vec(r).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    fn upstream(outcome: Outcome, status: Option<u16>, t: Option<u64>) -> Upstream {
        Upstream {
            address: Arc::from("::1"),
            port: 8081,
            local_address: Arc::from("::1"),
            local_port: 40_000,
            outcome,
            status,
            connect_us: t,
            first_byte_us: t.map(|t| t + 1),
            elapsed_us: None,
        }
    }

    fn exchange(text: &str, hint: Option<String>) -> ExchangeRecord {
        ExchangeRecord {
            time: "2026-11-23T20:00:00.000001Z".into(),
            proxy: Proxy {
                pid: u32::MAX,
                comm: Arc::from(text),
            },
            client: Address {
                address: Arc::from("127.0.0.1"),
                port: 0,
            },
            server: Address {
                address: Arc::from(text),
                port: u16::MAX,
            },
            request: Some(Request {
                method: text.to_owned().into(),
                target: text.into(),
                version: "HTTP/1.1".into(),
            }),
            response: Response {
                status: Some(502),
                from: Some(ResponseFrom::Proxy),
            },
            verdict: Verdict::UpstreamReset,
            origin: Origin::Upstream,
            upstreams: vec![
                upstream(Outcome::Refused, None, None),
                upstream(Outcome::Reset, Some(200), Some(u64::MAX - 1)),
            ],
            duration_us: u64::MAX,
            hint,
            complete: false,
        }
    }

    #[test]
    fn every_verdict_outcome_and_null_matches_serde() {
        for v in Verdict::ALL {
            for (from, origin) in [
                (None, Origin::Client),
                (Some(ResponseFrom::Upstream), Origin::Proxy),
            ] {
                let mut e = exchange("GET", None);
                e.verdict = v;
                e.origin = origin;
                e.response = Response { status: None, from };
                e.request = None;
                e.upstreams.clear();
                e.complete = true;
                same_as_serde(&Record::Exchange(Box::new(e)));
            }
        }
        for o in Outcome::ALL {
            let mut e = exchange("x", Some("h".into()));
            e.upstreams = vec![upstream(o, Some(404), Some(0))];
            same_as_serde(&Record::Exchange(Box::new(e)));
        }
        same_as_serde(&Record::Stats(Box::default()));
    }

    proptest! {
        /// Any text in any free-text field (control bytes, quotes, backslashes,
        /// non-ASCII) is escaped as serde escapes it.
        #[test]
        fn arbitrary_text_matches_serde(text in "(?s).{0,40}", hint in proptest::option::of("(?s).{0,40}")) {
            same_as_serde(&Record::Exchange(Box::new(exchange(&text, hint))));
        }
    }
}
