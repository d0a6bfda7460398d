/*
 * libFuzzer target for the registry manifest parser
 * (df_registry_manifest_parse in lib/proxy/registry.c), which reads what
 * any registry a preheat names sends back.  The first input byte picks the
 * Content-Type passed along.  Besides memory errors it checks the contract:
 * on success every descriptor's digest is "sha256:" + 64 lower-case hex and
 * there are at most DF_REGISTRY_DESCS_MAX of them; on failure nothing is
 * left allocated and a reason is given.  The preheat request decoder
 * (df_sn_decode_preheat) gets the same bytes.
 */
#include "core/core.h"
#include "proxy/registry.h"
#include "supernode/preheat.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const types[] = {NULL, "application/vnd.oci.image.index.v1+json",
                                        "application/vnd.docker.distribution.manifest.v2+json",
                                        "application/vnd.docker.distribution.manifest.v1+prettyjws"};
    df_registry_manifest_t m;
    df_sn_preheat_req_t r;
    char err[256];

    if (size < 1 || size > 256 * 1024)
        return 0;
    err[0] = '\0';
    if (df_registry_manifest_parse((const char *)data + 1, size - 1, types[data[0] & 3], &m, err, sizeof(err)) == 0) {
        if (m.ndescs > DF_REGISTRY_DESCS_MAX)
            abort();
        for (size_t i = 0; i < m.ndescs; i++) {
            const char *d = m.descs[i].digest;
            if (strncmp(d, "sha256:", 7) != 0 || strlen(d) != 71 || strspn(d + 7, "0123456789abcdef") != 64)
                abort();
        }
        df_registry_manifest_clear(&m);
    } else if (m.descs || m.ndescs || !err[0]) {
        abort();
    }
    if (df_sn_decode_preheat((const char *)data, size, &r, err, sizeof(err)) == 0) {
        if (!r.url)
            abort();
        df_sn_preheat_req_clear(&r);
    }
    return 0;
}
