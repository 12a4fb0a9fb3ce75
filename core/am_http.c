/*
 * am_http.c - HTTP/1.1 server on libuv + http-parser.
 *
 * Why a server of our own at all: the pieces that need HTTP/1.1 (telemetry,
 * the scrape endpoint, OTLP/HTTP) want the same loop and the same bounds, and
 * Debian has no small embeddable HTTP/1.1 *server* library for libuv.  We
 * still do not parse HTTP by hand: http-parser does the protocol; this file
 * only owns sockets, buffering, bounds and timeouts.
 *
 * One connection = one uv_tcp_t, one http_parser, one request at a time.
 * Bytes are appended to `inbuf`; the parser runs over what has not been
 * parsed yet.  When a message completes, the parser is paused and reading
 * stops until the handler answers, so a pipelining client cannot make us
 * buffer without bound.  After the response is written the parser resumes
 * over whatever is still buffered.
 *
 * Bounds: header bytes (431), body bytes (413, checked against
 * Content-Length before any body is buffered and again while streaming
 * chunked bodies), a header timeout (slow-loris) and an idle timeout, and a
 * connection limit past which new connections are closed at once.
 */
#include "am_http.h"

#include <ctype.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_log.h"

typedef struct http_conn http_conn_t;

struct am_http_server {
    uv_tcp_t listener;
    uv_loop_t *loop;
    am_http_server_opts_t opts;
    char *endpoint;
    size_t n_conns;
    http_conn_t *conns; /* list, for close */
    bool closing;
    int port;
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    am_http_server_t *server;
    http_conn_t *prev, *next;
    http_parser parser;
    char *inbuf;
    size_t in_len, in_cap, in_parsed;
    size_t header_bytes;
    am_http_request_t *req;   /* request being read, or being handled */
    bool in_handler;          /* req handed to the handler, not answered */
    bool header_field_last;   /* last header callback was a field */
    bool keep_alive;
    bool closing;
    bool lingering;           /* answered with close: draining input */
    uv_shutdown_t shutdown_req;
    int error_status;         /* non-zero: answer this and close */
    int handles_open;
};

typedef struct http_write {
    uv_write_t req;
    http_conn_t *conn;
    char *data;
    bool close_after;
} http_write_t;

static void conn_close(http_conn_t *conn);
static void conn_process(http_conn_t *conn);
static void conn_arm_timer(http_conn_t *conn, uint64_t timeout_ms);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);

int am_parse_endpoint(const char *endpoint, char *host, size_t host_size, int *port)
{
    const char *colon;
    const char *host_start = endpoint;
    size_t host_len;
    if (endpoint[0] == '[') {
        const char *close = strchr(endpoint, ']');
        if (close == NULL || close[1] != ':') {
            return AM_EINVAL;
        }
        host_start = endpoint + 1;
        host_len = (size_t)(close - host_start);
        colon = close + 1;
    } else {
        colon = strrchr(endpoint, ':');
        if (colon == NULL) {
            return AM_EINVAL;
        }
        host_len = (size_t)(colon - endpoint);
    }
    if (host_len + 1 > host_size) {
        return AM_ERANGE;
    }
    char *end = NULL;
    long value = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || value < 0 || value > 65535) {
        return AM_EINVAL;
    }
    memcpy(host, host_start, host_len);
    host[host_len] = '\0';
    if (host[0] == '\0') {
        snprintf(host, host_size, "0.0.0.0");
    }
    *port = (int)value;
    return 0;
}

/* ---- request memory -------------------------------------------------- */

static void request_free(am_http_request_t *req)
{
    if (req == NULL) {
        return;
    }
    for (size_t i = 0; i < req->n_headers; i++) {
        am_free(req->headers[i].name);
        am_free(req->headers[i].value);
    }
    am_free(req->url);
    am_free(req->path);
    am_free(req->body);
    am_free(req);
}

/* Append to a malloc'd NUL-terminated string. */
static int str_append(char **dst, const char *data, size_t len, size_t limit)
{
    size_t old = *dst != NULL ? strlen(*dst) : 0;
    if (old + len > limit) {
        return AM_ERANGE;
    }
    char *grown = am_realloc(*dst, old + len + 1);
    if (grown == NULL) {
        return AM_ENOMEM;
    }
    memcpy(grown + old, data, len);
    grown[old + len] = '\0';
    *dst = grown;
    return 0;
}

/* ---- http-parser callbacks ------------------------------------------- */

static int on_message_begin(http_parser *parser)
{
    http_conn_t *conn = parser->data;
    request_free(conn->req);
    conn->req = am_calloc(1, sizeof(*conn->req));
    if (conn->req == NULL) {
        conn->error_status = 503;
        return -1;
    }
    conn->req->conn_ = conn;
    conn->req->user_data = conn->server->opts.user_data;
    conn->header_bytes = 0;
    conn->header_field_last = false;
    /* The header timeout runs from the first byte of a request. */
    conn_arm_timer(conn, conn->server->opts.header_timeout_ms);
    return 0;
}

static int header_budget(http_conn_t *conn, size_t len)
{
    conn->header_bytes += len;
    if (conn->header_bytes > conn->server->opts.max_header_bytes) {
        conn->error_status = 431;
        return -1;
    }
    return 0;
}

static int on_url(http_parser *parser, const char *at, size_t len)
{
    http_conn_t *conn = parser->data;
    if (header_budget(conn, len) != 0) {
        return -1;
    }
    if (str_append(&conn->req->url, at, len, conn->server->opts.max_header_bytes) != 0) {
        conn->error_status = 414;
        return -1;
    }
    return 0;
}

static int on_header_field(http_parser *parser, const char *at, size_t len)
{
    http_conn_t *conn = parser->data;
    am_http_request_t *req = conn->req;
    if (header_budget(conn, len) != 0) {
        return -1;
    }
    if (!conn->header_field_last) {
        if (req->n_headers == AM_HTTP_MAX_HEADERS) {
            conn->error_status = 431;
            return -1;
        }
        req->n_headers++;
    }
    conn->header_field_last = true;
    am_http_header_t *hdr = &req->headers[req->n_headers - 1];
    if (str_append(&hdr->name, at, len, conn->server->opts.max_header_bytes) != 0) {
        conn->error_status = 431;
        return -1;
    }
    for (char *p = hdr->name; *p != '\0'; p++) {
        *p = (char)tolower((unsigned char)*p);
    }
    return 0;
}

static int on_header_value(http_parser *parser, const char *at, size_t len)
{
    http_conn_t *conn = parser->data;
    am_http_request_t *req = conn->req;
    if (header_budget(conn, len) != 0) {
        return -1;
    }
    conn->header_field_last = false;
    if (req->n_headers == 0) {
        return -1;
    }
    am_http_header_t *hdr = &req->headers[req->n_headers - 1];
    if (str_append(&hdr->value, at, len, conn->server->opts.max_header_bytes) != 0) {
        conn->error_status = 431;
        return -1;
    }
    return 0;
}

static int on_headers_complete(http_parser *parser)
{
    http_conn_t *conn = parser->data;
    am_http_request_t *req = conn->req;
    req->method = http_method_str((enum http_method)parser->method);
    for (size_t i = 0; i < req->n_headers; i++) {
        if (req->headers[i].value == NULL) {
            req->headers[i].value = am_strdup("");
            if (req->headers[i].value == NULL) {
                conn->error_status = 503;
                return -1;
            }
        }
    }
    if (req->url == NULL) {
        conn->error_status = 400;
        return -1;
    }
    size_t path_len = strcspn(req->url, "?#");
    req->path = am_strndup(req->url, path_len);
    if (req->path == NULL) {
        conn->error_status = 503;
        return -1;
    }
    /* Refuse a declared oversize body before reading any of it. */
    if ((parser->flags & F_CONTENTLENGTH) != 0 &&
        parser->content_length > conn->server->opts.max_body_bytes) {
        conn->error_status = 413;
        return -1;
    }
    uv_timer_stop(&conn->timer);
    return 0;
}

static int on_body(http_parser *parser, const char *at, size_t len)
{
    http_conn_t *conn = parser->data;
    am_http_request_t *req = conn->req;
    if (req->body_len + len > conn->server->opts.max_body_bytes) {
        conn->error_status = 413;
        return -1;
    }
    char *grown = am_realloc(req->body, req->body_len + len + 1);
    if (grown == NULL) {
        conn->error_status = 503;
        return -1;
    }
    memcpy(grown + req->body_len, at, len);
    req->body = grown;
    req->body_len += len;
    req->body[req->body_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *parser)
{
    http_conn_t *conn = parser->data;
    conn->keep_alive = http_should_keep_alive(parser) != 0;
    http_parser_pause(parser, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- writing --------------------------------------------------------- */

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

#define LINGER_MS 2000

static void on_linger_shutdown(uv_shutdown_t *req, int status)
{
    AM_UNUSED(req);
    AM_UNUSED(status);
}

/* Lingering close (as nginx does): after answering an error while the
 * client may still be sending its body, half-close our side and discard
 * input for a moment, so the client reads our answer instead of a reset. */
static void conn_linger(http_conn_t *conn)
{
    conn->lingering = true;
    conn->in_len = 0;
    conn->in_parsed = 0;
    if (uv_shutdown(&conn->shutdown_req, (uv_stream_t *)&conn->tcp, on_linger_shutdown) != 0) {
        conn_close(conn);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&conn->tcp)) {
        uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    }
    conn_arm_timer(conn, LINGER_MS);
}

static void on_write_done(uv_write_t *wreq, int status)
{
    http_write_t *write = (http_write_t *)wreq;
    http_conn_t *conn = write->conn;
    bool close_after = write->close_after || status < 0;
    am_free(write->data);
    am_free(write);
    if (conn->closing) {
        return;
    }
    if (close_after) {
        if (status < 0) {
            conn_close(conn);
        } else {
            conn_linger(conn);
        }
        return;
    }
    /* Ready for the next request on this connection. */
    conn_process(conn);
}

static void conn_write_response(http_conn_t *conn, int status, const char *content_type,
                                const char *extra_headers, const void *body, size_t body_len,
                                bool close_after)
{
    char head[1024];
    int head_len = snprintf(head, sizeof(head),
                            "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n", status,
                            status_text(status), body_len,
                            content_type != NULL ? "Content-Type: " : "",
                            content_type != NULL ? content_type : "",
                            content_type != NULL ? "\r\n" : "",
                            close_after ? "Connection: close\r\n" : "");
    size_t extra_len = extra_headers != NULL ? strlen(extra_headers) : 0;
    if (head_len < 0 || (size_t)head_len >= sizeof(head)) {
        conn_close(conn);
        return;
    }
    http_write_t *write = am_calloc(1, sizeof(*write));
    size_t total = (size_t)head_len + extra_len + body_len;
    char *data = am_malloc(total);
    if (write == NULL || data == NULL) {
        am_free(write);
        am_free(data);
        conn_close(conn);
        return;
    }
    /* Status line and fixed headers, then the caller's headers, then the
     * blank line: head ends with "\r\n\r\n", so splice extras before it. */
    memcpy(data, head, (size_t)head_len - 2);
    if (extra_len > 0) {
        memcpy(data + head_len - 2, extra_headers, extra_len);
    }
    memcpy(data + head_len - 2 + extra_len, "\r\n", 2);
    if (body_len > 0) {
        memcpy(data + head_len + extra_len, body, body_len);
    }
    write->conn = conn;
    write->data = data;
    write->close_after = close_after;
    uv_buf_t buf = uv_buf_init(data, (unsigned)total);
    if (uv_write(&write->req, (uv_stream_t *)&conn->tcp, &buf, 1, on_write_done) != 0) {
        am_free(data);
        am_free(write);
        conn_close(conn);
    }
}

void am_http_respond(am_http_request_t *req, int status, const char *content_type,
                     const char *extra_headers, const void *body, size_t body_len)
{
    http_conn_t *conn = req->conn_;
    conn->in_handler = false;
    request_free(conn->req);
    conn->req = NULL;
    conn_write_response(conn, status, content_type, extra_headers, body, body_len,
                        !conn->keep_alive || conn->server->closing);
}

const char *am_http_header_get(const am_http_request_t *req, const char *lower_name)
{
    for (size_t i = 0; i < req->n_headers; i++) {
        if (req->headers[i].name != NULL && strcmp(req->headers[i].name, lower_name) == 0) {
            return req->headers[i].value;
        }
    }
    return NULL;
}

/* ---- reading --------------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *conn = handle->data;
    if (conn->in_cap - conn->in_len < 16384) {
        size_t cap = conn->in_cap == 0 ? 65536 : conn->in_cap * 2;
        char *grown = am_realloc(conn->inbuf, cap);
        if (grown == NULL) {
            buf->base = NULL;
            buf->len = 0;
            return;
        }
        conn->inbuf = grown;
        conn->in_cap = cap;
    }
    buf->base = conn->inbuf + conn->in_len;
    buf->len = conn->in_cap - conn->in_len;
}

static void answer_error_and_close(http_conn_t *conn, int status)
{
    uv_read_stop((uv_stream_t *)&conn->tcp);
    request_free(conn->req);
    conn->req = NULL;
    conn->in_handler = false;
    char body[64];
    int len = snprintf(body, sizeof(body), "%s\n", status_text(status));
    conn_write_response(conn, status, "text/plain", NULL, body, (size_t)len, true);
}

/* Run the parser over unparsed input; dispatch a complete request. */
static void conn_process(http_conn_t *conn)
{
    if (conn->closing || conn->in_handler) {
        return;
    }
    if (HTTP_PARSER_ERRNO(&conn->parser) == HPE_PAUSED) {
        http_parser_pause(&conn->parser, 0);
    }
    size_t avail = conn->in_len - conn->in_parsed;
    size_t parsed = http_parser_execute(&conn->parser, &parser_settings,
                                        conn->inbuf + conn->in_parsed, avail);
    conn->in_parsed += parsed;
    enum http_errno err = HTTP_PARSER_ERRNO(&conn->parser);
    if (conn->error_status != 0) {
        answer_error_and_close(conn, conn->error_status);
        return;
    }
    if (err != HPE_OK && err != HPE_PAUSED) {
        answer_error_and_close(conn, 400);
        return;
    }
    /* Compact the buffer once everything in it was consumed. */
    if (conn->in_parsed == conn->in_len) {
        conn->in_parsed = 0;
        conn->in_len = 0;
    }
    if (err == HPE_PAUSED) {
        /* A whole request: stop reading until it is answered. */
        uv_read_stop((uv_stream_t *)&conn->tcp);
        uv_timer_stop(&conn->timer);
        conn->in_handler = true;
        conn->server->opts.handler(conn->req);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&conn->tcp)) {
        uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    }
    if (conn->req == NULL || conn->req->method == NULL) {
        /* Between requests (idle) or inside a request head (header
         * timeout, armed by on_message_begin). */
        if (conn->req == NULL) {
            conn_arm_timer(conn, conn->server->opts.idle_timeout_ms);
        }
    }
}

static void on_timeout(uv_timer_t *timer)
{
    http_conn_t *conn = timer->data;
    if (conn->in_handler && !conn->lingering) {
        return; /* the handler owns the request; it will answer */
    }
    AM_DEBUG("http", "closing connection: %s timeout",
             conn->req != NULL ? "header" : "idle");
    conn_close(conn);
}

static void conn_arm_timer(http_conn_t *conn, uint64_t timeout_ms)
{
    if (timeout_ms > 0) {
        uv_timer_start(&conn->timer, on_timeout, timeout_ms, 0);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    http_conn_t *conn = stream->data;
    AM_UNUSED(buf);
    if (nread < 0 || buf->base == NULL) {
        if (nread != UV_EOF && buf->base == NULL) {
            AM_WARN("http", "out of memory reading request");
        }
        conn_close(conn);
        return;
    }
    if (conn->lingering) {
        return; /* discard: in_len stays 0 */
    }
    conn->in_len += (size_t)nread;
    conn_process(conn);
}

static void on_handle_closed(uv_handle_t *handle)
{
    http_conn_t *conn = handle->data;
    if (--conn->handles_open > 0) {
        return;
    }
    am_http_server_t *server = conn->server;
    request_free(conn->req);
    am_free(conn->inbuf);
    am_free(conn);
    server->n_conns--;
    if (server->closing && server->n_conns == 0 && server->listener.data == NULL) {
        am_free(server->endpoint);
        am_free(server);
    }
}

static void conn_close(http_conn_t *conn)
{
    if (conn->closing) {
        return;
    }
    conn->closing = true;
    if (conn->in_handler && conn->req != NULL && conn->req->on_abort != NULL) {
        conn->req->on_abort(conn->req);
    }
    conn->in_handler = false;
    am_http_server_t *server = conn->server;
    if (conn->prev != NULL) {
        conn->prev->next = conn->next;
    } else {
        server->conns = conn->next;
    }
    if (conn->next != NULL) {
        conn->next->prev = conn->prev;
    }
    uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
    uv_close((uv_handle_t *)&conn->tcp, on_handle_closed);
}

static void on_reject_closed(uv_handle_t *handle)
{
    am_free(handle);
}

static void on_connection(uv_stream_t *listener, int status)
{
    am_http_server_t *server = listener->data;
    if (status < 0 || server->closing) {
        return;
    }
    if (server->n_conns >= server->opts.max_connections) {
        uv_tcp_t *reject = am_malloc(sizeof(*reject));
        if (reject == NULL) {
            return;
        }
        uv_tcp_init(server->loop, reject);
        if (uv_accept(listener, (uv_stream_t *)reject) == 0) {
            AM_DEBUG("http", "%s: connection limit reached", server->endpoint);
        }
        uv_close((uv_handle_t *)reject, on_reject_closed);
        return;
    }
    http_conn_t *conn = am_calloc(1, sizeof(*conn));
    if (conn == NULL) {
        return;
    }
    conn->server = server;
    uv_tcp_init(server->loop, &conn->tcp);
    uv_timer_init(server->loop, &conn->timer);
    conn->tcp.data = conn;
    conn->timer.data = conn;
    conn->handles_open = 2;
    server->n_conns++;
    conn->next = server->conns;
    if (server->conns != NULL) {
        server->conns->prev = conn;
    }
    server->conns = conn;
    if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
        conn_close(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    http_parser_init(&conn->parser, HTTP_REQUEST);
    conn->parser.data = conn;
    conn_arm_timer(conn, server->opts.idle_timeout_ms);
    uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
}

int am_http_server_start(uv_loop_t *loop, const am_http_server_opts_t *opts,
                         am_http_server_t **out)
{
    char host[256];
    int port;
    int rc = am_parse_endpoint(opts->endpoint, host, sizeof(host), &port);
    if (rc != 0) {
        AM_ERROR("http", "invalid endpoint \"%s\"", opts->endpoint);
        return rc;
    }
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        AM_ERROR("http", "endpoint \"%s\": host must be an IP address", opts->endpoint);
        return AM_EINVAL;
    }
    am_http_server_t *server = am_calloc(1, sizeof(*server));
    if (server == NULL) {
        return AM_ENOMEM;
    }
    server->endpoint = am_strdup(opts->endpoint);
    if (server->endpoint == NULL) {
        am_free(server);
        return AM_ENOMEM;
    }
    server->loop = loop;
    server->opts = *opts;
    server->opts.endpoint = server->endpoint;
    if (server->opts.max_body_bytes == 0) {
        server->opts.max_body_bytes = 16u << 20;
    }
    if (server->opts.max_header_bytes == 0) {
        server->opts.max_header_bytes = 64u << 10;
    }
    if (server->opts.header_timeout_ms == 0) {
        server->opts.header_timeout_ms = 10000;
    }
    if (server->opts.idle_timeout_ms == 0) {
        server->opts.idle_timeout_ms = 60000;
    }
    if (server->opts.max_connections == 0) {
        server->opts.max_connections = 1024;
    }
    uv_tcp_init(loop, &server->listener);
    server->listener.data = server;
    rc = uv_tcp_bind(&server->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&server->listener, 511, on_connection);
    }
    if (rc != 0) {
        AM_ERROR("http", "cannot listen on %s: %s", opts->endpoint, uv_strerror(rc));
        server->closing = true;
        am_http_server_close(server);
        return AM_EIO;
    }
    struct sockaddr_storage bound;
    int bound_len = sizeof(bound);
    uv_tcp_getsockname(&server->listener, (struct sockaddr *)&bound, &bound_len);
    server->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = server;
    return 0;
}

int am_http_server_port(const am_http_server_t *server)
{
    return server->port;
}

static void on_listener_closed(uv_handle_t *handle)
{
    am_http_server_t *server = handle->data;
    server->listener.data = NULL;
    if (server->n_conns == 0) {
        am_free(server->endpoint);
        am_free(server);
    }
}

void am_http_server_close(am_http_server_t *server)
{
    if (server == NULL) {
        return;
    }
    server->closing = true;
    uv_close((uv_handle_t *)&server->listener, on_listener_closed);
    /* Idle connections go now; one inside a handler goes when answered
     * (responses carry Connection: close while closing). */
    http_conn_t *conn = server->conns;
    while (conn != NULL) {
        http_conn_t *next = conn->next;
        if (!conn->in_handler) {
            conn_close(conn);
        }
        conn = next;
    }
}
