/*
 * prometheus.c - the `prometheus` exporter: a scrape endpoint for the cost
 * metrics (ARCHITECTURE.md §9).
 *
 * The costmetrics connector sends a complete, cumulative am_metric_set_t on
 * every flush, so this exporter keeps nothing but the newest set: consume
 * (any thread) swaps it in under a mutex, and each scrape of /metrics (on
 * the main loop, through core's am_http server) takes a reference and
 * renders it as text format 0.0.4 with HELP and TYPE lines.  A set is
 * immutable once it travels in a batch, so rendering needs no lock.
 * Timestamps are left out by default, as in the Collector's exporter:
 * Prometheus then stamps samples with the scrape time, which keeps staleness
 * handling working.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "am_component.h"
#include "am_http.h"
#include "am_log.h"
#include "am_metrics.h"
#include "am_selfmetrics.h"

#define COMPONENT "prometheus"

typedef struct prom_config {
    char *endpoint;
    bool send_timestamps;
} prom_config_t;

static const am_option_t prom_options[] = {
    AM_OPT("endpoint", AM_OPT_ENDPOINT, "127.0.0.1:9464", prom_config_t, endpoint,
           "Address serving the cost metrics at /metrics (Prometheus text format 0.0.4)."),
    AM_OPT("send_timestamps", AM_OPT_BOOL, "false", prom_config_t, send_timestamps,
           "Add each sample's snapshot time to the exposition (off: Prometheus uses the "
           "scrape time)."),
    AM_OPT_END,
};

typedef struct prom_exporter {
    char *id;
    char *endpoint;
    bool send_timestamps;
    uv_loop_t *loop;
    am_http_server_t *server;
    pthread_mutex_t lock;
    am_metric_set_t *latest; /* under lock */
    am_counter_t *scrapes;
    bool shut;
} prom_exporter_t;

static void prom_handler(am_http_request_t *req)
{
    prom_exporter_t *exp = req->user_data;
    if (strcmp(req->path, "/metrics") != 0) {
        am_http_respond(req, 404, "text/plain", NULL, "not found\n", 10);
        return;
    }
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        am_http_respond(req, 405, "text/plain", "Allow: GET, HEAD\r\n", "method not allowed\n", 19);
        return;
    }
    pthread_mutex_lock(&exp->lock);
    am_metric_set_t *set = exp->latest != NULL ? am_metric_set_ref(exp->latest) : NULL;
    pthread_mutex_unlock(&exp->lock);
    size_t len = 0;
    char *text = am_metric_set_render_text(set, exp->send_timestamps, &len);
    am_metric_set_unref(set);
    if (text == NULL) {
        am_http_respond(req, 500, "text/plain", NULL, "out of memory\n", 14);
        return;
    }
    am_counter_add(exp->scrapes, 1);
    am_http_respond(req, 200, AM_METRICS_CONTENT_TYPE, NULL, text,
                    strcmp(req->method, "HEAD") == 0 ? 0 : len);
    am_free(text);
}

static am_status_t prom_consume(void *instance, am_batch_t *batch)
{
    prom_exporter_t *exp = instance;
    /* A connector feeding metrics and logs pipelines sends both kinds of
     * batch to every pipeline: take metric sets, skip the rest. */
    if ((batch->signal & AM_SIGNAL_METRICS) == 0 || batch->metrics == NULL) {
        return AM_OK;
    }
    am_metric_set_t *fresh = am_metric_set_ref(batch->metrics);
    pthread_mutex_lock(&exp->lock);
    am_metric_set_t *old = exp->latest;
    exp->latest = fresh;
    pthread_mutex_unlock(&exp->lock);
    am_metric_set_unref(old);
    return AM_OK;
}

static void prom_destroy(void *instance);

static int prom_create(const am_create_params_t *params, void **instance)
{
    const prom_config_t *cfg = params->config;
    prom_exporter_t *exp = am_calloc(1, sizeof(*exp));
    if (exp == NULL) {
        return AM_ENOMEM;
    }
    pthread_mutex_init(&exp->lock, NULL);
    exp->loop = params->loop;
    exp->send_timestamps = cfg->send_timestamps;
    exp->id = am_strdup(params->id);
    exp->endpoint = am_strdup(cfg->endpoint != NULL ? cfg->endpoint : "127.0.0.1:9464");
    if (exp->id == NULL || exp->endpoint == NULL) {
        prom_destroy(exp);
        return AM_ENOMEM;
    }
    char labels[300];
    snprintf(labels, sizeof(labels), "exporter=\"%s\"", params->id);
    exp->scrapes = am_selfmetrics_counter("agentmeter_exporter_scrapes_total",
                                          "Scrapes answered by a pull exporter.", labels);
    *instance = exp;
    return 0;
}

static int prom_start(void *instance)
{
    prom_exporter_t *exp = instance;
    am_http_server_opts_t opts = {
        .endpoint = exp->endpoint,
        .max_body_bytes = 64 * 1024,
        .handler = prom_handler,
        .user_data = exp,
    };
    int rc = am_http_server_start(exp->loop, &opts, &exp->server);
    if (rc != 0) {
        AM_ERROR(COMPONENT, "%s: cannot serve on %s: %s", exp->id, exp->endpoint, am_strerror(rc));
        return rc;
    }
    AM_INFO(COMPONENT, "%s: serving cost metrics on http://%s/metrics", exp->id, exp->endpoint);
    return 0;
}

static void prom_shutdown(void *instance)
{
    prom_exporter_t *exp = instance;
    if (exp->shut) {
        return;
    }
    exp->shut = true;
    if (exp->server != NULL) {
        am_http_server_close(exp->server);
        exp->server = NULL;
    }
}

static void prom_destroy(void *instance)
{
    prom_exporter_t *exp = instance;
    if (exp == NULL) {
        return;
    }
    if (exp->server != NULL) {
        am_http_server_close(exp->server);
    }
    am_metric_set_unref(exp->latest);
    pthread_mutex_destroy(&exp->lock);
    am_free(exp->id);
    am_free(exp->endpoint);
    am_free(exp);
}

const am_component_ops_t am_exporter_prometheus_ops = {
    .type = "prometheus",
    .kind = AM_KIND_EXPORTER,
    .signals = AM_SIGNAL_METRICS,
    .doc = "Serves the cost metrics for Prometheus to scrape (/metrics, text format 0.0.4).",
    .options = prom_options,
    .config_size = sizeof(prom_config_t),
    .create = prom_create,
    .start = prom_start,
    .consume = prom_consume,
    .shutdown = prom_shutdown,
    .destroy = prom_destroy,
};
