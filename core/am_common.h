/*
 * am_common.h - the few definitions every agentmeter file shares.
 *
 * Error convention (STYLE.md): functions returning `int` give 0 or a negative
 * AM_E* code; am_strerror() names it.  Data paths (consume) instead return an
 * am_status_t: AM_OK, AM_RETRY (transient: the caller may try again later,
 * which becomes backpressure at the receiver) or AM_PERMANENT (the data is bad
 * and will never be accepted).
 *
 * Money is fixed point: an am_money_t holds nano-units (1e-9) of a currency.
 * Doubles appear only at the edges (exported attributes and metrics).
 */
#ifndef AM_COMMON_H
#define AM_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AM_VERSION "0.1.0"

typedef enum am_status {
    AM_OK = 0,
    AM_RETRY = 1,
    AM_PERMANENT = 2,
} am_status_t;

enum {
    AM_ENOMEM = -1,
    AM_EINVAL = -2,
    AM_EIO = -3,
    AM_ENOENT = -4,
    AM_ERANGE = -5,
    AM_EEXIST = -6,
    AM_EBUSY = -7,
    AM_ESHUTDOWN = -8,
    AM_ENOTSUP = -9,
};

const char *am_strerror(int err);

/* Nano-units of a currency: 1.00 USD == 1000000000. */
typedef int64_t am_money_t;
#define AM_MONEY_SCALE INT64_C(1000000000)

#define AM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define AM_UNUSED(x) ((void)(x))
#define AM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define AM_MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define AM_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define AM_PRINTF(fmt_idx, arg_idx)
#endif

/* Wall clock in nanoseconds since the Unix epoch. */
uint64_t am_now_unix_nano(void);
/* Monotonic clock in milliseconds (for timeouts and durations). */
uint64_t am_now_mono_ms(void);

/* Format a money value exactly, at most 9 decimals, trailing zeros removed
 * ("0.0125", "3", "-1.5").  buf must hold AM_MONEY_STRLEN bytes. */
#define AM_MONEY_STRLEN 32
const char *am_money_format(am_money_t v, char *buf);
/* Parse a decimal string ("2.50", "1e-3" not accepted) into nano-units.
 * More than 9 decimals are an error, not a rounding. */
int am_money_parse(const char *s, am_money_t *out);
static inline double am_money_to_double(am_money_t v)
{
    return (double)v / (double)AM_MONEY_SCALE;
}

/* Format unix nanoseconds as RFC 3339 UTC with millisecond precision.
 * buf must hold AM_TIME_STRLEN bytes. */
#define AM_TIME_STRLEN 80
const char *am_time_format(uint64_t unix_nano, char *buf);

/* Allocation wrappers.  Tests may install a failing allocator (failmalloc)
 * through am_alloc_set_fail_after(); production code never calls malloc
 * directly so every error path can be proven. */
void *am_malloc(size_t size);
void *am_calloc(size_t count, size_t size);
void *am_realloc(void *ptr, size_t size);
char *am_strdup(const char *s);
char *am_strndup(const char *s, size_t len);
void am_free(void *ptr);
/* Fail the N-th allocation from now (1 = the next one); 0 disables.
 * Returns the number of allocations made since the last call. */
long am_alloc_set_fail_after(long nth);
long am_alloc_count(void);

#endif
