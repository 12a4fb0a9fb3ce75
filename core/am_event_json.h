/*
 * am_event_json.h - the value rules every cost event follows (ARCHITECTURE.md
 * §9), in one place: money is a JSON number printed exactly from its
 * fixed-point value (at most 9 decimals, never a double's noise), times are
 * RFC 3339 UTC strings, ratios print with 15 significant digits.  Each
 * returns a new json-c object (NULL on allocation failure).
 */
#ifndef AM_EVENT_JSON_H
#define AM_EVENT_JSON_H

#include <json-c/json.h>

#include "am_common.h"

json_object *am_json_money(am_money_t value);
json_object *am_json_time(uint64_t unix_nano);
json_object *am_json_ratio(double value);

#endif
