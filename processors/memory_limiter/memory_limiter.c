/*
 * memory_limiter.c - refuse new data before memory runs out.
 *
 * As in the OpenTelemetry Collector: a hard limit (`limit_mib`) and a spike
 * allowance (`spike_limit_mib`) give a soft limit = limit - spike.  Above the
 * soft limit the processor refuses incoming batches with AM_RETRY, which the
 * receivers answer with gRPC UNAVAILABLE / HTTP 503 (clients retry later);
 * below it data flows again.  Nothing already accepted is dropped.
 *
 * What is measured, and why two numbers: the bytes reserved by live request
 * arenas plus the encoded messages exporters hold until acknowledged
 * (am_memory_in_flight: atomics, exact and free to read) are what agentmeter
 * actually holds for data in flight; they are compared with the soft limit.  RSS is
 * read every `check_interval`; what RSS holds beyond the data in flight
 * (state, libraries, allocator slack) is the floor, and data is refused once
 * floor + data in flight would pass the soft limit (see allowed_in_flight).
 * A limiter deciding on RSS alone would refuse data forever after a burst:
 * glibc rarely hands freed heap back to the kernel, so above the soft limit
 * the check asks malloc to return free memory (malloc_trim) first.
 * It runs first in the
 * pipeline, on the receiver's thread, before the batch goes to the shards.
 */
#include <malloc.h>
#include <stdio.h>
#include <unistd.h>

#include "am_component.h"
#include "am_log.h"
#include "am_selfmetrics.h"

typedef struct limiter_config {
    int64_t limit_bytes;
    int64_t spike_bytes;
    int64_t check_interval_ms;
} limiter_config_t;

static const am_option_t limiter_options[] = {
    AM_OPT("limit_mib", AM_OPT_SIZE_MIB, "512", limiter_config_t, limit_bytes,
           "Hard memory limit in MiB (RSS)."),
    AM_OPT("spike_limit_mib", AM_OPT_SIZE_MIB, "128", limiter_config_t, spike_bytes,
           "Headroom for spikes: data is refused above limit_mib - spike_limit_mib."),
    AM_OPT("check_interval", AM_OPT_DURATION, "1s", limiter_config_t, check_interval_ms,
           "How often RSS is read."),
    AM_OPT_END,
};

typedef struct limiter {
    limiter_config_t cfg;
    am_consumer_t *next;
    uv_loop_t *loop;
    uv_timer_t timer;
    bool timer_open;
    _Atomic int64_t floor_bytes; /* RSS - data in flight at the last check */
    bool was_over;               /* main loop only */
    bool floor_was_high;         /* main loop only */
    am_counter_t *refused_spans;
    char *id;
} limiter_t;

static int64_t read_rss(void)
{
    long pages_total = 0, pages_rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL) {
        return 0;
    }
    if (fscanf(f, "%ld %ld", &pages_total, &pages_rss) != 2) {
        pages_rss = 0;
    }
    fclose(f);
    return (int64_t)pages_rss * (int64_t)sysconf(_SC_PAGESIZE);
}

static int64_t soft_limit(const limiter_t *lim)
{
    return lim->cfg.limit_bytes - lim->cfg.spike_bytes;
}

/* The decision, on every batch.  RSS = data in flight + the rest (state
 * such as open sessions and caches, libraries, allocator slack), and only
 * the first can be refused.  So the rest is measured at each check (`floor`
 * = RSS - data in flight then) and data is refused once what is in flight
 * now would take floor + in flight past the soft limit.  When the rest alone
 * nearly fills the soft limit, a quarter of it stays open to data in flight
 * all the same: refusing everything could never lower state or slack, and
 * ingestion would stall for good (the warning below says so). */
static int64_t allowed_in_flight(const limiter_t *lim)
{
    int64_t allowed = soft_limit(lim) - atomic_load(&lim->floor_bytes);
    return allowed < soft_limit(lim) / 4 ? soft_limit(lim) / 4 : allowed;
}

static bool over_limit(limiter_t *lim)
{
    return (int64_t)am_memory_in_flight() > allowed_in_flight(lim);
}

static void update_floor(limiter_t *lim, int64_t rss)
{
    int64_t in_flight = (int64_t)am_memory_in_flight();
    atomic_store(&lim->floor_bytes, rss > in_flight ? rss - in_flight : 0);
}

static void on_check(uv_timer_t *timer)
{
    limiter_t *lim = timer->data;
    int64_t rss = read_rss();
    if (rss > soft_limit(lim)) {
        /* freed heap that glibc keeps is not ours to count as the floor */
        malloc_trim(0);
        rss = read_rss();
    }
    update_floor(lim, rss);
    bool over = over_limit(lim);
    bool floor_high = atomic_load(&lim->floor_bytes) > soft_limit(lim) * 3 / 4;
    if (over != lim->was_over || floor_high != lim->floor_was_high) {
        lim->was_over = over;
        lim->floor_was_high = floor_high;
        struct mallinfo2 heap = mallinfo2();
        AM_WARN(lim->id,
                "memory %s the limits (RSS %lld MiB, hard limit %lld MiB; data in flight %lld "
                "MiB of %lld MiB allowed, the rest %lld MiB, soft limit %lld MiB; malloc heap "
                "%lld MiB in use, %lld MiB free)%s",
                over ? "above" : "back below", (long long)(rss >> 20),
                (long long)(lim->cfg.limit_bytes >> 20), (long long)(am_memory_in_flight() >> 20),
                (long long)(allowed_in_flight(lim) >> 20),
                (long long)(atomic_load(&lim->floor_bytes) >> 20),
                (long long)(soft_limit(lim) >> 20), (long long)(heap.uordblks >> 20),
                (long long)(heap.fordblks >> 20),
                floor_high ? ": state and libraries alone fill most of the soft limit, raise "
                             "limit_mib"
                           : "");
    }
}

static am_status_t limiter_consume(void *instance, am_batch_t *batch)
{
    limiter_t *lim = instance;
    if (over_limit(lim)) {
        am_counter_add(lim->refused_spans, batch->span_count);
        return AM_RETRY;
    }
    return am_consume(lim->next, batch);
}

static void limiter_validate(const void *config, const void *node, const char *prefix,
                             am_errors_t *errs)
{
    const limiter_config_t *cfg = config;
    if (cfg->spike_bytes >= cfg->limit_bytes) {
        am_errors_add(errs, node, "%s: spike_limit_mib must be below limit_mib", prefix);
    }
}

static int limiter_create(const am_create_params_t *params, void **instance)
{
    limiter_t *lim = am_calloc(1, sizeof(*lim));
    if (lim == NULL || (lim->id = am_strdup(params->id)) == NULL) {
        am_free(lim);
        return AM_ENOMEM;
    }
    lim->cfg = *(const limiter_config_t *)params->config;
    lim->next = params->next;
    lim->loop = params->loop;
    char labels[300];
    snprintf(labels, sizeof(labels), "processor=\"%s\"", params->id);
    lim->refused_spans = am_selfmetrics_counter(
        "agentmeter_processor_refused_spans_total",
        "Spans refused by a processor (memory limit); clients were told to retry.", labels);
    *instance = lim;
    return 0;
}

static int limiter_start(void *instance)
{
    limiter_t *lim = instance;
    update_floor(lim, read_rss());
    uv_timer_init(lim->loop, &lim->timer);
    lim->timer.data = lim;
    lim->timer_open = true;
    uint64_t every = lim->cfg.check_interval_ms > 0 ? (uint64_t)lim->cfg.check_interval_ms : 1000;
    uv_timer_start(&lim->timer, on_check, every, every);
    return 0;
}

static void on_timer_closed(uv_handle_t *handle)
{
    limiter_t *lim = handle->data;
    lim->timer_open = false;
}

static void limiter_shutdown(void *instance)
{
    limiter_t *lim = instance;
    if (lim->timer_open && !uv_is_closing((uv_handle_t *)&lim->timer)) {
        uv_close((uv_handle_t *)&lim->timer, on_timer_closed);
    }
}

static void limiter_destroy(void *instance)
{
    limiter_t *lim = instance;
    am_free(lim->id);
    am_free(lim);
}

const am_component_ops_t am_processor_memory_limiter_ops = {
    .type = "memory_limiter",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES | AM_SIGNAL_METRICS | AM_SIGNAL_LOGS,
    .doc = "Refuses data (clients retry) when memory is above limit_mib - spike_limit_mib.",
    .options = limiter_options,
    .config_size = sizeof(limiter_config_t),
    .validate = limiter_validate,
    .create = limiter_create,
    .start = limiter_start,
    .consume = limiter_consume,
    .shutdown = limiter_shutdown,
    .destroy = limiter_destroy,
};
