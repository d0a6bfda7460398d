/*
 * Supernode configuration: defaults and the YAML file.
 *
 * The file's keys are the command line's long flag names, flat:
 *
 *   listen: 0.0.0.0:8002
 *   data-dir: /var/lib/dfly/supernode
 *   cache-limit: 20G
 *   peer-timeout: 60s
 *
 * Unknown keys are errors (a typo must not silently fall back to a
 * default).  Strings handed out in the config point into an arena that lives
 * until exit (freed by an atexit handler, so leak checkers stay quiet).
 */
#include "core/config_yaml.h"
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char **g_strings;
static size_t g_nstrings;

static void free_strings(void)
{
    for (size_t i = 0; i < g_nstrings; i++)
        free(g_strings[i]);
    free(g_strings);
    g_strings = NULL;
    g_nstrings = 0;
}

/* A copy of s kept until exit, or NULL on ENOMEM. */
static const char *keep(const char *s)
{
    char **n;
    char *c;

    if (!g_strings)
        atexit(free_strings);
    n = realloc(g_strings, (g_nstrings + 1) * sizeof(*n));
    if (!n)
        return NULL;
    g_strings = n;
    c = strdup(s);
    if (!c)
        return NULL;
    g_strings[g_nstrings++] = c;
    return c;
}

static int parse_u32(const char *v, uint32_t *out)
{
    uint64_t x;
    if (df_parse_u64(v, &x) < 0 || x == 0 || x > 1u << 20)
        return -EINVAL;
    *out = (uint32_t)x;
    return 0;
}

int df_supernode_config_load(df_supernode_config_t *cfg, const char *path, char *err, size_t errcap)
{
    df_config_list_t list = {0};
    char host[256];
    uint16_t port;
    int rc;

    rc = df_config_yaml_load(path, &list, err, errcap);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < list.n; i++) {
        const char *k = list.entries[i].key, *v = list.entries[i].value;
        const char *what = NULL;
        int bad = 0;

        if (strcmp(k, "listen") == 0) {
            const char *h;
            bad = df_parse_hostport(v, host, sizeof(host), &port) < 0;
            if (!bad) {
                if (!(h = keep(host)))
                    goto nomem;
                cfg->listen_host = h;
                cfg->listen_port = port;
            }
            what = "HOST:PORT";
        } else if (strcmp(k, "data-dir") == 0 || strcmp(k, "advertise-ip") == 0) {
            const char *s;
            bad = v[0] == '\0';
            if (!bad) {
                if (!(s = keep(v)))
                    goto nomem;
                if (k[0] == 'd')
                    cfg->data_dir = s;
                else
                    cfg->advertise_ip = s;
            }
            what = "a non-empty string";
        } else if (strcmp(k, "cache-limit") == 0) {
            bad = df_parse_size(v, &cfg->cache_limit_bytes) < 0;
            what = "a size like 20G";
        } else if (strcmp(k, "piece-size") == 0) {
            bad = df_parse_size(v, &cfg->piece_size) < 0;
            what = "a size like 4M";
        } else if (strcmp(k, "peer-timeout") == 0) {
            bad = df_parse_duration_ms(v, &cfg->peer_timeout_ms) < 0 || cfg->peer_timeout_ms == 0;
            what = "a duration like 60s";
        } else if (strcmp(k, "origin-timeout") == 0) {
            bad = df_parse_duration_ms(v, &cfg->origin_timeout_ms) < 0 || cfg->origin_timeout_ms == 0;
            what = "a duration like 30s";
        } else if (strcmp(k, "peer-upload-slots") == 0) {
            bad = parse_u32(v, &cfg->peer_upload_slots) < 0;
            what = "a positive integer";
        } else if (strcmp(k, "seed-upload-slots") == 0) {
            bad = parse_u32(v, &cfg->seed_upload_slots) < 0;
        } else if (strcmp(k, "seed-piece-limit") == 0) {
            uint64_t n;
            bad = df_parse_u64(v, &n) < 0 || n > 1024;
            if (!bad)
                cfg->seed_piece_limit = (uint32_t)n;
            what = "a positive integer";
        } else if (strcmp(k, "hash-threads") == 0) {
            uint64_t n;
            bad = df_parse_u64(v, &n) < 0 || n > 1;
            if (!bad)
                cfg->hash_threads = (uint32_t)n;
            what = "0 or 1";
        } else if (strcmp(k, "batch-pieces") == 0) {
            bad = parse_u32(v, &cfg->batch_pieces) < 0;
            what = "a positive integer";
        } else if (strcmp(k, "log-level") == 0) {
            /* Not part of the config struct: applied to the process log
             * here; a --log-level flag parsed later overrides it. */
            df_log_level_t level;
            bad = df_parse_log_level(v, &level) < 0;
            if (!bad)
                df_log_setup(NULL, level);
            what = "error, warn, info or debug";
        } else {
            if (err && errcap)
                snprintf(err, errcap, "%s: line %d: unknown key \"%s\"", path, list.entries[i].line, k);
            rc = DF_ECONFIG;
            goto out;
        }
        if (bad) {
            if (err && errcap)
                snprintf(err, errcap, "%s: line %d: %s must be %s (got \"%s\")", path,
                         list.entries[i].line, k, what, v);
            rc = DF_ECONFIG;
            goto out;
        }
    }
    rc = 0;
    goto out;
nomem:
    rc = -ENOMEM;
    if (err && errcap)
        snprintf(err, errcap, "out of memory");
out:
    df_config_list_free(&list);
    return rc;
}
