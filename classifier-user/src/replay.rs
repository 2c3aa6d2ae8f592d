//! `classify replay FILE`: the engine on a recording, with the same sinks.
use std::{fs::File, io::BufReader};

use anyhow::{Context as _, Result};
use classifier::{record::StatsRecord, recording, Engine, EngineConfig};

use crate::{cli::ReplayArgs, sink::Sink};

pub fn run(args: &ReplayArgs) -> Result<()> {
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let (header, events) = recording::read(BufReader::new(file))
        .with_context(|| format!("{}", args.file.display()))?;
    let mut engine = Engine::new(EngineConfig {
        settle_ns: args.settle.as_nanos() as u64,
        realtime_offset_ns: header.realtime_offset_ns,
        ..EngineConfig::default()
    });
    for (pid, comm) in &header.processes {
        engine.set_comm(*pid, comm);
    }
    let mut sink = Sink::open(&args.output)?;
    let mut out = Vec::new();
    let mut count = 0u64;
    let mut first_ts = None;
    for ev in events {
        let ev = ev.with_context(|| format!("{}", args.file.display()))?;
        first_ts.get_or_insert(ev.ts);
        count += 1;
        engine.ingest(ev, &mut out);
        for r in out.drain(..) {
            sink.record(&r)?;
        }
    }
    engine.flush(&mut out);
    for r in out.drain(..) {
        sink.record(&r)?;
    }
    let span = first_ts.map_or(0.0, |f| engine.now().saturating_sub(f) as f64 / 1e9);
    let stats = StatsRecord {
        time: classifier::engine::wall_time(engine.now(), header.realtime_offset_ns),
        uptime_s: span,
        last: true,
        events: count,
        events_per_s: if span > 0.0 {
            (count as f64 / span).round()
        } else {
            0.0
        },
        exchanges: sink.exchanges,
        incomplete_exchanges: sink.incomplete,
        verdicts: sink.verdicts(),
        engine: engine.counters().clone(),
        ..StatsRecord::default()
    };
    sink.finish(&stats)
}
