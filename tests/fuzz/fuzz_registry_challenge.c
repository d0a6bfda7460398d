/*
 * libFuzzer target for the WWW-Authenticate Bearer challenge parser
 * (df_registry_parse_bearer in lib/proxy/registry.c): a registry's answer
 * whose realm becomes the URL of the next request.  Besides memory errors it
 * checks the contract: on success the realm is an http(s) URL without
 * blanks or control bytes, and every value fits its buffer.
 */
#include "core/core.h"
#include "proxy/registry.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char in[4096], realm[256], service[64], scope[64];

    if (size >= sizeof(in))
        return 0;
    memcpy(in, data, size);
    in[size] = '\0';
    if (df_registry_parse_bearer(in, realm, sizeof(realm), service, sizeof(service), scope, sizeof(scope)) == 0) {
        if (strncmp(realm, "http://", 7) != 0 && strncmp(realm, "https://", 8) != 0)
            abort();
        for (const char *p = realm; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f)
                abort();
        if (strlen(realm) >= sizeof(realm) || strlen(service) >= sizeof(service) || strlen(scope) >= sizeof(scope))
            abort();
    }
    free(df_registry_parse_token((const char *)data, size));
    return 0;
}
