/*
 * kafka.c - the `kafka` exporter: enriched spans and cost events to Kafka,
 * at least once (ARCHITECTURE.md §9).
 *
 * Data path.  consume() runs on whichever shard thread finished the batch:
 * it encodes the batch into messages (kafka_encode.c) and hands each to
 * rd_kafka_produceva(), which is thread-safe and only enqueues.  Nothing is
 * counted as sent there: a message is sent when its delivery report says so.
 *
 * Delivery reports.  librdkafka queues them on its main queue.  That queue's
 * IO event is enabled on a pipe whose read end a uv_poll watches on the main
 * loop, so a report wakes the loop, which calls rd_kafka_poll(rk, 0) and
 * runs the report callback right there: the callback, the retry list and the
 * counters it updates belong to the main loop.  A 100 ms uv_timer polls too,
 * as a fallback and as the clock for retries; nothing ever sleeps.
 *
 * In flight.  Every message carries (as librdkafka's per-message opaque) how
 * many spans/events it holds.  `in_flight` counts them from produce to the
 * final delivery report, including messages waiting in the overflow list
 * (rd_kafka_produceva said QUEUE_FULL: kept and produced again from the loop,
 * never dropped) or in the retry list.  Above sending_queue.queue_size the
 * exporter raises its am_pressure_t, so receivers refuse new data (503 /
 * UNAVAILABLE) while what is already in the pipeline still flows in and is
 * still accepted; below 80% it lowers it.  The decision is taken under a
 * mutex from the current count, so a raise from a shard and a clear from the
 * loop cannot leave the flag stale.
 *
 * Retries.  With enable.idempotence librdkafka retries transient errors
 * itself, without duplicates or reordering.  A report that still fails with a
 * retriable error (message timed out, broker transport ...) is produced again
 * per retry_on_failure: exponential backoff from initial_interval up to
 * max_interval, until max_elapsed_time after the first produce.  Other
 * errors (MSG_SIZE_TOO_LARGE, TOPIC_AUTHORIZATION_FAILED ...) are counted as
 * failed at once, with a log line.
 *
 * Shutdown (main loop, after the shards stopped): stop accepting, produce
 * what waits in the overflow and retry lists, then rd_kafka_flush() in short
 * steps until nothing is in flight or flush_timeout passed; then purge what
 * is left, count it as failed and log how much, close the uv handles and
 * destroy the producer.  This blocks the loop for at most flush_timeout plus
 * about a second, which is what shutting down means here.
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "am_component.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "kafka_internal.h"

#define POLL_INTERVAL_MS 100
#define LOW_WATER_PERCENT 80
#define ERROR_LOG_INTERVAL_MS 30000
#define PURGE_WAIT_MS 2000

typedef struct kafka_exporter {
    char *id;
    const am__kafka_config_t *cfg; /* lives as long as the service's config */
    uv_loop_t *loop;
    am__kafka_encoder_t enc;

    rd_kafka_t *rk;
    rd_kafka_queue_t *main_queue;
    rd_kafka_headers_t *headers; /* static headers, copied per message */
    int wake_fds[2];
    uv_poll_t wake_poll;
    uv_timer_t timer;
    bool handles_open;

    atomic_bool accepting;
    atomic_int_fast64_t in_flight; /* spans + events from produce to final report */
    int64_t capacity;              /* sending_queue.queue_size, 0 when disabled */
    int64_t low_water;
    am_pressure_t pressure;
    pthread_mutex_t pressure_lock;

    pthread_mutex_t overflow_lock;
    am__kafka_msg_t *overflow_head, *overflow_tail;
    atomic_size_t overflow_count;

    am__kafka_msg_t *retry_head; /* main loop only */
    bool shutting_down;          /* main loop only */
    bool purging;
    bool shut;

    rd_kafka_resp_err_t last_error;
    uint64_t last_error_ms;

    am_counter_t *sent_spans;
    am_counter_t *failed_spans;
    am_counter_t *sent_events;
    am_counter_t *failed_events;
    am_counter_t *reproduced;
} kafka_exporter_t;

static uint64_t msg_items(const am__kafka_msg_t *msg)
{
    return (uint64_t)msg->spans + msg->events;
}

/* ---- backpressure -------------------------------------------------------- */

static void update_pressure(kafka_exporter_t *exp)
{
    if (exp->capacity <= 0) {
        return;
    }
    pthread_mutex_lock(&exp->pressure_lock);
    int64_t n = atomic_load(&exp->in_flight);
    if (n >= exp->capacity) {
        am_pressure_set(&exp->pressure, true);
    } else if (n < exp->low_water) {
        am_pressure_set(&exp->pressure, false);
    }
    pthread_mutex_unlock(&exp->pressure_lock);
}

/* ---- outcomes ------------------------------------------------------------ */

static void finish_sent(kafka_exporter_t *exp, am__kafka_msg_t *msg)
{
    am_counter_add(exp->sent_spans, msg->spans);
    am_counter_add(exp->sent_events, msg->events);
    atomic_fetch_sub(&exp->in_flight, (int64_t)msg_items(msg));
    am__kafka_msg_free(msg);
}

/* Any thread. */
static void finish_failed(kafka_exporter_t *exp, am__kafka_msg_t *msg, const char *why)
{
    AM_ERROR(
        exp->id, "%u spans and %u events to topic %s (key %s) not delivered (attempts: %u): %s",
        msg->spans, msg->events, msg->topic, msg->key != NULL ? msg->key : "-", msg->attempts, why);
    am_counter_add(exp->failed_spans, msg->spans);
    am_counter_add(exp->failed_events, msg->events);
    atomic_fetch_sub(&exp->in_flight, (int64_t)msg_items(msg));
    am__kafka_msg_free(msg);
}

/* ---- produce ------------------------------------------------------------- */

static void overflow_push(kafka_exporter_t *exp, am__kafka_msg_t *msg)
{
    pthread_mutex_lock(&exp->overflow_lock);
    msg->next = NULL;
    if (exp->overflow_tail != NULL) {
        exp->overflow_tail->next = msg;
    } else {
        exp->overflow_head = msg;
    }
    exp->overflow_tail = msg;
    atomic_fetch_add(&exp->overflow_count, 1);
    pthread_mutex_unlock(&exp->overflow_lock);
}

/* Hand one message to librdkafka.  Returns the produce error (NO_ERROR when
 * librdkafka took it; the message is then referenced until its report). */
static rd_kafka_resp_err_t produce_once(kafka_exporter_t *exp, am__kafka_msg_t *msg)
{
    rd_kafka_vu_t vus[6];
    size_t n = 0;
    vus[n].vtype = RD_KAFKA_VTYPE_TOPIC;
    vus[n++].u.cstr = msg->topic;
    vus[n].vtype = RD_KAFKA_VTYPE_VALUE;
    vus[n].u.mem.ptr = msg->value;
    vus[n++].u.mem.size = msg->value_len;
    if (msg->key != NULL) {
        vus[n].vtype = RD_KAFKA_VTYPE_KEY;
        vus[n].u.mem.ptr = msg->key;
        vus[n++].u.mem.size = msg->key_len;
    }
    vus[n].vtype = RD_KAFKA_VTYPE_OPAQUE;
    vus[n++].u.ptr = msg;
    vus[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vus[n++].u.i = 0; /* neither copy nor free: msg owns the value */
    rd_kafka_headers_t *hdrs = NULL;
    if (exp->headers != NULL) {
        hdrs = rd_kafka_headers_copy(exp->headers);
        vus[n].vtype = RD_KAFKA_VTYPE_HEADERS;
        vus[n++].u.headers = hdrs;
    }
    msg->attempts++;
    rd_kafka_error_t *error = rd_kafka_produceva(exp->rk, vus, n);
    if (error == NULL) {
        return RD_KAFKA_RESP_ERR_NO_ERROR;
    }
    rd_kafka_resp_err_t err = rd_kafka_error_code(error);
    rd_kafka_error_destroy(error);
    if (hdrs != NULL) {
        rd_kafka_headers_destroy(hdrs); /* only taken over on success */
    }
    msg->attempts--;
    return err;
}

/* Produce, or keep in the overflow list when librdkafka's queue is full.
 * `in_order`: a consume-side message goes behind an existing overflow. */
static void produce_msg(kafka_exporter_t *exp, am__kafka_msg_t *msg, bool in_order)
{
    if (in_order && atomic_load(&exp->overflow_count) > 0) {
        overflow_push(exp, msg);
        return;
    }
    rd_kafka_resp_err_t err = produce_once(exp, msg);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        overflow_push(exp, msg);
        return;
    }
    finish_failed(exp, msg, rd_kafka_err2str(err));
}

/* Main loop: re-produce the overflow in order, then retries that are due. */
static void service_pending(kafka_exporter_t *exp, bool all_retries_due)
{
    if (exp->rk == NULL) {
        return;
    }
    if (atomic_load(&exp->overflow_count) > 0) {
        pthread_mutex_lock(&exp->overflow_lock);
        am__kafka_msg_t *list = exp->overflow_head;
        exp->overflow_head = exp->overflow_tail = NULL;
        pthread_mutex_unlock(&exp->overflow_lock);
        while (list != NULL) {
            am__kafka_msg_t *msg = list;
            rd_kafka_resp_err_t err = produce_once(exp, msg);
            if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                break;
            }
            list = msg->next;
            atomic_fetch_sub(&exp->overflow_count, 1);
            if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                finish_failed(exp, msg, rd_kafka_err2str(err));
            }
        }
        if (list != NULL) {
            /* Still full: put the rest back in front of what arrived meanwhile. */
            am__kafka_msg_t *last = list;
            while (last->next != NULL) {
                last = last->next;
            }
            pthread_mutex_lock(&exp->overflow_lock);
            last->next = exp->overflow_head;
            if (exp->overflow_head == NULL) {
                exp->overflow_tail = last;
            }
            exp->overflow_head = list;
            pthread_mutex_unlock(&exp->overflow_lock);
        }
    }
    uint64_t now = am_now_mono_ms();
    am__kafka_msg_t **link = &exp->retry_head;
    while (*link != NULL) {
        am__kafka_msg_t *msg = *link;
        if (!all_retries_due && msg->retry_at_ms > now) {
            link = &msg->next;
            continue;
        }
        *link = msg->next;
        am_counter_add(exp->reproduced, 1);
        produce_msg(exp, msg, false);
    }
    update_pressure(exp);
}

/* ---- librdkafka callbacks (main loop, from rd_kafka_poll/flush) ---------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkmessage, void *opaque)
{
    kafka_exporter_t *exp = opaque;
    am__kafka_msg_t *msg = rkmessage->_private;
    AM_UNUSED(rk);
    if (msg == NULL) {
        return;
    }
    rd_kafka_resp_err_t err = rkmessage->err;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        finish_sent(exp, msg);
        return;
    }
    const am__kafka_retry_cfg_t *retry = &exp->cfg->retry_on_failure;
    if (!exp->purging && retry->enabled && am__kafka_error_is_retriable(err)) {
        uint64_t now = am_now_mono_ms();
        uint64_t backoff = (uint64_t)retry->initial_interval_ms;
        for (uint32_t i = 1; i < msg->attempts && backoff < (uint64_t)retry->max_interval_ms; i++) {
            backoff *= 2;
        }
        backoff = AM_MIN(backoff, (uint64_t)retry->max_interval_ms);
        if (exp->shutting_down) {
            backoff = 0; /* the flush deadline bounds it now */
        }
        uint64_t elapsed = now - msg->first_produce_ms;
        if (retry->max_elapsed_time_ms == 0 ||
            elapsed + backoff <= (uint64_t)retry->max_elapsed_time_ms) {
            AM_WARN(exp->id,
                    "%u spans and %u events to topic %s: %s; producing again in %llums "
                    "(attempt %u)",
                    msg->spans, msg->events, msg->topic, rd_kafka_err2str(err),
                    (unsigned long long)backoff, msg->attempts + 1);
            msg->retry_at_ms = now + backoff;
            msg->next = NULL;
            am__kafka_msg_t **tail = &exp->retry_head; /* FIFO keeps per-key order */
            while (*tail != NULL) {
                tail = &(*tail)->next;
            }
            *tail = msg;
            return;
        }
    }
    finish_failed(exp, msg, rd_kafka_err2str(err));
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_exporter_t *exp = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char fatal[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
        AM_ERROR(exp->id, "fatal producer error %s: %s; nothing more can be produced",
                 rd_kafka_err2name(orig), fatal);
        return;
    }
    /* Outages repeat the same error every few seconds: log it once per
     * interval, everything else at debug level. */
    uint64_t now = am_now_mono_ms();
    if (err != (int)exp->last_error || now - exp->last_error_ms >= ERROR_LOG_INTERVAL_MS) {
        exp->last_error = (rd_kafka_resp_err_t)err;
        exp->last_error_ms = now;
        AM_WARN(exp->id, "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
    } else {
        AM_DEBUG(exp->id, "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
    }
}

/* librdkafka's own log lines (any librdkafka thread; am_log is thread-safe). */
static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *buf)
{
    const kafka_exporter_t *exp = rd_kafka_opaque(rk);
    const char *who = exp != NULL ? exp->id : "kafka";
    if (level <= 3) {
        AM_WARN(who, "librdkafka %s: %s", facility, buf);
    } else if (level <= 5) {
        AM_INFO(who, "librdkafka %s: %s", facility, buf);
    } else {
        AM_DEBUG(who, "librdkafka %s: %s", facility, buf);
    }
}

/* ---- the loop side ------------------------------------------------------- */

static void poll_reports(kafka_exporter_t *exp)
{
    if (exp->rk != NULL) {
        rd_kafka_poll(exp->rk, 0);
        service_pending(exp, false);
    }
}

static void on_wake(uv_poll_t *handle, int status, int events)
{
    kafka_exporter_t *exp = handle->data;
    AM_UNUSED(status);
    AM_UNUSED(events);
    char drain[256];
    while (read(exp->wake_fds[0], drain, sizeof(drain)) > 0) {
    }
    poll_reports(exp);
}

static void on_timer(uv_timer_t *handle)
{
    poll_reports(handle->data);
}

static void on_handle_closed(uv_handle_t *handle)
{
    AM_UNUSED(handle);
}

/* ---- self-telemetry ------------------------------------------------------ */

static int64_t gauge_queue_size(void *user_data)
{
    kafka_exporter_t *exp = user_data;
    return atomic_load(&exp->in_flight);
}

static int64_t gauge_queue_capacity(void *user_data)
{
    kafka_exporter_t *exp = user_data;
    return exp->capacity;
}

/* ---- life cycle ---------------------------------------------------------- */

static int kafka_create(const am_create_params_t *params, void **instance)
{
    const am__kafka_config_t *cfg = params->config;
    kafka_exporter_t *exp = am_calloc(1, sizeof(*exp));
    if (exp == NULL) {
        return AM_ENOMEM;
    }
    exp->wake_fds[0] = exp->wake_fds[1] = -1;
    exp->id = am_strdup(params->id);
    if (exp->id == NULL) {
        am_free(exp);
        return AM_ENOMEM;
    }
    exp->cfg = cfg;
    exp->loop = params->loop;
    pthread_mutex_init(&exp->pressure_lock, NULL);
    pthread_mutex_init(&exp->overflow_lock, NULL);
    atomic_init(&exp->accepting, false);
    atomic_init(&exp->in_flight, 0);
    atomic_init(&exp->overflow_count, 0);
    atomic_init(&exp->pressure.raised, false);
    exp->pressure.who = exp->id;
    exp->capacity = cfg->sending_queue.enabled ? cfg->sending_queue.queue_size : 0;
    exp->low_water = exp->capacity * LOW_WATER_PERCENT / 100;

    am__kafka_encoder_t *enc = &exp->enc;
    enc->id = exp->id;
    enc->spans_topic = cfg->topic != NULL ? cfg->topic : AM__KAFKA_DEFAULT_SPANS_TOPIC;
    enc->events_topic = cfg->topic != NULL ? cfg->topic : AM__KAFKA_DEFAULT_EVENTS_TOPIC;
    enc->topic_attribute = cfg->topic_from_attribute;
    if (strcmp(cfg->partition_by, "trace_id") == 0) {
        enc->keying = AM__KAFKA_KEY_TRACE_ID;
    } else if (strcmp(cfg->partition_by, "none") == 0) {
        enc->keying = AM__KAFKA_KEY_NONE;
    } else {
        enc->keying = AM__KAFKA_KEY_ATTRIBUTE;
        enc->key_attribute = cfg->partition_by;
    }
    enc->json = strcmp(cfg->encoding, "otlp_proto") != 0;
    enc->max_message_bytes = (size_t)cfg->max_message_bytes;

    char labels[320];
    snprintf(labels, sizeof(labels), "exporter=\"%s\"", params->id);
    exp->sent_spans = am_selfmetrics_counter("agentmeter_exporter_sent_spans_total",
                                             "Spans successfully sent by an exporter.", labels);
    exp->failed_spans = am_selfmetrics_counter(
        "agentmeter_exporter_send_failed_spans_total",
        "Spans an exporter failed to send (rejected, or delivery failed for good).", labels);
    exp->sent_events =
        am_selfmetrics_counter("agentmeter_exporter_sent_events_total",
                               "Cost events successfully sent by an exporter.", labels);
    exp->failed_events = am_selfmetrics_counter(
        "agentmeter_exporter_send_failed_events_total",
        "Cost events an exporter failed to send (rejected, or delivery failed for good).", labels);
    exp->reproduced = am_selfmetrics_counter(
        "agentmeter_exporter_kafka_reproduced_messages_total",
        "Kafka messages produced again after a retriable delivery failure.", labels);
    *instance = exp;
    return 0;
}

static void close_wake_fds(kafka_exporter_t *exp)
{
    for (int i = 0; i < 2; i++) {
        if (exp->wake_fds[i] >= 0) {
            close(exp->wake_fds[i]);
            exp->wake_fds[i] = -1;
        }
    }
}

static void destroy_producer(kafka_exporter_t *exp)
{
    if (exp->main_queue != NULL) {
        rd_kafka_queue_io_event_enable(exp->main_queue, -1, NULL, 0);
        rd_kafka_queue_destroy(exp->main_queue);
        exp->main_queue = NULL;
    }
    if (exp->rk != NULL) {
        rd_kafka_destroy(exp->rk);
        exp->rk = NULL;
    }
}

static int kafka_start(void *instance)
{
    kafka_exporter_t *exp = instance;
    const am__kafka_config_t *cfg = exp->cfg;
    am_errors_t errs = {0};
    rd_kafka_conf_t *conf = am__kafka_conf_build(cfg, NULL, exp->id, &errs);
    if (conf == NULL) {
        for (size_t i = 0; i < errs.count; i++) {
            AM_ERROR(exp->id, "%s", errs.msgs[i]);
        }
        am_errors_clear(&errs);
        return AM_EINVAL;
    }
    rd_kafka_conf_set_opaque(conf, exp);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);

    char errstr[512];
    exp->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (exp->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        const am_node_t *at = cfg->producer;
        if (at != NULL) {
            AM_ERROR(exp->id, "%s:%d: exporters.%s: librdkafka refused the configuration: %s",
                     at->file != NULL ? at->file : "?", at->line, exp->id, errstr);
        } else {
            AM_ERROR(exp->id, "librdkafka refused the configuration: %s", errstr);
        }
        return AM_EINVAL;
    }
    size_t header_bytes = 0;
    exp->headers = am__kafka_headers_build(cfg, &header_bytes);
    exp->enc.header_bytes = header_bytes;

    exp->main_queue = rd_kafka_queue_get_main(exp->rk);
    if (pipe2(exp->wake_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        AM_ERROR(exp->id, "pipe: %s", strerror(errno));
        exp->wake_fds[0] = exp->wake_fds[1] = -1;
        destroy_producer(exp);
        return AM_EIO;
    }
    rd_kafka_queue_io_event_enable(exp->main_queue, exp->wake_fds[1], "1", 1);
    int rc = uv_poll_init(exp->loop, &exp->wake_poll, exp->wake_fds[0]);
    if (rc == 0) {
        rc = uv_timer_init(exp->loop, &exp->timer);
        if (rc != 0) {
            uv_close((uv_handle_t *)&exp->wake_poll, on_handle_closed);
        }
    }
    if (rc != 0) {
        AM_ERROR(exp->id, "cannot watch delivery reports: %s", uv_strerror(rc));
        destroy_producer(exp);
        close_wake_fds(exp);
        return AM_EIO;
    }
    exp->handles_open = true;
    exp->wake_poll.data = exp;
    exp->timer.data = exp;
    uv_poll_start(&exp->wake_poll, UV_READABLE, on_wake);
    uv_timer_start(&exp->timer, on_timer, POLL_INTERVAL_MS, POLL_INTERVAL_MS);

    char labels[320];
    snprintf(labels, sizeof(labels), "exporter=\"%s\"", exp->id);
    am_selfmetrics_gauge_fn("agentmeter_exporter_queue_size",
                            "Spans and events an exporter holds that are not delivered yet.",
                            labels, gauge_queue_size, exp);
    am_selfmetrics_gauge_fn("agentmeter_exporter_queue_capacity",
                            "Spans and events an exporter holds before it pushes back (0: "
                            "unbounded).",
                            labels, gauge_queue_capacity, exp);
    if (strcmp(cfg->required_acks, "all") != 0 && strcmp(cfg->required_acks, "-1") != 0) {
        AM_WARN(exp->id,
                "required_acks %s turns enable.idempotence off: messages may be lost "
                "or duplicated",
                cfg->required_acks);
    }
    atomic_store(&exp->accepting, true);
    AM_INFO(exp->id, "producing to %s (%s, key %s, compression %s, idempotence %s)",
            cfg->topic != NULL ? cfg->topic : "agent-spans / agent-cost-events",
            exp->enc.json ? "otlp_json" : "otlp_proto", cfg->partition_by, cfg->compression,
            strcmp(cfg->required_acks, "all") == 0 || strcmp(cfg->required_acks, "-1") == 0
                ? "on"
                : "off");
    return 0;
}

static am_status_t kafka_consume(void *instance, am_batch_t *batch)
{
    kafka_exporter_t *exp = instance;
    if (!atomic_load(&exp->accepting)) {
        return AM_RETRY;
    }
    am__kafka_encoded_t out = {0};
    if ((batch->signal & AM_SIGNAL_TRACES) && batch->traces != NULL) {
        am__kafka_encode_spans(&exp->enc, batch->traces, &out);
    }
    if ((batch->signal & AM_SIGNAL_LOGS) && batch->n_events > 0) {
        am__kafka_encode_events(&exp->enc, batch->events, batch->n_events, &out);
    }
    am_counter_add(exp->failed_spans, out.rejected_spans + out.failed_spans);
    am_counter_add(exp->failed_events, out.rejected_events + out.failed_events);
    uint64_t now = am_now_mono_ms();
    for (am__kafka_msg_t *msg = out.head; msg != NULL;) {
        am__kafka_msg_t *next = msg->next;
        msg->first_produce_ms = now;
        atomic_fetch_add(&exp->in_flight, (int64_t)msg_items(msg));
        produce_msg(exp, msg, true);
        msg = next;
    }
    update_pressure(exp);
    /* The data is ours now, even above queue_size: it is already inside the
     * pipeline, and refusing it here would lose it.  Receivers push back. */
    return AM_OK;
}

static void fail_list(kafka_exporter_t *exp, am__kafka_msg_t *list, const char *why)
{
    while (list != NULL) {
        am__kafka_msg_t *next = list->next;
        finish_failed(exp, list, why);
        list = next;
    }
}

static void kafka_shutdown(void *instance)
{
    kafka_exporter_t *exp = instance;
    if (exp->shut) {
        return;
    }
    exp->shut = true;
    atomic_store(&exp->accepting, false);
    if (exp->rk != NULL) {
        exp->shutting_down = true;
        uint64_t failed_before =
            am_counter_get(exp->failed_spans) + am_counter_get(exp->failed_events);
        int64_t pending = atomic_load(&exp->in_flight);
        uint64_t deadline = am_now_mono_ms() + (uint64_t)exp->cfg->flush_timeout_ms;
        if (pending > 0) {
            AM_INFO(exp->id, "flushing %lld spans and events (up to %lldms)", (long long)pending,
                    (long long)exp->cfg->flush_timeout_ms);
        }
        for (;;) {
            rd_kafka_poll(exp->rk, 0);
            service_pending(exp, true);
            uint64_t now = am_now_mono_ms();
            if (atomic_load(&exp->in_flight) <= 0 || now >= deadline) {
                break;
            }
            rd_kafka_flush(exp->rk, (int)AM_MIN(deadline - now, (uint64_t)POLL_INTERVAL_MS));
        }
        int64_t left = atomic_load(&exp->in_flight);
        if (left > 0) {
            exp->purging = true;
            rd_kafka_purge(exp->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            uint64_t purge_deadline = am_now_mono_ms() + PURGE_WAIT_MS;
            pthread_mutex_lock(&exp->overflow_lock);
            am__kafka_msg_t *overflow = exp->overflow_head;
            exp->overflow_head = exp->overflow_tail = NULL;
            atomic_store(&exp->overflow_count, 0);
            pthread_mutex_unlock(&exp->overflow_lock);
            fail_list(exp, overflow, "not produced before flush_timeout");
            fail_list(exp, exp->retry_head, "not delivered before flush_timeout");
            exp->retry_head = NULL;
            while (atomic_load(&exp->in_flight) > 0 && am_now_mono_ms() < purge_deadline) {
                rd_kafka_poll(exp->rk, POLL_INTERVAL_MS);
            }
            uint64_t failed_now =
                am_counter_get(exp->failed_spans) + am_counter_get(exp->failed_events);
            AM_ERROR(exp->id,
                     "shutdown: %lld spans and events were not delivered within flush_timeout "
                     "(%llu counted as failed)",
                     (long long)left, (unsigned long long)(failed_now - failed_before));
        } else if (pending > 0) {
            AM_INFO(exp->id, "flushed");
        }
        destroy_producer(exp);
    }
    if (exp->handles_open) {
        uv_poll_stop(&exp->wake_poll);
        uv_timer_stop(&exp->timer);
        uv_close((uv_handle_t *)&exp->wake_poll, on_handle_closed);
        uv_close((uv_handle_t *)&exp->timer, on_handle_closed);
        exp->handles_open = false;
    }
    am_selfmetrics_unregister(exp);
    am_pressure_set(&exp->pressure, false);
}

static void kafka_destroy(void *instance)
{
    kafka_exporter_t *exp = instance;
    destroy_producer(exp);
    if (exp->headers != NULL) {
        rd_kafka_headers_destroy(exp->headers);
    }
    /* Only reachable without a shutdown when start failed: nothing in flight. */
    am__kafka_encoded_t rest = {.head = exp->overflow_head};
    am__kafka_encoded_free(&rest);
    rest = (am__kafka_encoded_t){.head = exp->retry_head};
    am__kafka_encoded_free(&rest);
    close_wake_fds(exp);
    pthread_mutex_destroy(&exp->pressure_lock);
    pthread_mutex_destroy(&exp->overflow_lock);
    am_free(exp->id);
    am_free(exp);
}

const am_component_ops_t am_exporter_kafka_ops = {
    .type = "kafka",
    .kind = AM_KIND_EXPORTER,
    .signals = AM_SIGNAL_TRACES | AM_SIGNAL_LOGS,
    .doc = "Produces spans (OTLP protobuf or JSON, keyed by trace, session or any attribute) "
           "and cost events (JSON) to Kafka, at least once, with librdkafka.",
    .options = am__kafka_options,
    .config_size = sizeof(am__kafka_config_t),
    .validate = am__kafka_validate,
    .create = kafka_create,
    .start = kafka_start,
    .consume = kafka_consume,
    .shutdown = kafka_shutdown,
    .destroy = kafka_destroy,
};
