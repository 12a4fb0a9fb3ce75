/*
 * tracetree: spans arriving over several requests, children first, come out
 * once as one whole tree; wait and max_wait decide when; orphans, late spans,
 * duplicates and parent cycles are kept, flagged and never lost; max_traces
 * forces the oldest trace out and counts it; shutdown flushes everything and
 * lets the loop end; a refusing next consumer gets the batch again later.
 *
 * Time is driven by an injected clock and tracetree__tick(): no sleeps.
 */
#include "processors/tracetree/span_builder.h"

#include "am_log.h"
#include "am_options.h"
#include "am_selfmetrics.h"
#include "processors/tracetree/tracetree_internal.h"

extern const am_component_ops_t am_processor_tracetree_ops;
extern const am_component_ops_t am_processor_rollup_ops;
#define OPS (&am_processor_tracetree_ops)

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

typedef struct fixture {
    uv_loop_t loop;
    sb_capture_t cap;
    tracetree_config_t cfg;
    void *tt;
} fixture_t;

static void tt_open_shards(fixture_t *f, int64_t wait_ms, int64_t max_wait_ms, int64_t max_traces,
                           int n_shards)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    sb_capture_init(&f->cap);
    f->cfg = (tracetree_config_t){
        .wait_ms = wait_ms,
        .max_wait_ms = max_wait_ms,
        .max_traces = max_traces,
        .late_cache = 1000,
    };
    am_create_params_t params = {
        .id = "tracetree",
        .config = &f->cfg,
        .loop = &f->loop,
        .next = &f->cap.consumer,
        .signal = AM_SIGNAL_TRACES,
        .shard = 0,
        .n_shards = n_shards,
    };
    assert_int_equal(OPS->create(&params, &f->tt), 0);
    tracetree__set_clock(f->tt, fake_clock);
    assert_int_equal(OPS->start(f->tt), 0);
    fake_now = 1000000;
}

static void tt_open(fixture_t *f, int64_t wait_ms, int64_t max_wait_ms, int64_t max_traces)
{
    tt_open_shards(f, wait_ms, max_wait_ms, max_traces, 1);
}

/* Shutdown (flushes), let the loop close the timer, destroy. */
static void tt_shutdown(fixture_t *f)
{
    OPS->shutdown(f->tt);
    OPS->shutdown(f->tt); /* idempotent */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    OPS->destroy(f->tt);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void tt_close(fixture_t *f)
{
    tt_shutdown(f);
    sb_capture_free(&f->cap);
}

static am_status_t feed(fixture_t *f, am_batch_t *batch)
{
    am_status_t status = OPS->consume(f->tt, batch);
    am_batch_unref(batch);
    return status;
}

static void tick(fixture_t *f, uint64_t now)
{
    fake_now = now;
    tracetree__tick(f->tt, now);
}

static uint64_t counter(const char *name)
{
    return am_counter_get(am_selfmetrics_counter(name, "", "processor=\"tracetree\""));
}

static int64_t traces_gauge(void)
{
    am_gauge_t *g =
        am_selfmetrics_gauge("agentmeter_tracetree_traces", "", "processor=\"tracetree\"");
    return atomic_load(&g->value);
}

/* Count spans reachable from the roots by following first_child /
 * next_sibling (iteratively), to prove the index is a forest covering
 * every span. */
static uint32_t reachable(const am_trace_t *trace)
{
    uint32_t *stack = malloc((trace->n_spans + 1) * sizeof(*stack));
    uint32_t depth = 0, seen = 0;
    for (uint32_t r = 0; r < trace->n_roots; r++) {
        stack[depth++] = trace->roots[r];
        while (depth > 0) {
            uint32_t node = stack[--depth];
            seen++;
            assert_true(seen <= trace->n_spans);
            for (uint32_t c = trace->spans[node].first_child; c != AM_SPAN_NONE;
                 c = trace->spans[c].next_sibling) {
                assert_int_equal(trace->spans[c].parent, node);
                stack[depth++] = c;
            }
        }
    }
    free(stack);
    return seen;
}

static void test_three_requests_children_first(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    int64_t gauge0 = traces_gauge();
    uint64_t t0 = fake_now;
    sb_req_t b;

    sb_begin(&b);
    sb_resource(&b, "service.name", "agent", NULL);
    sb_span(&b, 1, 3, 2, "chat gpt-4o", NULL);
    sb_span(&b, 1, 4, 2, "execute_tool search", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    assert_int_equal(traces_gauge() - gauge0, 1);

    fake_now = t0 + 400;
    sb_begin(&b);
    sb_span(&b, 1, 2, 1, "invoke_agent planner", NULL);
    sb_span(&b, 1, 5, 1, "chat claude", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tick(&f, t0 + 900);

    fake_now = t0 + 1000;
    sb_begin(&b);
    sb_span(&b, 1, 1, 0, "invoke_agent root", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    assert_int_equal(f.cap.n, 0);
    assert_int_equal(tracetree__buffered_spans(f.tt), 5);

    tick(&f, t0 + 2999); /* root came at +1000: wait ends at +3000 */
    assert_int_equal(f.cap.n, 0);
    tick(&f, t0 + 3000);
    assert_int_equal(f.cap.n, 1);
    assert_int_equal(traces_gauge() - gauge0, 0);
    am_batch_t *out = f.cap.batches[0];
    assert_int_equal(out->n_traces, 1);
    am_trace_t *trace = &out->trace_index[0];
    assert_int_equal(trace->n_spans, 5);
    assert_int_equal(trace->n_roots, 1);
    assert_int_equal(trace->flags, 0);
    assert_int_equal(trace->first_seen_ms, t0);
    assert_int_equal(sb_span_no(trace->spans[trace->roots[0]].span), 1);
    assert_int_equal(reachable(trace), 5);
    /* The OTLP view holds the same five spans. */
    assert_int_equal(out->span_count, 5);
    assert_int_equal(am_batch_count_spans(out), 5);

    assert_int_equal(sb_parent_no(sb_find(&f.cap, 1, 1)), 0);
    assert_int_equal(sb_parent_no(sb_find(&f.cap, 1, 2)), 1);
    assert_int_equal(sb_parent_no(sb_find(&f.cap, 1, 3)), 2);
    assert_int_equal(sb_parent_no(sb_find(&f.cap, 1, 4)), 2);
    assert_int_equal(sb_parent_no(sb_find(&f.cap, 1, 5)), 1);
    /* Children in arrival order: 2 then 5 under the root, 3 then 4 under 2. */
    sb_found_t root = sb_find(&f.cap, 1, 1);
    uint32_t first = root.ref->first_child;
    assert_int_equal(sb_span_no(trace->spans[first].span), 2);
    assert_int_equal(sb_span_no(trace->spans[trace->spans[first].next_sibling].span), 5);
    sb_found_t planner = sb_find(&f.cap, 1, 2);
    assert_int_equal(sb_span_no(trace->spans[planner.ref->first_child].span), 3);
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        assert_int_equal(trace->spans[i].flags, 0);
        assert_null(am_attr_find(trace->spans[i].span->attributes,
                                 trace->spans[i].span->n_attributes, "cost.orphan"));
        assert_non_null(trace->spans[i].resource);
    }

    /* Emitted once: nothing more later, nothing more at shutdown. */
    tick(&f, t0 + 100000);
    tt_shutdown(&f);
    assert_int_equal(f.cap.n, 1);
    assert_int_equal(sb_capture_spans(&f.cap), 5);
    sb_capture_free(&f.cap);
}

static void test_wait_vs_max_wait(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    uint64_t orphans0 = counter("agentmeter_tracetree_orphan_spans_total");
    uint64_t t0 = fake_now;
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 1, 0, "root of a quiet trace", NULL);
    sb_span(&b, 2, 10, 99, "child whose parent never comes", NULL);
    sb_span(&b, 3, 20, 0, "root of a busy trace", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);

    /* Trace 3 keeps getting a span every 1.5 s (less than wait). */
    uint64_t span_no = 21;
    for (uint64_t t = t0 + 1500; t < t0 + 30000; t += 1500) {
        fake_now = t;
        sb_begin(&b);
        sb_span(&b, 3, span_no, 20, "busy child", NULL);
        span_no++;
        assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
        tick(&f, t);
    }
    /* Only the quiet trace went out (wait); the rootless and the busy trace
     * wait for max_wait. */
    assert_int_equal(sb_capture_traces(&f.cap), 1);
    assert_non_null(sb_find(&f.cap, 1, 1).ref);
    assert_null(sb_find(&f.cap, 2, 10).ref);

    tick(&f, t0 + 29999);
    assert_int_equal(sb_capture_traces(&f.cap), 1);
    tick(&f, t0 + 30000);
    assert_int_equal(sb_capture_traces(&f.cap), 3);
    sb_found_t busy = sb_find(&f.cap, 3, 20);
    assert_non_null(busy.ref);
    assert_int_equal(busy.trace->n_spans, span_no - 20);
    assert_int_equal(reachable(busy.trace), busy.trace->n_spans);

    sb_found_t orphan = sb_find(&f.cap, 2, 10);
    assert_non_null(orphan.ref);
    assert_true(orphan.ref->flags & AM_SPANREF_ORPHAN);
    assert_true(sb_bool_attr(orphan.ref->span, "cost.orphan"));
    assert_int_equal(orphan.trace->n_roots, 1);
    assert_int_equal(counter("agentmeter_tracetree_orphan_spans_total") - orphans0, 1);
    tt_close(&f);
}

static void test_orphans_kept_and_listed_after_true_roots(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 7, 3, 77, "orphan A", NULL);
    sb_span(&b, 7, 4, 3, "child of orphan A", NULL);
    sb_span(&b, 7, 1, 0, "root", NULL);
    sb_span(&b, 7, 2, 1, "child", NULL);
    sb_span(&b, 7, 5, 88, "orphan B", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tick(&f, fake_now + 2000);
    assert_int_equal(f.cap.n, 1);
    am_trace_t *trace = &f.cap.batches[0]->trace_index[0];
    assert_int_equal(trace->n_spans, 5);
    assert_int_equal(trace->n_roots, 3);
    assert_int_equal(sb_span_no(trace->spans[trace->roots[0]].span), 1);
    assert_int_equal(sb_span_no(trace->spans[trace->roots[1]].span), 3);
    assert_int_equal(sb_span_no(trace->spans[trace->roots[2]].span), 5);
    assert_int_equal(reachable(trace), 5);
    assert_true(sb_bool_attr(sb_find(&f.cap, 7, 3).ref->span, "cost.orphan"));
    assert_true(sb_bool_attr(sb_find(&f.cap, 7, 5).ref->span, "cost.orphan"));
    assert_false(sb_bool_attr(sb_find(&f.cap, 7, 1).ref->span, "cost.orphan"));
    assert_false(sb_bool_attr(sb_find(&f.cap, 7, 4).ref->span, "cost.orphan"));
    assert_int_equal(sb_parent_no(sb_find(&f.cap, 7, 4)), 3);
    assert_int_equal(sb_find(&f.cap, 7, 4).ref->flags, 0);
    tt_close(&f);
}

static void test_late_spans_emitted_at_once(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    uint64_t late0 = counter("agentmeter_tracetree_late_spans_total");
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 5, 1, 0, "root", NULL);
    sb_span(&b, 5, 2, 1, "child", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tick(&f, fake_now + 2000);
    assert_int_equal(f.cap.n, 1);

    /* Two late spans, one the child of the other, in one request. */
    fake_now += 10000;
    sb_begin(&b);
    sb_span(&b, 5, 3, 2, "late child of 2", NULL);
    sb_span(&b, 5, 4, 3, "late grandchild", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    assert_int_equal(f.cap.n, 2); /* right away, not on a tick */
    assert_int_equal(counter("agentmeter_tracetree_late_spans_total") - late0, 2);
    am_trace_t *late = &f.cap.batches[1]->trace_index[0];
    assert_int_equal(late->flags, AM_SPANREF_LATE);
    assert_int_equal(late->n_spans, 2);
    assert_int_equal(late->n_roots, 1);
    sb_found_t three = sb_find(&f.cap, 5, 3);
    assert_ptr_equal(three.trace, late);
    assert_int_equal(three.ref->flags, AM_SPANREF_LATE | AM_SPANREF_ORPHAN);
    assert_true(sb_bool_attr(three.ref->span, "cost.orphan"));
    sb_found_t four = sb_find(&f.cap, 5, 4);
    assert_int_equal(four.ref->flags, AM_SPANREF_LATE);
    assert_int_equal(sb_parent_no(four), 3);
    assert_int_equal(tracetree__buffered_traces(f.tt), 0);
    tt_close(&f);
}

static void test_max_traces_forces_oldest(void **state)
{
    (void)state;
    fixture_t f;
    /* 4 per process over 2 shards: this shard holds 2. */
    tt_open_shards(&f, 2000, 30000, 4, 2);
    uint64_t forced0 = counter("agentmeter_tracetree_forced_total");
    for (uint32_t trace_no = 1; trace_no <= 3; trace_no++) {
        fake_now += 10;
        sb_req_t b;
        sb_begin(&b);
        sb_span(&b, trace_no, 1, 0, "root", NULL);
        sb_span(&b, trace_no, 2, 1, "child", NULL);
        assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    }
    assert_int_equal(sb_capture_traces(&f.cap), 1);
    assert_non_null(sb_find(&f.cap, 1, 2).ref);
    assert_int_equal(sb_find(&f.cap, 1, 2).trace->n_spans, 2);
    assert_int_equal(counter("agentmeter_tracetree_forced_total") - forced0, 1);
    assert_int_equal(tracetree__buffered_traces(f.tt), 2);
    tt_shutdown(&f);
    assert_int_equal(sb_capture_traces(&f.cap), 3);
    assert_int_equal(sb_capture_spans(&f.cap), 6);
    assert_int_equal(counter("agentmeter_tracetree_forced_total") - forced0, 1);
    sb_capture_free(&f.cap);
}

static void test_shutdown_flushes_everything(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    int64_t gauge0 = traces_gauge();
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 1, 0, "root", NULL);
    sb_span(&b, 2, 5, 4, "rootless", NULL);
    sb_span(&b, 3, 1, 0, "root", NULL);
    sb_span(&b, 3, 2, 1, "child", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    assert_int_equal(traces_gauge() - gauge0, 3);
    assert_int_equal(f.cap.n, 0);
    tt_shutdown(&f);
    assert_int_equal(sb_capture_traces(&f.cap), 3);
    assert_int_equal(sb_capture_spans(&f.cap), 4);
    assert_int_equal(traces_gauge() - gauge0, 0);
    assert_true(sb_find(&f.cap, 2, 5).ref->flags & AM_SPANREF_ORPHAN);
    sb_capture_free(&f.cap);
}

static void test_parent_cycles_broken(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 9, 1, 0, "root", NULL);
    sb_span(&b, 9, 2, 3, "A (parent B)", NULL);
    sb_span(&b, 9, 3, 2, "B (parent A)", NULL);
    sb_span(&b, 9, 4, 2, "C (parent A)", NULL);
    sb_span(&b, 9, 5, 5, "its own parent", NULL);
    sb_span(&b, 9, 6, 8, "X (parent Z)", NULL);
    sb_span(&b, 9, 7, 6, "Y (parent X)", NULL);
    sb_span(&b, 9, 8, 7, "Z (parent Y)", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tick(&f, fake_now + 2000);
    assert_int_equal(f.cap.n, 1);
    am_batch_t *out = f.cap.batches[0];
    am_trace_t *trace = &out->trace_index[0];
    assert_int_equal(trace->n_spans, 8);
    assert_int_equal(reachable(trace), 8);
    /* Root, then one orphan per cycle plus the self-parented span. */
    assert_int_equal(trace->n_roots, 4);
    assert_int_equal(sb_span_no(trace->spans[trace->roots[0]].span), 1);
    uint32_t orphans = 0;
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        if (trace->spans[i].flags & AM_SPANREF_ORPHAN) {
            orphans++;
            assert_true(sb_bool_attr(trace->spans[i].span, "cost.orphan"));
            assert_int_equal(trace->spans[i].parent, AM_SPAN_NONE);
        }
    }
    assert_int_equal(orphans, 3);
    assert_int_equal(sb_parent_no(sb_find(&f.cap, 9, 4)), 2);

    /* rollup over the result terminates and sums every span once. */
    sb_capture_t rolled;
    sb_capture_init(&rolled);
    void *rollup = NULL;
    am_create_params_t params = {.id = "rollup", .next = &rolled.consumer, .n_shards = 1};
    int dummy = 0;
    params.config = &dummy;
    assert_int_equal(am_processor_rollup_ops.create(&params, &rollup), 0);
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        trace->spans[i].cost_self = (am_money_t)(i + 1) * 1000;
    }
    assert_int_equal(am_processor_rollup_ops.consume(rollup, out), AM_OK);
    const am_pb_anyvalue_t *total =
        am_attr_find(trace->spans[trace->roots[0]].span->attributes,
                     trace->spans[trace->roots[0]].span->n_attributes, "cost.trace.total");
    assert_non_null(total);
    assert_true(total->double_value == am_money_to_double(36000));
    am_processor_rollup_ops.destroy(rollup);
    sb_capture_free(&rolled);
    tt_close(&f);
}

static void test_duplicate_span_ids_kept(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 4, 1, 0, "root", NULL);
    sb_span(&b, 4, 2, 1, "first 2", NULL);
    sb_span(&b, 4, 3, 2, "child of 2", NULL);
    sb_span(&b, 4, 2, 1, "second 2", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tick(&f, fake_now + 2000);
    am_trace_t *trace = &f.cap.batches[0]->trace_index[0];
    assert_int_equal(trace->n_spans, 4);
    assert_int_equal(trace->n_roots, 1);
    assert_int_equal(reachable(trace), 4);
    sb_found_t child = sb_find(&f.cap, 4, 3);
    assert_string_equal(child.trace->spans[child.ref->parent].span->name, "first 2");
    uint32_t twos = 0;
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        if (sb_span_no(trace->spans[i].span) == 2) {
            twos++;
            assert_int_equal(sb_parent_no((sb_found_t){.trace = trace, .ref = &trace->spans[i]}),
                             1);
        }
    }
    assert_int_equal(twos, 2);
    tt_close(&f);
}

static void test_output_batches_are_bounded(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 100000);
    sb_req_t b;
    sb_begin(&b);
    for (uint32_t trace_no = 1; trace_no <= 5000; trace_no++) {
        sb_span(&b, trace_no, 1, 0, "root", NULL);
    }
    /* One chain of 5000 spans travels alone, whole. */
    for (uint64_t s = 1; s <= 5000; s++) {
        sb_span(&b, 9999, s, s - 1, "link", NULL);
    }
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tick(&f, fake_now + 2000);
    assert_int_equal(sb_capture_traces(&f.cap), 5001);
    assert_int_equal(sb_capture_spans(&f.cap), 10000);
    bool chain_alone = false;
    for (size_t i = 0; i < f.cap.n; i++) {
        am_batch_t *out = f.cap.batches[i];
        if (out->span_count > TRACETREE_MAX_SPANS_PER_BATCH) {
            assert_int_equal(out->n_traces, 1);
            assert_int_equal(out->trace_index[0].n_spans, 5000);
            assert_int_equal(reachable(&out->trace_index[0]), 5000);
            chain_alone = true;
        }
    }
    assert_true(chain_alone);
    assert_true(f.cap.n >= 3);
    tt_close(&f);
}

static void test_runaway_trace_emitted_early(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    tracetree__set_max_spans_per_trace(f.tt, 10);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 3, 1, 0, "root", NULL);
    for (uint64_t s = 2; s <= 25; s++) {
        sb_span(&b, 3, s, 1, "child", NULL);
    }
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    /* 10 whole, then 10 late (full again), then the last 5 late. */
    assert_int_equal(sb_capture_spans(&f.cap), 25);
    assert_int_equal(sb_capture_traces(&f.cap), 3);
    assert_int_equal(f.cap.batches[0]->trace_index[0].flags, 0);
    assert_int_equal(f.cap.batches[1]->trace_index[0].flags, AM_SPANREF_LATE);
    for (uint64_t s = 1; s <= 25; s++) {
        assert_non_null(sb_find(&f.cap, 3, s).ref);
    }
    tt_close(&f);
}

static void test_refused_batch_is_retried(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 1, 0, "root", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    f.cap.reply = AM_RETRY;
    tick(&f, fake_now + 2000);
    assert_int_equal(f.cap.n, 0);
    /* While downstream refuses, so do we (backpressure, not a drop). */
    sb_begin(&b);
    sb_span(&b, 2, 1, 0, "root", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_RETRY);
    f.cap.reply = AM_OK;
    tick(&f, fake_now + 100);
    assert_int_equal(f.cap.n, 1);
    assert_non_null(sb_find(&f.cap, 1, 1).ref);
    sb_begin(&b);
    sb_span(&b, 2, 1, 0, "root", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    tt_shutdown(&f);
    assert_int_equal(sb_capture_traces(&f.cap), 2);
    sb_capture_free(&f.cap);
}

static void test_spans_outlive_their_request(void **state)
{
    (void)state;
    /* The request batches are unreferenced right after consume (feed);
     * the emitted batch must keep their arenas alive (ASan checks). */
    fixture_t f;
    tt_open(&f, 2000, 30000, 1000);
    for (uint64_t s = 1; s <= 20; s++) {
        sb_req_t b;
        sb_begin(&b);
        sb_resource(&b, "tenant.id", "acme", NULL);
        sb_span(&b, 1, s, s - 1, "step", "session.id", "s-1", NULL);
        assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    }
    tick(&f, fake_now + 2000);
    assert_int_equal(f.cap.n, 1);
    am_batch_t *out = f.cap.batches[0];
    assert_true(out->n_held >= 20);
    for (uint64_t s = 1; s <= 20; s++) {
        sb_found_t found = sb_find(&f.cap, 1, s);
        assert_string_equal(sb_str_attr(found.ref->span, "session.id"), "s-1");
        const char *tenant = NULL;
        assert_true(am_attr_get_str(found.ref->resource->attributes,
                                    found.ref->resource->n_attributes, "tenant.id", &tenant));
        assert_string_equal(tenant, "acme");
    }
    tt_close(&f);
}

/* Fail each allocation in turn: no crash, no leak (under ASan), and the
 * loop still closes. */
static void test_failmalloc(void **state)
{
    (void)state;
    am_log_set_level(AM_LOG_OFF); /* one warning per failed allocation */
    for (long nth = 1;; nth++) {
        sb_req_t b;
        sb_begin(&b);
        for (uint32_t t = 1; t <= 3; t++) {
            sb_span(&b, t, 2, 1, "child", NULL);
            sb_span(&b, t, 1, 0, "root", NULL);
        }
        am_batch_t *first = sb_finish(&b);
        sb_begin(&b);
        sb_span(&b, 1, 3, 1, "late child", NULL);
        sb_span(&b, 4, 1, 0, "another root", NULL);
        am_batch_t *second = sb_finish(&b);

        uv_loop_t loop;
        assert_int_equal(uv_loop_init(&loop), 0);
        sb_capture_t cap;
        sb_capture_init(&cap);
        tracetree_config_t cfg = {
            .wait_ms = 100, .max_wait_ms = 1000, .max_traces = 2, .late_cache = 10};
        am_create_params_t params = {
            .id = "tracetree", .config = &cfg, .loop = &loop, .next = &cap.consumer, .n_shards = 1};
        void *tt = NULL;
        am_alloc_set_fail_after(nth);
        int rc = OPS->create(&params, &tt);
        if (rc == 0) {
            tracetree__set_clock(tt, fake_clock);
            fake_now = 0;
            if (OPS->start(tt) == 0) {
                OPS->consume(tt, first);
                tracetree__tick(tt, 200);
                fake_now = 300;
                OPS->consume(tt, second);
                tracetree__tick(tt, 5000);
                OPS->shutdown(tt);
            }
        } else {
            assert_int_equal(rc, AM_ENOMEM);
        }
        long made = am_alloc_set_fail_after(0);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (tt != NULL) {
            OPS->destroy(tt);
        }
        assert_int_equal(uv_loop_close(&loop), 0);
        am_batch_unref(first);
        am_batch_unref(second);
        size_t spans = sb_capture_spans(&cap);
        sb_capture_free(&cap);
        if (made < nth) {
            /* No allocation failed: the full run emitted everything. */
            assert_int_equal(spans, 8);
            break;
        }
    }
    am_log_set_level(AM_LOG_INFO);
}

static void test_options_defaults_and_validation(void **state)
{
    (void)state;
    tracetree_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    am_errors_t errs = {0};
    assert_int_equal(OPS->config_size, sizeof(cfg));
    assert_int_equal(am_options_parse(OPS->options, &cfg, NULL, "processors.tracetree", &errs), 0);
    assert_int_equal(cfg.wait_ms, 2000);
    assert_int_equal(cfg.max_wait_ms, 30000);
    assert_int_equal(cfg.max_traces, 200000);
    assert_int_equal(cfg.late_cache, 100000);
    OPS->validate(&cfg, NULL, "processors.tracetree", &errs);
    assert_int_equal(errs.count, 0);
    cfg.max_wait_ms = 1000;
    OPS->validate(&cfg, NULL, "processors.tracetree", &errs);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.msgs[0], "processors.tracetree.max_wait"));
    am_errors_clear(&errs);
    am_options_free(OPS->options, &cfg);
}

/* The real timer on a real loop emits without anyone calling tick. */
typedef struct timer_watch {
    sb_capture_t *cap;
    uv_timer_t poll, deadline;
    bool expired;
} timer_watch_t;

static void watch_poll(uv_timer_t *timer)
{
    timer_watch_t *watch = timer->data;
    if (watch->cap->n > 0) {
        uv_stop(timer->loop);
    }
}

static void watch_deadline(uv_timer_t *timer)
{
    timer_watch_t *watch = timer->data;
    watch->expired = true;
    uv_stop(timer->loop);
}

static void test_timer_emits_on_the_loop(void **state)
{
    (void)state;
    fixture_t f;
    tt_open(&f, 0, 1000, 1000);
    tracetree__set_clock(f.tt, NULL); /* back to the monotonic clock */
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 1, 0, "root", NULL);
    assert_int_equal(feed(&f, sb_finish(&b)), AM_OK);
    timer_watch_t watch = {.cap = &f.cap};
    uv_timer_init(&f.loop, &watch.poll);
    uv_timer_init(&f.loop, &watch.deadline);
    watch.poll.data = watch.deadline.data = &watch;
    uv_timer_start(&watch.poll, watch_poll, 1, 1);
    uv_timer_start(&watch.deadline, watch_deadline, 5000, 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_false(watch.expired);
    assert_int_equal(f.cap.n, 1);
    uv_close((uv_handle_t *)&watch.poll, NULL);
    uv_close((uv_handle_t *)&watch.deadline, NULL);
    tt_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_requests_children_first),
        cmocka_unit_test(test_wait_vs_max_wait),
        cmocka_unit_test(test_orphans_kept_and_listed_after_true_roots),
        cmocka_unit_test(test_late_spans_emitted_at_once),
        cmocka_unit_test(test_max_traces_forces_oldest),
        cmocka_unit_test(test_shutdown_flushes_everything),
        cmocka_unit_test(test_parent_cycles_broken),
        cmocka_unit_test(test_duplicate_span_ids_kept),
        cmocka_unit_test(test_output_batches_are_bounded),
        cmocka_unit_test(test_runaway_trace_emitted_early),
        cmocka_unit_test(test_refused_batch_is_retried),
        cmocka_unit_test(test_spans_outlive_their_request),
        cmocka_unit_test(test_failmalloc),
        cmocka_unit_test(test_options_defaults_and_validation),
        cmocka_unit_test(test_timer_emits_on_the_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
