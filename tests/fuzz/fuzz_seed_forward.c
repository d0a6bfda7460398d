/*
 * libFuzzer target for the POST /peer/seed body (lib/tracker/seed_forward.c).
 * The first byte picks plain JSON (even) or a body sealed with a fixed key
 * (odd: the rest is encrypted first, so the fuzzer reaches the JSON behind
 * the seal too).  Checks the decoder's contract: on success every field is
 * within its cap, every header line is "Name: value" without CR/LF, and a
 * re-encode of the result decodes to the same; on failure the output is
 * cleared.
 */
#include "core/core.h"
#include "tracker/seed_forward.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    df_gossip_keyring_t kr;
    df_seedfwd_t r, again;
    uint8_t *sealed = NULL, *body = NULL;
    size_t slen = 0, blen = 0, n = 0;
    char err[256];
    bool keyed;
    int rc;

    if (size < 1 || size > DF_SEEDFWD_BODY_MAX)
        return 0;
    keyed = data[0] & 1;
    data++;
    size--;
    df_gossip_keyring_init(&kr);
    if (df_gossip_keyring_add(&kr, key, sizeof(key), true) < 0)
        abort();
    if (keyed) {
        sealed = malloc(size + DF_GOSSIP_ENCRYPT_OVERHEAD);
        if (!sealed || df_gossip_encrypt_packet(&kr, data, size, sealed, size + DF_GOSSIP_ENCRYPT_OVERHEAD, &slen) < 0)
            abort();
        data = sealed;
        size = slen;
    }
    rc = df_seedfwd_decode(keyed ? &kr : NULL, data, size, &r, err, sizeof(err));
    if (rc < 0) {
        if (r.url || r.headers || r.to[0])
            abort();
        goto out;
    }
    if (!r.url || !r.headers || strlen(r.url) > DF_SEEDFWD_URL_MAX || strlen(r.task_id) != 64)
        abort();
    for (; r.headers[n]; n++)
        if (n >= DF_SEEDFWD_HEADERS_MAX || !df_header_line_ok(r.headers[n]) || strpbrk(r.headers[n], "\r\n"))
            abort();
    if (df_seedfwd_encode(keyed ? &kr : NULL, r.to, r.from, r.url, r.task_id, (const char *const *)r.headers,
                          r.ts_ms, &body, &blen) == 0) {
        if (df_seedfwd_decode(keyed ? &kr : NULL, body, blen, &again, err, sizeof(err)) != 0 ||
            strcmp(again.url, r.url) != 0 || strcmp(again.to, r.to) != 0 || again.ts_ms != r.ts_ms)
            abort();
        df_seedfwd_clear(&again);
        free(body);
    }
    df_seedfwd_clear(&r);
out:
    free(sealed);
    df_gossip_keyring_clear(&kr);
    return 0;
}
