/*
 * am_attr.c - attribute reads and writes on protobuf-c KeyValue arrays.
 *
 * Writes grow arrays in the batch arena by doubling into a fresh array (the
 * old one stays in its arena until the arena dies); spans rarely gain more
 * than a dozen attributes, so this is cheap.
 */
#include "am_attr.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const am_pb_anyvalue_t *am_attr_find(am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                                     const char *key)
{
    for (size_t i = 0; i < n_attrs; i++) {
        if (attrs[i] != NULL && attrs[i]->key != NULL && strcmp(attrs[i]->key, key) == 0) {
            return attrs[i]->value;
        }
    }
    return NULL;
}

bool am_attr_get_str(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                     const char **out)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL || v->value_case != AM_PB_VALUE(STRING_VALUE) || v->string_value == NULL ||
        v->string_value[0] == '\0') {
        return false;
    }
    *out = v->string_value;
    return true;
}

static bool parse_int_text(const char *s, int64_t *out)
{
    if (s == NULL || *s == '\0') {
        return false;
    }
    errno = 0;
    char *end = NULL;
    long long value = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0') {
        /* Accept integral decimal text like "1200.0". */
        char *dend = NULL;
        double d = strtod(s, &dend);
        if (*dend != '\0' || !isfinite(d) || d != floor(d) || fabs(d) > 9.0e18) {
            return false;
        }
        *out = (int64_t)d;
        return true;
    }
    *out = value;
    return true;
}

bool am_attr_get_int(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                     int64_t *out)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL) {
        return false;
    }
    switch (v->value_case) {
    case AM_PB_VALUE(INT_VALUE):
        *out = v->int_value;
        return true;
    case AM_PB_VALUE(DOUBLE_VALUE):
        if (!isfinite(v->double_value) || v->double_value != floor(v->double_value) ||
            fabs(v->double_value) > 9.0e18) {
            return false;
        }
        *out = (int64_t)v->double_value;
        return true;
    case AM_PB_VALUE(STRING_VALUE):
        return parse_int_text(v->string_value, out);
    default:
        return false;
    }
}

bool am_attr_get_double(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                        double *out)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, key);
    if (v == NULL) {
        return false;
    }
    switch (v->value_case) {
    case AM_PB_VALUE(INT_VALUE):
        *out = (double)v->int_value;
        return true;
    case AM_PB_VALUE(DOUBLE_VALUE):
        if (!isfinite(v->double_value)) {
            return false;
        }
        *out = v->double_value;
        return true;
    case AM_PB_VALUE(STRING_VALUE): {
        if (v->string_value == NULL || v->string_value[0] == '\0') {
            return false;
        }
        char *end = NULL;
        double d = strtod(v->string_value, &end);
        if (*end != '\0' || !isfinite(d)) {
            return false;
        }
        *out = d;
        return true;
    }
    default:
        return false;
    }
}

const char *am_attr_first_str(const am_pb_span_t *span, const am_pb_resource_t *resource,
                              const char *const *keys)
{
    const char *value;
    for (size_t i = 0; keys[i] != NULL; i++) {
        if (span != NULL && am_attr_get_str(span->attributes, span->n_attributes, keys[i], &value)) {
            return value;
        }
    }
    if (resource != NULL) {
        for (size_t i = 0; keys[i] != NULL; i++) {
            if (am_attr_get_str(resource->attributes, resource->n_attributes, keys[i], &value)) {
                return value;
            }
        }
    }
    return NULL;
}

bool am_attr_first_int(const am_pb_span_t *span, const am_pb_resource_t *resource,
                       const char *const *keys, int64_t *out)
{
    for (size_t i = 0; keys[i] != NULL; i++) {
        if (span != NULL && am_attr_get_int(span->attributes, span->n_attributes, keys[i], out)) {
            return true;
        }
    }
    if (resource != NULL) {
        for (size_t i = 0; keys[i] != NULL; i++) {
            if (am_attr_get_int(resource->attributes, resource->n_attributes, keys[i], out)) {
                return true;
            }
        }
    }
    return false;
}

/* The value slot for `key` on span: the existing one, or a new KeyValue. */
static am_pb_anyvalue_t *span_slot(am_arena_t *arena, am_pb_span_t *span, const char *key)
{
    for (size_t i = 0; i < span->n_attributes; i++) {
        am_pb_keyvalue_t *kv = span->attributes[i];
        if (kv != NULL && kv->key != NULL && strcmp(kv->key, key) == 0) {
            am_pb_anyvalue_t *value = am_arena_alloc(arena, sizeof(*value));
            if (value == NULL) {
                return NULL;
            }
            opentelemetry__proto__common__v1__any_value__init(value);
            kv->value = value;
            return value;
        }
    }
    am_pb_keyvalue_t **grown = am_arena_alloc(arena, (span->n_attributes + 1) * sizeof(*grown));
    am_pb_keyvalue_t *kv = am_arena_alloc(arena, sizeof(*kv));
    am_pb_anyvalue_t *value = am_arena_alloc(arena, sizeof(*value));
    if (grown == NULL || kv == NULL || value == NULL) {
        return NULL;
    }
    if (span->n_attributes > 0) {
        memcpy(grown, span->attributes, span->n_attributes * sizeof(*grown));
    }
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(value);
    kv->key = (char *)key;
    kv->value = value;
    grown[span->n_attributes] = kv;
    span->attributes = grown;
    span->n_attributes++;
    return value;
}

int am_span_set_str(am_arena_t *arena, am_pb_span_t *span, const char *key, const char *value)
{
    char *copy = am_arena_strdup(arena, value);
    am_pb_anyvalue_t *slot = copy != NULL ? span_slot(arena, span, key) : NULL;
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(STRING_VALUE);
    slot->string_value = copy;
    return 0;
}

int am_span_set_int(am_arena_t *arena, am_pb_span_t *span, const char *key, int64_t value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(INT_VALUE);
    slot->int_value = value;
    return 0;
}

int am_span_set_double(am_arena_t *arena, am_pb_span_t *span, const char *key, double value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(DOUBLE_VALUE);
    slot->double_value = value;
    return 0;
}

int am_span_set_bool(am_arena_t *arena, am_pb_span_t *span, const char *key, bool value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    slot->value_case = AM_PB_VALUE(BOOL_VALUE);
    slot->bool_value = value;
    return 0;
}

int am_span_set_value(am_arena_t *arena, am_pb_span_t *span, const char *key,
                      const am_pb_anyvalue_t *value)
{
    am_pb_anyvalue_t *slot = span_slot(arena, span, key);
    if (slot == NULL) {
        return AM_ENOMEM;
    }
    *slot = *value;
    return 0;
}

static size_t text_append(char *buf, size_t size, size_t pos, const char *s)
{
    while (*s != '\0' && pos + 1 < size) {
        buf[pos++] = *s++;
    }
    buf[pos < size ? pos : size - 1] = '\0';
    return pos;
}

static size_t value_text(const am_pb_anyvalue_t *value, char *buf, size_t size, size_t pos,
                         int depth)
{
    char tmp[64];
    if (value == NULL || depth > 8) {
        return text_append(buf, size, pos, depth > 8 ? "..." : "");
    }
    switch (value->value_case) {
    case AM_PB_VALUE(STRING_VALUE):
        return text_append(buf, size, pos, value->string_value != NULL ? value->string_value : "");
    case AM_PB_VALUE(BOOL_VALUE):
        return text_append(buf, size, pos, value->bool_value ? "true" : "false");
    case AM_PB_VALUE(INT_VALUE):
        snprintf(tmp, sizeof(tmp), "%" PRId64, value->int_value);
        return text_append(buf, size, pos, tmp);
    case AM_PB_VALUE(DOUBLE_VALUE):
        snprintf(tmp, sizeof(tmp), "%.17g", value->double_value);
        return text_append(buf, size, pos, tmp);
    case AM_PB_VALUE(BYTES_VALUE):
        snprintf(tmp, sizeof(tmp), "<%zu bytes>", value->bytes_value.len);
        return text_append(buf, size, pos, tmp);
    case AM_PB_VALUE(ARRAY_VALUE): {
        pos = text_append(buf, size, pos, "[");
        const am_pb_arrayvalue_t *arr = value->array_value;
        for (size_t i = 0; arr != NULL && i < arr->n_values; i++) {
            if (i > 0) {
                pos = text_append(buf, size, pos, ",");
            }
            pos = value_text(arr->values[i], buf, size, pos, depth + 1);
        }
        return text_append(buf, size, pos, "]");
    }
    case AM_PB_VALUE(KVLIST_VALUE): {
        pos = text_append(buf, size, pos, "{");
        const am_pb_kvlist_t *list = value->kvlist_value;
        for (size_t i = 0; list != NULL && i < list->n_values; i++) {
            if (i > 0) {
                pos = text_append(buf, size, pos, ",");
            }
            if (list->values[i] != NULL) {
                pos = text_append(buf, size, pos, list->values[i]->key);
                pos = text_append(buf, size, pos, "=");
                pos = value_text(list->values[i]->value, buf, size, pos, depth + 1);
            }
        }
        return text_append(buf, size, pos, "}");
    }
    default:
        return text_append(buf, size, pos, "");
    }
}

const char *am_anyvalue_to_text(const am_pb_anyvalue_t *value, char *buf, size_t size)
{
    if (size == 0) {
        return buf;
    }
    buf[0] = '\0';
    value_text(value, buf, size, 0, 0);
    return buf;
}

const char *am_hex(const uint8_t *bytes, size_t len, char *buf)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        buf[2 * i] = digits[bytes[i] >> 4];
        buf[2 * i + 1] = digits[bytes[i] & 15];
    }
    buf[2 * len] = '\0';
    return buf;
}
