//! The verdict table, applied to the evidence. Order matters where two parties
//! failed: whoever failed first decided the outcome (nginx logs 499 once the
//! client has gone, whatever the upstream does next).
use super::exchange::{Attempt, Exchange};
use crate::verdict::{Origin, Outcome, ResponseFrom, Verdict};

/// The upstream statuses nginx can retry on (`proxy_next_upstream http_500`,
/// `http_503`, `http_504`, `http_403`, `http_404`, `http_429`; its own 502 is
/// forwarded unchanged when no server is left).
const RETRIED_STATUSES: [u16; 6] = [500, 503, 504, 403, 404, 429];

/// How each attempt of an exchange ended, into `out` (cleared first: the engine
/// reuses one buffer for every record).
pub fn outcomes(ex: &Exchange, out: &mut Vec<Outcome>) {
    out.clear();
    out.extend(
        ex.attempts
            .iter()
            .enumerate()
            .map(|(i, a)| attempt_outcome(a, ex, ex.attempts.get(i + 1))),
    );
}

/// Whether two attempts asked for different requests (both lines seen). A
/// retry (`proxy_next_upstream`) sends the same request again; a request of
/// the proxy's own making (an `auth_request` check, an `error_page` fallback)
/// asks for another.
fn other_request(a: &Attempt, b: &Attempt) -> bool {
    match (&a.upstream_request, &b.upstream_request) {
        (Some(x), Some(y)) => x.target != y.target || x.query != y.query || x.method != y.method,
        _ => false,
    }
}

/// The proxy took this reply, then made another request: an `auth_request`
/// check that allowed the request before it was proxied. A retry follows a
/// reply the proxy refused, and nginx closes that connection before it tries
/// the next server; an accepted reply's connection goes back to the pool
/// (it is still open when the next attempt starts), or the next request asks
/// for something else. (A connection the upstream broke is closed without a
/// state change the proxy makes: it says nothing of the reply.)
fn took_reply_then_asked_again(a: &Attempt, next: &Attempt) -> bool {
    let kept = a.rst_out.is_none()
        && a.upstream_failed().is_none()
        && a.local_close
            .is_none_or(|c| next.started().is_some_and(|s| c > s));
    kept || other_request(a, next)
}

/// The attempt that decided the exchange: the last one tried, unless that one
/// answered an `error_page` without `=` (see `answered_error_page`): then the
/// one before it, whose failure the fallback covered.
pub fn deciding_attempt(ex: &Exchange) -> Option<usize> {
    let last = ex.attempts.len().checked_sub(1)?;
    Some(if answered_error_page(ex) {
        last - 1
    } else {
        last
    })
}

/// The last attempt was an `error_page` fallback that proxies (`error_page 502
/// 503 /fallback` with `proxy_intercept_errors`, no `=`): nginx sends the
/// fallback's body under the status of the failure it caught (the earlier
/// attempt's own, or its 502 or 504), so the status written is a 5xx the
/// fallback did not send. Told from a retry (`proxy_next_upstream`) whose
/// reply's header the proxy rejected (its own 502): the status written is the
/// earlier attempt's own, or the fallback asked for another target (a retry
/// asks for the same one).
fn answered_error_page(ex: &Exchange) -> bool {
    let [.., before, fallback] = ex.attempts.as_slice() else {
        return false;
    };
    let Some(written) = ex.response.as_ref().and_then(|r| r.status) else {
        return false;
    };
    written >= 500
        && fallback.status.is_some_and(|s| s != written)
        && (before.status == Some(written) || other_request(before, fallback))
}

/// How an upstream attempt ended.
fn attempt_outcome(a: &Attempt, ex: &Exchange, next: Option<&Attempt>) -> Outcome {
    let last = next.is_none();
    let client_left = ex.client_left();
    let before_client = |ts: u64| client_left.is_none_or(|c| ts <= c);
    // The proxy died waiting on this attempt: dropped, not failed by the
    // upstream (the kernel then closes or resets the connection itself).
    if let Some(died) = ex.died_unanswered() {
        let failed_first = a
            .upstream_failed()
            .or(a.connect_failed)
            .is_some_and(|f| f < died)
            || a.error.is_some_and(|(_, t)| t < died);
        if a.status.is_none() && !failed_first {
            return Outcome::Aborted;
        }
    }
    if let Some(status) = a.status {
        // A status line came back. If the proxy then wrote a 5xx of its own
        // instead of forwarding it, the head failed: cut short by the upstream,
        // timed out, or rejected (an invalid header line).
        let proxy_status = ex
            .response
            .as_ref()
            .and_then(|r| r.status.map(|s| (s, r.ts)));
        if let Some((written, at)) = proxy_status
            .filter(|(s, _)| last && *s >= 500 && *s != status)
            .filter(|_| !answered_error_page(ex))
        {
            // What the proxy read decides (a FIN that merely arrived after a
            // rejected head does not).
            if let Some(failed) = a.failure_read().filter(|f| *f <= at) {
                return broken(a, failed);
            }
            if written == 504 {
                return Outcome::Timeout;
            }
            // A status the proxy retries on (`proxy_next_upstream http_503`),
            // with no server left to try: nginx writes 502 ("no live
            // upstreams") in place of the upstream's own error answer.
            if written == 502 && RETRIED_STATUSES.contains(&status) {
                return Outcome::Response;
            }
            return Outcome::Invalid;
        }
        // Not the last: the proxy went on to another attempt. A status it
        // retries on (`proxy_next_upstream http_502`, `http_404`...) was the
        // upstream's own answer. Any other reply it either took before asking
        // again (an `auth_request` check that allowed the request), or did not
        // take: the head never came whole (broken, timed out) or was rejected.
        if let Some(next) = next.filter(|_| status < 400) {
            if let Some(failed) = a.failure_read() {
                return broken(a, failed);
            }
            if took_reply_then_asked_again(a, next) {
                return Outcome::Response;
            }
            let waited = a
                .local_close
                .zip(a.first_byte)
                .map_or(0, |(l, f)| l.saturating_sub(f));
            return if waited >= STALL_NS {
                Outcome::Timeout
            } else {
                Outcome::Invalid
            };
        }
        // Forwarded. It is cut when the upstream broke the connection after the
        // head and the proxy could not finish the response: it closed the client
        // connection right after, or a send to the client failed.
        if let Some(failed) = a.upstream_failed_seen() {
            if failed_after_head(a, failed) && response_cut(ex, a, failed) && !ended_by_close(a, ex)
            {
                return Outcome::Truncated;
            }
        }
        // A tunnel (101) has no body to cut: either side closing ends it, and
        // the proxy then closes both connections.
        if let Some(dropped) = dropped_mid_body(a, ex, last).filter(|_| status != 101) {
            if mid_body_leave(ex).is_some_and(|c| c <= dropped) && !dropped_as_it_finished(a, ex) {
                return Outcome::Aborted;
            }
            // The client stopped reading and the proxy gave up on it: the
            // upstream went quiet because the proxy stopped reading it.
            if ex.reader_stalled().is_some() {
                return Outcome::Aborted;
            }
            if stalled(a, ex, dropped) {
                // The proxy cut it on its way out (see
                // `Exchange::shut_down_mid_response`): dropped, not timed out.
                if ex.shut_down_mid_response().is_some() {
                    return Outcome::Aborted;
                }
                return Outcome::Timeout;
            }
        }
        return Outcome::Response;
    }
    if a.invalid {
        return Outcome::Invalid;
    }
    // A gateway reply whose status was unread, answered by the proxy with a 502
    // of its own (it forwards any other status, see `Engine::client_response`):
    // the upstream broke the connection before the reply's header was whole
    // (nginx: "upstream prematurely closed FastCGI stdout"), or the proxy
    // rejected the header ("upstream sent invalid header").
    if let Some(at) = ex
        .response
        .as_ref()
        .filter(|r| a.status_unread && last && r.status == Some(502))
        .map(|r| r.ts)
    {
        if let Some(failed) = a.failure_read().filter(|f| *f <= at) {
            return broken(a, failed);
        }
        return Outcome::Invalid;
    }
    if a.connect_start.is_some() && a.established.is_none() {
        // A unix socket's connect fails at once, whatever the reason: nothing
        // listens (ECONNREFUSED), no such path (ENOENT), no permission on the
        // socket file (EACCES), the server's accept queue is full (EAGAIN).
        // An error reported with no code (0) is an ICMP error (port or host
        // unreachable) that met the connect while the proxy held the socket:
        // the kernel keeps the code aside (`sk_err_soft`) for the proxy's
        // own check, reports the error, and ends the connect at once.
        let unix = a.peer.unix.is_some();
        let refused = a.error.is_some_and(|(e, _)| {
            e == libc::ECONNREFUSED
                || e == libc::EHOSTUNREACH
                || e == libc::ENETUNREACH
                || e == 0
                || unix
        }) || a.rst_in.is_some();
        if refused {
            return Outcome::Refused;
        }
        let gave_up = a.local_close.or(a.connect_failed);
        return match (client_left, gave_up) {
            (Some(c), Some(g)) if c <= g => Outcome::Aborted,
            (Some(_), None) => Outcome::Aborted,
            _ => Outcome::ConnectTimeout,
        };
    }
    if let Some(failed) = a.upstream_failed_seen() {
        if before_client(failed) {
            return broken(a, failed);
        }
        return Outcome::Aborted;
    }
    // A gateway reply whose status was unread and which the proxy answered with
    // a 502 of its own (it forwards any other status): the proxy rejected it
    // (nginx: "upstream sent invalid header").
    // No close of the proxy's own to compare with (a unix socket's shows
    // nowhere): a client that left after the proxy had answered (a 504) did
    // not abort this attempt.
    let answered_before = |c: u64| ex.response.as_ref().is_some_and(|r| r.ts < c);
    // Dropped because of the client without its leaving: its request never
    // came whole (408), or the proxy refused it mid-body itself (413 for a body
    // over client_max_body_size) while the attempt streamed it.
    let refused_client = ex
        .response
        .as_ref()
        .is_some_and(|r| r.status.is_some_and(|s| (400..500).contains(&s)));
    if a.first_byte.is_none() && (client_too_slow(ex) || (last && refused_client)) {
        return Outcome::Aborted;
    }
    match (client_left, a.local_close) {
        (Some(c), Some(l)) if c <= l => Outcome::Aborted,
        (Some(c), None) if !answered_before(c) => Outcome::Aborted,
        // A 504 is the proxy's timeout, however short (a TLS handshake that
        // outlasted a 50 ms `proxy_connect_timeout`).
        _ if rejected_before_request(a) && !(last && proxy_wrote(ex, 504)) => Outcome::Invalid,
        _ => Outcome::Timeout,
    }
}

/// Whether the proxy's response to the client carries `status`.
fn proxy_wrote(ex: &Exchange, status: u16) -> bool {
    ex.response
        .as_ref()
        .is_some_and(|r| r.status == Some(status))
}

/// The proxy closed a connection it had just established without sending its
/// request on it, the upstream having failed nothing it read: it rejected the
/// upstream. Over TLS, the handshake: a certificate that fails verification
/// (nginx's `proxy_ssl_verify`: untrusted, expired, another name) or no common
/// protocol; nginx writes 502 or tries the next upstream. A handshake that
/// hangs runs into the connect timeout instead, and a plain HTTP connection
/// carries the request at once.
fn rejected_before_request(a: &Attempt) -> bool {
    // Quick from the connect on: a connect that completed only as the proxy's
    // connect timeout ran out (a SYN retransmitted after 1 s) and was closed
    // at once is that timeout, not a rejection.
    let started = a.connect_start.or(a.established);
    a.request_sent.is_none()
        && a.established.is_some()
        && started
            .zip(a.local_close)
            .is_some_and(|(start, closed)| closed.saturating_sub(start) < STALL_NS)
}

/// The upstream broke the connection at `failed`: reset (an RST or ECONNRESET
/// by then) or closed.
fn broken(a: &Attempt, failed: u64) -> Outcome {
    let reset = a.rst_in.is_some_and(|r| r <= failed)
        || a.error
            .is_some_and(|(e, ts)| ts <= failed && e == libc::ECONNRESET);
    if reset {
        Outcome::Reset
    } else {
        Outcome::Closed
    }
}

/// The upstream ended its response by closing the connection, as HTTP/1.0
/// without a length does and a FastCGI server without `fastcgi_keep_conn`: the
/// proxy read the FIN (no reset) and wrote to the client after it, finishing
/// the response. nginx also writes what it holds after a FIN that cut a
/// reply (buffered, the default), then closes the client connection: the two
/// look alike unless the response had promised keep-alive, which nginx keeps
/// after a whole close-delimited reply and breaks after a cut one (see
/// verdicts.md for the responses whose promise the capture misses).
fn ended_by_close(a: &Attempt, ex: &Exchange) -> bool {
    let reset = a.rst_in.is_some() || a.error.is_some_and(|(e, _)| e == libc::ECONNRESET);
    !reset && a.eof_read.is_some_and(|eof| ex.last_send > eof) && ex.broke_keep_alive().is_none()
}

/// When the proxy abandoned the attempt's reply: it closed the upstream
/// connection, the upstream having neither closed nor reset it, and closed the
/// client's connection right after (nginx finalizing a request whose upstream
/// it gives up on). A reply read to its end is not closed that way: a
/// kept-alive connection goes back to the pool (and may be closed later, when
/// the pool evicts it, amid other work), any other is closed as its last byte
/// is read.
fn dropped_mid_body(a: &Attempt, ex: &Exchange, last: bool) -> Option<u64> {
    let closed = a.local_close?;
    ex.upstream_dropped?;
    let upstream_ended = a.upstream_failed().is_some_and(|f| f <= closed) || a.eof_read.is_some();
    (last && !upstream_ended).then_some(closed)
}

/// The proxy closed the upstream in the handler that had just done this
/// exchange's I/O (its thread touched the client's connection or this
/// upstream's last before the close), and the client's FIN came after the
/// response's last write: the proxy finishing the exchange, the client's FIN
/// arriving meanwhile (a client that closes as soon as it has the response,
/// an upstream without keep-alive closed once its reply was read). A close
/// that answers the client's FIN comes from a handler woken by that FIN, with
/// nothing of this exchange read or written before it.
fn dropped_as_it_finished(a: &Attempt, ex: &Exchange) -> bool {
    let in_its_handler = a
        .close_after_touch
        .is_some_and(|t| t == ex.client || t == a.sock);
    in_its_handler && ex.client_rst.is_none() && ex.client_fin.is_some_and(|f| f > ex.last_send)
}

/// When the client left (FIN or RST) after the response had started, if it did.
/// nginx then drops the upstream ("client prematurely closed connection, so
/// upstream connection is closed too") and logs the status it had sent.
fn mid_body_leave(ex: &Exchange) -> Option<u64> {
    let started = ex.response.as_ref()?.ts;
    ex.client_left().filter(|&c| c >= started)
}

/// Silence from the upstream before the proxy dropped its reply that marks a
/// read timeout (`proxy_read_timeout`), not a reply read to its end and closed
/// at once.
const STALL_NS: u64 = 100_000_000;

/// The upstream went silent mid-reply and the proxy gave up on it: it closed the
/// upstream connection long after the last byte came, with nothing left unread
/// (a proxy that stopped reading because the client was slow leaves bytes
/// unread, and its close sends a reset instead), then cut the client's
/// response.
fn stalled(a: &Attempt, ex: &Exchange, dropped: u64) -> bool {
    let quiet_since = a.last_recv.or(a.first_byte).unwrap_or(dropped);
    dropped.saturating_sub(quiet_since) >= STALL_NS
        && a.rst_out.is_none_or(|r| r > dropped)
        && ex.response_cut_by_proxy().is_some_and(|k| k >= dropped)
}

/// Whether the response to the client was cut after the upstream failed at
/// `failed`. After a reset or a failed call the upstream broke the reply: the
/// proxy closing the client's connection, or the client not getting it all,
/// follows from that. After a mere close (its FIN) the reply may have ended
/// there: an upstream without keep-alive closes after every reply, and the
/// proxy then goes on sending what it holds. Only the proxy cutting the client
/// off then says the reply was short; a client that left first, or one that
/// stopped reading until the proxy gave up on it, cut the response itself.
fn response_cut(ex: &Exchange, a: &Attempt, failed: u64) -> bool {
    let cut = ex.response_cut_by_proxy().is_some_and(|t| t >= failed);
    if a.broke().is_some() {
        return cut || ex.response_lost.is_some_and(|t| t >= failed);
    }
    cut && ex.reader_stalled().is_none()
        && !(closes_after_every_response(ex)
            && may_end_by_close(a)
            && ex.broke_keep_alive().is_none())
}

/// Whether the attempt's reply may end by the upstream closing: any but an
/// `HTTP/1.1` one (see `Attempt::reply_http11`). An HTTP/1.1 reply that ends
/// by closing exists, but is rare.
fn may_end_by_close(a: &Attempt) -> bool {
    !a.reply_http11
}

/// Whether the upstream's failure at `failed` cut the reply after its head, as
/// far as the proxy is concerned. A FIN or reset sent right behind the head
/// often reaches the socket before the proxy reads the head, and waits there
/// behind its bytes: it counts once the proxy read it (the end of file, a
/// failed call). A reset counts only then: the proxy reads a reply until its
/// declared end, so a reset it never met came behind a whole reply (an
/// upstream that resets as it closes, once its last byte is written).
fn failed_after_head(a: &Attempt, failed: u64) -> bool {
    let head = a.first_byte.unwrap_or(0);
    let read_after_head =
        a.eof_read.is_some_and(|t| t >= head) || a.error_read.is_some_and(|t| t >= head);
    if a.broke().is_some() {
        return read_after_head;
    }
    failed >= head || read_after_head
}

/// nginx closes an HTTP/1.0 client's connection after every response whose
/// length it cannot announce (a reply the upstream ends by closing has none,
/// and HTTP/1.0 has no chunked coding): the close then says nothing about
/// whether the reply was whole.
fn closes_after_every_response(ex: &Exchange) -> bool {
    ex.request.as_ref().is_some_and(|r| r.version == "HTTP/1.0")
}

/// Quiet time before the proxy closes an unanswered connection that marks a
/// client too slow to send its request (nginx's client_header_timeout and
/// client_body_timeout, 60 s by default), not a close of the proxy's own
/// making (`return 444`, a request it refuses at once). Under 1 s: nginx arms
/// its timers from the time it cached at the top of its loop iteration, so a
/// 1 s timeout fires up to a few ms short of 1 s after the client's last byte
/// (998 ms measured).
const CLIENT_TIMEOUT_NS: u64 = 900_000_000;

/// The proxy closed the connection without a response after the client had
/// sent nothing for a while, and no upstream had answered or failed: the
/// request never came whole (nginx logs 408).
fn client_too_slow(ex: &Exchange) -> bool {
    // An attempt may be under way: with `proxy_request_buffering off` the body
    // streams upstream as it comes, and a body that stops is the client's.
    let waiting_on_upstream = ex.attempts.last().is_some_and(|a| {
        a.first_byte.is_some() || a.upstream_failed().is_some() || a.failure_read().is_some()
    });
    !waiting_on_upstream
        && ex
            .closed_unanswered()
            .is_some_and(|c| c.client_quiet >= CLIENT_TIMEOUT_NS)
}

/// The exchange's verdict, whose behaviour decided it, and who wrote the status.
pub fn exchange_verdict(
    ex: &Exchange,
    outcomes: &[Outcome],
) -> (Verdict, Origin, Option<ResponseFrom>) {
    let last = deciding_attempt(ex).and_then(|i| ex.attempts.get(i).zip(outcomes.get(i).copied()));
    let Some(resp) = &ex.response else {
        // No response written.
        if ex.died_unanswered().is_some() {
            return (Verdict::ProxyError, Origin::Proxy, None);
        }
        if ex.client_rst.is_some() {
            return (Verdict::ClientReset, Origin::Client, None);
        }
        if ex.client_fin.is_some() {
            return (Verdict::ClientAbort, Origin::Client, None);
        }
        if client_too_slow(ex) {
            return (Verdict::ClientError, Origin::Client, None);
        }
        // The upstream's bytes were no HTTP response, and the proxy wrote
        // nothing of them (nginx logs 009 and closes once its read timeout ran
        // out on an upstream that spoke first and stayed open).
        if let Some((_, Outcome::Invalid)) = last {
            return (Verdict::UpstreamInvalid, Origin::Upstream, None);
        }
        // Also an exchange the agent stopped first (its hint says what it was
        // waiting on): nothing timed out yet, so no upstream verdict is
        // counted for it.
        return (Verdict::ProxyError, Origin::Proxy, None);
    };
    let from = match (last, resp.status) {
        (
            Some((a, Outcome::Response | Outcome::Truncated | Outcome::Aborted | Outcome::Timeout)),
            Some(s),
        ) if a.status == Some(s) => ResponseFrom::Upstream,
        _ => ResponseFrom::Proxy,
    };
    // The client stopped reading and the proxy gave up on it (its send
    // timeout): the client's doing, whatever the upstream did meanwhile.
    if ex.reader_stalled().is_some() {
        return (Verdict::ClientAbort, Origin::Client, Some(from));
    }
    match last {
        Some((_, Outcome::Truncated)) => {
            return (Verdict::UpstreamTruncated, Origin::Upstream, Some(from))
        }
        // The header was forwarded, then the upstream went silent and the proxy
        // cut the body at its read timeout.
        Some((_, Outcome::Timeout)) if from == ResponseFrom::Upstream => {
            return (Verdict::UpstreamTruncated, Origin::Upstream, Some(from))
        }
        // The proxy cut the response and its process exited right after: its
        // own shutdown, the upstream still sending.
        Some((_, Outcome::Aborted))
            if from == ResponseFrom::Upstream && ex.shut_down_mid_response().is_some() =>
        {
            return (Verdict::ProxyError, Origin::Proxy, Some(from));
        }
        // The client left mid-body and the proxy dropped the upstream.
        Some((_, Outcome::Aborted)) if from == ResponseFrom::Upstream => {
            let verdict = if ex.client_rst.is_some() {
                Verdict::ClientReset
            } else {
                Verdict::ClientAbort
            };
            return (verdict, Origin::Client, Some(from));
        }
        // No status line on the wire: the proxy passed the upstream's bytes through
        // (nginx treats them as HTTP/0.9 and logs 009).
        Some((_, Outcome::Invalid)) if resp.status.is_none() => {
            return (
                Verdict::UpstreamInvalid,
                Origin::Upstream,
                Some(ResponseFrom::Upstream),
            )
        }
        Some((_, Outcome::Invalid)) => {
            return (Verdict::UpstreamInvalid, Origin::Upstream, Some(from))
        }
        _ => {}
    }
    if ex.response_lost.is_some() && ex.client_rst.is_some() {
        return (Verdict::ClientReset, Origin::Client, Some(from));
    }
    // The proxy's bytes to an HTTP/1 request were no HTTP/1 response: not an
    // answer the client could read (an HTTP/2-only listener without TLS, as
    // `listen 80 http2` makes nginx before 1.25, answers with HTTP/2 frames).
    // An HTTP/0.9 request is answered without a status line, as it should be.
    let http1_request = ex
        .request
        .as_ref()
        .is_some_and(|r| r.version.starts_with("HTTP/1."));
    if resp.status.is_none() && last.is_none() && http1_request {
        return (
            Verdict::ProxyError,
            Origin::Proxy,
            Some(ResponseFrom::Proxy),
        );
    }
    let status = resp
        .status
        .or_else(|| last.and_then(|(a, _)| a.status))
        .unwrap_or(200);
    let verdict = match status {
        100..=399 => Verdict::Ok,
        400..=499 => Verdict::ClientError,
        _ if from == ResponseFrom::Upstream => Verdict::UpstreamError,
        _ => match last.map(|(_, o)| o) {
            Some(Outcome::Refused) => Verdict::UpstreamRefused,
            Some(Outcome::Reset) => Verdict::UpstreamReset,
            Some(Outcome::Closed) => Verdict::UpstreamClosed,
            Some(Outcome::Invalid) => Verdict::UpstreamInvalid,
            Some(Outcome::Timeout) => Verdict::UpstreamTimeout,
            Some(Outcome::ConnectTimeout) => Verdict::UpstreamConnectTimeout,
            // The upstream's error answer, which the proxy retried on and
            // then replaced with its own 502 (see `attempt_outcome`).
            Some(Outcome::Response) => Verdict::UpstreamError,
            _ => Verdict::ProxyError,
        },
    };
    let origin = match verdict {
        Verdict::Ok => match from {
            ResponseFrom::Upstream => Origin::Upstream,
            ResponseFrom::Proxy => Origin::Proxy,
        },
        Verdict::ClientError => Origin::Client,
        Verdict::ProxyError => Origin::Proxy,
        _ => Origin::Upstream,
    };
    (verdict, origin, Some(from))
}
