/*
 * dfly — peer-to-peer file distribution.  The public API of libdfly.
 *
 * The three programs (supernode, dfget, dfdaemon) are thin layers over what
 * this header declares.  Conventions, everywhere:
 *   - functions return 0 on success or a negative code: -errno, or one of the
 *     DF_E* project codes below; df_strerror() names every one;
 *   - long-lived objects are opaque handles made by *_new() and released by
 *     *_free(), which accepts NULL;
 *   - the library is driven by the caller's libevent event_base; nothing here
 *     starts a thread of its own unless its comment says so.
 */
#ifndef DFLY_DFLY_H
#define DFLY_DFLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/* ------------------------------------------------------------------ errors */

/* Project error codes, below every errno value.  X(name, value, text). */
#define DF_ERRNO_MAP(X)                                                       \
    X(DF_EPROTO, -1000, "malformed message")                                  \
    X(DF_ETOOBIG, -1001, "message exceeds its size limit")                    \
    X(DF_EDIGEST, -1002, "digest mismatch")                                   \
    X(DF_EORIGIN, -1003, "origin error")                                      \
    X(DF_ETRACKER, -1004, "tracker unreachable or refused the request")       \
    X(DF_ESTALLED, -1005, "download stalled")                                 \
    X(DF_ETASK, -1006, "task failed")                                         \
    X(DF_ETIMEOUT, -1007, "timed out")                                        \
    X(DF_ECONFIG, -1008, "invalid configuration")                             \
    X(DF_ECANCELED, -1009, "canceled")                                        \
    X(DF_EAGAIN, -1010, "try again")

enum {
#define DF_X_(name, value, text) name = value,
    DF_ERRNO_MAP(DF_X_)
#undef DF_X_
};

/* Text for a 0 / -errno / DF_E* code.  Never NULL; static storage. */
const char *df_strerror(int err);

/* Library version, "MAJOR.MINOR.PATCH". */
const char *df_version(void);

/* ----------------------------------------------------------------- logging */

typedef enum { DF_LOG_ERROR = 0, DF_LOG_WARN, DF_LOG_INFO, DF_LOG_DEBUG } df_log_level_t;

/* Process-wide log threshold and prefix (program name).  Logs go to stderr. */
void df_log_setup(const char *prog, df_log_level_t level);

/* --------------------------------------------------------- value parsing */

/* "4M", "512K", "1G", "100" (bytes; K/M/G are powers of 1024, an optional
 * trailing "B" or "iB" is accepted).  0 or -EINVAL. */
int df_parse_size(const char *text, uint64_t *out);

/* "30s", "5m", "2h", "1500ms", "10" (seconds).  Result in milliseconds. */
int df_parse_duration_ms(const char *text, uint64_t *out);

/* "host:port" or "[v6]:port"; host must be non-empty.  host is copied into
 * host_out (hostcap bytes).  0 or -EINVAL. */
int df_parse_hostport(const char *text, char *host_out, size_t hostcap, uint16_t *port_out);

/* A supernode list "host[:port][,host[:port]...]" (the --node flag and the
 * node key of dfget and dfdaemon).  A host without a port gets
 * DF_NODE_DEFAULT_PORT; an IPv6 address is written "[v6]" or "[v6]:port".
 * Port 0, empty entries, an unbracketed host containing ':' and more than
 * DF_NODE_LIST_MAX entries are -EINVAL.  On success returns the number of
 * entries (>= 1) and sets *out to a NULL-terminated array of "host:port"
 * strings (as df_peer_config_t.nodes wants), owned by the caller and
 * released with df_node_list_free().  On error *out is untouched and nothing
 * is allocated.  -EINVAL or -ENOMEM. */
#define DF_NODE_DEFAULT_PORT 8002
#define DF_NODE_LIST_MAX 64
int df_parse_node_list(const char *text, char ***out);
/* Frees what df_parse_node_list() returned.  NULL is fine. */
void df_node_list_free(char **list);

/* "error", "warn", "info" or "debug" (any case) -> level.  0 or -EINVAL. */
int df_parse_log_level(const char *text, df_log_level_t *out);

/* The default work home of dfget and dfdaemon: "$HOME/.dfly", or
 * "/root/.dfly" when HOME is unset or empty.  0 or -ENAMETOOLONG (out,
 * cap bytes, then holds a truncated path). */
int df_default_home(char *out, size_t cap);

/* mkdir -p: creates path and its missing parents with mode (existing ones
 * are left as they are); trailing slashes are ignored.  0 or -errno. */
int df_mkdir_p(const char *path, unsigned int mode);

/* Checks a digest "sha256:HEX", "sha512:HEX" or "md5:HEX" (algorithm and hex
 * in any case, exactly the algorithm's number of hex digits) and writes its
 * canonical lower-case form into out (cap bytes; DF_DIGEST_TEXT_MAX always
 * suffices).  The same check df_peer_download() applies to req->digest.
 * 0, -EINVAL, or -ENAMETOOLONG when cap is too small. */
#define DF_DIGEST_TEXT_MAX 136
int df_digest_normalize(const char *text, char *out, size_t cap);

/* True when line is a header "Name: value" that may be passed to an origin:
 * a non-empty name of visible ASCII characters without spaces, a ':', and no
 * CR or LF anywhere (they would smuggle extra headers into the request). */
bool df_header_line_ok(const char *line);

/* ------------------------------------------------------------ config files */

/* One entry of a YAML config file, flattened: nested mapping keys joined
 * with '.' ("a: {b: 1}" -> key "a.b"), a sequence of scalars joined with ','
 * into one value, a scalar as written ("" for an empty value).  Strings are
 * valid during the call only.  line is 1-based.  Return 0 to go on, < 0 to
 * stop the load with that code. */
typedef int (*df_config_entry_cb)(const char *key, const char *value, unsigned line, void *arg);

/* Reads path (at most 1 MiB) as a YAML mapping and calls cb for each entry,
 * in file order.  The programs name their keys like their long flags and
 * feed them through the same code as the command line, so flags and file
 * cannot disagree on syntax.  Aliases, complex keys and multiple documents
 * are refused.  0, -errno (reading the file), the callback's code, or
 * DF_ECONFIG / DF_ETOOBIG with a message in err (errcap bytes). */
int df_config_load_flat(const char *path, df_config_entry_cb cb, void *arg, char *err, size_t errcap);

/* --------------------------------------------------------------- supernode */

typedef struct df_supernode df_supernode_t;

typedef struct {
    const char *listen_host;    /* default "0.0.0.0" */
    uint16_t listen_port;       /* default 8002; 0 = ephemeral */
    const char *advertise_ip;   /* address peers use for seed pieces; default: listen host,
                                 * or 127.0.0.1 when listening on 0.0.0.0 */
    const char *data_dir;       /* seed cache directory (created) */
    uint64_t cache_limit_bytes; /* seed cache budget; 0 = unlimited */
    uint64_t peer_timeout_ms;   /* no contact for this long -> peer removed; default 60 s */
    uint64_t origin_timeout_ms; /* origin stalls longer than this fail the seed; default 30 s */
    uint32_t peer_upload_slots; /* concurrent uploads a peer is given; default 4 */
    uint32_t seed_upload_slots; /* concurrent pieces the seed serves; default 8 */
    uint32_t seed_piece_limit;  /* the seed does not send a piece that this many uploading
                                 * peers hold or fetch (they will spread it); 0 = the seed
                                 * serves whatever the policy picks; default 1 */
    uint32_t batch_pieces;      /* max pieces in one PullPiece answer; default 8 */
    uint64_t piece_size;        /* force a piece size; 0 = by file length */
    uint32_t hash_threads;      /* 1: the seed's SHA-256 (per piece and of the whole file)
                                 * runs on a thread, off the event loop; 0 = on the loop as
                                 * the origin's bytes stream in; default 1 */
} df_supernode_config_t;

/* Fills every field with its default. */
void df_supernode_config_init(df_supernode_config_t *cfg);

/* Loads a YAML file over cfg (keys as the long flags: listen, data-dir,
 * advertise-ip, cache-limit, peer-timeout, ...).  Strings point into storage
 * owned by the library for the life of the process.  0 or -errno/DF_ECONFIG,
 * with a message in err (errcap bytes). */
int df_supernode_config_load(df_supernode_config_t *cfg, const char *path, char *err, size_t errcap);

/* Starts serving on base.  cfg is copied.  The bound port is available from
 * df_supernode_port().  0 or -errno. */
int df_supernode_new(struct event_base *base, const df_supernode_config_t *cfg, df_supernode_t **out);
uint16_t df_supernode_port(const df_supernode_t *sn);
void df_supernode_free(df_supernode_t *sn);

/* -------------------------------------------------------------------- peer */

/* A peer: the piece store, the upload server, the downloads it runs and the
 * host-wide rate limit.  dfdaemon holds one for its lifetime; dfget without a
 * daemon makes one for a single download. */
typedef struct df_peer df_peer_t;

typedef struct {
    const char *home_dir;       /* piece store and control socket live here */
    const char *upload_host;    /* upload server bind address; default "0.0.0.0" */
    uint16_t upload_port;       /* 0 = ephemeral */
    const char *advertise_ip;   /* address other peers use; default: the local address
                                 * of the connection to the supernode */
    const char **nodes;         /* supernodes "host:port", tried in order; NULL-terminated */
    uint64_t total_limit_bps;   /* host-wide download rate limit; 0 = none */
    uint64_t upload_limit_bps;  /* host-wide upload rate limit; 0 = none */
    uint64_t cache_limit_bytes; /* store budget; 0 = unlimited */
    uint64_t cache_max_age_ms;  /* finished tasks unused this long are evicted; 0 = never */
    uint32_t fetch_parallel;    /* pieces in flight per download; default 8 */
    uint32_t hash_threads;      /* threads that verify received pieces (SHA-256 read back
                                 * from the page cache) off the event loop; 0 = hash on
                                 * the loop as bytes arrive; default 1 */
    uint64_t stall_timeout_ms;  /* no progress this long -> P2P stalled; default 20 s */
    bool serve;                 /* run the upload server (pattern p2p); default true */
    bool ephemeral;             /* the owner deletes home_dir when the peer is freed (an
                                 * in-process dfget): no store metadata is written, and a
                                 * download writes its pieces straight into a temporary
                                 * file next to its output, renamed there once verified
                                 * (no copy).  default false */
    /* Decentralized mode: set gossip_listen to run a Serf-compatible gossip
     * node instead of talking to supernodes (nodes is then ignored).  The
     * cluster decides per task an owner that reads the origin; peers fetch
     * from it and from each other (docs/DESIGN.md, "Gossip mode"). */
    const char *gossip_listen;  /* "HOST:PORT" (UDP and TCP); NULL = supernode mode */
    const char *const *gossip_join; /* "host:port" seeds, NULL-terminated or NULL */
    const char *gossip_encrypt; /* base64 AES key (16, 24 or 32 bytes) or NULL */
    const char *gossip_dns;     /* "name:port" (A/AAAA) or an SRV name ("_serf._tcp.example"),
                                 * resolved every gossip_dns_interval_ms and joined, or NULL */
    const char *gossip_dns_server; /* "IP[:PORT]": the DNS server to ask; NULL = resolv.conf */
    uint64_t gossip_dns_interval_ms; /* 0 = 30 s */
    const char *gossip_name;    /* member name; default "<hostname>-<upload port>" */
    /* A download's origin headers (credentials) reach the task's owner
     * point to point (POST /peer/seed), sealed with gossip_encrypt's key.
     * Without a key they go only when this is true, in clear, and the
     * owner takes them only when it is true there too; otherwise a node
     * whose request has headers reads the origin itself.  default false */
    bool gossip_forward_headers;
} df_peer_config_t;

void df_peer_config_init(df_peer_config_t *cfg);

int df_peer_new(struct event_base *base, const df_peer_config_t *cfg, df_peer_t **out);
uint16_t df_peer_upload_port(const df_peer_t *peer);
/* Tells the tracker this peer stops serving (ServiceDown for every task),
 * then calls cb once: when the tracker answered or after 1 s, whichever
 * comes first.  -ENOENT when there is no tracker or nothing was registered
 * (cb is then not called).  Use before df_peer_free() on a clean exit. */
int df_peer_leave(df_peer_t *peer, void (*cb)(void *arg), void *arg);
void df_peer_free(df_peer_t *peer);

/* What a peer did since df_peer_new().  Counters only grow; downloads_active,
 * store_bytes and store_tasks are the present values. */
typedef struct {
    uint32_t downloads_active;     /* started, not yet finished */
    uint64_t downloads_completed;  /* finished with status 0 */
    uint64_t downloads_failed;     /* finished with an error (not counted: downloads
                                    * canceled by df_peer_free) */
    uint64_t bytes_from_peers;     /* verified piece bytes fetched from other peers */
    uint64_t bytes_from_supernode; /* verified piece bytes fetched from the seed */
    uint64_t bytes_from_origin;    /* bytes written from the origin (back-source) */
    uint64_t back_source;          /* downloads that fell back to the origin */
    uint64_t pieces_verified;      /* pieces whose sha256 matched (from peers, the
                                    * seed or the origin) */
    uint64_t digest_failures;      /* pieces that failed verification, plus downloads
                                    * that ended on a digest mismatch */
    uint64_t upload_requests;      /* piece requests this peer's upload server answered */
    uint64_t upload_errors;        /* of which answered 4xx/5xx */
    uint64_t upload_bytes;         /* piece bytes served to other peers */
    uint64_t store_bytes;          /* piece store size (every task's full length) */
    uint32_t store_tasks;          /* tasks in the piece store */
    uint64_t store_evicted;        /* tasks evicted by the store's GC (budget or age) */
} df_peer_stats_t;

/* Fills *out.  Byte counters grow while transfers run, so they are current
 * between two scrapes; the sums over a download equal the bytes_from_* of
 * its df_download_result_t. */
void df_peer_stats(const df_peer_t *peer, df_peer_stats_t *out);

/* Gossip mode only (df_peer_config_t.gossip_listen): the node's view.
 * -ENOENT in supernode mode. */
typedef struct {
    uint64_t members_alive, members_leaving, members_left, members_failed;
    uint64_t events_sent, events_received, events_dropped;
    uint64_t probe_failures;     /* members this node saw declared failed */
    uint64_t tasks_owned;        /* tasks this node owns now (reads their origin) */
    uint64_t seeds_started;
    uint32_t health_score;       /* Lifeguard local health, 0 = healthy */
    uint64_t dns_rounds, dns_failures; /* gossip_dns resolutions, of which found nothing */
    uint64_t dns_joins;          /* addresses DNS found that were not members yet, joined */
    /* Messages dropped for encryption (a key mismatch: such a node never
     * joins): encrypted with a key we lack, plain while we encrypt,
     * encrypted while we have no key; and our messages a remote refused. */
    uint64_t rx_wrong_key, rx_unencrypted, rx_encrypted, rx_refused;
    uint64_t rx_malformed;  /* gossip packets/streams dropped because they did not decode */
    uint64_t bcast_pruned;  /* broadcasts pruned from a full queue before their last retransmit */
    uint64_t sync_sent;          /* repair queries sent by starving downloads */
    uint64_t sync_answered;      /* repair queries this node answered */
} df_peer_gossip_stats_t;
int df_peer_gossip_stats(const df_peer_t *peer, df_peer_gossip_stats_t *out);

/* The peer's statistics in the Prometheus text format (version 0.0.4),
 * metric names dfly_dfdaemon_* (docs/METRICS.md), for dfdaemon's GET
 * /metrics.  *out is malloc'ed and NUL-terminated (*len_out bytes without
 * the NUL), owned by the caller (free()).  0 or -ENOMEM / DF_ETOOBIG. */
#define DF_PEER_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
int df_peer_metrics_render(const df_peer_t *peer, char **out, size_t *len_out);

typedef enum { DF_PATTERN_P2P = 0, DF_PATTERN_CDN, DF_PATTERN_SOURCE } df_pattern_t;

typedef struct {
    const char *url;
    const char *output;          /* final path; written by atomic rename only.  NULL with
                                  * stream: the caller reads the bytes through progress_cb's
                                  * fd and nothing is written anywhere else */
    const char *digest;          /* "sha256:HEX" / "sha512:HEX" / "md5:HEX" or NULL */
    const char *identifier;      /* task id discriminator or NULL */
    const char **filter;         /* query keys dropped from the task URL; NULL-terminated or NULL */
    const char **headers;        /* "K: V" lines passed to the origin; NULL-terminated or NULL */
    uint64_t local_limit_bps;    /* this download's rate limit; 0 = none */
    uint64_t timeout_ms;         /* whole download; 0 = none */
    df_pattern_t pattern;
    bool no_back_source;         /* --notbs */
    bool stream;                 /* progress_cb at every growth of the readable prefix, not
                                  * every 100 ms: for serving the bytes while they arrive */
    bool durable;                /* fsync the output before it appears (--fsync): it then
                                  * survives a power loss too; costs the disk's write-back */
    const char *call_system;     /* caller name for logs */
    /* TLS to the origin: skip certificate verification, or trust this CA
     * bundle (a PEM file of at most 32 KiB, read once when the download
     * starts; NULL = the system CAs).  Used for this download's own origin
     * requests (back-source) and also sent with Register ("insecure", and
     * the file's contents as "rootCAs"): the supernode's seed uses them when
     * this Register creates the task (a task keeps its first registrant's
     * TLS settings).  Not carried over the dfdaemon control socket (dfget
     * has no such flags). */
    bool insecure;
    const char *ca_file;
} df_download_req_t;

/* The outcome of one download.  Strings are owned by the result. */
typedef struct {
    int status;                  /* 0 ok, else the error */
    char task_id[65];
    uint64_t length;
    double seconds;
    uint64_t bytes_from_peers;
    uint64_t bytes_from_supernode; /* from the task's seed: the supernode's, or in gossip mode
                                    * the task's owner (on the owner itself: what its seed
                                    * download put in the store while this one waited) */
    uint64_t bytes_from_origin;
    bool back_source;            /* fell back to the origin */
    char reason[256];            /* why it fell back, or why it failed; "" if neither */
    char digest[160];            /* verified whole-file digest "sha256:HEX" when known */
} df_download_result_t;

typedef struct {
    uint64_t length;             /* 0 while unknown */
    uint64_t done;               /* bytes verified so far */
    uint64_t contiguous;         /* bytes [0, contiguous) are in place and readable at fd:
                                  * verified piece by piece in P2P; straight from the origin
                                  * (checked only at the end) when there is no task shape */
    int fd;                      /* the data file; valid during the callback only (dup it
                                  * to read later); -1 before the first byte */
    const char *task_id;         /* "" until registered; valid during the callback */
} df_progress_t;

typedef void (*df_download_progress_cb)(const df_progress_t *p, void *arg);
typedef void (*df_download_done_cb)(const df_download_result_t *res, void *arg);

/* Starts a download.  req is copied.  On 0, done_cb is called exactly once,
 * later, from the event loop; on error it is never called. */
int df_peer_download(df_peer_t *peer, const df_download_req_t *req, df_download_progress_cb progress_cb,
                     df_download_done_cb done_cb, void *arg);

/* One line of JSON describing res (no newline), malloc'ed; NULL on ENOMEM.
 * Keys: status ("ok"|"error"), error (when failed), task_id, length, seconds,
 * bytes_from_peers, bytes_from_supernode, bytes_from_origin, back_source,
 * reason, digest. */
char *df_download_result_json(const df_download_result_t *res);

/* --------------------------------------------------------- registry mirror */

/* dfdaemon's registry mirror: an HTTP front door (Docker Registry HTTP API
 * v2) whose blob downloads go through the peer's P2P downloads and whose
 * other requests are proxied straight to the upstream registry.  It serves
 * the requests of an evhttp the caller owns (dfdaemon's --listen port). */
typedef struct df_proxy df_proxy_t;
struct evhttp;
struct evhttp_request;

#define DF_PROXY_DEFAULT_REGISTRY "https://registry-1.docker.io"
#define DF_PROXY_HOSTS_MAX 64

typedef struct {
    const char *registry;        /* upstream "http[s]://host[:port]" (no path); default
                                  * DF_PROXY_DEFAULT_REGISTRY */
    const char *registry_ca;     /* extra CA bundle for the registry's TLS; NULL = system */
    bool registry_insecure;      /* do not verify the registry's TLS certificate */
    const char *const *hosts;    /* registries a ?ns= may name, with their own scheme and TLS:
                                  * "HOST[:PORT] [http] [insecure] [ca=FILE]", NULL-terminated,
                                  * at most DF_PROXY_HOSTS_MAX; a ?ns= not listed here (nor the
                                  * --registry authority) means https with the system CAs */
    bool http_proxy;             /* also serve as an HTTP proxy (HTTP_PROXY=...): absolute-form
                                  * "http://host/..." requests go through the same rules to that
                                  * host.  Off by default: it lets any client that reaches the
                                  * port make requests to any host from this one */
    const char *const *hijack_hosts; /* with http_proxy: CONNECTs whose "host:port" matches one of
                                  * these POSIX extended regexes (NULL-terminated, at most 64)
                                  * are TLS-terminated with a leaf minted from hijack_ca_* and
                                  * their requests served like the mirror's (blobs by P2P);
                                  * any other CONNECT is a plain TCP tunnel */
    const char *hijack_ca_cert;  /* PEM CA certificate clients trust; NULL: no interception */
    const char *hijack_ca_key;   /* its PEM private key */
    const char *const *rules;    /* "p2p GET REGEX" / "direct METHOD|* REGEX", first match
                                  * wins, no match = direct; NULL-terminated; NULL = the
                                  * default "p2p GET ^/v2/.+/blobs/sha256:[0-9a-f]{64}$" */
} df_proxy_config_t;

void df_proxy_config_init(df_proxy_config_t *cfg);

/* Makes a mirror running blob downloads on peer (not owned; it must outlive
 * the proxy, and df_peer_free() must come after df_proxy_free()).  cfg is
 * copied.  0, -EINVAL / DF_ECONFIG (bad registry URL or rule, message in
 * err, errcap bytes) or -ENOMEM. */
int df_proxy_new(struct event_base *base, df_peer_t *peer, const df_proxy_config_t *cfg, df_proxy_t **out,
                 char *err, size_t errcap);

/* Prepares http (before any socket is bound) for registry clients: a TLS
 * ClientHello on this plain-HTTP port is answered by closing the
 * connection at once (Docker, skopeo and podman try TLS first and fall back
 * to plain HTTP only when the TLS attempt fails), and request bodies are
 * capped at 1 MiB (the mirror serves pulls).  Replaces http's bufferevent
 * callback. */
void df_proxy_attach(df_proxy_t *proxy, struct evhttp *http);

/* Serves one request of the attached evhttp (the caller keeps its own
 * paths, e.g. /metrics, and hands everything else here).  The proxy then
 * owns the reply.  A CONNECT (the caller must allow EVHTTP_REQ_CONNECT) is
 * 405 without http_proxy; with it the proxy takes the connection over (a
 * tunnel, or interception for hijack_hosts). */
void df_proxy_handle(df_proxy_t *proxy, struct evhttp_request *req);

/* What the mirror did since df_proxy_new(). */
typedef struct {
    uint64_t requests;           /* requests handled */
    uint64_t p2p;                /* blob requests served from a P2P download */
    uint64_t direct;             /* requests proxied to the registry (including fallbacks) */
    uint64_t fallbacks;          /* P2P downloads that failed before the first byte: proxied */
    uint64_t denied;             /* blob requests the registry refused for the client (the
                                  * access check) */
    uint64_t aborted;            /* replies cut after their first byte (P2P failure) */
    uint64_t resumed;            /* replies whose P2P download failed after their first byte,
                                  * finished from the registry (a Range request) and
                                  * verified whole */
    uint64_t ranges;             /* P2P replies to a Range request (206: a client resuming) */
    uint64_t p2p_bytes;          /* body bytes sent from P2P downloads */
    uint64_t direct_bytes;       /* body bytes relayed from the registry */
    uint64_t proxied;            /* absolute-form (HTTP proxy) requests, whatever their path */
    uint64_t shared;             /* blob requests that joined a P2P download already running
                                  * for the same blob on this daemon (also counted in p2p when
                                  * served) */
    uint64_t tunnels;            /* CONNECTs tunnelled untouched */
    uint64_t intercepted;        /* CONNECTs TLS-terminated (--hijack-host) */
    uint64_t intercepted_requests; /* requests read from intercepted connections */
} df_proxy_stats_t;

void df_proxy_stats(const df_proxy_t *proxy, df_proxy_stats_t *out);

/* Stops every reply in flight (their connections are closed) and frees. */
void df_proxy_free(df_proxy_t *proxy);

/* ------------------------------------------------------- dfdaemon control */

/* dfdaemon's local control socket: a Unix stream socket (mode 0600) at
 * <home>/dfdaemon.sock over which dfget hands a download to the running
 * daemon and receives progress and the result. */
typedef struct df_daemon df_daemon_t;

/* Serves the control socket at socket_path on base, running downloads on
 * peer (not owned).  A stale socket file is replaced; a live one (another
 * daemon answering, or holding <socket_path>.lock) is -EADDRINUSE; a file
 * there that is not a socket is -EEXIST.  The engine writes each download
 * to a private name next to the requested output, renamed into place only
 * if the client is still connected when it ends (a client that left does
 * not see the file appear later). */
int df_daemon_new(struct event_base *base, df_peer_t *peer, const char *socket_path, df_daemon_t **out);
/* Closes the socket and every client connection and releases every
 * session, including those whose download still runs: call it after
 * df_peer_free() (which cancels downloads without calling back), or when no
 * download runs. */
void df_daemon_free(df_daemon_t *d);

/* Client side, blocking: runs req through the daemon at socket_path.
 * -ENOENT / -ECONNREFUSED when no daemon runs there (the caller then runs
 * the engine in-process); otherwise 0 with *res filled (res->status says
 * whether the download succeeded), or -errno when the daemon vanished
 * mid-download (DF_ETIMEOUT when it stayed silent past req->timeout_ms plus a
 * minute).  progress_cb may be NULL.  Signals do not interrupt the call
 * (EINTR is retried); a client that must stop exits or closes the process,
 * which the daemon sees as the client leaving.  Every line read is capped
 * (64 KiB); req->output must be absolute. */
int df_daemon_download(const char *socket_path, const df_download_req_t *req,
                       df_download_progress_cb progress_cb, void *arg, df_download_result_t *res);

#ifdef __cplusplus
}
#endif
#endif
