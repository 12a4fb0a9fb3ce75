/*
 * am_shard.c - see am_shard.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_setname_np */
#endif
#include "am_shard.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_log.h"

typedef struct shard_item {
    struct shard_item *next;
    am_consumer_t *consumer; /* batch item when non-NULL */
    am_batch_t *batch;
    am_shard_fn fn;          /* fn item otherwise */
    void *arg;
} shard_item_t;

struct am_shard {
    int index;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_mutex_t lock;
    shard_item_t *head, *tail;
    size_t queued_spans;
    size_t max_queued_spans;
    bool stopping; /* no more items accepted */
    bool stopped;
    uv_sem_t started;
};

struct am_shards {
    int count;
    am_shard_t *shards;
};

static _Thread_local am_shard_t *current_shard;

static void shard_drain(uv_async_t *async)
{
    am_shard_t *shard = async->data;
    uv_mutex_lock(&shard->lock);
    shard_item_t *item = shard->head;
    shard->head = shard->tail = NULL;
    size_t spans = shard->queued_spans;
    shard->queued_spans = 0;
    bool stopping = shard->stopping;
    uv_mutex_unlock(&shard->lock);
    AM_UNUSED(spans);
    while (item != NULL) {
        shard_item_t *next = item->next;
        if (item->consumer != NULL) {
            /* Downstream RETRY cannot be passed back to a client that was
             * already answered; the processors and exporters own retries
             * from here on. */
            am_consume(item->consumer, item->batch);
            am_batch_unref(item->batch);
        } else {
            item->fn(item->arg);
        }
        am_free(item);
        item = next;
    }
    if (stopping) {
        uv_mutex_lock(&shard->lock);
        bool empty = shard->head == NULL;
        uv_mutex_unlock(&shard->lock);
        if (empty) {
            uv_stop(&shard->loop);
        }
    }
}

static void shard_close_handle(uv_handle_t *handle, void *arg)
{
    am_shard_t *shard = arg;
    if (uv_is_closing(handle)) {
        return;
    }
    if (handle != (uv_handle_t *)&shard->wake) {
        AM_WARN("shard", "shard %d: closing a %s handle left open at shutdown", shard->index,
                uv_handle_type_name(uv_handle_get_type(handle)));
    }
    uv_close(handle, NULL);
}

static void shard_main(void *arg)
{
    am_shard_t *shard = arg;
    current_shard = shard;
    char name[16]; /* the kernel keeps 15 characters */
    snprintf(name, sizeof(name), "am-shard-%d", shard->index);
    pthread_setname_np(pthread_self(), name);
    uv_sem_post(&shard->started);
    uv_run(&shard->loop, UV_RUN_DEFAULT);
    /* Components closed their handles in shutdown; close whatever is left
     * (the wake handle, and any handle a component forgot, with a warning)
     * so the loop can end. */
    uv_walk(&shard->loop, shard_close_handle, shard);
    uv_run(&shard->loop, UV_RUN_DEFAULT);
}

int am_shards_start(int n, size_t max_queued_spans, am_shards_t **out)
{
    if (n < 1) {
        n = 1;
    }
    am_shards_t *shards = am_calloc(1, sizeof(*shards));
    if (shards == NULL) {
        return AM_ENOMEM;
    }
    shards->shards = am_calloc((size_t)n, sizeof(am_shard_t));
    if (shards->shards == NULL) {
        am_free(shards);
        return AM_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        am_shard_t *shard = &shards->shards[i];
        shard->index = i;
        shard->max_queued_spans = max_queued_spans > 0 ? max_queued_spans : (size_t)65536;
        uv_loop_init(&shard->loop);
        uv_mutex_init(&shard->lock);
        uv_async_init(&shard->loop, &shard->wake, shard_drain);
        shard->wake.data = shard;
        uv_sem_init(&shard->started, 0);
        if (uv_thread_create(&shard->thread, shard_main, shard) != 0) {
            AM_ERROR("shard", "cannot start shard thread %d", i);
            abort();
        }
        uv_sem_wait(&shard->started);
        shards->count++;
    }
    *out = shards;
    return 0;
}

int am_shards_count(const am_shards_t *shards)
{
    return shards->count;
}

am_shard_t *am_shards_get(am_shards_t *shards, int index)
{
    return &shards->shards[index];
}

uv_loop_t *am_shard_loop(am_shard_t *shard)
{
    return &shard->loop;
}

int am_shard_index(const am_shard_t *shard)
{
    return shard->index;
}

am_shard_t *am_shard_current(void)
{
    return current_shard;
}

static int shard_push(am_shard_t *shard, shard_item_t *item, size_t spans, bool bounded)
{
    uv_mutex_lock(&shard->lock);
    if (shard->stopped || (bounded && shard->stopping)) {
        uv_mutex_unlock(&shard->lock);
        return AM_ESHUTDOWN;
    }
    if (bounded && shard->queued_spans > 0 &&
        shard->queued_spans + spans > shard->max_queued_spans) {
        uv_mutex_unlock(&shard->lock);
        return AM_EBUSY;
    }
    bool was_empty = shard->head == NULL;
    if (shard->tail != NULL) {
        shard->tail->next = item;
    } else {
        shard->head = item;
    }
    shard->tail = item;
    shard->queued_spans += spans;
    uv_mutex_unlock(&shard->lock);
    if (was_empty) {
        uv_async_send(&shard->wake);
    }
    return 0;
}

bool am_shard_has_room(am_shard_t *shard, size_t spans)
{
    uv_mutex_lock(&shard->lock);
    bool room = !shard->stopping && !shard->stopped &&
                (shard->queued_spans == 0 || shard->queued_spans + spans <= shard->max_queued_spans);
    uv_mutex_unlock(&shard->lock);
    return room;
}

am_status_t am_shard_post_batch_reserved(am_shard_t *shard, am_consumer_t *consumer,
                                         am_batch_t *batch)
{
    shard_item_t *item = am_calloc(1, sizeof(*item));
    if (item == NULL) {
        return AM_RETRY;
    }
    item->consumer = consumer;
    item->batch = am_batch_ref(batch);
    if (shard_push(shard, item, batch->span_count, false) != 0) {
        am_batch_unref(batch);
        am_free(item);
        return AM_RETRY;
    }
    return AM_OK;
}

am_status_t am_shard_post_batch(am_shard_t *shard, am_consumer_t *consumer, am_batch_t *batch)
{
    shard_item_t *item = am_calloc(1, sizeof(*item));
    if (item == NULL) {
        return AM_RETRY;
    }
    item->consumer = consumer;
    item->batch = am_batch_ref(batch);
    if (shard_push(shard, item, batch->span_count, true) != 0) {
        am_batch_unref(batch);
        am_free(item);
        return AM_RETRY;
    }
    return AM_OK;
}

int am_shard_post_fn(am_shard_t *shard, am_shard_fn fn, void *arg)
{
    shard_item_t *item = am_calloc(1, sizeof(*item));
    if (item == NULL) {
        return AM_ENOMEM;
    }
    item->fn = fn;
    item->arg = arg;
    int rc = shard_push(shard, item, 0, false);
    if (rc != 0) {
        am_free(item);
    }
    return rc;
}

typedef struct shard_call {
    am_shard_fn fn;
    void *arg;
    uv_sem_t done;
} shard_call_t;

static void shard_call_run(void *arg)
{
    shard_call_t *call = arg;
    call->fn(call->arg);
    uv_sem_post(&call->done);
}

int am_shard_call(am_shard_t *shard, am_shard_fn fn, void *arg)
{
    if (current_shard == shard) {
        fn(arg);
        return 0;
    }
    shard_call_t call = {.fn = fn, .arg = arg};
    uv_sem_init(&call.done, 0);
    int rc = am_shard_post_fn(shard, shard_call_run, &call);
    if (rc == 0) {
        uv_sem_wait(&call.done);
    }
    uv_sem_destroy(&call.done);
    return rc;
}

void am_shards_run(am_shards_t *shards, int index, am_shard_fn fn, void *arg, bool wait)
{
    if (shards == NULL) {
        fn(arg);
        return;
    }
    am_shard_t *target = am_shards_get(shards, index);
    int rc = wait ? am_shard_call(target, fn, arg) : am_shard_post_fn(target, fn, arg);
    if (rc != 0) {
        fn(arg);
    }
}

size_t am_shard_queued_spans(am_shard_t *shard)
{
    uv_mutex_lock(&shard->lock);
    size_t spans = shard->queued_spans;
    uv_mutex_unlock(&shard->lock);
    return spans;
}

void am_shards_stop(am_shards_t *shards)
{
    if (shards == NULL) {
        return;
    }
    for (int i = 0; i < shards->count; i++) {
        am_shard_t *shard = &shards->shards[i];
        uv_mutex_lock(&shard->lock);
        shard->stopping = true;
        uv_mutex_unlock(&shard->lock);
        uv_async_send(&shard->wake);
    }
    for (int i = 0; i < shards->count; i++) {
        am_shard_t *shard = &shards->shards[i];
        uv_thread_join(&shard->thread);
        uv_mutex_lock(&shard->lock);
        shard->stopped = true;
        shard_item_t *item = shard->head;
        shard->head = shard->tail = NULL;
        uv_mutex_unlock(&shard->lock);
        /* Items posted after the loop stopped: run them here so nothing
         * queued is lost or leaked. */
        while (item != NULL) {
            shard_item_t *next = item->next;
            if (item->consumer != NULL) {
                am_consume(item->consumer, item->batch);
                am_batch_unref(item->batch);
            } else {
                item->fn(item->arg);
            }
            am_free(item);
            item = next;
        }
        if (uv_loop_close(&shard->loop) != 0) {
            AM_WARN("shard", "shard %d: loop closed with handles still open", i);
        }
        uv_mutex_destroy(&shard->lock);
        uv_sem_destroy(&shard->started);
    }
    am_free(shards->shards);
    am_free(shards);
}

static uint64_t fnv1a(const uint8_t *data, size_t len)
{
    uint64_t hash = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        hash ^= data[i];
        hash *= UINT64_C(0x100000001b3);
    }
    return hash;
}

int am_shard_for_trace(const uint8_t *trace_id, size_t len, int n_shards)
{
    if (n_shards <= 1) {
        return 0;
    }
    return (int)(fnv1a(trace_id, len) % (uint64_t)n_shards);
}

int am_shard_for_key(const char *key, int n_shards)
{
    if (n_shards <= 1) {
        return 0;
    }
    return (int)(fnv1a((const uint8_t *)key, strlen(key)) % (uint64_t)n_shards);
}

int am_batch_split_by_shard(am_batch_t *batch, int n_shards, am_batch_t **out)
{
    for (int i = 0; i < n_shards; i++) {
        out[i] = NULL;
    }
    am_pb_export_req_t *req = batch->traces;
    if (n_shards <= 1 || req == NULL) {
        out[0] = am_batch_ref(batch);
        return 0;
    }
    /* First pass: does everything go to one shard? (common with one trace
     * per request, and then no copy is made at all). */
    int only = -1;
    bool mixed = false;
    for (size_t r = 0; r < req->n_resource_spans && !mixed; r++) {
        am_pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t s = 0; s < rs->n_scope_spans && !mixed; s++) {
            am_pb_scope_spans_t *ss = rs->scope_spans[s];
            for (size_t i = 0; i < ss->n_spans; i++) {
                am_pb_span_t *span = ss->spans[i];
                int shard = am_shard_for_trace(span->trace_id.data, span->trace_id.len, n_shards);
                if (only == -1) {
                    only = shard;
                } else if (only != shard) {
                    mixed = true;
                    break;
                }
            }
        }
    }
    if (!mixed) {
        out[only < 0 ? 0 : only] = am_batch_ref(batch);
        return 0;
    }
    /* Mixed: build one view per shard, sharing span objects. */
    int rc = AM_ENOMEM;
    for (int k = 0; k < n_shards; k++) {
        am_batch_t *part = am_batch_new(batch->signal);
        if (part == NULL || am_batch_hold_arena(part, batch->arena) != 0) {
            am_batch_unref(part);
            goto fail;
        }
        for (size_t h = 0; h < batch->n_held; h++) {
            if (am_batch_hold_arena(part, batch->held[h]) != 0) {
                am_batch_unref(part);
                goto fail;
            }
        }
        part->received_unix_nano = batch->received_unix_nano;
        out[k] = part;
        am_arena_t *arena = part->arena;
        am_pb_export_req_t *view = am_arena_alloc(arena, sizeof(*view));
        if (view == NULL) {
            goto fail;
        }
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(view);
        view->resource_spans = am_arena_alloc(arena, req->n_resource_spans * sizeof(void *) + 1);
        if (view->resource_spans == NULL) {
            goto fail;
        }
        size_t total = 0;
        for (size_t r = 0; r < req->n_resource_spans; r++) {
            am_pb_resource_spans_t *rs = req->resource_spans[r];
            am_pb_resource_spans_t *vrs = NULL;
            for (size_t s = 0; s < rs->n_scope_spans; s++) {
                am_pb_scope_spans_t *ss = rs->scope_spans[s];
                am_pb_scope_spans_t *vss = NULL;
                for (size_t i = 0; i < ss->n_spans; i++) {
                    am_pb_span_t *span = ss->spans[i];
                    if (am_shard_for_trace(span->trace_id.data, span->trace_id.len, n_shards) != k) {
                        continue;
                    }
                    if (vrs == NULL) {
                        vrs = am_arena_alloc(arena, sizeof(*vrs));
                        if (vrs == NULL) {
                            goto fail;
                        }
                        *vrs = *rs;
                        vrs->n_scope_spans = 0;
                        vrs->scope_spans = am_arena_alloc(arena, rs->n_scope_spans * sizeof(void *) + 1);
                        if (vrs->scope_spans == NULL) {
                            goto fail;
                        }
                        view->resource_spans[view->n_resource_spans++] = vrs;
                    }
                    if (vss == NULL) {
                        vss = am_arena_alloc(arena, sizeof(*vss));
                        if (vss == NULL) {
                            goto fail;
                        }
                        *vss = *ss;
                        vss->n_spans = 0;
                        vss->spans = am_arena_alloc(arena, ss->n_spans * sizeof(void *) + 1);
                        if (vss->spans == NULL) {
                            goto fail;
                        }
                        vrs->scope_spans[vrs->n_scope_spans++] = vss;
                    }
                    vss->spans[vss->n_spans++] = span;
                    total++;
                }
            }
        }
        if (total == 0) {
            am_batch_unref(part);
            out[k] = NULL;
            continue;
        }
        part->traces = view;
        part->span_count = total;
    }
    /* Events ride with the first non-empty part. */
    for (int k = 0; k < n_shards && batch->n_events > 0; k++) {
        if (out[k] != NULL) {
            for (size_t e = 0; e < batch->n_events; e++) {
                if (am_batch_add_event(out[k], &batch->events[e]) != 0) {
                    goto fail;
                }
            }
            break;
        }
    }
    return 0;
fail:
    for (int k = 0; k < n_shards; k++) {
        am_batch_unref(out[k]);
        out[k] = NULL;
    }
    return rc;
}
