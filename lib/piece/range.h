/*
 * HTTP Range header parsing (RFC 9110, single range only: what peers and
 * registry clients send).  Hand-written parser, fuzzed by tests/fuzz.
 */
#ifndef DF_PIECE_RANGE_H
#define DF_PIECE_RANGE_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdint.h>

/* Parses `value` ("bytes=A-B", "bytes=A-", "bytes=-N") against a resource of
 * `size` bytes.  On 0, [*off, *off + *len) is inside the resource and *len > 0.
 * -EINVAL: malformed or a multi-range (the caller answers 400 or ignores the
 * header); -ERANGE: well-formed but unsatisfiable (416). */
int df_range_parse(const char *value, uint64_t size, uint64_t *off, uint64_t *len);

/* Parses a Content-Range response value "bytes A-B/TOTAL" or "bytes A-B/ *".
 * *total = UINT64_MAX when unknown.  0 or -EINVAL. */
int df_content_range_parse(const char *value, uint64_t *first, uint64_t *last, uint64_t *total);

#endif
