/*
 * Go compress/lzw compatible LZW (LSB order, 8-bit literals) for memberlist's
 * `compress` wrapper.
 *
 * Decoder: a line-by-line mirror of Go's reader.go decode loop, so that we
 * accept exactly the streams a Go node accepts and produce the same bytes.
 * The table is two fixed arrays (prefix/suffix, 4096 entries); the only
 * allocation is the caller's capped output buffer.  Every table entry points
 * to a strictly smaller code (an entry made at `hi` gets prefix `last`, and
 * last < hi), so walking a chain ends in at most 4096 steps and fits the
 * 4096-byte scratch; entries never assigned read as code 0 (a literal), so a
 * hostile stream cannot make the walk loop or run off the scratch.
 *
 * Encoder: a mirror of Go's writer.go, including its clear-code-first
 * behaviour and the reset when the code space is exhausted, with the same
 * open-addressed hash table.  Go's output only depends on LZW semantics
 * (greedy longest match), not on the hash layout, but mirroring it keeps the
 * code easy to compare with the reference.
 */
#include "gossip/lzw.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum {
    LIT_WIDTH = 8,
    CODE_CLEAR = 1 << LIT_WIDTH, /* 256 */
    CODE_EOF = CODE_CLEAR + 1,   /* 257 */
    MAX_WIDTH = 12,
    MAX_CODE = (1 << MAX_WIDTH) - 1, /* 4095 */
    CODE_INVALID = 0xffff,
    /* Encoder hash table: 4x the code space, as Go. */
    TABLE_SIZE = 4 * (1 << 12),
    TABLE_MASK = TABLE_SIZE - 1,
};

/* ------------------------------------------------------------------ decoder */

typedef struct {
    const uint8_t *in;
    size_t len, pos;
    uint32_t bits;  /* pending bits, LSB first */
    unsigned nbits; /* how many of them are valid */
} bit_reader_t;

/* Reads one code of `width` bits.  0, or DF_EPROTO when the input ends first
 * (Go: io.ErrUnexpectedEOF). */
static int read_code(bit_reader_t *r, unsigned width, uint16_t *code)
{
    while (r->nbits < width) {
        if (r->pos >= r->len)
            return DF_EPROTO;
        r->bits |= (uint32_t)r->in[r->pos++] << r->nbits;
        r->nbits += 8;
    }
    *code = (uint16_t)(r->bits & ((1u << width) - 1));
    r->bits >>= width;
    r->nbits -= width;
    return 0;
}

int df_lzw_decode(const uint8_t *in, size_t len, df_buf_t *out)
{
    /* suffix[c]/prefix[c] describe table code c >= 258: the string of c is
     * the string of prefix[c] followed by the byte suffix[c]. */
    uint8_t suffix[1 << MAX_WIDTH];
    uint16_t prefix[1 << MAX_WIDTH];
    uint8_t scratch[1 << MAX_WIDTH]; /* one expansion, written back to front */
    bit_reader_t r = {.in = in, .len = len};
    unsigned width = LIT_WIDTH + 1;
    uint16_t hi = CODE_EOF, overflow = 1 << (LIT_WIDTH + 1), last = CODE_INVALID;
    uint16_t code, c;
    size_t i;
    int rc;

    memset(suffix, 0, sizeof(suffix));
    memset(prefix, 0, sizeof(prefix));
    for (;;) {
        rc = read_code(&r, width, &code);
        if (rc < 0)
            return rc;
        if (code < CODE_CLEAR) {
            uint8_t b = (uint8_t)code;

            rc = df_buf_append(out, &b, 1);
            if (rc < 0)
                return rc;
            if (last != CODE_INVALID) {
                suffix[hi] = b;
                prefix[hi] = last;
            }
        } else if (code == CODE_CLEAR) {
            width = LIT_WIDTH + 1;
            hi = CODE_EOF;
            overflow = 1 << (LIT_WIDTH + 1);
            last = CODE_INVALID;
            continue;
        } else if (code == CODE_EOF) {
            return 0;
        } else if (code <= hi) {
            c = code;
            i = sizeof(scratch) - 1;
            if (code == hi && last != CODE_INVALID) {
                /* The KwKwK case: code is the entry being defined right now,
                 * which is last's string followed by last's first byte. */
                c = last;
                while (c >= CODE_CLEAR)
                    c = prefix[c];
                scratch[i--] = (uint8_t)c;
                c = last;
            }
            /* Chains strictly decrease (see the file comment), so at most
             * 4095 more bytes: the i > 0 test is a belt, never the brace. */
            while (c >= CODE_CLEAR && i > 0) {
                scratch[i--] = suffix[c];
                c = prefix[c];
            }
            if (c >= CODE_CLEAR)
                return DF_EPROTO;
            scratch[i] = (uint8_t)c;
            rc = df_buf_append(out, scratch + i, sizeof(scratch) - i);
            if (rc < 0)
                return rc;
            if (last != CODE_INVALID) {
                suffix[hi] = (uint8_t)c;
                prefix[hi] = last;
            }
        } else {
            return DF_EPROTO; /* "lzw: invalid code" */
        }
        last = code;
        hi++;
        if (hi >= overflow) {
            if (width == MAX_WIDTH) {
                /* Table full: stop adding entries until the sender clears.
                 * Undo hi++ so hi stays < overflow and fits the arrays. */
                last = CODE_INVALID;
                hi--;
            } else {
                width++;
                overflow = (uint16_t)(overflow << 1);
            }
        }
    }
}

/* ------------------------------------------------------------------ encoder */

typedef struct {
    df_buf_t *out;
    uint32_t bits;
    unsigned nbits, width;
    uint32_t hi, overflow;
    uint8_t chunk[256]; /* output is staged here to append in blocks */
    size_t nchunk;
    int err;
    uint32_t *table; /* key << 12 | code; 0 = empty (codes there are >= 258) */
} encoder_t;

static void flush_chunk(encoder_t *e)
{
    int rc;

    /* After an error the bytes are dropped, but the chunk is still emptied
     * so put_byte never writes past it. */
    if (e->nchunk > 0 && e->err == 0) {
        rc = df_buf_append(e->out, e->chunk, e->nchunk);
        if (rc < 0)
            e->err = rc;
    }
    e->nchunk = 0;
}

static void put_byte(encoder_t *e, uint8_t b)
{
    if (e->nchunk == sizeof(e->chunk))
        flush_chunk(e);
    e->chunk[e->nchunk++] = b;
}

/* Go's writeLSB. */
static void write_code(encoder_t *e, uint32_t code)
{
    e->bits |= code << e->nbits;
    e->nbits += e->width;
    while (e->nbits >= 8) {
        put_byte(e, (uint8_t)e->bits);
        e->bits >>= 8;
        e->nbits -= 8;
    }
}

/* Go's incHi: the next implied code; returns 1 when the code space ran out
 * and the writer sent a clear code and reset its state. */
static int inc_hi(encoder_t *e)
{
    e->hi++;
    if (e->hi == e->overflow) {
        e->width++;
        e->overflow <<= 1;
    }
    if (e->hi == MAX_CODE) {
        write_code(e, CODE_CLEAR);
        e->width = LIT_WIDTH + 1;
        e->hi = CODE_EOF;
        e->overflow = CODE_CLEAR << 1;
        memset(e->table, 0, TABLE_SIZE * sizeof(*e->table));
        return 1;
    }
    return 0;
}

int df_lzw_encode(const uint8_t *in, size_t len, df_buf_t *out)
{
    encoder_t e = {.out = out, .width = LIT_WIDTH + 1, .hi = CODE_EOF, .overflow = CODE_CLEAR << 1};
    size_t start = out->len, k;
    uint32_t code, literal, key, hash, h, t;
    int rc;

    e.table = calloc(TABLE_SIZE, sizeof(*e.table));
    if (!e.table)
        return -ENOMEM;
    /* Go >= 1.17 starts every stream with a clear code (GIF89a appendix F);
     * Serf's LZW streams observed on the wire begin 00 0d = clear, 0x06. */
    write_code(&e, CODE_CLEAR);
    if (len > 0) {
        code = in[0];
        for (k = 1; k < len; k++) {
            literal = in[k];
            key = code << 8 | literal;
            hash = (key >> 12 ^ key) & TABLE_MASK;
            for (h = hash, t = e.table[h]; t != 0; h = (h + 1) & TABLE_MASK, t = e.table[h]) {
                if (key == t >> 12)
                    break;
            }
            if (t != 0) {
                code = t & MAX_CODE; /* the string grows: emit nothing yet */
                continue;
            }
            write_code(&e, code);
            code = literal;
            if (inc_hi(&e))
                continue;
            while (e.table[hash] != 0)
                hash = (hash + 1) & TABLE_MASK;
            e.table[hash] = key << 12 | e.hi;
        }
        write_code(&e, code);
        inc_hi(&e);
    }
    write_code(&e, CODE_EOF);
    if (e.nbits > 0)
        put_byte(&e, (uint8_t)e.bits);
    flush_chunk(&e);
    rc = e.err;
    free(e.table);
    if (rc < 0)
        out->len = start;
    if (rc < 0 && out->data)
        out->data[start] = '\0';
    return rc;
}
