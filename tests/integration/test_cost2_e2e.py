#!/usr/bin/python3
"""End to end for cost engine II (issue 5): the OpenTelemetry JS SDK sends
three agent sessions of four traces each over OTLP/HTTP protobuf; the full
cost chain (tracetree, propagate, ratecard, rollup, session, budget,
anomaly) runs on three shards.

Checks: three session.summary events whose totals equal the totals this test
computes itself from sent.json and the rate card (exact decimals); exactly
one budget.threshold at 0.8 and one at 1.0, both for the one session that
crosses the $0.50 session budget on its fourth trace; GET
/v1/budgets/session-cap/<id> reports it exceeded with the exact spent
amount; unknown keys answer 404 with a JSON error.
"""
import json
import os
import subprocess
import sys
from decimal import Decimal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cost2"))

import amtest  # noqa: E402
import pricing  # noqa: E402

SEED = 29
CROSSING = f"sess-{SEED}-1"
LIMIT = Decimal("0.50")
HERE = os.path.dirname(os.path.abspath(__file__))
CARD = os.path.join(HERE, "cost2", "ratecard.yaml")
BUILTIN = os.path.join(amtest.SOURCE_DIR, "deploy", "ratecards", "default.yaml")
JS_DIR = os.path.join(HERE, "js")

CONFIG = """
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{otlp}" }}
processors:
  tracetree: {{ wait: 1s }}
  propagate: {{}}
  ratecard: {{ files: [{card}] }}
  rollup: {{}}
  session: {{ idle_timeout: 30m }}
  budget:
    budgets:
      - {{ name: session-cap, scope: session.id, window: session, limit: 0.50, thresholds: [0.8, 1.0] }}
  anomaly: {{ loops: {{ max_repeats: 5 }} }}
connectors:
  costmetrics: {{}}
exporters:
  debug: {{ verbosity: detailed }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:{telemetry}" }}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tracetree, propagate, ratecard, rollup, session, budget, anomaly]
      exporters: [debug, costmetrics]
    logs:
      receivers: [costmetrics]
      exporters: [debug]
"""


def events_from(stdout):
    out = []
    for line in stdout.splitlines():
        marker = " event {"
        at = line.find(marker)
        if at >= 0:
            out.append(json.loads(line[at + len(" event "):]))
    return out


def main():
    results = amtest.Results()
    if not os.path.isdir(os.path.join(JS_DIR, "node_modules")):
        print("SKIP: tests/integration/js/node_modules missing (run npm ci there)")
        print("0 passed, 0 failed")
        return 0
    otlp, telemetry = amtest.free_port(), amtest.free_port()
    am = amtest.Agentmeter(CONFIG.format(otlp=otlp, telemetry=telemetry, card=CARD),
                           extra_args=["--shards", "3"])
    sent_path = os.path.join(am.dir, "sent.json")
    try:
        am.wait_ready(f"127.0.0.1:{telemetry}")
        send = subprocess.run(
            ["node", "send_traces.js", "--exporter", "http-proto", "--endpoint",
             f"http://127.0.0.1:{otlp}/v1/traces", "--scenario", "agents", "--seed", str(SEED),
             "--out", sent_path],
            cwd=JS_DIR, capture_output=True, text=True, timeout=120)
        results.check("JS SDK sent the agents scenario", send.returncode == 0, send.stderr)
        with open(sent_path) as f:
            sent = json.load(f)
        card = pricing.load_card(BUILTIN, CARD)
        expected = pricing.session_totals(card, sent)
        results.check("scenario has three sessions of four traces",
                      len(expected) == 3 and all(len(v) == 4 for v in expected.values()),
                      str({k: len(v) for k, v in expected.items()}))
        crossing = [k for k, v in expected.items() if sum(v[:3]) < LIMIT <= sum(v)]
        results.check("exactly one session crosses $0.50 on its fourth trace",
                      crossing == [CROSSING], str(crossing))
        others_quiet = all(sum(v) < LIMIT * Decimal("0.8")
                           for k, v in expected.items() if k != CROSSING)
        results.check("the other sessions stay under the 0.8 warning", others_quiet)

        base = f"http://127.0.0.1:{telemetry}/v1/budgets"

        def exceeded():
            status, body, _ = amtest.http_get(f"{base}/session-cap/{CROSSING}")
            return status == 200 and json.loads(body)["status"] == "exceeded" and json.loads(body)
        answer = amtest.wait_for(exceeded, timeout=30, what="session-cap exceeded")
        total = sum(expected[CROSSING])
        results.check("API: spent is exact", Decimal(str(answer["spent"])) == total,
                      f"{answer['spent']} != {total}")
        results.check("API: limit, remaining, currency",
                      Decimal(str(answer["limit"])) == LIMIT and answer["remaining"] == 0
                      and answer["currency"] == "USD", str(answer))
        results.check("API: window fields", "window_start" in answer and "window_end" in answer)
        status, body, _ = amtest.http_get(f"{base}/session-cap/no-such-session")
        results.check("API: unknown key is 404 with a JSON error",
                      status == 404 and "error" in json.loads(body), f"{status} {body!r}")
        status, body, _ = amtest.http_get(f"{base}/no-such-budget/{CROSSING}")
        results.check("API: unknown budget is 404", status == 404, str(status))
        status, body, _ = amtest.http_get(base)
        listing = json.loads(body) if status == 200 else {}
        keys = [k["key"] for b in listing.get("budgets", []) for k in b.get("keys", [])]
        results.check("API: the list shows the three sessions", sorted(keys) == sorted(expected),
                      str(keys))
    finally:
        rc = am.stop()
    results.check("agentmeter exits 0 on SIGTERM", rc == 0, am.stderr()[-2000:])
    events = events_from(am.stdout())
    summaries = {e["key"]: e for e in events if e.get("event") == "session.summary"}
    results.check("three session.summary events",
                  len([e for e in events if e.get("event") == "session.summary"]) == 3
                  and sorted(summaries) == sorted(expected), str(sorted(summaries)))
    for key, traces in expected.items():
        s = summaries.get(key, {})
        got = Decimal(str(s.get("cost", {}).get("total", "NaN")))
        results.check(f"{key}: exact total {sum(traces)}", got == sum(traces), str(got))
        results.check(f"{key}: 4 traces, USD", s.get("traces") == 4
                      and s.get("cost", {}).get("currency") == "USD", str(s.get("traces")))
        n_spans = len({sp["spanId"] for sp in sent["spans"]
                       if sp["attributes"].get("session.id", {}).get("value") == key
                       or any(o["traceId"] == sp["traceId"] for o in sent["spans"]
                              if o["attributes"].get("session.id", {}).get("value") == key)})
        results.check(f"{key}: span count", s.get("spans") == n_spans,
                      f"{s.get('spans')} != {n_spans}")
    thresholds = [e for e in events if e.get("event") == "budget.threshold"]
    results.check("two budget.threshold events, both for the crossing session",
                  len(thresholds) == 2 and all(e["key"] == CROSSING for e in thresholds),
                  json.dumps(thresholds))
    results.check("one at 0.8 (warning) and one at 1.0 (exceeded)",
                  sorted((e["threshold"], e["status"]) for e in thresholds)
                  == [(0.8, "warning"), (1, "exceeded")], json.dumps(thresholds))
    results.finish()


if __name__ == "__main__":
    sys.exit(main())
