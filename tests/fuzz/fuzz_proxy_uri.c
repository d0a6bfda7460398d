/*
 * libFuzzer target for the HTTP proxy request target parser
 * (df_proxy_parse_absolute in lib/proxy/rules.c), which sees the request
 * line of any client that uses dfdaemon as its HTTP_PROXY.  Besides memory
 * errors it checks the contract: on success base is "http://" + a valid
 * host, the target starts with '/', and neither holds a byte that could
 * split a request line.
 */
#include "core/core.h"
#include "proxy/rules.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char base[300], target[1024];

    if (size > 8192)
        return 0;
    if (df_proxy_parse_absolute((const char *)data, size, base, sizeof(base), target, sizeof(target)) == 0) {
        if (strncmp(base, "http://", 7) != 0 || !df_proxy_valid_host(base + 7) || target[0] != '/')
            abort();
        for (const char *p = target; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f)
                abort();
    }
    return 0;
}
