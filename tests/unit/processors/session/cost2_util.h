/*
 * cost2_util.h - helpers shared by the session, budget and anomaly tests:
 * build batches that look like what tracetree + ratecard + rollup hand on
 * (a trace index with cost_self / cost_subtree set, cost attributes on the
 * spans), create sharded instances from YAML, capture emitted events
 * thread-safely, and an injected clock.
 */
#ifndef COST2_UTIL_H
#define COST2_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_config.h"
#include "am_shard.h"

#define C2_MAX_TRACES 64
#define C2_NS UINT64_C(1000000000)

/* ---- clock ---------------------------------------------------------- */

static _Atomic uint64_t c2_now_ns;

static inline uint64_t c2_clock(void *arg)
{
    (void)arg;
    return atomic_load(&c2_now_ns);
}

/* 2026-03-14T12:00:00Z plus seconds. */
static inline uint64_t c2_time(int64_t seconds)
{
    return (uint64_t)(INT64_C(1773489600) + seconds) * C2_NS;
}

/* ---- batches --------------------------------------------------------- */

static inline am_batch_t *c2_batch(void)
{
    am_batch_t *b = am_batch_new(AM_SIGNAL_TRACES);
    assert_non_null(b);
    b->trace_index = am_arena_calloc(b->arena, C2_MAX_TRACES, sizeof(am_trace_t));
    assert_non_null(b->trace_index);
    return b;
}

static inline am_trace_t *c2_trace(am_batch_t *b, uint32_t trace_no, uint32_t n_spans)
{
    assert_true(b->n_traces < C2_MAX_TRACES);
    am_trace_t *t = &b->trace_index[b->n_traces++];
    memset(t, 0, sizeof(*t));
    t->trace_id[0] = 0xc2;
    t->trace_id[12] = (uint8_t)(trace_no >> 24);
    t->trace_id[13] = (uint8_t)(trace_no >> 16);
    t->trace_id[14] = (uint8_t)(trace_no >> 8);
    t->trace_id[15] = (uint8_t)trace_no;
    t->spans = am_arena_calloc(b->arena, n_spans, sizeof(am_span_ref_t));
    t->roots = am_arena_calloc(b->arena, n_spans, sizeof(uint32_t));
    t->n_spans = n_spans;
    for (uint32_t i = 0; i < n_spans; i++) {
        am_span_ref_t *ref = &t->spans[i];
        ref->parent = ref->first_child = ref->next_sibling = AM_SPAN_NONE;
        ref->span = am_arena_alloc(b->arena, sizeof(am_pb_span_t));
        opentelemetry__proto__trace__v1__span__init(ref->span);
        uint8_t *ids = am_arena_alloc(b->arena, 24);
        memcpy(ids, t->trace_id, 16);
        memset(ids + 16, 0, 8);
        ids[22] = (uint8_t)(trace_no & 0xff);
        ids[23] = (uint8_t)(i + 1);
        ref->span->trace_id.data = ids;
        ref->span->trace_id.len = 16;
        ref->span->span_id.data = ids + 16;
        ref->span->span_id.len = 8;
        ref->span->name = "span";
        ref->span->start_time_unix_nano = c2_time(0) + (uint64_t)i * 1000000u;
        ref->span->end_time_unix_nano = ref->span->start_time_unix_nano + 500000u;
    }
    return t;
}

/* Span i: parent (-1: root), name, cost_self (nano), operation (or NULL). */
static inline am_pb_span_t *c2_span(am_batch_t *b, am_trace_t *t, uint32_t i, int parent,
                                    const char *name, am_money_t cost_self, const char *op)
{
    am_span_ref_t *ref = &t->spans[i];
    ref->span->name = (char *)name;
    ref->cost_self = cost_self;
    if (parent < 0) {
        t->roots[t->n_roots++] = i;
    } else {
        ref->parent = (uint32_t)parent;
        ref->next_sibling = t->spans[parent].first_child;
        t->spans[parent].first_child = i;
    }
    if (op != NULL) {
        am_span_set_str(b->arena, ref->span, "gen_ai.operation.name", op);
    }
    am_span_set_double(b->arena, ref->span, "cost.self", am_money_to_double(cost_self));
    am_span_set_str(b->arena, ref->span, "cost.currency", "USD");
    am_span_set_str(b->arena, ref->span, "cost.status",
                    op != NULL && strcmp(op, "invoke_agent") == 0 ? "not_billable"
                    : cost_self > 0                               ? "priced"
                                                                  : "no_usage");
    return ref->span;
}

static inline am_money_t c2_subtree(am_trace_t *t, uint32_t i)
{
    am_money_t sum = t->spans[i].cost_self;
    for (uint32_t c = t->spans[i].first_child; c != AM_SPAN_NONE; c = t->spans[c].next_sibling) {
        sum += c2_subtree(t, c);
    }
    t->spans[i].cost_subtree = sum;
    return sum;
}

/* What rollup does: cost_subtree everywhere, cost.trace.total on roots. */
static inline am_money_t c2_rollup(am_batch_t *b, am_trace_t *t)
{
    am_money_t total = 0;
    for (uint32_t r = 0; r < t->n_roots; r++) {
        total += c2_subtree(t, t->roots[r]);
    }
    for (uint32_t i = 0; i < t->n_spans; i++) {
        am_span_set_double(b->arena, t->spans[i].span, "cost.subtree",
                           am_money_to_double(t->spans[i].cost_subtree));
    }
    for (uint32_t r = 0; r < t->n_roots; r++) {
        am_span_set_double(b->arena, t->spans[t->roots[r]].span, "cost.trace.total",
                           am_money_to_double(total));
    }
    return total;
}

static inline void c2_set_all(am_batch_t *b, am_trace_t *t, const char *key, const char *value)
{
    for (uint32_t i = 0; i < t->n_spans; i++) {
        am_span_set_str(b->arena, t->spans[i].span, key, value);
    }
}

static inline const char *c2_attr_str(const am_pb_span_t *span, const char *key)
{
    const char *v = NULL;
    am_attr_get_str(span->attributes, span->n_attributes, key, &v);
    return v;
}

static inline bool c2_attr_double(const am_pb_span_t *span, const char *key, double *out)
{
    return am_attr_get_double(span->attributes, span->n_attributes, key, out);
}

/* ---- capture --------------------------------------------------------- */

#define C2_MAX_EVENTS 256

typedef struct c2_capture {
    am_consumer_t consumer;
    pthread_mutex_t lock;
    char *json[C2_MAX_EVENTS];
    char *kind[C2_MAX_EVENTS];
    am_money_t amount[C2_MAX_EVENTS];
    double threshold[C2_MAX_EVENTS];
    size_t n_events;
    size_t n_batches;
} c2_capture_t;

static inline am_status_t c2_capture_consume(am_consumer_t *self, am_batch_t *batch)
{
    c2_capture_t *cap = self->data;
    pthread_mutex_lock(&cap->lock);
    cap->n_batches++;
    for (size_t i = 0; i < batch->n_events && cap->n_events < C2_MAX_EVENTS; i++) {
        cap->json[cap->n_events] = strdup(batch->events[i].json);
        cap->kind[cap->n_events] = strdup(batch->events[i].kind);
        cap->amount[cap->n_events] = batch->events[i].amount;
        cap->threshold[cap->n_events] = batch->events[i].threshold;
        cap->n_events++;
    }
    pthread_mutex_unlock(&cap->lock);
    return AM_OK;
}

static inline void c2_capture_init(c2_capture_t *cap)
{
    memset(cap, 0, sizeof(*cap));
    pthread_mutex_init(&cap->lock, NULL);
    cap->consumer.consume = c2_capture_consume;
    cap->consumer.data = cap;
}

static inline void c2_capture_clear(c2_capture_t *cap)
{
    for (size_t i = 0; i < cap->n_events; i++) {
        free(cap->json[i]);
        free(cap->kind[i]);
    }
    cap->n_events = 0;
    cap->n_batches = 0;
}

static inline void c2_capture_free(c2_capture_t *cap)
{
    c2_capture_clear(cap);
    pthread_mutex_destroy(&cap->lock);
}

/* Parsed event i (caller puts). */
static inline json_object *c2_event(c2_capture_t *cap, size_t i)
{
    assert_true(i < cap->n_events);
    json_object *o = json_tokener_parse(cap->json[i]);
    assert_non_null(o);
    return o;
}

/* Number of events whose JSON has "key" == key (and kind, if given). */
static inline size_t c2_count(c2_capture_t *cap, const char *kind, const char *field,
                              const char *value)
{
    size_t n = 0;
    for (size_t i = 0; i < cap->n_events; i++) {
        if (kind != NULL && strcmp(cap->kind[i], kind) != 0) {
            continue;
        }
        json_object *o = json_tokener_parse(cap->json[i]), *v;
        if (field == NULL || (json_object_object_get_ex(o, field, &v) &&
                              strcmp(json_object_get_string(v), value) == 0)) {
            n++;
        }
        json_object_put(o);
    }
    return n;
}

/* Text of a JSON path "a.b.c" in o ("" when missing). */
static inline const char *c2_get(json_object *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_object *cur = o;
    for (char *save = NULL, *part = strtok_r(buf, ".", &save); part != NULL;
         part = strtok_r(NULL, ".", &save)) {
        if (!json_object_object_get_ex(cur, part, &cur)) {
            return "";
        }
    }
    return cur == NULL ? "null" : json_object_get_string(cur);
}

/* ---- instances ------------------------------------------------------- */

typedef struct c2_group {
    const am_component_ops_t *ops;
    am_config_t *config;
    void *cfg;
    void *inst[8];
    int n;
    am_shards_t *shards;
} c2_group_t;

/* Parse `yaml` (the component's option map) and create n instances, shard
 * k of n, all emitting into `next`. */
/* The service the next c2_group_create() hands its instances (NULL: none). */
static void *c2_service;

static inline void c2_group_create(c2_group_t *g, const am_component_ops_t *ops, const char *id,
                                   const char *yaml, int n, am_consumer_t *next)
{
    memset(g, 0, sizeof(*g));
    g->ops = ops;
    g->n = n;
    am_errors_t errs = {0};
    g->config = am_config_load_buffer("test.yaml", yaml, strlen(yaml), &errs);
    if (g->config == NULL) {
        am_errors_print(&errs, stderr);
    }
    assert_non_null(g->config);
    g->cfg = calloc(1, ops->config_size);
    const am_node_t *root = am_config_root(g->config);
    int rc = am_options_parse(ops->options, g->cfg, root->n_children > 0 ? root : NULL, id, &errs);
    if (rc == 0 && ops->validate != NULL) {
        ops->validate(g->cfg, root, id, &errs);
    }
    if (errs.count > 0) {
        am_errors_print(&errs, stderr);
    }
    assert_int_equal(errs.count, 0);
    for (int k = 0; k < n; k++) {
        am_create_params_t params = {
            .id = id,
            .config = g->cfg,
            .loop = NULL,
            .next = next,
            .signal = AM_SIGNAL_TRACES,
            .shard = k,
            .n_shards = n,
            .service = c2_service,
        };
        assert_int_equal(ops->create(&params, &g->inst[k]), 0);
    }
    for (int k = 0; k < n; k++) {
        if (ops->start != NULL) {
            assert_int_equal(ops->start(g->inst[k]), 0);
        }
    }
}

typedef struct c2_call {
    c2_group_t *g;
    int k;
    am_batch_t *batch;
    am_status_t st;
} c2_call_t;

static inline void c2_consume_fn(void *arg)
{
    c2_call_t *call = arg;
    call->st = call->g->ops->consume(call->g->inst[call->k], call->batch);
}

static inline void c2_shutdown_fn(void *arg)
{
    c2_call_t *call = arg;
    call->g->ops->shutdown(call->g->inst[call->k]);
}

static inline void c2_noop(void *arg)
{
    (void)arg;
}

/* Consume `batch` on instance k (on shard k's thread when shards run). */
static inline am_status_t c2_consume(c2_group_t *g, int k, am_batch_t *batch)
{
    c2_call_t call = {.g = g, .k = k, .batch = batch};
    if (g->shards != NULL) {
        assert_int_equal(am_shard_call(am_shards_get(g->shards, k), c2_consume_fn, &call), 0);
    } else {
        c2_consume_fn(&call);
    }
    return call.st;
}

/* Wait until every hand-off queued so far has run (twice: hand-offs may
 * post further work). */
static inline void c2_drain(c2_group_t *g)
{
    for (int round = 0; g->shards != NULL && round < 2; round++) {
        for (int k = 0; k < am_shards_count(g->shards); k++) {
            am_shard_call(am_shards_get(g->shards, k), c2_noop, NULL);
        }
    }
}

/* Shut down every instance in shard order, as the service does. */
static inline void c2_group_shutdown(c2_group_t *g)
{
    for (int k = 0; k < g->n; k++) {
        c2_call_t call = {.g = g, .k = k};
        if (g->shards != NULL) {
            am_shard_call(am_shards_get(g->shards, k), c2_shutdown_fn, &call);
        } else {
            c2_shutdown_fn(&call);
        }
    }
    c2_drain(g);
}

static inline void c2_group_destroy(c2_group_t *g)
{
    for (int k = 0; k < g->n; k++) {
        g->ops->destroy(g->inst[k]);
    }
    am_options_free(g->ops->options, g->cfg);
    free(g->cfg);
    am_config_free(g->config);
}

#endif
