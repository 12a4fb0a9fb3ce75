/*
 * am_log.h - leveled logging to stderr, `console` or `json` encoding.
 *
 * Thread-safe: each line is formatted into a local buffer and written with a
 * single write(2), so lines from several threads never interleave.
 */
#ifndef AM_LOG_H
#define AM_LOG_H

#include "am_common.h"

typedef enum am_log_level {
    AM_LOG_DEBUG = 0,
    AM_LOG_INFO = 1,
    AM_LOG_WARN = 2,
    AM_LOG_ERROR = 3,
    AM_LOG_OFF = 4,
} am_log_level_t;

int am_log_set_level_name(const char *name);  /* "debug|info|warn|error" */
void am_log_set_level(am_log_level_t level);
int am_log_set_encoding(const char *name);    /* "console|json" */
bool am_log_enabled(am_log_level_t level);
void am_log(am_log_level_t level, const char *component, const char *fmt, ...) AM_PRINTF(3, 4);

#define AM_DEBUG(comp, ...)                                    \
    do {                                                       \
        if (am_log_enabled(AM_LOG_DEBUG)) {                    \
            am_log(AM_LOG_DEBUG, (comp), __VA_ARGS__);         \
        }                                                      \
    } while (0)
#define AM_INFO(comp, ...) am_log(AM_LOG_INFO, (comp), __VA_ARGS__)
#define AM_WARN(comp, ...) am_log(AM_LOG_WARN, (comp), __VA_ARGS__)
#define AM_ERROR(comp, ...) am_log(AM_LOG_ERROR, (comp), __VA_ARGS__)

#endif
