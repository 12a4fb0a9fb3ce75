/*
 * loadgen_http.c - the OTLP/HTTP client: POST /v1/traces with protobuf
 * bodies over HTTP/1.1 keep-alive, on libuv, one request at a time per
 * connection (HTTP/1.1 has no multiplexing; more concurrency means more
 * connections).
 *
 * A request is one uv_write of two buffers: the head, formatted per
 * request, and the pool's body bytes (the message without the gRPC prefix),
 * which stay untouched while the write is in flight.  Responses are parsed
 * with http_parser (Content-Length or chunked).  When the server closes a
 * connection (Connection: close, an error answer, an idle timeout) it is
 * reopened, at most MAX_RECONNECTS times, so one refused request does not
 * end the run; a request in flight on a lost connection is a transport
 * error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

#include "loadgen.h"

#define READ_BUF_SIZE (64 * 1024)
#define MAX_RECONNECTS 1000

typedef struct http_conn {
    lg_conn_t base;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    http_parser parser;
    bool connected;
    bool closing;  /* handle closing */
    bool shutdown; /* closed for good */
    bool reopen;   /* reopen when the handle has closed */
    lg_request_t *req;
    uint64_t start_ns;
    uint32_t reconnects;
    char head[512];
    uint8_t in[READ_BUF_SIZE];
} http_conn_t;

static void conn_connect(http_conn_t *c);
static void conn_lost(http_conn_t *c, const char *why);

static int on_message_complete(http_parser *parser)
{
    http_conn_t *c = parser->data;
    if (c->req == NULL) {
        return 0; /* an answer nobody asked for */
    }
    lg_request_t *req = c->req;
    c->req = NULL;
    char msg[32];
    snprintf(msg, sizeof(msg), "HTTP %u", parser->status_code);
    lg_run_done(c->base.run, &c->base, req, c->start_ns, (int)parser->status_code, -1, msg, false);
    if (!http_should_keep_alive(parser)) {
        c->reopen = true;
    }
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_complete = on_message_complete,
};

static void on_close(uv_handle_t *handle)
{
    http_conn_t *c = handle->data;
    c->closing = false;
    c->connected = false;
    if (!c->shutdown && c->reopen && !c->base.run->finished && c->reconnects < MAX_RECONNECTS) {
        c->reconnects++;
        c->reopen = false;
        conn_connect(c);
        return;
    }
    c->base.run->conns[c->base.index] = NULL;
    if (!c->base.dead) {
        lg_run_conn_dead(c->base.run, &c->base);
    }
    free(c);
}

static void conn_close_handle(http_conn_t *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    c->connected = false;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* The connection broke: fail what is in flight and reopen it. */
static void conn_lost(http_conn_t *c, const char *why)
{
    if (c->closing) {
        return;
    }
    if (c->req != NULL) {
        lg_request_t *req = c->req;
        c->req = NULL;
        lg_run_done(c->base.run, &c->base, req, c->start_ns, 0, -1, why, true);
    }
    lg_run_t *run = c->base.run;
    if (c->reconnects >= MAX_RECONNECTS && run->first_error[0] == '\0') {
        snprintf(run->first_error, sizeof(run->first_error), "connection %d: %s", c->base.index,
                 why);
    }
    c->reopen = true;
    conn_close_handle(c);
}

static void on_write(uv_write_t *wreq, int status)
{
    http_conn_t *c = wreq->data;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        conn_lost(c, uv_strerror(status));
    }
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *c = handle->data;
    (void)suggested;
    *buf = uv_buf_init((char *)c->in, sizeof(c->in));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    http_conn_t *c = stream->data;
    if (c->closing) {
        return;
    }
    if (nread < 0) {
        conn_lost(c, nread == UV_EOF ? "connection closed by the server" : uv_strerror((int)nread));
        return;
    }
    size_t parsed = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
    if (parsed != (size_t)nread || HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
        conn_lost(c, http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
        return;
    }
    if (c->reopen) {
        conn_close_handle(c); /* the server said Connection: close */
        return;
    }
    lg_http_pump(&c->base);
}

static void on_connect(uv_connect_t *creq, int status)
{
    http_conn_t *c = creq->data;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        lg_run_t *run = c->base.run;
        if (run->first_error[0] == '\0') {
            snprintf(run->first_error, sizeof(run->first_error), "connect to %s: %s",
                     run->opt->authority, uv_strerror(status));
        }
        c->reopen = false; /* a refused connect is not retried */
        conn_close_handle(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    c->connected = true;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        conn_lost(c, uv_strerror(rc));
        return;
    }
    lg_http_pump(&c->base);
}

static void conn_connect(http_conn_t *c)
{
    lg_run_t *run = c->base.run;
    uv_tcp_init(run->loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    c->write_req.data = c;
    struct sockaddr_in addr;
    uv_ip4_addr(run->opt->host, run->opt->port, &addr);
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&addr, on_connect);
    if (rc != 0) {
        fprintf(stderr, "loadgen: connect: %s\n", uv_strerror(rc));
        c->reopen = false;
        conn_close_handle(c);
    }
}

lg_conn_t *lg_http_open(lg_run_t *run, int index)
{
    http_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->base.run = run;
    c->base.transport = LG_HTTP;
    c->base.index = index;
    c->base.max_in_flight = 1;
    conn_connect(c);
    return &c->base;
}

void lg_http_pump(lg_conn_t *conn)
{
    http_conn_t *c = (http_conn_t *)conn;
    if (!c->connected || c->closing || c->req != NULL || conn->dead) {
        return;
    }
    uint64_t start_ns;
    lg_request_t *req = lg_run_take(conn->run, &start_ns);
    if (req == NULL) {
        return;
    }
    const lg_options_t *opt = conn->run->opt;
    const char *encoding = opt->compression == LG_COMPRESS_GZIP   ? "Content-Encoding: gzip\r\n"
                           : opt->compression == LG_COMPRESS_ZSTD ? "Content-Encoding: zstd\r\n"
                                                                  : "";
    size_t body_len = req->len - 5;
    int n =
        snprintf(c->head, sizeof(c->head),
                 "POST /v1/traces HTTP/1.1\r\nHost: %s\r\nUser-Agent: agentmeter-loadgen/0.1\r\n"
                 "Content-Type: application/x-protobuf\r\n%sContent-Length: %zu\r\n\r\n",
                 opt->authority, encoding, body_len);
    c->req = req;
    c->start_ns = start_ns;
    conn->in_flight++;
    uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)n),
                        uv_buf_init((char *)req->buf + 5, (unsigned)body_len)};
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, 2, on_write);
    if (rc != 0) {
        conn_lost(c, uv_strerror(rc));
    }
}

void lg_http_close(lg_conn_t *conn)
{
    http_conn_t *c = (http_conn_t *)conn;
    c->shutdown = true;
    conn->dead = true;
    if (c->closing) {
        return; /* on_close will free it */
    }
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}
