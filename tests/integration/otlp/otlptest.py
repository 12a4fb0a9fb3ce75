"""Helpers for the OTLP receiver's integration tests.

- stubs(): Python gRPC stubs generated at test time from proto/ (grpc_tools,
  Debian python3-grpc-tools) into a temp dir, imported from there.
- Wire builders for inputs no well-behaved client would send (a 10,000-deep
  AnyValue, raw gRPC frames).
- nghttp(): the nghttp2 CLI as a raw HTTP/2 client for requests grpcio will
  not make (wrong content-type, unknown grpc-encoding, truncated frames);
  returns the response headers and trailers it printed.
- make_certs(): a CA, a server certificate for 127.0.0.1 and a client
  certificate, made with the openssl CLI.
"""
import importlib
import os
import re
import subprocess
import sys
import tempfile

SOURCE_DIR = os.environ.get(
    "AM_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOS = ["common.proto", "resource.proto", "trace.proto", "trace_service.proto", "status.proto"]

_stub_modules = None


def stubs():
    """(trace_service_pb2, trace_service_pb2_grpc, common_pb2, status_pb2)."""
    global _stub_modules
    if _stub_modules is not None:
        return _stub_modules
    out = tempfile.mkdtemp(prefix="otlp-stubs-")
    proto_dir = os.path.join(SOURCE_DIR, "proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir,
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    *[os.path.join(proto_dir, p) for p in PROTOS]], check=True)
    sys.path.insert(0, out)
    _stub_modules = tuple(importlib.import_module(m) for m in
                          ("trace_service_pb2", "trace_service_pb2_grpc", "common_pb2",
                           "status_pb2"))
    return _stub_modules


def make_request(n_spans=3, bad_ids=0, name="span", trace_byte=1):
    """An ExportTraceServiceRequest of n_spans valid spans plus bad_ids spans
    whose trace_id is 15 bytes (rejected as a partial success)."""
    ts, _, common, _ = stubs()
    req = ts.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=common.AnyValue(string_value="test"))
    ss = rs.scope_spans.add()
    for i in range(n_spans):
        sp = ss.spans.add(trace_id=bytes([trace_byte] * 15 + [i % 256]),
                          span_id=(i + 1).to_bytes(8, "big"), name=f"{name} {i}")
        sp.attributes.add(key="gen_ai.usage.input_tokens", value=common.AnyValue(int_value=i))
    for i in range(bad_ids):
        ss.spans.add(trace_id=b"\x07" * 15, span_id=b"\x01" * 8, name=f"bad {i}")
    return req


# ---- raw protobuf wire bytes --------------------------------------------

def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A LEN field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deep_request(depth):
    """One span whose attribute value nests `depth` AnyValues (arrays)."""
    value = field(1, b"x")  # AnyValue.string_value
    for _ in range(depth - 1):
        value = field(5, field(1, value))  # AnyValue.array_value{values: [value]}
    kv = field(1, b"k") + field(2, value)
    span = field(1, bytes(range(16))) + field(2, bytes(range(8))) + field(9, kv)
    return field(1, field(2, field(2, span)))


def grpc_frame(message, compressed=False, declared_len=None):
    n = len(message) if declared_len is None else declared_len
    return bytes([1 if compressed else 0]) + n.to_bytes(4, "big") + message


# ---- nghttp CLI -----------------------------------------------------------

_RECV_HEADER = re.compile(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)$")


def nghttp(url, body, headers, timeout=10):
    """POST body with nghttp; returns {header: value} of every header and
    trailer received on the stream (last one wins)."""
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(body)
        path = f.name
    try:
        args = ["nghttp", "-v", "-t", str(timeout), "-d", path]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        proc = subprocess.run(args + [url], capture_output=True, text=True, timeout=timeout + 5)
    finally:
        os.unlink(path)
    got = {}
    for line in proc.stdout.splitlines():
        m = _RECV_HEADER.search(line)
        if m:
            got[m.group(1)] = m.group(2)
    return got


# ---- certificates ---------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", cwd=directory)


def make_leaf(directory, ca, name, server):
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        if server:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        else:
            f.write("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.crt",
             cwd=directory)


def make_certs(directory):
    """ca.crt, server.{crt,key} (127.0.0.1), client.{crt,key}; returns directory."""
    make_ca(directory, "ca")
    make_leaf(directory, "ca", "server", server=True)
    make_leaf(directory, "ca", "client", server=False)
    return directory


def read(path):
    with open(path, "rb") as f:
        return f.read()
