//! Socket I/O: `sock/sock_send_length` and `sock/sock_recv_length`.
//!
//! Both fire only for socket I/O, after the call, in the calling thread. Every call
//! by a watched thread on a TCP socket is a touch (the attribution rule in
//! DESIGN.md); a call that moves bytes in a new direction starts a message and
//! carries the message's first line; EOF and errors are reported; the rest only
//! updates counters in `SOCKS` (and a throttled progress event).
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_task_pt_regs, generated::bpf_probe_read_user as raw_probe_read_user,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use classifier_ebpf::{
    dir, head_scan, how, io, msg, side, stat, Addr, EventKind, HeldSend, Io, Message, Reply,
    SockState, ThreadState, LINE_CAP,
};

use super::{
    emit::{emit_at, emit_open, Opening},
    globals::*,
    held,
    maps::{count, thread_state, track, HEAD_TAIL, LISTEN_PORTS, SOCKS},
    sock_state::{end_entry, is_inet_tcp, read_endpoints},
    tls, unix,
};

const EAGAIN: i32 = 11;
const MSG_PEEK: i32 = 2;
/// How many calls may continue a first line split across reads (a client that
/// writes its request line a few bytes at a time).
const LINE_PARTS: u8 = 32;

// Raw tracepoints: no record is built for the millions of socket calls that
// are not ours, and the kernel's recursion guard is per program (a classic
// tracepoint's program is skipped whenever any BPF program or BPF map syscall is
// active on the CPU).
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    on_io(&ctx, dir::SEND);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    on_io(&ctx, dir::RECV);
    0
}

#[inline(always)]
fn on_io(ctx: &RawTracePointContext, direction: u8) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = thread_state(pid_tgid as u32)?;
    // TP_PROTO(struct sock *sk, int ret, int flags)
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    socket_call::<false, true>(thread, pid_tgid, sk, ret, flags, direction, 0)
}

/// One I/O call of a watched thread on socket `sk`: `ret` bytes moved (or an
/// error) in `direction`. `plain` is 0 for the socket call itself (its bytes are
/// found through the syscall's saved registers), or the user buffer holding the
/// plaintext of a TLS connection, given to or returned by the TLS library
/// (`tls`), whose socket calls then only count as touches.
///
/// `REQUESTS`: whether receives on a client connection are checked for a
/// request line that starts in the same direction (see
/// `SockState::sniff_requests`), and a response's head for nginx's
/// keep-alive promise (`head_scan`). The socket tracepoints do, and the TLS read
/// programs loaded beside them (`tls`, the `_requests` variants): kernels
/// that have those tracepoints (6.5+) verify them. The 6.1 verifier walks
/// `sys_exit_io` (every path of this function after its descriptor walk), and
/// this check took it past its million instructions.
///
/// `TLS`: called from the TLS library's probes. Those leave the full-buffer
/// tracking (`blocked`) to the socket's own calls: the 6.1 verifier walks
/// every path of this function inlined into each TLS program, and one more
/// branch or store there took `ssl_read_done` past its million instructions.
#[inline(always)]
pub(super) fn socket_call<const TLS: bool, const REQUESTS: bool>(
    thread: *mut ThreadState,
    pid_tgid: u64,
    sk: u64,
    ret: i32,
    flags: i32,
    direction: u8,
    plain: u64,
) -> Option<()> {
    let sock = match SOCKS.get_ptr_mut(sk) {
        Some(sock) if unix::replaced(sk, sock) => {
            // A unix socket ended unseen and a new one took its address.
            end_entry(sk, sock, pid_tgid, false);
            adopt(sk, pid_tgid)?
        }
        Some(sock) => sock,
        None => adopt(sk, pid_tgid)?,
    };
    // SAFETY: `sock` points to a map value valid for this program run.
    if unsafe { (*sock).announced } == 0 {
        // Its start event was lost to a full ring: announce it again, or the agent
        // could never place this socket's exchanges.
        announce(sk, sock, pid_tgid);
    }
    // SAFETY: `thread` points to a map value valid for this program run.
    if plain == 0 && unsafe { (*thread).in_tls } != 0 {
        // Read inside a TLS library call: this socket carries TLS.
        tls::claim(pid_tgid, sk, sock);
    }
    // Ciphertext: the messages of a TLS socket come from its plaintext.
    // SAFETY: as above.
    let ciphertext = plain == 0 && ret > 0 && unsafe { (*sock).tls } != 0;
    // SAFETY: `thread` and `sock` point into map values that stay valid for this
    // program run; concurrent writers only race on counters, never on validity.
    let (id, prev_touch, prev_receiving) = unsafe {
        let id = (*sock).id;
        let prev = ((*thread).last_touch, (*thread).last_touch_receiving);
        (*thread).last_touch = id;
        // This socket's current message once this call is done: a call that moves
        // bytes sets its direction (a peek moves none).
        let msg_dir = if ret > 0 && flags & MSG_PEEK == 0 && !ciphertext {
            direction
        } else {
            (*sock).dir
        };
        (*thread).last_touch_receiving =
            ((*sock).side == side::CLIENT && msg_dir == dir::RECV) as u32;
        (id, prev.0, prev.1)
    };
    if !TLS && ret == -EAGAIN && direction == dir::SEND {
        blocked(sock, pid_tgid, id, prev_touch);
        return Some(());
    }
    if !TLS && ciphertext && direction == dir::SEND {
        // A TLS connection's bytes moved: a full buffer is reported again.
        // SAFETY: as above.
        unsafe { (*sock).blocked = 0 };
    }
    let peek = flags & MSG_PEEK != 0;
    if ret == -EAGAIN || (peek && ret >= 0) || ciphertext {
        // A touch and nothing else: nginx checks connections this way. A peek
        // that fails goes on, reported as a peek: the proxy learned there that
        // the peer reset the connection, without reading it (nginx's keep-alive
        // pool checks an idle connection so, and closes it for no request).
        return Some(());
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if ret > 0 {
        // SAFETY: as above.
        let (changed, side_, line_open) =
            unsafe { ((*sock).dir != direction, (*sock).side, (*sock).line_open) };
        // A new message in the same direction: a response after another
        // (pipelined requests, a final status after `100 Continue`), or a
        // request after the rest of a body nginx read only to discard it,
        // once it had answered (see `SockState::sniff_requests`).
        let sniffed = !changed
            && side_ == side::CLIENT
            && if direction == dir::SEND {
                starts_a_response(ret as u64, plain)
            } else {
                // SAFETY: as above.
                REQUESTS
                    && line_open == 0
                    && unsafe { (*sock).sniff_requests } != 0
                    && starts_a_request(ret as u64, plain)
            };
        let continued = !changed && !sniffed && line_open != 0;
        if changed || sniffed || continued {
            // A request sent upstream in the handler that read its client's
            // request: held back, without its line (see `held`). Not on a unix
            // socket: no TCP state change or destroy would release it when no
            // reply comes (a timeout, a client that left).
            // SAFETY: as above.
            let hold = changed
                && direction == dir::SEND
                && side_ == side::UPSTREAM
                && prev_touch != 0
                && prev_receiving != 0
                && unsafe { (*sock).unix_ino } == 0;
            // SAFETY: as above.
            let (prev_bytes, prev_last) = unsafe {
                let prev = ((*sock).msg_bytes, (*sock).msg_last_ns);
                (*sock).dir = direction;
                if !TLS {
                    (*sock).blocked = 0;
                }
                (*sock).msg_last_ns = now;
                (*sock).emitted_ns = now;
                if continued {
                    (*sock).msg_bytes += ret as u64;
                    (*sock).line_open = line_open - 1;
                    (0, 0)
                } else {
                    (*sock).msg_bytes = ret as u64;
                    (*sock).line_open = if hold { 0 } else { LINE_PARTS };
                    prev
                }
            };
            if hold {
                held::hold(sock, now, pid_tgid, prev_touch, ret, prev_bytes);
                return Some(());
            }
            // `TLS` is a constant of each program: no branch.
            let flags = if continued {
                msg::CONTINUED
            } else if sniffed {
                msg::SNIFFED
            } else {
                0
            } | if TLS { msg::TLS } else { 0 };
            let start = MessageStart {
                plain,
                prev_touch,
                prev_bytes,
                prev_last,
                ret,
                direction,
                flags,
                response_head: REQUESTS
                    && !continued
                    && direction == dir::SEND
                    && side_ == side::CLIENT,
            };
            let open = match held::take(sock) {
                // The reply to a held request: both in one event.
                Some(held) => {
                    let mut open = false;
                    emit_at::<Reply>(
                        EventKind::Reply,
                        now,
                        pid_tgid,
                        id,
                        #[inline(always)]
                        |e| {
                            // SAFETY: `e` is a reserved Reply.
                            unsafe {
                                (*e).sent = HeldSend {
                                    ts_ns: held.ts,
                                    prev_touch: held.prev_touch,
                                    ret: held.ret,
                                    prev_msg_bytes: held.prev_bytes,
                                };
                                open = fill_message(core::ptr::addr_of_mut!((*e).message), &start);
                            }
                        },
                    );
                    open
                }
                None => {
                    let mut open = false;
                    let mut first = 0u64;
                    emit_at::<Message>(
                        EventKind::Message,
                        now,
                        pid_tgid,
                        id,
                        #[inline(always)]
                        |e| {
                            // SAFETY: `e` is a reserved Message; its line is
                            // LINE_CAP bytes, 8-aligned, written by `fill_message`.
                            unsafe {
                                open = fill_message(e, &start);
                                first = *(*e).line.as_ptr().cast::<u64>();
                            }
                        },
                    );
                    if REQUESTS && direction == dir::RECV && side_ == side::CLIENT {
                        // SAFETY: as above.
                        unsafe { (*sock).sniff_requests = !is_request_start(first) as u8 };
                    }
                    open
                }
            };
            if !open {
                // SAFETY: as above.
                unsafe { (*sock).line_open = 0 };
            }
        } else {
            // SAFETY: as above.
            let progress = unsafe {
                (*sock).msg_bytes += ret as u64;
                (*sock).msg_last_ns = now;
                // Bytes moved: a full buffer is reported again. The first
                // bytes after one are due at once (`blocked` zeroed the
                // throttle's clock), without a branch of their own.
                if !TLS {
                    (*sock).blocked = 0;
                }
                if now.wrapping_sub((*sock).emitted_ns) >= PROGRESS_NS.load() {
                    (*sock).emitted_ns = now;
                    Some((*sock).msg_bytes)
                } else {
                    None
                }
            };
            if let Some(msg_bytes) = progress {
                held::release(sock);
                emit_io(
                    now,
                    pid_tgid,
                    id,
                    prev_touch,
                    msg_bytes,
                    ret,
                    direction,
                    io::PROGRESS,
                );
            }
        }
    } else if ret < 0 || (direction == dir::RECV && side_of(sock) == side::UPSTREAM) {
        // An error, or the upstream's FIN read by the proxy (a client's FIN shows
        // as CLOSE_WAIT already).
        // SAFETY: as above.
        let msg_bytes = unsafe {
            (*sock).emitted_ns = now;
            (*sock).msg_bytes
        };
        let what = if ret == 0 {
            io::EOF
        } else if peek {
            io::PEEK_ERROR
        } else {
            io::ERROR
        };
        held::release(sock);
        emit_io(
            now, pid_tgid, id, prev_touch, msg_bytes, ret, direction, what,
        );
    }
    Some(())
}

/// The proxy began ending TLS socket `sk`'s session (`tls::ssl_shutdown_enter`).
#[inline(always)]
pub(super) fn tls_shutdown(pid_tgid: u64, sk: u64) -> Option<()> {
    let sock = SOCKS.get_ptr_mut(sk)?;
    // SAFETY: `sock` points to a map value valid for this program run.
    let (id, msg_bytes) = unsafe { ((*sock).id, (*sock).msg_bytes) };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    held::release(sock);
    emit_io(
        now,
        pid_tgid,
        id,
        0,
        msg_bytes,
        0,
        dir::SEND,
        io::TLS_SHUTDOWN,
    );
    Some(())
}

/// A send that found socket `sk`'s buffer full (`EAGAIN`) in the middle of the
/// message it is sending: reported once, until a send moves bytes again. A
/// send that blocks before any byte of a message went out starts nothing.
#[inline(always)]
fn blocked(sock: *mut SockState, pid_tgid: u64, id: u64, prev_touch: u64) {
    // SAFETY: `sock` points to a map value valid for this program run.
    let msg_bytes = unsafe {
        if (*sock).dir != dir::SEND || (*sock).msg_bytes == 0 || (*sock).blocked != 0 {
            return;
        }
        (*sock).blocked = 1;
        (*sock).msg_bytes
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // The next send that moves bytes is reported at once (see the progress
    // throttle in `socket_call`).
    // SAFETY: as above.
    unsafe { (*sock).emitted_ns = 0 };
    held::release(sock);
    emit_io(
        now,
        pid_tgid,
        id,
        prev_touch,
        msg_bytes,
        -EAGAIN,
        dir::SEND,
        io::BLOCKED,
    );
}

/// What a message event says besides its header and first line.
struct MessageStart {
    /// The plaintext buffer of a TLS connection, or 0 (see `socket_call`).
    plain: u64,
    prev_touch: u64,
    prev_bytes: u64,
    prev_last: u64,
    ret: i32,
    direction: u8,
    flags: u8,
    /// The head of a response to a client: checked for nginx's keep-alive
    /// promise (see `head_scan`).
    response_head: bool,
}

/// Writes a reserved message event and captures its first line. Returns whether
/// the line is still open (the call ended before it did: later calls continue it).
///
/// # Safety
/// `e` points to a reserved `Message` in the ring.
#[inline(always)]
unsafe fn fill_message(e: *mut Message, m: &MessageStart) -> bool {
    // SAFETY: the caller's contract.
    unsafe {
        (*e).prev_touch = m.prev_touch;
        (*e).prev_msg_bytes = m.prev_bytes;
        (*e).prev_msg_last_ns = m.prev_last;
        (*e).ret = m.ret;
        (*e).dir = m.direction;
        let (len, found_lf, keep_alive) = capture_line(e, m.ret as u64, m.plain, m.response_head);
        (*e).flags = m.flags | if keep_alive { msg::KEEP_ALIVE } else { 0 };
        (*e).line_len = len as u16;
        !found_lf && len < LINE_CAP as u64 && len == m.ret as u64
    }
}

#[inline(always)]
fn side_of(sock: *mut SockState) -> u8 {
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe { (*sock).side }
}

#[inline(always)]
fn emit_io(
    now: u64,
    pid_tgid: u64,
    id: u64,
    prev_touch: u64,
    msg_bytes: u64,
    ret: i32,
    direction: u8,
    what: u8,
) {
    emit_at::<Io>(EventKind::Io, now, pid_tgid, id, |e| {
        // SAFETY: `e` is a reserved Io.
        unsafe {
            (*e).prev_touch = prev_touch;
            (*e).msg_bytes = msg_bytes;
            (*e).ret = ret;
            (*e).dir = direction;
            (*e).what = what;
            (*e)._pad = [0; 2];
        }
    });
}

/// Starts tracking a socket first seen in I/O: an accepted connection, or one that
/// existed before the agent attached. Its side comes from its local port.
#[inline(always)]
fn adopt(sk: u64, pid_tgid: u64) -> Option<*mut SockState> {
    // TCP over IPv4 or IPv6, and the connecting end of a unix stream socket (an
    // upstream behind `unix:/path`). The thread's other sockets (UDP, its
    // socketpairs, a unix listener's connections) pass here too, and stop here,
    // every time: they never enter SOCKS.
    if !is_inet_tcp(sk) {
        return unix::adopt(sk, pid_tgid);
    }
    let (local, peer) = read_endpoints(sk)?;
    let is_client = LISTEN_PORTS.get_ptr(local.port).is_some();
    let sock_side = if is_client {
        side::CLIENT
    } else {
        side::UPSTREAM
    };
    let (id, sock) = track(sk, pid_tgid, sock_side, 0)?;
    emit_first_use(sock, id, local, peer, sock_side, pid_tgid);
    Some(sock)
}

/// Announces a socket whose start event was lost, as first used now.
#[inline(always)]
fn announce(sk: u64, sock: *mut SockState, pid_tgid: u64) {
    // SAFETY: `sock` points to a map value valid for this program run.
    if unsafe { (*sock).unix_ino } != 0 {
        unix::announce(sk, sock, pid_tgid);
        return;
    }
    let Some((local, peer)) = read_endpoints(sk) else {
        return;
    };
    // SAFETY: `sock` points to a map value valid for this program run.
    let (id, sock_side) = unsafe { ((*sock).id, (*sock).side) };
    emit_first_use(sock, id, local, peer, sock_side, pid_tgid);
}

#[inline(always)]
fn emit_first_use(
    sock: *mut SockState,
    id: u64,
    local: Addr,
    peer: Addr,
    sock_side: u8,
    pid_tgid: u64,
) {
    let opening = Opening {
        local,
        peer,
        prev_touch: 0,
        side: sock_side,
        how: how::FIRST_USE,
    };
    let sent = emit_open(id, pid_tgid, &opening, |_| {});
    // SAFETY: `sock` points to a map value valid for this program run.
    unsafe { (*sock).announced = sent as u8 };
}

/// Copies the first line of the data the current syscall moved into `e.line`,
/// from the buffer the syscall was given (found through the user registers saved at
/// syscall entry). Returns the number of valid bytes. Bytes after the first `\n`
/// are zeroed before the event is submitted, so only the request or status line
/// ever reaches the agent. `response_head`: the bytes start a response to a
/// client, whose head is checked first for nginx's keep-alive promise (the
/// third value returned; see `head_scan`).
#[inline(always)]
unsafe fn capture_line(
    e: *mut Message,
    moved: u64,
    plain: u64,
    response_head: bool,
) -> (u64, bool, bool) {
    let Some((buf, len)) = data_buffer(plain) else {
        return (0, true, false);
    };
    let mut n = if len < moved { len } else { moved };
    if n > LINE_CAP as u64 {
        n = LINE_CAP as u64;
    }
    // SAFETY: `e.line` is LINE_CAP bytes and n <= LINE_CAP.
    let dst = unsafe { (*e).line.as_mut_ptr() };
    // SAFETY: helper reading at most n bytes of user memory into `dst`.
    let rc = unsafe { raw_probe_read_user(dst.cast(), n as u32, buf as *const _) };
    if rc != 0 {
        count(stat::LINE_UNREAD);
        n = 0;
    }
    // SAFETY: `dst` is LINE_CAP bytes, 8-aligned (the field sits at an 8-aligned
    // offset); its first `n` bytes were just read.
    let keep_alive = response_head
        && (unsafe { head_scan::promises_keep_alive::<WORDS, 1>(dst.cast::<u64>(), n) }
            || promised_further(buf, if len < moved { len } else { moved }));
    // SAFETY: as above.
    let (kept, found_lf) = unsafe { keep_first_line(dst.cast::<u64>(), n) };
    (kept, found_lf, keep_alive)
}

/// Words of the capture.
const WORDS: usize = LINE_CAP / 8;

/// The second look at a response head that goes on past the capture (see
/// `head_scan`): `head_scan::TAIL_WORDS` words of the caller's buffer (`avail`
/// bytes) read from `head_scan::TAIL_FROM` into a per-CPU scratch buffer,
/// which never leaves the kernel. Only heads whose first look found no
/// promise pay for it.
#[inline(always)]
fn promised_further(buf: u64, avail: u64) -> bool {
    const TAIL_BYTES: u64 = (head_scan::TAIL_WORDS * 8) as u64;
    if avail <= LINE_CAP as u64 {
        return false;
    }
    let Some(tail) = HEAD_TAIL.get_ptr_mut(0) else {
        return false;
    };
    let mut want = avail - head_scan::TAIL_FROM;
    if want > TAIL_BYTES {
        want = TAIL_BYTES;
    }
    // SAFETY: helper reading `want` (at most the scratch buffer's size) bytes of
    // user memory into the scratch buffer.
    let rc = unsafe {
        raw_probe_read_user(
            tail.cast(),
            want as u32,
            (buf + head_scan::TAIL_FROM) as *const _,
        )
    };
    // SAFETY: the scratch buffer is TAIL_WORDS words, 8-aligned.
    rc == 0
        && unsafe {
            head_scan::promises_keep_alive::<{ head_scan::TAIL_WORDS }, 0>(tail.cast::<u64>(), want)
        }
}

/// Whether the data of the current send starts with `HTTP/1.` (a status line).
/// Reads 8 bytes of the caller's buffer, compared in the kernel; nothing is copied
/// out unless it matches.
#[inline(always)]
fn starts_a_response(moved: u64, plain: u64) -> bool {
    const HTTP1: u64 = u64::from_le_bytes(*b"HTTP/1.\0");
    const MASK: u64 = 0x00ff_ffff_ffff_ffff;
    if moved < 8 {
        return false;
    }
    let Some((buf, len)) = data_buffer(plain) else {
        return false;
    };
    if len < 8 {
        return false;
    }
    // SAFETY: read of 8 bytes of user memory through the probe helper.
    let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u64) }) else {
        return false;
    };
    word & MASK == HTTP1
}

/// Whether the data of the current receive starts with a request line (see
/// [`is_request_start`]). Reads 8 bytes of the caller's buffer, compared in the
/// kernel; nothing is copied out unless it matches.
#[inline(always)]
fn starts_a_request(moved: u64, plain: u64) -> bool {
    if moved < 8 {
        return false;
    }
    let Some((buf, len)) = data_buffer(plain) else {
        return false;
    };
    if len < 8 {
        return false;
    }
    // SAFETY: read of 8 bytes of user memory through the probe helper.
    let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u64) }) else {
        return false;
    };
    is_request_start(word)
}

/// Whether 8 bytes start a request line of a method nginx proxies, with an
/// origin-form target (`GET /`, `POST /`...; `OPTIONS ` for `*` too). Compared
/// as masked words, without a loop or an early return: the 6.1 verifier walks
/// every path of the socket programs, so each branch here multiplies its work.
#[inline(always)]
fn is_request_start(word: u64) -> bool {
    const fn prefix(p: &[u8]) -> (u64, u64) {
        let mut v = 0u64;
        let mut i = 0;
        while i < p.len() {
            v |= (p[i] as u64) << (i * 8);
            i += 1;
        }
        let mask = if p.len() == 8 {
            u64::MAX
        } else {
            (1u64 << (p.len() * 8)) - 1
        };
        (v, mask)
    }
    const METHODS: [(u64, u64); 7] = [
        prefix(b"GET /"),
        prefix(b"POST /"),
        prefix(b"PUT /"),
        prefix(b"HEAD /"),
        prefix(b"PATCH /"),
        prefix(b"DELETE /"),
        prefix(b"OPTIONS "),
    ];
    let mut hit = 0u64;
    let mut i = 0;
    while i < METHODS.len() {
        let (v, mask) = METHODS[i];
        hit |= ((word & mask) == v) as u64;
        i += 1;
    }
    hit != 0
}

/// Finds the first `\n` within the first `valid` bytes and zeroes everything after
/// it (and everything past `valid`). Returns the kept length and whether a `\n`
/// was found.
#[inline(always)]
unsafe fn keep_first_line(words: *mut u64, valid: u64) -> (u64, bool) {
    const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut keep = valid;
    let mut found = false;
    let mut i: u64 = 0;
    while i < (LINE_CAP / 8) as u64 {
        let off = i * 8;
        // SAFETY: i < LINE_CAP / 8.
        let p = unsafe { words.add(i as usize) };
        if off >= keep {
            // SAFETY: in bounds, see above.
            unsafe { *p = 0 };
        } else {
            // SAFETY: in bounds, see above.
            let mut w = unsafe { *p };
            let in_word = keep - off;
            if in_word < 8 {
                w &= (1u64 << (in_word * 8)) - 1;
            }
            let x = w ^ LF;
            let t = x.wrapping_sub(LOW) & !x & HIGH;
            if t != 0 {
                // The lowest flagged byte is exact (borrows only flag higher bytes).
                let b = first_flagged_byte(t);
                keep = off + b + 1;
                found = true;
                if b < 7 {
                    w &= (1u64 << ((b + 1) * 8)) - 1;
                }
            }
            // SAFETY: in bounds, see above.
            unsafe { *p = w };
        }
        i += 1;
    }
    (keep, found)
}

#[inline(always)]
fn first_flagged_byte(t: u64) -> u64 {
    let mut b = 0;
    while b < 7 {
        if t & (0x80u64 << (b * 8)) != 0 {
            return b;
        }
        b += 1;
    }
    7
}

/// Where the call's data is: the plaintext buffer of a TLS call, else the
/// syscall's own buffer.
#[inline(always)]
fn data_buffer(plain: u64) -> Option<(u64, u64)> {
    if plain != 0 {
        Some((plain, u64::MAX))
    } else {
        syscall_buffer()
    }
}

/// The user buffer of the syscall in progress and its length (only its first
/// iovec for vectored calls), from the registers saved at syscall entry.
#[inline(always)]
fn syscall_buffer() -> Option<(u64, u64)> {
    // SAFETY: helpers returning the current task and its saved user registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // `regs` is a BTF pointer to struct pt_regs: direct loads at field offsets are
    // checked by the verifier (and guarded at run time), no helper call needed.
    // SAFETY: in-bounds loads of pt_regs fields (offsets from BTF).
    let (nr, arg1) = unsafe {
        (
            core::ptr::read_volatile((regs + OFF_REGS_ORIG_AX.load() as u64) as *const u64) as u32,
            core::ptr::read_volatile((regs + OFF_REGS_SI.load() as u64) as *const u64),
        )
    };
    if nr == SYS_READ.load()
        || nr == SYS_WRITE.load()
        || nr == SYS_RECVFROM.load()
        || nr == SYS_SENDTO.load()
    {
        return Some((arg1, u64::MAX));
    }
    let iov = if nr == SYS_READV.load() || nr == SYS_WRITEV.load() {
        arg1
    } else if nr == SYS_RECVMSG.load() || nr == SYS_SENDMSG.load() {
        // struct user_msghdr: msg_iov at 16 (UAPI layout).
        // SAFETY: read of user memory through the probe helper.
        unsafe { bpf_probe_read_user((arg1 + 16) as *const u64).ok()? }
    } else {
        return None;
    };
    // struct iovec { void *iov_base; size_t iov_len; } (UAPI layout), in one read.
    // SAFETY: read of user memory through the probe helper.
    let [base, len] = unsafe { bpf_probe_read_user(iov as *const [u64; 2]).ok()? };
    Some((base, len))
}
