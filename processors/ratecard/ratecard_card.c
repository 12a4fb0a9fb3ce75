/*
 * ratecard_card.c - rate card files (ARCHITECTURE.md §7) into an
 * am__ratecard_t.
 *
 * Files are read with the config loader (am_config.h), so every node knows
 * its file and line and every error names them.  A card is parsed whole:
 * every problem in every file is reported, and any problem rejects the whole
 * card (a half-loaded card would price some models and silently flag the
 * rest as unpriced).  Prices are read from the YAML text with
 * am_money_parse(), exactly, never through a double.
 *
 * The format is §7's, plus two things §7 leaves implicit:
 *   providers: [{ match: anthropic, cache_mode: additive }]
 *       the cache_mode for every model served by a provider (an entry's own
 *       cache_mode wins), for instrumentations that report cache tokens apart;
 *   overrides[].models: [...]
 *       contracted prices (same shape as `models`) looked up before the list
 *       prices for spans the override's `when` matches; `discount` then
 *       applies to whatever was priced.
 * Matching is case-insensitive everywhere; `when` values may be exact,
 * "glob:" or "re:" like a model's `match`.  Token counts may be written
 * 200_000.  `unit` applies to the token prices of its own file only.
 *
 * Merging: the built-in card (unless include_builtin is false), then each
 * file in order.  A later entry replaces an earlier one with the same key:
 *   models     match + provider + effective_from
 *   tools      match
 *   compute    when
 *   overrides  when
 *   providers  match
 * Two entries with the same key in one file are an error: one of them is a
 * typo, and which one was meant cannot be guessed.  All files must share one
 * currency, since costs of one pipeline are summed.  Each file keeps its own
 * id and version, which is what the price ids of its entries carry.
 */
#define _GNU_SOURCE /* timegm */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "processors/ratecard/ratecard_internal.h"

extern const char am_default_ratecard[];
extern const size_t am_default_ratecard_len;

#define PATH_LEN 160
/* Bounds on what one card may hold: generous, but finite. */
#define MAX_TIERS 16
#define MAX_CONDS 16

typedef struct parse_ctx {
    am__ratecard_t *card;
    am_errors_t *errs;
    const char *file;   /* arena copy: the identity of "this file" */
    const char *source; /* "id@version" */
    int64_t unit_tokens;
} parse_ctx_t;

static const char *const top_keys[] = {"id",    "version", "currency",  "unit",      "models",
                                       "tools", "compute", "overrides", "providers", NULL};
static const char *const model_keys[] = {"match", "provider",       "cache_mode", "prices",
                                         "tiers", "effective_from", NULL};
static const char *const price_keys[] = {"input",       "output",    "cache_read",
                                         "cache_write", "reasoning", NULL};
static const char *const tier_keys[] = {"input_tokens_above", "prices", NULL};
static const char *const tool_keys[] = {"match", "per_call", NULL};
static const char *const compute_keys[] = {"when", "per_gpu_second", NULL};
static const char *const override_keys[] = {"when", "discount", "models", NULL};
static const char *const provider_keys[] = {"match", "cache_mode", NULL};

/* ---- small helpers -------------------------------------------------------- */

static void oom(parse_ctx_t *ctx, const am_node_t *at)
{
    am_errors_add(ctx->errs, at, "out of memory");
}

static bool key_allowed(const char *key, const char *const *allowed)
{
    for (size_t i = 0; allowed[i] != NULL; i++) {
        if (strcmp(key, allowed[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* out = base.key, truncated to PATH_LEN (it only names things in errors). */
static void join_path(char *out, const char *base, const char *key)
{
    size_t base_len = AM_MIN(strlen(base), (size_t)PATH_LEN - 1);
    memmove(out, base, base_len);
    size_t len = base_len;
    if (len > 0 && len < PATH_LEN - 1) {
        out[len++] = '.';
    }
    size_t key_len = AM_MIN(strlen(key), (size_t)PATH_LEN - 1 - len);
    memcpy(out + len, key, key_len);
    out[len + key_len] = '\0';
}

/* `node` must be a map with only `allowed` keys. */
static bool check_map(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                      const char *const *allowed)
{
    if (node->kind != AM_NODE_MAP) {
        am_errors_add(ctx->errs, node, "%s: expected a map, got a %s", path,
                      am_node_kind_name(node->kind));
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < node->n_children; i++) {
        const am_node_t *child = node->children[i];
        if (allowed == NULL || key_allowed(child->key, allowed)) {
            continue;
        }
        const char *hint = am_did_you_mean(child->key, allowed);
        am_errors_add_at(ctx->errs, child->file, child->key_line, "%s%s%s: unknown key%s%s%s", path,
                         path[0] != '\0' ? "." : "", child->key,
                         hint != NULL ? " (did you mean \"" : "", hint != NULL ? hint : "",
                         hint != NULL ? "\"?)" : "");
        ok = false;
    }
    return ok;
}

/* The non-empty text of a scalar, or NULL with an error. */
static const char *scalar(parse_ctx_t *ctx, const am_node_t *node, const char *path)
{
    if (node->kind != AM_NODE_SCALAR) {
        am_errors_add(ctx->errs, node, "%s: expected a value, got a %s", path,
                      am_node_kind_name(node->kind));
        return NULL;
    }
    if (node->str == NULL || node->str[0] == '\0') {
        am_errors_add(ctx->errs, node, "%s: must not be empty", path);
        return NULL;
    }
    return node->str;
}

/* A required key of `map`; NULL with an error when missing. */
static const am_node_t *required(parse_ctx_t *ctx, const am_node_t *map, const char *key,
                                 const char *path)
{
    const am_node_t *node = am_node_get(map, key);
    if (node == NULL || node->kind == AM_NODE_NULL) {
        am_errors_add(ctx->errs, node != NULL ? node : map, "%s%s%s: required", path,
                      path[0] != '\0' ? "." : "", key);
        return NULL;
    }
    return node;
}

/* An optional key: NULL when absent or null (`key:` with no value). */
static const am_node_t *optional(const am_node_t *map, const char *key)
{
    const am_node_t *node = am_node_get(map, key);
    return node != NULL && node->kind != AM_NODE_NULL ? node : NULL;
}

/* A non-negative amount with at most 9 decimals, parsed exactly. */
static bool parse_amount(parse_ctx_t *ctx, const am_node_t *node, const char *path, am_money_t max,
                         am_money_t *out)
{
    const char *text = scalar(ctx, node, path);
    if (text == NULL) {
        return false;
    }
    am_money_t value = 0;
    int rc = am_money_parse(text, &value);
    if (rc == AM_ERANGE) {
        am_errors_add(ctx->errs, node, "%s: \"%s\" has more than 9 decimals or is too large", path,
                      text);
        return false;
    }
    if (rc != 0) {
        am_errors_add(ctx->errs, node,
                      "%s: \"%s\" is not a decimal amount (write e.g. 2.50; exponents are not "
                      "accepted)",
                      path, text);
        return false;
    }
    if (value < 0) {
        am_errors_add(ctx->errs, node, "%s: \"%s\" must not be negative", path, text);
        return false;
    }
    if (max > 0 && value > max) {
        char buf[AM_MONEY_STRLEN];
        am_errors_add(ctx->errs, node, "%s: \"%s\" must be at most %s", path, text,
                      am_money_format(max, buf));
        return false;
    }
    *out = value;
    return true;
}

static bool parse_tokens(parse_ctx_t *ctx, const am_node_t *node, const char *path, int64_t *out)
{
    const char *text = scalar(ctx, node, path);
    if (text == NULL) {
        return false;
    }
    int64_t value = 0;
    const char *p = text;
    for (; *p != '\0'; p++) {
        if (*p == '_' && p != text) {
            continue; /* 200_000 reads better than 200000 */
        }
        if (!isdigit((unsigned char)*p) || value > (INT64_MAX - 9) / 10) {
            am_errors_add(ctx->errs, node, "%s: \"%s\" is not a token count (a whole number >= 0)",
                          path, text);
            return false;
        }
        value = value * 10 + (*p - '0');
    }
    *out = value;
    return true;
}

int am__rc_parse_date(const char *text, int64_t *out_ns)
{
    if (text == NULL || strlen(text) != 10 || text[4] != '-' || text[7] != '-') {
        return AM_EINVAL;
    }
    for (int i = 0; i < 10; i++) {
        if (i != 4 && i != 7 && !isdigit((unsigned char)text[i])) {
            return AM_EINVAL;
        }
    }
    struct tm tm = {0};
    tm.tm_year = atoi(text) - 1900;
    tm.tm_mon = atoi(text + 5) - 1;
    tm.tm_mday = atoi(text + 8);
    int year = tm.tm_year, mon = tm.tm_mon, mday = tm.tm_mday;
    time_t secs = timegm(&tm);
    /* timegm normalises 2026-02-30 to March: reject dates that moved. */
    /* Nanoseconds since 1970 fit int64 until 2262: bound the year first. */
    if (secs == (time_t)-1 || tm.tm_year != year || tm.tm_mon != mon || tm.tm_mday != mday ||
        year < 70 || year > 2200 - 1900) {
        return AM_EINVAL;
    }
    *out_ns = (int64_t)secs * 1000000000;
    return 0;
}

static bool parse_cache_mode(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                             am__rc_cache_mode_t *out)
{
    const char *text = scalar(ctx, node, path);
    if (text == NULL) {
        return false;
    }
    if (strcmp(text, "subtract") == 0) {
        *out = AM__RC_CACHE_SUBTRACT;
    } else if (strcmp(text, "additive") == 0) {
        *out = AM__RC_CACHE_ADDITIVE;
    } else {
        am_errors_add(ctx->errs, node, "%s: \"%s\" is not one of subtract, additive", path, text);
        return false;
    }
    return true;
}

static bool parse_matcher(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                          am__rc_matcher_t *out)
{
    const char *text = scalar(ctx, node, path);
    if (text == NULL) {
        return false;
    }
    char why[256];
    if (am__rc_matcher_init(out, ctx->card->arena, text, why, sizeof(why)) != 0) {
        am_errors_add(ctx->errs, node, "%s: %s", path, why);
        return false;
    }
    return true;
}

/* A list node: NULL/absent is an empty list. */
static bool as_list(parse_ctx_t *ctx, const am_node_t *node, const char *path)
{
    if (node->kind != AM_NODE_SEQ) {
        am_errors_add(ctx->errs, node, "%s: expected a list, got a %s", path,
                      am_node_kind_name(node->kind));
        return false;
    }
    return true;
}

static int grow(void **items, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) {
        return 0;
    }
    size_t next = *cap > 0 ? *cap * 2 : 16;
    while (next < need) {
        next *= 2;
    }
    void *grown = am_realloc(*items, next * size);
    if (grown == NULL) {
        return AM_ENOMEM;
    }
    *items = grown;
    *cap = next;
    return 0;
}

/* ---- prices, tiers, when -------------------------------------------------- */

static bool parse_prices(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                         bool need_input_output, am__rc_prices_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!check_map(ctx, node, path, price_keys)) {
        return false;
    }
    bool ok = true;
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        const am_node_t *value = optional(node, am__rc_part_names[k]);
        if (value == NULL) {
            continue;
        }
        char sub[PATH_LEN];
        join_path(sub, path, am__rc_part_names[k]);
        if (parse_amount(ctx, value, sub, 0, &out->value[k])) {
            out->set[k] = true;
        } else {
            ok = false;
        }
    }
    if (need_input_output && ok) {
        for (int k = AM__RC_INPUT; k <= AM__RC_OUTPUT; k++) {
            if (!out->set[k]) {
                am_errors_add(ctx->errs, node, "%s.%s: required", path, am__rc_part_names[k]);
                ok = false;
            }
        }
    } else if (ok) {
        bool any = false;
        for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
            any = any || out->set[k];
        }
        if (!any) {
            am_errors_add(ctx->errs, node, "%s: needs at least one price", path);
            ok = false;
        }
    }
    return ok;
}

static int cmp_tier(const void *a, const void *b)
{
    const am__rc_tier_t *ta = a, *tb = b;
    return ta->input_tokens_above < tb->input_tokens_above
               ? -1
               : (ta->input_tokens_above > tb->input_tokens_above ? 1 : 0);
}

static bool parse_tiers(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                        am__rc_model_t *model)
{
    if (!as_list(ctx, node, path)) {
        return false;
    }
    if (node->n_children > MAX_TIERS) {
        am_errors_add(ctx->errs, node, "%s: at most %d tiers", path, MAX_TIERS);
        return false;
    }
    if (node->n_children == 0) {
        return true;
    }
    model->tiers = am_arena_calloc(ctx->card->arena, node->n_children, sizeof(*model->tiers));
    if (model->tiers == NULL) {
        oom(ctx, node);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < node->n_children; i++) {
        const am_node_t *item = node->children[i];
        char sub[PATH_LEN], sub2[PATH_LEN];
        if (snprintf(sub, sizeof(sub), "%s[%zu]", path, i) >= (int)sizeof(sub)) {
            sub[sizeof(sub) - 1] = '\0'; /* a truncated path only shortens the message */
        }
        if (!check_map(ctx, item, sub, tier_keys)) {
            ok = false;
            continue;
        }
        am__rc_tier_t *tier = &model->tiers[model->n_tiers];
        const am_node_t *above = required(ctx, item, "input_tokens_above", sub);
        const am_node_t *prices = required(ctx, item, "prices", sub);
        join_path(sub2, sub, "input_tokens_above");
        bool item_ok = above != NULL && parse_tokens(ctx, above, sub2, &tier->input_tokens_above);
        join_path(sub2, sub, "prices");
        item_ok =
            prices != NULL && parse_prices(ctx, prices, sub2, false, &tier->prices) && item_ok;
        for (size_t j = 0; item_ok && j < model->n_tiers; j++) {
            if (model->tiers[j].input_tokens_above == tier->input_tokens_above) {
                am_errors_add(ctx->errs, above, "%s: two tiers with input_tokens_above %lld", sub2,
                              (long long)tier->input_tokens_above);
                item_ok = false;
            }
        }
        if (item_ok) {
            model->n_tiers++;
        } else {
            ok = false;
        }
    }
    qsort(model->tiers, model->n_tiers, sizeof(*model->tiers), cmp_tier);
    return ok;
}

static int cmp_cond(const void *a, const void *b)
{
    const am__rc_cond_t *ca = a, *cb = b;
    return strcmp(ca->key, cb->key);
}

static bool parse_when(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                       am__rc_when_t *when)
{
    memset(when, 0, sizeof(*when));
    if (!check_map(ctx, node, path, NULL)) {
        return false;
    }
    if (node->n_children == 0 || node->n_children > MAX_CONDS) {
        am_errors_add(ctx->errs, node, "%s: needs 1 to %d attributes", path, MAX_CONDS);
        return false;
    }
    am_arena_t *arena = ctx->card->arena;
    when->conds = am_arena_calloc(arena, node->n_children, sizeof(*when->conds));
    if (when->conds == NULL) {
        oom(ctx, node);
        return false;
    }
    bool ok = true;
    size_t text_len = 1;
    for (size_t i = 0; i < node->n_children; i++) {
        const am_node_t *child = node->children[i];
        char sub[PATH_LEN];
        join_path(sub, path, child->key);
        am__rc_cond_t *cond = &when->conds[when->n_conds];
        cond->key = am_arena_strdup(arena, child->key);
        if (cond->key == NULL) {
            oom(ctx, node);
            return false;
        }
        if (parse_matcher(ctx, child, sub, &cond->value)) {
            when->n_conds++;
            text_len += strlen(cond->key) + strlen(cond->value.text) + 2;
        } else {
            ok = false;
        }
    }
    qsort(when->conds, when->n_conds, sizeof(*when->conds), cmp_cond);
    char *text = am_arena_alloc(arena, text_len);
    if (text == NULL) {
        oom(ctx, node);
        return false;
    }
    text[0] = '\0';
    for (size_t i = 0; i < when->n_conds; i++) {
        if (i > 0) {
            strcat(text, ",");
        }
        strcat(text, when->conds[i].key);
        strcat(text, "=");
        strcat(text, when->conds[i].value.text);
    }
    when->text = text;
    return ok;
}

static void when_free(am__rc_when_t *when)
{
    for (size_t i = 0; i < when->n_conds; i++) {
        am__rc_matcher_free(&when->conds[i].value);
    }
    when->n_conds = 0;
}

/* ---- models ----------------------------------------------------------------- */

static bool same_model_key(const am__rc_model_t *a, const am__rc_model_t *b)
{
    if (!am__rc_matcher_same(&a->match, &b->match) || a->effective_from != b->effective_from) {
        return false;
    }
    if ((a->provider == NULL) != (b->provider == NULL)) {
        return false;
    }
    return a->provider == NULL || strcasecmp(a->provider, b->provider) == 0;
}

static bool parse_model(parse_ctx_t *ctx, const am_node_t *node, const char *path,
                        const char *id_prefix, am__rc_model_t *model)
{
    memset(model, 0, sizeof(*model));
    model->effective_from = INT64_MIN;
    model->unit_tokens = ctx->unit_tokens;
    model->file = ctx->file;
    model->line = node->line;
    if (!check_map(ctx, node, path, model_keys)) {
        return false;
    }
    bool ok = true;
    char sub[PATH_LEN];
    const am_node_t *match = required(ctx, node, "match", path);
    join_path(sub, path, "match");
    ok = match != NULL && parse_matcher(ctx, match, sub, &model->match);
    const am_node_t *value = optional(node, "provider");
    if (value != NULL) {
        join_path(sub, path, "provider");
        const char *text = scalar(ctx, value, sub);
        model->provider = text != NULL ? am_arena_strdup(ctx->card->arena, text) : NULL;
        ok = model->provider != NULL && ok;
    }
    if ((value = optional(node, "cache_mode")) != NULL) {
        join_path(sub, path, "cache_mode");
        ok = parse_cache_mode(ctx, value, sub, &model->cache_mode) && ok;
    }
    const am_node_t *prices = required(ctx, node, "prices", path);
    join_path(sub, path, "prices");
    ok = prices != NULL && parse_prices(ctx, prices, sub, true, &model->prices) && ok;
    if ((value = optional(node, "tiers")) != NULL) {
        join_path(sub, path, "tiers");
        ok = parse_tiers(ctx, value, sub, model) && ok;
    }
    if ((value = optional(node, "effective_from")) != NULL) {
        join_path(sub, path, "effective_from");
        const char *text = scalar(ctx, value, sub);
        if (text != NULL && am__rc_parse_date(text, &model->effective_from) == 0) {
            model->effective_text = am_arena_strdup(ctx->card->arena, text);
            if (model->effective_text == NULL) {
                oom(ctx, value);
                ok = false;
            }
        } else {
            if (text != NULL) {
                am_errors_add(ctx->errs, value, "%s: \"%s\" is not a date (YYYY-MM-DD)", sub, text);
            }
            ok = false;
        }
    }
    if (ok) {
        model->price_id = am_arena_sprintf(
            ctx->card->arena, "%s:%s%s%s%s%s%s%s", ctx->source, id_prefix, model->match.text,
            model->provider != NULL ? "[provider=" : "",
            model->provider != NULL ? model->provider : "", model->provider != NULL ? "]" : "",
            model->effective_text != NULL ? "[from=" : "",
            model->effective_text != NULL ? model->effective_text : "");
        if (model->price_id != NULL && model->effective_text != NULL) {
            model->price_id = am_arena_sprintf(ctx->card->arena, "%s]", model->price_id);
        }
        if (model->price_id == NULL) {
            oom(ctx, node);
            ok = false;
        }
    }
    if (!ok) {
        am__rc_matcher_free(&model->match);
    }
    return ok;
}

/* Add `model` to `set`, replacing an entry of an earlier file with the same
 * key; a duplicate within one file is an error. */
static void add_model(parse_ctx_t *ctx, am__rc_model_set_t *set, am__rc_model_t *model,
                      const am_node_t *node, const char *path)
{
    for (size_t i = 0; i < set->n; i++) {
        am__rc_model_t *old = &set->items[i];
        if (!same_model_key(old, model)) {
            continue;
        }
        if (old->file == model->file) {
            am_errors_add(ctx->errs, node,
                          "%s: \"%s\" is listed twice (first at line %d) with the same provider "
                          "and effective_from",
                          path, model->match.text, old->line);
            am__rc_matcher_free(&model->match);
            return;
        }
        am__rc_matcher_free(&old->match);
        *old = *model;
        return;
    }
    if (grow((void **)&set->items, &set->cap, set->n + 1, sizeof(*set->items)) != 0) {
        oom(ctx, node);
        am__rc_matcher_free(&model->match);
        return;
    }
    set->items[set->n++] = *model;
}

static void parse_models(parse_ctx_t *ctx, const am_node_t *list, const char *path,
                         const char *id_prefix, am__rc_model_set_t *set)
{
    if (!as_list(ctx, list, path)) {
        return;
    }
    for (size_t i = 0; i < list->n_children; i++) {
        char sub[PATH_LEN];
        if (snprintf(sub, sizeof(sub), "%s[%zu]", path, i) >= (int)sizeof(sub)) {
            sub[sizeof(sub) - 1] = '\0'; /* a truncated path only shortens the message */
        }
        am__rc_model_t model;
        if (parse_model(ctx, list->children[i], sub, id_prefix, &model)) {
            add_model(ctx, set, &model, list->children[i], sub);
        }
    }
}

/* ---- tools, compute, overrides, providers -------------------------------------- */

static void parse_tools(parse_ctx_t *ctx, const am_node_t *list)
{
    if (!as_list(ctx, list, "tools")) {
        return;
    }
    am__ratecard_t *card = ctx->card;
    for (size_t i = 0; i < list->n_children; i++) {
        const am_node_t *item = list->children[i];
        char path[PATH_LEN], sub[PATH_LEN];
        snprintf(path, sizeof(path), "tools[%zu]", i);
        if (!check_map(ctx, item, path, tool_keys)) {
            continue;
        }
        am__rc_tool_t tool = {.file = ctx->file, .line = item->line};
        const am_node_t *match = required(ctx, item, "match", path);
        const am_node_t *price = required(ctx, item, "per_call", path);
        join_path(sub, path, "per_call");
        bool ok = price != NULL && parse_amount(ctx, price, sub, 0, &tool.per_call);
        join_path(sub, path, "match");
        if (match == NULL || !parse_matcher(ctx, match, sub, &tool.match)) {
            continue;
        }
        tool.price_id = am_arena_sprintf(card->arena, "%s:tool:%s", ctx->source, tool.match.text);
        if (!ok || tool.price_id == NULL) {
            am__rc_matcher_free(&tool.match);
            continue;
        }
        size_t at = card->n_tools;
        for (size_t j = 0; j < card->n_tools; j++) {
            if (am__rc_matcher_same(&card->tools[j].match, &tool.match)) {
                at = j;
                break;
            }
        }
        if (at < card->n_tools && card->tools[at].file == ctx->file) {
            am_errors_add(ctx->errs, item, "%s: tool \"%s\" is listed twice (first at line %d)",
                          path, tool.match.text, card->tools[at].line);
            am__rc_matcher_free(&tool.match);
            continue;
        }
        if (at == card->n_tools) {
            if (grow((void **)&card->tools, &card->cap_tools, at + 1, sizeof(*card->tools)) != 0) {
                oom(ctx, item);
                am__rc_matcher_free(&tool.match);
                continue;
            }
            card->n_tools++;
        } else {
            am__rc_matcher_free(&card->tools[at].match);
        }
        card->tools[at] = tool;
    }
}

static void parse_compute(parse_ctx_t *ctx, const am_node_t *list)
{
    if (!as_list(ctx, list, "compute")) {
        return;
    }
    am__ratecard_t *card = ctx->card;
    for (size_t i = 0; i < list->n_children; i++) {
        const am_node_t *item = list->children[i];
        char path[PATH_LEN], sub[PATH_LEN];
        snprintf(path, sizeof(path), "compute[%zu]", i);
        if (!check_map(ctx, item, path, compute_keys)) {
            continue;
        }
        am__rc_compute_t entry = {.file = ctx->file, .line = item->line};
        const am_node_t *when = required(ctx, item, "when", path);
        const am_node_t *price = required(ctx, item, "per_gpu_second", path);
        join_path(sub, path, "per_gpu_second");
        bool ok = price != NULL && parse_amount(ctx, price, sub, 0, &entry.per_gpu_second);
        join_path(sub, path, "when");
        if (when == NULL || !parse_when(ctx, when, sub, &entry.when)) {
            when_free(&entry.when);
            continue;
        }
        entry.price_id =
            am_arena_sprintf(card->arena, "%s:compute[%s]", ctx->source, entry.when.text);
        if (!ok || entry.price_id == NULL) {
            when_free(&entry.when);
            continue;
        }
        size_t at = card->n_compute;
        for (size_t j = 0; j < card->n_compute; j++) {
            if (strcmp(card->compute[j].when.text, entry.when.text) == 0) {
                at = j;
                break;
            }
        }
        if (at < card->n_compute && card->compute[at].file == ctx->file) {
            am_errors_add(ctx->errs, item, "%s: `when` %s is listed twice (first at line %d)", path,
                          entry.when.text, card->compute[at].line);
            when_free(&entry.when);
            continue;
        }
        if (at == card->n_compute) {
            if (grow((void **)&card->compute, &card->cap_compute, at + 1, sizeof(*card->compute)) !=
                0) {
                oom(ctx, item);
                when_free(&entry.when);
                continue;
            }
            card->n_compute++;
        } else {
            when_free(&card->compute[at].when);
        }
        card->compute[at] = entry;
    }
}

static void override_free(am__rc_override_t *o)
{
    when_free(&o->when);
    am__rc_model_set_free(&o->models);
}

static void parse_overrides(parse_ctx_t *ctx, const am_node_t *list)
{
    if (!as_list(ctx, list, "overrides")) {
        return;
    }
    am__ratecard_t *card = ctx->card;
    for (size_t i = 0; i < list->n_children; i++) {
        const am_node_t *item = list->children[i];
        char path[PATH_LEN], sub[PATH_LEN];
        snprintf(path, sizeof(path), "overrides[%zu]", i);
        if (!check_map(ctx, item, path, override_keys)) {
            continue;
        }
        am__rc_override_t entry = {.file = ctx->file, .line = item->line};
        const am_node_t *when = required(ctx, item, "when", path);
        join_path(sub, path, "when");
        if (when == NULL || !parse_when(ctx, when, sub, &entry.when)) {
            when_free(&entry.when);
            continue;
        }
        size_t errors = ctx->errs->count;
        const am_node_t *discount = optional(item, "discount");
        if (discount != NULL) {
            join_path(sub, path, "discount");
            parse_amount(ctx, discount, sub, AM_MONEY_SCALE, &entry.discount);
        }
        const am_node_t *models = optional(item, "models");
        if (models != NULL) {
            join_path(sub, path, "models");
            char *prefix = am_arena_sprintf(card->arena, "override[%s]:", entry.when.text);
            if (prefix == NULL) {
                oom(ctx, item);
            } else {
                parse_models(ctx, models, sub, prefix, &entry.models);
            }
        }
        if (discount == NULL && models == NULL) {
            am_errors_add(ctx->errs, item, "%s: needs a discount or models", path);
        }
        entry.price_id =
            am_arena_sprintf(card->arena, "%s:override[%s]", ctx->source, entry.when.text);
        if (ctx->errs->count > errors || entry.price_id == NULL) {
            override_free(&entry);
            continue;
        }
        size_t at = card->n_overrides;
        for (size_t j = 0; j < card->n_overrides; j++) {
            if (strcmp(card->overrides[j].when.text, entry.when.text) == 0) {
                at = j;
                break;
            }
        }
        if (at < card->n_overrides && card->overrides[at].file == ctx->file) {
            am_errors_add(ctx->errs, item, "%s: `when` %s is listed twice (first at line %d)", path,
                          entry.when.text, card->overrides[at].line);
            override_free(&entry);
            continue;
        }
        if (at == card->n_overrides) {
            if (grow((void **)&card->overrides, &card->cap_overrides, at + 1,
                     sizeof(*card->overrides)) != 0) {
                oom(ctx, item);
                override_free(&entry);
                continue;
            }
            card->n_overrides++;
        } else {
            override_free(&card->overrides[at]);
        }
        card->overrides[at] = entry;
    }
}

static void parse_providers(parse_ctx_t *ctx, const am_node_t *list)
{
    if (!as_list(ctx, list, "providers")) {
        return;
    }
    am__ratecard_t *card = ctx->card;
    for (size_t i = 0; i < list->n_children; i++) {
        const am_node_t *item = list->children[i];
        char path[PATH_LEN], sub[PATH_LEN];
        snprintf(path, sizeof(path), "providers[%zu]", i);
        if (!check_map(ctx, item, path, provider_keys)) {
            continue;
        }
        am__rc_provider_t entry = {.file = ctx->file, .line = item->line};
        const am_node_t *mode = required(ctx, item, "cache_mode", path);
        const am_node_t *match = required(ctx, item, "match", path);
        join_path(sub, path, "cache_mode");
        bool ok = mode != NULL && parse_cache_mode(ctx, mode, sub, &entry.cache_mode);
        join_path(sub, path, "match");
        if (match == NULL || !parse_matcher(ctx, match, sub, &entry.match)) {
            continue;
        }
        if (!ok) {
            am__rc_matcher_free(&entry.match);
            continue;
        }
        size_t at = card->n_providers;
        for (size_t j = 0; j < card->n_providers; j++) {
            if (am__rc_matcher_same(&card->providers[j].match, &entry.match)) {
                at = j;
                break;
            }
        }
        if (at < card->n_providers && card->providers[at].file == ctx->file) {
            am_errors_add(ctx->errs, item, "%s: provider \"%s\" is listed twice (first at line %d)",
                          path, entry.match.text, card->providers[at].line);
            am__rc_matcher_free(&entry.match);
            continue;
        }
        if (at == card->n_providers) {
            if (grow((void **)&card->providers, &card->cap_providers, at + 1,
                     sizeof(*card->providers)) != 0) {
                oom(ctx, item);
                am__rc_matcher_free(&entry.match);
                continue;
            }
            card->n_providers++;
        } else {
            am__rc_matcher_free(&card->providers[at].match);
        }
        card->providers[at] = entry;
    }
}

/* ---- one file ------------------------------------------------------------- */

static bool valid_currency(const char *s)
{
    return strlen(s) == 3 && isupper((unsigned char)s[0]) && isupper((unsigned char)s[1]) &&
           isupper((unsigned char)s[2]);
}

/* The header (id, version, currency, unit); false when the entries cannot be
 * read meaningfully (no unit). */
static bool parse_header(parse_ctx_t *ctx, const am_node_t *root)
{
    am__ratecard_t *card = ctx->card;
    const am_node_t *id = required(ctx, root, "id", "");
    const am_node_t *version = required(ctx, root, "version", "");
    const am_node_t *currency = required(ctx, root, "currency", "");
    const am_node_t *unit = required(ctx, root, "unit", "");
    const char *id_text = id != NULL ? scalar(ctx, id, "id") : NULL;
    const char *version_text = version != NULL ? scalar(ctx, version, "version") : NULL;
    ctx->source = am_arena_sprintf(card->arena, "%s@%s", id_text != NULL ? id_text : "?",
                                   version_text != NULL ? version_text : "?");
    if (ctx->source == NULL) {
        oom(ctx, root);
        return false;
    }
    const char *cur = currency != NULL ? scalar(ctx, currency, "currency") : NULL;
    if (cur != NULL && !valid_currency(cur)) {
        am_errors_add(ctx->errs, currency, "currency: \"%s\" is not an ISO 4217 code such as USD",
                      cur);
    } else if (cur != NULL && card->currency[0] != '\0' && strcmp(cur, card->currency) != 0) {
        am_errors_add(ctx->errs, currency,
                      "currency: %s differs from %s in %s:%d; cards that merge must share one "
                      "currency (set include_builtin: false to leave the built-in USD card out)",
                      cur, card->currency, card->currency_file, card->currency_line);
    } else if (cur != NULL && card->currency[0] == '\0') {
        memcpy(card->currency, cur, 4);
        card->currency_file = ctx->file;
        card->currency_line = currency->line;
    }
    const char *unit_text = unit != NULL ? scalar(ctx, unit, "unit") : NULL;
    if (unit_text == NULL) {
        return false;
    }
    if (strcmp(unit_text, "per_1m") == 0) {
        ctx->unit_tokens = 1000000;
    } else if (strcmp(unit_text, "per_1k") == 0) {
        ctx->unit_tokens = 1000;
    } else if (strcmp(unit_text, "per_token") == 0) {
        ctx->unit_tokens = 1;
    } else {
        am_errors_add(ctx->errs, unit, "unit: \"%s\" is not one of per_1m, per_1k, per_token",
                      unit_text);
        return false;
    }
    return true;
}

static void parse_root(parse_ctx_t *ctx, const am_node_t *root)
{
    if (!check_map(ctx, root, "", top_keys) && root->kind != AM_NODE_MAP) {
        return;
    }
    if (!parse_header(ctx, root)) {
        return;
    }
    am__ratecard_t *card = ctx->card;
    const char **sources =
        am_arena_alloc(card->arena, (card->n_sources + 1) * sizeof(*card->sources));
    if (sources == NULL) {
        oom(ctx, root);
        return;
    }
    if (card->n_sources > 0) {
        memcpy(sources, card->sources, card->n_sources * sizeof(*sources));
    }
    sources[card->n_sources] = ctx->source;
    card->sources = sources;
    card->n_sources++;
    const am_node_t *list;
    if ((list = optional(root, "models")) != NULL) {
        parse_models(ctx, list, "models", "", &card->models);
    }
    if ((list = optional(root, "tools")) != NULL) {
        parse_tools(ctx, list);
    }
    if ((list = optional(root, "compute")) != NULL) {
        parse_compute(ctx, list);
    }
    if ((list = optional(root, "overrides")) != NULL) {
        parse_overrides(ctx, list);
    }
    if ((list = optional(root, "providers")) != NULL) {
        parse_providers(ctx, list);
    }
}

/* Parse `config` (the tree of file `name`) into card; consumes config. */
static void merge_config(am__ratecard_t *card, am_config_t *config, const char *name,
                         am_errors_t *errs)
{
    parse_ctx_t ctx = {.card = card, .errs = errs};
    ctx.file = am_arena_strdup(card->arena, name);
    if (ctx.file == NULL) {
        am_errors_add_at(errs, name, 0, "out of memory");
    } else {
        parse_root(&ctx, am_config_root(config));
    }
    am_config_free(config);
}

static am__ratecard_t *card_new(void)
{
    am__ratecard_t *card = am_calloc(1, sizeof(*card));
    if (card == NULL) {
        return NULL;
    }
    card->arena = am_arena_new(16 * 1024);
    if (card->arena == NULL) {
        am_free(card);
        return NULL;
    }
    return card;
}

void am__ratecard_free(am__ratecard_t *card)
{
    if (card == NULL) {
        return;
    }
    am__rc_model_set_free(&card->models);
    for (size_t i = 0; i < card->n_tools; i++) {
        am__rc_matcher_free(&card->tools[i].match);
    }
    for (size_t i = 0; i < card->n_compute; i++) {
        when_free(&card->compute[i].when);
    }
    for (size_t i = 0; i < card->n_overrides; i++) {
        override_free(&card->overrides[i]);
    }
    for (size_t i = 0; i < card->n_providers; i++) {
        am__rc_matcher_free(&card->providers[i].match);
    }
    am_free(card->tools);
    am_free(card->compute);
    am_free(card->overrides);
    am_free(card->providers);
    am_arena_unref(card->arena);
    am_free(card);
}

/* Index the model sets; on failure (or earlier errors) free the card. */
static am__ratecard_t *card_finish(am__ratecard_t *card, am_errors_t *errs, size_t errors_before)
{
    if (errs->count == errors_before) {
        int rc = am__rc_model_set_index(&card->models);
        for (size_t i = 0; rc == 0 && i < card->n_overrides; i++) {
            rc = am__rc_model_set_index(&card->overrides[i].models);
        }
        if (rc != 0) {
            am_errors_add_at(errs, "ratecard", 0, "out of memory");
        }
    }
    if (errs->count > errors_before) {
        am__ratecard_free(card);
        return NULL;
    }
    return card;
}

am__ratecard_t *am__ratecard_load(bool include_builtin, const char *const *paths, size_t n_paths,
                                  am_errors_t *errs)
{
    size_t errors_before = errs->count;
    am__ratecard_t *card = card_new();
    if (card == NULL) {
        am_errors_add_at(errs, "ratecard", 0, "out of memory");
        return NULL;
    }
    if (include_builtin) {
        if (am_default_ratecard_len == 0) {
            am_errors_add_at(errs, AM__RC_BUILTIN_NAME, 0,
                             "this binary was built without a built-in rate card");
        } else {
            am_config_t *config = am_config_load_buffer(AM__RC_BUILTIN_NAME, am_default_ratecard,
                                                        am_default_ratecard_len, errs);
            if (config != NULL) {
                merge_config(card, config, AM__RC_BUILTIN_NAME, errs);
            }
        }
    }
    for (size_t i = 0; i < n_paths; i++) {
        am_config_t *config = am_config_load_files(&paths[i], 1, errs);
        if (config != NULL) {
            merge_config(card, config, paths[i], errs);
        }
    }
    if (!include_builtin && n_paths == 0) {
        am_errors_add_at(errs, "ratecard", 0, "no rate card: list files or include the built-in");
    }
    return card_finish(card, errs, errors_before);
}

am__ratecard_t *am__ratecard_load_buffer(const char *name, const char *text, size_t len,
                                         am_errors_t *errs)
{
    size_t errors_before = errs->count;
    am__ratecard_t *card = card_new();
    if (card == NULL) {
        am_errors_add_at(errs, name, 0, "out of memory");
        return NULL;
    }
    am_config_t *config = am_config_load_buffer(name, text, len, errs);
    if (config != NULL) {
        merge_config(card, config, name, errs);
    }
    return card_finish(card, errs, errors_before);
}

size_t am__ratecard_count_models(const am__ratecard_t *card)
{
    size_t count = 0;
    for (size_t i = 0; i < card->models.n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++) {
            seen = am__rc_matcher_same(&card->models.items[i].match, &card->models.items[j].match);
        }
        count += seen ? 0 : 1;
    }
    return count;
}
