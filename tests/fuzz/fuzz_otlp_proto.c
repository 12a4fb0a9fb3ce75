/*
 * fuzz_otlp_proto.c - libFuzzer target for OTLP protobuf decoding: the
 * pre-scan, protobuf-c unpack into an arena, and span filtering.
 *
 * Invariants checked beyond "no crash, no leak":
 *   - the pre-scan is the gate: whatever it accepts, protobuf-c either
 *     unpacks or refuses, and whatever is unpacked satisfies the same limits
 *     when checked on the structs (am__otlp_check_limits, the JSON path's
 *     check), so the two checks agree on every input;
 *   - decoded memory stays within the expansion bound the pre-scan promises;
 *   - a decoded request packs again (protobuf-c message_check + pack) and
 *     after dropping invalid spans every remaining span has 16/8-byte ids.
 * Seeds: tests/fuzz/corpus/otlp_proto/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "receivers/otlp/otlp_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    am__otlp_limits_t limits = {
        .max_msg_bytes = 1u << 20,
        .max_depth = 8,
        .max_spans = 500,
        .max_list_entries = 64,
    };
    char err[512] = "";
    am_arena_t *arena = am_arena_new(size * 2 + 1024);
    if (arena == NULL) {
        return 0;
    }
    am_pb_export_req_t *req = NULL;
    int code = am__otlp_decode_proto(arena, data, size, &limits, &req, err, sizeof(err));
    if (code != 0) {
        if (req != NULL || err[0] == '\0') {
            abort();
        }
        am_arena_unref(arena);
        return 0;
    }
    if (am__otlp_check_limits(req, &limits, err, sizeof(err)) != 0) {
        abort(); /* the pre-scan let through what the struct check refuses */
    }
    if (am_arena_used(arena) > (uint64_t)size * AM__OTLP_MAX_EXPANSION + (2u << 20)) {
        abort();
    }
    if (!protobuf_c_message_check(&req->base)) {
        abort();
    }
    size_t packed_len = protobuf_c_message_get_packed_size(&req->base);
    uint8_t *packed = malloc(packed_len + 1);
    if (packed == NULL || protobuf_c_message_pack(&req->base, packed) != packed_len) {
        abort();
    }
    free(packed);
    char msg[512];
    am__otlp_drop_invalid_spans(req, msg, sizeof(msg));
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        for (size_t s = 0; s < req->resource_spans[r]->n_scope_spans; s++) {
            const am_pb_scope_spans_t *ss = req->resource_spans[r]->scope_spans[s];
            for (size_t i = 0; i < ss->n_spans; i++) {
                if (ss->spans[i]->trace_id.len != 16 || ss->spans[i]->span_id.len != 8) {
                    abort();
                }
            }
        }
    }
    am_arena_unref(arena);
    return 0;
}
