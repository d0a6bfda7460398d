/* The POST /peer/seed body: sealed and plain round trips, a body sealed
 * with another key or sent plain to a keyed node refused, caps, bad
 * fields and header lines that would smuggle a request line. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "tracker/seed_forward.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ID "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void keyring(df_gossip_keyring_t *kr, uint8_t fill)
{
    uint8_t key[32];
    memset(key, fill, sizeof(key));
    df_gossip_keyring_init(kr);
    assert_int_equal(df_gossip_keyring_add(kr, key, sizeof(key), true), 0);
}

static void test_round_trip(void **state)
{
    const char *hdrs[] = {"Authorization: Bearer secret", "X-Trace: 1", NULL};
    df_gossip_keyring_t kr, other;
    df_seedfwd_t r;
    uint8_t *body;
    size_t len;
    char err[128];

    (void)state;
    keyring(&kr, 7);
    keyring(&other, 8);
    assert_int_equal(df_seedfwd_encode(&kr, "owner", "n1", "http://o/f", ID, hdrs, 1234, &body, &len), 0);
    assert_null(memmem(body, len, "secret", 6)); /* sealed */
    assert_int_equal(df_seedfwd_decode(&kr, body, len, &r, err, sizeof(err)), 0);
    assert_string_equal(r.to, "owner");
    assert_string_equal(r.from, "n1");
    assert_string_equal(r.url, "http://o/f");
    assert_string_equal(r.task_id, ID);
    assert_int_equal(r.ts_ms, 1234);
    assert_string_equal(r.headers[0], hdrs[0]);
    assert_string_equal(r.headers[1], hdrs[1]);
    assert_null(r.headers[2]);
    df_seedfwd_clear(&r);
    /* another cluster's key, or no key: refused */
    assert_int_equal(df_seedfwd_decode(&other, body, len, &r, err, sizeof(err)), -EBADMSG);
    assert_int_equal(df_seedfwd_decode(NULL, body, len, &r, err, sizeof(err)), DF_EPROTO);
    free(body);

    /* plain (opt-in without key): readable, and refused by a keyed node */
    assert_int_equal(df_seedfwd_encode(NULL, "owner", "n1", "http://o/f", ID, NULL, 5, &body, &len), 0);
    assert_non_null(memmem(body, len, "\"headers\":[]", 12));
    assert_int_equal(df_seedfwd_decode(&kr, body, len, &r, err, sizeof(err)), -EBADMSG);
    assert_int_equal(df_seedfwd_decode(NULL, body, len, &r, err, sizeof(err)), 0);
    assert_null(r.headers[0]);
    df_seedfwd_clear(&r);
    free(body);
    df_gossip_keyring_clear(&kr);
    df_gossip_keyring_clear(&other);
}

static void test_encode_refuses(void **state)
{
    const char *smuggle[] = {"A: b\r\nHost: evil", NULL};
    const char *many[DF_SEEDFWD_HEADERS_MAX + 2];
    uint8_t *body;
    size_t len;

    (void)state;
    assert_int_equal(df_seedfwd_encode(NULL, "o", "n", "http://o/f", ID, smuggle, 1, &body, &len), -EINVAL);
    assert_int_equal(df_seedfwd_encode(NULL, "o", "n", "http://o/f", "abc", NULL, 1, &body, &len), -EINVAL);
    for (size_t i = 0; i < DF_SEEDFWD_HEADERS_MAX + 1; i++)
        many[i] = "A: b";
    many[DF_SEEDFWD_HEADERS_MAX + 1] = NULL;
    assert_int_equal(df_seedfwd_encode(NULL, "o", "n", "http://o/f", ID, many, 1, &body, &len), -EINVAL);
}

static void test_decode_hostile(void **state)
{
    static const char *bad[] = {
        "",
        "[]",
        "{}",
        "{\"v\":2,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"XYZ\",\"ts\":1,\"headers\":[]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":-1,\"headers\":[]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[1]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[\"nocolon\"]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[\"A: \\u0000x\"]}",
        "{\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[\"A: b\\nC: d\"]}",
        "{\"v\":1,\"v\":1,\"to\":\"o\",\"from\":\"n\",\"url\":\"u\",\"task_id\":\"" ID "\",\"ts\":1,\"headers\":[]}",
    };
    df_seedfwd_t r;
    char err[128];
    uint8_t *big;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(df_seedfwd_decode(NULL, (const uint8_t *)bad[i], strlen(bad[i]), &r, err, sizeof(err)),
                         DF_EPROTO);
        assert_true(err[0] != '\0');
    }
    big = calloc(1, DF_SEEDFWD_BODY_MAX + 1);
    assert_non_null(big);
    assert_int_equal(df_seedfwd_decode(NULL, big, DF_SEEDFWD_BODY_MAX + 1, &r, err, sizeof(err)), DF_ETOOBIG);
    free(big);
    df_seedfwd_clear(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_decode_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
