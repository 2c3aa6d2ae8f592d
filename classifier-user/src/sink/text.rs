//! The human view: one line per exchange (failures with their hint), and the
//! summary table at the end.
use std::io::{self, Write};

use classifier::{
    hint::ms,
    record::{ExchangeRecord, StatsRecord},
    summary::Summary,
};

pub fn write_exchange(out: &mut dyn Write, e: &ExchangeRecord) -> io::Result<()> {
    // "2026-11-23T10:00:00.123456Z" → "10:00:00.123"
    let clock = e.time.get(11..23).unwrap_or(&e.time);
    let request = e.request.as_ref().map_or_else(
        || "(no request line)".to_owned(),
        |r| format!("{} {}", r.method, r.target),
    );
    let status = e
        .response
        .status
        .map_or_else(|| "---".to_owned(), |s| s.to_string());
    let upstream = e
        .upstreams
        .iter()
        .map(|u| {
            format!(
                "{} {}",
                classifier::record::endpoint_name(&u.address, u.port),
                u.outcome.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(" → ");
    let mark = if e.verdict.is_failure() { "!" } else { " " };
    writeln!(
        out,
        "{clock} {mark} {status} {:<24} {:>9}  {request}  [{}:{}]{}{}",
        e.verdict.as_str(),
        ms(e.duration_us),
        e.client.address,
        e.client.port,
        if upstream.is_empty() {
            String::new()
        } else {
            format!("  ⇢ {upstream}")
        },
        if e.complete { "" } else { "  (incomplete)" },
    )?;
    if let Some(h) = &e.hint {
        writeln!(out, "      {h}")?;
    }
    Ok(())
}

pub fn write_summary(out: &mut dyn Write, summary: &Summary, s: &StatsRecord) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "── summary ({:.1} s) ──", s.uptime_s)?;
    out.write_all(summary.render().as_bytes())?;
    let lost = s.lost_events + s.untracked_sockets + s.skipped_probe_runs + s.undecodable_events;
    writeln!(
        out,
        "{} events ({:.0}/s), {} lost, {} sockets untracked, {} probe runs skipped, {} undecodable; {} incomplete exchanges",
        s.events, s.events_per_s, s.lost_events, s.untracked_sockets, s.skipped_probe_runs, s.undecodable_events, s.incomplete_exchanges
    )?;
    if lost > 0 {
        writeln!(
            out,
            "evidence was lost: records of affected exchanges say \"complete\": false"
        )?;
    }
    if let Some(line) = s.unclassified_http2() {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
