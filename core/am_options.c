/*
 * am_options.c - one option table drives parsing, defaults, validation and
 * the printed reference of a component.
 *
 * The table is data (am_option_t rows, see am_options.h for where each type
 * stores its value), so adding an option is one row, and the parser, the
 * "did you mean" for unknown keys, `agentmeter components` and the
 * generated config reference can never disagree about it.
 *
 * Parsing has three passes over a table:
 *   1. defaults: each `def` is YAML text, loaded with am_config_load_buffer
 *      and fed through the very converter a user value goes through, so a
 *      default can never mean something a user could not write;
 *   2. the user's map: every key must name a row (else "unknown key" with a
 *      suggestion), and its value replaces the default;
 *   3. required rows that are still missing.
 * SECTION rows recurse with a dotted prefix ("anomaly.loops"), so every
 * message names the full key path.  A section's required rows are checked
 * only when the section is given: an optional block may have mandatory
 * parts.
 *
 * Choices worth knowing:
 *   - an explicit null (`wait:` or `wait: ~`) keeps the default; NODE rows
 *     store the null node, SECTION rows count as given (set = true);
 *   - numbers, booleans and durations are accepted quoted too ("2s"), as a
 *     value from ${env:...} inside quotes would be;
 *   - `def` of a NODE or SECTION row is for the docs only (a NODE has no
 *     config to live in, a section's defaults come from its own rows);
 *   - SIZE_MIB honours min/max (in MiB) like INT does.
 * Errors never stop the parse: one run reports every mistake.
 */
#include "am_options.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define NAME_LEN 512
#define MSG_LEN 2048
#define QUOTE_MAX 80
#define MAX_CHOICES 64
#define MAX_ROWS 256
#define MIB_SHIFT 20

/* printf arguments quoting a user value, shortened: "\"%.*s%s\"". */
#define QUOTED(s) QUOTE_MAX, (s), (strlen(s) > QUOTE_MAX ? "..." : "")

typedef struct opt_ctx {
    am_errors_t *errs;
    bool failed;
    bool oom;
} opt_ctx_t;

static void opt_verror(opt_ctx_t *ctx, const char *file, int line, const char *fmt, va_list ap)
{
    char msg[MSG_LEN];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    ctx->failed = true;
    am_errors_add_at(ctx->errs, file, line, "%s", msg);
}

static void opt_error_at(opt_ctx_t *ctx, const char *file, int line, const char *fmt, ...)
    AM_PRINTF(4, 5);

static void opt_error_at(opt_ctx_t *ctx, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    opt_verror(ctx, file, line, fmt, ap);
    va_end(ap);
}

/* Values are reported at their own line; keys (see report_unknown) at the
 * key's line. */
static void opt_error(opt_ctx_t *ctx, const am_node_t *at, const char *fmt, ...) AM_PRINTF(3, 4);

static void opt_error(opt_ctx_t *ctx, const am_node_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    opt_verror(ctx, at != NULL ? at->file : NULL, at != NULL ? at->line : 0, fmt, ap);
    va_end(ap);
}

static void opt_oom(opt_ctx_t *ctx, const am_node_t *at)
{
    ctx->oom = true;
    opt_error(ctx, at, "out of memory");
}

static const char *join_name(char *buf, size_t size, const char *prefix, const char *name)
{
    if (prefix != NULL && prefix[0] != '\0') {
        snprintf(buf, size, "%s.%s", prefix, name);
    } else {
        snprintf(buf, size, "%s", name);
    }
    return buf;
}

static void *opt_slot(void *cfg, const am_option_t *opt)
{
    return (char *)cfg + opt->offset;
}

const char *am_opt_type_name(am_opt_type_t type)
{
    switch (type) {
    case AM_OPT_BOOL:
        return "bool";
    case AM_OPT_INT:
        return "int";
    case AM_OPT_DOUBLE:
        return "number";
    case AM_OPT_MONEY:
        return "money";
    case AM_OPT_STRING:
        return "string";
    case AM_OPT_ENUM:
        return "enum";
    case AM_OPT_DURATION:
        return "duration";
    case AM_OPT_SIZE_MIB:
        return "MiB";
    case AM_OPT_ENDPOINT:
        return "host:port";
    case AM_OPT_STRLIST:
        return "list of strings";
    case AM_OPT_NODE:
        return "any";
    case AM_OPT_SECTION:
        return "section";
    }
    return "unknown";
}

static const char *type_expectation(am_opt_type_t type)
{
    switch (type) {
    case AM_OPT_BOOL:
        return "true or false";
    case AM_OPT_INT:
        return "an integer";
    case AM_OPT_DOUBLE:
        return "a number";
    case AM_OPT_MONEY:
        return "a decimal amount such as 5.00";
    case AM_OPT_STRING:
        return "a string";
    case AM_OPT_ENUM:
        return "one of the allowed values";
    case AM_OPT_DURATION:
        return "a duration such as 500ms, 2s, 30m, 24h";
    case AM_OPT_SIZE_MIB:
        return "a whole number of MiB";
    case AM_OPT_ENDPOINT:
        return "host:port";
    case AM_OPT_STRLIST:
        return "a list of strings";
    case AM_OPT_NODE:
        return "a value";
    case AM_OPT_SECTION:
        return "a map";
    }
    return "a value";
}

/* "1h30m", "2s", "500ms", "0s". */
static const char *format_duration(int64_t ms, char *buf, size_t size)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
    size_t used = 0;
    if (ms <= 0) {
        snprintf(buf, size, ms == 0 ? "0s" : "%lldms", (long long)ms);
        return buf;
    }
    buf[0] = '\0';
    for (size_t i = 0; i < AM_ARRAY_SIZE(units) && used < size; i++) {
        int64_t n = ms / units[i].ms;
        ms %= units[i].ms;
        if (n > 0) {
            int w = snprintf(buf + used, size - used, "%lld%s", (long long)n, units[i].unit);
            used += w > 0 ? (size_t)w : 0;
        }
    }
    return buf;
}

static bool has_range(const am_option_t *opt)
{
    return opt->min < opt->max;
}

/* Splits "a|b|c" into items that point into buf. */
static size_t split_choices(const char *choices, char *buf, size_t size, const char **items,
                            size_t max_items)
{
    size_t n = 0;
    snprintf(buf, size, "%s", choices != NULL ? choices : "");
    char *p = buf;
    while (n < max_items) {
        items[n++] = p;
        char *bar = strchr(p, '|');
        if (bar == NULL) {
            break;
        }
        *bar = '\0';
        p = bar + 1;
    }
    items[n] = NULL;
    return n;
}

/* ---- value checks --------------------------------------------------------- */

static bool parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
        *out = false;
        return true;
    }
    return false;
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    if (!(isdigit((unsigned char)s[0]) ||
          ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1])))) {
        return AM_EINVAL;
    }
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0') {
        return AM_EINVAL;
    }
    if (errno == ERANGE) {
        return AM_ERANGE;
    }
    *out = (int64_t)v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    if (s[0] == '\0' || isspace((unsigned char)s[0])) {
        return AM_EINVAL;
    }
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || !isfinite(v)) {
        return AM_EINVAL;
    }
    if (errno == ERANGE && v != 0.0) {
        return AM_ERANGE;
    }
    *out = v;
    return 0;
}

/* NULL when s is a valid "host:port", else what is wrong with it. */
static const char *endpoint_problem(const char *s)
{
    const char *port;
    if (strstr(s, "://") != NULL) {
        return "expected host:port without a scheme";
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL) {
            return "missing \"]\" after the IPv6 address";
        }
        if (close == s + 1) {
            return "empty IPv6 address";
        }
        for (const char *p = s + 1; p < close; p++) {
            if (!(isalnum((unsigned char)*p) || *p == ':' || *p == '.' || *p == '%' || *p == '_' ||
                  *p == '-')) {
                return "invalid IPv6 address";
            }
        }
        if (close[1] != ':') {
            return "missing port";
        }
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL) {
            return "missing port";
        }
        if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
            return "an IPv6 address needs brackets, e.g. [::1]:4317";
        }
        for (const char *p = s; p < colon; p++) {
            if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_')) {
                return "invalid host name";
            }
        }
        port = colon + 1;
    }
    if (port[0] == '\0') {
        return "missing port";
    }
    long value = 0;
    for (const char *p = port; *p != '\0'; p++) {
        if (!isdigit((unsigned char)*p) || p - port >= 5) {
            return "the port must be a number from 0 to 65535";
        }
        value = value * 10 + (*p - '0');
    }
    if (value > 65535) {
        return "the port must be a number from 0 to 65535";
    }
    return NULL;
}

/* ---- storing values -------------------------------------------------------- */

static void store_string(opt_ctx_t *ctx, char **slot, const char *text, const am_node_t *at)
{
    char *copy = am_strdup(text);
    if (copy == NULL) {
        opt_oom(ctx, at);
        return;
    }
    am_free(*slot);
    *slot = copy;
}

static void strlist_free(am_strlist_t *list)
{
    for (size_t i = 0; i < list->count; i++) {
        am_free(list->items[i]);
    }
    am_free(list->items);
    list->items = NULL;
    list->count = 0;
}

static void store_strlist(opt_ctx_t *ctx, am_strlist_t *slot, const am_node_t *node,
                          const char *name)
{
    am_strlist_t list = {0};
    if (node->kind == AM_NODE_SCALAR) {
        list.items = am_malloc(sizeof(*list.items));
        if (list.items == NULL || (list.items[0] = am_strdup(node->str)) == NULL) {
            am_free(list.items);
            opt_oom(ctx, node);
            return;
        }
        list.count = 1;
    } else if (node->kind == AM_NODE_SEQ) {
        bool bad = false;
        for (size_t i = 0; i < node->n_children; i++) {
            const am_node_t *item = node->children[i];
            if (item->kind != AM_NODE_SCALAR) {
                opt_error(ctx, item, "%s[%zu]: expected a string, got a %s", name, i,
                          am_node_kind_name(item->kind));
                bad = true;
            }
        }
        if (bad) {
            return;
        }
        if (node->n_children > 0) {
            list.items = am_calloc(node->n_children, sizeof(*list.items));
            if (list.items == NULL) {
                opt_oom(ctx, node);
                return;
            }
        }
        for (size_t i = 0; i < node->n_children; i++) {
            list.items[i] = am_strdup(node->children[i]->str);
            if (list.items[i] == NULL) {
                strlist_free(&list);
                opt_oom(ctx, node);
                return;
            }
            list.count++;
        }
    } else {
        opt_error(ctx, node, "%s: expected a list of strings, got a %s", name,
                  am_node_kind_name(node->kind));
        return;
    }
    strlist_free(slot);
    *slot = list;
}

static void convert_enum(opt_ctx_t *ctx, const am_option_t *opt, char **slot, const am_node_t *node,
                         const char *name)
{
    char buf[512];
    const char *items[MAX_CHOICES + 1];
    const char *text = node->str;
    if (opt->choices == NULL) {
        store_string(ctx, slot, text, node);
        return;
    }
    size_t n = split_choices(opt->choices, buf, sizeof(buf), items, MAX_CHOICES);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(items[i], text) == 0) {
            store_string(ctx, slot, text, node);
            return;
        }
    }
    char list[512];
    size_t used = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n && used < sizeof(list); i++) {
        int w = snprintf(list + used, sizeof(list) - used, "%s%s", i > 0 ? ", " : "", items[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    const char *best = am_did_you_mean(text, items);
    if (best != NULL) {
        opt_error(ctx, node,
                  "%s: invalid value \"%.*s%s\" (expected one of: %s); did you mean \"%s\"?", name,
                  QUOTED(text), list, best);
    } else {
        opt_error(ctx, node, "%s: invalid value \"%.*s%s\" (expected one of: %s)", name,
                  QUOTED(text), list);
    }
}

static void check_int_range(opt_ctx_t *ctx, const am_option_t *opt, int64_t v,
                            const am_node_t *node, const char *name, int64_t *slot)
{
    if (has_range(opt) && ((double)v < opt->min || (double)v > opt->max)) {
        opt_error(ctx, node, "%s: %lld is out of range (expected %.15g to %.15g)", name,
                  (long long)v, opt->min, opt->max);
        return;
    }
    *slot = v;
}

/* Converts one user (or default) value into its slot.  The slot keeps its
 * previous value when the new one is rejected. */
static void convert(opt_ctx_t *ctx, const am_option_t *opt, void *cfg, const am_node_t *node,
                    const char *name)
{
    void *slot = opt_slot(cfg, opt);
    int rc;

    if (opt->type == AM_OPT_NODE) {
        *(const am_node_t **)slot = node;
        return;
    }
    if (opt->type == AM_OPT_STRLIST) {
        store_strlist(ctx, slot, node, name);
        return;
    }
    if (node->kind != AM_NODE_SCALAR) {
        opt_error(ctx, node, "%s: expected %s, got a %s", name, type_expectation(opt->type),
                  am_node_kind_name(node->kind));
        return;
    }
    const char *text = node->str;
    switch (opt->type) {
    case AM_OPT_BOOL: {
        bool v;
        if (!parse_bool(text, &v)) {
            opt_error(ctx, node, "%s: invalid boolean \"%.*s%s\" (expected true or false)", name,
                      QUOTED(text));
            return;
        }
        *(bool *)slot = v;
        return;
    }
    case AM_OPT_INT: {
        int64_t v;
        rc = parse_int(text, &v);
        if (rc != 0) {
            opt_error(ctx, node, "%s: %s integer \"%.*s%s\"", name,
                      rc == AM_ERANGE ? "out of range" : "invalid", QUOTED(text));
            return;
        }
        check_int_range(ctx, opt, v, node, name, slot);
        return;
    }
    case AM_OPT_DOUBLE: {
        double v;
        rc = parse_double(text, &v);
        if (rc != 0) {
            opt_error(ctx, node, "%s: %s number \"%.*s%s\"", name,
                      rc == AM_ERANGE ? "out of range" : "invalid", QUOTED(text));
            return;
        }
        if (has_range(opt) && (v < opt->min || v > opt->max)) {
            opt_error(ctx, node, "%s: %.15g is out of range (expected %.15g to %.15g)", name, v,
                      opt->min, opt->max);
            return;
        }
        *(double *)slot = v;
        return;
    }
    case AM_OPT_MONEY: {
        am_money_t v;
        rc = am_money_parse(text, &v);
        if (rc != 0) {
            opt_error(ctx, node, "%s: invalid amount \"%.*s%s\" (expected %s)", name, QUOTED(text),
                      rc == AM_ERANGE ? "at most 9 decimals and a sane size"
                                      : "a decimal such as 5.00");
            return;
        }
        *(am_money_t *)slot = v;
        return;
    }
    case AM_OPT_STRING:
        store_string(ctx, slot, text, node);
        return;
    case AM_OPT_ENUM:
        convert_enum(ctx, opt, slot, node, name);
        return;
    case AM_OPT_DURATION: {
        int64_t v;
        rc = am_parse_duration_ms(text, &v);
        if (rc != 0) {
            opt_error(ctx, node, "%s: %s duration \"%.*s%s\" (expected e.g. 500ms, 2s, 30m, 24h)",
                      name, rc == AM_ERANGE ? "out of range" : "invalid", QUOTED(text));
            return;
        }
        if (has_range(opt) && ((double)v < opt->min || (double)v > opt->max)) {
            char lo[48];
            char hi[48];
            opt_error(ctx, node, "%s: %.*s%s is out of range (expected %s to %s)", name,
                      QUOTED(text), format_duration((int64_t)opt->min, lo, sizeof(lo)),
                      format_duration((int64_t)opt->max, hi, sizeof(hi)));
            return;
        }
        *(int64_t *)slot = v;
        return;
    }
    case AM_OPT_SIZE_MIB: {
        int64_t v;
        rc = parse_int(text, &v);
        if (rc != 0 || v < 0 || v > (INT64_MAX >> MIB_SHIFT)) {
            opt_error(ctx, node, "%s: invalid size \"%.*s%s\" (expected a whole number of MiB)",
                      name, QUOTED(text));
            return;
        }
        if (has_range(opt) && ((double)v < opt->min || (double)v > opt->max)) {
            opt_error(ctx, node, "%s: %lld MiB is out of range (expected %.15g to %.15g)", name,
                      (long long)v, opt->min, opt->max);
            return;
        }
        *(int64_t *)slot = v << MIB_SHIFT;
        return;
    }
    case AM_OPT_ENDPOINT: {
        const char *problem = endpoint_problem(text);
        if (problem != NULL) {
            opt_error(ctx, node,
                      "%s: invalid endpoint \"%.*s%s\": %s (expected host:port, e.g. "
                      "127.0.0.1:4317 or [::1]:4317)",
                      name, QUOTED(text), problem);
            return;
        }
        store_string(ctx, slot, text, node);
        return;
    }
    case AM_OPT_STRLIST:
    case AM_OPT_NODE:
    case AM_OPT_SECTION:
        break;
    }
}

/* ---- the three passes ------------------------------------------------------ */

static void apply_default(opt_ctx_t *ctx, const am_option_t *opt, void *cfg, const char *name)
{
    char file[NAME_LEN + 16];
    char small[256];
    char *text = small;
    size_t need = strlen(opt->def) + 4;
    snprintf(file, sizeof(file), "default of %s", name);
    if (need > sizeof(small)) {
        text = am_malloc(need);
        if (text == NULL) {
            ctx->oom = true;
            opt_error_at(ctx, file, 0, "out of memory");
            return;
        }
    }
    snprintf(text, need, "v: %s", opt->def);
    am_config_t *parsed = am_config_load_buffer(file, text, strlen(text), ctx->errs);
    if (text != small) {
        am_free(text);
    }
    if (parsed == NULL) {
        ctx->failed = true;
        return;
    }
    const am_node_t *value = am_node_get(am_config_root(parsed), "v");
    if (value != NULL && value->kind != AM_NODE_NULL) {
        convert(ctx, opt, cfg, value, name);
    }
    am_config_free(parsed);
}

static void apply_defaults(opt_ctx_t *ctx, const am_option_t *table, void *cfg, const char *prefix)
{
    char name[NAME_LEN];
    for (const am_option_t *opt = table; opt->name != NULL; opt++) {
        join_name(name, sizeof(name), prefix, opt->name);
        if (opt->type == AM_OPT_SECTION) {
            if (opt->sub != NULL) {
                apply_defaults(ctx, opt->sub, opt_slot(cfg, opt), name);
            }
        } else if (opt->def != NULL && opt->type != AM_OPT_NODE) {
            apply_default(ctx, opt, cfg, name);
        }
    }
}

static const am_option_t *find_option(const am_option_t *table, const char *key)
{
    for (const am_option_t *opt = table; opt->name != NULL; opt++) {
        if (strcmp(opt->name, key) == 0) {
            return opt;
        }
    }
    return NULL;
}

static void report_unknown(opt_ctx_t *ctx, const am_option_t *table, const am_node_t *child,
                           const char *prefix)
{
    char name[NAME_LEN];
    const char *names[MAX_ROWS + 1];
    size_t n = 0;
    for (const am_option_t *opt = table; opt->name != NULL && n < MAX_ROWS; opt++) {
        names[n++] = opt->name;
    }
    names[n] = NULL;
    join_name(name, sizeof(name), prefix, child->key);
    const char *best = am_did_you_mean(child->key, names);
    if (best != NULL) {
        opt_error_at(ctx, child->file, child->key_line, "unknown key \"%s\"; did you mean \"%s\"?",
                     name, best);
        return;
    }
    if (n == 0) {
        opt_error_at(ctx, child->file, child->key_line,
                     "unknown key \"%s\" (no options are accepted here)", name);
        return;
    }
    char known[MSG_LEN / 2];
    size_t used = 0;
    known[0] = '\0';
    for (size_t i = 0; i < n && used < sizeof(known); i++) {
        int w = snprintf(known + used, sizeof(known) - used, "%s%s", i > 0 ? ", " : "", names[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    opt_error_at(ctx, child->file, child->key_line, "unknown key \"%s\" (known keys: %s)", name,
                 known);
}

static void check_required(opt_ctx_t *ctx, const am_option_t *table, const am_node_t *map,
                           const char *prefix)
{
    char name[NAME_LEN];
    for (const am_option_t *opt = table; opt->name != NULL; opt++) {
        if (!opt->required) {
            continue;
        }
        const am_node_t *node = am_node_get(map, opt->name);
        if (node != NULL && (node->kind != AM_NODE_NULL || opt->type == AM_OPT_SECTION)) {
            continue;
        }
        join_name(name, sizeof(name), prefix, opt->name);
        if (node != NULL) {
            opt_error_at(ctx, node->file, node->key_line, "%s: a value is required", name);
        } else if (map != NULL) {
            opt_error_at(ctx, map->file, map->key != NULL ? map->key_line : map->line,
                         "missing required option \"%s\"", name);
        } else {
            opt_error_at(ctx, NULL, 0, "missing required option \"%s\"", name);
        }
    }
}

static void parse_table(opt_ctx_t *ctx, const am_option_t *table, void *cfg, const am_node_t *map,
                        const char *prefix)
{
    char name[NAME_LEN];
    if (map == NULL || map->kind == AM_NODE_NULL) {
        return;
    }
    if (map->kind != AM_NODE_MAP) {
        opt_error(ctx, map, "%s: expected a map of options, got a %s",
                  prefix != NULL && prefix[0] != '\0' ? prefix : "options",
                  am_node_kind_name(map->kind));
        return;
    }
    for (size_t i = 0; i < map->n_children; i++) {
        const am_node_t *child = map->children[i];
        const am_option_t *opt = find_option(table, child->key);
        if (opt == NULL) {
            report_unknown(ctx, table, child, prefix);
            continue;
        }
        join_name(name, sizeof(name), prefix, opt->name);
        if (opt->type == AM_OPT_SECTION) {
            if (child->kind != AM_NODE_MAP && child->kind != AM_NODE_NULL) {
                opt_error(ctx, child, "%s: expected a map, got a %s", name,
                          am_node_kind_name(child->kind));
                continue;
            }
            void *sub_cfg = opt_slot(cfg, opt);
            *(bool *)sub_cfg = true;
            if (opt->sub != NULL) {
                parse_table(ctx, opt->sub, sub_cfg, child, name);
                check_required(ctx, opt->sub, child, name);
            }
            continue;
        }
        if (child->kind == AM_NODE_NULL && opt->type != AM_OPT_NODE) {
            continue; /* an explicit null keeps the default */
        }
        convert(ctx, opt, cfg, child, name);
    }
}

int am_options_parse(const am_option_t *table, void *cfg, const am_node_t *map, const char *prefix,
                     am_errors_t *errs)
{
    opt_ctx_t ctx = {.errs = errs};
    apply_defaults(&ctx, table, cfg, prefix);
    parse_table(&ctx, table, cfg, map, prefix);
    if (map == NULL || map->kind == AM_NODE_MAP || map->kind == AM_NODE_NULL) {
        check_required(&ctx, table, map, prefix);
    }
    if (ctx.oom) {
        return AM_ENOMEM;
    }
    return ctx.failed ? AM_EINVAL : 0;
}

void am_options_free(const am_option_t *table, void *cfg)
{
    for (const am_option_t *opt = table; opt->name != NULL; opt++) {
        void *slot = opt_slot(cfg, opt);
        switch (opt->type) {
        case AM_OPT_STRING:
        case AM_OPT_ENUM:
        case AM_OPT_ENDPOINT:
            am_free(*(char **)slot);
            *(char **)slot = NULL;
            break;
        case AM_OPT_STRLIST:
            strlist_free(slot);
            break;
        case AM_OPT_SECTION:
            if (opt->sub != NULL) {
                am_options_free(opt->sub, slot);
            }
            break;
        default:
            break;
        }
    }
}

/* ---- documentation --------------------------------------------------------- */

static void print_range(const am_option_t *opt, FILE *out)
{
    char lo[48];
    char hi[48];
    if (!has_range(opt) || (opt->type != AM_OPT_INT && opt->type != AM_OPT_DOUBLE &&
                            opt->type != AM_OPT_DURATION && opt->type != AM_OPT_SIZE_MIB)) {
        return;
    }
    if (opt->type == AM_OPT_DURATION) {
        fprintf(out, "%s to %s", format_duration((int64_t)opt->min, lo, sizeof(lo)),
                format_duration((int64_t)opt->max, hi, sizeof(hi)));
    } else {
        fprintf(out, "%.15g to %.15g", opt->min, opt->max);
    }
}

/* Writes s with the characters that break a markdown table cell escaped. */
static void print_md_cell(const char *s, FILE *out)
{
    for (; *s != '\0'; s++) {
        if (*s == '|') {
            fputs("\\|", out);
        } else if (*s == '\n') {
            fputc(' ', out);
        } else {
            fputc(*s, out);
        }
    }
}

static void print_markdown(const am_option_t *table, FILE *out, const char *prefix)
{
    char name[NAME_LEN];
    for (const am_option_t *opt = table; opt->name != NULL; opt++) {
        join_name(name, sizeof(name), prefix, opt->name);
        fprintf(out, "| `%s` | %s", name, am_opt_type_name(opt->type));
        if (opt->type == AM_OPT_ENUM && opt->choices != NULL) {
            fputs(": `", out);
            for (const char *c = opt->choices; *c != '\0'; c++) {
                if (*c == '|') {
                    fputs("` \\| `", out);
                } else {
                    fputc(*c, out);
                }
            }
            fputc('`', out);
        }
        fputs(" | ", out);
        if (opt->def != NULL && opt->def[0] != '\0') {
            fputc('`', out);
            print_md_cell(opt->def, out);
            fputc('`', out);
        }
        fputs(" | ", out);
        if (opt->required) {
            fputs("**Required.** ", out);
        }
        print_md_cell(opt->doc != NULL ? opt->doc : "", out);
        if (has_range(opt) && opt->type != AM_OPT_SECTION) {
            size_t doc_len = opt->doc != NULL ? strlen(opt->doc) : 0;
            fputs(doc_len > 0 && opt->doc[doc_len - 1] != '.' ? ". Range: " : " Range: ", out);
            print_range(opt, out);
            fputc('.', out);
        }
        fputs(" |\n", out);
        if (opt->type == AM_OPT_SECTION && opt->sub != NULL) {
            print_markdown(opt->sub, out, name);
        }
    }
}

static void print_plain(const am_option_t *table, FILE *out, int indent, const char *prefix)
{
    char name[NAME_LEN];
    for (const am_option_t *opt = table; opt->name != NULL; opt++) {
        join_name(name, sizeof(name), prefix, opt->name);
        fprintf(out, "%*s%s: %s", indent, "", name, am_opt_type_name(opt->type));
        if (opt->type == AM_OPT_ENUM && opt->choices != NULL) {
            fprintf(out, " (%s)", opt->choices);
        }
        if (opt->def != NULL && opt->def[0] != '\0') {
            fprintf(out, " = %s", opt->def);
        }
        if (has_range(opt) && opt->type != AM_OPT_SECTION) {
            fputs(", ", out);
            print_range(opt, out);
        }
        if (opt->required) {
            fputs(", required", out);
        }
        fputc('\n', out);
        if (opt->doc != NULL && opt->doc[0] != '\0') {
            fprintf(out, "%*s%s\n", indent + 4, "", opt->doc);
        }
        if (opt->type == AM_OPT_SECTION && opt->sub != NULL) {
            print_plain(opt->sub, out, indent, name);
        }
    }
}

void am_options_print(const am_option_t *table, FILE *out, int indent, bool markdown)
{
    if (markdown) {
        fputs("| Option | Type | Default | Description |\n", out);
        fputs("|---|---|---|---|\n", out);
        print_markdown(table, out, NULL);
    } else {
        print_plain(table, out, indent < 0 ? 0 : indent, NULL);
    }
}
