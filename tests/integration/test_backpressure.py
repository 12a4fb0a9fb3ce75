#!/usr/bin/python3
"""Backpressure as a client sees it: when memory_limiter is over its limit,
OTLP/HTTP answers 503 with Retry-After and OTLP/gRPC answers UNAVAILABLE
(clients retry), the refusal is counted in
agentmeter_receiver_refused_spans_total, and data flows again once memory
is back under the limit.  Nothing already accepted is lost.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "otlp"))
import grpc  # noqa: E402
import otlptest  # noqa: E402
from amtest import Agentmeter, Results, free_port, http_get, http_post, wait_for  # noqa: E402

results = Results()


def config(telemetry, grpc_port, http_port, out_path):
    # Soft limit = 100000 - 99999 = 1 MiB of decoded requests in flight; the
    # hard (RSS) limit is out of reach. A request
    # that decodes to more than that is refused while it is held.
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc_port}" }}
      http: {{ endpoint: "127.0.0.1:{http_port}" }}
processors:
  memory_limiter: {{ limit_mib: 100000, spike_limit_mib: 99999 }}
exporters:
  file: {{ path: "{out_path}" }}
service:
  telemetry: {{ metrics: {{ address: "{telemetry}" }} }}
  pipelines:
    traces: {{ receivers: [otlp], processors: [memory_limiter], exporters: [file] }}
"""


def refused_total(telemetry):
    text = http_get(f"http://{telemetry}/metrics")[1].decode()
    return sum(int(v) for v in re.findall(
        r"^agentmeter_receiver_refused_spans_total\{[^}]*\} (\d+)$", text, re.M))


def test_backpressure():
    import tempfile
    telemetry = f"127.0.0.1:{free_port()}"
    grpc_port, http_port = free_port(), free_port()
    out_path = os.path.join(tempfile.mkdtemp(), "spans.jsonl")
    am = Agentmeter(config(telemetry, grpc_port, http_port, out_path))
    try:
        am.wait_ready(telemetry)
        url = f"http://127.0.0.1:{http_port}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}
        small = otlptest.make_request(n_spans=5).SerializeToString()
        big = otlptest.make_request(n_spans=20000, name="x" * 40).SerializeToString()

        status, _, _ = http_post(url, small, headers)
        assert status == 200, f"small request answered {status}"

        status, body, resp_headers = http_post(url, big, headers)
        assert status == 503, f"over the limit: HTTP answered {status}, want 503"
        assert "Retry-After" in resp_headers, f"no Retry-After: {resp_headers}"

        ts, ts_grpc, _, _ = otlptest.stubs()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = ts_grpc.TraceServiceStub(channel)
            req = ts.ExportTraceServiceRequest()
            req.ParseFromString(big)
            try:
                stub.Export(req, timeout=10)
                raise AssertionError("over the limit: gRPC Export succeeded, want UNAVAILABLE")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, f"gRPC answered {err.code()}"
            # Under the limit again (nothing is held): accepted.
            stub.Export(otlptest.make_request(n_spans=5, trace_byte=2), timeout=10)

        assert wait_for(lambda: refused_total(telemetry) >= 40000, timeout=5,
                        what="refused spans counted")
        status, _, _ = http_post(url, otlptest.make_request(n_spans=5, trace_byte=3)
                                 .SerializeToString(), headers)
        assert status == 200, f"after the refusal HTTP answered {status}"

        def exported():
            with open(out_path) as f:
                return f.read().count('"spanId"')
        wait_for(lambda: exported() == 15, timeout=10, what="the 15 accepted spans in the file")
        code = am.stop()
        assert code == 0, f"exit code {code}"
    finally:
        am.kill()


results.run("memory limit: HTTP 503 + Retry-After, gRPC UNAVAILABLE, counted, then flows again",
            test_backpressure)
results.finish()
