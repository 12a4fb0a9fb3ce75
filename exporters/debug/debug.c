/*
 * debug.c - the `debug` exporter: prints what reaches it to stdout.
 *
 * verbosity basic:    one line per batch (spans, traces, events), plus one
 *                     line per cost event and per finished trace root with
 *                     its cost, which is what `agentmeter` with the embedded
 *                     default shows an operator on the console.
 * verbosity normal:   one line per span (name, ids, cost attributes).
 * verbosity detailed: every span with all its attributes, events, links and
 *                     status, and each cost event's JSON.
 *
 * Cost events are printed only from logs pipelines (batches carrying
 * AM_SIGNAL_LOGS): in a traces pipeline they ride beside the spans and trace
 * exporters ignore them (ARCHITECTURE.md §2), so a debug exporter shared by
 * both pipelines prints each event once.  Money attributes are printed as
 * the exact fixed-point value they came from, not as a raw double.
 *
 * Consume may run on any shard thread: a batch is formatted into a local
 * buffer and written with one fwrite under a mutex, so output from several
 * shards never interleaves inside a line.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_log.h"
#include "am_selfmetrics.h"

typedef struct debug_config {
    char *verbosity;
    int64_t sampling_initial;
} debug_config_t;

static const am_option_t debug_options[] = {
    {.name = "verbosity", .type = AM_OPT_ENUM, .def = "basic",
     .offset = offsetof(debug_config_t, verbosity), .choices = "basic|normal|detailed|quiet",
     .doc = "basic: a line per batch and per trace root; normal: a line per span; detailed: "
            "every attribute; quiet: count only (benchmarks)."},
    AM_OPT_END,
};

typedef enum { V_QUIET, V_BASIC, V_NORMAL, V_DETAILED } verbosity_t;

typedef struct debug_exporter {
    char *id;
    verbosity_t verbosity;
    am_counter_t *sent_spans;
    am_counter_t *sent_events;
} debug_exporter_t;

static pthread_mutex_t output_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct out_buf {
    char *data;
    size_t len, cap;
} out_buf_t;

static void out_printf(out_buf_t *out, const char *fmt, ...) AM_PRINTF(2, 3);

#include <stdarg.h>
static void out_printf(out_buf_t *out, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(out->data != NULL ? out->data + out->len : NULL,
                          out->data != NULL ? out->cap - out->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            return;
        }
        if (out->data != NULL && (size_t)n < out->cap - out->len) {
            out->len += (size_t)n;
            return;
        }
        size_t cap = (out->cap + (size_t)n + 1) * 2;
        char *grown = am_realloc(out->data, cap);
        if (grown == NULL) {
            return;
        }
        out->data = grown;
        out->cap = cap;
    }
}

static const char *attr_text(const am_pb_span_t *span, const char *key, char *buf, size_t size)
{
    const am_pb_anyvalue_t *v = am_attr_find(span->attributes, span->n_attributes, key);
    if (v == NULL) {
        return NULL;
    }
    /* Cost attributes are doubles made from exact nano-units: print the
     * nano-unit value, "0.07265675" rather than "0.072656750000000006". */
    if (v->value_case == AM_PB_VALUE(DOUBLE_VALUE) && strncmp(key, "cost.", 5) == 0 &&
        size >= AM_MONEY_STRLEN && v->double_value > -9e9 && v->double_value < 9e9) {
        return am_money_format((am_money_t)llround(v->double_value * 1e9), buf);
    }
    return am_anyvalue_to_text(v, buf, size);
}

static void print_attrs(out_buf_t *out, const char *indent, am_pb_keyvalue_t *const *attrs,
                        size_t n)
{
    char value[1024];
    for (size_t i = 0; i < n; i++) {
        if (attrs[i] == NULL) {
            continue;
        }
        out_printf(out, "%s%s: %s\n", indent, attrs[i]->key,
                   am_anyvalue_to_text(attrs[i]->value, value, sizeof(value)));
    }
}

static void print_span(debug_exporter_t *exp, out_buf_t *out, const am_pb_span_t *span,
                       const am_pb_resource_t *resource)
{
    char trace_hex[33] = "", span_hex[17] = "", parent_hex[17] = "";
    if (span->trace_id.len == 16) {
        am_hex(span->trace_id.data, 16, trace_hex);
    }
    if (span->span_id.len == 8) {
        am_hex(span->span_id.data, 8, span_hex);
    }
    if (span->parent_span_id.len == 8) {
        am_hex(span->parent_span_id.data, 8, parent_hex);
    }
    char a[64], b[64], c[64];
    const char *self = attr_text(span, "cost.self", a, sizeof(a));
    const char *subtree = attr_text(span, "cost.subtree", b, sizeof(b));
    const char *status = attr_text(span, "cost.status", c, sizeof(c));
    out_printf(out, "%s span trace_id=%s span_id=%s parent=%s name=\"%s\"", exp->id, trace_hex,
               span_hex, parent_hex[0] ? parent_hex : "-", span->name != NULL ? span->name : "");
    if (status != NULL) {
        out_printf(out, " cost.status=%s", status);
    }
    if (self != NULL) {
        out_printf(out, " cost.self=%s", self);
    }
    if (subtree != NULL) {
        out_printf(out, " cost.subtree=%s", subtree);
    }
    out_printf(out, "\n");
    if (exp->verbosity < V_DETAILED) {
        return;
    }
    out_printf(out, "  kind=%d start=%llu end=%llu status.code=%d status.message=\"%s\"\n",
               (int)span->kind, (unsigned long long)span->start_time_unix_nano,
               (unsigned long long)span->end_time_unix_nano,
               span->status != NULL ? (int)span->status->code : 0,
               span->status != NULL && span->status->message != NULL ? span->status->message : "");
    out_printf(out, "  attributes:\n");
    print_attrs(out, "    ", span->attributes, span->n_attributes);
    if (resource != NULL && resource->n_attributes > 0) {
        out_printf(out, "  resource:\n");
        print_attrs(out, "    ", resource->attributes, resource->n_attributes);
    }
    for (size_t i = 0; i < span->n_events; i++) {
        const am_pb_span_event_t *ev = span->events[i];
        out_printf(out, "  event \"%s\" time=%llu\n", ev->name != NULL ? ev->name : "",
                   (unsigned long long)ev->time_unix_nano);
        print_attrs(out, "    ", ev->attributes, ev->n_attributes);
    }
    for (size_t i = 0; i < span->n_links; i++) {
        const am_pb_span_link_t *link = span->links[i];
        char lt[33] = "", ls[17] = "";
        if (link->trace_id.len == 16) {
            am_hex(link->trace_id.data, 16, lt);
        }
        if (link->span_id.len == 8) {
            am_hex(link->span_id.data, 8, ls);
        }
        out_printf(out, "  link trace_id=%s span_id=%s\n", lt, ls);
        print_attrs(out, "    ", link->attributes, link->n_attributes);
    }
}

typedef struct visit_ctx {
    debug_exporter_t *exp;
    out_buf_t *out;
} visit_ctx_t;

static int visit_span(am_batch_t *batch, am_pb_span_t *span, am_pb_resource_t *resource,
                      am_pb_scope_t *scope, am_span_ref_t *ref, void *user_data)
{
    visit_ctx_t *ctx = user_data;
    AM_UNUSED(batch);
    AM_UNUSED(scope);
    AM_UNUSED(ref);
    print_span(ctx->exp, ctx->out, span, resource);
    return 0;
}

/* basic: one line per trace root that carries a trace total. */
static int visit_root(am_batch_t *batch, am_pb_span_t *span, am_pb_resource_t *resource,
                      am_pb_scope_t *scope, am_span_ref_t *ref, void *user_data)
{
    visit_ctx_t *ctx = user_data;
    AM_UNUSED(batch);
    AM_UNUSED(resource);
    AM_UNUSED(scope);
    if (ref == NULL || ref->parent != AM_SPAN_NONE || (ref->flags & AM_SPANREF_ORPHAN)) {
        return 0;
    }
    char total[64], currency[16], session[256], trace_hex[33] = "";
    const char *t = attr_text(span, "cost.trace.total", total, sizeof(total));
    if (t == NULL) {
        return 0;
    }
    const char *cur = attr_text(span, "cost.currency", currency, sizeof(currency));
    const char *sess = attr_text(span, "session.id", session, sizeof(session));
    if (span->trace_id.len == 16) {
        am_hex(span->trace_id.data, 16, trace_hex);
    }
    out_printf(ctx->out, "%s trace %s root=\"%s\" cost=%s %s session=%s\n", ctx->exp->id,
               trace_hex, span->name != NULL ? span->name : "", t, cur != NULL ? cur : "",
               sess != NULL ? sess : "-");
    return 0;
}

static am_status_t debug_consume(void *instance, am_batch_t *batch)
{
    debug_exporter_t *exp = instance;
    size_t spans = batch->traces != NULL ? am_batch_count_spans(batch) : 0;
    am_counter_add(exp->sent_spans, spans);
    size_t events = (batch->signal & AM_SIGNAL_LOGS) ? batch->n_events : 0;
    am_counter_add(exp->sent_events, events);
    if (exp->verbosity == V_QUIET) {
        return AM_OK;
    }
    out_buf_t out = {0};
    visit_ctx_t ctx = {.exp = exp, .out = &out};
    if (spans > 0) {
        out_printf(&out, "%s batch spans=%zu traces=%zu\n", exp->id, spans, batch->n_traces);
    }
    if (exp->verbosity == V_BASIC) {
        am_batch_for_each_span(batch, visit_root, &ctx);
    } else {
        am_batch_for_each_span(batch, visit_span, &ctx);
    }
    for (size_t i = 0; i < events; i++) {
        const am_event_t *ev = &batch->events[i];
        if (exp->verbosity == V_DETAILED || exp->verbosity == V_BASIC) {
            out_printf(&out, "%s event %s\n", exp->id, ev->json != NULL ? ev->json : "{}");
        } else {
            out_printf(&out, "%s event kind=%s key=%s\n", exp->id, ev->kind,
                       ev->key != NULL ? ev->key : "");
        }
    }
    if (out.len > 0) {
        pthread_mutex_lock(&output_lock);
        fwrite(out.data, 1, out.len, stdout);
        fflush(stdout);
        pthread_mutex_unlock(&output_lock);
    }
    am_free(out.data);
    return AM_OK;
}

static int debug_create(const am_create_params_t *params, void **instance)
{
    const debug_config_t *cfg = params->config;
    debug_exporter_t *exp = am_calloc(1, sizeof(*exp));
    if (exp == NULL || (exp->id = am_strdup(params->id)) == NULL) {
        am_free(exp);
        return AM_ENOMEM;
    }
    if (strcmp(cfg->verbosity, "quiet") == 0) {
        exp->verbosity = V_QUIET;
    } else if (strcmp(cfg->verbosity, "normal") == 0) {
        exp->verbosity = V_NORMAL;
    } else if (strcmp(cfg->verbosity, "detailed") == 0) {
        exp->verbosity = V_DETAILED;
    } else {
        exp->verbosity = V_BASIC;
    }
    char labels[300];
    snprintf(labels, sizeof(labels), "exporter=\"%s\"", params->id);
    exp->sent_spans = am_selfmetrics_counter("agentmeter_exporter_sent_spans_total",
                                             "Spans successfully sent by an exporter.", labels);
    exp->sent_events = am_selfmetrics_counter("agentmeter_exporter_sent_events_total",
                                              "Cost events successfully sent by an exporter.",
                                              labels);
    *instance = exp;
    return 0;
}

static void debug_destroy(void *instance)
{
    debug_exporter_t *exp = instance;
    am_free(exp->id);
    am_free(exp);
}

const am_component_ops_t am_exporter_debug_ops = {
    .type = "debug",
    .kind = AM_KIND_EXPORTER,
    .signals = AM_SIGNAL_TRACES | AM_SIGNAL_METRICS | AM_SIGNAL_LOGS,
    .doc = "Prints spans, traces and cost events to stdout.",
    .options = debug_options,
    .config_size = sizeof(debug_config_t),
    .create = debug_create,
    .consume = debug_consume,
    .destroy = debug_destroy,
};
