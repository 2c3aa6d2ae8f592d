//! Wire types shared by the probes (`src/main.rs`, BPF target) and the agent.
//!
//! Every event starts with a [`Header`] whose `kind` is a plain `u32` mapped to
//! [`EventKind`] by a checked `TryFrom`. The structs hold only integers and byte
//! arrays (no `bool`, `Option` or Rust enums), so any bit pattern is a valid value
//! and userspace can decode them with a length check and an unaligned read.
#![no_std]

/// Longest first line (request line or status line) a probe copies at a message
/// start. The probe stops at the first `\n` and zeroes everything after it, so no
/// header or body byte beyond the first line ever leaves the kernel.
pub const LINE_CAP: usize = 160;

pub mod head_scan;

/// Longest path of a unix socket upstream a probe copies (the peer's bound
/// path, `sun_path`), NUL-padded; a longer path is cut.
pub const UNIX_PATH_CAP: usize = 64;

/// `Addr::family` of a unix socket (its path is in `SockOpen::unix_path`).
pub const AF_UNIX: u16 = 1;

/// Direction of socket I/O as seen from the proxy.
pub mod dir {
    pub const RECV: u8 = 1;
    pub const SEND: u8 = 2;
}

/// `Message::flags`.
pub mod msg {
    /// Continues the first line of the socket's current message (the previous
    /// call ended before its `\n`): the agent joins the pieces.
    pub const CONTINUED: u8 = 1;
    /// A send that starts a new response in the same direction, found by its
    /// `HTTP/1.` prefix (pipelined requests, or a final status after `100
    /// Continue`), not by a change of direction.
    pub const SNIFFED: u8 = 2;
    /// The bytes are a TLS connection's plaintext, from the TLS library's
    /// probes: what the socket carries is more (records, alerts).
    pub const TLS: u8 = 4;
    /// A response to a client whose head, within the capture, says
    /// `Connection: keep-alive` (nginx's promise to keep the connection).
    /// Only this bit of the head's later lines leaves the kernel.
    pub const KEEP_ALIVE: u8 = 8;
}

/// Which side of the proxy a socket is on.
pub mod side {
    /// Accepted on one of the proxy's listening ports.
    pub const CLIENT: u8 = 1;
    /// Opened (or used) by the proxy towards someone else.
    pub const UPSTREAM: u8 = 2;
}

/// How a socket's identity started.
pub mod how {
    /// `connect()` by a watched thread (CLOSE → SYN_SENT).
    pub const CONNECT: u8 = 1;
    /// First send or receive by a watched thread on a socket not seen before
    /// (accepted connections, and any connection older than the agent).
    pub const FIRST_USE: u8 = 2;
}

/// What an [`Io`] event reports.
pub mod io {
    /// A receive returned 0: the peer's FIN has been read.
    pub const EOF: u8 = 1;
    /// A send or receive failed (`ret` is `-errno`), other than `EAGAIN` and
    /// other than a peek (`PEEK_ERROR`).
    pub const ERROR: u8 = 2;
    /// More bytes moved in the current message (throttled, see `PROGRESS_NS`;
    /// at once for the first send after `BLOCKED`).
    pub const PROGRESS: u8 = 3;
    /// A send in the middle of a message found the socket's buffer full
    /// (`EAGAIN`): the peer reads slower than the proxy writes, and the message
    /// goes on later. Once until a send moves bytes again.
    pub const BLOCKED: u8 = 4;
    /// A receive with `MSG_PEEK` failed (`ret` is `-errno`): the proxy checked
    /// the connection without reading it and found it reset. nginx does so
    /// for an idle connection in its keep-alive pool (then closes it) and for
    /// a client that may have left.
    pub const PEEK_ERROR: u8 = 5;
    /// The proxy began ending the socket's TLS session (`SSL_shutdown`): it is
    /// closing the connection. nginx sends its `close_notify` and waits for the
    /// peer's answer before it closes the socket itself.
    pub const TLS_SHUTDOWN: u8 = 6;
}

/// Direction of a reset.
pub mod reset {
    pub const RECEIVED: u8 = 1;
    pub const SENT: u8 = 2;
}

/// Indices of the per-CPU counters in the `STATS` map.
pub mod stat {
    /// Events submitted to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Ring buffer reservations that failed because the ring was full (event lost).
    pub const RING_FULL: u32 = 1;
    /// Sockets not tracked because the socket map was full.
    pub const SOCKS_FULL: u32 = 2;
    /// Threads not tracked because the thread map was full.
    pub const THREADS_FULL: u32 = 3;
    /// Message starts whose first line could not be read from the caller's buffer.
    pub const LINE_UNREAD: u32 = 4;
    /// Forced wakeups of the agent (ring more than half full).
    pub const WAKEUPS: u32 = 5;
    /// Socket entries found still present when their `struct sock` address was
    /// born again (its destroy was never seen): ended then, and counted.
    pub const STALE_SOCKS: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Event kinds on the wire.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    SockOpen = 1,
    Message = 2,
    Io = 3,
    State = 4,
    Reset = 5,
    SockError = 6,
    Destroy = 7,
    Fork = 8,
    Exit = 9,
    Reply = 10,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            1 => Self::SockOpen,
            2 => Self::Message,
            3 => Self::Io,
            4 => Self::State,
            5 => Self::Reset,
            6 => Self::SockError,
            7 => Self::Destroy,
            8 => Self::Fork,
            9 => Self::Exit,
            10 => Self::Reply,
            other => return Err(other),
        })
    }
}

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u32,
    /// Evidence gaps so far (a wrapping counter shared by all CPUs): events lost
    /// to a full ring and sockets left untracked because the socket map was full.
    /// Read after the reservation, so a rise shows in the first event reserved
    /// after the gap on any CPU: the agent marks exactly the exchanges in flight
    /// at that point.
    pub gaps: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Current task (`tgid << 32 | tid`). In softirq context this is whichever task
    /// was on the CPU, so the engine never takes thread identity from it.
    pub pid_tgid: u64,
    /// Probe-assigned socket identity, unique for the agent's lifetime (socket
    /// pointers are reused at once; these ids are not). 0 when not about a socket.
    pub sock_id: u64,
}

/// One TCP endpoint. IPv4 addresses use the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Addr {
    /// AF_INET (2), AF_INET6 (10), or AF_UNIX (1: no address or port).
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// A socket's identity starts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockOpen {
    pub header: Header,
    pub local: Addr,
    pub peer: Addr,
    /// Socket id this thread touched last in the current event-loop iteration, 0 if none.
    pub prev_touch: u64,
    /// Thread group that opened (or first used) the socket.
    pub owner_tgid: u32,
    pub side: u8,
    pub how: u8,
    pub _pad: [u8; 2],
    /// A unix socket's peer path (the server's bound path), NUL-padded; all
    /// zero for TCP.
    pub unix_path: [u8; UNIX_PATH_CAP],
}

/// First bytes moved in a new direction on a socket: a message starts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Message {
    pub header: Header,
    pub prev_touch: u64,
    /// Bytes of the message that just ended (the other direction), and when its last
    /// byte moved.
    pub prev_msg_bytes: u64,
    pub prev_msg_last_ns: u64,
    /// Bytes moved by this call.
    pub ret: i32,
    pub dir: u8,
    /// Bits of [`msg`].
    pub flags: u8,
    /// Bytes of `line` that are valid: the first line including its `\n`, or fewer if
    /// the line is longer than the capture or the call moved fewer bytes.
    pub line_len: u16,
    pub line: [u8; LINE_CAP],
}

/// A request sent on an upstream connection whose event the probe held back (see
/// [`SockState::held_ts`]): it rides on the event that follows it on the same
/// socket, so a proxied request costs one ring reservation fewer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeldSend {
    /// When the send ran.
    pub ts_ns: u64,
    /// Socket id the thread touched before it, in the same event-loop iteration.
    pub prev_touch: u64,
    /// Bytes moved by the send.
    pub ret: i32,
    /// Bytes of the message before it on the socket (0: the connection's first
    /// request), saturated: a reused connection is never taken for a fresh one.
    pub prev_msg_bytes: u32,
}

/// The first bytes of an upstream's reply (a [`Message`]) together with the
/// request start held back before it on the same socket: two message starts in
/// one event. The agent puts the held send first, with its own timestamp.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub message: Message,
    pub sent: HeldSend,
}

/// A notable result of a send or receive that is not a message start.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Io {
    pub header: Header,
    pub prev_touch: u64,
    /// Bytes of the current message so far.
    pub msg_bytes: u64,
    pub ret: i32,
    pub dir: u8,
    /// One of [`io`].
    pub what: u8,
    pub _pad: [u8; 2],
}

/// A TCP state change on a known socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct State {
    pub header: Header,
    pub local: Addr,
    pub peer: Addr,
    /// The current message's direction, byte count and last activity.
    pub msg_bytes: u64,
    pub msg_last_ns: u64,
    pub old: u8,
    pub new: u8,
    pub msg_dir: u8,
    /// 1 when this change is the owning thread's own close of the socket (its first
    /// FIN_WAIT1 or LAST_ACK): a touch for attribution.
    pub local_close: u8,
    pub _pad: u32,
    /// For the owning thread's own close: the socket that thread touched last
    /// before it, in the same loop iteration (0: none since its last wait for
    /// events). A close in the handler that had just read or written this
    /// exchange's sockets finishes it; one with nothing before it answers an
    /// event of its own (the client's FIN).
    pub prev_touch: u64,
}

/// A reset received or sent on a known socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Reset {
    pub header: Header,
    /// One of [`reset`].
    pub dir: u8,
    /// TCP state when it happened.
    pub state: u8,
    pub _pad: [u8; 2],
    /// For a received reset: bytes the socket's owner had written that the peer
    /// never acknowledged (`write_seq - snd_una`), lost with the connection. On
    /// a client connection, a response the client did not get whole.
    pub unacked: u32,
}

/// A socket error was reported (`sk_err`: ECONNREFUSED, ECONNRESET, ETIMEDOUT...).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockError {
    pub header: Header,
    pub errno: i32,
    pub state: u8,
    pub _pad: [u8; 3],
}

/// A known socket is destroyed: its identity ends.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Destroy {
    pub header: Header,
    pub msg_bytes: u64,
    pub msg_last_ns: u64,
    pub msg_dir: u8,
    /// 1 when the destruction is the owning thread's own close (a socket already in
    /// CLOSE, e.g. after a refused connect or a reset): a touch for attribution.
    pub local_close: u8,
    pub _pad: [u8; 6],
}

/// A watched task created a task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Fork {
    pub header: Header,
    pub child_pid: u32,
    pub _pad: u32,
    pub child_comm: [u8; 16],
}

/// A watched task exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub header: Header,
    pub pid: u32,
    /// 1 when the whole thread group is gone.
    pub group_dead: u8,
    pub _pad: [u8; 3],
}

/// Per-thread probe state. A thread is watched exactly when it is in `THREADS`
/// (key: tid); its state lives in its `THREAD_SLOTS` slot when it owns it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadState {
    /// Socket id touched last in the current event-loop iteration, 0 after `epoll_wait`.
    pub last_touch: u64,
    /// 1 when `last_touch` is a client connection whose current message is a
    /// request (the last bytes it moved were received): a send to an upstream
    /// right after it belongs to that request, found by the loop marker alone, so
    /// its first line is not needed.
    pub last_touch_receiving: u32,
    /// 1 while the thread is inside a TLS library call that the TLS probes
    /// watch (`SSL_do_handshake`, `SSL_read`): the socket it reads there
    /// carries TLS, and its plaintext comes from the library (see `TlsCall`).
    pub in_tls: u32,
}

/// A watched thread's TLS library call in progress (map `TLS_CALLS`, key: tid):
/// the library's connection object, the plaintext buffer it was given (0 for a
/// handshake), and the socket the call read, once it read one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    pub ssl: u64,
    pub buf: u64,
    pub sk: u64,
}

/// Entries of `THREAD_SLOTS`, an array indexed by `tid % THREAD_SLOTS`. Every
/// socket call on the host asks "is this thread watched?": an array slot answers
/// with one inlined load, where a hash lookup cost ~130 ns a run here.
pub const THREAD_SLOTS: u32 = 65_536;

/// One slot: the watched thread that owns it (0: free), whether a watched thread
/// with this index was ever recorded (1: a miss must ask `THREADS`), and the
/// owner's state.
///
/// `THREADS` holds every watched thread; the slot is a lock-free fast path (this
/// BPF target has no compare-and-swap): a writer records the thread in `THREADS`,
/// sets `overflow` (sticky, every writer writes 1), then takes the slot if it is
/// free. Two threads racing for one slot both stay findable, in the slot or in
/// `THREADS`; an unwatched thread pays the hash lookup only on an index that a
/// watched thread once used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadSlot {
    pub tid: u32,
    pub overflow: u32,
    pub state: ThreadState,
}

/// Per-socket probe state (map `SOCKS`, key: `struct sock` address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    pub id: u64,
    /// Bytes, last activity and direction of the current message.
    pub msg_bytes: u64,
    pub msg_last_ns: u64,
    /// When the last event about this socket was emitted (progress throttling).
    pub emitted_ns: u64,
    /// For a unix socket, its inode number when first seen; 0 for TCP, so it
    /// also tells the kind, next to the fields every call reads. The kernel
    /// reports no unix socket's end: a new socket at a freed one's address is
    /// told apart by its inode.
    pub unix_ino: u64,
    pub owner_tgid: u32,
    pub side: u8,
    pub dir: u8,
    /// 1 once the owning thread has closed the socket.
    pub closed: u8,
    /// While the current message's first line is still open (no `\n` yet), how
    /// many more calls may continue it; 0 once it is complete.
    pub line_open: u8,
    /// 1 once the socket's `SockOpen` event reached the ring; until then (a full
    /// ring) the probes announce it again at its next use.
    pub announced: u8,
    /// 1 once the socket was read inside a TLS library call: its bytes are
    /// ciphertext, so its messages come from the TLS probes (the plaintext the
    /// library returns or is given), and its own I/O is only a touch.
    pub tls: u8,
    /// 1 after a send of the current message found the buffer full (`EAGAIN`),
    /// until a send moves bytes again.
    pub blocked: u8,
    /// 1 while a client connection's current received message did not start
    /// with a request line: the rest of a body nginx reads only to discard it,
    /// after it answered early (`return`, `deny`, a limit). The next request
    /// then arrives in the same direction, in a receive of its own, so such
    /// receives are checked for a request line (a request body that starts
    /// with its request line is never checked: its bytes are the client's).
    /// Set by the socket tracepoints only (see `sock_io::socket_call`).
    pub sniff_requests: u8,
    /// Bytes of the message before the held send (the previous reply on this
    /// connection; 0 on a fresh connection), saturated.
    pub held_prev_bytes: u32,
    /// When a request start on this upstream socket was held back instead of
    /// emitted (0: none held). A request sent right after the thread read its
    /// client's request is attributed by the loop marker, so neither its line nor
    /// an event of its own is needed at once: it is emitted with the socket's next
    /// event (the reply's first bytes, a state change, reset, error, end of file,
    /// progress or destroy), which keeps it ahead of everything about the socket.
    pub held_ts: u64,
    pub held_prev_touch: u64,
    pub held_ret: i32,
    /// The thread that made the held send (its process is `owner_tgid`).
    pub held_tid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with explicit padding fields: every bit
    // pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ThreadState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThreadSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockState {}
}

/// Size checks: a layout change must be deliberate on both sides.
const _: () = {
    assert!(core::mem::size_of::<Header>() == 32);
    assert!(core::mem::size_of::<Addr>() == 24);
    assert!(core::mem::size_of::<SockOpen>() == 32 + 48 + 16 + UNIX_PATH_CAP);
    assert!(core::mem::size_of::<Message>() == 32 + 24 + 8 + LINE_CAP);
    assert!(core::mem::size_of::<Io>() == 32 + 16 + 8);
    assert!(core::mem::size_of::<State>() == 32 + 48 + 16 + 8 + 8);
    assert!(core::mem::size_of::<Reset>() == 40);
    assert!(core::mem::size_of::<SockError>() == 40);
    assert!(core::mem::size_of::<Destroy>() == 56);
    assert!(core::mem::size_of::<Fork>() == 56);
    assert!(core::mem::size_of::<Exit>() == 40);
    assert!(core::mem::size_of::<SockState>() == 80);
    assert!(core::mem::size_of::<HeldSend>() == 24);
    assert!(core::mem::size_of::<Reply>() == 32 + 24 + 8 + LINE_CAP + 24);
    assert!(core::mem::size_of::<ThreadState>() == 16);
    assert!(core::mem::size_of::<ThreadSlot>() == 24);
    assert!(LINE_CAP.is_multiple_of(8));
};
