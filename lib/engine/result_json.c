/* The download result as one JSON object: dfget --json prints it and the
 * dfdaemon control socket carries it. */
#include "core/core.h"

#include <jansson.h>

char *df_download_result_json(const df_download_result_t *res)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:f, s:I, s:I, s:I, s:b, s:s, s:s}", "status",
                          res->status == 0 ? "ok" : "error", "task_id", res->task_id, "length",
                          (json_int_t)res->length, "seconds", res->seconds, "bytes_from_peers",
                          (json_int_t)res->bytes_from_peers, "bytes_from_supernode",
                          (json_int_t)res->bytes_from_supernode, "bytes_from_origin",
                          (json_int_t)res->bytes_from_origin, "back_source", res->back_source, "reason",
                          res->reason, "digest", res->digest);
    char *s;

    if (!o)
        return NULL;
    if (res->status != 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", res->reason[0] ? res->reason : df_strerror(res->status));
        json_object_set_new(o, "error", json_string(msg));
    }
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}
