/*
 * propagate_internal.h - shared by the propagate files and their tests.
 * Everything runs on the instance's shard thread.
 */
#ifndef PROPAGATE_INTERNAL_H
#define PROPAGATE_INTERNAL_H

#include "am_component.h"

/* The parsed option table (propagate.c). */
typedef struct propagate_config {
    am_strlist_t attributes;
    bool overwrite;
    int64_t late_cache; /* per process; each shard gets its share */
} propagate_config_t;

/* ---- the late cache (propagate_cache.c) -------------------------------- */

/* A value kept after its batch (and arena) are gone: scalars only, strings
 * copied.  Arrays, maps and bytes are not cached (PROPAGATE_VALUE_NONE). */
typedef enum propagate_value_type {
    PROPAGATE_VALUE_NONE = 0,
    PROPAGATE_VALUE_STRING,
    PROPAGATE_VALUE_INT,
    PROPAGATE_VALUE_DOUBLE,
    PROPAGATE_VALUE_BOOL,
} propagate_value_type_t;

typedef struct propagate_value {
    propagate_value_type_t type;
    union {
        char *str; /* in the same allocation as the value array */
        int64_t i;
        double d;
        bool b;
    } u;
} propagate_value_t;

typedef struct propagate_cache_entry {
    uint8_t trace_id[16];
    propagate_value_t *values; /* n_values, in configured-attribute order */
} propagate_cache_entry_t;

/* trace id -> the propagated values of that trace's first root, for the
 * `cap` most recently emitted traces (FIFO eviction).  Storage is allocated
 * on the first put. */
typedef struct propagate_cache {
    propagate_cache_entry_t *ring;
    uint32_t cap; /* 0: disabled */
    uint32_t count;
    uint32_t oldest;
    uint32_t n_values;
    uint32_t *slots; /* ring positions; UINT32_MAX = empty */
    uint32_t mask;
} propagate_cache_t;

/* The cached values of trace_id (n_values entries), or NULL.  Valid until
 * the next put. */
const propagate_value_t *propagate__cache_find(const propagate_cache_t *cache,
                                               const uint8_t trace_id[16]);
/* Remember values[0..n_values) (NULL entries = absent) for trace_id,
 * replacing an existing entry when `replace`.  Copies everything.  0 or
 * AM_ENOMEM. */
int propagate__cache_put(propagate_cache_t *cache, const uint8_t trace_id[16],
                         const am_pb_anyvalue_t *const *values, bool replace);
void propagate__cache_free(propagate_cache_t *cache);

#endif
