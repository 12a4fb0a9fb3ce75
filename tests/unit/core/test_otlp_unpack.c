/*
 * The hand-written ExportTraceServiceRequest decoder against protobuf-c's:
 * on every input either ours gives up (AM_EINVAL / AM_ENOTSUP, never having
 * allocated) or protobuf-c accepts the same bytes and both results pack to
 * the same bytes; and ours never accepts what protobuf-c refuses.  Inputs:
 * a request using every field and value type, agent-shaped traffic, every
 * truncation and thousands of byte mutations of those, and hand-made hostile
 * wire bytes (lengths past the end, 200-deep values, 11-byte varints, wrong
 * wire types, shapes left to protobuf-c).  Also: known attribute keys come
 * out as the interned pointers, the decoded form takes well under 60% of
 * protobuf-c's arena bytes, and the OTLP receiver's decode step uses it with
 * protobuf-c as the fallback.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_arena.h"
#include "am_intern.h"
#include "am_otlp.h"
#include "am_otlp_unpack.h"
#include "receivers/otlp/otlp_internal.h"

#define REQ_UNPACK opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack

/* ---- the equivalence every input must satisfy ------------------------ */

typedef struct verdict {
    int ours;         /* our return code */
    bool theirs_ok;   /* protobuf-c accepted */
    size_t ours_used; /* arena bytes */
    size_t theirs_used;
} verdict_t;

static uint8_t *pack_message(const ProtobufCMessage *msg, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *out = malloc(*len + 1);
    assert_non_null(out);
    assert_int_equal(protobuf_c_message_pack(msg, out), *len);
    return out;
}

static verdict_t check_equivalence(const uint8_t *buf, size_t len)
{
    verdict_t v = {0};
    am_arena_t *ours_arena = am_arena_new(len * 2 + 1024);
    am_arena_t *theirs_arena = am_arena_new(len * 2 + 1024);
    assert_non_null(ours_arena);
    assert_non_null(theirs_arena);
    am_pb_export_req_t *ours = (am_pb_export_req_t *)(uintptr_t)1;
    v.ours = am_otlp_unpack_traces(ours_arena, buf, len, &ours);
    ProtobufCAllocator alloc = am_arena_allocator(theirs_arena);
    am_pb_export_req_t *theirs = REQ_UNPACK(&alloc, len, buf);
    v.theirs_ok = theirs != NULL;
    v.ours_used = am_arena_used(ours_arena);
    v.theirs_used = am_arena_used(theirs_arena);
    if (v.ours == 0) {
        assert_non_null(ours);
        if (theirs == NULL) {
            fail_msg("we accepted %zu bytes that protobuf-c refuses", len);
        }
        assert_true(protobuf_c_message_check(&ours->base));
        size_t ours_len;
        size_t theirs_len;
        uint8_t *ours_packed = pack_message(&ours->base, &ours_len);
        uint8_t *theirs_packed = pack_message(&theirs->base, &theirs_len);
        assert_int_equal(ours_len, theirs_len);
        assert_memory_equal(ours_packed, theirs_packed, ours_len);
        free(ours_packed);
        free(theirs_packed);
    } else {
        assert_null(ours);
        assert_true(v.ours == AM_EINVAL || v.ours == AM_ENOTSUP);
        /* Everything is decided before the first allocation. */
        assert_int_equal(v.ours_used, 0);
    }
    am_arena_unref(ours_arena);
    am_arena_unref(theirs_arena);
    return v;
}

/* ---- building requests with protobuf-c's structs --------------------- */

static am_arena_t *build_arena;

static void *b_alloc(size_t size)
{
    void *p = am_arena_calloc(build_arena, 1, size);
    assert_non_null(p);
    return p;
}

static am_pb_anyvalue_t *av_new(void)
{
    am_pb_anyvalue_t *av = b_alloc(sizeof(*av));
    opentelemetry__proto__common__v1__any_value__init(av);
    return av;
}

static am_pb_anyvalue_t *av_str(const char *s)
{
    am_pb_anyvalue_t *av = av_new();
    av->value_case = AM_PB_VALUE(STRING_VALUE);
    av->string_value = am_arena_strdup(build_arena, s);
    return av;
}

static am_pb_anyvalue_t *av_int(int64_t i)
{
    am_pb_anyvalue_t *av = av_new();
    av->value_case = AM_PB_VALUE(INT_VALUE);
    av->int_value = i;
    return av;
}

static am_pb_anyvalue_t *av_double(double d)
{
    am_pb_anyvalue_t *av = av_new();
    av->value_case = AM_PB_VALUE(DOUBLE_VALUE);
    av->double_value = d;
    return av;
}

static am_pb_anyvalue_t *av_bool(bool b)
{
    am_pb_anyvalue_t *av = av_new();
    av->value_case = AM_PB_VALUE(BOOL_VALUE);
    av->bool_value = b;
    return av;
}

static am_pb_anyvalue_t *av_bytes(const void *data, size_t len)
{
    am_pb_anyvalue_t *av = av_new();
    av->value_case = AM_PB_VALUE(BYTES_VALUE);
    av->bytes_value.len = len;
    av->bytes_value.data = len ? b_alloc(len) : NULL;
    if (len) {
        memcpy(av->bytes_value.data, data, len);
    }
    return av;
}

static am_pb_anyvalue_t *av_array(size_t n, ...)
{
    am_pb_anyvalue_t *av = av_new();
    am_pb_arrayvalue_t *array = b_alloc(sizeof(*array));
    opentelemetry__proto__common__v1__array_value__init(array);
    array->n_values = n;
    array->values = b_alloc(sizeof(void *) * (n + 1));
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        array->values[i] = va_arg(ap, am_pb_anyvalue_t *);
    }
    va_end(ap);
    av->value_case = AM_PB_VALUE(ARRAY_VALUE);
    av->array_value = array;
    return av;
}

static am_pb_keyvalue_t *kv(const char *key, am_pb_anyvalue_t *value)
{
    am_pb_keyvalue_t *pair = b_alloc(sizeof(*pair));
    opentelemetry__proto__common__v1__key_value__init(pair);
    pair->key = am_arena_strdup(build_arena, key);
    pair->value = value;
    return pair;
}

static am_pb_keyvalue_t **kv_list(size_t n, va_list ap)
{
    am_pb_keyvalue_t **list = b_alloc(sizeof(void *) * (n + 1));
    for (size_t i = 0; i < n; i++) {
        list[i] = va_arg(ap, am_pb_keyvalue_t *);
    }
    return list;
}

static am_pb_keyvalue_t **kvs(size_t n, ...)
{
    va_list ap;
    va_start(ap, n);
    am_pb_keyvalue_t **list = kv_list(n, ap);
    va_end(ap);
    return list;
}

static am_pb_anyvalue_t *av_kvlist(size_t n, ...)
{
    am_pb_anyvalue_t *av = av_new();
    am_pb_kvlist_t *list = b_alloc(sizeof(*list));
    opentelemetry__proto__common__v1__key_value_list__init(list);
    va_list ap;
    va_start(ap, n);
    list->values = kv_list(n, ap);
    va_end(ap);
    list->n_values = n;
    av->value_case = AM_PB_VALUE(KVLIST_VALUE);
    av->kvlist_value = list;
    return av;
}

static ProtobufCBinaryData id_bytes(size_t len, uint32_t seed)
{
    ProtobufCBinaryData bd = {len, len ? b_alloc(len) : NULL};
    for (size_t i = 0; i < len; i++) {
        bd.data[i] = (uint8_t)(seed * 131 + i * 7 + 1);
    }
    return bd;
}

static uint8_t *pack_request(const am_pb_export_req_t *req, size_t *len)
{
    return pack_message(&req->base, len);
}

/* Every field of every message of the schema, and every value type. */
static uint8_t *rich_request(size_t *len)
{
    am_pb_export_req_t *req = b_alloc(sizeof(*req));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);

    /* resource_spans[0]: everything set */
    am_pb_resource_spans_t *rs = b_alloc(sizeof(*rs));
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    rs->schema_url = "https://opentelemetry.io/schemas/1.26.0";
    am_pb_resource_t *res = b_alloc(sizeof(*res));
    opentelemetry__proto__resource__v1__resource__init(res);
    res->attributes =
        kvs(4, kv("service.name", av_str("agent-api")), kv("deployment.environment", av_str("")),
            kv("", av_int(0)), kv("custom.resource.key", av_bool(true)));
    res->n_attributes = 4;
    res->dropped_attributes_count = 3;
    Opentelemetry__Proto__Common__V1__EntityRef *ref = b_alloc(sizeof(*ref));
    opentelemetry__proto__common__v1__entity_ref__init(ref);
    ref->schema_url = "https://example.com/entity";
    ref->type = "service";
    ref->n_id_keys = 3;
    ref->id_keys = b_alloc(3 * sizeof(char *));
    ref->id_keys[0] = "service.name";
    ref->id_keys[1] = "";
    ref->id_keys[2] = "service.instance.id";
    ref->n_description_keys = 1;
    ref->description_keys = b_alloc(sizeof(char *));
    ref->description_keys[0] = "service.version";
    Opentelemetry__Proto__Common__V1__EntityRef *ref2 = b_alloc(sizeof(*ref2));
    opentelemetry__proto__common__v1__entity_ref__init(ref2);
    res->entity_refs = b_alloc(2 * sizeof(void *));
    res->entity_refs[0] = ref;
    res->entity_refs[1] = ref2; /* present but empty */
    res->n_entity_refs = 2;
    rs->resource = res;

    am_pb_scope_spans_t *ss = b_alloc(sizeof(*ss));
    opentelemetry__proto__trace__v1__scope_spans__init(ss);
    ss->schema_url = "https://opentelemetry.io/schemas/1.27.0";
    am_pb_scope_t *scope = b_alloc(sizeof(*scope));
    opentelemetry__proto__common__v1__instrumentation_scope__init(scope);
    scope->name = "opentelemetry.instrumentation.openai";
    scope->version = "0.47.1";
    scope->attributes = kvs(1, kv("scope.attr", av_double(-0.0)));
    scope->n_attributes = 1;
    scope->dropped_attributes_count = 1;
    ss->scope = scope;

    static const uint8_t raw[] = {0x00, 0xff, 0x80, 0x7f, 0x00};
    am_pb_span_t *span = b_alloc(sizeof(*span));
    opentelemetry__proto__trace__v1__span__init(span);
    span->trace_id = id_bytes(16, 1);
    span->span_id = id_bytes(8, 2);
    span->parent_span_id = id_bytes(8, 3);
    span->trace_state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    span->flags = 0x301;
    span->name = "chat gpt-4o";
    span->kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT;
    span->start_time_unix_nano = UINT64_C(1767225600000000000);
    span->end_time_unix_nano = UINT64_C(1767225601234567890);
    span->attributes =
        kvs(12, kv("gen_ai.request.model", av_str("gpt-4o")),
            kv("gen_ai.usage.input_tokens", av_int(1234)), kv("negative", av_int(INT64_MIN)),
            kv("gen_ai.request.temperature", av_double(0.2)), kv("flag", av_bool(false)),
            kv("empty.string", av_str("")), kv("blob", av_bytes(raw, sizeof(raw))),
            kv("empty.blob", av_bytes(NULL, 0)),
            kv("nested", av_array(4, av_str("a"), av_array(2, av_int(-1), av_array(0)),
                                  av_kvlist(2, kv("inner", av_double(1e300)),
                                            kv("deeper", av_kvlist(1, kv("x", av_str("y"))))),
                                  av_kvlist(0))),
            kv("gen_ai.response.finish_reasons", av_array(1, av_str("stop"))), kv("no.value", NULL),
            kv("unset.value", av_new()));
    span->n_attributes = 12;
    span->dropped_attributes_count = 2;
    am_pb_span_event_t *event = b_alloc(sizeof(*event));
    opentelemetry__proto__trace__v1__span__event__init(event);
    event->time_unix_nano = 17;
    event->name = "exception";
    event->attributes = kvs(2, kv("exception.type", av_str("RateLimitError")),
                            kv("exception.escaped", av_bool(true)));
    event->n_attributes = 2;
    event->dropped_attributes_count = 5;
    am_pb_span_event_t *event2 = b_alloc(sizeof(*event2));
    opentelemetry__proto__trace__v1__span__event__init(event2);
    span->events = b_alloc(2 * sizeof(void *));
    span->events[0] = event;
    span->events[1] = event2;
    span->n_events = 2;
    span->dropped_events_count = 7;
    am_pb_span_link_t *link = b_alloc(sizeof(*link));
    opentelemetry__proto__trace__v1__span__link__init(link);
    link->trace_id = id_bytes(16, 4);
    link->span_id = id_bytes(8, 5);
    link->trace_state = "k=v";
    link->attributes = kvs(1, kv("link.kind", av_str("follows")));
    link->n_attributes = 1;
    link->dropped_attributes_count = 9;
    link->flags = 0x100;
    span->links = b_alloc(sizeof(void *));
    span->links[0] = link;
    span->n_links = 1;
    span->dropped_links_count = 11;
    am_pb_status_t *status = b_alloc(sizeof(*status));
    opentelemetry__proto__trace__v1__status__init(status);
    status->message = "upstream 429";
    status->code = AM_PB_STATUS_ERROR;
    span->status = status;

    /* a second span: ids only, empty status */
    am_pb_span_t *bare = b_alloc(sizeof(*bare));
    opentelemetry__proto__trace__v1__span__init(bare);
    bare->trace_id = id_bytes(16, 6);
    bare->span_id = id_bytes(8, 7);
    bare->status = b_alloc(sizeof(am_pb_status_t));
    opentelemetry__proto__trace__v1__status__init(bare->status);
    ss->spans = b_alloc(2 * sizeof(void *));
    ss->spans[0] = span;
    ss->spans[1] = bare;
    ss->n_spans = 2;
    am_pb_scope_spans_t *ss_empty = b_alloc(sizeof(*ss_empty));
    opentelemetry__proto__trace__v1__scope_spans__init(ss_empty);
    rs->scope_spans = b_alloc(2 * sizeof(void *));
    rs->scope_spans[0] = ss;
    rs->scope_spans[1] = ss_empty;
    rs->n_scope_spans = 2;

    /* resource_spans[1]: empty resource and scope */
    am_pb_resource_spans_t *rs2 = b_alloc(sizeof(*rs2));
    opentelemetry__proto__trace__v1__resource_spans__init(rs2);
    rs2->resource = b_alloc(sizeof(am_pb_resource_t));
    opentelemetry__proto__resource__v1__resource__init(rs2->resource);
    am_pb_scope_spans_t *ss2 = b_alloc(sizeof(*ss2));
    opentelemetry__proto__trace__v1__scope_spans__init(ss2);
    ss2->scope = b_alloc(sizeof(am_pb_scope_t));
    opentelemetry__proto__common__v1__instrumentation_scope__init(ss2->scope);
    rs2->scope_spans = b_alloc(sizeof(void *));
    rs2->scope_spans[0] = ss2;
    rs2->n_scope_spans = 1;
    /* resource_spans[2]: nothing at all */
    am_pb_resource_spans_t *rs3 = b_alloc(sizeof(*rs3));
    opentelemetry__proto__trace__v1__resource_spans__init(rs3);

    req->resource_spans = b_alloc(3 * sizeof(void *));
    req->resource_spans[0] = rs;
    req->resource_spans[1] = rs2;
    req->resource_spans[2] = rs3;
    req->n_resource_spans = 3;
    return pack_request(req, len);
}

/* Agent-shaped traffic, as tests/loadgen sends it: invoke_agent / chat /
 * execute_tool / embeddings spans of about ten GenAI attributes each. */
static uint8_t *agent_request(size_t n_spans, size_t *len)
{
    static const char *const models[] = {"gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro"};
    am_pb_export_req_t *req = b_alloc(sizeof(*req));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);
    am_pb_resource_spans_t *rs = b_alloc(sizeof(*rs));
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    rs->resource = b_alloc(sizeof(am_pb_resource_t));
    opentelemetry__proto__resource__v1__resource__init(rs->resource);
    rs->resource->attributes = kvs(4, kv("service.name", av_str("support-agent")),
                                   kv("telemetry.sdk.language", av_str("python")),
                                   kv("telemetry.sdk.version", av_str("1.27.0")),
                                   kv("deployment.environment.name", av_str("production")));
    rs->resource->n_attributes = 4;
    am_pb_scope_spans_t *ss = b_alloc(sizeof(*ss));
    opentelemetry__proto__trace__v1__scope_spans__init(ss);
    ss->scope = b_alloc(sizeof(am_pb_scope_t));
    opentelemetry__proto__common__v1__instrumentation_scope__init(ss->scope);
    ss->scope->name = "opentelemetry.instrumentation.openai_v2";
    ss->scope->version = "2.1b0";
    ss->spans = b_alloc(n_spans * sizeof(void *));
    ss->n_spans = n_spans;
    char buf[160];
    for (size_t i = 0; i < n_spans; i++) {
        am_pb_span_t *span = b_alloc(sizeof(*span));
        opentelemetry__proto__trace__v1__span__init(span);
        span->trace_id = id_bytes(16, (uint32_t)(i / 10));
        span->span_id = id_bytes(8, (uint32_t)i + 1000);
        if (i % 10 != 0) {
            span->parent_span_id = id_bytes(8, (uint32_t)(i / 10 * 10) + 1000);
        }
        span->flags = 0x301;
        span->kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT;
        span->start_time_unix_nano = UINT64_C(1767225600000000000) + i * 1000000;
        span->end_time_unix_nano = span->start_time_unix_nano + 850000000;
        const char *model = models[i % 3];
        switch (i % 4) {
        case 0:
            span->name = "invoke_agent support";
            snprintf(buf, sizeof(buf), "asst_%012zx", i * 7919);
            span->attributes =
                kvs(8, kv("gen_ai.operation.name", av_str("invoke_agent")),
                    kv("gen_ai.agent.name", av_str("support")), kv("gen_ai.agent.id", av_str(buf)),
                    kv("gen_ai.provider.name", av_str("openai")),
                    kv("gen_ai.request.model", av_str(model)),
                    kv("gen_ai.conversation.id", av_str("sess-000042-7f3a")),
                    kv("user.id", av_str("user-0042")), kv("tenant.id", av_str("acme")));
            span->n_attributes = 8;
            break;
        case 1:
        case 2:
            span->name = "chat";
            snprintf(buf, sizeof(buf), "resp_%016zx", i * 104729);
            span->attributes = kvs(
                11, kv("gen_ai.operation.name", av_str("chat")),
                kv("gen_ai.provider.name", av_str("openai")),
                kv("gen_ai.request.model", av_str(model)),
                kv("gen_ai.request.temperature", av_double(0.2)),
                kv("gen_ai.request.max_tokens", av_int(4096)),
                kv("gen_ai.response.model", av_str(model)), kv("gen_ai.response.id", av_str(buf)),
                kv("gen_ai.response.finish_reasons", av_array(1, av_str("stop"))),
                kv("gen_ai.usage.input_tokens", av_int(1200 + (int64_t)i)),
                kv("gen_ai.usage.output_tokens", av_int(300 + (int64_t)i)),
                kv("gen_ai.usage.cache_read.input_tokens", av_int(512)));
            span->n_attributes = 11;
            break;
        default:
            span->name = "execute_tool search_kb";
            snprintf(buf, sizeof(buf), "call_%016zx", i * 15485863);
            span->attributes =
                kvs(7, kv("gen_ai.operation.name", av_str("execute_tool")),
                    kv("gen_ai.tool.name", av_str("search_kb")),
                    kv("gen_ai.tool.type", av_str("function")),
                    kv("gen_ai.tool.description", av_str("Search the knowledge base")),
                    kv("gen_ai.tool.call.id", av_str(buf)),
                    kv("gen_ai.tool.call.arguments", av_str("{\"query\": \"refund policy\"}")),
                    kv("gen_ai.agent.name", av_str("support")));
            span->n_attributes = 7;
            break;
        }
        ss->spans[i] = span;
    }
    rs->scope_spans = b_alloc(sizeof(void *));
    rs->scope_spans[0] = ss;
    rs->n_scope_spans = 1;
    req->resource_spans = b_alloc(sizeof(void *));
    req->resource_spans[0] = rs;
    req->n_resource_spans = 1;
    return pack_request(req, len);
}

static int setup(void **state)
{
    (void)state;
    build_arena = am_arena_new(64 * 1024);
    return build_arena == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    am_arena_unref(build_arena);
    build_arena = NULL;
    return 0;
}

/* ---- hand-made wire bytes -------------------------------------------- */

typedef struct wire {
    uint8_t *data;
    size_t len;
    size_t cap;
} wire_t;

static void w_raw(wire_t *w, const void *bytes, size_t len)
{
    if (w->len + len > w->cap) {
        w->cap = (w->len + len) * 2 + 64;
        w->data = realloc(w->data, w->cap);
        assert_non_null(w->data);
    }
    memcpy(w->data + w->len, bytes, len);
    w->len += len;
}

static void w_varint(wire_t *w, uint64_t v)
{
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v != 0) {
            b[n] |= 0x80;
        }
        n++;
    } while (v != 0);
    w_raw(w, b, n);
}

static void w_tag(wire_t *w, uint32_t field, unsigned wire_type)
{
    w_varint(w, ((uint64_t)field << 3) | wire_type);
}

static void w_len(wire_t *w, uint32_t field, const void *data, size_t len)
{
    w_tag(w, field, 2);
    w_varint(w, len);
    w_raw(w, data, len);
}

/* Append `inner` as field `field` of `outer`, and free inner. */
static void w_msg(wire_t *outer, uint32_t field, wire_t *inner)
{
    w_len(outer, field, inner->data, inner->len);
    free(inner->data);
    *inner = (wire_t){0};
}

static void w_str(wire_t *w, uint32_t field, const char *s)
{
    w_len(w, field, s, strlen(s));
}

/* A request of one span whose body is `span` plus valid 16/8-byte ids. */
static wire_t wrap_span(wire_t *span_fields)
{
    wire_t span = {0};
    uint8_t ids[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    w_len(&span, 1, ids, 16);
    w_len(&span, 2, ids, 8);
    w_raw(&span, span_fields->data, span_fields->len);
    free(span_fields->data);
    *span_fields = (wire_t){0};
    wire_t ss = {0};
    w_msg(&ss, 2, &span);
    wire_t rs = {0};
    w_msg(&rs, 2, &ss);
    wire_t req = {0};
    w_msg(&req, 1, &rs);
    return req;
}

/* A request whose one span has one attribute with the given AnyValue body. */
static wire_t wrap_value(wire_t *value)
{
    wire_t pair = {0};
    w_str(&pair, 1, "k");
    w_msg(&pair, 2, value);
    wire_t span = {0};
    w_msg(&span, 9, &pair);
    return wrap_span(&span);
}

static int decode_rc(const wire_t *w)
{
    return check_equivalence(w->data, w->len).ours;
}

/* ---- tests ------------------------------------------------------------ */

static void test_rich_request_equivalent(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = rich_request(&len);
    verdict_t v = check_equivalence(buf, len);
    assert_int_equal(v.ours, 0);

    /* A closer look at what came out. */
    am_arena_t *arena = am_arena_new(1024);
    am_pb_export_req_t *req;
    assert_int_equal(am_otlp_unpack_traces(arena, buf, len, &req), 0);
    assert_int_equal(req->n_resource_spans, 3);
    const am_pb_span_t *span = req->resource_spans[0]->scope_spans[0]->spans[0];
    assert_int_equal(span->n_attributes, 12);
    assert_int_equal(span->trace_id.len, 16);
    assert_string_equal(span->name, "chat gpt-4o");
    assert_int_equal(span->attributes[2]->value->int_value, INT64_MIN);
    assert_true(span->attributes[4]->value->value_case == AM_PB_VALUE(BOOL_VALUE));
    /* An empty string value is set (and packed), not absent. */
    assert_true(span->attributes[5]->value->value_case == AM_PB_VALUE(STRING_VALUE));
    assert_string_equal(span->attributes[5]->value->string_value, "");
    assert_true(span->attributes[7]->value->value_case == AM_PB_VALUE(BYTES_VALUE));
    assert_null(span->attributes[7]->value->bytes_value.data);
    assert_null(span->attributes[10]->value);
    assert_true(span->attributes[11]->value->value_case == AM_PB_VALUE(_NOT_SET));
    assert_int_equal(span->status->code, AM_PB_STATUS_ERROR);
    assert_int_equal(span->links[0]->flags, 0x100);
    assert_int_equal(req->resource_spans[0]->resource->entity_refs[0]->n_id_keys, 3);
    /* Absent strings are protobuf-c's shared empty string, as after its unpack. */
    assert_ptr_equal(req->resource_spans[1]->scope_spans[0]->scope->name, protobuf_c_empty_string);
    /* Every KeyValue is immediately followed by its AnyValue. */
    for (size_t i = 0; i < span->n_attributes; i++) {
        if (span->attributes[i]->value != NULL) {
            assert_ptr_equal((const char *)span->attributes[i]->value,
                             (const char *)span->attributes[i] + sizeof(am_pb_keyvalue_t));
        }
    }
    am_arena_unref(arena);
    free(buf);
}

static void test_agent_traffic_equivalent(void **state)
{
    (void)state;
    for (size_t n = 0; n <= 40; n += 8) {
        size_t len;
        uint8_t *buf = agent_request(n == 0 ? 1 : n, &len);
        assert_int_equal(check_equivalence(buf, len).ours, 0);
        free(buf);
    }
    assert_int_equal(check_equivalence(NULL, 0).ours, 0);
    assert_int_equal(check_equivalence((const uint8_t *)"", 0).ours, 0);
}

static void test_every_truncation(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = rich_request(&len);
    size_t accepted = 0;
    for (size_t cut = 0; cut <= len; cut++) {
        /* A private copy of exactly `cut` bytes, so ASan sees any overread. */
        uint8_t *prefix = malloc(cut + 1);
        memcpy(prefix, buf, cut);
        verdict_t v = check_equivalence(cut == 0 ? NULL : prefix, cut);
        accepted += v.ours == 0;
        free(prefix);
    }
    /* Cuts between top-level fields are valid requests: some are accepted. */
    assert_true(accepted >= 2);
    free(buf);
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_mutations(void **state)
{
    (void)state;
    size_t rich_len;
    size_t agent_len;
    uint8_t *rich = rich_request(&rich_len);
    uint8_t *agent = agent_request(3, &agent_len);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    size_t outcomes[3] = {0};
    for (int round = 0; round < 6000; round++) {
        const uint8_t *base = round % 2 ? rich : agent;
        size_t len = round % 2 ? rich_len : agent_len;
        uint8_t *copy = malloc(len);
        memcpy(copy, base, len);
        int flips = 1 + (int)(xorshift(&seed) % 3);
        for (int i = 0; i < flips; i++) {
            size_t at = xorshift(&seed) % len;
            uint64_t r = xorshift(&seed);
            /* Small values hit tags, lengths and varint ends more often. */
            copy[at] = (uint8_t)(r % 4 == 0 ? (r >> 8) : (r >> 8) % 24);
        }
        verdict_t v = check_equivalence(copy, len);
        outcomes[v.ours == 0 ? 0 : v.ours == AM_EINVAL ? 1 : 2]++;
        free(copy);
    }
    print_message("mutations: %zu accepted, %zu invalid, %zu left to protobuf-c\n", outcomes[0],
                  outcomes[1], outcomes[2]);
    assert_true(outcomes[0] > 0 && outcomes[1] > 0 && outcomes[2] > 0);
    free(rich);
    free(agent);
}

static void test_hostile_lengths_and_varints(void **state)
{
    (void)state;
    /* A length past the end of the buffer, and past the end of its parent. */
    assert_int_equal(check_equivalence((const uint8_t *)"\x0a\x05\x12\x00", 4).ours, AM_EINVAL);
    assert_int_equal(check_equivalence((const uint8_t *)"\x0a\x02\x12\x05\x00\x00", 6).ours,
                     AM_EINVAL);
    /* A huge length and a length of 6 bytes. */
    assert_int_equal(check_equivalence((const uint8_t *)"\x0a\xff\xff\xff\xff\x0f", 6).ours,
                     AM_EINVAL);
    assert_int_equal(check_equivalence((const uint8_t *)"\x0a\x80\x80\x80\x80\x10", 6).ours,
                     AM_EINVAL);
    assert_int_equal(check_equivalence((const uint8_t *)"\x0a\x80\x80\x80\x80\x80\x00", 7).ours,
                     AM_EINVAL);
    /* A tag of 6 bytes, a truncated tag, a truncated fixed64. */
    assert_int_equal(check_equivalence((const uint8_t *)"\x8a\x80\x80\x80\x80\x00\x00", 7).ours,
                     AM_EINVAL);
    assert_int_equal(check_equivalence((const uint8_t *)"\x8a", 1).ours, AM_EINVAL);

    /* Varints: 10 bytes is the most protobuf-c reads; 11 is malformed. */
    wire_t span = {0};
    w_tag(&span, 10, 0);
    w_raw(&span, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 10);
    wire_t req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), 0); /* dropped count keeps the low 32 bits */
    free(req.data);
    w_tag(&span, 10, 0);
    w_raw(&span, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11);
    req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), AM_EINVAL);
    free(req.data);
    /* A non-minimal tag (field 5 in two bytes) and an enum beyond int32. */
    w_raw(&span, "\xaa\x00\x02hi", 5);
    w_tag(&span, 6, 0);
    w_varint(&span, UINT64_C(0xfffffffffe));
    req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), 0);
    free(req.data);
    /* A bool whose only set bit is beyond 64 bits: protobuf-c says true. */
    wire_t value = {0};
    w_tag(&value, 2, 0);
    w_raw(&value, "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02", 10);
    req = wrap_value(&value);
    assert_int_equal(decode_rc(&req), 0);
    free(req.data);
    /* Keys and strings with a NUL inside, and invalid UTF-8: copied as is. */
    wire_t pair = {0};
    w_len(&pair, 1, "session.id\0x", 12);
    w_tag(&pair, 2, 2);
    w_varint(&pair, 5);
    w_len(&pair, 1, "\xff\xfe\x00z", 3);
    w_msg(&span, 9, &pair);
    req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), 0);
    free(req.data);
}

static void test_hostile_depth(void **state)
{
    (void)state;
    size_t depths[] = {1, 2, 127, 128, 129, 200, 5000};
    for (size_t d = 0; d < AM_ARRAY_SIZE(depths); d++) {
        for (int kind = 0; kind < 2; kind++) {
            /* depth 1 is the attribute's own value */
            wire_t value = {0};
            w_tag(&value, 3, 0);
            w_varint(&value, 7);
            for (size_t level = 1; level < depths[d]; level++) {
                wire_t container = {0};
                if (kind == 0) {
                    w_msg(&container, 1, &value); /* ArrayValue.values */
                    w_msg(&value, 5, &container);
                } else {
                    wire_t pair = {0};
                    w_str(&pair, 1, "k");
                    w_msg(&pair, 2, &value);
                    w_msg(&container, 1, &pair); /* KeyValueList.values */
                    w_msg(&value, 6, &container);
                }
            }
            wire_t req = wrap_value(&value);
            int expect = depths[d] <= AM_OTLP_UNPACK_MAX_DEPTH ? 0 : AM_EINVAL;
            if (depths[d] <= 200) {
                assert_int_equal(decode_rc(&req), expect);
            } else {
                /* Far too deep for the reference to be worth running. */
                am_arena_t *arena = am_arena_new(1024);
                am_pb_export_req_t *out;
                assert_int_equal(am_otlp_unpack_traces(arena, req.data, req.len, &out), expect);
                assert_int_equal(am_arena_used(arena), 0);
                am_arena_unref(arena);
            }
            free(req.data);
        }
    }
}

static void test_wrong_wire_types(void **state)
{
    (void)state;
    static const struct {
        uint32_t field;
        unsigned wire_type;
    } cases[] = {
        {1, 0}, {3, 5},  {5, 0},  {6, 2},  {7, 0},  {8, 5},  {9, 0},
        {9, 1}, {10, 2}, {11, 5}, {13, 0}, {15, 0}, {16, 0}, {16, 1},
    };
    for (size_t i = 0; i < AM_ARRAY_SIZE(cases); i++) {
        wire_t span = {0};
        w_tag(&span, cases[i].field, cases[i].wire_type);
        switch (cases[i].wire_type) {
        case 0:
            w_varint(&span, 1);
            break;
        case 1:
            w_raw(&span, "\1\0\0\0\0\0\0\0", 8);
            break;
        case 2:
            w_varint(&span, 1);
            w_raw(&span, "x", 1);
            break;
        default:
            w_raw(&span, "\1\0\0\0", 4);
            break;
        }
        wire_t req = wrap_span(&span);
        verdict_t v = check_equivalence(req.data, req.len);
        assert_int_equal(v.ours, AM_EINVAL);
        assert_false(v.theirs_ok);
        free(req.data);
    }
    /* Groups are refused. */
    assert_int_equal(check_equivalence((const uint8_t *)"\x0b\x0c", 2).ours, AM_EINVAL);
    /* A value field sent as something else. */
    wire_t value = {0};
    w_tag(&value, 3, 1);
    w_raw(&value, "\1\0\0\0\0\0\0\0", 8);
    wire_t req = wrap_value(&value);
    assert_int_equal(decode_rc(&req), AM_EINVAL);
    free(req.data);
    /* protobuf-c reads a bool under any wire type: left to it. */
    w_tag(&value, 2, 1);
    w_raw(&value, "\0\0\0\0\0\0\0\x80", 8);
    req = wrap_value(&value);
    verdict_t v = check_equivalence(req.data, req.len);
    assert_int_equal(v.ours, AM_ENOTSUP);
    free(req.data);
}

static void test_shapes_left_to_protobuf_c(void **state)
{
    (void)state;
    /* An unknown field in a span, in an AnyValue, at the top. */
    wire_t span = {0};
    w_str(&span, 17, "future field");
    wire_t req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), AM_ENOTSUP);
    free(req.data);
    assert_int_equal(check_equivalence((const uint8_t *)"\x10\x01", 2).ours, AM_ENOTSUP);
    /* Status twice (protobuf-c merges), a value with two oneof members, a
     * KeyValue with two values. */
    w_str(&span, 15, "\x12\x01x");
    w_str(&span, 15, "\x18\x02");
    req = wrap_span(&span);
    verdict_t v = check_equivalence(req.data, req.len);
    assert_int_equal(v.ours, AM_ENOTSUP);
    assert_true(v.theirs_ok);
    free(req.data);
    wire_t value = {0};
    w_str(&value, 1, "text");
    w_tag(&value, 3, 0);
    w_varint(&value, 5);
    req = wrap_value(&value);
    assert_int_equal(decode_rc(&req), AM_ENOTSUP);
    free(req.data);
    wire_t pair = {0};
    w_str(&pair, 1, "k");
    w_str(&pair, 2, "\x18\x01");
    w_str(&pair, 2, "\x18\x02");
    w_msg(&span, 9, &pair);
    req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), AM_ENOTSUP);
    free(req.data);
    /* A scalar or a string given twice: the last wins, as in protobuf-c. */
    w_str(&span, 5, "first");
    w_str(&span, 5, "second");
    w_tag(&span, 6, 0);
    w_varint(&span, 2);
    w_tag(&span, 6, 0);
    w_varint(&span, 3);
    req = wrap_span(&span);
    assert_int_equal(decode_rc(&req), 0);
    free(req.data);
}

static void test_interned_keys(void **state)
{
    (void)state;
    am_pb_span_t span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    span.attributes =
        kvs(3, kv("gen_ai.request.model", av_str("gpt-4o")), kv("my.private.key", av_str("v")),
            kv("k", av_kvlist(1, kv("session.id", av_str("s")))));
    span.n_attributes = 3;
    am_pb_span_t *spans[1] = {&span};
    am_pb_scope_spans_t ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    ss.spans = spans;
    ss.n_spans = 1;
    am_pb_scope_spans_t *ss_list[1] = {&ss};
    am_pb_resource_spans_t rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs.scope_spans = ss_list;
    rs.n_scope_spans = 1;
    am_pb_resource_spans_t *rs_list[1] = {&rs};
    am_pb_export_req_t req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.resource_spans = rs_list;
    req.n_resource_spans = 1;
    size_t len;
    uint8_t *buf = pack_request(&req, &len);

    am_arena_t *arena = am_arena_new(1024);
    am_pb_export_req_t *out;
    assert_int_equal(am_otlp_unpack_traces(arena, buf, len, &out), 0);
    free(buf); /* nothing may point into the wire bytes */
    const am_pb_span_t *got = out->resource_spans[0]->scope_spans[0]->spans[0];
    const char *model = "gen_ai.request.model";
    assert_non_null(am_intern(model, strlen(model)));
    assert_ptr_equal(got->attributes[0]->key, am_intern(model, strlen(model)));
    assert_true(am_interned(got->attributes[0]->key));
    assert_string_equal(got->attributes[1]->key, "my.private.key");
    assert_false(am_interned(got->attributes[1]->key));
    assert_null(am_intern("my.private.key", 14));
    const am_pb_keyvalue_t *inner = got->attributes[2]->value->kvlist_value->values[0];
    assert_ptr_equal(inner->key, am_intern("session.id", 10));
    assert_string_equal(got->attributes[0]->value->string_value, "gpt-4o");
    am_arena_unref(arena);
}

static void test_memory_per_span(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = agent_request(100, &len);
    verdict_t v = check_equivalence(buf, len);
    assert_int_equal(v.ours, 0);
    print_message("100 spans, %zu wire bytes: %zu arena bytes per span (protobuf-c: %zu)\n", len,
                  v.ours_used / 100, v.theirs_used / 100);
    assert_true(v.ours_used * 10 < v.theirs_used * 6);
    free(buf);
}

static void test_allocation_failures(void **state)
{
    (void)state;
    /* Big enough for a heap string table, a growing tape and a new arena
     * chunk: fail each allocation in turn (failmalloc). */
    size_t len;
    uint8_t *buf = agent_request(100, &len);
    size_t expect_len;
    uint8_t *expect = NULL;
    int enomem = 0;
    for (long nth = 1;; nth++) {
        am_arena_t *arena = am_arena_new(1024);
        am_pb_export_req_t *out = NULL;
        am_alloc_set_fail_after(nth);
        int rc = am_otlp_unpack_traces(arena, buf, len, &out);
        long made = am_alloc_set_fail_after(0);
        if (rc == AM_ENOMEM) {
            enomem++;
            assert_null(out);
        } else {
            /* A failed string table allocation only means less sharing. */
            assert_int_equal(rc, 0);
            size_t got_len;
            uint8_t *got = pack_request(out, &got_len);
            if (expect == NULL) {
                expect = got;
                expect_len = got_len;
            } else {
                assert_int_equal(got_len, expect_len);
                assert_memory_equal(got, expect, got_len);
                free(got);
            }
        }
        am_arena_unref(arena);
        if (made < nth) {
            break; /* every allocation has had its turn */
        }
    }
    assert_true(enomem >= 2); /* the tape and the arena */
    free(expect);
    free(buf);
}

static void test_receiver_decode(void **state)
{
    (void)state;
    am__otlp_limits_t limits = {
        .max_msg_bytes = 16u << 20,
        .max_depth = 32,
        .max_spans = 1000,
        .max_list_entries = 64,
    };
    char err[256];
    am_pb_export_req_t *req;

    /* Common traffic: decoded here, as small as the direct call. */
    size_t len;
    uint8_t *buf = agent_request(50, &len);
    am_arena_t *arena = am_arena_new(len * 2 + 1024);
    assert_int_equal(am__otlp_decode_proto(arena, buf, len, &limits, &req, err, sizeof(err)), 0);
    assert_int_equal(req->resource_spans[0]->scope_spans[0]->n_spans, 50);
    assert_true(am_interned(req->resource_spans[0]->scope_spans[0]->spans[0]->attributes[0]->key));
    am_arena_unref(arena);
    free(buf);

    /* An unknown field: protobuf-c decodes it (and keeps the field). */
    wire_t span = {0};
    w_str(&span, 17, "future field");
    wire_t wire = wrap_span(&span);
    arena = am_arena_new(1024);
    assert_int_equal(
        am__otlp_decode_proto(arena, wire.data, wire.len, &limits, &req, err, sizeof(err)), 0);
    assert_int_equal(req->resource_spans[0]->scope_spans[0]->spans[0]->base.n_unknown_fields, 1);
    am_arena_unref(arena);
    free(wire.data);

    /* A field of the wrong type. */
    w_tag(&span, 5, 0);
    w_varint(&span, 1);
    wire = wrap_span(&span);
    arena = am_arena_new(1024);
    err[0] = '\0';
    assert_int_equal(
        am__otlp_decode_proto(arena, wire.data, wire.len, &limits, &req, err, sizeof(err)),
        AM__GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "malformed protobuf"));
    am_arena_unref(arena);
    free(wire.data);

    /* Two resources of 40 attributes each: protobuf-c merges them into 80,
     * more than the 64 allowed, which the pre-scan (per instance) cannot
     * see: the decoded request is checked. */
    wire_t rs = {0};
    for (int copy = 0; copy < 2; copy++) {
        wire_t res = {0};
        for (int i = 0; i < 40; i++) {
            wire_t pair = {0};
            char key[16];
            snprintf(key, sizeof(key), "k%d", i);
            w_str(&pair, 1, key);
            w_msg(&res, 1, &pair);
        }
        w_msg(&rs, 1, &res);
    }
    wire = (wire_t){0};
    w_msg(&wire, 1, &rs);
    arena = am_arena_new(1024);
    err[0] = '\0';
    assert_int_equal(
        am__otlp_decode_proto(arena, wire.data, wire.len, &limits, &req, err, sizeof(err)),
        AM__GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "more than 64"));
    am_arena_unref(arena);
    free(wire.data);

    /* Nesting beyond this decoder's cap, allowed by the configuration:
     * protobuf-c decides. */
    wire_t value = {0};
    w_tag(&value, 3, 0);
    w_varint(&value, 7);
    for (size_t level = 1; level < AM_OTLP_UNPACK_MAX_DEPTH + 20; level++) {
        wire_t container = {0};
        w_msg(&container, 1, &value);
        w_msg(&value, 5, &container);
    }
    wire = wrap_value(&value);
    limits.max_depth = 256;
    arena = am_arena_new(1024);
    assert_int_equal(
        am__otlp_decode_proto(arena, wire.data, wire.len, &limits, &req, err, sizeof(err)), 0);
    am_arena_unref(arena);
    free(wire.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rich_request_equivalent),
        cmocka_unit_test(test_agent_traffic_equivalent),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_hostile_lengths_and_varints),
        cmocka_unit_test(test_hostile_depth),
        cmocka_unit_test(test_wrong_wire_types),
        cmocka_unit_test(test_shapes_left_to_protobuf_c),
        cmocka_unit_test(test_interned_keys),
        cmocka_unit_test(test_memory_per_span),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_receiver_decode),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
