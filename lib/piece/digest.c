/*
 * Digests: "alg:hex" strings and incremental hashing over OpenSSL's EVP
 * interface (the low-level SHA256_* calls are deprecated in OpenSSL 3).
 *
 * A df_hasher_t owns one EVP_MD_CTX and is reused across files: final()
 * re-initialises it.  EVP calls on an initialised context with a built-in
 * digest cannot fail short of memory corruption, so update/final do not
 * return errors; a failure is recorded and final() then yields an empty
 * digest (alg DF_DIGEST_NONE), which never compares equal to a real one.
 */
#include "core/core.h"
#include "piece/digest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

struct df_hasher {
    df_digest_alg_t alg;
    EVP_MD_CTX *ctx;
    bool failed;
};

static const EVP_MD *alg_md(df_digest_alg_t alg)
{
    switch (alg) {
    case DF_DIGEST_MD5: return EVP_md5();
    case DF_DIGEST_SHA256: return EVP_sha256();
    case DF_DIGEST_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

static size_t alg_len(df_digest_alg_t alg)
{
    switch (alg) {
    case DF_DIGEST_MD5: return 16;
    case DF_DIGEST_SHA256: return 32;
    case DF_DIGEST_SHA512: return 64;
    default: return 0;
    }
}

const char *df_digest_alg_name(df_digest_alg_t alg)
{
    switch (alg) {
    case DF_DIGEST_MD5: return "md5";
    case DF_DIGEST_SHA256: return "sha256";
    case DF_DIGEST_SHA512: return "sha512";
    default: return "none";
    }
}

int df_digest_parse(const char *text, df_digest_t *out)
{
    static const df_digest_alg_t algs[] = {DF_DIGEST_MD5, DF_DIGEST_SHA256, DF_DIGEST_SHA512};
    const char *colon;
    size_t namelen;

    if (!text)
        return -EINVAL;
    colon = strchr(text, ':');
    if (!colon)
        return -EINVAL;
    namelen = (size_t)(colon - text);
    for (size_t i = 0; i < DF_ARRAY_LEN(algs); i++) {
        const char *name = df_digest_alg_name(algs[i]);
        df_digest_t d;

        if (strlen(name) != namelen || strncasecmp(text, name, namelen) != 0)
            continue;
        memset(&d, 0, sizeof(d));
        d.alg = algs[i];
        d.len = alg_len(algs[i]);
        /* df_unhex insists on exactly 2*len hex digits: no truncated or
         * over-long values. */
        if (df_unhex(colon + 1, d.value, d.len) < 0)
            return -EINVAL;
        *out = d;
        return 0;
    }
    return -EINVAL;
}

void df_digest_format(const df_digest_t *d, char *out, size_t cap)
{
    char hex[2 * DF_DIGEST_MAX + 1];

    if (cap == 0)
        return;
    if (d->alg == DF_DIGEST_NONE || d->len == 0 || d->len > DF_DIGEST_MAX) {
        out[0] = '\0';
        return;
    }
    df_hex(d->value, d->len, hex);
    snprintf(out, cap, "%s:%s", df_digest_alg_name(d->alg), hex);
}

_Static_assert(DF_DIGEST_TEXT_MAX >= DF_DIGEST_STR_MAX, "dfly.h promises DF_DIGEST_TEXT_MAX suffices");

int df_digest_normalize(const char *text, char *out, size_t cap)
{
    char tmp[DF_DIGEST_STR_MAX];
    df_digest_t d;

    if (df_digest_parse(text, &d) < 0)
        return -EINVAL;
    df_digest_format(&d, tmp, sizeof(tmp));
    return df_strlcpy(out, tmp, cap);
}

bool df_digest_equal(const df_digest_t *a, const df_digest_t *b)
{
    if (a->alg == DF_DIGEST_NONE || a->alg != b->alg || a->len != b->len || a->len > DF_DIGEST_MAX)
        return false;
    return memcmp(a->value, b->value, a->len) == 0;
}

/* Returns NULL on ENOMEM, and for DF_DIGEST_NONE or an unknown algorithm. */
df_hasher_t *df_hasher_new(df_digest_alg_t alg)
{
    const EVP_MD *md = alg_md(alg);
    df_hasher_t *h;

    if (!md)
        return NULL;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->alg = alg;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, md, NULL) != 1) {
        df_hasher_free(h);
        return NULL;
    }
    return h;
}

void df_hasher_update(df_hasher_t *h, const void *data, size_t len)
{
    if (len == 0 || h->failed)
        return;
    if (EVP_DigestUpdate(h->ctx, data, len) != 1)
        h->failed = true;
}

void df_hasher_final(df_hasher_t *h, df_digest_t *out)
{
    unsigned int n = 0;

    memset(out, 0, sizeof(*out));
    if (!h->failed && EVP_DigestFinal_ex(h->ctx, out->value, &n) == 1 && n == alg_len(h->alg)) {
        out->alg = h->alg;
        out->len = n;
    } else {
        memset(out, 0, sizeof(*out));
    }
    h->failed = EVP_DigestInit_ex(h->ctx, alg_md(h->alg), NULL) != 1;
}

void df_hasher_free(df_hasher_t *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

void df_sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;

    /* EVP_Digest with a NULL engine only fails on allocation failure; a
     * zeroed result then fails every comparison instead of matching. */
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1)
        memset(out, 0, 32);
}
