/*
 * am_attr.h - reading and writing OTLP attributes (KeyValue arrays).
 *
 * Reads never allocate.  Writes replace the value of an existing key or grow
 * the array; new memory comes from the given arena, so the span must belong
 * to a batch that owns (a reference to) that arena.  Keys passed to the
 * setters must be string literals or otherwise outlive the arena: they are
 * stored by pointer, not copied.  String values ARE copied into the arena.
 */
#ifndef AM_ATTR_H
#define AM_ATTR_H

#include "am_arena.h"
#include "am_otlp.h"

/* The value of `key`, or NULL.  Linear scan: attribute lists are short. */
const am_pb_anyvalue_t *am_attr_find(am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                                     const char *key);

/* Typed reads: true when present with a usable value.  get_str accepts only
 * non-empty strings ("first non-empty wins", ARCHITECTURE.md §5).  get_int
 * accepts int, integral double and decimal strings; get_double accepts int,
 * double and numeric strings. */
bool am_attr_get_str(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                     const char **out);
bool am_attr_get_int(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                     int64_t *out);
bool am_attr_get_double(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *key,
                        double *out);

/* The first key of `keys` (NULL-terminated) present as a non-empty string on
 * the span, then on the resource (span attributes win over resource ones). */
const char *am_attr_first_str(const am_pb_span_t *span, const am_pb_resource_t *resource,
                              const char *const *keys);
bool am_attr_first_int(const am_pb_span_t *span, const am_pb_resource_t *resource,
                       const char *const *keys, int64_t *out);

/* Faster lookups on the span being processed.  Between
 * am_attr_scope_begin(span, other, resource) and am_attr_scope_end(), on the
 * calling thread, every read above (and the setters) on the attribute array
 * of `span`, `other` (e.g. its parent) or `resource` uses a small hash index
 * of that array, built on first use and rebuilt when the array changes,
 * instead of a linear scan with strcmp.  Results are exactly those of the
 * scan (the first attribute with the key wins).  Any argument may be NULL.
 * The span(s) and the resource must stay alive, and their attribute arrays
 * must change only through the setters below, until am_attr_scope_end().
 * A scope does not nest: begin replaces the thread's scope (keeping the index
 * of a resource both scopes name), end clears it. */
void am_attr_scope_begin(const am_pb_span_t *span, const am_pb_span_t *other,
                         const am_pb_resource_t *resource);

/* Which known keys (core/am_intern.h) an attribute array holds: a lookup of
 * a known key the array lacks is then one bit test, without touching the
 * KeyValues.  Zero-initialise; valid while `attrs` and `n` match the array
 * (checked on use).  A span reference (am_span_ref_t) carries one so that
 * every processor reuses what the first one computed. */
typedef struct am_attr_known {
    const void *attrs;
    size_t n;
    uint64_t bits[4];
} am_attr_known_t;

/* am_attr_scope_begin() that keeps the known-key set of `span` in
 * *span_known (may be NULL), which must stay alive until the scope ends and
 * be written only by the thread that processes the span. */
void am_attr_scope_begin_known(const am_pb_span_t *span, am_attr_known_t *span_known,
                               const am_pb_span_t *other, const am_pb_resource_t *resource);
void am_attr_scope_end(void);

/* Setters on a span.  Return 0 or AM_ENOMEM. */
int am_span_set_str(am_arena_t *arena, am_pb_span_t *span, const char *key, const char *value);
int am_span_set_int(am_arena_t *arena, am_pb_span_t *span, const char *key, int64_t value);
int am_span_set_double(am_arena_t *arena, am_pb_span_t *span, const char *key, double value);
int am_span_set_bool(am_arena_t *arena, am_pb_span_t *span, const char *key, bool value);
/* Copy an AnyValue (shallow for nested arrays/maps: they are immutable). */
int am_span_set_value(am_arena_t *arena, am_pb_span_t *span, const char *key,
                      const am_pb_anyvalue_t *value);

/* Point every known attribute key of the request (resource, scope, span,
 * event and link attributes) at its interned copy (core/am_intern.h), so
 * lookups compare pointers.  For requests decoded by a path that copies
 * keys (JSON, protobuf-c); the old copies stay in their arena. */
void am_attr_intern_keys(am_pb_export_req_t *req);

/* Render an AnyValue as text into buf (strings verbatim, numbers, JSON-ish for
 * arrays); returns buf. Used by the debug exporter and log lines. */
const char *am_anyvalue_to_text(const am_pb_anyvalue_t *value, char *buf, size_t size);

/* Hex of an id (16 or 8 bytes); buf must hold 2*len+1. */
const char *am_hex(const uint8_t *bytes, size_t len, char *buf);

#endif
