/*
 * prometheusremotewrite.c - the `prometheusremotewrite` exporter: Prometheus
 * Remote-Write 1.0 over libcurl's multi interface on the main loop.
 *
 * Flow.  consume (any thread) encodes the metric set of a batch into a
 * finished request body (snappy-compressed WriteRequest, see
 * prometheusremotewrite_encode.c) and appends it to the sending queue under
 * a mutex, then wakes the loop with uv_async_send.  On the loop, one sender
 * takes the head of the queue and POSTs it; only when that request is done
 * (sent, or given up) does the next one start.  One request in flight at a
 * time is what keeps every series' samples in time order at the receiver:
 * Prometheus rejects a sample older than the newest it has for a series.
 *
 * Failures.  5xx, 429 and transport errors (refused, reset, timeout) are
 * retried with exponential backoff (retry_on_failure: initial_interval,
 * multiplier, max_interval; max_elapsed_time 0 = until it goes through),
 * honouring Retry-After on 429/503.  Any other 4xx is permanent: the request
 * is dropped, counted in agentmeter_exporter_send_failed_metric_points_total
 * and logged with the response body.  While the head request waits, the
 * queue keeps filling; a full queue refuses new snapshots with AM_RETRY
 * (the costmetrics connector logs it; its next snapshot is cumulative), so
 * an outage loses nothing as long as it fits in queue_size requests.
 *
 * libcurl + libuv.  curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION -> one uv_poll_t per socket) and when to call it
 * back (CURLMOPT_TIMERFUNCTION -> one uv_timer_t); we feed events back with
 * curl_multi_socket_action and collect finished transfers with
 * curl_multi_info_read.  Nothing blocks the loop.  agentmeter does not
 * link libcurl or libsnappy: they are dlopen()ed when an exporter of this
 * type is configured (validate/create) and called through am__prw_curl /
 * am__prw_snappy (prometheusremotewrite_dl.c says why); a failed load is a
 * config error naming the library.
 *
 * Life cycle.  shutdown lets the queue drain for at most `drain_timeout`
 * more, then drops what is left (counted and logged) and closes every
 * handle.  Handles are separate allocations whose close callbacks count
 * down; the instance is freed when destroy has been called AND the last
 * handle is closed, whichever comes last (a SIGHUP reload may destroy the
 * old instance while it is still draining).
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "am_component.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "prometheusremotewrite_internal.h"

#define COMPONENT "prometheusremotewrite"
#define MAX_RESPONSE_LOG 1024
#define MAX_RETRY_AFTER_MS (3600 * 1000)
/* The Debian runtime packages that provide the loaded sonames. */
#define DEB_CURL "libcurl4"
#define DEB_SNAPPY "libsnappy1v5"

typedef struct queue_cfg {
    bool set;
    bool enabled;
    int64_t queue_size;
} queue_cfg_t;

typedef struct retry_cfg {
    bool set;
    bool enabled;
    int64_t initial_interval_ms;
    int64_t max_interval_ms;
    int64_t max_elapsed_ms;
    double multiplier;
} retry_cfg_t;

typedef struct prw_config {
    char *endpoint;
    int64_t timeout_ms;
    const am_node_t *headers;
    const am_node_t *external_labels;
    queue_cfg_t sending_queue;
    retry_cfg_t retry_on_failure;
    int64_t drain_timeout_ms;
    bool tls_insecure_skip_verify;
} prw_config_t;

static const am_option_t queue_options[] = {
    AM_OPT("enabled", AM_OPT_BOOL, "true", queue_cfg_t, enabled,
           "Queue requests while the endpoint is slow or down (off: a queue of 1)."),
    {.name = "queue_size",
     .type = AM_OPT_INT,
     .def = "1000",
     .offset = offsetof(queue_cfg_t, queue_size),
     .min = 1,
     .max = 1000000,
     .doc = "Requests (one per metrics snapshot) held while the endpoint is unavailable."},
    AM_OPT_END,
};

static const am_option_t retry_options[] = {
    AM_OPT("enabled", AM_OPT_BOOL, "true", retry_cfg_t, enabled,
           "Retry 5xx, 429 and transport errors (off: drop the request on the first failure)."),
    AM_OPT("initial_interval", AM_OPT_DURATION, "50ms", retry_cfg_t, initial_interval_ms,
           "Wait before the first retry."),
    AM_OPT("max_interval", AM_OPT_DURATION, "30s", retry_cfg_t, max_interval_ms,
           "Upper bound of the wait between retries."),
    AM_OPT("max_elapsed_time", AM_OPT_DURATION, "0", retry_cfg_t, max_elapsed_ms,
           "Give a request up after this long (0: retry until it goes through)."),
    {.name = "multiplier",
     .type = AM_OPT_DOUBLE,
     .def = "1.5",
     .offset = offsetof(retry_cfg_t, multiplier),
     .min = 1,
     .max = 10,
     .doc = "Growth of the wait after each failed attempt."},
    AM_OPT_END,
};

static const am_option_t prw_options[] = {
    {.name = "endpoint",
     .type = AM_OPT_STRING,
     .offset = offsetof(prw_config_t, endpoint),
     .required = true,
     .doc = "Remote-write URL, e.g. http://localhost:9090/api/v1/write."},
    AM_OPT("timeout", AM_OPT_DURATION, "5s", prw_config_t, timeout_ms,
           "Timeout of one HTTP request (connect + send + response)."),
    AM_OPT("headers", AM_OPT_NODE, NULL, prw_config_t, headers,
           "Extra HTTP headers (map). Content-Encoding, Content-Type, User-Agent and "
           "X-Prometheus-Remote-Write-Version are fixed by the protocol."),
    AM_OPT("external_labels", AM_OPT_NODE, NULL, prw_config_t, external_labels,
           "Labels added to every series that does not have them (map of name: value)."),
    {.name = "sending_queue",
     .type = AM_OPT_SECTION,
     .offset = offsetof(prw_config_t, sending_queue),
     .sub = queue_options,
     .doc = "The queue of requests waiting to be sent."},
    {.name = "retry_on_failure",
     .type = AM_OPT_SECTION,
     .offset = offsetof(prw_config_t, retry_on_failure),
     .sub = retry_options,
     .doc = "Exponential backoff for retryable failures."},
    AM_OPT("drain_timeout", AM_OPT_DURATION, "10s", prw_config_t, drain_timeout_ms,
           "On shutdown, how long the queue may take to drain before what is left is dropped."),
    AM_OPT("tls_insecure_skip_verify", AM_OPT_BOOL, "false", prw_config_t, tls_insecure_skip_verify,
           "Do not verify the server certificate (tests only)."),
    AM_OPT_END,
};

typedef struct prw_item {
    struct prw_item *next;
    uint8_t *body;
    size_t len;
    size_t n_samples;
} prw_item_t;

typedef struct prw prw_t;

typedef struct prw_sock {
    uv_poll_t poll; /* first: the handle's allocation is the struct's */
    curl_socket_t fd;
    prw_t *prw;
    struct prw_sock *prev, *next; /* prw->socks */
} prw_sock_t;

struct prw {
    char *id;
    char *endpoint;
    uv_loop_t *loop;
    int64_t timeout_ms;
    size_t queue_size;
    retry_cfg_t retry;
    int64_t drain_timeout_ms;
    bool insecure;
    am_label_t *external;
    size_t n_external;
    struct curl_slist *headers;

    pthread_mutex_t lock; /* guards the queue */
    prw_item_t *head, *tail;
    size_t queued;

    /* loop thread only */
    uv_async_t *wake;
    uv_timer_t *curl_timer;
    uv_timer_t *retry_timer;
    CURLM *multi;
    CURL *easy;
    prw_item_t *inflight;
    bool transfer_active; /* easy is added to multi */
    bool in_cleanup;      /* curl_multi_cleanup running: sockets are ours to close */
    prw_sock_t *socks;    /* watched sockets */
    bool waiting_retry;
    uint64_t first_attempt_ms;
    int64_t next_interval_ms;
    char response[MAX_RESPONSE_LOG + 1];
    size_t response_len;
    bool started;
    bool shutting_down;
    uint64_t drain_deadline_ms;
    bool closed;
    int open_handles;
    bool destroyed;

    am_counter_t *sent_points;
    am_counter_t *failed_points;
    am_counter_t *failed_requests;
    am_counter_t *retries;
    am_gauge_t *queue_gauge;
    am_gauge_t *capacity_gauge;
};

/* ---- config ------------------------------------------------------------------- */

static const char *const fixed_headers[] = {"content-encoding", "content-type", "user-agent",
                                            "x-prometheus-remote-write-version", NULL};

static bool header_name_ok(const char *name)
{
    if (name[0] == '\0') {
        return false;
    }
    for (const char *p = name; *p != '\0'; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *p) != NULL)) {
            return false;
        }
    }
    return true;
}

static void validate_map(const am_node_t *map, const char *prefix, const char *key, bool labels,
                         am_errors_t *errs)
{
    if (map == NULL || map->kind == AM_NODE_NULL) {
        return;
    }
    if (map->kind != AM_NODE_MAP) {
        am_errors_add(errs, map, "%s.%s: expected a map, got a %s", prefix, key,
                      am_node_kind_name(map->kind));
        return;
    }
    for (size_t i = 0; i < map->n_children; i++) {
        const am_node_t *item = map->children[i];
        if (item->kind != AM_NODE_SCALAR) {
            am_errors_add(errs, item, "%s.%s.%s: expected a string", prefix, key, item->key);
            continue;
        }
        if (labels) {
            if (!am_metric_label_name_valid(item->key) || strncmp(item->key, "__", 2) == 0) {
                am_errors_add(errs, item,
                              "%s.%s.%s: not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, not "
                              "starting with __)",
                              prefix, key, item->key);
            }
            if (item->str == NULL || item->str[0] == '\0') {
                am_errors_add(errs, item, "%s.%s.%s: empty label value", prefix, key, item->key);
            }
            continue;
        }
        if (!header_name_ok(item->key) || strpbrk(item->str, "\r\n") != NULL) {
            am_errors_add(errs, item, "%s.%s.%s: not a valid HTTP header", prefix, key, item->key);
        }
        for (size_t k = 0; fixed_headers[k] != NULL; k++) {
            if (strcasecmp(item->key, fixed_headers[k]) == 0) {
                am_errors_add(errs, item,
                              "%s.%s.%s: this header is set by the remote-write protocol and "
                              "cannot be overridden",
                              prefix, key, item->key);
            }
        }
    }
}

static void prw_validate(const void *config, const void *node, const char *prefix,
                         am_errors_t *errs)
{
    const prw_config_t *cfg = config;
    const am_node_t *at = node != NULL ? am_node_get(node, "endpoint") : NULL;
    if (cfg->endpoint != NULL && strncmp(cfg->endpoint, "http://", 7) != 0 &&
        strncmp(cfg->endpoint, "https://", 8) != 0) {
        am_errors_add(errs, at != NULL ? at : node,
                      "%s.endpoint: \"%s\" is not an http:// or https:// URL", prefix,
                      cfg->endpoint);
    }
    validate_map(cfg->headers, prefix, "headers", false, errs);
    validate_map(cfg->external_labels, prefix, "external_labels", true, errs);
    const char *why;
    if (am__prw_dl_load(&why) != 0) {
        am_errors_add(errs, node, "%s: %s (install %s and %s)", prefix, why, DEB_CURL, DEB_SNAPPY);
    }
}

/* ---- queue ------------------------------------------------------------------------ */

static void item_free(prw_item_t *item)
{
    if (item != NULL) {
        am_free(item->body);
        am_free(item);
    }
}

static prw_item_t *queue_pop(prw_t *prw)
{
    pthread_mutex_lock(&prw->lock);
    prw_item_t *item = prw->head;
    if (item != NULL) {
        prw->head = item->next;
        if (prw->head == NULL) {
            prw->tail = NULL;
        }
        prw->queued--;
        am_gauge_set(prw->queue_gauge, (int64_t)prw->queued);
    }
    pthread_mutex_unlock(&prw->lock);
    return item;
}

static am_status_t prw_consume(void *instance, am_batch_t *batch)
{
    prw_t *prw = instance;
    /* A connector feeding metrics and logs pipelines sends both kinds of
     * batch to every pipeline: take metric sets, skip the rest. */
    if ((batch->signal & AM_SIGNAL_METRICS) == 0 || batch->metrics == NULL) {
        return AM_OK;
    }
    prw_item_t *item = am_calloc(1, sizeof(*item));
    if (item == NULL) {
        return AM_RETRY;
    }
    int rc = am__prw_encode(batch->metrics, prw->external, prw->n_external, &item->body, &item->len,
                            &item->n_samples);
    if (rc == AM_ENOENT) {
        item_free(item);
        return AM_OK;
    }
    if (rc != 0) {
        item_free(item);
        return AM_RETRY;
    }
    pthread_mutex_lock(&prw->lock);
    bool full = prw->queued >= prw->queue_size || prw->closed;
    if (!full) {
        if (prw->tail != NULL) {
            prw->tail->next = item;
        } else {
            prw->head = item;
        }
        prw->tail = item;
        prw->queued++;
        am_gauge_set(prw->queue_gauge, (int64_t)prw->queued);
    }
    pthread_mutex_unlock(&prw->lock);
    if (full) {
        am_counter_add(prw->failed_points, item->n_samples);
        AM_WARN(COMPONENT, "%s: sending queue full (%zu requests): refusing %zu samples", prw->id,
                prw->queue_size, item->n_samples);
        item_free(item);
        return AM_RETRY;
    }
    uv_async_send(prw->wake);
    return AM_OK;
}

/* ---- handles ------------------------------------------------------------------------ */

static void prw_free(prw_t *prw)
{
    prw_item_t *item;
    while ((item = queue_pop(prw)) != NULL) {
        item_free(item);
    }
    item_free(prw->inflight);
    for (size_t i = 0; i < prw->n_external; i++) {
        am_free(prw->external[i].name);
        am_free(prw->external[i].value);
    }
    am_free(prw->external);
    am__prw_curl.slist_free_all(prw->headers);
    pthread_mutex_destroy(&prw->lock);
    am_free(prw->id);
    am_free(prw->endpoint);
    am_free(prw);
}

static void on_handle_closed(uv_handle_t *handle)
{
    prw_t *prw = handle->data;
    am_free(handle);
    if (--prw->open_handles == 0 && prw->destroyed) {
        prw_free(prw);
    }
}

static void close_handle(prw_t *prw, uv_handle_t *handle)
{
    if (handle != NULL && !uv_is_closing(handle)) {
        uv_close(handle, on_handle_closed);
    }
    AM_UNUSED(prw);
}

static void sock_forget(prw_t *prw, prw_sock_t *sock)
{
    if (sock->prev != NULL) {
        sock->prev->next = sock->next;
    } else {
        prw->socks = sock->next;
    }
    if (sock->next != NULL) {
        sock->next->prev = sock->prev;
    }
    uv_poll_stop(&sock->poll);
    uv_close((uv_handle_t *)&sock->poll, on_handle_closed);
    if (prw->multi != NULL && !prw->in_cleanup) {
        am__prw_curl.multi_assign(prw->multi, sock->fd, NULL);
    }
}

static void drop_remaining(prw_t *prw, const char *why)
{
    size_t points = 0, requests = 0;
    prw_item_t *item;
    if (prw->inflight != NULL) {
        points += prw->inflight->n_samples;
        requests++;
        item_free(prw->inflight);
        prw->inflight = NULL;
    }
    while ((item = queue_pop(prw)) != NULL) {
        points += item->n_samples;
        requests++;
        item_free(item);
    }
    if (requests > 0) {
        am_counter_add(prw->failed_points, points);
        am_counter_add(prw->failed_requests, requests);
        AM_ERROR(COMPONENT, "%s: %s: dropping %zu queued requests (%zu samples)", prw->id, why,
                 requests, points);
    }
}

/* Everything is sent or given up: release curl and close every handle. */
static void close_all(prw_t *prw)
{
    if (prw->closed) {
        return;
    }
    pthread_mutex_lock(&prw->lock);
    prw->closed = true;
    pthread_mutex_unlock(&prw->lock);
    drop_remaining(prw, "shutting down");
    if (prw->multi != NULL) {
        if (prw->transfer_active) {
            am__prw_curl.multi_remove_handle(prw->multi, prw->easy);
            prw->transfer_active = false;
        }
        /* Stop watching first; cleanup may still report removals, which
         * are then no-ops. */
        while (prw->socks != NULL) {
            sock_forget(prw, prw->socks);
        }
        prw->in_cleanup = true;
        am__prw_curl.easy_cleanup(prw->easy);
        prw->easy = NULL;
        am__prw_curl.multi_cleanup(prw->multi);
        prw->multi = NULL;
    }
    close_handle(prw, (uv_handle_t *)prw->wake);
    close_handle(prw, (uv_handle_t *)prw->curl_timer);
    close_handle(prw, (uv_handle_t *)prw->retry_timer);
}

/* ---- sending ------------------------------------------------------------------------ */

static void pump(prw_t *prw);
static void schedule_retry(prw_t *prw, const char *what, int64_t retry_after_ms);

static size_t on_response_body(char *data, size_t size, size_t nmemb, void *user_data)
{
    prw_t *prw = user_data;
    size_t len = size * nmemb;
    size_t room = MAX_RESPONSE_LOG - prw->response_len;
    size_t take = len < room ? len : room;
    memcpy(prw->response + prw->response_len, data, take);
    prw->response_len += take;
    prw->response[prw->response_len] = '\0';
    return len;
}

static void start_transfer(prw_t *prw)
{
    prw_item_t *item = prw->inflight;
    prw->response_len = 0;
    prw->response[0] = '\0';
    CURL *easy = prw->easy;
    am__prw_curl.easy_setopt(easy, CURLOPT_URL, prw->endpoint);
    am__prw_curl.easy_setopt(easy, CURLOPT_POST, 1L);
    am__prw_curl.easy_setopt(easy, CURLOPT_POSTFIELDS, (const char *)item->body);
    am__prw_curl.easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)item->len);
    am__prw_curl.easy_setopt(easy, CURLOPT_HTTPHEADER, prw->headers);
    am__prw_curl.easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)prw->timeout_ms);
    am__prw_curl.easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    am__prw_curl.easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_response_body);
    am__prw_curl.easy_setopt(easy, CURLOPT_WRITEDATA, prw);
    am__prw_curl.easy_setopt(easy, CURLOPT_PRIVATE, prw);
    if (prw->insecure) {
        am__prw_curl.easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
        am__prw_curl.easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    CURLMcode mc = am__prw_curl.multi_add_handle(prw->multi, easy);
    if (mc != CURLM_OK) {
        /* Cannot even start: treat like a transport failure. */
        AM_ERROR(COMPONENT, "%s: curl_multi_add_handle: %s", prw->id,
                 am__prw_curl.multi_strerror(mc));
        return;
    }
    prw->transfer_active = true;
}

static void on_retry_timer(uv_timer_t *timer)
{
    prw_t *prw = timer->data;
    prw->waiting_retry = false;
    if (prw->inflight != NULL && !prw->closed) {
        start_transfer(prw);
        if (!prw->transfer_active) {
            schedule_retry(prw, "cannot start the request", 0);
        }
    }
}

static void finish_item(prw_t *prw, bool sent)
{
    prw_item_t *item = prw->inflight;
    prw->inflight = NULL;
    if (sent) {
        am_counter_add(prw->sent_points, item->n_samples);
    } else {
        am_counter_add(prw->failed_points, item->n_samples);
        am_counter_add(prw->failed_requests, 1);
    }
    item_free(item);
    pump(prw);
}

static void schedule_retry(prw_t *prw, const char *what, int64_t retry_after_ms)
{
    uint64_t now = am_now_mono_ms();
    if (!prw->retry.enabled) {
        AM_ERROR(COMPONENT, "%s: %s; retries are disabled: dropping %zu samples", prw->id, what,
                 prw->inflight->n_samples);
        finish_item(prw, false);
        return;
    }
    if (prw->retry.max_elapsed_ms > 0 &&
        now - prw->first_attempt_ms >= (uint64_t)prw->retry.max_elapsed_ms) {
        AM_ERROR(COMPONENT, "%s: %s; giving up after %lld ms: dropping %zu samples", prw->id, what,
                 (long long)(now - prw->first_attempt_ms), prw->inflight->n_samples);
        finish_item(prw, false);
        return;
    }
    int64_t delay = prw->next_interval_ms;
    if (retry_after_ms > 0) {
        delay = retry_after_ms < MAX_RETRY_AFTER_MS ? retry_after_ms : MAX_RETRY_AFTER_MS;
    }
    double grown = (double)prw->next_interval_ms * prw->retry.multiplier;
    prw->next_interval_ms =
        grown < (double)prw->retry.max_interval_ms ? (int64_t)grown : prw->retry.max_interval_ms;
    if (prw->shutting_down && now + (uint64_t)delay > prw->drain_deadline_ms) {
        close_all(prw);
        return;
    }
    am_counter_add(prw->retries, 1);
    AM_WARN(COMPONENT, "%s: %s; retrying in %lld ms", prw->id, what, (long long)delay);
    prw->waiting_retry = true;
    uv_timer_start(prw->retry_timer, on_retry_timer, (uint64_t)delay, 0);
}

static void transfer_done(prw_t *prw, CURLcode result)
{
    long code = 0;
    curl_off_t retry_after = 0;
    am__prw_curl.easy_getinfo(prw->easy, CURLINFO_RESPONSE_CODE, &code);
    am__prw_curl.easy_getinfo(prw->easy, CURLINFO_RETRY_AFTER, &retry_after);
    am__prw_curl.multi_remove_handle(prw->multi, prw->easy);
    prw->transfer_active = false;
    char what[256];
    if (result != CURLE_OK) {
        snprintf(what, sizeof(what), "POST %s failed: %s", prw->endpoint,
                 am__prw_curl.easy_strerror(result));
        schedule_retry(prw, what, 0);
        return;
    }
    if (code >= 200 && code < 300) {
        prw->next_interval_ms = prw->retry.initial_interval_ms;
        finish_item(prw, true);
        return;
    }
    for (char *p = prw->response; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
    if (code >= 500 || code == 429) {
        snprintf(what, sizeof(what), "%s answered %ld", prw->endpoint, code);
        schedule_retry(prw, what, retry_after > 0 ? (int64_t)retry_after * 1000 : 0);
        return;
    }
    AM_ERROR(COMPONENT, "%s: %s answered %ld (not retryable): dropping %zu samples: %s", prw->id,
             prw->endpoint, code, prw->inflight->n_samples, prw->response);
    prw->next_interval_ms = prw->retry.initial_interval_ms;
    finish_item(prw, false);
}

static void check_multi_info(prw_t *prw)
{
    CURLMsg *msg;
    int pending;
    while (prw->multi != NULL &&
           (msg = am__prw_curl.multi_info_read(prw->multi, &pending)) != NULL) {
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == prw->easy) {
            transfer_done(prw, msg->data.result);
        }
    }
}

/* Start the next request when none is in flight. */
static void pump(prw_t *prw)
{
    if (prw->closed || prw->inflight != NULL || prw->waiting_retry) {
        return;
    }
    prw->inflight = queue_pop(prw);
    if (prw->inflight == NULL) {
        if (prw->shutting_down) {
            close_all(prw);
        }
        return;
    }
    if (prw->shutting_down && am_now_mono_ms() > prw->drain_deadline_ms) {
        close_all(prw);
        return;
    }
    prw->first_attempt_ms = am_now_mono_ms();
    prw->next_interval_ms = prw->retry.initial_interval_ms;
    start_transfer(prw);
    if (!prw->transfer_active) {
        schedule_retry(prw, "cannot start the request", 0);
    }
}

static void on_wake(uv_async_t *async)
{
    pump(async->data);
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    prw_sock_t *sock = (prw_sock_t *)poll;
    prw_t *prw = sock->prw;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) {
            flags |= CURL_CSELECT_IN;
        }
        if (events & UV_WRITABLE) {
            flags |= CURL_CSELECT_OUT;
        }
    }
    int running;
    if (prw->multi != NULL) {
        am__prw_curl.multi_socket_action(prw->multi, sock->fd, flags, &running);
        check_multi_info(prw);
    }
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int action, void *user_data,
                          void *socket_data)
{
    prw_t *prw = user_data;
    prw_sock_t *sock = socket_data;
    AM_UNUSED(easy);
    if (prw->in_cleanup) {
        return 0;
    }
    if (action == CURL_POLL_REMOVE) {
        if (sock != NULL) {
            sock_forget(prw, sock);
        }
        return 0;
    }
    if (sock == NULL) {
        sock = am_calloc(1, sizeof(*sock));
        if (sock == NULL) {
            return -1;
        }
        if (uv_poll_init_socket(prw->loop, &sock->poll, fd) != 0) {
            am_free(sock);
            return -1;
        }
        sock->fd = fd;
        sock->prw = prw;
        sock->poll.data = prw;
        sock->next = prw->socks;
        if (prw->socks != NULL) {
            prw->socks->prev = sock;
        }
        prw->socks = sock;
        prw->open_handles++;
        am__prw_curl.multi_assign(prw->multi, fd, sock);
    }
    int events = 0;
    if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) {
        events |= UV_READABLE;
    }
    if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) {
        events |= UV_WRITABLE;
    }
    uv_poll_start(&sock->poll, events, on_poll);
    return 0;
}

static void on_curl_timeout(uv_timer_t *timer)
{
    prw_t *prw = timer->data;
    int running;
    if (prw->multi != NULL) {
        am__prw_curl.multi_socket_action(prw->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_multi_info(prw);
    }
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *user_data)
{
    prw_t *prw = user_data;
    AM_UNUSED(multi);
    if (timeout_ms < 0) {
        uv_timer_stop(prw->curl_timer);
    } else {
        /* 0 means "now": let the loop call back rather than recursing. */
        uv_timer_start(prw->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

/* ---- life cycle -------------------------------------------------------------------- */

static void prw_destroy(void *instance);

static int copy_map(const am_node_t *map, am_label_t **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (map == NULL || map->kind != AM_NODE_MAP || map->n_children == 0) {
        return 0;
    }
    *out = am_calloc(map->n_children, sizeof(am_label_t));
    if (*out == NULL) {
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < map->n_children; i++) {
        const am_node_t *item = map->children[i];
        if (item->kind != AM_NODE_SCALAR) {
            continue;
        }
        am_label_t *label = &(*out)[*n_out];
        label->name = am_strdup(item->key);
        label->value = am_strdup(item->str != NULL ? item->str : "");
        (*n_out)++;
        if (label->name == NULL || label->value == NULL) {
            return AM_ENOMEM;
        }
    }
    return 0;
}

static int prw_create(const am_create_params_t *params, void **instance)
{
    const prw_config_t *cfg = params->config;
    const char *why;
    if (am__prw_dl_load(&why) != 0) {
        /* validate reported it already, unless it was skipped */
        AM_ERROR(COMPONENT, "%s: %s (install %s and %s)", params->id, why, DEB_CURL, DEB_SNAPPY);
        return AM_ENOTSUP;
    }
    prw_t *prw = am_calloc(1, sizeof(*prw));
    if (prw == NULL) {
        return AM_ENOMEM;
    }
    pthread_mutex_init(&prw->lock, NULL);
    prw->destroyed = false;
    prw->loop = params->loop;
    prw->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 5000;
    prw->queue_size = cfg->sending_queue.enabled ? (size_t)cfg->sending_queue.queue_size : 1;
    prw->retry = cfg->retry_on_failure;
    if (prw->retry.initial_interval_ms <= 0) {
        prw->retry.initial_interval_ms = 1;
    }
    if (prw->retry.max_interval_ms < prw->retry.initial_interval_ms) {
        prw->retry.max_interval_ms = prw->retry.initial_interval_ms;
    }
    prw->next_interval_ms = prw->retry.initial_interval_ms;
    prw->drain_timeout_ms = cfg->drain_timeout_ms;
    prw->insecure = cfg->tls_insecure_skip_verify;
    prw->id = am_strdup(params->id);
    prw->endpoint = am_strdup(cfg->endpoint != NULL ? cfg->endpoint : "");
    if (prw->id == NULL || prw->endpoint == NULL ||
        copy_map(cfg->external_labels, &prw->external, &prw->n_external) != 0) {
        goto nomem;
    }
    static const char *const fixed[] = {
        "Content-Encoding: snappy",
        "Content-Type: application/x-protobuf",
        "User-Agent: " AM__PRW_USER_AGENT,
        "X-Prometheus-Remote-Write-Version: " AM__PRW_VERSION,
        "Expect:", /* no 100-continue round trip */
        NULL,
    };
    for (size_t i = 0; fixed[i] != NULL; i++) {
        struct curl_slist *grown = am__prw_curl.slist_append(prw->headers, fixed[i]);
        if (grown == NULL) {
            goto nomem;
        }
        prw->headers = grown;
    }
    const am_node_t *hmap = cfg->headers;
    for (size_t i = 0; hmap != NULL && hmap->kind == AM_NODE_MAP && i < hmap->n_children; i++) {
        const am_node_t *item = hmap->children[i];
        if (item->kind != AM_NODE_SCALAR) {
            continue;
        }
        char line[2048];
        snprintf(line, sizeof(line), "%s: %s", item->key, item->str != NULL ? item->str : "");
        struct curl_slist *grown = am__prw_curl.slist_append(prw->headers, line);
        if (grown == NULL) {
            goto nomem;
        }
        prw->headers = grown;
    }
    char labels[300];
    snprintf(labels, sizeof(labels), "exporter=\"%s\"", params->id);
    prw->sent_points = am_selfmetrics_counter("agentmeter_exporter_sent_metric_points_total",
                                              "Samples successfully sent by an exporter.", labels);
    prw->failed_points = am_selfmetrics_counter(
        "agentmeter_exporter_send_failed_metric_points_total",
        "Samples an exporter gave up on (permanent error, full queue, shutdown).", labels);
    prw->failed_requests = am_selfmetrics_counter(
        "agentmeter_exporter_send_failed_requests_total",
        "Requests an exporter gave up on (permanent error, retries exhausted, shutdown).", labels);
    prw->retries = am_selfmetrics_counter("agentmeter_exporter_retries_total",
                                          "Retried requests (5xx, 429, transport errors).", labels);
    prw->queue_gauge =
        am_selfmetrics_gauge("agentmeter_exporter_queue_size",
                             "Requests waiting in an exporter's sending queue.", labels);
    prw->capacity_gauge = am_selfmetrics_gauge("agentmeter_exporter_queue_capacity",
                                               "Capacity of an exporter's sending queue.", labels);
    am_gauge_set(prw->capacity_gauge, (int64_t)prw->queue_size);
    am_gauge_set(prw->queue_gauge, 0);
    *instance = prw;
    return 0;
nomem:
    prw->destroyed = true;
    prw_free(prw);
    return AM_ENOMEM;
}

static int open_handle(prw_t *prw, uv_handle_t **slot, size_t size)
{
    uv_handle_t *handle = am_calloc(1, size);
    if (handle == NULL) {
        return AM_ENOMEM;
    }
    *slot = handle;
    return 0;
}

static int prw_start(void *instance)
{
    prw_t *prw = instance;
    static bool curl_ready = false;
    if (!curl_ready) {
        /* Main thread, before any other curl use in this process. */
        am__prw_curl.global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = true;
    }
    if (open_handle(prw, (uv_handle_t **)&prw->wake, sizeof(uv_async_t)) != 0 ||
        open_handle(prw, (uv_handle_t **)&prw->curl_timer, sizeof(uv_timer_t)) != 0 ||
        open_handle(prw, (uv_handle_t **)&prw->retry_timer, sizeof(uv_timer_t)) != 0) {
        goto nomem;
    }
    prw->multi = am__prw_curl.multi_init();
    prw->easy = am__prw_curl.easy_init();
    if (prw->multi == NULL || prw->easy == NULL) {
        goto nomem;
    }
    uv_async_init(prw->loop, prw->wake, on_wake);
    uv_timer_init(prw->loop, prw->curl_timer);
    uv_timer_init(prw->loop, prw->retry_timer);
    prw->wake->data = prw->curl_timer->data = prw->retry_timer->data = prw;
    prw->open_handles = 3;
    am__prw_curl.multi_setopt(prw->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    am__prw_curl.multi_setopt(prw->multi, CURLMOPT_SOCKETDATA, prw);
    am__prw_curl.multi_setopt(prw->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    am__prw_curl.multi_setopt(prw->multi, CURLMOPT_TIMERDATA, prw);
    prw->started = true;
    return 0;
nomem:
    if (prw->easy != NULL) {
        am__prw_curl.easy_cleanup(prw->easy);
        prw->easy = NULL;
    }
    if (prw->multi != NULL) {
        am__prw_curl.multi_cleanup(prw->multi);
        prw->multi = NULL;
    }
    am_free(prw->wake);
    am_free(prw->curl_timer);
    am_free(prw->retry_timer);
    prw->wake = NULL;
    prw->curl_timer = prw->retry_timer = NULL;
    return AM_ENOMEM;
}

static void prw_shutdown(void *instance)
{
    prw_t *prw = instance;
    if (prw->shutting_down) {
        return;
    }
    prw->shutting_down = true;
    if (!prw->started) {
        return;
    }
    prw->drain_deadline_ms = am_now_mono_ms() + (uint64_t)prw->drain_timeout_ms;
    if (prw->inflight == NULL && !prw->waiting_retry) {
        pump(prw); /* closes everything when the queue is empty */
    } else if (prw->waiting_retry) {
        /* A retry wait beyond the deadline is not worth waiting for. */
        uint64_t due = uv_timer_get_due_in(prw->retry_timer);
        if (am_now_mono_ms() + due > prw->drain_deadline_ms) {
            uv_timer_stop(prw->retry_timer);
            prw->waiting_retry = false;
            close_all(prw);
        }
    }
    if (!prw->closed) {
        pthread_mutex_lock(&prw->lock);
        size_t queued = prw->queued + (prw->inflight != NULL ? 1 : 0);
        pthread_mutex_unlock(&prw->lock);
        AM_INFO(COMPONENT, "%s: draining %zu requests (at most %lld ms)", prw->id, queued,
                (long long)prw->drain_timeout_ms);
    }
}

static void prw_destroy(void *instance)
{
    prw_t *prw = instance;
    if (prw == NULL) {
        return;
    }
    prw->destroyed = true;
    if (!prw->started) {
        prw_free(prw);
        return;
    }
    /* A reload destroys the old instance right after shutdown: the drain
     * goes on in the background (bounded by drain_timeout) and the last
     * closing handle frees the instance. */
    if (!prw->shutting_down) {
        prw_shutdown(prw);
    }
    if (prw->closed && prw->open_handles == 0) {
        prw_free(prw);
    }
}

const am_component_ops_t am_exporter_prometheusremotewrite_ops = {
    .type = "prometheusremotewrite",
    .kind = AM_KIND_EXPORTER,
    .signals = AM_SIGNAL_METRICS,
    .doc = "Sends the cost metrics with Prometheus Remote-Write 1.0 (snappy protobuf).",
    .options = prw_options,
    .config_size = sizeof(prw_config_t),
    .validate = prw_validate,
    .create = prw_create,
    .start = prw_start,
    .consume = prw_consume,
    .shutdown = prw_shutdown,
    .destroy = prw_destroy,
};
