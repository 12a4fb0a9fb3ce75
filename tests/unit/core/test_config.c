/*
 * test_config.c - the YAML loader as an operator meets it: every mistake
 * comes back as "file:line: ..." naming the key, environment references
 * expand, later files override earlier ones, every bound holds, and a
 * failed allocation anywhere (failmalloc sweep) is an error, not a crash or
 * a leak.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "am_config.h"
#include "am_options.h"

/* ---- helpers -------------------------------------------------------------- */

static char tmp_dir[256];

static int make_tmp_dir(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/am_config_test.XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    assert_non_null(mkdtemp(tmp_dir));
    return 0;
}

static int remove_tmp_dir(void **state)
{
    assert_int_equal(rmdir(tmp_dir), 0);
    return 0;
}

/* Writes `text` to tmp_dir/name; returns the path (static per slot). */
static const char *write_file(int slot, const char *name, const char *text)
{
    static char paths[4][512];
    snprintf(paths[slot], sizeof(paths[slot]), "%s/%s", tmp_dir, name);
    FILE *fp = fopen(paths[slot], "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
    assert_int_equal(fclose(fp), 0);
    return paths[slot];
}

static am_config_t *load(const char *name, const char *text, am_errors_t *errs)
{
    return am_config_load_buffer(name, text, strlen(text), errs);
}

/* Fails the test with every collected message when none contains `want`. */
static void assert_error(const am_errors_t *errs, const char *want)
{
    for (size_t i = 0; i < errs->count; i++) {
        if (strstr(errs->msgs[i], want) != NULL) {
            return;
        }
    }
    print_error("no error contains \"%s\"; got %zu:\n", want, errs->count);
    for (size_t i = 0; i < errs->count; i++) {
        print_error("  %s\n", errs->msgs[i]);
    }
    fail();
}

static void assert_no_errors(const am_errors_t *errs)
{
    for (size_t i = 0; i < errs->count; i++) {
        print_error("unexpected error: %s\n", errs->msgs[i]);
    }
    assert_int_equal(errs->count, 0);
}

/* Loads `text` expecting failure with an error containing `want`. */
static void expect_load_error(const char *name, const char *text, const char *want)
{
    am_errors_t errs = {0};
    am_config_t *config = load(name, text, &errs);
    assert_null(config);
    assert_true(errs.count > 0);
    assert_error(&errs, want);
    am_errors_clear(&errs);
}

static const am_node_t *path_get(const am_node_t *node, const char *dotted)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", dotted);
    for (char *part = strtok(buf, "."); part != NULL && node != NULL; part = strtok(NULL, ".")) {
        node = am_node_get(node, part);
    }
    return node;
}

/* ---- parsing -------------------------------------------------------------- */

static void test_parse_kinds_positions_and_order(void **state)
{
    const char *text = "a: 1\n"
                       "b: \"two\"\n"
                       "c: 'three'\n"
                       "d: ~\n"
                       "e: null\n"
                       "f:\n"
                       "g: [x, \"y\"]\n"
                       "h: {k: v, n: 2}\n"
                       "i:\n"
                       "  - p\n"
                       "  - q: r\n"
                       "j: |\n"
                       "  block\n"
                       "k: ''\n";
    am_errors_t errs = {0};
    am_config_t *config = load("kinds.yaml", text, &errs);
    assert_non_null(config);
    assert_no_errors(&errs);
    const am_node_t *root = am_config_root(config);
    assert_int_equal(root->kind, AM_NODE_MAP);
    assert_int_equal(root->n_children, 11);
    const char *order = "abcdefghijk";
    static const int key_lines[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14};
    for (size_t i = 0; i < root->n_children; i++) {
        assert_int_equal(root->children[i]->key[0], order[i]);
        assert_int_equal(root->children[i]->key_line, key_lines[i]);
        assert_string_equal(root->children[i]->file, "kinds.yaml");
    }
    const am_node_t *a = am_node_get(root, "a");
    assert_int_equal(a->kind, AM_NODE_SCALAR);
    assert_string_equal(a->str, "1");
    assert_false(a->quoted);
    assert_int_equal(a->line, 1);
    assert_int_equal(a->column, 4);
    assert_true(am_node_get(root, "b")->quoted);
    assert_string_equal(am_node_get(root, "b")->str, "two");
    assert_true(am_node_get(root, "c")->quoted);
    assert_int_equal(am_node_get(root, "d")->kind, AM_NODE_NULL);
    assert_int_equal(am_node_get(root, "e")->kind, AM_NODE_NULL);
    assert_int_equal(am_node_get(root, "f")->kind, AM_NODE_NULL);
    const am_node_t *g = am_node_get(root, "g");
    assert_int_equal(g->kind, AM_NODE_SEQ);
    assert_int_equal(g->n_children, 2);
    assert_string_equal(g->children[0]->str, "x");
    assert_false(g->children[0]->quoted);
    assert_true(g->children[1]->quoted);
    assert_null(g->children[0]->key);
    const am_node_t *h = am_node_get(root, "h");
    assert_int_equal(h->kind, AM_NODE_MAP);
    assert_string_equal(am_node_get(h, "k")->str, "v");
    assert_string_equal(am_node_get(h, "n")->str, "2");
    assert_int_equal(am_node_get(h, "n")->line, 8);
    assert_int_equal(am_node_get(h, "n")->column, 14);
    const am_node_t *i = am_node_get(root, "i");
    assert_int_equal(i->kind, AM_NODE_SEQ);
    assert_int_equal(i->key_line, 9);
    assert_int_equal(i->line, 10);
    assert_int_equal(i->children[1]->kind, AM_NODE_MAP);
    assert_string_equal(am_node_get(i->children[1], "q")->str, "r");
    assert_int_equal(am_node_get(i->children[1], "q")->line, 11);
    assert_string_equal(am_node_get(root, "j")->str, "block\n");
    /* A quoted empty string is a string, not null. */
    assert_int_equal(am_node_get(root, "k")->kind, AM_NODE_SCALAR);
    assert_string_equal(am_node_get(root, "k")->str, "");
    assert_null(am_node_get(root, "zz"));
    assert_null(am_node_get(g, "x"));
    assert_string_equal(am_node_kind_name(AM_NODE_SEQ), "sequence");
    assert_string_equal(am_node_kind_name(AM_NODE_MAP), "map");
    am_config_free(config);
}

static void test_empty_and_comment_only_files(void **state)
{
    const char *texts[] = {"", "# only a comment\n", "---\n", "~\n"};
    for (size_t t = 0; t < 4; t++) {
        am_errors_t errs = {0};
        am_config_t *config = load("empty.yaml", texts[t], &errs);
        assert_non_null(config);
        assert_no_errors(&errs);
        assert_int_equal(am_config_root(config)->kind, AM_NODE_MAP);
        assert_int_equal(am_config_root(config)->n_children, 0);
        am_config_free(config);
    }
}

static void test_top_level_must_be_map(void **state)
{
    expect_load_error("list.yaml", "# a list\n- a\n- b\n",
                      "list.yaml:2: the top level must be a map");
    expect_load_error("scalar.yaml", "hello\n", "scalar.yaml:1: the top level must be a map");
}

static void test_duplicate_key_names_both_lines(void **state)
{
    expect_load_error("dup.yaml",
                      "processors:\n"
                      "  tracetree:\n"
                      "    wait: 2s\n"
                      "    max_wait: 30s\n"
                      "    wait: 5s\n",
                      "dup.yaml:5: duplicate key \"processors.tracetree.wait\" (first defined at "
                      "line 3)");
    expect_load_error("dupflow.yaml", "a: {x: 1, x: 2}\n",
                      "dupflow.yaml:1: duplicate key \"a.x\" (first defined at line 1)");

    /* A big map takes the sorted path; the duplicate still names both lines. */
    char text[8192];
    size_t used = 0;
    for (int k = 0; k < 100; k++) {
        used += (size_t)snprintf(text + used, sizeof(text) - used, "key%d: %d\n", k, k);
    }
    snprintf(text + used, sizeof(text) - used, "key42: again\n");
    expect_load_error("bigdup.yaml", text,
                      "bigdup.yaml:101: duplicate key \"key42\" (first defined at line 43)");
}

static void test_yaml_syntax_error_has_line(void **state)
{
    expect_load_error("syntax.yaml",
                      "receivers:\n"
                      "  otlp:\n"
                      "    protocols: [grpc, http\n"
                      "processors: {}\n",
                      "syntax.yaml:4: YAML syntax error");
    expect_load_error("indent.yaml",
                      "a:\n"
                      "  b: 1\n"
                      " c: 2\n",
                      "indent.yaml:3: YAML syntax error");
    expect_load_error("tab.yaml", "a:\n\tb: 1\n", "tab.yaml:2: YAML syntax error");
    /* Braces end a plain scalar inside {...}: the message says to quote. */
    expect_load_error("flow.yaml", "otlp: { endpoint: ${env:HOST}:4317 }\n",
                      "quote values that contain ${...}");
    /* Invalid UTF-8 is a reader error; its line is still found. */
    expect_load_error("utf8.yaml", "a: 1\nb: \xff\xfe\n", "utf8.yaml:2: invalid YAML input");
}

static void test_aliases_and_anchors_rejected(void **state)
{
    am_errors_t errs = {0};
    am_config_t *config = load("alias.yaml",
                               "base: &common {a: 1}\n"
                               "other: *common\n",
                               &errs);
    assert_null(config);
    assert_error(&errs, "alias.yaml:1: YAML anchors (&common) are not supported");
    assert_error(&errs, "alias.yaml:2: other: YAML aliases (*common) are not supported");
    am_errors_clear(&errs);
}

static void test_multiple_documents_rejected(void **state)
{
    expect_load_error("docs.yaml", "a: 1\n---\nb: 2\n", "docs.yaml:2: more than one YAML document");
}

static void test_nul_in_value_rejected(void **state)
{
    expect_load_error("nul.yaml", "a:\n  b: \"x\\0y\"\n", "nul.yaml:2: a.b: value contains a NUL");
}

static void test_non_scalar_key_rejected(void **state)
{
    expect_load_error("key.yaml", "a: 1\n? [x, y]\n: 2\n", "key.yaml:2: map keys must be plain");
}

/* ---- bounds --------------------------------------------------------------- */

static char *nested_flow(size_t levels)
{
    char *text = malloc(2 * levels + 16);
    assert_non_null(text);
    size_t used = (size_t)sprintf(text, "a: ");
    memset(text + used, '[', levels);
    used += levels;
    memset(text + used, ']', levels);
    used += levels;
    text[used++] = '\n';
    text[used] = '\0';
    return text;
}

static void test_nesting_depth_bounded(void **state)
{
    /* The root map is level 1, so 63 nested sequences reach level 64. */
    char *ok = nested_flow(63);
    am_errors_t errs = {0};
    am_config_t *config = load("deep.yaml", ok, &errs);
    assert_non_null(config);
    assert_no_errors(&errs);
    am_config_free(config);
    free(ok);

    char *deep = nested_flow(64);
    expect_load_error("deep.yaml", deep, "deep.yaml:1: a");
    expect_load_error("deep.yaml", deep, "nesting is too deep (more than 64 levels)");
    free(deep);

    /* Far deeper input stops at the bound, without recursing further. */
    char *very = nested_flow(100000);
    expect_load_error("verydeep.yaml", very, "nesting is too deep");
    free(very);

    /* Block style too: 70 levels of maps. */
    char block[70 * 80];
    size_t used = 0;
    for (int level = 0; level < 70; level++) {
        used +=
            (size_t)snprintf(block + used, sizeof(block) - used, "%*sk%d:\n", level * 2, "", level);
    }
    expect_load_error("blockdeep.yaml", block, "blockdeep.yaml:65: k0.k1.k2");
}

static void test_node_count_bounded(void **state)
{
    size_t items = 1000001;
    char *text = malloc(2 * items + 16);
    assert_non_null(text);
    size_t used = (size_t)sprintf(text, "a: [");
    for (size_t i = 0; i < items; i++) {
        text[used++] = '1';
        text[used++] = ',';
    }
    text[used - 1] = ']';
    text[used] = '\0';
    expect_load_error("many.yaml", text, "many.yaml:1: too many values (more than 1000000)");
    free(text);
}

static void test_file_size_bounded(void **state)
{
    size_t len = (size_t)16 * 1024 * 1024 + 1;
    char *text = malloc(len);
    assert_non_null(text);
    memset(text, '#', len);
    am_errors_t errs = {0};
    assert_null(am_config_load_buffer("big.yaml", text, len, &errs));
    assert_error(&errs, "big.yaml: file is too large");
    am_errors_clear(&errs);

    /* The same bound applies to files, checked before reading them. */
    const char *path = write_file(0, "big.yaml", "");
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    fclose(fp);
    assert_null(am_config_load_files(&path, 1, &errs));
    assert_error(&errs, "big.yaml: file is too large");
    am_errors_clear(&errs);
    unlink(path);
    free(text);
}

/* ---- environment ---------------------------------------------------------- */

static void expect_expand(const char *in, const char *want)
{
    const char *err = "unset";
    char *out = am_env_expand(in, &err);
    if (out == NULL) {
        print_error("expanding \"%s\" failed: %s\n", in, err);
    }
    assert_non_null(out);
    assert_null(err);
    assert_string_equal(out, want);
    am_free(out);
}

static void expect_expand_error(const char *in, const char *want)
{
    const char *err = NULL;
    char *out = am_env_expand(in, &err);
    assert_null(out);
    assert_non_null(err);
    if (strstr(err, want) == NULL) {
        print_error("expanding \"%s\": error \"%s\" lacks \"%s\"\n", in, err, want);
        fail();
    }
}

static void test_env_expand_forms(void **state)
{
    setenv("AM_TEST_HOST", "collector.internal", 1);
    setenv("AM_TEST_EMPTY", "", 1);
    unsetenv("AM_TEST_UNSET");
    expect_expand("plain", "plain");
    expect_expand("${env:AM_TEST_HOST}", "collector.internal");
    expect_expand("${AM_TEST_HOST}", "collector.internal");
    expect_expand("${env:AM_TEST_HOST}:4317", "collector.internal:4317");
    expect_expand("${env:AM_TEST_UNSET:-127.0.0.1}:4317", "127.0.0.1:4317");
    expect_expand("${AM_TEST_UNSET:-fallback}", "fallback");
    expect_expand("${env:AM_TEST_HOST:-fallback}", "collector.internal");
    expect_expand("${env:AM_TEST_UNSET:-}", "");
    /* As in the Collector: an unset variable is "", a set empty one is
     * used as is (the default is only for unset). */
    expect_expand("[${env:AM_TEST_UNSET}]", "[]");
    expect_expand("[${env:AM_TEST_EMPTY:-x}]", "[]");
    expect_expand("$$", "$");
    expect_expand("price: $$5", "price: $5");
    expect_expand("$${env:AM_TEST_HOST}", "${env:AM_TEST_HOST}");
    expect_expand("$", "$");
    expect_expand("cost $5 and $x", "cost $5 and $x");
    expect_expand("end$", "end$");
    expect_expand("^gpt-4o$", "^gpt-4o$");
    expect_expand("${AM_TEST_HOST}/${AM_TEST_HOST}", "collector.internal/collector.internal");

    expect_expand_error("${env:AM_TEST_HOST", "unterminated \"${\"");
    expect_expand_error("x ${", "unterminated");
    expect_expand_error("${1BAD}", "invalid variable name");
    expect_expand_error("${}", "invalid variable name");
    expect_expand_error("${env:}", "invalid variable name");
    expect_expand_error("${env:A-B}", "invalid variable name");
    expect_expand_error("${file:/etc/passwd}", "invalid variable name");
    expect_expand_error("${env:A:-${env:B}}", "inside a default value");
    unsetenv("AM_TEST_HOST");
    unsetenv("AM_TEST_EMPTY");
}

static void test_env_expansion_in_config(void **state)
{
    setenv("AM_TEST_PORT", "4319", 1);
    unsetenv("AM_TEST_UNSET");
    am_errors_t errs = {0};
    am_config_t *config = load("env.yaml",
                               "grpc:\n"
                               "  endpoint: \"127.0.0.1:${env:AM_TEST_PORT}\"\n"
                               "  port: ${AM_TEST_PORT}\n"
                               "  host: ${env:AM_TEST_UNSET:-localhost}\n"
                               "  empty: ${env:AM_TEST_UNSET}\n"
                               "  price: $$0.01\n"
                               "  list: [\"${AM_TEST_PORT}\", $$]\n"
                               "  ${AM_TEST_PORT}: keys are not expanded\n",
                               &errs);
    assert_non_null(config);
    assert_no_errors(&errs);
    const am_node_t *grpc = am_node_get(am_config_root(config), "grpc");
    assert_string_equal(am_node_get(grpc, "endpoint")->str, "127.0.0.1:4319");
    assert_true(am_node_get(grpc, "endpoint")->quoted);
    assert_string_equal(am_node_get(grpc, "port")->str, "4319");
    assert_false(am_node_get(grpc, "port")->quoted);
    assert_string_equal(am_node_get(grpc, "host")->str, "localhost");
    /* An unset variable is the empty string, not null. */
    assert_int_equal(am_node_get(grpc, "empty")->kind, AM_NODE_SCALAR);
    assert_string_equal(am_node_get(grpc, "empty")->str, "");
    assert_string_equal(am_node_get(grpc, "price")->str, "$0.01");
    assert_string_equal(am_node_get(grpc, "list")->children[0]->str, "4319");
    assert_string_equal(am_node_get(grpc, "list")->children[1]->str, "$");
    assert_non_null(am_node_get(grpc, "${AM_TEST_PORT}"));
    am_config_free(config);
    unsetenv("AM_TEST_PORT");
}

static void test_malformed_env_reference_names_file_line_key(void **state)
{
    expect_load_error("envbad.yaml",
                      "exporters:\n"
                      "  otlp:\n"
                      "    endpoint: ${env:OTLP_HOST\n",
                      "envbad.yaml:3: exporters.otlp.endpoint: invalid environment reference in "
                      "\"${env:OTLP_HOST\": unterminated \"${\"");
    expect_load_error("envname.yaml",
                      "exporters:\n"
                      "  kafka:\n"
                      "    brokers: [\"ok\", \"${env:9LIVES}\"]\n",
                      "envname.yaml:3: exporters.kafka.brokers[1]: invalid environment reference "
                      "in \"${env:9LIVES}\": invalid variable name");
}

static void test_three_mistakes_three_errors(void **state)
{
    am_errors_t errs = {0};
    am_config_t *config = load("three.yaml",
                               "processors:\n"
                               "  tracetree: {wait: 2s, wait: 3s}\n"
                               "  session:\n"
                               "    idle_timeout: ${env:}\n"
                               "  budget: *nothing\n",
                               &errs);
    assert_null(config);
    assert_int_equal(errs.count, 3);
    assert_error(&errs, "three.yaml:2: duplicate key \"processors.tracetree.wait\"");
    assert_error(&errs, "three.yaml:4: processors.session.idle_timeout: invalid environment");
    assert_error(&errs, "three.yaml:5: processors.budget: YAML aliases (*nothing)");
    am_errors_clear(&errs);
}

/* ---- files and merging ------------------------------------------------------ */

static void test_missing_file_is_named(void **state)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/does-not-exist.yaml", tmp_dir);
    const char *paths[] = {path};
    am_errors_t errs = {0};
    assert_null(am_config_load_files(paths, 1, &errs));
    char want[700];
    snprintf(want, sizeof(want), "%s: cannot open: ", path);
    assert_error(&errs, want);
    am_errors_clear(&errs);

    /* A directory is not a config file. */
    paths[0] = tmp_dir;
    assert_null(am_config_load_files(paths, 1, &errs));
    assert_error(&errs, "is a directory");
    am_errors_clear(&errs);
}

static void test_no_files_is_an_empty_config(void **state)
{
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_files(NULL, 0, &errs);
    assert_non_null(config);
    assert_int_equal(am_config_root(config)->kind, AM_NODE_MAP);
    assert_int_equal(am_config_root(config)->n_children, 0);
    am_config_free(config);
}

typedef struct tt_cfg {
    int64_t wait_ms;
    int64_t max_wait_ms;
    int64_t max_traces;
} tt_cfg_t;

static const am_option_t tt_options[] = {
    AM_OPT("wait", AM_OPT_DURATION, "2s", tt_cfg_t, wait_ms, "Quiet time before a trace is done."),
    AM_OPT("max_wait", AM_OPT_DURATION, "30s", tt_cfg_t, max_wait_ms, "Longest wait."),
    AM_OPT("max_traces", AM_OPT_INT, "200000", tt_cfg_t, max_traces, "Traces held at once."),
    AM_OPT_END,
};

static void test_merge_later_file_wins(void **state)
{
    const char *base = write_file(0, "base.yaml",
                                  "receivers:\n"
                                  "  otlp:\n"
                                  "    protocols:\n"
                                  "      grpc: { endpoint: \"127.0.0.1:4317\" }\n"
                                  "      http: { endpoint: \"127.0.0.1:4318\" }\n"
                                  "processors:\n"
                                  "  tracetree: { wait: 2s, max_wait: 30s }\n"
                                  "  propagate: { attributes: [session.id, user.id] }\n"
                                  "service:\n"
                                  "  pipelines:\n"
                                  "    traces: { receivers: [otlp], exporters: [debug] }\n");
    const char *over = write_file(1, "over.yaml",
                                  "# production overrides\n"
                                  "receivers:\n"
                                  "  otlp:\n"
                                  "    protocols:\n"
                                  "      grpc: { endpoint: \"0.0.0.0:4317\" }\n"
                                  "processors:\n"
                                  "  tracetree: { wait: 5s, max_traces: 1000 }\n"
                                  "  propagate: { attributes: [tenant.id] }\n"
                                  "  session: { idle_timeout: 10m }\n"
                                  "exporters:\n"
                                  "  debug: ~\n");
    const char *paths[] = {base, over};
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_files(paths, 2, &errs);
    assert_non_null(config);
    assert_no_errors(&errs);
    const am_node_t *root = am_config_root(config);

    /* Later wins for scalars, keeping the later file and line. */
    const am_node_t *grpc = path_get(root, "receivers.otlp.protocols.grpc.endpoint");
    assert_string_equal(grpc->str, "0.0.0.0:4317");
    assert_string_equal(grpc->file, over);
    assert_int_equal(grpc->line, 5);
    /* Nested maps merge: what the later file does not mention stays. */
    const am_node_t *http = path_get(root, "receivers.otlp.protocols.http.endpoint");
    assert_string_equal(http->str, "127.0.0.1:4318");
    assert_string_equal(http->file, base);
    const am_node_t *tt = path_get(root, "processors.tracetree");
    assert_int_equal(tt->n_children, 3);
    assert_string_equal(am_node_get(tt, "wait")->str, "5s");
    assert_string_equal(am_node_get(tt, "max_wait")->str, "30s");
    assert_string_equal(am_node_get(tt, "max_wait")->file, base);
    assert_string_equal(am_node_get(tt, "max_traces")->str, "1000");
    assert_string_equal(tt->children[2]->key, "max_traces"); /* new keys go last */
    /* Sequences are replaced, not appended. */
    const am_node_t *attrs = path_get(root, "processors.propagate.attributes");
    assert_int_equal(attrs->n_children, 1);
    assert_string_equal(attrs->children[0]->str, "tenant.id");
    /* New sections and keys appear, in order. */
    assert_non_null(path_get(root, "processors.session.idle_timeout"));
    assert_string_equal(root->children[root->n_children - 1]->key, "exporters");
    assert_non_null(path_get(root, "service.pipelines.traces"));

    /* Options parsed from the merged tree see the merged values. */
    tt_cfg_t cfg = {0};
    assert_int_equal(am_options_parse(tt_options, &cfg, tt, "processors.tracetree", &errs), 0);
    assert_int_equal(cfg.wait_ms, 5000);
    assert_int_equal(cfg.max_wait_ms, 30000);
    assert_int_equal(cfg.max_traces, 1000);
    am_options_free(tt_options, &cfg);
    am_config_free(config);
    unlink(base);
    unlink(over);
}

static void test_merge_error_names_the_second_file(void **state)
{
    const char *base = write_file(0, "first.yaml",
                                  "processors:\n"
                                  "  tracetree:\n"
                                  "    wait: 2s\n"
                                  "    max_wait: 30s\n");
    const char *over = write_file(1, "second.yaml",
                                  "processors:\n"
                                  "  tracetree:\n"
                                  "    max_wait: forever\n"
                                  "    wiat: 1s\n");
    const char *paths[] = {base, over};
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_files(paths, 2, &errs);
    assert_non_null(config);
    tt_cfg_t cfg = {0};
    const am_node_t *tt = path_get(am_config_root(config), "processors.tracetree");
    assert_int_not_equal(am_options_parse(tt_options, &cfg, tt, "processors.tracetree", &errs), 0);
    assert_int_equal(errs.count, 2);
    char want[700];
    snprintf(want, sizeof(want),
             "%s:3: processors.tracetree.max_wait: invalid duration \"forever\" (expected e.g. "
             "500ms, 2s, 30m, 24h)",
             over);
    assert_error(&errs, want);
    snprintf(want, sizeof(want),
             "%s:4: unknown key \"processors.tracetree.wiat\"; did you mean \"wait\"?", over);
    assert_error(&errs, want);
    am_errors_clear(&errs);
    am_options_free(tt_options, &cfg);
    am_config_free(config);

    /* A YAML error in the second file names the second file, and the first
     * file's errors are reported in the same run. */
    base = write_file(0, "first.yaml", "a: {x: 1, x: 2}\n");
    over = write_file(1, "second.yaml", "b: [1, 2\n");
    assert_null(am_config_load_files(paths, 2, &errs));
    snprintf(want, sizeof(want), "%s:1: duplicate key \"a.x\"", base);
    assert_error(&errs, want);
    snprintf(want, sizeof(want), "%s:2: YAML syntax error", over);
    assert_error(&errs, want);
    am_errors_clear(&errs);
    unlink(base);
    unlink(over);
}

static void test_merge_large_maps(void **state)
{
    char a[16384];
    char b[16384];
    size_t ua = 0;
    size_t ub = 0;
    for (int k = 0; k < 200; k++) {
        ua += (size_t)snprintf(a + ua, sizeof(a) - ua, "k%03d: a%d\n", k, k);
    }
    for (int k = 100; k < 300; k++) {
        ub += (size_t)snprintf(b + ub, sizeof(b) - ub, "k%03d: b%d\n", k, k);
    }
    am_errors_t errs = {0};
    am_config_t *base = load("a.yaml", a, &errs);
    am_config_t *over = load("b.yaml", b, &errs);
    assert_non_null(base);
    assert_non_null(over);
    assert_ptr_equal(am_config_merge(base, over), base);
    const am_node_t *root = am_config_root(base);
    assert_int_equal(root->n_children, 300);
    for (int k = 0; k < 300; k++) {
        char key[16];
        char want[16];
        snprintf(key, sizeof(key), "k%03d", k);
        snprintf(want, sizeof(want), "%s%d", k < 100 ? "a" : "b", k);
        assert_string_equal(am_node_get(root, key)->str, want);
        assert_string_equal(am_node_get(root, key)->file, k < 100 ? "a.yaml" : "b.yaml");
        assert_string_equal(root->children[k]->key, key);
    }
    am_config_free(base);
}

static void test_merge_map_replaced_by_scalar_and_back(void **state)
{
    am_errors_t errs = {0};
    am_config_t *base = load("a.yaml", "x: {y: 1}\nz: 1\nn: {m: 1}\n", &errs);
    am_config_t *over = load("b.yaml", "x: off\nz: {w: 2}\nn: ~\n", &errs);
    assert_ptr_equal(am_config_merge(base, over), base);
    const am_node_t *root = am_config_root(base);
    assert_int_equal(am_node_get(root, "x")->kind, AM_NODE_SCALAR);
    assert_int_equal(am_node_get(root, "z")->kind, AM_NODE_MAP);
    assert_int_equal(am_node_get(root, "n")->kind, AM_NODE_NULL);
    assert_ptr_equal(am_config_merge(base, NULL), base);
    am_config_free(base);
}

/* ---- durations, suggestions, errors --------------------------------------- */

static void test_parse_duration(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {
        {"500ms", 500},
        {"2s", 2000},
        {"30m", 1800000},
        {"24h", 86400000},
        {"1h30m", 5400000},
        {"1.5s", 1500},
        {"0", 0},
        {"0s", 0},
        {"0.5h", 1800000},
        {"1m30s", 90000},
        {"2h3m4s5ms", 7384005},
        {".25s", 250},
        {"1.0001s", 1000},
        {"100000h", 360000000000},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t ms = -1;
        if (am_parse_duration_ms(good[i].text, &ms) != 0) {
            print_error("\"%s\" should parse\n", good[i].text);
            fail();
        }
        assert_int_equal(ms, good[i].ms);
    }
    static const char *const bad[] = {"",    "2",   "-1s", "2x",     "s",     "1.s5",  " 2s",
                                      "2s ", "2 s", "1d",  "1us",    "h1",    "1..5s", "+2s",
                                      "ms",  ".s",  "2S",  "1h-30m", "0x10s", "nan"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = 12345;
        if (am_parse_duration_ms(bad[i], &ms) == 0) {
            print_error("\"%s\" should not parse\n", bad[i]);
            fail();
        }
        assert_int_equal(ms, 12345);
    }
    int64_t ms;
    assert_int_equal(am_parse_duration_ms("9223372036854775808ms", &ms), AM_ERANGE);
    assert_int_equal(am_parse_duration_ms("2562047788016h", &ms), AM_ERANGE);
    assert_int_equal(am_parse_duration_ms("2562047788015h2562047788015h", &ms), AM_ERANGE);
    assert_int_equal(am_parse_duration_ms("99999999999999999999999s", &ms), AM_ERANGE);
    assert_int_equal(am_parse_duration_ms(NULL, &ms), AM_EINVAL);
}

static void test_did_you_mean(void **state)
{
    static const char *const keys[] = {"wait", "max_wait", "max_traces", "endpoint", NULL};
    assert_string_equal(am_did_you_mean("wiat", keys), "wait");
    assert_string_equal(am_did_you_mean("max_trace", keys), "max_traces");
    assert_string_equal(am_did_you_mean("endpiont", keys), "endpoint");
    assert_string_equal(am_did_you_mean("Endpoint", keys), "endpoint");
    assert_string_equal(am_did_you_mean("maxwait", keys), "max_wait");
    assert_null(am_did_you_mean("compression", keys));
    assert_null(am_did_you_mean("xyz", keys));
    assert_null(am_did_you_mean("wait", NULL));
    static const char *const sections[] = {"receivers", "processors", "exporters", NULL};
    assert_string_equal(am_did_you_mean("procesors", sections), "processors");
    /* Long words allow more edits: len/3. */
    static const char *const longer[] = {"max_recv_msg_size_mib", NULL};
    assert_string_equal(am_did_you_mean("max_recv_msg_size", longer), "max_recv_msg_size_mib");
    char huge[200];
    memset(huge, 'a', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    assert_null(am_did_you_mean(huge, keys));
}

static void test_errors_format_and_print(void **state)
{
    am_errors_t errs = {0};
    am_node_t node = {.kind = AM_NODE_SCALAR, .file = "x.yaml", .line = 7, .column = 3};
    am_errors_add(&errs, &node, "bad %s", "thing");
    am_errors_add_at(&errs, "y.yaml", 12, "parse problem %d", 42);
    am_errors_add_at(&errs, "z.yaml", 0, "cannot open");
    am_errors_add(&errs, NULL, "no position");
    for (int i = 0; i < 40; i++) {
        am_errors_add_at(&errs, "many.yaml", i + 1, "error %d", i);
    }
    assert_int_equal(errs.count, 44);
    assert_string_equal(errs.msgs[0], "x.yaml:7: bad thing");
    assert_string_equal(errs.msgs[1], "y.yaml:12: parse problem 42");
    assert_string_equal(errs.msgs[2], "z.yaml: cannot open");
    assert_string_equal(errs.msgs[3], "no position");
    assert_string_equal(errs.msgs[43], "many.yaml:40: error 39");
    char *printed = NULL;
    size_t printed_len = 0;
    FILE *out = open_memstream(&printed, &printed_len);
    assert_non_null(out);
    am_errors_print(&errs, out);
    fclose(out);
    assert_non_null(strstr(printed, "x.yaml:7: bad thing\ny.yaml:12: parse problem 42\n"));
    free(printed);
    am_errors_clear(&errs);
    assert_int_equal(errs.count, 0);
    assert_null(errs.msgs);
    am_errors_clear(&errs);
}

static void test_errors_survive_allocation_failure(void **state)
{
    am_errors_t errs = {0};
    am_alloc_set_fail_after(1);
    am_errors_add_at(&errs, "a.yaml", 1, "lost message");
    am_alloc_set_fail_after(0);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.msgs[0], "out of memory");
    am_errors_add_at(&errs, "a.yaml", 2, "kept message");
    assert_int_equal(errs.count, 2);
    assert_string_equal(errs.msgs[1], "a.yaml:2: kept message");
    am_errors_clear(&errs);
    /* Fail the array growth instead: the fallback still records an error. */
    am_alloc_set_fail_after(2);
    am_errors_add_at(&errs, "a.yaml", 3, "also lost");
    am_alloc_set_fail_after(0);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.msgs[0], "out of memory");
    am_errors_clear(&errs);
}

/* ---- failmalloc sweep ------------------------------------------------------ */

/* ARCHITECTURE.md §3, with an environment reference. */
static const char arch_example[] =
    "receivers:\n"
    "  otlp:\n"
    "    protocols:\n"
    "      grpc: { endpoint: \"${env:AM_SWEEP_HOST:-127.0.0.1}:4317\", max_recv_msg_size_mib: 16 "
    "}\n"
    "      http: { endpoint: \"127.0.0.1:4318\" }\n"
    "processors:\n"
    "  memory_limiter: { limit_mib: 512, spike_limit_mib: 128 }\n"
    "  tracetree:  { wait: 2s, max_wait: 30s, max_traces: 200000 }\n"
    "  propagate:  { attributes: [session.id, user.id, tenant.id, gen_ai.agent.name] }\n"
    "  ratecard:   { files: [/etc/agentmeter/ratecard.yaml] }     # empty: built-in card\n"
    "  rollup:     {}\n"
    "  session:    { idle_timeout: 30m }\n"
    "  budget:\n"
    "    budgets:\n"
    "      - { name: session-cap, scope: session.id, window: session, limit: 5.00, thresholds: "
    "[0.8, 1.0] }\n"
    "      - { name: tenant-daily, scope: tenant.id, window: day, limit: 1000 }\n"
    "  anomaly:    { loops: { max_repeats: 5 }, burn_rate: { scope: gen_ai.agent.name, factor: 3 "
    "} }\n"
    "connectors:\n"
    "  costmetrics: { dimensions: [tenant.id, gen_ai.agent.name], flush_interval: 15s }\n"
    "exporters:\n"
    "  kafka/spans:  { brokers: [\"localhost:9092\"], topic: agent-spans, encoding: otlp_proto, "
    "partition_by: session.id }\n"
    "  kafka/events: { brokers: [\"localhost:9092\"], topic: agent-cost-events, encoding: json }\n"
    "  prometheusremotewrite: { endpoint: \"http://localhost:9090/api/v1/write\" }\n"
    "  prometheus:   { endpoint: \"127.0.0.1:9464\" }\n"
    "  debug:        { verbosity: basic }\n"
    "service:\n"
    "  telemetry: { metrics: { address: \"127.0.0.1:8888\" }, logs: { level: info } }\n"
    "  pipelines:\n"
    "    traces:  { receivers: [otlp], processors: [memory_limiter, tracetree, propagate, "
    "ratecard, rollup, session, budget, anomaly], exporters: [kafka/spans, costmetrics] }\n"
    "    metrics: { receivers: [costmetrics], exporters: [prometheusremotewrite, prometheus] }\n"
    "    logs:    { receivers: [costmetrics], exporters: [kafka/events] }\n";

static const char arch_override[] = "processors:\n"
                                    "  tracetree: { wait: 5s }\n"
                                    "  session: { idle_timeout: 1h }\n"
                                    "exporters:\n"
                                    "  prometheus: { endpoint: \"0.0.0.0:9464\" }\n"
                                    "  debug: { verbosity: detailed }\n"
                                    "service:\n"
                                    "  telemetry: { logs: { encoding: json } }\n"
                                    "extensions:\n"
                                    "  health_check: { endpoint: \"0.0.0.0:13133\" }\n";

typedef struct proto_cfg {
    bool set;
    char *endpoint;
    int64_t max_recv_bytes;
} proto_cfg_t;

typedef struct protocols_cfg {
    bool set;
    proto_cfg_t grpc;
    proto_cfg_t http;
} protocols_cfg_t;

typedef struct otlp_cfg {
    protocols_cfg_t protocols;
} otlp_cfg_t;

static const am_option_t proto_options[] = {
    AM_OPT("endpoint", AM_OPT_ENDPOINT, "127.0.0.1:4317", proto_cfg_t, endpoint, "Listen address."),
    AM_OPT("max_recv_msg_size_mib", AM_OPT_SIZE_MIB, "4", proto_cfg_t, max_recv_bytes,
           "Largest request."),
    AM_OPT_END,
};

static const am_option_t protocols_options[] = {
    {.name = "grpc",
     .type = AM_OPT_SECTION,
     .offset = offsetof(protocols_cfg_t, grpc),
     .sub = proto_options,
     .doc = "OTLP/gRPC."},
    {.name = "http",
     .type = AM_OPT_SECTION,
     .offset = offsetof(protocols_cfg_t, http),
     .sub = proto_options,
     .doc = "OTLP/HTTP."},
    AM_OPT_END,
};

static const am_option_t otlp_options[] = {
    {.name = "protocols",
     .type = AM_OPT_SECTION,
     .offset = offsetof(otlp_cfg_t, protocols),
     .sub = protocols_options,
     .doc = "Protocols to serve."},
    AM_OPT_END,
};

typedef struct misc_cfg {
    int64_t limit_bytes;
    int64_t spike_bytes;
    am_strlist_t list;
    int64_t idle_ms;
    const am_node_t *budgets;
    char *topic;
    char *encoding;
    char *verbosity;
    char *url;
} misc_cfg_t;

/* One permissive table covering the keys of several components. */
static const am_option_t misc_options[] = {
    AM_OPT("limit_mib", AM_OPT_SIZE_MIB, "0", misc_cfg_t, limit_bytes, ""),
    AM_OPT("spike_limit_mib", AM_OPT_SIZE_MIB, "0", misc_cfg_t, spike_bytes, ""),
    AM_OPT("attributes", AM_OPT_STRLIST, "[session.id]", misc_cfg_t, list, ""),
    AM_OPT("files", AM_OPT_STRLIST, NULL, misc_cfg_t, list, ""),
    AM_OPT("brokers", AM_OPT_STRLIST, NULL, misc_cfg_t, list, ""),
    AM_OPT("idle_timeout", AM_OPT_DURATION, "30m", misc_cfg_t, idle_ms, ""),
    AM_OPT("budgets", AM_OPT_NODE, NULL, misc_cfg_t, budgets, ""),
    AM_OPT("topic", AM_OPT_STRING, "agent-spans", misc_cfg_t, topic, ""),
    {.name = "encoding",
     .type = AM_OPT_ENUM,
     .def = "otlp_proto",
     .offset = offsetof(misc_cfg_t, encoding),
     .choices = "otlp_proto|otlp_json|json"},
    AM_OPT("partition_by", AM_OPT_STRING, NULL, misc_cfg_t, url, ""),
    {.name = "verbosity",
     .type = AM_OPT_ENUM,
     .def = "basic",
     .offset = offsetof(misc_cfg_t, verbosity),
     .choices = "basic|normal|detailed"},
    AM_OPT("endpoint", AM_OPT_STRING, NULL, misc_cfg_t, url, ""),
    AM_OPT_END,
};

/* Loads both files and parses every component; 0 when all went well. */
static int sweep_once(const char *const *paths, int64_t *wait_ms, char **verbosity)
{
    am_errors_t errs = {0};
    int rc = 0;
    am_config_t *config = am_config_load_files(paths, 2, &errs);
    if (config == NULL) {
        assert_true(errs.count > 0);
        am_errors_clear(&errs);
        return AM_EINVAL;
    }
    const am_node_t *root = am_config_root(config);
    otlp_cfg_t otlp = {0};
    if (am_options_parse(otlp_options, &otlp, path_get(root, "receivers.otlp"), "receivers.otlp",
                         &errs) != 0) {
        rc = AM_EINVAL;
    }
    am_options_free(otlp_options, &otlp);
    tt_cfg_t tt = {0};
    if (am_options_parse(tt_options, &tt, path_get(root, "processors.tracetree"),
                         "processors.tracetree", &errs) != 0) {
        rc = AM_EINVAL;
    }
    *wait_ms = tt.wait_ms;
    const char *misc[] = {"processors.memory_limiter", "processors.propagate",
                          "processors.ratecard",       "processors.session",
                          "processors.budget",         "processors.rollup",
                          "exporters.kafka/spans",     "exporters.kafka/events",
                          "exporters.debug",           "exporters.prometheusremotewrite"};
    for (size_t i = 0; i < sizeof(misc) / sizeof(misc[0]); i++) {
        const am_node_t *node = am_node_get(root, i < 6 ? "processors" : "exporters");
        node = am_node_get(node, strchr(misc[i], '.') + 1);
        misc_cfg_t cfg = {0};
        if (am_options_parse(misc_options, &cfg, node, misc[i], &errs) != 0) {
            rc = AM_EINVAL;
        }
        if (strcmp(misc[i], "exporters.debug") == 0 && cfg.verbosity != NULL) {
            *verbosity = strdup(cfg.verbosity);
        }
        am_options_free(misc_options, &cfg);
    }
    if (rc != 0) {
        assert_true(errs.count > 0);
    }
    am_errors_clear(&errs);
    am_config_free(config);
    return rc;
}

static void test_failmalloc_sweep(void **state)
{
    const char *paths[] = {write_file(0, "agentmeter.yaml", arch_example),
                           write_file(1, "override.yaml", arch_override)};
    setenv("AM_SWEEP_HOST", "10.0.0.1", 1);
    long failures = 0;
    long nth;
    for (nth = 1; nth < 200000; nth++) {
        int64_t wait_ms = 0;
        char *verbosity = NULL;
        am_alloc_set_fail_after(nth);
        int rc = sweep_once(paths, &wait_ms, &verbosity);
        long made = am_alloc_set_fail_after(0);
        if (made < nth) {
            /* No allocation failed: the run must have fully succeeded. */
            assert_int_equal(rc, 0);
            assert_int_equal(wait_ms, 5000);
            assert_non_null(verbosity);
            assert_string_equal(verbosity, "detailed");
            free(verbosity);
            break;
        }
        free(verbosity);
        /* The nth allocation failed: that must be reported as an error. */
        if (rc == 0) {
            print_error("allocation %ld failed but the run reported success\n", nth);
            fail();
        }
        failures++;
    }
    assert_true(failures > 50);
    assert_true(nth < 200000);
    unsetenv("AM_SWEEP_HOST");
    unlink(paths[0]);
    unlink(paths[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_kinds_positions_and_order),
        cmocka_unit_test(test_empty_and_comment_only_files),
        cmocka_unit_test(test_top_level_must_be_map),
        cmocka_unit_test(test_duplicate_key_names_both_lines),
        cmocka_unit_test(test_yaml_syntax_error_has_line),
        cmocka_unit_test(test_aliases_and_anchors_rejected),
        cmocka_unit_test(test_multiple_documents_rejected),
        cmocka_unit_test(test_nul_in_value_rejected),
        cmocka_unit_test(test_non_scalar_key_rejected),
        cmocka_unit_test(test_nesting_depth_bounded),
        cmocka_unit_test(test_node_count_bounded),
        cmocka_unit_test(test_file_size_bounded),
        cmocka_unit_test(test_env_expand_forms),
        cmocka_unit_test(test_env_expansion_in_config),
        cmocka_unit_test(test_malformed_env_reference_names_file_line_key),
        cmocka_unit_test(test_three_mistakes_three_errors),
        cmocka_unit_test(test_missing_file_is_named),
        cmocka_unit_test(test_no_files_is_an_empty_config),
        cmocka_unit_test(test_merge_later_file_wins),
        cmocka_unit_test(test_merge_error_names_the_second_file),
        cmocka_unit_test(test_merge_large_maps),
        cmocka_unit_test(test_merge_map_replaced_by_scalar_and_back),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_did_you_mean),
        cmocka_unit_test(test_errors_format_and_print),
        cmocka_unit_test(test_errors_survive_allocation_failure),
        cmocka_unit_test(test_failmalloc_sweep),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
