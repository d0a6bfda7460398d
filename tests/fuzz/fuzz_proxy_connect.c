/*
 * libFuzzer target for CONNECT's authority-form parser
 * (df_proxy_parse_connect in lib/proxy/rules.c), which sees the request
 * target of every CONNECT sent to dfdaemon's port in HTTP proxy mode.  What
 * it extracts goes into a DNS lookup, an https URL and a minted
 * certificate's subjectAltName, so besides memory errors it checks the
 * contract: on success the host is non-empty and holds only letters,
 * digits, '.', '-' (or ':' for IPv6), the port is 1..65535, and formatting
 * the authority and parsing it again gives the same host and port.
 */
#include "core/core.h"
#include "proxy/rules.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char host[256], host2[256], auth[300];
    uint16_t port = 0, port2 = 0;

    if (size > 4096)
        return 0;
    if (df_proxy_parse_connect((const char *)data, size, host, sizeof(host), &port) != 0)
        return 0;
    if (!host[0] || port == 0)
        abort();
    for (const char *p = host; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == ':'))
            abort();
    if (df_proxy_format_authority(host, port, false, auth, sizeof(auth)) != 0)
        abort();
    if (df_proxy_parse_connect(auth, strlen(auth), host2, sizeof(host2), &port2) != 0 || strcmp(host, host2) != 0 ||
        port != port2)
        abort();
    return 0;
}
