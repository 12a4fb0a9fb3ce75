/*
 * Attribute reads and writes: inside an attribute scope (the hash index of
 * am_attr.c) every read and write gives exactly what the linear scan gives,
 * duplicates included (the first KeyValue with a key wins), while the
 * setters grow the span's array; outside a scope nothing changes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_attr.h"

static const char *const pool[] = {
    "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
    "gen_ai.usage.output_tokens", "gen_ai.request.model", "gen_ai.response.model",
    "session.id", "user.id", "a", "ab", "abcdefgh", "abcdefgi", "tool.name", "gen_ai.system",
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
    "cost.self", "cost.status", "x.y", "service.name",
};
#define N_POOL (sizeof(pool) / sizeof(pool[0]))

static unsigned rnd(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return (*state >> 16) & 0x7fff;
}

/* A random value: string (sometimes empty), int, integral double or text. */
static am_pb_anyvalue_t *random_value(am_arena_t *arena, unsigned *st)
{
    am_pb_anyvalue_t *v = am_arena_alloc(arena, sizeof(*v));
    opentelemetry__proto__common__v1__any_value__init(v);
    switch (rnd(st) % 5) {
    case 0:
        v->value_case = AM_PB_VALUE(STRING_VALUE);
        v->string_value = "";
        break;
    case 1:
        v->value_case = AM_PB_VALUE(INT_VALUE);
        v->int_value = rnd(st);
        break;
    case 2:
        v->value_case = AM_PB_VALUE(DOUBLE_VALUE);
        v->double_value = (double)(rnd(st) % 100);
        break;
    default:
        v->value_case = AM_PB_VALUE(STRING_VALUE);
        v->string_value = am_arena_sprintf(arena, "v%u", rnd(st) % 1000);
        break;
    }
    return v;
}

/* n attributes with keys drawn from the pool (so duplicates happen); keys
 * are arena copies, as decoded ones are, not the pool's pointers. */
static am_pb_keyvalue_t **random_attrs(am_arena_t *arena, size_t n, unsigned *st)
{
    am_pb_keyvalue_t **attrs = am_arena_alloc(arena, (n + 1) * sizeof(*attrs));
    for (size_t i = 0; i < n; i++) {
        am_pb_keyvalue_t *kv = am_arena_alloc(arena, sizeof(*kv));
        opentelemetry__proto__common__v1__key_value__init(kv);
        kv->key = am_arena_strdup(arena, pool[rnd(st) % N_POOL]);
        kv->value = random_value(arena, st);
        attrs[i] = kv;
    }
    return attrs;
}

static bool same_value(const am_pb_anyvalue_t *a, const am_pb_anyvalue_t *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    if (a->value_case != b->value_case) {
        return false;
    }
    switch (a->value_case) {
    case AM_PB_VALUE(STRING_VALUE):
        return strcmp(a->string_value, b->string_value) == 0;
    case AM_PB_VALUE(INT_VALUE):
        return a->int_value == b->int_value;
    case AM_PB_VALUE(DOUBLE_VALUE):
        return a->double_value == b->double_value;
    default:
        return true;
    }
}

static void check_same_span(const am_pb_span_t *a, const am_pb_span_t *b)
{
    assert_int_equal(a->n_attributes, b->n_attributes);
    for (size_t i = 0; i < a->n_attributes; i++) {
        assert_string_equal(a->attributes[i]->key, b->attributes[i]->key);
        assert_true(same_value(a->attributes[i]->value, b->attributes[i]->value));
    }
}

/* Every read on (span, resource) in scope equals the read on the copies
 * (plain, b_span, b_res) out of scope; then a random write on both. */
static void compare_reads(am_pb_span_t *span, am_pb_resource_t *res, am_pb_span_t *b_span,
                          am_pb_resource_t *b_res, unsigned *st)
{
    /* a scope on another span of the same resource, replaced without an end:
     * the resource's index is kept */
    am_attr_scope_begin(b_span, NULL, res);
    for (int k = 0; k < 4; k++) {
        am_attr_find(res->attributes, res->n_attributes, pool[k]);
    }
    am_attr_scope_begin(span, NULL, res);
    for (size_t q = 0; q < N_POOL + 2; q++) {
        const char *key = q < N_POOL ? pool[q] : (q == N_POOL ? "absent.key" : "");
        const am_pb_anyvalue_t *in = am_attr_find(span->attributes, span->n_attributes, key);
        const am_pb_anyvalue_t *in_r = am_attr_find(res->attributes, res->n_attributes, key);
        const am_pb_anyvalue_t *out = am_attr_find(b_span->attributes, b_span->n_attributes, key);
        const am_pb_anyvalue_t *out_r = am_attr_find(b_res->attributes, b_res->n_attributes, key);
        assert_true(same_value(in, out));
        assert_true(same_value(in_r, out_r));
    }
    am_attr_scope_end();
    const char *keys[4];
    for (int i = 0; i < 3; i++) {
        keys[i] = pool[rnd(st) % N_POOL];
    }
    keys[3] = NULL;
    am_attr_scope_begin(span, NULL, res);
    /* several lookups, so the index is built (it is lazy) */
    const char *s_in = am_attr_first_str(span, res, keys);
    s_in = am_attr_first_str(span, res, keys);
    int64_t i_in = -1;
    bool has_in = am_attr_first_int(span, res, keys, &i_in);
    double d_in = -1;
    bool hasd_in = am_attr_get_double(span->attributes, span->n_attributes, keys[0], &d_in);
    am_attr_scope_end();
    const char *s_out = am_attr_first_str(b_span, b_res, keys);
    int64_t i_out = -1;
    bool has_out = am_attr_first_int(b_span, b_res, keys, &i_out);
    double d_out = -1;
    bool hasd_out = am_attr_get_double(b_span->attributes, b_span->n_attributes, keys[0], &d_out);
    assert_true((s_in == NULL) == (s_out == NULL));
    if (s_in != NULL) {
        assert_string_equal(s_in, s_out);
    }
    assert_int_equal(has_in, has_out);
    assert_int_equal(i_in, i_out);
    assert_int_equal(hasd_in, hasd_out);
    assert_true(d_in == d_out);
}

static void test_scope_matches_scan(void **state)
{
    (void)state;
    unsigned st = 12345;
    for (int round = 0; round < 400; round++) {
        am_arena_t *arena = am_arena_new(4096);
        size_t n = rnd(&st) % 40;
        size_t nr = rnd(&st) % 12;
        unsigned seed = st;
        am_pb_span_t span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
        am_pb_resource_t res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
        span.attributes = random_attrs(arena, n, &st);
        span.n_attributes = n;
        res.attributes = random_attrs(arena, nr, &st);
        res.n_attributes = nr;
        /* the same attributes again, independent copies */
        unsigned st2 = seed;
        am_pb_span_t b_span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
        am_pb_resource_t b_res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
        b_span.attributes = random_attrs(arena, n, &st2);
        b_span.n_attributes = n;
        b_res.attributes = random_attrs(arena, nr, &st2);
        b_res.n_attributes = nr;
        check_same_span(&span, &b_span);

        compare_reads(&span, &res, &b_span, &b_res, &st);
        /* writes in a scope (in-place growth, index updates) and out of it */
        am_attr_scope_begin(&span, NULL, &res);
        for (int w = 0; w < 24; w++) {
            const char *key = pool[rnd(&st) % N_POOL];
            int64_t value = rnd(&st);
            const am_pb_anyvalue_t *before = am_attr_find(span.attributes, span.n_attributes, key);
            (void)before;
            assert_int_equal(am_span_set_int(arena, &span, key, value), 0);
            assert_int_equal(am_span_set_int(arena, &b_span, key, value), 0);
            int64_t got = -1;
            assert_true(am_attr_get_int(span.attributes, span.n_attributes, key, &got));
            assert_int_equal(got, value);
            if (w % 5 == 0) {
                assert_int_equal(am_span_set_str(arena, &span, "new.key", "x"), 0);
                assert_int_equal(am_span_set_str(arena, &b_span, "new.key", "x"), 0);
            }
        }
        am_attr_scope_end();
        check_same_span(&span, &b_span);
        compare_reads(&span, &res, &b_span, &b_res, &st);
        am_arena_unref(arena);
    }
}

/* A scope that ends leaves nothing behind: a later array at any address is
 * read afresh. */
static void test_scope_end_forgets(void **state)
{
    (void)state;
    unsigned st = 7;
    for (int round = 0; round < 50; round++) {
        am_arena_t *arena = am_arena_new(4096);
        am_pb_span_t span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
        span.attributes = random_attrs(arena, 10, &st);
        span.n_attributes = 10;
        am_attr_scope_begin(&span, NULL, NULL);
        for (size_t q = 0; q < N_POOL; q++) {
            am_attr_find(span.attributes, span.n_attributes, pool[q]);
        }
        am_attr_scope_end();
        /* same array, keys changed in place (as a reused allocation would) */
        for (size_t i = 0; i < span.n_attributes; i++) {
            span.attributes[i]->key = (char *)"replaced.key";
        }
        am_attr_scope_begin(&span, NULL, NULL);
        for (int k = 0; k < 3; k++) {
            assert_non_null(am_attr_find(span.attributes, span.n_attributes, "replaced.key"));
            assert_null(am_attr_find(span.attributes, span.n_attributes, "session.id"));
        }
        am_attr_scope_end();
        am_arena_unref(arena);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scope_matches_scan),
        cmocka_unit_test(test_scope_end_forgets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
