/*
 * ratecard.c - the `ratecard` processor: turns each span's usage into money
 * (ARCHITECTURE.md §5-§7) and writes cost.self and its parts.
 *
 * One instance runs per shard thread (AM_COMP_SHARDED), each with its own
 * copy of the rate card, so pricing takes no lock.  A card is immutable:
 * reloading builds a complete new card and swaps it in between two batches
 * on the instance's own loop, so a batch is never priced by half a card.  A
 * card that fails to load (any error in any file) is reported with file:line
 * and the previous card keeps pricing.
 *
 * Reload triggers: SIGHUP (ops->reload) and a uv_timer on the shard loop that
 * stat()s the files every reload_interval and reloads when a file's mtime,
 * size or inode changed (editors that write a new file and rename it change
 * the inode).  The stat is recorded before the file is read, so a write that
 * races with the read is seen at the next poll.
 *
 * What it writes (ARCHITECTURE.md §6), on every span: cost.self (double),
 * cost.currency, cost.status; on priced spans also gen_ai.usage.cost.amount,
 * .currency, .source="local", cost.price_id and the parts that apply:
 * cost.input and cost.output whenever tokens were priced (even when 0),
 * cost.cache_read, cost.cache_write and cost.reasoning when the span has such
 * tokens, cost.tool for a priced tool call, cost.compute for a GPU price.
 * The parts add up exactly to cost.self (in nano-units; the doubles are
 * views).  With a trace index, ref->cost_self gets the exact value for rollup.
 *
 * Unknown models are the one thing an operator must see: each span is marked
 * unpriced_model, counted in agentmeter_ratecard_unpriced_spans_total{model}
 * (the first 100 models get their own series, the rest share model="other")
 * and logged at most once a minute per model.  That bookkeeping is process
 * wide (a mutex), but it is only touched by spans that could not be priced.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "am_component.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "processors/ratecard/ratecard_internal.h"

#define LOG_COMPONENT "ratecard"
#define MAX_UNPRICED_MODELS 100
#define MAX_MODEL_LABEL 100
#define UNPRICED_LOG_EVERY_MS 60000

const am_option_t am__rc_options[] = {
    {.name = "files",
     .type = AM_OPT_STRLIST,
     .def = NULL,
     .offset = offsetof(am__rc_config_t, files),
     .doc = "Rate card files (ARCHITECTURE.md §7), merged in order over the built-in card: an "
            "entry with the same match, provider and effective_from replaces the earlier one. "
            "Empty: the built-in card alone."},
    {.name = "include_builtin",
     .type = AM_OPT_BOOL,
     .def = "true",
     .offset = offsetof(am__rc_config_t, include_builtin),
     .doc = "Start from the built-in list-price card, so a file only needs your contracted or "
            "missing prices. false: price with `files` only (then they are required)."},
    {.name = "reload_interval",
     .type = AM_OPT_DURATION,
     .def = "10s",
     .offset = offsetof(am__rc_config_t, reload_interval_ms),
     .doc = "How often to stat() the files and reload them when they changed (0: only on "
            "SIGHUP). A broken new card is logged with file:line and the old one keeps "
            "pricing."},
    AM_OPT_END,
};

typedef struct file_stat {
    bool exists;
    int64_t mtime_ns;
    int64_t size;
    uint64_t inode;
} file_stat_t;

typedef struct ratecard_proc {
    char *id;
    int shard;
    am_consumer_t *next;
    uv_loop_t *loop;
    am__ratecard_t *card;
    bool include_builtin;
    char **files;
    size_t n_files;
    file_stat_t *stats;
    int64_t reload_ms;
    uv_timer_t *timer; /* owned; freed by its close callback */
    bool shut;
    am_counter_t *spans[AM__RC_N_STATUS];
    am_counter_t *negative_buckets;
    am_counter_t *reload_ok;
    am_counter_t *reload_failed;
} ratecard_proc_t;

/* ---- unpriced models (process wide) ----------------------------------------- */

typedef struct unpriced_model {
    char *model;
    am_counter_t *counter;
    uint64_t last_log_ms;
} unpriced_model_t;

static pthread_mutex_t unpriced_lock = PTHREAD_MUTEX_INITIALIZER;
static unpriced_model_t unpriced[MAX_UNPRICED_MODELS];
static size_t n_unpriced;
static am_counter_t *unpriced_other;
static uint64_t unpriced_other_last_log_ms;

static void label_escape(const char *in, char *out, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; in[i] != '\0' && i < MAX_MODEL_LABEL && o + 3 < size; i++) {
        char c = in[i];
        if (c == '\\' || c == '"') {
            out[o++] = '\\';
            out[o++] = c;
        } else if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if ((unsigned char)c < 0x20) {
            out[o++] = '?';
        } else {
            out[o++] = c;
        }
    }
    out[o] = '\0';
}

static void note_unpriced(const char *model, const char *provider)
{
    static const char *const help = "Spans with token usage that no rate card entry prices.";
    const char *name = model != NULL ? model : "";
    uint64_t now = am_now_mono_ms();
    bool log = false;
    am_counter_t *counter = NULL;
    pthread_mutex_lock(&unpriced_lock);
    unpriced_model_t *slot = NULL;
    for (size_t i = 0; i < n_unpriced && slot == NULL; i++) {
        if (strcmp(unpriced[i].model, name) == 0) {
            slot = &unpriced[i];
        }
    }
    if (slot == NULL && n_unpriced < MAX_UNPRICED_MODELS) {
        char *copy = am_strdup(name);
        if (copy != NULL) {
            char escaped[2 * MAX_MODEL_LABEL + 4], labels[2 * MAX_MODEL_LABEL + 16];
            label_escape(model != NULL ? model : "(none)", escaped, sizeof(escaped));
            snprintf(labels, sizeof(labels), "model=\"%s\"", escaped);
            slot = &unpriced[n_unpriced++];
            slot->model = copy;
            slot->counter =
                am_selfmetrics_counter("agentmeter_ratecard_unpriced_spans_total", help, labels);
            slot->last_log_ms = 0;
        }
    }
    if (slot != NULL) {
        counter = slot->counter;
        if (slot->last_log_ms == 0 || now - slot->last_log_ms >= UNPRICED_LOG_EVERY_MS) {
            slot->last_log_ms = now;
            log = true;
        }
    } else {
        if (unpriced_other == NULL) {
            unpriced_other = am_selfmetrics_counter("agentmeter_ratecard_unpriced_spans_total",
                                                    help, "model=\"other\"");
        }
        counter = unpriced_other;
        if (unpriced_other_last_log_ms == 0 ||
            now - unpriced_other_last_log_ms >= UNPRICED_LOG_EVERY_MS) {
            unpriced_other_last_log_ms = now;
            log = true;
        }
    }
    pthread_mutex_unlock(&unpriced_lock);
    am_counter_add(counter, 1);
    if (log) {
        if (model == NULL) {
            AM_WARN(LOG_COMPONENT, "spans with token usage name no model (gen_ai.response.model, "
                                   "gen_ai.request.model, ...): marked cost.status=unpriced_model");
        } else {
            AM_WARN(LOG_COMPONENT,
                    "no rate card entry prices model \"%.200s\" (provider %.100s): its spans are "
                    "marked cost.status=unpriced_model; add it to a rate card",
                    model, provider != NULL ? provider : "unknown");
        }
    }
}

/* ---- loading and reloading ---------------------------------------------------- */

static void stat_file(const char *path, file_stat_t *out)
{
    struct stat st;
    memset(out, 0, sizeof(*out));
    if (stat(path, &st) == 0) {
        out->exists = true;
        out->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        out->size = (int64_t)st.st_size;
        out->inode = (uint64_t)st.st_ino;
    }
}

static void log_errors(ratecard_proc_t *proc, const am_errors_t *errs)
{
    for (size_t i = 0; i < errs->count; i++) {
        if (proc->shard <= 0) {
            AM_ERROR(LOG_COMPONENT, "%s: %s", proc->id, errs->msgs[i]);
        } else {
            AM_DEBUG(LOG_COMPONENT, "%s (shard %d): %s", proc->id, proc->shard, errs->msgs[i]);
        }
    }
}

/* Load a new card; on success swap it in, else keep the old one. */
static int proc_load(ratecard_proc_t *proc, const char *why)
{
    for (size_t i = 0; i < proc->n_files; i++) {
        stat_file(proc->files[i], &proc->stats[i]);
    }
    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load(
        proc->include_builtin, (const char *const *)proc->files, proc->n_files, &errs);
    if (card == NULL) {
        log_errors(proc, &errs);
        am_errors_clear(&errs);
        if (proc->card != NULL) {
            am_counter_add(proc->reload_failed, 1);
            if (proc->shard <= 0) {
                AM_ERROR(LOG_COMPONENT,
                         "%s: %s: the new rate card was rejected; the previous one "
                         "keeps pricing",
                         proc->id, why);
            }
        }
        return AM_EINVAL;
    }
    am_errors_clear(&errs);
    if (proc->card != NULL) {
        am_counter_add(proc->reload_ok, 1);
        if (proc->shard <= 0) {
            AM_INFO(LOG_COMPONENT, "%s: %s: rate card reloaded (%zu model entries)", proc->id, why,
                    card->models.n);
        }
    }
    am__ratecard_free(proc->card);
    proc->card = card;
    return 0;
}

static void on_poll(uv_timer_t *timer)
{
    ratecard_proc_t *proc = timer->data;
    if (proc == NULL || proc->shut) {
        return;
    }
    for (size_t i = 0; i < proc->n_files; i++) {
        file_stat_t now;
        stat_file(proc->files[i], &now);
        if (memcmp(&now, &proc->stats[i], sizeof(now)) != 0) {
            proc_load(proc, "a rate card file changed");
            return;
        }
    }
}

static void rc_reload(void *instance)
{
    ratecard_proc_t *proc = instance;
    if (!proc->shut) {
        proc_load(proc, "reload requested");
    }
}

/* ---- the data path ------------------------------------------------------------ */

typedef struct visit_ctx {
    ratecard_proc_t *proc;
    int64_t now_ns;
    uint64_t status_counts[AM__RC_N_STATUS];
    uint64_t negative_buckets;
} visit_ctx_t;

static int visit_span(am_batch_t *batch, am_pb_span_t *span, am_pb_resource_t *resource,
                      am_pb_scope_t *scope, am_span_ref_t *ref, void *user_data)
{
    visit_ctx_t *ctx = user_data;
    AM_UNUSED(scope);
    am__rc_result_t result;
    am__rc_price_span(ctx->proc->card, span, resource, ctx->now_ns, &result);
    if (ref != NULL) {
        ref->cost_self = result.self;
    }
    ctx->status_counts[result.status]++;
    ctx->negative_buckets += result.parts.negative_buckets;
    if (result.status == AM__RC_UNPRICED_MODEL) {
        note_unpriced(result.model, result.provider);
    }
    return am__rc_write_span(ctx->proc->card, &result, batch->arena, span);
}

static am_status_t rc_consume(void *instance, am_batch_t *batch)
{
    ratecard_proc_t *proc = instance;
    if (proc->card != NULL && (batch->signal & AM_SIGNAL_TRACES)) {
        visit_ctx_t ctx = {.proc = proc, .now_ns = (int64_t)am_now_unix_nano()};
        int rc = am_batch_for_each_span(batch, visit_span, &ctx);
        for (int s = 0; s < AM__RC_N_STATUS; s++) {
            if (ctx.status_counts[s] > 0) {
                am_counter_add(proc->spans[s], ctx.status_counts[s]);
            }
        }
        if (ctx.negative_buckets > 0) {
            am_counter_add(proc->negative_buckets, ctx.negative_buckets);
        }
        if (rc != 0) {
            /* Out of memory in the batch arena: pricing again is idempotent. */
            return AM_RETRY;
        }
    }
    return proc->next != NULL ? am_consume(proc->next, batch) : AM_OK;
}

/* ---- life cycle ----------------------------------------------------------------- */

static void rc_validate(const void *config, const void *node, const char *prefix, am_errors_t *errs)
{
    const am__rc_config_t *cfg = config;
    if (!cfg->include_builtin && cfg->files.count == 0) {
        am_errors_add(errs, node, "%s: include_builtin is false, so `files` must list a card",
                      prefix);
        return;
    }
    if (cfg->reload_interval_ms < 0) {
        am_errors_add(errs, node, "%s.reload_interval: must not be negative", prefix);
    }
    /* Card errors carry the card's own file:line; prefix the config location
     * too, so `validate` points at both the option and the card. */
    am_errors_t card_errs = {0};
    am__ratecard_t *card = am__ratecard_load(
        cfg->include_builtin, (const char *const *)cfg->files.items, cfg->files.count, &card_errs);
    am__ratecard_free(card);
    for (size_t i = 0; i < card_errs.count; i++) {
        am_errors_add(errs, node, "%s.files: %s", prefix, card_errs.msgs[i]);
    }
    am_errors_clear(&card_errs);
}

static void rc_destroy(void *instance)
{
    ratecard_proc_t *proc = instance;
    if (proc == NULL) {
        return;
    }
    am__ratecard_free(proc->card);
    for (size_t i = 0; i < proc->n_files; i++) {
        am_free(proc->files[i]);
    }
    am_free(proc->files);
    am_free(proc->stats);
    am_free(proc->id);
    am_free(proc);
}

static int rc_create(const am_create_params_t *params, void **instance)
{
    const am__rc_config_t *cfg = params->config;
    ratecard_proc_t *proc = am_calloc(1, sizeof(*proc));
    if (proc == NULL) {
        return AM_ENOMEM;
    }
    proc->id = am_strdup(params->id != NULL ? params->id : "ratecard");
    proc->shard = params->shard;
    proc->next = params->next;
    proc->loop = params->loop;
    proc->include_builtin = cfg->include_builtin;
    proc->reload_ms = cfg->reload_interval_ms;
    proc->n_files = cfg->files.count;
    if (proc->n_files > 0) {
        proc->files = am_calloc(proc->n_files, sizeof(*proc->files));
        proc->stats = am_calloc(proc->n_files, sizeof(*proc->stats));
    }
    if (proc->id == NULL || (proc->n_files > 0 && (proc->files == NULL || proc->stats == NULL))) {
        rc_destroy(proc);
        return AM_ENOMEM;
    }
    for (size_t i = 0; i < proc->n_files; i++) {
        proc->files[i] = am_strdup(cfg->files.items[i]);
        if (proc->files[i] == NULL) {
            rc_destroy(proc);
            return AM_ENOMEM;
        }
    }
    int rc = proc_load(proc, "start");
    if (rc != 0) {
        rc_destroy(proc);
        return rc;
    }
    char labels[300];
    for (int s = 0; s < AM__RC_N_STATUS; s++) {
        snprintf(labels, sizeof(labels), "processor=\"%s\",status=\"%s\"", proc->id,
                 am__rc_status_names[s]);
        proc->spans[s] = am_selfmetrics_counter("agentmeter_ratecard_spans_total",
                                                "Spans seen by the ratecard processor, by "
                                                "cost.status.",
                                                labels);
    }
    snprintf(labels, sizeof(labels), "processor=\"%s\"", proc->id);
    proc->negative_buckets = am_selfmetrics_counter(
        "agentmeter_ratecard_negative_buckets_total",
        "Token buckets that came out negative (e.g. cache tokens above input) and were billed as "
        "0.",
        labels);
    snprintf(labels, sizeof(labels), "processor=\"%s\",result=\"success\"", proc->id);
    proc->reload_ok = am_selfmetrics_counter("agentmeter_ratecard_reloads_total",
                                             "Rate card reloads, by result.", labels);
    snprintf(labels, sizeof(labels), "processor=\"%s\",result=\"failure\"", proc->id);
    proc->reload_failed = am_selfmetrics_counter("agentmeter_ratecard_reloads_total",
                                                 "Rate card reloads, by result.", labels);
    *instance = proc;
    return 0;
}

static void on_timer_closed(uv_handle_t *handle)
{
    am_free(handle);
}

static int rc_start(void *instance)
{
    ratecard_proc_t *proc = instance;
    if (proc->n_files == 0 || proc->reload_ms <= 0 || proc->loop == NULL) {
        return 0;
    }
    proc->timer = am_malloc(sizeof(*proc->timer));
    if (proc->timer == NULL) {
        return AM_ENOMEM;
    }
    int rc = uv_timer_init(proc->loop, proc->timer);
    if (rc != 0) {
        am_free(proc->timer);
        proc->timer = NULL;
        return AM_EIO;
    }
    proc->timer->data = proc;
    uv_timer_start(proc->timer, on_poll, (uint64_t)proc->reload_ms, (uint64_t)proc->reload_ms);
    uv_unref((uv_handle_t *)proc->timer);
    return 0;
}

static void rc_shutdown(void *instance)
{
    ratecard_proc_t *proc = instance;
    if (proc->shut) {
        return;
    }
    proc->shut = true;
    if (proc->timer != NULL) {
        uv_timer_stop(proc->timer);
        proc->timer->data = NULL;
        uv_close((uv_handle_t *)proc->timer, on_timer_closed);
        proc->timer = NULL;
    }
}

/* The CLI entry core/am_main.c calls (through a weak reference) for
 * `agentmeter ratecard ...`.  It lives here, beside the ops struct the
 * registry references, so the linker always pulls it out of libamcore. */
int am_ratecard_cli(int argc, char **argv);
int am_ratecard_cli(int argc, char **argv)
{
    return am__rc_cli(argc, argv);
}

const am_component_ops_t am_processor_ratecard_ops = {
    .type = "ratecard",
    .kind = AM_KIND_PROCESSOR,
    .signals = AM_SIGNAL_TRACES,
    .flags = AM_COMP_SHARDED | AM_COMP_MUTATES,
    .doc = "Prices each span from rate cards: cost.self, its parts, cost.status, price id.",
    .options = am__rc_options,
    .config_size = sizeof(am__rc_config_t),
    .validate = rc_validate,
    .create = rc_create,
    .start = rc_start,
    .consume = rc_consume,
    .shutdown = rc_shutdown,
    .destroy = rc_destroy,
    .reload = rc_reload,
};
