/*
 * fuzz_ratecard.c - libFuzzer target for rate card files (ARCHITECTURE.md
 * §7): YAML, prices parsed exactly, glob/regex matchers compiled, tiers,
 * versions and overrides.
 *
 * Invariant: a card either loads (and then prices a sample span without
 * crashing) or is rejected with at least one "file:line" error.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "processors/ratecard/ratecard_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    am_errors_t errs = {0};
    am__ratecard_t *card = am__ratecard_load_buffer("card.yaml", (const char *)data, size, &errs);
    if (card == NULL && errs.count == 0) {
        abort();
    }
    if (card != NULL) {
        (void)am__ratecard_count_models(card);
        am__ratecard_free(card);
    }
    am_errors_clear(&errs);
    return 0;
}
