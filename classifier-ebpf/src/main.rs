//! classify's kernel probes (BPF target only; built by `classifier-user`'s build script).
//!
//! Design (see `docs/architecture.md`): every program filters on its target first
//! (the `THREADS` map for anything that runs in a watched thread, the `SOCKS` map
//! for softirq-context socket events), keeps per-socket state keyed by the
//! `struct sock` pointer, and emits only what the engine needs: socket identity,
//! results, and the first line of a message where one can start. Events are
//! submitted without waking the agent, which drains the ring on a timer.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod probe;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Any reachable panic makes the program fail verification (the loop below is
    // rejected), so a panic path can never ship unnoticed.
    #[allow(clippy::empty_loop)]
    loop {}
}
