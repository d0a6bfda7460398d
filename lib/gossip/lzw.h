/*
 * LZW as Go's compress/lzw speaks it with order LSB and litWidth 8: the
 * format of memberlist's `compress` message (Buf field, Algo 0).
 *
 * Codes 0..255 are literals, 256 clears the table, 257 ends the stream, the
 * first table code is 258; codes start 9 bits wide and grow to 12; codes are
 * packed least-significant bit first and the last byte is zero-padded.
 */
#ifndef DF_GOSSIP_LZW_H
#define DF_GOSSIP_LZW_H
#ifndef DF_INTERNAL
#error "lib/gossip/lzw.h is private to libdfly"
#endif

#include "core/core.h"

#include <stddef.h>
#include <stdint.h>

/* Decodes the stream in[0..len) and appends the output to out.  The output
 * is bounded by out->cap (that is the LZW bomb protection: one 12-bit code
 * can stand for 4 KiB, so a 64 KiB datagram could otherwise expand to about
 * 170 MiB).  Mirrors Go's reader: the stream must end with the EOF code
 * (Go reports io.ErrUnexpectedEOF without it, and memberlist then drops the
 * message); bytes after the EOF code are ignored; a clear code may appear
 * anywhere, including first.
 * Returns 0, DF_EPROTO (invalid code, no EOF code), DF_ETOOBIG (output over
 * out->cap) or -ENOMEM.  On error out may hold a prefix of the output; the
 * caller discards it.  Allocates nothing but out's storage. */
int df_lzw_decode(const uint8_t *in, size_t len, df_buf_t *out);

/* Encodes in[0..len) exactly as Go's writer (Go >= 1.17, the one Serf 0.9.4
 * in Debian 12 uses) does: a clear code first, greedy longest-match codes, a
 * clear code and a fresh table each time code 4095 would be assigned, then
 * the EOF code and the zero-padded last byte.  Appends to out.  Returns 0,
 * DF_ETOOBIG (over out->cap; out->len is then restored) or -ENOMEM. */
int df_lzw_encode(const uint8_t *in, size_t len, df_buf_t *out);

#endif
