//! What happened, in the output contract's words: the verdict of an exchange and
//! the outcome of each upstream attempt. The rules are the verdict table in
//! `docs/verdicts.md`; the evidence is what the kernel showed (FIN, RST, socket
//! errors, who closed which socket, which first line came back), never the status
//! code alone.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    ClientError,
    UpstreamError,
    ClientAbort,
    ClientReset,
    UpstreamRefused,
    UpstreamReset,
    UpstreamClosed,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamConnectTimeout,
    UpstreamTruncated,
    ProxyError,
}

impl Verdict {
    pub const ALL: [Verdict; 13] = [
        Self::Ok,
        Self::ClientError,
        Self::UpstreamError,
        Self::ClientAbort,
        Self::ClientReset,
        Self::UpstreamRefused,
        Self::UpstreamReset,
        Self::UpstreamClosed,
        Self::UpstreamInvalid,
        Self::UpstreamTimeout,
        Self::UpstreamConnectTimeout,
        Self::UpstreamTruncated,
        Self::ProxyError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::ClientAbort => "client_abort",
            Self::ClientReset => "client_reset",
            Self::UpstreamRefused => "upstream_refused",
            Self::UpstreamReset => "upstream_reset",
            Self::UpstreamClosed => "upstream_closed",
            Self::UpstreamInvalid => "upstream_invalid",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamConnectTimeout => "upstream_connect_timeout",
            Self::UpstreamTruncated => "upstream_truncated",
            Self::ProxyError => "proxy_error",
        }
    }

    /// Whether the exchange failed (anything but `ok`).
    pub fn is_failure(self) -> bool {
        self != Self::Ok
    }
}

/// How one upstream attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A valid response head came back.
    Response,
    /// The connect was refused (RST to the SYN, or ECONNREFUSED).
    Refused,
    /// The upstream sent RST before a complete response head.
    Reset,
    /// The upstream closed (FIN) before a complete response head.
    Closed,
    /// The upstream's bytes are not an HTTP response head.
    Invalid,
    /// Request sent, no response head before the proxy gave up.
    Timeout,
    /// The connect never completed before the proxy gave up.
    ConnectTimeout,
    /// The head came back, then the upstream failed mid-body.
    Truncated,
    /// The proxy dropped the attempt: the client left (or its request body
    /// stopped coming), or the proxy's process died waiting on it.
    Aborted,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Self::Response,
        Self::Refused,
        Self::Reset,
        Self::Closed,
        Self::Invalid,
        Self::Timeout,
        Self::ConnectTimeout,
        Self::Truncated,
        Self::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Closed => "closed",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::Truncated => "truncated",
            Self::Aborted => "aborted",
        }
    }
}

/// Whose behaviour decided the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Client,
    Proxy,
    Upstream,
}

impl Origin {
    /// The name in records (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Proxy => "proxy",
            Self::Upstream => "upstream",
        }
    }
}

/// Who wrote the response status the client got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFrom {
    Proxy,
    Upstream,
}

impl ResponseFrom {
    /// The name in records (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Upstream => "upstream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, Verdict};

    /// Counters index by `verdict as usize`: `ALL` must list every verdict in
    /// declaration order.
    #[test]
    fn all_is_in_discriminant_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
        }
    }

    /// `Outcome::ALL` lists every outcome once, in declaration order (the JSON
    /// writer's test walks it).
    #[test]
    fn outcome_all_is_complete_and_in_order() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        // A new outcome breaks this match at compile time: list it in ALL too.
        match Outcome::Aborted {
            Outcome::Response
            | Outcome::Refused
            | Outcome::Reset
            | Outcome::Closed
            | Outcome::Invalid
            | Outcome::Timeout
            | Outcome::ConnectTimeout
            | Outcome::Truncated
            | Outcome::Aborted => {}
        }
        assert_eq!(Outcome::ALL.len(), Outcome::Aborted as usize + 1);
    }
}
