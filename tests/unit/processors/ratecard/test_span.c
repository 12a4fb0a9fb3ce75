/*
 * The ratecard processor on traces shaped like real instrumentations emit
 * them (OpenTelemetry GenAI, OpenLLMetry, OpenInference; attribute names of
 * ARCHITECTURE.md §5), priced from TEST_CARD.  Every expected figure is
 * computed by hand in the comment next to it, in nano-USD.
 */
#include "processors/ratecard/rc_test_util.h"

#include "am_selfmetrics.h"

static const char *card_path;
static const int64_t T0 = T_2026_06_01 - INT64_C(86400000000000) * 30; /* 2026-05-02 */

static int setup(void **state)
{
    (void)state;
    card_path = tmp_file("card.yaml", TEST_CARD);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tmp_cleanup();
    return 0;
}

/* OTel GenAI: invoke_agent (repeating its children's totals) over two chat
 * calls and a tool call. */
static void test_otel_genai_agent_trace(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    tb_resource_str(&tb, "service.name", "support-bot");
    am_pb_span_t *agent =
        tb_span(&tb, "invoke_agent support", T0, 5000000000, "gen_ai.operation.name", 's',
                "invoke_agent", "gen_ai.request.model", 's', "gpt-5", "gen_ai.usage.input_tokens",
                'i', I64(20000), "gen_ai.usage.output_tokens", 'i', I64(4000), NULL);
    /* input 10000 incl. 4000 cache reads; output 2000 incl. 500 reasoning:
     *   uncached 6000 x 1.25 /1M = 0.0075
     *   cache    4000 x 0.125/1M = 0.0005
     *   output   1500 x 10   /1M = 0.015
     *   reason    500 x 10   /1M = 0.005   (no reasoning price: output's)
     *   total                    = 0.028 */
    am_pb_span_t *chat1 =
        tb_span(&tb, "chat gpt-5", T0, 1000000000, "gen_ai.operation.name", 's', "chat",
                "gen_ai.provider.name", 's', "openai", "gen_ai.request.model", 's', "gpt-5",
                "gen_ai.response.model", 's', "gpt-5-2025-08-07", "gen_ai.usage.input_tokens", 'i',
                I64(10000), "gen_ai.usage.output_tokens", 'i', I64(2000),
                "gen_ai.usage.cache_read.input_tokens", 'i', I64(4000),
                "gen_ai.usage.reasoning.output_tokens", 'i', I64(500), NULL);
    /* Same usage on gpt-5-mini: 0.0015 + 0.0001 + 0.003 + 0.001 = 0.0056 */
    am_pb_span_t *chat2 = tb_span(
        &tb, "chat gpt-5-mini", T0, 1000000000, "gen_ai.operation.name", 's', "chat",
        "gen_ai.request.model", 's', "gpt-5-mini", "gen_ai.usage.input_tokens", 'i', I64(10000),
        "gen_ai.usage.output_tokens", 'i', I64(2000), "gen_ai.usage.cache_read.input_tokens", 'i',
        I64(4000), "gen_ai.usage.reasoning.output_tokens", 'i', I64(500), NULL);
    am_pb_span_t *tool =
        tb_span(&tb, "execute_tool web_search", T0, 300000000, "gen_ai.operation.name", 's',
                "execute_tool", "gen_ai.tool.name", 's', "web_search", NULL);
    am_pb_span_t *http =
        tb_span(&tb, "GET /v1/things", T0, 1000000, "http.method", 's', "GET", NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(p.capture.batches, 1);

    assert_status(agent, "not_billable");
    assert_int_equal(refs[0].cost_self, 0);
    assert_int_equal(span_nano(agent, "cost.self"), 0);
    assert_null(span_str(agent, "gen_ai.usage.cost.source"));

    assert_status(chat1, "priced");
    assert_int_equal(refs[1].cost_self, 28000000);
    assert_int_equal(span_nano(chat1, "cost.self"), 28000000);
    assert_int_equal(span_nano(chat1, "gen_ai.usage.cost.amount"), 28000000);
    assert_string_equal(span_str(chat1, "gen_ai.usage.cost.currency"), "USD");
    assert_string_equal(span_str(chat1, "gen_ai.usage.cost.source"), "local");
    assert_string_equal(span_str(chat1, "cost.currency"), "USD");
    assert_int_equal(span_nano(chat1, "cost.input"), 7500000);
    assert_int_equal(span_nano(chat1, "cost.cache_read"), 500000);
    assert_int_equal(span_nano(chat1, "cost.output"), 15000000);
    assert_int_equal(span_nano(chat1, "cost.reasoning"), 5000000);
    assert_int_equal(span_nano(chat1, "cost.cache_write"), INT64_MIN); /* no such tokens */
    assert_int_equal(span_nano(chat1, "cost.tool"), INT64_MIN);
    assert_string_equal(span_str(chat1, "cost.price_id"), "test-card@7:gpt-5");

    assert_status(chat2, "priced");
    assert_int_equal(refs[2].cost_self, 5600000);
    assert_string_equal(span_str(chat2, "cost.price_id"), "test-card@7:gpt-5-mini");

    assert_status(tool, "priced");
    assert_int_equal(refs[3].cost_self, 10000000);
    assert_int_equal(span_nano(tool, "cost.tool"), 10000000);
    assert_string_equal(span_str(tool, "cost.price_id"), "test-card@7:tool:web_search");

    assert_status(http, "no_usage");
    assert_int_equal(refs[4].cost_self, 0);
    assert_string_equal(span_str(http, "cost.currency"), "USD");

    /* The trace costs exactly its leaves: 0.028 + 0.0056 + 0.01. */
    int64_t sum = 0;
    for (int i = 0; i < 5; i++) {
        sum += refs[i].cost_self;
    }
    assert_int_equal(sum, 43600000);
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* OpenLLMetry (traceloop): workflow and task spans above an Anthropic call
 * whose instrumentation reports cache tokens apart from input tokens. */
static void test_openllmetry_additive_cache(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    am_pb_span_t *workflow =
        tb_span(&tb, "support.workflow", T0, 4000000000, "traceloop.span.kind", 's', "workflow",
                "gen_ai.usage.prompt_tokens", 'i', I64(3100), NULL);
    am_pb_span_t *task = tb_span(&tb, "answer.task", T0, 3000000000, "traceloop.span.kind", 's',
                                 "task", "llm.usage.total_tokens", 'i', I64(3600), NULL);
    /* claude-x (additive, date suffix -YYYYMMDD stripped, provider matched
     * case-insensitively):
     *   input        1000 x 3.00/1M = 0.003
     *   output        500 x 15  /1M = 0.0075
     *   cache_read   2000 x 0.30/1M = 0.0006
     *   cache_write   100 x 3.75/1M = 0.000375
     *   total                       = 0.011475 */
    am_pb_span_t *llm =
        tb_span(&tb, "anthropic.chat", T0, 2000000000, "llm.request.type", 's', "chat",
                "gen_ai.system", 's', "Anthropic", "gen_ai.request.model", 's', "claude-x-20250101",
                "gen_ai.usage.prompt_tokens", 'i', I64(1000), "gen_ai.usage.completion_tokens", 'i',
                I64(500), "gen_ai.usage.cache_read_input_tokens", 'i', I64(2000),
                "gen_ai.usage.cache_creation_input_tokens", 'i', I64(100), NULL);
    /* The same call from a provider the entry is not filtered to: unpriced. */
    am_pb_span_t *other =
        tb_span(&tb, "bedrock.chat", T0, 2000000000, "llm.request.type", 's', "chat",
                "gen_ai.system", 's', "aws.bedrock", "gen_ai.request.model", 's', "claude-x",
                "gen_ai.usage.prompt_tokens", 'i', I64(1000), NULL);
    /* A provider whose instrumentation reports cache apart (`providers:`):
     * claude-z-1 (glob, no cache price: input's) 1000 x 1 + 500 x 1 + 100 x 5
     * = 0.002; subtracting would have given 0.0015. */
    am_pb_span_t *bedrock =
        tb_span(&tb, "bedrock.chat", T0, 1000, "gen_ai.system", 's', "aws.bedrock",
                "gen_ai.request.model", 's', "claude-z-1", "gen_ai.usage.input_tokens", 'i',
                I64(1000), "gen_ai.usage.output_tokens", 'i', I64(100),
                "gen_ai.usage.cache_read.input_tokens", 'i', I64(500), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[4].cost_self, 2000000);
    assert_int_equal(span_nano(bedrock, "cost.cache_read"), 500000);
    assert_status(workflow, "not_billable");
    assert_status(task, "not_billable");
    assert_int_equal(refs[0].cost_self + refs[1].cost_self, 0);
    assert_status(llm, "priced");
    assert_int_equal(refs[2].cost_self, 11475000);
    assert_int_equal(span_nano(llm, "cost.input"), 3000000);
    assert_int_equal(span_nano(llm, "cost.output"), 7500000);
    assert_int_equal(span_nano(llm, "cost.cache_read"), 600000);
    assert_int_equal(span_nano(llm, "cost.cache_write"), 375000);
    assert_string_equal(span_str(llm, "cost.price_id"), "test-card@7:claude-x[provider=anthropic]");
    assert_status(other, "unpriced_model");
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* OpenInference: AGENT and CHAIN spans are not billed; LLM spans use the
 * llm.* names; a dated name has its own entry or falls back to the undated. */
static void test_openinference_shapes(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    am_pb_span_t *agent =
        tb_span(&tb, "Agent", T0, 1000, "openinference.span.kind", 's', "AGENT",
                "llm.token_count.prompt", 'i', I64(5000), "llm.model_name", 's', "gpt-4o", NULL);
    am_pb_span_t *chain =
        tb_span(&tb, "RunnableSequence", T0, 1000, "openinference.span.kind", 's', "CHAIN",
                "llm.token_count.prompt", 'i', I64(5000), "llm.model_name", 's', "gpt-4o", NULL);
    /* gpt-4o-2024-08-06 -> gpt-4o: 1000 x 2.50 + 100 x 10 = 0.0025 + 0.001 */
    am_pb_span_t *llm1 =
        tb_span(&tb, "ChatOpenAI", T0, 1000, "openinference.span.kind", 's', "LLM", "llm.provider",
                's', "openai", "llm.model_name", 's', "gpt-4o-2024-08-06", "llm.token_count.prompt",
                'i', I64(1000), "llm.token_count.completion", 'i', I64(100), NULL);
    /* gpt-4o-2024-05-13 has its own price: 1000 x 5 + 100 x 15 = 0.005 + 0.0015 */
    am_pb_span_t *llm2 =
        tb_span(&tb, "ChatOpenAI", T0, 1000, "openinference.span.kind", 's', "LLM",
                "llm.model_name", 's', "gpt-4o-2024-05-13", "llm.token_count.prompt", 'i',
                I64(1000), "llm.token_count.completion", 'i', I64(100), NULL);
    /* Cache read and reasoning details, o-think has a reasoning price:
     *   uncached (1000-200) x 1 = 0.0008; cache 200 x 1 (input's) = 0.0002
     *   output (300-100) x 4 = 0.0008; reasoning 100 x 8 = 0.0008 -> 0.0026 */
    am_pb_span_t *llm3 = tb_span(
        &tb, "ChatOpenAI", T0, 1000, "openinference.span.kind", 's', "LLM", "llm.model_name", 's',
        "o-think", "llm.token_count.prompt", 'i', I64(1000), "llm.token_count.completion", 'i',
        I64(300), "llm.token_count.prompt_details.cache_read", 'i', I64(200),
        "llm.token_count.completion_details.reasoning", 'i', I64(100), NULL);
    am_pb_span_t *tool = tb_span(&tb, "mcp_search", T0, 1000, "openinference.span.kind", 's',
                                 "TOOL", "tool.name", 's', "mcp_search", NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_status(agent, "not_billable");
    assert_status(chain, "not_billable");
    assert_int_equal(refs[0].cost_self + refs[1].cost_self, 0);
    assert_int_equal(refs[2].cost_self, 3500000);
    assert_string_equal(span_str(llm1, "cost.price_id"), "test-card@7:gpt-4o");
    assert_int_equal(refs[3].cost_self, 6500000);
    assert_string_equal(span_str(llm2, "cost.price_id"), "test-card@7:gpt-4o-2024-05-13");
    assert_int_equal(refs[4].cost_self, 2600000);
    assert_int_equal(span_nano(llm3, "cost.reasoning"), 800000);
    assert_int_equal(span_nano(llm3, "cost.cache_read"), 200000);
    assert_int_equal(refs[5].cost_self, 2000000); /* glob:mcp_* */
    assert_status(tool, "priced");
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* gpt-5, gpt-5-mini and gpt-5.1 are three prices, never one prefix. */
static void test_gpt5_family_distinct(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    const char *models[] = {"gpt-5", "gpt-5-mini", "gpt-5.1", "gpt-5-nano", "gpt-5.1-mini"};
    for (size_t i = 0; i < AM_ARRAY_SIZE(models); i++) {
        tb_span(&tb, "chat", T0, 1000, "gen_ai.operation.name", 's', "chat", "gen_ai.request.model",
                's', models[i], "gen_ai.usage.input_tokens", 'i', I64(1000000),
                "gen_ai.usage.output_tokens", 'i', I64(1000000), NULL);
    }
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[0].cost_self, INT64_C(11250000000)); /* 1.25 + 10 */
    assert_int_equal(refs[1].cost_self, INT64_C(2250000000));  /* 0.25 + 2 */
    assert_int_equal(refs[2].cost_self, INT64_C(18000000000)); /* 2 + 16 */
    assert_status(tb.ss->spans[3], "unpriced_model");
    assert_status(tb.ss->spans[4], "unpriced_model");
    assert_int_equal(refs[3].cost_self, 0);
    assert_null(span_str(tb.ss->spans[3], "gen_ai.usage.cost.source"));
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* Above input_tokens_above the whole request moves to the tier's prices. */
static void test_tier_cliff(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    /* additive: 140000 + 60000 cache = 200000, not above: base prices
     *   140000 x 3 = 0.42; 1000 x 15 = 0.015; 60000 x 0.30 = 0.018 -> 0.453 */
    tb_span(&tb, "chat", T0, 1000, "gen_ai.provider.name", 's', "anthropic", "gen_ai.request.model",
            's', "claude-x", "gen_ai.usage.input_tokens", 'i', I64(140000),
            "gen_ai.usage.output_tokens", 'i', I64(1000), "gen_ai.usage.cache_read.input_tokens",
            'i', I64(60000), NULL);
    /* 150000 + 60000 = 210000 > 200000: tier for every part
     *   150000 x 6 = 0.9; 1000 x 22.5 = 0.0225; 60000 x 0.60 = 0.036 -> 0.9585 */
    tb_span(&tb, "chat", T0, 1000, "gen_ai.provider.name", 's', "anthropic", "gen_ai.request.model",
            's', "claude-x", "gen_ai.usage.input_tokens", 'i', I64(150000),
            "gen_ai.usage.output_tokens", 'i', I64(1000), "gen_ai.usage.cache_read.input_tokens",
            'i', I64(60000), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[0].cost_self, 453000000);
    assert_int_equal(refs[1].cost_self, 958500000);
    assert_int_equal(span_nano(tb.ss->spans[1], "cost.cache_read"), 36000000);
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* The span's start time picks the entry version. */
static void test_effective_from(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    tb_span(&tb, "chat", T_2026_06_01 - 1, 1000, "gen_ai.request.model", 's', "gem",
            "gen_ai.usage.input_tokens", 'i', I64(1000000), NULL);
    tb_span(&tb, "chat", T_2026_06_01, 1000, "gen_ai.request.model", 's', "gem",
            "gen_ai.usage.input_tokens", 'i', I64(1000000), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[0].cost_self, INT64_C(1000000000));
    assert_string_equal(span_str(tb.ss->spans[0], "cost.price_id"), "test-card@7:gem");
    assert_int_equal(refs[1].cost_self, INT64_C(500000000));
    assert_string_equal(span_str(tb.ss->spans[1], "cost.price_id"),
                        "test-card@7:gem[from=2026-06-01]");
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* GPU seconds from gpu.seconds, else duration x gpu.count; `when` matched on
 * resource attributes. */
static void test_compute(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    tb_resource_str(&tb, "gpu.type", "H100");
    /* 2.5 s x 0.0011 = 0.00275 */
    tb_span(&tb, "generate", T0, 2500000000, NULL);
    /* gpu.seconds 10 x 0.0011 = 0.011 */
    tb_span(&tb, "generate", T0, 2500000000, "gpu.seconds", 'd', 10.0, NULL);
    /* 1.5 s x 4 GPUs x 0.0011 = 0.0066 */
    tb_span(&tb, "generate", T0, 1500000000, "gpu.count", 'i', I64(4), NULL);
    /* A self-hosted model not on the card: compute prices it, no flag. */
    tb_span(&tb, "generate", T0, 1000000000, "gen_ai.request.model", 's', "my-llama",
            "gen_ai.usage.input_tokens", 'i', I64(50), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[0].cost_self, 2750000);
    assert_int_equal(span_nano(tb.ss->spans[0], "cost.compute"), 2750000);
    assert_string_equal(span_str(tb.ss->spans[0], "cost.price_id"),
                        "test-card@7:compute[gpu.type=h100]");
    assert_int_equal(refs[1].cost_self, 11000000);
    assert_int_equal(refs[2].cost_self, 6600000);
    assert_int_equal(refs[3].cost_self, 1100000);
    assert_status(tb.ss->spans[3], "priced");
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* Tenant overrides: a discount on every part, or contracted model prices. */
static void test_tenant_overrides(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    /* acme, -20%: input 1000 x 1.25 = 0.00125 -> 0.001; output 1000 x 10 =
     * 0.01 -> 0.008; total 0.009 */
    tb_span(&tb, "chat", T0, 1000, "tenant.id", 's', "acme", "gen_ai.request.model", 's', "gpt-5",
            "gen_ai.usage.input_tokens", 'i', I64(1000), "gen_ai.usage.output_tokens", 'i',
            I64(1000), NULL);
    /* acme tool call: 0.01 -> 0.008 */
    tb_span(&tb, "execute_tool", T0, 1000, "tenant.id", 's', "acme", "gen_ai.operation.name", 's',
            "execute_tool", "gen_ai.tool.name", 's', "web_search", NULL);
    /* bigco's contracted gpt-5: 1000 x 1.00 + 1000 x 8.00 = 0.009 */
    tb_span(&tb, "chat", T0, 1000, "tenant.id", 's', "bigco", "gen_ai.request.model", 's', "gpt-5",
            "gen_ai.usage.input_tokens", 'i', I64(1000), "gen_ai.usage.output_tokens", 'i',
            I64(1000), NULL);
    /* bigco on a model its contract does not list: list price. */
    tb_span(&tb, "chat", T0, 1000, "tenant.id", 's', "bigco", "gen_ai.request.model", 's',
            "gpt-5-mini", "gen_ai.usage.input_tokens", 'i', I64(1000000), NULL);
    /* Small amounts stay exact: 7 tokens x 1.25/1M = 8750 nano; x 0.8 = 7000. */
    tb_span(&tb, "chat", T0, 1000, "tenant.id", 's', "acme", "gen_ai.request.model", 's', "gpt-5",
            "gen_ai.usage.input_tokens", 'i', I64(7), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[0].cost_self, 9000000);
    assert_int_equal(span_nano(tb.ss->spans[0], "cost.input"), 1000000);
    assert_int_equal(span_nano(tb.ss->spans[0], "cost.output"), 8000000);
    assert_string_equal(span_str(tb.ss->spans[0], "cost.price_id"),
                        "test-card@7:gpt-5 + test-card@7:override[tenant.id=acme]");
    assert_int_equal(refs[1].cost_self, 8000000);
    assert_int_equal(refs[2].cost_self, 9000000);
    assert_string_equal(span_str(tb.ss->spans[2], "cost.price_id"),
                        "test-card@7:override[tenant.id=bigco]:gpt-5");
    assert_int_equal(refs[3].cost_self, 250000000);
    assert_int_equal(refs[4].cost_self, 7000);
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* A cost already on the span is kept; our own earlier output is not. */
static void test_supplied_cost(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    tb_t tb = tb_new();
    am_pb_span_t *s1 =
        tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "gpt-5",
                "gen_ai.usage.input_tokens", 'i', I64(1000000), "gen_ai.usage.cost.amount", 'd',
                0.0123, "gen_ai.usage.cost.currency", 's', "EUR", NULL);
    am_pb_span_t *s2 =
        tb_span(&tb, "litellm", T0, 1000, "llm.model_name", 's', "whatever",
                "llm.token_count.prompt", 'i', I64(10), "llm.cost.total", 'd', 0.5, NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_status(s1, "supplied");
    assert_int_equal(refs[0].cost_self, 12300000);
    assert_string_equal(span_str(s1, "cost.currency"), "EUR");
    assert_null(span_str(s1, "cost.price_id"));
    assert_status(s2, "supplied");
    assert_int_equal(refs[1].cost_self, 500000000);

    /* Running the same batch again prices it the same (idempotent). */
    tb_t tb2 = tb_new();
    am_pb_span_t *s3 = tb_span(&tb2, "chat", T0, 1000, "gen_ai.request.model", 's', "gpt-5",
                               "gen_ai.usage.input_tokens", 'i', I64(1000), NULL);
    am_span_ref_t *refs2 = tb_index(&tb2);
    proc_run(&p, &tb2);
    proc_run(&p, &tb2);
    assert_status(s3, "priced");
    assert_int_equal(refs2[0].cost_self, 1250000);
    am_batch_unref(tb.batch);
    am_batch_unref(tb2.batch);
    proc_close(&p);
}

static uint64_t unpriced_count(const char *model)
{
    char labels[200];
    snprintf(labels, sizeof(labels), "model=\"%s\"", model);
    return am_counter_get(am_selfmetrics_counter("agentmeter_ratecard_unpriced_spans_total",
                                                 "Spans with token usage that no rate card entry "
                                                 "prices.",
                                                 labels));
}

/* An unknown model is flagged and counted, never priced 0 silently; spans
 * without usage are no_usage.  Works without a trace index too. */
static void test_unpriced_and_no_index(void **state)
{
    (void)state;
    proc_t p;
    proc_open(&p, false, 0, NULL, card_path, NULL);
    uint64_t before = unpriced_count("mystery-1");
    uint64_t before_none = unpriced_count("(none)");
    tb_t tb = tb_new();
    am_pb_span_t *s1 = tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "mystery-1",
                               "gen_ai.usage.input_tokens", 'i', I64(100), NULL);
    tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "mystery-1",
            "gen_ai.usage.output_tokens", 'i', I64(1), NULL);
    am_pb_span_t *s3 =
        tb_span(&tb, "chat", T0, 1000, "gen_ai.usage.input_tokens", 'i', I64(100), NULL);
    am_pb_span_t *s4 = tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "gpt-5",
                               "gen_ai.usage.input_tokens", 'i', I64(0), NULL);
    /* Negative bucket: cache reads above input (a mixed-up instrumentation)
     * bill uncached input as 0: cache 2000 x 0.125 = 0.00025 */
    am_pb_span_t *s5 = tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "gpt-5",
                               "gen_ai.usage.input_tokens", 'i', I64(1000),
                               "gen_ai.usage.cache_read.input_tokens", 'i', I64(2000), NULL);
    proc_run(&p, &tb); /* no trace index: refs are NULL */
    assert_status(s1, "unpriced_model");
    assert_int_equal(span_nano(s1, "cost.self"), 0);
    assert_null(span_str(s1, "gen_ai.usage.cost.amount"));
    assert_null(span_str(s1, "cost.price_id"));
    assert_int_equal(unpriced_count("mystery-1"), before + 2);
    assert_status(s3, "unpriced_model");
    assert_int_equal(unpriced_count("(none)"), before_none + 1);
    assert_status(s4, "no_usage");
    assert_status(s5, "priced");
    assert_int_equal(span_nano(s5, "cost.self"), 250000);
    assert_int_equal(span_nano(s5, "cost.input"), 0);
    am_batch_unref(tb.batch);
    proc_close(&p);
}

/* Built-in card plus a file that adds a contracted price. */
static void test_files_merge_over_builtin(void **state)
{
    (void)state;
    const char *extra = tmp_file("extra.yaml", "id: contract\n"
                                               "version: \"2026-01\"\n"
                                               "currency: USD\n"
                                               "unit: per_1k\n"
                                               "models:\n"
                                               "  - match: gpt-4o\n"
                                               "    prices: { input: 0.001, output: 0.004 }\n"
                                               "  - match: in-house-7b\n"
                                               "    prices: { input: 0.0001, output: 0.0001 }\n");
    proc_t p;
    proc_open(&p, true, 0, NULL, extra, NULL);
    tb_t tb = tb_new();
    /* gpt-4o replaced: 1000 x 0.001/1K + 1000 x 0.004/1K = 0.005 */
    tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "gpt-4o",
            "gen_ai.usage.input_tokens", 'i', I64(1000), "gen_ai.usage.output_tokens", 'i',
            I64(1000), NULL);
    /* built-in gpt-5 kept: 1M x 1.25 = 1.25 */
    tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "gpt-5",
            "gen_ai.usage.input_tokens", 'i', I64(1000000), NULL);
    tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', "in-house-7b",
            "gen_ai.usage.input_tokens", 'i', I64(10000), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(&p, &tb);
    assert_int_equal(refs[0].cost_self, 5000000);
    assert_string_equal(span_str(tb.ss->spans[0], "cost.price_id"), "contract@2026-01:gpt-4o");
    assert_int_equal(refs[1].cost_self, 1250000000);
    assert_string_equal(span_str(tb.ss->spans[1], "cost.price_id"),
                        "agentmeter-default@2026-11-01:gpt-5");
    assert_int_equal(refs[2].cost_self, 1000000);
    am_batch_unref(tb.batch);
    proc_close(&p);
}

static int64_t price_once(proc_t *p, const char *model)
{
    tb_t tb = tb_new();
    tb_span(&tb, "chat", T0, 1000, "gen_ai.request.model", 's', model, "gen_ai.usage.input_tokens",
            'i', I64(1000000), NULL);
    am_span_ref_t *refs = tb_index(&tb);
    proc_run(p, &tb);
    int64_t cost = refs[0].cost_self;
    am_batch_unref(tb.batch);
    return cost;
}

static void keepalive_tick(uv_timer_t *timer)
{
    (void)timer;
}

/* SIGHUP reload swaps a good card in; a broken one is refused and the old
 * card keeps pricing.  The poll timer notices a changed file by itself. */
static void test_reload(void **state)
{
    (void)state;
    static const char v1[] = "id: r\nversion: \"1\"\ncurrency: USD\nunit: per_1m\nmodels:\n"
                             "  - { match: m, prices: { input: 1, output: 1 } }\n";
    static const char v2[] = "id: r\nversion: \"2\"\ncurrency: USD\nunit: per_1m\nmodels:\n"
                             "  - { match: m, prices: { input: 2, output: 1 } }\n";
    static const char broken[] = "id: r\nversion: \"3\"\ncurrency: USD\nunit: per_1m\nmodels:\n"
                                 "  - { match: m, prices: { input: lots, output: 1 } }\n";
    static const char v4[] = "id: r\nversion: \"4\"\ncurrency: USD\nunit: per_1m\nmodels:\n"
                             "  - { match: m, prices: { input: 4.5, output: 1 } }\n"
                             "  - { match: n, prices: { input: 4.5, output: 1 } }\n";
    const char *path = tmp_file("reload.yaml", v1);
    uv_loop_t loop;
    uv_loop_init(&loop);
    proc_t p;
    proc_open(&p, false, 20, &loop, path, NULL);
    assert_int_equal(price_once(&p, "m"), 1000000000);
    tmp_file("reload.yaml", v2);
    am_processor_ratecard_ops.reload(p.instance);
    assert_int_equal(price_once(&p, "m"), 2000000000);
    tmp_file("reload.yaml", broken);
    am_processor_ratecard_ops.reload(p.instance);
    assert_int_equal(price_once(&p, "m"), 2000000000);

    /* The poll timer: run the loop until the new price shows, with a deadline.
     * The processor's timer does not keep a loop alive (uv_unref), so a
     * keep-alive timer of the test's own does. */
    uv_timer_t keepalive;
    uv_timer_init(&loop, &keepalive);
    uv_timer_start(&keepalive, keepalive_tick, 5, 5);
    tmp_file("reload.yaml", v4);
    uint64_t deadline = am_now_mono_ms() + 5000;
    int64_t cost = 0;
    while ((cost = price_once(&p, "m")) != 4500000000 && am_now_mono_ms() < deadline) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    assert_int_equal(cost, 4500000000);
    uv_close((uv_handle_t *)&keepalive, NULL);
    proc_close(&p);
    /* shutdown closed the timer: the loop ends. */
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_otel_genai_agent_trace),
        cmocka_unit_test(test_openllmetry_additive_cache),
        cmocka_unit_test(test_openinference_shapes),
        cmocka_unit_test(test_gpt5_family_distinct),
        cmocka_unit_test(test_tier_cliff),
        cmocka_unit_test(test_effective_from),
        cmocka_unit_test(test_compute),
        cmocka_unit_test(test_tenant_overrides),
        cmocka_unit_test(test_supplied_cost),
        cmocka_unit_test(test_unpriced_and_no_index),
        cmocka_unit_test(test_files_merge_over_builtin),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
