//! `classify`: the agent binary. It holds only I/O: CLI, probes, the ring-buffer
//! reader and the sinks; the engine is the `classifier` library.
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod agent;
mod cli;
mod memory;
mod replay;
mod sink;

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: the agent allocates small, short-lived objects per event; glibc's
/// allocator took a quarter of its CPU under connection churn.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Command::Replay(args)) => replay::run(&args),
        None => agent::run(&cli.watch),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`classify | head`) is not an error.
            let broken_pipe = err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("classify: {err:#}");
            ExitCode::FAILURE
        }
    }
}
