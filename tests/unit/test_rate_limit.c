/* Token buckets driven by simulated time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/rate_limit.h"

#define KiB 1024ull
#define MiB (1024ull * KiB)

/* A reader that wants `chunk` bytes whenever it is allowed to run, sleeping
 * exactly the wait it is told, for `ms` simulated milliseconds from t0.
 * Returns the total granted. */
static uint64_t run(df_rate_limit_t *const *rls, int n, uint64_t t0, uint64_t ms, uint64_t chunk,
                    uint64_t *wakeups)
{
    uint64_t now = t0, total = 0, wakes = 0;

    while (now < t0 + ms) {
        uint64_t wait = 0, got = df_rate_limit_take(rls, n, chunk, now, &wait);
        assert_true(got <= chunk);
        total += got;
        wakes++;
        if (got < chunk) {
            assert_true(wait >= 1);
            now += wait;
        }
    }
    if (wakeups)
        *wakeups = wakes;
    return total;
}

static void test_rate_over_time(void **state)
{
    df_rate_limit_t rl;
    df_rate_limit_t *rls[] = {&rl};
    uint64_t burst, total, wakes;

    df_rate_limit_init(&rl, 4 * MiB, 1000);
    burst = rl.burst;
    assert_int_equal(burst, 4 * MiB / 20);
    total = run(rls, 1, 1000, 10000, 64 * KiB, &wakes);
    /* 40 MiB over 10 s plus the initial burst, within one chunk. */
    assert_true(total >= 40 * MiB);
    assert_true(total <= 40 * MiB + burst + 64 * KiB);
    /* The reader is not woken for crumbs: roughly one wake per chunk. */
    assert_true(wakes < 2 * (total / (64 * KiB)) + 100);
}

static void test_small_rate(void **state)
{
    df_rate_limit_t rl;
    df_rate_limit_t *rls[] = {&rl};
    uint64_t total;

    /* Below the 64 KiB minimum burst: the first burst dominates briefly,
     * then 1000 B/s. */
    df_rate_limit_init(&rl, 1000, 0);
    assert_int_equal(rl.burst, 64 * KiB);
    total = run(rls, 1, 0, 30000, 4 * KiB, NULL);
    assert_true(total >= 64 * KiB + 29000);
    assert_true(total <= 64 * KiB + 30000 + 4 * KiB);
}

static void test_two_limiters_take_min(void **state)
{
    df_rate_limit_t fast, slow;
    df_rate_limit_t *rls[] = {&fast, &slow};
    uint64_t total;

    df_rate_limit_init(&fast, 8 * MiB, 0);
    df_rate_limit_init(&slow, 2 * MiB, 0);
    total = run(rls, 2, 0, 10000, 32 * KiB, NULL);
    assert_true(total >= 20 * MiB);
    assert_true(total <= 20 * MiB + slow.burst + 32 * KiB);
    /* The fast bucket was only charged what was granted, so it is full. */
    assert_true(fast.tokens >= (double)fast.burst - 32.0 * KiB);

    /* Order does not matter, NULL entries are skipped. */
    df_rate_limit_t *rls2[] = {NULL, &slow, &fast};
    df_rate_limit_init(&fast, 8 * MiB, 0);
    df_rate_limit_init(&slow, 2 * MiB, 0);
    total = run(rls2, 3, 0, 10000, 32 * KiB, NULL);
    assert_true(total >= 20 * MiB && total <= 20 * MiB + slow.burst + 32 * KiB);
}

static void test_unlimited_and_wait(void **state)
{
    df_rate_limit_t none, rl;
    df_rate_limit_t *one[] = {&none};
    df_rate_limit_t *both[] = {&none, &rl};
    uint64_t wait = 0;

    df_rate_limit_init(&none, 0, 0);
    assert_int_equal(df_rate_limit_take(one, 1, UINT64_MAX, 0, &wait), UINT64_MAX);
    assert_int_equal(df_rate_limit_take(NULL, 0, 77, 0, &wait), 77);

    /* Drain, then the wait covers one chunk (10 ms at this rate). */
    df_rate_limit_init(&rl, 1 * MiB, 0);
    assert_int_equal(df_rate_limit_take(both, 2, 1 * MiB, 0, &wait), rl.burst);
    assert_int_equal(df_rate_limit_take(both, 2, 1 * MiB, 0, &wait), 0);
    assert_true(wait >= 9 && wait <= 11);
    assert_true(df_rate_limit_take(both, 2, 1 * MiB, wait, &wait) >= MiB / 100);

    /* A clock stepping backwards grants nothing extra. */
    assert_int_equal(df_rate_limit_take(both, 2, 1 * MiB, 0, &wait), 0);

    /* The bucket never holds more than its burst after idling. */
    assert_int_equal(df_rate_limit_take(both, 2, 100 * MiB, 3600 * 1000, &wait), rl.burst);
}

static void test_set_rate(void **state)
{
    df_rate_limit_t rl;
    df_rate_limit_t *rls[] = {&rl};
    uint64_t total;

    df_rate_limit_init(&rl, 0, 0);
    df_rate_limit_set_rate(&rl, 1 * MiB, 0);
    /* Going from unlimited to limited does not hand out a burst. */
    total = run(rls, 1, 0, 5000, 16 * KiB, NULL);
    assert_true(total >= 5 * MiB - 16 * KiB && total <= 5 * MiB + 16 * KiB);

    df_rate_limit_set_rate(&rl, 4 * MiB, 5000);
    total = run(rls, 1, 5000, 5000, 16 * KiB, NULL);
    assert_true(total >= 20 * MiB - 16 * KiB && total <= 20 * MiB + rl.burst + 16 * KiB);

    df_rate_limit_set_rate(&rl, 0, 10000);
    assert_int_equal(df_rate_limit_take(rls, 1, 1ull << 40, 10000, NULL), 1ull << 40);
}

/* Debt mode: 1 MiB/s, chunks of 256 KiB always taken whole; over 10
 * simulated seconds the bytes let through stay within one chunk of 10 MiB. */
static void test_debt_mode(void **state)
{
    df_rate_limit_t rl;
    df_rate_limit_t *rls[2] = {&rl, NULL};
    uint64_t now = 1000, sent = 0;

    (void)state;
    df_rate_limit_init(&rl, 1u << 20, now);
    while (now < 11000) {
        uint64_t wait = df_rate_limit_debt_wait(rls, 2, now);
        if (wait > 0) {
            now += wait;
            continue;
        }
        df_rate_limit_debt_take(rls, 2, 256u * 1024u, now);
        sent += 256u * 1024u;
    }
    assert_true(sent >= 10u * (1u << 20) - 256u * 1024u);
    assert_true(sent <= 10u * (1u << 20) + 2u * 256u * 1024u);
    /* unlimited never waits */
    df_rate_limit_init(&rl, 0, now);
    df_rate_limit_debt_take(rls, 2, 1u << 30, now);
    assert_int_equal(df_rate_limit_debt_wait(rls, 2, now), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_over_time),
        cmocka_unit_test(test_small_rate),
        cmocka_unit_test(test_two_limiters_take_min),
        cmocka_unit_test(test_unlimited_and_wait),
        cmocka_unit_test(test_set_rate),
        cmocka_unit_test(test_debt_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
