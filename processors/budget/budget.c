/*
 * budget.c - the `budget` processor: spend per (budget, key, window), one
 * `budget.threshold` event per crossing, spans marked after it, and a live
 * HTTP API (ARCHITECTURE.md §8, §9).
 *
 * Exactly one event per budget, key, window and threshold, even when many
 * traces of one key cross at once on different shards: every (budget, key)
 * has one owning shard, am_shard_for_key("<budget>\x1f<key>"), and only the
 * instance there writes its state.  Trace shards sum the spend of each key
 * in a trace and post it there (am_shard_post_fn); the owner adds it,
 * rolls the window, compares with each threshold and emits the event from
 * its own thread into its own `next`.
 *
 * The owner then publishes the key's status (spent, status, window) into a
 * map shared by the group under a read-write lock: trace shards read it to
 * mark spans (`cost.budget.status`, `cost.budget.name`; the most severe
 * budget wins), the HTTP API reads it on the main thread.  A trace is marked
 * with the status as it was before its own spend is applied, so "spans after
 * the crossing" means spans of traces processed after the owner applied the
 * crossing one.  Reads take the lock shared, once per (trace, budget, key).
 *
 * Windows (UTC, processing time so an overrun is seen while it happens):
 *   trace     evaluated on the trace shard alone (a trace is whole there);
 *             spans from the crossing on, in end-time order, are marked
 *   session   never resets: the lifetime of the key (usually session.id);
 *             forgotten after `expire_after` without spend
 *   hour/day/month   UTC calendar windows; a new window starts from zero
 *   <duration>       rolling: 60 buckets of duration/60; a threshold re-arms
 *                    when the spend falls back below it
 *
 * Budgets use `type: cost` (the span's exact cost_self, in nano-units) or
 * `type: tokens` (input + output tokens of billable spans).
 *
 * state_file: every instance serializes its state on its tick into the
 * group; shard 0 writes the joined file (temp + fsync + rename) every
 * state_interval, and the last instance to shut down writes it once more
 * after every owner has drained.  At start the file is read once per group
 * and each instance takes the keys it owns.  A corrupt file is reported,
 * renamed to <file>.corrupt-<unix seconds> and ignored.
 *
 * Config reload (SIGHUP with a changed config builds a new service, shuts
 * the old one down, then starts the new one, whose instances are created
 * at start): groups are keyed by (service, id), so the new service gets new
 * groups.  When the last instance of a group shuts down, every owner
 * snapshots its keys exactly as for state_file and the joined state text
 * goes into a process-global handoff slot keyed by the processor id
 * ("budget", "budget/team"), under a mutex.  The first start of a group of
 * that id in this process takes the slot.  Budgets emit nothing at
 * shutdown, so this is done at every shutdown: a final one leaves a slot
 * nobody takes, freed at exit.  Source of truth: a readable state_file when
 * one is configured (the old group just wrote it), else the handoff.
 *
 * A changed definition (the state records each budget's type, window, limit
 * and thresholds under "defs"): keys of budget names that no longer exist
 * are dropped; a budget whose type or window changed starts from zero (its
 * old amounts are in other units or windows); otherwise the spend is kept.
 * A threshold counts as already reported only when the limit is unchanged
 * and the old definition had crossed the same fraction: with a new limit
 * every threshold the kept spend reaches is new and is reported once, on
 * the key's next spend.  State without "defs" (older files) is kept as is.
 *
 * Keys: "<budget>\x1f<key>" is built at its full length (on the stack when
 * short, else on the heap), so long scope values never share a budget; the
 * HTTP API decodes keys of any length too.
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_event_json.h"
#include "am_http.h"
#include "am_log.h"
#include "am_statefile.h"
#include "am_selfmetrics.h"
#include "am_service.h"
#include "am_shard.h"
#include "processors/budget/budget_internal.h"

#define COMP "budget"
#define MAX_THRESHOLDS 8
#define MAX_KEYS_PER_TRACE 16
#define N_BUCKETS 60
#define STATE_VERSION 1
#define NS_PER_MS UINT64_C(1000000)
#define NS_PER_S UINT64_C(1000000000)
#define KEY_BUF 256 /* keys up to this fit on the stack; longer ones use the heap */

static const char *const session_keys[] = {"session.id", "gen_ai.conversation.id",
                                           "langfuse.session.id",
                                           "traceloop.association.properties.session_id", NULL};
static const char *const user_keys[] = {"user.id", "enduser.id", "langfuse.user.id", NULL};
static const char *const input_keys[] = {"gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                                         "llm.token_count.prompt",    "ai.usage.inputTokens",
                                         "ai.usage.promptTokens",     NULL};
static const char *const output_keys[] = {
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
    "ai.usage.outputTokens",      "ai.usage.completionTokens",      NULL};
static const char *const operation_keys[] = {"gen_ai.operation.name", "openinference.span.kind",
                                             "traceloop.span.kind", "llm.request.type", NULL};

/* ---- options and budget definitions ----------------------------------- */

typedef struct budget_config {
    const am_node_t *budgets;
    char *state_file;
    int64_t state_interval_ms;
    int64_t expire_after_ms;
} budget_config_t;

static const am_option_t budget_options[] = {
    AM_OPT("budgets", AM_OPT_NODE, NULL, budget_config_t, budgets,
           "List of {name, scope (attribute or trace), window (trace|session|hour|day|month|"
           "duration), type (cost|tokens), limit, thresholds (default [0.8, 1.0])}."),
    AM_OPT("state_file", AM_OPT_STRING, NULL, budget_config_t, state_file,
           "Keep spent amounts across restarts in this file (written atomically)."),
    {.name = "state_interval",
     .type = AM_OPT_DURATION,
     .def = "30s",
     .offset = offsetof(budget_config_t, state_interval_ms),
     .min = 1,
     .max = 1e12,
     .doc = "How often state_file is rewritten (and at shutdown)."},
    {.name = "expire_after",
     .type = AM_OPT_DURATION,
     .def = "24h",
     .offset = offsetof(budget_config_t, expire_after_ms),
     .min = 1,
     .max = 1e12,
     .doc = "Forget a key of a session window, or of a finished window, after this long "
            "without spend."},
    AM_OPT_END,
};

typedef enum { W_TRACE, W_SESSION, W_HOUR, W_DAY, W_MONTH, W_ROLLING } window_kind_t;

typedef struct budget {
    char *name;
    char *scope;
    const char *const *scope_keys; /* fallbacks (§5) or {scope, NULL} */
    const char *single[2];
    bool scope_trace;
    window_kind_t window;
    char *window_text;
    uint64_t rolling_ns;
    bool tokens;
    int64_t limit;
    double thresholds[MAX_THRESHOLDS];
    int64_t thr_amount[MAX_THRESHOLDS];
    size_t n_thresholds;
} budget_t;

static void budgets_free(budget_t *budgets, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        am_free(budgets[i].name);
        am_free(budgets[i].scope);
        am_free(budgets[i].window_text);
    }
    am_free(budgets);
}

static const char *scalar(const am_node_t *map, const char *key)
{
    const am_node_t *n = am_node_get(map, key);
    return n != NULL && n->kind == AM_NODE_SCALAR ? n->str : NULL;
}

static int budgets_parse(const am_node_t *node, const char *prefix, am_errors_t *errs,
                         budget_t **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (node == NULL || node->kind == AM_NODE_NULL) {
        return 0;
    }
    if (node->kind != AM_NODE_SEQ) {
        am_errors_add(errs, node, "%s.budgets: expected a list of budgets", prefix);
        return AM_EINVAL;
    }
    budget_t *budgets = am_calloc(node->n_children + 1, sizeof(*budgets));
    if (budgets == NULL) {
        return AM_ENOMEM;
    }
    size_t n = 0;
    int rc = 0;
    static const char *const known[] = {"name",  "scope",      "window", "type",
                                        "limit", "thresholds", NULL};
    for (size_t i = 0; i < node->n_children; i++) {
        const am_node_t *item = node->children[i];
        char where[256];
        snprintf(where, sizeof(where), "%s.budgets[%zu]", prefix, i);
        if (item->kind != AM_NODE_MAP) {
            am_errors_add(errs, item, "%s: expected a map", where);
            rc = AM_EINVAL;
            continue;
        }
        for (size_t k = 0; k < item->n_children; k++) {
            bool ok = false;
            for (size_t j = 0; known[j] != NULL; j++) {
                ok |= strcmp(known[j], item->children[k]->key) == 0;
            }
            if (!ok) {
                const char *best = am_did_you_mean(item->children[k]->key, known);
                am_errors_add(errs, item->children[k], "%s: unknown key \"%s\"%s%s%s", where,
                              item->children[k]->key, best ? "; did you mean \"" : "",
                              best ? best : "", best ? "\"?" : "");
                rc = AM_EINVAL;
            }
        }
        budget_t *b = &budgets[n++];
        const char *name = scalar(item, "name");
        const char *scope = scalar(item, "scope");
        const char *window = scalar(item, "window");
        const char *type = scalar(item, "type");
        const char *limit = scalar(item, "limit");
        if (name == NULL || name[0] == '\0' || strchr(name, '/') != NULL) {
            am_errors_add(errs, item, "%s.name: required (no '/')", where);
            rc = AM_EINVAL;
            continue;
        }
        for (size_t j = 0; j + 1 < n; j++) {
            if (strcmp(budgets[j].name, name) == 0) {
                am_errors_add(errs, item, "%s.name: \"%s\" is defined twice", where, name);
                rc = AM_EINVAL;
            }
        }
        if (scope == NULL || scope[0] == '\0') {
            am_errors_add(errs, item, "%s.scope: required (an attribute name or `trace`)", where);
            rc = AM_EINVAL;
            continue;
        }
        b->name = am_strdup(name);
        b->scope = am_strdup(scope);
        if (b->name == NULL || b->scope == NULL) {
            rc = AM_ENOMEM;
            break;
        }
        b->scope_trace = strcmp(scope, "trace") == 0;
        b->single[0] = b->scope;
        b->scope_keys = strcmp(scope, "session.id") == 0 ? session_keys
                        : strcmp(scope, "user.id") == 0  ? user_keys
                                                         : b->single;
        if (window == NULL) {
            window = b->scope_trace ? "trace" : "day";
        }
        if ((b->window_text = am_strdup(window)) == NULL) {
            rc = AM_ENOMEM;
            break;
        }
        int64_t ms = 0;
        if (strcmp(window, "trace") == 0) {
            b->window = W_TRACE;
        } else if (strcmp(window, "session") == 0) {
            b->window = W_SESSION;
        } else if (strcmp(window, "hour") == 0) {
            b->window = W_HOUR;
        } else if (strcmp(window, "day") == 0) {
            b->window = W_DAY;
        } else if (strcmp(window, "month") == 0) {
            b->window = W_MONTH;
        } else if (am_parse_duration_ms(window, &ms) == 0 && ms >= 1000) {
            b->window = W_ROLLING;
            b->rolling_ns = (uint64_t)ms * NS_PER_MS;
        } else {
            am_errors_add(errs, am_node_get(item, "window"),
                          "%s.window: \"%s\" is not trace, session, hour, day, month or a "
                          "duration of at least 1s",
                          where, window);
            rc = AM_EINVAL;
        }
        if (b->scope_trace && b->window != W_TRACE) {
            am_errors_add(errs, item, "%s: scope `trace` needs window `trace`", where);
            rc = AM_EINVAL;
        }
        b->tokens = type != NULL && strcmp(type, "tokens") == 0;
        if (type != NULL && !b->tokens && strcmp(type, "cost") != 0) {
            am_errors_add(errs, am_node_get(item, "type"), "%s.type: expected cost or tokens",
                          where);
            rc = AM_EINVAL;
        }
        if (limit == NULL) {
            am_errors_add(errs, item, "%s.limit: required", where);
            rc = AM_EINVAL;
        } else if (b->tokens) {
            char *end;
            errno = 0;
            long long v = strtoll(limit, &end, 10);
            if (errno != 0 || *end != '\0' || v <= 0) {
                am_errors_add(errs, am_node_get(item, "limit"),
                              "%s.limit: expected a positive token count", where);
                rc = AM_EINVAL;
            }
            b->limit = v;
        } else if (am_money_parse(limit, &b->limit) != 0 || b->limit <= 0) {
            am_errors_add(errs, am_node_get(item, "limit"),
                          "%s.limit: expected a positive amount such as 5.00", where);
            rc = AM_EINVAL;
        }
        const am_node_t *thr = am_node_get(item, "thresholds");
        if (thr == NULL) {
            b->thresholds[0] = 0.8;
            b->thresholds[1] = 1.0;
            b->n_thresholds = 2;
        } else if (thr->kind != AM_NODE_SEQ || thr->n_children == 0 ||
                   thr->n_children > MAX_THRESHOLDS) {
            am_errors_add(errs, thr, "%s.thresholds: expected a list of 1 to %d fractions", where,
                          MAX_THRESHOLDS);
            rc = AM_EINVAL;
        } else {
            for (size_t t = 0; t < thr->n_children; t++) {
                const am_node_t *v = thr->children[t];
                char *end = NULL;
                double d = v->kind == AM_NODE_SCALAR ? strtod(v->str, &end) : -1;
                if (end == NULL || *end != '\0' || !(d > 0) || d > 100 ||
                    (t > 0 && d <= b->thresholds[t - 1])) {
                    am_errors_add(errs, v,
                                  "%s.thresholds[%zu]: expected increasing fractions of the "
                                  "limit such as 0.8",
                                  where, t);
                    rc = AM_EINVAL;
                    break;
                }
                b->thresholds[b->n_thresholds++] = d;
            }
        }
        for (size_t t = 0; t < b->n_thresholds; t++) {
            b->thr_amount[t] = (int64_t)llround((double)b->limit * b->thresholds[t]);
        }
    }
    if (rc != 0) {
        budgets_free(budgets, n);
        return rc;
    }
    *out = budgets;
    *n_out = n;
    return 0;
}

/* ---- windows ------------------------------------------------------------- */

int am__budget_calendar_window(const char *window, uint64_t now, uint64_t *start, uint64_t *end)
{
    time_t secs = (time_t)(now / NS_PER_S);
    struct tm tm;
    gmtime_r(&secs, &tm);
    tm.tm_sec = 0;
    if (strcmp(window, "hour") == 0) {
        tm.tm_min = 0;
        time_t s = timegm(&tm);
        *start = (uint64_t)s * NS_PER_S;
        *end = (uint64_t)(s + 3600) * NS_PER_S;
        return 0;
    }
    tm.tm_min = 0;
    tm.tm_hour = 0;
    if (strcmp(window, "day") == 0) {
        time_t s = timegm(&tm);
        *start = (uint64_t)s * NS_PER_S;
        *end = (uint64_t)(s + 86400) * NS_PER_S;
        return 0;
    }
    if (strcmp(window, "month") == 0) {
        tm.tm_mday = 1;
        time_t s = timegm(&tm);
        tm.tm_mon += 1;
        if (tm.tm_mon == 12) {
            tm.tm_mon = 0;
            tm.tm_year += 1;
        }
        time_t e = timegm(&tm);
        *start = (uint64_t)s * NS_PER_S;
        *end = (uint64_t)e * NS_PER_S;
        return 0;
    }
    return AM_EINVAL;
}

/* The window of `b` at `now`: [start, end); end 0 = open (session). */
static void window_at(const budget_t *b, uint64_t now, uint64_t first, uint64_t *start,
                      uint64_t *end)
{
    switch (b->window) {
    case W_HOUR:
        am__budget_calendar_window("hour", now, start, end);
        break;
    case W_DAY:
        am__budget_calendar_window("day", now, start, end);
        break;
    case W_MONTH:
        am__budget_calendar_window("month", now, start, end);
        break;
    case W_ROLLING:
        *start = now > b->rolling_ns ? now - b->rolling_ns : 0;
        *end = now;
        break;
    case W_SESSION:
    case W_TRACE:
        *start = first;
        *end = 0;
        break;
    }
}

/* ---- string map ------------------------------------------------------------ */

static uint64_t key_hash(const char *key)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
        h = (h ^ *p) * UINT64_C(1099511628211);
    }
    return h;
}

typedef struct smap_entry {
    char *key;
    void *value;
    struct smap_entry *next;
} smap_entry_t;

typedef struct smap {
    smap_entry_t **buckets;
    size_t n_buckets, count;
} smap_t;

static int smap_init(smap_t *m, size_t n)
{
    m->buckets = am_calloc(n, sizeof(*m->buckets));
    m->n_buckets = n;
    m->count = 0;
    return m->buckets != NULL ? 0 : AM_ENOMEM;
}

static void *smap_get(const smap_t *m, const char *key)
{
    for (smap_entry_t *e = m->buckets[key_hash(key) % m->n_buckets]; e != NULL; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            return e->value;
        }
    }
    return NULL;
}

static int smap_put(smap_t *m, const char *key, void *value)
{
    if (m->count >= m->n_buckets * 2) {
        size_t n = m->n_buckets * 4;
        smap_entry_t **buckets = am_calloc(n, sizeof(*buckets));
        if (buckets != NULL) {
            for (size_t i = 0; i < m->n_buckets; i++) {
                for (smap_entry_t *e = m->buckets[i]; e != NULL;) {
                    smap_entry_t *next = e->next;
                    size_t b = key_hash(e->key) % n;
                    e->next = buckets[b];
                    buckets[b] = e;
                    e = next;
                }
            }
            am_free(m->buckets);
            m->buckets = buckets;
            m->n_buckets = n;
        }
    }
    smap_entry_t *e = am_calloc(1, sizeof(*e));
    if (e == NULL || (e->key = am_strdup(key)) == NULL) {
        am_free(e);
        return AM_ENOMEM;
    }
    size_t b = key_hash(key) % m->n_buckets;
    e->value = value;
    e->next = m->buckets[b];
    m->buckets[b] = e;
    m->count++;
    return 0;
}

static void *smap_remove(smap_t *m, const char *key)
{
    for (smap_entry_t **p = &m->buckets[key_hash(key) % m->n_buckets]; *p != NULL;
         p = &(*p)->next) {
        if (strcmp((*p)->key, key) == 0) {
            smap_entry_t *e = *p;
            void *value = e->value;
            *p = e->next;
            am_free(e->key);
            am_free(e);
            m->count--;
            return value;
        }
    }
    return NULL;
}

static void smap_free(smap_t *m, void (*free_value)(void *))
{
    for (size_t i = 0; m->buckets != NULL && i < m->n_buckets; i++) {
        for (smap_entry_t *e = m->buckets[i]; e != NULL;) {
            smap_entry_t *next = e->next;
            if (free_value != NULL) {
                free_value(e->value);
            }
            am_free(e->key);
            am_free(e);
            e = next;
        }
    }
    am_free(m->buckets);
    m->buckets = NULL;
}

/* ---- state ---------------------------------------------------------------- */

typedef enum { ST_OK, ST_WARNING, ST_EXCEEDED } status_t;
static const char *const status_names[] = {"ok", "warning", "exceeded"};

/* Owner-side state of one (budget, key). */
typedef struct bstate {
    size_t budget;
    char *key;
    uint64_t window_start;
    uint64_t first_ns;
    uint64_t last_spend_ns;
    int64_t spent;
    uint32_t crossed; /* bit t: thresholds[t] crossed in this window */
    char currency[8];
    int64_t buckets[N_BUCKETS];
    uint64_t bucket_epoch; /* index (time / bucket width) of the newest bucket */
} bstate_t;

/* What the owner publishes for readers. */
typedef struct pub {
    size_t budget;
    char *key;
    status_t status;
    int64_t spent;
    uint64_t window_start, window_end;
    char currency[8];
} pub_t;

static void bstate_free(void *p)
{
    bstate_t *st = p;
    if (st != NULL) {
        am_free(st->key);
        am_free(st);
    }
}

static void pub_free(void *p)
{
    pub_t *pub = p;
    if (pub != NULL) {
        am_free(pub->key);
        am_free(pub);
    }
}

typedef struct budget_inst budget_inst_t;

typedef struct group {
    const void *service;
    char *id;
    int n_shards;
    int refs;
    int n_shut;
    budget_inst_t **insts;
    am_shards_t *shards;
    budget_t *budgets;
    size_t n_budgets;
    pthread_rwlock_t pub_lock;
    smap_t pub;           /* "<budget index>\x1f<key>" -> pub_t */
    pthread_mutex_t lock; /* snapshots, state load */
    char **snaps;
    bool state_loaded;
    json_object *loaded;
    json_object *loaded_defs; /* "defs" of the loaded state (NULL: none) */
    uint64_t last_write_ns;
    bool route_added;
    am__budget_clock_fn api_clock;
    void *api_clock_arg;
    struct group *next;
} group_t;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static group_t *registry;

struct budget_inst {
    char *id;
    int shard;
    group_t *group;
    am_consumer_t *next;
    uv_loop_t *loop;
    uv_timer_t *timer;
    const void *service;
    const budget_config_t *cfg;
    smap_t states; /* "<budget name>\x1f<key>" -> bstate_t, owned keys only */
    am__budget_clock_fn clock;
    void *clock_arg;
    bool shut;
    uint64_t events;
    am_counter_t *events_counter;
};

static uint64_t default_clock(void *arg)
{
    AM_UNUSED(arg);
    return am_now_unix_nano();
}

static group_t *group_acquire(const void *service, const char *id, int n_shards,
                              const budget_config_t *cfg)
{
    pthread_mutex_lock(&registry_lock);
    group_t *g = registry;
    while (g != NULL && !(g->service == service && strcmp(g->id, id) == 0)) {
        g = g->next;
    }
    if (g == NULL && (g = am_calloc(1, sizeof(*g))) != NULL) {
        am_errors_t errs = {0};
        g->service = service;
        g->n_shards = n_shards;
        g->api_clock = default_clock;
        g->id = am_strdup(id);
        g->insts = am_calloc((size_t)n_shards, sizeof(*g->insts));
        g->snaps = am_calloc((size_t)n_shards, sizeof(*g->snaps));
        int rc = budgets_parse(cfg->budgets, id, &errs, &g->budgets, &g->n_budgets);
        if (rc != 0) {
            am_errors_print(&errs, stderr);
        }
        am_errors_clear(&errs);
        if (rc != 0 || g->id == NULL || g->insts == NULL || g->snaps == NULL ||
            smap_init(&g->pub, 256) != 0) {
            budgets_free(g->budgets, g->n_budgets);
            smap_free(&g->pub, NULL);
            am_free(g->id);
            am_free(g->insts);
            am_free(g->snaps);
            am_free(g);
            g = NULL;
        } else {
            pthread_rwlock_init(&g->pub_lock, NULL);
            pthread_mutex_init(&g->lock, NULL);
            g->next = registry;
            registry = g;
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
    smap_free(&g->pub, pub_free);
    for (int i = 0; i < g->n_shards; i++) {
        am_free(g->snaps[i]);
    }
    if (g->loaded != NULL) {
        json_object_put(g->loaded);
    }
    if (g->loaded_defs != NULL) {
        json_object_put(g->loaded_defs);
    }
    budgets_free(g->budgets, g->n_budgets);
    pthread_rwlock_destroy(&g->pub_lock);
    pthread_mutex_destroy(&g->lock);
    am_free(g->snaps);
    am_free(g->insts);
    am_free(g->id);
    am_free(g);
}

static void run_on(group_t *g, int shard, am_shard_fn fn, void *arg, bool wait)
{
    am_shards_run(g->shards, shard, fn, arg, wait);
}

/* "<prefix>\x1f<key>" at its full length: in buf[size] when it fits, else
 * on the heap.  Release with key_done().  NULL when out of memory. */
static char *key_join(char *buf, size_t size, const char *prefix, const char *key)
{
    size_t plen = strlen(prefix), klen = strlen(key);
    char *out = plen + klen + 2 <= size ? buf : am_malloc(plen + klen + 2);
    if (out != NULL) {
        memcpy(out, prefix, plen);
        out[plen] = '\x1f';
        memcpy(out + plen + 1, key, klen + 1);
    }
    return out;
}

static void key_done(char *k, const char *buf)
{
    if (k != buf) {
        am_free(k);
    }
}

static char *pub_key(char *buf, size_t size, size_t budget, const char *key)
{
    char num[24];
    snprintf(num, sizeof(num), "%zu", budget);
    return key_join(buf, size, num, key);
}

static void publish(group_t *g, const bstate_t *st, status_t status, uint64_t ws, uint64_t we)
{
    char buf[KEY_BUF];
    char *k = pub_key(buf, sizeof(buf), st->budget, st->key);
    if (k == NULL) {
        return;
    }
    pthread_rwlock_wrlock(&g->pub_lock);
    pub_t *pub = smap_get(&g->pub, k);
    if (pub == NULL) {
        pub = am_calloc(1, sizeof(*pub));
        if (pub == NULL || (pub->key = am_strdup(st->key)) == NULL ||
            smap_put(&g->pub, k, pub) != 0) {
            pub_free(pub);
            pthread_rwlock_unlock(&g->pub_lock);
            key_done(k, buf);
            return;
        }
        pub->budget = st->budget;
    }
    pub->status = status;
    pub->spent = st->spent;
    pub->window_start = ws;
    pub->window_end = we;
    memcpy(pub->currency, st->currency, sizeof(pub->currency));
    pthread_rwlock_unlock(&g->pub_lock);
    key_done(k, buf);
}

static void unpublish(group_t *g, const bstate_t *st)
{
    char buf[KEY_BUF];
    char *k = pub_key(buf, sizeof(buf), st->budget, st->key);
    if (k == NULL) {
        return;
    }
    pthread_rwlock_wrlock(&g->pub_lock);
    pub_free(smap_remove(&g->pub, k));
    pthread_rwlock_unlock(&g->pub_lock);
    key_done(k, buf);
}

/* The published status of (budget, key) as it stands at `now`. */
static status_t read_status(group_t *g, size_t budget, const char *key, uint64_t now)
{
    char buf[KEY_BUF];
    char *k = pub_key(buf, sizeof(buf), budget, key);
    if (k == NULL) {
        return ST_OK;
    }
    status_t status = ST_OK;
    pthread_rwlock_rdlock(&g->pub_lock);
    const pub_t *pub = smap_get(&g->pub, k);
    if (pub != NULL &&
        (g->budgets[budget].window == W_ROLLING || pub->window_end == 0 || now < pub->window_end)) {
        status = pub->status;
    }
    pthread_rwlock_unlock(&g->pub_lock);
    key_done(k, buf);
    return status;
}

/* ---- events ------------------------------------------------------------------ */

static json_object *json_amount(const budget_t *b, int64_t v)
{
    if (b->tokens) {
        return json_object_new_int64(v);
    }
    return am_json_money(v);
}

static int add_threshold_event(am_batch_t *batch, const budget_t *b, const char *key, size_t t,
                               int64_t spent, uint64_t ws, uint64_t we, const char *currency,
                               const char *trace_id, uint64_t now)
{
    am_arena_t *arena = batch->arena;
    const char *status = b->thresholds[t] >= 1.0 ? "exceeded" : "warning";
    json_object *o = json_object_new_object();
    json_object_object_add(o, "event", json_object_new_string("budget.threshold"));
    json_object_object_add(o, "time", am_json_time(now));
    json_object_object_add(o, "budget", json_object_new_string(b->name));
    json_object_object_add(o, "scope", json_object_new_string(b->scope));
    json_object_object_add(o, "key", json_object_new_string(key));
    json_object_object_add(o, "window", json_object_new_string(b->window_text));
    json_object_object_add(o, "window_start", am_json_time(ws));
    json_object_object_add(o, "window_end", we != 0 ? am_json_time(we) : NULL);
    json_object_object_add(o, "threshold", am_json_ratio(b->thresholds[t]));
    json_object_object_add(o, "spent", json_amount(b, spent));
    json_object_object_add(o, "limit", json_amount(b, b->limit));
    json_object_object_add(o, "currency", b->tokens ? NULL : json_object_new_string(currency));
    json_object_object_add(o, "status", json_object_new_string(status));
    json_object_object_add(o, "trace_id",
                           trace_id != NULL ? json_object_new_string(trace_id) : NULL);
    const char *text =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    am_event_t ev = {
        .kind = "budget.threshold",
        .scope = am_arena_strdup(arena, b->scope),
        .key = am_arena_strdup(arena, key),
        .name = am_arena_strdup(arena, b->name),
        .json = am_arena_strdup(arena, text),
        .time_unix_nano = now,
        .amount = spent,
        .limit = b->limit,
        .threshold = b->thresholds[t],
        .currency = b->tokens ? NULL : am_arena_strdup(arena, currency),
    };
    json_object_put(o);
    if (ev.scope == NULL || ev.key == NULL || ev.name == NULL || ev.json == NULL) {
        return AM_ENOMEM;
    }
    ev.json_len = strlen(ev.json);
    return am_batch_add_event(batch, &ev);
}

static void emit(budget_inst_t *inst, am_batch_t *batch)
{
    if (batch == NULL) {
        return;
    }
    if (batch->n_events > 0 && inst->next != NULL && am_consume(inst->next, batch) != AM_OK) {
        AM_WARN(COMP, "%s: downstream refused %zu budget event(s)", inst->id, batch->n_events);
    }
    am_batch_unref(batch);
}

/* ---- owner side ---------------------------------------------------------------- */

static status_t state_status(const budget_t *b, const bstate_t *st)
{
    if (st->spent >= b->limit) {
        return ST_EXCEEDED;
    }
    return st->crossed != 0 ? ST_WARNING : ST_OK;
}

static void rolling_advance(const budget_t *b, bstate_t *st, uint64_t now)
{
    uint64_t width = b->rolling_ns / N_BUCKETS;
    uint64_t epoch = now / (width > 0 ? width : 1);
    if (st->bucket_epoch == 0 || epoch >= st->bucket_epoch + N_BUCKETS) {
        memset(st->buckets, 0, sizeof(st->buckets));
    } else {
        for (uint64_t e = st->bucket_epoch + 1; e <= epoch; e++) {
            st->buckets[e % N_BUCKETS] = 0;
        }
    }
    if (epoch > st->bucket_epoch) {
        st->bucket_epoch = epoch;
    }
    st->spent = 0;
    for (size_t i = 0; i < N_BUCKETS; i++) {
        st->spent += st->buckets[i];
    }
}

typedef struct spend_msg {
    budget_inst_t *target;
    size_t budget;
    char *key;
    int64_t amount;
    char currency[8];
    char trace_id[33];
} spend_msg_t;

static char *state_key(char *buf, size_t size, const budget_t *b, const char *key)
{
    return key_join(buf, size, b->name, key);
}

static bstate_t *state_get(budget_inst_t *inst, size_t budget, const char *key, bool create)
{
    char buf[KEY_BUF];
    char *k = state_key(buf, sizeof(buf), &inst->group->budgets[budget], key);
    if (k == NULL) {
        return NULL;
    }
    bstate_t *st = smap_get(&inst->states, k);
    if (st == NULL && create) {
        st = am_calloc(1, sizeof(*st));
        if (st == NULL || (st->key = am_strdup(key)) == NULL ||
            smap_put(&inst->states, k, st) != 0) {
            bstate_free(st);
            st = NULL;
        } else {
            st->budget = budget;
            snprintf(st->currency, sizeof(st->currency), "USD");
        }
    }
    key_done(k, buf);
    return st;
}

static void apply_spend(budget_inst_t *inst, spend_msg_t *msg)
{
    group_t *g = inst->group;
    const budget_t *b = &g->budgets[msg->budget];
    uint64_t now = inst->clock(inst->clock_arg);
    bstate_t *st = state_get(inst, msg->budget, msg->key, true);
    if (st == NULL) {
        AM_ERROR(COMP, "%s: out of memory: spend of %s/%s not counted", inst->id, b->name,
                 msg->key);
        return;
    }
    if (st->first_ns == 0) {
        st->first_ns = now;
    }
    if (msg->currency[0] != '\0') {
        memcpy(st->currency, msg->currency, sizeof(st->currency));
    }
    uint64_t ws = 0, we = 0;
    window_at(b, now, st->first_ns, &ws, &we);
    if (b->window == W_ROLLING) {
        rolling_advance(b, st, now);
        st->buckets[st->bucket_epoch % N_BUCKETS] += msg->amount;
        st->spent += msg->amount;
        for (size_t t = 0; t < b->n_thresholds; t++) {
            if (st->spent - msg->amount < b->thr_amount[t]) {
                st->crossed &= ~(1u << t); /* re-arm below the threshold */
            }
        }
    } else {
        if (b->window != W_SESSION && st->window_start != ws) {
            st->window_start = ws;
            st->spent = 0;
            st->crossed = 0;
        }
        if (b->window == W_SESSION) {
            st->window_start = ws;
        }
        st->spent += msg->amount;
    }
    st->last_spend_ns = now;
    am_batch_t *out = NULL;
    for (size_t t = 0; t < b->n_thresholds; t++) {
        if ((st->crossed & (1u << t)) != 0 || st->spent < b->thr_amount[t]) {
            continue;
        }
        st->crossed |= 1u << t;
        if (out == NULL) {
            out = am_batch_new(AM_SIGNAL_TRACES);
        }
        if (out == NULL ||
            add_threshold_event(out, b, st->key, t, st->spent, ws, we, st->currency,
                                msg->trace_id[0] != '\0' ? msg->trace_id : NULL, now) != 0) {
            AM_ERROR(COMP, "%s: out of memory: budget.threshold %s/%s lost", inst->id, b->name,
                     st->key);
            continue;
        }
        inst->events++;
        am_counter_add(inst->events_counter, 1);
        AM_INFO(COMP, "budget %s key %s crossed %.0f%% of its limit", b->name, st->key,
                b->thresholds[t] * 100);
    }
    publish(g, st, state_status(b, st), ws, we);
    emit(inst, out);
}

static void spend_run(void *arg)
{
    spend_msg_t *msg = arg;
    apply_spend(msg->target, msg);
    am_free(msg->key);
    am_free(msg);
}

/* ---- trace side ------------------------------------------------------------------ */

static bool span_billable(const am_pb_span_t *span, const am_pb_resource_t *resource)
{
    const char *status;
    if (am_attr_get_str(span->attributes, span->n_attributes, "cost.status", &status)) {
        return strcmp(status, "not_billable") != 0;
    }
    const char *op = am_attr_first_str(span, resource, operation_keys);
    return op == NULL || (strcmp(op, "invoke_agent") != 0 && strcmp(op, "create_agent") != 0 &&
                          strcmp(op, "invoke_workflow") != 0);
}

static int64_t span_amount(const budget_t *b, const am_span_ref_t *ref)
{
    if (!b->tokens) {
        return ref->cost_self;
    }
    if (!span_billable(ref->span, ref->resource)) {
        return 0;
    }
    int64_t in = 0, out = 0;
    am_attr_first_int(ref->span, ref->resource, input_keys, &in);
    am_attr_first_int(ref->span, ref->resource, output_keys, &out);
    return (in > 0 ? in : 0) + (out > 0 ? out : 0);
}

static const char *span_key(const budget_t *b, const am_span_ref_t *ref, const char *trace_hex)
{
    if (b->scope_trace) {
        return trace_hex;
    }
    return am_attr_first_str(ref->span, ref->resource, b->scope_keys);
}

typedef struct key_spend {
    const char *key;
    int64_t amount;
    status_t status;
    char currency[8];
} key_spend_t;

typedef struct order_item {
    uint64_t end;
    uint32_t index;
} order_item_t;

static int order_cmp(const void *a, const void *b)
{
    const order_item_t *x = a, *y = b;
    if (x->end != y->end) {
        return x->end < y->end ? -1 : 1;
    }
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* Mark spans: keep the most severe (budget, status) per span. */
typedef struct mark {
    status_t status;
    const char *budget;
} mark_t;

static void mark_span(mark_t *marks, uint32_t i, status_t status, const char *budget)
{
    if (status > marks[i].status) {
        marks[i].status = status;
        marks[i].budget = budget;
    }
}

/* window: trace.  Everything happens here: the trace is whole. */
static void eval_trace_window(budget_inst_t *inst, am_batch_t *batch, am_trace_t *trace, size_t bi,
                              key_spend_t *keys, size_t n_keys, const char *trace_hex,
                              mark_t *marks, uint64_t now)
{
    const budget_t *b = &inst->group->budgets[bi];
    order_item_t *order = am_malloc(trace->n_spans * sizeof(*order));
    if (order == NULL) {
        return;
    }
    uint64_t ws = UINT64_MAX, we = 0;
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        order[i].end = trace->spans[i].span->end_time_unix_nano;
        order[i].index = i;
        if (trace->spans[i].span->start_time_unix_nano < ws) {
            ws = trace->spans[i].span->start_time_unix_nano;
        }
        if (order[i].end > we) {
            we = order[i].end;
        }
    }
    qsort(order, trace->n_spans, sizeof(*order), order_cmp);
    for (size_t k = 0; k < n_keys; k++) {
        if (keys[k].amount < b->thr_amount[0]) {
            continue;
        }
        int64_t spent = 0;
        size_t next_thr = 0;
        status_t status = ST_OK;
        for (uint32_t o = 0; o < trace->n_spans; o++) {
            am_span_ref_t *ref = &trace->spans[order[o].index];
            const char *key = span_key(b, ref, trace_hex);
            if (key == NULL || strcmp(key, keys[k].key) != 0) {
                continue;
            }
            spent += span_amount(b, ref);
            while (next_thr < b->n_thresholds && spent >= b->thr_amount[next_thr]) {
                status = spent >= b->limit ? ST_EXCEEDED : ST_WARNING;
                if (add_threshold_event(batch, b, keys[k].key, next_thr, spent, ws, we,
                                        keys[k].currency, trace_hex, now) == 0) {
                    inst->events++;
                    am_counter_add(inst->events_counter, 1);
                }
                next_thr++;
            }
            if (status != ST_OK) {
                mark_span(marks, order[o].index, status, b->name);
            }
        }
    }
    am_free(order);
}

static void process_trace(budget_inst_t *inst, am_batch_t *batch, am_trace_t *trace, mark_t *marks,
                          uint64_t now)
{
    group_t *g = inst->group;
    char trace_hex[33];
    am_hex(trace->trace_id, 16, trace_hex);
    for (size_t bi = 0; bi < g->n_budgets; bi++) {
        const budget_t *b = &g->budgets[bi];
        key_spend_t keys[MAX_KEYS_PER_TRACE];
        size_t n_keys = 0;
        for (uint32_t i = 0; i < trace->n_spans; i++) {
            am_span_ref_t *ref = &trace->spans[i];
            /* replaces the previous span's scope; ended after the loop */
            am_attr_scope_begin_known(ref->span, &ref->known, NULL, ref->resource);
            const char *key = span_key(b, ref, trace_hex);
            if (key == NULL) {
                continue;
            }
            size_t k = 0;
            while (k < n_keys && strcmp(keys[k].key, key) != 0) {
                k++;
            }
            if (k == n_keys) {
                if (n_keys == MAX_KEYS_PER_TRACE) {
                    continue;
                }
                memset(&keys[k], 0, sizeof(keys[k]));
                keys[k].key = key;
                snprintf(keys[k].currency, sizeof(keys[k].currency), "USD");
                keys[k].status = b->window == W_TRACE ? ST_OK : read_status(g, bi, key, now);
                n_keys++;
            }
            const char *cur;
            if (am_attr_get_str(ref->span->attributes, ref->span->n_attributes, "cost.currency",
                                &cur)) {
                snprintf(keys[k].currency, sizeof(keys[k].currency), "%s", cur);
            }
            keys[k].amount += span_amount(b, ref);
            if (keys[k].status != ST_OK) {
                mark_span(marks, i, keys[k].status, b->name);
            }
        }
        am_attr_scope_end();
        if (b->window == W_TRACE) {
            eval_trace_window(inst, batch, trace, bi, keys, n_keys, trace_hex, marks, now);
            continue;
        }
        for (size_t k = 0; k < n_keys; k++) {
            if (keys[k].amount == 0) {
                continue;
            }
            char buf[KEY_BUF];
            char *sk = state_key(buf, sizeof(buf), b, keys[k].key);
            if (sk == NULL) {
                continue;
            }
            int owner = am_shard_for_key(sk, g->n_shards);
            key_done(sk, buf);
            spend_msg_t *msg = am_calloc(1, sizeof(*msg));
            if (msg == NULL || (msg->key = am_strdup(keys[k].key)) == NULL ||
                g->insts[owner] == NULL) {
                if (msg != NULL) {
                    am_free(msg->key);
                }
                am_free(msg);
                continue;
            }
            msg->target = g->insts[owner];
            msg->budget = bi;
            msg->amount = keys[k].amount;
            memcpy(msg->currency, keys[k].currency, sizeof(msg->currency));
            memcpy(msg->trace_id, trace_hex, sizeof(msg->trace_id));
            if (msg->target == inst) {
                spend_run(msg);
            } else {
                run_on(g, owner, spend_run, msg, false);
            }
        }
    }
}

static am_status_t budget_consume(void *instance, am_batch_t *batch)
{
    budget_inst_t *inst = instance;
    uint64_t now = inst->clock(inst->clock_arg);
    for (size_t t = 0;
         inst->group->n_budgets > 0 && batch->trace_index != NULL && t < batch->n_traces; t++) {
        am_trace_t *trace = &batch->trace_index[t];
        mark_t *marks = am_calloc(trace->n_spans + 1, sizeof(*marks));
        if (marks == NULL) {
            continue;
        }
        /* Marks come from the status before this trace's own spend. */
        process_trace(inst, batch, trace, marks, now);
        for (uint32_t i = 0; i < trace->n_spans; i++) {
            if (marks[i].status != ST_OK) {
                am_span_set_str(batch->arena, trace->spans[i].span, "cost.budget.status",
                                status_names[marks[i].status]);
                am_span_set_str(batch->arena, trace->spans[i].span, "cost.budget.name",
                                marks[i].budget);
            }
        }
        am_free(marks);
    }
    return inst->next != NULL ? am_consume(inst->next, batch) : AM_OK;
}

/* ---- HTTP API --------------------------------------------------------------------- */

static json_object *api_entry(group_t *g, const budget_t *b, const pub_t *pub, uint64_t now)
{
    int64_t spent = pub->spent;
    status_t status = pub->status;
    uint64_t ws = pub->window_start, we = pub->window_end;
    if (b->window != W_ROLLING && b->window != W_SESSION && we != 0 && now >= we) {
        /* A new window began and nothing was spent in it yet. */
        window_at(b, now, 0, &ws, &we);
        spent = 0;
        status = ST_OK;
    }
    int64_t remaining = b->limit - spent;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "budget", json_object_new_string(b->name));
    json_object_object_add(o, "scope", json_object_new_string(b->scope));
    json_object_object_add(o, "key", json_object_new_string(pub->key));
    json_object_object_add(o, "window", json_object_new_string(b->window_text));
    json_object_object_add(o, "spent", json_amount(b, spent));
    json_object_object_add(o, "limit", json_amount(b, b->limit));
    json_object_object_add(o, "remaining", json_amount(b, remaining > 0 ? remaining : 0));
    json_object_object_add(o, "status", json_object_new_string(status_names[status]));
    json_object_object_add(o, "window_start", ws != 0 ? am_json_time(ws) : NULL);
    json_object_object_add(o, "window_end", we != 0 ? am_json_time(we) : NULL);
    json_object_object_add(o, "currency", b->tokens ? NULL : json_object_new_string(pub->currency));
    AM_UNUSED(g);
    return o;
}

static void url_decode(const char *in, size_t len, char *out, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < size; i++) {
        if (in[i] == '%' && i + 2 < len) {
            char hex[3] = {in[i + 1], in[i + 2], '\0'};
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end == '\0') {
                out[o++] = (char)v;
                i += 2;
                continue;
            }
        }
        out[o++] = in[i];
    }
    out[o] = '\0';
}

static char *json_take(json_object *o, size_t *len)
{
    const char *text =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *copy = am_strdup(text);
    *len = copy != NULL ? strlen(copy) : 0;
    json_object_put(o);
    return copy;
}

static int error_body(const char *msg, char **body, size_t *len, int status)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "error", json_object_new_string(msg));
    *body = json_take(o, len);
    return status;
}

static int render(group_t *g, const char *path, char **body, size_t *len)
{
    uint64_t now = g->api_clock(g->api_clock_arg);
    const char *prefix = "/v1/budgets";
    size_t plen = strlen(prefix);
    if (strncmp(path, prefix, plen) != 0 || (path[plen] != '\0' && path[plen] != '/')) {
        return error_body("not found", body, len, 404);
    }
    const char *rest = path + plen;
    if (*rest == '/') {
        rest++;
    }
    if (*rest == '\0') {
        json_object *list = json_object_new_array();
        pthread_rwlock_rdlock(&g->pub_lock);
        for (size_t bi = 0; bi < g->n_budgets; bi++) {
            const budget_t *b = &g->budgets[bi];
            json_object *bo = json_object_new_object();
            json_object_object_add(bo, "name", json_object_new_string(b->name));
            json_object_object_add(bo, "scope", json_object_new_string(b->scope));
            json_object_object_add(bo, "window", json_object_new_string(b->window_text));
            json_object_object_add(bo, "type",
                                   json_object_new_string(b->tokens ? "tokens" : "cost"));
            json_object_object_add(bo, "limit", json_amount(b, b->limit));
            json_object *thr = json_object_new_array();
            for (size_t t = 0; t < b->n_thresholds; t++) {
                json_object_array_add(thr, am_json_ratio(b->thresholds[t]));
            }
            json_object_object_add(bo, "thresholds", thr);
            json_object *keys = json_object_new_array();
            for (size_t i = 0; i < g->pub.n_buckets; i++) {
                for (smap_entry_t *e = g->pub.buckets[i]; e != NULL; e = e->next) {
                    const pub_t *pub = e->value;
                    if (pub->budget == bi) {
                        json_object_array_add(keys, api_entry(g, b, pub, now));
                    }
                }
            }
            json_object_object_add(bo, "keys", keys);
            json_object_array_add(list, bo);
        }
        pthread_rwlock_unlock(&g->pub_lock);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "budgets", list);
        *body = json_take(o, len);
        return 200;
    }
    const char *slash = strchr(rest, '/');
    if (slash == NULL || slash[1] == '\0') {
        return error_body("expected /v1/budgets/{name}/{key}", body, len, 404);
    }
    /* Decoded text is never longer than the encoded one. */
    size_t name_len = (size_t)(slash - rest), key_len = strlen(slash + 1);
    char *name = am_malloc(name_len + 1), *key = am_malloc(key_len + 1);
    if (name == NULL || key == NULL) {
        am_free(name);
        am_free(key);
        *body = NULL;
        return 500;
    }
    url_decode(rest, name_len, name, name_len + 1);
    url_decode(slash + 1, key_len, key, key_len + 1);
    size_t bi = 0;
    while (bi < g->n_budgets && strcmp(g->budgets[bi].name, name) != 0) {
        bi++;
    }
    am_free(name);
    if (bi == g->n_budgets) {
        am_free(key);
        return error_body("unknown budget", body, len, 404);
    }
    char buf[KEY_BUF];
    char *k = pub_key(buf, sizeof(buf), bi, key);
    am_free(key);
    if (k == NULL) {
        *body = NULL;
        return 500;
    }
    pthread_rwlock_rdlock(&g->pub_lock);
    const pub_t *pub = smap_get(&g->pub, k);
    json_object *o = pub != NULL ? api_entry(g, &g->budgets[bi], pub, now) : NULL;
    pthread_rwlock_unlock(&g->pub_lock);
    key_done(k, buf);
    if (o == NULL) {
        return error_body("unknown key for this budget", body, len, 404);
    }
    *body = json_take(o, len);
    return 200;
}

int am__budget_render(void *instance, const char *path, char **body, size_t *len)
{
    budget_inst_t *inst = instance;
    return render(inst->group, path, body, len);
}

static void http_handler(am_http_request_t *req)
{
    group_t *g = req->user_data;
    if (strcmp(req->method, "GET") != 0) {
        static const char msg[] = "{\"error\":\"method not allowed\"}";
        am_http_respond(req, 405, "application/json", "Allow: GET\r\n", msg, sizeof(msg) - 1);
        return;
    }
    char *body = NULL;
    size_t len = 0;
    int status = render(g, req->path, &body, &len);
    if (body == NULL) {
        am_http_respond(req, 500, "application/json", NULL, "{\"error\":\"out of memory\"}", 25);
        return;
    }
    am_http_respond(req, status, "application/json", NULL, body, len);
    am_free(body);
}

/* ---- state file -------------------------------------------------------------------- */

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

static void snapshot_own(budget_inst_t *inst)
{
    group_t *g = inst->group;
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < inst->states.n_buckets; i++) {
        for (smap_entry_t *e = inst->states.buckets[i]; e != NULL; e = e->next) {
            const bstate_t *st = e->value;
            const budget_t *b = &g->budgets[st->budget];
            char buf[32];
            json_object *o = json_object_new_object();
            json_object_object_add(o, "budget", json_object_new_string(b->name));
            json_object_object_add(o, "key", json_object_new_string(st->key));
            json_object_object_add(o, "window_start", json_object_new_uint64(st->window_start));
            json_object_object_add(o, "first", json_object_new_uint64(st->first_ns));
            json_object_object_add(o, "last_spend", json_object_new_uint64(st->last_spend_ns));
            snprintf(buf, sizeof(buf), "%lld", (long long)st->spent);
            json_object_object_add(o, "spent", json_object_new_string(buf));
            json_object_object_add(o, "crossed", json_object_new_int64(st->crossed));
            json_object_object_add(o, "currency", json_object_new_string(st->currency));
            if (b->window == W_ROLLING) {
                json_object *bk = json_object_new_array();
                for (size_t j = 0; j < N_BUCKETS; j++) {
                    json_object_array_add(bk, json_object_new_int64(st->buckets[j]));
                }
                json_object_object_add(o, "buckets", bk);
                json_object_object_add(o, "bucket_epoch", json_object_new_uint64(st->bucket_epoch));
            }
            json_object_array_add(arr, o);
        }
    }
    const char *text = json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN);
    size_t len = strlen(text);
    char *items = am_strndup(len >= 2 ? text + 1 : "", len >= 2 ? len - 2 : 0);
    json_object_put(arr);
    pthread_mutex_lock(&g->lock);
    am_free(g->snaps[inst->shard]);
    g->snaps[inst->shard] = items;
    pthread_mutex_unlock(&g->lock);
}

/* The definitions the state was kept under: {name: {type, window, limit,
 * thresholds}}, so a later config can tell which amounts still apply. */
static json_object *defs_json(const group_t *g)
{
    json_object *defs = json_object_new_object();
    for (size_t bi = 0; bi < g->n_budgets; bi++) {
        const budget_t *b = &g->budgets[bi];
        json_object *d = json_object_new_object();
        json_object_object_add(d, "type", json_object_new_string(b->tokens ? "tokens" : "cost"));
        json_object_object_add(d, "window", json_object_new_string(b->window_text));
        json_object_object_add(d, "limit", json_object_new_int64(b->limit));
        json_object *thr = json_object_new_array();
        for (size_t t = 0; t < b->n_thresholds; t++) {
            json_object_array_add(thr, am_json_ratio(b->thresholds[t]));
        }
        json_object_object_add(d, "thresholds", thr);
        json_object_object_add(defs, b->name, d);
    }
    return defs;
}

/* The joined state of every instance's last snapshot (malloc'd), the text
 * of state_file and of the reload handoff. */
static char *state_text(group_t *g, size_t *used_out)
{
    json_object *defs = defs_json(g);
    const char *defs_text = json_object_to_json_string_ext(defs, JSON_C_TO_STRING_PLAIN);
    pthread_mutex_lock(&g->lock);
    size_t len = 64 + strlen(defs_text);
    for (int i = 0; i < g->n_shards; i++) {
        len += g->snaps[i] != NULL ? strlen(g->snaps[i]) + 1 : 0;
    }
    char *text = am_malloc(len);
    size_t used = 0;
    if (text != NULL) {
        used = (size_t)snprintf(text, len, "{\"version\":%d,\"defs\":%s,\"budgets\":[",
                                STATE_VERSION, defs_text);
        bool first = true;
        for (int i = 0; i < g->n_shards; i++) {
            if (g->snaps[i] != NULL && g->snaps[i][0] != '\0') {
                used += (size_t)snprintf(text + used, len - used, "%s%s", first ? "" : ",",
                                         g->snaps[i]);
                first = false;
            }
        }
        used += (size_t)snprintf(text + used, len - used, "]}\n");
    }
    pthread_mutex_unlock(&g->lock);
    json_object_put(defs);
    *used_out = used;
    return text;
}

static void write_state(group_t *g, const char *path)
{
    size_t used = 0;
    char *text = state_text(g, &used);
    if (text != NULL) {
        am_state_file_write(COMP, path, text, used);
        am_free(text);
    }
}

/* Parse a state text into g->loaded / g->loaded_defs.  Caller holds g->lock.
 * false when the text is not a valid state. */
static bool parse_state(group_t *g, const char *data)
{
    enum json_tokener_error jerr;
    json_object *root = json_tokener_parse_verbose(data, &jerr), *list = NULL, *defs = NULL;
    bool valid = root != NULL && json_object_is_type(root, json_type_object) &&
                 jint(root, "version") == STATE_VERSION &&
                 json_object_object_get_ex(root, "budgets", &list) &&
                 json_object_is_type(list, json_type_array);
    for (size_t i = 0; valid && i < json_object_array_length(list); i++) {
        json_object *o = json_object_array_get_idx(list, i);
        const char *spent = jstr(o, "spent");
        char *end = NULL;
        valid = json_object_is_type(o, json_type_object) && jstr(o, "budget") != NULL &&
                jstr(o, "key") != NULL && spent != NULL &&
                (strtoll(spent, &end, 10), end != NULL && *end == '\0' && end != spent);
    }
    if (valid) {
        g->loaded = json_object_get(list);
        if (json_object_object_get_ex(root, "defs", &defs) &&
            json_object_is_type(defs, json_type_object)) {
            g->loaded_defs = json_object_get(defs);
        }
    }
    if (root != NULL) {
        json_object_put(root);
    }
    return valid;
}

/* Read state_file into g->loaded.  Caller holds g->lock.  true when the file
 * existed and was valid (a corrupt one is renamed aside). */
static bool load_state_file(budget_inst_t *inst, const char *path)
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
        am_state_file_set_aside(COMP, inst->id, path, inst->clock(inst->clock_arg) / NS_PER_S);
    }
    return valid;
}

/* Once per group, at start: the state to continue from.  A readable
 * state_file wins; else the handoff of a config reload, if any. */
static void load_state_once(budget_inst_t *inst)
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

/* Do amounts kept under the old definition `def` count for `b`?  Not when
 * the type (units) or the window changed. */
static bool def_compatible(const budget_t *b, json_object *def)
{
    const char *type = jstr(def, "type");
    const char *window = jstr(def, "window");
    return (type == NULL || strcmp(type, b->tokens ? "tokens" : "cost") == 0) &&
           (window == NULL || strcmp(window, b->window_text) == 0);
}

/* The thresholds of `b` already reported under the old definition `def`:
 * the same fraction of the same limit. */
static uint32_t remap_crossed(const budget_t *b, json_object *def, uint32_t crossed)
{
    json_object *thr;
    if (jint(def, "limit") != b->limit || !json_object_object_get_ex(def, "thresholds", &thr) ||
        !json_object_is_type(thr, json_type_array)) {
        return 0;
    }
    uint32_t out = 0;
    size_t n_old = json_object_array_length(thr);
    for (size_t t = 0; t < b->n_thresholds; t++) {
        for (size_t j = 0; j < n_old && j < 32; j++) {
            double old = json_object_get_double(json_object_array_get_idx(thr, j));
            if ((crossed & (1u << j)) != 0 && fabs(old - b->thresholds[t]) < 1e-9) {
                out |= 1u << t;
            }
        }
    }
    return out;
}

static void restore_own(budget_inst_t *inst)
{
    group_t *g = inst->group;
    pthread_mutex_lock(&g->lock);
    json_object *arr = g->loaded != NULL ? json_object_get(g->loaded) : NULL;
    json_object *defs = g->loaded_defs != NULL ? json_object_get(g->loaded_defs) : NULL;
    pthread_mutex_unlock(&g->lock);
    if (arr == NULL) {
        if (defs != NULL) {
            json_object_put(defs);
        }
        return;
    }
    size_t restored = 0, dropped = 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *o = json_object_array_get_idx(arr, i);
        const char *name = jstr(o, "budget");
        const char *key = jstr(o, "key");
        size_t bi = 0;
        while (bi < g->n_budgets && strcmp(g->budgets[bi].name, name) != 0) {
            bi++;
        }
        if (bi == g->n_budgets) {
            continue; /* a budget no longer configured */
        }
        const budget_t *b = &g->budgets[bi];
        char buf[KEY_BUF];
        char *sk = state_key(buf, sizeof(buf), b, key);
        if (sk == NULL) {
            continue;
        }
        int owner = am_shard_for_key(sk, g->n_shards);
        key_done(sk, buf);
        if (owner != inst->shard) {
            continue;
        }
        json_object *def = NULL;
        bool def_known = defs != NULL && json_object_object_get_ex(defs, name, &def) &&
                         json_object_is_type(def, json_type_object);
        if (def_known && !def_compatible(b, def)) {
            dropped++;
            continue;
        }
        bstate_t *st = state_get(inst, bi, key, true);
        if (st == NULL) {
            continue;
        }
        st->window_start = (uint64_t)jint(o, "window_start");
        st->first_ns = (uint64_t)jint(o, "first");
        st->last_spend_ns = (uint64_t)jint(o, "last_spend");
        st->spent = strtoll(jstr(o, "spent"), NULL, 10);
        st->crossed = (uint32_t)jint(o, "crossed");
        if (def_known) {
            st->crossed = remap_crossed(b, def, st->crossed);
        }
        const char *cur = jstr(o, "currency");
        snprintf(st->currency, sizeof(st->currency), "%s", cur != NULL ? cur : "USD");
        json_object *bk;
        if (b->window == W_ROLLING && json_object_object_get_ex(o, "buckets", &bk) &&
            json_object_array_length(bk) == N_BUCKETS) {
            for (size_t j = 0; j < N_BUCKETS; j++) {
                st->buckets[j] = json_object_get_int64(json_object_array_get_idx(bk, j));
            }
            st->bucket_epoch = (uint64_t)jint(o, "bucket_epoch");
        }
        uint64_t ws = st->window_start, we = 0;
        if (b->window == W_HOUR || b->window == W_DAY || b->window == W_MONTH) {
            uint64_t s2;
            window_at(b, st->window_start, 0, &s2, &we);
        } else if (b->window == W_ROLLING) {
            we = st->last_spend_ns;
        }
        status_t status = state_status(b, st);
        if (status == ST_OK && b->n_thresholds > 0 && st->spent >= b->thr_amount[0]) {
            status = ST_WARNING; /* a changed limit: reported on the next spend */
        }
        publish(g, st, status, ws, we);
        restored++;
    }
    json_object_put(arr);
    if (defs != NULL) {
        json_object_put(defs);
    }
    if (restored > 0) {
        AM_INFO(COMP, "%s: restored %zu budget key(s) on shard %d", inst->id, restored,
                inst->shard);
    }
    if (dropped > 0) {
        AM_WARN(COMP,
                "%s: %zu budget key(s) start from zero on shard %d: the type or window "
                "of their budget changed",
                inst->id, dropped, inst->shard);
    }
}

/* ---- tick, life cycle --------------------------------------------------------------- */

void am__budget_tick(void *instance)
{
    budget_inst_t *inst = instance;
    group_t *g = inst->group;
    uint64_t now = inst->clock(inst->clock_arg);
    uint64_t expire_ns = (uint64_t)inst->cfg->expire_after_ms * NS_PER_MS;
    for (size_t i = 0; i < inst->states.n_buckets; i++) {
        for (smap_entry_t *e = inst->states.buckets[i]; e != NULL;) {
            smap_entry_t *next = e->next;
            bstate_t *st = e->value;
            const budget_t *b = &g->budgets[st->budget];
            uint64_t ws, we;
            window_at(b, now, st->first_ns, &ws, &we);
            bool window_over =
                b->window == W_SESSION || b->window == W_ROLLING || st->window_start != ws;
            if (window_over && now > st->last_spend_ns && now - st->last_spend_ns > expire_ns) {
                unpublish(g, st);
                bstate_free(smap_remove(&inst->states, e->key));
            }
            e = next;
        }
    }
    if (inst->cfg->state_file != NULL && inst->cfg->state_file[0] != '\0') {
        snapshot_own(inst);
        uint64_t interval_ns = (uint64_t)inst->cfg->state_interval_ms * NS_PER_MS;
        if (inst->shard == 0 && now - g->last_write_ns >= interval_ns) {
            g->last_write_ns = now;
            write_state(g, inst->cfg->state_file);
        }
    }
}

static void tick_cb(uv_timer_t *timer)
{
    am__budget_tick(timer->data);
}

static void budget_destroy(void *instance);

static void budget_validate(const void *config, const void *node, const char *prefix,
                            am_errors_t *errs)
{
    const budget_config_t *cfg = config;
    AM_UNUSED(node);
    budget_t *budgets = NULL;
    size_t n = 0;
    if (budgets_parse(cfg->budgets, prefix, errs, &budgets, &n) == 0) {
        budgets_free(budgets, n);
    }
}

static int budget_create(const am_create_params_t *params, void **instance)
{
    const budget_config_t *cfg = params->config;
    budget_inst_t *inst = am_calloc(1, sizeof(*inst));
    if (inst == NULL || (inst->id = am_strdup(params->id)) == NULL) {
        am_free(inst);
        return AM_ENOMEM;
    }
    inst->cfg = cfg;
    inst->next = params->next;
    inst->loop = params->loop;
    inst->service = params->service;
    inst->shard = params->shard >= 0 ? params->shard : 0;
    inst->clock = default_clock;
    int n_shards = params->n_shards > 0 ? params->n_shards : 1;
    if (smap_init(&inst->states, 64) != 0 || inst->shard >= n_shards ||
        (inst->group = group_acquire(params->service, params->id, n_shards, cfg)) == NULL) {
        budget_destroy(inst);
        return AM_EINVAL;
    }
    pthread_mutex_lock(&registry_lock);
    inst->group->insts[inst->shard] = inst;
    if (params->service != NULL && inst->group->shards == NULL) {
        inst->group->shards = am_service_shards((am_service_t *)params->service);
    }
    pthread_mutex_unlock(&registry_lock);
    char labels[300];
    snprintf(labels, sizeof(labels), "processor=\"%s\"", params->id);
    inst->events_counter = am_selfmetrics_counter("agentmeter_budget_threshold_events_total",
                                                  "budget.threshold events emitted.", labels);
    *instance = inst;
    return 0;
}

static int budget_start(void *instance)
{
    budget_inst_t *inst = instance;
    group_t *g = inst->group;
    load_state_once(inst); /* state_file, else a reload handoff */
    restore_own(inst);
    if (inst->shard == 0 && inst->service != NULL && !g->route_added) {
        /* start() runs while the main thread waits for it (am_shard_call),
         * so adding the route here does not race with the telemetry loop. */
        int rc =
            am_service_add_route((am_service_t *)inst->service, "/v1/budgets", http_handler, g);
        if (rc != 0) {
            AM_WARN(COMP, "%s: /v1/budgets is already served by another budget processor",
                    inst->id);
        }
        g->route_added = true;
    }
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

static void final_snapshot(void *arg)
{
    snapshot_own(arg);
}

static void budget_shutdown(void *instance)
{
    budget_inst_t *inst = instance;
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
    for (int i = 0; i < g->n_shards; i++) {
        if (g->insts[i] != NULL) {
            run_on(g, i, final_snapshot, g->insts[i], true);
        }
    }
    if (inst->cfg->state_file != NULL && inst->cfg->state_file[0] != '\0') {
        write_state(g, inst->cfg->state_file);
    }
    /* For a config reload: the next group of this id continues from here. */
    size_t len = 0;
    char *text = state_text(g, &len);
    if (text != NULL) {
        am_state_handoff_put(g->id, text);
    } else {
        AM_ERROR(COMP, "%s: out of memory: budget state not kept for a config reload", inst->id);
    }
}

static void budget_destroy(void *instance)
{
    budget_inst_t *inst = instance;
    if (inst == NULL) {
        return;
    }
    smap_free(&inst->states, bstate_free);
    if (inst->group != NULL) {
        pthread_mutex_lock(&registry_lock);
        if (inst->group->insts[inst->shard] == inst) {
            inst->group->insts[inst->shard] = NULL;
        }
        pthread_mutex_unlock(&registry_lock);
        group_release(inst->group);
    }
    am_free(inst->id);
    am_free(inst);
}

void am__budget_set_clock(void *instance, am__budget_clock_fn fn, void *arg)
{
    budget_inst_t *inst = instance;
    inst->clock = fn != NULL ? fn : default_clock;
    inst->clock_arg = arg;
}

void am__budget_set_api_clock(void *instance, am__budget_clock_fn fn, void *arg)
{
    budget_inst_t *inst = instance;
    inst->group->api_clock = fn != NULL ? fn : default_clock;
    inst->group->api_clock_arg = arg;
}

void am__budget_set_shards(void *instance, am_shards_t *shards)
{
    budget_inst_t *inst = instance;
    inst->group->shards = shards;
}

uint64_t am__budget_events_emitted(void *instance)
{
    budget_inst_t *inst = instance;
    return inst->events;
}

const am_component_ops_t am_processor_budget_ops = {
    .type = "budget",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Budgets per scope and window: budget.threshold events, span marks, /v1/budgets.",
    .options = budget_options,
    .config_size = sizeof(budget_config_t),
    .validate = budget_validate,
    .create = budget_create,
    .start = budget_start,
    .consume = budget_consume,
    .shutdown = budget_shutdown,
    .destroy = budget_destroy,
};
