/*
 * am_options.h - declarative option tables.
 *
 * Each component declares its options once, as a table of (name, type,
 * default, offset into its config struct, doc).  That one table drives
 * parsing, defaults, validation (unknown key -> "did you mean ..."),
 * `agentmeter components` and the generated config reference.  Defaults are
 * given as the text a user would write in YAML, so the docs print them as is.
 *
 * Value storage by type (at `offset` in the component's config struct):
 *   BOOL      bool
 *   INT       int64_t        (min/max checked when min < max)
 *   DOUBLE    double         (min/max checked when min < max)
 *   MONEY     am_money_t     (decimal, exact, at most 9 decimals)
 *   STRING    char *         (malloc'd; freed by am_options_free)
 *   ENUM      char *         (one of `choices`, "a|b|c")
 *   DURATION  int64_t        milliseconds ("500ms", "2s", "30m", "24h")
 *   SIZE_MIB  int64_t        bytes (the option is given in MiB; name ends in _mib)
 *   ENDPOINT  char *         "host:port"
 *   STRLIST   am_strlist_t
 *   NODE      const am_node_t * (raw subtree for the component to parse;
 *                               NULL when absent; valid while the config lives)
 *   SECTION   nested table `sub`; the sub-struct lives at `offset` and its
 *             first member must be `bool set` (true when the key was given)
 */
#ifndef AM_OPTIONS_H
#define AM_OPTIONS_H

#include "am_config.h"

typedef enum am_opt_type {
    AM_OPT_BOOL,
    AM_OPT_INT,
    AM_OPT_DOUBLE,
    AM_OPT_MONEY,
    AM_OPT_STRING,
    AM_OPT_ENUM,
    AM_OPT_DURATION,
    AM_OPT_SIZE_MIB,
    AM_OPT_ENDPOINT,
    AM_OPT_STRLIST,
    AM_OPT_NODE,
    AM_OPT_SECTION,
} am_opt_type_t;

typedef struct am_strlist {
    char **items;
    size_t count;
} am_strlist_t;

typedef struct am_option {
    const char *name;
    am_opt_type_t type;
    const char *def; /* default as YAML text; NULL = unset/empty */
    size_t offset;
    const char *doc;
    const struct am_option *sub; /* SECTION: nested table, NULL-name terminated */
    const char *choices;         /* ENUM: "a|b|c" */
    double min, max;             /* INT/DOUBLE/DURATION: range when min < max */
    bool required;
} am_option_t;

/* Apply defaults of `table` to `cfg` (zeroed by the caller), then parse `map`
 * (may be NULL: defaults only).  Every problem is appended to errs with the
 * node's file:line and the option's dotted name under `prefix` (e.g.
 * "processors.tracetree").  Returns 0 when no error was added. */
int am_options_parse(const am_option_t *table, void *cfg, const am_node_t *map,
                     const char *prefix, am_errors_t *errs);
/* Free what am_options_parse allocated inside cfg (strings, lists). */
void am_options_free(const am_option_t *table, void *cfg);
/* Print the table (name, type, default, doc), indented, as in
 * `agentmeter components`; markdown=true prints a reference table. */
void am_options_print(const am_option_t *table, FILE *out, int indent, bool markdown);
const char *am_opt_type_name(am_opt_type_t type);

/* Convenience for option-table rows. */
#define AM_OPT(NAME, TYPE, DEF, STRUCT, FIELD, DOC) \
    { .name = (NAME), .type = (TYPE), .def = (DEF), .offset = offsetof(STRUCT, FIELD), .doc = (DOC) }
#define AM_OPT_END { .name = NULL }

#endif
