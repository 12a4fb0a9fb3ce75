/*
 * fuzz_config.c - libFuzzer target for the configuration path an operator's
 * file takes: YAML -> node tree (env expansion, bounds) -> every
 * component's option table -> pipeline graph checks.
 *
 * Invariant: any input either builds a service or yields at least one error
 * message that starts with the file name; never a crash, a leak or UB.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "am_config.h"
#include "am_service.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    am_errors_t errs = {0};
    am_config_t *config = am_config_load_buffer("fuzz.yaml", (const char *)data, size, &errs);
    am_service_t *service = NULL;
    if (config != NULL) {
        am_service_opts_t opts = {.shards = 1, .skip_telemetry = true};
        service = am_service_build(config, &opts, &errs);
    }
    if (service == NULL && errs.count == 0) {
        abort(); /* a rejected config must say why */
    }
    for (size_t i = 0; i < errs.count; i++) {
        if (strncmp(errs.msgs[i], "fuzz.yaml", 9) != 0 && strstr(errs.msgs[i], "memory") == NULL) {
            abort(); /* every message names the file */
        }
    }
    am_service_free(service);
    am_errors_clear(&errs);
    return 0;
}
