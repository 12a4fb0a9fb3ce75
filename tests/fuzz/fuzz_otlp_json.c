/*
 * fuzz_otlp_json.c - libFuzzer target for the OTLP/JSON traces codec.
 *
 * Any input must decode or fail cleanly (AM_EINVAL with a message, *out
 * NULL).  A request that decodes must also hold up everywhere the program
 * takes it next:
 *   - protobuf-c accepts it (message_check, pack, unpack of the packed bytes),
 *     and the unpacked copy encodes to the same JSON, so the JSON decoder and
 *     protobuf-c's unpack really produce interchangeable requests;
 *   - our own encoding decodes again and re-encodes to identical bytes, so
 *     the Kafka exporter's otlp_json output is always readable by us.
 * Seeds: tests/fuzz/corpus/otlp_json/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "am_arena.h"
#include "am_otlp_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *encode_or_die(const am_pb_export_req_t *req, size_t *len)
{
    char *json = NULL;
    int rc = am_otlp_json_encode_traces(req, &json, len);
    if (rc != 0 || json == NULL || strlen(json) != *len) {
        abort();
    }
    return json;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[AM_OTLP_JSON_ERR_SIZE];
    am_arena_t *arena = am_arena_new(size * 2);
    am_arena_t *arena2 = NULL;
    char *json1 = NULL;
    char *json2 = NULL;
    uint8_t *packed = NULL;
    if (arena == NULL) {
        return 0;
    }
    am_pb_export_req_t *req = NULL;
    int rc = am_otlp_json_decode_traces(arena, (const char *)data, size, &req, err, sizeof(err));
    if (rc != 0) {
        if (rc != AM_EINVAL || req != NULL || err[0] == '\0') {
            abort();
        }
        goto out;
    }
    if (req == NULL || !protobuf_c_message_check(&req->base)) {
        abort();
    }

    size_t len1;
    json1 = encode_or_die(req, &len1);

    /* Through protobuf-c and back: same JSON. */
    size_t packed_len = protobuf_c_message_get_packed_size(&req->base);
    packed = malloc(packed_len + 1);
    if (packed == NULL || protobuf_c_message_pack(&req->base, packed) != packed_len) {
        abort();
    }
    ProtobufCAllocator alloc = am_arena_allocator(arena);
    am_pb_export_req_t *unpacked =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            &alloc, packed_len, packed);
    if (unpacked == NULL) {
        abort();
    }
    size_t len_unpacked;
    char *json_unpacked = encode_or_die(unpacked, &len_unpacked);
    if (len_unpacked != len1 || memcmp(json_unpacked, json1, len1) != 0) {
        abort();
    }
    am_free(json_unpacked);

    /* Our own output decodes, and re-encodes to the same bytes. */
    arena2 = am_arena_new(len1 * 2);
    if (arena2 == NULL) {
        goto out;
    }
    am_pb_export_req_t *again = NULL;
    if (am_otlp_json_decode_traces(arena2, json1, len1, &again, err, sizeof(err)) != 0) {
        abort();
    }
    size_t len2;
    json2 = encode_or_die(again, &len2);
    if (len2 != len1 || memcmp(json1, json2, len1) != 0) {
        abort();
    }

out:
    free(packed);
    am_free(json1);
    am_free(json2);
    am_arena_unref(arena2);
    am_arena_unref(arena);
    return 0;
}
