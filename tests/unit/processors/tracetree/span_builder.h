/*
 * span_builder.h - test helpers shared by the tracetree, propagate and
 * rollup tests: build OTLP requests in C the way a receiver sees them
 * (packed to the wire, then unpacked into a fresh arena), capture what a
 * component emits, and find spans in an emitted tree.
 *
 * Ids: trace number N -> trace id a0 00 .. 00 <N big-endian 4 bytes>;
 * span number S (> 0) -> span id <S big-endian 8 bytes>; parent 0 = none.
 */
#ifndef SPAN_BUILDER_H
#define SPAN_BUILDER_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_attr.h"
#include "am_component.h"

typedef struct sb_req {
    am_arena_t *arena; /* build arena: dropped by sb_finish */
    am_pb_export_req_t *req;
    am_pb_resource_spans_t *rs; /* current resource */
    am_pb_scope_spans_t *ss;    /* its one scope */
    size_t cap_rs, cap_spans;
} sb_req_t;

static inline void sb_trace_id(uint32_t trace_no, uint8_t out[16])
{
    memset(out, 0, 16);
    out[0] = 0xa0;
    out[12] = (uint8_t)(trace_no >> 24);
    out[13] = (uint8_t)(trace_no >> 16);
    out[14] = (uint8_t)(trace_no >> 8);
    out[15] = (uint8_t)trace_no;
}

static inline void sb_span_id(uint64_t span_no, uint8_t out[8])
{
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(span_no >> (56 - 8 * i));
    }
}

static inline uint64_t sb_span_no(const am_pb_span_t *span)
{
    uint64_t no = 0;
    for (size_t i = 0; i < span->span_id.len && i < 8; i++) {
        no = no << 8 | span->span_id.data[i];
    }
    return no;
}

static inline am_pb_keyvalue_t *sb_kv(am_arena_t *arena, const char *key)
{
    am_pb_keyvalue_t *kv = am_arena_alloc(arena, sizeof(*kv));
    am_pb_anyvalue_t *value = am_arena_alloc(arena, sizeof(*value));
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(value);
    kv->key = am_arena_strdup(arena, key);
    kv->value = value;
    return kv;
}

static inline void sb_push_kv(am_arena_t *arena, am_pb_keyvalue_t ***attrs, size_t *n,
                              am_pb_keyvalue_t *kv)
{
    am_pb_keyvalue_t **grown = am_arena_alloc(arena, (*n + 1) * sizeof(*grown));
    if (*n > 0) {
        memcpy(grown, *attrs, *n * sizeof(*grown));
    }
    grown[(*n)++] = kv;
    *attrs = grown;
}

static inline void sb_begin(sb_req_t *b)
{
    memset(b, 0, sizeof(*b));
    b->arena = am_arena_new(1 << 16);
    b->req = am_arena_alloc(b->arena, sizeof(*b->req));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(b->req);
}

/* Start a new resource (all following spans go there); attributes as
 * NULL-terminated key, value string pairs. */
static inline void sb_resource(sb_req_t *b, ...)
{
    am_arena_t *arena = b->arena;
    am_pb_resource_spans_t *rs = am_arena_alloc(arena, sizeof(*rs));
    am_pb_resource_t *res = am_arena_alloc(arena, sizeof(*res));
    am_pb_scope_spans_t *ss = am_arena_alloc(arena, sizeof(*ss));
    am_pb_scope_t *scope = am_arena_alloc(arena, sizeof(*scope));
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    opentelemetry__proto__resource__v1__resource__init(res);
    opentelemetry__proto__trace__v1__scope_spans__init(ss);
    opentelemetry__proto__common__v1__instrumentation_scope__init(scope);
    scope->name = "span_builder";
    va_list ap;
    va_start(ap, b);
    for (const char *key = va_arg(ap, const char *); key != NULL; key = va_arg(ap, const char *)) {
        am_pb_keyvalue_t *kv = sb_kv(arena, key);
        kv->value->value_case = AM_PB_VALUE(STRING_VALUE);
        kv->value->string_value = am_arena_strdup(arena, va_arg(ap, const char *));
        sb_push_kv(arena, &res->attributes, &res->n_attributes, kv);
    }
    va_end(ap);
    rs->resource = res;
    ss->scope = scope;
    rs->scope_spans = am_arena_alloc(arena, sizeof(*rs->scope_spans));
    rs->scope_spans[0] = ss;
    rs->n_scope_spans = 1;
    am_pb_resource_spans_t **grown =
        am_arena_alloc(arena, (b->req->n_resource_spans + 1) * sizeof(*grown));
    if (b->req->n_resource_spans > 0) {
        memcpy(grown, b->req->resource_spans, b->req->n_resource_spans * sizeof(*grown));
    }
    grown[b->req->n_resource_spans++] = rs;
    b->req->resource_spans = grown;
    b->rs = rs;
    b->ss = ss;
    b->cap_spans = 0;
}

/* Add a span; string attributes as NULL-terminated key, value pairs. */
static inline am_pb_span_t *sb_span(sb_req_t *b, uint32_t trace_no, uint64_t span_no,
                                    uint64_t parent_no, const char *name, ...)
{
    if (b->ss == NULL) {
        sb_resource(b, NULL);
    }
    am_arena_t *arena = b->arena;
    am_pb_span_t *span = am_arena_alloc(arena, sizeof(*span));
    opentelemetry__proto__trace__v1__span__init(span);
    uint8_t *ids = am_arena_alloc(arena, 32);
    sb_trace_id(trace_no, ids);
    sb_span_id(span_no, ids + 16);
    span->trace_id.data = ids;
    span->trace_id.len = 16;
    span->span_id.data = ids + 16;
    span->span_id.len = 8;
    if (parent_no != 0) {
        sb_span_id(parent_no, ids + 24);
        span->parent_span_id.data = ids + 24;
        span->parent_span_id.len = 8;
    }
    span->name = am_arena_strdup(arena, name != NULL ? name : "span");
    va_list ap;
    va_start(ap, name);
    for (const char *key = va_arg(ap, const char *); key != NULL; key = va_arg(ap, const char *)) {
        am_pb_keyvalue_t *kv = sb_kv(arena, key);
        kv->value->value_case = AM_PB_VALUE(STRING_VALUE);
        kv->value->string_value = am_arena_strdup(arena, va_arg(ap, const char *));
        sb_push_kv(arena, &span->attributes, &span->n_attributes, kv);
    }
    va_end(ap);
    am_pb_scope_spans_t *ss = b->ss;
    if (ss->n_spans == b->cap_spans) {
        size_t cap = b->cap_spans == 0 ? 16 : b->cap_spans * 2;
        am_pb_span_t **grown = am_arena_alloc(arena, cap * sizeof(*grown));
        if (ss->n_spans > 0) {
            memcpy(grown, ss->spans, ss->n_spans * sizeof(*grown));
        }
        ss->spans = grown;
        b->cap_spans = cap;
    }
    ss->spans[ss->n_spans++] = span;
    return span;
}

static inline void sb_span_int(sb_req_t *b, am_pb_span_t *span, const char *key, int64_t value)
{
    am_pb_keyvalue_t *kv = sb_kv(b->arena, key);
    kv->value->value_case = AM_PB_VALUE(INT_VALUE);
    kv->value->int_value = value;
    sb_push_kv(b->arena, &span->attributes, &span->n_attributes, kv);
}

/* Pack to the wire, unpack into a new arena: the batch a receiver makes. */
static inline am_batch_t *sb_finish(sb_req_t *b)
{
    size_t size =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
            b->req);
    uint8_t *wire = malloc(size > 0 ? size : 1);
    assert_non_null(wire);
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(b->req, wire);
    am_arena_unref(b->arena);
    am_arena_t *arena = am_arena_new(size * 2 + 1024);
    ProtobufCAllocator alloc = am_arena_allocator(arena);
    am_batch_t *batch = am_batch_new_with_arena(AM_SIGNAL_TRACES, arena);
    batch->traces =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            &alloc, size, wire);
    free(wire);
    assert_non_null(batch->traces);
    am_batch_count_spans(batch);
    memset(b, 0, sizeof(*b));
    return batch;
}

/* ---- capturing consumer ------------------------------------------------ */

typedef struct sb_capture {
    am_consumer_t consumer;
    am_batch_t **batches;
    size_t n, cap;
    am_status_t reply; /* what consume answers (AM_OK by default) */
} sb_capture_t;

static inline am_status_t sb_capture_consume(am_consumer_t *self, am_batch_t *batch)
{
    sb_capture_t *cap = self->data;
    if (cap->reply != AM_OK) {
        return cap->reply;
    }
    if (cap->n == cap->cap) {
        cap->cap = cap->cap == 0 ? 16 : cap->cap * 2;
        cap->batches = realloc(cap->batches, cap->cap * sizeof(*cap->batches));
        assert_non_null(cap->batches);
    }
    cap->batches[cap->n++] = am_batch_ref(batch);
    return AM_OK;
}

static inline void sb_capture_init(sb_capture_t *cap)
{
    memset(cap, 0, sizeof(*cap));
    cap->consumer.consume = sb_capture_consume;
    cap->consumer.data = cap;
}

static inline void sb_capture_clear(sb_capture_t *cap)
{
    for (size_t i = 0; i < cap->n; i++) {
        am_batch_unref(cap->batches[i]);
    }
    cap->n = 0;
}

static inline void sb_capture_free(sb_capture_t *cap)
{
    sb_capture_clear(cap);
    free(cap->batches);
    cap->batches = NULL;
    cap->cap = 0;
}

static inline size_t sb_capture_spans(const sb_capture_t *cap)
{
    size_t total = 0;
    for (size_t i = 0; i < cap->n; i++) {
        for (size_t t = 0; t < cap->batches[i]->n_traces; t++) {
            total += cap->batches[i]->trace_index[t].n_spans;
        }
    }
    return total;
}

static inline size_t sb_capture_traces(const sb_capture_t *cap)
{
    size_t total = 0;
    for (size_t i = 0; i < cap->n; i++) {
        total += cap->batches[i]->n_traces;
    }
    return total;
}

/* A consumer that forwards into a component instance (to chain them). */
typedef struct sb_stage {
    am_consumer_t consumer;
    const am_component_ops_t *ops;
    void *instance;
} sb_stage_t;

static inline am_status_t sb_stage_consume(am_consumer_t *self, am_batch_t *batch)
{
    sb_stage_t *stage = self->data;
    return stage->ops->consume(stage->instance, batch);
}

static inline void sb_stage_init(sb_stage_t *stage, const am_component_ops_t *ops, void *instance)
{
    stage->consumer.consume = sb_stage_consume;
    stage->consumer.data = stage;
    stage->ops = ops;
    stage->instance = instance;
}

/* ---- finding spans in emitted trees ---------------------------------- */

typedef struct sb_found {
    am_batch_t *batch;
    am_trace_t *trace;
    am_span_ref_t *ref;
    uint32_t index;
} sb_found_t;

/* The first emitted span with this trace and span number (ref NULL if none). */
static inline sb_found_t sb_find(const sb_capture_t *cap, uint32_t trace_no, uint64_t span_no)
{
    uint8_t id[16];
    sb_trace_id(trace_no, id);
    sb_found_t found = {0};
    for (size_t i = 0; i < cap->n; i++) {
        am_batch_t *batch = cap->batches[i];
        for (size_t t = 0; t < batch->n_traces; t++) {
            am_trace_t *trace = &batch->trace_index[t];
            if (memcmp(trace->trace_id, id, 16) != 0) {
                continue;
            }
            for (uint32_t s = 0; s < trace->n_spans; s++) {
                if (sb_span_no(trace->spans[s].span) == span_no) {
                    found.batch = batch;
                    found.trace = trace;
                    found.ref = &trace->spans[s];
                    found.index = s;
                    return found;
                }
            }
        }
    }
    return found;
}

/* The span number of the parent of `found` in the tree, 0 when none. */
static inline uint64_t sb_parent_no(sb_found_t found)
{
    if (found.ref->parent == AM_SPAN_NONE) {
        return 0;
    }
    return sb_span_no(found.trace->spans[found.ref->parent].span);
}

static inline const char *sb_str_attr(const am_pb_span_t *span, const char *key)
{
    const char *value = NULL;
    if (!am_attr_get_str(span->attributes, span->n_attributes, key, &value)) {
        return NULL;
    }
    return value;
}

static inline bool sb_bool_attr(const am_pb_span_t *span, const char *key)
{
    const am_pb_anyvalue_t *v = am_attr_find(span->attributes, span->n_attributes, key);
    return v != NULL && v->value_case == AM_PB_VALUE(BOOL_VALUE) && v->bool_value;
}

#endif
