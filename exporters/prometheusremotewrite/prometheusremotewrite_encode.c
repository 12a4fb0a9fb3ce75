/*
 * prometheusremotewrite_encode.c - metric set -> WriteRequest -> snappy.
 *
 * Remote-Write 1.0 wants, per TimeSeries, labels sorted by name with unique,
 * valid names and non-empty values, and samples in time order.  The metric
 * set already holds sanitized, sorted labels with non-empty values, so the
 * encoder only merges in __name__, `le` and the external labels and sorts
 * the short result.  All the protobuf-c structs of one request live in one
 * arena, packed once and compressed with snappy's block format (not the
 * framed/stream format: Prometheus reads raw blocks).  libsnappy is loaded
 * at run time (prometheusremotewrite_dl.c) and called via am__prw_snappy.
 */
#include <stdlib.h>
#include <string.h>

#include "am_arena.h"
#include "prometheusremotewrite_internal.h"
#include "remote.pb-c.h"

typedef struct encoder {
    am_arena_t *arena;
    const am_label_t *external;
    size_t n_external;
    Prometheus__TimeSeries **series;
    size_t n_series, cap_series;
    bool failed;
} encoder_t;

static int label_cmp(const void *a, const void *b)
{
    const Prometheus__Label *la = *(const Prometheus__Label *const *)a;
    const Prometheus__Label *lb = *(const Prometheus__Label *const *)b;
    return strcmp(la->name, lb->name);
}

static Prometheus__Label *new_label(encoder_t *enc, const char *name, const char *value)
{
    Prometheus__Label *label = am_arena_alloc(enc->arena, sizeof(*label));
    if (label == NULL) {
        enc->failed = true;
        return NULL;
    }
    prometheus__label__init(label);
    /* protobuf-c only reads these while packing; the strings outlive it. */
    label->name = (char *)name;
    label->value = (char *)value;
    return label;
}

static void add_series(encoder_t *enc, const char *family_name, const char *suffix,
                       const am_series_t *src, const char *le, double value)
{
    if (enc->failed) {
        return;
    }
    size_t cap = src->n_labels + enc->n_external + 2;
    Prometheus__Label **labels = am_arena_alloc(enc->arena, cap * sizeof(*labels));
    char *name = am_arena_sprintf(enc->arena, "%s%s", family_name, suffix);
    Prometheus__TimeSeries *ts = am_arena_alloc(enc->arena, sizeof(*ts));
    Prometheus__Sample *sample = am_arena_alloc(enc->arena, sizeof(*sample));
    Prometheus__Sample **samples = am_arena_alloc(enc->arena, sizeof(*samples));
    if (labels == NULL || name == NULL || ts == NULL || sample == NULL || samples == NULL) {
        enc->failed = true;
        return;
    }
    size_t n = 0;
    labels[n++] = new_label(enc, "__name__", name);
    for (size_t i = 0; i < src->n_labels; i++) {
        labels[n++] = new_label(enc, src->labels[i].name, src->labels[i].value);
    }
    if (le != NULL) {
        char *copy = am_arena_strdup(enc->arena, le);
        labels[n++] = new_label(enc, "le", copy != NULL ? copy : "");
    }
    for (size_t e = 0; e < enc->n_external; e++) {
        bool present = false;
        for (size_t i = 0; i < n && !present && labels[i] != NULL; i++) {
            present = strcmp(labels[i]->name, enc->external[e].name) == 0;
        }
        if (!present) {
            labels[n++] = new_label(enc, enc->external[e].name, enc->external[e].value);
        }
    }
    if (enc->failed) {
        return;
    }
    qsort(labels, n, sizeof(*labels), label_cmp);
    prometheus__sample__init(sample);
    sample->value = value;
    sample->timestamp = src->timestamp_ms;
    samples[0] = sample;
    prometheus__time_series__init(ts);
    ts->labels = labels;
    ts->n_labels = n;
    ts->samples = samples;
    ts->n_samples = 1;
    if (enc->n_series == enc->cap_series) {
        size_t grown_cap = enc->cap_series ? enc->cap_series * 2 : 256;
        Prometheus__TimeSeries **grown = am_realloc(enc->series, grown_cap * sizeof(*grown));
        if (grown == NULL) {
            enc->failed = true;
            return;
        }
        enc->series = grown;
        enc->cap_series = grown_cap;
    }
    enc->series[enc->n_series++] = ts;
}

int am__prw_encode(const am_metric_set_t *set, const am_label_t *external, size_t n_external,
                   uint8_t **body, size_t *body_len, size_t *n_samples)
{
    encoder_t enc = {.external = external, .n_external = n_external};
    uint8_t *packed = NULL;
    int rc = AM_ENOMEM;
    *body = NULL;
    *body_len = 0;
    *n_samples = 0;
    if (am__prw_dl_load(NULL) != 0) {
        return AM_ENOTSUP; /* the exporter's create reported why */
    }
    enc.arena = am_arena_new(64 * 1024);
    if (enc.arena == NULL) {
        return AM_ENOMEM;
    }
    for (size_t f = 0; set != NULL && f < set->n_families; f++) {
        const am_metric_family_t *family = &set->families[f];
        for (size_t s = 0; s < family->n_series; s++) {
            const am_series_t *series = &family->series[s];
            if (family->type != AM_METRIC_HISTOGRAM) {
                add_series(&enc, family->name, "", series, NULL, series->value);
                continue;
            }
            char le[AM_METRIC_VALUE_STRLEN];
            for (size_t b = 0; b < family->n_bounds; b++) {
                add_series(&enc, family->name, "_bucket", series,
                           am_metric_format_value(family->bounds[b], le),
                           (double)series->bucket_counts[b]);
            }
            add_series(&enc, family->name, "_bucket", series, "+Inf", (double)series->count);
            add_series(&enc, family->name, "_sum", series, NULL, series->sum);
            add_series(&enc, family->name, "_count", series, NULL, (double)series->count);
        }
    }
    if (enc.failed) {
        goto done;
    }
    if (enc.n_series == 0) {
        rc = AM_ENOENT;
        goto done;
    }
    Prometheus__WriteRequest req = PROMETHEUS__WRITE_REQUEST__INIT;
    req.timeseries = enc.series;
    req.n_timeseries = enc.n_series;
    size_t packed_len = prometheus__write_request__get_packed_size(&req);
    packed = am_malloc(packed_len + 1);
    if (packed == NULL) {
        goto done;
    }
    prometheus__write_request__pack(&req, packed);
    size_t compressed_len = am__prw_snappy.max_compressed_length(packed_len);
    uint8_t *compressed = am_malloc(compressed_len + 1);
    if (compressed == NULL) {
        goto done;
    }
    if (am__prw_snappy.compress((const char *)packed, packed_len, (char *)compressed,
                                &compressed_len) != SNAPPY_OK) {
        am_free(compressed);
        rc = AM_EIO;
        goto done;
    }
    *body = compressed;
    *body_len = compressed_len;
    *n_samples = enc.n_series;
    rc = 0;
done:
    am_free(packed);
    am_free(enc.series);
    am_arena_unref(enc.arena);
    return rc;
}
