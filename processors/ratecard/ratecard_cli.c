/*
 * ratecard_cli.c - `agentmeter ratecard price|check`: the rate card engine
 * from the command line, so an operator can ask "what would this call cost,
 * and which price says so" and validate a card before deploying it.
 *
 * Both commands use exactly the loader, matcher and arithmetic the processor
 * uses; nothing here prices on its own.
 *
 * Exit codes: 0 done, 1 the answer is "no" (unknown model, card errors),
 * 2 bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "processors/ratecard/ratecard_internal.h"

#define MAX_CARDS 64

static void print_usage(FILE *out)
{
    fprintf(out, "usage:\n"
                 "  agentmeter ratecard price --model M [--provider P] --input N --output N\n"
                 "        [--cache-read N] [--cache-write N] [--reasoning N]\n"
                 "        [--cache-mode subtract|additive] [--at YYYY-MM-DD]\n"
                 "        [--card FILE]... [--no-builtin]\n"
                 "      Price one call and print each part, the total and the price id.\n"
                 "      Token counts follow OpenTelemetry: --input includes cache reads and\n"
                 "      writes and --output includes reasoning, unless the entry or\n"
                 "      --cache-mode says additive. --card files merge over the built-in card.\n"
                 "  agentmeter ratecard check [--with-builtin] [FILE]...\n"
                 "      Validate rate card files (merged in order; the built-in card when no\n"
                 "      FILE is given) and print every error with file:line.\n");
}

static int parse_count(const char *flag, const char *text, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0) {
        fprintf(stderr, "agentmeter ratecard: %s: \"%s\" is not a token count\n", flag, text);
        return AM_EINVAL;
    }
    *out = value;
    return 0;
}

static const char *unit_name(int64_t unit_tokens)
{
    switch (unit_tokens) {
    case 1:
        return "token";
    case 1000:
        return "1K";
    default:
        return "1M";
    }
}

static const char *cache_mode_name(am__rc_cache_mode_t mode)
{
    return mode == AM__RC_CACHE_ADDITIVE ? "additive" : "subtract";
}

static int cmd_price(int argc, char **argv)
{
    const char *model = NULL, *provider = NULL, *at_text = NULL, *mode_text = NULL;
    const char *cards[MAX_CARDS];
    size_t n_cards = 0;
    bool builtin = true;
    am__rc_usage_t usage = {0};
    static const struct {
        const char *flag;
        int kind;
    } counts[] = {
        {"--input", AM__RC_INPUT},           {"--output", AM__RC_OUTPUT},
        {"--cache-read", AM__RC_CACHE_READ}, {"--cache-write", AM__RC_CACHE_WRITE},
        {"--reasoning", AM__RC_REASONING},
    };
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--no-builtin") == 0) {
            builtin = false;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_usage(stdout);
            return 0;
        }
        if (value == NULL) {
            fprintf(stderr, "agentmeter ratecard price: %s needs a value\n", arg);
            return 2;
        }
        i++;
        bool known = true;
        if (strcmp(arg, "--model") == 0) {
            model = value;
        } else if (strcmp(arg, "--provider") == 0) {
            provider = value;
        } else if (strcmp(arg, "--at") == 0) {
            at_text = value;
        } else if (strcmp(arg, "--cache-mode") == 0) {
            mode_text = value;
        } else if (strcmp(arg, "--card") == 0) {
            if (n_cards == MAX_CARDS) {
                fprintf(stderr, "agentmeter ratecard price: at most %d --card files\n", MAX_CARDS);
                return 2;
            }
            cards[n_cards++] = value;
        } else {
            known = false;
            for (size_t c = 0; c < AM_ARRAY_SIZE(counts); c++) {
                if (strcmp(arg, counts[c].flag) == 0) {
                    known = true;
                    if (parse_count(arg, value, &usage.tokens[counts[c].kind]) != 0) {
                        return 2;
                    }
                    usage.present[counts[c].kind] = true;
                }
            }
        }
        if (!known) {
            fprintf(stderr, "agentmeter ratecard price: unknown option %s\n", arg);
            print_usage(stderr);
            return 2;
        }
    }
    if (model == NULL) {
        fprintf(stderr, "agentmeter ratecard price: --model is required\n");
        print_usage(stderr);
        return 2;
    }
    int64_t at_ns = (int64_t)am_now_unix_nano();
    if (at_text != NULL && am__rc_parse_date(at_text, &at_ns) != 0) {
        fprintf(stderr, "agentmeter ratecard price: --at: \"%s\" is not a date (YYYY-MM-DD)\n",
                at_text);
        return 2;
    }
    am__rc_cache_mode_t mode = AM__RC_CACHE_DEFAULT;
    if (mode_text != NULL) {
        if (strcmp(mode_text, "subtract") == 0) {
            mode = AM__RC_CACHE_SUBTRACT;
        } else if (strcmp(mode_text, "additive") == 0) {
            mode = AM__RC_CACHE_ADDITIVE;
        } else {
            fprintf(stderr, "agentmeter ratecard price: --cache-mode: subtract or additive\n");
            return 2;
        }
    }

    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load(builtin, cards, n_cards, &errs);
    if (card == NULL) {
        am_errors_print(&errs, stderr);
        am_errors_clear(&errs);
        return 1;
    }
    am__rc_match_info_t info;
    const am__rc_model_t *entry = am__rc_find_model(&card->models, model, provider, at_ns, &info);
    if (entry == NULL) {
        fprintf(stderr,
                "agentmeter ratecard price: no rate card entry prices model \"%s\"%s%s%s%s%s "
                "(such spans get cost.status=unpriced_model)\n",
                model, provider != NULL ? " from provider \"" : "",
                provider != NULL ? provider : "", provider != NULL ? "\"" : "",
                at_text != NULL ? " at " : "", at_text != NULL ? at_text : "");
        am__ratecard_free(card);
        return 1;
    }
    if (mode == AM__RC_CACHE_DEFAULT) {
        mode = am__rc_cache_mode(card, entry, provider);
    }
    am__rc_breakdown_t parts = {0};
    am__rc_price_tokens(entry, mode, &usage, &parts);
    am__rc_total(&parts);

    static const char *const how[] = {"exact", "glob", "regex"};
    char money[AM_MONEY_STRLEN], price[AM_MONEY_STRLEN];
    printf("model        %s%s%s\n", model, provider != NULL ? "  provider " : "",
           provider != NULL ? provider : "");
    printf("entry        %s  (%s%s; %s:%d)\n", entry->match.text, how[info.kind],
           info.stripped ? ", version/date suffix stripped" : "", entry->file, entry->line);
    printf("price_id     %s\n", entry->price_id);
    printf("cache_mode   %s\n", cache_mode_name(parts.cache_mode));
    if (parts.tier != NULL) {
        printf("tier         input_tokens_above %lld applies: the request has %lld input "
               "tokens, so every part uses the tier's prices\n",
               (long long)parts.tier->input_tokens_above, (long long)parts.input_total);
    } else {
        printf("tier         none (base prices; %lld input tokens)\n",
               (long long)parts.input_total);
    }
    char price_head[32], cost_head[32];
    snprintf(price_head, sizeof(price_head), "%s per %s", card->currency,
             unit_name(parts.unit_tokens));
    snprintf(cost_head, sizeof(cost_head), "cost %s", card->currency);
    printf("\n%-12s %14s %18s %20s\n", "part", "tokens", price_head, cost_head);
    for (int k = 0; k < AM__RC_N_TOKEN_KINDS; k++) {
        printf("%-12s %14lld %18s %20s\n", am__rc_part_names[k], (long long)parts.billed_tokens[k],
               am_money_format(parts.unit_price[k], price), am_money_format(parts.part[k], money));
    }
    printf("%-12s %14s %18s %20s\n", "total", "", "", am_money_format(parts.total, money));
    printf("\ntotal        %s %s\n", am_money_format(parts.total, money), card->currency);
    if (parts.negative_buckets > 0) {
        printf("note         %u token bucket(s) came out negative and were billed as 0\n",
               parts.negative_buckets);
    }
    am__ratecard_free(card);
    return 0;
}

static int cmd_check(int argc, char **argv)
{
    const char *files[MAX_CARDS];
    size_t n_files = 0;
    bool builtin = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--with-builtin") == 0) {
            builtin = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "agentmeter ratecard check: unknown option %s\n", argv[i]);
            return 2;
        } else if (n_files == MAX_CARDS) {
            fprintf(stderr, "agentmeter ratecard check: at most %d files\n", MAX_CARDS);
            return 2;
        } else {
            files[n_files++] = argv[i];
        }
    }
    if (n_files == 0) {
        builtin = true;
    }
    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load(builtin, files, n_files, &errs);
    if (card == NULL) {
        am_errors_print(&errs, stdout);
        printf("%zu error%s; the card is rejected\n", errs.count, errs.count == 1 ? "" : "s");
        am_errors_clear(&errs);
        return 1;
    }
    printf("ok:");
    for (size_t i = 0; i < card->n_sources; i++) {
        printf(" %s", card->sources[i]);
    }
    size_t override_models = 0;
    for (size_t i = 0; i < card->n_overrides; i++) {
        override_models += card->overrides[i].models.n;
    }
    printf("\n  currency %s; %zu model entries, %zu models; %zu tools; %zu compute prices; "
           "%zu overrides (%zu contracted model prices); %zu provider settings\n",
           card->currency, card->models.n, am__ratecard_count_models(card), card->n_tools,
           card->n_compute, card->n_overrides, override_models, card->n_providers);
    am__ratecard_free(card);
    return 0;
}

int am__rc_cli(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0 ||
        strcmp(argv[0], "-h") == 0) {
        print_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (strcmp(argv[0], "price") == 0) {
        return cmd_price(argc, argv);
    }
    if (strcmp(argv[0], "check") == 0) {
        return cmd_check(argc, argv);
    }
    fprintf(stderr, "agentmeter ratecard: unknown command \"%s\"\n", argv[0]);
    print_usage(stderr);
    return 2;
}
