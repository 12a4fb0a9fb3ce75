/*
 * kafka_config.c - the kafka exporter's options and the librdkafka settings
 * they become.
 *
 * The option names follow the OpenTelemetry Collector's kafka exporter.  A
 * few librdkafka properties are owned by options (bootstrap.servers by
 * `brokers`, acks by `required_acks` ...); setting them again under
 * `producer:` would make two sources of truth, so that is a config error
 * naming the option to use.  Everything else under `producer:` goes to
 * rd_kafka_conf_set() as is, and librdkafka's own complaint (unknown
 * property, invalid value) becomes a config error at the entry's file:line.
 * validate() builds the conf once as a dry run (a conf object spawns no
 * threads), so `agentmeter validate` catches those mistakes; start() builds
 * it again for real.
 *
 * Idempotence: enable.idempotence is always on with acks=all (the default).
 * Kafka defines idempotence only for acks=all, so required_acks 0 or 1
 * turns it off; the exporter logs a warning when it starts like that.
 */
#include <stdio.h>
#include <string.h>

#include "kafka_internal.h"

#define DOC_TOPIC                                                                                  \
    "Topic to produce to.  Unset: \"" AM__KAFKA_DEFAULT_SPANS_TOPIC "\" for spans (traces "        \
    "pipelines) and \"" AM__KAFKA_DEFAULT_EVENTS_TOPIC "\" for cost events (logs pipelines).  "    \
    "When set it is used for both; give each signal its own exporter (kafka/spans, "               \
    "kafka/events) to keep them apart."

static const am_option_t queue_options[] = {
    AM_OPT("enabled", AM_OPT_BOOL, "true", am__kafka_queue_cfg_t, enabled,
           "Bound what is in flight: above queue_size the exporter raises backpressure "
           "(receivers answer 503/UNAVAILABLE) and lowers it again below 80%.  false: no bound "
           "beyond librdkafka's own queue.buffering.max.* (not recommended)."),
    {.name = "queue_size",
     .type = AM_OPT_INT,
     .def = "100000",
     .offset = offsetof(am__kafka_queue_cfg_t, queue_size),
     .min = 1,
     .max = 1e9,
     .doc = "Spans (plus cost events) produced but not yet acknowledged, including those "
            "waiting for a retry."},
    AM_OPT_END,
};

static const am_option_t retry_options[] = {
    AM_OPT("enabled", AM_OPT_BOOL, "true", am__kafka_retry_cfg_t, enabled,
           "Produce again messages whose delivery failed with a retriable error (e.g. message "
           "timed out); librdkafka already retries transient broker errors itself."),
    {.name = "initial_interval",
     .type = AM_OPT_DURATION,
     .def = "5s",
     .offset = offsetof(am__kafka_retry_cfg_t, initial_interval_ms),
     .min = 1,
     .max = 86400000,
     .doc = "Wait before the first re-produce; doubles on each further attempt."},
    {.name = "max_interval",
     .type = AM_OPT_DURATION,
     .def = "30s",
     .offset = offsetof(am__kafka_retry_cfg_t, max_interval_ms),
     .min = 1,
     .max = 86400000,
     .doc = "Upper bound of the wait between attempts."},
    {.name = "max_elapsed_time",
     .type = AM_OPT_DURATION,
     .def = "300s",
     .offset = offsetof(am__kafka_retry_cfg_t, max_elapsed_time_ms),
     .min = 0,
     .max = 604800000,
     .doc = "Give up (count as failed, log) this long after the first produce; 0: never."},
    AM_OPT_END,
};

const am_option_t am__kafka_options[] = {
    AM_OPT("brokers", AM_OPT_STRLIST, "[localhost:9092]", am__kafka_config_t, brokers,
           "Bootstrap brokers, host:port (librdkafka bootstrap.servers)."),
    AM_OPT("topic", AM_OPT_STRING, NULL, am__kafka_config_t, topic, DOC_TOPIC),
    AM_OPT("client_id", AM_OPT_STRING, "agentmeter", am__kafka_config_t, client_id,
           "Kafka client.id."),
    {.name = "encoding",
     .type = AM_OPT_ENUM,
     .def = "otlp_proto",
     .offset = offsetof(am__kafka_config_t, encoding),
     .choices = "otlp_proto|otlp_json|json",
     .doc = "Span messages: one ExportTraceServiceRequest each, protobuf (otlp_proto) or "
            "OTLP/JSON with hex ids (otlp_json; json is the same).  Cost events are always one "
            "JSON object per message."},
    AM_OPT("partition_by", AM_OPT_STRING, "trace_id", am__kafka_config_t, partition_by,
           "Message key: trace_id (hex), an attribute name such as session.id (span attributes, "
           "then resource attributes; spans without it are keyed by trace id), or none.  Equal "
           "keys land in the same partition.  Events are always keyed by their scope key."),
    AM_OPT("topic_from_attribute", AM_OPT_STRING, NULL, am__kafka_config_t, topic_from_attribute,
           "Take the topic from this attribute (span, then resource; event attributes for "
           "events) when present, else `topic`."),
    {.name = "compression",
     .type = AM_OPT_ENUM,
     .def = "zstd",
     .offset = offsetof(am__kafka_config_t, compression),
     .choices = "none|gzip|snappy|lz4|zstd",
     .doc = "Compression codec of produced batches."},
    {.name = "required_acks",
     .type = AM_OPT_ENUM,
     .def = "all",
     .offset = offsetof(am__kafka_config_t, required_acks),
     .choices = "all|-1|0|1",
     .doc = "Acks: all (= -1) keeps enable.idempotence on; 0 or 1 turn idempotence off (Kafka "
            "defines it only for acks=all) and may lose or duplicate data."},
    {.name = "max_message_bytes",
     .type = AM_OPT_INT,
     .def = "1000000",
     .offset = offsetof(am__kafka_config_t, max_message_bytes),
     .min = 1000,
     .max = 1000000000,
     .doc = "Largest message (key + value + headers; librdkafka message.max.bytes).  Larger "
            "batches are split by resource and span; a single span larger than this is "
            "rejected and counted in send_failed."},
    {.name = "headers",
     .type = AM_OPT_NODE,
     .offset = offsetof(am__kafka_config_t, headers),
     .doc = "Static headers added to every message: a map of name: value."},
    {.name = "producer",
     .type = AM_OPT_NODE,
     .offset = offsetof(am__kafka_config_t, producer),
     .doc = "librdkafka properties passed through as is (security.protocol, sasl.*, ssl.*, "
            "linger.ms, partitioner, ...)."},
    {.name = "sending_queue",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__kafka_config_t, sending_queue),
     .sub = queue_options,
     .doc = "The bound on data in flight, which becomes backpressure."},
    {.name = "retry_on_failure",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__kafka_config_t, retry_on_failure),
     .sub = retry_options,
     .doc = "Re-produce messages that failed with a retriable error, with exponential backoff."},
    {.name = "timeout",
     .type = AM_OPT_DURATION,
     .def = "5m",
     .offset = offsetof(am__kafka_config_t, timeout_ms),
     .min = 1,
     .max = 2147483647,
     .doc = "Delivery timeout of one produce attempt, retries inside librdkafka included "
            "(message.timeout.ms)."},
    {.name = "flush_timeout",
     .type = AM_OPT_DURATION,
     .def = "10s",
     .offset = offsetof(am__kafka_config_t, flush_timeout_ms),
     .min = 0,
     .max = 3600000,
     .doc = "At shutdown, wait this long for outstanding deliveries; what is left is counted "
            "as failed and logged."},
    AM_OPT_END,
};

/* librdkafka properties owned by an option: setting them under producer: is
 * an error that names the option. */
static const struct {
    const char *property;
    const char *option;
} owned_properties[] = {
    {"bootstrap.servers", "brokers"},
    {"metadata.broker.list", "brokers"},
    {"client.id", "client_id"},
    {"compression.codec", "compression"},
    {"compression.type", "compression"},
    {"acks", "required_acks"},
    {"request.required.acks", "required_acks"},
    {"enable.idempotence", "(always on with required_acks: all)"},
    {"message.max.bytes", "max_message_bytes"},
    {"message.timeout.ms", "timeout"},
    {"delivery.timeout.ms", "timeout"},
};

static const char *owned_by(const char *property)
{
    for (size_t i = 0; i < AM_ARRAY_SIZE(owned_properties); i++) {
        if (strcmp(owned_properties[i].property, property) == 0) {
            return owned_properties[i].option;
        }
    }
    return NULL;
}

/* Where to report a problem with option `name`: its node, else the map. */
static const am_node_t *option_node(const am_node_t *map, const char *name)
{
    const am_node_t *node = map != NULL ? am_node_get(map, name) : NULL;
    return node != NULL ? node : map;
}

static bool acks_all(const am__kafka_config_t *cfg)
{
    return cfg->required_acks == NULL || strcmp(cfg->required_acks, "all") == 0 ||
           strcmp(cfg->required_acks, "-1") == 0;
}

/* Set one property; on failure add an error located at `at`. */
static bool conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                     const am_node_t *at, const char *what, am_errors_t *errs)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK) {
        return true;
    }
    am_errors_add(errs, at, "%s: %s", what, errstr);
    return false;
}

rd_kafka_conf_t *am__kafka_conf_build(const am__kafka_config_t *cfg, const am_node_t *map,
                                      const char *prefix, am_errors_t *errs)
{
    size_t before = errs->count;
    char what[256];
    char number[32];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf == NULL) {
        am_errors_add(errs, map, "%s: out of memory", prefix);
        return NULL;
    }

    /* brokers, joined with commas */
    size_t len = 1;
    for (size_t i = 0; i < cfg->brokers.count; i++) {
        len += strlen(cfg->brokers.items[i]) + 1;
    }
    char *servers = am_malloc(len);
    if (servers == NULL) {
        rd_kafka_conf_destroy(conf);
        am_errors_add(errs, map, "%s: out of memory", prefix);
        return NULL;
    }
    servers[0] = '\0';
    for (size_t i = 0; i < cfg->brokers.count; i++) {
        if (i > 0) {
            strcat(servers, ",");
        }
        strcat(servers, cfg->brokers.items[i]);
    }
    snprintf(what, sizeof(what), "%s.brokers", prefix);
    conf_set(conf, "bootstrap.servers", servers, option_node(map, "brokers"), what, errs);
    am_free(servers);

    snprintf(what, sizeof(what), "%s.client_id", prefix);
    conf_set(conf, "client.id", cfg->client_id != NULL ? cfg->client_id : "agentmeter",
             option_node(map, "client_id"), what, errs);
    snprintf(what, sizeof(what), "%s.compression", prefix);
    conf_set(conf, "compression.codec", cfg->compression != NULL ? cfg->compression : "zstd",
             option_node(map, "compression"), what, errs);
    snprintf(what, sizeof(what), "%s.required_acks", prefix);
    conf_set(conf, "acks", acks_all(cfg) ? "all" : cfg->required_acks,
             option_node(map, "required_acks"), what, errs);
    conf_set(conf, "enable.idempotence", acks_all(cfg) ? "true" : "false",
             option_node(map, "required_acks"), what, errs);
    snprintf(what, sizeof(what), "%s.max_message_bytes", prefix);
    snprintf(number, sizeof(number), "%lld", (long long)cfg->max_message_bytes);
    conf_set(conf, "message.max.bytes", number, option_node(map, "max_message_bytes"), what, errs);
    snprintf(what, sizeof(what), "%s.timeout", prefix);
    snprintf(number, sizeof(number), "%lld", (long long)cfg->timeout_ms);
    conf_set(conf, "message.timeout.ms", number, option_node(map, "timeout"), what, errs);
    /* A broker going away is reported once by the error callback; the
     * per-connection log lines librdkafka adds are noise. */
    conf_set(conf, "log.connection.close", "false", map, prefix, errs);

    const am_node_t *producer = cfg->producer;
    if (producer != NULL && producer->kind != AM_NODE_NULL) {
        if (producer->kind != AM_NODE_MAP) {
            am_errors_add(errs, producer,
                          "%s.producer: expected a map of librdkafka properties, "
                          "got a %s",
                          prefix, am_node_kind_name(producer->kind));
        } else {
            for (size_t i = 0; i < producer->n_children; i++) {
                const am_node_t *entry = producer->children[i];
                snprintf(what, sizeof(what), "%s.producer.%s", prefix, entry->key);
                const char *option = owned_by(entry->key);
                if (option != NULL) {
                    am_errors_add(errs, entry, "%s: set by the exporter; use %s instead", what,
                                  option);
                    continue;
                }
                if (entry->kind != AM_NODE_SCALAR) {
                    am_errors_add(errs, entry, "%s: expected a scalar value, got a %s", what,
                                  am_node_kind_name(entry->kind));
                    continue;
                }
                conf_set(conf, entry->key, entry->str, entry, what, errs);
            }
        }
    }
    if (errs->count != before) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

static size_t varint_size(size_t v)
{
    size_t n = 1;
    /* headers use zig-zag varints: double first */
    v <<= 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

rd_kafka_headers_t *am__kafka_headers_build(const am__kafka_config_t *cfg, size_t *wire_size)
{
    *wire_size = 0;
    const am_node_t *map = cfg->headers;
    if (map == NULL || map->kind != AM_NODE_MAP || map->n_children == 0) {
        return NULL;
    }
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(map->n_children);
    size_t size = 5; /* header count varint */
    for (size_t i = 0; i < map->n_children; i++) {
        const am_node_t *entry = map->children[i];
        const char *value = entry->kind == AM_NODE_SCALAR ? entry->str : "";
        rd_kafka_header_add(hdrs, entry->key, -1, value, -1);
        size += varint_size(strlen(entry->key)) + strlen(entry->key) + varint_size(strlen(value)) +
                strlen(value);
    }
    *wire_size = size;
    return hdrs;
}

void am__kafka_validate(const void *config, const void *node, const char *prefix, am_errors_t *errs)
{
    const am__kafka_config_t *cfg = config;
    const am_node_t *map = node;
    const am_node_t *at;

    at = am_node_get(map, "brokers");
    if (cfg->brokers.count == 0) {
        am_errors_add(errs, at != NULL ? at : map, "%s.brokers: at least one broker is required",
                      prefix);
    }
    for (size_t i = 0; i < cfg->brokers.count; i++) {
        if (cfg->brokers.items[i][0] == '\0' || strchr(cfg->brokers.items[i], ',') != NULL) {
            am_errors_add(errs, at, "%s.brokers: \"%s\" is not one host:port", prefix,
                          cfg->brokers.items[i]);
        }
    }
    if (cfg->topic != NULL && cfg->topic[0] == '\0') {
        am_errors_add(errs, am_node_get(map, "topic"), "%s.topic: must not be empty", prefix);
    }
    if (cfg->partition_by == NULL || cfg->partition_by[0] == '\0') {
        am_errors_add(errs, am_node_get(map, "partition_by"),
                      "%s.partition_by: must be trace_id, an attribute name or none", prefix);
    }
    if (cfg->topic_from_attribute != NULL && cfg->topic_from_attribute[0] == '\0') {
        am_errors_add(errs, am_node_get(map, "topic_from_attribute"),
                      "%s.topic_from_attribute: must not be empty (leave it unset instead)",
                      prefix);
    }
    if (cfg->retry_on_failure.initial_interval_ms > cfg->retry_on_failure.max_interval_ms) {
        am_errors_add(errs, am_node_get(am_node_get(map, "retry_on_failure"), "initial_interval"),
                      "%s.retry_on_failure.initial_interval: larger than max_interval", prefix);
    }
    const am_node_t *headers = cfg->headers;
    if (headers != NULL && headers->kind != AM_NODE_NULL) {
        if (headers->kind != AM_NODE_MAP) {
            am_errors_add(errs, headers, "%s.headers: expected a map of name: value, got a %s",
                          prefix, am_node_kind_name(headers->kind));
        } else {
            for (size_t i = 0; i < headers->n_children; i++) {
                const am_node_t *entry = headers->children[i];
                if (entry->kind != AM_NODE_SCALAR) {
                    am_errors_add(errs, entry, "%s.headers.%s: expected a string value, got a %s",
                                  prefix, entry->key, am_node_kind_name(entry->kind));
                }
            }
        }
    }
    rd_kafka_conf_t *conf = am__kafka_conf_build(cfg, map, prefix, errs);
    if (conf != NULL) {
        rd_kafka_conf_destroy(conf);
    }
}
