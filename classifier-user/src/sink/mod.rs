//! Where records go: JSON lines, or a readable live view with a summary table.
mod text;

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal as _, Write},
    os::unix::fs::OpenOptionsExt as _,
};

use anyhow::{Context as _, Result};
use classifier::{
    record::{Record, StatsRecord},
    summary::Summary,
    verdict::Verdict,
};

use crate::cli::{Format, OutputArgs};

/// Creates (or truncates) a file only its owner can read: records and
/// recordings name the proxy's clients.
pub fn create_private(path: &std::path::Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

pub struct Sink {
    format: Format,
    out: Box<dyn Write>,
    /// Records serialized since the last write to `out`: one write per batch, not
    /// one per JSON token.
    buf: Vec<u8>,
    summary: Summary,
    pub exchanges: u64,
    pub incomplete: u64,
    /// Exchanges per verdict, indexed like `Verdict::ALL`.
    by_verdict: [u64; Verdict::ALL.len()],
}

/// Bytes of serialized records gathered before they are written out.
const BATCH_BYTES: usize = 64 * 1024;

impl Sink {
    pub fn open(args: &OutputArgs) -> Result<Self> {
        let (out, terminal): (Box<dyn Write>, bool) = match &args.output {
            Some(path) => {
                let file = create_private(path)?;
                (Box::new(BufWriter::new(file)), false)
            }
            None => (
                Box::new(BufWriter::new(io::stdout())),
                io::stdout().is_terminal(),
            ),
        };
        let format = args
            .format
            .unwrap_or(if terminal { Format::Text } else { Format::Json });
        Ok(Self {
            format,
            out,
            buf: Vec::with_capacity(BATCH_BYTES + 4096),
            summary: Summary::default(),
            exchanges: 0,
            incomplete: 0,
            by_verdict: [0; Verdict::ALL.len()],
        })
    }

    pub fn record(&mut self, r: &Record) -> Result<()> {
        if let Record::Exchange(e) = r {
            self.exchanges += 1;
            if !e.complete {
                self.incomplete += 1;
            }
            self.by_verdict[e.verdict as usize] += 1;
            self.summary.add(e);
        }
        match self.format {
            Format::Json => {
                classifier::json::write_record(&mut self.buf, r)?;
                self.buf.push(b'\n');
                if self.buf.len() >= BATCH_BYTES {
                    self.write_batch()?;
                }
            }
            Format::Text => {
                if let Record::Exchange(e) = r {
                    text::write_exchange(&mut self.out, e)?;
                }
            }
        }
        Ok(())
    }

    /// A periodic stats record (JSON only: the text view shows the summary at the end).
    pub fn stats(&mut self, s: &StatsRecord) -> Result<()> {
        if self.format == Format::Json {
            self.record(&Record::Stats(Box::new(s.clone())))?;
        }
        Ok(())
    }

    /// The end: a final stats record (JSON) or the summary table (text).
    pub fn finish(&mut self, s: &StatsRecord) -> Result<()> {
        match self.format {
            Format::Json => self.stats(s)?,
            Format::Text => text::write_summary(&mut self.out, &self.summary, s)?,
        }
        self.flush()
    }

    pub fn flush(&mut self) -> Result<()> {
        self.write_batch()?;
        self.out.flush()?;
        Ok(())
    }

    fn write_batch(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Exchanges per verdict so far (verdicts seen at least once).
    pub fn verdicts(&self) -> BTreeMap<String, u64> {
        Verdict::ALL
            .iter()
            .zip(self.by_verdict)
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| (v.as_str().to_owned(), n))
            .collect()
    }
}
