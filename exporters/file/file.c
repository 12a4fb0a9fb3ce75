/*
 * file.c - the `file` exporter: appends what reaches it to a file, one
 * record per line, as the OpenTelemetry Collector's file exporter does.
 *
 * Traces are written as OTLP JSON (one ExportTraceServiceRequest per line,
 * hex ids, the enriched attributes included), cost events as their JSON
 * object (one per line).  With `format: proto`, traces are written as
 * length-delimited protobuf (4-byte big-endian length, then the message).
 *
 * Why it exists: it is the simplest faithful view of exactly what leaves
 * the pipeline, so operators can inspect costs with jq, and the interop
 * tests compare it field by field with what a real SDK sent.
 *
 * Consume may run on any shard thread; records are encoded outside the
 * lock and written under it, so lines never interleave.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "am_component.h"
#include "am_log.h"
#include "am_otlp_json.h"
#include "am_selfmetrics.h"

typedef struct file_config {
    char *path;
    char *format;
} file_config_t;

static const am_option_t file_options[] = {
    {.name = "path", .type = AM_OPT_STRING, .offset = offsetof(file_config_t, path),
     .required = true, .doc = "File to append to (created if missing)."},
    {.name = "format", .type = AM_OPT_ENUM, .def = "json", .choices = "json|proto",
     .offset = offsetof(file_config_t, format),
     .doc = "json: one OTLP JSON request or cost event per line; proto: length-delimited "
            "ExportTraceServiceRequest (events are always JSON lines)."},
    AM_OPT_END,
};

typedef struct file_exporter {
    char *id;
    char *path;
    bool proto;
    FILE *out;
    pthread_mutex_t lock;
    am_counter_t *sent_spans;
    am_counter_t *sent_events;
    am_counter_t *failed_spans;
} file_exporter_t;

static int write_all(file_exporter_t *exp, const void *data, size_t len, const void *tail,
                     size_t tail_len)
{
    int rc = 0;
    pthread_mutex_lock(&exp->lock);
    if (exp->out == NULL || fwrite(data, 1, len, exp->out) != len ||
        (tail_len > 0 && fwrite(tail, 1, tail_len, exp->out) != tail_len) ||
        fflush(exp->out) != 0) {
        rc = AM_EIO;
    }
    pthread_mutex_unlock(&exp->lock);
    return rc;
}

static am_status_t file_consume(void *instance, am_batch_t *batch)
{
    file_exporter_t *exp = instance;
    am_status_t status = AM_OK;
    size_t spans = batch->traces != NULL ? am_batch_count_spans(batch) : 0;
    if (spans > 0) {
        int rc;
        if (exp->proto) {
            size_t size =
                opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
                    batch->traces);
            uint8_t *buf = am_malloc(size + 4);
            if (buf == NULL) {
                return AM_RETRY;
            }
            buf[0] = (uint8_t)(size >> 24);
            buf[1] = (uint8_t)(size >> 16);
            buf[2] = (uint8_t)(size >> 8);
            buf[3] = (uint8_t)size;
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(
                batch->traces, buf + 4);
            rc = write_all(exp, buf, size + 4, NULL, 0);
            am_free(buf);
        } else {
            char *json = NULL;
            size_t len = 0;
            rc = am_otlp_json_encode_traces(batch->traces, &json, &len);
            if (rc == 0) {
                rc = write_all(exp, json, len, "\n", 1);
            }
            am_free(json);
        }
        if (rc != 0) {
            am_counter_add(exp->failed_spans, spans);
            AM_ERROR(exp->id, "cannot write %zu spans to %s: %s", spans, exp->path,
                     rc == AM_EIO ? strerror(errno) : am_strerror(rc));
            status = AM_RETRY;
        } else {
            am_counter_add(exp->sent_spans, spans);
        }
    }
    /* Events are written from logs pipelines only (trace exporters ignore
     * the events riding beside spans, ARCHITECTURE.md §2). */
    size_t events = (batch->signal & AM_SIGNAL_LOGS) ? batch->n_events : 0;
    for (size_t i = 0; i < events; i++) {
        const am_event_t *ev = &batch->events[i];
        if (ev->json == NULL) {
            continue;
        }
        if (write_all(exp, ev->json, strlen(ev->json), "\n", 1) != 0) {
            AM_ERROR(exp->id, "cannot write an event to %s", exp->path);
            status = AM_RETRY;
        } else {
            am_counter_add(exp->sent_events, 1);
        }
    }
    return status;
}

static int file_create(const am_create_params_t *params, void **instance)
{
    const file_config_t *cfg = params->config;
    file_exporter_t *exp = am_calloc(1, sizeof(*exp));
    if (exp == NULL) {
        return AM_ENOMEM;
    }
    exp->id = am_strdup(params->id);
    exp->path = am_strdup(cfg->path);
    if (exp->id == NULL || exp->path == NULL) {
        am_free(exp->id);
        am_free(exp->path);
        am_free(exp);
        return AM_ENOMEM;
    }
    exp->proto = strcmp(cfg->format, "proto") == 0;
    pthread_mutex_init(&exp->lock, NULL);
    char labels[300];
    snprintf(labels, sizeof(labels), "exporter=\"%s\"", params->id);
    exp->sent_spans = am_selfmetrics_counter("agentmeter_exporter_sent_spans_total",
                                             "Spans successfully sent by an exporter.", labels);
    exp->sent_events = am_selfmetrics_counter("agentmeter_exporter_sent_events_total",
                                              "Cost events successfully sent by an exporter.",
                                              labels);
    exp->failed_spans = am_selfmetrics_counter("agentmeter_exporter_send_failed_spans_total",
                                               "Spans an exporter failed to send.", labels);
    *instance = exp;
    return 0;
}

static int file_start(void *instance)
{
    file_exporter_t *exp = instance;
    exp->out = fopen(exp->path, exp->proto ? "ab" : "a");
    if (exp->out == NULL) {
        AM_ERROR(exp->id, "cannot open %s: %s", exp->path, strerror(errno));
        return AM_EIO;
    }
    return 0;
}

static void file_shutdown(void *instance)
{
    file_exporter_t *exp = instance;
    pthread_mutex_lock(&exp->lock);
    if (exp->out != NULL) {
        fclose(exp->out);
        exp->out = NULL;
    }
    pthread_mutex_unlock(&exp->lock);
}

static void file_destroy(void *instance)
{
    file_exporter_t *exp = instance;
    file_shutdown(exp);
    pthread_mutex_destroy(&exp->lock);
    am_free(exp->id);
    am_free(exp->path);
    am_free(exp);
}

const am_component_ops_t am_exporter_file_ops = {
    .type = "file",
    .kind = AM_KIND_EXPORTER,
    .signals = AM_SIGNAL_TRACES | AM_SIGNAL_LOGS,
    .doc = "Appends enriched spans (OTLP JSON lines) and cost events (JSON lines) to a file.",
    .options = file_options,
    .config_size = sizeof(file_config_t),
    .create = file_create,
    .start = file_start,
    .consume = file_consume,
    .shutdown = file_shutdown,
    .destroy = file_destroy,
};
