/*
 * ratecard_match.c - which card entry prices a span.
 *
 * Model names in traces are messy: dated snapshots (gpt-4o-2024-08-06,
 * claude-sonnet-4-5-20250929), Vertex ids (claude-sonnet-4-5@20250929),
 * Bedrock ids (anthropic.claude-...-v1:0).  The rules (ARCHITECTURE.md §7):
 *
 *   1. exact entries, first against the raw name (so a dated entry such as
 *      gpt-4o-2024-05-13 can carry its own price), then against the name with
 *      one trailing -YYYY-MM-DD / -YYYYMMDD / @YYYYMMDD / -vN[:M] suffix
 *      stripped, repeatedly (…-20250929-v1:0 -> …-20250929 -> …);
 *   2. globs (fnmatch) against the raw name;
 *   3. regexes (POSIX ERE) against the raw name.
 *
 * Within one level the longest literal wins, then an entry with a provider
 * filter beats one without, then the newest effective_from not after the
 * span.  Prefixes and substrings never match: gpt-5-mini is not gpt-5.
 * Every comparison is case-insensitive (deployments often say "GPT-4o").
 *
 * Exact entries sit in a sorted array searched by bisection; the few
 * patterns are tried in order, best first.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* FNM_CASEFOLD */
#endif
#include <ctype.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "processors/ratecard/ratecard_internal.h"

/* Longest model or tool name we look at; longer ones match nothing. */
#define MAX_NAME 512

static size_t glob_literal_len(const char *p)
{
    size_t n = 0;
    for (; *p != '\0'; p++) {
        if (*p == '*' || *p == '?') {
            continue;
        }
        if (*p == '[') {
            const char *close = strchr(p + 1, ']');
            if (close != NULL) {
                p = close;
                continue;
            }
        }
        if (*p == '\\' && p[1] != '\0') {
            p++;
        }
        n++;
    }
    return n;
}

static size_t regex_literal_len(const char *p)
{
    size_t n = 0;
    for (; *p != '\0'; p++) {
        if (*p == '\\' && p[1] != '\0') {
            p++;
            n++;
            continue;
        }
        if (*p == '[') {
            const char *close = strchr(p + 2, ']');
            if (close != NULL) {
                p = close;
                continue;
            }
        }
        if (strchr("^$.*+?()[]{}|", *p) != NULL) {
            continue;
        }
        n++;
    }
    return n;
}

int am__rc_matcher_init(am__rc_matcher_t *m, am_arena_t *arena, const char *text, char *errbuf,
                        size_t errbuf_size)
{
    memset(m, 0, sizeof(*m));
    m->text = am_arena_strdup(arena, text);
    if (m->text == NULL) {
        snprintf(errbuf, errbuf_size, "out of memory");
        return AM_ENOMEM;
    }
    if (strncmp(text, "glob:", 5) == 0) {
        m->kind = AM__RC_GLOB;
        m->pattern = m->text + 5;
        m->literal_len = glob_literal_len(m->pattern);
    } else if (strncmp(text, "re:", 3) == 0) {
        m->kind = AM__RC_REGEX;
        m->pattern = m->text + 3;
        m->literal_len = regex_literal_len(m->pattern);
        m->regex = am_malloc(sizeof(*m->regex));
        if (m->regex == NULL) {
            snprintf(errbuf, errbuf_size, "out of memory");
            return AM_ENOMEM;
        }
        int rc = regcomp(m->regex, m->pattern, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        if (rc != 0) {
            char why[160];
            regerror(rc, m->regex, why, sizeof(why));
            snprintf(errbuf, errbuf_size, "bad regular expression \"%s\": %s", m->pattern, why);
            am_free(m->regex);
            m->regex = NULL;
            return AM_EINVAL;
        }
    } else {
        m->kind = AM__RC_EXACT;
        m->pattern = m->text;
        m->literal_len = strlen(m->pattern);
    }
    if (m->pattern[0] == '\0') {
        snprintf(errbuf, errbuf_size, "empty pattern");
        am__rc_matcher_free(m);
        return AM_EINVAL;
    }
    return 0;
}

void am__rc_matcher_free(am__rc_matcher_t *m)
{
    if (m->regex != NULL) {
        regfree(m->regex);
        am_free(m->regex);
        m->regex = NULL;
    }
}

bool am__rc_matcher_test(const am__rc_matcher_t *m, const char *s)
{
    switch (m->kind) {
    case AM__RC_EXACT:
        return strcasecmp(m->pattern, s) == 0;
    case AM__RC_GLOB:
        return fnmatch(m->pattern, s, FNM_CASEFOLD) == 0;
    case AM__RC_REGEX:
        return m->regex != NULL && regexec(m->regex, s, 0, NULL, 0) == 0;
    }
    return false;
}

bool am__rc_matcher_same(const am__rc_matcher_t *a, const am__rc_matcher_t *b)
{
    return a->kind == b->kind && strcasecmp(a->pattern, b->pattern) == 0;
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

/* "20" followed by six digits: a plausible YYYYMMDD. */
static bool is_compact_date(const char *s)
{
    return s[0] == '2' && s[1] == '0' && all_digits(s, 8);
}

size_t am__rc_strip_suffix(const char *name, size_t len)
{
    /* -YYYY-MM-DD */
    if (len > 11) {
        const char *s = name + len - 11;
        if (s[0] == '-' && s[1] == '2' && s[2] == '0' && all_digits(s + 1, 4) && s[5] == '-' &&
            all_digits(s + 6, 2) && s[8] == '-' && all_digits(s + 9, 2)) {
            return len - 11;
        }
    }
    /* -YYYYMMDD and @YYYYMMDD */
    if (len > 9) {
        const char *s = name + len - 9;
        if ((s[0] == '-' || s[0] == '@') && is_compact_date(s + 1)) {
            return len - 9;
        }
    }
    /* -vN and -vN:M (Bedrock) */
    size_t end = len;
    while (end > 0 && isdigit((unsigned char)name[end - 1])) {
        end--;
    }
    if (end < len && end > 0 && name[end - 1] == ':') {
        size_t colon = end - 1;
        end = colon;
        while (end > 0 && isdigit((unsigned char)name[end - 1])) {
            end--;
        }
        if (end == colon) {
            return len; /* ":M" without N */
        }
    } else if (end == len) {
        return len; /* no trailing digits */
    }
    if (end >= 3 && (name[end - 1] == 'v' || name[end - 1] == 'V') && name[end - 2] == '-') {
        return end - 2;
    }
    return len;
}

/* ---- model sets --------------------------------------------------------- */

static int cmp_exact(const void *a, const void *b)
{
    const am__rc_model_t *ma = *(const am__rc_model_t *const *)a;
    const am__rc_model_t *mb = *(const am__rc_model_t *const *)b;
    return strcasecmp(ma->match.pattern, mb->match.pattern);
}

static int cmp_pattern(const void *a, const void *b)
{
    const am__rc_model_t *ma = *(const am__rc_model_t *const *)a;
    const am__rc_model_t *mb = *(const am__rc_model_t *const *)b;
    if (ma->match.kind != mb->match.kind) {
        return (int)ma->match.kind - (int)mb->match.kind;
    }
    if (ma->match.literal_len != mb->match.literal_len) {
        return ma->match.literal_len > mb->match.literal_len ? -1 : 1;
    }
    /* Stable order for equal ranks: the card's order. */
    return ma < mb ? -1 : (ma > mb ? 1 : 0);
}

int am__rc_model_set_index(am__rc_model_set_t *set)
{
    am_free(set->exact);
    am_free(set->patterns);
    set->exact = NULL;
    set->patterns = NULL;
    set->n_exact = set->n_patterns = 0;
    if (set->n == 0) {
        return 0;
    }
    set->exact = am_calloc(set->n, sizeof(*set->exact));
    set->patterns = am_calloc(set->n, sizeof(*set->patterns));
    if (set->exact == NULL || set->patterns == NULL) {
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < set->n; i++) {
        const am__rc_model_t *m = &set->items[i];
        if (m->match.kind == AM__RC_EXACT) {
            set->exact[set->n_exact++] = m;
        } else {
            set->patterns[set->n_patterns++] = m;
        }
    }
    qsort(set->exact, set->n_exact, sizeof(*set->exact), cmp_exact);
    qsort(set->patterns, set->n_patterns, sizeof(*set->patterns), cmp_pattern);
    return 0;
}

void am__rc_model_set_free(am__rc_model_set_t *set)
{
    for (size_t i = 0; i < set->n; i++) {
        am__rc_matcher_free(&set->items[i].match);
    }
    am_free(set->items);
    am_free(set->exact);
    am_free(set->patterns);
    memset(set, 0, sizeof(*set));
}

static bool provider_ok(const am__rc_model_t *m, const char *provider)
{
    return m->provider == NULL || (provider != NULL && strcasecmp(m->provider, provider) == 0);
}

/* Is `cand` a better choice than `best` among entries of the same level and
 * literal length?  Provider-filtered first, then the newest version. */
static bool better_same_rank(const am__rc_model_t *cand, const am__rc_model_t *best)
{
    if (best == NULL) {
        return true;
    }
    bool cp = cand->provider != NULL, bp = best->provider != NULL;
    if (cp != bp) {
        return cp;
    }
    return cand->effective_from > best->effective_from;
}

/* Compare a card pattern with name[0..len), as strcasecmp would order them. */
static int cmp_name(const char *pattern, const char *name, size_t len)
{
    int c = strncasecmp(pattern, name, len);
    if (c != 0) {
        return c;
    }
    return pattern[len] == '\0' ? 0 : 1;
}

/* The best exact entry named name[0..len) (case-insensitive). */
static const am__rc_model_t *find_exact(const am__rc_model_set_t *set, const char *name, size_t len,
                                        const char *provider, int64_t at_ns)
{
    size_t lo = 0, hi = set->n_exact;
    while (lo < hi) { /* first entry not below name */
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_name(set->exact[mid]->match.pattern, name, len) < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    const am__rc_model_t *best = NULL;
    for (size_t i = lo; i < set->n_exact && cmp_name(set->exact[i]->match.pattern, name, len) == 0;
         i++) {
        const am__rc_model_t *m = set->exact[i];
        if (provider_ok(m, provider) && m->effective_from <= at_ns && better_same_rank(m, best)) {
            best = m;
        }
    }
    return best;
}

const am__rc_model_t *am__rc_find_model(const am__rc_model_set_t *set, const char *model,
                                        const char *provider, int64_t at_ns,
                                        am__rc_match_info_t *info)
{
    if (set == NULL || model == NULL || model[0] == '\0') {
        return NULL;
    }
    size_t len = strlen(model);
    if (len > MAX_NAME) {
        return NULL;
    }
    am__rc_match_info_t unused;
    if (info == NULL) {
        info = &unused;
    }
    info->kind = AM__RC_EXACT;
    info->stripped = false;
    for (int round = 0; round < 4; round++) {
        const am__rc_model_t *hit = find_exact(set, model, len, provider, at_ns);
        if (hit != NULL) {
            info->stripped = round > 0;
            return hit;
        }
        size_t shorter = am__rc_strip_suffix(model, len);
        if (shorter == len || shorter == 0) {
            break;
        }
        len = shorter;
    }
    const am__rc_model_t *best = NULL;
    for (size_t i = 0; i < set->n_patterns; i++) {
        const am__rc_model_t *m = set->patterns[i];
        if (best != NULL && (m->match.kind != best->match.kind ||
                             m->match.literal_len != best->match.literal_len)) {
            break; /* patterns are sorted best first: nothing later can win */
        }
        if (provider_ok(m, provider) && m->effective_from <= at_ns &&
            am__rc_matcher_test(&m->match, model) && better_same_rank(m, best)) {
            best = m;
        }
    }
    if (best != NULL) {
        info->kind = best->match.kind;
    }
    return best;
}

const am__rc_tool_t *am__rc_find_tool(const am__ratecard_t *card, const char *tool)
{
    if (tool == NULL || tool[0] == '\0' || strlen(tool) > MAX_NAME) {
        return NULL;
    }
    const am__rc_tool_t *best = NULL;
    for (size_t i = 0; i < card->n_tools; i++) {
        const am__rc_tool_t *t = &card->tools[i];
        if (best != NULL && (t->match.kind > best->match.kind ||
                             (t->match.kind == best->match.kind &&
                              t->match.literal_len <= best->match.literal_len))) {
            continue;
        }
        if (am__rc_matcher_test(&t->match, tool)) {
            best = t;
        }
    }
    return best;
}

/* The value of `key` as text: span attribute first, then resource. */
static const char *attr_text(const am_pb_span_t *span, const am_pb_resource_t *resource,
                             const char *key, char *buf, size_t size)
{
    const am_pb_anyvalue_t *v = NULL;
    if (span != NULL) {
        v = am_attr_find(span->attributes, span->n_attributes, key);
    }
    if (v == NULL && resource != NULL) {
        v = am_attr_find(resource->attributes, resource->n_attributes, key);
    }
    if (v == NULL) {
        return NULL;
    }
    return am_anyvalue_to_text(v, buf, size);
}

static bool when_matches(const am__rc_when_t *when, const am_pb_span_t *span,
                         const am_pb_resource_t *resource)
{
    for (size_t i = 0; i < when->n_conds; i++) {
        char buf[MAX_NAME + 1];
        const char *value = attr_text(span, resource, when->conds[i].key, buf, sizeof(buf));
        if (value == NULL || !am__rc_matcher_test(&when->conds[i].value, value)) {
            return false;
        }
    }
    return true;
}

const am__rc_compute_t *am__rc_find_compute(const am__ratecard_t *card, const am_pb_span_t *span,
                                            const am_pb_resource_t *resource)
{
    const am__rc_compute_t *best = NULL;
    for (size_t i = 0; i < card->n_compute; i++) {
        const am__rc_compute_t *c = &card->compute[i];
        if ((best == NULL || c->when.n_conds > best->when.n_conds) &&
            when_matches(&c->when, span, resource)) {
            best = c;
        }
    }
    return best;
}

const am__rc_override_t *am__rc_find_override(const am__ratecard_t *card, const am_pb_span_t *span,
                                              const am_pb_resource_t *resource)
{
    const am__rc_override_t *best = NULL;
    for (size_t i = 0; i < card->n_overrides; i++) {
        const am__rc_override_t *o = &card->overrides[i];
        if ((best == NULL || o->when.n_conds > best->when.n_conds) &&
            when_matches(&o->when, span, resource)) {
            best = o;
        }
    }
    return best;
}

am__rc_cache_mode_t am__rc_cache_mode(const am__ratecard_t *card, const am__rc_model_t *entry,
                                      const char *provider)
{
    if (entry != NULL && entry->cache_mode != AM__RC_CACHE_DEFAULT) {
        return entry->cache_mode;
    }
    if (provider != NULL && strlen(provider) <= MAX_NAME) {
        const am__rc_provider_t *best = NULL;
        for (size_t i = 0; i < card->n_providers; i++) {
            const am__rc_provider_t *p = &card->providers[i];
            if (best != NULL && (p->match.kind > best->match.kind ||
                                 (p->match.kind == best->match.kind &&
                                  p->match.literal_len <= best->match.literal_len))) {
                continue;
            }
            if (am__rc_matcher_test(&p->match, provider)) {
                best = p;
            }
        }
        if (best != NULL && best->cache_mode != AM__RC_CACHE_DEFAULT) {
            return best->cache_mode;
        }
    }
    return AM__RC_CACHE_SUBTRACT;
}
