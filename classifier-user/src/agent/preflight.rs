//! Preconditions, each failing with one sentence that says what to do.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn check_privileges() -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!("classify needs root (or the CAP_BPF and CAP_PERFMON capabilities) to load its kernel probes: run it with sudo")
}

pub fn check_btf(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "this kernel exposes no BTF at {} (CONFIG_DEBUG_INFO_BTF=y is needed): classify cannot read its structure layout",
            path.display()
        );
    }
    Ok(())
}

/// Finds tracefs, mounting it at /sys/kernel/tracing if nothing is mounted.
pub fn tracefs() -> Result<PathBuf> {
    for candidate in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let p = Path::new(candidate);
        if p.join("events").is_dir() {
            return Ok(p.to_path_buf());
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with static NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir() {
        eprintln!("classify: mounted tracefs at /sys/kernel/tracing");
        return Ok(PathBuf::from("/sys/kernel/tracing"));
    }
    bail!("tracefs is not mounted and could not be mounted: run `mount -t tracefs tracefs /sys/kernel/tracing`")
}
