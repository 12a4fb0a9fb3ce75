/*
 * am_otlp.h - short names for the protobuf-c types generated from proto/.
 *
 * The generated names (Opentelemetry__Proto__Trace__V1__Span ...) are exact
 * but unreadable; every file uses these aliases instead.
 */
#ifndef AM_OTLP_H
#define AM_OTLP_H

#include "common.pb-c.h"
#include "resource.pb-c.h"
#include "trace.pb-c.h"
#include "trace_service.pb-c.h"

typedef Opentelemetry__Proto__Common__V1__AnyValue am_pb_anyvalue_t;
typedef Opentelemetry__Proto__Common__V1__ArrayValue am_pb_arrayvalue_t;
typedef Opentelemetry__Proto__Common__V1__KeyValueList am_pb_kvlist_t;
typedef Opentelemetry__Proto__Common__V1__KeyValue am_pb_keyvalue_t;
typedef Opentelemetry__Proto__Common__V1__InstrumentationScope am_pb_scope_t;
typedef Opentelemetry__Proto__Resource__V1__Resource am_pb_resource_t;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans am_pb_resource_spans_t;
typedef Opentelemetry__Proto__Trace__V1__ScopeSpans am_pb_scope_spans_t;
typedef Opentelemetry__Proto__Trace__V1__Span am_pb_span_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Event am_pb_span_event_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Link am_pb_span_link_t;
typedef Opentelemetry__Proto__Trace__V1__Status am_pb_status_t;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest am_pb_export_req_t;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse am_pb_export_resp_t;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTracePartialSuccess am_pb_partial_t;

#define AM_PB_VALUE(name) OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_##name
#define AM_PB_STATUS_ERROR OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR

#endif
