/*
 * anomaly.c - the `anomaly` processor: tool loops and cost burn rate
 * (ARCHITECTURE.md §8, §9), one `anomaly.detected` event per episode.
 *
 * loops: a tool call is a span with a tool name (§5).  Its arguments hash is
 * FNV-1a 64 over the first of gen_ai.tool.call.arguments, gen_ai.tool.
 * arguments, tool.arguments, tool.input, input.value (empty when none).  The
 * trace shard counts (tool, hash) per trace.  With a session key the counts
 * go to the shard owning the session (am_shard_for_key), which adds them up
 * over the session, so a loop spread over many traces is seen as well as one
 * inside a trace; without one the trace alone is judged, on the spot.  An
 * episode is "more than max_repeats calls"; within a session it only ends
 * when the session is forgotten (idle_timeout), so it is reported once.
 *
 * burn_rate: cost per `window` (default 1m) of each scope key (default
 * gen_ai.agent.name) is summed on the key's owning shard.  The baseline is
 * an EWMA of closed windows (empty windows count as zero):
 * ewma = alpha * window + (1 - alpha) * ewma.  After `warmup` closed
 * windows, a window whose cost reaches min_cost and exceeds factor x the
 * baseline starts an episode - checked on every hand-off, so it is reported
 * while the window is still running, not a minute later.  The episode ends
 * at the first closed window below that line; the next crossing is a new
 * episode.  The baseline is a double in nano-units: it is a statistic, not
 * money that is accounted.
 *
 * Events from a trace shard go into the batch passing by; events from an
 * owner go into a new batch pushed into the owner's own `next`.
 */
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_attr.h"
#include "am_component.h"
#include "am_event_json.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "am_service.h"
#include "am_shard.h"
#include "processors/anomaly/anomaly_internal.h"

#define COMP "anomaly"
#define MAX_TRACE_IDS 10
#define MAX_LOOP_ENTRIES 256
#define NS_PER_MS UINT64_C(1000000)

static const char *const session_keys[] = {"session.id", "gen_ai.conversation.id",
                                           "langfuse.session.id",
                                           "traceloop.association.properties.session_id", NULL};
static const char *const tool_keys[] = {"gen_ai.tool.name", "tool.name", NULL};
static const char *const args_keys[] = {"gen_ai.tool.call.arguments",
                                        "gen_ai.tool.arguments",
                                        "tool.arguments",
                                        "tool.input",
                                        "input.value",
                                        NULL};

/* ---- options ---------------------------------------------------------------- */

typedef struct loops_cfg {
    bool set;
    int64_t max_repeats;
} loops_cfg_t;

typedef struct burn_cfg {
    bool set;
    char *scope;
    double factor;
    am_money_t min_cost;
    int64_t window_ms;
    double alpha;
    int64_t warmup;
} burn_cfg_t;

typedef struct anomaly_config {
    loops_cfg_t loops;
    burn_cfg_t burn_rate;
    int64_t idle_timeout_ms;
} anomaly_config_t;

static const am_option_t loops_options[] = {
    {.name = "max_repeats",
     .type = AM_OPT_INT,
     .def = "5",
     .offset = offsetof(loops_cfg_t, max_repeats),
     .min = 0,
     .max = 1e9,
     .doc = "A tool called with the same arguments more than this many times in a trace or "
            "session is a loop (0 disables)."},
    AM_OPT_END,
};

static const am_option_t burn_options[] = {
    AM_OPT("scope", AM_OPT_STRING, "gen_ai.agent.name", burn_cfg_t, scope,
           "Attribute whose values get a burn rate each."),
    {.name = "factor",
     .type = AM_OPT_DOUBLE,
     .def = "3",
     .offset = offsetof(burn_cfg_t, factor),
     .min = 0,
     .max = 1e6,
     .doc = "Alert above factor x the EWMA baseline (0 disables)."},
    AM_OPT("min_cost", AM_OPT_MONEY, "0.01", burn_cfg_t, min_cost,
           "A window costing less never alerts (noise)."),
    {.name = "window",
     .type = AM_OPT_DURATION,
     .def = "1m",
     .offset = offsetof(burn_cfg_t, window_ms),
     .min = 1000,
     .max = 1e10,
     .doc = "Rate window: cost per window is compared with the baseline."},
    {.name = "alpha",
     .type = AM_OPT_DOUBLE,
     .def = "0.3",
     .offset = offsetof(burn_cfg_t, alpha),
     .min = 0.0001,
     .max = 1,
     .doc = "EWMA weight of the newest window."},
    {.name = "warmup",
     .type = AM_OPT_INT,
     .def = "3",
     .offset = offsetof(burn_cfg_t, warmup),
     .min = 1,
     .max = 1e6,
     .doc = "Closed windows before a baseline is trusted."},
    AM_OPT_END,
};

static const am_option_t anomaly_options[] = {
    {.name = "loops",
     .type = AM_OPT_SECTION,
     .offset = offsetof(anomaly_config_t, loops),
     .sub = loops_options,
     .doc = "Tool loop detection."},
    {.name = "burn_rate",
     .type = AM_OPT_SECTION,
     .offset = offsetof(anomaly_config_t, burn_rate),
     .sub = burn_options,
     .doc = "Cost burn-rate detection."},
    {.name = "idle_timeout",
     .type = AM_OPT_DURATION,
     .def = "30m",
     .offset = offsetof(anomaly_config_t, idle_timeout_ms),
     .min = 1,
     .max = 1e12,
     .doc = "Forget a session's loop counts and an idle scope's baseline after this long."},
    AM_OPT_END,
};

/* ---- string map -------------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)s[i]) * UINT64_C(1099511628211);
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
    for (smap_entry_t *e = m->buckets[fnv1a(key, strlen(key)) % m->n_buckets]; e != NULL;
         e = e->next) {
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
                    size_t b = fnv1a(e->key, strlen(e->key)) % n;
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
    size_t b = fnv1a(key, strlen(key)) % m->n_buckets;
    e->value = value;
    e->next = m->buckets[b];
    m->buckets[b] = e;
    m->count++;
    return 0;
}

static void smap_free(smap_t *m, void (*free_value)(void *))
{
    for (size_t i = 0; m->buckets != NULL && i < m->n_buckets; i++) {
        for (smap_entry_t *e = m->buckets[i]; e != NULL;) {
            smap_entry_t *next = e->next;
            free_value(e->value);
            am_free(e->key);
            am_free(e);
            e = next;
        }
    }
    am_free(m->buckets);
    m->buckets = NULL;
}

/* Remove every entry for which drop(value, arg) is true. */
static void smap_filter(smap_t *m, bool (*drop)(void *value, void *arg), void *arg,
                        void (*free_value)(void *))
{
    for (size_t i = 0; i < m->n_buckets; i++) {
        for (smap_entry_t **p = &m->buckets[i]; *p != NULL;) {
            smap_entry_t *e = *p;
            if (drop(e->value, arg)) {
                *p = e->next;
                free_value(e->value);
                am_free(e->key);
                am_free(e);
                m->count--;
            } else {
                p = &e->next;
            }
        }
    }
}

/* ---- state -------------------------------------------------------------------- */

/* The trace ids an anomaly event names (at most MAX_TRACE_IDS), as raw
 * bytes.  A session keeps one loop entry per distinct tool call, so these
 * are most of this processor's memory: the first id is inline (most entries
 * never see a second trace) and the rest are allocated when needed. */
typedef struct trace_ids {
    uint8_t first[16];
    uint8_t (*more)[16]; /* MAX_TRACE_IDS - 1 slots, am_malloc'd; or NULL */
    uint8_t n;
} trace_ids_t;

static const uint8_t *trace_ids_at(const trace_ids_t *t, size_t i)
{
    return i == 0 ? t->first : t->more[i - 1];
}

static void trace_ids_add(trace_ids_t *t, const uint8_t id[16])
{
    for (size_t i = 0; i < t->n; i++) {
        if (memcmp(trace_ids_at(t, i), id, 16) == 0) {
            return;
        }
    }
    if (t->n == 0) {
        memcpy(t->first, id, 16);
        t->n = 1;
        return;
    }
    if (t->n >= MAX_TRACE_IDS) {
        return;
    }
    if (t->more == NULL && (t->more = am_malloc((MAX_TRACE_IDS - 1) * sizeof(*t->more))) == NULL) {
        return; /* the event names fewer traces; nothing else depends on it */
    }
    memcpy(t->more[t->n - 1], id, 16);
    t->n++;
}

static void trace_ids_free(trace_ids_t *t)
{
    am_free(t->more);
    t->more = NULL;
    t->n = 0;
}

/* One (tool, arguments) of one trace, on its way to the session's owner. */
typedef struct loop_entry {
    char *tool;
    uint64_t hash;
    int64_t count;
} loop_entry_t;

/* One (tool, arguments) of a session, kept until the session is forgotten:
 * there is one per distinct call, so the tool is kept as a hash (its name
 * comes with the message that fires the event). */
typedef struct sess_entry {
    uint64_t tool_hash;
    uint64_t hash;
    int64_t count;
    int64_t traces;
    bool fired;
    trace_ids_t trace_ids;
} sess_entry_t;

typedef struct loop_sess {
    sess_entry_t *entries;
    size_t n_entries, cap_entries;
    uint64_t last_seen_ns;
} loop_sess_t;

static void loop_sess_free(void *p)
{
    loop_sess_t *ls = p;
    for (size_t i = 0; ls != NULL && i < ls->n_entries; i++) {
        trace_ids_free(&ls->entries[i].trace_ids);
    }
    if (ls != NULL) {
        am_free(ls->entries);
    }
    am_free(ls);
}

typedef struct burn {
    uint64_t window_idx;
    am_money_t cur_cost;
    double ewma;
    int64_t n_windows;
    bool in_episode;
    uint64_t last_seen_ns;
    trace_ids_t trace_ids;
} burn_t;

static void burn_free(void *p)
{
    burn_t *b = p;
    if (b != NULL) {
        trace_ids_free(&b->trace_ids);
    }
    am_free(b);
}

typedef struct anomaly_inst anomaly_inst_t;

typedef struct group {
    const void *service;
    char *id;
    int n_shards;
    int refs;
    anomaly_inst_t **insts;
    am_shards_t *shards;
    struct group *next;
} group_t;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static group_t *registry;

struct anomaly_inst {
    char *id;
    int shard;
    group_t *group;
    am_consumer_t *next;
    uv_loop_t *loop;
    uv_timer_t *timer;
    const anomaly_config_t *cfg;
    smap_t loops; /* session key -> loop_sess_t (owned keys) */
    smap_t burns; /* scope key -> burn_t (owned keys) */
    am__anomaly_clock_fn clock;
    void *clock_arg;
    bool shut;
    uint64_t events;
    am_counter_t *loop_events, *burn_events;
};

static uint64_t default_clock(void *arg)
{
    AM_UNUSED(arg);
    return am_now_unix_nano();
}

static group_t *group_acquire(const void *service, const char *id, int n_shards)
{
    pthread_mutex_lock(&registry_lock);
    group_t *g = registry;
    while (g != NULL && !(g->service == service && strcmp(g->id, id) == 0)) {
        g = g->next;
    }
    if (g == NULL && (g = am_calloc(1, sizeof(*g))) != NULL) {
        g->service = service;
        g->n_shards = n_shards;
        g->id = am_strdup(id);
        g->insts = am_calloc((size_t)n_shards, sizeof(*g->insts));
        if (g->id == NULL || g->insts == NULL) {
            am_free(g->id);
            am_free(g->insts);
            am_free(g);
            g = NULL;
        } else {
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
    if (--g->refs == 0) {
        for (group_t **p = &registry; *p != NULL; p = &(*p)->next) {
            if (*p == g) {
                *p = g->next;
                break;
            }
        }
        am_free(g->insts);
        am_free(g->id);
        am_free(g);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void run_on(group_t *g, int shard, am_shard_fn fn, void *arg)
{
    am_shards_run(g->shards, shard, fn, arg, false);
}

/* ---- events ---------------------------------------------------------------------- */

/* Takes ownership of `evidence`. */
static int add_anomaly_event(anomaly_inst_t *inst, am_batch_t *batch, const char *kind,
                             const char *scope, const char *key, json_object *evidence,
                             const trace_ids_t *ids, am_money_t amount, uint64_t now)
{
    am_arena_t *arena = batch->arena;
    char tbuf[AM_TIME_STRLEN];
    json_object *o = json_object_new_object();
    json_object_object_add(o, "event", json_object_new_string("anomaly.detected"));
    json_object_object_add(o, "time", json_object_new_string(am_time_format(now, tbuf)));
    json_object_object_add(o, "kind", json_object_new_string(kind));
    json_object_object_add(o, "scope", json_object_new_string(scope));
    json_object_object_add(o, "key", json_object_new_string(key));
    json_object_object_add(o, "evidence", evidence);
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < ids->n; i++) {
        char hex[33];
        json_object_array_add(arr, json_object_new_string(am_hex(trace_ids_at(ids, i), 16, hex)));
    }
    json_object_object_add(o, "trace_ids", arr);
    const char *text =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    am_event_t ev = {
        .kind = "anomaly.detected",
        .scope = am_arena_strdup(arena, scope),
        .key = am_arena_strdup(arena, key),
        .name = strcmp(kind, "loop") == 0 ? "loop" : "burn_rate",
        .json = am_arena_strdup(arena, text),
        .time_unix_nano = now,
        .amount = amount,
    };
    json_object_put(o);
    if (ev.scope == NULL || ev.key == NULL || ev.json == NULL) {
        return AM_ENOMEM;
    }
    ev.json_len = strlen(ev.json);
    int rc = am_batch_add_event(batch, &ev);
    if (rc == 0) {
        inst->events++;
        am_counter_add(strcmp(kind, "loop") == 0 ? inst->loop_events : inst->burn_events, 1);
        AM_INFO(COMP, "%s: %s anomaly for %s=%s", inst->id, kind, scope, key);
    }
    return rc;
}

static void emit(anomaly_inst_t *inst, am_batch_t *batch)
{
    if (batch == NULL) {
        return;
    }
    if (batch->n_events > 0 && inst->next != NULL && am_consume(inst->next, batch) != AM_OK) {
        AM_WARN(COMP, "%s: downstream refused %zu anomaly event(s)", inst->id, batch->n_events);
    }
    am_batch_unref(batch);
}

static am_batch_t *out_batch(am_batch_t **out)
{
    if (*out == NULL) {
        *out = am_batch_new(AM_SIGNAL_TRACES);
    }
    return *out;
}

static json_object *loop_evidence(const char *tool, uint64_t args_hash, int64_t count,
                                  int64_t traces, int64_t max_repeats)
{
    char hash[17];
    snprintf(hash, sizeof(hash), "%016llx", (unsigned long long)args_hash);
    json_object *ev = json_object_new_object();
    json_object_object_add(ev, "tool", json_object_new_string(tool));
    json_object_object_add(ev, "arguments_hash", json_object_new_string(hash));
    json_object_object_add(ev, "count", json_object_new_int64(count));
    json_object_object_add(ev, "max_repeats", json_object_new_int64(max_repeats));
    json_object_object_add(ev, "traces", json_object_new_int64(traces));
    return ev;
}

/* ---- loops ---------------------------------------------------------------------- */

typedef struct loop_msg {
    anomaly_inst_t *target;
    char *session;
    uint8_t trace_id[16];
    loop_entry_t *entries;
    size_t n_entries;
} loop_msg_t;

static void loop_msg_free(loop_msg_t *msg)
{
    for (size_t i = 0; i < msg->n_entries; i++) {
        am_free(msg->entries[i].tool);
    }
    am_free(msg->entries);
    am_free(msg->session);
    am_free(msg);
}

static void apply_loops(anomaly_inst_t *inst, loop_msg_t *msg)
{
    uint64_t now = inst->clock(inst->clock_arg);
    loop_sess_t *ls = smap_get(&inst->loops, msg->session);
    if (ls == NULL) {
        ls = am_calloc(1, sizeof(*ls));
        if (ls == NULL || smap_put(&inst->loops, msg->session, ls) != 0) {
            am_free(ls);
            return;
        }
    }
    ls->last_seen_ns = now;
    am_batch_t *out = NULL;
    for (size_t i = 0; i < msg->n_entries; i++) {
        const loop_entry_t *in = &msg->entries[i];
        uint64_t tool_hash = fnv1a(in->tool, strlen(in->tool));
        sess_entry_t *e = NULL;
        for (size_t j = 0; j < ls->n_entries; j++) {
            if (ls->entries[j].hash == in->hash && ls->entries[j].tool_hash == tool_hash) {
                e = &ls->entries[j];
                break;
            }
        }
        if (e == NULL) {
            if (ls->n_entries == MAX_LOOP_ENTRIES) {
                continue;
            }
            if (ls->n_entries == ls->cap_entries) {
                size_t cap = ls->cap_entries < 4 ? 4 : ls->cap_entries * 2;
                cap = cap > MAX_LOOP_ENTRIES ? MAX_LOOP_ENTRIES : cap;
                sess_entry_t *grown = am_realloc(ls->entries, cap * sizeof(*grown));
                if (grown == NULL) {
                    continue;
                }
                ls->entries = grown;
                ls->cap_entries = cap;
            }
            e = &ls->entries[ls->n_entries];
            memset(e, 0, sizeof(*e));
            e->tool_hash = tool_hash;
            e->hash = in->hash;
            ls->n_entries++;
        }
        e->count += in->count;
        e->traces++;
        trace_ids_add(&e->trace_ids, msg->trace_id);
        if (!e->fired && e->count > inst->cfg->loops.max_repeats) {
            e->fired = true;
            if (out_batch(&out) != NULL) {
                add_anomaly_event(inst, out, "loop", "session.id", msg->session,
                                  loop_evidence(in->tool, e->hash, e->count, e->traces,
                                                inst->cfg->loops.max_repeats),
                                  &e->trace_ids, 0, now);
            }
        }
    }
    emit(inst, out);
}

static void loop_run(void *arg)
{
    loop_msg_t *msg = arg;
    apply_loops(msg->target, msg);
    loop_msg_free(msg);
}

static void check_loops(anomaly_inst_t *inst, am_batch_t *batch, am_trace_t *trace,
                        const char *trace_hex, uint64_t now)
{
    loop_entry_t *entries = NULL;
    size_t n = 0;
    const char *session = NULL;
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        am_span_ref_t *ref = &trace->spans[i];
        am_attr_scope_begin_known(ref->span, &ref->known, NULL, ref->resource);
        if (session == NULL) {
            session = am_attr_first_str(ref->span, ref->resource, session_keys);
        }
        const char *tool = am_attr_first_str(ref->span, ref->resource, tool_keys);
        const char *args =
            tool != NULL ? am_attr_first_str(ref->span, ref->resource, args_keys) : NULL;
        am_attr_scope_end();
        if (tool == NULL) {
            continue;
        }
        uint64_t hash = fnv1a(args != NULL ? args : "", args != NULL ? strlen(args) : 0);
        size_t j = 0;
        while (j < n && !(entries[j].hash == hash && strcmp(entries[j].tool, tool) == 0)) {
            j++;
        }
        if (j == n) {
            if (n == MAX_LOOP_ENTRIES) {
                continue;
            }
            loop_entry_t *grown = am_realloc(entries, (n + 1) * sizeof(*grown));
            if (grown == NULL) {
                continue;
            }
            entries = grown;
            memset(&entries[n], 0, sizeof(entries[n]));
            if ((entries[n].tool = am_strdup(tool)) == NULL) {
                continue;
            }
            entries[n].hash = hash;
            n++;
        }
        entries[j].count++;
    }
    if (n == 0) {
        return;
    }
    if (session == NULL) {
        /* No session: the trace alone is the scope. */
        for (size_t j = 0; j < n; j++) {
            if (entries[j].count > inst->cfg->loops.max_repeats) {
                trace_ids_t ids = {.n = 0};
                trace_ids_add(&ids, trace->trace_id);
                add_anomaly_event(inst, batch, "loop", "trace", trace_hex,
                                  loop_evidence(entries[j].tool, entries[j].hash, entries[j].count,
                                                1, inst->cfg->loops.max_repeats),
                                  &ids, 0, now);
            }
            am_free(entries[j].tool);
        }
        am_free(entries);
        return;
    }
    group_t *g = inst->group;
    int owner = am_shard_for_key(session, g->n_shards);
    loop_msg_t *msg = am_calloc(1, sizeof(*msg));
    if (msg == NULL || (msg->session = am_strdup(session)) == NULL || g->insts[owner] == NULL) {
        for (size_t j = 0; j < n; j++) {
            am_free(entries[j].tool);
        }
        am_free(entries);
        if (msg != NULL) {
            am_free(msg->session);
        }
        am_free(msg);
        return;
    }
    msg->target = g->insts[owner];
    msg->entries = entries;
    msg->n_entries = n;
    memcpy(msg->trace_id, trace->trace_id, sizeof(msg->trace_id));
    if (msg->target == inst) {
        loop_run(msg);
    } else {
        run_on(g, owner, loop_run, msg);
    }
}

/* ---- burn rate ------------------------------------------------------------------ */

typedef struct burn_msg {
    anomaly_inst_t *target;
    char *key;
    am_money_t amount;
    uint8_t trace_id[16];
} burn_msg_t;

static bool burn_condition(const burn_cfg_t *cfg, const burn_t *b, am_money_t cost)
{
    return b->n_windows >= cfg->warmup && cost >= cfg->min_cost &&
           (double)cost > cfg->factor * b->ewma;
}

static json_object *burn_evidence(const burn_cfg_t *cfg, const burn_t *b, am_money_t cost)
{
    double per_minute = 60000.0 / (double)cfg->window_ms;
    json_object *ev = json_object_new_object();
    char wbuf[AM_TIME_STRLEN];
    uint64_t wstart = b->window_idx * (uint64_t)cfg->window_ms * NS_PER_MS;
    json_object_object_add(ev, "window_start",
                           json_object_new_string(am_time_format(wstart, wbuf)));
    json_object_object_add(ev, "window_seconds", json_object_new_int64(cfg->window_ms / 1000));
    json_object_object_add(ev, "window_cost", am_json_money(cost));
    json_object_object_add(ev, "rate_per_minute",
                           am_json_money((am_money_t)llround((double)cost * per_minute)));
    json_object_object_add(ev, "baseline_per_minute",
                           am_json_money((am_money_t)llround(b->ewma * per_minute)));
    json_object_object_add(ev, "factor", am_json_ratio(cfg->factor));
    json_object_object_add(ev, "min_cost", am_json_money(cfg->min_cost));
    json_object_object_add(ev, "windows_observed", json_object_new_int64(b->n_windows));
    return ev;
}

/* Close windows up to `now`; an episode ends at a closed window below the
 * line. */
static void burn_advance(const burn_cfg_t *cfg, burn_t *b, uint64_t now)
{
    uint64_t idx = now / ((uint64_t)cfg->window_ms * NS_PER_MS);
    int steps = 0;
    while (b->window_idx < idx) {
        if (b->in_episode && !burn_condition(cfg, b, b->cur_cost)) {
            b->in_episode = false;
        }
        b->ewma = b->n_windows == 0 ? (double)b->cur_cost
                                    : cfg->alpha * (double)b->cur_cost + (1 - cfg->alpha) * b->ewma;
        b->n_windows++;
        b->cur_cost = 0;
        b->trace_ids.n = 0;
        b->window_idx++;
        if (++steps == 1000) {
            b->window_idx = idx; /* long silence: the baseline has decayed anyway */
            b->ewma = 0;
        }
    }
}

static void apply_burn(anomaly_inst_t *inst, burn_msg_t *msg)
{
    const burn_cfg_t *cfg = &inst->cfg->burn_rate;
    uint64_t now = inst->clock(inst->clock_arg);
    burn_t *b = smap_get(&inst->burns, msg->key);
    if (b == NULL) {
        b = am_calloc(1, sizeof(*b));
        if (b == NULL || smap_put(&inst->burns, msg->key, b) != 0) {
            am_free(b);
            return;
        }
        b->window_idx = now / ((uint64_t)cfg->window_ms * NS_PER_MS);
    }
    burn_advance(cfg, b, now);
    b->cur_cost += msg->amount;
    b->last_seen_ns = now;
    trace_ids_add(&b->trace_ids, msg->trace_id);
    if (!b->in_episode && burn_condition(cfg, b, b->cur_cost)) {
        b->in_episode = true;
        am_batch_t *out = NULL;
        if (out_batch(&out) != NULL) {
            add_anomaly_event(inst, out, "burn_rate", cfg->scope, msg->key,
                              burn_evidence(cfg, b, b->cur_cost), &b->trace_ids, b->cur_cost, now);
        }
        emit(inst, out);
    }
}

static void burn_run(void *arg)
{
    burn_msg_t *msg = arg;
    apply_burn(msg->target, msg);
    am_free(msg->key);
    am_free(msg);
}

static void check_burn(anomaly_inst_t *inst, am_trace_t *trace)
{
    const char *keys[8];
    am_money_t amounts[8];
    size_t n = 0;
    const char *const scope_keys[] = {inst->cfg->burn_rate.scope, NULL};
    for (uint32_t i = 0; i < trace->n_spans; i++) {
        am_span_ref_t *ref = &trace->spans[i];
        if (ref->cost_self == 0) {
            continue;
        }
        const char *key = am_attr_first_str(ref->span, ref->resource, scope_keys);
        if (key == NULL) {
            continue;
        }
        size_t k = 0;
        while (k < n && strcmp(keys[k], key) != 0) {
            k++;
        }
        if (k == n) {
            if (n == AM_ARRAY_SIZE(keys)) {
                continue;
            }
            keys[n] = key;
            amounts[n++] = 0;
        }
        amounts[k] += ref->cost_self;
    }
    group_t *g = inst->group;
    for (size_t k = 0; k < n; k++) {
        char hk[512];
        snprintf(hk, sizeof(hk), "burn\x1f%s", keys[k]);
        int owner = am_shard_for_key(hk, g->n_shards);
        burn_msg_t *msg = am_calloc(1, sizeof(*msg));
        if (msg == NULL || (msg->key = am_strdup(keys[k])) == NULL || g->insts[owner] == NULL) {
            if (msg != NULL) {
                am_free(msg->key);
            }
            am_free(msg);
            continue;
        }
        msg->target = g->insts[owner];
        msg->amount = amounts[k];
        memcpy(msg->trace_id, trace->trace_id, sizeof(msg->trace_id));
        if (msg->target == inst) {
            burn_run(msg);
        } else {
            run_on(g, owner, burn_run, msg);
        }
    }
}

static am_status_t anomaly_consume(void *instance, am_batch_t *batch)
{
    anomaly_inst_t *inst = instance;
    uint64_t now = inst->clock(inst->clock_arg);
    for (size_t t = 0; batch->trace_index != NULL && t < batch->n_traces; t++) {
        am_trace_t *trace = &batch->trace_index[t];
        char trace_hex[33];
        am_hex(trace->trace_id, 16, trace_hex);
        if (inst->cfg->loops.max_repeats > 0) {
            check_loops(inst, batch, trace, trace_hex, now);
        }
        if (inst->cfg->burn_rate.factor > 0 && inst->cfg->burn_rate.scope != NULL) {
            check_burn(inst, trace);
        }
    }
    return inst->next != NULL ? am_consume(inst->next, batch) : AM_OK;
}

/* ---- tick, life cycle -------------------------------------------------------------- */

typedef struct gc_ctx {
    anomaly_inst_t *inst;
    uint64_t now;
    uint64_t idle_ns;
} gc_ctx_t;

static bool loop_idle(void *value, void *arg)
{
    const loop_sess_t *ls = value;
    const gc_ctx_t *ctx = arg;
    return ctx->now > ls->last_seen_ns && ctx->now - ls->last_seen_ns > ctx->idle_ns;
}

static bool burn_idle(void *value, void *arg)
{
    burn_t *b = value;
    const gc_ctx_t *ctx = arg;
    burn_advance(&ctx->inst->cfg->burn_rate, b, ctx->now);
    uint64_t idle = ctx->idle_ns;
    uint64_t ten_windows = (uint64_t)ctx->inst->cfg->burn_rate.window_ms * NS_PER_MS * 10;
    if (idle < ten_windows) {
        idle = ten_windows;
    }
    return ctx->now > b->last_seen_ns && ctx->now - b->last_seen_ns > idle;
}

void am__anomaly_tick(void *instance)
{
    anomaly_inst_t *inst = instance;
    gc_ctx_t ctx = {.inst = inst,
                    .now = inst->clock(inst->clock_arg),
                    .idle_ns = (uint64_t)inst->cfg->idle_timeout_ms * NS_PER_MS};
    smap_filter(&inst->loops, loop_idle, &ctx, loop_sess_free);
    smap_filter(&inst->burns, burn_idle, &ctx, burn_free);
}

static void tick_cb(uv_timer_t *timer)
{
    am__anomaly_tick(timer->data);
}

static void anomaly_destroy(void *instance);

static int anomaly_create(const am_create_params_t *params, void **instance)
{
    anomaly_inst_t *inst = am_calloc(1, sizeof(*inst));
    if (inst == NULL || (inst->id = am_strdup(params->id)) == NULL) {
        am_free(inst);
        return AM_ENOMEM;
    }
    inst->cfg = params->config;
    inst->next = params->next;
    inst->loop = params->loop;
    inst->shard = params->shard >= 0 ? params->shard : 0;
    inst->clock = default_clock;
    int n_shards = params->n_shards > 0 ? params->n_shards : 1;
    if (smap_init(&inst->loops, 64) != 0 || smap_init(&inst->burns, 64) != 0 ||
        inst->shard >= n_shards ||
        (inst->group = group_acquire(params->service, params->id, n_shards)) == NULL) {
        anomaly_destroy(inst);
        return AM_ENOMEM;
    }
    pthread_mutex_lock(&registry_lock);
    inst->group->insts[inst->shard] = inst;
    if (params->service != NULL && inst->group->shards == NULL) {
        inst->group->shards = am_service_shards((am_service_t *)params->service);
    }
    pthread_mutex_unlock(&registry_lock);
    char labels[300];
    snprintf(labels, sizeof(labels), "processor=\"%s\",kind=\"loop\"", params->id);
    inst->loop_events = am_selfmetrics_counter("agentmeter_anomaly_events_total",
                                               "anomaly.detected events emitted.", labels);
    snprintf(labels, sizeof(labels), "processor=\"%s\",kind=\"burn_rate\"", params->id);
    inst->burn_events = am_selfmetrics_counter("agentmeter_anomaly_events_total",
                                               "anomaly.detected events emitted.", labels);
    *instance = inst;
    return 0;
}

static int anomaly_start(void *instance)
{
    anomaly_inst_t *inst = instance;
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

static void anomaly_shutdown(void *instance)
{
    anomaly_inst_t *inst = instance;
    if (inst->shut) {
        return;
    }
    inst->shut = true;
    if (inst->timer != NULL) {
        uv_timer_stop(inst->timer);
        uv_close((uv_handle_t *)inst->timer, timer_closed);
        inst->timer = NULL;
    }
}

static void anomaly_destroy(void *instance)
{
    anomaly_inst_t *inst = instance;
    if (inst == NULL) {
        return;
    }
    if (inst->loops.buckets != NULL) {
        smap_free(&inst->loops, loop_sess_free);
    }
    if (inst->burns.buckets != NULL) {
        smap_free(&inst->burns, burn_free);
    }
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

void am__anomaly_set_clock(void *instance, am__anomaly_clock_fn fn, void *arg)
{
    anomaly_inst_t *inst = instance;
    inst->clock = fn != NULL ? fn : default_clock;
    inst->clock_arg = arg;
}

void am__anomaly_set_shards(void *instance, am_shards_t *shards)
{
    anomaly_inst_t *inst = instance;
    inst->group->shards = shards;
}

uint64_t am__anomaly_events_emitted(void *instance)
{
    anomaly_inst_t *inst = instance;
    return inst->events;
}

const am_component_ops_t am_processor_anomaly_ops = {
    .type = "anomaly",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Tool loops and cost burn-rate spikes: anomaly.detected events.",
    .options = anomaly_options,
    .config_size = sizeof(anomaly_config_t),
    .create = anomaly_create,
    .start = anomaly_start,
    .consume = anomaly_consume,
    .shutdown = anomaly_shutdown,
    .destroy = anomaly_destroy,
};
