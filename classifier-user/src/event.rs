//! The engine's input: what the kernel showed, independent of the hook that showed
//! it. A probe set for another kernel (fentry, kprobes, syscall tracepoints) feeds
//! the same events. Recordings store these, never raw ring-buffer bytes, so a
//! recording holds no byte the record itself would not show.
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::head::Head;

/// Identity of one socket from its start to its destruction. Socket pointers are
/// reused at once; ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SockId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Accepted on a listening port of the proxy.
    Client,
    /// Opened or used by the proxy towards an upstream.
    Upstream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Opened {
    /// `connect()` by a proxy thread.
    Connect,
    /// First seen in I/O: accepted connections and connections older than the agent.
    FirstUse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Recv,
    Send,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetDir {
    Received,
    Sent,
}

/// TCP states as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown,
}

impl From<u8> for TcpState {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            _ => Self::Unknown,
        }
    }
}

/// An IP address and port, or a unix socket's path (`addr` unspecified, port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// The path of a unix socket (the server's, for both ends of a connection
    /// to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<UnixPath>,
}

impl Endpoint {
    pub fn ip(addr: IpAddr, port: u16) -> Self {
        Self {
            addr,
            port,
            unix: None,
        }
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(path) = &self.unix {
            return write!(f, "{path}");
        }
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A unix socket's path as the probes copied it (at most
/// `classifier_ebpf::UNIX_PATH_CAP` bytes), shown as nginx shows it:
/// `unix:/run/php/php-fpm.sock`. Inline, so that endpoints stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnixPath {
    len: u8,
    bytes: [u8; classifier_ebpf::UNIX_PATH_CAP],
}

impl UnixPath {
    /// The path up to its first NUL (cut at the capacity).
    pub fn new(path: &[u8]) -> Self {
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        let len = end.min(classifier_ebpf::UNIX_PATH_CAP);
        let mut bytes = [0; classifier_ebpf::UNIX_PATH_CAP];
        bytes[..len].copy_from_slice(&path[..len]);
        Self {
            len: len as u8,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Display for UnixPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix:{}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Debug for UnixPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for UnixPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for UnixPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::new(s.as_bytes()))
    }
}

/// Where the current message of a socket stands: its direction, bytes so far and
/// when its last byte moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgCursor {
    pub dir: Option<Dir>,
    pub bytes: u64,
    pub last: u64,
}

/// One kernel observation. `ts` is CLOCK_MONOTONIC nanoseconds. `pid`/`tid` are
/// the task that was current, which in softirq context is not the socket's owner:
/// the engine takes thread identity only from `prev_touch`, which the probes
/// compute per thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: u64,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum EventKind {
    /// A socket's identity starts. `prev_touch` (connects only): the socket the
    /// connecting thread touched last in the same event-loop iteration.
    SockOpen {
        sock: SockId,
        owner: u32,
        side: Side,
        how: Opened,
        local: Endpoint,
        peer: Endpoint,
        prev_touch: Option<SockId>,
    },
    /// Bytes moved in a new direction: a message starts. `head` is what its first
    /// line says. `prev_msg_*`: the message that just ended (other direction).
    Message {
        sock: SockId,
        dir: Dir,
        bytes: u32,
        head: Head,
        prev_touch: Option<SockId>,
        prev_msg_bytes: u64,
        prev_msg_last: u64,
        /// The bytes are a TLS connection's plaintext.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tls: bool,
        /// A response to a client whose head promised to keep the connection
        /// (`Connection: keep-alive`, found by the probes within their
        /// capture).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_alive: bool,
    },
    /// More bytes in the current message (throttled).
    Progress {
        sock: SockId,
        dir: Dir,
        msg_bytes: u64,
    },
    /// A send in the middle of a message found the socket's buffer full
    /// (`EAGAIN`): the peer reads slower than the proxy writes. Reported once
    /// until a send moves bytes again (then a `Progress` at once).
    Blocked { sock: SockId, msg_bytes: u64 },
    /// A receive returned end of file: the peer's FIN was read.
    Eof {
        sock: SockId,
        prev_touch: Option<SockId>,
    },
    /// A send or receive failed with `errno` (never EAGAIN).
    IoError {
        sock: SockId,
        dir: Dir,
        errno: i32,
        prev_touch: Option<SockId>,
    },
    /// A receive with `MSG_PEEK` failed with `errno`: the proxy checked the
    /// connection without reading it and found it failed (nginx's keep-alive
    /// pool checks an idle upstream connection so, then closes it; nginx checks
    /// a client that may have left so too).
    PeekError {
        sock: SockId,
        errno: i32,
        prev_touch: Option<SockId>,
    },
    /// The proxy began ending the connection's TLS session (`SSL_shutdown`):
    /// it is closing the connection, and nginx waits for the peer's answer
    /// before it closes the socket.
    TlsShutdown { sock: SockId },
    /// A TCP state change. `local_close`: the owning thread's own close.
    State {
        sock: SockId,
        old: TcpState,
        new: TcpState,
        local: Endpoint,
        peer: Endpoint,
        local_close: bool,
        msg: MsgCursor,
        /// For the owning thread's own close, the socket that thread touched
        /// last before it in the same loop iteration (none in older
        /// recordings, and for a close that came first in its iteration).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_touch: Option<SockId>,
    },
    Reset {
        sock: SockId,
        dir: ResetDir,
        state: TcpState,
        /// A received reset: bytes written on the socket that the peer never
        /// acknowledged, lost with the connection (0 in older recordings).
        #[serde(default, skip_serializing_if = "is_zero")]
        unacked: u32,
    },
    /// The socket's error was set (ECONNREFUSED, ECONNRESET, ETIMEDOUT...).
    SockError {
        sock: SockId,
        errno: i32,
        state: TcpState,
    },
    /// The socket is destroyed; `local_close`: inside the owning thread's close().
    Destroy {
        sock: SockId,
        local_close: bool,
        msg: MsgCursor,
    },
    /// A watched task (`pid`/`tid` of the event) created `child`.
    Fork { child: u32, comm: String },
    /// A watched task exited.
    Exit { task: u32, group_dead: bool },
    /// Evidence went missing: `events` lost to a full ring or sockets left
    /// untracked. Exchanges in flight are marked incomplete, and with `since`
    /// (the loss happened between `since` and this event) so is every exchange
    /// whose lifetime overlaps that window, including ended ones not yet emitted.
    Lost {
        events: u64,
        sockets: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Time passes (the agent sends one periodically so quiet exchanges settle).
    Tick,
}

impl EventKind {
    /// The socket the event is about, if any.
    pub fn sock(&self) -> Option<SockId> {
        match self {
            Self::SockOpen { sock, .. }
            | Self::Message { sock, .. }
            | Self::Progress { sock, .. }
            | Self::Blocked { sock, .. }
            | Self::Eof { sock, .. }
            | Self::IoError { sock, .. }
            | Self::PeekError { sock, .. }
            | Self::TlsShutdown { sock }
            | Self::State { sock, .. }
            | Self::Reset { sock, .. }
            | Self::SockError { sock, .. }
            | Self::Destroy { sock, .. } => Some(*sock),
            Self::Fork { .. } | Self::Exit { .. } | Self::Lost { .. } | Self::Tick => None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
