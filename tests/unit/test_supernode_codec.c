/* Unit tests for the supernode's request decoders and task identity
 * (lib/supernode/api_codec.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/digest.h"
#include "supernode/api_codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEC(fn, text, out) fn(text, strlen(text), out, err, sizeof(err))

static void test_task_url_filter(void **state)
{
    char *filters[] = {"token", "sig", "Expires"};
    struct {
        const char *in, *out;
        size_t nf;
    } cases[] = {
        {"http://h/f", "http://h/f", 3},
        {"http://h/f?token=1", "http://h/f", 3},
        {"http://h/f?a=1&token=2&b=3", "http://h/f?a=1&b=3", 3},
        {"http://h/f?token=1&sig=2", "http://h/f", 3},
        {"http://h/f?token", "http://h/f", 3},                  /* key without '=' */
        {"http://h/f?tokenx=1&xtoken=2", "http://h/f?tokenx=1&xtoken=2", 3},
        {"http://h/f?a=1&&b=2", "http://h/f?a=1&b=2", 3},       /* empty params dropped */
        {"http://h/f?a=1&token=2#frag", "http://h/f?a=1#frag", 3},
        {"http://h/f?token=1#frag", "http://h/f#frag", 3},
        {"http://h/f#x?token=1", "http://h/f#x?token=1", 3},    /* '?' inside the fragment */
        {"http://h/f?expires=1&Expires=2", "http://h/f?expires=1", 3}, /* case-sensitive */
        {"http://h/f?a=1&&b=2", "http://h/f?a=1&&b=2", 0},      /* no filter: unchanged */
        {"http://h/f?", "http://h/f", 3},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = df_sn_task_url(cases[i].in, filters, cases[i].nf);
        assert_non_null(got);
        if (strcmp(got, cases[i].out) != 0)
            fail_msg("case %zu: %s -> %s, want %s", i, cases[i].in, got, cases[i].out);
        free(got);
    }
}

static void test_task_id(void **state)
{
    char id[65], id2[65], want[65];
    uint8_t md[32];
    const char *in = "http://h/f\nsha256:abcd";

    (void)state;
    /* The definition: sha256 hex of "<task url>\n<sign>". */
    df_sha256(in, strlen(in), md);
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    assert_int_equal(df_sn_task_id("http://h/f", "sha256:abcd", "ident", id), 0);
    assert_string_equal(id, want);
    assert_true(df_sn_is_task_id(id));

    /* identifier used when no digest; '' when neither. */
    df_sn_task_id("http://h/f", NULL, "ident", id);
    df_sha256("http://h/f\nident", strlen("http://h/f\nident"), md);
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(id, want);
    df_sn_task_id("http://h/f", NULL, NULL, id);
    df_sn_task_id("http://h/f", "", "", id2);
    assert_string_equal(id, id2);
    df_sha256("http://h/f\n", strlen("http://h/f\n"), md);
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(id, want);

    assert_false(df_sn_is_task_id("ABCD"));
    assert_false(df_sn_is_task_id(NULL));
    memset(id2, 'A', 64);
    id2[64] = '\0';
    assert_false(df_sn_is_task_id(id2));
}

static void test_peer_id(void **state)
{
    char out[DF_SN_PEER_ID_MAX], small[8];

    (void)state;
    assert_int_equal(df_sn_peer_id("node-1", "10.0.0.1", 40123, out, sizeof(out)), 0);
    assert_string_equal(out, "node-1-10.0.0.1-40123");
    assert_int_equal(df_sn_peer_id("node-1", "10.0.0.1", 40123, small, sizeof(small)), -ENAMETOOLONG);
}

static void test_register_ok(void **state)
{
    char err[256];
    df_sn_register_req_t r;
    const char *body = "{\"url\": \"http://o/f?token=1\", \"filter\": [\"token\"], "
                       "\"digest\": \"sha256:" "0123456789abcdef0123456789abcdef"
                       "0123456789abcdef0123456789abcdef\", \"identifier\": \"x\", "
                       "\"headers\": [\"Authorization: Bearer abc\"], \"pattern\": \"p2p\", "
                       "\"peer\": {\"ip\": \"127.0.0.1\", \"port\": 40123, \"hostname\": \"node-1\"}, "
                       "\"future_field\": {\"nested\": [1,2,3]}}";

    (void)state;
    assert_int_equal(DEC(df_sn_decode_register, body, &r), 0);
    assert_string_equal(r.url, "http://o/f?token=1");
    assert_int_equal(r.nfilter, 1);
    assert_string_equal(r.filter[0], "token");
    assert_non_null(r.digest);
    assert_string_equal(r.identifier, "x");
    assert_int_equal(r.nheaders, 1);
    assert_string_equal(r.headers[0], "Authorization: Bearer abc");
    assert_int_equal(r.pattern, DF_PATTERN_P2P);
    assert_string_equal(r.peer_ip, "127.0.0.1");
    assert_int_equal(r.peer_port, 40123);
    assert_string_equal(r.peer_hostname, "node-1");
    assert_false(r.insecure);
    assert_null(r.root_ca);
    df_sn_register_req_clear(&r);
    df_sn_register_req_clear(&r); /* idempotent */

    /* Dragonfly's TLS fields: rootCAs are base64 byte strings, concatenated. */
    assert_int_equal(DEC(df_sn_decode_register,
                         "{\"url\":\"https://o/f\",\"peer\":{\"ip\":\"::1\"},\"insecure\":true,"
                         "\"rootCAs\":[\"QUJD\",\"eHk=\"]}",
                         &r),
                     0);
    assert_true(r.insecure);
    assert_int_equal(r.root_ca_len, 7);
    assert_memory_equal(r.root_ca, "ABC\nxy\n", 7);
    df_sn_register_req_clear(&r);

    /* Minimal: url + peer.ip; hostname defaults to the ip; "" too. */
    assert_int_equal(DEC(df_sn_decode_register,
                         "{\"url\":\"https://o/f\",\"peer\":{\"ip\":\"::1\",\"hostname\":\"\"},"
                         "\"digest\":null,\"pattern\":\"cdn\"}",
                         &r),
                     0);
    assert_string_equal(r.peer_hostname, "::1");
    assert_int_equal(r.peer_port, 0);
    assert_int_equal(r.pattern, DF_PATTERN_CDN);
    assert_null(r.digest);
    df_sn_register_req_clear(&r);
}

static void test_register_bad(void **state)
{
    static const char *bad[] = {
        "",
        "[]",
        "null",
        "{",
        "{\"url\": 1, \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"peer\": {\"ip\": \"1.2.3.4\"}}",                                     /* no url */
        "{\"url\": \"ftp://o/f\", \"peer\": {\"ip\": \"1.2.3.4\"}}",             /* scheme */
        "{\"url\": \"http://o/f x\", \"peer\": {\"ip\": \"1.2.3.4\"}}",          /* space */
        "{\"url\": \"http://o/f\"}",                                             /* no peer */
        "{\"url\": \"http://o/f\", \"peer\": {}}",                               /* no ip */
        "{\"url\": \"http://o/f\", \"peer\": {\"ip\": \"host.example\"}}",       /* not numeric */
        "{\"url\": \"http://o/f\", \"peer\": {\"ip\": \"1.2.3.4\", \"port\": 70000}}",
        "{\"url\": \"http://o/f\", \"peer\": {\"ip\": \"1.2.3.4\", \"port\": -1}}",
        "{\"url\": \"http://o/f\", \"peer\": {\"ip\": \"1.2.3.4\", \"port\": \"80\"}}",
        "{\"url\": \"http://o/f\", \"peer\": {\"ip\": \"1.2.3.4\", \"hostname\": \"a b\"}}",
        "{\"url\": \"http://o/f\", \"digest\": \"sha256:zz\", \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"digest\": \"crc32:00\", \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"pattern\": \"bt\", \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"headers\": \"X: y\", \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"headers\": [\"novalue\"], \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"headers\": [\"X: a\\r\\nY: b\"], \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"headers\": [1], \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"filter\": [null], \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"url\": \"http://o/g\", \"peer\": {\"ip\": \"1.2.3.4\"}}", /* dup */
        "{\"url\": \"http://o/f\\u0000x\", \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"insecure\": 1, \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"rootCAs\": \"QUJD\", \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"rootCAs\": [\"QUJ\"], \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"rootCAs\": [\"QU*D\"], \"peer\": {\"ip\": \"1.2.3.4\"}}",
        "{\"url\": \"http://o/f\", \"rootCAs\": [7], \"peer\": {\"ip\": \"1.2.3.4\"}}",
    };
    char err[256];
    df_sn_register_req_t r;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (DEC(df_sn_decode_register, bad[i], &r) != DF_EPROTO)
            fail_msg("case %zu accepted: %s", i, bad[i]);
        assert_true(err[0] != '\0');
        assert_null(r.url); /* cleared on error */
    }
}

static void test_register_caps(void **state)
{
    char err[256];
    df_sn_register_req_t r;
    df_buf_t b;
    size_t n = 70 * 1024;
    char *big;

    (void)state;
    /* A url longer than DF_SN_URL_MAX. */
    df_buf_init(&b, 1u << 20);
    assert_int_equal(df_buf_printf(&b, "{\"url\":\"http://o/"), 0);
    for (unsigned i = 0; i < DF_SN_URL_MAX; i++)
        assert_int_equal(df_buf_append(&b, "a", 1), 0);
    assert_int_equal(df_buf_printf(&b, "\",\"peer\":{\"ip\":\"1.2.3.4\"}}"), 0);
    assert_int_equal(df_sn_decode_register(b.data, b.len, &r, err, sizeof(err)), DF_EPROTO);
    /* Too many headers. */
    df_buf_reset(&b);
    assert_int_equal(df_buf_printf(&b, "{\"url\":\"http://o/f\",\"peer\":{\"ip\":\"1.2.3.4\"},\"headers\":["), 0);
    for (unsigned i = 0; i <= DF_SN_HEADERS_MAX; i++)
        assert_int_equal(df_buf_printf(&b, "%s\"X%u: v\"", i ? "," : "", i), 0);
    assert_int_equal(df_buf_printf(&b, "]}"), 0);
    assert_int_equal(df_sn_decode_register(b.data, b.len, &r, err, sizeof(err)), DF_EPROTO);
    df_buf_free(&b);
    /* A body over DF_SN_BODY_MAX is refused before parsing. */
    big = malloc(n);
    assert_non_null(big);
    memset(big, ' ', n);
    assert_int_equal(df_sn_decode_register(big, n, &r, err, sizeof(err)), DF_EPROTO);
    free(big);
}

static const char *TID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/* pattern with every '@' replaced by TID, into out. */
static void with_tid(const char *pattern, char *out, size_t cap)
{
    size_t n = 0;
    for (; *pattern && n + 65 < cap; pattern++) {
        if (*pattern == '@') {
            memcpy(out + n, TID, 64);
            n += 64;
        } else {
            out[n++] = *pattern;
        }
    }
    out[n] = '\0';
}

static void test_pull(void **state)
{
    char err[256], body[1024];
    df_sn_pull_req_t r;

    (void)state;
    snprintf(body, sizeof(body),
             "{\"task_id\":\"%s\",\"peer_id\":\"n-1.2.3.4-5\",\"results\":["
             "{\"piece\":3,\"src\":\"supernode\",\"ok\":true},{\"piece\":4,\"ok\":false}],"
             "\"running\":2,\"want\":6}",
             TID);
    assert_int_equal(DEC(df_sn_decode_pull, body, &r), 0);
    assert_string_equal(r.task_id, TID);
    assert_string_equal(r.peer_id, "n-1.2.3.4-5");
    assert_int_equal(r.nresults, 2);
    assert_int_equal(r.results[0].piece, 3);
    assert_string_equal(r.results[0].src, "supernode");
    assert_true(r.results[0].ok);
    assert_string_equal(r.results[1].src, "");
    assert_false(r.results[1].ok);
    assert_int_equal(r.running, 2);
    assert_int_equal(r.want, 6);
    assert_true(r.has_want);
    df_sn_pull_req_clear(&r);

    snprintf(body, sizeof(body), "{\"task_id\":\"%s\",\"peer_id\":\"p\"}", TID);
    assert_int_equal(DEC(df_sn_decode_pull, body, &r), 0);
    assert_false(r.has_want);
    assert_int_equal(r.nresults, 0);
    df_sn_pull_req_clear(&r);

    static const char *bad[] = {
        "{\"task_id\":\"@\"}",
        "{\"task_id\":\"abc\",\"peer_id\":\"p\"}",
        "{\"task_id\":\"@\",\"peer_id\":\"\"}",
        "{\"task_id\":\"@\",\"peer_id\":\"a b\"}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"results\":{}}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"results\":[1]}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"results\":[{\"piece\":1}]}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"results\":[{\"piece\":-1,\"ok\":true}]}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"results\":[{\"piece\":1,\"ok\":1}]}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"want\":1.5}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"running\":-3}",
        "{\"task_id\":\"@\",\"peer_id\":\"p\",\"want\":99999999999}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        with_tid(bad[i], body, sizeof(body));
        if (DEC(df_sn_decode_pull, body, &r) != DF_EPROTO)
            fail_msg("case %zu accepted: %s", i, body);
        assert_null(r.task_id);
        assert_null(r.results);
    }
}

static void test_pull_results_cap(void **state)
{
    char err[256];
    df_sn_pull_req_t r;
    df_buf_t b;

    (void)state;
    df_buf_init(&b, 64 * 1024);
    assert_int_equal(df_buf_printf(&b, "{\"task_id\":\"%s\",\"peer_id\":\"p\",\"results\":[", TID), 0);
    for (unsigned i = 0; i <= DF_SN_RESULTS_MAX; i++)
        assert_int_equal(df_buf_printf(&b, "%s{\"piece\":%u,\"ok\":true}", i ? "," : "", i), 0);
    assert_int_equal(df_buf_printf(&b, "]}"), 0);
    assert_int_equal(df_sn_decode_pull(b.data, b.len, &r, err, sizeof(err)), DF_EPROTO);
    df_buf_free(&b);
}

static void test_small_requests(void **state)
{
    char err[256], body[512];
    df_sn_down_req_t d;
    df_sn_error_req_t e;
    df_sn_heartbeat_req_t h;

    (void)state;
    assert_int_equal(DEC(df_sn_decode_service_down, "{\"peer_id\":\"p\"}", &d), 0);
    assert_null(d.task_id);
    df_sn_down_req_clear(&d);
    snprintf(body, sizeof(body), "{\"peer_id\":\"p\",\"task_id\":\"%s\"}", TID);
    assert_int_equal(DEC(df_sn_decode_service_down, body, &d), 0);
    assert_string_equal(d.task_id, TID);
    df_sn_down_req_clear(&d);
    assert_int_equal(DEC(df_sn_decode_service_down, "{\"task_id\":\"x\"}", &d), DF_EPROTO);

    snprintf(body, sizeof(body), "{\"task_id\":\"%s\",\"peer_id\":\"p\",\"src\":\"q\",\"piece\":3,\"kind\":\"digest\"}", TID);
    assert_int_equal(DEC(df_sn_decode_error, body, &e), 0);
    assert_int_equal(e.kind, DF_SN_ERR_DIGEST);
    assert_int_equal(e.piece, 3);
    assert_string_equal(e.src, "q");
    df_sn_error_req_clear(&e);
    snprintf(body, sizeof(body), "{\"task_id\":\"%s\",\"peer_id\":\"p\",\"src\":\"q\",\"piece\":3,\"kind\":\"io\"}", TID);
    assert_int_equal(DEC(df_sn_decode_error, body, &e), 0);
    assert_int_equal(e.kind, DF_SN_ERR_IO);
    df_sn_error_req_clear(&e);
    snprintf(body, sizeof(body), "{\"task_id\":\"%s\",\"peer_id\":\"p\",\"src\":\"q\",\"piece\":3,\"kind\":\"slow\"}", TID);
    assert_int_equal(DEC(df_sn_decode_error, body, &e), 0);
    assert_int_equal(e.kind, DF_SN_ERR_SLOW);
    df_sn_error_req_clear(&e);
    snprintf(body, sizeof(body), "{\"task_id\":\"%s\",\"peer_id\":\"p\",\"src\":\"q\",\"piece\":3,\"kind\":\"evil\"}", TID);
    assert_int_equal(DEC(df_sn_decode_error, body, &e), DF_EPROTO);
    snprintf(body, sizeof(body), "{\"task_id\":\"%s\",\"peer_id\":\"p\",\"piece\":3,\"kind\":\"io\"}", TID);
    assert_int_equal(DEC(df_sn_decode_error, body, &e), DF_EPROTO);

    assert_int_equal(DEC(df_sn_decode_heartbeat, "{\"peer_id\":\"p\"}", &h), 0);
    assert_string_equal(h.peer_id, "p");
    df_sn_heartbeat_req_clear(&h);
    assert_int_equal(DEC(df_sn_decode_heartbeat, "{\"peer_id\":7}", &h), DF_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_task_url_filter), cmocka_unit_test(test_task_id),
        cmocka_unit_test(test_peer_id),         cmocka_unit_test(test_register_ok),
        cmocka_unit_test(test_register_bad),    cmocka_unit_test(test_register_caps),
        cmocka_unit_test(test_pull),            cmocka_unit_test(test_pull_results_cap),
        cmocka_unit_test(test_small_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
