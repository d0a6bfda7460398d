/*
 * The supernode API's request bodies (docs/API.md) decoded from JSON into
 * plain structs, and the task id derivation.  No server, no I/O: the HTTP
 * layer, the unit tests and the fuzz target all call these directly.
 *
 * Every decoder takes the raw body (not necessarily NUL-terminated), checks
 * it is one JSON object whose known keys have the right types and lengths
 * (unknown keys are ignored, so newer clients can add fields), and fills
 * *out.  On failure it returns DF_EPROTO with a one-line reason in err and
 * leaves *out cleared; nothing needs freeing then.  On success the struct
 * owns heap copies of its strings: release them with the matching _clear()
 * (which also accepts a cleared or zeroed struct).
 */
#ifndef DF_SUPERNODE_API_CODEC_H
#define DF_SUPERNODE_API_CODEC_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <dfly/dfly.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hard caps on what a request may carry; anything larger is a 400. */
#define DF_SN_BODY_MAX (64u * 1024u)   /* whole body; the HTTP layer answers 413 */
#define DF_SN_URL_MAX 8192u
#define DF_SN_FILTER_MAX 64u           /* filter keys */
#define DF_SN_HEADERS_MAX 64u          /* origin headers */
#define DF_SN_HEADER_LEN_MAX 8192u     /* one "K: V" line */
#define DF_SN_IDENT_MAX 512u           /* identifier, digest text */
#define DF_SN_HOSTNAME_MAX 255u
#define DF_SN_PEER_ID_MAX 400u         /* "<hostname>-<ip>-<port>" + NUL fits */
#define DF_SN_RESULTS_MAX 1024u        /* piece results in one pull/report */

typedef struct {
    char *url;
    char **filter;             /* nfilter keys */
    size_t nfilter;
    char *digest;              /* "alg:hex" as sent (validated), or NULL */
    char *identifier;          /* or NULL */
    char **headers;            /* nheaders "K: V" lines (each has a ':') */
    size_t nheaders;
    df_pattern_t pattern;      /* default p2p */
    char *peer_ip;             /* numeric IPv4/IPv6 */
    uint16_t peer_port;        /* 0 = does not upload */
    char *peer_hostname;       /* never NULL after decode: absent or "" -> the ip */
    bool insecure;             /* TLS to the origin: do not verify (Dragonfly's "insecure") */
    char *root_ca;             /* "rootCAs" decoded and concatenated (PEM), or NULL */
    size_t root_ca_len;        /* at most DF_SN_ROOT_CA_MAX */
} df_sn_register_req_t;

#define DF_SN_ROOT_CA_MAX (32u * 1024u)

typedef struct {
    uint32_t piece;
    char *src;                 /* source peer id ("supernode" for the seed), may be "" */
    bool ok;
} df_sn_result_t;

/* Pull and Report share this shape; Report ignores running/want. */
typedef struct {
    char *task_id;             /* 64 lower-case hex */
    char *peer_id;
    df_sn_result_t *results;
    size_t nresults;
    uint32_t running;          /* default 0 */
    uint32_t want;             /* default 0 = "as many as you give" (server caps) */
    bool has_want;
} df_sn_pull_req_t;

typedef struct {
    char *peer_id;
    char *task_id;             /* NULL = every task */
} df_sn_down_req_t;

/* ReportError kinds: the source served bad bytes (digest), refused the
 * piece (missing), failed mid-transfer (io), or was merely too slow for the
 * requester's endgame (slow: no fault of the source, see swarm.h). */
typedef enum { DF_SN_ERR_DIGEST = 0, DF_SN_ERR_MISSING, DF_SN_ERR_IO, DF_SN_ERR_SLOW } df_sn_err_kind_t;

typedef struct {
    char *task_id;
    char *peer_id;
    char *src;
    uint32_t piece;
    df_sn_err_kind_t kind;
} df_sn_error_req_t;

typedef struct {
    char *peer_id;
} df_sn_heartbeat_req_t;

int df_sn_decode_register(const char *body, size_t len, df_sn_register_req_t *out, char *err,
                          size_t errcap);
/* The TLS keys of a request object (jansson's) as Register reads them:
 * "insecure" (bool) into *insecure, "rootCAs" (base64 PEMs) decoded and
 * appended to *root_ca (malloc'ed, *root_ca_len bytes, DF_SN_ROOT_CA_MAX in
 * all).  0, DF_EPROTO with err, or -ENOMEM; the caller frees *root_ca. */
struct json_t;
int df_sn_decode_tls(struct json_t *root, bool *insecure, char **root_ca, size_t *root_ca_len, char *err,
                     size_t errcap);
void df_sn_register_req_clear(df_sn_register_req_t *r);

/* /pull and /report bodies (a report's running/want are checked, unused). */
int df_sn_decode_pull(const char *body, size_t len, df_sn_pull_req_t *out, char *err, size_t errcap);
void df_sn_pull_req_clear(df_sn_pull_req_t *r);

int df_sn_decode_service_down(const char *body, size_t len, df_sn_down_req_t *out, char *err,
                              size_t errcap);
void df_sn_down_req_clear(df_sn_down_req_t *r);

int df_sn_decode_error(const char *body, size_t len, df_sn_error_req_t *out, char *err, size_t errcap);
void df_sn_error_req_clear(df_sn_error_req_t *r);

int df_sn_decode_heartbeat(const char *body, size_t len, df_sn_heartbeat_req_t *out, char *err,
                           size_t errcap);
void df_sn_heartbeat_req_clear(df_sn_heartbeat_req_t *r);

/* ---- task identity */

/* The task url: `url` with every query parameter whose key (the text before
 * '=', compared byte for byte, not percent-decoded) is one of filter[] removed.
 * Remaining parameters keep their order and spelling; empty parameters
 * ("a&&b") are dropped; the '?' goes when nothing remains; a "#fragment" is
 * kept.  With no filter keys the url is returned unchanged.  Returns a
 * malloc'ed string (caller frees) or NULL on ENOMEM. */
char *df_sn_task_url(const char *url, char *const *filter, size_t nfilter);

/* The task id: lower-case hex sha256 of "<task_url>\n<sign>", sign being the
 * digest if given, else the identifier, else "".  out: 65 bytes.  0 or
 * -ENOMEM. */
int df_sn_task_id(const char *task_url, const char *digest, const char *identifier, char out[65]);

/* "<hostname>-<ip>-<port>" into out (DF_SN_PEER_ID_MAX bytes always suffice
 * for decoded requests).  0 or -ENAMETOOLONG. */
int df_sn_peer_id(const char *hostname, const char *ip, uint16_t port, char *out, size_t cap);

/* true when s is exactly 64 lower-case hex digits. */
bool df_sn_is_task_id(const char *s);

#endif
