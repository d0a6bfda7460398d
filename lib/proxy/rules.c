/*
 * Rule list and registry-path parsers (contract in rules.h).
 *
 * Regexes are POSIX extended (regcomp), compiled once at startup, matched
 * with REG_NOSUB against a NUL-terminated copy of the path bounded by
 * DF_PROXY_PATH_MAX, so a request can never make us allocate.  The spec
 * splitter and the ns/digest parsers are hand-written and fuzzed.
 */
#include "proxy/rules.h"

#include "core/core.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    df_proxy_action_t action;
    char method[8];             /* "" = any */
    regex_t re;
} rule_t;

struct df_proxy_rules {
    size_t n;
    rule_t rules[DF_PROXY_RULES_MAX];
};

static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};

/* glibc compiles repetitions by copying the repeated node, so stacked or
 * nested quantifiers ("a+++", "((a{200}){200}){200}") make regcomp use
 * exponential memory.  Rules come from the operator, not the network, but
 * a typo must not take the daemon down: refuse stacked quantifiers (they
 * are undefined in POSIX EREs anyway), more than 16 quantifiers, more than
 * 2 bounds and bounds above 255. */
static bool regex_too_costly(const char *re)
{
    unsigned quantifiers = 0, bounds = 0;
    bool prev_q = false;

    for (const char *p = re; *p; p++) {
        bool q = false;

        if (*p == '\\') {
            if (p[1])
                p++;
        } else if (*p == '[') {
            p++;
            if (*p == '^')
                p++;
            if (*p == ']')
                p++;
            while (*p && *p != ']')
                p++;
            if (!*p)
                return false; /* unbalanced: regcomp refuses it */
        } else if (*p == '*' || *p == '+' || *p == '?') {
            q = true;
        } else if (*p == '{') {
            unsigned long v = 0;
            q = true;
            bounds++;
            for (p++; *p && *p != '}'; p++) {
                if (*p >= '0' && *p <= '9') {
                    v = v * 10 + (unsigned long)(*p - '0');
                    if (v > 255)
                        return true;
                } else {
                    v = 0;
                }
            }
            if (!*p)
                return false;
        }
        if (q && (prev_q || ++quantifiers > 16 || bounds > 2))
            return true;
        prev_q = q;
    }
    return false;
}

/* Splits one spec; fills r except the regex, whose text is returned. */
static int split_spec(const char *spec, rule_t *r, const char **re_out)
{
    const char *p = spec, *w;
    size_t n;

    while (*p == ' ' || *p == '\t')
        p++;
    w = p;
    while (*p && *p != ' ' && *p != '\t')
        p++;
    n = (size_t)(p - w);
    if (n == 3 && strncasecmp(w, "p2p", 3) == 0)
        r->action = DF_PROXY_P2P;
    else if (n == 6 && strncasecmp(w, "direct", 6) == 0)
        r->action = DF_PROXY_DIRECT;
    else
        return -EINVAL;
    while (*p == ' ' || *p == '\t')
        p++;
    w = p;
    while (*p && *p != ' ' && *p != '\t')
        p++;
    n = (size_t)(p - w);
    r->method[0] = '\0';
    if (n == 1 && *w == '*') {
        /* any method */
    } else {
        size_t i;
        for (i = 0; i < DF_ARRAY_LEN(methods); i++)
            if (strlen(methods[i]) == n && strncasecmp(w, methods[i], n) == 0)
                break;
        if (i == DF_ARRAY_LEN(methods))
            return -EINVAL;
        memcpy(r->method, methods[i], n + 1);
    }
    if (r->action == DF_PROXY_P2P && strcmp(r->method, "GET") != 0)
        return -EINVAL;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p || regex_too_costly(p))
        return -EINVAL;
    *re_out = p;
    return 0;
}

int df_proxy_rules_new(const char *const *specs, df_proxy_rules_t **out, char *err, size_t errcap)
{
    static const char *const defaults[] = {DF_PROXY_DEFAULT_RULE, NULL};
    df_proxy_rules_t *rules;
    int rc = 0;

    if (err && errcap)
        err[0] = '\0';
    if (!specs || !specs[0])
        specs = defaults;
    rules = calloc(1, sizeof(*rules));
    if (!rules)
        return -ENOMEM;
    for (size_t i = 0; specs[i]; i++) {
        rule_t *r;
        const char *re = NULL;

        if (rules->n == DF_PROXY_RULES_MAX || strlen(specs[i]) > DF_PROXY_RULE_TEXT_MAX) {
            if (err && errcap)
                snprintf(err, errcap, "too many or too long rules (at most %d of %d bytes)",
                         DF_PROXY_RULES_MAX, DF_PROXY_RULE_TEXT_MAX);
            rc = DF_ETOOBIG;
            goto out;
        }
        r = &rules->rules[rules->n];
        if (split_spec(specs[i], r, &re) < 0) {
            if (err && errcap)
                snprintf(err, errcap,
                         "rule \"%.200s\": want \"p2p GET REGEX\" or \"direct METHOD|* REGEX\" (at most 16 "
                         "quantifiers, not stacked, 2 bounds up to 255)",
                         specs[i]);
            rc = -EINVAL;
            goto out;
        }
        if (regcomp(&r->re, re, REG_EXTENDED | REG_NOSUB) != 0) {
            if (err && errcap)
                snprintf(err, errcap, "rule \"%.200s\": bad regular expression", specs[i]);
            rc = -EINVAL;
            goto out;
        }
        rules->n++;
    }
out:
    if (rc < 0) {
        df_proxy_rules_free(rules);
        return rc;
    }
    *out = rules;
    return 0;
}

void df_proxy_rules_free(df_proxy_rules_t *rules)
{
    if (!rules)
        return;
    for (size_t i = 0; i < rules->n; i++)
        regfree(&rules->rules[i].re);
    free(rules);
}

df_proxy_action_t df_proxy_rules_match(const df_proxy_rules_t *rules, const char *method, const char *path,
                                       size_t pathlen)
{
    char buf[DF_PROXY_PATH_MAX + 1];

    if (pathlen > DF_PROXY_PATH_MAX || memchr(path, '\0', pathlen))
        return DF_PROXY_DIRECT;
    memcpy(buf, path, pathlen);
    buf[pathlen] = '\0';
    for (size_t i = 0; i < rules->n; i++) {
        const rule_t *r = &rules->rules[i];
        if (r->method[0] && strcmp(r->method, method) != 0)
            continue;
        if (regexec(&r->re, buf, 0, NULL, 0) == 0)
            return r->action;
    }
    return DF_PROXY_DIRECT;
}

bool df_proxy_blob_digest(const char *path, size_t pathlen, char *out, size_t cap)
{
    static const char tail[] = "/blobs/sha256:";
    const size_t tlen = sizeof(tail) - 1, hexlen = 64;
    const char *hex;

    if (pathlen < tlen + hexlen || cap < 7 + hexlen + 1)
        return false;
    hex = path + pathlen - hexlen;
    if (memcmp(hex - tlen, tail, tlen) != 0)
        return false;
    for (size_t i = 0; i < hexlen; i++)
        if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
            return false;
    memcpy(out, "sha256:", 7);
    memcpy(out + 7, hex, hexlen);
    out[7 + hexlen] = '\0';
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

bool df_proxy_valid_host(const char *h)
{
    const char *p = h;

    if (*p == '[') {
        p++;
        if (*p == ']')
            return false;
        while (*p && *p != ']') {
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') ||
                  *p == ':' || *p == '.'))
                return false;
            p++;
        }
        if (*p != ']')
            return false;
        p++;
    } else {
        if (!host_char(*p))
            return false;
        while (host_char(*p))
            p++;
    }
    if (*p == '\0')
        return true;
    if (*p != ':' || !p[1])
        return false;
    {
        unsigned long port = 0;
        size_t digits = 0;
        for (p++; *p; p++, digits++) {
            if (*p < '0' || *p > '9' || digits >= 5)
                return false;
            port = port * 10 + (unsigned long)(*p - '0');
        }
        return port >= 1 && port <= 65535;
    }
}

static int append(char *dst, size_t cap, size_t *len, const char *src, size_t n)
{
    if (*len + n + 1 > cap)
        return -ENAMETOOLONG;
    memcpy(dst + *len, src, n);
    *len += n;
    dst[*len] = '\0';
    return 0;
}

int df_proxy_parse_ns(const char *query, size_t qlen, char *host, size_t hostcap, char *rest, size_t restcap)
{
    const char *p = query, *end = query + qlen;
    size_t restlen = 0;
    bool found = false;
    int rc = 0;

    if (!hostcap || !restcap)
        return -ENAMETOOLONG;
    host[0] = '\0';
    rest[0] = '\0';
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        size_t n = (size_t)(pe - p);

        if (!found && n >= 3 && memcmp(p, "ns=", 3) == 0) {
            size_t hl = 0;
            found = true;
            for (const char *v = p + 3; v < pe; v++) {
                char c = *v;
                if (c == '%') {
                    int hi = v + 2 < pe ? hexval(v[1]) : -1, lo = v + 2 < pe ? hexval(v[2]) : -1;
                    if (hi < 0 || lo < 0)
                        return -EINVAL;
                    c = (char)(hi * 16 + lo);
                    v += 2;
                }
                if (c == '\0')
                    return -EINVAL;
                if (hl + 1 >= hostcap)
                    return -ENAMETOOLONG;
                host[hl++] = c;
            }
            host[hl] = '\0';
            if (!df_proxy_valid_host(host))
                return -EINVAL;
        } else if (n > 0) {
            if (restlen > 0)
                rc = append(rest, restcap, &restlen, "&", 1);
            if (rc == 0)
                rc = append(rest, restcap, &restlen, p, n);
            if (rc < 0)
                return rc;
        }
        p = amp ? amp + 1 : end;
    }
    return found ? 0 : -ENOENT;
}

/* Per-host upstream settings: a config string split on spaces by hand (no
 * strtok: it is not reentrant and writes into the string). */
int df_proxy_host_parse(const char *spec, df_proxy_host_t *out, char *err, size_t errcap)
{
    const char *p = spec;
    bool scheme_set = false;
    size_t ntok = 0;

    memset(out, 0, sizeof(*out));
    while (*p) {
        const char *tok;
        size_t n;

        while (*p == ' ')
            p++;
        if (!*p)
            break;
        tok = p;
        n = strcspn(p, " ");
        p += n;
        if (ntok++ == 0) {
            if (n >= sizeof(out->authority))
                goto bad;
            memcpy(out->authority, tok, n);
            out->authority[n] = '\0';
            if (!df_proxy_valid_host(out->authority))
                goto bad;
            for (char *c = out->authority; *c; c++)
                if (*c >= 'A' && *c <= 'Z')
                    *c = (char)(*c - 'A' + 'a');
        } else if ((n == 4 && strncmp(tok, "http", 4) == 0) || (n == 5 && strncmp(tok, "https", 5) == 0)) {
            if (scheme_set)
                goto bad;
            scheme_set = true;
            out->http = n == 4;
        } else if (n == 8 && strncmp(tok, "insecure", 8) == 0) {
            if (out->insecure)
                goto bad;
            out->insecure = true;
        } else if (n > 3 && strncmp(tok, "ca=", 3) == 0) {
            if (out->ca_file[0] || n - 3 >= sizeof(out->ca_file))
                goto bad;
            memcpy(out->ca_file, tok + 3, n - 3);
            out->ca_file[n - 3] = '\0';
        } else {
            goto bad;
        }
    }
    if (ntok == 0)
        goto bad;
    return 0;
bad:
    if (err && errcap)
        snprintf(err, errcap, "registry host \"%.200s\": want \"HOST[:PORT] [http|https] [insecure] [ca=FILE]\"",
                 spec);
    return -EINVAL;
}

int df_proxy_parse_absolute(const char *uri, size_t len, char *base, size_t basecap, char *target,
                            size_t targetcap)
{
    char auth[256];
    size_t i, alen, tlen;

    if (len < 8 || strncasecmp(uri, "http://", 7) != 0)
        return -EINVAL;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)uri[i];
        /* Bytes that would split or smuggle a request line, and fragments
         * (never sent on the wire). */
        if (c <= 0x20 || c == 0x7f || c == '#')
            return -EINVAL;
    }
    uri += 7;
    len -= 7;
    alen = 0;
    while (alen < len && uri[alen] != '/' && uri[alen] != '?')
        alen++;
    if (alen == 0 || alen >= sizeof(auth))
        return -EINVAL;
    memcpy(auth, uri, alen);
    auth[alen] = '\0';
    if (!df_proxy_valid_host(auth)) /* also refuses '@' (userinfo) */
        return -EINVAL;
    for (char *p = auth; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (7 + alen + 1 > basecap)
        return -ENAMETOOLONG;
    memcpy(base, "http://", 7);
    memcpy(base + 7, auth, alen + 1);
    uri += alen;
    len -= alen;
    tlen = (len == 0 || uri[0] == '?') ? len + 1 : len;
    if (tlen + 1 > targetcap)
        return -ENAMETOOLONG;
    if (len == 0 || uri[0] == '?') {
        target[0] = '/';
        memcpy(target + 1, uri, len);
    } else {
        memcpy(target, uri, len);
    }
    target[tlen] = '\0';
    return 0;
}

/* CONNECT's authority-form target (RFC 9112 3.2.3), by hand: evhttp hands
 * it over unchecked, and what we extract ends up in a DNS lookup, a URL and
 * a certificate's subjectAltName, so only the plainest forms pass. */
int df_proxy_parse_connect(const char *target, size_t len, char *host, size_t hostcap, uint16_t *port)
{
    const char *p = target, *end = target + len, *h, *hend;
    unsigned long v = 0;
    size_t n, digits = 0;
    bool v6 = false;

    if (len == 0)
        return -EINVAL;
    if (*p == '[') {
        /* "[v6]": hex digits, ':' and '.' (an embedded IPv4) only; the
         * address itself is checked by the caller's inet_pton when it
         * matters (the connect), the shape here. */
        h = ++p;
        while (p < end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') ||
                           *p == ':' || *p == '.'))
            p++;
        if (p == end || *p != ']' || !memchr(h, ':', (size_t)(p - h)))
            return -EINVAL; /* brackets hold an IPv6 address: at least one ':' */
        hend = p++;
        v6 = true;
    } else {
        h = p;
        while (p < end && host_char(*p))
            p++;
        hend = p;
        /* A name starts and ends with a letter or digit: no "." alone, no
         * "-x" that a tool could read as an option. */
        if (hend == h || *h == '.' || *h == '-' || hend[-1] == '.' || hend[-1] == '-')
            return -EINVAL;
    }
    if (p == end || *p != ':')
        return -EINVAL; /* the port is mandatory in authority-form */
    for (p++; p < end; p++, digits++) {
        if (*p < '0' || *p > '9' || digits >= 5)
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (digits == 0 || v == 0 || v > 65535)
        return -EINVAL;
    n = (size_t)(hend - h);
    if (!v6 && n > 253)
        return -EINVAL;
    if (n + 1 > hostcap)
        return -ENAMETOOLONG;
    for (size_t i = 0; i < n; i++)
        host[i] = (h[i] >= 'A' && h[i] <= 'Z') ? (char)(h[i] - 'A' + 'a') : h[i];
    host[n] = '\0';
    *port = (uint16_t)v;
    return 0;
}

int df_proxy_format_authority(const char *host, uint16_t port, bool omit_443, char *out, size_t cap)
{
    bool v6 = strchr(host, ':') != NULL;
    int n;

    if (omit_443 && port == 443)
        n = snprintf(out, cap, v6 ? "[%s]" : "%s", host);
    else
        n = snprintf(out, cap, v6 ? "[%s]:%u" : "%s:%u", host, (unsigned)port);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}
