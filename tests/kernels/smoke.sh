#!/bin/bash
# Runs inside a guest booted on another kernel (`cargo xtask test`, see
# xtask/src/kernels.rs), as root, in a directory shared with the host. $BIN is
# the classify binary under test. nginx proxies to a Python upstream, a port with
# nothing behind it, an upstream that resets, one that never answers, answers one
# location itself, and takes one request over TLS; classify's records must give
# each its verdict, and match nginx's access log one for one. Exits non-zero on
# any mismatch.
set -u
echo "kernel $(uname -r)"
W=$(mktemp -d /tmp/smoke.XXXXXX)
mkdir -p "$W/logs" "$W/tmp" "$W/www"
echo hello > "$W/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=smoke -keyout "$W/key.pem" -out "$W/cert.pem" 2> /dev/null || exit 1
cat > "$W/nginx.conf" <<NG
master_process on; worker_processes 1; daemon on; pid $W/nginx.pid; error_log $W/logs/error.log;
events { worker_connections 64; }
http {
  log_format t '\$remote_port \$status \$uri';
  access_log $W/logs/access.log t;
  client_body_temp_path $W/tmp/body; proxy_temp_path $W/tmp/proxy;
  fastcgi_temp_path $W/tmp/fcgi; uwsgi_temp_path $W/tmp/uwsgi; scgi_temp_path $W/tmp/scgi;
  upstream ka { server 127.0.0.1:25001; keepalive 4; }
  server { listen 127.0.0.1:25080; listen 127.0.0.1:25443 ssl;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    proxy_http_version 1.1; proxy_set_header Connection "";
    location / { proxy_pass http://ka; }
    location /tls/ { proxy_pass http://ka/; }
    location /refused { proxy_pass http://127.0.0.1:25009; }
    location /reset { proxy_pass http://127.0.0.1:25003; }
    location /silent { proxy_pass http://127.0.0.1:25002; proxy_read_timeout 2s; }
    location /self { return 503; }
  }
}
NG
(cd "$W/www" && exec python3 -m http.server 25001 --bind 127.0.0.1 > /dev/null 2>&1) &
python3 - > /dev/null 2>&1 <<'PY' &
import socket, struct, threading
def serve(port, reset):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(16); held = []
    while True:
        c, _ = s.accept()
        if reset:
            c.recv(4096)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
        else:
            held.append(c)
threading.Thread(target=serve, args=(25003, True)).start()
serve(25002, False)
PY
sleep 1
nginx -p "$W" -c "$W/nginx.conf" -e "$W/logs/error.log" || exit 1
"$BIN" --pid "$(cat "$W/nginx.pid")" --format json -o records.jsonl 2> classify.err &
CP=$!
for _ in $(seq 1 300); do grep -q "ready in" classify.err 2>/dev/null && break; sleep 0.2; done
cat classify.err
grep -q "ready in" classify.err || { echo "classify never became ready"; exit 1; }
get() { local path=$1; shift; curl -s -o /dev/null -w "%{http_code} $path\n" "$@" "http://127.0.0.1:25080$path"; }
get / ; get /index.html ; get /missing ; get /refused ; get /reset ; get /self
get /silent
curl -sk --http1.1 -o /dev/null -w "%{http_code} /tls/index.html\n" https://127.0.0.1:25443/tls/index.html
get /silent/abort --max-time 1
sleep 3
kill -INT $CP; wait $CP; echo "classify exited $?"
cp "$W/logs/access.log" access.log
python3 - <<'PY'
import json, sys
want = {"/": ("ok", 200), "/index.html": ("ok", 200), "/missing": ("client_error", 404),
        "/refused": ("upstream_refused", 502), "/reset": ("upstream_reset", 502),
        "/self": ("proxy_error", 503), "/tls/index.html": ("ok", 200), "/silent": ("upstream_timeout", 504),
        "/silent/abort": ("client_abort", None)}
recs = {str(r["client"]["port"]): r for r in map(json.loads, open("records.jsonl")) if r["kind"] == "exchange"}
log = [l.split() for l in open("access.log")]
bad = len(log) != len(want) or len(recs) != len(log)
print(f"{len(log)} access-log lines, {len(recs)} records")
for port, status, uri in log:
    r = recs.get(port)
    got = r and (r["verdict"], r["response"]["status"] if r["response"] else None)
    ok = r is not None and got == want.get(uri) and r["complete"]
    bad |= not ok
    print("ok  " if ok else "BAD ", uri, status, "->", got, "" if not r else r["upstreams"])
sys.exit(1 if bad else 0)
PY
