/*
 * am_event_json.c - see am_event_json.h.
 */
#include "am_event_json.h"

#include <stdio.h>

json_object *am_json_money(am_money_t value)
{
    char buf[AM_MONEY_STRLEN];
    return json_object_new_double_s(am_money_to_double(value), am_money_format(value, buf));
}

json_object *am_json_time(uint64_t unix_nano)
{
    char buf[AM_TIME_STRLEN];
    return json_object_new_string(am_time_format(unix_nano, buf));
}

json_object *am_json_ratio(double value)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%.15g", value);
    return json_object_new_double_s(value, buf);
}
