/*
 * am_selfmetrics.c - registry of agentmeter's own series.
 *
 * Registration is rare (component start) and takes a mutex; updates are
 * atomics on the series itself.  Families are rendered grouped by name so
 * HELP/TYPE appear once per family, as the text format requires.
 */
#include "am_selfmetrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef enum { SERIES_COUNTER, SERIES_GAUGE, SERIES_GAUGE_FN } series_kind_t;

typedef struct series {
    struct series *next;
    series_kind_t kind;
    char *name;
    char *help;
    char *labels;
    union {
        am_counter_t counter;
        am_gauge_t gauge;
    } u;
    am_gauge_fn fn;
    void *user_data;
} series_t;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static series_t *series_head;
static series_t *series_tail;
static am_counter_t sink_counter;
static am_gauge_t sink_gauge;
static uint64_t process_start_unix_nano;

static series_t *series_find(const char *name, const char *labels)
{
    for (series_t *s = series_head; s != NULL; s = s->next) {
        if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0 && s->fn == NULL) {
            return s;
        }
    }
    return NULL;
}

static series_t *series_add(series_kind_t kind, const char *name, const char *help,
                            const char *labels)
{
    series_t *s = am_calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->kind = kind;
    s->name = am_strdup(name);
    s->help = am_strdup(help != NULL ? help : "");
    s->labels = am_strdup(labels != NULL ? labels : "");
    if (s->name == NULL || s->help == NULL || s->labels == NULL) {
        am_free(s->name);
        am_free(s->help);
        am_free(s->labels);
        am_free(s);
        return NULL;
    }
    if (process_start_unix_nano == 0) {
        process_start_unix_nano = am_now_unix_nano();
    }
    /* Keep families together: insert after the last series of the same name. */
    series_t *after = NULL;
    for (series_t *it = series_head; it != NULL; it = it->next) {
        if (strcmp(it->name, name) == 0) {
            after = it;
        }
    }
    if (after != NULL) {
        s->next = after->next;
        after->next = s;
        if (series_tail == after) {
            series_tail = s;
        }
    } else if (series_tail != NULL) {
        series_tail->next = s;
        series_tail = s;
    } else {
        series_head = series_tail = s;
    }
    return s;
}

am_counter_t *am_selfmetrics_counter(const char *name, const char *help, const char *labels)
{
    pthread_mutex_lock(&registry_lock);
    series_t *s = series_find(name, labels != NULL ? labels : "");
    if (s == NULL) {
        s = series_add(SERIES_COUNTER, name, help, labels);
    }
    pthread_mutex_unlock(&registry_lock);
    return s != NULL ? &s->u.counter : &sink_counter;
}

am_gauge_t *am_selfmetrics_gauge(const char *name, const char *help, const char *labels)
{
    pthread_mutex_lock(&registry_lock);
    series_t *s = series_find(name, labels != NULL ? labels : "");
    if (s == NULL) {
        s = series_add(SERIES_GAUGE, name, help, labels);
    }
    pthread_mutex_unlock(&registry_lock);
    return s != NULL ? &s->u.gauge : &sink_gauge;
}

int am_selfmetrics_gauge_fn(const char *name, const char *help, const char *labels, am_gauge_fn fn,
                            void *user_data)
{
    pthread_mutex_lock(&registry_lock);
    series_t *s = series_add(SERIES_GAUGE_FN, name, help, labels);
    if (s != NULL) {
        s->fn = fn;
        s->user_data = user_data;
    }
    pthread_mutex_unlock(&registry_lock);
    return s != NULL ? 0 : AM_ENOMEM;
}

static void series_free(series_t *s)
{
    am_free(s->name);
    am_free(s->help);
    am_free(s->labels);
    am_free(s);
}

void am_selfmetrics_unregister(void *user_data)
{
    pthread_mutex_lock(&registry_lock);
    series_t *prev = NULL;
    series_t *s = series_head;
    while (s != NULL) {
        series_t *next = s->next;
        if (s->kind == SERIES_GAUGE_FN && s->user_data == user_data) {
            if (prev != NULL) {
                prev->next = next;
            } else {
                series_head = next;
            }
            if (series_tail == s) {
                series_tail = prev;
            }
            series_free(s);
        } else {
            prev = s;
        }
        s = next;
    }
    pthread_mutex_unlock(&registry_lock);
}

void am_selfmetrics_reset(void)
{
    pthread_mutex_lock(&registry_lock);
    series_t *s = series_head;
    while (s != NULL) {
        series_t *next = s->next;
        series_free(s);
        s = next;
    }
    series_head = series_tail = NULL;
    pthread_mutex_unlock(&registry_lock);
}

typedef struct text_buf {
    char *data;
    size_t len, cap;
    bool failed;
} text_buf_t;

static void buf_printf(text_buf_t *buf, const char *fmt, ...) AM_PRINTF(2, 3);

#include <stdarg.h>
static void buf_printf(text_buf_t *buf, const char *fmt, ...)
{
    if (buf->failed) {
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf->data + buf->len, buf->cap - buf->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            buf->failed = true;
            return;
        }
        if ((size_t)n < buf->cap - buf->len) {
            buf->len += (size_t)n;
            return;
        }
        size_t cap = buf->cap * 2 + (size_t)n + 1;
        char *grown = am_realloc(buf->data, cap);
        if (grown == NULL) {
            buf->failed = true;
            return;
        }
        buf->data = grown;
        buf->cap = cap;
    }
}

static void render_process(text_buf_t *buf)
{
    long rss_pages = 0;
    FILE *statm = fopen("/proc/self/statm", "r");
    if (statm != NULL) {
        long size_pages;
        if (fscanf(statm, "%ld %ld", &size_pages, &rss_pages) != 2) {
            rss_pages = 0;
        }
        fclose(statm);
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
                 (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
    buf_printf(buf,
               "# HELP agentmeter_process_resident_memory_bytes Resident set size.\n"
               "# TYPE agentmeter_process_resident_memory_bytes gauge\n"
               "agentmeter_process_resident_memory_bytes %ld\n"
               "# HELP agentmeter_process_cpu_seconds_total User and system CPU time.\n"
               "# TYPE agentmeter_process_cpu_seconds_total counter\n"
               "agentmeter_process_cpu_seconds_total %.3f\n"
               "# HELP agentmeter_process_start_time_seconds Start time, Unix seconds.\n"
               "# TYPE agentmeter_process_start_time_seconds gauge\n"
               "agentmeter_process_start_time_seconds %.3f\n",
               rss_pages * sysconf(_SC_PAGESIZE), cpu, (double)process_start_unix_nano / 1e9);
}

char *am_selfmetrics_render(size_t *len)
{
    text_buf_t buf = {.data = am_malloc(4096), .cap = 4096};
    if (buf.data == NULL) {
        return NULL;
    }
    buf.data[0] = '\0';
    pthread_mutex_lock(&registry_lock);
    const char *family = NULL;
    for (series_t *s = series_head; s != NULL; s = s->next) {
        if (family == NULL || strcmp(family, s->name) != 0) {
            family = s->name;
            buf_printf(&buf, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name,
                       s->kind == SERIES_COUNTER ? "counter" : "gauge");
        }
        int64_t value;
        if (s->kind == SERIES_COUNTER) {
            value = (int64_t)am_counter_get(&s->u.counter);
        } else if (s->kind == SERIES_GAUGE) {
            value = atomic_load(&s->u.gauge.value);
        } else {
            value = s->fn(s->user_data);
        }
        if (s->labels[0] != '\0') {
            buf_printf(&buf, "%s{%s} %lld\n", s->name, s->labels, (long long)value);
        } else {
            buf_printf(&buf, "%s %lld\n", s->name, (long long)value);
        }
    }
    pthread_mutex_unlock(&registry_lock);
    render_process(&buf);
    if (buf.failed) {
        am_free(buf.data);
        return NULL;
    }
    *len = buf.len;
    return buf.data;
}
