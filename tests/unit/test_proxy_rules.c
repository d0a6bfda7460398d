/*
 * Unit tests for the registry mirror's classification and request parsers
 * (lib/proxy/rules.c).
 */
#include "core/core.h"
#include "proxy/rules.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#define BLOB "/v2/library/busybox/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static df_proxy_action_t match(df_proxy_rules_t *r, const char *method, const char *path)
{
    return df_proxy_rules_match(r, method, path, strlen(path));
}

static void test_default_rules(void **state)
{
    df_proxy_rules_t *r = NULL;

    (void)state;
    assert_int_equal(df_proxy_rules_new(NULL, &r, NULL, 0), 0);
    assert_int_equal(match(r, "GET", BLOB), DF_PROXY_P2P);
    assert_int_equal(match(r, "HEAD", BLOB), DF_PROXY_DIRECT);
    assert_int_equal(match(r, "GET", "/v2/"), DF_PROXY_DIRECT);
    assert_int_equal(match(r, "GET", "/v2/library/busybox/manifests/latest"), DF_PROXY_DIRECT);
    assert_int_equal(match(r, "GET", BLOB "0"), DF_PROXY_DIRECT);
    assert_int_equal(match(r, "GET", "/v2/x/blobs/sha256:ABCDEF"), DF_PROXY_DIRECT);
    df_proxy_rules_free(r);
}

static void test_custom_rules(void **state)
{
    const char *specs[] = {"direct GET ^/v2/private/", "p2p GET ^/v2/.+/blobs/", "direct * .", NULL};
    const char *bad1[] = {"p2p HEAD ^/", NULL};
    const char *bad2[] = {"copy GET ^/", NULL};
    const char *bad3[] = {"p2p GET", NULL};
    const char *bad4[] = {"p2p GET ([", NULL};
    const char *bad5[] = {"p2p GET ^a+++$", NULL};
    const char *bad6[] = {"p2p GET ((a{200}){200}){200}", NULL};
    df_proxy_rules_t *r = NULL;
    char err[256];

    (void)state;
    assert_int_equal(df_proxy_rules_new(specs, &r, err, sizeof(err)), 0);
    assert_int_equal(match(r, "GET", "/v2/private/blobs/sha256:00"), DF_PROXY_DIRECT);
    assert_int_equal(match(r, "GET", "/v2/public/blobs/sha256:00"), DF_PROXY_P2P);
    df_proxy_rules_free(r);
    assert_int_equal(df_proxy_rules_new(bad1, &r, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "p2p HEAD"));
    assert_int_equal(df_proxy_rules_new(bad2, &r, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_rules_new(bad3, &r, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_rules_new(bad4, &r, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_rules_new(bad5, &r, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_rules_new(bad6, &r, err, sizeof(err)), -EINVAL);
}

static void test_blob_digest(void **state)
{
    char d[80];

    (void)state;
    assert_true(df_proxy_blob_digest(BLOB, strlen(BLOB), d, sizeof(d)));
    assert_string_equal(d, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    assert_false(df_proxy_blob_digest("/v2/x/manifests/sha256:00", 25, d, sizeof(d)));
    assert_false(df_proxy_blob_digest(BLOB, strlen(BLOB) - 1, d, sizeof(d)));
}

static void test_ns(void **state)
{
    char host[64], rest[64];
    const char *q;

    (void)state;
    q = "ns=docker.io";
    assert_int_equal(df_proxy_parse_ns(q, strlen(q), host, sizeof(host), rest, sizeof(rest)), 0);
    assert_string_equal(host, "docker.io");
    assert_string_equal(rest, "");
    q = "a=1&ns=reg.example.com%3A5000&b=2";
    assert_int_equal(df_proxy_parse_ns(q, strlen(q), host, sizeof(host), rest, sizeof(rest)), 0);
    assert_string_equal(host, "reg.example.com:5000");
    assert_string_equal(rest, "a=1&b=2");
    q = "ns=[::1]:5000";
    assert_int_equal(df_proxy_parse_ns(q, strlen(q), host, sizeof(host), rest, sizeof(rest)), 0);
    q = "a=1";
    assert_int_equal(df_proxy_parse_ns(q, strlen(q), host, sizeof(host), rest, sizeof(rest)), -ENOENT);
    assert_string_equal(rest, "a=1");
    for (size_t i = 0; i < 6; i++) {
        const char *bad[] = {"ns=evil@host", "ns=a/b", "ns=", "ns=a:0", "ns=a:99999", "ns=a%2"};
        q = bad[i];
        assert_int_equal(df_proxy_parse_ns(q, strlen(q), host, sizeof(host), rest, sizeof(rest)), -EINVAL);
    }
}

static void test_host_spec(void **state)
{
    df_proxy_host_t h;
    char err[256];

    (void)state;
    assert_int_equal(df_proxy_host_parse("Reg.Example:5000", &h, err, sizeof(err)), 0);
    assert_string_equal(h.authority, "reg.example:5000");
    assert_false(h.http);
    assert_false(h.insecure);
    assert_string_equal(h.ca_file, "");
    assert_int_equal(df_proxy_host_parse("  10.0.0.1  http insecure  ca=/etc/ca.pem ", &h, err, sizeof(err)), 0);
    assert_string_equal(h.authority, "10.0.0.1");
    assert_true(h.http);
    assert_true(h.insecure);
    assert_string_equal(h.ca_file, "/etc/ca.pem");
    assert_int_equal(df_proxy_host_parse("[::1]:443 https", &h, err, sizeof(err)), 0);
    assert_int_equal(df_proxy_host_parse("", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_host_parse("h ca=", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_host_parse("h http https", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_host_parse("h insecure insecure", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_host_parse("user@h", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(df_proxy_host_parse("h verify", &h, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "registry host"));
}

static int absolute(const char *uri, char *base, char *target)
{
    return df_proxy_parse_absolute(uri, strlen(uri), base, 300, target, 1024);
}

static void test_absolute_uri(void **state)
{
    char base[300], target[1024];

    (void)state;
    assert_int_equal(absolute("HTTP://Reg.Example:5000/v2/x/blobs/sha256:00?a=1", base, target), 0);
    assert_string_equal(base, "http://reg.example:5000");
    assert_string_equal(target, "/v2/x/blobs/sha256:00?a=1");
    assert_int_equal(absolute("http://h?q", base, target), 0);
    assert_string_equal(target, "/?q");
    assert_int_equal(absolute("http://[::1]", base, target), 0);
    assert_string_equal(base, "http://[::1]");
    assert_string_equal(target, "/");
    assert_int_equal(absolute("https://h/x", base, target), -EINVAL);
    assert_int_equal(absolute("http://u@h/x", base, target), -EINVAL);
    assert_int_equal(absolute("http:///x", base, target), -EINVAL);
    assert_int_equal(absolute("http://h/x y", base, target), -EINVAL);
    assert_int_equal(absolute("http://h/x#f", base, target), -EINVAL);
    assert_int_equal(df_proxy_parse_absolute("http://h/x\r\n", 11, base, 300, target, 1024), -EINVAL);
    assert_int_equal(df_proxy_parse_absolute("http://h/abcdef", 15, base, 300, target, 4), -ENAMETOOLONG);
}

static int conn(const char *t, char *host, uint16_t *port)
{
    return df_proxy_parse_connect(t, strlen(t), host, 256, port);
}

static void test_connect_target(void **state)
{
    char host[256], auth[300];
    uint16_t port = 0;

    (void)state;
    assert_int_equal(conn("Registry.Example:443", host, &port), 0);
    assert_string_equal(host, "registry.example");
    assert_int_equal(port, 443);
    assert_int_equal(df_proxy_format_authority(host, port, true, auth, sizeof(auth)), 0);
    assert_string_equal(auth, "registry.example");
    assert_int_equal(conn("[::1]:5000", host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(df_proxy_format_authority(host, port, true, auth, sizeof(auth)), 0);
    assert_string_equal(auth, "[::1]:5000");
    assert_int_equal(conn("10.0.0.1:65535", host, &port), 0);
    assert_int_equal(port, 65535);
    assert_int_equal(conn("h", host, &port), -EINVAL);            /* port is mandatory */
    assert_int_equal(conn("h:", host, &port), -EINVAL);
    assert_int_equal(conn("h:0", host, &port), -EINVAL);
    assert_int_equal(conn("h:65536", host, &port), -EINVAL);
    assert_int_equal(conn("h:000443", host, &port), -EINVAL);     /* at most 5 digits */
    assert_int_equal(conn("h:+443", host, &port), -EINVAL);
    assert_int_equal(conn("u@h:443", host, &port), -EINVAL);
    assert_int_equal(conn("h:443/x", host, &port), -EINVAL);
    assert_int_equal(conn("-h:443", host, &port), -EINVAL);
    assert_int_equal(conn("h.:443", host, &port), -EINVAL);
    assert_int_equal(conn("h,DNS:evil:443", host, &port), -EINVAL); /* nothing that could reach a SAN string */
    assert_int_equal(conn("[]:443", host, &port), -EINVAL);
    assert_int_equal(conn("[1.2.3.4]:443", host, &port), -EINVAL);
    assert_int_equal(conn("[::1:443", host, &port), -EINVAL);
    assert_int_equal(conn("[g::1]:443", host, &port), -EINVAL);
    assert_int_equal(conn(":443", host, &port), -EINVAL);
    assert_int_equal(df_proxy_parse_connect("h:443\r\n", 7, host, 256, &port), -EINVAL);
    assert_int_equal(df_proxy_parse_connect("h:4435", 5, host, 256, &port), 0); /* len bounds the parse */
    assert_int_equal(port, 443);
    assert_int_equal(df_proxy_parse_connect("abcdef:1", 8, host, 4, &port), -ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_rules),
        cmocka_unit_test(test_custom_rules),
        cmocka_unit_test(test_blob_digest),
        cmocka_unit_test(test_ns),
        cmocka_unit_test(test_host_spec),
        cmocka_unit_test(test_absolute_uri),
        cmocka_unit_test(test_connect_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
