/*
 * loadgen.h - what the files of the load generator share.
 *
 * The load generator is split by job:
 *   loadgen_traffic.c  agent-shaped traffic: sessions of traces, each trace a
 *                      tree of invoke_agent / chat / embeddings / execute_tool
 *                      spans in one of three attribute conventions, packed
 *                      into encoded ExportTraceServiceRequests; the expected
 *                      cost of every request per session, priced here from
 *                      prices copied out of the built-in rate card;
 *   loadgen_grpc.c     OTLP/gRPC client: nghttp2 (h2c, prior knowledge) on
 *                      libuv, several concurrent unary Export streams per
 *                      connection;
 *   loadgen_http.c     OTLP/HTTP client: POST /v1/traces over HTTP/1.1
 *                      keep-alive on libuv, one request at a time per
 *                      connection, responses parsed with http_parser;
 *   loadgen.c          options, the request pool, the scheduler both clients
 *                      pull from, latency histogram, the report.
 *
 * pb_limit (tests/bench) links loadgen_traffic.c to decode and re-encode the
 * very same requests.
 *
 * Everything runs on one libuv loop on one thread; nothing here locks.
 * Cross-file names carry the `lg_` prefix.
 */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* ---- traffic (loadgen_traffic.c) ------------------------------------ */

typedef enum lg_compression {
    LG_COMPRESS_NONE = 0,
    LG_COMPRESS_GZIP,
    LG_COMPRESS_ZSTD,
} lg_compression_t;

/* Token kinds, in the order of ARCHITECTURE.md §5. */
enum { LG_TOK_INPUT, LG_TOK_OUTPUT, LG_TOK_CACHE_READ, LG_TOK_CACHE_WRITE, LG_TOK_REASONING };
#define LG_N_TOKEN_KINDS 5

/* What one request adds to one session when it is accepted. */
typedef struct lg_contrib {
    uint32_t session;   /* session index */
    uint32_t spans;     /* spans of that session in the request */
    uint32_t traces;    /* traces of that session whose root is in the request */
    uint32_t tool_fees; /* execute_tool spans with a per-call price */
    int64_t cost_nano;  /* expected cost, nano-USD */
    int64_t tokens[LG_N_TOKEN_KINDS];
} lg_contrib_t;

/* One encoded request.  `buf` holds the 5-byte gRPC prefix (compressed flag,
 * big-endian length) followed by the message, compressed when the pool was
 * built with compression; OTLP/HTTP sends buf + 5.  Owned by the pool. */
typedef struct lg_request {
    uint8_t *buf;
    size_t len; /* prefix included */
    uint32_t span_count;
    /* Offsets in buf of every span's 16-byte trace_id (uncompressed pools
     * only, else NULL), so a pool that is sent again can be given fresh
     * trace ids: see lg_request_set_cycle(). */
    uint32_t *trace_id_offsets;
    uint32_t trace_id_count;
    uint32_t applied_cycle;
    lg_contrib_t *contribs;
    uint32_t contrib_count;
    /* run state */
    uint32_t in_flight; /* 0 or 1: sent, or waiting for a retry */
    uint32_t attempts;  /* attempts of the current send */
    uint64_t ok_count;  /* times answered OK */
} lg_request_t;

typedef struct lg_traffic_opts {
    uint64_t seed;
    uint32_t spans_per_request;
    uint32_t traces_per_session;
    uint32_t sessions;        /* 0 = as many as max_spans needs */
    uint64_t max_spans;       /* stop after the trace that reaches this many spans */
    uint32_t active_sessions; /* sessions whose traces interleave */
    uint64_t base_time_ns;    /* start of the first session */
    lg_compression_t compression;
} lg_traffic_opts_t;

typedef struct lg_pool {
    lg_request_t *requests;
    size_t request_count;
    uint64_t span_count;
    uint64_t trace_count;
    uint64_t attribute_count;
    uint64_t wire_bytes;         /* bytes on the wire, prefixes included */
    uint64_t uncompressed_bytes; /* messages before compression */
    uint32_t session_count;
    char **session_ids; /* session_count strings */
} lg_pool_t;

/* Generate the pool.  Deterministic: the same options give the same bytes.
 * Returns 0 or -1 (message on stderr).  Free with lg_pool_free(). */
int lg_pool_generate(const lg_traffic_opts_t *opts, lg_pool_t *pool);
void lg_pool_free(lg_pool_t *pool);

/* Give the request's trace ids the variant of `cycle` (cycle 0 = as
 * generated).  No-op for compressed requests.  The request must not be in
 * flight. */
void lg_request_set_cycle(lg_request_t *req, uint32_t cycle);

/* Write `{...}` with the expected cost per session of the requests answered
 * OK (ok_count times each) to `path`.  0 or -1. */
int lg_pool_write_expect(const lg_pool_t *pool, const char *path);

/* The price source, for reports. */
extern const char lg_price_source[];

/* ---- run (loadgen.c) ------------------------------------------------- */

#define LG_GRPC_STATUS_MAX 16
#define LG_HIST_BUCKETS (128 + 40 * 64)

typedef struct lg_histogram {
    uint64_t counts[LG_HIST_BUCKETS];
    uint64_t total;
    uint64_t max_ns;
} lg_histogram_t;

void lg_hist_record(lg_histogram_t *hist, uint64_t ns);
/* The value at quantile q (0..1), in nanoseconds (bucket upper bound). */
uint64_t lg_hist_quantile(const lg_histogram_t *hist, double q);

typedef enum lg_transport { LG_GRPC, LG_HTTP } lg_transport_t;

typedef struct lg_conn lg_conn_t;
typedef struct lg_run lg_run_t;

/* What every connection has, whatever its transport. */
struct lg_conn {
    lg_run_t *run;
    lg_transport_t transport;
    int index;
    uint32_t in_flight;
    uint32_t max_in_flight;
    bool dead; /* closed for good: no more requests */
};

typedef struct lg_options {
    const char *host; /* numeric loopback address */
    int port;
    lg_transport_t transport;
    uint32_t connections;
    uint32_t streams;
    double rate; /* spans per second, 0 = as fast as possible */
    double duration_s;
    uint64_t spans; /* 0 = until duration */
    double timeout_s;
    uint32_t retries;      /* retry UNAVAILABLE / 429 / 503 this many times */
    const char *authority; /* host:port for :authority / Host */
    lg_compression_t compression;
} lg_options_t;

struct lg_run {
    uv_loop_t *loop;
    const lg_options_t *opt;
    lg_pool_t *pool;
    lg_conn_t **conns;
    uint64_t t0_ns;
    uint64_t t_end_ns;
    /* issue side */
    uint64_t next_seq;
    uint64_t spans_issued;
    bool issuing_done;
    uint64_t late_requests; /* rate mode: due but no free stream */
    bool late_flag;
    /* completion side */
    uint64_t requests_done;
    uint64_t requests_ok;
    uint64_t spans_ok;
    uint64_t spans_done;
    uint64_t in_flight;
    uint64_t grpc_status[LG_GRPC_STATUS_MAX + 1];
    uint64_t no_grpc_status; /* gRPC answers without grpc-status */
    uint64_t http_status[600];
    uint64_t transport_errors;
    uint64_t retried;     /* attempts answered retryable and sent again */
    uint64_t retry_queue; /* requests waiting for their retry */
    char first_error[256];
    lg_histogram_t latency;
    bool finished;
    bool aborted;
};

/* The next request a connection may send now, or NULL (nothing due yet,
 * everything issued, or stopping).  Marks it in flight. */
lg_request_t *lg_run_take(lg_run_t *run, uint64_t *start_ns);
/* One request ended.  grpc_status -1 = none, http_status 0 = none,
 * transport_error: the connection failed before an answer. */
void lg_run_done(lg_run_t *run, lg_conn_t *conn, lg_request_t *req, uint64_t start_ns,
                 int http_status, int grpc_status, const char *message, bool transport_error);
/* A connection closed for good. */
void lg_run_conn_dead(lg_run_t *run, lg_conn_t *conn);
uint64_t lg_now_ns(void);

/* ---- transports ------------------------------------------------------ */

/* Start connecting; the connection pulls requests with lg_run_take() once
 * it is up.  NULL on allocation failure. */
lg_conn_t *lg_grpc_open(lg_run_t *run, int index);
void lg_grpc_pump(lg_conn_t *conn);
void lg_grpc_close(lg_conn_t *conn);

lg_conn_t *lg_http_open(lg_run_t *run, int index);
void lg_http_pump(lg_conn_t *conn);
void lg_http_close(lg_conn_t *conn);

#endif
