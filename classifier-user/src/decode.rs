//! Ring-buffer records → [`Event`]s. Every record is length-checked and its kind
//! mapped through a checked `TryFrom`; anything malformed is an error the caller
//! counts, never a panic. First lines are parsed here and dropped: no captured
//! byte outlives decoding.
use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use classifier_ebpf as wire;
use rustc_hash::FxHashMap as HashMap;
use wire::EventKind as Kind;

use crate::{
    event::{Dir, Endpoint, Event, EventKind, MsgCursor, Opened, ResetDir, Side, SockId, TcpState},
    head::{self, QueryPolicy},
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind's size (or than a header).
    Short {
        kind: Option<u32>,
        len: usize,
    },
    UnknownKind(u32),
    /// A field holds a value outside its domain.
    BadField(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short { kind: Some(k), len } => {
                write!(f, "event of kind {k} is {len} bytes, too short")
            }
            Self::Short { kind: None, len } => {
                write!(f, "record of {len} bytes is shorter than a header")
            }
            Self::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            Self::BadField(name) => write!(f, "field {name} out of range"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes ring-buffer records into events, joining first lines that arrived in
/// pieces (a client writing its request line a few bytes at a time): a message
/// whose first line is still open is held until its `\n` arrives in a
/// continuation, the socket's next other event, or `flush`. Bounded: at most
/// `MAX_PENDING` messages are held; the oldest is released early when full.
#[derive(Debug, Default)]
pub struct Decoder {
    pub query: QueryPolicy,
    pending: HashMap<SockId, Pending>,
    order: VecDeque<SockId>,
    /// Continuations whose message was no longer held.
    pub orphan_continuations: u64,
    /// Evidence gaps reported in event headers so far.
    pub gaps: u64,
    /// The highest value of the probes' gap counter seen in a header.
    gaps_seen: u32,
}

#[derive(Debug)]
struct Pending {
    event: Event,
    line: Vec<u8>,
}

/// Messages held for their first line's continuation, at most.
pub const MAX_PENDING: usize = 4096;

/// `bytes` holds a whole `T` (a record of kind `kind`).
fn fits<T>(bytes: &[u8], kind: u32) -> Result<(), DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind: Some(kind),
            len: bytes.len(),
        });
    }
    Ok(())
}

/// Borrows a `T` at the front of `bytes` after checking the length, or copies
/// it when `bytes` is not aligned for `T`. Ring records are 8-byte aligned, so
/// the large messages (a 160-byte line each) are read in place: copying each
/// whole record was a `memmove` call per message, 2.5 % of the agent's samples.
fn view<T: Copy>(bytes: &[u8], kind: u32) -> Result<std::borrow::Cow<'_, T>, DecodeError> {
    fits::<T>(bytes, kind)?;
    let ptr = bytes.as_ptr().cast::<T>();
    if !ptr.is_aligned() {
        return read(bytes, kind).map(std::borrow::Cow::Owned);
    }
    // SAFETY: `ptr` is aligned for `T` and the length was checked above; every
    // `T` used here is a #[repr(C)] struct of integers and byte arrays
    // (classifier_ebpf), valid for any bit pattern; the borrow lives as long as
    // `bytes`, which nothing writes meanwhile.
    Ok(std::borrow::Cow::Borrowed(unsafe { &*ptr }))
}

/// Reads a `T` from the front of `bytes` after checking the length.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    fits::<T>(bytes, kind)?;
    // SAFETY: the length was checked above; every `T` used here is a #[repr(C)]
    // struct of integers and byte arrays (classifier_ebpf), valid for any bit
    // pattern; read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn sock(id: u64) -> SockId {
    SockId(id)
}

fn touch(id: u64) -> Option<SockId> {
    (id != 0).then_some(SockId(id))
}

fn dir(d: u8) -> Result<Dir, DecodeError> {
    match d {
        wire::dir::RECV => Ok(Dir::Recv),
        wire::dir::SEND => Ok(Dir::Send),
        _ => Err(DecodeError::BadField("dir")),
    }
}

fn cursor(d: u8, bytes: u64, last: u64) -> MsgCursor {
    MsgCursor {
        dir: dir(d).ok(),
        bytes,
        last,
    }
}

fn endpoint(a: &wire::Addr) -> Result<Endpoint, DecodeError> {
    endpoint_of(a, &[])
}

/// An endpoint of a `SockOpen`: a unix socket's is named by the peer's path.
fn endpoint_of(a: &wire::Addr, unix_path: &[u8]) -> Result<Endpoint, DecodeError> {
    if a.family == wire::AF_UNIX {
        return Ok(Endpoint {
            unix: Some(crate::event::UnixPath::new(unix_path)),
            ..Endpoint::default()
        });
    }
    let addr = match a.family {
        2 => IpAddr::V4(Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3])),
        10 => {
            let v6 = Ipv6Addr::from(a.addr);
            // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d; show them as IPv4.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => return Err(DecodeError::BadField("family")),
    };
    Ok(Endpoint::ip(addr, a.port))
}

impl Decoder {
    pub fn new(query: QueryPolicy) -> Self {
        Self {
            query,
            ..Self::default()
        }
    }

    /// Decodes one ring-buffer record; the events it completes go to `out` (none
    /// while a first line is held, more than one when a held message is released).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
        if bytes.len() >= size_of::<wire::Header>() {
            let h: wire::Header = read(bytes, 0)?;
            // The probes' gap counter (shared by all CPUs, wrapping): a rise since
            // the highest value seen means evidence was lost just before this
            // event. Events reserved on two CPUs at once may carry their values
            // out of order; a lower value is not a new gap.
            let rise = h.gaps.wrapping_sub(self.gaps_seen) as i32;
            if rise > 0 {
                self.gaps_seen = h.gaps;
                self.gaps += rise as u64;
                out.push(Event {
                    ts: h.ts_ns,
                    pid: 0,
                    tid: 0,
                    kind: EventKind::Lost {
                        events: rise as u64,
                        sockets: 0,
                        since: None,
                    },
                });
            }
            if h.kind == Kind::Message as u32 {
                let m = view::<wire::Message>(bytes, h.kind)?;
                return self.push_message(&h, &m, out);
            }
            if h.kind == Kind::Reply as u32 {
                let r = view::<wire::Reply>(bytes, h.kind)?;
                self.push_held_send(&h, &r.sent, out);
                return self.push_message(&h, &r.message, out);
            }
        }
        let ev = self.decode(bytes)?;
        if let Some(sock) = ev.kind.sock() {
            self.release(sock, out);
        }
        self.release_thread(ev.tid, None, out);
        out.push(ev);
        Ok(())
    }

    fn push_message(
        &mut self,
        h: &wire::Header,
        m: &wire::Message,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let sock = SockId(h.sock_id);
        let len = usize::from(m.line_len).min(wire::LINE_CAP);
        let piece = &m.line[..len];
        if m.flags & wire::msg::CONTINUED != 0 {
            let Some(p) = self.pending.get_mut(&sock) else {
                self.orphan_continuations += 1;
                return Ok(());
            };
            let room = wire::LINE_CAP - p.line.len();
            p.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if p.line.ends_with(b"\n") || p.line.len() >= wire::LINE_CAP {
                self.release(sock, out);
            }
            return Ok(());
        }
        self.release(sock, out);
        // The same thread moving on to another socket means it is done waiting for
        // this line (or the kernel stopped continuing it): release what it holds.
        self.release_thread(h.pid_tgid as u32, Some(sock), out);
        let event = self.decode_parts(h, m, piece)?;
        let open = !piece.ends_with(b"\n")
            && len < wire::LINE_CAP
            && len > 0
            && len == m.ret.max(0) as usize;
        if !open {
            out.push(event);
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self.order.pop_front() {
                self.release(oldest, out);
            }
        }
        self.order.push_back(sock);
        self.pending.insert(
            sock,
            Pending {
                event,
                line: piece.to_vec(),
            },
        );
        Ok(())
    }

    /// The request start the probe held back until the reply (`wire::Reply`): a
    /// send without a first line, at its own time, ahead of the reply.
    fn push_held_send(&mut self, h: &wire::Header, sent: &wire::HeldSend, out: &mut Vec<Event>) {
        let sock = SockId(h.sock_id);
        self.release(sock, out);
        out.push(Event {
            ts: sent.ts_ns,
            pid: (h.pid_tgid >> 32) as u32,
            tid: h.pid_tgid as u32,
            kind: EventKind::Message {
                sock,
                dir: Dir::Send,
                bytes: sent.ret.max(0) as u32,
                head: head::Head::None,
                prev_touch: touch(sent.prev_touch),
                prev_msg_bytes: u64::from(sent.prev_msg_bytes),
                prev_msg_last: 0,
                tls: false,
                keep_alive: false,
            },
        });
    }

    /// Emits the held message of `sock`, if any, with its line as far as it got.
    fn release(&mut self, sock: SockId, out: &mut Vec<Event>) {
        let Some(mut p) = self.pending.remove(&sock) else {
            return;
        };
        self.order.retain(|s| *s != sock);
        if let EventKind::Message { head, .. } = &mut p.event.kind {
            *head = head::parse(&p.line, self.query);
        }
        out.push(p.event);
    }

    /// Emits the messages held for thread `tid` (but `except`'s).
    fn release_thread(&mut self, tid: u32, except: Option<SockId>, out: &mut Vec<Event>) {
        if self.pending.is_empty() || tid == 0 {
            return;
        }
        let held: Vec<SockId> = self
            .order
            .iter()
            .copied()
            .filter(|s| {
                Some(*s) != except && self.pending.get(s).is_some_and(|p| p.event.tid == tid)
            })
            .collect();
        for sock in held {
            self.release(sock, out);
        }
    }

    /// Emits held messages older than `before` (or all with `u64::MAX`).
    pub fn flush(&mut self, before: u64, out: &mut Vec<Event>) {
        let old: Vec<SockId> = self
            .order
            .iter()
            .copied()
            .filter(|s| self.pending[s].event.ts < before)
            .collect();
        for sock in old {
            self.release(sock, out);
        }
    }

    /// Decodes one record on its own (no joining of split first lines). A `Reply`
    /// gives only its reply: the request start it carries comes out of
    /// [`Decoder::push`] alone.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < size_of::<wire::Header>() {
            return Err(DecodeError::Short {
                kind: None,
                len: bytes.len(),
            });
        }
        let h: wire::Header = read(bytes, 0)?;
        let kind = Kind::try_from(h.kind).map_err(DecodeError::UnknownKind)?;
        let k = h.kind;
        let id = h.sock_id;
        let kind = match kind {
            Kind::SockOpen => {
                let e: wire::SockOpen = read(bytes, k)?;
                EventKind::SockOpen {
                    sock: sock(id),
                    owner: e.owner_tgid,
                    side: match e.side {
                        wire::side::CLIENT => Side::Client,
                        wire::side::UPSTREAM => Side::Upstream,
                        _ => return Err(DecodeError::BadField("side")),
                    },
                    how: match e.how {
                        wire::how::CONNECT => Opened::Connect,
                        wire::how::FIRST_USE => Opened::FirstUse,
                        _ => return Err(DecodeError::BadField("how")),
                    },
                    local: endpoint_of(&e.local, &e.unix_path)?,
                    peer: endpoint_of(&e.peer, &e.unix_path)?,
                    prev_touch: touch(e.prev_touch),
                }
            }
            Kind::Message => {
                let e = view::<wire::Message>(bytes, k)?;
                let len = usize::from(e.line_len).min(wire::LINE_CAP);
                return self.decode_parts(&h, &e, &e.line[..len]);
            }
            Kind::Reply => {
                // On its own, only the reply: `push` puts the held send first.
                let e = view::<wire::Reply>(bytes, k)?;
                let len = usize::from(e.message.line_len).min(wire::LINE_CAP);
                return self.decode_parts(&h, &e.message, &e.message.line[..len]);
            }
            Kind::Io => {
                let e: wire::Io = read(bytes, k)?;
                let d = dir(e.dir)?;
                match e.what {
                    wire::io::EOF => EventKind::Eof {
                        sock: sock(id),
                        prev_touch: touch(e.prev_touch),
                    },
                    wire::io::ERROR => EventKind::IoError {
                        sock: sock(id),
                        dir: d,
                        errno: e.ret.saturating_neg(),
                        prev_touch: touch(e.prev_touch),
                    },
                    wire::io::PEEK_ERROR => EventKind::PeekError {
                        sock: sock(id),
                        errno: e.ret.saturating_neg(),
                        prev_touch: touch(e.prev_touch),
                    },
                    wire::io::TLS_SHUTDOWN => EventKind::TlsShutdown { sock: sock(id) },
                    wire::io::PROGRESS => EventKind::Progress {
                        sock: sock(id),
                        dir: d,
                        msg_bytes: e.msg_bytes,
                    },
                    wire::io::BLOCKED => EventKind::Blocked {
                        sock: sock(id),
                        msg_bytes: e.msg_bytes,
                    },
                    _ => return Err(DecodeError::BadField("what")),
                }
            }
            Kind::State => {
                let e: wire::State = read(bytes, k)?;
                EventKind::State {
                    sock: sock(id),
                    old: TcpState::from(e.old),
                    new: TcpState::from(e.new),
                    local: endpoint(&e.local)?,
                    peer: endpoint(&e.peer)?,
                    local_close: e.local_close != 0,
                    msg: cursor(e.msg_dir, e.msg_bytes, e.msg_last_ns),
                    prev_touch: touch(e.prev_touch),
                }
            }
            Kind::Reset => {
                let e: wire::Reset = read(bytes, k)?;
                EventKind::Reset {
                    sock: sock(id),
                    dir: match e.dir {
                        wire::reset::RECEIVED => ResetDir::Received,
                        wire::reset::SENT => ResetDir::Sent,
                        _ => return Err(DecodeError::BadField("reset dir")),
                    },
                    state: TcpState::from(e.state),
                    unacked: e.unacked,
                }
            }
            Kind::SockError => {
                let e: wire::SockError = read(bytes, k)?;
                EventKind::SockError {
                    sock: sock(id),
                    errno: e.errno,
                    state: TcpState::from(e.state),
                }
            }
            Kind::Destroy => {
                let e: wire::Destroy = read(bytes, k)?;
                EventKind::Destroy {
                    sock: sock(id),
                    local_close: e.local_close != 0,
                    msg: cursor(e.msg_dir, e.msg_bytes, e.msg_last_ns),
                }
            }
            Kind::Fork => {
                let e: wire::Fork = read(bytes, k)?;
                let end = e.child_comm.iter().position(|&b| b == 0).unwrap_or(16);
                EventKind::Fork {
                    child: e.child_pid,
                    comm: String::from_utf8_lossy(&e.child_comm[..end]).into_owned(),
                }
            }
            Kind::Exit => {
                let e: wire::Exit = read(bytes, k)?;
                EventKind::Exit {
                    task: e.pid,
                    group_dead: e.group_dead != 0,
                }
            }
        };
        Ok(Event {
            ts: h.ts_ns,
            pid: (h.pid_tgid >> 32) as u32,
            tid: h.pid_tgid as u32,
            kind,
        })
    }

    fn decode_parts(
        &self,
        h: &wire::Header,
        e: &wire::Message,
        line: &[u8],
    ) -> Result<Event, DecodeError> {
        let kind = EventKind::Message {
            sock: sock(h.sock_id),
            dir: dir(e.dir)?,
            bytes: e.ret.max(0) as u32,
            head: head::parse(line, self.query),
            prev_touch: touch(e.prev_touch),
            prev_msg_bytes: e.prev_msg_bytes,
            prev_msg_last: e.prev_msg_last_ns,
            tls: e.flags & wire::msg::TLS != 0,
            keep_alive: e.flags & wire::msg::KEEP_ALIVE != 0,
        };
        Ok(Event {
            ts: h.ts_ns,
            pid: (h.pid_tgid >> 32) as u32,
            tid: h.pid_tgid as u32,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper viewing a #[repr(C)] wire struct (no padding holes:
        // every field is explicit) as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
    }

    fn header(kind: Kind) -> wire::Header {
        wire::Header {
            kind: kind as u32,
            gaps: 0,
            ts_ns: 1000,
            pid_tgid: (42 << 32) | 43,
            sock_id: 7,
        }
    }

    #[test]
    fn message_keeps_only_the_parsed_line() {
        let mut line = [0u8; wire::LINE_CAP];
        let text = b"GET /login?password=hunter2 HTTP/1.1\r\n";
        line[..text.len()].copy_from_slice(text);
        let m = wire::Message {
            header: header(Kind::Message),
            prev_touch: 3,
            prev_msg_bytes: 0,
            prev_msg_last_ns: 0,
            ret: 512,
            dir: wire::dir::RECV,
            flags: 0,
            line_len: text.len() as u16,
            line,
        };
        let ev = Decoder::default().decode(&bytes_of(&m)).unwrap();
        assert_eq!(ev.pid, 42);
        let json = serde_json::to_string(&ev).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains("/login?…"), "{json}");
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let m = bytes_of(&header(Kind::Message));
        assert!(matches!(
            Decoder::default().decode(&m),
            Err(DecodeError::Short { kind: Some(2), .. })
        ));
        assert!(matches!(
            Decoder::default().decode(&m[..10]),
            Err(DecodeError::Short { kind: None, .. })
        ));
        let mut h = header(Kind::Exit);
        h.kind = 99;
        assert_eq!(
            Decoder::default().decode(&bytes_of(&h)),
            Err(DecodeError::UnknownKind(99))
        );
    }

    fn message(line: &[u8], ret: i32, flags: u8, ts: u64) -> Vec<u8> {
        let mut buf = [0u8; wire::LINE_CAP];
        buf[..line.len()].copy_from_slice(line);
        let mut header = header(Kind::Message);
        header.ts_ns = ts;
        bytes_of(&wire::Message {
            header,
            prev_touch: 0,
            prev_msg_bytes: 0,
            prev_msg_last_ns: 0,
            ret,
            dir: wire::dir::RECV,
            flags,
            line_len: line.len() as u16,
            line: buf,
        })
    }

    #[test]
    fn a_reply_puts_its_held_send_first() {
        let mut line = [0u8; wire::LINE_CAP];
        let text = b"HTTP/1.1 502 Bad Gateway\r\n";
        line[..text.len()].copy_from_slice(text);
        let mut h = header(Kind::Reply);
        h.ts_ns = 2000;
        let r = wire::Reply {
            message: wire::Message {
                header: h,
                prev_touch: 0,
                prev_msg_bytes: 0,
                prev_msg_last_ns: 0,
                ret: 300,
                dir: wire::dir::RECV,
                flags: 0,
                line_len: text.len() as u16,
                line,
            },
            sent: wire::HeldSend {
                ts_ns: 1500,
                prev_touch: 3,
                ret: 120,
                prev_msg_bytes: 100,
            },
        };
        let mut out = Vec::new();
        Decoder::default().push(&bytes_of(&r), &mut out).unwrap();
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].ts, 1500);
        assert_eq!(out[0].tid, 43);
        let EventKind::Message {
            sock,
            dir,
            bytes,
            head,
            prev_touch,
            ..
        } = &out[0].kind
        else {
            panic!("{:?}", out[0]);
        };
        assert_eq!((*sock, *dir, *bytes), (SockId(7), Dir::Send, 120));
        assert_eq!(*head, Head::None);
        assert_eq!(*prev_touch, Some(SockId(3)));
        assert_eq!(out[1].ts, 2000);
        let EventKind::Message { dir, head, .. } = &out[1].kind else {
            panic!("{:?}", out[1]);
        };
        assert_eq!(*dir, Dir::Recv);
        assert!(
            matches!(head, Head::Status(st) if st.code == 502),
            "{head:?}"
        );
        // The same record at an odd address (a recording's buffer need not be
        // aligned): copied instead of borrowed, the same events.
        let mut odd = vec![0u8];
        odd.extend_from_slice(&bytes_of(&r));
        let mut again = Vec::new();
        Decoder::default().push(&odd[1..], &mut again).unwrap();
        assert_eq!(format!("{again:?}"), format!("{out:?}"));
        // Shorter than a reply: an error, not a panic.
        let bytes = bytes_of(&r);
        assert!(matches!(
            Decoder::default().push(&bytes[..size_of::<wire::Message>()], &mut Vec::new()),
            Err(DecodeError::Short { kind: Some(10), .. })
        ));
    }

    #[test]
    fn a_first_line_in_pieces_is_joined() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.push(&message(b"GE", 2, 0, 10), &mut out).unwrap();
        d.push(&message(b"T /sp", 5, wire::msg::CONTINUED, 20), &mut out)
            .unwrap();
        assert!(out.is_empty(), "held until the line is complete");
        d.push(
            &message(b"lit HTTP/1.1\r\n", 40, wire::msg::CONTINUED, 30),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ts, 10, "the message starts at its first piece");
        let EventKind::Message {
            head: Head::Request(r),
            ..
        } = &out[0].kind
        else {
            panic!("{:?}", out[0])
        };
        assert_eq!((&*r.method, r.target.as_str()), ("GET", "/split"));
    }

    #[test]
    fn a_held_line_is_released_by_the_next_event_or_a_flush() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.push(&message(b"GE", 2, 0, 10), &mut out).unwrap();
        d.push(
            &bytes_of(&wire::Destroy {
                header: header(Kind::Destroy),
                msg_bytes: 2,
                msg_last_ns: 10,
                msg_dir: 1,
                local_close: 0,
                _pad: [0; 6],
            }),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(
            out[0].kind,
            EventKind::Message {
                head: Head::Other { len: 2, .. },
                ..
            }
        ));
        d.push(&message(b"GE", 2, 0, 10), &mut out).unwrap();
        d.flush(11, &mut out);
        assert_eq!(out.len(), 3);
        d.push(&message(b"T", 1, wire::msg::CONTINUED, 12), &mut out)
            .unwrap();
        assert_eq!(d.orphan_continuations, 1);
    }

    #[test]
    fn a_held_line_is_released_when_its_thread_moves_on() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.push(&message(b"GE", 2, 0, 10), &mut out).unwrap();
        assert!(out.is_empty());
        // The same thread (tid 43) does something else: the line is released first.
        let e = wire::Exit {
            header: header(Kind::Exit),
            pid: 1,
            group_dead: 0,
            _pad: [0; 3],
        };
        d.push(&bytes_of(&e), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0].kind, EventKind::Message { .. }));
    }

    /// An `Exit` record whose header carries the gap counter at `gaps`.
    fn exit_with_gaps(gaps: u32) -> Vec<u8> {
        let mut h = header(Kind::Exit);
        h.gaps = gaps;
        bytes_of(&wire::Exit {
            header: h,
            pid: 1,
            group_dead: 1,
            _pad: [0; 3],
        })
    }

    #[test]
    fn gaps_in_a_header_become_a_loss_marker_before_the_event() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.push(&exit_with_gaps(3), &mut out).unwrap();
        assert!(
            matches!(out[0].kind, EventKind::Lost { events: 3, .. }),
            "{out:?}"
        );
        assert!(matches!(out[1].kind, EventKind::Exit { .. }));
        assert_eq!(d.gaps, 3);
        // The counter is shared by all CPUs: the same value again, or a lower one
        // read by an event reserved at the same time on another CPU, is no new
        // gap; a rise is one, by its size, across the counter's wrap too.
        let mut lost = |gaps: u32| {
            let mut out = Vec::new();
            d.push(&exit_with_gaps(gaps), &mut out).unwrap();
            out.iter()
                .find_map(|e| match e.kind {
                    EventKind::Lost { events, .. } => Some(events),
                    _ => None,
                })
                .unwrap_or(0)
        };
        assert_eq!(lost(3), 0);
        assert_eq!(lost(2), 0);
        assert_eq!(lost(5), 2);
        assert_eq!(lost(u32::MAX), 0, "far below: an old value, not a rise");
        assert_eq!(lost(1 << 30), (1 << 30) - 5);
        assert_eq!(lost(2 << 30), 1 << 30);
        assert_eq!(lost(3 << 30), 1 << 30);
        assert_eq!(lost(4), (1 << 30) + 4, "a rise across the wrap");
    }

    #[test]
    fn line_len_beyond_capture_is_clamped() {
        let m = wire::Message {
            header: header(Kind::Message),
            prev_touch: 0,
            prev_msg_bytes: 0,
            prev_msg_last_ns: 0,
            ret: 1,
            dir: wire::dir::SEND,
            flags: 0,
            line_len: u16::MAX,
            line: [b'x'; wire::LINE_CAP],
        };
        assert!(Decoder::default().decode(&bytes_of(&m)).is_ok());
    }

    /// The probes' scan for nginx's keep-alive promise, on heads nginx writes:
    /// the first `valid` bytes of `head`.
    fn promised(head: &str, valid: usize) -> bool {
        wire::head_scan::head_promises_keep_alive(head.as_bytes(), valid)
    }

    fn nginx_head(server: &str, content_type: &str, connection: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nServer: {server}\r\nDate: Tue, 08 Dec 2026 01:40:33 GMT\r\n\
             Content-Type: {content_type}\r\nContent-Length: 12345\r\n\
             Connection: {connection}\r\n\r\n<!doctype html>"
        )
    }

    #[test]
    fn nginx_keep_alive_is_found_at_every_alignment_up_to_byte_184() {
        // The Server line's length moves the Connection line across all eight
        // byte offsets of a word, through the capture and the second look
        // past it, and beyond.
        let mut found = 0;
        for extra in 0..80 {
            let server = format!("nginx/1.22.1{}", "x".repeat(extra));
            let json = "application/json; charset=utf-8";
            let head = nginx_head(&server, json, "keep-alive");
            // The line starts right after a line break in words 1 to 17 of
            // the capture, or in words 0 to 5 of the second look.
            let at = head.find("Connection").unwrap();
            assert_eq!(
                promised(&head, head.len()),
                at <= 184,
                "Connection at byte {at}"
            );
            found += usize::from(promised(&head, head.len()));
            let closing = nginx_head(&server, json, "close");
            assert!(!promised(&closing, closing.len()));
        }
        assert!(found >= 30, "found at {found} offsets");
    }

    #[test]
    fn a_keep_alive_past_the_captured_bytes_is_not_found() {
        let head = nginx_head("nginx/1.22.1", "text/plain", "keep-alive");
        let at = head.find("Connection").unwrap();
        assert!(promised(&head, head.len()));
        assert!(promised(&head, at + 13));
        assert!(!promised(&head, at + 12));
    }

    #[test]
    fn the_keep_alive_flag_reaches_the_event() {
        let mut d = Decoder::default();
        let mut bytes = message(b"HTTP/1.1 200 OK\r\n", 200, wire::msg::KEEP_ALIVE, 1);
        let mut out = Vec::new();
        d.push(&bytes, &mut out).unwrap();
        bytes = message(b"HTTP/1.1 200 OK\r\n", 200, 0, 2);
        d.push(&bytes, &mut out).unwrap();
        let promised: Vec<bool> = out
            .iter()
            .map(|e| {
                matches!(
                    e.kind,
                    EventKind::Message {
                        keep_alive: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(promised, [true, false]);
    }
}
