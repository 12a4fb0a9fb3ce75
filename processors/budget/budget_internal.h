/*
 * budget_internal.h - test hooks of the `budget` processor.
 *
 * Tests create instances with params->loop NULL (no timer), inject a clock,
 * drive ticks by hand and query the HTTP API without a socket through
 * am__budget_render (the route handler is a thin wrapper around it).
 */
#ifndef BUDGET_INTERNAL_H
#define BUDGET_INTERNAL_H

#include "am_common.h"
#include "am_shard.h"

typedef uint64_t (*am__budget_clock_fn)(void *arg);

void am__budget_set_clock(void *instance, am__budget_clock_fn fn, void *arg);
/* The clock of the group's HTTP API (default: the wall clock). */
void am__budget_set_api_clock(void *instance, am__budget_clock_fn fn, void *arg);
/* Real shard set for hand-offs (set on one instance of the group before the
 * first consume); NULL = the owner runs on the calling thread. */
void am__budget_set_shards(void *instance, am_shards_t *shards);
/* Periodic work: garbage collection and state writes. */
void am__budget_tick(void *instance);

/* Answer GET `path` ("/v1/budgets", "/v1/budgets/{name}/{key}") as the route
 * would: returns the HTTP status and a malloc'd JSON body (caller frees). */
int am__budget_render(void *instance, const char *path, char **body, size_t *len);

/* budget.threshold events emitted by this instance. */
uint64_t am__budget_events_emitted(void *instance);

/* [start, end) of the UTC calendar window ("hour", "day", "month") that
 * contains `now`, in unix nanoseconds.  Exposed for tests. */
int am__budget_calendar_window(const char *window, uint64_t now, uint64_t *start, uint64_t *end);

#endif
