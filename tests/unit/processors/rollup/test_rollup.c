/*
 * rollup: cost.subtree on every span and cost.trace.total on one root per
 * trace, exact.  A hand-computed agent trace; orphans (their subtrees count
 * in the total carried by the true root); a trace whose root never came; a
 * property test over random trees totalling 10^5 spans (chains, stars,
 * random and binary shapes, orphans, children sent before parents across
 * many requests) where every figure is recomputed independently in int64.
 */
#include "processors/tracetree/span_builder.h"

#include "am_log.h"
#include "processors/tracetree/tracetree_internal.h"

extern const am_component_ops_t am_processor_tracetree_ops;
extern const am_component_ops_t am_processor_rollup_ops;
#define TT (&am_processor_tracetree_ops)
#define ROLLUP (&am_processor_rollup_ops)

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

/* Trees from the real tracetree: feed every request, flush at shutdown. */
static void build_trees(am_batch_t **requests, size_t n_requests, sb_capture_t *out)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tracetree_config_t cfg = {
        .wait_ms = 2000, .max_wait_ms = 30000, .max_traces = 1000000, .late_cache = 1000};
    am_create_params_t params = {
        .id = "tracetree", .config = &cfg, .loop = &loop, .next = &out->consumer, .n_shards = 1};
    void *tt = NULL;
    assert_int_equal(TT->create(&params, &tt), 0);
    tracetree__set_clock(tt, fake_clock);
    assert_int_equal(TT->start(tt), 0);
    for (size_t i = 0; i < n_requests; i++) {
        assert_int_equal(TT->consume(tt, requests[i]), AM_OK);
        am_batch_unref(requests[i]);
    }
    TT->shutdown(tt);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    TT->destroy(tt);
    assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct roller {
    sb_capture_t cap;
    void *rollup;
} roller_t;

static void roller_open(roller_t *r)
{
    sb_capture_init(&r->cap);
    int no_options = 0;
    am_create_params_t params = {
        .id = "rollup", .config = &no_options, .next = &r->cap.consumer, .n_shards = 1};
    assert_int_equal(ROLLUP->create(&params, &r->rollup), 0);
}

static void roller_close(roller_t *r)
{
    ROLLUP->destroy(r->rollup);
    sb_capture_free(&r->cap);
}

static bool double_attr(const am_pb_span_t *span, const char *key, double *out)
{
    const am_pb_anyvalue_t *v = am_attr_find(span->attributes, span->n_attributes, key);
    if (v == NULL || v->value_case != AM_PB_VALUE(DOUBLE_VALUE)) {
        return false;
    }
    *out = v->double_value;
    return true;
}

static void assert_money_attr(const am_pb_span_t *span, const char *key, am_money_t expected)
{
    double value;
    assert_true(double_attr(span, key, &value));
    /* Bit-exact: the double is the conversion of the exact sum. */
    assert_true(value == am_money_to_double(expected));
}

#define USD(x) ((am_money_t)((x)*1e9 + 0.5))

static void test_hand_computed_agent_trace(void **state)
{
    (void)state;
    /* invoke_agent(1) -> chat(2) 0.0125, execute_tool(3) 0.01,
     *                    invoke_agent(4) -> chat(5) 0.003, chat(6) 0.0004
     * invoke_agent spans carry no cost of their own (not double counted). */
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 6, 4, "chat", NULL);
    sb_span(&b, 1, 5, 4, "chat", NULL);
    sb_span(&b, 1, 4, 1, "invoke_agent", NULL);
    sb_span(&b, 1, 3, 1, "execute_tool", NULL);
    sb_span(&b, 1, 2, 1, "chat", NULL);
    sb_span(&b, 1, 1, 0, "invoke_agent", NULL);
    am_batch_t *req = sb_finish(&b);
    sb_capture_t trees;
    sb_capture_init(&trees);
    build_trees(&req, 1, &trees);
    static const am_money_t self[7] = {0, 0, 12500000, 10000000, 0, 3000000, 400000};
    am_trace_t *trace = &trees.batches[0]->trace_index[0];
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        trace->spans[i].cost_self = self[sb_span_no(trace->spans[i].span)];
    }
    roller_t r;
    roller_open(&r);
    assert_int_equal(ROLLUP->consume(r.rollup, trees.batches[0]), AM_OK);
    assert_int_equal(r.cap.n, 1);
    static const am_money_t subtree[7] = {0,       25900000, 12500000, 10000000,
                                          3400000, 3000000,  400000};
    for (uint64_t s = 1; s <= 6; s++) {
        sb_found_t found = sb_find(&trees, 1, s);
        assert_int_equal(found.ref->cost_subtree, subtree[s]);
        assert_money_attr(found.ref->span, "cost.subtree", subtree[s]);
        double total;
        assert_true(double_attr(found.ref->span, "cost.trace.total", &total) == (s == 1));
    }
    assert_money_attr(sb_find(&trees, 1, 1).ref->span, "cost.trace.total", USD(0.0259));
    roller_close(&r);
    sb_capture_free(&trees);
}

static void test_orphans_count_in_the_total(void **state)
{
    (void)state;
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 2, 1, 0, "root", NULL);
    sb_span(&b, 2, 2, 1, "chat", NULL);
    sb_span(&b, 2, 3, 99, "orphan chat", NULL);
    sb_span(&b, 2, 4, 3, "orphan's child", NULL);
    /* Trace 3: the root never came. */
    sb_span(&b, 3, 2, 1, "chat", NULL);
    sb_span(&b, 3, 3, 1, "chat", NULL);
    am_batch_t *req = sb_finish(&b);
    sb_capture_t trees;
    sb_capture_init(&trees);
    build_trees(&req, 1, &trees);
    roller_t r;
    roller_open(&r);
    for (size_t i = 0; i < trees.n; i++) {
        am_batch_t *batch = trees.batches[i];
        for (size_t t = 0; t < batch->n_traces; t++) {
            for (uint32_t s = 0; s < batch->trace_index[t].n_spans; s++) {
                am_span_ref_t *ref = &batch->trace_index[t].spans[s];
                ref->cost_self = (am_money_t)sb_span_no(ref->span) * 1000000001;
            }
        }
        assert_int_equal(ROLLUP->consume(r.rollup, batch), AM_OK);
    }
    /* Trace 2: total on the true root covers the orphan subtree too. */
    assert_money_attr(sb_find(&trees, 2, 1).ref->span, "cost.trace.total", 10 * 1000000001LL);
    assert_money_attr(sb_find(&trees, 2, 1).ref->span, "cost.subtree", 3 * 1000000001LL);
    assert_money_attr(sb_find(&trees, 2, 3).ref->span, "cost.subtree", 7 * 1000000001LL);
    double ignored;
    assert_false(double_attr(sb_find(&trees, 2, 3).ref->span, "cost.trace.total", &ignored));
    /* Trace 3: no true root; the first orphan carries the total. */
    sb_found_t first = sb_find(&trees, 3, 2);
    assert_int_equal(first.trace->roots[0], first.index);
    assert_money_attr(first.ref->span, "cost.trace.total", 5 * 1000000001LL);
    assert_false(double_attr(sb_find(&trees, 3, 3).ref->span, "cost.trace.total", &ignored));
    roller_close(&r);
    sb_capture_free(&trees);
}

static void test_batch_without_index_passes(void **state)
{
    (void)state;
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 1, 0, "root", NULL);
    am_batch_t *batch = sb_finish(&b);
    roller_t r;
    roller_open(&r);
    assert_int_equal(ROLLUP->consume(r.rollup, batch), AM_OK);
    assert_int_equal(r.cap.n, 1);
    assert_int_equal(batch->traces->resource_spans[0]->scope_spans[0]->spans[0]->n_attributes, 0);
    am_batch_unref(batch);
    roller_close(&r);
}

/* ---- property test ----------------------------------------------------- */

static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

typedef struct gen_trace {
    uint32_t n;
    uint64_t *parent;    /* [1..n]: 0 root, > n a parent that never arrives */
    am_money_t *cost;    /* [1..n] */
    am_money_t *subtree; /* [1..n], computed independently */
    am_money_t total;
} gen_trace_t;

#define TOTAL_SPANS 100000
#define MISSING_PARENT 5000000u

static void generate(gen_trace_t *g, uint32_t n, int shape)
{
    g->n = n;
    g->parent = calloc(n + 1, sizeof(*g->parent));
    g->cost = calloc(n + 1, sizeof(*g->cost));
    g->subtree = calloc(n + 1, sizeof(*g->subtree));
    for (uint32_t i = 1; i <= n; i++) {
        uint64_t parent;
        switch (i == 1 ? -1 : shape) {
        case -1:
            parent = 0;
            break;
        case 0: /* chain */
            parent = i - 1;
            break;
        case 1: /* star */
            parent = 1;
            break;
        case 2: /* random recursive tree */
            parent = 1 + rng() % (i - 1);
            break;
        default: /* binary heap shape */
            parent = i / 2;
            break;
        }
        if (i > 1 && rng() % 100 == 0) {
            parent = MISSING_PARENT + i; /* an orphan subtree */
        }
        g->parent[i] = parent;
        switch (rng() % 4) {
        case 0:
            g->cost[i] = 0;
            break;
        case 1:
            g->cost[i] = (am_money_t)(rng() % 1000); /* sub-micro amounts */
            break;
        default:
            g->cost[i] = (am_money_t)(rng() % UINT64_C(50000000000)); /* up to 50.00 */
            break;
        }
    }
    /* Independent bottom-up: parents have smaller numbers. */
    for (uint32_t i = 1; i <= n; i++) {
        g->subtree[i] = g->cost[i];
    }
    g->total = 0;
    for (uint32_t i = n; i >= 1; i--) {
        g->total += g->cost[i];
        if (g->parent[i] != 0 && g->parent[i] <= n) {
            g->subtree[g->parent[i]] += g->subtree[i];
        }
    }
}

static void test_property_random_trees(void **state)
{
    (void)state;
    gen_trace_t *traces = calloc(TOTAL_SPANS, sizeof(*traces));
    uint32_t n_traces = 0, spans = 0;
    static const uint32_t deep[] = {20000, 12000}; /* two deep chains */
    while (spans < TOTAL_SPANS) {
        uint32_t n;
        int shape;
        if (n_traces < AM_ARRAY_SIZE(deep)) {
            n = deep[n_traces];
            shape = 0;
        } else {
            n = 1 + (uint32_t)(rng() % (rng() % 4 == 0 ? 3000 : 60));
            shape = (int)(rng() % 4);
        }
        n = AM_MIN(n, TOTAL_SPANS - spans);
        generate(&traces[n_traces], n, shape);
        spans += n;
        n_traces++;
    }
    assert_int_equal(spans, TOTAL_SPANS);

    /* Every span, in a random order, spread over 25 requests. */
    typedef struct pick {
        uint32_t trace, span;
    } pick_t;
    pick_t *order = malloc(TOTAL_SPANS * sizeof(*order));
    uint32_t k = 0;
    for (uint32_t t = 0; t < n_traces; t++) {
        for (uint32_t s = 1; s <= traces[t].n; s++) {
            order[k++] = (pick_t){t, s};
        }
    }
    for (uint32_t i = TOTAL_SPANS - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rng() % (i + 1));
        pick_t tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    enum { N_REQUESTS = 25 };
    am_batch_t *requests[N_REQUESTS];
    for (uint32_t r = 0; r < N_REQUESTS; r++) {
        sb_req_t b;
        sb_begin(&b);
        for (uint32_t i = r; i < TOTAL_SPANS; i += N_REQUESTS) {
            const gen_trace_t *g = &traces[order[i].trace];
            sb_span(&b, order[i].trace + 1, order[i].span, g->parent[order[i].span], "span", NULL);
        }
        requests[r] = sb_finish(&b);
    }
    free(order);

    sb_capture_t trees;
    sb_capture_init(&trees);
    build_trees(requests, N_REQUESTS, &trees);
    assert_int_equal(sb_capture_spans(&trees), TOTAL_SPANS);
    assert_int_equal(sb_capture_traces(&trees), n_traces);

    /* Play ratecard: exact cost_self on each ref. */
    for (size_t i = 0; i < trees.n; i++) {
        am_batch_t *batch = trees.batches[i];
        for (size_t t = 0; t < batch->n_traces; t++) {
            am_trace_t *trace = &batch->trace_index[t];
            uint32_t trace_no = (uint32_t)trace->trace_id[14] << 8 | trace->trace_id[15];
            trace_no |= (uint32_t)trace->trace_id[12] << 24 | (uint32_t)trace->trace_id[13] << 16;
            for (uint32_t s = 0; s < trace->n_spans; s++) {
                trace->spans[s].cost_self =
                    traces[trace_no - 1].cost[sb_span_no(trace->spans[s].span)];
            }
        }
    }
    roller_t r;
    roller_open(&r);
    for (size_t i = 0; i < trees.n; i++) {
        assert_int_equal(ROLLUP->consume(r.rollup, trees.batches[i]), AM_OK);
    }
    assert_int_equal(r.cap.n, trees.n);

    uint32_t checked = 0, totals = 0;
    for (size_t i = 0; i < trees.n; i++) {
        am_batch_t *batch = trees.batches[i];
        for (size_t t = 0; t < batch->n_traces; t++) {
            am_trace_t *trace = &batch->trace_index[t];
            uint32_t trace_no = (uint32_t)trace->trace_id[12] << 24 |
                                (uint32_t)trace->trace_id[13] << 16 |
                                (uint32_t)trace->trace_id[14] << 8 | trace->trace_id[15];
            const gen_trace_t *g = &traces[trace_no - 1];
            assert_int_equal(trace->n_spans, g->n);
            for (uint32_t s = 0; s < trace->n_spans; s++) {
                am_span_ref_t *ref = &trace->spans[s];
                uint64_t span_no = sb_span_no(ref->span);
                assert_int_equal(ref->cost_subtree, g->subtree[span_no]);
                assert_money_attr(ref->span, "cost.subtree", g->subtree[span_no]);
                double total;
                bool has_total = double_attr(ref->span, "cost.trace.total", &total);
                assert_true(has_total == (s == trace->roots[0]));
                if (has_total) {
                    assert_true(total == am_money_to_double(g->total));
                    totals++;
                }
                if (g->parent[span_no] == 0) {
                    assert_int_equal(s, trace->roots[0]); /* the true root leads */
                }
                checked++;
            }
        }
    }
    assert_int_equal(checked, TOTAL_SPANS);
    assert_int_equal(totals, n_traces);

    roller_close(&r);
    sb_capture_free(&trees);
    for (uint32_t t = 0; t < n_traces; t++) {
        free(traces[t].parent);
        free(traces[t].cost);
        free(traces[t].subtree);
    }
    free(traces);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_computed_agent_trace),
        cmocka_unit_test(test_orphans_count_in_the_total),
        cmocka_unit_test(test_batch_without_index_passes),
        cmocka_unit_test(test_property_random_trees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
