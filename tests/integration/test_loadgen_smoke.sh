#!/bin/sh
# test_loadgen_smoke.sh - CI's smoke test of tests/loadgen (issue 8).
#
# Starts agentmeter on free loopback ports with otlp -> debug (quiet), waits
# for /readyz (polling with a deadline), runs loadgen for one second over
# OTLP/gRPC and briefly over OTLP/HTTP, and checks what a user of the
# benchmark relies on: every request answered OK, agentmeter counted exactly
# the spans loadgen says it sent, the same seed gives the same bytes, the
# expected-cost file is produced, and SIGTERM ends agentmeter with exit 0.
#
# Environment (set by ctest): AM_BIN, AM_SOURCE_DIR, AM_BINARY_DIR.
set -u

AM_BIN=${AM_BIN:-build/agentmeter}
AM_BINARY_DIR=${AM_BINARY_DIR:-build}
LOADGEN=${LOADGEN:-$AM_BINARY_DIR/tests/loadgen/loadgen}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1${2:+: $2}"; }
check() { # check NAME CONDITION-COMMAND...
    name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/amloadgen-XXXXXX")
AM_PID=
cleanup() {
    if [ -n "$AM_PID" ] && kill -0 "$AM_PID" 2>/dev/null; then
        kill -KILL "$AM_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$AM_BIN" ]; then
    fail "agentmeter binary" "$AM_BIN not found"
    finish
fi
if [ ! -x "$LOADGEN" ]; then
    fail "loadgen binary" "$LOADGEN not found"
    finish
fi

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# json FILE EXPR: evaluate a Python expression over the last JSON line of FILE as `j`.
json() {
    "$PY" -c 'import json,sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(eval(sys.argv[2]))' "$1" "$2"
}
# wait_until DEADLINE_S COMMAND...: poll COMMAND every 20 ms until it succeeds.
wait_until() {
    limit=$1
    shift
    "$PY" - "$limit" "$@" <<'EOF'
import subprocess, sys, time
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    if subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
EOF
}
accepted_spans() {
    curl -s "http://127.0.0.1:$TEL/metrics" |
        awk '/^agentmeter_receiver_accepted_spans_total/ { s += $NF } END { printf "%d\n", s }'
}

GRPC=$(free_port)
HTTP=$(free_port)
TEL=$(free_port)
cat >"$WORK/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:$GRPC" }
      http: { endpoint: "127.0.0.1:$HTTP" }
exporters:
  debug: { verbosity: quiet }
service:
  telemetry: { metrics: { address: "127.0.0.1:$TEL" } }
  pipelines:
    traces: { receivers: [otlp], exporters: [debug] }
EOF

"$AM_BIN" --config "$WORK/config.yaml" >"$WORK/am.out" 2>"$WORK/am.err" &
AM_PID=$!
if wait_until 15 curl -sf -o /dev/null "http://127.0.0.1:$TEL/readyz"; then
    ok "agentmeter ready"
else
    fail "agentmeter ready" "$(tail -5 "$WORK/am.err")"
    finish
fi

# --- OTLP/gRPC for one second ------------------------------------------------
"$LOADGEN" --endpoint "127.0.0.1:$GRPC" --duration 1 --rate 20000 --spans 20000 \
    --connections 2 --streams 2 --expect "$WORK/expect.json" >"$WORK/grpc.out" 2>&1
rc=$?
check "loadgen grpc exit 0" [ "$rc" -eq 0 ]
if [ "$rc" -eq 0 ] || [ -s "$WORK/grpc.out" ]; then
    sent=$(json "$WORK/grpc.out" 'j["spans_sent"]' 2>/dev/null || echo 0)
    check "grpc: spans were sent" [ "${sent:-0}" -gt 0 ]
    check "grpc: every request got grpc-status 0" [ "$(json "$WORK/grpc.out" \
        'j["requests"] > 0 and j["requests_ok"] == j["requests"] and list(j["grpc_status"]) == ["0"] and j["transport_errors"] == 0 and j["unanswered"] == 0')" = True ]
    check "grpc: accepted_spans_total equals spans sent ($sent)" [ "$(accepted_spans)" = "$sent" ]
    check "grpc: latency percentiles reported" [ "$(json "$WORK/grpc.out" \
        '0 < j["latency_ms"]["p50"] <= j["latency_ms"]["p99"] <= j["latency_ms"]["max"]')" = True ]
else
    fail "grpc run" "$(tail -5 "$WORK/grpc.out")"
fi
check "expect file lists sessions with a positive total" [ "$("$PY" -c 'import json,sys
e = json.load(open(sys.argv[1]))
print(len(e["sessions"]) > 0 and e["total_cost_nano"] > 0 and e["currency"] == "USD")' \
    "$WORK/expect.json" 2>/dev/null)" = True ]

# --- OTLP/HTTP, a few requests ---------------------------------------------------
before=$(accepted_spans)
"$LOADGEN" --http --endpoint "127.0.0.1:$HTTP" --spans 3000 --connections 2 \
    --compression gzip >"$WORK/http.out" 2>&1
rc=$?
check "loadgen http exit 0" [ "$rc" -eq 0 ]
check "http: every request got 200" [ "$(json "$WORK/http.out" \
    'j["requests"] == 30 and j["http_status"] == {"200": 30} and j["transport_errors"] == 0' 2>/dev/null)" = True ]
check "http: accepted_spans_total grew by 3000" [ "$(($(accepted_spans) - before))" -eq 3000 ]

# --- determinism: same seed, same bytes ------------------------------------------
"$LOADGEN" --generate-only --quiet --spans 500 --seed 7 --write-requests "$WORK/a" >/dev/null 2>&1
"$LOADGEN" --generate-only --quiet --spans 500 --seed 7 --write-requests "$WORK/b" >/dev/null 2>&1
"$LOADGEN" --generate-only --quiet --spans 500 --seed 8 --write-requests "$WORK/c" >/dev/null 2>&1
check "same seed gives the same bytes" cmp -s "$WORK/a/req-000004.bin" "$WORK/b/req-000004.bin"
check "another seed gives other bytes" sh -c "! cmp -s '$WORK/a/req-000000.bin' '$WORK/c/req-000000.bin'"
check "5 requests written, each with an uncompressed gRPC prefix" [ "$(ls "$WORK/a" | wc -l)" -eq 5 ] \
    && check "first byte of a request is the compressed flag 0" \
        [ "$(od -An -tu1 -N1 "$WORK/a/req-000000.bin" | tr -d ' ')" = 0 ]

# --- loopback only ----------------------------------------------------------------
"$LOADGEN" --endpoint 192.0.2.1:4317 --spans 100 >/dev/null 2>&1
check "non-loopback endpoint refused" [ $? -eq 2 ]

# --- SIGTERM ------------------------------------------------------------------------
kill -TERM "$AM_PID"
# exited = gone or a zombie waiting for us to reap it
if wait_until 30 sh -c "[ ! -e /proc/$AM_PID ] || grep -q '^State:[[:space:]]*Z' /proc/$AM_PID/status"; then
    wait "$AM_PID"
    rc=$?
    AM_PID=
    check "SIGTERM: exit 0" [ "$rc" -eq 0 ]
else
    fail "SIGTERM: agentmeter did not exit within 30 s"
fi

finish
