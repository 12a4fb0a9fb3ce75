/*
 * anomaly: a tool called with the same arguments more than max_repeats
 * times is reported once (within a trace, or summed over a session's
 * traces); different arguments are not a loop; a burn-rate spike above
 * factor x the EWMA baseline is reported once per episode, steady spend and
 * spend under min_cost never are.  Injected clock, no sleeps.
 */
#include "processors/anomaly/anomaly_internal.h"
#include "processors/session/cost2_util.h"

#include <stdio.h>

extern const am_component_ops_t am_processor_anomaly_ops;

/* A trace with n tool calls; call i uses args[i % n_args]. */
static am_batch_t *tool_trace(uint32_t no, const char *session, const char *tool, int n,
                              const char *const *args, int n_args)
{
    am_batch_t *b = c2_batch();
    am_trace_t *t = c2_trace(b, no, (uint32_t)n + 1);
    c2_span(b, t, 0, -1, "invoke_agent", 0, "invoke_agent");
    for (int i = 0; i < n; i++) {
        am_pb_span_t *span = c2_span(b, t, (uint32_t)i + 1, 0, "execute_tool", 0, "execute_tool");
        am_span_set_str(b->arena, span, "gen_ai.tool.name", tool);
        am_span_set_str(b->arena, span, "gen_ai.tool.call.arguments", args[i % n_args]);
    }
    if (session != NULL) {
        c2_set_all(b, t, "session.id", session);
    }
    c2_rollup(b, t);
    return b;
}

static void set_clocks(c2_group_t *g)
{
    for (int k = 0; k < g->n; k++) {
        am__anomaly_set_clock(g->inst[k], c2_clock, NULL);
    }
}

static void test_tool_loop_in_trace(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_anomaly_ops, "anomaly/loop", "loops: {max_repeats: 5}\n", 1,
                    &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    const char *same[] = {"{\"q\":\"weather in paris\"}"};
    const char *varied[] = {"{\"q\":\"a\"}", "{\"q\":\"b\"}", "{\"q\":\"c\"}"};
    /* Five identical calls is not more than five. */
    am_batch_t *b = tool_trace(1, NULL, "web_search", 5, same, 1);
    c2_consume(&g, 0, b);
    assert_int_equal(b->n_events, 0);
    am_batch_unref(b);
    /* Nine calls over three argument sets: no loop either. */
    b = tool_trace(2, NULL, "web_search", 9, varied, 3);
    c2_consume(&g, 0, b);
    assert_int_equal(b->n_events, 0);
    am_batch_unref(b);
    b = tool_trace(3, NULL, "web_search", 7, same, 1);
    c2_consume(&g, 0, b);
    assert_int_equal(b->n_events, 1);
    const am_event_t *ev = &b->events[0];
    assert_string_equal(ev->kind, "anomaly.detected");
    assert_string_equal(ev->name, "loop");
    assert_string_equal(ev->scope, "trace");
    json_object *o = json_tokener_parse(ev->json);
    assert_string_equal(c2_get(o, "event"), "anomaly.detected");
    assert_string_equal(c2_get(o, "kind"), "loop");
    assert_string_equal(c2_get(o, "evidence.tool"), "web_search");
    assert_string_equal(c2_get(o, "evidence.count"), "7");
    assert_string_equal(c2_get(o, "evidence.max_repeats"), "5");
    assert_int_equal(strlen(c2_get(o, "evidence.arguments_hash")), 16);
    assert_string_equal(c2_get(o, "key"), ev->key);
    json_object *ids;
    assert_true(json_object_object_get_ex(o, "trace_ids", &ids));
    assert_int_equal(json_object_array_length(ids), 1);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(ids, 0)), ev->key);
    json_object_put(o);
    am_batch_unref(b);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static void test_tool_loop_across_session(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_anomaly_ops, "anomaly/sloop", "{}", 3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    const char *same[] = {"{\"path\":\"/tmp/x\"}"};
    for (uint32_t i = 0; i < 5; i++) {
        am_batch_t *b = tool_trace(i + 1, "looping", "read_file", 2, same, 1);
        c2_consume(&g, (int)(i % 3), b);
        am_batch_unref(b);
        /* 2, 4, 6 (> 5: reported), 8, 10 (same episode) */
        assert_int_equal(cap.n_events, i >= 2 ? 1 : 0);
    }
    json_object *o = c2_event(&cap, 0);
    assert_string_equal(c2_get(o, "scope"), "session.id");
    assert_string_equal(c2_get(o, "key"), "looping");
    assert_string_equal(c2_get(o, "evidence.count"), "6");
    assert_string_equal(c2_get(o, "evidence.traces"), "3");
    assert_string_equal(c2_get(o, "evidence.tool"), "read_file");
    json_object *ids;
    assert_true(json_object_object_get_ex(o, "trace_ids", &ids));
    assert_int_equal(json_object_array_length(ids), 3);
    json_object_put(o);
    /* After the session is forgotten a new loop is a new episode. */
    atomic_store(&c2_now_ns, c2_time(31 * 60));
    for (int k = 0; k < 3; k++) {
        am__anomaly_tick(g.inst[k]);
    }
    am_batch_t *b = tool_trace(99, "looping", "read_file", 6, same, 1);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 2);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static am_batch_t *cost_trace(uint32_t no, const char *agent, am_money_t cost)
{
    am_batch_t *b = c2_batch();
    am_trace_t *t = c2_trace(b, no, 2);
    c2_span(b, t, 0, -1, "invoke_agent", 0, "invoke_agent");
    c2_span(b, t, 1, 0, "chat", cost, "chat");
    c2_set_all(b, t, "gen_ai.agent.name", agent);
    c2_rollup(b, t);
    return b;
}

static void spend(c2_group_t *g, uint32_t *no, const char *agent, am_money_t cost)
{
    am_batch_t *b = cost_trace((*no)++, agent, cost);
    c2_consume(g, (int)(*no % (uint32_t)g->n), b);
    am_batch_unref(b);
}

static void test_burn_rate(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    am_shards_t *shards = NULL;
    assert_int_equal(am_shards_start(2, 0, &shards), 0);
    c2_group_create(&g, &am_processor_anomaly_ops, "anomaly/burn",
                    "burn_rate: {scope: gen_ai.agent.name, factor: 3, min_cost: 0.01, window: 1m, "
                    "alpha: 0.3}\n",
                    2, &cap.consumer);
    g.shards = shards;
    am__anomaly_set_shards(g.inst[0], shards);
    set_clocks(&g);
    uint32_t no = 1;
    /* Ten minutes of steady spend, 0.02 per minute in four calls, plus a
     * quiet agent whose 5x jump stays under min_cost. */
    for (int minute = 0; minute < 10; minute++) {
        for (int call = 0; call < 4; call++) {
            atomic_store(&c2_now_ns, c2_time(minute * 60 + call * 15));
            spend(&g, &no, "planner", 5000000);
            spend(&g, &no, "quiet", minute == 9 ? 1000000 : 200000);
            c2_drain(&g);
        }
    }
    assert_int_equal(cap.n_events, 0);
    /* Minute 10: 0.10 in the first 30 seconds - reported while it happens. */
    atomic_store(&c2_now_ns, c2_time(600));
    spend(&g, &no, "planner", 50000000);
    c2_drain(&g);
    assert_int_equal(cap.n_events, 0); /* 0.05 is not above 3 x 0.02 */
    atomic_store(&c2_now_ns, c2_time(630));
    spend(&g, &no, "planner", 50000000);
    c2_drain(&g);
    assert_int_equal(cap.n_events, 1);
    json_object *o = c2_event(&cap, 0);
    assert_string_equal(c2_get(o, "kind"), "burn_rate");
    assert_string_equal(c2_get(o, "scope"), "gen_ai.agent.name");
    assert_string_equal(c2_get(o, "key"), "planner");
    assert_string_equal(c2_get(o, "evidence.window_cost"), "0.1");
    assert_string_equal(c2_get(o, "evidence.rate_per_minute"), "0.1");
    assert_string_equal(c2_get(o, "evidence.baseline_per_minute"), "0.02");
    assert_string_equal(c2_get(o, "evidence.factor"), "3");
    assert_string_equal(c2_get(o, "evidence.window_start"), "2026-03-14T12:10:00.000Z");
    json_object *ids;
    assert_true(json_object_object_get_ex(o, "trace_ids", &ids));
    assert_int_equal(json_object_array_length(ids), 2);
    json_object_put(o);
    /* Still high: the same episode. */
    atomic_store(&c2_now_ns, c2_time(650));
    spend(&g, &no, "planner", 50000000);
    atomic_store(&c2_now_ns, c2_time(670));
    spend(&g, &no, "planner", 90000000);
    c2_drain(&g);
    assert_int_equal(cap.n_events, 1);
    /* Back to normal for two minutes: the episode ends (a tick closes the
     * windows without traffic), then a new spike is a new episode. */
    atomic_store(&c2_now_ns, c2_time(720));
    spend(&g, &no, "planner", 20000000);
    atomic_store(&c2_now_ns, c2_time(790));
    spend(&g, &no, "planner", 20000000);
    c2_drain(&g);
    atomic_store(&c2_now_ns, c2_time(845));
    for (int k = 0; k < 2; k++) {
        am_shard_call(am_shards_get(shards, k), am__anomaly_tick, g.inst[k]);
    }
    assert_int_equal(cap.n_events, 1);
    atomic_store(&c2_now_ns, c2_time(850));
    spend(&g, &no, "planner", 900000000);
    c2_drain(&g);
    assert_int_equal(cap.n_events, 2);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    am_shards_stop(shards);
    c2_capture_free(&cap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tool_loop_in_trace),
        cmocka_unit_test(test_tool_loop_across_session),
        cmocka_unit_test(test_burn_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
