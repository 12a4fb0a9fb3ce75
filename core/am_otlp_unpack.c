/*
 * am_otlp_unpack.c - OTLP ExportTraceServiceRequest wire bytes into
 * protobuf-c's structs, in one arena allocation.
 *
 * Why hand-written, for one message only.  protobuf-c stays agentmeter's
 * protobuf library: it encodes everything and decodes every other message.
 * But the cost pipeline holds decoded spans for seconds (tracetree waits for
 * whole traces, sessions and budgets look back), so bytes per buffered span
 * is a product target (issue 8: at most 1.5 KiB per buffered span), and
 * protobuf-c's generic unpack spends ~2,200-2,400 arena bytes on a 500-byte
 * span: ~45 separate allocations, each padded to the arena's alignment, a
 * private copy of every attribute key and string, and ~500 bytes of
 * temporary "scanned member" slabs that it frees, which a bump arena cannot
 * take back.  This decoder builds the very same structs, so every processor,
 * exporter and protobuf-c's own pack keep working on them unchanged, in a
 * little over half the memory and less CPU.
 *
 * How.  Two walks over the bytes and one allocation:
 *   1. measure: walk the whole tree, validating everything protobuf-c would
 *      (tags, wire types, lengths, varints) and adding up the exact bytes of
 *      the result: structs and pointer arrays (multiples of 8) in one sum,
 *      string and bytes payloads (unaligned) in another.  Shapes we do not
 *      reproduce exactly stop the walk with AM_ENOTSUP (see below) before
 *      anything is allocated, so falling back to protobuf-c wastes nothing.
 *      The walk also writes a "tape": each message's repeated-field counts
 *      and, for each string, what the string table (below) decided.
 *   2. one am_arena_alloc() of exactly that size: structs are carved from
 *      its front, strings from the region after them.  Nothing is padded,
 *      and a KeyValue is always immediately followed by its AnyValue.
 *   3. build: walk again, reading the tape: pointer arrays get their exact
 *      counts up front, strings are copied (or shared) as decided.
 * The build walk re-checks bounds and wire types as it reads and never
 * carves beyond the measured block, so a disagreement between the walks (a
 * bug) can only make it give up with AM_ENOTSUP (protobuf-c then decodes),
 * never write out of bounds.
 *
 * Strings.  Agent traffic repeats most of its strings (operation names,
 * models, providers, tool names, trace and parent ids), so one request's
 * identical strings share one copy (~110 bytes per span on loadgen traffic),
 * and attribute keys found in the intern table (am_intern.h) are the
 * interned pointers, looked up once per distinct key per request.  The
 * string table maps wire slices to slots; it has a fixed size per call and
 * bounded probing, and a string that finds no slot gets its own copy, so
 * hostile input can neither make it grow nor make lookups quadratic.
 *
 * Equivalence with protobuf-c 1.4 (tests/unit/core/test_otlp_unpack.c and
 * tests/fuzz/fuzz_otlp_unpack.c check it by packing both results): when we
 * return 0, protobuf-c accepts the same bytes and packs our result to the
 * same bytes.  What that takes, from protobuf-c's unpack:
 *   - tags of at most 5 bytes, varints of at most 10, length prefixes of at
 *     most 5; 32-bit fields and enums keep the low 32 bits of a longer
 *     varint; a bool is true when any payload bit of its varint is set;
 *   - a scalar or string given twice: the last one wins (as here);
 *   - a present but empty sub-message is an allocated, empty struct;
 *   - empty bytes are {0, NULL}; an empty string is never packed, so we use
 *     protobuf_c_empty_string as for an absent one, except in AnyValue's
 *     oneof: protobuf-c packs a set string_value unless it is the field's
 *     default (protobuf_c_empty_string), so an empty string_value gets a
 *     real "" in the arena, as protobuf-c's unpack gives it;
 *   - UTF-8 is not validated (protobuf-c does not either); strings are
 *     copied and NUL-terminated as they are (an embedded NUL included).
 * Left to protobuf-c (AM_ENOTSUP): unknown fields (it keeps them), a
 * singular message field given twice (it merges them), an AnyValue with two
 * value fields (oneof replacement), a bool not sent as a varint (protobuf-c
 * reads any wire type as a bool), inputs of 4 GiB or more.
 * Refused although protobuf-c would accept (AM_EINVAL): AnyValues nested
 * deeper than AM_OTLP_UNPACK_MAX_DEPTH.
 */
#include "am_otlp_unpack.h"

#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "am_intern.h"

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* ---- wire format ----------------------------------------------------- */

enum {
    WIRE_VARINT = 0,
    WIRE_FIXED64 = 1,
    WIRE_LEN = 2,
    WIRE_FIXED32 = 5,
};

/* Locals of this type are declared zeroed: at -O3 gcc cannot prove that
 * read_field() sets every member before use (-Wmaybe-uninitialized). */
typedef struct wire_field {
    uint32_t number;
    uint32_t wire_type;
    uint64_t value;      /* varint, fixed32 or fixed64 */
    bool any_bits;       /* a varint with any payload bit set (protobuf-c's bool) */
    const uint8_t *data; /* WIRE_LEN payload */
    size_t len;
} wire_field_t;

/* A varint of at most max_bytes bytes; false when it is longer or runs past
 * the end.  Bits beyond 64 are dropped, as protobuf-c does. */
static bool read_varint(const uint8_t **pp, const uint8_t *end, unsigned max_bytes, uint64_t *value,
                        bool *any_bits)
{
    const uint8_t *p = *pp;
    uint64_t v = 0;
    unsigned bits = 0;
    for (unsigned i = 0; i < max_bytes; i++) {
        if (p >= end) {
            return false;
        }
        uint8_t byte = *p++;
        v |= (uint64_t)(byte & 0x7f) << (7 * i);
        bits |= byte & 0x7f;
        if ((byte & 0x80) == 0) {
            *pp = p;
            *value = v;
            *any_bits = bits != 0;
            return true;
        }
    }
    return false;
}

static inline uint64_t load_le(const uint8_t *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

/* The field starting at *pp (which must be < end): 0 with *pp past it, or
 * AM_EINVAL where protobuf-c's scan fails too. */
static ALWAYS_INLINE int read_field(const uint8_t **pp, const uint8_t *end, wire_field_t *f)
{
    const uint8_t *p = *pp;
    uint64_t tag;
    bool ignored;
    if (*p < 0x80) {
        tag = *p++;
    } else if (!read_varint(&p, end, 5, &tag, &ignored)) {
        return AM_EINVAL;
    }
    f->number = (uint32_t)(tag >> 3); /* 5 bytes carry at most 32 bits of number */
    f->wire_type = (uint32_t)(tag & 7);
    switch (f->wire_type) {
    case WIRE_LEN: {
        uint64_t len;
        if (p < end && *p < 0x80) {
            len = *p++;
        } else if (!read_varint(&p, end, 5, &len, &ignored)) {
            return AM_EINVAL;
        }
        if (len > (uint64_t)(end - p) || len > INT_MAX) {
            return AM_EINVAL;
        }
        f->data = p;
        f->len = (size_t)len;
        p += len;
        break;
    }
    case WIRE_VARINT:
        if (p < end && *p < 0x80) {
            f->value = *p;
            f->any_bits = *p != 0;
            p++;
        } else if (!read_varint(&p, end, 10, &f->value, &f->any_bits)) {
            return AM_EINVAL;
        }
        break;
    case WIRE_FIXED64:
        if (end - p < 8) {
            return AM_EINVAL;
        }
        f->value = load_le(p, 8);
        p += 8;
        break;
    case WIRE_FIXED32:
        if (end - p < 4) {
            return AM_EINVAL;
        }
        f->value = load_le(p, 4);
        p += 4;
        break;
    default: /* groups (3, 4) and 6, 7: protobuf-c refuses them too */
        return AM_EINVAL;
    }
    *pp = p;
    return 0;
}

#define EXPECT_WIRE(f, wt)                                                                         \
    do {                                                                                           \
        if ((f)->wire_type != (wt)) {                                                              \
            return AM_EINVAL;                                                                      \
        }                                                                                          \
    } while (0)

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int try_rc_ = (expr);                                                                      \
        if (try_rc_ != 0) {                                                                        \
            return try_rc_;                                                                        \
        }                                                                                          \
    } while (0)

/* ---- decoder state --------------------------------------------------- */

/* Struct sizes as carved: multiples of 8 so every struct stays aligned. */
#define SZ(type) ((sizeof(type) + 7) & ~(size_t)7)
#define PTRS(n) ((size_t)(n) * sizeof(void *))

enum { TEXT_KEY = 1, TEXT_STRING = 2, TEXT_BYTES = 3 };

/* A string table slot: a slice of the input by offset (0: free). */
typedef struct text_slot {
    uint32_t offset_plus1;
    uint32_t len;
    uint32_t tag; /* high hash bits | kind */
} text_slot_t;

#define TEXT_PROBES 16
#define TEXT_STACK_SLOTS 256
#define TEXT_MAX_SLOTS 65536
#define TAPE_STACK_ITEMS 1024

typedef struct unpack {
    const uint8_t *buf; /* the input: text slots hold offsets into it */
    /* string table: slots, and per slot what its text became (the copy or
     * the interned key; NULL until the build walk copies it) */
    text_slot_t *slots;
    const char **resolved;
    size_t mask;
    size_t used;
    size_t limit; /* no inserts beyond 3/4 full */
    /* tape: written by measure, read back in the same order by build */
    uint32_t *tape;
    size_t tape_len;
    size_t tape_cap;
    size_t tape_pos;
    bool tape_on_heap;
    bool out_of_memory;
    /* measure */
    size_t struct_bytes;
    size_t string_bytes;
    /* build: the two regions of the one allocation */
    uint8_t *struct_next;
    uint8_t *struct_end;
    uint8_t *string_next;
    uint8_t *string_end;
} unpack_t;

/* ---- tape ------------------------------------------------------------ */

/* Room for n more items: the index of the first, or SIZE_MAX when memory
 * ran out (measure then fails with AM_ENOMEM). */
static size_t tape_take(unpack_t *u, size_t n)
{
    if (u->tape_cap - u->tape_len < n) {
        if (u->out_of_memory) {
            return SIZE_MAX;
        }
        size_t cap = u->tape_cap * 2 + n;
        uint32_t *grown = am_realloc(u->tape_on_heap ? u->tape : NULL, cap * sizeof(uint32_t));
        if (grown == NULL) {
            u->out_of_memory = true;
            return SIZE_MAX;
        }
        if (!u->tape_on_heap) {
            memcpy(grown, u->tape, u->tape_len * sizeof(uint32_t));
        }
        u->tape = grown;
        u->tape_cap = cap;
        u->tape_on_heap = true;
    }
    size_t at = u->tape_len;
    u->tape_len += n;
    return at;
}

static inline void tape_set(unpack_t *u, size_t at, size_t value)
{
    if (at != SIZE_MAX) {
        u->tape[at] = (uint32_t)value; /* counts < input length < 4 GiB */
    }
}

static inline void tape_push(unpack_t *u, size_t value)
{
    tape_set(u, tape_take(u, 1), value);
}

/* The next item (0 past the end: the walks disagree, and the build fails
 * on a count or a bounds check). */
static inline size_t tape_next(unpack_t *u)
{
    return u->tape_pos < u->tape_len ? u->tape[u->tape_pos++] : 0;
}

/* ---- string table ---------------------------------------------------- */

static inline uint64_t text_hash(const uint8_t *p, size_t len, uint32_t kind)
{
    uint64_t h = ((uint64_t)len ^ ((uint64_t)kind << 32)) * 0x9e3779b97f4a7c15ull;
    while (len > 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        h = (h ^ word) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    if (len >= 4) {
        uint32_t head4;
        uint32_t tail4;
        memcpy(&head4, p, 4);
        memcpy(&tail4, p + len - 4, 4);
        tail = (uint64_t)head4 << 32 | tail4;
    } else if (len > 0) {
        tail = (uint64_t)p[0] << 16 | (uint64_t)p[len / 2] << 8 | p[len - 1];
    }
    h = (h ^ tail) * 0x94d049bb133111ebull;
    h ^= h >> 32;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 29);
}

/* One occurrence of a text during measure: records on the tape which slot
 * it shares (0: none, it gets its own copy) and returns the bytes it adds:
 * the first occurrence pays (unless it is an interned key), later ones
 * share it. */
static size_t text_measure(unpack_t *u, const uint8_t *data, size_t len, uint32_t kind)
{
    size_t cost = kind == TEXT_BYTES ? len : len + 1;
    uint64_t h = text_hash(data, len, kind);
    uint32_t tag = ((uint32_t)(h >> 32) & ~(uint32_t)3) | kind;
    uint32_t offset_plus1 = (uint32_t)(data - u->buf) + 1;
    size_t slot = (size_t)h & u->mask;
    for (unsigned probe = 0; probe < TEXT_PROBES; probe++, slot = (slot + 1) & u->mask) {
        text_slot_t *s = &u->slots[slot];
        if (s->offset_plus1 == 0) {
            if (u->used >= u->limit) {
                break;
            }
            s->offset_plus1 = offset_plus1;
            s->len = (uint32_t)len;
            s->tag = tag;
            u->used++;
            u->resolved[slot] = kind == TEXT_KEY ? am_intern((const char *)data, len) : NULL;
            tape_push(u, slot + 1);
            return u->resolved[slot] != NULL ? 0 : cost;
        }
        if (s->tag == tag && s->len == len &&
            memcmp(u->buf + s->offset_plus1 - 1, data, len) == 0) {
            tape_push(u, slot + 1);
            return 0;
        }
    }
    tape_push(u, 0);
    return cost;
}

/* A non-oneof string or a key: empty ones are protobuf_c_empty_string. */
static inline size_t string_cost(unpack_t *u, const wire_field_t *f, uint32_t kind)
{
    return f->len == 0 ? 0 : text_measure(u, f->data, f->len, kind);
}

static inline size_t bytes_cost(unpack_t *u, const wire_field_t *f)
{
    return f->len == 0 ? 0 : text_measure(u, f->data, f->len, TEXT_BYTES);
}

/* The build side of text_measure: the shared copy (made at its first use),
 * the interned key, or a copy of its own. */
static int text_build(unpack_t *u, const uint8_t *data, size_t len, uint32_t kind, void *out)
{
    size_t item = tape_next(u);
    if (item > u->mask + 1) {
        return AM_EINVAL;
    }
    const char *text = item != 0 ? u->resolved[item - 1] : NULL;
    if (text == NULL) {
        size_t size = kind == TEXT_BYTES ? len : len + 1;
        if ((size_t)(u->string_end - u->string_next) < size) {
            return AM_EINVAL;
        }
        uint8_t *copy = u->string_next;
        u->string_next += size;
        memcpy(copy, data, len);
        if (kind != TEXT_BYTES) {
            copy[len] = '\0';
        }
        text = (const char *)copy;
        if (item != 0) {
            u->resolved[item - 1] = text;
        }
    }
    memcpy(out, &text, sizeof(text));
    return 0;
}

static inline int copy_string(unpack_t *u, const wire_field_t *f, char **out)
{
    if (f->len == 0) {
        *out = (char *)protobuf_c_empty_string;
        return 0;
    }
    return text_build(u, f->data, f->len, TEXT_STRING, out);
}

static inline int copy_bytes(unpack_t *u, const wire_field_t *f, ProtobufCBinaryData *out)
{
    out->len = f->len;
    out->data = NULL;
    if (f->len == 0) {
        return 0;
    }
    return text_build(u, f->data, f->len, TEXT_BYTES, &out->data);
}

/* ---- carving the block ----------------------------------------------- */

static inline void *carve(unpack_t *u, size_t size)
{
    if ((size_t)(u->struct_end - u->struct_next) < size) {
        return NULL;
    }
    void *ptr = u->struct_next;
    u->struct_next += size;
    return ptr;
}

/* A pointer array of the next tape count's entries (NULL for none, as
 * protobuf-c); *limit gets the count. */
static inline int carve_ptrs(unpack_t *u, void *out, size_t *limit)
{
    size_t n = tape_next(u);
    void *array = NULL;
    if (n > 0) {
        array = carve(u, PTRS(n));
        if (array == NULL) {
            return AM_EINVAL;
        }
    }
    memcpy(out, &array, sizeof(array));
    *limit = n;
    return 0;
}

/* Append one element to a counted pointer array. */
#define APPEND(array, n, limit, elem)                                                              \
    do {                                                                                           \
        if ((n) >= (limit)) {                                                                      \
            return AM_EINVAL;                                                                      \
        }                                                                                          \
        (array)[(n)++] = (elem);                                                                   \
    } while (0)

/* An enum field holds the low 32 bits of its varint, whatever the value
 * (protobuf-c stores it as an int32; proto3 enums are open). */
_Static_assert(sizeof(Opentelemetry__Proto__Trace__V1__Span__SpanKind) == sizeof(int32_t) &&
                   sizeof(Opentelemetry__Proto__Trace__V1__Status__StatusCode) == sizeof(int32_t),
               "protobuf-c enums are int-sized");
static inline void store_enum(void *member, uint64_t value)
{
    uint32_t low = (uint32_t)value;
    memcpy(member, &low, sizeof(low));
}

/* ---- templates: the generated ..._INIT values ------------------------ */

typedef Opentelemetry__Proto__Common__V1__EntityRef am_pb_entity_ref_t;

static const am_pb_export_req_t req_init =
    OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
static const am_pb_resource_spans_t resource_spans_init =
    OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
static const am_pb_resource_t resource_init = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
static const am_pb_entity_ref_t entity_ref_init =
    OPENTELEMETRY__PROTO__COMMON__V1__ENTITY_REF__INIT;
static const am_pb_scope_spans_t scope_spans_init =
    OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
static const am_pb_scope_t scope_init =
    OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT;
static const am_pb_span_t span_init = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
static const am_pb_span_event_t event_init = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__EVENT__INIT;
static const am_pb_span_link_t link_init = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__LINK__INIT;
static const am_pb_status_t status_init = OPENTELEMETRY__PROTO__TRACE__V1__STATUS__INIT;
static const am_pb_keyvalue_t keyvalue_init = OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
static const am_pb_anyvalue_t anyvalue_init = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
static const am_pb_arrayvalue_t arrayvalue_init =
    OPENTELEMETRY__PROTO__COMMON__V1__ARRAY_VALUE__INIT;
static const am_pb_kvlist_t kvlist_init = OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE_LIST__INIT;

/* ---- pass 1: validate, measure, write the tape ----------------------- *
 * Every measure_X mirrors build_X below: the same fields in the same order
 * take the same tape items (counts at the start of a message, one item per
 * non-empty string, bytes or key, and per string_value). */

static int measure_anyvalue(unpack_t *u, const uint8_t *p, const uint8_t *end, uint32_t depth);

/* A KeyValue inside an AnyValue at `depth` (0 for the attributes of a span,
 * resource, ...): its own value is at depth + 1. */
static int measure_keyvalue(unpack_t *u, const uint8_t *p, const uint8_t *end, uint32_t depth)
{
    bool has_value = false;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_keyvalue_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_KEY);
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_LEN);
            if (has_value) {
                return AM_ENOTSUP; /* protobuf-c merges the two */
            }
            has_value = true;
            u->struct_bytes += SZ(am_pb_anyvalue_t);
            TRY(measure_anyvalue(u, f.data, f.data + f.len, depth + 1));
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    return 0;
}

/* One element of a repeated KeyValue field (attributes, kvlist values). */
static inline int measure_attribute(unpack_t *u, const wire_field_t *f, uint32_t depth)
{
    EXPECT_WIRE(f, WIRE_LEN);
    u->struct_bytes += PTRS(1);
    return measure_keyvalue(u, f->data, f->data + f->len, depth);
}

static int measure_array(unpack_t *u, const uint8_t *p, const uint8_t *end, uint32_t depth)
{
    size_t counts = tape_take(u, 1);
    size_t n_values = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_arrayvalue_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        if (f.number != 1) {
            return AM_ENOTSUP;
        }
        EXPECT_WIRE(&f, WIRE_LEN);
        n_values++;
        u->struct_bytes += PTRS(1) + SZ(am_pb_anyvalue_t);
        TRY(measure_anyvalue(u, f.data, f.data + f.len, depth + 1));
    }
    tape_set(u, counts, n_values);
    return 0;
}

static int measure_kvlist(unpack_t *u, const uint8_t *p, const uint8_t *end, uint32_t depth)
{
    size_t counts = tape_take(u, 1);
    size_t n_values = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_kvlist_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        if (f.number != 1) {
            return AM_ENOTSUP;
        }
        n_values++;
        TRY(measure_attribute(u, &f, depth));
    }
    tape_set(u, counts, n_values);
    return 0;
}

static int measure_anyvalue(unpack_t *u, const uint8_t *p, const uint8_t *end, uint32_t depth)
{
    if (depth > AM_OTLP_UNPACK_MAX_DEPTH) {
        return AM_EINVAL;
    }
    bool has_value = false;
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        if (f.number >= 1 && f.number <= 7) {
            if (has_value) {
                return AM_ENOTSUP; /* a oneof given twice */
            }
            has_value = true;
        }
        switch (f.number) {
        case 1: /* string_value: even "" is a copy (see top) */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += text_measure(u, f.data, f.len, TEXT_STRING);
            break;
        case 2: /* bool_value */
            if (f.wire_type != WIRE_VARINT) {
                return AM_ENOTSUP;
            }
            break;
        case 3: /* int_value */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        case 4: /* double_value */
            EXPECT_WIRE(&f, WIRE_FIXED64);
            break;
        case 5: /* array_value */
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(measure_array(u, f.data, f.data + f.len, depth));
            break;
        case 6: /* kvlist_value */
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(measure_kvlist(u, f.data, f.data + f.len, depth));
            break;
        case 7: /* bytes_value */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += bytes_cost(u, &f);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    return 0;
}

static int measure_entity_ref(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 2);
    size_t n_id_keys = 0;
    size_t n_description_keys = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_entity_ref_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* schema_url */
        case 2: /* type */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        case 3: /* id_keys */
        case 4: /* description_keys */
            EXPECT_WIRE(&f, WIRE_LEN);
            if (f.number == 3) {
                n_id_keys++;
            } else {
                n_description_keys++;
            }
            u->struct_bytes += PTRS(1);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_id_keys);
    tape_set(u, counts == SIZE_MAX ? counts : counts + 1, n_description_keys);
    return 0;
}

static int measure_resource(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 2);
    size_t n_attributes = 0;
    size_t n_entity_refs = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_resource_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* attributes */
            n_attributes++;
            TRY(measure_attribute(u, &f, 0));
            break;
        case 2: /* dropped_attributes_count */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        case 3: /* entity_refs */
            EXPECT_WIRE(&f, WIRE_LEN);
            n_entity_refs++;
            u->struct_bytes += PTRS(1);
            TRY(measure_entity_ref(u, f.data, f.data + f.len));
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_attributes);
    tape_set(u, counts == SIZE_MAX ? counts : counts + 1, n_entity_refs);
    return 0;
}

static int measure_scope(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 1);
    size_t n_attributes = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_scope_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* name */
        case 2: /* version */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        case 3: /* attributes */
            n_attributes++;
            TRY(measure_attribute(u, &f, 0));
            break;
        case 4: /* dropped_attributes_count */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_attributes);
    return 0;
}

static int measure_event(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 1);
    size_t n_attributes = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_span_event_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* time_unix_nano */
            EXPECT_WIRE(&f, WIRE_FIXED64);
            break;
        case 2: /* name */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        case 3: /* attributes */
            n_attributes++;
            TRY(measure_attribute(u, &f, 0));
            break;
        case 4: /* dropped_attributes_count */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_attributes);
    return 0;
}

static int measure_link(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 1);
    size_t n_attributes = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_span_link_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* trace_id */
        case 2: /* span_id */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += bytes_cost(u, &f);
            break;
        case 3: /* trace_state */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        case 4: /* attributes */
            n_attributes++;
            TRY(measure_attribute(u, &f, 0));
            break;
        case 5: /* dropped_attributes_count */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        case 6: /* flags */
            EXPECT_WIRE(&f, WIRE_FIXED32);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_attributes);
    return 0;
}

static int measure_status(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_status_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 2: /* message */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        case 3: /* code */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        default: /* 1 is reserved: unknown */
            return AM_ENOTSUP;
        }
    }
    return 0;
}

static int measure_span(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 3);
    size_t n_attributes = 0;
    size_t n_events = 0;
    size_t n_links = 0;
    bool has_status = false;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_span_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* trace_id */
        case 2: /* span_id */
        case 4: /* parent_span_id */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += bytes_cost(u, &f);
            break;
        case 3: /* trace_state */
        case 5: /* name */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        case 6:  /* kind */
        case 10: /* dropped_attributes_count */
        case 12: /* dropped_events_count */
        case 14: /* dropped_links_count */
            EXPECT_WIRE(&f, WIRE_VARINT);
            break;
        case 7: /* start_time_unix_nano */
        case 8: /* end_time_unix_nano */
            EXPECT_WIRE(&f, WIRE_FIXED64);
            break;
        case 9: /* attributes */
            n_attributes++;
            TRY(measure_attribute(u, &f, 0));
            break;
        case 11: /* events */
            EXPECT_WIRE(&f, WIRE_LEN);
            n_events++;
            u->struct_bytes += PTRS(1);
            TRY(measure_event(u, f.data, f.data + f.len));
            break;
        case 13: /* links */
            EXPECT_WIRE(&f, WIRE_LEN);
            n_links++;
            u->struct_bytes += PTRS(1);
            TRY(measure_link(u, f.data, f.data + f.len));
            break;
        case 15: /* status */
            EXPECT_WIRE(&f, WIRE_LEN);
            if (has_status) {
                return AM_ENOTSUP;
            }
            has_status = true;
            TRY(measure_status(u, f.data, f.data + f.len));
            break;
        case 16: /* flags */
            EXPECT_WIRE(&f, WIRE_FIXED32);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    if (counts != SIZE_MAX) {
        tape_set(u, counts, n_attributes);
        tape_set(u, counts + 1, n_events);
        tape_set(u, counts + 2, n_links);
    }
    return 0;
}

static int measure_scope_spans(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 1);
    size_t n_spans = 0;
    bool has_scope = false;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_scope_spans_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* scope */
            EXPECT_WIRE(&f, WIRE_LEN);
            if (has_scope) {
                return AM_ENOTSUP;
            }
            has_scope = true;
            TRY(measure_scope(u, f.data, f.data + f.len));
            break;
        case 2: /* spans */
            EXPECT_WIRE(&f, WIRE_LEN);
            n_spans++;
            u->struct_bytes += PTRS(1);
            TRY(measure_span(u, f.data, f.data + f.len));
            break;
        case 3: /* schema_url */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_spans);
    return 0;
}

static int measure_resource_spans(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 1);
    size_t n_scope_spans = 0;
    bool has_resource = false;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_resource_spans_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1: /* resource */
            EXPECT_WIRE(&f, WIRE_LEN);
            if (has_resource) {
                return AM_ENOTSUP;
            }
            has_resource = true;
            TRY(measure_resource(u, f.data, f.data + f.len));
            break;
        case 2: /* scope_spans */
            EXPECT_WIRE(&f, WIRE_LEN);
            n_scope_spans++;
            u->struct_bytes += PTRS(1);
            TRY(measure_scope_spans(u, f.data, f.data + f.len));
            break;
        case 3: /* schema_url */
            EXPECT_WIRE(&f, WIRE_LEN);
            u->string_bytes += string_cost(u, &f, TEXT_STRING);
            break;
        default:
            return AM_ENOTSUP;
        }
    }
    tape_set(u, counts, n_scope_spans);
    return 0;
}

static int measure_request(unpack_t *u, const uint8_t *p, const uint8_t *end)
{
    size_t counts = tape_take(u, 1);
    size_t n_resource_spans = 0;
    wire_field_t f = {0};
    u->struct_bytes += SZ(am_pb_export_req_t);
    while (p < end) {
        TRY(read_field(&p, end, &f));
        if (f.number != 1) {
            return AM_ENOTSUP;
        }
        EXPECT_WIRE(&f, WIRE_LEN);
        n_resource_spans++;
        u->struct_bytes += PTRS(1);
        TRY(measure_resource_spans(u, f.data, f.data + f.len));
    }
    tape_set(u, counts, n_resource_spans);
    return 0;
}

/* ---- pass 3: build --------------------------------------------------- *
 * The input has been validated by the measure walk: wire types are still
 * checked (cheaply) so that a bug can never read a field as what it is not,
 * but duplicates and unknown fields are not looked for again. */

static int build_anyvalue(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_anyvalue_t *av);

static int build_keyvalue(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_keyvalue_t **out)
{
    am_pb_keyvalue_t *kv = carve(u, SZ(am_pb_keyvalue_t));
    if (kv == NULL) {
        return AM_EINVAL;
    }
    *kv = keyvalue_init;
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        if (f.number == 1) {
            EXPECT_WIRE(&f, WIRE_LEN);
            if (f.len == 0) {
                kv->key = (char *)protobuf_c_empty_string;
            } else {
                TRY(text_build(u, f.data, f.len, TEXT_KEY, &kv->key));
            }
        } else if (f.number == 2) {
            EXPECT_WIRE(&f, WIRE_LEN);
            /* Nothing else is carved from the struct region while a
             * KeyValue's own fields are read, so the value lands right
             * behind the KeyValue. */
            am_pb_anyvalue_t *av = carve(u, SZ(am_pb_anyvalue_t));
            if (av == NULL) {
                return AM_EINVAL;
            }
            *av = anyvalue_init;
            kv->value = av;
            TRY(build_anyvalue(u, f.data, f.data + f.len, av));
        }
    }
    *out = kv;
    return 0;
}

/* One element of a repeated KeyValue field: `*n` of `limit` filled so far. */
static inline int build_attribute(unpack_t *u, const wire_field_t *f, am_pb_keyvalue_t **array,
                                  size_t *n, size_t limit)
{
    EXPECT_WIRE(f, WIRE_LEN);
    if (*n >= limit) {
        return AM_EINVAL;
    }
    TRY(build_keyvalue(u, f->data, f->data + f->len, &array[*n]));
    (*n)++;
    return 0;
}

static int build_array(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_arrayvalue_t **out)
{
    am_pb_arrayvalue_t *array = carve(u, SZ(am_pb_arrayvalue_t));
    if (array == NULL) {
        return AM_EINVAL;
    }
    *array = arrayvalue_init;
    size_t limit;
    TRY(carve_ptrs(u, &array->values, &limit));
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        EXPECT_WIRE(&f, WIRE_LEN);
        am_pb_anyvalue_t *av = carve(u, SZ(am_pb_anyvalue_t));
        if (av == NULL) {
            return AM_EINVAL;
        }
        *av = anyvalue_init;
        APPEND(array->values, array->n_values, limit, av);
        TRY(build_anyvalue(u, f.data, f.data + f.len, av));
    }
    *out = array;
    return 0;
}

static int build_kvlist(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_kvlist_t **out)
{
    am_pb_kvlist_t *list = carve(u, SZ(am_pb_kvlist_t));
    if (list == NULL) {
        return AM_EINVAL;
    }
    *list = kvlist_init;
    size_t limit;
    TRY(carve_ptrs(u, &list->values, &limit));
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        TRY(build_attribute(u, &f, list->values, &list->n_values, limit));
    }
    *out = list;
    return 0;
}

static int build_anyvalue(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_anyvalue_t *av)
{
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(text_build(u, f.data, f.len, TEXT_STRING, &av->string_value));
            av->value_case = AM_PB_VALUE(STRING_VALUE);
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_VARINT);
            av->bool_value = f.any_bits;
            av->value_case = AM_PB_VALUE(BOOL_VALUE);
            break;
        case 3:
            EXPECT_WIRE(&f, WIRE_VARINT);
            av->int_value = (int64_t)f.value;
            av->value_case = AM_PB_VALUE(INT_VALUE);
            break;
        case 4:
            EXPECT_WIRE(&f, WIRE_FIXED64);
            memcpy(&av->double_value, &f.value, sizeof(av->double_value));
            av->value_case = AM_PB_VALUE(DOUBLE_VALUE);
            break;
        case 5:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(build_array(u, f.data, f.data + f.len, &av->array_value));
            av->value_case = AM_PB_VALUE(ARRAY_VALUE);
            break;
        case 6:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(build_kvlist(u, f.data, f.data + f.len, &av->kvlist_value));
            av->value_case = AM_PB_VALUE(KVLIST_VALUE);
            break;
        case 7:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_bytes(u, &f, &av->bytes_value));
            av->value_case = AM_PB_VALUE(BYTES_VALUE);
            break;
        default:
            return AM_EINVAL;
        }
    }
    return 0;
}

static int build_entity_ref(unpack_t *u, const uint8_t *p, const uint8_t *end,
                            am_pb_entity_ref_t **out)
{
    am_pb_entity_ref_t *ref = carve(u, SZ(am_pb_entity_ref_t));
    if (ref == NULL) {
        return AM_EINVAL;
    }
    *ref = entity_ref_init;
    size_t id_limit;
    size_t description_limit;
    TRY(carve_ptrs(u, &ref->id_keys, &id_limit));
    TRY(carve_ptrs(u, &ref->description_keys, &description_limit));
    wire_field_t f = {0};
    char *str;
    while (p < end) {
        TRY(read_field(&p, end, &f));
        EXPECT_WIRE(&f, WIRE_LEN);
        switch (f.number) {
        case 1:
            TRY(copy_string(u, &f, &ref->schema_url));
            break;
        case 2:
            TRY(copy_string(u, &f, &ref->type));
            break;
        case 3:
            TRY(copy_string(u, &f, &str));
            APPEND(ref->id_keys, ref->n_id_keys, id_limit, str);
            break;
        case 4:
            TRY(copy_string(u, &f, &str));
            APPEND(ref->description_keys, ref->n_description_keys, description_limit, str);
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = ref;
    return 0;
}

static int build_resource(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_resource_t **out)
{
    am_pb_resource_t *res = carve(u, SZ(am_pb_resource_t));
    if (res == NULL) {
        return AM_EINVAL;
    }
    *res = resource_init;
    size_t attr_limit;
    size_t ref_limit;
    TRY(carve_ptrs(u, &res->attributes, &attr_limit));
    TRY(carve_ptrs(u, &res->entity_refs, &ref_limit));
    wire_field_t f = {0};
    am_pb_entity_ref_t *ref;
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            TRY(build_attribute(u, &f, res->attributes, &res->n_attributes, attr_limit));
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_VARINT);
            res->dropped_attributes_count = (uint32_t)f.value;
            break;
        case 3:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(build_entity_ref(u, f.data, f.data + f.len, &ref));
            APPEND(res->entity_refs, res->n_entity_refs, ref_limit, ref);
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = res;
    return 0;
}

static int build_scope(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_scope_t **out)
{
    am_pb_scope_t *scope = carve(u, SZ(am_pb_scope_t));
    if (scope == NULL) {
        return AM_EINVAL;
    }
    *scope = scope_init;
    size_t attr_limit;
    TRY(carve_ptrs(u, &scope->attributes, &attr_limit));
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &scope->name));
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &scope->version));
            break;
        case 3:
            TRY(build_attribute(u, &f, scope->attributes, &scope->n_attributes, attr_limit));
            break;
        case 4:
            EXPECT_WIRE(&f, WIRE_VARINT);
            scope->dropped_attributes_count = (uint32_t)f.value;
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = scope;
    return 0;
}

static int build_event(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_span_event_t **out)
{
    am_pb_span_event_t *event = carve(u, SZ(am_pb_span_event_t));
    if (event == NULL) {
        return AM_EINVAL;
    }
    *event = event_init;
    size_t attr_limit;
    TRY(carve_ptrs(u, &event->attributes, &attr_limit));
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            EXPECT_WIRE(&f, WIRE_FIXED64);
            event->time_unix_nano = f.value;
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &event->name));
            break;
        case 3:
            TRY(build_attribute(u, &f, event->attributes, &event->n_attributes, attr_limit));
            break;
        case 4:
            EXPECT_WIRE(&f, WIRE_VARINT);
            event->dropped_attributes_count = (uint32_t)f.value;
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = event;
    return 0;
}

static int build_link(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_span_link_t **out)
{
    am_pb_span_link_t *link = carve(u, SZ(am_pb_span_link_t));
    if (link == NULL) {
        return AM_EINVAL;
    }
    *link = link_init;
    size_t attr_limit;
    TRY(carve_ptrs(u, &link->attributes, &attr_limit));
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_bytes(u, &f, &link->trace_id));
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_bytes(u, &f, &link->span_id));
            break;
        case 3:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &link->trace_state));
            break;
        case 4:
            TRY(build_attribute(u, &f, link->attributes, &link->n_attributes, attr_limit));
            break;
        case 5:
            EXPECT_WIRE(&f, WIRE_VARINT);
            link->dropped_attributes_count = (uint32_t)f.value;
            break;
        case 6:
            EXPECT_WIRE(&f, WIRE_FIXED32);
            link->flags = (uint32_t)f.value;
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = link;
    return 0;
}

static int build_status(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_status_t **out)
{
    am_pb_status_t *status = carve(u, SZ(am_pb_status_t));
    if (status == NULL) {
        return AM_EINVAL;
    }
    *status = status_init;
    wire_field_t f = {0};
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 2:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &status->message));
            break;
        case 3:
            EXPECT_WIRE(&f, WIRE_VARINT);
            store_enum(&status->code, f.value);
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = status;
    return 0;
}

static int build_span(unpack_t *u, const uint8_t *p, const uint8_t *end, am_pb_span_t **out)
{
    am_pb_span_t *span = carve(u, SZ(am_pb_span_t));
    if (span == NULL) {
        return AM_EINVAL;
    }
    *span = span_init;
    size_t attr_limit;
    size_t event_limit;
    size_t link_limit;
    TRY(carve_ptrs(u, &span->attributes, &attr_limit));
    TRY(carve_ptrs(u, &span->events, &event_limit));
    TRY(carve_ptrs(u, &span->links, &link_limit));
    wire_field_t f = {0};
    am_pb_span_event_t *event;
    am_pb_span_link_t *link;
    while (p < end) {
        TRY(read_field(&p, end, &f));
        switch (f.number) {
        case 1:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_bytes(u, &f, &span->trace_id));
            break;
        case 2:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_bytes(u, &f, &span->span_id));
            break;
        case 3:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &span->trace_state));
            break;
        case 4:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_bytes(u, &f, &span->parent_span_id));
            break;
        case 5:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(copy_string(u, &f, &span->name));
            break;
        case 6:
            EXPECT_WIRE(&f, WIRE_VARINT);
            store_enum(&span->kind, f.value);
            break;
        case 7:
            EXPECT_WIRE(&f, WIRE_FIXED64);
            span->start_time_unix_nano = f.value;
            break;
        case 8:
            EXPECT_WIRE(&f, WIRE_FIXED64);
            span->end_time_unix_nano = f.value;
            break;
        case 9:
            TRY(build_attribute(u, &f, span->attributes, &span->n_attributes, attr_limit));
            break;
        case 10:
            EXPECT_WIRE(&f, WIRE_VARINT);
            span->dropped_attributes_count = (uint32_t)f.value;
            break;
        case 11:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(build_event(u, f.data, f.data + f.len, &event));
            APPEND(span->events, span->n_events, event_limit, event);
            break;
        case 12:
            EXPECT_WIRE(&f, WIRE_VARINT);
            span->dropped_events_count = (uint32_t)f.value;
            break;
        case 13:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(build_link(u, f.data, f.data + f.len, &link));
            APPEND(span->links, span->n_links, link_limit, link);
            break;
        case 14:
            EXPECT_WIRE(&f, WIRE_VARINT);
            span->dropped_links_count = (uint32_t)f.value;
            break;
        case 15:
            EXPECT_WIRE(&f, WIRE_LEN);
            TRY(build_status(u, f.data, f.data + f.len, &span->status));
            break;
        case 16:
            EXPECT_WIRE(&f, WIRE_FIXED32);
            span->flags = (uint32_t)f.value;
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = span;
    return 0;
}

static int build_scope_spans(unpack_t *u, const uint8_t *p, const uint8_t *end,
                             am_pb_scope_spans_t **out)
{
    am_pb_scope_spans_t *ss = carve(u, SZ(am_pb_scope_spans_t));
    if (ss == NULL) {
        return AM_EINVAL;
    }
    *ss = scope_spans_init;
    size_t span_limit;
    TRY(carve_ptrs(u, &ss->spans, &span_limit));
    wire_field_t f = {0};
    am_pb_span_t *span;
    while (p < end) {
        TRY(read_field(&p, end, &f));
        EXPECT_WIRE(&f, WIRE_LEN);
        switch (f.number) {
        case 1:
            TRY(build_scope(u, f.data, f.data + f.len, &ss->scope));
            break;
        case 2:
            TRY(build_span(u, f.data, f.data + f.len, &span));
            APPEND(ss->spans, ss->n_spans, span_limit, span);
            break;
        case 3:
            TRY(copy_string(u, &f, &ss->schema_url));
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = ss;
    return 0;
}

static int build_resource_spans(unpack_t *u, const uint8_t *p, const uint8_t *end,
                                am_pb_resource_spans_t **out)
{
    am_pb_resource_spans_t *rs = carve(u, SZ(am_pb_resource_spans_t));
    if (rs == NULL) {
        return AM_EINVAL;
    }
    *rs = resource_spans_init;
    size_t ss_limit;
    TRY(carve_ptrs(u, &rs->scope_spans, &ss_limit));
    wire_field_t f = {0};
    am_pb_scope_spans_t *ss;
    while (p < end) {
        TRY(read_field(&p, end, &f));
        EXPECT_WIRE(&f, WIRE_LEN);
        switch (f.number) {
        case 1:
            TRY(build_resource(u, f.data, f.data + f.len, &rs->resource));
            break;
        case 2:
            TRY(build_scope_spans(u, f.data, f.data + f.len, &ss));
            APPEND(rs->scope_spans, rs->n_scope_spans, ss_limit, ss);
            break;
        case 3:
            TRY(copy_string(u, &f, &rs->schema_url));
            break;
        default:
            return AM_EINVAL;
        }
    }
    *out = rs;
    return 0;
}

static int build_request(unpack_t *u, const uint8_t *p, const uint8_t *end,
                         am_pb_export_req_t **out)
{
    am_pb_export_req_t *req = carve(u, SZ(am_pb_export_req_t));
    if (req == NULL) {
        return AM_EINVAL;
    }
    *req = req_init;
    size_t rs_limit;
    TRY(carve_ptrs(u, &req->resource_spans, &rs_limit));
    wire_field_t f = {0};
    am_pb_resource_spans_t *rs;
    while (p < end) {
        TRY(read_field(&p, end, &f));
        EXPECT_WIRE(&f, WIRE_LEN);
        TRY(build_resource_spans(u, f.data, f.data + f.len, &rs));
        APPEND(req->resource_spans, req->n_resource_spans, rs_limit, rs);
    }
    *out = req;
    return 0;
}

/* ---- entry ----------------------------------------------------------- */

/* Measure, allocate, build: 0, or what failed. */
static int unpack_run(unpack_t *u, am_arena_t *arena, const uint8_t *buf, size_t len,
                      am_pb_export_req_t **out)
{
    TRY(measure_request(u, buf, buf + len));
    if (u->out_of_memory) {
        return AM_ENOMEM;
    }
    size_t total = u->struct_bytes + u->string_bytes;
    uint8_t *block = am_arena_alloc(arena, total);
    if (block == NULL) {
        return AM_ENOMEM;
    }
    u->struct_next = block;
    u->struct_end = block + u->struct_bytes;
    u->string_next = u->struct_end;
    u->string_end = block + total;
    am_pb_export_req_t *req = NULL;
    int rc = build_request(u, buf, buf + len, &req);
    if (rc != 0 || u->struct_next != u->struct_end || u->string_next != u->string_end ||
        u->tape_pos != u->tape_len) {
        /* The walks disagree: a bug, not the client's.  Let protobuf-c
         * decide (the fuzz target flags any allocation before ENOTSUP). */
        return AM_ENOTSUP;
    }
    *out = req;
    return 0;
}

int am_otlp_unpack_traces(am_arena_t *arena, const uint8_t *buf, size_t len,
                          am_pb_export_req_t **out)
{
    static const uint8_t empty[1];
    *out = NULL;
    if (buf == NULL) {
        if (len > 0) {
            return AM_EINVAL;
        }
        buf = empty; /* never offset NULL */
    }
    /* Offsets and tape items are 32-bit, and the decoded size is at most
     * ~110x the input (an empty Span element: 2 wire bytes, 208 struct
     * bytes), so no size sum can overflow.  No real request comes near. */
    if (len >= UINT32_MAX || len > SIZE_MAX / 256) {
        return AM_ENOTSUP;
    }
    /* About one distinct string per 32 wire bytes in agent traffic.  A table
     * that cannot be had from the heap is the small one on the stack: less
     * sharing, the same result. */
    text_slot_t stack_slots[TEXT_STACK_SLOTS];
    const char *stack_resolved[TEXT_STACK_SLOTS];
    uint32_t stack_tape[TAPE_STACK_ITEMS];
    size_t n_slots = TEXT_STACK_SLOTS;
    while (n_slots < TEXT_MAX_SLOTS && n_slots < len / 32) {
        n_slots *= 2;
    }
    unpack_t u = {.buf = buf, .tape = stack_tape, .tape_cap = TAPE_STACK_ITEMS};
    void *heap_table = NULL;
    if (n_slots > TEXT_STACK_SLOTS) {
        heap_table = am_malloc(n_slots * (sizeof(const char *) + sizeof(text_slot_t)));
    }
    if (heap_table != NULL) {
        u.resolved = heap_table;
        u.slots = (text_slot_t *)(u.resolved + n_slots);
    } else {
        n_slots = TEXT_STACK_SLOTS;
        u.resolved = stack_resolved;
        u.slots = stack_slots;
    }
    memset(u.slots, 0, n_slots * sizeof(text_slot_t));
    u.mask = n_slots - 1;
    u.limit = n_slots / 4 * 3;
    int rc = unpack_run(&u, arena, buf, len, out);
    am_free(heap_table);
    if (u.tape_on_heap) {
        am_free(u.tape);
    }
    return rc;
}
