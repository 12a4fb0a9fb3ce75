/*
 * am_intern.h - one shared, read-only copy of the attribute keys agentmeter
 * knows (ARCHITECTURE.md §5 conventions, the cost.* keys it writes, common
 * resource keys).
 *
 * Why: a decoded span carries ~10 attribute keys, nearly all from a small
 * known set.  Copying each into the request arena costs ~30 bytes per
 * attribute, and every processor then compares them with strcmp.  A decoder
 * that stores a known key as a pointer to its interned copy spends no memory
 * on it, and a lookup can compare pointers: two different interned pointers
 * are always two different strings.
 *
 * The table is built once (thread-safe, on first use) and never changes;
 * every function here may be called from any thread.
 */
#ifndef AM_INTERN_H
#define AM_INTERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The table's storage, for the inline checks below; do not use directly. */
#define AM__INTERN_BLOB_MAX 8192
extern char am__intern_blob[AM__INTERN_BLOB_MAX];
extern uint8_t am__intern_ids[AM__INTERN_BLOB_MAX]; /* id + 1 where a key begins */

/* Keys in the table have ids 0 .. AM_INTERN_MAX_IDS - 1. */
#define AM_INTERN_MAX_IDS 255

/* True when `p` points at the start of an interned key. */
static inline bool am_interned(const char *p)
{
    return p >= am__intern_blob && p < am__intern_blob + AM__INTERN_BLOB_MAX &&
           am__intern_ids[p - am__intern_blob] != 0;
}

/* The id of an interned key, or -1 when `p` is not one. */
static inline int am_intern_id(const char *p)
{
    if (p < am__intern_blob || p >= am__intern_blob + AM__INTERN_BLOB_MAX) {
        return -1;
    }
    return (int)am__intern_ids[p - am__intern_blob] - 1;
}

/* The interned copy of the `len` bytes at `s` (no NUL needed), or NULL when
 * the key is not in the table. */
const char *am_intern(const char *s, size_t len);

/* am_intern(key, strlen(key)), remembered per thread by address: a repeated
 * lookup of a string literal costs one compare, of any other address one
 * strcmp (a hit) or one hash (a miss: the address may hold new text). */
const char *am_intern_cached(const char *key);

/* Number of keys in the table (tests). */
size_t am_intern_count(void);

#endif
