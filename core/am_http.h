/*
 * am_http.h - a small HTTP/1.1 server on libuv, parsing with http-parser
 * (Debian libhttp-parser-dev) rather than by hand.
 *
 * Used by self-telemetry (/metrics, /healthz, /readyz, /v1/budgets), the
 * `prometheus` exporter and the OTLP/HTTP receiver.  Each request is read
 * whole (headers + body, both bounded) and handed to the handler on the loop
 * thread.  The handler answers synchronously with am_http_respond(), or keeps
 * the request (returns without responding) and answers later from the same
 * loop thread; the request stays valid until it is answered or the
 * connection dies (then `on_abort`, if set, is called and the handler must
 * forget it).  Keep-alive is supported; requests on one connection are
 * answered in order (the next is not read until the previous is answered).
 *
 * TLS is optional and per server: give an SSL_CTX in the options and every
 * connection runs through its own SSL object over memory BIOs (libuv keeps
 * the socket).  The handler sees the same decrypted requests either way.
 */
#ifndef AM_HTTP_H
#define AM_HTTP_H

#include <openssl/ssl.h>
#include <uv.h>

#include "am_common.h"

#define AM_HTTP_MAX_HEADERS 64

typedef struct am_http_header {
    char *name;  /* lower-cased */
    char *value;
} am_http_header_t;

typedef struct am_http_request am_http_request_t;
struct am_http_request {
    const char *method; /* "GET", "POST", ... */
    char *url;          /* path + query as received */
    char *path;         /* path only, no query */
    am_http_header_t headers[AM_HTTP_MAX_HEADERS];
    size_t n_headers;
    char *body;
    size_t body_len;
    void *user_data;    /* the server's user_data */
    void (*on_abort)(am_http_request_t *req); /* set by a handler that defers */
    void *handler_data;                       /* for the handler's use */
    void *conn_;        /* internal */
};

typedef void (*am_http_handler_fn)(am_http_request_t *req);

typedef struct am_http_server_opts {
    const char *endpoint;       /* "host:port" */
    size_t max_body_bytes;      /* bodies above this get 413 (default 16 MiB) */
    size_t max_header_bytes;    /* default 64 KiB: 431 above */
    uint64_t header_timeout_ms; /* default 10 s: slow clients are closed */
    uint64_t idle_timeout_ms;   /* default 60 s */
    size_t max_connections;     /* default 1024: further accepts are closed */
    am_http_handler_fn handler;
    void *user_data;
    /* NULL: plaintext HTTP.  Otherwise HTTPS: each connection gets an SSL
     * from this context; certificate, key, client verification, minimum
     * version and ALPN are all the context's settings.  The caller owns
     * the context: the server never frees it, and the caller keeps it
     * alive until am_http_server_close() returned or
     * am_http_server_set_ssl_ctx() replaced it.  Open connections hold
     * their own reference (SSL_new), so freeing it then is safe. */
    SSL_CTX *ssl_ctx;
} am_http_server_opts_t;

typedef struct am_http_server am_http_server_t;

/* Bind and listen on loop; errors are negative AM_E* with a log line naming
 * the endpoint.  The server must be closed with am_http_server_close() on the
 * loop thread; it frees itself once all handles are closed. */
int am_http_server_start(uv_loop_t *loop, const am_http_server_opts_t *opts,
                         am_http_server_t **out);
void am_http_server_close(am_http_server_t *server);
/* New connections use `ssl_ctx` from now on (certificate reload on
 * SIGHUP); open ones keep theirs.  Ownership as for opts.ssl_ctx: the old
 * context may be freed by the caller once this returns.  A server is TLS or
 * plaintext for its whole life: switching between NULL and a context is
 * refused with AM_EINVAL.  Loop thread only. */
int am_http_server_set_ssl_ctx(am_http_server_t *server, SSL_CTX *ssl_ctx);
/* The bound port (useful with port 0 in tests). */
int am_http_server_port(const am_http_server_t *server);

const char *am_http_header_get(const am_http_request_t *req, const char *lower_name);
/* Answer a request.  extra_headers: "Name: value\r\n..." or NULL.  The body is
 * copied.  After this call `req` is invalid. */
void am_http_respond(am_http_request_t *req, int status, const char *content_type,
                     const char *extra_headers, const void *body, size_t body_len);

/* Split "host:port" (IPv6 as "[::1]:4317"); host "" or "0.0.0.0" allowed. */
int am_parse_endpoint(const char *endpoint, char *host, size_t host_size, int *port);

#endif
