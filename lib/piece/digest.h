/*
 * Digests: parsing "alg:hex" strings and incremental hashing (OpenSSL EVP).
 */
#ifndef DF_PIECE_DIGEST_H
#define DF_PIECE_DIGEST_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { DF_DIGEST_NONE = 0, DF_DIGEST_MD5, DF_DIGEST_SHA256, DF_DIGEST_SHA512 } df_digest_alg_t;

#define DF_DIGEST_MAX 64
/* "sha512:" + 128 hex + NUL */
#define DF_DIGEST_STR_MAX 136

typedef struct {
    df_digest_alg_t alg;
    size_t len;                    /* bytes in value: 16, 32 or 64 */
    uint8_t value[DF_DIGEST_MAX];
} df_digest_t;

/* Parses "sha256:HEX", "sha512:HEX", "md5:HEX" (algorithm case-insensitive,
 * hex of exactly the algorithm's length).  0 or -EINVAL. */
int df_digest_parse(const char *text, df_digest_t *out);
/* "alg:hex" into out (DF_DIGEST_STR_MAX bytes is always enough). */
void df_digest_format(const df_digest_t *d, char *out, size_t cap);
bool df_digest_equal(const df_digest_t *a, const df_digest_t *b);
const char *df_digest_alg_name(df_digest_alg_t alg);

/* Incremental hasher.  new() returns NULL on ENOMEM. */
typedef struct df_hasher df_hasher_t;
df_hasher_t *df_hasher_new(df_digest_alg_t alg);
void df_hasher_update(df_hasher_t *h, const void *data, size_t len);
/* Finishes into out and resets the hasher for reuse with the same algorithm. */
void df_hasher_final(df_hasher_t *h, df_digest_t *out);
void df_hasher_free(df_hasher_t *h);

/* One-shot sha256 into out[32]. */
void df_sha256(const void *data, size_t len, uint8_t out[32]);

#endif
