/*
 * am_log.c - see am_log.h.  JSON lines follow the Collector's zap layout
 * closely enough for log shippers: {"level","ts","caller"/"component","msg"}.
 */
#include "am_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = AM_LOG_INFO;
static atomic_bool log_json = false;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void am_log_set_level(am_log_level_t level)
{
    atomic_store(&log_level, (int)level);
}

int am_log_set_level_name(const char *name)
{
    for (size_t i = 0; i < AM_ARRAY_SIZE(level_names); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            am_log_set_level((am_log_level_t)i);
            return 0;
        }
    }
    if (strcmp(name, "warning") == 0) {
        am_log_set_level(AM_LOG_WARN);
        return 0;
    }
    return AM_EINVAL;
}

int am_log_set_encoding(const char *name)
{
    if (strcmp(name, "console") == 0) {
        atomic_store(&log_json, false);
        return 0;
    }
    if (strcmp(name, "json") == 0) {
        atomic_store(&log_json, true);
        return 0;
    }
    return AM_EINVAL;
}

bool am_log_enabled(am_log_level_t level)
{
    return (int)level >= atomic_load(&log_level);
}

/* Append s to buf as JSON string content (no quotes). */
static size_t json_escape(char *buf, size_t pos, size_t cap, const char *s)
{
    for (; *s != '\0' && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)c;
        } else if (c < 0x20) {
            pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", c);
        } else {
            buf[pos++] = (char)c;
        }
    }
    return pos;
}

void am_log(am_log_level_t level, const char *component, const char *fmt, ...)
{
    if (!am_log_enabled(level)) {
        return;
    }
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    char ts[AM_TIME_STRLEN];
    am_time_format(am_now_unix_nano(), ts);
    char line[4096];
    size_t pos;
    if (atomic_load(&log_json)) {
        pos = (size_t)snprintf(line, sizeof(line), "{\"level\":\"%s\",\"ts\":\"%s\",\"component\":\"",
                               level_names[level], ts);
        pos = json_escape(line, pos, sizeof(line) - 16, component != NULL ? component : "");
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "\",\"msg\":\"");
        pos = json_escape(line, pos, sizeof(line) - 8, msg);
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "\"}\n");
    } else {
        pos = (size_t)snprintf(line, sizeof(line), "%s\t%s\t%s\t%s\n", ts, level_names[level],
                               component != NULL ? component : "-", msg);
    }
    if (pos >= sizeof(line)) {
        pos = sizeof(line) - 1;
        line[pos - 1] = '\n';
    }
    ssize_t unused = write(STDERR_FILENO, line, pos);
    AM_UNUSED(unused);
}
