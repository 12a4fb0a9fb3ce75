/*
 * am_main.c - the agentmeter command line (ARCHITECTURE.md §4).
 *
 *   agentmeter [--config FILE]... [--shards N]   run (embedded default
 *                                                 without --config)
 *   agentmeter validate --config FILE...         print every error, exit 1
 *   agentmeter components [--markdown]           list component types
 *   agentmeter ratecard price|check ...          rate card tools
 *   agentmeter --version | --help
 *
 * Signals: SIGTERM/SIGINT stop receivers, drain, exit 0.  SIGHUP reloads:
 * the config files are read again; a bad new config is reported and the
 * running one keeps going; an unchanged config just reloads rate cards and
 * certificates in place.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "am_config.h"
#include "am_log.h"
#include "am_selfmetrics.h"
#include "am_service.h"

extern const char am_default_config[];
extern const size_t am_default_config_len;
extern const am_option_t am_service_telemetry_options[];

/* Implemented by processors/ratecard when it is compiled in. */
int am_ratecard_cli(int argc, char **argv) __attribute__((weak));

#define MAX_CONFIGS 16
#define MAX_RETIRED 8

typedef struct cli {
    const char *configs[MAX_CONFIGS];
    size_t n_configs;
    int shards;
} cli_t;

typedef struct runner {
    uv_loop_t *loop;
    cli_t *cli;
    am_service_t *service;
    uv_signal_t sig_term, sig_int, sig_hup;
    char *config_text; /* concatenated source text, to detect real changes */
    uv_timer_t retire_timer;
    am_service_t *retired[MAX_RETIRED]; /* shut down by a reload, freed later */
    size_t n_retired;
    bool stopping;
    int exit_code;
} runner_t;

static void usage(FILE *out)
{
    fprintf(out,
            "agentmeter %s - turns AI-agent traces into costs\n\n"
            "usage:\n"
            "  agentmeter [--config FILE]... [--shards N]   run (embedded default config if no "
            "--config)\n"
            "  agentmeter validate --config FILE...         check a config, print every error\n"
            "  agentmeter components [--markdown]           list component types and options\n"
            "  agentmeter ratecard price --model M --input N --output N [...]\n"
            "  agentmeter ratecard check FILE\n"
            "  agentmeter --version | --help\n\n"
            "Later --config files merge over earlier ones.  SIGHUP reloads, SIGTERM drains and "
            "exits.\n",
            AM_VERSION);
}

static int parse_cli(int argc, char **argv, int start, cli_t *cli)
{
    for (int i = start; i < argc; i++) {
        const char *arg = argv[i];
        if ((strcmp(arg, "--config") == 0 || strcmp(arg, "-c") == 0) && i + 1 < argc) {
            if (cli->n_configs == MAX_CONFIGS) {
                fprintf(stderr, "agentmeter: at most %d --config files\n", MAX_CONFIGS);
                return -1;
            }
            cli->configs[cli->n_configs++] = argv[++i];
        } else if (strncmp(arg, "--config=", 9) == 0) {
            if (cli->n_configs == MAX_CONFIGS) {
                fprintf(stderr, "agentmeter: at most %d --config files\n", MAX_CONFIGS);
                return -1;
            }
            cli->configs[cli->n_configs++] = arg + 9;
        } else if (strcmp(arg, "--shards") == 0 && i + 1 < argc) {
            char *end = NULL;
            long shards = strtol(argv[++i], &end, 10);
            if (*end != '\0' || shards < 1 || shards > 256) {
                fprintf(stderr, "agentmeter: --shards must be 1..256\n");
                return -1;
            }
            cli->shards = (int)shards;
        } else {
            fprintf(stderr, "agentmeter: unknown argument \"%s\"\n\n", arg);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

static am_config_t *load_config(const cli_t *cli, am_errors_t *errs)
{
    if (cli->n_configs == 0) {
        return am_config_load_buffer("<embedded default>", am_default_config,
                                     am_default_config_len, errs);
    }
    return am_config_load_files(cli->configs, cli->n_configs, errs);
}

/* The raw bytes of every config file, to tell a real change on SIGHUP. */
static char *config_fingerprint(const cli_t *cli)
{
    size_t len = 0;
    char *all = am_strdup("");
    for (size_t i = 0; i < cli->n_configs && all != NULL; i++) {
        FILE *f = fopen(cli->configs[i], "rb");
        if (f == NULL) {
            continue;
        }
        char buf[8192];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
            char *grown = am_realloc(all, len + n + 1);
            if (grown == NULL) {
                am_free(all);
                all = NULL;
                break;
            }
            all = grown;
            memcpy(all + len, buf, n);
            len += n;
            all[len] = '\0';
        }
        fclose(f);
    }
    return all;
}

static am_service_t *build_service(const cli_t *cli, bool skip_telemetry)
{
    am_errors_t errs = {0};
    am_config_t *config = load_config(cli, &errs);
    am_service_t *service = NULL;
    if (config != NULL) {
        am_service_opts_t opts = {.shards = cli->shards, .skip_telemetry = skip_telemetry};
        service = am_service_build(config, &opts, &errs);
    }
    if (service == NULL) {
        for (size_t i = 0; i < errs.count; i++) {
            AM_ERROR("config", "%s", errs.msgs[i]);
        }
    }
    am_errors_clear(&errs);
    return service;
}

static void on_signal_closed(uv_handle_t *handle)
{
    AM_UNUSED(handle);
}

static void runner_stop(runner_t *runner)
{
    if (runner->stopping) {
        return;
    }
    runner->stopping = true;
    AM_INFO("main", "shutting down: draining pipelines");
    am_service_shutdown(runner->service);
    uv_close((uv_handle_t *)&runner->sig_term, on_signal_closed);
    uv_close((uv_handle_t *)&runner->sig_int, on_signal_closed);
    uv_close((uv_handle_t *)&runner->sig_hup, on_signal_closed);
    uv_close((uv_handle_t *)&runner->retire_timer, on_signal_closed);
}

#define RETIRE_DELAY_MS 5000

static void free_retired(runner_t *runner)
{
    for (size_t i = 0; i < runner->n_retired; i++) {
        am_service_free(runner->retired[i]);
    }
    runner->n_retired = 0;
}

static void on_retire_timer(uv_timer_t *timer)
{
    free_retired(timer->data);
}

/* Keep a shut-down service until its handles have surely closed. */
static void retire_service(runner_t *runner, am_service_t *old)
{
    if (runner->n_retired == MAX_RETIRED) {
        /* Reloads faster than the delay: the oldest have had time enough
         * only if the loop ran; free them after one more iteration. */
        free_retired(runner);
    }
    runner->retired[runner->n_retired++] = old;
    uv_timer_start(&runner->retire_timer, on_retire_timer, RETIRE_DELAY_MS, 0);
}

static void runner_reload(runner_t *runner)
{
    char *text = config_fingerprint(runner->cli);
    if (text != NULL && runner->config_text != NULL && strcmp(text, runner->config_text) == 0) {
        AM_INFO("main", "SIGHUP: config unchanged; reloading rate cards and certificates");
        am_service_reload_components(runner->service);
        am_free(text);
        return;
    }
    am_service_t *fresh = build_service(runner->cli, false);
    if (fresh == NULL) {
        AM_ERROR("main", "SIGHUP: new config rejected; the running config stays in effect");
        am_free(text);
        return;
    }
    AM_INFO("main", "SIGHUP: applying the new config");
    am_service_set_reload_successor(runner->service, fresh);
    am_service_shutdown(runner->service);
    /* The old service's handles close on this loop over the next
     * iterations (and the gRPC receiver lets in-flight streams finish), so it
     * is freed later from a timer, never from inside this callback: libuv's
     * loop must not be re-entered from a callback. */
    retire_service(runner, runner->service);
    runner->service = fresh;
    int rc = am_service_start(fresh, runner->loop);
    if (rc != 0) {
        AM_ERROR("main", "SIGHUP: the new config failed to start (%s); exiting", am_strerror(rc));
        runner->exit_code = 1;
        runner_stop(runner);
    }
    am_free(runner->config_text);
    runner->config_text = text;
}

static void on_signal(uv_signal_t *handle, int signum)
{
    runner_t *runner = handle->data;
    if (signum == SIGHUP) {
        runner_reload(runner);
        return;
    }
    AM_INFO("main", "received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    runner_stop(runner);
}

static int cmd_run(cli_t *cli)
{
    runner_t runner = {.cli = cli};
    runner.loop = am_malloc(sizeof(uv_loop_t));
    if (runner.loop == NULL || uv_loop_init(runner.loop) != 0) {
        fprintf(stderr, "agentmeter: cannot create the event loop\n");
        am_free(runner.loop);
        return 1;
    }
    runner.service = build_service(cli, false);
    if (runner.service == NULL) {
        uv_loop_close(runner.loop);
        am_free(runner.loop);
        return 1;
    }
    runner.config_text = config_fingerprint(cli);
    uv_signal_init(runner.loop, &runner.sig_term);
    uv_signal_init(runner.loop, &runner.sig_int);
    uv_signal_init(runner.loop, &runner.sig_hup);
    uv_timer_init(runner.loop, &runner.retire_timer);
    runner.retire_timer.data = &runner;
    runner.sig_term.data = runner.sig_int.data = runner.sig_hup.data = &runner;
    uv_signal_start(&runner.sig_term, on_signal, SIGTERM);
    uv_signal_start(&runner.sig_int, on_signal, SIGINT);
    uv_signal_start(&runner.sig_hup, on_signal, SIGHUP);
    AM_INFO("main", "agentmeter %s starting (%s)", AM_VERSION,
            cli->n_configs == 0 ? "embedded default config" : cli->configs[0]);
    int rc = am_service_start(runner.service, runner.loop);
    if (rc != 0) {
        AM_ERROR("main", "start failed: %s", am_strerror(rc));
        runner.exit_code = 1;
        runner_stop(&runner);
    }
    uv_run(runner.loop, UV_RUN_DEFAULT);
    free_retired(&runner);
    am_service_free(runner.service);
    if (uv_loop_close(runner.loop) != 0) {
        /* A component left a handle open; close it so exit is clean. */
        uv_run(runner.loop, UV_RUN_DEFAULT);
        uv_loop_close(runner.loop);
    }
    am_free(runner.loop);
    am_free(runner.config_text);
    am_selfmetrics_reset();
    AM_INFO("main", "stopped");
    return runner.exit_code;
}

/* Order messages by file, then line, so a reader walks the file top down. */
static int compare_errors(const void *a, const void *b)
{
    const char *ea = *(const char *const *)a;
    const char *eb = *(const char *const *)b;
    const char *ca = strchr(ea, ':');
    const char *cb = strchr(eb, ':');
    if (ca == NULL || cb == NULL) {
        return strcmp(ea, eb);
    }
    size_t la = (size_t)(ca - ea), lb = (size_t)(cb - eb);
    int by_file = strncmp(ea, eb, la < lb ? la : lb);
    if (by_file != 0 || la != lb) {
        return by_file != 0 ? by_file : (la < lb ? -1 : 1);
    }
    long line_a = strtol(ca + 1, NULL, 10), line_b = strtol(cb + 1, NULL, 10);
    return line_a < line_b ? -1 : line_a > line_b ? 1 : 0;
}

static int cmd_validate(cli_t *cli)
{
    if (cli->n_configs == 0) {
        fprintf(stderr, "agentmeter validate: give at least one --config FILE\n");
        return 2;
    }
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_files(cli->configs, cli->n_configs, &errs);
    am_service_t *service = NULL;
    if (config != NULL) {
        am_service_opts_t opts = {.shards = 1, .skip_telemetry = true};
        service = am_service_build(config, &opts, &errs);
    }
    if (service == NULL || errs.count > 0) {
        qsort(errs.msgs, errs.count, sizeof(errs.msgs[0]), compare_errors);
        am_errors_print(&errs, stdout);
        printf("%zu error%s\n", errs.count, errs.count == 1 ? "" : "s");
        am_errors_clear(&errs);
        am_service_free(service);
        return 1;
    }
    printf("config is valid\n");
    am_service_free(service);
    return 0;
}

static int cmd_components(bool markdown)
{
    static const char *const kinds[] = {"receiver", "processor", "exporter", "connector"};
    if (markdown) {
        printf("# agentmeter configuration reference\n\n"
               "Generated by `agentmeter components --markdown` from the option tables; do not "
               "edit by hand.\n\n");
        printf("## service\n\n");
        am_options_print(am_service_telemetry_options, stdout, 0, true);
        printf("\n");
    }
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < am_registry_count; i++) {
            const am_component_ops_t *ops = am_registry[i];
            if ((int)ops->kind != k) {
                continue;
            }
            char sig[32] = "";
            unsigned s = ops->signals;
            snprintf(sig, sizeof(sig), "%s%s%s", (s & AM_SIGNAL_TRACES) ? "traces " : "",
                     (s & AM_SIGNAL_METRICS) ? "metrics " : "", (s & AM_SIGNAL_LOGS) ? "logs " : "");
            if (markdown) {
                printf("## %s `%s`\n\n%s\n\nSignals: %s\n\n", kinds[k], ops->type, ops->doc, sig);
                am_options_print(ops->options, stdout, 0, true);
                printf("\n");
            } else {
                printf("%s %s  (%s)\n  %s\n", kinds[k], ops->type, sig, ops->doc);
                am_options_print(ops->options, stdout, 4, false);
                printf("\n");
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    cli_t cli = {0};
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* A peer that resets a connection must cost an EPIPE, not the process:
     * libuv writes with write(2) and does not ignore SIGPIPE itself. */
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0)) {
        printf("agentmeter %s\n", AM_VERSION);
        return 0;
    }
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                     strcmp(argv[1], "help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "validate") == 0) {
        if (parse_cli(argc, argv, 2, &cli) != 0) {
            return 2;
        }
        return cmd_validate(&cli);
    }
    if (argc > 1 && strcmp(argv[1], "components") == 0) {
        return cmd_components(argc > 2 && strcmp(argv[2], "--markdown") == 0);
    }
    if (argc > 1 && strcmp(argv[1], "ratecard") == 0) {
        if (am_ratecard_cli == NULL) {
            fprintf(stderr, "agentmeter: built without the ratecard processor\n");
            return 2;
        }
        return am_ratecard_cli(argc - 2, argv + 2);
    }
    if (parse_cli(argc, argv, 1, &cli) != 0) {
        return 2;
    }
    return cmd_run(&cli);
}
