#!/usr/bin/python3
"""100,000 spans through agentmeter into the mock Kafka cluster, with every
broker taken down in the middle and brought back: exactly 100,000 spans
arrive, each once, and agentmeter_exporter_send_failed_spans_total stays 0
(issue 6, "done when").

AM_KAFKA_SPANS (default 100000) and AM_KAFKA_VOLUME_OUTAGE_S (default 8)
scale it.  The receiver pushes back (503) while the small sending queue is
full; the client retries those requests, as an OTLP exporter would.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "kafka"))
from amtest import Agentmeter, Results, free_port  # noqa: E402
import kafkatest as kt  # noqa: E402

TOTAL = int(os.environ.get("AM_KAFKA_SPANS", "100000"))
OUTAGE_S = float(os.environ.get("AM_KAFKA_VOLUME_OUTAGE_S", "8"))
PER_REQUEST = 1000
SPANS_PER_TRACE = 10
EXPORTER = "kafka/spans"

results = Results()


def test_volume_with_outage():
    mock = kt.KafkaMock(brokers=3, topics=["agent-spans:8"])
    telemetry = f"127.0.0.1:{free_port()}"
    http = free_port()
    brokers = ", ".join(f'"{b}"' for b in mock.bootstrap.split(","))
    exporters = f"""  {EXPORTER}:
    brokers: [{brokers}]
    topic: agent-spans
    partition_by: session.id
    sending_queue: {{ queue_size: 20000 }}
"""
    am = Agentmeter(kt.config(telemetry, free_port(), http, exporters, [EXPORTER]))
    try:
        am.wait_ready(telemetry)
        sender = kt.Sender(http)
        o = kt.otlp()
        # Build every request first, with compact spans (no factory bookkeeping).
        requests = []
        n = 0
        trace = 0
        while n < TOTAL:
            req = o.service.ExportTraceServiceRequest()
            rs = req.resource_spans.add()
            kv = rs.resource.attributes.add()
            kv.key, kv.value.string_value = "service.name", "volume"
            ss = rs.scope_spans.add()
            count = min(PER_REQUEST, TOTAL - n)
            for i in range(count):
                if (n + i) % SPANS_PER_TRACE == 0:
                    trace += 1
                sp = ss.spans.add()
                sp.trace_id = trace.to_bytes(16, "big")
                sp.span_id = (n + i + 1).to_bytes(8, "big")
                sp.name = "chat"
                sp.start_time_unix_nano = 1_700_000_000_000_000_000 + n + i
                sp.end_time_unix_nano = sp.start_time_unix_nano + 1000
                a = sp.attributes.add()
                a.key, a.value.string_value = "session.id", f"s{trace % 97}"
                b = sp.attributes.add()
                b.key, b.value.double_value = "cost.self", 0.001
            n += count
            requests.append(req.SerializeToString())

        t0 = time.monotonic()
        half = len(requests) // 2
        for data in requests[:half]:
            sender.send(data)
        mock.cmd("down-all")
        outage_end = time.monotonic() + OUTAGE_S
        at = half
        while time.monotonic() < outage_end and at < len(requests):
            if sender.try_send(requests[at]):
                at += 1
            else:
                time.sleep(0.25)  # pacing the refused client
        refused_in_outage = sender.refused
        mock.cmd("up-all")
        for data in requests[at:]:
            sender.send(data, timeout=120)
        kt.wait_sent(telemetry, EXPORTER, TOTAL, timeout=180)
        took = time.monotonic() - t0
        sent = kt.exporter_metric(telemetry, "agentmeter_exporter_sent_spans_total", EXPORTER)
        failed = kt.exporter_metric(telemetry, "agentmeter_exporter_send_failed_spans_total",
                                    EXPORTER)
        assert failed == 0, f"send_failed_spans_total {failed}"
        assert sent == TOTAL, f"sent_spans_total {sent}"
        assert refused_in_outage > 0, "no pushback during the outage"

        msgs = kt.consume(mock.bootstrap, "agent-spans", timeout=120)
        seen = set()
        count = 0
        partition_of = {}
        for m in msgs:
            req = o.service.ExportTraceServiceRequest.FromString(m["value"])
            key = m["key"]
            assert partition_of.setdefault(key, m["partition"]) == m["partition"], key
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        count += 1
                        seen.add(sp.span_id)
        assert count == TOTAL, f"{count} spans in Kafka, {len(seen)} distinct"
        assert len(seen) == TOTAL, f"{len(seen)} distinct spans"
        print(f"     {TOTAL} spans in {len(msgs)} messages, {took:.1f}s including a "
              f"{OUTAGE_S:.0f}s outage; {refused_in_outage} requests refused meanwhile")
        code = am.stop()
        assert code == 0, f"exit {code}"
    finally:
        am.kill()
        mock.close()


results.run(f"{TOTAL} spans, brokers down and back midway: all delivered once, none failed",
            test_volume_with_outage)
results.finish()
