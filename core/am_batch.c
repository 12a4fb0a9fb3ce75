/*
 * am_batch.c - batch life cycle, arena holding, events, cloning and the
 * trace-index <-> OTLP-view conversions.
 */
#include "am_batch.h"

#include "am_attr.h"

#include "am_metrics.h"
#include "am_otlp_unpack.h"

#include <string.h>

#define BATCH_ARENA_FIRST 4096

am_batch_t *am_batch_new_with_arena(unsigned signal, am_arena_t *arena)
{
    am_batch_t *batch = am_calloc(1, sizeof(*batch));
    if (batch == NULL) {
        return NULL;
    }
    atomic_init(&batch->refcount, 1);
    batch->signal = signal;
    batch->arena = arena;
    batch->received_unix_nano = am_now_unix_nano();
    return batch;
}

am_batch_t *am_batch_new(unsigned signal)
{
    am_arena_t *arena = am_arena_new(BATCH_ARENA_FIRST);
    if (arena == NULL) {
        return NULL;
    }
    am_batch_t *batch = am_batch_new_with_arena(signal, arena);
    if (batch == NULL) {
        am_arena_unref(arena);
    }
    return batch;
}

am_batch_t *am_batch_ref(am_batch_t *batch)
{
    atomic_fetch_add_explicit(&batch->refcount, 1, memory_order_relaxed);
    return batch;
}

void am_batch_unref(am_batch_t *batch)
{
    if (batch == NULL ||
        atomic_fetch_sub_explicit(&batch->refcount, 1, memory_order_acq_rel) != 1) {
        return;
    }
    if (batch->metrics != NULL && batch->metrics_free != NULL) {
        batch->metrics_free(batch->metrics);
    }
    for (size_t i = 0; i < batch->n_held; i++) {
        am_arena_unref(batch->held[i]);
    }
    am_free(batch->held);
    am_free(batch->events);
    am_arena_unref(batch->arena);
    am_free(batch);
}

int am_batch_hold_arena(am_batch_t *batch, am_arena_t *arena)
{
    if (arena == batch->arena) {
        return 0;
    }
    /* Recent arenas are the likeliest duplicates: scan from the end. */
    for (size_t i = batch->n_held; i > 0; i--) {
        if (batch->held[i - 1] == arena) {
            return 0;
        }
    }
    if (batch->n_held == batch->cap_held) {
        size_t cap = batch->cap_held == 0 ? 4 : batch->cap_held * 2;
        am_arena_t **grown = am_realloc(batch->held, cap * sizeof(*grown));
        if (grown == NULL) {
            return AM_ENOMEM;
        }
        batch->held = grown;
        batch->cap_held = cap;
    }
    batch->held[batch->n_held++] = am_arena_ref(arena);
    return 0;
}

int am_batch_add_event(am_batch_t *batch, const am_event_t *event)
{
    if (batch->n_events == batch->cap_events) {
        size_t cap = batch->cap_events == 0 ? 4 : batch->cap_events * 2;
        am_event_t *grown = am_realloc(batch->events, cap * sizeof(*grown));
        if (grown == NULL) {
            return AM_ENOMEM;
        }
        batch->events = grown;
        batch->cap_events = cap;
    }
    batch->events[batch->n_events++] = *event;
    return 0;
}

size_t am_batch_count_spans(am_batch_t *batch)
{
    size_t count = 0;
    const am_pb_export_req_t *req = batch->traces;
    for (size_t r = 0; req != NULL && r < req->n_resource_spans; r++) {
        const am_pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t s = 0; rs != NULL && s < rs->n_scope_spans; s++) {
            if (rs->scope_spans[s] != NULL) {
                count += rs->scope_spans[s]->n_spans;
            }
        }
    }
    batch->span_count = count;
    return count;
}

int am_batch_for_each_span(am_batch_t *batch, am_span_visit_fn fn, void *user_data)
{
    if (batch->trace_index != NULL) {
        for (size_t t = 0; t < batch->n_traces; t++) {
            am_trace_t *trace = &batch->trace_index[t];
            for (uint32_t i = 0; i < trace->n_spans; i++) {
                am_span_ref_t *ref = &trace->spans[i];
                /* replaces the previous span's scope, keeping the resource's index */
                am_attr_scope_begin_known(ref->span, &ref->known, NULL, ref->resource);
                int rc = fn(batch, ref->span, ref->resource, ref->scope, ref, user_data);
                if (rc != 0) {
                    am_attr_scope_end();
                    return rc;
                }
            }
        }
        am_attr_scope_end();
        return 0;
    }
    am_pb_export_req_t *req = batch->traces;
    for (size_t r = 0; req != NULL && r < req->n_resource_spans; r++) {
        am_pb_resource_spans_t *rs = req->resource_spans[r];
        if (rs == NULL) {
            continue;
        }
        for (size_t s = 0; s < rs->n_scope_spans; s++) {
            am_pb_scope_spans_t *ss = rs->scope_spans[s];
            if (ss == NULL) {
                continue;
            }
            for (size_t i = 0; i < ss->n_spans; i++) {
                am_attr_scope_begin(ss->spans[i], NULL, rs->resource);
                int rc = fn(batch, ss->spans[i], rs->resource, ss->scope, NULL, user_data);
                if (rc != 0) {
                    am_attr_scope_end();
                    return rc;
                }
            }
        }
    }
    am_attr_scope_end();
    return 0;
}

/* ---- pointer map (open addressing) used by view building and clone ---- */

typedef struct ptr_map {
    const void **keys;
    void **values;
    size_t cap;
} ptr_map_t;

static size_t ptr_hash(const void *p, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static int ptr_map_init(ptr_map_t *map, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2) {
        cap *= 2;
    }
    map->keys = am_calloc(cap, sizeof(*map->keys));
    map->values = am_calloc(cap, sizeof(*map->values));
    map->cap = cap;
    if (map->keys == NULL || map->values == NULL) {
        am_free(map->keys);
        am_free(map->values);
        return AM_ENOMEM;
    }
    return 0;
}

static void ptr_map_free(ptr_map_t *map)
{
    am_free(map->keys);
    am_free(map->values);
}

/* Slot for key: found (keys[i] == key) or empty (keys[i] == NULL). */
static size_t ptr_map_slot(const ptr_map_t *map, const void *key)
{
    size_t i = ptr_hash(key, map->cap);
    while (map->keys[i] != NULL && map->keys[i] != key) {
        i = (i + 1) & (map->cap - 1);
    }
    return i;
}

/* ---- OTLP view from the trace index ----------------------------------- */

/* NULL resource/scope pointers are legal; map them to a sentinel key. */
static const char null_key_resource;
static const char null_key_scope;

int am_batch_build_otlp_view(am_batch_t *batch)
{
    size_t total = 0;
    for (size_t t = 0; t < batch->n_traces; t++) {
        total += batch->trace_index[t].n_spans;
    }
    am_arena_t *arena = batch->arena;
    am_pb_export_req_t *req = am_arena_alloc(arena, sizeof(*req));
    if (req == NULL) {
        return AM_ENOMEM;
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);
    ptr_map_t resources, scopes;
    if (ptr_map_init(&resources, 8) != 0) {
        return AM_ENOMEM;
    }
    /* Scope spans are keyed by (resource spans, scope): use a map per
     * resource would cost more; key on the scope pointer and check the
     * resource in a second field instead. */
    if (ptr_map_init(&scopes, total < 64 ? 64 : total) != 0) {
        ptr_map_free(&resources);
        return AM_ENOMEM;
    }
    int rc = AM_ENOMEM;
    /* Pass 1: count spans per (resource, scope) group. */
    typedef struct group {
        am_pb_resource_spans_t *rs;
        am_pb_scope_spans_t *ss;
        size_t count;
        struct group *next_in_resource;
    } group_t;
    size_t n_rs = 0;
    for (size_t t = 0; t < batch->n_traces; t++) {
        am_trace_t *trace = &batch->trace_index[t];
        for (uint32_t i = 0; i < trace->n_spans; i++) {
            am_span_ref_t *ref = &trace->spans[i];
            const void *rkey = ref->resource != NULL ? (const void *)ref->resource
                                                     : (const void *)&null_key_resource;
            size_t rslot = ptr_map_slot(&resources, rkey);
            if (resources.keys[rslot] == NULL) {
                if ((n_rs + 1) * 2 > resources.cap) {
                    /* Grow: rebuild the resource map at twice the size. */
                    ptr_map_t bigger;
                    if (ptr_map_init(&bigger, resources.cap) != 0) {
                        goto out;
                    }
                    for (size_t k = 0; k < resources.cap; k++) {
                        if (resources.keys[k] != NULL) {
                            size_t slot = ptr_map_slot(&bigger, resources.keys[k]);
                            bigger.keys[slot] = resources.keys[k];
                            bigger.values[slot] = resources.values[k];
                        }
                    }
                    ptr_map_free(&resources);
                    resources = bigger;
                    rslot = ptr_map_slot(&resources, rkey);
                }
                am_pb_resource_spans_t *rs = am_arena_alloc(arena, sizeof(*rs));
                if (rs == NULL) {
                    goto out;
                }
                opentelemetry__proto__trace__v1__resource_spans__init(rs);
                rs->resource = ref->resource;
                resources.keys[rslot] = rkey;
                resources.values[rslot] = rs;
                n_rs++;
            }
            am_pb_resource_spans_t *rs = resources.values[rslot];
            /* Find the group for (rs, scope) among rs's groups. */
            const void *skey =
                ref->scope != NULL ? (const void *)ref->scope : (const void *)&null_key_scope;
            size_t sslot = ptr_map_slot(&scopes, skey);
            group_t *group = NULL;
            if (scopes.keys[sslot] != NULL) {
                for (group_t *g = scopes.values[sslot]; g != NULL; g = g->next_in_resource) {
                    if (g->rs == rs) {
                        group = g;
                        break;
                    }
                }
            }
            if (group == NULL) {
                group = am_arena_calloc(arena, 1, sizeof(*group));
                am_pb_scope_spans_t *ss = am_arena_alloc(arena, sizeof(*ss));
                if (group == NULL || ss == NULL) {
                    goto out;
                }
                opentelemetry__proto__trace__v1__scope_spans__init(ss);
                ss->scope = ref->scope;
                group->rs = rs;
                group->ss = ss;
                group->next_in_resource = scopes.keys[sslot] != NULL ? scopes.values[sslot] : NULL;
                scopes.keys[sslot] = skey;
                scopes.values[sslot] = group;
                rs->n_scope_spans++;
            }
            group->count++;
        }
    }
    /* Pass 2: allocate arrays. */
    req->resource_spans = am_arena_calloc(arena, n_rs > 0 ? n_rs : 1, sizeof(*req->resource_spans));
    if (req->resource_spans == NULL) {
        goto out;
    }
    for (size_t k = 0; k < resources.cap; k++) {
        if (resources.keys[k] == NULL) {
            continue;
        }
        am_pb_resource_spans_t *rs = resources.values[k];
        rs->scope_spans = am_arena_calloc(arena, rs->n_scope_spans, sizeof(*rs->scope_spans));
        if (rs->scope_spans == NULL) {
            goto out;
        }
        rs->n_scope_spans = 0;
        req->resource_spans[req->n_resource_spans++] = rs;
    }
    for (size_t k = 0; k < scopes.cap; k++) {
        if (scopes.keys[k] == NULL) {
            continue;
        }
        for (group_t *g = scopes.values[k]; g != NULL; g = g->next_in_resource) {
            g->ss->spans = am_arena_alloc(arena, g->count * sizeof(*g->ss->spans));
            if (g->ss->spans == NULL) {
                goto out;
            }
            g->rs->scope_spans[g->rs->n_scope_spans++] = g->ss;
        }
    }
    /* Pass 3: place spans, in trace order. */
    for (size_t t = 0; t < batch->n_traces; t++) {
        am_trace_t *trace = &batch->trace_index[t];
        for (uint32_t i = 0; i < trace->n_spans; i++) {
            am_span_ref_t *ref = &trace->spans[i];
            const void *rkey = ref->resource != NULL ? (const void *)ref->resource
                                                     : (const void *)&null_key_resource;
            am_pb_resource_spans_t *rs = resources.values[ptr_map_slot(&resources, rkey)];
            const void *skey =
                ref->scope != NULL ? (const void *)ref->scope : (const void *)&null_key_scope;
            group_t *g = scopes.values[ptr_map_slot(&scopes, skey)];
            while (g->rs != rs) {
                g = g->next_in_resource;
            }
            g->ss->spans[g->ss->n_spans++] = ref->span;
        }
    }
    batch->traces = req;
    batch->span_count = total;
    rc = 0;
out:
    ptr_map_free(&resources);
    ptr_map_free(&scopes);
    return rc;
}

/* ---- clone ------------------------------------------------------------ */

/* Walk two structurally identical requests in parallel, mapping old span,
 * resource and scope pointers to their copies. */
static int clone_map_pointers(const am_pb_export_req_t *from, const am_pb_export_req_t *to,
                              ptr_map_t *map)
{
    for (size_t r = 0; r < from->n_resource_spans; r++) {
        const am_pb_resource_spans_t *a = from->resource_spans[r];
        const am_pb_resource_spans_t *b = to->resource_spans[r];
        if (a->resource != NULL) {
            size_t slot = ptr_map_slot(map, a->resource);
            map->keys[slot] = a->resource;
            map->values[slot] = b->resource;
        }
        for (size_t s = 0; s < a->n_scope_spans; s++) {
            const am_pb_scope_spans_t *sa = a->scope_spans[s];
            const am_pb_scope_spans_t *sb = b->scope_spans[s];
            if (sa->scope != NULL) {
                size_t slot = ptr_map_slot(map, sa->scope);
                map->keys[slot] = sa->scope;
                map->values[slot] = sb->scope;
            }
            for (size_t i = 0; i < sa->n_spans; i++) {
                size_t slot = ptr_map_slot(map, sa->spans[i]);
                map->keys[slot] = sa->spans[i];
                map->values[slot] = sb->spans[i];
            }
        }
    }
    return 0;
}

static void *map_get(const ptr_map_t *map, const void *key)
{
    if (key == NULL) {
        return NULL;
    }
    size_t slot = ptr_map_slot(map, key);
    return map->keys[slot] != NULL ? map->values[slot] : NULL;
}

am_batch_t *am_batch_clone(am_batch_t *batch)
{
    am_batch_t *copy = NULL;
    uint8_t *packed = NULL;
    ptr_map_t map = {0};
    if (batch->traces != NULL) {
        size_t size =
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
                batch->traces);
        packed = am_malloc(size > 0 ? size : 1);
        if (packed == NULL) {
            goto fail;
        }
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(
            batch->traces, packed);
        /* the decoder takes one block of its own (core/am_arena.c) */
        am_arena_t *arena = am_arena_new(4096);
        if (arena == NULL) {
            goto fail;
        }
        copy = am_batch_new_with_arena(batch->signal, arena);
        if (copy == NULL) {
            am_arena_unref(arena);
            goto fail;
        }
        /* The hand-written decoder (half the memory); protobuf-c for the
         * shapes it leaves alone, or values nested deeper than it follows. */
        int rc = am_otlp_unpack_traces(arena, packed, size, &copy->traces);
        if (rc == AM_ENOMEM) {
            goto fail;
        }
        if (rc != 0) {
            ProtobufCAllocator alloc = am_arena_allocator(arena);
            copy->traces =
                opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
                    &alloc, size, packed);
            am_attr_intern_keys(copy->traces); /* protobuf-c copied every key */
        }
        if (copy->traces == NULL) {
            goto fail;
        }
        copy->span_count = batch->span_count;
    } else {
        copy = am_batch_new(batch->signal);
        if (copy == NULL) {
            goto fail;
        }
    }
    copy->received_unix_nano = batch->received_unix_nano;
    /* Metric sets are immutable once attached: share by reference. */
    if (batch->metrics != NULL) {
        copy->metrics = am_metric_set_ref(batch->metrics);
        copy->metrics_free = batch->metrics_free;
    }
    /* Events and metrics point into arenas the original holds: share them. */
    if (am_batch_hold_arena(copy, batch->arena) != 0) {
        goto fail;
    }
    for (size_t i = 0; i < batch->n_held; i++) {
        if (am_batch_hold_arena(copy, batch->held[i]) != 0) {
            goto fail;
        }
    }
    for (size_t i = 0; i < batch->n_events; i++) {
        if (am_batch_add_event(copy, &batch->events[i]) != 0) {
            goto fail;
        }
    }
    if (batch->trace_index != NULL && batch->traces != NULL) {
        if (ptr_map_init(&map, 3 * batch->span_count + 64) != 0) {
            goto fail;
        }
        /* Up to three keys per span (span, resource, scope). */
        clone_map_pointers(batch->traces, copy->traces, &map);
        copy->trace_index = am_arena_calloc(copy->arena, batch->n_traces, sizeof(am_trace_t));
        if (copy->trace_index == NULL && batch->n_traces > 0) {
            goto fail;
        }
        for (size_t t = 0; t < batch->n_traces; t++) {
            const am_trace_t *src = &batch->trace_index[t];
            am_trace_t *dst = &copy->trace_index[t];
            *dst = *src;
            dst->spans = am_arena_alloc(copy->arena, (src->n_spans + 1) * sizeof(am_span_ref_t));
            dst->roots = am_arena_alloc(copy->arena, (src->n_roots + 1) * sizeof(uint32_t));
            if (dst->spans == NULL || dst->roots == NULL) {
                goto fail;
            }
            memcpy(dst->roots, src->roots, src->n_roots * sizeof(uint32_t));
            for (uint32_t i = 0; i < src->n_spans; i++) {
                dst->spans[i] = src->spans[i];
                /* the known-key set describes the original's arrays, whose
                 * addresses may be reused once the original is freed */
                dst->spans[i].known = (am_attr_known_t){0};
                dst->spans[i].span = map_get(&map, src->spans[i].span);
                dst->spans[i].resource = map_get(&map, src->spans[i].resource);
                dst->spans[i].scope = map_get(&map, src->spans[i].scope);
            }
        }
        copy->n_traces = batch->n_traces;
        ptr_map_free(&map);
    }
    am_free(packed);
    return copy;
fail:
    if (map.keys != NULL) {
        ptr_map_free(&map);
    }
    am_free(packed);
    am_batch_unref(copy);
    return NULL;
}
