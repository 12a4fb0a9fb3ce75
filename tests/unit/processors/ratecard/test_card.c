/*
 * Rate card files: every mistake is reported with file:line and rejects the
 * card; the built-in card loads clean and covers the big providers; several
 * files merge, a later entry replacing an earlier one with the same key.
 */
#include "processors/ratecard/rc_test_util.h"

static const char BAD_CARD[] =
    "id: bad\n"                                                    /* 1 */
    "version: \"1\"\n"                                             /* 2 */
    "currency: usd\n"                                              /* 3 */
    "unit: per_1m\n"                                               /* 4 */
    "colour: blue\n"                                               /* 5 */
    "models:\n"                                                    /* 6 */
    "  - match: a\n"                                               /* 7 */
    "    prices: { input: 1e-3, output: 1 }\n"                     /* 8 */
    "  - match: b\n"                                               /* 9 */
    "    prics: { input: 1, output: 1 }\n"                         /* 10 */
    "  - match: \"re:((\"\n"                                       /* 11 */
    "    prices: { input: 1, output: 1 }\n"                        /* 12 */
    "  - match: c\n"                                               /* 13 */
    "    prices: { input: -1, output: 1.0000000001 }\n"            /* 14 */
    "  - match: d\n"                                               /* 15 */
    "    effective_from: 2026-02-30\n"                             /* 16 */
    "    prices: { input: 1, output: 1 }\n"                        /* 17 */
    "  - match: e\n"                                               /* 18 */
    "    cache_mode: sometimes\n"                                  /* 19 */
    "    prices: { input: 1 }\n"                                   /* 20 */
    "    tiers:\n"                                                 /* 21 */
    "      - { input_tokens_above: lots, prices: { input: 2 } }\n" /* 22 */
    "      - { input_tokens_above: 10, prices: {} }\n"             /* 23 */
    "  - match: f\n"                                               /* 24 */
    "    prices: { input: 1, output: 1 }\n"                        /* 25 */
    "  - match: f\n"                                               /* 26 */
    "    prices: { input: 2, output: 2 }\n"                        /* 27 */
    "  - \"just a string\"\n"                                      /* 28 */
    "tools:\n"                                                     /* 29 */
    "  - { match: web_search }\n"                                  /* 30 */
    "  - { match: x, per_call: 0.01, extra: 1 }\n"                 /* 31 */
    "compute:\n"                                                   /* 32 */
    "  - { when: {}, per_gpu_second: 1 }\n"                        /* 33 */
    "overrides:\n"                                                 /* 34 */
    "  - { when: { tenant.id: x }, discount: 1.5 }\n"              /* 35 */
    "  - { when: { tenant.id: y } }\n"                             /* 36 */
    "providers:\n"                                                 /* 37 */
    "  - { match: anthropic, cache_mode: add }\n"                  /* 38 */
    "  - match: \"\"\n"                                            /* 39 */
    "    cache_mode: additive\n"                                   /* 40 */
    "unit_price: 3\n";                                             /* 41 */

static void test_every_error_names_file_and_line(void **state)
{
    (void)state;
    const char *path = tmp_file("bad.yaml", BAD_CARD);
    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load(false, &path, 1, &errs);
    assert_null(card);
    static const struct {
        int line;
        const char *what;
    } expected[] = {
        {5, "colour: unknown key"},
        {3, "currency: \"usd\" is not an ISO 4217 code"},
        {8, "models[0].prices.input: \"1e-3\" is not a decimal amount"},
        {10, "models[1].prics: unknown key (did you mean \"prices\"?)"},
        {11, "models[2].match: bad regular expression"},
        {14, "models[3].prices.input: \"-1\" must not be negative"},
        {14, "models[3].prices.output: \"1.0000000001\" has more than 9 decimals"},
        {16, "models[4].effective_from: \"2026-02-30\" is not a date"},
        {19, "models[5].cache_mode: \"sometimes\" is not one of subtract, additive"},
        {20, "models[5].prices.output: required"},
        {22, "models[5].tiers[0].input_tokens_above: \"lots\" is not a token count"},
        {23, "models[5].tiers[1].prices: needs at least one price"},
        {26, "models[7]: \"f\" is listed twice (first at line 24)"},
        {28, "models[8]: expected a map"},
        {30, "tools[0].per_call: required"},
        {31, "tools[1].extra: unknown key"},
        {33, "compute[0].when: needs 1 to 16 attributes"},
        {35, "overrides[0].discount: \"1.5\" must be at most 1"},
        {36, "overrides[1]: needs a discount or models"},
        {38, "providers[0].cache_mode: \"add\" is not one of subtract, additive"},
        {39, "providers[1].match: must not be empty"},
        {41, "unit_price: unknown key"},
    };
    bool ok = true;
    for (size_t i = 0; i < AM_ARRAY_SIZE(expected); i++) {
        char needle[256];
        snprintf(needle, sizeof(needle), "%s:%d: %s", path, expected[i].line, expected[i].what);
        if (!errors_contain(&errs, needle)) {
            fprintf(stderr, "missing error: %s\n", needle);
            ok = false;
        }
    }
    if (!ok || errs.count != AM_ARRAY_SIZE(expected)) {
        print_errors(&errs);
    }
    assert_true(ok);
    assert_int_equal(errs.count, AM_ARRAY_SIZE(expected));
    am_errors_clear(&errs);
}

static void test_missing_header_and_file(void **state)
{
    (void)state;
    const char *paths[] = {tmp_file("head.yaml", "id: x\nmodels: []\n"),
                           "/nonexistent/agentmeter/card.yaml"};
    am_errors_t errs = {0};
    assert_null(am__ratecard_load(false, paths, 2, &errs));
    char needle[600];
    snprintf(needle, sizeof(needle), "%s:1: version: required", paths[0]);
    assert_true(errors_contain(&errs, needle));
    snprintf(needle, sizeof(needle), "%s:1: currency: required", paths[0]);
    assert_true(errors_contain(&errs, needle));
    snprintf(needle, sizeof(needle), "%s:1: unit: required", paths[0]);
    assert_true(errors_contain(&errs, needle));
    assert_true(errors_contain(&errs, "/nonexistent/agentmeter/card.yaml: cannot open"));
    am_errors_clear(&errs);

    /* YAML syntax errors come through the config loader with their line. */
    const char *syntax = tmp_file("syntax.yaml", "id: x\nversion: \"1\"\nmodels: [\n");
    assert_null(am__ratecard_load(false, &syntax, 1, &errs));
    snprintf(needle, sizeof(needle), "%s:", syntax);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.msgs[0], needle));
    am_errors_clear(&errs);

    /* Neither files nor the built-in: nothing to price with. */
    assert_null(am__ratecard_load(false, NULL, 0, &errs));
    assert_int_equal(errs.count, 1);
    am_errors_clear(&errs);
}

static void test_currency_must_agree(void **state)
{
    (void)state;
    const char *eur = tmp_file("eur.yaml", "id: e\nversion: \"1\"\ncurrency: EUR\nunit: per_1m\n"
                                           "models:\n"
                                           "  - { match: m, prices: { input: 1, output: 1 } }\n");
    am_errors_t errs = {0};
    assert_null(am__ratecard_load(true, &eur, 1, &errs));
    char needle[600];
    snprintf(needle, sizeof(needle),
             "%s:3: currency: EUR differs from USD in " AM__RC_BUILTIN_NAME ":", eur);
    assert_true(errors_contain(&errs, needle));
    am_errors_clear(&errs);
    am__ratecard_t *card = am__ratecard_load(false, &eur, 1, &errs);
    assert_non_null(card);
    assert_string_equal(card->currency, "EUR");
    am__ratecard_free(card);
}

static void test_builtin_card(void **state)
{
    (void)state;
    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load(true, NULL, 0, &errs);
    print_errors(&errs);
    assert_non_null(card);
    assert_int_equal(errs.count, 0);
    assert_string_equal(card->currency, "USD");
    assert_int_equal(card->n_sources, 1);
    assert_string_equal(card->sources[0], "agentmeter-default@2026-11-01");
    assert_true(am__ratecard_count_models(card) >= 40);
    assert_true(card->n_tools >= 5);
    assert_true(card->n_compute >= 4);
    /* Every provider family the issue names has an entry. */
    static const char *const must_price[] = {
        "gpt-5",
        "gpt-5-mini",
        "gpt-4.1",
        "o3",
        "claude-sonnet-4-5",
        "claude-opus-4-1-20250805",
        "claude-haiku-4-5-20251001",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "mistral-large-2411",
        "deepseek-chat",
        "grok-4",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "amazon.nova-pro-v1:0",
        "claude-sonnet-4-5@20250929",
    };
    for (size_t i = 0; i < AM_ARRAY_SIZE(must_price); i++) {
        if (am__rc_find_model(&card->models, must_price[i], NULL, T_2026_06_01, NULL) == NULL) {
            fail_msg("built-in card does not price %s", must_price[i]);
        }
    }
    /* Sanity of the data: every entry has input and output, cache reads are
     * never dearer than input, tiers never cheaper than the base. */
    for (size_t i = 0; i < card->models.n; i++) {
        const am__rc_model_t *m = &card->models.items[i];
        assert_true(m->prices.set[AM__RC_INPUT] && m->prices.set[AM__RC_OUTPUT]);
        if (m->prices.set[AM__RC_CACHE_READ] &&
            m->prices.value[AM__RC_CACHE_READ] > m->prices.value[AM__RC_INPUT]) {
            fail_msg("%s:%d: %s: cache_read above input", m->file, m->line, m->match.text);
        }
        for (size_t t = 0; t < m->n_tiers; t++) {
            for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
                if (m->tiers[t].prices.set[k] && m->prices.set[k] &&
                    m->tiers[t].prices.value[k] < m->prices.value[k]) {
                    fail_msg("%s:%d: %s: tier %s below base", m->file, m->line, m->match.text,
                             am__rc_part_names[k]);
                }
            }
        }
    }
    am__ratecard_free(card);
}

static void test_merge_later_file_wins(void **state)
{
    (void)state;
    const char *a =
        tmp_file("a.yaml", "id: a\nversion: \"1\"\ncurrency: USD\nunit: per_1m\n"
                           "models:\n"
                           "  - { match: m, prices: { input: 1, output: 1 } }\n"
                           "  - { match: m, provider: p, prices: { input: 2, output: 2 } }\n"
                           "  - { match: keep, prices: { input: 3, output: 3 } }\n"
                           "tools:\n"
                           "  - { match: t, per_call: 0.5 }\n"
                           "overrides:\n"
                           "  - { when: { tenant.id: x }, discount: 0.5 }\n");
    const char *b = tmp_file("b.yaml", "id: b\nversion: \"2\"\ncurrency: USD\nunit: per_1k\n"
                                       "models:\n"
                                       "  - { match: M, prices: { input: 0.005, output: 0.005 } }\n"
                                       "tools:\n"
                                       "  - { match: t, per_call: 0.25 }\n"
                                       "overrides:\n"
                                       "  - { when: { tenant.id: x }, discount: 0.1 }\n");
    const char *paths[] = {a, b};
    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load(false, paths, 2, &errs);
    print_errors(&errs);
    assert_non_null(card);
    assert_int_equal(card->models.n, 3);
    assert_int_equal(am__ratecard_count_models(card), 2);
    const am__rc_model_t *m = am__rc_find_model(&card->models, "m", NULL, 0, NULL);
    assert_non_null(m);
    assert_string_equal(m->price_id, "b@2:M"); /* replaced, with b's unit */
    assert_int_equal(m->unit_tokens, 1000);
    assert_int_equal(m->prices.value[AM__RC_INPUT], 5000000);
    /* The provider-filtered entry has another key: it stays, and wins for p. */
    m = am__rc_find_model(&card->models, "m", "P", 0, NULL);
    assert_string_equal(m->price_id, "a@1:m[provider=p]");
    assert_int_equal(card->n_tools, 1);
    assert_int_equal(card->tools[0].per_call, 250000000);
    assert_int_equal(card->n_overrides, 1);
    assert_int_equal(card->overrides[0].discount, 100000000);
    assert_int_equal(card->n_sources, 2);
    am__ratecard_free(card);
}

static void test_load_buffer(void **state)
{
    (void)state;
    am_errors_t errs = {0};
    am__ratecard_t *card =
        am__ratecard_load_buffer("mem.yaml", TEST_CARD, strlen(TEST_CARD), &errs);
    print_errors(&errs);
    assert_non_null(card);
    assert_int_equal(card->models.n, 11);
    assert_int_equal(card->n_overrides, 2);
    assert_int_equal(card->overrides[1].models.n, 1);
    am__ratecard_free(card);
    card = am__ratecard_load_buffer("mem.yaml", "- a\n", 4, &errs);
    assert_null(card);
    assert_true(errors_contain(&errs, "mem.yaml:1: "));
    am_errors_clear(&errs);
}

static void test_parse_date(void **state)
{
    (void)state;
    int64_t ns = 0;
    assert_int_equal(am__rc_parse_date("2026-06-01", &ns), 0);
    assert_int_equal(ns, T_2026_06_01);
    assert_int_equal(am__rc_parse_date("2024-02-29", &ns), 0);
    assert_int_not_equal(am__rc_parse_date("2025-02-29", &ns), 0);
    assert_int_not_equal(am__rc_parse_date("2026-6-01", &ns), 0);
    assert_int_not_equal(am__rc_parse_date("2026-06-01T00:00:00Z", &ns), 0);
    assert_int_not_equal(am__rc_parse_date("1969-12-31", &ns), 0);
}

/* Every allocation failing in turn never crashes or leaks (ASan builds):
 * the load either fails cleanly or, where a failure is harmless, succeeds. */
static void test_failmalloc(void **state)
{
    (void)state;
    long nth;
    for (nth = 1; nth < 1000000; nth++) {
        am_errors_t errs = {0};
        am_alloc_set_fail_after(nth);
        am__ratecard_t *card =
            am__ratecard_load_buffer("mem.yaml", TEST_CARD, strlen(TEST_CARD), &errs);
        long made = am_alloc_set_fail_after(0);
        bool loaded = card != NULL;
        am_errors_clear(&errs);
        am__ratecard_free(card);
        if (made < nth) {
            assert_true(loaded); /* no failure injected: it must load */
            break;
        }
    }
    assert_true(nth > 50);
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
        cmocka_unit_test(test_every_error_names_file_and_line),
        cmocka_unit_test(test_missing_header_and_file),
        cmocka_unit_test(test_currency_must_agree),
        cmocka_unit_test(test_builtin_card),
        cmocka_unit_test(test_merge_later_file_wins),
        cmocka_unit_test(test_load_buffer),
        cmocka_unit_test(test_parse_date),
        cmocka_unit_test(test_failmalloc),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
