/*
 * am_attr.c - attribute reads and writes on protobuf-c KeyValue arrays.
 *
 * Writes grow arrays in the batch arena by doubling into a fresh array (the
 * old one stays in its arena until the arena dies); spans rarely gain more
 * than a dozen attributes, so this is cheap.
 */
#include "am_attr.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_intern.h"

/* ---- known keys: pointer compares ----
 *
 * The decoder (core/am_otlp_unpack.c) and the setters below store a known
 * key as its interned pointer (core/am_intern.h).  Looking up a known key is
 * then a scan of pointer compares: a KeyValue whose key is the interned
 * pointer matches, one whose key is another interned pointer cannot, and
 * only keys outside the table (rare) are compared as text. */

static am_pb_keyvalue_t *scan_interned(am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                                       const char *key, const char *interned)
{
    for (size_t i = 0; i < n_attrs; i++) {
        am_pb_keyvalue_t *kv = attrs[i];
        if (kv == NULL || kv->key == NULL) {
            continue;
        }
        if (kv->key == interned) {
            return kv;
        }
        if (!am_interned(kv->key) && kv->key[0] == key[0] && strcmp(kv->key, key) == 0) {
            return kv;
        }
    }
    return NULL;
}

/* ---- the per-thread index of the attribute arrays in scope ----
 *
 * The cost processors read a span's attributes dozens of times (every
 * alternative name of every §5 field); a linear scan with strcmp made that
 * the largest CPU cost of the chain.  In a scope, each array of the span(s)
 * and resource in scope gets an open-addressing table (key hash -> first
 * KeyValue with that key), so a lookup is one hash and usually one strcmp. */

#define IX_MIN_ATTRS 4   /* shorter arrays are scanned */
#define IX_MAX_ATTRS 128 /* so are longer ones */
#define IX_SLOTS 256     /* >= 2 * IX_MAX_ATTRS: load factor <= 1/2 */
#define IX_GROW_SPARE 8  /* room left at the end of an array grown in a scope */
#define IX_LAZY 2        /* lookups on an array that scan before it is indexed */

typedef struct ix_slot {
    const am_pb_keyvalue_t *kv; /* NULL: empty */
    uint64_t hash;
} ix_slot_t;

typedef struct attr_ix {
    am_pb_keyvalue_t *const *attrs; /* the array indexed; NULL: none */
    size_t n;
    size_t mask;
    unsigned lookups; /* in this scope, before the index was built */
    /* Which known keys (am_intern ids) the array holds, for arrays in scope:
     * a lookup of an absent known key is then one bit test.  In `known_ext`
     * when the caller keeps it (with the span reference), else here. */
    am_attr_known_t known_local;
    am_attr_known_t *known_ext;
    ix_slot_t slots[IX_SLOTS];
} attr_ix_t;

typedef struct attr_scope {
    bool active;
    const am_pb_span_t *span[2];
    const am_pb_resource_t *resource;
    attr_ix_t ix[3]; /* span[0], span[1], resource */
    /* The array span_slot last grew in this scope, for that span, and its room. */
    const am_pb_span_t *grown_span;
    am_pb_keyvalue_t **grown;
    size_t grown_cap;
} attr_scope_t;

static __thread attr_scope_t scope;

static inline uint64_t load64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline uint64_t key_hash(const char *key)
{
    size_t len = strlen(key);
    uint64_t h = (uint64_t)len * 0x9E3779B97F4A7C15ull;
    if (len >= 8) {
        h ^= load64(key);
        h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ull;
        h ^= load64(key + len - 8);
        if (len > 16) {
            h = (h ^ (h >> 32)) * 0x94D049BB133111EBull;
            h ^= load64(key + len / 2 - 4);
        }
    } else {
        for (size_t i = 0; i < len; i++) {
            h = (h ^ (unsigned char)key[i]) * 0x100000001B3ull;
        }
    }
    h = (h ^ (h >> 31)) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

static void ix_insert(attr_ix_t *ix, const am_pb_keyvalue_t *kv)
{
    if (kv == NULL || kv->key == NULL) {
        return;
    }
    uint64_t h = key_hash(kv->key);
    for (size_t j = h & ix->mask;; j = (j + 1) & ix->mask) {
        ix_slot_t *slot = &ix->slots[j];
        if (slot->kv == NULL) {
            slot->kv = kv;
            slot->hash = h;
            return;
        }
        if (slot->hash == h && strcmp(slot->kv->key, kv->key) == 0) {
            return; /* the first KeyValue with a key wins, as in the scan */
        }
    }
}

static void ix_build(attr_ix_t *ix, am_pb_keyvalue_t *const *attrs, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) {
        cap <<= 1;
    }
    memset(ix->slots, 0, cap * sizeof(ix->slots[0]));
    ix->mask = cap - 1;
    ix->attrs = attrs;
    ix->n = n;
    for (size_t i = 0; i < n; i++) {
        ix_insert(ix, attrs[i]);
    }
}

static am_pb_keyvalue_t *ix_find(const attr_ix_t *ix, const char *key)
{
    uint64_t h = key_hash(key);
    for (size_t j = h & ix->mask;; j = (j + 1) & ix->mask) {
        const ix_slot_t *slot = &ix->slots[j];
        if (slot->kv == NULL) {
            return NULL;
        }
        if (slot->hash == h && strcmp(slot->kv->key, key) == 0) {
            return (am_pb_keyvalue_t *)slot->kv;
        }
    }
}

/* The scope's slot for `attrs` when it is an array in scope, else NULL. */
static attr_ix_t *scope_slot(am_pb_keyvalue_t *const *attrs, size_t n)
{
    if (!scope.active || attrs == NULL) {
        return NULL;
    }
    for (int i = 0; i < 3; i++) {
        if (i < 2) {
            if (scope.span[i] != NULL && scope.span[i]->attributes == attrs &&
                scope.span[i]->n_attributes == n) {
                return &scope.ix[i];
            }
        } else if (scope.resource != NULL && scope.resource->attributes == attrs &&
                   scope.resource->n_attributes == n) {
            return &scope.ix[i];
        }
    }
    return NULL;
}

_Static_assert(sizeof(((am_attr_known_t *)0)->bits) * 8 > AM_INTERN_MAX_IDS,
               "known-key set too small for the intern table");

static inline am_attr_known_t *known_of(attr_ix_t *ix)
{
    return ix->known_ext != NULL ? ix->known_ext : &ix->known_local;
}

static inline void known_set(am_attr_known_t *known, const char *key)
{
    int id = am_intern_id(key);
    if (id < 0) {
        /* a known key stored as a private copy (a path that did not intern) */
        const char *interned = am_intern(key, strlen(key));
        id = interned != NULL ? am_intern_id(interned) : -1;
    }
    if (id >= 0) {
        known->bits[id >> 6] |= UINT64_C(1) << (id & 63);
    }
}

/* False when the array in scope certainly lacks the known key `id`. */
static bool known_may_have(am_pb_keyvalue_t *const *attrs, size_t n, int id)
{
    attr_ix_t *ix = scope_slot(attrs, n);
    if (ix == NULL) {
        return true;
    }
    am_attr_known_t *known = known_of(ix);
    if (known->attrs != (const void *)attrs || known->n != n) {
        memset(known->bits, 0, sizeof(known->bits));
        for (size_t i = 0; i < n; i++) {
            if (attrs[i] != NULL && attrs[i]->key != NULL) {
                known_set(known, attrs[i]->key);
            }
        }
        known->attrs = attrs;
        known->n = n;
    }
    return (known->bits[id >> 6] >> (id & 63)) & 1;
}

/* The index of `attrs` when it is an array in scope (built or rebuilt now if
 * needed), else NULL: scan. */
static attr_ix_t *index_for(am_pb_keyvalue_t *const *attrs, size_t n)
{
    if (n < IX_MIN_ATTRS || n > IX_MAX_ATTRS) {
        return NULL;
    }
    attr_ix_t *ix = scope_slot(attrs, n);
    if (ix != NULL && (ix->attrs != attrs || ix->n != n)) {
        /* a scan is cheaper than building for one or two lookups */
        if (ix->lookups < IX_LAZY) {
            ix->lookups++;
            return NULL;
        }
        ix_build(ix, attrs, n);
    }
    return ix;
}

static void scope_reset(void)
{
    scope.active = false;
    scope.span[0] = scope.span[1] = NULL;
    scope.resource = NULL;
    for (int i = 0; i < 3; i++) {
        scope.ix[i].attrs = NULL;
        scope.ix[i].n = 0;
        scope.ix[i].lookups = 0;
        scope.ix[i].known_local.attrs = NULL;
        scope.ix[i].known_local.n = 0;
        scope.ix[i].known_ext = NULL;
    }
    scope.grown_span = NULL;
    scope.grown = NULL;
    scope.grown_cap = 0;
}

void am_attr_scope_begin(const am_pb_span_t *span, const am_pb_span_t *other,
                         const am_pb_resource_t *resource)
{
    /* The scope replaced held `resource` too (alive until now, by contract):
     * its index stays valid (rebuilt anyway if its array changed). */
    bool keep = scope.active && resource != NULL && scope.resource == resource;
    attr_ix_t kept;
    if (keep) {
        kept.attrs = scope.ix[2].attrs;
        kept.n = scope.ix[2].n;
        kept.mask = scope.ix[2].mask;
        kept.lookups = scope.ix[2].lookups;
        kept.known_local = scope.ix[2].known_local;
    }
    scope_reset();
    if (keep) {
        scope.ix[2].attrs = kept.attrs;
        scope.ix[2].n = kept.n;
        scope.ix[2].mask = kept.mask;
        scope.ix[2].lookups = kept.lookups;
        scope.ix[2].known_local = kept.known_local;
    }
    scope.span[0] = span;
    scope.span[1] = other;
    scope.resource = resource;
    scope.active = true;
}

void am_attr_scope_begin_known(const am_pb_span_t *span, am_attr_known_t *span_known,
                               const am_pb_span_t *other, const am_pb_resource_t *resource)
{
    am_attr_scope_begin(span, other, resource);
    scope.ix[0].known_ext = span_known;
}

void am_attr_scope_end(void)
{
    scope_reset();
}

const am_pb_anyvalue_t *am_attr_find(am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                                     const char *key)
{
    const char *interned = am_intern_cached(key);
    if (interned != NULL) {
        if (!known_may_have(attrs, n_attrs, am_intern_id(interned))) {
            return NULL;
        }
        const am_pb_keyvalue_t *kv = scan_interned(attrs, n_attrs, key, interned);
        return kv != NULL ? kv->value : NULL;
    }
    attr_ix_t *ix = index_for(attrs, n_attrs);
    if (ix != NULL) {
        const am_pb_keyvalue_t *kv = ix_find(ix, key);
        return kv != NULL ? kv->value : NULL;
    }
    for (size_t i = 0; i < n_attrs; i++) {
        if (attrs[i] != NULL && attrs[i]->key != NULL && attrs[i]->key[0] == key[0] &&
            strcmp(attrs[i]->key, key) == 0) {
            return attrs[i]->value;
        }
    }
    return NULL;
}

bool am_attr_get_str(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                     const char **out)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL || v->value_case != AM_PB_VALUE(STRING_VALUE) || v->string_value == NULL ||
        v->string_value[0] == '\0') {
        return false;
    }
    *out = v->string_value;
    return true;
}

static bool parse_int_text(const char *s, int64_t *out)
{
    if (s == NULL || *s == '\0') {
        return false;
    }
    errno = 0;
    char *end = NULL;
    long long value = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0') {
        /* Accept integral decimal text like "1200.0". */
        char *dend = NULL;
        double d = strtod(s, &dend);
        if (*dend != '\0' || !isfinite(d) || d != floor(d) || fabs(d) > 9.0e18) {
            return false;
        }
        *out = (int64_t)d;
        return true;
    }
    *out = value;
    return true;
}

bool am_attr_get_int(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key, int64_t *out)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL) {
        return false;
    }
    switch (v->value_case) {
    case AM_PB_VALUE(INT_VALUE):
        *out = v->int_value;
        return true;
    case AM_PB_VALUE(DOUBLE_VALUE):
        if (!isfinite(v->double_value) || v->double_value != floor(v->double_value) ||
            fabs(v->double_value) > 9.0e18) {
            return false;
        }
        *out = (int64_t)v->double_value;
        return true;
    case AM_PB_VALUE(STRING_VALUE):
        return parse_int_text(v->string_value, out);
    default:
        return false;
    }
}

bool am_attr_get_double(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                        double *out)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL) {
        return false;
    }
    switch (v->value_case) {
    case AM_PB_VALUE(INT_VALUE):
        *out = (double)v->int_value;
        return true;
    case AM_PB_VALUE(DOUBLE_VALUE):
        if (!isfinite(v->double_value)) {
            return false;
        }
        *out = v->double_value;
        return true;
    case AM_PB_VALUE(STRING_VALUE): {
        if (v->string_value == NULL || v->string_value[0] == '\0') {
            return false;
        }
        char *end = NULL;
        double d = strtod(v->string_value, &end);
        if (*end != '\0' || !isfinite(d)) {
            return false;
        }
        *out = d;
        return true;
    }
    default:
        return false;
    }
}

const char *am_attr_first_str(const am_pb_span_t *span, const am_pb_resource_t *resource,
                              const char *const *keys)
{
    const char *value;
    for (size_t i = 0; keys[i] != NULL; i++) {
        if (span != NULL &&
            am_attr_get_str(span->attributes, span->n_attributes, keys[i], &value)) {
            return value;
        }
    }
    if (resource != NULL) {
        for (size_t i = 0; keys[i] != NULL; i++) {
            if (am_attr_get_str(resource->attributes, resource->n_attributes, keys[i], &value)) {
                return value;
            }
        }
    }
    return NULL;
}

bool am_attr_first_int(const am_pb_span_t *span, const am_pb_resource_t *resource,
                       const char *const *keys, int64_t *out)
{
    for (size_t i = 0; keys[i] != NULL; i++) {
        if (span != NULL && am_attr_get_int(span->attributes, span->n_attributes, keys[i], out)) {
            return true;
        }
    }
    if (resource != NULL) {
        for (size_t i = 0; keys[i] != NULL; i++) {
            if (am_attr_get_int(resource->attributes, resource->n_attributes, keys[i], out)) {
                return true;
            }
        }
    }
    return false;
}

/* The value slot for `key` on span: the existing one, or a new KeyValue. */
static am_pb_anyvalue_t *span_slot(am_arena_t *arena, am_pb_span_t *span, const char *key)
{
    const char *interned = am_intern_cached(key);
    attr_ix_t *ix = interned != NULL ? NULL : index_for(span->attributes, span->n_attributes);
    am_pb_keyvalue_t *found = NULL;
    if (interned != NULL) {
        if (known_may_have(span->attributes, span->n_attributes, am_intern_id(interned))) {
            found = scan_interned(span->attributes, span->n_attributes, key, interned);
        }
    } else if (ix != NULL) {
        found = ix_find(ix, key);
    } else {
        for (size_t i = 0; i < span->n_attributes; i++) {
            am_pb_keyvalue_t *kv = span->attributes[i];
            if (kv != NULL && kv->key != NULL && kv->key[0] == key[0] &&
                strcmp(kv->key, key) == 0) {
                found = kv;
                break;
            }
        }
    }
    if (found != NULL) {
        am_pb_anyvalue_t *value = am_arena_alloc(arena, sizeof(*value));
        if (value == NULL) {
            return NULL;
        }
        opentelemetry__proto__common__v1__any_value__init(value);
        found->value = value;
        return value;
    }
    size_t n = span->n_attributes;
    /* In a scope, an array grown here keeps some room, so the next writes to
     * the same span append instead of copying the array again (the slots past
     * n_attributes belong to no one else). */
    bool in_place = scope.active && scope.grown_span == span && scope.grown != NULL &&
                    span->attributes == scope.grown && n < scope.grown_cap;
    size_t cap = scope.active ? n + IX_GROW_SPARE : n + 1;
    am_pb_keyvalue_t **grown = in_place ? scope.grown : am_arena_alloc(arena, cap * sizeof(*grown));
    /* a KeyValue and its value in one allocation, as the decoder lays them out */
    struct {
        am_pb_keyvalue_t kv;
        am_pb_anyvalue_t value;
    } *pair = am_arena_alloc(arena, sizeof(*pair));
    if (grown == NULL || pair == NULL) {
        return NULL;
    }
    am_pb_keyvalue_t *kv = &pair->kv;
    am_pb_anyvalue_t *value = &pair->value;
    if (!in_place && n > 0) {
        memcpy(grown, span->attributes, n * sizeof(*grown));
    }
    if (!in_place && scope.active) {
        scope.grown_span = span;
        scope.grown = grown;
        scope.grown_cap = cap;
    }
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(value);
    kv->key = (char *)(interned != NULL ? interned : key);
    kv->value = value;
    grown[n] = kv;
    attr_ix_t *known_ix = scope_slot(span->attributes, n);
    am_attr_known_t *known = known_ix != NULL ? known_of(known_ix) : NULL;
    bool known_current =
        known != NULL && known->attrs == (const void *)span->attributes && known->n == n;
    span->attributes = grown;
    span->n_attributes = n + 1;
    if (known_current) {
        known_set(known, kv->key);
        known->attrs = grown;
        known->n = n + 1;
    }
    if (ix != NULL) {
        if (n + 1 <= (ix->mask + 1) / 2) {
            ix->attrs = grown;
            ix->n = n + 1;
            ix_insert(ix, kv);
        } else {
            ix->attrs = NULL; /* rebuilt, larger, on the next lookup */
        }
    }
    return value;
}

int am_span_set_str(am_arena_t *arena, am_pb_span_t *span, const char *key, const char *value)
{
    char *copy = am_arena_strdup(arena, value);
    am_pb_anyvalue_t *slot = copy != NULL ? span_slot(arena, span, key) : NULL;
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(STRING_VALUE);
    slot->string_value = copy;
    return 0;
}

int am_span_set_int(am_arena_t *arena, am_pb_span_t *span, const char *key, int64_t value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(INT_VALUE);
    slot->int_value = value;
    return 0;
}

int am_span_set_double(am_arena_t *arena, am_pb_span_t *span, const char *key, double value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(DOUBLE_VALUE);
    slot->double_value = value;
    return 0;
}

int am_span_set_bool(am_arena_t *arena, am_pb_span_t *span, const char *key, bool value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(BOOL_VALUE);
    slot->bool_value = value;
    return 0;
}

int am_span_set_value(am_arena_t *arena, am_pb_span_t *span, const char *key,
                      const am_pb_anyvalue_t *value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    *slot = *value;
    return 0;
}

static void intern_array(am_pb_keyvalue_t **attrs, size_t n_attrs)
{
    for (size_t i = 0; i < n_attrs; i++) {
        am_pb_keyvalue_t *kv = attrs[i];
        if (kv != NULL && kv->key != NULL && !am_interned(kv->key)) {
            const char *interned = am_intern(kv->key, strlen(kv->key));
            if (interned != NULL) {
                kv->key = (char *)interned;
            }
        }
    }
}

void am_attr_intern_keys(am_pb_export_req_t *req)
{
    for (size_t r = 0; req != NULL && r < req->n_resource_spans; r++) {
        am_pb_resource_spans_t *rs = req->resource_spans[r];
        if (rs == NULL) {
            continue;
        }
        if (rs->resource != NULL) {
            intern_array(rs->resource->attributes, rs->resource->n_attributes);
        }
        for (size_t s = 0; s < rs->n_scope_spans; s++) {
            am_pb_scope_spans_t *ss = rs->scope_spans[s];
            if (ss == NULL) {
                continue;
            }
            if (ss->scope != NULL) {
                intern_array(ss->scope->attributes, ss->scope->n_attributes);
            }
            for (size_t i = 0; i < ss->n_spans; i++) {
                am_pb_span_t *span = ss->spans[i];
                if (span == NULL) {
                    continue;
                }
                intern_array(span->attributes, span->n_attributes);
                for (size_t e = 0; e < span->n_events; e++) {
                    if (span->events[e] != NULL) {
                        intern_array(span->events[e]->attributes, span->events[e]->n_attributes);
                    }
                }
                for (size_t l = 0; l < span->n_links; l++) {
                    if (span->links[l] != NULL) {
                        intern_array(span->links[l]->attributes, span->links[l]->n_attributes);
                    }
                }
            }
        }
    }
}

static size_t text_append(char *buf, size_t size, size_t pos, const char *s)
{
    while (*s != '\0' && pos + 1 < size) {
        buf[pos++] = *s++;
    }
    buf[pos < size ? pos : size - 1] = '\0';
    return pos;
}

static size_t value_text(const am_pb_anyvalue_t *value, char *buf, size_t size, size_t pos,
                         int depth)
{
    char tmp[64];
    if (value == NULL || depth > 8) {
        return text_append(buf, size, pos, depth > 8 ? "..." : "");
    }
    switch (value->value_case) {
    case AM_PB_VALUE(STRING_VALUE):
        return text_append(buf, size, pos, value->string_value != NULL ? value->string_value : "");
    case AM_PB_VALUE(BOOL_VALUE):
        return text_append(buf, size, pos, value->bool_value ? "true" : "false");
    case AM_PB_VALUE(INT_VALUE):
        snprintf(tmp, sizeof(tmp), "%" PRId64, value->int_value);
        return text_append(buf, size, pos, tmp);
    case AM_PB_VALUE(DOUBLE_VALUE):
        snprintf(tmp, sizeof(tmp), "%.17g", value->double_value);
        return text_append(buf, size, pos, tmp);
    case AM_PB_VALUE(BYTES_VALUE):
        snprintf(tmp, sizeof(tmp), "<%zu bytes>", value->bytes_value.len);
        return text_append(buf, size, pos, tmp);
    case AM_PB_VALUE(ARRAY_VALUE): {
        pos = text_append(buf, size, pos, "[");
        const am_pb_arrayvalue_t *arr = value->array_value;
        for (size_t i = 0; arr != NULL && i < arr->n_values; i++) {
            if (i > 0) {
                pos = text_append(buf, size, pos, ",");
            }
            pos = value_text(arr->values[i], buf, size, pos, depth + 1);
        }
        return text_append(buf, size, pos, "]");
    }
    case AM_PB_VALUE(KVLIST_VALUE): {
        pos = text_append(buf, size, pos, "{");
        const am_pb_kvlist_t *list = value->kvlist_value;
        for (size_t i = 0; list != NULL && i < list->n_values; i++) {
            if (i > 0) {
                pos = text_append(buf, size, pos, ",");
            }
            if (list->values[i] != NULL) {
                pos = text_append(buf, size, pos, list->values[i]->key);
                pos = text_append(buf, size, pos, "=");
                pos = value_text(list->values[i]->value, buf, size, pos, depth + 1);
            }
        }
        return text_append(buf, size, pos, "}");
    }
    default:
        return text_append(buf, size, pos, "");
    }
}

const char *am_anyvalue_to_text(const am_pb_anyvalue_t *value, char *buf, size_t size)
{
    if (size == 0) {
        return buf;
    }
    buf[0] = '\0';
    value_text(value, buf, size, 0, 0);
    return buf;
}

const char *am_hex(const uint8_t *bytes, size_t len, char *buf)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        buf[2 * i] = digits[bytes[i] >> 4];
        buf[2 * i + 1] = digits[bytes[i] & 15];
    }
    buf[2 * len] = '\0';
    return buf;
}
