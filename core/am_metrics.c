/*
 * am_metrics.c - metric sets: building, freeing, sanitizing, text rendering.
 *
 * A set is small (a few families, at most a few thousand series each: the
 * costmetrics connector caps series per metric), built once per flush and
 * then only read, so the layout is plain growable arrays and every string is
 * its own allocation.  Sanitizing happens in the builders, not at render
 * time, so the text renderer and the remote-write encoder see exactly the
 * same (valid) names and never disagree.
 */
#include "am_metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 256

am_metric_set_t *am_metric_set_new(int64_t timestamp_ms)
{
    am_metric_set_t *set = am_calloc(1, sizeof(*set));
    if (set == NULL) {
        return NULL;
    }
    atomic_init(&set->refcount, 1);
    set->timestamp_ms = timestamp_ms;
    return set;
}

am_metric_set_t *am_metric_set_ref(am_metric_set_t *set)
{
    atomic_fetch_add_explicit(&set->refcount, 1, memory_order_relaxed);
    return set;
}

static void series_free(am_series_t *series)
{
    for (size_t i = 0; i < series->n_labels; i++) {
        am_free(series->labels[i].name);
        am_free(series->labels[i].value);
    }
    am_free(series->labels);
    am_free(series->bucket_counts);
}

static void family_free(am_metric_family_t *family)
{
    for (size_t i = 0; i < family->n_series; i++) {
        series_free(&family->series[i]);
    }
    am_free(family->series);
    am_free(family->bounds);
    am_free(family->name);
    am_free(family->help);
    am_free(family->unit);
}

void am_metric_set_unref(am_metric_set_t *set)
{
    if (set == NULL || atomic_fetch_sub_explicit(&set->refcount, 1, memory_order_acq_rel) != 1) {
        return;
    }
    for (size_t i = 0; i < set->n_families; i++) {
        family_free(&set->families[i]);
    }
    am_free(set->families);
    am_free(set);
}

/* ---- names ----------------------------------------------------------------- */

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static const char *sanitize(const char *in, char *buf, size_t size, bool allow_colon)
{
    if (size == 0) {
        return buf;
    }
    char mapped[NAME_MAX_LEN];
    size_t n = 0;
    for (const char *p = in; *p != '\0' && n + 1 < sizeof(mapped); p++) {
        char c = *p;
        bool ok = is_alpha(c) || is_digit(c) || c == '_' || (allow_colon && c == ':');
        mapped[n++] = ok ? c : '_';
    }
    mapped[n] = '\0';
    const char *prefix = "";
    if (n == 0) {
        prefix = "_";
    } else if (is_digit(mapped[0])) {
        prefix = "_";
    } else if (!allow_colon && mapped[0] == '_' && mapped[1] == '_') {
        /* "__" names are reserved for Prometheus' own labels (__name__). */
        prefix = "key";
    }
    snprintf(buf, size, "%s%s", prefix, mapped);
    return buf;
}

const char *am_metric_label_name(const char *in, char *buf, size_t size)
{
    return sanitize(in, buf, size, false);
}

const char *am_metric_name(const char *in, char *buf, size_t size)
{
    return sanitize(in, buf, size, true);
}

static bool name_valid(const char *name, bool allow_colon)
{
    if (name == NULL || name[0] == '\0' || is_digit(name[0])) {
        return false;
    }
    for (const char *p = name; *p != '\0'; p++) {
        if (!(is_alpha(*p) || is_digit(*p) || *p == '_' || (allow_colon && *p == ':'))) {
            return false;
        }
    }
    return true;
}

bool am_metric_label_name_valid(const char *name)
{
    return name_valid(name, false);
}

bool am_metric_name_valid(const char *name)
{
    return name_valid(name, true);
}

/* A copy of s as valid UTF-8: each byte of an invalid sequence becomes U+FFFD. */
static char *utf8_dup(const char *s)
{
    size_t len = strlen(s);
    char *out = am_malloc(len * 3 + 1);
    if (out == NULL) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        size_t need = 0;
        uint32_t cp = 0;
        if (c < 0x80) {
            out[o++] = (char)c;
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            need = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            need = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            need = 3;
            cp = c & 0x07;
        }
        bool ok = need > 0 && i + need < len + 1;
        for (size_t k = 1; ok && k <= need; k++) {
            if (i + k >= len || (p[i + k] & 0xC0) != 0x80) {
                ok = false;
            } else {
                cp = (cp << 6) | (p[i + k] & 0x3F);
            }
        }
        /* Reject overlong forms, surrogates and values past U+10FFFF. */
        if (ok &&
            ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
             cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) {
            ok = false;
        }
        if (ok) {
            memcpy(out + o, p + i, need + 1);
            o += need + 1;
            i += need + 1;
        } else {
            out[o++] = (char)0xEF;
            out[o++] = (char)0xBF;
            out[o++] = (char)0xBD;
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

/* ---- builders ---------------------------------------------------------------- */

am_metric_family_t *am_metric_set_family(am_metric_set_t *set, const char *name, const char *help,
                                         const char *unit, am_metric_type_t type,
                                         const double *bounds, size_t n_bounds)
{
    char clean[NAME_MAX_LEN];
    am_metric_name(name, clean, sizeof(clean));
    for (size_t i = 0; i < set->n_families; i++) {
        if (strcmp(set->families[i].name, clean) == 0) {
            return &set->families[i];
        }
    }
    if (type == AM_METRIC_HISTOGRAM) {
        for (size_t i = 0; i < n_bounds; i++) {
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
                return NULL;
            }
        }
    }
    if (set->n_families == set->cap_families) {
        size_t cap = set->cap_families ? set->cap_families * 2 : 8;
        am_metric_family_t *grown = am_realloc(set->families, cap * sizeof(*grown));
        if (grown == NULL) {
            return NULL;
        }
        set->families = grown;
        set->cap_families = cap;
    }
    am_metric_family_t *family = &set->families[set->n_families];
    memset(family, 0, sizeof(*family));
    family->type = type;
    family->name = am_strdup(clean);
    family->help = am_strdup(help != NULL ? help : "");
    family->unit = am_strdup(unit != NULL ? unit : "");
    if (type == AM_METRIC_HISTOGRAM && n_bounds > 0) {
        family->bounds = am_malloc(n_bounds * sizeof(double));
        if (family->bounds != NULL) {
            memcpy(family->bounds, bounds, n_bounds * sizeof(double));
            family->n_bounds = n_bounds;
        }
    }
    if (family->name == NULL || family->help == NULL || family->unit == NULL ||
        (type == AM_METRIC_HISTOGRAM && n_bounds > 0 && family->bounds == NULL)) {
        family_free(family);
        return NULL;
    }
    set->n_families++;
    return family;
}

static int label_cmp(const void *a, const void *b)
{
    return strcmp(((const am_label_t *)a)->name, ((const am_label_t *)b)->name);
}

static am_series_t *series_new(am_metric_family_t *family, const am_label_t *labels,
                               size_t n_labels, int64_t timestamp_ms)
{
    if (family->n_series == family->cap_series) {
        size_t cap = family->cap_series ? family->cap_series * 2 : 16;
        am_series_t *grown = am_realloc(family->series, cap * sizeof(*grown));
        if (grown == NULL) {
            return NULL;
        }
        family->series = grown;
        family->cap_series = cap;
    }
    am_series_t *series = &family->series[family->n_series];
    memset(series, 0, sizeof(*series));
    series->timestamp_ms = timestamp_ms;
    if (n_labels > 0) {
        series->labels = am_calloc(n_labels, sizeof(am_label_t));
        if (series->labels == NULL) {
            return NULL;
        }
    }
    for (size_t i = 0; i < n_labels; i++) {
        if (labels[i].name == NULL || labels[i].value == NULL || labels[i].value[0] == '\0') {
            continue;
        }
        char clean[NAME_MAX_LEN];
        am_metric_label_name(labels[i].name, clean, sizeof(clean));
        bool dup = false;
        for (size_t k = 0; k < series->n_labels && !dup; k++) {
            dup = strcmp(series->labels[k].name, clean) == 0;
        }
        if (dup) {
            continue;
        }
        am_label_t *label = &series->labels[series->n_labels];
        label->name = am_strdup(clean);
        label->value = utf8_dup(labels[i].value);
        series->n_labels++;
        if (label->name == NULL || label->value == NULL) {
            series_free(series);
            return NULL;
        }
    }
    if (series->n_labels > 1) {
        qsort(series->labels, series->n_labels, sizeof(am_label_t), label_cmp);
    }
    family->n_series++;
    return series;
}

am_series_t *am_metric_add_value(am_metric_family_t *family, const am_label_t *labels,
                                 size_t n_labels, double value, int64_t timestamp_ms)
{
    if (family->type == AM_METRIC_HISTOGRAM) {
        return NULL;
    }
    am_series_t *series = series_new(family, labels, n_labels, timestamp_ms);
    if (series != NULL) {
        series->value = value;
    }
    return series;
}

am_series_t *am_metric_add_histogram(am_metric_family_t *family, const am_label_t *labels,
                                     size_t n_labels, const uint64_t *cumulative, double sum,
                                     uint64_t count, int64_t timestamp_ms)
{
    if (family->type != AM_METRIC_HISTOGRAM) {
        return NULL;
    }
    uint64_t *copy = NULL;
    if (family->n_bounds > 0) {
        copy = am_malloc(family->n_bounds * sizeof(uint64_t));
        if (copy == NULL) {
            return NULL;
        }
        memcpy(copy, cumulative, family->n_bounds * sizeof(uint64_t));
    }
    am_series_t *series = series_new(family, labels, n_labels, timestamp_ms);
    if (series == NULL) {
        am_free(copy);
        return NULL;
    }
    series->bucket_counts = copy;
    series->sum = sum;
    series->count = count;
    return series;
}

/* ---- rendering ------------------------------------------------------------- */

const char *am_metric_format_value(double value, char *buf)
{
    if (isnan(value)) {
        return strcpy(buf, "NaN");
    }
    if (isinf(value)) {
        return strcpy(buf, value > 0 ? "+Inf" : "-Inf");
    }
    if (value == floor(value) && fabs(value) < 1e15) {
        snprintf(buf, AM_METRIC_VALUE_STRLEN, "%.0f", value);
        return buf;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, AM_METRIC_VALUE_STRLEN, "%.*g", precision, value);
        if (strtod(buf, NULL) == value) {
            break;
        }
    }
    return buf;
}

typedef struct strbuf {
    char *data;
    size_t len, cap;
    bool failed;
} strbuf_t;

static void sb_reserve(strbuf_t *sb, size_t extra)
{
    if (sb->failed || sb->len + extra + 1 <= sb->cap) {
        return;
    }
    size_t cap = sb->cap ? sb->cap : 4096;
    while (cap < sb->len + extra + 1) {
        cap *= 2;
    }
    char *grown = am_realloc(sb->data, cap);
    if (grown == NULL) {
        sb->failed = true;
        return;
    }
    sb->data = grown;
    sb->cap = cap;
}

static void sb_put(strbuf_t *sb, const char *s, size_t len)
{
    sb_reserve(sb, len);
    if (sb->failed) {
        return;
    }
    memcpy(sb->data + sb->len, s, len);
    sb->len += len;
    sb->data[sb->len] = '\0';
}

static void sb_puts(strbuf_t *sb, const char *s)
{
    sb_put(sb, s, strlen(s));
}

/* Escape for a label value (\\, \", \n) or for HELP text (\\, \n). */
static void sb_escaped(strbuf_t *sb, const char *s, bool quote)
{
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\\') {
            sb_put(sb, "\\\\", 2);
        } else if (*p == '\n') {
            sb_put(sb, "\\n", 2);
        } else if (quote && *p == '"') {
            sb_put(sb, "\\\"", 2);
        } else {
            sb_put(sb, p, 1);
        }
    }
}

static void sb_labels(strbuf_t *sb, const am_series_t *series, const char *le)
{
    if (series->n_labels == 0 && le == NULL) {
        return;
    }
    sb_put(sb, "{", 1);
    for (size_t i = 0; i < series->n_labels; i++) {
        if (i > 0) {
            sb_put(sb, ",", 1);
        }
        sb_puts(sb, series->labels[i].name);
        sb_put(sb, "=\"", 2);
        sb_escaped(sb, series->labels[i].value, true);
        sb_put(sb, "\"", 1);
    }
    if (le != NULL) {
        if (series->n_labels > 0) {
            sb_put(sb, ",", 1);
        }
        sb_put(sb, "le=\"", 4);
        sb_puts(sb, le);
        sb_put(sb, "\"", 1);
    }
    sb_put(sb, "}", 1);
}

static void sb_sample(strbuf_t *sb, const char *name, const char *suffix, const am_series_t *series,
                      const char *le, double value, bool with_timestamps)
{
    char num[AM_METRIC_VALUE_STRLEN];
    sb_puts(sb, name);
    sb_puts(sb, suffix);
    sb_labels(sb, series, le);
    sb_put(sb, " ", 1);
    sb_puts(sb, am_metric_format_value(value, num));
    if (with_timestamps) {
        char ts[32];
        snprintf(ts, sizeof(ts), " %lld", (long long)series->timestamp_ms);
        sb_puts(sb, ts);
    }
    sb_put(sb, "\n", 1);
}

static const char *type_name(am_metric_type_t type)
{
    switch (type) {
    case AM_METRIC_COUNTER:
        return "counter";
    case AM_METRIC_GAUGE:
        return "gauge";
    case AM_METRIC_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

char *am_metric_set_render_text(const am_metric_set_t *set, bool with_timestamps, size_t *len)
{
    strbuf_t sb = {0};
    sb_reserve(&sb, 0);
    if (!sb.failed) {
        sb.data[0] = '\0';
    }
    for (size_t f = 0; set != NULL && f < set->n_families; f++) {
        const am_metric_family_t *family = &set->families[f];
        if (family->n_series == 0) {
            continue;
        }
        sb_puts(&sb, "# HELP ");
        sb_puts(&sb, family->name);
        sb_put(&sb, " ", 1);
        sb_escaped(&sb, family->help, false);
        sb_puts(&sb, "\n# TYPE ");
        sb_puts(&sb, family->name);
        sb_put(&sb, " ", 1);
        sb_puts(&sb, type_name(family->type));
        sb_put(&sb, "\n", 1);
        for (size_t s = 0; s < family->n_series; s++) {
            const am_series_t *series = &family->series[s];
            if (family->type != AM_METRIC_HISTOGRAM) {
                sb_sample(&sb, family->name, "", series, NULL, series->value, with_timestamps);
                continue;
            }
            char le[AM_METRIC_VALUE_STRLEN];
            for (size_t b = 0; b < family->n_bounds; b++) {
                sb_sample(&sb, family->name, "_bucket", series,
                          am_metric_format_value(family->bounds[b], le),
                          (double)series->bucket_counts[b], with_timestamps);
            }
            sb_sample(&sb, family->name, "_bucket", series, "+Inf", (double)series->count,
                      with_timestamps);
            sb_sample(&sb, family->name, "_sum", series, NULL, series->sum, with_timestamps);
            sb_sample(&sb, family->name, "_count", series, NULL, (double)series->count,
                      with_timestamps);
        }
    }
    if (sb.failed) {
        am_free(sb.data);
        return NULL;
    }
    if (len != NULL) {
        *len = sb.len;
    }
    return sb.data;
}

/* ---- batches --------------------------------------------------------------- */

static void metrics_free_cb(struct am_metric_set *set)
{
    am_metric_set_unref(set);
}

void am_batch_attach_metrics(am_batch_t *batch, am_metric_set_t *set)
{
    if (batch->metrics != NULL && batch->metrics_free != NULL) {
        batch->metrics_free(batch->metrics);
    }
    batch->metrics = set;
    batch->metrics_free = metrics_free_cb;
}

am_batch_t *am_metrics_batch_new(am_metric_set_t *set)
{
    am_batch_t *batch = am_batch_new(AM_SIGNAL_METRICS);
    if (batch == NULL) {
        am_metric_set_unref(set);
        return NULL;
    }
    am_batch_attach_metrics(batch, set);
    return batch;
}
