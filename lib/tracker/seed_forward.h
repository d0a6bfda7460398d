/*
 * Gossip mode: the body of `POST /peer/seed`, by which a node hands the
 * origin request headers of one of its downloads (credentials, typically)
 * to the task's owner, so that the owner's seed can read a private origin.
 * Point to point, never in gossip: headers do not go in events or tags.
 *
 * The body is one JSON object (parsed with jansson):
 *
 *   {"v": 1, "to": OWNER NAME, "from": SENDER NAME, "url": URL,
 *    "task_id": 64 HEX, "ts": UNIX MS, "headers": ["Name: value", ...]}
 *
 * With a cluster key it travels sealed with the keyring's primary key in
 * memberlist's packet layout (gossip_crypto.h: vsn 1 | nonce | ct | tag,
 * AES-GCM), so it is secret and authenticated: a body that no key of the
 * receiver's ring opens is refused, and one that opens came from a member.
 * "to" and "ts" keep a captured body from being replayed to another owner
 * or much later.  Without a key the JSON goes as is, which the sender only
 * does after an explicit opt-in (docs/CONFIG.md, --gossip-forward-headers).
 */
#ifndef DF_TRACKER_SEED_FORWARD_H
#define DF_TRACKER_SEED_FORWARD_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "gossip/gossip_crypto.h"

#include <stddef.h>
#include <stdint.h>

#define DF_SEEDFWD_PATH "/peer/seed"
#define DF_SEEDFWD_BODY_MAX (32u * 1024u)   /* whole body, sealed or not */
#define DF_SEEDFWD_HEADERS_MAX 32u          /* header lines */
#define DF_SEEDFWD_LINE_MAX 4096u           /* bytes per header line */
#define DF_SEEDFWD_URL_MAX 8192u
#define DF_SEEDFWD_NAME_MAX 128u
#define DF_SEEDFWD_SKEW_MS (5u * 60u * 1000u) /* "ts" accepted this far from our clock */

typedef struct {
    char to[DF_SEEDFWD_NAME_MAX + 1];
    char from[DF_SEEDFWD_NAME_MAX + 1];
    char task_id[65];
    char *url;          /* owned */
    char **headers;     /* owned, NULL-terminated (never NULL after a decode) */
    uint64_t ts_ms;
} df_seedfwd_t;

/* Builds the body.  kr: the cluster keyring (seals with its primary key),
 * or NULL to send plain JSON.  headers: "K: V" lines, NULL-terminated.
 * *out is malloc'ed (the caller frees it after wiping it: it holds the
 * headers when plain).  0, -EINVAL (a field over its cap, a bad header
 * line), DF_ETOOBIG (body over DF_SEEDFWD_BODY_MAX), -ENOMEM, -EIO. */
int df_seedfwd_encode(const df_gossip_keyring_t *kr, const char *to, const char *from, const char *url,
                      const char *task_id, const char *const *headers, uint64_t ts_ms, uint8_t **out,
                      size_t *out_len);

/* Parses a body.  kr non-NULL: the body must open with one of its keys
 * (-EBADMSG otherwise, also for plain JSON); NULL: plain JSON only.  On 0
 * *out holds owned copies (release with df_seedfwd_clear).  Errors:
 * DF_ETOOBIG, -EBADMSG (not sealed by a key we hold), DF_EPROTO (not the
 * JSON above, a field over its cap, a bad header line), -ENOMEM; err gets a
 * short reason (no header values in it). */
int df_seedfwd_decode(const df_gossip_keyring_t *kr, const uint8_t *body, size_t len, df_seedfwd_t *out,
                      char *err, size_t errcap);

/* Wipes and frees what a decode gave.  Zeroed struct or NULL is fine. */
void df_seedfwd_clear(df_seedfwd_t *r);

/* Wipes and frees a NULL-terminated string vector (headers). */
void df_seedfwd_free_strv(char **v);

#endif
