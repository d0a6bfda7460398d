/*
 * df_config_load_flat: the public face of the YAML config reader
 * (core/config_yaml.c) for the programs, which may use only dfly.h.  The
 * reader flattens the file to key/value entries (nested keys joined with
 * '.', one entry per sequence item); here consecutive entries of one key --
 * a sequence -- are joined with ',' so a list reads like the comma-separated
 * value of the long flag of the same name.  All caps (file size, depth,
 * entries, key length) are the reader's; a joined value is at most
 * DF_CONFIG_VALUE_MAX bytes.
 */
#include "core/core.h"
#include "core/config_yaml.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define DF_CONFIG_VALUE_MAX (64u * 1024u)

int df_config_load_flat(const char *path, df_config_entry_cb cb, void *arg, char *err, size_t errcap)
{
    df_config_list_t list;
    df_buf_t value;
    int rc;

    if (err && errcap)
        err[0] = '\0';
    memset(&list, 0, sizeof(list));
    df_buf_init(&value, DF_CONFIG_VALUE_MAX);
    rc = df_config_yaml_load(path, &list, err, errcap);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < list.n;) {
        const df_config_entry_t *e = &list.entries[i];
        size_t j = i;

        df_buf_reset(&value);
        rc = df_buf_append(&value, "", 0);
        for (; rc == 0 && j < list.n && strcmp(list.entries[j].key, e->key) == 0; j++) {
            if (j > i)
                rc = df_buf_append(&value, ",", 1);
            if (rc == 0)
                rc = df_buf_append(&value, list.entries[j].value, strlen(list.entries[j].value));
        }
        if (rc < 0) {
            if (err && errcap)
                snprintf(err, errcap, "%s: line %d: value of \"%s\" too long", path, e->line, e->key);
            rc = rc == DF_ETOOBIG ? DF_ECONFIG : rc;
            goto out;
        }
        rc = cb(e->key, value.data, (unsigned)e->line, arg);
        if (rc < 0)
            goto out;
        i = j;
    }
    rc = 0;
out:
    df_buf_free(&value);
    df_config_list_free(&list);
    return rc;
}
