/*
 * test_prometheus.c - what a scraper reads: the metric set rendered as text
 * format 0.0.4 (HELP and TYPE per family, sorted labels, escaping, classic
 * histograms, shortest exact numbers), label and metric names sanitized, and
 * the `prometheus` exporter serving the newest snapshot at /metrics while
 * ignoring batches of other signals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "am_component.h"
#include "am_metrics.h"

extern const am_component_ops_t am_exporter_prometheus_ops;
#define OPS (&am_exporter_prometheus_ops)

static void test_sanitize(void **state)
{
    (void)state;
    char buf[64];
    assert_string_equal(am_metric_label_name("gen_ai.provider.name", buf, sizeof(buf)),
                        "gen_ai_provider_name");
    assert_string_equal(am_metric_label_name("9lives", buf, sizeof(buf)), "_9lives");
    assert_string_equal(am_metric_label_name("__name__", buf, sizeof(buf)), "key__name__");
    assert_string_equal(am_metric_label_name(".x", buf, sizeof(buf)), "_x");
    assert_string_equal(am_metric_label_name("", buf, sizeof(buf)), "_");
    assert_string_equal(am_metric_label_name("k8s-pod/name:x", buf, sizeof(buf)), "k8s_pod_name_x");
    assert_string_equal(am_metric_name("agent.cost:total", buf, sizeof(buf)), "agent_cost:total");
    assert_string_equal(am_metric_name("1x", buf, sizeof(buf)), "_1x");
    assert_true(am_metric_label_name_valid("tenant_id"));
    assert_false(am_metric_label_name_valid("tenant.id"));
    assert_false(am_metric_label_name_valid("1a"));
    assert_false(am_metric_label_name_valid("a:b"));
    assert_true(am_metric_name_valid("a:b"));
}

static void test_format_value(void **state)
{
    (void)state;
    char buf[AM_METRIC_VALUE_STRLEN];
    assert_string_equal(am_metric_format_value(0.1, buf), "0.1");
    assert_string_equal(am_metric_format_value(3, buf), "3");
    assert_string_equal(am_metric_format_value(0.0001, buf), "0.0001");
    assert_string_equal(am_metric_format_value(1e-9, buf), "1e-09");
    assert_string_equal(am_metric_format_value(123.456789012, buf), "123.456789012");
    assert_string_equal(am_metric_format_value(1e20, buf), "1e+20");
    assert_string_equal(am_metric_format_value(1.0 / 0.0, buf), "+Inf");
    assert_string_equal(am_metric_format_value(-1.0 / 0.0, buf), "-Inf");
    assert_string_equal(am_metric_format_value(0.0 / 0.0, buf), "NaN");
    /* exact round trip for the double view of any nano-unit amount */
    for (int64_t nanos = 1; nanos < 2000000000; nanos = nanos * 7 + 3) {
        double v = am_money_to_double(nanos);
        assert_true(strtod(am_metric_format_value(v, buf), NULL) == v);
    }
}

static am_metric_set_t *sample_set(void)
{
    am_metric_set_t *set = am_metric_set_new(1700000000123);
    am_metric_family_t *cost = am_metric_set_family(
        set, "agent_cost_total", "Cost \\ in currency\nunits.", "", AM_METRIC_COUNTER, NULL, 0);
    am_label_t labels[] = {
        {"tenant.id", "ac\"me\\\n"}, {"currency", "USD"},       {"empty", ""},
        {"currency", "dup-ignored"}, {"model", "bad\xff utf8"},
    };
    assert_non_null(
        am_metric_add_value(cost, labels, AM_ARRAY_SIZE(labels), 0.0125, set->timestamp_ms));
    am_metric_family_t *spent =
        am_metric_set_family(set, "agent_budget_spent", "Spent.", "", AM_METRIC_GAUGE, NULL, 0);
    assert_non_null(am_metric_add_value(spent, NULL, 0, 3, set->timestamp_ms));
    const double bounds[] = {0.01, 1};
    am_metric_family_t *hist = am_metric_set_family(set, "agent_trace_cost", "Trace cost.", "",
                                                    AM_METRIC_HISTOGRAM, bounds, 2);
    const uint64_t cumulative[] = {1, 3};
    am_label_t hl[] = {{"currency", "USD"}};
    assert_non_null(am_metric_add_histogram(hist, hl, 1, cumulative, 1.25, 4, 42));
    /* the same name again returns the same family */
    assert_ptr_equal(
        am_metric_set_family(set, "agent_trace_cost", "x", "", AM_METRIC_GAUGE, NULL, 0), hist);
    /* invalid bounds are refused */
    const double bad[] = {1, 1};
    assert_null(am_metric_set_family(set, "h2", "", "", AM_METRIC_HISTOGRAM, bad, 2));
    return set;
}

static void test_render_text(void **state)
{
    (void)state;
    am_metric_set_t *set = sample_set();
    size_t len = 0;
    char *text = am_metric_set_render_text(set, false, &len);
    const char *expected = "# HELP agent_cost_total Cost \\\\ in currency\\nunits.\n"
                           "# TYPE agent_cost_total counter\n"
                           "agent_cost_total{currency=\"USD\",model=\"bad\xef\xbf\xbd utf8\","
                           "tenant_id=\"ac\\\"me\\\\\\n\"} 0.0125\n"
                           "# HELP agent_budget_spent Spent.\n"
                           "# TYPE agent_budget_spent gauge\n"
                           "agent_budget_spent 3\n"
                           "# HELP agent_trace_cost Trace cost.\n"
                           "# TYPE agent_trace_cost histogram\n"
                           "agent_trace_cost_bucket{currency=\"USD\",le=\"0.01\"} 1\n"
                           "agent_trace_cost_bucket{currency=\"USD\",le=\"1\"} 3\n"
                           "agent_trace_cost_bucket{currency=\"USD\",le=\"+Inf\"} 4\n"
                           "agent_trace_cost_sum{currency=\"USD\"} 1.25\n"
                           "agent_trace_cost_count{currency=\"USD\"} 4\n";
    assert_string_equal(text, expected);
    assert_int_equal(len, strlen(expected));
    am_free(text);
    text = am_metric_set_render_text(set, true, NULL);
    assert_non_null(strstr(text, "agent_budget_spent 3 1700000000123\n"));
    assert_non_null(strstr(text, "agent_trace_cost_count{currency=\"USD\"} 4 42\n"));
    am_free(text);
    text = am_metric_set_render_text(NULL, false, &len);
    assert_string_equal(text, "");
    am_free(text);
    am_metric_set_unref(set);
}

static void test_batch_attach(void **state)
{
    (void)state;
    am_metric_set_t *set = sample_set();
    am_metric_set_ref(set);
    am_batch_t *batch = am_metrics_batch_new(set);
    assert_int_equal(batch->signal, AM_SIGNAL_METRICS);
    assert_ptr_equal(batch->metrics, set);
    assert_int_equal(atomic_load(&set->refcount), 2);
    am_batch_unref(batch);
    assert_int_equal(atomic_load(&set->refcount), 1);
    am_metric_set_unref(set);
}

/* ---- the exporter, scraped with libcurl from this thread ----------------------------- */

typedef struct server {
    uv_loop_t loop;
    uv_async_t stop;
    uv_thread_t thread;
    void *instance;
} server_t;

static void on_stop(uv_async_t *async)
{
    server_t *srv = async->data;
    OPS->shutdown(srv->instance);
    uv_close((uv_handle_t *)async, NULL);
}

static void run_loop(void *arg)
{
    server_t *srv = arg;
    uv_run(&srv->loop, UV_RUN_DEFAULT);
}

static size_t collect(char *data, size_t size, size_t n, void *user)
{
    char **out = user;
    size_t old = *out != NULL ? strlen(*out) : 0;
    *out = realloc(*out, old + size * n + 1);
    memcpy(*out + old, data, size * n);
    (*out)[old + size * n] = '\0';
    return size * n;
}

static long scrape(int port, const char *path, char **body, char **content_type)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    CURL *curl = curl_easy_init();
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
    long code = 0;
    assert_int_equal(curl_easy_perform(curl), CURLE_OK);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    char *ct = NULL;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct);
    if (content_type != NULL) {
        *content_type = ct != NULL ? strdup(ct) : NULL;
    }
    curl_easy_cleanup(curl);
    return code;
}

static int free_port(void)
{
    /* Bind port 0 through libuv to learn a free port. */
    uv_loop_t loop;
    uv_tcp_t tcp;
    struct sockaddr_in addr;
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &tcp);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_bind(&tcp, (const struct sockaddr *)&addr, 0);
    struct sockaddr_in bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&tcp, (struct sockaddr *)&bound, &len);
    uv_close((uv_handle_t *)&tcp, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return ntohs(bound.sin_port);
}

static void test_exporter_serves_latest(void **state)
{
    (void)state;
    int port = free_port();
    char yaml[128];
    snprintf(yaml, sizeof(yaml), "endpoint: \"127.0.0.1:%d\"", port);
    am_errors_t errs = {0};
    am_config_t *conf = am_config_load_buffer("prom.yaml", yaml, strlen(yaml), &errs);
    void *cfg = calloc(1, OPS->config_size);
    am_options_parse(OPS->options, cfg, am_config_root(conf), "exporters.prometheus", &errs);
    assert_int_equal(errs.count, 0);
    server_t srv;
    memset(&srv, 0, sizeof(srv));
    uv_loop_init(&srv.loop);
    am_create_params_t params = {.id = "prometheus",
                                 .config = cfg,
                                 .loop = &srv.loop,
                                 .signal = AM_SIGNAL_METRICS,
                                 .shard = -1};
    assert_int_equal(OPS->create(&params, &srv.instance), 0);
    assert_int_equal(OPS->start(srv.instance), 0);
    uv_async_init(&srv.loop, &srv.stop, on_stop);
    srv.stop.data = &srv;
    uv_thread_create(&srv.thread, run_loop, &srv);

    char *body = NULL, *ct = NULL;
    assert_int_equal(scrape(port, "/metrics", &body, &ct), 200);
    assert_true(body == NULL || body[0] == '\0');
    assert_string_equal(ct, AM_METRICS_CONTENT_TYPE);
    free(body);
    free(ct);
    body = NULL;

    /* a logs batch is ignored; a metrics batch replaces the snapshot */
    am_batch_t *logs = am_batch_new(AM_SIGNAL_LOGS);
    assert_int_equal(OPS->consume(srv.instance, logs), AM_OK);
    am_batch_unref(logs);
    am_batch_t *batch = am_metrics_batch_new(sample_set());
    assert_int_equal(OPS->consume(srv.instance, batch), AM_OK);
    am_batch_unref(batch);
    assert_int_equal(scrape(port, "/metrics", &body, NULL), 200);
    assert_non_null(strstr(body, "# TYPE agent_cost_total counter\n"));
    assert_non_null(strstr(body, "agent_budget_spent 3\n"));
    free(body);
    body = NULL;
    assert_int_equal(scrape(port, "/other", &body, NULL), 404);
    free(body);

    uv_async_send(&srv.stop);
    uv_thread_join(&srv.thread);
    OPS->destroy(srv.instance);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&srv.loop), 0);
    am_options_free(OPS->options, cfg);
    free(cfg);
    am_config_free(conf);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_format_value),
        cmocka_unit_test(test_render_text),
        cmocka_unit_test(test_batch_attach),
        cmocka_unit_test(test_exporter_serves_latest),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
