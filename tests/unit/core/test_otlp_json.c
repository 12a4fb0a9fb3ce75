/*
 * test_otlp_json.c - the OTLP/JSON traces codec against what real senders
 * send and what the rest of agentmeter assumes.
 *
 * The main fixture is the exact body the OpenTelemetry JS SDK's
 * exporter-trace-otlp-http (JsonTraceSerializer, otlp-transformer 0.223)
 * produced for two agent spans: hex ids, times as decimal strings, intValue
 * as JSON numbers, bytes in base64, nested arrays and kvlists, an event, a
 * link and an error status.  Beyond field-by-field checks, two properties
 * tie the codec to protobuf-c: the decoded request packs and unpacks to an
 * equal request (so JSON and protobuf requests are interchangeable), and
 * decode -> encode -> decode is lossless.  Equality is a generic walk over
 * the protobuf-c descriptors, so it covers every field, count and oneof case
 * without a hand-written comparison per message.  Every error path must name
 * the field it rejects; a failmalloc sweep proves that no allocation failure
 * crashes or leaks (ASan/LSan in CI).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_arena.h"
#include "am_otlp_json.h"

/* The exact body sent by @opentelemetry/exporter-trace-otlp-http 0.223.1. */
static const char js_sdk_request[] =
    "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\","
    "\"value\":{\"stringValue\":\"agent-svc\"}},{\"key\":\"session.id\",\"value\":{"
    "\"stringValue\":\"sess-42\"}},{\"key\":\"tenant.id\",\"value\":{\"stringValue\":\"acme\"}}],"
    "\"droppedAttributesCount\":0},\"scopeSpans\":[{\"scope\":{\"name\":\"@agentmeter/test\","
    "\"version\":\"1.2.3\"},\"spans\":[{\"traceId\":\"5b8efff798038103d269b633813fc60c\","
    "\"spanId\":\"eee19b7ec3c1b174\",\"name\":\"invoke_agent planner\",\"kind\":1,"
    "\"startTimeUnixNano\":\"1700000000123456789\",\"endTimeUnixNano\":\"1700000002500000000\","
    "\"attributes\":[{\"key\":\"gen_ai.operation.name\",\"value\":{\"stringValue\":\"invoke_"
    "agent\"}},"
    "{\"key\":\"gen_ai.agent.name\",\"value\":{\"stringValue\":\"planner\"}}],"
    "\"droppedAttributesCount\":0,\"events\":[],\"droppedEventsCount\":0,\"status\":{"
    "\"code\":0},\"links\":[],\"droppedLinksCount\":0,\"flags\":257},{\"traceId\":"
    "\"5b8efff798038103d269b633813fc60c\","
    "\"spanId\":\"7a2190d5c8b7f1e3\",\"parentSpanId\":\"eee19b7ec3c1b174\",\"name\":\"chat "
    "gpt-4o\","
    "\"kind\":3,\"startTimeUnixNano\":\"1700000000200000000\",\"endTimeUnixNano\":"
    "\"1700000001900000000\","
    "\"attributes\":[{\"key\":\"gen_ai.request.model\",\"value\":{\"stringValue\":\"gpt-4o\"}},"
    "{\"key\":\"gen_ai.usage.input_tokens\",\"value\":{\"intValue\":1200}},{\"key\":\"gen_ai.usage."
    "output_tokens\","
    "\"value\":{\"intValue\":350}},{\"key\":\"gen_ai.request.temperature\",\"value\":{"
    "\"doubleValue\":0.7}},{\"key\":\"gen_ai.stream\",\"value\":{\"boolValue\":true}},"
    "{\"key\":\"gen_ai.response.finish_reasons\",\"value\":{\"arrayValue\":{\"values\":["
    "{\"stringValue\":\"stop\"},{\"stringValue\":\"length\"}]}}},{\"key\":\"neg\","
    "\"value\":{\"intValue\":-42}},{\"key\":\"big\",\"value\":{\"intValue\":9007199254740991}},"
    "{\"key\":\"blob\",\"value\":{\"bytesValue\":\"AAEC+v8=\"}},{\"key\":\"nested\","
    "\"value\":{\"kvlistValue\":{\"values\":[{\"key\":\"a\",\"value\":{\"stringValue\":\"x\"}},"
    "{\"key\":\"b\",\"value\":{\"arrayValue\":{\"values\":[{\"intValue\":1},{"
    "\"arrayValue\":{\"values\":[{\"intValue\":2},{\"stringValue\":\"three\"}]}},"
    "{\"kvlistValue\":{\"values\":[{\"key\":\"deep\",\"value\":{\"boolValue\":false}}]}}]}}},"
    "{\"key\":\"c\",\"value\":{\"doubleValue\":1.5}}]}}},{\"key\":\"unicode\","
    "\"value\":{\"stringValue\":\"café 😀 \\\"q\\\" \\\\ \\n\\t\"}}],\"droppedAttributesCount\":3,"
    "\"events\":[{\"attributes\":[{\"key\":\"index\",\"value\":{\"intValue\":0}},"
    "{\"key\":\"finish_reason\",\"value\":{\"stringValue\":\"stop\"}}],\"name\":\"gen_ai.choice\","
    "\"timeUnixNano\":\"1700000001800000000\",\"droppedAttributesCount\":1}],"
    "\"droppedEventsCount\":0,\"status\":{\"code\":2,\"message\":\"rate limited\"},"
    "\"links\":[{\"attributes\":[{\"key\":\"link.kind\",\"value\":{\"stringValue\":\"retry\"}}],"
    "\"spanId\":\"b7ad6b7169203331\",\"traceId\":\"0af7651916cd43dd8448eb211c80319c\","
    "\"traceState\":\"congo=t61rcWkgMzE\",\"droppedAttributesCount\":0,\"flags\":769}],"
    "\"droppedLinksCount\":0,\"flags\":257}],\"schemaUrl\":\"https://opentelemetry.io/schemas/"
    "1.26.0\"}]}]}";

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct decoded {
    am_arena_t *arena;
    am_pb_export_req_t *req;
    int rc;
    char err[AM_OTLP_JSON_ERR_SIZE];
} decoded_t;

static void decode_into(decoded_t *dec, const char *json, size_t len)
{
    dec->arena = am_arena_new(1024);
    assert_non_null(dec->arena);
    dec->req = (am_pb_export_req_t *)(uintptr_t)0x1; /* must be overwritten */
    dec->rc =
        am_otlp_json_decode_traces(dec->arena, json, len, &dec->req, dec->err, sizeof(dec->err));
}

static void decode_ok(decoded_t *dec, const char *json)
{
    decode_into(dec, json, strlen(json));
    if (dec->rc != 0) {
        fail_msg("decode failed (%d): %s", dec->rc, dec->err);
    }
    assert_non_null(dec->req);
    assert_true(protobuf_c_message_check(&dec->req->base));
}

static void decoded_free(decoded_t *dec)
{
    am_arena_unref(dec->arena);
    dec->arena = NULL;
}

/* Decoding must fail with AM_EINVAL, *out NULL, and an error containing `want`. */
static void expect_error(const char *json, const char *want)
{
    decoded_t dec;
    decode_into(&dec, json, strlen(json));
    if (dec.rc != AM_EINVAL || strstr(dec.err, want) == NULL) {
        fail_msg("input %s\n  rc %d, error \"%s\"\n  wanted AM_EINVAL and \"%s\"", json, dec.rc,
                 dec.err, want);
    }
    assert_null(dec.req);
    decoded_free(&dec);
}

static const am_pb_span_t *first_span(const am_pb_export_req_t *req, size_t index)
{
    assert_true(req->n_resource_spans >= 1);
    assert_true(req->resource_spans[0]->n_scope_spans >= 1);
    assert_true(req->resource_spans[0]->scope_spans[0]->n_spans > index);
    return req->resource_spans[0]->scope_spans[0]->spans[index];
}

static const am_pb_anyvalue_t *attr(am_pb_keyvalue_t *const *attrs, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(attrs[i]->key, key) == 0) {
            return attrs[i]->value;
        }
    }
    fail_msg("attribute %s missing", key);
    return NULL;
}

static void assert_bytes(ProtobufCBinaryData got, const char *hex)
{
    char text[256] = "";
    for (size_t i = 0; i < got.len && i < 127; i++) {
        snprintf(text + 2 * i, 3, "%02x", got.data[i]);
    }
    assert_string_equal(text, hex);
}

/*
 * Deep equality of two protobuf-c messages of the same type, driven by the
 * descriptors: every field, every repeated count, every oneof case.  Strings
 * must be non-NULL on both sides (unpack never produces NULL strings).
 * Doubles compare by bits, so NaN and -0.0 count.
 */
static void assert_msg_equal(const ProtobufCMessage *a, const ProtobufCMessage *b,
                             const char *where);

static void assert_value_equal(const ProtobufCFieldDescriptor *field, const void *a, const void *b,
                               const char *where)
{
    switch (field->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *sa = *(char *const *)a;
        const char *sb = *(char *const *)b;
        if (sa == NULL || sb == NULL || strcmp(sa, sb) != 0) {
            fail_msg("%s.%s: \"%s\" != \"%s\"", where, field->name, sa ? sa : "(null)",
                     sb ? sb : "(null)");
        }
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *ba = a;
        const ProtobufCBinaryData *bb = b;
        if (ba->len != bb->len || (ba->len > 0 && memcmp(ba->data, bb->data, ba->len) != 0)) {
            fail_msg("%s.%s: bytes differ (%zu vs %zu bytes)", where, field->name, ba->len,
                     bb->len);
        }
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *ma = *(ProtobufCMessage *const *)a;
        const ProtobufCMessage *mb = *(ProtobufCMessage *const *)b;
        if ((ma == NULL) != (mb == NULL)) {
            fail_msg("%s.%s: present on one side only", where, field->name);
        }
        if (ma != NULL) {
            char sub[512];
            snprintf(sub, sizeof(sub), "%s.%s", where, field->name);
            assert_msg_equal(ma, mb, sub);
        }
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (*(const protobuf_c_boolean *)a != *(const protobuf_c_boolean *)b) {
            fail_msg("%s.%s: bools differ", where, field->name);
        }
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        if (memcmp(a, b, 8) != 0) {
            fail_msg("%s.%s: 64-bit values differ", where, field->name);
        }
        break;
    default: /* 32-bit scalars and enums */
        if (memcmp(a, b, 4) != 0) {
            fail_msg("%s.%s: 32-bit values differ", where, field->name);
        }
        break;
    }
}

static size_t value_size(const ProtobufCFieldDescriptor *field)
{
    switch (field->type) {
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    default:
        return 4;
    }
}

static void assert_msg_equal(const ProtobufCMessage *a, const ProtobufCMessage *b,
                             const char *where)
{
    assert_ptr_equal(a->descriptor, b->descriptor);
    const ProtobufCMessageDescriptor *desc = a->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[i];
        const char *pa = (const char *)a + field->offset;
        const char *pb = (const char *)b + field->offset;
        if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t case_a = *(const uint32_t *)((const char *)a + field->quantifier_offset);
            uint32_t case_b = *(const uint32_t *)((const char *)b + field->quantifier_offset);
            if (case_a != case_b) {
                fail_msg("%s: oneof case %u != %u", where, case_a, case_b);
            }
            if (case_a == field->id) {
                assert_value_equal(field, pa, pb, where);
            }
            continue;
        }
        if (field->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t na = *(const size_t *)((const char *)a + field->quantifier_offset);
            size_t nb = *(const size_t *)((const char *)b + field->quantifier_offset);
            if (na != nb) {
                fail_msg("%s.%s: %zu != %zu elements", where, field->name, na, nb);
            }
            const char *arr_a = *(char *const *)pa;
            const char *arr_b = *(char *const *)pb;
            size_t step = value_size(field);
            for (size_t k = 0; k < na; k++) {
                char elem[512];
                snprintf(elem, sizeof(elem), "%s[%zu]", where, k);
                assert_value_equal(field, arr_a + k * step, arr_b + k * step, elem);
            }
            continue;
        }
        assert_value_equal(field, pa, pb, where);
    }
}

static void assert_req_equal(const am_pb_export_req_t *a, const am_pb_export_req_t *b)
{
    assert_msg_equal(&a->base, &b->base, "request");
    /* And protobuf-c agrees: both pack to the same bytes. */
    size_t len_a = protobuf_c_message_get_packed_size(&a->base);
    size_t len_b = protobuf_c_message_get_packed_size(&b->base);
    assert_int_equal(len_a, len_b);
    uint8_t *buf_a = malloc(len_a + 1);
    uint8_t *buf_b = malloc(len_b + 1);
    assert_int_equal(protobuf_c_message_pack(&a->base, buf_a), len_a);
    assert_int_equal(protobuf_c_message_pack(&b->base, buf_b), len_b);
    assert_memory_equal(buf_a, buf_b, len_a);
    free(buf_a);
    free(buf_b);
}

static char *encode_ok(const am_pb_export_req_t *req, size_t *len)
{
    char *json = NULL;
    size_t json_len = 0;
    assert_int_equal(am_otlp_json_encode_traces(req, &json, &json_len), 0);
    assert_non_null(json);
    assert_int_equal(strlen(json), json_len);
    if (len != NULL) {
        *len = json_len;
    }
    return json;
}

#define SPAN_PREFIX "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{"
#define SPAN_SUFFIX "}]}]}]}"
#define SPAN(fields) SPAN_PREFIX fields SPAN_SUFFIX
#define ATTR(value) SPAN("\"attributes\":[{\"key\":\"k\",\"value\":" value "}]")
#define SPAN_PATH "resourceSpans[0].scopeSpans[0].spans[0]."
#define ATTR_PATH SPAN_PATH "attributes[0].value."

/* ------------------------------------------------------------------------ */
/* Decoding what the JS SDK sends                                           */
/* ------------------------------------------------------------------------ */

static void test_decode_js_sdk_request(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, js_sdk_request);
    const am_pb_export_req_t *req = dec.req;

    assert_int_equal(req->n_resource_spans, 1);
    const am_pb_resource_spans_t *rs = req->resource_spans[0];
    assert_non_null(rs->resource);
    assert_int_equal(rs->resource->n_attributes, 3);
    assert_string_equal(rs->resource->attributes[0]->key, "service.name");
    assert_int_equal(rs->resource->attributes[0]->value->value_case, AM_PB_VALUE(STRING_VALUE));
    assert_string_equal(rs->resource->attributes[0]->value->string_value, "agent-svc");
    assert_string_equal(
        attr(rs->resource->attributes, rs->resource->n_attributes, "tenant.id")->string_value,
        "acme");
    assert_int_equal(rs->resource->dropped_attributes_count, 0);
    assert_string_equal(rs->schema_url, "");

    assert_int_equal(rs->n_scope_spans, 1);
    const am_pb_scope_spans_t *ss = rs->scope_spans[0];
    assert_non_null(ss->scope);
    assert_string_equal(ss->scope->name, "@agentmeter/test");
    assert_string_equal(ss->scope->version, "1.2.3");
    assert_int_equal(ss->scope->n_attributes, 0);
    assert_null(ss->scope->attributes);
    assert_string_equal(ss->schema_url, "https://opentelemetry.io/schemas/1.26.0");
    assert_int_equal(ss->n_spans, 2);

    /* The root agent step. */
    const am_pb_span_t *root = ss->spans[0];
    assert_bytes(root->trace_id, "5b8efff798038103d269b633813fc60c");
    assert_bytes(root->span_id, "eee19b7ec3c1b174");
    assert_int_equal(root->parent_span_id.len, 0);
    assert_null(root->parent_span_id.data);
    assert_string_equal(root->name, "invoke_agent planner");
    assert_int_equal(root->kind,
                     OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_INTERNAL);
    assert_true(root->start_time_unix_nano == UINT64_C(1700000000123456789));
    assert_true(root->end_time_unix_nano == UINT64_C(1700000002500000000));
    assert_int_equal(root->flags, 257);
    assert_string_equal(root->trace_state, "");
    assert_int_equal(root->n_events, 0);
    assert_null(root->events);
    assert_int_equal(root->n_links, 0);
    assert_non_null(root->status);
    assert_int_equal(root->status->code, 0);
    assert_string_equal(root->status->message, "");

    /* The LLM call: every AnyValue type. */
    const am_pb_span_t *chat = ss->spans[1];
    assert_bytes(chat->parent_span_id, "eee19b7ec3c1b174");
    assert_int_equal(chat->kind,
                     OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT);
    assert_int_equal(chat->dropped_attributes_count, 3);
    am_pb_keyvalue_t *const *attrs = chat->attributes;
    size_t n_attrs = chat->n_attributes;
    assert_int_equal(n_attrs, 11);
    const am_pb_anyvalue_t *v = attr(attrs, n_attrs, "gen_ai.usage.input_tokens");
    assert_int_equal(v->value_case, AM_PB_VALUE(INT_VALUE));
    assert_int_equal(v->int_value, 1200);
    v = attr(attrs, n_attrs, "neg");
    assert_int_equal(v->int_value, -42);
    v = attr(attrs, n_attrs, "big");
    assert_true(v->int_value == INT64_C(9007199254740991));
    v = attr(attrs, n_attrs, "gen_ai.request.temperature");
    assert_int_equal(v->value_case, AM_PB_VALUE(DOUBLE_VALUE));
    assert_true(v->double_value == 0.7);
    v = attr(attrs, n_attrs, "gen_ai.stream");
    assert_int_equal(v->value_case, AM_PB_VALUE(BOOL_VALUE));
    assert_true(v->bool_value);
    v = attr(attrs, n_attrs, "gen_ai.response.finish_reasons");
    assert_int_equal(v->value_case, AM_PB_VALUE(ARRAY_VALUE));
    assert_int_equal(v->array_value->n_values, 2);
    assert_string_equal(v->array_value->values[1]->string_value, "length");
    v = attr(attrs, n_attrs, "blob");
    assert_int_equal(v->value_case, AM_PB_VALUE(BYTES_VALUE));
    assert_bytes(v->bytes_value, "000102faff");
    v = attr(attrs, n_attrs, "unicode");
    assert_string_equal(v->string_value, "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\" \\ \n\t");

    /* nested = {a: "x", b: [1, [2, "three"], {deep: false}], c: 1.5} */
    v = attr(attrs, n_attrs, "nested");
    assert_int_equal(v->value_case, AM_PB_VALUE(KVLIST_VALUE));
    const am_pb_kvlist_t *kvl = v->kvlist_value;
    assert_int_equal(kvl->n_values, 3);
    assert_string_equal(kvl->values[0]->key, "a");
    assert_string_equal(kvl->values[0]->value->string_value, "x");
    const am_pb_arrayvalue_t *b = kvl->values[1]->value->array_value;
    assert_int_equal(b->n_values, 3);
    assert_int_equal(b->values[0]->int_value, 1);
    assert_int_equal(b->values[1]->value_case, AM_PB_VALUE(ARRAY_VALUE));
    assert_int_equal(b->values[1]->array_value->values[0]->int_value, 2);
    assert_string_equal(b->values[1]->array_value->values[1]->string_value, "three");
    assert_int_equal(b->values[2]->value_case, AM_PB_VALUE(KVLIST_VALUE));
    assert_string_equal(b->values[2]->kvlist_value->values[0]->key, "deep");
    assert_int_equal(b->values[2]->kvlist_value->values[0]->value->value_case,
                     AM_PB_VALUE(BOOL_VALUE));
    assert_false(b->values[2]->kvlist_value->values[0]->value->bool_value);
    assert_true(kvl->values[2]->value->double_value == 1.5);

    assert_int_equal(chat->n_events, 1);
    const am_pb_span_event_t *ev = chat->events[0];
    assert_string_equal(ev->name, "gen_ai.choice");
    assert_true(ev->time_unix_nano == UINT64_C(1700000001800000000));
    assert_int_equal(ev->n_attributes, 2);
    assert_int_equal(ev->attributes[0]->value->int_value, 0);
    assert_int_equal(ev->attributes[0]->value->value_case, AM_PB_VALUE(INT_VALUE));
    assert_int_equal(ev->dropped_attributes_count, 1);

    assert_int_equal(chat->n_links, 1);
    const am_pb_span_link_t *link = chat->links[0];
    assert_bytes(link->trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_bytes(link->span_id, "b7ad6b7169203331");
    assert_string_equal(link->trace_state, "congo=t61rcWkgMzE");
    assert_int_equal(link->flags, 769);
    assert_string_equal(link->attributes[0]->value->string_value, "retry");

    assert_int_equal(chat->status->code, AM_PB_STATUS_ERROR);
    assert_string_equal(chat->status->message, "rate limited");
    decoded_free(&dec);
}

/* JSON and protobuf requests are interchangeable: pack + unpack is lossless. */
static void test_decode_then_pack_unpack_equal(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, js_sdk_request);
    size_t len = protobuf_c_message_get_packed_size(&dec.req->base);
    uint8_t *wire = malloc(len);
    assert_int_equal(protobuf_c_message_pack(&dec.req->base, wire), len);

    am_arena_t *arena = am_arena_new(4096);
    ProtobufCAllocator alloc = am_arena_allocator(arena);
    am_pb_export_req_t *unpacked =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(&alloc,
                                                                                         len, wire);
    assert_non_null(unpacked);
    assert_req_equal(dec.req, unpacked);
    free(wire);
    am_arena_unref(arena);
    decoded_free(&dec);
}

/* decode -> encode -> decode is lossless, and encoding is then stable. */
static void test_roundtrip_decode_encode_decode(void **state)
{
    (void)state;
    decoded_t first;
    decode_ok(&first, js_sdk_request);
    size_t len1;
    char *json1 = encode_ok(first.req, &len1);

    decoded_t second;
    decode_ok(&second, json1);
    assert_req_equal(first.req, second.req);

    size_t len2;
    char *json2 = encode_ok(second.req, &len2);
    assert_string_equal(json1, json2);
    am_free(json1);
    am_free(json2);
    decoded_free(&first);
    decoded_free(&second);
}

/* ------------------------------------------------------------------------ */
/* Accepted variants                                                        */
/* ------------------------------------------------------------------------ */

static void test_snake_case_enum_names_and_number_forms(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec,
              "{\"resource_spans\":[{\"scope_spans\":[{\"spans\":[{"
              "\"trace_id\":\"5B8EFFF798038103D269B633813FC60C\",\"span_id\":\"00f067aa0ba902b7\","
              "\"parent_span_id\":\"\",\"kind\":\"SPAN_KIND_SERVER\","
              "\"start_time_unix_nano\":1700000000000000000,"
              "\"end_time_unix_nano\":\"18446744073709551615\","
              "\"dropped_attributes_count\":\"7\",\"flags\":1.0,"
              "\"attributes\":[{\"key\":\"a\",\"value\":{\"int_value\":\"-9223372036854775808\"}},"
              "{\"key\":\"b\",\"value\":{\"double_value\":\"NaN\"}},"
              "{\"key\":\"c\",\"value\":{\"doubleValue\":\"-Infinity\"}},"
              "{\"key\":\"d\",\"value\":{\"doubleValue\":3}},"
              "{\"key\":\"e\",\"value\":{\"doubleValue\":\"2.5e-3\"}},"
              "{\"key\":\"f\",\"value\":{\"bytes_value\":\"-_8\"}},"
              "{\"key\":\"g\",\"value\":{\"kvlist_value\":{\"values\":[]}}},"
              "{\"key\":\"h\",\"value\":{\"array_value\":{}}},"
              "{\"key\":\"i\",\"value\":{\"intValue\":9223372036854775807}},"
              "{\"key\":\"j\",\"value\":{\"string_value\":\"\"}},"
              "{\"key\":\"k\",\"value\":{}}],"
              "\"status\":{\"code\":\"STATUS_CODE_ERROR\"}},"
              "{\"kind\":42,\"status\":{\"code\":1}}]}],\"schema_url\":\"s\"}]}\n");
    const am_pb_span_t *span = first_span(dec.req, 0);
    assert_bytes(span->trace_id, "5b8efff798038103d269b633813fc60c");
    assert_bytes(span->span_id, "00f067aa0ba902b7");
    assert_int_equal(span->parent_span_id.len, 0);
    assert_int_equal(span->kind,
                     OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_SERVER);
    assert_true(span->start_time_unix_nano == UINT64_C(1700000000000000000));
    assert_true(span->end_time_unix_nano == UINT64_MAX);
    assert_int_equal(span->dropped_attributes_count, 7);
    assert_int_equal(span->flags, 1);
    am_pb_keyvalue_t *const *attrs = span->attributes;
    size_t n = span->n_attributes;
    assert_true(attr(attrs, n, "a")->int_value == INT64_MIN);
    assert_true(isnan(attr(attrs, n, "b")->double_value));
    assert_true(isinf(attr(attrs, n, "c")->double_value) && attr(attrs, n, "c")->double_value < 0);
    assert_true(attr(attrs, n, "d")->double_value == 3.0);
    assert_true(attr(attrs, n, "e")->double_value == 2.5e-3);
    assert_bytes(attr(attrs, n, "f")->bytes_value, "fbff");
    assert_int_equal(attr(attrs, n, "g")->value_case, AM_PB_VALUE(KVLIST_VALUE));
    assert_int_equal(attr(attrs, n, "g")->kvlist_value->n_values, 0);
    assert_int_equal(attr(attrs, n, "h")->value_case, AM_PB_VALUE(ARRAY_VALUE));
    assert_non_null(attr(attrs, n, "h")->array_value);
    assert_true(attr(attrs, n, "i")->int_value == INT64_MAX);
    assert_int_equal(attr(attrs, n, "j")->value_case, AM_PB_VALUE(STRING_VALUE));
    assert_string_equal(attr(attrs, n, "j")->string_value, "");
    assert_int_equal(attr(attrs, n, "k")->value_case, AM_PB_VALUE(_NOT_SET));
    assert_int_equal(span->status->code, AM_PB_STATUS_ERROR);
    assert_string_equal(dec.req->resource_spans[0]->schema_url, "s");
    /* Unknown enum numbers are kept (proto3 enums are open). */
    assert_int_equal(first_span(dec.req, 1)->kind, 42);
    assert_int_equal(first_span(dec.req, 1)->status->code, 1);
    decoded_free(&dec);
}

/* The receiver, not the codec, rejects ids of the wrong length. */
static void test_id_lengths_are_kept(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{"
                    "\"traceId\":\"5b8efff798038103d269b633813fc6\",\"spanId\":\"abcdef\","
                    "\"links\":[{\"traceId\":\"\",\"spanId\":\"00\"}]}]}]}]}");
    const am_pb_span_t *span = first_span(dec.req, 0);
    assert_int_equal(span->trace_id.len, 15);
    assert_bytes(span->trace_id, "5b8efff798038103d269b633813fc6");
    assert_bytes(span->span_id, "abcdef");
    assert_int_equal(span->links[0]->trace_id.len, 0);
    assert_bytes(span->links[0]->span_id, "00");
    decoded_free(&dec);
}

static void test_null_means_default(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, "{\"resourceSpans\":[{\"resource\":null,\"schemaUrl\":null,\"scopeSpans\":[{"
                    "\"scope\":null,\"spans\":[{\"traceId\":null,\"name\":null,\"kind\":null,"
                    "\"startTimeUnixNano\":null,\"attributes\":null,\"events\":null,"
                    "\"status\":null,\"flags\":null,"
                    "\"links\":[{\"attributes\":[{\"key\":\"k\",\"value\":null}]}]},"
                    "{\"attributes\":[{\"key\":null,\"value\":{\"stringValue\":null,"
                    "\"intValue\":5}}]}]}]}]}");
    const am_pb_resource_spans_t *rs = dec.req->resource_spans[0];
    assert_null(rs->resource);
    assert_string_equal(rs->schema_url, "");
    assert_null(rs->scope_spans[0]->scope);
    const am_pb_span_t *span = first_span(dec.req, 0);
    assert_int_equal(span->trace_id.len, 0);
    assert_string_equal(span->name, "");
    assert_int_equal(span->kind, 0);
    assert_true(span->start_time_unix_nano == 0);
    assert_int_equal(span->n_attributes, 0);
    assert_null(span->status);
    assert_string_equal(span->links[0]->attributes[0]->key, "k");
    assert_null(span->links[0]->attributes[0]->value);
    const am_pb_anyvalue_t *v = first_span(dec.req, 1)->attributes[0]->value;
    assert_string_equal(first_span(dec.req, 1)->attributes[0]->key, "");
    assert_int_equal(v->value_case, AM_PB_VALUE(INT_VALUE));
    assert_int_equal(v->int_value, 5);
    decoded_free(&dec);

    decode_ok(&dec, "{}");
    assert_int_equal(dec.req->n_resource_spans, 0);
    assert_null(dec.req->resource_spans);
    decoded_free(&dec);
    decode_ok(&dec, " \r\n\t{\"resourceSpans\":[]} \n");
    assert_int_equal(dec.req->n_resource_spans, 0);
    decoded_free(&dec);
}

static void test_unknown_fields_ignored(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, "{\"future\":{\"x\":[1,{\"y\":null}]},\"resourceSpans\":[{\"entity\":1,"
                    "\"resource\":{\"nope\":[],\"attributes\":[{\"key\":\"k\",\"extra\":true,"
                    "\"value\":{\"mystery\":{\"a\":[[[]]]},\"stringValue\":\"v\"}}]},"
                    "\"scopeSpans\":[{\"scope\":{\"name\":\"s\",\"unknown\":\"u\"},\"spans\":[{"
                    "\"name\":\"n\",\"TraceId\":\"zz\",\"trace_ID\":\"zz\",\"newField\":{},"
                    "\"status\":{\"why\":1}}]}]}],\"resourceLogs\":[]}");
    const am_pb_resource_spans_t *rs = dec.req->resource_spans[0];
    assert_string_equal(rs->resource->attributes[0]->value->string_value, "v");
    assert_string_equal(rs->scope_spans[0]->scope->name, "s");
    const am_pb_span_t *span = first_span(dec.req, 0);
    assert_string_equal(span->name, "n");
    /* Only the exact camelCase or proto name selects a field. */
    assert_int_equal(span->trace_id.len, 0);
    assert_non_null(span->status);
    decoded_free(&dec);
}

/* Repeated keys, or a field under both names: the last one wins. */
static void test_duplicate_keys_last_wins(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, SPAN("\"name\":\"first\",\"name\":\"second\","
                         "\"spanId\":\"0000000000000001\",\"span_id\":\"0000000000000002\","
                         "\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":\"x\","
                         "\"intValue\":\"5\"}}],\"attributes\":[]"));
    const am_pb_span_t *span = first_span(dec.req, 0);
    assert_string_equal(span->name, "second");
    assert_bytes(span->span_id, "0000000000000002");
    assert_int_equal(span->n_attributes, 0);
    decoded_free(&dec);
    decode_ok(&dec, ATTR("{\"stringValue\":\"x\",\"intValue\":\"5\"}"));
    const am_pb_anyvalue_t *v = first_span(dec.req, 0)->attributes[0]->value;
    assert_int_equal(v->value_case, AM_PB_VALUE(INT_VALUE));
    assert_int_equal(v->int_value, 5);
    decoded_free(&dec);
}

/* Entity refs (resource.proto) decode and survive a round trip too. */
static void test_entity_refs_roundtrip(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, "{\"resourceSpans\":[{\"resource\":{\"entityRefs\":[{\"type\":\"service\","
                    "\"schemaUrl\":\"u\",\"idKeys\":[\"service.name\",\"service.namespace\"],"
                    "\"description_keys\":[\"service.version\"]}],"
                    "\"droppedAttributesCount\":2}}]}");
    const am_pb_resource_t *res = dec.req->resource_spans[0]->resource;
    assert_int_equal(res->n_entity_refs, 1);
    assert_string_equal(res->entity_refs[0]->type, "service");
    assert_int_equal(res->entity_refs[0]->n_id_keys, 2);
    assert_string_equal(res->entity_refs[0]->id_keys[1], "service.namespace");
    assert_string_equal(res->entity_refs[0]->description_keys[0], "service.version");
    size_t len;
    char *json = encode_ok(dec.req, &len);
    assert_string_equal(json, "{\"resourceSpans\":[{\"resource\":{\"droppedAttributesCount\":2,"
                              "\"entityRefs\":[{\"schemaUrl\":\"u\",\"type\":\"service\","
                              "\"idKeys\":[\"service.name\",\"service.namespace\"],"
                              "\"descriptionKeys\":[\"service.version\"]}]}}]}");
    decoded_t again;
    decode_ok(&again, json);
    assert_req_equal(dec.req, again.req);
    am_free(json);
    decoded_free(&again);
    decoded_free(&dec);
}

/* ------------------------------------------------------------------------ */
/* Errors name the field                                                    */
/* ------------------------------------------------------------------------ */

static void test_error_paths(void **state)
{
    (void)state;
    /* The example from the design: the 4th span of the 2nd scope. */
    expect_error("{\"resourceSpans\":[{\"scopeSpans\":[{},{\"spans\":[{},{},{},"
                 "{\"traceId\":\"5b8efff798038103d269b633813fc6zz\"}]}]}]}",
                 "resourceSpans[0].scopeSpans[1].spans[3].traceId: invalid hex");
    expect_error(SPAN("\"spanId\":\"abc\""), SPAN_PATH "spanId: invalid hex: odd length 3");
    expect_error(SPAN("\"parentSpanId\":12"), SPAN_PATH "parentSpanId: expected a hex string");
    expect_error(SPAN("\"links\":[{\"traceId\":\"0g\"}]"),
                 SPAN_PATH "links[0].traceId: invalid hex");
    expect_error(SPAN("\"name\":5"), SPAN_PATH "name: expected a string, got number");
    expect_error(SPAN("\"trace_state\":[]"), SPAN_PATH "traceState: expected a string, got array");
    expect_error("{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":{}}]}]}",
                 "resourceSpans[0].scopeSpans[0].spans: expected an array, got object");
    expect_error("{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[\"x\"]}]}]}",
                 "resourceSpans[0].scopeSpans[0].spans[0]: expected an object, got string");
    expect_error("{\"resourceSpans\":[null]}", "resourceSpans[0]: expected an object, got null");
    expect_error("{\"resourceSpans\":[{\"resource\":[]}]}",
                 "resourceSpans[0].resource: expected an object, got array");
    expect_error(SPAN("\"status\":\"ok\""), SPAN_PATH "status: expected an object, got string");
    expect_error(SPAN("\"status\":{\"code\":\"STATUS_CODE_MAYBE\"}"),
                 SPAN_PATH "status.code: unknown enum value name");
    expect_error(SPAN("\"kind\":true"), SPAN_PATH "kind: expected an enum number or name");
    expect_error(SPAN("\"kind\":4294967296"), SPAN_PATH "kind: enum value out of range");
    expect_error(SPAN("\"startTimeUnixNano\":\"17e8\""),
                 SPAN_PATH "startTimeUnixNano: expected a decimal integer string");
    expect_error(SPAN("\"startTimeUnixNano\":\" 1\""),
                 SPAN_PATH "startTimeUnixNano: expected a decimal integer string");
    expect_error(SPAN("\"endTimeUnixNano\":\"-1\""),
                 SPAN_PATH "endTimeUnixNano: negative value for an unsigned field");
    expect_error(SPAN("\"endTimeUnixNano\":\"18446744073709551616\""),
                 SPAN_PATH "endTimeUnixNano: integer out of range");
    expect_error(SPAN("\"endTimeUnixNano\":18446744073709551616"),
                 SPAN_PATH "endTimeUnixNano: integer out of range");
    expect_error(SPAN("\"endTimeUnixNano\":1.5"), SPAN_PATH "endTimeUnixNano: expected an integer");
    expect_error(SPAN("\"droppedAttributesCount\":4294967296"),
                 SPAN_PATH "droppedAttributesCount: integer out of range");
    expect_error(SPAN("\"droppedLinksCount\":-1"),
                 SPAN_PATH "droppedLinksCount: negative value for an unsigned field");
    expect_error(SPAN("\"flags\":{}"), SPAN_PATH "flags: expected an integer");
    expect_error(SPAN("\"events\":[{\"timeUnixNano\":false}]"),
                 SPAN_PATH "events[0].timeUnixNano: expected an integer");
    expect_error(ATTR("{\"intValue\":\"1.5\"}"), ATTR_PATH "intValue: expected a decimal integer");
    expect_error(ATTR("{\"intValue\":2.5}"), ATTR_PATH "intValue: expected an integer");
    expect_error(ATTR("{\"intValue\":\"9223372036854775808\"}"),
                 ATTR_PATH "intValue: integer out of range for int64");
    expect_error(ATTR("{\"intValue\":-9223372036854775809}"), ATTR_PATH "intValue: integer out");
    expect_error(ATTR("{\"intValue\":true}"), ATTR_PATH "intValue: expected an integer");
    expect_error(ATTR("{\"boolValue\":\"true\"}"), ATTR_PATH "boolValue: expected true or false");
    expect_error(ATTR("{\"doubleValue\":\"fast\"}"), ATTR_PATH "doubleValue: expected a number");
    expect_error(ATTR("{\"doubleValue\":\"0x10\"}"), ATTR_PATH "doubleValue: expected a number");
    expect_error(ATTR("{\"doubleValue\":[]}"), ATTR_PATH "doubleValue: expected a number");
    expect_error(ATTR("{\"bytesValue\":\"a$==\"}"), ATTR_PATH "bytesValue: invalid base64");
    expect_error(ATTR("{\"bytesValue\":\"abcde\"}"), ATTR_PATH "bytesValue: invalid base64");
    expect_error(ATTR("{\"bytesValue\":\"ab=\"}"), ATTR_PATH "bytesValue: invalid base64");
    expect_error(ATTR("{\"stringValue\":1}"), ATTR_PATH "stringValue: expected a string");
    expect_error(ATTR("{\"arrayValue\":{\"values\":[1]}}"),
                 ATTR_PATH "arrayValue.values[0]: expected an object, got number");
    expect_error(ATTR("{\"kvlistValue\":{\"values\":[{\"key\":\"x\",\"value\":{\"intValue\":"
                      "\"x\"}}]}}"),
                 ATTR_PATH "kvlistValue.values[0].value.intValue: expected a decimal");
    expect_error(SPAN("\"attributes\":[null]"),
                 SPAN_PATH "attributes[0]: expected an object, got null");
    expect_error(SPAN("\"attributes\":[{\"key\":{}}]"),
                 SPAN_PATH "attributes[0].key: expected a string, got object");
    expect_error("{\"resourceSpans\":[{\"resource\":{\"entityRefs\":[{\"idKeys\":[\"a\",null]}]}}"
                 "]}",
                 "resourceSpans[0].resource.entityRefs[0].idKeys[1]: expected a string, got null");
    expect_error("{\"resourceSpans\":[{\"scopeSpans\":[{\"scope\":{\"droppedAttributesCount\":"
                 "\"x\"}}]}]}",
                 "resourceSpans[0].scopeSpans[0].scope.droppedAttributesCount: expected a "
                 "decimal integer string");
    /* snake_case input, camelCase path. */
    expect_error("{\"resource_spans\":[{\"scope_spans\":[{\"spans\":[{\"span_id\":\"x\"}]}]}]}",
                 "resourceSpans[0].scopeSpans[0].spans[0].spanId: invalid hex");
}

static void test_malformed_json(void **state)
{
    (void)state;
    const char *valid = "{\"resourceSpans\":[{\"scopeSpans\":[]}]}";
    /* Every proper prefix is truncated (the empty one and pure whitespace too). */
    for (size_t cut = 0; cut < strlen(valid); cut++) {
        decoded_t dec;
        decode_into(&dec, valid, cut);
        assert_int_equal(dec.rc, AM_EINVAL);
        assert_null(dec.req);
        assert_true(strstr(dec.err, "truncated JSON") != NULL || strstr(dec.err, "empty") != NULL);
        decoded_free(&dec);
    }
    expect_error("", "empty body");
    expect_error("  \n", "empty body");
    expect_error("{\"resourceSpans\":[]} x", "trailing data after the JSON object at offset 21");
    expect_error("{\"resourceSpans\":[]}{}", "trailing data");
    expect_error("{}/* comment */", "trailing data");
    expect_error("[]", "expected a JSON object, got array");
    expect_error("\"resourceSpans\"", "expected a JSON object, got string");
    expect_error("null", "expected a JSON object, got null");
    expect_error("-1", "expected a JSON object, got number");
    expect_error("\xef\xbb\xbf{}", "expected a JSON object, got invalid JSON");
    expect_error("{\"resourceSpans\":[],}", "invalid JSON at offset");
    expect_error("{resourceSpans:[]}", "invalid JSON at offset 1");
    expect_error("{\"resourceSpans\":[01]}", "invalid JSON");
    expect_error("{\"a\":\"\xff\"}", "invalid JSON at offset");
    expect_error("{\"a\":\"\xc3\"}", "invalid JSON");
    /* json-c passes these; the codec does not (proto3 strings are UTF-8). */
    expect_error(SPAN("\"name\":\"ok \xed\xa0\x80\""), SPAN_PATH "name: invalid UTF-8 at byte 3");
    expect_error(ATTR("{\"stringValue\":\"\xf4\x90\x80\x80\"}"),
                 ATTR_PATH "stringValue: invalid UTF-8 at byte 0");
    expect_error(SPAN("\"attributes\":[{\"key\":\"\xc0\xaf\"}]"),
                 SPAN_PATH "attributes[0].key: invalid UTF-8 at byte 0");

    /* A NUL byte is not whitespace, inside or after the object. */
    static const char nul_after[] = "{}\0";
    decoded_t dec;
    decode_into(&dec, nul_after, sizeof(nul_after) - 1);
    assert_int_equal(dec.rc, AM_EINVAL);
    assert_non_null(strstr(dec.err, "trailing data after the JSON object at offset 2"));
    decoded_free(&dec);
    static const char nul_inside[] = "{\"a\":\"x\0y\"}";
    decode_into(&dec, nul_inside, sizeof(nul_inside) - 1);
    assert_int_equal(dec.rc, AM_EINVAL);
    decoded_free(&dec);

    /* A small error buffer truncates, a NULL one is allowed. */
    am_arena_t *arena = am_arena_new(0);
    am_pb_export_req_t *req;
    char small[8];
    assert_int_equal(am_otlp_json_decode_traces(arena, "[]", 2, &req, small, sizeof(small)),
                     AM_EINVAL);
    assert_string_equal(small, "expecte");
    assert_int_equal(am_otlp_json_decode_traces(arena, "[]", 2, &req, NULL, 0), AM_EINVAL);
    assert_int_equal(am_otlp_json_decode_traces(NULL, "{}", 2, &req, small, sizeof(small)),
                     AM_EINVAL);
    assert_int_equal(am_otlp_json_decode_traces(arena, "{}", 2, NULL, NULL, 0), AM_EINVAL);
    am_arena_unref(arena);
}

/* Builds {"arrayValue":{"values":[ ... {"intValue":"1"} ... ]}} nested `levels` deep. */
static char *nested_array_value(int levels)
{
    size_t cap = (size_t)levels * 64 + 64;
    char *s = malloc(cap);
    size_t len = 0;
    for (int i = 1; i < levels; i++) {
        len += (size_t)snprintf(s + len, cap - len, "{\"arrayValue\":{\"values\":[");
    }
    len += (size_t)snprintf(s + len, cap - len, "{\"intValue\":\"1\"}");
    for (int i = 1; i < levels; i++) {
        len += (size_t)snprintf(s + len, cap - len, "]}}");
    }
    return s;
}

/* {"kvlistValue":{"values":[{"key":"k","value": ... }]}} nested `levels` deep, in an event. */
static char *nested_kvlist_request(int levels)
{
    size_t cap = (size_t)levels * 80 + 256;
    char *s = malloc(cap);
    size_t len = (size_t)snprintf(s, cap,
                                  SPAN_PREFIX "\"events\":[{\"attributes\":[{\"key\":"
                                              "\"k\",\"value\":");
    for (int i = 1; i < levels; i++) {
        len += (size_t)snprintf(s + len, cap - len,
                                "{\"kvlistValue\":{\"values\":[{\"key\":\"k\",\"value\":");
    }
    len += (size_t)snprintf(s + len, cap - len, "{\"boolValue\":true}");
    for (int i = 1; i < levels; i++) {
        len += (size_t)snprintf(s + len, cap - len, "}]}}");
    }
    snprintf(s + len, cap - len, "}]}]" SPAN_SUFFIX);
    return s;
}

static void test_anyvalue_depth_limit(void **state)
{
    (void)state;
    char json[8192];
    decoded_t dec;

    /* 32 levels decode, through arrays and through kvlists under an event. */
    char *value = nested_array_value(AM_OTLP_MAX_ANYVALUE_DEPTH);
    snprintf(json, sizeof(json), ATTR("%s"), value);
    free(value);
    decode_ok(&dec, json);
    char *encoded = encode_ok(dec.req, NULL);
    am_free(encoded);
    decoded_free(&dec);
    char *req = nested_kvlist_request(AM_OTLP_MAX_ANYVALUE_DEPTH);
    decode_ok(&dec, req);
    free(req);
    decoded_free(&dec);

    /* 33 levels: the AnyValue error, naming the innermost value. */
    value = nested_array_value(AM_OTLP_MAX_ANYVALUE_DEPTH + 1);
    snprintf(json, sizeof(json), ATTR("%s"), value);
    free(value);
    decode_into(&dec, json, strlen(json));
    assert_int_equal(dec.rc, AM_EINVAL);
    assert_non_null(strstr(dec.err, "AnyValue nested deeper than 32 levels"));
    assert_non_null(strstr(dec.err, ATTR_PATH "arrayValue.values[0].arrayValue.values[0]."));
    decoded_free(&dec);
    req = nested_kvlist_request(AM_OTLP_MAX_ANYVALUE_DEPTH + 1);
    decode_into(&dec, req, strlen(req));
    free(req);
    assert_int_equal(dec.rc, AM_EINVAL);
    assert_non_null(strstr(dec.err, "AnyValue nested deeper than 32 levels"));
    assert_non_null(strstr(dec.err, SPAN_PATH "events[0].attributes[0].value.kvlistValue."));
    decoded_free(&dec);

    /* Deep JSON anywhere (here an unknown field) stops at the tokener. */
    size_t n = 0;
    n += (size_t)snprintf(json + n, sizeof(json) - n, "{\"x\":");
    for (int i = 0; i < 400; i++) {
        json[n++] = '[';
    }
    for (int i = 0; i < 400; i++) {
        json[n++] = ']';
    }
    snprintf(json + n, sizeof(json) - n, "}");
    expect_error(json, "JSON nested deeper than 160 levels");
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

static void test_encode_compact_defaults_omitted(void **state)
{
    (void)state;
    decoded_t dec;
    /* Defaults written explicitly by the sender are dropped by the encoder;
     * present submessages (status, resource) stay. */
    decode_ok(&dec, "{\"resourceSpans\":[{\"resource\":{},\"scopeSpans\":[{\"scope\":{\"name\":"
                    "\"\"},\"spans\":[{\"traceId\":\"5B8EFFF798038103D269B633813FC60C\","
                    "\"spanId\":\"00f067aa0ba902b7\",\"name\":\"chat\",\"kind\":3,"
                    "\"startTimeUnixNano\":1,\"endTimeUnixNano\":\"0\",\"flags\":0,"
                    "\"droppedEventsCount\":0,\"events\":[],\"status\":{\"code\":0},"
                    "\"attributes\":[{\"key\":\"n\",\"value\":{\"intValue\":-5}},"
                    "{\"key\":\"z\",\"value\":{\"intValue\":0}},"
                    "{\"key\":\"e\",\"value\":{\"stringValue\":\"\"}},"
                    "{\"key\":\"f\",\"value\":{\"boolValue\":false}},"
                    "{\"key\":\"d\",\"value\":{\"doubleValue\":0.1}},"
                    "{\"key\":\"b\",\"value\":{\"bytesValue\":\"\"}},"
                    "{\"key\":\"a\",\"value\":{\"arrayValue\":{\"values\":[{}]}}},"
                    "{\"key\":\"u\",\"value\":{}},{\"key\":\"\"}]}]}]}]}");
    char *json = encode_ok(dec.req, NULL);
    assert_string_equal(
        json, "{\"resourceSpans\":[{\"resource\":{},\"scopeSpans\":[{\"scope\":{},\"spans\":[{"
              "\"traceId\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"00f067aa0ba902b7\","
              "\"name\":\"chat\",\"kind\":3,\"startTimeUnixNano\":\"1\",\"attributes\":["
              "{\"key\":\"n\",\"value\":{\"intValue\":\"-5\"}},"
              "{\"key\":\"z\",\"value\":{\"intValue\":\"0\"}},"
              "{\"key\":\"e\",\"value\":{\"stringValue\":\"\"}},"
              "{\"key\":\"f\",\"value\":{\"boolValue\":false}},"
              "{\"key\":\"d\",\"value\":{\"doubleValue\":0.1}},"
              "{\"key\":\"b\",\"value\":{\"bytesValue\":\"\"}},"
              "{\"key\":\"a\",\"value\":{\"arrayValue\":{\"values\":[{}]}}},"
              "{\"key\":\"u\",\"value\":{}},{\"key\":\"\"}],\"status\":{}}]}]}]}");
    am_free(json);
    decoded_free(&dec);
}

static void test_encode_strings_and_doubles(void **state)
{
    (void)state;
    am_pb_anyvalue_t values[16];
    am_pb_keyvalue_t kvs[16];
    am_pb_keyvalue_t *kv_ptrs[16];
    static const char weird[] = "q\"b\\s/\x01\x1f\x7f\b\f\n\r\t caf\xc3\xa9 \xf0\x9f\x98\x80 "
                                "bad:\xff\xc3(\xed\xa0\x80\xf4\x90\x80\x80\xc0\xaf end";
    static const double doubles[] = {
        0.1,     1.0 / 3, 1e300,    5e-324,    DBL_MAX,           -0.0, 123.0, 1e21,
        -2.5e-8, NAN,     INFINITY, -INFINITY, 9007199254740993.0};
    size_t n = 0;
    for (; n < AM_ARRAY_SIZE(doubles); n++) {
        values[n] = (am_pb_anyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
        values[n].value_case = AM_PB_VALUE(DOUBLE_VALUE);
        values[n].double_value = doubles[n];
    }
    values[n] = (am_pb_anyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    values[n].value_case = AM_PB_VALUE(STRING_VALUE);
    values[n].string_value = (char *)weird;
    n++;
    for (size_t i = 0; i < n; i++) {
        kvs[i] = (am_pb_keyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
        kvs[i].key = (char *)"k";
        kvs[i].value = &values[i];
        kv_ptrs[i] = &kvs[i];
    }
    am_pb_span_t span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    span.name = (char *)"\x01";
    span.n_attributes = n;
    span.attributes = kv_ptrs;
    am_pb_span_t *span_ptr = &span;
    am_pb_scope_spans_t ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    ss.n_spans = 1;
    ss.spans = &span_ptr;
    am_pb_scope_spans_t *ss_ptr = &ss;
    am_pb_resource_spans_t rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs.n_scope_spans = 1;
    rs.scope_spans = &ss_ptr;
    am_pb_resource_spans_t *rs_ptr = &rs;
    am_pb_export_req_t req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.n_resource_spans = 1;
    req.resource_spans = &rs_ptr;

#define R1 "\xef\xbf\xbd"
#define R2 R1 R1
#define R3 R1 R1 R1
    char *json = encode_ok(&req, NULL);
    /* Escapes: quote, backslash, control chars; DEL and valid UTF-8 pass
     * through; each invalid byte (stray, truncated, surrogate, > U+10FFFF,
     * overlong) becomes U+FFFD, written raw. */
    assert_non_null(
        strstr(json, "{\"stringValue\":\"q\\\"b\\\\s/\\u0001\\u001f\x7f\\b\\f\\n\\r\\t caf\xc3\xa9 "
                     "\xf0\x9f\x98\x80 bad:" R2 "(" R3 R3 R3 " end\"}"));
    assert_non_null(strstr(json, "\"name\":\"\\u0001\""));
    assert_non_null(strstr(json, "{\"doubleValue\":0.1}"));
    assert_non_null(strstr(json, "{\"doubleValue\":0.3333333333333333}"));
    assert_non_null(strstr(json, "{\"doubleValue\":-0.0}"));
    assert_non_null(strstr(json, "{\"doubleValue\":123}"));
    assert_non_null(strstr(json, "{\"doubleValue\":1e+21}"));
    assert_non_null(strstr(json, "{\"doubleValue\":\"NaN\"}"));
    assert_non_null(strstr(json, "{\"doubleValue\":\"Infinity\"}"));
    assert_non_null(strstr(json, "{\"doubleValue\":\"-Infinity\"}"));

    /* Every double reads back bit for bit (NaN as NaN). */
    decoded_t dec;
    decode_ok(&dec, json);
    const am_pb_span_t *back = first_span(dec.req, 0);
    for (size_t i = 0; i < AM_ARRAY_SIZE(doubles); i++) {
        double got = back->attributes[i]->value->double_value;
        assert_int_equal(back->attributes[i]->value->value_case, AM_PB_VALUE(DOUBLE_VALUE));
        if (isnan(doubles[i])) {
            assert_true(isnan(got));
        } else {
            assert_memory_equal(&got, &doubles[i], sizeof(got));
        }
    }
    am_free(json);
    decoded_free(&dec);
}

static void test_encode_depth_limit_and_args(void **state)
{
    (void)state;
    /* A 33-level AnyValue built in memory (as a protobuf request could be)
     * is refused rather than written as JSON the decoder would reject. */
    enum { LEVELS = AM_OTLP_MAX_ANYVALUE_DEPTH + 1 };
    am_pb_anyvalue_t values[LEVELS];
    am_pb_arrayvalue_t arrays[LEVELS];
    am_pb_anyvalue_t *value_ptrs[LEVELS];
    for (int i = 0; i < LEVELS; i++) {
        values[i] = (am_pb_anyvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
        arrays[i] = (am_pb_arrayvalue_t)OPENTELEMETRY__PROTO__COMMON__V1__ARRAY_VALUE__INIT;
        value_ptrs[i] = &values[i];
    }
    for (int i = 0; i + 1 < LEVELS; i++) {
        values[i].value_case = AM_PB_VALUE(ARRAY_VALUE);
        values[i].array_value = &arrays[i];
        arrays[i].n_values = 1;
        arrays[i].values = &value_ptrs[i + 1];
    }
    am_pb_keyvalue_t kv = OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
    kv.value = &values[0];
    am_pb_keyvalue_t *kv_ptr = &kv;
    am_pb_resource_t res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
    res.n_attributes = 1;
    res.attributes = &kv_ptr;
    am_pb_resource_spans_t rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs.resource = &res;
    am_pb_resource_spans_t *rs_ptr = &rs;
    am_pb_export_req_t req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.n_resource_spans = 1;
    req.resource_spans = &rs_ptr;

    char *json = (char *)"untouched";
    size_t len = 0;
    assert_int_equal(am_otlp_json_encode_traces(&req, &json, &len), AM_EINVAL);
    assert_null(json);
    /* One level less is fine. */
    arrays[LEVELS - 3].values = &value_ptrs[LEVELS - 1];
    json = encode_ok(&req, NULL);
    am_free(json);

    req.n_resource_spans = 0;
    json = encode_ok(&req, &len);
    assert_string_equal(json, "{}");
    assert_int_equal(len, 2);
    am_free(json);
    assert_int_equal(am_otlp_json_encode_traces(NULL, &json, &len), AM_EINVAL);
    assert_int_equal(am_otlp_json_encode_traces(&req, NULL, &len), AM_EINVAL);
}

static void test_encode_response(void **state)
{
    (void)state;
    char *json;
    size_t len;
    assert_int_equal(am_otlp_json_encode_response(NULL, &json, &len), 0);
    assert_string_equal(json, "{}");
    assert_int_equal(len, 2);
    am_free(json);

    am_pb_export_resp_t resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    assert_int_equal(am_otlp_json_encode_response(&resp, &json, &len), 0);
    assert_string_equal(json, "{}");
    am_free(json);

    am_pb_partial_t partial =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    resp.partial_success = &partial;
    assert_int_equal(am_otlp_json_encode_response(&resp, &json, &len), 0);
    assert_string_equal(json, "{}");
    am_free(json);

    partial.rejected_spans = 1;
    partial.error_message = (char *)"span 3: trace_id must be 16 bytes, got \"15\"";
    assert_int_equal(am_otlp_json_encode_response(&resp, &json, &len), 0);
    assert_string_equal(json, "{\"partialSuccess\":{\"rejectedSpans\":\"1\",\"errorMessage\":"
                              "\"span 3: trace_id must be 16 bytes, got \\\"15\\\"\"}}");
    assert_int_equal(len, strlen(json));
    am_free(json);

    /* A warning without rejected spans is still a partial success. */
    partial.rejected_spans = 0;
    partial.error_message = (char *)"sampled";
    assert_int_equal(am_otlp_json_encode_response(&resp, &json, &len), 0);
    assert_string_equal(json, "{\"partialSuccess\":{\"errorMessage\":\"sampled\"}}");
    am_free(json);
    assert_int_equal(am_otlp_json_encode_response(&resp, NULL, &len), AM_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* Allocation failures                                                      */
/* ------------------------------------------------------------------------ */

/* Fail the 1st, 2nd, ... allocation until a run succeeds: every failure is
 * AM_ENOMEM with no output, no crash, and (under LSan) no leak. */
static void test_failmalloc_decode(void **state)
{
    (void)state;
    bool succeeded = false;
    long failed_runs = 0;
    for (long nth = 1; nth < 10000 && !succeeded; nth++) {
        am_alloc_set_fail_after(nth);
        am_arena_t *arena = am_arena_new(256);
        if (arena == NULL) {
            continue;
        }
        am_pb_export_req_t *req = NULL;
        char err[AM_OTLP_JSON_ERR_SIZE];
        int rc = am_otlp_json_decode_traces(arena, js_sdk_request, strlen(js_sdk_request), &req,
                                            err, sizeof(err));
        if (rc == 0) {
            assert_non_null(req);
            succeeded = true;
        } else {
            assert_int_equal(rc, AM_ENOMEM);
            assert_null(req);
            assert_non_null(strstr(err, "out of memory"));
            failed_runs++;
        }
        am_arena_unref(arena);
    }
    am_alloc_set_fail_after(0);
    assert_true(succeeded);
    /* The arena grew while decoding, so failures hit the decoder itself. */
    assert_true(failed_runs >= 2);
}

static void test_failmalloc_encode(void **state)
{
    (void)state;
    decoded_t dec;
    decode_ok(&dec, js_sdk_request);
    size_t want_len;
    char *want = encode_ok(dec.req, &want_len);
    bool succeeded = false;
    for (long nth = 1; nth < 10000 && !succeeded; nth++) {
        am_alloc_set_fail_after(nth);
        char *json = (char *)"untouched";
        size_t len = 0;
        int rc = am_otlp_json_encode_traces(dec.req, &json, &len);
        am_alloc_set_fail_after(0);
        if (rc == 0) {
            assert_int_equal(len, want_len);
            assert_string_equal(json, want);
            am_free(json);
            succeeded = true;
        } else {
            assert_int_equal(rc, AM_ENOMEM);
            assert_null(json);
        }
    }
    assert_true(succeeded);

    am_pb_partial_t partial =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    partial.rejected_spans = 2;
    am_pb_export_resp_t resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    resp.partial_success = &partial;
    char *json = (char *)"untouched";
    size_t len;
    am_alloc_set_fail_after(1);
    assert_int_equal(am_otlp_json_encode_response(&resp, &json, &len), AM_ENOMEM);
    am_alloc_set_fail_after(0);
    assert_null(json);
    am_free(want);
    decoded_free(&dec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_js_sdk_request),
        cmocka_unit_test(test_decode_then_pack_unpack_equal),
        cmocka_unit_test(test_roundtrip_decode_encode_decode),
        cmocka_unit_test(test_snake_case_enum_names_and_number_forms),
        cmocka_unit_test(test_id_lengths_are_kept),
        cmocka_unit_test(test_null_means_default),
        cmocka_unit_test(test_unknown_fields_ignored),
        cmocka_unit_test(test_duplicate_keys_last_wins),
        cmocka_unit_test(test_entity_refs_roundtrip),
        cmocka_unit_test(test_error_paths),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_anyvalue_depth_limit),
        cmocka_unit_test(test_encode_compact_defaults_omitted),
        cmocka_unit_test(test_encode_strings_and_doubles),
        cmocka_unit_test(test_encode_depth_limit_and_args),
        cmocka_unit_test(test_encode_response),
        cmocka_unit_test(test_failmalloc_decode),
        cmocka_unit_test(test_failmalloc_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
