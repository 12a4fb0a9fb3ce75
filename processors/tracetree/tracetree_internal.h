/*
 * tracetree_internal.h - what the tracetree files share with each other and
 * with their unit tests.  Nothing here is part of the component interface:
 * the only exported symbol users see is am_processor_tracetree_ops.
 *
 * Threads: every function below runs on the instance's shard thread (tests
 * call them from the thread that owns the loop they passed to create).
 */
#ifndef TRACETREE_INTERNAL_H
#define TRACETREE_INTERNAL_H

#include "am_component.h"

/* The parsed option table (tracetree.c): durations in milliseconds. */
typedef struct tracetree_config {
    int64_t wait_ms;
    int64_t max_wait_ms;
    int64_t max_traces; /* per process; each shard gets its share */
    int64_t late_cache; /* per process; each shard gets its share */
} tracetree_config_t;

/* A trace whose buffered span count reaches this is emitted at once; its
 * later spans are then late spans.  Bounds the memory of one runaway trace. */
#define TRACETREE_MAX_SPANS_PER_TRACE 100000u
/* Ready traces are packed into output batches of at most this many spans
 * (a bigger trace travels alone, never split). */
#define TRACETREE_MAX_SPANS_PER_BATCH 4096u

typedef uint64_t (*tracetree_clock_fn)(void);

/* ---- test hooks (tracetree.c) ------------------------------------------ */

/* Run the timer's work as if it fired at `now_ms` on the instance clock:
 * retry refused batches, emit traces whose wait or max_wait has passed. */
void tracetree__tick(void *instance, uint64_t now_ms);
/* Replace the clock (default am_now_mono_ms); consume reads it per call. */
void tracetree__set_clock(void *instance, tracetree_clock_fn now_ms);
void tracetree__set_max_spans_per_trace(void *instance, uint32_t max_spans);
size_t tracetree__buffered_traces(const void *instance);
size_t tracetree__buffered_spans(const void *instance);

/* ---- trace assembly (tracetree_assemble.c) ----------------------------- */

/* One buffered span: the three pointers a span ref needs, nothing more
 * (24 bytes; the span itself stays where the receiver decoded it). */
typedef struct tracetree_pending {
    am_pb_span_t *span;
    am_pb_resource_t *resource;
    am_pb_scope_t *scope;
} tracetree_pending_t;

/* Per-instance scratch reused by every assembly: a span-id hash and one
 * state byte per span.  Grows to the biggest trace seen; freed at destroy. */
typedef struct tracetree_scratch {
    uint32_t *slots;
    size_t n_slots;
    uint8_t *state;
    size_t n_state;
} tracetree_scratch_t;

/* Fill *trace from `pending` (n_spans > 0): span refs allocated in `arena`,
 * parent / first_child / next_sibling resolved by span id, roots listed
 * (true roots first, then orphans), parent cycles broken by turning one span
 * of each cycle into an orphan.  `late` flags every ref AM_SPANREF_LATE.
 * Writes no attribute (the caller adds cost.orphan once nothing can fail).
 * Returns 0 or AM_ENOMEM (then nothing in *trace is valid). */
int tracetree__assemble(am_arena_t *arena, tracetree_scratch_t *scratch, const uint8_t trace_id[16],
                        const tracetree_pending_t *pending, uint32_t n_spans, bool late,
                        uint64_t first_seen_ms, am_trace_t *trace);
void tracetree__scratch_free(tracetree_scratch_t *scratch);

/* ---- trace-id tables (tracetree_table.c) ------------------------------ */

/* Open addressing over uint32 values (indices into the caller's storage);
 * the 16-byte key of a value is read back through key_fn, so the table
 * itself is 4 bytes a slot.  Linear probing, deletion by backward shift (no
 * tombstones), load kept at or below one half. */
typedef const uint8_t *(*tracetree_key_fn)(const void *ctx, uint32_t value);
typedef struct tracetree_idtab {
    uint32_t *slots;
    uint32_t mask; /* capacity - 1; 0 before the first insert */
    uint32_t count;
} tracetree_idtab_t;

#define TRACETREE_ID_NONE UINT32_MAX

uint32_t tracetree__idtab_find(const tracetree_idtab_t *tab, const uint8_t id[16],
                               tracetree_key_fn key_fn, const void *ctx);
/* Insert a value whose key is not present yet.  0 or AM_ENOMEM. */
int tracetree__idtab_insert(tracetree_idtab_t *tab, uint32_t value, tracetree_key_fn key_fn,
                            const void *ctx);
void tracetree__idtab_remove(tracetree_idtab_t *tab, const uint8_t id[16], tracetree_key_fn key_fn,
                             const void *ctx);
void tracetree__idtab_free(tracetree_idtab_t *tab);

/* The bounded memory of emitted trace ids (FIFO: the oldest is forgotten
 * first).  Storage is allocated on the first add. */
typedef struct tracetree_late {
    uint8_t (*ids)[16];
    uint32_t cap; /* 0: late detection disabled */
    uint32_t count;
    uint32_t oldest;
    tracetree_idtab_t tab;
} tracetree_late_t;

bool tracetree__late_contains(const tracetree_late_t *late, const uint8_t id[16]);
/* Remember `id` (no-op when present or cap is 0).  0 or AM_ENOMEM. */
int tracetree__late_add(tracetree_late_t *late, const uint8_t id[16]);
void tracetree__late_free(tracetree_late_t *late);

/* True when the span names no parent (empty or all-zero parent_span_id). */
bool tracetree__is_root(const am_pb_span_t *span);

#endif
