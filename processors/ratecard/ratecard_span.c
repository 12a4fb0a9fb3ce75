/*
 * ratecard_span.c - the cost of one span: read its attributes (§5), decide
 * its cost.status, price it, write the attributes of §6.
 *
 * The decision, in order:
 *   not_billable    agent and workflow spans (invoke_agent, create_agent,
 *                   invoke_workflow; OpenInference AGENT/CHAIN; OpenLLMetry
 *                   agent/workflow/task).  They often repeat the totals of
 *                   their children, so pricing their own tokens would bill
 *                   twice; their cost is the rollup of their children.
 *   supplied        the span already carries a cost (gen_ai.usage.cost.amount,
 *                   gen_ai.usage.cost, llm.cost.total), e.g. from a gateway:
 *                   it is kept, not re-priced.  A cost this processor wrote
 *                   itself (gen_ai.usage.cost.source=local) does not count, so
 *                   processing a batch twice gives the same result.
 *   priced          the span's tokens were priced from its model's entry,
 *                   and/or it is a tool call with a per-call price, and/or it
 *                   matched a GPU compute price.
 *   unpriced_model  it has token usage but no entry prices its model (or it
 *                   names no model) and no compute price covers it: flagged,
 *                   never silently 0.
 *   no_usage        anything else (HTTP spans, tools without a price...).
 *
 * Tokens, supplied costs and the operation are read from the span only:
 * on a resource they would apply to every span of the process.  Model,
 * provider and `when` attributes fall back to the resource.
 *
 * GPU compute: a `compute:` entry whose `when` matches prices the span's GPU
 * time, `gpu.seconds` if the span has it, else its duration times
 * `gpu.count` (default 1).  A `when` that matches a resource attribute prices
 * every span of that process, nested ones included, so put gpu.type (or
 * gpu.seconds) on the spans that hold the GPU.  A span with token usage for
 * a model no card lists is priced by compute alone (self-hosted models).
 *
 * An override (`overrides:` in the card) that matches the span (e.g. its
 * tenant.id after propagation) first offers its own contracted model prices,
 * then applies its discount to every part; the discounted parts still add
 * up exactly to cost.self.
 */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "processors/ratecard/ratecard_internal.h"

const char *const am__rc_status_names[AM__RC_N_STATUS] = {
    "priced", "supplied", "unpriced_model", "no_usage", "not_billable",
};

static const char *const provider_keys[] = {"gen_ai.provider.name", "gen_ai.system",
                                            "llm.provider",         "llm.system",
                                            "ai.model.provider",    NULL};
static const char *const model_keys[] = {
    "gen_ai.response.model", "gen_ai.request.model", "llm.response.model_name",
    "llm.model_name",        "ai.model.id",          NULL};
static const char *const token_keys[AM__RC_N_TOKEN_KINDS][6] = {
    [AM__RC_INPUT] = {"gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                      "llm.token_count.prompt", "ai.usage.inputTokens", "ai.usage.promptTokens",
                      NULL},
    [AM__RC_OUTPUT] = {"gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                       "llm.token_count.completion", "ai.usage.outputTokens",
                       "ai.usage.completionTokens", NULL},
    [AM__RC_CACHE_READ] = {"gen_ai.usage.cache_read.input_tokens",
                           "gen_ai.usage.cache_read_input_tokens",
                           "llm.token_count.prompt_details.cache_read", NULL},
    [AM__RC_CACHE_WRITE] = {"gen_ai.usage.cache_creation.input_tokens",
                            "gen_ai.usage.cache_creation_input_tokens",
                            "llm.token_count.prompt_details.cache_write", NULL},
    [AM__RC_REASONING] = {"gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                          "llm.token_count.completion_details.reasoning", NULL},
};
static const char *const supplied_keys[] = {"gen_ai.usage.cost.amount", "gen_ai.usage.cost",
                                            "llm.cost.total", NULL};
static const char *const tool_name_keys[] = {"gen_ai.tool.name", "tool.name", NULL};

static const char *const part_attr[AM__RC_N_PARTS] = {
    "cost.input",     "cost.output", "cost.cache_read", "cost.cache_write",
    "cost.reasoning", "cost.tool",   "cost.compute",
};

/* The operation attribute `key` of the span, if it is one of `values`. */
static bool op_is(const am_pb_span_t *span, const char *key, const char *const *values)
{
    const char *op = NULL;
    if (!am_attr_get_str(span->attributes, span->n_attributes, key, &op)) {
        return false;
    }
    for (size_t i = 0; values[i] != NULL; i++) {
        if (strcasecmp(op, values[i]) == 0) {
            return true;
        }
    }
    return false;
}

static bool is_agent_span(const am_pb_span_t *span)
{
    static const char *const genai[] = {"invoke_agent", "create_agent", "invoke_workflow", NULL};
    static const char *const openinference[] = {"AGENT", "CHAIN", NULL};
    static const char *const traceloop[] = {"agent", "workflow", "task", NULL};
    return op_is(span, "gen_ai.operation.name", genai) ||
           op_is(span, "openinference.span.kind", openinference) ||
           op_is(span, "traceloop.span.kind", traceloop);
}

static bool is_tool_span(const am_pb_span_t *span)
{
    static const char *const genai[] = {"execute_tool", NULL};
    static const char *const tool[] = {"tool", NULL};
    return op_is(span, "gen_ai.operation.name", genai) ||
           op_is(span, "openinference.span.kind", tool) || op_is(span, "traceloop.span.kind", tool);
}

static const char *tool_name(const am_pb_span_t *span)
{
    const char *name = am_attr_first_str(span, NULL, tool_name_keys);
    static const char *const traceloop_keys[] = {"traceloop.entity.name", NULL};
    if (name == NULL && op_is(span, "traceloop.span.kind", (const char *const[]){"tool", NULL})) {
        name = am_attr_first_str(span, NULL, traceloop_keys);
    }
    return name;
}

/* A finite double as nano-units, or false. */
static bool double_to_nano(double value, int64_t *out)
{
    if (!isfinite(value) || fabs(value) > 9.0e9) {
        return false;
    }
    *out = (int64_t)llround(value * 1e9);
    return true;
}

static bool supplied_cost(const am_pb_span_t *span, am_money_t *amount, const char **currency)
{
    const char *source = NULL;
    if (am_attr_get_str(span->attributes, span->n_attributes, "gen_ai.usage.cost.source",
                        &source) &&
        strcmp(source, "local") == 0) {
        return false; /* written by a ratecard processor: price again */
    }
    for (size_t i = 0; supplied_keys[i] != NULL; i++) {
        double value;
        if (am_attr_get_double(span->attributes, span->n_attributes, supplied_keys[i], &value) &&
            double_to_nano(value, amount)) {
            *currency = NULL;
            am_attr_get_str(span->attributes, span->n_attributes, "gen_ai.usage.cost.currency",
                            currency);
            return true;
        }
    }
    return false;
}

/* GPU time in nanoseconds: `gpu.seconds`, else the span's duration times
 * `gpu.count` (default 1). */
static int64_t gpu_nanos(const am_pb_span_t *span, const am_pb_resource_t *resource,
                         unsigned *negatives)
{
    double seconds;
    if (am_attr_get_double(span->attributes, span->n_attributes, "gpu.seconds", &seconds)) {
        int64_t ns = 0;
        if (!double_to_nano(seconds, &ns) || ns < 0) {
            (*negatives)++;
            return 0;
        }
        return ns;
    }
    if (span->end_time_unix_nano <= span->start_time_unix_nano) {
        return 0;
    }
    uint64_t duration = span->end_time_unix_nano - span->start_time_unix_nano;
    if (duration > (uint64_t)INT64_MAX) {
        duration = (uint64_t)INT64_MAX;
    }
    int64_t count = 1;
    static const char *const count_keys[] = {"gpu.count", NULL};
    if (am_attr_first_int(span, resource, count_keys, &count) && (count < 1 || count > 4096)) {
        count = 1;
    }
    __int128 total = (__int128)duration * count;
    return total > INT64_MAX ? INT64_MAX : (int64_t)total;
}

void am__rc_price_span(const am__ratecard_t *card, const am_pb_span_t *span,
                       const am_pb_resource_t *resource, int64_t now_ns, am__rc_result_t *out)
{
    memset(out, 0, sizeof(*out));
    out->model = am_attr_first_str(span, resource, model_keys);
    out->provider = am_attr_first_str(span, resource, provider_keys);
    if (is_agent_span(span)) {
        out->status = AM__RC_NOT_BILLABLE;
        return;
    }
    if (supplied_cost(span, &out->self, &out->supplied_currency)) {
        out->status = AM__RC_SUPPLIED;
        return;
    }
    am__rc_usage_t usage = {0};
    bool has_usage = false;
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        usage.present[k] = am_attr_first_int(span, NULL, token_keys[k], &usage.tokens[k]);
        has_usage = has_usage || (usage.present[k] && usage.tokens[k] != 0);
    }
    int64_t at_ns = span->start_time_unix_nano > 0 && span->start_time_unix_nano <= INT64_MAX
                        ? (int64_t)span->start_time_unix_nano
                        : now_ns;
    am__rc_breakdown_t *parts = &out->parts;
    out->override = am__rc_find_override(card, span, resource);
    if (has_usage && out->model != NULL) {
        if (out->override != NULL) {
            out->entry =
                am__rc_find_model(&out->override->models, out->model, out->provider, at_ns, NULL);
        }
        if (out->entry == NULL) {
            out->entry = am__rc_find_model(&card->models, out->model, out->provider, at_ns, NULL);
        }
        if (out->entry != NULL) {
            am__rc_price_tokens(out->entry, am__rc_cache_mode(card, out->entry, out->provider),
                                &usage, parts);
        }
    }
    if (is_tool_span(span)) {
        out->tool = am__rc_find_tool(card, tool_name(span));
        if (out->tool != NULL) {
            parts->part[AM__RC_PART_TOOL] = out->tool->per_call;
            parts->applies[AM__RC_PART_TOOL] = true;
        }
    }
    out->compute = am__rc_find_compute(card, span, resource);
    if (out->compute != NULL) {
        int64_t ns = gpu_nanos(span, resource, &parts->negative_buckets);
        parts->part[AM__RC_PART_COMPUTE] =
            am__rc_mul_div(ns, out->compute->per_gpu_second, AM_MONEY_SCALE);
        parts->applies[AM__RC_PART_COMPUTE] = true;
    }
    if (has_usage && out->entry == NULL && out->compute == NULL) {
        /* Tokens nobody can price: flag it rather than bill part of it. */
        unsigned negatives = parts->negative_buckets;
        memset(parts, 0, sizeof(*parts));
        parts->negative_buckets = negatives;
        out->tool = NULL;
        out->status = AM__RC_UNPRICED_MODEL;
        return;
    }
    if (out->entry == NULL && out->tool == NULL && out->compute == NULL) {
        out->status = AM__RC_NO_USAGE;
        return;
    }
    out->status = AM__RC_PRICED;
    if (out->override != NULL && out->override->discount > 0) {
        for (int k = 0; k < AM__RC_N_PARTS; k++) {
            parts->part[k] = am__rc_discount(parts->part[k], out->override->discount);
        }
    }
    am__rc_total(parts);
    out->self = parts->total;
}

char *am__rc_price_id(const am__rc_result_t *result, am_arena_t *arena)
{
    const char *ids[4];
    size_t n = 0;
    if (result->entry != NULL) {
        ids[n++] = result->entry->price_id;
    }
    if (result->tool != NULL) {
        ids[n++] = result->tool->price_id;
    }
    if (result->compute != NULL) {
        ids[n++] = result->compute->price_id;
    }
    if (result->override != NULL && result->override->discount > 0) {
        ids[n++] = result->override->price_id;
    }
    size_t len = 1;
    for (size_t i = 0; i < n; i++) {
        len += strlen(ids[i]) + 3;
    }
    char *text = am_arena_alloc(arena, len);
    if (text == NULL) {
        return NULL;
    }
    text[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            strcat(text, " + ");
        }
        strcat(text, ids[i]);
    }
    return text;
}

int am__rc_write_span(const am__ratecard_t *card, const am__rc_result_t *result, am_arena_t *arena,
                      am_pb_span_t *span)
{
    const char *currency = card->currency;
    if (result->status == AM__RC_SUPPLIED && result->supplied_currency != NULL) {
        currency = result->supplied_currency;
    }
    int rc = am_span_set_double(arena, span, "cost.self", am_money_to_double(result->self));
    rc = rc != 0 ? rc : am_span_set_str(arena, span, "cost.currency", currency);
    rc = rc != 0 ? rc
                 : am_span_set_str(arena, span, "cost.status", am__rc_status_names[result->status]);
    if (rc != 0 || result->status != AM__RC_PRICED) {
        return rc;
    }
    rc = am_span_set_double(arena, span, "gen_ai.usage.cost.amount",
                            am_money_to_double(result->self));
    rc = rc != 0 ? rc : am_span_set_str(arena, span, "gen_ai.usage.cost.currency", currency);
    rc = rc != 0 ? rc : am_span_set_str(arena, span, "gen_ai.usage.cost.source", "local");
    for (int k = 0; rc == 0 && k < AM__RC_N_PARTS; k++) {
        if (result->parts.applies[k]) {
            rc = am_span_set_double(arena, span, part_attr[k],
                                    am_money_to_double(result->parts.part[k]));
        }
    }
    if (rc == 0) {
        char *price_id = am__rc_price_id(result, arena);
        rc = price_id != NULL ? am_span_set_str(arena, span, "cost.price_id", price_id) : AM_ENOMEM;
    }
    return rc;
}
