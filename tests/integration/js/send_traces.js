#!/usr/bin/env node
'use strict';
/*
 * send_traces.js — a real OpenTelemetry JS SDK client for agentmeter's interop tests.
 *
 * It builds agent-like traces with the official SDK (BasicTracerProvider + a span
 * processor), exports them with one of the official OTLP exporters, and writes to --out
 * a JSON description of exactly the spans that were exported successfully. The JSON is
 * read from the very ReadableSpan objects handed to the exporter, so it is the truth of
 * what went on the wire; tests compare it with what agentmeter received and produced.
 *
 *   node send_traces.js --exporter grpc|grpc-gzip|http-json|http-proto[-gzip]|http-json-gzip
 *                       --endpoint URL --scenario agents|fidelity|openllmetry|openinference
 *                       --out sent.json [--seed N] [--sessions N] [--traces-per-session N]
 *                       [--processor batch|simple] [--timeout-ms N] [--base-time ISO|ms|now]
 *
 * Exit status: 0 only if every export call reported ExportResultCode.SUCCESS, no
 * response was a partial success with rejected spans, and every span that ended was
 * exported exactly once; 1 otherwise (the error is printed on stderr and --out is not
 * written); 2 on a usage error.
 *
 * Everything (ids, token counts, timestamps) is a pure function of --seed, --scenario,
 * --sessions, --traces-per-session and --base-time: the same arguments send the same
 * bytes. Use another --seed to get fresh trace ids.
 */

const fs = require('node:fs');
const path = require('node:path');

const api = require('@opentelemetry/api');
const { ExportResultCode } = require('@opentelemetry/core');
const { defaultResource, resourceFromAttributes } = require('@opentelemetry/resources');
const { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } = require('@opentelemetry/semantic-conventions');
const {
  BasicTracerProvider,
  BatchSpanProcessor,
  SimpleSpanProcessor,
} = require('@opentelemetry/sdk-trace-base');

const { SpanKind, SpanStatusCode, ROOT_CONTEXT, trace } = api;

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

const EXPORTERS = ['grpc', 'grpc-gzip', 'http-json', 'http-json-gzip', 'http-proto', 'http-proto-gzip'];
const SCENARIOS = ['agents', 'fidelity', 'openllmetry', 'openinference'];

// Per-scenario defaults for --sessions and --traces-per-session.
const SCENARIO_DEFAULTS = {
  agents: { sessions: 3, tracesPerSession: 4 },
  fidelity: { sessions: 4, tracesPerSession: 10 }, // 40 traces x 26 spans = 1,040 spans
  openllmetry: { sessions: 2, tracesPerSession: 2 },
  openinference: { sessions: 2, tracesPerSession: 2 },
};

const USAGE = `usage: node send_traces.js --exporter ${EXPORTERS.join('|')}
         --endpoint URL --scenario ${SCENARIOS.join('|')} --out sent.json
         [--seed N] [--sessions N] [--traces-per-session N]
         [--processor batch|simple] [--timeout-ms N] [--base-time ISO|ms|now]
  grpc endpoint:  http://127.0.0.1:4317
  http endpoint:  http://127.0.0.1:4318/v1/traces`;

function usageError(msg) {
  process.stderr.write(`send_traces: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    exporter: null,
    endpoint: null,
    scenario: 'agents',
    out: null,
    seed: 1,
    sessions: null,
    tracesPerSession: null,
    processor: 'batch',
    timeoutMs: 10000,
    baseTime: '2025-11-03T09:00:00Z',
  };
  const names = {
    '--exporter': 'exporter', '--endpoint': 'endpoint', '--scenario': 'scenario',
    '--out': 'out', '--seed': 'seed', '--sessions': 'sessions',
    '--traces-per-session': 'tracesPerSession', '--processor': 'processor',
    '--timeout-ms': 'timeoutMs', '--base-time': 'baseTime',
  };
  const ints = new Set(['seed', 'sessions', 'tracesPerSession', 'timeoutMs']);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    }
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const key = names[arg];
    if (!key) usageError(`unknown argument ${arg}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) usageError(`${arg} needs a value`);
      value = argv[++i];
    }
    if (ints.has(key)) {
      if (!/^[0-9]+$/.test(value)) usageError(`${arg} must be a non-negative integer`);
      opts[key] = Number(value);
    } else {
      opts[key] = value;
    }
  }
  if (!EXPORTERS.includes(opts.exporter)) usageError('--exporter is required and must be one of ' + EXPORTERS.join(', '));
  if (!opts.endpoint) usageError('--endpoint is required');
  if (!SCENARIOS.includes(opts.scenario)) usageError('--scenario must be one of ' + SCENARIOS.join(', '));
  if (!opts.out) usageError('--out is required');
  if (!['batch', 'simple'].includes(opts.processor)) usageError('--processor must be batch or simple');
  const d = SCENARIO_DEFAULTS[opts.scenario];
  if (opts.sessions === null) opts.sessions = d.sessions;
  if (opts.tracesPerSession === null) opts.tracesPerSession = d.tracesPerSession;
  if (opts.sessions < 1 || opts.tracesPerSession < 1) usageError('--sessions and --traces-per-session must be >= 1');
  // Base wall-clock time of the first trace, as BigInt nanoseconds since the epoch.
  let baseMs;
  if (opts.baseTime === 'now') baseMs = Date.now();
  else if (/^[0-9]+$/.test(opts.baseTime)) baseMs = Number(opts.baseTime);
  else baseMs = Date.parse(opts.baseTime);
  if (!Number.isFinite(baseMs)) usageError(`--base-time ${opts.baseTime} is not ISO-8601, epoch ms or "now"`);
  opts.baseNs = BigInt(baseMs) * 1000000n;
  return opts;
}

// ---------------------------------------------------------------------------------------
// Determinism: a seeded PRNG, a seeded id generator, and nanosecond timestamps
// ---------------------------------------------------------------------------------------

/** mulberry32: a tiny, well-known 32-bit PRNG. Same seed, same sequence. */
function makePrng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,                                                   // [0, 1)
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)), // [lo, hi]
    chance: (p) => next() < p,
    pick: (arr) => arr[Math.floor(next() * arr.length)],
    u32: () => Math.floor(next() * 4294967296) >>> 0,
  };
}

/** IdGenerator for the SDK that draws trace and span ids from its own seeded stream. */
class SeededIdGenerator {
  constructor(seed) {
    this.rng = makePrng((seed ^ 0x5eed1d5) >>> 0);
  }
  hex(words) {
    let s;
    do {
      s = '';
      for (let i = 0; i < words; i++) s += this.rng.u32().toString(16).padStart(8, '0');
    } while (/^0+$/.test(s)); // all-zero ids are invalid in OTLP
    return s;
  }
  generateTraceId() { return this.hex(4); }
  generateSpanId() { return this.hex(2); }
}

/** BigInt nanoseconds -> the SDK's HrTime [seconds, nanoseconds] (kept exact). */
function hr(ns) {
  return [Number(ns / 1000000000n), Number(ns % 1000000000n)];
}
/** HrTime -> decimal string of nanoseconds since the epoch. */
function hrToNanoString(t) {
  return (BigInt(t[0]) * 1000000000n + BigInt(t[1])).toString();
}
const MS = 1000000n; // nanoseconds per millisecond

// ---------------------------------------------------------------------------------------
// Plans: every scenario first builds plain "plan" trees, then materializes them with the
// SDK. A plan node is
//   { name, kind, attrs, startNs, endNs, children[], events[], links[], status, tracer }
// Laying the tree out before creating spans lets a parent carry the sum of its
// descendants' tokens and keeps every timestamp exact.
// ---------------------------------------------------------------------------------------

function node(name, kind, attrs, extra = {}) {
  return { name, kind, attrs: attrs || {}, children: [], events: [], links: [], status: null, ...extra };
}

/**
 * Assign start/end times: a leaf lasts `node.durNs`; a parent starts at `start`, runs
 * its children one after another (with small gaps) and ends a little after the last.
 * Odd nanosecond offsets make sure nothing silently rounds to micro/milliseconds.
 */
function layout(n, startNs, rng) {
  n.startNs = startNs;
  if (n.children.length === 0) {
    n.endNs = startNs + (n.durNs || BigInt(rng.int(1, 50)) * MS + 7n);
  } else {
    let cursor = startNs + BigInt(rng.int(100, 900)) * 1000n + 13n;
    for (const c of n.children) {
      cursor = layout(c, cursor, rng) + BigInt(rng.int(1, 20)) * MS + 1n;
    }
    n.endNs = cursor + BigInt(rng.int(1, 5)) * MS + 3n;
  }
  for (const ev of n.events) {
    // Events are placed by fraction of the span's lifetime.
    const span = n.endNs - n.startNs;
    ev.timeNs = n.startNs + (span * BigInt(Math.round(ev.at * 1000))) / 1000n;
  }
  return n.endNs;
}

/**
 * Create the SDK spans of a plan tree. Children are created inside the parent's context
 * and ended before the parent, as real instrumentation does.
 */
function materialize(n, parentCtx, defaultTracer) {
  const tracer = n.tracer || defaultTracer;
  const links = n.links.map((l) => ({ context: l.target.ctx(), attributes: l.attrs }));
  const span = tracer.startSpan(
    n.name,
    { kind: n.kind, attributes: n.attrs, startTime: hr(n.startNs), links },
    parentCtx,
  );
  n.spanContext = span.spanContext();
  const ctx = trace.setSpan(parentCtx || ROOT_CONTEXT, span);
  for (const c of n.children) materialize(c, ctx, defaultTracer);
  for (const ev of n.events) span.addEvent(ev.name, ev.attrs, hr(ev.timeNs));
  if (n.status) span.setStatus(n.status);
  span.end(hr(n.endNs));
}

/** A link target that resolves to a span context once its span has been created. */
function linkTo(planNode, attrs, traceState) {
  return {
    attrs,
    target: {
      ctx: () => {
        if (!planNode.spanContext) throw new Error('link target not materialized yet');
        const sc = { ...planNode.spanContext };
        if (traceState) sc.traceState = api.createTraceState(traceState);
        return sc;
      },
    },
  };
}

// ---------------------------------------------------------------------------------------
// Scenario: agents (OpenTelemetry GenAI semantic conventions)
// ---------------------------------------------------------------------------------------

const MODELS = [
  { model: 'gpt-4o', provider: 'openai', reasoning: false },
  { model: 'gpt-5-mini', provider: 'openai', reasoning: true },
  { model: 'claude-sonnet-4-5-20250929', provider: 'anthropic', reasoning: false },
  { model: 'gemini-2.5-flash', provider: 'gcp.gemini', reasoning: true },
];
const AGENTS = ['support-agent', 'research-agent', 'coder-agent'];
const SUB_AGENTS = ['web-researcher', 'summarizer', 'planner'];
const TOOLS = [
  { name: 'web_search', args: (r) => ({ query: `agent pricing ${r.int(1, 999)}`, top_k: r.int(3, 10) }) },
  { name: 'read_file', args: (r) => ({ path: `/srv/docs/file-${r.int(1, 99)}.md` }) },
  { name: 'run_sql', args: (r) => ({ sql: `SELECT * FROM orders WHERE id = ${r.int(1, 99999)}` }) },
  { name: 'send_email', args: (r) => ({ to: `user${r.int(1, 50)}@example.com`, subject: 'Your ticket' }) },
  { name: 'calculator', args: (r) => ({ expression: `${r.int(1, 999)} * ${r.int(1, 999)}` }) },
];

/** Draw one LLM call's usage. input includes cache read; output includes reasoning. */
function drawUsage(rng, m) {
  const u = { input: rng.int(200, 12000), output: rng.int(20, 2500) };
  if (rng.chance(0.4)) u.cacheRead = Math.floor(u.input * (0.1 + 0.8 * rng.next()));
  if (m.reasoning && rng.chance(0.7)) u.reasoning = Math.floor(u.output * (0.2 + 0.7 * rng.next()));
  return u;
}

/** Running per-model totals of billable (leaf LLM) usage, written into the summary. */
class UsageBook {
  constructor() { this.byModel = {}; }
  add(model, u) {
    const t = (this.byModel[model] ||= { calls: 0, input: 0, output: 0, cacheRead: 0, reasoning: 0 });
    t.calls++;
    t.input += u.input;
    t.output += u.output;
    t.cacheRead += u.cacheRead || 0;
    t.reasoning += u.reasoning || 0;
  }
}

function sumUsage(list) {
  return list.reduce((a, u) => ({ input: a.input + u.input, output: a.output + u.output }), { input: 0, output: 0 });
}

function genAiChat(rng, book, m, usages) {
  const u = drawUsage(rng, m);
  usages.push(u);
  book.add(m.model, u);
  const attrs = {
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': m.provider,
    'gen_ai.request.model': m.model,
    'gen_ai.response.model': m.model,
    'gen_ai.usage.input_tokens': u.input,
    'gen_ai.usage.output_tokens': u.output,
    'gen_ai.response.finish_reasons': ['stop'],
  };
  if (u.cacheRead !== undefined) attrs['gen_ai.usage.cache_read.input_tokens'] = u.cacheRead;
  if (u.reasoning !== undefined) attrs['gen_ai.usage.reasoning.output_tokens'] = u.reasoning;
  return node(`chat ${m.model}`, SpanKind.CLIENT, attrs, { durNs: BigInt(rng.int(300, 4000)) * MS + 101n });
}

function genAiTool(rng, stats) {
  const t = rng.pick(TOOLS);
  const n = node(`execute_tool ${t.name}`, SpanKind.INTERNAL, {
    'gen_ai.operation.name': 'execute_tool',
    'gen_ai.tool.name': t.name,
    'gen_ai.tool.type': 'function',
    'gen_ai.tool.call.id': `call_${rng.u32().toString(36)}`,
    'gen_ai.tool.call.arguments': JSON.stringify(t.args(rng)),
  }, { durNs: BigInt(rng.int(5, 800)) * MS + 37n });
  if (rng.chance(0.2)) {
    // A failed tool call: ERROR status plus the conventional exception event.
    n.status = { code: SpanStatusCode.ERROR, message: `${t.name} failed: upstream timeout` };
    n.attrs['error.type'] = 'TimeoutError';
    n.events.push({ name: 'exception', at: 0.9, attrs: { 'exception.type': 'TimeoutError', 'exception.message': 'upstream timeout after 30s' } });
    stats.toolErrors++;
  }
  stats.toolCalls++;
  return n;
}

function buildAgents(opts) {
  const rng = makePrng(opts.seed);
  const book = new UsageBook();
  const stats = { toolCalls: 0, toolErrors: 0 };
  const plans = [];
  for (let s = 0; s < opts.sessions; s++) {
    const sessionId = `sess-${opts.seed}-${s}`;
    const userId = `user-${(s % 5) + 1}`;
    const tenantId = s % 2 === 0 ? 'tenant-acme' : 'tenant-globex';
    const agent = AGENTS[s % AGENTS.length];
    for (let t = 0; t < opts.tracesPerSession; t++) {
      const usages = [];
      const root = node(`invoke_agent ${agent}`, SpanKind.SERVER, {
        'gen_ai.operation.name': 'invoke_agent',
        'gen_ai.agent.name': agent,
        'gen_ai.agent.id': `agent-${agent}`,
        'gen_ai.conversation.id': sessionId,
        'session.id': sessionId,
        'user.id': userId,
        'tenant.id': tenantId,
      });
      // A few LLM/tool rounds: chat -> tool -> chat ...
      const mainModel = MODELS[(s + t) % MODELS.length];
      const rounds = rng.int(1, 3);
      for (let r = 0; r < rounds; r++) {
        root.children.push(genAiChat(rng, book, mainModel, usages));
        root.children.push(genAiTool(rng, stats));
      }
      // A sub-agent with its own chat children; it also repeats its children's totals.
      const subName = SUB_AGENTS[(s + t) % SUB_AGENTS.length];
      const subModel = MODELS[(s + t + 1) % MODELS.length];
      const subUsages = [];
      const sub = node(`invoke_agent ${subName}`, SpanKind.INTERNAL, {
        'gen_ai.operation.name': 'invoke_agent',
        'gen_ai.agent.name': subName,
      });
      sub.children.push(genAiChat(rng, book, subModel, subUsages));
      if (rng.chance(0.5)) sub.children.push(genAiTool(rng, stats));
      sub.children.push(genAiChat(rng, book, subModel, subUsages));
      const subSum = sumUsage(subUsages);
      sub.attrs['gen_ai.usage.input_tokens'] = subSum.input;
      sub.attrs['gen_ai.usage.output_tokens'] = subSum.output;
      usages.push(...subUsages);
      root.children.push(sub);
      // The final answer.
      root.children.push(genAiChat(rng, book, mainModel, usages));
      // The root repeats the sum of ALL its descendants (double-counting trap).
      const sum = sumUsage(usages);
      root.attrs['gen_ai.usage.input_tokens'] = sum.input;
      root.attrs['gen_ai.usage.output_tokens'] = sum.output;
      layout(root, opts.baseNs + BigInt(s) * 3600000n * MS + BigInt(t) * 120000n * MS + 11n, rng);
      plans.push(root);
    }
  }
  const providers = [{
    resource: { [ATTR_SERVICE_NAME]: 'agentmeter-interop-agents', [ATTR_SERVICE_VERSION]: '1.0.0', 'deployment.environment.name': 'test' },
    scopes: [{ name: 'agentmeter.interop.genai', version: '1.0.0' }],
    plans: plans.map((p) => ({ plan: p, scope: 0 })),
  }];
  return { providers, summary: { billableUsageByModel: book.byModel, ...stats } };
}

// ---------------------------------------------------------------------------------------
// Scenarios: openllmetry (Traceloop) and openinference (Arize) conventions
// ---------------------------------------------------------------------------------------

function buildOpenLLMetry(opts) {
  const rng = makePrng(opts.seed);
  const book = new UsageBook();
  const stats = { toolCalls: 0, toolErrors: 0 };
  const plans = [];
  // OpenLLMetry's own gen_ai.system values (note its capitalised "Anthropic").
  const system = { openai: 'openai', anthropic: 'Anthropic', 'gcp.gemini': 'gemini' };
  for (let s = 0; s < opts.sessions; s++) {
    const sessionId = `tl-sess-${opts.seed}-${s}`;
    for (let t = 0; t < opts.tracesPerSession; t++) {
      const m = MODELS[(s * 2 + t) % MODELS.length];
      const root = node('support_flow.workflow', SpanKind.INTERNAL, {
        'traceloop.span.kind': 'workflow',
        'traceloop.workflow.name': 'support_flow',
        'traceloop.entity.name': 'support_flow',
        'traceloop.association.properties.session_id': sessionId,
        'traceloop.association.properties.user_id': `tl-user-${s + 1}`,
      });
      const agent = node('triage.agent', SpanKind.INTERNAL, {
        'traceloop.span.kind': 'agent',
        'traceloop.entity.name': 'triage',
        'traceloop.workflow.name': 'support_flow',
      });
      root.children.push(agent);
      for (let i = 0; i < 2; i++) {
        const u = drawUsage(rng, m);
        book.add(m.model, u);
        const attrs = {
          'llm.request.type': 'chat',
          'gen_ai.system': system[m.provider],
          'gen_ai.request.model': m.model,
          'gen_ai.response.model': m.model,
          'gen_ai.usage.prompt_tokens': u.input,
          'gen_ai.usage.completion_tokens': u.output,
          'llm.usage.total_tokens': u.input + u.output,
          'gen_ai.prompt.0.role': 'user',
          'gen_ai.prompt.0.content': 'Where is my order?',
          'gen_ai.completion.0.role': 'assistant',
        };
        if (u.cacheRead !== undefined) attrs['gen_ai.usage.cache_read_input_tokens'] = u.cacheRead;
        if (u.reasoning !== undefined) attrs['gen_ai.usage.reasoning_tokens'] = u.reasoning;
        const name = m.provider === 'anthropic' ? 'anthropic.chat' : m.provider === 'openai' ? 'openai.chat' : 'gemini.generate_content';
        agent.children.push(node(name, SpanKind.CLIENT, attrs, { durNs: BigInt(rng.int(300, 3000)) * MS + 5n }));
        if (i === 0) {
          const tool = node('lookup_order.tool', SpanKind.INTERNAL, {
            'traceloop.span.kind': 'tool',
            'traceloop.entity.name': 'lookup_order',
            'traceloop.entity.input': JSON.stringify({ order_id: rng.int(1000, 9999) }),
          }, { durNs: BigInt(rng.int(5, 300)) * MS + 9n });
          stats.toolCalls++;
          agent.children.push(tool);
        }
      }
      layout(root, opts.baseNs + BigInt(s) * 3600000n * MS + BigInt(t) * 120000n * MS + 17n, rng);
      plans.push(root);
    }
  }
  return {
    providers: [{
      resource: { [ATTR_SERVICE_NAME]: 'agentmeter-interop-openllmetry' },
      scopes: [{ name: 'traceloop.sdk', version: '0.47.0' }],
      plans: plans.map((p) => ({ plan: p, scope: 0 })),
    }],
    summary: { billableUsageByModel: book.byModel, ...stats },
  };
}

function buildOpenInference(opts) {
  const rng = makePrng(opts.seed);
  const book = new UsageBook();
  const stats = { toolCalls: 0, toolErrors: 0 };
  const plans = [];
  const provider = { openai: 'openai', anthropic: 'anthropic', 'gcp.gemini': 'google' };
  for (let s = 0; s < opts.sessions; s++) {
    const sessionId = `oi-sess-${opts.seed}-${s}`;
    for (let t = 0; t < opts.tracesPerSession; t++) {
      const m = MODELS[(s * 2 + t + 1) % MODELS.length];
      const usages = [];
      const root = node('research_agent', SpanKind.INTERNAL, {
        'openinference.span.kind': 'AGENT',
        'session.id': sessionId,
        'user.id': `oi-user-${s + 1}`,
        'input.value': 'Compare the prices of three agent frameworks',
        'input.mime_type': 'text/plain',
      });
      for (let i = 0; i < 2; i++) {
        const u = drawUsage(rng, m);
        usages.push(u);
        book.add(m.model, u);
        const attrs = {
          'openinference.span.kind': 'LLM',
          'llm.provider': provider[m.provider],
          'llm.system': provider[m.provider] === 'google' ? 'vertexai' : provider[m.provider],
          'llm.model_name': m.model,
          'llm.token_count.prompt': u.input,
          'llm.token_count.completion': u.output,
          'llm.token_count.total': u.input + u.output,
          'llm.invocation_parameters': JSON.stringify({ temperature: 0.2, max_tokens: 4096 }),
          'llm.input_messages.0.message.role': 'user',
          'llm.input_messages.0.message.content': 'Compare the prices',
          'llm.output_messages.0.message.role': 'assistant',
        };
        if (u.cacheRead !== undefined) attrs['llm.token_count.prompt_details.cache_read'] = u.cacheRead;
        if (u.reasoning !== undefined) attrs['llm.token_count.completion_details.reasoning'] = u.reasoning;
        root.children.push(node('ChatCompletion', SpanKind.CLIENT, attrs, { durNs: BigInt(rng.int(300, 3000)) * MS + 3n }));
        if (i === 0) {
          const tool = node('web_search', SpanKind.INTERNAL, {
            'openinference.span.kind': 'TOOL',
            'tool.name': 'web_search',
            'tool.parameters': JSON.stringify({ query: 'agent framework pricing' }),
            'input.value': JSON.stringify({ query: 'agent framework pricing' }),
          }, { durNs: BigInt(rng.int(5, 300)) * MS + 19n });
          stats.toolCalls++;
          if (rng.chance(0.3)) {
            tool.status = { code: SpanStatusCode.ERROR, message: 'search backend returned 503' };
            stats.toolErrors++;
          }
          root.children.push(tool);
        }
      }
      // Some OpenInference instrumentations (e.g. smolagents) put totals on the AGENT span.
      const sum = sumUsage(usages);
      root.attrs['llm.token_count.prompt'] = sum.input;
      root.attrs['llm.token_count.completion'] = sum.output;
      root.attrs['llm.token_count.total'] = sum.input + sum.output;
      layout(root, opts.baseNs + BigInt(s) * 3600000n * MS + BigInt(t) * 120000n * MS + 23n, rng);
      plans.push(root);
    }
  }
  return {
    providers: [{
      resource: { [ATTR_SERVICE_NAME]: 'agentmeter-interop-openinference', 'openinference.project.name': 'interop' },
      scopes: [{ name: 'openinference.instrumentation.smolagents', version: '0.1.11' }],
      plans: plans.map((p) => ({ plan: p, scope: 0 })),
    }],
    summary: { billableUsageByModel: book.byModel, ...stats },
  };
}

// ---------------------------------------------------------------------------------------
// Scenario: fidelity — every attribute type, events, links, status, kinds, resources
// ---------------------------------------------------------------------------------------

const ALL_KINDS = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER];

/** A fixed set of attributes, one per value type (and a few edge cases of each). */
function kitchenSinkAttrs(i) {
  return {
    'fid.string': `value-${i}`,
    'fid.string.empty': '',
    'fid.string.unicode': 'héllo wörld — 你好, мир, 🚀🧠 e\u0301',
    'fid.string.escapes': 'quote" backslash\\ tab\t newline\n nul-free',
    'fid.int': i,
    'fid.int.zero': 0,
    'fid.int.negative': -42 - i,
    'fid.int.max_safe': 9007199254740991,
    'fid.int.min_safe': -9007199254740991,
    'fid.int.big': 4294967296 + i, // > 32 bits
    'fid.double': 3.14159 + i,
    'fid.double.small': 1.5e-300,
    'fid.double.negative': -0.25,
    'fid.double.large': 123456789012.5, // NB: huge doubles such as 1e308 are integral in JS and would go out as intValue
    'fid.bool.true': true,
    'fid.bool.false': false,
    'fid.array.string': ['a', '', 'ünïcødé', `s${i}`],
    'fid.array.int': [1, -2, 9007199254740991, i],
    'fid.array.double': [0.5, -1.25, 2.718281828459045],
    'fid.array.bool': [true, false, true],
    'fid.array.empty': [],
  };
}

function buildFidelity(opts) {
  const rng = makePrng(opts.seed);
  const nTraces = opts.sessions * opts.tracesPerSession;

  // Three resources (one tracer provider each) and two scopes per provider, one of
  // which has no version. Resource attributes are not validated by the SDK, so the
  // bytes (Uint8Array) type can only be exercised here.
  const providers = [
    {
      resource: {
        [ATTR_SERVICE_NAME]: 'fidelity-a', [ATTR_SERVICE_VERSION]: '1.2.3',
        'res.int': 7, 'res.double': 0.125, 'res.bool': true,
        'res.array.string': ['x', 'y'], 'res.unicode': 'ресурс-α',
      },
      scopes: [{ name: 'agentmeter.fidelity.alpha', version: '1.2.3' }, { name: 'agentmeter.fidelity.noversion' }],
      plans: [],
    },
    {
      resource: {
        [ATTR_SERVICE_NAME]: 'fidelity-b', 'res.empty': '',
        'res.bytes': new Uint8Array([0, 1, 2, 0xfe, 0xff]), 'res.array.int': [1, 2, 3],
      },
      scopes: [{ name: 'agentmeter.fidelity.beta', version: '0.0.1-rc.1' }, { name: 'agentmeter.fidelity.gamma', version: '2025.11.3' }],
      plans: [],
    },
    {
      resource: { [ATTR_SERVICE_NAME]: 'fidelity-c', 'tenant.id': 'tenant-resource-level' },
      scopes: [{ name: 'agentmeter.fidelity.delta', version: '9.9.9' }],
      plans: [],
    },
  ];

  const tracesByProvider = providers.map(() => []);
  const allNodes = [];
  let spanCounter = 0;

  for (let t = 0; t < nTraces; t++) {
    const p = t % providers.length;
    const scopeOf = (k) => k % providers[p].scopes.length;
    const mk = (name, depth) => {
      const i = spanCounter++;
      const kind = ALL_KINDS[i % ALL_KINDS.length];
      // Rotate through attribute shapes so every type shows up alone and together.
      let attrs;
      switch (i % 6) {
        case 0: attrs = kitchenSinkAttrs(i); break;
        case 1: attrs = { 'fid.only.string': `only-${i}` }; break;
        case 2: attrs = { 'fid.only.int': i * 1000003, 'fid.only.double': i + 0.5 }; break;
        case 3: attrs = { 'fid.only.bool': i % 2 === 0, 'fid.only.array.bool': [false] }; break;
        case 4: attrs = {}; break; // no attributes at all
        default: {
          // many attributes on one span (stays under the span limit set below)
          attrs = {};
          for (let k = 0; k < 100; k++) attrs[`fid.many.${String(k).padStart(3, '0')}`] = k % 2 ? k : `v${k}`;
        }
      }
      if (i % 97 === 0) attrs['fid.string.large'] = 'L'.repeat(16384) + `-${i}`;
      const n = node(name, kind, attrs, { durNs: BigInt(rng.int(1, 200)) * MS + BigInt(i % 1000) });
      n.scopeIndex = scopeOf(i);
      // Status: unset, ok, or error with a message (sometimes unicode, sometimes empty).
      switch (i % 5) {
        case 1: n.status = { code: SpanStatusCode.OK }; break;
        case 2: n.status = { code: SpanStatusCode.ERROR, message: `failure #${i}: ошибка ⚠` }; break;
        case 3: n.status = { code: SpanStatusCode.ERROR }; break; // error without message
        default: break;
      }
      // Events with and without attributes.
      if (i % 3 === 0) {
        n.events.push({ name: 'fid.event.plain', at: 0.25, attrs: undefined });
        n.events.push({
          name: 'fid.event.attrs 事件', at: 0.5,
          attrs: { 'ev.string': `e${i}`, 'ev.int': i, 'ev.double': 0.75, 'ev.bool': false, 'ev.array': ['p', 'q'] },
        });
      }
      if (depth === 0 && i % 4 === 0) {
        n.events.push({ name: 'exception', at: 0.9, attrs: { 'exception.type': 'ValueError', 'exception.message': 'bad input', 'exception.stacktrace': 'at f (x.js:1:1)\nat g (y.js:2:2)' } });
      }
      allNodes.push(n);
      return n;
    };
    // Each trace: a root, 5 children, each child with 4 grandchildren = 26 spans.
    const root = mk(`fidelity root ${t} ✓`, 0);
    for (let c = 0; c < 5; c++) {
      const child = mk(c === 4 ? 'x'.repeat(300) : `fidelity child ${t}.${c}`, 1);
      for (let g = 0; g < 4; g++) child.children.push(mk(`fidelity grandchild ${t}.${c}.${g}`, 2));
      root.children.push(child);
    }
    // Links: to the previous trace's root (another trace, maybe another resource) and
    // to a sibling in the same trace, with attributes and a tracestate.
    if (t > 0) {
      const prevRoot = tracesByProvider.flat().find((x) => x.t === t - 1).root;
      root.links.push(linkTo(prevRoot, { 'link.reason': 'follows-from', 'link.index': t, 'link.ok': true }, 'vendor=abc,other=1'));
      root.children[1].links.push(linkTo(prevRoot, {}));
    }
    root.children[4].children[0].links.push(linkTo(root.children[0], { 'link.kind': 'sibling', 'link.weight': 0.5 }));
    layout(root, opts.baseNs + BigInt(t) * 60000n * MS + BigInt(t), rng);
    tracesByProvider[p].push({ t, root });
  }

  // One distributed trace across resources: a CLIENT span in fidelity-a whose SERVER
  // child lives in fidelity-b (same trace id, different resource in the same request).
  const cross = node('cross-service call', SpanKind.CLIENT, { 'peer.service': 'fidelity-b' });
  cross.scopeIndex = 0;
  const server = node('cross-service handler', SpanKind.SERVER, { 'fid.cross': true }, { durNs: 42n * MS + 42n });
  server.providerIndex = 1;
  server.scopeIndex = 0;
  cross.children.push(server);
  layout(cross, opts.baseNs + BigInt(nTraces) * 60000n * MS, rng);
  tracesByProvider[0].push({ t: nTraces, root: cross });

  providers.forEach((p, i) => {
    p.plans = tracesByProvider[i].sort((a, b) => a.t - b.t).map((x) => ({ plan: x.root, scope: x.root.scopeIndex }));
  });
  // Plans must be materialized in trace order so link targets exist first.
  const order = tracesByProvider.flat().sort((a, b) => a.t - b.t).map((x) => x.root);
  return { providers, order, summary: { fidelitySpans: spanCounter + 2 } };
}

// ---------------------------------------------------------------------------------------
// Export pipeline: one shared processor + recording exporter fed by every provider
// ---------------------------------------------------------------------------------------

/**
 * Wraps a real OTLP exporter: forwards every batch, records every ExportResult, and
 * keeps the ReadableSpans of successful calls. After the first failure it fails the
 * remaining calls at once (no point waiting for more timeouts).
 */
class RecordingExporter {
  constructor(inner) {
    this.inner = inner;
    this.calls = [];      // { spans, code, error }
    this.exported = [];   // ReadableSpan[] that the receiver acknowledged
    this.firstError = null;
  }
  export(spans, resultCallback) {
    if (this.firstError) {
      this.calls.push({ spans: spans.length, code: ExportResultCode.FAILED, error: 'skipped after earlier failure' });
      resultCallback({ code: ExportResultCode.FAILED, error: new Error('skipped after earlier failure') });
      return;
    }
    this.inner.export(spans, (result) => {
      const call = { spans: spans.length, code: result.code };
      if (result.code === ExportResultCode.SUCCESS) {
        this.exported.push(...spans);
      } else {
        const err = result.error || new Error('export failed without an error object');
        call.error = String(err && err.message ? err.message : err);
        if (!this.firstError) this.firstError = err;
      }
      this.calls.push(call);
      resultCallback(result);
    });
  }
  forceFlush() { return this.inner.forceFlush ? this.inner.forceFlush() : Promise.resolve(); }
  shutdown() { return this.inner.shutdown(); }
}

/**
 * A per-provider SpanProcessor that forwards to one shared processor, so spans of
 * several resources and scopes travel in the same export request. It counts ended
 * spans and leaves shutting the shared processor down to the caller.
 */
class ForwardingProcessor {
  constructor(shared, counter) { this.shared = shared; this.counter = counter; }
  onStart(span, ctx) { this.shared.onStart(span, ctx); }
  onEnd(span) { this.counter.ended++; this.shared.onEnd(span); }
  forceFlush() { return this.shared.forceFlush(); }
  shutdown() { return Promise.resolve(); }
}

/**
 * A diag logger that prints like DiagConsoleLogger and records the partial-success
 * payloads the OTLP exporters log ("Received Partial Success response: {...}").
 */
class PartialSuccessCatcher {
  constructor(sink) { this.sink = sink; this.console = new api.DiagConsoleLogger(); }
  error(...a) { this.console.error(...a); }
  warn(msg, ...a) {
    if (typeof msg === 'string' && msg.startsWith('Received Partial Success response')) {
      let p = a[0];
      try { p = JSON.parse(a[0]); } catch (_) { /* keep the raw text */ }
      this.sink.push(p);
    }
    this.console.warn(msg, ...a);
  }
  info(...a) { this.console.info(...a); }
  debug(...a) { this.console.debug(...a); }
  verbose(...a) { this.console.verbose(...a); }
}

function makeExporter(opts) {
  const gzip = opts.exporter.endsWith('-gzip');
  // CompressionAlgorithm.GZIP / .NONE from @opentelemetry/otlp-exporter-base are these strings.
  const compression = gzip ? 'gzip' : 'none';
  const common = { url: opts.endpoint, compression, timeoutMillis: opts.timeoutMs };
  if (opts.exporter.startsWith('grpc')) {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
    return new OTLPTraceExporter(common); // http:// endpoint => insecure channel
  }
  if (opts.exporter.startsWith('http-json')) {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
    return new OTLPTraceExporter(common);
  }
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
  return new OTLPTraceExporter(common);
}

// ---------------------------------------------------------------------------------------
// The JSON description of what was sent
// ---------------------------------------------------------------------------------------

/** A typed attribute value as {type, value}; arrays hold typed elements. */
function typedValue(v) {
  if (typeof v === 'string') return { type: 'string', value: v };
  if (typeof v === 'boolean') return { type: 'bool', value: v };
  if (typeof v === 'number') {
    // The OTLP transformer sends integral numbers as intValue, others as doubleValue.
    if (Number.isInteger(v)) {
      if (!Number.isSafeInteger(v)) throw new Error(`unsafe integer attribute ${v}`);
      return { type: 'int', value: v };
    }
    return { type: 'double', value: v };
  }
  if (v instanceof Uint8Array) return { type: 'bytes', value: Buffer.from(v).toString('base64') };
  if (Array.isArray(v)) return { type: 'array', value: v.map(typedValue) };
  throw new Error(`unsupported attribute value ${String(v)}`);
}

function typedAttrs(attrs) {
  const out = {};
  for (const [k, v] of Object.entries(attrs || {})) out[k] = typedValue(v);
  return out;
}

function describeSpan(s) {
  const ctx = s.spanContext();
  const parent = s.parentSpanContext;
  return {
    traceId: ctx.traceId,
    spanId: ctx.spanId,
    parentSpanId: parent && parent.spanId ? parent.spanId : '',
    traceState: ctx.traceState ? ctx.traceState.serialize() : '',
    name: s.name,
    kind: s.kind + 1, // API SpanKind is OTLP's minus one (OTLP 0 = unspecified)
    startTimeUnixNano: hrToNanoString(s.startTime),
    endTimeUnixNano: hrToNanoString(s.endTime),
    attributes: typedAttrs(s.attributes),
    droppedAttributesCount: s.droppedAttributesCount,
    events: s.events.map((e) => ({
      name: e.name,
      timeUnixNano: hrToNanoString(e.time),
      attributes: typedAttrs(e.attributes),
      droppedAttributesCount: e.droppedAttributesCount || 0,
    })),
    droppedEventsCount: s.droppedEventsCount,
    links: s.links.map((l) => ({
      traceId: l.context.traceId,
      spanId: l.context.spanId,
      traceState: l.context.traceState ? l.context.traceState.serialize() : '',
      attributes: typedAttrs(l.attributes),
      droppedAttributesCount: l.droppedAttributesCount || 0,
    })),
    droppedLinksCount: s.droppedLinksCount,
    status: { code: s.status.code, message: s.status.message || '' }, // API codes == OTLP codes
    resource: { attributes: typedAttrs(s.resource.attributes) },
    scope: { name: s.instrumentationScope.name, version: s.instrumentationScope.version || '' },
  };
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  // Route the SDK's own warnings and errors (e.g. failed exports) to stderr, and catch
  // OTLP partial-success responses, which the exporters report as SUCCESS + a warning.
  const partialSuccesses = [];
  api.diag.setLogger(new PartialSuccessCatcher(partialSuccesses), api.DiagLogLevel.WARN);

  const built = {
    agents: buildAgents,
    fidelity: buildFidelity,
    openllmetry: buildOpenLLMetry,
    openinference: buildOpenInference,
  }[opts.scenario](opts);

  const exporter = new RecordingExporter(makeExporter(opts));
  const shared = opts.processor === 'simple'
    ? new SimpleSpanProcessor(exporter)
    : new BatchSpanProcessor(exporter, {
      maxQueueSize: 1000000, // never drop: the whole run fits in the queue
      maxExportBatchSize: 512,
      scheduledDelayMillis: 200,
      exportTimeoutMillis: opts.timeoutMs + 5000,
    });
  const counter = { ended: 0 };
  const idGenerator = new SeededIdGenerator(opts.seed);
  // Generous limits so nothing is truncated or dropped; the dropped counts are checked.
  const spanLimits = {
    attributeCountLimit: 1000, attributeValueLengthLimit: Infinity, eventCountLimit: 1000,
    linkCountLimit: 1000, attributePerEventCountLimit: 1000, attributePerLinkCountLimit: 1000,
  };

  const providers = built.providers.map((p) => {
    const provider = new BasicTracerProvider({
      // defaultResource() adds telemetry.sdk.*; the scenario's attributes win.
      resource: defaultResource().merge(resourceFromAttributes(p.resource)),
      spanProcessors: [new ForwardingProcessor(shared, counter)],
      idGenerator,
      spanLimits,
    });
    const tracers = p.scopes.map((sc) => provider.getTracer(sc.name, sc.version));
    return { provider, tracers, spec: p };
  });

  // Resolve which tracer each plan node uses (fidelity nodes may pick scope/provider).
  const assignTracers = (n, providerIndex) => {
    const pi = n.providerIndex !== undefined ? n.providerIndex : providerIndex;
    n.tracer = providers[pi].tracers[n.scopeIndex || 0];
    for (const c of n.children) assignTracers(c, pi);
  };
  built.providers.forEach((p, pi) => p.plans.forEach(({ plan }) => assignTracers(plan, pi)));
  const order = built.order || built.providers.flatMap((p) => p.plans.map((x) => x.plan));
  for (const plan of order) materialize(plan, undefined, plan.tracer);

  // Flush everything, then shut down (providers first, then the shared pipeline).
  let failure = null;
  try {
    for (const p of providers) await p.provider.forceFlush();
    await shared.forceFlush();
    for (const p of providers) await p.provider.shutdown();
    await shared.shutdown();
  } catch (e) {
    failure = e;
  }

  const failed = exporter.calls.filter((c) => c.code !== ExportResultCode.SUCCESS);
  const problems = [];
  if (failed.length) problems.push(`${failed.length} of ${exporter.calls.length} export calls failed; first error: ${failed[0].error}`);
  else if (failure) problems.push(`flush/shutdown threw: ${failure.message || failure}`);
  // A partial success that rejected spans is a failure; one with only a message is not.
  const rejected = partialSuccesses.filter((p) => !(p && typeof p === 'object' && Number(p.rejectedSpans || 0) === 0));
  if (rejected.length) problems.push(`receiver rejected spans (OTLP partial success): ${JSON.stringify(rejected[0])}`);
  if (exporter.calls.length === 0) problems.push('no export call was made');
  const ids = new Set(exporter.exported.map((s) => s.spanContext().spanId));
  if (!failed.length && (exporter.exported.length !== counter.ended || ids.size !== counter.ended)) {
    problems.push(`${counter.ended} spans ended but ${exporter.exported.length} (${ids.size} distinct) were exported`);
  }
  if (problems.length) {
    process.stderr.write(`send_traces: FAILED sending to ${opts.endpoint} with ${opts.exporter}: ${problems.join('; ')}\n`);
    process.exit(1);
  }

  const spans = exporter.exported.map(describeSpan);
  for (const s of spans) {
    if (s.droppedAttributesCount || s.droppedEventsCount || s.droppedLinksCount) {
      throw new Error(`span ${s.spanId} had attributes/events/links dropped by the SDK`);
    }
  }
  const doc = {
    generator: 'agentmeter tests/integration/js/send_traces.js',
    exporter: opts.exporter,
    endpoint: opts.endpoint,
    scenario: opts.scenario,
    seed: opts.seed,
    sessions: opts.sessions,
    tracesPerSession: opts.tracesPerSession,
    processor: opts.processor,
    exportCalls: exporter.calls,
    partialSuccesses, // warnings-only partial successes (rejectedSpans 0), if any
    summary: {
      spans: spans.length,
      traces: new Set(spans.map((s) => s.traceId)).size,
      ...built.summary,
    },
    spans,
  };
  fs.mkdirSync(path.dirname(path.resolve(opts.out)), { recursive: true });
  fs.writeFileSync(opts.out, JSON.stringify(doc, null, 1) + '\n');
  process.stdout.write(`send_traces: sent ${spans.length} spans in ${doc.summary.traces} traces ` +
    `with ${opts.exporter} to ${opts.endpoint} in ${exporter.calls.length} export call(s); wrote ${opts.out}\n`);
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`send_traces: FAILED: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
