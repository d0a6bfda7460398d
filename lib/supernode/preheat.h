/*
 * Preheat: the supernode fetches content into its cache before anybody asks
 * for it, in the shape of Dragonfly 1.x's /preheats API (docs/API.md), which
 * Harbor's preheat policies call.  A preheat of type "image" names a manifest
 * URL; the supernode resolves it (an index to every platform's manifest, or
 * to the one platform asked for), then seeds the config and every layer as
 * the P2P tasks the registry mirror registers for them (df_registry_blob_task),
 * so the first pull through any dfdaemon reads no layer from the registry.  A
 * preheat of type "file" seeds one URL as a Register for it would.
 *
 * States: WAITING (queued: at most DF_SN_PREHEAT_RUNNING_MAX run at once),
 * RUNNING (resolving manifests, then seeding), SUCCESS (every seed complete),
 * FAILED (errorMsg names the URL and the registry's or origin's answer).
 * The table holds at most DF_SN_PREHEATS_MAX preheats; finished ones are
 * forgotten after DF_SN_PREHEAT_KEEP_MS, or, oldest first, when the table is
 * full.
 *
 * Everything runs on the supernode's loop.  The module owns its requests and
 * entries; it keeps task ids, never task pointers, and reads task states
 * from the swarm when polled (df_sn_preheats_kick after seed events, and
 * once a second from the sweep).
 */
#ifndef DF_SUPERNODE_PREHEAT_H
#define DF_SUPERNODE_PREHEAT_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "net/http_client.h"
#include "supernode/swarm.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define DF_SN_PREHEATS_MAX 1024u
#define DF_SN_PREHEAT_RUNNING_MAX 8u
#define DF_SN_PREHEAT_BLOBS_MAX 4096u          /* blobs of one preheat, all platforms */
#define DF_SN_PREHEAT_MANIFESTS_MAX 64u        /* manifests fetched for one preheat */
#define DF_SN_PREHEAT_SEEDS_MAX 16u            /* seeds one preheat runs at once */
#define DF_SN_PREHEAT_KEEP_MS (24u * 3600u * 1000u)
#define DF_SN_PREHEAT_TIMEOUT_MS (30u * 60u * 1000u)

typedef enum {
    DF_SN_PREHEAT_WAITING = 0,
    DF_SN_PREHEAT_RUNNING,
    DF_SN_PREHEAT_SUCCESS,
    DF_SN_PREHEAT_FAILED,
    DF_SN_PREHEAT_NSTATES
} df_sn_preheat_state_t;

/* "WAITING", "RUNNING", "SUCCESS", "FAILED". */
const char *df_sn_preheat_state_name(df_sn_preheat_state_t s);

/* A decoded POST /preheats body.  Owns its strings (df_sn_preheat_req_clear). */
typedef struct {
    bool image;                /* type "image" (else "file") */
    char *url;
    char **filter;             /* query keys ("a&b" or ["a","b"]) */
    size_t nfilter;
    char *identifier;          /* or NULL */
    char **headers;            /* "K: V" lines */
    size_t nheaders;
    char *platform;            /* "os/arch[/variant]" or NULL: every platform */
    bool insecure;             /* TLS to the registry/origin, as a Register's "insecure" */
    char *root_ca;             /* "rootCAs" decoded (PEM), or NULL */
    size_t root_ca_len;
} df_sn_preheat_req_t;

/* Decodes a POST /preheats body: {"type", "url", "filter"?, "identifier"?,
 * "headers"? {name: value}, "platform"?, "insecure"?, "rootCAs"?}; other
 * keys (Harbor's "image", "tag") are ignored.  An image url must be a manifest URL
 * (df_registry_parse_manifest_url).  0, or DF_EPROTO with err, or -ENOMEM. */
int df_sn_decode_preheat(const char *body, size_t len, df_sn_preheat_req_t *out, char *err, size_t errcap);
void df_sn_preheat_req_clear(df_sn_preheat_req_t *r);

/* Starts (or joins) the seed of the task that the download request r
 * describes (its url, filter, digest and identifier make the task id, as
 * for a Register), fetching with these origin headers and TLS settings
 * (root_ca: PEM bytes or NULL, borrowed); writes the id.  0, or < 0 with a
 * message in err. */
typedef int (*df_sn_preheat_seed_cb)(const df_download_req_t *r, char *const *headers, size_t nheaders,
                                     bool insecure, const char *root_ca, size_t root_ca_len, char id[65],
                                     char *err, size_t errcap, void *arg);

typedef struct {
    struct event_base *base;   /* borrowed */
    df_http_t *http;           /* borrowed */
    df_sn_swarm_t *swarm;      /* borrowed: task states */
    df_sn_preheat_seed_cb seed;
    void *arg;
    uint64_t timeout_ms;       /* a preheat still running after this fails; 0 = default */
} df_sn_preheat_opts_t;

typedef struct df_sn_preheats df_sn_preheats_t;

int df_sn_preheats_new(const df_sn_preheat_opts_t *opts, df_sn_preheats_t **out);
/* Cancels every request (no callbacks); NULL is fine. */
void df_sn_preheats_free(df_sn_preheats_t *ph);

/* Creates a preheat from r (its contents are moved out; r is cleared) and
 * writes its id (hex sha256 of type, filtered url, identifier, platform).
 * A preheat with the same id that is still waiting or running is joined
 * (returns 1); a finished one is started again (returns 0).  -ENOSPC when
 * the table is full of unfinished preheats, -ENOMEM. */
int df_sn_preheat_create(df_sn_preheats_t *ph, df_sn_preheat_req_t *r, char id[65]);

/* The preheat as JSON ({"ID", "status", "startTime", "finishTime",
 * "errorMsg", ...}), new reference, or NULL when unknown. */
json_t *df_sn_preheat_json(df_sn_preheats_t *ph, const char *id);
/* Every preheat, oldest first: a JSON array (new reference). */
json_t *df_sn_preheats_json(df_sn_preheats_t *ph);
/* Forgets a preheat (a running one stops; its seeds go on).  0 or -ENOENT. */
int df_sn_preheat_delete(df_sn_preheats_t *ph, const char *id);

/* Re-reads the states of the seeds of running preheats soon (coalesced,
 * from the loop). */
void df_sn_preheats_kick(df_sn_preheats_t *ph);

/* How many preheats are in each state (for metrics). */
void df_sn_preheats_count(const df_sn_preheats_t *ph, uint64_t out[DF_SN_PREHEAT_NSTATES]);

#endif
