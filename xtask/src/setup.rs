//! `cargo xtask setup`: makes a fresh Debian 12 machine (as root) ready to build and
//! test classify.
//!
//! Every step checks before it acts, so running setup again (every `build` and `test`
//! does) costs a few process spawns and prints nothing. Commands run with their output
//! captured and no terminal; a failing command's output is printed, and the error says
//! which step failed and what to do about it.
//!
//! Steps:
//! 1. Debian packages the tests and demo drive (nginx, load generators, bpftool...).
//! 2. `rust-src` for the toolchain in use: the probes are built with
//!    `-Z build-std=core` for the BPF target, which needs the library sources.
//! 3. bpf-linker built against the toolchain's own `libLLVM.so`: rustc hands
//!    bpf-linker LLVM bitcode, which only the same LLVM major can read.
//! 4. tracefs mounted, so tracepoint probes can attach.

use std::{
    ffi::OsStr,
    fmt::Display,
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{anyhow, bail, Context as _, Result};

/// How talkative setup is.
pub struct Options {
    /// Print only what gets installed; otherwise also one "ok" line per check.
    pub quiet: bool,
}

impl Options {
    /// Reports a check that found nothing to do (only when not quiet).
    fn ok(&self, what: impl Display) {
        if !self.quiet {
            eprintln!("setup: ok: {what}");
        }
    }
}

/// Reports something setup is about to change on the machine. Always printed: the
/// user should know when a build step installs software.
fn doing(what: impl Display) {
    eprintln!("setup: {what}");
}

/// The bpf-linker release the probes are known to link with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the toolchain's libLLVM shared library is named, relative to the sysroot:
/// `lib/libLLVM.so.<major>.<minor>-rust-<version>-<channel>`.
const LLVM_LIB_PREFIX: &str = "libLLVM.so.";

/// A Debian package setup installs, and why the project needs it.
struct Package {
    name: &'static str,
    why: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "nginx",
        why: "the proxy the end-to-end tests and demo classify",
    },
    Package {
        name: "libnginx-mod-stream",
        why: "nginx's TCP stream module",
    },
    Package {
        name: "wrk",
        why: "HTTP/1.1 load generator",
    },
    Package {
        name: "nghttp2-client",
        why: "h2load, HTTP/2 load generator",
    },
    Package {
        name: "bpftool",
        why: "inspecting loaded probes and maps",
    },
    Package {
        name: "iptables",
        why: "fault injection in tests",
    },
    Package {
        name: "nftables",
        why: "nft, fault injection in tests",
    },
    Package {
        name: "curl",
        why: "single requests in tests and the demo",
    },
    Package {
        name: "openssl",
        why: "the test certificate of the TLS end-to-end test",
    },
    Package {
        name: "util-linux",
        why: "setpriv, running nginx workers unprivileged",
    },
    Package {
        name: "qemu-system-x86",
        why: "booting Debian's 6.1 kernel for the older-kernel smoke test",
    },
    Package {
        name: "kmod",
        why: "module tools the 6.1 guest needs",
    },
    Package {
        name: "busybox-static",
        why: "the 6.1 guest's init helpers (virtme-ng)",
    },
    Package {
        name: "python3-venv",
        why: "a virtualenv for virtme-ng (PyPI)",
    },
];

/// Makes a fresh Debian 12 machine (root) ready to build and test classify.
///
/// Idempotent; prints one line per thing it actually installs, nothing when all is
/// present (unless `!opts.quiet`, then a short "ok" line per check).
pub fn run(opts: &Options) -> Result<()> {
    debian_packages(opts).context(
        "setup step 1 (Debian packages) failed: run `cargo xtask setup` as root on Debian 12 \
         with a reachable apt mirror",
    )?;
    let toolchain = toolchain();
    let sysroot = sysroot(&toolchain).context(
        "setup step 2 (Rust toolchain) failed: install rustup (https://rustup.rs) and the \
         toolchain, then rerun",
    )?;
    rust_src(opts, &toolchain, &sysroot).with_context(|| {
        format!(
            "setup step 2 (rust-src) failed: check access to static.rust-lang.org, or run \
             `rustup component add rust-src --toolchain {toolchain}` yourself"
        )
    })?;
    bpf_linker(opts, &toolchain, &sysroot).context(
        "setup step 3 (bpf-linker) failed: it needs crates.io access and a C toolchain (cc); \
         see the cargo output above",
    )?;
    tracefs(opts);
    Ok(())
}

/// Directory holding the `bpf-linker` binary that setup installs, for the probes'
/// build to put first on PATH.
///
/// It depends on the toolchain's libLLVM file name, so a toolchain update (new LLVM)
/// gets its own bpf-linker instead of one that cannot read the new bitcode. If that
/// file cannot be found (setup would already have failed), this returns a directory
/// that does not exist, and the probes' build reports bpf-linker missing.
pub fn bpf_linker_dir() -> PathBuf {
    match sysroot(&toolchain()).and_then(|s| find_llvm_lib(&s)) {
        Ok(llvm) => bpf_linker_root(&llvm.file).join("bin"),
        Err(_) => data_dir().join("bpf-linker-no-llvm-found/bin"),
    }
}

// ---------------------------------------------------------------------------------
// Running commands

/// A command with no stdin, so nothing ever waits on a terminal.
fn cmd<S: AsRef<OsStr>>(program: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `cmd` with its output captured. On failure prints that output (it is the
/// only diagnosis there is) and returns an error naming `what` was being done.
fn run_checked(cmd: &mut Command, what: &str) -> Result<Output> {
    let shown = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start `{shown}` (is it installed?)"))?;
    if !out.status.success() {
        print_output(&out);
        bail!("{what}: `{shown}` failed ({})", out.status);
    }
    Ok(out)
}

/// Whether `cmd` runs and succeeds; for probes and best-effort actions whose
/// failure is an answer, not an error.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Trimmed stdout of a command that must succeed.
fn stdout_of(cmd: &mut Command, what: &str) -> Result<String> {
    let out = run_checked(cmd, what)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The command line as a user would type it, for error messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_output(out: &Output) {
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        let text = text.trim_end();
        if !text.is_empty() {
            eprintln!("{text}");
        }
    }
}

// ---------------------------------------------------------------------------------
// Step 1: Debian packages

/// Installs the missing packages in one apt run, refreshing the index only when
/// something is missing (the index refresh is the slow part).
fn debian_packages(opts: &Options) -> Result<()> {
    let names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
    // One dpkg-query for all: it exits 1 when some package is unknown, but still
    // lists the known ones, so its status is not checked.
    let out = cmd("dpkg-query", ["-W", "--showformat=${Package} ${Status}\\n"])
        .args(&names)
        .output()
        .context("could not run dpkg-query: setup supports Debian only")?;
    let missing = missing_packages(&names, &String::from_utf8_lossy(&out.stdout));
    for p in PACKAGES.iter().filter(|p| !missing.contains(&p.name)) {
        opts.ok(format_args!("package {}", p.name));
    }
    if missing.is_empty() {
        return Ok(());
    }
    for p in PACKAGES.iter().filter(|p| missing.contains(&p.name)) {
        doing(format_args!(
            "installing Debian package {} ({})",
            p.name, p.why
        ));
    }
    run_checked(
        &mut cmd("apt-get", ["update", "-qq"]),
        "refreshing the apt index",
    )?;
    run_checked(
        cmd(
            "apt-get",
            ["install", "-y", "-qq", "--no-install-recommends"],
        )
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("installing {}", missing.join(" ")),
    )?;
    if missing.contains(&"nginx") {
        stop_system_nginx();
    }
    Ok(())
}

/// Packages of `wanted` that `dpkg-query -W -f='${Package} ${Status}\n'` output does
/// not show fully installed ("deinstall ok config-files" and the like count as
/// missing).
fn missing_packages<'a>(wanted: &[&'a str], dpkg_output: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = dpkg_output
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.contains("install ok installed"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|w| !installed.contains(w))
        .collect()
}

/// Debian's nginx package starts a system nginx on port 80. The tests start their
/// own nginx instances; a stray one only takes the port and confuses process
/// lookups, so it is stopped (and disabled where systemd runs). Best effort.
fn stop_system_nginx() {
    if Path::new("/run/systemd/system").is_dir() {
        succeeds(&mut cmd("systemctl", ["disable", "--now", "nginx"]));
    }
    // Without systemd, invoke-rc.d started it from /etc/init.d, which leaves a pid file.
    if Path::new("/run/nginx.pid").exists() {
        succeeds(&mut cmd("nginx", ["-s", "quit"]));
    }
}

// ---------------------------------------------------------------------------------
// Step 2: the Rust toolchain and rust-src

/// The toolchain the build uses: the one rustup put in the environment (rustup sets
/// RUSTUP_TOOLCHAIN for everything it runs, `cargo xtask` included), else stable.
/// classifier-user's build script makes the same choice for the probes.
fn toolchain() -> String {
    std::env::var("RUSTUP_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "stable".to_owned())
}

fn sysroot(toolchain: &str) -> Result<PathBuf> {
    let out = stdout_of(
        &mut cmd("rustup", ["run", toolchain, "rustc", "--print", "sysroot"]),
        &format!("finding the sysroot of toolchain {toolchain}"),
    )?;
    Ok(PathBuf::from(out))
}

/// `-Z build-std=core` compiles core for the BPF target from source.
fn rust_src(opts: &Options, toolchain: &str, sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        opts.ok(format_args!("rust-src for {toolchain}"));
        return Ok(());
    }
    doing(format_args!(
        "installing rust-src for {toolchain} (needed to build core for BPF)"
    ));
    run_checked(
        &mut cmd(
            "rustup",
            ["component", "add", "rust-src", "--toolchain", toolchain],
        ),
        "installing rust-src",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Step 3: bpf-linker against the toolchain's LLVM

/// The toolchain's shared LLVM library.
#[derive(Debug)]
struct LlvmLib {
    /// `$sysroot/lib/<file>`.
    path: PathBuf,
    /// e.g. `libLLVM.so.22.1-rust-1.95.0-stable`; names everything built against it.
    file: String,
    /// LLVM major version, selecting bpf-linker's `llvm-<major>` feature.
    major: u32,
}

fn find_llvm_lib(sysroot: &Path) -> Result<LlvmLib> {
    let lib = sysroot.join("lib");
    let names = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok());
    let file = pick_llvm_file(names).ok_or_else(|| {
        anyhow!(
            "no {LLVM_LIB_PREFIX}<major>.* in {}: this toolchain ships no shared LLVM to build \
             bpf-linker against",
            lib.display()
        )
    })?;
    let major = llvm_major(&file).expect("pick_llvm_file only returns parsable names");
    Ok(LlvmLib {
        path: lib.join(&file),
        file,
        major,
    })
}

/// The libLLVM file among a directory's entries. Toolchains ship one; should there be
/// several, the choice is at least stable.
fn pick_llvm_file(names: impl IntoIterator<Item = String>) -> Option<String> {
    names.into_iter().filter(|n| llvm_major(n).is_some()).max()
}

/// LLVM major version from a file name like `libLLVM.so.22.1-rust-1.95.0-stable`:
/// the digits after `libLLVM.so.` up to the first dot.
fn llvm_major(file: &str) -> Option<u32> {
    let digits = file.strip_prefix(LLVM_LIB_PREFIX)?.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `~/.local/share/classify`: setup's own files, out of the repository so `cargo clean`
/// and fresh checkouts keep them.
fn data_dir() -> PathBuf {
    home().join(".local/share/classify")
}

/// HOME, or /root: setup runs as root, and a missing HOME should not stop it.
fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `cargo install --root` for the bpf-linker built against `llvm_file`.
fn bpf_linker_root(llvm_file: &str) -> PathBuf {
    data_dir().join(format!("bpf-linker-{llvm_file}"))
}

/// Prefix handed to bpf-linker's build as LLVM_PREFIX. Its build script expects a
/// `lib/libLLVM.so` to link with `-lLLVM`; the toolchain only has the versioned
/// file, so this prefix has both names pointing at it. The binary's rpath points here
/// and its DT_NEEDED is the versioned name, so the second link is what it loads.
fn llvm_prefix(llvm: &LlvmLib) -> PathBuf {
    data_dir().join(format!("llvm-{}", llvm.file))
}

fn bpf_linker(opts: &Options, toolchain: &str, sysroot: &Path) -> Result<()> {
    let llvm = find_llvm_lib(sysroot)?;
    let root = bpf_linker_root(&llvm.file);
    let linker = root.join("bin/bpf-linker");
    if bpf_linker_works(&linker) {
        opts.ok(format_args!(
            "bpf-linker {BPF_LINKER_VERSION} at {}",
            linker.display()
        ));
        return Ok(());
    }
    doing(format_args!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        llvm.file
    ));
    let prefix = llvm_prefix(&llvm);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    ensure_symlink(&lib.join("libLLVM.so"), &llvm.path)?;
    ensure_symlink(&lib.join(&llvm.file), &llvm.path)?;
    install_bpf_linker(toolchain, &llvm, &prefix, &root)?;
    if !bpf_linker_works(&linker) {
        bail!(
            "{} was installed but `bpf-linker --version` fails",
            linker.display()
        );
    }
    Ok(())
}

/// Installed, runnable (its libLLVM still resolves), and the wanted release.
fn bpf_linker_works(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

/// `link` -> `target`, replacing whatever `link` was (a previous toolchain's path).
fn ensure_symlink(link: &Path, target: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    match fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", link.display()))
        }
        _ => {}
    }
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// `cargo install` with the toolchain's own cargo, trying the release's lockfile
/// first (known-good dependency versions) and the resolver second (a yanked locked
/// crate makes `--locked` fail).
fn install_bpf_linker(toolchain: &str, llvm: &LlvmLib, prefix: &Path, root: &Path) -> Result<()> {
    let features = format!("llvm-{}", llvm.major);
    let install = |locked: bool| {
        let mut c = cmd(
            "rustup",
            [
                "run",
                toolchain,
                "cargo",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &features,
                // Replace a binary that no longer runs; without this cargo calls it
                // "already installed" and does nothing.
                "--force",
            ],
        );
        c.arg("--root").arg(root).env("LLVM_PREFIX", prefix);
        if locked {
            c.arg("--locked");
        }
        // Outside the repository, so its .cargo/config.toml does not apply.
        c.current_dir(data_dir());
        c
    };
    if succeeds(&mut install(true)) {
        return Ok(());
    }
    doing("cargo install --locked failed; retrying bpf-linker without --locked");
    run_checked(&mut install(false), "building bpf-linker").map(drop)
}

// ---------------------------------------------------------------------------------
// Step 4: tracefs

/// Tracepoint probes attach through tracefs; containers and minimal boots may not
/// have it mounted. Not fatal here: only tracepoint-based probes need it, and their
/// attach error is explicit.
fn tracefs(opts: &Options) {
    const TRACING: &str = "/sys/kernel/tracing";
    if Path::new(TRACING).join("events").is_dir() {
        opts.ok(format_args!("tracefs at {TRACING}"));
        return;
    }
    doing(format_args!("mounting tracefs at {TRACING}"));
    if let Err(e) = run_checked(
        &mut cmd("mount", ["-t", "tracefs", "tracefs", TRACING]),
        "mounting tracefs",
    ) {
        eprintln!("setup: warning: {e:#}; tracepoint probes will fail to attach");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rust_file_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.95.0-stable"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19.1-rust-1.84.0-nightly"), Some(19));
        assert_eq!(llvm_major("libLLVM.so.23"), Some(23));
    }

    #[test]
    fn llvm_major_rejects_other_files() {
        assert_eq!(llvm_major("libLLVM-22-rust-1.95.0-stable.so"), None);
        assert_eq!(llvm_major("libLLVM.so"), None);
        assert_eq!(llvm_major("libLLVM.so."), None);
        assert_eq!(llvm_major("libLLVM.so.+22.1"), None);
        assert_eq!(llvm_major("libLLVM.so.22-rust"), None);
        assert_eq!(llvm_major("librustc_driver-6108105cd7e839cf.so"), None);
    }

    #[test]
    fn picks_the_versioned_llvm_file() {
        let names = [
            "libLLVM-22-rust-1.95.0-stable.so",
            "libLLVM.so.22.1-rust-1.95.0-stable",
            "librustc_driver-6108105cd7e839cf.so",
            "rustlib",
        ]
        .map(String::from);
        assert_eq!(
            pick_llvm_file(names).as_deref(),
            Some("libLLVM.so.22.1-rust-1.95.0-stable")
        );
        assert_eq!(pick_llvm_file(["rustlib".to_owned()]), None);
    }

    #[test]
    fn missing_packages_from_dpkg_output() {
        let wanted = ["nginx", "wrk", "curl", "bpftool", "libc6"];
        let out = "nginx install ok installed\n\
                   wrk deinstall ok config-files\n\
                   curl install ok installed\n\
                   libc6:amd64 install ok installed\n";
        assert_eq!(missing_packages(&wanted, out), ["wrk", "bpftool"]);
        assert_eq!(missing_packages(&wanted, ""), wanted);
    }

    #[test]
    fn ensure_symlink_creates_and_repoints() {
        let dir = std::env::temp_dir().join(format!("classify-setup-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("libLLVM.so");
        ensure_symlink(&link, Path::new("/old/libLLVM.so.21")).unwrap();
        ensure_symlink(&link, Path::new("/new/libLLVM.so.22")).unwrap();
        ensure_symlink(&link, Path::new("/new/libLLVM.so.22")).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("/new/libLLVM.so.22")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describe_shows_the_command_line() {
        let c = cmd("apt-get", ["install", "-y", "nginx"]);
        assert_eq!(describe(&c), "apt-get install -y nginx");
    }

    #[test]
    fn bpf_linker_paths_are_named_after_the_llvm_file() {
        let file = "libLLVM.so.22.1-rust-1.95.0-stable";
        let root = bpf_linker_root(file);
        assert!(
            root.ends_with(".local/share/classify/bpf-linker-libLLVM.so.22.1-rust-1.95.0-stable")
        );
        let llvm = LlvmLib {
            path: PathBuf::from("/x").join(file),
            file: file.to_owned(),
            major: 22,
        };
        assert!(llvm_prefix(&llvm).ends_with("llvm-libLLVM.so.22.1-rust-1.95.0-stable"));
    }
}
