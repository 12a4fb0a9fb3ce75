/*
 * `agentmeter ratecard price|check`: the breakdown an operator reads, the
 * exit codes scripts rely on, and the acceptance example (a 250K
 * input Claude Sonnet 4.5 call priced at the long-context tier).
 */
#include <fcntl.h>

#include "processors/ratecard/rc_test_util.h"

int am_ratecard_cli(int argc, char **argv);

static char out_text[65536];

/* Run the CLI with stdout and stderr captured into out_text. */
static int run_cli(int argc, const char **argv)
{
    const char *path = tmp_file("cli.out", "");
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    int fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    int rc = am_ratecard_cli(argc, (char **)argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    FILE *fp = fopen(path, "r");
    size_t n = fread(out_text, 1, sizeof(out_text) - 1, fp);
    out_text[n] = '\0';
    fclose(fp);
    return rc;
}

static void assert_output_has(const char *needle)
{
    if (strstr(out_text, needle) == NULL) {
        fail_msg("output lacks \"%s\":\n%s", needle, out_text);
    }
}

static void test_price_long_context_tier(void **state)
{
    (void)state;
    const char *argv[] = {"price",    "--model", "claude-sonnet-4-5-20250929", "--input", "250000",
                          "--output", "1000"};
    assert_int_equal(run_cli(7, argv), 0);
    /* 250000 x $6/1M + 1000 x $22.50/1M = 1.5 + 0.0225 */
    assert_output_has("total        1.5225 USD");
    assert_output_has("price_id     agentmeter-default@2026-11-01:claude-sonnet-4-5");
    assert_output_has("input_tokens_above 200000 applies");
}

static void test_price_breakdown_and_options(void **state)
{
    (void)state;
    const char *card = tmp_file("cli-card.yaml", TEST_CARD);
    /* TEST_CARD only: gpt-5 with cache and reasoning (see test_span.c) */
    const char *argv[] = {"price",        "--no-builtin", "--card",      card,       "--model",
                          "gpt-5",        "--input",      "10000",       "--output", "2000",
                          "--cache-read", "4000",         "--reasoning", "500"};
    assert_int_equal(run_cli(14, argv), 0);
    assert_output_has("total        0.028 USD");
    assert_output_has("price_id     test-card@7:gpt-5");
    assert_output_has("tier         none");

    /* --at picks the version; --provider filters. */
    const char *at_old[] = {"price", "--no-builtin", "--card",  card,   "--model",
                            "gem",   "--input",      "1000000", "--at", "2026-05-31"};
    assert_int_equal(run_cli(10, at_old), 0);
    assert_output_has("total        1 USD");
    const char *at_new[] = {"price", "--no-builtin", "--card",  card,   "--model",
                            "gem",   "--input",      "1000000", "--at", "2026-06-01"};
    assert_int_equal(run_cli(10, at_new), 0);
    assert_output_has("total        0.5 USD");
    assert_output_has("test-card@7:gem[from=2026-06-01]");
    const char *additive[] = {"price",   "--no-builtin", "--card",       card,
                              "--model", "claude-x",     "--provider",   "anthropic",
                              "--input", "1000",         "--cache-read", "2000"};
    assert_int_equal(run_cli(12, additive), 0);
    assert_output_has("cache_mode   additive");
    assert_output_has("total        0.0036 USD"); /* 1000 x 3 + 2000 x 0.3 */
}

static void test_price_unknown_model_and_usage(void **state)
{
    (void)state;
    const char *unknown[] = {"price", "--model", "gpt-9-ultra", "--input", "1"};
    assert_int_equal(run_cli(5, unknown), 1);
    assert_output_has("no rate card entry prices model \"gpt-9-ultra\"");
    const char *no_model[] = {"price", "--input", "1"};
    assert_int_equal(run_cli(3, no_model), 2);
    const char *bad_count[] = {"price", "--model", "gpt-5", "--input", "many"};
    assert_int_equal(run_cli(5, bad_count), 2);
    const char *bad_flag[] = {"price", "--model", "gpt-5", "--inptu", "1"};
    assert_int_equal(run_cli(5, bad_flag), 2);
    const char *bad_cmd[] = {"quote"};
    assert_int_equal(run_cli(1, bad_cmd), 2);
}

static void test_check(void **state)
{
    (void)state;
    const char *builtin[] = {"check"};
    assert_int_equal(run_cli(1, builtin), 0);
    assert_output_has("ok: agentmeter-default@2026-11-01");
    assert_output_has("currency USD;");

    const char *good = tmp_file("good.yaml", TEST_CARD);
    const char *ok[] = {"check", good};
    assert_int_equal(run_cli(2, ok), 0);
    assert_output_has("11 model entries, 10 models; 2 tools; 1 compute prices; 2 overrides");

    const char *bad = tmp_file("bad.yaml", "id: b\nversion: \"1\"\ncurrency: USD\nunit: per_1m\n"
                                           "models:\n"
                                           "  - { match: a, prices: { input: x, output: 1 } }\n"
                                           "  - { match: b, prices: { input: 1 } }\n");
    const char *fails[] = {"check", bad};
    assert_int_equal(run_cli(2, fails), 1);
    char needle[600];
    snprintf(needle, sizeof(needle), "%s:6: models[0].prices.input", bad);
    assert_output_has(needle);
    snprintf(needle, sizeof(needle), "%s:7: models[1].prices.output: required", bad);
    assert_output_has(needle);
    assert_output_has("2 errors; the card is rejected");
}

static int teardown(void **state)
{
    (void)state;
    tmp_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_price_long_context_tier),
        cmocka_unit_test(test_price_breakdown_and_options),
        cmocka_unit_test(test_price_unknown_model_and_usage),
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
