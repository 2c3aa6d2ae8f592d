//! The engine alone on a recording:
//! `cargo run --release --example engine_bench -- FILE [--json]`.
//!
//! Events are parsed first; `Engine::ingest` is timed (best of five), then ingest
//! plus JSON for every record, with serde_json and with the writer the agent uses
//! (`classifier::json`). Allocations are counted over the ingest runs. Built in
//! release with the agent's allocator, so the figures are the shipped agent's
//! (`cargo xtask bench` runs this binary; the xtask itself is a debug build).
use std::{
    alloc::{GlobalAlloc, Layout},
    fs::File,
    io::BufReader,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use classifier::{recording, Engine, EngineConfig, Event};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// mimalloc (what `classify` ships with), counting allocations.
struct Counting;

// SAFETY: forwards every call to mimalloc unchanged, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: engine_bench RECORDING [--json]");
    let json_out = args.next().as_deref() == Some("--json");
    let (header, events) =
        recording::read(BufReader::new(File::open(&path).expect("open"))).expect("recording");
    let events: Vec<Event> = events.collect::<Result<_, _>>().expect("events");
    let mut results = serde_json::Map::new();
    for mode in ["ingest", "ingest + serde_json", "ingest + classifier::json"] {
        let serialize = mode != "ingest";
        let mut best = f64::MAX;
        let mut records = 0;
        let mut bytes = 0;
        let mut allocations = 0;
        for _ in 0..5 {
            let mut engine = Engine::new(EngineConfig {
                realtime_offset_ns: header.realtime_offset_ns,
                ..EngineConfig::default()
            });
            for (pid, comm) in &header.processes {
                engine.set_comm(*pid, comm);
            }
            let mut out = Vec::with_capacity(1024);
            let mut json = Vec::with_capacity(1 << 16);
            records = 0;
            bytes = 0;
            // Ingest consumes events: copy them before the clock starts.
            let batch = events.clone();
            let a0 = ALLOCATIONS.load(Ordering::Relaxed);
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
                // As the agent does once records are written.
                engine.recycle(&mut out);
            }
            engine.flush(&mut out);
            records += out.len();
            best = best.min(t.elapsed().as_secs_f64());
            allocations = ALLOCATIONS.load(Ordering::Relaxed) - a0;
        }
        let per_event = allocations as f64 / events.len().max(1) as f64;
        if json_out {
            results.insert(
                mode.to_owned(),
                serde_json::json!({
                    "events": events.len(),
                    "records": records,
                    "events_per_s": events.len() as f64 / best,
                    "records_per_s": records as f64 / best,
                    "allocations_per_event": per_event,
                }),
            );
        } else {
            println!(
                "{mode}: {} events, {records} records ({bytes} JSON bytes): {:.0} events/s, {:.0} records/s, {per_event:.2} allocations/event",
                events.len(),
                events.len() as f64 / best,
                records as f64 / best
            );
        }
    }
    if json_out {
        println!("{}", serde_json::Value::Object(results));
    }
}
