/*
 * otlp_http.c - OTLP/HTTP: POST /v1/traces on core's am_http server.
 *
 * With protocols.http.tls the server speaks HTTPS: otlp.c builds the
 * SSL_CTX (otlp_tls.c, ALPN http/1.1, optional mTLS) and owns it; am_http
 * runs each connection through it.  Requests look the same either way.
 *
 * am_http reads a whole request (headers and body, both bounded; a body
 * over max_request_body_size gets 413 before it is buffered) and calls
 * handle_request() on the receiver loop.  We answer synchronously, as the
 * OTLP/HTTP specification says:
 *   200  ExportTraceServiceResponse (partial_success when spans were
 *        rejected), in the request's encoding;
 *   400  undecodable body or limits exceeded;  401 missing/invalid token;
 *   404  any other path;  405 any other method;  413 body too large, also
 *        after decompression;  415 unknown Content-Type or Content-Encoding;
 *   503  pipeline backpressure, with Retry-After.
 * Error bodies are a google.rpc.Status in the request's encoding (protobuf,
 * or JSON when the request was JSON), as the spec asks.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "am_http.h"
#include "am_log.h"
#include "otlp_internal.h"
#include "status.pb-c.h"

#define COMPONENT "receiver/otlp"
#define TRACES_PATH "/v1/traces"
#define CT_PROTOBUF "application/x-protobuf"
#define CT_JSON "application/json"

/* Does `value` name media type `type` (parameters like ";charset=utf-8"
 * and case ignored)? */
static bool media_type_is(const char *value, const char *type)
{
    if (value == NULL) {
        return false;
    }
    while (*value == ' ') {
        value++;
    }
    size_t len = strlen(type);
    if (strncasecmp(value, type, len) != 0) {
        return false;
    }
    char next = value[len];
    return next == '\0' || next == ';' || next == ' ';
}

/* Append `s` to out as the inside of a JSON string. */
static size_t json_escape(const char *s, char *out, size_t out_size)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0' && o + 7 < out_size; p++) {
        if (*p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = (char)*p;
        } else if (*p < 0x20) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            out[o++] = (char)*p;
        }
    }
    out[o] = '\0';
    return o;
}

static void respond_status(am_http_request_t *req, int http_status, int grpc_code,
                           const char *message, am__otlp_format_t format, const char *extra_headers)
{
    if (format == AM__OTLP_JSON) {
        char escaped[1200];
        char body[1400];
        json_escape(message, escaped, sizeof(escaped));
        int len =
            snprintf(body, sizeof(body), "{\"code\":%d,\"message\":\"%s\"}", grpc_code, escaped);
        am_http_respond(req, http_status, CT_JSON, extra_headers, body, (size_t)len);
        return;
    }
    Google__Rpc__Status status = GOOGLE__RPC__STATUS__INIT;
    status.code = grpc_code;
    status.message = (char *)message;
    uint8_t body[1400];
    size_t len = google__rpc__status__get_packed_size(&status);
    if (len > sizeof(body)) {
        status.message = "";
        len = google__rpc__status__get_packed_size(&status);
    }
    google__rpc__status__pack(&status, body);
    am_http_respond(req, http_status, CT_PROTOBUF, extra_headers, body, len);
}

static void respond_ok(am_http_request_t *req, const am__otlp_reply_t *reply,
                       am__otlp_format_t format)
{
    if (format == AM__OTLP_JSON) {
        if (reply->rejected_spans == 0) {
            am_http_respond(req, 200, CT_JSON, NULL, "{}", 2);
            return;
        }
        char escaped[1200];
        char body[1400];
        json_escape(reply->partial_message, escaped, sizeof(escaped));
        /* proto3 JSON: int64 as a string. */
        int len =
            snprintf(body, sizeof(body),
                     "{\"partialSuccess\":{\"rejectedSpans\":\"%lld\",\"errorMessage\":\"%s\"}}",
                     (long long)reply->rejected_spans, escaped);
        am_http_respond(req, 200, CT_JSON, NULL, body, (size_t)len);
        return;
    }
    am_pb_partial_t partial =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    am_pb_export_resp_t resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    if (reply->rejected_spans > 0) {
        partial.rejected_spans = reply->rejected_spans;
        partial.error_message = (char *)reply->partial_message;
        resp.partial_success = &partial;
    }
    uint8_t body[1400];
    size_t len =
        opentelemetry__proto__collector__trace__v1__export_trace_service_response__get_packed_size(
            &resp);
    if (len > sizeof(body)) {
        partial.error_message = "";
        len =
            opentelemetry__proto__collector__trace__v1__export_trace_service_response__get_packed_size(
                &resp);
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_response__pack(&resp, body);
    am_http_respond(req, 200, CT_PROTOBUF, NULL, body, len);
}

/* Answer an error and count it. */
static void refuse(am__otlp_receiver_t *rcv, am_http_request_t *req, int http_status, int grpc_code,
                   const char *message, am__otlp_format_t format, const char *extra_headers)
{
    am__otlp_count_request(rcv, AM__OTLP_HTTP, grpc_code);
    AM_DEBUG(COMPONENT, "%s: http %s %s answered %d: %s", rcv->id, req->method, req->path,
             http_status, message);
    respond_status(req, http_status, grpc_code, message, format, extra_headers);
}

static void handle_request(am_http_request_t *req)
{
    am__otlp_receiver_t *rcv = req->user_data;
    const am__otlp_http_cfg_t *cfg = rcv->http;
    const char *content_type = am_http_header_get(req, "content-type");
    bool is_json = media_type_is(content_type, CT_JSON);
    bool is_proto = media_type_is(content_type, CT_PROTOBUF);
    am__otlp_format_t format = is_json ? AM__OTLP_JSON : AM__OTLP_PROTOBUF;
    char msg[512];

    if (strcmp(req->path, TRACES_PATH) != 0) {
        snprintf(msg, sizeof(msg), "unknown path %.200s; OTLP traces go to POST " TRACES_PATH,
                 req->path);
        refuse(rcv, req, 404, AM__GRPC_UNIMPLEMENTED, msg, format, NULL);
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        snprintf(msg, sizeof(msg), "method %s not allowed; use POST", req->method);
        refuse(rcv, req, 405, AM__GRPC_UNIMPLEMENTED, msg, format, "Allow: POST\r\n");
        return;
    }
    const char *authorization = am_http_header_get(req, "authorization");
    if (!am__otlp_auth_ok(&cfg->auth, authorization,
                          authorization != NULL ? strlen(authorization) : 0)) {
        refuse(rcv, req, 401, AM__GRPC_UNAUTHENTICATED, "missing or invalid bearer token", format,
               "WWW-Authenticate: Bearer\r\n");
        return;
    }
    if (!is_json && !is_proto) {
        snprintf(msg, sizeof(msg),
                 "unsupported content-type \"%.100s\"; use " CT_PROTOBUF " or " CT_JSON,
                 content_type != NULL ? content_type : "");
        refuse(rcv, req, 415, AM__GRPC_INVALID_ARGUMENT, msg, format, NULL);
        return;
    }
    const char *content_encoding = am_http_header_get(req, "content-encoding");
    am__otlp_encoding_t encoding = am__otlp_encoding_parse(content_encoding);
    if (encoding == AM__OTLP_ENC_UNKNOWN) {
        snprintf(msg, sizeof(msg),
                 "unsupported content-encoding \"%.100s\"; use gzip, deflate or zstd",
                 content_encoding);
        refuse(rcv, req, 415, AM__GRPC_INVALID_ARGUMENT, msg, format, NULL);
        return;
    }
    const uint8_t *body = (const uint8_t *)req->body;
    size_t body_len = req->body_len;
    uint8_t *inflated = NULL;
    size_t limit = (size_t)cfg->max_request_body_size;
    if (body_len > limit) {
        snprintf(msg, sizeof(msg), "body of %zu bytes exceeds the limit of %zu", body_len, limit);
        refuse(rcv, req, 413, AM__GRPC_RESOURCE_EXHAUSTED, msg, format, NULL);
        return;
    }
    if (encoding != AM__OTLP_ENC_IDENTITY) {
        size_t inflated_len = 0;
        int code = am__otlp_decompress(encoding, body, body_len, limit, &inflated, &inflated_len,
                                       msg, sizeof(msg));
        if (code != 0) {
            int http_status = code == AM__GRPC_RESOURCE_EXHAUSTED ? 413
                              : code == AM__GRPC_UNAVAILABLE      ? 503
                                                                  : 400;
            refuse(rcv, req, http_status,
                   code == AM__GRPC_INTERNAL ? AM__GRPC_INVALID_ARGUMENT : code, msg, format,
                   http_status == 503 ? "Retry-After: 1\r\n" : NULL);
            return;
        }
        body = inflated;
        body_len = inflated_len;
    }
    am__otlp_reply_t reply;
    am__otlp_export(rcv, AM__OTLP_HTTP, format, body, body_len, &reply);
    am_free(inflated);
    if (reply.grpc_code == AM__GRPC_OK) {
        respond_ok(req, &reply, format);
        return;
    }
    int http_status = am__otlp_grpc_to_http(reply.grpc_code);
    if (reply.grpc_code == AM__GRPC_RESOURCE_EXHAUSTED) {
        http_status = 413;
    }
    respond_status(req, http_status, reply.grpc_code, reply.message, format,
                   http_status == 503 ? "Retry-After: 1\r\n" : NULL);
}

int am__otlp_http_start(am__otlp_receiver_t *rcv)
{
    const am__otlp_http_cfg_t *cfg = rcv->http;
    am_http_server_opts_t opts = {
        .endpoint = cfg->endpoint,
        .max_body_bytes = (size_t)cfg->max_request_body_size,
        .max_header_bytes = 64 * 1024,
        .header_timeout_ms = 10000,
        .idle_timeout_ms = 60000,
        .max_connections = 1024,
        .handler = handle_request,
        .user_data = rcv,
        .ssl_ctx = rcv->http_tls, /* owned by rcv, freed after the server closed */
    };
    int rc = am_http_server_start(rcv->loop, &opts, &rcv->http_server);
    if (rc != 0) {
        return rc;
    }
    bool mtls = cfg->tls.client_ca_file != NULL && cfg->tls.client_ca_file[0] != '\0';
    AM_INFO(COMPONENT, "%s: OTLP/HTTP listening on %s (port %d)%s", rcv->id, cfg->endpoint,
            am_http_server_port(rcv->http_server),
            rcv->http_tls == NULL ? ""
            : mtls                ? ", mTLS"
                                  : ", TLS");
    return 0;
}

void am__otlp_http_set_tls(am__otlp_receiver_t *rcv, SSL_CTX *ctx)
{
    if (rcv->http_server != NULL) {
        am_http_server_set_ssl_ctx(rcv->http_server, ctx);
    }
}

void am__otlp_http_close(am__otlp_receiver_t *rcv)
{
    if (rcv->http_server != NULL) {
        am_http_server_close(rcv->http_server);
        rcv->http_server = NULL;
    }
}
