//! classify's engine: kernel events in, exchange records out. Pure and
//! deterministic (no I/O, no clock); the `classify` binary wraps it.
