//! The engine alone on a recording: `cargo run --release --example engine_bench -- FILE`.
//! Events are parsed first; only `Engine::ingest` is timed (best of three).
use std::{fs::File, io::BufReader, time::Instant};

use classifier::{recording, Engine, EngineConfig, Event};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: engine_bench RECORDING");
    let (header, events) =
        recording::read(BufReader::new(File::open(&path).expect("open"))).expect("recording");
    let events: Vec<Event> = events.collect::<Result<_, _>>().expect("events");
    let mut best = f64::MAX;
    let mut records = 0;
    for _ in 0..5 {
        let mut engine = Engine::new(EngineConfig {
            realtime_offset_ns: header.realtime_offset_ns,
            ..EngineConfig::default()
        });
        let mut out = Vec::with_capacity(1024);
        records = 0;
        let batch = events.clone();
        let t = Instant::now();
        for ev in batch {
            engine.ingest(ev, &mut out);
            records += out.len();
            out.clear();
        }
        engine.flush(&mut out);
        records += out.len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{} events, {records} records: {:.0} events/s, {:.0} records/s",
        events.len(),
        events.len() as f64 / best,
        records as f64 / best
    );
}
