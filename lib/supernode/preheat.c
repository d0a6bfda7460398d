/*
 * Preheat (preheat.h): the table of preheats and each one's state machine.
 *
 *   WAITING --slot free--> RUNNING/RESOLVE --manifests in--> RUNNING/SEED
 *           --every seed complete--> SUCCESS;  any error --> FAILED
 *
 * RESOLVE fetches one manifest at a time through the library's HTTP client
 * (the top one, then each chosen manifest of an index, by digest, checking
 * the bytes against it), with the request's headers plus an Accept for
 * every manifest type.  A 401 carrying a Bearer challenge is answered once
 * per preheat: the token is fetched from the realm (with the request's own
 * Authorization, e.g. Basic credentials) and replaces that Authorization for
 * the manifests and for the seeds, which fetch the blobs with the same
 * headers.  SEED hands each blob to the supernode's seed through seed_cb --
 * the Register path, so task ids, headers and TLS rules are the ones a
 * Register would get -- and then only watches the tasks' states.
 */
#include "supernode/preheat.h"

#include "core/core.h"
#include "piece/digest.h"
#include "proxy/registry.h"
#include "supernode/api_codec.h"
#include "supernode/seed.h"

#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#define REQ_TIMEOUT_MS 60000
#define TOKEN_BODY_MAX (64u * 1024u)
#define ERROR_MAX 512

typedef enum { PH_RESOLVE = 0, PH_SEED } phase_t;

typedef struct {
    char digest[72];
    char id[65];
    bool started, done;
    uint8_t reseeds;           /* times its task vanished and was started again */
} blob_t;

typedef struct preheat {
    struct df_sn_preheats *ph;
    char id[65];
    df_sn_preheat_state_t state;
    phase_t phase;
    df_sn_preheat_req_t req;
    df_registry_ref_t ref;     /* image only */
    char os[32], arch[32], variant[32];
    char *auth;                /* "Authorization: Bearer <token>" once fetched */
    bool token_tried;
    df_http_req_t *http;       /* in flight (manifest or token) */
    char fetching[DF_REGISTRY_URL_MAX]; /* the manifest URL being fetched */
    char expect[72];           /* its digest when fetched by digest, else "" */
    bool fetching_child;
    char (*todo)[72];          /* manifests of the index still to fetch */
    size_t ntodo, todo_next, nmanifests;
    blob_t *blobs;
    size_t nblobs, cap_blobs, ndone;
    uint64_t start_ms;
    struct timeval start_wall, finish_wall;
    uint64_t finish_ms;
    char error[ERROR_MAX];
    struct preheat *next, *prev;
} preheat_t;

struct df_sn_preheats {
    df_sn_preheat_opts_t o;
    preheat_t *head, *tail;
    size_t n;
    struct event *kick;
};

const char *df_sn_preheat_state_name(df_sn_preheat_state_t s)
{
    static const char *names[] = {"WAITING", "RUNNING", "SUCCESS", "FAILED"};
    return (unsigned)s < DF_SN_PREHEAT_NSTATES ? names[s] : "UNKNOWN";
}

/* ------------------------------------------------------------ request */

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

void df_sn_preheat_req_clear(df_sn_preheat_req_t *r)
{
    free(r->url);
    free_strv(r->filter, r->nfilter);
    free(r->identifier);
    free_strv(r->headers, r->nheaders);
    free(r->platform);
    free(r->root_ca);
    memset(r, 0, sizeof(*r));
}

static bool header_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

static bool header_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 && s[i] != '\t')
            return false;
    return strlen(s) == n;
}

/* A string member into *out (NULL when absent/null).  Caps its length. */
static int get_str(json_t *root, const char *key, size_t maxlen, char **out, char *err, size_t errcap)
{
    json_t *v = json_object_get(root, key);

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) > maxlen || strlen(json_string_value(v)) != json_string_length(v)) {
        df_errf(err, errcap, "\"%s\" must be a string of at most %zu bytes", key, maxlen);
        return DF_EPROTO;
    }
    *out = strdup(json_string_value(v));
    return *out ? 0 : -ENOMEM;
}

static int push_str(char ***v, size_t *n, size_t max, const char *s, size_t len, char *err, size_t errcap)
{
    char **nv;

    if (*n >= max) {
        df_errf(err, errcap, "more than %zu entries", max);
        return DF_EPROTO;
    }
    nv = realloc(*v, (*n + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    *v = nv;
    nv[*n] = strndup(s, len);
    if (!nv[*n])
        return -ENOMEM;
    (*n)++;
    return 0;
}

/* Dragonfly's filter is one string "a&b"; an array of keys is taken too. */
static int decode_filter(json_t *root, df_sn_preheat_req_t *r, char *err, size_t errcap)
{
    json_t *f = json_object_get(root, "filter"), *v;
    size_t i;
    int rc = 0;

    if (!f || json_is_null(f))
        return 0;
    if (json_is_string(f)) {
        const char *s = json_string_value(f);
        if (json_string_length(f) > DF_SN_URL_MAX)
            goto bad;
        while (*s && rc == 0) {
            size_t n = strcspn(s, "&");
            if (n)
                rc = push_str(&r->filter, &r->nfilter, DF_SN_FILTER_MAX, s, n, err, errcap);
            s += n + (s[n] == '&');
        }
        return rc;
    }
    if (!json_is_array(f))
        goto bad;
    json_array_foreach(f, i, v) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256)
            goto bad;
        rc = push_str(&r->filter, &r->nfilter, DF_SN_FILTER_MAX, json_string_value(v), json_string_length(v), err,
                      errcap);
        if (rc < 0)
            return rc;
    }
    return 0;
bad:
    df_errf(err, errcap, "%s", "\"filter\" must be a string \"a&b\" or an array of query keys");
    return DF_EPROTO;
}

static int decode_headers(json_t *root, df_sn_preheat_req_t *r, char *err, size_t errcap)
{
    json_t *h = json_object_get(root, "headers"), *v;
    const char *k;

    if (!h || json_is_null(h))
        return 0;
    if (!json_is_object(h)) {
        df_errf(err, errcap, "%s", "\"headers\" must be an object {name: value}");
        return DF_EPROTO;
    }
    json_object_foreach(h, k, v) {
        char line[DF_SN_HEADER_LEN_MAX];
        int n, rc;
        if (!header_name_ok(k) || !json_is_string(v) || !header_value_ok(json_string_value(v), json_string_length(v))) {
            df_errf(err, errcap, "header \"%.64s\": a token name and a string value without line breaks", k);
            return DF_EPROTO;
        }
        n = snprintf(line, sizeof(line), "%s: %s", k, json_string_value(v));
        if (n < 0 || (size_t)n >= sizeof(line)) {
            df_errf(err, errcap, "header \"%.64s\" longer than %u bytes", k, DF_SN_HEADER_LEN_MAX);
            return DF_EPROTO;
        }
        rc = push_str(&r->headers, &r->nheaders, DF_SN_HEADERS_MAX, line, (size_t)n, err, errcap);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int df_sn_decode_preheat(const char *body, size_t len, df_sn_preheat_req_t *out, char *err, size_t errcap)
{
    json_error_t jerr;
    json_t *root;
    char *type = NULL;
    int rc = DF_EPROTO;

    memset(out, 0, sizeof(*out));
    if (len > DF_SN_BODY_MAX) {
        df_errf(err, errcap, "%s", "body too large");
        return DF_EPROTO;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        df_errf(err, errcap, "%s%s", root ? "body is not a JSON object" : "malformed JSON: ", root ? "" : jerr.text);
        json_decref(root);
        return DF_EPROTO;
    }
    rc = get_str(root, "type", 16, &type, err, errcap);
    if (rc == 0 && (!type || (strcmp(type, "image") != 0 && strcmp(type, "file") != 0))) {
        df_errf(err, errcap, "%s", "\"type\" must be \"image\" or \"file\"");
        rc = DF_EPROTO;
    }
    if (rc < 0)
        goto out;
    out->image = strcmp(type, "image") == 0;
    rc = get_str(root, "url", DF_SN_URL_MAX, &out->url, err, errcap);
    if (rc == 0 && !out->url) {
        df_errf(err, errcap, "%s", "\"url\" is required");
        rc = DF_EPROTO;
    }
    if (rc == 0)
        rc = get_str(root, "identifier", DF_SN_IDENT_MAX, &out->identifier, err, errcap);
    if (rc == 0)
        rc = get_str(root, "platform", 100, &out->platform, err, errcap);
    if (rc == 0)
        rc = decode_filter(root, out, err, errcap);
    if (rc == 0)
        rc = decode_headers(root, out, err, errcap);
    if (rc == 0)
        rc = df_sn_decode_tls(root, &out->insecure, &out->root_ca, &out->root_ca_len, err, errcap);
    if (rc < 0)
        goto out;
    rc = DF_EPROTO;
    if (out->image) {
        df_registry_ref_t ref;
        char os[32], arch[32], variant[32];
        if (df_registry_parse_manifest_url(out->url, &ref) < 0) {
            df_errf(err, errcap, "%s", "\"url\" must be a manifest URL http[s]://<registry>/v2/<name>/manifests/<tag or digest>");
            goto out;
        }
        if (out->platform && df_registry_platform_parse(out->platform, os, arch, variant) < 0) {
            df_errf(err, errcap, "%s", "\"platform\" must be \"os/arch\" or \"os/arch/variant\"");
            goto out;
        }
    } else {
        if ((strncmp(out->url, "http://", 7) != 0 && strncmp(out->url, "https://", 8) != 0) || strlen(out->url) < 10) {
            df_errf(err, errcap, "%s", "\"url\" must be an http or https URL");
            goto out;
        }
        if (out->platform) {
            df_errf(err, errcap, "%s", "\"platform\" applies to type \"image\" only");
            goto out;
        }
    }
    for (const char *p = out->url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            df_errf(err, errcap, "%s", "\"url\" contains blanks or control characters");
            goto out;
        }
    rc = 0;
out:
    free(type);
    json_decref(root);
    if (rc < 0)
        df_sn_preheat_req_clear(out);
    return rc;
}

/* ------------------------------------------------------------- table */

static void kick_cb(evutil_socket_t fd, short what, void *arg);

int df_sn_preheats_new(const df_sn_preheat_opts_t *opts, df_sn_preheats_t **out)
{
    df_sn_preheats_t *ph = calloc(1, sizeof(*ph));

    if (!ph)
        return -ENOMEM;
    ph->o = *opts;
    if (!ph->o.timeout_ms)
        ph->o.timeout_ms = DF_SN_PREHEAT_TIMEOUT_MS;
    ph->kick = event_new(opts->base, -1, 0, kick_cb, ph);
    if (!ph->kick) {
        free(ph);
        return -ENOMEM;
    }
    *out = ph;
    return 0;
}

static void entry_free(preheat_t *p)
{
    df_http_cancel(p->http);
    df_sn_preheat_req_clear(&p->req);
    free(p->auth);
    free(p->todo);
    free(p->blobs);
    free(p);
}

static void unlink_entry(df_sn_preheats_t *ph, preheat_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        ph->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        ph->tail = p->prev;
    ph->n--;
}

void df_sn_preheats_free(df_sn_preheats_t *ph)
{
    if (!ph)
        return;
    while (ph->head) {
        preheat_t *p = ph->head;
        unlink_entry(ph, p);
        entry_free(p);
    }
    event_free(ph->kick);
    free(ph);
}

static preheat_t *find(df_sn_preheats_t *ph, const char *id)
{
    for (preheat_t *p = ph->head; p; p = p->next)
        if (strcmp(p->id, id) == 0)
            return p;
    return NULL;
}

static bool finished(const preheat_t *p)
{
    return p->state == DF_SN_PREHEAT_SUCCESS || p->state == DF_SN_PREHEAT_FAILED;
}

void df_sn_preheats_kick(df_sn_preheats_t *ph)
{
    if (ph)
        event_active(ph->kick, EV_TIMEOUT, 0);
}

static void finish(preheat_t *p, df_sn_preheat_state_t st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void finish(preheat_t *p, df_sn_preheat_state_t st, const char *fmt, ...)
{
    va_list ap;

    if (finished(p))
        return;
    df_http_cancel(p->http);
    p->http = NULL;
    p->state = st;
    p->finish_ms = df_now_ms();
    gettimeofday(&p->finish_wall, NULL);
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(p->error, sizeof(p->error), fmt, ap);
        va_end(ap);
    }
    if (st == DF_SN_PREHEAT_FAILED)
        DF_LOG_W("preheat %.12s (%s): failed: %s", p->id, p->req.url, p->error);
    else
        DF_LOG_I("preheat %.12s (%s): done, %zu blob(s) seeded", p->id, p->req.url, p->nblobs);
    df_sn_preheats_kick(p->ph); /* a slot is free: start a waiting one */
}

/* ------------------------------------------------------------ seeding */

static int add_blob(preheat_t *p, const char *digest)
{
    for (size_t i = 0; i < p->nblobs; i++)
        if (strcmp(p->blobs[i].digest, digest) == 0)
            return 0;
    if (p->nblobs >= DF_SN_PREHEAT_BLOBS_MAX)
        return DF_ETOOBIG;
    if (p->nblobs == p->cap_blobs) {
        size_t ncap = p->cap_blobs ? p->cap_blobs * 2 : 16;
        blob_t *nb = realloc(p->blobs, ncap * sizeof(*nb));
        if (!nb)
            return -ENOMEM;
        p->blobs = nb;
        p->cap_blobs = ncap;
    }
    memset(&p->blobs[p->nblobs], 0, sizeof(blob_t));
    memcpy(p->blobs[p->nblobs].digest, digest, strlen(digest) + 1);
    p->nblobs++;
    return 0;
}

/* The origin headers of the preheat's requests: its own, with the Bearer
 * token (once fetched) in place of its Authorization.  NULL-terminated,
 * borrowed strings in a malloc'ed array; *n is the count. */
static char **request_headers(const preheat_t *p, size_t *n, const char *extra)
{
    char **v = calloc(p->req.nheaders + 3, sizeof(*v));
    size_t k = 0;

    if (!v)
        return NULL;
    for (size_t i = 0; i < p->req.nheaders; i++) {
        if (p->auth && strncasecmp(p->req.headers[i], "Authorization:", 14) == 0)
            continue;
        if (extra && strncasecmp(p->req.headers[i], "Accept:", 7) == 0)
            continue;
        v[k++] = p->req.headers[i];
    }
    if (p->auth)
        v[k++] = p->auth;
    if (extra)
        v[k++] = (char *)extra;
    *n = k;
    return v;
}

/* Seeds blob i (again); false when the preheat failed. */
static bool seed_blob(preheat_t *p, blob_t *b)
{
    df_download_req_t r = {0};
    char url[DF_REGISTRY_URL_MAX + 80], err[ERROR_MAX];
    const char **filter = NULL;
    char **hdrs;
    size_t nh = 0;
    int rc;

    if (p->req.image) {
        if (df_registry_blob_url(p->ref.repo_url, b->digest, url, sizeof(url)) < 0) {
            finish(p, DF_SN_PREHEAT_FAILED, "blob URL of %s too long", b->digest);
            return false;
        }
        df_registry_blob_task(&r, url, b->digest);
    } else {
        filter = calloc(p->req.nfilter + 1, sizeof(*filter));
        if (!filter) {
            finish(p, DF_SN_PREHEAT_FAILED, "out of memory");
            return false;
        }
        for (size_t i = 0; i < p->req.nfilter; i++)
            filter[i] = p->req.filter[i];
        r.url = p->req.url;
        r.filter = p->req.nfilter ? filter : NULL;
        r.identifier = p->req.identifier;
    }
    hdrs = request_headers(p, &nh, NULL);
    err[0] = '\0';
    rc = hdrs ? p->ph->o.seed(&r, hdrs, nh, p->req.insecure, p->req.root_ca, p->req.root_ca_len, b->id, err,
                              sizeof(err), p->ph->o.arg)
              : -ENOMEM;
    free(hdrs);
    free(filter);
    if (rc < 0) {
        finish(p, DF_SN_PREHEAT_FAILED, "%s: %s", r.url, err[0] ? err : df_strerror(rc));
        return false;
    }
    return true;
}

static void check_seeds(preheat_t *p);

static void start_seeding(preheat_t *p)
{
    p->phase = PH_SEED;
    DF_LOG_I("preheat %.12s: seeding %zu blob(s) of %s", p->id, p->nblobs, p->req.url);
    check_seeds(p);
}

/* Starts seeds up to DF_SN_PREHEAT_SEEDS_MAX at a time (an image of
 * thousands of layers must not open thousands of origin requests at once)
 * and reads their states: SUCCESS when all are complete, FAILED with the
 * first failure. */
static void check_seeds(preheat_t *p)
{
    size_t active = 0;
    const char *refusal;

    for (size_t i = 0; i < p->nblobs; i++) {
        blob_t *b = &p->blobs[i];
        df_sn_task_t *t;
        if (b->done)
            continue;
        if (!b->started) {
            if (active >= DF_SN_PREHEAT_SEEDS_MAX)
                continue;
            b->started = true;
            if (!seed_blob(p, b))
                return;
        }
        active++;
        t = df_sn_task_find(p->ph->o.swarm, b->id);
        if (!t) {
            /* Forgotten meanwhile (idle sweep, or a failed task retired):
             * start it again, a bounded number of times. */
            if (++b->reseeds > 3) {
                finish(p, DF_SN_PREHEAT_FAILED, "blob %s: its task keeps disappearing", b->digest);
                return;
            }
            if (!seed_blob(p, b))
                return;
            continue;
        }
        if (t->state == DF_SN_TASK_FAILED) {
            finish(p, DF_SN_PREHEAT_FAILED, "%s: %s", t->url, t->error);
            return;
        }
        if (t->state == DF_SN_TASK_COMPLETE && !df_sn_seed_active(t) &&
            df_sn_seed_refusal(t, t->headers_gen, &refusal)) {
            /* Revalidated with the preheat's headers (or a later
             * registrant's), which were refused. */
            finish(p, DF_SN_PREHEAT_FAILED, "%s: %s", t->url, refusal);
            return;
        }
        if (t->state == DF_SN_TASK_COMPLETE && !df_sn_seed_active(t)) {
            b->done = true;
            p->ndone++;
            active--;
        }
    }
    if (p->ndone == p->nblobs)
        finish(p, DF_SN_PREHEAT_SUCCESS, NULL);
}

/* ----------------------------------------------------------- resolving */

/* The preheat's TLS settings for its own requests (the seeds get the same). */
static void tls_opts(const preheat_t *p, df_http_opts_t *o)
{
    o->insecure = p->req.insecure;
    o->ca_pem = p->req.root_ca;
    o->ca_pem_len = p->req.root_ca_len;
}

static void fetch(preheat_t *p);

static void token_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    preheat_t *p = arg;
    char *tok;
    size_t n;

    p->http = NULL;
    if (res->status < 0) {
        finish(p, DF_SN_PREHEAT_FAILED, "token request for %s: %s", p->fetching,
               res->error ? res->error : df_strerror(res->status));
        return;
    }
    if (res->http_code != 200) {
        finish(p, DF_SN_PREHEAT_FAILED, "token request for %s: the token server answered %ld", p->fetching,
               res->http_code);
        return;
    }
    tok = res->body ? df_registry_parse_token(res->body->data, res->body->len) : NULL;
    if (!tok) {
        finish(p, DF_SN_PREHEAT_FAILED, "token request for %s: no token in the answer", p->fetching);
        return;
    }
    n = strlen(tok) + 32;
    p->auth = malloc(n);
    if (p->auth)
        snprintf(p->auth, n, "Authorization: Bearer %s", tok);
    free(tok);
    if (!p->auth) {
        finish(p, DF_SN_PREHEAT_FAILED, "out of memory");
        return;
    }
    fetch(p); /* the same manifest again, with the token */
}

/* Answers a Bearer challenge: GET realm?service=..&scope=.. with the
 * preheat's own headers (its Basic credentials, if any). */
static bool start_token(preheat_t *p, const char *challenge)
{
    static const df_http_cbs_t cbs = {.on_done = token_done};
    char realm[2048], service[512], scope[512];
    char *es = NULL, *esc = NULL, **hdrs = NULL;
    df_buf_t url;
    df_http_opts_t o = {0};
    size_t nh;
    int rc;

    if (df_registry_parse_bearer(challenge, realm, sizeof(realm), service, sizeof(service), scope, sizeof(scope)) < 0)
        return false;
    df_buf_init(&url, sizeof(realm) + 3 * (sizeof(service) + sizeof(scope)) + 32);
    es = curl_easy_escape(NULL, service, 0);
    esc = curl_easy_escape(NULL, scope, 0);
    rc = es && esc ? df_buf_printf(&url, "%s%c", realm, strchr(realm, '?') ? '&' : '?') : -ENOMEM;
    if (rc == 0 && service[0])
        rc = df_buf_printf(&url, "service=%s&", es);
    if (rc == 0 && scope[0])
        rc = df_buf_printf(&url, "scope=%s", esc);
    curl_free(es);
    curl_free(esc);
    hdrs = rc == 0 ? request_headers(p, &nh, NULL) : NULL;
    if (hdrs) {
        o.url = url.data;
        o.headers = (const char *const *)hdrs;
        o.timeout_ms = REQ_TIMEOUT_MS;
        o.follow_redirects = true;
        o.max_body = TOKEN_BODY_MAX;
        tls_opts(p, &o);
        rc = df_http_start(p->ph->o.http, &o, &cbs, p, &p->http);
    } else {
        rc = -ENOMEM;
    }
    free(hdrs);
    df_buf_free(&url);
    if (rc < 0) {
        p->http = NULL;
        finish(p, DF_SN_PREHEAT_FAILED, "token request for %s: %s", p->fetching, df_strerror(rc));
    }
    return true;
}

/* Takes the manifest in: an index adds the manifests to fetch, an image
 * its config and layers.  false when the preheat failed. */
static bool take_manifest(preheat_t *p, const df_buf_t *body, const char *ctype)
{
    df_registry_manifest_t m;
    char err[256];
    int rc;

    if (p->expect[0]) {
        uint8_t sum[32];
        char hex[65];
        df_sha256(body ? body->data : "", body ? body->len : 0, sum);
        df_hex(sum, 32, hex);
        if (strcmp(p->expect + 7, hex) != 0) {
            finish(p, DF_SN_PREHEAT_FAILED, "%s: the manifest's bytes do not match its digest (got sha256:%s)",
                   p->fetching, hex);
            return false;
        }
    }
    rc = df_registry_manifest_parse(body ? body->data : "", body ? body->len : 0, ctype, &m, err, sizeof(err));
    if (rc < 0) {
        finish(p, DF_SN_PREHEAT_FAILED, "%s: %s", p->fetching, rc == DF_EPROTO ? err : df_strerror(rc));
        return false;
    }
    if (m.kind == DF_REGISTRY_INDEX) {
        if (p->fetching_child) {
            finish(p, DF_SN_PREHEAT_FAILED, "%s: an index inside an index is not supported", p->fetching);
            goto fail;
        }
        p->todo = calloc(m.ndescs ? m.ndescs : 1, sizeof(*p->todo));
        if (!p->todo) {
            finish(p, DF_SN_PREHEAT_FAILED, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < m.ndescs; i++) {
            const df_registry_desc_t *d = &m.descs[i];
            bool take = p->req.platform ? df_registry_platform_match(d, p->os, p->arch, p->variant)
                                        : strcmp(d->os, "unknown") != 0; /* not attestations */
            if (take)
                memcpy(p->todo[p->ntodo++], d->digest, sizeof(d->digest));
        }
        if (p->ntodo == 0) {
            finish(p, DF_SN_PREHEAT_FAILED, "%s: the index has no manifest%s%s", p->fetching,
                   p->req.platform ? " for platform " : "", p->req.platform ? p->req.platform : "");
            goto fail;
        }
    } else {
        for (size_t i = 0; i < m.ndescs; i++) {
            rc = add_blob(p, m.descs[i].digest);
            if (rc < 0) {
                finish(p, DF_SN_PREHEAT_FAILED, "%s: more than %u blobs", p->fetching, DF_SN_PREHEAT_BLOBS_MAX);
                goto fail;
            }
        }
    }
    df_registry_manifest_clear(&m);
    return true;
fail:
    df_registry_manifest_clear(&m);
    return false;
}

static void next_manifest(preheat_t *p)
{
    if (p->todo_next < p->ntodo) {
        const char *d = p->todo[p->todo_next++];
        if (++p->nmanifests > DF_SN_PREHEAT_MANIFESTS_MAX) {
            finish(p, DF_SN_PREHEAT_FAILED, "more than %u manifests", DF_SN_PREHEAT_MANIFESTS_MAX);
            return;
        }
        if (df_registry_manifest_url(p->ref.repo_url, d, p->fetching, sizeof(p->fetching)) < 0) {
            finish(p, DF_SN_PREHEAT_FAILED, "manifest URL too long");
            return;
        }
        memcpy(p->expect, d, strlen(d) + 1);
        p->fetching_child = true;
        fetch(p);
        return;
    }
    if (p->nblobs == 0) {
        finish(p, DF_SN_PREHEAT_FAILED, "%s: no layers to preheat", p->req.url);
        return;
    }
    start_seeding(p);
}

static void manifest_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    preheat_t *p = arg;

    p->http = NULL;
    if (res->status < 0) {
        finish(p, DF_SN_PREHEAT_FAILED, "GET %s: %s", p->fetching,
               res->status == DF_ETOOBIG ? "manifest larger than 4 MiB"
                                         : res->error ? res->error : df_strerror(res->status));
        return;
    }
    if (res->http_code == 401 && !p->token_tried) {
        const char *ch = df_http_header(req, "WWW-Authenticate");
        p->token_tried = true;
        if (ch && start_token(p, ch))
            return;
    }
    if (res->http_code != 200) {
        finish(p, DF_SN_PREHEAT_FAILED, "GET %s: the registry answered %ld%s", p->fetching, res->http_code,
               res->http_code == 401 && p->auth ? " (with a token from its realm)" : "");
        return;
    }
    if (take_manifest(p, res->body, df_http_header(req, "Content-Type")))
        next_manifest(p);
}

static void fetch(preheat_t *p)
{
    static const df_http_cbs_t cbs = {.on_done = manifest_done};
    df_http_opts_t o = {0};
    char **hdrs;
    size_t nh;
    int rc;

    hdrs = request_headers(p, &nh, DF_REGISTRY_ACCEPT);
    if (!hdrs) {
        finish(p, DF_SN_PREHEAT_FAILED, "out of memory");
        return;
    }
    o.url = p->fetching;
    o.headers = (const char *const *)hdrs;
    o.timeout_ms = REQ_TIMEOUT_MS;
    o.follow_redirects = true;
    o.max_body = DF_REGISTRY_MANIFEST_MAX;
    tls_opts(p, &o);
    rc = df_http_start(p->ph->o.http, &o, &cbs, p, &p->http);
    free(hdrs);
    if (rc < 0) {
        p->http = NULL;
        finish(p, DF_SN_PREHEAT_FAILED, "GET %s: %s", p->fetching, df_strerror(rc));
    }
}

static void start(preheat_t *p)
{
    int rc;

    p->state = DF_SN_PREHEAT_RUNNING;
    p->start_ms = df_now_ms();
    DF_LOG_I("preheat %.12s: %s %s%s%s", p->id, p->req.image ? "image" : "file", p->req.url,
             p->req.platform ? " platform " : "", p->req.platform ? p->req.platform : "");
    if (!p->req.image) {
        rc = add_blob(p, "");
        if (rc < 0) {
            finish(p, DF_SN_PREHEAT_FAILED, "out of memory");
            return;
        }
        start_seeding(p);
        return;
    }
    memcpy(p->fetching, p->req.url, strlen(p->req.url) + 1);
    p->expect[0] = '\0';
    if (p->ref.by_digest)
        memcpy(p->expect, p->ref.reference, strlen(p->ref.reference) + 1);
    p->nmanifests = 1;
    fetch(p);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    df_sn_preheats_t *ph = arg;
    uint64_t now = df_now_ms();
    uint32_t running = 0;
    preheat_t *p, *next;

    (void)fd;
    (void)what;
    for (p = ph->head; p; p = next) {
        next = p->next;
        if (finished(p) && now - p->finish_ms >= DF_SN_PREHEAT_KEEP_MS) {
            unlink_entry(ph, p);
            entry_free(p);
            continue;
        }
        if (p->state != DF_SN_PREHEAT_RUNNING)
            continue;
        if (now - p->start_ms >= ph->o.timeout_ms) {
            finish(p, DF_SN_PREHEAT_FAILED, "not finished after %llu s", (unsigned long long)(ph->o.timeout_ms / 1000));
            continue;
        }
        if (p->phase == PH_SEED)
            check_seeds(p);
        if (p->state == DF_SN_PREHEAT_RUNNING)
            running++;
    }
    for (p = ph->head; p && running < DF_SN_PREHEAT_RUNNING_MAX; p = p->next)
        if (p->state == DF_SN_PREHEAT_WAITING) {
            start(p);
            if (p->state == DF_SN_PREHEAT_RUNNING)
                running++;
        }
}

/* ------------------------------------------------------------- API */

static int preheat_id(const df_sn_preheat_req_t *r, char id[65])
{
    char *task_url = df_sn_task_url(r->url, r->filter, r->nfilter);
    df_buf_t b;
    uint8_t sum[32];
    int rc;

    if (!task_url)
        return -ENOMEM;
    df_buf_init(&b, strlen(task_url) + DF_SN_IDENT_MAX + 160);
    rc = df_buf_printf(&b, "%s\n%s\n%s\n%s", r->image ? "image" : "file", task_url,
                       r->identifier ? r->identifier : "", r->platform ? r->platform : "");
    if (rc == 0) {
        df_sha256(b.data, b.len, sum);
        df_hex(sum, 32, id);
    }
    df_buf_free(&b);
    free(task_url);
    return rc;
}

int df_sn_preheat_create(df_sn_preheats_t *ph, df_sn_preheat_req_t *r, char id[65])
{
    preheat_t *p, *old;
    int rc = preheat_id(r, id);

    if (rc < 0)
        return rc;
    old = find(ph, id);
    if (old && !finished(old))
        return 1;
    if (old) {
        unlink_entry(ph, old);
        entry_free(old);
    }
    if (ph->n >= DF_SN_PREHEATS_MAX) {
        /* Room is made by forgetting the oldest finished preheat. */
        for (p = ph->head; p && !finished(p); p = p->next)
            ;
        if (!p)
            return -ENOSPC;
        unlink_entry(ph, p);
        entry_free(p);
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->ph = ph;
    memcpy(p->id, id, 65);
    p->req = *r;
    memset(r, 0, sizeof(*r));
    if (p->req.image) {
        /* Both were checked by the decoder. */
        df_registry_parse_manifest_url(p->req.url, &p->ref);
        if (p->req.platform)
            df_registry_platform_parse(p->req.platform, p->os, p->arch, p->variant);
    }
    p->state = DF_SN_PREHEAT_WAITING;
    gettimeofday(&p->start_wall, NULL);
    p->prev = ph->tail;
    if (ph->tail)
        ph->tail->next = p;
    else
        ph->head = p;
    ph->tail = p;
    ph->n++;
    df_sn_preheats_kick(ph);
    return 0;
}

/* RFC 3339 in UTC with milliseconds, as Dragonfly's (Go strfmt) DateTime. */
static json_t *time_json(const struct timeval *tv)
{
    struct tm tm;
    char s[96];
    time_t t = tv->tv_sec;

    gmtime_r(&t, &tm);
    snprintf(s, sizeof(s), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv->tv_usec / 1000));
    return json_string(s);
}

static json_t *entry_json(const preheat_t *p)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I}", "ID", p->id, "status", df_sn_preheat_state_name(p->state),
                          "type", p->req.image ? "image" : "file", "errorMsg", p->error, "startTime",
                          time_json(&p->start_wall), "blobs", (json_int_t)p->nblobs, "blobsDone",
                          (json_int_t)p->ndone);

    if (!o)
        return NULL;
    if (finished(p))
        json_object_set_new(o, "finishTime", time_json(&p->finish_wall));
    /* The url as filtered: a secret in a filtered query key never shows. */
    {
        char *u = df_sn_task_url(p->req.url, p->req.filter, p->req.nfilter);
        if (u)
            json_object_set_new(o, "url", json_string(u));
        free(u);
    }
    if (p->req.platform)
        json_object_set_new(o, "platform", json_string(p->req.platform));
    return o;
}

json_t *df_sn_preheat_json(df_sn_preheats_t *ph, const char *id)
{
    preheat_t *p = find(ph, id);
    return p ? entry_json(p) : NULL;
}

json_t *df_sn_preheats_json(df_sn_preheats_t *ph)
{
    json_t *a = json_array();

    for (preheat_t *p = ph->head; a && p; p = p->next)
        json_array_append_new(a, entry_json(p));
    return a;
}

int df_sn_preheat_delete(df_sn_preheats_t *ph, const char *id)
{
    preheat_t *p = find(ph, id);

    if (!p)
        return -ENOENT;
    unlink_entry(ph, p);
    entry_free(p);
    df_sn_preheats_kick(ph);
    return 0;
}

void df_sn_preheats_count(const df_sn_preheats_t *ph, uint64_t out[DF_SN_PREHEAT_NSTATES])
{
    memset(out, 0, sizeof(uint64_t) * DF_SN_PREHEAT_NSTATES);
    for (const preheat_t *p = ph->head; p; p = p->next)
        out[p->state]++;
}
