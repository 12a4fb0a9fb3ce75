/*
 * loadgen.c - agentmeter's load generator: options, the request pool, the
 * scheduler the connections pull from, and the report.
 *
 * The run has three phases, and only the last is timed:
 *   1. generate every request of the run (or a pool that the run cycles
 *      through, giving each pass fresh trace ids) with loadgen_traffic.c, so
 *      that encoding cost never shows up in the figures;
 *   2. optionally write them to files (--write-requests) for h2load;
 *   3. open --connections connections (gRPC: h2c with --streams concurrent
 *      Export streams each; HTTP: HTTP/1.1 keep-alive, one request at a
 *      time) and let them pull requests from lg_run_take() until --spans or
 *      --duration is reached, at --rate or as fast as the server answers.
 *
 * Latency is measured per request from the moment it is handed to the
 * connection to the end of its response (gRPC: the trailers), into a
 * log-linear histogram with 64 sub-buckets per power of two (< 1.6% error).
 * With --rate the schedule is open-loop; when no stream is free the
 * generator falls behind and reports how far (max_lag_ms) instead of hiding
 * it.
 *
 * Everything is bounded: the pool (--pool-spans), connections and streams,
 * the run (--spans / --duration), and a stall watchdog (--timeout) that ends
 * a run in which no request finishes for good (retried answers do not
 * count: a server stuck in backpressure ends the run, reported as aborted).  Only loopback
 * endpoints are accepted: this is a load test, never pointed at someone else's server.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "loadgen.h"

#define DEFAULT_BASE_TIME_S UINT64_C(1793577600) /* 2026-11-02T00:00:00Z */
#define MAX_CONNECTIONS 1024
#define MAX_STREAMS 1000
#define MAX_SPANS_PER_REQUEST 100000

uint64_t lg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- histogram ------------------------------------------------------- */

static size_t hist_index(uint64_t ns)
{
    if (ns < 128) {
        return (size_t)ns;
    }
    int e = 63 - __builtin_clzll(ns); /* >= 7 */
    size_t idx = 128 + (size_t)(e - 7) * 64 + (size_t)((ns >> (e - 6)) & 63);
    return idx < LG_HIST_BUCKETS ? idx : LG_HIST_BUCKETS - 1;
}

static uint64_t hist_upper(size_t idx)
{
    if (idx < 128) {
        return idx;
    }
    size_t e = (idx - 128) / 64 + 7;
    uint64_t sub = (idx - 128) % 64;
    return ((64 + sub + 1) << (e - 6)) - 1;
}

void lg_hist_record(lg_histogram_t *hist, uint64_t ns)
{
    hist->counts[hist_index(ns)]++;
    hist->total++;
    if (ns > hist->max_ns) {
        hist->max_ns = ns;
    }
}

uint64_t lg_hist_quantile(const lg_histogram_t *hist, double q)
{
    if (hist->total == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t)ceil(q * (double)hist->total);
    if (rank < 1) {
        rank = 1;
    }
    uint64_t seen = 0;
    for (size_t i = 0; i < LG_HIST_BUCKETS; i++) {
        seen += hist->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_upper(i);
            return v < hist->max_ns ? v : hist->max_ns;
        }
    }
    return hist->max_ns;
}

/* ---- the run --------------------------------------------------------- */

typedef struct retry_entry {
    lg_request_t *req;
    uint64_t due_ns;
} retry_entry_t;

typedef struct run_ctx {
    lg_run_t run;
    /* requests answered "retry later", oldest first; while any waits, no new
     * request is issued, so the queue never holds more than the number of
     * concurrent streams */
    retry_entry_t *retry;
    size_t retry_cap;
    size_t retry_head;
    uv_timer_t tick;     /* pumps every connection, 1 ms */
    uv_timer_t watchdog; /* 100 ms: duration end, stall detection */
    uv_timer_t finisher; /* closes everything outside any callback */
    uint64_t last_progress_ns;
    uint64_t stall_ns;
    double max_lag_ms;
    bool warned_cycle;
    uint64_t t_last_done_ns;
} run_ctx_t;

static run_ctx_t *ctx_of(lg_run_t *run)
{
    return (run_ctx_t *)run;
}

static bool issue_exhausted(lg_run_t *run)
{
    if (run->issuing_done) {
        return true;
    }
    const lg_options_t *opt = run->opt;
    if (opt->spans > 0 && run->spans_issued >= opt->spans) {
        run->issuing_done = true;
    } else if (opt->duration_s > 0 && lg_now_ns() >= run->t_end_ns) {
        run->issuing_done = true;
    }
    return run->issuing_done;
}

static void on_finisher(uv_timer_t *timer);

/* Connections are closed from a timer callback, never from inside one of
 * their own callbacks (nghttp2 or http_parser may still be on the stack). */
static void schedule_finish(lg_run_t *run)
{
    if (run->finished) {
        return;
    }
    run->finished = true;
    uv_timer_start(&ctx_of(run)->finisher, on_finisher, 0, 0);
}

static void maybe_finish(lg_run_t *run)
{
    if (issue_exhausted(run) && run->in_flight == 0) {
        schedule_finish(run);
    }
}

lg_request_t *lg_run_take(lg_run_t *run, uint64_t *start_ns)
{
    if (run->finished) {
        return NULL;
    }
    run_ctx_t *ctx = ctx_of(run);
    uint64_t now = lg_now_ns();
    if (run->retry_queue > 0) {
        retry_entry_t *e = &ctx->retry[ctx->retry_head];
        if (e->due_ns > now) {
            return NULL; /* back off as a whole while the server pushes back */
        }
        lg_request_t *req = e->req;
        ctx->retry_head = (ctx->retry_head + 1) % ctx->retry_cap;
        run->retry_queue--;
        *start_ns = now;
        return req;
    }
    if (issue_exhausted(run)) {
        return NULL;
    }
    const lg_options_t *opt = run->opt;
    if (opt->rate > 0) {
        double due = (double)(now - run->t0_ns) / 1e9 * opt->rate;
        if ((double)run->spans_issued > due) {
            return NULL; /* not due yet */
        }
    }
    lg_pool_t *pool = run->pool;
    lg_request_t *req = &pool->requests[run->next_seq % pool->request_count];
    if (req->in_flight > 0) {
        return NULL; /* the pool wrapped before this one was answered */
    }
    uint64_t cycle = run->next_seq / pool->request_count;
    if (cycle > 0) {
        if (req->trace_id_offsets == NULL && !ctx_of(run)->warned_cycle) {
            fprintf(stderr, "loadgen: note: the pool cycles and compressed requests cannot be "
                            "given fresh trace ids; spans repeat\n");
            ctx_of(run)->warned_cycle = true;
        }
        lg_request_set_cycle(req, (uint32_t)cycle);
    }
    run->next_seq++;
    run->spans_issued += req->span_count;
    req->attempts = 0;
    req->in_flight++;
    run->in_flight++;
    *start_ns = now;
    return req;
}

static bool retryable(const lg_options_t *opt, int http_status, int grpc_status)
{
    if (opt->transport == LG_GRPC) {
        /* the OTLP spec's retryable codes */
        return grpc_status == 1 || grpc_status == 4 || grpc_status == 10 || grpc_status == 11 ||
               grpc_status == 14 || grpc_status == 15;
    }
    return http_status == 429 || http_status == 502 || http_status == 503 || http_status == 504;
}

void lg_run_done(lg_run_t *run, lg_conn_t *conn, lg_request_t *req, uint64_t start_ns,
                 int http_status, int grpc_status, const char *message, bool transport_error)
{
    uint64_t now = lg_now_ns();
    run_ctx_t *ctx = ctx_of(run);
    conn->in_flight--;
    run->requests_done++;
    ctx->t_last_done_ns = now;
    req->attempts++;
    if (!transport_error && !run->finished && req->attempts <= run->opt->retries &&
        retryable(run->opt, http_status, grpc_status) && run->retry_queue < ctx->retry_cap) {
        /* count the answer, then queue the same bytes again after a backoff
         * of 1, 2, 4 ... 128 ms */
        lg_hist_record(&run->latency, now - start_ns);
        if (http_status > 0 && http_status < 600) {
            run->http_status[http_status]++;
        }
        if (grpc_status >= 0 && grpc_status <= LG_GRPC_STATUS_MAX) {
            run->grpc_status[grpc_status]++;
        }
        uint32_t shift = req->attempts - 1 < 7 ? req->attempts - 1 : 7;
        size_t tail = (ctx->retry_head + run->retry_queue) % ctx->retry_cap;
        ctx->retry[tail] =
            (retry_entry_t){.req = req, .due_ns = now + (UINT64_C(1000000) << shift)};
        run->retry_queue++;
        run->retried++;
        return;
    }
    /* progress: a request finished for good (answers that only lead to a
     * retry are not progress, so a server that refuses everything forever
     * trips the watchdog instead of holding the run) */
    ctx->last_progress_ns = now;
    req->in_flight--;
    run->in_flight--;
    run->spans_done += req->span_count;
    bool ok;
    if (transport_error) {
        run->transport_errors++;
        ok = false;
    } else {
        lg_hist_record(&run->latency, now - start_ns);
        if (http_status > 0 && http_status < 600) {
            run->http_status[http_status]++;
        }
        if (run->opt->transport == LG_GRPC) {
            if (grpc_status >= 0 && grpc_status <= LG_GRPC_STATUS_MAX) {
                run->grpc_status[grpc_status]++;
            } else {
                run->no_grpc_status++;
            }
            ok = grpc_status == 0 && http_status == 200;
        } else {
            ok = http_status == 200;
        }
    }
    if (ok) {
        req->ok_count++;
        run->requests_ok++;
        run->spans_ok += req->span_count;
    } else if (run->first_error[0] == '\0') {
        snprintf(run->first_error, sizeof(run->first_error), "http %d grpc-status %d: %s",
                 http_status, grpc_status, message != NULL ? message : "");
    }
    maybe_finish(run);
}

void lg_run_conn_dead(lg_run_t *run, lg_conn_t *conn)
{
    conn->dead = true;
    for (uint32_t i = 0; i < run->opt->connections; i++) {
        if (run->conns[i] != NULL && !run->conns[i]->dead) {
            return;
        }
    }
    /* every connection is gone: nothing more can be sent */
    if (!issue_exhausted(run) && !run->finished) {
        run->aborted = true; /* the run ended before its --spans / --duration */
    }
    run->issuing_done = true;
    maybe_finish(run);
}

static void pump(lg_conn_t *conn)
{
    if (conn == NULL || conn->dead) {
        return;
    }
    if (conn->transport == LG_GRPC) {
        lg_grpc_pump(conn);
    } else {
        lg_http_pump(conn);
    }
}

static void on_tick(uv_timer_t *timer)
{
    run_ctx_t *ctx = timer->data;
    lg_run_t *run = &ctx->run;
    if (run->finished) {
        return;
    }
    for (uint32_t i = 0; i < run->opt->connections; i++) {
        pump(run->conns[i]);
    }
    if (run->opt->rate > 0 && !run->issuing_done) {
        double elapsed_ms = (double)(lg_now_ns() - run->t0_ns) / 1e6;
        double lag = elapsed_ms - (double)run->spans_issued / run->opt->rate * 1000.0;
        if (lag > ctx->max_lag_ms) {
            ctx->max_lag_ms = lag;
        }
    }
}

static void on_watchdog(uv_timer_t *timer)
{
    run_ctx_t *ctx = timer->data;
    lg_run_t *run = &ctx->run;
    uint64_t now = lg_now_ns();
    maybe_finish(run);
    if (run->finished) {
        return;
    }
    if (run->in_flight == 0) {
        ctx->last_progress_ns = now; /* waiting for the schedule is not a stall */
    }
    if (now - ctx->last_progress_ns > ctx->stall_ns) {
        fprintf(stderr,
                "loadgen: no request finished for %.0f s (%" PRIu64 " waiting for a retry); "
                "giving up\n",
                (double)ctx->stall_ns / 1e9, run->retry_queue);
        run->aborted = true;
        run->issuing_done = true;
        schedule_finish(run);
    }
}

static void on_finisher(uv_timer_t *timer)
{
    run_ctx_t *ctx = timer->data;
    lg_run_t *run = &ctx->run;
    uv_timer_stop(&ctx->tick);
    uv_timer_stop(&ctx->watchdog);
    uv_close((uv_handle_t *)&ctx->tick, NULL);
    uv_close((uv_handle_t *)&ctx->watchdog, NULL);
    uv_close((uv_handle_t *)&ctx->finisher, NULL);
    for (uint32_t i = 0; i < run->opt->connections; i++) {
        if (run->conns[i] == NULL) {
            continue;
        }
        if (run->conns[i]->transport == LG_GRPC) {
            lg_grpc_close(run->conns[i]);
        } else {
            lg_http_close(run->conns[i]);
        }
    }
}

/* ---- options --------------------------------------------------------- */

typedef struct cli {
    lg_options_t opt;
    lg_traffic_opts_t traffic;
    uint64_t pool_spans;
    const char *endpoint;
    const char *write_dir;
    const char *expect_path;
    bool generate_only;
    bool quiet;
    bool require_ok;
    char host[64];
    char authority[96];
} cli_t;

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: loadgen [options]\n"
        "  Sends agent-shaped OTLP traces to agentmeter on loopback and reports throughput,\n"
        "  Export latency and status codes; the last stdout line is a JSON summary.\n\n"
        "  --endpoint HOST:PORT      loopback only (default 127.0.0.1:4317, --http: :4318)\n"
        "  --http                    OTLP/HTTP protobuf (POST /v1/traces, HTTP/1.1 keep-alive)\n"
        "                            instead of OTLP/gRPC (h2c, prior knowledge)\n"
        "  --sessions N              sessions to generate (default: as many as the spans need)\n"
        "  --traces-per-session N    (default 5)\n"
        "  --active-sessions N       sessions whose traces interleave (default 16)\n"
        "  --spans-per-request N     (default 100)\n"
        "  --connections N           (default 1, max %d)\n"
        "  --streams N               concurrent Export streams per gRPC connection (default 1,\n"
        "                            max %d; HTTP/1.1 always has 1)\n"
        "  --rate SPANS_PER_S        target rate, 0 = as fast as possible (default 0)\n"
        "  --duration SECONDS        stop issuing after this long\n"
        "  --spans N                 stop after N spans, rounded up to whole traces (default\n"
        "                            with neither: --duration 10)\n"
        "  --pool-spans N            most spans generated up front (default 1000000); longer\n"
        "                            runs cycle the pool with fresh trace ids\n"
        "  --compression none|gzip|zstd   (default none)\n"
        "  --seed N                  same seed, same bytes (default 1)\n"
        "  --base-time UNIX_SECONDS  start of the first session (default %" PRIu64 ")\n"
        "  --timeout SECONDS         give up when no request finishes for good (answered, not\n"
        "                            to be retried) for this long (default 30)\n"
        "  --retry N                 send a request again, up to N times, when it is answered\n"
        "                            UNAVAILABLE (or another retryable gRPC code) / HTTP 429,\n"
        "                            502-504, after 1, 2, 4 ... 128 ms; no new request is sent\n"
        "                            while one waits (default 0: no retry)\n"
        "  --write-requests DIR      write each request (5-byte gRPC prefix + message) to\n"
        "                            DIR/req-NNNNNN.bin, e.g. for h2load --data\n"
        "  --generate-only           generate (and write) requests, do not connect\n"
        "  --expect FILE             write the expected cost per session of the requests\n"
        "                            answered OK, priced from the built-in rate card's prices\n"
        "  --require-ok              exit 1 unless every request was answered OK\n"
        "  --quiet                   print only the JSON line\n",
        MAX_CONNECTIONS, MAX_STREAMS, DEFAULT_BASE_TIME_S);
}

static bool parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_double(const char *text, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(v >= min) || !(v <= max)) {
        return false;
    }
    *out = v;
    return true;
}

/* host:port on loopback; fills cli->host (numeric) and port. */
static bool parse_endpoint(cli_t *cli, const char *text)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || (size_t)(colon - text) >= sizeof(cli->host)) {
        return false;
    }
    char host[64];
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    uint64_t port;
    if (!parse_u64(colon + 1, 1, 65535, &port)) {
        return false;
    }
    if (strcmp(host, "localhost") == 0) {
        strcpy(host, "127.0.0.1");
    }
    struct sockaddr_in addr;
    if (uv_ip4_addr(host, (int)port, &addr) != 0 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: --endpoint must be an IPv4 loopback address (127.x.x.x)\n");
        return false;
    }
    snprintf(cli->host, sizeof(cli->host), "%s", host);
    cli->opt.port = (int)port;
    snprintf(cli->authority, sizeof(cli->authority), "%s:%d", host, (int)port);
    return true;
}

static int parse_args(cli_t *cli, int argc, char **argv)
{
    enum {
        O_ENDPOINT = 256,
        O_HTTP,
        O_SESSIONS,
        O_TPS,
        O_ACTIVE,
        O_SPR,
        O_CONNS,
        O_STREAMS,
        O_RATE,
        O_DURATION,
        O_SPANS,
        O_POOL,
        O_COMPRESSION,
        O_SEED,
        O_BASE,
        O_TIMEOUT,
        O_RETRY,
        O_WRITE,
        O_GENONLY,
        O_EXPECT,
        O_REQUIRE_OK,
        O_QUIET,
        O_HELP,
    };
    static const struct option longopts[] = {
        {"endpoint", required_argument, NULL, O_ENDPOINT},
        {"http", no_argument, NULL, O_HTTP},
        {"sessions", required_argument, NULL, O_SESSIONS},
        {"traces-per-session", required_argument, NULL, O_TPS},
        {"active-sessions", required_argument, NULL, O_ACTIVE},
        {"spans-per-request", required_argument, NULL, O_SPR},
        {"connections", required_argument, NULL, O_CONNS},
        {"streams", required_argument, NULL, O_STREAMS},
        {"rate", required_argument, NULL, O_RATE},
        {"duration", required_argument, NULL, O_DURATION},
        {"spans", required_argument, NULL, O_SPANS},
        {"pool-spans", required_argument, NULL, O_POOL},
        {"compression", required_argument, NULL, O_COMPRESSION},
        {"seed", required_argument, NULL, O_SEED},
        {"base-time", required_argument, NULL, O_BASE},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"retry", required_argument, NULL, O_RETRY},
        {"write-requests", required_argument, NULL, O_WRITE},
        {"generate-only", no_argument, NULL, O_GENONLY},
        {"expect", required_argument, NULL, O_EXPECT},
        {"require-ok", no_argument, NULL, O_REQUIRE_OK},
        {"quiet", no_argument, NULL, O_QUIET},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    uint64_t v;
    uint64_t base_s = DEFAULT_BASE_TIME_S;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        const char *arg = optarg;
        bool good = true;
        switch (c) {
        case O_ENDPOINT:
            cli->endpoint = arg;
            break;
        case O_HTTP:
            cli->opt.transport = LG_HTTP;
            break;
        case O_SESSIONS:
            good = parse_u64(arg, 1, 100000000, &v);
            cli->traffic.sessions = (uint32_t)v;
            break;
        case O_TPS:
            good = parse_u64(arg, 1, 100000, &v);
            cli->traffic.traces_per_session = (uint32_t)v;
            break;
        case O_ACTIVE:
            good = parse_u64(arg, 1, 100000, &v);
            cli->traffic.active_sessions = (uint32_t)v;
            break;
        case O_SPR:
            good = parse_u64(arg, 1, MAX_SPANS_PER_REQUEST, &v);
            cli->traffic.spans_per_request = (uint32_t)v;
            break;
        case O_CONNS:
            good = parse_u64(arg, 1, MAX_CONNECTIONS, &v);
            cli->opt.connections = (uint32_t)v;
            break;
        case O_STREAMS:
            good = parse_u64(arg, 1, MAX_STREAMS, &v);
            cli->opt.streams = (uint32_t)v;
            break;
        case O_RATE:
            good = parse_double(arg, 0, 1e9, &cli->opt.rate);
            break;
        case O_DURATION:
            good = parse_double(arg, 0.001, 86400, &cli->opt.duration_s);
            break;
        case O_SPANS:
            good = parse_u64(arg, 1, UINT64_C(1) << 40, &cli->opt.spans);
            break;
        case O_POOL:
            good = parse_u64(arg, 1, 100000000, &cli->pool_spans);
            break;
        case O_COMPRESSION:
            if (strcmp(arg, "none") == 0) {
                cli->traffic.compression = LG_COMPRESS_NONE;
            } else if (strcmp(arg, "gzip") == 0) {
                cli->traffic.compression = LG_COMPRESS_GZIP;
            } else if (strcmp(arg, "zstd") == 0) {
                cli->traffic.compression = LG_COMPRESS_ZSTD;
            } else {
                good = false;
            }
            break;
        case O_SEED:
            good = parse_u64(arg, 0, UINT64_MAX, &cli->traffic.seed);
            break;
        case O_BASE:
            good = parse_u64(arg, 0, UINT64_C(4000000000), &base_s);
            break;
        case O_TIMEOUT:
            good = parse_double(arg, 0.1, 3600, &cli->opt.timeout_s);
            break;
        case O_RETRY:
            good = parse_u64(arg, 0, 1000, &v);
            cli->opt.retries = (uint32_t)v;
            break;
        case O_WRITE:
            cli->write_dir = arg;
            break;
        case O_GENONLY:
            cli->generate_only = true;
            break;
        case O_EXPECT:
            cli->expect_path = arg;
            break;
        case O_REQUIRE_OK:
            cli->require_ok = true;
            break;
        case O_QUIET:
            cli->quiet = true;
            break;
        case 'h':
        case O_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
        if (!good) {
            fprintf(stderr, "loadgen: bad value for --%s: %s\n", longopts[c - O_ENDPOINT].name,
                    arg);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "loadgen: unexpected argument %s\n", argv[optind]);
        return -1;
    }
    if (cli->endpoint == NULL) {
        cli->endpoint = cli->opt.transport == LG_HTTP ? "127.0.0.1:4318" : "127.0.0.1:4317";
    }
    if (!parse_endpoint(cli, cli->endpoint)) {
        fprintf(stderr, "loadgen: bad --endpoint %s\n", cli->endpoint);
        return -1;
    }
    if (cli->opt.transport == LG_HTTP) {
        cli->opt.streams = 1;
    }
    if (cli->opt.spans == 0 && cli->opt.duration_s == 0 && cli->traffic.sessions == 0) {
        cli->opt.duration_s = 10;
    }
    cli->traffic.base_time_ns = base_s * UINT64_C(1000000000);
    cli->opt.host = cli->host;
    cli->opt.authority = cli->authority;
    cli->opt.compression = cli->traffic.compression;

    /* how much to generate up front */
    uint64_t want;
    if (cli->traffic.sessions > 0) {
        want = cli->pool_spans; /* the sessions decide; this is only a cap */
    } else if (cli->opt.spans > 0) {
        want = cli->opt.spans;
    } else if (cli->opt.rate > 0) {
        want = (uint64_t)ceil(cli->opt.rate * cli->opt.duration_s);
    } else {
        want = cli->pool_spans;
    }
    cli->traffic.max_spans = want < cli->pool_spans ? want : cli->pool_spans;
    if (cli->traffic.sessions > 0 && cli->opt.spans == 0 && cli->opt.duration_s == 0) {
        cli->opt.spans = UINT64_MAX; /* exactly one pass, set after generation */
    }
    return 0;
}

/* ---- output ---------------------------------------------------------- */

static int write_requests(const lg_pool_t *pool, const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "loadgen: mkdir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char path[PATH_MAX];
    for (size_t i = 0; i < pool->request_count; i++) {
        snprintf(path, sizeof(path), "%s/req-%06zu.bin", dir, i);
        FILE *f = fopen(path, "wb");
        if (f == NULL) {
            fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
            return -1;
        }
        size_t n = fwrite(pool->requests[i].buf, 1, pool->requests[i].len, f);
        if (fclose(f) != 0 || n != pool->requests[i].len) {
            fprintf(stderr, "loadgen: writing %s failed\n", path);
            return -1;
        }
    }
    return 0;
}

static const char *const grpc_code_names[LG_GRPC_STATUS_MAX + 1] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

static const char *compression_name(lg_compression_t c)
{
    return c == LG_COMPRESS_GZIP ? "gzip" : c == LG_COMPRESS_ZSTD ? "zstd" : "none";
}

static void report(const cli_t *cli, const run_ctx_t *ctx, const lg_pool_t *pool, double gen_s)
{
    const lg_run_t *run = &ctx->run;
    const lg_options_t *opt = &cli->opt;
    uint64_t end = ctx->t_last_done_ns > run->t0_ns ? ctx->t_last_done_ns : lg_now_ns();
    double elapsed = (double)(end - run->t0_ns) / 1e9;
    if (elapsed <= 0) {
        elapsed = 1e-9;
    }
    double spans_per_s = (double)run->spans_ok / elapsed;
    double p50 = (double)lg_hist_quantile(&run->latency, 0.50) / 1e6;
    double p90 = (double)lg_hist_quantile(&run->latency, 0.90) / 1e6;
    double p99 = (double)lg_hist_quantile(&run->latency, 0.99) / 1e6;
    double pmax = (double)run->latency.max_ns / 1e6;
    double attrs = pool->span_count ? (double)pool->attribute_count / (double)pool->span_count : 0;

    if (!cli->quiet) {
        printf("loadgen: %s %s, %u connection(s) x %u stream(s), rate %s%.0f, compression %s, "
               "seed %" PRIu64 "\n",
               opt->transport == LG_GRPC ? "OTLP/gRPC" : "OTLP/HTTP", opt->authority,
               opt->connections, opt->streams, opt->rate > 0 ? "" : "max ", opt->rate,
               compression_name(opt->compression), cli->traffic.seed);
        printf("loadgen: pool %zu requests, %" PRIu64 " spans, %" PRIu64
               " sessions, %.1f attributes/span, %.0f bytes/span on the wire, generated in %.2f "
               "s\n",
               pool->request_count, pool->span_count, (uint64_t)pool->session_count, attrs,
               pool->span_count ? (double)pool->wire_bytes / (double)pool->span_count : 0.0, gen_s);
        printf("loadgen: %" PRIu64 " requests (%" PRIu64 " spans) answered in %.3f s, %" PRIu64
               " OK: %.0f spans/s accepted, %.0f requests/s\n",
               run->requests_done, run->spans_done, elapsed, run->requests_ok, spans_per_s,
               (double)run->requests_ok / elapsed);
        printf("loadgen: Export latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", p50, p90,
               p99, pmax);
        for (int i = 0; i <= LG_GRPC_STATUS_MAX; i++) {
            if (run->grpc_status[i] > 0) {
                printf("loadgen: grpc-status %d %s: %" PRIu64 "\n", i, grpc_code_names[i],
                       run->grpc_status[i]);
            }
        }
        for (int i = 0; i < 600; i++) {
            if (run->http_status[i] > 0) {
                printf("loadgen: HTTP %d: %" PRIu64 "\n", i, run->http_status[i]);
            }
        }
        if (run->no_grpc_status > 0) {
            printf("loadgen: answers without grpc-status: %" PRIu64 "\n", run->no_grpc_status);
        }
        if (run->retried > 0) {
            printf("loadgen: attempts answered retryable and sent again: %" PRIu64 "\n",
                   run->retried);
        }
        if (run->transport_errors > 0 || run->in_flight > 0) {
            printf("loadgen: transport errors %" PRIu64 ", unanswered %" PRIu64 "\n",
                   run->transport_errors, run->in_flight);
        }
        if (run->first_error[0] != '\0') {
            printf("loadgen: first error: %s\n", run->first_error);
        }
        if (opt->rate > 0) {
            printf("loadgen: target %.0f spans/s, fell behind schedule by at most %.1f ms\n",
                   opt->rate, ctx->max_lag_ms);
        }
    }

    printf("{\"loadgen\": \"result\", \"transport\": \"%s\", \"endpoint\": \"%s\", "
           "\"connections\": %u, \"streams\": %u, \"spans_per_request\": %u, "
           "\"rate_target\": %.0f, \"compression\": \"%s\", \"seed\": %" PRIu64 ", ",
           opt->transport == LG_GRPC ? "grpc" : "http", opt->authority, opt->connections,
           opt->streams, cli->traffic.spans_per_request, opt->rate,
           compression_name(opt->compression), cli->traffic.seed);
    printf("\"pool\": {\"requests\": %zu, \"spans\": %" PRIu64 ", \"sessions\": %u, "
           "\"traces\": %" PRIu64 ", \"attributes_per_span\": %.2f, \"wire_bytes\": %" PRIu64
           ", \"generate_s\": %.3f}, ",
           pool->request_count, pool->span_count, pool->session_count, pool->trace_count, attrs,
           pool->wire_bytes, gen_s);
    printf("\"requests\": %" PRIu64 ", \"requests_ok\": %" PRIu64 ", \"spans_sent\": %" PRIu64
           ", \"spans_ok\": %" PRIu64 ", \"elapsed_s\": %.4f, \"spans_per_s\": %.1f, "
           "\"requests_per_s\": %.1f, ",
           run->requests_done, run->requests_ok, run->spans_done, run->spans_ok, elapsed,
           spans_per_s, (double)run->requests_ok / elapsed);
    printf("\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"max\": %.3f}, ", p50,
           p90, p99, pmax);
    printf("\"grpc_status\": {");
    bool first = true;
    for (int i = 0; i <= LG_GRPC_STATUS_MAX; i++) {
        if (run->grpc_status[i] > 0) {
            printf("%s\"%d\": %" PRIu64, first ? "" : ", ", i, run->grpc_status[i]);
            first = false;
        }
    }
    printf("}, \"http_status\": {");
    first = true;
    for (int i = 0; i < 600; i++) {
        if (run->http_status[i] > 0) {
            printf("%s\"%d\": %" PRIu64, first ? "" : ", ", i, run->http_status[i]);
            first = false;
        }
    }
    printf("}, \"no_grpc_status\": %" PRIu64 ", \"transport_errors\": %" PRIu64
           ", \"retried\": %" PRIu64 ", \"unanswered\": %" PRIu64
           ", \"max_lag_ms\": %.1f, \"aborted\": %s}\n",
           run->no_grpc_status, run->transport_errors, run->retried, run->in_flight,
           ctx->max_lag_ms, run->aborted ? "true" : "false");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    cli_t cli = {
        .opt = {.transport = LG_GRPC, .connections = 1, .streams = 1, .timeout_s = 30},
        .traffic = {.seed = 1,
                    .spans_per_request = 100,
                    .traces_per_session = 5,
                    .active_sessions = 16},
        .pool_spans = 1000000,
    };
    if (parse_args(&cli, argc, argv) != 0) {
        return 2;
    }

    lg_pool_t pool;
    uint64_t g0 = lg_now_ns();
    if (lg_pool_generate(&cli.traffic, &pool) != 0) {
        return 2;
    }
    double gen_s = (double)(lg_now_ns() - g0) / 1e9;
    if (pool.request_count == 0) {
        fprintf(stderr, "loadgen: nothing to send\n");
        lg_pool_free(&pool);
        return 2;
    }
    if (cli.opt.spans == UINT64_MAX || (cli.opt.spans > 0 && cli.opt.spans <= pool.span_count)) {
        /* one pass over whole traces: the pool ends at a trace boundary, at most one
         * trace past --spans */
        cli.opt.spans = pool.span_count;
    }
    if (cli.write_dir != NULL && write_requests(&pool, cli.write_dir) != 0) {
        lg_pool_free(&pool);
        return 2;
    }
    if (cli.generate_only) {
        if (!cli.quiet) {
            printf("loadgen: generated %zu requests, %" PRIu64 " spans, %" PRIu64
                   " bytes in %.2f s\n",
                   pool.request_count, pool.span_count, pool.wire_bytes, gen_s);
        }
        lg_pool_free(&pool);
        return 0;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    run_ctx_t *ctx = calloc(1, sizeof(*ctx));
    lg_conn_t **conns = calloc(cli.opt.connections, sizeof(*conns));
    if (ctx == NULL || conns == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 2;
    }
    lg_run_t *run = &ctx->run;
    run->loop = &loop;
    run->opt = &cli.opt;
    run->pool = &pool;
    run->conns = conns;
    ctx->stall_ns = (uint64_t)(cli.opt.timeout_s * 1e9);
    ctx->retry_cap = (size_t)cli.opt.connections * cli.opt.streams + 1;
    ctx->retry = calloc(ctx->retry_cap, sizeof(*ctx->retry));
    if (ctx->retry == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 2;
    }
    uv_timer_init(&loop, &ctx->tick);
    uv_timer_init(&loop, &ctx->watchdog);
    uv_timer_init(&loop, &ctx->finisher);
    ctx->tick.data = ctx;
    ctx->watchdog.data = ctx;
    ctx->finisher.data = ctx;

    run->t0_ns = lg_now_ns();
    run->t_end_ns = run->t0_ns + (uint64_t)(cli.opt.duration_s * 1e9);
    ctx->last_progress_ns = run->t0_ns;
    for (uint32_t i = 0; i < cli.opt.connections; i++) {
        conns[i] =
            cli.opt.transport == LG_GRPC ? lg_grpc_open(run, (int)i) : lg_http_open(run, (int)i);
        if (conns[i] == NULL) {
            fprintf(stderr, "loadgen: cannot open connection %u\n", i);
            return 2;
        }
    }
    uv_timer_start(&ctx->tick, on_tick, 1, 1);
    uv_timer_start(&ctx->watchdog, on_watchdog, 100, 100);
    uv_run(&loop, UV_RUN_DEFAULT);

    report(&cli, ctx, &pool, gen_s);
    int rc = 0;
    if (cli.expect_path != NULL && lg_pool_write_expect(&pool, cli.expect_path) != 0) {
        rc = 2;
    }
    if (run->requests_ok == 0 || run->aborted) {
        rc = rc ? rc : 1;
    }
    if (cli.require_ok && run->requests_ok != run->requests_done + run->in_flight) {
        rc = rc ? rc : 1;
    }
    uv_loop_close(&loop);
    free(conns);
    free(ctx->retry);
    free(ctx);
    lg_pool_free(&pool);
    return rc;
}
