/*
 * am_selfmetrics.h - agentmeter's own telemetry (ARCHITECTURE.md §9), served
 * as Prometheus text on service.telemetry.metrics.address/metrics.
 *
 * Series are process-wide and identified by (name, labels): registering the
 * same pair twice returns the same series, so counters survive a config
 * reload.  Updates are lock-free atomics, safe from any thread.  Gauge
 * callbacks run on the telemetry (main) thread while rendering and must be
 * thread-safe; unregister them (by user_data) before freeing what they read.
 */
#ifndef AM_SELFMETRICS_H
#define AM_SELFMETRICS_H

#include <stdatomic.h>

#include "am_common.h"

typedef struct am_counter {
    atomic_uint_fast64_t value;
} am_counter_t;

typedef struct am_gauge {
    atomic_int_fast64_t value;
} am_gauge_t;

/* labels: already-formatted Prometheus label pairs without braces, e.g.
 * `receiver="otlp",transport="grpc"`, or "" / NULL.  Never returns NULL
 * (a static sink counter on allocation failure). */
am_counter_t *am_selfmetrics_counter(const char *name, const char *help, const char *labels);
am_gauge_t *am_selfmetrics_gauge(const char *name, const char *help, const char *labels);
typedef int64_t (*am_gauge_fn)(void *user_data);
int am_selfmetrics_gauge_fn(const char *name, const char *help, const char *labels, am_gauge_fn fn,
                            void *user_data);
void am_selfmetrics_unregister(void *user_data);

static inline void am_counter_add(am_counter_t *counter, uint64_t delta)
{
    atomic_fetch_add_explicit(&counter->value, delta, memory_order_relaxed);
}
static inline uint64_t am_counter_get(am_counter_t *counter)
{
    return atomic_load_explicit(&counter->value, memory_order_relaxed);
}
static inline void am_gauge_set(am_gauge_t *gauge, int64_t value)
{
    atomic_store_explicit(&gauge->value, value, memory_order_relaxed);
}
static inline void am_gauge_add(am_gauge_t *gauge, int64_t delta)
{
    atomic_fetch_add_explicit(&gauge->value, delta, memory_order_relaxed);
}

/* Render every series (plus process RSS/CPU/start time) as Prometheus text
 * exposition format 0.0.4.  Returns a malloc'd string; caller frees. */
char *am_selfmetrics_render(size_t *len);
/* Free everything (at exit, for leak checkers). */
void am_selfmetrics_reset(void);

#endif
