/*
 * otlp_grpc.c - OTLP/gRPC: a unary TraceService/Export server on libuv and
 * an nghttp2 server session per connection.
 *
 * Shape (as nghttp2's libevent server example): libuv reads bytes, which go
 * to nghttp2_session_mem_recv (through OpenSSL memory BIOs when TLS is on);
 * nghttp2 calls back with headers and DATA chunks; whatever it wants to send
 * is pulled with nghttp2_session_mem_send and handed to uv_write.  Output is
 * bounded by a would-block threshold: while more than WOULD_BLOCK_BYTES are
 * queued for the socket we neither pull more frames nor read from the
 * client, so a client that does not read its responses cannot make us
 * buffer without bound.
 *
 * A stream (one Export call) checks its headers as soon as they are
 * complete -- method, content-type (415), path (UNIMPLEMENTED), bearer token
 * (UNAUTHENTICATED), grpc-encoding (UNIMPLEMENTED + grpc-accept-encoding) --
 * and answers failures at once with a Trailers-Only response followed by
 * RST_STREAM(NO_ERROR) so the client stops uploading.  DATA goes through the
 * framing state machine (otlp_frame.c), which refuses an oversized length
 * before buffering.  At END_STREAM the message is decompressed (bounded),
 * decoded and pushed to the pipeline (otlp.c), and the answer is HEADERS +
 * one length-prefixed ExportTraceServiceResponse + trailers.  A stream's
 * memory is freed when nghttp2 closes it, including on a client's
 * RST_STREAM.
 *
 * Connection hygiene, one timer per connection armed at the nearest
 * deadline: a header timeout (a connection must send complete request
 * headers within header_timeout; slow-loris and idle floods are closed),
 * keepalive pings (keepalive.time without a frame from the client -> PING,
 * no answer within keepalive.timeout -> close), max_connection_idle and
 * max_connection_age (GOAWAY, then close once streams end or after a
 * grace period).  Connections past max_connections are closed as soon as
 * they are accepted, so established clients keep being served.
 *
 * Shutdown: stop listening, answer unfinished streams UNAVAILABLE (the
 * client retries elsewhere; nothing reaches a pipeline that is shutting
 * down), GOAWAY every session, close each connection when its output is
 * flushed or the grace period ends.
 */
#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "am_http.h"
#include "am_log.h"
#include "otlp_internal.h"
#include "status.pb-c.h"

#define COMPONENT "receiver/otlp"
#define EXPORT_PATH "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

#define WOULD_BLOCK_BYTES (1u << 20) /* stop reading/producing above this queued output */
#define WRITE_CHUNK (64u * 1024)     /* gather frames into writes of about this size */
#define READ_BUF_SIZE (64u * 1024)
#define STREAM_WINDOW (1 << 20)      /* per-stream receive window */
#define CONN_WINDOW (8 << 20)        /* connection receive window */
#define MAX_HEADER_LIST (64u * 1024) /* advertised SETTINGS_MAX_HEADER_LIST_SIZE */
#define MAX_HEADERS_PER_STREAM 128   /* more kills the connection (CONTINUATION floods) */
#define AGE_GRACE_MS 10000           /* after max_connection_age's GOAWAY */
#define SHUTDOWN_GRACE_MS 5000       /* after shutdown's GOAWAY */
#define MIN_BUDGET (64u << 20)       /* request bytes all streams may buffer together */

typedef struct grpc_conn grpc_conn_t;
typedef struct grpc_stream grpc_stream_t;

struct am__otlp_grpc_server {
    uv_tcp_t listener;
    am__otlp_receiver_t *rcv;
    const am__otlp_grpc_cfg_t *cfg;
    nghttp2_session_callbacks *callbacks;
    nghttp2_option *option;
    grpc_conn_t *conns;
    size_t n_conns;      /* in the list (open or closing) */
    size_t n_open;       /* in the list and not closing */
    size_t rejects_open; /* over-limit sockets being closed */
    size_t budget_used, budget_max;
    uint64_t keepalive_time_ms, keepalive_timeout_ms;
    uint64_t close_deadline_ms;
    bool listener_open;
    bool closing;
    int port;
    uint8_t read_buf[READ_BUF_SIZE]; /* one loop thread: shared by all reads */
    uint8_t tls_buf[READ_BUF_SIZE];  /* plaintext out of SSL_read */
};

struct grpc_stream {
    int32_t id;
    grpc_conn_t *conn;
    grpc_stream_t *prev, *next;
    uint64_t begin_ms;
    unsigned n_headers;
    bool headers_done;
    bool remote_closed; /* END_STREAM received */
    bool responded;     /* a response was submitted */
    bool method_post;
    bool path_ok;
    bool content_type_ok;
    bool auth_ok;
    am__otlp_encoding_t encoding;
    char encoding_name[32];
    am__otlp_frame_t frame;
    uint8_t *resp; /* length-prefixed response message */
    size_t resp_len, resp_off;
};

struct grpc_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    am__otlp_grpc_server_t *server;
    grpc_conn_t *prev, *next;
    nghttp2_session *session;
    am__otlp_tls_conn_t tls;
    bool use_tls;
    grpc_stream_t *streams;
    size_t n_streams;
    size_t write_pending; /* bytes handed to uv_write, not yet written */
    uint64_t accepted_ms, last_read_ms, idle_since_ms, ping_sent_ms, goaway_deadline_ms;
    bool got_settings; /* client preface + SETTINGS arrived */
    bool got_headers;  /* at least one complete request header block */
    bool ping_outstanding;
    bool goaway_sent;
    bool reading;
    bool close_after_flush;
    bool closing;
    int handles_open;
};

typedef struct grpc_write {
    uv_write_t req;
    grpc_conn_t *conn;
    size_t len;
    uint8_t data[];
} grpc_write_t;

static void conn_close(grpc_conn_t *conn);
static void conn_flush(grpc_conn_t *conn);
static void conn_arm_timer(grpc_conn_t *conn);
static void server_maybe_done(am__otlp_grpc_server_t *server);

#define NV(NAME, VALUE)                                                                            \
    {                                                                                              \
        (uint8_t *)(NAME), (uint8_t *)(VALUE), sizeof(NAME) - 1, strlen(VALUE),                    \
            NGHTTP2_NV_FLAG_NONE                                                                   \
    }

/* ---- responses ------------------------------------------------------- */

/* grpc-status-details-bin for UNAVAILABLE: a google.rpc.Status carrying a
 * google.rpc.RetryInfo{retry_delay: 1s}, so clients that read details back
 * off as told.  RetryInfo is encoded by hand: field 1 (Duration) holding
 * field 1 (seconds) = 1. */
static bool retry_details(int code, const char *message, char *out, size_t out_size)
{
    static const uint8_t retry_info[] = {0x0a, 0x02, 0x08, 0x01};
    Google__Rpc__Any any = GOOGLE__RPC__ANY__INIT;
    any.type_url = "type.googleapis.com/google.rpc.RetryInfo";
    any.value.data = (uint8_t *)retry_info;
    any.value.len = sizeof(retry_info);
    Google__Rpc__Any *details[] = {&any};
    Google__Rpc__Status status = GOOGLE__RPC__STATUS__INIT;
    status.code = code;
    status.message = (char *)message;
    status.n_details = 1;
    status.details = details;
    uint8_t packed[768];
    size_t len = google__rpc__status__get_packed_size(&status);
    if (len > sizeof(packed) || out_size < 4 * ((len + 2) / 3) + 1) {
        return false;
    }
    google__rpc__status__pack(&status, packed);
    EVP_EncodeBlock((unsigned char *)out, packed, (int)len);
    return true;
}

/* Answer at once with HEADERS + END_STREAM (Trailers-Only, or a plain HTTP
 * error when http_status != 200). */
static void stream_respond_error(grpc_stream_t *st, int http_status, int code, const char *msg,
                                 bool accept_encoding)
{
    if (st->responded) {
        return;
    }
    grpc_conn_t *conn = st->conn;
    st->responded = true;
    char status_str[8], code_str[8], msg_enc[1024], details[1100];
    snprintf(status_str, sizeof(status_str), "%d", http_status);
    snprintf(code_str, sizeof(code_str), "%d", code);
    am__otlp_grpc_message_encode(msg != NULL ? msg : "", msg_enc, sizeof(msg_enc));
    nghttp2_nv nva[6] = {
        NV(":status", status_str),
        NV("content-type", "application/grpc"),
        NV("grpc-status", code_str),
    };
    size_t n = 3;
    if (msg_enc[0] != '\0') {
        nva[n++] = (nghttp2_nv)NV("grpc-message", msg_enc);
    }
    if (accept_encoding) {
        nva[n++] = (nghttp2_nv)NV("grpc-accept-encoding", AM__OTLP_ACCEPT_ENCODING);
    }
    if (code == AM__GRPC_UNAVAILABLE && retry_details(code, msg, details, sizeof(details))) {
        nva[n++] = (nghttp2_nv)NV("grpc-status-details-bin", details);
    }
    if (nghttp2_submit_response(conn->session, st->id, nva, n, NULL) != 0) {
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    }
    /* The request's buffer is not needed any more: give the budget back. */
    am__otlp_frame_free(&st->frame);
    if (code != AM__GRPC_OK) {
        AM_DEBUG(COMPONENT, "grpc stream %d answered %s (%d): %s", st->id,
                 am__otlp_grpc_code_name(code), http_status, msg != NULL ? msg : "");
    }
}

static ssize_t response_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                             size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                             void *user_data)
{
    AM_UNUSED(user_data);
    grpc_stream_t *st = source->ptr;
    size_t n = AM_MIN(length, st->resp_len - st->resp_off);
    memcpy(buf, st->resp + st->resp_off, n);
    st->resp_off += n;
    if (st->resp_off == st->resp_len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_nv trailers[] = {NV("grpc-status", "0")};
        if (nghttp2_submit_trailer(session, stream_id, trailers, AM_ARRAY_SIZE(trailers)) != 0) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

/* OK: HEADERS, one length-prefixed ExportTraceServiceResponse (with
 * partial_success when spans were rejected), trailers grpc-status 0. */
static void stream_respond_ok(grpc_stream_t *st, const am__otlp_reply_t *reply)
{
    grpc_conn_t *conn = st->conn;
    am_pb_partial_t partial =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    am_pb_export_resp_t resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    if (reply->rejected_spans > 0) {
        partial.rejected_spans = reply->rejected_spans;
        partial.error_message = (char *)reply->partial_message;
        resp.partial_success = &partial;
    }
    size_t len =
        opentelemetry__proto__collector__trace__v1__export_trace_service_response__get_packed_size(
            &resp);
    st->resp = am_malloc(5 + len);
    if (st->resp == NULL) {
        stream_respond_error(st, 200, AM__GRPC_UNAVAILABLE, "out of memory", false);
        return;
    }
    st->resp[0] = 0;
    st->resp[1] = (uint8_t)(len >> 24);
    st->resp[2] = (uint8_t)(len >> 16);
    st->resp[3] = (uint8_t)(len >> 8);
    st->resp[4] = (uint8_t)len;
    opentelemetry__proto__collector__trace__v1__export_trace_service_response__pack(&resp,
                                                                                    st->resp + 5);
    st->resp_len = 5 + len;
    st->resp_off = 0;
    st->responded = true;
    am__otlp_frame_free(&st->frame);
    nghttp2_nv nva[] = {
        NV(":status", "200"),
        NV("content-type", "application/grpc"),
        NV("grpc-accept-encoding", AM__OTLP_ACCEPT_ENCODING),
    };
    nghttp2_data_provider provider = {.source.ptr = st, .read_callback = response_read};
    if (nghttp2_submit_response(conn->session, st->id, nva, AM_ARRAY_SIZE(nva), &provider) != 0) {
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    }
}

/* ---- streams --------------------------------------------------------- */

static void stream_free(grpc_stream_t *st)
{
    grpc_conn_t *conn = st->conn;
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        conn->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    conn->n_streams--;
    if (conn->n_streams == 0) {
        conn->idle_since_ms = am_now_mono_ms();
    }
    am__otlp_frame_free(&st->frame);
    am_free(st->resp);
    am_free(st);
}

/* Refuse a request: count it and answer at once. */
static void stream_refuse(grpc_stream_t *st, int http_status, int code, const char *msg,
                          bool accept_encoding)
{
    if (st->responded) {
        return;
    }
    am__otlp_count_request(st->conn->server->rcv, AM__OTLP_GRPC, code);
    stream_respond_error(st, http_status, code, msg, accept_encoding);
}

/* Request headers are complete: refuse what can be refused now. */
static void stream_check_headers(grpc_stream_t *st)
{
    if (!st->method_post) {
        stream_refuse(st, 405, AM__GRPC_UNIMPLEMENTED, "gRPC requires POST", false);
    } else if (!st->content_type_ok) {
        /* HTTP 415 as the gRPC spec says; grpc-status for gRPC clients. */
        stream_refuse(st, 415, AM__GRPC_INTERNAL,
                      "invalid gRPC request content-type (want application/grpc)", false);
    } else if (!st->path_ok) {
        stream_refuse(st, 200, AM__GRPC_UNIMPLEMENTED,
                      "unknown method; this server implements " EXPORT_PATH, false);
    } else if (!st->auth_ok) {
        stream_refuse(st, 200, AM__GRPC_UNAUTHENTICATED, "missing or invalid bearer token", false);
    } else if (st->encoding == AM__OTLP_ENC_UNKNOWN) {
        char msg[128];
        snprintf(msg, sizeof(msg), "grpc-encoding \"%s\" is not supported", st->encoding_name);
        stream_refuse(st, 200, AM__GRPC_UNIMPLEMENTED, msg, true);
    } else if (st->conn->server->closing) {
        stream_refuse(st, 200, AM__GRPC_UNAVAILABLE, "server is shutting down", false);
    }
}

/* END_STREAM: the request is complete; export it and answer. */
static void stream_finish(grpc_stream_t *st)
{
    if (st->responded) {
        return;
    }
    am__otlp_grpc_server_t *server = st->conn->server;
    char err[512] = "";
    int code = am__otlp_frame_finish(&st->frame, err, sizeof(err));
    const uint8_t *msg = NULL;
    size_t msg_len = 0;
    uint8_t *owned = NULL;
    if (code == 0) {
        code = am__otlp_frame_unwrap(&st->frame, st->encoding, &msg, &msg_len, &owned, err,
                                     sizeof(err));
    }
    if (code != 0) {
        stream_refuse(st, 200, code, err, false);
        return;
    }
    am__otlp_reply_t reply;
    am__otlp_export(server->rcv, AM__OTLP_GRPC, AM__OTLP_PROTOBUF, msg, msg_len, &reply);
    am_free(owned);
    if (reply.grpc_code == AM__GRPC_OK) {
        stream_respond_ok(st, &reply);
    } else {
        stream_respond_error(st, 200, reply.grpc_code, reply.message, false);
    }
}

/* ---- nghttp2 callbacks (run inside mem_recv/mem_send) ----------------- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    grpc_conn_t *conn = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    grpc_stream_t *st = am_calloc(1, sizeof(*st));
    if (st == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM this one */
    }
    st->id = frame->hd.stream_id;
    st->conn = conn;
    st->begin_ms = am_now_mono_ms();
    st->auth_ok = !conn->server->cfg->auth.set;
    am__otlp_frame_init(&st->frame, (size_t)conn->server->cfg->max_recv_msg_size);
    st->frame.budget_used = &conn->server->budget_used;
    st->frame.budget_max = conn->server->budget_max;
    st->next = conn->streams;
    if (conn->streams != NULL) {
        conn->streams->prev = st;
    }
    conn->streams = st;
    conn->n_streams++;
    nghttp2_session_set_stream_user_data(session, st->id, st);
    conn_arm_timer(conn); /* this stream's header deadline */
    return 0;
}

static bool header_is(const uint8_t *name, size_t namelen, const char *want)
{
    return namelen == strlen(want) && memcmp(name, want, namelen) == 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    AM_UNUSED(flags);
    AM_UNUSED(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0; /* request trailers carry nothing we use */
    }
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    if (++st->n_headers > MAX_HEADERS_PER_STREAM) {
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* tears the connection down */
    }
    if (header_is(name, namelen, ":method")) {
        st->method_post = valuelen == 4 && memcmp(value, "POST", 4) == 0;
    } else if (header_is(name, namelen, ":path")) {
        st->path_ok =
            valuelen == sizeof(EXPORT_PATH) - 1 && memcmp(value, EXPORT_PATH, valuelen) == 0;
    } else if (header_is(name, namelen, "content-type")) {
        /* application/grpc, application/grpc+proto, application/grpc;... */
        static const char want[] = "application/grpc";
        size_t wl = sizeof(want) - 1;
        st->content_type_ok = valuelen >= wl && memcmp(value, want, wl) == 0 &&
                              (valuelen == wl || value[wl] == '+' || value[wl] == ';');
    } else if (header_is(name, namelen, "grpc-encoding")) {
        size_t n = AM_MIN(valuelen, sizeof(st->encoding_name) - 1);
        memcpy(st->encoding_name, value, n);
        st->encoding_name[n] = '\0';
        st->encoding = valuelen >= sizeof(st->encoding_name)
                           ? AM__OTLP_ENC_UNKNOWN
                           : am__otlp_encoding_parse(st->encoding_name);
    } else if (header_is(name, namelen, "authorization")) {
        st->auth_ok = am__otlp_auth_ok(&st->conn->server->cfg->auth, (const char *)value, valuelen);
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    grpc_conn_t *conn = user_data;
    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        conn->got_settings = true;
        return 0;
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) {
            conn->ping_outstanding = false;
        }
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        st->headers_done = true;
        conn->got_headers = true;
        stream_check_headers(st);
    }
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
        st->remote_closed = true;
        stream_finish(st);
    }
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *user_data)
{
    AM_UNUSED(flags);
    AM_UNUSED(user_data);
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st == NULL || st->responded) {
        return 0; /* answered already: the rest of the upload is dropped */
    }
    char err[256];
    int code = am__otlp_frame_feed(&st->frame, data, len, err, sizeof(err));
    if (code != 0) {
        stream_refuse(st, 200, code, err, false);
    }
    return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    AM_UNUSED(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS || (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) {
        return 0;
    }
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st != NULL && !st->remote_closed) {
        /* Answered before the request ended: tell the client to stop. */
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    AM_UNUSED(error_code);
    AM_UNUSED(user_data);
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st != NULL) {
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        stream_free(st);
    }
    return 0;
}

/* ---- connections ----------------------------------------------------- */

static void on_conn_handle_closed(uv_handle_t *handle)
{
    grpc_conn_t *conn = handle->data;
    if (--conn->handles_open > 0) {
        return;
    }
    am__otlp_grpc_server_t *server = conn->server;
    if (conn->session != NULL) {
        nghttp2_session_del(conn->session); /* does not call on_stream_close */
    }
    while (conn->streams != NULL) {
        stream_free(conn->streams);
    }
    if (conn->use_tls) {
        am__otlp_tls_conn_free(&conn->tls);
    }
    if (conn->prev != NULL) {
        conn->prev->next = conn->next;
    } else {
        server->conns = conn->next;
    }
    if (conn->next != NULL) {
        conn->next->prev = conn->prev;
    }
    server->n_conns--;
    am_free(conn);
    server_maybe_done(server);
}

static void conn_close(grpc_conn_t *conn)
{
    if (conn->closing) {
        return;
    }
    conn->closing = true;
    conn->server->n_open--;
    uv_read_stop((uv_stream_t *)&conn->tcp);
    uv_timer_stop(&conn->timer);
    uv_close((uv_handle_t *)&conn->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&conn->tcp, on_conn_handle_closed);
}

static void on_write_done(uv_write_t *req, int status)
{
    grpc_write_t *wr = (grpc_write_t *)req;
    grpc_conn_t *conn = wr->conn;
    conn->write_pending -= wr->len;
    am_free(wr);
    if (conn->closing) {
        return;
    }
    if (status < 0) {
        conn_close(conn);
        return;
    }
    conn_flush(conn);
}

static int conn_write(grpc_conn_t *conn, grpc_write_t *wr)
{
    wr->conn = conn;
    uv_buf_t buf = uv_buf_init((char *)wr->data, (unsigned)wr->len);
    int rc = uv_write(&wr->req, (uv_stream_t *)&conn->tcp, &buf, 1, on_write_done);
    if (rc < 0) {
        am_free(wr);
        return rc;
    }
    conn->write_pending += wr->len;
    return 0;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    AM_UNUSED(suggested);
    grpc_conn_t *conn = handle->data;
    buf->base = (char *)conn->server->read_buf;
    buf->len = sizeof(conn->server->read_buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void conn_set_reading(grpc_conn_t *conn, bool want)
{
    if (conn->closing || want == conn->reading) {
        return;
    }
    if (want) {
        if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0) {
            conn->reading = true;
        }
    } else {
        uv_read_stop((uv_stream_t *)&conn->tcp);
        conn->reading = false;
    }
}

/* Gather what nghttp2 (and TLS) want to send into one write, up to the
 * would-block threshold; then decide whether to keep reading or close. */
static void conn_flush(grpc_conn_t *conn)
{
    if (conn->closing) {
        return;
    }
    bool h2_ready = !conn->use_tls || conn->tls.handshake_done;
    while (conn->write_pending < WOULD_BLOCK_BYTES) {
        grpc_write_t *wr = NULL;
        size_t cap = 0;
        size_t len = 0;
        if (h2_ready) {
            while (len < WRITE_CHUNK) {
                const uint8_t *data;
                ssize_t n = nghttp2_session_mem_send(conn->session, &data);
                if (n < 0) {
                    AM_DEBUG(COMPONENT, "grpc: nghttp2 send: %s", nghttp2_strerror((int)n));
                    am_free(wr);
                    conn_close(conn);
                    return;
                }
                if (n == 0) {
                    break;
                }
                if (conn->use_tls) {
                    if (am__otlp_tls_write(&conn->tls, data, (size_t)n) != 0) {
                        am_free(wr);
                        conn_close(conn);
                        return;
                    }
                    len += (size_t)n; /* progress marker only: bytes are in SSL */
                    continue;
                }
                if (len + (size_t)n > cap) {
                    size_t grown_cap =
                        AM_MAX(cap * 2, AM_MAX((size_t)WRITE_CHUNK, len + (size_t)n));
                    grpc_write_t *grown = am_realloc(wr, sizeof(*wr) + grown_cap);
                    if (grown == NULL) {
                        am_free(wr);
                        conn_close(conn);
                        return;
                    }
                    wr = grown;
                    cap = grown_cap;
                }
                memcpy(wr->data + len, data, (size_t)n);
                len += (size_t)n;
            }
        }
        if (conn->use_tls) {
            size_t pending = am__otlp_tls_pending(&conn->tls);
            if (pending == 0) {
                break;
            }
            wr = am_malloc(sizeof(*wr) + pending);
            if (wr == NULL) {
                conn_close(conn);
                return;
            }
            len = am__otlp_tls_take_output(&conn->tls, wr->data, pending);
        }
        if (len == 0) {
            am_free(wr);
            break;
        }
        wr->len = len;
        if (conn_write(conn, wr) != 0) {
            conn_close(conn);
            return;
        }
    }
    bool done = h2_ready && !nghttp2_session_want_read(conn->session) &&
                !nghttp2_session_want_write(conn->session);
    if ((done || conn->close_after_flush) && conn->write_pending == 0) {
        conn_close(conn);
        return;
    }
    /* Backpressure: stop reading while the client does not read. */
    conn_set_reading(conn, conn->write_pending < WOULD_BLOCK_BYTES && !conn->close_after_flush);
}

static void conn_goaway(grpc_conn_t *conn, uint64_t grace_ms)
{
    if (conn->goaway_sent) {
        return;
    }
    conn->goaway_sent = true;
    conn->goaway_deadline_ms = am_now_mono_ms() + grace_ms;
    nghttp2_submit_goaway(conn->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(conn->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
}

/* Feed plaintext HTTP/2 bytes to nghttp2. */
static int conn_recv_plain(grpc_conn_t *conn, const uint8_t *data, size_t len)
{
    ssize_t rc = nghttp2_session_mem_recv(conn->session, data, len);
    if (rc < 0) {
        AM_DEBUG(COMPONENT, "grpc: closing connection: %s", nghttp2_strerror((int)rc));
        return -1;
    }
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    grpc_conn_t *conn = stream->data;
    if (nread == 0) {
        return;
    }
    if (nread < 0) {
        conn_close(conn); /* EOF or error: nothing more can be answered */
        return;
    }
    conn->last_read_ms = am_now_mono_ms();
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    if (!conn->use_tls) {
        if (conn_recv_plain(conn, data, len) != 0) {
            conn->close_after_flush = true;
        }
        conn_flush(conn);
        return;
    }
    if (am__otlp_tls_feed(&conn->tls, data, len) != 0) {
        conn_close(conn);
        return;
    }
    if (!conn->tls.handshake_done) {
        char err[256];
        int hs = am__otlp_tls_handshake(&conn->tls, err, sizeof(err));
        if (hs < 0) {
            AM_DEBUG(COMPONENT, "grpc: %s", err);
            conn->close_after_flush = true; /* send the alert, then close */
            conn_flush(conn);
            return;
        }
        if (hs == 0) {
            conn_flush(conn);
            return;
        }
    }
    for (;;) {
        int n = am__otlp_tls_read(&conn->tls, conn->server->tls_buf, sizeof(conn->server->tls_buf));
        if (n == 0) {
            break;
        }
        if (n < 0 || conn_recv_plain(conn, conn->server->tls_buf, (size_t)n) != 0) {
            conn->close_after_flush = true;
            break;
        }
    }
    conn_flush(conn);
}

static void consider(uint64_t *next, uint64_t deadline)
{
    if (deadline < *next) {
        *next = deadline;
    }
}

static void on_conn_timer(uv_timer_t *timer)
{
    grpc_conn_t *conn = timer->data;
    am__otlp_grpc_server_t *server = conn->server;
    const am__otlp_grpc_cfg_t *cfg = server->cfg;
    uint64_t now = am_now_mono_ms();
    uint64_t header_timeout = (uint64_t)cfg->header_timeout_ms;

    if (server->closing && now >= server->close_deadline_ms) {
        conn_close(conn);
        return;
    }
    if (conn->goaway_sent && now >= conn->goaway_deadline_ms) {
        conn_close(conn);
        return;
    }
    bool slow = !conn->got_headers && now - conn->accepted_ms >= header_timeout;
    for (grpc_stream_t *st = conn->streams; st != NULL && !slow; st = st->next) {
        slow = !st->headers_done && now - st->begin_ms >= header_timeout;
    }
    if (slow) {
        AM_DEBUG(COMPONENT,
                 "grpc: closing a connection that sent no complete request "
                 "headers within %llu ms",
                 (unsigned long long)header_timeout);
        if (conn->got_settings && !conn->goaway_sent) {
            /* A real HTTP/2 client: tell it politely, it reconnects. */
            conn_goaway(conn, 0);
            conn->close_after_flush = true;
            conn_flush(conn);
        } else {
            conn_close(conn);
        }
        return;
    }
    if (server->keepalive_time_ms > 0 && conn->got_settings) {
        if (conn->ping_outstanding && conn->last_read_ms <= conn->ping_sent_ms &&
            now - conn->ping_sent_ms >= server->keepalive_timeout_ms) {
            AM_DEBUG(COMPONENT, "grpc: keepalive ping not answered, closing");
            conn_close(conn);
            return;
        }
        if (conn->ping_outstanding && conn->last_read_ms > conn->ping_sent_ms) {
            conn->ping_outstanding = false;
        }
        if (!conn->ping_outstanding && now - conn->last_read_ms >= server->keepalive_time_ms) {
            if (nghttp2_submit_ping(conn->session, NGHTTP2_FLAG_NONE, NULL) == 0) {
                conn->ping_outstanding = true;
                conn->ping_sent_ms = now;
            }
        }
    }
    if (cfg->max_connection_idle_ms > 0 && conn->n_streams == 0 && conn->got_settings &&
        now - conn->idle_since_ms >= (uint64_t)cfg->max_connection_idle_ms) {
        conn_goaway(conn, AGE_GRACE_MS);
    }
    if (cfg->max_connection_age_ms > 0 && conn->got_settings &&
        now - conn->accepted_ms >= (uint64_t)cfg->max_connection_age_ms) {
        conn_goaway(conn, AGE_GRACE_MS);
    }
    conn_flush(conn);
    if (!conn->closing) {
        conn_arm_timer(conn);
    }
}

/* Arm the connection's timer at its nearest deadline. */
static void conn_arm_timer(grpc_conn_t *conn)
{
    if (conn->closing) {
        return;
    }
    am__otlp_grpc_server_t *server = conn->server;
    const am__otlp_grpc_cfg_t *cfg = server->cfg;
    uint64_t header_timeout = (uint64_t)cfg->header_timeout_ms;
    uint64_t next = UINT64_MAX;
    if (server->closing) {
        consider(&next, server->close_deadline_ms);
    }
    if (conn->goaway_sent) {
        consider(&next, conn->goaway_deadline_ms);
    }
    if (!conn->got_headers) {
        consider(&next, conn->accepted_ms + header_timeout);
    }
    for (grpc_stream_t *st = conn->streams; st != NULL; st = st->next) {
        if (!st->headers_done) {
            consider(&next, st->begin_ms + header_timeout);
        }
    }
    if (server->keepalive_time_ms > 0) {
        if (conn->ping_outstanding) {
            consider(&next, conn->ping_sent_ms + server->keepalive_timeout_ms);
        } else {
            consider(&next, conn->last_read_ms + server->keepalive_time_ms);
        }
    }
    if (!conn->goaway_sent && cfg->max_connection_idle_ms > 0) {
        uint64_t since = conn->n_streams == 0 ? conn->idle_since_ms : am_now_mono_ms();
        consider(&next, since + (uint64_t)cfg->max_connection_idle_ms);
    }
    if (!conn->goaway_sent && cfg->max_connection_age_ms > 0) {
        consider(&next, conn->accepted_ms + (uint64_t)cfg->max_connection_age_ms);
    }
    if (next == UINT64_MAX) {
        uv_timer_stop(&conn->timer);
        return;
    }
    uint64_t now = am_now_mono_ms();
    /* +1: deadlines are checked with >= after the clock has moved. */
    uv_timer_start(&conn->timer, on_conn_timer, next > now ? next - now + 1 : 1, 0);
}

static int conn_start_session(grpc_conn_t *conn)
{
    am__otlp_grpc_server_t *server = conn->server;
    if (nghttp2_session_server_new2(&conn->session, server->callbacks, conn, server->option) != 0) {
        return AM_ENOMEM;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)server->cfg->max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST},
    };
    if (nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, settings,
                                AM_ARRAY_SIZE(settings)) != 0 ||
        nghttp2_session_set_local_window_size(conn->session, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) !=
            0) {
        return AM_ENOMEM;
    }
    return 0;
}

static void on_reject_closed(uv_handle_t *handle)
{
    am__otlp_grpc_server_t *server = handle->data;
    am_free(handle);
    server->rejects_open--;
    server_maybe_done(server);
}

static void reject_connection(am__otlp_grpc_server_t *server)
{
    uv_tcp_t *tcp = am_malloc(sizeof(*tcp));
    if (tcp == NULL || uv_tcp_init(server->listener.loop, tcp) != 0) {
        am_free(tcp);
        return;
    }
    tcp->data = server;
    server->rejects_open++;
    uv_accept((uv_stream_t *)&server->listener, (uv_stream_t *)tcp);
    uv_close((uv_handle_t *)tcp, on_reject_closed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    am__otlp_grpc_server_t *server = listener->data;
    if (status < 0 || server->closing) {
        return;
    }
    if (server->n_open >= (size_t)server->cfg->max_connections) {
        AM_DEBUG(COMPONENT, "grpc: connection limit %lld reached, closing a new connection",
                 (long long)server->cfg->max_connections);
        reject_connection(server);
        return;
    }
    grpc_conn_t *conn = am_calloc(1, sizeof(*conn));
    if (conn == NULL) {
        reject_connection(server);
        return;
    }
    conn->server = server;
    uv_tcp_init(listener->loop, &conn->tcp);
    uv_timer_init(listener->loop, &conn->timer);
    conn->tcp.data = conn;
    conn->timer.data = conn;
    conn->handles_open = 2;
    conn->next = server->conns;
    if (server->conns != NULL) {
        server->conns->prev = conn;
    }
    server->conns = conn;
    server->n_conns++;
    server->n_open++;
    uint64_t now = am_now_mono_ms();
    conn->accepted_ms = now;
    conn->last_read_ms = now;
    conn->idle_since_ms = now;
    if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
        conn_close(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    if (server->rcv->grpc_tls != NULL) {
        if (am__otlp_tls_conn_init(&conn->tls, server->rcv->grpc_tls) != 0) {
            conn_close(conn);
            return;
        }
        conn->use_tls = true;
    }
    if (conn_start_session(conn) != 0) {
        conn_close(conn);
        return;
    }
    conn_flush(conn); /* h2c: our SETTINGS go out at once; starts reading */
    conn_arm_timer(conn);
}

/* ---- server ---------------------------------------------------------- */

static void server_free(am__otlp_grpc_server_t *server)
{
    am__otlp_receiver_t *rcv = server->rcv;
    nghttp2_session_callbacks_del(server->callbacks);
    nghttp2_option_del(server->option);
    am_free(server);
    am__otlp_server_closed(rcv);
}

static void server_maybe_done(am__otlp_grpc_server_t *server)
{
    if (server->closing && !server->listener_open && server->n_conns == 0 &&
        server->rejects_open == 0) {
        server_free(server);
    }
}

static void on_listener_closed(uv_handle_t *handle)
{
    am__otlp_grpc_server_t *server = handle->data;
    server->listener_open = false;
    server_maybe_done(server);
}

int am__otlp_grpc_start(am__otlp_receiver_t *rcv, am__otlp_grpc_server_t **out)
{
    const am__otlp_grpc_cfg_t *cfg = rcv->grpc;
    char host[256];
    int port = 0;
    if (cfg->endpoint == NULL || am_parse_endpoint(cfg->endpoint, host, sizeof(host), &port) != 0) {
        AM_ERROR(COMPONENT, "%s: invalid grpc endpoint \"%s\"", rcv->id,
                 cfg->endpoint != NULL ? cfg->endpoint : "");
        return AM_EINVAL;
    }
    if (host[0] == '\0') {
        snprintf(host, sizeof(host), "0.0.0.0");
    }
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        AM_ERROR(COMPONENT, "%s: grpc endpoint %s: host must be an IP address", rcv->id,
                 cfg->endpoint);
        return AM_EINVAL;
    }
    am__otlp_grpc_server_t *server = am_calloc(1, sizeof(*server));
    if (server == NULL) {
        return AM_ENOMEM;
    }
    server->rcv = rcv;
    server->cfg = cfg;
    server->budget_max = AM_MAX((size_t)MIN_BUDGET, 4 * (size_t)cfg->max_recv_msg_size);
    server->keepalive_time_ms =
        (uint64_t)(cfg->keepalive_time_ms > 0 ? cfg->keepalive_time_ms : cfg->keepalive.time_ms);
    server->keepalive_timeout_ms =
        (uint64_t)(cfg->keepalive_timeout_ms > 0 ? cfg->keepalive_timeout_ms
                                                 : cfg->keepalive.timeout_ms);
    if (server->keepalive_timeout_ms == 0) {
        server->keepalive_timeout_ms = 20000;
    }
    if (nghttp2_session_callbacks_new(&server->callbacks) != 0 ||
        nghttp2_option_new(&server->option) != 0) {
        if (server->callbacks != NULL) {
            nghttp2_session_callbacks_del(server->callbacks);
        }
        am_free(server);
        return AM_ENOMEM;
    }
    nghttp2_session_callbacks *cb = server->callbacks;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    /* Refuse streams past max_concurrent_streams even before the client
     * acknowledged our SETTINGS. */
    nghttp2_option_set_max_settings(server->option, 32);

    uv_tcp_init(rcv->loop, &server->listener);
    server->listener.data = server;
    server->listener_open = true;
    int rc = uv_tcp_bind(&server->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&server->listener, 511, on_connection);
    }
    if (rc != 0) {
        AM_ERROR(COMPONENT, "%s: cannot listen on %s for OTLP/gRPC: %s", rcv->id, cfg->endpoint,
                 uv_strerror(rc));
        /* Close through the normal path; it frees the server and reports
         * the close to the receiver, which counts it as pending. */
        rcv->closes_pending++;
        server->closing = true;
        uv_close((uv_handle_t *)&server->listener, on_listener_closed);
        return AM_EIO;
    }
    struct sockaddr_storage bound;
    int bound_len = sizeof(bound);
    if (uv_tcp_getsockname(&server->listener, (struct sockaddr *)&bound, &bound_len) == 0) {
        server->port =
            ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
    }
    AM_INFO(COMPONENT, "%s: OTLP/gRPC listening on %s (port %d)%s", rcv->id, cfg->endpoint,
            server->port, rcv->grpc_tls != NULL ? ", TLS" : "");
    *out = server;
    return 0;
}

void am__otlp_grpc_close(am__otlp_grpc_server_t *server)
{
    if (server->closing) {
        return;
    }
    server->closing = true;
    server->close_deadline_ms = am_now_mono_ms() + SHUTDOWN_GRACE_MS;
    uv_close((uv_handle_t *)&server->listener, on_listener_closed);
    grpc_conn_t *next;
    for (grpc_conn_t *conn = server->conns; conn != NULL; conn = next) {
        next = conn->next;
        if (conn->closing) {
            continue;
        }
        if (conn->use_tls && !conn->tls.handshake_done) {
            conn_close(conn);
            continue;
        }
        for (grpc_stream_t *st = conn->streams; st != NULL; st = st->next) {
            stream_refuse(st, 200, AM__GRPC_UNAVAILABLE, "server is shutting down", false);
        }
        conn_goaway(conn, SHUTDOWN_GRACE_MS);
        conn_flush(conn);
        conn_arm_timer(conn);
    }
    server_maybe_done(server);
}

int am__otlp_grpc_port(const am__otlp_grpc_server_t *server)
{
    return server->port;
}

size_t am__otlp_grpc_connection_count(const am__otlp_grpc_server_t *server)
{
    return server->n_open;
}

size_t am__otlp_grpc_buffered_bytes(const am__otlp_grpc_server_t *server)
{
    return server->budget_used;
}
