/*
 * costmetrics.c - the `costmetrics` connector: an exporter in traces
 * pipelines, a receiver in metrics and logs pipelines (ARCHITECTURE.md §2, §9).
 *
 * What it reads.  Spans after ratecard/rollup carry cost.* attributes
 * (§6) and, inside the trace index, exact cost_self / cost_subtree in
 * nano-units.  Exact values win: ref->cost_self when the ratecard set it,
 * else the cost.self attribute converted once with llround(x * 1e9) (the
 * ratecard writes doubles with at most 9 decimals, so this recovers the
 * exact fixed-point value).  cost.self is split by the cost.input/output/
 * cache_read/cache_write/reasoning/tool/compute parts; whatever of cost.self
 * the parts do not explain (a supplied cost, or a span with no parts) goes to
 * cost_type "supplied" or "other", so sum(agent_cost_total) is exactly the sum
 * of cost.self.  Cost events (session.summary, budget.threshold,
 * anomaly.detected) feed the event metrics through their typed fields.
 *
 * Threads.  consume runs on every shard thread at once (the traces pipeline
 * after the sharded processors); the flush timer runs on the main loop.  The
 * accumulated state is one store under one mutex, taken once per batch.
 * Per-shard stores would avoid the lock, but the flush would then have to
 * read every shard's store from the main thread, which needs a lock or a
 * cross-thread call per shard anyway; batches are whole traces, so the lock
 * is taken a few thousand times per second at most and held for a hash
 * lookup per span.
 *
 * What it sends.  Every flush_interval (and once more on shutdown) a
 * cumulative snapshot goes downstream as an AM_SIGNAL_METRICS batch carrying
 * an am_metric_set_t; a refused snapshot is not retried (the next one carries
 * the same cumulative values).  Events are forwarded unchanged, from the
 * consuming thread, as an AM_SIGNAL_LOGS batch that shares the incoming
 * batch's arenas.  Both batch kinds go to the whole fan-out (every pipeline
 * this connector feeds); exporters skip batches whose signal they do not
 * handle.  Events are forwarded before they are counted: when a logs
 * pipeline refuses them (AM_RETRY) the batch is not counted either, so the
 * redelivery does not count it twice.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "costmetrics_internal.h"

#define COMPONENT "costmetrics"
#define VALUE_MAX 256

typedef struct cm_config {
    am_strlist_t dimensions;
    int64_t flush_interval_ms;
    int64_t max_series;
    am_strlist_t histogram_buckets;
} cm_config_t;

static const am_option_t cm_options[] = {
    AM_OPT("dimensions", AM_OPT_STRLIST,
           "[service.name, gen_ai.provider.name, gen_ai.request.model, gen_ai.agent.name, "
           "tenant.id]",
           cm_config_t, dimensions,
           "Attributes (span first, then resource) that become labels, sanitized "
           "(gen_ai.provider.name -> gen_ai_provider_name). Ids (session, trace, span, user, "
           "conversation) are refused: they would make a series per id."),
    {.name = "flush_interval",
     .type = AM_OPT_DURATION,
     .def = "15s",
     .offset = offsetof(cm_config_t, flush_interval_ms),
     .min = 10,
     .max = 86400000,
     .doc = "How often a cumulative snapshot of every series is sent to the metrics "
            "pipelines."},
    {.name = "max_series",
     .type = AM_OPT_INT,
     .def = "2000",
     .offset = offsetof(cm_config_t, max_series),
     .min = 1,
     .max = 1000000,
     .doc = "Series per metric; updates of further label sets are folded into one series "
            "labelled otel_metric_overflow=\"true\"."},
    AM_OPT("histogram_buckets", AM_OPT_STRLIST,
           "[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50]", cm_config_t, histogram_buckets,
           "Upper bounds of the cost histograms (agent_action_cost, agent_trace_cost, "
           "agent_session_cost), in currency units, increasing."),
    AM_OPT_END,
};

/* Attributes that identify one thing (a session, a trace, a user): as labels
 * they would create a series per id, which is what cardinality limits exist
 * to prevent.  tenant.id and the like name a bounded set and are fine. */
static const char *const refused_dimensions[] = {
    "session.id",
    "gen_ai.conversation.id",
    "langfuse.session.id",
    "traceloop.association.properties.session_id",
    "trace_id",
    "trace.id",
    "traceid",
    "span_id",
    "span.id",
    "spanid",
    "parent_span_id",
    "user.id",
    "enduser.id",
    "langfuse.user.id",
    "gen_ai.response.id",
    "gen_ai.request.id",
    "request.id",
    "http.request.id",
    NULL,
};

static const char *const cost_parts[] = {"input",     "output", "cache_read", "cache_write",
                                         "reasoning", "tool",   "compute"};
static const char *const cost_part_attrs[] = {
    "cost.input",     "cost.output", "cost.cache_read", "cost.cache_write",
    "cost.reasoning", "cost.tool",   "cost.compute"};

/* §5: first non-empty attribute wins, per token type. */
static const char *const tok_input[] = {"gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                                        "llm.token_count.prompt",    "ai.usage.inputTokens",
                                        "ai.usage.promptTokens",     NULL};
static const char *const tok_output[] = {
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
    "ai.usage.outputTokens",      "ai.usage.completionTokens",      NULL};
static const char *const tok_cache_read[] = {"gen_ai.usage.cache_read.input_tokens",
                                             "gen_ai.usage.cache_read_input_tokens",
                                             "llm.token_count.prompt_details.cache_read", NULL};
static const char *const tok_cache_write[] = {"gen_ai.usage.cache_creation.input_tokens",
                                              "gen_ai.usage.cache_creation_input_tokens",
                                              "llm.token_count.prompt_details.cache_write", NULL};
static const char *const tok_reasoning[] = {"gen_ai.usage.reasoning.output_tokens",
                                            "gen_ai.usage.reasoning_tokens",
                                            "llm.token_count.completion_details.reasoning", NULL};
static const struct {
    const char *type;
    const char *const *keys;
} token_types[] = {
    {"input", tok_input},           {"output", tok_output},
    {"cache_read", tok_cache_read}, {"cache_write", tok_cache_write},
    {"reasoning", tok_reasoning},
};

static const char *const operation_keys[] = {"gen_ai.operation.name", "openinference.span.kind",
                                             "traceloop.span.kind", "llm.request.type", NULL};
/* Operations whose token attributes repeat their children's (§5). */
static const char *const agent_operations[] = {
    "invoke_agent", "create_agent", "invoke_workflow", "AGENT", "CHAIN", "agent", "workflow", NULL};

typedef struct costmetrics {
    char *id;
    uv_loop_t *loop;
    am_consumer_t *next;
    uint64_t flush_interval_ms;
    size_t n_dims;
    char **dim_keys; /* attribute names, as configured */
    pthread_mutex_t lock;
    am__cm_store_t store; /* under lock */
    bool dirty;           /* under lock: something was recorded since start */
    uv_timer_t *timer;    /* own allocation: freed by its close callback */
    bool started;
    bool shut;
    am_counter_t *refused_flushes;
    am_counter_t *lost_updates;
    am_counter_t *forwarded_events;
} costmetrics_t;

/* ---- config ------------------------------------------------------------------- */

static const am_node_t *list_item(const void *node, const char *key, size_t i)
{
    const am_node_t *list = node != NULL ? am_node_get(node, key) : NULL;
    if (list == NULL) {
        return node;
    }
    if (list->kind == AM_NODE_SEQ && i < list->n_children) {
        return list->children[i];
    }
    return list;
}

static void cm_validate(const void *config, const void *node, const char *prefix, am_errors_t *errs)
{
    const cm_config_t *cfg = config;
    if (cfg->dimensions.count > AM__CM_MAX_DIMS) {
        am_errors_add(errs, list_item(node, "dimensions", AM__CM_MAX_DIMS),
                      "%s.dimensions: at most %d dimensions", prefix, AM__CM_MAX_DIMS);
    }
    for (size_t i = 0; i < cfg->dimensions.count; i++) {
        const char *dim = cfg->dimensions.items[i];
        for (size_t k = 0; refused_dimensions[k] != NULL; k++) {
            if (strcmp(dim, refused_dimensions[k]) == 0) {
                am_errors_add(errs, list_item(node, "dimensions", i),
                              "%s.dimensions[%zu]: \"%s\" is an id, not a dimension: a label "
                              "per id would make a series per id (aggregate by a bounded "
                              "attribute such as tenant.id or gen_ai.agent.name)",
                              prefix, i, dim);
            }
        }
        if (dim[0] == '\0') {
            am_errors_add(errs, list_item(node, "dimensions", i),
                          "%s.dimensions[%zu]: empty attribute name", prefix, i);
        }
        char a[VALUE_MAX], b[VALUE_MAX];
        am_metric_label_name(dim, a, sizeof(a));
        static const char *const fixed[] = {"currency", "cost_type", "token_type", "action",
                                            "outcome",  "reason",    "budget",     "threshold",
                                            "kind",     "le",        NULL};
        for (size_t k = 0; fixed[k] != NULL; k++) {
            if (strcmp(a, fixed[k]) == 0) {
                am_errors_add(errs, list_item(node, "dimensions", i),
                              "%s.dimensions[%zu]: \"%s\" would clash with the label \"%s\" "
                              "costmetrics sets itself",
                              prefix, i, dim, fixed[k]);
            }
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(a, am_metric_label_name(cfg->dimensions.items[j], b, sizeof(b))) == 0) {
                am_errors_add(errs, list_item(node, "dimensions", i),
                              "%s.dimensions[%zu]: \"%s\" and \"%s\" both become the label "
                              "\"%s\"",
                              prefix, i, cfg->dimensions.items[j], dim, a);
            }
        }
    }
    am_money_t prev = 0;
    for (size_t i = 0; i < cfg->histogram_buckets.count; i++) {
        am_money_t bound;
        if (am_money_parse(cfg->histogram_buckets.items[i], &bound) != 0) {
            am_errors_add(errs, list_item(node, "histogram_buckets", i),
                          "%s.histogram_buckets[%zu]: \"%s\" is not an amount (a decimal with "
                          "at most 9 decimals)",
                          prefix, i, cfg->histogram_buckets.items[i]);
            continue;
        }
        if (bound <= 0 || (i > 0 && bound <= prev)) {
            am_errors_add(errs, list_item(node, "histogram_buckets", i),
                          "%s.histogram_buckets[%zu]: bounds must be positive and increasing",
                          prefix, i);
        }
        prev = bound;
    }
    if (cfg->histogram_buckets.count > 256) {
        am_errors_add(errs, list_item(node, "histogram_buckets", 256),
                      "%s.histogram_buckets: at most 256 bounds", prefix);
    }
}

/* ---- reading spans ---------------------------------------------------------------- */

static bool money_attr(am_pb_keyvalue_t *const *attrs, size_t n, const char *key, am_money_t *out)
{
    double v;
    if (!am_attr_get_double(attrs, n, key, &v) || !isfinite(v) || fabs(v) > 9.2e9) {
        return false;
    }
    *out = (am_money_t)llround(v * (double)AM_MONEY_SCALE);
    return true;
}

/* Text of `key` on the span, else on the resource; "" when absent. */
static const char *dim_value(am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                             const am_pb_resource_t *resource, const char *key, char *buf)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL && resource != NULL) {
        v = am_attr_find(resource->attributes, resource->n_attributes, key);
    }
    if (v == NULL) {
        return "";
    }
    if (v->value_case == AM_PB_VALUE(STRING_VALUE)) {
        return v->string_value != NULL ? v->string_value : "";
    }
    return am_anyvalue_to_text(v, buf, VALUE_MAX);
}

static const char *str_attr(const am_pb_span_t *span, const char *key)
{
    const char *s = NULL;
    return am_attr_get_str(span->attributes, span->n_attributes, key, &s) ? s : NULL;
}

static bool is_agent_operation(const am_pb_span_t *span, const am_pb_resource_t *resource)
{
    const char *op = am_attr_first_str(span, resource, operation_keys);
    for (size_t i = 0; op != NULL && agent_operations[i] != NULL; i++) {
        if (strcmp(op, agent_operations[i]) == 0) {
            return true;
        }
    }
    return false;
}

typedef struct visit {
    costmetrics_t *cm;
    const char **dims;
    char (*dim_bufs)[VALUE_MAX];
    int failures;
} visit_t;

static void note(visit_t *v, int rc)
{
    if (rc != 0) {
        v->failures++;
    }
}

static int visit_span(am_batch_t *batch, am_pb_span_t *span, am_pb_resource_t *resource,
                      am_pb_scope_t *scope, am_span_ref_t *ref, void *user_data)
{
    visit_t *v = user_data;
    costmetrics_t *cm = v->cm;
    am__cm_store_t *store = &cm->store;
    AM_UNUSED(batch);
    AM_UNUSED(scope);
    for (size_t d = 0; d < cm->n_dims; d++) {
        v->dims[d] = dim_value(span->attributes, span->n_attributes, resource, cm->dim_keys[d],
                               v->dim_bufs[d]);
    }
    const char *status = str_attr(span, "cost.status");
    const char *currency = str_attr(span, "cost.currency");
    if (currency == NULL) {
        currency = "";
    }
    bool recorded = false;

    /* Cost, split by type; what the parts leave unexplained is "other". */
    am_money_t self = 0;
    bool has_self = false;
    if (ref != NULL && ref->cost_self != 0) {
        self = ref->cost_self;
        has_self = true;
    } else {
        has_self = money_attr(span->attributes, span->n_attributes, "cost.self", &self);
    }
    am_money_t parts_sum = 0;
    for (size_t p = 0; p < AM_ARRAY_SIZE(cost_parts); p++) {
        am_money_t part;
        if (money_attr(span->attributes, span->n_attributes, cost_part_attrs[p], &part) &&
            part != 0) {
            const char *fixed[] = {currency, cost_parts[p]};
            note(v, am__cm_add(store, AM__CM_COST, fixed, v->dims, part));
            parts_sum += part;
            recorded = true;
        }
    }
    if (has_self && self != parts_sum) {
        bool supplied = status != NULL && strcmp(status, "supplied") == 0;
        const char *fixed[] = {currency, supplied ? "supplied" : "other"};
        note(v, am__cm_add(store, AM__CM_COST, fixed, v->dims, self - parts_sum));
        recorded = true;
    }

    /* Tokens of billable spans only: agent steps repeat their children's. */
    bool billable = !(status != NULL && strcmp(status, "not_billable") == 0) &&
                    !is_agent_operation(span, resource);
    for (size_t t = 0; billable && t < AM_ARRAY_SIZE(token_types); t++) {
        for (size_t k = 0; token_types[t].keys[k] != NULL; k++) {
            int64_t tokens;
            if (am_attr_get_int(span->attributes, span->n_attributes, token_types[t].keys[k],
                                &tokens)) {
                if (tokens > 0) {
                    const char *fixed[] = {token_types[t].type};
                    note(v, am__cm_add(store, AM__CM_TOKENS, fixed, v->dims, tokens));
                    recorded = true;
                }
                break;
            }
        }
    }

    const char *action = str_attr(span, "cost.action");
    if (action != NULL) {
        bool failed = span->status != NULL && span->status->code == AM_PB_STATUS_ERROR;
        const char *fixed[] = {action, failed ? "failure" : "success"};
        note(v, am__cm_add(store, AM__CM_ACTIONS, fixed, v->dims, 1));
        am_money_t subtree = 0;
        if (ref != NULL && ref->cost_subtree != 0) {
            subtree = ref->cost_subtree;
        } else if (!money_attr(span->attributes, span->n_attributes, "cost.subtree", &subtree)) {
            subtree = self;
        }
        const char *hfixed[] = {action, currency};
        note(v, am__cm_observe(store, AM__CM_ACTION_COST, hfixed, v->dims, subtree));
        recorded = true;
    }

    am_money_t trace_total;
    if (money_attr(span->attributes, span->n_attributes, "cost.trace.total", &trace_total)) {
        const char *fixed[] = {currency};
        note(v, am__cm_observe(store, AM__CM_TRACE_COST, fixed, v->dims, trace_total));
        recorded = true;
    }

    if (status != NULL && strncmp(status, "unpriced", 8) == 0) {
        const char *fixed[] = {status};
        note(v, am__cm_add(store, AM__CM_UNPRICED, fixed, v->dims, 1));
        recorded = true;
    }
    if (recorded) {
        cm->dirty = true;
    }
    return 0;
}

static void visit_event(visit_t *v, const am_event_t *ev)
{
    costmetrics_t *cm = v->cm;
    am__cm_store_t *store = &cm->store;
    if (ev->kind == NULL) {
        return;
    }
    for (size_t d = 0; d < cm->n_dims; d++) {
        v->dims[d] = dim_value(ev->attrs, ev->n_attrs, NULL, cm->dim_keys[d], v->dim_bufs[d]);
        /* A budget scoped by a dimension (tenant.id) names its key there. */
        if (v->dims[d][0] == '\0' && ev->scope != NULL && ev->key != NULL &&
            strcmp(ev->scope, cm->dim_keys[d]) == 0) {
            v->dims[d] = ev->key;
        }
    }
    const char *currency = ev->currency != NULL ? ev->currency : "";
    const char *name = ev->name != NULL ? ev->name : "";
    if (strcmp(ev->kind, "session.summary") == 0) {
        const char *fixed[] = {currency};
        note(v, am__cm_observe(store, AM__CM_SESSION_COST, fixed, v->dims, ev->amount));
    } else if (strcmp(ev->kind, "budget.threshold") == 0) {
        const char *fixed[] = {name, currency};
        note(v, am__cm_set(store, AM__CM_BUDGET_SPENT, fixed, v->dims, ev->amount,
                           ev->time_unix_nano));
        note(v,
             am__cm_set(store, AM__CM_BUDGET_LIMIT, fixed, v->dims, ev->limit, ev->time_unix_nano));
        char threshold[AM_METRIC_VALUE_STRLEN];
        const char *cfixed[] = {name, am_metric_format_value(ev->threshold, threshold)};
        note(v, am__cm_add(store, AM__CM_BUDGET_CROSSINGS, cfixed, v->dims, 1));
    } else if (strcmp(ev->kind, "anomaly.detected") == 0) {
        const char *fixed[] = {name};
        note(v, am__cm_add(store, AM__CM_ANOMALIES, fixed, v->dims, 1));
    } else {
        return;
    }
    cm->dirty = true;
}

/* ---- consume --------------------------------------------------------------------- */

static am_status_t forward_events(costmetrics_t *cm, am_batch_t *batch)
{
    am_batch_t *logs = am_batch_new(AM_SIGNAL_LOGS);
    if (logs == NULL) {
        return AM_RETRY;
    }
    am_status_t status = AM_RETRY;
    logs->received_unix_nano = batch->received_unix_nano;
    /* The events' strings live in the incoming batch's arenas: share them. */
    if (am_batch_hold_arena(logs, batch->arena) != 0) {
        goto done;
    }
    for (size_t i = 0; i < batch->n_held; i++) {
        if (am_batch_hold_arena(logs, batch->held[i]) != 0) {
            goto done;
        }
    }
    for (size_t i = 0; i < batch->n_events; i++) {
        if (am_batch_add_event(logs, &batch->events[i]) != 0) {
            goto done;
        }
    }
    status = am_consume(cm->next, logs);
    if (status == AM_OK) {
        am_counter_add(cm->forwarded_events, batch->n_events);
    }
done:
    am_batch_unref(logs);
    return status;
}

static am_status_t cm_consume(void *instance, am_batch_t *batch)
{
    costmetrics_t *cm = instance;
    if ((batch->signal & AM_SIGNAL_TRACES) == 0) {
        return AM_OK;
    }
    if (batch->n_events > 0) {
        am_status_t status = forward_events(cm, batch);
        if (status != AM_OK) {
            return status;
        }
    }
    const char *dims[AM__CM_MAX_DIMS + 1];
    char dim_bufs[AM__CM_MAX_DIMS + 1][VALUE_MAX];
    visit_t v = {.cm = cm, .dims = dims, .dim_bufs = dim_bufs};
    pthread_mutex_lock(&cm->lock);
    am_batch_for_each_span(batch, visit_span, &v);
    for (size_t i = 0; i < batch->n_events; i++) {
        visit_event(&v, &batch->events[i]);
    }
    pthread_mutex_unlock(&cm->lock);
    if (v.failures > 0) {
        am_counter_add(cm->lost_updates, (uint64_t)v.failures);
        AM_WARN(COMPONENT, "%s: out of memory: %d metric updates lost", cm->id, v.failures);
    }
    return AM_OK;
}

/* ---- flush ----------------------------------------------------------------------- */

static void flush(costmetrics_t *cm)
{
    int64_t now_ms = (int64_t)(am_now_unix_nano() / 1000000u);
    pthread_mutex_lock(&cm->lock);
    am_metric_set_t *set = cm->dirty ? am__cm_snapshot(&cm->store, now_ms) : NULL;
    bool dirty = cm->dirty;
    pthread_mutex_unlock(&cm->lock);
    if (!dirty) {
        return;
    }
    if (set == NULL) {
        AM_WARN(COMPONENT, "%s: out of memory building the metrics snapshot; skipped", cm->id);
        am_counter_add(cm->refused_flushes, 1);
        return;
    }
    am_batch_t *batch = am_metrics_batch_new(set);
    if (batch == NULL) {
        am_counter_add(cm->refused_flushes, 1);
        return;
    }
    am_status_t status = am_consume(cm->next, batch);
    am_batch_unref(batch);
    if (status != AM_OK) {
        am_counter_add(cm->refused_flushes, 1);
        AM_WARN(COMPONENT,
                "%s: the metrics pipelines refused a snapshot (%s); the next flush carries the "
                "same cumulative values",
                cm->id, status == AM_RETRY ? "retry later" : "permanent");
    }
}

static void on_flush_timer(uv_timer_t *timer)
{
    flush(timer->data);
}

static void on_timer_closed(uv_handle_t *handle)
{
    am_free(handle);
}

/* ---- life cycle ------------------------------------------------------------------ */

static void cm_destroy(void *instance);

static int cm_create(const am_create_params_t *params, void **instance)
{
    const cm_config_t *cfg = params->config;
    costmetrics_t *cm = am_calloc(1, sizeof(*cm));
    if (cm == NULL) {
        return AM_ENOMEM;
    }
    pthread_mutex_init(&cm->lock, NULL);
    cm->loop = params->loop;
    cm->next = params->next;
    cm->flush_interval_ms = (uint64_t)cfg->flush_interval_ms;
    cm->id = am_strdup(params->id);
    size_t n_dims = AM_MIN(cfg->dimensions.count, (size_t)AM__CM_MAX_DIMS);
    cm->dim_keys = am_calloc(n_dims + 1, sizeof(char *));
    char **labels = am_calloc(n_dims + 1, sizeof(char *));
    am_money_t *bounds = am_calloc(cfg->histogram_buckets.count + 1, sizeof(am_money_t));
    int rc = AM_ENOMEM;
    if (cm->id == NULL || cm->dim_keys == NULL || labels == NULL || bounds == NULL) {
        goto fail;
    }
    for (size_t i = 0; i < n_dims; i++) {
        char label[VALUE_MAX];
        cm->dim_keys[i] = am_strdup(cfg->dimensions.items[i]);
        labels[i] = am_strdup(am_metric_label_name(cfg->dimensions.items[i], label, sizeof(label)));
        if (cm->dim_keys[i] == NULL || labels[i] == NULL) {
            goto fail;
        }
        cm->n_dims++;
    }
    size_t n_bounds = 0;
    for (size_t i = 0; i < cfg->histogram_buckets.count; i++) {
        if (am_money_parse(cfg->histogram_buckets.items[i], &bounds[n_bounds]) == 0) {
            n_bounds++;
        }
    }
    rc = am__cm_store_init(&cm->store, (const char *const *)labels, cm->n_dims, bounds, n_bounds,
                           (size_t)cfg->max_series);
    if (rc != 0) {
        goto fail;
    }
    char lbl[300];
    snprintf(lbl, sizeof(lbl), "connector=\"%s\"", params->id);
    cm->refused_flushes = am_selfmetrics_counter(
        "agentmeter_costmetrics_refused_flushes_total",
        "Metric snapshots the metrics pipelines did not accept (the next one is cumulative).", lbl);
    cm->lost_updates = am_selfmetrics_counter("agentmeter_costmetrics_lost_updates_total",
                                              "Metric updates lost to allocation failures.", lbl);
    cm->forwarded_events =
        am_selfmetrics_counter("agentmeter_costmetrics_forwarded_events_total",
                               "Cost events forwarded to the logs pipelines.", lbl);
    for (size_t i = 0; i < n_dims; i++) {
        am_free(labels[i]);
    }
    am_free(labels);
    am_free(bounds);
    *instance = cm;
    return 0;
fail:
    for (size_t i = 0; labels != NULL && i < n_dims; i++) {
        am_free(labels[i]);
    }
    am_free(labels);
    am_free(bounds);
    cm_destroy(cm);
    return rc;
}

static int cm_start(void *instance)
{
    costmetrics_t *cm = instance;
    cm->timer = am_malloc(sizeof(uv_timer_t));
    if (cm->timer == NULL) {
        return AM_ENOMEM;
    }
    uv_timer_init(cm->loop, cm->timer);
    cm->timer->data = cm;
    uv_timer_start(cm->timer, on_flush_timer, cm->flush_interval_ms, cm->flush_interval_ms);
    cm->started = true;
    return 0;
}

static void cm_shutdown(void *instance)
{
    costmetrics_t *cm = instance;
    if (cm->shut) {
        return;
    }
    cm->shut = true;
    /* Upstream processors have flushed into us already: send the final state. */
    flush(cm);
    if (cm->timer != NULL) {
        uv_timer_stop(cm->timer);
        uv_close((uv_handle_t *)cm->timer, on_timer_closed);
        cm->timer = NULL;
    }
}

static void cm_destroy(void *instance)
{
    costmetrics_t *cm = instance;
    if (cm == NULL) {
        return;
    }
    if (cm->timer != NULL) {
        /* Started but never shut down: the handle frees itself once closed. */
        uv_close((uv_handle_t *)cm->timer, on_timer_closed);
    }
    am__cm_store_free(&cm->store);
    for (size_t i = 0; cm->dim_keys != NULL && i < cm->n_dims; i++) {
        am_free(cm->dim_keys[i]);
    }
    am_free(cm->dim_keys);
    pthread_mutex_destroy(&cm->lock);
    am_free(cm->id);
    am_free(cm);
}

const am_component_ops_t am_exporter_costmetrics_ops = {
    .type = "costmetrics",
    .kind = AM_KIND_CONNECTOR,
    .signals = AM_SIGNAL_TRACES,
    .out_signals = AM_SIGNAL_METRICS | AM_SIGNAL_LOGS,
    .doc = "Turns priced spans and cost events into cost metrics (and forwards the events to "
           "logs pipelines).",
    .options = cm_options,
    .config_size = sizeof(cm_config_t),
    .validate = cm_validate,
    .create = cm_create,
    .start = cm_start,
    .consume = cm_consume,
    .shutdown = cm_shutdown,
    .destroy = cm_destroy,
};
