/*
 * libFuzzer target for the registry mirror's hand-written parsers
 * (lib/proxy/rules.c): the rule spec splitter, the rule matcher, the blob
 * digest extractor and the ?ns= query parser, all of which see
 * network-fed or config-fed text.  The first input byte chooses the
 * function, the rest is its input.  Besides memory errors it checks the
 * contracts: a parsed ns is a valid host, rest never contains an ns
 * parameter taken from the input, a digest is "sha256:" + 64 hex.
 */
#include "core/core.h"
#include "proxy/rules.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static df_proxy_rules_t *default_rules(void)
{
    static df_proxy_rules_t *r;
    if (!r && df_proxy_rules_new(NULL, &r, NULL, 0) < 0)
        abort();
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char host[64], rest[256], digest[80], *s;
    df_proxy_rules_t *rules = NULL;
    int rc;

    if (size < 1 || size > 8192)
        return 0;
    s = malloc(size);
    if (!s)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    switch (data[0] % 4) {
    case 0: {
        /* a rule spec, then match a few paths with it */
        const char *specs[] = {s, NULL};
        if (strlen(s) <= 256 && df_proxy_rules_new(specs, &rules, host, sizeof(host)) == 0) {
            df_proxy_rules_match(rules, "GET", "/v2/a/blobs/sha256:00", 22);
            df_proxy_rules_match(rules, "HEAD", s, strlen(s));
            df_proxy_rules_free(rules);
        }
        break;
    }
    case 1:
        df_proxy_rules_match(default_rules(), "GET", s, size - 1); /* may contain NULs */
        break;
    case 2:
        if (df_proxy_blob_digest(s, size - 1, digest, sizeof(digest)) &&
            (strlen(digest) != 71 || strncmp(digest, "sha256:", 7) != 0))
            abort();
        break;
    default:
        rc = df_proxy_parse_ns(s, size - 1, host, sizeof(host), rest, sizeof(rest));
        if (rc == 0 && !df_proxy_valid_host(host))
            abort();
        if (rc != 0 && rc != -ENOENT && rc != -EINVAL && rc != -ENAMETOOLONG)
            abort();
        if ((rc == 0 || rc == -ENOENT) && strlen(rest) >= sizeof(rest))
            abort();
        break;
    }
    free(s);
    return 0;
}
