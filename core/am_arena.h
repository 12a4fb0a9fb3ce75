/*
 * am_arena.h - per-request bump allocator.
 *
 * Each decoded OTLP request lives in one arena: protobuf-c unpacks into it
 * through am_arena_allocator(), and everything a processor adds to those
 * spans (attributes, strings) is allocated from an arena the batch owns.
 * Nothing inside an arena is freed on its own; the whole arena goes when its
 * last reference is dropped.  That makes a request's thousands of small
 * allocations one malloc per chunk and one free at the end.
 *
 * Ownership: am_arena_new() returns a reference; am_arena_ref() adds one;
 * am_arena_unref() drops one and frees the arena on the last.  Reference
 * counting is atomic, so an arena may be shared by batches on several
 * threads.  Allocation itself is NOT thread-safe: only the thread that holds
 * the batch currently writing may allocate from it.
 */
#ifndef AM_ARENA_H
#define AM_ARENA_H

#include <protobuf-c/protobuf-c.h>

#include "am_common.h"

typedef struct am_arena am_arena_t;

/* first_chunk: size hint for the first chunk (e.g. 2x the request size). */
am_arena_t *am_arena_new(size_t first_chunk);
/* Bytes for `size` bytes of character data (no alignment). */
char *am_arena_alloc_chars(am_arena_t *arena, size_t size);
am_arena_t *am_arena_ref(am_arena_t *arena);
void am_arena_unref(am_arena_t *arena);

/* 8-byte aligned (enough for any protobuf-c struct; nothing stored in an
 * arena needs more); NULL on allocation failure.  Valid until the arena dies.
 * The string functions return unaligned memory. */
void *am_arena_alloc(am_arena_t *arena, size_t size);
void *am_arena_calloc(am_arena_t *arena, size_t count, size_t size);
char *am_arena_strdup(am_arena_t *arena, const char *s);
char *am_arena_strndup(am_arena_t *arena, const char *s, size_t len);
char *am_arena_sprintf(am_arena_t *arena, const char *fmt, ...) AM_PRINTF(2, 3);

/* Bytes handed out and bytes reserved from malloc (for memory accounting). */
size_t am_arena_used(const am_arena_t *arena);
size_t am_arena_reserved(const am_arena_t *arena);

/* A protobuf-c allocator that allocates from the arena; free is a no-op.
 * Valid while the arena lives. */
ProtobufCAllocator am_arena_allocator(am_arena_t *arena);

/* Process-wide bytes reserved by all live arenas. */
size_t am_arena_total_reserved(void);

/* Data in flight held outside arenas, e.g. encoded messages an exporter keeps
 * until the destination acknowledges them: hold when taken, release the same
 * amount when freed.  Thread-safe. */
void am_memory_hold(size_t bytes);
void am_memory_release(size_t bytes);

/* All data in flight: arenas plus held bytes (memory_limiter's measure). */
size_t am_memory_in_flight(void);

#endif
