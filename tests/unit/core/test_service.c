/*
 * Service graph checks, as an operator meets them in `agentmeter validate`:
 * every mistake in the pipeline wiring is reported with file:line and the
 * key, and a good graph builds (and starts and drains) cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_service.h"

/* Build a service from YAML; return the errors (caller clears them). */
static am_service_t *build(const char *yaml, am_errors_t *errs)
{
    am_config_t *config = am_config_load_buffer("svc.yaml", yaml, strlen(yaml), errs);
    assert_non_null(config);
    am_service_opts_t opts = {.shards = 2, .skip_telemetry = true};
    return am_service_build(config, &opts, errs);
}

static bool has_error(const am_errors_t *errs, const char *where, const char *text)
{
    for (size_t i = 0; i < errs->count; i++) {
        if (strncmp(errs->msgs[i], where, strlen(where)) == 0 && strstr(errs->msgs[i], text)) {
            return true;
        }
    }
    return false;
}

static void expect_error(const char *yaml, const char *where, const char *text)
{
    am_errors_t errs = {0};
    am_service_t *svc = build(yaml, &errs);
    assert_null(svc);
    if (!has_error(&errs, where, text)) {
        for (size_t i = 0; i < errs.count; i++) {
            print_error("  got: %s\n", errs.msgs[i]);
        }
        fail_msg("expected an error at %s containing \"%s\"", where, text);
    }
    am_errors_clear(&errs);
}

static void test_pipeline_without_receivers_or_exporters(void **state)
{
    (void)state;
    expect_error("exporters: { debug: {} }\n"
                 "service:\n"
                 "  pipelines:\n"
                 "    traces: { exporters: [debug] }\n",
                 "svc.yaml:4:", "must have at least one receiver");
    expect_error("receivers: { otlp: {} }\n"
                 "service:\n"
                 "  pipelines:\n"
                 "    traces: { receivers: [otlp] }\n",
                 "svc.yaml:4:", "must have at least one exporter");
    expect_error("receivers: { otlp: {} }\nexporters: { debug: {} }\nservice: {}\n", "svc.yaml",
                 "at least one pipeline");
}

static void test_dangling_reference_and_suggestion(void **state)
{
    (void)state;
    expect_error("receivers: { otlp: {} }\n"
                 "exporters: { debug: {} }\n"
                 "processors: { tracetree: {} }\n"
                 "service:\n"
                 "  pipelines:\n"
                 "    traces:\n"
                 "      receivers: [otlp]\n"
                 "      processors: [tracetre]\n"
                 "      exporters: [debug]\n",
                 "svc.yaml:8:", "did you mean \"tracetree\"");
}

static void test_unknown_signal_and_type(void **state)
{
    (void)state;
    expect_error("receivers: { otlp: {} }\n"
                 "exporters: { debug: {} }\n"
                 "service:\n"
                 "  pipelines:\n"
                 "    trace: { receivers: [otlp], exporters: [debug] }\n",
                 "svc.yaml:5:", "did you mean \"traces\"");
    expect_error("receivers: { otlpp: {} }\n", "svc.yaml:1:", "did you mean \"otlp\"");
}

static void test_signal_mismatch(void **state)
{
    (void)state;
    /* The otlp receiver produces traces only. */
    expect_error("receivers: { otlp: {} }\n"
                 "exporters: { prometheus: {} }\n"
                 "service:\n"
                 "  pipelines:\n"
                 "    metrics: { receivers: [otlp], exporters: [prometheus] }\n",
                 "svc.yaml:5:", "does not support metrics");
}

static void test_connector_must_be_used_both_ways(void **state)
{
    (void)state;
    expect_error("receivers: { otlp: {} }\n"
                 "connectors: { costmetrics: {} }\n"
                 "exporters: { debug: {} }\n"
                 "service:\n"
                 "  pipelines:\n"
                 "    traces: { receivers: [otlp], exporters: [debug, costmetrics] }\n",
                 "svc.yaml:2:", "used as an exporter in one pipeline and as a receiver");
}

static void test_good_graph_starts_and_drains(void **state)
{
    (void)state;
    const char *yaml = "receivers:\n"
                       "  otlp: { protocols: { http: { endpoint: \"127.0.0.1:0\" } } }\n"
                       "processors: { tracetree: {}, propagate: {}, ratecard: {}, rollup: {} }\n"
                       "connectors: { costmetrics: {} }\n"
                       "exporters: { debug: { verbosity: quiet } }\n"
                       "service:\n"
                       "  pipelines:\n"
                       "    traces:\n"
                       "      receivers: [otlp]\n"
                       "      processors: [tracetree, propagate, ratecard, rollup]\n"
                       "      exporters: [debug, costmetrics]\n"
                       "    metrics: { receivers: [costmetrics], exporters: [debug] }\n"
                       "    logs: { receivers: [costmetrics], exporters: [debug] }\n";
    am_errors_t errs = {0};
    am_service_t *svc = build(yaml, &errs);
    assert_int_equal(errs.count, 0);
    assert_non_null(svc);
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_int_equal(am_service_start(svc, &loop), 0);
    assert_true(am_service_ready(svc));
    assert_non_null(am_service_shards(svc));
    am_service_shutdown(svc);
    am_service_shutdown(svc); /* idempotent */
    assert_false(am_service_ready(svc));
    uv_run(&loop, UV_RUN_DEFAULT);
    am_service_free(svc);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_without_receivers_or_exporters),
        cmocka_unit_test(test_dangling_reference_and_suggestion),
        cmocka_unit_test(test_unknown_signal_and_type),
        cmocka_unit_test(test_signal_mismatch),
        cmocka_unit_test(test_connector_must_be_used_both_ways),
        cmocka_unit_test(test_good_graph_starts_and_drains),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
