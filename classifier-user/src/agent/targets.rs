//! Which processes to watch: `--pid` arguments resolved against /proc, their
//! descendants, their threads, and the TCP ports they listen on.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::Path,
};

/// One `--pid` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// That process and its descendants.
    Pid(u32),
    /// Every process with that name and their descendants.
    Name(String),
}

impl Spec {
    pub fn parse(s: &str) -> Self {
        match s.parse::<u32>() {
            Ok(pid) => Self::Pid(pid),
            Err(_) => Self::Name(s.to_owned()),
        }
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(p) => write!(f, "PID {p}"),
            Self::Name(n) => write!(f, "{n:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
}

/// Every process in /proc.
pub fn scan(proc_root: &Path) -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        read_stat(proc_root, pid)
    })
    .collect()
}

/// Parses /proc/PID/stat: `pid (comm) state ppid ...`; comm may hold spaces and
/// parentheses, so it ends at the last ')'.
pub fn read_stat(proc_root: &Path, pid: u32) -> Option<ProcInfo> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

pub fn parse_stat(text: &str) -> Option<ProcInfo> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    // A zombie (or dead) process has exited: one its parent has not reaped
    // yet (a worker orphaned to an init that does not reap) must not keep a
    // run whose PIDs all exited going.
    if matches!(rest.next()?, "Z" | "X" | "x") {
        return None;
    }
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcInfo { pid, ppid, comm })
}

/// The processes the specs select now: matches and all their descendants, never
/// the agent itself (watching its own I/O would feed back into itself).
pub fn resolve(specs: &[Spec], procs: &[ProcInfo]) -> BTreeMap<u32, ProcInfo> {
    let mut selected = resolve_all(specs, procs);
    selected.remove(&std::process::id());
    selected
}

fn resolve_all(specs: &[Spec], procs: &[ProcInfo]) -> BTreeMap<u32, ProcInfo> {
    let mut roots: HashSet<u32> = HashSet::new();
    for spec in specs {
        match spec {
            Spec::Pid(p) => {
                if procs.iter().any(|x| x.pid == *p) {
                    roots.insert(*p);
                }
            }
            Spec::Name(n) => roots.extend(procs.iter().filter(|x| &x.comm == n).map(|x| x.pid)),
        }
    }
    let mut selected: BTreeMap<u32, ProcInfo> = BTreeMap::new();
    let mut frontier: Vec<u32> = roots.into_iter().collect();
    while let Some(pid) = frontier.pop() {
        if selected.contains_key(&pid) {
            continue;
        }
        if let Some(p) = procs.iter().find(|x| x.pid == pid) {
            selected.insert(pid, p.clone());
            frontier.extend(procs.iter().filter(|x| x.ppid == pid).map(|x| x.pid));
        }
    }
    selected
}

/// Thread ids of a process.
pub fn threads(proc_root: &Path, pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// (inode, local port) of each LISTEN socket in a /proc/net/tcp{,6} table.
pub fn parse_listeners(text: &str) -> Vec<(u64, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let state = cols.get(3)?;
            if *state != "0A" {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            Some((inode, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, comm: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            comm: comm.into(),
        }
    }

    #[test]
    fn stat_with_odd_comm() {
        let s = "123 (a (b) c) S 1 123 123 0 -1";
        assert_eq!(parse_stat(s), Some(p(123, 1, "a (b) c")));
    }

    #[test]
    fn a_zombie_is_no_process_to_watch() {
        assert_eq!(parse_stat("124 (nginx) Z 1 123 123 0 -1"), None);
    }

    #[test]
    fn resolve_pid_and_name_with_descendants() {
        let procs = vec![
            p(1, 0, "init"),
            p(10, 1, "nginx"),
            p(11, 10, "nginx"),
            p(12, 10, "nginx"),
            p(20, 1, "sh"),
            p(21, 20, "x"),
        ];
        let by_pid = resolve(&[Spec::Pid(10)], &procs);
        assert_eq!(by_pid.keys().copied().collect::<Vec<_>>(), vec![10, 11, 12]);
        let by_name = resolve(&[Spec::parse("nginx")], &procs);
        assert_eq!(by_name.len(), 3);
        assert!(resolve(&[Spec::parse("nope")], &procs).is_empty());
        assert_eq!(resolve(&[Spec::Pid(20)], &procs).len(), 2);
    }

    #[test]
    fn listeners() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(parse_listeners(t), vec![(4242, 8080)]);
    }
}
