//! A temporary nftables rule that drops every packet to a loopback port, so a
//! connect there never completes, or rejects it with an ICMP error, as a router
//! or firewall that knows no way there does. The rule lives in its own table,
//! which is removed when the guard drops (and before it is created, in case an
//! earlier run was killed).
use std::process::{Command, Stdio};

pub struct DropPort {
    table: String,
}

fn nft(args: &str) -> bool {
    Command::new("nft")
        .args(args.split(' '))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl DropPort {
    pub fn new(port: u16) -> Self {
        Self::with_verdict(port, "drop")
    }

    /// Every SYN to `port` answered with ICMP host unreachable.
    pub fn unreachable(port: u16) -> Self {
        Self::with_verdict(port, "reject with icmp type host-unreachable")
    }

    fn with_verdict(port: u16, verdict: &str) -> Self {
        let table = format!("classify_test_{port}");
        let _ = nft(&format!("delete table inet {table}"));
        let ok = nft(&format!("add table inet {table}"))
            && Command::new("nft")
                .args([
                    "add",
                    "chain",
                    "inet",
                    &table,
                    "out",
                    "{ type filter hook output priority 0 ; policy accept ; }",
                ])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            && nft(&format!(
                "add rule inet {table} out ip daddr 127.0.0.1 tcp dport {port} {verdict}"
            ));
        assert!(ok, "could not add the nftables rule ({verdict}) for port {port} (is nft installed? run `cargo xtask setup`)");
        Self { table }
    }
}

impl Drop for DropPort {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {}", self.table));
    }
}
