/*
 * Header filtering between a registry client and the registry.
 *
 * Hop-by-hop headers (RFC 9110 section 7.6.1: Connection and the headers it
 * names, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade)
 * belong to one connection and are dropped both ways.  Host is set by curl
 * from the registry URL, Content-Length by curl from the body; Expect is
 * dropped because evhttp already consumed the body.  Everything else passes
 * unchanged, Authorization included (the registry decides), and so do the
 * registry's answers: a Bearer challenge (WWW-Authenticate) reaches the
 * client as the registry wrote it.
 */
#include "proxy/proxy_internal.h"

#include <event2/keyvalq_struct.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LINE_MAX_BYTES (16u * 1024u)
#define LINES_MAX 200

static const char *const hop_by_hop[] = {"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
                                         "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding",
                                         "Upgrade", NULL};

static bool in_list(const char *const *list, const char *name, size_t nlen)
{
    for (size_t i = 0; list && list[i]; i++)
        if (strlen(list[i]) == nlen && strncasecmp(list[i], name, nlen) == 0)
            return true;
    return false;
}

/* True when the comma-separated token list conn (a Connection header value)
 * names the header name. */
static bool named_by_connection(const char *conn, const char *name, size_t nlen)
{
    const char *p = conn;

    while (p && *p) {
        const char *e;
        size_t n;
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        e = p + strcspn(p, ",");
        n = (size_t)(e - p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == nlen && n > 0 && strncasecmp(p, name, n) == 0)
            return true;
        p = e;
    }
    return false;
}

void df__proxy_free_lines(char **lines)
{
    for (size_t i = 0; lines && lines[i]; i++)
        free(lines[i]);
    free(lines);
}

char **df__proxy_request_headers(struct evhttp_request *req, const char *const *skip)
{
    static const char *const request_only[] = {"Host", "Content-Length", "Expect", NULL};
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *conn = evhttp_find_header(in, "Connection");
    struct evkeyval *kv;
    char **lines;
    size_t n = 0;

    lines = calloc(LINES_MAX + 1, sizeof(*lines));
    if (!lines)
        return NULL;
    for (kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        size_t nlen = strlen(kv->key), vlen = strlen(kv->value);
        char *line;

        if (in_list(hop_by_hop, kv->key, nlen) || in_list(request_only, kv->key, nlen) ||
            in_list(skip, kv->key, nlen) || named_by_connection(conn, kv->key, nlen))
            continue;
        if (n == LINES_MAX || nlen + vlen + 3 > LINE_MAX_BYTES)
            continue; /* evhttp's header cap makes this unreachable in practice */
        line = malloc(nlen + vlen + 3);
        if (!line) {
            df__proxy_free_lines(lines);
            return NULL;
        }
        memcpy(line, kv->key, nlen);
        memcpy(line + nlen, ": ", 2);
        memcpy(line + nlen + 2, kv->value, vlen + 1);
        if (!df_header_line_ok(line)) {
            free(line);
            continue;
        }
        lines[n++] = line;
    }
    return lines;
}

typedef struct {
    struct evkeyvalq *out;
    const char *conn;
} copy_ctx_t;

static int copy_one(const char *name, size_t nlen, const char *value, size_t vlen, void *arg)
{
    copy_ctx_t *c = arg;
    char k[256], v[LINE_MAX_BYTES];

    if (in_list(hop_by_hop, name, nlen) || named_by_connection(c->conn, name, nlen))
        return 0;
    if (nlen >= sizeof(k) || vlen >= sizeof(v))
        return 0;
    memcpy(k, name, nlen);
    k[nlen] = '\0';
    memcpy(v, value, vlen);
    v[vlen] = '\0';
    /* evhttp refuses values with CR/LF itself; a failure just drops one. */
    evhttp_add_header(c->out, k, v);
    return 0;
}

int df__proxy_copy_response_headers(df_http_req_t *up, struct evkeyvalq *out)
{
    char conn[1024];
    const char *cv = df_http_header(up, "Connection");
    copy_ctx_t c = {.out = out, .conn = NULL};

    if (cv) {
        df_strlcpy(conn, cv, sizeof(conn));
        c.conn = conn;
    }
    return df_http_header_foreach(up, copy_one, &c);
}
