"""Independent pricing of the `agents` scenario's sent.json with the built-in
rate card (deploy/ratecards/default.yaml), in exact decimals.

Deliberately small and separate from the ratecard processor: it handles what
the scenario sends (exact model names with a date suffix, per-1M token prices
with cache reads subtracted from input, cliffs on input tokens, per-call tool
prices) so the end-to-end test checks agentmeter's totals against numbers it
did not compute itself.
"""
import re
from decimal import Decimal

import yaml

UNITS = {"per_1m": Decimal(1000000), "per_1k": Decimal(1000), "per_token": Decimal(1)}


def load_card(*paths):
    """Merge cards in order: a later entry with the same `match` wins."""
    merged = {"unit": "per_1m", "models": [], "tools": []}
    for path in paths:
        with open(path) as f:
            card = yaml.safe_load(f)
        merged["unit"] = card.get("unit", merged["unit"])
        for section in ("models", "tools"):
            for entry in card.get(section, []) or []:
                merged[section] = [e for e in merged[section] if e.get("match") != entry.get("match")]
                merged[section].append(entry)
    return merged


def _strip_version(model):
    return re.sub(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-v\d+)$", "", model)


def _model_entry(card, model):
    base = _strip_version(model)
    exact = [m for m in card.get("models", []) if m.get("match") in (model, base)]
    if exact:
        return exact[-1]
    for m in card.get("models", []):
        pat = str(m.get("match", ""))
        if pat.startswith("glob:"):
            import fnmatch
            if fnmatch.fnmatchcase(model, pat[5:]):
                return m
    for m in card.get("models", []):
        pat = str(m.get("match", ""))
        if pat.startswith("re:") and re.search(pat[3:], model):
            return m
    return None


def _attr(span, key):
    a = span.get("attributes", {}).get(key)
    return None if a is None else a.get("value")


def span_cost(card, span):
    """Exact cost of one span, or Decimal(0)."""
    op = _attr(span, "gen_ai.operation.name")
    unit = UNITS[card.get("unit", "per_1m")]
    if op == "execute_tool":
        tool = _attr(span, "gen_ai.tool.name")
        for t in card.get("tools", []):
            if t.get("match") == tool:
                return Decimal(str(t.get("per_call", 0)))
        return Decimal(0)
    if op in ("invoke_agent", "create_agent", "invoke_workflow"):
        return Decimal(0)
    model = _attr(span, "gen_ai.response.model") or _attr(span, "gen_ai.request.model")
    inp = _attr(span, "gen_ai.usage.input_tokens")
    out = _attr(span, "gen_ai.usage.output_tokens")
    if model is None or inp is None:
        return Decimal(0)
    entry = _model_entry(card, model)
    if entry is None:
        return Decimal(0)
    inp, out = int(inp), int(out or 0)
    cr = int(_attr(span, "gen_ai.usage.cache_read.input_tokens") or 0)
    cw = int(_attr(span, "gen_ai.usage.cache_creation.input_tokens") or 0)
    prices = entry.get("prices", {})
    for tier in sorted(entry.get("tiers", []) or [], key=lambda t: t["input_tokens_above"]):
        if inp > tier["input_tokens_above"]:
            prices = tier["prices"]

    def p(name, fallback=None):
        v = prices.get(name)
        if v is None and fallback is not None:
            v = prices.get(fallback)
        return Decimal(str(v if v is not None else 0))

    total = ((inp - cr - cw) * p("input") + cr * p("cache_read", "input")
             + cw * p("cache_write", "input") + out * p("output")) / unit
    return total


def session_totals(card, sent):
    """{session id: [trace totals in send order]} from sent.json."""
    spans = sent.get("spans", [])
    by_trace = {}
    order = []
    for s in spans:
        tid = s["traceId"]
        if tid not in by_trace:
            by_trace[tid] = []
            order.append(tid)
        by_trace[tid].append(s)
    sessions = {}
    for tid in order:
        tspans = by_trace[tid]
        sid = None
        for s in tspans:
            sid = sid or _attr(s, "session.id")
        total = sum((span_cost(card, s) for s in tspans), Decimal(0))
        start = min(int(s["startTimeUnixNano"]) for s in tspans)
        sessions.setdefault(sid, []).append((start, total))
    return {sid: [t for _, t in sorted(v)] for sid, v in sessions.items()}
