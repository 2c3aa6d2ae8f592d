//! Builds the eBPF object (`classifier-ebpf`'s `classifier` binary, BPF target) with
//! aya-build, so a plain `cargo build` produces an agent with its probes embedded.
//!
//! The eBPF crate is built with the same toolchain as this crate (stable, with
//! `RUSTC_BOOTSTRAP=1` for `-Z build-std=core`): bpf-linker is linked against that
//! toolchain's own LLVM, and the two must agree. `cargo xtask setup` installs
//! rust-src and bpf-linker.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    // Strip a host suffix such as "stable-x86_64-unknown-linux-gnu" is not needed:
    // `rustup run` accepts the full name.
    if std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY-free in a build script: single-threaded, set before spawning cargo.
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let which_linker = std::process::Command::new("bpf-linker")
        .arg("--version")
        .output();
    if which_linker.is_err() {
        anyhow::bail!(
            "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against this toolchain's LLVM)"
        );
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "classifier-ebpf",
            root_dir: "../classifier-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF probes")
}
