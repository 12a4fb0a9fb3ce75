/*
 * kafka_encode.c - a batch becomes Kafka messages.
 *
 * Spans.  The message key decides the partition, so every span is first
 * given its (topic, key): the key is the partition_by value (the hex trace
 * id, an attribute looked up on the span then on its resource, or none) and
 * the topic comes from topic_from_attribute when set.  Spans with the same
 * (topic, key) form a group, in order of first appearance; a group becomes
 * one ExportTraceServiceRequest whose ResourceSpans and ScopeSpans are
 * shallow copies of the originals pointing at just that group's spans (no
 * span is copied: the request only lives while it is encoded, and the batch
 * is borrowed for that long).
 *
 * Splitting.  A group whose encoding is over the budget (max_message_bytes
 * minus the key, the static headers and librdkafka's record overhead) is cut
 * into ceil(size / budget) pieces of about equal span weight (each span's
 * protobuf size), each piece regrouped by resource and scope and encoded on
 * its own, recursively until every piece fits.  Only a span that alone is
 * over the budget is rejected: it is counted and logged, never sent half.
 * The same procedure serves otlp_json, whose size is roughly proportional to
 * the protobuf weights, with one more cut where the estimate was short.
 *
 * Events.  One message per cost event: key = the event's scope key, value =
 * its JSON as built by the processor that emitted it.
 *
 * Memory: grouping tables and the regrouped requests live in a scratch arena
 * freed before returning; each message is one am_malloc block owned by the
 * caller from then on.
 */
#include <string.h>

#include "am_attr.h"
#include "am_log.h"
#include "am_otlp_json.h"
#include "kafka_internal.h"

am__kafka_msg_t *am__kafka_msg_new(const char *topic, const char *key, size_t key_len,
                                   const void *value, size_t value_len)
{
    size_t topic_len = strlen(topic);
    size_t size =
        sizeof(am__kafka_msg_t) + value_len + 1 + topic_len + 1 + (key != NULL ? key_len + 1 : 0);
    am__kafka_msg_t *msg = am_malloc(size);
    if (msg == NULL) {
        return NULL;
    }
    memset(msg, 0, sizeof(*msg));
    /* Until delivered, a message is data in flight: memory_limiter counts it
     * with the request arenas, so librdkafka's queue cannot grow RSS past the
     * limit unnoticed. */
    msg->alloc_size = size;
    am_memory_hold(size);
    char *p = (char *)(msg + 1);
    msg->value = p;
    msg->value_len = value_len;
    if (value != NULL) {
        memcpy(p, value, value_len);
    }
    p[value_len] = '\0';
    p += value_len + 1;
    msg->topic = p;
    memcpy(p, topic, topic_len + 1);
    p += topic_len + 1;
    if (key != NULL) {
        msg->key = p;
        msg->key_len = key_len;
        memcpy(p, key, key_len);
        p[key_len] = '\0';
    }
    return msg;
}

void am__kafka_msg_free(am__kafka_msg_t *msg)
{
    if (msg != NULL) {
        am_memory_release(msg->alloc_size);
        am_free(msg);
    }
}

static void encoded_append(am__kafka_encoded_t *out, am__kafka_msg_t *msg)
{
    msg->next = NULL;
    if (out->tail != NULL) {
        out->tail->next = msg;
    } else {
        out->head = msg;
    }
    out->tail = msg;
    out->n_msgs++;
}

void am__kafka_encoded_free(am__kafka_encoded_t *out)
{
    for (am__kafka_msg_t *msg = out->head; msg != NULL;) {
        am__kafka_msg_t *next = msg->next;
        am__kafka_msg_free(msg);
        msg = next;
    }
    memset(out, 0, sizeof(*out));
}

/* ---- keys ---------------------------------------------------------------- */

/* The attribute as text: strings as is, numbers and booleans rendered. */
static const char *attr_text(am_pb_keyvalue_t *const *attrs, size_t n_attrs, const char *name,
                             char *buf, size_t buf_size, size_t *len)
{
    const am_pb_anyvalue_t *v = am_attr_find(attrs, n_attrs, name);
    if (v == NULL) {
        return NULL;
    }
    switch (v->value_case) {
    case AM_PB_VALUE(STRING_VALUE):
        if (v->string_value == NULL || v->string_value[0] == '\0') {
            return NULL;
        }
        *len = strlen(v->string_value);
        return v->string_value;
    case AM_PB_VALUE(INT_VALUE):
    case AM_PB_VALUE(DOUBLE_VALUE):
    case AM_PB_VALUE(BOOL_VALUE):
        am_anyvalue_to_text(v, buf, buf_size);
        *len = strlen(buf);
        return *len > 0 ? buf : NULL;
    default:
        return NULL;
    }
}

static const char *span_attr_text(const am_pb_span_t *span, const am_pb_resource_t *resource,
                                  const char *name, char *buf, size_t buf_size, size_t *len)
{
    const char *text = attr_text(span->attributes, span->n_attributes, name, buf, buf_size, len);
    if (text == NULL && resource != NULL) {
        text = attr_text(resource->attributes, resource->n_attributes, name, buf, buf_size, len);
    }
    return text;
}

const char *am__kafka_span_key(const am__kafka_encoder_t *enc, const am_pb_span_t *span,
                               const am_pb_resource_t *resource, char *buf, size_t buf_size,
                               size_t *key_len)
{
    *key_len = 0;
    if (enc->keying == AM__KAFKA_KEY_NONE) {
        return NULL;
    }
    if (enc->keying == AM__KAFKA_KEY_ATTRIBUTE) {
        const char *text =
            span_attr_text(span, resource, enc->key_attribute, buf, buf_size, key_len);
        if (text != NULL) {
            return text;
        }
        /* Without the attribute, keep at least the trace together. */
    }
    if (span->trace_id.len == 0 || span->trace_id.len * 2 + 1 > buf_size) {
        return NULL;
    }
    am_hex(span->trace_id.data, span->trace_id.len, buf);
    *key_len = span->trace_id.len * 2;
    return buf;
}

static const char *span_topic(const am__kafka_encoder_t *enc, const am_pb_span_t *span,
                              const am_pb_resource_t *resource)
{
    if (enc->topic_attribute != NULL) {
        char buf[64];
        size_t len;
        const char *text =
            span_attr_text(span, resource, enc->topic_attribute, buf, sizeof(buf), &len);
        /* Numbers are no topic names; only strings count here. */
        if (text != NULL && text != buf) {
            return text;
        }
    }
    return enc->spans_topic;
}

/* ---- grouping ------------------------------------------------------------ */

typedef struct entry {
    uint32_t rs; /* index into req->resource_spans */
    uint32_t ss; /* index into that ResourceSpans' scope_spans */
    am_pb_span_t *span;
    size_t weight; /* protobuf size, computed only when splitting */
} entry_t;

typedef struct group {
    const char *topic;
    char *key; /* in the scratch arena; NULL: no key */
    size_t key_len;
    uint64_t hash;
    entry_t *entries;
    size_t n_entries;
    size_t fill;
} group_t;

typedef struct grouper {
    am_arena_t *arena;
    group_t *groups;
    size_t n_groups, cap_groups;
    uint32_t *slots; /* open addressing: group index + 1, 0 = empty */
    size_t n_slots;  /* power of two */
} grouper_t;

static uint64_t hash_bytes(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

static uint64_t group_hash(const char *topic, const char *key, size_t key_len)
{
    uint64_t h = UINT64_C(14695981039346656037);
    h = hash_bytes(h, topic, strlen(topic) + 1);
    if (key != NULL) {
        h = hash_bytes(h, "k", 1);
        h = hash_bytes(h, key, key_len);
    }
    return h;
}

static bool group_matches(const group_t *g, uint64_t hash, const char *topic, const char *key,
                          size_t key_len)
{
    if (g->hash != hash || strcmp(g->topic, topic) != 0) {
        return false;
    }
    if (key == NULL || g->key == NULL) {
        return key == NULL && g->key == NULL;
    }
    return g->key_len == key_len && memcmp(g->key, key, key_len) == 0;
}

static int grouper_rehash(grouper_t *gr, size_t n_slots)
{
    uint32_t *slots = am_calloc(n_slots, sizeof(*slots));
    if (slots == NULL) {
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < gr->n_groups; i++) {
        size_t at = gr->groups[i].hash & (n_slots - 1);
        while (slots[at] != 0) {
            at = (at + 1) & (n_slots - 1);
        }
        slots[at] = (uint32_t)i + 1;
    }
    am_free(gr->slots);
    gr->slots = slots;
    gr->n_slots = n_slots;
    return 0;
}

/* The index of the (topic, key) group, created when new; -1 on ENOMEM. */
static long grouper_find(grouper_t *gr, const char *topic, const char *key, size_t key_len)
{
    uint64_t hash = group_hash(topic, key, key_len);
    size_t at = hash & (gr->n_slots - 1);
    while (gr->slots[at] != 0) {
        group_t *g = &gr->groups[gr->slots[at] - 1];
        if (group_matches(g, hash, topic, key, key_len)) {
            return (long)(gr->slots[at] - 1);
        }
        at = (at + 1) & (gr->n_slots - 1);
    }
    if (gr->n_groups == gr->cap_groups) {
        size_t cap = gr->cap_groups * 2;
        group_t *grown = am_realloc(gr->groups, cap * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        gr->groups = grown;
        gr->cap_groups = cap;
    }
    group_t *g = &gr->groups[gr->n_groups];
    memset(g, 0, sizeof(*g));
    g->topic = topic;
    g->hash = hash;
    if (key != NULL) {
        g->key = am_arena_strndup(gr->arena, key, key_len);
        if (g->key == NULL) {
            return -1;
        }
        g->key_len = key_len;
    }
    gr->slots[at] = (uint32_t)gr->n_groups + 1;
    gr->n_groups++;
    if (gr->n_groups * 2 > gr->n_slots && grouper_rehash(gr, gr->n_slots * 2) != 0) {
        return -1;
    }
    return (long)(gr->n_groups - 1);
}

/* ---- requests ------------------------------------------------------------ */

/* A request over entries[0..n) (sorted by rs, ss), sharing span pointers. */
static am_pb_export_req_t *build_request(am_arena_t *arena, const am_pb_export_req_t *src,
                                         const entry_t *entries, size_t n)
{
    size_t n_rs = 0, n_ss = 0;
    for (size_t i = 0; i < n; i++) {
        bool new_rs = i == 0 || entries[i].rs != entries[i - 1].rs;
        n_rs += new_rs;
        n_ss += new_rs || entries[i].ss != entries[i - 1].ss;
    }
    am_pb_export_req_t *req = am_arena_alloc(arena, sizeof(*req));
    am_pb_resource_spans_t **rs_ptrs = am_arena_calloc(arena, n_rs, sizeof(*rs_ptrs));
    am_pb_resource_spans_t *rs_copies = am_arena_calloc(arena, n_rs, sizeof(*rs_copies));
    am_pb_scope_spans_t **ss_ptrs = am_arena_calloc(arena, n_ss, sizeof(*ss_ptrs));
    am_pb_scope_spans_t *ss_copies = am_arena_calloc(arena, n_ss, sizeof(*ss_copies));
    am_pb_span_t **span_ptrs = am_arena_calloc(arena, n, sizeof(*span_ptrs));
    if (req == NULL || rs_ptrs == NULL || rs_copies == NULL || ss_ptrs == NULL ||
        ss_copies == NULL || span_ptrs == NULL) {
        return NULL;
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(req);
    req->resource_spans = rs_ptrs;
    req->n_resource_spans = n_rs;
    size_t rs_at = 0, ss_at = 0;
    am_pb_resource_spans_t *rs = NULL;
    am_pb_scope_spans_t *ss = NULL;
    for (size_t i = 0; i < n; i++) {
        const entry_t *e = &entries[i];
        bool new_rs = i == 0 || e->rs != entries[i - 1].rs;
        if (new_rs) {
            rs = &rs_copies[rs_at];
            *rs = *src->resource_spans[e->rs];
            rs->scope_spans = &ss_ptrs[ss_at];
            rs->n_scope_spans = 0;
            rs_ptrs[rs_at++] = rs;
        }
        if (new_rs || e->ss != entries[i - 1].ss) {
            ss = &ss_copies[ss_at];
            *ss = *src->resource_spans[e->rs]->scope_spans[e->ss];
            ss->spans = &span_ptrs[i];
            ss->n_spans = 0;
            ss_ptrs[ss_at++] = ss;
            rs->n_scope_spans++;
        }
        ss->spans[ss->n_spans++] = e->span;
    }
    return req;
}

typedef struct encode_ctx {
    const am__kafka_encoder_t *enc;
    const am_pb_export_req_t *src;
    am_arena_t *arena;
    am__kafka_encoded_t *out;
    const group_t *group;
    size_t budget; /* largest value */
} encode_ctx_t;

static void reject_span(encode_ctx_t *ctx, const am_pb_span_t *span, size_t size)
{
    char trace_hex[33] = "-", span_hex[17] = "-";
    if (span->trace_id.len == 16) {
        am_hex(span->trace_id.data, 16, trace_hex);
    }
    if (span->span_id.len == 8) {
        am_hex(span->span_id.data, 8, span_hex);
    }
    AM_ERROR(ctx->enc->id,
             "span trace_id=%s span_id=%s name=\"%s\" encodes to %zu bytes, more than "
             "max_message_bytes %zu allows for a message (%zu for the value); rejected",
             trace_hex, span_hex, span->name != NULL ? span->name : "", size,
             ctx->enc->max_message_bytes, ctx->budget);
    ctx->out->rejected_spans++;
}

/* Encode entries[0..n) as one message, or cut them into pieces that fit. */
static int emit_range(encode_ctx_t *ctx, entry_t *entries, size_t n)
{
    const group_t *g = ctx->group;
    am_pb_export_req_t *req = build_request(ctx->arena, ctx->src, entries, n);
    if (req == NULL) {
        ctx->out->failed_spans += n;
        return AM_ENOMEM;
    }
    size_t size;
    char *json = NULL;
    if (ctx->enc->json) {
        int rc = am_otlp_json_encode_traces(req, &json, &size);
        if (rc != 0) {
            ctx->out->failed_spans += n;
            if (rc != AM_ENOMEM) {
                AM_ERROR(ctx->enc->id, "%zu spans cannot be encoded as OTLP/JSON (%s); dropped", n,
                         am_strerror(rc));
                return 0;
            }
            return rc;
        }
    } else {
        size = protobuf_c_message_get_packed_size(&req->base);
    }
    if (size <= ctx->budget) {
        am__kafka_msg_t *msg = am__kafka_msg_new(g->topic, g->key, g->key_len, json, size);
        if (msg == NULL) {
            am_free(json);
            ctx->out->failed_spans += n;
            return AM_ENOMEM;
        }
        if (json == NULL) {
            protobuf_c_message_pack(&req->base, (uint8_t *)msg->value);
        }
        am_free(json);
        msg->spans = (uint32_t)n;
        encoded_append(ctx->out, msg);
        return 0;
    }
    am_free(json);
    if (n == 1) {
        reject_span(ctx, entries[0].span, size);
        return 0;
    }
    /* Cut into pieces of about equal protobuf weight. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (entries[i].weight == 0) {
            entries[i].weight = protobuf_c_message_get_packed_size(&entries[i].span->base) + 6;
        }
        total += entries[i].weight;
    }
    size_t pieces = ctx->budget > 0 ? (size + ctx->budget - 1) / ctx->budget : n;
    pieces = AM_MAX(pieces, (size_t)2);
    pieces = AM_MIN(pieces, n);
    size_t start = 0, acc = 0, done_pieces = 0;
    for (size_t i = 0; i < n; i++) {
        acc += entries[i].weight;
        size_t remaining_entries = n - (i + 1);
        size_t remaining_pieces = pieces - done_pieces - 1;
        bool cut =
            acc * pieces >= total * (done_pieces + 1) || remaining_entries == remaining_pieces;
        if (i == n - 1 || (cut && remaining_pieces > 0)) {
            int rc = emit_range(ctx, entries + start, i + 1 - start);
            if (rc != 0) {
                ctx->out->failed_spans += n - (i + 1);
                return rc;
            }
            start = i + 1;
            done_pieces++;
        }
    }
    return 0;
}

static size_t value_budget(const am__kafka_encoder_t *enc, size_t key_len)
{
    size_t overhead = key_len + enc->header_bytes + AM__KAFKA_RECORD_OVERHEAD;
    return enc->max_message_bytes > overhead ? enc->max_message_bytes - overhead : 0;
}

int am__kafka_encode_spans(const am__kafka_encoder_t *enc, const am_pb_export_req_t *req,
                           am__kafka_encoded_t *out)
{
    if (req == NULL) {
        return 0;
    }
    size_t total = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        const am_pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t s = 0; rs != NULL && s < rs->n_scope_spans; s++) {
            total += rs->scope_spans[s] != NULL ? rs->scope_spans[s]->n_spans : 0;
        }
    }
    if (total == 0) {
        return 0;
    }
    int rc = 0;
    grouper_t gr = {0};
    uint32_t *span_group = am_malloc(total * sizeof(*span_group));
    gr.arena = am_arena_new(16384);
    gr.cap_groups = 16;
    gr.groups = am_malloc(gr.cap_groups * sizeof(*gr.groups));
    if (span_group == NULL || gr.arena == NULL || gr.groups == NULL ||
        grouper_rehash(&gr, 64) != 0) {
        out->failed_spans += total;
        rc = AM_ENOMEM;
        goto done;
    }

    /* Pass 1: every span gets its group. */
    size_t at = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        const am_pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t s = 0; rs != NULL && s < rs->n_scope_spans; s++) {
            const am_pb_scope_spans_t *ss = rs->scope_spans[s];
            for (size_t i = 0; ss != NULL && i < ss->n_spans; i++) {
                char buf[128];
                size_t key_len;
                const am_pb_span_t *span = ss->spans[i];
                const char *key =
                    am__kafka_span_key(enc, span, rs->resource, buf, sizeof(buf), &key_len);
                const char *topic = span_topic(enc, span, rs->resource);
                long g = grouper_find(&gr, topic, key, key_len);
                if (g < 0) {
                    out->failed_spans += total;
                    rc = AM_ENOMEM;
                    goto done;
                }
                span_group[at++] = (uint32_t)g;
                gr.groups[g].n_entries++;
            }
        }
    }

    /* Pass 2: the entries of each group, in batch order. */
    for (size_t g = 0; g < gr.n_groups; g++) {
        gr.groups[g].entries = am_arena_calloc(gr.arena, gr.groups[g].n_entries, sizeof(entry_t));
        if (gr.groups[g].entries == NULL) {
            out->failed_spans += total;
            rc = AM_ENOMEM;
            goto done;
        }
    }
    at = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        const am_pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t s = 0; rs != NULL && s < rs->n_scope_spans; s++) {
            const am_pb_scope_spans_t *ss = rs->scope_spans[s];
            for (size_t i = 0; ss != NULL && i < ss->n_spans; i++) {
                group_t *g = &gr.groups[span_group[at++]];
                g->entries[g->fill++] =
                    (entry_t){.rs = (uint32_t)r, .ss = (uint32_t)s, .span = ss->spans[i]};
            }
        }
    }

    /* Pass 3: encode. */
    for (size_t g = 0; g < gr.n_groups; g++) {
        encode_ctx_t ctx = {.enc = enc,
                            .src = req,
                            .arena = gr.arena,
                            .out = out,
                            .group = &gr.groups[g],
                            .budget = value_budget(enc, gr.groups[g].key_len)};
        rc = emit_range(&ctx, gr.groups[g].entries, gr.groups[g].n_entries);
        if (rc != 0) {
            for (size_t rest = g + 1; rest < gr.n_groups; rest++) {
                out->failed_spans += gr.groups[rest].n_entries;
            }
            goto done;
        }
    }
done:
    if (rc == AM_ENOMEM) {
        AM_ERROR(enc->id, "out of memory while encoding spans; %zu spans dropped",
                 out->failed_spans);
    }
    am_free(span_group);
    am_free(gr.groups);
    am_free(gr.slots);
    if (gr.arena != NULL) {
        am_arena_unref(gr.arena);
    }
    return rc;
}

/* ---- events -------------------------------------------------------------- */

static const char *event_topic(const am__kafka_encoder_t *enc, const am_event_t *ev)
{
    if (enc->topic_attribute != NULL) {
        const char *topic;
        if (am_attr_get_str(ev->attrs, ev->n_attrs, enc->topic_attribute, &topic)) {
            return topic;
        }
    }
    return enc->events_topic;
}

int am__kafka_encode_events(const am__kafka_encoder_t *enc, const am_event_t *events,
                            size_t n_events, am__kafka_encoded_t *out)
{
    for (size_t i = 0; i < n_events; i++) {
        const am_event_t *ev = &events[i];
        if (ev->json == NULL) {
            AM_ERROR(enc->id, "cost event %s without JSON; dropped",
                     ev->kind != NULL ? ev->kind : "?");
            out->failed_events++;
            continue;
        }
        size_t json_len = ev->json_len > 0 ? ev->json_len : strlen(ev->json);
        const char *key = ev->key != NULL && ev->key[0] != '\0' ? ev->key : NULL;
        size_t key_len = key != NULL ? strlen(key) : 0;
        if (json_len > value_budget(enc, key_len)) {
            AM_ERROR(enc->id,
                     "cost event %s key=%s is %zu bytes, more than max_message_bytes %zu "
                     "allows; rejected",
                     ev->kind != NULL ? ev->kind : "?", key != NULL ? key : "-", json_len,
                     enc->max_message_bytes);
            out->rejected_events++;
            continue;
        }
        am__kafka_msg_t *msg =
            am__kafka_msg_new(event_topic(enc, ev), key, key_len, ev->json, json_len);
        if (msg == NULL) {
            out->failed_events += n_events - i;
            AM_ERROR(enc->id, "out of memory while encoding events; %zu events dropped",
                     n_events - i);
            return AM_ENOMEM;
        }
        msg->events = 1;
        encoded_append(out, msg);
    }
    return 0;
}

/* ---- errors -------------------------------------------------------------- */

bool am__kafka_error_is_retriable(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
        return true;
    default:
        return false;
    }
}
