"""Helpers for the cost-metrics integration tests.

- snappy_decompress: the snappy *block* format, written from the format
  description (python3-snappy is not installed on the test images), strict
  enough to notice the framed/stream format or a wrong length preamble;
- decode_write_request: a minimal protobuf reader for Remote-Write 1.0's
  WriteRequest, so the test checks the bytes agentmeter put on the wire
  rather than trusting a library that would accept sloppy input;
- FakeRemoteWrite: an HTTP server that answers with scripted statuses and
  records every request (headers, body, arrival time);
- spans_request: an OTLP/JSON ExportTraceServiceRequest whose spans already
  carry the cost attributes the ratecard would write, with values chosen by
  the test, so expected sums are exact (decimal.Decimal);
- parse_prom_text: Prometheus text format samples -> {(name, labels): value}.
"""
import decimal
import http.server
import os
import re
import struct
import threading
import time

STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"


def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def snappy_decompress(buf):
    """Decompress one snappy block (not the framed format)."""
    if buf.startswith(STREAM_IDENTIFIER):
        raise ValueError("snappy framed/stream format, expected the block format")
    expected, pos = _varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(buf[pos:pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > len(buf):
                raise ValueError("literal past the end")
            out += buf[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos:pos + 2], "little")
            pos += 2
        else:
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise ValueError(f"bad copy offset {offset}")
        for _ in range(length):  # copies may overlap their own output
            out.append(out[-offset])
    if len(out) != expected:
        raise ValueError(f"preamble says {expected} bytes, got {len(out)}")
    return bytes(out)


def _fields(buf):
    """Yield (field number, wire type, value) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = buf[pos:pos + length]
            if len(value) != length:
                raise ValueError("truncated field")
            pos += length
        elif wire == 5:
            value = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield field, wire, value


def decode_write_request(raw):
    """WriteRequest bytes -> [(labels as [(name, value)] in wire order,
    samples as [(value, timestamp_ms)])]."""
    series = []
    for field, wire, value in _fields(raw):
        if field != 1:
            continue  # metadata (3) is allowed, not used here
        assert wire == 2
        labels, samples = [], []
        for f2, w2, v2 in _fields(value):
            if f2 == 1:
                name = val = ""
                for f3, _, v3 in _fields(v2):
                    if f3 == 1:
                        name = v3.decode("utf-8")
                    elif f3 == 2:
                        val = v3.decode("utf-8")
                labels.append((name, val))
            elif f2 == 2:
                sval, ts = 0.0, 0
                for f3, w3, v3 in _fields(v2):
                    if f3 == 1 and w3 == 1:
                        sval = struct.unpack("<d", v3)[0]
                    elif f3 == 2 and w3 == 0:
                        ts = v3 - (1 << 64) if v3 >= 1 << 63 else v3
                samples.append((sval, ts))
        series.append((labels, samples))
    return series


LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def check_series(series):
    """Problems with Remote-Write 1.0 label rules, as a list of strings."""
    problems = []
    for labels, samples in series:
        names = [n for n, _ in labels]
        if names != sorted(names, key=lambda s: s.encode()):
            problems.append(f"labels not sorted: {names}")
        if len(set(names)) != len(names):
            problems.append(f"repeated label names: {names}")
        if "__name__" not in names:
            problems.append(f"no __name__: {labels}")
        for name, value in labels:
            if not LABEL_NAME.match(name):
                problems.append(f"invalid label name {name!r}")
            if value == "":
                problems.append(f"empty value for {name}")
            if name == "__name__" and not METRIC_NAME.match(value):
                problems.append(f"invalid metric name {value!r}")
        ts = [t for _, t in samples]
        if ts != sorted(ts):
            problems.append(f"samples out of time order: {ts}")
        if not samples:
            problems.append(f"series without samples: {labels}")
    return problems


class FakeRemoteWrite:
    """A remote-write endpoint answering scripted statuses, in order; after
    the script, 200.  Every request is recorded."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with outer.lock:
                    index = len(outer.requests)
                    status = outer.statuses[index] if index < len(outer.statuses) else 200
                    outer.requests.append({
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "time": time.monotonic(),
                        "status": status,
                        "path": self.path,
                    })
                reply = b"" if status < 300 else f"scripted {status}\n".encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _hex(n, width):
    return f"{n:0{width}x}"


def _attr(key, value):
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, (float, decimal.Decimal)):
        return {"key": key, "value": {"doubleValue": float(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


def priced_span(trace_no, span_no, model, tenant, inp, out, tokens_in=0, tokens_out=0,
                parent_no=None, extra=None):
    """An LLM span priced the way the ratecard would: cost.self = input + output."""
    start = 1_762_160_400_000_000_000 + trace_no * 1_000_000_000 + span_no * 1000
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "tenant.id": tenant,
        "cost.status": "priced",
        "cost.currency": "USD",
        "cost.self": inp + out,
        "cost.input": inp,
        "cost.output": out,
        "cost.price_id": "test@1:" + model,
    }
    if tokens_in:
        attrs["gen_ai.usage.input_tokens"] = tokens_in
    if tokens_out:
        attrs["gen_ai.usage.output_tokens"] = tokens_out
    attrs.update(extra or {})
    span = {
        "traceId": _hex(trace_no + 1, 32),
        "spanId": _hex(trace_no * 1000 + span_no + 1, 16),
        "name": "chat " + model,
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 500_000_000),
        "attributes": [_attr(k, v) for k, v in attrs.items()],
    }
    if parent_no is not None:
        span["parentSpanId"] = _hex(trace_no * 1000 + parent_no + 1, 16)
    return span


def spans_request(spans, service="support-bot"):
    return {
        "resourceSpans": [{
            "resource": {"attributes": [_attr("service.name", service)]},
            "scopeSpans": [{"scope": {"name": "metrics-test"}, "spans": spans}],
        }]
    }


def random_costs(rng, count):
    """count (input, output) pairs of Decimal with up to 9 decimals."""
    pairs = []
    for _ in range(count):
        inp = decimal.Decimal(rng.randrange(0, 50_000_000)) / decimal.Decimal(10**9)
        out = decimal.Decimal(rng.randrange(1, 20_000_000)) / decimal.Decimal(10**9)
        pairs.append((inp, out))
    return pairs


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( \d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prom_text(text):
    """{(name, frozenset(labels.items())): float} of a text-format page."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"unparsable line {line!r}")
        labels = dict(_LABEL.findall(m.group(3) or ""))
        samples[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return samples


def nanos(value):
    """A float metric value in nano-units (exact for values from fixed point)."""
    return int(round(decimal.Decimal(repr(value)) * 10**9))


def prometheus_binary():
    return os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")


def promtool_binary():
    return os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")
