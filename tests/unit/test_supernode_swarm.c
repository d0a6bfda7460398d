/* Unit tests for the supernode's task/peer bookkeeping
 * (lib/supernode/swarm.c): joins, pulls, results, errors, removal, sweep,
 * with the load/in-flight invariants checked after every step. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "piece/piece.h"
#include "supernode/swarm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PS 1024u
#define NP 20u
#define LEN (NP * PS - 100) /* last piece short */

static const char *TID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static int freed;
static void on_free(df_sn_task_t *t, void *arg)
{
    (void)t;
    (void)arg;
    freed++;
}

/* The invariants of swarm.h. */
static void check(df_sn_task_t *t)
{
    uint32_t seed_load = 0;

    for (uint32_t k = 0; k < t->nmembers; k++) {
        df_sn_member_t *m = t->members[k];
        uint32_t load = 0;
        if (!t->shaped)
            continue;
        assert_int_equal(df_bitmap_count(m->busy, t->piece_count), m->ninflight);
        for (uint32_t i = 0; i < m->ninflight; i++)
            assert_true(df_bitmap_test(m->busy, m->inflight[i].piece));
        for (uint32_t j = 0; j < t->nmembers; j++)
            for (uint32_t i = 0; i < t->members[j]->ninflight; i++)
                if (t->members[j]->inflight[i].src == m->peer->serial)
                    load++;
        assert_int_equal(m->load, load);
        for (uint32_t i = 0; i < m->ninflight; i++)
            if (m->inflight[i].src == 0)
                seed_load++;
    }
    assert_int_equal(t->seed_load, seed_load);
}

typedef struct {
    df_sn_swarm_t *sw;
    df_sn_task_t *t;
} fx_t;

static void fx_new(fx_t *f, uint32_t seed_slots, uint32_t peer_slots, uint32_t batch)
{
    df_sn_swarm_opts_t o = {.peer_upload_slots = peer_slots, .seed_upload_slots = seed_slots,
                            .batch_pieces = batch};
    char *hdrs[] = {"Authorization: x"};

    freed = 0;
    assert_int_equal(df_sn_swarm_new(&o, on_free, NULL, &f->sw), 0);
    assert_int_equal(df_sn_task_create(f->sw, TID, "http://o/f?t=1", "http://o/f", NULL, NULL, hdrs, 1,
                                       DF_PATTERN_P2P, 0, &f->t),
                     0);
    assert_int_equal(df_sn_task_create(f->sw, TID, "u", "u", NULL, NULL, NULL, 0, DF_PATTERN_P2P, 0, &f->t),
                     -EEXIST);
    assert_ptr_equal(df_sn_task_find(f->sw, TID), f->t);
    assert_int_equal(df_sn_task_shape(f->t, LEN, PS), 0);
    assert_int_equal(f->t->piece_count, NP);
}

static void seed_all(df_sn_task_t *t)
{
    uint8_t sha[32];
    for (uint32_t i = 0; i < t->piece_count; i++) {
        memset(sha, (int)i, sizeof(sha));
        df_sn_task_seed_piece(t, i, sha);
    }
}

static df_sn_member_t *join(fx_t *f, const char *host, uint16_t port, uint64_t now)
{
    df_sn_member_t *m = NULL;
    assert_int_equal(df_sn_join(f->sw, f->t, "127.0.0.1", port, host, port != 0, now, &m), 0);
    return m;
}

static void results_ok(fx_t *f, df_sn_member_t *m, const df_sn_assign_t *a, size_t n)
{
    df_sn_result_t r[DF_SN_INFLIGHT_MAX];
    for (size_t i = 0; i < n; i++) {
        r[i].piece = a[i].piece;
        r[i].src = (char *)(a[i].src ? a[i].src->id : DF_SN_SEED_ID);
        r[i].ok = true;
    }
    df_sn_apply_results(f->t, m, r, n, false, 0);
    check(f->t);
}

static void test_seed_assignments(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n;
    df_sn_member_t *m;

    (void)state;
    fx_new(&f, 3, 4, 8);
    m = join(&f, "a", 40001, 0);
    assert_string_equal(m->peer->id, "a-127.0.0.1-40001");

    /* Nothing verified at the seed yet: wait. */
    df_sn_pull(f.sw, f.t, m, 0, 0, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_WAIT);

    seed_all(f.t);
    assert_int_equal(f.t->seed_pieces, NP);
    /* The seed has 3 slots: 3 assignments even though 8 are allowed. */
    df_sn_pull(f.sw, f.t, m, 0, 1, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_ASSIGN);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        uint64_t off, len;
        assert_null(a[i].src);
        df_piece_span(LEN, PS, a[i].piece, &off, &len);
        assert_int_equal(a[i].offset, off);
        assert_int_equal(a[i].length, len);
        assert_int_equal(a[i].sha256[0], (uint8_t)a[i].piece);
    }
    assert_int_equal(f.t->seed_load, 3);
    check(f.t);
    /* Seed full: wait. */
    df_sn_pull(f.sw, f.t, m, 0, 1, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_WAIT);

    /* Until complete, holding everything is not "done". */
    while (1) {
        df_sn_pull(f.sw, f.t, m, 0, 2, a, &n, &st);
        if (st != DF_SN_PULL_ASSIGN)
            break;
        results_ok(&f, m, a, n);
    }
    /* Results for the first three were never sent: the running count
     * reconciles them away. */
    df_sn_apply_results(f.t, m, NULL, 0, true, 0);
    check(f.t);
    assert_int_equal(f.t->seed_load, 0);
    while (1) {
        df_sn_pull(f.sw, f.t, m, 0, 3, a, &n, &st);
        if (st != DF_SN_PULL_ASSIGN)
            break;
        results_ok(&f, m, a, n);
    }
    assert_int_equal(df_bitmap_count(m->have, NP), NP);
    assert_int_equal(st, DF_SN_PULL_WAIT); /* seed still "seeding" */
    df_sn_task_complete(f.t, "sha256:00", 5);
    df_sn_pull(f.sw, f.t, m, 0, 4, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_DONE);

    df_sn_task_fail(f.t, "origin", 404, "gone", 6);
    df_sn_pull(f.sw, f.t, m, 0, 4, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_ERROR);
    assert_string_equal(f.t->error, "gone");

    df_sn_swarm_free(f.sw);
    assert_int_equal(freed, 1);
}

static void test_peers_preferred_and_slots(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n;
    df_sn_member_t *holder, *cdn, *b;

    (void)state;
    fx_new(&f, 8, 2, 8);
    seed_all(f.t);
    holder = join(&f, "h", 40001, 0);
    cdn = join(&f, "c", 0, 0); /* port 0: never a source */
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(holder->have, i);
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(cdn->have, i);
    b = join(&f, "b", 40002, 0);

    df_sn_pull(f.sw, f.t, b, 8, 1, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_ASSIGN);
    /* Two from the holder (its slots), the rest from the seed; none from cdn. */
    {
        size_t from_holder = 0, from_seed = 0;
        for (size_t i = 0; i < n; i++) {
            if (a[i].src == holder->peer)
                from_holder++;
            else if (!a[i].src)
                from_seed++;
            else
                fail_msg("assigned from %s", a[i].src->id);
        }
        assert_int_equal(from_holder, 2);
        assert_int_equal(from_seed, n - 2);
    }
    assert_int_equal(holder->load, 2);
    check(f.t);

    /* The holder leaves: its loads on b are freed, b's busy pieces too. */
    df_sn_peer_remove(f.sw, holder->peer);
    check(f.t);
    assert_int_equal(f.t->nmembers, 2);
    assert_int_equal(b->ninflight, n - 2);

    /* want caps the answer. */
    df_sn_pull(f.sw, f.t, b, 1, 2, a, &n, &st);
    assert_int_equal(n, 1);
    check(f.t);
    df_sn_swarm_free(f.sw);
}

static void test_report_error(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n;
    df_sn_member_t *bad, *r[4];

    (void)state;
    fx_new(&f, 0 + 1, 8, 8);
    seed_all(f.t);
    bad = join(&f, "bad", 40001, 0);
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(bad->have, i);
    for (int k = 0; k < 4; k++) {
        char host[8];
        snprintf(host, sizeof(host), "r%d", k);
        r[k] = join(&f, host, (uint16_t)(40010 + k), 0);
    }
    /* r0 gets pieces from bad, reports a digest error: never again from bad. */
    df_sn_pull(f.sw, f.t, r[0], 2, 1, a, &n, &st);
    assert_int_equal(n, 2);
    assert_ptr_equal(a[0].src, bad->peer);
    assert_int_equal(df_sn_report_error(f.t, r[0], bad->peer->id, a[0].piece, DF_SN_ERR_DIGEST, 0), 0);
    check(f.t);
    assert_false(df_bitmap_test(bad->have, a[0].piece)); /* bad no longer "holds" it */
    assert_int_equal(bad->digest_errors, 1);
    df_sn_pull(f.sw, f.t, r[0], 8, 2, a, &n, &st);
    for (size_t i = 0; i < n; i++)
        assert_ptr_not_equal(a[i].src, bad->peer);
    check(f.t);

    /* Two more digest errors from others: bad is dropped for everybody,
     * and what others fetch from it is freed. */
    df_sn_pull(f.sw, f.t, r[3], 2, 3, a, &n, &st);
    assert_int_equal(n, 2);
    assert_ptr_equal(a[0].src, bad->peer);
    df_sn_report_error(f.t, r[1], bad->peer->id, 5, DF_SN_ERR_DIGEST, 0);
    df_sn_report_error(f.t, r[2], bad->peer->id, 6, DF_SN_ERR_DIGEST, 0);
    assert_int_equal(bad->digest_errors, DF_SN_DIGEST_ERROR_LIMIT);
    assert_int_equal(bad->load, 0);
    check(f.t);
    df_sn_pull(f.sw, f.t, r[3], 8, 4, a, &n, &st);
    for (size_t i = 0; i < n; i++)
        assert_ptr_not_equal(a[i].src, bad->peer);

    /* The seed as the culprit: the caller is told to re-check its copy
     * only for a piece really assigned from the seed, and the requester no
     * longer uses the seed.  (First free the seed's one slot.) */
    df_sn_apply_results(f.t, r[0], NULL, 0, true, 0);
    df_sn_apply_results(f.t, r[3], NULL, 0, true, 0);
    assert_int_equal(f.t->seed_load, 0);
    df_sn_pull(f.sw, f.t, r[1], 8, 5, a, &n, &st);
    assert_int_equal(n, 1); /* only the seed (1 slot) can serve */
    assert_null(a[0].src);
    assert_int_equal(df_sn_report_error(f.t, r[1], DF_SN_SEED_ID, a[0].piece + 1 < NP ? a[0].piece + 1 : 0,
                                        DF_SN_ERR_DIGEST, 0),
                     0); /* not in flight from the seed */
    assert_int_equal(df_sn_report_error(f.t, r[1], DF_SN_SEED_ID, a[0].piece, DF_SN_ERR_DIGEST, 0), 1);
    assert_int_equal(df_sn_report_error(f.t, r[1], DF_SN_SEED_ID, a[0].piece, DF_SN_ERR_DIGEST, 0), 0);
    check(f.t);
    df_sn_pull(f.sw, f.t, r[1], 8, 5, a, &n, &st);
    for (size_t i = 0; i < n; i++)
        assert_non_null(a[i].src);
    /* Unknown sources are ignored. */
    assert_int_equal(df_sn_report_error(f.t, r[1], "nobody", 1, DF_SN_ERR_IO, 0), 0);
    check(f.t);
    df_sn_swarm_free(f.sw);
}

/* "slow" (an endgame gave up on a busy source): the reporter avoids the
 * source for DF_SN_SLOW_AVOID_MS only; the source keeps its pieces, no
 * error is counted against it, and every other requester still gets it. */
static void test_report_slow(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n;
    df_sn_member_t *busy, *r[2];
    uint64_t t0 = 1000;

    (void)state;
    fx_new(&f, 1, 8, 8);
    seed_all(f.t);
    busy = join(&f, "busy", 40001, 0);
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(busy->have, i);
    r[0] = join(&f, "r0", 40010, 0);
    r[1] = join(&f, "r1", 40011, 0);

    df_sn_pull(f.sw, f.t, r[0], 1, t0, a, &n, &st);
    assert_int_equal(n, 1);
    assert_ptr_equal(a[0].src, busy->peer); /* a peer is preferred over the seed */
    assert_int_equal(df_sn_report_error(f.t, r[0], busy->peer->id, a[0].piece, DF_SN_ERR_SLOW, t0), 0);
    check(f.t);
    assert_int_equal(r[0]->ninflight, 0); /* the assignment is released */
    assert_int_equal(busy->load, 0);
    assert_true(df_bitmap_test(busy->have, a[0].piece)); /* still holds it */
    assert_int_equal(busy->digest_errors, 0);
    assert_int_equal(r[0]->nexcluded, 0); /* not excluded for good */

    /* The reporter gets the seed (its one slot) meanwhile, never busy. */
    df_sn_pull(f.sw, f.t, r[0], 8, t0 + 1, a, &n, &st);
    assert_int_equal(n, 1);
    assert_null(a[0].src);
    check(f.t);
    /* Everybody else still gets busy. */
    df_sn_pull(f.sw, f.t, r[1], 2, t0 + 2, a, &n, &st);
    assert_int_equal(n, 2);
    assert_ptr_equal(a[0].src, busy->peer);
    assert_ptr_equal(a[1].src, busy->peer);
    check(f.t);
    /* Just before the avoidance ends, still nothing from busy for r0 ... */
    df_sn_pull(f.sw, f.t, r[0], 8, t0 + DF_SN_SLOW_AVOID_MS - 1, a, &n, &st);
    for (size_t i = 0; i < n; i++)
        assert_ptr_not_equal(a[i].src, busy->peer);
    /* ... and after it, busy serves r0 again. */
    df_sn_pull(f.sw, f.t, r[0], 2, t0 + DF_SN_SLOW_AVOID_MS, a, &n, &st);
    assert_true(n >= 1);
    assert_ptr_equal(a[0].src, busy->peer);
    check(f.t);

    /* Repeated reports of one source extend its one entry of the ring. */
    for (uint32_t k = 0; k < DF_SN_SLOW_MAX + 2; k++)
        df_sn_report_error(f.t, r[1], busy->peer->id, 0, DF_SN_ERR_SLOW, t0 + k);
    check(f.t);
    {
        uint32_t entries = 0;
        for (uint32_t i = 0; i < DF_SN_SLOW_MAX; i++)
            if (r[1]->slow[i].serial == busy->peer->serial && r[1]->slow[i].until_ms) {
                entries++;
                assert_int_equal(r[1]->slow[i].until_ms, t0 + DF_SN_SLOW_MAX + 1 + DF_SN_SLOW_AVOID_MS);
            }
        assert_int_equal(entries, 1);
    }
    df_sn_swarm_free(f.sw);
}

static void test_service_down_rejoin_sweep(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n;
    df_sn_member_t *h, *b, *again;

    (void)state;
    fx_new(&f, 1, 8, 8);
    seed_all(f.t);
    h = join(&f, "h", 40001, 0);
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(h->have, i);
    b = join(&f, "b", 40002, 0);
    df_sn_pull(f.sw, f.t, b, 4, 10, a, &n, &st);
    assert_int_equal(n, 4);
    assert_int_equal(h->load, 4);

    /* ServiceDown for the task: h stays a member but is no source. */
    df_sn_service_down(f.sw, h->peer, f.t);
    check(f.t);
    assert_int_equal(h->load, 0);
    assert_int_equal(b->ninflight, 0);
    df_sn_pull(f.sw, f.t, b, 8, 11, a, &n, &st);
    for (size_t i = 0; i < n; i++)
        assert_null(a[i].src);
    assert_int_equal(n, 1); /* the seed's one slot */
    check(f.t);

    /* Registering again brings it back up, without the pieces it dropped
     * (a per-task ServiceDown is an eviction). */
    again = join(&f, "h", 40001, 12);
    assert_ptr_equal(again, h);
    assert_false(h->down);
    assert_int_equal(df_bitmap_count(h->have, NP), 0);
    /* A peer leaving altogether keeps its store: back with its pieces. */
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(h->have, i);
    df_sn_service_down(f.sw, h->peer, NULL);
    assert_true(h->down);
    again = join(&f, "h", 40001, 12);
    assert_false(h->down);
    assert_int_equal(df_bitmap_count(h->have, NP), NP);
    assert_int_equal(f.t->nmembers, 2);

    /* Assignments age out; silent peers are removed. */
    assert_int_equal(df_sn_sweep(f.sw, 1000, 60000, 500), 0);
    assert_int_equal(b->ninflight, 0);
    check(f.t);
    df_sn_peer_touch(b->peer, 50000);
    assert_int_equal(df_sn_sweep(f.sw, 60020, 60000, 500), 1); /* h (seen at 12) */
    assert_int_equal(f.t->nmembers, 1);
    assert_int_equal(df_sn_swarm_npeers(f.sw), 1);
    assert_null(df_sn_peer_find(f.sw, "h-127.0.0.1-40001"));
    assert_non_null(df_sn_peer_find(f.sw, "b-127.0.0.1-40002"));

    /* Removing the task leaves the peer, with no tasks. */
    df_sn_task_remove(f.sw, f.t);
    assert_int_equal(freed, 1);
    assert_int_equal(df_sn_swarm_ntasks(f.sw), 0);
    assert_int_equal(df_sn_swarm_peers(f.sw)->ntasks, 0);
    df_sn_swarm_free(f.sw);
}

static void test_reshape_and_bad_results(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    df_sn_result_t r[3] = {{.piece = NP + 5, .src = "x", .ok = true},
                           {.piece = UINT32_MAX - 1, .src = "", .ok = true},
                           {.piece = 0, .src = "", .ok = true}};
    size_t n;
    df_sn_member_t *m;

    (void)state;
    fx_new(&f, 4, 4, 64);
    m = join(&f, "m", 40001, 0);
    /* Claims for pieces out of range, or not verified at the seed, are ignored. */
    df_sn_apply_results(f.t, m, r, 3, true, 0);
    assert_int_equal(df_bitmap_count(m->have, NP), 0);
    seed_all(f.t);
    df_sn_apply_results(f.t, m, r, 3, true, 0);
    assert_int_equal(df_bitmap_count(m->have, NP), 1);
    df_sn_pull(f.sw, f.t, m, 0, 1, a, &n, &st);
    assert_int_equal(n, 4);
    check(f.t);

    /* Content changed at the origin: everything is forgotten. */
    assert_int_equal(df_sn_task_shape(f.t, 3 * PS, PS), 0);
    check(f.t);
    assert_int_equal(f.t->piece_count, 3);
    assert_int_equal(m->ninflight, 0);
    assert_int_equal(df_bitmap_count(m->have, 3), 0);
    df_sn_task_unshape(f.t);
    df_sn_pull(f.sw, f.t, m, 0, 2, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_WAIT);
    /* Too many pieces. */
    assert_int_equal(df_sn_task_shape(f.t, (uint64_t)PS * DF_PIECE_COUNT_MAX * 2, PS), -EFBIG);
    assert_int_equal(df_sn_task_shape(f.t, (uint64_t)PS * DF_PIECE_COUNT_MAX + 1, PS), -EFBIG);
    /* Exactly the cap is a layout the seed picks and the store accepts. */
    assert_int_equal(df_sn_task_shape(f.t, (uint64_t)PS * DF_PIECE_COUNT_MAX, PS), 0);
    assert_int_equal(f.t->piece_count, DF_PIECE_COUNT_MAX);
    /* Empty file: done at once when complete. */
    assert_int_equal(df_sn_task_shape(f.t, 0, PS), 0);
    df_sn_task_complete(f.t, "sha256:e3", 3);
    df_sn_pull(f.sw, f.t, m, 0, 3, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_DONE);
    df_sn_swarm_free(f.sw);
}

static void test_inflight_cap(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n, total = 0;
    df_sn_member_t *m;
    df_sn_swarm_opts_t o = {.peer_upload_slots = 1000, .seed_upload_slots = 1000, .batch_pieces = 1000};

    (void)state;
    freed = 0;
    assert_int_equal(df_sn_swarm_new(&o, NULL, NULL, &f.sw), 0);
    assert_int_equal(df_sn_task_create(f.sw, TID, "u", "u", NULL, NULL, NULL, 0, DF_PATTERN_P2P, 0, &f.t), 0);
    assert_int_equal(df_sn_task_shape(f.t, 200 * PS, PS), 0);
    seed_all(f.t);
    m = join(&f, "m", 1, 0);
    for (int i = 0; i < 10; i++) {
        df_sn_pull(f.sw, f.t, m, 1000, (uint64_t)i, a, &n, &st);
        total += n;
    }
    assert_int_equal(total, DF_SN_INFLIGHT_MAX);
    check(f.t);
    df_sn_swarm_free(f.sw);
}

/* A later registrant's headers replace the task's (what the next origin
 * request carries); the generation moves only when they differ. */
static void test_set_headers(void **state)
{
    fx_t f;
    char *same[] = {"Authorization: x"};
    char *fresh[] = {"Authorization: Bearer new", "X-Trace: 1"};
    uint64_t gen;

    (void)state;
    fx_new(&f, 1, 1, 1);
    assert_int_equal(f.t->nheaders, 1);
    assert_string_equal(f.t->headers[0], "Authorization: x");
    gen = f.t->headers_gen;
    assert_int_equal(df_sn_task_set_headers(f.t, same, 1), 0);
    assert_int_equal(f.t->headers_gen, gen);
    assert_int_equal(df_sn_task_set_headers(f.t, fresh, 2), 0);
    assert_int_equal(f.t->headers_gen, gen + 1);
    assert_int_equal(f.t->nheaders, 2);
    assert_string_equal(f.t->headers[0], "Authorization: Bearer new");
    assert_string_equal(f.t->headers[1], "X-Trace: 1");
    assert_ptr_not_equal(f.t->headers[0], fresh[0]); /* copied */
    assert_int_equal(df_sn_task_set_headers(f.t, fresh, 1), 0); /* a prefix is not the same */
    assert_int_equal(f.t->headers_gen, gen + 2);
    assert_int_equal(df_sn_task_set_headers(f.t, NULL, 0), 0);
    assert_int_equal(f.t->nheaders, 0);
    assert_int_equal(f.t->headers_gen, gen + 3);
    assert_int_equal(df_sn_task_set_headers(f.t, NULL, 0), 0);
    assert_int_equal(f.t->headers_gen, gen + 3);
    df_sn_swarm_free(f.sw);
}

/* Each requester gets at most its share of the task's upload slots in
 * flight: the seed's plus those of every uploading member holding a piece,
 * divided among the members still downloading. */
static void test_fair_share(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n;
    df_sn_member_t *h, *m[3];

    (void)state;
    fx_new(&f, 4, 2, 8);
    seed_all(f.t);
    h = join(&f, "h", 40001, 0);
    for (uint32_t i = 0; i < NP; i++)
        df_bitmap_set(h->have, i); /* done: a source, not downloading */
    for (int k = 0; k < 3; k++)
        m[k] = join(&f, k == 0 ? "a" : k == 1 ? "b" : "c", (uint16_t)(40002 + k), 0);
    /* slots 4 + 2 = 6 over 3 downloading members: 2 each, though 8 are asked */
    for (int k = 0; k < 3; k++) {
        df_sn_pull(f.sw, f.t, m[k], 8, 1, a, &n, &st);
        assert_int_equal(st, DF_SN_PULL_ASSIGN);
        assert_int_equal(n, 2);
        check(f.t);
    }
    assert_false(df_sn_pull_may_assign(f.sw, f.t, m[0]));
    df_sn_pull(f.sw, f.t, m[0], 8, 2, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_WAIT);
    /* a finishes one piece: below its share again, and its slot is free */
    {
        df_sn_inflight_t e = m[0]->inflight[0];
        df_sn_result_t r = {.piece = e.piece, .src = (char *)DF_SN_SEED_ID, .ok = true};
        if (e.src != 0)
            r.src = h->peer->id;
        df_sn_apply_results(f.t, m[0], &r, 1, false, 0);
        check(f.t);
    }
    assert_true(df_sn_pull_may_assign(f.sw, f.t, m[0]));
    /* a holds a piece now, so it is a source too: 8 slots over 3 members,
     * a share of 3.  a gets the one slot that freed (its own do not serve
     * it); b and c may use a's, up to 3 in flight each. */
    df_sn_pull(f.sw, f.t, m[0], 8, 3, a, &n, &st);
    assert_int_equal(st, DF_SN_PULL_ASSIGN);
    assert_int_equal(n, 1);
    check(f.t);
    for (int k = 1; k < 3; k++) {
        df_sn_pull(f.sw, f.t, m[k], 8, 3, a, &n, &st);
        assert_true(n <= 1);
        assert_true(m[k]->ninflight <= 3);
        check(f.t);
    }
    assert_in_range(m[1]->ninflight + m[2]->ninflight, 4, 6); /* a has one piece, 2 slots */
    df_sn_swarm_free(f.sw);
}

/* Rule 6 (the seed sends each piece once) holds only while the seed is
 * still being fed or has a piece no uploading peer has: once the seed holds
 * the file and every piece is out, the seed serves copies after the peers'
 * free slots. */
static void test_seed_copies_when_frontier_closed(void **state)
{
    fx_t f;
    df_sn_assign_t a[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t st;
    size_t n, from_seed;
    df_sn_member_t *h, *b;
    uint8_t sha[32] = {0};

    (void)state;
    {
        df_sn_swarm_opts_t o = {.peer_upload_slots = 2, .seed_upload_slots = 8, .batch_pieces = 8,
                                .seed_piece_limit = 1};
        assert_int_equal(df_sn_swarm_new(&o, on_free, NULL, &f.sw), 0);
        assert_int_equal(df_sn_task_create(f.sw, TID, "u", "u", NULL, NULL, NULL, 0, DF_PATTERN_P2P, 0, &f.t), 0);
        assert_int_equal(df_sn_task_shape(f.t, LEN, PS), 0);
    }
    h = join(&f, "h", 40001, 0);
    b = join(&f, "b", 40002, 0);
    /* The seed still fetches (piece NP-1 missing): the rule holds, only the
     * holder's two slots are used. */
    for (uint32_t i = 0; i + 1 < NP; i++)
        df_sn_task_seed_piece(f.t, i, sha);
    for (uint32_t i = 0; i + 1 < NP; i++)
        df_bitmap_set(h->have, i);
    df_sn_pull(f.sw, f.t, b, 8, 1, a, &n, &st);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++)
        assert_ptr_equal(a[i].src, h->peer);
    df_sn_apply_results(f.t, b, NULL, 0, true, 0); /* b dropped them */
    check(f.t);

    /* The seed holds everything, the last piece is only at the seed: the
     * frontier is open, the seed sends that piece and nothing the holder has. */
    df_sn_task_seed_piece(f.t, NP - 1, sha);
    df_sn_pull(f.sw, f.t, b, 8, 2, a, &n, &st);
    from_seed = 0;
    for (size_t i = 0; i < n; i++)
        if (!a[i].src) {
            from_seed++;
            assert_int_equal(a[i].piece, NP - 1);
        }
    assert_int_equal(n, 3);
    assert_int_equal(from_seed, 1);
    df_sn_apply_results(f.t, b, NULL, 0, true, 0);
    check(f.t);

    /* Every piece is out (the holder has the last one too): the seed serves
     * copies once the holder's slots are taken. */
    df_bitmap_set(h->have, NP - 1);
    df_sn_pull(f.sw, f.t, b, 8, 3, a, &n, &st);
    from_seed = 0;
    for (size_t i = 0; i < n; i++)
        from_seed += !a[i].src;
    assert_int_equal(n, 8);
    assert_int_equal(from_seed, 6);
    check(f.t);
    df_sn_swarm_free(f.sw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_assignments),
        cmocka_unit_test(test_peers_preferred_and_slots),
        cmocka_unit_test(test_report_error),
        cmocka_unit_test(test_report_slow),
        cmocka_unit_test(test_service_down_rejoin_sweep),
        cmocka_unit_test(test_reshape_and_bad_results),
        cmocka_unit_test(test_inflight_cap),
        cmocka_unit_test(test_set_headers),
        cmocka_unit_test(test_fair_share),
        cmocka_unit_test(test_seed_copies_when_frontier_closed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
