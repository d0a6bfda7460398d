/*
 * Internals of the registry mirror shared by its files:
 *
 *   proxy.c      df_proxy_*: setup, request intake, exchange lifetime
 *   rules.c      classification (rules.h)
 *   upstream.c   which registry a request goes to, and its URL
 *   headers.c    header filtering both ways (hop-by-hop headers dropped)
 *   tls_sniff.c  closes connections that start with a TLS ClientHello
 *   tunnel.c     CONNECT: plain TCP tunnels, or TLS interception into the
 *                decrypting listener (HTTPS proxy use)
 *   mint.c       leaf certificates for intercepted hosts, from a CA
 *   direct.c     relaying a request to the registry and its answer back
 *   blob.c       the P2P path: access check, download, streaming reply
 *   resume.c     the rest of a P2P reply from the registry when P2P fails
 *
 * One exchange (xch_t) per client request, alive while its client side is
 * (the reply completes or the connection goes away).  A P2P download is a
 * flight (flight_t), shared: concurrent requests for the same blob on this
 * daemon attach to the one flight in progress instead of each starting a
 * download.  A flight is counted: one reference while its download runs
 * (dropped in the done callback: the engine has no cancel, so the flight
 * outlives its clients until then) and one per attached exchange.  A flight
 * leaves the table when its download ends; later requests start a new one,
 * which the peer then serves from its store.  Work that reacts to callbacks
 * (more bytes verified, the socket drained) runs from the exchange's own
 * "pump" event, never inside curl's or evhttp's callbacks.
 */
#ifndef DF_PROXY_PROXY_INTERNAL_H
#define DF_PROXY_PROXY_INTERNAL_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "core/core.h"
#include "net/http_client.h"
#include "proxy/rules.h"

#include <event2/event.h>
#include <event2/http.h>

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <regex.h>

/* Reply bytes queued in one client connection before we stop reading from
 * the source (the P2P file or the registry): the per-connection bound. */
#define DF_PROXY_CONN_BUFFER (1u << 20)
/* One pread from a P2P download's file. */
#define DF_PROXY_READ_CHUNK (256u * 1024u)
/* Request bodies (the mirror is for pulls; pushes of small blobs pass). */
#define DF_PROXY_MAX_BODY (1u << 20)
/* Upstream base URL "scheme://authority". */
#define DF_PROXY_URL_MAX 512

typedef struct xch xch_t;
typedef struct flight flight_t;
typedef struct tunnel tunnel_t;
typedef struct df__mint df__mint_t;

/* CONNECT tunnels at once; beyond, 503. */
#define DF_PROXY_TUNNELS_MAX 1024
/* Bytes queued towards one side of a tunnel before reading from the other
 * stops: the per-tunnel bound, each way. */
#define DF_PROXY_TUNNEL_BUFFER (256u * 1024u)
/* Leaf certificates cached (one per intercepted host). */
#define DF_PROXY_MINT_CACHE 128
/* --hijack-host regexes. */
#define DF_PROXY_HIJACK_MAX 64

/* Key of a flight: the blob digest, or the URL for a p2p rule without one. */
#define DF_PROXY_FLIGHT_KEY_MAX 2048
/* Shareable flights at once; beyond, a request gets a download nobody
 * else joins (correct, just not shared). */
#define DF_PROXY_FLIGHTS_MAX 1024

/* One P2P download and what is known of it, read by its exchanges. */
struct flight {
    df_proxy_t *px;
    flight_t *prev, *next;      /* in px->flights while listed */
    bool listed;                /* in px->flights: exactly while the download runs */
    bool shareable;             /* found by later requests for the same key */
    int refs;
    char key[DF_PROXY_FLIGHT_KEY_MAX];
    bool running;
    int status;                 /* valid once !running */
    uint64_t length;            /* 0 while unknown */
    uint64_t contiguous;        /* verified readable prefix */
    int fd;                     /* dup of the download's data fd, or -1 */
    xch_t *waiters;             /* attached exchanges (x->fnext) */
};

struct df_proxy {
    struct event_base *base;
    df_peer_t *peer;
    df_http_t *http;            /* our own client for direct requests and access checks */
    df_proxy_rules_t *rules;
    char registry[DF_PROXY_URL_MAX]; /* default upstream, no trailing '/' */
    char registry_authority[256];    /* its host[:port], lower case, to match ?ns= */
    char *registry_ca;
    bool registry_insecure;
    bool http_proxy;            /* absolute-form targets are served (HTTP proxy use) */
    df_proxy_host_t *hosts;     /* per-host upstream settings for ?ns= (config "hosts") */
    size_t nhosts;
    xch_t *xchs;                /* live exchanges */
    flight_t *flights;          /* P2P downloads in progress, by key */
    size_t nflights;
    df_proxy_stats_t stats;

    /* CONNECT (with http_proxy) */
    regex_t *hijack;            /* host:port patterns to intercept */
    size_t nhijack;
    df__mint_t *mint;           /* the CA; NULL: every CONNECT is a plain tunnel */
    struct evhttp *mitm_http;   /* the decrypting listener (127.0.0.1, ephemeral port) */
    struct sockaddr_in mitm_addr;
    struct evdns_base *dns;     /* resolves tunnel targets without blocking the loop */
    tunnel_t *tunnels;
    size_t ntunnels;
};

typedef enum {
    XS_CHECK,                   /* P2P: HEAD to the registry with the client's credentials */
    XS_P2P,                     /* P2P: download running, streaming as it grows */
    XS_DIRECT,                  /* relaying to/from the registry */
    XS_RESUME,                  /* P2P failed mid-reply: the rest from the registry */
    XS_DONE                     /* reply finished or abandoned */
} xch_state_t;

struct xch {
    df_proxy_t *px;
    xch_t *prev, *next;
    int refs;
    xch_state_t state;
    struct evhttp_request *req; /* NULL once the client side is over */
    struct evhttp_connection *evcon;
    struct event *pump;
    bool head;                  /* the client's method is HEAD */
    bool replying;              /* reply line and headers sent */
    bool writing;               /* a chunk was queued; its written callback is due */

    /* upstream */
    char *url;                  /* the registry URL of this request */
    char **hdrs;                /* request header lines for the registry, NULL-terminated */
    bool insecure;
    const char *ca_file;        /* px->registry_ca, a host entry's, or NULL */
    df_http_req_t *up;          /* direct relay or access check in flight */
    bool up_paused;             /* the relay is paused for backpressure */

    /* P2P */
    char digest[80];            /* "sha256:<hex>" from the path, or "" */
    char auth[8192];            /* "Authorization: ..." line or "" */
    flight_t *fl;               /* the download we read, referenced; NULL before/after */
    xch_t *fprev, *fnext;       /* in fl->waiters */
    uint64_t pos, end;          /* next byte to send, end of the reply's range */
    const char *range;          /* the client's Range header (owned by req) */
    char range_buf[128];

    /* resume (resume.c) */
    struct df_hasher *rs_hash;  /* sha256 of the blob's bytes so far */
    uint64_t rs_hashed;         /* prefix bytes hashed back from the P2P file */
    uint64_t rs_len;            /* the blob's length */
    bool rs_started;            /* the Range request was started */
    bool rs_held;               /* the blob's last byte is in rs_last */
    unsigned char rs_last;
};

/* proxy.c */
void df__proxy_xch_unref(xch_t *x);
void df__proxy_kick(xch_t *x);          /* run the pump soon */
/* The client's connection's queued output in bytes (0 without one). */
size_t df__proxy_queued(const xch_t *x);
/* Ends the client side by closing the connection (after a partial reply). */
void df__proxy_abort(xch_t *x);
/* evhttp's written callback for reply chunks (arg: the exchange): the
 * connection's output drained, so the pump runs again. */
void df__proxy_on_written(struct evhttp_connection *evcon, void *arg);
/* Queues len bytes relayed from the registry as a reply chunk (counted in
 * direct_bytes; its written callback kicks the pump).  0 or -ENOMEM. */
int df__proxy_send_chunk(xch_t *x, const void *data, size_t len);
/* A short text error reply. */
void df__proxy_send_error(xch_t *x, int code, const char *text);

/* upstream.c: chooses the registry for a request target ("/v2/...?..."),
 * sets x->url, x->insecure, x->ca_file.  -EINVAL (bad target or ns),
 * -ENOMEM. */
int df__proxy_upstream_url(df_proxy_t *px, xch_t *x, const char *target);
/* The same for an HTTP proxy request's absolute-form target: x->url is the
 * target as given (normalized), with the system's TLS defaults; origin
 * (cap bytes) receives its origin-form part for classification.  -EINVAL,
 * -ENOMEM. */
int df__proxy_absolute_url(xch_t *x, const char *uri, char *origin, size_t cap);

/* The same for a request read from an intercepted CONNECT to authority
 * ("host[:port]"): x->url is https://authority + target, with the TLS
 * settings of a host table entry for authority, else the system's. */
int df__proxy_https_url(df_proxy_t *px, xch_t *x, const char *authority, const char *target);

/* headers.c */
/* The client's headers to pass to the registry (NULL-terminated "K: V"
 * lines, malloc'ed), without hop-by-hop ones and without those named in
 * skip (NULL-terminated names, may be NULL).  NULL on ENOMEM. */
char **df__proxy_request_headers(struct evhttp_request *req, const char *const *skip);
void df__proxy_free_lines(char **lines);
/* Copies the registry's response headers into the reply, without hop-by-hop
 * ones and Transfer-Encoding. */
int df__proxy_copy_response_headers(df_http_req_t *up, struct evkeyvalq *out);

/* tls_sniff.c */
struct bufferevent *df__proxy_tls_sniff_bevcb(struct event_base *base, void *arg);
/* Removes the hook from a connection made by the callback above (a CONNECT
 * tunnel carries TLS on purpose). */
void df__proxy_tls_sniff_off(struct bufferevent *bev);

/* tunnel.c */
/* Serves a CONNECT request of the front evhttp (px->http_proxy on).  The
 * request is answered (an error) or taken over: either way the caller is
 * done with it. */
void df__proxy_connect(df_proxy_t *px, struct evhttp_request *req);
/* The https authority ("host[:port]") of the intercepted CONNECT whose
 * connection to the decrypting listener has local port peer_port, or NULL.
 * Valid until the next return to the event loop. */
const char *df__proxy_tunnel_authority(const df_proxy_t *px, uint16_t peer_port);
/* Ends every tunnel (df_proxy_free). */
void df__proxy_tunnels_free(df_proxy_t *px);

/* mint.c */
/* Loads the CA (PEM certificate and key; the certificate must be a CA and
 * match the key).  0, DF_ECONFIG with err (errcap bytes), or -ENOMEM.
 * *out is the caller's (df__mint_free). */
int df__mint_new(const char *cert_file, const char *key_file, df__mint_t **out, char *err, size_t errcap);
void df__mint_free(df__mint_t *m);
/* A new server-side SSL presenting a leaf for host (a name or an IP
 * literal as parsed by df_proxy_parse_connect), cached per host.  The
 * caller owns the SSL.  NULL on failure. */
SSL *df__mint_ssl(df__mint_t *m, const char *host);
/* Leaves in the cache (tests). */
size_t df__mint_cached(const df__mint_t *m);

/* direct.c: relays x's request to x->url.  0 or -errno (nothing started). */
int df__proxy_direct_start(xch_t *x);
void df__proxy_direct_pump(xch_t *x);

/* blob.c: the P2P path for x (x->url set). */
void df__proxy_blob_start(xch_t *x);
void df__proxy_blob_pump(xch_t *x);
/* resume.c: whether x's reply (P2P, started, its flight failed) can be
 * finished from the registry; then resume_start takes it over (why: the
 * failure, for the log).  Otherwise the caller cuts the connection. */
bool df__proxy_resume_possible(const xch_t *x);
void df__proxy_resume_start(xch_t *x, const char *why);
void df__proxy_resume_pump(xch_t *x);
/* Detaches x from its flight (if any), dropping its reference. */
void df__proxy_blob_detach(xch_t *x);
/* Frees every flight whatever its references (df_proxy_free: the peer is
 * about to cancel the downloads without calling back). */
void df__proxy_flights_free(df_proxy_t *px);

#endif
