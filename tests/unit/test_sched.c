/* Unit tests for the scheduling policy (lib/sched/sched.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "piece/piece.h"
#include "sched/sched.h"

#include <stdlib.h>
#include <string.h>

#define NP 16 /* pieces in the hand-made cases */

typedef struct {
    uint8_t want[NP / 8];
    uint8_t have[8][NP / 8];
    df_sched_source_t src[8];
    uint32_t load[8];
    df_sched_assign_t out[NP];
    df_sched_input_t in;
} fixture_t;

/* A fresh fixture: requester wants every piece, nsrc sources holding
 * nothing, `slots` slots each, max_assign NP. */
static void fx_init(fixture_t *f, size_t nsrc, uint32_t slots)
{
    memset(f, 0, sizeof(*f));
    memset(f->want, 0xff, sizeof(f->want));
    for (size_t i = 0; i < nsrc; i++) {
        f->src[i].have = f->have[i];
        f->src[i].slots = slots;
    }
    f->in.piece_count = NP;
    f->in.want = f->want;
    f->in.sources = f->src;
    f->in.nsources = nsrc;
    f->in.max_assign = NP;
    f->in.rand_seed = 42;
}

static void give(fixture_t *f, size_t src, uint32_t from, uint32_t to)
{
    for (uint32_t p = from; p < to; p++)
        df_bitmap_set(f->have[src], p);
}

static size_t pick(fixture_t *f)
{
    return df_sched_pick(&f->in, f->load, f->out);
}

static void test_empty_inputs(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 2, 4);
    give(&f, 0, 0, NP);
    f.in.nsources = 0;
    assert_int_equal(pick(&f), 0);

    fx_init(&f, 2, 4);
    give(&f, 0, 0, NP);
    f.in.piece_count = 0;
    assert_int_equal(pick(&f), 0);

    fx_init(&f, 2, 4);
    give(&f, 0, 0, NP);
    f.in.max_assign = 0;
    assert_int_equal(pick(&f), 0);
    assert_int_equal(f.load[0], 0);

    fx_init(&f, 2, 4); /* nobody holds anything */
    assert_int_equal(pick(&f), 0);

    fx_init(&f, 2, 4);
    give(&f, 0, 0, NP);
    memset(f.want, 0, sizeof(f.want));
    assert_int_equal(pick(&f), 0);

    fx_init(&f, 2, 4);
    give(&f, 0, 0, NP);
    f.src[1].have = NULL; /* a source with no bitmap holds nothing */
    assert_int_equal(pick(&f), 4);

    assert_int_equal(df_sched_pick(NULL, f.load, f.out), 0);
}

static void test_rarest_first(void **state)
{
    fixture_t f;
    (void)state;

    /* piece 5: one holder; piece 9: two; piece 2: three. */
    fx_init(&f, 3, 8);
    give(&f, 0, 2, 3);
    give(&f, 1, 2, 3);
    give(&f, 2, 2, 3);
    give(&f, 1, 9, 10);
    give(&f, 2, 9, 10);
    give(&f, 0, 5, 6);
    for (uint64_t seed = 0; seed < 50; seed++) {
        memset(f.load, 0, sizeof(f.load));
        f.in.rand_seed = seed;
        assert_int_equal(pick(&f), 3);
        assert_int_equal(f.out[0].piece, 5);
        assert_int_equal(f.out[1].piece, 9);
        assert_int_equal(f.out[2].piece, 2);
    }
}

static void test_seed_not_counted_in_rarity(void **state)
{
    fixture_t f;
    (void)state;

    /* The seed holds everything; a peer holds 0..7.  Pieces 8..15 (held by
     * no peer) must come before 0..7. */
    fx_init(&f, 2, 16);
    f.src[0].is_seed = true;
    give(&f, 0, 0, NP);
    give(&f, 1, 0, 8);
    assert_int_equal(pick(&f), NP);
    for (int i = 0; i < 8; i++) {
        assert_true(f.out[i].piece >= 8);
        assert_int_equal(f.out[i].source, 0);
    }
    for (int i = 8; i < NP; i++) {
        assert_true(f.out[i].piece < 8);
        assert_int_equal(f.out[i].source, 1); /* the peer, not the seed */
    }
}

static void test_peer_preferred_over_seed(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 2, 4);
    f.src[0].is_seed = true;
    f.src[0].slots = 100;
    give(&f, 0, 0, NP);
    give(&f, 1, 0, 2);
    f.in.max_assign = 2;
    /* Only pieces 0/1 are wanted: the peer serves both although the seed
     * is idle and has far more slots. */
    memset(f.want, 0, sizeof(f.want));
    df_bitmap_set(f.want, 0);
    df_bitmap_set(f.want, 1);
    assert_int_equal(pick(&f), 2);
    assert_int_equal(f.out[0].source, 1);
    assert_int_equal(f.out[1].source, 1);
    assert_int_equal(f.load[1], 2);
    assert_int_equal(f.load[0], 0);
}

/* Rule 6: the seed does not send a piece that a peer already holds (even
 * a busy one) or is fetching; a piece nobody has or fetches is sent; without
 * `coming` nothing is held back. */
static void test_seed_piece_limit(void **state)
{
    fixture_t f;
    uint32_t coming[NP] = {0};
    (void)state;

    fx_init(&f, 2, 8);
    f.src[0].is_seed = true;
    f.src[0].slots = 100;
    give(&f, 0, 0, 4);          /* the seed holds 0..3 */
    give(&f, 1, 3, 4);          /* a peer holds 3 too, but has no free slot */
    f.load[1] = 8;
    coming[0] = 1;              /* 0 is on its way to another peer */
    f.in.coming = coming;
    f.in.seed_piece_limit = 1;
    assert_int_equal(pick(&f), 2); /* 1 and 2; not 0 (coming) nor 3 (held) */
    for (size_t k = 0; k < 2; k++) {
        assert_true(f.out[k].piece == 1 || f.out[k].piece == 2);
        assert_int_equal(f.out[k].source, 0);
    }
    /* a holder excluded for this requester does not count */
    fx_init(&f, 2, 8);
    f.src[0].is_seed = true;
    f.src[0].slots = 100;
    give(&f, 0, 3, 4);
    give(&f, 1, 3, 4);
    f.src[1].excluded = true;
    f.in.coming = coming;
    f.in.seed_piece_limit = 1;
    assert_int_equal(pick(&f), 1);
    assert_int_equal(f.out[0].piece, 3);
    /* the same without rule 6: all four from the seed */
    fx_init(&f, 2, 8);
    f.src[0].is_seed = true;
    f.src[0].slots = 100;
    give(&f, 0, 0, 4);
    give(&f, 1, 3, 4);
    f.load[1] = 8;
    assert_int_equal(pick(&f), 4);
}

static void test_seed_used_when_peers_full(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 2, 1);
    f.src[0].is_seed = true;
    f.src[0].slots = 8;
    give(&f, 0, 0, NP);
    give(&f, 1, 0, NP);
    f.in.max_assign = 3;
    assert_int_equal(pick(&f), 3);
    /* The peer takes exactly one (its single slot), the seed the rest. */
    assert_int_equal(f.load[1], 1);
    assert_int_equal(f.load[0], 2);
}

static void test_least_loaded_peer(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 3, 4);
    give(&f, 0, 0, NP);
    give(&f, 1, 0, NP);
    give(&f, 2, 0, NP);
    f.load[0] = 3;
    f.load[1] = 0;
    f.load[2] = 2;
    f.in.max_assign = 3;
    /* Loads 3,0,2 of 4: source 1 twice (0->1->2), then 1 or 2 (tie at 2/4). */
    assert_int_equal(pick(&f), 3);
    assert_int_equal(f.out[0].source, 1);
    assert_int_equal(f.out[1].source, 1);
    assert_true(f.out[2].source == 1 || f.out[2].source == 2);
    assert_int_equal(f.load[0], 3);
    assert_int_equal(f.load[1] + f.load[2], 5);

    /* Ratio, not absolute load: 2/8 beats 1/2. */
    fx_init(&f, 2, 2);
    give(&f, 0, 0, NP);
    give(&f, 1, 0, NP);
    f.src[0].slots = 8;
    f.load[0] = 2;
    f.load[1] = 1;
    f.in.max_assign = 1;
    assert_int_equal(pick(&f), 1);
    assert_int_equal(f.out[0].source, 0);
}

static void test_slot_caps(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 3, 2);
    f.src[2].is_seed = true;
    f.src[2].slots = 3;
    give(&f, 0, 0, NP);
    give(&f, 1, 0, NP);
    give(&f, 2, 0, NP);
    f.load[1] = 1;
    /* Capacity left: 2 + 1 + 3 = 6. */
    assert_int_equal(pick(&f), 6);
    assert_int_equal(f.load[0], 2);
    assert_int_equal(f.load[1], 2);
    assert_int_equal(f.load[2], 3);
    /* Everybody is full now: nothing more. */
    assert_int_equal(pick(&f), 0);

    /* Zero slots: never used. */
    fx_init(&f, 1, 0);
    give(&f, 0, 0, NP);
    assert_int_equal(pick(&f), 0);
    assert_int_equal(f.load[0], 0);

    /* A load already above the slots (slots lowered): not used. */
    fx_init(&f, 1, 2);
    give(&f, 0, 0, NP);
    f.load[0] = 5;
    assert_int_equal(pick(&f), 0);
    assert_int_equal(f.load[0], 5);
}

static void test_excluded_never_used(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 3, 16);
    f.src[2].is_seed = true;
    give(&f, 0, 0, NP);
    give(&f, 1, 0, 4);
    give(&f, 2, 0, NP);
    f.src[0].excluded = true;
    assert_int_equal(pick(&f), NP);
    for (int i = 0; i < NP; i++) {
        assert_int_not_equal(f.out[i].source, 0);
        if (f.out[i].piece < 4)
            assert_int_equal(f.out[i].source, 1);
        else
            assert_int_equal(f.out[i].source, 2);
    }
    assert_int_equal(f.load[0], 0);

    /* An excluded seed: pieces only it holds are not assigned at all. */
    fx_init(&f, 2, 16);
    f.src[0].is_seed = true;
    f.src[0].excluded = true;
    give(&f, 0, 0, NP);
    give(&f, 1, 3, 5);
    assert_int_equal(pick(&f), 2);
    assert_int_equal(f.out[0].source, 1);
    assert_int_equal(f.out[1].source, 1);
}

static void test_max_assign_and_want(void **state)
{
    fixture_t f;
    (void)state;

    fx_init(&f, 1, 100);
    give(&f, 0, 0, NP);
    f.in.max_assign = 5;
    assert_int_equal(pick(&f), 5);
    assert_int_equal(f.load[0], 5);

    fx_init(&f, 1, 100);
    give(&f, 0, 0, NP);
    memset(f.want, 0, sizeof(f.want));
    df_bitmap_set(f.want, 3);
    df_bitmap_set(f.want, 11);
    assert_int_equal(pick(&f), 2);
    assert_true((f.out[0].piece == 3 && f.out[1].piece == 11) ||
                (f.out[0].piece == 11 && f.out[1].piece == 3));
}

static void test_determinism_and_spread(void **state)
{
    fixture_t a, b;
    uint32_t first_seen[NP] = {0};
    int distinct = 0;
    (void)state;

    for (uint64_t seed = 0; seed < 64; seed++) {
        fx_init(&a, 4, 2);
        fx_init(&b, 4, 2);
        for (int s = 0; s < 4; s++) {
            give(&a, (size_t)s, 0, NP);
            give(&b, (size_t)s, 0, NP);
        }
        a.in.rand_seed = b.in.rand_seed = seed;
        assert_int_equal(pick(&a), 8);
        assert_int_equal(pick(&b), 8);
        assert_memory_equal(a.out, b.out, 8 * sizeof(a.out[0]));
        assert_memory_equal(a.load, b.load, sizeof(a.load));
        first_seen[a.out[0].piece]++;
    }
    /* With all pieces equally rare, different seeds start on different
     * pieces: 64 seeds over 16 pieces should hit most of them. */
    for (int p = 0; p < NP; p++)
        distinct += first_seen[p] > 0;
    assert_true(distinct >= 8);
}

/* ---- randomized property test */

static uint64_t rng_state;
static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((rng_state >> 33) % n);
}

static void test_random_properties(void **state)
{
    enum { MAXP = 200, MAXS = 12 };
    static uint8_t want[MAXP / 8 + 1], have[MAXS][MAXP / 8 + 1];
    df_sched_source_t src[MAXS];
    uint32_t load[MAXS], load0[MAXS], slots_ok[MAXS];
    df_sched_assign_t out[64];
    uint8_t seen[MAXP];
    (void)state;

    rng_state = 1;
    for (int iter = 0; iter < 1000; iter++) {
        uint32_t np = 1 + rnd(MAXP);
        size_t ns = rnd(MAXS + 1);
        df_sched_input_t in = {.piece_count = np, .want = want, .sources = src, .nsources = ns,
                               .max_assign = rnd(64) + (iter % 7 == 0 ? 0 : 1),
                               .rand_seed = rnd(1u << 31)};
        size_t n;

        memset(want, 0, sizeof(want));
        for (uint32_t p = 0; p < np; p++)
            if (rnd(4))
                df_bitmap_set(want, p);
        for (size_t s = 0; s < ns; s++) {
            uint32_t density = rnd(5);
            memset(have[s], 0, sizeof(have[s]));
            for (uint32_t p = 0; p < np; p++)
                if (rnd(4) < density)
                    df_bitmap_set(have[s], p);
            src[s].have = have[s];
            src[s].slots = rnd(6);
            src[s].is_seed = rnd(5) == 0;
            src[s].excluded = rnd(6) == 0;
            load[s] = load0[s] = rnd(src[s].slots + 2);
        }

        n = df_sched_pick(&in, load, out);
        assert_true(n <= in.max_assign);
        memset(seen, 0, sizeof(seen));
        memset(slots_ok, 0, sizeof(slots_ok));
        for (size_t k = 0; k < n; k++) {
            uint32_t p = out[k].piece, s = out[k].source;
            assert_true(p < np);
            assert_true(s < ns);
            assert_true(df_bitmap_test(want, p));
            assert_true(df_bitmap_test(have[s], p));
            assert_false(src[s].excluded);
            assert_false(seen[p]);
            seen[p] = 1;
            slots_ok[s]++;
        }
        for (size_t s = 0; s < ns; s++) {
            /* load grew by exactly the assignments, never past the slots
             * unless it already was past them (then it did not grow). */
            assert_int_equal(load[s], load0[s] + slots_ok[s]);
            if (slots_ok[s])
                assert_true(load[s] <= src[s].slots);
        }
        /* Maximality: if fewer than max_assign were made, no wanted,
         * unassigned piece has a usable holder with a free slot left. */
        if (n < in.max_assign) {
            for (uint32_t p = 0; p < np; p++) {
                if (!df_bitmap_test(want, p) || seen[p])
                    continue;
                for (size_t s = 0; s < ns; s++)
                    assert_false(df_bitmap_test(have[s], p) && !src[s].excluded &&
                                 load[s] < src[s].slots);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_inputs),
        cmocka_unit_test(test_rarest_first),
        cmocka_unit_test(test_seed_not_counted_in_rarity),
        cmocka_unit_test(test_peer_preferred_over_seed),
        cmocka_unit_test(test_seed_used_when_peers_full),
        cmocka_unit_test(test_least_loaded_peer),
        cmocka_unit_test(test_slot_caps),
        cmocka_unit_test(test_excluded_never_used),
        cmocka_unit_test(test_max_assign_and_want),
        cmocka_unit_test(test_determinism_and_spread),
        cmocka_unit_test(test_random_properties),
        cmocka_unit_test(test_seed_piece_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
