/*
 * memberlist 0.2.2 packet and stream encryption (security.go, keyring.go):
 * AES-GCM with 16/24/32-byte keys, a random 12-byte nonce per message, no
 * key id on the wire (the receiver tries every key), no label (labels came
 * with memberlist 0.3.0).
 *
 *   UDP datagram:  u8 vsn | nonce[12] | ciphertext | tag[16]        (no AAD)
 *   TCP stream:    u8 10 | u32 BE len | u8 vsn | nonce | ct | tag    (AAD = the 5 header bytes)
 *
 * vsn 1 (what every Serf sender uses): the plaintext as is.  vsn 0 (legacy,
 * memberlist protocol 1): PKCS#7-padded to 16 bytes before sealing.  Both
 * are accepted on receive; only vsn 1 is produced.
 */
#ifndef DF_GOSSIP_CRYPTO_H
#define DF_GOSSIP_CRYPTO_H
#ifndef DF_INTERNAL
#error "lib/gossip/gossip_crypto.h is private to libdfly"
#endif

#include "core/core.h"

#include <stddef.h>
#include <stdint.h>

#define DF_GOSSIP_KEYS_MAX 16       /* keys in one keyring (Serf has no limit; a handful is normal) */
#define DF_GOSSIP_NONCE_SIZE 12
#define DF_GOSSIP_TAG_SIZE 16
/* Bytes encryption adds to a UDP message (vsn 1): senders take it off the
 * 1400-byte gossip budget. */
#define DF_GOSSIP_ENCRYPT_OVERHEAD (1 + DF_GOSSIP_NONCE_SIZE + DF_GOSSIP_TAG_SIZE)
#define DF_GOSSIP_STREAM_HDR_SIZE 5 /* u8 10 + u32 length */
/* maxPushStateBytes: the largest encrypted stream memberlist reads. */
#define DF_GOSSIP_STREAM_MAX (20u * 1024 * 1024)

/* A keyring: keys[0] is the primary (the one used to encrypt).  Plain data,
 * no handle: copy it freely.  Wipe with df_gossip_keyring_clear(). */
typedef struct {
    uint8_t keys[DF_GOSSIP_KEYS_MAX][32];
    uint8_t lens[DF_GOSSIP_KEYS_MAX];
    size_t n;
} df_gossip_keyring_t;

void df_gossip_keyring_init(df_gossip_keyring_t *kr);
/* Zeroes the key material. */
void df_gossip_keyring_clear(df_gossip_keyring_t *kr);
/* Adds a copy of key (16, 24 or 32 bytes), as primary when primary is true
 * (the old primary stays as a decrypt-only key).  Adding a key already in
 * the ring only moves it when primary.  0, -EINVAL (bad length), DF_ETOOBIG
 * (ring full). */
int df_gossip_keyring_add(df_gossip_keyring_t *kr, const uint8_t *key, size_t len, bool primary);

/* Parses a key as `serf agent -encrypt=` and `serf keys -install=` take it:
 * standard base64 with padding (Go's base64.StdEncoding; CR and LF are
 * skipped like Go does) decoding to 16, 24 or 32 bytes.  out holds 32 bytes.
 * 0 or -EINVAL. */
int df_gossip_key_parse_base64(const char *text, uint8_t out[32], size_t *len_out);

/* Encrypts plain[0..len) with the primary key in the UDP layout (vsn 1,
 * random nonce, no AAD), writing len + DF_GOSSIP_ENCRYPT_OVERHEAD bytes into
 * out (outcap bytes).  0, -ENOKEY (empty ring), DF_ETOOBIG (outcap too
 * small), -EIO (OpenSSL failure). */
int df_gossip_encrypt_packet(const df_gossip_keyring_t *kr, const uint8_t *plain, size_t len,
                             uint8_t *out, size_t outcap, size_t *outlen);

/* Decrypts a UDP datagram with each key of the ring in turn.  The plaintext
 * (at most len - 29 bytes) goes to out (outcap bytes).  0; DF_EPROTO (empty,
 * unknown version, too short, bad vsn-0 padding); -EBADMSG (no key
 * authenticates it: memberlist drops such packets); DF_ETOOBIG; -ENOKEY. */
int df_gossip_decrypt_packet(const df_gossip_keyring_t *kr, const uint8_t *msg, size_t len,
                             uint8_t *out, size_t outcap, size_t *outlen);

/* Builds the TCP encrypted envelope of plain (the possibly compressed
 * stream message) and appends it to out.  0, -ENOKEY, DF_ETOOBIG (over
 * DF_GOSSIP_STREAM_MAX or out's cap; out->len is then restored), -ENOMEM,
 * -EIO. */
int df_gossip_encrypt_stream(const df_gossip_keyring_t *kr, const uint8_t *plain, size_t len,
                             df_buf_t *out);

/* Incremental parse of a TCP encrypted envelope in msg[0..len) (msg[0] must
 * be 10).  Returns DF_EAGAIN while fewer than the 5 header bytes plus the
 * announced length are there (*need then says how many bytes the envelope
 * has in total once the header is in, else 5).  Once complete, decrypts
 * into out (appended) and sets *need to the bytes consumed.  DF_EPROTO,
 * DF_ETOOBIG (announced length over DF_GOSSIP_STREAM_MAX), -EBADMSG,
 * -ENOKEY, -ENOMEM. */
int df_gossip_decrypt_stream(const df_gossip_keyring_t *kr, const uint8_t *msg, size_t len,
                             size_t *need, df_buf_t *out);

/* Test hook: df_gossip_encrypt_packet with a caller-chosen nonce and
 * version (0 or 1) and optional AAD, so unit tests can compare bytes. */
int df__gossip_seal(const uint8_t *key, size_t keylen, uint8_t vsn, const uint8_t nonce[12],
                    const uint8_t *aad, size_t aadlen, const uint8_t *plain, size_t len,
                    uint8_t *out, size_t outcap, size_t *outlen);

#endif
