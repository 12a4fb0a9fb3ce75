/*
 * Arena and batch: reference counting keeps arenas alive exactly as long as
 * some batch holds them; clone is deep (mutating the copy leaves the
 * original untouched); the OTLP view rebuilt from a trace index holds every
 * span once, grouped by resource and scope; split by shard keeps each trace
 * whole.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_attr.h"
#include "am_batch.h"
#include "am_shard.h"

/* Build a request with n_traces traces of spans_per_trace spans each, all
 * in one resource/scope, decoded into its own arena like a receiver does. */
static am_batch_t *make_batch(int n_traces, int spans_per_trace)
{
    am_pb_export_req_t req = OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    am_pb_resource_spans_t rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    am_pb_resource_t res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
    am_pb_scope_spans_t ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    am_pb_resource_spans_t *rs_list[1] = {&rs};
    am_pb_scope_spans_t *ss_list[1] = {&ss};
    size_t total = (size_t)(n_traces * spans_per_trace);
    am_pb_span_t *spans = calloc(total, sizeof(*spans));
    am_pb_span_t **span_ptrs = calloc(total, sizeof(*span_ptrs));
    uint8_t (*ids)[24] = calloc(total, 24);
    for (size_t i = 0; i < total; i++) {
        opentelemetry__proto__trace__v1__span__init(&spans[i]);
        memset(ids[i], 0, 24);
        ids[i][0] = (uint8_t)(i / (size_t)spans_per_trace + 1); /* trace id */
        ids[i][15] = 0x42;
        ids[i][16] = (uint8_t)(i + 1); /* span id */
        spans[i].trace_id.data = ids[i];
        spans[i].trace_id.len = 16;
        spans[i].span_id.data = ids[i] + 16;
        spans[i].span_id.len = 8;
        spans[i].name = "chat gpt-4o";
        span_ptrs[i] = &spans[i];
    }
    ss.spans = span_ptrs;
    ss.n_spans = total;
    rs.resource = &res;
    rs.scope_spans = ss_list;
    rs.n_scope_spans = 1;
    req.resource_spans = rs_list;
    req.n_resource_spans = 1;
    size_t size = opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(&req);
    uint8_t *wire = malloc(size);
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, wire);
    free(spans);
    free(span_ptrs);
    free(ids);

    am_arena_t *arena = am_arena_new(size * 2);
    ProtobufCAllocator alloc = am_arena_allocator(arena);
    am_batch_t *batch = am_batch_new_with_arena(AM_SIGNAL_TRACES, arena);
    batch->traces = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(&alloc, size, wire);
    free(wire);
    assert_non_null(batch->traces);
    assert_int_equal(am_batch_count_spans(batch), total);
    return batch;
}

static void test_arena_alignment_and_growth(void **state)
{
    (void)state;
    am_arena_t *arena = am_arena_new(64);
    size_t before = am_arena_total_reserved();
    for (int i = 0; i < 10000; i++) {
        void *p = am_arena_alloc(arena, (size_t)(i % 97) + 1);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 8, 0);
        memset(p, 0xab, (size_t)(i % 97) + 1);
        /* strings are packed without padding; what follows is aligned again */
        char *text = am_arena_strndup(arena, "abcdefg", (size_t)(i % 7));
        assert_non_null(text);
        assert_int_equal(strlen(text), (size_t)(i % 7));
    }
    assert_true(am_arena_total_reserved() > before);
    char *s = am_arena_sprintf(arena, "%s-%d", "cost", 42);
    assert_string_equal(s, "cost-42");
    am_arena_unref(arena);
}

static void test_arena_refcount_outlives_batch(void **state)
{
    (void)state;
    am_batch_t *a = make_batch(1, 3);
    am_batch_t *b = am_batch_new(AM_SIGNAL_TRACES);
    /* b borrows a's spans: it must hold a's arena. */
    assert_int_equal(am_batch_hold_arena(b, a->arena), 0);
    assert_int_equal(am_batch_hold_arena(b, a->arena), 0); /* idempotent */
    assert_int_equal(b->n_held, 1);
    b->traces = a->traces;
    am_batch_unref(a);
    /* Still readable through b (ASan would flag a use-after-free). */
    assert_string_equal(b->traces->resource_spans[0]->scope_spans[0]->spans[2]->name,
                        "chat gpt-4o");
    am_batch_unref(b);
}

static void test_clone_is_deep(void **state)
{
    (void)state;
    am_batch_t *orig = make_batch(2, 2);
    am_pb_span_t *span = orig->traces->resource_spans[0]->scope_spans[0]->spans[0];
    assert_int_equal(am_span_set_str(orig->arena, span, "session.id", "s-1"), 0);
    am_batch_t *copy = am_batch_clone(orig);
    assert_non_null(copy);
    am_pb_span_t *copy_span = copy->traces->resource_spans[0]->scope_spans[0]->spans[0];
    assert_ptr_not_equal(copy_span, span);
    const char *value = NULL;
    assert_true(am_attr_get_str(copy_span->attributes, copy_span->n_attributes, "session.id", &value));
    assert_string_equal(value, "s-1");
    /* Mutating the copy leaves the original untouched. */
    assert_int_equal(am_span_set_double(copy->arena, copy_span, "cost.self", 1.5), 0);
    assert_null(am_attr_find(span->attributes, span->n_attributes, "cost.self"));
    am_batch_unref(orig);
    am_batch_unref(copy);
}

static void test_set_attribute_replaces(void **state)
{
    (void)state;
    am_batch_t *batch = make_batch(1, 1);
    am_pb_span_t *span = batch->traces->resource_spans[0]->scope_spans[0]->spans[0];
    assert_int_equal(am_span_set_int(batch->arena, span, "gen_ai.usage.input_tokens", 10), 0);
    assert_int_equal(am_span_set_int(batch->arena, span, "gen_ai.usage.input_tokens", 20), 0);
    assert_int_equal(span->n_attributes, 1);
    int64_t tokens = 0;
    assert_true(am_attr_get_int(span->attributes, span->n_attributes, "gen_ai.usage.input_tokens", &tokens));
    assert_int_equal(tokens, 20);
    am_batch_unref(batch);
}

static void test_split_keeps_traces_whole(void **state)
{
    (void)state;
    am_batch_t *batch = make_batch(40, 5);
    am_batch_t *parts[4];
    assert_int_equal(am_batch_split_by_shard(batch, 4, parts), 0);
    size_t total = 0;
    for (int k = 0; k < 4; k++) {
        if (parts[k] == NULL) {
            continue;
        }
        total += parts[k]->span_count;
        am_pb_export_req_t *req = parts[k]->traces;
        for (size_t r = 0; r < req->n_resource_spans; r++) {
            for (size_t s = 0; s < req->resource_spans[r]->n_scope_spans; s++) {
                am_pb_scope_spans_t *ss = req->resource_spans[r]->scope_spans[s];
                for (size_t i = 0; i < ss->n_spans; i++) {
                    assert_int_equal(am_shard_for_trace(ss->spans[i]->trace_id.data, 16, 4), k);
                }
            }
        }
    }
    assert_int_equal(total, 200);
    am_batch_unref(batch);
    /* Parts keep the spans alive after the original is gone. */
    for (int k = 0; k < 4; k++) {
        if (parts[k] != NULL) {
            assert_non_null(parts[k]->traces->resource_spans[0]->scope_spans[0]->spans[0]->name);
            am_batch_unref(parts[k]);
        }
    }
}

static void test_otlp_view_from_index(void **state)
{
    (void)state;
    am_batch_t *src = make_batch(3, 4);
    am_batch_t *out = am_batch_new(AM_SIGNAL_TRACES);
    am_batch_hold_arena(out, src->arena);
    am_pb_scope_spans_t *ss = src->traces->resource_spans[0]->scope_spans[0];
    out->trace_index = am_arena_calloc(out->arena, 3, sizeof(am_trace_t));
    out->n_traces = 3;
    for (int t = 0; t < 3; t++) {
        am_trace_t *trace = &out->trace_index[t];
        trace->spans = am_arena_calloc(out->arena, 4, sizeof(am_span_ref_t));
        trace->n_spans = 4;
        for (int i = 0; i < 4; i++) {
            trace->spans[i].span = ss->spans[t * 4 + i];
            trace->spans[i].resource = src->traces->resource_spans[0]->resource;
            trace->spans[i].scope = ss->scope;
            trace->spans[i].parent = AM_SPAN_NONE;
        }
    }
    assert_int_equal(am_batch_build_otlp_view(out), 0);
    assert_int_equal(out->span_count, 12);
    assert_int_equal(out->traces->n_resource_spans, 1);
    assert_int_equal(out->traces->resource_spans[0]->n_scope_spans, 1);
    assert_int_equal(out->traces->resource_spans[0]->scope_spans[0]->n_spans, 12);
    am_batch_unref(src);
    am_batch_unref(out);
}

static void test_money_format_exact(void **state)
{
    (void)state;
    char buf[AM_MONEY_STRLEN];
    assert_string_equal(am_money_format(1522500000, buf), "1.5225");
    assert_string_equal(am_money_format(3 * AM_MONEY_SCALE, buf), "3");
    assert_string_equal(am_money_format(1, buf), "0.000000001");
    assert_string_equal(am_money_format(-1500000000, buf), "-1.5");
    am_money_t v = 0;
    assert_int_equal(am_money_parse("2.50", &v), 0);
    assert_int_equal(v, 2500000000);
    assert_int_equal(am_money_parse("0.0000000001", &v), AM_ERANGE);
    assert_int_equal(am_money_parse("abc", &v), AM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_alignment_and_growth),
        cmocka_unit_test(test_arena_refcount_outlives_batch),
        cmocka_unit_test(test_clone_is_deep),
        cmocka_unit_test(test_set_attribute_replaces),
        cmocka_unit_test(test_split_keeps_traces_whole),
        cmocka_unit_test(test_otlp_view_from_index),
        cmocka_unit_test(test_money_format_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
