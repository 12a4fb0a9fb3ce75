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
    'j["requests"] >= 30 and j["http_status"] == {"200": j["requests"]} and j["transport_errors"] == 0' 2>/dev/null)" = True ]
# --spans rounds up to whole traces
http_sent=$(json "$WORK/http.out" 'j["spans_sent"]' 2>/dev/null || echo 0)
check "http: $http_sent spans sent (3000 rounded up to whole traces)" \
    [ "$http_sent" -ge 3000 -a "$http_sent" -lt 3100 ]
check "http: accepted_spans_total grew by the spans sent" \
    [ "$(($(accepted_spans) - before))" -eq "$http_sent" ]

# --- determinism: same seed, same bytes ------------------------------------------
"$LOADGEN" --generate-only --quiet --spans 500 --seed 7 --write-requests "$WORK/a" >/dev/null 2>&1
"$LOADGEN" --generate-only --quiet --spans 500 --seed 7 --write-requests "$WORK/b" >/dev/null 2>&1
"$LOADGEN" --generate-only --quiet --spans 500 --seed 8 --write-requests "$WORK/c" >/dev/null 2>&1
check "same seed gives the same bytes" cmp -s "$WORK/a/req-000004.bin" "$WORK/b/req-000004.bin"
check "another seed gives other bytes" sh -c "! cmp -s '$WORK/a/req-000000.bin' '$WORK/c/req-000000.bin'"
check "6 requests written (500 spans rounded up to whole traces)" [ "$(ls "$WORK/a" | wc -l)" -eq 6 ]
check "first byte of a request is the compressed flag 0" \
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

# --- expected costs: loadgen's own pricing against the cost chain ---------------------
# loadgen prices its traffic with prices copied out of the built-in rate card (--expect).
# The cost chain must arrive at exactly the same money and the same tokens per session.
# This part runs only when the build has the components it needs.
COMPONENTS=$("$AM_BIN" components 2>/dev/null | awk '/^(processor|exporter|connector) / { print $2 }')
have_all=yes
for c in tracetree propagate ratecard rollup session costmetrics file; do
    echo "$COMPONENTS" | grep -qx "$c" || have_all=no
done
summaries() {
    grep -c '"event":"session.summary"' "$WORK/events.jsonl" 2>/dev/null || echo 0
}
if [ "$have_all" = yes ]; then
    GRPC=$(free_port)
    TEL=$(free_port)
    cat >"$WORK/cost.yaml" <<YAML
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:$GRPC" }
processors:
  tracetree: { wait: 100ms, max_wait: 2s }
  propagate: { attributes: [session.id, gen_ai.conversation.id, traceloop.association.properties.session_id, user.id, enduser.id, tenant.id, gen_ai.agent.name] }
  ratecard: {}
  rollup: {}
  session: { idle_timeout: 1s }
connectors:
  costmetrics: {}
exporters:
  file: { path: "$WORK/events.jsonl" }
service:
  telemetry: { metrics: { address: "127.0.0.1:$TEL" } }
  pipelines:
    traces: { receivers: [otlp], processors: [tracetree, propagate, ratecard, rollup, session], exporters: [costmetrics] }
    logs: { receivers: [costmetrics], exporters: [file] }
YAML
    "$AM_BIN" --config "$WORK/cost.yaml" >"$WORK/cost.out" 2>"$WORK/cost.err" &
    AM_PID=$!
    if wait_until 15 curl -sf -o /dev/null "http://127.0.0.1:$TEL/readyz"; then
        "$LOADGEN" --endpoint "127.0.0.1:$GRPC" --sessions 40 --traces-per-session 4 \
            --seed 3 --expect "$WORK/expect-cost.json" --quiet >"$WORK/cost-lg.out" 2>&1
        check "cost run: loadgen exit 0" [ $? -eq 0 ]
        # a session is summarised once it has been idle for 1 s
        export WORK
        wait_until 20 sh -c '[ "$(grep -c "\"event\":\"session.summary\"" "$WORK/events.jsonl" 2>/dev/null)" -ge 40 ]'
        check "cost run: 40 session summaries ($(summaries))" [ "$(summaries)" = 40 ]
        verdict=$("$PY" -c '
import json, sys
want = {s["session.id"]: s for s in json.load(open(sys.argv[1]))["sessions"]}
got = {}
for line in open(sys.argv[2]):
    e = json.loads(line)
    if e.get("event") == "session.summary":
        got.setdefault(e["key"], []).append(e)
bad = []
for key, s in want.items():
    evs = got.get(key, [])
    cost = sum(round(float(e["cost"]["total"]) * 1e9) for e in evs)
    toks = {t: sum(e["tokens"][t] for e in evs) for t in s["tokens"]}
    if cost != s["cost_nano"] or toks != s["tokens"]:
        bad.append("%s: expected %s %s, got %s %s" % (key, s["cost_nano"], s["tokens"], cost, toks))
print("ok" if want and not bad else "; ".join(bad[:3]) or "no sessions expected")
' "$WORK/expect-cost.json" "$WORK/events.jsonl" 2>&1)
        check "cost run: every session costs what loadgen priced ($verdict)" [ "$verdict" = ok ]
    else
        fail "cost run: agentmeter ready" "$(tail -5 "$WORK/cost.err")"
    fi
    kill -TERM "$AM_PID"
    if wait_until 30 sh -c "[ ! -e /proc/$AM_PID ] || grep -q '^State:[[:space:]]*Z' /proc/$AM_PID/status"; then
        wait "$AM_PID"
        check "cost run: SIGTERM exit 0" [ $? -eq 0 ]
    else
        fail "cost run: agentmeter did not exit within 30 s"
    fi
    AM_PID=
else
    echo "skip cost run: this build lacks one of: tracetree propagate ratecard rollup session costmetrics file"
fi

finish
