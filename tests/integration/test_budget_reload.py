#!/usr/bin/python3
"""A config-changing SIGHUP keeps budget spend and open sessions.

SIGHUP with a changed config builds a new service and shuts the old one
down; the budget and session processors hand their state over in-process
(no state_file here).  The test sends OTLP/HTTP JSON chat spans for tenant
acme priced by a small test rate card at $0.0125 each against a $0.02 daily
budget: two calls cross 0.8 and 1.0.  It then changes only
exporters.debug.verbosity, sends SIGHUP, and checks that:

- GET /v1/budgets/tenant-daily/acme still answers the spent $0.025;
- two more calls add up to $0.05 (they would cross both thresholds again
  had the reload lost the spend);
- stdout holds exactly one budget.threshold event per threshold (0.8, 1.0);
- the session of the four calls is summarised once, at exit, with four
  traces and the whole $0.05 (not closed and restarted by the reload).
"""
import json
import os
import signal
import sys
import tempfile
import time
from decimal import Decimal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

import amtest  # noqa: E402

# $10 / $20 per 1M tokens: 1000 input + 125 output tokens = $0.0125.
CARD = """id: budget-reload-test
version: "2026-01-01"
currency: USD
unit: per_1m
models:
  - match: reload-test-model
    prices: { input: 10.00, output: 20.00 }
"""

CONFIG = """
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{otlp}" }}
processors:
  tracetree: {{ wait: 200ms }}
  propagate: {{}}
  ratecard: {{ files: [{card}] }}
  rollup: {{}}
  session: {{ idle_timeout: 30m }}
  budget:
    budgets:
      - {{ name: tenant-daily, scope: tenant.id, window: day, limit: 0.02 }}
connectors:
  costmetrics: {{}}
exporters:
  debug: {{ verbosity: {verbosity} }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:{telemetry}" }}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tracetree, propagate, ratecard, rollup, session, budget]
      exporters: [debug, costmetrics]
    logs:
      receivers: [costmetrics]
      exporters: [debug]
"""

PER_CALL = Decimal("0.0125")


def chat_request(n):
    """One trace of one chat span (OTLP/HTTP JSON, lowerCamelCase, hex ids)."""
    now = time.time_ns()
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "reload-test-model",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 125,
        "tenant.id": "acme",
        "session.id": "reload-session",
    }
    attributes = [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int)
                   else {"stringValue": v}} for k, v in attrs.items()]
    span = {
        "traceId": f"{0xb0d6e7:08x}{n:024x}",
        "spanId": f"{n:016x}",
        "name": "chat reload-test-model",
        "kind": 3,
        "startTimeUnixNano": str(now - 1_000_000),
        "endTimeUnixNano": str(now),
        "attributes": attributes,
        "status": {},
    }
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "budget-reload-test"}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [span]}],
    }]}
    return json.dumps(body).encode()


def events_from(stdout):
    out = []
    for line in stdout.splitlines():
        at = line.find(" event {")
        if at >= 0:
            try:
                out.append(json.loads(line[at + len(" event "):]))
            except ValueError:
                pass
    return out


def main():
    results = amtest.Results()
    otlp, telemetry = amtest.free_port(), amtest.free_port()
    # The card lives in its own temporary directory, written before start.
    card_dir = tempfile.mkdtemp(prefix="amtest-card-")
    card = os.path.join(card_dir, "card.yaml")
    with open(card, "w") as f:
        f.write(CARD)

    def config(verbosity):
        return CONFIG.format(otlp=otlp, telemetry=telemetry, card=card, verbosity=verbosity)

    am = amtest.Agentmeter(config("basic"), extra_args=["--shards", "2"])
    base = f"http://127.0.0.1:{telemetry}/v1/budgets/tenant-daily/acme"

    def post(n):
        status, body, _ = amtest.http_post(f"http://127.0.0.1:{otlp}/v1/traces", chat_request(n),
                                           {"Content-Type": "application/json"})
        if status != 200:
            raise AssertionError(f"POST /v1/traces: {status} {body!r}")

    def spent_is(amount):
        def check():
            status, body, _ = amtest.http_get(base)
            return status == 200 and Decimal(str(json.loads(body)["spent"])) == amount \
                and json.loads(body)
        return check

    rc = None
    try:
        am.wait_ready(f"127.0.0.1:{telemetry}")

        def before_reload():
            post(1)
            amtest.wait_for(spent_is(PER_CALL), timeout=15, what="first call counted")
            post(2)
            answer = amtest.wait_for(spent_is(2 * PER_CALL), timeout=15,
                                     what="second call counted")
            assert answer["status"] == "exceeded", answer
            amtest.wait_for(lambda: len([e for e in events_from(am.stdout())
                                         if e.get("event") == "budget.threshold"]) == 2,
                            timeout=15, what="two budget.threshold events")
        results.run("two calls cross 0.8 and 1.0 of $0.02", before_reload)

        def reload():
            with open(am.config_path, "w") as f:
                f.write(config("detailed"))
            am.signal(signal.SIGHUP)
            amtest.wait_for(lambda: "applying the new config" in am.stderr(), timeout=15,
                            what="SIGHUP applied")
            am.wait_ready(f"127.0.0.1:{telemetry}")
        results.run("SIGHUP with a changed config is applied", reload)

        def kept():
            status, body, _ = amtest.http_get(base)
            assert status == 200, f"{status} {body!r}: the key is gone after the reload"
            answer = json.loads(body)
            assert Decimal(str(answer["spent"])) == 2 * PER_CALL, answer
            assert answer["status"] == "exceeded", answer
        results.run("after the reload the API still shows $0.025 spent", kept)

        def more():
            # Two more calls: enough to cross both thresholds again if the
            # reload had lost the spend.
            post(3)
            post(4)
            answer = amtest.wait_for(spent_is(4 * PER_CALL), timeout=15,
                                     what="both calls counted on top")
            assert answer["status"] == "exceeded", answer
            assert Decimal(str(answer["remaining"])) == 0, answer
        results.run("two more calls add up to $0.05", more)
    finally:
        rc = am.stop()
        am.kill()
    results.check("agentmeter exits 0 on SIGTERM", rc == 0, am.stderr()[-2000:])

    events = events_from(am.stdout())
    thresholds = [e for e in events if e.get("event") == "budget.threshold"]
    by_threshold = sorted((Decimal(str(e["threshold"])), e["status"]) for e in thresholds)
    results.check("exactly one budget.threshold per threshold",
                  by_threshold == [(Decimal("0.8"), "warning"), (Decimal("1"), "exceeded")],
                  json.dumps(thresholds))
    results.check("threshold events are for tenant-daily/acme",
                  all(e.get("budget") == "tenant-daily" and e.get("key") == "acme"
                      for e in thresholds), json.dumps(thresholds))
    summaries = [e for e in events if e.get("event") == "session.summary"]
    results.check("one session.summary, at exit, for all four traces",
                  len(summaries) == 1 and summaries[0].get("traces") == 4
                  and Decimal(str(summaries[0]["cost"]["total"])) == 4 * PER_CALL,
                  json.dumps(summaries))
    results.check("the reload handed budget and session state over",
                  "budget: restored 1 budget key(s)" in am.stderr()
                  and "session: restored 1 open session(s)" in am.stderr(), am.stderr()[-2000:])
    try:
        os.unlink(card)
        os.rmdir(card_dir)
    except OSError:
        pass
    results.finish()


if __name__ == "__main__":
    sys.exit(main())
