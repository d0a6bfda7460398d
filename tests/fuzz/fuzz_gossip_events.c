/*
 * libFuzzer target for dfly's gossip event payloads (lib/tracker/
 * gossip_events.c): decode arbitrary bytes; whatever decodes must re-encode
 * within its caps without crashing.
 */
#include "tracker/gossip_events.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    df_gev_t e;
    uint8_t out[1024], bits[256];
    uint32_t cursor = 0;

    if (df_gev_decode(data, size, &e) != 0)
        return 0;
    switch (e.kind) {
    case DF_GEV_HAVE:
        memset(bits, 0, sizeof(bits));
        for (size_t i = 0; i < e.nruns; i++)
            for (uint32_t p = e.runs[i].first; p - e.runs[i].first < e.runs[i].count && p < 2048; p++)
                bits[p / 8] |= (uint8_t)(1u << (p % 8));
        (void)df_gev_encode_have(out, sizeof(out), e.sender, e.task, e.full, bits, 2048, &cursor);
        break;
    case DF_GEV_DIGEST:
        (void)df_gev_encode_digest(out, sizeof(out), e.sender, e.task, e.first, e.digests,
                                   e.ndigests > 16 ? 16 : e.ndigests);
        break;
    case DF_GEV_SYNC: {
        /* what decodes re-encodes and decodes to the same fields */
        df_gev_t again;
        int n = df_gev_encode_sync(out, sizeof(out), e.sender, e.task, e.what, e.first);
        if (n < 0 || df_gev_decode(out, (size_t)n, &again) != 0 || again.what != e.what || again.first != e.first)
            __builtin_trap();
        break;
    }
    case DF_GEV_FILE: {
        df_gev_t again;
        int n = df_gev_encode_file(out, sizeof(out), e.sender, e.task, e.digests);
        if (n < 0 || df_gev_decode(out, (size_t)n, &again) != 0 || memcmp(again.digests, e.digests, 32) != 0)
            __builtin_trap();
        break;
    }
    default:
        (void)df_gev_encode_simple(out, sizeof(out), e.kind, e.sender, e.task);
        break;
    }
    return 0;
}
