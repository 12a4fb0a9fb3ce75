/*
 * Fixed-point pricing: parts in 128-bit arithmetic rounded half-up once per
 * part, parts summing exactly to the total, token semantics (subtract vs
 * additive), prices a card leaves out, tier cliffs and inheritance, and
 * negative buckets clamped and counted.
 */
#include "processors/ratecard/rc_test_util.h"

static void test_mul_div_rounding(void **state)
{
    (void)state;
    /* 1 token at 1500 nano per 1K tokens = 1.5 nano -> 2 (half up) */
    assert_int_equal(am__rc_mul_div(1, 1500, 1000), 2);
    assert_int_equal(am__rc_mul_div(1, 1499, 1000), 1);
    assert_int_equal(am__rc_mul_div(3, 1, 2), 2);
    assert_int_equal(am__rc_mul_div(-3, 1, 2), -2); /* away from zero */
    assert_int_equal(am__rc_mul_div(0, 123, 7), 0);
    /* No overflow on the way: 9e18 tokens x 1e12 nano / 1e6 saturates. */
    assert_int_equal(am__rc_mul_div(INT64_C(9000000000000000000), INT64_C(1000000000000), 1000000),
                     INT64_MAX);
    /* Big but representable: 1e12 tokens x $75/1M = $75,000,000 */
    assert_int_equal(am__rc_mul_div(INT64_C(1000000000000), INT64_C(75000000000), 1000000),
                     INT64_C(75000000000000000));
    assert_int_equal(am__rc_mul_div(5, 5, 0), 0);
}

static void test_discount(void **state)
{
    (void)state;
    assert_int_equal(am__rc_discount(1000, 200000000), 800); /* -20% */
    assert_int_equal(am__rc_discount(1001, 200000000), 801); /* 800.8 -> 801 */
    assert_int_equal(am__rc_discount(1000, 0), 1000);
    assert_int_equal(am__rc_discount(1000, AM_MONEY_SCALE), 0); /* free */
    assert_int_equal(am__rc_discount(3, 500000000), 2);         /* 1.5 -> 2 */
    assert_int_equal(am__rc_discount(INT64_C(9000000000000000000), 1),
                     INT64_C(8999999991000000000));
}

static am__rc_model_t model_with(int64_t unit, am_money_t in, am_money_t out, am_money_t cr,
                                 am_money_t cw, am_money_t rs)
{
    am__rc_model_t m;
    memset(&m, 0, sizeof(m));
    m.unit_tokens = unit;
    am_money_t values[] = {in, out, cr, cw, rs};
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        m.prices.value[k] = values[k] >= 0 ? values[k] : 0;
        m.prices.set[k] = values[k] >= 0;
    }
    return m;
}

static am__rc_usage_t usage_of(int64_t in, int64_t out, int64_t cr, int64_t cw, int64_t rs)
{
    am__rc_usage_t u;
    memset(&u, 0, sizeof(u));
    int64_t values[] = {in, out, cr, cw, rs};
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        u.tokens[k] = values[k];
        u.present[k] = values[k] != INT64_MIN;
        if (!u.present[k]) {
            u.tokens[k] = 0;
        }
    }
    return u;
}

#define NONE INT64_MIN
#define USD(x) ((am_money_t)((x)*1000000000.0 + 0.5))

static void test_subtract_semantics(void **state)
{
    (void)state;
    /* $3 in, $15 out, $0.30 cache read, $3.75 cache write, per 1M */
    am__rc_model_t m = model_with(1000000, USD(3), USD(15), USD(0.30), USD(3.75), -1);
    am__rc_usage_t u = usage_of(10000, 3000, 6000, 1000, 1000);
    am__rc_breakdown_t b = {0};
    am__rc_price_tokens(&m, AM__RC_CACHE_DEFAULT, &u, &b);
    am__rc_total(&b);
    /* uncached 3000 x 3 = 0.009; cache_read 6000 x 0.3 = 0.0018; cache_write
     * 1000 x 3.75 = 0.00375; output 2000 x 15 = 0.03; reasoning 1000 x 15 =
     * 0.015; total 0.05955 */
    assert_int_equal(b.billed_tokens[AM__RC_INPUT], 3000);
    assert_int_equal(b.part[AM__RC_INPUT], 9000000);
    assert_int_equal(b.part[AM__RC_CACHE_READ], 1800000);
    assert_int_equal(b.part[AM__RC_CACHE_WRITE], 3750000);
    assert_int_equal(b.part[AM__RC_OUTPUT], 30000000);
    assert_int_equal(b.part[AM__RC_REASONING], 15000000);
    assert_int_equal(b.total, 59550000);
    assert_int_equal(b.input_total, 10000);
    assert_int_equal(b.cache_mode, AM__RC_CACHE_SUBTRACT);
    assert_int_equal(b.negative_buckets, 0);

    /* Same numbers reported additively: every bucket billed as given. */
    memset(&b, 0, sizeof(b));
    am__rc_price_tokens(&m, AM__RC_CACHE_ADDITIVE, &u, &b);
    am__rc_total(&b);
    /* 10000x3 + 3000x15 + 6000x0.3 + 1000x3.75 + 1000x15 (reasoning apart)
     * = 0.03 + 0.045 + 0.0018 + 0.00375 + 0.015 = 0.09555 */
    assert_int_equal(b.total, 95550000);
    assert_int_equal(b.input_total, 17000);
}

static void test_missing_prices_fall_back(void **state)
{
    (void)state;
    /* No cache prices: cached tokens cost input; no reasoning price: output. */
    am__rc_model_t m = model_with(1000, 2000000, 8000000, -1, -1, -1); /* per 1K */
    am__rc_usage_t u = usage_of(1000, 1000, 500, 100, 400);
    am__rc_breakdown_t b = {0};
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    am__rc_total(&b);
    /* input: (400 + 500 + 100) x 0.002/1K = 0.002; output 1000 x 0.008/1K */
    assert_int_equal(b.unit_price[AM__RC_CACHE_READ], 2000000);
    assert_int_equal(b.unit_price[AM__RC_REASONING], 8000000);
    assert_int_equal(b.total, 2000000 + 8000000);
}

static void test_per_token_rounding_per_part(void **state)
{
    (void)state;
    /* per_token prices of 1 and 3 nano-USD: exact */
    am__rc_model_t m = model_with(1, 1, 3, -1, -1, -1);
    am__rc_usage_t u = usage_of(3, 1, NONE, NONE, NONE);
    am__rc_breakdown_t b = {0};
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    am__rc_total(&b);
    assert_int_equal(b.total, 3 + 3);
    /* The same prices per 1K tokens: each part rounds once, half up. */
    m.unit_tokens = 1000;
    u = usage_of(500, 499, NONE, NONE, NONE);
    memset(&b, 0, sizeof(b));
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    am__rc_total(&b);
    assert_int_equal(b.part[AM__RC_INPUT], 1);  /* 0.5 -> 1 */
    assert_int_equal(b.part[AM__RC_OUTPUT], 1); /* 1.497 -> 1 */
    assert_int_equal(b.total, b.part[AM__RC_INPUT] + b.part[AM__RC_OUTPUT]);
}

static void test_tiers(void **state)
{
    (void)state;
    am__rc_model_t m = model_with(1000000, USD(1.25), USD(10), USD(0.125), -1, -1);
    am__rc_tier_t tiers[2];
    memset(tiers, 0, sizeof(tiers));
    tiers[0].input_tokens_above = 200000;
    tiers[0].prices.value[AM__RC_INPUT] = USD(2.5);
    tiers[0].prices.set[AM__RC_INPUT] = true;
    tiers[0].prices.value[AM__RC_OUTPUT] = USD(15);
    tiers[0].prices.set[AM__RC_OUTPUT] = true;
    tiers[1].input_tokens_above = 1000000;
    tiers[1].prices.value[AM__RC_INPUT] = USD(5);
    tiers[1].prices.set[AM__RC_INPUT] = true;
    m.tiers = tiers;
    m.n_tiers = 2;

    am__rc_breakdown_t b = {0};
    am__rc_usage_t u = usage_of(200000, 1000, NONE, NONE, NONE);
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    assert_null(b.tier); /* at the threshold: not above */

    memset(&b, 0, sizeof(b));
    u = usage_of(200001, 1000, 100000, NONE, NONE);
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    am__rc_total(&b);
    assert_ptr_equal(b.tier, &tiers[0]);
    /* uncached 100001 x 2.5 = 0.2500025; cache 100000 x 0.125 (tier leaves
     * cache_read out: base price) = 0.0125; output 1000 x 15 = 0.015 */
    assert_int_equal(b.part[AM__RC_INPUT], 250002500);
    assert_int_equal(b.part[AM__RC_CACHE_READ], 12500000);
    assert_int_equal(b.part[AM__RC_OUTPUT], 15000000);

    /* The highest threshold below the input wins; unset fields inherit the base. */
    memset(&b, 0, sizeof(b));
    u = usage_of(1000001, 1000, NONE, NONE, NONE);
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    assert_ptr_equal(b.tier, &tiers[1]);
    assert_int_equal(b.unit_price[AM__RC_INPUT], USD(5));
    assert_int_equal(b.unit_price[AM__RC_OUTPUT], USD(10));
}

static void test_negative_buckets(void **state)
{
    (void)state;
    am__rc_model_t m = model_with(1000000, USD(1), USD(2), USD(0.5), -1, -1);
    /* cache_read above input, reasoning above output, and a negative count */
    am__rc_usage_t u = usage_of(100, 10, 300, -5, 50);
    am__rc_breakdown_t b = {0};
    am__rc_price_tokens(&m, AM__RC_CACHE_SUBTRACT, &u, &b);
    am__rc_total(&b);
    assert_int_equal(b.negative_buckets, 3);
    assert_int_equal(b.billed_tokens[AM__RC_INPUT], 0);
    assert_int_equal(b.billed_tokens[AM__RC_OUTPUT], 0);
    assert_int_equal(b.billed_tokens[AM__RC_CACHE_WRITE], 0);
    /* 300 x 0.5 + 50 x 2 = 0.00015 + 0.0001 */
    assert_int_equal(b.total, 250000);
    assert_true(b.total >= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mul_div_rounding),
        cmocka_unit_test(test_discount),
        cmocka_unit_test(test_subtract_semantics),
        cmocka_unit_test(test_missing_prices_fall_back),
        cmocka_unit_test(test_per_token_rounding_per_part),
        cmocka_unit_test(test_tiers),
        cmocka_unit_test(test_negative_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
