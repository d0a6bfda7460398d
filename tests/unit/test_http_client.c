/*
 * The HTTP client's loop fairness: a streamed body from a server that is
 * always ahead of us (a second thread writing as fast as loopback takes it,
 * while on_data hashes every byte, as the seed does) must not keep the
 * event loop to itself.  A zero timer re-armed at every loop turn counts the
 * body bytes handed over between two of its runs; libcurl alone hands over
 * up to 25 MiB per socket event.  Also: the yield combined with on_data's
 * own pauses (DF_EAGAIN + df_http_resume) loses and repeats nothing, and a
 * request cancelled while it yields is freed without a callback.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/core.h"
#include "net/http_client.h"
#include "piece/digest.h"

#include <event2/event.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BODY_LEN (64u << 20)
#define CHUNK (256u * 1024u) /* the client's CURLOPT_BUFFERSIZE, the most curl hands over at once */
#define BETWEEN_TICKS_MAX (2u * DF_HTTP_YIELD_BYTES + 2u * CHUNK)

static uint8_t pattern_at(uint64_t i)
{
    return (uint8_t)((i * 131u) ^ (i >> 13));
}

/* ---- server: one connection, one response, as fast as the socket takes it */

typedef struct {
    int lfd;
    uint16_t port;
    pthread_t th;
} server_t;

static void *serve(void *arg)
{
    server_t *s = arg;
    char req[4096], hdr[128];
    static uint8_t buf[CHUNK];
    size_t got = 0;
    uint64_t off = 0;
    int fd = accept(s->lfd, NULL, NULL);

    if (fd < 0)
        return NULL;
    while (got < sizeof(req) - 1 && !memmem(req, got, "\r\n\r\n", 4)) {
        ssize_t n = recv(fd, req + got, sizeof(req) - 1 - got, 0);
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %u\r\nConnection: close\r\n\r\n", BODY_LEN);
    if (send(fd, hdr, strlen(hdr), MSG_NOSIGNAL) < 0)
        goto out;
    while (off < BODY_LEN) {
        size_t n = CHUNK, sent = 0;
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern_at(off + i);
        while (sent < n) {
            ssize_t w = send(fd, buf + sent, n - sent, MSG_NOSIGNAL);
            if (w <= 0)
                goto out; /* the client went away (cancel test) */
            sent += (size_t)w;
        }
        off += n;
    }
out:
    close(fd);
    return NULL;
}

static void server_start(server_t *s)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);

    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, serve, s), 0);
}

static void server_join(server_t *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* ---- client */

typedef struct {
    struct event_base *base;
    df_http_t *http;
    df_http_req_t *req;
    struct event *tick, *resume, *limit;
    df_hasher_t *h;
    uint64_t bytes, since_tick, max_between_ticks, ticks;
    bool bad_byte, done, timed_out;
    int status;
    long http_code;
    uint32_t pause_every;  /* on_data returns DF_EAGAIN every Nth call (0 = never) */
    uint32_t calls, pauses;
    uint64_t cancel_after; /* the tick cancels the request past this many bytes (0 = never) */
    bool cancelled;
} client_t;

static const struct timeval ZERO = {0, 0};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;

    c->ticks++;
    c->since_tick = 0;
    if (c->cancel_after && c->bytes >= c->cancel_after && !c->cancelled) {
        struct timeval later = {0, 100 * 1000};
        df_http_cancel(c->req);
        c->cancelled = true;
        /* A yield timer still armed for it fires in the meantime. */
        event_base_loopexit(c->base, &later);
        return;
    }
    evtimer_add(c->tick, &ZERO);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    df_http_resume(c->req);
}

/* Bounds every test's loop; reaching it is a failure. */
static void on_limit(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    c->timed_out = true;
    event_base_loopbreak(c->base);
}

static int on_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    client_t *c = arg;
    const uint8_t *p = data;

    c->calls++;
    if (c->pause_every && c->calls % c->pause_every == 0) {
        c->pauses++;
        evtimer_add(c->resume, &ZERO);
        return DF_EAGAIN;
    }
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern_at(c->bytes + i))
            c->bad_byte = true;
    df_hasher_update(c->h, data, len);
    c->bytes += len;
    c->since_tick += len;
    if (c->since_tick > c->max_between_ticks)
        c->max_between_ticks = c->since_tick;
    return 0;
}

static void on_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    client_t *c = arg;

    c->done = true;
    c->status = res->status;
    c->http_code = res->http_code;
    event_base_loopbreak(c->base);
}

static void run_client(client_t *c, uint16_t port, int limit_s)
{
    static const df_http_cbs_t cbs = {.on_data = on_data, .on_done = on_done};
    struct timeval lim = {limit_s, 0};
    char url[64];
    df_http_opts_t o = {0};

    c->base = event_base_new();
    assert_non_null(c->base);
    assert_int_equal(df_http_new(c->base, &c->http), 0);
    c->h = df_hasher_new(DF_DIGEST_SHA256);
    c->tick = evtimer_new(c->base, on_tick, c);
    c->resume = evtimer_new(c->base, on_resume, c);
    c->limit = evtimer_new(c->base, on_limit, c);
    assert_true(c->h && c->tick && c->resume && c->limit);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/blob", (unsigned)port);
    o.url = url;
    assert_int_equal(df_http_start(c->http, &o, &cbs, c, &c->req), 0);
    evtimer_add(c->tick, &ZERO);
    evtimer_add(c->limit, &lim);
    event_base_dispatch(c->base);
    df_http_free(c->http);
    event_free(c->tick);
    event_free(c->resume);
    event_free(c->limit);
    df_hasher_free(c->h);
    event_base_free(c->base);
}

static void test_loop_gets_turns(void **state)
{
    server_t s;
    client_t c = {0};

    server_start(&s);
    run_client(&c, s.port, 60);
    server_join(&s);
    print_message("%u MiB streamed, %llu loop turns, at most %llu bytes between two\n", BODY_LEN >> 20,
                  (unsigned long long)c.ticks, (unsigned long long)c.max_between_ticks);
    assert_false(c.timed_out);
    assert_true(c.done);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.http_code, 200);
    assert_int_equal(c.bytes, BODY_LEN);
    assert_false(c.bad_byte);
    /* The bound: within one loop turn, what is left of a quantum (plus the
     * chunk that crosses it) and a fresh quantum after the resume. */
    assert_true(c.max_between_ticks <= BETWEEN_TICKS_MAX);
}

static void test_yield_and_own_pauses(void **state)
{
    server_t s;
    client_t c = {.pause_every = 7};

    server_start(&s);
    run_client(&c, s.port, 60);
    server_join(&s);
    assert_false(c.timed_out);
    assert_true(c.done);
    assert_int_equal(c.status, 0);
    assert_true(c.pauses > 10);
    assert_int_equal(c.bytes, BODY_LEN); /* nothing lost, nothing repeated */
    assert_false(c.bad_byte);
    assert_true(c.max_between_ticks <= BETWEEN_TICKS_MAX);
}

static void test_cancel_while_yielding(void **state)
{
    server_t s;
    client_t c = {.cancel_after = 4u << 20};

    server_start(&s);
    run_client(&c, s.port, 60);
    server_join(&s);
    assert_true(c.cancelled);
    assert_false(c.done); /* no callback after df_http_cancel */
    assert_false(c.timed_out);
    assert_true(c.bytes >= 4u << 20 && c.bytes < BODY_LEN);
    assert_false(c.bad_byte);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_gets_turns),
        cmocka_unit_test(test_yield_and_own_pauses),
        cmocka_unit_test(test_cancel_while_yielding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
