/*
 * Option values the programs share: the supernode list of --node, the log
 * level names of --log-level, the default work home and the check of an
 * origin header line (dfget's --header and dfdaemon's control socket).  They live here, in
 * the library, so that dfget and dfdaemon (and their config files) cannot
 * come to disagree on what a value means.
 */
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An entry is at most this long (a host name of 255 bytes, brackets, port). */
#define NODE_ENTRY_MAX 300

void df_node_list_free(char **list)
{
    for (size_t i = 0; list && list[i]; i++)
        free(list[i]);
    free(list);
}

/* Checks one entry of len bytes at p and writes its "host:port" form into
 * out (cap bytes).  0 or -EINVAL. */
static int normalize_node(const char *p, size_t len, char *out, size_t cap)
{
    char item[NODE_ENTRY_MAX + 8], host[256];
    uint16_t port;
    int n;

    if (len == 0 || len > NODE_ENTRY_MAX)
        return -EINVAL;
    memcpy(item, p, len);
    item[len] = '\0';
    if (df_parse_hostport(item, host, sizeof(host), &port) < 0) {
        /* No port: only a plain host name or IPv4 address may omit it (an
         * unbracketed "::1" would be ambiguous). */
        if (strchr(item, ':') || item[0] == '[')
            return -EINVAL;
        n = snprintf(out, cap, "%s:%d", item, DF_NODE_DEFAULT_PORT);
        return n < 0 || (size_t)n >= cap ? -EINVAL : 0;
    }
    /* df_parse_hostport splits at the last ':', so "::1:80" gives host
     * "::1": an IPv6 host must be bracketed. */
    if (port == 0 || (item[0] != '[' && strchr(host, ':')))
        return -EINVAL;
    n = snprintf(out, cap, "%s", item);
    return n < 0 || (size_t)n >= cap ? -EINVAL : 0;
}

int df_parse_node_list(const char *text, char ***out)
{
    char **list = NULL;
    char entry[NODE_ENTRY_MAX + 8];
    const char *p = text;
    size_t n = 0;
    int rc;

    if (!text || !*text)
        return -EINVAL;
    list = calloc(DF_NODE_LIST_MAX + 1, sizeof(*list));
    if (!list)
        return -ENOMEM;
    for (;;) {
        size_t len = strcspn(p, ",");

        if (n >= DF_NODE_LIST_MAX) {
            rc = -EINVAL;
            goto out;
        }
        rc = normalize_node(p, len, entry, sizeof(entry));
        if (rc < 0)
            goto out;
        list[n] = strdup(entry);
        if (!list[n]) {
            rc = -ENOMEM;
            goto out;
        }
        n++;
        p += len;
        if (*p == '\0')
            break;
        p++; /* the ',': a trailing one leaves an empty entry, refused above */
    }
    *out = list;
    list = NULL;
    rc = (int)n;
out:
    df_node_list_free(list);
    return rc;
}

int df_parse_log_level(const char *text, df_log_level_t *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    for (size_t i = 0; text && i < DF_ARRAY_LEN(names); i++) {
        if (strcasecmp(text, names[i]) == 0) {
            *out = (df_log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

int df_default_home(char *out, size_t cap)
{
    const char *h = getenv("HOME");
    int n;

    if (!h || !*h)
        h = "/root";
    n = snprintf(out, cap, "%s/.dfly", h);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

bool df_header_line_ok(const char *line)
{
    const char *colon = line ? strchr(line, ':') : NULL;

    if (!colon || colon == line || strpbrk(line, "\r\n"))
        return false;
    for (const char *p = line; p < colon; p++)
        if (*p <= ' ' || *p >= 127)
            return false;
    return true;
}
