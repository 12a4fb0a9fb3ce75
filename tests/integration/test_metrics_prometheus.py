#!/usr/bin/python3
"""Cost metrics in a real Prometheus (Debian `prometheus` 2.42, ARCHITECTURE.md §12).

agentmeter runs [otlp] -> [costmetrics] -> [prometheusremotewrite, prometheus]
against a Prometheus started here on loopback with
--web.enable-remote-write-receiver.  Spans already carry the cost attributes
(values chosen here, so the expected sum is exact):

1. sum(agent_cost_total) queried through /api/v1/query equals the sum of
   cost.self to the nano-unit; tokens and the cost split by type as well;
2. the scrape endpoint of the `prometheus` exporter passes
   `promtool check metrics` and shows the same sum;
3. Prometheus is stopped for AM_METRICS_OUTAGE_S seconds (default 30) while
   spans keep coming, then restarted on the same storage: the queued
   snapshots arrive, the new total is exact and no snapshot is missing
   (consecutive samples of a series are never more than ~2 flush intervals
   apart across the outage);
4. when the cost engine processors exist (processors/ratecard, rollup), the
   same with the full chain: spans with token usage only, priced by a rate
   card written here.
"""
import decimal
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "metrics"))
from amtest import SOURCE_DIR, Agentmeter, Results, free_port, http_get, http_post, wait_for  # noqa: E402,E501
import metricslib as ml  # noqa: E402

results = Results()
OUTAGE_S = float(os.environ.get("AM_METRICS_OUTAGE_S", "30"))
FLUSH_S = 1.0


class Prometheus:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="amprom-")
        self.storage = os.path.join(self.dir, "tsdb")
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
        self.port = free_port()
        self.proc = None
        self.log = open(os.path.join(self.dir, "prometheus.log"), "ab")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [ml.prometheus_binary(), "--web.enable-remote-write-receiver",
             "--storage.tsdb.path", self.storage, "--config.file", self.config,
             "--web.listen-address", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.proc.returncode}")
            return http_get(f"{self.url}/-/ready", timeout=1)[0] == 200
        wait_for(ready, timeout=60, what="prometheus /-/ready")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def query(self, expr):
        status, body, _ = http_get(f"{self.url}/api/v1/query?"
                                   + urllib.parse.urlencode({"query": expr}))
        assert status == 200, f"{status} {body[:300]!r}"
        return json.loads(body)["data"]["result"]

    def scalar(self, expr):
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def cleanup(self):
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def am_config(ports, prom, processors="", extra=""):
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{ports['grpc']}" }}
      http: {{ endpoint: "127.0.0.1:{ports['http']}" }}
{extra}
connectors:
  costmetrics:
    flush_interval: {int(FLUSH_S * 1000)}ms
    dimensions: [gen_ai.request.model, tenant.id]
exporters:
  prometheusremotewrite:
    endpoint: "{prom.url}/api/v1/write"
    retry_on_failure: {{ initial_interval: 50ms, max_interval: 1s }}
    sending_queue: {{ queue_size: 1000 }}
  prometheus: {{ endpoint: "127.0.0.1:{ports['scrape']}" }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:{ports['telemetry']}" }}
  pipelines:
    traces: {{ receivers: [otlp], {processors} exporters: [costmetrics] }}
    metrics: {{ receivers: [costmetrics], exporters: [prometheusremotewrite, prometheus] }}
"""


def new_ports():
    return {k: free_port() for k in ("grpc", "http", "telemetry", "scrape")}


def post_spans(ports, spans):
    status, body, _ = http_post(f"http://127.0.0.1:{ports['http']}/v1/traces",
                                json.dumps(ml.spans_request(spans)).encode(),
                                {"Content-Type": "application/json"})
    assert status == 200, f"OTLP/HTTP answered {status}: {body[:300]!r}"


def make_spans(rng, first_trace, count):
    spans, total, tokens = [], decimal.Decimal(0), 0
    for i, (inp, out) in enumerate(ml.random_costs(rng, count)):
        trace = first_trace + i // 5
        spans.append(ml.priced_span(trace, i % 5, rng.choice(["gpt-4o", "claude-sonnet-4"]),
                                    rng.choice(["acme", "globex", "initech"]), inp, out,
                                    tokens_in=100 + i, tokens_out=10 + i))
        total += inp + out
        tokens += 110 + 2 * i
    return spans, total, tokens


def self_metric(telemetry, name):
    status, body, _ = http_get(f"http://{telemetry}/metrics")
    for (metric, labels), value in ml.parse_prom_text(body.decode()).items():
        if metric == name and dict(labels).get("exporter") == "prometheusremotewrite":
            return value
    return None


def wait_exact(prom, expr, want_nanos, timeout=30):
    def exact():
        v = prom.scalar(expr)
        return v is not None and ml.nanos(v) == want_nanos
    try:
        wait_for(exact, timeout=timeout, what=f"{expr} == {want_nanos} nano-units")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last value {prom.scalar(expr)!r}")


def run_attribute_chain():
    prom = Prometheus()
    ports = new_ports()
    telemetry = f"127.0.0.1:{ports['telemetry']}"
    am = None
    rng = random.Random(42)
    try:
        prom.start()
        am = Agentmeter(am_config(ports, prom))
        am.wait_ready(telemetry)
        spans, total_a, tokens_a = make_spans(rng, 0, 60)
        post_spans(ports, spans)
        want_a = int(total_a * 10**9)

        results.run("sum(agent_cost_total) in Prometheus equals the sum of cost.self",
                    lambda: wait_exact(prom, "sum(agent_cost_total)", want_a))

        def split():
            inp = sum(int(decimal.Decimal(a["value"]["doubleValue"]).quantize(
                decimal.Decimal("1e-9")) * 10**9)
                for s in spans for a in s["attributes"] if a["key"] == "cost.input")
            got = prom.scalar('sum(agent_cost_total{cost_type="input",currency="USD"})')
            assert ml.nanos(got) == inp, (got, inp)
            tok = prom.scalar("sum(agent_tokens_total)")
            assert tok == tokens_a, (tok, tokens_a)
            series = prom.query("agent_cost_total")
            for s in series:
                m = s["metric"]
                assert m["tenant_id"] in ("acme", "globex", "initech"), m
                assert m["gen_ai_request_model"] in ("gpt-4o", "claude-sonnet-4"), m
        results.run("cost by type and tokens by type in Prometheus", split)

        def promtool():
            status, body, headers = http_get(f"http://127.0.0.1:{ports['scrape']}/metrics")
            assert status == 200, status
            assert headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), \
                headers
            text = body.decode()
            assert "# HELP agent_cost_total " in text and \
                "# TYPE agent_cost_total counter" in text, text[:500]
            assert "# TYPE agent_trace_cost histogram" in text or \
                "agent_trace_cost" not in text
            proc = subprocess.run([ml.promtool_binary(), "check", "metrics"], input=body,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
            samples = ml.parse_prom_text(text)
            scraped = sum(ml.nanos(v) for (name, _), v in samples.items()
                          if name == "agent_cost_total")
            assert scraped == want_a, (scraped, want_a)
        results.run("promtool check metrics passes on the scrape endpoint", promtool)

        # -- outage: Prometheus down, spans keep coming, snapshots queue up --
        def outage():
            prom.stop()
            stopped = time.monotonic()
            more, total_b, _ = make_spans(rng, 1000, 40)
            post_spans(ports, more)
            want = int((total_a + total_b) * 10**9)
            wait_for(lambda: (self_metric(telemetry, "agentmeter_exporter_queue_size") or 0)
                     >= max(1, OUTAGE_S / FLUSH_S - 3)
                     and time.monotonic() - stopped >= OUTAGE_S,
                     timeout=OUTAGE_S + 30, interval=0.5, what="snapshots queued during outage")
            queued = self_metric(telemetry, "agentmeter_exporter_queue_size")
            prom.start()
            wait_exact(prom, "sum(agent_cost_total)", want, timeout=60)
            wait_for(lambda: self_metric(telemetry, "agentmeter_exporter_queue_size") == 0,
                     timeout=60, what="the queue to drain")
            failed = self_metric(telemetry, "agentmeter_exporter_send_failed_metric_points_total")
            assert not failed, f"{failed} samples were given up"
            # One series that existed before the outage: look for holes.
            series = prom.query("agent_cost_total[30m]")
            assert series, "no agent_cost_total series"
            longest = max(series, key=lambda s: len(s["values"]))
            stamps = [float(t) for t, _ in longest["values"]]
            gaps = [b - a for a, b in zip(stamps, stamps[1:])]
            assert max(gaps) <= 2.5 * FLUSH_S, \
                f"a hole of {max(gaps):.1f}s in {longest['metric']} (queued {queued})"
            assert stamps[-1] - stamps[0] >= OUTAGE_S, (stamps[0], stamps[-1])
        results.run(f"Prometheus down {OUTAGE_S:.0f}s and restarted: no sample lost", outage)
        code = am.stop()
        results.check("agentmeter exits 0", code == 0, am.stderr()[-2000:])
    finally:
        if am is not None:
            am.kill()
        prom.cleanup()


RATECARD = """id: metrics-test
version: "1"
currency: USD
unit: per_1m
models:
  - match: gpt-4o
    prices: { input: 2.50, output: 10.00 }
  - match: claude-sonnet-4
    prices: { input: 3.00, output: 15.00 }
"""


def run_full_chain():
    have = all(os.path.isdir(os.path.join(SOURCE_DIR, "processors", p))
               for p in ("tracetree", "ratecard", "rollup"))
    if not have:
        print("skip full chain: processors/tracetree, ratecard or rollup missing")
        return
    prom = Prometheus()
    ports = new_ports()
    telemetry = f"127.0.0.1:{ports['telemetry']}"
    card_dir = tempfile.mkdtemp(prefix="amcard-")
    card = os.path.join(card_dir, "ratecard.yaml")
    with open(card, "w") as f:
        f.write(RATECARD)
    extra = f"""processors:
  tracetree: {{ wait: 200ms }}
  ratecard: {{ files: ["{card}"] }}
  rollup: {{}}
"""
    am = None
    rng = random.Random(5)
    prices = {"gpt-4o": (decimal.Decimal("2.50"), decimal.Decimal("10.00")),
              "claude-sonnet-4": (decimal.Decimal("3.00"), decimal.Decimal("15.00"))}
    try:
        prom.start()
        am = Agentmeter(am_config(ports, prom,
                                  processors="processors: [tracetree, ratecard, rollup],",
                                  extra=extra))
        am.wait_ready(telemetry)
        spans, want = [], decimal.Decimal(0)
        for t in range(6):
            for s in range(4):
                model = rng.choice(list(prices))
                tin, tout = rng.randrange(1, 20000), rng.randrange(1, 4000)
                span = ml.priced_span(5000 + t, s, model, "acme", 0, 0)
                span["attributes"] = [
                    a for a in span["attributes"] if not a["key"].startswith("cost.")]
                span["attributes"] += [
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(tin)}},
                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": str(tout)}},
                ]
                spans.append(span)
                pin, pout = prices[model]
                want += (tin * pin + tout * pout) / 1_000_000
        post_spans(ports, spans)
        want_nanos = int(want * 10**9)
        results.run("full chain: sum(agent_cost_total) equals the rate card's prices",
                    lambda: wait_exact(prom, "sum(agent_cost_total)", want_nanos, timeout=60))
        code = am.stop()
        results.check("full chain: agentmeter exits 0", code == 0, am.stderr()[-2000:])
    finally:
        if am is not None:
            am.kill()
        prom.cleanup()
        shutil.rmtree(card_dir, ignore_errors=True)


def main():
    if not os.path.exists(ml.prometheus_binary()):
        print(f"{ml.prometheus_binary()} not found (Debian package `prometheus`)")
        results.check("prometheus installed", False)
        results.finish()
    run_attribute_chain()
    run_full_chain()
    results.finish()


if __name__ == "__main__":
    main()
