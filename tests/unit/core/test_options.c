/*
 * test_options.c - option tables as a component author and an operator see
 * them: defaults land in the struct, user values replace them through the
 * same converters, every mistake is one "file:line: dotted.key: ..." error
 * (all of them in one run), sections nest, the printed reference lists
 * every option, and freeing is safe twice and after failed allocations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_options.h"

typedef struct loops_cfg {
    bool set;
    int64_t max_repeats;
    int64_t window_ms;
    char *scope;
} loops_cfg_t;

typedef struct tls_cfg {
    bool set;
    char *cert_file;
    bool insecure;
} tls_cfg_t;

typedef struct comp_cfg {
    bool enabled;
    int64_t count;
    double factor;
    am_money_t limit;
    char *name;
    char *mode;
    int64_t wait_ms;
    int64_t buffer_bytes;
    char *endpoint;
    am_strlist_t attributes;
    const am_node_t *raw;
    loops_cfg_t loops;
    tls_cfg_t tls;
} comp_cfg_t;

static const am_option_t loops_options[] = {
    {.name = "max_repeats",
     .type = AM_OPT_INT,
     .def = "5",
     .offset = offsetof(loops_cfg_t, max_repeats),
     .min = 1,
     .max = 1000,
     .doc = "Repeats of one tool call before it is a loop."},
    {.name = "window",
     .type = AM_OPT_DURATION,
     .def = "1m",
     .offset = offsetof(loops_cfg_t, window_ms),
     .min = 1000,
     .max = 3600000,
     .doc = "How far back to look."},
    {.name = "scope",
     .type = AM_OPT_ENUM,
     .def = "trace",
     .offset = offsetof(loops_cfg_t, scope),
     .choices = "trace|session",
     .doc = "Where repeats are counted."},
    AM_OPT_END,
};

static const am_option_t tls_options[] = {
    {.name = "cert_file",
     .type = AM_OPT_STRING,
     .offset = offsetof(tls_cfg_t, cert_file),
     .required = true,
     .doc = "PEM certificate."},
    AM_OPT("insecure", AM_OPT_BOOL, "false", tls_cfg_t, insecure, "Skip verification."),
    AM_OPT_END,
};

static const am_option_t comp_options[] = {
    AM_OPT("enabled", AM_OPT_BOOL, "true", comp_cfg_t, enabled, "Turn the component on."),
    {.name = "count",
     .type = AM_OPT_INT,
     .def = "10",
     .offset = offsetof(comp_cfg_t, count),
     .min = 0,
     .max = 100,
     .doc = "How many."},
    AM_OPT("factor", AM_OPT_DOUBLE, "1.5", comp_cfg_t, factor, "Multiplier."),
    AM_OPT("limit", AM_OPT_MONEY, "5.00", comp_cfg_t, limit, "Spend cap."),
    AM_OPT("name", AM_OPT_STRING, "agentmeter", comp_cfg_t, name, "A name."),
    {.name = "mode",
     .type = AM_OPT_ENUM,
     .def = "safe",
     .offset = offsetof(comp_cfg_t, mode),
     .choices = "fast|safe|slow",
     .doc = "Trade-off | speed."},
    AM_OPT("wait", AM_OPT_DURATION, "2s", comp_cfg_t, wait_ms, "Quiet time."),
    AM_OPT("buffer_mib", AM_OPT_SIZE_MIB, "16", comp_cfg_t, buffer_bytes, "Buffer size."),
    AM_OPT("endpoint", AM_OPT_ENDPOINT, "\"127.0.0.1:4317\"", comp_cfg_t, endpoint, "Address."),
    AM_OPT("attributes", AM_OPT_STRLIST, "[session.id, user.id]", comp_cfg_t, attributes,
           "Keys to copy."),
    AM_OPT("raw", AM_OPT_NODE, NULL, comp_cfg_t, raw, "Parsed by the component."),
    {.name = "loops",
     .type = AM_OPT_SECTION,
     .offset = offsetof(comp_cfg_t, loops),
     .sub = loops_options,
     .doc = "Loop detection."},
    {.name = "tls",
     .type = AM_OPT_SECTION,
     .offset = offsetof(comp_cfg_t, tls),
     .sub = tls_options,
     .doc = "TLS settings."},
    AM_OPT_END,
};

/* ---- helpers -------------------------------------------------------------- */

typedef struct fixture {
    am_config_t *config;
    am_errors_t errs;
    comp_cfg_t cfg;
    int rc;
} fixture_t;

static fixture_t fx;

static int fixture_setup(void **state)
{
    memset(&fx, 0, sizeof(fx));
    return 0;
}

static int fixture_teardown(void **state)
{
    am_options_free(comp_options, &fx.cfg);
    am_errors_clear(&fx.errs);
    am_config_free(fx.config);
    return 0;
}

/* Loads `text` as cfg.yaml and parses its `comp` map (or the whole root
 * when there is none) under `prefix`. */
static int parse_text(const char *text, const char *prefix)
{
    fx.config = am_config_load_buffer("cfg.yaml", text, strlen(text), &fx.errs);
    assert_non_null(fx.config);
    assert_int_equal(fx.errs.count, 0);
    const am_node_t *root = am_config_root(fx.config);
    const am_node_t *map = am_node_get(root, "comp");
    fx.rc = am_options_parse(comp_options, &fx.cfg, map != NULL ? map : root, prefix, &fx.errs);
    return fx.rc;
}

static void assert_error(const char *want)
{
    for (size_t i = 0; i < fx.errs.count; i++) {
        if (strstr(fx.errs.msgs[i], want) != NULL) {
            return;
        }
    }
    print_error("no error contains \"%s\"; got %zu:\n", want, fx.errs.count);
    for (size_t i = 0; i < fx.errs.count; i++) {
        print_error("  %s\n", fx.errs.msgs[i]);
    }
    fail();
}

static void assert_only_error(const char *want)
{
    assert_int_not_equal(fx.rc, 0);
    if (fx.errs.count != 1) {
        print_error("expected one error, got %zu:\n", fx.errs.count);
        for (size_t i = 0; i < fx.errs.count; i++) {
            print_error("  %s\n", fx.errs.msgs[i]);
        }
    }
    assert_int_equal(fx.errs.count, 1);
    assert_error(want);
}

static void assert_defaults(const comp_cfg_t *cfg)
{
    assert_true(cfg->enabled);
    assert_int_equal(cfg->count, 10);
    assert_true(cfg->factor == 1.5);
    assert_int_equal(cfg->limit, 5 * AM_MONEY_SCALE);
    assert_string_equal(cfg->name, "agentmeter");
    assert_string_equal(cfg->mode, "safe");
    assert_int_equal(cfg->wait_ms, 2000);
    assert_int_equal(cfg->buffer_bytes, 16 * 1024 * 1024);
    assert_string_equal(cfg->endpoint, "127.0.0.1:4317");
    assert_int_equal(cfg->attributes.count, 2);
    assert_string_equal(cfg->attributes.items[0], "session.id");
    assert_string_equal(cfg->attributes.items[1], "user.id");
    assert_null(cfg->raw);
}

/* ---- defaults and values -------------------------------------------------- */

static void test_defaults_only(void **state)
{
    assert_int_equal(am_options_parse(comp_options, &fx.cfg, NULL, "processors.x", &fx.errs), 0);
    assert_int_equal(fx.errs.count, 0);
    assert_defaults(&fx.cfg);
    /* Sections not given: set is false, their defaults are still applied,
     * and their required options are not demanded. */
    assert_false(fx.cfg.loops.set);
    assert_int_equal(fx.cfg.loops.max_repeats, 5);
    assert_int_equal(fx.cfg.loops.window_ms, 60000);
    assert_string_equal(fx.cfg.loops.scope, "trace");
    assert_false(fx.cfg.tls.set);
    assert_null(fx.cfg.tls.cert_file);
}

static void test_empty_and_null_maps_give_defaults(void **state)
{
    assert_int_equal(parse_text("comp: {}\n", "processors.x"), 0);
    assert_defaults(&fx.cfg);
    fixture_teardown(state);
    fixture_setup(state);
    assert_int_equal(parse_text("comp:\n", "processors.x"), 0);
    assert_defaults(&fx.cfg);
}

static void test_values_replace_defaults(void **state)
{
    setenv("AM_OPT_TEST_WAIT", "750ms", 1);
    assert_int_equal(parse_text("comp:\n"
                                "  enabled: false\n"
                                "  count: 42\n"
                                "  factor: 3\n"
                                "  limit: 1000.125\n"
                                "  name: \"cost chain\"\n"
                                "  mode: fast\n"
                                "  wait: ${env:AM_OPT_TEST_WAIT}\n"
                                "  buffer_mib: \"64\"\n"
                                "  endpoint: \"[::1]:4318\"\n"
                                "  attributes: [tenant.id, gen_ai.agent.name, project.id]\n"
                                "  raw: [{a: 1}, {b: 2}]\n",
                                "processors.x"),
                     0);
    assert_int_equal(fx.errs.count, 0);
    assert_false(fx.cfg.enabled);
    assert_int_equal(fx.cfg.count, 42);
    assert_true(fx.cfg.factor == 3.0);
    assert_int_equal(fx.cfg.limit, 1000 * AM_MONEY_SCALE + 125000000);
    assert_string_equal(fx.cfg.name, "cost chain");
    assert_string_equal(fx.cfg.mode, "fast");
    assert_int_equal(fx.cfg.wait_ms, 750);
    assert_int_equal(fx.cfg.buffer_bytes, INT64_C(64) << 20);
    assert_string_equal(fx.cfg.endpoint, "[::1]:4318");
    assert_int_equal(fx.cfg.attributes.count, 3);
    assert_string_equal(fx.cfg.attributes.items[2], "project.id");
    /* NODE keeps the subtree for the component, with its position. */
    assert_non_null(fx.cfg.raw);
    assert_int_equal(fx.cfg.raw->kind, AM_NODE_SEQ);
    assert_int_equal(fx.cfg.raw->n_children, 2);
    assert_int_equal(fx.cfg.raw->line, 12);
    unsetenv("AM_OPT_TEST_WAIT");
}

static void test_explicit_null_keeps_default(void **state)
{
    assert_int_equal(
        parse_text("comp:\n  wait:\n  name: ~\n  attributes: null\n  raw: ~\n", "processors.x"), 0);
    assert_int_equal(fx.cfg.wait_ms, 2000);
    assert_string_equal(fx.cfg.name, "agentmeter");
    assert_int_equal(fx.cfg.attributes.count, 2);
    /* NODE stores whatever was given, null included. */
    assert_non_null(fx.cfg.raw);
    assert_int_equal(fx.cfg.raw->kind, AM_NODE_NULL);
}

static void test_strlist_forms(void **state)
{
    assert_int_equal(parse_text("comp: { attributes: session.id }\n", "p"), 0);
    assert_int_equal(fx.cfg.attributes.count, 1);
    assert_string_equal(fx.cfg.attributes.items[0], "session.id");
    fixture_teardown(state);
    fixture_setup(state);
    assert_int_equal(parse_text("comp: { attributes: [] }\n", "p"), 0);
    assert_int_equal(fx.cfg.attributes.count, 0);
    fixture_teardown(state);
    fixture_setup(state);
    parse_text("comp:\n  attributes:\n    - session.id\n    - {a: 1}\n    - [x]\n", "p");
    assert_int_equal(fx.errs.count, 2);
    assert_error("cfg.yaml:4: p.attributes[1]: expected a string, got a map");
    assert_error("cfg.yaml:5: p.attributes[2]: expected a string, got a sequence");
    /* A rejected list leaves the default in place. */
    assert_int_equal(fx.cfg.attributes.count, 2);
    fixture_teardown(state);
    fixture_setup(state);
    parse_text("comp: { attributes: {a: 1} }\n", "p");
    assert_only_error("cfg.yaml:1: p.attributes: expected a list of strings, got a map");
}

/* ---- errors ----------------------------------------------------------------- */

static void test_unknown_key_with_suggestion(void **state)
{
    parse_text("comp:\n"
               "  wait: 2s\n"
               "  wiat: 5s\n",
               "procesors.tracetree");
    assert_only_error(
        "cfg.yaml:3: unknown key \"procesors.tracetree.wiat\"; did you mean \"wait\"?");
}

static void test_unknown_key_without_suggestion_lists_keys(void **state)
{
    parse_text("comp: { compression: zstd }\n", "exporters.otlp");
    assert_only_error("cfg.yaml:1: unknown key \"exporters.otlp.compression\" (known keys: "
                      "enabled, count, factor, limit, name, mode, wait, buffer_mib, endpoint, "
                      "attributes, raw, loops, tls)");
}

static void test_unknown_key_points_at_key_line(void **state)
{
    parse_text("comp:\n  wiat:\n    - 1\n", "p");
    assert_only_error("cfg.yaml:2: unknown key \"p.wiat\"; did you mean \"wait\"?");
}

static void test_bad_duration(void **state)
{
    parse_text("comp:\n  name: x\n  wait: 2x\n", "processors.tracetree");
    assert_only_error("cfg.yaml:3: processors.tracetree.wait: invalid duration \"2x\" (expected "
                      "e.g. 500ms, 2s, 30m, 24h)");
    /* A rejected value leaves the default. */
    assert_int_equal(fx.cfg.wait_ms, 2000);
}

static void test_wrong_types(void **state)
{
    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {"comp: { enabled: yes please }",
         "cfg.yaml:1: p.enabled: invalid boolean \"yes please\" (expected true or false)"},
        {"comp: { count: 4.5 }", "cfg.yaml:1: p.count: invalid integer \"4.5\""},
        {"comp: { count: 101 }", "cfg.yaml:1: p.count: 101 is out of range (expected 0 to 100)"},
        {"comp: { count: -1 }", "p.count: -1 is out of range (expected 0 to 100)"},
        {"comp: { count: 99999999999999999999 }", "p.count: out of range integer"},
        {"comp: { count: [1] }", "cfg.yaml:1: p.count: expected an integer, got a sequence"},
        {"comp: { factor: fast }", "cfg.yaml:1: p.factor: invalid number \"fast\""},
        {"comp: { factor: .inf }", "p.factor: invalid number \".inf\""},
        {"comp: { limit: 5.0000000001 }", "cfg.yaml:1: p.limit: invalid amount \"5.0000000001\""},
        {"comp: { limit: 1e3 }", "p.limit: invalid amount \"1e3\" (expected a decimal such as"},
        {"comp: { name: {a: b} }", "cfg.yaml:1: p.name: expected a string, got a map"},
        {"comp: { mode: fsat }",
         "cfg.yaml:1: p.mode: invalid value \"fsat\" (expected one of: fast, safe, slow); did "
         "you mean \"fast\"?"},
        {"comp: { mode: turbo }",
         "cfg.yaml:1: p.mode: invalid value \"turbo\" (expected one of: fast, safe, slow)"},
        {"comp: { wait: -1s }", "p.wait: invalid duration \"-1s\""},
        {"comp: { wait: 10 }", "p.wait: invalid duration \"10\""},
        {"comp: { wait: 9999999999999999h }", "p.wait: out of range duration"},
        {"comp: { buffer_mib: 1.5 }",
         "cfg.yaml:1: p.buffer_mib: invalid size \"1.5\" (expected a whole number of MiB)"},
        {"comp: { buffer_mib: -4 }", "p.buffer_mib: invalid size \"-4\""},
        {"comp: { buffer_mib: 99999999999999 }", "p.buffer_mib: invalid size"},
        {"comp: { loops: [a] }", "cfg.yaml:1: p.loops: expected a map, got a sequence"},
        {"comp: { loops: { window: 1h1s } }",
         "p.loops.window: 1h1s is out of range (expected 1s to 1h)"},
        {"comp: [1, 2]", "cfg.yaml:1: p: expected a map of options, got a sequence"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fixture_setup(state);
        parse_text(cases[i].yaml, "p");
        assert_only_error(cases[i].want);
        fixture_teardown(state);
    }
    fixture_setup(state);
}

static void test_endpoints(void **state)
{
    static const char *const good[] = {"127.0.0.1:4317",
                                       "localhost:0",
                                       "[::1]:4317",
                                       ":4317",
                                       "0.0.0.0:65535",
                                       "[fe80::1%eth0]:9",
                                       "otel-collector.monitoring.svc:4317"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml), "comp: { endpoint: \"%s\" }\n", good[i]);
        fixture_setup(state);
        if (parse_text(yaml, "receivers.otlp") != 0) {
            print_error("\"%s\" should be a valid endpoint: %s\n", good[i], fx.errs.msgs[0]);
            fail();
        }
        assert_string_equal(fx.cfg.endpoint, good[i]);
        fixture_teardown(state);
    }
    static const struct {
        const char *endpoint;
        const char *want;
    } bad[] = {
        {"localhost", "invalid endpoint \"localhost\": missing port (expected host:port, e.g. "
                      "127.0.0.1:4317 or [::1]:4317)"},
        {"localhost:", "missing port"},
        {"host:65536", "the port must be a number from 0 to 65535"},
        {"host:123456", "the port must be a number from 0 to 65535"},
        {"host:http", "the port must be a number from 0 to 65535"},
        {"::1:4317", "an IPv6 address needs brackets, e.g. [::1]:4317"},
        {"[::1]4317", "missing port"},
        {"[::1:4317", "missing \"]\""},
        {"[]:4317", "empty IPv6 address"},
        {"http://localhost:4317", "without a scheme"},
        {"bad host:1", "invalid host name"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[256];
        char want[512];
        snprintf(yaml, sizeof(yaml), "comp:\n  endpoint: \"%s\"\n", bad[i].endpoint);
        snprintf(want, sizeof(want), "cfg.yaml:2: receivers.otlp.endpoint: invalid endpoint \"%s\"",
                 bad[i].endpoint);
        fixture_setup(state);
        parse_text(yaml, "receivers.otlp");
        assert_only_error(want);
        assert_error(bad[i].want);
        assert_string_equal(fx.cfg.endpoint, "127.0.0.1:4317");
        fixture_teardown(state);
    }
    fixture_setup(state);
}

static void test_three_mistakes_three_errors(void **state)
{
    parse_text("comp:\n"
               "  wait: 2x\n"
               "  endpiont: \"127.0.0.1:4317\"\n"
               "  count: many\n"
               "  mode: fast\n",
               "processors.tracetree");
    assert_int_equal(fx.rc, AM_EINVAL);
    assert_int_equal(fx.errs.count, 3);
    assert_string_equal(fx.errs.msgs[0], "cfg.yaml:2: processors.tracetree.wait: invalid duration "
                                         "\"2x\" (expected e.g. 500ms, 2s, 30m, 24h)");
    assert_string_equal(fx.errs.msgs[1], "cfg.yaml:3: unknown key "
                                         "\"processors.tracetree.endpiont\"; did you mean "
                                         "\"endpoint\"?");
    assert_string_equal(fx.errs.msgs[2],
                        "cfg.yaml:4: processors.tracetree.count: invalid integer \"many\"");
    /* Good values around the mistakes still land. */
    assert_string_equal(fx.cfg.mode, "fast");
}

static void test_long_values_are_shortened_in_errors(void **state)
{
    char yaml[1024];
    char value[400];
    memset(value, 'x', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    snprintf(yaml, sizeof(yaml), "comp: { wait: %s }\n", value);
    parse_text(yaml, "p");
    assert_int_equal(fx.errs.count, 1);
    assert_true(strlen(fx.errs.msgs[0]) < 250);
    assert_error("xxx...\" (expected e.g.");
}

/* ---- sections and required options --------------------------------------- */

static void test_sections(void **state)
{
    assert_int_equal(parse_text("comp:\n"
                                "  loops:\n"
                                "    max_repeats: 7\n"
                                "  tls: { cert_file: /etc/tls/cert.pem, insecure: true }\n",
                                "processors.anomaly"),
                     0);
    assert_true(fx.cfg.loops.set);
    assert_int_equal(fx.cfg.loops.max_repeats, 7);
    assert_int_equal(fx.cfg.loops.window_ms, 60000);
    assert_string_equal(fx.cfg.loops.scope, "trace");
    assert_true(fx.cfg.tls.set);
    assert_string_equal(fx.cfg.tls.cert_file, "/etc/tls/cert.pem");
    assert_true(fx.cfg.tls.insecure);
    assert_defaults(&fx.cfg);
}

static void test_null_section_counts_as_given(void **state)
{
    assert_int_equal(parse_text("comp:\n  loops:\n", "p"), 0);
    assert_true(fx.cfg.loops.set);
    assert_int_equal(fx.cfg.loops.max_repeats, 5);
}

static void test_section_errors_use_dotted_names(void **state)
{
    parse_text("comp:\n"
               "  loops:\n"
               "    max_repaets: 3\n"
               "    scope: sesion\n"
               "    max_repeats: 0\n",
               "processors.anomaly");
    assert_int_equal(fx.errs.count, 3);
    assert_error("cfg.yaml:3: unknown key \"processors.anomaly.loops.max_repaets\"; did you mean "
                 "\"max_repeats\"?");
    assert_error("cfg.yaml:4: processors.anomaly.loops.scope: invalid value \"sesion\" (expected "
                 "one of: trace, session); did you mean \"session\"?");
    assert_error("cfg.yaml:5: processors.anomaly.loops.max_repeats: 0 is out of range (expected "
                 "1 to 1000)");
}

static void test_required_in_given_section(void **state)
{
    parse_text("comp:\n"
               "  name: x\n"
               "  tls:\n"
               "    insecure: true\n",
               "exporters.otlp");
    assert_only_error("cfg.yaml:3: missing required option \"exporters.otlp.tls.cert_file\"");
    fixture_teardown(state);
    fixture_setup(state);
    parse_text("comp:\n  tls: { cert_file: }\n", "exporters.otlp");
    assert_only_error("cfg.yaml:2: exporters.otlp.tls.cert_file: a value is required");
}

typedef struct req_cfg {
    char *topic;
    int64_t partitions;
} req_cfg_t;

static const am_option_t req_options[] = {
    {.name = "topic",
     .type = AM_OPT_STRING,
     .offset = offsetof(req_cfg_t, topic),
     .required = true,
     .doc = "Kafka topic."},
    AM_OPT("partitions", AM_OPT_INT, "1", req_cfg_t, partitions, "Partitions."),
    AM_OPT_END,
};

static void test_required_top_level(void **state)
{
    const char *text = "exporters:\n  kafka:\n    partitions: 3\n";
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_buffer("req.yaml", text, strlen(text), &errs);
    assert_non_null(config);
    const am_node_t *kafka = am_node_get(am_node_get(am_config_root(config), "exporters"), "kafka");
    req_cfg_t cfg = {0};
    assert_int_equal(am_options_parse(req_options, &cfg, kafka, "exporters.kafka", &errs),
                     AM_EINVAL);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.msgs[0],
                        "req.yaml:2: missing required option \"exporters.kafka.topic\"");
    assert_int_equal(cfg.partitions, 3);
    am_options_free(req_options, &cfg);
    am_errors_clear(&errs);

    /* Without any map there is no position, but the key is still named. */
    memset(&cfg, 0, sizeof(cfg));
    assert_int_equal(am_options_parse(req_options, &cfg, NULL, "exporters.kafka", &errs),
                     AM_EINVAL);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.msgs[0], "missing required option \"exporters.kafka.topic\"");
    am_options_free(req_options, &cfg);
    am_errors_clear(&errs);
    am_config_free(config);
}

/* ---- print, free, failmalloc ---------------------------------------------- */

static char *print_to_string(bool markdown)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    am_options_print(comp_options, out, 4, markdown);
    fclose(out);
    return text;
}

static void assert_contains(const char *text, const char *want)
{
    if (strstr(text, want) == NULL) {
        print_error("output lacks \"%s\":\n%s\n", want, text);
        fail();
    }
}

static void test_print_plain(void **state)
{
    char *text = print_to_string(false);
    assert_contains(text, "    wait: duration = 2s\n        Quiet time.\n");
    assert_contains(text, "    count: int = 10, 0 to 100\n");
    assert_contains(text, "    mode: enum (fast|safe|slow) = safe\n");
    assert_contains(text, "    buffer_mib: MiB = 16\n");
    assert_contains(text, "    attributes: list of strings = [session.id, user.id]\n");
    assert_contains(text, "    loops: section\n        Loop detection.\n");
    assert_contains(text, "    loops.window: duration = 1m, 1s to 1h\n");
    assert_contains(text, "    tls.cert_file: string, required\n");
    free(text);
}

static void test_print_markdown(void **state)
{
    char *text = print_to_string(true);
    assert_contains(text, "| Option | Type | Default | Description |\n|---|---|---|---|\n");
    assert_contains(text, "| `wait` | duration | `2s` | Quiet time. |\n");
    assert_contains(text, "| `mode` | enum: `fast` \\| `safe` \\| `slow` | `safe` | Trade-off \\| "
                          "speed. |\n");
    assert_contains(text, "| `count` | int | `10` | How many. Range: 0 to 100. |\n");
    assert_contains(text, "| `loops.max_repeats` | int | `5` |");
    assert_contains(text, "| `tls.cert_file` | string |  | **Required.** PEM certificate. |\n");
    free(text);
    assert_string_equal(am_opt_type_name(AM_OPT_DURATION), "duration");
    assert_string_equal(am_opt_type_name(AM_OPT_SECTION), "section");
}

static void test_free_twice_is_safe(void **state)
{
    assert_int_equal(
        parse_text("comp: { tls: { cert_file: a.pem }, loops: { scope: session } }\n", "p"), 0);
    am_options_free(comp_options, &fx.cfg);
    assert_null(fx.cfg.name);
    assert_null(fx.cfg.mode);
    assert_null(fx.cfg.endpoint);
    assert_null(fx.cfg.attributes.items);
    assert_int_equal(fx.cfg.attributes.count, 0);
    assert_null(fx.cfg.tls.cert_file);
    assert_null(fx.cfg.loops.scope);
    am_options_free(comp_options, &fx.cfg); /* the teardown frees a third time */
}

static void test_failmalloc_sweep(void **state)
{
    const char *text = "comp:\n"
                       "  name: sweeper\n"
                       "  mode: slow\n"
                       "  endpoint: \"[::1]:4317\"\n"
                       "  attributes: [a, b, c, d]\n"
                       "  loops: { max_repeats: 9, scope: session }\n"
                       "  tls: { cert_file: c.pem }\n";
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_buffer("sweep.yaml", text, strlen(text), &errs);
    assert_non_null(config);
    const am_node_t *map = am_node_get(am_config_root(config), "comp");
    long nth;
    long failures = 0;
    for (nth = 1; nth < 100000; nth++) {
        comp_cfg_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        am_alloc_set_fail_after(nth);
        int rc = am_options_parse(comp_options, &cfg, map, "p", &errs);
        long made = am_alloc_set_fail_after(0);
        if (made < nth) {
            assert_int_equal(rc, 0);
            assert_int_equal(errs.count, 0);
            assert_string_equal(cfg.loops.scope, "session");
            assert_int_equal(cfg.attributes.count, 4);
            am_options_free(comp_options, &cfg);
            break;
        }
        if (rc == 0) {
            print_error("allocation %ld failed but parse reported success\n", nth);
            fail();
        }
        assert_true(errs.count > 0);
        failures++;
        am_options_free(comp_options, &cfg);
        am_errors_clear(&errs);
    }
    assert_true(failures > 20);
    am_config_free(config);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults_only, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_empty_and_null_maps_give_defaults, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_values_replace_defaults, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_explicit_null_keeps_default, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_strlist_forms, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_with_suggestion, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_without_suggestion_lists_keys,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_points_at_key_line, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_bad_duration, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_types, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_endpoints, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_three_mistakes_three_errors, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_long_values_are_shortened_in_errors, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_sections, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_null_section_counts_as_given, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_section_errors_use_dotted_names, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_required_in_given_section, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test(test_required_top_level),
        cmocka_unit_test_setup_teardown(test_print_plain, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_print_markdown, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_free_twice_is_safe, fixture_setup, fixture_teardown),
        cmocka_unit_test(test_failmalloc_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
