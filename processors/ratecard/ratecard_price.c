/*
 * ratecard_price.c - the arithmetic of a price, in fixed point.
 *
 * A price is nano-units of the currency per `unit_tokens` tokens (1, 1k or
 * 1M, the card's `unit`).  A part is tokens * price / unit_tokens, computed
 * in 128 bits and rounded half-up to the nano-unit once, per part; the cost
 * of a span is the exact sum of its parts, so the parts written on a span
 * always add up to its cost.self.
 *
 * Token semantics (ARCHITECTURE.md §5).  With cache_mode subtract, the
 * OpenTelemetry convention, `input` includes cache reads and writes and
 * `output` includes reasoning, so
 *     uncached input = input - cache_read - cache_write
 *     plain output   = output - reasoning.
 * With additive every bucket was reported apart.  A bucket that comes out
 * negative (an instrumentation that mixes the two conventions) is billed as
 * 0 and counted, never billed negative.
 *
 * Prices that a card leaves out: cache_read and cache_write cost the input
 * price (the provider gives no cache discount), reasoning costs the output
 * price.  A tier is a cliff: when the request's whole input (cache included)
 * is above a tier's input_tokens_above, every bucket uses that tier's
 * prices; a bucket the tier leaves out keeps the base entry's price.
 */
#include <string.h>

#include "processors/ratecard/ratecard_internal.h"

const char *const am__rc_part_names[AM__RC_N_PARTS] = {
    "input", "output", "cache_read", "cache_write", "reasoning", "tool", "compute",
};

static am_money_t saturate(__int128 v)
{
    if (v > (__int128)INT64_MAX) {
        return INT64_MAX;
    }
    if (v < (__int128)INT64_MIN) {
        return INT64_MIN;
    }
    return (am_money_t)v;
}

/* n / d rounded half away from zero (d > 0). */
static __int128 div_round(__int128 n, __int128 d)
{
    if (n >= 0) {
        return (n + d / 2) / d;
    }
    return -((-n + d / 2) / d);
}

am_money_t am__rc_mul_div(int64_t qty, am_money_t price, int64_t divisor)
{
    if (divisor <= 0) {
        return 0;
    }
    return saturate(div_round((__int128)qty * (__int128)price, (__int128)divisor));
}

am_money_t am__rc_discount(am_money_t value, am_money_t discount)
{
    if (discount <= 0) {
        return value;
    }
    if (discount >= AM_MONEY_SCALE) {
        return 0;
    }
    return am__rc_mul_div(value, AM_MONEY_SCALE - discount, AM_MONEY_SCALE);
}

/* The price of bucket `kind` under `tier` (may be NULL) of `entry`. */
static am_money_t bucket_price(const am__rc_model_t *entry, const am__rc_tier_t *tier, int kind)
{
    if (tier != NULL && tier->prices.set[kind]) {
        return tier->prices.value[kind];
    }
    if (entry->prices.set[kind]) {
        return entry->prices.value[kind];
    }
    switch (kind) {
    case AM__RC_CACHE_READ:
    case AM__RC_CACHE_WRITE:
        return bucket_price(entry, tier, AM__RC_INPUT);
    case AM__RC_REASONING:
        return bucket_price(entry, tier, AM__RC_OUTPUT);
    default:
        return 0; /* input/output are required by the loader */
    }
}

static int64_t clamp_bucket(int64_t value, unsigned *negatives)
{
    if (value < 0) {
        (*negatives)++;
        return 0;
    }
    return value;
}

static int64_t add_sat(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) {
        return INT64_MAX;
    }
    return r;
}

void am__rc_price_tokens(const am__rc_model_t *entry, am__rc_cache_mode_t mode,
                         const am__rc_usage_t *usage, am__rc_breakdown_t *out)
{
    unsigned negatives = 0;
    int64_t raw[AM__RC_N_TOKEN_KINDS];
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        raw[k] = clamp_bucket(usage->present[k] ? usage->tokens[k] : 0, &negatives);
    }
    if (mode == AM__RC_CACHE_DEFAULT) {
        mode = AM__RC_CACHE_SUBTRACT;
    }
    int64_t billed[AM__RC_N_TOKEN_KINDS];
    memcpy(billed, raw, sizeof(billed));
    if (mode == AM__RC_CACHE_SUBTRACT) {
        billed[AM__RC_INPUT] = clamp_bucket(
            raw[AM__RC_INPUT] - raw[AM__RC_CACHE_READ] - raw[AM__RC_CACHE_WRITE], &negatives);
        billed[AM__RC_OUTPUT] =
            clamp_bucket(raw[AM__RC_OUTPUT] - raw[AM__RC_REASONING], &negatives);
        out->input_total = raw[AM__RC_INPUT];
    } else {
        out->input_total =
            add_sat(add_sat(raw[AM__RC_INPUT], raw[AM__RC_CACHE_READ]), raw[AM__RC_CACHE_WRITE]);
    }
    const am__rc_tier_t *tier = NULL;
    for (size_t i = 0; i < entry->n_tiers; i++) { /* ascending: the last one above wins */
        if (out->input_total > entry->tiers[i].input_tokens_above) {
            tier = &entry->tiers[i];
        }
    }
    out->tier = tier;
    out->cache_mode = mode;
    out->unit_tokens = entry->unit_tokens;
    out->negative_buckets += negatives;
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        out->billed_tokens[k] = billed[k];
        out->unit_price[k] = bucket_price(entry, tier, k);
        out->part[k] = am__rc_mul_div(billed[k], out->unit_price[k], entry->unit_tokens);
        /* input and output always show; the others when the span has them. */
        out->applies[k] = k == AM__RC_INPUT || k == AM__RC_OUTPUT || billed[k] > 0;
    }
}

void am__rc_total(am__rc_breakdown_t *out)
{
    __int128 sum = 0;
    for (int k = 0; k < AM__RC_N_PARTS; k++) {
        if (out->applies[k]) {
            sum += out->part[k];
        }
    }
    out->total = saturate(sum);
}
