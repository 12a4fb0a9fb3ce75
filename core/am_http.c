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
 *
 * TLS (opts.ssl_ctx set): OpenSSL never sees the socket.  Ciphertext read
 * by libuv lands in one per-server buffer and is fed to the connection's
 * read memory BIO at once; conn_process() pulls plaintext out with
 * SSL_read into `inbuf` and the parser runs exactly as for plaintext.
 * Whatever SSL produces (handshake records, alerts, encrypted responses,
 * close_notify) collects in the write memory BIO and leaves in one
 * uv_write per flush, in order.  Memory BIOs never block, so there is no
 * WANT_WRITE dance.  Bounds carry over: the socket is only read while no
 * request is in the handler (as before), the read BIO holds at most one
 * socket read plus a partial record, and at most TLS_PLAIN_AHEAD bytes of
 * plaintext are decrypted ahead of the parser; the rest waits inside SSL.
 * The handshake must finish within header_timeout.  A failed handshake
 * sends OpenSSL's alert and closes; a client speaking plain HTTP to the TLS
 * port (its first byte is a letter, never a TLS record type) gets a
 * plaintext 400 saying so, as nginx and Go do, instead of a bare reset.
 * Graceful closes (Connection: close, idle timeout, server close) send
 * close_notify first.
 */
#include "am_http.h"

#include <ctype.h>
#include <http_parser.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "am_log.h"

typedef struct http_conn http_conn_t;

#define TLS_READ_BUF (64u << 10)     /* ciphertext per socket read */
#define TLS_PLAIN_AHEAD (256u << 10) /* plaintext decrypted ahead of the parser */
#define TLS_PLAIN_CHUNK (16u << 10)  /* one TLS record's worth of room */
#define TLS_BACKLOG_MAX (1u << 20)   /* unsent non-response records (tls_unsent) */

struct am_http_server {
    uv_tcp_t listener;
    uv_loop_t *loop;
    am_http_server_opts_t opts;
    char *endpoint;
    size_t n_conns;
    http_conn_t *conns; /* list, for close */
    bool closing;
    int port;
    char *tls_in; /* TLS_READ_BUF of ciphertext, consumed within on_read */
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
    SSL *ssl;                 /* NULL: plaintext (owns both memory BIOs) */
    bool tls_first_read;      /* the first ciphertext was looked at */
    bool tls_handshake_done;
    bool tls_peer_closed;     /* close_notify received */
    bool tls_close_sent;      /* close_notify sent (or must not be: failed) */
    size_t tls_unsent;        /* bytes of WRITE_TLS writes not completed */
};

/* What a finished write means for the connection. */
typedef enum http_write_kind {
    WRITE_RESPONSE, /* a response: next request, or linger when close_after */
    WRITE_TLS,      /* handshake records, alerts, close_notify: nothing */
} http_write_kind_t;

typedef struct http_write {
    uv_write_t req;
    http_conn_t *conn;
    char *data;
    size_t len;
    http_write_kind_t kind;
    bool close_after;
} http_write_t;

static void conn_close(http_conn_t *conn);
static void conn_process(http_conn_t *conn);
static void conn_arm_timer(http_conn_t *conn, uint64_t timeout_ms);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static int tls_flush(http_conn_t *conn);
static void tls_send_close_notify(http_conn_t *conn, bool queued);

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

static void on_write_done(uv_write_t *wreq, int status);

/* Put `data` (am_malloc'd; ownership passes, freed on every path) on the
 * socket behind earlier writes.  0, or <0 when it could not be queued (the
 * caller closes the connection). */
static int conn_queue_write(http_conn_t *conn, char *data, size_t len, http_write_kind_t kind,
                            bool close_after)
{
    http_write_t *write = am_calloc(1, sizeof(*write));
    if (write == NULL || len > UINT32_MAX) {
        am_free(write);
        am_free(data);
        return AM_ENOMEM;
    }
    write->conn = conn;
    write->data = data;
    write->len = len;
    write->kind = kind;
    write->close_after = close_after;
    uv_buf_t buf = uv_buf_init(data, (unsigned)len);
    if (uv_write(&write->req, (uv_stream_t *)&conn->tcp, &buf, 1, on_write_done) != 0) {
        am_free(data);
        am_free(write);
        return AM_EIO;
    }
    if (kind == WRITE_TLS) {
        conn->tls_unsent += len;
    }
    return 0;
}

/* ---- TLS over memory BIOs ------------------------------------------ */

static void tls_error_text(char *out, size_t out_size)
{
    unsigned long code = ERR_get_error();
    snprintf(out, out_size, "unknown error");
    if (code != 0) {
        ERR_error_string_n(code, out, out_size);
    }
    ERR_clear_error();
}

static int tls_conn_init(http_conn_t *conn, SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    if (ssl == NULL || rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        SSL_free(ssl);
        ERR_clear_error();
        return AM_ENOMEM;
    }
    /* An empty read BIO means "retry when more arrives", not EOF. */
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(ssl, rbio, wbio); /* the SSL owns both BIOs now */
    SSL_set_accept_state(ssl);
    conn->ssl = ssl;
    return 0;
}

/* Plaintext in, ciphertext into the write BIO (never blocks). */
static int tls_encrypt(http_conn_t *conn, const char *data, size_t len)
{
    while (len > 0) {
        int rc = SSL_write(conn->ssl, data, (int)AM_MIN(len, (size_t)INT32_MAX));
        if (rc <= 0) {
            char why[256];
            tls_error_text(why, sizeof(why));
            AM_DEBUG("http", "%s: TLS write failed: %s", conn->server->endpoint, why);
            return AM_EIO;
        }
        data += rc;
        len -= (size_t)rc;
    }
    return 0;
}

/* Move every byte SSL produced into one write.  A response's write carries
 * the response's completion (next request, or linger); anything else is
 * WRITE_TLS.  0 or <0 (the caller closes). */
static int tls_flush_as(http_conn_t *conn, http_write_kind_t kind, bool close_after)
{
    BIO *wbio = SSL_get_wbio(conn->ssl);
    size_t pending = BIO_ctrl_pending(wbio);
    if (pending == 0) {
        return kind == WRITE_RESPONSE ? AM_EIO : 0;
    }
    if (pending > INT32_MAX) {
        return AM_ERANGE;
    }
    /* Records no request asked for (tickets, key updates, alerts) are
     * small; a client that makes SSL produce them and never reads is cut
     * off rather than buffered for.  (Responses need no such bound: the
     * next request is read only after the last response was written.) */
    if (kind == WRITE_TLS && conn->tls_unsent + pending > TLS_BACKLOG_MAX) {
        AM_DEBUG("http", "%s: client does not read its TLS records; closing",
                 conn->server->endpoint);
        return AM_ERANGE;
    }
    char *data = am_malloc(pending);
    if (data == NULL) {
        return AM_ENOMEM;
    }
    int got = BIO_read(wbio, data, (int)pending);
    if (got <= 0) {
        am_free(data);
        return AM_EIO;
    }
    return conn_queue_write(conn, data, (size_t)got, kind, close_after);
}

static int tls_flush(http_conn_t *conn)
{
    return tls_flush_as(conn, WRITE_TLS, false);
}

/* Our close_notify: `queued` behind earlier writes (a graceful close,
 * before uv_shutdown), or else tried once without waiting (a close that
 * does not wait for the socket).  Never twice, never after a failed
 * handshake (the alert said it all). */
static void tls_send_close_notify(http_conn_t *conn, bool queued)
{
    if (conn->ssl == NULL || !conn->tls_handshake_done || conn->tls_close_sent) {
        return;
    }
    conn->tls_close_sent = true;
    SSL_shutdown(conn->ssl); /* 0: ours is in the write BIO */
    ERR_clear_error();
    if (queued) {
        if (tls_flush(conn) != 0) {
            conn_close(conn);
        }
        return;
    }
    char record[256];
    int len = BIO_read(SSL_get_wbio(conn->ssl), record, sizeof(record));
    if (len > 0) {
        uv_buf_t buf = uv_buf_init(record, (unsigned)len);
        uv_try_write((uv_stream_t *)&conn->tcp, &buf, 1);
    }
}

/* Decrypt what SSL holds into inbuf until it has nothing more or
 * TLS_PLAIN_AHEAD bytes wait for the parser (*more: stopped at that bound,
 * SSL may hold more).  0, or <0 on a fatal TLS error.  A close_notify from
 * the client sets tls_peer_closed. */
static int tls_pull(http_conn_t *conn, bool *more)
{
    *more = false;
    if (conn->tls_peer_closed) {
        return 0;
    }
    if (conn->in_parsed > 0) {
        /* The parser copies what it keeps; unparsed bytes move to the front. */
        memmove(conn->inbuf, conn->inbuf + conn->in_parsed, conn->in_len - conn->in_parsed);
        conn->in_len -= conn->in_parsed;
        conn->in_parsed = 0;
    }
    while (conn->in_len < TLS_PLAIN_AHEAD) {
        if (conn->in_cap - conn->in_len < TLS_PLAIN_CHUNK) {
            size_t cap = conn->in_cap == 0 ? 65536 : conn->in_cap * 2;
            char *grown = am_realloc(conn->inbuf, cap);
            if (grown == NULL) {
                AM_WARN("http", "out of memory reading request");
                return AM_ENOMEM;
            }
            conn->inbuf = grown;
            conn->in_cap = cap;
        }
        size_t room = AM_MIN(conn->in_cap - conn->in_len, (size_t)INT32_MAX);
        int got = SSL_read(conn->ssl, conn->inbuf + conn->in_len, (int)room);
        if (got > 0) {
            conn->in_len += (size_t)got;
            continue;
        }
        int reason = SSL_get_error(conn->ssl, got);
        if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE) {
            return 0;
        }
        if (reason == SSL_ERROR_ZERO_RETURN) {
            conn->tls_peer_closed = true;
            return 0;
        }
        char why[256];
        tls_error_text(why, sizeof(why));
        AM_DEBUG("http", "%s: TLS read failed: %s", conn->server->endpoint, why);
        return AM_EIO;
    }
    *more = true;
    return 0;
}

/* Lingering close (as nginx does): after answering an error while the
 * client may still be sending its body, half-close our side and discard
 * input for a moment, so the client reads our answer instead of a reset.
 * Over TLS, close_notify goes out first (uv_shutdown waits for it). */
static void conn_linger(http_conn_t *conn)
{
    conn->lingering = true;
    conn->in_len = 0;
    conn->in_parsed = 0;
    if (conn->ssl != NULL) {
        tls_send_close_notify(conn, true);
        if (conn->closing) {
            return;
        }
    }
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
    http_write_kind_t kind = write->kind;
    bool close_after = write->close_after;
    if (kind == WRITE_TLS) {
        conn->tls_unsent -= write->len;
    }
    am_free(write->data);
    am_free(write);
    if (conn->closing) {
        return;
    }
    if (status < 0) {
        conn_close(conn);
        return;
    }
    if (kind == WRITE_TLS) {
        return;
    }
    if (close_after) {
        conn_linger(conn);
        return;
    }
    /* Ready for the next request on this connection. */
    conn_process(conn);
    if (!conn->closing && conn->ssl != NULL && tls_flush(conn) != 0) {
        conn_close(conn);
    }
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
    size_t total = (size_t)head_len + extra_len + body_len;
    char *data = am_malloc(total);
    if (data == NULL) {
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
    int rc;
    if (conn->ssl != NULL) {
        rc = tls_encrypt(conn, data, total);
        am_free(data);
        if (rc == 0) {
            rc = tls_flush_as(conn, WRITE_RESPONSE, close_after);
        }
    } else {
        rc = conn_queue_write(conn, data, total, WRITE_RESPONSE, close_after);
    }
    if (rc != 0) {
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
    AM_UNUSED(suggested);
    if (conn->ssl != NULL) {
        /* Ciphertext goes straight into the read BIO within on_read. */
        buf->base = conn->server->tls_in;
        buf->len = TLS_READ_BUF;
        return;
    }
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

/* Run the parser over unparsed input (over TLS: first decrypt what SSL
 * holds, a bounded amount at a time); dispatch a complete request. */
static void conn_process(http_conn_t *conn)
{
    bool more_plain;
    do {
        if (conn->closing || conn->in_handler) {
            return;
        }
        more_plain = false;
        if (conn->ssl != NULL && conn->tls_handshake_done && tls_pull(conn, &more_plain) != 0) {
            conn_close(conn);
            return;
        }
        if (HTTP_PARSER_ERRNO(&conn->parser) == HPE_PAUSED) {
            http_parser_pause(&conn->parser, 0);
        }
        size_t avail = conn->in_len - conn->in_parsed;
        if (avail > 0) { /* zero bytes would tell http-parser "EOF" */
            size_t parsed = http_parser_execute(&conn->parser, &parser_settings,
                                                conn->inbuf + conn->in_parsed, avail);
            conn->in_parsed += parsed;
        }
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
    } while (more_plain);
    if (conn->tls_peer_closed) {
        /* The client said it sends nothing more: answer in kind and go. */
        tls_send_close_notify(conn, false);
        conn_close(conn);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&conn->tcp)) {
        uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    }
    if (conn->req == NULL || conn->req->method != NULL) {
        /* Between requests (idle), or inside a body: the idle timeout runs
         * from the last bytes read, so a client that stalls mid-body does
         * not hold its slot and its buffered body forever.  Inside a request
         * head the header timeout (armed by on_message_begin) runs. */
        conn_arm_timer(conn, conn->server->opts.idle_timeout_ms);
    }
}

static void on_timeout(uv_timer_t *timer)
{
    http_conn_t *conn = timer->data;
    if (conn->in_handler && !conn->lingering) {
        return; /* the handler owns the request; it will answer */
    }
    const char *what = conn->lingering                                  ? "linger"
                       : conn->ssl != NULL && !conn->tls_handshake_done ? "TLS handshake"
                       : conn->req != NULL                                ? "header"
                                                                          : "idle";
    AM_DEBUG("http", "closing connection: %s timeout", what);
    tls_send_close_notify(conn, false);
    conn_close(conn);
}

static void conn_arm_timer(http_conn_t *conn, uint64_t timeout_ms)
{
    if (timeout_ms > 0) {
        uv_timer_start(&conn->timer, on_timeout, timeout_ms, 0);
    }
}

/* A client speaking plain HTTP to the TLS port: say so in plain HTTP
 * rather than leave it with a reset (its first byte starts a method name;
 * a TLS record starts with a content type, 20..24). */
static void tls_refuse_plaintext(http_conn_t *conn)
{
    static const char body[] = "Client sent an HTTP request to an HTTPS server.\n";
    AM_DEBUG("http", "%s: plain HTTP on the TLS port, answering 400", conn->server->endpoint);
    SSL_free(conn->ssl);
    conn->ssl = NULL;
    uv_read_stop((uv_stream_t *)&conn->tcp);
    uv_timer_stop(&conn->timer);
    conn_write_response(conn, 400, "text/plain", NULL, body, sizeof(body) - 1, true);
}

static void tls_handshake_failed(http_conn_t *conn)
{
    char why[256];
    tls_error_text(why, sizeof(why));
    AM_DEBUG("http", "%s: TLS handshake failed: %s", conn->server->endpoint, why);
    conn->tls_close_sent = true; /* the alert closes the session */
    uv_read_stop((uv_stream_t *)&conn->tcp);
    if (tls_flush(conn) != 0) { /* the alert, if OpenSSL made one */
        conn_close(conn);
        return;
    }
    conn_linger(conn);
}

static void tls_on_read(http_conn_t *conn, const char *data, size_t len)
{
    if (!conn->tls_first_read) {
        conn->tls_first_read = true;
        if (data[0] >= 'A' && data[0] <= 'Z') {
            tls_refuse_plaintext(conn);
            return;
        }
    }
    if (BIO_write(SSL_get_rbio(conn->ssl), data, (int)len) != (int)len) {
        ERR_clear_error();
        conn_close(conn);
        return;
    }
    if (!conn->tls_handshake_done) {
        int rc = SSL_do_handshake(conn->ssl);
        if (rc != 1) {
            int reason = SSL_get_error(conn->ssl, rc);
            if (reason != SSL_ERROR_WANT_READ && reason != SSL_ERROR_WANT_WRITE) {
                tls_handshake_failed(conn);
                return;
            }
            if (tls_flush(conn) != 0) {
                conn_close(conn);
            }
            return;
        }
        conn->tls_handshake_done = true;
        uv_timer_stop(&conn->timer); /* conn_process arms the idle timer */
    }
    conn_process(conn);
    /* Records SSL made while reading (the handshake's last flight, session
     * tickets) and no response carried out. */
    if (!conn->closing && conn->ssl != NULL && tls_flush(conn) != 0) {
        conn_close(conn);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    http_conn_t *conn = stream->data;
    if (nread < 0 || buf->base == NULL) {
        if (nread != UV_EOF && buf->base == NULL) {
            AM_WARN("http", "out of memory reading request");
        }
        conn_close(conn);
        return;
    }
    if (conn->lingering || nread == 0) {
        return; /* lingering: discard, in_len stays 0; 0: EAGAIN */
    }
    if (conn->ssl != NULL) {
        tls_on_read(conn, buf->base, (size_t)nread);
        return;
    }
    conn->in_len += (size_t)nread;
    conn_process(conn);
}

static void server_free(am_http_server_t *server)
{
    am_free(server->tls_in);
    am_free(server->endpoint);
    am_free(server);
}

static void on_handle_closed(uv_handle_t *handle)
{
    http_conn_t *conn = handle->data;
    if (--conn->handles_open > 0) {
        return;
    }
    am_http_server_t *server = conn->server;
    request_free(conn->req);
    if (conn->ssl != NULL) {
        SSL_free(conn->ssl);
    }
    am_free(conn->inbuf);
    am_free(conn);
    server->n_conns--;
    if (server->closing && server->n_conns == 0 && server->listener.data == NULL) {
        server_free(server);
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
    if (server->opts.ssl_ctx != NULL) {
        if (tls_conn_init(conn, server->opts.ssl_ctx) != 0) {
            conn_close(conn);
            return;
        }
        /* The handshake is part of the request head: same deadline. */
        conn_arm_timer(conn, server->opts.header_timeout_ms);
    } else {
        conn_arm_timer(conn, server->opts.idle_timeout_ms);
    }
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
    if (opts->ssl_ctx != NULL) {
        server->tls_in = am_malloc(TLS_READ_BUF);
        if (server->tls_in == NULL) {
            am_free(server->endpoint);
            am_free(server);
            return AM_ENOMEM;
        }
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

int am_http_server_set_ssl_ctx(am_http_server_t *server, SSL_CTX *ssl_ctx)
{
    if ((server->opts.ssl_ctx == NULL) != (ssl_ctx == NULL)) {
        return AM_EINVAL;
    }
    server->opts.ssl_ctx = ssl_ctx;
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
        server_free(server);
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
            tls_send_close_notify(conn, false);
            conn_close(conn);
        }
        conn = next;
    }
}
