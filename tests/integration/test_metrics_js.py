#!/usr/bin/python3
"""Issue 7's "Done when": the OpenTelemetry JS SDK sends a fixed set of agent
sessions, and sum(agent_cost_total) queried from a real Prometheus (Debian
`prometheus` 2.42, remote-write receiver) equals the sum of cost.self over
the spans to the nano-unit's rounding.

agentmeter runs the whole chain:

  traces:  otlp -> tracetree(wait 500ms) -> propagate -> ratecard (built-in
           card) -> rollup -> session -> budget -> anomaly
           -> [costmetrics, file]
  metrics: costmetrics (flush_interval 1s)
           -> [prometheusremotewrite (to the Prometheus started here),
               prometheus (scrape endpoint on a free port)]

send_traces.js (--exporter grpc --scenario agents --sessions 3
--traces-per-session 4 --seed 7) sends the spans and writes sent.json.  The
expected figures are computed here, independently of agentmeter, with
cost1/pricer.py over sent.json and deploy/ratecards/default.yaml (exact
decimals), and cross-checked against the cost.self agentmeter wrote through
the `file` exporter.  Checks:

1. sum(agent_cost_total) in Prometheus == the independent total, within
   1e-9 x number of spans (polled with a deadline);
2. sum(agent_tokens_total{token_type="input"}) == the input tokens of the
   billable (non-agent) spans, also == sent.json's billableUsageByModel;
3. agent_actions_total by (action, outcome): tool_call success/failure and
   agent_step counts equal those of execute_tool / invoke_agent spans in
   sent.json (failure = span status ERROR); the trace-cost histogram's _sum
   and _count equal the total and the number of traces; no unpriced spans;
4. the scrape endpoint passes `promtool check metrics` and shows the same
   total.

SKIP (exit 0, "0 passed, 0 failed") when node is not installed or the JS
SDK's node_modules cannot be installed with `npm ci`.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "metrics"))
sys.path.insert(0, os.path.join(HERE, "cost1"))
sys.path.insert(0, HERE)
from amtest import SOURCE_DIR, Agentmeter, Results, free_port, http_get, wait_for  # noqa: E402
import metricslib as ml  # noqa: E402
import pricer  # noqa: E402
from test_metrics_prometheus import Prometheus  # noqa: E402  (main() is guarded)

JS_DIR = os.path.join(HERE, "js")
BUILTIN_CARD = os.path.join(SOURCE_DIR, "deploy", "ratecards", "default.yaml")
NANO = 10**9
SEND_ARGS = ["--scenario", "agents", "--sessions", "3", "--traces-per-session", "4",
             "--seed", "7"]

results = Results()


def skip(why):
    print(f"SKIP: {why}")
    print("0 passed, 0 failed")
    sys.exit(0)


def ensure_node():
    if shutil.which("node") is None:
        skip("node is not installed (needed for the OpenTelemetry JS SDK sender)")
    if not os.path.isdir(os.path.join(JS_DIR, "node_modules")):
        if shutil.which("npm") is None:
            skip("tests/integration/js/node_modules missing and npm is not installed")
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            skip(f"npm ci failed in tests/integration/js: {proc.stderr[-500:]}")


def config(ports, prom, out_path):
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{ports['grpc']}" }}
      http: {{ endpoint: "127.0.0.1:{ports['http']}" }}
processors:
  tracetree: {{ wait: 500ms }}
  propagate: {{}}
  ratecard: {{}}
  rollup: {{}}
  session: {{ idle_timeout: 30m }}
  budget:
    budgets:
      - {{ name: session-cap, scope: session.id, window: session, limit: 100, thresholds: [0.8, 1.0] }}
  anomaly: {{ loops: {{ max_repeats: 5 }} }}
connectors:
  costmetrics: {{ flush_interval: 1s }}
exporters:
  file: {{ path: "{out_path}" }}
  prometheusremotewrite:
    endpoint: "{prom.url}/api/v1/write"
    retry_on_failure: {{ initial_interval: 50ms, max_interval: 1s }}
  prometheus: {{ endpoint: "127.0.0.1:{ports['scrape']}" }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:{ports['telemetry']}" }}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tracetree, propagate, ratecard, rollup, session, budget, anomaly]
      exporters: [costmetrics, file]
    metrics:
      receivers: [costmetrics]
      exporters: [prometheusremotewrite, prometheus]
"""


def exported_spans(path):
    """{span id: {attribute: python value}} of the file exporter's span lines
    (complete lines only; cost event lines are skipped)."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")[:-1]
    for line in lines:
        if not line.strip():
            continue
        req = json.loads(line)
        for rs in req.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    attrs = {}
                    for kv in sp.get("attributes", []):
                        v = kv.get("value", {})
                        for k in ("stringValue", "intValue", "doubleValue", "boolValue"):
                            if k in v:
                                attrs[kv["key"]] = (int(v[k]) if k == "intValue" else
                                                    float(v[k]) if k == "doubleValue" else v[k])
                    if sp["spanId"] in out:
                        raise AssertionError(f"span {sp['spanId']} exported twice")
                    out[sp["spanId"]] = attrs
    return out


def expected_figures(sent):
    """Everything Prometheus should show, from sent.json and the built-in card."""
    card = pricer.Card(BUILTIN_CARD)
    spans = sent["spans"]
    exp = {s["spanId"]: pricer.expected_cost(card, s) for s in spans}
    total = sum(e["self"] for e in exp.values())  # nano-units, exact
    input_tokens = 0
    for s in spans:
        if exp[s["spanId"]]["status"] == "not_billable":
            continue
        v = pricer.first(s, pricer.TOKENS["input"])
        input_tokens += int(v) if v is not None else 0
    actions = {}
    for s in spans:
        op = pricer.attr(s, "gen_ai.operation.name")
        name = {"execute_tool": "tool_call", "invoke_agent": "agent_step"}.get(op)
        if name:
            outcome = "failure" if s["status"]["code"] == 2 else "success"
            actions[(name, outcome)] = actions.get((name, outcome), 0) + 1
    statuses = {}
    for e in exp.values():
        statuses[e["status"]] = statuses.get(e["status"], 0) + 1
    return {"exp": exp, "total": total, "input_tokens": input_tokens, "actions": actions,
            "statuses": statuses, "traces": len({s["traceId"] for s in spans}),
            "unpriced": sum(v for k, v in statuses.items() if k.startswith("unpriced"))}


def main():
    ensure_node()
    if not os.path.exists(ml.prometheus_binary()):
        print(f"{ml.prometheus_binary()} not found (Debian package `prometheus`)")
        results.check("prometheus installed", False)
        results.finish()

    prom = Prometheus()
    ports = {k: free_port() for k in ("grpc", "http", "telemetry", "scrape")}
    work = tempfile.mkdtemp(prefix="ammjs-")
    out_path = os.path.join(work, "spans.jsonl")
    sent_path = os.path.join(work, "sent.json")
    am = None
    try:
        prom.start()
        am = Agentmeter(config(ports, prom, out_path))
        am.wait_ready(f"127.0.0.1:{ports['telemetry']}")

        send = subprocess.run(
            ["node", "send_traces.js", "--exporter", "grpc", "--endpoint",
             f"http://127.0.0.1:{ports['grpc']}", *SEND_ARGS, "--out", sent_path],
            cwd=JS_DIR, capture_output=True, text=True, timeout=120)
        if send.returncode != 0:
            results.check("JS SDK sent the agents scenario over gRPC", False, send.stderr[-2000:])
            results.finish()
        with open(sent_path) as f:
            sent = json.load(f)
        spans = sent["spans"]
        n = len(spans)
        want = expected_figures(sent)
        tol = Decimal(n) / NANO  # 1e-9 x number of spans
        results.check(f"JS SDK sent {n} spans in {want['traces']} traces "
                      f"(statuses {want['statuses']}); expected total "
                      f"{Decimal(want['total']) / NANO} USD",
                      n > 0 and want["traces"] == 12 and want["total"] > 0)

        # -- cross-check the independent figures with what agentmeter wrote --
        def file_cross_check():
            got = wait_for(lambda: (lambda g: g if len(g) >= n else None)(
                exported_spans(out_path)), timeout=20, interval=0.1,
                what=f"{n} spans in the file exporter")
            assert set(got) == {s["spanId"] for s in spans}, "span ids differ"
            bad = [f"{sid}: cost.self {a.get('cost.self')} != "
                   f"{Decimal(want['exp'][sid]['self']) / NANO}"
                   for sid, a in got.items()
                   if round(a.get("cost.self", 0) * NANO) != want["exp"][sid]["self"]]
            assert not bad, f"{len(bad)} spans differ, e.g. {bad[:3]}"
            file_total = sum(round(a.get("cost.self", 0) * NANO) for a in got.values())
            assert file_total == want["total"], (file_total, want["total"])
        results.run("file exporter: cost.self of every span and their sum equal "
                    "cost1/pricer.py's (built-in card)", file_cross_check)

        summary_input = sum(m["input"] for m in sent["summary"]["billableUsageByModel"].values())
        results.check(f"independent input tokens ({want['input_tokens']}) == sent.json "
                      f"billableUsageByModel ({summary_input})",
                      want["input_tokens"] == summary_input)

        # -- 1. the Done-when: sum(agent_cost_total) in Prometheus --
        last = {}

        def cost_matches():
            v = prom.scalar("sum(agent_cost_total)")
            last["cost"] = v
            return v is not None and \
                abs(Decimal(repr(v)) - Decimal(want["total"]) / NANO) <= tol

        def done_when():
            try:
                wait_for(cost_matches, timeout=30, interval=0.25,
                         what="sum(agent_cost_total) == expected")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last {last.get('cost')!r}, want "
                                     f"{Decimal(want['total']) / NANO}")
            diff = ml.nanos(last["cost"]) - want["total"]
            print(f"     sum(agent_cost_total) = {last['cost']!r}, "
                  f"{diff:+d} nano-units from the exact total")
        results.run(f"Prometheus: sum(agent_cost_total) == sum of cost.self over {n} spans "
                    f"(within {tol})", done_when)

        # -- 2. input tokens --
        def tokens():
            got = wait_for(lambda: prom.scalar('sum(agent_tokens_total{token_type="input"})'),
                           timeout=10, what="agent_tokens_total")
            assert got == want["input_tokens"], (got, want["input_tokens"])
        results.run(f"Prometheus: sum(agent_tokens_total{{token_type=\"input\"}}) == "
                    f"{want['input_tokens']} (billable spans only)", tokens)

        # -- 3. actions, trace histogram, unpriced --
        def actions():
            rows = prom.query("sum by (action, outcome) (agent_actions_total)")
            got = {(r["metric"].get("action"), r["metric"].get("outcome")): float(r["value"][1])
                   for r in rows}
            assert sum(got.values()) > 0, got
            assert all(o in ("success", "failure") for _, o in got), got
            assert got == {k: float(v) for k, v in want["actions"].items()}, \
                (got, want["actions"])
            total = prom.scalar("sum(agent_actions_total)")
            assert total == sum(want["actions"].values()), total
        results.run(f"Prometheus: agent_actions_total by action and outcome == {want['actions']}",
                    actions)

        def trace_hist():
            s = prom.scalar("sum(agent_trace_cost_sum)")
            c = prom.scalar("sum(agent_trace_cost_count)")
            assert c == want["traces"], (c, want["traces"])
            assert abs(Decimal(repr(s)) - Decimal(want["total"]) / NANO) <= tol, \
                (s, Decimal(want["total"]) / NANO)
            unpriced = prom.scalar("sum(agent_unpriced_spans_total)") or 0
            assert unpriced == want["unpriced"], (unpriced, want["unpriced"])
        results.run("Prometheus: agent_trace_cost _count == traces, _sum == total; "
                    "unpriced spans as expected", trace_hist)

        # -- 4. scrape endpoint --
        def promtool():
            status, body, headers = http_get(f"http://127.0.0.1:{ports['scrape']}/metrics")
            assert status == 200, status
            assert headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), \
                headers
            proc = subprocess.run([ml.promtool_binary(), "check", "metrics"], input=body,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
            samples = ml.parse_prom_text(body.decode())
            scraped = sum(ml.nanos(v) for (name, _), v in samples.items()
                          if name == "agent_cost_total")
            assert abs(scraped - want["total"]) <= n, (scraped, want["total"])
            tok = sum(v for (name, labels), v in samples.items()
                      if name == "agent_tokens_total" and dict(labels).get("token_type") == "input")
            assert tok == want["input_tokens"], (tok, want["input_tokens"])
        results.run("scrape endpoint: promtool check metrics passes; same cost and token sums",
                    promtool)

        code = am.stop()
        results.check("agentmeter exits 0", code == 0, am.stderr()[-2000:])
    finally:
        if am is not None:
            am.kill()
        prom.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    results.finish()


if __name__ == "__main__":
    main()
