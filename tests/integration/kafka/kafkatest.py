"""Helpers for the kafka exporter's integration tests.

- KafkaMock: the tests/kafka_mock program (librdkafka's mock cluster, real
  Kafka protocol on loopback), steered over its stdin.
- consume(): every message of a topic read back with kcat, binary-safe.
- otlp(): protobuf classes generated from $AM_SOURCE_DIR/proto at test time.
- Span/request builders, an OTLP/HTTP sender that counts 503s, and a reader
  of agentmeter's /metrics.
"""
import os
import random
import re
import select
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "lib"))
from amtest import SOURCE_DIR, http_get, http_post, wait_for  # noqa: E402

BINARY_DIR = os.environ.get("AM_BINARY_DIR", os.path.join(SOURCE_DIR, "build"))
KAFKA_MOCK = os.environ.get("AM_KAFKA_MOCK",
                            os.path.join(BINARY_DIR, "tests", "kafka_mock", "kafka_mock"))
KCAT = "kcat"

_otlp = None


def otlp():
    """Namespace with trace_service_pb2, trace_pb2, common_pb2, resource_pb2."""
    global _otlp
    if _otlp is not None:
        return _otlp
    out = tempfile.mkdtemp(prefix="am-pb2-")
    proto_dir = os.path.join(SOURCE_DIR, "proto")
    subprocess.run(["/usr/bin/python3", "-m", "grpc_tools.protoc", f"-I{proto_dir}",
                    f"--python_out={out}", "common.proto", "resource.proto", "trace.proto",
                    "trace_service.proto"], check=True, cwd=proto_dir)
    sys.path.insert(0, out)
    import common_pb2  # noqa: E402
    import resource_pb2  # noqa: E402
    import trace_pb2  # noqa: E402
    import trace_service_pb2  # noqa: E402
    _otlp = types.SimpleNamespace(common=common_pb2, resource=resource_pb2, trace=trace_pb2,
                                  service=trace_service_pb2)
    return _otlp


class KafkaMock:
    """A mock cluster with `brokers` brokers; topics as "name:partitions"."""

    def __init__(self, brokers=3, topics=(), timeout=10.0):
        self.log_path = tempfile.mktemp(prefix="kafka-mock-", suffix=".log")
        self._log = open(self.log_path, "wb")
        args = [KAFKA_MOCK, "--brokers", str(brokers)]
        for t in topics:
            args += ["--topic", t]
        if not os.access(KAFKA_MOCK, os.X_OK):
            raise AssertionError(f"{KAFKA_MOCK} is not built")
        self.brokers = brokers
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log)
        self.bootstrap = self._readline(timeout)
        if not re.match(r"^[0-9.]+:\d+(,[0-9.]+:\d+)*$", self.bootstrap):
            raise AssertionError(f"kafka_mock printed {self.bootstrap!r}")

    def _readline(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError("kafka_mock did not answer: " + buf.decode(errors="replace"))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1)
                if not chunk:
                    raise AssertionError("kafka_mock closed its stdout")
                buf += chunk
        return buf.decode().strip()

    def cmd(self, line, timeout=10.0):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        answer = self._readline(timeout)
        if answer != "ok":
            raise AssertionError(f"kafka_mock {line!r}: {answer}")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
            except Exception:  # already gone
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def consume(bootstrap, topic, timeout=60.0):
    """Every message of `topic`: list of dicts key (bytes|None), partition,
    offset, value (bytes).  kcat prints lengths first, so binary is safe."""
    proc = subprocess.run([KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                           "-f", "%p %o %K %S\n%k%s"],
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"kcat exited {proc.returncode}: {proc.stderr.decode()}")
    data = proc.stdout
    out = []
    at = 0
    while at < len(data):
        nl = data.index(b"\n", at)
        partition, offset, key_len, value_len = (int(x) for x in data[at:nl].split())
        at = nl + 1
        key = None
        if key_len >= 0:
            key = data[at:at + key_len]
            at += key_len
        value_len = max(value_len, 0)
        value = data[at:at + value_len]
        at += value_len
        out.append({"key": key, "partition": partition, "offset": offset, "value": value})
    return out


def anyvalue(v):
    pb = otlp().common.AnyValue()
    if isinstance(v, bool):
        pb.bool_value = v
    elif isinstance(v, int):
        pb.int_value = v
    elif isinstance(v, float):
        pb.double_value = v
    else:
        pb.string_value = str(v)
    return pb


def attrs_to_pb(target, attrs):
    for k, v in attrs.items():
        kv = target.add()
        kv.key = k
        kv.value.CopyFrom(anyvalue(v))


def pb_attrs(kvs):
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


class SpanFactory:
    """Spans with unique ids; remembers what it made (span id hex -> attrs)."""

    def __init__(self, seed=1):
        self.rng = random.Random(seed)
        self.made = {}

    def span(self, trace_id, name, attrs, parent=None):
        pb = otlp().trace.Span()
        span_id = self.rng.getrandbits(64).to_bytes(8, "big")
        pb.trace_id = trace_id
        pb.span_id = span_id
        if parent is not None:
            pb.parent_span_id = parent
        pb.name = name
        pb.kind = 3
        now = time.time_ns()
        pb.start_time_unix_nano = now - 1_000_000
        pb.end_time_unix_nano = now
        attrs_to_pb(pb.attributes, attrs)
        self.made[span_id.hex()] = dict(attrs)
        return pb

    def trace_id(self):
        return self.rng.getrandbits(128).to_bytes(16, "big")


def request(groups):
    """groups: list of (resource attrs, [spans]) -> ExportTraceServiceRequest."""
    o = otlp()
    req = o.service.ExportTraceServiceRequest()
    for res_attrs, spans in groups:
        rs = req.resource_spans.add()
        attrs_to_pb(rs.resource.attributes, res_attrs)
        ss = rs.scope_spans.add()
        ss.scope.name = "kafka-test"
        ss.spans.extend(spans)
    return req


class Sender:
    """POSTs OTLP/HTTP protobuf; retries 503 until a deadline, counting them."""

    def __init__(self, http_port):
        self.url = f"http://127.0.0.1:{http_port}/v1/traces"
        self.refused = 0
        self.accepted_requests = 0

    def try_send(self, req_bytes):
        status, body, _ = http_post(self.url, req_bytes,
                                    {"Content-Type": "application/x-protobuf"})
        if status == 200:
            self.accepted_requests += 1
            return True
        if status in (429, 503):
            self.refused += 1
            return False
        raise AssertionError(f"POST answered {status}: {body[:200]!r}")

    def send(self, req, timeout=120.0):
        data = req.SerializeToString() if not isinstance(req, bytes) else req
        deadline = time.monotonic() + timeout
        delay = 0.05
        while not self.try_send(data):
            if time.monotonic() > deadline:
                raise AssertionError("receiver kept refusing for {timeout}s")
            time.sleep(delay)  # the peer asked to back off (Retry-After)
            delay = min(delay * 2, 0.5)


def metric(telemetry, name, labels):
    """Value of a series from /metrics, 0 when absent."""
    status, body, _ = http_get(f"http://{telemetry}/metrics")
    if status != 200:
        raise AssertionError(f"/metrics answered {status}")
    pattern = re.compile(r"^" + re.escape(name) + r"\{([^}]*)\} (\S+)$", re.M)
    for m in pattern.finditer(body.decode()):
        if all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def exporter_metric(telemetry, name, exporter):
    return metric(telemetry, name, {"exporter": exporter})


def wait_sent(telemetry, exporter, spans, timeout=60.0):
    """Wait until the exporter reports `spans` sent (delivery reports)."""
    def done():
        sent = exporter_metric(telemetry, "agentmeter_exporter_sent_spans_total", exporter)
        failed = exporter_metric(telemetry, "agentmeter_exporter_send_failed_spans_total",
                                 exporter)
        return sent + failed >= spans
    wait_for(done, timeout=timeout, interval=0.1, what=f"{spans} spans delivered by {exporter}")


def decode_spans(messages):
    """[(message, span_id hex, span attrs, resource attrs)] from otlp_proto values."""
    o = otlp()
    out = []
    for m in messages:
        req = o.service.ExportTraceServiceRequest.FromString(m["value"])
        for rs in req.resource_spans:
            res = pb_attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    out.append((m, sp.span_id.hex(), pb_attrs(sp.attributes), res, sp))
    return out


def config(telemetry, grpc_port, http_port, exporters, pipeline_exporters, processors=None,
           log_level="info"):
    procs = ""
    if processors:
        procs = f"processors: [{', '.join(processors)}]"
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc_port}" }}
      http: {{ endpoint: "127.0.0.1:{http_port}" }}
exporters:
{exporters}
service:
  telemetry:
    metrics: {{ address: "{telemetry}" }}
    logs: {{ level: {log_level} }}
  pipelines:
    traces: {{ receivers: [otlp], {procs + ', ' if procs else ''}exporters: [{', '.join(pipeline_exporters)}] }}
"""
