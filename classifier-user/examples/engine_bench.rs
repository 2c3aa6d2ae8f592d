//! The engine alone on a recording: `cargo run --release --example engine_bench -- FILE`.
//! Events are parsed first; `Engine::ingest` is timed (best of five), then ingest
//! plus JSON for every record, with serde_json and with the writer the agent uses
//! (`classifier::json`).
use std::{fs::File, io::BufReader, time::Instant};

use classifier::{recording, Engine, EngineConfig, Event};

// The allocator the agent ships with, so the figures are the agent's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: engine_bench RECORDING");
    let (header, events) =
        recording::read(BufReader::new(File::open(&path).expect("open"))).expect("recording");
    let events: Vec<Event> = events.collect::<Result<_, _>>().expect("events");
    for mode in ["ingest", "ingest + serde_json", "ingest + classifier::json"] {
        let serialize = mode != "ingest";
        let mut best = f64::MAX;
        let mut records = 0;
        let mut bytes = 0;
        for _ in 0..5 {
            let mut engine = Engine::new(EngineConfig {
                realtime_offset_ns: header.realtime_offset_ns,
                ..EngineConfig::default()
            });
            let mut out = Vec::with_capacity(1024);
            let mut json = Vec::with_capacity(1 << 16);
            records = 0;
            bytes = 0;
            let batch = events.clone();
            let t = Instant::now();
            for ev in batch {
                engine.ingest(ev, &mut out);
                records += out.len();
                if serialize {
                    for r in &out {
                        if mode == "ingest + serde_json" {
                            serde_json::to_writer(&mut json, r).expect("serialize");
                        } else {
                            classifier::json::write_record(&mut json, r).expect("write");
                        }
                        json.push(b'\n');
                    }
                    bytes += json.len();
                    json.clear();
                }
                out.clear();
            }
            engine.flush(&mut out);
            records += out.len();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{}: {} events, {records} records ({bytes} JSON bytes): {:.0} events/s, {:.0} records/s",
            mode,
            events.len(),
            events.len() as f64 / best,
            records as f64 / best
        );
    }
}
