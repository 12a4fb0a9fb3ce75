/*
 * budget: one budget.threshold event per budget, key, window and threshold
 * even when traces of one key cross at once on several shards; spans of
 * later traces are marked; calendar windows roll over at midnight UTC and
 * at a month end; the API answers spent/limit/remaining/status/window; a
 * restart with a state file keeps spent amounts (and does not re-alert); a
 * corrupt state file is set aside.  Injected clock, no sleeps.
 */
#include "processors/budget/budget_internal.h"
#include "processors/session/cost2_util.h"

#include <stdio.h>
#include <unistd.h>

extern const am_component_ops_t am_processor_budget_ops;

static am_batch_t *spend_batch(uint32_t no, const char *attr, const char *key, am_money_t cost)
{
    am_batch_t *b = c2_batch();
    am_trace_t *t = c2_trace(b, no, 2);
    c2_span(b, t, 0, -1, "invoke_agent", 0, "invoke_agent");
    c2_span(b, t, 1, 0, "chat", cost, "chat");
    c2_set_all(b, t, attr, key);
    c2_rollup(b, t);
    return b;
}

static void set_clocks(c2_group_t *g)
{
    for (int k = 0; k < g->n; k++) {
        am__budget_set_clock(g->inst[k], c2_clock, NULL);
    }
    am__budget_set_api_clock(g->inst[0], c2_clock, NULL);
}

static json_object *api(c2_group_t *g, const char *path, int expect_status)
{
    char *body = NULL;
    size_t len = 0;
    int status = am__budget_render(g->inst[0], path, &body, &len);
    assert_int_equal(status, expect_status);
    assert_non_null(body);
    json_object *o = json_tokener_parse(body);
    assert_non_null(o);
    am_free(body);
    return o;
}

static uint64_t total_events(c2_group_t *g)
{
    uint64_t n = 0;
    for (int k = 0; k < g->n; k++) {
        n += am__budget_events_emitted(g->inst[k]);
    }
    return n;
}

typedef struct burst {
    c2_group_t *g;
    int shard;
    am_batch_t *batches[25];
} burst_t;

static void burst_fn(void *arg)
{
    burst_t *burst = arg;
    for (int i = 0; i < 25; i++) {
        burst->g->ops->consume(burst->g->inst[burst->shard], burst->batches[i]);
        am_batch_unref(burst->batches[i]);
    }
}

static void test_crossing_once_under_concurrency(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    am_shards_t *shards = NULL;
    assert_int_equal(am_shards_start(4, 0, &shards), 0);
    c2_group_create(&g, &am_processor_budget_ops, "budget/race",
                    "budgets:\n"
                    "  - {name: session-cap, scope: session.id, window: session, limit: 0.50}\n",
                    4, &cap.consumer);
    g.shards = shards;
    am__budget_set_shards(g.inst[0], shards);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    /* 100 traces of one session, 0.01 each, on four shard threads at once. */
    burst_t bursts[4];
    for (int k = 0; k < 4; k++) {
        bursts[k].g = &g;
        bursts[k].shard = k;
        for (int i = 0; i < 25; i++) {
            bursts[k].batches[i] =
                spend_batch((uint32_t)(k * 100 + i + 1), "session.id", "hot", 10000000);
        }
    }
    for (int k = 0; k < 4; k++) {
        assert_int_equal(am_shard_post_fn(am_shards_get(shards, k), burst_fn, &bursts[k]), 0);
    }
    c2_drain(&g);
    assert_int_equal(cap.n_events, 2);
    assert_int_equal(total_events(&g), 2);
    assert_int_equal(c2_count(&cap, "budget.threshold", "status", "warning"), 1);
    assert_int_equal(c2_count(&cap, "budget.threshold", "status", "exceeded"), 1);
    for (size_t i = 0; i < 2; i++) {
        json_object *o = c2_event(&cap, i);
        assert_string_equal(c2_get(o, "budget"), "session-cap");
        assert_string_equal(c2_get(o, "scope"), "session.id");
        assert_string_equal(c2_get(o, "key"), "hot");
        assert_string_equal(c2_get(o, "window"), "session");
        assert_string_equal(c2_get(o, "limit"), "0.5");
        assert_string_equal(c2_get(o, "currency"), "USD");
        bool warn = strcmp(c2_get(o, "status"), "warning") == 0;
        assert_string_equal(c2_get(o, "threshold"), warn ? "0.8" : "1");
        assert_string_equal(c2_get(o, "spent"), warn ? "0.4" : "0.5");
        assert_int_equal(strlen(c2_get(o, "trace_id")), 32);
        json_object_put(o);
    }
    /* Spans after the crossing are marked; other keys are not. */
    am_batch_t *b = spend_batch(999, "session.id", "hot", 1);
    c2_consume(&g, 2, b);
    assert_string_equal(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"),
                        "exceeded");
    assert_string_equal(c2_attr_str(b->trace_index[0].spans[0].span, "cost.budget.name"),
                        "session-cap");
    am_batch_unref(b);
    b = spend_batch(998, "session.id", "cold", 1);
    c2_consume(&g, 2, b);
    assert_null(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"));
    am_batch_unref(b);
    c2_drain(&g);
    json_object *o = api(&g, "/v1/budgets/session-cap/hot", 200);
    assert_string_equal(c2_get(o, "spent"), "1.000000001");
    assert_string_equal(c2_get(o, "limit"), "0.5");
    assert_string_equal(c2_get(o, "remaining"), "0");
    assert_string_equal(c2_get(o, "status"), "exceeded");
    assert_string_equal(c2_get(o, "currency"), "USD");
    assert_string_equal(c2_get(o, "window_end"), "null");
    assert_string_equal(c2_get(o, "window_start"), "2026-03-14T12:00:00.000Z");
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    am_shards_stop(shards);
    c2_capture_free(&cap);
}

static void test_day_window_across_midnight(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/day",
                    "budgets:\n"
                    "  - {name: tenant-daily, scope: tenant.id, window: day, limit: 1.00}\n",
                    2, &cap.consumer);
    set_clocks(&g);
    /* 2026-03-14T23:59:50Z */
    atomic_store(&c2_now_ns, c2_time(12 * 3600 - 10));
    am_batch_t *b = spend_batch(1, "tenant.id", "acme", 850000000);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 1);
    json_object *o = c2_event(&cap, 0);
    assert_string_equal(c2_get(o, "window"), "day");
    assert_string_equal(c2_get(o, "window_start"), "2026-03-14T00:00:00.000Z");
    assert_string_equal(c2_get(o, "window_end"), "2026-03-15T00:00:00.000Z");
    assert_string_equal(c2_get(o, "time"), "2026-03-14T23:59:50.000Z");
    assert_string_equal(c2_get(o, "status"), "warning");
    json_object_put(o);
    atomic_store(&c2_now_ns, c2_time(12 * 3600 - 5));
    b = spend_batch(2, "tenant.id", "acme", 0);
    c2_consume(&g, 1, b);
    assert_string_equal(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"),
                        "warning");
    am_batch_unref(b);
    /* 00:00:10 the next day: a new window, nothing spent in it yet. */
    atomic_store(&c2_now_ns, c2_time(12 * 3600 + 10));
    o = api(&g, "/v1/budgets/tenant-daily/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0");
    assert_string_equal(c2_get(o, "status"), "ok");
    assert_string_equal(c2_get(o, "window_start"), "2026-03-15T00:00:00.000Z");
    json_object_put(o);
    b = spend_batch(3, "tenant.id", "acme", 500000000);
    c2_consume(&g, 1, b);
    assert_null(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"));
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 1);
    b = spend_batch(4, "tenant.id", "acme", 350000000);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 2);
    o = c2_event(&cap, 1);
    assert_string_equal(c2_get(o, "window_start"), "2026-03-15T00:00:00.000Z");
    assert_string_equal(c2_get(o, "window_end"), "2026-03-16T00:00:00.000Z");
    assert_string_equal(c2_get(o, "spent"), "0.85");
    json_object_put(o);
    o = api(&g, "/v1/budgets/tenant-daily/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.85");
    assert_string_equal(c2_get(o, "remaining"), "0.15");
    assert_string_equal(c2_get(o, "status"), "warning");
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static void test_month_window_across_month_end(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/month",
                    "budgets:\n"
                    "  - {name: monthly, scope: user.id, window: month, limit: 10, "
                    "thresholds: [0.5]}\n",
                    1, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, (uint64_t)INT64_C(1769903999) * C2_NS); /* 2026-01-31T23:59:59Z */
    am_batch_t *b = spend_batch(1, "enduser.id", "bob", 6 * AM_MONEY_SCALE);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    atomic_store(&c2_now_ns, (uint64_t)INT64_C(1769904001) * C2_NS); /* 2026-02-01T00:00:01Z */
    b = spend_batch(2, "user.id", "bob", 6 * AM_MONEY_SCALE);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 2);
    json_object *o = c2_event(&cap, 0);
    assert_string_equal(c2_get(o, "window_start"), "2026-01-01T00:00:00.000Z");
    assert_string_equal(c2_get(o, "window_end"), "2026-02-01T00:00:00.000Z");
    assert_string_equal(c2_get(o, "key"), "bob");
    assert_string_equal(c2_get(o, "threshold"), "0.5");
    json_object_put(o);
    o = c2_event(&cap, 1);
    assert_string_equal(c2_get(o, "window_start"), "2026-02-01T00:00:00.000Z");
    assert_string_equal(c2_get(o, "window_end"), "2026-03-01T00:00:00.000Z");
    assert_string_equal(c2_get(o, "spent"), "6");
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);

    uint64_t s, e;
    char a[AM_TIME_STRLEN], z[AM_TIME_STRLEN];
    /* 2028-02-29T12:00:00Z: a leap month. */
    assert_int_equal(
        am__budget_calendar_window("month", (uint64_t)INT64_C(1835438400) * C2_NS, &s, &e), 0);
    assert_string_equal(am_time_format(s, a), "2028-02-01T00:00:00.000Z");
    assert_string_equal(am_time_format(e, z), "2028-03-01T00:00:00.000Z");
    /* 2026-12-31T23:00:00Z: the year rolls over. */
    assert_int_equal(
        am__budget_calendar_window("month", (uint64_t)INT64_C(1798758000) * C2_NS, &s, &e), 0);
    assert_string_equal(am_time_format(e, z), "2027-01-01T00:00:00.000Z");
    assert_int_equal(am__budget_calendar_window(
                         "hour", (uint64_t)INT64_C(1798758000) * C2_NS + 59 * 60 * C2_NS, &s, &e),
                     0);
    assert_string_equal(am_time_format(s, a), "2026-12-31T23:00:00.000Z");
}

static void test_api_answers(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/api",
                    "budgets:\n"
                    "  - {name: session-cap, scope: session.id, window: session, limit: 5.00}\n"
                    "  - {name: tokens-hourly, scope: tenant.id, window: hour, type: tokens, "
                    "limit: 1000}\n",
                    3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(30));
    am_batch_t *b = spend_batch(1, "session.id", "s/1 x", 1250000000);
    am_span_set_str(b->arena, b->trace_index[0].spans[1].span, "tenant.id", "acme");
    am_span_set_int(b->arena, b->trace_index[0].spans[1].span, "gen_ai.usage.input_tokens", 700);
    am_span_set_int(b->arena, b->trace_index[0].spans[1].span, "gen_ai.usage.output_tokens", 150);
    c2_consume(&g, 1, b);
    am_batch_unref(b);
    json_object *o = api(&g, "/v1/budgets/session-cap/s%2F1%20x", 200);
    assert_string_equal(c2_get(o, "spent"), "1.25");
    assert_string_equal(c2_get(o, "limit"), "5");
    assert_string_equal(c2_get(o, "remaining"), "3.75");
    assert_string_equal(c2_get(o, "status"), "ok");
    assert_string_equal(c2_get(o, "currency"), "USD");
    json_object_put(o);
    o = api(&g, "/v1/budgets/tokens-hourly/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "850");
    assert_string_equal(c2_get(o, "remaining"), "150");
    assert_string_equal(c2_get(o, "status"), "warning");
    assert_string_equal(c2_get(o, "window_start"), "2026-03-14T12:00:00.000Z");
    assert_string_equal(c2_get(o, "window_end"), "2026-03-14T13:00:00.000Z");
    assert_string_equal(c2_get(o, "currency"), "null");
    json_object_put(o);
    assert_int_equal(cap.n_events, 1);
    o = api(&g, "/v1/budgets", 200);
    json_object *list;
    assert_true(json_object_object_get_ex(o, "budgets", &list));
    assert_int_equal(json_object_array_length(list), 2);
    assert_string_equal(c2_get(json_object_array_get_idx(list, 0), "name"), "session-cap");
    json_object_put(o);
    o = api(&g, "/v1/budgets/nope/acme", 404);
    assert_string_equal(c2_get(o, "error"), "unknown budget");
    json_object_put(o);
    o = api(&g, "/v1/budgets/session-cap/unknown", 404);
    assert_string_not_equal(c2_get(o, "error"), "");
    json_object_put(o);
    o = api(&g, "/v1/budgetsX", 404);
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static void test_trace_window(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/trace",
                    "budgets: [{name: per-trace, scope: trace, limit: 0.05}]\n", 1, &cap.consumer);
    set_clocks(&g);
    am_batch_t *b = c2_batch();
    am_trace_t *t = c2_trace(b, 7, 4);
    c2_span(b, t, 0, -1, "root", 0, "invoke_agent");
    for (uint32_t i = 1; i < 4; i++) {
        c2_span(b, t, i, 0, "chat", 20000000, "chat");
    }
    c2_rollup(b, t);
    c2_consume(&g, 0, b);
    assert_int_equal(b->n_events, 2); /* into the batch passing by */
    assert_null(c2_attr_str(t->spans[1].span, "cost.budget.status"));
    assert_string_equal(c2_attr_str(t->spans[2].span, "cost.budget.status"), "warning");
    assert_string_equal(c2_attr_str(t->spans[3].span, "cost.budget.status"), "exceeded");
    assert_string_equal(b->events[1].kind, "budget.threshold");
    assert_true(b->events[1].threshold == 1.0);
    assert_int_equal(b->events[1].amount, 60000000);
    assert_int_equal(b->events[1].limit, 50000000);
    am_batch_unref(b);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

static void test_restart_keeps_spent(void **state)
{
    (void)state;
    char dir[] = "/tmp/am-budget-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char yaml[600], path[300];
    snprintf(path, sizeof(path), "%s/budgets.json", dir);
    snprintf(yaml, sizeof(yaml),
             "state_file: %s\n"
             "budgets: [{name: daily, scope: tenant.id, window: day, limit: 1.00}]\n",
             path);
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/state", yaml, 3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = spend_batch(1, "tenant.id", "acme", 850000000);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 1);
    am__budget_tick(g.inst[1]);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    assert_int_equal(access(path, R_OK), 0);

    c2_group_create(&g, &am_processor_budget_ops, "budget/state", yaml, 3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(3600));
    json_object *o = api(&g, "/v1/budgets/daily/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.85");
    assert_string_equal(c2_get(o, "status"), "warning");
    json_object_put(o);
    b = spend_batch(2, "tenant.id", "acme", 100000000);
    c2_consume(&g, 2, b);
    assert_string_equal(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"),
                        "warning");
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 1); /* 0.8 is not reported twice */
    b = spend_batch(3, "tenant.id", "acme", 100000000);
    c2_consume(&g, 1, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 2);
    o = c2_event(&cap, 1);
    assert_string_equal(c2_get(o, "threshold"), "1");
    assert_string_equal(c2_get(o, "spent"), "1.05");
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_corrupt_state_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/am-budget-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char yaml[600], path[300], cmd[700];
    snprintf(path, sizeof(path), "%s/budgets.json", dir);
    snprintf(yaml, sizeof(yaml),
             "state_file: %s\n"
             "budgets: [{name: daily, scope: tenant.id, window: day, limit: 1.00}]\n",
             path);
    FILE *f = fopen(path, "w");
    fputs("{\"version\":1,\"budgets\":[{\"budget\":\"daily\",\"key\":\"acme\",\"spent\":\"9x\"}]}",
          f);
    fclose(f);
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/corrupt", yaml, 2, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    json_object *o = api(&g, "/v1/budgets/daily/acme", 404);
    json_object_put(o);
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(cmd, sizeof(cmd), "ls %s/budgets.json.corrupt-* >/dev/null 2>&1", dir);
    assert_int_equal(system(cmd), 0);
    /* It keeps working, and writes a good file at shutdown. */
    am_batch_t *b = spend_batch(1, "tenant.id", "acme", 10);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    assert_int_equal(access(path, R_OK), 0);
    c2_capture_free(&cap);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A config reload (new service, old one shut down, new one started) keeps
 * the spend of every key without a state_file, and no threshold is
 * reported twice. */
static void test_reload_keeps_spent(void **state)
{
    (void)state;
    static const char yaml[] =
        "budgets:\n"
        "  - {name: tenant-daily, scope: tenant.id, window: day, limit: 0.02}\n";
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/reload", yaml, 3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    for (uint32_t i = 0; i < 2; i++) {
        am_batch_t *b = spend_batch(i + 1, "tenant.id", "acme", 12500000);
        c2_consume(&g, (int)i, b);
        am_batch_unref(b);
    }
    assert_int_equal(cap.n_events, 2); /* 0.8 and 1.0 on the second call */
    /* The reload: the old group shuts down, a new one of the same id starts. */
    c2_group_shutdown(&g);
    c2_group_destroy(&g);

    c2_group_create(&g, &am_processor_budget_ops, "budget/reload", yaml, 3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(60));
    json_object *o = api(&g, "/v1/budgets/tenant-daily/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.025");
    assert_string_equal(c2_get(o, "status"), "exceeded");
    assert_string_equal(c2_get(o, "window_start"), "2026-03-14T00:00:00.000Z");
    json_object_put(o);
    am_batch_t *b = spend_batch(3, "tenant.id", "acme", 12500000);
    c2_consume(&g, 1, b);
    assert_string_equal(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"),
                        "exceeded");
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 2); /* never repeated */
    assert_int_equal(total_events(&g), 0);
    o = api(&g, "/v1/budgets/tenant-daily/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.0375");
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

/* Definitions changed by the reload: a removed name is dropped, a changed
 * type starts from zero, an unchanged budget keeps spend and crossings, a
 * changed limit keeps spend and reports its thresholds once on the next
 * spend. */
static void test_reload_changed_definitions(void **state)
{
    (void)state;
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/redef",
                    "budgets:\n"
                    "  - {name: same, scope: tenant.id, window: day, limit: 1.00}\n"
                    "  - {name: relimit, scope: tenant.id, window: day, limit: 1.00}\n"
                    "  - {name: retype, scope: tenant.id, window: day, limit: 1.00}\n"
                    "  - {name: gone, scope: tenant.id, window: day, limit: 1.00}\n",
                    2, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = spend_batch(1, "tenant.id", "acme", 850000000);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 4); /* 0.8 of each */
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_clear(&cap);

    c2_group_create(&g, &am_processor_budget_ops, "budget/redef",
                    "budgets:\n"
                    "  - {name: same, scope: tenant.id, window: day, limit: 1.00}\n"
                    "  - {name: relimit, scope: tenant.id, window: day, limit: 0.50}\n"
                    "  - {name: retype, scope: tenant.id, window: day, type: tokens, "
                    "limit: 1000}\n"
                    "  - {name: fresh, scope: tenant.id, window: day, limit: 1.00}\n",
                    2, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(60));
    json_object *o = api(&g, "/v1/budgets/same/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.85");
    assert_string_equal(c2_get(o, "status"), "warning");
    json_object_put(o);
    o = api(&g, "/v1/budgets/relimit/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.85");
    assert_string_equal(c2_get(o, "limit"), "0.5");
    assert_string_equal(c2_get(o, "status"), "exceeded");
    json_object_put(o);
    o = api(&g, "/v1/budgets/retype/acme", 404);
    json_object_put(o);
    o = api(&g, "/v1/budgets/gone/acme", 404);
    assert_string_equal(c2_get(o, "error"), "unknown budget");
    json_object_put(o);
    o = api(&g, "/v1/budgets/fresh/acme", 404);
    json_object_put(o);
    b = spend_batch(2, "tenant.id", "acme", 10000000);
    c2_consume(&g, 1, b);
    am_batch_unref(b);
    /* Only the re-limited budget reports, 0.8 and 1.0 of its new limit. */
    assert_int_equal(cap.n_events, 2);
    assert_int_equal(c2_count(&cap, "budget.threshold", "budget", "relimit"), 2);
    assert_int_equal(c2_count(&cap, "budget.threshold", "spent", "0.86"), 2);
    assert_int_equal(c2_count(&cap, "budget.threshold", "status", "exceeded"), 1);
    o = api(&g, "/v1/budgets/same/acme", 200);
    assert_string_equal(c2_get(o, "spent"), "0.86");
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

/* Keys longer than any fixed buffer stay distinct: two 1200-character
 * session ids that differ only at the end each spend $3 of a $5 cap. */
static void test_long_keys_stay_distinct(void **state)
{
    (void)state;
    char a[1201], z[1201], path[1400];
    memset(a, 's', 1200);
    memset(z, 's', 1200);
    a[1200] = z[1200] = '\0';
    a[1199] = 'a';
    z[1199] = 'z';
    c2_capture_t cap;
    c2_capture_init(&cap);
    c2_group_t g;
    c2_group_create(&g, &am_processor_budget_ops, "budget/long",
                    "budgets:\n"
                    "  - {name: session-cap, scope: session.id, window: session, limit: 5.00}\n",
                    3, &cap.consumer);
    set_clocks(&g);
    atomic_store(&c2_now_ns, c2_time(0));
    am_batch_t *b = spend_batch(1, "session.id", a, 3 * AM_MONEY_SCALE);
    c2_consume(&g, 0, b);
    am_batch_unref(b);
    b = spend_batch(2, "session.id", z, 3 * AM_MONEY_SCALE);
    c2_consume(&g, 1, b);
    assert_null(c2_attr_str(b->trace_index[0].spans[1].span, "cost.budget.status"));
    am_batch_unref(b);
    assert_int_equal(cap.n_events, 0);
    assert_int_equal(total_events(&g), 0);
    snprintf(path, sizeof(path), "/v1/budgets/session-cap/%s", a);
    json_object *o = api(&g, path, 200);
    assert_string_equal(c2_get(o, "spent"), "3");
    assert_string_equal(c2_get(o, "status"), "ok");
    assert_int_equal(strlen(c2_get(o, "key")), 1200);
    json_object_put(o);
    snprintf(path, sizeof(path), "/v1/budgets/session-cap/%s", z);
    o = api(&g, path, 200);
    assert_string_equal(c2_get(o, "spent"), "3");
    json_object_put(o);
    /* A prefix of a long key is another key. */
    snprintf(path, sizeof(path), "/v1/budgets/session-cap/%.1100s", a);
    o = api(&g, path, 404);
    json_object_put(o);
    c2_group_shutdown(&g);
    c2_group_destroy(&g);
    c2_capture_free(&cap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crossing_once_under_concurrency),
        cmocka_unit_test(test_day_window_across_midnight),
        cmocka_unit_test(test_month_window_across_month_end),
        cmocka_unit_test(test_api_answers),
        cmocka_unit_test(test_trace_window),
        cmocka_unit_test(test_restart_keeps_spent),
        cmocka_unit_test(test_corrupt_state_file),
        cmocka_unit_test(test_reload_keeps_spent),
        cmocka_unit_test(test_reload_changed_definitions),
        cmocka_unit_test(test_long_keys_stay_distinct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
