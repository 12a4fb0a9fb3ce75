#!/usr/bin/python3
"""Real-client interop: the OpenTelemetry JS SDK's own OTLP exporters (gRPC
with and without gzip, HTTP/JSON, HTTP/protobuf) send 1,000+ spans covering
every attribute type, events, links, status, several resources and scopes;
agentmeter's `file` exporter writes what came out of the pipeline, and every
span is compared field by field with what the client sent (sent.json).
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from amtest import SOURCE_DIR, Agentmeter, Results, free_port, wait_for  # noqa: E402

JS_DIR = os.path.join(SOURCE_DIR, "tests", "integration", "js")
results = Results()


def typed(value):
    """OTLP/JSON AnyValue -> the {type, value} form sent.json uses."""
    if "stringValue" in value:
        return {"type": "string", "value": value["stringValue"]}
    if "intValue" in value:
        return {"type": "int", "value": int(value["intValue"])}
    if "doubleValue" in value:
        return {"type": "double", "value": float(value["doubleValue"])}
    if "boolValue" in value:
        return {"type": "bool", "value": value["boolValue"]}
    if "bytesValue" in value:
        return {"type": "bytes", "value": value["bytesValue"]}
    if "arrayValue" in value:
        return {"type": "array",
                "value": [typed(v) for v in value["arrayValue"].get("values", [])]}
    raise ValueError(f"unexpected AnyValue {value}")


def attrs(kvs):
    return {kv["key"]: typed(kv.get("value", {})) for kv in (kvs or [])}


def spans_from_file(path):
    """Every span in the file exporter's OTLP JSON lines, in sent.json's shape."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            req = json.loads(line)
            for rs in req.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    scope = ss.get("scope", {})
                    for s in ss.get("spans", []):
                        st = s.get("status", {})
                        span = {
                            "traceId": s["traceId"], "spanId": s["spanId"],
                            "parentSpanId": s.get("parentSpanId") or "",
                            "traceState": s.get("traceState") or "", "name": s["name"],
                            "kind": s.get("kind", 0),
                            "startTimeUnixNano": str(s["startTimeUnixNano"]),
                            "endTimeUnixNano": str(s["endTimeUnixNano"]),
                            "attributes": attrs(s.get("attributes")),
                            "droppedAttributesCount": s.get("droppedAttributesCount", 0),
                            "events": [{"name": e["name"], "timeUnixNano": str(e["timeUnixNano"]),
                                        "attributes": attrs(e.get("attributes")),
                                        "droppedAttributesCount": e.get("droppedAttributesCount", 0)}
                                       for e in s.get("events", [])],
                            "droppedEventsCount": s.get("droppedEventsCount", 0),
                            "links": [{"traceId": lk["traceId"], "spanId": lk["spanId"],
                                       "traceState": lk.get("traceState") or "",
                                       "attributes": attrs(lk.get("attributes")),
                                       "droppedAttributesCount": lk.get("droppedAttributesCount", 0)}
                                      for lk in s.get("links", [])],
                            "droppedLinksCount": s.get("droppedLinksCount", 0),
                            "status": {"code": st.get("code", 0), "message": st.get("message") or ""},
                            "resource": {"attributes": attrs(rs.get("resource", {}).get("attributes"))},
                            "scope": {"name": scope.get("name", ""), "version": scope.get("version") or ""},
                        }
                        if span["spanId"] in out:
                            raise AssertionError(f"span {span['spanId']} exported twice")
                        out[span["spanId"]] = span
    return out


def config(telemetry, grpc, http, out_path):
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc}" }}
      http: {{ endpoint: "127.0.0.1:{http}" }}
exporters:
  file: {{ path: "{out_path}" }}
service:
  telemetry:
    metrics: {{ address: "{telemetry}" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [file] }}
"""


def run_exporter(exporter):
    telemetry = f"127.0.0.1:{free_port()}"
    grpc, http = free_port(), free_port()
    am = None
    try:
        import tempfile
        work = tempfile.mkdtemp(prefix="interop-")
        out_path = os.path.join(work, "spans.jsonl")
        sent_path = os.path.join(work, "sent.json")
        am = Agentmeter(config(telemetry, grpc, http, out_path))
        am.wait_ready(telemetry)
        endpoint = (f"http://127.0.0.1:{grpc}" if exporter.startswith("grpc")
                    else f"http://127.0.0.1:{http}/v1/traces")
        proc = subprocess.run(["node", "send_traces.js", "--exporter", exporter, "--endpoint",
                               endpoint, "--scenario", "fidelity", "--out", sent_path],
                              cwd=JS_DIR, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"send_traces.js failed: {proc.stderr[-2000:]}"
        with open(sent_path) as f:
            sent = {s["spanId"]: s for s in json.load(f)["spans"]}
        assert len(sent) >= 1000, f"only {len(sent)} spans sent"
        got = wait_for(lambda: (lambda g: g if len(g) >= len(sent) else None)(spans_from_file(out_path)),
                       timeout=30, what=f"{len(sent)} spans in the file exporter")
        assert set(got) == set(sent), f"{len(set(sent) - set(got))} spans missing, " \
                                      f"{len(set(got) - set(sent))} unexpected"
        bad = []
        for span_id, want in sent.items():
            for field in want:
                if field in ("resource",):
                    continue
                if got[span_id].get(field) != want[field]:
                    bad.append(f"{span_id}.{field}: sent {str(want[field])[:200]} got "
                               f"{str(got[span_id].get(field))[:200]}")
            if got[span_id]["resource"] != want["resource"]:
                bad.append(f"{span_id}.resource differs")
        assert not bad, f"{len(bad)} fields differ, e.g.\n" + "\n".join(bad[:5])
        code = am.stop()
        assert code == 0, f"exit code {code}"
    finally:
        if am is not None:
            am.kill()


for exporter in ("grpc", "grpc-gzip", "http-json", "http-proto", "http-proto-gzip"):
    results.run(f"JS SDK {exporter}: 1,000+ spans arrive with every field intact",
                lambda e=exporter: run_exporter(e))
results.finish()
