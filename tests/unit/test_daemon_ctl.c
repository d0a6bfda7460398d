/* dfdaemon control protocol: request line decoding (good, malformed, wrong
 * types, relative output, oversized), the encoder round trip, the result
 * object both ways, and one end-to-end exchange of the client against a
 * scripted fake daemon (a child process on a Unix socket), and the server
 * on this process's loop for requests that never reach the peer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "engine/daemon_ctl.h"

#include <event2/event.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int decode(const char *line, df__ctl_request_t *r, char *err, size_t errcap)
{
    return df__ctl_request_decode(line, strlen(line), r, err, errcap);
}

static void test_good_line(void **state)
{
    const char *line =
        "{\"url\":\"http://o/f?a=1\",\"output\":\"/tmp/f\",\"digest\":\"sha256:ab\","
        "\"identifier\":\"id\",\"filter\":[\"a\",\"b\"],\"headers\":[\"Authorization: x\"],"
        "\"local_limit_bps\":1048576,\"timeout_ms\":30000,\"pattern\":\"cdn\","
        "\"no_back_source\":true,\"call_system\":\"ci\",\"future_key\":{\"x\":1}}\n";
    df__ctl_request_t r;
    char err[128];

    assert_int_equal(decode(line, &r, err, sizeof(err)), 0);
    assert_string_equal(r.req.url, "http://o/f?a=1");
    assert_string_equal(r.req.output, "/tmp/f");
    assert_string_equal(r.req.digest, "sha256:ab");
    assert_string_equal(r.req.identifier, "id");
    assert_string_equal(r.req.filter[0], "a");
    assert_string_equal(r.req.filter[1], "b");
    assert_null(r.req.filter[2]);
    assert_string_equal(r.req.headers[0], "Authorization: x");
    assert_null(r.req.headers[1]);
    assert_int_equal(r.req.local_limit_bps, 1048576);
    assert_int_equal(r.req.timeout_ms, 30000);
    assert_int_equal(r.req.pattern, DF_PATTERN_CDN);
    assert_true(r.req.no_back_source);
    assert_string_equal(r.req.call_system, "ci");
    df__ctl_request_free(&r);

    /* Minimal: only url and output; everything else defaults. */
    assert_int_equal(decode("{\"url\":\"http://o/f\",\"output\":\"/f\",\"digest\":null}", &r, err,
                            sizeof(err)),
                     0);
    assert_null(r.req.digest);
    assert_null(r.req.filter);
    assert_null(r.req.headers);
    assert_int_equal(r.req.pattern, DF_PATTERN_P2P);
    assert_false(r.req.no_back_source);
    df__ctl_request_free(&r);
}

static void test_malformed(void **state)
{
    static const char *bad[] = {
        "",
        "{",
        "not json",
        "[1,2]",
        "\"string\"",
        "{\"url\":\"http://o/f\",\"output\":\"/f\"} trailing",
        "{\"url\":\"http://o/f\",\"url\":\"http://x/\",\"output\":\"/f\"}", /* duplicate key */
        "{\"output\":\"/f\"}",                                             /* no url */
        "{\"url\":\"\",\"output\":\"/f\"}",
        "{\"url\":\"http://o/f\"}",                                        /* no output */
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"pattern\":\"torrent\"}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"headers\":[\"no colon\"]}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"headers\":[\"A: b\\r\\nX-Evil: 1\"]}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"headers\":[\": empty name\"]}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"filter\":[\"\"]}",
        "{\"url\":\"http://o/\\u0000f\",\"output\":\"/f\"}", /* NUL inside a string */
    };
    char err[128];

    for (size_t i = 0; i < DF_ARRAY_LEN(bad); i++) {
        df__ctl_request_t r;
        int rc = decode(bad[i], &r, err, sizeof(err));
        if (rc != DF_EPROTO)
            fail_msg("case %zu (%s): rc %d", i, bad[i], rc);
        assert_true(err[0] != '\0');
        assert_null(r.doc);
        df__ctl_request_free(&r); /* safe on a failed decode */
    }
}

static void test_wrong_types(void **state)
{
    static const char *bad[] = {
        "{\"url\":1,\"output\":\"/f\"}",
        "{\"url\":\"http://o/f\",\"output\":[\"/f\"]}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"digest\":5}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"filter\":\"a&b\"}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"filter\":[1]}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"headers\":{\"A\":\"b\"}}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"local_limit_bps\":\"1M\"}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"local_limit_bps\":-1}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"timeout_ms\":1.5}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"pattern\":0}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"no_back_source\":\"yes\"}",
        "{\"url\":\"http://o/f\",\"output\":\"/f\",\"call_system\":true}",
    };
    char err[128];

    for (size_t i = 0; i < DF_ARRAY_LEN(bad); i++) {
        df__ctl_request_t r;
        int rc = decode(bad[i], &r, err, sizeof(err));
        if (rc != DF_EPROTO)
            fail_msg("case %zu (%s): rc %d", i, bad[i], rc);
        df__ctl_request_free(&r);
    }
}

static void test_relative_output(void **state)
{
    df__ctl_request_t r;
    char err[128];

    assert_int_equal(decode("{\"url\":\"http://o/f\",\"output\":\"f.bin\"}", &r, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "absolute"));
    assert_int_equal(decode("{\"url\":\"http://o/f\",\"output\":\"./f.bin\"}", &r, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(decode("{\"url\":\"http://o/f\",\"output\":\"\"}", &r, err, sizeof(err)), DF_EPROTO);
}

static void test_oversized(void **state)
{
    size_t n = DF_CTL_LINE_MAX + 1;
    char *line = malloc(n + 1);
    df__ctl_request_t r;
    char err[128];
    int len;

    assert_non_null(line);
    /* A syntactically fine object padded with spaces past the cap. */
    len = snprintf(line, n + 1, "{\"url\":\"http://o/f\",\"output\":\"/f\"}");
    memset(line + len, ' ', n - (size_t)len);
    line[n] = '\0';
    assert_int_equal(df__ctl_request_decode(line, n, &r, err, sizeof(err)), DF_ETOOBIG);
    /* Exactly at the cap is fine. */
    assert_int_equal(df__ctl_request_decode(line, n - 1, &r, err, sizeof(err)), 0);
    df__ctl_request_free(&r);
    free(line);

    /* Too many list entries. */
    {
        df_buf_t b;
        df_buf_init(&b, DF_CTL_LINE_MAX);
        assert_int_equal(df_buf_printf(&b, "{\"url\":\"http://o/f\",\"output\":\"/f\",\"filter\":["), 0);
        for (unsigned i = 0; i <= DF_CTL_LIST_MAX; i++)
            assert_int_equal(df_buf_printf(&b, "%s\"k%u\"", i ? "," : "", i), 0);
        assert_int_equal(df_buf_printf(&b, "]}"), 0);
        assert_int_equal(df__ctl_request_decode(b.data, b.len, &r, err, sizeof(err)), DF_ETOOBIG);
        df_buf_free(&b);
    }
}

static void test_encode_roundtrip(void **state)
{
    const char *filter[] = {"token", "sig", NULL};
    const char *headers[] = {"Authorization: Bearer \"q\"\\", "X-A: 1", NULL};
    df_download_req_t req = {
        .url = "http://o/f?x=\n",
        .output = "/tmp/out file",
        .digest = "md5:00",
        .identifier = NULL,
        .filter = filter,
        .headers = headers,
        .local_limit_bps = 7,
        .timeout_ms = 9,
        .pattern = DF_PATTERN_SOURCE,
        .no_back_source = true,
        .call_system = "dfdaemon",
    };
    df__ctl_request_t r;
    char *line;
    size_t len;
    char err[128];

    assert_int_equal(df__ctl_request_encode(&req, &line, &len), 0);
    assert_null(memchr(line, '\n', len)); /* one line on the wire */
    assert_int_equal(df__ctl_request_decode(line, len, &r, err, sizeof(err)), 0);
    assert_string_equal(r.req.url, req.url);
    assert_string_equal(r.req.output, req.output);
    assert_string_equal(r.req.digest, req.digest);
    assert_null(r.req.identifier);
    assert_string_equal(r.req.filter[1], "sig");
    assert_string_equal(r.req.headers[0], headers[0]);
    assert_int_equal(r.req.local_limit_bps, 7);
    assert_int_equal(r.req.timeout_ms, 9);
    assert_int_equal(r.req.pattern, DF_PATTERN_SOURCE);
    assert_true(r.req.no_back_source);
    assert_string_equal(r.req.call_system, "dfdaemon");
    df__ctl_request_free(&r);
    free(line);

    req.output = NULL;
    assert_int_equal(df__ctl_request_encode(&req, &line, &len), -EINVAL);
}

static void test_result_json(void **state)
{
    df_download_result_t in, out;
    json_t *o;
    char *s;

    memset(&in, 0, sizeof(in));
    in.status = DF_EDIGEST;
    df_strlcpy(in.task_id, "abc", sizeof(in.task_id));
    in.length = 1ull << 40;
    in.seconds = 1.5;
    in.bytes_from_peers = 3;
    in.bytes_from_supernode = 4;
    in.bytes_from_origin = 5;
    in.back_source = true;
    df_strlcpy(in.reason, "md5 mismatch", sizeof(in.reason));
    df_strlcpy(in.digest, "sha256:00", sizeof(in.digest));
    o = df__download_result_to_json(&in);
    assert_non_null(o);
    assert_int_equal(df__download_result_from_json(o, &out), 0);
    assert_int_equal(out.status, DF_EDIGEST);
    assert_string_equal(out.task_id, "abc");
    assert_int_equal(out.length, 1ull << 40);
    assert_true(out.seconds > 1.49 && out.seconds < 1.51);
    assert_int_equal(out.bytes_from_origin, 5);
    assert_true(out.back_source);
    assert_string_equal(out.reason, "md5 mismatch");
    assert_string_equal(out.digest, "sha256:00");
    json_decref(o);

    s = df_download_result_json(&in);
    assert_non_null(s);
    assert_non_null(strstr(s, "\"status\":\"error\""));
    assert_null(strchr(s, '\n'));
    free(s);

    /* "ok" with a non-zero code is a lie; "error" without a code is DF_ETASK. */
    o = json_pack("{s:s, s:i}", "status", "ok", "code", -5);
    assert_int_equal(df__download_result_from_json(o, &out), DF_EPROTO);
    json_decref(o);
    o = json_pack("{s:s}", "status", "error");
    assert_int_equal(df__download_result_from_json(o, &out), 0);
    assert_int_equal(out.status, DF_ETASK);
    json_decref(o);
    o = json_pack("{s:s, s:s}", "status", "ok", "length", "big");
    assert_int_equal(df__download_result_from_json(o, &out), DF_EPROTO);
    json_decref(o);
}

/* ---- the blocking client against a scripted fake daemon (a child process) */

static int g_progress_calls;
static uint64_t g_last_done;

static void count_progress(const df_progress_t *p, void *arg)
{
    (void)arg;
    g_progress_calls++;
    g_last_done = p->done;
}

/* Serves one connection at path with the given reply, then exits. */
static pid_t fake_daemon(const char *path, const char *reply, size_t reply_len)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    pid_t pid;

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    df_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    unlink(path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char buf[4096];
        int c = accept(fd, NULL, NULL);
        size_t got = 0;
        /* The request must be one line; the client may write it in several
         * pieces, so read until the newline. */
        while (c >= 0 && got < sizeof(buf) && (got == 0 || buf[got - 1] != '\n')) {
            ssize_t n = read(c, buf + got, sizeof(buf) - got);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        if (got == 0 || buf[got - 1] != '\n')
            _exit(3);
        if (reply_len && write(c, reply, reply_len) != (ssize_t)reply_len)
            _exit(4);
        close(c);
        _exit(0);
    }
    close(fd);
    return pid;
}

static void run_client(const char *reply, size_t reply_len, int want_rc, df_download_result_t *res)
{
    char path[108];
    df_download_req_t req = {.url = "http://o/f", .output = "/tmp/x"};
    pid_t pid;
    int st;

    snprintf(path, sizeof(path), "/tmp/dfly-test-ctl-%d.sock", (int)getpid());
    pid = fake_daemon(path, reply, reply_len);
    g_progress_calls = 0;
    assert_int_equal(df_daemon_download(path, &req, count_progress, NULL, res), want_rc);
    waitpid(pid, &st, 0);
    unlink(path);
}

static void test_client(void **state)
{
    static const char ok[] =
        "{\"progress\":{\"length\":10,\"done\":4}}\n"
        "{\"something_new\":1}\n"
        "{\"progress\":{\"length\":10,\"done\":10}}\n"
        "{\"result\":{\"status\":\"ok\",\"code\":0,\"task_id\":\"t\",\"length\":10,\"seconds\":0.5,"
        "\"bytes_from_peers\":10,\"bytes_from_supernode\":0,\"bytes_from_origin\":0,"
        "\"back_source\":false,\"reason\":\"\",\"digest\":\"\"}}\n";
    static const char failed[] =
        "{\"result\":{\"status\":\"error\",\"error\":\"timed out\",\"code\":-1007,\"reason\":\"slow\"}}\n";
    static const char vanished[] = "{\"progress\":{\"length\":10,\"done\":4}}\n";
    static const char garbage[] = "hello\n";
    df_download_result_t res;
    char path[108];
    df_download_req_t req = {.url = "http://o/f", .output = "/tmp/x"};

    run_client(ok, sizeof(ok) - 1, 0, &res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.task_id, "t");
    assert_int_equal(res.bytes_from_peers, 10);
    assert_int_equal(g_progress_calls, 2);
    assert_int_equal(g_last_done, 10);

    run_client(failed, sizeof(failed) - 1, 0, &res);
    assert_int_equal(res.status, DF_ETIMEOUT);
    assert_string_equal(res.reason, "slow");

    run_client(vanished, sizeof(vanished) - 1, -ECONNRESET, &res);
    run_client(garbage, sizeof(garbage) - 1, DF_EPROTO, &res);

    /* No daemon at all: the caller's cue to run in-process. */
    snprintf(path, sizeof(path), "/tmp/dfly-test-ctl-none-%d.sock", (int)getpid());
    unlink(path);
    assert_int_equal(df_daemon_download(path, &req, NULL, NULL, &res), -ENOENT);
}

/* ---- the server, on this process's loop; requests that never reach the
 * peer (so no peer is needed: it is NULL) */

/* Sends data to the daemon at path and collects its answer until EOF,
 * running base meanwhile.  Returns the answer (malloc'ed). */
static char *exchange(struct event_base *base, const char *path, const char *data, size_t len)
{
    struct sockaddr_un sa;
    df_buf_t out;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    uint64_t deadline = df_now_ms() + 5000;
    size_t sent = 0;

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    df_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    df_buf_init(&out, 1 << 20);
    for (;;) {
        struct pollfd pfd = {fd, POLLIN | (sent < len ? POLLOUT : 0), 0};
        char buf[4096];
        ssize_t n;

        assert_true(df_now_ms() < deadline);
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (poll(&pfd, 1, 5) <= 0)
            continue;
        if (sent < len && (pfd.revents & POLLOUT)) {
            n = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
        }
        if (pfd.revents & (POLLIN | POLLHUP)) {
            n = read(fd, buf, sizeof(buf));
            if (n == 0 || (n < 0 && errno != EAGAIN))
                break;
            if (n > 0)
                assert_int_equal(df_buf_append(&out, buf, (size_t)n), 0);
        }
    }
    close(fd);
    if (!out.data)
        assert_int_equal(df_buf_append(&out, "", 0), 0);
    return out.data;
}

/* The answer must be exactly one result line with the given code. */
static void expect_error_line(char *answer, int code)
{
    char *nl = strchr(answer, '\n');
    json_t *doc;
    df_download_result_t res;

    assert_non_null(nl);
    assert_string_equal(nl + 1, "");
    doc = json_loadb(answer, (size_t)(nl - answer), 0, NULL);
    assert_non_null(doc);
    assert_int_equal(df__download_result_from_json(json_object_get(doc, "result"), &res), 0);
    assert_int_equal(res.status, code);
    assert_true(res.reason[0] != '\0');
    json_decref(doc);
    free(answer);
}

static void test_server(void **state)
{
    struct event_base *base = event_base_new();
    df_daemon_t *d = NULL, *d2 = NULL;
    char path[108];
    struct stat st;
    char *big;
    int fd;

    assert_non_null(base);
    snprintf(path, sizeof(path), "/tmp/dfly-test-srv-%d.sock", (int)getpid());
    unlink(path);

    /* A regular file at the path is not ours to delete. */
    fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(df_daemon_new(base, NULL, path, &d), -EEXIST);
    unlink(path);

    /* A stale socket (bound, nobody listening) is replaced. */
    {
        struct sockaddr_un sa;
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        df_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
        assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
        close(s);
    }
    assert_int_equal(df_daemon_new(base, NULL, path, &d), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* A live daemon keeps its socket. */
    assert_int_equal(df_daemon_new(base, NULL, path, &d2), -EADDRINUSE);
    assert_null(d2);

    expect_error_line(exchange(base, path, "garbage\n", 8), DF_EPROTO);
    expect_error_line(exchange(base, path, "{\"url\":1}\n", 10), DF_EPROTO);
    {
        const char rel[] = "{\"url\":\"http://o/f\",\"output\":\"rel/f\"}\n";
        expect_error_line(exchange(base, path, rel, sizeof(rel) - 1), -EINVAL);
    }
    /* No newline within the cap: refused without waiting for more. */
    big = malloc(DF_CTL_LINE_MAX + 100);
    assert_non_null(big);
    memset(big, 'x', DF_CTL_LINE_MAX + 100);
    expect_error_line(exchange(base, path, big, DF_CTL_LINE_MAX + 100), DF_ETOOBIG);
    free(big);

    df_daemon_free(d);
    assert_int_equal(stat(path, &st), -1); /* our socket is removed */
    df_daemon_free(NULL);
    event_base_free(base);
    {
        char lock[128];
        snprintf(lock, sizeof(lock), "%s.lock", path);
        unlink(lock);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_line),       cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_wrong_types),     cmocka_unit_test(test_relative_output),
        cmocka_unit_test(test_oversized),       cmocka_unit_test(test_encode_roundtrip),
        cmocka_unit_test(test_result_json),     cmocka_unit_test(test_client),
        cmocka_unit_test(test_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
