/*
 * Registry API shapes (registry.h): manifest URLs, blob tasks, manifest and
 * index bodies, Bearer challenges.  Bodies are parsed with jansson into a
 * tree (capped by the caller at DF_REGISTRY_MANIFEST_MAX) and read with
 * small typed getters; every string copied out has a fixed cap and every
 * digest is checked, so a hostile registry can only make a preheat fail.
 */
#include "proxy/registry.h"

#include "core/core.h"
#include "proxy/rules.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TOKEN_MAX (16u * 1024u)

static const char OCI_INDEX[] = "application/vnd.oci.image.index.v1+json";
static const char DOCKER_LIST[] = "application/vnd.docker.distribution.manifest.list.v2+json";
static const char OCI_MANIFEST[] = "application/vnd.oci.image.manifest.v1+json";
static const char DOCKER_V2[] = "application/vnd.docker.distribution.manifest.v2+json";
static const char DOCKER_V1[] = "application/vnd.docker.distribution.manifest.v1+json";
static const char DOCKER_V1_SIGNED[] = "application/vnd.docker.distribution.manifest.v1+prettyjws";

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* "sha256:<64 lower-case hex>", the only digests the mirror's P2P rule takes. */
static bool is_sha256_digest(const char *s)
{
    return strncmp(s, "sha256:", 7) == 0 && strlen(s) == 71 && is_lower_hex(s + 7, 64);
}

/* ------------------------------------------------------------- URLs */

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* Repository name: components of [a-z0-9._-]+ separated by single '/'. */
static bool valid_name(const char *s, size_t n)
{
    bool comp_start = true;

    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '/') {
            if (comp_start)
                return false;
            comp_start = true;
        } else if (name_char(s[i])) {
            comp_start = false;
        } else {
            return false;
        }
    }
    return !comp_start;
}

static bool valid_tag(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  (i > 0 && (c == '.' || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

int df_registry_parse_manifest_url(const char *url, df_registry_ref_t *out)
{
    static const char marker[] = "/manifests/";
    const char *p, *slash, *v2, *m = NULL, *ref;
    char authority[300];
    size_t alen, nlen, rlen;

    memset(out, 0, sizeof(*out));
    if (strncmp(url, "http://", 7) == 0)
        p = url + 7;
    else if (strncmp(url, "https://", 8) == 0)
        p = url + 8;
    else
        return -EINVAL;
    if (strlen(url) >= DF_REGISTRY_URL_MAX || strpbrk(url, "?#"))
        return -EINVAL;
    slash = strchr(p, '/');
    if (!slash)
        return -EINVAL;
    alen = (size_t)(slash - p);
    if (alen == 0 || alen >= sizeof(authority))
        return -EINVAL;
    memcpy(authority, p, alen);
    authority[alen] = '\0';
    if (!df_proxy_valid_host(authority))
        return -EINVAL;
    if (strncmp(slash, "/v2/", 4) != 0)
        return -EINVAL;
    v2 = slash + 4;
    /* The last "/manifests/": a repository may itself be called "manifests". */
    for (const char *q = strstr(v2, marker); q; q = strstr(q + 1, marker))
        m = q;
    if (!m)
        return -EINVAL;
    nlen = (size_t)(m - v2);
    ref = m + sizeof(marker) - 1;
    rlen = strlen(ref);
    if (nlen >= sizeof(out->name) || !valid_name(v2, nlen))
        return -EINVAL;
    if (strncmp(ref, "sha256:", 7) == 0) {
        if (!is_sha256_digest(ref))
            return -EINVAL;
        out->by_digest = true;
    } else if (!valid_tag(ref, rlen)) {
        return -EINVAL;
    }
    memcpy(out->name, v2, nlen);
    out->name[nlen] = '\0';
    memcpy(out->reference, ref, rlen + 1);
    memcpy(out->repo_url, url, (size_t)(m - url));
    out->repo_url[m - url] = '\0';
    return 0;
}

static int join(const char *repo_url, const char *what, const char *last, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s/%s", repo_url, what, last);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int df_registry_blob_url(const char *repo_url, const char *digest, char *out, size_t cap)
{
    return join(repo_url, "blobs", digest, out, cap);
}

int df_registry_manifest_url(const char *repo_url, const char *reference, char *out, size_t cap)
{
    return join(repo_url, "manifests", reference, out, cap);
}

void df_registry_blob_task(df_download_req_t *r, const char *url, const char *digest)
{
    r->url = url;
    r->digest = digest;
    r->identifier = NULL;
    r->filter = NULL;
}

/* -------------------------------------------------------- manifests */

/* Copies an optional string member into out (cap bytes).  Absent or null
 * leaves "" ; anything else that is not a short string is an error. */
static int opt_string(json_t *obj, const char *key, char *out, size_t cap, char *err, size_t errcap)
{
    json_t *v = json_object_get(obj, key);

    out[0] = '\0';
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) >= cap || strlen(json_string_value(v)) != json_string_length(v)) {
        df_errf(err, errcap, "\"%s\" is not a string of at most %zu bytes", key, cap - 1);
        return DF_EPROTO;
    }
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int parse_desc(json_t *o, bool platform, df_registry_desc_t *d, char *err, size_t errcap)
{
    json_t *size, *pf;
    int rc;

    memset(d, 0, sizeof(*d));
    if (!json_is_object(o)) {
        df_errf(err, errcap, "%s", "a descriptor is not an object");
        return DF_EPROTO;
    }
    rc = opt_string(o, "digest", d->digest, sizeof(d->digest), err, errcap);
    if (rc == 0 && !is_sha256_digest(d->digest)) {
        df_errf(err, errcap, "descriptor digest \"%.80s\" is not sha256:<64 hex>", d->digest);
        rc = DF_EPROTO;
    }
    if (rc == 0)
        rc = opt_string(o, "mediaType", d->media_type, sizeof(d->media_type), err, errcap);
    if (rc < 0)
        return rc;
    size = json_object_get(o, "size");
    if (size && !json_is_null(size)) {
        if (!json_is_integer(size) || json_integer_value(size) < 0) {
            df_errf(err, errcap, "descriptor %s: size is not a non-negative integer", d->digest);
            return DF_EPROTO;
        }
        d->size = (uint64_t)json_integer_value(size);
    }
    pf = platform ? json_object_get(o, "platform") : NULL;
    if (pf && !json_is_null(pf)) {
        if (!json_is_object(pf)) {
            df_errf(err, errcap, "descriptor %s: platform is not an object", d->digest);
            return DF_EPROTO;
        }
        rc = opt_string(pf, "os", d->os, sizeof(d->os), err, errcap);
        if (rc == 0)
            rc = opt_string(pf, "architecture", d->arch, sizeof(d->arch), err, errcap);
        if (rc == 0)
            rc = opt_string(pf, "variant", d->variant, sizeof(d->variant), err, errcap);
    }
    return rc;
}

static int push_desc(df_registry_manifest_t *m, size_t *cap, const df_registry_desc_t *d, char *err,
                     size_t errcap)
{
    if (m->ndescs >= DF_REGISTRY_DESCS_MAX) {
        df_errf(err, errcap, "more than %u descriptors", DF_REGISTRY_DESCS_MAX);
        return DF_EPROTO;
    }
    if (m->ndescs == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        df_registry_desc_t *n = realloc(m->descs, ncap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        m->descs = n;
        *cap = ncap;
    }
    m->descs[m->ndescs++] = *d;
    return 0;
}

static bool has_desc(const df_registry_manifest_t *m, const char *digest)
{
    for (size_t i = 0; i < m->ndescs; i++)
        if (strcmp(m->descs[i].digest, digest) == 0)
            return true;
    return false;
}

/* The media type without parameters, lower-cased, into out. */
static void bare_type(const char *ct, char *out, size_t cap)
{
    size_t n = 0;

    out[0] = '\0';
    if (!ct)
        return;
    while (*ct == ' ')
        ct++;
    while (ct[n] && ct[n] != ';' && ct[n] != ' ' && n + 1 < cap) {
        char c = ct[n];
        out[n] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        n++;
    }
    out[n] = '\0';
}

static int parse_array(json_t *root, const char *key, bool required, bool platform, df_registry_manifest_t *m,
                       size_t *cap, char *err, size_t errcap)
{
    json_t *arr = json_object_get(root, key), *v;
    size_t i;
    int rc;

    if (!arr || json_is_null(arr)) {
        if (!required)
            return 0;
        df_errf(err, errcap, "no \"%s\" array", key);
        return DF_EPROTO;
    }
    if (!json_is_array(arr)) {
        df_errf(err, errcap, "\"%s\" is not an array", key);
        return DF_EPROTO;
    }
    json_array_foreach(arr, i, v) {
        df_registry_desc_t d;
        rc = parse_desc(v, platform, &d, err, errcap);
        if (rc < 0)
            return rc;
        /* Foreign layers live outside the registry (Windows base layers). */
        if (strstr(d.media_type, ".foreign."))
            continue;
        rc = push_desc(m, cap, &d, err, errcap);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Docker schema 1: fsLayers[].blobSum, often repeated (empty layers). */
static int parse_schema1(json_t *root, df_registry_manifest_t *m, size_t *cap, char *err, size_t errcap)
{
    json_t *arr = json_object_get(root, "fsLayers"), *v;
    size_t i;
    int rc;

    if (!json_is_array(arr)) {
        df_errf(err, errcap, "%s", "schema 1 manifest without an \"fsLayers\" array");
        return DF_EPROTO;
    }
    json_array_foreach(arr, i, v) {
        df_registry_desc_t d;
        memset(&d, 0, sizeof(d));
        rc = json_is_object(v) ? opt_string(v, "blobSum", d.digest, sizeof(d.digest), err, errcap) : DF_EPROTO;
        if (rc == 0 && !is_sha256_digest(d.digest))
            rc = DF_EPROTO;
        if (rc < 0) {
            df_errf(err, errcap, "%s", "schema 1 fsLayers entry without a sha256 blobSum");
            return rc;
        }
        if (has_desc(m, d.digest))
            continue;
        rc = push_desc(m, cap, &d, err, errcap);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int df_registry_manifest_parse(const char *body, size_t len, const char *content_type,
                               df_registry_manifest_t *out, char *err, size_t errcap)
{
    char mt[128], ct[128];
    json_error_t jerr;
    json_t *root = NULL, *sv, *config;
    size_t cap = 0;
    json_int_t version = 0;
    int rc = DF_EPROTO;

    memset(out, 0, sizeof(*out));
    if (len > DF_REGISTRY_MANIFEST_MAX) {
        df_errf(err, errcap, "manifest larger than %u bytes", DF_REGISTRY_MANIFEST_MAX);
        return DF_EPROTO;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        df_errf(err, errcap, "manifest is not a JSON object%s%s", root ? "" : ": ", root ? "" : jerr.text);
        goto out;
    }
    rc = opt_string(root, "mediaType", mt, sizeof(mt), err, errcap);
    if (rc < 0)
        goto out;
    rc = DF_EPROTO;
    sv = json_object_get(root, "schemaVersion");
    if (sv && json_is_integer(sv))
        version = json_integer_value(sv);
    bare_type(content_type, ct, sizeof(ct));
    if (!mt[0] && (strcmp(ct, OCI_INDEX) == 0 || strcmp(ct, DOCKER_LIST) == 0 || strcmp(ct, OCI_MANIFEST) == 0 ||
                   strcmp(ct, DOCKER_V2) == 0))
        memcpy(mt, ct, strlen(ct) + 1);
    if (strcmp(mt, OCI_INDEX) == 0 || strcmp(mt, DOCKER_LIST) == 0 ||
        (!mt[0] && json_object_get(root, "manifests"))) {
        out->kind = DF_REGISTRY_INDEX;
        rc = parse_array(root, "manifests", true, true, out, &cap, err, errcap);
    } else if (version == 1 || strcmp(mt, DOCKER_V1) == 0 || strcmp(mt, DOCKER_V1_SIGNED) == 0 ||
               strcmp(ct, DOCKER_V1_SIGNED) == 0) {
        out->kind = DF_REGISTRY_IMAGE;
        rc = parse_schema1(root, out, &cap, err, errcap);
    } else if (!mt[0] || strcmp(mt, OCI_MANIFEST) == 0 || strcmp(mt, DOCKER_V2) == 0) {
        out->kind = DF_REGISTRY_IMAGE;
        if (version != 2) {
            df_errf(err, errcap, "%s", "manifest without schemaVersion 2");
            goto out;
        }
        config = json_object_get(root, "config");
        if (config && !json_is_null(config)) {
            df_registry_desc_t d;
            rc = parse_desc(config, false, &d, err, errcap);
            if (rc == 0)
                rc = push_desc(out, &cap, &d, err, errcap);
            if (rc < 0)
                goto out;
        }
        rc = parse_array(root, "layers", true, false, out, &cap, err, errcap);
    } else {
        df_errf(err, errcap, "unsupported manifest media type \"%s\"", mt);
    }
out:
    json_decref(root);
    if (rc < 0)
        df_registry_manifest_clear(out);
    return rc;
}

void df_registry_manifest_clear(df_registry_manifest_t *m)
{
    free(m->descs);
    memset(m, 0, sizeof(*m));
}

static bool platform_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

int df_registry_platform_parse(const char *s, char os[32], char arch[32], char variant[32])
{
    char *parts[3] = {os, arch, variant};
    size_t k = 0, n = 0;

    os[0] = arch[0] = variant[0] = '\0';
    for (;; s++) {
        if (*s == '/' || *s == '\0') {
            if (n == 0)
                return -EINVAL;
            parts[k][n] = '\0';
            if (*s == '\0')
                break;
            if (++k == 3)
                return -EINVAL;
            n = 0;
        } else if (platform_char(*s) && n < 31) {
            parts[k][n++] = *s;
        } else {
            return -EINVAL;
        }
    }
    return k >= 1 ? 0 : -EINVAL;
}

bool df_registry_platform_match(const df_registry_desc_t *d, const char *os, const char *arch,
                                const char *variant)
{
    return strcmp(d->os, os) == 0 && strcmp(d->arch, arch) == 0 && (!variant[0] || strcmp(d->variant, variant) == 0);
}

/* ------------------------------------------------------------- auth */

static bool tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* One auth-param value (token or quoted-string) at p into out (cap bytes;
 * NULL to discard).  Returns the position after it, or NULL. */
static const char *param_value(const char *p, char *out, size_t cap)
{
    size_t n = 0;

    if (*p == '"') {
        for (p++; *p != '"'; p++) {
            if (*p == '\0')
                return NULL;
            if (*p == '\\') {
                p++;
                if (*p == '\0')
                    return NULL;
            }
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return NULL;
            if (out) {
                if (n + 1 >= cap)
                    return NULL;
                out[n++] = *p;
            }
        }
        p++;
    } else {
        /* A token; '/' and ':' also, for servers that leave a URL unquoted. */
        if (!tchar(*p) && *p != '/' && *p != ':')
            return NULL;
        for (; tchar(*p) || *p == '/' || *p == ':'; p++) {
            if (out) {
                if (n + 1 >= cap)
                    return NULL;
                out[n++] = *p;
            }
        }
    }
    if (out)
        out[n] = '\0';
    return p;
}

int df_registry_parse_bearer(const char *value, char *realm, size_t realm_cap, char *service,
                             size_t service_cap, char *scope, size_t scope_cap)
{
    const char *p = skip_ws(value);
    size_t n;

    if (realm_cap < 2 || service_cap < 1 || scope_cap < 1)
        return -EINVAL;
    realm[0] = service[0] = scope[0] = '\0';
    if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t' && p[6] != '\0'))
        return -ENOENT;
    p = skip_ws(p + 6);
    while (*p) {
        const char *name = p;
        size_t nlen;
        char *dst = NULL;
        size_t cap = 0;

        while (tchar(*p))
            p++;
        nlen = (size_t)(p - name);
        p = skip_ws(p);
        if (nlen == 0 || *p != '=')
            return -EINVAL;
        p = skip_ws(p + 1);
        if (nlen == 5 && strncasecmp(name, "realm", 5) == 0)
            dst = realm, cap = realm_cap;
        else if (nlen == 7 && strncasecmp(name, "service", 7) == 0)
            dst = service, cap = service_cap;
        else if (nlen == 5 && strncasecmp(name, "scope", 5) == 0)
            dst = scope, cap = scope_cap;
        p = param_value(p, dst, cap);
        if (!p)
            return -EINVAL;
        p = skip_ws(p);
        if (*p == ',')
            p = skip_ws(p + 1);
        else if (*p)
            return -EINVAL;
    }
    n = strlen(realm);
    if (!(n > 8 && memcmp(realm, "https://", 8) == 0) && !(n > 7 && memcmp(realm, "http://", 7) == 0))
        return -EINVAL;
    /* The realm becomes a request URL: no blanks or controls in it. */
    for (const char *q = realm; *q; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f)
            return -EINVAL;
    return 0;
}

char *df_registry_parse_token(const char *body, size_t len)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    const char *keys[] = {"token", "access_token"};
    char *tok = NULL;

    if (!root)
        return NULL;
    for (size_t k = 0; json_is_object(root) && k < 2 && !tok; k++) {
        json_t *v = json_object_get(root, keys[k]);
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;
        size_t n = s ? json_string_length(v) : 0;
        bool ok = s && n > 0 && n <= TOKEN_MAX && strlen(s) == n;
        for (size_t i = 0; ok && i < n; i++)
            ok = s[i] > 0x20 && s[i] < 0x7f;
        if (ok)
            tok = strdup(s);
    }
    json_decref(root);
    return tok;
}
