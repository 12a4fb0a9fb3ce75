/*
 * The otlp receiver as a running server, driven by real clients: an
 * nghttp2 client session over a blocking socket (gRPC) and a raw HTTP/1.1
 * client, with a fake pipeline whose answer the test chooses.  Covers what
 * the binary-level tests cannot force: the pipeline's RETRY becoming gRPC
 * UNAVAILABLE with RetryInfo and HTTP 503 with Retry-After, PERMANENT
 * becoming INVALID_ARGUMENT, a client's RST_STREAM giving back a half-read
 * request's memory, keepalive pings closing a client that never answers,
 * max_connection_age's GOAWAY, `otlp: {}` enabling both protocols, and a
 * shutdown that answers an in-flight stream UNAVAILABLE and GOAWAYs --
 * leak-free under ASan/valgrind.
 *
 * The receiver runs on a loop in a second thread, as in the service; the
 * clients are blocking sockets in the test thread.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <nghttp2/nghttp2.h>

#include "am_http.h"
#include "receivers/otlp/otlp_internal.h"

#define EXPORT_PATH "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

extern const am_component_ops_t am_receiver_otlp_ops;

/* ---- the receiver on its loop thread ---------------------------------- */

typedef struct fake_next {
    am_consumer_t consumer;
    atomic_int answer;
    atomic_int batches;
} fake_next_t;

static am_status_t fake_consume(am_consumer_t *self, am_batch_t *batch)
{
    fake_next_t *fake = (fake_next_t *)self;
    (void)batch;
    atomic_fetch_add(&fake->batches, 1);
    return (am_status_t)atomic_load(&fake->answer);
}

typedef struct server {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    fake_next_t next;
    am__otlp_config_t config;
    am__otlp_receiver_t *rcv;
    int grpc_port;
    int http_port;
    atomic_bool shut;
} server_t;

static server_t srv;

static void on_async_closed(uv_handle_t *handle)
{
    (void)handle;
}

static void on_stop(uv_async_t *async)
{
    server_t *s = async->data;
    am_receiver_otlp_ops.shutdown(s->rcv);
    am_receiver_otlp_ops.destroy(s->rcv);
    atomic_store(&s->shut, true);
    uv_close((uv_handle_t *)&s->stop, on_async_closed);
}

static void *loop_thread(void *arg)
{
    server_t *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int start_server(server_t *s, const am__otlp_config_t *config)
{
    memset(s, 0, sizeof(*s));
    s->config = *config;
    s->next.consumer.consume = fake_consume;
    atomic_store(&s->next.answer, AM_OK);
    assert_int_equal(uv_loop_init(&s->loop), 0);
    am_create_params_t params = {
        .id = "otlp",
        .config = &s->config,
        .loop = &s->loop,
        .next = &s->next.consumer,
        .signal = AM_SIGNAL_TRACES,
        .shard = -1,
    };
    void *instance = NULL;
    assert_int_equal(am_receiver_otlp_ops.create(&params, &instance), 0);
    s->rcv = instance;
    assert_int_equal(am_receiver_otlp_ops.start(s->rcv), 0);
    if (s->rcv->grpc_server != NULL) {
        s->grpc_port = am__otlp_grpc_port(s->rcv->grpc_server);
    }
    if (s->rcv->http_server != NULL) {
        s->http_port = am_http_server_port(s->rcv->http_server);
    }
    uv_async_init(&s->loop, &s->stop, on_stop);
    s->stop.data = s;
    assert_int_equal(pthread_create(&s->thread, NULL, loop_thread, s), 0);
    return 0;
}

static void stop_server(server_t *s)
{
    uv_async_send(&s->stop);
    pthread_join(s->thread, NULL);
    assert_int_equal(uv_loop_close(&s->loop), 0); /* every handle closed */
}

static am__otlp_config_t base_config(void)
{
    am__otlp_config_t c;
    memset(&c, 0, sizeof(c));
    c.protocols.set = true;
    c.protocols.grpc.set = true;
    c.protocols.grpc.endpoint = "127.0.0.1:0";
    c.protocols.grpc.max_recv_msg_size = 1 << 20;
    c.protocols.grpc.max_concurrent_streams = 10;
    c.protocols.grpc.max_connections = 16;
    c.protocols.grpc.header_timeout_ms = 5000;
    c.protocols.grpc.keepalive.time_ms = 300;
    c.protocols.grpc.keepalive.timeout_ms = 300;
    c.protocols.grpc.max_connection_age_ms = 0;
    c.protocols.http.set = true;
    c.protocols.http.endpoint = "127.0.0.1:0";
    c.protocols.http.max_request_body_size = 1 << 20;
    c.max_attribute_depth = 32;
    c.max_spans_per_request = 1000;
    c.max_attributes_per_span = 128;
    return c;
}

/* ---- a blocking nghttp2 client ---------------------------------------- */

typedef struct h2c {
    int fd;
    nghttp2_session *session;
    int32_t stream_id;
    char status[256];
    char grpc_status[256];
    char grpc_message[256];
    bool details_bin;
    bool stream_closed;
    bool got_ping;
    bool got_goaway;
    bool eof;
    size_t body_len;
    const uint8_t *req;
    size_t req_len, req_off;
    bool hold_open; /* do not end the request stream */
} h2c_t;

static ssize_t h2c_send_cb(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                           void *user_data)
{
    (void)session;
    (void)flags;
    h2c_t *c = user_data;
    ssize_t n = send(c->fd, data, length, MSG_NOSIGNAL);
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

static int h2c_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                         size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                         void *user_data)
{
    (void)session;
    (void)flags;
    h2c_t *c = user_data;
    if (frame->hd.stream_id != c->stream_id) {
        return 0;
    }
    char v[256];
    size_t n = valuelen < sizeof(v) - 1 ? valuelen : sizeof(v) - 1;
    memcpy(v, value, n);
    v[n] = '\0';
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        snprintf(c->status, sizeof(c->status), "%s", v);
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        snprintf(c->grpc_status, sizeof(c->grpc_status), "%s", v);
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        snprintf(c->grpc_message, sizeof(c->grpc_message), "%s", v);
    } else if (namelen == 23 && memcmp(name, "grpc-status-details-bin", 23) == 0) {
        c->details_bin = true;
    }
    return 0;
}

static int h2c_on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                       const uint8_t *data, size_t len, void *user_data)
{
    (void)session;
    (void)flags;
    (void)data;
    h2c_t *c = user_data;
    if (stream_id == c->stream_id) {
        c->body_len += len;
    }
    return 0;
}

static int h2c_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    h2c_t *c = user_data;
    if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) == 0) {
        c->got_ping = true;
    } else if (frame->hd.type == NGHTTP2_GOAWAY) {
        c->got_goaway = true;
    }
    return 0;
}

static int h2c_on_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                        void *user_data)
{
    (void)session;
    (void)error_code;
    h2c_t *c = user_data;
    if (stream_id == c->stream_id) {
        c->stream_closed = true;
    }
    return 0;
}

static ssize_t h2c_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                             size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                             void *user_data)
{
    (void)session;
    (void)stream_id;
    (void)source;
    h2c_t *c = user_data;
    size_t n = c->req_len - c->req_off < length ? c->req_len - c->req_off : length;
    memcpy(buf, c->req + c->req_off, n);
    c->req_off += n;
    if (c->req_off == c->req_len) {
        if (c->hold_open) {
            return n > 0 ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
        }
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    return fd;
}

static void h2c_open(h2c_t *c, int port, bool auto_ping_ack)
{
    memset(c, 0, sizeof(*c));
    c->fd = tcp_connect(port);
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, h2c_send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2c_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2c_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2c_on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2c_on_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_ping_ack(opt, auto_ping_ack ? 0 : 1);
    assert_int_equal(nghttp2_session_client_new2(&c->session, cb, c, opt), 0);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, NULL, 0);
}

static void h2c_close(h2c_t *c)
{
    nghttp2_session_del(c->session);
    close(c->fd);
}

/* Send what is pending, then read for at most timeout_ms. */
static void h2c_io(h2c_t *c, int timeout_ms)
{
    if (!c->eof) {
        nghttp2_session_send(c->session);
    }
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (c->eof || poll(&pfd, 1, timeout_ms) <= 0) {
        return;
    }
    uint8_t buf[16384];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    if (n <= 0) {
        c->eof = true;
        return;
    }
    nghttp2_session_mem_recv(c->session, buf, (size_t)n);
    nghttp2_session_send(c->session);
}

static bool h2c_wait(h2c_t *c, bool *flag, int timeout_ms)
{
    uint64_t deadline = am_now_mono_ms() + (uint64_t)timeout_ms;
    while (!*flag && !c->eof && am_now_mono_ms() < deadline) {
        h2c_io(c, 50);
    }
    return *flag;
}

static void h2c_request(h2c_t *c, const uint8_t *body, size_t len, bool hold_open)
{
    c->req = body;
    c->req_len = len;
    c->req_off = 0;
    c->hold_open = hold_open;
    c->stream_closed = false;
    c->status[0] = c->grpc_status[0] = c->grpc_message[0] = '\0';
    c->details_bin = false;
    c->body_len = 0;
    nghttp2_nv nva[] = {
        {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":authority", (uint8_t *)"localhost", 10, 9, 0},
        {(uint8_t *)":path", (uint8_t *)EXPORT_PATH, 5, sizeof(EXPORT_PATH) - 1, 0},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
        {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0},
    };
    nghttp2_data_provider provider = {.read_callback = h2c_read_body};
    c->stream_id = nghttp2_submit_request(c->session, NULL, nva, 6, &provider, NULL);
    assert_true(c->stream_id > 0);
}

/* A gRPC request body carrying one valid span. */
static uint8_t *grpc_body(size_t *len)
{
    static uint8_t trace_id[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    static uint8_t span_id[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    am_pb_span_t span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    span.trace_id.data = trace_id;
    span.trace_id.len = 16;
    span.span_id.data = span_id;
    span.span_id.len = 8;
    span.name = "chat";
    am_pb_span_t *spans[] = {&span};
    am_pb_scope_spans_t ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    ss.spans = spans;
    ss.n_spans = 1;
    am_pb_scope_spans_t *sss[] = {&ss};
    am_pb_resource_spans_t rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs.scope_spans = sss;
    rs.n_scope_spans = 1;
    am_pb_resource_spans_t *rss[] = {&rs};
    am_pb_export_req_t req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.resource_spans = rss;
    req.n_resource_spans = 1;
    size_t n =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
            &req);
    uint8_t *out = malloc(5 + n);
    out[0] = 0;
    out[1] = (uint8_t)(n >> 24);
    out[2] = (uint8_t)(n >> 16);
    out[3] = (uint8_t)(n >> 8);
    out[4] = (uint8_t)n;
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, out + 5);
    *len = 5 + n;
    return out;
}

/* ---- raw HTTP/1.1 client ---------------------------------------------- */

static int http_post(int port, const char *ctype, const uint8_t *body, size_t len, char *resp,
                     size_t resp_size)
{
    int fd = tcp_connect(port);
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     ctype, len);
    assert_int_equal(send(fd, head, (size_t)n, MSG_NOSIGNAL), n);
    assert_int_equal(send(fd, body, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t got = 0;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) <= 0) {
            break;
        }
        ssize_t r = recv(fd, resp + got, resp_size - 1 - got, 0);
        if (r <= 0) {
            break;
        }
        got += (size_t)r;
    }
    resp[got] = '\0';
    close(fd);
    int status = 0;
    sscanf(resp, "HTTP/1.1 %d", &status);
    return status;
}

/* ---- tests ------------------------------------------------------------ */

static void test_pipeline_status_mapping(void **state)
{
    (void)state;
    am__otlp_config_t config = base_config();
    start_server(&srv, &config);
    size_t len;
    uint8_t *body = grpc_body(&len);
    h2c_t c;
    h2c_open(&c, srv.grpc_port, true);

    h2c_request(&c, body, len, false);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    assert_string_equal(c.status, "200");
    assert_string_equal(c.grpc_status, "0");
    assert_int_equal(c.body_len, 5); /* prefix + empty ExportTraceServiceResponse */

    atomic_store(&srv.next.answer, AM_RETRY);
    h2c_request(&c, body, len, false);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    assert_string_equal(c.grpc_status, "14");
    assert_true(c.details_bin); /* RetryInfo */
    assert_non_null(strstr(c.grpc_message, "retry"));

    atomic_store(&srv.next.answer, AM_PERMANENT);
    h2c_request(&c, body, len, false);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    assert_string_equal(c.grpc_status, "3");
    h2c_close(&c);

    char resp[4096];
    atomic_store(&srv.next.answer, AM_RETRY);
    assert_int_equal(
        http_post(srv.http_port, "application/x-protobuf", body + 5, len - 5, resp, sizeof(resp)),
        503);
    assert_non_null(strstr(resp, "Retry-After: 1"));
    atomic_store(&srv.next.answer, AM_OK);
    assert_int_equal(
        http_post(srv.http_port, "application/x-protobuf", body + 5, len - 5, resp, sizeof(resp)),
        200);
    assert_true(atomic_load(&srv.next.batches) >= 5);
    free(body);
    stop_server(&srv);
}

static void test_rst_stream_frees_request(void **state)
{
    (void)state;
    am__otlp_config_t config = base_config();
    start_server(&srv, &config);
    /* Claim 600 KB, send 200 KB, then cancel. */
    size_t claimed = 600000, sent = 200000;
    uint8_t *body = calloc(1, 5 + sent);
    body[1] = (uint8_t)(claimed >> 24);
    body[2] = (uint8_t)(claimed >> 16);
    body[3] = (uint8_t)(claimed >> 8);
    body[4] = (uint8_t)claimed;
    h2c_t c;
    h2c_open(&c, srv.grpc_port, true);
    h2c_request(&c, body, 5 + sent, true);
    uint64_t deadline = am_now_mono_ms() + 5000;
    while (am__otlp_grpc_buffered_bytes(srv.rcv->grpc_server) < sent &&
           am_now_mono_ms() < deadline) {
        h2c_io(&c, 20);
    }
    assert_true(am__otlp_grpc_buffered_bytes(srv.rcv->grpc_server) >= sent);
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, c.stream_id, NGHTTP2_CANCEL);
    deadline = am_now_mono_ms() + 5000;
    while (am__otlp_grpc_buffered_bytes(srv.rcv->grpc_server) != 0 && am_now_mono_ms() < deadline) {
        h2c_io(&c, 20);
    }
    assert_int_equal(am__otlp_grpc_buffered_bytes(srv.rcv->grpc_server), 0);
    assert_int_equal(atomic_load(&srv.next.batches), 0);
    h2c_close(&c);
    free(body);
    stop_server(&srv);
}

static void test_keepalive_closes_silent_client(void **state)
{
    (void)state;
    am__otlp_config_t config = base_config();
    start_server(&srv, &config);
    size_t len;
    uint8_t *body = grpc_body(&len);
    h2c_t c;
    h2c_open(&c, srv.grpc_port, false); /* never answers PINGs */
    h2c_request(&c, body, len, false);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    uint64_t start = am_now_mono_ms();
    assert_true(h2c_wait(&c, &c.got_ping, 3000));
    assert_true(h2c_wait(&c, &c.eof, 3000)); /* closed: the ping went unanswered */
    assert_true(am_now_mono_ms() - start < 3000);
    h2c_close(&c);

    /* A client that answers pings stays connected past the same time. */
    h2c_open(&c, srv.grpc_port, true);
    h2c_request(&c, body, len, false);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    bool never = false;
    h2c_wait(&c, &never, 1500);
    assert_true(c.got_ping);
    assert_false(c.eof);
    h2c_close(&c);
    free(body);
    stop_server(&srv);
}

static void test_max_connection_age_goaway(void **state)
{
    (void)state;
    am__otlp_config_t config = base_config();
    config.protocols.grpc.keepalive.time_ms = 0;
    config.protocols.grpc.max_connection_age_ms = 300;
    start_server(&srv, &config);
    size_t len;
    uint8_t *body = grpc_body(&len);
    h2c_t c;
    h2c_open(&c, srv.grpc_port, true);
    h2c_request(&c, body, len, false);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    assert_true(h2c_wait(&c, &c.got_goaway, 3000));
    assert_true(h2c_wait(&c, &c.eof, 3000)); /* no streams left: closed */
    h2c_close(&c);
    free(body);
    stop_server(&srv);
}

static void test_max_connection_idle_goaway(void **state)
{
    (void)state;
    am__otlp_config_t config = base_config();
    config.protocols.grpc.keepalive.time_ms = 0;
    config.protocols.grpc.max_connection_idle_ms = 300;
    start_server(&srv, &config);
    size_t len;
    uint8_t *body = grpc_body(&len);
    h2c_t c;
    h2c_open(&c, srv.grpc_port, true);
    /* Busy for longer than the idle time: no GOAWAY while requests flow. */
    uint64_t busy_until = am_now_mono_ms() + 600;
    while (am_now_mono_ms() < busy_until) {
        h2c_request(&c, body, len, false);
        assert_true(h2c_wait(&c, &c.stream_closed, 5000));
        assert_string_equal(c.grpc_status, "0");
        assert_false(c.got_goaway);
    }
    uint64_t idle_from = am_now_mono_ms();
    assert_true(h2c_wait(&c, &c.got_goaway, 3000));
    assert_true(am_now_mono_ms() - idle_from >= 250);
    assert_true(h2c_wait(&c, &c.eof, 3000));
    h2c_close(&c);
    free(body);
    stop_server(&srv);
}

static void test_shutdown_answers_inflight(void **state)
{
    (void)state;
    am__otlp_config_t config = base_config();
    start_server(&srv, &config);
    uint8_t half[5 + 100] = {0, 0, 0, 4, 0}; /* claims 1024 bytes, sends 100 */
    h2c_t c;
    h2c_open(&c, srv.grpc_port, true);
    h2c_request(&c, half, sizeof(half), true);
    uint64_t deadline = am_now_mono_ms() + 5000;
    while (am__otlp_grpc_buffered_bytes(srv.rcv->grpc_server) == 0 && am_now_mono_ms() < deadline) {
        h2c_io(&c, 20);
    }
    uv_async_send(&srv.stop);
    assert_true(h2c_wait(&c, &c.stream_closed, 5000));
    assert_string_equal(c.grpc_status, "14");
    assert_true(c.got_goaway);
    assert_true(h2c_wait(&c, &c.eof, 6000));
    pthread_join(srv.thread, NULL);
    assert_int_equal(uv_loop_close(&srv.loop), 0);
    h2c_close(&c);
}

static void test_defaults_enable_both_protocols(void **state)
{
    (void)state;
    /* `otlp: {}`: protocols absent -> gRPC and HTTP on their defaults. */
    am__otlp_config_t config;
    memset(&config, 0, sizeof(config));
    am_create_params_t params = {.id = "otlp", .config = &config, .next = NULL, .shard = -1};
    void *instance = NULL;
    assert_int_equal(am_receiver_otlp_ops.create(&params, &instance), 0);
    am__otlp_receiver_t *rcv = instance;
    assert_non_null(rcv->grpc);
    assert_non_null(rcv->http);
    assert_string_equal(rcv->grpc->endpoint, "127.0.0.1:4317");
    assert_string_equal(rcv->http->endpoint, "127.0.0.1:4318");
    assert_int_equal(rcv->grpc->max_recv_msg_size, 16 << 20);
    am_receiver_otlp_ops.destroy(rcv);

    /* protocols present but empty: a config error. */
    config.protocols.set = true;
    am_errors_t errs = {0};
    am_receiver_otlp_ops.validate(&config, NULL, "receivers.otlp", &errs);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.msgs[0], "enable at least one of grpc, http"));
    am_errors_clear(&errs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_status_mapping),
        cmocka_unit_test(test_rst_stream_frees_request),
        cmocka_unit_test(test_keepalive_closes_silent_client),
        cmocka_unit_test(test_max_connection_age_goaway),
        cmocka_unit_test(test_max_connection_idle_goaway),
        cmocka_unit_test(test_shutdown_answers_inflight),
        cmocka_unit_test(test_defaults_enable_both_protocols),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    am_selfmetrics_reset();
    return rc;
}
