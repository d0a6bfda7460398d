/* libFuzzer target: YAML config flattening from memory.  Checks the output's
 * invariants, not just the absence of crashes. */
#include "core/config_yaml.h"
#include "core/core.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    df_config_list_t l;
    char err[256];
    int rc;

    rc = df_config_yaml_parse((const char *)data, size, &l, err, sizeof(err));
    if (rc == 0) {
        if (l.n > DF_CONFIG_ENTRIES_MAX)
            abort();
        for (size_t i = 0; i < l.n; i++) {
            if (!l.entries[i].key || !l.entries[i].value || l.entries[i].line < 1 ||
                strlen(l.entries[i].key) == 0 || strlen(l.entries[i].key) >= DF_CONFIG_KEY_MAX)
                abort();
        }
        if (l.n && df_config_get(&l, l.entries[l.n - 1].key) != l.entries[l.n - 1].value)
            abort();
    } else {
        /* Errors leave an empty list and a "line N: ..." message. */
        if (l.n != 0 || l.entries != NULL || (rc != -ENOMEM && strncmp(err, "line ", 5) != 0))
            abort();
    }
    df_config_list_free(&l);
    return 0;
}
