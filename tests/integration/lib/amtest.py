"""Helpers shared by agentmeter's integration tests.

Start the real binary on free loopback ports, wait on conditions with
deadlines (never fixed sleeps), read its endpoints, and count results in the
closing line format CI understands ("N passed, N failed").
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

AM_BIN = os.environ.get("AM_BIN", "build/agentmeter")
SOURCE_DIR = os.environ.get("AM_SOURCE_DIR", os.getcwd())


_handed_out = set()


def free_port():
    """A TCP port free on 127.0.0.1 right now, never one this process already
    handed out (the kernel may offer the same ephemeral port twice in a row,
    and a test that gets one port for two listeners fails in confusing ways)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port found")


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll predicate() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the peer may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def http_get(url, timeout=5.0):
    """(status, body bytes, headers) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def http_post(url, body, headers, timeout=10.0):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


class Agentmeter:
    """A running agentmeter with its own config and free ports."""

    def __init__(self, config_text, extra_args=(), env=None):
        self.dir = tempfile.mkdtemp(prefix="amtest-")
        self.config_path = os.path.join(self.dir, "config.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen([AM_BIN, "--config", self.config_path, *extra_args],
                                     stdout=self._stdout, stderr=self._stderr, env=full_env)

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, telemetry, timeout=15.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"agentmeter exited with {self.proc.returncode}:\n"
                                     + self.stderr())
            return http_get(f"http://{telemetry}/readyz", timeout=1.0)[0] == 200
        wait_for(ready, timeout=timeout, what="/readyz")

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=30.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._stdout.close()
            self._stderr.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Results:
    """Collects named checks and prints the closing line CI reads."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name} {detail}")

    def run(self, name, fn):
        try:
            fn()
            self.passed += 1
            print(f"ok   {name}")
        except Exception as exc:  # report and go on to the next case
            self.failed += 1
            print(f"FAIL {name}: {exc}")

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(0 if self.failed == 0 else 1)
