/*
 * loadgen_traffic.c - agent-shaped OTLP traffic, and what it should cost.
 *
 * What the traffic looks like, and why.  agentmeter is judged on the traces
 * real agents send, so the generator copies their shape rather than sending
 * uniform spans:
 *
 *   - A session (a conversation) is several traces; `active_sessions`
 *     sessions run at once and their traces interleave, as they do at a
 *     collector gateway.  Attribution keys (session, user, tenant, agent) sit
 *     on the root span only, so `propagate` has something to do.
 *   - A trace is an `invoke_agent` root; its steps are LLM calls (`chat`),
 *     tool calls (`execute_tool`), sometimes an `embeddings` call or a nested
 *     sub-agent (another `invoke_agent`, up to depth 2).  The context grows
 *     with every step, later calls read most of it from the prompt cache,
 *     Anthropic calls write to it, reasoning models spend reasoning tokens.
 *   - Some tool calls fail (status ERROR), a few LLM calls fail without usage
 *     (rate limited), and about one trace in twenty loops: the same tool with
 *     the same arguments, 6 to 8 times in a row (anomaly `loops`, default
 *     max_repeats 5).
 *   - Each session is instrumented with one of three conventions (§5):
 *     OpenTelemetry GenAI, OpenLLMetry (traceloop) or OpenInference; agent
 *     spans of the GenAI and OpenInference flavours repeat their children's
 *     token totals, as real instrumentations do, which must not be billed.
 *     Spans carry about ten attributes each.
 *   - Spans leave in the order they end (children before parents, the root
 *     last), packed `spans_per_request` to a request, one ResourceSpans per
 *     run of spans of the same session: the shape of a BatchSpanProcessor
 *     behind a gateway.
 *
 * Determinism: every session and every trace draws from its own generator
 * seeded by (seed, session, trace), and timestamps start at a fixed base
 * time, so the same options give byte-identical requests.
 *
 * Expected cost: each request records, per session, the cost of its spans
 * priced here from prices copied from agentmeter's built-in rate card
 * (deploy/ratecards/default.yaml, id agentmeter-default, version
 * 2026-11-01), independently of agentmeter's code.  Prices are held as
 * nano-USD per token (USD per 1M tokens x 1000), so every cost is an exact
 * integer.  Token semantics are OpenTelemetry's: input includes cache reads
 * and writes (which are priced at their own rates and subtracted from
 * input), output includes reasoning (priced at the output rate).  Agent
 * spans are never priced from their own tokens.  Tools with a per-call price
 * are priced per call; only tools without a price ever fail, so no expected
 * figure depends on how errors are billed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "am_common.h"
#include "am_otlp.h"
#include "loadgen.h"

const char lg_price_source[] =
    "agentmeter built-in rate card deploy/ratecards/default.yaml (id agentmeter-default, "
    "version 2026-11-01), prices copied into tests/loadgen/loadgen_traffic.c";

/* ---- deterministic randomness ---------------------------------------- */

typedef struct rng {
    uint64_t state;
} rng_t;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static rng_t rng_for(uint64_t seed, uint64_t a, uint64_t b)
{
    uint64_t s = seed ^ UINT64_C(0x6a09e667f3bcc908);
    s = splitmix64(&s) ^ (a * UINT64_C(0xff51afd7ed558ccd));
    s = splitmix64(&s) ^ (b * UINT64_C(0xc4ceb9fe1a85ec53));
    return (rng_t){.state = s};
}

static uint64_t rng_next(rng_t *r)
{
    return splitmix64(&r->state);
}

/* Uniform in [lo, hi]. */
static int64_t rng_range(rng_t *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

static bool rng_chance(rng_t *r, int percent)
{
    return (int)(rng_next(r) % 100) < percent;
}

static void rng_bytes(rng_t *r, uint8_t *out, size_t len)
{
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = rng_next(r);
        for (size_t j = 0; j < 8 && i + j < len; j++) {
            out[i + j] = (uint8_t)(v >> (8 * j));
        }
    }
}

/* ---- catalogue: models, tools, agents -------------------------------- */

/* Prices in nano-USD per token (USD per 1M tokens x 1000); -1 = the card
 * has no such price, and the generator never reports such tokens. */
typedef struct model {
    const char *request;  /* gen_ai.request.model */
    const char *response; /* gen_ai.response.model (a dated snapshot) */
    const char *provider; /* gen_ai.provider.name / llm.provider */
    const char *system;   /* OpenLLMetry gen_ai.system */
    int64_t input, output, cache_read, cache_write;
    bool reasoning;
    bool embedding;
} model_t;

/* From deploy/ratecards/default.yaml (version 2026-11-01). */
static const model_t models[] = {
    /* gpt-4o: { input: 2.50, output: 10.00, cache_read: 1.25 } */
    {"gpt-4o", "gpt-4o-2024-08-06", "openai", "OpenAI", 2500, 10000, 1250, -1, false, false},
    /* gpt-5-mini: { input: 0.25, output: 2.00, cache_read: 0.025 } */
    {"gpt-5-mini", "gpt-5-mini-2025-08-07", "openai", "OpenAI", 250, 2000, 25, -1, true, false},
    /* claude-sonnet-4-5: { input: 3.00, output: 15.00, cache_read: 0.30, cache_write: 3.75 },
     * tier above 200K input tokens never reached here */
    {"claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "anthropic", "Anthropic", 3000,
     15000, 300, 3750, false, false},
    /* gemini-2.5-flash: { input: 0.30, output: 2.50, cache_read: 0.03 } */
    {"gemini-2.5-flash", "gemini-2.5-flash", "gcp.gemini", "Google", 300, 2500, 30, -1, true,
     false},
    /* claude-haiku-4-5: { input: 1.00, output: 5.00, cache_read: 0.10, cache_write: 1.25 } */
    {"claude-haiku-4-5", "claude-haiku-4-5-20251001", "anthropic", "Anthropic", 1000, 5000, 100,
     1250, false, false},
    /* gpt-4.1-mini: { input: 0.40, output: 1.60, cache_read: 0.10 } */
    {"gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", "openai", "OpenAI", 400, 1600, 100, -1, false,
     false},
    /* text-embedding-3-small: { input: 0.02, output: 0.00 } */
    {"text-embedding-3-small", "text-embedding-3-small", "openai", "OpenAI", 20, 0, -1, -1, false,
     true},
};
enum { M_GPT4O, M_GPT5MINI, M_SONNET, M_GEMINI_FLASH, M_HAIKU, M_GPT41MINI, M_EMBED };
/* Models an agent (or a sub-agent) picks its chat model from. */
static const uint8_t chat_models[] = {M_GPT4O,        M_GPT5MINI, M_SONNET,
                                      M_GEMINI_FLASH, M_HAIKU,    M_GPT41MINI};

typedef struct tool {
    const char *name;
    const char *type; /* gen_ai.tool.type */
    const char *description;
    const char *arg_key;
    int64_t per_call_nano; /* 0 = no price in the card */
    int weight;
} tool_t;

/* per_call prices from the card's `tools:` section. */
static const tool_t tools[] = {
    {"web_search", "extension", "Search the web", "query", 10000000, 20},              /* $0.01 */
    {"file_search", "extension", "Search uploaded files", "query", 2500000, 10},       /* $0.0025 */
    {"code_interpreter", "extension", "Run Python in a sandbox", "code", 30000000, 5}, /* $0.03 */
    {"get_weather", "function", "Current weather for a city", "city", 0, 12},
    {"run_sql", "function", "Run a read-only SQL query", "sql", 0, 15},
    {"read_file", "function", "Read a file from the workspace", "path", 0, 15},
    {"http_request", "function", "Call an internal HTTP API", "url", 0, 13},
    {"send_email", "function", "Send an email to the user", "to", 0, 10},
};
#define TOOL_WEIGHT_TOTAL 100

static const char *const agent_names[] = {
    "support-agent",  "coding-agent",      "research-agent",
    "travel-planner", "billing-assistant", "sql-analyst",
};
static const char *const sub_agent_names[] = {
    "web-researcher", "code-reviewer", "planner", "summarizer", "retriever",
};
static const char *const tenants[] = {"globex", "initech", "umbrella", "hooli",
                                      "stark",  "wayne",   "wonka",    "tyrell"};

enum { FLAVOR_GENAI, FLAVOR_OPENLLMETRY, FLAVOR_OPENINFERENCE, N_FLAVORS };

static const struct {
    const char *scope;
    const char *version;
    const char *sdk_language;
} flavors[N_FLAVORS] = {
    [FLAVOR_GENAI] = {"opentelemetry.instrumentation.openai_agents", "0.1.0", "python"},
    [FLAVOR_OPENLLMETRY] = {"opentelemetry.instrumentation.langchain", "0.47.3", "python"},
    [FLAVOR_OPENINFERENCE] = {"openinference.instrumentation.openai_agents", "1.2.0", "python"},
};

/* ---- span specs ------------------------------------------------------ */

typedef enum span_kind { SK_AGENT, SK_CHAT, SK_EMBED, SK_TOOL } span_kind_t;

/* A span before it becomes protobuf: plain data, copied freely. */
typedef struct span_spec {
    uint8_t kind;
    uint8_t model;
    uint8_t tool;
    uint8_t agent; /* index into agent_names (root) or sub_agent_names */
    bool is_root;
    bool error;
    bool tool_calls; /* chat ended asking for tools */
    bool has_totals; /* agent span repeating its descendants' usage */
    uint32_t session;
    uint32_t trace; /* trace number within the session */
    uint32_t args_id;
    uint32_t seq; /* span number within the trace */
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];
    bool has_parent;
    uint64_t start_ns;
    uint64_t end_ns;
    int64_t tokens[LG_N_TOKEN_KINDS];
    int64_t cost_nano; /* expected cost of this span alone */
    bool tool_fee;
} span_spec_t;

typedef struct session_info {
    uint8_t flavor;
    uint8_t agent;
    uint8_t model;
    uint8_t sub_model;
    uint8_t tenant;
    uint32_t user;
    uint32_t service;
    uint64_t start_ns;
    char id[40];
} session_info_t;

#define TRACE_MAX_SPANS 96
#define TRACE_SOFT_LIMIT 64 /* stop adding steps past this many spans */

typedef struct trace_ctx {
    rng_t rng;
    const session_info_t *session;
    uint32_t session_index;
    uint32_t trace_index;
    span_spec_t spans[TRACE_MAX_SPANS];
    uint32_t count;
    uint8_t trace_id[16];
    uint64_t now_ns;
    int64_t context_tokens; /* the conversation so far */
    int64_t cached_tokens;  /* what the provider's prompt cache holds */
    uint32_t llm_calls;
    bool loop_pending;
} trace_ctx_t;

static void session_init(session_info_t *s, uint64_t seed, uint32_t index, uint64_t base_ns)
{
    rng_t r = rng_for(seed, index, UINT64_MAX);
    s->flavor = (uint8_t)(rng_next(&r) % N_FLAVORS);
    s->agent = (uint8_t)(rng_next(&r) % AM_ARRAY_SIZE(agent_names));
    s->model = chat_models[rng_next(&r) % sizeof(chat_models)];
    s->sub_model = chat_models[rng_next(&r) % sizeof(chat_models)];
    s->tenant = (uint8_t)(rng_next(&r) % AM_ARRAY_SIZE(tenants));
    s->user = (uint32_t)(rng_next(&r) % 5000);
    s->service = s->agent;
    s->start_ns = base_ns + (uint64_t)index * UINT64_C(7000000000) +
                  (uint64_t)rng_range(&r, 0, 5000) * UINT64_C(1000000);
    uint64_t tag = rng_next(&r);
    snprintf(s->id, sizeof(s->id), "sess-%016" PRIx64, tag);
}

static span_spec_t *trace_add(trace_ctx_t *t, span_kind_t kind, const uint8_t *parent)
{
    span_spec_t *sp = &t->spans[t->count];
    memset(sp, 0, sizeof(*sp));
    sp->kind = (uint8_t)kind;
    sp->session = t->session_index;
    sp->trace = t->trace_index;
    sp->seq = t->count;
    memcpy(sp->trace_id, t->trace_id, 16);
    rng_bytes(&t->rng, sp->span_id, 8);
    sp->span_id[0] |= 1; /* never all zero */
    if (parent != NULL) {
        memcpy(sp->parent_id, parent, 8);
        sp->has_parent = true;
    }
    t->count++;
    return sp;
}

static bool trace_room(const trace_ctx_t *t, uint32_t needed)
{
    return t->count + needed <= TRACE_SOFT_LIMIT;
}

static int64_t price_chat(const model_t *m, const int64_t *tok)
{
    int64_t cache_read = m->cache_read >= 0 ? tok[LG_TOK_CACHE_READ] : 0;
    int64_t cache_write = m->cache_write >= 0 ? tok[LG_TOK_CACHE_WRITE] : 0;
    int64_t uncached = tok[LG_TOK_INPUT] - cache_read - cache_write;
    int64_t cost = uncached * m->input + tok[LG_TOK_OUTPUT] * m->output;
    if (cache_read > 0) {
        cost += cache_read * m->cache_read;
    }
    if (cache_write > 0) {
        cost += cache_write * m->cache_write;
    }
    return cost;
}

static void add_tokens(int64_t *total, const int64_t *add)
{
    for (int k = 0; k < LG_N_TOKEN_KINDS; k++) {
        total[k] += add[k];
    }
}

/* One LLM call: its usage follows the conversation so far. */
static void gen_chat(trace_ctx_t *t, const uint8_t *parent, uint8_t model_index, bool tool_calls,
                     int64_t *totals)
{
    const model_t *m = &models[model_index];
    span_spec_t *sp = trace_add(t, SK_CHAT, parent);
    sp->model = model_index;
    sp->tool_calls = tool_calls;
    sp->start_ns = t->now_ns;
    if (rng_chance(&t->rng, 1)) {
        /* rate limited: fails fast, reports no usage */
        sp->error = true;
        t->now_ns += (uint64_t)rng_range(&t->rng, 20, 200) * 1000000u;
        sp->end_ns = t->now_ns;
        return;
    }
    int64_t *tok = sp->tokens;
    int64_t input = t->context_tokens + rng_range(&t->rng, 20, 600);
    if (input > 150000) {
        input = 150000; /* stay under every long-context tier */
    }
    tok[LG_TOK_INPUT] = input;
    if (m->cache_read >= 0 && t->cached_tokens >= 1024) {
        int64_t hit = t->cached_tokens * rng_range(&t->rng, 85, 100) / 100;
        tok[LG_TOK_CACHE_READ] = AM_MIN(hit, input);
    }
    if (m->cache_write >= 0) {
        int64_t fresh = input - tok[LG_TOK_CACHE_READ];
        tok[LG_TOK_CACHE_WRITE] = fresh * rng_range(&t->rng, 40, 90) / 100;
    }
    int64_t visible = rng_range(&t->rng, 15, tool_calls ? 220 : 900);
    if (m->reasoning) {
        tok[LG_TOK_REASONING] = rng_range(&t->rng, 0, 1800);
    }
    tok[LG_TOK_OUTPUT] = visible + tok[LG_TOK_REASONING];
    sp->cost_nano = price_chat(m, tok);
    add_tokens(totals, tok);
    t->cached_tokens = input;
    t->context_tokens = input + visible;
    t->llm_calls++;
    uint64_t ms = 250 + (uint64_t)tok[LG_TOK_OUTPUT] * 8 + (uint64_t)(input / 2000);
    t->now_ns += ms * 1000000u;
    sp->end_ns = t->now_ns;
}

static void gen_embed(trace_ctx_t *t, const uint8_t *parent, int64_t *totals)
{
    span_spec_t *sp = trace_add(t, SK_EMBED, parent);
    sp->model = M_EMBED;
    sp->start_ns = t->now_ns;
    sp->tokens[LG_TOK_INPUT] = rng_range(&t->rng, 8, 3000);
    sp->cost_nano = sp->tokens[LG_TOK_INPUT] * models[M_EMBED].input;
    add_tokens(totals, sp->tokens);
    t->now_ns += (uint64_t)rng_range(&t->rng, 40, 250) * 1000000u;
    sp->end_ns = t->now_ns;
}

static uint8_t pick_tool(rng_t *r)
{
    int w = (int)(rng_next(r) % TOOL_WEIGHT_TOTAL);
    for (size_t i = 0; i < AM_ARRAY_SIZE(tools); i++) {
        w -= tools[i].weight;
        if (w < 0) {
            return (uint8_t)i;
        }
    }
    return 0;
}

static void gen_tool(trace_ctx_t *t, const uint8_t *parent, uint8_t tool_index, uint32_t args_id)
{
    const tool_t *tl = &tools[tool_index];
    span_spec_t *sp = trace_add(t, SK_TOOL, parent);
    sp->tool = tool_index;
    sp->args_id = args_id;
    sp->start_ns = t->now_ns;
    /* Only tools without a price fail, so expected costs never depend on
     * whether a failed call is billed. */
    sp->error = tl->per_call_nano == 0 && rng_chance(&t->rng, 5);
    if (tl->per_call_nano > 0) {
        sp->cost_nano = tl->per_call_nano;
        sp->tool_fee = true;
    }
    t->now_ns += (uint64_t)rng_range(&t->rng, 30, 2500) * 1000000u;
    sp->end_ns = t->now_ns;
    t->context_tokens += rng_range(&t->rng, 80, 2500); /* the tool result joins the context */
}

/* An agent step (root or nested): children first, the agent span last, as
 * spans end.  Returns the agent span's index. */
static uint32_t gen_agent(trace_ctx_t *t, const uint8_t *parent, uint32_t depth, uint8_t agent,
                          uint8_t model_index, int64_t *parent_totals)
{
    uint8_t self_id[8];
    rng_bytes(&t->rng, self_id, 8);
    self_id[0] |= 1;
    uint64_t start = t->now_ns;
    t->now_ns += (uint64_t)rng_range(&t->rng, 1, 15) * 1000000u;
    int64_t totals[LG_N_TOKEN_KINDS] = {0};

    uint32_t steps =
        depth == 0 ? (uint32_t)rng_range(&t->rng, 2, 7) : (uint32_t)rng_range(&t->rng, 1, 3);
    for (uint32_t step = 0; step < steps && trace_room(t, depth + 3); step++) {
        bool last = step + 1 == steps;
        gen_chat(t, self_id, model_index, !last, totals);
        if (last) {
            break;
        }
        if (depth == 0 && step == 1 && t->loop_pending && trace_room(t, 20)) {
            /* the agent is stuck: same tool, same arguments, again and again */
            t->loop_pending = false;
            uint8_t tool_index = pick_tool(&t->rng);
            uint32_t args_id = (uint32_t)rng_next(&t->rng);
            uint32_t repeats = (uint32_t)rng_range(&t->rng, 6, 8);
            for (uint32_t i = 0; i < repeats; i++) {
                gen_tool(t, self_id, tool_index, args_id);
                gen_chat(t, self_id, model_index, true, totals);
            }
        }
        int what = (int)rng_range(&t->rng, 0, 99);
        if (what < 15 && depth < 2 && trace_room(t, 10)) {
            uint8_t sub = (uint8_t)(rng_next(&t->rng) % AM_ARRAY_SIZE(sub_agent_names));
            gen_agent(t, self_id, depth + 1, sub, t->session->sub_model, totals);
        } else if (what < 25 && t->session->flavor == FLAVOR_GENAI) {
            gen_embed(t, self_id, totals);
        } else {
            uint32_t calls = (uint32_t)rng_range(&t->rng, 1, 3);
            for (uint32_t c = 0; c < calls; c++) {
                gen_tool(t, self_id, pick_tool(&t->rng), (uint32_t)rng_next(&t->rng));
            }
        }
    }

    span_spec_t *sp = trace_add(t, SK_AGENT, parent);
    memcpy(sp->span_id, self_id, 8);
    sp->agent = agent;
    sp->is_root = depth == 0;
    sp->model = model_index;
    sp->start_ns = start;
    t->now_ns += (uint64_t)rng_range(&t->rng, 1, 10) * 1000000u;
    sp->end_ns = t->now_ns;
    /* GenAI and OpenInference agent spans repeat their children's totals;
     * pricing them again would bill twice. */
    if (t->session->flavor != FLAVOR_OPENLLMETRY) {
        memcpy(sp->tokens, totals, sizeof(totals));
        sp->has_totals = true;
    }
    if (parent_totals != NULL) {
        add_tokens(parent_totals, totals);
    }
    return (uint32_t)(sp - t->spans);
}

static void gen_trace(trace_ctx_t *t, uint64_t seed, const session_info_t *s, uint32_t session,
                      uint32_t trace)
{
    t->rng = rng_for(seed, session, trace);
    t->session = s;
    t->session_index = session;
    t->trace_index = trace;
    t->count = 0;
    rng_bytes(&t->rng, t->trace_id, 16);
    t->trace_id[15] |= 1;
    /* traces of a session are minutes apart */
    uint64_t offset_s = 0;
    for (uint32_t i = 0; i < trace; i++) {
        offset_s += 20 + (uint64_t)((seed + session * 31u + i * 7u) % 160);
    }
    t->now_ns = s->start_ns + offset_s * UINT64_C(1000000000);
    t->context_tokens = rng_range(&t->rng, 1200, 6000); /* system prompt + user turn */
    /* later traces of a session start with the system prompt cached */
    t->cached_tokens = trace > 0 ? t->context_tokens - rng_range(&t->rng, 100, 1100) : 0;
    t->llm_calls = 0;
    t->loop_pending = rng_chance(&t->rng, 5);
    gen_agent(t, NULL, 0, s->agent, s->model, NULL);
}

/* ---- scratch memory for one request's protobuf structs --------------- */

typedef struct scratch_chunk {
    struct scratch_chunk *next;
    size_t used;
    size_t cap;
    max_align_t data[];
} scratch_chunk_t;

typedef struct scratch {
    scratch_chunk_t *head;
} scratch_t;

static void *scratch_alloc(scratch_t *s, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    scratch_chunk_t *c = s->head;
    if (c == NULL || c->cap - c->used < size) {
        size_t cap = size > (1u << 20) ? size : (1u << 20);
        scratch_chunk_t *n = malloc(sizeof(*n) + cap);
        if (n == NULL) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(2);
        }
        n->next = c;
        n->used = 0;
        n->cap = cap;
        s->head = n;
        c = n;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    return p;
}

static void scratch_reset(scratch_t *s)
{
    /* keep the newest chunk, free the rest */
    if (s->head == NULL) {
        return;
    }
    scratch_chunk_t *c = s->head->next;
    while (c != NULL) {
        scratch_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    s->head->next = NULL;
    s->head->used = 0;
}

static void scratch_free(scratch_t *s)
{
    scratch_reset(s);
    free(s->head);
    s->head = NULL;
}

static char *scratch_printf(scratch_t *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static char *scratch_printf(scratch_t *s, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    }
    size_t len = (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1;
    char *out = scratch_alloc(s, len + 1);
    memcpy(out, tmp, len);
    out[len] = '\0';
    return out;
}

/* ---- attributes ------------------------------------------------------ */

#define MAX_ATTRS 24

typedef struct attrs {
    scratch_t *scratch;
    am_pb_keyvalue_t *kv[MAX_ATTRS];
    size_t count;
} attrs_t;

static am_pb_anyvalue_t *attr_add(attrs_t *a, const char *key)
{
    if (a->count >= MAX_ATTRS) {
        fprintf(stderr, "loadgen: too many attributes on one span (bug)\n");
        exit(2);
    }
    am_pb_keyvalue_t *kv = scratch_alloc(a->scratch, sizeof(*kv));
    am_pb_anyvalue_t *v = scratch_alloc(a->scratch, sizeof(*v));
    *kv = (am_pb_keyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
    *v = (am_pb_anyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    kv->key = (char *)key;
    kv->value = v;
    a->kv[a->count++] = kv;
    return v;
}

static void attr_str(attrs_t *a, const char *key, const char *value)
{
    am_pb_anyvalue_t *v = attr_add(a, key);
    v->value_case = AM_PB_VALUE(STRING_VALUE);
    v->string_value = (char *)value;
}

static void attr_int(attrs_t *a, const char *key, int64_t value)
{
    am_pb_anyvalue_t *v = attr_add(a, key);
    v->value_case = AM_PB_VALUE(INT_VALUE);
    v->int_value = value;
}

static void attr_int_nz(attrs_t *a, const char *key, int64_t value)
{
    if (value > 0) {
        attr_int(a, key, value);
    }
}

static void attr_double(attrs_t *a, const char *key, double value)
{
    am_pb_anyvalue_t *v = attr_add(a, key);
    v->value_case = AM_PB_VALUE(DOUBLE_VALUE);
    v->double_value = value;
}

static void attr_bool(attrs_t *a, const char *key, bool value)
{
    am_pb_anyvalue_t *v = attr_add(a, key);
    v->value_case = AM_PB_VALUE(BOOL_VALUE);
    v->bool_value = value;
}

static void attr_str_array1(attrs_t *a, const char *key, const char *value)
{
    am_pb_anyvalue_t *v = attr_add(a, key);
    am_pb_arrayvalue_t *arr = scratch_alloc(a->scratch, sizeof(*arr));
    am_pb_anyvalue_t **items = scratch_alloc(a->scratch, sizeof(*items));
    am_pb_anyvalue_t *item = scratch_alloc(a->scratch, sizeof(*item));
    *arr = (am_pb_arrayvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ARRAY_VALUE__INIT;
    *item = (am_pb_anyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    item->value_case = AM_PB_VALUE(STRING_VALUE);
    item->string_value = (char *)value;
    items[0] = item;
    arr->n_values = 1;
    arr->values = items;
    v->value_case = AM_PB_VALUE(ARRAY_VALUE);
    v->array_value = arr;
}

static uint64_t span_tag(const span_spec_t *sp)
{
    uint64_t v = 0;
    memcpy(&v, sp->span_id, 8);
    return v;
}

static const char *tool_args(scratch_t *s, const span_spec_t *sp)
{
    const tool_t *tl = &tools[sp->tool];
    return scratch_printf(s, "{\"%s\": \"%s-%08" PRIx32 "\"}", tl->arg_key, tl->arg_key,
                          sp->args_id);
}

static const char *agent_name(const span_spec_t *sp)
{
    return sp->is_root ? agent_names[sp->agent] : sub_agent_names[sp->agent];
}

static void attrs_root(attrs_t *a, const session_info_t *s, const char *session_key,
                       const char *user_key)
{
    attr_str(a, session_key, s->id);
    attr_str(a, user_key, scratch_printf(a->scratch, "user-%04" PRIu32, s->user));
    attr_str(a, "tenant.id", tenants[s->tenant]);
}

static void attrs_genai(attrs_t *a, const span_spec_t *sp, const session_info_t *s)
{
    scratch_t *sc = a->scratch;
    const model_t *m = &models[sp->model];
    switch ((span_kind_t)sp->kind) {
    case SK_AGENT:
        attr_str(a, "gen_ai.operation.name", "invoke_agent");
        attr_str(a, "gen_ai.agent.name", agent_name(sp));
        attr_str(a, "gen_ai.agent.id", scratch_printf(sc, "asst_%012" PRIx64, span_tag(sp) >> 16));
        attr_str(a, "gen_ai.provider.name", m->provider);
        attr_str(a, "gen_ai.request.model", m->request);
        if (sp->is_root) {
            attrs_root(a, s, "gen_ai.conversation.id", "user.id");
        }
        if (sp->has_totals) {
            attr_int(a, "gen_ai.usage.input_tokens", sp->tokens[LG_TOK_INPUT]);
            attr_int(a, "gen_ai.usage.output_tokens", sp->tokens[LG_TOK_OUTPUT]);
            attr_int_nz(a, "gen_ai.usage.cache_read.input_tokens", sp->tokens[LG_TOK_CACHE_READ]);
        }
        break;
    case SK_CHAT:
        attr_str(a, "gen_ai.operation.name", "chat");
        attr_str(a, "gen_ai.provider.name", m->provider);
        attr_str(a, "gen_ai.request.model", m->request);
        attr_double(a, "gen_ai.request.temperature", 0.2);
        attr_int(a, "gen_ai.request.max_tokens", 4096);
        if (sp->error) {
            attr_str(a, "error.type", "rate_limit_exceeded");
            attr_str(a, "server.address", "api.example.com");
            break;
        }
        attr_str(a, "gen_ai.response.model", m->response);
        attr_str(a, "gen_ai.response.id", scratch_printf(sc, "resp_%016" PRIx64, span_tag(sp)));
        attr_str_array1(a, "gen_ai.response.finish_reasons",
                        sp->tool_calls ? "tool_calls" : "stop");
        attr_int(a, "gen_ai.usage.input_tokens", sp->tokens[LG_TOK_INPUT]);
        attr_int(a, "gen_ai.usage.output_tokens", sp->tokens[LG_TOK_OUTPUT]);
        attr_int_nz(a, "gen_ai.usage.cache_read.input_tokens", sp->tokens[LG_TOK_CACHE_READ]);
        attr_int_nz(a, "gen_ai.usage.cache_creation.input_tokens", sp->tokens[LG_TOK_CACHE_WRITE]);
        attr_int_nz(a, "gen_ai.usage.reasoning.output_tokens", sp->tokens[LG_TOK_REASONING]);
        break;
    case SK_EMBED:
        attr_str(a, "gen_ai.operation.name", "embeddings");
        attr_str(a, "gen_ai.provider.name", m->provider);
        attr_str(a, "gen_ai.request.model", m->request);
        attr_str(a, "gen_ai.response.model", m->response);
        attr_int(a, "gen_ai.usage.input_tokens", sp->tokens[LG_TOK_INPUT]);
        attr_int(a, "gen_ai.embeddings.dimension.count", 1536);
        attr_str_array1(a, "gen_ai.request.encoding_formats", "float");
        attr_str(a, "server.address", "api.openai.com");
        attr_int(a, "server.port", 443);
        break;
    case SK_TOOL: {
        const tool_t *tl = &tools[sp->tool];
        attr_str(a, "gen_ai.operation.name", "execute_tool");
        attr_str(a, "gen_ai.tool.name", tl->name);
        attr_str(a, "gen_ai.tool.type", tl->type);
        attr_str(a, "gen_ai.tool.description", tl->description);
        attr_str(a, "gen_ai.tool.call.id", scratch_printf(sc, "call_%016" PRIx64, span_tag(sp)));
        attr_str(a, "gen_ai.tool.call.arguments", tool_args(sc, sp));
        attr_str(a, "gen_ai.agent.name", agent_names[s->agent]);
        if (sp->error) {
            attr_str(a, "error.type", "ToolExecutionError");
        }
        break;
    }
    }
}

static void attrs_openllmetry(attrs_t *a, const span_spec_t *sp, const session_info_t *s)
{
    scratch_t *sc = a->scratch;
    const model_t *m = &models[sp->model];
    const char *workflow = agent_names[s->agent];
    switch ((span_kind_t)sp->kind) {
    case SK_AGENT:
        attr_str(a, "traceloop.span.kind", sp->is_root ? "workflow" : "agent");
        attr_str(a, "traceloop.entity.name", agent_name(sp));
        attr_str(a, "traceloop.workflow.name", workflow);
        attr_str(a, "gen_ai.agent.name", agent_name(sp));
        attr_str(a, "traceloop.entity.path", sp->is_root ? "" : workflow);
        if (sp->is_root) {
            attrs_root(a, s, "traceloop.association.properties.session_id", "enduser.id");
            attr_str(a, "traceloop.entity.input",
                     scratch_printf(sc, "{\"inputs\": {\"question\": \"q-%08" PRIx64 "\"}}",
                                    span_tag(sp) & 0xffffffffu));
        }
        break;
    case SK_CHAT:
    case SK_EMBED:
        attr_str(a, "llm.request.type", "chat");
        attr_str(a, "gen_ai.system", m->system);
        attr_str(a, "gen_ai.request.model", m->request);
        attr_double(a, "gen_ai.request.temperature", 0.0);
        attr_bool(a, "llm.is_streaming", false);
        attr_str(a, "traceloop.workflow.name", workflow);
        if (sp->error) {
            attr_str(a, "error.type", "RateLimitError");
            break;
        }
        attr_str(a, "gen_ai.response.model", m->response);
        attr_str(a, "gen_ai.response.id", scratch_printf(sc, "chatcmpl-%016" PRIx64, span_tag(sp)));
        attr_int(a, "gen_ai.usage.prompt_tokens", sp->tokens[LG_TOK_INPUT]);
        attr_int(a, "gen_ai.usage.completion_tokens", sp->tokens[LG_TOK_OUTPUT]);
        attr_int(a, "llm.usage.total_tokens", sp->tokens[LG_TOK_INPUT] + sp->tokens[LG_TOK_OUTPUT]);
        attr_int_nz(a, "gen_ai.usage.cache_read_input_tokens", sp->tokens[LG_TOK_CACHE_READ]);
        attr_int_nz(a, "gen_ai.usage.cache_creation_input_tokens", sp->tokens[LG_TOK_CACHE_WRITE]);
        attr_int_nz(a, "gen_ai.usage.reasoning_tokens", sp->tokens[LG_TOK_REASONING]);
        break;
    case SK_TOOL: {
        const tool_t *tl = &tools[sp->tool];
        attr_str(a, "traceloop.span.kind", "tool");
        attr_str(a, "traceloop.entity.name", tl->name);
        attr_str(a, "gen_ai.tool.name", tl->name);
        attr_str(a, "traceloop.workflow.name", workflow);
        attr_str(a, "traceloop.entity.path", workflow);
        attr_str(a, "traceloop.entity.input", tool_args(sc, sp));
        attr_str(a, "traceloop.entity.output",
                 sp->error ? ""
                           : scratch_printf(sc, "{\"result\": \"r-%08" PRIx64 "\"}",
                                            span_tag(sp) & 0xffffffffu));
        if (sp->error) {
            attr_str(a, "error.type", "ToolException");
        }
        break;
    }
    }
}

static void attrs_openinference(attrs_t *a, const span_spec_t *sp, const session_info_t *s)
{
    scratch_t *sc = a->scratch;
    const model_t *m = &models[sp->model];
    switch ((span_kind_t)sp->kind) {
    case SK_AGENT:
        attr_str(a, "openinference.span.kind", "AGENT");
        attr_str(a, "gen_ai.agent.name", agent_name(sp));
        attr_str(a, "graph.node.id", agent_name(sp));
        attr_str(a, "input.mime_type", "text/plain");
        if (sp->is_root) {
            attrs_root(a, s, "session.id", "user.id");
            attr_str(a, "input.value",
                     scratch_printf(sc, "question %08" PRIx64, span_tag(sp) & 0xffffffffu));
        }
        if (sp->has_totals) {
            attr_int(a, "llm.token_count.prompt", sp->tokens[LG_TOK_INPUT]);
            attr_int(a, "llm.token_count.completion", sp->tokens[LG_TOK_OUTPUT]);
            attr_int(a, "llm.token_count.total",
                     sp->tokens[LG_TOK_INPUT] + sp->tokens[LG_TOK_OUTPUT]);
        }
        break;
    case SK_CHAT:
    case SK_EMBED:
        attr_str(a, "openinference.span.kind", "LLM");
        attr_str(a, "llm.provider", m->provider);
        attr_str(a, "llm.system", m->provider);
        attr_str(a, "llm.model_name", sp->error ? m->request : m->response);
        attr_str(a, "llm.invocation_parameters", "{\"temperature\": 0.2, \"max_tokens\": 4096}");
        attr_str(a, "input.mime_type", "application/json");
        if (sp->error) {
            attr_str(a, "exception.type", "RateLimitError");
            break;
        }
        attr_str(a, "output.mime_type", "application/json");
        attr_int(a, "llm.token_count.prompt", sp->tokens[LG_TOK_INPUT]);
        attr_int(a, "llm.token_count.completion", sp->tokens[LG_TOK_OUTPUT]);
        attr_int(a, "llm.token_count.total", sp->tokens[LG_TOK_INPUT] + sp->tokens[LG_TOK_OUTPUT]);
        attr_int_nz(a, "llm.token_count.prompt_details.cache_read", sp->tokens[LG_TOK_CACHE_READ]);
        attr_int_nz(a, "llm.token_count.prompt_details.cache_write",
                    sp->tokens[LG_TOK_CACHE_WRITE]);
        attr_int_nz(a, "llm.token_count.completion_details.reasoning",
                    sp->tokens[LG_TOK_REASONING]);
        break;
    case SK_TOOL: {
        const tool_t *tl = &tools[sp->tool];
        const char *args = tool_args(sc, sp);
        attr_str(a, "openinference.span.kind", "TOOL");
        attr_str(a, "tool.name", tl->name);
        attr_str(a, "tool.description", tl->description);
        attr_str(a, "tool.parameters", args);
        attr_str(a, "input.value", args);
        attr_str(a, "input.mime_type", "application/json");
        attr_str(a, "output.mime_type", "application/json");
        if (sp->error) {
            attr_str(a, "exception.type", "ToolError");
            attr_str(a, "exception.message", "tool failed");
        } else {
            attr_str(a, "output.value",
                     scratch_printf(sc, "{\"result\": \"r-%08" PRIx64 "\"}",
                                    span_tag(sp) & 0xffffffffu));
        }
        break;
    }
    }
}

static const char *span_name(scratch_t *sc, const span_spec_t *sp)
{
    const model_t *m = &models[sp->model];
    switch ((span_kind_t)sp->kind) {
    case SK_AGENT:
        return scratch_printf(sc, "invoke_agent %s", agent_name(sp));
    case SK_CHAT:
        return scratch_printf(sc, "chat %s", m->request);
    case SK_EMBED:
        return scratch_printf(sc, "embeddings %s", m->request);
    case SK_TOOL:
        return scratch_printf(sc, "execute_tool %s", tools[sp->tool].name);
    }
    return "span";
}

static am_pb_span_t *build_span(scratch_t *sc, span_spec_t *sp, const session_info_t *s,
                                uint64_t *attr_total)
{
    am_pb_span_t *span = scratch_alloc(sc, sizeof(*span));
    *span = (am_pb_span_t)OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    span->trace_id = (ProtobufCBinaryData){16, sp->trace_id};
    span->span_id = (ProtobufCBinaryData){8, sp->span_id};
    if (sp->has_parent) {
        span->parent_span_id = (ProtobufCBinaryData){8, sp->parent_id};
    }
    span->flags = 0x101; /* sampled, parent/remote flags known */
    span->name = (char *)span_name(sc, sp);
    span->kind =
        sp->kind == SK_AGENT
            ? (sp->is_root ? OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_SERVER
                           : OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_INTERNAL)
        : sp->kind == SK_TOOL ? OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_INTERNAL
                              : OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT;
    span->start_time_unix_nano = sp->start_ns;
    span->end_time_unix_nano = sp->end_ns;

    attrs_t a = {.scratch = sc};
    switch (s->flavor) {
    case FLAVOR_GENAI:
        attrs_genai(&a, sp, s);
        break;
    case FLAVOR_OPENLLMETRY:
        attrs_openllmetry(&a, sp, s);
        break;
    default:
        attrs_openinference(&a, sp, s);
        break;
    }
    span->n_attributes = a.count;
    span->attributes = scratch_alloc(sc, a.count * sizeof(*span->attributes));
    memcpy(span->attributes, a.kv, a.count * sizeof(*span->attributes));
    *attr_total += a.count;

    am_pb_status_t *status = scratch_alloc(sc, sizeof(*status));
    *status = (am_pb_status_t)OPENTELEMETRY__PROTO__TRACE__V1__STATUS__INIT;
    if (sp->error) {
        status->code = AM_PB_STATUS_ERROR;
        status->message = sp->kind == SK_TOOL ? "tool call failed" : "429 Too Many Requests";
        span->status = status;
    }
    return span;
}

static am_pb_resource_spans_t *build_resource(scratch_t *sc, const session_info_t *s,
                                              am_pb_span_t **spans, size_t span_count)
{
    attrs_t a = {.scratch = sc};
    attr_str(&a, "service.name", agent_names[s->service]);
    attr_str(&a, "service.version", "1.4.2");
    attr_str(&a, "deployment.environment.name", "production");
    attr_str(&a, "telemetry.sdk.name", "opentelemetry");
    attr_str(&a, "telemetry.sdk.language", flavors[s->flavor].sdk_language);
    attr_str(&a, "telemetry.sdk.version", "1.38.0");
    attr_str(&a, "host.name",
             scratch_printf(sc, "pod-%s-%u", agent_names[s->service], (unsigned)(s->user % 7)));

    am_pb_resource_t *res = scratch_alloc(sc, sizeof(*res));
    *res = (am_pb_resource_t)OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
    res->n_attributes = a.count;
    res->attributes = scratch_alloc(sc, a.count * sizeof(*res->attributes));
    memcpy(res->attributes, a.kv, a.count * sizeof(*res->attributes));

    am_pb_scope_t *scope = scratch_alloc(sc, sizeof(*scope));
    *scope = (am_pb_scope_t)OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT;
    scope->name = (char *)flavors[s->flavor].scope;
    scope->version = (char *)flavors[s->flavor].version;

    am_pb_scope_spans_t *ss = scratch_alloc(sc, sizeof(*ss));
    *ss = (am_pb_scope_spans_t)OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    ss->scope = scope;
    ss->n_spans = span_count;
    ss->spans = spans;
    ss->schema_url = "https://opentelemetry.io/schemas/1.37.0";

    am_pb_scope_spans_t **ssv = scratch_alloc(sc, sizeof(*ssv));
    ssv[0] = ss;
    am_pb_resource_spans_t *rs = scratch_alloc(sc, sizeof(*rs));
    *rs = (am_pb_resource_spans_t)OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs->resource = res;
    rs->n_scope_spans = 1;
    rs->scope_spans = ssv;
    rs->schema_url = "https://opentelemetry.io/schemas/1.37.0";
    return rs;
}

/* ---- wire walk: where the trace ids are ------------------------------ */

static bool read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *pos < len; shift += 7) {
        uint8_t b = buf[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Walk message bytes [start, end): for each length-delimited field `field`,
 * call back with its payload range.  Other wire types are skipped. */
typedef void (*field_fn)(void *ctx, const uint8_t *buf, size_t start, size_t end);
static bool walk_fields(const uint8_t *buf, size_t start, size_t end, uint32_t field, field_fn fn,
                        void *ctx)
{
    size_t pos = start;
    while (pos < end) {
        uint64_t key;
        if (!read_varint(buf, end, &pos, &key)) {
            return false;
        }
        uint32_t wire = (uint32_t)(key & 7);
        uint64_t num = key >> 3;
        uint64_t v;
        switch (wire) {
        case 0:
            if (!read_varint(buf, end, &pos, &v)) {
                return false;
            }
            break;
        case 1:
            pos += 8;
            break;
        case 5:
            pos += 4;
            break;
        case 2:
            if (!read_varint(buf, end, &pos, &v) || v > end - pos) {
                return false;
            }
            if (num == field) {
                fn(ctx, buf, pos, pos + (size_t)v);
            }
            pos += (size_t)v;
            break;
        default:
            return false;
        }
    }
    return pos == end;
}

typedef struct offsets_ctx {
    uint32_t *out;
    uint32_t count;
    uint32_t cap;
    size_t base; /* offset of the message in the request buffer */
} offsets_ctx_t;

static void on_trace_id(void *ctx, const uint8_t *buf, size_t start, size_t end)
{
    offsets_ctx_t *oc = ctx;
    if (end - start == 16 && oc->count < oc->cap) {
        oc->out[oc->count++] = (uint32_t)(oc->base + start);
    }
    AM_UNUSED(buf);
}

static void on_span(void *ctx, const uint8_t *buf, size_t start, size_t end)
{
    walk_fields(buf, start, end, 1, on_trace_id, ctx);
}

static void on_scope_spans(void *ctx, const uint8_t *buf, size_t start, size_t end)
{
    walk_fields(buf, start, end, 2, on_span, ctx);
}

static void on_resource_spans(void *ctx, const uint8_t *buf, size_t start, size_t end)
{
    walk_fields(buf, start, end, 2, on_scope_spans, ctx);
}

void lg_request_set_cycle(lg_request_t *req, uint32_t cycle)
{
    if (req->trace_id_offsets == NULL || req->applied_cycle == cycle) {
        return;
    }
    uint32_t delta = req->applied_cycle ^ cycle;
    for (uint32_t i = 0; i < req->trace_id_count; i++) {
        uint8_t *id = req->buf + req->trace_id_offsets[i];
        id[0] ^= (uint8_t)(delta >> 24);
        id[1] ^= (uint8_t)(delta >> 16);
        id[2] ^= (uint8_t)(delta >> 8);
        id[3] ^= (uint8_t)delta;
    }
    req->applied_cycle = cycle;
}

/* ---- compression ----------------------------------------------------- */

static uint8_t *compress_message(lg_compression_t how, const uint8_t *msg, size_t len,
                                 size_t *out_len)
{
    if (how == LG_COMPRESS_ZSTD) {
        size_t cap = ZSTD_compressBound(len);
        uint8_t *out = malloc(5 + cap);
        if (out == NULL) {
            return NULL;
        }
        size_t n = ZSTD_compress(out + 5, cap, msg, len, 3);
        if (ZSTD_isError(n)) {
            free(out);
            return NULL;
        }
        *out_len = n;
        return out;
    }
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        return NULL;
    }
    size_t cap = deflateBound(&zs, (uLong)len);
    uint8_t *out = malloc(5 + cap);
    if (out == NULL) {
        deflateEnd(&zs);
        return NULL;
    }
    zs.next_in = (Bytef *)msg;
    zs.avail_in = (uInt)len;
    zs.next_out = out + 5;
    zs.avail_out = (uInt)cap;
    int rc = deflate(&zs, Z_FINISH);
    *out_len = zs.total_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- pool ------------------------------------------------------------ */

typedef struct builder {
    const lg_traffic_opts_t *opts;
    lg_pool_t *pool;
    size_t request_cap;
    span_spec_t *pending;
    uint32_t pending_count;
    session_info_t *sessions;
    uint32_t session_cap;
    scratch_t scratch;
} builder_t;

static int flush_request(builder_t *b)
{
    if (b->pending_count == 0) {
        return 0;
    }
    lg_pool_t *pool = b->pool;
    scratch_t *sc = &b->scratch;
    scratch_reset(sc);

    /* group runs of the same session into one ResourceSpans each */
    size_t groups = 0;
    for (uint32_t i = 0; i < b->pending_count; i++) {
        if (i == 0 || b->pending[i].session != b->pending[i - 1].session) {
            groups++;
        }
    }
    am_pb_resource_spans_t **rsv = scratch_alloc(sc, groups * sizeof(*rsv));
    am_pb_span_t **spans = scratch_alloc(sc, b->pending_count * sizeof(*spans));
    lg_contrib_t *contribs = calloc(groups, sizeof(*contribs));
    if (contribs == NULL) {
        return -1;
    }
    uint32_t contrib_count = 0;
    size_t g = 0;
    for (uint32_t i = 0; i < b->pending_count;) {
        uint32_t j = i;
        const session_info_t *s = &b->sessions[b->pending[i].session];
        while (j < b->pending_count && b->pending[j].session == b->pending[i].session) {
            spans[j] = build_span(sc, &b->pending[j], s, &pool->attribute_count);
            j++;
        }
        rsv[g++] = build_resource(sc, s, spans + i, j - i);

        /* expected cost of this run of spans, merged per session */
        lg_contrib_t *c = NULL;
        for (uint32_t k = 0; k < contrib_count; k++) {
            if (contribs[k].session == b->pending[i].session) {
                c = &contribs[k];
            }
        }
        if (c == NULL) {
            c = &contribs[contrib_count++];
            c->session = b->pending[i].session;
        }
        for (uint32_t k = i; k < j; k++) {
            const span_spec_t *sp = &b->pending[k];
            c->spans++;
            c->cost_nano += sp->cost_nano;
            c->traces += sp->is_root ? 1u : 0u;
            c->tool_fees += sp->tool_fee ? 1u : 0u;
            if (sp->kind == SK_CHAT || sp->kind == SK_EMBED) {
                add_tokens(c->tokens, sp->tokens);
            }
        }
        i = j;
    }

    am_pb_export_req_t req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.n_resource_spans = groups;
    req.resource_spans = rsv;
    size_t msg_len =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
            &req);
    uint8_t *buf = malloc(5 + msg_len);
    if (buf == NULL) {
        free(contribs);
        return -1;
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, buf + 5);

    if (pool->request_count == b->request_cap) {
        size_t cap = b->request_cap ? b->request_cap * 2 : 1024;
        lg_request_t *grown = realloc(pool->requests, cap * sizeof(*grown));
        if (grown == NULL) {
            free(buf);
            free(contribs);
            return -1;
        }
        pool->requests = grown;
        b->request_cap = cap;
    }
    lg_request_t *r = &pool->requests[pool->request_count++];
    memset(r, 0, sizeof(*r));
    r->span_count = b->pending_count;
    r->contribs = contribs;
    r->contrib_count = contrib_count;
    pool->uncompressed_bytes += msg_len;

    size_t wire_len = msg_len;
    uint8_t flag = 0;
    if (b->opts->compression != LG_COMPRESS_NONE) {
        uint8_t *z = compress_message(b->opts->compression, buf + 5, msg_len, &wire_len);
        free(buf);
        if (z == NULL) {
            fprintf(stderr, "loadgen: compression failed\n");
            return -1;
        }
        buf = z;
        flag = 1;
    } else {
        r->trace_id_offsets = malloc(b->pending_count * sizeof(uint32_t));
        if (r->trace_id_offsets == NULL) {
            free(buf);
            return -1;
        }
        offsets_ctx_t oc = {.out = r->trace_id_offsets, .cap = b->pending_count, .base = 5};
        if (!walk_fields(buf + 5, 0, msg_len, 1, on_resource_spans, &oc) ||
            oc.count != b->pending_count) {
            fprintf(stderr, "loadgen: wire walk found %u of %u trace ids (bug)\n", oc.count,
                    b->pending_count);
            free(buf);
            return -1;
        }
        r->trace_id_count = oc.count;
    }
    buf[0] = flag;
    buf[1] = (uint8_t)(wire_len >> 24);
    buf[2] = (uint8_t)(wire_len >> 16);
    buf[3] = (uint8_t)(wire_len >> 8);
    buf[4] = (uint8_t)wire_len;
    r->buf = buf;
    r->len = 5 + wire_len;
    pool->wire_bytes += r->len;
    pool->span_count += b->pending_count;
    b->pending_count = 0;
    return 0;
}

static int ensure_sessions(builder_t *b, uint32_t needed)
{
    if (needed <= b->pool->session_count) {
        return 0;
    }
    if (needed > b->session_cap) {
        uint32_t cap = b->session_cap ? b->session_cap : 256;
        while (cap < needed) {
            cap *= 2;
        }
        session_info_t *grown = realloc(b->sessions, cap * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        b->sessions = grown;
        b->session_cap = cap;
    }
    for (uint32_t i = b->pool->session_count; i < needed; i++) {
        session_init(&b->sessions[i], b->opts->seed, i, b->opts->base_time_ns);
    }
    b->pool->session_count = needed;
    return 0;
}

int lg_pool_generate(const lg_traffic_opts_t *opts, lg_pool_t *pool)
{
    memset(pool, 0, sizeof(*pool));
    builder_t b = {.opts = opts, .pool = pool};
    int rc = -1;
    trace_ctx_t *t = malloc(sizeof(*t));
    b.pending = malloc(opts->spans_per_request * sizeof(*b.pending));
    if (t == NULL || b.pending == NULL) {
        goto out;
    }
    uint32_t window = opts->active_sessions ? opts->active_sessions : 16;
    uint32_t per_session = opts->traces_per_session ? opts->traces_per_session : 5;
    uint64_t max_spans = opts->max_spans;
    bool done = false;
    for (uint32_t block = 0; !done; block++) {
        uint32_t first = block * window;
        uint32_t last = first + window;
        if (opts->sessions > 0) {
            if (first >= opts->sessions) {
                break;
            }
            last = AM_MIN(last, opts->sessions);
        }
        for (uint32_t trace = 0; trace < per_session && !done; trace++) {
            for (uint32_t s = first; s < last && !done; s++) {
                if (ensure_sessions(&b, s + 1) != 0) {
                    goto out;
                }
                gen_trace(t, opts->seed, &b.sessions[s], s, trace);
                pool->trace_count++;
                for (uint32_t i = 0; i < t->count; i++) {
                    b.pending[b.pending_count++] = t->spans[i];
                    if (b.pending_count == opts->spans_per_request && flush_request(&b) != 0) {
                        goto out;
                    }
                }
                /* whole traces only: a cut trace would wait in tracetree for its root
                 * until max_wait and distort end-to-end timings */
                if (max_spans > 0 && pool->span_count + b.pending_count >= max_spans) {
                    done = true;
                }
            }
        }
    }
    if (flush_request(&b) != 0) {
        goto out;
    }
    pool->session_ids = calloc(pool->session_count ? pool->session_count : 1, sizeof(char *));
    if (pool->session_ids == NULL) {
        goto out;
    }
    for (uint32_t i = 0; i < pool->session_count; i++) {
        pool->session_ids[i] = strdup(b.sessions[i].id);
        if (pool->session_ids[i] == NULL) {
            goto out;
        }
    }
    rc = 0;
out:
    if (rc != 0) {
        fprintf(stderr, "loadgen: generating requests failed (out of memory?)\n");
    }
    scratch_free(&b.scratch);
    free(b.sessions);
    free(b.pending);
    free(t);
    return rc;
}

void lg_pool_free(lg_pool_t *pool)
{
    for (size_t i = 0; i < pool->request_count; i++) {
        free(pool->requests[i].buf);
        free(pool->requests[i].trace_id_offsets);
        free(pool->requests[i].contribs);
    }
    free(pool->requests);
    if (pool->session_ids != NULL) {
        for (uint32_t i = 0; i < pool->session_count; i++) {
            free(pool->session_ids[i]);
        }
    }
    free(pool->session_ids);
    memset(pool, 0, sizeof(*pool));
}

/* ---- expected costs -------------------------------------------------- */

static void money_format(int64_t nano, char *buf, size_t size)
{
    const char *sign = nano < 0 ? "-" : "";
    uint64_t v = nano < 0 ? (uint64_t)(-nano) : (uint64_t)nano;
    char frac[16];
    snprintf(frac, sizeof(frac), "%09" PRIu64, v % 1000000000u);
    size_t n = strlen(frac);
    while (n > 0 && frac[n - 1] == '0') {
        frac[--n] = '\0';
    }
    if (n == 0) {
        snprintf(buf, size, "%s%" PRIu64, sign, v / 1000000000u);
    } else {
        snprintf(buf, size, "%s%" PRIu64 ".%s", sign, v / 1000000000u, frac);
    }
}

typedef struct session_total {
    int64_t cost_nano;
    int64_t tokens[LG_N_TOKEN_KINDS];
    uint64_t spans;
    uint64_t traces;
    uint64_t tool_fees;
} session_total_t;

int lg_pool_write_expect(const lg_pool_t *pool, const char *path)
{
    session_total_t *tot = calloc(pool->session_count ? pool->session_count : 1, sizeof(*tot));
    if (tot == NULL) {
        return -1;
    }
    uint64_t requests_ok = 0;
    for (size_t i = 0; i < pool->request_count; i++) {
        const lg_request_t *r = &pool->requests[i];
        if (r->ok_count == 0) {
            continue;
        }
        requests_ok += r->ok_count;
        for (uint32_t k = 0; k < r->contrib_count; k++) {
            const lg_contrib_t *c = &r->contribs[k];
            session_total_t *st = &tot[c->session];
            int64_t times = (int64_t)r->ok_count;
            st->cost_nano += c->cost_nano * times;
            st->spans += (uint64_t)c->spans * r->ok_count;
            st->traces += (uint64_t)c->traces * r->ok_count;
            st->tool_fees += (uint64_t)c->tool_fees * r->ok_count;
            for (int j = 0; j < LG_N_TOKEN_KINDS; j++) {
                st->tokens[j] += c->tokens[j] * times;
            }
        }
    }
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
        free(tot);
        return -1;
    }
    int64_t grand = 0;
    char money[40];
    fprintf(f, "{\"currency\": \"USD\",\n \"price_source\": \"%s\",\n", lg_price_source);
    fprintf(f, " \"token_semantics\": \"OpenTelemetry: input includes cache_read and "
               "cache_write, output includes reasoning; agent spans not priced\",\n");
    fprintf(f, " \"requests_ok\": %" PRIu64 ",\n \"sessions\": [", requests_ok);
    bool first = true;
    for (uint32_t i = 0; i < pool->session_count; i++) {
        const session_total_t *st = &tot[i];
        if (st->spans == 0) {
            continue;
        }
        grand += st->cost_nano;
        money_format(st->cost_nano, money, sizeof(money));
        fprintf(f,
                "%s\n  {\"session.id\": \"%s\", \"cost\": %s, \"cost_nano\": %" PRId64
                ", \"traces\": %" PRIu64 ", \"spans\": %" PRIu64 ", \"tool_calls_priced\": %" PRIu64
                ", \"tokens\": {\"input\": %" PRId64 ", \"output\": %" PRId64
                ", \"cache_read\": %" PRId64 ", \"cache_write\": %" PRId64
                ", \"reasoning\": %" PRId64 "}}",
                first ? "" : ",", pool->session_ids[i], money, st->cost_nano, st->traces, st->spans,
                st->tool_fees, st->tokens[LG_TOK_INPUT], st->tokens[LG_TOK_OUTPUT],
                st->tokens[LG_TOK_CACHE_READ], st->tokens[LG_TOK_CACHE_WRITE],
                st->tokens[LG_TOK_REASONING]);
        first = false;
    }
    money_format(grand, money, sizeof(money));
    fprintf(f, "\n ],\n \"total_cost\": %s,\n \"total_cost_nano\": %" PRId64 "}\n", money, grand);
    free(tot);
    if (fclose(f) != 0) {
        return -1;
    }
    return 0;
}
