/*
 * am_config.c - YAML files into a tree of am_node_t that remembers file:line.
 *
 * Why a tree of our own instead of libyaml's document API: every error an
 * operator sees must name the file, line and key that caused it, the tree
 * must survive merging several files (each node keeping the file that set
 * it), and everything read from a file must be bounded before it costs us
 * memory or stack.  So we drive libyaml's event parser ourselves and build
 * the tree while the events arrive:
 *
 *   - Bounds: a file is at most MAX_FILE_BYTES, the tree at most MAX_DEPTH
 *     levels deep (the builder recurses once per level, so the C stack is
 *     bounded too) and at most MAX_NODES values.  Crossing one stops the
 *     parse with an error; nothing is truncated silently.
 *   - Errors come in two weights.  "Hard" ones (YAML syntax, a bound, out of
 *     memory) stop the parse.  "Soft" ones (a duplicate key, a malformed
 *     ${...}, an anchor or alias) are recorded and the parse goes on, so one
 *     run reports every mistake in the file; the tree is then discarded.
 *   - Anchors (&a) and aliases (*a) are rejected.  They are the way YAML
 *     bombs multiply a small file into a huge tree, the Collector's configs
 *     do not need them, and an error is easier to explain than a shared
 *     subtree that merging would have to copy.  `<<` merge keys are thus
 *     unusable too (they need an alias) and stay an ordinary, unknown key.
 *   - Environment references are expanded in every scalar value (never in
 *     keys), after null detection: `key: ${env:UNSET}` is the empty string,
 *     not null.  As in the Collector, ${env:X:-default} uses the default only
 *     when X is unset; a set but empty X expands to "".
 *   - Merging is two-phase so it cannot fail half way: the first phase does
 *     every allocation (it matches keys and grows the arrays of the base
 *     maps), the second only moves pointers.  When the first phase runs out
 *     of memory the base config is untouched.
 *
 * Every allocation goes through am_malloc and friends so the failmalloc test
 * can fail each one in turn; libyaml's own buffers are outside that net.
 */
#include "am_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#define MAX_FILE_BYTES ((size_t)16 * 1024 * 1024)
#define MAX_DEPTH 64
#define MAX_NODES ((size_t)1000000)
#define MAX_EXPANDED_BYTES ((size_t)64 * 1024 * 1024)
#define MAX_ENV_NAME 255
/* Maps with more keys than this are checked for duplicates by sorting. */
#define SMALL_MAP 32
/* How much of a bad value is quoted back in an error message. */
#define QUOTE_MAX 80
#define NO_MATCH SIZE_MAX

struct am_config {
    am_node_t *root;
    char **files; /* the file names nodes point to */
    size_t n_files;
};

/* The file name of a config made from no files at all. */
static const char no_file_name[] = "<no config>";

/* ---- errors -------------------------------------------------------------- */

/* When even an error message cannot be allocated, the list falls back to
 * these statics (never written, never freed) so a caller still sees that
 * something went wrong. */
static char oom_msg[] = "out of memory";
static char *oom_list[1] = {oom_msg};

/* The msgs array grows by doubling; its capacity follows from count. */
static bool errors_reserve(am_errors_t *errs)
{
    size_t count = errs->count;
    bool full =
        errs->msgs == NULL || errs->msgs == oom_list || (count >= 8 && (count & (count - 1)) == 0);
    if (!full) {
        return true;
    }
    size_t cap = count < 8 ? 8 : count * 2;
    char **grown;
    if (errs->msgs == oom_list) {
        grown = am_malloc(cap * sizeof(*grown));
        if (grown != NULL) {
            memcpy(grown, oom_list, count * sizeof(*grown));
        }
    } else {
        grown = am_realloc(errs->msgs, cap * sizeof(*grown));
    }
    if (grown == NULL) {
        return false;
    }
    errs->msgs = grown;
    return true;
}

/* Takes ownership of msg; NULL means the message could not be built. */
static void errors_push(am_errors_t *errs, char *msg)
{
    if (!errors_reserve(errs)) {
        am_free(msg);
        if (errs->count == 0) {
            errs->msgs = oom_list;
            errs->count = 1;
        } else if (errs->msgs[errs->count - 1] != oom_msg) {
            am_free(errs->msgs[errs->count - 1]);
            errs->msgs[errs->count - 1] = oom_msg;
        }
        return;
    }
    errs->msgs[errs->count++] = msg != NULL ? msg : oom_msg;
}

static void errors_vadd(am_errors_t *errs, const char *file, int line, const char *fmt, va_list ap)
{
    char prefix[512];
    if (file == NULL) {
        prefix[0] = '\0';
    } else if (line > 0) {
        snprintf(prefix, sizeof(prefix), "%s:%d: ", file, line);
    } else {
        snprintf(prefix, sizeof(prefix), "%s: ", file);
    }
    size_t prefix_len = strlen(prefix);
    va_list measure;
    va_copy(measure, ap);
    int body_len = vsnprintf(NULL, 0, fmt, measure);
    va_end(measure);
    char *msg = NULL;
    if (body_len >= 0) {
        msg = am_malloc(prefix_len + (size_t)body_len + 1);
    }
    if (msg != NULL) {
        memcpy(msg, prefix, prefix_len);
        vsnprintf(msg + prefix_len, (size_t)body_len + 1, fmt, ap);
    }
    errors_push(errs, msg);
}

void am_errors_add(am_errors_t *errs, const am_node_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errors_vadd(errs, at != NULL ? at->file : NULL, at != NULL ? at->line : 0, fmt, ap);
    va_end(ap);
}

void am_errors_add_at(am_errors_t *errs, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errors_vadd(errs, file, line, fmt, ap);
    va_end(ap);
}

void am_errors_print(const am_errors_t *errs, FILE *out)
{
    for (size_t i = 0; i < errs->count; i++) {
        fprintf(out, "%s\n", errs->msgs[i]);
    }
}

void am_errors_clear(am_errors_t *errs)
{
    if (errs->msgs != oom_list) {
        for (size_t i = 0; i < errs->count; i++) {
            if (errs->msgs[i] != oom_msg) {
                am_free(errs->msgs[i]);
            }
        }
        am_free(errs->msgs);
    }
    errs->msgs = NULL;
    errs->count = 0;
}

/* ---- nodes --------------------------------------------------------------- */

static void node_free(am_node_t *node)
{
    if (node == NULL) {
        return;
    }
    for (size_t i = 0; i < node->n_children; i++) {
        node_free(node->children[i]);
    }
    am_free(node->children);
    am_free(node->key);
    am_free(node->str);
    am_free(node);
}

const am_node_t *am_node_get(const am_node_t *map, const char *key)
{
    if (map == NULL || map->kind != AM_NODE_MAP || key == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < map->n_children; i++) {
        if (strcmp(map->children[i]->key, key) == 0) {
            return map->children[i];
        }
    }
    return NULL;
}

const char *am_node_kind_name(am_node_kind_t kind)
{
    switch (kind) {
    case AM_NODE_NULL:
        return "null";
    case AM_NODE_SCALAR:
        return "scalar";
    case AM_NODE_MAP:
        return "map";
    case AM_NODE_SEQ:
        return "sequence";
    }
    return "unknown";
}

/* A key and its position in a map, for sorting. */
typedef struct key_ref {
    const char *key;
    size_t index;
} key_ref_t;

static int key_ref_cmp(const void *a, const void *b)
{
    const key_ref_t *ka = a;
    const key_ref_t *kb = b;
    int c = strcmp(ka->key, kb->key);
    if (c != 0) {
        return c;
    }
    return ka->index < kb->index ? -1 : ka->index > kb->index;
}

static int key_ref_cmp_key(const void *a, const void *b)
{
    return strcmp(((const key_ref_t *)a)->key, ((const key_ref_t *)b)->key);
}

/* Sorted (key, index) pairs of a map's children; caller frees. */
static key_ref_t *map_sorted_keys(const am_node_t *map)
{
    key_ref_t *refs = am_malloc(map->n_children * sizeof(*refs));
    if (refs == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < map->n_children; i++) {
        refs[i].key = map->children[i]->key;
        refs[i].index = i;
    }
    qsort(refs, map->n_children, sizeof(*refs), key_ref_cmp);
    return refs;
}

/* ---- environment expansion ----------------------------------------------- */

static const char env_err_oom[] = "out of memory";
static const char env_err_unterminated[] = "unterminated \"${\" (missing \"}\")";
static const char env_err_name[] = "invalid variable name (expected ${env:NAME}, ${NAME} or "
                                   "${env:NAME:-default}; NAME is letters, digits and _)";
static const char env_err_nested[] = "a \"${\" inside a default value is not supported";
static const char env_err_too_long[] = "expanded value is too long";

static bool env_name_valid(const char *name, size_t len)
{
    if (len == 0 || len > MAX_ENV_NAME || !(isalpha((unsigned char)name[0]) || name[0] == '_')) {
        return false;
    }
    for (size_t i = 1; i < len; i++) {
        if (!(isalnum((unsigned char)name[i]) || name[i] == '_')) {
            return false;
        }
    }
    return true;
}

/* One expansion pass.  With out == NULL it only measures; otherwise it
 * writes at most cap bytes (the environment may change between passes, so
 * the second pass never trusts the first one's length). */
static bool env_expand_pass(const char *in, char *out, size_t cap, size_t *out_len,
                            const char **err)
{
    size_t len = 0;
    const char *p = in;
    while (*p != '\0') {
        const char *piece = p;
        size_t piece_len = 1;
        if (p[0] == '$' && p[1] == '$') {
            p += 2;
        } else if (p[0] == '$' && p[1] == '{') {
            const char *body = p + 2;
            const char *close = strchr(body, '}');
            if (close == NULL) {
                *err = env_err_unterminated;
                return false;
            }
            const char *name = body;
            if ((size_t)(close - body) >= 4 && strncmp(body, "env:", 4) == 0) {
                name += 4;
            }
            const char *name_end = close;
            const char *def = NULL;
            for (const char *q = name; q + 1 < close; q++) {
                if (q[0] == ':' && q[1] == '-') {
                    name_end = q;
                    def = q + 2;
                    break;
                }
            }
            size_t name_len = (size_t)(name_end - name);
            if (!env_name_valid(name, name_len)) {
                *err = env_err_name;
                return false;
            }
            if (def != NULL) {
                for (const char *q = def; q + 1 < close; q++) {
                    if (q[0] == '$' && q[1] == '{') {
                        *err = env_err_nested;
                        return false;
                    }
                }
            }
            char name_buf[MAX_ENV_NAME + 1];
            memcpy(name_buf, name, name_len);
            name_buf[name_len] = '\0';
            const char *value = getenv(name_buf);
            if (value != NULL) {
                piece = value;
                piece_len = strlen(value);
            } else if (def != NULL) {
                piece = def;
                piece_len = (size_t)(close - def);
            } else {
                piece_len = 0;
            }
            p = close + 1;
        } else {
            p++;
        }
        if (piece_len > MAX_EXPANDED_BYTES - len) {
            *err = env_err_too_long;
            return false;
        }
        if (out != NULL) {
            size_t room = cap > len ? cap - len : 0;
            memcpy(out + len, piece, AM_MIN(piece_len, room));
        }
        len += piece_len;
    }
    *out_len = out != NULL ? AM_MIN(len, cap) : len;
    return true;
}

char *am_env_expand(const char *in, const char **err)
{
    const char *dummy;
    if (err == NULL) {
        err = &dummy;
    }
    *err = NULL;
    if (strchr(in, '$') == NULL) {
        char *copy = am_strdup(in);
        if (copy == NULL) {
            *err = env_err_oom;
        }
        return copy;
    }
    size_t len;
    if (!env_expand_pass(in, NULL, 0, &len, err)) {
        return NULL;
    }
    char *out = am_malloc(len + 1);
    if (out == NULL) {
        *err = env_err_oom;
        return NULL;
    }
    size_t written;
    if (!env_expand_pass(in, out, len, &written, err)) {
        am_free(out);
        return NULL;
    }
    out[written] = '\0';
    return out;
}

/* ---- building the tree from libyaml events -------------------------------- */

/* One step of the path from the root to the node being built. */
typedef struct path_elem {
    const char *key; /* NULL for a sequence item */
    size_t index;
} path_elem_t;

typedef struct parser {
    yaml_parser_t yaml;
    const char *file;
    const char *text; /* for positions of reader errors */
    size_t text_len;
    am_errors_t *errs;
    size_t n_nodes;
    bool failed; /* a soft error was reported: the tree is discarded */
    path_elem_t path[MAX_DEPTH + 2];
    size_t path_len;
} parser_t;

static void parse_error(parser_t *ps, int line, const char *fmt, ...) AM_PRINTF(3, 4);

static void parse_error(parser_t *ps, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errors_vadd(ps->errs, ps->file, line, fmt, ap);
    va_end(ap);
}

static int mark_line(const yaml_mark_t *mark)
{
    return mark->line < (size_t)INT32_MAX ? (int)mark->line + 1 : INT32_MAX;
}

static int mark_column(const yaml_mark_t *mark)
{
    return mark->column < (size_t)INT32_MAX ? (int)mark->column + 1 : INT32_MAX;
}

static void path_push(parser_t *ps, const char *key, size_t index)
{
    if (ps->path_len < AM_ARRAY_SIZE(ps->path)) {
        ps->path[ps->path_len].key = key;
        ps->path[ps->path_len].index = index;
    }
    ps->path_len++;
}

static void path_pop(parser_t *ps)
{
    ps->path_len--;
}

/* "receivers.otlp.protocols[0].endpoint", with `leaf` as the last key. */
static const char *path_format(const parser_t *ps, const char *leaf, char *buf, size_t size)
{
    size_t used = 0;
    size_t n = AM_MIN(ps->path_len, AM_ARRAY_SIZE(ps->path));
    buf[0] = '\0';
    for (size_t i = 0; i <= n && used < size; i++) {
        const char *key = i < n ? ps->path[i].key : leaf;
        int w;
        if (i == n && leaf == NULL) {
            break;
        }
        if (key != NULL) {
            w = snprintf(buf + used, size - used, "%s%s", used > 0 ? "." : "", key);
        } else {
            w = snprintf(buf + used, size - used, "[%zu]", ps->path[i].index);
        }
        if (w < 0) {
            break;
        }
        used += (size_t)w;
    }
    if (buf[0] == '\0') {
        snprintf(buf, size, "(top level)");
    }
    return buf;
}

/* Whether the line holding byte `offset` of the input contains "${". */
static bool line_has_env_ref(const parser_t *ps, size_t offset)
{
    if (offset >= ps->text_len) {
        return false;
    }
    size_t start = offset;
    while (start > 0 && ps->text[start - 1] != '\n') {
        start--;
    }
    for (size_t i = start; i + 1 < ps->text_len && ps->text[i] != '\n'; i++) {
        if (ps->text[i] == '$' && ps->text[i + 1] == '{') {
            return true;
        }
    }
    return false;
}

static int report_yaml_error(parser_t *ps)
{
    const yaml_parser_t *y = &ps->yaml;
    const char *problem = y->problem != NULL ? y->problem : "unknown error";
    if (y->error == YAML_MEMORY_ERROR) {
        parse_error(ps, 0, "out of memory while parsing YAML");
        return AM_ENOMEM;
    }
    if (y->error == YAML_READER_ERROR) {
        /* Reader errors carry a byte offset, not a mark. */
        int line = 1;
        size_t end = AM_MIN(y->problem_offset, ps->text_len);
        for (size_t i = 0; i < end; i++) {
            line += ps->text[i] == '\n';
        }
        parse_error(ps, line, "invalid YAML input: %s", problem);
        return AM_EINVAL;
    }
    /* `{ endpoint: ${env:X} }` is the trap: in a flow collection a plain
     * scalar cannot hold braces, so the value must be quoted. */
    const char *hint = "";
    if (y->context != NULL && strstr(y->context, "flow") != NULL &&
        (line_has_env_ref(ps, y->problem_mark.index) ||
         line_has_env_ref(ps, y->context_mark.index))) {
        hint = "; inside {...} or [...], quote values that contain ${...}";
    }
    if (y->context != NULL) {
        parse_error(
            ps, mark_line(&y->problem_mark), "YAML syntax error at column %d: %s (%s at line %d)%s",
            mark_column(&y->problem_mark), problem, y->context, mark_line(&y->context_mark), hint);
    } else {
        parse_error(ps, mark_line(&y->problem_mark), "YAML syntax error at column %d: %s%s",
                    mark_column(&y->problem_mark), problem, hint);
    }
    return AM_EINVAL;
}

static int next_event(parser_t *ps, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&ps->yaml, ev)) {
        memset(ev, 0, sizeof(*ev));
        return report_yaml_error(ps);
    }
    return 0;
}

static am_node_t *node_new(parser_t *ps, am_node_kind_t kind, const yaml_mark_t *mark, int *rc)
{
    if (ps->n_nodes >= MAX_NODES) {
        parse_error(ps, mark_line(mark), "too many values (more than %zu)", MAX_NODES);
        *rc = AM_ERANGE;
        return NULL;
    }
    am_node_t *node = am_calloc(1, sizeof(*node));
    if (node == NULL) {
        parse_error(ps, mark_line(mark), "out of memory");
        *rc = AM_ENOMEM;
        return NULL;
    }
    ps->n_nodes++;
    node->kind = kind;
    node->file = ps->file;
    node->line = mark_line(mark);
    node->column = mark_column(mark);
    node->key_line = node->line;
    return node;
}

static int children_push(parser_t *ps, am_node_t *parent, size_t *cap, am_node_t *child)
{
    if (parent->n_children == *cap) {
        size_t grown_cap = *cap == 0 ? 4 : *cap * 2;
        am_node_t **grown = am_realloc(parent->children, grown_cap * sizeof(*grown));
        if (grown == NULL) {
            parse_error(ps, child->line, "out of memory");
            return AM_ENOMEM;
        }
        parent->children = grown;
        *cap = grown_cap;
    }
    parent->children[parent->n_children++] = child;
    return 0;
}

static void reject_anchor(parser_t *ps, const yaml_char_t *anchor, const yaml_mark_t *mark)
{
    if (anchor != NULL) {
        parse_error(ps, mark_line(mark),
                    "YAML anchors (&%s) are not supported; repeat the value instead",
                    (const char *)anchor);
        ps->failed = true;
    }
}

static bool is_null_text(const char *s)
{
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static int parse_node(parser_t *ps, yaml_event_t *ev, size_t depth, am_node_t **out);

static int parse_scalar(parser_t *ps, const yaml_event_t *ev, am_node_t **out)
{
    const char *value = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    yaml_scalar_style_t style = ev->data.scalar.style;
    int rc = 0;
    reject_anchor(ps, ev->data.scalar.anchor, &ev->start_mark);
    if (memchr(value, '\0', len) != NULL) {
        char path[256];
        parse_error(ps, mark_line(&ev->start_mark), "%s: value contains a NUL character",
                    path_format(ps, NULL, path, sizeof(path)));
        ps->failed = true;
        *out = node_new(ps, AM_NODE_NULL, &ev->start_mark, &rc);
        return rc;
    }
    if (style == YAML_PLAIN_SCALAR_STYLE && ev->data.scalar.tag == NULL && is_null_text(value)) {
        *out = node_new(ps, AM_NODE_NULL, &ev->start_mark, &rc);
        return rc;
    }
    am_node_t *node = node_new(ps, AM_NODE_SCALAR, &ev->start_mark, &rc);
    if (node == NULL) {
        *out = NULL;
        return rc;
    }
    node->quoted =
        style == YAML_SINGLE_QUOTED_SCALAR_STYLE || style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    const char *err = NULL;
    node->str = am_env_expand(value, &err);
    if (node->str == NULL) {
        if (err == env_err_oom) {
            parse_error(ps, node->line, "out of memory");
            node_free(node);
            *out = NULL;
            return AM_ENOMEM;
        }
        char path[256];
        parse_error(ps, node->line, "%s: invalid environment reference in \"%.*s\"%s: %s",
                    path_format(ps, NULL, path, sizeof(path)), QUOTE_MAX, value,
                    len > QUOTE_MAX ? "..." : "", err);
        ps->failed = true;
        node->kind = AM_NODE_NULL;
    }
    *out = node;
    return 0;
}

static int parse_seq(parser_t *ps, const yaml_event_t *start, size_t depth, am_node_t **out)
{
    int rc = 0;
    size_t cap = 0;
    am_node_t *node = node_new(ps, AM_NODE_SEQ, &start->start_mark, &rc);
    if (node == NULL) {
        goto fail;
    }
    for (;;) {
        yaml_event_t ev;
        rc = next_event(ps, &ev);
        if (rc != 0) {
            goto fail;
        }
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        am_node_t *child;
        path_push(ps, NULL, node->n_children);
        rc = parse_node(ps, &ev, depth + 1, &child);
        path_pop(ps);
        if (rc != 0) {
            goto fail;
        }
        rc = children_push(ps, node, &cap, child);
        if (rc != 0) {
            node_free(child);
            goto fail;
        }
    }
    *out = node;
    return 0;

fail:
    node_free(node);
    *out = NULL;
    return rc;
}

static void report_duplicate(parser_t *ps, const am_node_t *later, const am_node_t *first)
{
    char path[256];
    parse_error(ps, later->key_line, "duplicate key \"%s\" (first defined at line %d)",
                path_format(ps, later->key, path, sizeof(path)), first->key_line);
    ps->failed = true;
}

static int check_duplicates(parser_t *ps, const am_node_t *map)
{
    size_t n = map->n_children;
    if (n <= SMALL_MAP) {
        for (size_t i = 1; i < n; i++) {
            for (size_t j = 0; j < i; j++) {
                if (strcmp(map->children[i]->key, map->children[j]->key) == 0) {
                    report_duplicate(ps, map->children[i], map->children[j]);
                    break;
                }
            }
        }
        return 0;
    }
    key_ref_t *refs = map_sorted_keys(map);
    if (refs == NULL) {
        parse_error(ps, map->line, "out of memory");
        return AM_ENOMEM;
    }
    size_t group = 0;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(refs[i].key, refs[group].key) != 0) {
            group = i;
            continue;
        }
        report_duplicate(ps, map->children[refs[i].index], map->children[refs[group].index]);
    }
    am_free(refs);
    return 0;
}

/* Keys are scalars; anything else is reported, parsed (to stay in step with
 * the event stream) and dropped together with its value. */
static int parse_map_key(parser_t *ps, yaml_event_t *ev, size_t depth, char **key)
{
    int rc = 0;
    *key = NULL;
    if (ev->type == YAML_SCALAR_EVENT) {
        const char *value = (const char *)ev->data.scalar.value;
        reject_anchor(ps, ev->data.scalar.anchor, &ev->start_mark);
        if (memchr(value, '\0', ev->data.scalar.length) != NULL) {
            parse_error(ps, mark_line(&ev->start_mark), "map key contains a NUL character");
            ps->failed = true;
        }
        *key = am_strdup(value);
        if (*key == NULL) {
            parse_error(ps, mark_line(&ev->start_mark), "out of memory");
            rc = AM_ENOMEM;
        }
        yaml_event_delete(ev);
        return rc;
    }
    int line = mark_line(&ev->start_mark);
    bool alias = ev->type == YAML_ALIAS_EVENT; /* reported by parse_node */
    am_node_t *ignored;
    rc = parse_node(ps, ev, depth, &ignored);
    if (rc == 0 && alias) {
        node_free(ignored);
    } else if (rc == 0) {
        parse_error(ps, line, "map keys must be plain strings, not a %s",
                    am_node_kind_name(ignored->kind));
        ps->failed = true;
        node_free(ignored);
    }
    return rc;
}

static int parse_map(parser_t *ps, const yaml_event_t *start, size_t depth, am_node_t **out)
{
    int rc = 0;
    size_t cap = 0;
    char *key = NULL;
    am_node_t *node = node_new(ps, AM_NODE_MAP, &start->start_mark, &rc);
    if (node == NULL) {
        goto fail;
    }
    for (;;) {
        yaml_event_t ev;
        rc = next_event(ps, &ev);
        if (rc != 0) {
            goto fail;
        }
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        int key_line = mark_line(&ev.start_mark);
        rc = parse_map_key(ps, &ev, depth + 1, &key);
        if (rc != 0) {
            goto fail;
        }
        rc = next_event(ps, &ev);
        if (rc != 0) {
            goto fail;
        }
        am_node_t *child;
        path_push(ps, key != NULL ? key : "?", 0);
        rc = parse_node(ps, &ev, depth + 1, &child);
        path_pop(ps);
        if (rc != 0) {
            goto fail;
        }
        if (key == NULL) {
            node_free(child); /* a non-scalar key, already reported */
            continue;
        }
        child->key = key;
        child->key_line = key_line;
        key = NULL;
        rc = children_push(ps, node, &cap, child);
        if (rc != 0) {
            node_free(child);
            goto fail;
        }
    }
    rc = check_duplicates(ps, node);
    if (rc != 0) {
        goto fail;
    }
    *out = node;
    return 0;

fail:
    am_free(key);
    node_free(node);
    *out = NULL;
    return rc;
}

/* Builds the node that starts with `ev` (consumed here) and everything in
 * it.  On a hard error returns it with *out == NULL. */
static int parse_node(parser_t *ps, yaml_event_t *ev, size_t depth, am_node_t **out)
{
    int rc = 0;
    char path[256];
    *out = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        rc = parse_scalar(ps, ev, out);
        break;
    case YAML_ALIAS_EVENT:
        parse_error(ps, mark_line(&ev->start_mark),
                    "%s: YAML aliases (*%s) are not supported; repeat the value instead",
                    path_format(ps, NULL, path, sizeof(path)), (const char *)ev->data.alias.anchor);
        ps->failed = true;
        *out = node_new(ps, AM_NODE_NULL, &ev->start_mark, &rc);
        break;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        if (depth > MAX_DEPTH) {
            parse_error(ps, mark_line(&ev->start_mark),
                        "%s: nesting is too deep (more than %d levels)",
                        path_format(ps, NULL, path, sizeof(path)), MAX_DEPTH);
            rc = AM_ERANGE;
            break;
        }
        if (ev->type == YAML_SEQUENCE_START_EVENT) {
            reject_anchor(ps, ev->data.sequence_start.anchor, &ev->start_mark);
            rc = parse_seq(ps, ev, depth, out);
        } else {
            reject_anchor(ps, ev->data.mapping_start.anchor, &ev->start_mark);
            rc = parse_map(ps, ev, depth, out);
        }
        break;
    default:
        parse_error(ps, mark_line(&ev->start_mark), "unexpected YAML structure");
        rc = AM_EINVAL;
        break;
    }
    yaml_event_delete(ev);
    return rc;
}

/* stream-start, then nothing or one document holding the root map. */
static am_node_t *parse_stream(parser_t *ps)
{
    yaml_event_t ev;
    am_node_t *root = NULL;
    int rc;
    yaml_mark_t start = {0, 0, 0};

    if (next_event(ps, &ev) != 0) {
        return NULL;
    }
    yaml_event_delete(&ev); /* stream start */
    if (next_event(ps, &ev) != 0) {
        return NULL;
    }
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        return node_new(ps, AM_NODE_MAP, &start, &rc);
    }
    yaml_event_delete(&ev); /* document start */
    if (next_event(ps, &ev) != 0) {
        return NULL;
    }
    if (parse_node(ps, &ev, 1, &root) != 0) {
        return NULL;
    }
    if (next_event(ps, &ev) != 0) {
        goto fail;
    }
    yaml_event_delete(&ev); /* document end */
    if (next_event(ps, &ev) != 0) {
        goto fail;
    }
    if (ev.type == YAML_DOCUMENT_START_EVENT) {
        parse_error(ps, mark_line(&ev.start_mark),
                    "more than one YAML document (---) in one file is not supported; use "
                    "several files instead");
        yaml_event_delete(&ev);
        goto fail;
    }
    yaml_event_delete(&ev); /* stream end */

    if (root->kind == AM_NODE_NULL) {
        root->kind = AM_NODE_MAP; /* a file of comments only */
    } else if (root->kind != AM_NODE_MAP) {
        parse_error(ps, root->line,
                    "the top level must be a map (receivers:, processors:, ...), "
                    "not a %s",
                    am_node_kind_name(root->kind));
        goto fail;
    }
    return root;

fail:
    node_free(root);
    return NULL;
}

/* ---- configs ------------------------------------------------------------- */

static void config_free_files(am_config_t *config)
{
    for (size_t i = 0; i < config->n_files; i++) {
        am_free(config->files[i]);
    }
    am_free(config->files);
    config->files = NULL;
    config->n_files = 0;
}

void am_config_free(am_config_t *config)
{
    if (config == NULL) {
        return;
    }
    node_free(config->root);
    config_free_files(config);
    am_free(config);
}

const am_node_t *am_config_root(const am_config_t *config)
{
    return config != NULL ? config->root : NULL;
}

am_config_t *am_config_load_buffer(const char *name, const char *text, size_t len,
                                   am_errors_t *errs)
{
    int rc = 0;
    parser_t *ps = NULL;
    am_config_t *config = NULL;
    bool yaml_ready = false;

    if (name == NULL) {
        name = "<buffer>";
    }
    if (len > MAX_FILE_BYTES) {
        am_errors_add_at(errs, name, 0, "file is too large (%zu bytes; the limit is %zu MiB)", len,
                         MAX_FILE_BYTES >> 20);
        return NULL;
    }
    config = am_calloc(1, sizeof(*config));
    ps = am_calloc(1, sizeof(*ps));
    if (config == NULL || ps == NULL) {
        rc = AM_ENOMEM;
        goto out;
    }
    config->files = am_malloc(sizeof(*config->files));
    if (config->files == NULL) {
        rc = AM_ENOMEM;
        goto out;
    }
    config->files[0] = am_strdup(name);
    if (config->files[0] == NULL) {
        rc = AM_ENOMEM;
        goto out;
    }
    config->n_files = 1;
    if (!yaml_parser_initialize(&ps->yaml)) {
        rc = AM_ENOMEM;
        goto out;
    }
    yaml_ready = true;
    yaml_parser_set_input_string(&ps->yaml, (const unsigned char *)text, len);
    ps->file = config->files[0];
    ps->text = text;
    ps->text_len = len;
    ps->errs = errs;
    config->root = parse_stream(ps);
    if (config->root == NULL || ps->failed) {
        rc = AM_EINVAL; /* already reported */
    }

out:
    if (rc == AM_ENOMEM) {
        am_errors_add_at(errs, name, 0, "out of memory");
    }
    if (yaml_ready) {
        yaml_parser_delete(&ps->yaml);
    }
    am_free(ps);
    if (rc != 0) {
        am_config_free(config);
        return NULL;
    }
    return config;
}

/* Reads a whole file, refusing more than MAX_FILE_BYTES. */
static int read_file(const char *path, char **out, size_t *out_len, am_errors_t *errs)
{
    int rc = 0;
    char *buf = NULL;
    size_t len = 0;
    size_t cap = 64 * 1024;
    struct stat st;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        int saved = errno;
        am_errors_add_at(errs, path, 0, "cannot open: %s", strerror(saved));
        return saved == ENOENT ? AM_ENOENT : AM_EIO;
    }
    if (fstat(fileno(fp), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            am_errors_add_at(errs, path, 0, "cannot read: is a directory");
            rc = AM_EINVAL;
            goto out;
        }
        if (S_ISREG(st.st_mode)) {
            if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
                rc = AM_ERANGE;
                goto out;
            }
            cap = (size_t)st.st_size + 1;
        }
    }
    buf = am_malloc(cap);
    if (buf == NULL) {
        rc = AM_ENOMEM;
        goto out;
    }
    /* The size from fstat is only a hint: the file may grow, or be a pipe. */
    for (;;) {
        if (len == cap) {
            if (cap > MAX_FILE_BYTES) {
                rc = AM_ERANGE;
                goto out;
            }
            size_t grown_cap = AM_MIN(cap * 2, MAX_FILE_BYTES + 1);
            char *grown = am_realloc(buf, grown_cap);
            if (grown == NULL) {
                rc = AM_ENOMEM;
                goto out;
            }
            buf = grown;
            cap = grown_cap;
        }
        size_t n = fread(buf + len, 1, cap - len, fp);
        len += n;
        if (n == 0) {
            break;
        }
    }
    if (ferror(fp)) {
        am_errors_add_at(errs, path, 0, "cannot read: %s", strerror(errno));
        rc = AM_EIO;
    } else if (len > MAX_FILE_BYTES) {
        rc = AM_ERANGE;
    }

out:
    if (rc == AM_ERANGE) {
        am_errors_add_at(errs, path, 0, "file is too large (the limit is %zu MiB)",
                         MAX_FILE_BYTES >> 20);
    } else if (rc == AM_ENOMEM) {
        am_errors_add_at(errs, path, 0, "out of memory");
    }
    if (rc == 0) {
        *out = buf;
        *out_len = len;
        buf = NULL;
    }
    am_free(buf);
    fclose(fp);
    return rc;
}

static am_config_t *config_empty(am_errors_t *errs)
{
    am_config_t *config = am_calloc(1, sizeof(*config));
    am_node_t *root = am_calloc(1, sizeof(*root));
    if (config == NULL || root == NULL) {
        am_errors_add(errs, NULL, "out of memory");
        am_free(config);
        am_free(root);
        return NULL;
    }
    root->kind = AM_NODE_MAP;
    root->file = no_file_name;
    root->line = root->key_line = root->column = 1;
    config->root = root;
    return config;
}

am_config_t *am_config_load_files(const char *const *paths, size_t n_paths, am_errors_t *errs)
{
    am_config_t *merged = NULL;
    bool failed = false;

    if (n_paths == 0) {
        return config_empty(errs);
    }
    /* Every file is parsed even after one failed, so all errors show. */
    for (size_t i = 0; i < n_paths; i++) {
        char *text = NULL;
        size_t len = 0;
        if (read_file(paths[i], &text, &len, errs) != 0) {
            failed = true;
            continue;
        }
        am_config_t *config = am_config_load_buffer(paths[i], text, len, errs);
        am_free(text);
        if (config == NULL) {
            failed = true;
            continue;
        }
        if (failed) {
            am_config_free(config);
        } else if (merged == NULL) {
            merged = config;
        } else if (am_config_merge(merged, config) == NULL) {
            am_errors_add_at(errs, paths[i], 0, "out of memory while merging");
            failed = true;
        }
    }
    if (failed) {
        am_config_free(merged);
        return NULL;
    }
    return merged;
}

/* ---- merging ------------------------------------------------------------- */

/* One pair of maps to merge: match[i] is the index in base of over's i-th
 * key, or NO_MATCH for a new key. */
typedef struct merge_step {
    am_node_t *base;
    am_node_t *over;
    size_t *match;
} merge_step_t;

typedef struct merge_plan {
    merge_step_t *steps;
    size_t count;
    size_t cap;
} merge_plan_t;

static void plan_free(merge_plan_t *plan)
{
    for (size_t i = 0; i < plan->count; i++) {
        am_free(plan->steps[i].match);
    }
    am_free(plan->steps);
}

static int match_keys(const am_node_t *base, const am_node_t *over, size_t *match, size_t *n_new)
{
    *n_new = 0;
    if (base->n_children <= SMALL_MAP || over->n_children <= 8) {
        for (size_t i = 0; i < over->n_children; i++) {
            match[i] = NO_MATCH;
            for (size_t j = 0; j < base->n_children; j++) {
                if (strcmp(over->children[i]->key, base->children[j]->key) == 0) {
                    match[i] = j;
                    break;
                }
            }
            *n_new += match[i] == NO_MATCH;
        }
        return 0;
    }
    key_ref_t *refs = map_sorted_keys(base);
    if (refs == NULL) {
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < over->n_children; i++) {
        key_ref_t want = {over->children[i]->key, 0};
        const key_ref_t *hit =
            bsearch(&want, refs, base->n_children, sizeof(*refs), key_ref_cmp_key);
        match[i] = hit != NULL ? hit->index : NO_MATCH;
        *n_new += match[i] == NO_MATCH;
    }
    am_free(refs);
    return 0;
}

/* Phase one: every allocation the merge needs, recursively. */
static int plan_maps(merge_plan_t *plan, am_node_t *base, am_node_t *over)
{
    size_t n_new;
    if (over->n_children == 0) {
        return 0;
    }
    size_t *match = am_malloc(over->n_children * sizeof(*match));
    if (match == NULL) {
        return AM_ENOMEM;
    }
    if (match_keys(base, over, match, &n_new) != 0) {
        am_free(match);
        return AM_ENOMEM;
    }
    if (n_new > 0) {
        am_node_t **grown = am_realloc(base->children, (base->n_children + n_new) * sizeof(*grown));
        if (grown == NULL) {
            am_free(match);
            return AM_ENOMEM;
        }
        base->children = grown;
    }
    if (plan->count == plan->cap) {
        size_t grown_cap = plan->cap == 0 ? 8 : plan->cap * 2;
        merge_step_t *grown = am_realloc(plan->steps, grown_cap * sizeof(*grown));
        if (grown == NULL) {
            am_free(match);
            return AM_ENOMEM;
        }
        plan->steps = grown;
        plan->cap = grown_cap;
    }
    plan->steps[plan->count++] = (merge_step_t){base, over, match};
    for (size_t i = 0; i < over->n_children; i++) {
        size_t j = match[i];
        if (j != NO_MATCH && base->children[j]->kind == AM_NODE_MAP &&
            over->children[i]->kind == AM_NODE_MAP) {
            int rc = plan_maps(plan, base->children[j], over->children[i]);
            if (rc != 0) {
                return rc;
            }
        }
    }
    return 0;
}

/* Phase two: only moves pointers, cannot fail.  Nodes taken from `over`
 * are set to NULL there, so freeing `over` afterwards frees the rest. */
static void plan_apply(const merge_plan_t *plan)
{
    for (size_t s = 0; s < plan->count; s++) {
        const merge_step_t *step = &plan->steps[s];
        am_node_t *base = step->base;
        am_node_t *over = step->over;
        for (size_t i = 0; i < over->n_children; i++) {
            size_t j = step->match[i];
            am_node_t *child = over->children[i];
            if (j == NO_MATCH) {
                base->children[base->n_children++] = child;
            } else if (base->children[j]->kind == AM_NODE_MAP && child->kind == AM_NODE_MAP) {
                continue; /* merged by its own step */
            } else {
                node_free(base->children[j]);
                base->children[j] = child;
            }
            over->children[i] = NULL;
        }
    }
}

am_config_t *am_config_merge(am_config_t *base, am_config_t *over)
{
    merge_plan_t plan = {0};
    if (over == NULL) {
        return base;
    }
    if (base == NULL) {
        return over;
    }
    if (over->n_files > 0) {
        char **grown = am_realloc(base->files, (base->n_files + over->n_files) * sizeof(*grown));
        if (grown == NULL) {
            goto fail;
        }
        base->files = grown;
    }
    if (plan_maps(&plan, base->root, over->root) != 0) {
        goto fail;
    }
    plan_apply(&plan);
    plan_free(&plan);
    memcpy(base->files + base->n_files, over->files, over->n_files * sizeof(*over->files));
    base->n_files += over->n_files;
    over->n_files = 0;
    am_config_free(over);
    return base;

fail:
    plan_free(&plan);
    am_config_free(over);
    return NULL;
}

/* ---- durations and suggestions ------------------------------------------- */

int am_parse_duration_ms(const char *s, int64_t *out_ms)
{
    int64_t total = 0;
    const char *p = s;
    if (s == NULL || *s == '\0') {
        return AM_EINVAL;
    }
    if (strcmp(s, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    while (*p != '\0') {
        int64_t whole = 0;
        int64_t frac = 0;
        int64_t frac_scale = 1;
        bool digits = false;
        while (isdigit((unsigned char)*p)) {
            int digit = *p - '0';
            if (whole > (INT64_MAX - digit) / 10) {
                return AM_ERANGE;
            }
            whole = whole * 10 + digit;
            digits = true;
            p++;
        }
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p)) {
                /* Digits past the nanosecond are below what we keep. */
                if (frac_scale < 1000000000) {
                    frac = frac * 10 + (*p - '0');
                    frac_scale *= 10;
                }
                digits = true;
                p++;
            }
        }
        if (!digits) {
            return AM_EINVAL;
        }
        int64_t unit_ms;
        if (p[0] == 'm' && p[1] == 's') {
            unit_ms = 1;
            p += 2;
        } else if (p[0] == 'h') {
            unit_ms = 3600000;
            p++;
        } else if (p[0] == 'm') {
            unit_ms = 60000;
            p++;
        } else if (p[0] == 's') {
            unit_ms = 1000;
            p++;
        } else {
            return AM_EINVAL;
        }
        if (whole > INT64_MAX / unit_ms) {
            return AM_ERANGE;
        }
        int64_t part = whole * unit_ms;
        int64_t frac_ms = frac * unit_ms / frac_scale; /* < 1e9 * 3.6e6: no overflow */
        if (part > INT64_MAX - frac_ms || total > INT64_MAX - (part + frac_ms)) {
            return AM_ERANGE;
        }
        total += part + frac_ms;
    }
    *out_ms = total;
    return 0;
}

#define SUGGEST_MAX_LEN 64

/* Levenshtein distance, ignoring ASCII case; both lengths <= SUGGEST_MAX_LEN. */
static size_t edit_distance(const char *a, size_t a_len, const char *b, size_t b_len)
{
    size_t prev[SUGGEST_MAX_LEN + 1];
    size_t cur[SUGGEST_MAX_LEN + 1];
    for (size_t j = 0; j <= b_len; j++) {
        prev[j] = j;
    }
    for (size_t i = 1; i <= a_len; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= b_len; j++) {
            size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            size_t best = prev[j - 1] + cost;
            best = AM_MIN(best, prev[j] + 1);
            best = AM_MIN(best, cur[j - 1] + 1);
            cur[j] = best;
        }
        memcpy(prev, cur, (b_len + 1) * sizeof(*prev));
    }
    return prev[b_len];
}

const char *am_did_you_mean(const char *word, const char *const *candidates)
{
    const char *best = NULL;
    size_t best_distance = SIZE_MAX;
    if (word == NULL || candidates == NULL) {
        return NULL;
    }
    size_t word_len = strlen(word);
    if (word_len > SUGGEST_MAX_LEN) {
        return NULL;
    }
    size_t limit = AM_MAX((size_t)2, word_len / 3);
    for (size_t i = 0; candidates[i] != NULL; i++) {
        size_t len = strlen(candidates[i]);
        if (len > SUGGEST_MAX_LEN || (len > word_len ? len - word_len : word_len - len) > limit) {
            continue;
        }
        size_t d = edit_distance(word, word_len, candidates[i], len);
        if (d <= limit && d < best_distance) {
            best = candidates[i];
            best_distance = d;
        }
    }
    return best;
}
