/*
 * Which registry a request goes to.  The default is the configured
 * --registry; containerd names the registry a pull is for in ?ns=<host>
 * (its mirror protocol), which selects https://<host> -- or the configured
 * registry, with its TLS settings and scheme, when <host> is its authority.
 * "docker.io" means Docker Hub's API host, as in containerd.  A <host> in
 * the configured host table gets that entry's scheme and TLS settings
 * (a private registry with its own CA, or plain HTTP).  The ns parameter is
 * not passed on; the rest of the query is, unchanged.
 */
#include "proxy/proxy_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Longest request target we proxy; evhttp's header cap is the outer bound. */
#define TARGET_MAX 8192

static const df_proxy_host_t *find_host(const df_proxy_t *px, const char *authority)
{
    for (size_t i = 0; i < px->nhosts; i++)
        if (strcasecmp(px->hosts[i].authority, authority) == 0)
            return &px->hosts[i];
    return NULL;
}

int df__proxy_absolute_url(xch_t *x, const char *uri, char *origin, size_t cap)
{
    char base[DF_PROXY_URL_MAX];
    size_t n;
    char *url;

    if (df_proxy_parse_absolute(uri, strlen(uri), base, sizeof(base), origin, cap) < 0)
        return -EINVAL;
    n = strlen(base) + strlen(origin) + 1;
    url = malloc(n);
    if (!url)
        return -ENOMEM;
    snprintf(url, n, "%s%s", base, origin);
    x->insecure = false;
    x->ca_file = NULL;
    free(x->url);
    x->url = url;
    return 0;
}

int df__proxy_upstream_url(df_proxy_t *px, xch_t *x, const char *target)
{
    char ns[256], rest[TARGET_MAX], base[DF_PROXY_URL_MAX];
    const df_proxy_host_t *h;
    const char *q;
    size_t plen, tlen = strlen(target);
    df_buf_t url;
    int rc;

    if (target[0] != '/' || tlen > TARGET_MAX)
        return -EINVAL;
    q = strchr(target, '?');
    plen = q ? (size_t)(q - target) : tlen;
    rest[0] = '\0';
    rc = q ? df_proxy_parse_ns(q + 1, tlen - plen - 1, ns, sizeof(ns), rest, sizeof(rest)) : -ENOENT;
    if (rc < 0 && rc != -ENOENT)
        return -EINVAL;
    x->insecure = false;
    x->ca_file = NULL;
    if (rc == 0 && (h = find_host(px, ns)) != NULL) {
        if (snprintf(base, sizeof(base), "%s://%s", h->http ? "http" : "https", h->authority) >= (int)sizeof(base))
            return -EINVAL;
        x->insecure = h->insecure;
        x->ca_file = h->ca_file[0] ? h->ca_file : NULL;
    } else if (rc == -ENOENT || strcasecmp(ns, px->registry_authority) == 0) {
        df_strlcpy(base, px->registry, sizeof(base));
        x->insecure = px->registry_insecure;
        x->ca_file = px->registry_ca;
    } else if (strcasecmp(ns, "docker.io") == 0) {
        df_strlcpy(base, DF_PROXY_DEFAULT_REGISTRY, sizeof(base));
    } else if (snprintf(base, sizeof(base), "https://%s", ns) >= (int)sizeof(base)) {
        return -EINVAL;
    }
    df_buf_init(&url, DF_PROXY_URL_MAX + TARGET_MAX + 2);
    rc = df_buf_append(&url, base, strlen(base));
    if (rc == 0)
        rc = df_buf_append(&url, target, plen);
    if (rc == 0 && rest[0])
        rc = df_buf_printf(&url, "?%s", rest);
    if (rc < 0) {
        df_buf_free(&url);
        return rc == -ENOMEM ? rc : -EINVAL;
    }
    free(x->url);
    x->url = url.data; /* the buffer's storage, NUL-terminated */
    return 0;
}

int df__proxy_https_url(df_proxy_t *px, xch_t *x, const char *authority, const char *target)
{
    const df_proxy_host_t *h = find_host(px, authority);
    size_t n = strlen(authority) + strlen(target) + 9;
    char *url;

    if (target[0] != '/' || strlen(target) > TARGET_MAX)
        return -EINVAL;
    url = malloc(n);
    if (!url)
        return -ENOMEM;
    snprintf(url, n, "https://%s%s", authority, target);
    x->insecure = h ? h->insecure : false;
    x->ca_file = h && h->ca_file[0] ? h->ca_file : NULL;
    free(x->url);
    x->url = url;
    return 0;
}
