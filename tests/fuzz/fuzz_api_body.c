/*
 * libFuzzer target for the supernode's request-body decoders
 * (lib/supernode/api_codec.c).  The first byte picks the decoder, the rest
 * is the body.  Besides memory errors (ASan/UBSan) it checks the decoders'
 * contracts: on success every required field is present and within its cap
 * (and the task id derivation accepts what Register accepted); on failure
 * the output struct is left cleared.
 */
#include "core/core.h"
#include "supernode/api_codec.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_register(const char *body, size_t len)
{
    df_sn_register_req_t r;
    char err[256], id[65];

    if (df_sn_decode_register(body, len, &r, err, sizeof(err)) < 0) {
        if (r.url || r.peer_ip || r.headers || r.filter)
            abort();
        return;
    }
    if (!r.url || !r.peer_ip || !r.peer_hostname || strlen(r.url) > DF_SN_URL_MAX ||
        r.nfilter > DF_SN_FILTER_MAX || r.nheaders > DF_SN_HEADERS_MAX)
        abort();
    for (size_t i = 0; i < r.nheaders; i++)
        if (!strchr(r.headers[i], ':') || strpbrk(r.headers[i], "\r\n"))
            abort();
    {
        char *tu = df_sn_task_url(r.url, r.filter, r.nfilter);
        if (tu) {
            if (strlen(tu) > strlen(r.url) + 1)
                abort();
            if (df_sn_task_id(tu, r.digest, r.identifier, id) == 0 && !df_sn_is_task_id(id))
                abort();
            free(tu);
        }
    }
    {
        char pid[DF_SN_PEER_ID_MAX];
        if (df_sn_peer_id(r.peer_hostname, r.peer_ip, r.peer_port, pid, sizeof(pid)) < 0)
            abort(); /* the caps guarantee the id fits */
    }
    df_sn_register_req_clear(&r);
}

static void check_pull(const char *body, size_t len)
{
    df_sn_pull_req_t r;
    char err[256];

    if (df_sn_decode_pull(body, len, &r, err, sizeof(err)) < 0) {
        if (r.task_id || r.results)
            abort();
        return;
    }
    if (!df_sn_is_task_id(r.task_id) || !r.peer_id || r.nresults > DF_SN_RESULTS_MAX)
        abort();
    for (size_t i = 0; i < r.nresults; i++)
        if (!r.results[i].src)
            abort();
    df_sn_pull_req_clear(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body;
    char err[256];

    if (size < 1 || size > DF_SN_BODY_MAX + 16)
        return 0;
    body = (const char *)data + 1;
    size--;
    switch (data[0] % 5) {
    case 0:
        check_register(body, size);
        break;
    case 1:
        check_pull(body, size);
        break;
    case 2: {
        df_sn_down_req_t r;
        if (df_sn_decode_service_down(body, size, &r, err, sizeof(err)) == 0) {
            if (!r.peer_id || (r.task_id && !df_sn_is_task_id(r.task_id)))
                abort();
            df_sn_down_req_clear(&r);
        }
        break;
    }
    case 3: {
        df_sn_error_req_t r;
        if (df_sn_decode_error(body, size, &r, err, sizeof(err)) == 0) {
            if (!r.src || !df_sn_is_task_id(r.task_id) || r.kind > DF_SN_ERR_SLOW)
                abort();
            df_sn_error_req_clear(&r);
        }
        break;
    }
    default: {
        df_sn_heartbeat_req_t r;
        if (df_sn_decode_heartbeat(body, size, &r, err, sizeof(err)) == 0) {
            if (!r.peer_id)
                abort();
            df_sn_heartbeat_req_clear(&r);
        }
        break;
    }
    }
    return 0;
}
