#!/usr/bin/python3
"""End to end for cost engine I (issue 4): span trees, propagation, rate
cards, roll-up.

Each run starts agentmeter (OTLP gRPC + HTTP on free ports; tracetree with
wait 500ms, propagate, ratecard, rollup on two shards; the `file` exporter)
and compares what it exported, span by span, with what this test computes
itself (cost1/pricer.py) from what it sent and from the rate card YAML:

  1. agents (OpenTelemetry GenAI), built-in card (deploy/ratecards/default.yaml),
     also cross-checked against cost2/pricing.py;
  2. agents, with the test card cost1/ratecard.yaml (include_builtin: false):
     round prices, effective_from versions, provider filters, a tier cliff at
     6,000 input tokens, a reasoning price, decoy glob/regex/prefix entries,
     and no entry for gemini-2.5-flash (unpriced_model);
  3. openllmetry (Traceloop conventions), test card;
  4. openinference (Arize conventions), test card;
  5. one trace sent by hand as OTLP/HTTP JSON in three requests ~0.5 s apart,
     children before parents (grandchildren, then children, then the root):
     it is emitted once and whole with hand-computed costs, session.id from
     gen_ai.conversation.id and user.id from enduser.id; then a late span
     (sent after the trace went out) still gets the trace's session, user and
     tenant.

Per span: cost.status, cost.self (exact, in nano-units), its parts and
gen_ai.usage.cost.*, cost.price_id naming the matched entry, cost.currency,
cost.subtree (sum over the subtree), cost.trace.total on roots only (= sum
over the trace = sum of the leaf LLM and tool costs: invoke_agent spans that
repeat their children's tokens are not billed again), the propagated
session.id / user.id / tenant.id / gen_ai.agent.name, every span exactly once.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from decimal import Decimal

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "cost1"))
sys.path.insert(0, os.path.join(HERE, "cost2"))

import amtest  # noqa: E402
import pricer  # noqa: E402
import pricing  # noqa: E402  (cost2's independent pricer, reused as a cross-check)

JS_DIR = os.path.join(HERE, "js")
TEST_CARD = os.path.join(HERE, "cost1", "ratecard.yaml")
BUILTIN_CARD = os.path.join(amtest.SOURCE_DIR, "deploy", "ratecards", "default.yaml")
PROPAGATED = ["session.id", "user.id", "tenant.id", "gen_ai.agent.name"]
NANO = 1000000000
MORE = ("--sessions", "3", "--traces-per-session", "4")

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc}" }}
      http: {{ endpoint: "127.0.0.1:{http}" }}
processors:
  tracetree: {{ wait: 500ms }}
  propagate: {{ attributes: [{propagated}] }}
  ratecard: {ratecard}
  rollup: {{}}
exporters:
  file: {{ path: "{out}" }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:{telemetry}" }}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tracetree, propagate, ratecard, rollup]
      exporters: [file]
"""


def nano(x):
    return round(x * NANO) if isinstance(x, (int, float)) else None


def any_value(v):
    """Python value of an OTLP JSON AnyValue."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: any_value(kv.get("value", {})) for kv in v["kvlistValue"].get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


class Run:
    """One agentmeter with the file exporter; knows how to read its output."""

    def __init__(self, card=None):
        self.ports = {k: amtest.free_port() for k in ("grpc", "http", "telemetry")}
        ratecard = ("{ files: [\"%s\"], include_builtin: false }" % card) if card else "{}"
        self.card = card
        self.am = None
        self._config = dict(self.ports, ratecard=ratecard, propagated=", ".join(PROPAGATED))

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="amtest-cost1-")
        self.out = os.path.join(self.dir, "spans.jsonl")
        self.am = amtest.Agentmeter(CONFIG.format(out=self.out, **self._config),
                                    extra_args=["--shards", "2"])
        self.am.wait_ready(f"127.0.0.1:{self.ports['telemetry']}")
        return self

    @property
    def http_url(self):
        return f"http://127.0.0.1:{self.ports['http']}/v1/traces"

    def records(self):
        """Every exported span so far: {line, spanId, traceId, parentSpanId, attrs}."""
        out = []
        if not os.path.exists(self.out):
            return out
        with open(self.out, "rb") as f:
            data = f.read().decode("utf-8")
        lines = data.split("\n")[:-1]  # only complete lines
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            req = json.loads(line)
            for rs in req.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        out.append({
                            "line": n,
                            "spanId": sp["spanId"],
                            "traceId": sp["traceId"],
                            "parentSpanId": sp.get("parentSpanId", ""),
                            "attrs": {kv["key"]: any_value(kv.get("value", {}))
                                      for kv in sp.get("attributes", [])},
                        })
        return out

    def wait_spans(self, span_ids, timeout=20.0):
        want = set(span_ids)

        def have():
            if self.am.proc.poll() is not None:
                raise AssertionError(f"agentmeter exited: {self.am.stderr()[-2000:]}")
            return want <= {r["spanId"] for r in self.records()}
        amtest.wait_for(have, timeout=timeout, interval=0.05, what=f"{len(want)} spans in the file")

    def stop(self):
        return self.am.stop() if self.am else None

    def stderr(self):
        return self.am.stderr()[-1500:] if self.am else "(not started)"


def send_js(run, scenario, seed, extra_args=()):
    sent_path = os.path.join(run.dir, f"sent-{scenario}.json")
    send = subprocess.run(
        ["node", "send_traces.js", "--exporter", "http-proto", "--endpoint", run.http_url,
         "--scenario", scenario, "--seed", str(seed), "--out", sent_path,
         # The test card's effective_from versions are chosen around this date.
         "--base-time", "2025-11-03T09:00:00Z", *extra_args],
        cwd=JS_DIR, capture_output=True, text=True, timeout=60)
    if send.returncode != 0:
        raise AssertionError(f"send_traces.js failed ({send.returncode}): {send.stderr[-1500:]}")
    with open(sent_path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------
# The checks shared by every run
# ---------------------------------------------------------------------------------------

def mismatches(items, limit=4):
    return "; ".join(items[:limit]) + (f"; ... ({len(items)} in all)" if len(items) > limit else "")


def verify(results, tag, card, sent_spans, records, expect_exact_once=True):
    """Compare every exported span of sent_spans with the independent figures.
    Returns (expected costs by span id, got attrs by span id)."""
    check = results.check
    sent_ids = [s["spanId"] for s in sent_spans]
    counts = {}
    for r in records:
        counts[r["spanId"]] = counts.get(r["spanId"], 0) + 1
    got = {r["spanId"]: r["attrs"] for r in records}
    missing = [i for i in sent_ids if i not in got]
    dup = [f"{i} x{counts[i]}" for i in sent_ids if counts.get(i, 0) > 1]
    extra = [i for i in counts if i not in set(sent_ids)]
    check(f"{tag}: all {len(sent_ids)} spans exported", not missing, mismatches(missing))
    if expect_exact_once:
        check(f"{tag}: each span exactly once, nothing else", not dup and not extra,
              f"duplicates: {mismatches(dup)} extra: {mismatches(extra)}")
    by_id = {s["spanId"]: s for s in sent_spans}
    present = [s for s in sent_spans if s["spanId"] in got]

    exp = {s["spanId"]: pricer.expected_cost(card, s) for s in sent_spans}
    kids, roots = pricer.children_index(sent_spans)
    subtree, totals = pricer.expected_rollup(sent_spans, {k: v["self"] for k, v in exp.items()})
    props = pricer.expected_propagation(sent_spans, PROPAGATED)

    def name(sid):
        return f"{by_id[sid]['name']!r}({sid})"

    bad = {k: [] for k in ("status", "self", "parts", "amount", "price_id", "currency", "subtree",
                           "total", "total_elsewhere", "orphan", "prop", "not_billable")}
    for s in present:
        sid = s["spanId"]
        a, e = got[sid], exp[sid]
        if a.get("cost.status") != e["status"]:
            bad["status"].append(f"{name(sid)} expected {e['status']} got {a.get('cost.status')}")
        if nano(a.get("cost.self")) != e["self"]:
            bad["self"].append(f"{name(sid)} expected {Decimal(e['self']) / NANO} got {a.get('cost.self')}")
        if e["status"] == "priced":
            for part in ("input", "output", "cache_read", "cache_write", "reasoning", "tool"):
                want = e["parts"].get(part)
                have = nano(a.get(f"cost.{part}"))
                if (want or 0) != (have or 0):
                    bad["parts"].append(f"{name(sid)} cost.{part} expected "
                                        f"{Decimal(want or 0) / NANO} got {a.get(f'cost.{part}')}")
            if (nano(a.get("gen_ai.usage.cost.amount")) != e["self"]
                    or a.get("gen_ai.usage.cost.currency") != card.currency
                    or a.get("gen_ai.usage.cost.source") != "local"):
                bad["amount"].append(f"{name(sid)} gen_ai.usage.cost.* = "
                                     f"{a.get('gen_ai.usage.cost.amount')} "
                                     f"{a.get('gen_ai.usage.cost.currency')} "
                                     f"{a.get('gen_ai.usage.cost.source')}")
            entries = [(e["entry"], False)] if e["entry"] else []
            entries += [(e["tool"], True)] if e["tool"] else []
            pid = a.get("cost.price_id")
            pieces = pid.split(" + ") if isinstance(pid, str) else []
            ok = len(pieces) == len(entries) and all(
                any(pricer.price_id_ok(card, ent, p, tool) for p in pieces) for ent, tool in entries)
            if not ok:
                want = " + ".join(f"{ent['src']}:{'tool:' if tool else ''}{ent['match']}"
                                  for ent, tool in entries)
                bad["price_id"].append(f"{name(sid)} expected {want} got {pid}")
        elif "cost.price_id" in a or "gen_ai.usage.cost.amount" in a:
            bad["price_id"].append(f"{name(sid)} ({e['status']}) carries price_id "
                                   f"{a.get('cost.price_id')} / amount {a.get('gen_ai.usage.cost.amount')}")
        if a.get("cost.currency") != card.currency:
            bad["currency"].append(f"{name(sid)} got {a.get('cost.currency')}")
        if nano(a.get("cost.subtree")) != subtree[sid]:
            bad["subtree"].append(f"{name(sid)} expected {Decimal(subtree[sid]) / NANO} "
                                  f"got {a.get('cost.subtree')}")
        if sid in totals:
            if nano(a.get("cost.trace.total")) != totals[sid]:
                bad["total"].append(f"{name(sid)} expected {Decimal(totals[sid]) / NANO} "
                                    f"got {a.get('cost.trace.total')}")
        elif "cost.trace.total" in a:
            bad["total_elsewhere"].append(f"{name(sid)} carries {a['cost.trace.total']}")
        if a.get("cost.orphan") not in (None, False):
            bad["orphan"].append(f"{name(sid)} cost.orphan={a.get('cost.orphan')}")
        for k in PROPAGATED:
            if a.get(k) != props[sid][k]:
                bad["prop"].append(f"{name(sid)} {k} expected {props[sid][k]!r} got {a.get(k)!r}")
        # The double-counting trap: an agent span repeating its children's tokens.
        if e["status"] == "not_billable" and pricer.first(s, pricer.TOKENS["input"]) is not None:
            child_sum = sum(subtree[c] for c in kids[sid])
            if nano(a.get("cost.self")) != 0 or nano(a.get("cost.subtree")) != child_sum:
                bad["not_billable"].append(f"{name(sid)} self {a.get('cost.self')} subtree "
                                           f"{a.get('cost.subtree')} (children {Decimal(child_sum) / NANO})")

    statuses = {}
    for s in present:
        statuses[exp[s["spanId"]]["status"]] = statuses.get(exp[s["spanId"]]["status"], 0) + 1
    n = len(present)
    check(f"{tag}: cost.status of {n} spans ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})",
          not bad["status"], mismatches(bad["status"]))
    check(f"{tag}: cost.self exact to 1e-9 on {n} spans", not bad["self"], mismatches(bad["self"]))
    check(f"{tag}: cost parts (input/output/cache/reasoning/tool) exact on priced spans",
          not bad["parts"], mismatches(bad["parts"]))
    check(f"{tag}: gen_ai.usage.cost.amount/currency/source=local on priced spans",
          not bad["amount"], mismatches(bad["amount"]))
    check(f"{tag}: cost.price_id names the matched entry (priced spans only)",
          not bad["price_id"], mismatches(bad["price_id"]))
    check(f"{tag}: cost.currency {card.currency} on every span", not bad["currency"],
          mismatches(bad["currency"]))
    check(f"{tag}: cost.subtree = sum of cost.self over the subtree", not bad["subtree"],
          mismatches(bad["subtree"]))
    check(f"{tag}: cost.trace.total on each of {len(totals)} roots = sum over the trace",
          not bad["total"], mismatches(bad["total"]))
    check(f"{tag}: cost.trace.total only on roots", not bad["total_elsewhere"],
          mismatches(bad["total_elsewhere"]))
    check(f"{tag}: agent spans with their children's token totals are not billed again",
          not bad["not_billable"], mismatches(bad["not_billable"]))
    # Trace total == the leaf LLM (and tool) costs, never more.
    leaf_bad = []
    for r in roots:
        if r not in got:
            continue
        tid = by_id[r]["traceId"]
        leaves = sum(exp[s["spanId"]]["self"] for s in sent_spans
                     if s["traceId"] == tid and exp[s["spanId"]]["status"] != "not_billable")
        if nano(got[r].get("cost.trace.total")) != leaves:
            leaf_bad.append(f"trace {tid}: {got[r].get('cost.trace.total')} != leaves "
                            f"{Decimal(leaves) / NANO}")
    check(f"{tag}: trace total == sum of leaf LLM and tool costs", not leaf_bad, mismatches(leaf_bad))
    check(f"{tag}: no cost.orphan (every parent arrived)", not bad["orphan"], mismatches(bad["orphan"]))
    check(f"{tag}: {', '.join(PROPAGATED)} propagated to every span", not bad["prop"],
          mismatches(bad["prop"]))
    return exp, got


def scenario(results, tag, scenario_name, seed, card_path, include_builtin, extra, args=()):
    card = pricer.Card(*([BUILTIN_CARD] if include_builtin else []), *([card_path] if card_path else []))
    run = Run(card=card_path)
    sent = None
    try:
        run.start()
        sent = send_js(run, scenario_name, seed, args)
        spans = sent["spans"]
        results.check(f"{tag}: JS SDK sent {len(spans)} spans in {sent['summary']['traces']} traces",
                      len(spans) > 0)
        run.wait_spans([s["spanId"] for s in spans])
    finally:
        rc = run.stop()
    results.check(f"{tag}: agentmeter exits 0 on SIGTERM", rc == 0, run.stderr())
    records = run.records()
    exp, got = verify(results, tag, card, sent["spans"], records)
    extra(results, tag, card, sent, exp, got)


# ---------------------------------------------------------------------------------------
# Scenario-specific checks
# ---------------------------------------------------------------------------------------

def agents_builtin_extra(results, tag, card, sent, exp, got):
    old = pricing.load_card(BUILTIN_CARD)
    by_trace = {}
    for s in sent["spans"]:
        by_trace.setdefault(s["traceId"], []).append(s)
    bad = []
    for tid, spans in by_trace.items():
        want = sum((pricing.span_cost(old, s) for s in spans), Decimal(0))
        root = [s for s in spans if not s["parentSpanId"]][0]
        have = got.get(root["spanId"], {}).get("cost.trace.total")
        if nano(have) != int(want * NANO):
            bad.append(f"trace {tid}: {have} != {want}")
    results.check(f"{tag}: trace totals also equal cost2/pricing.py's", not bad, mismatches(bad))
    models = {pricer.first(s, pricer.MODEL) for s in sent["spans"]
              if exp[s["spanId"]]["status"] == "priced" and exp[s["spanId"]]["entry"]}
    results.check(f"{tag}: every model of the scenario priced by the built-in card",
                  {"gpt-4o", "gpt-5-mini", "claude-sonnet-4-5-20250929", "gemini-2.5-flash"} <= models,
                  str(models))


def coverage_extra(results, tag, card, sent, exp, got):
    """The test card's rules really were exercised by this run."""
    seen = {"tier": 0, "base": 0, "eff": 0, "reasoning": 0, "cache_read": 0, "tool": 0,
            "unpriced": 0}
    for s in sent["spans"]:
        e = exp[s["spanId"]]
        if e["entry"] and e["entry"]["tiers"]:
            seen["tier" if e["tier"] else "base"] += 1
        if e["entry"] and e["entry"]["eff_text"] == "2025-11-01":
            seen["eff"] += 1
        seen["reasoning"] += 1 if e["parts"].get("reasoning") else 0
        seen["cache_read"] += 1 if e["parts"].get("cache_read") else 0
        seen["tool"] += 1 if e["tool"] else 0
        seen["unpriced"] += 1 if e["status"] == "unpriced_model" else 0
    need = ["tier", "base", "eff", "reasoning", "cache_read", "unpriced"]
    if sent["scenario"] != "openllmetry":
        need.append("tool")
    results.check(f"{tag}: exercised: tier cliff above/below, effective_from, reasoning, cache, "
                  f"tool, unpriced ({seen})", all(seen[k] for k in need), str(seen))
    # unpriced_model: never silently 0 with a price, flagged instead.
    un = [s for s in sent["spans"] if exp[s["spanId"]]["status"] == "unpriced_model"]
    results.check(f"{tag}: {len(un)} gemini-2.5-flash spans are unpriced_model (no prefix match "
                  "on gemini-2.5)", un and all(pricer.first(s, pricer.MODEL) == "gemini-2.5-flash"
                                               for s in un))


def openllmetry_extra(results, tag, card, sent, exp, got):
    coverage_extra(results, tag, card, sent, exp, got)
    bad = []
    for s in sent["spans"]:
        a = got.get(s["spanId"], {})
        trace_root = [r for r in sent["spans"] if r["traceId"] == s["traceId"] and not r["parentSpanId"]][0]
        want = pricer.attr(trace_root, "traceloop.association.properties.session_id")
        if a.get("session.id") != want:
            bad.append(f"{s['name']}({s['spanId']}) session.id {a.get('session.id')!r} != {want!r}")
    results.check(f"{tag}: session.id filled from traceloop.association.properties.session_id "
                  "on every span", not bad, mismatches(bad))


def openinference_extra(results, tag, card, sent, exp, got):
    coverage_extra(results, tag, card, sent, exp, got)
    agents = [s for s in sent["spans"] if pricer.attr(s, "openinference.span.kind") == "AGENT"]
    results.check(f"{tag}: {len(agents)} AGENT spans with llm.token_count.* are not_billable",
                  agents and all(got[s["spanId"]].get("cost.status") == "not_billable"
                                 for s in agents))


# ---------------------------------------------------------------------------------------
# A trace in three requests, children first, then a late span
# ---------------------------------------------------------------------------------------

BASE_NS = 1762164000 * NANO  # 2025-11-03T10:00:00Z
TRACE = "c0571e2e000000000000000000000a01"


def typed(attrs):
    out = {}
    for k, v in attrs.items():
        t = "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else \
            "double" if isinstance(v, float) else "string"
        out[k] = {"type": t, "value": v}
    return out


def mkspan(span_id, parent, name, start_ms, end_ms, attrs):
    return {"traceId": TRACE, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": 1,
            "startTimeUnixNano": str(BASE_NS + start_ms * 1000000 + 7),
            "endTimeUnixNano": str(BASE_NS + end_ms * 1000000 + 9),
            "attributes": typed(attrs),
            "resource": {"attributes": typed({"service.name": "cost1-split"})}}


def otlp_json(spans):
    def anyv(t):
        return {"string": lambda v: {"stringValue": v}, "int": lambda v: {"intValue": str(v)},
                "double": lambda v: {"doubleValue": v}, "bool": lambda v: {"boolValue": v}}[t["type"]](t["value"])
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cost1-split"}}]},
        "scopeSpans": [{"scope": {"name": "cost1-e2e", "version": "1"}, "spans": [{
            "traceId": s["traceId"], "spanId": s["spanId"], "parentSpanId": s["parentSpanId"],
            "name": s["name"], "kind": s["kind"],
            "startTimeUnixNano": s["startTimeUnixNano"], "endTimeUnixNano": s["endTimeUnixNano"],
            "attributes": [{"key": k, "value": anyv(v)} for k, v in s["attributes"].items()],
        } for s in spans]}]}]}).encode()


def split_spans():
    """The hand-checked trace (test card prices, tier cliff at 6,000 input tokens):
      R  invoke_agent split-agent (conversation, enduser, tenant; repeats all tokens)
      ├─ A  chat gpt-4o [openai, 2025-11-01 prices 2.00/8.00/0.50]
      │       in 10000 (cache read 4000), out 2000:
      │       6000*2.00 + 4000*0.50 + 2000*8.00 = 12000+2000+16000 /1e6 = 0.030
      └─ B  invoke_agent researcher (repeats B1+B3 tokens)
         ├─ B1 chat claude-sonnet-4-5-20250929 [anthropic, tier: 8000 > 6000]
         │       in 8000 (cache read 3000, cache write 1000), out 400:
         │       4000*6.00 + 3000*0.60 + 1000*7.50 + 400*22.50 = 24000+1800+7500+9000 = 0.0423
         ├─ B2 execute_tool web_search: 0.012 per call
         └─ B3 chat gpt-5-mini [openai] in 1000, out 500 (reasoning 300):
                 1000*0.20 + 200*1.60 + 300*3.20 = 200+320+960 = 0.00148
      total 0.030 + 0.0423 + 0.012 + 0.00148 = 0.08578; B subtree 0.05578
    Late: L chat gpt-5-mini under R, in 2000, out 100: 400+160 = 0.00056."""
    R, A, B, B1, B2, B3, L = ("5a11700000000001", "5a11700000000002", "5a11700000000003",
                              "5a11700000000004", "5a11700000000005", "5a11700000000006",
                              "5a11700000000007")
    spans = {
        "R": mkspan(R, "", "invoke_agent split-agent", 0, 9000, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "split-agent",
            "gen_ai.conversation.id": "conv-split-7", "enduser.id": "user-split",
            "tenant.id": "tenant-split",
            "gen_ai.usage.input_tokens": 19000, "gen_ai.usage.output_tokens": 2900}),
        "A": mkspan(A, R, "chat gpt-4o", 10, 2000, {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10000,
            "gen_ai.usage.cache_read.input_tokens": 4000, "gen_ai.usage.output_tokens": 2000}),
        "B": mkspan(B, R, "invoke_agent researcher", 2100, 8000, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "researcher",
            "gen_ai.usage.input_tokens": 9000, "gen_ai.usage.output_tokens": 900}),
        "B1": mkspan(B1, B, "chat claude-sonnet-4-5", 2200, 4000, {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.response.model": "claude-sonnet-4-5-20250929",
            "gen_ai.usage.input_tokens": 8000, "gen_ai.usage.cache_read.input_tokens": 3000,
            "gen_ai.usage.cache_creation.input_tokens": 1000, "gen_ai.usage.output_tokens": 400}),
        "B2": mkspan(B2, B, "execute_tool web_search", 4100, 5000, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "web_search"}),
        "B3": mkspan(B3, B, "chat gpt-5-mini", 5100, 7900, {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-5-mini", "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 500, "gen_ai.usage.reasoning.output_tokens": 300}),
        "L": mkspan(L, R, "chat gpt-5-mini (late)", 8100, 8900, {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-5-mini", "gen_ai.usage.input_tokens": 2000,
            "gen_ai.usage.output_tokens": 100}),
    }
    hand = {"A": 30000000, "B1": 42300000, "B2": 12000000, "B3": 1480000, "L": 560000,
            "R": 0, "B": 0, "total": 85780000, "B.subtree": 55780000}
    return spans, hand


def split_case(results):
    tag = "split"
    card = pricer.Card(TEST_CARD)
    spans, hand = split_spans()
    # The pricer itself agrees with the hand computation.
    mine = {k: pricer.expected_cost(card, s)["self"] for k, s in spans.items()}
    results.check(f"{tag}: pricer agrees with the hand-computed figures",
                  all(mine[k] == hand[k] for k in mine), str(mine))
    trace_spans = [spans[k] for k in ("R", "A", "B", "B1", "B2", "B3")]
    run = Run(card=TEST_CARD)
    records = []
    try:
        run.start()
        requests = [("grandchildren B1 B2 B3", ["B1", "B2", "B3"]), ("children A B", ["A", "B"]),
                    ("root R", ["R"])]
        t0 = time.monotonic()
        early = []
        for i, (what, keys) in enumerate(requests):
            if i > 0:
                # The stimulus itself: requests spread over ~1 s (each gap > wait).
                time.sleep(max(0.0, t0 + 0.5 * i - time.monotonic()))
                early = [r["spanId"] for r in run.records() if r["traceId"] == TRACE]
            status, body, _ = amtest.http_post(run.http_url, otlp_json([spans[k] for k in keys]),
                                               {"Content-Type": "application/json"})
            results.check(f"{tag}: request {i + 1} ({what}) accepted", status == 200,
                          f"{status} {body[:200]!r}")
        results.check(f"{tag}: nothing of the trace emitted before its root arrived "
                      f"(~{time.monotonic() - t0:.1f}s after the first spans)", not early, str(early))
        run.wait_spans([s["spanId"] for s in trace_spans])
        first = run.records()
        lines = {r["line"] for r in first if r["traceId"] == TRACE}
        results.check(f"{tag}: the trace is emitted whole, in one exported batch", len(lines) == 1,
                      f"lines {sorted(lines)}")
        # A late span: the trace went out (its wait passed) before this is sent.
        status, body, _ = amtest.http_post(run.http_url, otlp_json([spans["L"]]),
                                           {"Content-Type": "application/json"})
        results.check(f"{tag}: late span accepted", status == 200, f"{status} {body[:200]!r}")
        run.wait_spans([spans["L"]["spanId"]])
    finally:
        rc = run.stop()
    results.check(f"{tag}: agentmeter exits 0 on SIGTERM", rc == 0, run.stderr())
    records = run.records()
    main = [r for r in records if r["spanId"] != spans["L"]["spanId"]]
    exp, got = verify(results, tag, card, trace_spans, main)
    counts = {}
    for r in records:
        counts[r["spanId"]] = counts.get(r["spanId"], 0) + 1
    results.check(f"{tag}: after the late span, every span still exactly once",
                  sorted(counts.values()) == [1] * 7 and len(counts) == 7, str(counts))
    g = {k: got.get(s["spanId"], {}) for k, s in spans.items()}
    results.check(f"{tag}: hand-computed cost.self A 0.030, B1 0.0423 (tier), B2 0.012, B3 0.00148",
                  all(nano(g[k].get("cost.self")) == hand[k] for k in ("A", "B1", "B2", "B3", "R", "B")),
                  str({k: g[k].get("cost.self") for k in ("A", "B1", "B2", "B3", "R", "B")}))
    results.check(f"{tag}: hand-computed cost.trace.total 0.08578 and B subtree 0.05578",
                  nano(g["R"].get("cost.trace.total")) == hand["total"]
                  and nano(g["B"].get("cost.subtree")) == hand["B.subtree"],
                  f"{g['R'].get('cost.trace.total')} {g['B'].get('cost.subtree')}")
    results.check(f"{tag}: session.id from gen_ai.conversation.id, user.id from enduser.id, "
                  "on every span", all(g[k].get("session.id") == "conv-split-7"
                                       and g[k].get("user.id") == "user-split"
                                       for k in ("R", "A", "B", "B1", "B2", "B3")),
                  str({k: (g[k].get("session.id"), g[k].get("user.id")) for k in g}))
    late = [r["attrs"] for r in records if r["spanId"] == spans["L"]["spanId"]]
    la = late[0] if late else {}
    for key, want in (("session.id", "conv-split-7"), ("tenant.id", "tenant-split"),
                      ("user.id", "user-split"), ("gen_ai.agent.name", "split-agent")):
        results.check(f"{tag}: late span gets its trace's {key} {want!r}", la.get(key) == want,
                      f"got {la.get(key)!r}")
    results.check(f"{tag}: late span priced: priced, cost.self 0.00056, cost.subtree 0.00056",
                  la.get("cost.status") == "priced" and nano(la.get("cost.self")) == hand["L"]
                  and nano(la.get("cost.subtree")) == hand["L"],
                  f"{la.get('cost.status')} {la.get('cost.self')} {la.get('cost.subtree')}")


def main():
    results = amtest.Results()
    if not os.path.isdir(os.path.join(JS_DIR, "node_modules")):
        print("SKIP: tests/integration/js/node_modules missing (run npm ci there)")
        print("0 passed, 0 failed")
        return 0
    t0 = time.monotonic()
    cases = [
        ("agents/built-in card", lambda: scenario(results, "agents/built-in", "agents", 41, None,
                                                  True, agents_builtin_extra)),
        ("agents/test card", lambda: scenario(results, "agents/test-card", "agents", 42, TEST_CARD,
                                              False, coverage_extra)),
        # More than the default 2 x 2 traces, so that every rule of the test card shows up.
        ("openllmetry/test card", lambda: scenario(results, "openllmetry", "openllmetry", 43,
                                                   TEST_CARD, False, openllmetry_extra, MORE)),
        ("openinference/test card", lambda: scenario(results, "openinference", "openinference", 44,
                                                     TEST_CARD, False, openinference_extra, MORE)),
        ("three requests + late span", lambda: split_case(results)),
    ]
    for name, fn in cases:
        try:
            fn()
        except Exception as exc:  # one broken case must not hide the others
            traceback.print_exc()
            results.check(f"{name}: ran to completion", False, f"{type(exc).__name__}: {exc}")
    print(f"# {time.monotonic() - t0:.1f}s")
    results.finish()


if __name__ == "__main__":
    sys.exit(main())
