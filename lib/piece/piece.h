/*
 * Piece math and piece bitmaps.  A file of `length` bytes is cut into
 * pieces of `piece_size` bytes (the last one shorter); piece i covers
 * [i*piece_size, min(length, (i+1)*piece_size)).  Pieces travel as plain
 * byte ranges: no wrapping header as in Dragonfly 1.x.
 */
#ifndef DF_PIECE_PIECE_H
#define DF_PIECE_PIECE_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_PIECE_SIZE_MIN (256u * 1024u)
#define DF_PIECE_SIZE_MAX (16u * 1024u * 1024u)
/* Hard cap on pieces per task: bounds every per-task array and bitmap. */
#define DF_PIECE_COUNT_MAX (1u << 20)

/* The piece size for a file of `length` bytes: a power of two between
 * DF_PIECE_SIZE_MIN and 4 MiB aiming at ~100 pieces, larger only when the
 * file would otherwise exceed DF_PIECE_COUNT_MAX pieces. */
uint64_t df_piece_size_for(uint64_t length);
/* Number of pieces; 0 for an empty file. */
uint32_t df_piece_count(uint64_t length, uint64_t piece_size);
/* Offset and length of piece idx (idx < count). */
void df_piece_span(uint64_t length, uint64_t piece_size, uint32_t idx, uint64_t *off, uint64_t *len);

/* Bitmaps: bit i of byte i/8, LSB first.  Size in bytes for n bits. */
static inline size_t df_bitmap_bytes(uint32_t n)
{
    return ((size_t)n + 7) / 8;
}
static inline bool df_bitmap_test(const uint8_t *bm, uint32_t i)
{
    return (bm[i >> 3] >> (i & 7)) & 1;
}
static inline void df_bitmap_set(uint8_t *bm, uint32_t i)
{
    bm[i >> 3] |= (uint8_t)(1u << (i & 7));
}
static inline void df_bitmap_clear(uint8_t *bm, uint32_t i)
{
    bm[i >> 3] &= (uint8_t)~(1u << (i & 7));
}
uint32_t df_bitmap_count(const uint8_t *bm, uint32_t n);
/* Encodes as lower-case hex of the bytes (2*bytes+1 chars into out). */
void df_bitmap_to_hex(const uint8_t *bm, uint32_t n, char *out);
/* Decodes hex produced by df_bitmap_to_hex; bits past n must be zero. */
int df_bitmap_from_hex(const char *hex, uint32_t n, uint8_t *bm);

#endif
