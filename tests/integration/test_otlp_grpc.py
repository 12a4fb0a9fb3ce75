#!/usr/bin/python3
"""OTLP/gRPC receiver against real clients (Debian python3-grpcio, the
nghttp2 CLI, openssl): plaintext h2c with identity and gzip, partial
success, bearer auth, TLS, mTLS with min_version 1.3, certificate reload on
SIGHUP, and every bad input of issue 3 answered with its exact status while
a well-behaved client beside it keeps exporting with zero errors: oversized
(before and after decompression), truncated frame, garbage protobuf, a
10,000-deep AnyValue, unknown grpc-encoding, a compressed flag without an
encoding, wrong content-type, unknown method, missing token, and a client
that opens 1,000 connections.
"""
import gzip
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "otlp"))
import grpc  # noqa: E402
from amtest import Agentmeter, Results, free_port, http_get, wait_for  # noqa: E402
import otlptest as ot  # noqa: E402

TOKEN = "t0ken-" + "%08x" % random.getrandbits(32)
results = Results()
ts, tsg, common, status_pb2 = ot.stubs()


def config(ports, certs):
    c = certs
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{ports['plain']}", max_recv_msg_size_mib: 1 }}
  otlp/auth:
    protocols:
      grpc:
        endpoint: "127.0.0.1:{ports['auth']}"
        auth: {{ bearer_token: "${{env:AM_TEST_TOKEN}}" }}
  otlp/tls:
    protocols:
      grpc:
        endpoint: "127.0.0.1:{ports['tls']}"
        tls: {{ cert_file: "{c}/live.crt", key_file: "{c}/live.key" }}
  otlp/mtls:
    protocols:
      grpc:
        endpoint: "127.0.0.1:{ports['mtls']}"
        tls:
          cert_file: "{c}/server.crt"
          key_file: "{c}/server.key"
          client_ca_file: "{c}/ca.crt"
          min_version: "1.3"
  otlp/flood:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{ports['flood']}", max_connections: 50, header_timeout: 1s }}
exporters:
  debug: {{ verbosity: detailed }}
service:
  telemetry: {{ metrics: {{ address: "127.0.0.1:{ports['telemetry']}" }} }}
  pipelines:
    traces:
      receivers: [otlp, otlp/auth, otlp/tls, otlp/mtls, otlp/flood]
      exporters: [debug]
"""


def export(channel, request, timeout=10, **kw):
    return tsg.TraceServiceStub(channel).Export(request, timeout=timeout, **kw)


def raw_export(channel, payload, path=ot.EXPORT_PATH, timeout=10, **kw):
    """Send bytes as the request message; returns the grpc.RpcError or None."""
    call = channel.unary_unary(path)
    try:
        call(payload, timeout=timeout, **kw)
        return None
    except grpc.RpcError as err:
        return err


def expect_code(err, code, fragment=None):
    assert err is not None, f"expected {code.name}, got OK"
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    if fragment is not None:
        assert fragment in (err.details() or ""), f"{fragment!r} not in {err.details()!r}"


class GoodClient(threading.Thread):
    """Exports continuously on its own channel; every failure is recorded."""

    def __init__(self, port, tag):
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.tag = tag
        self.stop_event = threading.Event()
        self.ok = 0
        self.errors = []

    def run(self):
        i = 0
        while not self.stop_event.is_set():
            try:
                resp = export(self.channel, ot.make_request(2, name=f"{self.tag}-{i}"))
                if resp.HasField("partial_success"):
                    self.errors.append(f"unexpected partial success {resp}")
                self.ok += 1
            except grpc.RpcError as err:
                self.errors.append(f"{err.code().name}: {err.details()}")
            i += 1

    def finish(self):
        self.stop_event.set()
        self.join(timeout=30)
        self.channel.close()


def main():
    certs = tempfile.mkdtemp(prefix="otlp-certs-")
    ot.make_certs(certs)
    shutil.copy(os.path.join(certs, "server.crt"), os.path.join(certs, "live.crt"))
    shutil.copy(os.path.join(certs, "server.key"), os.path.join(certs, "live.key"))
    ports = {k: free_port() for k in ("plain", "auth", "tls", "mtls", "flood", "telemetry")}
    am = Agentmeter(config(ports, certs), env={"AM_TEST_TOKEN": TOKEN})
    telemetry = f"127.0.0.1:{ports['telemetry']}"
    try:
        am.wait_ready(telemetry)
        run_all(am, ports, certs, telemetry)
    finally:
        code = am.stop()
        results.check("clean shutdown (exit 0)", code == 0, f"exit {code}\n{am.stderr()[-3000:]}")
        shutil.rmtree(certs, ignore_errors=True)
    results.finish()


def run_all(am, ports, certs, telemetry):
    plain = grpc.insecure_channel(f"127.0.0.1:{ports['plain']}")
    url = f"http://127.0.0.1:{ports['plain']}{ot.EXPORT_PATH}"

    def identity_and_gzip():
        for comp in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
            resp = export(plain, ot.make_request(3, name=f"plain-{comp.name}"), compression=comp)
            assert not resp.HasField("partial_success"), resp
        wait_for(lambda: "plain-Gzip 2" in am.stdout() and "plain-NoCompression 2" in am.stdout(),
                 what="spans in the debug exporter output")

    def partial_success():
        resp = export(plain, ot.make_request(2, bad_ids=3, name="partial"))
        assert resp.partial_success.rejected_spans == 3, resp
        assert "trace_id of 15 bytes" in resp.partial_success.error_message, resp
        wait_for(lambda: "partial 1" in am.stdout(), what="valid spans of a partial request")
        assert "bad 0" not in am.stdout()

    results.run("grpc h2c export, identity and gzip", identity_and_gzip)
    results.run("grpc partial_success for bad span ids", partial_success)

    good = GoodClient(ports["plain"], "good")
    good.start()
    wait_for(lambda: good.ok > 0, what="the good client's first export")

    def oversized():
        err = raw_export(plain, os.urandom(2 << 20))
        expect_code(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit")

    def oversized_after_decompression():
        # 4 MiB of zeros: a few KB on the wire, over the 1 MiB limit inflated.
        err = raw_export(plain, bytes(4 << 20), compression=grpc.Compression.Gzip)
        expect_code(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "decompressed message larger")

    def garbage():
        err = raw_export(plain, b"\xff\xfe\xfd garbage \x00\x01")
        expect_code(err, grpc.StatusCode.INVALID_ARGUMENT, "malformed protobuf")

    def deep_anyvalue():
        payload = ot.deep_request(10000)
        start = time.monotonic()
        err = raw_export(plain, payload)
        expect_code(err, grpc.StatusCode.INVALID_ARGUMENT, "max_attribute_depth")
        assert time.monotonic() - start < 2.0

    def unknown_method():
        err = raw_export(plain, b"", path="/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        expect_code(err, grpc.StatusCode.UNIMPLEMENTED)

    def truncated_frame():
        got = ot.nghttp(url, ot.grpc_frame(b"0123456789", declared_len=100),
                        {"content-type": "application/grpc", "te": "trailers"})
        assert got.get("grpc-status") == "13", got
        assert "truncated" in got.get("grpc-message", ""), got

    def unknown_encoding():
        got = ot.nghttp(url, ot.grpc_frame(b"abc", compressed=True),
                        {"content-type": "application/grpc", "grpc-encoding": "br",
                         "te": "trailers"})
        assert got.get("grpc-status") == "12", got
        assert "gzip" in got.get("grpc-accept-encoding", ""), got

    def compressed_without_encoding():
        got = ot.nghttp(url, ot.grpc_frame(gzip.compress(b"x"), compressed=True),
                        {"content-type": "application/grpc", "te": "trailers"})
        assert got.get("grpc-status") == "13", got
        assert "compressed flag" in got.get("grpc-message", ""), got

    def wrong_content_type():
        got = ot.nghttp(url, ot.grpc_frame(b""), {"content-type": "application/json"})
        assert got.get(":status") == "415", got

    def zstd_and_deflate():
        import zlib
        body = ot.make_request(1, name="deflate").SerializeToString()
        got = ot.nghttp(url, ot.grpc_frame(zlib.compress(body), compressed=True),
                        {"content-type": "application/grpc", "grpc-encoding": "deflate",
                         "te": "trailers"})
        assert got.get("grpc-status") == "0", got
        zst = subprocess.run(["zstd", "-q", "-c"], input=ot.make_request(
            1, name="zstd-grpc").SerializeToString(), capture_output=True, check=True).stdout
        got = ot.nghttp(url, ot.grpc_frame(zst, compressed=True),
                        {"content-type": "application/grpc", "grpc-encoding": "zstd",
                         "te": "trailers"})
        assert got.get("grpc-status") == "0", got
        wait_for(lambda: "zstd-grpc 0" in am.stdout(), what="the zstd span")

    for name, fn in [("oversized message -> RESOURCE_EXHAUSTED", oversized),
                     ("oversized after gzip -> RESOURCE_EXHAUSTED", oversized_after_decompression),
                     ("garbage protobuf -> INVALID_ARGUMENT", garbage),
                     ("10,000-deep AnyValue -> INVALID_ARGUMENT", deep_anyvalue),
                     ("unknown method -> UNIMPLEMENTED", unknown_method),
                     ("truncated frame -> INTERNAL", truncated_frame),
                     ("unknown grpc-encoding -> UNIMPLEMENTED + accept-encoding", unknown_encoding),
                     ("compressed flag without encoding -> INTERNAL", compressed_without_encoding),
                     ("wrong content-type -> HTTP 415", wrong_content_type),
                     ("grpc-encoding deflate and zstd", zstd_and_deflate)]:
        results.run(name, fn)

    def auth():
        ch = grpc.insecure_channel(f"127.0.0.1:{ports['auth']}")
        try:
            export(ch, ot.make_request(1))
            raise AssertionError("no token accepted")
        except grpc.RpcError as err:
            expect_code(err, grpc.StatusCode.UNAUTHENTICATED)
        try:
            export(ch, ot.make_request(1), metadata=[("authorization", "Bearer wrong")])
            raise AssertionError("wrong token accepted")
        except grpc.RpcError as err:
            expect_code(err, grpc.StatusCode.UNAUTHENTICATED)
        export(ch, ot.make_request(1, name="authed"), metadata=[("authorization", f"Bearer {TOKEN}")])
        ch.close()

    results.run("missing/wrong bearer token -> UNAUTHENTICATED, right one OK", auth)

    def tls():
        creds = grpc.ssl_channel_credentials(root_certificates=ot.read(f"{certs}/ca.crt"))
        ch = grpc.secure_channel(f"127.0.0.1:{ports['tls']}", creds)
        export(ch, ot.make_request(2, name="over-tls"))
        ch.close()
        wait_for(lambda: "over-tls 1" in am.stdout(), what="TLS spans")
        # A cleartext client on the TLS port fails to connect.
        ch = grpc.insecure_channel(f"127.0.0.1:{ports['tls']}")
        err = raw_export(ch, b"", timeout=3)
        assert err is not None and err.code() in (grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED), err
        ch.close()

    def mtls():
        root = ot.read(f"{certs}/ca.crt")
        creds = grpc.ssl_channel_credentials(root_certificates=root,
                                             private_key=ot.read(f"{certs}/client.key"),
                                             certificate_chain=ot.read(f"{certs}/client.crt"))
        ch = grpc.secure_channel(f"127.0.0.1:{ports['mtls']}", creds)
        export(ch, ot.make_request(2, name="over-mtls"))
        ch.close()
        ch = grpc.secure_channel(f"127.0.0.1:{ports['mtls']}",
                                 grpc.ssl_channel_credentials(root_certificates=root))
        err = raw_export(ch, ot.make_request(1).SerializeToString(), timeout=5)
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
        ch.close()
        # min_version 1.3: a TLS 1.2-only client is refused.
        proc = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{ports['mtls']}",
                               "-tls1_2", "-alpn", "h2", "-cert", f"{certs}/client.crt",
                               "-key", f"{certs}/client.key", "-CAfile", f"{certs}/ca.crt"],
                              input=b"", capture_output=True, timeout=10)
        assert proc.returncode != 0, "TLS 1.2 handshake succeeded"

    def reload_certs():
        # A new CA and server certificate replace the files; SIGHUP reloads.
        ot.make_ca(certs, "ca2")
        ot.make_leaf(certs, "ca2", "server2", server=True)
        shutil.copy(f"{certs}/server2.crt", f"{certs}/live.crt")
        shutil.copy(f"{certs}/server2.key", f"{certs}/live.key")
        am.signal(signal.SIGHUP)
        new_root = grpc.ssl_channel_credentials(root_certificates=ot.read(f"{certs}/ca2.crt"))

        def new_cert_served():
            ch = grpc.secure_channel(f"127.0.0.1:{ports['tls']}", new_root)
            try:
                export(ch, ot.make_request(1, name="after-reload"), timeout=3)
                return True
            except grpc.RpcError:
                return False
            finally:
                ch.close()
        wait_for(new_cert_served, timeout=15, interval=0.2, what="the reloaded certificate")

    results.run("TLS export; cleartext client refused", tls)
    results.run("mTLS export; client without certificate and TLS 1.2 refused", mtls)
    results.run("certificates reloaded on SIGHUP", reload_certs)

    def flood():
        flood_good = GoodClient(ports["flood"], "flood-good")
        flood_good.start()
        wait_for(lambda: flood_good.ok > 0, what="the flood-side good client")
        selector = selectors.DefaultSelector()
        socks = []
        try:
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", ports["flood"]), timeout=5)
                s.setblocking(False)
                selector.register(s, selectors.EVENT_READ)
                socks.append(s)
            open_socks = set(socks)
            early_closed = 0
            start = time.monotonic()
            deadline = start + 10
            while open_socks and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.2):
                    s = key.fileobj
                    try:
                        data = s.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    except BlockingIOError:
                        continue
                    if data == b"":
                        selector.unregister(s)
                        open_socks.discard(s)
                        if time.monotonic() - start < 0.9:
                            early_closed += 1
            assert not open_socks, f"{len(open_socks)} flood connections still open after 10s"
            # 49 slots were free: every other connection was closed at once.
            assert early_closed >= 900, f"only {early_closed} closed before the header timeout"
        finally:
            for s in socks:
                s.close()
            selector.close()
        # The slots are free again: a brand new client gets in.
        ch = grpc.insecure_channel(f"127.0.0.1:{ports['flood']}")
        export(ch, ot.make_request(1, name="after-flood"))
        ch.close()
        flood_good.finish()
        assert not flood_good.errors, flood_good.errors[:5]
        assert flood_good.ok > 0

    results.run("1,000-connection flood closed; client beside it unharmed", flood)

    good.finish()
    results.check("good client beside the bad inputs saw zero errors",
                  not good.errors and good.ok > 0, f"ok={good.ok} errors={good.errors[:5]}")

    def metrics():
        status, body, _ = http_get(f"http://{telemetry}/metrics")
        text = body.decode()
        assert status == 200, status
        for want in ('agentmeter_receiver_accepted_spans_total{receiver="otlp",transport="grpc"}',
                     'agentmeter_receiver_refused_spans_total{receiver="otlp",transport="grpc"}',
                     'code="INVALID_ARGUMENT"', 'code="RESOURCE_EXHAUSTED"'):
            assert want in text, f"{want} missing from /metrics"
        for line in text.splitlines():
            if line.startswith('agentmeter_receiver_refused_spans_total{receiver="otlp",transport="grpc"}'):
                assert int(float(line.split()[-1])) >= 3, line

    results.run("self-metrics count accepted/refused spans and requests", metrics)
    plain.close()


if __name__ == "__main__":
    main()
