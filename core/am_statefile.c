/*
 * am_statefile.c - see am_statefile.h.
 */
#include "am_statefile.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "am_log.h"

int am_state_file_write(const char *component, const char *path, const char *data, size_t len)
{
    size_t plen = strlen(path);
    char *tmp = am_malloc(plen + 8);
    if (tmp == NULL) {
        AM_ERROR(component, "cannot write state file %s: out of memory", path);
        return AM_ENOMEM;
    }
    snprintf(tmp, plen + 8, "%s.tmp", path);
    int rc = AM_EIO;
    FILE *f = fopen(tmp, "wb");
    if (f != NULL) {
        bool ok = fwrite(data, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
        ok = fclose(f) == 0 && ok;
        if (ok && rename(tmp, path) == 0) {
            rc = 0;
        } else {
            unlink(tmp);
        }
    }
    if (rc != 0) {
        AM_ERROR(component, "cannot write state file %s: %s", path, strerror(errno));
    }
    am_free(tmp);
    return rc;
}

int am_state_file_read(const char *component, const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (errno == ENOENT) {
            return AM_ENOENT;
        }
        AM_WARN(component, "cannot read state file %s: %s", path, strerror(errno));
        return AM_EIO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        AM_WARN(component, "state file %s is not a regular file", path);
        fclose(f);
        return AM_EIO;
    }
    if ((uint64_t)st.st_size > AM_STATE_FILE_MAX_BYTES) {
        fclose(f);
        return AM_ERANGE;
    }
    size_t size = (size_t)st.st_size;
    char *data = am_malloc(size + 1);
    if (data == NULL) {
        fclose(f);
        AM_WARN(component, "cannot read state file %s: out of memory", path);
        return AM_ENOMEM;
    }
    size_t got = fread(data, 1, size, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed) {
        am_free(data);
        AM_WARN(component, "cannot read state file %s", path);
        return AM_EIO;
    }
    data[got] = '\0';
    *out = data;
    *len = got;
    return 0;
}

void am_state_file_set_aside(const char *component, const char *id, const char *path,
                             uint64_t unix_seconds)
{
    char aside[4096];
    snprintf(aside, sizeof(aside), "%s.corrupt-%llu", path, (unsigned long long)unix_seconds);
    int moved = rename(path, aside);
    AM_ERROR(component, "%s: state file %s is corrupt; ignored%s%s", id, path,
             moved == 0 ? " and renamed to " : "", moved == 0 ? aside : "");
}

typedef struct handoff {
    char *id;
    char *text;
    struct handoff *next;
} handoff_t;

static pthread_mutex_t handoff_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t handoff_once = PTHREAD_ONCE_INIT;
static handoff_t *handoffs;

static void handoff_free_all(void)
{
    pthread_mutex_lock(&handoff_lock);
    while (handoffs != NULL) {
        handoff_t *h = handoffs;
        handoffs = h->next;
        am_free(h->id);
        am_free(h->text);
        am_free(h);
    }
    pthread_mutex_unlock(&handoff_lock);
}

static void handoff_register_exit(void)
{
    atexit(handoff_free_all);
}

void am_state_handoff_put(const char *id, char *text)
{
    pthread_once(&handoff_once, handoff_register_exit);
    pthread_mutex_lock(&handoff_lock);
    handoff_t *h = handoffs;
    while (h != NULL && strcmp(h->id, id) != 0) {
        h = h->next;
    }
    if (h == NULL && (h = am_calloc(1, sizeof(*h))) != NULL) {
        if ((h->id = am_strdup(id)) == NULL) {
            am_free(h);
            h = NULL;
        } else {
            h->next = handoffs;
            handoffs = h;
        }
    }
    if (h != NULL) {
        am_free(h->text);
        h->text = text;
    } else {
        am_free(text);
    }
    pthread_mutex_unlock(&handoff_lock);
}

char *am_state_handoff_take(const char *id)
{
    char *text = NULL;
    pthread_mutex_lock(&handoff_lock);
    for (handoff_t **p = &handoffs; *p != NULL; p = &(*p)->next) {
        if (strcmp((*p)->id, id) == 0) {
            handoff_t *h = *p;
            *p = h->next;
            text = h->text;
            am_free(h->id);
            am_free(h);
            break;
        }
    }
    pthread_mutex_unlock(&handoff_lock);
    return text;
}
