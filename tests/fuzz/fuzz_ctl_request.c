/*
 * libFuzzer target for the dfdaemon control request decoder (the one parser
 * a local client can feed the daemon).  Besides memory errors (ASan/UBSan) it
 * checks the decoder's contract: on success url and output are set, output
 * is absolute, lists are NULL-terminated within DF_CTL_LIST_MAX, headers have
 * no CR/LF; on failure the request is empty and err says why; and a decoded
 * request re-encodes to a line that decodes again.
 */
#include "core/core.h"
#include "engine/daemon_ctl.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t count(const char **list)
{
    size_t n = 0;
    while (list && list[n])
        n++;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    df__ctl_request_t r, r2;
    char err[256], *line;
    size_t len;
    int rc;

    /* The decoder must refuse anything over the cap by itself; give it a
     * little more than the cap at most, to keep runs fast. */
    if (size > DF_CTL_LINE_MAX + 16)
        return 0;
    rc = df__ctl_request_decode((const char *)data, size, &r, err, sizeof(err));
    if (rc < 0) {
        if (r.doc || r.req.url || !err[0])
            abort();
        df__ctl_request_free(&r);
        return 0;
    }
    if (!r.req.url || !*r.req.url || !r.req.output || r.req.output[0] != '/')
        abort();
    if (count(r.req.filter) > DF_CTL_LIST_MAX || count(r.req.headers) > DF_CTL_LIST_MAX)
        abort();
    for (size_t i = 0; r.req.headers && r.req.headers[i]; i++)
        if (strpbrk(r.req.headers[i], "\r\n") || !strchr(r.req.headers[i], ':'))
            abort();
    /* Round trip: what the client would send for this request decodes the
     * same way (may be DF_ETOOBIG if re-encoding grew past the cap). */
    rc = df__ctl_request_encode(&r.req, &line, &len);
    if (rc == 0) {
        if (memchr(line, '\n', len))
            abort();
        if (df__ctl_request_decode(line, len, &r2, err, sizeof(err)) != 0)
            abort();
        if (strcmp(r2.req.url, r.req.url) != 0 || strcmp(r2.req.output, r.req.output) != 0 ||
            r2.req.pattern != r.req.pattern || r2.req.no_back_source != r.req.no_back_source ||
            r2.req.local_limit_bps != r.req.local_limit_bps ||
            count(r2.req.headers) != count(r.req.headers))
            abort();
        df__ctl_request_free(&r2);
        free(line);
    } else if (rc != DF_ETOOBIG) {
        abort();
    }
    df__ctl_request_free(&r);
    return 0;
}
