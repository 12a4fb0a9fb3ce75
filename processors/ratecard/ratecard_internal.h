/*
 * ratecard_internal.h - what the files of the ratecard processor share.
 *
 * A loaded rate card (am__ratecard_t) is the merge of the built-in card and
 * the configured files, in order (ARCHITECTURE.md §7).  It is immutable once
 * loaded: the processor swaps a whole new card in on reload, so a lookup never
 * sees half a card.  Every price is an exact am_money_t parsed from the YAML
 * text; nothing here goes through a double.
 *
 * Jobs, one file each:
 *   ratecard_card.c   parse card files (YAML nodes with file:line), validate,
 *                     merge several files, free.
 *   ratecard_match.c  match a model / tool / attribute set to card entries.
 *   ratecard_price.c  fixed-point arithmetic: token buckets, tiers, discount.
 *   ratecard_span.c   read a span's attributes, decide its cost.status, price
 *                     it, write the attributes of §6.
 *   ratecard.c        the processor: options, instances, reload, metrics.
 *   ratecard_cli.c    `agentmeter ratecard price|check`.
 *
 * Ownership: a card owns every string, array and compiled regex it points
 * to; am__ratecard_free() releases them all.  Pointers into a card (entries,
 * price ids) are valid until the card is freed.
 */
#ifndef AM_RATECARD_INTERNAL_H
#define AM_RATECARD_INTERNAL_H

#include <regex.h>

#include "am_arena.h"
#include "am_attr.h"
#include "am_config.h"
#include "am_options.h"

/* Token buckets, in the order the attributes of §6 list them. */
enum {
    AM__RC_INPUT = 0,
    AM__RC_OUTPUT,
    AM__RC_CACHE_READ,
    AM__RC_CACHE_WRITE,
    AM__RC_REASONING,
    AM__RC_N_TOKEN_KINDS,
};
/* Cost parts: the token buckets, then per-call tools and GPU compute. */
enum {
    AM__RC_PART_TOOL = AM__RC_N_TOKEN_KINDS,
    AM__RC_PART_COMPUTE,
    AM__RC_N_PARTS,
};
extern const char *const am__rc_part_names[AM__RC_N_PARTS]; /* "input", ..., "compute" */

typedef struct am__rc_prices {
    am_money_t value[AM__RC_N_TOKEN_KINDS]; /* per `unit_tokens` tokens */
    bool set[AM__RC_N_TOKEN_KINDS];
} am__rc_prices_t;

typedef enum am__rc_match_kind {
    AM__RC_EXACT = 0,
    AM__RC_GLOB = 1,
    AM__RC_REGEX = 2,
} am__rc_match_kind_t;

/* "name" (exact, case-insensitive), "glob:pat" (fnmatch, case-insensitive) or
 * "re:pat" (POSIX extended regex, case-insensitive). */
typedef struct am__rc_matcher {
    am__rc_match_kind_t kind;
    const char *text;    /* as written in the card */
    const char *pattern; /* text without its "glob:" / "re:" prefix */
    size_t literal_len;  /* characters that must match literally: the tie-break */
    regex_t *regex;      /* REGEX only; owned by the card */
} am__rc_matcher_t;

typedef enum am__rc_cache_mode {
    AM__RC_CACHE_DEFAULT = 0, /* not set here: ask the provider, else subtract */
    AM__RC_CACHE_SUBTRACT,    /* OTel: input includes cache, output includes reasoning */
    AM__RC_CACHE_ADDITIVE,    /* every bucket reported apart */
} am__rc_cache_mode_t;

typedef struct am__rc_tier {
    int64_t input_tokens_above;
    am__rc_prices_t prices; /* unset fields inherit the base entry */
} am__rc_tier_t;

typedef struct am__rc_model {
    am__rc_matcher_t match;
    const char *provider; /* NULL: any provider */
    am__rc_cache_mode_t cache_mode;
    am__rc_prices_t prices;
    am__rc_tier_t *tiers; /* ascending input_tokens_above */
    size_t n_tiers;
    int64_t effective_from; /* unix ns, INT64_MIN when the entry has no date */
    const char *effective_text;
    int64_t unit_tokens;  /* 1, 1000 or 1000000: the card's `unit` */
    const char *price_id; /* "id@version:match[...]" */
    const char *file;
    int line;
} am__rc_model_t;

typedef struct am__rc_model_set {
    am__rc_model_t *items;
    size_t n, cap;
    /* Built by am__rc_model_set_index() after loading. */
    const am__rc_model_t **exact; /* sorted by pattern, case-insensitive */
    size_t n_exact;
    const am__rc_model_t **patterns; /* globs then regexes, longest literal first */
    size_t n_patterns;
} am__rc_model_set_t;

typedef struct am__rc_tool {
    am__rc_matcher_t match;
    am_money_t per_call;
    const char *price_id;
    const char *file;
    int line;
} am__rc_tool_t;

/* `when: {attr: value, ...}`: every attribute must match (span, then resource). */
typedef struct am__rc_cond {
    const char *key;
    am__rc_matcher_t value;
} am__rc_cond_t;

typedef struct am__rc_when {
    am__rc_cond_t *conds;
    size_t n_conds;
    const char *text; /* canonical "k=v,k2=v2" (sorted): the merge key */
} am__rc_when_t;

typedef struct am__rc_compute {
    am__rc_when_t when;
    am_money_t per_gpu_second;
    const char *price_id;
    const char *file;
    int line;
} am__rc_compute_t;

typedef struct am__rc_override {
    am__rc_when_t when;
    am_money_t discount;       /* fraction in nano-units: 0.20 == 200000000 */
    am__rc_model_set_t models; /* contracted prices, looked up before the list */
    const char *price_id;
    const char *file;
    int line;
} am__rc_override_t;

typedef struct am__rc_provider {
    am__rc_matcher_t match;
    am__rc_cache_mode_t cache_mode;
    const char *file;
    int line;
} am__rc_provider_t;

typedef struct am__ratecard {
    am_arena_t *arena; /* strings and fixed arrays */
    char currency[8];
    const char *currency_file;
    int currency_line;
    am__rc_model_set_t models;
    am__rc_tool_t *tools;
    size_t n_tools, cap_tools;
    am__rc_compute_t *compute;
    size_t n_compute, cap_compute;
    am__rc_override_t *overrides;
    size_t n_overrides, cap_overrides;
    am__rc_provider_t *providers;
    size_t n_providers, cap_providers;
    const char **sources; /* "id@version" per loaded file, in load order */
    size_t n_sources;
} am__ratecard_t;

/* ---- ratecard_card.c ------------------------------------------------- */

/* The name the built-in card carries in errors and in `check`. */
#define AM__RC_BUILTIN_NAME "builtin:deploy/ratecards/default.yaml"

/* Load the built-in card (when include_builtin) and then each file in order,
 * merging later entries over earlier ones with the same match, provider and
 * effective_from.  Every problem is appended to errs as "file:line: ...";
 * on any error the whole card is rejected and NULL returned.  The caller
 * frees the card with am__ratecard_free(). */
am__ratecard_t *am__ratecard_load(bool include_builtin, const char *const *paths, size_t n_paths,
                                  am_errors_t *errs);
/* Same from one buffer (tests, CLI); `name` is the file name in errors. */
am__ratecard_t *am__ratecard_load_buffer(const char *name, const char *text, size_t len,
                                         am_errors_t *errs);
void am__ratecard_free(am__ratecard_t *card);
/* Distinct model `match` texts across the card (for `check`). */
size_t am__ratecard_count_models(const am__ratecard_t *card);

/* "2026-06-01" -> unix ns of that UTC midnight. */
int am__rc_parse_date(const char *text, int64_t *out_ns);

/* ---- ratecard_match.c ------------------------------------------------ */

/* Compile `text` into m (strings in arena, regex malloc'd).  On error returns
 * AM_EINVAL with a message in errbuf. */
int am__rc_matcher_init(am__rc_matcher_t *m, am_arena_t *arena, const char *text, char *errbuf,
                        size_t errbuf_size);
void am__rc_matcher_free(am__rc_matcher_t *m);
bool am__rc_matcher_test(const am__rc_matcher_t *m, const char *s);
/* Same matcher text (the merge key): case-insensitive compare. */
bool am__rc_matcher_same(const am__rc_matcher_t *a, const am__rc_matcher_t *b);

/* Length of `name` without one trailing -YYYY-MM-DD, -YYYYMMDD, @YYYYMMDD or
 * -vN[:M] suffix; `len` when there is none. */
size_t am__rc_strip_suffix(const char *name, size_t len);

int am__rc_model_set_index(am__rc_model_set_t *set);
void am__rc_model_set_free(am__rc_model_set_t *set);

/* How a model matched (for the CLI). */
typedef struct am__rc_match_info {
    am__rc_match_kind_t kind;
    bool stripped; /* an exact match after stripping a version/date suffix */
} am__rc_match_info_t;

/* The entry pricing `model` served by `provider` (may be NULL) at time
 * `at_ns`: exact (raw name, then with suffixes stripped) > glob > regex, the
 * longest literal first; a provider-filtered entry beats an unfiltered one;
 * among versions the newest effective_from not after at_ns.  NULL if none. */
const am__rc_model_t *am__rc_find_model(const am__rc_model_set_t *set, const char *model,
                                        const char *provider, int64_t at_ns,
                                        am__rc_match_info_t *info);
const am__rc_tool_t *am__rc_find_tool(const am__ratecard_t *card, const char *tool);
/* The matching entry with the most conditions (first one on a tie). */
const am__rc_compute_t *am__rc_find_compute(const am__ratecard_t *card, const am_pb_span_t *span,
                                            const am_pb_resource_t *resource);
const am__rc_override_t *am__rc_find_override(const am__ratecard_t *card, const am_pb_span_t *span,
                                              const am_pb_resource_t *resource);
/* cache_mode of the entry, else of the provider's `providers:` entry, else subtract. */
am__rc_cache_mode_t am__rc_cache_mode(const am__ratecard_t *card, const am__rc_model_t *entry,
                                      const char *provider);

/* ---- ratecard_price.c ------------------------------------------------ */

/* Token counts as the span reported them (§5 semantics). */
typedef struct am__rc_usage {
    int64_t tokens[AM__RC_N_TOKEN_KINDS];
    bool present[AM__RC_N_TOKEN_KINDS];
} am__rc_usage_t;

typedef struct am__rc_breakdown {
    am_money_t part[AM__RC_N_PARTS];
    bool applies[AM__RC_N_PARTS];
    int64_t billed_tokens[AM__RC_N_TOKEN_KINDS]; /* after subtract and clamping */
    am_money_t unit_price[AM__RC_N_TOKEN_KINDS]; /* price used, per unit_tokens */
    int64_t unit_tokens;
    int64_t input_total;       /* the tier threshold compares against this */
    const am__rc_tier_t *tier; /* NULL: base prices */
    am__rc_cache_mode_t cache_mode;
    unsigned negative_buckets; /* buckets clamped to 0 */
    am_money_t total;
} am__rc_breakdown_t;

/* qty * price / divisor, rounded half away from zero to the nano-unit, in
 * 128-bit arithmetic; saturates at the int64 range. */
am_money_t am__rc_mul_div(int64_t qty, am_money_t price, int64_t divisor);
/* value * (1 - discount), discount a nano fraction in [0, 1e9]. */
am_money_t am__rc_discount(am_money_t value, am_money_t discount);
/* Fill the token parts of `out` (zeroed by the caller) for `usage` priced by
 * `entry` in cache mode `mode` (DEFAULT means subtract). */
void am__rc_price_tokens(const am__rc_model_t *entry, am__rc_cache_mode_t mode,
                         const am__rc_usage_t *usage, am__rc_breakdown_t *out);
/* Sum the parts into out->total (saturating). */
void am__rc_total(am__rc_breakdown_t *out);

/* ---- ratecard_span.c ------------------------------------------------- */

typedef enum am__rc_status {
    AM__RC_PRICED = 0,
    AM__RC_SUPPLIED,
    AM__RC_UNPRICED_MODEL,
    AM__RC_NO_USAGE,
    AM__RC_NOT_BILLABLE,
    AM__RC_N_STATUS,
} am__rc_status_t;
extern const char *const am__rc_status_names[AM__RC_N_STATUS];

typedef struct am__rc_result {
    am__rc_status_t status;
    am_money_t self;
    am__rc_breakdown_t parts;
    const char *model;             /* borrowed from the span, may be NULL */
    const char *provider;          /* borrowed from the span, may be NULL */
    const char *supplied_currency; /* borrowed, may be NULL */
    const am__rc_model_t *entry;
    const am__rc_tool_t *tool;
    const am__rc_compute_t *compute;
    const am__rc_override_t *override;
} am__rc_result_t;

/* Decide and compute the cost of one span; reads only.  `now_ns` stands in
 * for a span without a start time. */
void am__rc_price_span(const am__ratecard_t *card, const am_pb_span_t *span,
                       const am_pb_resource_t *resource, int64_t now_ns, am__rc_result_t *out);
/* Write the attributes of §6 for `result` into `span` (memory from arena).
 * Returns 0 or AM_ENOMEM. */
int am__rc_write_span(const am__ratecard_t *card, const am__rc_result_t *result, am_arena_t *arena,
                      am_pb_span_t *span);
/* The price id(s) behind `result`, joined by " + "; from the arena. */
char *am__rc_price_id(const am__rc_result_t *result, am_arena_t *arena);

/* ---- ratecard_cli.c -------------------------------------------------- */

/* `agentmeter ratecard <price|check> ...`; argv[0] is the subcommand.
 * Returns the process exit code. */
int am__rc_cli(int argc, char **argv);

/* ---- ratecard.c ------------------------------------------------------ */

typedef struct am__rc_config {
    am_strlist_t files;
    bool include_builtin;
    int64_t reload_interval_ms;
} am__rc_config_t;

extern const am_option_t am__rc_options[];

#endif
