/*
 * otlp_frame.c - the gRPC length-prefixed message framing of a unary call.
 *
 * A request body is "Length-Prefixed-Message": a 1-byte compressed flag, a
 * 4-byte big-endian length, then that many bytes.  The body may arrive in
 * DATA frames of any size, split anywhere, so this is a small state machine
 * fed with whatever bytes came in.  It is kept apart from the HTTP/2 code so
 * unit tests and the fuzzer can drive it without sockets.
 *
 * Bounds: the length is checked against the limit as soon as the 5-byte
 * prefix is complete, before any message byte is stored; the buffer then
 * grows with the bytes that actually arrive (a client announcing 16 MiB and
 * sending nothing costs nothing); a shared budget caps what all streams of a
 * server buffer together.  Unary means exactly one message: a second prefix
 * is a protocol violation (INTERNAL, as grpc-go answers it).
 */
#include <stdio.h>
#include <string.h>

#include "otlp_internal.h"

void am__otlp_frame_init(am__otlp_frame_t *frame, size_t max_len)
{
    memset(frame, 0, sizeof(*frame));
    frame->max_len = max_len;
}

void am__otlp_frame_free(am__otlp_frame_t *frame)
{
    if (frame->budget_used != NULL) {
        *frame->budget_used -= frame->charged;
    }
    frame->charged = 0;
    am_free(frame->msg);
    frame->msg = NULL;
    frame->msg_cap = 0;
    frame->msg_have = 0;
}

/* Make room for `extra` more message bytes, charging the budget. */
static int frame_reserve(am__otlp_frame_t *frame, size_t extra, char *err, size_t err_size)
{
    size_t need = frame->msg_have + extra;
    if (need <= frame->msg_cap) {
        return 0;
    }
    size_t cap = frame->msg_cap == 0 ? 16384 : frame->msg_cap * 2;
    if (cap < need) {
        cap = need;
    }
    if (cap > frame->msg_len) {
        cap = frame->msg_len;
    }
    size_t growth = cap - frame->msg_cap;
    if (frame->budget_used != NULL && *frame->budget_used + growth > frame->budget_max) {
        snprintf(err, err_size, "receiver busy: too many request bytes in flight, retry later");
        return AM__GRPC_UNAVAILABLE;
    }
    uint8_t *grown = am_realloc(frame->msg, cap);
    if (grown == NULL) {
        snprintf(err, err_size, "out of memory buffering the request");
        return AM__GRPC_UNAVAILABLE;
    }
    frame->msg = grown;
    frame->msg_cap = cap;
    if (frame->budget_used != NULL) {
        *frame->budget_used += growth;
        frame->charged += growth;
    }
    return 0;
}

int am__otlp_frame_feed(am__otlp_frame_t *frame, const uint8_t *data, size_t len, char *err,
                        size_t err_size)
{
    while (len > 0) {
        if (frame->n_messages > 0) {
            snprintf(err, err_size, "more than one request message in a unary call");
            return AM__GRPC_INTERNAL;
        }
        if (frame->prefix_len < sizeof(frame->prefix)) {
            size_t take = AM_MIN(len, sizeof(frame->prefix) - frame->prefix_len);
            memcpy(frame->prefix + frame->prefix_len, data, take);
            frame->prefix_len += take;
            data += take;
            len -= take;
            if (frame->prefix_len < sizeof(frame->prefix)) {
                return 0;
            }
            if (frame->prefix[0] > 1) {
                snprintf(err, err_size, "invalid compressed flag %u in the message prefix",
                         frame->prefix[0]);
                return AM__GRPC_INTERNAL;
            }
            frame->compressed = frame->prefix[0] == 1;
            frame->msg_len = (uint32_t)frame->prefix[1] << 24 | (uint32_t)frame->prefix[2] << 16 |
                             (uint32_t)frame->prefix[3] << 8 | (uint32_t)frame->prefix[4];
            if (frame->msg_len > frame->max_len) {
                snprintf(err, err_size, "message of %u bytes exceeds the limit of %zu bytes",
                         frame->msg_len, frame->max_len);
                return AM__GRPC_RESOURCE_EXHAUSTED;
            }
            if (frame->msg_len == 0) {
                frame->n_messages++;
                continue;
            }
        }
        size_t take = AM_MIN(len, (size_t)frame->msg_len - frame->msg_have);
        int rc = frame_reserve(frame, take, err, err_size);
        if (rc != 0) {
            return rc;
        }
        if (take > 0) {
            memcpy(frame->msg + frame->msg_have, data, take);
        }
        frame->msg_have += take;
        data += take;
        len -= take;
        if (frame->msg_have == frame->msg_len) {
            frame->n_messages++;
        }
    }
    return 0;
}

int am__otlp_frame_finish(am__otlp_frame_t *frame, char *err, size_t err_size)
{
    if (frame->n_messages == 1) {
        return 0;
    }
    if (frame->prefix_len == 0) {
        snprintf(err, err_size, "request ended without a message");
    } else if (frame->prefix_len < sizeof(frame->prefix)) {
        snprintf(err, err_size, "truncated message prefix: %zu of 5 bytes", frame->prefix_len);
    } else {
        snprintf(err, err_size, "truncated message: %zu of %u bytes", frame->msg_have,
                 frame->msg_len);
    }
    return AM__GRPC_INTERNAL;
}

void am__otlp_grpc_message_encode(const char *msg, char *out, size_t out_size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (out_size == 0) {
        return;
    }
    for (const unsigned char *p = (const unsigned char *)msg; *p != '\0'; p++) {
        bool plain = *p >= 0x20 && *p <= 0x7e && *p != '%';
        size_t need = plain ? 1 : 3;
        if (o + need >= out_size) {
            break;
        }
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
}

int am__otlp_frame_unwrap(const am__otlp_frame_t *frame, am__otlp_encoding_t encoding,
                          const uint8_t **out, size_t *out_len, uint8_t **owned, char *err,
                          size_t err_size)
{
    *owned = NULL;
    if (!frame->compressed) {
        *out = frame->msg;
        *out_len = frame->msg_have;
        return 0;
    }
    if (encoding == AM__OTLP_ENC_IDENTITY) {
        snprintf(err, err_size, "compressed flag set but grpc-encoding is identity or absent");
        return AM__GRPC_INTERNAL;
    }
    size_t len = 0;
    int rc = am__otlp_decompress(encoding, frame->msg, frame->msg_have, frame->max_len, owned, &len,
                                 err, err_size);
    if (rc != 0) {
        return rc;
    }
    *out = *owned;
    *out_len = len;
    return 0;
}
