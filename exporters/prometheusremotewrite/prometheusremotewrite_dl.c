/*
 * prometheusremotewrite_dl.c - libcurl and libsnappy, loaded with dlopen()
 * the first time a prometheusremotewrite exporter is configured.
 *
 * Why.  Only this exporter needs the two libraries, and most deployments
 * (the sidecar) never configure it.  Linked, they cost every process their
 * whole dependency closure: agentmeter's idle RSS with its full config was
 * 12.8 MiB, ~4.3 MiB of it shared-library pages that libcurl.so.4 drags in
 * (gnutls, p11-kit, krb5, nettle, ldap, gssapi, unistring, gmp, hogweed,
 * ssh2, rtmp, tasn1, ...) and that libsnappy.so.1 drags in (libstdc++,
 * libgcc_s).  Issue 8 asks for idle RSS <= 10 MiB.  So agentmeter does not
 * link them; a process whose config has a prometheusremotewrite exporter
 * loads them once (validate/create), and the exporter calls through the
 * tables am__prw_curl and am__prw_snappy.  Measured (Release, embedded
 * default config, VmRSS after 2 s idle): 10.5 MiB linked, 5.9 MiB loaded
 * on demand; a config with remote-write stays where it was (~12.2 MiB).
 *
 * What is loaded.  Only the sonames, libcurl.so.4 and libsnappy.so.1: the
 * Debian runtime packages libcurl4 and libsnappy1v5 provide them (the -dev
 * packages' unversioned .so links are not needed at run time).  The headers
 * <curl/curl.h> and <snappy-c.h> still give the types and constants at
 * compile time; the soname is the ABI promise that makes that valid.
 * RTLD_NOW: a library whose own dependencies are broken fails here, at
 * startup, not at the first request.  RTLD_LOCAL: nothing leaks into the
 * global symbol namespace.  The libraries are never unloaded.
 *
 * Failure (library or symbol missing) is a message naming the library and
 * dlerror(); the exporter reports it from validate and create, so
 * agentmeter refuses the config and exits non-zero instead of crashing on
 * a NULL function pointer later.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "prometheusremotewrite_internal.h"

am__prw_curl_t am__prw_curl;
am__prw_snappy_t am__prw_snappy;

static void *open_library(const char *soname, char *err, size_t err_size)
{
    void *handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *why = dlerror();
        snprintf(err, err_size, "cannot load %s: %s", soname, why != NULL ? why : "unknown error");
    }
    return handle;
}

/* Resolve `name` in `handle` into *slot; 0, or AM_ENOENT with err set. */
static int resolve(void *handle, const char *soname, const char *name, void **slot, char *err,
                   size_t err_size)
{
    dlerror(); /* clear a stale error */
    *slot = dlsym(handle, name);
    if (*slot == NULL) {
        const char *why = dlerror();
        snprintf(err, err_size, "cannot load %s: symbol %s: %s", soname, name,
                 why != NULL ? why : "resolves to NULL");
        return AM_ENOENT;
    }
    return 0;
}

/* `api->field = dlsym(handle, prefix "field")`, or to the fail label.  The
 * fields' types come from the library headers (__typeof__ in the header),
 * so a call through the table is checked like a direct call. */
#define RESOLVE(api, soname, prefix, field)                                                        \
    do {                                                                                           \
        void *sym_;                                                                                \
        if (resolve((api)->handle, soname, prefix #field, &sym_, err, err_size) != 0) {            \
            goto fail;                                                                             \
        }                                                                                          \
        (api)->field = (__typeof__((api)->field))sym_;                                             \
    } while (0)

int am__prw_dl_open(const char *curl_soname, const char *snappy_soname, am__prw_curl_t *curl,
                    am__prw_snappy_t *snappy, char *err, size_t err_size)
{
    memset(curl, 0, sizeof(*curl));
    memset(snappy, 0, sizeof(*snappy));
    err[0] = '\0';
    curl->handle = open_library(curl_soname, err, err_size);
    if (curl->handle == NULL) {
        goto fail;
    }
    RESOLVE(curl, curl_soname, "curl_", global_init);
    RESOLVE(curl, curl_soname, "curl_", easy_init);
    RESOLVE(curl, curl_soname, "curl_", easy_cleanup);
    RESOLVE(curl, curl_soname, "curl_", easy_setopt);
    RESOLVE(curl, curl_soname, "curl_", easy_getinfo);
    RESOLVE(curl, curl_soname, "curl_", easy_strerror);
    RESOLVE(curl, curl_soname, "curl_", multi_init);
    RESOLVE(curl, curl_soname, "curl_", multi_cleanup);
    RESOLVE(curl, curl_soname, "curl_", multi_setopt);
    RESOLVE(curl, curl_soname, "curl_", multi_add_handle);
    RESOLVE(curl, curl_soname, "curl_", multi_remove_handle);
    RESOLVE(curl, curl_soname, "curl_", multi_assign);
    RESOLVE(curl, curl_soname, "curl_", multi_socket_action);
    RESOLVE(curl, curl_soname, "curl_", multi_info_read);
    RESOLVE(curl, curl_soname, "curl_", multi_strerror);
    RESOLVE(curl, curl_soname, "curl_", slist_append);
    RESOLVE(curl, curl_soname, "curl_", slist_free_all);

    snappy->handle = open_library(snappy_soname, err, err_size);
    if (snappy->handle == NULL) {
        goto fail;
    }
    RESOLVE(snappy, snappy_soname, "snappy_", compress);
    RESOLVE(snappy, snappy_soname, "snappy_", max_compressed_length);
    return 0;
fail:
    am__prw_dl_close(curl, snappy);
    return AM_ENOENT;
}

void am__prw_dl_close(am__prw_curl_t *curl, am__prw_snappy_t *snappy)
{
    if (curl->handle != NULL) {
        dlclose(curl->handle);
    }
    if (snappy->handle != NULL) {
        dlclose(snappy->handle);
    }
    memset(curl, 0, sizeof(*curl));
    memset(snappy, 0, sizeof(*snappy));
}

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_rc;
static char load_error[512];

static void load_default(void)
{
    load_rc = am__prw_dl_open(AM__PRW_CURL_SONAME, AM__PRW_SNAPPY_SONAME, &am__prw_curl,
                              &am__prw_snappy, load_error, sizeof(load_error));
}

int am__prw_dl_load(const char **err)
{
    pthread_once(&load_once, load_default);
    if (err != NULL) {
        *err = load_rc != 0 ? load_error : NULL;
    }
    return load_rc;
}
