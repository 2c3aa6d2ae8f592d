//! The engine: connection table → exchange correlator → classifier.
//!
//! ```text
//!  client socket                       upstream socket(s)
//!  ─────────────                       ──────────────────
//!  Message recv (request line) ──▶ Exchange opened
//!          │                         ▲  attempt attached by the loop-iteration rule:
//!          │                         │  connect (or first send on a reused connection)
//!          │                         │  → the socket this thread touched last in the
//!          │                         │    same epoll iteration → its exchange
//!  Message send (status line) ──▶ response started
//!  next request / close / quiet ──▶ Exchange ended → Record
//! ```
//!
//! `ingest` is the only entry point; time comes from event timestamps.

mod build;
mod exchange;
mod outcome;
mod sockets;

use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use self::{
    exchange::{Attempt, End, ExId, Exchange, ProxyClose, ResponseStart},
    sockets::{Sock, Sockets},
};
use crate::{
    event::{Dir, Endpoint, Event, EventKind, MsgCursor, Opened, ResetDir, Side, SockId, TcpState},
    head::{Head, RequestLine},
    record::{EngineCounters, ExchangeRecord, Record},
};
pub use build::wall_time;

/// Limits and clocks. Every table is bounded; what is evicted is counted.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// An exchange whose response has started ends after this long without any
    /// activity (its connection kept alive and idle).
    pub settle_ns: u64,
    /// Wall clock = monotonic + this (set by the agent, stored in recordings).
    pub realtime_offset_ns: i64,
    pub max_sockets: usize,
    pub max_exchanges: usize,
    /// Destroyed sockets remembered for attribution.
    pub max_dead_sockets: usize,
    /// Ended exchanges wait this long before their record is written, so that a
    /// loss detected a little later (the agent polls the kernel's loss counters)
    /// can still mark them incomplete. 0 writes them at once.
    pub hold_ns: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            settle_ns: 1_000_000_000,
            realtime_offset_ns: 0,
            max_sockets: 65_536,
            max_exchanges: 65_536,
            max_dead_sockets: 8_192,
            hold_ns: DEFAULT_HOLD_NS,
        }
    }
}

/// How long an ended exchange's record waits by default: the agent's poll of
/// skipped program runs (every 300 ms) plus two drain periods.
pub const DEFAULT_HOLD_NS: u64 = 500_000_000;

/// Threads whose last unforwarded reply is remembered, at most (nginx has a few
/// workers; a bound anyway, as thread ids are not recycled soon).
const MAX_THREADS_REMEMBERED: usize = 4096;

/// A thread's last two actions on distinct sockets (see `Engine::last_own`).
#[derive(Clone, Copy, Debug, Default)]
struct OwnActions {
    last: Option<SockId>,
    before: Option<SockId>,
    /// When the thread acted last: a request the probes held back comes out
    /// after the thread's later actions, with its own older time, and is
    /// no later action.
    at: u64,
}

/// The socket of an event that runs in the acting thread itself (its I/O, a
/// close of its own), or `None` for what the kernel reports from elsewhere
/// (softirq state changes, resets, errors, destroys after a handshake).
fn own_action(kind: &EventKind) -> Option<SockId> {
    match kind {
        EventKind::Message { sock, .. }
        | EventKind::Progress { sock, .. }
        | EventKind::Eof { sock, .. }
        | EventKind::IoError { sock, .. }
        | EventKind::PeekError { sock, .. }
        | EventKind::TlsShutdown { sock }
        | EventKind::State {
            sock,
            local_close: true,
            ..
        }
        | EventKind::Destroy {
            sock,
            local_close: true,
            ..
        } => Some(*sock),
        _ => None,
    }
}

/// Whether a client's first bytes are the HTTP/2 connection preface
/// (`PRI * HTTP/2.0`, RFC 9113 §3.4).
fn is_http2_preface(head: &Head) -> bool {
    matches!(head, Head::Request(r) if r.method == "PRI" && r.target == "*" && r.version == "HTTP/2.0")
}

/// The preface's first line as a request line (see `Sock::http2_preface`).
fn http2_preface_line() -> Head {
    Head::Request(crate::head::RequestLine {
        method: "PRI".into(),
        target: "*".into(),
        version: "HTTP/2.0".into(),
        truncated: false,
        query: 0,
    })
}

/// The largest TLS alert record (a `close_notify`: 24 bytes in TLS 1.3, 31
/// with TLS 1.2's AES-GCM, more with CBC and its MAC).
const TLS_ALERT_MAX: u32 = 64;

/// Linux acknowledges received data within 200 ms (`TCP_DELACK_MAX`), and may
/// leave up to a segment unacknowledged until then: 64 KiB on loopback, whose
/// MTU is 64 KiB, and far less on a network.
const DELAYED_ACK_MAX_NS: u64 = 200_000_000;
const DELAYED_ACK_MAX_BYTES: u64 = 65_536;

/// A TLS record's bytes beyond its plaintext, at most (header, explicit IV,
/// MAC or tag, padding), and the plaintext a record carries at most.
const TLS_RECORD_OVERHEAD: u64 = 64;
const TLS_RECORD_MAX: u64 = 16_384;

/// Whether a client's reset, with `unacked` bytes of the proxy's still
/// unacknowledged, came after the client had the whole response.
/// - The client closed first, over TLS: the proxy's `close_notify` alone met
///   a closed socket.
/// - The proxy closed first: its FIN takes a sequence number of its own, so
///   one unacknowledged is no byte of the response (the client reset with
///   data of its own unread, or the FIN's acknowledgement crossed the reset).
/// - Over TLS, the proxy ends a connection with a `close_notify` (before its
///   close, which the reset may overtake): a client that closes as soon as it
///   has the response leaves the alert unread, which makes its close a reset,
///   and its kernel may not have acknowledged the response's last segment yet
///   (a delayed ACK). Only that much, and only that soon.
fn reset_after_whole_response(ex: &Exchange, tls: bool, unacked: u32, ts: u64) -> bool {
    let unacked = u64::from(unacked);
    if tls && unacked <= u64::from(TLS_ALERT_MAX) && ex.client_fin.is_some() {
        return true;
    }
    if ex.closed_by_proxy.is_some() && unacked <= 1 {
        return true;
    }
    let response = ex.response_bytes.min(DELAYED_ACK_MAX_BYTES);
    let on_the_wire = response + response.div_ceil(TLS_RECORD_MAX) * TLS_RECORD_OVERHEAD;
    tls && ts.saturating_sub(ex.last_send) <= DELAYED_ACK_MAX_NS
        && unacked <= on_the_wire + u64::from(TLS_ALERT_MAX) + 1
}

/// The client of an orphan exchange (see `Exchange::orphan`): no socket.
const ORPHAN_CLIENT: SockId = SockId(0);

/// An ended exchange's record waiting out the hold time. The record is built
/// when the exchange ends, while its evidence is still in the CPU's caches: built
/// 300 ms later, every exchange and attempt was read back from memory (a cache
/// miss on nearly every field in the agent's profile). A loss found during the
/// hold can only clear `complete`, and that is all it changes.
struct Held {
    end: u64,
    record: Box<ExchangeRecord>,
}

/// Loss windows remembered for exchanges that end later.
const MAX_LOSS_WINDOWS: usize = 64;
/// Most records and attempt lists kept for reuse. Held records are released in
/// bursts (every exchange that ended in one 100 ms stretch at once: about 1,300
/// at 13,000 req/s), so the pools must hold a burst; they only grow to the
/// largest burst seen (a few hundred bytes per entry), and beyond the limit
/// entries are freed. (With the 500 ms hold, a replay of 24,000 req/s allocated
/// 0.19 times per event at this limit and 0.14 at 16,384; but the pools kept
/// after a burst then grew classify's RSS by 9 MiB over the million-connection
/// churn test.)
const SPARE_LIMIT: usize = 8192;

pub struct Engine {
    cfg: EngineConfig,
    held: std::collections::VecDeque<Held>,
    loss_windows: std::collections::VecDeque<(u64, u64)>,
    now: u64,
    socks: Sockets,
    /// Exchanges in flight. A hash map, not a B-tree: a B-tree node shifts its
    /// (large) values on every removal, which was a twentieth of the agent's
    /// time; its id order is kept where it matters (`order`, and sorting).
    exchanges: HashMap<ExId, Exchange>,
    /// Ids of exchanges in the order they opened; ended ones are skipped and
    /// dropped lazily (the oldest in flight is evicted when the table is full).
    order: VecDeque<ExId>,
    next_ex: u64,
    comms: HashMap<u32, Arc<str>>,
    /// Per thread, the upstream socket whose reply it read last and has not
    /// forwarded yet: the response it writes next comes from there, even when
    /// it closed a pooled connection in between (see `reattribute`).
    last_reply: HashMap<u32, SockId>,
    /// Per thread, the sockets of its last two actions the probes saw from
    /// inside it (I/O, or a close of its own; repeated actions on one socket
    /// count once), the event being ingested included: nginx drops an upstream
    /// whose reply it abandons and closes the client's connection right after,
    /// writing at most that client's response header between, which leaves
    /// (client, upstream) here at the client's close.
    last_own: HashMap<u32, OwnActions>,
    text: build::AddressText,
    /// Reused buffers: the outcomes of the record being built, and the exchanges
    /// a new request ends (no allocation per request for either).
    outcomes: Vec<crate::verdict::Outcome>,
    ending: Vec<ExId>,
    /// Records given back after they were written, and attempt lists of ended
    /// exchanges, for reuse (see `write_record`).
    // The boxes are what is reused: `Record::Exchange` holds one.
    #[allow(clippy::vec_box)]
    spare_records: Vec<Box<ExchangeRecord>>,
    spare_attempts: Vec<Vec<Attempt>>,
    /// The name of a process whose name was never given ("?"), allocated once.
    unknown_comm: Arc<str>,
    counters: EngineCounters,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            socks: Sockets::new(cfg.max_sockets, cfg.max_dead_sockets),
            cfg,
            held: std::collections::VecDeque::new(),
            loss_windows: std::collections::VecDeque::new(),
            now: 0,
            exchanges: HashMap::default(),
            order: VecDeque::new(),
            next_ex: 1,
            comms: HashMap::default(),
            last_reply: HashMap::default(),
            last_own: HashMap::default(),
            text: build::AddressText::default(),
            outcomes: Vec::new(),
            ending: Vec::new(),
            spare_records: Vec::new(),
            spare_attempts: Vec::new(),
            unknown_comm: "?".into(),
            counters: EngineCounters::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Latest event time seen.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Exchanges in flight.
    pub fn open_exchanges(&self) -> usize {
        self.exchanges.len()
    }

    /// What the tables hold now (for the stats record).
    pub fn table_sizes(&self) -> crate::record::TableSizes {
        let (sockets, destroyed) = self.socks.sizes();
        crate::record::TableSizes {
            sockets: sockets as u64,
            destroyed_sockets: destroyed as u64,
            exchanges: self.exchanges.len() as u64,
            held_records: self.held.len() as u64,
        }
    }

    /// Names a process (the agent does this for processes it found at start).
    pub fn set_comm(&mut self, pid: u32, comm: &str) {
        self.comms.insert(pid, comm.into());
    }

    /// Feeds one event; ended exchanges are appended to `out`.
    pub fn ingest(&mut self, mut ev: Event, out: &mut Vec<Record>) {
        self.ingest_in_place(&mut ev, out);
    }

    /// [`Engine::ingest`] without moving the event (144 bytes: each move is a
    /// `memmove` call, and the agent's hot path moved every event several times).
    /// A message's first line is taken out of `ev`; the rest is left as it was.
    pub fn ingest_in_place(&mut self, ev: &mut Event, out: &mut Vec<Record>) {
        // A loss the agent found by polling carries the clock's time, which is
        // ahead of the events' own while the agent drains a backlog: it must
        // not move the engine's time past events still to come.
        if !matches!(ev.kind, EventKind::Lost { since: Some(_), .. }) {
            self.now = self.now.max(ev.ts);
        }
        let ts = ev.ts;
        if let Some(sock) = own_action(&ev.kind) {
            if self.last_own.len() >= MAX_THREADS_REMEMBERED {
                self.last_own.clear();
            }
            let entry = self.last_own.entry(ev.tid).or_default();
            if ts >= entry.at {
                if entry.last != Some(sock) {
                    entry.before = entry.last;
                    entry.last = Some(sock);
                }
                entry.at = ts;
            }
        }
        if let EventKind::Message {
            sock,
            dir,
            bytes,
            head,
            prev_touch,
            prev_msg_bytes,
            prev_msg_last,
            tls,
            keep_alive,
        } = &mut ev.kind
        {
            if *tls {
                if let Some(s) = self.socks.get_mut(*sock) {
                    s.tls = true;
                }
            }
            // The request line moves into the exchange, no copy.
            let head = std::mem::take(head);
            self.message(
                ts,
                ev.tid,
                *sock,
                *dir,
                *bytes,
                head,
                *prev_touch,
                *prev_msg_bytes,
                *prev_msg_last,
                *keep_alive,
                out,
            );
            return;
        }
        match &ev.kind {
            EventKind::SockOpen {
                sock,
                owner,
                side,
                how,
                local,
                peer,
                prev_touch,
            } => self.sock_open(
                ts,
                *sock,
                *owner,
                *side,
                *how,
                *local,
                *peer,
                *prev_touch,
                out,
            ),
            EventKind::Message { .. } => unreachable!("handled above"),
            EventKind::Progress {
                sock,
                dir,
                msg_bytes,
            } => self.progress(ts, *sock, *dir, *msg_bytes),
            EventKind::Blocked { sock, .. } => self.send_blocked(ts, *sock),
            EventKind::Eof { sock, .. } => self.peer_fin(ts, *sock, true),
            EventKind::IoError {
                sock, dir, errno, ..
            } => self.io_error(ts, *sock, *dir, *errno),
            EventKind::PeekError { sock, errno, .. } => self.peek_error(ts, *sock, *errno),
            EventKind::TlsShutdown { sock } => self.tls_shutdown(ts, ev.tid, *sock),
            EventKind::State {
                sock,
                old,
                new,
                local,
                peer,
                local_close,
                msg,
                prev_touch,
            } => self.state(
                ts,
                ev.tid,
                *sock,
                (*old, *new),
                (*local, *peer),
                local_close.then_some(*prev_touch),
                *msg,
            ),
            EventKind::Reset {
                sock, dir, unacked, ..
            } => self.reset(ts, ev.tid, *sock, *dir, *unacked),
            EventKind::SockError { sock, errno, .. } => self.sock_error(ts, *sock, *errno),
            EventKind::Destroy {
                sock,
                local_close,
                msg,
            } => self.destroy(ts, ev.tid, *sock, *local_close, *msg, out),
            EventKind::Fork { child, comm } => {
                if self.comms.len() < 65_536 {
                    let name: Arc<str> = match self.comms.get(child) {
                        Some(n) if **n == **comm => n.clone(),
                        _ => comm.as_str().into(),
                    };
                    self.comms.insert(*child, name);
                }
            }
            EventKind::Exit {
                group_dead: true, ..
            } => self.proxy_exited(ev.pid, ts),
            EventKind::Exit { .. } => {}
            EventKind::Lost { since, .. } => self.lost(ts, *since),
            EventKind::Tick => {
                self.settle(out);
                self.release_held(out, false);
            }
        }
    }

    /// Ends every exchange in flight and writes every held record (the agent is
    /// stopping).
    pub fn flush(&mut self, out: &mut Vec<Record>) {
        let mut ids: Vec<ExId> = self.exchanges.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.finish(id, End::Flushed, out);
        }
        self.release_held(out, true);
    }

    /// Evidence went missing (see `EventKind::Lost`).
    fn lost(&mut self, ts: u64, since: Option<u64>) {
        let Some(since) = since else {
            // A gap in the stream itself: whatever is in flight may miss events.
            for ex in self.exchanges.values_mut() {
                ex.incomplete = true;
            }
            return;
        };
        // A loss the agent polled, since `since`: an exchange is marked when it
        // ends, if it overlaps the window (one still in flight ends after
        // `since`, unless the agent is behind and its end is still in the ring).
        for h in self.held.iter_mut().filter(|h| h.end >= since) {
            h.record.complete = false;
        }
        if self.loss_windows.len() >= MAX_LOSS_WINDOWS {
            self.loss_windows.pop_front();
        }
        self.loss_windows.push_back((since, ts));
    }

    /// Writes the records of exchanges held long enough (all with `all`).
    fn release_held(&mut self, out: &mut Vec<Record>, all: bool) {
        while let Some(h) = self.held.front() {
            if !all && h.end.saturating_add(self.cfg.hold_ns) > self.now {
                break;
            }
            let h = self.held.pop_front().expect("front exists");
            out.push(Record::Exchange(h.record));
        }
    }

    /// Builds an ended exchange's record, reusing a record given back by
    /// [`Engine::recycle`] and keeping the exchange's attempt list for a later
    /// exchange: in a steady state, records cost no allocation of their own.
    fn build_record(
        &mut self,
        mut ex: Exchange,
        conn: Option<(Endpoint, Endpoint)>,
        comm: Arc<str>,
        end: u64,
    ) -> Box<ExchangeRecord> {
        let record = build::build(
            &mut ex,
            conn,
            comm,
            &mut self.text,
            &mut self.outcomes,
            self.cfg.realtime_offset_ns,
            end,
            self.spare_records.pop(),
        );
        if self.spare_attempts.len() < SPARE_LIMIT {
            let mut attempts = std::mem::take(&mut ex.attempts);
            attempts.clear();
            self.spare_attempts.push(attempts);
        }
        record
    }

    /// Takes back records already written out (emptying `records`), to be reused
    /// for later ones. Optional: records dropped instead only cost allocations.
    pub fn recycle(&mut self, records: &mut Vec<Record>) {
        for r in records.drain(..) {
            if let Record::Exchange(e) = r {
                if self.spare_records.len() < SPARE_LIMIT {
                    self.spare_records.push(e);
                }
            }
        }
    }

    // ===== sockets =====

    #[allow(clippy::too_many_arguments)]
    fn sock_open(
        &mut self,
        ts: u64,
        id: SockId,
        owner: u32,
        side: Side,
        how: Opened,
        local: crate::event::Endpoint,
        peer: crate::event::Endpoint,
        prev_touch: Option<SockId>,
        out: &mut Vec<Record>,
    ) {
        let mut sock = Sock::new(side, how, owner, local, peer, ts);
        sock.from_timer = side == Side::Upstream && how == Opened::Connect && prev_touch.is_none();
        for (old_id, old) in self.socks.insert(id, sock) {
            self.counters.evicted_sockets += 1;
            if old.side == Side::Client {
                for ex in old.exchanges {
                    if let Some(e) = self.exchanges.get_mut(&ex) {
                        e.incomplete = true;
                    }
                    self.finish(ex, End::Evicted, out);
                }
            }
            let _ = old_id;
        }
        if side == Side::Upstream && how == Opened::Connect {
            match self.resolve(prev_touch, ts, out) {
                Some(ex) => self.attach(ex, id, ts, true, out),
                None => self.counters.unattributed_attempts += 1,
            }
        }
    }

    /// The exchange a thread was working for: the one owning the socket it touched
    /// last in the same loop iteration. A failed upstream socket counts as its
    /// exchange's socket, so retries chain; on a client connection whose response
    /// was already sent, the next attempt starts the connection's next exchange.
    fn resolve(
        &mut self,
        prev_touch: Option<SockId>,
        ts: u64,
        out: &mut Vec<Record>,
    ) -> Option<ExId> {
        let touched = prev_touch?;
        let sock = self.socks.get_any(touched)?;
        match sock.side {
            Side::Upstream => {
                // A retry chains onto that socket's exchange only when the
                // retry is possible: the attempt there has ended (nginx retries
                // after it read a failure or a reply, or closed the connection
                // itself) and the exchange has not started its response. Posted
                // requests sent one after another touch each other's sockets
                // while those are still in flight, and an orphan is nobody's.
                let (ex, idx) = sock.attempt?;
                if let Some(x) = self.exchanges.get(&ex).filter(|x| x.http2) {
                    // nginx sends the requests of the streams one read brought
                    // one after another: after a stream's request, the next
                    // send is the next stream's (once that attempt ended, a
                    // retry of the same stream's).
                    let ended = x.attempts.get(idx).is_some_and(Attempt::ended);
                    if !ended {
                        let (client, owner) = (x.client, x.pid);
                        return Some(self.open_http2(client, owner, ts, out));
                    }
                    return Some(ex);
                }
                self.exchanges
                    .get(&ex)
                    .is_some_and(|x| x.may_act_after(idx))
                    .then_some(ex)
            }
            Side::Client if sock.http2 => {
                // A stream's request: an exchange of its own (see `Sock::http2`).
                let owner = sock.owner;
                self.socks.get(touched)?;
                Some(self.open_http2(touched, owner, ts, out))
            }
            Side::Client => {
                let waiting = sock
                    .exchanges
                    .iter()
                    .rev()
                    .find(|e| self.exchanges.get(e).is_some_and(Exchange::awaits_response))
                    .copied();
                if waiting.is_some() {
                    return waiting;
                }
                self.socks.get(touched)?;
                // Pipelined: the request arrived in an earlier receive.
                let owner = sock.owner;
                Some(self.open_inferred(touched, owner, ts, out))
            }
        }
    }

    /// Marks incomplete the exchange a socket serves (a client socket's current
    /// exchange, an upstream socket's attempt's exchange).
    fn mark_incomplete_via(&mut self, sock: Option<SockId>) {
        let Some(s) = sock.and_then(|s| self.socks.get_any(s)) else {
            return;
        };
        let ex = match s.side {
            Side::Client => s.exchanges.back().copied(),
            Side::Upstream => s.attempt.map(|(e, _)| e),
        };
        if let Some(e) = ex.and_then(|e| self.exchanges.get_mut(&e)) {
            e.incomplete = true;
        }
    }

    /// Attaches a new attempt on upstream socket `sock` to exchange `ex`.
    fn attach(&mut self, ex: ExId, sock: SockId, ts: u64, connect: bool, out: &mut Vec<Record>) {
        let old = self.socks.get(sock).and_then(|s| s.attempt);
        if let Some((old, _)) = old {
            // The socket moves on: an orphan nobody claimed ends here.
            if old != ex && self.exchanges.get(&old).is_some_and(|x| x.orphan) {
                self.finish(old, End::Settled, out);
            }
        }
        let Some(s) = self.socks.get_mut(sock) else {
            return;
        };
        let Some(e) = self.exchanges.get_mut(&ex) else {
            return;
        };
        let mut a = Attempt::new(sock, s.peer, s.local);
        if connect {
            a.connect_start = Some(ts);
        }
        e.attempts.push(a);
        e.touch(ts);
        s.attempt = Some((ex, e.attempts.len() - 1));
        s.uses += 1;
    }

    fn open_exchange(
        &mut self,
        client: SockId,
        pid: u32,
        ts: u64,
        request: Option<RequestLine>,
        out: &mut Vec<Record>,
    ) -> ExId {
        if self.exchanges.len() >= self.cfg.max_exchanges {
            if let Some(oldest) = self.oldest_in_flight() {
                self.counters.evicted_exchanges += 1;
                if let Some(e) = self.exchanges.get_mut(&oldest) {
                    e.incomplete = true;
                }
                self.finish(oldest, End::Evicted, out);
            }
        }
        let id = ExId(self.next_ex);
        self.next_ex += 1;
        let mut ex = Exchange::new(id, client, pid, ts);
        ex.request = request;
        if let Some(attempts) = self.spare_attempts.pop() {
            ex.attempts = attempts;
        }
        self.exchanges.insert(id, ex);
        self.order.push_back(id);
        if self.order.len() > 2 * self.exchanges.len() + 64 {
            // Ended ids pile up behind a long-lived exchange: drop them.
            let exchanges = &self.exchanges;
            self.order.retain(|e| exchanges.contains_key(e));
        }
        if let Some(s) = self.socks.get_mut(client) {
            s.exchanges.push_back(id);
            if let Some(fin) = s.fin {
                // The request came with the FIN (or before it) and was read
                // after it: the client had already left.
                if let Some(e) = self.exchanges.get_mut(&id) {
                    e.client_fin = Some(fin);
                }
            }
        }
        id
    }

    /// An exchange whose request line was not seen on the client connection
    /// (see `Exchange::inferred`).
    fn open_inferred(&mut self, client: SockId, pid: u32, ts: u64, out: &mut Vec<Record>) -> ExId {
        let id = self.open_exchange(client, pid, ts, None, out);
        if let Some(e) = self.exchanges.get_mut(&id) {
            e.inferred = true;
        }
        id
    }

    /// Takes exchange `id` off its client connection's list (it ended, or it
    /// never was that connection's).
    fn forget_exchange(&mut self, client: SockId, id: ExId) {
        if let Some(s) = self.socks.get_mut(client) {
            s.exchanges.retain(|e| *e != id);
        }
    }

    /// An exchange for a stream of an HTTP/2 client connection (see
    /// `Exchange::http2`).
    fn open_http2(&mut self, client: SockId, pid: u32, ts: u64, out: &mut Vec<Record>) -> ExId {
        let id = self.open_inferred(client, pid, ts, out);
        if let Some(e) = self.exchanges.get_mut(&id) {
            e.http2 = true;
        }
        id
    }

    /// An exchange to hold an attempt nobody claimed yet (see `Exchange::orphan`).
    fn open_orphan(&mut self, pid: u32, ts: u64, out: &mut Vec<Record>) -> ExId {
        let id = self.open_inferred(ORPHAN_CLIENT, pid, ts, out);
        if let Some(e) = self.exchanges.get_mut(&id) {
            e.orphan = true;
        }
        id
    }

    /// An exchange for a request the proxy makes on its own, beside a client's
    /// (see `Exchange::subrequest`): it holds the attempt and writes no record.
    fn open_proxys_own(&mut self, pid: u32, ts: u64, out: &mut Vec<Record>) -> ExId {
        let id = self.open_inferred(ORPHAN_CLIENT, pid, ts, out);
        if let Some(e) = self.exchanges.get_mut(&id) {
            e.subrequest = true;
        }
        id
    }

    /// The attempt an upstream socket serves now, if its exchange is in flight.
    fn attempt_mut(&mut self, sock: SockId) -> Option<(&mut Exchange, usize)> {
        let (ex, idx) = self.socks.get(sock)?.attempt?;
        let e = self.exchanges.get_mut(&ex)?;
        (idx < e.attempts.len()).then_some((e, idx))
    }

    /// The attempt an upstream socket serves now, read only.
    fn attempt(&self, sock: SockId) -> Option<&Attempt> {
        let (ex, idx) = self.socks.get(sock)?.attempt?;
        self.exchanges.get(&ex)?.attempts.get(idx)
    }

    /// The exchange a client socket serves now (the newest in flight).
    fn current_mut(&mut self, sock: SockId) -> Option<&mut Exchange> {
        let s = self.socks.get(sock)?;
        let ex = *s.exchanges.back()?;
        self.exchanges.get_mut(&ex)
    }

    /// [`Self::current_mut`], to read.
    fn current(&self, sock: SockId) -> Option<&Exchange> {
        let ex = *self.socks.get(sock)?.exchanges.back()?;
        self.exchanges.get(&ex)
    }

    // ===== messages =====

    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        ts: u64,
        tid: u32,
        sock: SockId,
        dir: Dir,
        bytes: u32,
        head: Head,
        prev_touch: Option<SockId>,
        prev_msg_bytes: u64,
        prev_msg_last: u64,
        keep_alive: bool,
        out: &mut Vec<Record>,
    ) {
        // A socket id the engine never saw started while evidence was lost: whatever
        // exchange this thread is working for lacks part of its evidence.
        if self.socks.get_any(sock).is_none() {
            self.counters.unknown_socket_events += 1;
            self.mark_incomplete_via(prev_touch);
            return;
        }
        if prev_touch.is_some_and(|t| self.socks.get_any(t).is_none()) {
            self.mark_incomplete_via(Some(sock));
        }
        let Some(s) = self.socks.get_mut(sock) else {
            return;
        };
        s.last_activity = ts;
        let side = s.side;
        if s.tunnel {
            // The protocol the connection switched to (see `Sock::tunnel`).
            return;
        }
        if side == Side::Client && (s.http2 || is_http2_preface(&head)) {
            if !s.http2 {
                s.http2 = true;
                s.http2_preface = Some(ts);
                self.counters.http2_connections += 1;
            }
            let http1_answer = dir == Dir::Send && matches!(head, Head::Status(_));
            let preface = if dir == Dir::Send {
                s.http2_preface.take()
            } else {
                None
            };
            match preface.filter(|_| http1_answer) {
                Some(at) => {
                    // Not HTTP/2 after all: the preface was a bad request.
                    s.http2 = false;
                    self.counters.http2_connections =
                        self.counters.http2_connections.saturating_sub(1);
                    self.client_request(at, sock, http2_preface_line(), 0, out);
                }
                None => {
                    if dir == Dir::Send {
                        self.last_reply.remove(&tid);
                    }
                    return;
                }
            }
        }
        match (side, dir) {
            (Side::Client, Dir::Recv) => self.client_request(ts, sock, head, prev_msg_last, out),
            (Side::Client, Dir::Send) => {
                // The upstream socket touched last, else the one whose reply
                // this thread read last when only upstream sockets were touched
                // since (nginx may close a pooled connection between reading a
                // reply and forwarding it).
                let replied = self.last_reply.remove(&tid);
                let up_last = prev_touch
                    .and_then(|t| self.socks.get_any(t))
                    .is_some_and(|s| s.side == Side::Upstream);
                let candidates = if up_last {
                    [prev_touch, replied]
                } else {
                    [None, None]
                };
                self.reattribute(ts, sock, &head, candidates, out);
                self.client_response(ts, sock, &head, bytes, keep_alive, out);
                if matches!(&head, Head::Status(st) if st.code == 101) {
                    self.start_tunnel(sock);
                }
            }
            (Side::Upstream, Dir::Send) => {
                self.upstream_request(ts, sock, head, prev_touch, prev_msg_bytes, out)
            }
            (Side::Upstream, Dir::Recv) => {
                if self.last_reply.len() >= MAX_THREADS_REMEMBERED {
                    self.last_reply.clear();
                }
                self.last_reply.insert(tid, sock);
                self.upstream_response(ts, sock, &head)
            }
        }
    }

    fn client_request(
        &mut self,
        ts: u64,
        sock: SockId,
        head: Head,
        prev_msg_last: u64,
        out: &mut Vec<Record>,
    ) {
        // The response that just ended sent its last byte at `prev_msg_last`.
        if let Some(cur) = self.current_mut(sock) {
            if cur.response.is_some() && prev_msg_last > 0 {
                cur.last_send = cur.last_send.max(prev_msg_last);
            }
        }
        let owner = self.socks.get(sock).map_or(0, |s| s.owner);
        match head {
            Head::Request(r) => {
                // Exchanges whose response has started are over: nginx reads the next
                // request only after it has finished the previous response.
                // nginx reads a new request only once every request already in
                // its buffer is answered (HTTP/1.x), so every earlier exchange on
                // the connection is over. One guessed for a pipelined request
                // that has not answered was none: its upstream request was the
                // proxy's own, for the exchange before it (an SSI include, say,
                // whose target differs from that exchange's). A client
                // exchange that has not answered lost its response's evidence
                // (a full ring): ended here, incomplete, it cannot take the
                // next exchange's response, and the ones after it theirs.
                // A guess whose upstream reply has not come yet may instead be
                // another client's request, sent from a timer in the loop
                // iteration that touched this connection last (`limit_req`
                // delays): it becomes an orphan, which the response that
                // forwards its reply claims.
                let mut done = std::mem::take(&mut self.ending);
                let mut orphaned = Vec::new();
                if let Some(s) = self.socks.get(sock) {
                    for id in &s.exchanges {
                        let Some(x) = self.exchanges.get_mut(id) else {
                            continue;
                        };
                        if x.orphan || x.http2 {
                            continue;
                        }
                        if x.inferred && x.response.is_none() {
                            let waiting = x
                                .attempts
                                .last()
                                .is_some_and(|a| a.first_byte.is_none() && !a.ended());
                            if waiting && !x.subrequest {
                                x.orphan = true;
                                x.client = ORPHAN_CLIENT;
                                orphaned.push(*id);
                                continue;
                            }
                            x.subrequest = true;
                        } else if x.response.is_none() && !x.subrequest {
                            x.incomplete = true;
                            self.counters.unanswered_before_next_request += 1;
                        }
                        done.push(*id);
                    }
                }
                if !orphaned.is_empty() {
                    if let Some(s) = self.socks.get_mut(sock) {
                        s.exchanges.retain(|id| !orphaned.contains(id));
                    }
                }
                for ex in done.drain(..) {
                    self.finish(ex, End::NextRequest, out);
                }
                self.ending = done;
                self.open_exchange(sock, owner, ts, Some(r), out);
            }
            _ => {
                // A request body (after 100-continue, or late after an early
                // response) or bytes that are not HTTP. Only a connection with no
                // exchange at all opens one: nginx will answer it (400) or close.
                let has_any = self
                    .socks
                    .get(sock)
                    .is_some_and(|s| !s.exchanges.is_empty());
                if !has_any {
                    self.open_exchange(sock, owner, ts, None, out);
                }
            }
        }
    }

    /// A response starts on `client` right after the thread touched an upstream
    /// socket (the first candidate; the second is the socket whose reply it read
    /// last, when it only closed pooled connections since): nginx is forwarding
    /// that socket's reply (or its failure) to this client, so the attempt there
    /// serves this client's waiting exchange, whatever the attempt's request was
    /// attributed to when it was sent. Requests run from posted events (the
    /// next pipelined request on a connection) are sent after nginx touched
    /// other connections; without this their attempts joined whichever exchange
    /// was touched last and their responses found no exchange (a burst of
    /// pipelined h2load requests: 51 % of exchanges without a record, records
    /// with dozens of foreign attempts). An attempt whose reply came back, and
    /// whose request went out, before its exchange's response started is that
    /// exchange's own and never moves.
    fn reattribute(
        &mut self,
        ts: u64,
        client: SockId,
        head: &Head,
        candidates: [Option<SockId>; 2],
        out: &mut Vec<Record>,
    ) {
        if matches!(head, Head::Status(st) if st.code < 200 && st.code != 101) {
            return;
        }
        let Some(c) = self.socks.get(client) else {
            return;
        };
        let owner = c.owner;
        let waiting = c
            .exchanges
            .iter()
            .find(|e| self.exchanges.get(e).is_some_and(Exchange::awaits_response))
            .copied();
        // The first candidate that decides: one serving the waiting exchange
        // already (the usual case), or one whose attempt is foreign to the
        // exchange it sits in.
        let mut found = None;
        for via in candidates.into_iter().flatten() {
            let Some((from, idx)) = self
                .socks
                .get_any(via)
                .filter(|u| u.side == Side::Upstream)
                .and_then(|u| u.attempt)
            else {
                continue;
            };
            if waiting == Some(from) {
                return;
            }
            let Some(x) = self.exchanges.get(&from) else {
                continue;
            };
            let Some(a) = x.attempts.get(idx) else {
                continue;
            };
            // Its reply came back, and the exchange it sits in has not
            // answered, or answered before that reply or before the request was
            // even sent: that response did not come from here.
            // An HTTP/2 stream's attempt stays with its stream: its client
            // responses are not read, so none can claim it.
            // Taken for the proxy's own request of an exchange that had
            // answered (a subrequest): a request sent from a timer, whose
            // thread's last touch was that exchange (a `proxy_cache_lock`
            // waiter whose lock timed out), is claimed by the response it
            // decided, for the client still waiting, even with no reply (the
            // proxy's 504 after its read timeout).
            let foreign = !x.http2
                && (x.orphan
                    || (x.subrequest && waiting.is_some())
                    || a.first_byte.is_some_and(|fb| match &x.response {
                        None => true,
                        Some(r) => fb > r.ts || a.request_sent.is_some_and(|sent| sent > r.ts),
                    }));
            // A reply whose status this response does not carry was not
            // forwarded by it (an HTTP/2 stream's reply, unattributed, on a
            // pool its HTTP/1 neighbours share); a response the proxy made
            // itself (5xx) may follow any reply.
            let other_status = match (head, a.status) {
                (Head::Status(st), Some(theirs)) => st.code != theirs && st.code < 500,
                _ => false,
            };
            if foreign && !other_status {
                found = Some((from, idx));
                break;
            }
        }
        let Some((from, idx)) = found else {
            return;
        };
        let Some(x) = self.exchanges.get_mut(&from) else {
            return;
        };
        let was_orphan = x.orphan;
        let attempt = x.attempts.remove(idx);
        // Later attempts of `from` shift down one place.
        for (j, later) in x.attempts.iter().enumerate().skip(idx) {
            if let Some(s) = self.socks.get_any_mut(later.sock) {
                if s.attempt == Some((from, j + 1)) {
                    s.attempt = Some((from, j));
                }
            }
        }
        // An orphan, or an exchange guessed for a pipelined request on the
        // wrong connection, is left with nothing: it never existed.
        if x.attempts.is_empty() && (was_orphan || (x.inferred && x.response.is_none())) {
            let client_of = x.client;
            self.exchanges.remove(&from);
            self.forget_exchange(client_of, from);
        }
        let to = match waiting {
            Some(w) => w,
            None => {
                // The next pipelined request on this connection: its line is
                // the one the proxy sent upstream.
                let start = attempt.request_sent.or(attempt.started()).unwrap_or(ts);
                self.open_inferred(client, owner, start, out)
            }
        };
        let Some(e) = self.exchanges.get_mut(&to) else {
            return;
        };
        let sock = attempt.sock;
        e.attempts.push(attempt);
        e.touch(ts);
        let at = e.attempts.len() - 1;
        if let Some(s) = self.socks.get_any_mut(sock) {
            s.attempt = Some((to, at));
        }
        self.counters.reattributed_attempts += 1;
        if was_orphan {
            self.counters.unattributed_attempts =
                self.counters.unattributed_attempts.saturating_sub(1);
        }
    }

    /// An exchange that answered its client ends with an attempt still waiting:
    /// no reply, no failure, the proxy never closed it. Its response did not come
    /// from there, and nginx does not wait on an upstream once the response is
    /// done, so the attempt belongs to a request run from a posted event that the
    /// thread's last touch pinned on this exchange. It goes on as an orphan, for
    /// the client response that follows its reply to claim (`reattribute`).
    fn release_foreign_attempts(&mut self, ex: &mut Exchange, out: &mut Vec<Record>) {
        let mut i = 0;
        while i < ex.attempts.len() {
            let a = &ex.attempts[i];
            // The proxy's close of a unix socket shows nowhere (no TCP state):
            // an attempt there that got no reply is this exchange's own, given
            // up (a timeout, a client that left).
            let waiting = a.request_sent.is_some() && !a.ended() && a.peer.unix.is_none();
            let points_here = self
                .socks
                .get_any(a.sock)
                .is_some_and(|s| s.attempt == Some((ex.id, i)));
            if !(waiting && points_here) {
                i += 1;
                continue;
            }
            let attempt = ex.attempts.remove(i);
            // Sockets of the later attempts still point into `ex`, which is
            // ending: nothing reads those pointers again.
            let sock = attempt.sock;
            let id = self.open_orphan(ex.pid, attempt.request_sent.unwrap_or(ex.start), out);
            if let Some(o) = self.exchanges.get_mut(&id) {
                o.last_activity = ex.last_activity;
                o.attempts.push(attempt);
            }
            self.counters.unattributed_attempts += 1;
            if let Some(s) = self.socks.get_any_mut(sock) {
                s.attempt = Some((id, 0));
            }
        }
    }

    /// The proxy forwarded `101 Switching Protocols` on client connection
    /// `client`: the connection and the upstream connection that answered carry
    /// another protocol from now on (WebSocket frames both ways), and each
    /// message there had become an exchange of its own with an "invalid" reply.
    fn start_tunnel(&mut self, client: SockId) {
        let upstream = self
            .current_mut(client)
            .filter(|e| e.response.as_ref().is_some_and(|r| r.status == Some(101)))
            .and_then(|e| e.attempts.last())
            .filter(|a| a.status == Some(101))
            .map(|a| a.sock);
        for sock in [Some(client), upstream].into_iter().flatten() {
            if let Some(s) = self.socks.get_mut(sock) {
                s.tunnel = true;
            }
        }
    }

    fn client_response(
        &mut self,
        ts: u64,
        sock: SockId,
        head: &Head,
        bytes: u32,
        keep_alive: bool,
        out: &mut Vec<Record>,
    ) {
        let Some(s) = self.socks.get(sock) else {
            return;
        };
        let owner = s.owner;
        let mut target = s
            .exchanges
            .iter()
            .find(|e| self.exchanges.get(e).is_some_and(Exchange::awaits_response))
            .copied();
        if target.is_none() {
            self.counters.orphan_responses += 1;
            // A final response with no request seen for it: the proxy answered a
            // pipelined request itself (its line came in the receive of the one
            // before, and no upstream request showed it). It is an exchange all
            // the same; its request is unknown (`complete: false`).
            if matches!(head, Head::Status(st) if st.code >= 200) {
                target = Some(self.open_inferred(sock, owner, ts, out));
            }
        }
        let Some(ex) = target.and_then(|id| self.exchanges.get_mut(&id)) else {
            return;
        };
        ex.touch(ts);
        let status = match head {
            Head::Status(st) if (100..200).contains(&st.code) && st.code != 101 => {
                ex.interim = true;
                return;
            }
            Head::Status(st) => Some(st.code),
            _ => None,
        };
        // What the proxy forwards from an upstream whose status was unread (a
        // FastCGI reply) is that upstream's status. A 502 or 504 is the proxy's
        // own: it rejected the reply's header, or gave up waiting for its end
        // (`outcome::attempt_outcome` says which).
        if let Some(a) = ex.attempts.last_mut().filter(|a| a.status_unread) {
            a.status = a.status.or(status.filter(|s| !matches!(s, 502 | 504)));
        }
        ex.response = Some(ResponseStart {
            status,
            ts,
            keep_alive,
        });
        ex.last_send = ts;
        ex.response_bytes = u64::from(bytes);
    }

    fn upstream_request(
        &mut self,
        ts: u64,
        sock: SockId,
        head: Head,
        prev_touch: Option<SockId>,
        prev_msg_bytes: u64,
        out: &mut Vec<Record>,
    ) {
        let request = match head {
            Head::Request(r) => Some(r),
            _ => None,
        };
        // The request of an attempt already attached (a fresh connect)?
        if let Some((e, idx)) = self.attempt_mut(sock) {
            let a = &mut e.attempts[idx];
            if request.is_none() && a.request_sent == Some(ts) {
                // The same held request start twice: the probe's release raced
                // between the owning thread and a reset or error in softirq.
                self.counters.duplicate_held_sends += 1;
                return;
            }
            // Only the connection's first request (no message before it): on a
            // reused connection an attempt without a request is one whose request
            // and reply were lost, and this send belongs to a later exchange.
            if a.request_sent.is_none() && a.first_byte.is_none() && prev_msg_bytes == 0 {
                a.request_sent = Some(ts);
                a.upstream_request = request;
                e.touch(ts);
                self.subrequest_of_answered(sock);
                return;
            }
        }
        // More of the attempt's own request: a body the proxy streams as the
        // client sends it (`proxy_request_buffering off`), still going out
        // after the upstream began an early answer (401, 413). The thread read
        // it from that exchange's client just before.
        if request.is_none() {
            if let Some((e, _)) = self.attempt_mut(sock) {
                if e.response.is_none() && prev_touch == Some(e.client) {
                    e.touch(ts);
                    return;
                }
            }
        }
        let s = self.socks.get(sock).expect("checked by caller");
        let fresh_unattributed = s.how == Opened::Connect && s.uses == 0;
        // A connection reused from the keep-alive pool: the first send of a new
        // attempt happens in the handler that read the client request, so the
        // loop-iteration rule applies. A fresh connect that found no exchange must
        // not: its first send runs in a later iteration.
        let ex = if fresh_unattributed {
            None
        } else {
            self.resolve(prev_touch, ts, out)
        };
        // The thread's last touch named an HTTP/2 stream, but the request's
        // query is a waiting HTTP/1 client's own: sent from a timer (a
        // `limit_req` delay) in an iteration that had served a stream.
        let ex = match ex {
            Some(id) if self.exchanges.get(&id).is_some_and(|x| x.http2) => {
                self.waiting_with_query(sock, request.as_ref()).or(Some(id))
            }
            other => other,
        };
        let ex = match ex {
            Some(ex) => Some(ex),
            None => {
                let found = self.match_request_line(sock, request.as_ref());
                // The exchange still waits on another attempt: nginx never runs
                // two attempts of one request at once, so this request runs
                // beside it, the proxy's own (a `mirror` subrequest asks for
                // the same URI): it goes to an exchange that writes no record.
                if let Some(x) = found.and_then(|id| self.exchanges.get(&id)) {
                    if x.attempts.last().is_some_and(|a| !a.ended()) {
                        if fresh_unattributed {
                            self.counters.unattributed_attempts =
                                self.counters.unattributed_attempts.saturating_sub(1);
                        }
                        let owner = self.socks.get(sock).map_or(0, |s| s.owner);
                        let id = self.open_proxys_own(owner, ts, out);
                        self.attach_sent(id, sock, ts, fresh_unattributed, request, out);
                        return;
                    }
                }
                if found.is_some() {
                    self.counters.attributed_by_request_line += 1;
                    if fresh_unattributed {
                        self.counters.unattributed_attempts =
                            self.counters.unattributed_attempts.saturating_sub(1);
                    }
                } else if !fresh_unattributed {
                    self.counters.unattributed_attempts += 1;
                }
                found
            }
        };
        let ex = match ex {
            Some(ex) => ex,
            None => {
                let owner = self.socks.get(sock).map_or(0, |s| s.owner);
                self.open_orphan(owner, ts, out)
            }
        };
        self.attach_sent(ex, sock, ts, fresh_unattributed, request, out);
        self.subrequest_of_answered(sock);
    }

    /// Attaches `sock`'s attempt, whose request was sent at `ts`, to `ex`.
    fn attach_sent(
        &mut self,
        ex: ExId,
        sock: SockId,
        ts: u64,
        fresh_unattributed: bool,
        request: Option<RequestLine>,
        out: &mut Vec<Record>,
    ) {
        // A connect no exchange claimed at its start (made from a timer): its
        // attempt began with the connect, and the connect's completion went by
        // before this send.
        let connect = self
            .socks
            .get(sock)
            .filter(|_| fresh_unattributed)
            .map(|s| (s.seen_since, s.established_at));
        self.attach(ex, sock, ts, false, out);
        if let Some((e, idx)) = self.attempt_mut(sock) {
            let a = &mut e.attempts[idx];
            a.request_sent = Some(ts);
            a.upstream_request = request;
            if let Some((started, established)) = connect {
                a.connect_start = Some(started);
                a.established = established;
            }
        }
    }

    /// An upstream request guessed to be the next pipelined request on a client
    /// connection (the thread last touched the connection after its exchange
    /// had started answering) that asks for that exchange's own target: the
    /// proxy's own request for it (a cache's background update after a stale
    /// hit, the slice module's next range), not a request of the client's.
    /// nginx logs none of them as a request, so they write no record (a
    /// pipelined duplicate of the same target is the price, and rare).
    fn subrequest_of_answered(&mut self, sock: SockId) {
        let Some((ex, idx)) = self.socks.get(sock).and_then(|s| s.attempt) else {
            return;
        };
        let Some(x) = self.exchanges.get(&ex) else {
            return;
        };
        if !x.inferred || x.orphan || x.http2 || x.response.is_some() || x.attempts.len() != 1 {
            return;
        }
        let Some(target) = x
            .attempts
            .get(idx)
            .and_then(|a| a.upstream_request.as_ref())
            .map(|r| r.target.clone())
        else {
            return;
        };
        let Some(c) = self.socks.get(x.client) else {
            return;
        };
        // The client exchange opened before it on that connection (past the
        // proxy's earlier requests for it: one per slice).
        let answered = c
            .exchanges
            .iter()
            .rev()
            .skip_while(|id| **id != ex)
            .skip(1)
            .filter_map(|id| self.exchanges.get(id))
            .find(|p| !p.subrequest)
            .filter(|p| p.response.is_some())
            .and_then(|p| p.request.as_ref())
            .is_some_and(|r| r.target == target);
        if answered {
            if let Some(x) = self.exchanges.get_mut(&ex) {
                x.subrequest = true;
            }
        }
    }

    /// Fallback attribution: an exchange of the same process, waiting for an
    /// upstream, whose request target matches the proxy's request to the upstream.
    /// The exchange in flight that opened first.
    fn oldest_in_flight(&mut self) -> Option<ExId> {
        while let Some(&id) = self.order.front() {
            if self.exchanges.contains_key(&id) {
                return Some(id);
            }
            self.order.pop_front();
        }
        None
    }

    /// The HTTP/1 exchange of the same process that waits for its first
    /// attempt and asked with the same method and query (a non-empty one,
    /// whose hash is in the line), if exactly one does.
    fn waiting_with_query(&self, sock: SockId, request: Option<&RequestLine>) -> Option<ExId> {
        let request = request.filter(|r| r.query != 0)?;
        let owner = self.socks.get(sock)?.owner;
        let mut found = self.exchanges.values().filter(|e| {
            e.pid == owner
                && !e.http2
                && !e.orphan
                && e.response.is_none()
                && e.attempts.is_empty()
                && e.request
                    .as_ref()
                    .is_some_and(|r| r.query == request.query && r.method == request.method)
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.id)
    }

    fn match_request_line(&self, sock: SockId, request: Option<&RequestLine>) -> Option<ExId> {
        let request = request?;
        let s = self.socks.get(sock)?;
        let (owner, from_timer) = (s.owner, s.from_timer);
        self.exchanges
            .values()
            .filter(|e| e.pid == owner && e.response.is_none())
            .filter(|e| {
                e.attempts
                    .last()
                    .is_none_or(|a| a.first_byte.is_none() || a.status.is_none())
            })
            // The same method and target, and not another query: a proxy
            // passes a request's query on as it came (the records elide it, a
            // hash tells queries apart), so a request for the same path with
            // another query is someone else's: an HTTP/2 stream's that
            // `limit_req` delayed went to a waiting HTTP/1 exchange.
            .filter(|e| {
                e.request.as_ref().is_some_and(|r| {
                    r.method == request.method
                        && r.target == request.target
                        && (r.query == request.query || r.query == 0 || request.query == 0)
                })
            })
            // The first opened, whatever the map's order, among those whose
            // query is the request's own (one added by the proxy still finds
            // its path's). A connect from a timer serves, first, one not
            // waiting on an attempt of its own (requests for one URL that
            // `limit_req` delayed go out one per timer, each its own); one made
            // beside a request's own attempt (a `mirror`) serves the first
            // opened.
            .map(|e| {
                let other_query = e.request.as_ref().is_some_and(|r| r.query != request.query);
                let busy = e.attempts.last().is_some_and(|a| !a.ended());
                (other_query, from_timer && busy, e.id)
            })
            .min()
            .map(|(_, _, id)| id)
    }

    fn upstream_response(&mut self, ts: u64, sock: SockId, head: &Head) {
        let Some((e, idx)) = self.attempt_mut(sock) else {
            self.counters.late_events += 1;
            return;
        };
        e.touch(ts);
        let a = &mut e.attempts[idx];
        if a.first_byte.is_none() {
            a.first_byte = Some(ts);
        }
        a.last_recv = Some(ts);
        match head {
            Head::Status(st) if (100..200).contains(&st.code) && st.code != 101 => {}
            Head::Status(st) => {
                a.status = Some(st.code);
                a.reply_http11 = st.version == "HTTP/1.1";
            }
            Head::ResponseUnread => a.status_unread = true,
            Head::Request(_) | Head::Other { .. } => a.invalid = true,
            Head::None => {}
        }
    }

    fn progress(&mut self, ts: u64, sock: SockId, dir: Dir, msg_bytes: u64) {
        let Some(s) = self.socks.get_mut(sock) else {
            return;
        };
        s.last_activity = ts;
        match (s.side, dir) {
            (Side::Client, Dir::Send) => {
                if let Some(ex) = self.current_mut(sock) {
                    if ex.response.is_some() {
                        ex.last_send = ts;
                        ex.response_bytes = msg_bytes;
                        ex.send_blocked = None;
                    }
                    ex.touch(ts);
                }
            }
            (Side::Client, Dir::Recv) => {
                if let Some(ex) = self.current_mut(sock) {
                    ex.touch(ts);
                }
            }
            (Side::Upstream, _) => {
                if let Some((e, idx)) = self.attempt_mut(sock) {
                    e.touch(ts);
                    if dir == Dir::Recv {
                        e.attempts[idx].last_recv = Some(ts);
                    }
                }
            }
        }
    }

    /// A response's send found the client's buffer full: it goes on when the
    /// client reads (a `progress` then), or the proxy gives up on the client.
    fn send_blocked(&mut self, ts: u64, sock: SockId) {
        if self.side(sock) != Some(Side::Client) {
            return;
        }
        if let Some(ex) = self.current_mut(sock) {
            if ex.response.is_some() {
                ex.send_blocked.get_or_insert(ts);
                ex.touch(ts);
            }
        }
    }

    // ===== TCP evidence =====

    fn side(&self, sock: SockId) -> Option<Side> {
        self.socks.get(sock).map(|s| s.side)
    }

    /// The peer's FIN on `sock`: `read` when a receive returned 0, else it arrived
    /// (CLOSE_WAIT).
    fn peer_fin(&mut self, ts: u64, sock: SockId, read: bool) {
        match self.side(sock) {
            Some(Side::Client) => self.client_left(sock, ts, false),
            Some(Side::Upstream) => {
                if read {
                    self.read_failure(sock);
                }
                if let Some((e, idx)) = self.attempt_mut(sock) {
                    e.touch(ts);
                    let a = &mut e.attempts[idx];
                    a.peer_fin.get_or_insert(ts);
                    if read {
                        a.eof_read.get_or_insert(ts);
                    }
                }
            }
            None => self.counters.unknown_socket_events += 1,
        }
    }

    /// The client left (FIN or RST) while exchanges were in flight on `sock`.
    fn client_left(&mut self, sock: SockId, ts: u64, reset: bool) {
        let Some(s) = self.socks.get_mut(sock) else {
            return;
        };
        if !reset {
            s.fin.get_or_insert(ts);
        }
        let ids: Vec<ExId> = s.exchanges.iter().copied().collect();
        for id in ids {
            if let Some(ex) = self.exchanges.get_mut(&id) {
                ex.touch(ts);
                if reset {
                    ex.client_rst.get_or_insert(ts);
                } else {
                    ex.client_fin.get_or_insert(ts);
                }
            }
        }
    }

    fn io_error(&mut self, ts: u64, sock: SockId, dir: Dir, errno: i32) {
        match self.side(sock) {
            Some(Side::Client) => {
                if errno == libc::ECONNRESET {
                    self.client_left(sock, ts, true);
                }
                if dir == Dir::Send {
                    if let Some(ex) = self.current_mut(sock) {
                        ex.response_lost.get_or_insert(ts);
                        if errno == libc::EPIPE {
                            ex.client_rst.get_or_insert(ts);
                        }
                    }
                }
            }
            Some(Side::Upstream) if self.raised_by_reset_after_fin(sock, errno) => {}
            Some(Side::Upstream) => {
                self.read_failure(sock);
                if let Some((e, idx)) = self.attempt_mut(sock) {
                    e.touch(ts);
                    e.attempts[idx].error.get_or_insert((errno, ts));
                    e.attempts[idx].error_read.get_or_insert(ts);
                }
            }
            None => self.counters.unknown_socket_events += 1,
        }
    }

    /// The proxy peeked at a connection and found it failed. On a client
    /// connection it learned that the client left. On an upstream connection
    /// it learned of the failure without reading the reply: the connection's
    /// reset is no longer unread (nginx's keep-alive pool peeks at an idle
    /// connection and closes it, for no request). The failure is no read
    /// after the head either: the attempt's reply ended before the pool took
    /// the connection back, and a proxy that reads on meets it again, as an
    /// end of file.
    fn peek_error(&mut self, ts: u64, sock: SockId, errno: i32) {
        match self.side(sock) {
            Some(Side::Client) => {
                if errno == libc::ECONNRESET {
                    self.client_left(sock, ts, true);
                }
            }
            Some(Side::Upstream) if self.raised_by_reset_after_fin(sock, errno) => {}
            Some(Side::Upstream) => self.read_failure(sock),
            None => self.counters.unknown_socket_events += 1,
        }
    }

    /// The proxy began ending a TLS connection (`SSL_shutdown`): on a client
    /// connection with a response under way, that is the proxy's close, which
    /// ends the response. nginx sends its `close_notify` and waits for the
    /// client's answer before it closes the socket, so a client that closes at
    /// the alert (its FIN) is no client that left first. (Before any response,
    /// the socket's own close tells how long the client had been quiet.)
    fn tls_shutdown(&mut self, ts: u64, tid: u32, sock: SockId) {
        match self.side(sock) {
            Some(Side::Client) => {
                if self.current(sock).is_some_and(|ex| ex.response.is_some()) {
                    self.proxy_closed_client(sock, ts, tid, &MsgCursor::default());
                }
            }
            Some(Side::Upstream) => {}
            None => self.counters.unknown_socket_events += 1,
        }
    }

    /// A watched process exited. Its exchanges still unanswered never will be:
    /// a worker killed or crashed mid-request (a graceful exit, after a reload,
    /// waits for its requests to be answered). The kernel closes its sockets
    /// after this event.
    fn proxy_exited(&mut self, pid: u32, ts: u64) {
        // Records already built of responses it cut on its way out.
        for h in self.held.iter_mut().filter(|h| {
            h.record.proxy.pid == pid && ts.saturating_sub(h.end) <= exchange::SHUTDOWN_CUT_NS
        }) {
            build::mark_shut_down(&mut h.record, pid);
        }
        // Unanswered exchanges died with it; answered ones it may have cut on
        // its way out (`Exchange::shut_down_mid_response`).
        for ex in self.exchanges.values_mut() {
            if ex.pid == pid && !ex.orphan {
                ex.proxy_exited.get_or_insert(ts);
                ex.touch(ts);
            }
        }
    }

    /// The proxy read an upstream connection's end (EOF or a failed call): a
    /// reset before it is no longer unread (nginx's keep-alive pool reads the
    /// end of an idle connection and closes it, for no request).
    fn read_failure(&mut self, sock: SockId) {
        if let Some(s) = self.socks.get_mut(sock) {
            s.unread_reset = None;
        }
    }

    /// `closed`: the owning thread's own close, with the socket it touched
    /// before it in the same loop iteration.
    #[allow(clippy::too_many_arguments)]
    fn state(
        &mut self,
        ts: u64,
        tid: u32,
        sock: SockId,
        (old, new): (TcpState, TcpState),
        (local, peer): (crate::event::Endpoint, crate::event::Endpoint),
        closed: Option<Option<SockId>>,
        msg: MsgCursor,
    ) {
        let local_close = closed.is_some();
        let Some(s) = self.socks.get_mut(sock) else {
            self.counters.unknown_socket_events += 1;
            return;
        };
        // The local port of a connect shows only after SYN_SENT.
        if local.port != 0 {
            s.local = local;
        }
        if peer.port != 0 {
            s.peer = peer;
        }
        if (old, new) == (TcpState::SynSent, TcpState::Established) {
            s.established_at = Some(ts);
        }
        let (side, local_ep, seen_since, fin) = (s.side, s.local, s.seen_since, s.fin);
        match side {
            Side::Client => {
                if old == TcpState::CloseWait && fin.is_none() {
                    // Leaving CLOSE_WAIT with no FIN seen: it came before the
                    // probes first saw the socket (a request sent with its FIN,
                    // read only after both were in).
                    self.client_left(sock, seen_since, false);
                }
                if msg.dir == Some(Dir::Send) {
                    if let Some(ex) = self.current_mut(sock) {
                        if ex.response.is_some() && msg.last > 0 {
                            ex.last_send = ex.last_send.max(msg.last);
                        }
                    }
                }
                if new == TcpState::CloseWait {
                    self.client_left(sock, ts, false);
                }
                if local_close {
                    self.proxy_closed_client(sock, ts, tid, &msg);
                }
            }
            Side::Upstream => {
                let Some((e, idx)) = self.attempt_mut(sock) else {
                    return;
                };
                e.touch(ts);
                let a = &mut e.attempts[idx];
                if local_ep.port != 0 {
                    a.local = local_ep;
                }
                a.reply_cursor(&msg);
                match (old, new) {
                    (TcpState::SynSent, TcpState::Established) => a.established = Some(ts),
                    (TcpState::SynSent, TcpState::Close) => {
                        a.connect_failed.get_or_insert(ts);
                    }
                    (_, TcpState::CloseWait) => {
                        a.peer_fin.get_or_insert(ts);
                    }
                    _ => {}
                }
                if let Some(before) = closed {
                    if a.local_close.is_none() {
                        a.local_close = Some(ts);
                        a.close_after_touch = before;
                    }
                }
            }
        }
    }

    /// The proxy closed a client connection: a response in progress ends here,
    /// unless the client had left first (the close answers the client's).
    fn proxy_closed_client(&mut self, sock: SockId, ts: u64, tid: u32, msg: &MsgCursor) {
        let own = self.last_own.get(&tid).copied().unwrap_or_default();
        if let Some(ex) = self.current_mut(sock) {
            if ex.client_left().is_none() {
                // The client's silence: since the last byte of its request (the
                // socket's message cursor), else since anything happened.
                let last_from_client = match msg.dir {
                    Some(Dir::Recv) if msg.last > 0 => msg.last,
                    _ => ex.last_activity,
                };
                ex.closed_by_proxy.get_or_insert(ProxyClose {
                    at: ts,
                    client_quiet: ts.saturating_sub(last_from_client),
                });
            }
            ex.touch(ts);
            // Its thread's action before this close (and any write to this
            // client) was closing the exchange's current upstream: the proxy
            // gave up on that reply and ended the client's connection with it.
            if let Some(a) = ex.attempts.last() {
                if a.local_close.is_some() && own.last == Some(sock) && own.before == Some(a.sock) {
                    ex.upstream_dropped.get_or_insert(ts);
                }
            }
        }
    }

    fn reset(&mut self, ts: u64, tid: u32, sock: SockId, dir: ResetDir, unacked: u32) {
        if dir != ResetDir::Received {
            match self.side(sock) {
                Some(Side::Upstream) => {
                    if let Some((e, idx)) = self.attempt_mut(sock) {
                        e.attempts[idx].rst_out.get_or_insert(ts);
                    }
                }
                Some(Side::Client) => {
                    // The proxy reset its client (nginx's
                    // reset_timedout_connection): its close, and the
                    // ECONNRESET the socket then reports is its own doing.
                    if let Some(s) = self.socks.get_mut(sock) {
                        s.reset_sent = true;
                    }
                    self.proxy_closed_client(sock, ts, tid, &MsgCursor::default());
                }
                None => {}
            }
            return;
        }
        match self.side(sock) {
            Some(Side::Client) => {
                self.client_left(sock, ts, true);
                // The client reset the connection before it had acknowledged
                // all the proxy wrote: it never got the whole response, even if
                // the proxy had written its last byte (a client that stops
                // reading and leaves fills the proxy's send queue first).
                // Over TLS, the proxy ends the connection with a
                // `close_notify` alert: a client that had closed first resets
                // that alone, after the whole response.
                let tls = self.socks.get(sock).is_some_and(|s| s.tls);
                if unacked > 0 {
                    if let Some(ex) = self.current_mut(sock) {
                        if ex.response.is_some()
                            && !reset_after_whole_response(ex, tls, unacked, ts)
                        {
                            ex.response_lost.get_or_insert(ts);
                        }
                    }
                }
            }
            Some(Side::Upstream) => {
                if self.resets_after_its_fin(sock) {
                    if let Some(s) = self.socks.get_mut(sock) {
                        s.reset_after_fin = true;
                    }
                    return;
                }
                // Idle: its attempt has its reply, or its exchange is over (a
                // refused connect's reset comes while its attempt is under way).
                let idle = match self.attempt(sock) {
                    Some(a) => a.first_byte.is_some(),
                    None => self
                        .socks
                        .get(sock)
                        .is_some_and(|s| s.how == Opened::FirstUse || s.uses > 0),
                };
                if idle {
                    if let Some(s) = self.socks.get_mut(sock) {
                        s.unread_reset.get_or_insert(ts);
                    }
                }
                if let Some((e, idx)) = self.attempt_mut(sock) {
                    e.touch(ts);
                    // A reset that answers the proxy's own close (a peer whose
                    // socket was already gone, its own reset lost on the way)
                    // came after the proxy gave up: it decided nothing.
                    let a = &mut e.attempts[idx];
                    if a.local_close.is_none_or(|c| ts < c) {
                        a.rst_in.get_or_insert(ts);
                    }
                }
            }
            None => self.counters.unknown_socket_events += 1,
        }
    }

    /// Whether an upstream's reset came after it had answered and closed its
    /// end (its FIN): the closed socket answers whatever the proxy still
    /// sends, and the reply was over. Over TLS, the proxy's `close_notify` at
    /// its own close; an app that answers an upload early (401, 413) and
    /// closes without reading it, the rest of the request body.
    fn resets_after_its_fin(&self, sock: SockId) -> bool {
        self.attempt(sock)
            .is_some_and(|a| a.status.is_some() && a.peer_fin.is_some())
    }

    /// An error such a reset raised in the proxy's calls (see
    /// `Sock::reset_after_fin`).
    fn raised_by_reset_after_fin(&self, sock: SockId, errno: i32) -> bool {
        (errno == libc::EPIPE || errno == libc::ECONNRESET)
            && self.socks.get(sock).is_some_and(|s| s.reset_after_fin)
    }

    fn sock_error(&mut self, ts: u64, sock: SockId, errno: i32) {
        match self.side(sock) {
            Some(Side::Client) => {
                let own_reset = self.socks.get(sock).is_some_and(|s| s.reset_sent);
                if (errno == libc::ECONNRESET || errno == libc::EPIPE) && !own_reset {
                    self.client_left(sock, ts, true);
                }
            }
            Some(Side::Upstream) if self.raised_by_reset_after_fin(sock, errno) => {}
            Some(Side::Upstream) => {
                if let Some((e, idx)) = self.attempt_mut(sock) {
                    e.touch(ts);
                    e.attempts[idx].error.get_or_insert((errno, ts));
                }
            }
            None => self.counters.unknown_socket_events += 1,
        }
    }

    fn destroy(
        &mut self,
        ts: u64,
        tid: u32,
        sock: SockId,
        local_close: bool,
        msg: MsgCursor,
        out: &mut Vec<Record>,
    ) {
        let Some(side) = self.side(sock) else {
            self.counters.unknown_socket_events += 1;
            return;
        };
        match side {
            Side::Client => {
                if msg.dir == Some(Dir::Send) && msg.last > 0 {
                    if let Some(ex) = self.current_mut(sock) {
                        if ex.response.is_some() {
                            ex.last_send = ex.last_send.max(msg.last);
                        }
                    }
                }
                if local_close {
                    self.proxy_closed_client(sock, ts, tid, &msg);
                }
                let ids: Vec<ExId> = self
                    .socks
                    .get(sock)
                    .map(|s| s.exchanges.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    // A dead worker's exchange waits out the settle time: the
                    // kernel closes the worker's sockets in any order, and a
                    // request it held on a pooled upstream connection is
                    // reported only with that connection's end.
                    if self
                        .exchanges
                        .get(&id)
                        .is_some_and(|x| x.died_unanswered().is_some())
                    {
                        continue;
                    }
                    self.finish(id, End::ConnectionClosed, out);
                }
            }
            Side::Upstream => {
                if local_close {
                    self.reused_after_reset(ts, tid, sock, out);
                }
                if let Some((e, idx)) = self.attempt_mut(sock) {
                    e.touch(ts);
                    e.attempts[idx].reply_cursor(&msg);
                    if local_close {
                        e.attempts[idx].local_close.get_or_insert(ts);
                    }
                }
            }
        }
        self.socks.bury(sock);
    }

    /// A kept-alive upstream connection the upstream reset while it idled in the
    /// pool, taken for a request: nginx checks the connection's pending error
    /// before it sends (`ngx_http_upstream_test_connect`), finds ECONNRESET,
    /// counts a failed attempt ("connect() failed (104: Connection reset by
    /// peer) while connecting to upstream", a 502 in `$upstream_status`) and
    /// closes it, with no read or write on it in between. So when the thread
    /// closes such a connection right after working for an exchange that waits
    /// for an upstream (it read the client's request, or an earlier attempt
    /// failed), that exchange gets an attempt on it, reset. The pool's own
    /// close of a reset idle connection reads the failure first, and is no
    /// attempt.
    fn reused_after_reset(&mut self, ts: u64, tid: u32, sock: SockId, out: &mut Vec<Record>) {
        let Some(reset_at) = self.socks.get(sock).and_then(|s| s.unread_reset) else {
            return;
        };
        let Some(before) = self.last_own.get(&tid).and_then(|o| o.before) else {
            return;
        };
        let Some(ex) = self.waiting_for_upstream(before) else {
            return;
        };
        if self
            .socks
            .get(sock)
            .and_then(|s| s.attempt)
            .is_some_and(|(x, _)| x == ex)
        {
            return;
        }
        self.attach(ex, sock, ts, false, out);
        if let Some((e, idx)) = self.attempt_mut(sock) {
            e.attempts[idx].rst_in = Some(reset_at);
        }
    }

    /// The exchange a thread's action on `sock` served, if it still waits for an
    /// upstream: a client connection's exchange whose request came and whose
    /// response has not started, or the exchange of an upstream connection's
    /// attempt that has ended without a response. Unlike `resolve`, it opens no
    /// exchange.
    fn waiting_for_upstream(&self, sock: SockId) -> Option<ExId> {
        let s = self.socks.get_any(sock)?;
        let own = |x: &Exchange| !x.subrequest && !x.http2;
        match s.side {
            Side::Client => s.exchanges.back().copied().filter(|id| {
                self.exchanges.get(id).is_some_and(|x| {
                    own(x) && x.awaits_response() && !x.orphan && x.request.is_some()
                })
            }),
            Side::Upstream => {
                let (ex, idx) = s.attempt?;
                self.exchanges
                    .get(&ex)
                    .is_some_and(|x| own(x) && x.may_act_after(idx))
                    .then_some(ex)
            }
        }
    }

    // ===== ending exchanges =====

    /// Ends exchanges that have been quiet for the settle time after their response.
    fn settle(&mut self, out: &mut Vec<Record>) {
        let now = self.now;
        let settle = self.cfg.settle_ns;
        let quiet: Vec<ExId> = self
            .exchanges
            .values()
            .filter(|e| {
                // A response blocked on a client that does not read is not over:
                // it ends when the client reads or the connection does.
                (e.response.is_some()
                    || e.orphan
                    || e.http2
                    || (e.subrequest && e.attempts.iter().all(Attempt::ended))
                    || e.proxy_exited.is_some())
                    && e.send_blocked.is_none()
                    && now.saturating_sub(e.last_activity) >= settle
            })
            .map(|e| e.id)
            .collect();
        for id in quiet {
            self.finish(id, End::Settled, out);
        }
    }

    fn finish(&mut self, id: ExId, end: End, out: &mut Vec<Record>) {
        let Some(mut ex) = self.exchanges.remove(&id) else {
            return;
        };
        if ex.http2 {
            self.forget_exchange(ex.client, id);
            self.counters.http2_exchanges += 1;
            return;
        }
        if ex.subrequest {
            self.forget_exchange(ex.client, id);
            self.counters.subrequests += 1;
            return;
        }
        if ex.orphan && !ex.unclaimed_record {
            // Never claimed by a client response: counted as unattributed when
            // its request was sent.
            return;
        }
        if !ex.orphan
            && ex.inferred
            && ex.response.is_none()
            && end != End::Flushed
            && ex.attempts.iter().any(|a| !a.ended())
        {
            // Guessed for a pipelined request on the connection the thread
            // touched last, and that connection ended first: the attempt may
            // still be another client's (a posted request). Wait for its reply's
            // client response; written as it is if none claims it.
            self.forget_exchange(ex.client, id);
            ex.orphan = true;
            ex.unclaimed_record = true;
            self.counters.unattributed_attempts += 1;
            self.exchanges.insert(id, ex);
            return;
        }
        // nginx drops a request's upstream when its client leaves; it lets its
        // own subrequests finish.
        let dropped_for_client = ex.client_left().is_some_and(|c| {
            ex.attempts.last().is_some_and(|a| {
                a.first_byte.is_none()
                    && a.local_close
                        .is_some_and(|l| l >= c && a.upstream_failed().is_none_or(|f| f > l))
            })
        });
        if ex.inferred
            && ex.response.is_none()
            && !dropped_for_client
            && ex.died_unanswered().is_none()
            && matches!(end, End::ConnectionClosed | End::Settled)
        {
            // Guessed for a pipelined request, and never answered though its
            // connection ended (or, waiting as an orphan, no client response
            // claimed it): nginx answers every request it read before it
            // closes, so the upstream request was the proxy's own for the
            // exchange before (a cache's background update under a rewritten
            // URI, an include), which goes on after the client has gone.
            self.forget_exchange(ex.client, id);
            if ex.orphan {
                self.counters.unattributed_attempts =
                    self.counters.unattributed_attempts.saturating_sub(1);
            }
            self.counters.subrequests += 1;
            return;
        }
        if ex.orphan {
            // A guess nobody claimed: written as it was, attributed after all.
            ex.orphan = false;
            self.counters.unattributed_attempts =
                self.counters.unattributed_attempts.saturating_sub(1);
        }
        if end == End::Flushed
            && ex.response.is_none()
            && ex.client_left().is_none()
            && ex.died_unanswered().is_none()
        {
            // Still waiting when the agent stopped.
            ex.incomplete = true;
            ex.in_flight = true;
        }
        self.forget_exchange(ex.client, id);
        if ex.response.is_some() && end != End::Flushed {
            self.release_foreign_attempts(&mut ex, out);
        }
        let http = ex.request.is_some()
            || ex.inferred
            || ex.response.as_ref().is_some_and(|r| r.status.is_some())
            || ex
                .attempts
                .iter()
                .any(|a| a.status.is_some() || a.upstream_request.is_some());
        if !http {
            // Bytes both ways but no HTTP line in either: not an HTTP exchange, no
            // verdict to give.
            self.counters.non_http_conversations += 1;
            return;
        }
        let end = self.now;
        if self
            .loss_windows
            .iter()
            .any(|(since, until)| ex.start <= *until && end >= *since)
        {
            ex.incomplete = true;
        }
        let conn = self.socks.get_any(ex.client).map(|s| (s.local, s.peer));
        let comm = self
            .comms
            .get(&ex.pid)
            .unwrap_or(&self.unknown_comm)
            .clone();
        let record = self.build_record(ex, conn, comm, end);
        if self.cfg.hold_ns == 0 {
            out.push(Record::Exchange(record));
        } else {
            self.held.push_back(Held { end, record });
        }
    }
}

#[cfg(test)]
mod tests;
