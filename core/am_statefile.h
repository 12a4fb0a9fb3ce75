/*
 * am_statefile.h - small state files that must survive a crash: written
 * atomically (temp file, fsync, rename), read back with a size bound, and set
 * aside (never trusted, never deleted) when their content is corrupt.  Used
 * by the stateful processors (budget, session) for `state_file`.
 */
#ifndef AM_STATEFILE_H
#define AM_STATEFILE_H

#include "am_common.h"

/* Largest state file read back (a bigger one is treated as corrupt). */
#define AM_STATE_FILE_MAX_BYTES ((size_t)256 << 20)

/* Replace `path` with `data` atomically.  0 or AM_ENOMEM / AM_EIO (errno set;
 * logged under `component`). */
int am_state_file_write(const char *component, const char *path, const char *data, size_t len);
/* Read `path` whole into a NUL-terminated malloc'd buffer (caller am_free).
 * AM_ENOENT when missing (not logged), AM_ERANGE when above
 * AM_STATE_FILE_MAX_BYTES, AM_EIO / AM_ENOMEM otherwise (logged). */
int am_state_file_read(const char *component, const char *path, char **out, size_t *len);
/* Rename a corrupt state file to <path>.corrupt-<unix_seconds> and log it. */
void am_state_file_set_aside(const char *component, const char *id, const char *path,
                             uint64_t unix_seconds);

/* Config reload hand-off: a stateful processor shutting down for a reload
 * leaves its state text under its component id; the next group of that id
 * takes it at start.  Process-global, thread-safe; what is never taken is
 * freed at exit.  put takes `text` over (malloc'd), replacing any earlier
 * text of that id; take returns it (caller am_free) or NULL. */
void am_state_handoff_put(const char *id, char *text);
char *am_state_handoff_take(const char *id);

#endif
