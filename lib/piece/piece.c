/*
 * Piece math and bitmaps.  Everything here is overflow-checked arithmetic on
 * uint64: lengths come from origins and peers and may be anything.
 */
#include "core/core.h"
#include "piece/piece.h"

#include <errno.h>
#include <string.h>

/* Pieces a file should have before the size grows past the 4 MiB ceiling:
 * ~100 keeps per-task state small while giving enough pieces to spread
 * across peers. */
#define TARGET_PIECES 100u
#define PIECE_SIZE_SOFT_MAX (4u * 1024u * 1024u)

uint64_t df_piece_size_for(uint64_t length)
{
    uint64_t ps = DF_PIECE_SIZE_MIN;

    /* Smallest power of two giving at most ~TARGET_PIECES pieces, within
     * [MIN, 4 MiB]. */
    while (ps < PIECE_SIZE_SOFT_MAX && df_piece_count(length, ps) > TARGET_PIECES)
        ps *= 2;
    /* Past 4 TiB the piece count cap forces larger pieces, up to the hard
     * maximum.  Files over 16 TiB still exceed DF_PIECE_COUNT_MAX: callers
     * check df_piece_count() and refuse them. */
    while (ps < DF_PIECE_SIZE_MAX && df_piece_count(length, ps) > DF_PIECE_COUNT_MAX)
        ps *= 2;
    return ps;
}

/* Saturates at UINT32_MAX (far above DF_PIECE_COUNT_MAX, which callers check)
 * and returns 0 for a zero piece size rather than dividing by zero. */
uint32_t df_piece_count(uint64_t length, uint64_t piece_size)
{
    uint64_t n;

    if (length == 0 || piece_size == 0)
        return 0;
    n = length / piece_size + (length % piece_size != 0);
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/* An idx past the end yields *off = length (clamped) and *len = 0. */
void df_piece_span(uint64_t length, uint64_t piece_size, uint32_t idx, uint64_t *off, uint64_t *len)
{
    uint64_t o;

    if (piece_size == 0 || idx >= df_piece_count(length, piece_size)) {
        *off = length;
        *len = 0;
        return;
    }
    o = (uint64_t)idx * piece_size; /* < length, so no overflow */
    *off = o;
    *len = DF_MIN(piece_size, length - o);
}

uint32_t df_bitmap_count(const uint8_t *bm, uint32_t n)
{
    uint32_t full = n / 8, c = 0;

    for (uint32_t i = 0; i < full; i++)
        c += (uint32_t)__builtin_popcount(bm[i]);
    /* Bits past n in the last byte are not counted, whatever they hold. */
    if (n & 7)
        c += (uint32_t)__builtin_popcount(bm[full] & ((1u << (n & 7)) - 1));
    return c;
}

void df_bitmap_to_hex(const uint8_t *bm, uint32_t n, char *out)
{
    df_hex(bm, df_bitmap_bytes(n), out);
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* All-or-nothing: the input is validated completely before bm is written,
 * so on -EINVAL bm is unchanged. */
int df_bitmap_from_hex(const char *hex, uint32_t n, uint8_t *bm)
{
    size_t bytes = df_bitmap_bytes(n);
    uint8_t last;

    if (strlen(hex) != 2 * bytes)
        return -EINVAL;
    for (size_t i = 0; i < 2 * bytes; i++)
        if (!is_hex(hex[i]))
            return -EINVAL;
    if (bytes == 0)
        return 0;
    if (df_unhex(hex + 2 * (bytes - 1), &last, 1) < 0)
        return -EINVAL;
    if ((n & 7) && (last >> (n & 7)) != 0)
        return -EINVAL;
    return df_unhex(hex, bm, bytes);
}
