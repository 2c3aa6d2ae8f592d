//! TLS plaintext: uprobes on the TLS library the watched process maps (OpenSSL's
//! `libssl`, or a binary that exports the same functions).
//!
//! The bytes on a TLS socket are ciphertext, so its messages are taken from the
//! library's calls instead, through the same path as socket calls
//! (`sock_io::socket_call` with the plaintext buffer):
//! - `SSL_read` returns plaintext: its entry saves the buffer, its return makes
//!   the call;
//! - `SSL_write` is given plaintext: its entry makes the call, before the library
//!   encrypts and sends it;
//! - where the agent finds them, probes inside the two functions stand in for
//!   their entries and `SSL_read`'s return (`ssl_read_done`): far cheaper on a
//!   VM (see the agent's `tls_sites`);
//! - `SSL_do_handshake` and `SSL_read` mark the thread as inside a TLS call, and
//!   the socket it reads meanwhile is marked TLS (`claim`), and remembered as
//!   the socket of that `SSL` object (`TLS_SOCKS`), which `SSL_write` needs.
//!
//! A TLS socket's own calls are then touches only (the attribution rule still
//! sees them); end of file, errors and the TCP lifecycle come from the socket as
//! for any other.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use classifier_ebpf::{dir, SockState, TlsCall};

use super::{
    maps::thread_state,
    sock_io::{socket_call, tls_shutdown},
};

/// The last TLS call of each watched thread, by tid (least recently used
/// entries go first: threads that exited leave theirs behind).
#[map]
pub static TLS_CALLS: LruHashMap<u32, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket of each TLS connection object (`SSL *` → `struct sock *`), learned
/// from the socket its handshake or reads used. Keyed by process too: nginx's
/// workers are forks of one master with the same heap layout, and two of them
/// hold `SSL` objects at the same address (one worker's writes then went to the
/// other's socket). Least recently used entries go first: an `SSL *` reused for
/// a new connection is learned again at its handshake, before any write.
#[map]
pub static TLS_SOCKS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Key of `TLS_SOCKS`: [`SSL *`, process id].
type SslKey = [u64; 2];

#[inline(always)]
fn ssl_key(ssl: u64, pid_tgid: u64) -> SslKey {
    [ssl, pid_tgid >> 32]
}

/// Entry of `SSL_read(ssl, buf, num)`, or its call of its internal read, where
/// the arguments are still in their registers.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, true);
    0
}

/// Entry of `SSL_do_handshake(ssl)`.
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, false);
    0
}

/// Return of `SSL_do_handshake`: the thread is out of the TLS library (its
/// call has no plaintext). A program of its own, light to verify, so that
/// the read programs' return probe is loaded only for libraries without the
/// fast sites (start-up waits on the verifier).
#[uretprobe]
pub fn ssl_handshake_exit(_ctx: RetProbeContext) -> u32 {
    let _ = handshake_exit();
    0
}

/// Return of `SSL_read`, where the fast sites are missing.
#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    let _ = read_exit::<false>(&ctx);
    0
}

/// `SSL_read`'s result, inside it (the fast sites: see the agent's `tls_sites`).
#[uprobe]
pub fn ssl_read_done(ctx: ProbeContext) -> u32 {
    let _ = read_done::<false>(&ctx);
    0
}

/// `ssl_read_exit`, and a client's plaintext checked for a request that starts
/// after a body nginx read only to discard it (`sock_io::socket_call`'s
/// `REQUESTS`). The agent loads these two with the socket tracepoints (Linux
/// 6.5+); the other two go with the syscall exits, for kernels whose verifier
/// would refuse the check (6.1's, at a million instructions).
#[uretprobe]
pub fn ssl_read_exit_requests(ctx: RetProbeContext) -> u32 {
    let _ = read_exit::<true>(&ctx);
    0
}

/// `ssl_read_done` with the request check (see `ssl_read_exit_requests`).
#[uprobe]
pub fn ssl_read_done_requests(ctx: ProbeContext) -> u32 {
    let _ = read_done::<true>(&ctx);
    0
}

/// Entry of `SSL_write(ssl, buf, num)`, or its call of its internal write.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    let _ = write_enter::<false>(&ctx);
    0
}

/// `ssl_write_enter`, and a response's head checked for nginx's keep-alive
/// promise (`sock_io::socket_call`'s `REQUESTS`): loaded with the socket
/// tracepoints, as `ssl_read_exit_requests` is.
#[uprobe]
pub fn ssl_write_enter_requests(ctx: ProbeContext) -> u32 {
    let _ = write_enter::<true>(&ctx);
    0
}

/// Entry of `SSL_shutdown(ssl)`: the proxy ends the TLS session, as it closes
/// the connection. nginx then waits for the peer's answer (its `close_notify`,
/// or its FIN) before it closes the socket, so a client that closes at the
/// alert is seen leaving first; this marks where the proxy's close began.
#[uprobe]
pub fn ssl_shutdown_enter(ctx: ProbeContext) -> u32 {
    let _ = shutdown_enter(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, reads: bool) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = thread_state(pid_tgid as u32)?;
    let ssl: u64 = ctx.arg(0)?;
    let buf: u64 = if reads { ctx.arg(1)? } else { 0 };
    TLS_CALLS
        .insert(pid_tgid as u32, TlsCall { ssl, buf, sk: 0 }, 0)
        .ok()?;
    // SAFETY: `thread` points to a map value valid for this program run.
    unsafe { (*thread).in_tls = 1 };
    Some(())
}

#[inline(always)]
fn handshake_exit() -> Option<()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let thread = thread_state(tid)?;
    // SAFETY: `thread` points to a map value valid for this program run.
    unsafe { (*thread).in_tls = 0 };
    let call = TLS_CALLS.get_ptr_mut(&tid)?;
    // SAFETY: a map value valid for this program run; only this thread writes
    // it (as in `read_done_with`).
    unsafe { (*call).buf = 0 };
    Some(())
}

#[inline(always)]
fn read_exit<const REQUESTS: bool>(ctx: &RetProbeContext) -> Option<()> {
    // int SSL_read(): the plaintext bytes returned, or <= 0 (0 for a handshake,
    // whose call has no buffer).
    read_done_with::<REQUESTS>(ctx.ret::<u64>() as i32)
}

/// Inside `SSL_read`, at the jump on its internal read's result (see the
/// agent's `tls_sites`): `eax` is 1 on success, and the plaintext length is
/// the `size_t` on the stack top.
#[inline(always)]
fn read_done<const REQUESTS: bool>(ctx: &ProbeContext) -> Option<()> {
    // SAFETY: `regs` is this probe's context, the saved user registers.
    let (rax, rsp) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rsp) };
    let len = if rax as i32 > 0 {
        // SAFETY: a read of user memory through the probe helper.
        unsafe { bpf_probe_read_user(rsp as *const u64).ok()? }
    } else {
        0
    };
    read_done_with::<REQUESTS>(len.min(i32::MAX as u64) as i32)
}

/// The end of a watched read call that returned `ret` plaintext bytes (or
/// `ret <= 0`): the bytes become a receive on the call's socket.
#[inline(always)]
fn read_done_with<const REQUESTS: bool>(ret: i32) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let thread = thread_state(tid)?;
    // SAFETY: `thread` points to a map value valid for this program run.
    unsafe { (*thread).in_tls = 0 };
    let call = TLS_CALLS.get_ptr_mut(&tid)?;
    // SAFETY: a map value valid for this program run; only this thread writes
    // it. The entry stays (the next call overwrites it; the map is LRU): its
    // buffer is cleared so that it is used once.
    let (ssl, buf, sk) = unsafe {
        let fields = ((*call).ssl, (*call).buf, (*call).sk);
        (*call).buf = 0;
        fields
    };
    if ret <= 0 || buf == 0 {
        return Some(());
    }
    let sk = if sk != 0 {
        sk
    } else {
        // Plaintext the library had already decrypted: no socket read this time.
        // SAFETY: a map value valid for this program run, copied out at once.
        unsafe { *TLS_SOCKS.get(ssl_key(ssl, pid_tgid))? }
    };
    socket_call::<true, REQUESTS>(thread, pid_tgid, sk, ret, 0, dir::RECV, buf)
}

#[inline(always)]
fn write_enter<const REQUESTS: bool>(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = thread_state(pid_tgid as u32)?;
    let ssl: u64 = ctx.arg(0)?;
    let buf: u64 = ctx.arg(1)?;
    let num = ctx.arg::<u64>(2)? as i32;
    if num <= 0 || buf == 0 {
        return Some(());
    }
    // SAFETY: a map value valid for this program run, copied out at once.
    let sk = unsafe { *TLS_SOCKS.get(ssl_key(ssl, pid_tgid))? };
    socket_call::<true, REQUESTS>(thread, pid_tgid, sk, num, 0, dir::SEND, buf)
}

#[inline(always)]
fn shutdown_enter(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    thread_state(pid_tgid as u32)?;
    let ssl: u64 = ctx.arg(0)?;
    // SAFETY: a map value valid for this program run, copied out at once.
    let sk = unsafe { *TLS_SOCKS.get(ssl_key(ssl, pid_tgid))? };
    tls_shutdown(pid_tgid, sk)
}

/// The thread read socket `sk` inside a TLS call: the socket carries TLS, and it
/// is the socket of the call's `SSL` object. That pairing is learned once per
/// connection, when the socket is first marked (its handshake, or for a
/// connection older than the agent its first read): every later read of a
/// kept-alive connection only names the socket to its call. An `SSL *` reused
/// for a new connection comes with a new socket, learned at its handshake.
#[inline(always)]
pub fn claim(pid_tgid: u64, sk: u64, sock: *mut SockState) {
    // SAFETY: `sock` points to a map value valid for this program run.
    let first = unsafe { core::mem::replace(&mut (*sock).tls, 1) } == 0;
    let Some(call) = TLS_CALLS.get_ptr_mut(pid_tgid as u32) else {
        return;
    };
    // SAFETY: a map value valid for this program run (only this thread writes it).
    unsafe {
        (*call).sk = sk;
        if first {
            let _ = TLS_SOCKS.insert(ssl_key((*call).ssl, pid_tgid), sk, 0);
        }
    }
}
