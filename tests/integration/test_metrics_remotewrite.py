#!/usr/bin/python3
"""Remote-Write 1.0 on the wire, checked by our own decoder.

agentmeter runs [otlp] -> [costmetrics] -> [prometheusremotewrite] against a
small Python endpoint that answers 400, then 429 (Retry-After: 1), then 503,
then 200.  Prometheus 2.42 itself accepts sloppy senders, so this test checks
what it would not: the four required headers (a user header beside them),
the snappy *block* framing, protobuf shape, labels sorted and valid with
__name__, samples in time order per series, external labels; that the 400
request is dropped (never retried) and counted, that 429 and 503 are
retried with the same body (the 429 after the Retry-After second), and that
the last accepted request carries the exact cost sum of the spans sent.
"""
import decimal
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "metrics"))
from amtest import Agentmeter, Results, free_port, http_get, http_post, wait_for  # noqa: E402
import metricslib as ml  # noqa: E402

results = Results()


def config(ports, endpoint):
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{ports['grpc']}" }}
      http: {{ endpoint: "127.0.0.1:{ports['http']}" }}
connectors:
  costmetrics:
    flush_interval: 200ms
    dimensions: [gen_ai.request.model, tenant.id, service.name]
exporters:
  prometheusremotewrite:
    endpoint: "{endpoint}"
    headers: {{ X-Scope-OrgID: agentmeter-test }}
    external_labels: {{ cluster: itest }}
    retry_on_failure: {{ initial_interval: 50ms, max_interval: 500ms }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:{ports['telemetry']}" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [costmetrics] }}
    metrics: {{ receivers: [costmetrics], exporters: [prometheusremotewrite] }}
"""


def cost_sum(series):
    total = 0
    for labels, samples in series:
        if dict(labels).get("__name__") == "agent_cost_total":
            total += ml.nanos(samples[-1][0])
    return total


def self_metric(telemetry, name):
    status, body, _ = http_get(f"http://{telemetry}/metrics")
    assert status == 200
    for (metric, labels), value in ml.parse_prom_text(body.decode()).items():
        if metric == name and dict(labels).get("exporter") == "prometheusremotewrite":
            return value
    return 0.0


def main():
    fake = ml.FakeRemoteWrite(statuses=[400, 429, 503])
    ports = {k: free_port() for k in ("grpc", "http", "telemetry")}
    telemetry = f"127.0.0.1:{ports['telemetry']}"
    am = Agentmeter(config(ports, f"http://127.0.0.1:{fake.port}/api/v1/write"))
    rng = random.Random(7)
    expected = decimal.Decimal(0)
    try:
        am.wait_ready(telemetry)
        spans = []
        for i, (inp, out) in enumerate(ml.random_costs(rng, 40)):
            spans.append(ml.priced_span(i // 4, i % 4, rng.choice(["gpt-4o", "gpt-4o-mini"]),
                                        rng.choice(["acme", "globex"]), inp, out,
                                        tokens_in=1000 + i, tokens_out=100 + i))
            expected += inp + out
        status, body, _ = http_post(f"http://127.0.0.1:{ports['http']}/v1/traces",
                                    json.dumps(ml.spans_request(spans)).encode(),
                                    {"Content-Type": "application/json"})
        results.check("spans accepted", status == 200, f"{status} {body[:200]!r}")
        want = int(expected * 10**9)

        def delivered():
            ok = [r for r in fake.snapshot() if r["status"] == 200]
            if not ok:
                return None
            series = ml.decode_write_request(ml.snappy_decompress(ok[-1]["body"]))
            return series if cost_sum(series) == want else None

        series = wait_for(delivered, timeout=20, what="the exact cost sum at the endpoint")
        results.check("exact cost sum delivered", cost_sum(series) == want)
        reqs = fake.snapshot()

        def check_wire():
            for i, r in enumerate(reqs):
                h = r["headers"]
                assert h.get("content-encoding") == "snappy", h
                assert h.get("content-type") == "application/x-protobuf", h
                assert h.get("x-prometheus-remote-write-version") == "0.1.0", h
                assert h.get("user-agent", "").startswith("agentmeter/"), h
                assert h.get("x-scope-orgid") == "agentmeter-test", h
                assert r["path"] == "/api/v1/write", r["path"]
                assert not r["body"].startswith(ml.STREAM_IDENTIFIER)
                decoded = ml.decode_write_request(ml.snappy_decompress(r["body"]))
                assert decoded, f"request {i} holds no series"
                problems = ml.check_series(decoded)
                assert not problems, problems[:5]
                for labels, _ in decoded:
                    assert dict(labels).get("cluster") == "itest", labels
        results.run("headers, snappy block framing, labels sorted and valid", check_wire)

        def check_statuses():
            statuses = [r["status"] for r in reqs]
            assert statuses[:3] == [400, 429, 503], statuses
            assert reqs[1]["body"] != reqs[0]["body"], "the 400 request was retried"
            assert reqs[2]["body"] == reqs[1]["body"], "429 not retried with the same body"
            assert reqs[3]["body"] == reqs[2]["body"], "503 not retried with the same body"
            waited = reqs[2]["time"] - reqs[1]["time"]
            assert waited >= 0.9, f"Retry-After: 1 not honoured ({waited:.3f}s)"
        results.run("400 dropped, 429 and 503 retried", check_statuses)

        def check_counted():
            failed = self_metric(telemetry,
                                 "agentmeter_exporter_send_failed_metric_points_total")
            assert failed > 0, "the dropped 400 request is not counted"
            sent = self_metric(telemetry, "agentmeter_exporter_sent_metric_points_total")
            assert sent > 0
            assert "answered 400" in am.stderr() and "scripted 400" in am.stderr(), \
                "the 400 is not logged with the response body"
        results.run("the dropped request is counted and logged with the body", check_counted)

        def check_order():
            last = {}
            for r in reqs:
                if r["status"] != 200:
                    continue
                for labels, samples in ml.decode_write_request(ml.snappy_decompress(r["body"])):
                    key = tuple(labels)
                    for _, ts in samples:
                        assert ts > last.get(key, -1), f"{key}: {ts} after {last.get(key)}"
                        last[key] = ts
        results.run("samples in time order per series across requests", check_order)

        def check_names():
            names = {dict(labels)["__name__"] for labels, _ in series}
            for want_name in ("agent_cost_total", "agent_tokens_total"):
                assert want_name in names, names
            for labels, _ in series:
                d = dict(labels)
                if d["__name__"] == "agent_cost_total":
                    assert d["cost_type"] in ("input", "output"), d
                    assert d["currency"] == "USD" and d["service_name"] == "support-bot", d
                    assert "gen_ai_request_model" in d and "tenant_id" in d, d
        results.run("metric names and sanitized dimension labels", check_names)
        code = am.stop()
        results.check("exit 0 on SIGTERM", code == 0, am.stderr()[-2000:])
    finally:
        am.kill()
        fake.close()
    results.finish()


if __name__ == "__main__":
    main()
