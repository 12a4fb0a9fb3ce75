/*
 * am_batch.h - what flows through a pipeline.
 *
 * A batch is OTLP-shaped (an ExportTraceServiceRequest view over spans) and,
 * after the `tracetree` processor, also indexed as whole traces: each trace is
 * an array of span references with parent -> children links, so processors
 * walk trees instead of searching.  Beside the spans a batch carries cost
 * events (session summaries, budget alerts, anomalies) and, in metrics
 * pipelines, a metric set.
 *
 * Memory: the batch owns one writable arena (`arena`, where processors
 * allocate what they add) and holds references to every arena its spans were
 * decoded into.  Spans are never copied between arenas; a batch that regroups
 * spans from several requests just takes a reference on each request arena.
 *
 * Reference counting: am_batch_new() returns one reference.  A consumer
 * *borrows* the batch it is given (ARCHITECTURE.md §10): to keep it past the
 * call (queues, tracetree buffering) it takes its own reference.  A consumer
 * that mutates a batch someone else also holds must work on am_batch_clone()
 * (the fan-out does this for consumers declared as mutating).
 */
#ifndef AM_BATCH_H
#define AM_BATCH_H

#include <stdatomic.h>

#include "am_arena.h"
#include "am_attr.h"
#include "am_otlp.h"

typedef enum am_signal {
    AM_SIGNAL_TRACES = 1u << 0,
    AM_SIGNAL_METRICS = 1u << 1,
    AM_SIGNAL_LOGS = 1u << 2,
} am_signal_t;

#define AM_SPAN_NONE UINT32_MAX

enum {
    AM_SPANREF_ORPHAN = 1u << 0, /* parent never arrived: a subtree root */
    AM_SPANREF_LATE = 1u << 1,   /* arrived after its trace was emitted */
};

typedef struct am_span_ref {
    am_pb_span_t *span;
    am_pb_resource_t *resource; /* may be NULL */
    am_pb_scope_t *scope;       /* may be NULL */
    uint32_t parent;            /* index into am_trace_t.spans or AM_SPAN_NONE */
    uint32_t first_child;       /* AM_SPAN_NONE when a leaf */
    uint32_t next_sibling;      /* AM_SPAN_NONE when last */
    uint32_t flags;             /* AM_SPANREF_* */
    am_money_t cost_self;       /* set by ratecard, exact */
    am_money_t cost_subtree;    /* set by rollup, exact */
    am_attr_known_t known;      /* known keys of span->attributes (am_attr.h); zeroed */
} am_span_ref_t;

typedef struct am_trace {
    uint8_t trace_id[16];
    am_span_ref_t *spans;
    uint32_t n_spans;
    uint32_t *roots; /* true roots first, then orphans */
    uint32_t n_roots;
    uint32_t flags;  /* AM_SPANREF_LATE when this holds late spans only */
    uint64_t first_seen_ms;
} am_trace_t;

/* A cost event (ARCHITECTURE.md §9).  `json` is the complete event object
 * exported to logs pipelines; the typed fields let costmetrics derive metrics
 * without parsing JSON.  All pointers live in the batch's arenas. */
typedef struct am_event {
    const char *kind;  /* "session.summary", "budget.threshold", "anomaly.detected" */
    const char *scope; /* scope attribute, e.g. "session.id" */
    const char *key;   /* scope key: the Kafka message key */
    const char *name;  /* budget name, anomaly kind; NULL for summaries */
    const char *json;  /* NUL-terminated JSON object */
    size_t json_len;
    uint64_t time_unix_nano;
    am_money_t amount; /* session total / budget spent / anomaly rate */
    am_money_t limit;  /* budget limit */
    double threshold;  /* budget threshold crossed */
    const char *currency;
    am_pb_keyvalue_t **attrs; /* attribution (tenant.id, gen_ai.agent.name, ...) */
    size_t n_attrs;
} am_event_t;

struct am_metric_set; /* defined by the metrics code (costmetrics) */

typedef struct am_batch {
    atomic_int refcount;
    unsigned signal;    /* AM_SIGNAL_* this batch carries */
    am_arena_t *arena;  /* writable arena owned by this batch */
    am_arena_t **held;  /* other arenas this batch holds a reference to */
    size_t n_held, cap_held;
    am_pb_export_req_t *traces; /* OTLP view of the spans, may be NULL */
    size_t span_count;
    am_trace_t *trace_index; /* after tracetree; NULL before */
    size_t n_traces;
    am_event_t *events;
    size_t n_events, cap_events;
    struct am_metric_set *metrics;
    void (*metrics_free)(struct am_metric_set *metrics);
    uint64_t received_unix_nano;
} am_batch_t;

/* A new empty batch with a fresh writable arena; NULL on ENOMEM. */
am_batch_t *am_batch_new(unsigned signal);
/* A batch whose writable arena is `arena` (the reference is taken over). */
am_batch_t *am_batch_new_with_arena(unsigned signal, am_arena_t *arena);
am_batch_t *am_batch_ref(am_batch_t *batch);
void am_batch_unref(am_batch_t *batch);
static inline bool am_batch_is_shared(am_batch_t *batch)
{
    return atomic_load(&batch->refcount) > 1;
}

/* Take a reference on `arena` for the life of the batch (no-op if held). */
int am_batch_hold_arena(am_batch_t *batch, am_arena_t *arena);
/* Append a copy of *event (the struct; pointed-to data must already live in
 * an arena the batch holds). */
int am_batch_add_event(am_batch_t *batch, const am_event_t *event);

/* Count spans in batch->traces and store it in span_count. */
size_t am_batch_count_spans(am_batch_t *batch);

/* A deep, independent copy (spans re-encoded into a new arena, events and
 * the trace index rebuilt).  NULL on ENOMEM. */
am_batch_t *am_batch_clone(am_batch_t *batch);

/* Visit every span: through the trace index when present (ref non-NULL),
 * else through the OTLP view (ref NULL).  Stop early when fn returns non-0
 * and return that value.  Each call runs in an attribute scope of its span and
 * resource (am_attr_scope_begin, am_attr.h). */
typedef int (*am_span_visit_fn)(am_batch_t *batch, am_pb_span_t *span,
                                am_pb_resource_t *resource, am_pb_scope_t *scope,
                                am_span_ref_t *ref, void *user_data);
int am_batch_for_each_span(am_batch_t *batch, am_span_visit_fn fn, void *user_data);

/* Rebuild batch->traces (the OTLP view) from batch->trace_index, grouping
 * spans by (resource, scope) pointer.  Used by tracetree after regrouping. */
int am_batch_build_otlp_view(am_batch_t *batch);

#endif
