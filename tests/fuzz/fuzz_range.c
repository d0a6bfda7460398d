/*
 * libFuzzer target for the Range and Content-Range parsers.  The first 8
 * input bytes (when present) choose the resource size, the rest is the
 * header value.  Besides memory errors (ASan/UBSan), it checks the parsers'
 * contracts: a parsed range lies inside the resource and is non-empty, a
 * parsed Content-Range is ordered and within its total.
 */
#include "core/core.h"
#include "piece/range.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t res = 1000, off, len, first, last, total;
    char *s;
    int rc;

    if (size > 4096)
        return 0;
    if (size >= 8 && data[0] == 0xff) {
        /* A size prefix: exercise huge and empty resources too. */
        memcpy(&res, data + 1, 7);
        res >>= (data[7] & 63);
        data += 8;
        size -= 8;
    }
    s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    rc = df_range_parse(s, res, &off, &len);
    if (rc == 0) {
        if (len == 0 || off >= res || len > res - off)
            abort();
    } else if (rc != -EINVAL && rc != -ERANGE) {
        abort();
    }

    rc = df_content_range_parse(s, &first, &last, &total);
    if (rc == 0) {
        if (last < first || (total != UINT64_MAX && last >= total))
            abort();
    } else if (rc != -EINVAL) {
        abort();
    }
    free(s);
    return 0;
}
