/*
 * am_otlp_unpack.h - a decoder for the one hot message, OTLP
 * ExportTraceServiceRequest, into protobuf-c's own structs (am_otlp.h).
 *
 * The result is interchangeable with what protobuf-c's
 * ..._export_trace_service_request__unpack() gives: same types, every struct
 * initialised as its generated ..._INIT macro does, so protobuf-c's pack,
 * get_packed_size and check work on it, and packing it gives the same bytes
 * as packing protobuf-c's result for the same input.  It only costs less:
 * see the top of am_otlp_unpack.c for why and how.
 */
#ifndef AM_OTLP_UNPACK_H
#define AM_OTLP_UNPACK_H

#include <stddef.h>
#include <stdint.h>

#include "am_arena.h"
#include "am_otlp.h"

/* AnyValue nesting this decoder follows (an attribute's value is level 1);
 * a deeper value is AM_EINVAL even though protobuf-c would accept it. */
#define AM_OTLP_UNPACK_MAX_DEPTH 128

/* Decode the wire bytes [buf, buf+len) of an ExportTraceServiceRequest into
 * `arena`.  Returns:
 *   0           *out is the request; it and everything it points to live in
 *               the arena (valid until the arena dies; nothing to free), or
 *               are static (interned attribute keys, protobuf_c_empty_string).
 *               The input buffer may be freed at once.
 *   AM_EINVAL   malformed, or not this schema (the caller reports
 *               INVALID_ARGUMENT), or values nested deeper than
 *               AM_OTLP_UNPACK_MAX_DEPTH;
 *   AM_ENOMEM   out of memory (the arena, or the scratch tape);
 *   AM_ENOTSUP  valid protobuf of a shape this decoder leaves to protobuf-c
 *               (unknown fields, a singular message or a oneof given twice,
 *               a bool not sent as a varint): the caller falls back to
 *               protobuf-c's unpack.
 * On any non-zero return *out is NULL.  The whole input is validated before
 * the first allocation, so AM_EINVAL and AM_ENOTSUP leave the arena as it
 * was (the one exception, a decoder bug caught by its own consistency check,
 * also returns AM_ENOTSUP).
 * Strings are read-only: a KeyValue.key found in the intern table
 * (am_intern.h) is the interned pointer, and identical strings or bytes of
 * one request (a model name, a trace id) share one copy.  Replace a field's
 * pointer to change it; never write through it.
 * Scratch memory (am_malloc, freed before returning) is a string table of
 * up to ~1.3 MiB and a tape of ~4 bytes per decoded field.
 * Thread-safe as long as the arena is used by this thread only. */
int am_otlp_unpack_traces(am_arena_t *arena, const uint8_t *buf, size_t len,
                          am_pb_export_req_t **out);

#endif
