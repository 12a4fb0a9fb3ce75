/*
 * fuzz_grpc_frame.c - libFuzzer target for the OTLP/gRPC request path
 * without sockets: framing, decompression and decoding, exactly as a
 * stream runs them (otlp_grpc.c stream_finish).
 *
 * Input layout: byte 0 picks the grpc-encoding (identity, gzip, deflate,
 * zstd) and byte 1 the DATA chunk size the body is split into (1..256
 * bytes, so prefixes and messages get split everywhere); the rest is the
 * HTTP/2 request body.  Whatever the bytes, every step must either succeed
 * or return a gRPC code with a message, stay within its bounds (a message
 * never exceeds max_len, before or after decompression) and free
 * everything (ASan/LSan check that).
 * Seeds: tests/fuzz/corpus/grpc_frame/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "receivers/otlp/otlp_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LEN (256u * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const am__otlp_encoding_t encodings[] = {
        AM__OTLP_ENC_IDENTITY,
        AM__OTLP_ENC_GZIP,
        AM__OTLP_ENC_DEFLATE,
        AM__OTLP_ENC_ZSTD,
    };
    if (size < 2) {
        return 0;
    }
    am__otlp_encoding_t encoding = encodings[data[0] % 4];
    size_t chunk = (size_t)data[1] + 1;
    data += 2;
    size -= 2;

    size_t budget_used = 0;
    am__otlp_frame_t frame;
    am__otlp_frame_init(&frame, MAX_LEN);
    frame.budget_used = &budget_used;
    frame.budget_max = 2 * MAX_LEN;
    char err[512];
    int code = 0;
    for (size_t off = 0; off < size && code == 0; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        code = am__otlp_frame_feed(&frame, data + off, n, err, sizeof(err));
    }
    if (code == 0) {
        code = am__otlp_frame_finish(&frame, err, sizeof(err));
    }
    if (frame.msg_have > MAX_LEN || budget_used != frame.charged) {
        abort();
    }
    if (code == 0) {
        const uint8_t *msg;
        size_t msg_len;
        uint8_t *owned = NULL;
        code = am__otlp_frame_unwrap(&frame, encoding, &msg, &msg_len, &owned, err, sizeof(err));
        if (code == 0) {
            if (msg_len > MAX_LEN) {
                abort();
            }
            am__otlp_limits_t limits = {
                .max_msg_bytes = MAX_LEN,
                .max_depth = 32,
                .max_spans = 1000,
                .max_list_entries = 128,
            };
            am_arena_t *arena = am_arena_new(msg_len * 2 + 1024);
            if (arena != NULL) {
                am_pb_export_req_t *req = NULL;
                if (am__otlp_decode_proto(arena, msg, msg_len, &limits, &req, err, sizeof(err)) ==
                    0) {
                    char partial[512];
                    am__otlp_drop_invalid_spans(req, partial, sizeof(partial));
                }
                am_arena_unref(arena);
            }
        } else if (owned != NULL) {
            abort(); /* a failed unwrap owns nothing */
        }
        am_free(owned);
    }
    if (code != 0 && err[0] == '\0') {
        abort(); /* every refusal says why */
    }
    am__otlp_frame_free(&frame);
    if (budget_used != 0) {
        abort();
    }
    return 0;
}
