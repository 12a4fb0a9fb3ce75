/*
 * tracetree.c - the `tracetree` processor: regroups spans into whole traces
 * and indexes each as a tree, so every later processor walks trees
 * (ARCHITECTURE.md §2).
 *
 * What it does.  Spans of one trace arrive in many requests, children often
 * before parents.  Each shard instance buffers span refs per trace id and
 * emits a trace when its root has arrived and no span came for `wait`, or
 * `max_wait` after its first span, or when the shard holds `max_traces`
 * traces and this is the oldest one (counted as forced), or at shutdown.  An
 * emitted trace is an am_trace_t (tracetree_assemble.c) in a new batch that
 * holds references on every request arena its spans live in; ready traces
 * share output batches of up to TRACETREE_MAX_SPANS_PER_BATCH spans.
 * Spans of a trace emitted earlier (its id is in a bounded FIFO of emitted
 * ids) are late: they go out at the end of the consume call that brought
 * them, as their own am_trace_t flagged AM_SPANREF_LATE.
 *
 * Threads.  One instance per shard, on the shard's loop; batches arrive
 * split by trace id, so a trace never spans two instances and nothing here
 * takes a lock.  The traces gauge is process-wide: each instance adds its
 * deltas to the one shared series.
 *
 * Memory.  Per buffered span: one 24-byte tracetree_pending_t in a growable
 * array of its trace (no per-span malloc) plus, per trace and request, one
 * arena pointer.  Traces live in a pool indexed by a 4-byte-slot hash
 * (tracetree_table.c); two intrusive lists order them by first span (for
 * max_wait and eviction) and by last span (for wait), so the timer only
 * looks at traces that are due.  A rootless trace whose wait passed leaves
 * the idle list until another span arrives, so ticks do not rescan it.
 *
 * Backpressure.  If the next consumer answers AM_RETRY, the output batch is
 * kept and offered again on the next tick; while any is pending, consume
 * answers AM_RETRY without taking the batch (the receiver turns that into
 * UNAVAILABLE/503), so memory stays bounded and nothing is dropped silently.
 * An allocation failure in consume also answers AM_RETRY; spans buffered
 * before it stay buffered (a resend may then duplicate them, which the
 * assembly keeps rather than loses: at-least-once).
 */
#include <stdio.h>
#include <string.h>

#include "am_attr.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "tracetree_internal.h"

#define TICK_MAX_MS 250
#define TICK_MIN_MS 10

typedef enum {
    TRACE_FREE = 0,
    TRACE_LIVE,  /* buffered, waiting */
    TRACE_READY, /* listed in `ready`, goes out at the next flush */
} trace_state_t;

typedef struct trace_entry {
    uint8_t trace_id[16];
    uint64_t first_ms;
    uint64_t last_ms;
    tracetree_pending_t *spans;
    am_arena_t **arenas; /* one reference each */
    uint64_t arena_seq;  /* consume call that last added its arenas */
    uint32_t n_spans, cap_spans;
    uint32_t n_arenas, cap_arenas;
    uint32_t age_prev, age_next; /* LIVE: oldest first; FREE: age_next = free list */
    uint32_t idle_prev, idle_next;
    uint8_t state;
    bool has_root;
    bool late;
    bool in_idle;
} trace_entry_t;

typedef struct tracetree {
    char *id;
    am_consumer_t *next;
    uv_loop_t *loop;
    uv_timer_t timer;
    bool timer_started;
    bool shut;
    uint64_t wait_ms, max_wait_ms;
    uint32_t max_traces; /* this shard's share */
    uint32_t max_spans_per_trace;
    tracetree_clock_fn now_ms;

    trace_entry_t *pool;
    uint32_t pool_cap;
    uint32_t free_head;
    uint32_t n_entries; /* LIVE + READY */
    uint32_t n_live;
    tracetree_idtab_t index;
    uint32_t age_head, age_tail;
    uint32_t idle_head, idle_tail;
    uint32_t *ready; /* capacity pool_cap: appending never fails */
    uint32_t n_ready;
    uint64_t seq;
    size_t buffered_spans;

    tracetree_late_t late;
    tracetree_scratch_t scratch;

    am_batch_t **backlog; /* refused by next, offered again on tick */
    size_t n_backlog, cap_backlog;

    am_gauge_t *traces_gauge;
    am_counter_t *forced_total;
    am_counter_t *late_spans_total;
    am_counter_t *orphan_spans_total;
} tracetree_t;

static const am_option_t tracetree_options[] = {
    {.name = "wait",
     .type = AM_OPT_DURATION,
     .def = "2s",
     .offset = offsetof(tracetree_config_t, wait_ms),
     .min = 0,
     .max = 86400000,
     .doc = "Emit a trace once its root has arrived and no span came for this long."},
    {.name = "max_wait",
     .type = AM_OPT_DURATION,
     .def = "30s",
     .offset = offsetof(tracetree_config_t, max_wait_ms),
     .min = 0,
     .max = 86400000,
     .doc = "Emit a trace this long after its first span, root or not (missing parents "
            "become orphans)."},
    {.name = "max_traces",
     .type = AM_OPT_INT,
     .def = "200000",
     .offset = offsetof(tracetree_config_t, max_traces),
     .min = 1,
     .max = 1e9,
     .doc = "Traces buffered per process (shared among shards); past it the oldest is "
            "emitted early and counted in agentmeter_tracetree_forced_total."},
    {.name = "late_cache",
     .type = AM_OPT_INT,
     .def = "100000",
     .offset = offsetof(tracetree_config_t, late_cache),
     .min = 0,
     .max = 1e9,
     .doc = "Emitted trace ids remembered (per process) to recognise late spans; 0 "
            "disables late detection."},
    AM_OPT_END,
};

/* ---- pool, index and lists ------------------------------------------- */

static const uint8_t *entry_key(const void *ctx, uint32_t idx)
{
    const tracetree_t *tt = ctx;
    return tt->pool[idx].trace_id;
}

static int pool_grow(tracetree_t *tt)
{
    uint32_t cap = tt->pool_cap == 0 ? 64 : tt->pool_cap * 2;
    trace_entry_t *pool = am_realloc(tt->pool, (size_t)cap * sizeof(*pool));
    if (pool == NULL) {
        return AM_ENOMEM;
    }
    tt->pool = pool;
    uint32_t *ready = am_realloc(tt->ready, (size_t)cap * sizeof(*ready));
    if (ready == NULL) {
        return AM_ENOMEM; /* the bigger pool is kept, unused */
    }
    tt->ready = ready;
    for (uint32_t i = cap; i-- > tt->pool_cap;) {
        memset(&pool[i], 0, sizeof(pool[i]));
        pool[i].age_next = tt->free_head;
        tt->free_head = i;
    }
    tt->pool_cap = cap;
    return 0;
}

static void age_unlink(tracetree_t *tt, uint32_t idx)
{
    trace_entry_t *e = &tt->pool[idx];
    if (e->age_prev != TRACETREE_ID_NONE) {
        tt->pool[e->age_prev].age_next = e->age_next;
    } else {
        tt->age_head = e->age_next;
    }
    if (e->age_next != TRACETREE_ID_NONE) {
        tt->pool[e->age_next].age_prev = e->age_prev;
    } else {
        tt->age_tail = e->age_prev;
    }
    e->age_prev = e->age_next = TRACETREE_ID_NONE;
}

static void age_append(tracetree_t *tt, uint32_t idx)
{
    trace_entry_t *e = &tt->pool[idx];
    e->age_prev = tt->age_tail;
    e->age_next = TRACETREE_ID_NONE;
    if (tt->age_tail != TRACETREE_ID_NONE) {
        tt->pool[tt->age_tail].age_next = idx;
    } else {
        tt->age_head = idx;
    }
    tt->age_tail = idx;
}

static void idle_unlink(tracetree_t *tt, uint32_t idx)
{
    trace_entry_t *e = &tt->pool[idx];
    if (!e->in_idle) {
        return;
    }
    if (e->idle_prev != TRACETREE_ID_NONE) {
        tt->pool[e->idle_prev].idle_next = e->idle_next;
    } else {
        tt->idle_head = e->idle_next;
    }
    if (e->idle_next != TRACETREE_ID_NONE) {
        tt->pool[e->idle_next].idle_prev = e->idle_prev;
    } else {
        tt->idle_tail = e->idle_prev;
    }
    e->idle_prev = e->idle_next = TRACETREE_ID_NONE;
    e->in_idle = false;
}

static void idle_append(tracetree_t *tt, uint32_t idx)
{
    trace_entry_t *e = &tt->pool[idx];
    e->idle_prev = tt->idle_tail;
    e->idle_next = TRACETREE_ID_NONE;
    if (tt->idle_tail != TRACETREE_ID_NONE) {
        tt->pool[tt->idle_tail].idle_next = idx;
    } else {
        tt->idle_head = idx;
    }
    tt->idle_tail = idx;
    e->in_idle = true;
}

static uint32_t entry_new(tracetree_t *tt, const uint8_t id[16], bool late, uint64_t now)
{
    if (tt->free_head == TRACETREE_ID_NONE && pool_grow(tt) != 0) {
        return TRACETREE_ID_NONE;
    }
    uint32_t idx = tt->free_head;
    trace_entry_t *e = &tt->pool[idx];
    uint32_t next_free = e->age_next;
    memset(e, 0, sizeof(*e));
    memcpy(e->trace_id, id, 16);
    if (tracetree__idtab_insert(&tt->index, idx, entry_key, tt) != 0) {
        e->age_next = next_free;
        return TRACETREE_ID_NONE;
    }
    tt->free_head = next_free;
    e->first_ms = e->last_ms = now;
    e->late = late;
    e->age_prev = e->age_next = TRACETREE_ID_NONE;
    e->idle_prev = e->idle_next = TRACETREE_ID_NONE;
    tt->n_entries++;
    am_gauge_add(tt->traces_gauge, 1);
    if (late) {
        e->state = TRACE_READY;
        tt->ready[tt->n_ready++] = idx;
    } else {
        e->state = TRACE_LIVE;
        tt->n_live++;
        age_append(tt, idx);
    }
    return idx;
}

/* Drop the entry (after it was emitted, or at destroy). */
static void entry_release(tracetree_t *tt, uint32_t idx)
{
    trace_entry_t *e = &tt->pool[idx];
    if (e->state == TRACE_LIVE) {
        age_unlink(tt, idx);
        idle_unlink(tt, idx);
        tt->n_live--;
    }
    tracetree__idtab_remove(&tt->index, e->trace_id, entry_key, tt);
    for (uint32_t i = 0; i < e->n_arenas; i++) {
        am_arena_unref(e->arenas[i]);
    }
    am_free(e->arenas);
    am_free(e->spans);
    tt->buffered_spans -= e->n_spans;
    tt->n_entries--;
    am_gauge_add(tt->traces_gauge, -1);
    memset(e, 0, sizeof(*e));
    e->state = TRACE_FREE;
    e->age_next = tt->free_head;
    tt->free_head = idx;
}

static void mark_ready(tracetree_t *tt, uint32_t idx)
{
    trace_entry_t *e = &tt->pool[idx];
    if (e->state != TRACE_LIVE) {
        return;
    }
    age_unlink(tt, idx);
    idle_unlink(tt, idx);
    tt->n_live--;
    e->state = TRACE_READY;
    tt->ready[tt->n_ready++] = idx;
}

/* ---- emission ---------------------------------------------------------- */

/* Hand `out` (our reference) downstream; keep it for a retry on AM_RETRY. */
static void push_batch(tracetree_t *tt, am_batch_t *out)
{
    am_status_t status = am_consume(tt->next, out);
    if (status == AM_RETRY) {
        if (tt->n_backlog == tt->cap_backlog) {
            size_t cap = tt->cap_backlog == 0 ? 4 : tt->cap_backlog * 2;
            am_batch_t **grown = am_realloc(tt->backlog, cap * sizeof(*grown));
            if (grown == NULL) {
                AM_ERROR(tt->id, "out of memory keeping a refused batch of %zu spans: dropped",
                         out->span_count);
                am_batch_unref(out);
                return;
            }
            tt->backlog = grown;
            tt->cap_backlog = cap;
        }
        tt->backlog[tt->n_backlog++] = out;
        return;
    }
    if (status == AM_PERMANENT) {
        AM_WARN(tt->id, "next consumer rejected %zu spans permanently", out->span_count);
    }
    am_batch_unref(out);
}

/* Offer refused batches again, oldest first.  0 when the backlog is empty. */
static int backlog_push(tracetree_t *tt)
{
    size_t done = 0;
    while (done < tt->n_backlog) {
        am_batch_t *out = tt->backlog[done];
        am_status_t status = am_consume(tt->next, out);
        if (status == AM_RETRY) {
            break;
        }
        if (status == AM_PERMANENT) {
            AM_WARN(tt->id, "next consumer rejected %zu spans permanently", out->span_count);
        }
        am_batch_unref(out);
        done++;
    }
    if (done > 0) {
        memmove(tt->backlog, tt->backlog + done, (tt->n_backlog - done) * sizeof(*tt->backlog));
        tt->n_backlog -= done;
    }
    return tt->n_backlog == 0 ? 0 : AM_EBUSY;
}

/* Mark orphans with cost.orphan=true.  Runs once the batch can no longer
 * fail (the attribute arrays it creates live in out->arena). */
static void write_orphan_attrs(tracetree_t *tt, am_batch_t *out)
{
    uint64_t orphans = 0;
    for (size_t t = 0; t < out->n_traces; t++) {
        am_trace_t *trace = &out->trace_index[t];
        for (uint32_t r = 0; r < trace->n_roots; r++) {
            am_span_ref_t *ref = &trace->spans[trace->roots[r]];
            if (!(ref->flags & AM_SPANREF_ORPHAN)) {
                continue;
            }
            orphans++;
            if (am_span_set_bool(out->arena, ref->span, "cost.orphan", true) != 0) {
                AM_WARN(tt->id, "out of memory marking an orphan span");
            }
        }
    }
    am_counter_add(tt->orphan_spans_total, orphans);
}

/* Emit the ready entries ready[0..count) in one batch. */
static int emit_group(tracetree_t *tt, const uint32_t *ready, uint32_t count)
{
    am_batch_t *out = am_batch_new(AM_SIGNAL_TRACES);
    if (out == NULL) {
        return AM_ENOMEM;
    }
    out->trace_index = am_arena_calloc(out->arena, count, sizeof(am_trace_t));
    if (out->trace_index == NULL) {
        goto fail;
    }
    for (uint32_t k = 0; k < count; k++) {
        const trace_entry_t *e = &tt->pool[ready[k]];
        for (uint32_t a = 0; a < e->n_arenas; a++) {
            if (am_batch_hold_arena(out, e->arenas[a]) != 0) {
                goto fail;
            }
        }
        if (tracetree__assemble(out->arena, &tt->scratch, e->trace_id, e->spans, e->n_spans,
                                e->late, e->first_ms, &out->trace_index[k]) != 0) {
            goto fail;
        }
    }
    out->n_traces = count;
    if (am_batch_build_otlp_view(out) != 0) {
        goto fail;
    }
    write_orphan_attrs(tt, out);
    for (uint32_t k = 0; k < count; k++) {
        trace_entry_t *e = &tt->pool[ready[k]];
        if (tracetree__late_add(&tt->late, e->trace_id) != 0) {
            AM_WARN(tt->id, "out of memory remembering an emitted trace: its late spans will "
                            "look like a new trace");
        }
        entry_release(tt, ready[k]);
    }
    push_batch(tt, out);
    return 0;
fail:
    am_batch_unref(out);
    return AM_ENOMEM;
}

/* Emit every ready entry, packing several traces per batch.  On ENOMEM the
 * rest stays ready for the next tick. */
static void flush_ready(tracetree_t *tt)
{
    uint32_t start = 0;
    while (start < tt->n_ready) {
        uint32_t end = start;
        size_t spans = 0;
        while (end < tt->n_ready) {
            const trace_entry_t *e = &tt->pool[tt->ready[end]];
            if (e->n_spans == 0) {
                /* An entry whose first span could not be stored. */
                entry_release(tt, tt->ready[end]);
                tt->ready[end] = tt->ready[--tt->n_ready];
                continue;
            }
            if (end > start && spans + e->n_spans > TRACETREE_MAX_SPANS_PER_BATCH) {
                break;
            }
            spans += e->n_spans;
            end++;
        }
        if (end == start) {
            break;
        }
        if (emit_group(tt, tt->ready + start, end - start) != 0) {
            AM_WARN(tt->id, "out of memory emitting %u traces; retrying on the next tick",
                    end - start);
            break;
        }
        start = end;
    }
    if (start > 0) {
        memmove(tt->ready, tt->ready + start, (tt->n_ready - start) * sizeof(*tt->ready));
        tt->n_ready -= start;
    }
}

void tracetree__tick(void *instance, uint64_t now_ms)
{
    tracetree_t *tt = instance;
    if (backlog_push(tt) != 0) {
        return; /* downstream still refuses: keep buffering */
    }
    while (tt->age_head != TRACETREE_ID_NONE &&
           tt->pool[tt->age_head].first_ms + tt->max_wait_ms <= now_ms) {
        mark_ready(tt, tt->age_head);
    }
    while (tt->idle_head != TRACETREE_ID_NONE &&
           tt->pool[tt->idle_head].last_ms + tt->wait_ms <= now_ms) {
        uint32_t idx = tt->idle_head;
        if (tt->pool[idx].has_root) {
            mark_ready(tt, idx);
        } else {
            idle_unlink(tt, idx); /* back when its next span comes */
        }
    }
    flush_ready(tt);
}

static void on_timer(uv_timer_t *timer)
{
    tracetree_t *tt = timer->data;
    tracetree__tick(tt, tt->now_ms());
}

/* ---- consume ----------------------------------------------------------- */

static int entry_add_arenas(trace_entry_t *e, am_batch_t *batch)
{
    uint32_t need = e->n_arenas + 1 + (uint32_t)batch->n_held;
    if (need > e->cap_arenas) {
        uint32_t cap = e->cap_arenas == 0 ? 2 : e->cap_arenas;
        while (cap < need) {
            cap *= 2;
        }
        am_arena_t **grown = am_realloc(e->arenas, (size_t)cap * sizeof(*grown));
        if (grown == NULL) {
            return AM_ENOMEM;
        }
        e->arenas = grown;
        e->cap_arenas = cap;
    }
    e->arenas[e->n_arenas++] = am_arena_ref(batch->arena);
    for (size_t h = 0; h < batch->n_held; h++) {
        e->arenas[e->n_arenas++] = am_arena_ref(batch->held[h]);
    }
    return 0;
}

static int add_span(tracetree_t *tt, am_batch_t *batch, am_pb_span_t *span,
                    am_pb_resource_t *resource, am_pb_scope_t *scope, uint64_t now)
{
    uint8_t id[16] = {0};
    memcpy(id, span->trace_id.data, AM_MIN(span->trace_id.len, sizeof(id)));
    uint32_t idx = tracetree__idtab_find(&tt->index, id, entry_key, tt);
    if (idx == TRACETREE_ID_NONE) {
        bool late = tracetree__late_contains(&tt->late, id);
        if (!late) {
            while (tt->n_live >= tt->max_traces && tt->age_head != TRACETREE_ID_NONE) {
                mark_ready(tt, tt->age_head);
                am_counter_add(tt->forced_total, 1);
            }
        }
        idx = entry_new(tt, id, late, now);
        if (idx == TRACETREE_ID_NONE) {
            return AM_ENOMEM;
        }
    }
    trace_entry_t *e = &tt->pool[idx];
    if (e->arena_seq != tt->seq) {
        if (entry_add_arenas(e, batch) != 0) {
            return AM_ENOMEM;
        }
        e->arena_seq = tt->seq;
    }
    if (e->n_spans == e->cap_spans) {
        uint32_t cap = e->cap_spans == 0 ? 4 : e->cap_spans * 2;
        tracetree_pending_t *grown = am_realloc(e->spans, (size_t)cap * sizeof(*grown));
        if (grown == NULL) {
            return AM_ENOMEM;
        }
        e->spans = grown;
        e->cap_spans = cap;
    }
    e->spans[e->n_spans++] = (tracetree_pending_t){span, resource, scope};
    tt->buffered_spans++;
    if (e->late) {
        am_counter_add(tt->late_spans_total, 1);
    } else if (e->state == TRACE_LIVE) {
        e->last_ms = now;
        e->has_root |= tracetree__is_root(span);
        idle_unlink(tt, idx);
        idle_append(tt, idx);
    }
    if (e->n_spans >= tt->max_spans_per_trace) {
        mark_ready(tt, idx);
        flush_ready(tt);
    }
    return 0;
}

/* Cost events riding on the batch go on at once, in a batch of their own. */
static int forward_events(tracetree_t *tt, am_batch_t *batch)
{
    am_batch_t *out = am_batch_new(batch->signal);
    if (out == NULL || am_batch_hold_arena(out, batch->arena) != 0) {
        goto fail;
    }
    for (size_t h = 0; h < batch->n_held; h++) {
        if (am_batch_hold_arena(out, batch->held[h]) != 0) {
            goto fail;
        }
    }
    for (size_t i = 0; i < batch->n_events; i++) {
        if (am_batch_add_event(out, &batch->events[i]) != 0) {
            goto fail;
        }
    }
    push_batch(tt, out);
    return 0;
fail:
    am_batch_unref(out);
    return AM_ENOMEM;
}

static am_status_t tracetree_consume(void *instance, am_batch_t *batch)
{
    tracetree_t *tt = instance;
    if (tt->shut || (tt->n_backlog > 0 && backlog_push(tt) != 0)) {
        return AM_RETRY;
    }
    if (batch->n_events > 0 && forward_events(tt, batch) != 0) {
        return AM_RETRY;
    }
    uint64_t now = tt->now_ms();
    tt->seq++;
    am_status_t status = AM_OK;
    am_pb_export_req_t *req = batch->traces;
    for (size_t r = 0; req != NULL && r < req->n_resource_spans; r++) {
        am_pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t s = 0; rs != NULL && s < rs->n_scope_spans; s++) {
            am_pb_scope_spans_t *ss = rs->scope_spans[s];
            for (size_t i = 0; ss != NULL && i < ss->n_spans; i++) {
                if (ss->spans[i] == NULL) {
                    continue;
                }
                if (add_span(tt, batch, ss->spans[i], rs->resource, ss->scope, now) != 0) {
                    AM_WARN(tt->id, "out of memory buffering spans; asking the sender to retry");
                    status = AM_RETRY;
                    goto out;
                }
            }
        }
    }
out:
    flush_ready(tt); /* late and forced traces */
    return status;
}

/* ---- life cycle -------------------------------------------------------- */

static void tracetree_free(tracetree_t *tt)
{
    for (uint32_t i = 0; i < tt->pool_cap; i++) {
        if (tt->pool[i].state != TRACE_FREE) {
            entry_release(tt, i);
        }
    }
    for (size_t i = 0; i < tt->n_backlog; i++) {
        am_batch_unref(tt->backlog[i]);
    }
    am_free(tt->backlog);
    am_free(tt->pool);
    am_free(tt->ready);
    tracetree__idtab_free(&tt->index);
    tracetree__late_free(&tt->late);
    tracetree__scratch_free(&tt->scratch);
    am_free(tt->id);
    am_free(tt);
}

static uint32_t per_shard(int64_t total, int n_shards)
{
    int64_t shards = n_shards > 0 ? n_shards : 1;
    int64_t share = (total + shards - 1) / shards;
    return (uint32_t)AM_MIN(share, (int64_t)UINT32_MAX - 1);
}

static int tracetree_create(const am_create_params_t *params, void **instance)
{
    const tracetree_config_t *cfg = params->config;
    tracetree_t *tt = am_calloc(1, sizeof(*tt));
    if (tt == NULL || (tt->id = am_strdup(params->id != NULL ? params->id : "tracetree")) == NULL) {
        am_free(tt);
        return AM_ENOMEM;
    }
    tt->next = params->next;
    tt->loop = params->loop;
    tt->wait_ms = (uint64_t)AM_MAX(cfg->wait_ms, 0);
    tt->max_wait_ms = (uint64_t)AM_MAX(cfg->max_wait_ms, 0);
    tt->max_traces = AM_MAX(per_shard(cfg->max_traces, params->n_shards), 1u);
    tt->max_spans_per_trace = TRACETREE_MAX_SPANS_PER_TRACE;
    tt->late.cap = cfg->late_cache > 0 ? per_shard(cfg->late_cache, params->n_shards) : 0;
    tt->now_ms = am_now_mono_ms;
    tt->free_head = TRACETREE_ID_NONE;
    tt->age_head = tt->age_tail = TRACETREE_ID_NONE;
    tt->idle_head = tt->idle_tail = TRACETREE_ID_NONE;

    char labels[300];
    snprintf(labels, sizeof(labels), "processor=\"%s\"", tt->id);
    tt->traces_gauge =
        am_selfmetrics_gauge("agentmeter_tracetree_traces",
                             "Traces buffered by tracetree, waiting to be emitted.", labels);
    tt->forced_total =
        am_selfmetrics_counter("agentmeter_tracetree_forced_total",
                               "Traces emitted early because max_traces was reached.", labels);
    tt->late_spans_total = am_selfmetrics_counter(
        "agentmeter_tracetree_late_spans_total",
        "Spans that arrived after their trace was emitted (emitted as late spans).", labels);
    tt->orphan_spans_total = am_selfmetrics_counter(
        "agentmeter_tracetree_orphan_spans_total",
        "Spans emitted as subtree roots because their parent never arrived (cost.orphan).", labels);
    *instance = tt;
    return 0;
}

static int tracetree_start(void *instance)
{
    tracetree_t *tt = instance;
    if (tt->loop == NULL) {
        return 0; /* no loop: ticks are driven by hand (tests) */
    }
    int rc = uv_timer_init(tt->loop, &tt->timer);
    if (rc != 0) {
        AM_ERROR(tt->id, "cannot create timer: %s", uv_strerror(rc));
        return AM_EIO;
    }
    tt->timer.data = tt;
    uint64_t interval = AM_MIN(tt->wait_ms / 4, (uint64_t)TICK_MAX_MS);
    interval = AM_MIN(interval, AM_MAX(tt->max_wait_ms / 4, (uint64_t)1));
    interval = AM_MAX(interval, (uint64_t)TICK_MIN_MS);
    uv_timer_start(&tt->timer, on_timer, interval, interval);
    /* Housekeeping only: the timer alone does not keep a loop running. */
    uv_unref((uv_handle_t *)&tt->timer);
    tt->timer_started = true;
    return 0;
}

static void tracetree_shutdown(void *instance)
{
    tracetree_t *tt = instance;
    if (tt->shut) {
        return;
    }
    while (tt->age_head != TRACETREE_ID_NONE) {
        mark_ready(tt, tt->age_head);
    }
    backlog_push(tt);
    flush_ready(tt);
    if (tt->n_backlog > 0 && backlog_push(tt) != 0) {
        size_t spans = 0;
        for (size_t i = 0; i < tt->n_backlog; i++) {
            spans += tt->backlog[i]->span_count;
        }
        AM_ERROR(tt->id, "shutdown: next consumer still refuses %zu spans; dropping them", spans);
    }
    if (tt->n_ready > 0) {
        AM_ERROR(tt->id, "shutdown: %u traces could not be emitted (out of memory)", tt->n_ready);
    }
    tt->shut = true;
    if (tt->timer_started) {
        uv_timer_stop(&tt->timer);
        uv_close((uv_handle_t *)&tt->timer, NULL);
        tt->timer_started = false;
    }
}

static void tracetree_destroy(void *instance)
{
    tracetree_free(instance);
}

static void tracetree_validate(const void *config, const void *node, const char *prefix,
                               am_errors_t *errs)
{
    const tracetree_config_t *cfg = config;
    if (cfg->max_wait_ms < cfg->wait_ms) {
        am_errors_add(errs, node, "%s.max_wait: must not be shorter than wait", prefix);
    }
}

void tracetree__set_clock(void *instance, tracetree_clock_fn now_ms)
{
    ((tracetree_t *)instance)->now_ms = now_ms != NULL ? now_ms : am_now_mono_ms;
}

void tracetree__set_max_spans_per_trace(void *instance, uint32_t max_spans)
{
    ((tracetree_t *)instance)->max_spans_per_trace = max_spans > 0 ? max_spans : 1;
}

size_t tracetree__buffered_traces(const void *instance)
{
    return ((const tracetree_t *)instance)->n_entries;
}

size_t tracetree__buffered_spans(const void *instance)
{
    return ((const tracetree_t *)instance)->buffered_spans;
}

const am_component_ops_t am_processor_tracetree_ops = {
    .type = "tracetree",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Groups spans into whole traces and indexes each as a parent -> children tree.",
    .options = tracetree_options,
    .config_size = sizeof(tracetree_config_t),
    .validate = tracetree_validate,
    .create = tracetree_create,
    .start = tracetree_start,
    .consume = tracetree_consume,
    .shutdown = tracetree_shutdown,
    .destroy = tracetree_destroy,
};
