//! An ended exchange → its output record.
use std::{mem::take, net::IpAddr, sync::Arc};

use super::{
    exchange::{Attempt, Exchange},
    outcome::{exchange_verdict, outcomes},
};
use crate::{
    event::Endpoint,
    hint::{hint, HintFacts},
    record::{Address, ExchangeRecord, Proxy, Request, Response, Upstream},
    verdict::{Outcome, ResponseFrom, Verdict},
};

/// RFC 3339 UTC with microseconds for a CLOCK_MONOTONIC timestamp
/// ("2026-11-23T10:00:00.123456Z").
pub fn wall_time(mono_ns: u64, realtime_offset_ns: i64) -> String {
    let mut s = String::with_capacity(27);
    push_wall_time(&mut s, mono_ns, realtime_offset_ns);
    s
}

/// [`wall_time`], appended to `out`.
pub fn push_wall_time(out: &mut String, mono_ns: u64, realtime_offset_ns: i64) {
    let unix_ns = (mono_ns as i128 + realtime_offset_ns as i128).max(0) as u64;
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    // Written digit by digit: every record carries one, and `format!` machinery
    // was a visible share of the agent's time per record.
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut b[0..4], y.clamp(0, 9999) as u64);
    put_digits(&mut b[5..7], m as u64);
    put_digits(&mut b[8..10], d as u64);
    put_digits(&mut b[11..13], rem / 3600);
    put_digits(&mut b[14..16], rem / 60 % 60);
    put_digits(&mut b[17..19], rem % 60);
    put_digits(&mut b[20..26], micros);
    // The buffer holds ASCII digits and punctuation only.
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// Writes `v` as zero-padded decimal filling `out` (higher digits dropped).
fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Microseconds between two monotonic timestamps (0 if reversed).
pub fn us(from: u64, to: u64) -> u64 {
    to.saturating_sub(from) / 1000
}

/// Text of addresses, formatted once each (records name the same few upstreams
/// and local addresses over and over). Bounded: cleared when full.
#[derive(Default)]
pub struct AddressText {
    cache: rustc_hash::FxHashMap<IpAddr, Arc<str>>,
    unix: rustc_hash::FxHashMap<crate::event::UnixPath, Arc<str>>,
    /// The (empty) local address of the proxy's end of a unix connection.
    unnamed: Arc<str>,
}

impl AddressText {
    const MAX: usize = 4096;

    pub fn get(&mut self, addr: IpAddr) -> Arc<str> {
        if let Some(t) = self.cache.get(&addr) {
            return t.clone();
        }
        if self.cache.len() >= Self::MAX {
            self.cache.clear();
        }
        let t: Arc<str> = addr.to_string().into();
        self.cache.insert(addr, t.clone());
        t
    }

    /// The text of an endpoint's address: its IP, or `unix:PATH`.
    pub fn endpoint(&mut self, e: &Endpoint) -> Arc<str> {
        match &e.unix {
            Some(path) => {
                if let Some(t) = self.unix.get(path) {
                    return t.clone();
                }
                if self.unix.len() >= Self::MAX {
                    self.unix.clear();
                }
                let t: Arc<str> = path.to_string().into();
                self.unix.insert(*path, t.clone());
                t
            }
            None => self.get(e.addr),
        }
    }

    fn address(&mut self, e: &Endpoint) -> Address {
        Address {
            address: self.endpoint(e),
            port: e.port,
        }
    }
}

/// The hint of a response the proxy's worker cut on its way out.
fn shutdown_hint(pid: u32, into_us: u64) -> String {
    format!(
        "The proxy's process (PID {pid}) cut this response {} into it and exited right after: its own shutdown, most often an old worker whose worker_shutdown_timeout ran out after a reload (nginx's error log: \"gracefully shutting down\", then \"exiting\"), else a stopped or killed worker. The upstream and the client had not failed. Long-lived responses (streams, downloads) are cut at every reload: check how often nginx reloads, and worker_shutdown_timeout.",
        crate::hint::ms(into_us),
    )
}

/// A record already built whose response its worker cut just before exiting
/// (its exchange ended before the exit was seen): what
/// `Exchange::shut_down_mid_response` makes of it when the exit comes first.
pub fn mark_shut_down(r: &mut ExchangeRecord, pid: u32) {
    let timed_out = r
        .upstreams
        .last()
        .is_some_and(|u| u.outcome == Outcome::Timeout);
    if r.verdict != Verdict::UpstreamTruncated || !timed_out {
        return;
    }
    r.verdict = Verdict::ProxyError;
    r.origin = crate::verdict::Origin::Proxy;
    if let Some(u) = r.upstreams.last_mut() {
        u.outcome = Outcome::Aborted;
    }
    r.hint = Some(shutdown_hint(pid, r.duration_us));
}

/// Builds the record of an ended exchange. `conn`: the client connection's local
/// and peer endpoints, if known. `spare`: a record already written out, whose box,
/// time text and upstream list are reused (no allocation for them per record).
#[allow(clippy::too_many_arguments)]
pub fn build(
    exchange: &mut Exchange,
    conn: Option<(Endpoint, Endpoint)>,
    comm: Arc<str>,
    text: &mut AddressText,
    scratch: &mut Vec<Outcome>,
    realtime_offset_ns: i64,
    now: u64,
    spare: Option<Box<ExchangeRecord>>,
) -> Box<ExchangeRecord> {
    let ex = &*exchange;
    outcomes(ex, scratch);
    let outcomes: &[Outcome] = scratch;
    let (verdict, origin, from) = exchange_verdict(ex, outcomes);
    let end = match &ex.response {
        // A response cut mid-body ended when the cut was seen, which can be
        // long after its last byte went out (a client that stopped reading, an
        // upstream that went silent).
        Some(_)
            if matches!(
                verdict,
                Verdict::ClientAbort | Verdict::ClientReset | Verdict::UpstreamTruncated
            ) =>
        {
            [
                ex.client_left(),
                ex.response_cut_by_proxy(),
                ex.response_lost,
            ]
            .into_iter()
            .flatten()
            .fold(ex.last_send, u64::max)
        }
        Some(_) => ex.last_send,
        None if ex.died_unanswered().is_some() => ex.proxy_exited.unwrap_or(ex.last_activity),
        None => ex
            .client_left()
            .or(ex.closed_unanswered().map(|c| c.at))
            .unwrap_or(ex.last_activity),
    };
    // An exchange still in flight lasted at least until the agent stopped.
    let end = if ex.in_flight { end.max(now) } else { end };
    let duration_us = us(ex.start, end.max(ex.start));
    let (client, server) = match conn {
        Some((local, peer)) => (text.address(&peer), text.address(&local)),
        None => (
            text.address(&Endpoint::default()),
            text.address(&Endpoint::default()),
        ),
    };
    let upstreams = ex.attempts.iter().zip(outcomes).map(|(a, o)| Upstream {
        address: text.endpoint(&a.peer),
        port: a.peer.port,
        // The proxy's end of a unix connection has no name of its own.
        local_address: if a.local.unix.is_some() {
            text.unnamed.clone()
        } else {
            text.get(a.local.addr)
        },
        local_port: a.local.port,
        outcome: *o,
        status: a.status,
        connect_us: a.connect_start.zip(a.established).map(|(s, e)| us(s, e)),
        first_byte_us: a.request_sent.zip(a.first_byte).map(|(s, f)| us(s, f)),
        elapsed_us: a
            .started()
            .zip(attempt_end(a, *o, ex))
            .map(|(s, e)| us(s, e)),
    });
    let status = ex.response.as_ref().and_then(|r| r.status);
    let hint = if ex.in_flight {
        Some(in_flight_hint(ex, duration_us))
    } else if ex.died_unanswered().is_some() {
        Some(format!(
            "The proxy's process (PID {}) exited {} into this exchange, before any response: it was killed or crashed (nginx's error log says \"worker process {} exited on signal N\"), and nginx logs no access-log line for it. Check for OOM kills, crashes (core dumps, segfaults in the kernel log) and whatever sends it signals.",
            ex.pid,
            crate::hint::ms(duration_us),
            ex.pid
        ))
    } else if let Some(cut) = ex
        .shut_down_mid_response()
        .filter(|_| verdict == Verdict::ProxyError)
    {
        Some(shutdown_hint(ex.pid, us(ex.start, cut.max(ex.start))))
    } else if verdict == Verdict::Ok {
        // Only an answer the proxy made itself can cover a failure (rare: the
        // common `ok` builds no facts).
        (from == Some(ResponseFrom::Proxy) && !ex.attempts.is_empty())
            .then(|| {
                crate::hint::covered_failure(&hint_facts(
                    ex,
                    outcomes,
                    status,
                    duration_us,
                    verdict,
                    from,
                ))
            })
            .flatten()
    } else {
        hint(
            verdict,
            &hint_facts(ex, outcomes, status, duration_us, verdict, from),
        )
    };
    let complete = !ex.incomplete && !ex.inferred && conn.is_some();
    let pid = ex.pid;
    let start = ex.start;
    let record = ExchangeRecord {
        time: String::new(),
        proxy: Proxy { pid, comm },
        client,
        server,
        request: None,
        response: Response { status, from },
        verdict,
        origin,
        upstreams: Vec::new(),
        duration_us,
        hint,
        complete,
    };
    let mut out = match spare {
        Some(mut old) => {
            let (time, upstreams) = (take(&mut old.time), take(&mut old.upstreams));
            *old = record;
            old.time = time;
            old.upstreams = upstreams;
            old
        }
        None => Box::new(record),
    };
    out.upstreams.clear();
    out.upstreams.extend(upstreams);
    out.time.clear();
    push_wall_time(&mut out.time, start, realtime_offset_ns);
    take_request(exchange, &mut out);
    out
}

/// Moves the request line into the record: the client's, or else the one sent
/// to an upstream (a connection older than the agent).
fn take_request(ex: &mut Exchange, record: &mut ExchangeRecord) {
    record.request = ex
        .request
        .take()
        .or_else(|| {
            ex.attempts
                .iter_mut()
                .find_map(|a| a.upstream_request.take())
        })
        .map(|r| Request {
            method: r.method,
            target: r.target,
            version: r.version,
        });
}

/// When an attempt ended, by its outcome.
fn attempt_end(a: &Attempt, o: Outcome, ex: &Exchange) -> Option<u64> {
    match o {
        Outcome::Response => a.last_recv.or(a.first_byte),
        Outcome::Invalid => a.first_byte,
        Outcome::Truncated | Outcome::Reset | Outcome::Closed => a.upstream_failed(),
        Outcome::Refused => a.error.map(|(_, t)| t).or(a.rst_in).or(a.connect_failed),
        Outcome::Timeout | Outcome::ConnectTimeout => a.local_close.or(a.connect_failed),
        Outcome::Aborted => a.local_close.or(ex.client_left()),
    }
}

fn in_flight_hint(ex: &Exchange, duration_us: u64) -> String {
    let waiting = match ex.attempts.last() {
        Some(a) if a.established.is_none() && a.connect_start.is_some() => {
            format!("connecting to {}", a.peer)
        }
        Some(a) => match a.status {
            Some(status) => format!(
                "{} had answered {status}; the response to the client had not started",
                a.peer
            ),
            None => format!("waiting for a response header from {}", a.peer),
        },
        None => "before any upstream was contacted".to_owned(),
    };
    format!(
        "Still in flight when classify stopped, after {} ({waiting}); nothing is known about how it ended.",
        crate::hint::ms(duration_us)
    )
}

fn hint_facts(
    ex: &Exchange,
    outcomes: &[Outcome],
    status: Option<u16>,
    duration_us: u64,
    verdict: Verdict,
    from: Option<ResponseFrom>,
) -> HintFacts {
    // The deciding attempt: the last one (nginx reports the last upstream
    // tried), or the one an `error_page` fallback covered.
    let deciding = super::outcome::deciding_attempt(ex);
    let last = deciding.and_then(|i| ex.attempts.get(i));
    let outcome = deciding.and_then(|i| outcomes.get(i).copied());
    let after_us = last.and_then(|a| {
        let from = a.request_sent.or(a.connect_start)?;
        let to = match outcome? {
            Outcome::Reset | Outcome::Closed | Outcome::Truncated => a.upstream_failed()?,
            Outcome::Timeout | Outcome::ConnectTimeout => a.local_close.or(a.connect_failed)?,
            // Rejected before its request was sent (see `outcome`).
            Outcome::Invalid if a.request_sent.is_none() => a.local_close?,
            _ => return None,
        };
        Some(us(from, to))
    });
    // How long the side the proxy gave up on had been silent: the client in
    // a request that never came whole, else an upstream mid-reply.
    let silent_us = match (verdict, status, ex.closed_unanswered()) {
        (Verdict::ClientError, None, Some(c)) => Some(c.client_quiet / 1_000),
        _ => last
            .filter(|a| outcome == Some(Outcome::Timeout) && a.first_byte.is_some())
            .and_then(|a| Some(us(a.last_recv.or(a.first_byte)?, a.local_close?))),
    };
    let waited_us = match verdict {
        Verdict::ClientAbort | Verdict::ClientReset => {
            let first = ex.attempts.first().and_then(|a| a.started());
            first.zip(ex.client_left()).map(|(s, c)| us(s, c))
        }
        _ => None,
    };
    HintFacts {
        status,
        upstream: last.map(|a| a.peer.to_string()),
        attempts: ex.attempts.len(),
        outcome,
        upstream_status: last.and_then(|a| a.status),
        request_sent: last.is_some_and(|a| a.request_sent.is_some()),
        pooled: last.is_some_and(|a| a.connect_start.is_none()),
        reader_stalled_us: ex.reader_stalled().map(|(from, to)| us(from, to)),
        forwarded: from == Some(ResponseFrom::Upstream),
        after_us,
        waited_us,
        silent_us,
        duration_us,
        errno: last.and_then(|a| a.error.map(|(e, _)| e)),
        response_unreadable: ex.response.as_ref().is_some_and(|r| r.status.is_none()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_rfc3339_utc_with_micros() {
        assert_eq!(wall_time(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T23:59:59.999999Z
        assert_eq!(
            wall_time(951_868_799_999_999_000, 0),
            "2000-02-29T23:59:59.999999Z"
        );
        // The monotonic clock plus the offset the agent measured.
        assert_eq!(
            wall_time(1_000, 1_795_445_845_916_317_000),
            "2026-11-23T14:57:25.916318Z"
        );
    }
}
