//! Builds the eBPF object (`classifier-ebpf`'s `classifier` binary, BPF target) with
//! aya-build, so a plain `cargo build` produces an agent with its probes embedded.
//!
//! The eBPF crate is built with the same toolchain as this crate (stable, with
//! `RUSTC_BOOTSTRAP=1` for `-Z build-std=core`): bpf-linker is linked against that
//! toolchain's own LLVM, and the two must agree. `cargo xtask setup` installs
//! rust-src and that bpf-linker (under ~/.local/share/classify, found here when it
//! is not on PATH).
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=PATH");
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // Build scripts run single-threaded: setting the variable before spawning
        // cargo is sound.
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    if !runs("bpf-linker") {
        match setup_linker_dir() {
            Some(dir) => {
                let mut paths: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
                paths.insert(0, dir);
                env::set_var("PATH", env::join_paths(paths)?);
            }
            None => bail!(
                "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against this toolchain's LLVM)"
            ),
        }
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

fn runs(program: impl AsRef<std::ffi::OsStr>) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `~/.local/share/classify/bpf-linker-<libLLVM file of this toolchain>/bin`, if
/// its bpf-linker runs.
fn setup_linker_dir() -> Option<PathBuf> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let llvm = std::fs::read_dir(sysroot.join("lib"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("libLLVM.so.")?;
            rest.starts_with(|c: char| c.is_ascii_digit())
                .then_some(name)
        })?;
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let dir = home
        .join(".local/share/classify")
        .join(format!("bpf-linker-{llvm}"))
        .join("bin");
    runs(dir.join("bpf-linker"))
        .then_some(dir)
        .filter(|d| Path::new(d).is_dir())
}
