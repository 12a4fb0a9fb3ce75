/*
 * session.c - the `session` processor: cost per agent session and per action
 * (ARCHITECTURE.md §8, §9).
 *
 * A session is many traces, and traces of one session land on any shard
 * (shards are keyed by trace id).  Each session key therefore has one owning
 * shard, am_shard_for_key(key, n_shards), and only the instance on that
 * shard touches the session's state: no lock on the session itself.
 *
 *   trace shard                               owning shard
 *   consume(batch)                            apply(summary)
 *     per trace: summarise per session key      merge into the session,
 *     (cost by type, tokens, spans, actions,    move to the LRU tail, evict
 *     models, attribution, start/end)           the least recently active
 *     reserve the running total  ----------->   session past max_sessions
 *     annotate roots, post the summary        tick: close idle sessions,
 *     pass the batch on                       emit session.summary events
 *
 * Running values on roots (cost.session.total / cost.session.traces): the
 * trace shard adds its trace to a small shared "running" map (key -> total,
 * traces, hand-offs) under the group mutex and annotates its roots with the
 * result.  So the value is exact whatever the order, even when two traces
 * of a session finish at once on different shards.  The owner closes a
 * session only when no hand-off is in flight (running hand-offs == hand-offs
 * applied); it then removes the running entry, so the next trace starts a
 * new session from zero.  The lock is taken once per (trace, session key).
 *
 * Instances of one processor id find each other through a registry keyed
 * by (service, id) - a "group" - filled at create and read-only after
 * start.  At shutdown the last instance of a group closes (or, with a
 * state_file, persists) every instance's sessions by running a function on
 * each owner's shard after the hand-offs already queued there: shards are
 * shut down one after another, and a later shard's tracetree still flushes
 * traces into sessions owned by an earlier one.
 *
 * Actions: `actions:` is a list of {name, match: {attr: value | [values] |
 * "re:<ERE>"}, span_name: value | "re:<ERE>"}; all conditions must hold and
 * the first matching action wins.  A matched span gets `cost.action`; it
 * succeeds unless its status is ERROR; its cost is its cost_subtree, so
 * nested actions (an agent step around tool calls) each carry their whole
 * subtree.  cost_per_successful_action = session total / successful actions
 * of every name, rounded half away from zero to the nano-unit (null when no
 * action succeeded).
 *
 * state_file: when set, open sessions are written (temp + fsync + rename)
 * every state_interval and at shutdown instead of being closed there, and
 * read back at start, so a restart continues them.  A corrupt file is
 * reported, renamed to <file>.corrupt-<unix seconds> and ignored.
 *
 * Config reload (SIGHUP with a changed config builds - parses and
 * validates - a new service, shuts the old one down, then starts the new
 * one, whose instances are created at start): groups are keyed by (service,
 * id), so the new service gets new groups.  Shutdown must tell a reload
 * (keep the sessions open) from the end of the process (close them with a
 * summary): the service says so (am_service_reload_successor(): the service
 * that replaces this one, set by the SIGHUP path before the old service is
 * shut down).  When the successor also runs a session processor with this
 * id, open sessions are not closed: every owner snapshots them exactly as
 * for state_file and the joined text goes into a process-global handoff slot
 * keyed by the processor id, under a mutex.  The first start of a group of
 * that id takes the slot and continues the sessions with their running
 * totals, idle clocks and hand-off counts.  A readable state_file, when
 * configured, is the source of truth (the old group just wrote it); the
 * handoff covers reloads without one.  Otherwise shutdown closes sessions
 * with their summaries.  Slots never taken are freed at exit.
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_event_json.h"
#include "am_log.h"
#include "am_statefile.h"
#include "am_selfmetrics.h"
#include "am_service.h"
#include "am_shard.h"
#include "processors/session/session_internal.h"

#define COMP "session"
#define MAX_ATTRS 16
#define MAX_MODELS 32
#define MAX_KEYS_PER_TRACE 8
#define STATE_VERSION 1

enum {
    PART_INPUT,
    PART_OUTPUT,
    PART_CACHE_READ,
    PART_CACHE_WRITE,
    PART_REASONING,
    PART_TOOL,
    PART_COMPUTE,
    N_PARTS
};
static const char *const part_attrs[N_PARTS] = {
    "cost.input",     "cost.output", "cost.cache_read", "cost.cache_write",
    "cost.reasoning", "cost.tool",   "cost.compute"};
static const char *const part_names[N_PARTS] = {"input",     "output", "cache_read", "cache_write",
                                                "reasoning", "tool",   "compute"};

enum { TOK_INPUT, TOK_OUTPUT, TOK_CACHE_READ, TOK_CACHE_WRITE, TOK_REASONING, N_TOKENS };
static const char *const token_names[N_TOKENS] = {"input", "output", "cache_read", "cache_write",
                                                  "reasoning"};
static const char *const tok_input_keys[] = {
    "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
    "ai.usage.inputTokens",      "ai.usage.promptTokens",      NULL};
static const char *const tok_output_keys[] = {
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
    "ai.usage.outputTokens",      "ai.usage.completionTokens",      NULL};
static const char *const tok_cache_read_keys[] = {
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read", NULL};
static const char *const tok_cache_write_keys[] = {
    "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write", NULL};
static const char *const tok_reasoning_keys[] = {
    "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning", NULL};
static const char *const *const token_keys[N_TOKENS] = {
    tok_input_keys, tok_output_keys, tok_cache_read_keys, tok_cache_write_keys, tok_reasoning_keys};

static const char *const session_keys[] = {"session.id", "gen_ai.conversation.id",
                                           "langfuse.session.id",
                                           "traceloop.association.properties.session_id", NULL};
static const char *const user_keys[] = {"user.id", "enduser.id", "langfuse.user.id", NULL};
static const char *const model_keys[] = {
    "gen_ai.response.model", "gen_ai.request.model", "llm.response.model_name",
    "llm.model_name",        "ai.model.id",          NULL};
static const char *const operation_keys[] = {"gen_ai.operation.name", "openinference.span.kind",
                                             "traceloop.span.kind", "llm.request.type", NULL};

/* ---- options ---------------------------------------------------------- */

typedef struct session_config {
    int64_t idle_timeout_ms;
    int64_t max_sessions;
    const am_node_t *actions;
    am_strlist_t attributes;
    char *state_file;
    int64_t state_interval_ms;
} session_config_t;

static const am_option_t session_options[] = {
    {.name = "idle_timeout",
     .type = AM_OPT_DURATION,
     .def = "30m",
     .offset = offsetof(session_config_t, idle_timeout_ms),
     .min = 1,
     .max = 1e12,
     .doc = "A session closes (session.summary) after this long without spans."},
    {.name = "max_sessions",
     .type = AM_OPT_INT,
     .def = "100000",
     .offset = offsetof(session_config_t, max_sessions),
     .min = 1,
     .max = 1e9,
     .doc = "Open sessions per shard; past it the least recently active closes (counted)."},
    AM_OPT("actions", AM_OPT_NODE, NULL, session_config_t, actions,
           "List of {name, match: {attr: value | [values] | \"re:...\"}, span_name}; default "
           "tool_call (execute_tool) and agent_step (invoke_agent)."),
    AM_OPT("attributes", AM_OPT_STRLIST, "[user.id, tenant.id, gen_ai.agent.name]",
           session_config_t, attributes,
           "Attribution attributes copied into session.summary (first value seen)."),
    AM_OPT("state_file", AM_OPT_STRING, NULL, session_config_t, state_file,
           "Persist open sessions here (and keep them open across restarts)."),
    {.name = "state_interval",
     .type = AM_OPT_DURATION,
     .def = "30s",
     .offset = offsetof(session_config_t, state_interval_ms),
     .min = 1,
     .max = 1e12,
     .doc = "How often state_file is rewritten."},
    AM_OPT_END,
};

/* ---- actions ---------------------------------------------------------- */

typedef struct cond {
    char *attr;    /* NULL: span name */
    char **values; /* equals any of */
    size_t n_values;
    regex_t re;
    bool has_re;
} cond_t;

typedef struct action {
    char *name;
    cond_t *conds;
    size_t n_conds;
} action_t;

static void actions_free(action_t *actions, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t c = 0; c < actions[i].n_conds; c++) {
            cond_t *cond = &actions[i].conds[c];
            am_free(cond->attr);
            for (size_t v = 0; v < cond->n_values; v++) {
                am_free(cond->values[v]);
            }
            am_free(cond->values);
            if (cond->has_re) {
                regfree(&cond->re);
            }
        }
        am_free(actions[i].conds);
        am_free(actions[i].name);
    }
    am_free(actions);
}

static int cond_parse(cond_t *cond, const char *attr, const am_node_t *value, const char *where,
                      am_errors_t *errs)
{
    memset(cond, 0, sizeof(*cond));
    if (attr != NULL && (cond->attr = am_strdup(attr)) == NULL) {
        return AM_ENOMEM;
    }
    if (value->kind == AM_NODE_SCALAR && strncmp(value->str, "re:", 3) == 0) {
        if (regcomp(&cond->re, value->str + 3, REG_EXTENDED | REG_NOSUB) != 0) {
            am_errors_add(errs, value, "%s: invalid regular expression \"%s\"", where,
                          value->str + 3);
            return AM_EINVAL;
        }
        cond->has_re = true;
        return 0;
    }
    size_t n = value->kind == AM_NODE_SEQ ? value->n_children : 1;
    if (value->kind != AM_NODE_SCALAR && value->kind != AM_NODE_SEQ) {
        am_errors_add(errs, value, "%s: expected a value, a list of values or \"re:...\"", where);
        return AM_EINVAL;
    }
    cond->values = am_calloc(n, sizeof(char *));
    if (cond->values == NULL) {
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const am_node_t *item = value->kind == AM_NODE_SEQ ? value->children[i] : value;
        if (item->kind != AM_NODE_SCALAR) {
            am_errors_add(errs, item, "%s[%zu]: expected a string", where, i);
            return AM_EINVAL;
        }
        if ((cond->values[cond->n_values++] = am_strdup(item->str)) == NULL) {
            return AM_ENOMEM;
        }
    }
    return 0;
}

static int actions_default(action_t **out, size_t *n_out)
{
    static const char *const defs[][2] = {{"tool_call", "execute_tool"},
                                          {"agent_step", "invoke_agent"}};
    action_t *actions = am_calloc(2, sizeof(*actions));
    if (actions == NULL) {
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < 2; i++) {
        actions[i].name = am_strdup(defs[i][0]);
        actions[i].conds = am_calloc(1, sizeof(cond_t));
        if (actions[i].name == NULL || actions[i].conds == NULL) {
            actions_free(actions, 2);
            return AM_ENOMEM;
        }
        actions[i].n_conds = 1;
        cond_t *cond = &actions[i].conds[0];
        cond->attr = am_strdup("gen_ai.operation.name");
        cond->values = am_calloc(1, sizeof(char *));
        if (cond->attr == NULL || cond->values == NULL ||
            (cond->values[0] = am_strdup(defs[i][1])) == NULL) {
            actions_free(actions, 2);
            return AM_ENOMEM;
        }
        cond->n_values = 1;
    }
    *out = actions;
    *n_out = 2;
    return 0;
}

/* Parse `actions:`; errors go to errs (with file:line).  NULL node: the
 * defaults. */
static int actions_parse(const am_node_t *node, const char *prefix, am_errors_t *errs,
                         action_t **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (node == NULL || node->kind == AM_NODE_NULL) {
        return actions_default(out, n_out);
    }
    if (node->kind != AM_NODE_SEQ) {
        am_errors_add(errs, node, "%s.actions: expected a list of {name, match, span_name}",
                      prefix);
        return AM_EINVAL;
    }
    action_t *actions = am_calloc(node->n_children + 1, sizeof(*actions));
    if (actions == NULL) {
        return AM_ENOMEM;
    }
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < node->n_children && rc == 0; i++) {
        const am_node_t *item = node->children[i];
        char where[256];
        snprintf(where, sizeof(where), "%s.actions[%zu]", prefix, i);
        if (item->kind != AM_NODE_MAP) {
            am_errors_add(errs, item, "%s: expected a map {name, match, span_name}", where);
            rc = AM_EINVAL;
            break;
        }
        action_t *action = &actions[n++];
        const am_node_t *name = am_node_get(item, "name");
        const am_node_t *match = am_node_get(item, "match");
        const am_node_t *span_name = am_node_get(item, "span_name");
        for (size_t k = 0; k < item->n_children; k++) {
            const char *key = item->children[k]->key;
            if (strcmp(key, "name") != 0 && strcmp(key, "match") != 0 &&
                strcmp(key, "span_name") != 0) {
                am_errors_add(errs, item->children[k],
                              "%s: unknown key \"%s\" (name, match, span_name)", where, key);
                rc = AM_EINVAL;
            }
        }
        if (name == NULL || name->kind != AM_NODE_SCALAR || name->str[0] == '\0') {
            am_errors_add(errs, item, "%s.name: required", where);
            rc = AM_EINVAL;
            break;
        }
        if (match != NULL && match->kind != AM_NODE_MAP) {
            am_errors_add(errs, match, "%s.match: expected a map of attribute: value", where);
            rc = AM_EINVAL;
            break;
        }
        size_t n_conds = (match != NULL ? match->n_children : 0) + (span_name != NULL ? 1 : 0);
        if (n_conds == 0) {
            am_errors_add(errs, item, "%s: needs `match` or `span_name`", where);
            rc = AM_EINVAL;
            break;
        }
        action->name = am_strdup(name->str);
        action->conds = am_calloc(n_conds, sizeof(cond_t));
        if (action->name == NULL || action->conds == NULL) {
            rc = AM_ENOMEM;
            break;
        }
        for (size_t c = 0; match != NULL && c < match->n_children && rc == 0; c++) {
            char cw[300];
            snprintf(cw, sizeof(cw), "%s.match.%s", where, match->children[c]->key);
            rc = cond_parse(&action->conds[action->n_conds++], match->children[c]->key,
                            match->children[c], cw, errs);
        }
        if (span_name != NULL && rc == 0) {
            char cw[300];
            snprintf(cw, sizeof(cw), "%s.span_name", where);
            rc = cond_parse(&action->conds[action->n_conds++], NULL, span_name, cw, errs);
        }
    }
    if (rc != 0) {
        actions_free(actions, n);
        return rc;
    }
    *out = actions;
    *n_out = n;
    return 0;
}

static bool cond_match(const cond_t *cond, const am_pb_span_t *span,
                       const am_pb_resource_t *resource)
{
    char buf[512];
    const char *text;
    if (cond->attr == NULL) {
        text = span->name != NULL ? span->name : "";
    } else {
        const am_pb_anyvalue_t *v = am_attr_find(span->attributes, span->n_attributes, cond->attr);
        if (v == NULL && resource != NULL) {
            v = am_attr_find(resource->attributes, resource->n_attributes, cond->attr);
        }
        if (v == NULL) {
            return false;
        }
        text = am_anyvalue_to_text(v, buf, sizeof(buf));
    }
    if (cond->has_re) {
        return regexec(&cond->re, text, 0, NULL, 0) == 0;
    }
    for (size_t i = 0; i < cond->n_values; i++) {
        if (strcmp(cond->values[i], text) == 0) {
            return true;
        }
    }
    return false;
}

static const action_t *action_match(const action_t *actions, size_t n, const am_pb_span_t *span,
                                    const am_pb_resource_t *resource)
{
    for (size_t i = 0; i < n; i++) {
        bool all = true;
        for (size_t c = 0; c < actions[i].n_conds && all; c++) {
            all = cond_match(&actions[i].conds[c], span, resource);
        }
        if (all) {
            return &actions[i];
        }
    }
    return NULL;
}

/* ---- session summaries ------------------------------------------------- */

typedef struct action_agg {
    char *name;
    int64_t success, failure;
    am_money_t cost;
} action_agg_t;

/* One session's aggregate; also the per-trace summary handed to the owner. */
typedef struct sess {
    char *key;
    uint64_t start_ns, end_ns;
    int64_t traces, spans;
    am_money_t total;
    am_money_t parts[N_PARTS];
    int64_t tokens[N_TOKENS];
    action_agg_t *actions;
    size_t n_actions;
    char *models[MAX_MODELS];
    size_t n_models;
    char *attrs[MAX_ATTRS]; /* parallel to config attributes */
    char *currency;
    uint64_t last_seen_ns;
    uint64_t handoffs;
    struct sess *lru_prev, *lru_next;
    struct sess *hash_next;
} sess_t;

static void sess_free(sess_t *s)
{
    if (s == NULL) {
        return;
    }
    am_free(s->key);
    for (size_t i = 0; i < s->n_actions; i++) {
        am_free(s->actions[i].name);
    }
    am_free(s->actions);
    for (size_t i = 0; i < s->n_models; i++) {
        am_free(s->models[i]);
    }
    for (size_t i = 0; i < MAX_ATTRS; i++) {
        am_free(s->attrs[i]);
    }
    am_free(s->currency);
    am_free(s);
}

static action_agg_t *sess_action(sess_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_actions; i++) {
        if (strcmp(s->actions[i].name, name) == 0) {
            return &s->actions[i];
        }
    }
    action_agg_t *grown = am_realloc(s->actions, (s->n_actions + 1) * sizeof(*grown));
    if (grown == NULL) {
        return NULL;
    }
    s->actions = grown;
    action_agg_t *agg = &s->actions[s->n_actions];
    memset(agg, 0, sizeof(*agg));
    if ((agg->name = am_strdup(name)) == NULL) {
        return NULL;
    }
    s->n_actions++;
    return agg;
}

static void sess_add_model(sess_t *s, const char *model)
{
    for (size_t i = 0; i < s->n_models; i++) {
        if (strcmp(s->models[i], model) == 0) {
            return;
        }
    }
    if (s->n_models < MAX_MODELS && (s->models[s->n_models] = am_strdup(model)) != NULL) {
        s->n_models++;
    }
}

static void sess_merge(sess_t *dst, const sess_t *src)
{
    if (src->start_ns != 0 && (dst->start_ns == 0 || src->start_ns < dst->start_ns)) {
        dst->start_ns = src->start_ns;
    }
    if (src->end_ns > dst->end_ns) {
        dst->end_ns = src->end_ns;
    }
    dst->traces += src->traces;
    dst->spans += src->spans;
    dst->total += src->total;
    for (int i = 0; i < N_PARTS; i++) {
        dst->parts[i] += src->parts[i];
    }
    for (int i = 0; i < N_TOKENS; i++) {
        dst->tokens[i] += src->tokens[i];
    }
    for (size_t i = 0; i < src->n_actions; i++) {
        action_agg_t *agg = sess_action(dst, src->actions[i].name);
        if (agg != NULL) {
            agg->success += src->actions[i].success;
            agg->failure += src->actions[i].failure;
            agg->cost += src->actions[i].cost;
        }
    }
    for (size_t i = 0; i < src->n_models; i++) {
        sess_add_model(dst, src->models[i]);
    }
    for (size_t i = 0; i < MAX_ATTRS; i++) {
        if (dst->attrs[i] == NULL && src->attrs[i] != NULL) {
            dst->attrs[i] = am_strdup(src->attrs[i]);
        }
    }
    if (dst->currency == NULL && src->currency != NULL) {
        dst->currency = am_strdup(src->currency);
    }
}

bool am__session_cpa(am_money_t total, int64_t successes, am_money_t *out)
{
    if (successes <= 0) {
        return false;
    }
    am_money_t q = total / successes;
    am_money_t r = total % successes;
    /* Half away from zero: |2r| >= successes rounds the magnitude up. */
    if (r != 0 && (r > 0 ? r : -r) >= successes - (r > 0 ? r : -r)) {
        q += total >= 0 ? 1 : -1;
    }
    *out = q;
    return true;
}

/* ---- small string-keyed hash map -------------------------------------- */

static uint64_t key_hash(const char *key)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
        h = (h ^ *p) * UINT64_C(1099511628211);
    }
    return h;
}

typedef struct running {
    char *key;
    am_money_t total;
    int64_t traces;
    uint64_t handoffs;
    struct running *next;
} running_t;

typedef struct sess_map {
    sess_t **buckets;
    size_t n_buckets, count;
} sess_map_t;

static sess_t **sess_map_slot(sess_map_t *map, const char *key)
{
    sess_t **slot = &map->buckets[key_hash(key) % map->n_buckets];
    while (*slot != NULL && strcmp((*slot)->key, key) != 0) {
        slot = &(*slot)->hash_next;
    }
    return slot;
}

static void sess_map_grow(sess_map_t *map)
{
    size_t n = map->n_buckets * 2;
    sess_t **buckets = am_calloc(n, sizeof(*buckets));
    if (buckets == NULL) {
        return;
    }
    for (size_t i = 0; i < map->n_buckets; i++) {
        for (sess_t *s = map->buckets[i]; s != NULL;) {
            sess_t *next = s->hash_next;
            size_t b = key_hash(s->key) % n;
            s->hash_next = buckets[b];
            buckets[b] = s;
            s = next;
        }
    }
    am_free(map->buckets);
    map->buckets = buckets;
    map->n_buckets = n;
}

/* ---- instances and groups ---------------------------------------------- */

typedef struct session_inst session_inst_t;

typedef struct group {
    const void *service;
    char *id;
    int n_shards;
    int refs;
    int n_shut;
    session_inst_t **insts; /* [n_shards] */
    am_shards_t *shards;
    pthread_mutex_t lock; /* running map, snapshots, state load */
    running_t **running;
    size_t n_running_buckets;
    char **snaps; /* per instance: serialized sessions, JSON array items */
    bool state_loaded;
    json_object *loaded; /* sessions array read from state_file */
    uint64_t last_write_ns;
    bool persist; /* final flush keeps sessions (state_file or reload) */
    struct group *next;
} group_t;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static group_t *registry;


struct session_inst {
    char *id;
    int shard;
    group_t *group;
    am_consumer_t *next;
    uv_loop_t *loop;
    uv_timer_t *timer;
    const session_config_t *cfg;
    action_t *actions;
    size_t n_actions;
    sess_map_t map;
    sess_t *lru_head, *lru_tail;
    am__session_clock_fn clock;
    void *clock_arg;
    bool shut;
    am__session_stats_t stats;
    am_counter_t *closed_idle, *closed_evicted, *closed_shutdown;
    am_gauge_t *open_gauge;
};

static uint64_t default_clock(void *arg)
{
    AM_UNUSED(arg);
    return am_now_unix_nano();
}

static uint64_t inst_now(session_inst_t *inst)
{
    return inst->clock(inst->clock_arg);
}

static group_t *group_acquire(const void *service, const char *id, int n_shards)
{
    pthread_mutex_lock(&registry_lock);
    group_t *g = registry;
    while (g != NULL && !(g->service == service && strcmp(g->id, id) == 0)) {
        g = g->next;
    }
    if (g == NULL) {
        g = am_calloc(1, sizeof(*g));
        if (g != NULL) {
            g->service = service;
            g->id = am_strdup(id);
            g->n_shards = n_shards;
            g->insts = am_calloc((size_t)n_shards, sizeof(*g->insts));
            g->snaps = am_calloc((size_t)n_shards, sizeof(*g->snaps));
            g->n_running_buckets = 1024;
            g->running = am_calloc(g->n_running_buckets, sizeof(*g->running));
            if (g->id == NULL || g->insts == NULL || g->snaps == NULL || g->running == NULL) {
                am_free(g->id);
                am_free(g->insts);
                am_free(g->snaps);
                am_free(g->running);
                am_free(g);
                g = NULL;
            } else {
                pthread_mutex_init(&g->lock, NULL);
                g->next = registry;
                registry = g;
            }
        }
    }
    if (g != NULL) {
        g->refs++;
    }
    pthread_mutex_unlock(&registry_lock);
    return g;
}

static void group_release(group_t *g)
{
    pthread_mutex_lock(&registry_lock);
    if (--g->refs > 0) {
        pthread_mutex_unlock(&registry_lock);
        return;
    }
    for (group_t **p = &registry; *p != NULL; p = &(*p)->next) {
        if (*p == g) {
            *p = g->next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    for (size_t b = 0; b < g->n_running_buckets; b++) {
        for (running_t *r = g->running[b]; r != NULL;) {
            running_t *next = r->next;
            am_free(r->key);
            am_free(r);
            r = next;
        }
    }
    for (int i = 0; i < g->n_shards; i++) {
        am_free(g->snaps[i]);
    }
    if (g->loaded != NULL) {
        json_object_put(g->loaded);
    }
    pthread_mutex_destroy(&g->lock);
    am_free(g->running);
    am_free(g->snaps);
    am_free(g->insts);
    am_free(g->id);
    am_free(g);
}

/* Caller holds g->lock. */
static running_t **running_slot(group_t *g, const char *key)
{
    running_t **slot = &g->running[key_hash(key) % g->n_running_buckets];
    while (*slot != NULL && strcmp((*slot)->key, key) != 0) {
        slot = &(*slot)->next;
    }
    return slot;
}

/* Trace shard: count one hand-off of `add` into the running values. */
static bool running_reserve(group_t *g, const char *key, am_money_t total, int64_t traces,
                            am_money_t *run_total, int64_t *run_traces)
{
    bool ok = false;
    pthread_mutex_lock(&g->lock);
    running_t **slot = running_slot(g, key);
    if (*slot == NULL) {
        running_t *r = am_calloc(1, sizeof(*r));
        if (r != NULL && (r->key = am_strdup(key)) == NULL) {
            am_free(r);
            r = NULL;
        }
        *slot = r;
    }
    if (*slot != NULL) {
        (*slot)->total += total;
        (*slot)->traces += traces;
        (*slot)->handoffs++;
        *run_total = (*slot)->total;
        *run_traces = (*slot)->traces;
        ok = true;
    }
    pthread_mutex_unlock(&g->lock);
    return ok;
}

/* Owner: may the session close?  Removes the running entry when it may. */
static bool running_release(group_t *g, const sess_t *s, bool force)
{
    pthread_mutex_lock(&g->lock);
    running_t **slot = running_slot(g, s->key);
    bool may = true;
    if (*slot != NULL) {
        may = force || (*slot)->handoffs <= s->handoffs;
        if (may) {
            running_t *r = *slot;
            *slot = r->next;
            am_free(r->key);
            am_free(r);
        }
    }
    pthread_mutex_unlock(&g->lock);
    return may;
}

/* Owner, restoring from state: seed the running values. */
static void running_seed(group_t *g, const sess_t *s)
{
    am_money_t t;
    int64_t n;
    running_reserve(g, s->key, s->total, s->traces, &t, &n);
    pthread_mutex_lock(&g->lock);
    running_t *r = *running_slot(g, s->key);
    if (r != NULL) {
        r->handoffs = s->handoffs;
    }
    pthread_mutex_unlock(&g->lock);
}

/* Run fn on the instance's shard thread: directly when there is no shard
 * set or we are on it, else queued (after what is already queued). */
static void run_on(group_t *g, int shard, am_shard_fn fn, void *arg, bool wait)
{
    am_shards_run(g->shards, shard, fn, arg, wait);
}

/* ---- LRU and map on the owner ------------------------------------------ */

static void lru_unlink(session_inst_t *inst, sess_t *s)
{
    if (s->lru_prev != NULL) {
        s->lru_prev->lru_next = s->lru_next;
    } else {
        inst->lru_head = s->lru_next;
    }
    if (s->lru_next != NULL) {
        s->lru_next->lru_prev = s->lru_prev;
    } else {
        inst->lru_tail = s->lru_prev;
    }
    s->lru_prev = s->lru_next = NULL;
}

static void lru_append(session_inst_t *inst, sess_t *s)
{
    s->lru_prev = inst->lru_tail;
    s->lru_next = NULL;
    if (inst->lru_tail != NULL) {
        inst->lru_tail->lru_next = s;
    } else {
        inst->lru_head = s;
    }
    inst->lru_tail = s;
}

static void map_insert(session_inst_t *inst, sess_t *s)
{
    if (inst->map.count >= inst->map.n_buckets) {
        sess_map_grow(&inst->map);
    }
    sess_t **slot = &inst->map.buckets[key_hash(s->key) % inst->map.n_buckets];
    s->hash_next = *slot;
    *slot = s;
    inst->map.count++;
    lru_append(inst, s);
    inst->stats.open++;
    am_gauge_add(inst->open_gauge, 1);
}

static void map_remove(session_inst_t *inst, sess_t *s)
{
    sess_t **slot = sess_map_slot(&inst->map, s->key);
    if (*slot == s) {
        *slot = s->hash_next;
        inst->map.count--;
    }
    lru_unlink(inst, s);
    inst->stats.open--;
    am_gauge_add(inst->open_gauge, -1);
}

/* ---- events ------------------------------------------------------------ */

static json_object *summary_json(session_inst_t *inst, const sess_t *s, uint64_t now)
{
    json_object *o = json_object_new_object();
    const char *currency = s->currency != NULL ? s->currency : "USD";
    json_object_object_add(o, "event", json_object_new_string("session.summary"));
    json_object_object_add(o, "time", am_json_time(now));
    json_object_object_add(o, "scope", json_object_new_string("session.id"));
    json_object_object_add(o, "key", json_object_new_string(s->key));
    json_object_object_add(o, "start", am_json_time(s->start_ns));
    json_object_object_add(o, "end", am_json_time(s->end_ns));
    json_object_object_add(o, "traces", json_object_new_int64(s->traces));
    json_object_object_add(o, "spans", json_object_new_int64(s->spans));
    json_object *cost = json_object_new_object();
    json_object_object_add(cost, "total", am_json_money(s->total));
    json_object_object_add(cost, "currency", json_object_new_string(currency));
    for (int i = 0; i < N_PARTS; i++) {
        json_object_object_add(cost, part_names[i], am_json_money(s->parts[i]));
    }
    json_object_object_add(o, "cost", cost);
    json_object *tokens = json_object_new_object();
    for (int i = 0; i < N_TOKENS; i++) {
        json_object_object_add(tokens, token_names[i], json_object_new_int64(s->tokens[i]));
    }
    json_object_object_add(o, "tokens", tokens);
    json_object *actions = json_object_new_object();
    int64_t successes = 0;
    for (size_t i = 0; i < s->n_actions; i++) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "success", json_object_new_int64(s->actions[i].success));
        json_object_object_add(a, "failure", json_object_new_int64(s->actions[i].failure));
        json_object_object_add(a, "cost", am_json_money(s->actions[i].cost));
        json_object_object_add(actions, s->actions[i].name, a);
        successes += s->actions[i].success;
    }
    json_object_object_add(o, "actions", actions);
    am_money_t cpa;
    json_object_object_add(o, "cost_per_successful_action",
                           am__session_cpa(s->total, successes, &cpa) ? am_json_money(cpa) : NULL);
    json_object *models = json_object_new_array();
    for (size_t i = 0; i < s->n_models; i++) {
        json_object_array_add(models, json_object_new_string(s->models[i]));
    }
    json_object_object_add(o, "models", models);
    json_object *attrs = json_object_new_object();
    for (size_t i = 0; i < inst->cfg->attributes.count && i < MAX_ATTRS; i++) {
        if (s->attrs[i] != NULL) {
            json_object_object_add(attrs, inst->cfg->attributes.items[i],
                                   json_object_new_string(s->attrs[i]));
        }
    }
    json_object_object_add(o, "attributes", attrs);
    return o;
}

static am_pb_keyvalue_t *kv_new(am_arena_t *arena, const char *key, const char *value)
{
    am_pb_keyvalue_t *kv = am_arena_alloc(arena, sizeof(*kv));
    am_pb_anyvalue_t *v = am_arena_alloc(arena, sizeof(*v));
    if (kv == NULL || v == NULL) {
        return NULL;
    }
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(v);
    kv->key = am_arena_strdup(arena, key);
    v->value_case = AM_PB_VALUE(STRING_VALUE);
    v->string_value = am_arena_strdup(arena, value);
    kv->value = v;
    return kv->key != NULL && v->string_value != NULL ? kv : NULL;
}

/* Add the summary event of `s` to `batch`. */
static int add_summary_event(session_inst_t *inst, am_batch_t *batch, const sess_t *s, uint64_t now)
{
    am_arena_t *arena = batch->arena;
    json_object *o = summary_json(inst, s, now);
    const char *text =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    am_event_t ev = {
        .kind = "session.summary",
        .scope = "session.id",
        .key = am_arena_strdup(arena, s->key),
        .json = am_arena_strdup(arena, text),
        .time_unix_nano = now,
        .amount = s->total,
        .currency = am_arena_strdup(arena, s->currency != NULL ? s->currency : "USD"),
    };
    json_object_put(o);
    if (ev.key == NULL || ev.json == NULL || ev.currency == NULL) {
        return AM_ENOMEM;
    }
    ev.json_len = strlen(ev.json);
    size_t n_attrs = 0;
    for (size_t i = 0; i < inst->cfg->attributes.count && i < MAX_ATTRS; i++) {
        n_attrs += s->attrs[i] != NULL;
    }
    if (n_attrs > 0) {
        ev.attrs = am_arena_calloc(arena, n_attrs, sizeof(*ev.attrs));
        for (size_t i = 0; ev.attrs != NULL && i < inst->cfg->attributes.count && i < MAX_ATTRS;
             i++) {
            if (s->attrs[i] != NULL) {
                am_pb_keyvalue_t *kv = kv_new(arena, inst->cfg->attributes.items[i], s->attrs[i]);
                if (kv != NULL) {
                    ev.attrs[ev.n_attrs++] = kv;
                }
            }
        }
    }
    return am_batch_add_event(batch, &ev);
}

typedef enum { CLOSE_IDLE, CLOSE_EVICTED, CLOSE_SHUTDOWN } close_reason_t;

/* Close `s` into `*out` (a batch created on demand).  false when a hand-off
 * is still in flight (the session is not idle after all) and !force. */
static bool close_session(session_inst_t *inst, sess_t *s, close_reason_t reason, bool force,
                          am_batch_t **out, uint64_t now)
{
    if (!running_release(inst->group, s, force)) {
        return false;
    }
    if (*out == NULL) {
        *out = am_batch_new(AM_SIGNAL_TRACES);
    }
    if (*out == NULL || add_summary_event(inst, *out, s, now) != 0) {
        AM_ERROR(COMP, "%s: out of memory: session %s closed without a summary", inst->id, s->key);
    }
    switch (reason) {
    case CLOSE_IDLE:
        inst->stats.closed_idle++;
        am_counter_add(inst->closed_idle, 1);
        break;
    case CLOSE_EVICTED:
        inst->stats.closed_evicted++;
        am_counter_add(inst->closed_evicted, 1);
        break;
    case CLOSE_SHUTDOWN:
        inst->stats.closed_shutdown++;
        am_counter_add(inst->closed_shutdown, 1);
        break;
    }
    map_remove(inst, s);
    sess_free(s);
    return true;
}

static void emit(session_inst_t *inst, am_batch_t *batch)
{
    if (batch == NULL) {
        return;
    }
    if (batch->n_events > 0 && inst->next != NULL) {
        if (am_consume(inst->next, batch) != AM_OK) {
            AM_WARN(COMP, "%s: downstream refused %zu session event(s)", inst->id, batch->n_events);
        }
    }
    am_batch_unref(batch);
}

/* ---- owner side: apply a hand-off -------------------------------------- */

static void apply_summary(session_inst_t *inst, sess_t *sum)
{
    uint64_t now = inst_now(inst);
    sess_t **slot = sess_map_slot(&inst->map, sum->key);
    sess_t *s = *slot;
    if (s == NULL) {
        s = sum;
        map_insert(inst, s);
    } else {
        sess_merge(s, sum);
        sess_free(sum);
        lru_unlink(inst, s);
        lru_append(inst, s);
    }
    s->handoffs++;
    s->last_seen_ns = now;
    am_batch_t *out = NULL;
    sess_t *victim = inst->lru_head;
    while ((int64_t)inst->map.count > inst->cfg->max_sessions && victim != NULL) {
        sess_t *next = victim->lru_next;
        if (victim != s) {
            close_session(inst, victim, CLOSE_EVICTED, false, &out, now);
        }
        victim = next;
    }
    emit(inst, out);
}

typedef struct handoff {
    session_inst_t *target;
    sess_t *sum;
} handoff_t;

static void handoff_run(void *arg)
{
    handoff_t *h = arg;
    apply_summary(h->target, h->sum);
    am_free(h);
}

/* ---- trace side --------------------------------------------------------- */

static bool span_billable(const am_pb_span_t *span, const am_pb_resource_t *resource)
{
    const char *status;
    if (am_attr_get_str(span->attributes, span->n_attributes, "cost.status", &status)) {
        return strcmp(status, "not_billable") != 0;
    }
    const char *op = am_attr_first_str(span, resource, operation_keys);
    return op == NULL || (strcmp(op, "invoke_agent") != 0 && strcmp(op, "create_agent") != 0 &&
                          strcmp(op, "invoke_workflow") != 0 && strcmp(op, "AGENT") != 0 &&
                          strcmp(op, "agent") != 0 && strcmp(op, "workflow") != 0);
}

static am_money_t double_to_money(double v)
{
    return (am_money_t)llround(v * (double)AM_MONEY_SCALE);
}

static sess_t *trace_sum_for(session_inst_t *inst, sess_t **sums, size_t *n_sums, const char *key)
{
    for (size_t i = 0; i < *n_sums; i++) {
        if (strcmp(sums[i]->key, key) == 0) {
            return sums[i];
        }
    }
    if (*n_sums == MAX_KEYS_PER_TRACE) {
        return NULL;
    }
    sess_t *s = am_calloc(1, sizeof(*s));
    if (s == NULL || (s->key = am_strdup(key)) == NULL) {
        am_free(s);
        return NULL;
    }
    AM_UNUSED(inst);
    sums[(*n_sums)++] = s;
    return s;
}

static void summarise_span(session_inst_t *inst, sess_t *s, am_span_ref_t *ref,
                           const action_t *action)
{
    const am_pb_span_t *span = ref->span;
    const am_pb_resource_t *resource = ref->resource;
    s->spans++;
    if (span->start_time_unix_nano != 0 &&
        (s->start_ns == 0 || span->start_time_unix_nano < s->start_ns)) {
        s->start_ns = span->start_time_unix_nano;
    }
    if (span->end_time_unix_nano > s->end_ns) {
        s->end_ns = span->end_time_unix_nano;
    }
    s->total += ref->cost_self;
    for (int i = 0; i < N_PARTS; i++) {
        double v;
        if (am_attr_get_double(span->attributes, span->n_attributes, part_attrs[i], &v)) {
            s->parts[i] += double_to_money(v);
        }
    }
    bool has_usage = false;
    if (span_billable(span, resource)) {
        for (int i = 0; i < N_TOKENS; i++) {
            int64_t v;
            if (am_attr_first_int(span, resource, token_keys[i], &v) && v > 0) {
                s->tokens[i] += v;
                has_usage = true;
            }
        }
    }
    if (has_usage || ref->cost_self != 0) {
        const char *model = am_attr_first_str(span, resource, model_keys);
        if (model != NULL) {
            sess_add_model(s, model);
        }
    }
    if (s->currency == NULL) {
        const char *cur;
        if (am_attr_get_str(span->attributes, span->n_attributes, "cost.currency", &cur)) {
            s->currency = am_strdup(cur);
        }
    }
    for (size_t i = 0; i < inst->cfg->attributes.count && i < MAX_ATTRS; i++) {
        if (s->attrs[i] != NULL) {
            continue;
        }
        const char *name = inst->cfg->attributes.items[i];
        const char *const single[] = {name, NULL};
        const char *v =
            am_attr_first_str(span, resource, strcmp(name, "user.id") == 0 ? user_keys : single);
        if (v != NULL) {
            s->attrs[i] = am_strdup(v);
        }
    }
    if (action != NULL) {
        action_agg_t *agg = sess_action(s, action->name);
        if (agg != NULL) {
            bool failed = span->status != NULL && span->status->code == AM_PB_STATUS_ERROR;
            agg->success += failed ? 0 : 1;
            agg->failure += failed ? 1 : 0;
            agg->cost += ref->cost_subtree;
        }
    }
}

static void process_trace(session_inst_t *inst, am_batch_t *batch, am_trace_t *trace)
{
    sess_t *sums[MAX_KEYS_PER_TRACE];
    size_t n_sums = 0;
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        am_span_ref_t *ref = &trace->spans[i];
        if (ref->span == NULL) {
            continue;
        }
        am_attr_scope_begin_known(ref->span, &ref->known, NULL, ref->resource);
        const action_t *action =
            action_match(inst->actions, inst->n_actions, ref->span, ref->resource);
        if (action != NULL) {
            am_span_set_str(batch->arena, ref->span, "cost.action", action->name);
        }
        const char *key = am_attr_first_str(ref->span, ref->resource, session_keys);
        sess_t *s = key != NULL ? trace_sum_for(inst, sums, &n_sums, key) : NULL;
        if (s != NULL) {
            summarise_span(inst, s, ref, action);
        }
        am_attr_scope_end();
    }
    bool late = (trace->flags & AM_SPANREF_LATE) != 0;
    am_money_t run_total[MAX_KEYS_PER_TRACE];
    int64_t run_traces[MAX_KEYS_PER_TRACE];
    bool reserved[MAX_KEYS_PER_TRACE];
    for (size_t k = 0; k < n_sums; k++) {
        sums[k]->traces = late ? 0 : 1;
        reserved[k] = running_reserve(inst->group, sums[k]->key, sums[k]->total, sums[k]->traces,
                                      &run_total[k], &run_traces[k]);
    }
    for (uint32_t r = 0; r < trace->n_roots && n_sums > 0 && !late; r++) {
        am_span_ref_t *ref = &trace->spans[trace->roots[r]];
        const char *key = am_attr_first_str(ref->span, ref->resource, session_keys);
        size_t k = 0;
        while (key != NULL && k < n_sums && strcmp(sums[k]->key, key) != 0) {
            k++;
        }
        if (k == n_sums) {
            k = 0;
        }
        if (reserved[k]) {
            am_span_set_double(batch->arena, ref->span, "cost.session.total",
                               am_money_to_double(run_total[k]));
            am_span_set_int(batch->arena, ref->span, "cost.session.traces", run_traces[k]);
        }
    }
    for (size_t k = 0; k < n_sums; k++) {
        if (!reserved[k]) {
            sess_free(sums[k]);
            continue;
        }
        int owner = am_shard_for_key(sums[k]->key, inst->group->n_shards);
        session_inst_t *target = inst->group->insts[owner];
        handoff_t *h = am_malloc(sizeof(*h));
        if (target == NULL || h == NULL) {
            am_free(h);
            sess_free(sums[k]);
            continue;
        }
        h->target = target;
        h->sum = sums[k];
        if (target == inst) {
            handoff_run(h);
        } else {
            run_on(inst->group, owner, handoff_run, h, false);
        }
    }
}

static am_status_t session_consume(void *instance, am_batch_t *batch)
{
    session_inst_t *inst = instance;
    for (size_t t = 0; batch->trace_index != NULL && t < batch->n_traces; t++) {
        process_trace(inst, batch, &batch->trace_index[t]);
    }
    return inst->next != NULL ? am_consume(inst->next, batch) : AM_OK;
}

/* ---- state file --------------------------------------------------------- */

static json_object *sess_state_json(session_inst_t *inst, const sess_t *s)
{
    json_object *o = json_object_new_object();
    char buf[32];
    json_object_object_add(o, "key", json_object_new_string(s->key));
    json_object_object_add(o, "start", json_object_new_uint64(s->start_ns));
    json_object_object_add(o, "end", json_object_new_uint64(s->end_ns));
    json_object_object_add(o, "last_seen", json_object_new_uint64(s->last_seen_ns));
    json_object_object_add(o, "traces", json_object_new_int64(s->traces));
    json_object_object_add(o, "spans", json_object_new_int64(s->spans));
    json_object_object_add(o, "handoffs", json_object_new_uint64(s->handoffs));
    snprintf(buf, sizeof(buf), "%lld", (long long)s->total);
    json_object_object_add(o, "total_nano", json_object_new_string(buf));
    json_object *parts = json_object_new_array();
    for (int i = 0; i < N_PARTS; i++) {
        json_object_array_add(parts, json_object_new_int64(s->parts[i]));
    }
    json_object_object_add(o, "parts_nano", parts);
    json_object *tokens = json_object_new_array();
    for (int i = 0; i < N_TOKENS; i++) {
        json_object_array_add(tokens, json_object_new_int64(s->tokens[i]));
    }
    json_object_object_add(o, "tokens", tokens);
    json_object *actions = json_object_new_array();
    for (size_t i = 0; i < s->n_actions; i++) {
        json_object *a = json_object_new_array();
        json_object_array_add(a, json_object_new_string(s->actions[i].name));
        json_object_array_add(a, json_object_new_int64(s->actions[i].success));
        json_object_array_add(a, json_object_new_int64(s->actions[i].failure));
        json_object_array_add(a, json_object_new_int64(s->actions[i].cost));
        json_object_array_add(actions, a);
    }
    json_object_object_add(o, "actions", actions);
    json_object *models = json_object_new_array();
    for (size_t i = 0; i < s->n_models; i++) {
        json_object_array_add(models, json_object_new_string(s->models[i]));
    }
    json_object_object_add(o, "models", models);
    json_object *attrs = json_object_new_object();
    for (size_t i = 0; i < inst->cfg->attributes.count && i < MAX_ATTRS; i++) {
        if (s->attrs[i] != NULL) {
            json_object_object_add(attrs, inst->cfg->attributes.items[i],
                                   json_object_new_string(s->attrs[i]));
        }
    }
    json_object_object_add(o, "attributes", attrs);
    if (s->currency != NULL) {
        json_object_object_add(o, "currency", json_object_new_string(s->currency));
    }
    return o;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)) {
        return json_object_get_string(v);
    }
    return NULL;
}

/* NULL when `o` is not a well-formed session entry. */
static sess_t *sess_from_json(session_inst_t *inst, json_object *o)
{
    const char *key = jstr(o, "key");
    const char *total = jstr(o, "total_nano");
    json_object *parts, *tokens, *actions, *models, *attrs;
    if (key == NULL || key[0] == '\0' || total == NULL ||
        !json_object_object_get_ex(o, "parts_nano", &parts) ||
        !json_object_object_get_ex(o, "tokens", &tokens) ||
        !json_object_object_get_ex(o, "actions", &actions) ||
        !json_object_object_get_ex(o, "models", &models) ||
        !json_object_object_get_ex(o, "attributes", &attrs) ||
        json_object_array_length(parts) != N_PARTS ||
        json_object_array_length(tokens) != N_TOKENS) {
        return NULL;
    }
    sess_t *s = am_calloc(1, sizeof(*s));
    if (s == NULL || (s->key = am_strdup(key)) == NULL) {
        am_free(s);
        return NULL;
    }
    s->start_ns = (uint64_t)jint(o, "start");
    s->end_ns = (uint64_t)jint(o, "end");
    s->last_seen_ns = (uint64_t)jint(o, "last_seen");
    s->traces = jint(o, "traces");
    s->spans = jint(o, "spans");
    s->handoffs = (uint64_t)jint(o, "handoffs");
    s->total = strtoll(total, NULL, 10);
    for (int i = 0; i < N_PARTS; i++) {
        s->parts[i] = json_object_get_int64(json_object_array_get_idx(parts, (size_t)i));
    }
    for (int i = 0; i < N_TOKENS; i++) {
        s->tokens[i] = json_object_get_int64(json_object_array_get_idx(tokens, (size_t)i));
    }
    for (size_t i = 0; i < json_object_array_length(actions); i++) {
        json_object *a = json_object_array_get_idx(actions, i);
        if (json_object_array_length(a) != 4) {
            continue;
        }
        action_agg_t *agg = sess_action(s, json_object_get_string(json_object_array_get_idx(a, 0)));
        if (agg != NULL) {
            agg->success = json_object_get_int64(json_object_array_get_idx(a, 1));
            agg->failure = json_object_get_int64(json_object_array_get_idx(a, 2));
            agg->cost = json_object_get_int64(json_object_array_get_idx(a, 3));
        }
    }
    for (size_t i = 0; i < json_object_array_length(models); i++) {
        sess_add_model(s, json_object_get_string(json_object_array_get_idx(models, i)));
    }
    for (size_t i = 0; i < inst->cfg->attributes.count && i < MAX_ATTRS; i++) {
        const char *v = jstr(attrs, inst->cfg->attributes.items[i]);
        if (v != NULL) {
            s->attrs[i] = am_strdup(v);
        }
    }
    const char *cur = jstr(o, "currency");
    if (cur != NULL) {
        s->currency = am_strdup(cur);
    }
    return s;
}

/* Serialize this instance's sessions as JSON array items ("{..},{..}"). */
static void snapshot_own(session_inst_t *inst)
{
    json_object *arr = json_object_new_array();
    for (sess_t *s = inst->lru_head; s != NULL; s = s->lru_next) {
        json_object_array_add(arr, sess_state_json(inst, s));
    }
    const char *text = json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN);
    size_t len = strlen(text);
    char *items = am_strndup(len >= 2 ? text + 1 : "", len >= 2 ? len - 2 : 0);
    json_object_put(arr);
    pthread_mutex_lock(&inst->group->lock);
    am_free(inst->group->snaps[inst->shard]);
    inst->group->snaps[inst->shard] = items;
    pthread_mutex_unlock(&inst->group->lock);
}

/* Join every instance's snapshot (malloc'd text, *used_out bytes): the text
 * of state_file and of the reload handoff. */
static char *state_text(group_t *g, size_t *used_out)
{
    pthread_mutex_lock(&g->lock);
    size_t len = 64;
    for (int i = 0; i < g->n_shards; i++) {
        len += g->snaps[i] != NULL ? strlen(g->snaps[i]) + 1 : 0;
    }
    char *text = am_malloc(len);
    if (text != NULL) {
        size_t used = (size_t)snprintf(text, len, "{\"version\":%d,\"sessions\":[", STATE_VERSION);
        bool first = true;
        for (int i = 0; i < g->n_shards; i++) {
            if (g->snaps[i] == NULL || g->snaps[i][0] == '\0') {
                continue;
            }
            used +=
                (size_t)snprintf(text + used, len - used, "%s%s", first ? "" : ",", g->snaps[i]);
            first = false;
        }
        used += (size_t)snprintf(text + used, len - used, "]}\n");
        *used_out = used;
    }
    pthread_mutex_unlock(&g->lock);
    return text;
}

/* Join every instance's snapshot and write the file. */
static void write_state(group_t *g, const char *path)
{
    size_t used = 0;
    char *text = state_text(g, &used);
    if (text != NULL) {
        am_state_file_write(COMP, path, text, used);
        am_free(text);
    }
}

/* Parse a state text into g->loaded.  Caller holds g->lock.  false when
 * the text is not a valid state. */
static bool parse_state(group_t *g, const char *data)
{
    enum json_tokener_error jerr;
    json_object *root = json_tokener_parse_verbose(data, &jerr), *sessions = NULL;
    bool valid = root != NULL && json_object_is_type(root, json_type_object) &&
                 jint(root, "version") == STATE_VERSION &&
                 json_object_object_get_ex(root, "sessions", &sessions) &&
                 json_object_is_type(sessions, json_type_array);
    if (valid) {
        g->loaded = json_object_get(sessions);
    }
    if (root != NULL) {
        json_object_put(root);
    }
    return valid;
}

/* Read state_file into g->loaded (or set a corrupt one aside).  Caller holds
 * g->lock.  true when the file existed and was valid. */
static bool load_state_file(session_inst_t *inst, const char *path)
{
    char *data = NULL;
    size_t len = 0;
    int rc = am_state_file_read(COMP, path, &data, &len);
    if (rc != 0 && rc != AM_ERANGE) {
        return false;
    }
    bool valid = rc == 0 && parse_state(inst->group, data);
    am_free(data);
    if (!valid) {
        am_state_file_set_aside(COMP, inst->id, path, inst_now(inst) / 1000000000u);
    }
    return valid;
}

/* Once per group, at start: the sessions to continue.  A readable
 * state_file wins; else the handoff of a config reload, if any. */
static void load_state_once(session_inst_t *inst)
{
    group_t *g = inst->group;
    const char *path = inst->cfg->state_file;
    pthread_mutex_lock(&g->lock);
    if (g->state_loaded) {
        pthread_mutex_unlock(&g->lock);
        return;
    }
    g->state_loaded = true;
    char *handoff = am_state_handoff_take(g->id);
    bool from_file = path != NULL && path[0] != '\0' && load_state_file(inst, path);
    if (!from_file && handoff != NULL) {
        if (!parse_state(g, handoff)) {
            AM_ERROR(COMP, "%s: reload handoff state is malformed; ignored", inst->id);
        }
    }
    am_free(handoff);
    pthread_mutex_unlock(&g->lock);
}

static void restore_own(session_inst_t *inst)
{
    group_t *g = inst->group;
    pthread_mutex_lock(&g->lock);
    json_object *arr = g->loaded != NULL ? json_object_get(g->loaded) : NULL;
    pthread_mutex_unlock(&g->lock);
    if (arr == NULL) {
        return;
    }
    size_t restored = 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *o = json_object_array_get_idx(arr, i);
        const char *key = jstr(o, "key");
        if (key == NULL || am_shard_for_key(key, g->n_shards) != inst->shard ||
            *sess_map_slot(&inst->map, key) != NULL) {
            continue;
        }
        sess_t *s = sess_from_json(inst, o);
        if (s == NULL) {
            AM_WARN(COMP, "%s: state file entry %zu is malformed; skipped", inst->id, i);
            continue;
        }
        map_insert(inst, s);
        running_seed(g, s);
        restored++;
    }
    json_object_put(arr);
    if (restored > 0) {
        AM_INFO(COMP, "%s: restored %zu open session(s) on shard %d", inst->id, restored,
                inst->shard);
    }
}

/* ---- tick, life cycle ------------------------------------------------------ */

void am__session_tick(void *instance)
{
    session_inst_t *inst = instance;
    uint64_t now = inst_now(inst);
    uint64_t idle_ns = (uint64_t)inst->cfg->idle_timeout_ms * 1000000u;
    am_batch_t *out = NULL;
    for (sess_t *s = inst->lru_head; s != NULL;) {
        sess_t *next = s->lru_next;
        if (now < s->last_seen_ns || now - s->last_seen_ns < idle_ns) {
            break; /* LRU order: the rest are more recent */
        }
        close_session(inst, s, CLOSE_IDLE, false, &out, now);
        s = next;
    }
    emit(inst, out);
    if (inst->cfg->state_file != NULL && inst->cfg->state_file[0] != '\0') {
        snapshot_own(inst);
        group_t *g = inst->group;
        uint64_t interval_ns = (uint64_t)inst->cfg->state_interval_ms * 1000000u;
        if (inst->shard == 0 && now - g->last_write_ns >= interval_ns) {
            g->last_write_ns = now;
            write_state(g, inst->cfg->state_file);
        }
    }
}

static void tick_cb(uv_timer_t *timer)
{
    am__session_tick(timer->data);
}

static void session_destroy(void *instance);

static int session_create(const am_create_params_t *params, void **instance)
{
    const session_config_t *cfg = params->config;
    session_inst_t *inst = am_calloc(1, sizeof(*inst));
    if (inst == NULL || (inst->id = am_strdup(params->id)) == NULL) {
        am_free(inst);
        return AM_ENOMEM;
    }
    inst->cfg = cfg;
    inst->next = params->next;
    inst->loop = params->loop;
    inst->shard = params->shard >= 0 ? params->shard : 0;
    inst->clock = default_clock;
    inst->map.n_buckets = 64;
    inst->map.buckets = am_calloc(inst->map.n_buckets, sizeof(*inst->map.buckets));
    am_errors_t errs = {0};
    int rc = actions_parse(cfg->actions, inst->id, &errs, &inst->actions, &inst->n_actions);
    am_errors_clear(&errs);
    int n_shards = params->n_shards > 0 ? params->n_shards : 1;
    if (rc != 0 || inst->map.buckets == NULL || inst->shard >= n_shards ||
        (inst->group = group_acquire(params->service, params->id, n_shards)) == NULL) {
        session_destroy(inst);
        return rc != 0 ? rc : AM_ENOMEM;
    }
    pthread_mutex_lock(&registry_lock);
    inst->group->insts[inst->shard] = inst;
    if (params->service != NULL && inst->group->shards == NULL) {
        inst->group->shards = am_service_shards((am_service_t *)params->service);
    }
    pthread_mutex_unlock(&registry_lock);
    char labels[300];
    snprintf(labels, sizeof(labels), "processor=\"%s\",reason=\"idle\"", params->id);
    inst->closed_idle = am_selfmetrics_counter("agentmeter_session_closed_total",
                                               "Sessions closed, by reason.", labels);
    snprintf(labels, sizeof(labels), "processor=\"%s\",reason=\"evicted\"", params->id);
    inst->closed_evicted = am_selfmetrics_counter("agentmeter_session_closed_total",
                                                  "Sessions closed, by reason.", labels);
    snprintf(labels, sizeof(labels), "processor=\"%s\",reason=\"shutdown\"", params->id);
    inst->closed_shutdown = am_selfmetrics_counter("agentmeter_session_closed_total",
                                                   "Sessions closed, by reason.", labels);
    snprintf(labels, sizeof(labels), "processor=\"%s\"", params->id);
    inst->open_gauge = am_selfmetrics_gauge("agentmeter_session_open", "Open sessions.", labels);
    *instance = inst;
    return 0;
}

static void session_validate(const void *config, const void *node, const char *prefix,
                             am_errors_t *errs)
{
    const session_config_t *cfg = config;
    AM_UNUSED(node);
    action_t *actions = NULL;
    size_t n = 0;
    if (actions_parse(cfg->actions, prefix, errs, &actions, &n) == 0) {
        actions_free(actions, n);
    }
}

static int session_start(void *instance)
{
    session_inst_t *inst = instance;
    load_state_once(inst); /* state_file, else a reload handoff */
    restore_own(inst);
    if (inst->loop != NULL) {
        inst->timer = am_malloc(sizeof(*inst->timer));
        if (inst->timer == NULL) {
            return AM_ENOMEM;
        }
        uv_timer_init(inst->loop, inst->timer);
        inst->timer->data = inst;
        uv_timer_start(inst->timer, tick_cb, 1000, 1000);
    }
    return 0;
}

static void timer_closed(uv_handle_t *handle)
{
    am_free(handle);
}

/* Close or persist every session of one instance (on its thread). */
static void final_flush(void *arg)
{
    session_inst_t *inst = arg;
    if (inst->group->persist) {
        snapshot_own(inst);
        return;
    }
    uint64_t now = inst_now(inst);
    am_batch_t *out = NULL;
    while (inst->lru_head != NULL) {
        close_session(inst, inst->lru_head, CLOSE_SHUTDOWN, true, &out, now);
    }
    emit(inst, out);
}

static void session_shutdown(void *instance)
{
    session_inst_t *inst = instance;
    if (inst->shut) {
        return;
    }
    inst->shut = true;
    if (inst->timer != NULL) {
        uv_timer_stop(inst->timer);
        uv_close((uv_handle_t *)inst->timer, timer_closed);
        inst->timer = NULL;
    }
    group_t *g = inst->group;
    pthread_mutex_lock(&registry_lock);
    int created = 0;
    for (int i = 0; i < g->n_shards; i++) {
        created += g->insts[i] != NULL;
    }
    bool last = ++g->n_shut >= created;
    pthread_mutex_unlock(&registry_lock);
    if (!last) {
        return;
    }
    /* A config reload whose new service runs this processor too. */
    am_service_t *next_service =
        g->service != NULL ? am_service_reload_successor((am_service_t *)g->service) : NULL;
    bool successor = next_service != NULL && am_service_uses(next_service, "processors", g->id);
    bool file = inst->cfg->state_file != NULL && inst->cfg->state_file[0] != '\0';
    g->persist = file || successor;
    /* Every tracetree has flushed: hand-offs still queued on the owners run
     * before these calls (FIFO). */
    for (int i = 0; i < g->n_shards; i++) {
        if (g->insts[i] != NULL) {
            run_on(g, i, final_flush, g->insts[i], true);
        }
    }
    if (file) {
        write_state(g, inst->cfg->state_file);
    }
    if (successor) {
        size_t len = 0;
        char *text = state_text(g, &len);
        if (text != NULL) {
            AM_INFO(COMP, "%s: config reload: open sessions stay open for the new config",
                    inst->id);
            am_state_handoff_put(g->id, text);
        } else {
            AM_ERROR(COMP, "%s: out of memory: open sessions lost in the config reload", inst->id);
        }
    }
}

static void session_destroy(void *instance)
{
    session_inst_t *inst = instance;
    if (inst == NULL) {
        return;
    }
    while (inst->lru_head != NULL) {
        sess_t *s = inst->lru_head;
        map_remove(inst, s);
        sess_free(s);
    }
    if (inst->group != NULL) {
        pthread_mutex_lock(&registry_lock);
        if (inst->group->insts[inst->shard] == inst) {
            inst->group->insts[inst->shard] = NULL;
        }
        pthread_mutex_unlock(&registry_lock);
        group_release(inst->group);
    }
    actions_free(inst->actions, inst->n_actions);
    am_free(inst->map.buckets);
    am_free(inst->id);
    am_free(inst);
}

void am__session_set_clock(void *instance, am__session_clock_fn fn, void *arg)
{
    session_inst_t *inst = instance;
    inst->clock = fn != NULL ? fn : default_clock;
    inst->clock_arg = arg;
}

void am__session_set_shards(void *instance, am_shards_t *shards)
{
    session_inst_t *inst = instance;
    inst->group->shards = shards;
}

void am__session_stats(void *instance, am__session_stats_t *out)
{
    session_inst_t *inst = instance;
    *out = inst->stats;
}

const am_component_ops_t am_processor_session_ops = {
    .type = "session",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Cost per agent session and per action; session.summary events.",
    .options = session_options,
    .config_size = sizeof(session_config_t),
    .validate = session_validate,
    .create = session_create,
    .start = session_start,
    .consume = session_consume,
    .shutdown = session_shutdown,
    .destroy = session_destroy,
};
