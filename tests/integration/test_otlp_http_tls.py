#!/usr/bin/python3
"""OTLP/HTTP over TLS (protocols.http.tls) with Python's ssl + http.client as
the real client, certificates made at test time with the openssl CLI:

- HTTPS POST of protobuf and JSON, several requests on one keep-alive
  connection, a 400 KB body (many TLS records), ALPN picks http/1.1 and a
  client that offers only h2 is refused;
- mTLS: no client certificate -> refused by the handshake, a certificate
  from the CA -> 200; min_version 1.3 refuses a TLS 1.2-only client;
- plain HTTP to the TLS port gets a plaintext 400 saying so and the
  connection closes; bytes that are neither HTTP nor TLS, and a client that
  never finishes the handshake, are closed;
- `Connection: close` ends with the server's close_notify (a clean TLS EOF);
- SIGHUP reloads the certificate for new connections;
- a good client exporting over TLS all along sees zero errors.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "otlp"))
from amtest import Agentmeter, Results, free_port, http_get, wait_for  # noqa: E402
import otlptest as ot  # noqa: E402

results = Results()
ts, _, _, _ = ot.stubs()
PROTO = "application/x-protobuf"
JSON = "application/json"


def config(ports, c):
    return f"""
receivers:
  otlp/tls:
    protocols:
      http:
        endpoint: "127.0.0.1:{ports['tls']}"
        tls: {{ cert_file: "{c}/live.crt", key_file: "{c}/live.key" }}
  otlp/mtls:
    protocols:
      http:
        endpoint: "127.0.0.1:{ports['mtls']}"
        tls:
          cert_file: "{c}/server.crt"
          key_file: "{c}/server.key"
          client_ca_file: "{c}/ca.crt"
          min_version: "1.3"
exporters:
  debug: {{ verbosity: detailed }}
service:
  telemetry: {{ metrics: {{ address: "127.0.0.1:{ports['telemetry']}" }} }}
  pipelines:
    traces: {{ receivers: [otlp/tls, otlp/mtls], exporters: [debug] }}
"""


def client_context(certs, ca="ca.crt", cert=None, alpn=None, max_version=None):
    ctx = ssl.create_default_context(cafile=os.path.join(certs, ca))
    if cert:
        ctx.load_cert_chain(os.path.join(certs, f"{cert}.crt"), os.path.join(certs, f"{cert}.key"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def post(conn, body, ctype=PROTO, extra=None):
    headers = {"Content-Type": ctype}
    headers.update(extra or {})
    conn.request("POST", "/v1/traces", body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def https(port, ctx, timeout=10):
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)


def closed_by_peer(sock, timeout):
    """True when the server closes the socket (EOF or reset) within timeout."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def main():
    certs = tempfile.mkdtemp(prefix="otlp-http-certs-")
    ot.make_certs(certs)
    shutil.copy(os.path.join(certs, "server.crt"), os.path.join(certs, "live.crt"))
    shutil.copy(os.path.join(certs, "server.key"), os.path.join(certs, "live.key"))
    ports = {k: free_port() for k in ("tls", "mtls", "telemetry")}
    am = Agentmeter(config(ports, certs))
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
    tls_port, mtls_port = ports["tls"], ports["mtls"]

    # Started first, checked last: a client that connects and never
    # finishes the handshake is closed by the header deadline (10 s).
    silent = socket.create_connection(("127.0.0.1", tls_port))
    silent_result = {}

    def watch_silent():
        silent_result["closed"] = closed_by_peer(silent, 20)

    silent_thread = threading.Thread(target=watch_silent, daemon=True)
    silent_thread.start()

    def protobuf_and_json():
        conn = https(tls_port, client_context(certs))
        status, body, resp = post(conn, ot.make_request(3, name="t-proto").SerializeToString())
        assert status == 200, (status, body)
        assert resp.getheader("Content-Type") == PROTO, resp.getheaders()
        reply = ts.ExportTraceServiceResponse()
        reply.ParseFromString(body)
        assert not reply.HasField("partial_success")
        doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
            "name": "t-json"}]}]}]}
        status, body, _ = post(conn, json.dumps(doc).encode(), ctype=JSON)
        assert status == 200 and json.loads(body) == {}, (status, body)
        conn.close()
        wait_for(lambda: "t-proto 2" in am.stdout() and "t-json" in am.stdout(),
                 what="spans sent over TLS")

    def keep_alive():
        conn = https(tls_port, client_context(certs))
        for i in range(5):
            status, body, _ = post(conn, ot.make_request(1, name=f"t-ka-{i}").SerializeToString())
            assert status == 200, (i, status, body)
        sock = conn.sock
        for i in range(5, 8):
            post(conn, ot.make_request(1, name=f"t-ka-{i}").SerializeToString())
        assert conn.sock is sock, "the connection was not kept alive"
        conn.close()

    def big_body():
        body = ot.make_request(6000, name="t-big").SerializeToString()
        assert len(body) > 300_000, len(body)
        conn = https(tls_port, client_context(certs))
        status, resp_body, _ = post(conn, body)
        assert status == 200, (status, resp_body)
        conn.close()
        wait_for(lambda: "t-big 5999" in am.stdout(), what="the 6000-span request")

    def alpn():
        ctx = client_context(certs, alpn=["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", tls_port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.selected_alpn_protocol() == "http/1.1", tls.selected_alpn_protocol()
        ctx = client_context(certs, alpn=["h2"])
        try:
            with socket.create_connection(("127.0.0.1", tls_port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass
        except ssl.SSLError as exc:
            assert "NO APPLICATION PROTOCOL" in str(exc).upper().replace("_", " "), exc
        else:
            raise AssertionError("an h2-only client was served by the HTTP/1.1 port")

    results.run("HTTPS POST, protobuf and JSON -> 200", protobuf_and_json)
    results.run("eight requests on one keep-alive TLS connection", keep_alive)
    results.run("a 400 KB body over TLS", big_body)
    results.run("ALPN selects http/1.1; an h2-only client is refused", alpn)

    stop = threading.Event()
    good = {"ok": 0, "errors": []}

    def good_client():
        # One keep-alive connection for the whole run: it must survive the
        # bad clients and the certificate reload beside it.
        conn = https(tls_port, client_context(certs))
        i = 0
        while not stop.is_set():
            try:
                status, body, _ = post(conn, ot.make_request(1, name=f"t-good-{i}")
                                       .SerializeToString())
                if status == 200:
                    good["ok"] += 1
                else:
                    good["errors"].append((status, body[:200]))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                good["errors"].append(repr(exc))
                conn.close()
                conn = https(tls_port, client_context(certs))
            i += 1
        conn.close()

    thread = threading.Thread(target=good_client, daemon=True)
    thread.start()
    wait_for(lambda: good["ok"] > 0, what="the good client's first export")

    def plaintext_to_tls_port():
        conn = http.client.HTTPConnection("127.0.0.1", tls_port, timeout=10)
        status, body, resp = post(conn, ot.make_request(1, name="t-plain").SerializeToString())
        assert status == 400, (status, body)
        assert b"HTTP request to an HTTPS server" in body, body
        assert resp.getheader("Connection") == "close", resp.getheaders()
        conn.close()
        assert "t-plain" not in am.stdout(), "plaintext spans were accepted"

    def garbage_then_close():
        with socket.create_connection(("127.0.0.1", tls_port)) as s:
            s.sendall(b"\x00\x01\x02\x03" * 64)
            assert closed_by_peer(s, 10), "connection left open after a failed handshake"

    def mtls_without_cert():
        conn = https(mtls_port, client_context(certs))
        try:
            status, body, _ = post(conn, ot.make_request(1, name="t-nocert").SerializeToString())
        except ssl.SSLError as exc:
            # TLS 1.3: the client finishes its side first and reads the
            # server's certificate_required alert in place of a response
            # (the server lingers after the alert, so it is not a reset).
            assert "CERTIFICATE REQUIRED" in str(exc).upper().replace("_", " "), exc
        else:
            raise AssertionError(f"served without a client certificate: {status} {body[:100]}")
        finally:
            conn.close()
        assert "t-nocert" not in am.stdout()

    def mtls_with_cert():
        conn = https(mtls_port, client_context(certs, cert="client"))
        status, body, _ = post(conn, ot.make_request(2, name="t-mtls").SerializeToString())
        assert status == 200, (status, body)
        conn.close()
        wait_for(lambda: "t-mtls 1" in am.stdout(), what="spans sent over mTLS")

    def mtls_tls12_refused():
        ctx = client_context(certs, cert="client", max_version=ssl.TLSVersion.TLSv1_2)
        try:
            with socket.create_connection(("127.0.0.1", mtls_port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass
        except ssl.SSLError:
            return
        raise AssertionError("a TLS 1.2 handshake succeeded against min_version 1.3")

    def close_notify():
        ctx = client_context(certs)
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False)
            body = ot.make_request(1, name="t-close").SerializeToString()
            tls.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Content-Type: " + PROTO.encode() + b"\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
            data = b""
            while True:
                chunk = tls.recv(65536)  # SSLEOFError if the TCP FIN came bare
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            tls.close()

    def reload_certs():
        ot.make_ca(certs, "ca2")
        ot.make_leaf(certs, "ca2", "server2", server=True)
        shutil.copy(f"{certs}/server2.crt", f"{certs}/live.crt")
        shutil.copy(f"{certs}/server2.key", f"{certs}/live.key")
        am.signal(signal.SIGHUP)

        def new_cert_served():
            try:
                conn = https(tls_port, client_context(certs, ca="ca2.crt"), timeout=3)
                status, _, _ = post(conn, ot.make_request(1, name="t-reloaded")
                                    .SerializeToString())
                conn.close()
                return status == 200
            except (ssl.SSLError, OSError):
                return False
        wait_for(new_cert_served, timeout=15, interval=0.2, what="the reloaded certificate")
        # And the old CA no longer verifies new connections.
        try:
            conn = https(tls_port, client_context(certs), timeout=3)
            post(conn, b"")
        except ssl.SSLCertVerificationError:
            return
        raise AssertionError("the old certificate is still served after SIGHUP")

    results.run("plain HTTP to the TLS port -> plaintext 400, connection closed",
                plaintext_to_tls_port)
    results.run("bytes that are not TLS -> handshake fails, connection closed",
                garbage_then_close)
    results.run("mTLS without a client certificate is refused", mtls_without_cert)
    results.run("mTLS with a client certificate -> 200", mtls_with_cert)
    results.run("mTLS min_version 1.3 refuses a TLS 1.2 client", mtls_tls12_refused)
    results.run("Connection: close ends with close_notify", close_notify)
    results.run("certificate reloaded on SIGHUP", reload_certs)

    # Let the good client run a little past the last bad client.
    target = good["ok"] + 20
    wait_for(lambda: good["ok"] >= target, what="the good client after the bad ones")
    stop.set()
    thread.join(timeout=30)
    results.check("good TLS client beside the bad ones saw zero errors",
                  not good["errors"] and good["ok"] > 0,
                  f"ok={good['ok']} errors={good['errors'][:3]}")

    silent_thread.join(timeout=25)
    silent.close()
    results.check("a client that never finishes the handshake is closed",
                  silent_result.get("closed") is True, str(silent_result))

    def metrics():
        _, body, _ = http_get(f"http://{telemetry}/metrics")
        text = body.decode()
        for rcv in ("otlp/tls", "otlp/mtls"):
            line = f'agentmeter_receiver_accepted_spans_total{{receiver="{rcv}",transport="http"}}'
            assert line in text, line
        assert am.proc.poll() is None, "agentmeter exited"

    results.run("self-metrics count spans on both TLS receivers", metrics)


if __name__ == "__main__":
    main()
