//! The TCP sockets a process listens on (inode → port), for telling client
//! connections from upstream ones. Read through netlink (sock_diag), which
//! returns listening sockets only: /proc/net/tcp walks every socket of the
//! namespace, and after a million short connections that took longer than the
//! agent's whole start-up. Processes in another network namespace (containers)
//! fall back to their own /proc/PID/net/tcp{,6}, read once per namespace.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;

/// struct inet_diag_req_v2 (UAPI).
#[repr(C)]
struct DiagRequest {
    // struct nlmsghdr
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    // struct inet_diag_req_v2
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: [u8; 48],
}

/// Listening TCP sockets of the agent's own network namespace, through netlink.
fn own_namespace() -> std::io::Result<BTreeMap<u64, u16>> {
    let mut found = BTreeMap::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let req = DiagRequest {
            len: size_of::<DiagRequest>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq: 1,
            pid: 0,
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: 1 << TCP_LISTEN,
            id: [0; 48],
        };
        // SAFETY: sending the bytes of a #[repr(C)] request we own.
        let sent = unsafe {
            libc::send(
                fd.as_raw_fd(),
                (&req as *const DiagRequest).cast(),
                size_of::<DiagRequest>(),
                0,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        'recv: loop {
            // SAFETY: receiving into a buffer we own, within its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match parse(&buf[..n as usize], &mut found) {
                Parsed::More => {}
                Parsed::Done => break 'recv,
                Parsed::Error(e) => return Err(std::io::Error::from_raw_os_error(e)),
            }
        }
    }
    Ok(found)
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    More,
    Done,
    Error(i32),
}

/// Parses one netlink datagram of inet_diag_msg replies into `found`.
fn parse(mut buf: &[u8], found: &mut BTreeMap<u64, u16>) -> Parsed {
    let u16_at = |b: &[u8], o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    while buf.len() >= 16 {
        let len = u32_at(buf, 0) as usize;
        let kind = u16_at(buf, 4);
        if len < 16 || len > buf.len() {
            return Parsed::Done;
        }
        match kind {
            NLMSG_DONE => return Parsed::Done,
            NLMSG_ERROR => {
                let errno = if len >= 20 {
                    -(u32_at(buf, 16) as i32)
                } else {
                    libc::EINVAL
                };
                return if errno == 0 {
                    Parsed::Done
                } else {
                    Parsed::Error(errno)
                };
            }
            SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                let msg = &buf[16..len];
                // inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid
                // (sport is big-endian at 4), ..., inode at 68.
                let port = u16::from_be_bytes([msg[4], msg[5]]);
                let inode = u32_at(msg, 68);
                if msg[1] as u32 == TCP_LISTEN {
                    found.insert(u64::from(inode), port);
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    Parsed::More
}

fn netns(proc_root: &Path, pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(proc_root.join(pid.to_string()).join("ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Listening sockets (inode → port) from /proc/PID/net/tcp{,6}.
fn from_proc(proc_root: &Path, pid: u32) -> BTreeMap<u64, u16> {
    let base = proc_root.join(pid.to_string());
    let mut found = BTreeMap::new();
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = fs::read_to_string(base.join(table)) {
            found.extend(super::targets::parse_listeners(&text));
        }
    }
    found
}

/// Socket inodes a process holds open.
fn socket_inodes(proc_root: &Path, pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let link = fs::read_link(fd.path()).ok()?;
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The processes' listening TCP sockets (inode → port).
pub fn listeners(proc_root: &Path, pids: impl IntoIterator<Item = u32>) -> BTreeMap<u64, u16> {
    let own = netns(proc_root, std::process::id());
    let mut tables: HashMap<Option<u64>, BTreeMap<u64, u16>> = HashMap::new();
    let mut found = BTreeMap::new();
    for pid in pids {
        let ns = netns(proc_root, pid);
        let table = tables.entry(ns).or_insert_with(|| {
            if ns.is_some() && ns == own {
                own_namespace().unwrap_or_else(|_| from_proc(proc_root, pid))
            } else {
                from_proc(proc_root, pid)
            }
        });
        if table.is_empty() {
            continue;
        }
        for inode in socket_inodes(proc_root, pid) {
            if let Some(port) = table.get(&inode) {
                found.insert(inode, *port);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(state: u8, port: u16, inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 72];
        m[0..4].copy_from_slice(&(88u32).to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[16] = libc::AF_INET as u8;
        m[17] = state;
        m[20..22].copy_from_slice(&port.to_be_bytes());
        m[16 + 68..16 + 72].copy_from_slice(&inode.to_ne_bytes());
        m
    }

    #[test]
    fn parses_listeners_and_stops_at_done() {
        let mut buf = reply(10, 8080, 4242);
        buf.extend(reply(1, 9090, 1));
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        let mut found = BTreeMap::new();
        assert_eq!(parse(&buf, &mut found), Parsed::More);
        assert_eq!(parse(&done, &mut found), Parsed::Done);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), vec![(4242, 8080)]);
    }

    #[test]
    fn finds_a_listener_of_our_own() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listeners(Path::new("/proc"), [std::process::id()]);
        assert!(found.values().any(|p| *p == port), "{found:?} lacks {port}");
    }
}
