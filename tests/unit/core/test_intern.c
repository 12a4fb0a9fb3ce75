/*
 * The intern table of attribute keys: every key listed in core/am_intern.c
 * made it into the table and resolves to one stable copy, only those copies
 * count as interned, lookups are exact (length and bytes), and the
 * per-thread cache of am_intern_cached() stays right when an address it
 * remembers later holds other text (a reused stack or heap buffer).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "am_intern.h"

/* The keys as listed in the source: the string literals of known_keys[]. */
typedef struct key_list {
    char **keys;
    size_t count;
} key_list_t;

static key_list_t listed;

static int load_listed_keys(void **state)
{
    (void)state;
    const char *src = getenv("AM_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/core/am_intern.c", src != NULL ? src : ".");
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        fprintf(stderr, "cannot open %s (set AM_SOURCE_DIR)\n", path);
        return -1;
    }
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof(text) - 1, fp);
    fclose(fp);
    text[n] = '\0';
    char *at = strstr(text, "known_keys[] = {");
    char *end = at != NULL ? strstr(at, "};") : NULL;
    if (end == NULL) {
        return -1;
    }
    listed.keys = calloc(1024, sizeof(char *));
    for (char *q = strchr(at, '"'); q != NULL && q < end; q = strchr(q, '"')) {
        char *close = strchr(q + 1, '"');
        if (close == NULL || listed.count == 1024) {
            return -1;
        }
        listed.keys[listed.count++] = strndup(q + 1, (size_t)(close - q - 1));
        q = close + 1;
    }
    return listed.count > 0 ? 0 : -1;
}

static int free_listed_keys(void **state)
{
    (void)state;
    for (size_t i = 0; i < listed.count; i++) {
        free(listed.keys[i]);
    }
    free(listed.keys);
    return 0;
}

static void test_every_listed_key_is_interned(void **state)
{
    (void)state;
    size_t distinct = 0;
    for (size_t i = 0; i < listed.count; i++) {
        const char *key = listed.keys[i];
        const char *interned = am_intern(key, strlen(key));
        if (interned == NULL) {
            fail_msg("listed key \"%s\" is not in the table", key);
        }
        assert_string_equal(interned, key);
        assert_ptr_not_equal(interned, key);
        assert_true(am_interned(interned));
        assert_ptr_equal(am_intern(key, strlen(key)), interned);
        bool seen = false;
        for (size_t j = 0; j < i; j++) {
            seen = seen || strcmp(listed.keys[j], key) == 0;
        }
        distinct += !seen;
    }
    /* Nothing dropped for lack of room, nothing in the table that is not
     * listed. */
    assert_int_equal(am_intern_count(), distinct);
}

static void test_the_agentmeter_keys_are_interned(void **state)
{
    (void)state;
    /* A few of each group ARCHITECTURE.md §5 and §6 name. */
    static const char *const keys[] = {
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.operation.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "llm.token_count.prompt",
        "session.id",
        "user.id",
        "tenant.id",
        "gen_ai.tool.name",
        "cost.self",
        "cost.subtree",
        "cost.status",
        "cost.price_id",
        "gen_ai.usage.cost.amount",
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *interned = am_intern(keys[i], strlen(keys[i]));
        if (interned == NULL) {
            fail_msg("\"%s\" is not interned", keys[i]);
        }
    }
}

static void test_lookups_are_exact(void **state)
{
    (void)state;
    const char *session = am_intern("session.id", 10);
    assert_non_null(session);
    /* Not NUL-terminated input: only `len` bytes count. */
    assert_ptr_equal(am_intern("session.idXYZ", 10), session);
    assert_null(am_intern("session.id", 9));
    assert_null(am_intern("session.id\0", 11));
    assert_null(am_intern("Session.id", 10));
    assert_null(am_intern("", 0));
    assert_null(am_intern("not.a.known.key", 15));
    /* Only the start of an interned copy is interned: not a copy of it,
     * not its middle, not an unrelated string. */
    char copy[32];
    strcpy(copy, session);
    assert_false(am_interned(copy));
    assert_false(am_interned(session + 1));
    assert_false(am_interned("session.id"));
    assert_false(am_interned(NULL));
    const char *user = am_intern("user.id", 7);
    assert_non_null(user);
    assert_ptr_not_equal(user, session);
}

static void test_cached_lookup(void **state)
{
    (void)state;
    const char *session = am_intern("session.id", 10);
    assert_ptr_equal(am_intern_cached("session.id"), session);
    assert_ptr_equal(am_intern_cached("session.id"), session); /* remembered */
    assert_ptr_equal(am_intern_cached(session), session);      /* already interned */
    assert_null(am_intern_cached(NULL));
    assert_null(am_intern_cached("not.a.known.key"));
    assert_null(am_intern_cached("not.a.known.key"));

    /* One address, different keys over time. */
    char buf[64];
    strcpy(buf, "tenant.id");
    assert_ptr_equal(am_intern_cached(buf), am_intern("tenant.id", 9));
    strcpy(buf, "user.id");
    assert_ptr_equal(am_intern_cached(buf), am_intern("user.id", 7));
    strcpy(buf, "no.such.key");
    assert_null(am_intern_cached(buf));
    char *heap = malloc(64);
    assert_non_null(heap);
    strcpy(heap, "gen_ai.request.model");
    assert_ptr_equal(am_intern_cached(heap), am_intern("gen_ai.request.model", 20));
    strcpy(heap, "gen_ai.request");
    assert_null(am_intern_cached(heap));
    free(heap);
}

static void test_cached_lookup_after_a_miss(void **state)
{
    (void)state;
    /* The address was remembered as "not interned"; it now holds a key. */
    char buf[64];
    strcpy(buf, "not.a.known.key");
    assert_null(am_intern_cached(buf));
    strcpy(buf, "session.id");
    assert_ptr_equal(am_intern_cached(buf), am_intern("session.id", 10));
}

static void *resolve_all(void *arg)
{
    const char **out = arg;
    for (size_t i = 0; i < listed.count; i++) {
        out[i] = am_intern(listed.keys[i], strlen(listed.keys[i]));
    }
    return NULL;
}

static void test_threads_see_one_table(void **state)
{
    (void)state;
    const char **a = calloc(listed.count, sizeof(char *));
    const char **b = calloc(listed.count, sizeof(char *));
    pthread_t ta;
    pthread_t tb;
    assert_int_equal(pthread_create(&ta, NULL, resolve_all, a), 0);
    assert_int_equal(pthread_create(&tb, NULL, resolve_all, b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (size_t i = 0; i < listed.count; i++) {
        assert_non_null(a[i]);
        assert_ptr_equal(a[i], b[i]);
    }
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* first: the two threads race to build the table */
        cmocka_unit_test(test_threads_see_one_table),
        cmocka_unit_test(test_every_listed_key_is_interned),
        cmocka_unit_test(test_the_agentmeter_keys_are_interned),
        cmocka_unit_test(test_lookups_are_exact),
        cmocka_unit_test(test_cached_lookup),
        cmocka_unit_test(test_cached_lookup_after_a_miss),
    };
    return cmocka_run_group_tests(tests, load_listed_keys, free_listed_keys);
}
