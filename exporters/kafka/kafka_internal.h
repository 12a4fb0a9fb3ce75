/*
 * kafka_internal.h - what the files of the kafka exporter share.
 *
 *   kafka.c         the ops struct, option table, life cycle, the loop side
 *                   (delivery reports, retries, overflow, backpressure).
 *   kafka_config.c  option checks and the librdkafka configuration built from
 *                   the options (shared by validate and start, so a typo in
 *                   `producer:` is a config error with file:line).
 *   kafka_encode.c  batch -> messages: grouping spans by message key, one
 *                   ExportTraceServiceRequest per key, encoding, splitting at
 *                   max_message_bytes; one message per cost event.
 *
 * Everything here is am__kafka_ (cross-file internal, STYLE.md) so the unit
 * tests can reach the pure parts (encode, config checks) without a broker.
 */
#ifndef AM_KAFKA_INTERNAL_H
#define AM_KAFKA_INTERNAL_H

#include <librdkafka/rdkafka.h>

#include "am_batch.h"
#include "am_options.h"

/* ---- options ----------------------------------------------------------- */

typedef struct am__kafka_queue_cfg {
    bool set;
    bool enabled;
    int64_t queue_size; /* spans (and events) in flight */
} am__kafka_queue_cfg_t;

typedef struct am__kafka_retry_cfg {
    bool set;
    bool enabled;
    int64_t initial_interval_ms;
    int64_t max_interval_ms;
    int64_t max_elapsed_time_ms;
} am__kafka_retry_cfg_t;

typedef struct am__kafka_config {
    am_strlist_t brokers;
    char *topic; /* NULL: agent-spans / agent-cost-events by signal */
    char *client_id;
    char *encoding;
    char *partition_by;
    char *topic_from_attribute;
    char *compression;
    char *required_acks;
    int64_t max_message_bytes;
    const am_node_t *headers;  /* map of static headers, or NULL */
    const am_node_t *producer; /* map passed to rd_kafka_conf_set, or NULL */
    am__kafka_queue_cfg_t sending_queue;
    am__kafka_retry_cfg_t retry_on_failure;
    int64_t timeout_ms;
    int64_t flush_timeout_ms;
} am__kafka_config_t;

extern const am_option_t am__kafka_options[];

#define AM__KAFKA_DEFAULT_SPANS_TOPIC "agent-spans"
#define AM__KAFKA_DEFAULT_EVENTS_TOPIC "agent-cost-events"

/* Cross-field checks and a dry run of the librdkafka settings (no handle is
 * created).  Problems are appended to errs at the offending node. */
void am__kafka_validate(const void *config, const void *node, const char *prefix,
                        am_errors_t *errs);

/*
 * The librdkafka configuration for `cfg`: brokers, client id, compression,
 * acks, idempotence, message.max.bytes, message.timeout.ms, then every
 * `producer:` entry.  Returns a new conf (caller owns it: rd_kafka_new takes
 * it, else rd_kafka_conf_destroy) or NULL with every problem appended to
 * errs, located at the option's node under `map` (the component's config
 * map; may be NULL) or at the producer entry.
 */
rd_kafka_conf_t *am__kafka_conf_build(const am__kafka_config_t *cfg, const am_node_t *map,
                                      const char *prefix, am_errors_t *errs);

/* Static headers from `headers:` (NULL when there are none; caller destroys
 * with rd_kafka_headers_destroy) and their serialized size. */
rd_kafka_headers_t *am__kafka_headers_build(const am__kafka_config_t *cfg, size_t *wire_size);

/* ---- messages ---------------------------------------------------------- */

/*
 * One Kafka message and its bookkeeping: the opaque librdkafka hands back in
 * the delivery report.  One allocation (am_malloc) holds the struct, the
 * topic, the key and the value; am__kafka_msg_free releases it.  librdkafka
 * references `value` (no copy) from produce until the delivery report, so
 * the exporter frees a message only after its report.
 */
typedef struct am__kafka_msg am__kafka_msg_t;
struct am__kafka_msg {
    am__kafka_msg_t *next; /* overflow / retry / result lists */
    char *topic;
    char *key; /* NULL: no key */
    size_t key_len;
    char *value;
    size_t value_len;
    uint32_t spans;  /* spans carried */
    uint32_t events; /* cost events carried (0 or 1) */
    uint32_t attempts;
    uint64_t first_produce_ms; /* monotonic */
    uint64_t retry_at_ms;      /* monotonic, while waiting to be re-produced */
    size_t alloc_size;         /* bytes held (am_memory_hold) until freed */
};

am__kafka_msg_t *am__kafka_msg_new(const char *topic, const char *key, size_t key_len,
                                   const void *value, size_t value_len);
void am__kafka_msg_free(am__kafka_msg_t *msg);

typedef enum am__kafka_keying {
    AM__KAFKA_KEY_TRACE_ID,
    AM__KAFKA_KEY_ATTRIBUTE,
    AM__KAFKA_KEY_NONE,
} am__kafka_keying_t;

/* How a batch becomes messages (fixed at create time, read-only after). */
typedef struct am__kafka_encoder {
    const char *id;              /* "kafka/spans", for log lines */
    const char *spans_topic;     /* default topic for spans */
    const char *events_topic;    /* default topic for events */
    const char *topic_attribute; /* NULL: no topic_from_attribute */
    am__kafka_keying_t keying;
    const char *key_attribute; /* AM__KAFKA_KEY_ATTRIBUTE */
    bool json;                 /* otlp_json instead of otlp_proto */
    size_t max_message_bytes;  /* key + value + headers + record overhead */
    size_t header_bytes;       /* serialized size of the static headers */
} am__kafka_encoder_t;

/* Worst-case per-record overhead librdkafka adds when it checks
 * message.max.bytes (MessageSet v2 record framing), plus headroom. */
#define AM__KAFKA_RECORD_OVERHEAD 64

/* What one batch became: messages in order, plus what could not be sent. */
typedef struct am__kafka_encoded {
    am__kafka_msg_t *head, *tail;
    size_t n_msgs;
    size_t rejected_spans;  /* a single span over max_message_bytes */
    size_t rejected_events; /* an event over max_message_bytes */
    size_t failed_spans;    /* out of memory while encoding */
    size_t failed_events;
} am__kafka_encoded_t;

/*
 * Turn the spans of `req` into messages appended to `out`: spans are grouped
 * by (topic, key) in order of first appearance; each group becomes one
 * ExportTraceServiceRequest (ResourceSpans/ScopeSpans regrouped, span
 * pointers shared), encoded, and split over several messages when it would
 * exceed max_message_bytes.  A span that alone exceeds it is rejected,
 * counted in out->rejected_spans and logged.  Returns 0 or AM_ENOMEM (what
 * was built so far stays in out; the rest is counted in failed_spans).
 * Thread-safe: reads `req`, allocates only its own memory.
 */
int am__kafka_encode_spans(const am__kafka_encoder_t *enc, const am_pb_export_req_t *req,
                           am__kafka_encoded_t *out);

/* One message per event: key = event->key, value = event->json. */
int am__kafka_encode_events(const am__kafka_encoder_t *enc, const am_event_t *events,
                            size_t n_events, am__kafka_encoded_t *out);

/* Free every message of `out` and reset it. */
void am__kafka_encoded_free(am__kafka_encoded_t *out);

/* The message key of a span under `enc` into buf (size >= 33 for trace ids);
 * returns the key (buf or a pointer into the span's attributes) and its
 * length, or NULL for no key. */
const char *am__kafka_span_key(const am__kafka_encoder_t *enc, const am_pb_span_t *span,
                               const am_pb_resource_t *resource, char *buf, size_t buf_size,
                               size_t *key_len);

/* True when a delivery error is worth producing the message again. */
bool am__kafka_error_is_retriable(rd_kafka_resp_err_t err);

#endif
