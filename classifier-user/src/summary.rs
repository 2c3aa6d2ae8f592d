//! The summary table: exchanges grouped by verdict and upstream, with counts and
//! latency percentiles, so the worst upstream stands out.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::{record::ExchangeRecord, verdict::Verdict};

/// One row: a verdict and the upstream that decided it ("-" when none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub verdict: Verdict,
    pub upstream: String,
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
        let upstream = r
            .upstreams
            .last()
            .map_or_else(|| "-".to_owned(), |u| format!("{}:{}", u.address, u.port));
        let key = Key {
            verdict: r.verdict,
            upstream,
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
                k.upstream,
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
