/*
 * propagate_cache.c - the late cache: trace id -> the propagated attribute
 * values of the trace's first root, so that spans arriving after their
 * trace went out (tracetree's late spans) still get their session, user and
 * tenant.
 *
 * The batch whose spans carried those values may be freed long before a
 * late span shows up, so values are copied out of the arena (strings
 * malloc'd).  The cache is a ring of `cap` entries (oldest forgotten first)
 * indexed by an open-addressing table of ring positions with backward-shift
 * deletion; it is allocated on first use, so an instance that never sees a
 * trace costs nothing.
 */
#include <string.h>

#include "propagate_internal.h"

#define SLOT_EMPTY UINT32_MAX

static uint32_t id_hash(const uint8_t id[16])
{
    uint64_t lo, hi;
    memcpy(&lo, id, 8);
    memcpy(&hi, id + 8, 8);
    uint64_t x = lo ^ (hi * UINT64_C(0x9e3779b97f4a7c15));
    x ^= x >> 32;
    x *= UINT64_C(0xd6e8feb86659fd93);
    x ^= x >> 32;
    return (uint32_t)x;
}

static uint32_t slot_of(const propagate_cache_t *cache, const uint8_t id[16])
{
    for (uint32_t i = id_hash(id) & cache->mask;; i = (i + 1) & cache->mask) {
        uint32_t pos = cache->slots[i];
        if (pos == SLOT_EMPTY || memcmp(cache->ring[pos].trace_id, id, 16) == 0) {
            return i;
        }
    }
}

const propagate_value_t *propagate__cache_find(const propagate_cache_t *cache,
                                               const uint8_t trace_id[16])
{
    if (cache->count == 0) {
        return NULL;
    }
    uint32_t pos = cache->slots[slot_of(cache, trace_id)];
    return pos == SLOT_EMPTY ? NULL : cache->ring[pos].values;
}

/* The values of one trace in ONE allocation: the array, then the strings it
 * points to.  A gateway keeps `late_cache` (default 100,000) of these, so a
 * malloc per string (and its ~16 bytes of overhead) was a third of the
 * cache's memory.  NULL on ENOMEM. */
static propagate_value_t *values_copy(const am_pb_anyvalue_t *const *values, uint32_t n_values)
{
    size_t n = n_values > 0 ? n_values : 1;
    size_t size = n * sizeof(propagate_value_t);
    for (uint32_t i = 0; i < n_values; i++) {
        const am_pb_anyvalue_t *v = values[i];
        if (v != NULL && v->value_case == AM_PB_VALUE(STRING_VALUE) && v->string_value != NULL) {
            size += strlen(v->string_value) + 1;
        }
    }
    propagate_value_t *into = am_malloc(size);
    if (into == NULL) {
        return NULL;
    }
    char *text = (char *)(into + n);
    for (uint32_t i = 0; i < n; i++) {
        into[i].type = PROPAGATE_VALUE_NONE;
        const am_pb_anyvalue_t *v = i < n_values ? values[i] : NULL;
        if (v == NULL) {
            continue;
        }
        switch (v->value_case) {
        case AM_PB_VALUE(STRING_VALUE):
            if (v->string_value == NULL) {
                break;
            }
            size_t len = strlen(v->string_value);
            memcpy(text, v->string_value, len + 1);
            into[i].u.str = text;
            into[i].type = PROPAGATE_VALUE_STRING;
            text += len + 1;
            break;
        case AM_PB_VALUE(INT_VALUE):
            into[i].type = PROPAGATE_VALUE_INT;
            into[i].u.i = v->int_value;
            break;
        case AM_PB_VALUE(DOUBLE_VALUE):
            into[i].type = PROPAGATE_VALUE_DOUBLE;
            into[i].u.d = v->double_value;
            break;
        case AM_PB_VALUE(BOOL_VALUE):
            into[i].type = PROPAGATE_VALUE_BOOL;
            into[i].u.b = v->bool_value;
            break;
        default:
            break;
        }
    }
    return into;
}

static int cache_alloc(propagate_cache_t *cache)
{
    uint32_t n_slots = 16;
    while (n_slots < cache->cap * 2) {
        n_slots *= 2;
    }
    cache->ring = am_calloc(cache->cap, sizeof(*cache->ring));
    cache->slots = am_malloc((size_t)n_slots * sizeof(*cache->slots));
    if (cache->ring == NULL || cache->slots == NULL) {
        am_free(cache->ring);
        am_free(cache->slots);
        cache->ring = NULL;
        cache->slots = NULL;
        return AM_ENOMEM;
    }
    memset(cache->slots, 0xff, (size_t)n_slots * sizeof(*cache->slots));
    cache->mask = n_slots - 1;
    return 0;
}

/* Remove the table slot `hole` (backward shift keeps probe runs intact). */
static void slot_remove(propagate_cache_t *cache, uint32_t hole)
{
    uint32_t mask = cache->mask;
    for (uint32_t j = (hole + 1) & mask; cache->slots[j] != SLOT_EMPTY; j = (j + 1) & mask) {
        uint32_t home = id_hash(cache->ring[cache->slots[j]].trace_id) & mask;
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            cache->slots[hole] = cache->slots[j];
            hole = j;
        }
    }
    cache->slots[hole] = SLOT_EMPTY;
}

int propagate__cache_put(propagate_cache_t *cache, const uint8_t trace_id[16],
                         const am_pb_anyvalue_t *const *values, bool replace)
{
    if (cache->cap == 0) {
        return 0;
    }
    if (cache->ring == NULL && cache_alloc(cache) != 0) {
        return AM_ENOMEM;
    }
    uint32_t slot = slot_of(cache, trace_id);
    if (cache->slots[slot] != SLOT_EMPTY) {
        if (!replace) {
            return 0;
        }
        propagate_cache_entry_t *entry = &cache->ring[cache->slots[slot]];
        propagate_value_t *copy = values_copy(values, cache->n_values);
        if (copy == NULL) {
            return AM_ENOMEM;
        }
        am_free(entry->values);
        entry->values = copy;
        return 0;
    }
    uint32_t pos;
    if (cache->count == cache->cap) {
        pos = cache->oldest;
        slot_remove(cache, slot_of(cache, cache->ring[pos].trace_id));
        cache->oldest = (cache->oldest + 1) % cache->cap;
        cache->count--;
        slot = slot_of(cache, trace_id); /* the shift may have moved the hole */
    } else {
        pos = (cache->oldest + cache->count) % cache->cap;
    }
    propagate_cache_entry_t *entry = &cache->ring[pos];
    propagate_value_t *copy = values_copy(values, cache->n_values);
    if (copy == NULL) {
        return AM_ENOMEM;
    }
    am_free(entry->values);
    entry->values = copy;
    memcpy(entry->trace_id, trace_id, 16);
    cache->slots[slot] = pos;
    cache->count++;
    return 0;
}

void propagate__cache_free(propagate_cache_t *cache)
{
    for (uint32_t i = 0; cache->ring != NULL && i < cache->cap; i++) {
        am_free(cache->ring[i].values);
    }
    am_free(cache->ring);
    am_free(cache->slots);
    cache->ring = NULL;
    cache->slots = NULL;
    cache->count = 0;
    cache->oldest = 0;
}
