/*
 * am_otlp_json.c - OTLP/JSON traces codec (see am_otlp_json.h for the rules).
 *
 * Decoding is two steps.  json-c parses the whole body into a DOM (strict
 * mode, nesting capped by the tokener), and we check that nothing but
 * whitespace follows the value.  json-c's UTF-8 check only counts
 * continuation bytes, so every decoded string is validated again strictly.  Then a table-driven
 * walk turns the DOM into protobuf-c messages in the caller's arena.  Each message type is a
 * message_spec_t: its descriptor (size and __init come from it), its field names (lowerCamelCase
 * first, the proto name second) and a function that decodes one field.  One generic loop iterates
 * an object's keys, skips unknown ones, and keeps the field path ("resourceSpans[0].scopeSpans
 * [1].spans[3].traceId") that every error message starts with.  A repeated
 * field becomes one arena block of messages plus one block of pointers, so a
 * span list costs two allocations instead of one per span.
 *
 * Duplicate keys (or a field given under both of its names) follow json-c
 * and the Collector: the last one wins, also inside the AnyValue oneof.
 * json-c saturates integers that overflow 64 bits instead of failing, so a
 * JSON *number* at the saturation value is rejected as out of range; exact
 * 64-bit extremes must be sent as strings, as proto3 JSON prescribes anyway.
 *
 * Encoding does not build a DOM: it appends to one growable buffer whose
 * error is sticky (the first failure is kept and every later append is a
 * no-op), so the writers stay straight-line code and the result is checked
 * once at the end.  Default-valued scalars are omitted; present
 * submessages are written even when empty so presence survives a round
 * trip; AnyValue depth is capped like the decoder's, so the encoder never
 * produces JSON the decoder would refuse.
 */
#include "am_otlp_json.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest error path: 33 AnyValue levels of ".kvlistValue.values[N].value"
 * with 20-digit indexes stay well below this. */
#define PATH_CAP 2048

/* ------------------------------------------------------------------------ */
/* Decoder state, field paths and errors                                    */
/* ------------------------------------------------------------------------ */

typedef struct decoder {
    am_arena_t *arena;
    char *err;
    size_t err_size;
    size_t path_len;
    char path[PATH_CAP];
} decoder_t;

static int fail(decoder_t *d, int code, const char *fmt, ...) AM_PRINTF(3, 4);

static int fail(decoder_t *d, int code, const char *fmt, ...)
{
    if (d->err == NULL || d->err_size == 0) {
        return code;
    }
    size_t used = 0;
    if (d->path_len > 0) {
        int n = snprintf(d->err, d->err_size, "%s: ", d->path);
        used = n < 0 ? 0 : AM_MIN((size_t)n, d->err_size - 1);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err + used, d->err_size - used, fmt, ap);
    va_end(ap);
    return code;
}

static int fail_oom(decoder_t *d)
{
    return fail(d, AM_ENOMEM, "out of memory");
}

/* Append to the path; returns the length to restore with path_pop().  A piece
 * that does not fit is dropped (the error then names a shorter path).  This
 * runs for every field decoded, so it copies bytes instead of formatting. */
static size_t path_append(decoder_t *d, const char *piece, size_t len)
{
    size_t saved = d->path_len;
    if (len < sizeof(d->path) - saved) {
        memcpy(d->path + saved, piece, len);
        d->path_len += len;
        d->path[d->path_len] = '\0';
    }
    return saved;
}

static size_t path_push_key(decoder_t *d, const char *name)
{
    char piece[64];
    size_t len = strlen(name);
    size_t dot = d->path_len == 0 ? 0 : 1;
    if (len + dot > sizeof(piece)) {
        return d->path_len;
    }
    piece[0] = '.';
    memcpy(piece + dot, name, len);
    return path_append(d, piece, len + dot);
}

static size_t path_push_index(decoder_t *d, size_t index)
{
    char piece[32];
    size_t pos = sizeof(piece);
    piece[--pos] = ']';
    do {
        piece[--pos] = (char)('0' + index % 10);
        index /= 10;
    } while (index > 0);
    piece[--pos] = '[';
    return path_append(d, piece + pos, sizeof(piece) - pos);
}

static void path_pop(decoder_t *d, size_t saved)
{
    d->path_len = saved;
    d->path[saved] = '\0';
}

static const char *json_kind(json_object *val)
{
    if (val == NULL) {
        return "null";
    }
    switch (json_object_get_type(val)) {
    case json_type_boolean:
        return "boolean";
    case json_type_double:
    case json_type_int:
        return "number";
    case json_type_object:
        return "object";
    case json_type_array:
        return "array";
    case json_type_string:
        return "string";
    default:
        return "null";
    }
}

/* ------------------------------------------------------------------------ */
/* Scalars                                                                  */
/* ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid.  Rejects
 * overlong forms, surrogates and code points above U+10FFFF. */
static size_t utf8_sequence(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        return 0;
    }
    return n;
}

/* Offset of the first byte that is not part of valid UTF-8, or len. */
static size_t utf8_invalid_at(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t seq = utf8_sequence(s + i, len - i);
        if (seq == 0) {
            return i;
        }
        i += seq;
    }
    return len;
}

static int decode_string(decoder_t *d, json_object *val, char **out)
{
    if (val == NULL) {
        *out = (char *)protobuf_c_empty_string;
        return 0;
    }
    if (!json_object_is_type(val, json_type_string)) {
        return fail(d, AM_EINVAL, "expected a string, got %s", json_kind(val));
    }
    int len = json_object_get_string_len(val);
    if (len <= 0) {
        *out = (char *)protobuf_c_empty_string;
        return 0;
    }
    /* json-c's UTF-8 check lets overlong forms, surrogates and code points
     * above U+10FFFF through; proto3 strings must be valid UTF-8, and a
     * Collector we forward to would reject the whole request. */
    const char *text = json_object_get_string(val);
    size_t bad = utf8_invalid_at(text, (size_t)len);
    if (bad < (size_t)len) {
        return fail(d, AM_EINVAL, "invalid UTF-8 at byte %zu", bad);
    }
    char *copy = am_arena_strndup(d->arena, text, (size_t)len);
    if (copy == NULL) {
        return fail_oom(d);
    }
    *out = copy;
    return 0;
}

static int decode_bool(decoder_t *d, json_object *val, protobuf_c_boolean *out)
{
    if (val == NULL) {
        *out = 0;
        return 0;
    }
    if (!json_object_is_type(val, json_type_boolean)) {
        return fail(d, AM_EINVAL, "expected true or false, got %s", json_kind(val));
    }
    *out = json_object_get_boolean(val) ? 1 : 0;
    return 0;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Trace and span ids: hex, any length (the receiver judges lengths). */
static int decode_hex_id(decoder_t *d, json_object *val, ProtobufCBinaryData *out)
{
    out->len = 0;
    out->data = NULL;
    if (val == NULL) {
        return 0;
    }
    if (!json_object_is_type(val, json_type_string)) {
        return fail(d, AM_EINVAL, "expected a hex string, got %s", json_kind(val));
    }
    size_t len = (size_t)json_object_get_string_len(val);
    const char *hex = json_object_get_string(val);
    if (len == 0) {
        return 0;
    }
    if (len % 2 != 0) {
        return fail(d, AM_EINVAL, "invalid hex: odd length %zu", len);
    }
    uint8_t *bytes = am_arena_alloc(d->arena, len / 2);
    if (bytes == NULL) {
        return fail_oom(d);
    }
    for (size_t i = 0; i < len; i += 2) {
        int hi = hex_nibble(hex[i]);
        int lo = hex_nibble(hex[i + 1]);
        if (hi < 0 || lo < 0) {
            return fail(d, AM_EINVAL, "invalid hex: bad character at position %zu",
                        hi < 0 ? i : i + 1);
        }
        bytes[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    out->len = len / 2;
    out->data = bytes;
    return 0;
}

static int base64_value(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+' || c == '-') {
        return 62;
    }
    if (c == '/' || c == '_') {
        return 63;
    }
    return -1;
}

/* bytesValue: standard or URL-safe base64, padding optional (proto3 JSON). */
static int decode_base64(decoder_t *d, json_object *val, ProtobufCBinaryData *out)
{
    out->len = 0;
    out->data = NULL;
    if (val == NULL) {
        return 0;
    }
    if (!json_object_is_type(val, json_type_string)) {
        return fail(d, AM_EINVAL, "expected a base64 string, got %s", json_kind(val));
    }
    size_t len = (size_t)json_object_get_string_len(val);
    const char *text = json_object_get_string(val);
    size_t padding = 0;
    while (padding < 2 && len > padding && text[len - 1 - padding] == '=') {
        padding++;
    }
    size_t digits = len - padding;
    if ((padding > 0 && len % 4 != 0) || digits % 4 == 1) {
        return fail(d, AM_EINVAL, "invalid base64: bad length %zu", len);
    }
    if (digits == 0) {
        return 0;
    }
    size_t size = digits / 4 * 3 + (digits % 4 == 0 ? 0 : digits % 4 - 1);
    uint8_t *bytes = am_arena_alloc(d->arena, size);
    if (bytes == NULL) {
        return fail_oom(d);
    }
    uint32_t acc = 0;
    int bits = 0;
    size_t pos = 0;
    for (size_t i = 0; i < digits; i++) {
        int v = base64_value(text[i]);
        if (v < 0) {
            return fail(d, AM_EINVAL, "invalid base64: bad character at position %zu", i);
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            bytes[pos++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    out->len = pos;
    out->data = bytes;
    return 0;
}

/* An integer as sign + magnitude, from a JSON number (integral) or a decimal
 * string.  Range checks are the caller's. */
static int decode_integer(decoder_t *d, json_object *val, bool *negative, uint64_t *magnitude)
{
    *negative = false;
    *magnitude = 0;
    switch (json_object_get_type(val)) {
    case json_type_int: {
        int64_t sval = json_object_get_int64(val);
        uint64_t uval = json_object_get_uint64(val);
        /* json-c saturates on overflow: the extremes are ambiguous. */
        if (sval == INT64_MIN || uval == UINT64_MAX) {
            return fail(d, AM_EINVAL, "integer out of range (send 64-bit values as strings)");
        }
        if (sval < 0) {
            *negative = true;
            *magnitude = (uint64_t)(-(sval + 1)) + 1;
        } else {
            *magnitude = uval;
        }
        return 0;
    }
    case json_type_double: {
        double dval = json_object_get_double(val);
        if (!isfinite(dval) || dval != floor(dval)) {
            return fail(d, AM_EINVAL, "expected an integer, got %g", dval);
        }
        if (fabs(dval) >= 18446744073709551616.0) {
            return fail(d, AM_EINVAL, "integer out of range");
        }
        *negative = dval < 0;
        *magnitude = (uint64_t)fabs(dval);
        return 0;
    }
    case json_type_string: {
        const char *text = json_object_get_string(val);
        size_t len = (size_t)json_object_get_string_len(val);
        size_t i = 0;
        if (len > 0 && text[0] == '-') {
            *negative = true;
            i = 1;
        }
        if (i == len) {
            return fail(d, AM_EINVAL, "expected a decimal integer string");
        }
        uint64_t acc = 0;
        for (; i < len; i++) {
            if (text[i] < '0' || text[i] > '9') {
                return fail(d, AM_EINVAL, "expected a decimal integer string");
            }
            uint64_t digit = (uint64_t)(text[i] - '0');
            if (acc > (UINT64_MAX - digit) / 10) {
                return fail(d, AM_EINVAL, "integer out of range");
            }
            acc = acc * 10 + digit;
        }
        *magnitude = acc;
        return 0;
    }
    default:
        return fail(d, AM_EINVAL, "expected an integer (number or decimal string), got %s",
                    json_kind(val));
    }
}

static int decode_int64(decoder_t *d, json_object *val, int64_t *out)
{
    bool negative;
    uint64_t magnitude;
    *out = 0;
    if (val == NULL) {
        return 0;
    }
    int rc = decode_integer(d, val, &negative, &magnitude);
    if (rc != 0) {
        return rc;
    }
    if (negative) {
        if (magnitude > (uint64_t)INT64_MAX + 1) {
            return fail(d, AM_EINVAL, "integer out of range for int64");
        }
        *out = magnitude == 0 ? 0 : -(int64_t)(magnitude - 1) - 1;
    } else {
        if (magnitude > (uint64_t)INT64_MAX) {
            return fail(d, AM_EINVAL, "integer out of range for int64");
        }
        *out = (int64_t)magnitude;
    }
    return 0;
}

static int decode_uint(decoder_t *d, json_object *val, uint64_t max, uint64_t *out)
{
    bool negative;
    uint64_t magnitude;
    *out = 0;
    if (val == NULL) {
        return 0;
    }
    int rc = decode_integer(d, val, &negative, &magnitude);
    if (rc != 0) {
        return rc;
    }
    if (negative && magnitude != 0) {
        return fail(d, AM_EINVAL, "negative value for an unsigned field");
    }
    if (magnitude > max) {
        return fail(d, AM_EINVAL, "integer out of range (max %llu)", (unsigned long long)max);
    }
    *out = magnitude;
    return 0;
}

static int decode_uint32(decoder_t *d, json_object *val, uint32_t *out)
{
    uint64_t wide;
    int rc = decode_uint(d, val, UINT32_MAX, &wide);
    *out = (uint32_t)wide;
    return rc;
}

static int decode_uint64(decoder_t *d, json_object *val, uint64_t *out)
{
    return decode_uint(d, val, UINT64_MAX, out);
}

static bool is_numeric_text(const char *text, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E')) {
            return false;
        }
    }
    return true;
}

static int decode_double(decoder_t *d, json_object *val, double *out)
{
    *out = 0;
    if (val == NULL) {
        return 0;
    }
    switch (json_object_get_type(val)) {
    case json_type_double:
        *out = json_object_get_double(val);
        return 0;
    case json_type_int: {
        int64_t sval = json_object_get_int64(val);
        uint64_t uval = json_object_get_uint64(val);
        if (sval == INT64_MIN || uval == UINT64_MAX) {
            return fail(d, AM_EINVAL,
                        "number out of range (write it with a fraction or "
                        "exponent)");
        }
        *out = sval < 0 ? (double)sval : (double)uval;
        return 0;
    }
    case json_type_string: {
        const char *text = json_object_get_string(val);
        size_t len = (size_t)json_object_get_string_len(val);
        if (strcmp(text, "NaN") == 0) {
            *out = NAN;
            return 0;
        }
        if (strcmp(text, "Infinity") == 0) {
            *out = INFINITY;
            return 0;
        }
        if (strcmp(text, "-Infinity") == 0) {
            *out = -INFINITY;
            return 0;
        }
        char *end = NULL;
        double parsed = is_numeric_text(text, len) ? strtod(text, &end) : 0;
        if (end == NULL || end != text + len) {
            return fail(d, AM_EINVAL, "expected a number, \"NaN\", \"Infinity\" or \"-Infinity\"");
        }
        *out = parsed;
        return 0;
    }
    default:
        return fail(d, AM_EINVAL, "expected a number, got %s", json_kind(val));
    }
}

/* Enums: an integer (open enum: unknown values are kept) or a value name. */
static int decode_enum(decoder_t *d, json_object *val, const char *const *names, size_t n_names,
                       int *out)
{
    *out = 0;
    if (val == NULL) {
        return 0;
    }
    if (json_object_is_type(val, json_type_string)) {
        const char *text = json_object_get_string(val);
        for (size_t i = 0; i < n_names; i++) {
            if (strcmp(text, names[i]) == 0) {
                *out = (int)i;
                return 0;
            }
        }
        return fail(d, AM_EINVAL, "unknown enum value name");
    }
    if (!json_object_is_type(val, json_type_int) && !json_object_is_type(val, json_type_double)) {
        return fail(d, AM_EINVAL, "expected an enum number or name, got %s", json_kind(val));
    }
    bool negative;
    uint64_t magnitude;
    int rc = decode_integer(d, val, &negative, &magnitude);
    if (rc != 0) {
        return rc;
    }
    if (magnitude > (negative ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX)) {
        return fail(d, AM_EINVAL, "enum value out of range");
    }
    *out = negative ? (int)(-(int64_t)magnitude) : (int)magnitude;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct field_name {
    const char *json_name; /* lowerCamelCase: the OTLP/JSON name, used in paths */
    const char *proto_name;
} field_name_t;

typedef int (*field_fn)(decoder_t *d, void *msg, int field, json_object *val, int depth);

typedef struct message_spec {
    const ProtobufCMessageDescriptor *descriptor;
    const field_name_t *fields;
    size_t n_fields;
    field_fn decode_field;
    bool is_anyvalue; /* counts against AM_OTLP_MAX_ANYVALUE_DEPTH */
} message_spec_t;

static const message_spec_t resource_spans_spec, resource_spec, entity_ref_spec, scope_spans_spec,
    scope_spec, span_spec, event_spec, link_spec, status_spec, keyvalue_spec, anyvalue_spec,
    array_value_spec, kvlist_spec;

static int field_lookup(const message_spec_t *spec, const char *key)
{
    for (size_t i = 0; i < spec->n_fields; i++) {
        const field_name_t *name = &spec->fields[i];
        if ((key[0] == name->json_name[0] && strcmp(key, name->json_name) == 0) ||
            (key[0] == name->proto_name[0] && strcmp(key, name->proto_name) == 0)) {
            return (int)i;
        }
    }
    return -1;
}

/* Decode the known keys of `obj` into `msg` (already initialised). */
static int decode_fields(decoder_t *d, const message_spec_t *spec, json_object *obj, void *msg,
                         int depth)
{
    if (spec->is_anyvalue && depth > AM_OTLP_MAX_ANYVALUE_DEPTH) {
        return fail(d, AM_EINVAL, "AnyValue nested deeper than %d levels",
                    AM_OTLP_MAX_ANYVALUE_DEPTH);
    }
    struct json_object_iterator it = json_object_iter_begin(obj);
    struct json_object_iterator end = json_object_iter_end(obj);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        /* Unknown fields are skipped: OTLP receivers must accept newer senders. */
        int field = field_lookup(spec, json_object_iter_peek_name(&it));
        if (field < 0) {
            continue;
        }
        size_t saved = path_push_key(d, spec->fields[field].json_name);
        int rc = spec->decode_field(d, msg, field, json_object_iter_peek_value(&it), depth);
        if (rc != 0) {
            return rc;
        }
        path_pop(d, saved);
    }
    return 0;
}

/* A singular message field: NULL when absent or null, like unpack. */
static int decode_submessage(decoder_t *d, const message_spec_t *spec, json_object *val, int depth,
                             void **out)
{
    *out = NULL;
    if (val == NULL) {
        return 0;
    }
    if (!json_object_is_type(val, json_type_object)) {
        return fail(d, AM_EINVAL, "expected an object, got %s", json_kind(val));
    }
    void *msg = am_arena_alloc(d->arena, spec->descriptor->sizeof_message);
    if (msg == NULL) {
        return fail_oom(d);
    }
    protobuf_c_message_init(spec->descriptor, msg);
    int rc = decode_fields(d, spec, val, msg, depth);
    if (rc == 0) {
        *out = msg;
    }
    return rc;
}

/* A repeated message field: one block of messages, one of pointers. */
static int decode_message_list(decoder_t *d, const message_spec_t *spec, json_object *val,
                               int depth, size_t *count, void ***items)
{
    *count = 0;
    *items = NULL;
    if (val == NULL) {
        return 0;
    }
    if (!json_object_is_type(val, json_type_array)) {
        return fail(d, AM_EINVAL, "expected an array, got %s", json_kind(val));
    }
    size_t n = json_object_array_length(val);
    if (n == 0) {
        return 0;
    }
    size_t msg_size = spec->descriptor->sizeof_message;
    void **ptrs = am_arena_calloc(d->arena, n, sizeof(*ptrs));
    char *block = ptrs == NULL ? NULL : am_arena_calloc(d->arena, n, msg_size);
    if (block == NULL) {
        return fail_oom(d);
    }
    for (size_t i = 0; i < n; i++) {
        json_object *elem = json_object_array_get_idx(val, i);
        void *msg = block + i * msg_size;
        protobuf_c_message_init(spec->descriptor, msg);
        ptrs[i] = msg;
        size_t saved = path_push_index(d, i);
        if (elem == NULL || !json_object_is_type(elem, json_type_object)) {
            return fail(d, AM_EINVAL, "expected an object, got %s", json_kind(elem));
        }
        int rc = decode_fields(d, spec, elem, msg, depth);
        if (rc != 0) {
            return rc;
        }
        path_pop(d, saved);
    }
    *count = n;
    *items = ptrs;
    return 0;
}

static int decode_string_list(decoder_t *d, json_object *val, size_t *count, char ***items)
{
    *count = 0;
    *items = NULL;
    if (val == NULL) {
        return 0;
    }
    if (!json_object_is_type(val, json_type_array)) {
        return fail(d, AM_EINVAL, "expected an array, got %s", json_kind(val));
    }
    size_t n = json_object_array_length(val);
    if (n == 0) {
        return 0;
    }
    char **strings = am_arena_calloc(d->arena, n, sizeof(*strings));
    if (strings == NULL) {
        return fail_oom(d);
    }
    for (size_t i = 0; i < n; i++) {
        json_object *elem = json_object_array_get_idx(val, i);
        size_t saved = path_push_index(d, i);
        if (elem == NULL) {
            return fail(d, AM_EINVAL, "expected a string, got null");
        }
        int rc = decode_string(d, elem, &strings[i]);
        if (rc != 0) {
            return rc;
        }
        path_pop(d, saved);
    }
    *count = n;
    *items = strings;
    return 0;
}

/* Typed wrappers: the generic helpers fill void pointers; protobuf-c's own
 * generic code treats message pointer arrays the same way. */
#define DECODE_LIST(d, spec, val, depth, count, items)                                             \
    decode_message_list((d), (spec), (val), (depth), (count), (void ***)(void *)(items))
#define DECODE_SUB(d, spec, val, depth, out)                                                       \
    decode_submessage((d), (spec), (val), (depth), (void **)(void *)(out))

/* --- ExportTraceServiceRequest ----------------------------------------- */

enum { REQ_RESOURCE_SPANS };
static const field_name_t request_fields[] = {
    [REQ_RESOURCE_SPANS] = {"resourceSpans", "resource_spans"},
};

static int request_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_export_req_t *req = msg;
    AM_UNUSED(field);
    return DECODE_LIST(d, &resource_spans_spec, val, depth, &req->n_resource_spans,
                       &req->resource_spans);
}

static const message_spec_t request_spec = {
    &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
    request_fields, AM_ARRAY_SIZE(request_fields), request_field, false};

/* --- ResourceSpans ------------------------------------------------------ */

enum { RS_RESOURCE, RS_SCOPE_SPANS, RS_SCHEMA_URL };
static const field_name_t resource_spans_fields[] = {
    [RS_RESOURCE] = {"resource", "resource"},
    [RS_SCOPE_SPANS] = {"scopeSpans", "scope_spans"},
    [RS_SCHEMA_URL] = {"schemaUrl", "schema_url"},
};

static int resource_spans_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_resource_spans_t *rs = msg;
    switch (field) {
    case RS_RESOURCE:
        return DECODE_SUB(d, &resource_spec, val, depth, &rs->resource);
    case RS_SCOPE_SPANS:
        return DECODE_LIST(d, &scope_spans_spec, val, depth, &rs->n_scope_spans, &rs->scope_spans);
    default:
        return decode_string(d, val, &rs->schema_url);
    }
}

static const message_spec_t resource_spans_spec = {
    &opentelemetry__proto__trace__v1__resource_spans__descriptor, resource_spans_fields,
    AM_ARRAY_SIZE(resource_spans_fields), resource_spans_field, false};

/* --- Resource ----------------------------------------------------------- */

enum { RES_ATTRIBUTES, RES_DROPPED, RES_ENTITY_REFS };
static const field_name_t resource_fields[] = {
    [RES_ATTRIBUTES] = {"attributes", "attributes"},
    [RES_DROPPED] = {"droppedAttributesCount", "dropped_attributes_count"},
    [RES_ENTITY_REFS] = {"entityRefs", "entity_refs"},
};

static int resource_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_resource_t *res = msg;
    switch (field) {
    case RES_ATTRIBUTES:
        return DECODE_LIST(d, &keyvalue_spec, val, 1, &res->n_attributes, &res->attributes);
    case RES_DROPPED:
        return decode_uint32(d, val, &res->dropped_attributes_count);
    default:
        return DECODE_LIST(d, &entity_ref_spec, val, depth, &res->n_entity_refs, &res->entity_refs);
    }
}

static const message_spec_t resource_spec = {
    &opentelemetry__proto__resource__v1__resource__descriptor, resource_fields,
    AM_ARRAY_SIZE(resource_fields), resource_field, false};

/* --- EntityRef ---------------------------------------------------------- */

enum { ER_SCHEMA_URL, ER_TYPE, ER_ID_KEYS, ER_DESCRIPTION_KEYS };
static const field_name_t entity_ref_fields[] = {
    [ER_SCHEMA_URL] = {"schemaUrl", "schema_url"},
    [ER_TYPE] = {"type", "type"},
    [ER_ID_KEYS] = {"idKeys", "id_keys"},
    [ER_DESCRIPTION_KEYS] = {"descriptionKeys", "description_keys"},
};

static int entity_ref_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    Opentelemetry__Proto__Common__V1__EntityRef *ref = msg;
    switch (field) {
    case ER_SCHEMA_URL:
        return decode_string(d, val, &ref->schema_url);
    case ER_TYPE:
        return decode_string(d, val, &ref->type);
    case ER_ID_KEYS:
        return decode_string_list(d, val, &ref->n_id_keys, &ref->id_keys);
    default:
        return decode_string_list(d, val, &ref->n_description_keys, &ref->description_keys);
    }
}

static const message_spec_t entity_ref_spec = {
    &opentelemetry__proto__common__v1__entity_ref__descriptor, entity_ref_fields,
    AM_ARRAY_SIZE(entity_ref_fields), entity_ref_field, false};

/* --- ScopeSpans --------------------------------------------------------- */

enum { SS_SCOPE, SS_SPANS, SS_SCHEMA_URL };
static const field_name_t scope_spans_fields[] = {
    [SS_SCOPE] = {"scope", "scope"},
    [SS_SPANS] = {"spans", "spans"},
    [SS_SCHEMA_URL] = {"schemaUrl", "schema_url"},
};

static int scope_spans_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_scope_spans_t *ss = msg;
    switch (field) {
    case SS_SCOPE:
        return DECODE_SUB(d, &scope_spec, val, depth, &ss->scope);
    case SS_SPANS:
        return DECODE_LIST(d, &span_spec, val, depth, &ss->n_spans, &ss->spans);
    default:
        return decode_string(d, val, &ss->schema_url);
    }
}

static const message_spec_t scope_spans_spec = {
    &opentelemetry__proto__trace__v1__scope_spans__descriptor, scope_spans_fields,
    AM_ARRAY_SIZE(scope_spans_fields), scope_spans_field, false};

/* --- InstrumentationScope ----------------------------------------------- */

enum { SC_NAME, SC_VERSION, SC_ATTRIBUTES, SC_DROPPED };
static const field_name_t scope_fields[] = {
    [SC_NAME] = {"name", "name"},
    [SC_VERSION] = {"version", "version"},
    [SC_ATTRIBUTES] = {"attributes", "attributes"},
    [SC_DROPPED] = {"droppedAttributesCount", "dropped_attributes_count"},
};

static int scope_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_scope_t *scope = msg;
    switch (field) {
    case SC_NAME:
        return decode_string(d, val, &scope->name);
    case SC_VERSION:
        return decode_string(d, val, &scope->version);
    case SC_ATTRIBUTES:
        return DECODE_LIST(d, &keyvalue_spec, val, 1, &scope->n_attributes, &scope->attributes);
    default:
        return decode_uint32(d, val, &scope->dropped_attributes_count);
    }
}

static const message_spec_t scope_spec = {
    &opentelemetry__proto__common__v1__instrumentation_scope__descriptor, scope_fields,
    AM_ARRAY_SIZE(scope_fields), scope_field, false};

/* --- Span --------------------------------------------------------------- */

enum {
    SPAN_TRACE_ID,
    SPAN_SPAN_ID,
    SPAN_TRACE_STATE,
    SPAN_PARENT_SPAN_ID,
    SPAN_FLAGS,
    SPAN_NAME,
    SPAN_KIND,
    SPAN_START,
    SPAN_END,
    SPAN_ATTRIBUTES,
    SPAN_DROPPED_ATTRIBUTES,
    SPAN_EVENTS,
    SPAN_DROPPED_EVENTS,
    SPAN_LINKS,
    SPAN_DROPPED_LINKS,
    SPAN_STATUS,
};
static const field_name_t span_fields[] = {
    [SPAN_TRACE_ID] = {"traceId", "trace_id"},
    [SPAN_SPAN_ID] = {"spanId", "span_id"},
    [SPAN_TRACE_STATE] = {"traceState", "trace_state"},
    [SPAN_PARENT_SPAN_ID] = {"parentSpanId", "parent_span_id"},
    [SPAN_FLAGS] = {"flags", "flags"},
    [SPAN_NAME] = {"name", "name"},
    [SPAN_KIND] = {"kind", "kind"},
    [SPAN_START] = {"startTimeUnixNano", "start_time_unix_nano"},
    [SPAN_END] = {"endTimeUnixNano", "end_time_unix_nano"},
    [SPAN_ATTRIBUTES] = {"attributes", "attributes"},
    [SPAN_DROPPED_ATTRIBUTES] = {"droppedAttributesCount", "dropped_attributes_count"},
    [SPAN_EVENTS] = {"events", "events"},
    [SPAN_DROPPED_EVENTS] = {"droppedEventsCount", "dropped_events_count"},
    [SPAN_LINKS] = {"links", "links"},
    [SPAN_DROPPED_LINKS] = {"droppedLinksCount", "dropped_links_count"},
    [SPAN_STATUS] = {"status", "status"},
};

static const char *const span_kind_names[] = {
    "SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",      "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER",
};

static int span_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_span_t *span = msg;
    int kind;
    int rc;
    switch (field) {
    case SPAN_TRACE_ID:
        return decode_hex_id(d, val, &span->trace_id);
    case SPAN_SPAN_ID:
        return decode_hex_id(d, val, &span->span_id);
    case SPAN_TRACE_STATE:
        return decode_string(d, val, &span->trace_state);
    case SPAN_PARENT_SPAN_ID:
        return decode_hex_id(d, val, &span->parent_span_id);
    case SPAN_FLAGS:
        return decode_uint32(d, val, &span->flags);
    case SPAN_NAME:
        return decode_string(d, val, &span->name);
    case SPAN_KIND:
        rc = decode_enum(d, val, span_kind_names, AM_ARRAY_SIZE(span_kind_names), &kind);
        span->kind = (Opentelemetry__Proto__Trace__V1__Span__SpanKind)kind;
        return rc;
    case SPAN_START:
        return decode_uint64(d, val, &span->start_time_unix_nano);
    case SPAN_END:
        return decode_uint64(d, val, &span->end_time_unix_nano);
    case SPAN_ATTRIBUTES:
        return DECODE_LIST(d, &keyvalue_spec, val, 1, &span->n_attributes, &span->attributes);
    case SPAN_DROPPED_ATTRIBUTES:
        return decode_uint32(d, val, &span->dropped_attributes_count);
    case SPAN_EVENTS:
        return DECODE_LIST(d, &event_spec, val, depth, &span->n_events, &span->events);
    case SPAN_DROPPED_EVENTS:
        return decode_uint32(d, val, &span->dropped_events_count);
    case SPAN_LINKS:
        return DECODE_LIST(d, &link_spec, val, depth, &span->n_links, &span->links);
    case SPAN_DROPPED_LINKS:
        return decode_uint32(d, val, &span->dropped_links_count);
    default:
        return DECODE_SUB(d, &status_spec, val, depth, &span->status);
    }
}

static const message_spec_t span_spec = {&opentelemetry__proto__trace__v1__span__descriptor,
                                         span_fields, AM_ARRAY_SIZE(span_fields), span_field,
                                         false};

/* --- Span.Event --------------------------------------------------------- */

enum { EV_TIME, EV_NAME, EV_ATTRIBUTES, EV_DROPPED };
static const field_name_t event_fields[] = {
    [EV_TIME] = {"timeUnixNano", "time_unix_nano"},
    [EV_NAME] = {"name", "name"},
    [EV_ATTRIBUTES] = {"attributes", "attributes"},
    [EV_DROPPED] = {"droppedAttributesCount", "dropped_attributes_count"},
};

static int event_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_span_event_t *event = msg;
    switch (field) {
    case EV_TIME:
        return decode_uint64(d, val, &event->time_unix_nano);
    case EV_NAME:
        return decode_string(d, val, &event->name);
    case EV_ATTRIBUTES:
        return DECODE_LIST(d, &keyvalue_spec, val, 1, &event->n_attributes, &event->attributes);
    default:
        return decode_uint32(d, val, &event->dropped_attributes_count);
    }
}

static const message_spec_t event_spec = {&opentelemetry__proto__trace__v1__span__event__descriptor,
                                          event_fields, AM_ARRAY_SIZE(event_fields), event_field,
                                          false};

/* --- Span.Link ---------------------------------------------------------- */

enum { LK_TRACE_ID, LK_SPAN_ID, LK_TRACE_STATE, LK_ATTRIBUTES, LK_DROPPED, LK_FLAGS };
static const field_name_t link_fields[] = {
    [LK_TRACE_ID] = {"traceId", "trace_id"},
    [LK_SPAN_ID] = {"spanId", "span_id"},
    [LK_TRACE_STATE] = {"traceState", "trace_state"},
    [LK_ATTRIBUTES] = {"attributes", "attributes"},
    [LK_DROPPED] = {"droppedAttributesCount", "dropped_attributes_count"},
    [LK_FLAGS] = {"flags", "flags"},
};

static int link_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_span_link_t *link = msg;
    switch (field) {
    case LK_TRACE_ID:
        return decode_hex_id(d, val, &link->trace_id);
    case LK_SPAN_ID:
        return decode_hex_id(d, val, &link->span_id);
    case LK_TRACE_STATE:
        return decode_string(d, val, &link->trace_state);
    case LK_ATTRIBUTES:
        return DECODE_LIST(d, &keyvalue_spec, val, 1, &link->n_attributes, &link->attributes);
    case LK_DROPPED:
        return decode_uint32(d, val, &link->dropped_attributes_count);
    default:
        return decode_uint32(d, val, &link->flags);
    }
}

static const message_spec_t link_spec = {&opentelemetry__proto__trace__v1__span__link__descriptor,
                                         link_fields, AM_ARRAY_SIZE(link_fields), link_field,
                                         false};

/* --- Status ------------------------------------------------------------- */

enum { ST_MESSAGE, ST_CODE };
static const field_name_t status_fields[] = {
    [ST_MESSAGE] = {"message", "message"},
    [ST_CODE] = {"code", "code"},
};

static const char *const status_code_names[] = {
    "STATUS_CODE_UNSET",
    "STATUS_CODE_OK",
    "STATUS_CODE_ERROR",
};

static int status_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_status_t *status = msg;
    if (field == ST_MESSAGE) {
        return decode_string(d, val, &status->message);
    }
    int code;
    int rc = decode_enum(d, val, status_code_names, AM_ARRAY_SIZE(status_code_names), &code);
    status->code = (Opentelemetry__Proto__Trace__V1__Status__StatusCode)code;
    return rc;
}

static const message_spec_t status_spec = {&opentelemetry__proto__trace__v1__status__descriptor,
                                           status_fields, AM_ARRAY_SIZE(status_fields),
                                           status_field, false};

/* --- KeyValue, AnyValue, ArrayValue, KeyValueList ----------------------- */
/* `depth` here is the level of the AnyValue being (or about to be) decoded. */

enum { KV_KEY, KV_VALUE };
static const field_name_t keyvalue_fields[] = {
    [KV_KEY] = {"key", "key"},
    [KV_VALUE] = {"value", "value"},
};

static int keyvalue_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_keyvalue_t *kv = msg;
    if (field == KV_KEY) {
        return decode_string(d, val, &kv->key);
    }
    return DECODE_SUB(d, &anyvalue_spec, val, depth, &kv->value);
}

static const message_spec_t keyvalue_spec = {
    &opentelemetry__proto__common__v1__key_value__descriptor, keyvalue_fields,
    AM_ARRAY_SIZE(keyvalue_fields), keyvalue_field, false};

enum { AV_STRING, AV_BOOL, AV_INT, AV_DOUBLE, AV_ARRAY, AV_KVLIST, AV_BYTES };
static const field_name_t anyvalue_fields[] = {
    [AV_STRING] = {"stringValue", "string_value"}, [AV_BOOL] = {"boolValue", "bool_value"},
    [AV_INT] = {"intValue", "int_value"},          [AV_DOUBLE] = {"doubleValue", "double_value"},
    [AV_ARRAY] = {"arrayValue", "array_value"},    [AV_KVLIST] = {"kvlistValue", "kvlist_value"},
    [AV_BYTES] = {"bytesValue", "bytes_value"},
};

static int anyvalue_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_anyvalue_t *av = msg;
    if (val == NULL) {
        return 0; /* a null member does not select the oneof */
    }
    /* The last member present wins, as in the binary encoding. */
    switch (field) {
    case AV_STRING:
        av->value_case = AM_PB_VALUE(STRING_VALUE);
        return decode_string(d, val, &av->string_value);
    case AV_BOOL:
        av->value_case = AM_PB_VALUE(BOOL_VALUE);
        return decode_bool(d, val, &av->bool_value);
    case AV_INT:
        av->value_case = AM_PB_VALUE(INT_VALUE);
        return decode_int64(d, val, &av->int_value);
    case AV_DOUBLE:
        av->value_case = AM_PB_VALUE(DOUBLE_VALUE);
        return decode_double(d, val, &av->double_value);
    case AV_ARRAY:
        av->value_case = AM_PB_VALUE(ARRAY_VALUE);
        return DECODE_SUB(d, &array_value_spec, val, depth + 1, &av->array_value);
    case AV_KVLIST:
        av->value_case = AM_PB_VALUE(KVLIST_VALUE);
        return DECODE_SUB(d, &kvlist_spec, val, depth + 1, &av->kvlist_value);
    default:
        av->value_case = AM_PB_VALUE(BYTES_VALUE);
        return decode_base64(d, val, &av->bytes_value);
    }
}

static const message_spec_t anyvalue_spec = {
    &opentelemetry__proto__common__v1__any_value__descriptor, anyvalue_fields,
    AM_ARRAY_SIZE(anyvalue_fields), anyvalue_field, true};

enum { LIST_VALUES };
static const field_name_t values_fields[] = {
    [LIST_VALUES] = {"values", "values"},
};

static int array_value_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_arrayvalue_t *array = msg;
    AM_UNUSED(field);
    return DECODE_LIST(d, &anyvalue_spec, val, depth, &array->n_values, &array->values);
}

static const message_spec_t array_value_spec = {
    &opentelemetry__proto__common__v1__array_value__descriptor, values_fields,
    AM_ARRAY_SIZE(values_fields), array_value_field, false};

static int kvlist_field(decoder_t *d, void *msg, int field, json_object *val, int depth)
{
    am_pb_kvlist_t *list = msg;
    AM_UNUSED(field);
    return DECODE_LIST(d, &keyvalue_spec, val, depth, &list->n_values, &list->values);
}

static const message_spec_t kvlist_spec = {
    &opentelemetry__proto__common__v1__key_value_list__descriptor, values_fields,
    AM_ARRAY_SIZE(values_fields), kvlist_field, false};

/* ------------------------------------------------------------------------ */
/* Decode entry point                                                       */
/* ------------------------------------------------------------------------ */

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* What a JSON value starting with `c` would be. */
static const char *leading_kind(char c)
{
    switch (c) {
    case '[':
        return "array";
    case '"':
        return "string";
    case 'n':
        return "null";
    case 't':
    case 'f':
        return "boolean";
    default:
        return (c == '-' || (c >= '0' && c <= '9')) ? "number" : "invalid JSON";
    }
}

int am_otlp_json_decode_traces(am_arena_t *arena, const char *json, size_t len,
                               am_pb_export_req_t **out, char *err, size_t err_size)
{
    decoder_t d = {.arena = arena, .err = err, .err_size = err_size};
    struct json_tokener *tok = NULL;
    json_object *root = NULL;
    int rc;

    if (err != NULL && err_size > 0) {
        err[0] = '\0';
    }
    if (out != NULL) {
        *out = NULL;
    }
    if (arena == NULL || out == NULL || (json == NULL && len > 0)) {
        return fail(&d, AM_EINVAL, "invalid arguments");
    }
    size_t start = 0;
    while (start < len && is_json_space(json[start])) {
        start++;
    }
    if (start == len) {
        return fail(&d, AM_EINVAL, "empty body: expected a JSON object");
    }
    if (json[start] != '{') {
        /* Only an object is a request; saying so beats json-c's "truncated"
         * for a bare literal such as `null`, which it cannot end without
         * more input. */
        return fail(&d, AM_EINVAL, "expected a JSON object, got %s", leading_kind(json[start]));
    }
    if (len > INT_MAX) {
        return fail(&d, AM_EINVAL, "JSON body too large (%zu bytes)", len);
    }
    tok = json_tokener_new_ex(AM_OTLP_JSON_MAX_NESTING);
    if (tok == NULL) {
        return fail_oom(&d);
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
                                    JSON_TOKENER_VALIDATE_UTF8);
    root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    if (jerr == json_tokener_continue) {
        rc = fail(&d, AM_EINVAL, "truncated JSON: input ends inside a value");
        goto done;
    }
    if (jerr == json_tokener_error_depth) {
        rc = fail(&d, AM_EINVAL, "JSON nested deeper than %d levels (at offset %zu)",
                  AM_OTLP_JSON_MAX_NESTING, end);
        goto done;
    }
    if (jerr != json_tokener_success) {
        rc = fail(&d, AM_EINVAL, "invalid JSON at offset %zu: %s", end,
                  json_tokener_error_desc(jerr));
        goto done;
    }
    for (size_t i = end; i < len; i++) {
        if (!is_json_space(json[i])) {
            rc = fail(&d, AM_EINVAL, "trailing data after the JSON object at offset %zu", i);
            goto done;
        }
    }
    if (root == NULL || !json_object_is_type(root, json_type_object)) {
        rc = fail(&d, AM_EINVAL, "expected a JSON object, got %s", json_kind(root));
        goto done;
    }
    am_pb_export_req_t *req = am_arena_alloc(arena, sizeof(*req));
    if (req == NULL) {
        rc = fail_oom(&d);
        goto done;
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);
    rc = decode_fields(&d, &request_spec, root, req, 0);
    if (rc == 0) {
        *out = req;
    }

done:
    json_object_put(root);
    json_tokener_free(tok);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct jbuf {
    char *data;
    size_t len;
    size_t cap;
    int err; /* sticky: the first failure; appends after it do nothing */
} jbuf_t;

static bool jb_reserve(jbuf_t *b, size_t extra)
{
    if (b->err != 0) {
        return false;
    }
    /* +1 keeps room for the final NUL. */
    if (extra > SIZE_MAX - b->len - 1) {
        b->err = AM_ENOMEM;
        return false;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) {
        return true;
    }
    size_t cap = b->cap == 0 ? 1024 : b->cap;
    while (cap < need) {
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    }
    char *grown = am_realloc(b->data, cap);
    if (grown == NULL) {
        b->err = AM_ENOMEM;
        return false;
    }
    b->data = grown;
    b->cap = cap;
    return true;
}

static void jb_append(jbuf_t *b, const char *s, size_t n)
{
    if (jb_reserve(b, n)) {
        memcpy(b->data + b->len, s, n);
        b->len += n;
    }
}

static void jb_char(jbuf_t *b, char c)
{
    if (jb_reserve(b, 1)) {
        b->data[b->len++] = c;
    }
}

#define JB_LIT(b, lit) jb_append((b), (lit), sizeof(lit) - 1)

static void jb_string_n(jbuf_t *b, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t run = 0; /* start of the pending run of bytes copied verbatim */
    size_t i = 0;
    jb_char(b, '"');
    while (i < len) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        size_t seq = c >= 0x80 ? utf8_sequence(s + i, len - i) : 0;
        if (seq > 0) {
            i += seq;
            continue;
        }
        jb_append(b, str + run, i - run);
        switch (c) {
        case '"':
            JB_LIT(b, "\\\"");
            break;
        case '\\':
            JB_LIT(b, "\\\\");
            break;
        case '\n':
            JB_LIT(b, "\\n");
            break;
        case '\r':
            JB_LIT(b, "\\r");
            break;
        case '\t':
            JB_LIT(b, "\\t");
            break;
        case '\b':
            JB_LIT(b, "\\b");
            break;
        case '\f':
            JB_LIT(b, "\\f");
            break;
        default:
            if (c < 0x20) {
                char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
                jb_append(b, esc, sizeof(esc));
            } else {
                /* A byte that is not valid UTF-8: U+FFFD, written raw like
                 * the decoded text it stands for, so re-encoding is stable. */
                JB_LIT(b, "\xef\xbf\xbd");
            }
            break;
        }
        i++;
        run = i;
    }
    jb_append(b, str + run, len - run);
    jb_char(b, '"');
}

static void jb_string(jbuf_t *b, const char *s)
{
    jb_string_n(b, s == NULL ? "" : s, s == NULL ? 0 : strlen(s));
}

/* Members of one object: `*first` tracks whether a comma is needed. */
static void jb_key(jbuf_t *b, bool *first, const char *key)
{
    if (!*first) {
        jb_char(b, ',');
    }
    *first = false;
    jb_char(b, '"');
    jb_append(b, key, strlen(key));
    JB_LIT(b, "\":");
}

static void jb_printf(jbuf_t *b, const char *fmt, ...) AM_PRINTF(2, 3);

static void jb_printf(jbuf_t *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof(tmp)) {
        jb_append(b, tmp, (size_t)n);
    }
}

static void jb_double(jbuf_t *b, double v)
{
    if (isnan(v)) {
        JB_LIT(b, "\"NaN\"");
        return;
    }
    if (isinf(v)) {
        if (v > 0) {
            JB_LIT(b, "\"Infinity\"");
        } else {
            JB_LIT(b, "\"-Infinity\"");
        }
        return;
    }
    if (v == 0 && signbit(v)) {
        JB_LIT(b, "-0.0"); /* "-0" would read back as the integer 0 */
        return;
    }
    /* The shortest of %.15g..%.17g that reads back to the same double. */
    char tmp[40];
    for (int precision = 15; precision <= 17; precision++) {
        snprintf(tmp, sizeof(tmp), "%.*g", precision, v);
        if (strtod(tmp, NULL) == v) {
            break;
        }
    }
    jb_append(b, tmp, strlen(tmp));
}

static void jb_hex(jbuf_t *b, ProtobufCBinaryData bytes)
{
    static const char hex[] = "0123456789abcdef";
    if (!jb_reserve(b, bytes.len * 2 + 2)) {
        return;
    }
    char *p = b->data + b->len;
    *p++ = '"';
    for (size_t i = 0; i < bytes.len; i++) {
        *p++ = hex[bytes.data[i] >> 4];
        *p++ = hex[bytes.data[i] & 0xf];
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
}

static void jb_base64(jbuf_t *b, ProtobufCBinaryData bytes)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (!jb_reserve(b, (bytes.len + 2) / 3 * 4 + 2)) {
        return;
    }
    char *p = b->data + b->len;
    *p++ = '"';
    size_t i = 0;
    for (; i + 3 <= bytes.len; i += 3) {
        uint32_t v =
            (uint32_t)bytes.data[i] << 16 | (uint32_t)bytes.data[i + 1] << 8 | bytes.data[i + 2];
        *p++ = alphabet[v >> 18];
        *p++ = alphabet[(v >> 12) & 0x3f];
        *p++ = alphabet[(v >> 6) & 0x3f];
        *p++ = alphabet[v & 0x3f];
    }
    if (i < bytes.len) {
        uint32_t v = (uint32_t)bytes.data[i] << 16;
        if (i + 1 < bytes.len) {
            v |= (uint32_t)bytes.data[i + 1] << 8;
        }
        *p++ = alphabet[v >> 18];
        *p++ = alphabet[(v >> 12) & 0x3f];
        *p++ = i + 1 < bytes.len ? alphabet[(v >> 6) & 0x3f] : '=';
        *p++ = '=';
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
}

/* Optional members: written only when not the proto3 default. */

static void jb_opt_string(jbuf_t *b, bool *first, const char *key, const char *value)
{
    if (value != NULL && value[0] != '\0') {
        jb_key(b, first, key);
        jb_string(b, value);
    }
}

static void jb_opt_id(jbuf_t *b, bool *first, const char *key, ProtobufCBinaryData value)
{
    if (value.len > 0) {
        jb_key(b, first, key);
        jb_hex(b, value);
    }
}

static void jb_opt_u32(jbuf_t *b, bool *first, const char *key, uint32_t value)
{
    if (value != 0) {
        jb_key(b, first, key);
        jb_printf(b, "%" PRIu32, value);
    }
}

static void jb_opt_u64(jbuf_t *b, bool *first, const char *key, uint64_t value)
{
    if (value != 0) {
        jb_key(b, first, key);
        jb_printf(b, "\"%" PRIu64 "\"", value);
    }
}

static void jb_opt_enum(jbuf_t *b, bool *first, const char *key, int value)
{
    if (value != 0) {
        jb_key(b, first, key);
        jb_printf(b, "%d", value);
    }
}

static void encode_anyvalue(jbuf_t *b, const am_pb_anyvalue_t *value, int depth);

static void encode_attributes(jbuf_t *b, bool *first, const char *key,
                              am_pb_keyvalue_t *const *attrs, size_t n_attrs, int depth)
{
    if (n_attrs == 0) {
        return;
    }
    jb_key(b, first, key);
    jb_char(b, '[');
    for (size_t i = 0; i < n_attrs && b->err == 0; i++) {
        const am_pb_keyvalue_t *kv = attrs[i];
        bool kv_first = true;
        if (i > 0) {
            jb_char(b, ',');
        }
        jb_char(b, '{');
        if (kv != NULL) {
            /* "key" is always written: every OTLP consumer expects it. */
            jb_key(b, &kv_first, "key");
            jb_string(b, kv->key);
            if (kv->value != NULL) {
                jb_key(b, &kv_first, "value");
                encode_anyvalue(b, kv->value, depth);
            }
        }
        jb_char(b, '}');
    }
    jb_char(b, ']');
}

static void encode_anyvalue(jbuf_t *b, const am_pb_anyvalue_t *value, int depth)
{
    if (depth > AM_OTLP_MAX_ANYVALUE_DEPTH) {
        if (b->err == 0) {
            b->err = AM_EINVAL;
        }
        return;
    }
    jb_char(b, '{');
    switch (value->value_case) {
    case AM_PB_VALUE(STRING_VALUE):
        JB_LIT(b, "\"stringValue\":");
        jb_string(b, value->string_value);
        break;
    case AM_PB_VALUE(BOOL_VALUE):
        if (value->bool_value) {
            JB_LIT(b, "\"boolValue\":true");
        } else {
            JB_LIT(b, "\"boolValue\":false");
        }
        break;
    case AM_PB_VALUE(INT_VALUE):
        jb_printf(b, "\"intValue\":\"%" PRId64 "\"", value->int_value);
        break;
    case AM_PB_VALUE(DOUBLE_VALUE):
        JB_LIT(b, "\"doubleValue\":");
        jb_double(b, value->double_value);
        break;
    case AM_PB_VALUE(ARRAY_VALUE): {
        const am_pb_arrayvalue_t *array = value->array_value;
        JB_LIT(b, "\"arrayValue\":{");
        if (array != NULL && array->n_values > 0) {
            JB_LIT(b, "\"values\":[");
            for (size_t i = 0; i < array->n_values && b->err == 0; i++) {
                if (i > 0) {
                    jb_char(b, ',');
                }
                if (array->values[i] != NULL) {
                    encode_anyvalue(b, array->values[i], depth + 1);
                } else {
                    JB_LIT(b, "{}");
                }
            }
            jb_char(b, ']');
        }
        jb_char(b, '}');
        break;
    }
    case AM_PB_VALUE(KVLIST_VALUE): {
        const am_pb_kvlist_t *list = value->kvlist_value;
        bool first = true;
        JB_LIT(b, "\"kvlistValue\":{");
        if (list != NULL) {
            encode_attributes(b, &first, "values", list->values, list->n_values, depth + 1);
        }
        jb_char(b, '}');
        break;
    }
    case AM_PB_VALUE(BYTES_VALUE):
        JB_LIT(b, "\"bytesValue\":");
        jb_base64(b, value->bytes_value);
        break;
    default:
        break;
    }
    jb_char(b, '}');
}

static void encode_resource(jbuf_t *b, const am_pb_resource_t *res)
{
    bool first = true;
    jb_char(b, '{');
    encode_attributes(b, &first, "attributes", res->attributes, res->n_attributes, 1);
    jb_opt_u32(b, &first, "droppedAttributesCount", res->dropped_attributes_count);
    if (res->n_entity_refs > 0) {
        jb_key(b, &first, "entityRefs");
        jb_char(b, '[');
        for (size_t i = 0; i < res->n_entity_refs; i++) {
            const Opentelemetry__Proto__Common__V1__EntityRef *ref = res->entity_refs[i];
            bool ref_first = true;
            if (i > 0) {
                jb_char(b, ',');
            }
            jb_char(b, '{');
            if (ref != NULL) {
                jb_opt_string(b, &ref_first, "schemaUrl", ref->schema_url);
                jb_opt_string(b, &ref_first, "type", ref->type);
                const char *names[] = {"idKeys", "descriptionKeys"};
                size_t counts[] = {ref->n_id_keys, ref->n_description_keys};
                char **lists[] = {ref->id_keys, ref->description_keys};
                for (int l = 0; l < 2; l++) {
                    if (counts[l] == 0) {
                        continue;
                    }
                    jb_key(b, &ref_first, names[l]);
                    jb_char(b, '[');
                    for (size_t k = 0; k < counts[l]; k++) {
                        if (k > 0) {
                            jb_char(b, ',');
                        }
                        jb_string(b, lists[l][k]);
                    }
                    jb_char(b, ']');
                }
            }
            jb_char(b, '}');
        }
        jb_char(b, ']');
    }
    jb_char(b, '}');
}

static void encode_scope(jbuf_t *b, const am_pb_scope_t *scope)
{
    bool first = true;
    jb_char(b, '{');
    jb_opt_string(b, &first, "name", scope->name);
    jb_opt_string(b, &first, "version", scope->version);
    encode_attributes(b, &first, "attributes", scope->attributes, scope->n_attributes, 1);
    jb_opt_u32(b, &first, "droppedAttributesCount", scope->dropped_attributes_count);
    jb_char(b, '}');
}

static void encode_event(jbuf_t *b, const am_pb_span_event_t *event)
{
    bool first = true;
    jb_char(b, '{');
    jb_opt_u64(b, &first, "timeUnixNano", event->time_unix_nano);
    jb_opt_string(b, &first, "name", event->name);
    encode_attributes(b, &first, "attributes", event->attributes, event->n_attributes, 1);
    jb_opt_u32(b, &first, "droppedAttributesCount", event->dropped_attributes_count);
    jb_char(b, '}');
}

static void encode_link(jbuf_t *b, const am_pb_span_link_t *link)
{
    bool first = true;
    jb_char(b, '{');
    jb_opt_id(b, &first, "traceId", link->trace_id);
    jb_opt_id(b, &first, "spanId", link->span_id);
    jb_opt_string(b, &first, "traceState", link->trace_state);
    encode_attributes(b, &first, "attributes", link->attributes, link->n_attributes, 1);
    jb_opt_u32(b, &first, "droppedAttributesCount", link->dropped_attributes_count);
    jb_opt_u32(b, &first, "flags", link->flags);
    jb_char(b, '}');
}

static void encode_span(jbuf_t *b, const am_pb_span_t *span)
{
    bool first = true;
    jb_char(b, '{');
    jb_opt_id(b, &first, "traceId", span->trace_id);
    jb_opt_id(b, &first, "spanId", span->span_id);
    jb_opt_string(b, &first, "traceState", span->trace_state);
    jb_opt_id(b, &first, "parentSpanId", span->parent_span_id);
    jb_opt_u32(b, &first, "flags", span->flags);
    jb_opt_string(b, &first, "name", span->name);
    jb_opt_enum(b, &first, "kind", (int)span->kind);
    jb_opt_u64(b, &first, "startTimeUnixNano", span->start_time_unix_nano);
    jb_opt_u64(b, &first, "endTimeUnixNano", span->end_time_unix_nano);
    encode_attributes(b, &first, "attributes", span->attributes, span->n_attributes, 1);
    jb_opt_u32(b, &first, "droppedAttributesCount", span->dropped_attributes_count);
    if (span->n_events > 0) {
        jb_key(b, &first, "events");
        jb_char(b, '[');
        for (size_t i = 0; i < span->n_events && b->err == 0; i++) {
            if (i > 0) {
                jb_char(b, ',');
            }
            if (span->events[i] != NULL) {
                encode_event(b, span->events[i]);
            } else {
                JB_LIT(b, "{}");
            }
        }
        jb_char(b, ']');
    }
    jb_opt_u32(b, &first, "droppedEventsCount", span->dropped_events_count);
    if (span->n_links > 0) {
        jb_key(b, &first, "links");
        jb_char(b, '[');
        for (size_t i = 0; i < span->n_links && b->err == 0; i++) {
            if (i > 0) {
                jb_char(b, ',');
            }
            if (span->links[i] != NULL) {
                encode_link(b, span->links[i]);
            } else {
                JB_LIT(b, "{}");
            }
        }
        jb_char(b, ']');
    }
    jb_opt_u32(b, &first, "droppedLinksCount", span->dropped_links_count);
    if (span->status != NULL) {
        bool status_first = true;
        jb_key(b, &first, "status");
        jb_char(b, '{');
        jb_opt_string(b, &status_first, "message", span->status->message);
        jb_opt_enum(b, &status_first, "code", (int)span->status->code);
        jb_char(b, '}');
    }
    jb_char(b, '}');
}

static void encode_scope_spans(jbuf_t *b, const am_pb_scope_spans_t *ss)
{
    bool first = true;
    jb_char(b, '{');
    if (ss->scope != NULL) {
        jb_key(b, &first, "scope");
        encode_scope(b, ss->scope);
    }
    if (ss->n_spans > 0) {
        jb_key(b, &first, "spans");
        jb_char(b, '[');
        for (size_t i = 0; i < ss->n_spans && b->err == 0; i++) {
            if (i > 0) {
                jb_char(b, ',');
            }
            if (ss->spans[i] != NULL) {
                encode_span(b, ss->spans[i]);
            } else {
                JB_LIT(b, "{}");
            }
        }
        jb_char(b, ']');
    }
    jb_opt_string(b, &first, "schemaUrl", ss->schema_url);
    jb_char(b, '}');
}

static void encode_resource_spans(jbuf_t *b, const am_pb_resource_spans_t *rs)
{
    bool first = true;
    jb_char(b, '{');
    if (rs->resource != NULL) {
        jb_key(b, &first, "resource");
        encode_resource(b, rs->resource);
    }
    if (rs->n_scope_spans > 0) {
        jb_key(b, &first, "scopeSpans");
        jb_char(b, '[');
        for (size_t i = 0; i < rs->n_scope_spans && b->err == 0; i++) {
            if (i > 0) {
                jb_char(b, ',');
            }
            if (rs->scope_spans[i] != NULL) {
                encode_scope_spans(b, rs->scope_spans[i]);
            } else {
                JB_LIT(b, "{}");
            }
        }
        jb_char(b, ']');
    }
    jb_opt_string(b, &first, "schemaUrl", rs->schema_url);
    jb_char(b, '}');
}

/* Hand the buffer over (NUL-terminated) or free it on error. */
static int jb_finish(jbuf_t *b, char **out, size_t *out_len)
{
    jb_reserve(b, 0);
    if (b->err != 0) {
        am_free(b->data);
        return b->err;
    }
    b->data[b->len] = '\0';
    *out = b->data;
    if (out_len != NULL) {
        *out_len = b->len;
    }
    return 0;
}

int am_otlp_json_encode_traces(const am_pb_export_req_t *req, char **out, size_t *out_len)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (req == NULL || out == NULL) {
        return AM_EINVAL;
    }
    jbuf_t b = {0};
    bool first = true;
    jb_char(&b, '{');
    if (req->n_resource_spans > 0) {
        jb_key(&b, &first, "resourceSpans");
        jb_char(&b, '[');
        for (size_t i = 0; i < req->n_resource_spans && b.err == 0; i++) {
            if (i > 0) {
                jb_char(&b, ',');
            }
            if (req->resource_spans[i] != NULL) {
                encode_resource_spans(&b, req->resource_spans[i]);
            } else {
                JB_LIT(&b, "{}");
            }
        }
        jb_char(&b, ']');
    }
    jb_char(&b, '}');
    return jb_finish(&b, out, out_len);
}

int am_otlp_json_encode_response(const am_pb_export_resp_t *resp, char **out, size_t *out_len)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (out == NULL) {
        return AM_EINVAL;
    }
    jbuf_t b = {0};
    const am_pb_partial_t *partial = resp != NULL ? resp->partial_success : NULL;
    bool has_message =
        partial != NULL && partial->error_message != NULL && partial->error_message[0] != '\0';
    if (partial == NULL || (partial->rejected_spans == 0 && !has_message)) {
        JB_LIT(&b, "{}");
        return jb_finish(&b, out, out_len);
    }
    bool first = true;
    JB_LIT(&b, "{\"partialSuccess\":{");
    if (partial->rejected_spans != 0) {
        jb_key(&b, &first, "rejectedSpans");
        jb_printf(&b, "\"%" PRId64 "\"", partial->rejected_spans);
    }
    jb_opt_string(&b, &first, "errorMessage", partial->error_message);
    JB_LIT(&b, "}}");
    return jb_finish(&b, out, out_len);
}
