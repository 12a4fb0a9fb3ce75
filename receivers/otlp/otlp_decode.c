/*
 * otlp_decode.c - from request bytes to an ExportTraceServiceRequest, with
 * every size, count and depth bounded before memory is spent on it.
 *
 * Why a pre-scan: protobuf-c unpacks recursively and allocates a struct for
 * every nested message.  A 10,000-deep AnyValue would recurse 10,000 frames
 * deep and a request of a million empty sub-messages would expand ~100x in
 * memory before any check of ours could run.  So before unpacking we walk
 * the wire bytes once, guided by protobuf-c's own descriptors (so the walk
 * always agrees with the schema): it validates tags, wire types and lengths,
 * stops at the first AnyValue nested deeper than max_attribute_depth, counts
 * spans and list entries, and estimates the decoded size the way the arena
 * will allocate it.  The walk allocates nothing and its recursion is bounded
 * by the depth limit, so a hostile request costs one linear pass.
 *
 * Unpacking itself is core/am_otlp_unpack.c's hand-written decoder, which
 * builds the same structs as protobuf-c in about half the memory; protobuf-c
 * stays the fallback for the rare shapes it leaves alone.
 *
 * Decompression is bounded the same way: output is produced into a buffer
 * that may grow only up to limit + 1 bytes; reaching the extra byte means
 * "too large" whatever the compressed size claimed (gzip bombs, zstd frames
 * with a lying content size).
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include <zstd.h>

#include "am_attr.h"
#include "am_otlp_unpack.h"
#include "otlp_internal.h"

/* ---- status mapping -------------------------------------------------- */

int am__otlp_status_to_grpc(am_status_t status)
{
    switch (status) {
    case AM_OK:
        return AM__GRPC_OK;
    case AM_RETRY:
        return AM__GRPC_UNAVAILABLE;
    case AM_PERMANENT:
        return AM__GRPC_INVALID_ARGUMENT;
    }
    return AM__GRPC_INTERNAL;
}

int am__otlp_grpc_to_http(int grpc_code)
{
    switch (grpc_code) {
    case AM__GRPC_OK:
        return 200;
    case AM__GRPC_INVALID_ARGUMENT:
    case AM__GRPC_INTERNAL:
        return 400;
    case AM__GRPC_UNAUTHENTICATED:
        return 401;
    case AM__GRPC_RESOURCE_EXHAUSTED:
        return 413;
    case AM__GRPC_UNIMPLEMENTED:
        return 415;
    case AM__GRPC_UNAVAILABLE:
        return 503;
    default:
        return 500;
    }
}

const char *am__otlp_grpc_code_name(int grpc_code)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if (grpc_code < 0 || (size_t)grpc_code >= AM_ARRAY_SIZE(names)) {
        return "UNKNOWN";
    }
    return names[grpc_code];
}

/* ---- decompression --------------------------------------------------- */

am__otlp_encoding_t am__otlp_encoding_parse(const char *name)
{
    if (name == NULL) {
        return AM__OTLP_ENC_IDENTITY;
    }
    while (*name == ' ' || *name == '\t') {
        name++;
    }
    size_t len = strlen(name);
    while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '\t')) {
        len--;
    }
    static const struct {
        const char *name;
        am__otlp_encoding_t enc;
    } known[] = {
        {"", AM__OTLP_ENC_IDENTITY},       {"identity", AM__OTLP_ENC_IDENTITY},
        {"gzip", AM__OTLP_ENC_GZIP},       {"x-gzip", AM__OTLP_ENC_GZIP},
        {"deflate", AM__OTLP_ENC_DEFLATE}, {"zstd", AM__OTLP_ENC_ZSTD},
    };
    for (size_t i = 0; i < AM_ARRAY_SIZE(known); i++) {
        if (strlen(known[i].name) == len && strncasecmp(known[i].name, name, len) == 0) {
            return known[i].enc;
        }
    }
    return AM__OTLP_ENC_UNKNOWN;
}

/* Grow *buf (capacity *cap) towards at most `hard_cap` bytes. */
static int grow_bounded(uint8_t **buf, size_t *cap, size_t hard_cap)
{
    size_t want = *cap * 2;
    if (want > hard_cap || want < *cap) {
        want = hard_cap;
    }
    uint8_t *grown = am_realloc(*buf, want);
    if (grown == NULL) {
        return AM_ENOMEM;
    }
    *buf = grown;
    *cap = want;
    return 0;
}

static int inflate_bounded(bool gzip, const uint8_t *in, size_t in_len, size_t hard_cap,
                           uint8_t **out, size_t *out_len, char *err, size_t err_size)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    /* 15 + 16: gzip wrapper only; 15: zlib wrapper (gRPC "deflate"). */
    if (inflateInit2(&zs, gzip ? 15 + 16 : 15) != Z_OK) {
        snprintf(err, err_size, "cannot initialise inflate");
        return AM__GRPC_UNAVAILABLE;
    }
    int rc = 0;
    size_t cap = AM_MIN(hard_cap, AM_MAX(in_len * 4, (size_t)65536));
    uint8_t *buf = am_malloc(cap);
    size_t used = 0;
    if (buf == NULL) {
        rc = AM__GRPC_UNAVAILABLE;
        snprintf(err, err_size, "out of memory");
        goto done;
    }
    /* Feed in slices: avail_in is a uInt. */
    size_t in_off = 0;
    for (;;) {
        if (zs.avail_in == 0 && in_off < in_len) {
            size_t slice = AM_MIN(in_len - in_off, (size_t)UINT32_MAX);
            zs.next_in = (Bytef *)(uintptr_t)(in + in_off);
            zs.avail_in = (uInt)slice;
            in_off += slice;
        }
        if (used == cap) {
            if (cap == hard_cap) {
                rc = AM__GRPC_RESOURCE_EXHAUSTED;
                snprintf(err, err_size, "decompressed message larger than %zu bytes", hard_cap - 1);
                goto done;
            }
            if (grow_bounded(&buf, &cap, hard_cap) != 0) {
                rc = AM__GRPC_UNAVAILABLE;
                snprintf(err, err_size, "out of memory");
                goto done;
            }
        }
        zs.next_out = buf + used;
        zs.avail_out = (uInt)AM_MIN(cap - used, (size_t)UINT32_MAX);
        uInt before = zs.avail_out;
        int zrc = inflate(&zs, Z_NO_FLUSH);
        used += before - zs.avail_out;
        if (zrc == Z_STREAM_END) {
            /* Trailing garbage after a gzip member is an error, not data. */
            if (zs.avail_in != 0 || in_off != in_len) {
                rc = AM__GRPC_INTERNAL;
                snprintf(err, err_size, "trailing bytes after the compressed stream");
            }
            break;
        }
        if (zrc == Z_BUF_ERROR && zs.avail_out != 0) {
            rc = AM__GRPC_INTERNAL;
            snprintf(err, err_size, "truncated %s stream", gzip ? "gzip" : "deflate");
            goto done;
        }
        if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
            rc = zrc == Z_MEM_ERROR ? AM__GRPC_UNAVAILABLE : AM__GRPC_INTERNAL;
            snprintf(err, err_size, "corrupt %s data: %s", gzip ? "gzip" : "deflate",
                     zs.msg != NULL ? zs.msg : "inflate failed");
            goto done;
        }
    }
    if (rc == 0 && used >= hard_cap) {
        rc = AM__GRPC_RESOURCE_EXHAUSTED;
        snprintf(err, err_size, "decompressed message larger than %zu bytes", hard_cap - 1);
    }
done:
    inflateEnd(&zs);
    if (rc != 0) {
        am_free(buf);
        return rc;
    }
    *out = buf;
    *out_len = used;
    return 0;
}

static int zstd_bounded(const uint8_t *in, size_t in_len, size_t hard_cap, uint8_t **out,
                        size_t *out_len, char *err, size_t err_size)
{
    ZSTD_DStream *ds = ZSTD_createDStream();
    if (ds == NULL) {
        snprintf(err, err_size, "out of memory");
        return AM__GRPC_UNAVAILABLE;
    }
    int rc = 0;
    /* A frame declaring a window larger than we would ever accept is
     * refused before the decoder allocates it (default limit is 128 MiB). */
    ZSTD_DCtx_setParameter(ds, ZSTD_d_windowLogMax, 27);
    size_t cap = AM_MIN(hard_cap, AM_MAX(in_len * 4, (size_t)65536));
    unsigned long long declared = ZSTD_getFrameContentSize(in, in_len);
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != ZSTD_CONTENTSIZE_ERROR) {
        if (declared >= hard_cap) {
            rc = AM__GRPC_RESOURCE_EXHAUSTED;
            snprintf(err, err_size, "decompressed message larger than %zu bytes", hard_cap - 1);
            ZSTD_freeDStream(ds);
            return rc;
        }
        /* A hint only: the real output is still bounded below. */
        cap = AM_MAX((size_t)declared + 1, (size_t)1024);
    }
    uint8_t *buf = am_malloc(cap);
    size_t used = 0;
    if (buf == NULL) {
        rc = AM__GRPC_UNAVAILABLE;
        snprintf(err, err_size, "out of memory");
        goto done;
    }
    ZSTD_inBuffer input = {in, in_len, 0};
    size_t last = 1;
    while (input.pos < input.size || last != 0) {
        if (used == cap) {
            if (cap == hard_cap) {
                rc = AM__GRPC_RESOURCE_EXHAUSTED;
                snprintf(err, err_size, "decompressed message larger than %zu bytes", hard_cap - 1);
                goto done;
            }
            if (grow_bounded(&buf, &cap, hard_cap) != 0) {
                rc = AM__GRPC_UNAVAILABLE;
                snprintf(err, err_size, "out of memory");
                goto done;
            }
        }
        ZSTD_outBuffer output = {buf + used, cap - used, 0};
        size_t in_before = input.pos;
        last = ZSTD_decompressStream(ds, &output, &input);
        used += output.pos;
        if (ZSTD_isError(last)) {
            rc = AM__GRPC_INTERNAL;
            snprintf(err, err_size, "corrupt zstd data: %s", ZSTD_getErrorName(last));
            goto done;
        }
        if (output.pos == 0 && input.pos == in_before && used < cap) {
            /* No progress with room to spare: the input ended mid-frame. */
            rc = AM__GRPC_INTERNAL;
            snprintf(err, err_size, "truncated zstd stream");
            goto done;
        }
    }
    if (used >= hard_cap) {
        rc = AM__GRPC_RESOURCE_EXHAUSTED;
        snprintf(err, err_size, "decompressed message larger than %zu bytes", hard_cap - 1);
    }
done:
    ZSTD_freeDStream(ds);
    if (rc != 0) {
        am_free(buf);
        return rc;
    }
    *out = buf;
    *out_len = used;
    return 0;
}

int am__otlp_decompress(am__otlp_encoding_t encoding, const uint8_t *in, size_t in_len,
                        size_t limit, uint8_t **out, size_t *out_len, char *err, size_t err_size)
{
    /* One extra byte of room tells "exactly limit" from "more than limit". */
    size_t hard_cap = limit + 1;
    switch (encoding) {
    case AM__OTLP_ENC_GZIP:
        return inflate_bounded(true, in, in_len, hard_cap, out, out_len, err, err_size);
    case AM__OTLP_ENC_DEFLATE:
        return inflate_bounded(false, in, in_len, hard_cap, out, out_len, err, err_size);
    case AM__OTLP_ENC_ZSTD:
        return zstd_bounded(in, in_len, hard_cap, out, out_len, err, err_size);
    case AM__OTLP_ENC_IDENTITY:
    case AM__OTLP_ENC_UNKNOWN:
        break;
    }
    snprintf(err, err_size, "unsupported encoding");
    return AM__GRPC_UNIMPLEMENTED;
}

/* ---- pre-scan -------------------------------------------------------- */

#define D_REQUEST                                                                                  \
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor
#define D_RESOURCE opentelemetry__proto__resource__v1__resource__descriptor
#define D_SCOPE opentelemetry__proto__common__v1__instrumentation_scope__descriptor
#define D_SPAN opentelemetry__proto__trace__v1__span__descriptor
#define D_EVENT opentelemetry__proto__trace__v1__span__event__descriptor
#define D_LINK opentelemetry__proto__trace__v1__span__link__descriptor
#define D_ANYVALUE opentelemetry__proto__common__v1__any_value__descriptor
#define D_ARRAY opentelemetry__proto__common__v1__array_value__descriptor
#define D_KVLIST opentelemetry__proto__common__v1__key_value_list__descriptor

typedef struct prescan {
    const am__otlp_limits_t *limits;
    uint64_t spans;
    uint64_t estimate; /* bytes the arena will hand out */
    char *err;
    size_t err_size;
} prescan_t;

/* The arena rounds every allocation up to 16 bytes. */
static uint64_t arena_bytes(uint64_t size)
{
    return (size + 15) & ~(uint64_t)15;
}

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t value = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*p >= end) {
            return false;
        }
        uint8_t byte = *(*p)++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if ((byte & 0x80) == 0) {
            *out = value;
            return true;
        }
    }
    return false; /* more than 10 bytes */
}

/* Which of a message's fields is a "list" bounded by max_list_entries. */
static bool is_bounded_list(const ProtobufCMessageDescriptor *desc,
                            const ProtobufCFieldDescriptor *field)
{
    if (field->label != PROTOBUF_C_LABEL_REPEATED || field->type != PROTOBUF_C_TYPE_MESSAGE) {
        return false;
    }
    return desc == &D_SPAN || desc == &D_EVENT || desc == &D_LINK || desc == &D_RESOURCE ||
           desc == &D_SCOPE || desc == &D_ARRAY || desc == &D_KVLIST;
}

static const char *list_owner_name(const ProtobufCMessageDescriptor *desc)
{
    if (desc == &D_SPAN) {
        return "span";
    }
    if (desc == &D_EVENT) {
        return "span event";
    }
    if (desc == &D_LINK) {
        return "span link";
    }
    if (desc == &D_RESOURCE) {
        return "resource";
    }
    if (desc == &D_SCOPE) {
        return "instrumentation scope";
    }
    if (desc == &D_ARRAY) {
        return "array value";
    }
    return "kvlist value";
}

/* Walk one message of type `desc` occupying [buf, buf+len).  `depth` is
 * the AnyValue nesting of this message (0 outside attribute values). */
static int scan_message(prescan_t *ps, const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                        size_t len, uint32_t depth)
{
    /* An empty message may come with a NULL buffer: never offset NULL. */
    static const uint8_t empty[1];
    if (buf == NULL) {
        buf = empty;
        len = 0;
    }
    const uint8_t *p = buf;
    const uint8_t *end = buf + len;
    /* Per-instance counts of repeated message fields (at most a handful of
     * such fields per message type). */
    uint32_t list_field[4] = {0};
    uint64_t list_count[4] = {0};

    if (desc == &D_ANYVALUE && depth > ps->limits->max_depth) {
        snprintf(ps->err, ps->err_size,
                 "attribute value nested deeper than %u levels (max_attribute_depth) in or "
                 "near span #%llu",
                 ps->limits->max_depth, (unsigned long long)(ps->spans == 0 ? 1 : ps->spans));
        return AM__GRPC_INVALID_ARGUMENT;
    }
    if (desc == &D_SPAN) {
        if (++ps->spans > ps->limits->max_spans) {
            snprintf(ps->err, ps->err_size,
                     "request has more than %llu spans (max_spans_per_request)",
                     (unsigned long long)ps->limits->max_spans);
            return AM__GRPC_INVALID_ARGUMENT;
        }
    }
    ps->estimate += arena_bytes(desc->sizeof_message);

    while (p < end) {
        uint64_t tag;
        if (!read_varint(&p, end, &tag)) {
            snprintf(ps->err, ps->err_size, "malformed protobuf: bad field tag in %s",
                     desc->short_name);
            return AM__GRPC_INVALID_ARGUMENT;
        }
        uint64_t field_number = tag >> 3;
        unsigned wire_type = (unsigned)(tag & 7);
        if (field_number == 0 || field_number > 536870911u) {
            snprintf(ps->err, ps->err_size, "malformed protobuf: field number %llu in %s",
                     (unsigned long long)field_number, desc->short_name);
            return AM__GRPC_INVALID_ARGUMENT;
        }
        const ProtobufCFieldDescriptor *field =
            protobuf_c_message_descriptor_get_field(desc, (unsigned)field_number);
        uint64_t value_len = 0;
        switch (wire_type) {
        case 0: {
            uint64_t ignored;
            if (!read_varint(&p, end, &ignored)) {
                snprintf(ps->err, ps->err_size, "malformed protobuf: bad varint in %s",
                         desc->short_name);
                return AM__GRPC_INVALID_ARGUMENT;
            }
            break;
        }
        case 1:
        case 5:
            value_len = wire_type == 1 ? 8 : 4;
            if ((size_t)(end - p) < value_len) {
                snprintf(ps->err, ps->err_size, "malformed protobuf: truncated fixed field in %s",
                         desc->short_name);
                return AM__GRPC_INVALID_ARGUMENT;
            }
            p += value_len;
            break;
        case 2:
            if (!read_varint(&p, end, &value_len) || value_len > (uint64_t)(end - p)) {
                snprintf(ps->err, ps->err_size,
                         "malformed protobuf: length of field %llu in %s runs past its "
                         "message",
                         (unsigned long long)field_number, desc->short_name);
                return AM__GRPC_INVALID_ARGUMENT;
            }
            break;
        default:
            snprintf(ps->err, ps->err_size, "malformed protobuf: wire type %u in %s", wire_type,
                     desc->short_name);
            return AM__GRPC_INVALID_ARGUMENT;
        }

        if (field == NULL) {
            /* protobuf-c keeps unknown fields: a record plus a copy. */
            ps->estimate += arena_bytes(sizeof(ProtobufCMessageUnknownField)) +
                            arena_bytes(value_len) + sizeof(ProtobufCMessageUnknownField);
            if (wire_type == 2) {
                p += value_len;
            }
            continue;
        }
        if (field->label == PROTOBUF_C_LABEL_REPEATED) {
            ps->estimate += sizeof(void *) + 8; /* the pointer array, amortised */
        }
        if (wire_type != 2) {
            continue;
        }
        const uint8_t *value = p;
        p += value_len;
        if (field->type == PROTOBUF_C_TYPE_STRING || field->type == PROTOBUF_C_TYPE_BYTES) {
            ps->estimate += arena_bytes(value_len + 1);
            continue;
        }
        if (field->type != PROTOBUF_C_TYPE_MESSAGE) {
            /* A packed repeated scalar: its elements live in one array. */
            ps->estimate += arena_bytes(value_len * 8);
            continue;
        }
        if (is_bounded_list(desc, field)) {
            size_t slot = 0;
            while (slot < AM_ARRAY_SIZE(list_field) && list_field[slot] != 0 &&
                   list_field[slot] != field->id) {
                slot++;
            }
            if (slot < AM_ARRAY_SIZE(list_field)) {
                list_field[slot] = field->id;
                if (++list_count[slot] > ps->limits->max_list_entries) {
                    snprintf(ps->err, ps->err_size,
                             "%s has more than %llu %s (max_attributes_per_span) in or near "
                             "span #%llu",
                             list_owner_name(desc),
                             (unsigned long long)ps->limits->max_list_entries, field->name,
                             (unsigned long long)(ps->spans == 0 ? 1 : ps->spans));
                    return AM__GRPC_INVALID_ARGUMENT;
                }
            }
        }
        const ProtobufCMessageDescriptor *child = field->descriptor;
        uint32_t child_depth = child == &D_ANYVALUE ? depth + 1 : depth;
        int rc = scan_message(ps, child, value, (size_t)value_len, child_depth);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

int am__otlp_prescan(const uint8_t *buf, size_t len, const am__otlp_limits_t *limits, char *err,
                     size_t err_size)
{
    if (len > limits->max_msg_bytes) {
        snprintf(err, err_size, "request of %zu bytes exceeds the limit of %zu", len,
                 limits->max_msg_bytes);
        return AM__GRPC_INVALID_ARGUMENT;
    }
    prescan_t ps = {.limits = limits, .err = err, .err_size = err_size};
    int rc = scan_message(&ps, &D_REQUEST, buf, len, 0);
    if (rc != 0) {
        return rc;
    }
    uint64_t allowed = (uint64_t)len * AM__OTLP_MAX_EXPANSION + (1u << 20);
    if (ps.estimate > allowed) {
        snprintf(err, err_size,
                 "request of %zu bytes would expand to %llu bytes when decoded (more than "
                 "%dx): too many empty messages",
                 len, (unsigned long long)ps.estimate, AM__OTLP_MAX_EXPANSION);
        return AM__GRPC_INVALID_ARGUMENT;
    }
    return 0;
}

/* protobuf-c's unpack returns NULL both for bad input and for a failed
 * allocation; this allocator remembers which it was, so ENOMEM becomes a
 * retryable UNAVAILABLE instead of blaming the client's bytes. */
typedef struct tracked_allocator {
    ProtobufCAllocator arena;
    bool failed;
} tracked_allocator_t;

static void *tracked_alloc(void *data, size_t size)
{
    tracked_allocator_t *tracked = data;
    void *ptr = tracked->arena.alloc(tracked->arena.allocator_data, size);
    if (ptr == NULL) {
        tracked->failed = true;
    }
    return ptr;
}

static void tracked_free(void *data, void *ptr)
{
    tracked_allocator_t *tracked = data;
    tracked->arena.free(tracked->arena.allocator_data, ptr);
}

int am__otlp_decode_proto(am_arena_t *arena, const uint8_t *buf, size_t len,
                          const am__otlp_limits_t *limits, am_pb_export_req_t **out, char *err,
                          size_t err_size)
{
    *out = NULL;
    int rc = am__otlp_prescan(buf, len, limits, err, err_size);
    if (rc != 0) {
        return rc;
    }
    /* The hand-written decoder takes nearly every request (core/am_otlp_unpack.c);
     * shapes it leaves alone (AM_ENOTSUP) go to protobuf-c below.  Its depth cap
     * is fixed: when max_attribute_depth allows more, its "too deep" must not
     * be the last word, so then protobuf-c decides as well. */
    rc = am_otlp_unpack_traces(arena, buf, len, out);
    if (rc == 0) {
        return 0;
    }
    if (rc == AM_ENOMEM) {
        snprintf(err, err_size, "out of memory decoding the request");
        return AM__GRPC_UNAVAILABLE;
    }
    if (rc == AM_EINVAL && limits->max_depth <= AM_OTLP_UNPACK_MAX_DEPTH) {
        /* The pre-scan accepted the wire format: a field of the wrong type. */
        snprintf(err, err_size,
                 "malformed protobuf: not a valid ExportTraceServiceRequest (field types do "
                 "not match the schema)");
        return AM__GRPC_INVALID_ARGUMENT;
    }
    tracked_allocator_t tracked = {.arena = am_arena_allocator(arena)};
    ProtobufCAllocator allocator = {
        .alloc = tracked_alloc,
        .free = tracked_free,
        .allocator_data = &tracked,
    };
    am_pb_export_req_t *req =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(&allocator,
                                                                                         len, buf);
    if (req == NULL) {
        if (tracked.failed) {
            snprintf(err, err_size, "out of memory decoding the request");
            return AM__GRPC_UNAVAILABLE;
        }
        /* The pre-scan accepted the wire format, so this is a type mismatch,
         * e.g. a varint where a string or message belongs. */
        snprintf(err, err_size,
                 "malformed protobuf: not a valid ExportTraceServiceRequest (field types do "
                 "not match the schema)");
        return AM__GRPC_INVALID_ARGUMENT;
    }
    /* protobuf-c merges a singular message given twice (two `resource`s:
     * their attribute lists concatenate), which the pre-scan counts per
     * instance; such requests only ever come this way, so check the limits
     * on what was decoded. */
    rc = am__otlp_check_limits(req, limits, err, err_size);
    if (rc != 0) {
        return rc;
    }
    am_attr_intern_keys(req); /* protobuf-c copied every key */
    *out = req;
    return 0;
}

/* ---- limits on decoded requests (JSON) -------------------------------- */

typedef struct limit_walk {
    const am__otlp_limits_t *limits;
    uint64_t spans;
    char *err;
    size_t err_size;
} limit_walk_t;

static int check_value(limit_walk_t *lw, const am_pb_anyvalue_t *value, uint32_t depth);

static int check_list(limit_walk_t *lw, size_t count, const char *what)
{
    if (count > lw->limits->max_list_entries) {
        snprintf(lw->err, lw->err_size,
                 "%s has more than %llu entries (max_attributes_per_span) in or near span #%llu",
                 what, (unsigned long long)lw->limits->max_list_entries,
                 (unsigned long long)(lw->spans == 0 ? 1 : lw->spans));
        return AM__GRPC_INVALID_ARGUMENT;
    }
    return 0;
}

static int check_attrs(limit_walk_t *lw, am_pb_keyvalue_t *const *attrs, size_t n_attrs,
                       const char *what, uint32_t depth)
{
    int rc = check_list(lw, n_attrs, what);
    for (size_t i = 0; rc == 0 && i < n_attrs; i++) {
        if (attrs[i] != NULL && attrs[i]->value != NULL) {
            rc = check_value(lw, attrs[i]->value, depth + 1);
        }
    }
    return rc;
}

static int check_value(limit_walk_t *lw, const am_pb_anyvalue_t *value, uint32_t depth)
{
    if (depth > lw->limits->max_depth) {
        snprintf(lw->err, lw->err_size,
                 "attribute value nested deeper than %u levels (max_attribute_depth) in or "
                 "near span #%llu",
                 lw->limits->max_depth, (unsigned long long)(lw->spans == 0 ? 1 : lw->spans));
        return AM__GRPC_INVALID_ARGUMENT;
    }
    if (value->value_case == AM_PB_VALUE(ARRAY_VALUE) && value->array_value != NULL) {
        const am_pb_arrayvalue_t *array = value->array_value;
        int rc = check_list(lw, array->n_values, "array value");
        for (size_t i = 0; rc == 0 && i < array->n_values; i++) {
            if (array->values[i] != NULL) {
                rc = check_value(lw, array->values[i], depth + 1);
            }
        }
        return rc;
    }
    if (value->value_case == AM_PB_VALUE(KVLIST_VALUE) && value->kvlist_value != NULL) {
        return check_attrs(lw, value->kvlist_value->values, value->kvlist_value->n_values,
                           "kvlist value", depth);
    }
    return 0;
}

int am__otlp_check_limits(const am_pb_export_req_t *req, const am__otlp_limits_t *limits, char *err,
                          size_t err_size)
{
    limit_walk_t lw = {.limits = limits, .err = err, .err_size = err_size};
    int rc = 0;
    for (size_t r = 0; rc == 0 && r < req->n_resource_spans; r++) {
        const am_pb_resource_spans_t *rs = req->resource_spans[r];
        if (rs == NULL) {
            continue;
        }
        if (rs->resource != NULL) {
            rc = check_attrs(&lw, rs->resource->attributes, rs->resource->n_attributes, "resource",
                             0);
        }
        for (size_t s = 0; rc == 0 && s < rs->n_scope_spans; s++) {
            const am_pb_scope_spans_t *ss = rs->scope_spans[s];
            if (ss == NULL) {
                continue;
            }
            if (ss->scope != NULL) {
                rc = check_attrs(&lw, ss->scope->attributes, ss->scope->n_attributes,
                                 "instrumentation scope", 0);
            }
            for (size_t i = 0; rc == 0 && i < ss->n_spans; i++) {
                const am_pb_span_t *span = ss->spans[i];
                if (span == NULL) {
                    continue;
                }
                if (++lw.spans > limits->max_spans) {
                    snprintf(err, err_size,
                             "request has more than %llu spans (max_spans_per_request)",
                             (unsigned long long)limits->max_spans);
                    return AM__GRPC_INVALID_ARGUMENT;
                }
                rc = check_attrs(&lw, span->attributes, span->n_attributes, "span", 0);
                if (rc == 0) {
                    rc = check_list(&lw, span->n_events, "span (events)");
                }
                if (rc == 0) {
                    rc = check_list(&lw, span->n_links, "span (links)");
                }
                for (size_t e = 0; rc == 0 && e < span->n_events; e++) {
                    if (span->events[e] != NULL) {
                        rc = check_attrs(&lw, span->events[e]->attributes,
                                         span->events[e]->n_attributes, "span event", 0);
                    }
                }
                for (size_t l = 0; rc == 0 && l < span->n_links; l++) {
                    if (span->links[l] != NULL) {
                        rc = check_attrs(&lw, span->links[l]->attributes,
                                         span->links[l]->n_attributes, "span link", 0);
                    }
                }
            }
        }
    }
    return rc;
}

/* ---- partial success ------------------------------------------------- */

size_t am__otlp_drop_invalid_spans(am_pb_export_req_t *req, char *msg, size_t msg_size)
{
    size_t removed = 0;
    if (msg_size > 0) {
        msg[0] = '\0';
    }
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        am_pb_resource_spans_t *rs = req->resource_spans[r];
        if (rs == NULL) {
            continue;
        }
        for (size_t s = 0; s < rs->n_scope_spans; s++) {
            am_pb_scope_spans_t *ss = rs->scope_spans[s];
            if (ss == NULL) {
                continue;
            }
            size_t kept = 0;
            for (size_t i = 0; i < ss->n_spans; i++) {
                am_pb_span_t *span = ss->spans[i];
                if (span != NULL && span->trace_id.len == 16 && span->span_id.len == 8) {
                    ss->spans[kept++] = span;
                    continue;
                }
                if (removed == 0 && msg_size > 0) {
                    if (span == NULL) {
                        snprintf(msg, msg_size, "empty span");
                    } else {
                        snprintf(msg, msg_size,
                                 "span \"%.64s\" has a trace_id of %zu bytes and a span_id of "
                                 "%zu bytes (want 16 and 8)",
                                 span->name != NULL ? span->name : "", span->trace_id.len,
                                 span->span_id.len);
                    }
                }
                removed++;
            }
            ss->n_spans = kept;
        }
    }
    if (removed > 0 && msg_size > 0) {
        char first[384];
        snprintf(first, sizeof(first), "%s", msg);
        snprintf(msg, msg_size, "%zu invalid span%s rejected; first: %s", removed,
                 removed == 1 ? "" : "s", first);
    }
    return removed;
}

/* ---- JSON pre-scan ---------------------------------------------------- */

#define AM__OTLP_JSON_MAX_CONTAINERS 400000

int am__otlp_json_prescan(const uint8_t *buf, size_t len, char *err, size_t err_size)
{
    uint64_t containers = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = buf[i];
        if (in_string) {
            if (c == '\\') {
                i++; /* skip the escaped byte */
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            containers++;
        }
    }
    /* json-c builds the whole document first, at ~800 bytes per object or
     * array, outside the request arena: bound that transient memory too.
     * 400,000 containers is ~20,000 richly attributed spans (~300 MiB
     * peak); bigger batches should use protobuf, which decodes in place. */
    if (containers > AM__OTLP_JSON_MAX_CONTAINERS) {
        snprintf(err, err_size,
                 "JSON body has %llu objects/arrays, more than %d: send smaller batches or "
                 "use application/x-protobuf",
                 (unsigned long long)containers, AM__OTLP_JSON_MAX_CONTAINERS);
        return AM__GRPC_RESOURCE_EXHAUSTED;
    }
    uint64_t allowed = len / AM__OTLP_JSON_MIN_BYTES_PER_CONTAINER + 4096;
    if (containers > allowed) {
        snprintf(err, err_size,
                 "JSON body of %zu bytes has %llu objects/arrays (at most one per %d bytes): "
                 "too many empty containers",
                 len, (unsigned long long)containers, AM__OTLP_JSON_MIN_BYTES_PER_CONTAINER);
        return AM__GRPC_INVALID_ARGUMENT;
    }
    return 0;
}
