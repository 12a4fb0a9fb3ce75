/*
 * am_shard.h - shard threads: each runs its own libuv loop and owns the
 * state of the stateful processors placed on it (ARCHITECTURE.md §10).
 *
 * Work reaches a shard through its inbox: a mutex-protected list plus a
 * uv_async_t that is signalled only on the empty -> non-empty transition;
 * the shard drains everything in one go (the h2o pattern).  The inbox is
 * bounded by span count: am_shard_post_batch() refuses (AM_RETRY) when a
 * shard is full, which the receiver turns into backpressure.
 */
#ifndef AM_SHARD_H
#define AM_SHARD_H

#include <uv.h>

#include "am_component.h"

typedef struct am_shard am_shard_t;
typedef struct am_shards am_shards_t;

typedef void (*am_shard_fn)(void *arg);

/* Start n shard threads.  max_queued_spans bounds each inbox (0 = 65536
 * spans: about 150 MiB of decoded requests at worst; past it the receivers
 * answer UNAVAILABLE / 503 and clients retry). */
int am_shards_start(int n, size_t max_queued_spans, am_shards_t **out);
int am_shards_count(const am_shards_t *shards);
am_shard_t *am_shards_get(am_shards_t *shards, int index);
uv_loop_t *am_shard_loop(am_shard_t *shard);
int am_shard_index(const am_shard_t *shard);
/* The shard whose thread is calling, or NULL on other threads. */
am_shard_t *am_shard_current(void);

/* Hand `batch` (a reference is taken) to `consumer` on the shard's thread.
 * AM_RETRY when the inbox is over its span bound or the shard stops. */
am_status_t am_shard_post_batch(am_shard_t *shard, am_consumer_t *consumer, am_batch_t *batch);
/* True when `spans` more fit under the inbox bound right now.  Only the
 * thread that posts batches (the receivers' main thread) adds to inboxes, so
 * a yes stays true until that thread posts. */
bool am_shard_has_room(am_shard_t *shard, size_t spans);
/* Post without the bound (after am_shard_has_room said yes for every part
 * of a request, so a request is taken whole or refused whole). */
am_status_t am_shard_post_batch_reserved(am_shard_t *shard, am_consumer_t *consumer,
                                         am_batch_t *batch);
/* Run fn(arg) on the shard's thread (never refused; for control work such
 * as shutdown and cross-shard hand-offs).  Returns AM_ESHUTDOWN once the
 * shard has stopped (fn is then not called). */
int am_shard_post_fn(am_shard_t *shard, am_shard_fn fn, void *arg);
/* Run fn(arg) on the shard's thread and wait for it to return. */
int am_shard_call(am_shard_t *shard, am_shard_fn fn, void *arg);
/* Run fn(arg) on shard `index` of `shards` (and wait for it when `wait`);
 * inline on the caller's thread when `shards` is NULL (tests, no shards) or
 * the shard has stopped, since nothing else runs there any more. */
void am_shards_run(am_shards_t *shards, int index, am_shard_fn fn, void *arg, bool wait);
/* Spans waiting in the inbox (for self-metrics). */
size_t am_shard_queued_spans(am_shard_t *shard);

/* Stop loops after draining inboxes, join threads, free. */
void am_shards_stop(am_shards_t *shards);

/* Shard for a trace id (stable hash of the 16 bytes). */
int am_shard_for_trace(const uint8_t *trace_id, size_t len, int n_shards);
/* Shard for a string key (session id ...). */
int am_shard_for_key(const char *key, int n_shards);

/* Split a traces batch into per-shard batches by trace id.  out[i] is NULL
 * when shard i gets nothing; when every span goes to one shard, that entry
 * is a new reference to `batch` itself.  Returns 0 or AM_ENOMEM (then no
 * out[] reference is held). */
int am_batch_split_by_shard(am_batch_t *batch, int n_shards, am_batch_t **out);

#endif
