/*
 * kafka exporter, batch -> messages: spans are grouped by message key
 * (partition_by: an attribute from the span, then its resource, else the
 * trace id; trace_id; none) and topic, each group one request that keeps
 * its resources and scopes; groups over max_message_bytes are split and a
 * span over it alone is rejected; each cost event is one keyed message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_attr.h"
#include "exporters/kafka/kafka_internal.h"

typedef struct fixture {
    am_arena_t *arena;
    am_pb_export_req_t *req;
} fixture_t;

static fixture_t fixture_new(void)
{
    fixture_t fx;
    fx.arena = am_arena_new(4096);
    fx.req = am_arena_alloc(fx.arena, sizeof(*fx.req));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(fx.req);
    fx.req->resource_spans = am_arena_calloc(fx.arena, 16, sizeof(*fx.req->resource_spans));
    return fx;
}

static am_pb_keyvalue_t *kv_str(am_arena_t *arena, const char *key, const char *value)
{
    am_pb_keyvalue_t *kv = am_arena_alloc(arena, sizeof(*kv));
    am_pb_anyvalue_t *v = am_arena_alloc(arena, sizeof(*v));
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(v);
    v->value_case = AM_PB_VALUE(STRING_VALUE);
    v->string_value = am_arena_strdup(arena, value);
    kv->key = (char *)key;
    kv->value = v;
    return kv;
}

/* A ResourceSpans with one scope; `session` on the resource when non-NULL. */
static am_pb_scope_spans_t *add_resource(fixture_t *fx, const char *service, const char *session)
{
    am_arena_t *a = fx->arena;
    am_pb_resource_spans_t *rs = am_arena_alloc(a, sizeof(*rs));
    am_pb_resource_t *res = am_arena_alloc(a, sizeof(*res));
    am_pb_scope_spans_t *ss = am_arena_alloc(a, sizeof(*ss));
    am_pb_scope_t *scope = am_arena_alloc(a, sizeof(*scope));
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    opentelemetry__proto__resource__v1__resource__init(res);
    opentelemetry__proto__trace__v1__scope_spans__init(ss);
    opentelemetry__proto__common__v1__instrumentation_scope__init(scope);
    scope->name = "test";
    res->attributes = am_arena_calloc(a, 2, sizeof(*res->attributes));
    res->attributes[res->n_attributes++] = kv_str(a, "service.name", service);
    if (session != NULL) {
        res->attributes[res->n_attributes++] = kv_str(a, "session.id", session);
    }
    ss->scope = scope;
    ss->spans = am_arena_calloc(a, 256, sizeof(*ss->spans));
    rs->resource = res;
    rs->scope_spans = am_arena_calloc(a, 1, sizeof(*rs->scope_spans));
    rs->scope_spans[rs->n_scope_spans++] = ss;
    fx->req->resource_spans[fx->req->n_resource_spans++] = rs;
    return ss;
}

static am_pb_span_t *add_span(fixture_t *fx, am_pb_scope_spans_t *ss, uint8_t trace, uint32_t id,
                              const char *session)
{
    am_arena_t *a = fx->arena;
    am_pb_span_t *span = am_arena_alloc(a, sizeof(*span));
    opentelemetry__proto__trace__v1__span__init(span);
    uint8_t *ids = am_arena_calloc(a, 1, 24);
    ids[15] = trace;
    ids[16 + 4] = (uint8_t)(id >> 24);
    ids[16 + 5] = (uint8_t)(id >> 16);
    ids[16 + 6] = (uint8_t)(id >> 8);
    ids[16 + 7] = (uint8_t)id;
    span->trace_id.data = ids;
    span->trace_id.len = 16;
    span->span_id.data = ids + 16;
    span->span_id.len = 8;
    span->name = "chat";
    if (session != NULL) {
        am_span_set_str(a, span, "session.id", session);
    }
    ss->spans[ss->n_spans++] = span;
    return span;
}

static uint32_t span_number(const am_pb_span_t *span)
{
    const uint8_t *p = span->span_id.data;
    return (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
}

static am__kafka_encoder_t encoder(am__kafka_keying_t keying)
{
    am__kafka_encoder_t enc = {
        .id = "kafka/test",
        .spans_topic = "agent-spans",
        .events_topic = "agent-cost-events",
        .keying = keying,
        .key_attribute = keying == AM__KAFKA_KEY_ATTRIBUTE ? "session.id" : NULL,
        .max_message_bytes = 1000000,
    };
    return enc;
}

/* Span numbers of a message, in order, into out; returns the count. */
static size_t message_spans(const am__kafka_msg_t *msg, uint32_t *out, size_t cap,
                            size_t *n_resources)
{
    am_pb_export_req_t *req =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            NULL, msg->value_len, (const uint8_t *)msg->value);
    assert_non_null(req);
    size_t n = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        for (size_t s = 0; s < req->resource_spans[r]->n_scope_spans; s++) {
            am_pb_scope_spans_t *ss = req->resource_spans[r]->scope_spans[s];
            assert_non_null(ss->scope);
            assert_string_equal(ss->scope->name, "test");
            for (size_t i = 0; i < ss->n_spans && n < cap; i++) {
                out[n++] = span_number(ss->spans[i]);
            }
        }
    }
    if (n_resources != NULL) {
        *n_resources = req->n_resource_spans;
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req,
                                                                                            NULL);
    return n;
}

static void test_key_by_session_attribute(void **state)
{
    (void)state;
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *r1 = add_resource(&fx, "one", "A");
    add_span(&fx, r1, 1, 1, NULL); /* resource session: A */
    add_span(&fx, r1, 1, 2, "B");  /* span wins: B */
    add_span(&fx, r1, 2, 3, NULL); /* A */
    am_pb_scope_spans_t *r2 = add_resource(&fx, "two", NULL);
    add_span(&fx, r2, 3, 4, "B");
    add_span(&fx, r2, 7, 5, NULL); /* nothing: the trace id */

    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_ATTRIBUTE);
    am__kafka_encoded_t out = {0};
    assert_int_equal(am__kafka_encode_spans(&enc, fx.req, &out), 0);
    assert_int_equal(out.n_msgs, 3);
    assert_int_equal(out.rejected_spans, 0);

    uint32_t spans[16];
    size_t n_res;
    am__kafka_msg_t *m = out.head;
    assert_string_equal(m->key, "A");
    assert_int_equal(m->key_len, 1);
    assert_string_equal(m->topic, "agent-spans");
    assert_int_equal(m->spans, 2);
    assert_int_equal(message_spans(m, spans, 16, &n_res), 2);
    assert_int_equal(spans[0], 1);
    assert_int_equal(spans[1], 3);
    assert_int_equal(n_res, 1);

    m = m->next;
    assert_string_equal(m->key, "B");
    assert_int_equal(message_spans(m, spans, 16, &n_res), 2);
    assert_int_equal(spans[0], 2);
    assert_int_equal(spans[1], 4);
    assert_int_equal(n_res, 2); /* each span keeps its own resource */

    m = m->next;
    assert_string_equal(m->key, "00000000000000000000000000000007");
    assert_int_equal(message_spans(m, spans, 16, NULL), 1);
    assert_int_equal(spans[0], 5);
    assert_null(m->next);

    am__kafka_encoded_free(&out);
    am_arena_unref(fx.arena);
}

static void test_key_by_trace_id_and_none(void **state)
{
    (void)state;
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *ss = add_resource(&fx, "svc", "S");
    for (uint32_t i = 0; i < 12; i++) {
        add_span(&fx, ss, (uint8_t)(i % 3 + 1), i, "S");
    }
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_TRACE_ID);
    am__kafka_encoded_t out = {0};
    assert_int_equal(am__kafka_encode_spans(&enc, fx.req, &out), 0);
    assert_int_equal(out.n_msgs, 3);
    size_t total = 0;
    for (am__kafka_msg_t *m = out.head; m != NULL; m = m->next) {
        assert_int_equal(m->key_len, 32);
        assert_int_equal(m->spans, 4);
        total += m->spans;
    }
    assert_int_equal(total, 12);
    am__kafka_encoded_free(&out);

    enc = encoder(AM__KAFKA_KEY_NONE);
    assert_int_equal(am__kafka_encode_spans(&enc, fx.req, &out), 0);
    assert_int_equal(out.n_msgs, 1);
    assert_null(out.head->key);
    assert_int_equal(out.head->spans, 12);
    /* One group, unsplit: byte-identical to packing the request itself. */
    size_t size = protobuf_c_message_get_packed_size(&fx.req->base);
    assert_int_equal(out.head->value_len, size);
    uint8_t *wire = malloc(size);
    protobuf_c_message_pack(&fx.req->base, wire);
    assert_memory_equal(out.head->value, wire, size);
    free(wire);
    am__kafka_encoded_free(&out);
    am_arena_unref(fx.arena);
}

static void test_numeric_attribute_key(void **state)
{
    (void)state;
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *ss = add_resource(&fx, "svc", NULL);
    am_pb_span_t *span = add_span(&fx, ss, 1, 1, NULL);
    am_span_set_int(fx.arena, span, "session.id", 42);
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_ATTRIBUTE);
    char buf[64];
    size_t len;
    const char *key = am__kafka_span_key(&enc, span, NULL, buf, sizeof(buf), &len);
    assert_non_null(key);
    assert_int_equal(len, 2);
    assert_memory_equal(key, "42", 2);
    am_arena_unref(fx.arena);
}

static void test_topic_from_attribute(void **state)
{
    (void)state;
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *ss = add_resource(&fx, "svc", "S");
    add_span(&fx, ss, 1, 1, NULL);
    am_pb_span_t *routed = add_span(&fx, ss, 1, 2, NULL);
    am_span_set_str(fx.arena, routed, "kafka.topic", "tenant-a");
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_ATTRIBUTE);
    enc.topic_attribute = "kafka.topic";
    am__kafka_encoded_t out = {0};
    assert_int_equal(am__kafka_encode_spans(&enc, fx.req, &out), 0);
    assert_int_equal(out.n_msgs, 2);
    assert_string_equal(out.head->topic, "agent-spans");
    assert_string_equal(out.head->next->topic, "tenant-a");
    assert_string_equal(out.head->next->key, "S");
    am__kafka_encoded_free(&out);
    am_arena_unref(fx.arena);
}

static void fill_payload(fixture_t *fx, am_pb_span_t *span, size_t bytes)
{
    char *text = malloc(bytes + 1);
    memset(text, 'p', bytes);
    text[bytes] = '\0';
    am_span_set_str(fx->arena, span, "payload", text);
    free(text);
}

static void check_split(bool json)
{
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *a = add_resource(&fx, "a", NULL);
    am_pb_scope_spans_t *b = add_resource(&fx, "b", NULL);
    for (uint32_t i = 0; i < 120; i++) {
        am_pb_span_t *span = add_span(&fx, i < 70 ? a : b, 1, i, "S");
        fill_payload(&fx, span, 100 + (i % 7) * 30);
    }
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_ATTRIBUTE);
    enc.max_message_bytes = 3000;
    enc.header_bytes = 40;
    enc.json = json;
    am__kafka_encoded_t out = {0};
    assert_int_equal(am__kafka_encode_spans(&enc, fx.req, &out), 0);
    assert_int_equal(out.rejected_spans, 0);
    assert_true(out.n_msgs >= 8);
    size_t total = 0;
    uint32_t next = 0;
    for (am__kafka_msg_t *m = out.head; m != NULL; m = m->next) {
        assert_true(m->value_len + m->key_len + enc.header_bytes + AM__KAFKA_RECORD_OVERHEAD <=
                    3000);
        assert_string_equal(m->key, "S");
        total += m->spans;
        if (json) {
            assert_int_equal(m->value[0], '{');
            assert_non_null(strstr(m->value, "\"resourceSpans\""));
            continue;
        }
        uint32_t spans[128];
        size_t n = message_spans(m, spans, 128, NULL);
        assert_int_equal(n, m->spans);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(spans[i], next++); /* every span once, in order */
        }
    }
    assert_int_equal(total, 120);
    am__kafka_encoded_free(&out);
    am_arena_unref(fx.arena);
}

static void test_split_proto(void **state)
{
    (void)state;
    check_split(false);
}

static void test_split_json(void **state)
{
    (void)state;
    check_split(true);
}

static void test_single_span_over_limit_rejected(void **state)
{
    (void)state;
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *ss = add_resource(&fx, "svc", NULL);
    for (uint32_t i = 0; i < 10; i++) {
        am_pb_span_t *span = add_span(&fx, ss, 1, i, NULL);
        fill_payload(&fx, span, i == 4 ? 5000 : 200);
    }
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_NONE);
    enc.max_message_bytes = 2000;
    am__kafka_encoded_t out = {0};
    assert_int_equal(am__kafka_encode_spans(&enc, fx.req, &out), 0);
    assert_int_equal(out.rejected_spans, 1);
    size_t total = 0;
    for (am__kafka_msg_t *m = out.head; m != NULL; m = m->next) {
        uint32_t spans[16];
        size_t n = message_spans(m, spans, 16, NULL);
        for (size_t i = 0; i < n; i++) {
            assert_int_not_equal(spans[i], 4);
        }
        total += n;
    }
    assert_int_equal(total, 9);
    am__kafka_encoded_free(&out);
    am_arena_unref(fx.arena);
}

static void test_events(void **state)
{
    (void)state;
    am_arena_t *arena = am_arena_new(1024);
    am_pb_keyvalue_t *attrs[1] = {kv_str(arena, "tenant.topic", "acme-events")};
    char *big = calloc(1, 3000);
    memset(big, 'x', 2999);
    am_event_t events[4] = {
        {.kind = "session.summary", .key = "sess-1", .json = "{\"event\":\"session.summary\"}"},
        {.kind = "budget.threshold", .key = NULL, .json = "{\"event\":\"budget.threshold\"}"},
        {.kind = "anomaly.detected", .key = "k", .json = big, .json_len = 2999},
        {.kind = "session.summary",
         .key = "sess-2",
         .json = "{\"a\":1}",
         .attrs = attrs,
         .n_attrs = 1},
    };
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_TRACE_ID);
    enc.max_message_bytes = 2000;
    enc.topic_attribute = "tenant.topic";
    am__kafka_encoded_t out = {0};
    assert_int_equal(am__kafka_encode_events(&enc, events, 4, &out), 0);
    assert_int_equal(out.n_msgs, 3);
    assert_int_equal(out.rejected_events, 1);
    am__kafka_msg_t *m = out.head;
    assert_string_equal(m->topic, "agent-cost-events");
    assert_string_equal(m->key, "sess-1");
    assert_string_equal(m->value, "{\"event\":\"session.summary\"}");
    assert_int_equal(m->value_len, strlen(m->value));
    assert_int_equal(m->events, 1);
    assert_int_equal(m->spans, 0);
    m = m->next;
    assert_null(m->key);
    m = m->next;
    assert_string_equal(m->topic, "acme-events");
    assert_string_equal(m->key, "sess-2");
    am__kafka_encoded_free(&out);
    free(big);
    am_arena_unref(arena);
}

static void test_retriable_errors(void **state)
{
    (void)state;
    assert_true(am__kafka_error_is_retriable(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT));
    assert_true(am__kafka_error_is_retriable(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION));
    assert_true(am__kafka_error_is_retriable(RD_KAFKA_RESP_ERR__TRANSPORT));
    assert_false(am__kafka_error_is_retriable(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE));
    assert_false(am__kafka_error_is_retriable(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED));
    assert_false(am__kafka_error_is_retriable(RD_KAFKA_RESP_ERR__PURGE_QUEUE));
}

/* Every allocation failure leaves a consistent result: nothing leaks, and
 * each span is either in a message or counted as failed. */
static void test_failmalloc(void **state)
{
    (void)state;
    fixture_t fx = fixture_new();
    am_pb_scope_spans_t *ss = add_resource(&fx, "svc", NULL);
    for (uint32_t i = 0; i < 40; i++) {
        am_pb_span_t *span = add_span(&fx, ss, (uint8_t)(i % 5), i, NULL);
        fill_payload(&fx, span, 150);
    }
    am__kafka_encoder_t enc = encoder(AM__KAFKA_KEY_TRACE_ID);
    enc.max_message_bytes = 1500;
    for (long nth = 1; nth < 200; nth++) {
        am__kafka_encoded_t out = {0};
        am_alloc_set_fail_after(nth);
        int rc = am__kafka_encode_spans(&enc, fx.req, &out);
        am_alloc_set_fail_after(0);
        size_t in_msgs = 0;
        for (am__kafka_msg_t *m = out.head; m != NULL; m = m->next) {
            in_msgs += m->spans;
        }
        if (rc == 0) {
            assert_int_equal(in_msgs, 40);
        } else {
            assert_int_equal(rc, AM_ENOMEM);
            assert_int_equal(in_msgs + out.failed_spans, 40);
        }
        am__kafka_encoded_free(&out);
    }
    am_arena_unref(fx.arena);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_by_session_attribute),
        cmocka_unit_test(test_key_by_trace_id_and_none),
        cmocka_unit_test(test_numeric_attribute_key),
        cmocka_unit_test(test_topic_from_attribute),
        cmocka_unit_test(test_split_proto),
        cmocka_unit_test(test_split_json),
        cmocka_unit_test(test_single_span_over_limit_rejected),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_retriable_errors),
        cmocka_unit_test(test_failmalloc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
