#!/usr/bin/python3
"""The binary as an operator meets it: it starts, serves /healthz, /readyz
and /metrics on the telemetry address, reports every config mistake with
file:line, survives a bad SIGHUP, applies a good one, and exits 0 on SIGTERM.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from amtest import AM_BIN, Agentmeter, Results, free_port, http_get, wait_for  # noqa: E402

results = Results()


def config(telemetry, grpc, http, verbosity="basic"):
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc}" }}
      http: {{ endpoint: "127.0.0.1:{http}" }}
exporters:
  debug: {{ verbosity: {verbosity} }}
service:
  telemetry:
    metrics: {{ address: "{telemetry}" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [debug] }}
"""


def test_start_metrics_sigterm():
    telemetry = f"127.0.0.1:{free_port()}"
    am = Agentmeter(config(telemetry, free_port(), free_port()))
    try:
        am.wait_ready(telemetry)
        status, body, _ = http_get(f"http://{telemetry}/healthz")
        assert status == 200, f"/healthz answered {status}"
        status, body, headers = http_get(f"http://{telemetry}/metrics")
        assert status == 200, f"/metrics answered {status}"
        text = body.decode()
        assert headers.get("Content-Type", "").startswith("text/plain"), headers
        assert re.search(r"^agentmeter_process_resident_memory_bytes [1-9][0-9]*$", text, re.M), text
        assert "# TYPE agentmeter_process_cpu_seconds_total counter" in text, text
        status, _, _ = http_get(f"http://{telemetry}/nope")
        assert status == 404, f"unknown path answered {status}"
        code = am.stop()
        assert code == 0, f"exit code {code} after SIGTERM:\n{am.stderr()}"
    finally:
        am.kill()


def test_validate_reports_every_mistake():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "bad.yaml")
    with open(path, "w") as f:
        f.write("""receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:4317" }
exporters:
  debug: { verbosty: basic }
processors:
  nosuchthing: {}
service:
  pipelines:
    traces: { receivers: [otlp], exporters: [debgu] }
""")
    proc = subprocess.run([AM_BIN, "validate", "--config", path], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    out = proc.stdout
    # Each mistake is named with file:line and the key.
    assert re.search(re.escape(path) + r":6:.*verbosty.*did you mean \"verbosity\"", out), out
    assert re.search(re.escape(path) + r":8:.*nosuchthing", out), out
    assert re.search(re.escape(path) + r":11:.*debgu", out), out


def test_validate_good_config():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "good.yaml")
    with open(path, "w") as f:
        f.write(config("127.0.0.1:8888", 4317, 4318))
    proc = subprocess.run([AM_BIN, "validate", "--config", path], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sighup_bad_then_good():
    telemetry = f"127.0.0.1:{free_port()}"
    grpc, http = free_port(), free_port()
    am = Agentmeter(config(telemetry, grpc, http))
    try:
        am.wait_ready(telemetry)
        # A broken config: reported, the old one keeps running.
        with open(am.config_path, "w") as f:
            f.write("receivers: [unclosed\n")
        am.signal(signal.SIGHUP)
        wait_for(lambda: "new config rejected" in am.stderr(), what="rejection log line")
        assert am.proc.poll() is None, "agentmeter died on a bad SIGHUP"
        assert http_get(f"http://{telemetry}/healthz")[0] == 200
        # A good config on a new telemetry address: applied.
        telemetry2 = f"127.0.0.1:{free_port()}"
        with open(am.config_path, "w") as f:
            f.write(config(telemetry2, grpc, http, verbosity="detailed"))
        am.signal(signal.SIGHUP)
        am.wait_ready(telemetry2)
        code = am.stop()
        assert code == 0, f"exit code {code}:\n{am.stderr()}"
    finally:
        am.kill()


def test_embedded_default_validates():
    proc = subprocess.run([AM_BIN, "components"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "receiver otlp" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([AM_BIN, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("agentmeter "), proc.stdout


results.run("start, /healthz, /metrics, SIGTERM exits 0", test_start_metrics_sigterm)
results.run("validate prints all three mistakes with file:line", test_validate_reports_every_mistake)
results.run("validate accepts a good config", test_validate_good_config)
results.run("SIGHUP: bad config rejected, good config applied", test_sighup_bad_then_good)
results.run("components and --version", test_embedded_default_validates)
results.finish()
