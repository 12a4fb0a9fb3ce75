"""What agentmeter should write on each span, computed independently for
test_cost1_e2e.py from the spans the test sent and the rate card YAML.

Adapted from ../cost2/pricing.py (which only knows the GenAI attribute names
and the built-in card): this one reads every attribute name of
ARCHITECTURE.md §5, decides cost.status, prices in exact decimals with the
token semantics of §5 and the matching rules of §7 (exact with date/version
suffixes stripped > glob > regex, provider filter, effective_from, tier
cliffs, per-call tool prices), and derives the expected propagation (§5
fallbacks, nearest ancestor, then resource) and roll-up (§6).  It does not
model compute prices, overrides or `cache_mode: additive` (the scenarios use
none of them).

Spans are the dicts of send_traces.js's sent.json: hex ids, and attributes as
{name: {type, value}}.
"""
import datetime
import fnmatch
import re
from decimal import Decimal

import yaml

NANO = Decimal(1000000000)
UNITS = {"per_1m": Decimal(1000000), "per_1k": Decimal(1000), "per_token": Decimal(1)}
BUCKETS = ("input", "output", "cache_read", "cache_write", "reasoning")

# ARCHITECTURE.md §5, first non-empty wins.
PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system", "ai.model.provider")
MODEL = ("gen_ai.response.model", "gen_ai.request.model", "llm.response.model_name",
         "llm.model_name", "ai.model.id")
TOKENS = {
    "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
              "ai.usage.inputTokens", "ai.usage.promptTokens"),
    "output": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
               "llm.token_count.completion", "ai.usage.outputTokens", "ai.usage.completionTokens"),
    "cache_read": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                   "llm.token_count.prompt_details.cache_read"),
    "cache_write": ("gen_ai.usage.cache_creation.input_tokens",
                    "gen_ai.usage.cache_creation_input_tokens",
                    "llm.token_count.prompt_details.cache_write"),
    "reasoning": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                  "llm.token_count.completion_details.reasoning"),
}
SESSION = ("session.id", "gen_ai.conversation.id", "langfuse.session.id",
           "traceloop.association.properties.session_id")
USER = ("user.id", "enduser.id", "langfuse.user.id")
TOOL = ("gen_ai.tool.name", "tool.name")

# Agent / workflow spans in the three conventions (§5: never priced from
# their own tokens).  Compared case-insensitively.
AGENT_OPS = {
    "gen_ai.operation.name": ("invoke_agent", "create_agent", "invoke_workflow"),
    "openinference.span.kind": ("agent", "chain"),
    "traceloop.span.kind": ("agent", "workflow", "task"),
}
TOOL_OPS = {
    "gen_ai.operation.name": ("execute_tool",),
    "openinference.span.kind": ("tool",),
    "traceloop.span.kind": ("tool",),
}


def attr(span, key):
    a = span.get("attributes", {}).get(key)
    return None if a is None else a.get("value")


def first(span, keys, resource=None):
    """First non-empty of keys on the span, then (if given) on the resource."""
    for source in (span.get("attributes", {}), resource or {}):
        for k in keys:
            a = source.get(k)
            if a is not None and a.get("value") not in (None, ""):
                return a.get("value")
    return None


def _is(span, table):
    for key, values in table.items():
        v = attr(span, key)
        if isinstance(v, str) and v.lower() in values:
            return True
    return False


def _dec(v):
    return Decimal(str(v))


def _date_ns(v):
    if isinstance(v, datetime.datetime):
        d = v if v.tzinfo else v.replace(tzinfo=datetime.timezone.utc)
    else:
        if not isinstance(v, datetime.date):
            v = datetime.date.fromisoformat(str(v))
        d = datetime.datetime(v.year, v.month, v.day, tzinfo=datetime.timezone.utc)
    return int(d.timestamp()) * 1000000000


class Card:
    """One or more card files merged in order (§7)."""

    def __init__(self, *paths):
        self.models = []  # dicts: match, kind, pattern, provider, eff_ns, eff_text, prices, tiers, src, unit
        self.tools = []
        self.currency = None
        for path in paths:
            with open(path) as f:
                doc = yaml.safe_load(f)
            src = f"{doc['id']}@{doc['version']}"
            unit = UNITS[doc.get("unit", "per_1m")]
            self.currency = self.currency or doc.get("currency", "USD")
            for m in doc.get("models", []) or []:
                entry = self._entry(m, src, unit)
                key = (entry["match"].lower(), (entry["provider"] or "").lower(), entry["eff_ns"])
                self.models = [e for e in self.models
                               if (e["match"].lower(), (e["provider"] or "").lower(), e["eff_ns"]) != key]
                self.models.append(entry)
            for t in doc.get("tools", []) or []:
                self.tools = [e for e in self.tools if e["match"] != str(t["match"])]
                self.tools.append({"match": str(t["match"]), "per_call": _dec(t["per_call"]), "src": src})

    @staticmethod
    def _entry(m, src, unit):
        text = str(m["match"])
        kind, pattern = "exact", text
        if text.startswith("glob:"):
            kind, pattern = "glob", text[5:]
        elif text.startswith("re:"):
            kind, pattern = "re", text[3:]
        if kind == "glob":
            literal = len(re.sub(r"\[[^\]]*\]|[*?]", "", pattern))
        elif kind == "re":
            literal = len(re.sub(r"\\.|\[[^\]]*\]|[\^$.*+?()\[\]{}|]", "", pattern))
        else:
            literal = len(pattern)
        eff = m.get("effective_from")
        return {
            "match": text, "kind": kind, "pattern": pattern, "literal": literal,
            "provider": m.get("provider"),
            "eff_ns": _date_ns(eff) if eff is not None else -(1 << 63),
            "eff_text": str(eff) if eff is not None else None,
            "prices": {k: _dec(v) for k, v in (m.get("prices") or {}).items()},
            "tiers": sorted(({"above": int(t["input_tokens_above"]),
                              "prices": {k: _dec(v) for k, v in t["prices"].items()}}
                             for t in m.get("tiers", []) or []), key=lambda t: t["above"]),
            "src": src, "unit": unit,
        }

    # ---- matching ---------------------------------------------------------
    @staticmethod
    def strip_suffix(name):
        """One trailing -YYYY-MM-DD / -YYYYMMDD / @YYYYMMDD / -vN[:M], or None."""
        m = re.search(r"(-20\d\d-\d\d-\d\d|[-@]20\d{6}|-v\d+(:\d+)?)$", name)
        return name[:m.start()] if m and m.start() > 0 else None

    @staticmethod
    def _usable(e, provider, at_ns):
        if e["eff_ns"] > at_ns:
            return False
        return e["provider"] is None or (provider is not None
                                         and e["provider"].lower() == str(provider).lower())

    @staticmethod
    def _best(cands):
        return max(cands, key=lambda e: (e["literal"], e["provider"] is not None, e["eff_ns"]),
                   default=None)

    def find_model(self, model, provider, at_ns):
        usable = [e for e in self.models if self._usable(e, provider, at_ns)]
        name = model
        while name:
            hit = self._best([e for e in usable if e["kind"] == "exact"
                              and e["pattern"].lower() == name.lower()])
            if hit:
                return hit
            name = self.strip_suffix(name)
        hit = self._best([e for e in usable if e["kind"] == "glob"
                          and fnmatch.fnmatchcase(model.lower(), e["pattern"].lower())])
        if hit:
            return hit
        return self._best([e for e in usable if e["kind"] == "re"
                           and re.search(e["pattern"], model, re.I)])

    def find_tool(self, name):
        if name is None:
            return None
        for t in reversed(self.tools):
            if t["match"].lower() == name.lower():
                return t
        return None


def price_id_ok(card, entry, got, tool=False):
    """`ratecard-id@version:entry` (§6) naming this entry: its card's id and
    version, its match, and, when other entries share that match, qualifiers
    (in brackets) that tell it apart: its provider and effective_from."""
    if not isinstance(got, str):
        return False
    bases = [f"{entry['src']}:{entry['match']}"]
    if tool:
        bases.append(f"{entry['src']}:tool:{entry['match']}")
    for base in bases:
        quals = got[len(base):]
        if got.startswith(base) and re.fullmatch(r"(\[[^\]]*\])*", quals):
            if tool:
                return True
            shared = [e for e in card.models if e is not entry and e["match"] == entry["match"]]
            if shared:
                return all(q is None or q in quals for q in (entry["provider"], entry["eff_text"]))
            return True
    return False


def expected_cost(card, span):
    """{status, self (nano int), parts {name: nano}, entry, tool, tier} for one span."""
    res = span.get("resource", {}).get("attributes", {})
    out = {"status": None, "self": 0, "parts": {}, "entry": None, "tool": None, "tier": None}
    if _is(span, AGENT_OPS):
        out["status"] = "not_billable"
        return out
    tokens = {}
    for b in BUCKETS:
        v = first(span, TOKENS[b])
        tokens[b] = int(v) if v is not None else 0
    has_usage = any(tokens.values())
    model = first(span, MODEL, res)
    provider = first(span, PROVIDER, res)
    at = int(span["startTimeUnixNano"])
    parts = {}
    if has_usage and model is not None:
        entry = card.find_model(str(model), provider, at)
        if entry is not None:
            out["entry"] = entry
            billed = dict(tokens)
            billed["input"] = max(0, tokens["input"] - tokens["cache_read"] - tokens["cache_write"])
            billed["output"] = max(0, tokens["output"] - tokens["reasoning"])
            prices = dict(entry["prices"])
            for tier in entry["tiers"]:
                if tokens["input"] > tier["above"]:
                    out["tier"] = tier
                    prices = {**entry["prices"], **tier["prices"]}
            fallback = {"cache_read": "input", "cache_write": "input", "reasoning": "output"}
            for b in BUCKETS:
                p = prices.get(b, prices.get(fallback.get(b), Decimal(0)))
                part = billed[b] * p / entry["unit"] * NANO
                if b in ("input", "output") or billed[b] > 0:
                    parts[b] = part
    if _is(span, TOOL_OPS):
        tool = card.find_tool(first(span, TOOL))
        if tool is not None:
            out["tool"] = tool
            parts["tool"] = tool["per_call"] * NANO
    if has_usage and out["entry"] is None:
        out["status"] = "unpriced_model"
        out["tool"] = None
        return out
    if out["entry"] is None and out["tool"] is None:
        out["status"] = "no_usage"
        return out
    for k, v in parts.items():
        if v != v.to_integral_value():
            raise ValueError(f"span {span['spanId']}: part {k} = {v} nano is not exact; "
                             "use a card whose prices are exact in nano-units")
    out["parts"] = {k: int(v) for k, v in parts.items()}
    out["self"] = sum(out["parts"].values())
    out["status"] = "priced"
    return out


def children_index(spans):
    """{span id: [child span ids]} and the root ids (no parent among spans)."""
    ids = {s["spanId"] for s in spans}
    kids = {s["spanId"]: [] for s in spans}
    roots = []
    for s in spans:
        p = s.get("parentSpanId") or ""
        if p and p in ids:
            kids[p].append(s["spanId"])
        else:
            roots.append(s["spanId"])
    return kids, roots


def expected_rollup(spans, self_nano):
    """({span id: subtree nano}, {root span id: trace total nano})."""
    kids, roots = children_index(spans)
    subtree = {}

    def walk(sid):
        subtree[sid] = self_nano[sid] + sum(walk(c) for c in kids[sid])
        return subtree[sid]
    totals = {}
    by_trace = {}
    for r in roots:
        walk(r)
    for s in spans:
        by_trace.setdefault(s["traceId"], 0)
        by_trace[s["traceId"]] += self_nano[s["spanId"]]
    by_id = {s["spanId"]: s for s in spans}
    for r in roots:
        totals[r] = by_trace[by_id[r]["traceId"]]
    return subtree, totals


def expected_propagation(spans, keys):
    """{span id: {key: value or None}} after `propagate` with `keys`: the span's
    own value, else its canonical fallback aliases (§5, session.id and user.id),
    else the nearest ancestor's, else its resource's (canonical, then aliases)."""
    by_id = {s["spanId"]: s for s in spans}
    kids, roots = children_index(spans)
    aliases = {"session.id": SESSION, "user.id": USER}
    out = {}

    def visit(sid, parent_vals):
        s = by_id[sid]
        res = s.get("resource", {}).get("attributes", {})
        vals = {}
        for k in keys:
            own = first(s, aliases.get(k, (k,)))
            if own is None and parent_vals is not None:
                own = parent_vals.get(k)
            if own is None:
                own = first({"attributes": res}, aliases.get(k, (k,)))
            vals[k] = own
        out[sid] = vals
        for c in kids[sid]:
            visit(c, vals)
    for r in roots:
        visit(r, None)
    return out
