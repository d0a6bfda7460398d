/*
 * The download's start contract (dfly.h, style rule 5): df_peer_download()
 * that returns 0 calls done_cb exactly once, later, from the event loop --
 * never from inside the call, even when the download fails at once.
 */
#include "core/core.h"

#include <dfly/dfly.h>
#include <event2/event.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct {
    bool in_call;
    int calls;
    bool called_inside;
    int status;
    struct event_base *base;
} probe_t;

static void on_done(const df_download_result_t *res, void *arg)
{
    probe_t *p = arg;
    p->calls++;
    p->status = res->status;
    if (p->in_call)
        p->called_inside = true;
    event_base_loopbreak(p->base);
}

static void start_and_wait(struct event_base *base, df_peer_t *peer, const df_download_req_t *req, probe_t *p)
{
    struct timeval five = {5, 0};

    memset(p, 0, sizeof(*p));
    p->base = base;
    p->in_call = true;
    assert_int_equal(df_peer_download(peer, req, NULL, on_done, p), 0);
    p->in_call = false;
    assert_false(p->called_inside);
    event_base_loopexit(base, &five);
    event_base_dispatch(base);
    assert_int_equal(p->calls, 1);
    assert_true(p->status < 0);
}

static void test_immediate_failure_is_reported_later(void **state)
{
    struct event_base *base = event_base_new();
    char home[] = "/tmp/dfly-test-dl-XXXXXX";
    df_peer_config_t pc;
    df_peer_t *peer = NULL;
    df_download_req_t req = {0};
    probe_t p;

    (void)state;
    assert_non_null(base);
    assert_non_null(mkdtemp(home));
    df_peer_config_init(&pc);
    pc.home_dir = home;
    pc.serve = false;
    assert_int_equal(df_peer_new(base, &pc, &peer), 0);

    /* The temporary file next to the output cannot be created. */
    req.url = "http://127.0.0.1:1/f";
    req.output = "/nonexistent-dfly-dir/f";
    req.pattern = DF_PATTERN_SOURCE;
    start_and_wait(base, peer, &req, &p);
    /* No supernode configured: the same fall to the source, same failure. */
    req.pattern = DF_PATTERN_P2P;
    start_and_wait(base, peer, &req, &p);
    /* --notbs without a supernode fails at once too. */
    req.no_back_source = true;
    start_and_wait(base, peer, &req, &p);

    df_peer_free(peer);
    event_base_free(base);
    {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", home);
        assert_int_equal(system(cmd), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_immediate_failure_is_reported_later),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
