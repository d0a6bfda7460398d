/*
 * The Tracker interface: the seam between the download engine and whoever
 * knows which peer holds which piece.  Two implementations: the supernode's
 * HTTP/JSON API (tracker_supernode.c) and, in decentralized mode, gossip.
 * The engine only ever calls these five operations (plus heartbeat).
 *
 * Every operation is asynchronous: a 0 return means cb runs exactly once,
 * later, from the loop; an error return means it never runs.  Request
 * structs are copied before the call returns.
 */
#ifndef DF_TRACKER_TRACKER_H
#define DF_TRACKER_TRACKER_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_PEER_ID_MAX 160

typedef struct df_tracker df_tracker_t;

typedef struct {
    const char *url;
    const char *digest;          /* "alg:hex" or NULL */
    const char *identifier;      /* or NULL */
    const char *const *filter;   /* NULL-terminated or NULL */
    const char *const *headers;  /* "K: V", NULL-terminated or NULL */
    const char *peer_ip;
    uint16_t peer_port;          /* 0 = does not upload */
    const char *hostname;
    /* TLS to the origin for the seed's fetch (Dragonfly's insecure/rootCAs):
     * skip verification, or trust these PEM certificates instead of the
     * system CAs (root_ca_len bytes, at most DF_TRACKER_ROOT_CA_MAX). */
    bool insecure;
    const char *root_ca;
    size_t root_ca_len;
} df_register_req_t;

#define DF_TRACKER_ROOT_CA_MAX (32u * 1024u)

typedef struct {
    int status;                  /* 0, or the error (DF_EORIGIN: see origin_status) */
    int origin_status;           /* HTTP status of the origin when status == DF_EORIGIN */
    char message[256];           /* the tracker's error text */
    char task_id[65];
    char peer_id[DF_PEER_ID_MAX];
    uint64_t length;
    uint64_t piece_size;
    uint32_t piece_count;
    char digest[160];            /* whole-file digest when known, else "" */
    char local_ip[64];           /* our address as seen on the connection to the tracker */
} df_register_res_t;

typedef struct {
    uint32_t piece;
    char src[DF_PEER_ID_MAX];
    bool ok;
} df_piece_result_t;

typedef struct {
    const char *task_id;
    const char *peer_id;
    const df_piece_result_t *results;
    size_t nresults;
    uint32_t running;
    uint32_t want;
} df_pull_req_t;

typedef enum { DF_PULL_ASSIGN, DF_PULL_WAIT, DF_PULL_DONE, DF_PULL_ERROR, DF_PULL_LOST } df_pull_state_t;

typedef struct {
    uint32_t piece;
    uint64_t offset, length;
    uint8_t sha256[32];
    bool has_sha256;
    char src_id[DF_PEER_ID_MAX];
    char src_ip[64];
    uint16_t src_port;
    bool src_is_seed;
} df_assignment_t;

#define DF_PULL_MAX_ASSIGN 64

typedef struct {
    int status;                  /* 0, or a transport error (tracker unreachable) */
    df_pull_state_t state;       /* LOST: the tracker forgot the task or peer; register again */
    uint32_t wait_ms;
    char digest[160];            /* DONE: whole-file digest */
    char message[256];           /* ERROR */
    df_assignment_t assign[DF_PULL_MAX_ASSIGN];
    size_t nassign;
    /* The tracker saw other members announce new pieces of the task lately
     * (gossip mode): the swarm is moving even when this download is not,
     * so it waits longer before it calls P2P stalled (download.c). */
    bool swarm_moving;
} df_pull_res_t;

typedef void (*df_register_cb)(const df_register_res_t *res, void *arg);
typedef void (*df_pull_cb)(const df_pull_res_t *res, void *arg);
typedef void (*df_tracker_done_cb)(int status, void *arg);

/* What a source did wrong, for ReportError: served bytes that failed the
 * digest, refused the piece (404), failed mid-transfer, or was merely too
 * slow for this download's endgame (SLOW: no fault of the source, which
 * may be busy serving others; the tracker only stops offering it to this
 * requester for a while, see DESIGN.md "Endgame"). */
typedef enum { DF_REPORT_DIGEST, DF_REPORT_MISSING, DF_REPORT_IO, DF_REPORT_SLOW } df_report_kind_t;

typedef struct df_tracker_ops {
    int (*register_task)(df_tracker_t *t, const df_register_req_t *req, df_register_cb cb, void *arg);
    int (*pull_piece)(df_tracker_t *t, const df_pull_req_t *req, df_pull_cb cb, void *arg);
    /* Fire-and-forget operations: cb may be NULL. */
    int (*report_piece)(df_tracker_t *t, const df_pull_req_t *req, df_tracker_done_cb cb, void *arg);
    int (*service_down)(df_tracker_t *t, const char *peer_id, const char *task_id, df_tracker_done_cb cb,
                        void *arg);
    int (*report_error)(df_tracker_t *t, const char *task_id, const char *peer_id, const char *src_id,
                        uint32_t piece, df_report_kind_t kind, df_tracker_done_cb cb, void *arg);
    int (*heartbeat)(df_tracker_t *t, const char *peer_id, df_tracker_done_cb cb, void *arg);
    /* Cancels pending callbacks and frees. */
    void (*free)(df_tracker_t *t);
} df_tracker_ops_t;

struct df_tracker {
    const df_tracker_ops_t *ops;
};

#define df_tracker_register(t, req, cb, arg) ((t)->ops->register_task((t), (req), (cb), (arg)))
#define df_tracker_pull(t, req, cb, arg) ((t)->ops->pull_piece((t), (req), (cb), (arg)))

/* The supernode implementation.  nodes: "host:port" strings tried in order
 * for Register; later calls for a task go to the node that registered it
 * (one node per tracker instance at a time: a new Register may move it). */
struct df_http;
int df_tracker_supernode_new(struct df_http *http, const char *const *nodes, df_tracker_t **out);

/* The gossip implementation (decentralized mode, tracker_gossip.c): a
 * Serf-compatible gossip node on `listen`, availability spread by user
 * events, one owner per task (rendezvous hashing over alive members) that
 * reads the origin through a seed download it starts with start_seed. */
struct event_base;
struct df_store;
typedef struct {
    struct event_base *base;     /* borrowed */
    struct df_http *http;        /* borrowed: HEAD requests to origins */
    struct df_store *store;      /* borrowed: what this host holds */
    const char *name;            /* member name (unique in the cluster), copied */
    const char *listen;          /* gossip "HOST:PORT" (UDP and TCP), copied */
    const char *advertise_ip;    /* gossip and upload address others use, copied */
    uint16_t upload_port;        /* advertised in the member tag "dfly-port" */
    const char *const *join;     /* "host:port" to join, NULL-terminated or NULL; copied */
    const char *encrypt;         /* base64 AES key (16/24/32 bytes) or NULL */
    const char *dns_name;        /* "name:port" (A/AAAA) or an SRV name, resolved every
                                  * dns_interval_ms and joined (net/dns_watch.h), or NULL */
    const char *dns_server;      /* "IP[:PORT]" DNS server, or NULL = resolv.conf */
    uint64_t dns_interval_ms;    /* 0 = 30 s */
    /* Hand a request's origin headers to a task's owner (POST /peer/seed)
     * in clear when there is no key (encrypt NULL): an explicit opt-in. */
    bool forward_headers;
    /* Starts an engine download of url for task_id that writes only to the
     * store (this node owns the task), sending headers ("K: V" lines,
     * NULL-terminated, or NULL; borrowed for the call) to the origin.  It
     * must call df_tracker_gossip_seed_done when that download ends.  0 or
     * -errno. */
    int (*start_seed)(void *arg, const char *url, const char *task_id, const char *const *headers);
    void *seed_arg;
} df_tracker_gossip_opts_t;

/* 0, -EINVAL (bad option), -errno (bind).  Free with ops->free. */
int df_tracker_gossip_new(const df_tracker_gossip_opts_t *o, df_tracker_t **out);
/* The seed download of task_id ended (status 0 or its error). */
void df_tracker_gossip_seed_done(df_tracker_t *t, const char *task_id, int status);
/* A `POST /peer/seed` body (tracker/seed_forward.h) received on the upload
 * port: a member hands us the origin headers of its request for a task we
 * own, for our seed.  Returns the HTTP status to answer (204 taken; 400,
 * 403 not sealed with our key / not accepted in clear, 409, 413, 421, 503),
 * with a reason in msg (cap bytes) that holds no header value. */
int df_tracker_gossip_seed_request(df_tracker_t *t, const void *body, size_t len, char *msg, size_t cap);

typedef struct {
    uint64_t members_alive, members_leaving, members_left, members_failed;
    uint64_t events_sent, events_received, events_dropped; /* dfly events (dropped: undecodable
                                                            * received or unsendable) */
    uint64_t sync_sent;          /* SYNC queries sent by starving downloads */
    uint64_t sync_answered;      /* SYNC queries this node answered */
    uint64_t probe_failures;     /* members declared failed */
    uint64_t tasks_owned;        /* tasks this node owns now (rendezvous) */
    uint64_t seeds_started;      /* seed downloads started as owner */
    uint32_t health_score;       /* Lifeguard awareness */
    uint64_t dns_rounds, dns_failures; /* DNS discovery rounds, of which found nothing */
    uint64_t dns_joins;          /* addresses found by DNS and joined (not yet members) */
    uint64_t rx_wrong_key, rx_unencrypted, rx_encrypted, rx_refused; /* df_gossip_rx_errors_t */
    uint64_t rx_malformed, bcast_pruned; /* df_gossip_rx_errors_t: malformed, pruned */
} df_tracker_gossip_stats_t;
void df_tracker_gossip_stats(df_tracker_t *t, df_tracker_gossip_stats_t *out);

#endif
