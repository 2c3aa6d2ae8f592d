//! Evidence gathered for one client exchange and its upstream attempts. Plain
//! data: the rules that read it live in `outcome.rs`.
use crate::{
    event::{Dir, Endpoint, MsgCursor, SockId},
    head::RequestLine,
};

/// Exchange handle (engine-local, never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExId(pub u64);

/// The final (non-1xx) response the proxy started writing.
#[derive(Clone, Debug)]
pub struct ResponseStart {
    /// `None` when the first bytes were not a readable status line.
    pub status: Option<u16>,
    pub ts: u64,
    /// Its head promised the client to keep the connection (nginx's
    /// `Connection: keep-alive`, when the probes' capture reached it).
    pub keep_alive: bool,
}

/// Why an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client sent its next request on the connection.
    NextRequest,
    /// The client connection was destroyed.
    ConnectionClosed,
    /// Quiet for the settle time after its response.
    Settled,
    /// Evicted because the exchange table was full.
    Evicted,
    /// The agent stopped.
    Flushed,
}

/// How soon after a response's last write a close of its client connection
/// breaks a keep-alive promise (`Exchange::broke_keep_alive`): nginx closes
/// at once when it gives up on a response (the engine may see that last
/// write up to 200 ms late, through the probes' throttled progress), and an
/// idle kept connection only after its `keepalive_timeout` (seconds).
pub const BROKEN_PROMISE_NS: u64 = 500_000_000;

/// How soon after cutting a response a worker that exits was shutting down
/// (measured: 0.4–0.6 ms between an old worker's last closes and its exit).
pub const SHUTDOWN_CUT_NS: u64 = 10_000_000;

#[derive(Clone, Debug)]
pub struct Exchange {
    pub id: ExId,
    pub client: SockId,
    pub pid: u32,
    pub request: Option<RequestLine>,
    /// The first request byte (or the first evidence of the exchange).
    pub start: u64,
    /// The request line was not captured: the exchange was found through an
    /// upstream attempt (pipelined requests arrive in one receive).
    pub inferred: bool,
    pub interim: bool,
    pub response: Option<ResponseStart>,
    pub response_bytes: u64,
    /// Last byte of the response sent (or last progress seen).
    pub last_send: u64,
    /// Last event of any kind that concerned this exchange.
    pub last_activity: u64,
    pub attempts: Vec<Attempt>,
    /// The client's FIN arrived (state CLOSE_WAIT) or was read (EOF).
    pub client_fin: Option<u64>,
    /// The client's RST arrived, or I/O on the client failed with ECONNRESET.
    pub client_rst: Option<u64>,
    /// The client did not get the whole response: a send to it failed (EPIPE,
    /// ECONNRESET), or its RST arrived while bytes of the response were still
    /// unacknowledged.
    pub response_lost: Option<u64>,
    /// The proxy closed the client connection while this exchange was current
    /// and before the client left.
    pub closed_by_proxy: Option<ProxyClose>,
    /// The proxy closed the client connection right after closing the
    /// exchange's current upstream connection (nothing else between, in the
    /// same thread): it abandoned that upstream's reply.
    pub upstream_dropped: Option<u64>,
    /// Evidence may be missing (loss, adopted mid-exchange, flushed early).
    pub incomplete: bool,
    /// Still waiting for a response when the agent stopped.
    pub in_flight: bool,
    /// Holds an upstream attempt that no client exchange could be found for when
    /// its request was sent: nginx ran that request from a posted event (the next
    /// pipelined request on a connection) after touching other connections, so
    /// the thread's last touch says nothing. The client response that follows
    /// the attempt's reply names the owner (see `Engine::reattribute`); an
    /// orphan never becomes a record of its own.
    pub orphan: bool,
    /// An orphan that was an exchange of its own (guessed for a pipelined
    /// request on a connection that then ended): written as it is if no client
    /// response claims its attempt.
    pub unclaimed_record: bool,
    /// Made for an upstream request of an HTTP/2 client connection: it holds the
    /// attempt, and ends without a record (see `Sock::http2`).
    pub http2: bool,
    /// Holds an upstream request the proxy made on its own for an exchange
    /// whose response had already started on this client connection (nginx: a
    /// cache's background update, the slice module's next range, an SSI
    /// include): work for that exchange, not a client exchange. It ends without
    /// a record (see `Engine::subrequest_of_answered`).
    pub subrequest: bool,
    /// When the proxy process serving it exited before it answered (killed or
    /// crashed: nginx logs nothing for it). Nothing more can come.
    pub proxy_exited: Option<u64>,
    /// When a send of the response found the client's socket buffer full, if
    /// no byte has moved since: the client is not reading, and the response
    /// is not over (it does not settle while so).
    pub send_blocked: Option<u64>,
}

impl Exchange {
    /// Whether a client response on its connection may be this exchange's: a
    /// client exchange that has not answered yet.
    pub fn awaits_response(&self) -> bool {
        self.response.is_none() && !self.subrequest
    }

    /// Whether the proxy may still act for this exchange after its attempt
    /// `idx`: that attempt ended (nginx read a failure or a reply, or closed the
    /// connection itself), the exchange has not started its response, and it is
    /// someone's (an orphan is nobody's). A retry chains on only then.
    pub fn may_act_after(&self, idx: usize) -> bool {
        self.response.is_none()
            && !self.orphan
            && self.attempts.get(idx).is_some_and(Attempt::ended)
    }

    pub fn new(id: ExId, client: SockId, pid: u32, start: u64) -> Self {
        Self {
            id,
            client,
            pid,
            request: None,
            start,
            inferred: false,
            interim: false,
            response: None,
            response_bytes: 0,
            last_send: start,
            last_activity: start,
            attempts: Vec::new(),
            client_fin: None,
            client_rst: None,
            response_lost: None,
            closed_by_proxy: None,
            upstream_dropped: None,
            incomplete: false,
            in_flight: false,
            orphan: false,
            http2: false,
            unclaimed_record: false,
            subrequest: false,
            proxy_exited: None,
            send_blocked: None,
        }
    }

    /// When the proxy process died with this exchange unanswered, unless the
    /// client had left first (then the exchange was over for nginx already).
    pub fn died_unanswered(&self) -> Option<u64> {
        let exited = self.proxy_exited.filter(|_| self.response.is_none())?;
        self.client_left()
            .is_none_or(|c| c > exited)
            .then_some(exited)
    }

    /// When the proxy cut the response under way and its process exited right
    /// after: its own shutdown (an old worker's `worker_shutdown_timeout`
    /// running out after a reload, or the worker stopped), not an upstream's or
    /// the client's doing. Returns when the response was cut.
    pub fn shut_down_mid_response(&self) -> Option<u64> {
        let exited = self.proxy_exited?;
        let cut = self.response_cut_by_proxy()?;
        (cut <= exited
            && exited - cut <= SHUTDOWN_CUT_NS
            && self.client_left().is_none_or(|c| c > cut))
        .then_some(cut)
    }

    /// When the client was first seen leaving (FIN or RST), if it did. A FIN
    /// that the proxy answered after (it wrote its response later) only closed
    /// the client's sending side: nginx went on with the exchange (a client
    /// that half-closes and reads on, `proxy_ignore_client_abort on`), so the
    /// exchange ended as the upstream and the response say.
    pub fn client_left(&self) -> Option<u64> {
        let answered_after = |t: u64| self.response.as_ref().is_some_and(|r| r.ts > t);
        let fin = self.client_fin.filter(|f| !answered_after(*f));
        match (fin, self.client_rst) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn touch(&mut self, ts: u64) {
        self.last_activity = self.last_activity.max(ts);
    }

    /// When the proxy closed the client connection with a response under way:
    /// the response ends there (cut, unless it was whole).
    pub fn response_cut_by_proxy(&self) -> Option<u64> {
        let started = self.response.as_ref()?.ts;
        self.closed_by_proxy
            .map(|c| c.at)
            .filter(|&at| at >= started)
    }

    /// When the proxy closed the client connection right after the response,
    /// although the response had promised to keep it, the client not having
    /// left: the proxy gave up on the response (nginx cuts a client off so
    /// when the upstream's reply broke mid-body, whatever it had announced).
    /// A response the proxy planned to end with the connection says
    /// `Connection: close`; a kept connection is closed only once idle for
    /// its keep-alive timeout.
    pub fn broke_keep_alive(&self) -> Option<u64> {
        self.response.as_ref().filter(|r| r.keep_alive)?;
        self.response_cut_by_proxy()
            .filter(|&cut| cut.saturating_sub(self.last_send) <= BROKEN_PROMISE_NS)
    }

    /// The client stopped reading the response and the proxy gave up on it:
    /// the proxy closed (or reset) the connection while its send was blocked
    /// on the client's full buffer, the client not having left. nginx's
    /// `send_timeout` ("client timed out ... while sending to client").
    /// Returns (blocked since, closed at).
    pub fn reader_stalled(&self) -> Option<(u64, u64)> {
        let blocked = self.send_blocked?;
        let cut = self.response_cut_by_proxy().filter(|at| *at >= blocked)?;
        self.client_left()
            .is_none_or(|c| c > cut)
            .then_some((blocked, cut))
    }

    /// The proxy's close of the client connection, if it came before any
    /// response was written.
    pub fn closed_unanswered(&self) -> Option<ProxyClose> {
        self.closed_by_proxy
            .filter(|c| self.response.as_ref().is_none_or(|r| r.ts > c.at))
    }
}

/// The proxy closing a client connection the client had not left.
#[derive(Clone, Copy, Debug)]
pub struct ProxyClose {
    pub at: u64,
    /// How long the client had sent nothing by then (ns): since the last byte
    /// of its request, else since anything happened to the exchange.
    pub client_quiet: u64,
}

/// One upstream attempt: a connect (or the reuse of a kept-alive connection) and
/// what came of it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The upstream socket (its `attempt` points back here).
    pub sock: SockId,
    pub peer: Endpoint,
    pub local: Endpoint,
    /// CLOSE → SYN_SENT; `None` on a reused connection.
    pub connect_start: Option<u64>,
    /// SYN_SENT → ESTABLISHED.
    pub established: Option<u64>,
    pub request_sent: Option<u64>,
    /// The proxy's own request line to the upstream.
    pub upstream_request: Option<RequestLine>,
    pub first_byte: Option<u64>,
    /// Status of a valid response head.
    pub status: Option<u16>,
    /// The first bytes back were a gateway protocol's response (FastCGI) whose
    /// status they did not show: the status the proxy then writes is this one's
    /// (see `Engine::client_response`).
    pub status_unread: bool,
    /// The first bytes back were not an HTTP status line.
    pub invalid: bool,
    /// The reply's status line said `HTTP/1.1`: its end is announced (a
    /// length, or chunks), so a close does not end it whole. An HTTP/1.0 reply,
    /// or a gateway's (FastCGI), may end by closing.
    pub reply_http11: bool,
    pub last_recv: Option<u64>,
    /// The upstream's FIN: read (EOF) or arrived (CLOSE_WAIT).
    pub peer_fin: Option<u64>,
    /// The proxy read the upstream's FIN (a receive returned 0).
    pub eof_read: Option<u64>,
    pub rst_in: Option<u64>,
    /// Socket or I/O error (errno, when).
    pub error: Option<(i32, u64)>,
    /// When a call of the proxy's own on the connection failed (the error as
    /// the proxy read it, where `error` may be the kernel's report before).
    pub error_read: Option<u64>,
    /// The proxy closed the connection itself.
    pub local_close: Option<u64>,
    /// The proxy's side sent a reset (a close with bytes left unread).
    pub rst_out: Option<u64>,
    /// The connect failed (SYN_SENT → CLOSE).
    pub connect_failed: Option<u64>,
    /// The socket the proxy's thread touched just before its close of this
    /// connection, in the same loop iteration.
    pub close_after_touch: Option<SockId>,
}

impl Attempt {
    pub fn new(sock: SockId, peer: Endpoint, local: Endpoint) -> Self {
        Self {
            sock,
            peer,
            local,
            connect_start: None,
            established: None,
            request_sent: None,
            upstream_request: None,
            first_byte: None,
            status: None,
            status_unread: false,
            reply_http11: false,
            error_read: None,
            invalid: false,
            last_recv: None,
            peer_fin: None,
            eof_read: None,
            rst_in: None,
            error: None,
            local_close: None,
            rst_out: None,
            connect_failed: None,
            close_after_touch: None,
        }
    }

    /// Takes the time of the reply's last byte from a socket's message cursor
    /// (progress events are throttled; the cursor is exact).
    pub fn reply_cursor(&mut self, msg: &MsgCursor) {
        if msg.dir == Some(Dir::Recv) && msg.last > 0 && self.first_byte.is_some() {
            self.last_recv = Some(self.last_recv.map_or(msg.last, |l| l.max(msg.last)));
        }
    }

    /// When the attempt started: the connect, else the request.
    pub fn started(&self) -> Option<u64> {
        self.connect_start.or(self.request_sent)
    }

    /// The attempt is over as far as the proxy knows: a reply came back, the
    /// upstream failed, the connect failed, or the proxy closed it.
    pub fn ended(&self) -> bool {
        self.first_byte.is_some()
            || self.invalid
            || self.error.is_some()
            || self.local_close.is_some()
            || self.connect_failed.is_some()
            || self.upstream_failed().is_some()
            || self.failure_read().is_some()
    }

    /// When the proxy itself read that the upstream broke the connection (EOF or
    /// ECONNRESET from a receive), as opposed to the FIN or RST merely arriving.
    pub fn failure_read(&self) -> Option<u64> {
        let err = self
            .error
            .and_then(|(e, ts)| (e == libc::ECONNRESET).then_some(ts));
        [self.eof_read, err].into_iter().flatten().min()
    }

    /// The first sign of the upstream breaking the connection that the proxy
    /// acted on: a FIN it read (EOF), a reset, a call that failed. A FIN that
    /// only arrived did not stop the proxy: nginx learns of a FIN by reading it,
    /// and it stops reading a length-delimited reply at its end, so the FIN of an
    /// upstream that closes right after answering (told `Connection: close`)
    /// often arrives before nginx's own close and is never read.
    ///
    /// Once the proxy saw one, the failure began at its first sign, that FIN
    /// included (an upstream that closed while nginx was still sending the
    /// request body: the FIN, then the RST its kernel sends for the bytes that
    /// keep coming, then nginx's `EPIPE`).
    pub fn upstream_failed_seen(&self) -> Option<u64> {
        let seen = [self.broke(), self.eof_read].into_iter().flatten().min()?;
        Some(self.peer_fin.map_or(seen, |fin| fin.min(seen)))
    }

    /// When the upstream broke the connection by more than a close: its reset
    /// arrived, or a call on the connection failed.
    pub fn broke(&self) -> Option<u64> {
        [self.rst_in, self.failed_call()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The first sign that the upstream itself broke the connection.
    pub fn upstream_failed(&self) -> Option<u64> {
        [self.broke(), self.peer_fin].into_iter().flatten().min()
    }

    /// When a call on the connection failed because the upstream broke it
    /// (`ECONNRESET`, `EPIPE`).
    fn failed_call(&self) -> Option<u64> {
        self.error
            .and_then(|(e, ts)| (e == libc::ECONNRESET || e == libc::EPIPE).then_some(ts))
    }
}
