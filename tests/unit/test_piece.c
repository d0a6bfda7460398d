/* Piece size rule, piece spans at the boundaries, bitmap helpers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/piece.h"

#include <errno.h>
#include <string.h>

#define KiB 1024ull
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

static void test_size_rule(void **state)
{
    assert_int_equal(df_piece_size_for(0), DF_PIECE_SIZE_MIN);
    assert_int_equal(df_piece_size_for(1), DF_PIECE_SIZE_MIN);
    assert_int_equal(df_piece_size_for(25 * MiB), 256 * KiB);       /* exactly 100 pieces */
    assert_int_equal(df_piece_size_for(25 * MiB + 1), 512 * KiB);
    assert_int_equal(df_piece_size_for(100 * MiB), 1 * MiB);
    assert_int_equal(df_piece_size_for(400 * MiB), 4 * MiB);
    assert_int_equal(df_piece_size_for(10 * GiB), 4 * MiB);         /* ceiling: 2560 pieces */
    assert_int_equal(df_piece_size_for(4 * TiB), 4 * MiB);          /* exactly the count cap */
    assert_int_equal(df_piece_size_for(4 * TiB + 1), 8 * MiB);
    assert_int_equal(df_piece_size_for(16 * TiB), DF_PIECE_SIZE_MAX);
    assert_int_equal(df_piece_size_for(UINT64_MAX), DF_PIECE_SIZE_MAX);
    /* Every size is a power of two within the limits and keeps the count
     * under the cap whenever that is possible. */
    for (uint64_t len = 1; len < 64 * TiB; len = len * 3 + 7) {
        uint64_t ps = df_piece_size_for(len);
        assert_true(ps >= DF_PIECE_SIZE_MIN && ps <= DF_PIECE_SIZE_MAX);
        assert_int_equal(ps & (ps - 1), 0);
        if (len <= 16 * TiB)
            assert_true(df_piece_count(len, ps) <= DF_PIECE_COUNT_MAX);
    }
}

static void test_count_and_span(void **state)
{
    uint64_t off, len;
    const uint64_t ps = 256 * KiB;

    assert_int_equal(df_piece_count(0, ps), 0);
    assert_int_equal(df_piece_count(1, ps), 1);
    assert_int_equal(df_piece_count(ps, ps), 1);
    assert_int_equal(df_piece_count(ps + 1, ps), 2);
    assert_int_equal(df_piece_count(3 * ps, ps), 3);
    assert_int_equal(df_piece_count(100, 0), 0);
    assert_int_equal(df_piece_count(UINT64_MAX, 1), UINT32_MAX);    /* saturates */

    /* Exact multiple: the last piece is full. */
    df_piece_span(3 * ps, ps, 2, &off, &len);
    assert_int_equal(off, 2 * ps);
    assert_int_equal(len, ps);
    /* One byte over: a 1-byte last piece. */
    df_piece_span(3 * ps + 1, ps, 3, &off, &len);
    assert_int_equal(off, 3 * ps);
    assert_int_equal(len, 1);
    df_piece_span(3 * ps + 1, ps, 0, &off, &len);
    assert_int_equal(off, 0);
    assert_int_equal(len, ps);
    /* Shorter than one piece. */
    df_piece_span(10, ps, 0, &off, &len);
    assert_int_equal(off, 0);
    assert_int_equal(len, 10);
    /* Out of range and empty file: zero length at the end. */
    df_piece_span(3 * ps, ps, 3, &off, &len);
    assert_int_equal(off, 3 * ps);
    assert_int_equal(len, 0);
    df_piece_span(0, ps, 0, &off, &len);
    assert_int_equal(len, 0);

    /* Spans tile the file exactly. */
    for (uint64_t total = 0; total < 5 * ps; total += ps / 3 + 1) {
        uint32_t n = df_piece_count(total, ps);
        uint64_t next = 0;
        for (uint32_t i = 0; i < n; i++) {
            df_piece_span(total, ps, i, &off, &len);
            assert_int_equal(off, next);
            assert_true(len > 0 && len <= ps);
            next += len;
        }
        assert_int_equal(next, total);
    }
}

static void test_bitmap(void **state)
{
    uint8_t bm[3] = {0}, back[3] = {0xee, 0xee, 0xee};
    char hex[7];

    assert_int_equal(df_bitmap_bytes(0), 0);
    assert_int_equal(df_bitmap_bytes(1), 1);
    assert_int_equal(df_bitmap_bytes(8), 1);
    assert_int_equal(df_bitmap_bytes(9), 2);

    df_bitmap_set(bm, 0);
    df_bitmap_set(bm, 9);
    df_bitmap_set(bm, 16);
    assert_true(df_bitmap_test(bm, 9));
    assert_false(df_bitmap_test(bm, 8));
    assert_int_equal(df_bitmap_count(bm, 17), 3);
    assert_int_equal(df_bitmap_count(bm, 16), 2);   /* bits past n are not counted */
    df_bitmap_to_hex(bm, 17, hex);
    assert_string_equal(hex, "010201");
    assert_int_equal(df_bitmap_from_hex(hex, 17, back), 0);
    assert_memory_equal(back, bm, 3);
    df_bitmap_clear(bm, 9);
    assert_int_equal(df_bitmap_count(bm, 17), 2);

    /* Bits past n set, wrong length, non-hex: rejected, output untouched. */
    memset(back, 0xee, sizeof(back));
    assert_int_equal(df_bitmap_from_hex("010203", 17, back), -EINVAL);
    assert_int_equal(df_bitmap_from_hex("0102", 17, back), -EINVAL);
    assert_int_equal(df_bitmap_from_hex("01020x", 17, back), -EINVAL);
    assert_int_equal(back[0], 0xee);
    assert_int_equal(df_bitmap_from_hex("", 0, back), 0);
    assert_int_equal(df_bitmap_from_hex("ff", 8, back), 0);
    assert_int_equal(df_bitmap_count(back, 8), 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_rule),
        cmocka_unit_test(test_count_and_span),
        cmocka_unit_test(test_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
