/*
 * loadgen_grpc.c - the OTLP/gRPC client: nghttp2 client sessions on libuv,
 * cleartext HTTP/2 with prior knowledge (h2c), unary Export calls.
 *
 * One connection carries up to --streams concurrent Export streams.  The
 * request bodies are the pool's pre-encoded bytes (5-byte prefix included);
 * the data provider copies them into DATA frames, which is the only work
 * per byte the client does.  nghttp2 is driven the way its examples drive
 * it: bytes read are fed with mem_recv, frames to send are collected with
 * mem_send into one buffer and written with a single uv_write in flight, so
 * a slow server pushes back on the client instead of growing its memory.
 *
 * A request ends when its stream closes: the answer is the HTTP :status and
 * the grpc-status from the trailers (or a trailers-only response).  A reset
 * stream, or a connection lost with streams open, is a transport error.
 * Connections are not reopened: a run that loses them ends early and says
 * so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "loadgen.h"

#define EXPORT_PATH "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
#define OUT_HIGH_WATER (256 * 1024)
#define READ_BUF_SIZE (64 * 1024)

typedef struct grpc_stream {
    lg_request_t *req;
    uint64_t start_ns;
    size_t offset;
    int http_status;
    int grpc_status;
    char message[128];
    bool used;
} grpc_stream_t;

typedef struct grpc_conn {
    lg_conn_t base;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    nghttp2_session *session;
    bool connected;
    bool writing;
    bool closing;
    uint8_t *out;
    size_t out_len;
    size_t out_cap;
    grpc_stream_t *streams;
    uint8_t in[READ_BUF_SIZE];
} grpc_conn_t;

static void conn_fail(grpc_conn_t *c, const char *why);

static void stream_finish(grpc_conn_t *c, grpc_stream_t *st, bool transport_error, const char *why)
{
    lg_request_t *req = st->req;
    st->used = false;
    st->req = NULL;
    lg_run_done(c->base.run, &c->base, req, st->start_ns, st->http_status, st->grpc_status,
                transport_error ? why : st->message, transport_error);
}

/* ---- nghttp2 callbacks ----------------------------------------------- */

static ssize_t on_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    grpc_stream_t *st = source->ptr;
    size_t left = st->req->len - st->offset;
    size_t n = left < length ? left : length;
    memcpy(buf, st->req->buf + st->offset, n);
    st->offset += n;
    if (st->offset == st->req->len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    (void)session;
    (void)stream_id;
    (void)user_data;
    return (ssize_t)n;
}

static int parse_small_int(const uint8_t *value, size_t len)
{
    int v = 0;
    if (len == 0 || len > 4) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (value[i] < '0' || value[i] > '9') {
            return -1;
        }
        v = v * 10 + (value[i] - '0');
    }
    return v;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    (void)flags;
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        st->http_status = parse_small_int(value, valuelen);
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        st->grpc_status = parse_small_int(value, valuelen);
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        size_t n = valuelen < sizeof(st->message) - 1 ? valuelen : sizeof(st->message) - 1;
        memcpy(st->message, value, n);
        st->message[n] = '\0';
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    grpc_conn_t *c = user_data;
    grpc_stream_t *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st == NULL || !st->used) {
        return 0;
    }
    if (error_code != NGHTTP2_NO_ERROR && st->grpc_status < 0) {
        char why[96];
        snprintf(why, sizeof(why), "stream reset: %s", nghttp2_http2_strerror(error_code));
        stream_finish(c, st, true, why);
    } else {
        stream_finish(c, st, false, NULL);
    }
    return 0;
}

/* ---- I/O ------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status);

static bool out_append(grpc_conn_t *c, const uint8_t *data, size_t len)
{
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 64 * 1024;
        while (cap < c->out_len + len) {
            cap *= 2;
        }
        uint8_t *grown = realloc(c->out, cap);
        if (grown == NULL) {
            return false;
        }
        c->out = grown;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return true;
}

static void conn_flush(grpc_conn_t *c)
{
    if (c->writing || c->closing || !c->connected) {
        return;
    }
    c->out_len = 0;
    while (c->out_len < OUT_HIGH_WATER) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->session, &data);
        if (n < 0) {
            conn_fail(c, nghttp2_strerror((int)n));
            return;
        }
        if (n == 0) {
            break;
        }
        if (!out_append(c, data, (size_t)n)) {
            conn_fail(c, "out of memory");
            return;
        }
    }
    if (c->out_len == 0) {
        return;
    }
    uv_buf_t buf = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    c->writing = true;
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc != 0) {
        c->writing = false;
        conn_fail(c, uv_strerror(rc));
    }
}

static void on_write(uv_write_t *req, int status)
{
    grpc_conn_t *c = req->data;
    c->writing = false;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        conn_fail(c, uv_strerror(status));
        return;
    }
    lg_grpc_pump(&c->base);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    grpc_conn_t *c = handle->data;
    (void)suggested;
    *buf = uv_buf_init((char *)c->in, sizeof(c->in));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    grpc_conn_t *c = stream->data;
    if (c->closing) {
        return;
    }
    if (nread < 0) {
        conn_fail(c, nread == UV_EOF ? "connection closed by the server" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0) {
        return;
    }
    ssize_t rv = nghttp2_session_mem_recv(c->session, (const uint8_t *)buf->base, (size_t)nread);
    if (rv < 0) {
        conn_fail(c, nghttp2_strerror((int)rv));
        return;
    }
    if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session)) {
        conn_fail(c, "HTTP/2 session ended (GOAWAY)");
        return;
    }
    lg_grpc_pump(&c->base);
}

static void on_close(uv_handle_t *handle)
{
    grpc_conn_t *c = handle->data;
    lg_run_t *run = c->base.run;
    run->conns[c->base.index] = NULL;
    if (c->session != NULL) {
        nghttp2_session_del(c->session);
    }
    free(c->streams);
    free(c->out);
    free(c);
}

static void conn_close_handle(grpc_conn_t *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void conn_fail(grpc_conn_t *c, const char *why)
{
    if (c->closing) {
        return;
    }
    for (uint32_t i = 0; i < c->base.max_in_flight; i++) {
        if (c->streams[i].used) {
            stream_finish(c, &c->streams[i], true, why);
        }
    }
    lg_run_t *run = c->base.run;
    if (run->first_error[0] == '\0' && !run->finished) {
        snprintf(run->first_error, sizeof(run->first_error), "connection %d: %s", c->base.index,
                 why);
    }
    conn_close_handle(c);
    lg_run_conn_dead(run, &c->base);
}

static int session_create(grpc_conn_t *c)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        return -1;
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    int rc = nghttp2_session_client_new(&c->session, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    if (rc != 0) {
        return -1;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
    };
    rc = nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings,
                                 sizeof(settings) / sizeof(settings[0]));
    return rc == 0 ? 0 : -1;
}

static void on_connect(uv_connect_t *req, int status)
{
    grpc_conn_t *c = req->data;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect to %s: %s", c->base.run->opt->authority,
                 uv_strerror(status));
        conn_fail(c, why);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (session_create(c) != 0) {
        conn_fail(c, "nghttp2 session setup failed");
        return;
    }
    c->connected = true;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        conn_fail(c, uv_strerror(rc));
        return;
    }
    lg_grpc_pump(&c->base);
}

/* ---- the connection -------------------------------------------------- */

lg_conn_t *lg_grpc_open(lg_run_t *run, int index)
{
    grpc_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->base.run = run;
    c->base.transport = LG_GRPC;
    c->base.index = index;
    c->base.max_in_flight = run->opt->streams;
    c->streams = calloc(run->opt->streams, sizeof(*c->streams));
    if (c->streams == NULL) {
        free(c);
        return NULL;
    }
    uv_tcp_init(run->loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    c->write_req.data = c;
    struct sockaddr_in addr;
    uv_ip4_addr(run->opt->host, run->opt->port, &addr);
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&addr, on_connect);
    if (rc != 0) {
        fprintf(stderr, "loadgen: connect: %s\n", uv_strerror(rc));
        c->base.dead = true;
        conn_close_handle(c);
    }
    return &c->base;
}

void lg_grpc_pump(lg_conn_t *conn)
{
    grpc_conn_t *c = (grpc_conn_t *)conn;
    if (!c->connected || c->closing || conn->dead) {
        return;
    }
    const lg_options_t *opt = conn->run->opt;
    nghttp2_nv nva[8];
    size_t nvlen = 0;
#define NV(n, v)                                                                                   \
    (nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v),                         \
                 NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}
    nva[nvlen++] = NV(":method", "POST");
    nva[nvlen++] = NV(":scheme", "http");
    nva[nvlen++] = NV(":path", EXPORT_PATH);
    nva[nvlen++] = NV(":authority", opt->authority);
    nva[nvlen++] = NV("content-type", "application/grpc");
    nva[nvlen++] = NV("te", "trailers");
    nva[nvlen++] = NV("user-agent", "agentmeter-loadgen/0.1");
    if (opt->compression == LG_COMPRESS_GZIP) {
        nva[nvlen++] = NV("grpc-encoding", "gzip");
    } else if (opt->compression == LG_COMPRESS_ZSTD) {
        nva[nvlen++] = NV("grpc-encoding", "zstd");
    }
#undef NV
    while (conn->in_flight < conn->max_in_flight) {
        grpc_stream_t *st = NULL;
        for (uint32_t i = 0; i < conn->max_in_flight; i++) {
            if (!c->streams[i].used) {
                st = &c->streams[i];
                break;
            }
        }
        if (st == NULL) {
            break;
        }
        uint64_t start_ns;
        lg_request_t *req = lg_run_take(conn->run, &start_ns);
        if (req == NULL) {
            break;
        }
        memset(st, 0, sizeof(*st));
        st->used = true;
        st->req = req;
        st->start_ns = start_ns;
        st->http_status = 0;
        st->grpc_status = -1;
        conn->in_flight++;
        nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_data_read};
        int32_t id = nghttp2_submit_request(c->session, NULL, nva, nvlen, &prd, st);
        if (id < 0) {
            stream_finish(c, st, true, nghttp2_strerror(id));
            break;
        }
    }
    conn_flush(c);
}

void lg_grpc_close(lg_conn_t *conn)
{
    conn->dead = true;
    conn_close_handle((grpc_conn_t *)conn);
}
