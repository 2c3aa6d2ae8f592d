//! The end-to-end smoke test on an older kernel: Debian's 6.1 (Debian 12, and
//! the line Amazon Linux 2023 ships), booted under QEMU with virtme-ng, which
//! shares this machine's root filesystem with the guest, so the guest runs the
//! very binaries built here (classify, nginx, python3, curl).
//!
//! 6.1 lacks the socket I/O tracepoints (6.5+): classify sees I/O at syscall
//! exits there, and its fork and exit records have other layouts. The guest
//! runs `tests/kernels/smoke.sh`, which fails on any record that disagrees with
//! the verdict it expects or with nginx's access log.
//!
//! No KVM here (nested KVM hangs at boot), so QEMU emulates the CPU (about 25×
//! slower): a handful of requests, about 80 s in all.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The virtme-ng release this was verified with.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// A guest that has not finished by then is stuck.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Boots Debian's newest 6.1 kernel and runs the smoke test with `classify`.
pub fn smoke_test_on_debian_6_1(classify: &Path, work: &Path) -> Result<()> {
    fs::create_dir_all(work)?;
    let vng = virtme_ng(work).context("installing virtme-ng (PyPI) in a virtualenv")?;
    let (version, vmlinuz) = debian_6_1_kernel(work).context("fetching Debian's 6.1 kernel")?;
    eprintln!("xtask: smoke test on Linux {version} (QEMU, emulated CPU: about 80 s)");
    // The guest's root is this machine's, read-only, with throwaway overlays on
    // /tmp and the like: results come back through a shared read-write directory.
    let shared = work.join("xfer");
    let run = shared.join("run");
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run)?;
    let script = crate::workspace_root().join("tests/kernels/smoke.sh");
    let wrapper = run.join("wrap.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n\
             mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n\
             mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
             ulimit -l unlimited\n\
             cd {run}\n\
             BIN={bin} bash {script} > out 2>&1 < /dev/null\n\
             echo $? > rc.tmp; sync; mv rc.tmp rc; sync\n",
            run = run.display(),
            bin = classify.display(),
            script = script.display(),
        ),
    )?;
    let started = Instant::now();
    let mut guest = Command::new(&vng)
        .arg("--run")
        .arg(&vmlinuz)
        .args([
            "--disable-kvm",
            "--cpus",
            "2",
            "--memory",
            "2G",
            "--verbose",
        ])
        .arg("--rwdir")
        .arg(&shared)
        .arg("--exec")
        .arg(format!("bash {}", wrapper.display()))
        .env("PATH", path_with(vng.parent().expect("venv bin")))
        .stdin(Stdio::null())
        .stdout(fs::File::create(run.join("console.log"))?)
        .stderr(Stdio::null())
        // Its own process group: vng runs QEMU as a grandchild, which a kill
        // of vng alone leaves running (a timed-out guest went on using both
        // cores).
        .process_group(0)
        .spawn()
        .context("starting vng")?;
    // vng exits 255 even when the command succeeded: the command's own status
    // comes back in `rc`.
    loop {
        if guest.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > TIMEOUT {
            let group = i32::try_from(guest.id()).context("vng's pid")?;
            // SAFETY: a plain syscall on the process group vng leads.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = guest.wait();
            let out = fs::read_to_string(run.join("out")).unwrap_or_default();
            bail!(
                "the 6.1 guest did not finish within {TIMEOUT:?}; the smoke test had printed:\n{}",
                out.trim_end()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = fs::read_to_string(run.join("out")).unwrap_or_default();
    eprintln!("{}", out.trim_end());
    let Ok(rc) = fs::read_to_string(run.join("rc")) else {
        let console = fs::read_to_string(run.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        bail!(
            "the 6.1 guest returned no result; its console ended with:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    if rc.trim() != "0" {
        bail!(
            "the smoke test on Linux {version} failed (exit {})",
            rc.trim()
        );
    }
    eprintln!(
        "xtask: smoke test on Linux {version} passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `vng` from a virtualenv under `work`, installed on first use.
fn virtme_ng(work: &Path) -> Result<PathBuf> {
    let venv = work.join("venv");
    let vng = venv.join("bin/vng");
    if vng.exists() {
        return Ok(vng);
    }
    eprintln!("xtask: installing {VIRTME_NG} in {}", venv.display());
    checked(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    checked(Command::new(venv.join("bin/pip")).args(["install", "-q", VIRTME_NG]))?;
    Ok(vng)
}

/// The newest `linux-image-6.1.0-N-amd64-unsigned` Debian serves (the generic
/// flavour: it has 9p, which the shared root needs), unpacked under `work`,
/// with its modules where the guest looks for them (`/usr/lib/modules`, shared).
/// Returns its version and its kernel image.
fn debian_6_1_kernel(work: &Path) -> Result<(String, PathBuf)> {
    let search = |refresh: bool| -> Result<Option<String>> {
        if refresh {
            checked(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        let out = checked(Command::new("apt-cache").args([
            "search",
            "--names-only",
            "^linux-image-6\\.1\\.0-[0-9]+-amd64-unsigned$",
        ]))?;
        Ok(newest_6_1(&out))
    };
    let package = match search(false)? {
        Some(p) => p,
        None => {
            search(true)?.context("Debian's archive has no linux-image-6.1.0-*-amd64-unsigned")?
        }
    };
    let version = package
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_owned();
    let root = work.join(format!("linux-{version}"));
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() {
        eprintln!("xtask: downloading {package}");
        let download = work.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        checked(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&download),
        )?;
        let deb = fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::remove_dir_all(&download)?;
    }
    let modules = Path::new("/usr/lib/modules").join(&version);
    if !modules.exists() {
        fs::create_dir_all("/usr/lib/modules")?;
        checked(
            Command::new("cp")
                .arg("-r")
                .arg(root.join("lib/modules").join(&version))
                .arg(&modules),
        )?;
    }
    Ok((version, vmlinuz))
}

/// The newest 6.1 image in `apt-cache search` output (by its ABI number).
fn newest_6_1(search_output: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64-unsigned")?;
            Some((abi.parse::<u32>().ok()?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    std::env::join_paths(paths).expect("PATH entries")
}

/// Runs `cmd`, its output captured; on failure shows that output.
fn checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::newest_6_1;

    #[test]
    fn picks_the_newest_generic_6_1_image() {
        let out = "linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
                   linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
                   linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                   linux-image-6.1.0-10-amd64-unsigned - Linux 6.1 for 64-bit PCs\n";
        assert_eq!(
            newest_6_1(out).as_deref(),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
    }
}
