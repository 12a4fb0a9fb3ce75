/*
 * pb_limit.c - the physical floor: decode and re-encode the benchmark's own
 * requests with protobuf-c, in a loop, on one thread, and nothing else.
 *
 * Any OTLP pipeline that looks at spans must at least unpack every request
 * and pack what it forwards; this program measures how fast one core does
 * exactly that for the traffic loadgen sends (same generator, same seed,
 * same bytes).  Decoding goes into a bump arena that is reset between
 * requests, the way agentmeter decodes (core/am_arena.h), so allocation is
 * as cheap as it can be; a second pass with protobuf-c's default (malloc)
 * allocator is reported for comparison.  `make bench` divides agentmeter's
 * full-chain throughput by the arena figure (full / limit).  It also reports
 * how many arena bytes a decoded span takes: the floor of bytes per buffered
 * span for any pipeline that keeps the decoded protobuf-c structs.
 *
 *   pb_limit [--spans N] [--seed N] [--spans-per-request N] [--passes N]
 *
 * Prints a human line and a final JSON line.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "am_otlp.h"
#include "loadgen.h"

typedef struct bump {
    uint8_t *base;
    size_t used;
    size_t cap;
    size_t overflow_allocs;
} bump_t;

static void *bump_alloc(void *data, size_t size)
{
    bump_t *b = data;
    size = (size + 15) & ~(size_t)15;
    if (b->cap - b->used < size) {
        b->overflow_allocs++;
        return malloc(size); /* leaks by design only if the arena is too small: sized below */
    }
    void *p = b->base + b->used;
    b->used += size;
    return p;
}

static void bump_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t arg_u64(int argc, char **argv, const char *name, uint64_t def)
{
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            return strtoull(argv[i + 1], NULL, 10);
        }
    }
    return def;
}

/* One pass over the pool; returns seconds, or -1 on a decode error.  With a
 * bump arena, *decoded gets the bytes the decoded requests took in it. */
static double run_pass(const lg_pool_t *pool, ProtobufCAllocator *alloc, bump_t *bump, uint8_t *out,
                       size_t out_cap, uint64_t *checksum, uint64_t *decoded)
{
    *decoded = 0;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < pool->request_count; i++) {
        const lg_request_t *r = &pool->requests[i];
        if (bump != NULL) {
            bump->used = 0;
        }
        am_pb_export_req_t *req =
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
                alloc, r->len - 5, r->buf + 5);
        if (req == NULL) {
            return -1;
        }
        if (bump != NULL) {
            *decoded += bump->used;
        }
        size_t n =
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
                req);
        if (n > out_cap) {
            return -1;
        }
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(req, out);
        *checksum += n + out[n / 2];
        if (bump == NULL) {
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(
                req, alloc);
        }
    }
    return (double)(now_ns() - t0) / 1e9;
}

int main(int argc, char **argv)
{
    lg_traffic_opts_t opts = {
        .seed = arg_u64(argc, argv, "--seed", 1),
        .spans_per_request = (uint32_t)arg_u64(argc, argv, "--spans-per-request", 100),
        .traces_per_session = 5,
        .active_sessions = 16,
        .max_spans = arg_u64(argc, argv, "--spans", 200000),
        .base_time_ns = UINT64_C(1793577600) * 1000000000u,
        .compression = LG_COMPRESS_NONE,
    };
    uint64_t passes = arg_u64(argc, argv, "--passes", 5);
    if (opts.spans_per_request == 0 || opts.max_spans == 0 || passes == 0 || passes > 1000) {
        fprintf(stderr, "pb_limit: bad arguments\n");
        return 2;
    }
    lg_pool_t pool;
    if (lg_pool_generate(&opts, &pool) != 0) {
        return 2;
    }
    size_t max_len = 0;
    for (size_t i = 0; i < pool.request_count; i++) {
        max_len = pool.requests[i].len > max_len ? pool.requests[i].len : max_len;
    }
    bump_t bump = {.cap = max_len * 8 + (1u << 20)};
    bump.base = malloc(bump.cap);
    uint8_t *out = malloc(max_len * 2);
    if (bump.base == NULL || out == NULL) {
        return 2;
    }
    ProtobufCAllocator arena_alloc = {
        .alloc = bump_alloc, .free = bump_free, .allocator_data = &bump};
    uint64_t checksum = 0;

    /* warm-up pass, then the best of `passes` (the floor is the fastest) */
    uint64_t decoded = 0;
    if (run_pass(&pool, &arena_alloc, &bump, out, max_len * 2, &checksum, &decoded) < 0) {
        fprintf(stderr, "pb_limit: decode failed\n");
        return 1;
    }
    double best_arena = 1e30;
    for (uint64_t p = 0; p < passes; p++) {
        double s = run_pass(&pool, &arena_alloc, &bump, out, max_len * 2, &checksum, &decoded);
        best_arena = s < best_arena ? s : best_arena;
    }
    double best_malloc = 1e30;
    uint64_t unused;
    for (uint64_t p = 0; p < passes; p++) {
        double s = run_pass(&pool, NULL, NULL, out, max_len * 2, &checksum, &unused);
        if (s < 0) {
            fprintf(stderr, "pb_limit: decode failed\n");
            return 1;
        }
        best_malloc = s < best_malloc ? s : best_malloc;
    }
    double spans = (double)pool.span_count;
    double mib = (double)pool.uncompressed_bytes / (1024.0 * 1024.0);
    double per_span = (double)decoded / spans;
    printf("pb_limit: %zu requests, %" PRIu64 " spans, %.1f MiB: decode+encode on one core: "
           "%.0f spans/s (%.0f MiB/s) with an arena, %.0f spans/s with malloc; a decoded span "
           "takes %.0f arena bytes\n",
           pool.request_count, pool.span_count, mib, spans / best_arena, mib / best_arena,
           spans / best_malloc, per_span);
    printf(
        "{\"pb_limit\": \"result\", \"spans\": %" PRIu64 ", \"requests\": %zu, \"bytes\": %" PRIu64
        ", \"spans_per_s\": %.1f, \"mib_per_s\": %.1f, \"spans_per_s_malloc\": %.1f, "
        "\"decoded_bytes_per_span\": %.1f, \"arena_overflow_allocs\": %zu, \"checksum\": %" PRIu64
        "}\n",
        pool.span_count, pool.request_count, pool.uncompressed_bytes, spans / best_arena,
        mib / best_arena, spans / best_malloc, per_span, bump.overflow_allocs, checksum);
    free(bump.base);
    free(out);
    lg_pool_free(&pool);
    return 0;
}
