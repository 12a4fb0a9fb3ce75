/*
 * am_service.h - a running configuration: components, pipelines, shards and
 * the self-telemetry endpoint, built from one merged config.
 *
 * Build order: parse every component section through its option table,
 * check the pipeline graph (dangling references, pipelines without
 * receivers or exporters, signal mismatches, connector use), then create
 * instances wired consumer to consumer:
 *
 *   receiver -> fan-out -> [leading processors on the main loop]
 *            -> dispatcher (split by trace id) -> shard k: processors...
 *            -> fan-out -> exporters / connectors -> next pipelines
 *
 * Shutdown drains in graph order: receivers stop, each pipeline's
 * processors flush downstream (shard by shard), connectors flush into the
 * pipelines they feed, exporters flush last.
 *
 * Threads: every function here runs on the main loop thread.
 */
#ifndef AM_SERVICE_H
#define AM_SERVICE_H

#include <uv.h>

#include "am_component.h"
#include "am_config.h"
#include "am_http.h"

typedef struct am_service am_service_t;

typedef struct am_service_opts {
    int shards;            /* 0: one per core */
    bool skip_telemetry;   /* do not bind the telemetry address (validate) */
} am_service_opts_t;

/* Parse and check; on success *out is a service ready to start (it takes
 * ownership of `config`).  On failure every problem is in errs, NULL is
 * returned and `config` is freed. */
am_service_t *am_service_build(am_config_t *config, const am_service_opts_t *opts,
                               am_errors_t *errs);
int am_service_start(am_service_t *service, uv_loop_t *loop);
/* Stop receivers, drain everything, stop shards.  Idempotent. */
void am_service_shutdown(am_service_t *service);
/* Give in-place reloadable components (rate cards, certificates) a nudge. */
void am_service_reload_components(am_service_t *service);
/* After shutdown and after the loop closed the handles. */
void am_service_free(am_service_t *service);
bool am_service_ready(const am_service_t *service);

/* Extra HTTP routes on the telemetry address (e.g. /v1/budgets).  Called by
 * components from start(), on the main thread.  The handler runs on the main
 * thread.  A prefix registered twice keeps the first handler. */
int am_service_add_route(am_service_t *service, const char *path_prefix,
                         am_http_handler_fn handler, void *user_data);
/* Config reload: before shutting `old` down, the SIGHUP path names the
 * service that replaces it, so stateful components can hand their state over
 * instead of closing it (sessions).  NULL when the shutdown is the end of
 * the process. */
void am_service_set_reload_successor(am_service_t *old, am_service_t *successor);
am_service_t *am_service_reload_successor(const am_service_t *service);
/* Does the service run component `id` of `section` ("processors", ...) in a
 * pipeline? */
bool am_service_uses(const am_service_t *service, const char *section, const char *id);
/* The shard set (NULL when no pipeline has sharded processors). */
struct am_shards *am_service_shards(am_service_t *service);

#endif
