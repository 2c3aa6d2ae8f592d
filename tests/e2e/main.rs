//! End-to-end tests: real nginx, real kernel probes, a fault-injecting upstream,
//! and nginx's own access log as ground truth. They need root (CI runs as root);
//! `cargo xtask test` builds everything first.
mod bad_input;
mod churn;
mod cli;
mod fastcgi;
mod faults;
mod fixtures;
mod foundation;
mod http2;
mod midbody;
mod production;
mod security;
mod support;
mod tls;
mod unix_upstream;
mod upgrade;
