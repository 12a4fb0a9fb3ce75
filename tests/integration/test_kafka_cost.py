#!/usr/bin/python3
"""The cost chain into Kafka, end to end: spans priced by the pipeline
(tracetree, propagate, ratecard, rollup, session) arrive in `agent-spans`
with their cost attributes, keyed by session; the session summaries the
session processor emits reach `agent-cost-events` through the costmetrics
connector and a logs pipeline, one JSON event per message, keyed by session.
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "kafka"))
from amtest import Agentmeter, Results, free_port, wait_for  # noqa: E402
import kafkatest as kt  # noqa: E402

results = Results()


def config(telemetry, grpc_port, http_port, brokers):
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc_port}" }}
      http: {{ endpoint: "127.0.0.1:{http_port}" }}
processors:
  tracetree: {{ wait: 200ms, max_wait: 2s }}
  propagate: {{ attributes: [session.id, tenant.id] }}
  ratecard: {{}}
  rollup: {{}}
  session: {{ idle_timeout: 1s }}
connectors:
  costmetrics: {{ flush_interval: 100ms }}
exporters:
  kafka/spans:
    brokers: [{brokers}]
    topic: agent-spans
    partition_by: session.id
  kafka/events:
    brokers: [{brokers}]
    topic: agent-cost-events
    encoding: json
service:
  telemetry:
    metrics: {{ address: "{telemetry}" }}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tracetree, propagate, ratecard, rollup, session]
      exporters: [kafka/spans, costmetrics]
    logs:
      receivers: [costmetrics]
      exporters: [kafka/events]
"""


def test_costed_spans_and_session_events():
    mock = kt.KafkaMock(brokers=3, topics=["agent-spans:4", "agent-cost-events:2"])
    telemetry = f"127.0.0.1:{free_port()}"
    http = free_port()
    brokers = ", ".join(f'"{b}"' for b in mock.bootstrap.split(","))
    am = Agentmeter(config(telemetry, free_port(), http, brokers))
    try:
        am.wait_ready(telemetry)
        f = kt.SpanFactory(seed=21)
        sessions = ["sess-alpha", "sess-beta"]
        groups = []
        total = 0
        for sess in sessions:
            for _ in range(2):
                t = f.trace_id()
                root = f.span(t, "invoke_agent planner", {"session.id": sess,
                                                           "tenant.id": "acme",
                                                           "gen_ai.operation.name": "invoke_agent"})
                chat = f.span(t, "chat gpt-4o", {"gen_ai.operation.name": "chat",
                                                 "gen_ai.provider.name": "openai",
                                                 "gen_ai.request.model": "gpt-4o",
                                                 "gen_ai.usage.input_tokens": 1000,
                                                 "gen_ai.usage.output_tokens": 100},
                              parent=root.span_id)
                tool = f.span(t, "execute_tool search", {"gen_ai.operation.name": "execute_tool",
                                                         "gen_ai.tool.name": "search"},
                              parent=root.span_id)
                groups += [root, chat, tool]
                total += 3
        sender = kt.Sender(http)
        sender.send(kt.request([({"service.name": "agent"}, groups)]))
        kt.wait_sent(telemetry, "kafka/spans", total, timeout=30)

        def events_sent():
            return kt.exporter_metric(telemetry, "agentmeter_exporter_sent_events_total",
                                      "kafka/events") >= len(sessions)
        wait_for(events_sent, timeout=30, interval=0.2, what="session summaries in Kafka")

        decoded = kt.decode_spans(kt.consume(mock.bootstrap, "agent-spans"))
        assert len(decoded) == total, f"{len(decoded)} spans of {total}"
        for m, span_id, attrs, _, sp in decoded:
            sess = attrs.get("session.id")
            assert sess in sessions, f"{sp.name}: session.id {sess} (propagated down?)"
            assert m["key"].decode() == sess, (m["key"], sess)
            assert "cost.self" in attrs and "cost.status" in attrs, f"{sp.name}: {attrs}"
            if sp.name.startswith("chat"):
                assert attrs["cost.status"] == "priced", attrs
                assert attrs["cost.self"] > 0, attrs
                assert attrs.get("cost.currency") == "USD", attrs

        events = kt.consume(mock.bootstrap, "agent-cost-events")
        summaries = {}
        for m in events:
            doc = json.loads(m["value"])
            assert m["key"] is not None and doc["key"] == m["key"].decode(), (m["key"], doc)
            if doc["event"] == "session.summary":
                summaries[doc["key"]] = doc
        assert sorted(summaries) == sessions, sorted(summaries)
        for sess, doc in summaries.items():
            assert doc["scope"] == "session.id", doc
            assert doc["traces"] == 2, doc
            assert float(doc["cost"]["total"]) > 0, doc
        code = am.stop()
        assert code == 0, f"exit {code}"
    finally:
        am.kill()
        mock.close()


results.run("cost chain: priced spans keyed by session, session summaries as JSON events",
            test_costed_spans_and_session_events)
results.finish()
