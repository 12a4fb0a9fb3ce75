/*
 * am_arena.c - chunked bump allocator with an atomic reference count.
 *
 * Chunks grow geometrically (each 1.5x the last, capped at 1 MiB unless one
 * allocation needs more) so a request of any size costs a handful of mallocs
 * without reserving much more than it uses (memory_limiter counts reserved
 * bytes).  Strings are packed without alignment padding.  The arena header
 * lives in the first chunk.
 */
#include "am_arena.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* 8 bytes: the strictest alignment of anything stored in an arena
 * (protobuf-c structs: pointers, 64-bit integers, doubles).  16 cost ~190
 * bytes of padding per decoded span (issue 8). */
#define ARENA_ALIGN 8
#define ARENA_MIN_CHUNK 1024
#define ARENA_MAX_GROWTH (1024 * 1024)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    /* data follows, aligned */
} arena_chunk_t;

struct am_arena {
    atomic_int refcount;
    arena_chunk_t *head; /* current chunk: allocations come from here */
    size_t used;
    size_t reserved;
    size_t next_chunk;
};

static atomic_size_t total_reserved;
static atomic_size_t total_held; /* am_memory_hold() */

#define CHUNK_HDR ((sizeof(arena_chunk_t) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))

static arena_chunk_t *chunk_new(size_t size)
{
    arena_chunk_t *chunk = am_malloc(CHUNK_HDR + size);
    if (chunk == NULL) {
        return NULL;
    }
    chunk->next = NULL;
    chunk->size = size;
    chunk->used = 0;
    return chunk;
}

am_arena_t *am_arena_new(size_t first_chunk)
{
    if (first_chunk < ARENA_MIN_CHUNK) {
        first_chunk = ARENA_MIN_CHUNK;
    }
    arena_chunk_t *chunk = chunk_new(first_chunk);
    if (chunk == NULL) {
        return NULL;
    }
    /* The arena header is the first allocation of its own first chunk. */
    size_t hdr = (sizeof(am_arena_t) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (hdr > chunk->size) {
        am_free(chunk);
        return NULL;
    }
    am_arena_t *arena = (am_arena_t *)((char *)chunk + CHUNK_HDR);
    chunk->used = hdr;
    atomic_init(&arena->refcount, 1);
    arena->head = chunk;
    arena->used = 0;
    arena->reserved = CHUNK_HDR + first_chunk;
    arena->next_chunk = first_chunk + first_chunk / 2;
    atomic_fetch_add(&total_reserved, arena->reserved);
    return arena;
}

am_arena_t *am_arena_ref(am_arena_t *arena)
{
    atomic_fetch_add_explicit(&arena->refcount, 1, memory_order_relaxed);
    return arena;
}

void am_arena_unref(am_arena_t *arena)
{
    if (arena == NULL) {
        return;
    }
    if (atomic_fetch_sub_explicit(&arena->refcount, 1, memory_order_acq_rel) != 1) {
        return;
    }
    atomic_fetch_sub(&total_reserved, arena->reserved);
    arena_chunk_t *chunk = arena->head;
    /* The header lives in one of the chunks: nothing reads `arena` after
     * the loop starts. */
    while (chunk != NULL) {
        arena_chunk_t *next = chunk->next;
        am_free(chunk);
        chunk = next;
    }
}

/* `size` bytes at an offset that is a multiple of `align` (1 or ARENA_ALIGN). */
static void *arena_take(am_arena_t *arena, size_t size, size_t align)
{
    if (size > SIZE_MAX / 2) {
        return NULL;
    }
    arena_chunk_t *chunk = arena->head;
    size_t offset = (chunk->used + align - 1) & ~(align - 1);
    if ((offset > chunk->size || chunk->size - offset < size) && size > arena->next_chunk / 2) {
        /* A large block (a decoder's one allocation for a whole request)
         * gets a chunk of exactly its size behind the current one, which
         * keeps serving small allocations; the growth is not bumped. */
        arena_chunk_t *own = chunk_new(size);
        if (own == NULL) {
            return NULL;
        }
        own->used = size;
        own->next = chunk->next;
        chunk->next = own;
        arena->reserved += CHUNK_HDR + size;
        arena->used += size;
        atomic_fetch_add(&total_reserved, CHUNK_HDR + size);
        return (char *)own + CHUNK_HDR;
    }
    if (offset > chunk->size || chunk->size - offset < size) {
        size_t want = arena->next_chunk;
        if (want > ARENA_MAX_GROWTH) {
            want = ARENA_MAX_GROWTH;
        }
        if (want < size) {
            want = size;
        }
        arena_chunk_t *fresh = chunk_new(want);
        if (fresh == NULL) {
            return NULL;
        }
        fresh->next = chunk;
        arena->head = fresh;
        arena->reserved += CHUNK_HDR + want;
        atomic_fetch_add(&total_reserved, CHUNK_HDR + want);
        arena->next_chunk = want + want / 2;
        chunk = fresh;
        offset = 0;
    }
    void *ptr = (char *)chunk + CHUNK_HDR + offset;
    arena->used += offset + size - chunk->used;
    chunk->used = offset + size;
    return ptr;
}

void *am_arena_alloc(am_arena_t *arena, size_t size)
{
    return arena_take(arena, size == 0 ? 1 : size, ARENA_ALIGN);
}

void *am_arena_calloc(am_arena_t *arena, size_t count, size_t size)
{
    if (size != 0 && count > SIZE_MAX / size) {
        return NULL;
    }
    void *ptr = am_arena_alloc(arena, count * size);
    if (ptr != NULL) {
        memset(ptr, 0, count * size);
    }
    return ptr;
}

char *am_arena_strndup(am_arena_t *arena, const char *s, size_t len)
{
    char *copy = len < SIZE_MAX / 2 ? arena_take(arena, len + 1, 1) : NULL;
    if (copy != NULL) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

char *am_arena_strdup(am_arena_t *arena, const char *s)
{
    return am_arena_strndup(arena, s, strlen(s));
}

char *am_arena_sprintf(am_arena_t *arena, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0) {
        return NULL;
    }
    char *out = arena_take(arena, (size_t)len + 1, 1);
    if (out == NULL) {
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(out, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return out;
}

size_t am_arena_used(const am_arena_t *arena)
{
    return arena->used;
}

size_t am_arena_reserved(const am_arena_t *arena)
{
    return arena->reserved;
}

size_t am_arena_total_reserved(void)
{
    return atomic_load(&total_reserved);
}

void am_memory_hold(size_t bytes)
{
    atomic_fetch_add_explicit(&total_held, bytes, memory_order_relaxed);
}

void am_memory_release(size_t bytes)
{
    atomic_fetch_sub_explicit(&total_held, bytes, memory_order_relaxed);
}

size_t am_memory_in_flight(void)
{
    return atomic_load_explicit(&total_reserved, memory_order_relaxed) +
           atomic_load_explicit(&total_held, memory_order_relaxed);
}

static void *pb_arena_alloc(void *data, size_t size)
{
    return am_arena_alloc(data, size);
}

static void pb_arena_free(void *data, void *ptr)
{
    AM_UNUSED(data);
    AM_UNUSED(ptr);
}

ProtobufCAllocator am_arena_allocator(am_arena_t *arena)
{
    ProtobufCAllocator alloc = {
        .alloc = pb_arena_alloc,
        .free = pb_arena_free,
        .allocator_data = arena,
    };
    return alloc;
}

char *am_arena_alloc_chars(am_arena_t *arena, size_t size)
{
    return arena_take(arena, size == 0 ? 1 : size, 1);
}
