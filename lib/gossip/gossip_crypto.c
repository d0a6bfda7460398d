/*
 * memberlist's AES-GCM encryption over OpenSSL EVP (see gossip_crypto.h for
 * the layouts).
 *
 * Design: stateless functions over a plain keyring struct; each call makes
 * and frees its own EVP context, so there is nothing to share or lock.  The
 * nonce is drawn from RAND_bytes for every message: GCM must never reuse a
 * (key, nonce) pair, and the protocol has no counter to derive one from.
 * Decryption tries the keys in ring order like memberlist's decryptPayload,
 * and reports only "no key worked", never which tag check failed.
 */
#include "gossip/gossip_crypto.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define VSN_SIZE 1
#define BLOCK_SIZE 16
#define MSG_ENCRYPT 10 /* memberlist encryptMsg type byte */

/* ----------------------------------------------------------------- keyring */

void df_gossip_keyring_init(df_gossip_keyring_t *kr)
{
    memset(kr, 0, sizeof(*kr));
}

void df_gossip_keyring_clear(df_gossip_keyring_t *kr)
{
    OPENSSL_cleanse(kr, sizeof(*kr));
}

static bool key_len_ok(size_t len)
{
    return len == 16 || len == 24 || len == 32;
}

int df_gossip_keyring_add(df_gossip_keyring_t *kr, const uint8_t *key, size_t len, bool primary)
{
    uint8_t tmp[32];
    size_t i, at = kr->n;

    if (!key_len_ok(len))
        return -EINVAL;
    for (i = 0; i < kr->n; i++) {
        if (kr->lens[i] == len && memcmp(kr->keys[i], key, len) == 0) {
            at = i;
            break;
        }
    }
    if (at == kr->n) {
        if (kr->n == DF_GOSSIP_KEYS_MAX)
            return DF_ETOOBIG;
        memcpy(kr->keys[at], key, len);
        kr->lens[at] = (uint8_t)len;
        kr->n++;
    }
    if (primary && at != 0) {
        /* Swap into slot 0; the old primary keeps decrypting. */
        memcpy(tmp, kr->keys[0], sizeof(tmp));
        memcpy(kr->keys[0], kr->keys[at], sizeof(tmp));
        memcpy(kr->keys[at], tmp, sizeof(tmp));
        i = kr->lens[0];
        kr->lens[0] = kr->lens[at];
        kr->lens[at] = (uint8_t)i;
        OPENSSL_cleanse(tmp, sizeof(tmp));
    }
    return 0;
}

/* ------------------------------------------------------------------ base64 */

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int df_gossip_key_parse_base64(const char *text, uint8_t out[32], size_t *len_out)
{
    /* Strict StdEncoding: groups of 4 symbols, '=' only as trailing padding
     * of the last group, unused bits of a padded group must be zero (Go's
     * decoder is lenient there only in its Strict=false mode, which it is;
     * we stay strict: a key with stray bits is a typo worth reporting). */
    uint8_t buf[32];
    int quad[4];
    size_t n = 0, q = 0, pad = 0;
    const char *p;
    int v, rc = -EINVAL;

    for (p = text; *p; p++) {
        if (*p == '\r' || *p == '\n')
            continue;
        if (pad > 0 && *p != '=')
            goto out; /* data after padding */
        if (*p == '=') {
            if (q < 2)
                goto out;
            pad++;
            quad[q++] = 0;
        } else {
            v = b64_value(*p);
            if (v < 0)
                goto out;
            quad[q++] = v;
        }
        if (q == 4) {
            uint32_t w = (uint32_t)quad[0] << 18 | (uint32_t)quad[1] << 12 | (uint32_t)quad[2] << 6 |
                         (uint32_t)quad[3];
            size_t nb = 3 - pad;

            if (pad > 2 || n + nb > sizeof(buf))
                goto out;
            if ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))
                goto out;
            buf[n++] = (uint8_t)(w >> 16);
            if (nb > 1)
                buf[n++] = (uint8_t)(w >> 8);
            if (nb > 2)
                buf[n++] = (uint8_t)w;
            q = 0;
        }
    }
    if (q != 0 || !key_len_ok(n))
        goto out;
    memcpy(out, buf, n);
    *len_out = n;
    rc = 0;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

/* ---------------------------------------------------------------- AES-GCM */

static const EVP_CIPHER *gcm_for(size_t keylen)
{
    switch (keylen) {
    case 16:
        return EVP_aes_128_gcm();
    case 24:
        return EVP_aes_192_gcm();
    default:
        return EVP_aes_256_gcm();
    }
}

int df__gossip_seal(const uint8_t *key, size_t keylen, uint8_t vsn, const uint8_t nonce[12],
                    const uint8_t *aad, size_t aadlen, const uint8_t *plain, size_t len,
                    uint8_t *out, size_t outcap, size_t *outlen)
{
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t padblock[BLOCK_SIZE];
    size_t padn = 0, total, off;
    int n, rc = -EIO;

    if (!key_len_ok(keylen) || vsn > 1)
        return -EINVAL;
    if (len > INT32_MAX - 64)
        return DF_ETOOBIG;
    if (vsn == 0)
        padn = BLOCK_SIZE - (len % BLOCK_SIZE); /* PKCS#7: always 1..16 bytes */
    total = VSN_SIZE + DF_GOSSIP_NONCE_SIZE + len + padn + DF_GOSSIP_TAG_SIZE;
    if (total > outcap)
        return DF_ETOOBIG;
    out[0] = vsn;
    memcpy(out + VSN_SIZE, nonce, DF_GOSSIP_NONCE_SIZE);
    off = VSN_SIZE + DF_GOSSIP_NONCE_SIZE;

    ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        goto out;
    if (EVP_EncryptInit_ex(ctx, gcm_for(keylen), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, DF_GOSSIP_NONCE_SIZE, NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
        goto out;
    if (aadlen > 0 && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1)
        goto out;
    if (len > 0) {
        if (EVP_EncryptUpdate(ctx, out + off, &n, plain, (int)len) != 1)
            goto out;
        off += (size_t)n;
    }
    if (padn > 0) {
        memset(padblock, (int)padn, padn);
        if (EVP_EncryptUpdate(ctx, out + off, &n, padblock, (int)padn) != 1)
            goto out;
        off += (size_t)n;
    }
    if (EVP_EncryptFinal_ex(ctx, out + off, &n) != 1)
        goto out;
    off += (size_t)n;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, DF_GOSSIP_TAG_SIZE, out + off) != 1)
        goto out;
    off += DF_GOSSIP_TAG_SIZE;
    *outlen = off;
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* One key: 0 when the tag verifies (plaintext in out), -EBADMSG when not,
 * -EIO on an OpenSSL failure. */
static int open_one(const uint8_t *key, size_t keylen, const uint8_t *aad, size_t aadlen,
                    const uint8_t *msg, size_t len, uint8_t *out, size_t *outlen)
{
    const uint8_t *nonce = msg + VSN_SIZE;
    const uint8_t *ct = nonce + DF_GOSSIP_NONCE_SIZE;
    size_t ctlen = len - VSN_SIZE - DF_GOSSIP_NONCE_SIZE - DF_GOSSIP_TAG_SIZE;
    uint8_t tag[DF_GOSSIP_TAG_SIZE];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n, rc = -EIO;
    size_t off = 0;

    if (!ctx)
        return -EIO;
    memcpy(tag, ct + ctlen, sizeof(tag));
    if (EVP_DecryptInit_ex(ctx, gcm_for(keylen), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, DF_GOSSIP_NONCE_SIZE, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
        goto out;
    if (aadlen > 0 && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1)
        goto out;
    if (ctlen > 0) {
        if (EVP_DecryptUpdate(ctx, out, &n, ct, (int)ctlen) != 1)
            goto out;
        off = (size_t)n;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, DF_GOSSIP_TAG_SIZE, tag) != 1)
        goto out;
    if (EVP_DecryptFinal_ex(ctx, out + off, &n) != 1) {
        rc = -EBADMSG;
        goto out;
    }
    *outlen = off + (size_t)n;
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (rc < 0)
        OPENSSL_cleanse(out, ctlen);
    return rc;
}

/* Tries every key; then strips vsn-0 padding.  out must hold len - 29. */
static int open_any(const df_gossip_keyring_t *kr, const uint8_t *aad, size_t aadlen,
                    const uint8_t *msg, size_t len, uint8_t *out, size_t outcap, size_t *outlen)
{
    size_t i, plen = 0;
    uint8_t vsn, padn;
    int rc = -EBADMSG;

    if (kr->n == 0)
        return -ENOKEY;
    if (len == 0)
        return DF_EPROTO;
    vsn = msg[0];
    if (vsn > 1)
        return DF_EPROTO; /* "Unsupported encryption version" */
    /* encryptedLength(vsn, 0): vsn 0 always carries at least one pad block. */
    if (len < DF_GOSSIP_ENCRYPT_OVERHEAD + (vsn == 0 ? BLOCK_SIZE : 0))
        return DF_EPROTO;
    if (len - DF_GOSSIP_ENCRYPT_OVERHEAD > outcap)
        return DF_ETOOBIG;
    if (len - DF_GOSSIP_ENCRYPT_OVERHEAD > INT32_MAX)
        return DF_ETOOBIG;
    for (i = 0; i < kr->n; i++) {
        rc = open_one(kr->keys[i], kr->lens[i], aad, aadlen, msg, len, out, &plen);
        if (rc != -EBADMSG)
            break;
    }
    if (rc < 0)
        return rc;
    if (vsn == 0) {
        /* Go's pkcs7decode trusts the last byte (and panics past the
         * start); we insist on a sane count. */
        padn = plen > 0 ? out[plen - 1] : 0;
        if (padn == 0 || padn > BLOCK_SIZE || padn > plen)
            return DF_EPROTO;
        plen -= padn;
    }
    *outlen = plen;
    return 0;
}

int df_gossip_encrypt_packet(const df_gossip_keyring_t *kr, const uint8_t *plain, size_t len,
                             uint8_t *out, size_t outcap, size_t *outlen)
{
    uint8_t nonce[DF_GOSSIP_NONCE_SIZE];

    if (kr->n == 0)
        return -ENOKEY;
    if (RAND_bytes(nonce, sizeof(nonce)) != 1)
        return -EIO;
    return df__gossip_seal(kr->keys[0], kr->lens[0], 1, nonce, NULL, 0, plain, len, out, outcap,
                           outlen);
}

int df_gossip_decrypt_packet(const df_gossip_keyring_t *kr, const uint8_t *msg, size_t len,
                             uint8_t *out, size_t outcap, size_t *outlen)
{
    return open_any(kr, NULL, 0, msg, len, out, outcap, outlen);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int df_gossip_encrypt_stream(const df_gossip_keyring_t *kr, const uint8_t *plain, size_t len,
                             df_buf_t *out)
{
    uint8_t nonce[DF_GOSSIP_NONCE_SIZE];
    uint8_t hdr[DF_GOSSIP_STREAM_HDR_SIZE];
    size_t start = out->len, enclen, got;
    int rc;

    if (kr->n == 0)
        return -ENOKEY;
    if (len > DF_GOSSIP_STREAM_MAX - DF_GOSSIP_ENCRYPT_OVERHEAD)
        return DF_ETOOBIG;
    enclen = len + DF_GOSSIP_ENCRYPT_OVERHEAD;
    hdr[0] = MSG_ENCRYPT;
    put_be32(hdr + 1, (uint32_t)enclen);
    if (RAND_bytes(nonce, sizeof(nonce)) != 1)
        return -EIO;
    /* Reserve header + body in one append, then seal in place. */
    rc = df_buf_append(out, hdr, sizeof(hdr));
    if (rc < 0)
        goto out;
    {
        size_t at = out->len;
        /* Grow by enclen bytes of space (content overwritten below). */
        while (out->len < at + enclen) {
            static const uint8_t zeros[256];
            size_t k = DF_MIN(sizeof(zeros), at + enclen - out->len);

            rc = df_buf_append(out, zeros, k);
            if (rc < 0)
                goto out;
        }
        rc = df__gossip_seal(kr->keys[0], kr->lens[0], 1, nonce, hdr, sizeof(hdr), plain, len,
                             (uint8_t *)out->data + at, enclen, &got);
    }
out:
    if (rc < 0) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}

int df_gossip_decrypt_stream(const df_gossip_keyring_t *kr, const uint8_t *msg, size_t len,
                             size_t *need, df_buf_t *out)
{
    size_t enclen, start = out->len, got = 0;
    int rc;

    *need = DF_GOSSIP_STREAM_HDR_SIZE;
    if (len >= 1 && msg[0] != MSG_ENCRYPT)
        return DF_EPROTO;
    if (len < DF_GOSSIP_STREAM_HDR_SIZE)
        return DF_EAGAIN;
    enclen = (size_t)msg[1] << 24 | (size_t)msg[2] << 16 | (size_t)msg[3] << 8 | msg[4];
    if (enclen > DF_GOSSIP_STREAM_MAX)
        return DF_ETOOBIG;
    *need = DF_GOSSIP_STREAM_HDR_SIZE + enclen;
    if (len < *need)
        return DF_EAGAIN;
    if (enclen < DF_GOSSIP_ENCRYPT_OVERHEAD)
        return DF_EPROTO;
    /* Make room for the plaintext, then open into it. */
    while (out->len < start + enclen - DF_GOSSIP_ENCRYPT_OVERHEAD) {
        static const uint8_t zeros[256];
        size_t k = DF_MIN(sizeof(zeros), start + enclen - DF_GOSSIP_ENCRYPT_OVERHEAD - out->len);

        rc = df_buf_append(out, zeros, k);
        if (rc < 0)
            goto out;
    }
    rc = open_any(kr, msg, DF_GOSSIP_STREAM_HDR_SIZE, msg + DF_GOSSIP_STREAM_HDR_SIZE, enclen,
                  (uint8_t *)out->data + start, enclen - DF_GOSSIP_ENCRYPT_OVERHEAD, &got);
    if (rc == 0) {
        out->len = start + got;
        out->data[out->len] = '\0';
    }
out:
    if (rc < 0) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}
