/*
 * The upload server end to end, in one process: an evhttp on 127.0.0.1
 * (ephemeral port) serving a real piece store from the main thread's event
 * loop, and libcurl easy requests from a second thread.  The client thread
 * signals completion through a pipe, which breaks the loop.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/core.h"
#include "engine/upload_server.h"
#include "piece/digest.h"
#include "piece/piece.h"
#include "piece/piece_store.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/buffer.h>
#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define PSIZE (256u * 1024u)
#define T1_LEN (3u * PSIZE + 1000u) /* 4 pieces; 0 and 1 verified at first */
#define T2_LEN 1000u                /* complete */

static const char T1[] = "1111111111111111111111111111111111111111111111111111111111111111";
static const char T2[] = "2222222222222222222222222222222222222222222222222222222222222222";
static const char T0[] = "0000000000000000000000000000000000000000000000000000000000000000"; /* empty */
static const char NOPE[] = "abababababababababababababababababababababababababababababababab";

static struct {
    struct event_base *base;
    struct evhttp *http, *http2, *http3;
    uint16_t port, port2, port3;
    df_store_t *store;
    df_upload_server_t *srv, *srv2, *srv3;
    char dir[64];
    uint8_t *t1data, *t2data;
    int pipefd[2];
    struct event *pipe_ev;
} G;

/* ---- client side (second thread) */

typedef struct {
    const char *method;       /* NULL = GET */
    char path[256];
    const char *range;        /* NULL = no Range header */
    size_t abort_after;       /* abort once this many body bytes arrived; 0 = never */
    int server;               /* 0: G.http, 1: G.http2 (chained), 2: G.http3 */
    /* results */
    long status;
    df_buf_t body;
    char content_range[128];
    char allow[64];
    curl_off_t content_length;
    long new_connects;
    double seconds;
} call_t;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    call_t *c = arg;
    if (df_buf_append(&c->body, p, size * n) < 0)
        return 0;
    if (c->abort_after && c->body.len >= c->abort_after)
        return 0;
    return size * n;
}

static void grab_header(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    if (len > nl + 1 && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
        const char *v = line + nl + 1;
        size_t vl = len - nl - 1;
        while (vl && (*v == ' '))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
            vl--;
        vl = DF_MIN(vl, cap - 1);
        memcpy(out, v, vl);
        out[vl] = '\0';
    }
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    call_t *c = arg;
    grab_header(p, size * n, "Content-Range", c->content_range, sizeof(c->content_range));
    grab_header(p, size * n, "Allow", c->allow, sizeof(c->allow));
    return size * n;
}

typedef struct {
    call_t *calls;
    size_t n;
} batch_t;

static void *client_thread(void *arg)
{
    batch_t *b = arg;
    CURL *h = curl_easy_init();
    char url[512], range[128];

    for (size_t i = 0; i < b->n && h; i++) {
        call_t *c = &b->calls[i];
        double t0;

        curl_easy_reset(h); /* keeps the connection cache: keep-alive */
        snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", c->server == 2   ? G.port3
                                                       : c->server == 1 ? G.port2
                                                                        : G.port,
                 c->path);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
        if (c->method && strcmp(c->method, "HEAD") == 0) {
            curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        } else if (c->method) {
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, c->method);
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, "x");
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 1L);
        }
        if (c->range) {
            snprintf(range, sizeof(range), "Range: %s", c->range);
            struct curl_slist *hl = curl_slist_append(NULL, range);
            curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
            t0 = df_now_s();
            curl_easy_perform(h);
            curl_slist_free_all(hl);
        } else {
            t0 = df_now_s();
            curl_easy_perform(h);
        }
        c->seconds = df_now_s() - t0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &c->status);
        curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &c->new_connects);
        curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &c->content_length);
    }
    curl_easy_cleanup(h);
    if (write(G.pipefd[1], "x", 1) != 1)
        abort();
    return NULL;
}

static void on_pipe(evutil_socket_t fd, short what, void *arg)
{
    char x;
    if (read(fd, &x, 1) == 1)
        event_base_loopbreak(G.base);
}

/* Runs the calls from the client thread while the loop serves them. */
static void run(call_t *calls, size_t n)
{
    batch_t b = {calls, n};
    pthread_t th;

    for (size_t i = 0; i < n; i++)
        df_buf_init(&calls[i].body, 8u << 20);
    assert_int_equal(pthread_create(&th, NULL, client_thread, &b), 0);
    event_base_dispatch(G.base);
    pthread_join(th, NULL);
}

static void free_calls(call_t *calls, size_t n)
{
    for (size_t i = 0; i < n; i++)
        df_buf_free(&calls[i].body);
}

static void on_spin(evutil_socket_t fd, short what, void *arg)
{
    df_upload_stats_t st;
    df_upload_server_stats(G.srv, &st);
    if (st.active == 0 || df_now_ms() > *(uint64_t *)arg)
        event_base_loopbreak(G.base);
}

/* Runs the loop until no reply is in flight (or 3 s passed). */
static void spin_until_idle(void)
{
    uint64_t deadline = df_now_ms() + 3000;
    struct event *ev = event_new(G.base, -1, EV_PERSIST, on_spin, &deadline);
    struct timeval tv = {0, 10000};
    event_add(ev, &tv);
    event_base_dispatch(G.base);
    event_free(ev);
}

static void set_path(call_t *c, const char *id, const char *suffix)
{
    snprintf(c->path, sizeof(c->path), "/peer/file/%s%s", id ? id : "", suffix ? suffix : "");
}

/* ---- server side */

static void chained_gencb(struct evhttp_request *req, void *arg)
{
    struct evbuffer *b;

    if (df_upload_server_handle(G.srv2, req))
        return;
    if (strcmp(evhttp_request_get_uri(req), "/healthz") == 0) {
        b = evbuffer_new();
        evbuffer_add_printf(b, "ok\n");
        evhttp_send_reply(req, 200, "OK", b);
        evbuffer_free(b);
        return;
    }
    evhttp_send_error(req, 404, NULL);
}

static uint16_t bind_port(struct evhttp *http)
{
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);

    assert_non_null(bs);
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl), 0);
    return ntohs(sa.sin_port);
}

static df_stored_task_t *make_task(const char *id, const uint8_t *data, uint64_t len,
                                   uint32_t mark_upto)
{
    df_task_shape_t shape = {.url = "http://origin/x", .length = len, .piece_size = PSIZE};
    df_stored_task_t *t = NULL;
    uint8_t sha[32];

    assert_int_equal(df_store_task_create(G.store, id, &shape, &t), 0);
    if (len)
        assert_int_equal(df_stored_task_write(t, 0, data, len), 0);
    for (uint32_t i = 0; i < mark_upto && i < df_stored_task_piece_count(t); i++) {
        uint64_t off, plen;
        df_piece_span(len, PSIZE, i, &off, &plen);
        df_sha256(data + off, plen, sha);
        assert_int_equal(df_stored_task_mark_piece(t, i, sha), 0);
    }
    return t;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static int setup(void **state)
{
    df_stored_task_t *t;

    /* Writing to a peer that hung up must be an EPIPE error, not a signal
     * (the programs do the same). */
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&G, 0, sizeof(G));
    df_strlcpy(G.dir, "/tmp/df_test_upload_XXXXXX", sizeof(G.dir));
    if (!mkdtemp(G.dir))
        return -1;
    G.base = event_base_new();
    G.http = evhttp_new(G.base);
    G.http2 = evhttp_new(G.base);
    assert_int_equal(df_store_open(G.dir, 0, &G.store), 0);
    assert_int_equal(df_upload_server_new(G.base, G.http, G.store, &G.srv), 0);
    assert_int_equal(df_upload_server_new(G.base, NULL, G.store, &G.srv2), 0);
    evhttp_set_gencb(G.http2, chained_gencb, NULL);
    G.port = bind_port(G.http);
    G.port2 = bind_port(G.http2);

    G.t1data = malloc(T1_LEN);
    G.t2data = malloc(T2_LEN);
    for (uint32_t i = 0; i < T1_LEN; i++)
        G.t1data[i] = (uint8_t)(i * 7 + (i >> 11));
    for (uint32_t i = 0; i < T2_LEN; i++)
        G.t2data[i] = (uint8_t)(255 - i);
    t = make_task(T1, G.t1data, T1_LEN, 2);
    df_stored_task_unref(t);
    t = make_task(T2, G.t2data, T2_LEN, 1);
    df_stored_task_unref(t);
    t = make_task(T0, NULL, 0, 0);
    df_stored_task_unref(t);

    assert_int_equal(pipe(G.pipefd), 0);
    G.pipe_ev = event_new(G.base, G.pipefd[0], EV_READ | EV_PERSIST, on_pipe, NULL);
    event_add(G.pipe_ev, NULL);
    return 0;
}

static int teardown(void **state)
{
    df_upload_stats_t st;

    df_upload_server_stats(G.srv, &st);
    assert_int_equal(st.active, 0);
    evhttp_free(G.http);
    evhttp_free(G.http2);
    df_upload_server_free(G.srv);
    df_upload_server_free(G.srv2);
    /* evhttp frees connection buffers from the loop: let it run once. */
    event_base_loop(G.base, EVLOOP_NONBLOCK);
    df_store_close(G.store);
    event_free(G.pipe_ev);
    event_base_free(G.base);
    close(G.pipefd[0]);
    close(G.pipefd[1]);
    nftw(G.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(G.t1data);
    free(G.t2data);
    curl_global_cleanup();
    return 0;
}

/* ---- tests */

static void test_ranges(void **state)
{
    call_t c[8];
    df_upload_stats_t before, after;

    memset(c, 0, sizeof(c));
    df_upload_server_stats(G.srv, &before);
    set_path(&c[0], T1, NULL);
    c[0].range = "bytes=0-99";
    set_path(&c[1], T1, NULL);
    c[1].range = "bytes=262144-524287"; /* exactly piece 1 */
    set_path(&c[2], T1, NULL);
    c[2].range = "bytes=524287-524288"; /* last byte of 1, first of 2 (not verified) */
    set_path(&c[3], T1, NULL);
    c[3].range = "bytes=-100";          /* in piece 3 (not verified) */
    set_path(&c[4], T1, NULL);
    c[4].range = "bytes=abc";
    set_path(&c[5], T1, NULL);
    c[5].range = "bytes=0-1,5-6";
    set_path(&c[6], T1, NULL);
    c[6].range = "bytes=787432-";
    set_path(&c[7], T1, "?ignored=1");
    c[7].range = "bytes=10-19";
    run(c, 8);

    assert_int_equal(c[0].status, 206);
    assert_int_equal(c[0].body.len, 100);
    assert_memory_equal(c[0].body.data, G.t1data, 100);
    assert_string_equal(c[0].content_range, "bytes 0-99/787432");
    assert_int_equal(c[0].new_connects, 1);

    assert_int_equal(c[1].status, 206);
    assert_int_equal(c[1].body.len, PSIZE);
    assert_memory_equal(c[1].body.data, G.t1data + PSIZE, PSIZE);
    assert_string_equal(c[1].content_range, "bytes 262144-524287/787432");
    assert_int_equal(c[1].new_connects, 0); /* kept alive */

    assert_int_equal(c[2].status, 404);
    assert_int_equal(c[3].status, 404);
    assert_int_equal(c[4].status, 400);
    assert_int_equal(c[5].status, 400);
    assert_int_equal(c[6].status, 416);
    assert_string_equal(c[6].content_range, "bytes */787432");
    assert_int_equal(c[7].status, 206);
    assert_memory_equal(c[7].body.data, G.t1data + 10, 10);
    for (int i = 1; i < 8; i++)
        assert_int_equal(c[i].new_connects, 0);

    df_upload_server_stats(G.srv, &after);
    assert_int_equal(after.requests - before.requests, 8);
    assert_int_equal(after.errors - before.errors, 5);
    assert_int_equal(after.bytes_served - before.bytes_served, 100 + PSIZE + 10);
    free_calls(c, 8);
}

static void test_whole_file(void **state)
{
    call_t c[5];
    df_stored_task_t *t;
    uint8_t sha[32];

    memset(c, 0, sizeof(c));
    set_path(&c[0], T1, NULL); /* incomplete: 404 */
    set_path(&c[1], T2, NULL);
    set_path(&c[2], T0, NULL); /* empty and complete */
    set_path(&c[3], T0, NULL);
    c[3].range = "bytes=0-";
    c[4].method = "HEAD";
    set_path(&c[4], T1, NULL);
    c[4].range = "bytes=100-199";
    run(c, 5);
    assert_int_equal(c[0].status, 404);
    assert_int_equal(c[1].status, 200);
    assert_int_equal(c[1].body.len, T2_LEN);
    assert_memory_equal(c[1].body.data, G.t2data, T2_LEN);
    assert_int_equal(c[2].status, 200);
    assert_int_equal(c[2].body.len, 0);
    assert_int_equal(c[3].status, 416);
    assert_int_equal(c[4].status, 206);
    assert_int_equal(c[4].content_length, 100);
    assert_int_equal(c[4].body.len, 0);
    assert_string_equal(c[4].content_range, "bytes 100-199/787432");
    free_calls(c, 5);

    /* Complete T1: now the whole file is served. */
    assert_int_equal(df_store_task_get(G.store, T1, &t), 0);
    for (uint32_t i = 2; i < 4; i++) {
        uint64_t off, len;
        df_piece_span(T1_LEN, PSIZE, i, &off, &len);
        df_sha256(G.t1data + off, len, sha);
        assert_int_equal(df_stored_task_mark_piece(t, i, sha), 0);
    }
    df_stored_task_unref(t);
    memset(c, 0, sizeof(c));
    set_path(&c[0], T1, NULL);
    set_path(&c[1], T1, NULL);
    c[1].range = "bytes=-100";
    run(c, 2);
    assert_int_equal(c[0].status, 200);
    assert_int_equal(c[0].body.len, T1_LEN);
    assert_memory_equal(c[0].body.data, G.t1data, T1_LEN);
    assert_int_equal(c[1].status, 206);
    assert_memory_equal(c[1].body.data, G.t1data + T1_LEN - 100, 100);
    free_calls(c, 2);
}

static void test_bad_requests(void **state)
{
    static const char *paths[] = {
        "/peer/file/1111111111111111111111111111111111111111111111111111111111111111/",
        "/peer/file/11111111111111111111111111111111111111111111111111111111111111",
        "/peer/file/1111111111111111111111111111111111111111111111111111111111111111111",
        "/peer/file/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/peer/file/../../../../etc/passwd",
        "/peer/file/%2e%2e/%2e%2e/etc/passwd",
        "/peer/file/..%2f..%2f..%2fetc%2fpasswd",
        "/peer/file/",
        "/peer/file/abababababababababababababababababababababababababababababababab",
        "/peer/filex",
        "/other",
    };
    enum { NP = sizeof(paths) / sizeof(paths[0]) };
    call_t c[NP + 3];

    memset(c, 0, sizeof(c));
    for (size_t i = 0; i < NP; i++) {
        df_strlcpy(c[i].path, paths[i], sizeof(c[i].path));
        c[i].range = "bytes=0-9";
    }
    c[NP].method = "POST";
    set_path(&c[NP], T1, NULL);
    c[NP + 1].method = "PUT";
    set_path(&c[NP + 1], T1, NULL);
    set_path(&c[NP + 2], NOPE, NULL); /* after errors the connection still works */
    c[NP + 2].range = "bytes=0-9";
    run(c, NP + 3);
    for (size_t i = 0; i < NP; i++) {
        if (c[i].status != 404)
            fail_msg("%s: %ld", paths[i], c[i].status);
    }
    assert_int_equal(c[NP].status, 405);
    assert_string_equal(c[NP].allow, "GET, HEAD");
    assert_int_equal(c[NP + 1].status, 405);
    assert_int_equal(c[NP + 2].status, 404);
    free_calls(c, NP + 3);
}

static void test_chained(void **state)
{
    call_t c[3];

    memset(c, 0, sizeof(c));
    c[0].server = c[1].server = c[2].server = 1;
    df_strlcpy(c[0].path, "/healthz", sizeof(c[0].path));
    set_path(&c[1], T2, NULL);
    c[1].range = "bytes=5-9";
    df_strlcpy(c[2].path, "/api/v1/none", sizeof(c[2].path));
    run(c, 3);
    assert_int_equal(c[0].status, 200);
    assert_string_equal(c[0].body.data, "ok\n");
    assert_int_equal(c[1].status, 206);
    assert_memory_equal(c[1].body.data, G.t2data + 5, 5);
    assert_int_equal(c[2].status, 404);
    free_calls(c, 3);
}

static void test_rate_limited(void **state)
{
    call_t c[4];
    df_upload_stats_t st;

    /* 512 KiB/s, bucket 64 KiB: 512 KiB take about 0.875 s. */
    df_upload_server_set_rate_limit(G.srv, 512u * 1024u);
    memset(c, 0, sizeof(c));
    set_path(&c[0], T1, NULL);
    c[0].range = "bytes=0-524287";
    set_path(&c[1], T1, NULL);
    c[1].range = "bytes=1-10";
    c[2].method = "HEAD";
    set_path(&c[2], T1, NULL);
    set_path(&c[3], T2, NULL);
    run(c, 4);
    assert_int_equal(c[0].status, 206);
    assert_int_equal(c[0].body.len, 2 * PSIZE);
    assert_int_equal(c[0].content_length, 2 * PSIZE); /* not chunked */
    assert_memory_equal(c[0].body.data, G.t1data, 2 * PSIZE);
    if (c[0].seconds < 0.6 || c[0].seconds > 5)
        fail_msg("paced 512 KiB in %.3f s", c[0].seconds);
    assert_int_equal(c[1].status, 206);
    assert_memory_equal(c[1].body.data, G.t1data + 1, 10);
    assert_int_equal(c[1].new_connects, 0);
    assert_int_equal(c[2].status, 200);
    assert_int_equal(c[2].content_length, T1_LEN);
    assert_int_equal(c[3].status, 200);
    assert_memory_equal(c[3].body.data, G.t2data, T2_LEN);
    free_calls(c, 4);

    /* A client that hangs up mid-body: the reply ends and its task
     * reference is dropped. */
    memset(c, 0, sizeof(c));
    set_path(&c[0], T1, NULL);
    c[0].abort_after = 1;
    run(c, 1);
    assert_true(c[0].body.len < T1_LEN);
    spin_until_idle();
    df_upload_server_stats(G.srv, &st);
    assert_int_equal(st.active, 0);
    free_calls(c, 1);

    df_upload_server_set_rate_limit(G.srv, 0);
}

static void test_abort_unpaced(void **state)
{
    call_t c[1];
    df_upload_stats_t st;

    memset(c, 0, sizeof(c));
    set_path(&c[0], T1, NULL);
    c[0].abort_after = 1;
    run(c, 1);
    spin_until_idle();
    df_upload_server_stats(G.srv, &st);
    assert_int_equal(st.active, 0);
    free_calls(c, 1);
}

static void free_srv3(evutil_socket_t fd, short what, void *arg)
{
    df_upload_stats_t st;

    df_upload_server_stats(G.srv3, &st);
    assert_int_equal(st.active, 1);
    df_upload_server_free(G.srv3);
    G.srv3 = NULL;
}

/* Freeing the server in the middle of a paced reply closes that connection
 * and releases the task; the client sees a short body. */
static void test_free_while_pacing(void **state)
{
    struct event *ev = evtimer_new(G.base, free_srv3, NULL);
    struct timeval tv = {0, 200000};
    df_stored_task_t *t;
    call_t c[1];

    G.http3 = evhttp_new(G.base);
    assert_int_equal(df_upload_server_new(G.base, G.http3, G.store, &G.srv3), 0);
    df_upload_server_set_rate_limit(G.srv3, 256u * 1024u);
    G.port3 = bind_port(G.http3);
    evtimer_add(ev, &tv);
    memset(c, 0, sizeof(c));
    c[0].server = 2;
    set_path(&c[0], T1, NULL);
    run(c, 1);
    assert_null(G.srv3);
    assert_true(c[0].body.len > 0 && c[0].body.len < T1_LEN);
    /* The task is unreferenced again: removable. */
    assert_int_equal(df_store_task_get(G.store, T1, &t), 0);
    df_stored_task_unref(t);
    evhttp_free(G.http3);
    event_free(ev);
    free_calls(c, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_whole_file),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_chained),
        cmocka_unit_test(test_rate_limited),
        cmocka_unit_test(test_abort_unpaced),
        cmocka_unit_test(test_free_while_pacing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
