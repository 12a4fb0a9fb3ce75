/*
 * am_common.c - error names, clocks, exact money formatting, and the
 * allocation wrappers that let tests fail the N-th allocation.
 */
#include "am_common.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *am_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case AM_ENOMEM: return "out of memory";
    case AM_EINVAL: return "invalid argument";
    case AM_EIO: return "I/O error";
    case AM_ENOENT: return "not found";
    case AM_ERANGE: return "out of range";
    case AM_EEXIST: return "already exists";
    case AM_EBUSY: return "busy";
    case AM_ESHUTDOWN: return "shutting down";
    case AM_ENOTSUP: return "not supported";
    default: return "unknown error";
    }
}

uint64_t am_now_unix_nano(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t am_now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const char *am_money_format(am_money_t v, char *buf)
{
    /* Work on the magnitude as unsigned so INT64_MIN formats too. */
    bool negative = v < 0;
    uint64_t mag = negative ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    uint64_t whole = mag / (uint64_t)AM_MONEY_SCALE;
    uint64_t frac = mag % (uint64_t)AM_MONEY_SCALE;
    int len = snprintf(buf, AM_MONEY_STRLEN, "%s%llu", negative ? "-" : "",
                       (unsigned long long)whole);
    if (frac != 0) {
        char digits[16];
        snprintf(digits, sizeof(digits), "%09llu", (unsigned long long)frac);
        int last = 8;
        while (last > 0 && digits[last] == '0') {
            last--;
        }
        digits[last + 1] = '\0';
        snprintf(buf + len, (size_t)(AM_MONEY_STRLEN - len), ".%s", digits);
    }
    return buf;
}

int am_money_parse(const char *s, am_money_t *out)
{
    const char *p = s;
    bool negative = false;
    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (*p == '-' || *p == '+') {
        negative = *p == '-';
        p++;
    }
    if (!isdigit((unsigned char)*p) && !(*p == '.' && isdigit((unsigned char)p[1]))) {
        return AM_EINVAL;
    }
    uint64_t whole = 0;
    while (isdigit((unsigned char)*p)) {
        if (whole > (uint64_t)(INT64_MAX / AM_MONEY_SCALE) / 10 + 1) {
            return AM_ERANGE;
        }
        whole = whole * 10 + (uint64_t)(*p - '0');
        p++;
    }
    uint64_t frac = 0;
    int decimals = 0;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p)) {
            if (decimals == 9) {
                /* Trailing zeros past nano precision are harmless. */
                if (*p != '0') {
                    return AM_ERANGE;
                }
            } else {
                frac = frac * 10 + (uint64_t)(*p - '0');
                decimals++;
            }
            p++;
        }
    }
    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (*p != '\0') {
        return AM_EINVAL;
    }
    for (; decimals < 9; decimals++) {
        frac *= 10;
    }
    if (whole > (uint64_t)(INT64_MAX / AM_MONEY_SCALE)) {
        return AM_ERANGE;
    }
    int64_t value = (int64_t)(whole * (uint64_t)AM_MONEY_SCALE + frac);
    *out = negative ? -value : value;
    return 0;
}

const char *am_time_format(uint64_t unix_nano, char *buf)
{
    time_t secs = (time_t)(unix_nano / 1000000000u);
    unsigned millis = (unsigned)((unix_nano / 1000000u) % 1000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, AM_TIME_STRLEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
    return buf;
}

/* Failmalloc: when fail_at > 0, the allocation whose sequence number equals
 * fail_at returns NULL.  Counting is global and atomic; tests that use it
 * run single-threaded. */
static atomic_long alloc_seq;
static atomic_long fail_at;

long am_alloc_set_fail_after(long nth)
{
    long made = atomic_exchange(&alloc_seq, 0);
    atomic_store(&fail_at, nth);
    return made;
}

long am_alloc_count(void)
{
    return atomic_load(&alloc_seq);
}

static bool alloc_should_fail(void)
{
    long seq = atomic_fetch_add(&alloc_seq, 1) + 1;
    long target = atomic_load(&fail_at);
    return target > 0 && seq == target;
}

void *am_malloc(size_t size)
{
    if (alloc_should_fail()) {
        return NULL;
    }
    return malloc(size == 0 ? 1 : size);
}

void *am_calloc(size_t count, size_t size)
{
    if (alloc_should_fail()) {
        return NULL;
    }
    return calloc(count == 0 ? 1 : count, size == 0 ? 1 : size);
}

void *am_realloc(void *ptr, size_t size)
{
    if (alloc_should_fail()) {
        return NULL;
    }
    return realloc(ptr, size == 0 ? 1 : size);
}

char *am_strndup(const char *s, size_t len)
{
    char *copy = am_malloc(len + 1);
    if (copy != NULL) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

char *am_strdup(const char *s)
{
    return am_strndup(s, strlen(s));
}

void am_free(void *ptr)
{
    free(ptr);
}
