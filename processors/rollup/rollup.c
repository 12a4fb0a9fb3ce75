/*
 * rollup.c - the `rollup` processor: costs go *up* the tree
 * (ARCHITECTURE.md §1, §6).
 *
 * For every span, cost_subtree = cost_self + the cost_subtree of each
 * child, in exact int64 nano-units (am_money_t) taken from the span refs
 * that ratecard filled; the `cost.self` double attribute is never read, so
 * no rounding ever accumulates.  Doubles appear only when the results are
 * written out: `cost.subtree` on every span and `cost.trace.total` on one
 * span per trace, each am_money_to_double() of the exact value.
 *
 * Order: one pre-order pass per root (iterative, with the parent links; a
 * chain may be 10^5 deep) records the visit order; walking that order
 * backwards sees every child before its parent, so adding each span's
 * subtree into its parent's is a complete bottom-up sum with no stack.
 * Spans the walk cannot reach (an index with a cycle that tracetree did not
 * build) keep cost_subtree = cost_self and add nowhere, so a malformed
 * index costs accuracy, never a hang.  Sums saturate at the int64 range
 * instead of wrapping (9.2 billion currency units: a bug, logged).
 *
 * Where cost.trace.total goes (decided here, see ARCHITECTURE.md §6): on
 * exactly one span per emitted trace, its first root (trace->roots[0]).
 * Roots are listed true roots first, so that is the true root whenever one
 * arrived; when the root never came it is the first orphan.  The value is
 * the whole emitted trace: the sum of every root's and every orphan's
 * subtree, i.e. of every span's cost_self.  One carrier per trace means that
 * summing cost.trace.total over spans counts every trace exactly once;
 * orphans carry their own cost.subtree and cost.orphan=true instead.  A
 * late emission (AM_SPANREF_LATE) carries the total of its late spans only,
 * so the totals of a trace's emissions add up to the whole trace.
 *
 * A batch without a tree index passes unchanged.
 */
#include <string.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_log.h"

typedef struct rollup_config {
    int unused; /* no options */
} rollup_config_t;

typedef struct rollup {
    char *id;
    am_consumer_t *next;
    uint32_t *order; /* scratch: visit order */
    uint8_t *reached;
    size_t cap;
} rollup_t;

static const am_option_t rollup_options[] = {
    AM_OPT_END,
};

static am_money_t add_saturated(am_money_t a, am_money_t b, bool *overflow)
{
    am_money_t sum;
    if (__builtin_add_overflow(a, b, &sum)) {
        *overflow = true;
        return b > 0 ? INT64_MAX : INT64_MIN;
    }
    return sum;
}

static int reserve(rollup_t *rollup, size_t n_spans)
{
    if (rollup->cap >= n_spans) {
        return 0;
    }
    size_t cap = rollup->cap == 0 ? 256 : rollup->cap;
    while (cap < n_spans) {
        cap *= 2;
    }
    uint32_t *order = am_realloc(rollup->order, cap * sizeof(*order));
    if (order == NULL) {
        return AM_ENOMEM;
    }
    rollup->order = order;
    uint8_t *reached = am_realloc(rollup->reached, cap);
    if (reached == NULL) {
        return AM_ENOMEM;
    }
    rollup->reached = reached;
    rollup->cap = cap;
    return 0;
}

/* Append the subtree of `top` to order[] in pre-order.  Stops (returns
 * false) rather than loop when the index revisits a span. */
static bool record_subtree(rollup_t *rollup, const am_trace_t *trace, uint32_t top,
                           uint32_t *n_order)
{
    const am_span_ref_t *spans = trace->spans;
    uint32_t node = top;
    for (;;) {
        if (node >= trace->n_spans || rollup->reached[node]) {
            return false;
        }
        rollup->reached[node] = 1;
        rollup->order[(*n_order)++] = node;
        if (spans[node].first_child != AM_SPAN_NONE) {
            node = spans[node].first_child;
            continue;
        }
        while (node != top && spans[node].next_sibling == AM_SPAN_NONE) {
            node = spans[node].parent;
            if (node >= trace->n_spans) {
                return false;
            }
        }
        if (node == top) {
            return true;
        }
        node = spans[node].next_sibling;
    }
}

/* Exact sums into ref->cost_subtree; returns the trace total. */
static am_money_t rollup_sums(rollup_t *rollup, am_trace_t *trace, bool *overflow, bool *malformed)
{
    am_span_ref_t *spans = trace->spans;
    memset(rollup->reached, 0, trace->n_spans);
    uint32_t n_order = 0;
    for (uint32_t r = 0; r < trace->n_roots; r++) {
        if (!record_subtree(rollup, trace, trace->roots[r], &n_order)) {
            *malformed = true;
        }
    }
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        spans[i].cost_subtree = spans[i].cost_self;
    }
    for (uint32_t k = n_order; k-- > 0;) {
        uint32_t node = rollup->order[k];
        uint32_t parent = spans[node].parent;
        if (parent != AM_SPAN_NONE && parent < trace->n_spans && rollup->reached[parent] &&
            !(spans[node].flags & AM_SPANREF_ORPHAN)) {
            spans[parent].cost_subtree =
                add_saturated(spans[parent].cost_subtree, spans[node].cost_subtree, overflow);
        }
    }
    /* Every span exactly once: the sum of all root subtrees, plus any span
     * a malformed index left unreached. */
    am_money_t total = 0;
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        total = add_saturated(total, spans[i].cost_self, overflow);
    }
    return total;
}

static am_status_t rollup_consume(void *instance, am_batch_t *batch)
{
    rollup_t *rollup = instance;
    bool overflow = false, malformed = false, nomem = false;
    for (size_t t = 0; batch->trace_index != NULL && t < batch->n_traces; t++) {
        am_trace_t *trace = &batch->trace_index[t];
        if (trace->n_spans == 0) {
            continue;
        }
        if (reserve(rollup, trace->n_spans) != 0) {
            return AM_RETRY;
        }
        am_money_t total = rollup_sums(rollup, trace, &overflow, &malformed);
        for (uint32_t i = 0; i < trace->n_spans; i++) {
            am_span_ref_t *ref = &trace->spans[i];
            if (am_span_set_double(batch->arena, ref->span, "cost.subtree",
                                   am_money_to_double(ref->cost_subtree)) != 0) {
                nomem = true;
            }
        }
        if (trace->n_roots > 0 && trace->roots[0] < trace->n_spans &&
            am_span_set_double(batch->arena, trace->spans[trace->roots[0]].span, "cost.trace.total",
                               am_money_to_double(total)) != 0) {
            nomem = true;
        }
    }
    if (overflow) {
        AM_WARN(rollup->id, "cost sum out of the int64 nano-unit range; saturated");
    }
    if (malformed) {
        AM_WARN(rollup->id, "trace index revisits spans; some subtrees were not summed");
    }
    if (nomem) {
        AM_WARN(rollup->id, "out of memory writing cost attributes");
    }
    return am_consume(rollup->next, batch);
}

static int rollup_create(const am_create_params_t *params, void **instance)
{
    rollup_t *rollup = am_calloc(1, sizeof(*rollup));
    if (rollup == NULL ||
        (rollup->id = am_strdup(params->id != NULL ? params->id : "rollup")) == NULL) {
        am_free(rollup);
        return AM_ENOMEM;
    }
    rollup->next = params->next;
    *instance = rollup;
    return 0;
}

static void rollup_destroy(void *instance)
{
    rollup_t *rollup = instance;
    am_free(rollup->order);
    am_free(rollup->reached);
    am_free(rollup->id);
    am_free(rollup);
}

const am_component_ops_t am_processor_rollup_ops = {
    .type = "rollup",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Sums exact costs up each trace tree: cost.subtree on every span, "
           "cost.trace.total per trace.",
    .options = rollup_options,
    .config_size = sizeof(rollup_config_t),
    .create = rollup_create,
    .consume = rollup_consume,
    .destroy = rollup_destroy,
};
