//! The output contract (v1): one JSON object per line. `docs/schema/records.schema.json`
//! describes it and the tests validate every emitted record against it.
use std::{borrow::Cow, collections::BTreeMap, sync::Arc};

use compact_str::CompactString;

use serde::{Deserialize, Serialize};

use crate::verdict::{Origin, Outcome, ResponseFrom, Verdict};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Exchange(Box<ExchangeRecord>),
    Stats(Box<StatsRecord>),
}

/// One client exchange, from its request to its end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    /// When the request started (first byte received), RFC 3339 UTC, microseconds.
    pub time: String,
    pub proxy: Proxy,
    pub client: Address,
    pub server: Address,
    pub request: Option<Request>,
    pub response: Response,
    pub verdict: Verdict,
    pub origin: Origin,
    pub upstreams: Vec<Upstream>,
    /// From the request's first byte to the response's last byte (or to the end of
    /// the exchange when no response was written).
    pub duration_us: u64,
    pub hint: Option<String>,
    /// False when some evidence is missing (events lost, a connection first seen in
    /// the middle of an exchange, or the agent stopped before the exchange ended).
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    pub pid: u32,
    pub comm: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub address: Arc<str>,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub method: Cow<'static, str>,
    pub target: CompactString,
    pub version: Cow<'static, str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The status line the proxy wrote to the client, null if it wrote none.
    pub status: Option<u16>,
    pub from: Option<ResponseFrom>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub address: Arc<str>,
    pub port: u16,
    pub local_address: Arc<str>,
    pub local_port: u16,
    pub outcome: Outcome,
    /// Status line the upstream sent, if any.
    pub status: Option<u16>,
    /// Connect time; null on a reused keep-alive connection or a failed connect.
    pub connect_us: Option<u64>,
    /// From the request sent to the first response byte.
    pub first_byte_us: Option<u64>,
    /// From the attempt's start (connect, or request on a reused connection) to its
    /// end: last response byte seen, the failure, or the proxy giving up or
    /// dropping it. For an `aborted` attempt: how long the upstream had been
    /// waited for when the client left.
    pub elapsed_us: Option<u64>,
}

/// Periodic (and final) counters: what the agent saw and what it lost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    pub time: String,
    /// Seconds covered by the counters (since the agent started).
    pub uptime_s: f64,
    /// True on the last stats record, written when the agent stops.
    #[serde(rename = "final")]
    pub last: bool,
    pub watched_processes: u64,
    pub events: u64,
    /// Records read from the ring buffer: fewer than `events` when one record
    /// carries two (a request start the probe held back rides on its reply).
    #[serde(default)]
    pub ring_records: u64,
    /// Bytes of those events as they came through the ring buffer.
    pub event_bytes: u64,
    pub events_per_s: f64,
    /// Events lost because the ring buffer was full.
    pub lost_events: u64,
    /// Sockets not tracked because the kernel map was full.
    pub untracked_sockets: u64,
    /// Probe runs the kernel skipped (a tracepoint fired on a CPU where a BPF
    /// program or map syscall was already active): events that were never made.
    #[serde(default)]
    pub skipped_probe_runs: u64,
    /// Records that could not be decoded.
    pub undecodable_events: u64,
    pub exchanges: u64,
    pub incomplete_exchanges: u64,
    pub verdicts: BTreeMap<String, u64>,
    pub engine: EngineCounters,
    /// What the engine holds now (every table has a limit; see
    /// docs/cli/tuning.md): the main drivers of the agent's memory.
    #[serde(default)]
    pub tables: TableSizes,
    /// The agent's resident memory now, in KiB (0 where unknown, as in replay).
    #[serde(default)]
    pub resident_kib: u64,
}

/// Entries in the engine's tables at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSizes {
    /// Live sockets tracked.
    pub sockets: u64,
    /// Destroyed sockets remembered for late events.
    pub destroyed_sockets: u64,
    /// Exchanges in flight.
    pub exchanges: u64,
    /// Ended exchanges' records waiting out the loss checks' hold.
    pub held_records: u64,
}

impl StatsRecord {
    /// What was not classified because it was HTTP/2, if anything was (for the
    /// summary and the last stderr line).
    pub fn unclassified_http2(&self) -> Option<String> {
        let e = &self.engine;
        (e.http2_connections > 0).then(|| {
            format!(
                "{} HTTP/2 client connections ({} upstream requests) were not classified: HTTP/2 is not decoded yet",
                e.http2_connections, e.http2_exchanges
            )
        })
    }
}

/// The engine's own counters: anything it could not place or had to drop.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounters {
    /// Upstream attempts with no exchange to attribute them to.
    pub unattributed_attempts: u64,
    /// Attempts attributed by matching request lines (no loop-iteration candidate).
    pub attributed_by_request_line: u64,
    /// Events about sockets the engine does not know (first seen mid-stream).
    pub unknown_socket_events: u64,
    /// Events that arrived after their exchange was emitted.
    pub late_events: u64,
    /// Responses with no exchange waiting for them.
    pub orphan_responses: u64,
    /// Upstream attempts moved to the client whose response followed their
    /// reply: their request was sent from a posted event (pipelined requests),
    /// where the thread's last touch had named another exchange or none.
    pub reattributed_attempts: u64,
    /// Held request starts reported twice (see `classifier_ebpf::HeldSend`).
    pub duplicate_held_sends: u64,
    /// Conversations on a watched socket that were not HTTP (no request line, no
    /// status line either way, e.g. an nginx `stream` proxy): no record.
    pub non_http_conversations: u64,
    /// Client connections that spoke HTTP/2 (the connection preface seen), and
    /// the upstream exchanges made for them: no records yet (see
    /// `docs/architecture.md`, HTTP/2).
    pub http2_connections: u64,
    pub http2_exchanges: u64,
    /// Upstream requests the proxy made on its own for an exchange whose
    /// response had started (a cache's background update, slice ranges, SSI
    /// includes): part of that exchange's work, no record of their own.
    #[serde(default)]
    pub subrequests: u64,
    /// Client exchanges with no response seen when their connection's next
    /// request came: their response's evidence was lost (`complete: false`).
    #[serde(default)]
    pub unanswered_before_next_request: u64,
    /// Sockets and exchanges evicted because a table was full.
    pub evicted_sockets: u64,
    pub evicted_exchanges: u64,
}

impl Record {
    pub fn exchange(&self) -> Option<&ExchangeRecord> {
        match self {
            Self::Exchange(e) => Some(e),
            Self::Stats(_) => None,
        }
    }
}

/// How text output names an endpoint: `address:port`, `[v6]:port`, or a unix
/// socket's `unix:/path` alone (its port is 0).
pub fn endpoint_name(address: &str, port: u16) -> String {
    if address.starts_with("unix:") {
        address.to_owned()
    } else if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

#[cfg(test)]
mod endpoint_name_tests {
    use super::endpoint_name;

    #[test]
    fn endpoints_read_as_nginx_writes_them() {
        assert_eq!(endpoint_name("10.0.3.7", 8080), "10.0.3.7:8080");
        assert_eq!(endpoint_name("::1", 19881), "[::1]:19881");
        assert_eq!(
            endpoint_name("unix:/run/php/php8.2-fpm.sock", 0),
            "unix:/run/php/php8.2-fpm.sock"
        );
    }
}
