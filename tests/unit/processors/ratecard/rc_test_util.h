/*
 * rc_test_util.h - helpers shared by the ratecard tests: build batches of
 * spans shaped like instrumentations emit them, write cards to a temp dir,
 * run the processor through its ops struct and read back what it wrote.
 *
 * Included by each test_*.c (each is its own executable), so everything here
 * is static.
 */
#ifndef RC_TEST_UTIL_H
#define RC_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "am_attr.h"
#include "am_batch.h"
#include "am_component.h"
#include "processors/ratecard/ratecard_internal.h"

extern const am_component_ops_t am_processor_ratecard_ops;

#define TB_MAX_SPANS 64
#define TB_MAX_RESOURCE_ATTRS 16

/* 2026-06-01T00:00:00Z */
#define T_2026_06_01 INT64_C(1780272000000000000)

typedef struct tb {
    am_batch_t *batch;
    am_pb_resource_t *resource;
    am_pb_scope_spans_t *ss;
} tb_t;

static inline tb_t tb_new(void)
{
    tb_t tb;
    tb.batch = am_batch_new(AM_SIGNAL_TRACES);
    assert_non_null(tb.batch);
    am_arena_t *a = tb.batch->arena;
    am_pb_export_req_t *req = am_arena_calloc(a, 1, sizeof(*req));
    am_pb_resource_spans_t *rs = am_arena_calloc(a, 1, sizeof(*rs));
    tb.resource = am_arena_calloc(a, 1, sizeof(*tb.resource));
    tb.ss = am_arena_calloc(a, 1, sizeof(*tb.ss));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    opentelemetry__proto__resource__v1__resource__init(tb.resource);
    opentelemetry__proto__trace__v1__scope_spans__init(tb.ss);
    tb.resource->attributes =
        am_arena_calloc(a, TB_MAX_RESOURCE_ATTRS, sizeof(*tb.resource->attributes));
    tb.ss->spans = am_arena_calloc(a, TB_MAX_SPANS, sizeof(*tb.ss->spans));
    rs->resource = tb.resource;
    rs->scope_spans = am_arena_calloc(a, 1, sizeof(*rs->scope_spans));
    rs->scope_spans[0] = tb.ss;
    rs->n_scope_spans = 1;
    req->resource_spans = am_arena_calloc(a, 1, sizeof(*req->resource_spans));
    req->resource_spans[0] = rs;
    req->n_resource_spans = 1;
    tb.batch->traces = req;
    return tb;
}

static inline void tb_resource_str(tb_t *tb, const char *key, const char *value)
{
    am_arena_t *a = tb->batch->arena;
    assert_true(tb->resource->n_attributes < TB_MAX_RESOURCE_ATTRS);
    am_pb_keyvalue_t *kv = am_arena_calloc(a, 1, sizeof(*kv));
    am_pb_anyvalue_t *v = am_arena_calloc(a, 1, sizeof(*v));
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(v);
    v->value_case = AM_PB_VALUE(STRING_VALUE);
    v->string_value = am_arena_strdup(a, value);
    kv->key = am_arena_strdup(a, key);
    kv->value = v;
    tb->resource->attributes[tb->resource->n_attributes++] = kv;
}

/* A span starting at `start_ns` and lasting `duration_ns`, with attributes
 * given as (key, type, value) triples: 's' string, 'i' int64, 'd' double,
 * terminated by a NULL key. */
static inline am_pb_span_t *tb_span(tb_t *tb, const char *name, int64_t start_ns,
                                    int64_t duration_ns, ...)
{
    am_arena_t *a = tb->batch->arena;
    assert_true(tb->ss->n_spans < TB_MAX_SPANS);
    am_pb_span_t *span = am_arena_calloc(a, 1, sizeof(*span));
    opentelemetry__proto__trace__v1__span__init(span);
    span->name = am_arena_strdup(a, name);
    span->start_time_unix_nano = (uint64_t)start_ns;
    span->end_time_unix_nano = (uint64_t)(start_ns + duration_ns);
    va_list ap;
    va_start(ap, duration_ns);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (key == NULL) {
            break;
        }
        int type = va_arg(ap, int);
        if (type == 's') {
            assert_int_equal(am_span_set_str(a, span, key, va_arg(ap, const char *)), 0);
        } else if (type == 'i') {
            assert_int_equal(am_span_set_int(a, span, key, va_arg(ap, int64_t)), 0);
        } else {
            assert_int_equal(am_span_set_double(a, span, key, va_arg(ap, double)), 0);
        }
    }
    va_end(ap);
    tb->ss->spans[tb->ss->n_spans++] = span;
    return span;
}

/* Index every span as one trace (so the processor sees span refs). */
static inline am_span_ref_t *tb_index(tb_t *tb)
{
    am_arena_t *a = tb->batch->arena;
    am_trace_t *trace = am_arena_calloc(a, 1, sizeof(*trace));
    trace->spans = am_arena_calloc(a, tb->ss->n_spans, sizeof(*trace->spans));
    trace->n_spans = (uint32_t)tb->ss->n_spans;
    for (size_t i = 0; i < tb->ss->n_spans; i++) {
        am_span_ref_t *ref = &trace->spans[i];
        ref->span = tb->ss->spans[i];
        ref->resource = tb->resource;
        ref->parent = i == 0 ? AM_SPAN_NONE : 0;
        ref->first_child = AM_SPAN_NONE;
        ref->next_sibling = AM_SPAN_NONE;
        ref->cost_self = -1; /* must be overwritten */
    }
    tb->batch->trace_index = trace;
    tb->batch->n_traces = 1;
    return trace->spans;
}

/* The card the pricing tests are hand-computed from.  Prices per 1M tokens. */
static const char TEST_CARD[] =
    "id: test-card\n"
    "version: \"7\"\n"
    "currency: USD\n"
    "unit: per_1m\n"
    "models:\n"
    "  - match: gpt-5\n"
    "    prices: { input: 1.25, output: 10.00, cache_read: 0.125 }\n"
    "  - match: gpt-5-mini\n"
    "    prices: { input: 0.25, output: 2.00, cache_read: 0.025 }\n"
    "  - match: gpt-5.1\n"
    "    prices: { input: 2.00, output: 16.00 }\n"
    "  - match: o-think\n"
    "    prices: { input: 1.00, output: 4.00, reasoning: 8.00 }\n"
    "  - match: gpt-4o\n"
    "    prices: { input: 2.50, output: 10.00 }\n"
    "  - match: gpt-4o-2024-05-13\n"
    "    prices: { input: 5.00, output: 15.00 }\n"
    "  - match: claude-x\n"
    "    provider: anthropic\n"
    "    cache_mode: additive\n"
    "    prices: { input: 3.00, output: 15.00, cache_read: 0.30, cache_write: 3.75 }\n"
    "    tiers:\n"
    "      - { input_tokens_above: 200000, prices: { input: 6.00, output: 22.50, cache_read: "
    "0.60, cache_write: 7.50 } }\n"
    "  - match: \"glob:claude-z-*\"\n"
    "    prices: { input: 1.00, output: 5.00 }\n"
    "  - match: \"re:^llama-3\\\\.[0-9]+-70b$\"\n"
    "    prices: { input: 0.70, output: 0.80 }\n"
    "  - match: gem\n"
    "    prices: { input: 1.00, output: 2.00 }\n"
    "  - match: gem\n"
    "    effective_from: 2026-06-01\n"
    "    prices: { input: 0.50, output: 1.00 }\n"
    "tools:\n"
    "  - { match: web_search, per_call: 0.01 }\n"
    "  - { match: \"glob:mcp_*\", per_call: 0.002 }\n"
    "compute:\n"
    "  - { when: { gpu.type: h100 }, per_gpu_second: 0.0011 }\n"
    "overrides:\n"
    "  - { when: { tenant.id: acme }, discount: 0.20 }\n"
    "  - when: { tenant.id: bigco }\n"
    "    models:\n"
    "      - match: gpt-5\n"
    "        prices: { input: 1.00, output: 8.00 }\n"
    "providers:\n"
    "  - { match: aws.bedrock, cache_mode: additive }\n";

#define I64(x) ((int64_t)(x))

/* ---- the processor ----------------------------------------------------- */

typedef struct capture {
    am_consumer_t consumer;
    int batches;
} capture_t;

static inline am_status_t capture_consume(am_consumer_t *self, am_batch_t *batch)
{
    (void)batch;
    ((capture_t *)self->data)->batches++;
    return AM_OK;
}

typedef struct proc {
    void *instance;
    capture_t capture;
    am__rc_config_t cfg;
    char *files[4];
} proc_t;

/* Create (and start) a ratecard instance over `files` (NULL-terminated). */
static inline void proc_open(proc_t *p, bool include_builtin, int64_t reload_ms, uv_loop_t *loop,
                             const char *file1, const char *file2)
{
    memset(p, 0, sizeof(*p));
    p->capture.consumer.consume = capture_consume;
    p->capture.consumer.data = &p->capture;
    size_t n = 0;
    if (file1 != NULL) {
        p->files[n++] = (char *)file1;
    }
    if (file2 != NULL) {
        p->files[n++] = (char *)file2;
    }
    p->cfg.files.items = p->files;
    p->cfg.files.count = n;
    p->cfg.include_builtin = include_builtin;
    p->cfg.reload_interval_ms = reload_ms;
    am_create_params_t params = {
        .id = "ratecard",
        .config = &p->cfg,
        .loop = loop,
        .next = &p->capture.consumer,
        .signal = AM_SIGNAL_TRACES,
        .shard = 0,
        .n_shards = 1,
    };
    assert_int_equal(am_processor_ratecard_ops.create(&params, &p->instance), 0);
    assert_int_equal(am_processor_ratecard_ops.start(p->instance), 0);
}

static inline void proc_close(proc_t *p)
{
    am_processor_ratecard_ops.shutdown(p->instance);
    am_processor_ratecard_ops.shutdown(p->instance); /* idempotent */
    am_processor_ratecard_ops.destroy(p->instance);
}

static inline void proc_run(proc_t *p, tb_t *tb)
{
    assert_int_equal(am_processor_ratecard_ops.consume(p->instance, tb->batch), AM_OK);
}

/* ---- reading back ------------------------------------------------------ */

static inline const char *span_str(const am_pb_span_t *span, const char *key)
{
    const char *value = NULL;
    if (!am_attr_get_str(span->attributes, span->n_attributes, key, &value)) {
        return NULL;
    }
    return value;
}

/* A double attribute as nano-units, or INT64_MIN when absent. */
static inline int64_t span_nano(const am_pb_span_t *span, const char *key)
{
    double value;
    if (!am_attr_get_double(span->attributes, span->n_attributes, key, &value)) {
        return INT64_MIN;
    }
    return (int64_t)llround(value * 1e9);
}

static inline void assert_status(const am_pb_span_t *span, const char *status)
{
    const char *got = span_str(span, "cost.status");
    assert_non_null(got);
    assert_string_equal(got, status);
}

/* ---- files ------------------------------------------------------------- */

static char rc_tmpdir[256];
static char rc_paths[32][512];
static int rc_n_paths;

/* Write `text` to `name` in this test's temp dir; returns the path (valid
 * for the whole run).  Writing the same name again rewrites the file. */
static inline const char *tmp_file(const char *name, const char *text)
{
    if (rc_tmpdir[0] == '\0') {
        snprintf(rc_tmpdir, sizeof(rc_tmpdir), "/tmp/am_ratecard_test.XXXXXX");
        assert_non_null(mkdtemp(rc_tmpdir));
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", rc_tmpdir, name);
    char *slot = NULL;
    for (int i = 0; i < rc_n_paths && slot == NULL; i++) {
        if (strcmp(rc_paths[i], path) == 0) {
            slot = rc_paths[i];
        }
    }
    if (slot == NULL) {
        assert_true(rc_n_paths < 32);
        slot = rc_paths[rc_n_paths++];
        memcpy(slot, path, sizeof(path));
    }
    FILE *fp = fopen(slot, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return slot;
}

static inline void tmp_cleanup(void)
{
    for (int i = 0; i < rc_n_paths; i++) {
        unlink(rc_paths[i]);
    }
    if (rc_tmpdir[0] != '\0') {
        rmdir(rc_tmpdir);
    }
}

static inline bool errors_contain(const am_errors_t *errs, const char *needle)
{
    for (size_t i = 0; i < errs->count; i++) {
        if (strstr(errs->msgs[i], needle) != NULL) {
            return true;
        }
    }
    return false;
}

static inline void print_errors(const am_errors_t *errs)
{
    for (size_t i = 0; i < errs->count; i++) {
        fprintf(stderr, "  | %s\n", errs->msgs[i]);
    }
}

#endif
