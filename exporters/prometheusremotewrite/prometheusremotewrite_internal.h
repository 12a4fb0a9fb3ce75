/*
 * prometheusremotewrite_internal.h - the remote-write encoder and the
 * run-time loaded libcurl/libsnappy tables, shared by the exporter
 * (prometheusremotewrite.c) and its unit tests.
 */
#ifndef AM_PROMETHEUSREMOTEWRITE_INTERNAL_H
#define AM_PROMETHEUSREMOTEWRITE_INTERNAL_H

#include <curl/curl.h>
#include <snappy-c.h>

#include "am_metrics.h"

/* The headers every request carries (Remote-Write 1.0); user `headers`
 * cannot replace them. */
#define AM__PRW_VERSION "0.1.0"
#define AM__PRW_USER_AGENT "agentmeter/" AM_VERSION

/* Encode `set` as a snappy block-compressed protobuf WriteRequest.
 *
 * One TimeSeries per counter/gauge series, and per histogram series the
 * classic _bucket{le} (each bound, then "+Inf"), _sum and _count series.
 * Labels: the series' own, __name__, then each external label the series
 * does not already have; sorted by name (byte order).  Each TimeSeries has
 * one sample at the series' timestamp.
 *
 * external: n_external labels with valid names (the caller checked them).
 * On success *body is malloc'd (caller frees with am_free), *body_len its
 * size and *n_samples the number of samples.  Returns 0, AM_ENOMEM,
 * AM_ENOENT when the set holds no series (nothing to send), or AM_ENOTSUP
 * when libsnappy cannot be loaded (am__prw_dl_load).  Any thread. */
int am__prw_encode(const am_metric_set_t *set, const am_label_t *external, size_t n_external,
                   uint8_t **body, size_t *body_len, size_t *n_samples);

/* ---- libcurl and libsnappy, loaded at run time (prometheusremotewrite_dl.c) ----
 *
 * agentmeter does not link either library (idle RSS, see the _dl.c file);
 * the exporter calls them through these tables, e.g.
 * am__prw_curl.easy_setopt(easy, CURLOPT_URL, url).  The field types are
 * the headers' own prototypes.  (Fields drop the curl_ / snappy_ prefix:
 * curl.h defines curl_easy_setopt and friends as type-checking macros.) */

#define AM__PRW_CURL_SONAME "libcurl.so.4"     /* Debian: libcurl4 */
#define AM__PRW_SNAPPY_SONAME "libsnappy.so.1" /* Debian: libsnappy1v5 */

typedef struct am__prw_curl {
    void *handle; /* dlopen() handle */
    __typeof__(curl_global_init) *global_init;
    __typeof__(curl_easy_init) *easy_init;
    __typeof__(curl_easy_cleanup) *easy_cleanup;
    __typeof__(curl_easy_setopt) *easy_setopt;
    __typeof__(curl_easy_getinfo) *easy_getinfo;
    __typeof__(curl_easy_strerror) *easy_strerror;
    __typeof__(curl_multi_init) *multi_init;
    __typeof__(curl_multi_cleanup) *multi_cleanup;
    __typeof__(curl_multi_setopt) *multi_setopt;
    __typeof__(curl_multi_add_handle) *multi_add_handle;
    __typeof__(curl_multi_remove_handle) *multi_remove_handle;
    __typeof__(curl_multi_assign) *multi_assign;
    __typeof__(curl_multi_socket_action) *multi_socket_action;
    __typeof__(curl_multi_info_read) *multi_info_read;
    __typeof__(curl_multi_strerror) *multi_strerror;
    __typeof__(curl_slist_append) *slist_append;
    __typeof__(curl_slist_free_all) *slist_free_all;
} am__prw_curl_t;

typedef struct am__prw_snappy {
    void *handle; /* dlopen() handle */
    __typeof__(snappy_compress) *compress;
    __typeof__(snappy_max_compressed_length) *max_compressed_length;
} am__prw_snappy_t;

/* The process-wide tables: valid once am__prw_dl_load() returned 0, for
 * the rest of the process (never unloaded).  Read-only after that. */
extern am__prw_curl_t am__prw_curl;
extern am__prw_snappy_t am__prw_snappy;

/* Load libcurl.so.4 and libsnappy.so.1 into the tables above, once per
 * process; any thread, every call after the first is cheap.  Returns 0, or
 * AM_ENOENT with *err (when err is not NULL) pointing at a static message
 * naming the library and dlerror(), the same on every later call. */
int am__prw_dl_load(const char **err);

/* What am__prw_dl_load runs, with the sonames as parameters (tests use it
 * with names that do not exist).  dlopen()s both and resolves every field
 * of *curl and *snappy.  Returns 0 (release with am__prw_dl_close), or
 * AM_ENOENT with err holding "cannot load <soname>: <dlerror()>" and
 * nothing left loaded (*curl and *snappy zeroed). */
int am__prw_dl_open(const char *curl_soname, const char *snappy_soname, am__prw_curl_t *curl,
                    am__prw_snappy_t *snappy, char *err, size_t err_size);
void am__prw_dl_close(am__prw_curl_t *curl, am__prw_snappy_t *snappy);

#endif
