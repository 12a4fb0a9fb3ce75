/*
 * am_service.c - config -> component graph -> running pipelines.
 *
 * See am_service.h for the shape.  Everything is allocated up front in
 * `build` (nodes, fan-outs, pipeline chains) so that every consumer pointer
 * handed to a component at create time is already final.
 */
#include "am_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_log.h"
#include "am_selfmetrics.h"
#include "am_shard.h"

#define MAX_ID 256

typedef struct comp_node comp_node_t;
typedef struct pipeline pipeline_t;

/* A fan-out: calls every consumer; gives mutating consumers their own copy
 * when more than one consumer shares the batch. */
typedef struct fanout {
    am_consumer_t consumer;
    am_consumer_t **targets;
    bool *mutates;
    unsigned *signals; /* 0: any; else only batches carrying one of these */
    size_t count;
} fanout_t;

struct comp_node {
    char *id;                       /* "kafka/spans" */
    const char *section;            /* "receivers", ... */
    const am_component_ops_t *ops;
    const am_node_t *cfg_node;
    void *config;                   /* parsed option struct */
    void *instance;                 /* receivers, exporters, connectors */
    am_consumer_t consumer;         /* exporters/connectors: consume side */
    fanout_t out;                   /* receivers/connectors: downstream */
    bool used;
    bool started;
    bool shut;
    comp_node_t *next;
};

typedef struct proc_inst {
    am_consumer_t consumer;
    comp_node_t *node;
    void *instance;
    bool started;
    bool shut;
} proc_inst_t;

struct pipeline {
    char *id;                      /* "traces", "metrics/prom" */
    unsigned signal;
    const am_node_t *cfg_node;
    comp_node_t **receivers;
    size_t n_receivers;
    comp_node_t **processors;
    size_t n_processors;
    comp_node_t **exporters;
    size_t n_exporters;
    size_t first_sharded;          /* index of the first sharded processor */
    proc_inst_t *lead;             /* n = first_sharded, on the main loop */
    proc_inst_t *sharded;          /* [shard][n_processors - first_sharded] */
    am_consumer_t dispatcher;      /* splits by trace id into shards */
    am_consumer_t entry;           /* where receivers push: entry.consume */
    am_consumer_t *entry_target;
    fanout_t out;                  /* -> exporters */
    bool mutates;
    int order;                     /* topological position */
    struct am_service *svc;
    pipeline_t *next;
};

typedef struct route {
    char *prefix;
    am_http_handler_fn handler;
    void *user_data;
    struct route *next;
} route_t;

struct am_service {
    am_config_t *config;
    am_service_opts_t opts;
    comp_node_t *nodes;
    pipeline_t *pipelines;
    pipeline_t **ordered;
    size_t n_pipelines;
    am_shards_t *shards;
    int n_shards;
    bool needs_shards;
    uv_loop_t *loop;
    am_http_server_t *telemetry;
    char *telemetry_address;
    route_t *routes;
    bool started;
    bool ready;
    bool shut;
    am_counter_t *refused_queue_full;
    am_service_t *reload_successor;
};

/* ---- service telemetry options --------------------------------------- */

typedef struct telemetry_metrics_cfg {
    bool set;
    char *address;
    char *level;
} telemetry_metrics_cfg_t;

typedef struct telemetry_logs_cfg {
    bool set;
    char *level;
    char *encoding;
} telemetry_logs_cfg_t;

typedef struct telemetry_cfg {
    bool set;
    telemetry_metrics_cfg_t metrics;
    telemetry_logs_cfg_t logs;
} telemetry_cfg_t;

static const am_option_t telemetry_metrics_options[] = {
    AM_OPT("address", AM_OPT_ENDPOINT, "127.0.0.1:8888", telemetry_metrics_cfg_t, address,
           "Address of /metrics, /healthz, /readyz and /v1/budgets."),
    {.name = "level", .type = AM_OPT_ENUM, .def = "normal",
     .offset = offsetof(telemetry_metrics_cfg_t, level), .choices = "none|basic|normal|detailed",
     .doc = "Accepted for Collector compatibility; all self-metrics are always on."},
    AM_OPT_END,
};

static const am_option_t telemetry_logs_options[] = {
    {.name = "level", .type = AM_OPT_ENUM, .def = "info",
     .offset = offsetof(telemetry_logs_cfg_t, level), .choices = "debug|info|warn|error",
     .doc = "Minimum log level."},
    {.name = "encoding", .type = AM_OPT_ENUM, .def = "console",
     .offset = offsetof(telemetry_logs_cfg_t, encoding), .choices = "console|json",
     .doc = "Log line encoding on stderr."},
    AM_OPT_END,
};

static const am_option_t telemetry_options[] = {
    {.name = "metrics", .type = AM_OPT_SECTION, .offset = offsetof(telemetry_cfg_t, metrics),
     .sub = telemetry_metrics_options, .doc = "Self-telemetry endpoint."},
    {.name = "logs", .type = AM_OPT_SECTION, .offset = offsetof(telemetry_cfg_t, logs),
     .sub = telemetry_logs_options, .doc = "Logging."},
    AM_OPT_END,
};

typedef struct service_cfg {
    telemetry_cfg_t telemetry;
} service_cfg_t;

/* Exposed for `agentmeter components`. */
const am_option_t am_service_telemetry_options[] = {
    {.name = "telemetry", .type = AM_OPT_SECTION, .offset = offsetof(service_cfg_t, telemetry),
     .sub = telemetry_options, .doc = "agentmeter's own logs and metrics."},
    AM_OPT_END,
};

/* ---- consumers ------------------------------------------------------- */

static am_status_t fanout_consume(am_consumer_t *self, am_batch_t *batch)
{
    fanout_t *fan = self->data;
    am_status_t worst = AM_OK;
    for (size_t i = 0; i < fan->count; i++) {
        am_status_t st;
        /* A connector feeds pipelines of several signals; each pipeline only
         * gets the batches of its own signal. */
        if (fan->signals[i] != 0 && (fan->signals[i] & batch->signal) == 0) {
            continue;
        }
        if (fan->mutates[i] && fan->count > 1) {
            am_batch_t *copy = am_batch_clone(batch);
            if (copy == NULL) {
                st = AM_RETRY;
            } else {
                st = am_consume(fan->targets[i], copy);
                am_batch_unref(copy);
            }
        } else {
            st = am_consume(fan->targets[i], batch);
        }
        if (st > worst) {
            worst = st;
        }
    }
    return worst;
}

static am_status_t node_consume(am_consumer_t *self, am_batch_t *batch)
{
    comp_node_t *node = self->data;
    return node->ops->consume(node->instance, batch);
}

static am_status_t proc_consume(am_consumer_t *self, am_batch_t *batch)
{
    proc_inst_t *inst = self->data;
    return inst->node->ops->consume(inst->instance, batch);
}

static atomic_int pressure_count;

void am_pressure_set(am_pressure_t *flag, bool raised)
{
    bool was = atomic_exchange(&flag->raised, raised);
    if (was == raised) {
        return;
    }
    atomic_fetch_add(&pressure_count, raised ? 1 : -1);
    if (raised) {
        AM_WARN("pressure", "%s is behind: refusing new data until it catches up",
                flag->who != NULL ? flag->who : "a component");
    } else {
        AM_INFO("pressure", "%s caught up", flag->who != NULL ? flag->who : "a component");
    }
}

bool am_pressure_active(void)
{
    return atomic_load(&pressure_count) > 0;
}

/* Receivers push here when the pipeline has no leading processors. */
static am_status_t entry_consume(am_consumer_t *self, am_batch_t *batch)
{
    pipeline_t *pl = self->data;
    if (am_pressure_active()) {
        return AM_RETRY;
    }
    return am_consume(pl->entry_target, batch);
}

static am_status_t dispatcher_consume(am_consumer_t *self, am_batch_t *batch)
{
    pipeline_t *pl = self->data;
    if (am_pressure_active()) {
        return AM_RETRY;
    }
    am_shards_t *shards = pl->svc->shards;
    int n = am_shards_count(shards);
    size_t n_sharded = pl->n_processors - pl->first_sharded;
    if (batch->span_count == 0 && batch->traces != NULL) {
        am_batch_count_spans(batch);
    }
    am_batch_t *parts[64];
    am_batch_t **out = n <= 64 ? parts : am_calloc((size_t)n, sizeof(*out));
    if (out == NULL) {
        return AM_RETRY;
    }
    am_status_t status = AM_OK;
    if (am_batch_split_by_shard(batch, n, out) != 0) {
        status = AM_RETRY;
        goto done;
    }
    /* All or nothing: a request refused in part would be resent whole by
     * the client and its accepted spans priced twice.  Check every shard
     * first; only this (main) thread adds to inboxes, so the answer holds. */
    for (int k = 0; k < n; k++) {
        if (out[k] != NULL && !am_shard_has_room(am_shards_get(shards, k), out[k]->span_count)) {
            status = AM_RETRY;
        }
    }
    for (int k = 0; k < n && status == AM_OK; k++) {
        if (out[k] == NULL) {
            continue;
        }
        am_shard_t *shard = am_shards_get(shards, k);
        am_consumer_t *head = &pl->sharded[(size_t)k * n_sharded].consumer;
        if (am_shard_post_batch_reserved(shard, head, out[k]) != AM_OK) {
            /* Only on allocation failure or a stopping shard; parts already
             * posted stay posted (at-least-once). */
            AM_WARN("service", "pipeline %s: a request was only partly handed to the shards",
                    pl->id);
            status = AM_RETRY;
        }
    }
    for (int k = 0; k < n; k++) {
        am_batch_unref(out[k]);
    }
done:
    if (out != parts) {
        am_free(out);
    }
    return status;
}

/* ---- helpers --------------------------------------------------------- */

static const char *signal_name(unsigned signal)
{
    switch (signal) {
    case AM_SIGNAL_TRACES: return "traces";
    case AM_SIGNAL_METRICS: return "metrics";
    case AM_SIGNAL_LOGS: return "logs";
    default: return "?";
    }
}

static void id_type(const char *id, char *type, size_t size)
{
    size_t len = strcspn(id, "/");
    if (len >= size) {
        len = size - 1;
    }
    memcpy(type, id, len);
    type[len] = '\0';
}

static bool valid_id(const char *id)
{
    const char *slash = strchr(id, '/');
    if (id[0] == '\0' || id[0] == '/' || (slash != NULL && slash[1] == '\0')) {
        return false;
    }
    if (slash != NULL && strchr(slash + 1, '/') != NULL) {
        return false;
    }
    return strlen(id) < MAX_ID;
}

static comp_node_t *find_node(am_service_t *svc, const char *section, const char *id)
{
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (strcmp(node->section, section) == 0 && strcmp(node->id, id) == 0) {
            return node;
        }
    }
    return NULL;
}

static const char *const section_names[] = {"receivers", "processors", "exporters", "connectors",
                                            "extensions", "service", NULL};

static const am_component_ops_t *find_ops(const char *section, const char *type)
{
    for (size_t i = 0; i < am_registry_count; i++) {
        const am_component_ops_t *ops = am_registry[i];
        bool kind_ok = false;
        if (strcmp(section, "receivers") == 0) {
            kind_ok = ops->kind == AM_KIND_RECEIVER;
        } else if (strcmp(section, "processors") == 0) {
            kind_ok = ops->kind == AM_KIND_PROCESSOR;
        } else if (strcmp(section, "exporters") == 0) {
            kind_ok = ops->kind == AM_KIND_EXPORTER;
        } else if (strcmp(section, "connectors") == 0) {
            kind_ok = ops->kind == AM_KIND_CONNECTOR;
        }
        if (kind_ok && strcmp(ops->type, type) == 0) {
            return ops;
        }
    }
    return NULL;
}

static void suggest_types(const char *section, const char *type, char *buf, size_t size)
{
    const char *names[128];
    size_t n = 0;
    for (size_t i = 0; i < am_registry_count && n < 127; i++) {
        const am_component_ops_t *ops = am_registry[i];
        if ((strcmp(section, "receivers") == 0 && ops->kind == AM_KIND_RECEIVER) ||
            (strcmp(section, "processors") == 0 && ops->kind == AM_KIND_PROCESSOR) ||
            (strcmp(section, "exporters") == 0 && ops->kind == AM_KIND_EXPORTER) ||
            (strcmp(section, "connectors") == 0 && ops->kind == AM_KIND_CONNECTOR)) {
            names[n++] = ops->type;
        }
    }
    names[n] = NULL;
    const char *best = am_did_you_mean(type, names);
    if (best != NULL) {
        snprintf(buf, size, "; did you mean \"%s\"?", best);
    } else {
        buf[0] = '\0';
    }
}

/* ---- build ----------------------------------------------------------- */

static void parse_components(am_service_t *svc, const am_node_t *root, const char *section,
                             am_errors_t *errs)
{
    const am_node_t *map = am_node_get(root, section);
    if (map == NULL || map->kind == AM_NODE_NULL) {
        return;
    }
    if (map->kind != AM_NODE_MAP) {
        am_errors_add(errs, map, "%s: expected a map of components, got a %s", section,
                      am_node_kind_name(map->kind));
        return;
    }
    for (size_t i = 0; i < map->n_children; i++) {
        const am_node_t *comp = map->children[i];
        char type[MAX_ID];
        if (!valid_id(comp->key)) {
            am_errors_add(errs, comp, "%s: invalid component id \"%s\" (expected type[/name])",
                          section, comp->key);
            continue;
        }
        id_type(comp->key, type, sizeof(type));
        const am_component_ops_t *ops = find_ops(section, type);
        if (ops == NULL) {
            char hint[128];
            suggest_types(section, type, hint, sizeof(hint));
            /* Point at the key: that is where the type is written. */
            am_errors_add_at(errs, comp->file, comp->key_line > 0 ? comp->key_line : comp->line,
                             "%s.%s: unknown %.*s type \"%s\"%s", section, comp->key,
                             (int)strlen(section) - 1, section, type, hint);
            continue;
        }
        comp_node_t *node = am_calloc(1, sizeof(*node));
        if (node == NULL) {
            am_errors_add(errs, comp, "out of memory");
            return;
        }
        node->id = am_strdup(comp->key);
        node->config = am_calloc(1, ops->config_size > 0 ? ops->config_size : 1);
        node->section = section;
        node->ops = ops;
        node->cfg_node = comp;
        node->next = svc->nodes;
        svc->nodes = node;
        if (node->id == NULL || node->config == NULL) {
            am_errors_add(errs, comp, "out of memory");
            return;
        }
        char prefix[MAX_ID + 32];
        snprintf(prefix, sizeof(prefix), "%s.%s", section, comp->key);
        if (comp->kind != AM_NODE_MAP && comp->kind != AM_NODE_NULL) {
            am_errors_add(errs, comp, "%s: expected a map of options, got a %s", prefix,
                          am_node_kind_name(comp->kind));
            continue;
        }
        size_t before = errs->count;
        am_options_parse(ops->options, node->config, comp,
                         prefix, errs);
        if (errs->count == before && ops->validate != NULL) {
            ops->validate(node->config, comp, prefix, errs);
        }
    }
}

static size_t resolve_list(am_service_t *svc, pipeline_t *pl, const am_node_t *pnode,
                           const char *key, comp_node_t ***out, am_errors_t *errs)
{
    const am_node_t *list = am_node_get(pnode, key);
    *out = NULL;
    if (list == NULL || list->kind == AM_NODE_NULL) {
        return 0;
    }
    if (list->kind != AM_NODE_SEQ) {
        am_errors_add(errs, list, "service.pipelines.%s.%s: expected a list of component ids",
                      pl->id, key);
        return 0;
    }
    *out = am_calloc(list->n_children + 1, sizeof(comp_node_t *));
    if (*out == NULL) {
        am_errors_add(errs, list, "out of memory");
        return 0;
    }
    size_t n = 0;
    for (size_t i = 0; i < list->n_children; i++) {
        const am_node_t *item = list->children[i];
        if (item->kind != AM_NODE_SCALAR) {
            am_errors_add(errs, item, "service.pipelines.%s.%s[%zu]: expected a component id",
                          pl->id, key, i);
            continue;
        }
        comp_node_t *node = NULL;
        if (strcmp(key, "receivers") == 0) {
            node = find_node(svc, "receivers", item->str);
            if (node == NULL) {
                node = find_node(svc, "connectors", item->str);
            }
        } else if (strcmp(key, "exporters") == 0) {
            node = find_node(svc, "exporters", item->str);
            if (node == NULL) {
                node = find_node(svc, "connectors", item->str);
            }
        } else {
            node = find_node(svc, "processors", item->str);
        }
        if (node == NULL) {
            const char *ids[64];
            size_t n_ids = 0;
            for (comp_node_t *c = svc->nodes; c != NULL && n_ids < 63; c = c->next) {
                bool same = strcmp(key, "processors") == 0
                                ? strcmp(c->section, "processors") == 0
                                : strcmp(c->section, key) == 0 ||
                                      strcmp(c->section, "connectors") == 0;
                if (same) {
                    ids[n_ids++] = c->id;
                }
            }
            ids[n_ids] = NULL;
            const char *best = am_did_you_mean(item->str, ids);
            am_errors_add(errs, item,
                          "service.pipelines.%s.%s: \"%s\" is not defined in the %s section%s%s%s",
                          pl->id, key, item->str, key, best ? "; did you mean \"" : "",
                          best ? best : "", best ? "\"?" : "");
            continue;
        }
        for (size_t j = 0; j < n; j++) {
            if ((*out)[j] == node) {
                am_errors_add(errs, item, "service.pipelines.%s.%s: \"%s\" is listed twice",
                              pl->id, key, item->str);
                node = NULL;
                break;
            }
        }
        if (node == NULL) {
            continue;
        }
        /* Signal checks. */
        const am_component_ops_t *ops = node->ops;
        if (ops->kind == AM_KIND_CONNECTOR) {
            unsigned sig = strcmp(key, "receivers") == 0 ? ops->out_signals : ops->signals;
            if ((sig & pl->signal) == 0) {
                am_errors_add(errs, item,
                              "service.pipelines.%s.%s: connector \"%s\" cannot %s %s", pl->id,
                              key, item->str,
                              strcmp(key, "receivers") == 0 ? "produce" : "consume",
                              signal_name(pl->signal));
            }
        } else if ((ops->signals & pl->signal) == 0) {
            am_errors_add(errs, item, "service.pipelines.%s.%s: \"%s\" does not support %s",
                          pl->id, key, item->str, signal_name(pl->signal));
        }
        node->used = true;
        (*out)[n++] = node;
    }
    return n;
}

static void parse_pipelines(am_service_t *svc, const am_node_t *root, am_errors_t *errs)
{
    const am_node_t *service = am_node_get(root, "service");
    const am_node_t *pipes = service != NULL ? am_node_get(service, "pipelines") : NULL;
    if (pipes == NULL || pipes->kind != AM_NODE_MAP || pipes->n_children == 0) {
        am_errors_add(errs, pipes != NULL ? pipes : (service != NULL ? service : root),
                      "service.pipelines: at least one pipeline is required");
        return;
    }
    pipeline_t **tail = &svc->pipelines;
    for (size_t i = 0; i < pipes->n_children; i++) {
        const am_node_t *pnode = pipes->children[i];
        char type[MAX_ID];
        if (!valid_id(pnode->key)) {
            am_errors_add(errs, pnode, "service.pipelines: invalid pipeline id \"%s\"", pnode->key);
            continue;
        }
        id_type(pnode->key, type, sizeof(type));
        unsigned signal = 0;
        if (strcmp(type, "traces") == 0) {
            signal = AM_SIGNAL_TRACES;
        } else if (strcmp(type, "metrics") == 0) {
            signal = AM_SIGNAL_METRICS;
        } else if (strcmp(type, "logs") == 0) {
            signal = AM_SIGNAL_LOGS;
        } else {
            static const char *const signals[] = {"traces", "metrics", "logs", NULL};
            const char *best = am_did_you_mean(type, signals);
            am_errors_add(errs, pnode,
                          "service.pipelines.%s: unknown signal \"%s\" (traces, metrics or "
                          "logs)%s%s%s",
                          pnode->key, type, best ? "; did you mean \"" : "", best ? best : "",
                          best ? "\"?" : "");
            continue;
        }
        if (pnode->kind != AM_NODE_MAP) {
            am_errors_add(errs, pnode, "service.pipelines.%s: expected a map", pnode->key);
            continue;
        }
        static const char *const pipe_keys[] = {"receivers", "processors", "exporters", NULL};
        for (size_t k = 0; k < pnode->n_children; k++) {
            const char *key = pnode->children[k]->key;
            if (strcmp(key, "receivers") != 0 && strcmp(key, "processors") != 0 &&
                strcmp(key, "exporters") != 0) {
                const char *best = am_did_you_mean(key, pipe_keys);
                am_errors_add(errs, pnode->children[k],
                              "unknown key \"service.pipelines.%s.%s\"%s%s%s", pnode->key, key,
                              best ? "; did you mean \"" : "", best ? best : "",
                              best ? "\"?" : "");
            }
        }
        pipeline_t *pl = am_calloc(1, sizeof(*pl));
        if (pl == NULL) {
            am_errors_add(errs, pnode, "out of memory");
            return;
        }
        *tail = pl;
        tail = &pl->next;
        svc->n_pipelines++;
        pl->id = am_strdup(pnode->key);
        if (pl->id == NULL) {
            am_errors_add(errs, pnode, "out of memory");
            return;
        }
        pl->signal = signal;
        pl->cfg_node = pnode;
        pl->svc = svc;
        pl->n_receivers = resolve_list(svc, pl, pnode, "receivers", &pl->receivers, errs);
        pl->n_processors = resolve_list(svc, pl, pnode, "processors", &pl->processors, errs);
        pl->n_exporters = resolve_list(svc, pl, pnode, "exporters", &pl->exporters, errs);
        if (am_node_get(pnode, "receivers") == NULL || pl->n_receivers == 0) {
            am_errors_add(errs, pnode, "service.pipelines.%s: must have at least one receiver",
                          pl->id);
        }
        if (am_node_get(pnode, "exporters") == NULL || pl->n_exporters == 0) {
            am_errors_add(errs, pnode, "service.pipelines.%s: must have at least one exporter",
                          pl->id);
        }
        pl->first_sharded = pl->n_processors;
        for (size_t p = 0; p < pl->n_processors; p++) {
            if (pl->processors[p]->ops->flags & AM_COMP_MUTATES) {
                pl->mutates = true;
            }
            if ((pl->processors[p]->ops->flags & AM_COMP_SHARDED) &&
                pl->first_sharded == pl->n_processors) {
                pl->first_sharded = p;
            }
        }
        if (pl->first_sharded < pl->n_processors) {
            svc->needs_shards = true;
        }
    }
}

/* Connectors must be both an exporter somewhere and a receiver somewhere;
 * connector chains must not loop.  Order pipelines so that a pipeline comes
 * before every pipeline its connectors feed. */
static void order_pipelines(am_service_t *svc, am_errors_t *errs)
{
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (node->ops->kind != AM_KIND_CONNECTOR || !node->used) {
            continue;
        }
        bool as_exporter = false, as_receiver = false;
        for (pipeline_t *p = svc->pipelines; p != NULL; p = p->next) {
            for (size_t i = 0; i < p->n_exporters; i++) {
                as_exporter |= p->exporters[i] == node;
            }
            for (size_t i = 0; i < p->n_receivers; i++) {
                as_receiver |= p->receivers[i] == node;
            }
        }
        if (!as_exporter || !as_receiver) {
            am_errors_add(errs, node->cfg_node,
                          "connectors.%s: a connector must be used as an exporter in one "
                          "pipeline and as a receiver in another",
                          node->id);
        }
    }
    svc->ordered = am_calloc(svc->n_pipelines + 1, sizeof(pipeline_t *));
    if (svc->ordered == NULL) {
        am_errors_add(errs, NULL, "out of memory");
        return;
    }
    /* Kahn's algorithm over "p feeds q" edges. */
    size_t placed = 0;
    for (pipeline_t *p = svc->pipelines; p != NULL; p = p->next) {
        p->order = -1;
    }
    while (placed < svc->n_pipelines) {
        bool progress = false;
        for (pipeline_t *q = svc->pipelines; q != NULL; q = q->next) {
            if (q->order >= 0) {
                continue;
            }
            bool ready = true;
            for (size_t r = 0; r < q->n_receivers && ready; r++) {
                comp_node_t *conn = q->receivers[r];
                if (conn->ops->kind != AM_KIND_CONNECTOR) {
                    continue;
                }
                for (pipeline_t *p = svc->pipelines; p != NULL && ready; p = p->next) {
                    for (size_t e = 0; e < p->n_exporters; e++) {
                        if (p->exporters[e] == conn && p->order < 0 && p != q) {
                            ready = false;
                        }
                    }
                }
            }
            if (ready) {
                q->order = (int)placed;
                svc->ordered[placed++] = q;
                progress = true;
            }
        }
        if (!progress) {
            am_errors_add(errs, NULL, "service.pipelines: connectors form a cycle");
            return;
        }
    }
}

static int fanout_init(fanout_t *fan, size_t count)
{
    fan->consumer.consume = fanout_consume;
    fan->consumer.data = fan;
    fan->targets = am_calloc(count + 1, sizeof(*fan->targets));
    fan->mutates = am_calloc(count + 1, sizeof(*fan->mutates));
    fan->signals = am_calloc(count + 1, sizeof(*fan->signals));
    if (fan->targets == NULL || fan->mutates == NULL || fan->signals == NULL) {
        return AM_ENOMEM;
    }
    return 0;
}

static void fanout_add(fanout_t *fan, am_consumer_t *target, bool mutates, unsigned signal)
{
    fan->targets[fan->count] = target;
    fan->mutates[fan->count] = mutates;
    fan->signals[fan->count] = signal;
    fan->count++;
}


static am_create_params_t make_params(am_service_t *svc, comp_node_t *node, uv_loop_t *loop,
                                      am_consumer_t *next, unsigned signal, int shard)
{
    am_create_params_t params = {
        .id = node->id,
        .config = node->config,
        .loop = loop,
        .next = next,
        .signal = signal,
        .shard = shard,
        .n_shards = svc->n_shards,
        .service = svc,
    };
    return params;
}

/* Wire consumers and create every instance.  Order: exporters, then
 * pipelines from the last in topological order to the first (so connector
 * targets exist), connectors, receivers. */
static int create_instances(am_service_t *svc, am_errors_t *errs)
{
    uv_loop_t *loop = svc->loop;
    /* Consumers of exporters and connectors. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        node->consumer.consume = node_consume;
        node->consumer.data = node;
    }
    /* Pipeline chains. */
    for (size_t o = 0; o < svc->n_pipelines; o++) {
        pipeline_t *pl = svc->ordered[o];
        if (fanout_init(&pl->out, pl->n_exporters) != 0) {
            goto nomem;
        }
        for (size_t e = 0; e < pl->n_exporters; e++) {
            fanout_add(&pl->out, &pl->exporters[e]->consumer,
                       (pl->exporters[e]->ops->flags & AM_COMP_MUTATES) != 0, 0);
        }
        size_t n_lead = pl->first_sharded;
        size_t n_sharded = pl->n_processors - pl->first_sharded;
        pl->lead = am_calloc(n_lead + 1, sizeof(proc_inst_t));
        pl->sharded = am_calloc((size_t)svc->n_shards * n_sharded + 1, sizeof(proc_inst_t));
        if (pl->lead == NULL || pl->sharded == NULL) {
            goto nomem;
        }
        pl->dispatcher.consume = dispatcher_consume;
        pl->dispatcher.data = pl;
        for (size_t p = 0; p < n_lead; p++) {
            proc_inst_t *inst = &pl->lead[p];
            inst->node = pl->processors[p];
            inst->consumer.consume = proc_consume;
            inst->consumer.data = inst;
        }
        for (int k = 0; k < svc->n_shards && n_sharded > 0; k++) {
            for (size_t p = 0; p < n_sharded; p++) {
                proc_inst_t *inst = &pl->sharded[(size_t)k * n_sharded + p];
                inst->node = pl->processors[pl->first_sharded + p];
                inst->consumer.consume = proc_consume;
                inst->consumer.data = inst;
            }
        }
        pl->entry_target = n_lead > 0 ? &pl->lead[0].consumer
                             : n_sharded > 0 ? &pl->dispatcher
                                             : &pl->out.consumer;
        pl->entry.consume = entry_consume;
        pl->entry.data = pl;
    }
    /* Receiver and connector fan-outs into pipeline entries. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (!node->used ||
            (node->ops->kind != AM_KIND_RECEIVER && node->ops->kind != AM_KIND_CONNECTOR)) {
            continue;
        }
        if (fanout_init(&node->out, svc->n_pipelines) != 0) {
            goto nomem;
        }
        for (pipeline_t *p = svc->pipelines; p != NULL; p = p->next) {
            for (size_t r = 0; r < p->n_receivers; r++) {
                if (p->receivers[r] == node) {
                    /* Traces from receivers go through the pressure check;
                     * connectors feed downstream pipelines directly (data
                     * already inside must keep flowing). */
                    fanout_add(&node->out,
                               node->ops->kind == AM_KIND_RECEIVER ? &p->entry
                                                                   : p->entry_target,
                               p->mutates, p->signal);
                }
            }
        }
    }
    /* Create: exporters and connectors. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (!node->used || node->ops->kind == AM_KIND_RECEIVER ||
            node->ops->kind == AM_KIND_PROCESSOR) {
            continue;
        }
        unsigned signal = 0;
        for (pipeline_t *p = svc->pipelines; p != NULL; p = p->next) {
            for (size_t e = 0; e < p->n_exporters; e++) {
                if (p->exporters[e] == node) {
                    signal |= p->signal;
                }
            }
        }
        am_create_params_t params =
            make_params(svc, node, loop,
                        node->ops->kind == AM_KIND_CONNECTOR ? &node->out.consumer : NULL, signal,
                        -1);
        int rc = node->ops->create(&params, &node->instance);
        if (rc != 0) {
            am_errors_add(errs, node->cfg_node, "%s.%s: cannot create: %s", node->section,
                          node->id, am_strerror(rc));
            return rc;
        }
    }
    /* Processors. */
    for (size_t o = 0; o < svc->n_pipelines; o++) {
        pipeline_t *pl = svc->ordered[o];
        size_t n_lead = pl->first_sharded;
        size_t n_sharded = pl->n_processors - n_lead;
        for (size_t p = 0; p < n_lead; p++) {
            proc_inst_t *inst = &pl->lead[p];
            am_consumer_t *next = p + 1 < n_lead ? &pl->lead[p + 1].consumer
                                  : n_sharded > 0 ? &pl->dispatcher
                                                  : &pl->out.consumer;
            am_create_params_t params = make_params(svc, inst->node, loop, next, pl->signal, -1);
            int rc = inst->node->ops->create(&params, &inst->instance);
            if (rc != 0) {
                am_errors_add(errs, inst->node->cfg_node, "processors.%s: cannot create: %s",
                              inst->node->id, am_strerror(rc));
                return rc;
            }
        }
        for (int k = 0; k < svc->n_shards && n_sharded > 0; k++) {
            am_shard_t *shard = am_shards_get(svc->shards, k);
            for (size_t p = 0; p < n_sharded; p++) {
                proc_inst_t *inst = &pl->sharded[(size_t)k * n_sharded + p];
                am_consumer_t *next = p + 1 < n_sharded
                                          ? &pl->sharded[(size_t)k * n_sharded + p + 1].consumer
                                          : &pl->out.consumer;
                am_create_params_t params = make_params(svc, inst->node, am_shard_loop(shard),
                                                        next, pl->signal, k);
                int rc = inst->node->ops->create(&params, &inst->instance);
                if (rc != 0) {
                    am_errors_add(errs, inst->node->cfg_node, "processors.%s: cannot create: %s",
                                  inst->node->id, am_strerror(rc));
                    return rc;
                }
            }
        }
    }
    /* Receivers. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (!node->used || node->ops->kind != AM_KIND_RECEIVER) {
            continue;
        }
        unsigned signal = 0;
        for (pipeline_t *p = svc->pipelines; p != NULL; p = p->next) {
            for (size_t r = 0; r < p->n_receivers; r++) {
                if (p->receivers[r] == node) {
                    signal |= p->signal;
                }
            }
        }
        am_create_params_t params = make_params(svc, node, loop, &node->out.consumer, signal, -1);
        int rc = node->ops->create(&params, &node->instance);
        if (rc != 0) {
            am_errors_add(errs, node->cfg_node, "receivers.%s: cannot create: %s", node->id,
                          am_strerror(rc));
            return rc;
        }
    }
    return 0;
nomem:
    am_errors_add(errs, NULL, "out of memory");
    return AM_ENOMEM;
}

static void apply_service_options(am_service_t *svc, const am_node_t *root, am_errors_t *errs)
{
    const am_node_t *service = am_node_get(root, "service");
    service_cfg_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    if (service != NULL && service->kind == AM_NODE_MAP) {
        /* Only `telemetry` and `pipelines` (checked elsewhere) are known;
         * build a filtered view for the option parser. */
        am_node_t view = *service;
        am_node_t *kids[8];
        size_t n = 0;
        for (size_t i = 0; i < service->n_children; i++) {
            const char *key = service->children[i]->key;
            if (strcmp(key, "pipelines") == 0 || strcmp(key, "extensions") == 0) {
                continue;
            }
            if (n < AM_ARRAY_SIZE(kids)) {
                kids[n++] = service->children[i];
            }
        }
        view.children = kids;
        view.n_children = n;
        am_options_parse(am_service_telemetry_options, &cfg, &view, "service", errs);
    } else {
        am_options_parse(am_service_telemetry_options, &cfg, NULL, "service", errs);
    }
    if (cfg.telemetry.metrics.address != NULL) {
        svc->telemetry_address = am_strdup(cfg.telemetry.metrics.address);
    }
    if (cfg.telemetry.logs.level != NULL) {
        am_log_set_level_name(cfg.telemetry.logs.level);
    }
    if (cfg.telemetry.logs.encoding != NULL) {
        am_log_set_encoding(cfg.telemetry.logs.encoding);
    }
    am_options_free(am_service_telemetry_options, &cfg);
}

static void check_top_level(const am_node_t *root, am_errors_t *errs)
{
    for (size_t i = 0; i < root->n_children; i++) {
        const char *key = root->children[i]->key;
        bool known = false;
        for (size_t k = 0; section_names[k] != NULL; k++) {
            known |= strcmp(key, section_names[k]) == 0;
        }
        if (!known) {
            const char *best = am_did_you_mean(key, section_names);
            am_errors_add(errs, root->children[i], "unknown top-level key \"%s\"%s%s%s", key,
                          best ? "; did you mean \"" : "", best ? best : "", best ? "\"?" : "");
        }
    }
}

static int default_shards(void)
{
    unsigned int n = 0;
    uv_cpu_info_t *cpus;
    int count;
    if (uv_cpu_info(&cpus, &count) == 0) {
        n = (unsigned)count;
        uv_free_cpu_info(cpus, count);
    }
    return n > 0 ? (int)n : 1;
}

am_service_t *am_service_build(am_config_t *config, const am_service_opts_t *opts,
                               am_errors_t *errs)
{
    am_service_t *svc = am_calloc(1, sizeof(*svc));
    if (svc == NULL) {
        am_config_free(config);
        am_errors_add(errs, NULL, "out of memory");
        return NULL;
    }
    svc->config = config;
    svc->opts = *opts;
    svc->n_shards = opts->shards > 0 ? opts->shards : default_shards();
    if (svc->n_shards > 256) {
        svc->n_shards = 256;
    }
    const am_node_t *root = am_config_root(config);
    size_t before = errs->count;
    check_top_level(root, errs);
    parse_components(svc, root, "receivers", errs);
    parse_components(svc, root, "processors", errs);
    parse_components(svc, root, "exporters", errs);
    parse_components(svc, root, "connectors", errs);
    apply_service_options(svc, root, errs);
    parse_pipelines(svc, root, errs);
    if (errs->count == before) {
        order_pipelines(svc, errs);
    }
    if (errs->count != before) {
        am_service_free(svc);
        return NULL;
    }
    return svc;
}

/* ---- telemetry HTTP --------------------------------------------------- */

static void telemetry_handler(am_http_request_t *req)
{
    am_service_t *svc = req->user_data;
    if (strcmp(req->path, "/metrics") == 0) {
        size_t len = 0;
        char *text = am_selfmetrics_render(&len);
        if (text == NULL) {
            am_http_respond(req, 500, "text/plain", NULL, "out of memory\n", 14);
            return;
        }
        am_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len);
        am_free(text);
        return;
    }
    if (strcmp(req->path, "/healthz") == 0) {
        am_http_respond(req, 200, "application/json", NULL, "{\"status\":\"ok\"}\n", 16);
        return;
    }
    if (strcmp(req->path, "/readyz") == 0) {
        if (svc->ready) {
            am_http_respond(req, 200, "application/json", NULL, "{\"status\":\"ready\"}\n", 19);
        } else {
            am_http_respond(req, 503, "application/json", NULL, "{\"status\":\"not ready\"}\n",
                            23);
        }
        return;
    }
    for (route_t *route = svc->routes; route != NULL; route = route->next) {
        if (strncmp(req->path, route->prefix, strlen(route->prefix)) == 0) {
            req->user_data = route->user_data;
            route->handler(req);
            return;
        }
    }
    am_http_respond(req, 404, "text/plain", NULL, "not found\n", 10);
}

int am_service_add_route(am_service_t *service, const char *path_prefix,
                         am_http_handler_fn handler, void *user_data)
{
    for (route_t *route = service->routes; route != NULL; route = route->next) {
        if (strcmp(route->prefix, path_prefix) == 0) {
            return AM_EEXIST;
        }
    }
    route_t *route = am_calloc(1, sizeof(*route));
    if (route == NULL || (route->prefix = am_strdup(path_prefix)) == NULL) {
        am_free(route);
        return AM_ENOMEM;
    }
    route->handler = handler;
    route->user_data = user_data;
    route->next = service->routes;
    service->routes = route;
    return 0;
}

void am_service_set_reload_successor(am_service_t *old, am_service_t *successor)
{
    old->reload_successor = successor;
}

am_service_t *am_service_reload_successor(const am_service_t *service)
{
    return service->reload_successor;
}

bool am_service_uses(const am_service_t *service, const char *section, const char *id)
{
    for (comp_node_t *node = service->nodes; node != NULL; node = node->next) {
        if (node->used && strcmp(node->section, section) == 0 && strcmp(node->id, id) == 0) {
            return true;
        }
    }
    return false;
}

struct am_shards *am_service_shards(am_service_t *service)
{
    return service->shards;
}

bool am_service_ready(const am_service_t *service)
{
    return service->ready;
}

static int64_t shard_queue_gauge(void *user_data)
{
    am_service_t *svc = user_data;
    int64_t total = 0;
    if (svc->shards != NULL) {
        for (int k = 0; k < am_shards_count(svc->shards); k++) {
            total += (int64_t)am_shard_queued_spans(am_shards_get(svc->shards, k));
        }
    }
    return total;
}

typedef struct start_call {
    proc_inst_t *inst;
    int rc;
} start_call_t;

static void start_on_shard(void *arg)
{
    start_call_t *call = arg;
    call->rc = call->inst->node->ops->start != NULL ? call->inst->node->ops->start(call->inst->instance) : 0;
    call->inst->started = call->rc == 0;
}

int am_service_start(am_service_t *svc, uv_loop_t *loop)
{
    am_errors_t errs = {0};
    int rc = 0;
    svc->loop = loop;
    if (svc->needs_shards) {
        rc = am_shards_start(svc->n_shards, 0, &svc->shards);
        if (rc != 0) {
            return rc;
        }
    }
    rc = create_instances(svc, &errs);
    if (rc != 0) {
        am_errors_print(&errs, stderr);
        am_errors_clear(&errs);
        return rc;
    }
    svc->started = true;
    /* Telemetry first, so /healthz answers while components start. */
    if (!svc->opts.skip_telemetry && svc->telemetry_address != NULL) {
        am_http_server_opts_t hopts = {
            .endpoint = svc->telemetry_address,
            .max_body_bytes = 1 << 20,
            .handler = telemetry_handler,
            .user_data = svc,
        };
        rc = am_http_server_start(loop, &hopts, &svc->telemetry);
        if (rc != 0) {
            return rc;
        }
    }
    am_selfmetrics_gauge_fn("agentmeter_shard_queue_spans",
                            "Spans waiting in shard inboxes.", "", shard_queue_gauge, svc);
    /* Start downstream first: exporters and connectors, processors, then
     * receivers, so no data arrives at a component that is not running. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (!node->used || node->ops->kind == AM_KIND_RECEIVER) {
            continue;
        }
        if (node->ops->kind == AM_KIND_PROCESSOR) {
            continue;
        }
        rc = node->ops->start != NULL ? node->ops->start(node->instance) : 0;
        if (rc != 0) {
            AM_ERROR("service", "%s.%s: start failed: %s", node->section, node->id, am_strerror(rc));
            return rc;
        }
        node->started = true;
    }
    for (size_t o = 0; o < svc->n_pipelines; o++) {
        pipeline_t *pl = svc->ordered[o];
        size_t n_sharded = pl->n_processors - pl->first_sharded;
        for (size_t p = 0; p < pl->first_sharded; p++) {
            proc_inst_t *inst = &pl->lead[p];
            rc = inst->node->ops->start != NULL ? inst->node->ops->start(inst->instance) : 0;
            if (rc != 0) {
                AM_ERROR("service", "processors.%s: start failed: %s", inst->node->id,
                         am_strerror(rc));
                return rc;
            }
            inst->started = true;
        }
        for (int k = 0; k < svc->n_shards && n_sharded > 0; k++) {
            for (size_t p = 0; p < n_sharded; p++) {
                start_call_t call = {.inst = &pl->sharded[(size_t)k * n_sharded + p]};
                am_shard_call(am_shards_get(svc->shards, k), start_on_shard, &call);
                if (call.rc != 0) {
                    AM_ERROR("service", "processors.%s: start failed on shard %d: %s",
                             call.inst->node->id, k, am_strerror(call.rc));
                    return call.rc;
                }
            }
        }
    }
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (!node->used || node->ops->kind != AM_KIND_RECEIVER) {
            continue;
        }
        rc = node->ops->start != NULL ? node->ops->start(node->instance) : 0;
        if (rc != 0) {
            AM_ERROR("service", "receivers.%s: start failed: %s", node->id, am_strerror(rc));
            return rc;
        }
        node->started = true;
    }
    svc->ready = true;
    AM_INFO("service", "everything is ready: %zu pipeline(s), %d shard(s)", svc->n_pipelines,
            svc->shards != NULL ? svc->n_shards : 0);
    return 0;
}

typedef struct shutdown_call {
    pipeline_t *pl;
    int shard;
} shutdown_call_t;

static void shutdown_on_shard(void *arg)
{
    shutdown_call_t *call = arg;
    pipeline_t *pl = call->pl;
    size_t n_sharded = pl->n_processors - pl->first_sharded;
    for (size_t p = 0; p < n_sharded; p++) {
        proc_inst_t *inst = &pl->sharded[(size_t)call->shard * n_sharded + p];
        if (inst->started && !inst->shut && inst->node->ops->shutdown != NULL) {
            inst->node->ops->shutdown(inst->instance);
        }
        inst->shut = true;
    }
}

static void node_shutdown(comp_node_t *node)
{
    if (node->started && !node->shut && node->ops->shutdown != NULL) {
        node->ops->shutdown(node->instance);
    }
    node->shut = true;
}

void am_service_shutdown(am_service_t *svc)
{
    if (svc == NULL || svc->shut) {
        return;
    }
    svc->shut = true;
    svc->ready = false;
    /* 1. Receivers stop taking data. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (node->used && node->ops->kind == AM_KIND_RECEIVER) {
            node_shutdown(node);
        }
    }
    /* 2. Pipelines in topological order: processors flush downstream, then
     * the connectors they feed flush into later pipelines. */
    for (size_t o = 0; o < svc->n_pipelines; o++) {
        pipeline_t *pl = svc->ordered[o];
        if (pl->lead == NULL) {
            continue;
        }
        for (size_t p = 0; p < pl->first_sharded; p++) {
            proc_inst_t *inst = &pl->lead[p];
            if (inst->started && !inst->shut && inst->node->ops->shutdown != NULL) {
                inst->node->ops->shutdown(inst->instance);
            }
            inst->shut = true;
        }
        if (pl->first_sharded < pl->n_processors && svc->shards != NULL) {
            for (int k = 0; k < svc->n_shards; k++) {
                shutdown_call_t call = {.pl = pl, .shard = k};
                /* am_shard_call drains the inbox before running (FIFO), so
                 * queued batches are processed before the flush. */
                am_shard_call(am_shards_get(svc->shards, k), shutdown_on_shard, &call);
            }
        }
        for (size_t e = 0; e < pl->n_exporters; e++) {
            if (pl->exporters[e]->ops->kind == AM_KIND_CONNECTOR) {
                node_shutdown(pl->exporters[e]);
            }
        }
    }
    /* 3. Shards are idle now: stop them. */
    if (svc->shards != NULL) {
        am_shards_stop(svc->shards);
        svc->shards = NULL;
    }
    /* 4. Exporters flush last. */
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (node->used && node->ops->kind == AM_KIND_EXPORTER) {
            node_shutdown(node);
        }
    }
    am_selfmetrics_unregister(svc);
    if (svc->telemetry != NULL) {
        am_http_server_close(svc->telemetry);
        svc->telemetry = NULL;
    }
}

typedef struct reload_call {
    proc_inst_t *inst;
} reload_call_t;

static void reload_on_shard(void *arg)
{
    reload_call_t *call = arg;
    call->inst->node->ops->reload(call->inst->instance);
}

void am_service_reload_components(am_service_t *svc)
{
    for (comp_node_t *node = svc->nodes; node != NULL; node = node->next) {
        if (node->started && node->ops->reload != NULL && node->instance != NULL) {
            node->ops->reload(node->instance);
        }
    }
    for (pipeline_t *pl = svc->pipelines; pl != NULL; pl = pl->next) {
        for (size_t p = 0; p < pl->first_sharded && pl->lead != NULL; p++) {
            if (pl->lead[p].started && pl->lead[p].node->ops->reload != NULL) {
                pl->lead[p].node->ops->reload(pl->lead[p].instance);
            }
        }
        size_t n_sharded = pl->n_processors - pl->first_sharded;
        for (int k = 0; k < svc->n_shards && n_sharded > 0 && svc->shards != NULL; k++) {
            for (size_t p = 0; p < n_sharded; p++) {
                proc_inst_t *inst = &pl->sharded[(size_t)k * n_sharded + p];
                if (inst->started && inst->node->ops->reload != NULL) {
                    reload_call_t call = {.inst = inst};
                    am_shard_call(am_shards_get(svc->shards, k), reload_on_shard, &call);
                }
            }
        }
    }
}

static void fanout_free(fanout_t *fan)
{
    am_free(fan->targets);
    am_free(fan->mutates);
    am_free(fan->signals);
}

void am_service_free(am_service_t *svc)
{
    if (svc == NULL) {
        return;
    }
    if (svc->shards != NULL) {
        am_shards_stop(svc->shards);
    }
    for (pipeline_t *pl = svc->pipelines; pl != NULL;) {
        pipeline_t *next = pl->next;
        size_t n_sharded = pl->n_processors - pl->first_sharded;
        if (pl->lead != NULL) {
            for (size_t p = 0; p < pl->first_sharded; p++) {
                if (pl->lead[p].instance != NULL && pl->lead[p].node->ops->destroy != NULL) {
                    pl->lead[p].node->ops->destroy(pl->lead[p].instance);
                }
            }
        }
        if (pl->sharded != NULL) {
            for (size_t i = 0; i < (size_t)svc->n_shards * n_sharded; i++) {
                if (pl->sharded[i].instance != NULL && pl->sharded[i].node->ops->destroy != NULL) {
                    pl->sharded[i].node->ops->destroy(pl->sharded[i].instance);
                }
            }
        }
        am_free(pl->lead);
        am_free(pl->sharded);
        fanout_free(&pl->out);
        am_free(pl->receivers);
        am_free(pl->processors);
        am_free(pl->exporters);
        am_free(pl->id);
        am_free(pl);
        pl = next;
    }
    for (comp_node_t *node = svc->nodes; node != NULL;) {
        comp_node_t *next = node->next;
        if (node->instance != NULL && node->ops->destroy != NULL) {
            node->ops->destroy(node->instance);
        }
        if (node->config != NULL) {
            am_options_free(node->ops->options, node->config);
            am_free(node->config);
        }
        fanout_free(&node->out);
        am_free(node->id);
        am_free(node);
        node = next;
    }
    for (route_t *route = svc->routes; route != NULL;) {
        route_t *next = route->next;
        am_free(route->prefix);
        am_free(route);
        route = next;
    }
    am_free(svc->ordered);
    am_free(svc->telemetry_address);
    am_config_free(svc->config);
    am_free(svc);
}
