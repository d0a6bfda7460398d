/*
 * Request classification for the registry mirror: an ordered list of rules
 * "ACTION METHOD REGEX"; the first rule whose method and regex match the
 * request path (without query) decides whether the request goes through P2P
 * or straight to the registry.  No match means direct.  Also the small
 * parsers of what a registry request carries: the blob digest in a path and
 * containerd's ?ns=<host> query parameter, the per-host upstream settings,
 * an HTTP proxy request's absolute-form target.  Pure functions, no I/O;
 * fuzzed by tests/fuzz/fuzz_proxy_rules.c and fuzz_proxy_uri.c.
 */
#ifndef DF_PROXY_RULES_H
#define DF_PROXY_RULES_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The default rule list: blob GETs through P2P, everything else direct. */
#define DF_PROXY_DEFAULT_RULE "p2p GET ^/v2/.+/blobs/sha256:[0-9a-f]{64}$"

#define DF_PROXY_RULES_MAX 64
#define DF_PROXY_RULE_TEXT_MAX 1024
/* Longest path a rule is matched against; longer paths are direct. */
#define DF_PROXY_PATH_MAX 4096

typedef enum { DF_PROXY_DIRECT = 0, DF_PROXY_P2P } df_proxy_action_t;

typedef struct df_proxy_rules df_proxy_rules_t;

/* Compiles specs (NULL-terminated; NULL or empty = the default list).  Each
 * spec is "ACTION METHOD REGEX": ACTION "p2p" or "direct", METHOD one of
 * GET HEAD POST PUT PATCH DELETE OPTIONS or "*", then one or more spaces and
 * a POSIX extended regex (the rest of the spec, spaces included).  p2p is
 * allowed with GET only (the P2P path serves downloads).  On error err
 * (errcap bytes) names the bad spec.  0, -EINVAL, DF_ETOOBIG or -ENOMEM.
 * *out is owned by the caller (df_proxy_rules_free). */
int df_proxy_rules_new(const char *const *specs, df_proxy_rules_t **out, char *err, size_t errcap);
void df_proxy_rules_free(df_proxy_rules_t *rules);

/* The action for method (as sent, e.g. "GET") and path (no query; need not
 * be NUL-terminated: pathlen bytes).  Paths longer than DF_PROXY_PATH_MAX
 * or containing a NUL byte are direct. */
df_proxy_action_t df_proxy_rules_match(const df_proxy_rules_t *rules, const char *method, const char *path,
                                       size_t pathlen);

/* When path ends in "/blobs/sha256:<64 lower-case hex>", writes
 * "sha256:<hex>" into out (cap >= 72) and returns true. */
bool df_proxy_blob_digest(const char *path, size_t pathlen, char *out, size_t cap);

/* True for "host", "host:port", "[v6]" or "[v6]:port" (letters, digits,
 * '.', '-'; port 1..65535): what may follow "https://" in a URL without
 * changing its meaning (no '@', '/', '?', '#', blanks). */
bool df_proxy_valid_host(const char *h);

/* Looks for the query parameter ns in query (the part after '?', qlen
 * bytes, not NUL-terminated).  Returns 0 and writes the percent-decoded
 * value into host (hostcap bytes) when it is a valid "host", "host:port",
 * "[v6]" or "[v6]:port" (letters, digits, '.', '-'; port 1..65535), and the
 * query without the ns parameter into rest (restcap bytes, "" when nothing
 * is left).  -ENOENT when there is no ns parameter (rest then holds the
 * whole query), -EINVAL when its value is not a valid host, -ENAMETOOLONG
 * when a buffer is too small. */
int df_proxy_parse_ns(const char *query, size_t qlen, char *host, size_t hostcap, char *rest, size_t restcap);

/* An HTTP proxy request's absolute-form target (RFC 9112 3.2.2)
 * "http://HOST[:PORT][/PATH][?QUERY]" (scheme in any case; no userinfo, no
 * fragment, no spaces or control bytes; len bytes, need not be
 * NUL-terminated).  Writes "http://host[:port]" (lower case) into base
 * (basecap bytes) and the origin-form target ("/PATH?QUERY", "/" when the
 * path is empty) into target (targetcap bytes).  0, -EINVAL, or
 * -ENAMETOOLONG when a buffer is too small.  Only http: https goes through
 * CONNECT. */
int df_proxy_parse_absolute(const char *uri, size_t len, char *base, size_t basecap, char *target,
                            size_t targetcap);

/* A CONNECT request's authority-form target "HOST:PORT" or "[V6]:PORT"
 * (len bytes, need not be NUL-terminated; the port is mandatory, 1..65535,
 * at most 5 digits).  HOST is letters, digits, '.' and '-', neither starting
 * nor ending with '.' or '-', at most 253 bytes; V6 is hex digits, ':' and
 * '.'.  Nothing else is accepted (no userinfo, path, blanks or control
 * bytes), so host may go into a URL, a DNS query or a certificate's
 * subjectAltName as is.  Writes host in lower case, without brackets, into
 * host (hostcap bytes) and the port.  0, -EINVAL, or -ENAMETOOLONG when host
 * does not fit. */
int df_proxy_parse_connect(const char *target, size_t len, char *host, size_t hostcap, uint16_t *port);

/* "host:port", or "[host]:port" when host holds a ':' (IPv6), into out (cap
 * bytes); with omit_443 the port is left out when it is 443 (an https URL's
 * authority).  0 or -ENAMETOOLONG. */
int df_proxy_format_authority(const char *host, uint16_t port, bool omit_443, char *out, size_t cap);

/* One registry a ?ns= may name, with how to reach it. */
typedef struct {
    char authority[256];        /* "host[:port]", lower case */
    bool http;                  /* plain HTTP instead of https */
    bool insecure;              /* do not verify its certificate */
    char ca_file[1024];         /* extra CA bundle, "" = system CAs */
} df_proxy_host_t;

/* Parses "HOST[:PORT] [http|https] [insecure] [ca=FILE]" (options separated
 * by one or more spaces, each at most once; FILE without spaces, at most
 * 1023 bytes).  0, or -EINVAL with err (errcap bytes) naming the problem. */
int df_proxy_host_parse(const char *spec, df_proxy_host_t *out, char *err, size_t errcap);

#endif
