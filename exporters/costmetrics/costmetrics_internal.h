/*
 * costmetrics_internal.h - shared between costmetrics.c (the connector: config,
 * life cycle, reading spans and events) and costmetrics_store.c (the exact,
 * cumulative series store and its snapshots).
 *
 * The store is not thread-safe: the connector serializes every call under
 * its own mutex.
 */
#ifndef AM_COSTMETRICS_INTERNAL_H
#define AM_COSTMETRICS_INTERNAL_H

#include "am_common.h"
#include "am_metrics.h"

/* The metrics costmetrics produces (ARCHITECTURE.md §9). */
typedef enum am__cm_metric {
    AM__CM_COST,             /* agent_cost_total{currency,cost_type}        money */
    AM__CM_TOKENS,           /* agent_tokens_total{token_type}               count */
    AM__CM_ACTIONS,          /* agent_actions_total{action,outcome}          count */
    AM__CM_ACTION_COST,      /* agent_action_cost{action,currency}           histogram */
    AM__CM_TRACE_COST,       /* agent_trace_cost{currency}                   histogram */
    AM__CM_UNPRICED,         /* agent_unpriced_spans_total{reason}           count */
    AM__CM_SESSION_COST,     /* agent_session_cost{currency}                 histogram */
    AM__CM_BUDGET_SPENT,     /* agent_budget_spent{budget,currency}          gauge, money */
    AM__CM_BUDGET_LIMIT,     /* agent_budget_limit{budget,currency}          gauge, money */
    AM__CM_BUDGET_CROSSINGS, /* agent_budget_threshold_crossings_total{budget,threshold} */
    AM__CM_ANOMALIES,        /* agent_cost_anomalies_total{kind}             count */
    AM__CM_METRIC_COUNT,
} am__cm_metric_t;

#define AM__CM_MAX_FIXED 2 /* fixed labels per metric, before the dimensions */
#define AM__CM_MAX_DIMS 16

typedef struct am__cm_series am__cm_series_t;

typedef struct am__cm_store {
    size_t n_dims;
    char **dim_labels;  /* sanitized label names of the dimensions */
    am_money_t *bounds; /* histogram bounds in nano-units */
    size_t n_bounds;
    size_t max_series; /* per metric, before folding into the overflow series */
    /* hash table over every series */
    am__cm_series_t **buckets;
    size_t n_buckets;
    size_t n_series;
    /* per metric, in creation order (stable snapshots) */
    am__cm_series_t **by_metric[AM__CM_METRIC_COUNT];
    size_t n_by_metric[AM__CM_METRIC_COUNT], cap_by_metric[AM__CM_METRIC_COUNT];
    am__cm_series_t *overflow[AM__CM_METRIC_COUNT];
    uint64_t overflowed_points; /* updates folded into an overflow series */
} am__cm_store_t;

/* dim_labels: n_dims sanitized label names (copied); bounds: n_bounds
 * strictly increasing nano-unit bounds (copied).  0 or AM_ENOMEM. */
int am__cm_store_init(am__cm_store_t *store, const char *const *dim_labels, size_t n_dims,
                      const am_money_t *bounds, size_t n_bounds, size_t max_series);
void am__cm_store_free(am__cm_store_t *store);

/* fixed: the metric's fixed label values (see the enum), dims: n_dims values
 * ("" = absent).  Values are copied when a series is created.
 *   add      counters: value += delta (nano-units or a count)
 *   set      gauges: value = v, unless an update with a later time_ns came first
 *   observe  histograms: one observation of `amount` nano-units
 * Return 0 or AM_ENOMEM (the update is lost and the caller logs it). */
int am__cm_add(am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
               const char *const *dims, int64_t delta);
int am__cm_set(am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
               const char *const *dims, int64_t value, uint64_t time_ns);
int am__cm_observe(am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
                   const char *const *dims, am_money_t amount);

/* A cumulative snapshot of every series, timestamped timestamp_ms.  The
 * caller owns the returned reference.  NULL on ENOMEM. */
am_metric_set_t *am__cm_snapshot(const am__cm_store_t *store, int64_t timestamp_ms);

/* The exact value of a counter/gauge series, for tests: true when found. */
bool am__cm_lookup(const am__cm_store_t *store, am__cm_metric_t metric, const char *const *fixed,
                   const char *const *dims, int64_t *value);

#endif
