/*
 * The `POST /peer/seed` body (format and contract in seed_forward.h).
 * JSON by jansson; sealing by gossip_crypto.c's packet layout.  Every
 * buffer that held header values is wiped before it is freed: they are
 * credentials.
 */
#include "tracker/seed_forward.h"

#include "core/core.h"

#include <jansson.h>
#include <openssl/crypto.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void df_seedfwd_free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++) {
        OPENSSL_cleanse(v[i], strlen(v[i]));
        free(v[i]);
    }
    free(v);
}

void df_seedfwd_clear(df_seedfwd_t *r)
{
    if (!r)
        return;
    free(r->url);
    df_seedfwd_free_strv(r->headers);
    memset(r, 0, sizeof(*r));
}

static bool hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* Wipes a jansson tree's header strings before it is freed. */
static void wipe_headers(json_t *root)
{
    json_t *arr = json_object_get(root, "headers"), *v;
    size_t i;

    if (!json_is_array(arr))
        return;
    json_array_foreach(arr, i, v) {
        if (json_is_string(v))
            OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    }
}

int df_seedfwd_encode(const df_gossip_keyring_t *kr, const char *to, const char *from, const char *url,
                      const char *task_id, const char *const *headers, uint64_t ts_ms, uint8_t **out,
                      size_t *out_len)
{
    json_t *root = NULL, *arr = NULL;
    char *text = NULL;
    uint8_t *sealed = NULL;
    size_t n = 0, tlen, slen;
    int rc = -EINVAL;

    *out = NULL;
    *out_len = 0;
    if (!to || !from || !url || !task_id || strlen(to) > DF_SEEDFWD_NAME_MAX || strlen(from) > DF_SEEDFWD_NAME_MAX ||
        strlen(url) > DF_SEEDFWD_URL_MAX || !hex64(task_id))
        return -EINVAL;
    while (headers && headers[n]) {
        if (n >= DF_SEEDFWD_HEADERS_MAX || strlen(headers[n]) > DF_SEEDFWD_LINE_MAX || !df_header_line_ok(headers[n]))
            return -EINVAL;
        n++;
    }
    rc = -ENOMEM;
    root = json_object();
    arr = json_array();
    if (!root || !arr)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (json_array_append_new(arr, json_string(headers[i])) < 0)
            goto out;
    if (json_object_set_new(root, "v", json_integer(1)) < 0 || json_object_set_new(root, "to", json_string(to)) < 0 ||
        json_object_set_new(root, "from", json_string(from)) < 0 ||
        json_object_set_new(root, "url", json_string(url)) < 0 ||
        json_object_set_new(root, "task_id", json_string(task_id)) < 0 ||
        json_object_set_new(root, "ts", json_integer((json_int_t)ts_ms)) < 0 ||
        json_object_set(root, "headers", arr) < 0)
        goto out;
    text = json_dumps(root, JSON_COMPACT);
    if (!text)
        goto out;
    tlen = strlen(text);
    if (!kr) {
        rc = DF_ETOOBIG;
        if (tlen > DF_SEEDFWD_BODY_MAX)
            goto out;
        *out = (uint8_t *)text;
        *out_len = tlen;
        text = NULL;
        rc = 0;
        goto out;
    }
    rc = DF_ETOOBIG;
    if (tlen + DF_GOSSIP_ENCRYPT_OVERHEAD > DF_SEEDFWD_BODY_MAX)
        goto out;
    rc = -ENOMEM;
    sealed = malloc(tlen + DF_GOSSIP_ENCRYPT_OVERHEAD);
    if (!sealed)
        goto out;
    rc = df_gossip_encrypt_packet(kr, (const uint8_t *)text, tlen, sealed, tlen + DF_GOSSIP_ENCRYPT_OVERHEAD, &slen);
    if (rc < 0)
        goto out;
    *out = sealed;
    *out_len = slen;
    sealed = NULL;
out:
    if (text) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    free(sealed);
    if (root)
        wipe_headers(root);
    json_decref(arr);
    json_decref(root);
    return rc;
}

static const char *str_field(json_t *root, const char *key, size_t max)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_string(v) || json_string_length(v) > max || strlen(json_string_value(v)) != json_string_length(v))
        return NULL;
    return json_string_value(v);
}

int df_seedfwd_decode(const df_gossip_keyring_t *kr, const uint8_t *body, size_t len, df_seedfwd_t *out,
                      char *err, size_t errcap)
{
    uint8_t *plain = NULL;
    size_t plen = 0, n;
    json_t *root = NULL, *arr, *v;
    json_error_t jerr;
    const char *to, *from, *url, *id;
    int rc;

    memset(out, 0, sizeof(*out));
    if (len > DF_SEEDFWD_BODY_MAX) {
        df_errf(err, errcap, "body over %u bytes", DF_SEEDFWD_BODY_MAX);
        return DF_ETOOBIG;
    }
    if (kr) {
        plain = malloc(len ? len : 1);
        if (!plain)
            return -ENOMEM;
        rc = df_gossip_decrypt_packet(kr, body, len, plain, len, &plen);
        if (rc < 0) {
            df_errf(err, errcap, "the body is not sealed with a cluster key");
            rc = -EBADMSG;
            goto out;
        }
        root = json_loadb((const char *)plain, plen, JSON_REJECT_DUPLICATES, &jerr);
    } else {
        root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    }
    rc = DF_EPROTO;
    if (!json_is_object(root)) {
        df_errf(err, errcap, "not a JSON object");
        goto out;
    }
    v = json_object_get(root, "v");
    to = str_field(root, "to", DF_SEEDFWD_NAME_MAX);
    from = str_field(root, "from", DF_SEEDFWD_NAME_MAX);
    url = str_field(root, "url", DF_SEEDFWD_URL_MAX);
    id = str_field(root, "task_id", 64);
    arr = json_object_get(root, "headers");
    if (!json_is_integer(v) || json_integer_value(v) != 1 || !to || !from || !url || !*url || !id || !hex64(id) ||
        !json_is_integer(json_object_get(root, "ts")) || json_integer_value(json_object_get(root, "ts")) < 0 ||
        !json_is_array(arr) || json_array_size(arr) > DF_SEEDFWD_HEADERS_MAX) {
        df_errf(err, errcap, "missing or bad field (v, to, from, url, task_id, ts, headers)");
        goto out;
    }
    df_strlcpy(out->to, to, sizeof(out->to));
    df_strlcpy(out->from, from, sizeof(out->from));
    df_strlcpy(out->task_id, id, sizeof(out->task_id));
    out->ts_ms = (uint64_t)json_integer_value(json_object_get(root, "ts"));
    rc = -ENOMEM;
    out->headers = calloc(json_array_size(arr) + 1, sizeof(char *));
    if (!out->headers || !(out->url = strdup(url)))
        goto out;
    json_array_foreach(arr, n, v) {
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;
        if (!s || json_string_length(v) > DF_SEEDFWD_LINE_MAX || strlen(s) != json_string_length(v) ||
            !df_header_line_ok(s)) {
            df_errf(err, errcap, "header line %zu is not \"Name: value\"", n);
            rc = DF_EPROTO;
            goto out;
        }
        if (!(out->headers[n] = strdup(s)))
            goto out;
    }
    rc = 0;
out:
    if (root)
        wipe_headers(root);
    json_decref(root);
    if (plain) {
        OPENSSL_cleanse(plain, plen);
        free(plain);
    }
    if (rc < 0)
        df_seedfwd_clear(out);
    return rc;
}
