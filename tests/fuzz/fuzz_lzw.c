/*
 * libFuzzer target for the LZW codec.  Decodes the input with a 1 MiB cap
 * (the result must respect it), and checks that encode -> decode of the
 * input gives the input back.
 */
#include "core/core.h"
#include "gossip/lzw.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    df_buf_t out, z;
    int rc;

    if (size > 65536)
        return 0;
    df_buf_init(&out, 1 << 20);
    rc = df_lzw_decode(data, size, &out);
    if ((rc != 0 && rc != DF_EPROTO && rc != DF_ETOOBIG) || out.len > (1 << 20))
        abort();
    df_buf_free(&out);

    df_buf_init(&z, 4 * size + 64);
    df_buf_init(&out, size);
    if (df_lzw_encode(data, size, &z) != 0)
        abort();
    if (df_lzw_decode((const uint8_t *)z.data, z.len, &out) != 0 || out.len != size ||
        (size && memcmp(out.data, data, size) != 0))
        abort();
    df_buf_free(&z);
    df_buf_free(&out);
    return 0;
}
