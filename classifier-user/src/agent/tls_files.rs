//! Files of a watched process that may hold a TLS library: the OpenSSL-compatible
//! `libssl` it maps, and its own executable (a proxy built with the library
//! linked in). The probes decide by the functions a file exports
//! (`Probes::attach_tls`).
use std::path::{Path, PathBuf};

/// Candidate files of process `pid`, reached through its `/proc` entry so that a
/// process in a container is probed in its own filesystem.
pub fn tls_files(proc_root: &Path, pid: u32) -> Vec<PathBuf> {
    let dir = proc_root.join(pid.to_string());
    let mut files = vec![dir.join("exe")];
    let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
        return files;
    };
    let root = dir.join("root");
    for path in libssl_paths(&maps) {
        let file = root.join(path.trim_start_matches('/'));
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// Paths of mapped `libssl` files in a `/proc/PID/maps` text.
fn libssl_paths(maps: &str) -> Vec<&str> {
    let mut paths: Vec<&str> = maps
        .lines()
        // address perms offset dev inode path
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            path.starts_with('/')
                && path
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.starts_with("libssl.so"))
        })
        .collect();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_mapped_libssl_once() {
        let maps = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fe:01 1311 /usr/sbin/nginx
7f1a2b000000-7f1a2b020000 r--p 00000000 fe:01 2001 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1a2b020000-7f1a2b080000 r-xp 00020000 fe:01 2001 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1a2c000000-7f1a2c100000 r-xp 00000000 fe:01 2002 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1a2d000000-7f1a2d001000 rw-p 00000000 00:00 0
7ffd1000000-7ffd1021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            libssl_paths(maps),
            ["/usr/lib/x86_64-linux-gnu/libssl.so.3"]
        );
    }
}
