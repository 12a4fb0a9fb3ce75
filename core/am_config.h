/*
 * am_config.h - YAML configuration as a tree of nodes that remember where
 * they came from.
 *
 * Loading (libyaml) turns each file into a node tree, expands environment
 * references in scalars (${env:VAR}, ${VAR}, ${env:VAR:-default}; $$ is a
 * literal $), then merges the files in order: maps merge key by key,
 * anything else in a later file replaces the earlier value.  Every node keeps
 * its file and line so every error can name them.
 *
 * Ownership: an am_config_t owns all its nodes and strings; nodes stay valid
 * until am_config_free().  The running service keeps its config alive, so
 * components may keep pointers to nodes they were given.
 */
#ifndef AM_CONFIG_H
#define AM_CONFIG_H

#include <stdio.h>

#include "am_common.h"

typedef enum am_node_kind {
    AM_NODE_NULL,
    AM_NODE_SCALAR,
    AM_NODE_MAP,
    AM_NODE_SEQ,
} am_node_kind_t;

typedef struct am_node am_node_t;
struct am_node {
    am_node_kind_t kind;
    const char *file; /* owned by the config, shared by nodes of one file */
    int line;         /* 1-based */
    int column;       /* 1-based */
    char *key;        /* when this node is a map value: its key, else NULL */
    int key_line;     /* line of the key; differs from line when a block value
                         starts on the next line (`tracetree:\n  wait: 2s`) */
    char *str;        /* SCALAR: the value after env expansion */
    bool quoted;      /* SCALAR: was quoted ('' or "") in the file */
    am_node_t **children; /* MAP: values (each with ->key) in file order; SEQ: items */
    size_t n_children;
};

typedef struct am_config am_config_t;

/* Collected errors: each message already begins with "file:line: " ("file: "
 * when the line is 0, nothing when there is no node).  When even an error
 * message cannot be allocated, a static "out of memory" stands in for it, so
 * a failure is never silent; am_errors_clear() knows not to free it. */
typedef struct am_errors {
    char **msgs;
    size_t count;
} am_errors_t;

void am_errors_add(am_errors_t *errs, const am_node_t *at, const char *fmt, ...) AM_PRINTF(3, 4);
/* An error at a file position without a node (parse errors). */
void am_errors_add_at(am_errors_t *errs, const char *file, int line, const char *fmt, ...)
    AM_PRINTF(4, 5);
void am_errors_print(const am_errors_t *errs, FILE *out);
void am_errors_clear(am_errors_t *errs);

/* Parse and merge files in order.  Returns the config (root: a MAP, possibly
 * empty) or NULL with errors appended to errs.  Env expansion errors (an
 * unset ${env:X} without default expands to "" as in the Collector, a
 * malformed ${...} is an error). */
am_config_t *am_config_load_files(const char *const *paths, size_t n_paths, am_errors_t *errs);
/* Same from memory; `name` is used as the file name in errors. */
am_config_t *am_config_load_buffer(const char *name, const char *text, size_t len,
                                   am_errors_t *errs);
/* Merge `over` into `base` (base keeps ownership of the result; `over` is
 * consumed and freed).  Returns base, or NULL when out of memory: then base
 * is left exactly as it was (still the caller's) and over is freed. */
am_config_t *am_config_merge(am_config_t *base, am_config_t *over);
void am_config_free(am_config_t *config);
const am_node_t *am_config_root(const am_config_t *config);

/* The value under `key` in a MAP node, or NULL. */
const am_node_t *am_node_get(const am_node_t *map, const char *key);
/* For errors and docs: "map", "sequence", "scalar", "null". */
const char *am_node_kind_name(am_node_kind_t kind);

/* Expand env references in `in` (exposed for tests).  Returns a malloc'd
 * string (caller frees) or NULL with *err set to a static message. */
char *am_env_expand(const char *in, const char **err);

/* Durations: "500ms", "2s", "30m", "24h", "1h30m", "0"; into milliseconds. */
int am_parse_duration_ms(const char *s, int64_t *out_ms);

/* Suggest the closest of `candidates` (NULL-terminated) to `word` by edit
 * distance, or NULL when nothing is close. */
const char *am_did_you_mean(const char *word, const char *const *candidates);

#endif
