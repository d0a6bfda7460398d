/*
 * JSON request decoding for the supernode API, and task identity.
 *
 * Design: jansson parses the (already size-capped) body into a tree; small
 * typed getters pull each known key out with its own length cap, so a
 * decoder reads like the table in docs/API.md.  A decoder either fills the
 * whole struct or nothing (every exit path goes through `out:` which clears
 * the partial struct on error).  JSON null counts as "absent" for optional
 * keys, because several JSON encoders emit nulls for unset fields.
 */
#include "supernode/api_codec.h"

#include "core/core.h"
#include "piece/digest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses body as one JSON object.  Returns NULL (with err) otherwise. */
static json_t *parse_object(const char *body, size_t len, char *err, size_t errcap)
{
    json_error_t jerr;
    json_t *root;

    if (len > DF_SN_BODY_MAX) {
        df_errf(err, errcap, "%s", "body too large");
        return NULL;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (err && errcap)
            snprintf(err, errcap, "malformed JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        df_errf(err, errcap, "%s", "body is not a JSON object");
        return NULL;
    }
    return root;
}

/* A string member copied to *out (NULL when absent/null and optional).
 * Empty strings are kept; embedded NULs are rejected by jansson already. */
static int get_string(json_t *obj, const char *key, bool required, size_t maxlen, char **out,
                      char *err, size_t errcap)
{
    json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (!v || json_is_null(v)) {
        if (!required)
            return 0;
        df_errf(err, errcap, "missing field \"%s\"", key);
        return DF_EPROTO;
    }
    if (!json_is_string(v)) {
        df_errf(err, errcap, "field \"%s\" must be a string", key);
        return DF_EPROTO;
    }
    if (json_string_length(v) > maxlen) {
        df_errf(err, errcap, "field \"%s\" is too long", key);
        return DF_EPROTO;
    }
    *out = strdup(json_string_value(v));
    if (!*out)
        return -ENOMEM;
    return 0;
}

static int get_uint(json_t *obj, const char *key, bool required, uint64_t max, uint64_t *out,
                    bool *present, char *err, size_t errcap)
{
    json_t *v = json_object_get(obj, key);
    json_int_t i;

    if (present)
        *present = false;
    if (!v || json_is_null(v)) {
        if (!required)
            return 0;
        df_errf(err, errcap, "missing field \"%s\"", key);
        return DF_EPROTO;
    }
    if (!json_is_integer(v)) {
        df_errf(err, errcap, "field \"%s\" must be an integer", key);
        return DF_EPROTO;
    }
    i = json_integer_value(v);
    if (i < 0 || (uint64_t)i > max) {
        df_errf(err, errcap, "field \"%s\" is out of range", key);
        return DF_EPROTO;
    }
    *out = (uint64_t)i;
    if (present)
        *present = true;
    return 0;
}

/* An optional array of strings, each at most maxlen, at most maxn entries. */
static int get_string_array(json_t *obj, const char *key, size_t maxn, size_t maxlen, char ***out,
                            size_t *nout, char *err, size_t errcap)
{
    json_t *v = json_object_get(obj, key), *e;
    size_t i, n;
    char **arr;

    *out = NULL;
    *nout = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v)) {
        df_errf(err, errcap, "field \"%s\" must be an array of strings", key);
        return DF_EPROTO;
    }
    n = json_array_size(v);
    if (n > maxn) {
        df_errf(err, errcap, "field \"%s\" has too many entries", key);
        return DF_EPROTO;
    }
    if (n == 0)
        return 0;
    arr = calloc(n, sizeof(*arr));
    if (!arr)
        return -ENOMEM;
    *out = arr;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e)) {
            df_errf(err, errcap, "field \"%s\" must be an array of strings", key);
            return DF_EPROTO;
        }
        if (json_string_length(e) > maxlen) {
            df_errf(err, errcap, "an entry of \"%s\" is too long", key);
            return DF_EPROTO;
        }
        arr[i] = strdup(json_string_value(e));
        if (!arr[i])
            return -ENOMEM;
        (*nout)++;
    }
    return 0;
}

static void free_string_array(char **arr, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(arr[i]);
    free(arr);
}

/* An id-like string: printable ASCII, no spaces or quotes, so it can be
 * logged and echoed without escaping surprises. */
static bool is_token(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == '"' || *s == '\\')
            return false;
    return true;
}

bool df_sn_is_task_id(const char *s)
{
    size_t i;

    if (!s)
        return false;
    for (i = 0; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return i == 64;
}

static bool is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* ------------------------------------------------------------- register */

/* "insecure" (bool) and "rootCAs" (array of base64 strings, Go's []byte in
 * JSON): the TLS settings the seed uses for this task's origin.  The decoded
 * certificates are concatenated, capped at DF_SN_ROOT_CA_MAX in all. */
int df_sn_decode_tls(json_t *root, bool *insecure, char **root_ca, size_t *root_ca_len, char *err, size_t errcap)
{
    json_t *ins = json_object_get(root, "insecure"), *cas = json_object_get(root, "rootCAs"), *e;
    size_t i;

    if (ins && !json_is_null(ins)) {
        if (!json_is_boolean(ins)) {
            df_errf(err, errcap, "%s", "field \"insecure\" must be a boolean");
            return DF_EPROTO;
        }
        *insecure = json_is_true(ins);
    }
    if (!cas || json_is_null(cas))
        return 0;
    if (!json_is_array(cas) || json_array_size(cas) > 16) {
        df_errf(err, errcap, "%s", "field \"rootCAs\" must be an array of at most 16 base64 strings");
        return DF_EPROTO;
    }
    json_array_foreach(cas, i, e)
    {
        const char *s = json_string_value(e);
        size_t n = s ? json_string_length(e) : 0, pad = 0;
        char *grown;
        int got;

        if (!s || n % 4 != 0 || n / 4 * 3 > DF_SN_ROOT_CA_MAX - *root_ca_len) {
            df_errf(err, errcap, "%s", "field \"rootCAs\": bad base64 or more than 32 KiB");
            return DF_EPROTO;
        }
        if (n == 0)
            continue;
        grown = realloc(*root_ca, *root_ca_len + n / 4 * 3 + 2);
        if (!grown)
            return -ENOMEM;
        *root_ca = grown;
        got = EVP_DecodeBlock((unsigned char *)*root_ca + *root_ca_len, (const unsigned char *)s, (int)n);
        if (got < 0) {
            df_errf(err, errcap, "%s", "field \"rootCAs\": bad base64");
            return DF_EPROTO;
        }
        /* EVP_DecodeBlock counts the padding as zero bytes. */
        pad = (s[n - 1] == '=') + (n > 1 && s[n - 2] == '=');
        *root_ca_len += (size_t)got - pad;
        (*root_ca)[(*root_ca_len)++] = '\n'; /* certificates stay separate */
    }
    return 0;
}

void df_sn_register_req_clear(df_sn_register_req_t *r)
{
    free(r->url);
    free_string_array(r->filter, r->nfilter);
    free(r->digest);
    free(r->identifier);
    free_string_array(r->headers, r->nheaders);
    free(r->peer_ip);
    free(r->peer_hostname);
    free(r->root_ca);
    memset(r, 0, sizeof(*r));
}

int df_sn_decode_register(const char *body, size_t len, df_sn_register_req_t *out, char *err,
                          size_t errcap)
{
    json_t *root, *peer;
    char *pattern = NULL;
    uint64_t port = 0;
    df_digest_t dg;
    int rc;

    memset(out, 0, sizeof(*out));
    root = parse_object(body, len, err, errcap);
    if (!root)
        return DF_EPROTO;

    rc = get_string(root, "url", true, DF_SN_URL_MAX, &out->url, err, errcap);
    if (rc < 0)
        goto out;
    if (strncmp(out->url, "http://", 7) != 0 && strncmp(out->url, "https://", 8) != 0) {
        df_errf(err, errcap, "%s", "url must be http:// or https://");
        rc = DF_EPROTO;
        goto out;
    }
    for (const char *p = out->url; *p; p++) {
        /* Control characters and spaces would let a client smuggle header
         * lines into the origin request or break the listing JSON. */
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            df_errf(err, errcap, "%s", "url contains spaces or control characters");
            rc = DF_EPROTO;
            goto out;
        }
    }
    rc = get_string_array(root, "filter", DF_SN_FILTER_MAX, DF_SN_IDENT_MAX, &out->filter,
                          &out->nfilter, err, errcap);
    if (rc < 0)
        goto out;
    rc = get_string(root, "digest", false, DF_SN_IDENT_MAX, &out->digest, err, errcap);
    if (rc < 0)
        goto out;
    if (out->digest && out->digest[0] == '\0') {
        free(out->digest);
        out->digest = NULL;
    }
    if (out->digest && df_digest_parse(out->digest, &dg) < 0) {
        df_errf(err, errcap, "%s", "digest must be \"sha256:<hex>\", \"sha512:<hex>\" or \"md5:<hex>\"");
        rc = DF_EPROTO;
        goto out;
    }
    rc = get_string(root, "identifier", false, DF_SN_IDENT_MAX, &out->identifier, err, errcap);
    if (rc < 0)
        goto out;
    if (out->identifier && out->identifier[0] == '\0') {
        free(out->identifier);
        out->identifier = NULL;
    }
    rc = get_string_array(root, "headers", DF_SN_HEADERS_MAX, DF_SN_HEADER_LEN_MAX, &out->headers,
                          &out->nheaders, err, errcap);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < out->nheaders; i++) {
        const char *h = out->headers[i], *colon = strchr(h, ':');
        bool bad = !colon || colon == h;
        for (const char *p = h; *p && !bad; p++)
            if (*p == '\r' || *p == '\n')
                bad = true; /* header injection */
        if (bad) {
            df_errf(err, errcap, "%s", "headers must be \"Key: Value\" lines");
            rc = DF_EPROTO;
            goto out;
        }
    }
    rc = df_sn_decode_tls(root, &out->insecure, &out->root_ca, &out->root_ca_len, err, errcap);
    if (rc < 0)
        goto out;
    rc = get_string(root, "pattern", false, 16, &pattern, err, errcap);
    if (rc < 0)
        goto out;
    out->pattern = DF_PATTERN_P2P;
    if (pattern) {
        if (strcmp(pattern, "p2p") == 0)
            out->pattern = DF_PATTERN_P2P;
        else if (strcmp(pattern, "cdn") == 0)
            out->pattern = DF_PATTERN_CDN;
        else if (strcmp(pattern, "source") == 0)
            out->pattern = DF_PATTERN_SOURCE;
        else {
            df_errf(err, errcap, "%s", "pattern must be p2p, cdn or source");
            rc = DF_EPROTO;
            goto out;
        }
    }

    peer = json_object_get(root, "peer");
    if (!peer || !json_is_object(peer)) {
        df_errf(err, errcap, "%s", "missing object \"peer\"");
        rc = DF_EPROTO;
        goto out;
    }
    rc = get_string(peer, "ip", true, 64, &out->peer_ip, err, errcap);
    if (rc < 0)
        goto out;
    if (!is_ip(out->peer_ip)) {
        df_errf(err, errcap, "%s", "peer.ip must be a numeric IP address");
        rc = DF_EPROTO;
        goto out;
    }
    rc = get_uint(peer, "port", false, 65535, &port, NULL, err, errcap);
    if (rc < 0)
        goto out;
    out->peer_port = (uint16_t)port;
    rc = get_string(peer, "hostname", false, DF_SN_HOSTNAME_MAX, &out->peer_hostname, err, errcap);
    if (rc < 0)
        goto out;
    if (out->peer_hostname && out->peer_hostname[0] == '\0') {
        free(out->peer_hostname);
        out->peer_hostname = NULL;
    }
    if (out->peer_hostname && !is_token(out->peer_hostname)) {
        df_errf(err, errcap, "%s", "peer.hostname must be printable ASCII without spaces");
        rc = DF_EPROTO;
        goto out;
    }
    if (!out->peer_hostname) {
        out->peer_hostname = strdup(out->peer_ip);
        if (!out->peer_hostname) {
            rc = -ENOMEM;
            goto out;
        }
    }
    rc = 0;
out:
    free(pattern);
    json_decref(root);
    if (rc < 0)
        df_sn_register_req_clear(out);
    return rc == -ENOMEM ? rc : (rc < 0 ? DF_EPROTO : 0);
}

/* ----------------------------------------------------------------- pull */

void df_sn_pull_req_clear(df_sn_pull_req_t *r)
{
    free(r->task_id);
    free(r->peer_id);
    for (size_t i = 0; i < r->nresults; i++)
        free(r->results[i].src);
    free(r->results);
    memset(r, 0, sizeof(*r));
}

static int get_task_peer(json_t *root, bool task_required, char **task_id, char **peer_id, char *err,
                         size_t errcap)
{
    int rc = get_string(root, "peer_id", true, DF_SN_PEER_ID_MAX - 1, peer_id, err, errcap);
    if (rc < 0)
        return rc;
    if (!is_token(*peer_id) || !**peer_id) {
        df_errf(err, errcap, "%s", "peer_id must be non-empty printable ASCII");
        return DF_EPROTO;
    }
    rc = get_string(root, "task_id", task_required, 64, task_id, err, errcap);
    if (rc < 0)
        return rc;
    if (*task_id && !df_sn_is_task_id(*task_id)) {
        df_errf(err, errcap, "%s", "task_id must be 64 lower-case hex digits");
        return DF_EPROTO;
    }
    return 0;
}

int df_sn_decode_pull(const char *body, size_t len, df_sn_pull_req_t *out, char *err, size_t errcap)
{
    json_t *root, *results, *e;
    uint64_t v;
    size_t i;
    int rc;

    memset(out, 0, sizeof(*out));
    root = parse_object(body, len, err, errcap);
    if (!root)
        return DF_EPROTO;
    rc = get_task_peer(root, true, &out->task_id, &out->peer_id, err, errcap);
    if (rc < 0)
        goto out;
    v = 0;
    rc = get_uint(root, "running", false, UINT32_MAX, &v, NULL, err, errcap);
    if (rc < 0)
        goto out;
    out->running = (uint32_t)v;
    v = 0;
    rc = get_uint(root, "want", false, UINT32_MAX, &v, &out->has_want, err, errcap);
    if (rc < 0)
        goto out;
    out->want = (uint32_t)v;

    results = json_object_get(root, "results");
    if (results && !json_is_null(results)) {
        if (!json_is_array(results)) {
            df_errf(err, errcap, "%s", "field \"results\" must be an array");
            rc = DF_EPROTO;
            goto out;
        }
        if (json_array_size(results) > DF_SN_RESULTS_MAX) {
            df_errf(err, errcap, "%s", "field \"results\" has too many entries");
            rc = DF_EPROTO;
            goto out;
        }
        if (json_array_size(results) > 0) {
            out->results = calloc(json_array_size(results), sizeof(*out->results));
            if (!out->results) {
                rc = -ENOMEM;
                goto out;
            }
        }
        json_array_foreach(results, i, e)
        {
            df_sn_result_t *r = &out->results[i];
            json_t *ok;

            if (!json_is_object(e)) {
                df_errf(err, errcap, "%s", "each result must be an object");
                rc = DF_EPROTO;
                goto out;
            }
            out->nresults++;
            rc = get_uint(e, "piece", true, UINT32_MAX - 1, &v, NULL, err, errcap);
            if (rc < 0)
                goto out;
            r->piece = (uint32_t)v;
            rc = get_string(e, "src", false, DF_SN_PEER_ID_MAX - 1, &r->src, err, errcap);
            if (rc < 0)
                goto out;
            if (!r->src && !(r->src = strdup(""))) {
                rc = -ENOMEM;
                goto out;
            }
            ok = json_object_get(e, "ok");
            if (!ok || !json_is_boolean(ok)) {
                df_errf(err, errcap, "%s", "each result needs a boolean \"ok\"");
                rc = DF_EPROTO;
                goto out;
            }
            r->ok = json_is_true(ok);
        }
    }
    rc = 0;
out:
    json_decref(root);
    if (rc < 0)
        df_sn_pull_req_clear(out);
    return rc == -ENOMEM ? rc : (rc < 0 ? DF_EPROTO : 0);
}

/* ---------------------------------------------------------- service down */

void df_sn_down_req_clear(df_sn_down_req_t *r)
{
    free(r->peer_id);
    free(r->task_id);
    memset(r, 0, sizeof(*r));
}

int df_sn_decode_service_down(const char *body, size_t len, df_sn_down_req_t *out, char *err,
                              size_t errcap)
{
    json_t *root;
    int rc;

    memset(out, 0, sizeof(*out));
    root = parse_object(body, len, err, errcap);
    if (!root)
        return DF_EPROTO;
    rc = get_task_peer(root, false, &out->task_id, &out->peer_id, err, errcap);
    json_decref(root);
    if (rc < 0) {
        df_sn_down_req_clear(out);
        return rc == -ENOMEM ? rc : DF_EPROTO;
    }
    return 0;
}

/* ---------------------------------------------------------------- error */

void df_sn_error_req_clear(df_sn_error_req_t *r)
{
    free(r->task_id);
    free(r->peer_id);
    free(r->src);
    memset(r, 0, sizeof(*r));
}

int df_sn_decode_error(const char *body, size_t len, df_sn_error_req_t *out, char *err, size_t errcap)
{
    json_t *root;
    char *kind = NULL;
    uint64_t v = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    root = parse_object(body, len, err, errcap);
    if (!root)
        return DF_EPROTO;
    rc = get_task_peer(root, true, &out->task_id, &out->peer_id, err, errcap);
    if (rc < 0)
        goto out;
    rc = get_string(root, "src", true, DF_SN_PEER_ID_MAX - 1, &out->src, err, errcap);
    if (rc < 0)
        goto out;
    rc = get_uint(root, "piece", true, UINT32_MAX - 1, &v, NULL, err, errcap);
    if (rc < 0)
        goto out;
    out->piece = (uint32_t)v;
    rc = get_string(root, "kind", true, 16, &kind, err, errcap);
    if (rc < 0)
        goto out;
    if (strcmp(kind, "digest") == 0)
        out->kind = DF_SN_ERR_DIGEST;
    else if (strcmp(kind, "missing") == 0)
        out->kind = DF_SN_ERR_MISSING;
    else if (strcmp(kind, "io") == 0)
        out->kind = DF_SN_ERR_IO;
    else if (strcmp(kind, "slow") == 0)
        out->kind = DF_SN_ERR_SLOW;
    else {
        df_errf(err, errcap, "%s", "kind must be digest, missing, io or slow");
        rc = DF_EPROTO;
        goto out;
    }
    rc = 0;
out:
    free(kind);
    json_decref(root);
    if (rc < 0)
        df_sn_error_req_clear(out);
    return rc == -ENOMEM ? rc : (rc < 0 ? DF_EPROTO : 0);
}

/* ------------------------------------------------------------ heartbeat */

void df_sn_heartbeat_req_clear(df_sn_heartbeat_req_t *r)
{
    free(r->peer_id);
    memset(r, 0, sizeof(*r));
}

int df_sn_decode_heartbeat(const char *body, size_t len, df_sn_heartbeat_req_t *out, char *err,
                           size_t errcap)
{
    json_t *root;
    char *task = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    root = parse_object(body, len, err, errcap);
    if (!root)
        return DF_EPROTO;
    rc = get_task_peer(root, false, &task, &out->peer_id, err, errcap);
    free(task);
    json_decref(root);
    if (rc < 0) {
        df_sn_heartbeat_req_clear(out);
        return rc == -ENOMEM ? rc : DF_EPROTO;
    }
    return 0;
}

/* --------------------------------------------------------- task identity */

static bool filtered(const char *param, size_t len, char *const *filter, size_t nfilter)
{
    const char *eq = memchr(param, '=', len);
    size_t klen = eq ? (size_t)(eq - param) : len;

    for (size_t i = 0; i < nfilter; i++)
        if (strlen(filter[i]) == klen && memcmp(filter[i], param, klen) == 0)
            return true;
    return false;
}

char *df_sn_task_url(const char *url, char *const *filter, size_t nfilter)
{
    const char *q, *frag, *p, *end;
    df_buf_t b;
    bool first = true;

    q = strchr(url, '?');
    frag = strchr(url, '#');
    if (nfilter == 0 || !q || (frag && frag < q))
        return strdup(url);
    end = frag ? frag : url + strlen(url);

    /* The output is never longer than the input. */
    df_buf_init(&b, strlen(url) + 1);
    if (df_buf_append(&b, url, (size_t)(q - url)) < 0)
        goto fail;
    for (p = q + 1; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        size_t n = amp ? (size_t)(amp - p) : (size_t)(end - p);

        if (n > 0 && !filtered(p, n, filter, nfilter)) {
            if (df_buf_append(&b, first ? "?" : "&", 1) < 0 || df_buf_append(&b, p, n) < 0)
                goto fail;
            first = false;
        }
        p += n + (amp ? 1 : 0);
    }
    if (frag && df_buf_append(&b, frag, strlen(frag)) < 0)
        goto fail;
    if (!b.data && df_buf_append(&b, "", 0) < 0)
        goto fail;
    return b.data;
fail:
    df_buf_free(&b);
    return NULL;
}

int df_sn_task_id(const char *task_url, const char *digest, const char *identifier, char out[65])
{
    const char *sign = digest && *digest ? digest : identifier && *identifier ? identifier : "";
    df_hasher_t *h = df_hasher_new(DF_DIGEST_SHA256);
    df_digest_t d;

    if (!h)
        return -ENOMEM;
    df_hasher_update(h, task_url, strlen(task_url));
    df_hasher_update(h, "\n", 1);
    df_hasher_update(h, sign, strlen(sign));
    df_hasher_final(h, &d);
    df_hasher_free(h);
    df_hex(d.value, 32, out);
    return 0;
}

int df_sn_peer_id(const char *hostname, const char *ip, uint16_t port, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s-%s-%u", hostname, ip, (unsigned)port);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}
