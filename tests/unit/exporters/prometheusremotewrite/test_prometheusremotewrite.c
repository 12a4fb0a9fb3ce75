/*
 * test_prometheusremotewrite.c - Remote-Write 1.0 as a receiver sees it.
 *
 * The encoder's own output, decoded back (snappy_uncompress + protobuf
 * unpack): one series per counter/gauge, _bucket{le}/_sum/_count per
 * histogram, __name__ and external labels merged, labels sorted by name and
 * valid, one sample per series at the snapshot time.  Then the exporter
 * against an in-process HTTP server (core's am_http on the same loop): the
 * four protocol headers (user headers added, never replacing them), 503 and
 * 429 retried (Retry-After honoured), 400 dropped and counted without
 * retry, requests strictly one after another so samples stay in time order,
 * and a full queue refusing with AM_RETRY.  Last, the run-time loading of
 * libcurl and libsnappy (prometheusremotewrite_dl.c): it works here, and a
 * missing library or symbol is an error naming the library, both from the
 * loader and from `agentmeter validate`, never a crash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <snappy-c.h>

#include "am_component.h"
#include "am_http.h"
#include "am_metrics.h"
#include "am_selfmetrics.h"
#include "exporters/prometheusremotewrite/prometheusremotewrite_internal.h"
#include "remote.pb-c.h"

extern const am_component_ops_t am_exporter_prometheusremotewrite_ops;
#define OPS (&am_exporter_prometheusremotewrite_ops)

static am_metric_set_t *make_set(int64_t ts, double cost)
{
    am_metric_set_t *set = am_metric_set_new(ts);
    am_metric_family_t *fam =
        am_metric_set_family(set, "agent_cost_total", "Cost.", "", AM_METRIC_COUNTER, NULL, 0);
    am_label_t labels[] = {{"currency", "USD"}, {"cost_type", "input"}, {"Zone", "eu"}};
    am_metric_add_value(fam, labels, 3, cost, ts);
    const double bounds[] = {0.5, 1};
    am_metric_family_t *hist =
        am_metric_set_family(set, "agent_trace_cost", "Trace.", "", AM_METRIC_HISTOGRAM, bounds, 2);
    const uint64_t cum[] = {1, 2};
    am_label_t hl[] = {{"currency", "USD"}};
    am_metric_add_histogram(hist, hl, 1, cum, 1.75, 3, ts);
    return set;
}

static Prometheus__WriteRequest *decode(const uint8_t *body, size_t len)
{
    size_t raw_len = 0;
    assert_int_equal(snappy_uncompressed_length((const char *)body, len, &raw_len), SNAPPY_OK);
    char *raw = malloc(raw_len + 1);
    assert_int_equal(snappy_uncompress((const char *)body, len, raw, &raw_len), SNAPPY_OK);
    Prometheus__WriteRequest *req =
        prometheus__write_request__unpack(NULL, raw_len, (const uint8_t *)raw);
    free(raw);
    assert_non_null(req);
    return req;
}

static const char *label(const Prometheus__TimeSeries *ts, const char *name)
{
    for (size_t i = 0; i < ts->n_labels; i++) {
        if (strcmp(ts->labels[i]->name, name) == 0) {
            return ts->labels[i]->value;
        }
    }
    return NULL;
}

static void check_well_formed(const Prometheus__WriteRequest *req)
{
    for (size_t s = 0; s < req->n_timeseries; s++) {
        const Prometheus__TimeSeries *ts = req->timeseries[s];
        assert_non_null(label(ts, "__name__"));
        for (size_t i = 0; i < ts->n_labels; i++) {
            const char *name = ts->labels[i]->name;
            assert_true(strcmp(name, "__name__") == 0 || am_metric_label_name_valid(name));
            assert_true(ts->labels[i]->value[0] != '\0');
            if (i > 0) {
                /* strictly increasing: sorted and unique */
                assert_true(strcmp(ts->labels[i - 1]->name, name) < 0);
            }
        }
        for (size_t i = 1; i < ts->n_samples; i++) {
            assert_true(ts->samples[i - 1]->timestamp <= ts->samples[i]->timestamp);
        }
    }
}

static void test_encode_decodes_back(void **state)
{
    (void)state;
    am_metric_set_t *set = make_set(1700000000000, 0.0125);
    am_label_t external[] = {{"cluster", "prod"}, {"currency", "EUR"}};
    uint8_t *body = NULL;
    size_t len = 0, samples = 0;
    assert_int_equal(am__prw_encode(set, external, 2, &body, &len, &samples), 0);
    assert_int_equal(samples, 6); /* 1 counter + 3 buckets + sum + count */
    Prometheus__WriteRequest *req = decode(body, len);
    assert_int_equal(req->n_timeseries, 6);
    check_well_formed(req);
    const Prometheus__TimeSeries *c = req->timeseries[0];
    /* byte order: upper case sorts before "__name__" */
    const char *order[] = {"Zone", "__name__", "cluster", "cost_type", "currency"};
    assert_int_equal(c->n_labels, 5);
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(c->labels[i]->name, order[i]);
    }
    assert_string_equal(label(c, "__name__"), "agent_cost_total");
    /* the series' own label wins over an external one */
    assert_string_equal(label(c, "currency"), "USD");
    assert_string_equal(label(c, "cluster"), "prod");
    assert_int_equal(c->n_samples, 1);
    assert_true(c->samples[0]->value == 0.0125);
    assert_int_equal(c->samples[0]->timestamp, 1700000000000);
    const char *names[] = {"agent_trace_cost_bucket", "agent_trace_cost_bucket",
                           "agent_trace_cost_bucket", "agent_trace_cost_sum",
                           "agent_trace_cost_count"};
    const char *les[] = {"0.5", "1", "+Inf", NULL, NULL};
    const double values[] = {1, 2, 3, 1.75, 3};
    for (size_t i = 0; i < 5; i++) {
        const Prometheus__TimeSeries *ts = req->timeseries[i + 1];
        assert_string_equal(label(ts, "__name__"), names[i]);
        if (les[i] != NULL) {
            assert_string_equal(label(ts, "le"), les[i]);
        } else {
            assert_null(label(ts, "le"));
        }
        assert_true(ts->samples[0]->value == values[i]);
    }
    prometheus__write_request__free_unpacked(req, NULL);
    am_free(body);
    /* nothing to send */
    am_metric_set_t *empty = am_metric_set_new(1);
    assert_int_equal(am__prw_encode(empty, NULL, 0, &body, &len, &samples), AM_ENOENT);
    am_metric_set_unref(empty);
    am_metric_set_unref(set);
}

/* ---- the exporter against a scripted server ----------------------------------------- */

#define MAX_REQS 32

typedef struct received {
    char content_encoding[64], content_type[64], user_agent[64], version[32], custom[64];
    uint8_t *body;
    size_t len;
    uint64_t at_ms;
    int status;
} received_t;

typedef struct script {
    int statuses[MAX_REQS]; /* answer of the n-th request; 0 = 200 */
    received_t reqs[MAX_REQS];
    int n_reqs;
} script_t;

static script_t script;

static void copy_header(const am_http_request_t *req, const char *name, char *out, size_t size)
{
    const char *v = am_http_header_get(req, name);
    snprintf(out, size, "%s", v != NULL ? v : "");
}

static void handler(am_http_request_t *req)
{
    assert_true(script.n_reqs < MAX_REQS);
    received_t *r = &script.reqs[script.n_reqs];
    int status = script.statuses[script.n_reqs] ? script.statuses[script.n_reqs] : 200;
    script.n_reqs++;
    copy_header(req, "content-encoding", r->content_encoding, sizeof(r->content_encoding));
    copy_header(req, "content-type", r->content_type, sizeof(r->content_type));
    copy_header(req, "user-agent", r->user_agent, sizeof(r->user_agent));
    copy_header(req, "x-prometheus-remote-write-version", r->version, sizeof(r->version));
    copy_header(req, "x-scope-orgid", r->custom, sizeof(r->custom));
    r->body = malloc(req->body_len);
    memcpy(r->body, req->body, req->body_len);
    r->len = req->body_len;
    r->at_ms = am_now_mono_ms();
    r->status = status;
    if (status == 429) {
        am_http_respond(req, 429, "text/plain", "Retry-After: 1\r\n", "slow down\n", 10);
    } else if (status == 400) {
        am_http_respond(req, 400, "text/plain", NULL, "out of order sample\n", 20);
    } else {
        am_http_respond(req, status, "text/plain", NULL, "", 0);
    }
}

typedef struct rig {
    uv_loop_t loop;
    am_http_server_t *server;
    am_config_t *conf;
    void *cfg;
    void *instance;
} rig_t;

static void rig_init(rig_t *rig, const char *extra)
{
    memset(rig, 0, sizeof(*rig));
    memset(&script, 0, sizeof(script));
    uv_loop_init(&rig->loop);
    am_http_server_opts_t opts = {.endpoint = "127.0.0.1:0", .handler = handler};
    assert_int_equal(am_http_server_start(&rig->loop, &opts, &rig->server), 0);
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "endpoint: http://127.0.0.1:%d/api/v1/write\n"
             "headers: { X-Scope-OrgID: tenant-a }\n"
             "external_labels: { cluster: prod }\n"
             "retry_on_failure: { initial_interval: 20ms, max_interval: 100ms }\n%s",
             am_http_server_port(rig->server), extra);
    am_errors_t errs = {0};
    rig->conf = am_config_load_buffer("prw.yaml", yaml, strlen(yaml), &errs);
    rig->cfg = calloc(1, OPS->config_size);
    am_options_parse(OPS->options, rig->cfg, am_config_root(rig->conf), "exporters.prw", &errs);
    OPS->validate(rig->cfg, am_config_root(rig->conf), "exporters.prw", &errs);
    am_errors_print(&errs, stderr);
    assert_int_equal(errs.count, 0);
    am_create_params_t params = {.id = "prometheusremotewrite",
                                 .config = rig->cfg,
                                 .loop = &rig->loop,
                                 .signal = AM_SIGNAL_METRICS,
                                 .shard = -1};
    assert_int_equal(OPS->create(&params, &rig->instance), 0);
    assert_int_equal(OPS->start(rig->instance), 0);
}

static void rig_free(rig_t *rig)
{
    OPS->shutdown(rig->instance);
    am_http_server_close(rig->server);
    uv_run(&rig->loop, UV_RUN_DEFAULT);
    OPS->destroy(rig->instance);
    assert_int_equal(uv_loop_close(&rig->loop), 0);
    am_options_free(OPS->options, rig->cfg);
    free(rig->cfg);
    am_config_free(rig->conf);
    for (int i = 0; i < script.n_reqs; i++) {
        free(script.reqs[i].body);
    }
}

static am_status_t send_set(rig_t *rig, int64_t ts, double cost)
{
    am_batch_t *batch = am_metrics_batch_new(make_set(ts, cost));
    am_status_t st = OPS->consume(rig->instance, batch);
    am_batch_unref(batch);
    return st;
}

static void run_until_requests(rig_t *rig, int n)
{
    uint64_t deadline = am_now_mono_ms() + 10000;
    while (script.n_reqs < n && am_now_mono_ms() < deadline) {
        uv_run(&rig->loop, UV_RUN_ONCE);
    }
    assert_int_equal(script.n_reqs, n);
}

static uint64_t counter_value(const char *name)
{
    size_t len;
    char *text = am_selfmetrics_render(&len);
    char key[256];
    snprintf(key, sizeof(key), "%s{exporter=\"prometheusremotewrite\"} ", name);
    const char *at = strstr(text, key);
    uint64_t v = at != NULL ? strtoull(at + strlen(key), NULL, 10) : 0;
    am_free(text);
    return v;
}

static void test_exporter_retries_and_drops(void **state)
{
    (void)state;
    rig_t rig;
    rig_init(&rig, "");
    uint64_t failed_before = counter_value("agentmeter_exporter_send_failed_metric_points_total");
    uint64_t sent_before = counter_value("agentmeter_exporter_sent_metric_points_total");
    /* 1: 503 then OK; 2: 429 (Retry-After: 1) then OK; 3: 400 dropped; 4: OK */
    script.statuses[0] = 503;
    script.statuses[2] = 429;
    script.statuses[4] = 400;
    assert_int_equal(send_set(&rig, 1000, 1), AM_OK);
    assert_int_equal(send_set(&rig, 2000, 2), AM_OK);
    assert_int_equal(send_set(&rig, 3000, 3), AM_OK);
    assert_int_equal(send_set(&rig, 4000, 4), AM_OK);
    run_until_requests(&rig, 6);
    /* let a wrong extra retry of the 400 show up, if there were one */
    uv_run(&rig.loop, UV_RUN_NOWAIT);

    for (int i = 0; i < script.n_reqs; i++) {
        received_t *r = &script.reqs[i];
        assert_string_equal(r->content_encoding, "snappy");
        assert_string_equal(r->content_type, "application/x-protobuf");
        assert_string_equal(r->version, "0.1.0");
        assert_true(strncmp(r->user_agent, "agentmeter/", 11) == 0);
        assert_string_equal(r->custom, "tenant-a");
        Prometheus__WriteRequest *req = decode(r->body, r->len);
        check_well_formed(req);
        assert_string_equal(label(req->timeseries[0], "cluster"), "prod");
        int64_t expect_ts[] = {1000, 1000, 2000, 2000, 3000, 4000};
        assert_int_equal(req->timeseries[0]->samples[0]->timestamp, expect_ts[i]);
        prometheus__write_request__free_unpacked(req, NULL);
    }
    /* the retry is the same request */
    assert_int_equal(script.reqs[0].len, script.reqs[1].len);
    assert_memory_equal(script.reqs[0].body, script.reqs[1].body, script.reqs[0].len);
    /* Retry-After: 1 was honoured */
    assert_true(script.reqs[3].at_ms - script.reqs[2].at_ms >= 950);
    assert_int_equal(
        counter_value("agentmeter_exporter_send_failed_metric_points_total") - failed_before, 6);
    assert_int_equal(counter_value("agentmeter_exporter_sent_metric_points_total") - sent_before,
                     18);
    rig_free(&rig);
}

static void test_queue_full_refuses(void **state)
{
    (void)state;
    rig_t rig;
    rig_init(&rig, "sending_queue: { queue_size: 2 }\ndrain_timeout: 50ms\n");
    for (int i = 0; i < MAX_REQS; i++) {
        script.statuses[i] = 503;
    }
    assert_int_equal(send_set(&rig, 1, 1), AM_OK);
    assert_int_equal(send_set(&rig, 2, 1), AM_OK);
    assert_int_equal(send_set(&rig, 3, 1), AM_RETRY);
    run_until_requests(&rig, 1);
    /* the first one is in flight now: there is room for one more */
    assert_int_equal(send_set(&rig, 3, 1), AM_OK);
    assert_int_equal(send_set(&rig, 4, 1), AM_RETRY);
    rig_free(&rig);
}

static void test_validate(void **state)
{
    (void)state;
    const char *yaml = "endpoint: localhost:9090\n"
                       "headers: { Content-Type: text/plain, X-Ok: fine }\n"
                       "external_labels: { __bad: x, good: y, also.bad: z }\n";
    am_errors_t errs = {0};
    am_config_t *conf = am_config_load_buffer("prw.yaml", yaml, strlen(yaml), &errs);
    void *cfg = calloc(1, OPS->config_size);
    am_options_parse(OPS->options, cfg, am_config_root(conf), "exporters.prw", &errs);
    assert_int_equal(errs.count, 0);
    OPS->validate(cfg, am_config_root(conf), "exporters.prw", &errs);
    assert_int_equal(errs.count, 4);
    assert_non_null(strstr(errs.msgs[0], "prw.yaml:1:"));
    assert_non_null(strstr(errs.msgs[1], "Content-Type"));
    assert_non_null(strstr(errs.msgs[2], "__bad"));
    assert_non_null(strstr(errs.msgs[3], "also.bad"));
    am_errors_clear(&errs);
    am_options_free(OPS->options, cfg);
    free(cfg);
    am_config_free(conf);
    /* endpoint is required */
    conf = am_config_load_buffer("prw.yaml", "timeout: 1s", 11, &errs);
    cfg = calloc(1, OPS->config_size);
    am_options_parse(OPS->options, cfg, am_config_root(conf), "exporters.prw", &errs);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.msgs[0], "endpoint"));
    am_errors_clear(&errs);
    am_options_free(OPS->options, cfg);
    free(cfg);
    am_config_free(conf);
}

/* ---- libcurl and libsnappy loaded at run time ------------------------------------------ */

static void test_dl_loads_here(void **state)
{
    (void)state;
    const char *err = "not set";
    assert_int_equal(am__prw_dl_load(&err), 0);
    assert_null(err);
    assert_non_null(am__prw_curl.handle);
    assert_non_null(am__prw_curl.easy_setopt);
    assert_non_null(am__prw_curl.slist_free_all);
    assert_non_null(am__prw_snappy.compress);
    /* once per process: the same tables again */
    void *handle = am__prw_curl.handle;
    assert_int_equal(am__prw_dl_load(NULL), 0);
    assert_ptr_equal(am__prw_curl.handle, handle);
    /* the table really is libcurl */
    struct curl_slist *list = am__prw_curl.slist_append(NULL, "X-Test: 1");
    assert_non_null(list);
    assert_string_equal(list->data, "X-Test: 1");
    am__prw_curl.slist_free_all(list);
    /* the seam on the real sonames, opened and closed again */
    am__prw_curl_t curl;
    am__prw_snappy_t snappy;
    char why[512];
    assert_int_equal(am__prw_dl_open(AM__PRW_CURL_SONAME, AM__PRW_SNAPPY_SONAME, &curl, &snappy,
                                     why, sizeof(why)),
                     0);
    assert_non_null(curl.multi_socket_action);
    assert_non_null(snappy.max_compressed_length);
    am__prw_dl_close(&curl, &snappy);
    assert_null(curl.handle);
}

static void expect_dl_failure(const char *curl_soname, const char *snappy_soname, const char *names,
                              const char *also)
{
    am__prw_curl_t curl;
    am__prw_snappy_t snappy;
    char why[512];
    memset(&curl, 0xff, sizeof(curl));
    assert_int_equal(am__prw_dl_open(curl_soname, snappy_soname, &curl, &snappy, why, sizeof(why)),
                     AM_ENOENT);
    assert_non_null(strstr(why, "cannot load "));
    assert_non_null(strstr(why, names));
    if (also != NULL) {
        assert_non_null(strstr(why, also));
    }
    /* nothing half-loaded is left behind */
    assert_null(curl.handle);
    assert_null(curl.easy_init);
    assert_null(snappy.handle);
    assert_null(snappy.compress);
}

static void test_dl_missing_library_is_an_error(void **state)
{
    (void)state;
    /* the library is missing */
    expect_dl_failure("libcurl-missing.so.4", AM__PRW_SNAPPY_SONAME, "libcurl-missing.so.4",
                      "cannot open shared object file");
    /* the second one is missing: the first is released again */
    expect_dl_failure(AM__PRW_CURL_SONAME, "libsnappy-missing.so.1", "libsnappy-missing.so.1",
                      NULL);
    /* a library without the symbols */
    expect_dl_failure(AM__PRW_CURL_SONAME, "libc.so.6", "libc.so.6", "snappy_compress");
    /* the process-wide tables are untouched */
    assert_int_equal(am__prw_dl_load(NULL), 0);
    assert_non_null(am__prw_snappy.compress);
}

/* The whole way: `agentmeter validate` on a config with this exporter, in a
 * process whose dynamic loader finds a broken libcurl.so.4 first
 * (LD_LIBRARY_PATH), exits 1 with the library's name and the package to
 * install, instead of crashing. */
static void test_missing_library_fails_the_config(void **state)
{
    (void)state;
    const char *bin_dir = getenv("AM_BINARY_DIR");
    char bin[1024];
    snprintf(bin, sizeof(bin), "%s/agentmeter", bin_dir != NULL ? bin_dir : "");
    if (bin_dir == NULL || access(bin, X_OK) != 0) {
        skip(); /* run outside ctest, or agentmeter not built */
    }
    char dir[] = "/tmp/am-prw-dl-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char lib[1100], conf[1100], cmd[4096];
    snprintf(lib, sizeof(lib), "%s/libcurl.so.4", dir);
    snprintf(conf, sizeof(conf), "%s/prw.yaml", dir);
    FILE *f = fopen(lib, "w");
    assert_non_null(f);
    fputs("not a shared library\n", f);
    fclose(f);
    f = fopen(conf, "w");
    assert_non_null(f);
    fputs("receivers:\n"
          "  otlp: { protocols: { http: { endpoint: \"127.0.0.1:0\" } } }\n"
          "connectors:\n"
          "  costmetrics: {}\n"
          "exporters:\n"
          "  prometheusremotewrite: { endpoint: \"http://127.0.0.1:9/api/v1/write\" }\n"
          "service:\n"
          "  pipelines:\n"
          "    traces: { receivers: [otlp], exporters: [costmetrics] }\n"
          "    metrics: { receivers: [costmetrics], exporters: [prometheusremotewrite] }\n",
          f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "LD_LIBRARY_PATH='%s' '%s' validate --config '%s' 2>&1", dir, bin,
             conf);
    FILE *out = popen(cmd, "r");
    assert_non_null(out);
    char text[8192];
    size_t len = fread(text, 1, sizeof(text) - 1, out);
    text[len] = '\0';
    int status = pclose(out);
    printf("%s", text);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_non_null(strstr(text, "exporters.prometheusremotewrite: cannot load libcurl.so.4: "));
    assert_non_null(strstr(text, lib));
    assert_non_null(strstr(text, "libcurl4"));
    unlink(lib);
    unlink(conf);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_decodes_back),
        cmocka_unit_test(test_exporter_retries_and_drops),
        cmocka_unit_test(test_queue_full_refuses),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_dl_loads_here),
        cmocka_unit_test(test_dl_missing_library_is_an_error),
        cmocka_unit_test(test_missing_library_fails_the_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
