//! The summary table: exchanges grouped by verdict and upstream, with counts and
//! latency percentiles, so the worst upstream stands out.
use std::{fmt, sync::Arc};

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
            Some((addr, port)) => f.pad(&crate::record::endpoint_name(addr, *port)),
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
    /// A few dozen rows at most (verdicts × upstreams): a scan that compares the
    /// shared address text by pointer first costs less per record than a map
    /// whose key must be built (an `Arc` clone and drop) to be looked up.
    rows: Vec<(Key, Row)>,
    total: u64,
}

impl Summary {
    pub fn add(&mut self, r: &ExchangeRecord) {
        let upstream = r.upstreams.last().map(|u| (&u.address, u.port));
        let found = self.rows.iter().position(|(k, _)| {
            k.verdict == r.verdict
                && match (&k.upstream, upstream) {
                    (None, None) => true,
                    (Some((a, p)), Some((b, q))) => *p == q && (Arc::ptr_eq(a, b) || **a == **b),
                    _ => false,
                }
        });
        let i = found.unwrap_or_else(|| {
            let key = Key {
                verdict: r.verdict,
                upstream: upstream.map(|(a, p)| (a.clone(), p)),
            };
            let row = Row {
                count: 0,
                // 1 µs to 1 hour, 3 significant digits.
                durations: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            };
            self.rows.push((key, row));
            self.rows.len() - 1
        });
        let row = &mut self.rows[i].1;
        row.count += 1;
        let _ = row.durations.record(r.duration_us.clamp(1, 3_600_000_000));
        self.total += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn rows(&self) -> impl Iterator<Item = (&Key, &Row)> {
        self.rows.iter().map(|(k, r)| (k, r))
    }

    /// A plain-text table, failures first by count, then successes.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut rows: Vec<_> = self.rows().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn records(text: &str) -> Vec<ExchangeRecord> {
        text.lines()
            .filter_map(|l| match serde_json::from_str(l).expect("a record") {
                Record::Exchange(e) => Some(*e),
                Record::Stats(_) => None,
            })
            .collect()
    }

    /// Rows group by verdict and upstream text, not by which `Arc` holds the
    /// text: deserialized records share none.
    #[test]
    fn rows_group_by_verdict_and_upstream_text() {
        let all: Vec<ExchangeRecord> = [
            include_str!("../../tests/fixtures/statuses_and_keepalive.records.jsonl"),
            include_str!("../../tests/fixtures/refused_then_retried.records.jsonl"),
            include_str!("../../tests/fixtures/concurrent_identical.records.jsonl"),
        ]
        .into_iter()
        .flat_map(records)
        .collect();
        let mut summary = Summary::default();
        let mut want: std::collections::BTreeMap<(Verdict, Option<(String, u16)>), u64> =
            Default::default();
        for r in &all {
            summary.add(r);
            let up = r.upstreams.last().map(|u| (u.address.to_string(), u.port));
            *want.entry((r.verdict, up)).or_default() += 1;
        }
        let got: std::collections::BTreeMap<_, _> = summary
            .rows()
            .map(|(k, r)| {
                let up = k.upstream.as_ref().map(|(a, p)| (a.to_string(), *p));
                ((k.verdict, up), r.count)
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(summary.rows().count(), want.len());
        assert_eq!(summary.total(), all.len() as u64);
        assert!(want.len() > 1 && want.len() < all.len());
    }
}
