/*
 * Model matching (ARCHITECTURE.md §7): exact (raw name, then version/date
 * suffixes stripped) > glob > regex; the longest literal wins; provider
 * filters; versions by effective_from; never a prefix or substring.
 */
#include "processors/ratecard/rc_test_util.h"

static const char MATCH_CARD[] =
    "id: m\nversion: \"1\"\ncurrency: USD\nunit: per_1m\n"
    "models:\n"
    "  - { match: gpt-5, prices: { input: 1, output: 1 } }\n"
    "  - { match: gpt-5-mini, prices: { input: 2, output: 1 } }\n"
    "  - { match: gpt-4o, prices: { input: 3, output: 1 } }\n"
    "  - { match: gpt-4o-2024-05-13, prices: { input: 4, output: 1 } }\n"
    "  - { match: \"glob:claude-*\", prices: { input: 5, output: 1 } }\n"
    "  - { match: \"glob:claude-sonnet-*\", prices: { input: 6, output: 1 } }\n"
    "  - { match: claude-sonnet-4-5, prices: { input: 7, output: 1 } }\n"
    "  - { match: \"re:^claude-sonnet-4-5-[0-9]+-v[0-9]:[0-9]$\", prices: { input: 8, output: 1 } "
    "}\n"
    "  - { match: \"re:^mistral-.*$\", prices: { input: 9, output: 1 } }\n"
    "  - { match: \"glob:*nova-pro*\", prices: { input: 10, output: 1 } }\n"
    "  - { match: shared, prices: { input: 11, output: 1 } }\n"
    "  - { match: shared, provider: azure.ai.openai, prices: { input: 12, output: 1 } }\n"
    "  - { match: ver, prices: { input: 13, output: 1 } }\n"
    "  - { match: ver, effective_from: 2026-01-01, prices: { input: 14, output: 1 } }\n"
    "  - { match: ver, effective_from: 2026-06-01, prices: { input: 15, output: 1 } }\n"
    "  - { match: late, effective_from: 2026-06-01, prices: { input: 16, output: 1 } }\n"
    "  - { match: only-openai, provider: openai, prices: { input: 17, output: 1 } }\n"
    "  - { match: llama, prices: { input: 18, output: 1 } }\n"
    "tools:\n"
    "  - { match: web_search, per_call: 1 }\n"
    "  - { match: \"glob:web_*\", per_call: 2 }\n"
    "  - { match: \"re:^mcp\\\\.\", per_call: 3 }\n"
    "providers:\n"
    "  - { match: anthropic, cache_mode: additive }\n";

static am__ratecard_t *card;

static int setup(void **state)
{
    (void)state;
    am_errors_t errs = {0};
    card = am__ratecard_load_buffer("match.yaml", MATCH_CARD, strlen(MATCH_CARD), &errs);
    print_errors(&errs);
    am_errors_clear(&errs);
    return card != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    am__ratecard_free(card);
    return 0;
}

/* The input price (in whole units) of the entry chosen, or -1. */
static int64_t pick(const char *model, const char *provider, int64_t at_ns)
{
    const am__rc_model_t *m = am__rc_find_model(&card->models, model, provider, at_ns, NULL);
    return m != NULL ? m->prices.value[AM__RC_INPUT] / AM_MONEY_SCALE : -1;
}

static void test_exact_never_prefix(void **state)
{
    (void)state;
    assert_int_equal(pick("gpt-5", NULL, 0), 1);
    assert_int_equal(pick("gpt-5-mini", NULL, 0), 2);
    assert_int_equal(pick("GPT-5-Mini", NULL, 0), 2); /* case-insensitive */
    assert_int_equal(pick("gpt-5-nano", NULL, 0), -1);
    assert_int_equal(pick("gpt-5.1", NULL, 0), -1);
    assert_int_equal(pick("gpt-", NULL, 0), -1);
    assert_int_equal(pick("gpt-5-mini-extra", NULL, 0), -1);
    assert_int_equal(pick("xgpt-5", NULL, 0), -1);
    assert_int_equal(pick("", NULL, 0), -1);
    assert_int_equal(pick(NULL, NULL, 0), -1);
}

static void test_suffixes(void **state)
{
    (void)state;
    am__rc_match_info_t info;
    /* Raw name first: a dated entry keeps its own price. */
    assert_int_equal(pick("gpt-4o-2024-05-13", NULL, 0), 4);
    assert_non_null(am__rc_find_model(&card->models, "gpt-4o-2024-05-13", NULL, 0, &info));
    assert_false(info.stripped);
    assert_int_equal(pick("gpt-4o-2024-08-06", NULL, 0), 3);
    assert_non_null(am__rc_find_model(&card->models, "gpt-4o-2024-08-06", NULL, 0, &info));
    assert_true(info.stripped);
    assert_int_equal(pick("gpt-5-2025-08-07", NULL, 0), 1);
    assert_int_equal(pick("gpt-5-mini-20250807", NULL, 0), 2);
    assert_int_equal(pick("gpt-5@20250807", NULL, 0), 1);
    assert_int_equal(pick("llama-v2", NULL, 0), 18);
    assert_int_equal(pick("llama-v1:0", NULL, 0), 18);
    assert_int_equal(pick("llama-20250101-v1:0", NULL, 0), 18); /* both, stacked */
    /* Not a date or version: left alone. */
    assert_int_equal(pick("gpt-5-0807", NULL, 0), -1);
    assert_int_equal(pick("gpt-5-19991231", NULL, 0), -1);
    assert_int_equal(pick("gpt-5-2025-13", NULL, 0), -1);
    assert_int_equal(pick("llama-v", NULL, 0), -1);
    assert_int_equal(pick("llamav2", NULL, 0), -1);

    assert_int_equal(am__rc_strip_suffix("a-2025-01-02", 12), 1);
    assert_int_equal(am__rc_strip_suffix("a-20250102", 10), 1);
    assert_int_equal(am__rc_strip_suffix("a@20250102", 10), 1);
    assert_int_equal(am__rc_strip_suffix("a-v12", 5), 1);
    assert_int_equal(am__rc_strip_suffix("a-v1:0", 6), 1);
    assert_int_equal(am__rc_strip_suffix("a-v:0", 5), 5);
    assert_int_equal(am__rc_strip_suffix("-v1", 3), 3); /* nothing would be left */
    assert_int_equal(am__rc_strip_suffix("a-1", 3), 3);
}

static void test_precedence(void **state)
{
    (void)state;
    am__rc_match_info_t info;
    /* exact beats every glob */
    assert_int_equal(pick("claude-sonnet-4-5", NULL, 0), 7);
    /* exact after stripping beats a glob and a regex on the raw name */
    assert_int_equal(pick("claude-sonnet-4-5-20250929", NULL, 0), 7);
    /* glob beats regex, even a regex with a longer literal that matches too */
    assert_int_equal(pick("claude-sonnet-4-5-1-v1:0", NULL, 0), 6);
    assert_non_null(am__rc_find_model(&card->models, "claude-sonnet-4-5-1-v1:0", NULL, 0, &info));
    assert_int_equal(info.kind, AM__RC_GLOB);
    /* the longest literal wins among globs */
    assert_int_equal(pick("claude-sonnet-9", NULL, 0), 6);
    assert_int_equal(pick("claude-haiku-9", NULL, 0), 5);
    assert_non_null(am__rc_find_model(&card->models, "claude-haiku-9", NULL, 0, &info));
    assert_int_equal(info.kind, AM__RC_GLOB);
    /* regex, case-insensitive */
    assert_int_equal(pick("Mistral-Large-2411", NULL, 0), 9);
    assert_non_null(am__rc_find_model(&card->models, "mistral-x", NULL, 0, &info));
    assert_int_equal(info.kind, AM__RC_REGEX);
    assert_int_equal(pick("us.amazon.nova-pro-v1:0", NULL, 0), 10);
}

static void test_provider_filter(void **state)
{
    (void)state;
    assert_int_equal(pick("shared", NULL, 0), 11);
    assert_int_equal(pick("shared", "openai", 0), 11);
    assert_int_equal(pick("shared", "Azure.AI.OpenAI", 0), 12);
    assert_int_equal(pick("only-openai", "openai", 0), 17);
    assert_int_equal(pick("only-openai", "OpenAI", 0), 17);
    assert_int_equal(pick("only-openai", "azure.ai.openai", 0), -1);
    assert_int_equal(pick("only-openai", NULL, 0), -1);
    /* cache_mode from the provider list */
    assert_int_equal(am__rc_cache_mode(card, NULL, "Anthropic"), AM__RC_CACHE_ADDITIVE);
    assert_int_equal(am__rc_cache_mode(card, NULL, "openai"), AM__RC_CACHE_SUBTRACT);
    assert_int_equal(am__rc_cache_mode(card, NULL, NULL), AM__RC_CACHE_SUBTRACT);
}

static void test_versions(void **state)
{
    (void)state;
    int64_t jan = T_2026_06_01 - INT64_C(151) * 86400 * 1000000000; /* 2026-01-01 */
    assert_int_equal(pick("ver", NULL, jan - 1), 13);
    assert_int_equal(pick("ver", NULL, jan), 14);
    assert_int_equal(pick("ver", NULL, T_2026_06_01 - 1), 14);
    assert_int_equal(pick("ver", NULL, T_2026_06_01), 15);
    assert_int_equal(pick("ver-2026-07-01", NULL, T_2026_06_01 + 1), 15);
    /* An entry that is not in effect yet prices nothing. */
    assert_int_equal(pick("late", NULL, T_2026_06_01 - 1), -1);
    assert_int_equal(pick("late", NULL, T_2026_06_01), 16);
}

static void test_tools(void **state)
{
    (void)state;
    assert_int_equal(am__rc_find_tool(card, "web_search")->per_call, AM_MONEY_SCALE);
    assert_int_equal(am__rc_find_tool(card, "web_fetch")->per_call, 2 * AM_MONEY_SCALE);
    assert_int_equal(am__rc_find_tool(card, "mcp.github")->per_call, 3 * AM_MONEY_SCALE);
    assert_null(am__rc_find_tool(card, "web"));
    assert_null(am__rc_find_tool(card, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_never_prefix), cmocka_unit_test(test_suffixes),
        cmocka_unit_test(test_precedence),         cmocka_unit_test(test_provider_filter),
        cmocka_unit_test(test_versions),           cmocka_unit_test(test_tools),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
