//! Recordings: the decoded event stream as JSON lines, after a header line.
//! `classify --record FILE` writes one; `classify replay FILE` and the engine's
//! fixture tests read them. Recordings hold decoded events only (parsed first
//! lines, never captured bytes).
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::event::Event;

pub const FORMAT: &str = "classify-recording";
pub const VERSION: u32 = 1;

/// First line of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// Wall clock = event timestamp + this.
    pub realtime_offset_ns: i64,
    /// Whether query strings were kept when the events were decoded.
    #[serde(default)]
    pub keep_query: bool,
    /// Processes named at start (pid, comm).
    #[serde(default)]
    pub processes: Vec<(u32, String)>,
}

impl Header {
    pub fn new(realtime_offset_ns: i64, keep_query: bool, processes: Vec<(u32, String)>) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            realtime_offset_ns,
            keep_query,
            processes,
        }
    }
}

/// Why a recording cannot be read.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Empty,
    BadHeader(String),
    /// Line `line` (1-based) is not an event; `last` is true when it is the final,
    /// unterminated line (the recording was cut short).
    BadEvent {
        line: usize,
        last: bool,
        reason: String,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading the recording failed: {e}"),
            Self::Empty => write!(f, "the recording is empty"),
            Self::BadHeader(r) => write!(f, "not a classify recording (bad first line: {r})"),
            Self::BadEvent {
                line, last: true, ..
            } => {
                write!(f, "the recording is truncated: line {line} is cut short")
            }
            Self::BadEvent { line, reason, .. } => {
                write!(f, "the recording is corrupt at line {line}: {reason}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Self> {
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Self { out })
    }

    pub fn write(&mut self, ev: &Event) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads a recording's header and returns an iterator over its events.
pub fn read<R: BufRead>(mut input: R) -> Result<(Header, Events<R>), ReadError> {
    let mut first = Vec::new();
    if input.read_until(b'\n', &mut first).map_err(ReadError::Io)? == 0 {
        return Err(ReadError::Empty);
    }
    let first =
        std::str::from_utf8(&first).map_err(|_| ReadError::BadHeader("not UTF-8".into()))?;
    let header: Header =
        serde_json::from_str(first.trim_end()).map_err(|e| ReadError::BadHeader(e.to_string()))?;
    if header.format != FORMAT {
        return Err(ReadError::BadHeader(format!(
            "format is {:?}",
            header.format
        )));
    }
    if header.version != VERSION {
        return Err(ReadError::BadHeader(format!(
            "version {} is not supported (expected {VERSION})",
            header.version
        )));
    }
    Ok((
        header,
        Events {
            input,
            line: 1,
            buf: Vec::new(),
        },
    ))
}

pub struct Events<R> {
    input: R,
    line: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> Iterator for Events<R> {
    type Item = Result<Event, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(ReadError::Io(e))),
            }
            self.line += 1;
            let last = !self.buf.ends_with(b"\n");
            let line = self.line;
            let bad = |reason: String| ReadError::BadEvent { line, last, reason };
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t.trim_end(),
                Err(e) => return Some(Err(bad(format!("not UTF-8 ({e})")))),
            };
            if text.is_empty() {
                continue;
            }
            return Some(serde_json::from_str(text).map_err(|e| bad(e.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn recording() -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w =
            Writer::new(&mut buf, &Header::new(5, false, vec![(1, "nginx".into())])).unwrap();
        w.write(&Event {
            ts: 1,
            pid: 1,
            tid: 1,
            kind: EventKind::Tick,
        })
        .unwrap();
        w.write(&Event {
            ts: 2,
            pid: 1,
            tid: 1,
            kind: EventKind::Lost {
                events: 3,
                sockets: 0,
                since: None,
            },
        })
        .unwrap();
        buf
    }

    #[test]
    fn round_trip() {
        let buf = recording();
        let (h, events) = read(&buf[..]).unwrap();
        assert_eq!(h.realtime_offset_ns, 5);
        assert_eq!(events.map(Result::unwrap).count(), 2);
    }

    #[test]
    fn truncated_and_corrupt_recordings_are_clear_errors() {
        let buf = recording();
        let cut = &buf[..buf.len() - 5];
        let (_, events) = read(cut).unwrap();
        let err = events.last().unwrap().unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        let mut binary = recording();
        binary.extend_from_slice(b"\x00\xff\n");
        let (_, events) = read(&binary[..]).unwrap();
        let err = events.last().unwrap().unwrap_err();
        assert!(err.to_string().contains("corrupt at line 4"), "{err}");
        assert!(matches!(
            read(&b"\xff\xfe\n"[..]),
            Err(ReadError::BadHeader(_))
        ));

        let mut bad = recording();
        bad.extend_from_slice(b"{\"ts\":\"x\"}\n");
        let (_, events) = read(&bad[..]).unwrap();
        let err = events.last().unwrap().unwrap_err();
        assert!(err.to_string().contains("corrupt at line 4"), "{err}");

        assert!(matches!(
            read(&b"hello\n"[..]),
            Err(ReadError::BadHeader(_))
        ));
        assert!(matches!(read(&b""[..]), Err(ReadError::Empty)));
    }
}
