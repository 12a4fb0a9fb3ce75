/*
 * kafka exporter options: the defaults a user gets (brokers localhost:9092,
 * zstd, acks=all with idempotence, 1 MB messages, 5 min delivery timeout),
 * and every mistake reported at its file:line: librdkafka's own complaints
 * about `producer:` entries, properties an option owns, malformed headers,
 * an empty broker list.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exporters/kafka/kafka_internal.h"

typedef struct parsed {
    am_config_t *config;
    am__kafka_config_t cfg;
    am_errors_t errs;
} parsed_t;

/* Parse `text` (the exporter's option map under the key `kafka`) through the
 * option table and the exporter's validate hook. */
static parsed_t *parse(const char *text)
{
    parsed_t *p = calloc(1, sizeof(*p));
    p->config = am_config_load_buffer("cfg.yaml", text, strlen(text), &p->errs);
    assert_non_null(p->config);
    const am_node_t *map = am_node_get(am_config_root(p->config), "kafka");
    size_t before = p->errs.count;
    am_options_parse(am__kafka_options, &p->cfg,
                     map != NULL && map->kind == AM_NODE_MAP ? map : NULL, "exporters.kafka",
                     &p->errs);
    if (p->errs.count == before) {
        am__kafka_validate(&p->cfg, map, "exporters.kafka", &p->errs);
    }
    return p;
}

static void parsed_free(parsed_t *p)
{
    am_options_free(am__kafka_options, &p->cfg);
    am_errors_clear(&p->errs);
    am_config_free(p->config);
    free(p);
}

/* True when some error contains every one of the NULL-terminated needles. */
static bool has_error(const parsed_t *p, ...)
{
    for (size_t i = 0; i < p->errs.count; i++) {
        va_list ap;
        va_start(ap, p);
        bool all = true;
        for (const char *needle = va_arg(ap, const char *); needle != NULL;
             needle = va_arg(ap, const char *)) {
            if (strstr(p->errs.msgs[i], needle) == NULL) {
                all = false;
            }
        }
        va_end(ap);
        if (all) {
            return true;
        }
    }
    return false;
}

static void print_errors(const parsed_t *p)
{
    for (size_t i = 0; i < p->errs.count; i++) {
        fprintf(stderr, "  %s\n", p->errs.msgs[i]);
    }
}

static void conf_expect(rd_kafka_conf_t *conf, const char *name, const char *want)
{
    char value[512];
    size_t size = sizeof(value);
    assert_int_equal(rd_kafka_conf_get(conf, name, value, &size), RD_KAFKA_CONF_OK);
    if (strcmp(value, want) != 0) {
        fail_msg("%s = %s, want %s", name, value, want);
    }
}

static void test_defaults(void **state)
{
    (void)state;
    parsed_t *p = parse("kafka: {}\n");
    print_errors(p);
    assert_int_equal(p->errs.count, 0);
    assert_int_equal(p->cfg.brokers.count, 1);
    assert_string_equal(p->cfg.brokers.items[0], "localhost:9092");
    assert_null(p->cfg.topic);
    assert_string_equal(p->cfg.encoding, "otlp_proto");
    assert_string_equal(p->cfg.partition_by, "trace_id");
    assert_string_equal(p->cfg.compression, "zstd");
    assert_string_equal(p->cfg.required_acks, "all");
    assert_int_equal(p->cfg.max_message_bytes, 1000000);
    assert_true(p->cfg.sending_queue.enabled);
    assert_int_equal(p->cfg.sending_queue.queue_size, 100000);
    assert_true(p->cfg.retry_on_failure.enabled);
    assert_int_equal(p->cfg.retry_on_failure.initial_interval_ms, 5000);
    assert_int_equal(p->cfg.retry_on_failure.max_interval_ms, 30000);
    assert_int_equal(p->cfg.retry_on_failure.max_elapsed_time_ms, 300000);
    assert_int_equal(p->cfg.timeout_ms, 300000);
    assert_int_equal(p->cfg.flush_timeout_ms, 10000);

    am_errors_t errs = {0};
    rd_kafka_conf_t *conf = am__kafka_conf_build(&p->cfg, NULL, "exporters.kafka", &errs);
    assert_non_null(conf);
    conf_expect(conf, "bootstrap.servers", "localhost:9092");
    conf_expect(conf, "enable.idempotence", "true");
    conf_expect(conf, "acks", "-1");
    conf_expect(conf, "compression.codec", "zstd");
    conf_expect(conf, "message.max.bytes", "1000000");
    conf_expect(conf, "message.timeout.ms", "300000");
    conf_expect(conf, "client.id", "agentmeter");
    rd_kafka_conf_destroy(conf);
    parsed_free(p);
}

static void test_options_reach_librdkafka(void **state)
{
    (void)state;
    parsed_t *p = parse("kafka:\n"
                        "  brokers: [a:9092, b:9093]\n"
                        "  compression: lz4\n"
                        "  required_acks: 1\n"
                        "  max_message_bytes: 2000000\n"
                        "  timeout: 30s\n"
                        "  headers: { x-source: agentmeter, x-env: test }\n"
                        "  producer:\n"
                        "    linger.ms: 20\n"
                        "    security.protocol: plaintext\n");
    print_errors(p);
    assert_int_equal(p->errs.count, 0);
    am_errors_t errs = {0};
    rd_kafka_conf_t *conf = am__kafka_conf_build(&p->cfg, NULL, "exporters.kafka", &errs);
    assert_non_null(conf);
    conf_expect(conf, "bootstrap.servers", "a:9092,b:9093");
    conf_expect(conf, "compression.codec", "lz4");
    conf_expect(conf, "acks", "1");
    conf_expect(conf, "enable.idempotence", "false"); /* Kafka: idempotence needs acks=all */
    conf_expect(conf, "message.max.bytes", "2000000");
    conf_expect(conf, "message.timeout.ms", "30000");
    conf_expect(conf, "linger.ms", "20");
    rd_kafka_conf_destroy(conf);

    size_t wire = 0;
    rd_kafka_headers_t *hdrs = am__kafka_headers_build(&p->cfg, &wire);
    assert_non_null(hdrs);
    assert_int_equal(rd_kafka_header_cnt(hdrs), 2);
    const void *value;
    size_t size;
    assert_int_equal(rd_kafka_header_get_last(hdrs, "x-source", &value, &size),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(size, strlen("agentmeter"));
    assert_memory_equal(value, "agentmeter", size);
    assert_true(wire >= strlen("x-sourceagentmeterx-envtest"));
    rd_kafka_headers_destroy(hdrs);
    parsed_free(p);
}

static void test_producer_errors_have_lines(void **state)
{
    (void)state;
    parsed_t *p = parse("kafka:\n"                        /* 1 */
                        "  brokers: [a:9092]\n"           /* 2 */
                        "  producer:\n"                   /* 3 */
                        "    no.such.property: 1\n"       /* 4 */
                        "    acks: all\n"                 /* 5 */
                        "    linger.ms: soon\n"           /* 6 */
                        "    enable.idempotence: false\n" /* 7 */
                        "    sasl.mechanisms: [a, b]\n"); /* 8 */
    assert_true(has_error(p, "cfg.yaml:4:", "exporters.kafka.producer.no.such.property",
                          "No such configuration property", NULL));
    assert_true(has_error(p, "cfg.yaml:5:", "producer.acks", "use required_acks", NULL));
    assert_true(has_error(p, "cfg.yaml:6:", "producer.linger.ms", NULL));
    assert_true(has_error(p, "cfg.yaml:7:", "producer.enable.idempotence", "always on", NULL));
    assert_true(has_error(p, "cfg.yaml:8:", "producer.sasl.mechanisms", "scalar", NULL));
    assert_int_equal(p->errs.count, 5);
    parsed_free(p);
}

static void test_option_errors(void **state)
{
    (void)state;
    parsed_t *p = parse("kafka:\n"
                        "  brokers: []\n"
                        "  partition_by: \"\"\n"
                        "  headers: [a, b]\n"
                        "  retry_on_failure: { initial_interval: 1m, max_interval: 10s }\n");
    assert_true(has_error(p, "cfg.yaml:2:", "brokers", "at least one", NULL));
    assert_true(has_error(p, "cfg.yaml:3:", "partition_by", NULL));
    assert_true(has_error(p, "cfg.yaml:4:", "headers", "map", NULL));
    assert_true(has_error(p, "cfg.yaml:5:", "initial_interval", "max_interval", NULL));
    parsed_free(p);

    p = parse("kafka:\n"
              "  compression: brotli\n"
              "  max_message_bytes: 10\n"
              "  encodign: otlp_json\n");
    assert_true(has_error(p, "cfg.yaml:2:", "compression", NULL));
    assert_true(has_error(p, "cfg.yaml:3:", "max_message_bytes", NULL));
    assert_true(has_error(p, "cfg.yaml:4:", "encodign", "encoding", NULL));
    parsed_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_options_reach_librdkafka),
        cmocka_unit_test(test_producer_errors_have_lines),
        cmocka_unit_test(test_option_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
