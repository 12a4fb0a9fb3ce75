/*
 * session_internal.h - test hooks of the `session` processor.
 *
 * Production code never calls these: the service creates instances through
 * am_processor_session_ops and the instance's timer drives am__session_tick.
 * Tests create instances themselves (params->loop NULL: no timer), inject a
 * clock and drive the ticks by hand, so nothing in a test sleeps.
 */
#ifndef SESSION_INTERNAL_H
#define SESSION_INTERNAL_H

#include "am_common.h"
#include "am_shard.h"

/* Wall clock in unix nanoseconds.  Default: am_now_unix_nano(). */
typedef uint64_t (*am__session_clock_fn)(void *arg);

void am__session_set_clock(void *instance, am__session_clock_fn fn, void *arg);
/* Use a real shard set for hand-offs (tests without a service).  Set on
 * every instance of the group before the first consume; NULL = call the
 * owning instance directly on the calling thread. */
void am__session_set_shards(void *instance, am_shards_t *shards);
/* The periodic work: idle close and state writes.  Runs on the instance's
 * thread (tests: any thread when no shard set is used). */
void am__session_tick(void *instance);

/* Counters for tests. */
typedef struct am__session_stats {
    uint64_t open;
    uint64_t closed_idle;
    uint64_t closed_evicted;
    uint64_t closed_shutdown;
} am__session_stats_t;
void am__session_stats(void *instance, am__session_stats_t *out);

/* Cost per successful action: total / successes, rounded half away from
 * zero to the nano-unit.  false when successes == 0. */
bool am__session_cpa(am_money_t total, int64_t successes, am_money_t *out);

#endif
