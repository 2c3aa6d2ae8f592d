//! classify's engine: kernel events in, exchange records out.
//!
//! The engine is pure and deterministic: no I/O, no clock (time comes from event
//! timestamps), no dependence on which kernel hook produced an event. The
//! `classify` binary wraps it with probes, a ring-buffer reader and sinks; tests
//! drive it by replaying recorded event streams.
//!
//! ```text
//! ring buffer bytes ──decode──▶ Event ──Engine::ingest──▶ Record ──▶ sinks
//!                                 │
//!                                 └──▶ recording (JSON lines) ──replay──▶ Engine
//! ```
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod decode;
pub mod engine;
pub mod event;
pub mod head;
pub mod hint;
pub mod json;
pub mod record;
pub mod recording;
pub mod summary;
pub mod verdict;

pub use engine::{Engine, EngineConfig};
pub use event::Event;
pub use record::Record;
