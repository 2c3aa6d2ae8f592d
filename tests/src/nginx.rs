//! A real nginx (Debian's), started in the foreground in a temporary prefix, with
//! an access log in JSON as ground truth.
use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde::Deserialize;

use crate::{free_port, wait_for};

/// One access-log line (`log_format classify escape=json`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AccessEntry {
    pub remote_port: String,
    pub method: String,
    pub uri: String,
    pub status: String,
    pub upstream_addr: String,
    pub upstream_status: String,
    pub connection: String,
    pub pid: String,
}

impl AccessEntry {
    pub fn remote_port(&self) -> u16 {
        self.remote_port.parse().unwrap_or(0)
    }

    pub fn status(&self) -> u16 {
        self.status.parse().unwrap_or(0)
    }

    /// Upstream addresses tried, in order ("-" or empty: none).
    pub fn upstreams(&self) -> Vec<String> {
        self.upstream_addr
            .split([',', ':'].as_ref())
            .collect::<Vec<_>>()
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| format!("{}:{}", c[0].trim(), c[1].trim()))
            .collect()
    }
}

/// nginx's absolute path, from PATH.
fn find_nginx() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is not installed: run `cargo xtask setup`")
}

const LOG_FORMAT: &str = r#"log_format classify escape=json '{"remote_port":"$remote_port","method":"$request_method","uri":"$request_uri","status":"$status","upstream_addr":"$upstream_addr","upstream_status":"$upstream_status","connection":"$connection","pid":"$pid"}';"#;

pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The `{port2}` of `Config::main`.
    pub port2: u16,
}

/// What goes inside `http { }` besides the log format: upstream blocks and a server
/// listening on `{port}` (replaced with the chosen port).
pub struct Config {
    pub workers: u32,
    pub http: String,
    /// The nginx binary to run (a copy under another name gives a unique process
    /// name for `--pid NAME` tests); `nginx` from PATH when `None`.
    pub binary: Option<PathBuf>,
    /// Run as a daemon (nginx's default). nginx ignores a binary-upgrade signal
    /// (USR2) in a master whose parent never changed, so upgrade tests need it.
    pub daemon: bool,
    /// Main-context directives before `http { }` (`load_module`, `stream { }`);
    /// `{port2}` is replaced with a second free port.
    pub main: String,
    /// No access log and errors only: what a benchmark runs (the access log alone
    /// costs nginx 5–9 % of its throughput here). Tests keep both: the access log
    /// is their ground truth.
    pub quiet: bool,
}

impl Config {
    /// nginx in front of the test upstream with a location per fault: `/` proxies
    /// (kept-alive pool), `/fault/silent` times out after 1 s, `/refused/` goes to a
    /// port nobody listens on, `/retry/` tries that port first and then the
    /// upstream, `/blackhole/` connects where SYNs are dropped (1 s connect
    /// timeout), `/small/` limits bodies to 1 KiB, `/maintenance` returns 503.
    pub fn fault_lab(upstream: std::net::SocketAddr, closed: u16, blackhole: u16) -> Self {
        let up = upstream;
        let http = format!(
            r#"  upstream up {{ server {up}; keepalive 16; }}
  upstream refused {{ server 127.0.0.1:{closed}; }}
  upstream refused_first {{ server 127.0.0.1:{closed} weight=1000 max_fails=0; server {up} max_fails=0; }}
  server {{
    listen 127.0.0.1:{{port}};
    # Load generators that do not reconnect (h2load --rps) keep their connections.
    keepalive_requests 1000000;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location / {{ proxy_pass http://up; }}
    location /fault/silent {{ proxy_pass http://up; proxy_read_timeout 1s; }}
    location /refused/ {{ proxy_pass http://refused/; }}
    location /retry/ {{ proxy_pass http://refused_first/; }}
    location /blackhole/ {{ proxy_pass http://127.0.0.1:{blackhole}/; proxy_connect_timeout 1s; }}
    location /small/ {{ client_max_body_size 1k; proxy_pass http://up/; }}
    location /noretry/ {{ proxy_pass http://up/; proxy_next_upstream off; }}
    location = /maintenance {{ return 503; }}
    # nginx's defaults: HTTP/1.0 upstream, Connection: close, so the upstream
    # closes right after each reply.
    location /http10/ {{ proxy_pass http://{up}/; proxy_http_version 1.0; proxy_set_header Connection close; }}
    # `error_page` without `=`: the fallback's body goes out under the status
    # of the failure it covered.
    location /fallback/ {{ proxy_intercept_errors on; error_page 502 503 /fallback-page; proxy_pass http://up/; }}
    location = /fallback-page {{ proxy_pass http://up/status/200; }}
  }}
"#
        );
        Self {
            workers: 2,
            http,
            binary: None,
            daemon: false,
            main: String::new(),
            quiet: false,
        }
    }

    /// nginx in front of `upstream` through a kept-alive pool: `listen` on
    /// `{port}` with `listen_params` (e.g. ` ssl`), `server_extra` directives in
    /// the server (certificates, more `listen`s), and `location /` proxying.
    pub fn front(upstream: std::net::SocketAddr, listen_params: &str, server_extra: &str) -> Self {
        let http = format!(
            r#"  upstream up {{ server {upstream}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{{port}}{listen_params};
{server_extra}    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location / {{ proxy_pass http://up; }}
  }}
"#
        );
        Self {
            http,
            ..Self::proxy(&[], None, "")
        }
    }

    /// One upstream group `up` with `servers`, a keep-alive pool, and `location /`
    /// proxying to it, plus whatever `extra_locations` holds.
    pub fn proxy(servers: &[String], keepalive: Option<u32>, extra_locations: &str) -> Self {
        let servers: String = servers
            .iter()
            .map(|s| format!("    server {s};\n"))
            .collect();
        let keepalive = keepalive
            .map(|n| format!("    keepalive {n};\n"))
            .unwrap_or_default();
        Self {
            workers: 2,
            binary: None,
            daemon: false,
            main: String::new(),
            quiet: false,
            http: format!(
                "  upstream up {{\n{servers}{keepalive}  }}\n  server {{\n    listen 127.0.0.1:{{port}};\n    location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n{extra_locations}  }}\n"
            ),
        }
    }
}

impl Nginx {
    pub fn start(config: &Config) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("classify-nginx-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let port2 = free_port();
        let http = config.http.replace("{port}", &port.to_string());
        let main = config.main.replace("{port2}", &port2.to_string());
        let p = dir.path().display();
        let (error_level, access_log) = if config.quiet {
            ("error", "off".to_owned())
        } else {
            ("info", format!("{p}/access.log classify"))
        };
        let conf = format!(
            "{main}\nworker_processes {workers};\nuser root;\ndaemon {daemon};\nmaster_process on;\npid {p}/nginx.pid;\nerror_log {p}/error.log {error_level};\nevents {{ worker_connections 8192; }}\nhttp {{\n  {LOG_FORMAT}\n  access_log {access_log};\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  keepalive_timeout 65;\n{http}}}\n",
            workers = config.workers,
            daemon = if config.daemon { "on" } else { "off" },
        );
        fs::write(dir.path().join("nginx.conf"), &conf).expect("write nginx.conf");
        // An absolute path: a binary upgrade (USR2) re-executes argv[0].
        let binary = config.binary.clone().unwrap_or_else(find_nginx);
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx (is it installed? run `cargo xtask setup`)");
        let nginx = Self {
            child,
            dir,
            port,
            port2,
        };
        if config.daemon {
            let pid_file = nginx.dir.path().join("nginx.pid");
            assert!(
                wait_for(Duration::from_secs(10), || pid_file.exists().then_some(())).is_some(),
                "nginx did not write its pid file"
            );
        }
        let up = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        assert!(
            up.is_some(),
            "nginx did not start listening on {port}:\n{}\n{conf}",
            nginx.error_log()
        );
        // Both workers must exist before classify resolves the process tree.
        let workers = wait_for(Duration::from_secs(5), || {
            (nginx.worker_pids().len() as u32 >= config.workers).then_some(())
        });
        assert!(workers.is_some(), "nginx workers did not start");
        nginx
    }

    /// The current master: the one named in the pid file (after a binary upgrade
    /// that is the new one), else the process this harness started.
    pub fn master_pid(&self) -> u32 {
        fs::read_to_string(self.dir.path().join("nginx.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| self.child.id())
    }

    /// Sends a signal to the current master.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we own.
        unsafe { libc::kill(self.master_pid() as i32, sig) };
    }

    /// PIDs of the current master's children.
    pub fn worker_pids(&self) -> Vec<u32> {
        let master = self.master_pid();
        fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Every access-log entry written so far (nginx writes them unbuffered).
    pub fn access_log(&self) -> Vec<AccessEntry> {
        fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad access log line {l}: {e}"))
            })
            .collect()
    }

    /// Waits until the access log has at least `n` entries.
    pub fn wait_access_log(&self, n: usize, timeout: Duration) -> Vec<AccessEntry> {
        wait_for(timeout, || {
            let log = self.access_log();
            (log.len() >= n).then_some(log)
        })
        .unwrap_or_else(|| self.access_log())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and workers, including masters that are
        // not our child (a daemon, or a binary upgrade's new master).
        let masters = [self.master_pid(), self.child.id()];
        for p in masters {
            // SAFETY: kill(2) on pids this harness started.
            unsafe { libc::kill(p as i32, libc::SIGQUIT) };
        }
        let _ = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        let alive = |p: u32| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z "))
        };
        if wait_for(Duration::from_secs(5), || {
            masters.iter().all(|p| !alive(*p)).then_some(())
        })
        .is_none()
        {
            for p in masters {
                // SAFETY: as above.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
