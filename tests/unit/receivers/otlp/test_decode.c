/*
 * OTLP receiver decoding: what a client sees for each kind of bad input,
 * without sockets.  gRPC framing (lengths refused before buffering,
 * truncation, a compressed flag without an encoding, a second message),
 * the protobuf pre-scan (a 10,000-deep AnyValue is refused cheaply, span and
 * attribute counts, malformed wire data, expansion bombs), bounded
 * decompression (gzip and zstd bombs stop at the limit), status mapping,
 * partial success, and the export step with a fake pipeline.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
#include <zstd.h>

#include <cmocka.h>

#include "receivers/otlp/otlp_internal.h"

static const am__otlp_limits_t default_limits = {
    .max_msg_bytes = 16u << 20,
    .max_depth = 32,
    .max_spans = 100000,
    .max_list_entries = 1024,
};

/* ---- building wire bytes back to front ------------------------------- */

typedef struct wbuf {
    uint8_t *data;
    size_t cap;
    size_t start; /* bytes live in [start, cap) */
} wbuf_t;

static void wb_init(wbuf_t *wb, size_t cap)
{
    wb->data = malloc(cap);
    assert_non_null(wb->data);
    wb->cap = cap;
    wb->start = cap;
}

static size_t wb_len(const wbuf_t *wb)
{
    return wb->cap - wb->start;
}

static void wb_prepend(wbuf_t *wb, const void *bytes, size_t len)
{
    assert_true(wb->start >= len);
    wb->start -= len;
    memcpy(wb->data + wb->start, bytes, len);
}

static void wb_prepend_varint(wbuf_t *wb, uint64_t value)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(value & 0x7f);
        value >>= 7;
        if (value != 0) {
            tmp[n] |= 0x80;
        }
        n++;
    } while (value != 0);
    wb_prepend(wb, tmp, n);
}

/* Wrap everything after `mark` (its length = wb_len - mark) as field `field`
 * of wire type LEN. */
static void wb_wrap(wbuf_t *wb, size_t inner_len, unsigned field)
{
    wb_prepend_varint(wb, inner_len);
    wb_prepend_varint(wb, (uint64_t)field << 3 | 2);
}

static void wb_bytes_field(wbuf_t *wb, unsigned field, const void *bytes, size_t len)
{
    wb_prepend(wb, bytes, len);
    wb_wrap(wb, len, field);
}

/* A request of one span whose single attribute value nests `depth`
 * AnyValues (arrays of one element down to a string). */
static void build_deep_request(wbuf_t *wb, unsigned depth)
{
    wb_init(wb, (size_t)depth * 16 + 4096);
    size_t before = wb_len(wb);
    wb_bytes_field(wb, 1, "x", 1); /* innermost AnyValue.string_value */
    for (unsigned level = 1; level < depth; level++) {
        size_t any_len = wb_len(wb) - before;
        wb_wrap(wb, any_len, 1); /* ArrayValue.values */
        size_t arr_len = wb_len(wb) - before;
        wb_wrap(wb, arr_len, 5); /* AnyValue.array_value */
    }
    wb_wrap(wb, wb_len(wb) - before, 2); /* KeyValue.value */
    wb_bytes_field(wb, 1, "k", 1);       /* KeyValue.key */
    size_t kv_len = wb_len(wb) - before;
    wb_wrap(wb, kv_len, 9); /* Span.attributes */
    static const uint8_t span_id[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const uint8_t trace_id[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    wb_bytes_field(wb, 2, span_id, sizeof(span_id));
    wb_bytes_field(wb, 1, trace_id, sizeof(trace_id));
    wb_wrap(wb, wb_len(wb) - before, 2); /* ScopeSpans.spans */
    wb_wrap(wb, wb_len(wb) - before, 2); /* ResourceSpans.scope_spans */
    wb_wrap(wb, wb_len(wb) - before, 1); /* Request.resource_spans */
}

/* ---- building valid requests with protobuf-c ------------------------- */

/* A packed request of n_spans spans; span i gets a bad trace id when
 * bad_every > 0 and i % bad_every == 0.  Caller frees. */
static uint8_t *pack_request(size_t n_spans, size_t attrs_per_span, size_t bad_every, size_t *len)
{
    am_pb_export_req_t req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    am_pb_resource_spans_t rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    am_pb_scope_spans_t ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    am_pb_resource_spans_t *rs_list[1] = {&rs};
    am_pb_scope_spans_t *ss_list[1] = {&ss};
    am_pb_span_t *spans = calloc(n_spans, sizeof(*spans));
    am_pb_span_t **span_ptrs = calloc(n_spans, sizeof(*span_ptrs));
    am_pb_keyvalue_t *kvs = calloc(attrs_per_span + 1, sizeof(*kvs));
    am_pb_keyvalue_t **kv_ptrs = calloc(attrs_per_span + 1, sizeof(*kv_ptrs));
    am_pb_anyvalue_t value = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    value.value_case = AM_PB_VALUE(INT_VALUE);
    value.int_value = 42;
    for (size_t a = 0; a < attrs_per_span; a++) {
        opentelemetry__proto__common__v1__key_value__init(&kvs[a]);
        kvs[a].key = "gen_ai.usage.input_tokens";
        kvs[a].value = &value;
        kv_ptrs[a] = &kvs[a];
    }
    static uint8_t trace_id[16] = {0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static uint8_t span_id[8] = {0xbb, 1, 2, 3, 4, 5, 6, 7};
    for (size_t i = 0; i < n_spans; i++) {
        opentelemetry__proto__trace__v1__span__init(&spans[i]);
        spans[i].trace_id.data = trace_id;
        spans[i].trace_id.len = bad_every > 0 && i % bad_every == 0 ? 15 : 16;
        spans[i].span_id.data = span_id;
        spans[i].span_id.len = 8;
        spans[i].name = "chat";
        spans[i].attributes = kv_ptrs;
        spans[i].n_attributes = attrs_per_span;
        span_ptrs[i] = &spans[i];
    }
    ss.spans = span_ptrs;
    ss.n_spans = n_spans;
    rs.scope_spans = ss_list;
    rs.n_scope_spans = 1;
    req.resource_spans = rs_list;
    req.n_resource_spans = 1;
    *len =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
            &req);
    uint8_t *out = malloc(*len + 1);
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, out);
    free(spans);
    free(span_ptrs);
    free(kvs);
    free(kv_ptrs);
    return out;
}

/* ---- gRPC framing ---------------------------------------------------- */

static void prefix(uint8_t out[5], uint8_t flag, uint32_t len)
{
    out[0] = flag;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

static void test_frame_split_anywhere(void **state)
{
    (void)state;
    uint8_t body[5 + 300];
    prefix(body, 0, 300);
    for (int i = 0; i < 300; i++) {
        body[5 + i] = (uint8_t)i;
    }
    /* One byte at a time: DATA frames may split anywhere. */
    am__otlp_frame_t frame;
    am__otlp_frame_init(&frame, 1000);
    char err[256];
    for (size_t i = 0; i < sizeof(body); i++) {
        assert_int_equal(am__otlp_frame_feed(&frame, body + i, 1, err, sizeof(err)), 0);
    }
    assert_int_equal(am__otlp_frame_finish(&frame, err, sizeof(err)), 0);
    assert_int_equal(frame.msg_have, 300);
    assert_memory_equal(frame.msg, body + 5, 300);
    am__otlp_frame_free(&frame);
}

static void test_frame_oversize_refused_before_buffering(void **state)
{
    (void)state;
    am__otlp_frame_t frame;
    am__otlp_frame_init(&frame, 4u << 20);
    uint8_t hdr[5];
    prefix(hdr, 0, (4u << 20) + 1);
    char err[256];
    assert_int_equal(am__otlp_frame_feed(&frame, hdr, sizeof(hdr), err, sizeof(err)),
                     AM__GRPC_RESOURCE_EXHAUSTED);
    assert_null(frame.msg); /* nothing was allocated for the claimed size */
    assert_non_null(strstr(err, "exceeds the limit"));
    am__otlp_frame_free(&frame);

    /* The largest length a 4-byte prefix can claim. */
    am__otlp_frame_init(&frame, 16u << 20);
    prefix(hdr, 0, UINT32_MAX);
    assert_int_equal(am__otlp_frame_feed(&frame, hdr, sizeof(hdr), err, sizeof(err)),
                     AM__GRPC_RESOURCE_EXHAUSTED);
    assert_null(frame.msg);
    am__otlp_frame_free(&frame);
}

static void test_frame_grows_with_data_not_claims(void **state)
{
    (void)state;
    am__otlp_frame_t frame;
    am__otlp_frame_init(&frame, 16u << 20);
    uint8_t hdr[5];
    prefix(hdr, 0, 16u << 20);
    char err[256];
    assert_int_equal(am__otlp_frame_feed(&frame, hdr, sizeof(hdr), err, sizeof(err)), 0);
    uint8_t some[100] = {0};
    assert_int_equal(am__otlp_frame_feed(&frame, some, sizeof(some), err, sizeof(err)), 0);
    assert_true(frame.msg_cap < 1u << 20);
    am__otlp_frame_free(&frame);
}

static void test_frame_truncated(void **state)
{
    (void)state;
    char err[256];
    am__otlp_frame_t frame;

    am__otlp_frame_init(&frame, 1000);
    assert_int_equal(am__otlp_frame_finish(&frame, err, sizeof(err)), AM__GRPC_INTERNAL);
    assert_non_null(strstr(err, "without a message"));
    am__otlp_frame_free(&frame);

    am__otlp_frame_init(&frame, 1000);
    uint8_t hdr[5];
    prefix(hdr, 0, 100);
    assert_int_equal(am__otlp_frame_feed(&frame, hdr, 3, err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_finish(&frame, err, sizeof(err)), AM__GRPC_INTERNAL);
    assert_non_null(strstr(err, "truncated message prefix"));
    am__otlp_frame_free(&frame);

    am__otlp_frame_init(&frame, 1000);
    uint8_t data[5 + 40] = {0};
    prefix(data, 0, 100);
    assert_int_equal(am__otlp_frame_feed(&frame, data, sizeof(data), err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_finish(&frame, err, sizeof(err)), AM__GRPC_INTERNAL);
    assert_string_equal(err, "truncated message: 40 of 100 bytes");
    am__otlp_frame_free(&frame);
}

static void test_frame_second_message_and_bad_flag(void **state)
{
    (void)state;
    char err[256];
    am__otlp_frame_t frame;
    uint8_t two[5 + 2 + 5 + 2];
    prefix(two, 0, 2);
    two[5] = two[6] = 0;
    prefix(two + 7, 0, 2);
    two[12] = two[13] = 0;
    am__otlp_frame_init(&frame, 1000);
    assert_int_equal(am__otlp_frame_feed(&frame, two, sizeof(two), err, sizeof(err)),
                     AM__GRPC_INTERNAL);
    am__otlp_frame_free(&frame);

    /* An empty message then anything more. */
    uint8_t empty_then[6];
    prefix(empty_then, 0, 0);
    empty_then[5] = 0;
    am__otlp_frame_init(&frame, 1000);
    assert_int_equal(am__otlp_frame_feed(&frame, empty_then, 5, err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_finish(&frame, err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_feed(&frame, empty_then + 5, 1, err, sizeof(err)),
                     AM__GRPC_INTERNAL);
    am__otlp_frame_free(&frame);

    uint8_t bad_flag[5];
    prefix(bad_flag, 7, 1);
    am__otlp_frame_init(&frame, 1000);
    assert_int_equal(am__otlp_frame_feed(&frame, bad_flag, 5, err, sizeof(err)), AM__GRPC_INTERNAL);
    am__otlp_frame_free(&frame);
}

static void test_frame_compressed_flag_without_encoding(void **state)
{
    (void)state;
    char err[256];
    am__otlp_frame_t frame;
    uint8_t body[5 + 4] = {0};
    prefix(body, 1, 4);
    am__otlp_frame_init(&frame, 1000);
    assert_int_equal(am__otlp_frame_feed(&frame, body, sizeof(body), err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_finish(&frame, err, sizeof(err)), 0);
    const uint8_t *out;
    size_t out_len;
    uint8_t *owned;
    assert_int_equal(am__otlp_frame_unwrap(&frame, AM__OTLP_ENC_IDENTITY, &out, &out_len, &owned,
                                           err, sizeof(err)),
                     AM__GRPC_INTERNAL);
    assert_non_null(strstr(err, "compressed flag"));
    am__otlp_frame_free(&frame);
}

static void test_frame_budget(void **state)
{
    (void)state;
    char err[256];
    size_t used = 0;
    am__otlp_frame_t a, b;
    am__otlp_frame_init(&a, 1u << 20);
    am__otlp_frame_init(&b, 1u << 20);
    a.budget_used = b.budget_used = &used;
    a.budget_max = b.budget_max = 100000;
    uint8_t hdr[5];
    prefix(hdr, 0, 80000);
    static uint8_t data[80000];
    assert_int_equal(am__otlp_frame_feed(&a, hdr, 5, err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_feed(&a, data, sizeof(data), err, sizeof(err)), 0);
    assert_int_equal(used, 80000);
    assert_int_equal(am__otlp_frame_feed(&b, hdr, 5, err, sizeof(err)), 0);
    assert_int_equal(am__otlp_frame_feed(&b, data, sizeof(data), err, sizeof(err)),
                     AM__GRPC_UNAVAILABLE);
    am__otlp_frame_free(&a);
    am__otlp_frame_free(&b);
    assert_int_equal(used, 0); /* everything given back */
}

static void test_grpc_message_encoding(void **state)
{
    (void)state;
    char out[64];
    am__otlp_grpc_message_encode("50% done\n\xc3\xa9", out, sizeof(out));
    assert_string_equal(out, "50%25 done%0A%C3%A9");
    am__otlp_grpc_message_encode("abcdef", out, 4); /* truncates, stays terminated */
    assert_string_equal(out, "abc");
}

/* ---- pre-scan -------------------------------------------------------- */

static void test_prescan_accepts_valid(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = pack_request(100, 10, 0, &len);
    char err[256] = "";
    assert_int_equal(am__otlp_prescan(buf, len, &default_limits, err, sizeof(err)), 0);
    free(buf);

    wbuf_t wb;
    build_deep_request(&wb, 32); /* exactly the limit */
    assert_int_equal(
        am__otlp_prescan(wb.data + wb.start, wb_len(&wb), &default_limits, err, sizeof(err)), 0);
    free(wb.data);
}

static void test_prescan_depth(void **state)
{
    (void)state;
    char err[256];
    wbuf_t wb;
    build_deep_request(&wb, 33);
    assert_int_equal(
        am__otlp_prescan(wb.data + wb.start, wb_len(&wb), &default_limits, err, sizeof(err)),
        AM__GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "nested deeper than 32"));
    free(wb.data);

    /* 10,000 deep: refused after 33 levels, long before unpack would
     * recurse; well under a millisecond of work. */
    build_deep_request(&wb, 10000);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(
            am__otlp_prescan(wb.data + wb.start, wb_len(&wb), &default_limits, err, sizeof(err)),
            AM__GRPC_INVALID_ARGUMENT);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms < 200.0); /* 100 rejections */
    assert_non_null(strstr(err, "max_attribute_depth"));

    /* The same through decode: nothing reaches protobuf-c. */
    am_arena_t *arena = am_arena_new(wb_len(&wb) * 2);
    am_pb_export_req_t *req = NULL;
    assert_int_equal(am__otlp_decode_proto(arena, wb.data + wb.start, wb_len(&wb), &default_limits,
                                           &req, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    assert_null(req);
    assert_true(am_arena_used(arena) < 1024);
    am_arena_unref(arena);
    free(wb.data);
}

static void test_prescan_counts(void **state)
{
    (void)state;
    char err[256];
    am__otlp_limits_t limits = default_limits;
    limits.max_spans = 10;
    size_t len;
    uint8_t *buf = pack_request(11, 1, 0, &len);
    assert_int_equal(am__otlp_prescan(buf, len, &limits, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    assert_string_equal(err, "request has more than 10 spans (max_spans_per_request)");
    free(buf);

    limits = default_limits;
    limits.max_list_entries = 5;
    buf = pack_request(3, 6, 0, &len);
    assert_int_equal(am__otlp_prescan(buf, len, &limits, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "span has more than 5 attributes"));
    assert_non_null(strstr(err, "span #1"));
    free(buf);
    buf = pack_request(3, 5, 0, &len);
    assert_int_equal(am__otlp_prescan(buf, len, &limits, err, sizeof(err)), 0);
    free(buf);
}

static void test_prescan_malformed(void **state)
{
    (void)state;
    char err[256];
    static const struct {
        const char *bytes;
        size_t len;
        const char *want;
    } cases[] = {
        {"\x0a\x05\x01", 3, "runs past"},       /* length past the end */
        {"\x0b", 1, "wire type 3"},             /* group start */
        {"\x0a\x02\x0c\x00", 4, "wire type 4"}, /* nested group end */
        {"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11, "bad field tag"},
        {"\x00\x01", 2, "field number 0"},
        {"\x0a\x03\x12\x01", 4, "runs past"}, /* inner length past outer */
        {"\x0d\x01\x02", 3, "truncated fixed"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(am__otlp_prescan((const uint8_t *)cases[i].bytes, cases[i].len,
                                          &default_limits, err, sizeof(err)),
                         AM__GRPC_INVALID_ARGUMENT);
        if (strstr(err, cases[i].want) == NULL) {
            fail_msg("case %zu: \"%s\" does not mention \"%s\"", i, err, cases[i].want);
        }
    }
    /* Type mismatch the wire walk cannot see (a varint where a message
     * belongs is just an unknown-looking scalar to it): unpack refuses. */
    am_arena_t *arena = am_arena_new(1024);
    am_pb_export_req_t *req;
    assert_int_equal(am__otlp_decode_proto(arena, (const uint8_t *)"\x08\x01", 2, &default_limits,
                                           &req, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    am_arena_unref(arena);
}

static void test_prescan_expansion_bomb(void **state)
{
    (void)state;
    /* 200,000 empty spans (2 bytes each) would be ~60 MB of Span structs. */
    am__otlp_limits_t limits = default_limits;
    limits.max_spans = 10u << 20;
    size_t n = 200000;
    wbuf_t wb;
    wb_init(&wb, n * 2 + 64);
    size_t before = wb_len(&wb);
    for (size_t i = 0; i < n; i++) {
        wb_prepend(&wb, "\x12\x00", 2); /* ScopeSpans.spans: empty Span */
    }
    wb_wrap(&wb, wb_len(&wb) - before, 2);
    wb_wrap(&wb, wb_len(&wb) - before, 1);
    char err[256];
    assert_int_equal(am__otlp_prescan(wb.data + wb.start, wb_len(&wb), &limits, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "would expand"));
    free(wb.data);
}

static void test_check_limits_decoded(void **state)
{
    (void)state;
    /* The JSON path checks the same limits on structs. */
    size_t len;
    uint8_t *buf = pack_request(4, 3, 0, &len);
    am_arena_t *arena = am_arena_new(len * 2);
    am_pb_export_req_t *req;
    char err[256];
    assert_int_equal(
        am__otlp_decode_proto(arena, buf, len, &default_limits, &req, err, sizeof(err)), 0);
    assert_int_equal(am__otlp_check_limits(req, &default_limits, err, sizeof(err)), 0);
    am__otlp_limits_t limits = default_limits;
    limits.max_spans = 3;
    assert_int_equal(am__otlp_check_limits(req, &limits, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    limits = default_limits;
    limits.max_list_entries = 2;
    assert_int_equal(am__otlp_check_limits(req, &limits, err, sizeof(err)),
                     AM__GRPC_INVALID_ARGUMENT);
    am_arena_unref(arena);
    free(buf);
}

static void test_json_prescan(void **state)
{
    (void)state;
    char err[256];
    const char *real = "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"name\":\"[{[{\"}]}]}]}";
    assert_int_equal(am__otlp_json_prescan((const uint8_t *)real, strlen(real), err, sizeof(err)),
                     0);
    size_t n = 1u << 20;
    uint8_t *bomb = malloc(n);
    for (size_t i = 0; i < n; i += 3) {
        memcpy(bomb + i, "{},", AM_MIN((size_t)3, n - i));
    }
    assert_int_equal(am__otlp_json_prescan(bomb, n, err, sizeof(err)), AM__GRPC_INVALID_ARGUMENT);
    free(bomb);
}

/* ---- decompression --------------------------------------------------- */

static uint8_t *gzip_bytes(const uint8_t *in, size_t len, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, len) + 64;
    uint8_t *out = malloc(cap);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *out_len = cap - zs.avail_out;
    deflateEnd(&zs);
    return out;
}

static void test_decompress_roundtrip(void **state)
{
    (void)state;
    size_t len;
    uint8_t *plain = pack_request(50, 5, 0, &len);
    char err[256];
    uint8_t *out;
    size_t out_len;

    size_t gz_len;
    uint8_t *gz = gzip_bytes(plain, len, &gz_len);
    assert_int_equal(
        am__otlp_decompress(AM__OTLP_ENC_GZIP, gz, gz_len, len, &out, &out_len, err, sizeof(err)),
        0);
    assert_int_equal(out_len, len);
    assert_memory_equal(out, plain, len);
    am_free(out);
    /* One byte under the size: too large. */
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_GZIP, gz, gz_len, len - 1, &out, &out_len,
                                         err, sizeof(err)),
                     AM__GRPC_RESOURCE_EXHAUSTED);
    /* Truncated and corrupt. */
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_GZIP, gz, gz_len / 2, len, &out, &out_len,
                                         err, sizeof(err)),
                     AM__GRPC_INTERNAL);
    gz[gz_len / 2] ^= 0xff;
    gz[gz_len / 2 + 1] ^= 0xff;
    assert_int_equal(
        am__otlp_decompress(AM__OTLP_ENC_GZIP, gz, gz_len, len, &out, &out_len, err, sizeof(err)),
        AM__GRPC_INTERNAL);
    free(gz);

    size_t zcap = ZSTD_compressBound(len);
    uint8_t *zs = malloc(zcap);
    size_t zs_len = ZSTD_compress(zs, zcap, plain, len, 3);
    assert_false(ZSTD_isError(zs_len));
    assert_int_equal(
        am__otlp_decompress(AM__OTLP_ENC_ZSTD, zs, zs_len, len, &out, &out_len, err, sizeof(err)),
        0);
    assert_int_equal(out_len, len);
    assert_memory_equal(out, plain, len);
    am_free(out);
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_ZSTD, zs, zs_len - 3, len, &out, &out_len,
                                         err, sizeof(err)),
                     AM__GRPC_INTERNAL);
    free(zs);
    free(plain);

    assert_int_equal(am__otlp_encoding_parse(NULL), AM__OTLP_ENC_IDENTITY);
    assert_int_equal(am__otlp_encoding_parse(" GZIP "), AM__OTLP_ENC_GZIP);
    assert_int_equal(am__otlp_encoding_parse("zstd"), AM__OTLP_ENC_ZSTD);
    assert_int_equal(am__otlp_encoding_parse("br"), AM__OTLP_ENC_UNKNOWN);
}

static void test_decompression_bombs_bounded(void **state)
{
    (void)state;
    /* 256 MiB of zeros compresses to ~250 KB (gzip) / ~8 KB (zstd). */
    size_t big = 256u << 20;
    uint8_t *zeros = calloc(1, big);
    assert_non_null(zeros);
    size_t gz_len;
    uint8_t *gz = gzip_bytes(zeros, big, &gz_len);
    size_t zcap = ZSTD_compressBound(big);
    uint8_t *zs = malloc(zcap);
    size_t zs_len = ZSTD_compress(zs, zcap, zeros, big, 1);
    assert_false(ZSTD_isError(zs_len));
    free(zeros);

    char err[256];
    uint8_t *out = NULL;
    size_t out_len;
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_GZIP, gz, gz_len, 1u << 20, &out, &out_len,
                                         err, sizeof(err)),
                     AM__GRPC_RESOURCE_EXHAUSTED);
    assert_null(out);
    assert_non_null(strstr(err, "larger than 1048576"));
    /* zstd frames declare their size: refused before any output buffer. */
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_ZSTD, zs, zs_len, 1u << 20, &out, &out_len,
                                         err, sizeof(err)),
                     AM__GRPC_RESOURCE_EXHAUSTED);
    assert_null(out);

    /* A streamed zstd frame without a declared size is bounded too. */
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
    static uint8_t chunk[1u << 16];
    uint8_t *streamed = malloc(1u << 20);
    ZSTD_outBuffer o = {streamed, 1u << 20, 0};
    for (int i = 0; i < 64; i++) { /* 4 MiB of zeros */
        ZSTD_inBuffer in = {chunk, sizeof(chunk), 0};
        ZSTD_compressStream2(cctx, &o, &in, ZSTD_e_continue);
    }
    ZSTD_inBuffer none = {NULL, 0, 0};
    while (ZSTD_compressStream2(cctx, &o, &none, ZSTD_e_end) != 0) {
    }
    ZSTD_freeCCtx(cctx);
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_ZSTD, streamed, o.pos, 1u << 20, &out,
                                         &out_len, err, sizeof(err)),
                     AM__GRPC_RESOURCE_EXHAUSTED);
    assert_int_equal(am__otlp_decompress(AM__OTLP_ENC_ZSTD, streamed, o.pos, 4u << 20, &out,
                                         &out_len, err, sizeof(err)),
                     0);
    assert_int_equal(out_len, 4u << 20);
    am_free(out);
    free(streamed);
    free(gz);
    free(zs);
}

/* ---- status mapping and partial success ------------------------------- */

static void test_status_mapping(void **state)
{
    (void)state;
    assert_int_equal(am__otlp_status_to_grpc(AM_OK), AM__GRPC_OK);
    assert_int_equal(am__otlp_status_to_grpc(AM_RETRY), AM__GRPC_UNAVAILABLE);
    assert_int_equal(am__otlp_status_to_grpc(AM_PERMANENT), AM__GRPC_INVALID_ARGUMENT);
    assert_int_equal(am__otlp_grpc_to_http(AM__GRPC_OK), 200);
    assert_int_equal(am__otlp_grpc_to_http(AM__GRPC_INVALID_ARGUMENT), 400);
    assert_int_equal(am__otlp_grpc_to_http(AM__GRPC_UNAUTHENTICATED), 401);
    assert_int_equal(am__otlp_grpc_to_http(AM__GRPC_RESOURCE_EXHAUSTED), 413);
    assert_int_equal(am__otlp_grpc_to_http(AM__GRPC_UNIMPLEMENTED), 415);
    assert_int_equal(am__otlp_grpc_to_http(AM__GRPC_UNAVAILABLE), 503);
    assert_string_equal(am__otlp_grpc_code_name(14), "UNAVAILABLE");
    assert_string_equal(am__otlp_grpc_code_name(99), "UNKNOWN");
}

static void test_drop_invalid_spans(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = pack_request(10, 1, 3, &len); /* spans 0, 3, 6, 9 bad */
    am_arena_t *arena = am_arena_new(len * 2);
    am_pb_export_req_t *req;
    char err[256];
    assert_int_equal(
        am__otlp_decode_proto(arena, buf, len, &default_limits, &req, err, sizeof(err)), 0);
    char msg[512];
    assert_int_equal(am__otlp_drop_invalid_spans(req, msg, sizeof(msg)), 4);
    assert_int_equal(req->resource_spans[0]->scope_spans[0]->n_spans, 6);
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(req->resource_spans[0]->scope_spans[0]->spans[i]->trace_id.len, 16);
    }
    assert_non_null(strstr(msg, "4 invalid spans rejected"));
    assert_non_null(strstr(msg, "trace_id of 15 bytes"));
    am_arena_unref(arena);
    free(buf);
}

static void test_auth(void **state)
{
    (void)state;
    am__otlp_auth_cfg_t auth = {.set = true, .bearer_token = "s3cret"};
    assert_true(am__otlp_auth_ok(&auth, "Bearer s3cret", 13));
    assert_true(am__otlp_auth_ok(&auth, "bearer s3cret", 13));
    assert_false(am__otlp_auth_ok(&auth, "Bearer s3cre", 12));
    assert_false(am__otlp_auth_ok(&auth, "Bearer s3cretX", 14));
    assert_false(am__otlp_auth_ok(&auth, "Basic s3cret", 12));
    assert_false(am__otlp_auth_ok(&auth, NULL, 0));
    am__otlp_auth_cfg_t off = {0};
    assert_true(am__otlp_auth_ok(&off, NULL, 0));
}

/* ---- export with a fake pipeline -------------------------------------- */

typedef struct fake_next {
    am_consumer_t consumer;
    am_status_t answer;
    size_t batches;
    size_t spans;
} fake_next_t;

static am_status_t fake_consume(am_consumer_t *self, am_batch_t *batch)
{
    fake_next_t *fake = (fake_next_t *)self;
    fake->batches++;
    fake->spans += batch->span_count;
    assert_non_null(batch->traces);
    return fake->answer;
}

static void test_export(void **state)
{
    (void)state;
    fake_next_t next = {.consumer = {.consume = fake_consume}};
    am__otlp_receiver_t rcv;
    memset(&rcv, 0, sizeof(rcv));
    rcv.id = "otlp";
    rcv.next = &next.consumer;
    rcv.limits = default_limits;
    for (int t = 0; t < AM__OTLP_N_TRANSPORTS; t++) {
        rcv.accepted[t] =
            am_selfmetrics_counter("test_accepted", "", t == 0 ? "t=\"0\"" : "t=\"1\"");
        rcv.refused[t] = am_selfmetrics_counter("test_refused", "", t == 0 ? "t=\"0\"" : "t=\"1\"");
    }
    uint64_t accepted0 = am_counter_get(rcv.accepted[0]);
    uint64_t refused0 = am_counter_get(rcv.refused[0]);

    size_t len;
    uint8_t *buf = pack_request(10, 2, 5, &len); /* spans 0 and 5 bad */
    am__otlp_reply_t reply;
    next.answer = AM_OK;
    am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, buf, len, &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_OK);
    assert_int_equal(reply.rejected_spans, 2);
    assert_non_null(strstr(reply.partial_message, "2 invalid spans"));
    assert_int_equal(next.batches, 1);
    assert_int_equal(next.spans, 8);
    assert_int_equal(am_counter_get(rcv.accepted[0]) - accepted0, 8);
    assert_int_equal(am_counter_get(rcv.refused[0]) - refused0, 2);

    next.answer = AM_RETRY;
    am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, buf, len, &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_UNAVAILABLE);
    assert_int_equal(reply.rejected_spans, 0);
    next.answer = AM_PERMANENT;
    am__otlp_export(&rcv, AM__OTLP_HTTP, AM__OTLP_PROTOBUF, buf, len, &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_INVALID_ARGUMENT);
    free(buf);

    /* Garbage never reaches the pipeline. */
    size_t before = next.batches;
    next.answer = AM_OK;
    am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, (const uint8_t *)"\xff\xff\xff", 3,
                    &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_INVALID_ARGUMENT);
    assert_int_equal(next.batches, before);

    /* All spans invalid: OK with partial success, nothing pushed. */
    buf = pack_request(3, 1, 1, &len);
    am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, buf, len, &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_OK);
    assert_int_equal(reply.rejected_spans, 3);
    assert_int_equal(next.batches, before);
    free(buf);

    /* An empty request is a valid, empty export. */
    am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, (const uint8_t *)"", 0, &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_OK);
    assert_int_equal(next.batches, before);

    rcv.shutting_down = true;
    am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, (const uint8_t *)"", 0, &reply);
    assert_int_equal(reply.grpc_code, AM__GRPC_UNAVAILABLE);
    am_selfmetrics_reset();
}

/* Fail the N-th allocation, for every N, through decompression, decoding
 * and export: each failure is answered (UNAVAILABLE: retryable) and
 * nothing leaks (valgrind/ASan prove the second part). */
static void test_failmalloc(void **state)
{
    (void)state;
    fake_next_t next = {.consumer = {.consume = fake_consume}, .answer = AM_OK};
    am__otlp_receiver_t rcv;
    memset(&rcv, 0, sizeof(rcv));
    rcv.id = "otlp";
    rcv.next = &next.consumer;
    rcv.limits = default_limits;
    for (int t = 0; t < AM__OTLP_N_TRANSPORTS; t++) {
        rcv.accepted[t] = am_selfmetrics_counter("fm_accepted", "", NULL);
        rcv.refused[t] = am_selfmetrics_counter("fm_refused", "", NULL);
    }
    size_t len;
    uint8_t *plain = pack_request(30, 4, 7, &len);
    size_t gz_len;
    uint8_t *gz = gzip_bytes(plain, len, &gz_len);
    uint8_t framed[5 + 4096];
    assert_true(gz_len <= 4096);
    prefix(framed, 1, (uint32_t)gz_len);
    memcpy(framed + 5, gz, gz_len);
    bool completed = false;
    for (long nth = 1; nth < 10000 && !completed; nth++) {
        am_alloc_set_fail_after(nth);
        char err[256];
        am__otlp_frame_t frame;
        am__otlp_frame_init(&frame, 1u << 20);
        int code = am__otlp_frame_feed(&frame, framed, 5 + gz_len, err, sizeof(err));
        if (code == 0) {
            code = am__otlp_frame_finish(&frame, err, sizeof(err));
        }
        const uint8_t *msg;
        size_t msg_len;
        uint8_t *owned = NULL;
        if (code == 0) {
            code = am__otlp_frame_unwrap(&frame, AM__OTLP_ENC_GZIP, &msg, &msg_len, &owned, err,
                                         sizeof(err));
        }
        am__otlp_reply_t reply;
        if (code == 0) {
            am__otlp_export(&rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, msg, msg_len, &reply);
            code = reply.grpc_code;
        }
        am_free(owned);
        am__otlp_frame_free(&frame);
        long made = am_alloc_set_fail_after(0);
        if (code != AM__GRPC_OK) {
            if (code != AM__GRPC_UNAVAILABLE) {
                fail_msg("allocation %ld failed: got %s, want UNAVAILABLE", nth,
                         am__otlp_grpc_code_name(code));
            }
        }
        completed = made < nth; /* the failure point was never reached */
    }
    assert_true(completed);
    assert_true(next.batches > 0);
    free(plain);
    free(gz);
    am_selfmetrics_reset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_split_anywhere),
        cmocka_unit_test(test_frame_oversize_refused_before_buffering),
        cmocka_unit_test(test_frame_grows_with_data_not_claims),
        cmocka_unit_test(test_frame_truncated),
        cmocka_unit_test(test_frame_second_message_and_bad_flag),
        cmocka_unit_test(test_frame_compressed_flag_without_encoding),
        cmocka_unit_test(test_frame_budget),
        cmocka_unit_test(test_grpc_message_encoding),
        cmocka_unit_test(test_prescan_accepts_valid),
        cmocka_unit_test(test_prescan_depth),
        cmocka_unit_test(test_prescan_counts),
        cmocka_unit_test(test_prescan_malformed),
        cmocka_unit_test(test_prescan_expansion_bomb),
        cmocka_unit_test(test_check_limits_decoded),
        cmocka_unit_test(test_json_prescan),
        cmocka_unit_test(test_decompress_roundtrip),
        cmocka_unit_test(test_decompression_bombs_bounded),
        cmocka_unit_test(test_status_mapping),
        cmocka_unit_test(test_drop_invalid_spans),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_export),
        cmocka_unit_test(test_failmalloc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
