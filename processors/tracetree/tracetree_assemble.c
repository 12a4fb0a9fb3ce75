/*
 * tracetree_assemble.c - turn the buffered spans of one trace into an
 * am_trace_t: span refs, parent -> children links and the roots list.
 *
 * Why it looks like this:
 *
 * - Links are resolved only when a trace is emitted, from a span-id hash
 *   kept in per-instance scratch memory.  Buffering a span therefore costs
 *   24 bytes of bookkeeping (tracetree_pending_t) and no hash entry; the
 *   hash is paid once per emitted trace, O(spans).
 * - Children are linked by walking the spans backwards and prepending, so
 *   each child list comes out in arrival order without a last_child array.
 * - Duplicate span ids (retries, buggy SDKs) keep every span; children name
 *   the first span with that id.  A span naming itself as parent is an
 *   orphan.
 * - Parent links come from the network, so they may form cycles (A parent
 *   of B parent of A).  A cycle is invisible from any root, so after linking
 *   we mark everything reachable from the roots and, for each span left
 *   over, climb its parent chain to the first span seen twice (which lies on
 *   the cycle), cut that span from its parent and make it an orphan.  Every
 *   later walk (propagate, rollup) then sees a forest and terminates.
 * - No recursion anywhere: traces may be 10^5 spans deep.  Subtrees are
 *   walked with the parent links (pre-order, no stack).
 */
#include <string.h>

#include "tracetree_internal.h"

enum {
    STATE_UNSEEN = 0,
    STATE_ON_PATH = 1,
    STATE_REACHED = 2,
};

bool tracetree__is_root(const am_pb_span_t *span)
{
    for (size_t i = 0; i < span->parent_span_id.len; i++) {
        if (span->parent_span_id.data[i] != 0) {
            return false;
        }
    }
    return true;
}

/* A span id as a hash key; false for ids that cannot be a parent (wrong
 * length or all zero). */
static bool span_key(const ProtobufCBinaryData *id, uint64_t *key)
{
    if (id->len != 8) {
        return false;
    }
    memcpy(key, id->data, 8);
    return *key != 0;
}

static size_t key_hash(uint64_t key, size_t mask)
{
    key ^= key >> 33;
    key *= UINT64_C(0xff51afd7ed558ccd);
    key ^= key >> 33;
    return (size_t)key & mask;
}

static int scratch_reserve(tracetree_scratch_t *scratch, uint32_t n_spans)
{
    size_t want = 16;
    while (want < (size_t)n_spans * 2) {
        want *= 2;
    }
    if (scratch->n_slots < want) {
        uint32_t *slots = am_realloc(scratch->slots, want * sizeof(*slots));
        if (slots == NULL) {
            return AM_ENOMEM;
        }
        scratch->slots = slots;
        scratch->n_slots = want;
    }
    if (scratch->n_state < n_spans) {
        uint8_t *state = am_realloc(scratch->state, n_spans);
        if (state == NULL) {
            return AM_ENOMEM;
        }
        scratch->state = state;
        scratch->n_state = n_spans;
    }
    return 0;
}

void tracetree__scratch_free(tracetree_scratch_t *scratch)
{
    am_free(scratch->slots);
    am_free(scratch->state);
    memset(scratch, 0, sizeof(*scratch));
}

/* The hash table uses the smallest power of two >= 2 * n_spans slots of the
 * scratch (it may be bigger from an earlier, larger trace). */
static size_t table_mask(uint32_t n_spans)
{
    size_t cap = 16;
    while (cap < (size_t)n_spans * 2) {
        cap *= 2;
    }
    return cap - 1;
}

/* Index of the first span with id `key`, or AM_SPAN_NONE. */
static uint32_t table_find(const tracetree_scratch_t *scratch, size_t mask,
                           const tracetree_pending_t *pending, uint64_t key)
{
    for (size_t i = key_hash(key, mask);; i = (i + 1) & mask) {
        uint32_t idx = scratch->slots[i];
        if (idx == AM_SPAN_NONE) {
            return AM_SPAN_NONE;
        }
        uint64_t other;
        memcpy(&other, pending[idx].span->span_id.data, 8);
        if (other == key) {
            return idx;
        }
    }
}

static void table_insert_first(tracetree_scratch_t *scratch, size_t mask,
                               const tracetree_pending_t *pending, uint64_t key, uint32_t idx)
{
    for (size_t i = key_hash(key, mask);; i = (i + 1) & mask) {
        uint32_t cur = scratch->slots[i];
        if (cur == AM_SPAN_NONE) {
            scratch->slots[i] = idx;
            return;
        }
        uint64_t other;
        memcpy(&other, pending[cur].span->span_id.data, 8);
        if (other == key) {
            return; /* duplicate id: the first span keeps it */
        }
    }
}

/* Mark the subtree of `top` reached, in pre-order, climbing back with the
 * parent links instead of a stack. */
static void mark_subtree(const am_span_ref_t *spans, uint32_t top, uint8_t *state)
{
    uint32_t node = top;
    for (;;) {
        state[node] = STATE_REACHED;
        if (spans[node].first_child != AM_SPAN_NONE) {
            node = spans[node].first_child;
            continue;
        }
        while (node != top && spans[node].next_sibling == AM_SPAN_NONE) {
            node = spans[node].parent;
        }
        if (node == top) {
            return;
        }
        node = spans[node].next_sibling;
    }
}

static void unlink_child(am_span_ref_t *spans, uint32_t child)
{
    uint32_t parent = spans[child].parent;
    uint32_t *link = &spans[parent].first_child;
    while (*link != AM_SPAN_NONE && *link != child) {
        link = &spans[*link].next_sibling;
    }
    if (*link == child) {
        *link = spans[child].next_sibling;
    }
    spans[child].parent = AM_SPAN_NONE;
    spans[child].next_sibling = AM_SPAN_NONE;
}

/* Make every span reachable from a root: break each parent cycle at the
 * first span found twice on the way up, which becomes an orphan. */
static void tree_break_cycles(am_span_ref_t *spans, uint32_t n_spans, uint8_t *state)
{
    memset(state, STATE_UNSEEN, n_spans);
    for (uint32_t i = 0; i < n_spans; i++) {
        if (spans[i].parent == AM_SPAN_NONE) {
            mark_subtree(spans, i, state);
        }
    }
    for (uint32_t i = 0; i < n_spans; i++) {
        if (state[i] != STATE_UNSEEN) {
            continue;
        }
        /* Every ancestor of an unreached span is unreached, and the chain
         * never ends (a root would have reached it): it must loop. */
        uint32_t node = i;
        while (node != AM_SPAN_NONE && state[node] == STATE_UNSEEN) {
            state[node] = STATE_ON_PATH;
            node = spans[node].parent;
        }
        if (node == AM_SPAN_NONE || state[node] == STATE_REACHED) {
            /* Not a cycle after all (cannot happen); attach at i. */
            node = i;
        }
        if (spans[node].parent != AM_SPAN_NONE) {
            unlink_child(spans, node);
        }
        spans[node].flags |= AM_SPANREF_ORPHAN;
        mark_subtree(spans, node, state);
    }
}

int tracetree__assemble(am_arena_t *arena, tracetree_scratch_t *scratch, const uint8_t trace_id[16],
                        const tracetree_pending_t *pending, uint32_t n_spans, bool late,
                        uint64_t first_seen_ms, am_trace_t *trace)
{
    if (scratch_reserve(scratch, n_spans) != 0) {
        return AM_ENOMEM;
    }
    am_span_ref_t *spans = am_arena_alloc(arena, (size_t)n_spans * sizeof(*spans));
    if (spans == NULL) {
        return AM_ENOMEM;
    }
    uint32_t ref_flags = late ? AM_SPANREF_LATE : 0;
    size_t mask = table_mask(n_spans);
    memset(scratch->slots, 0xff, (mask + 1) * sizeof(*scratch->slots));
    for (uint32_t i = 0; i < n_spans; i++) {
        spans[i] = (am_span_ref_t){
            .span = pending[i].span,
            .resource = pending[i].resource,
            .scope = pending[i].scope,
            .parent = AM_SPAN_NONE,
            .first_child = AM_SPAN_NONE,
            .next_sibling = AM_SPAN_NONE,
            .flags = ref_flags,
        };
        uint64_t key;
        if (span_key(&pending[i].span->span_id, &key)) {
            table_insert_first(scratch, mask, pending, key, i);
        }
    }
    /* Backwards + prepend = children in arrival order. */
    for (uint32_t i = n_spans; i-- > 0;) {
        const am_pb_span_t *span = pending[i].span;
        if (tracetree__is_root(span)) {
            continue;
        }
        uint64_t key;
        uint32_t parent = span_key(&span->parent_span_id, &key)
                              ? table_find(scratch, mask, pending, key)
                              : AM_SPAN_NONE;
        if (parent == AM_SPAN_NONE || parent == i) {
            spans[i].flags |= AM_SPANREF_ORPHAN;
            continue;
        }
        spans[i].parent = parent;
        spans[i].next_sibling = spans[parent].first_child;
        spans[parent].first_child = i;
    }
    tree_break_cycles(spans, n_spans, scratch->state);

    uint32_t n_true = 0, n_orphans = 0;
    for (uint32_t i = 0; i < n_spans; i++) {
        if (spans[i].flags & AM_SPANREF_ORPHAN) {
            n_orphans++;
        } else if (spans[i].parent == AM_SPAN_NONE) {
            n_true++;
        }
    }
    uint32_t *roots = am_arena_alloc(arena, ((size_t)n_true + n_orphans + 1) * sizeof(*roots));
    if (roots == NULL) {
        return AM_ENOMEM;
    }
    uint32_t next_true = 0, next_orphan = n_true;
    for (uint32_t i = 0; i < n_spans; i++) {
        if (spans[i].flags & AM_SPANREF_ORPHAN) {
            roots[next_orphan++] = i;
        } else if (spans[i].parent == AM_SPAN_NONE) {
            roots[next_true++] = i;
        }
    }
    memcpy(trace->trace_id, trace_id, 16);
    trace->spans = spans;
    trace->n_spans = n_spans;
    trace->roots = roots;
    trace->n_roots = n_true + n_orphans;
    trace->flags = ref_flags;
    trace->first_seen_ms = first_seen_ms;
    return 0;
}
