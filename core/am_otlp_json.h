/*
 * am_otlp_json.h - OTLP/JSON for traces: decode export requests into
 * protobuf-c structs, encode requests and responses back to JSON.
 *
 * OTLP/HTTP carries the same ExportTraceServiceRequest either as protobuf or
 * as JSON (Content-Type application/json).  The JSON form follows the proto3
 * JSON mapping with the OTLP exceptions: keys are lowerCamelCase (the
 * snake_case proto names are accepted too), trace and span ids are hex
 * strings rather than base64, enums are integers (names are accepted), and
 * 64-bit integers are decimal strings (numbers are accepted).
 *
 * The decoder produces exactly what protobuf-c's unpack would: every message
 * initialised by its descriptor, n_xxx counts, absent submessages NULL,
 * absent strings protobuf_c_empty_string, bytes as ProtobufCBinaryData, the
 * AnyValue oneof through value_case.  The rest of the program cannot tell
 * the two decoders apart, and protobuf_c_message_pack() accepts the result.
 *
 * Limits: the caller bounds the input size; this codec bounds nesting.  JSON
 * containers may nest AM_OTLP_JSON_MAX_NESTING deep, AnyValues
 * AM_OTLP_MAX_ANYVALUE_DEPTH deep (an attribute's value is level 1, each
 * arrayValue/kvlistValue step adds one).  Array lengths are bounded by the
 * input size.
 *
 * Memory: json-c first builds a DOM with plain malloc (outside the arena and
 * outside the am_malloc failure hooks), freed before the decoder returns.
 * Measured with json-c 0.16: about 26x the input size for real SDK payloads,
 * and up to about 260x for hostile input made only of empty objects ("{},"
 * costs ~780 bytes).  Receivers must size their JSON body limit with that in
 * mind (a 16 MiB body of "{}," briefly needs ~4 GiB).
 */
#ifndef AM_OTLP_JSON_H
#define AM_OTLP_JSON_H

#include "am_arena.h"
#include "am_common.h"
#include "am_otlp.h"

/* AnyValue levels: an attribute value is level 1; arrayValue/kvlistValue add one. */
#define AM_OTLP_MAX_ANYVALUE_DEPTH 32
/* JSON container nesting: room for AM_OTLP_MAX_ANYVALUE_DEPTH levels of
 * kvlistValue (4 containers each) under an event attribute (12 containers),
 * plus headroom, so a too-deep AnyValue gets the precise AnyValue error. */
#define AM_OTLP_JSON_MAX_NESTING 160
/* A buffer this size holds any error message the decoder writes in full. */
#define AM_OTLP_JSON_ERR_SIZE 2304

/*
 * Decode an OTLP/JSON ExportTraceServiceRequest of `len` bytes (no NUL
 * needed; the whole input must be one JSON object, optionally surrounded by
 * whitespace).
 *
 * On success returns 0 and sets *out to a request allocated entirely in
 * `arena`: it stays valid while the arena lives and is never freed on its
 * own.  Unknown fields are ignored; null means the field's default; when a
 * key repeats (or a field appears under both names) the last one wins.  Ids
 * are kept as given: a 15-byte trace id is not a decode error (the receiver
 * rejects bad id lengths per span).  Every string must be valid UTF-8 (no
 * overlong forms, surrogates or code points above U+10FFFF), as proto3
 * requires.  A string holding \u0000 is stored whole, but C readers (and
 * protobuf-c's pack) see it end at the NUL, exactly as for a protobuf
 * request carrying the same bytes.
 *
 * On failure sets *out to NULL and returns AM_EINVAL (malformed input: err
 * names the field path and the problem, e.g.
 * "resourceSpans[0].scopeSpans[1].spans[3].traceId: invalid hex: ...") or
 * AM_ENOMEM.  What the decoder had already allocated stays in the arena until
 * the arena dies.  err may be NULL; messages are truncated to err_size.
 *
 * Thread-safety: as the arena (one thread allocates from it at a time).
 */
int am_otlp_json_decode_traces(am_arena_t *arena, const char *json, size_t len,
                               am_pb_export_req_t **out, char *err, size_t err_size);

/*
 * Encode a request as compact OTLP/JSON: lowerCamelCase keys, hex ids,
 * 64-bit integers as strings, enums as integers, default-valued fields
 * omitted (present submessages are kept, even when empty, so presence
 * survives a round trip).  Doubles are printed in the shortest form that
 * reads back to the same bits; NaN and infinities become "NaN", "Infinity"
 * and "-Infinity".  Strings are escaped; invalid UTF-8 becomes U+FFFD, so the
 * output is always valid JSON.
 *
 * On success returns 0, sets *out to an am_malloc'd NUL-terminated buffer
 * (the caller frees it with am_free) and *out_len to its length without the
 * NUL.  On failure returns AM_ENOMEM, or AM_EINVAL for NULL arguments or an
 * AnyValue nested deeper than AM_OTLP_MAX_ANYVALUE_DEPTH (what the decoder
 * would reject), and sets *out to NULL.
 */
int am_otlp_json_encode_traces(const am_pb_export_req_t *req, char **out, size_t *out_len);

/*
 * Encode an ExportTraceServiceResponse: {"partialSuccess":{"rejectedSpans":
 * "1","errorMessage":"..."}}, or {} when resp is NULL or carries no partial
 * success (absent, or zero rejected spans and no message).  Same ownership
 * and errors as am_otlp_json_encode_traces().
 */
int am_otlp_json_encode_response(const am_pb_export_resp_t *resp, char **out, size_t *out_len);

#endif
