//! One or two sentences for the on-call engineer: what the verdict means, the
//! evidence behind it, and what to check first. Written from the status-code
//! references in `../shared/seeds/` in our own words.
use crate::verdict::{Outcome, Verdict};

/// The facts a hint may quote.
#[derive(Debug, Clone, Default)]
pub struct HintFacts {
    pub status: Option<u16>,
    /// The deciding upstream ("10.0.3.7:8080"), if any.
    pub upstream: Option<String>,
    pub attempts: usize,
    /// Outcome of the deciding attempt.
    pub outcome: Option<Outcome>,
    /// The status line the deciding attempt sent back, if it sent one.
    pub upstream_status: Option<u16>,
    /// The status written to the client was the upstream's, forwarded.
    pub forwarded: bool,
    /// Time from the request sent upstream (or the connect) to the deciding event.
    pub after_us: Option<u64>,
    /// The deciding attempt's request was sent (false: the connection failed
    /// before it, e.g. in a TLS handshake).
    pub request_sent: bool,
    /// The deciding attempt used a kept-alive connection from the proxy's pool
    /// (no connect of its own).
    pub pooled: bool,
    /// The client stopped reading the response: from its first blocked send to
    /// the proxy giving up.
    pub reader_stalled_us: Option<u64>,
    /// How long the upstream had been waited for when the client left.
    pub waited_us: Option<u64>,
    /// How long the side the proxy gave up on had been silent: an upstream
    /// mid-reply, or a client whose request never came whole.
    pub silent_us: Option<u64>,
    /// The exchange's duration.
    pub duration_us: u64,
    /// Upstream errno behind a failed connect, if known.
    pub errno: Option<i32>,
    /// The proxy wrote bytes to the client that did not start with a status
    /// line.
    pub response_unreadable: bool,
}

/// Common idle and request timeouts of load balancers and proxies (seconds).
const COMMON_TIMEOUTS_S: [u64; 6] = [30, 60, 75, 90, 120, 300];

/// "near 60 s" when a duration sits within 2 % (at least 0.25 s) of a common timeout.
fn near_common_timeout(us: u64) -> Option<u64> {
    COMMON_TIMEOUTS_S.into_iter().find(|&t| {
        let t_us = t * 1_000_000;
        let slack = (t_us / 50).max(250_000);
        us.abs_diff(t_us) <= slack
    })
}

/// A 502 the proxy wrote without an attempt this long after the request came
/// waited on something: a resolver, not a group of failed servers.
const RESOLVER_WAIT_US: u64 = 50_000;

pub fn ms(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.0} s", us as f64 / 1e6)
    } else if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else {
        format!("{:.1} ms", us as f64 / 1e3)
    }
}

fn timeout_note(us: Option<u64>) -> String {
    match us.and_then(near_common_timeout) {
        Some(t) => format!(
            " It happened about {t} s in, a common idle or request timeout: look for a load balancer, firewall or keep-alive setting that cuts connections at {t} s."
        ),
        None => String::new(),
    }
}

fn client_4xx(status: u16) -> &'static str {
    match status {
        400 => "the request was malformed; check for a recent client deploy or a stricter validation on the server",
        401 => "the caller is not authenticated; check the identity provider and token expiry",
        403 => "the caller is authenticated but not allowed; check recent permission or policy changes",
        404 => "no such route or resource; check routing and ingress rules after recent changes",
        405 => "the route exists but not for this method; check CORS preflight (OPTIONS) handling",
        408 => "the client was too slow to send its request; check client networks and idle timeouts",
        409 => "a concurrent or duplicate write; check retries that reuse one idempotency key",
        413 => "the body exceeds a size limit; check client_max_body_size and ingress body-size settings",
        414 => "the URI is too long; the caller probably puts a large payload in the query string",
        429 => "a rate limit rejected the caller; check what increased the request rate and whether Retry-After is honoured",
        431 => "request headers are too large; look for oversized cookies or session headers",
        _ => "the request was rejected as sent; check what changed on the caller's side",
    }
}

fn upstream_5xx(status: u16) -> &'static str {
    match status {
        500 => "an unhandled error in the application: read the failing instance's logs for the stack trace",
        501 => "the route is not implemented there: check whether a deploy exposed an unfinished route",
        502 => "it is itself a gateway whose own backend failed: follow the chain one hop further",
        503 => "it says it cannot serve right now: check its readiness, circuit breakers and capacity",
        504 => "it is itself a gateway that timed out on its own backend: follow the chain one hop further",
        507 => "it ran out of storage: check the volume it writes to",
        _ => "look at that service's own logs and recent deploys",
    }
}

/// What the proxy wrote, for a sentence: its status, or that it wrote none.
fn written(status: Option<u16>) -> String {
    status.map_or("no response".to_owned(), |s| s.to_string())
}

/// " (after N attempts)" when the proxy tried more than one.
fn retried(attempts: usize) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// The hint of an `ok` exchange the proxy answered itself after its upstream
/// failed: a stale copy from its cache (`proxy_cache_use_stale`) or an
/// `error_page` answering 2xx or 3xx. The client was served; the upstream's
/// owner still has something to act on. `None` when the deciding attempt did
/// not fail.
pub fn covered_failure(f: &HintFacts) -> Option<String> {
    let up = f.upstream.as_deref()?;
    let what = match (f.outcome?, f.upstream_status) {
        (Outcome::Refused, _) => "refused the connection".to_owned(),
        (Outcome::Reset, _) => "reset the connection".to_owned(),
        (Outcome::Closed, _) => "closed the connection before a whole response header".to_owned(),
        (Outcome::Invalid, _) => "sent a response header the proxy rejected".to_owned(),
        (Outcome::Timeout, _) => "did not answer in time".to_owned(),
        (Outcome::ConnectTimeout, _) => "did not accept the connection in time".to_owned(),
        (Outcome::Truncated, _) => "cut its response short".to_owned(),
        (Outcome::Response, Some(s)) if s >= 500 => format!("answered {s}"),
        _ => return None,
    };
    let retried = retried(f.attempts);
    Some(format!(
        "The client got {} from the proxy itself because {up} {what}{retried}: the proxy answered from its cache (a stale copy: proxy_cache_use_stale; nginx logs $upstream_cache_status STALE) or with an error_page. Clients are served for now, but that upstream is failing: check it.",
        written(f.status)
    ))
}

/// The hint for an exchange, or `None` when there is nothing to act on.
pub fn hint(verdict: Verdict, f: &HintFacts) -> Option<String> {
    let up = f.upstream.as_deref().unwrap_or("the upstream");
    let after = f
        .after_us
        .map(|us| {
            if f.request_sent {
                format!(" {} after the request was sent", ms(us))
            } else {
                format!(" {} after connecting, before any request was sent (a TLS handshake, if the upstream speaks TLS)", ms(us))
            }
        })
        .unwrap_or_default();
    let retried = retried(f.attempts);
    Some(match verdict {
        Verdict::Ok => return None,
        Verdict::ClientError => match f.status {
            // No response at all: the proxy closed a connection whose request
            // never came whole.
            None => format!(
                "The client did not finish sending its request{}, and the proxy closed the connection without a response (nginx logs 408 for a header or body that timed out, client_header_timeout and client_body_timeout). Check slow or stalled clients and what sits between them and the proxy.",
                f.silent_us.map(|us| format!(" ({} without a byte from it)", ms(us))).unwrap_or_default()
            ),
            Some(status) => match (f.upstream.as_deref(), f.upstream_status) {
                (Some(up), Some(theirs)) if !f.forwarded && theirs != status => format!(
                    "{up} answered {theirs}, and the proxy wrote {status} in its place (proxy_intercept_errors with error_page, or an error page that failed itself): {}.",
                    client_4xx(status)
                ),
                (Some(up), Some(_)) => format!("{up} answered {status}: {}.", client_4xx(status)),
                (Some(up), None) => format!(
                    "The proxy answered {status} itself before {up} answered, and dropped the request it was passing on: {}.",
                    client_4xx(status)
                ),
                (None, _) => format!("The proxy answered {status} itself, without asking an upstream: {}.", client_4xx(status)),
            },
        },
        // Not forwarded: a status the proxy retries on, with no server left.
        Verdict::UpstreamError if !f.forwarded && f.upstream_status.is_some() => {
            let theirs = f.upstream_status.unwrap_or(503);
            let status = f.status.unwrap_or(502);
            format!(
                "{up} answered {theirs}, a status the proxy retries on (nginx: proxy_next_upstream http_{theirs}), and no other server of its upstream group was left to try, so the proxy wrote {status} itself (nginx logs $upstream_status \"{theirs}, {status}\" and \"no live upstreams\" in its error log). {} first: {}; then why the group's other servers are down or marked failed.",
                up.to_owned(),
                if theirs >= 500 { upstream_5xx(theirs) } else { "its answer is the client's error there, check the request" }
            )
        }
        Verdict::UpstreamError => {
            let status = f.status.unwrap_or(500);
            format!("{up} answered {status} itself and the proxy forwarded it unchanged: {}.", upstream_5xx(status))
        }
        Verdict::ClientAbort if f.reader_stalled_us.is_some() => format!(
            "The client stopped reading the {} response: the proxy's sends found its receive window full, and {} later the proxy gave up and closed the connection (nginx: send_timeout, \"client timed out (110: Connection timed out) while sending to client\"; reset_timedout_connection sends RST). nginx logs {} (the header was out); the client got part of the body. Check the client: a hung or overloaded reader, or a path that stalls.",
            f.status.map_or("".to_owned(), |s| s.to_string()),
            ms(f.reader_stalled_us.unwrap_or(0)),
            f.status.map_or("the status".to_owned(), |s| s.to_string()),
        ),
        Verdict::ClientAbort => {
            let waited = f.waited_us.unwrap_or(f.duration_us);
            let slow = if f.upstream.is_some() && waited >= 1_000_000 {
                format!(
                    " The client gave up after waiting {} for {up}: a slow upstream, not a client problem; check its latency.",
                    ms(waited)
                )
            } else if f.upstream.is_some() {
                format!(" {up} had been waited for {}.", ms(waited))
            } else {
                String::new()
            };
            match f.status {
                Some(status) => format!(
                    "The client closed the connection (FIN) after the {status} header but before the body was complete, and the proxy dropped {up}; nginx logs {status} (the header was out) with \"client prematurely closed connection\" in its error log. Check client timeouts and whether clients give up on long or slow downloads.{}",
                    timeout_note(Some(f.duration_us))
                ),
                None => format!(
                    "The client closed the connection (FIN) before any response was written; {LOGGED_AS_499}.{slow}{}",
                    timeout_note(Some(f.duration_us))
                ),
            }
        }
        Verdict::ClientReset => {
            let logged = match f.status {
                Some(status) => format!("after the {status} header, before the client had the whole body; nginx logs {status} (the header was out)"),
                None => format!("before any response was written; {LOGGED_AS_499}"),
            };
            format!(
                "The client reset the connection (RST) {logged}. Check client timeouts and any middlebox between the client and the proxy.{}",
                timeout_note(Some(f.duration_us))
            )
        }
        Verdict::UpstreamRefused => {
            let (why, check) = match f.errno {
                Some(113) => ("no route to host", NOTHING_LISTENS),
                Some(101) => ("network unreachable", NOTHING_LISTENS),
                // An ICMP error whose code the kernel kept for the proxy.
                Some(0) => (
                    "an ICMP error came back at once",
                    "nothing listens there (port unreachable), or no route leads to the host, or a firewall rejects the connection; the proxy's error log names which (nginx: \"connect() failed (111: Connection refused)\" or \"(113: No route to host)\"). Check that the service is running on that host and port, the host's reachability from the proxy, and REJECT rules between them.",
                ),
                Some(2) => ("no such socket file", NOTHING_LISTENS),
                // The two unix socket causes: the server is alive but does not
                // keep up, or the proxy's user may not open the socket file.
                Some(11) => (
                    "its accept queue is full",
                    "the server does not accept connections as fast as they come. Check its worker count (PHP-FPM's pm.max_children), what its workers wait on, and its listen backlog.",
                ),
                Some(13) => (
                    "permission denied",
                    "the proxy's user may not open the socket file. Check the socket's owner, group and mode (PHP-FPM's listen.owner, listen.group, listen.mode) against the user the proxy's workers run as.",
                ),
                _ => ("connection refused", NOTHING_LISTENS),
            };
            format!("Connecting to {up} failed ({why}){retried}: {check}")
        }
        Verdict::UpstreamReset if f.pooled && !f.request_sent => format!(
            "{up} had reset this kept-alive connection while it idled in the proxy's pool; the proxy found out when it took the connection for this request, before sending it (nginx: \"connect() failed (104: Connection reset by peer) while connecting to upstream\"){retried}. Check the upstream's keep-alive timeout: the proxy's own (keepalive_timeout in the upstream block) must be shorter, and nothing between them may drop idle connections sooner."
        ),
        Verdict::UpstreamReset => format!(
            "{up} reset the connection{after}, before sending a complete response header{retried}: check it for crashes, OOM kills or restarts.{}",
            timeout_note(f.after_us)
        ),
        Verdict::UpstreamClosed => format!(
            "{up} closed the connection{after} without a response header{retried}: check it for crashes or restarts, and keep-alive timeouts shorter than the proxy's.{}",
            timeout_note(f.after_us)
        ),
        Verdict::UpstreamInvalid if !f.request_sent && f.outcome == Some(Outcome::Invalid) => format!(
            "The proxy closed its new connection to {up}{} without sending the request, and wrote {}{retried}: it rejected the upstream. Over TLS this is the handshake: a certificate that fails verification (untrusted, expired, or for another name: proxy_ssl_verify, proxy_ssl_trusted_certificate, proxy_ssl_name) or no protocol or cipher in common. The proxy's error log names it (\"upstream SSL certificate verify error\", \"SSL_do_handshake() failed\").",
            f.after_us.map(|us| format!(" {} after connecting", ms(us))).unwrap_or_default(),
            written(f.status),
        ),
        Verdict::UpstreamInvalid => match f.upstream_status {
            Some(theirs) => format!(
                "{up} sent a status line ({theirs}) and then a header the proxy rejected{retried}: larger than its header buffer (nginx: \"upstream sent too big header\", proxy_buffer_size) or a malformed header line (\"upstream sent invalid header\"). Check the size of the headers and cookies it sets, and the proxy's error log."
            ),
            None => format!(
                "{up} answered bytes that are not an HTTP response header{retried}: check the protocol and port (TLS or HTTP/2 on a plain HTTP/1 port, a non-HTTP service)."
            ),
        },
        Verdict::UpstreamTimeout => format!(
            "{up} accepted the {} but sent no response header{after}; the proxy gave up ({}). Check the upstream's latency and what it waits on (databases, downstream calls), and the proxy's read timeout.{}",
            if f.request_sent { "request" } else { "connection" },
            written(f.status),
            timeout_note(f.after_us)
        ),
        Verdict::UpstreamConnectTimeout => format!(
            "Connecting to {up} never completed{}; the proxy gave up (504). SYNs are dropped on the way: check firewalls, security groups and whether the host is up.",
            f.after_us.map(|us| format!(" in {}", ms(us))).unwrap_or_default()
        ),
        Verdict::UpstreamTruncated => match (f.outcome, f.silent_us) {
            (Some(Outcome::Timeout), Some(silent)) => format!(
                "{up} sent the response header, then went silent mid-body; after {} without a byte the proxy gave up (its read timeout, proxy_read_timeout) and the client got a cut response. Check what the upstream waits on while it streams a body.",
                ms(silent)
            ),
            _ => format!(
                "{up} sent the response header, then failed mid-body{after}; the client got a cut response. Check the upstream for crashes during long responses and for timeouts on large bodies."
            ),
        },
        Verdict::ProxyError if f.response_unreadable => "The proxy answered this HTTP/1 request with bytes that are no HTTP/1 response, which the client cannot read (nginx logs nothing). Most often the listener speaks only HTTP/2 without TLS: `listen ... http2` on a plain port makes nginx before 1.25 answer HTTP/1 clients with HTTP/2 frames. Check the listen directive of this port.".to_owned(),
        Verdict::ProxyError if f.attempts == 0 && matches!(f.status, Some(501 | 505)) => format!(
            "The proxy answered {} itself, without asking an upstream: nginx does so for a request it cannot take, {}. The client's request caused it: check what sends it.",
            f.status.unwrap_or(501),
            if f.status == Some(505) { "an HTTP version it does not speak (HTTP/2.0 or 3.0 on an HTTP/1 request line)" } else { "such as one with a Transfer-Encoding it does not know" }
        ),
        // A resolver's wait (a name in `proxy_pass` with a variable, resolved
        // at request time) is what keeps such a 502 from being immediate:
        // "no live upstreams" takes microseconds.
        Verdict::ProxyError if f.status == Some(502) && f.attempts == 0 && f.duration_us >= RESOLVER_WAIT_US => format!(
            "The proxy wrote 502 itself after {} without trying an upstream: most likely it could not resolve the upstream's name (proxy_pass with a variable and a resolver; nginx: \"could not be resolved\" in its error log, after up to resolver_timeout). Check the resolver's address and reachability, and that the name exists. Otherwise every server of the group was marked failed (\"no live upstreams\").",
            ms(f.duration_us)
        ),
        Verdict::ProxyError if f.status == Some(502) && f.attempts == 0 => "The proxy wrote 502 itself without trying an upstream. nginx does this when every server of the upstream group is marked failed after recent errors (\"no live upstreams\" in its error log; max_fails and fail_timeout): the failures just before this one are the cause. A name in proxy_pass that its resolver could not resolve does it too (\"could not be resolved\"). Otherwise check its configuration (return, error_page).".to_owned(),
        Verdict::ProxyError => {
            let status = written(f.status);
            format!(
                "The proxy produced {status} itself with no upstream failure behind it: check its configuration (return, limits, error_page) and its error log."
            )
        }
    })
}

/// What nginx logs for a client gone before any response.
const LOGGED_AS_499: &str =
    "nginx logs 499 (400 if the client left while still sending its request line, headers or body; the status of a cached answer if it was waiting on a cache lock; with proxy_ignore_client_abort on, the status the upstream went on to answer)";

/// What to check when nothing answered a connect.
const NOTHING_LISTENS: &str = "nothing listens there. Check that the service is running, its port and target port, and recent restarts.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_a_hint_and_ok_has_none() {
        for v in Verdict::ALL {
            let h = hint(
                v,
                &HintFacts {
                    status: Some(502),
                    upstream: Some("10.0.3.7:8080".into()),
                    ..Default::default()
                },
            );
            assert_eq!(h.is_some(), v.is_failure(), "{v:?}");
        }
    }

    #[test]
    fn flags_common_timeouts_and_slow_upstreams() {
        let f = HintFacts {
            after_us: Some(60_100_000),
            upstream: Some("u:1".into()),
            ..Default::default()
        };
        assert!(hint(Verdict::UpstreamReset, &f).unwrap().contains("60 s"));
        let f = HintFacts {
            waited_us: Some(5_000_000),
            duration_us: 5_000_000,
            upstream: Some("u:1".into()),
            ..Default::default()
        };
        assert!(hint(Verdict::ClientAbort, &f)
            .unwrap()
            .contains("slow upstream"));
    }

    #[test]
    fn an_ok_served_over_a_failed_upstream_says_so() {
        let f = |outcome, upstream_status| HintFacts {
            status: Some(200),
            upstream: Some("10.0.3.7:8080".into()),
            attempts: 1,
            outcome: Some(outcome),
            upstream_status,
            ..Default::default()
        };
        let stale = covered_failure(&f(Outcome::Refused, None)).unwrap();
        assert!(
            stale.contains("10.0.3.7:8080 refused") && stale.contains("STALE"),
            "{stale}"
        );
        assert!(covered_failure(&f(Outcome::Response, Some(503)))
            .unwrap()
            .contains("answered 503"));
        // A revalidation (304) or the upstream's own 404 behind an error_page
        // is no failure.
        assert_eq!(covered_failure(&f(Outcome::Response, Some(304))), None);
        assert_eq!(covered_failure(&f(Outcome::Response, Some(404))), None);
    }

    #[test]
    fn a_502_without_an_attempt_names_the_resolver_when_it_waited() {
        let f = |duration_us| HintFacts {
            status: Some(502),
            duration_us,
            ..Default::default()
        };
        let quick = hint(Verdict::ProxyError, &f(60)).unwrap();
        assert!(
            quick.starts_with("The proxy wrote 502 itself without")
                && quick.contains("no live upstreams")
        );
        let waited = hint(Verdict::ProxyError, &f(1_000_000)).unwrap();
        assert!(
            waited.contains("after 1.00 s") && waited.contains("could not resolve"),
            "{waited}"
        );
    }

    #[test]
    fn a_refused_connect_says_which_cause() {
        let refused = |errno| {
            let f = HintFacts {
                errno: Some(errno),
                upstream: Some("unix:/run/php/php8.2-fpm.sock".into()),
                ..Default::default()
            };
            hint(Verdict::UpstreamRefused, &f).unwrap()
        };
        assert!(refused(111).contains("(connection refused): nothing listens"));
        assert!(refused(0).contains("ICMP") && refused(0).contains("113: No route to host"));
        assert!(refused(2).contains("(no such socket file): nothing listens"));
        assert!(
            refused(11).contains("accept queue is full") && refused(11).contains("pm.max_children")
        );
        assert!(refused(13).contains("(permission denied)") && refused(13).contains("listen.mode"));
    }
}
