/* Worker-thread queue: completions on the loop in submission order, the cap,
 * shutdown with jobs pending, and many jobs resubmitted from callbacks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "core/workq.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#define NJOBS 2000

typedef struct {
    int id;
    atomic_int ran;          /* work calls */
    int done_calls, status;
    unsigned spin_us;        /* work duration */
    atomic_int *gate;        /* work waits while *gate == 0 (bounded) */
    atomic_int *started;     /* set when work begins */
} item_t;

static int order[NJOBS + 16];
static int norder;

static void sleep_us(unsigned us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void work_fn(void *arg)
{
    item_t *it = arg;
    if (it->started)
        atomic_store(it->started, 1);
    /* bounded: 10 s at most even if the test forgets the gate */
    for (int i = 0; it->gate && !atomic_load(it->gate) && i < 10000; i++)
        sleep_us(1000);
    if (it->spin_us)
        sleep_us(it->spin_us);
    atomic_fetch_add(&it->ran, 1);
}

static void done_fn(void *arg, int status)
{
    item_t *it = arg;
    it->done_calls++;
    it->status = status;
    order[norder++] = it->id;
}

/* Runs the loop until pending reaches 0 (bounded by 20 s). */
static void drain(struct event_base *base, df_workq_t *q)
{
    for (int i = 0; df_workq_pending(q) > 0 && i < 20000; i++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(df_workq_pending(q), 0);
}

static void test_order_many_threads(void **state)
{
    struct event_base *base = event_base_new();
    df_workq_t *q = NULL;
    static item_t items[64];

    norder = 0;
    assert_int_equal(df_workq_new(base, 4, 64, &q), 0);
    for (int i = 0; i < 64; i++) {
        items[i] = (item_t){.id = i, .spin_us = (unsigned)((64 - i) % 7) * 300};
        assert_int_equal(df_workq_submit(q, work_fn, done_fn, &items[i]), 0);
    }
    /* never from inside submit */
    assert_int_equal(norder, 0);
    drain(base, q);
    assert_int_equal(norder, 64);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(order[i], i);
        assert_int_equal(atomic_load(&items[i].ran), 1);
        assert_int_equal(items[i].done_calls, 1);
        assert_int_equal(items[i].status, 0);
    }
    df_workq_free(q);
    event_base_free(base);
}

static void test_cap_and_shutdown_pending(void **state)
{
    struct event_base *base = event_base_new();
    df_workq_t *q = NULL;
    static item_t items[8];
    atomic_int gate = 0, started = 0;

    norder = 0;
    assert_int_equal(df_workq_new(base, 1, 8, &q), 0);
    for (int i = 0; i < 8; i++) {
        items[i] = (item_t){.id = i};
        if (i == 0) {
            items[i].gate = &gate;
            items[i].started = &started;
        }
        assert_int_equal(df_workq_submit(q, work_fn, done_fn, &items[i]), 0);
    }
    assert_int_equal(df_workq_submit(q, work_fn, done_fn, &items[0]), -EAGAIN);
    assert_int_equal(df_workq_pending(q), 8);
    for (int i = 0; !atomic_load(&started) && i < 10000; i++)
        sleep_us(1000);
    assert_true(atomic_load(&started));
    /* job 0 is running (blocked on the gate), jobs 1..7 wait: free lets
     * the running one finish and cancels the rest, all reported in order */
    atomic_store(&gate, 1);
    df_workq_free(q);
    assert_int_equal(norder, 8);
    assert_int_equal(items[0].status, 0);
    assert_int_equal(atomic_load(&items[0].ran), 1);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(order[i], i);
        assert_int_equal(items[i].done_calls, 1);
        if (i > 0) {
            assert_int_equal(items[i].status, -ECANCELED);
            assert_int_equal(atomic_load(&items[i].ran), 0);
        }
    }
    event_base_free(base);
}

/* NJOBS jobs through a queue of cap 16, each done callback submitting the
 * next job: the loop and two workers keep handing work back and forth. */
static df_workq_t *chain_q;
static item_t chain_items[NJOBS];
static int chain_next;

static void chain_done(void *arg, int status)
{
    done_fn(arg, status);
    if (chain_next < NJOBS) {
        int i = chain_next++;
        chain_items[i].id = i;
        assert_int_equal(df_workq_submit(chain_q, work_fn, chain_done, &chain_items[i]), 0);
    }
}

static void test_many_jobs(void **state)
{
    struct event_base *base = event_base_new();

    norder = 0;
    chain_next = 0;
    assert_int_equal(df_workq_new(base, 2, 16, &chain_q), 0);
    while (chain_next < 16) {
        int i = chain_next++;
        chain_items[i].id = i;
        assert_int_equal(df_workq_submit(chain_q, work_fn, chain_done, &chain_items[i]), 0);
    }
    for (int i = 0; norder < NJOBS && i < 100000; i++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(norder, NJOBS);
    for (int i = 0; i < NJOBS; i++) {
        assert_int_equal(order[i], i);
        assert_int_equal(chain_items[i].done_calls, 1);
        assert_int_equal(atomic_load(&chain_items[i].ran), 1);
    }
    df_workq_free(chain_q);
    event_base_free(base);
}

static void test_bad_args(void **state)
{
    struct event_base *base = event_base_new();
    df_workq_t *q = (df_workq_t *)1;

    assert_int_equal(df_workq_new(base, 0, 4, &q), -EINVAL);
    assert_null(q);
    assert_int_equal(df_workq_new(base, 1, 0, &q), -EINVAL);
    assert_int_equal(df_workq_new(NULL, 1, 4, &q), -EINVAL);
    df_workq_free(NULL);
    /* an idle queue frees at once */
    assert_int_equal(df_workq_new(base, 3, 4, &q), 0);
    df_workq_free(q);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_many_threads),
        cmocka_unit_test(test_cap_and_shutdown_pending),
        cmocka_unit_test(test_many_jobs),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
