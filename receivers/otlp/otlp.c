/*
 * otlp.c - the `otlp` receiver: its option table, its life cycle, and the
 * one step both transports share ("export this request body").
 *
 * The receiver listens for OTLP/gRPC (otlp_grpc.c, an nghttp2 server on
 * libuv) and OTLP/HTTP (otlp_http.c, on core's am_http server), both on the
 * receiver's loop (the I/O thread, ARCHITECTURE.md §10).  Whatever the
 * transport, a request body ends up in am__otlp_export(): decoded into one
 * arena, spans with malformed ids removed (partial success), wrapped in a
 * batch that owns the arena, pushed to the pipeline with am_consume(), and
 * answered from the pipeline's status.  The pipeline only enqueues, so the
 * answer is known when consume returns and no request is ever parked here.
 *
 * Which protocols run: a protocol is enabled when its section is present
 * under `protocols:`.  When `protocols:` itself is absent (`otlp: {}` or
 * `otlp:`), both run on their default endpoints: that is what users of the
 * OpenTelemetry Collector expect from a bare `otlp` receiver, and it keeps
 * the shortest config useful.  `protocols:` present with neither section is
 * a config error (a receiver that receives nothing is a mistake).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "am_attr.h"
#include "am_log.h"
#include "otlp_internal.h"

#if defined(__has_include)
#if __has_include("am_otlp_json.h")
#include "am_otlp_json.h"
#define OTLP_HAVE_JSON 1
#endif
#endif
#ifndef OTLP_HAVE_JSON
#define OTLP_HAVE_JSON 0
#endif

#define COMPONENT "receiver/otlp"

/* ---- option table ---------------------------------------------------- */

static const am_option_t tls_options[] = {
    AM_OPT("cert_file", AM_OPT_STRING, NULL, am__otlp_tls_cfg_t, cert_file,
           "PEM server certificate (chain); re-read on SIGHUP"),
    AM_OPT("key_file", AM_OPT_STRING, NULL, am__otlp_tls_cfg_t, key_file,
           "PEM private key of cert_file; re-read on SIGHUP"),
    AM_OPT("client_ca_file", AM_OPT_STRING, NULL, am__otlp_tls_cfg_t, client_ca_file,
           "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"),
    {.name = "min_version",
     .type = AM_OPT_ENUM,
     .def = "1.2",
     .offset = offsetof(am__otlp_tls_cfg_t, min_version),
     .doc = "lowest TLS version accepted",
     .choices = "1.2|1.3"},
    AM_OPT_END,
};

static const am_option_t auth_options[] = {
    AM_OPT("bearer_token", AM_OPT_STRING, NULL, am__otlp_auth_cfg_t, bearer_token,
           "requests must carry `authorization: Bearer <token>` (use ${env:VAR})"),
    AM_OPT_END,
};

static const am_option_t keepalive_options[] = {
    AM_OPT("time", AM_OPT_DURATION, "2h", am__otlp_keepalive_cfg_t, time_ms,
           "ping a client after this long without any frame from it (0 = never)"),
    AM_OPT("timeout", AM_OPT_DURATION, "20s", am__otlp_keepalive_cfg_t, timeout_ms,
           "close the connection when a ping is not answered within this"),
    AM_OPT_END,
};

const am_option_t am__otlp_grpc_options[] = {
    AM_OPT("endpoint", AM_OPT_ENDPOINT, "127.0.0.1:4317", am__otlp_grpc_cfg_t, endpoint,
           "host:port to listen on for OTLP/gRPC"),
    AM_OPT("max_recv_msg_size_mib", AM_OPT_SIZE_MIB, "16", am__otlp_grpc_cfg_t, max_recv_msg_size,
           "largest request message, checked again after decompression"),
    {.name = "max_concurrent_streams",
     .type = AM_OPT_INT,
     .def = "100",
     .offset = offsetof(am__otlp_grpc_cfg_t, max_concurrent_streams),
     .doc = "HTTP/2 streams a client may have open on one connection",
     .min = 1,
     .max = 100000},
    {.name = "max_connections",
     .type = AM_OPT_INT,
     .def = "1024",
     .offset = offsetof(am__otlp_grpc_cfg_t, max_connections),
     .doc = "connections past this are closed as soon as they are accepted",
     .min = 1,
     .max = 1000000},
    {.name = "header_timeout",
     .type = AM_OPT_DURATION,
     .def = "10s",
     .offset = offsetof(am__otlp_grpc_cfg_t, header_timeout_ms),
     .doc = "a new connection must send complete request headers within this (slow clients "
            "are closed)",
     .min = 1,
     .max = 3600000},
    {.name = "keepalive",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_grpc_cfg_t, keepalive),
     .doc = "server keepalive pings",
     .sub = keepalive_options},
    AM_OPT("keepalive_time", AM_OPT_DURATION, NULL, am__otlp_grpc_cfg_t, keepalive_time_ms,
           "flat spelling of keepalive.time (wins when given)"),
    AM_OPT("keepalive_timeout", AM_OPT_DURATION, NULL, am__otlp_grpc_cfg_t, keepalive_timeout_ms,
           "flat spelling of keepalive.timeout (wins when given)"),
    AM_OPT("max_connection_idle", AM_OPT_DURATION, "0", am__otlp_grpc_cfg_t, max_connection_idle_ms,
           "GOAWAY a connection without requests for this long (0 = off)"),
    AM_OPT("max_connection_age", AM_OPT_DURATION, "0", am__otlp_grpc_cfg_t, max_connection_age_ms,
           "GOAWAY a connection this old, after its requests end (0 = off)"),
    {.name = "tls",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_grpc_cfg_t, tls),
     .doc = "serve TLS (ALPN h2) instead of cleartext HTTP/2",
     .sub = tls_options},
    {.name = "auth",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_grpc_cfg_t, auth),
     .doc = "require a bearer token (UNAUTHENTICATED without it)",
     .sub = auth_options},
    AM_OPT_END,
};

const am_option_t am__otlp_http_options[] = {
    AM_OPT("endpoint", AM_OPT_ENDPOINT, "127.0.0.1:4318", am__otlp_http_cfg_t, endpoint,
           "host:port to listen on for OTLP/HTTP (POST /v1/traces)"),
    AM_OPT("max_request_body_size_mib", AM_OPT_SIZE_MIB, "16", am__otlp_http_cfg_t,
           max_request_body_size, "largest request body, before and after decompression (413)"),
    {.name = "tls",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_http_cfg_t, tls),
     .doc = "serve HTTPS (ALPN http/1.1) instead of cleartext HTTP",
     .sub = tls_options},
    {.name = "auth",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_http_cfg_t, auth),
     .doc = "require a bearer token (401 without it)",
     .sub = auth_options},
    AM_OPT_END,
};

static const am_option_t protocols_options[] = {
    {.name = "grpc",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_protocols_cfg_t, grpc),
     .doc = "OTLP/gRPC; enabled when present",
     .sub = am__otlp_grpc_options},
    {.name = "http",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_protocols_cfg_t, http),
     .doc = "OTLP/HTTP; enabled when present",
     .sub = am__otlp_http_options},
    AM_OPT_END,
};

static const am_option_t otlp_options[] = {
    {.name = "protocols",
     .type = AM_OPT_SECTION,
     .offset = offsetof(am__otlp_config_t, protocols),
     .doc = "which protocols to serve; absent = both on their default endpoints",
     .sub = protocols_options},
    {.name = "max_attribute_depth",
     .type = AM_OPT_INT,
     .def = "32",
     .offset = offsetof(am__otlp_config_t, max_attribute_depth),
     .doc = "deepest nesting of attribute values (arrays/maps); deeper requests get 400",
     .min = 1,
     .max = 256},
    {.name = "max_spans_per_request",
     .type = AM_OPT_INT,
     .def = "100000",
     .offset = offsetof(am__otlp_config_t, max_spans_per_request),
     .doc = "spans one request may carry",
     .min = 1,
     .max = 100000000},
    {.name = "max_attributes_per_span",
     .type = AM_OPT_INT,
     .def = "1024",
     .offset = offsetof(am__otlp_config_t, max_attributes_per_span),
     .doc = "attributes per span (also bounds events, links, array and map entries)",
     .min = 1,
     .max = 10000000},
    AM_OPT_END,
};

static void validate_tls(const am__otlp_tls_cfg_t *tls, const void *node, const char *where,
                         am_errors_t *errs)
{
    if (!tls->set) {
        return;
    }
    if (tls->cert_file == NULL || tls->cert_file[0] == '\0' || tls->key_file == NULL ||
        tls->key_file[0] == '\0') {
        am_errors_add(errs, node, "%s.tls: cert_file and key_file are both required", where);
    }
}

static void validate_auth(const am__otlp_auth_cfg_t *auth, const void *node, const char *where,
                          am_errors_t *errs)
{
    if (auth->set && (auth->bearer_token == NULL || auth->bearer_token[0] == '\0')) {
        am_errors_add(errs, node,
                      "%s.auth.bearer_token is empty (an unset ${env:VAR}?); remove auth or set "
                      "a token",
                      where);
    }
}

static void otlp_validate(const void *config, const void *node, const char *prefix,
                          am_errors_t *errs)
{
    const am__otlp_config_t *cfg = config;
    const am__otlp_protocols_cfg_t *protocols = &cfg->protocols;
    const am_node_t *at = node;
    if (!protocols->set) {
        return; /* both protocols on their defaults, see the top of this file */
    }
    if (!protocols->grpc.set && !protocols->http.set) {
        am_errors_add(errs, at,
                      "%s.protocols: enable at least one of grpc, http (or remove `protocols` "
                      "to serve both)",
                      prefix);
        return;
    }
    char where[256];
    if (protocols->grpc.set) {
        const am__otlp_grpc_cfg_t *grpc = &protocols->grpc;
        snprintf(where, sizeof(where), "%s.protocols.grpc", prefix);
        if (grpc->max_recv_msg_size <= 0 || grpc->max_recv_msg_size > ((int64_t)1 << 30)) {
            am_errors_add(errs, at, "%s.max_recv_msg_size_mib must be between 1 and 1024", where);
        }
        validate_tls(&grpc->tls, at, where, errs);
        validate_auth(&grpc->auth, at, where, errs);
    }
    if (protocols->http.set) {
        const am__otlp_http_cfg_t *http = &protocols->http;
        snprintf(where, sizeof(where), "%s.protocols.http", prefix);
        if (http->max_request_body_size <= 0 || http->max_request_body_size > ((int64_t)1 << 30)) {
            am_errors_add(errs, at, "%s.max_request_body_size_mib must be between 1 and 1024",
                          where);
        }
        validate_tls(&http->tls, at, where, errs);
        validate_auth(&http->auth, at, where, errs);
    }
    if (protocols->grpc.set && protocols->http.set && protocols->grpc.endpoint != NULL &&
        protocols->http.endpoint != NULL &&
        strcmp(protocols->grpc.endpoint, protocols->http.endpoint) == 0) {
        am_errors_add(errs, at, "%s.protocols: grpc and http cannot share endpoint %s", prefix,
                      protocols->grpc.endpoint);
    }
}

/* ---- shared helpers -------------------------------------------------- */

bool am__otlp_auth_ok(const am__otlp_auth_cfg_t *auth, const char *header, size_t header_len)
{
    if (auth == NULL || !auth->set || auth->bearer_token == NULL) {
        return true;
    }
    static const char scheme[] = "bearer ";
    if (header == NULL || header_len < sizeof(scheme) - 1 ||
        strncasecmp(header, scheme, sizeof(scheme) - 1) != 0) {
        return false;
    }
    const char *given = header + sizeof(scheme) - 1;
    size_t given_len = header_len - (sizeof(scheme) - 1);
    while (given_len > 0 && *given == ' ') {
        given++;
        given_len--;
    }
    /* Constant time in the token's content: every byte is compared. */
    const char *token = auth->bearer_token;
    size_t token_len = strlen(token);
    volatile unsigned char diff = given_len != token_len;
    for (size_t i = 0; i < token_len; i++) {
        unsigned char g = i < given_len ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)token[i]);
    }
    return diff == 0;
}

static const char *transport_name(int transport)
{
    return transport == AM__OTLP_GRPC ? "grpc" : "http";
}

void am__otlp_count_request(am__otlp_receiver_t *rcv, int transport, int grpc_code)
{
    if (grpc_code < 0 || grpc_code >= (int)AM_ARRAY_SIZE(rcv->requests[0])) {
        grpc_code = AM__GRPC_UNKNOWN;
    }
    am_counter_t **slot = &rcv->requests[transport][grpc_code];
    if (*slot == NULL) {
        char labels[256];
        snprintf(labels, sizeof(labels), "receiver=\"%s\",transport=\"%s\",code=\"%s\"", rcv->id,
                 transport_name(transport), am__otlp_grpc_code_name(grpc_code));
        *slot = am_selfmetrics_counter("agentmeter_receiver_requests_total",
                                       "Export requests answered, by gRPC status code", labels);
    }
    am_counter_add(*slot, 1);
}

static int decode_json(am__otlp_receiver_t *rcv, am_arena_t *arena, const uint8_t *body, size_t len,
                       am_pb_export_req_t **out, char *err, size_t err_size)
{
#if OTLP_HAVE_JSON
    int rc = am__otlp_json_prescan(body, len, err, err_size);
    if (rc != 0) {
        return rc;
    }
    rc = am_otlp_json_decode_traces(arena, (const char *)body, len, out, err, err_size);
    if (rc == AM_ENOMEM) {
        snprintf(err, err_size, "out of memory decoding the request");
        return AM__GRPC_UNAVAILABLE;
    }
    if (rc != 0) {
        if (err[0] == '\0') {
            snprintf(err, err_size, "malformed OTLP JSON");
        }
        return AM__GRPC_INVALID_ARGUMENT;
    }
    return am__otlp_check_limits(*out, &rcv->limits, err, err_size);
#else
    AM_UNUSED(rcv);
    AM_UNUSED(arena);
    AM_UNUSED(body);
    AM_UNUSED(len);
    AM_UNUSED(out);
    snprintf(err, err_size, "OTLP JSON is not supported by this build");
    return AM__GRPC_UNIMPLEMENTED;
#endif
}

void am__otlp_export(am__otlp_receiver_t *rcv, int transport, am__otlp_format_t format,
                     const uint8_t *body, size_t len, am__otlp_reply_t *reply)
{
    memset(reply, 0, sizeof(*reply));
    am_pb_export_req_t *req = NULL;
    am_batch_t *batch = NULL;
    size_t span_count = 0;
    int code;

    if (rcv->shutting_down) {
        code = AM__GRPC_UNAVAILABLE;
        snprintf(reply->message, sizeof(reply->message), "receiver is shutting down");
        goto done;
    }
    /* The protobuf decoder takes one block of exactly the decoded size (a
     * chunk of its own, core/am_arena.c); JSON decodes field by field into
     * less than twice the body. */
    am_arena_t *arena = am_arena_new(format == AM__OTLP_JSON ? len * 2 + 1024 : 4096);
    if (arena == NULL) {
        code = AM__GRPC_UNAVAILABLE;
        snprintf(reply->message, sizeof(reply->message), "out of memory");
        goto done;
    }
    if (format == AM__OTLP_JSON) {
        code = decode_json(rcv, arena, body, len, &req, reply->message, sizeof(reply->message));
    } else {
        code = am__otlp_decode_proto(arena, body, len, &rcv->limits, &req, reply->message,
                                     sizeof(reply->message));
    }
    if (code != AM__GRPC_OK) {
        am_arena_unref(arena);
        goto done;
    }
    size_t rejected =
        am__otlp_drop_invalid_spans(req, reply->partial_message, sizeof(reply->partial_message));
    reply->rejected_spans = (int64_t)rejected;
    if (format == AM__OTLP_JSON) {
        am_attr_intern_keys(req); /* the protobuf decoders intern keys themselves */
    }
    if (rejected > 0) {
        am_counter_add(rcv->refused[transport], rejected);
    }
    batch = am_batch_new_with_arena(AM_SIGNAL_TRACES, arena);
    if (batch == NULL) {
        am_arena_unref(arena);
        code = AM__GRPC_UNAVAILABLE;
        snprintf(reply->message, sizeof(reply->message), "out of memory");
        goto done;
    }
    batch->traces = req;
    batch->received_unix_nano = am_now_unix_nano();
    span_count = am_batch_count_spans(batch);
    am_status_t status = AM_OK;
    if (span_count > 0) {
        status = am_consume(rcv->next, batch);
    }
    am_batch_unref(batch);
    code = am__otlp_status_to_grpc(status);
    if (status == AM_OK) {
        am_counter_add(rcv->accepted[transport], span_count);
    } else {
        am_counter_add(rcv->refused[transport], span_count);
        reply->rejected_spans = 0;
        reply->partial_message[0] = '\0';
        snprintf(reply->message, sizeof(reply->message), "%s",
                 status == AM_RETRY ? "pipeline is busy (backpressure), retry later"
                                    : "the pipeline rejected the data permanently");
    }
done:
    reply->grpc_code = code;
    am__otlp_count_request(rcv, transport, code);
    if (code != AM__GRPC_OK) {
        AM_DEBUG(COMPONENT, "%s: %s request answered %s: %s", rcv->id, transport_name(transport),
                 am__otlp_grpc_code_name(code), reply->message);
    }
}

/* ---- life cycle ------------------------------------------------------ */

static char *copy_str(const char *s, bool *failed)
{
    if (s == NULL) {
        return NULL;
    }
    char *copy = am_strdup(s);
    if (copy == NULL) {
        *failed = true;
    }
    return copy;
}

static void copy_tls(am__otlp_tls_cfg_t *dst, const am__otlp_tls_cfg_t *src, bool *failed)
{
    *dst = *src;
    dst->cert_file = copy_str(src->cert_file, failed);
    dst->key_file = copy_str(src->key_file, failed);
    dst->client_ca_file = copy_str(src->client_ca_file, failed);
    dst->min_version = copy_str(src->min_version, failed);
}

static void free_tls(am__otlp_tls_cfg_t *tls)
{
    am_free(tls->cert_file);
    am_free(tls->key_file);
    am_free(tls->client_ca_file);
    am_free(tls->min_version);
}

static void free_auth(am__otlp_auth_cfg_t *auth)
{
    if (auth->bearer_token != NULL) {
        /* A secret: do not leave it in freed memory. */
        volatile char *p = auth->bearer_token;
        while (*p != '\0') {
            *p++ = '\0';
        }
        am_free(auth->bearer_token);
    }
}

static void copy_grpc(am__otlp_grpc_cfg_t *dst, const am__otlp_grpc_cfg_t *src, bool *failed)
{
    *dst = *src;
    dst->endpoint = copy_str(src->endpoint, failed);
    copy_tls(&dst->tls, &src->tls, failed);
    dst->auth.bearer_token = copy_str(src->auth.bearer_token, failed);
}

static void copy_http(am__otlp_http_cfg_t *dst, const am__otlp_http_cfg_t *src, bool *failed)
{
    *dst = *src;
    dst->endpoint = copy_str(src->endpoint, failed);
    copy_tls(&dst->tls, &src->tls, failed);
    dst->auth.bearer_token = copy_str(src->auth.bearer_token, failed);
}

static void otlp_free(am__otlp_receiver_t *rcv)
{
    if (rcv->grpc_tls != NULL) {
        SSL_CTX_free(rcv->grpc_tls);
    }
    if (rcv->http_tls != NULL) {
        SSL_CTX_free(rcv->http_tls);
    }
    am_free(rcv->grpc_cfg.endpoint);
    free_tls(&rcv->grpc_cfg.tls);
    free_auth(&rcv->grpc_cfg.auth);
    am_free(rcv->http_cfg.endpoint);
    free_tls(&rcv->http_cfg.tls);
    free_auth(&rcv->http_cfg.auth);
    am_free(rcv->id);
    am_free(rcv);
}

static int otlp_create(const am_create_params_t *params, void **instance)
{
    const am__otlp_config_t *cfg = params->config;
    am__otlp_receiver_t *rcv = am_calloc(1, sizeof(*rcv));
    if (rcv == NULL) {
        return AM_ENOMEM;
    }
    bool failed = false;
    rcv->id = copy_str(params->id != NULL ? params->id : "otlp", &failed);
    rcv->loop = params->loop;
    rcv->next = params->next;
    if (!cfg->protocols.set) {
        /* Both protocols with their defaults; see the top of this file. */
        am__otlp_grpc_cfg_t grpc_defaults = {0};
        am__otlp_http_cfg_t http_defaults = {0};
        am_errors_t errs = {0};
        am_options_parse(am__otlp_grpc_options, &grpc_defaults, NULL,
                         "receivers.otlp.protocols.grpc", &errs);
        am_options_parse(am__otlp_http_options, &http_defaults, NULL,
                         "receivers.otlp.protocols.http", &errs);
        failed = failed || errs.count > 0;
        am_errors_clear(&errs);
        copy_grpc(&rcv->grpc_cfg, &grpc_defaults, &failed);
        copy_http(&rcv->http_cfg, &http_defaults, &failed);
        am_options_free(am__otlp_grpc_options, &grpc_defaults);
        am_options_free(am__otlp_http_options, &http_defaults);
        rcv->grpc_cfg.set = true;
        rcv->http_cfg.set = true;
    } else {
        copy_grpc(&rcv->grpc_cfg, &cfg->protocols.grpc, &failed);
        copy_http(&rcv->http_cfg, &cfg->protocols.http, &failed);
    }
    rcv->grpc = rcv->grpc_cfg.set ? &rcv->grpc_cfg : NULL;
    rcv->http = rcv->http_cfg.set ? &rcv->http_cfg : NULL;
    if (failed) {
        otlp_free(rcv);
        return AM_ENOMEM;
    }
    if (rcv->grpc == NULL && rcv->http == NULL) {
        AM_ERROR(COMPONENT, "%s: no protocol enabled", rcv->id);
        otlp_free(rcv);
        return AM_EINVAL;
    }
    rcv->limits.max_msg_bytes = 16u << 20;
    if (rcv->grpc != NULL && rcv->grpc->max_recv_msg_size > 0) {
        rcv->limits.max_msg_bytes = (size_t)rcv->grpc->max_recv_msg_size;
    }
    if (rcv->http != NULL && (size_t)rcv->http->max_request_body_size > rcv->limits.max_msg_bytes) {
        rcv->limits.max_msg_bytes = (size_t)rcv->http->max_request_body_size;
    }
    rcv->limits.max_depth = cfg->max_attribute_depth > 0 ? (uint32_t)cfg->max_attribute_depth : 32;
    rcv->limits.max_spans =
        cfg->max_spans_per_request > 0 ? (uint64_t)cfg->max_spans_per_request : 100000;
    rcv->limits.max_list_entries =
        cfg->max_attributes_per_span > 0 ? (uint64_t)cfg->max_attributes_per_span : 1024;
    for (int t = 0; t < AM__OTLP_N_TRANSPORTS; t++) {
        char labels[256];
        snprintf(labels, sizeof(labels), "receiver=\"%s\",transport=\"%s\"", rcv->id,
                 transport_name(t));
        rcv->accepted[t] = am_selfmetrics_counter(
            "agentmeter_receiver_accepted_spans_total",
            "Spans received and pushed into the pipeline successfully", labels);
        rcv->refused[t] = am_selfmetrics_counter(
            "agentmeter_receiver_refused_spans_total",
            "Spans received but refused: invalid ids or pipeline backpressure/rejection", labels);
    }
    *instance = rcv;
    return 0;
}

void am__otlp_server_closed(am__otlp_receiver_t *rcv)
{
    if (rcv->closes_pending > 0) {
        rcv->closes_pending--;
    }
    if (rcv->closes_pending == 0 && rcv->destroy_pending) {
        otlp_free(rcv);
    }
}

static void otlp_shutdown(void *instance)
{
    am__otlp_receiver_t *rcv = instance;
    if (rcv->shutting_down) {
        return;
    }
    rcv->shutting_down = true;
    if (rcv->http_server != NULL) {
        am__otlp_http_close(rcv);
    }
    if (rcv->grpc_server != NULL) {
        am__otlp_grpc_server_t *server = rcv->grpc_server;
        rcv->grpc_server = NULL;
        rcv->closes_pending++;
        am__otlp_grpc_close(server);
    }
}

/* Both transports' contexts from their tls sections (NULL where TLS is
 * off).  Used at start and on SIGHUP.  false (logged) when a section is set
 * but its files do not make a context; both outputs are NULL then. */
static bool tls_contexts_new(am__otlp_receiver_t *rcv, SSL_CTX **grpc, SSL_CTX **http)
{
    char err[512];
    *grpc = NULL;
    *http = NULL;
    if (rcv->grpc != NULL && rcv->grpc->tls.set) {
        *grpc = am__otlp_tls_ctx_new(&rcv->grpc->tls, AM__OTLP_ALPN_H2, err, sizeof(err));
        if (*grpc == NULL) {
            AM_ERROR(COMPONENT, "%s: protocols.grpc.tls: %s", rcv->id, err);
            return false;
        }
    }
    if (rcv->http != NULL && rcv->http->tls.set) {
        *http = am__otlp_tls_ctx_new(&rcv->http->tls, AM__OTLP_ALPN_HTTP1, err, sizeof(err));
        if (*http == NULL) {
            AM_ERROR(COMPONENT, "%s: protocols.http.tls: %s", rcv->id, err);
            if (*grpc != NULL) {
                SSL_CTX_free(*grpc);
                *grpc = NULL;
            }
            return false;
        }
    }
    return true;
}

static int otlp_start(void *instance)
{
    am__otlp_receiver_t *rcv = instance;
    int rc = 0;
    if (rcv->started) {
        return 0;
    }
    /* Contexts first: a bad certificate fails the start before any port
     * is bound. */
    SSL_CTX *grpc_tls;
    SSL_CTX *http_tls;
    if (!tls_contexts_new(rcv, &grpc_tls, &http_tls)) {
        return AM_EINVAL;
    }
    if (rcv->grpc_tls != NULL) {
        SSL_CTX_free(rcv->grpc_tls);
    }
    if (rcv->http_tls != NULL) {
        SSL_CTX_free(rcv->http_tls);
    }
    rcv->grpc_tls = grpc_tls;
    rcv->http_tls = http_tls;
    if (rcv->grpc != NULL) {
        rc = am__otlp_grpc_start(rcv, &rcv->grpc_server);
        if (rc != 0) {
            return rc;
        }
    }
    if (rcv->http != NULL) {
        rc = am__otlp_http_start(rcv);
        if (rc != 0) {
            otlp_shutdown(rcv);
            return rc;
        }
    }
    rcv->started = true;
    return 0;
}

static void otlp_destroy(void *instance)
{
    am__otlp_receiver_t *rcv = instance;
    if (rcv == NULL) {
        return;
    }
    otlp_shutdown(rcv);
    if (rcv->closes_pending > 0) {
        /* Handles still closing: the last close callback frees us. */
        rcv->destroy_pending = true;
        return;
    }
    otlp_free(rcv);
}

static void otlp_reload(void *instance)
{
    am__otlp_receiver_t *rcv = instance;
    bool grpc_tls = rcv->grpc != NULL && rcv->grpc->tls.set;
    bool http_tls = rcv->http != NULL && rcv->http->tls.set;
    if ((!grpc_tls && !http_tls) || rcv->shutting_down) {
        return;
    }
    /* All or nothing: one unreadable file keeps every old context. */
    SSL_CTX *fresh_grpc;
    SSL_CTX *fresh_http;
    if (!tls_contexts_new(rcv, &fresh_grpc, &fresh_http)) {
        AM_ERROR(COMPONENT, "%s: keeping the old certificates, reload failed", rcv->id);
        return;
    }
    /* Open connections hold their own reference to the old contexts. */
    if (fresh_grpc != NULL) {
        if (rcv->grpc_tls != NULL) {
            SSL_CTX_free(rcv->grpc_tls);
        }
        rcv->grpc_tls = fresh_grpc;
    }
    if (fresh_http != NULL) {
        am__otlp_http_set_tls(rcv, fresh_http);
        if (rcv->http_tls != NULL) {
            SSL_CTX_free(rcv->http_tls);
        }
        rcv->http_tls = fresh_http;
    }
    AM_INFO(COMPONENT, "%s: TLS certificates reloaded", rcv->id);
}

const am_component_ops_t am_receiver_otlp_ops = {
    .type = "otlp",
    .kind = AM_KIND_RECEIVER,
    .signals = AM_SIGNAL_TRACES,
    .doc = "OTLP traces over gRPC (HTTP/2) and HTTP (protobuf, JSON), each with TLS and mTLS",
    .options = otlp_options,
    .config_size = sizeof(am__otlp_config_t),
    .validate = otlp_validate,
    .create = otlp_create,
    .start = otlp_start,
    .shutdown = otlp_shutdown,
    .destroy = otlp_destroy,
    .reload = otlp_reload,
};
