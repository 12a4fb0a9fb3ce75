/*
 * tracetree_table.c - the two trace-id tables of a tracetree instance: the
 * index of buffered traces and the bounded memory of emitted ones.
 *
 * Both map a 16-byte trace id to a uint32 (a pool index, a ring position)
 * and store only that uint32 per slot; the key lives once, in the caller's
 * storage, and is read back through a callback.  With a pooled trace array
 * this keeps the per-trace cost of the index at 8 bytes (load <= 1/2) and
 * means growing the table never moves a trace.
 *
 * Trace ids are random in practice but not in tests or from buggy SDKs
 * (counters, zero-padded ids), so both halves are mixed before masking.
 */
#include <string.h>

#include "tracetree_internal.h"

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

uint32_t tracetree__idtab_find(const tracetree_idtab_t *tab, const uint8_t id[16],
                               tracetree_key_fn key_fn, const void *ctx)
{
    if (tab->slots == NULL) {
        return TRACETREE_ID_NONE;
    }
    for (uint32_t i = id_hash(id) & tab->mask;; i = (i + 1) & tab->mask) {
        uint32_t value = tab->slots[i];
        if (value == TRACETREE_ID_NONE || memcmp(key_fn(ctx, value), id, 16) == 0) {
            return value;
        }
    }
}

static void place(uint32_t *slots, uint32_t mask, uint32_t value, const uint8_t *key)
{
    uint32_t i = id_hash(key) & mask;
    while (slots[i] != TRACETREE_ID_NONE) {
        i = (i + 1) & mask;
    }
    slots[i] = value;
}

int tracetree__idtab_insert(tracetree_idtab_t *tab, uint32_t value, tracetree_key_fn key_fn,
                            const void *ctx)
{
    uint32_t cap = tab->slots != NULL ? tab->mask + 1 : 0;
    if ((tab->count + 1) * 2 > cap) {
        uint32_t grown_cap = cap == 0 ? 64 : cap * 2;
        uint32_t *grown = am_malloc((size_t)grown_cap * sizeof(*grown));
        if (grown == NULL) {
            return AM_ENOMEM;
        }
        memset(grown, 0xff, (size_t)grown_cap * sizeof(*grown));
        for (uint32_t i = 0; i < cap; i++) {
            if (tab->slots[i] != TRACETREE_ID_NONE) {
                place(grown, grown_cap - 1, tab->slots[i], key_fn(ctx, tab->slots[i]));
            }
        }
        am_free(tab->slots);
        tab->slots = grown;
        tab->mask = grown_cap - 1;
    }
    place(tab->slots, tab->mask, value, key_fn(ctx, value));
    tab->count++;
    return 0;
}

void tracetree__idtab_remove(tracetree_idtab_t *tab, const uint8_t id[16], tracetree_key_fn key_fn,
                             const void *ctx)
{
    if (tab->slots == NULL) {
        return;
    }
    uint32_t mask = tab->mask;
    uint32_t hole = id_hash(id) & mask;
    for (;; hole = (hole + 1) & mask) {
        uint32_t value = tab->slots[hole];
        if (value == TRACETREE_ID_NONE) {
            return;
        }
        if (memcmp(key_fn(ctx, value), id, 16) == 0) {
            break;
        }
    }
    /* Backward shift: pull later members of the probe run into the hole
     * unless their home slot lies cyclically in (hole, j]. */
    for (uint32_t j = (hole + 1) & mask; tab->slots[j] != TRACETREE_ID_NONE; j = (j + 1) & mask) {
        uint32_t home = id_hash(key_fn(ctx, tab->slots[j])) & mask;
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            tab->slots[hole] = tab->slots[j];
            hole = j;
        }
    }
    tab->slots[hole] = TRACETREE_ID_NONE;
    tab->count--;
}

void tracetree__idtab_free(tracetree_idtab_t *tab)
{
    am_free(tab->slots);
    memset(tab, 0, sizeof(*tab));
}

/* ---- emitted ids ------------------------------------------------------- */

static const uint8_t *late_key(const void *ctx, uint32_t pos)
{
    const tracetree_late_t *late = ctx;
    return late->ids[pos];
}

bool tracetree__late_contains(const tracetree_late_t *late, const uint8_t id[16])
{
    return late->count > 0 &&
           tracetree__idtab_find(&late->tab, id, late_key, late) != TRACETREE_ID_NONE;
}

int tracetree__late_add(tracetree_late_t *late, const uint8_t id[16])
{
    if (late->cap == 0 || tracetree__late_contains(late, id)) {
        return 0;
    }
    if (late->ids == NULL) {
        late->ids = am_malloc((size_t)late->cap * sizeof(*late->ids));
        if (late->ids == NULL) {
            return AM_ENOMEM;
        }
    }
    uint32_t pos;
    if (late->count == late->cap) {
        pos = late->oldest;
        tracetree__idtab_remove(&late->tab, late->ids[pos], late_key, late);
        late->oldest = (late->oldest + 1) % late->cap;
        late->count--;
    } else {
        pos = (late->oldest + late->count) % late->cap;
    }
    memcpy(late->ids[pos], id, 16);
    if (tracetree__idtab_insert(&late->tab, pos, late_key, late) != 0) {
        /* pos stays outside the live range of the ring: still consistent. */
        return AM_ENOMEM;
    }
    late->count++;
    return 0;
}

void tracetree__late_free(tracetree_late_t *late)
{
    am_free(late->ids);
    tracetree__idtab_free(&late->tab);
    late->ids = NULL;
    late->count = 0;
    late->oldest = 0;
}
