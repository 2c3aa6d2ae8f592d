//! What the first line of a message says. The probes copy at most the first line
//! of a message (`LINE_CAP` bytes, cut at the first `\n`); this module turns it
//! into a request line, a status line, or "something else", and keeps nothing else:
//! no raw bytes survive decoding.
use std::borrow::Cow;

use compact_str::CompactString;

use serde::{Deserialize, Serialize};

/// The first line of a message, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Head {
    /// No bytes were captured (e.g. `sendfile`, or an unreadable buffer).
    #[default]
    None,
    Request(RequestLine),
    Status(StatusLine),
    /// The start of a gateway protocol's response (a FastCGI record) whose
    /// status these bytes do not show: PHP-FPM sends `Status:` only for codes
    /// other than 200, and the application's warnings (`FCGI_STDERR`) may come
    /// first. The proxy's own status then tells what it forwarded.
    ResponseUnread,
    /// Bytes that are neither a request line nor a status line. Only their length
    /// and whether they look binary are kept.
    Other {
        len: u16,
        binary: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// Static text for the common methods (no allocation per request).
    pub method: Cow<'static, str>,
    /// Request target as sent, with the query string replaced by `?…` unless the
    /// decoder was told to keep it.
    pub target: CompactString,
    /// `HTTP/1.0`, `HTTP/1.1`, or `HTTP/0.9` for a request line without a version.
    pub version: Cow<'static, str>,
    /// The line was longer than the capture: `target` is cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// A hash of the query string `target` elides (0: none elided): requests
    /// for one path that differ only in their queries still tell apart when
    /// the proxy's request is matched to its client's by line.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub query: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusLine {
    pub version: Cow<'static, str>,
    pub code: u16,
}

/// How much of the target to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryPolicy {
    /// Replace the query string with `?…` (the default: queries carry tokens).
    #[default]
    Elide,
    Keep,
}

/// Marker that replaces an elided query string, and ends a cut target.
pub const ELIDED: &str = "…";

/// Parses a captured first line. `line` holds at most the first line (with its
/// `\n` if it fit); `complete` says whether the whole line was captured.
pub fn parse(line: &[u8], query: QueryPolicy) -> Head {
    if line.is_empty() {
        return Head::None;
    }
    if line.starts_with(b"HTTP/") {
        return parse_status(line);
    }
    if let Some(head) = parse_gateway_response(line) {
        return head;
    }
    parse_request(line, query).unwrap_or_else(|| other(line))
}

/// A response in one of the protocols nginx speaks to application servers
/// besides HTTP: FastCGI (`fastcgi_pass`: records of 8-byte headers, the
/// response's CGI header lines inside `FCGI_STDOUT`) and SCGI (`scgi_pass`: the
/// CGI header lines themselves). A CGI response names its status in a `Status:`
/// header, which the common servers write first (PHP-FPM, Go's `net/http/fcgi`,
/// flup) and PHP-FPM leaves out for a 200.
fn parse_gateway_response(line: &[u8]) -> Option<Head> {
    if let Some(code) = cgi_status(line) {
        return Some(Head::Status(StatusLine {
            version: Cow::Borrowed("CGI"),
            code,
        }));
    }
    // FastCGI version 1; a record type that opens a response (`FCGI_END_REQUEST`,
    // `FCGI_STDOUT`, `FCGI_STDERR`); the reserved byte, when captured, zero. A
    // header byte may be a `\n` (a content length of 10 mod 256), which ends the
    // capture early: such a record is still a response, its status unread.
    const END_REQUEST: u8 = 3;
    const STDOUT: u8 = 6;
    const STDERR: u8 = 7;
    let [1, kind, ..] = *line else {
        return None;
    };
    if !matches!(kind, END_REQUEST | STDOUT | STDERR) || line.get(7).is_some_and(|&r| r != 0) {
        return None;
    }
    let code = (kind == STDOUT)
        .then(|| line.get(8..).and_then(cgi_status))
        .flatten();
    Some(code.map_or(Head::ResponseUnread, |code| {
        Head::Status(StatusLine {
            version: Cow::Borrowed("FastCGI"),
            code,
        })
    }))
}

/// The code of a CGI `Status: NNN reason` header line.
fn cgi_status(line: &[u8]) -> Option<u16> {
    const NAME: &[u8] = b"status:";
    if !line.get(..NAME.len())?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let value = line[NAME.len()..].trim_ascii_start();
    let digits = value.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || value.get(3).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=999).contains(&code).then_some(code)
}

fn other(line: &[u8]) -> Head {
    let binary = line
        .iter()
        .any(|&b| b < 0x09 || (b > 0x0d && b < 0x20) || b == 0x7f);
    Head::Other {
        len: line.len().min(u16::MAX as usize) as u16,
        binary,
    }
}

fn parse_status(line: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut response = httparse::Response::new(&mut headers);
    // With only the first line, httparse stops at the headers (Partial or a
    // TooManyHeaders error) after filling version and code.
    let _ = response.parse(line);
    match (response.version, response.code) {
        (Some(minor), Some(code)) => Head::Status(StatusLine {
            version: match minor {
                0 => Cow::Borrowed("HTTP/1.0"),
                1 => Cow::Borrowed("HTTP/1.1"),
                _ => Cow::Owned(format!("HTTP/1.{minor}")),
            },
            code,
        }),
        _ => other(line),
    }
}

fn parse_request(line: &[u8], query: QueryPolicy) -> Option<Head> {
    let complete = line.ends_with(b"\n");
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut parts = text.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let method = parts.next()?;
    if !method.iter().all(|&b| is_token(b)) || method.len() > 32 {
        return None;
    }
    let target = parts.next();
    let version = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let Some(target) = target else {
        // "GET" alone, or a method cut by the capture.
        return None;
    };
    if !target.iter().all(|&b| b > 0x20 && b != 0x7f) {
        return None;
    }
    let version = match version {
        Some(b"HTTP/1.1") => "HTTP/1.1",
        Some(b"HTTP/1.0") => "HTTP/1.0",
        Some(v) if v.starts_with(b"HTTP/") && v.len() == 8 => {
            // HTTP/2.0 or 3.0 on an HTTP/1 connection: keep it as sent.
            let version = Cow::Owned(std::str::from_utf8(v).ok()?.to_owned());
            return Some(request(method, target, version, false, query));
        }
        Some(_) if !complete => {
            // The version was cut by the capture: the target is whole.
            return Some(request(method, target, "HTTP/1.1", true, query));
        }
        Some(_) => return None,
        None if complete => "HTTP/0.9",
        // Cut inside the target.
        None => return Some(request(method, target, "HTTP/1.1", true, query)),
    };
    Some(request(method, target, version, false, query))
}

fn request(
    method: &[u8],
    target: &[u8],
    version: impl Into<Cow<'static, str>>,
    truncated: bool,
    query: QueryPolicy,
) -> Head {
    // Inline up to 24 bytes: most targets cost no allocation per request.
    let text = String::from_utf8_lossy(target);
    let query_at = match query {
        QueryPolicy::Elide => text.find('?'),
        QueryPolicy::Keep => None,
    };
    let mut target = CompactString::new(query_at.map_or(&*text, |q| &text[..=q]));
    let mut query_hash = 0;
    if let Some(q) = query_at {
        target.push_str(ELIDED);
        query_hash = hash32(&text.as_bytes()[q + 1..]);
    }
    if truncated && !target.ends_with(ELIDED) {
        target.push_str(ELIDED);
    }
    Head::Request(RequestLine {
        method: method_text(method),
        target,
        version: version.into(),
        truncated,
        query: query_hash,
    })
}

/// A non-zero 32-bit hash (FNV-1a: stable across builds and platforms, since
/// recordings keep it).
fn hash32(bytes: &[u8]) -> u32 {
    let h = bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    h.max(1)
}

/// The method as text: static for the registered methods, owned otherwise.
fn method_text(method: &[u8]) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().find(|m| m.as_bytes() == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(String::from_utf8_lossy(method).into_owned()),
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: &'static str, t: &str, v: &'static str) -> Head {
        Head::Request(RequestLine {
            method: m.into(),
            target: t.into(),
            version: v.into(),
            truncated: false,
            query: 0,
        })
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse(b"GET /a HTTP/1.1\r\n", QueryPolicy::Elide),
            req("GET", "/a", "HTTP/1.1")
        );
        let elided = |line: &[u8]| match parse(line, QueryPolicy::Elide) {
            Head::Request(r) => r,
            other => panic!("{other:?}"),
        };
        let (a, b) = (
            elided(b"POST /x?token=s3cret HTTP/1.0\r\n"),
            elided(b"POST /x?token=other HTTP/1.0\r\n"),
        );
        assert_eq!((&*a.target, &*b.target), ("/x?…", "/x?…"));
        // Told apart by their queries' hashes, none kept in the text.
        assert!(a.query != b.query && a.query != 0 && b.query != 0);
        assert_eq!(
            parse(b"POST /x?token=s3cret HTTP/1.0\r\n", QueryPolicy::Keep),
            req("POST", "/x?token=s3cret", "HTTP/1.0")
        );
        assert_eq!(
            parse(b"GET /old\r\n", QueryPolicy::Elide),
            req("GET", "/old", "HTTP/0.9")
        );
    }

    #[test]
    fn cut_request_line_is_marked() {
        let Head::Request(r) = parse(b"GET /very/long/pa", QueryPolicy::Elide) else {
            panic!()
        };
        assert!(r.truncated);
        assert_eq!(r.target, "/very/long/pa…");
        let Head::Request(r) = parse(b"GET /a?b=c HTT", QueryPolicy::Elide) else {
            panic!()
        };
        assert_eq!(r.target, "/a?…");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse(b"HTTP/1.1 502 Bad Gateway\r\n", QueryPolicy::Elide),
            Head::Status(StatusLine {
                version: "HTTP/1.1".into(),
                code: 502
            })
        );
        assert_eq!(
            parse(b"HTTP/1.0 200\r\n", QueryPolicy::Elide),
            Head::Status(StatusLine {
                version: "HTTP/1.0".into(),
                code: 200
            })
        );
    }

    #[test]
    fn garbage_keeps_no_bytes() {
        assert_eq!(
            parse(b"HELLO WORLD FOO BAR\r\n", QueryPolicy::Elide),
            Head::Other {
                len: 21,
                binary: false
            }
        );
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01", QueryPolicy::Elide),
            Head::Other {
                len: 6,
                binary: true
            }
        );
        assert_eq!(
            parse(b"HTTP/9 abc\r\n", QueryPolicy::Elide),
            Head::Other {
                len: 12,
                binary: false
            }
        );
        assert_eq!(parse(b"", QueryPolicy::Elide), Head::None);
    }

    fn status(version: &'static str, code: u16) -> Head {
        Head::Status(StatusLine {
            version: version.into(),
            code,
        })
    }

    #[test]
    fn fastcgi_responses() {
        let p = |b: &[u8]| parse(b, QueryPolicy::Elide);
        // FCGI_STDOUT, request 1, 47 bytes, 1 byte of padding: PHP-FPM's 500.
        let stdout = b"\x01\x06\x00\x01\x00\x2f\x01\x00";
        assert_eq!(
            p(&[&stdout[..], b"Status: 500 Internal Server Error\r\n"].concat()),
            status("FastCGI", 500)
        );
        assert_eq!(
            p(&[&stdout[..], b"status:404\r\n"].concat()),
            status("FastCGI", 404)
        );
        // PHP-FPM's 200 has no Status header; warnings come first on stderr; a
        // content length of 10 mod 256 puts a `\n` inside the header.
        for unread in [
            &[&stdout[..], b"X-Powered-By: PHP/8.2.7\r\n"].concat()[..],
            b"\x01\x07\x00\x01\x00\x90\x00\x00PHP message: PHP Deprecated:  x",
            b"\x01\x06\x00\x01\x00\x0a",
            b"\x01\x03\x00\x01\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            &[&stdout[..], b"Status: 2000 X\r\n"].concat()[..],
        ] {
            assert_eq!(p(unread), Head::ResponseUnread, "{unread:?}");
        }
        // FastCGI's request records (nginx's side) and other bytes that start
        // with 1 are not responses.
        for other in [
            &b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x01"[..],
            b"\x01\x06\x00\x01\x00\x2f\x01\x05Status: 200 OK\r\n",
        ] {
            assert!(
                matches!(p(other), Head::Other { binary: true, .. }),
                "{other:?}"
            );
        }
    }

    #[test]
    fn scgi_responses() {
        assert_eq!(
            parse(b"Status: 503 Service Unavailable\r\n", QueryPolicy::Elide),
            status("CGI", 503)
        );
        assert!(matches!(
            parse(b"Status: OK\r\n", QueryPolicy::Elide),
            Head::Other { .. }
        ));
    }
}
