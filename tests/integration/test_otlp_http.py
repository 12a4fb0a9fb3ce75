#!/usr/bin/python3
"""OTLP/HTTP receiver (POST /v1/traces) with a real HTTP client: protobuf
and JSON bodies, gzip and zstd Content-Encoding, partial success, and every
error the OTLP/HTTP spec names, each with a google.rpc.Status body in the
request's encoding: 400 (garbage, malformed JSON, 10,000-deep AnyValue,
corrupt gzip), 401 (missing token), 404, 405, 413 (declared and after
decompression), 415 (content type, content encoding).  A well-behaved client
keeps exporting beside the bad requests and sees zero errors.
"""
import gzip
import json
import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "otlp"))
from amtest import Agentmeter, Results, free_port, http_get, http_post, wait_for  # noqa: E402
import otlptest as ot  # noqa: E402

TOKEN = "http-token-42"
results = Results()
ts, tsg, common, status_pb2 = ot.stubs()
PROTO = "application/x-protobuf"
JSON = "application/json"


def config(ports):
    return f"""
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{ports['http']}", max_request_body_size_mib: 1 }}
  otlp/auth:
    protocols:
      http: {{ endpoint: "127.0.0.1:{ports['auth']}", auth: {{ bearer_token: "{TOKEN}" }} }}
exporters:
  debug: {{ verbosity: detailed }}
service:
  telemetry: {{ metrics: {{ address: "127.0.0.1:{ports['telemetry']}" }} }}
  pipelines:
    traces: {{ receivers: [otlp, otlp/auth], exporters: [debug] }}
"""


def json_request(names, bad=0):
    spans = [{"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "%016x" % (i + 1),
              "name": name, "kind": 3,
              "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "7"}},
                             {"key": "ok", "value": {"boolValue": True}}]}
             for i, name in enumerate(names)]
    spans += [{"traceId": "01", "spanId": "0101010101010101", "name": "bad"}] * bad
    return json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                          "scopeSpans": [{"spans": spans}]}]}).encode()


def _fail(message):
    raise AssertionError(message)


def status_of(body, headers):
    """(code, message) of a google.rpc.Status body in either encoding."""
    ctype = headers.get("Content-Type", headers.get("content-type", ""))
    if ctype.startswith(JSON):
        doc = json.loads(body)
        return doc.get("code"), doc.get("message", "")
    st = status_pb2.Status()
    st.ParseFromString(body)
    return st.code, st.message


def main():
    ports = {k: free_port() for k in ("http", "auth", "telemetry")}
    am = Agentmeter(config(ports))
    telemetry = f"127.0.0.1:{ports['telemetry']}"
    try:
        am.wait_ready(telemetry)
        run_all(am, ports, telemetry)
    finally:
        code = am.stop()
        results.check("clean shutdown (exit 0)", code == 0, f"exit {code}\n{am.stderr()[-3000:]}")
    results.finish()


def run_all(am, ports, telemetry):
    url = f"http://127.0.0.1:{ports['http']}/v1/traces"

    def post(body, ctype=PROTO, encoding=None, target=url, extra=None):
        headers = {"Content-Type": ctype}
        if encoding:
            headers["Content-Encoding"] = encoding
        headers.update(extra or {})
        return http_post(target, body, headers)

    def protobuf_ok():
        status, body, headers = post(ot.make_request(3, name="h-proto").SerializeToString())
        assert status == 200, (status, body)
        assert headers.get("Content-Type") == PROTO, headers
        resp = ts.ExportTraceServiceResponse()
        resp.ParseFromString(body)
        assert not resp.HasField("partial_success")
        wait_for(lambda: "h-proto 2" in am.stdout(), what="protobuf spans")

    def json_ok():
        status, body, headers = post(json_request(["h-json-a", "h-json-b"]), ctype=JSON)
        assert status == 200 and json.loads(body) == {}, (status, body)
        assert headers.get("Content-Type", "").startswith(JSON), headers
        wait_for(lambda: "h-json-b" in am.stdout(), what="JSON spans")

    def partial():
        status, body, _ = post(json_request(["h-partial"], bad=2), ctype=JSON)
        doc = json.loads(body)
        assert status == 200 and doc["partialSuccess"]["rejectedSpans"] == "2", body
        status, body, _ = post(ot.make_request(1, bad_ids=1).SerializeToString())
        resp = ts.ExportTraceServiceResponse()
        resp.ParseFromString(body)
        assert status == 200 and resp.partial_success.rejected_spans == 1, (status, resp)

    def compressed():
        raw = ot.make_request(2, name="h-gzip").SerializeToString()
        status, body, _ = post(gzip.compress(raw), encoding="gzip")
        assert status == 200, (status, body)
        zst = subprocess.run(["zstd", "-q", "-c"], input=json_request(["h-zstd-json"]),
                             capture_output=True, check=True).stdout
        status, body, _ = post(zst, ctype=JSON, encoding="zstd")
        assert status == 200, (status, body)
        wait_for(lambda: "h-gzip 1" in am.stdout() and "h-zstd-json" in am.stdout(),
                 what="compressed spans")

    results.run("protobuf body -> 200 ExportTraceServiceResponse", protobuf_ok)
    results.run("JSON body -> 200 {}", json_ok)
    results.run("partial success in JSON and protobuf", partial)
    results.run("gzip and zstd Content-Encoding", compressed)

    stop = threading.Event()
    good = {"ok": 0, "errors": []}

    def good_client():
        i = 0
        while not stop.is_set():
            status, body, _ = post(ot.make_request(1, name=f"h-good-{i}").SerializeToString())
            if status == 200:
                good["ok"] += 1
            else:
                good["errors"].append((status, body[:200]))
            i += 1

    thread = threading.Thread(target=good_client, daemon=True)
    thread.start()
    wait_for(lambda: good["ok"] > 0, what="the good client's first export")

    def expect(status_body_headers, want_status, want_code=None, fragment=None, json_body=False):
        status, body, headers = status_body_headers
        assert status == want_status, f"want {want_status}, got {status}: {body[:300]!r}"
        if want_code is not None:
            code, message = status_of(body, headers)
            assert code == want_code, f"want code {want_code}, got {code}: {message}"
            if fragment:
                assert fragment in message, f"{fragment!r} not in {message!r}"
            ctype = headers.get("Content-Type", "")
            assert ctype.startswith(JSON if json_body else PROTO), ctype
        return headers

    cases = [
        ("garbage protobuf -> 400",
         lambda: expect(post(b"\xff\xff\xff\xff"), 400, 3, "malformed protobuf")),
        ("malformed JSON -> 400 with JSON Status",
         lambda: expect(post(b'{"resourceSpans": [', ctype=JSON), 400, 3, json_body=True)),
        ("10,000-deep AnyValue -> 400",
         lambda: expect(post(ot.deep_request(10000)), 400, 3, "max_attribute_depth")),
        ("corrupt gzip -> 400",
         lambda: expect(post(b"\x1f\x8b\x08\x00garbage", encoding="gzip"), 400, 3)),
        ("other path -> 404",
         lambda: expect(post(b"", target=url.replace("/v1/traces", "/v1/metrics")), 404, 12)),
        ("GET -> 405 with Allow",
         lambda: (expect(http_get(url), 405).get("Allow") == "POST") or _fail("no Allow: POST")),
        ("declared oversized body -> 413",
         lambda: expect(post(bytes(2 << 20)), 413)),
        ("oversized after gzip -> 413 with Status",
         lambda: expect(post(gzip.compress(bytes(4 << 20)), encoding="gzip"), 413, 8,
                        "decompressed")),
        ("wrong content type -> 415",
         lambda: expect(post(b"x", ctype="text/plain"), 415, 3, "content-type")),
        ("unknown content encoding -> 415",
         lambda: expect(post(b"x", ctype=JSON, encoding="br"), 415, 3, "content-encoding",
                        json_body=True)),
    ]
    for name, fn in cases:
        results.run(name, fn)

    def auth():
        target = f"http://127.0.0.1:{ports['auth']}/v1/traces"
        body = ot.make_request(1, name="h-authed").SerializeToString()
        headers = expect(post(body, target=target), 401, 16, "bearer")
        assert "Bearer" in headers.get("WWW-Authenticate", ""), headers
        expect(post(body, target=target, extra={"Authorization": "Bearer nope"}), 401, 16)
        expect(post(body, target=target, extra={"Authorization": f"Bearer {TOKEN}"}), 200)

    results.run("missing/wrong token -> 401, right one 200", auth)

    stop.set()
    thread.join(timeout=30)
    results.check("good client beside the bad requests saw zero errors",
                  not good["errors"] and good["ok"] > 0,
                  f"ok={good['ok']} errors={good['errors'][:3]}")

    def metrics():
        _, body, _ = http_get(f"http://{telemetry}/metrics")
        text = body.decode()
        assert 'agentmeter_receiver_accepted_spans_total{receiver="otlp",transport="http"}' in text
        assert 'transport="http",code="INVALID_ARGUMENT"' in text

    results.run("self-metrics for the http transport", metrics)


if __name__ == "__main__":
    main()
