/*
 * propagate: attribution keys set near the root reach every span below it;
 * a span's own value stays unless overwrite; roots and spans with nothing
 * above fall back to their resource; session.id and user.id are filled from
 * the §5 aliases; a late span still gets its session and tenant; deep
 * chains need no recursion.  Trees come from a real tracetree instance.
 */
#include "processors/tracetree/span_builder.h"

#include "am_options.h"
#include "processors/propagate/propagate_internal.h"
#include "processors/tracetree/tracetree_internal.h"

extern const am_component_ops_t am_processor_tracetree_ops;
extern const am_component_ops_t am_processor_propagate_ops;
#define TT (&am_processor_tracetree_ops)
#define PROP (&am_processor_propagate_ops)

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

static const char *default_attrs[] = {"session.id", "user.id", "tenant.id", "gen_ai.agent.name"};

typedef struct chain {
    uv_loop_t loop;
    sb_capture_t cap;
    sb_stage_t stage;
    tracetree_config_t tcfg;
    propagate_config_t pcfg;
    void *tt;
    void *prop;
} chain_t;

/* tracetree -> propagate -> capture. */
static void chain_open(chain_t *c, const char **attrs, size_t n_attrs, bool overwrite)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    sb_capture_init(&c->cap);
    c->pcfg.attributes.items = (char **)attrs;
    c->pcfg.attributes.count = n_attrs;
    c->pcfg.overwrite = overwrite;
    c->pcfg.late_cache = 100;
    am_create_params_t pparams = {.id = "propagate",
                                  .config = &c->pcfg,
                                  .loop = &c->loop,
                                  .next = &c->cap.consumer,
                                  .n_shards = 1};
    assert_int_equal(PROP->create(&pparams, &c->prop), 0);
    sb_stage_init(&c->stage, PROP, c->prop);
    c->tcfg = (tracetree_config_t){
        .wait_ms = 2000, .max_wait_ms = 30000, .max_traces = 1000, .late_cache = 100};
    am_create_params_t tparams = {.id = "tracetree",
                                  .config = &c->tcfg,
                                  .loop = &c->loop,
                                  .next = &c->stage.consumer,
                                  .n_shards = 1};
    assert_int_equal(TT->create(&tparams, &c->tt), 0);
    tracetree__set_clock(c->tt, fake_clock);
    assert_int_equal(TT->start(c->tt), 0);
    fake_now = 5000;
}

static void chain_feed(chain_t *c, am_batch_t *batch)
{
    assert_int_equal(TT->consume(c->tt, batch), AM_OK);
    am_batch_unref(batch);
}

static void chain_emit(chain_t *c)
{
    fake_now += 2000;
    tracetree__tick(c->tt, fake_now);
}

static void chain_close(chain_t *c)
{
    TT->shutdown(c->tt);
    assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
    TT->destroy(c->tt);
    PROP->destroy(c->prop);
    assert_int_equal(uv_loop_close(&c->loop), 0);
    sb_capture_free(&c->cap);
}

static const char *attr(chain_t *c, uint32_t trace_no, uint64_t span_no, const char *key)
{
    sb_found_t found = sb_find(&c->cap, trace_no, span_no);
    assert_non_null(found.ref);
    return sb_str_attr(found.ref->span, key);
}

static void send_agent_trace(chain_t *c)
{
    sb_req_t b;
    sb_begin(&b);
    sb_resource(&b, "service.name", "frontend", "tenant.id", "acme", NULL);
    sb_span(&b, 1, 1, 0, "invoke_agent", "session.id", "s-1", "user.id", "u-1", "gen_ai.agent.name",
            "planner", NULL);
    sb_resource(&b, "service.name", "tools", NULL);
    sb_span(&b, 1, 3, 2, "execute_tool", "user.id", "u-3", NULL);
    sb_span(&b, 1, 2, 1, "chat", NULL);
    chain_feed(c, sb_finish(&b));
    chain_emit(c);
    assert_int_equal(c->cap.n, 1);
}

static void test_copied_down_without_overwrite(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    send_agent_trace(&c);
    /* The root takes tenant.id from its own resource. */
    assert_string_equal(attr(&c, 1, 1, "tenant.id"), "acme");
    for (uint64_t s = 2; s <= 3; s++) {
        assert_string_equal(attr(&c, 1, s, "session.id"), "s-1");
        assert_string_equal(attr(&c, 1, s, "tenant.id"), "acme");
        assert_string_equal(attr(&c, 1, s, "gen_ai.agent.name"), "planner");
    }
    assert_string_equal(attr(&c, 1, 2, "user.id"), "u-1");
    assert_string_equal(attr(&c, 1, 3, "user.id"), "u-3"); /* its own stays */

    /* Copied by pointer: the child's value is the root's AnyValue content. */
    sb_found_t root = sb_find(&c.cap, 1, 1), child = sb_find(&c.cap, 1, 3);
    const am_pb_anyvalue_t *rv =
        am_attr_find(root.ref->span->attributes, root.ref->span->n_attributes, "session.id");
    const am_pb_anyvalue_t *cv =
        am_attr_find(child.ref->span->attributes, child.ref->span->n_attributes, "session.id");
    assert_ptr_equal(rv->string_value, cv->string_value);
    chain_close(&c);
}

static void test_overwrite_makes_ancestors_win(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, true);
    send_agent_trace(&c);
    assert_string_equal(attr(&c, 1, 3, "user.id"), "u-1");
    assert_string_equal(attr(&c, 1, 2, "user.id"), "u-1");
    assert_string_equal(attr(&c, 1, 1, "user.id"), "u-1");
    chain_close(&c);
}

static void test_resource_fallback(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    sb_req_t b;
    sb_begin(&b);
    /* Nothing above span 10 has tenant.id: it uses its own resource. */
    sb_resource(&b, "service.name", "a", NULL);
    sb_span(&b, 2, 1, 0, "root without tenant", NULL);
    sb_resource(&b, "service.name", "b", "tenant.id", "globex", NULL);
    sb_span(&b, 2, 10, 1, "child with a tenant resource", NULL);
    sb_span(&b, 2, 11, 10, "grandchild", NULL);
    /* An ancestor's span value wins over a descendant's resource value. */
    sb_resource(&b, "tenant.id", "initech", NULL);
    sb_span(&b, 3, 1, 0, "root", "tenant.id", "acme", NULL);
    sb_resource(&b, "tenant.id", "other", NULL);
    sb_span(&b, 3, 2, 1, "child", NULL);
    chain_feed(&c, sb_finish(&b));
    chain_emit(&c);
    assert_null(attr(&c, 2, 1, "tenant.id"));
    assert_string_equal(attr(&c, 2, 10, "tenant.id"), "globex");
    assert_string_equal(attr(&c, 2, 11, "tenant.id"), "globex");
    assert_string_equal(attr(&c, 3, 1, "tenant.id"), "acme");
    assert_string_equal(attr(&c, 3, 2, "tenant.id"), "acme");
    chain_close(&c);
}

static void test_section5_fallbacks(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 4, 1, 0, "invoke_agent", "gen_ai.conversation.id", "conv-9", "enduser.id", "eu-1",
            NULL);
    sb_span(&b, 4, 2, 1, "chat", NULL);
    sb_span(&b, 4, 3, 1, "chat", "langfuse.session.id", "lf-2", NULL);
    sb_span(&b, 4, 4, 1, "chat", "session.id", "", NULL); /* empty = missing */
    sb_resource(&b, "traceloop.association.properties.session_id", "tl-1", "langfuse.user.id",
                "lu-1", NULL);
    sb_span(&b, 5, 1, 0, "workflow", NULL);
    chain_feed(&c, sb_finish(&b));
    chain_emit(&c);
    assert_string_equal(attr(&c, 4, 1, "session.id"), "conv-9");
    assert_string_equal(attr(&c, 4, 1, "user.id"), "eu-1");
    assert_string_equal(attr(&c, 4, 2, "session.id"), "conv-9");
    assert_string_equal(attr(&c, 4, 2, "user.id"), "eu-1");
    assert_string_equal(attr(&c, 4, 3, "session.id"), "lf-2"); /* its own alias */
    assert_string_equal(attr(&c, 4, 4, "session.id"), "conv-9");
    assert_string_equal(attr(&c, 5, 1, "session.id"), "tl-1");
    assert_string_equal(attr(&c, 5, 1, "user.id"), "lu-1");
    chain_close(&c);
}

static void test_fallbacks_without_propagation(void **state)
{
    (void)state;
    static const char *tenant_only[] = {"tenant.id"};
    chain_t c;
    chain_open(&c, tenant_only, 1, false);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 6, 1, 0, "root", "gen_ai.conversation.id", "conv-1", "tenant.id", "acme", NULL);
    sb_span(&b, 6, 2, 1, "child", NULL);
    chain_feed(&c, sb_finish(&b));
    chain_emit(&c);
    assert_string_equal(attr(&c, 6, 1, "session.id"), "conv-1");
    assert_string_equal(attr(&c, 6, 2, "tenant.id"), "acme");
    /* session.id is not configured for propagation: the child has no alias. */
    assert_null(attr(&c, 6, 2, "session.id"));
    chain_close(&c);
}

static void test_late_span_gets_session_and_tenant(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    send_agent_trace(&c);
    /* Late spans, from a resource that knows nothing; their trace's batch
     * (and its arena) is long gone from the capture. */
    sb_capture_clear(&c.cap);
    fake_now += 60000;
    sb_req_t b;
    sb_begin(&b);
    sb_resource(&b, "service.name", "slow-tool", NULL);
    sb_span(&b, 1, 4, 2, "late tool call", NULL);
    sb_span(&b, 1, 5, 4, "its child", NULL);
    sb_span(&b, 1, 6, 2, "late, own session", "session.id", "mine", NULL);
    chain_feed(&c, sb_finish(&b));
    assert_int_equal(c.cap.n, 1);
    assert_int_equal(c.cap.batches[0]->trace_index[0].flags, AM_SPANREF_LATE);
    for (uint64_t s = 4; s <= 5; s++) {
        assert_string_equal(attr(&c, 1, s, "session.id"), "s-1");
        assert_string_equal(attr(&c, 1, s, "tenant.id"), "acme");
        assert_string_equal(attr(&c, 1, s, "user.id"), "u-1");
        assert_string_equal(attr(&c, 1, s, "gen_ai.agent.name"), "planner");
    }
    assert_string_equal(attr(&c, 1, 6, "session.id"), "mine");
    assert_string_equal(attr(&c, 1, 6, "tenant.id"), "acme");
    chain_close(&c);
}

static void test_orphan_root_of_known_trace(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    send_agent_trace(&c);
    /* A tree index made elsewhere (no LATE flag) with an orphan root of an
     * already seen trace: the orphan inherits from the cache too. */
    sb_capture_clear(&c.cap);
    am_batch_t *out = am_batch_new(AM_SIGNAL_TRACES);
    sb_req_t b;
    sb_begin(&b);
    sb_span(&b, 1, 9, 2, "orphan", NULL);
    am_batch_t *in = sb_finish(&b);
    am_batch_hold_arena(out, in->arena);
    out->trace_index = am_arena_calloc(out->arena, 1, sizeof(am_trace_t));
    out->n_traces = 1;
    am_trace_t *trace = &out->trace_index[0];
    sb_trace_id(1, trace->trace_id);
    trace->spans = am_arena_calloc(out->arena, 1, sizeof(am_span_ref_t));
    trace->spans[0] =
        (am_span_ref_t){.span = in->traces->resource_spans[0]->scope_spans[0]->spans[0],
                        .resource = in->traces->resource_spans[0]->resource,
                        .parent = AM_SPAN_NONE,
                        .first_child = AM_SPAN_NONE,
                        .next_sibling = AM_SPAN_NONE,
                        .flags = AM_SPANREF_ORPHAN};
    trace->n_spans = 1;
    trace->roots = am_arena_calloc(out->arena, 1, sizeof(uint32_t));
    trace->n_roots = 1;
    am_batch_unref(in);
    assert_int_equal(PROP->consume(c.prop, out), AM_OK);
    assert_string_equal(sb_str_attr(trace->spans[0].span, "session.id"), "s-1");
    assert_string_equal(sb_str_attr(trace->spans[0].span, "tenant.id"), "acme");
    am_batch_unref(out);
    chain_close(&c);
}

static void test_batch_without_index_passes(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    sb_req_t b;
    sb_begin(&b);
    sb_resource(&b, "tenant.id", "acme", NULL);
    sb_span(&b, 1, 1, 0, "root", NULL);
    am_batch_t *batch = sb_finish(&b);
    assert_int_equal(PROP->consume(c.prop, batch), AM_OK);
    assert_int_equal(c.cap.n, 1);
    assert_ptr_equal(c.cap.batches[0], batch);
    assert_int_equal(batch->traces->resource_spans[0]->scope_spans[0]->spans[0]->n_attributes, 0);
    am_batch_unref(batch);
    chain_close(&c);
}

static void test_deep_chain(void **state)
{
    (void)state;
    chain_t c;
    chain_open(&c, default_attrs, 4, false);
    const uint64_t depth = 100000;
    sb_req_t b;
    sb_begin(&b);
    sb_resource(&b, "tenant.id", "acme", NULL);
    /* Deepest first, root last. */
    for (uint64_t s = depth; s >= 1; s--) {
        if (s == 1) {
            sb_span(&b, 8, 1, 0, "root", "session.id", "deep", NULL);
        } else {
            sb_span(&b, 8, s, s - 1, "step", NULL);
        }
    }
    chain_feed(&c, sb_finish(&b));
    chain_emit(&c);
    assert_int_equal(sb_capture_spans(&c.cap), depth);
    assert_int_equal(sb_capture_traces(&c.cap), 1);
    am_trace_t *trace = &c.cap.batches[0]->trace_index[0];
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        assert_string_equal(sb_str_attr(trace->spans[i].span, "session.id"), "deep");
    }
    chain_close(&c);
}

static void test_options_defaults(void **state)
{
    (void)state;
    propagate_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    am_errors_t errs = {0};
    assert_int_equal(PROP->config_size, sizeof(cfg));
    assert_int_equal(am_options_parse(PROP->options, &cfg, NULL, "processors.propagate", &errs), 0);
    assert_int_equal(cfg.attributes.count, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(cfg.attributes.items[i], default_attrs[i]);
    }
    assert_false(cfg.overwrite);
    assert_int_equal(cfg.late_cache, 100000);
    am_options_free(PROP->options, &cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copied_down_without_overwrite),
        cmocka_unit_test(test_overwrite_makes_ancestors_win),
        cmocka_unit_test(test_resource_fallback),
        cmocka_unit_test(test_section5_fallbacks),
        cmocka_unit_test(test_fallbacks_without_propagation),
        cmocka_unit_test(test_late_span_gets_session_and_tenant),
        cmocka_unit_test(test_orphan_root_of_known_trace),
        cmocka_unit_test(test_batch_without_index_passes),
        cmocka_unit_test(test_deep_chain),
        cmocka_unit_test(test_options_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
