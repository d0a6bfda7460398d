/* Range / Content-Range parsing: the edge cases RFC 9110 spells out, plus
 * the hostile ones (huge numbers, junk, whitespace, multi-ranges). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/range.h"

#include <errno.h>

static void expect_range(const char *v, uint64_t size, uint64_t off, uint64_t len)
{
    uint64_t o = 12345, l = 12345;
    int rc = df_range_parse(v, size, &o, &l);

    if (rc != 0)
        fail_msg("'%s' size %llu: rc %d", v, (unsigned long long)size, rc);
    assert_int_equal(o, off);
    assert_int_equal(l, len);
}

static void expect_err(const char *v, uint64_t size, int err)
{
    uint64_t o = 12345, l = 12345;
    int rc = df_range_parse(v, size, &o, &l);

    if (rc != err)
        fail_msg("'%s' size %llu: rc %d, want %d", v, (unsigned long long)size, rc, err);
    assert_int_equal(o, 12345);   /* outputs untouched on error */
    assert_int_equal(l, 12345);
}

static void test_range_ok(void **state)
{
    expect_range("bytes=0-0", 10, 0, 1);
    expect_range("bytes=0-9", 10, 0, 10);
    expect_range("bytes=2-5", 10, 2, 4);
    expect_range("bytes=9-9", 10, 9, 1);
    expect_range("bytes=5-", 10, 5, 5);
    expect_range("bytes=0-", 10, 0, 10);
    expect_range("bytes=-3", 10, 7, 3);
    expect_range("bytes=-10", 10, 0, 10);
    expect_range("bytes=-11", 10, 0, 10);                    /* suffix longer than the file */
    expect_range("bytes=5-100", 10, 5, 5);                   /* last clamped */
    expect_range("BYTES=1-2", 10, 1, 2);                     /* unit is case-insensitive */
    expect_range("Bytes=1-2", 10, 1, 2);
    expect_range("  bytes=1-2\t ", 10, 1, 2);                /* OWS around the value */
    expect_range("bytes=0004-0005", 10, 4, 2);               /* leading zeros are digits */
    /* Huge but well-formed numbers saturate: "to the end". */
    expect_range("bytes=0-18446744073709551615", 10, 0, 10);
    expect_range("bytes=0-99999999999999999999999999999999", 10, 0, 10);
    expect_range("bytes=-99999999999999999999999999999999", 10, 0, 10);
    expect_range("bytes=1-18446744073709551614", UINT64_MAX, 1, UINT64_MAX - 1);
    expect_range("bytes=0-", UINT64_MAX, 0, UINT64_MAX);
}

static void test_range_unsatisfiable(void **state)
{
    expect_err("bytes=-0", 10, -ERANGE);                     /* empty suffix */
    expect_err("bytes=10-", 10, -ERANGE);                    /* starts at the end */
    expect_err("bytes=10-20", 10, -ERANGE);
    expect_err("bytes=0-0", 0, -ERANGE);                     /* empty resource */
    expect_err("bytes=-5", 0, -ERANGE);
    expect_err("bytes=0-", 0, -ERANGE);
    expect_err("bytes=18446744073709551615-", 10, -ERANGE);
    expect_err("bytes=99999999999999999999999-", UINT64_MAX, -ERANGE);
    expect_err("bytes=18446744073709551615-18446744073709551615", UINT64_MAX, -ERANGE);
}

static void test_range_malformed(void **state)
{
    static const char *bad[] = {
        "", " ", "bytes", "bytes=", "bytes=-", "bytes=5-2", "bytes=a-b", "bytes=1-2x",
        "bytes=1", "bytes=+1-2", "bytes=-1-2", "bytes=1--2", "bytes=0x10-20",
        "bytes= 1-2", "bytes=1 -2", "bytes=1- 2", "bytes =1-2", "bytes=1-2,4-5", "bytes=1-2,",
        "bytes=,1-2", "bytes=1-2, 4-5", "items=1-2", "byte=1-2", "bytesx=1-2", "bytes:1-2",
        "bytes=1-2\n", "bytes=1-2\r\n", "bytes=\xff-2",
        "bytes=99999999999999999999999-1",                   /* last < saturated first */
    };
    for (size_t i = 0; i < DF_ARRAY_LEN(bad); i++)
        expect_err(bad[i], 100, -EINVAL);
    expect_err(NULL, 100, -EINVAL);
    /* A malformed value is -EINVAL even when also unsatisfiable. */
    expect_err("bytes=5-2", 0, -EINVAL);
}

static void test_content_range(void **state)
{
    uint64_t a = 1, b = 1, t = 1;

    assert_int_equal(df_content_range_parse("bytes 0-9/10", &a, &b, &t), 0);
    assert_int_equal(a, 0);
    assert_int_equal(b, 9);
    assert_int_equal(t, 10);
    assert_int_equal(df_content_range_parse("bytes 5-5/*", &a, &b, &t), 0);
    assert_int_equal(a, 5);
    assert_int_equal(b, 5);
    assert_int_equal(t, UINT64_MAX);
    assert_int_equal(df_content_range_parse("Bytes 1-2/3 ", &a, &b, &t), 0);
    assert_int_equal(df_content_range_parse("bytes 0-18446744073709551613/18446744073709551614", &a,
                                            &b, &t), 0);
    assert_int_equal(b, UINT64_MAX - 2);

    static const char *bad[] = {
        "", "bytes", "bytes ", "bytes 0-9", "bytes 0-9/", "bytes 9-0/10", "bytes 0-10/10",
        "bytes */10", "bytes 0-9/*x", "bytes  0-9/10", "bytes=0-9/10", "bytes 0 -9/10",
        "bytes 0-9 /10", "bytes -9/10", "bytes 0-/10", "bytes 0-9/10/11", "items 0-9/10",
        "bytes 0-9/18446744073709551615",                    /* total reserved for "unknown" */
        "bytes 0-99999999999999999999999/*", "bytes 0-1/99999999999999999999999",
        "bytes 0-9/1O", "bytes 0-9/10,bytes 0-9/10",
    };
    for (size_t i = 0; i < DF_ARRAY_LEN(bad); i++) {
        a = b = t = 7;
        if (df_content_range_parse(bad[i], &a, &b, &t) != -EINVAL)
            fail_msg("accepted '%s'", bad[i]);
        assert_int_equal(a, 7);
    }
    assert_int_equal(df_content_range_parse(NULL, &a, &b, &t), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_range_ok),
        cmocka_unit_test(test_range_unsatisfiable),
        cmocka_unit_test(test_range_malformed),
        cmocka_unit_test(test_content_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
