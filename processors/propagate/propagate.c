/*
 * propagate.c - the `propagate` processor: attribution keys go *down* the
 * tree (ARCHITECTURE.md §1).  Instrumentations set session, user, tenant or
 * agent name near the root; every LLM and tool span below needs them to be
 * priced, budgeted and reported per key.
 *
 * Rules, per trace of the tree index built by tracetree:
 *
 * - Each root's subtree is walked top-down in pre-order, iteratively with
 *   the parent links (depth may be 10^5; no recursion, no stack).  Since a
 *   parent is finished before its children, "the nearest ancestor that has
 *   the attribute" is simply the parent's span attribute after its own
 *   visit.
 * - For each configured attribute, a span that lacks it (absent or empty
 *   string) takes the parent's value; with `overwrite: true` the parent's
 *   value replaces the span's own.  When no ancestor has it, the span falls
 *   back to its own resource (so a root takes it from its resource, and so
 *   does a child running in another service whose resource has it).  An
 *   ancestor's value wins over a descendant's *resource* value: span
 *   attributes win over resource attributes (§5), and after propagation the
 *   ancestor's value is a span attribute of the parent.
 * - The canonical `session.id` and `user.id` are filled from the §5
 *   fallbacks when missing: first from the span's own aliases (its own
 *   evidence is nearer than anything inherited), then by propagation (when
 *   configured), then from the resource (canonical key, then aliases).
 *   Because this happens during the walk, a `gen_ai.conversation.id` on the
 *   root becomes `session.id` on the root and is then inherited below it.
 * - Values are copied by pointer (am_span_set_value): the AnyValue lives in
 *   an arena the batch holds.  Keys are copied into the batch arena once
 *   per batch, since a batch may outlive this instance's config (reload).
 * - Late spans.  After each trace, the values of its first root are copied
 *   into a bounded cache (propagate_cache.c).  Roots of a trace flagged
 *   AM_SPANREF_LATE, and orphan roots of a trace seen before, take the
 *   cached values as if from a parent, so a late span still gets its
 *   session and tenant.  The cache belongs to the shard, as the trace does.
 *
 * A batch without a tree index (no tracetree before us) passes unchanged.
 */
#include <stdio.h>
#include <string.h>

#include "am_attr.h"
#include "am_log.h"
#include "propagate_internal.h"

typedef struct propagate {
    char *id;
    am_consumer_t *next;
    bool overwrite;
    char **keys; /* configured attributes (malloc'd copies) */
    uint32_t n_keys;
    propagate_cache_t cache;
    const am_pb_anyvalue_t **root_values; /* scratch: n_keys */
} propagate_t;

/* Per-batch view: keys as copies in the batch arena. */
typedef struct walk_ctx {
    propagate_t *prop;
    am_arena_t *arena;
    const char **keys;
    bool failed; /* an attribute could not be written (ENOMEM) */
} walk_ctx_t;

static const am_option_t propagate_options[] = {
    {.name = "attributes",
     .type = AM_OPT_STRLIST,
     .def = "[session.id, user.id, tenant.id, gen_ai.agent.name]",
     .offset = offsetof(propagate_config_t, attributes),
     .doc = "Attributes copied from the nearest ancestor (span, then resource) to each "
            "descendant that lacks them."},
    {.name = "overwrite",
     .type = AM_OPT_BOOL,
     .def = "false",
     .offset = offsetof(propagate_config_t, overwrite),
     .doc = "Ancestors win: replace a descendant's own value with the inherited one."},
    {.name = "late_cache",
     .type = AM_OPT_INT,
     .def = "100000",
     .offset = offsetof(propagate_config_t, late_cache),
     .min = 0,
     .max = 1e9,
     .doc = "Emitted traces (per process) whose propagated values are kept for their late "
            "spans; 0 disables."},
    AM_OPT_END,
};

/* §5: canonical key first, then its aliases; first non-empty wins. */
static const char *const session_keys[] = {
    "session.id",
    "gen_ai.conversation.id",
    "langfuse.session.id",
    "traceloop.association.properties.session_id",
    NULL,
};
static const char *const user_keys[] = {"user.id", "enduser.id", "langfuse.user.id", NULL};
static const char *const *const canonical_fields[] = {session_keys, user_keys};

/* The value of key when present and not an empty string or unset. */
static const am_pb_anyvalue_t *usable(am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                                      const char *key)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL || v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE__NOT_SET) {
        return NULL;
    }
    if (v->value_case == AM_PB_VALUE(STRING_VALUE) &&
        (v->string_value == NULL || v->string_value[0] == '\0')) {
        return NULL;
    }
    return v;
}

static const am_pb_anyvalue_t *span_value(const am_pb_span_t *span, const char *key)
{
    return usable(span->attributes, span->n_attributes, key);
}

static const am_pb_anyvalue_t *resource_value(const am_pb_resource_t *resource, const char *key)
{
    return resource != NULL ? usable(resource->attributes, resource->n_attributes, key) : NULL;
}

static bool same_value(const am_pb_anyvalue_t *a, const am_pb_anyvalue_t *b)
{
    if (a == b) {
        return true;
    }
    if (a->value_case != b->value_case) {
        return false;
    }
    switch (a->value_case) {
    case AM_PB_VALUE(STRING_VALUE):
        return strcmp(a->string_value, b->string_value) == 0;
    case AM_PB_VALUE(INT_VALUE):
        return a->int_value == b->int_value;
    case AM_PB_VALUE(BOOL_VALUE):
        return a->bool_value == b->bool_value;
    case AM_PB_VALUE(DOUBLE_VALUE):
        return a->double_value == b->double_value;
    default:
        return false;
    }
}

static bool same_cached(const am_pb_anyvalue_t *a, const propagate_value_t *c)
{
    switch (c->type) {
    case PROPAGATE_VALUE_STRING:
        return a->value_case == AM_PB_VALUE(STRING_VALUE) && strcmp(a->string_value, c->u.str) == 0;
    case PROPAGATE_VALUE_INT:
        return a->value_case == AM_PB_VALUE(INT_VALUE) && a->int_value == c->u.i;
    case PROPAGATE_VALUE_DOUBLE:
        return a->value_case == AM_PB_VALUE(DOUBLE_VALUE) && a->double_value == c->u.d;
    case PROPAGATE_VALUE_BOOL:
        return a->value_case == AM_PB_VALUE(BOOL_VALUE) && a->bool_value == c->u.b;
    default:
        return false;
    }
}

static void set_value(walk_ctx_t *ctx, am_pb_span_t *span, const char *key,
                      const am_pb_anyvalue_t *value)
{
    if (am_span_set_value(ctx->arena, span, key, value) != 0) {
        ctx->failed = true;
    }
}

static void set_cached(walk_ctx_t *ctx, am_pb_span_t *span, const char *key,
                       const propagate_value_t *value)
{
    int rc = 0;
    switch (value->type) {
    case PROPAGATE_VALUE_STRING:
        rc = am_span_set_str(ctx->arena, span, key, value->u.str);
        break;
    case PROPAGATE_VALUE_INT:
        rc = am_span_set_int(ctx->arena, span, key, value->u.i);
        break;
    case PROPAGATE_VALUE_DOUBLE:
        rc = am_span_set_double(ctx->arena, span, key, value->u.d);
        break;
    case PROPAGATE_VALUE_BOOL:
        rc = am_span_set_bool(ctx->arena, span, key, value->u.b);
        break;
    default:
        break;
    }
    if (rc != 0) {
        ctx->failed = true;
    }
}

/* One span: own aliases, then inheritance, then own resource. `parent` is
 * the parent span (already visited) or NULL; `cached` stands in for a
 * parent for roots of late traces (may be NULL). */
static void visit_span(walk_ctx_t *ctx, am_span_ref_t *ref, const am_pb_span_t *parent,
                       const propagate_value_t *cached)
{
    am_pb_span_t *span = ref->span;
    bool overwrite = ctx->prop->overwrite;
    am_attr_scope_begin_known(span, &ref->known, parent, ref->resource);
    for (size_t f = 0; f < AM_ARRAY_SIZE(canonical_fields); f++) {
        const char *const *keys = canonical_fields[f];
        if (span_value(span, keys[0]) != NULL) {
            continue;
        }
        for (size_t k = 1; keys[k] != NULL; k++) {
            const am_pb_anyvalue_t *alias = span_value(span, keys[k]);
            if (alias != NULL) {
                set_value(ctx, span, keys[0], alias);
                break;
            }
        }
    }
    for (uint32_t k = 0; k < ctx->prop->n_keys; k++) {
        const char *key = ctx->keys[k];
        const am_pb_anyvalue_t *own = span_value(span, key);
        if (parent != NULL) {
            const am_pb_anyvalue_t *inherited = span_value(parent, key);
            if (inherited != NULL) {
                if (own == NULL || (overwrite && !same_value(own, inherited))) {
                    set_value(ctx, span, key, inherited);
                }
                continue;
            }
        } else if (cached != NULL && cached[k].type != PROPAGATE_VALUE_NONE) {
            if (own == NULL || (overwrite && !same_cached(own, &cached[k]))) {
                set_cached(ctx, span, key, &cached[k]);
            }
            continue;
        }
        if (own == NULL) {
            const am_pb_anyvalue_t *from_resource = resource_value(ref->resource, key);
            if (from_resource != NULL) {
                set_value(ctx, span, key, from_resource);
            }
        }
    }
    for (size_t f = 0; f < AM_ARRAY_SIZE(canonical_fields); f++) {
        const char *const *keys = canonical_fields[f];
        if (span_value(span, keys[0]) != NULL) {
            continue;
        }
        for (size_t k = 0; keys[k] != NULL; k++) {
            const am_pb_anyvalue_t *fallback = resource_value(ref->resource, keys[k]);
            if (fallback != NULL) {
                set_value(ctx, span, keys[0], fallback);
                break;
            }
        }
    }
    am_attr_scope_end();
}

/* Pre-order over the subtree of `top` with the parent links.  Returns the
 * number of spans visited, or stops past `budget` (a malformed index that
 * loops) and returns budget + 1. */
static uint32_t walk_subtree(walk_ctx_t *ctx, const am_trace_t *trace, uint32_t top,
                             const propagate_value_t *cached, uint32_t budget)
{
    am_span_ref_t *spans = trace->spans;
    uint32_t visited = 0;
    uint32_t node = top;
    for (;;) {
        if (++visited > budget) {
            return visited;
        }
        am_span_ref_t *ref = &spans[node];
        const am_pb_span_t *parent =
            node != top && ref->parent != AM_SPAN_NONE ? spans[ref->parent].span : NULL;
        visit_span(ctx, ref, parent, node == top ? cached : NULL);
        if (ref->first_child != AM_SPAN_NONE) {
            node = ref->first_child;
            continue;
        }
        while (node != top && spans[node].next_sibling == AM_SPAN_NONE) {
            node = spans[node].parent;
        }
        if (node == top) {
            return visited;
        }
        node = spans[node].next_sibling;
    }
}

static void propagate_trace(walk_ctx_t *ctx, const am_trace_t *trace)
{
    propagate_t *prop = ctx->prop;
    if (trace->n_spans == 0 || trace->n_roots == 0) {
        return;
    }
    bool late = (trace->flags & AM_SPANREF_LATE) != 0;
    bool orphans = (trace->spans[trace->roots[trace->n_roots - 1]].flags & AM_SPANREF_ORPHAN) != 0;
    const propagate_value_t *cached =
        late || orphans ? propagate__cache_find(&prop->cache, trace->trace_id) : NULL;
    uint32_t budget = trace->n_spans;
    for (uint32_t r = 0; r < trace->n_roots; r++) {
        uint32_t root = trace->roots[r];
        if (root >= trace->n_spans) {
            continue;
        }
        bool inherits = late || (trace->spans[root].flags & AM_SPANREF_ORPHAN) != 0;
        uint32_t visited = walk_subtree(ctx, trace, root, inherits ? cached : NULL, budget);
        if (visited > budget) {
            AM_WARN(prop->id, "trace index loops (more visits than its %u spans); stopped",
                    trace->n_spans);
            return;
        }
        budget -= visited;
    }
    if (prop->cache.cap == 0) {
        return;
    }
    const am_pb_span_t *first_root = trace->spans[trace->roots[0]].span;
    for (uint32_t k = 0; k < prop->n_keys; k++) {
        prop->root_values[k] = span_value(first_root, ctx->keys[k]);
    }
    /* A full trace refreshes the entry; a late one only fills a gap. */
    if (propagate__cache_put(&prop->cache, trace->trace_id, prop->root_values, !late) != 0) {
        AM_WARN(prop->id, "out of memory caching a trace's attributes for its late spans");
    }
}

static am_status_t propagate_consume(void *instance, am_batch_t *batch)
{
    propagate_t *prop = instance;
    if (batch->trace_index == NULL || batch->n_traces == 0) {
        return am_consume(prop->next, batch);
    }
    walk_ctx_t ctx = {.prop = prop, .arena = batch->arena};
    ctx.keys = am_arena_alloc(batch->arena, (prop->n_keys + 1) * sizeof(*ctx.keys));
    if (ctx.keys == NULL) {
        return AM_RETRY;
    }
    for (uint32_t k = 0; k < prop->n_keys; k++) {
        ctx.keys[k] = am_arena_strdup(batch->arena, prop->keys[k]);
        if (ctx.keys[k] == NULL) {
            return AM_RETRY;
        }
    }
    for (size_t t = 0; t < batch->n_traces; t++) {
        propagate_trace(&ctx, &batch->trace_index[t]);
    }
    if (ctx.failed) {
        AM_WARN(prop->id, "out of memory: some attributes were not propagated");
    }
    return am_consume(prop->next, batch);
}

static void propagate_destroy(void *instance)
{
    propagate_t *prop = instance;
    for (uint32_t k = 0; k < prop->n_keys; k++) {
        am_free(prop->keys[k]);
    }
    am_free(prop->keys);
    am_free(prop->root_values);
    propagate__cache_free(&prop->cache);
    am_free(prop->id);
    am_free(prop);
}

static int propagate_create(const am_create_params_t *params, void **instance)
{
    const propagate_config_t *cfg = params->config;
    propagate_t *prop = am_calloc(1, sizeof(*prop));
    if (prop == NULL) {
        return AM_ENOMEM;
    }
    prop->id = am_strdup(params->id != NULL ? params->id : "propagate");
    size_t n_keys = cfg->attributes.count;
    prop->keys = am_calloc(n_keys + 1, sizeof(*prop->keys));
    prop->root_values = am_calloc(n_keys + 1, sizeof(*prop->root_values));
    if (prop->id == NULL || prop->keys == NULL || prop->root_values == NULL) {
        goto nomem;
    }
    for (size_t k = 0; k < n_keys; k++) {
        const char *key = cfg->attributes.items[k];
        if (key == NULL || key[0] == '\0') {
            continue;
        }
        prop->keys[prop->n_keys] = am_strdup(key);
        if (prop->keys[prop->n_keys] == NULL) {
            goto nomem;
        }
        prop->n_keys++;
    }
    prop->next = params->next;
    prop->overwrite = cfg->overwrite;
    int64_t shards = params->n_shards > 0 ? params->n_shards : 1;
    int64_t share = cfg->late_cache > 0 ? (cfg->late_cache + shards - 1) / shards : 0;
    prop->cache.cap = (uint32_t)AM_MIN(share, (int64_t)(UINT32_MAX / 4));
    prop->cache.n_values = prop->n_keys;
    *instance = prop;
    return 0;
nomem:
    propagate_destroy(prop);
    return AM_ENOMEM;
}

const am_component_ops_t am_processor_propagate_ops = {
    .type = "propagate",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Copies attribution attributes (session, user, tenant, agent) down each trace tree.",
    .options = propagate_options,
    .config_size = sizeof(propagate_config_t),
    .create = propagate_create,
    .consume = propagate_consume,
    .destroy = propagate_destroy,
};
