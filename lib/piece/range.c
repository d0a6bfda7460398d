/*
 * Range and Content-Range parsing (RFC 9110 sections 14.1.2 and 14.4).
 *
 * Hand-written and strict: input comes from any peer or client, and both
 * parsers are fuzzed (tests/fuzz/fuzz_range.c).  No sscanf/strtoull: digits
 * are accumulated by hand so a value of any length can neither overflow nor
 * depend on the locale.
 *
 * Range accepts exactly one range-spec, "bytes" in any case, and optional
 * whitespace only around the whole value (header parsers usually trim it
 * already).  A multi-range ("bytes=0-1,5-6") is -EINVAL: our peers never
 * send one and serving multipart/byteranges is not worth its complexity.
 *
 * Numbers too large for uint64 in a Range are still well-formed (RFC 9110
 * puts no limit on digits): they saturate at UINT64_MAX, so
 * "bytes=0-99999999999999999999999" means "to the end" and a huge first
 * position is unsatisfiable.  In a Content-Range they are garbage: -EINVAL.
 */
#include "core/core.h"
#include "piece/range.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Parses 1*DIGIT at *p, advancing *p.  Returns false when there is no digit.
 * On overflow *out is UINT64_MAX and *overflow is set; the digits are still
 * consumed. */
static bool parse_digits(const char **p, uint64_t *out, bool *overflow)
{
    const char *s = *p;
    uint64_t v = 0;

    *overflow = false;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (*overflow)
            continue;
        if (v > (UINT64_MAX - d) / 10) {
            *overflow = true;
            v = UINT64_MAX;
            continue;
        }
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return true;
}

/* Matches "bytes" case-insensitively at *p and advances past it. */
static bool eat_unit(const char **p)
{
    if (strncasecmp(*p, "bytes", 5) != 0)
        return false;
    *p += 5;
    return true;
}

/* True when only optional whitespace remains. */
static bool at_end(const char *p)
{
    while (is_ows(*p))
        p++;
    return *p == '\0';
}

int df_range_parse(const char *value, uint64_t size, uint64_t *off, uint64_t *len)
{
    const char *p = value;
    uint64_t first = 0, last = UINT64_MAX;
    bool has_first, has_last, ovf;

    if (!p)
        return -EINVAL;
    while (is_ows(*p))
        p++;
    if (!eat_unit(&p) || *p++ != '=')
        return -EINVAL;

    has_first = parse_digits(&p, &first, &ovf);
    if (*p++ != '-')
        return -EINVAL;
    has_last = parse_digits(&p, &last, &ovf);
    if (!has_first && !has_last)
        return -EINVAL;           /* "bytes=-" */
    if (!at_end(p))
        return -EINVAL;           /* trailing junk, or a multi-range */

    if (!has_first) {
        /* Suffix range: the last `last` bytes.  A zero suffix, or any
         * suffix of an empty resource, selects nothing: unsatisfiable. */
        if (last == 0 || size == 0)
            return -ERANGE;
        *len = DF_MIN(last, size);
        *off = size - *len;
        return 0;
    }
    if (has_last && last < first)
        return -EINVAL;           /* invalid range-spec, not unsatisfiable */
    if (first >= size)
        return -ERANGE;
    if (!has_last || last >= size)
        last = size - 1;          /* clamped to the representation's end */
    *off = first;
    *len = last - first + 1;      /* last < size, so no overflow */
    return 0;
}

int df_content_range_parse(const char *value, uint64_t *first, uint64_t *last, uint64_t *total)
{
    const char *p = value;
    uint64_t a, b, t = UINT64_MAX;
    bool ovf;

    if (!p)
        return -EINVAL;
    while (is_ows(*p))
        p++;
    if (!eat_unit(&p) || *p++ != ' ')
        return -EINVAL;
    if (!parse_digits(&p, &a, &ovf) || ovf || *p++ != '-')
        return -EINVAL;
    if (!parse_digits(&p, &b, &ovf) || ovf || *p++ != '/')
        return -EINVAL;
    if (*p == '*') {
        p++;
    } else {
        if (!parse_digits(&p, &t, &ovf) || ovf || t == UINT64_MAX)
            return -EINVAL;   /* UINT64_MAX is reserved for "unknown" */
    }
    if (!at_end(p))
        return -EINVAL;
    /* RFC 9110: invalid when last < first, or when the total is known and
     * last is not below it. */
    if (b < a || (t != UINT64_MAX && b >= t))
        return -EINVAL;
    *first = a;
    *last = b;
    *total = t;
    return 0;
}
