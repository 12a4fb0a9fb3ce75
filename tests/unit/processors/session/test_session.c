/*
 * session: traces of one session arriving on several shards add up on the
 * session's owning shard; roots carry exact running totals; sessions close
 * when idle, when evicted past max_sessions (least recently active first)
 * or at shutdown, each with one session.summary event whose figures are
 * exact; actions are matched by name, one-of and regex, and cost per
 * successful action is rounded half away from zero.  All with an injected
 * clock: nothing here sleeps.
 */
#include "am_service.h"
#include "processors/session/cost2_util.h"
#include "processors/session/session_internal.h"

#include <stdio.h>
#include <unistd.h>

extern const am_component_ops_t am_processor_session_ops;

/* One agent trace: invoke_agent root, a chat call and a tool call. */
static am_money_t agent_trace(am_batch_t *b, uint32_t no, const char *session, am_money_t chat,
                              am_money_t tool, bool tool_fails)
{
    am_trace_t *t = c2_trace(b, no, 3);
    c2_span(b, t, 0, -1, "invoke_agent planner", 0, "invoke_agent");
    am_pb_span_t *llm = c2_span(b, t, 1, 0, "chat gpt-4o", chat, "chat");
    am_pb_span_t *call = c2_span(b, t, 2, 0, "execute_tool web_search", tool, "execute_tool");
    am_span_set_str(b->arena, llm, "gen_ai.request.model", "gpt-4o");
    am_span_set_int(b->arena, llm, "gen_ai.usage.input_tokens", 100);
    am_span_set_int(b->arena, llm, "gen_ai.usage.output_tokens", 40);
    am_span_set_int(b->arena, llm, "gen_ai.usage.cache_read.input_tokens", 20);
    am_span_set_double(b->arena, llm, "cost.input", am_money_to_double(chat / 2));
    am_span_set_double(b->arena, llm, "cost.output", am_money_to_double(chat - chat / 2));
    am_span_set_double(b->arena, call, "cost.tool", am_money_to_double(tool));
    am_span_set_str(b->arena, call, "gen_ai.tool.name", "web_search");
    if (tool_fails) {
        call->status = am_arena_alloc(b->arena, sizeof(*call->status));
        opentelemetry__proto__trace__v1__status__init(call->status);
        call->status->code = AM_PB_STATUS_ERROR;
    }
    c2_set_all(b, t, "session.id", session);
    c2_set_all(b, t, "user.id", "u-1");
    c2_set_all(b, t, "tenant.id", "acme");
    return c2_rollup(b, t);
}

static const char *fmt(am_money_t v, char *buf)
{
    return am_money_format(v, buf);
}

static void test_sessions_across_shards(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    am_shards_t *shards = NULL;
    assert_int_equal(am_shards_start(3, 0, &shards), 0);
    c2_group_create(&g, &am_processor_session_ops, "session/shards", "{}", 3, &cap.consumer);
    g.shards = shards;
    for (int k = 0; k < 3; k++) {
        am__session_set_clock(g.inst[k], c2_clock, NULL);
    }
    am__session_set_shards(g.inst[0], shards);
    atomic_store(&c2_now_ns, c2_time(0));
    am_money_t totals[2] = {0, 0};
    int64_t traces[2] = {0, 0};
    for (uint32_t i = 0; i < 12; i++) {
        int s = (int)(i % 2);
        am_batch_t *b = c2_batch();
        am_money_t chat = 1234567 + (am_money_t)i * 1000001, tool = 10000000;
        am_money_t total = agent_trace(b, i + 1, s == 0 ? "sess-a" : "sess-b", chat, tool, i == 3);
        totals[s] += total;
        traces[s]++;
        /* Trace i lands on shard i % 3, as the dispatcher would place it. */
        assert_int_equal(c2_consume(&g, (int)(i % 3), b), AM_OK);
        c2_drain(&g);
        am_pb_span_t *root = b->trace_index[0].spans[0].span;
        double running;
        int64_t n = 0;
        assert_true(c2_attr_double(root, "cost.session.total", &running));
        assert_true(
            am_attr_get_int(root->attributes, root->n_attributes, "cost.session.traces", &n));
        assert_true(running == am_money_to_double(totals[s]));
        assert_int_equal(n, traces[s]);
        assert_string_equal(c2_attr_str(b->trace_index[0].spans[2].span, "cost.action"),
                            "tool_call");
        assert_string_equal(c2_attr_str(root, "cost.action"), "agent_step");
        am_batch_unref(b);
        atomic_fetch_add(&c2_now_ns, 10 * C2_NS);
    }
    assert_int_equal(cap.n_events, 0);
    c2_group_shutdown(&g);
    assert_int_equal(cap.n_events, 2);
    char buf[AM_MONEY_STRLEN];
    for (size_t e = 0; e < 2; e++) {
        json_object *o = c2_event(&cap, e);
        int s = strcmp(c2_get(o, "key"), "sess-a") == 0 ? 0 : 1;
        assert_string_equal(c2_get(o, "event"), "session.summary");
        assert_string_equal(c2_get(o, "scope"), "session.id");
        assert_string_equal(c2_get(o, "traces"), "6");
        assert_string_equal(c2_get(o, "spans"), "18");
        assert_string_equal(c2_get(o, "cost.total"), fmt(totals[s], buf));
        assert_string_equal(c2_get(o, "cost.currency"), "USD");
        assert_string_equal(c2_get(o, "cost.tool"), "0.06");
        assert_string_equal(c2_get(o, "tokens.input"), "600");
        assert_string_equal(c2_get(o, "tokens.output"), "240");
        assert_string_equal(c2_get(o, "tokens.cache_read"), "120");
        assert_string_equal(c2_get(o, "actions.agent_step.success"), "6");
        assert_string_equal(c2_get(o, "actions.tool_call.success"), s == 1 ? "5" : "6");
        assert_string_equal(c2_get(o, "actions.tool_call.failure"), s == 1 ? "1" : "0");
        assert_string_equal(c2_get(o, "actions.tool_call.cost"), "0.06");
        assert_string_equal(c2_get(o, "actions.agent_step.cost"), fmt(totals[s], buf));
        assert_string_equal(c2_get(o, "attributes.user.id"), "");
        json_object *attrs;
        assert_true(json_object_object_get_ex(o, "attributes", &attrs));
        json_object *v;
        assert_true(json_object_object_get_ex(attrs, "user.id", &v));
        assert_string_equal(json_object_get_string(v), "u-1");
        assert_string_equal(c2_get(o, "models"), "[ \"gpt-4o\" ]");
        assert_int_equal(cap.amount[e], totals[s]);
        json_object_put(o);
    }
    c2_group_destroy(&g);
    am_shards_stop(shards);
    c2_capture_free(&cap);
}

static void test_idle_close(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_session_ops, "session/idle", "idle_timeout: 30m\n", 1,
                    &cap.consumer);
    am__session_set_clock(g.inst[0], c2_clock, NULL);
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = c2_batch();
    agent_trace(b, 1, "early", 1000, 0, false);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    atomic_store(&c2_now_ns, c2_time(20 * 60));
    b = c2_batch();
    agent_trace(b, 2, "late", 1000, 0, false);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    atomic_store(&c2_now_ns, c2_time(30 * 60 - 1));
    am__session_tick(g.inst[0]);
    assert_int_equal(cap.n_events, 0);
    atomic_store(&c2_now_ns, c2_time(30 * 60));
    am__session_tick(g.inst[0]);
    assert_int_equal(cap.n_events, 1);
    assert_int_equal(c2_count(&cap, "session.summary", "key", "early"), 1);
    am__session_stats_t stats;
    am__session_stats(g.inst[0], &stats);
    assert_int_equal(stats.closed_idle, 1);
    assert_int_equal(stats.open, 1);
    /* A new trace of a closed session starts a new one from zero. */
    b = c2_batch();
    am_money_t total = agent_trace(b, 3, "early", 7000, 0, false);
    c2_consume(&g, 0, b);
    double running;
    assert_true(c2_attr_double(b->trace_index[0].spans[0].span, "cost.session.total", &running));
    assert_true(running == am_money_to_double(total));
    am_batch_unref(b);
    atomic_store(&c2_now_ns, c2_time(50 * 60 + 1));
    am__session_tick(g.inst[0]);
    assert_int_equal(cap.n_events, 2);
    assert_int_equal(c2_count(&cap, "session.summary", "key", "late"), 1);
    c2_group_shutdown(&g);
    assert_int_equal(cap.n_events, 3);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static void test_eviction(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_session_ops, "session/evict", "max_sessions: 2\n", 1,
                    &cap.consumer);
    am__session_set_clock(g.inst[0], c2_clock, NULL);
    const char *keys[] = {"s1", "s2", "s3", "s2", "s4"};
    for (uint32_t i = 0; i < 5; i++) {
        atomic_store(&c2_now_ns, c2_time(i));
        am_batch_t *b = c2_batch();
        agent_trace(b, i + 1, keys[i], 100, 0, false);
        c2_consume(&g, 0, b);
        am_batch_unref(b);
        if (i == 2) {
            /* s1 is the least recently active: it goes. */
            assert_int_equal(cap.n_events, 1);
            assert_int_equal(c2_count(&cap, NULL, "key", "s1"), 1);
        }
    }
    /* s2 was touched again, so s3 went for s4. */
    assert_int_equal(cap.n_events, 2);
    assert_int_equal(c2_count(&cap, NULL, "key", "s3"), 1);
    am__session_stats_t stats;
    am__session_stats(g.inst[0], &stats);
    assert_int_equal(stats.closed_evicted, 2);
    assert_int_equal(stats.open, 2);
    c2_group_shutdown(&g);
    json_object *o = c2_event(&cap, 2);
    assert_string_equal(c2_get(o, "traces"), strcmp(c2_get(o, "key"), "s2") == 0 ? "2" : "1");
    json_object_put(o);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static am_pb_span_t *tool_span(am_batch_t *b, am_trace_t *t, uint32_t i, const char *span_name,
                               const char *tool, am_money_t cost, bool fails)
{
    am_pb_span_t *span = c2_span(b, t, i, 0, span_name, cost, "execute_tool");
    am_span_set_str(b->arena, span, "gen_ai.tool.name", tool);
    if (fails) {
        span->status = am_arena_alloc(b->arena, sizeof(*span->status));
        opentelemetry__proto__trace__v1__status__init(span->status);
        span->status->code = AM_PB_STATUS_ERROR;
    }
    return span;
}

static void test_cpa_per_action(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_session_ops, "session/cpa",
                    "actions:\n"
                    "  - {name: search, match: {gen_ai.tool.name: [web_search, bing]}}\n"
                    "  - name: code\n"
                    "    match: {gen_ai.tool.name: \"re:^code_\"}\n"
                    "    span_name: \"re:^execute_tool \"\n"
                    "  - {name: step, match: {gen_ai.operation.name: invoke_agent}}\n",
                    1, &cap.consumer);
    am__session_set_clock(g.inst[0], c2_clock, NULL);
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = c2_batch();
    am_trace_t *t = c2_trace(b, 1, 7);
    c2_span(b, t, 0, -1, "invoke_agent coder", 0, "invoke_agent");
    am_pb_span_t *s1 = tool_span(b, t, 1, "execute_tool web_search", "web_search", 10000000, false);
    am_pb_span_t *s2 = tool_span(b, t, 2, "execute_tool bing", "bing", 10000000, true);
    am_pb_span_t *s3 = tool_span(b, t, 3, "execute_tool code_exec", "code_exec", 3000000, false);
    am_pb_span_t *s4 = tool_span(b, t, 4, "lint", "code_lint", 1000000, false);
    am_pb_span_t *s5 = c2_span(b, t, 5, 0, "chat", 20000000, "chat");
    am_pb_span_t *s6 = tool_span(b, t, 6, "execute_tool other", "other", 0, false);
    c2_set_all(b, t, "session.id", "cpa");
    am_money_t total = c2_rollup(b, t);
    c2_consume(&g, 0, b);
    assert_string_equal(c2_attr_str(s1, "cost.action"), "search");
    assert_string_equal(c2_attr_str(s2, "cost.action"), "search");
    assert_string_equal(c2_attr_str(s3, "cost.action"), "code");
    assert_null(c2_attr_str(s4, "cost.action")); /* span_name does not match */
    assert_null(c2_attr_str(s5, "cost.action"));
    assert_null(c2_attr_str(s6, "cost.action")); /* the defaults are replaced */
    assert_string_equal(c2_attr_str(t->spans[0].span, "cost.action"), "step");
    am_batch_unref(b);
    c2_group_shutdown(&g);
    assert_int_equal(cap.n_events, 1);
    json_object *o = c2_event(&cap, 0);
    char buf[AM_MONEY_STRLEN];
    assert_int_equal(total, 44000000);
    assert_string_equal(c2_get(o, "cost.total"), "0.044");
    assert_string_equal(c2_get(o, "actions.search.success"), "1");
    assert_string_equal(c2_get(o, "actions.search.failure"), "1");
    assert_string_equal(c2_get(o, "actions.search.cost"), "0.02");
    assert_string_equal(c2_get(o, "actions.code.success"), "1");
    assert_string_equal(c2_get(o, "actions.code.cost"), "0.003");
    assert_string_equal(c2_get(o, "actions.step.cost"), fmt(total, buf));
    /* 0.044 / 3 successes = 0.0146666666(6) -> 0.014666667 */
    assert_string_equal(c2_get(o, "cost_per_successful_action"), "0.014666667");
    json_object_put(o);
    c2_group_destroy(&g);
    c2_capture_free(&cap);

    am_money_t cpa;
    assert_true(am__session_cpa(10, 4, &cpa));
    assert_int_equal(cpa, 3);
    assert_true(am__session_cpa(-10, 4, &cpa));
    assert_int_equal(cpa, -3);
    assert_true(am__session_cpa(5, 3, &cpa));
    assert_int_equal(cpa, 2);
    assert_true(am__session_cpa(4, 3, &cpa));
    assert_int_equal(cpa, 1);
    assert_false(am__session_cpa(4, 0, &cpa));
}

static void test_no_success_is_null(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_session_ops, "session/null",
                    "actions: [{name: x, span_name: nothing-matches}]\n", 1, &cap.consumer);
    am_batch_t *b = c2_batch();
    agent_trace(b, 1, "quiet", 5, 0, false);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    c2_group_shutdown(&g);
    json_object *o = c2_event(&cap, 0);
    assert_string_equal(c2_get(o, "cost_per_successful_action"), "null");
    assert_string_equal(c2_get(o, "cost.total"), "0.000000005");
    json_object_put(o);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static void test_state_file_keeps_sessions(void **state)
{
    (void)state;
    char dir[] = "/tmp/am-session-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char yaml[512], path[300];
    snprintf(path, sizeof(path), "%s/sessions.json", dir);
    snprintf(yaml, sizeof(yaml), "state_file: %s\n", path);
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_session_ops, "session/state", yaml, 2, &cap.consumer);
    am__session_set_clock(g.inst[0], c2_clock, NULL);
    am__session_set_clock(g.inst[1], c2_clock, NULL);
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = c2_batch();
    am_money_t first = agent_trace(b, 1, "kept", 123456789, 5, false);
    c2_consume(&g, 1, b);
    am_batch_unref(b);
    c2_group_shutdown(&g);
    assert_int_equal(cap.n_events, 0); /* persisted, not closed */
    c2_group_destroy(&g);
    assert_int_equal(access(path, R_OK), 0);

    c2_group_create(&g, &am_processor_session_ops, "session/state", yaml, 2, &cap.consumer);
    am__session_set_clock(g.inst[0], c2_clock, NULL);
    am__session_set_clock(g.inst[1], c2_clock, NULL);
    atomic_store(&c2_now_ns, c2_time(60));
    b = c2_batch();
    am_money_t second = agent_trace(b, 2, "kept", 1, 0, false);
    c2_consume(&g, 0, b);
    double running;
    assert_true(c2_attr_double(b->trace_index[0].spans[0].span, "cost.session.total", &running));
    assert_true(running == am_money_to_double(first + second));
    am_batch_unref(b);
    atomic_store(&c2_now_ns, c2_time(60 + 31 * 60));
    am__session_tick(g.inst[0]);
    am__session_tick(g.inst[1]);
    assert_int_equal(cap.n_events, 1);
    json_object *o = c2_event(&cap, 0);
    char buf[AM_MONEY_STRLEN];
    assert_string_equal(c2_get(o, "traces"), "2");
    assert_string_equal(c2_get(o, "cost.total"), fmt(first + second, buf));
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
    unlink(path);
    rmdir(dir);
}

static void test_corrupt_state_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/am-session-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char yaml[512], path[300], aside[400];
    snprintf(path, sizeof(path), "%s/sessions.json", dir);
    snprintf(yaml, sizeof(yaml), "state_file: %s\n", path);
    FILE *f = fopen(path, "w");
    fputs("{\"version\":1,\"sessions\":[{\"key\":", f);
    fclose(f);
    atomic_store(&c2_now_ns, c2_time(0));
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_session_ops, "session/corrupt", yaml, 1, &cap.consumer);
    /* create+start already ran with the wall clock; the file moved aside. */
    assert_int_not_equal(access(path, F_OK), 0);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "ls %s/sessions.json.corrupt-* >/dev/null 2>&1", dir);
    assert_int_equal(system(cmd), 0);
    snprintf(aside, sizeof(aside), "rm -rf %s", dir);
    assert_int_equal(system(aside), 0);
}

/* A config reload (new service built - its config validated -, old one
 * shut down, new one started) keeps open sessions with their running
 * totals, without a summary in between; a plain shutdown afterwards still
 * closes them. */
static void test_reload_continues_sessions(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    /* Two services that both run processor session/reload: the old one and
     * the one a SIGHUP builds to replace it. */
    static const char yaml[] = "receivers: { otlp: {} }\n"
                               "processors: { session/reload: {} }\n"
                               "exporters: { debug: {} }\n"
                               "service: { pipelines: { traces: { receivers: [otlp], "
                               "processors: [session/reload], exporters: [debug] } } }\n";
    am_service_t *services[2];
    for (int i = 0; i < 2; i++) {
        am_errors_t build_errs = {0};
        am_config_t *config = am_config_load_buffer("s.yaml", yaml, sizeof(yaml) - 1, &build_errs);
        am_service_opts_t opts = {.shards = 2, .skip_telemetry = true};
        services[i] = am_service_build(config, &opts, &build_errs);
        assert_non_null(services[i]);
    }
    c2_group_t g;
    c2_service = services[0];
    c2_group_create(&g, &am_processor_session_ops, "session/reload", "{}", 2, &cap.consumer);
    for (int k = 0; k < 2; k++) {
        am__session_set_clock(g.inst[k], c2_clock, NULL);
    }
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = c2_batch();
    am_money_t first = agent_trace(b, 1, "carried", 120000000, 12000000, false);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    b = c2_batch();
    am_money_t second = agent_trace(b, 2, "carried", 30000000, 0, true);
    c2_consume(&g, 1, b);
    am_batch_unref(b);
    /* SIGHUP: the old service is shut down for its successor. */
    am_service_set_reload_successor(services[0], services[1]);
    c2_group_shutdown(&g);
    assert_int_equal(cap.n_events, 0); /* handed over, not closed */
    am__session_stats_t st;
    am__session_stats(g.inst[0], &st);
    assert_int_equal(st.closed_shutdown, 0);
    c2_group_destroy(&g);

    c2_service = services[1];
    c2_group_create(&g, &am_processor_session_ops, "session/reload", "{idle_timeout: 10m}", 2,
                    &cap.consumer);
    for (int k = 0; k < 2; k++) {
        am__session_set_clock(g.inst[k], c2_clock, NULL);
    }
    atomic_store(&c2_now_ns, c2_time(120));
    b = c2_batch();
    am_money_t third = agent_trace(b, 3, "carried", 7, 0, false);
    c2_consume(&g, 1, b);
    double running;
    assert_true(c2_attr_double(b->trace_index[0].spans[0].span, "cost.session.total", &running));
    assert_true(running == am_money_to_double(first + second + third));
    int64_t n_traces = 0;
    assert_true(am_attr_get_int(b->trace_index[0].spans[0].span->attributes,
                                b->trace_index[0].spans[0].span->n_attributes,
                                "cost.session.traces", &n_traces));
    assert_int_equal(n_traces, 3);
    am_batch_unref(b);
    /* A plain shutdown (no successor) closes the session as before. */
    c2_group_shutdown(&g);
    assert_int_equal(cap.n_events, 1);
    json_object *o = c2_event(&cap, 0);
    char buf[AM_MONEY_STRLEN];
    assert_string_equal(c2_get(o, "key"), "carried");
    assert_string_equal(c2_get(o, "traces"), "3");
    assert_string_equal(c2_get(o, "spans"), "9");
    assert_string_equal(c2_get(o, "cost.total"), fmt(first + second + third, buf));
    assert_string_equal(c2_get(o, "actions.tool_call.success"), "2");
    assert_string_equal(c2_get(o, "actions.tool_call.failure"), "1");
    assert_string_equal(c2_get(o, "start"), "2026-03-14T12:00:00.000Z");
    json_object_put(o);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
    c2_service = NULL;
    am_service_free(services[0]);
    am_service_free(services[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sessions_across_shards),
        cmocka_unit_test(test_idle_close),
        cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_cpa_per_action),
        cmocka_unit_test(test_no_success_is_null),
        cmocka_unit_test(test_state_file_keeps_sessions),
        cmocka_unit_test(test_corrupt_state_file),
        cmocka_unit_test(test_reload_continues_sessions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
