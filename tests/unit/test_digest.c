/* Digest parsing/formatting and hashing against published test vectors
 * (FIPS 180-2 "abc" and the million-'a' message, RFC 1321). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/digest.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SHA256_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA256_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA256_MILLION_A "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
#define MD5_ABC "900150983cd24fb0d6963f7d28e17f72"
#define MD5_EMPTY "d41d8cd98f00b204e9800998ecf8427e"
#define SHA512_ABC                                                                                 \
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"                             \
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"

static void hash_str(df_digest_alg_t alg, const void *data, size_t len, char *out)
{
    df_hasher_t *h = df_hasher_new(alg);
    df_digest_t d;

    assert_non_null(h);
    df_hasher_update(h, data, len);
    df_hasher_final(h, &d);
    df_digest_format(&d, out, DF_DIGEST_STR_MAX);
    df_hasher_free(h);
}

static void test_vectors(void **state)
{
    char s[DF_DIGEST_STR_MAX];

    hash_str(DF_DIGEST_SHA256, "abc", 3, s);
    assert_string_equal(s, "sha256:" SHA256_ABC);
    hash_str(DF_DIGEST_SHA256, "", 0, s);
    assert_string_equal(s, "sha256:" SHA256_EMPTY);
    hash_str(DF_DIGEST_MD5, "abc", 3, s);
    assert_string_equal(s, "md5:" MD5_ABC);
    hash_str(DF_DIGEST_MD5, "", 0, s);
    assert_string_equal(s, "md5:" MD5_EMPTY);
    hash_str(DF_DIGEST_SHA512, "abc", 3, s);
    assert_string_equal(s, "sha512:" SHA512_ABC);
}

/* Many small updates equal one big one, and final() resets for reuse. */
static void test_incremental_and_reuse(void **state)
{
    df_hasher_t *h = df_hasher_new(DF_DIGEST_SHA256);
    char chunk[1000], s[DF_DIGEST_STR_MAX];
    df_digest_t d;

    assert_non_null(h);
    memset(chunk, 'a', sizeof(chunk));
    for (int i = 0; i < 1000; i++)
        df_hasher_update(h, chunk, sizeof(chunk));
    df_hasher_final(h, &d);
    df_digest_format(&d, s, sizeof(s));
    assert_string_equal(s, "sha256:" SHA256_MILLION_A);

    df_hasher_update(h, "a", 1);
    df_hasher_update(h, "bc", 2);
    df_hasher_final(h, &d);
    df_digest_format(&d, s, sizeof(s));
    assert_string_equal(s, "sha256:" SHA256_ABC);
    df_hasher_free(h);
    df_hasher_free(NULL);
}

static void test_sha256_oneshot(void **state)
{
    uint8_t out[32];
    char hex[65];

    df_sha256("abc", 3, out);
    df_hex(out, 32, hex);
    assert_string_equal(hex, SHA256_ABC);
}

static void test_parse(void **state)
{
    df_digest_t a, b;
    char s[DF_DIGEST_STR_MAX];

    assert_int_equal(df_digest_parse("sha256:" SHA256_ABC, &a), 0);
    assert_int_equal(a.alg, DF_DIGEST_SHA256);
    assert_int_equal(a.len, 32);
    /* Algorithm and hex are case-insensitive; output is canonical. */
    assert_int_equal(df_digest_parse("SHA256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", &b), 0);
    assert_true(df_digest_equal(&a, &b));
    df_digest_format(&b, s, sizeof(s));
    assert_string_equal(s, "sha256:" SHA256_ABC);

    assert_int_equal(df_digest_parse("md5:" MD5_ABC, &b), 0);
    assert_int_equal(b.len, 16);
    assert_false(df_digest_equal(&a, &b));
    assert_int_equal(df_digest_parse("sha512:" SHA512_ABC, &b), 0);
    assert_int_equal(b.len, 64);
    df_digest_format(&b, s, sizeof(s));
    assert_int_equal(strlen(s), DF_DIGEST_STR_MAX - 1);

    /* Wrong lengths, unknown algorithms, junk. */
    assert_int_equal(df_digest_parse("sha256:" MD5_ABC, &b), -EINVAL);
    assert_int_equal(df_digest_parse("md5:" SHA256_ABC, &b), -EINVAL);
    assert_int_equal(df_digest_parse("sha256:" SHA256_ABC "00", &b), -EINVAL);
    assert_int_equal(df_digest_parse("sha1:a9993e364706816aba3e25717850c26c9cd0d89d", &b), -EINVAL);
    assert_int_equal(df_digest_parse(SHA256_ABC, &b), -EINVAL);
    assert_int_equal(df_digest_parse("sha256:", &b), -EINVAL);
    assert_int_equal(df_digest_parse("", &b), -EINVAL);
    assert_int_equal(df_digest_parse(NULL, &b), -EINVAL);
    assert_int_equal(df_digest_parse("sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &b), -EINVAL);
    assert_int_equal(df_digest_parse("sha2566:" SHA256_ABC, &b), -EINVAL);

    /* A short buffer truncates rather than overflowing. */
    df_digest_format(&a, s, 8);
    assert_string_equal(s, "sha256:");
    assert_string_equal(df_digest_alg_name(DF_DIGEST_MD5), "md5");
}

static void test_normalize(void **state)
{
    char out[DF_DIGEST_TEXT_MAX], tiny[8];
    char up[80];

    (void)state;
    snprintf(up, sizeof(up), "MD5:%s", "D41D8CD98F00B204E9800998ECF8427E");
    assert_int_equal(df_digest_normalize(up, out, sizeof(out)), 0);
    assert_string_equal(out, "md5:d41d8cd98f00b204e9800998ecf8427e");
    assert_int_equal(df_digest_normalize("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                                         out, sizeof(out)), 0);
    assert_string_equal(out, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_int_equal(df_digest_normalize("md5:d41d8cd98f00b204e9800998ecf8427e", tiny, sizeof(tiny)),
                     -ENAMETOOLONG);
    assert_int_equal(df_digest_normalize("md5:d41d8cd98f00b204e9800998ecf8427", out, sizeof(out)), -EINVAL);
    assert_int_equal(df_digest_normalize("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709", out, sizeof(out)),
                     -EINVAL);
    assert_int_equal(df_digest_normalize("md5:", out, sizeof(out)), -EINVAL);
    assert_int_equal(df_digest_normalize(NULL, out, sizeof(out)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_incremental_and_reuse),
        cmocka_unit_test(test_sha256_oneshot),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_normalize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
