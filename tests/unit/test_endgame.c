/* Unit tests for the endgame policy (lib/sched/endgame.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "sched/endgame.h"

#define MiB (1024u * 1024u)

/* A download of 100 MiB in 4 MiB pieces that verified 96 MiB in 10 s
 * (9.6 MiB/s) with 1 fetch left: a whole piece at its share takes
 * 4 / 9.6 s = 416.7 ms, so the threshold is 1250 ms still to go. */
static df_endgame_fetch_t base(void)
{
    df_endgame_fetch_t f = {
        .age_ms = 4000, .got = 2 * MiB, .length = 4 * MiB, .inflight = 1, .elapsed_ms = 10000, .done = 96 * MiB,
    };
    return f;
}

static void test_active(void **state)
{
    (void)state;
    /* 25 pieces: 20 had, 5 fetched: nothing left to ask for */
    assert_true(df_endgame_active(25, 20, 5, 0));
    /* one piece neither had, fetched nor hashed: not yet */
    assert_false(df_endgame_active(25, 20, 4, 0));
    /* a piece being hashed counts as taken */
    assert_true(df_endgame_active(25, 20, 4, 1));
    /* nothing in flight (all hashing or all had): nothing to abandon */
    assert_false(df_endgame_active(25, 20, 0, 5));
    assert_false(df_endgame_active(25, 25, 0, 0));
    /* no overflow at the extremes */
    assert_true(df_endgame_active(UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX));
    assert_false(df_endgame_active(UINT32_MAX, 0, 1, 0));
}

static void test_young_fetch_kept(void **state)
{
    df_endgame_fetch_t f = base();
    (void)state;
    f.got = 1; /* hopelessly slow ... */
    f.age_ms = DF_ENDGAME_MIN_AGE_MS - 1; /* ... but too young to judge */
    assert_false(df_endgame_should_abandon(&f));
    f.age_ms = DF_ENDGAME_MIN_AGE_MS;
    assert_true(df_endgame_should_abandon(&f));
}

static void test_no_byte_is_forever(void **state)
{
    df_endgame_fetch_t f = base();
    (void)state;
    f.got = 0;
    assert_true(df_endgame_should_abandon(&f));
}

static void test_threshold(void **state)
{
    df_endgame_fetch_t f = base();
    (void)state;
    /* 4 s for 2 MiB: 4 s still to go, more than 3 x 416.7 ms */
    assert_true(df_endgame_should_abandon(&f));
    /* 3.9 MiB after 4 s: 0.1 MiB still to go takes 102.6 ms: keep */
    f.got = 4 * MiB - MiB / 10;
    assert_false(df_endgame_should_abandon(&f));
    /* The boundary: left = (L - g) * age / g against 1250 ms.  With
     * age 4000 ms, L = 4 MiB: left = 1250 ms at g = L * 4000 / 5250. */
    f.got = (uint64_t)4 * MiB * 4000 / 5250 + 1; /* a byte more: just under */
    assert_false(df_endgame_should_abandon(&f));
    f.got = (uint64_t)4 * MiB * 4000 / 5250 - 1000; /* clearly over */
    assert_true(df_endgame_should_abandon(&f));
}

static void test_share_grows_with_inflight(void **state)
{
    df_endgame_fetch_t f = base();
    (void)state;
    /* With 10 fetches sharing the download's rate a piece takes 4.17 s at
     * its share: 4 s to go is within 3x of that. */
    f.inflight = 10;
    assert_false(df_endgame_should_abandon(&f));
    /* a slower download (96 MiB in 100 s) makes the same fetch look fine */
    f = base();
    f.elapsed_ms = 100000;
    assert_false(df_endgame_should_abandon(&f));
}

static void test_impossible_inputs(void **state)
{
    df_endgame_fetch_t f = base();
    (void)state;
    f.done = 0; /* no rate known yet */
    assert_false(df_endgame_should_abandon(&f));
    f = base();
    f.elapsed_ms = 0;
    assert_false(df_endgame_should_abandon(&f));
    f = base();
    f.inflight = 0;
    assert_false(df_endgame_should_abandon(&f));
    f = base();
    f.got = f.length + 1;
    assert_false(df_endgame_should_abandon(&f));
    f = base();
    f.got = f.length; /* complete: being hashed, not slow */
    assert_false(df_endgame_should_abandon(&f));
}

static void test_large_values(void **state)
{
    /* 1 TiB download, 64 MiB pieces, an hour in: the products overflow 64
     * bits as integers; the decision must still be right. */
    df_endgame_fetch_t f = {
        .age_ms = 3600000, .got = 1, .length = 64ull * MiB, .inflight = 64, .elapsed_ms = 3600000,
        .done = 1ull << 40,
    };
    (void)state;
    assert_true(df_endgame_should_abandon(&f));
    f.got = 64ull * MiB - 1;
    assert_false(df_endgame_should_abandon(&f));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_active),
        cmocka_unit_test(test_young_fetch_kept),
        cmocka_unit_test(test_no_byte_is_forever),
        cmocka_unit_test(test_threshold),
        cmocka_unit_test(test_share_grows_with_inflight),
        cmocka_unit_test(test_impossible_inputs),
        cmocka_unit_test(test_large_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
