/*
 * am_metrics.h - the metric set that flows through metrics pipelines.
 *
 * The `costmetrics` connector accumulates costs exactly (int64 nano-units)
 * and, every flush_interval, turns its state into an am_metric_set_t: a
 * snapshot of metric families (name, help, type, unit), each with series of
 * sorted, sanitized labels and either a value or a classic histogram.  The
 * `prometheus` exporter renders the newest snapshot as text format 0.0.4 on
 * scrape; `prometheusremotewrite` encodes each snapshot as a WriteRequest.
 *
 * Values are doubles: they are the exported view of exact fixed-point sums
 * (money converted once, at snapshot time, from nano-units) or of integer
 * counts.  Nothing downstream adds them up again.
 *
 * Names: metric names follow [a-zA-Z_:][a-zA-Z0-9_:]*, label names
 * [a-zA-Z_][a-zA-Z0-9_]*.  Builders sanitize whatever they are given
 * (gen_ai.provider.name -> gen_ai_provider_name, "9x" -> "_9x", names that
 * would start with the reserved "__" get a "key" prefix), so a set is always
 * valid.  Label values are kept as UTF-8 (invalid bytes become U+FFFD);
 * labels with an empty value are dropped, which is what Prometheus means by
 * an empty label anyway.
 *
 * Ownership and threads: a set is built by one thread, then frozen when it
 * is attached to a batch (am_batch_attach_metrics); from then on it is
 * read-only and may be read from any thread.  It is reference-counted
 * (atomically): am_metric_set_new() returns one reference, am_metric_set_ref()
 * adds one (the prometheus exporter keeps the newest set this way),
 * am_metric_set_unref() drops one and frees everything on the last.
 */
#ifndef AM_METRICS_H
#define AM_METRICS_H

#include <stdatomic.h>

#include "am_batch.h"

typedef enum am_metric_type {
    AM_METRIC_COUNTER,
    AM_METRIC_GAUGE,
    AM_METRIC_HISTOGRAM,
} am_metric_type_t;

typedef struct am_label {
    char *name;
    char *value;
} am_label_t;

typedef struct am_series {
    am_label_t *labels; /* sorted by name (strcmp), names unique, values non-empty */
    size_t n_labels;
    double value; /* counter / gauge */
    /* histogram: n_bounds cumulative counts (the +Inf bucket is `count`) */
    uint64_t *bucket_counts;
    double sum;
    uint64_t count;
    int64_t timestamp_ms;
} am_series_t;

typedef struct am_metric_family {
    char *name;
    char *help;
    char *unit; /* "" when none (e.g. "USD" or "tokens") */
    am_metric_type_t type;
    double *bounds; /* histogram upper bounds, strictly increasing, no +Inf */
    size_t n_bounds;
    am_series_t *series;
    size_t n_series, cap_series;
} am_metric_family_t;

typedef struct am_metric_set {
    atomic_int refcount;
    int64_t timestamp_ms; /* default timestamp of series added to it */
    am_metric_family_t *families;
    size_t n_families, cap_families;
} am_metric_set_t;

/* A new empty set whose series default to `timestamp_ms` (Unix ms).  One
 * reference; NULL on ENOMEM. */
am_metric_set_t *am_metric_set_new(int64_t timestamp_ms);
am_metric_set_t *am_metric_set_ref(am_metric_set_t *set);
/* Drop a reference; the last frees families, series and strings.  NULL ok. */
void am_metric_set_unref(am_metric_set_t *set);

/* The family `name` (sanitized), created when absent.  For histograms
 * `bounds` (n_bounds, strictly increasing, finite) is copied; a second call
 * with the same name returns the existing family, whatever the other
 * arguments.  NULL on ENOMEM or invalid bounds. */
am_metric_family_t *am_metric_set_family(am_metric_set_t *set, const char *name, const char *help,
                                         const char *unit, am_metric_type_t type,
                                         const double *bounds, size_t n_bounds);

/* Add a counter/gauge series.  labels: n_labels name/value pairs in any
 * order; names are sanitized, empty values dropped, later duplicates of a
 * name ignored.  Strings are copied.  Returns the series or NULL on ENOMEM
 * (or on a histogram family). */
am_series_t *am_metric_add_value(am_metric_family_t *family, const am_label_t *labels,
                                 size_t n_labels, double value, int64_t timestamp_ms);
/* Add a histogram series: cumulative[i] counts observations <= bounds[i]
 * (n_bounds entries, non-decreasing), `count` all observations. */
am_series_t *am_metric_add_histogram(am_metric_family_t *family, const am_label_t *labels,
                                     size_t n_labels, const uint64_t *cumulative, double sum,
                                     uint64_t count, int64_t timestamp_ms);

/* Sanitize into buf (always NUL-terminated, truncated to size-1).  Returns
 * buf.  Label names: every byte outside [a-zA-Z0-9_] becomes '_', a leading
 * digit gets a '_' prefix, a leading "__" gets a "key" prefix, "" becomes
 * "_".  Metric names also allow ':'. */
const char *am_metric_label_name(const char *in, char *buf, size_t size);
const char *am_metric_name(const char *in, char *buf, size_t size);
bool am_metric_label_name_valid(const char *name);
bool am_metric_name_valid(const char *name);

/* Shortest text that parses back to the same double ("0.1", "1e-09",
 * "+Inf", "-Inf", "NaN").  buf must hold AM_METRIC_VALUE_STRLEN bytes. */
#define AM_METRIC_VALUE_STRLEN 40
const char *am_metric_format_value(double value, char *buf);

/* Render the set as Prometheus text exposition format 0.0.4: per family a
 * HELP and a TYPE line, then its series (histograms as _bucket{le}, _sum,
 * _count), label values and HELP escaped.  with_timestamps appends each
 * series' timestamp.  Returns a malloc'd NUL-terminated string (caller
 * frees with am_free) and its length in *len; NULL on ENOMEM.  set may be
 * NULL (empty output). */
char *am_metric_set_render_text(const am_metric_set_t *set, bool with_timestamps, size_t *len);

#define AM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Attach `set` to `batch` (batch->metrics, metrics_free = unref): the batch
 * takes over the caller's reference and frees it with the batch.  The set
 * must not be modified afterwards.  Replaces (and drops) a set already
 * attached. */
void am_batch_attach_metrics(am_batch_t *batch, am_metric_set_t *set);
/* A new AM_SIGNAL_METRICS batch carrying `set` (reference taken over, also
 * on failure).  NULL on ENOMEM. */
am_batch_t *am_metrics_batch_new(am_metric_set_t *set);

#endif
