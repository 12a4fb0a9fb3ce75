/*
 * memory_limiter: data is refused (AM_RETRY, so clients retry) while the
 * bytes held in request arenas are above limit - spike, and flows again as
 * soon as they are released, whatever RSS glibc keeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_component.h"
#include "am_config.h"

extern const am_component_ops_t am_processor_memory_limiter_ops;

static int passed;

static am_status_t count_consume(am_consumer_t *self, am_batch_t *batch)
{
    (void)self;
    (void)batch;
    passed++;
    return AM_OK;
}

static void *make_limiter(const char *yaml, uv_loop_t *loop, am_consumer_t *next)
{
    const am_component_ops_t *ops = &am_processor_memory_limiter_ops;
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_buffer("t.yaml", yaml, strlen(yaml), &errs);
    assert_non_null(config);
    void *cfg = calloc(1, ops->config_size);
    assert_int_equal(am_options_parse(ops->options, cfg, am_config_root(config), "p", &errs), 0);
    am_create_params_t params = {.id = "memory_limiter", .config = cfg, .loop = loop, .next = next};
    void *inst = NULL;
    assert_int_equal(ops->create(&params, &inst), 0);
    assert_int_equal(ops->start(inst), 0);
    am_options_free(ops->options, cfg);
    free(cfg);
    am_config_free(config);
    return inst;
}

static void test_refuses_above_soft_limit_and_recovers(void **state)
{
    (void)state;
    const am_component_ops_t *ops = &am_processor_memory_limiter_ops;
    uv_loop_t loop;
    uv_loop_init(&loop);
    am_consumer_t next = {.consume = count_consume};
    /* Hard limit far above any test RSS; soft limit = 64 - 32 = 32 MiB of
     * data in flight. */
    void *lim = make_limiter("limit_mib: 100000\nspike_limit_mib: 99968\n", &loop, &next);
    am_batch_t *batch = am_batch_new(AM_SIGNAL_TRACES);
    passed = 0;
    assert_int_equal(ops->consume(lim, batch), AM_OK);
    assert_int_equal(passed, 1);

    /* Hold 40 MiB in request arenas: above the soft limit. */
    am_arena_t *held = am_arena_new(40u << 20);
    assert_int_equal(ops->consume(lim, batch), AM_RETRY);
    assert_int_equal(passed, 1);

    /* Released: data flows again at once. */
    am_arena_unref(held);
    assert_int_equal(ops->consume(lim, batch), AM_OK);
    assert_int_equal(passed, 2);

    am_batch_unref(batch);
    ops->shutdown(lim);
    uv_run(&loop, UV_RUN_DEFAULT);
    ops->destroy(lim);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_spike_must_be_below_limit(void **state)
{
    (void)state;
    const am_component_ops_t *ops = &am_processor_memory_limiter_ops;
    const char *yaml = "limit_mib: 64\nspike_limit_mib: 64\n";
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_buffer("t.yaml", yaml, strlen(yaml), &errs);
    void *cfg = calloc(1, ops->config_size);
    am_options_parse(ops->options, cfg, am_config_root(config), "processors.memory_limiter", &errs);
    ops->validate(cfg, am_config_root(config), "processors.memory_limiter", &errs);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.msgs[0], "t.yaml:1"));
    assert_non_null(strstr(errs.msgs[0], "spike_limit_mib"));
    am_errors_clear(&errs);
    am_options_free(ops->options, cfg);
    free(cfg);
    am_config_free(config);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refuses_above_soft_limit_and_recovers),
        cmocka_unit_test(test_spike_must_be_below_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
