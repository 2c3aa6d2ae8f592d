//! The connection table: every known socket from its start to its destruction,
//! plus a bounded graveyard of destroyed sockets, because the close of a failed
//! upstream socket is the touch that links the next attempt to its exchange and
//! the kernel reuses socket pointers at once.
use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::exchange::ExId;
use crate::event::{Endpoint, Opened, Side, SockId};

#[derive(Clone, Debug)]
pub struct Sock {
    pub side: Side,
    pub how: Opened,
    pub owner: u32,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub last_activity: u64,
    /// Client side: open exchanges on this connection, oldest first.
    pub exchanges: VecDeque<ExId>,
    /// Upstream side: the exchange and attempt index the connection serves now.
    pub attempt: Option<(ExId, usize)>,
    /// Upstream side: number of attempts this connection has carried.
    pub uses: u32,
    /// Client side: the client opened with the HTTP/2 preface. Its streams
    /// interleave on the connection, and their requests and responses are
    /// HPACK-coded frames, which the exchange model (one message each way at a
    /// time, a request or status line at the start) cannot read: its messages
    /// are skipped, and each upstream request made for it gets an exchange that
    /// holds the attempt and writes no record.
    pub http2: bool,
    /// Client side: when the HTTP/2 preface was read, until the proxy's first
    /// answer on the connection confirms HTTP/2. An HTTP/1-only listener
    /// answers it as a bad request line instead (nginx: 400, logged as
    /// `PRI * HTTP/2.0`), which is then an exchange like any other.
    pub http2_preface: Option<u64>,
    /// Client side: when the client's FIN arrived. A request read after it
    /// (sent just before the FIN, read by the proxy only after) opens an
    /// exchange whose client has already left.
    pub fin: Option<u64>,
    /// The connection switched protocols (a forwarded `101`, e.g. WebSocket):
    /// its bytes are no longer HTTP messages, on the client connection and on
    /// the upstream connection that answered 101.
    pub tunnel: bool,
    /// When the socket was first seen (its start, or its first use).
    pub seen_since: u64,
    /// Upstream side: when a reset arrived that the proxy has not read since (no
    /// receive failed on it). A kept-alive connection reset while idle in the
    /// pool: nginx finds out only when it takes the connection for a request,
    /// from the socket's pending error, without a read (see `Engine::destroy`).
    pub unread_reset: Option<u64>,
    /// Client side: the proxy reset the connection itself.
    pub reset_sent: bool,
    /// Its messages come from a TLS library's plaintext: the socket also
    /// carries the library's own records (a `close_notify` alert at close).
    pub tls: bool,
    /// Upstream side: a reset that came after the upstream had answered and
    /// sent its FIN, answering what the proxy still sent (a TLS
    /// `close_notify`, the rest of an upload the upstream refused early). The
    /// reply was over: neither the reset nor the errors it raises in the
    /// proxy's calls are a failure.
    pub reset_after_fin: bool,
    /// Upstream side: when its connect completed (SYN_SENT → ESTABLISHED). A
    /// connect made from a timer (a request `limit_req` delayed, a cache lock
    /// that timed out) finds its exchange only at its first send, after this.
    pub established_at: Option<u64>,
    /// Upstream side: connected with no touch before it in its loop iteration,
    /// from a timer (a request `limit_req` delayed, a cache lock that timed
    /// out), not from a handler working for an exchange.
    pub from_timer: bool,
}

impl Sock {
    pub fn new(
        side: Side,
        how: Opened,
        owner: u32,
        local: Endpoint,
        peer: Endpoint,
        ts: u64,
    ) -> Self {
        Self {
            side,
            how,
            owner,
            local,
            peer,
            last_activity: ts,
            exchanges: VecDeque::new(),
            attempt: None,
            uses: 0,
            http2: false,
            http2_preface: None,
            fin: None,
            tunnel: false,
            seen_since: ts,
            unread_reset: None,
            reset_sent: false,
            tls: false,
            reset_after_fin: false,
            established_at: None,
            from_timer: false,
        }
    }
}

/// Live sockets and recently destroyed ones, both bounded.
#[derive(Debug)]
pub struct Sockets {
    live: HashMap<SockId, Sock>,
    dead: HashMap<SockId, Sock>,
    dead_order: VecDeque<SockId>,
    max_live: usize,
    max_dead: usize,
}

impl Sockets {
    pub fn new(max_live: usize, max_dead: usize) -> Self {
        Self {
            live: HashMap::default(),
            dead: HashMap::default(),
            dead_order: VecDeque::new(),
            max_live,
            max_dead,
        }
    }

    /// Inserts a socket; returns the sockets evicted to make room. When full, the
    /// least recently active tenth goes in one pass (sockets whose destruction was
    /// never seen, after a loss), so a full table costs O(1) per insert amortized.
    pub fn insert(&mut self, id: SockId, sock: Sock) -> Vec<(SockId, Sock)> {
        let mut evicted = Vec::new();
        if self.live.len() >= self.max_live && !self.live.contains_key(&id) {
            let mut ages: Vec<(u64, SockId)> = self
                .live
                .iter()
                .map(|(id, s)| (s.last_activity, *id))
                .collect();
            let n = (self.max_live / 10).max(1).min(ages.len());
            ages.select_nth_unstable(n - 1);
            for (_, victim) in &ages[..n] {
                if let Some(s) = self.live.remove(victim) {
                    evicted.push((*victim, s));
                }
            }
        }
        self.live.insert(id, sock);
        evicted
    }

    /// Live sockets, and destroyed ones remembered.
    pub fn sizes(&self) -> (usize, usize) {
        (self.live.len(), self.dead.len())
    }

    pub fn get(&self, id: SockId) -> Option<&Sock> {
        self.live.get(&id)
    }

    pub fn get_mut(&mut self, id: SockId) -> Option<&mut Sock> {
        self.live.get_mut(&id)
    }

    /// A live or recently destroyed socket.
    pub fn get_any(&self, id: SockId) -> Option<&Sock> {
        self.live.get(&id).or_else(|| self.dead.get(&id))
    }

    /// A live or recently destroyed socket, to update.
    pub fn get_any_mut(&mut self, id: SockId) -> Option<&mut Sock> {
        match self.live.get_mut(&id) {
            Some(s) => Some(s),
            None => self.dead.get_mut(&id),
        }
    }

    /// Moves a socket to the graveyard.
    pub fn bury(&mut self, id: SockId) -> Option<&Sock> {
        let sock = self.live.remove(&id)?;
        if self.dead.len() >= self.max_dead {
            if let Some(old) = self.dead_order.pop_front() {
                self.dead.remove(&old);
            }
        }
        self.dead_order.push_back(id);
        self.dead.insert(id, sock);
        self.dead.get(&id)
    }
}
