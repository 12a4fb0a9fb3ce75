#!/usr/bin/python3
"""The kafka exporter against the real Kafka protocol (librdkafka's mock
cluster, tests/kafka_mock), read back with a real consumer (kcat):

- every span arrives exactly once with its attributes; all messages of a
  session share the key and the partition;
- a batch over max_message_bytes is split; a span over it is rejected and
  counted; otlp_json output is OTLP/JSON with hex ids;
- injected produce errors: retriable ones are delivered anyway (idempotent
  producer retries), non-retriable ones are counted as failed at once;
- all brokers down (20 s, AM_KAFKA_OUTAGE_S), then back: nothing is lost,
  and meanwhile the receiver answered 503 once the small queue filled;
- shutdown with the brokers down ends within flush_timeout and says what
  was not delivered;
- librdkafka's complaints about `producer:` are config errors with file:line.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "kafka"))
from amtest import AM_BIN, Agentmeter, Results, free_port, wait_for  # noqa: E402
import kafkatest as kt  # noqa: E402

OUTAGE_S = float(os.environ.get("AM_KAFKA_OUTAGE_S", "20"))
results = Results()


class Setup:
    """A mock cluster plus an agentmeter exporting to it."""

    def __init__(self, exporter_yaml, topics=("agent-spans:4",), brokers=3, pipeline_exporters=None,
                 exporter_id="kafka/spans"):
        self.mock = kt.KafkaMock(brokers=brokers, topics=topics)
        self.telemetry = f"127.0.0.1:{free_port()}"
        self.grpc, self.http = free_port(), free_port()
        self.exporter_id = exporter_id
        brokers_yaml = ", ".join(f'"{b}"' for b in self.mock.bootstrap.split(","))
        exporters = f"  {exporter_id}:\n    brokers: [{brokers_yaml}]\n" + exporter_yaml
        self.am = Agentmeter(kt.config(self.telemetry, self.grpc, self.http, exporters,
                                       pipeline_exporters or [exporter_id]))
        try:
            self.am.wait_ready(self.telemetry)
        except Exception:
            self.close()
            raise
        self.sender = kt.Sender(self.http)

    def metric(self, name):
        return kt.exporter_metric(self.telemetry, name, self.exporter_id)

    def sent(self):
        return self.metric("agentmeter_exporter_sent_spans_total")

    def failed(self):
        return self.metric("agentmeter_exporter_send_failed_spans_total")

    def close(self):
        """Stop both; an unclean exit fails the test unless it already failed."""
        failing = sys.exc_info()[0] is not None
        code = None
        try:
            code = self.am.stop()
        finally:
            self.am.kill()
            self.mock.close()
        if code not in (0, None) and not failing:
            raise AssertionError(f"agentmeter exited {code}:\n{self.am.stderr()[-4000:]}")
        return code


def assert_exactly_once(decoded, factory, expected_ids):
    seen = {}
    for _, span_id, attrs, _, _ in decoded:
        seen[span_id] = seen.get(span_id, 0) + 1
        assert attrs == factory.made[span_id], f"span {span_id}: {attrs} != {factory.made[span_id]}"
    dups = {k: v for k, v in seen.items() if v > 1}
    assert not dups, f"{len(dups)} spans arrived more than once, e.g. {list(dups.items())[:3]}"
    missing = set(expected_ids) - set(seen)
    assert not missing, f"{len(missing)} of {len(expected_ids)} spans never arrived"
    extra = set(seen) - set(expected_ids)
    assert not extra, f"{len(extra)} unexpected spans"


# ---------------------------------------------------------------------------


def test_exactly_once_and_session_keys():
    s = Setup("    topic: agent-spans\n    partition_by: session.id\n")
    try:
        f = kt.SpanFactory(seed=11)
        expected_key = {}
        total = 0
        for r in range(12):
            sess = f"sess-{r % 5}"
            t1, t2, t3 = f.trace_id(), f.trace_id(), f.trace_id()
            # session on the resource only
            a = [f.span(t1, "chat", {"gen_ai.usage.input_tokens": 10 + i, "cost.self": 0.25 * i,
                                     "gen_ai.request.model": "gpt-4o"}) for i in range(6)]
            # session on the span wins over the resource
            b = [f.span(t2, "execute_tool", {"session.id": f"span-{sess}", "tool": "x",
                                             "cost.currency": "USD"}) for _ in range(4)]
            # no session at all: keyed by trace id
            c = [f.span(t3, "invoke_agent", {"step": i}) for i in range(3)]
            for sp in a:
                expected_key[sp.span_id.hex()] = sess
            for sp in b:
                expected_key[sp.span_id.hex()] = f"span-{sess}"
            for sp in c:
                expected_key[sp.span_id.hex()] = t3.hex()
            req = kt.request([({"service.name": "agent", "session.id": sess}, a + b),
                              ({"service.name": "other"}, c)])
            s.sender.send(req)
            total += len(a) + len(b) + len(c)
        kt.wait_sent(s.telemetry, s.exporter_id, total)
        assert s.sent() == total and s.failed() == 0, (s.sent(), s.failed())
        msgs = kt.consume(s.mock.bootstrap, "agent-spans")
        decoded = kt.decode_spans(msgs)
        assert_exactly_once(decoded, f, expected_key.keys())
        partition_of = {}
        for m, span_id, _, _, _ in decoded:
            key = m["key"].decode() if m["key"] is not None else None
            assert key == expected_key[span_id], f"span {span_id} key {key} != " \
                f"{expected_key[span_id]}"
            assert partition_of.setdefault(key, m["partition"]) == m["partition"], \
                f"key {key} in partitions {partition_of[key]} and {m['partition']}"
        # Every message holds one key's spans only.
        for m in msgs:
            keys = {expected_key[sp] for mm, sp, _, _, _ in decoded if mm is m}
            assert len(keys) == 1, f"message with keys {keys}"
        assert len(set(partition_of.values())) > 1, "all keys in one partition"
    finally:
        s.close()


def test_split_and_reject():
    s = Setup("    topic: small\n    partition_by: none\n    max_message_bytes: 4000\n",
              topics=("small:2",), exporter_id="kafka/small")
    try:
        f = kt.SpanFactory(seed=12)
        t = f.trace_id()
        spans = [f.span(t, f"span-{i}", {"payload": "p" * 120, "i": i}) for i in range(200)]
        big = f.span(t, "huge", {"payload": "x" * 10000})
        s.sender.send(kt.request([({"service.name": "a"}, spans[:120]),
                                  ({"service.name": "b"}, spans[120:] + [big])]))
        kt.wait_sent(s.telemetry, s.exporter_id, len(spans) + 1)
        assert s.failed() == 1, f"send_failed_spans_total {s.failed()} (the huge span)"
        assert s.sent() == len(spans), s.sent()
        msgs = kt.consume(s.mock.bootstrap, "small")
        assert len(msgs) >= 8, f"{len(msgs)} messages for ~30 KB at 4000 bytes each"
        for m in msgs:
            assert len(m["value"]) <= 4000, len(m["value"])
            assert m["key"] is None
        decoded = kt.decode_spans(msgs)
        assert_exactly_once(decoded, f, [sp.span_id.hex() for sp in spans])
        services = {res["service.name"] for _, _, _, res, _ in decoded}
        assert services == {"a", "b"}, services
        assert "rejected" in s.am.stderr(), s.am.stderr()[-2000:]
    finally:
        s.close()


def test_otlp_json():
    s = Setup("    topic: json-spans\n    encoding: otlp_json\n    max_message_bytes: 20000\n",
              topics=("json-spans:2",), exporter_id="kafka/json")
    try:
        f = kt.SpanFactory(seed=13)
        made = []
        for _ in range(4):
            t = f.trace_id()
            made += [f.span(t, "chat", {"cost.self": 0.125, "gen_ai.usage.input_tokens": 1234,
                                        "note": "x" * 600, "ok": True}) for _ in range(30)]
        s.sender.send(kt.request([({"service.name": "j"}, made)]))
        kt.wait_sent(s.telemetry, s.exporter_id, len(made))
        msgs = kt.consume(s.mock.bootstrap, "json-spans")
        seen = {}
        by_id = {sp.span_id.hex(): sp for sp in made}
        for m in msgs:
            assert len(m["value"]) <= 20000
            doc = json.loads(m["value"])
            for rs in doc["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        assert re.fullmatch(r"[0-9a-f]{32}", sp["traceId"]), sp["traceId"]
                        assert re.fullmatch(r"[0-9a-f]{16}", sp["spanId"]), sp["spanId"]
                        orig = by_id[sp["spanId"]]
                        assert sp["traceId"] == orig.trace_id.hex()
                        assert m["key"].decode() == sp["traceId"], "key is the trace id"
                        attrs = {a["key"]: a["value"] for a in sp["attributes"]}
                        assert attrs["cost.self"] == {"doubleValue": 0.125}, attrs
                        assert attrs["gen_ai.usage.input_tokens"] == {"intValue": "1234"}, attrs
                        assert attrs["ok"] == {"boolValue": True}, attrs
                        assert isinstance(sp["startTimeUnixNano"], str)
                        seen[sp["spanId"]] = seen.get(sp["spanId"], 0) + 1
        assert sorted(seen) == sorted(by_id) and set(seen.values()) == {1}, \
            f"{len(seen)} distinct of {len(by_id)}"
        assert len(msgs) > 4, f"{len(msgs)} messages: expected the 20000-byte limit to split"
    finally:
        s.close()


def test_injected_errors():
    s = Setup("    topic: agent-spans\n    partition_by: none\n")
    try:
        f = kt.SpanFactory(seed=14)
        # Retriable: librdkafka retries them (idempotently): delivered once.
        s.mock.cmd("error Produce NOT_LEADER_FOR_PARTITION 3")
        s.mock.cmd("error Produce REQUEST_TIMED_OUT 2")
        first = [f.span(f.trace_id(), "chat", {"n": i}) for i in range(40)]
        s.sender.send(kt.request([({"service.name": "e"}, first)]))
        kt.wait_sent(s.telemetry, s.exporter_id, len(first))
        assert s.sent() == len(first) and s.failed() == 0, (s.sent(), s.failed())
        # Non-retriable: failed at once, counted, logged; later data flows.
        s.mock.cmd("error Produce MSG_SIZE_TOO_LARGE 1")
        second = [f.span(f.trace_id(), "chat", {"n": i}) for i in range(7)]
        s.sender.send(kt.request([({"service.name": "e"}, second)]))
        wait_for(lambda: s.failed() == len(second), timeout=30, what="7 spans counted failed")
        fourth = [f.span(f.trace_id(), "chat", {"n": i}) for i in range(9)]
        s.sender.send(kt.request([({"service.name": "e"}, fourth)]))
        kt.wait_sent(s.telemetry, s.exporter_id, len(first) + len(second) + len(fourth))
        assert s.sent() == len(first) + len(fourth), s.sent()
        # Last, since librdkafka then fails the topic's queued messages until
        # its metadata is refreshed (as documented for authorization errors).
        s.mock.cmd("error Produce TOPIC_AUTHORIZATION_FAILED 1")
        third = [f.span(f.trace_id(), "chat", {"n": i}) for i in range(5)]
        s.sender.send(kt.request([({"service.name": "e"}, third)]))
        wait_for(lambda: s.failed() == len(second) + len(third), timeout=30,
                 what="5 more spans counted failed")
        assert s.sent() == len(first) + len(fourth), s.sent()
        err = s.am.stderr()
        assert re.search(r"not delivered.*[Ss]ize too large", err), err[-3000:]
        assert re.search(r"not delivered.*[Aa]uthoriz", err), err[-3000:]
        decoded = kt.decode_spans(kt.consume(s.mock.bootstrap, "agent-spans"))
        assert_exactly_once(decoded, f, [sp.span_id.hex() for sp in first + fourth])
    finally:
        s.close()


def test_outage_backpressure():
    queue_size = 500
    s = Setup(f"    topic: agent-spans\n    sending_queue: {{ queue_size: {queue_size} }}\n")
    try:
        f = kt.SpanFactory(seed=15)
        sent_ids = []
        spans_per_req = 100

        def new_req():
            t = f.trace_id()
            spans = [f.span(t, "chat", {"i": i}) for i in range(spans_per_req)]
            return spans, kt.request([({"service.name": "o"}, spans)]).SerializeToString()

        # Warm up: the producer knows the cluster before it goes away.
        spans, data = new_req()
        s.sender.send(data)
        sent_ids += [sp.span_id.hex() for sp in spans]
        kt.wait_sent(s.telemetry, s.exporter_id, len(sent_ids))

        s.mock.cmd("down-all")
        outage_end = time.monotonic() + OUTAGE_S
        accepted_during = 0
        pending = None
        max_queue = 0
        while time.monotonic() < outage_end:
            if pending is None:
                pending = new_req()
            if s.sender.try_send(pending[1]):
                sent_ids += [sp.span_id.hex() for sp in pending[0]]
                accepted_during += len(pending[0])
                pending = None
            else:
                time.sleep(0.25)  # pacing the client while it is refused
            max_queue = max(max_queue, s.metric("agentmeter_exporter_queue_size"))
        refused = s.sender.refused
        assert refused > 0, "the receiver never pushed back during the outage"
        assert accepted_during >= queue_size, \
            f"refused before the queue filled ({accepted_during} accepted)"
        assert accepted_during <= queue_size + 10 * spans_per_req, \
            f"{accepted_during} accepted while the brokers were down"
        assert max_queue >= queue_size, max_queue
        assert s.metric("agentmeter_exporter_queue_capacity") == queue_size

        s.mock.cmd("up-all")
        if pending is not None:
            s.sender.send(pending[1], timeout=60)
            sent_ids += [sp.span_id.hex() for sp in pending[0]]
        spans, data = new_req()
        s.sender.send(data, timeout=60)
        sent_ids += [sp.span_id.hex() for sp in spans]
        kt.wait_sent(s.telemetry, s.exporter_id, len(sent_ids), timeout=90)
        assert s.failed() == 0 and s.sent() == len(sent_ids), (s.sent(), s.failed())
        wait_for(lambda: s.metric("agentmeter_exporter_queue_size") == 0, timeout=10,
                 what="queue drained")
        # Pressure is released: new data is accepted at once.
        spans, data = new_req()
        assert s.sender.try_send(data), "still refusing after the queue drained"
        sent_ids += [sp.span_id.hex() for sp in spans]
        kt.wait_sent(s.telemetry, s.exporter_id, len(sent_ids))
        decoded = kt.decode_spans(kt.consume(s.mock.bootstrap, "agent-spans"))
        assert_exactly_once(decoded, f, sent_ids)
        print(f"     outage {OUTAGE_S:.0f}s: {accepted_during} spans accepted, "
              f"{refused} requests refused, {len(sent_ids)} spans delivered once")
    finally:
        s.close()


def test_shutdown_reports_undelivered():
    s = Setup("    topic: agent-spans\n    flush_timeout: 2s\n")
    try:
        f = kt.SpanFactory(seed=16)
        spans = [f.span(f.trace_id(), "chat", {}) for _ in range(3)]
        s.sender.send(kt.request([({"service.name": "w"}, spans)]))
        kt.wait_sent(s.telemetry, s.exporter_id, 3)
        s.mock.cmd("down-all")
        spans = [f.span(f.trace_id(), "chat", {}) for _ in range(25)]
        s.sender.send(kt.request([({"service.name": "w"}, spans)]))
        wait_for(lambda: s.metric("agentmeter_exporter_queue_size") == 25, timeout=10,
                 what="25 spans in flight")
        t0 = time.monotonic()
        code = s.am.stop(timeout=20)
        took = time.monotonic() - t0
        assert code == 0, f"exit {code}"
        assert took < 8, f"shutdown took {took:.1f}s with flush_timeout 2s"
        err = s.am.stderr()
        assert re.search(r"25 spans and events were not delivered within flush_timeout", err), \
            err[-3000:]
    finally:
        s.close()


def test_timeouts_reproduced_then_given_up():
    s = Setup("    topic: agent-spans\n    partition_by: none\n    timeout: 1500ms\n"
              "    retry_on_failure: { initial_interval: 300ms, max_interval: 1s, "
              "max_elapsed_time: 30s }\n")
    try:
        f = kt.SpanFactory(seed=17)
        warm = [f.span(f.trace_id(), "chat", {}) for _ in range(2)]
        s.sender.send(kt.request([({"service.name": "r"}, warm)]))
        kt.wait_sent(s.telemetry, s.exporter_id, 2)
        # Down for longer than `timeout`: librdkafka times the message out,
        # the exporter produces it again until the brokers are back.
        s.mock.cmd("down-all")
        spans = [f.span(f.trace_id(), "chat", {"n": i}) for i in range(6)]
        s.sender.send(kt.request([({"service.name": "r"}, spans)]))
        wait_for(lambda: s.metric("agentmeter_exporter_kafka_reproduced_messages_total") >= 2,
                 timeout=20, what="timed-out message produced again")
        s.mock.cmd("up-all")
        kt.wait_sent(s.telemetry, s.exporter_id, 8, timeout=30)
        assert s.failed() == 0 and s.sent() == 8, (s.sent(), s.failed())
        assert "Message timed out" in s.am.stderr()
        decoded = kt.decode_spans(kt.consume(s.mock.bootstrap, "agent-spans"))
        assert_exactly_once(decoded, f, [sp.span_id.hex() for sp in warm + spans])
    finally:
        s.close()
    s = Setup("    topic: agent-spans\n    timeout: 1s\n"
              "    retry_on_failure: { initial_interval: 200ms, max_interval: 400ms, "
              "max_elapsed_time: 3s }\n")
    try:
        f = kt.SpanFactory(seed=18)
        s.sender.send(kt.request([({"service.name": "r"}, [f.span(f.trace_id(), "c", {})])]))
        kt.wait_sent(s.telemetry, s.exporter_id, 1)
        s.mock.cmd("down-all")
        spans = [f.span(f.trace_id(), "chat", {}) for _ in range(4)]
        t0 = time.monotonic()
        s.sender.send(kt.request([({"service.name": "r"}, spans)]))
        wait_for(lambda: s.failed() == 4, timeout=20, what="given up after max_elapsed_time")
        took = time.monotonic() - t0
        assert 2.5 < took < 10, f"gave up after {took:.1f}s with max_elapsed_time 3s"
        assert s.metric("agentmeter_exporter_queue_size") == 0
        s.mock.cmd("up-all")
    finally:
        s.close()


def test_librdkafka_queue_full_overflow():
    s = Setup("    topic: agent-spans\n    producer: { queue.buffering.max.messages: 5 }\n")
    try:
        f = kt.SpanFactory(seed=19)
        warm = [f.span(f.trace_id(), "chat", {})]
        s.sender.send(kt.request([({"service.name": "q"}, warm)]))
        kt.wait_sent(s.telemetry, s.exporter_id, 1)
        s.mock.cmd("down-all")
        # 40 traces: 40 messages, of which librdkafka takes 5.
        spans = [f.span(f.trace_id(), "chat", {"n": i}) for i in range(40)]
        s.sender.send(kt.request([({"service.name": "q"}, spans)]))
        wait_for(lambda: s.metric("agentmeter_exporter_queue_size") == 40, timeout=10,
                 what="40 spans held")
        s.mock.cmd("up-all")
        kt.wait_sent(s.telemetry, s.exporter_id, 41, timeout=60)
        assert s.failed() == 0 and s.sent() == 41, (s.sent(), s.failed())
        decoded = kt.decode_spans(kt.consume(s.mock.bootstrap, "agent-spans"))
        assert_exactly_once(decoded, f, [sp.span_id.hex() for sp in warm + spans])
    finally:
        s.close()


def test_config_errors():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "bad.yaml")
    with open(path, "w") as fh:
        fh.write("""receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:4318" }
exporters:
  kafka:
    brokers: ["127.0.0.1:9092"]
    compression: brotli
    producer:
      no.such.property: 1
      acks: all
      linger.ms: soon
service:
  pipelines:
    traces: { receivers: [otlp], exporters: [kafka] }
""")
    proc = subprocess.run([AM_BIN, "validate", "--config", path], capture_output=True, text=True,
                          timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert re.search(re.escape(path) + r":8:.*compression", out), out
    with open(path, "w") as fh:
        fh.write("""receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:4318" }
exporters:
  kafka:
    brokers: ["127.0.0.1:9092"]
    producer:
      no.such.property: 1
      acks: all
      linger.ms: soon
service:
  pipelines:
    traces: { receivers: [otlp], exporters: [kafka] }
""")
    proc = subprocess.run([AM_BIN, "validate", "--config", path], capture_output=True, text=True,
                          timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert re.search(re.escape(path) + r":9:.*producer\.no\.such\.property.*No such", out), out
    assert re.search(re.escape(path) + r":10:.*producer\.acks.*required_acks", out), out
    assert re.search(re.escape(path) + r":11:.*producer\.linger\.ms", out), out


results.run("config errors from librdkafka carry file:line", test_config_errors)
results.run("every span once, with attributes; a session keeps key and partition",
            test_exactly_once_and_session_keys)
results.run("over max_message_bytes: split; one huge span rejected and counted",
            test_split_and_reject)
results.run("otlp_json: valid OTLP/JSON with hex ids", test_otlp_json)
results.run("injected produce errors: retriable delivered, non-retriable counted",
            test_injected_errors)
results.run(f"brokers down {OUTAGE_S:.0f}s: receiver pushes back, nothing lost",
            test_outage_backpressure)
results.run("delivery timeouts: produced again, given up after max_elapsed_time",
            test_timeouts_reproduced_then_given_up)
results.run("librdkafka queue full: held in the overflow, none lost",
            test_librdkafka_queue_full_overflow)
results.run("shutdown with brokers down: bounded, undelivered reported",
            test_shutdown_reports_undelivered)
results.finish()
