/*
 * The otlp receiver's option table through the real config loader: what a
 * user writes in YAML becomes the settings they expect.  `otlp:` alone
 * serves both protocols; `grpc:` with no value enables gRPC on its defaults;
 * nested sections (tls, auth, keepalive) and the flat keepalive spelling;
 * durations and sizes; and the errors a user gets for mistakes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_config.h"
#include "am_options.h"
#include "receivers/otlp/otlp_internal.h"

extern const am_component_ops_t am_receiver_otlp_ops;

typedef struct parsed {
    am_config_t *config;
    am__otlp_config_t cfg;
    am_errors_t errs;
} parsed_t;

/* Parse `yaml` (the receiver's own map) with the table, then validate. */
static void parse(parsed_t *p, const char *yaml)
{
    memset(p, 0, sizeof(*p));
    p->config = am_config_load_buffer("test.yaml", yaml, strlen(yaml), &p->errs);
    assert_non_null(p->config);
    const am_node_t *node = am_node_get(am_config_root(p->config), "otlp");
    if (node != NULL && node->kind != AM_NODE_MAP) {
        node = NULL; /* `otlp:` with no value */
    }
    am_options_parse(am_receiver_otlp_ops.options, &p->cfg, node, "receivers.otlp", &p->errs);
    if (p->errs.count == 0) {
        am_receiver_otlp_ops.validate(&p->cfg, node, "receivers.otlp", &p->errs);
    }
}

static void parsed_free(parsed_t *p)
{
    am_options_free(am_receiver_otlp_ops.options, &p->cfg);
    am_errors_clear(&p->errs);
    am_config_free(p->config);
}

static void assert_error(parsed_t *p, const char *fragment)
{
    for (size_t i = 0; i < p->errs.count; i++) {
        if (strstr(p->errs.msgs[i], fragment) != NULL) {
            return;
        }
    }
    am_errors_print(&p->errs, stderr);
    fail_msg("no error mentions \"%s\"", fragment);
}

static void test_bare_receiver_serves_both(void **state)
{
    (void)state;
    parsed_t p;
    parse(&p, "otlp: {}\n");
    assert_int_equal(p.errs.count, 0);
    assert_false(p.cfg.protocols.set);
    assert_int_equal(p.cfg.max_attribute_depth, 32);
    assert_int_equal(p.cfg.max_spans_per_request, 100000);
    assert_int_equal(p.cfg.max_attributes_per_span, 1024);
    am_create_params_t params = {.id = "otlp", .config = &p.cfg, .shard = -1};
    void *instance = NULL;
    assert_int_equal(am_receiver_otlp_ops.create(&params, &instance), 0);
    am__otlp_receiver_t *rcv = instance;
    assert_string_equal(rcv->grpc->endpoint, "127.0.0.1:4317");
    assert_string_equal(rcv->http->endpoint, "127.0.0.1:4318");
    assert_int_equal(rcv->grpc->keepalive.time_ms, 2 * 3600 * 1000);
    assert_int_equal(rcv->grpc->keepalive.timeout_ms, 20000);
    assert_int_equal(rcv->grpc->header_timeout_ms, 10000);
    assert_int_equal(rcv->http->max_request_body_size, 16 << 20);
    am_receiver_otlp_ops.destroy(rcv);
    parsed_free(&p);
}

static void test_grpc_only_with_defaults(void **state)
{
    (void)state;
    parsed_t p;
    parse(&p, "otlp:\n  protocols:\n    grpc:\n");
    assert_int_equal(p.errs.count, 0);
    assert_true(p.cfg.protocols.set);
    assert_true(p.cfg.protocols.grpc.set);
    assert_false(p.cfg.protocols.http.set);
    assert_string_equal(p.cfg.protocols.grpc.endpoint, "127.0.0.1:4317");
    assert_int_equal(p.cfg.protocols.grpc.max_recv_msg_size, 16 << 20);
    assert_int_equal(p.cfg.protocols.grpc.max_concurrent_streams, 100);
    assert_int_equal(p.cfg.protocols.grpc.max_connections, 1024);
    assert_int_equal(p.cfg.protocols.grpc.max_connection_idle_ms, 0);
    assert_false(p.cfg.protocols.grpc.tls.set);
    parsed_free(&p);
}

static void test_everything_spelled_out(void **state)
{
    (void)state;
    parsed_t p;
    parse(&p, "otlp:\n"
              "  max_attribute_depth: 8\n"
              "  protocols:\n"
              "    grpc:\n"
              "      endpoint: 0.0.0.0:5317\n"
              "      max_recv_msg_size_mib: 4\n"
              "      keepalive: { time: 30s, timeout: 5s }\n"
              "      keepalive_time: 1m\n"
              "      max_connection_age: 10m\n"
              "      tls: { cert_file: /c.pem, key_file: /k.pem, client_ca_file: /ca.pem, "
              "min_version: \"1.3\" }\n"
              "      auth: { bearer_token: abc }\n"
              "    http:\n"
              "      endpoint: 127.0.0.1:5318\n"
              "      max_request_body_size_mib: 2\n"
              "      tls: { cert_file: /hc.pem, key_file: /hk.pem, client_ca_file: /hca.pem }\n");
    assert_int_equal(p.errs.count, 0);
    const am__otlp_grpc_cfg_t *grpc = &p.cfg.protocols.grpc;
    assert_int_equal(p.cfg.max_attribute_depth, 8);
    assert_string_equal(grpc->endpoint, "0.0.0.0:5317");
    assert_int_equal(grpc->max_recv_msg_size, 4 << 20);
    assert_int_equal(grpc->keepalive.time_ms, 30000);
    assert_int_equal(grpc->keepalive.timeout_ms, 5000);
    assert_int_equal(grpc->keepalive_time_ms, 60000); /* the flat spelling wins at start */
    assert_int_equal(grpc->max_connection_age_ms, 600000);
    assert_true(grpc->tls.set);
    assert_string_equal(grpc->tls.client_ca_file, "/ca.pem");
    assert_string_equal(grpc->tls.min_version, "1.3");
    assert_string_equal(grpc->auth.bearer_token, "abc");
    const am__otlp_http_cfg_t *http = &p.cfg.protocols.http;
    assert_int_equal(http->max_request_body_size, 2 << 20);
    assert_true(http->tls.set);
    assert_string_equal(http->tls.cert_file, "/hc.pem");
    assert_string_equal(http->tls.client_ca_file, "/hca.pem");
    assert_string_equal(http->tls.min_version, "1.2");
    parsed_free(&p);
}

static void test_mistakes(void **state)
{
    (void)state;
    parsed_t p;
    parse(&p, "otlp:\n  protocols: {}\n");
    assert_error(&p, "enable at least one of grpc, http");
    parsed_free(&p);

    parse(&p, "otlp:\n  protocols:\n    grpc:\n      tls: { cert_file: /c.pem }\n");
    assert_error(&p, "cert_file and key_file are both required");
    parsed_free(&p);

    parse(&p, "otlp:\n  protocols:\n    grpc:\n      endpont: 1.2.3.4:1\n");
    assert_error(&p, "endpont");
    parsed_free(&p);

    parse(&p, "otlp:\n  protocols:\n    grpc:\n      tls: { cert_file: a, key_file: b, "
              "min_version: \"1.1\" }\n");
    assert_true(p.errs.count > 0);
    parsed_free(&p);

    parse(&p, "otlp:\n  protocols:\n    http:\n      tls: { key_file: b }\n");
    assert_error(&p, "protocols.http.tls: cert_file and key_file are both required");
    parsed_free(&p);

    parse(&p, "otlp:\n  protocols:\n    grpc:\n      auth: { bearer_token: \"\" }\n");
    assert_error(&p, "bearer_token is empty");
    parsed_free(&p);

    parse(&p, "otlp:\n  protocols:\n    grpc: { endpoint: \"127.0.0.1:9\" }\n"
              "    http: { endpoint: \"127.0.0.1:9\" }\n");
    assert_error(&p, "cannot share endpoint");
    parsed_free(&p);

    parse(&p, "otlp:\n  max_attribute_depth: 100000\n");
    assert_error(&p, "max_attribute_depth");
    parsed_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bare_receiver_serves_both),
        cmocka_unit_test(test_grpc_only_with_defaults),
        cmocka_unit_test(test_everything_spelled_out),
        cmocka_unit_test(test_mistakes),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    am_selfmetrics_reset();
    return rc;
}
