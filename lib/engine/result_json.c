/*
 * df_download_result_t <-> JSON.  dfget --json prints the object, and the
 * dfdaemon control socket carries it back to dfget, so both directions live
 * here, next to each other, and cannot drift apart.
 *
 * Byte counts are JSON integers; jansson's integers are signed 64-bit, so
 * values above INT64_MAX (never reached by a real file) are clamped.
 */
#include "core/core.h"
#include "engine/daemon_ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static json_int_t to_jint(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? (json_int_t)INT64_MAX : (json_int_t)v;
}

/* The struct's strings come from the engine or from the wire; jansson
 * refuses invalid UTF-8, so fall back to "" rather than dropping the key. */
static json_t *safe_string(const char *s)
{
    json_t *v = json_string(s);
    return v ? v : json_string("");
}

json_t *df__download_result_to_json(const df_download_result_t *res)
{
    json_t *o = json_object();
    int rc = 0;

    if (!o)
        return NULL;
    rc |= json_object_set_new(o, "status", json_string(res->status == 0 ? "ok" : "error"));
    if (res->status != 0)
        rc |= json_object_set_new(o, "error", res->reason[0] ? safe_string(res->reason)
                                                             : json_string(df_strerror(res->status)));
    rc |= json_object_set_new(o, "code", json_integer(res->status));
    rc |= json_object_set_new(o, "task_id", safe_string(res->task_id));
    rc |= json_object_set_new(o, "length", json_integer(to_jint(res->length)));
    rc |= json_object_set_new(o, "seconds", json_real(res->seconds));
    rc |= json_object_set_new(o, "bytes_from_peers", json_integer(to_jint(res->bytes_from_peers)));
    rc |= json_object_set_new(o, "bytes_from_supernode",
                              json_integer(to_jint(res->bytes_from_supernode)));
    rc |= json_object_set_new(o, "bytes_from_origin", json_integer(to_jint(res->bytes_from_origin)));
    rc |= json_object_set_new(o, "back_source", json_boolean(res->back_source));
    rc |= json_object_set_new(o, "reason", safe_string(res->reason));
    rc |= json_object_set_new(o, "digest", safe_string(res->digest));
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

char *df_download_result_json(const df_download_result_t *res)
{
    json_t *o = df__download_result_to_json(res);
    char *s;

    if (!o)
        return NULL;
    s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

static int get_u64(const json_t *obj, const char *key, uint64_t *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return DF_EPROTO;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_str(const json_t *obj, const char *key, char *dst, size_t cap)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return DF_EPROTO;
    /* Truncation is acceptable: these are display strings. */
    df_strlcpy(dst, json_string_value(v), cap);
    return 0;
}

int df__download_result_from_json(const json_t *obj, df_download_result_t *res)
{
    const json_t *v;
    const char *status;

    memset(res, 0, sizeof(*res));
    if (!json_is_object(obj))
        return DF_EPROTO;
    v = json_object_get(obj, "status");
    if (!json_is_string(v))
        return DF_EPROTO;
    status = json_string_value(v);
    if (strcmp(status, "ok") != 0 && strcmp(status, "error") != 0)
        return DF_EPROTO;
    v = json_object_get(obj, "code");
    if (v) {
        /* Only 0 and negative codes exist; anything else is a lie. */
        if (!json_is_integer(v) || json_integer_value(v) > 0 || json_integer_value(v) < -100000)
            return DF_EPROTO;
        res->status = (int)json_integer_value(v);
    }
    if (strcmp(status, "ok") == 0 && res->status != 0)
        return DF_EPROTO;
    if (strcmp(status, "error") == 0 && res->status == 0)
        res->status = DF_ETASK;
    if (get_str(obj, "task_id", res->task_id, sizeof(res->task_id)) < 0 ||
        get_u64(obj, "length", &res->length) < 0 ||
        get_u64(obj, "bytes_from_peers", &res->bytes_from_peers) < 0 ||
        get_u64(obj, "bytes_from_supernode", &res->bytes_from_supernode) < 0 ||
        get_u64(obj, "bytes_from_origin", &res->bytes_from_origin) < 0 ||
        get_str(obj, "reason", res->reason, sizeof(res->reason)) < 0 ||
        get_str(obj, "digest", res->digest, sizeof(res->digest)) < 0)
        return DF_EPROTO;
    v = json_object_get(obj, "seconds");
    if (v) {
        if (!json_is_number(v) || json_number_value(v) < 0)
            return DF_EPROTO;
        res->seconds = json_number_value(v);
    }
    v = json_object_get(obj, "back_source");
    if (v) {
        if (!json_is_boolean(v))
            return DF_EPROTO;
        res->back_source = json_is_true(v);
    }
    return 0;
}
