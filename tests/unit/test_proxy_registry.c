/*
 * Unit tests for the registry API shapes (lib/proxy/registry.c): manifest
 * URLs, blob tasks, manifest/index parsing, platforms, Bearer challenges and
 * token answers; and the preheat request decoder (lib/supernode/preheat.c).
 */
#include "core/core.h"
#include "proxy/registry.h"
#include "supernode/api_codec.h"
#include "supernode/preheat.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define H64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define D1 "sha256:" H64
#define D2 "sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define D3 "sha256:2123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_manifest_url(void **state)
{
    df_registry_ref_t r;

    (void)state;
    assert_int_equal(df_registry_parse_manifest_url("http://127.0.0.1:5000/v2/test/img/manifests/1", &r), 0);
    assert_string_equal(r.repo_url, "http://127.0.0.1:5000/v2/test/img");
    assert_string_equal(r.name, "test/img");
    assert_string_equal(r.reference, "1");
    assert_false(r.by_digest);
    assert_int_equal(df_registry_parse_manifest_url("https://reg.example/v2/a/manifests/" D1, &r), 0);
    assert_true(r.by_digest);
    /* a repository called "manifests" */
    assert_int_equal(df_registry_parse_manifest_url("https://h/v2/x/manifests/manifests/v1.2", &r), 0);
    assert_string_equal(r.name, "x/manifests");
    assert_string_equal(r.reference, "v1.2");

    const char *bad[] = {
        "ftp://h/v2/a/manifests/1",
        "http://h/v1/a/manifests/1",
        "http://h/v2/a/manifests/",
        "http://h/v2//manifests/1",
        "http://h/v2/a//b/manifests/1",
        "http://h/v2/A/manifests/1",
        "http://h/v2/a/manifests/1?x=y",
        "http://h/v2/a/manifests/1#f",
        "http://h/v2/a/manifests/.x",
        "http://h/v2/a/manifests/sha256:abc",
        "http://user@h/v2/a/manifests/1",
        "http://h h/v2/a/manifests/1",
        "http:///v2/a/manifests/1",
        "http://h/v2/a/blobs/" D1,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(df_registry_parse_manifest_url(bad[i], &r), -EINVAL);
}

static void test_blob_task(void **state)
{
    char url[256], id_a[65], id_b[65];
    df_download_req_t r = {0};
    const char *filt[] = {"x", NULL};

    (void)state;
    assert_int_equal(df_registry_blob_url("http://h:5000/v2/a/b", D1, url, sizeof(url)), 0);
    assert_string_equal(url, "http://h:5000/v2/a/b/blobs/" D1);
    r.identifier = "stale";
    r.filter = filt;
    df_registry_blob_task(&r, url, D1);
    assert_ptr_equal(r.url, url);
    assert_string_equal(r.digest, D1);
    assert_null(r.identifier);
    assert_null(r.filter);
    /* The task id the supernode derives is the one of (url, digest). */
    assert_int_equal(df_sn_task_id(r.url, r.digest, r.identifier, id_a), 0);
    assert_int_equal(df_sn_task_id("http://h:5000/v2/a/b/blobs/" D1, D1, NULL, id_b), 0);
    assert_string_equal(id_a, id_b);
    assert_int_equal(df_registry_blob_url("http://h:5000/v2/a/b", D1, url, 20), -ENAMETOOLONG);
}

static int parse(const char *body, const char *ctype, df_registry_manifest_t *m, char *err)
{
    return df_registry_manifest_parse(body, strlen(body), ctype, m, err, 256);
}

static void test_image_manifests(void **state)
{
    df_registry_manifest_t m;
    char err[256];

    (void)state;
    /* OCI manifest: config first, then the layers; foreign layers skipped */
    assert_int_equal(parse("{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                           "\"config\":{\"mediaType\":\"c\",\"digest\":\"" D1 "\",\"size\":7},"
                           "\"layers\":[{\"digest\":\"" D2 "\",\"size\":100},"
                           "{\"mediaType\":\"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip\","
                           "\"digest\":\"" D3 "\"}]}",
                           NULL, &m, err),
                     0);
    assert_int_equal(m.kind, DF_REGISTRY_IMAGE);
    assert_int_equal(m.ndescs, 2);
    assert_string_equal(m.descs[0].digest, D1);
    assert_int_equal(m.descs[0].size, 7);
    assert_string_equal(m.descs[1].digest, D2);
    df_registry_manifest_clear(&m);
    /* Docker schema 2 known from the Content-Type only */
    assert_int_equal(parse("{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\"},\"layers\":[]}",
                           "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8", &m, err),
                     0);
    assert_int_equal(m.kind, DF_REGISTRY_IMAGE);
    assert_int_equal(m.ndescs, 1);
    df_registry_manifest_clear(&m);
    /* schema 1: blobSums, deduplicated */
    assert_int_equal(parse("{\"schemaVersion\":1,\"fsLayers\":[{\"blobSum\":\"" D1 "\"},{\"blobSum\":\"" D2
                           "\"},{\"blobSum\":\"" D1 "\"}]}",
                           NULL, &m, err),
                     0);
    assert_int_equal(m.ndescs, 2);
    df_registry_manifest_clear(&m);
}

static void test_index(void **state)
{
    df_registry_manifest_t m;
    char err[256], os[32], arch[32], variant[32];

    (void)state;
    assert_int_equal(parse("{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
                           "\"manifests\":[{\"digest\":\"" D1 "\",\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}},"
                           "{\"digest\":\"" D2 "\",\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
                           "{\"digest\":\"" D3 "\",\"platform\":{\"os\":\"unknown\",\"architecture\":\"unknown\"}}]}",
                           NULL, &m, err),
                     0);
    assert_int_equal(m.kind, DF_REGISTRY_INDEX);
    assert_int_equal(m.ndescs, 3);
    assert_int_equal(df_registry_platform_parse("linux/arm64", os, arch, variant), 0);
    assert_false(df_registry_platform_match(&m.descs[0], os, arch, variant));
    assert_true(df_registry_platform_match(&m.descs[1], os, arch, variant));
    assert_int_equal(df_registry_platform_parse("linux/arm64/v7", os, arch, variant), 0);
    assert_false(df_registry_platform_match(&m.descs[1], os, arch, variant));
    df_registry_manifest_clear(&m);
    /* a Docker list recognised by shape */
    assert_int_equal(parse("{\"schemaVersion\":2,\"manifests\":[]}", NULL, &m, err), 0);
    assert_int_equal(m.kind, DF_REGISTRY_INDEX);
    df_registry_manifest_clear(&m);

    const char *bad_pf[] = {"linux", "linux/", "/amd64", "a/b/c/d", "Linux/amd64", "linux/amd 64",
                            "linux/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(bad_pf) / sizeof(bad_pf[0]); i++)
        assert_int_equal(df_registry_platform_parse(bad_pf[i], os, arch, variant), -EINVAL);
}

static void test_bad_manifests(void **state)
{
    df_registry_manifest_t m;
    char err[256];
    const char *bad[] = {
        "",
        "[]",
        "{\"schemaVersion\":2",
        "{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\"}}",                    /* no layers */
        "{\"schemaVersion\":2,\"layers\":[{\"digest\":\"sha512:abcd\"}]}",            /* not sha256 */
        "{\"schemaVersion\":2,\"layers\":[{\"digest\":\"sha256:" H64 "0\"}]}",        /* 65 hex */
        "{\"schemaVersion\":2,\"layers\":[{\"digest\":\"SHA256:" H64 "\"}]}",
        "{\"schemaVersion\":2,\"layers\":[{\"digest\":\"" D1 "\",\"size\":-1}]}",
        "{\"schemaVersion\":2,\"layers\":{}}",
        "{\"schemaVersion\":2,\"layers\":[7]}",
        "{\"schemaVersion\":3,\"layers\":[]}",
        "{\"schemaVersion\":2,\"mediaType\":\"text/plain\",\"layers\":[]}",
        "{\"schemaVersion\":2,\"manifests\":[{\"digest\":\"" D1 "\",\"platform\":\"linux\"}]}",
        "{\"schemaVersion\":1,\"fsLayers\":[{\"blobSum\":\"md5:x\"}]}",
        "{\"schemaVersion\":2,\"layers\":[],\"layers\":[]}",                          /* duplicate key */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(parse(bad[i], NULL, &m, err), DF_EPROTO);
        assert_true(err[0] != '\0');
        assert_null(m.descs);
    }
}

static void test_descs_cap(void **state)
{
    df_registry_manifest_t m;
    char err[256];
    df_buf_t b;

    (void)state;
    df_buf_init(&b, 1u << 20);
    assert_int_equal(df_buf_printf(&b, "{\"schemaVersion\":2,\"layers\":["), 0);
    for (unsigned i = 0; i <= DF_REGISTRY_DESCS_MAX; i++)
        assert_int_equal(df_buf_printf(&b, "%s{\"digest\":\"sha256:%064x\"}", i ? "," : "", i), 0);
    assert_int_equal(df_buf_printf(&b, "]}"), 0);
    assert_int_equal(df_registry_manifest_parse(b.data, b.len, NULL, &m, err, sizeof(err)), DF_EPROTO);
    assert_non_null(strstr(err, "more than"));
    df_buf_free(&b);
}

static void test_bearer(void **state)
{
    char realm[128], service[64], scope[64];

    (void)state;
    assert_int_equal(df_registry_parse_bearer("Bearer realm=\"https://auth.example/token\",service=\"registry.example\","
                                              "scope=\"repository:library/nginx:pull\"",
                                              realm, sizeof(realm), service, sizeof(service), scope, sizeof(scope)),
                     0);
    assert_string_equal(realm, "https://auth.example/token");
    assert_string_equal(service, "registry.example");
    assert_string_equal(scope, "repository:library/nginx:pull");
    /* case, blanks, tokens, escapes, unknown params */
    assert_int_equal(df_registry_parse_bearer("  bearer  realm = http://a/t , error=\"insufficient_scope\", "
                                              "scope=\"a\\\"b\"",
                                              realm, sizeof(realm), service, sizeof(service), scope, sizeof(scope)),
                     0);
    assert_string_equal(realm, "http://a/t");
    assert_string_equal(service, "");
    assert_string_equal(scope, "a\"b");
    assert_int_equal(df_registry_parse_bearer("Basic realm=\"x\"", realm, sizeof(realm), service, sizeof(service),
                                              scope, sizeof(scope)),
                     -ENOENT);
    const char *bad[] = {
        "Bearer",
        "Bearer realm",
        "Bearer realm=",
        "Bearer realm=\"https://a",
        "Bearer realm=\"ftp://a\"",
        "Bearer service=\"x\"",
        "Bearer realm=\"https://a b\"",
        "Bearer realm=\"https://a\" junk",
        "Bearer realm=\"https://a\",,",
        "Bearer realm=\"https://a\x01\"",
        "Bearer realm=\"https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(df_registry_parse_bearer(bad[i], realm, sizeof(realm), service, sizeof(service), scope,
                                                  sizeof(scope)),
                         -EINVAL);
}

static void test_token(void **state)
{
    char *t;

    (void)state;
    t = df_registry_parse_token("{\"token\":\"abc.def\"}", 19);
    assert_string_equal(t, "abc.def");
    free(t);
    t = df_registry_parse_token("{\"access_token\":\"xyz\",\"expires_in\":300}", 39);
    assert_string_equal(t, "xyz");
    free(t);
    assert_null(df_registry_parse_token("{\"token\":\"a b\"}", 15));
    assert_null(df_registry_parse_token("{\"token\":\"a\\r\\nX: y\"}", 21));
    assert_null(df_registry_parse_token("{\"token\":\"\"}", 12));
    assert_null(df_registry_parse_token("{\"token\":1}", 11));
    assert_null(df_registry_parse_token("[1]", 3));
    assert_null(df_registry_parse_token("{", 1));
}

static int decode(const char *body, df_sn_preheat_req_t *r, char *err)
{
    return df_sn_decode_preheat(body, strlen(body), r, err, 256);
}

static void test_preheat_request(void **state)
{
    df_sn_preheat_req_t r;
    char err[256];

    (void)state;
    /* What Harbor's Dragonfly provider sends */
    assert_int_equal(decode("{\"type\":\"image\",\"url\":\"https://harbor.example/v2/library/nginx/manifests/1.25\","
                            "\"headers\":{\"Authorization\":\"Bearer tok\"},\"image\":\"library/nginx\",\"tag\":\"1.25\"}",
                            &r, err),
                     0);
    assert_true(r.image);
    assert_int_equal(r.nheaders, 1);
    assert_string_equal(r.headers[0], "Authorization: Bearer tok");
    assert_null(r.platform);
    df_sn_preheat_req_clear(&r);
    assert_int_equal(decode("{\"type\":\"file\",\"url\":\"http://o/f?a=1&b=2&c=3\",\"filter\":\"a&c\","
                            "\"identifier\":\"id\"}",
                            &r, err),
                     0);
    assert_false(r.image);
    assert_int_equal(r.nfilter, 2);
    assert_string_equal(r.filter[1], "c");
    assert_string_equal(r.identifier, "id");
    df_sn_preheat_req_clear(&r);
    assert_int_equal(decode("{\"type\":\"image\",\"url\":\"http://h/v2/a/manifests/1\",\"platform\":\"linux/arm64/v8\","
                            "\"filter\":[\"x\"],\"headers\":null}",
                            &r, err),
                     0);
    assert_string_equal(r.platform, "linux/arm64/v8");
    df_sn_preheat_req_clear(&r);
    assert_int_equal(decode("{\"type\":\"file\",\"url\":\"https://o/f\",\"insecure\":true,\"rootCAs\":[\"QUJD\"]}",
                            &r, err),
                     0);
    assert_true(r.insecure);
    assert_int_equal(r.root_ca_len, 4);
    assert_memory_equal(r.root_ca, "ABC\n", 4);
    df_sn_preheat_req_clear(&r);

    const char *bad[] = {
        "", "null", "{}", "{\"type\":\"image\"}", "{\"type\":1,\"url\":\"http://h/v2/a/manifests/1\"}",
        "{\"type\":\"image\",\"url\":\"http://h/v2/a/manifests/1\",\"headers\":{\"A B\":\"x\"}}",
        "{\"type\":\"image\",\"url\":\"http://h/v2/a/manifests/1\",\"headers\":{\"A\":\"x\\ny\"}}",
        "{\"type\":\"image\",\"url\":\"http://h/v2/a/manifests/1\",\"filter\":7}",
        "{\"type\":\"file\",\"url\":\"file:///etc/passwd\"}",
        "{\"type\":\"file\",\"url\":\"http://host/a b\"}",
        "{\"type\":\"image\",\"url\":\"http://h/v2/a/manifests/1\",\"type\":\"file\"}",
        "{\"type\":\"file\",\"url\":\"http://h/f\",\"insecure\":1}",
        "{\"type\":\"file\",\"url\":\"http://h/f\",\"rootCAs\":\"QUJD\"}",
        "{\"type\":\"file\",\"url\":\"http://h/f\",\"rootCAs\":[\"QUJ\"]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(decode(bad[i], &r, err), DF_EPROTO);
        assert_true(err[0] != '\0');
        assert_null(r.url);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manifest_url),   cmocka_unit_test(test_blob_task),
        cmocka_unit_test(test_image_manifests), cmocka_unit_test(test_index),
        cmocka_unit_test(test_bad_manifests),  cmocka_unit_test(test_descs_cap),
        cmocka_unit_test(test_bearer),         cmocka_unit_test(test_token),
        cmocka_unit_test(test_preheat_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
