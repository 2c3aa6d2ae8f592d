//! An ended exchange → its output record.
use std::time::{Duration, UNIX_EPOCH};

use super::{
    exchange::{Attempt, Exchange},
    outcome::{exchange_verdict, outcomes},
    sockets::Sock,
};
use crate::{
    event::Endpoint,
    hint::{hint, HintFacts},
    record::{Address, ExchangeRecord, Proxy, Request, Response, Upstream},
    verdict::{Outcome, Verdict},
};

/// RFC 3339 UTC with microseconds for a CLOCK_MONOTONIC timestamp.
pub fn wall_time(mono_ns: u64, realtime_offset_ns: i64) -> String {
    let unix_ns = (mono_ns as i128 + realtime_offset_ns as i128).max(0) as u128;
    let t = UNIX_EPOCH + Duration::from_nanos(unix_ns.min(u64::MAX as u128) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Microseconds between two monotonic timestamps (0 if reversed).
pub fn us(from: u64, to: u64) -> u64 {
    to.saturating_sub(from) / 1000
}

fn address(e: &Endpoint) -> Address {
    Address {
        address: e.addr.to_string(),
        port: e.port,
    }
}

pub fn build(
    ex: &Exchange,
    client: Option<&Sock>,
    comm: &str,
    realtime_offset_ns: i64,
    now: u64,
) -> ExchangeRecord {
    let outcomes: Vec<Outcome> = outcomes(ex);
    let (verdict, origin, from) = exchange_verdict(ex, &outcomes);
    let end = match &ex.response {
        Some(_) => ex.last_send,
        None => ex.client_left().unwrap_or(ex.last_activity),
    };
    // An exchange still in flight lasted at least until the agent stopped.
    let end = if ex.in_flight { end.max(now) } else { end };
    let duration_us = us(ex.start, end.max(ex.start));
    let upstreams: Vec<Upstream> = ex
        .attempts
        .iter()
        .zip(&outcomes)
        .map(|(a, o)| Upstream {
            address: a.peer.addr.to_string(),
            port: a.peer.port,
            local_address: a.local.addr.to_string(),
            local_port: a.local.port,
            outcome: *o,
            status: a.status,
            connect_us: a.connect_start.zip(a.established).map(|(s, e)| us(s, e)),
            first_byte_us: a.request_sent.zip(a.first_byte).map(|(s, f)| us(s, f)),
            elapsed_us: a
                .started()
                .zip(attempt_end(a, *o, ex))
                .map(|(s, e)| us(s, e)),
        })
        .collect();
    let status = ex.response.as_ref().and_then(|r| r.status);
    let facts = hint_facts(ex, &outcomes, status, duration_us, verdict);
    let (client_addr, server_addr) = match client {
        Some(s) => (address(&s.peer), address(&s.local)),
        None => (address(&Endpoint::default()), address(&Endpoint::default())),
    };
    let request = ex
        .request
        .as_ref()
        .or_else(|| ex.attempts.iter().find_map(|a| a.upstream_request.as_ref()))
        .map(|r| Request {
            method: r.method.clone(),
            target: r.target.clone(),
            version: r.version.clone(),
        });
    ExchangeRecord {
        time: wall_time(ex.start, realtime_offset_ns),
        proxy: Proxy {
            pid: ex.pid,
            comm: comm.to_owned(),
        },
        client: client_addr,
        server: server_addr,
        request,
        response: Response { status, from },
        verdict,
        origin,
        upstreams,
        duration_us,
        hint: if ex.in_flight {
            Some(in_flight_hint(ex, duration_us))
        } else {
            hint(verdict, &facts)
        },
        complete: !ex.incomplete && !ex.inferred && client.is_some(),
    }
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
        Some(a) => format!("waiting for a response header from {}", a.peer),
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
) -> HintFacts {
    // The deciding attempt: the last one (nginx reports the last upstream tried).
    let last = ex.attempts.last();
    let outcome = outcomes.last().copied();
    let after_us = last.and_then(|a| {
        let from = a.request_sent.or(a.connect_start)?;
        let to = match outcome? {
            Outcome::Reset | Outcome::Closed | Outcome::Truncated => a.upstream_failed()?,
            Outcome::Timeout | Outcome::ConnectTimeout => a.local_close.or(a.connect_failed)?,
            _ => return None,
        };
        Some(us(from, to))
    });
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
        after_us,
        waited_us,
        duration_us,
        errno: last.and_then(|a| a.error.map(|(e, _)| e)),
    }
}
