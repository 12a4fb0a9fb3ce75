/*
 * anomaly_internal.h - test hooks of the `anomaly` processor.
 *
 * Tests create instances with params->loop NULL (no timer), inject a clock
 * and drive ticks by hand, so no test sleeps.
 */
#ifndef ANOMALY_INTERNAL_H
#define ANOMALY_INTERNAL_H

#include "am_common.h"
#include "am_shard.h"

typedef uint64_t (*am__anomaly_clock_fn)(void *arg);

void am__anomaly_set_clock(void *instance, am__anomaly_clock_fn fn, void *arg);
/* Real shard set for hand-offs; NULL = the owner runs on the calling thread. */
void am__anomaly_set_shards(void *instance, am_shards_t *shards);
/* Periodic work: closes burn-rate windows without traffic, forgets idle
 * state. */
void am__anomaly_tick(void *instance);
/* anomaly.detected events emitted by this instance. */
uint64_t am__anomaly_events_emitted(void *instance);

#endif
