/*
 * test_costmetrics.c - the costmetrics connector as an operator sees its
 * output: metric names and sanitized labels from the configured dimensions
 * (span first, then resource), exact fixed-point sums (10^5 spans of one
 * nano-unit are exactly 0.0001), cost split by type with the unexplained
 * rest kept, tokens of billable spans only, actions and their outcome,
 * histogram buckets, the overflow series past max_series, the event metrics,
 * events forwarded unchanged as a logs batch, ids refused as dimensions with
 * file:line, and a flush timer that pushes cumulative snapshots.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_metrics.h"

extern const am_component_ops_t am_exporter_costmetrics_ops;
#define OPS (&am_exporter_costmetrics_ops)

/* ---- a downstream that records what the connector sends ------------------------ */

typedef struct capture {
    am_consumer_t consumer;
    am_metric_set_t *last;
    int metric_batches;
    int log_batches;
    size_t events;
    const char *first_event_json;
    am_status_t answer_logs;
} capture_t;

static am_status_t capture_consume(am_consumer_t *self, am_batch_t *batch)
{
    capture_t *cap = self->data;
    if (batch->signal & AM_SIGNAL_METRICS) {
        assert_non_null(batch->metrics);
        cap->metric_batches++;
        am_metric_set_unref(cap->last);
        cap->last = am_metric_set_ref(batch->metrics);
    }
    if (batch->signal & AM_SIGNAL_LOGS) {
        if (cap->answer_logs != AM_OK) {
            return cap->answer_logs;
        }
        cap->log_batches++;
        cap->events += batch->n_events;
        if (batch->n_events > 0 && cap->first_event_json == NULL) {
            cap->first_event_json = batch->events[0].json;
        }
    }
    return AM_OK;
}

/* ---- a connector built from YAML --------------------------------------------------- */

typedef struct harness {
    am_config_t *conf;
    void *cfg;
    void *instance;
    capture_t cap;
    uv_loop_t loop;
} harness_t;

static int parse(harness_t *h, const char *yaml, am_errors_t *errs)
{
    h->conf = am_config_load_buffer("costmetrics.yaml", yaml, strlen(yaml), errs);
    assert_non_null(h->conf);
    const am_node_t *root = am_config_root(h->conf);
    h->cfg = calloc(1, OPS->config_size);
    am_options_parse(OPS->options, h->cfg, root, "connectors.costmetrics", errs);
    if (errs->count == 0) {
        OPS->validate(h->cfg, root, "connectors.costmetrics", errs);
    }
    return (int)errs->count;
}

static void harness_init(harness_t *h, const char *yaml)
{
    memset(h, 0, sizeof(*h));
    am_errors_t errs = {0};
    if (parse(h, yaml, &errs) != 0) {
        am_errors_print(&errs, stderr);
        fail_msg("config rejected");
    }
    uv_loop_init(&h->loop);
    h->cap.consumer.consume = capture_consume;
    h->cap.consumer.data = &h->cap;
    am_create_params_t params = {
        .id = "costmetrics",
        .config = h->cfg,
        .loop = &h->loop,
        .next = &h->cap.consumer,
        .signal = AM_SIGNAL_TRACES,
        .shard = -1,
    };
    assert_int_equal(OPS->create(&params, &h->instance), 0);
}

/* Shutdown flushes: the captured set is the final cumulative snapshot. */
static am_metric_set_t *harness_flush(harness_t *h)
{
    OPS->shutdown(h->instance);
    uv_run(&h->loop, UV_RUN_NOWAIT);
    return h->cap.last;
}

static void harness_free(harness_t *h)
{
    OPS->shutdown(h->instance);
    OPS->destroy(h->instance);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    am_metric_set_unref(h->cap.last);
    am_options_free(OPS->options, h->cfg);
    free(h->cfg);
    am_config_free(h->conf);
}

/* ---- building spans ---------------------------------------------------------------- */

typedef struct spans {
    am_batch_t *batch;
    am_pb_scope_spans_t *ss;
    am_pb_resource_t *res;
    size_t cap;
} spans_t;

static am_pb_keyvalue_t *kv_str(am_arena_t *arena, const char *key, const char *value)
{
    am_pb_keyvalue_t *kv = am_arena_calloc(arena, 1, sizeof(*kv));
    am_pb_anyvalue_t *v = am_arena_calloc(arena, 1, sizeof(*v));
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(v);
    kv->key = am_arena_strdup(arena, key);
    v->value_case = AM_PB_VALUE(STRING_VALUE);
    v->string_value = am_arena_strdup(arena, value);
    kv->value = v;
    return kv;
}

static void spans_init(spans_t *s, size_t cap, const char *service)
{
    s->batch = am_batch_new(AM_SIGNAL_TRACES);
    am_arena_t *a = s->batch->arena;
    am_pb_export_req_t *req = am_arena_calloc(a, 1, sizeof(*req));
    am_pb_resource_spans_t *rs = am_arena_calloc(a, 1, sizeof(*rs));
    s->res = am_arena_calloc(a, 1, sizeof(*s->res));
    s->ss = am_arena_calloc(a, 1, sizeof(*s->ss));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    opentelemetry__proto__resource__v1__resource__init(s->res);
    opentelemetry__proto__trace__v1__scope_spans__init(s->ss);
    s->res->attributes = am_arena_calloc(a, 4, sizeof(am_pb_keyvalue_t *));
    if (service != NULL) {
        s->res->attributes[s->res->n_attributes++] = kv_str(a, "service.name", service);
    }
    rs->resource = s->res;
    rs->scope_spans = am_arena_calloc(a, 1, sizeof(am_pb_scope_spans_t *));
    rs->scope_spans[0] = s->ss;
    rs->n_scope_spans = 1;
    req->resource_spans = am_arena_calloc(a, 1, sizeof(am_pb_resource_spans_t *));
    req->resource_spans[0] = rs;
    req->n_resource_spans = 1;
    s->ss->spans = am_arena_calloc(a, cap, sizeof(am_pb_span_t *));
    s->cap = cap;
    s->batch->traces = req;
}

static am_pb_span_t *span_new(spans_t *s, const char *name)
{
    assert_true(s->ss->n_spans < s->cap);
    am_pb_span_t *span = am_arena_calloc(s->batch->arena, 1, sizeof(*span));
    opentelemetry__proto__trace__v1__span__init(span);
    span->name = (char *)name;
    s->ss->spans[s->ss->n_spans++] = span;
    return span;
}

/* The same span object listed again (cheap way to send many equal spans). */
static void span_repeat(spans_t *s, am_pb_span_t *span, size_t times)
{
    for (size_t i = 0; i < times; i++) {
        assert_true(s->ss->n_spans < s->cap);
        s->ss->spans[s->ss->n_spans++] = span;
    }
}

static am_pb_span_t *llm_span(spans_t *s, const char *model, double self, double input,
                              double output)
{
    am_arena_t *a = s->batch->arena;
    am_pb_span_t *span = span_new(s, "chat");
    am_span_set_str(a, span, "gen_ai.operation.name", "chat");
    am_span_set_str(a, span, "gen_ai.provider.name", "openai");
    am_span_set_str(a, span, "gen_ai.request.model", model);
    am_span_set_str(a, span, "cost.status", "priced");
    am_span_set_str(a, span, "cost.currency", "USD");
    am_span_set_double(a, span, "cost.self", self);
    if (input > 0) {
        am_span_set_double(a, span, "cost.input", input);
    }
    if (output > 0) {
        am_span_set_double(a, span, "cost.output", output);
    }
    return span;
}

/* ---- reading snapshots --------------------------------------------------------------- */

static const am_metric_family_t *family(const am_metric_set_t *set, const char *name)
{
    for (size_t i = 0; set != NULL && i < set->n_families; i++) {
        if (strcmp(set->families[i].name, name) == 0) {
            return &set->families[i];
        }
    }
    return NULL;
}

/* labels as `a="x",b="y"` (sorted, as stored) */
static const am_series_t *series(const am_metric_set_t *set, const char *name, const char *labels)
{
    const am_metric_family_t *fam = family(set, name);
    for (size_t s = 0; fam != NULL && s < fam->n_series; s++) {
        char buf[1024] = "";
        for (size_t l = 0; l < fam->series[s].n_labels; l++) {
            char part[300];
            snprintf(part, sizeof(part), "%s%s=\"%s\"", l > 0 ? "," : "",
                     fam->series[s].labels[l].name, fam->series[s].labels[l].value);
            strcat(buf, part);
        }
        if (strcmp(buf, labels) == 0) {
            return &fam->series[s];
        }
    }
    return NULL;
}

static void check_value(const am_metric_set_t *set, const char *name, const char *labels,
                        double value)
{
    const am_series_t *s = series(set, name, labels);
    if (s == NULL) {
        char *text = am_metric_set_render_text(set, false, NULL);
        fail_msg("no series %s{%s} in:\n%s", name, labels, text);
    }
    if (s->value != value) {
        fail_msg("%s{%s} = %.17g, expected %.17g", name, labels, s->value, value);
    }
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_names_and_labels(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "{}");
    spans_t s;
    spans_init(&s, 8, "support-bot");
    am_pb_span_t *span = llm_span(&s, "gpt-4o", 0.0125, 0.01, 0.0025);
    am_span_set_int(s.batch->arena, span, "gen_ai.usage.input_tokens", 4000);
    am_span_set_int(s.batch->arena, span, "gen_ai.usage.output_tokens", 250);
    am_span_set_str(s.batch->arena, span, "tenant.id", "acme");
    assert_int_equal(OPS->consume(h.instance, s.batch), AM_OK);
    am_batch_unref(s.batch);

    const am_metric_set_t *set = harness_flush(&h);
    assert_non_null(set);
    const char *dims = "gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\","
                       "service_name=\"support-bot\",tenant_id=\"acme\"";
    char labels[512];
    snprintf(labels, sizeof(labels), "cost_type=\"input\",currency=\"USD\",%s", dims);
    check_value(set, "agent_cost_total", labels, 0.01);
    snprintf(labels, sizeof(labels), "cost_type=\"output\",currency=\"USD\",%s", dims);
    check_value(set, "agent_cost_total", labels, 0.0025);
    /* the parts explain cost.self fully: no "other" series */
    assert_int_equal(family(set, "agent_cost_total")->n_series, 2);
    snprintf(labels, sizeof(labels), "%s,token_type=\"input\"", dims);
    check_value(set, "agent_tokens_total", labels, 4000);
    snprintf(labels, sizeof(labels), "%s,token_type=\"output\"", dims);
    check_value(set, "agent_tokens_total", labels, 250);
    assert_int_equal(family(set, "agent_cost_total")->type, AM_METRIC_COUNTER);
    assert_non_null(strstr(family(set, "agent_cost_total")->help, "currency"));
    harness_free(&h);
}

static void test_exact_sums(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: [gen_ai.request.model]");
    enum { N = 100000 };
    spans_t s;
    spans_init(&s, N + 1, NULL);
    am_pb_span_t *span = llm_span(&s, "tiny", 0.000000001, 0, 0);
    span_repeat(&s, span, N - 1);
    assert_int_equal(OPS->consume(h.instance, s.batch), AM_OK);
    am_batch_unref(s.batch);
    /* the naive double sum drifts; the fixed-point one must not */
    double naive = 0;
    for (int i = 0; i < N; i++) {
        naive += 0.000000001;
    }
    assert_true(naive != 0.0001);
    const am_metric_set_t *set = harness_flush(&h);
    check_value(set, "agent_cost_total",
                "cost_type=\"other\",currency=\"USD\",gen_ai_request_model=\"tiny\"", 0.0001);
    harness_free(&h);
}

static void test_exact_cost_from_trace_index(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: []");
    spans_t s;
    spans_init(&s, 4, NULL);
    /* The attribute says 0.1 but the ratecard's exact value is preferred. */
    am_pb_span_t *span = llm_span(&s, "m", 0.1, 0, 0);
    am_trace_t *trace = am_arena_calloc(s.batch->arena, 1, sizeof(*trace));
    trace->spans = am_arena_calloc(s.batch->arena, 1, sizeof(am_span_ref_t));
    trace->spans[0] = (am_span_ref_t){.span = span,
                                      .resource = s.res,
                                      .parent = AM_SPAN_NONE,
                                      .first_child = AM_SPAN_NONE,
                                      .next_sibling = AM_SPAN_NONE,
                                      .cost_self = 123456789};
    trace->n_spans = 1;
    s.batch->trace_index = trace;
    s.batch->n_traces = 1;
    OPS->consume(h.instance, s.batch);
    am_batch_unref(s.batch);
    const am_metric_set_t *set = harness_flush(&h);
    check_value(set, "agent_cost_total", "cost_type=\"other\",currency=\"USD\"", 0.123456789);
    harness_free(&h);
}

static void test_tokens_skip_agent_spans_and_unpriced(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: []");
    spans_t s;
    spans_init(&s, 8, NULL);
    am_arena_t *a = s.batch->arena;
    am_pb_span_t *agent = span_new(&s, "invoke_agent");
    am_span_set_str(a, agent, "gen_ai.operation.name", "invoke_agent");
    am_span_set_int(a, agent, "gen_ai.usage.input_tokens", 999);
    am_span_set_str(a, agent, "cost.status", "not_billable");
    am_pb_span_t *llm = span_new(&s, "chat");
    am_span_set_str(a, llm, "gen_ai.operation.name", "chat");
    am_span_set_int(a, llm, "gen_ai.usage.prompt_tokens", 10);
    am_span_set_int(a, llm, "gen_ai.usage.cache_read.input_tokens", 4);
    am_span_set_str(a, llm, "cost.status", "unpriced_model");
    OPS->consume(h.instance, s.batch);
    am_batch_unref(s.batch);
    const am_metric_set_t *set = harness_flush(&h);
    check_value(set, "agent_tokens_total", "token_type=\"input\"", 10);
    check_value(set, "agent_tokens_total", "token_type=\"cache_read\"", 4);
    assert_int_equal(family(set, "agent_tokens_total")->n_series, 2);
    check_value(set, "agent_unpriced_spans_total", "reason=\"unpriced_model\"", 1);
    assert_null(family(set, "agent_cost_total"));
    harness_free(&h);
}

static void test_actions_and_histogram_buckets(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: []\nhistogram_buckets: [0.01, 0.1, 1]");
    spans_t s;
    spans_init(&s, 8, NULL);
    am_arena_t *a = s.batch->arena;
    const double subtree[] = {0.005, 0.01, 0.05, 2};
    for (size_t i = 0; i < 4; i++) {
        am_pb_span_t *span = span_new(&s, "execute_tool");
        am_span_set_str(a, span, "cost.action", "tool_call");
        am_span_set_str(a, span, "cost.currency", "USD");
        am_span_set_double(a, span, "cost.subtree", subtree[i]);
        if (i == 3) {
            span->status = am_arena_calloc(a, 1, sizeof(am_pb_status_t));
            opentelemetry__proto__trace__v1__status__init(span->status);
            span->status->code = AM_PB_STATUS_ERROR;
        }
    }
    am_pb_span_t *root = span_new(&s, "invoke_agent");
    am_span_set_str(a, root, "cost.currency", "USD");
    am_span_set_double(a, root, "cost.trace.total", 2.065);
    OPS->consume(h.instance, s.batch);
    am_batch_unref(s.batch);
    const am_metric_set_t *set = harness_flush(&h);
    check_value(set, "agent_actions_total", "action=\"tool_call\",outcome=\"success\"", 3);
    check_value(set, "agent_actions_total", "action=\"tool_call\",outcome=\"failure\"", 1);
    const am_metric_family_t *fam = family(set, "agent_action_cost");
    assert_non_null(fam);
    assert_int_equal(fam->type, AM_METRIC_HISTOGRAM);
    assert_int_equal(fam->n_bounds, 3);
    assert_true(fam->bounds[0] == 0.01 && fam->bounds[1] == 0.1 && fam->bounds[2] == 1);
    const am_series_t *h1 =
        series(set, "agent_action_cost", "action=\"tool_call\",currency=\"USD\"");
    assert_non_null(h1);
    /* le is inclusive: 0.01 falls in the 0.01 bucket */
    assert_int_equal(h1->bucket_counts[0], 2);
    assert_int_equal(h1->bucket_counts[1], 3);
    assert_int_equal(h1->bucket_counts[2], 3);
    assert_int_equal(h1->count, 4);
    assert_true(h1->sum == 2.065);
    const am_series_t *t = series(set, "agent_trace_cost", "currency=\"USD\"");
    assert_non_null(t);
    assert_int_equal(t->count, 1);
    assert_int_equal(t->bucket_counts[2], 0);

    size_t len;
    char *text = am_metric_set_render_text(set, false, &len);
    assert_non_null(strstr(text, "# TYPE agent_action_cost histogram\n"));
    assert_non_null(strstr(text, "agent_action_cost_bucket{action=\"tool_call\",currency=\"USD\","
                                 "le=\"0.01\"} 2\n"));
    assert_non_null(strstr(text, "agent_action_cost_bucket{action=\"tool_call\",currency=\"USD\","
                                 "le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(text, "agent_action_cost_sum{action=\"tool_call\",currency=\"USD\"} "
                                 "2.065\n"));
    assert_non_null(strstr(text, "agent_action_cost_count{action=\"tool_call\",currency=\"USD\"} "
                                 "4\n"));
    am_free(text);
    harness_free(&h);
}

static void test_overflow(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: [gen_ai.request.model]\nmax_series: 3");
    spans_t s;
    spans_init(&s, 16, NULL);
    const char *models[] = {"m1", "m2", "m3", "m4", "m5", "m4"};
    for (size_t i = 0; i < AM_ARRAY_SIZE(models); i++) {
        llm_span(&s, models[i], 0.5, 0, 0);
    }
    OPS->consume(h.instance, s.batch);
    am_batch_unref(s.batch);
    const am_metric_set_t *set = harness_flush(&h);
    const am_metric_family_t *fam = family(set, "agent_cost_total");
    assert_int_equal(fam->n_series, 4);
    check_value(set, "agent_cost_total",
                "cost_type=\"other\",currency=\"USD\",gen_ai_request_model=\"m3\"", 0.5);
    check_value(set, "agent_cost_total", "otel_metric_overflow=\"true\"", 1.5);
    double total = 0;
    for (size_t i = 0; i < fam->n_series; i++) {
        total += fam->series[i].value;
    }
    assert_true(total == 3.0);
    harness_free(&h);
}

static void add_event(am_batch_t *batch, const char *kind, const char *name, am_money_t amount,
                      am_money_t limit, double threshold, const char *tenant)
{
    am_arena_t *a = batch->arena;
    am_event_t ev = {0};
    ev.kind = kind;
    ev.name = name;
    ev.scope = "tenant.id";
    ev.key = tenant;
    ev.amount = amount;
    ev.limit = limit;
    ev.threshold = threshold;
    ev.currency = "USD";
    ev.time_unix_nano = 1000;
    ev.json = am_arena_sprintf(a, "{\"event\":\"%s\"}", kind);
    ev.json_len = strlen(ev.json);
    ev.attrs = am_arena_calloc(a, 1, sizeof(am_pb_keyvalue_t *));
    ev.attrs[0] = kv_str(a, "gen_ai.agent.name", "planner");
    ev.n_attrs = 1;
    assert_int_equal(am_batch_add_event(batch, &ev), 0);
}

static void test_events(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: [tenant.id, gen_ai.agent.name]\nhistogram_buckets: [1, 10]");
    spans_t s;
    spans_init(&s, 1, NULL);
    add_event(s.batch, "session.summary", NULL, 2500000000, 0, 0, "acme");
    add_event(s.batch, "budget.threshold", "tenant-daily", 800000000, 1000000000, 0.8, "acme");
    add_event(s.batch, "anomaly.detected", "loop", 0, 0, 0, "acme");
    assert_int_equal(OPS->consume(h.instance, s.batch), AM_OK);
    /* events went downstream unchanged, as one logs batch */
    assert_int_equal(h.cap.log_batches, 1);
    assert_int_equal(h.cap.events, 3);
    assert_string_equal(h.cap.first_event_json, "{\"event\":\"session.summary\"}");
    am_batch_unref(s.batch);

    const am_metric_set_t *set = harness_flush(&h);
    const char *dims = "gen_ai_agent_name=\"planner\",tenant_id=\"acme\"";
    char labels[512];
    const am_series_t *sess = series(set, "agent_session_cost",
                                     "currency=\"USD\",gen_ai_agent_name=\"planner\","
                                     "tenant_id=\"acme\"");
    assert_non_null(sess);
    assert_true(sess->sum == 2.5);
    assert_int_equal(sess->bucket_counts[0], 0);
    assert_int_equal(sess->bucket_counts[1], 1);
    snprintf(labels, sizeof(labels), "budget=\"tenant-daily\",currency=\"USD\",%s", dims);
    check_value(set, "agent_budget_spent", labels, 0.8);
    check_value(set, "agent_budget_limit", labels, 1.0);
    assert_int_equal(family(set, "agent_budget_spent")->type, AM_METRIC_GAUGE);
    snprintf(labels, sizeof(labels), "budget=\"tenant-daily\",%s,threshold=\"0.8\"", dims);
    check_value(set, "agent_budget_threshold_crossings_total", labels, 1);
    check_value(set, "agent_cost_anomalies_total",
                "gen_ai_agent_name=\"planner\",kind=\"loop\",tenant_id=\"acme\"", 1);
    harness_free(&h);
}

static void test_refused_logs_are_not_counted(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: []");
    h.cap.answer_logs = AM_RETRY;
    spans_t s;
    spans_init(&s, 2, NULL);
    llm_span(&s, "m", 1, 0, 0);
    add_event(s.batch, "anomaly.detected", "loop", 0, 0, 0, "acme");
    assert_int_equal(OPS->consume(h.instance, s.batch), AM_RETRY);
    h.cap.answer_logs = AM_OK;
    assert_int_equal(OPS->consume(h.instance, s.batch), AM_OK);
    am_batch_unref(s.batch);
    const am_metric_set_t *set = harness_flush(&h);
    /* counted once, by the delivery that went through */
    check_value(set, "agent_cost_total", "cost_type=\"other\",currency=\"USD\"", 1);
    check_value(set, "agent_cost_anomalies_total", "kind=\"loop\"", 1);
    harness_free(&h);
}

static void test_flush_timer_is_cumulative(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, "dimensions: []\nflush_interval: 10ms");
    assert_int_equal(OPS->start(h.instance), 0);
    for (int round = 1; round <= 2; round++) {
        spans_t s;
        spans_init(&s, 2, NULL);
        llm_span(&s, "m", 0.25, 0, 0);
        OPS->consume(h.instance, s.batch);
        am_batch_unref(s.batch);
        int before = h.cap.metric_batches;
        while (h.cap.metric_batches == before) {
            uv_run(&h.loop, UV_RUN_ONCE);
        }
        check_value(h.cap.last, "agent_cost_total", "cost_type=\"other\",currency=\"USD\"",
                    0.25 * round);
        assert_true(h.cap.last->timestamp_ms > 1600000000000);
    }
    harness_free(&h);
}

static void test_ids_refused_as_dimensions(void **state)
{
    (void)state;
    harness_t h = {0};
    am_errors_t errs = {0};
    parse(&h,
          "dimensions:\n"
          "  - tenant.id\n"
          "  - session.id\n"
          "  - user.id\n"
          "histogram_buckets: [1, 0.5]\n",
          &errs);
    assert_int_equal(errs.count, 3);
    assert_non_null(strstr(errs.msgs[0], "costmetrics.yaml:3:"));
    assert_non_null(strstr(errs.msgs[0], "session.id"));
    assert_non_null(strstr(errs.msgs[1], "costmetrics.yaml:4:"));
    assert_non_null(strstr(errs.msgs[2], "costmetrics.yaml:5:"));
    assert_non_null(strstr(errs.msgs[2], "increasing"));
    am_errors_clear(&errs);
    am_options_free(OPS->options, h.cfg);
    free(h.cfg);
    am_config_free(h.conf);
}

static void test_defaults(void **state)
{
    (void)state;
    assert_int_equal(OPS->kind, AM_KIND_CONNECTOR);
    assert_int_equal(OPS->signals, AM_SIGNAL_TRACES);
    assert_int_equal(OPS->out_signals, AM_SIGNAL_METRICS | AM_SIGNAL_LOGS);
    harness_t h = {0};
    am_errors_t errs = {0};
    assert_int_equal(parse(&h, "{}", &errs), 0);
    typedef struct {
        am_strlist_t dimensions;
        int64_t flush_interval_ms;
        int64_t max_series;
        am_strlist_t histogram_buckets;
    } view_t;
    const view_t *cfg = h.cfg;
    assert_int_equal(cfg->dimensions.count, 5);
    assert_string_equal(cfg->dimensions.items[1], "gen_ai.provider.name");
    assert_int_equal(cfg->flush_interval_ms, 15000);
    assert_int_equal(cfg->max_series, 2000);
    assert_int_equal(cfg->histogram_buckets.count, 10);
    am_options_free(OPS->options, h.cfg);
    free(h.cfg);
    am_config_free(h.conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_labels),
        cmocka_unit_test(test_exact_sums),
        cmocka_unit_test(test_exact_cost_from_trace_index),
        cmocka_unit_test(test_tokens_skip_agent_spans_and_unpriced),
        cmocka_unit_test(test_actions_and_histogram_buckets),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_refused_logs_are_not_counted),
        cmocka_unit_test(test_flush_timer_is_cumulative),
        cmocka_unit_test(test_ids_refused_as_dimensions),
        cmocka_unit_test(test_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
