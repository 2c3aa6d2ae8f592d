//! The summary table: exchanges grouped by verdict and upstream, with counts and
//! latency percentiles, so the worst upstream stands out.
use std::{collections::BTreeMap, fmt, sync::Arc};

use hdrhistogram::Histogram;

use crate::{record::ExchangeRecord, verdict::Verdict};

/// One row: a verdict and the upstream that decided it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub verdict: Verdict,
    /// Address and port of the last upstream tried; none when no upstream was.
    /// Kept as the record's shared text, so adding a record allocates nothing.
    pub upstream: Option<(Arc<str>, u16)>,
}

/// The upstream column: `address:port`, or `-`.
struct UpstreamText<'a>(&'a Option<(Arc<str>, u16)>);

impl fmt::Display for UpstreamText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((addr, port)) => f.pad(&format!("{addr}:{port}")),
            None => f.pad("-"),
        }
    }
}

pub struct Row {
    pub count: u64,
    pub durations: Histogram<u64>,
}

#[derive(Default)]
pub struct Summary {
    rows: BTreeMap<Key, Row>,
    total: u64,
}

impl Summary {
    pub fn add(&mut self, r: &ExchangeRecord) {
        let key = Key {
            verdict: r.verdict,
            upstream: r.upstreams.last().map(|u| (u.address.clone(), u.port)),
        };
        let row = self.rows.entry(key).or_insert_with(|| Row {
            count: 0,
            // 1 µs to 1 hour, 3 significant digits.
            durations: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        });
        row.count += 1;
        let _ = row.durations.record(r.duration_us.clamp(1, 3_600_000_000));
        self.total += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn rows(&self) -> impl Iterator<Item = (&Key, &Row)> {
        self.rows.iter()
    }

    /// A plain-text table, failures first by count, then successes.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|(ka, ra), (kb, rb)| {
            (ka.verdict == Verdict::Ok, std::cmp::Reverse(ra.count), ka).cmp(&(
                kb.verdict == Verdict::Ok,
                std::cmp::Reverse(rb.count),
                kb,
            ))
        });
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<26} {:<24} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "verdict", "upstream", "count", "share", "p50", "p90", "p99", "max"
        );
        for (k, r) in rows {
            let share = 100.0 * r.count as f64 / self.total.max(1) as f64;
            let h = &r.durations;
            let _ = writeln!(
                s,
                "{:<26} {:<24} {:>8} {:>6.1}% {:>10} {:>10} {:>10} {:>10}",
                k.verdict.as_str(),
                UpstreamText(&k.upstream),
                r.count,
                share,
                crate::hint::ms(h.value_at_quantile(0.5)),
                crate::hint::ms(h.value_at_quantile(0.9)),
                crate::hint::ms(h.value_at_quantile(0.99)),
                crate::hint::ms(h.max()),
            );
        }
        let _ = writeln!(s, "{} exchanges", self.total);
        s
    }
}
