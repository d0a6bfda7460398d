/*
 * dfdaemon control protocol: the line codec shared by the server and the
 * client in daemon_ctl.c, and by result_json.c.  Kept free of I/O so the
 * unit tests and the fuzzer can drive it directly.
 *
 * Wire format (one Unix stream connection per download):
 *   client -> daemon  one line: a JSON object with the df_download_req_t
 *                     fields (url, output, digest, identifier, filter[],
 *                     headers[], local_limit_bps, timeout_ms, pattern,
 *                     no_back_source, call_system), then nothing more;
 *   daemon -> client  zero or more {"progress":{"length":N,"done":N}} lines,
 *                     then exactly one {"result":{...}} line, then close.
 * Every line is at most DF_CTL_LINE_MAX bytes, newline excluded.
 */
#ifndef DF_ENGINE_DAEMON_CTL_H
#define DF_ENGINE_DAEMON_CTL_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "core/core.h"

#include <jansson.h>

#define DF_CTL_LINE_MAX (64u * 1024u) /* bytes per line, both directions */
#define DF_CTL_LIST_MAX 64u           /* entries in filter[] and in headers[] */

/* A decoded request.  req's strings and arrays point into storage owned by
 * this struct (the parsed JSON document and two pointer arrays); release it
 * with df__ctl_request_free().  */
typedef struct {
    df_download_req_t req;
    json_t *doc;
    const char **filter;  /* NULL-terminated, or NULL */
    const char **headers; /* NULL-terminated, or NULL */
} df__ctl_request_t;

/* Decodes one request line (len bytes, no newline needed; need not be
 * NUL-terminated).  0 with *out filled, or
 *   DF_ETOOBIG  len > DF_CTL_LINE_MAX, or a list longer than DF_CTL_LIST_MAX;
 *   DF_EPROTO   not a JSON object, a field of the wrong type, a missing url
 *               or output, an unknown pattern, a header without "K: V" shape
 *               or with CR/LF in it;
 *   -EINVAL     output is not an absolute path.
 * On error *out is left empty (safe to free) and err (errcap bytes) says why. */
int df__ctl_request_decode(const char *line, size_t len, df__ctl_request_t *out, char *err,
                           size_t errcap);
void df__ctl_request_free(df__ctl_request_t *r);

/* Encodes req as one request line without the newline; malloc'ed, length in
 * *len_out.  0, -ENOMEM, -EINVAL (no url/output) or DF_ETOOBIG. */
int df__ctl_request_encode(const df_download_req_t *req, char **out, size_t *len_out);

/* The result object as a JSON value (the same keys as df_download_result_json,
 * plus "code": the numeric status, so a client gets the exact error code
 * back).  New reference, NULL on ENOMEM. */
json_t *df__download_result_to_json(const df_download_result_t *res);

/* Fills *res from a result object made by df__download_result_to_json (or by
 * df_download_result_json).  Missing keys are left zero; a missing "code"
 * on an "error" status becomes DF_ETASK.  0 or DF_EPROTO (wrong types). */
int df__download_result_from_json(const json_t *obj, df_download_result_t *res);

/* Pattern names "p2p" / "cdn" / "source".  0 or -EINVAL. */
int df__pattern_parse(const char *name, df_pattern_t *out);
const char *df__pattern_name(df_pattern_t p);

#endif
