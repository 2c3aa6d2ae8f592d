//! nginx in front of a FastCGI application server (`fastcgi_pass`, how PHP
//! runs behind nginx). The upstream speaks FastCGI records, not HTTP: its
//! status is a CGI `Status:` header inside a record, absent for PHP-FPM's 200,
//! and may follow the application's warnings on stderr. Every record must agree
//! with the access log, upstream status included, and carry the verdict the
//! fault calls for.
use classify_tests::{
    classify, client,
    fastcgi::FastCgi,
    nginx::{Config, Nginx},
};

use super::support::{
    assert_matches_access_log, assert_schema, expected_verdict, require_root, stop_after_log,
};

/// Path (after the location prefix) and the verdict it must get.
const CASES: [(&str, &str); 11] = [
    ("/status/200", "ok"),
    ("/php/ok", "ok"),
    ("/status/404", "client_error"),
    ("/status/500", "upstream_error"),
    ("/php/warn/200", "ok"),
    ("/php/warn/500", "upstream_error"),
    ("/php/warn/503", "upstream_error"),
    ("/fault/badheader", "upstream_invalid"),
    ("/fault/reset", "upstream_reset"),
    ("/fault/close", "upstream_closed"),
    ("/fault/silent", "upstream_timeout"),
];

#[test]
fn fastcgi_exchanges_agree_with_the_access_log() {
    require_root();
    let app = FastCgi::start();
    let addr = app.addr();
    let http = format!(
        r#"  upstream app {{ server {addr}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{{port}};
    fastcgi_read_timeout 1s;
    fastcgi_param REQUEST_URI $uri;
    # A kept-alive pool, and a new connection per request.
    location / {{ fastcgi_keep_conn on; fastcgi_pass app; }}
    location /fresh/ {{ rewrite ^/fresh(/.*)$ $1 break; fastcgi_pass {addr}; }}
  }}
"#
    );
    let nginx = Nginx::start(&Config {
        http,
        ..Config::proxy(&[], None, "")
    });
    let running = classify::start(&["--pid", &nginx.master_pid().to_string()]);
    let mut sent = 0;
    for prefix in ["", "/fresh"] {
        for (path, _) in CASES {
            let _ = client::get(nginx.port, &format!("{prefix}{path}"));
            sent += 1;
        }
    }
    let (out, access) = stop_after_log(&nginx, running, sent);
    assert_eq!(access.len(), sent, "{access:?}");
    assert_schema(&out.records);
    let exchanges = out.exchanges();
    assert_matches_access_log(&exchanges, &access);
    for r in &exchanges {
        let target = r["request"]["target"].as_str().unwrap_or("");
        let verdict = expected_verdict(r, &CASES, &["/fresh"]);
        // The last attempt's status is nginx's `$upstream_status` (a number
        // only when the upstream's reply was read: not for a reset, a close or
        // a timeout, nor for the 502 of a rejected header).
        let logged = access
            .iter()
            .find(|a| a.uri == target && a.remote_port() == r["client"]["port"])
            .expect("its access-log line");
        let last_logged = logged.upstream_status.rsplit(", ").next().unwrap_or("");
        let last = &r["upstreams"]
            .as_array()
            .expect("upstreams")
            .last()
            .expect("an attempt")["status"];
        match verdict {
            "ok" | "client_error" | "upstream_error" => {
                assert_eq!(last.to_string(), last_logged, "{r}\n{logged:?}")
            }
            _ => assert!(last.is_null(), "{r}"),
        }
    }
}
