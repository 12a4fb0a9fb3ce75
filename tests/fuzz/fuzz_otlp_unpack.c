/*
 * fuzz_otlp_unpack.c - differential libFuzzer target: the hand-written
 * ExportTraceServiceRequest decoder (core/am_otlp_unpack.c) against
 * protobuf-c's generated unpack, on the same bytes.
 *
 * Aborts when the equivalence the decoder promises breaks:
 *   - ours returns 0 but protobuf-c refuses the bytes;
 *   - ours returns 0 and packing the two results gives different bytes
 *     (protobuf-c packs in field-number order, so this compares every
 *     field, every count and the presence of every sub-message);
 *   - protobuf-c refuses and ours returns anything but AM_EINVAL/AM_ENOTSUP;
 *   - ours fails but allocated from the arena first (it validates the whole
 *     input before its one allocation), or returns an unknown code.
 * AM_ENOTSUP otherwise allows anything: protobuf-c decodes those.
 * Seeds: tests/fuzz/corpus/otlp_unpack/ (valid requests of every field and
 * value type, agent traffic, nested values).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "am_arena.h"
#include "am_otlp.h"
#include "am_otlp_unpack.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *pack(const ProtobufCMessage *msg, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *out = malloc(*len + 1);
    if (out == NULL || protobuf_c_message_pack(msg, out) != *len) {
        abort();
    }
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    am_arena_t *ours_arena = am_arena_new(size * 2 + 1024);
    am_arena_t *theirs_arena = am_arena_new(size * 2 + 1024);
    if (ours_arena == NULL || theirs_arena == NULL) {
        abort();
    }
    am_pb_export_req_t *ours = NULL;
    int rc = am_otlp_unpack_traces(ours_arena, data, size, &ours);
    ProtobufCAllocator alloc = am_arena_allocator(theirs_arena);
    am_pb_export_req_t *theirs =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            &alloc, size, data);
    if (rc == 0) {
        if (ours == NULL || theirs == NULL || !protobuf_c_message_check(&ours->base)) {
            abort();
        }
        size_t ours_len;
        size_t theirs_len;
        uint8_t *ours_packed = pack(&ours->base, &ours_len);
        uint8_t *theirs_packed = pack(&theirs->base, &theirs_len);
        if (ours_len != theirs_len || memcmp(ours_packed, theirs_packed, ours_len) != 0) {
            abort();
        }
        free(ours_packed);
        free(theirs_packed);
    } else {
        if (ours != NULL || (rc != AM_EINVAL && rc != AM_ENOTSUP && rc != AM_ENOMEM)) {
            abort();
        }
        if (rc != AM_ENOMEM && am_arena_used(ours_arena) != 0) {
            abort(); /* failed after allocating: the two walks disagree */
        }
    }
    am_arena_unref(ours_arena);
    am_arena_unref(theirs_arena);
    return 0;
}
