/*
 * otlp_internal.h - what the files of the `otlp` receiver share, and the
 * parse entry points that unit tests and fuzz targets drive directly.
 *
 * The folder is split by job:
 *   otlp.c         ops struct, option table, validation, life cycle, and the
 *                  transport-independent "export one request" step;
 *   otlp_decode.c  decompression (bounded), the protobuf pre-scan, unpacking
 *                  into an arena, span validation (partial success), limits
 *                  for already-decoded requests (JSON);
 *   otlp_grpc.c    the gRPC server: libuv TCP + an nghttp2 server session;
 *   otlp_frame.c   the 5-byte gRPC message framing, as a pure state machine;
 *   otlp_tls.c     OpenSSL contexts and memory-BIO connections;
 *   otlp_http.c    OTLP/HTTP on core's am_http server.
 *
 * Nothing here is exported from the receiver except through
 * am_receiver_otlp_ops; cross-file names carry the `am__otlp_` prefix.
 */
#ifndef AM_OTLP_INTERNAL_H
#define AM_OTLP_INTERNAL_H

#include <openssl/ssl.h>
#include <uv.h>

#include "am_arena.h"
#include "am_component.h"
#include "am_otlp.h"
#include "am_selfmetrics.h"

/* ---- configuration (the option table lives in otlp.c) ----------------- */

typedef struct am__otlp_tls_cfg {
    bool set;
    char *cert_file;
    char *key_file;
    char *client_ca_file; /* set: clients must present a certificate (mTLS) */
    char *min_version;    /* "1.2" | "1.3" */
} am__otlp_tls_cfg_t;

typedef struct am__otlp_auth_cfg {
    bool set;
    char *bearer_token;
} am__otlp_auth_cfg_t;

typedef struct am__otlp_keepalive_cfg {
    bool set;
    int64_t time_ms;    /* ping after this long without reading anything; 0 = off */
    int64_t timeout_ms; /* close when the ping is not answered within this */
} am__otlp_keepalive_cfg_t;

typedef struct am__otlp_grpc_cfg {
    bool set;
    char *endpoint;
    int64_t max_recv_msg_size; /* bytes, after decompression */
    int64_t max_concurrent_streams;
    int64_t max_connections;
    int64_t header_timeout_ms;
    am__otlp_keepalive_cfg_t keepalive;
    int64_t keepalive_time_ms;    /* flat spelling; 0 = not given */
    int64_t keepalive_timeout_ms; /* flat spelling; 0 = not given */
    int64_t max_connection_idle_ms;
    int64_t max_connection_age_ms;
    am__otlp_tls_cfg_t tls;
    am__otlp_auth_cfg_t auth;
} am__otlp_grpc_cfg_t;

typedef struct am__otlp_http_cfg {
    bool set;
    char *endpoint;
    int64_t max_request_body_size; /* bytes, before and after decompression */
    am__otlp_tls_cfg_t tls;
    am__otlp_auth_cfg_t auth;
} am__otlp_http_cfg_t;

typedef struct am__otlp_protocols_cfg {
    bool set;
    am__otlp_grpc_cfg_t grpc;
    am__otlp_http_cfg_t http;
} am__otlp_protocols_cfg_t;

typedef struct am__otlp_config {
    am__otlp_protocols_cfg_t protocols;
    int64_t max_attribute_depth;
    int64_t max_spans_per_request;
    int64_t max_attributes_per_span;
} am__otlp_config_t;

extern const am_option_t am__otlp_grpc_options[];
extern const am_option_t am__otlp_http_options[];

/* ---- status codes ---------------------------------------------------- */

/* gRPC status codes (grpc/doc/statuscodes.md) used by this receiver. */
enum {
    AM__GRPC_OK = 0,
    AM__GRPC_CANCELLED = 1,
    AM__GRPC_UNKNOWN = 2,
    AM__GRPC_INVALID_ARGUMENT = 3,
    AM__GRPC_RESOURCE_EXHAUSTED = 8,
    AM__GRPC_UNIMPLEMENTED = 12,
    AM__GRPC_INTERNAL = 13,
    AM__GRPC_UNAVAILABLE = 14,
    AM__GRPC_UNAUTHENTICATED = 16,
};

/* Pipeline status -> gRPC code: OK -> OK, RETRY -> UNAVAILABLE (the OTLP
 * spec's retryable code), PERMANENT -> INVALID_ARGUMENT. */
int am__otlp_status_to_grpc(am_status_t status);
/* gRPC code -> OTLP/HTTP status: OK 200, INVALID_ARGUMENT/INTERNAL 400,
 * UNAUTHENTICATED 401, RESOURCE_EXHAUSTED 413 (a size limit),
 * UNIMPLEMENTED 415 (an encoding we do not speak), UNAVAILABLE 503. */
int am__otlp_grpc_to_http(int grpc_code);
const char *am__otlp_grpc_code_name(int grpc_code);

/* ---- limits and decoding (otlp_decode.c) ----------------------------- */

typedef struct am__otlp_limits {
    size_t max_msg_bytes;      /* decoded (decompressed) request size */
    uint32_t max_depth;        /* AnyValue nesting (an attribute value is depth 1) */
    uint64_t max_spans;        /* spans per request */
    uint64_t max_list_entries; /* attributes per span (and per event, link,
                                * resource, scope, kvlist), array elements,
                                * events and links per span */
} am__otlp_limits_t;

/* Decoded size may be at most this many times the wire size (plus 1 MiB):
 * protobuf-c allocates a struct for every nested message, so a request of
 * empty sub-messages could otherwise expand ~100x in memory. */
#define AM__OTLP_MAX_EXPANSION 32

typedef enum am__otlp_encoding {
    AM__OTLP_ENC_IDENTITY = 0,
    AM__OTLP_ENC_GZIP,
    AM__OTLP_ENC_DEFLATE,
    AM__OTLP_ENC_ZSTD,
    AM__OTLP_ENC_UNKNOWN,
} am__otlp_encoding_t;

/* "identity", "gzip", "deflate", "zstd" (case-insensitive, surrounding
 * blanks ignored); NULL or "" is identity.  Anything else is UNKNOWN. */
am__otlp_encoding_t am__otlp_encoding_parse(const char *name);
#define AM__OTLP_ACCEPT_ENCODING "identity,gzip,deflate,zstd"

/* Decompress `in` into a malloc'd buffer of at most `limit` bytes, never
 * producing more than limit + 1 bytes however the input is crafted.
 * Returns 0 (*out owned by the caller, am_free), AM__GRPC_RESOURCE_EXHAUSTED
 * when the output exceeds `limit`, AM__GRPC_INTERNAL for corrupt input,
 * AM__GRPC_UNAVAILABLE on ENOMEM; err gets a message for non-zero. */
int am__otlp_decompress(am__otlp_encoding_t encoding, const uint8_t *in, size_t in_len,
                        size_t limit, uint8_t **out, size_t *out_len, char *err, size_t err_size);

/* Walk the protobuf wire bytes of an ExportTraceServiceRequest without
 * allocating: validates the wire format and bounds nesting depth, span
 * count, list lengths and the decoded size.  Returns 0 or
 * AM__GRPC_INVALID_ARGUMENT with a precise message in err. */
int am__otlp_prescan(const uint8_t *buf, size_t len, const am__otlp_limits_t *limits, char *err,
                     size_t err_size);

/* Pre-scan, then unpack into `arena` (the request's memory).  Returns 0 with
 * *out valid while the arena lives, AM__GRPC_INVALID_ARGUMENT (err says why)
 * or AM__GRPC_UNAVAILABLE on ENOMEM. */
int am__otlp_decode_proto(am_arena_t *arena, const uint8_t *buf, size_t len,
                          const am__otlp_limits_t *limits, am_pb_export_req_t **out, char *err,
                          size_t err_size);

/* The same limits checked on an already decoded request (the JSON path,
 * where no wire bytes exist).  0 or AM__GRPC_INVALID_ARGUMENT. */
int am__otlp_check_limits(const am_pb_export_req_t *req, const am__otlp_limits_t *limits, char *err,
                          size_t err_size);

/* JSON has no cheap wire walk, and json-c's DOM costs ~780 bytes per
 * object or array (core/am_otlp_json.h): a body of "{}," would briefly need
 * ~260x its size.  Real OTLP JSON spends >= 18 bytes per container, so at
 * most one container per this many bytes (plus 4096) is allowed, which caps
 * the DOM at ~80x the body.  0 or AM__GRPC_INVALID_ARGUMENT. */
#define AM__OTLP_JSON_MIN_BYTES_PER_CONTAINER 10
int am__otlp_json_prescan(const uint8_t *buf, size_t len, char *err, size_t err_size);

/* Remove spans whose trace_id is not 16 bytes or span_id not 8 bytes, in
 * place (arrays compacted; memory stays in the arena).  Returns how many
 * were removed and describes the first one in msg. */
size_t am__otlp_drop_invalid_spans(am_pb_export_req_t *req, char *msg, size_t msg_size);

/* ---- gRPC message framing (otlp_frame.c) ----------------------------- */

/* One unary request body: a 5-byte prefix (compressed flag, 4-byte
 * big-endian length) then exactly one message.  The length is checked
 * against max_len before a byte of the message is buffered, and the buffer
 * grows with what actually arrives (never to the declared size up front).
 * When `budget_used` is set, buffered bytes are also charged to that shared
 * counter, which may not exceed budget_max (UNAVAILABLE otherwise). */
typedef struct am__otlp_frame {
    size_t max_len;
    size_t *budget_used;
    size_t budget_max;
    uint8_t prefix[5];
    size_t prefix_len;
    bool compressed;
    uint32_t msg_len;
    uint8_t *msg; /* am_malloc'd */
    size_t msg_have, msg_cap;
    unsigned n_messages; /* complete messages seen */
    size_t charged;      /* bytes charged to *budget_used */
} am__otlp_frame_t;

void am__otlp_frame_init(am__otlp_frame_t *frame, size_t max_len);
/* Feed body bytes.  0, or a gRPC code with err: RESOURCE_EXHAUSTED (length
 * over max_len), INTERNAL (a second message in a unary call), UNAVAILABLE
 * (budget or ENOMEM). */
int am__otlp_frame_feed(am__otlp_frame_t *frame, const uint8_t *data, size_t len, char *err,
                        size_t err_size);
/* End of stream: 0 when exactly one complete message was read, else
 * INTERNAL ("truncated"). */
int am__otlp_frame_finish(am__otlp_frame_t *frame, char *err, size_t err_size);
void am__otlp_frame_free(am__otlp_frame_t *frame);
/* The message of a finished frame as plain bytes: itself when not
 * compressed, else decompressed with `encoding` and bounded by max_len
 * (*owned is then the am_malloc'd buffer to free).  A compressed flag with
 * identity encoding is INTERNAL (gRPC spec); other codes as
 * am__otlp_decompress. */
int am__otlp_frame_unwrap(const am__otlp_frame_t *frame, am__otlp_encoding_t encoding,
                          const uint8_t **out, size_t *out_len, uint8_t **owned, char *err,
                          size_t err_size);

/* Percent-encode a grpc-message value (gRPC HTTP/2 spec) into out. */
void am__otlp_grpc_message_encode(const char *msg, char *out, size_t out_size);

/* ---- the receiver ---------------------------------------------------- */

enum { AM__OTLP_GRPC = 0, AM__OTLP_HTTP = 1, AM__OTLP_N_TRANSPORTS = 2 };

typedef struct am__otlp_grpc_server am__otlp_grpc_server_t;

typedef struct am__otlp_receiver {
    char *id;
    uv_loop_t *loop;
    am_consumer_t *next;
    /* Effective protocol settings, NULL when the protocol is off.  They
     * point at the receiver's own deep copies (grpc_cfg/http_cfg, strings
     * am_malloc'd), not into the service config: after shutdown, draining
     * connections may outlive the config (SIGHUP frees the old one). */
    const am__otlp_grpc_cfg_t *grpc;
    const am__otlp_http_cfg_t *http;
    am__otlp_grpc_cfg_t grpc_cfg;
    am__otlp_http_cfg_t http_cfg;
    am__otlp_limits_t limits;
    am__otlp_grpc_server_t *grpc_server;
    struct am_http_server *http_server;
    SSL_CTX *grpc_tls; /* current contexts (NULL: cleartext); replaced by */
    SSL_CTX *http_tls; /* reload, freed with the receiver */
    bool started;
    bool shutting_down;
    bool destroy_pending;
    unsigned closes_pending; /* servers still closing their handles */
    am_counter_t *accepted[AM__OTLP_N_TRANSPORTS];
    am_counter_t *refused[AM__OTLP_N_TRANSPORTS];
    am_counter_t *requests[AM__OTLP_N_TRANSPORTS][17]; /* by gRPC code */
} am__otlp_receiver_t;

typedef enum am__otlp_format {
    AM__OTLP_PROTOBUF = 0,
    AM__OTLP_JSON = 1,
} am__otlp_format_t;

/* What a request gets back, independent of the transport. */
typedef struct am__otlp_reply {
    int grpc_code;
    char message[512];      /* error text (non-OK) */
    int64_t rejected_spans; /* partial success (OK with rejected spans) */
    char partial_message[512];
} am__otlp_reply_t;

/* Decode a (decompressed) request body, drop invalid spans, push the batch
 * to the pipeline, count it, and fill `reply`.  Runs on the receiver loop;
 * returns after the pipeline's consume returned.  `body` is only read. */
void am__otlp_export(am__otlp_receiver_t *rcv, int transport, am__otlp_format_t format,
                     const uint8_t *body, size_t len, am__otlp_reply_t *reply);
/* Count a request answered before export (auth, framing, size...). */
void am__otlp_count_request(am__otlp_receiver_t *rcv, int transport, int grpc_code);

/* Constant-time check of an `authorization` header against the configured
 * bearer token.  true when auth is not configured. */
bool am__otlp_auth_ok(const am__otlp_auth_cfg_t *auth, const char *header, size_t header_len);

/* A server finished closing every handle (called by otlp_grpc.c/otlp_http.c
 * close callbacks). */
void am__otlp_server_closed(am__otlp_receiver_t *rcv);

/* ---- gRPC server (otlp_grpc.c) --------------------------------------- */

int am__otlp_grpc_start(am__otlp_receiver_t *rcv, am__otlp_grpc_server_t **out);
/* Stop listening, GOAWAY every session, answer unfinished streams with
 * UNAVAILABLE, close connections once their output is flushed (or after a
 * grace period).  am__otlp_server_closed() runs when everything is closed. */
void am__otlp_grpc_close(am__otlp_grpc_server_t *server);
int am__otlp_grpc_port(const am__otlp_grpc_server_t *server);
size_t am__otlp_grpc_connection_count(const am__otlp_grpc_server_t *server);
/* Request bytes all streams buffer right now (tests: RST_STREAM frees). */
size_t am__otlp_grpc_buffered_bytes(const am__otlp_grpc_server_t *server);

/* ---- OTLP/HTTP (otlp_http.c) ----------------------------------------- */

/* Serve on rcv->http's endpoint, over TLS with rcv->http_tls when set. */
int am__otlp_http_start(am__otlp_receiver_t *rcv);
/* Hand a reloaded context to the running server (new connections). */
void am__otlp_http_set_tls(am__otlp_receiver_t *rcv, SSL_CTX *ctx);
void am__otlp_http_close(am__otlp_receiver_t *rcv);

/* ---- TLS (otlp_tls.c) ------------------------------------------------ */

/* A server SSL_CTX from cfg: certificate chain + key, optional client CA
 * (mTLS, verification required), minimum version, and ALPN selecting only
 * `alpn` (AM__OTLP_ALPN_H2 or AM__OTLP_ALPN_HTTP1; the string must outlive
 * the context).  Returns NULL with err filled on failure.  Free with
 * SSL_CTX_free. */
#define AM__OTLP_ALPN_H2 "h2"
#define AM__OTLP_ALPN_HTTP1 "http/1.1"
SSL_CTX *am__otlp_tls_ctx_new(const am__otlp_tls_cfg_t *cfg, const char *alpn, char *err,
                              size_t err_size);

/* One TLS connection over memory BIOs: ciphertext read from the socket is
 * fed in, plaintext comes out of read; plaintext written goes out as
 * ciphertext through take_output. */
typedef struct am__otlp_tls_conn {
    SSL *ssl;
    BIO *rbio; /* network -> SSL */
    BIO *wbio; /* SSL -> network */
    bool handshake_done;
} am__otlp_tls_conn_t;

int am__otlp_tls_conn_init(am__otlp_tls_conn_t *tls, SSL_CTX *ctx);
void am__otlp_tls_conn_free(am__otlp_tls_conn_t *tls);
/* Give ciphertext to SSL.  0 or AM_ENOMEM. */
int am__otlp_tls_feed(am__otlp_tls_conn_t *tls, const uint8_t *data, size_t len);
/* Advance the handshake: 1 done, 0 needs more input, <0 failed (err). */
int am__otlp_tls_handshake(am__otlp_tls_conn_t *tls, char *err, size_t err_size);
/* Plaintext out: >0 bytes, 0 needs more input, <0 closed or failed. */
int am__otlp_tls_read(am__otlp_tls_conn_t *tls, uint8_t *buf, size_t size);
/* Plaintext in (memory BIOs never block).  0 or <0. */
int am__otlp_tls_write(am__otlp_tls_conn_t *tls, const uint8_t *data, size_t len);
/* Ciphertext waiting to go to the socket. */
size_t am__otlp_tls_pending(am__otlp_tls_conn_t *tls);
/* Move up to size bytes of pending ciphertext into buf. */
size_t am__otlp_tls_take_output(am__otlp_tls_conn_t *tls, uint8_t *buf, size_t size);

#endif
