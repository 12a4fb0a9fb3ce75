/*
 * costmetrics_store.c - the cumulative, exact series store behind costmetrics.
 *
 * Every series is identified by (metric, fixed label values, dimension
 * values) and kept in one chained hash table.  Values are int64: money in
 * nano-units, counts as counts, so a million additions of 1e-9 are exactly
 * 0.001 and never drift the way a double sum does.  Doubles appear only in
 * am__cm_snapshot(), once per series per flush.
 *
 * Cardinality: each metric holds at most `max_series` series; an update
 * that would create one more is folded into that metric's single overflow
 * series, labelled only otel_metric_overflow="true" (the OpenTelemetry SDK's
 * convention), so the totals stay right while the label detail is lost.
 */
#include <stdio.h>
#include <string.h>

#include "costmetrics_internal.h"

struct am__cm_series {
    am__cm_series_t *next; /* hash chain */
    uint32_t hash;
    am__cm_metric_t metric;
    bool overflow;
    char *key; /* fixed then dimension values, each NUL-terminated */
    size_t key_len;
    int64_t value;          /* counter / gauge */
    uint64_t value_time_ns; /* gauge: time of the value */
    uint64_t *bucket_hits;  /* histogram: hits per bucket, n_bounds + 1 (+Inf last) */
    am_money_t sum;
    uint64_t count;
};

typedef struct metric_def {
    const char *name;
    const char *help;
    const char *unit;
    am_metric_type_t type;
    bool money; /* values are nano-units */
    size_t n_fixed;
    const char *fixed[AM__CM_MAX_FIXED];
} metric_def_t;

static const metric_def_t defs[AM__CM_METRIC_COUNT] = {
    [AM__CM_COST] = {"agent_cost_total",
                     "Cost of agent spans by cost type (cost.self and its parts), in currency "
                     "units.",
                     "",
                     AM_METRIC_COUNTER,
                     true,
                     2,
                     {"currency", "cost_type"}},
    [AM__CM_TOKENS] = {"agent_tokens_total",
                       "Tokens used by billable spans by token type (input includes cache "
                       "reads and writes, output includes reasoning).",
                       "tokens",
                       AM_METRIC_COUNTER,
                       false,
                       1,
                       {"token_type"}},
    [AM__CM_ACTIONS] = {"agent_actions_total",
                        "Agent actions by name and outcome.",
                        "",
                        AM_METRIC_COUNTER,
                        false,
                        2,
                        {"action", "outcome"}},
    [AM__CM_ACTION_COST] = {"agent_action_cost",
                            "Cost of each action (cost.subtree of action spans), in currency "
                            "units.",
                            "",
                            AM_METRIC_HISTOGRAM,
                            true,
                            2,
                            {"action", "currency"}},
    [AM__CM_TRACE_COST] = {"agent_trace_cost",
                           "Cost of each trace (cost.trace.total of root spans), in currency "
                           "units.",
                           "",
                           AM_METRIC_HISTOGRAM,
                           true,
                           1,
                           {"currency"}},
    [AM__CM_UNPRICED] = {"agent_unpriced_spans_total",
                         "Spans that could not be priced, by reason (cost.status).",
                         "",
                         AM_METRIC_COUNTER,
                         false,
                         1,
                         {"reason"}},
    [AM__CM_SESSION_COST] = {"agent_session_cost",
                             "Cost of each closed session (session.summary), in currency units.",
                             "",
                             AM_METRIC_HISTOGRAM,
                             true,
                             1,
                             {"currency"}},
    [AM__CM_BUDGET_SPENT] = {"agent_budget_spent",
                             "Spend of a budget when it last crossed a threshold, in currency "
                             "units.",
                             "",
                             AM_METRIC_GAUGE,
                             true,
                             2,
                             {"budget", "currency"}},
    [AM__CM_BUDGET_LIMIT] = {"agent_budget_limit",
                             "Limit of a budget, in currency units.",
                             "",
                             AM_METRIC_GAUGE,
                             true,
                             2,
                             {"budget", "currency"}},
    [AM__CM_BUDGET_CROSSINGS] = {"agent_budget_threshold_crossings_total",
                                 "Budget thresholds crossed (budget.threshold events).",
                                 "",
                                 AM_METRIC_COUNTER,
                                 false,
                                 2,
                                 {"budget", "threshold"}},
    [AM__CM_ANOMALIES] = {"agent_cost_anomalies_total",
                          "Cost anomalies detected (anomaly.detected events), by kind.",
                          "",
                          AM_METRIC_COUNTER,
                          false,
                          1,
                          {"kind"}},
};

#define INITIAL_BUCKETS 1024

int am__cm_store_init(am__cm_store_t *store, const char *const *dim_labels, size_t n_dims,
                      const am_money_t *bounds, size_t n_bounds, size_t max_series)
{
    memset(store, 0, sizeof(*store));
    store->max_series = max_series > 0 ? max_series : 1;
    store->n_buckets = INITIAL_BUCKETS;
    store->buckets = am_calloc(store->n_buckets, sizeof(*store->buckets));
    store->dim_labels = am_calloc(n_dims + 1, sizeof(char *));
    store->bounds = am_calloc(n_bounds + 1, sizeof(am_money_t));
    if (store->buckets == NULL || store->dim_labels == NULL || store->bounds == NULL) {
        goto nomem;
    }
    for (size_t i = 0; i < n_dims; i++) {
        store->dim_labels[i] = am_strdup(dim_labels[i]);
        if (store->dim_labels[i] == NULL) {
            goto nomem;
        }
        store->n_dims++;
    }
    if (n_bounds > 0) {
        memcpy(store->bounds, bounds, n_bounds * sizeof(am_money_t));
    }
    store->n_bounds = n_bounds;
    return 0;
nomem:
    am__cm_store_free(store);
    return AM_ENOMEM;
}

static void series_free(am__cm_series_t *series)
{
    am_free(series->key);
    am_free(series->bucket_hits);
    am_free(series);
}

void am__cm_store_free(am__cm_store_t *store)
{
    for (size_t b = 0; store->buckets != NULL && b < store->n_buckets; b++) {
        for (am__cm_series_t *s = store->buckets[b]; s != NULL;) {
            am__cm_series_t *next = s->next;
            series_free(s);
            s = next;
        }
    }
    for (size_t m = 0; m < AM__CM_METRIC_COUNT; m++) {
        if (store->overflow[m] != NULL) {
            series_free(store->overflow[m]);
        }
        am_free(store->by_metric[m]);
    }
    for (size_t i = 0; store->dim_labels != NULL && i < store->n_dims; i++) {
        am_free(store->dim_labels[i]);
    }
    am_free(store->dim_labels);
    am_free(store->bounds);
    am_free(store->buckets);
    memset(store, 0, sizeof(*store));
}

/* The series key: every label value NUL-terminated, fixed ones first. */
static size_t build_key(const am__cm_store_t *store, am__cm_metric_t metric,
                        const char *const *fixed, const char *const *dims, char *buf, size_t size)
{
    size_t len = 0;
    size_t n_fixed = defs[metric].n_fixed;
    for (size_t i = 0; i < n_fixed + store->n_dims; i++) {
        const char *v = i < n_fixed ? fixed[i] : dims[i - n_fixed];
        if (v == NULL) {
            v = "";
        }
        size_t vlen = strlen(v);
        if (len + vlen + 1 > size) {
            return SIZE_MAX;
        }
        memcpy(buf + len, v, vlen + 1);
        len += vlen + 1;
    }
    return len;
}

static uint32_t hash_key(am__cm_metric_t metric, const char *key, size_t len)
{
    uint32_t h = 2166136261u ^ (uint32_t)metric;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 16777619u;
    }
    return h;
}

static void grow_table(am__cm_store_t *store)
{
    size_t n = store->n_buckets * 2;
    am__cm_series_t **fresh = am_calloc(n, sizeof(*fresh));
    if (fresh == NULL) {
        return; /* keep the old table: longer chains, still correct */
    }
    for (size_t b = 0; b < store->n_buckets; b++) {
        for (am__cm_series_t *s = store->buckets[b]; s != NULL;) {
            am__cm_series_t *next = s->next;
            s->next = fresh[s->hash & (n - 1)];
            fresh[s->hash & (n - 1)] = s;
            s = next;
        }
    }
    am_free(store->buckets);
    store->buckets = fresh;
    store->n_buckets = n;
}

static am__cm_series_t *series_alloc(const am__cm_store_t *store, am__cm_metric_t metric)
{
    am__cm_series_t *series = am_calloc(1, sizeof(*series));
    if (series == NULL) {
        return NULL;
    }
    series->metric = metric;
    if (defs[metric].type == AM_METRIC_HISTOGRAM) {
        series->bucket_hits = am_calloc(store->n_bounds + 1, sizeof(uint64_t));
        if (series->bucket_hits == NULL) {
            am_free(series);
            return NULL;
        }
    }
    return series;
}

static am__cm_series_t *find_or_create(am__cm_store_t *store, am__cm_metric_t metric,
                                       const char *const *fixed, const char *const *dims)
{
    char stack[2048];
    char *key = stack;
    size_t len = build_key(store, metric, fixed, dims, stack, sizeof(stack));
    char *heap = NULL;
    if (len == SIZE_MAX) {
        size_t need = 0;
        size_t n_fixed = defs[metric].n_fixed;
        for (size_t i = 0; i < n_fixed + store->n_dims; i++) {
            const char *v = i < n_fixed ? fixed[i] : dims[i - n_fixed];
            need += (v != NULL ? strlen(v) : 0) + 1;
        }
        heap = am_malloc(need);
        if (heap == NULL) {
            return NULL;
        }
        key = heap;
        len = build_key(store, metric, fixed, dims, heap, need);
    }
    uint32_t h = hash_key(metric, key, len);
    am__cm_series_t *found = NULL;
    for (am__cm_series_t *s = store->buckets[h & (store->n_buckets - 1)]; s != NULL; s = s->next) {
        if (s->hash == h && s->metric == metric && s->key_len == len &&
            memcmp(s->key, key, len) == 0) {
            found = s;
            break;
        }
    }
    if (found != NULL) {
        am_free(heap);
        return found;
    }
    if (store->n_by_metric[metric] >= store->max_series) {
        am_free(heap);
        if (store->overflow[metric] == NULL) {
            store->overflow[metric] = series_alloc(store, metric);
            if (store->overflow[metric] != NULL) {
                store->overflow[metric]->overflow = true;
            }
        }
        store->overflowed_points++;
        return store->overflow[metric];
    }
    if (store->n_by_metric[metric] == store->cap_by_metric[metric]) {
        size_t cap = store->cap_by_metric[metric] ? store->cap_by_metric[metric] * 2 : 64;
        am__cm_series_t **grown = am_realloc(store->by_metric[metric], cap * sizeof(*grown));
        if (grown == NULL) {
            am_free(heap);
            return NULL;
        }
        store->by_metric[metric] = grown;
        store->cap_by_metric[metric] = cap;
    }
    am__cm_series_t *series = series_alloc(store, metric);
    if (series == NULL) {
        am_free(heap);
        return NULL;
    }
    if (heap != NULL) {
        series->key = heap;
    } else if ((series->key = am_malloc(len)) != NULL) {
        memcpy(series->key, key, len);
    } else {
        series_free(series);
        return NULL;
    }
    series->key_len = len;
    series->hash = h;
    size_t b = h & (store->n_buckets - 1);
    series->next = store->buckets[b];
    store->buckets[b] = series;
    store->by_metric[metric][store->n_by_metric[metric]++] = series;
    store->n_series++;
    if (store->n_series > store->n_buckets) {
        grow_table(store);
    }
    return series;
}

int am__cm_add(am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
               const char *const *dims, int64_t delta)
{
    am__cm_series_t *series = find_or_create(store, metric, fixed, dims);
    if (series == NULL) {
        return AM_ENOMEM;
    }
    series->value += delta;
    return 0;
}

int am__cm_set(am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
               const char *const *dims, int64_t value, uint64_t time_ns)
{
    am__cm_series_t *series = find_or_create(store, metric, fixed, dims);
    if (series == NULL) {
        return AM_ENOMEM;
    }
    /* Shards report in any order: the latest event wins, not the last call. */
    if (time_ns >= series->value_time_ns) {
        series->value = value;
        series->value_time_ns = time_ns;
    }
    return 0;
}

int am__cm_observe(am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
                   const char *const *dims, am_money_t amount)
{
    am__cm_series_t *series = find_or_create(store, metric, fixed, dims);
    if (series == NULL) {
        return AM_ENOMEM;
    }
    size_t b = 0;
    while (b < store->n_bounds && amount > store->bounds[b]) {
        b++;
    }
    series->bucket_hits[b]++;
    series->sum += amount;
    series->count++;
    return 0;
}

bool am__cm_lookup(const am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
                   const char *const *dims, int64_t *value)
{
    char key[2048];
    size_t len = build_key(store, metric, fixed, dims, key, sizeof(key));
    if (len == SIZE_MAX) {
        return false;
    }
    uint32_t h = hash_key(metric, key, len);
    for (am__cm_series_t *s = store->buckets[h & (store->n_buckets - 1)]; s != NULL; s = s->next) {
        if (s->hash == h && s->metric == metric && s->key_len == len &&
            memcmp(s->key, key, len) == 0) {
            *value = s->value;
            return true;
        }
    }
    return false;
}

static double export_value(const metric_def_t *def, int64_t value)
{
    return def->money ? am_money_to_double(value) : (double)value;
}

static int snapshot_series(const am__cm_store_t *store, const metric_def_t *def,
                           am_metric_family_t *family, const am__cm_series_t *series,
                           int64_t timestamp_ms)
{
    am_label_t labels[AM__CM_MAX_FIXED + AM__CM_MAX_DIMS];
    size_t n_labels = 0;
    if (series->overflow) {
        labels[n_labels++] = (am_label_t){.name = "otel_metric_overflow", .value = "true"};
    } else {
        const char *v = series->key;
        for (size_t i = 0; i < def->n_fixed + store->n_dims && n_labels < AM_ARRAY_SIZE(labels);
             i++) {
            const char *name =
                i < def->n_fixed ? def->fixed[i] : store->dim_labels[i - def->n_fixed];
            labels[n_labels++] = (am_label_t){.name = (char *)name, .value = (char *)v};
            v += strlen(v) + 1;
        }
    }
    if (def->type != AM_METRIC_HISTOGRAM) {
        return am_metric_add_value(family, labels, n_labels, export_value(def, series->value),
                                   timestamp_ms) != NULL
                   ? 0
                   : AM_ENOMEM;
    }
    uint64_t cumulative[256];
    uint64_t *cum = store->n_bounds <= AM_ARRAY_SIZE(cumulative)
                        ? cumulative
                        : am_malloc(store->n_bounds * sizeof(uint64_t));
    if (cum == NULL) {
        return AM_ENOMEM;
    }
    uint64_t running = 0;
    for (size_t b = 0; b < store->n_bounds; b++) {
        running += series->bucket_hits[b];
        cum[b] = running;
    }
    am_series_t *out =
        am_metric_add_histogram(family, labels, n_labels, cum, am_money_to_double(series->sum),
                                series->count, timestamp_ms);
    if (cum != cumulative) {
        am_free(cum);
    }
    return out != NULL ? 0 : AM_ENOMEM;
}

am_metric_set_t *am__cm_snapshot(const am__cm_store_t *store, int64_t timestamp_ms)
{
    am_metric_set_t *set = am_metric_set_new(timestamp_ms);
    if (set == NULL) {
        return NULL;
    }
    double *bounds = am_calloc(store->n_bounds + 1, sizeof(double));
    if (bounds == NULL) {
        goto nomem;
    }
    for (size_t b = 0; b < store->n_bounds; b++) {
        bounds[b] = am_money_to_double(store->bounds[b]);
    }
    for (size_t m = 0; m < AM__CM_METRIC_COUNT; m++) {
        const metric_def_t *def = &defs[m];
        if (store->n_by_metric[m] == 0 && store->overflow[m] == NULL) {
            continue;
        }
        am_metric_family_t *family =
            am_metric_set_family(set, def->name, def->help, def->unit, def->type, bounds,
                                 def->type == AM_METRIC_HISTOGRAM ? store->n_bounds : 0);
        if (family == NULL) {
            goto nomem;
        }
        for (size_t i = 0; i < store->n_by_metric[m]; i++) {
            if (snapshot_series(store, def, family, store->by_metric[m][i], timestamp_ms) != 0) {
                goto nomem;
            }
        }
        if (store->overflow[m] != NULL &&
            snapshot_series(store, def, family, store->overflow[m], timestamp_ms) != 0) {
            goto nomem;
        }
    }
    am_free(bounds);
    return set;
nomem:
    am_free(bounds);
    am_metric_set_unref(set);
    return NULL;
}
