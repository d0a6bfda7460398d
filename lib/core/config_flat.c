/*
 * Flat YAML config files: one mapping of scalar (or list-of-scalar) values,
 * read with libyaml's event parser and handed out entry by entry.  The
 * programs treat each entry exactly like the long flag of the same name, so
 * the file needs no schema of its own here.
 *
 * Caps: the file is read whole up to DF_CONFIG_FILE_MAX; a joined list value
 * is at most DF_CONFIG_VALUE_MAX bytes.  Aliases are refused outright (no
 * "billion laughs"), and so is nesting, which no key of ours needs.
 */
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#define DF_CONFIG_FILE_MAX (1024u * 1024u)
#define DF_CONFIG_VALUE_MAX (64u * 1024u)

static int bad(char *err, size_t errcap, const char *path, const yaml_event_t *ev, const char *what)
{
    if (err && errcap)
        snprintf(err, errcap, "%s:%lu: %s", path, ev ? (unsigned long)ev->start_mark.line + 1 : 0ul,
                 what);
    return DF_ECONFIG;
}

int df_config_load_flat(const char *path, df_config_entry_cb cb, void *arg, char *err, size_t errcap)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    bool have_ev = false, in_map = false, done = false;
    char *text = NULL, *key = NULL;
    unsigned key_line = 0;
    df_buf_t list;
    size_t len;
    int rc;

    if (err && errcap)
        err[0] = '\0';
    df_buf_init(&list, DF_CONFIG_VALUE_MAX);
    rc = df_read_file(path, DF_CONFIG_FILE_MAX, &text, &len);
    if (rc < 0) {
        if (err && errcap)
            snprintf(err, errcap, "%s: %s", path, df_strerror(rc));
        return rc;
    }
    if (!yaml_parser_initialize(&parser)) {
        free(text);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);

    /* States: outside the mapping; inside it waiting for a key (key == NULL);
     * waiting for the key's value; inside a sequence value (list.data set). */
    for (;;) {
        if (have_ev)
            yaml_event_delete(&ev);
        have_ev = false;
        if (!yaml_parser_parse(&parser, &ev)) {
            if (err && errcap)
                snprintf(err, errcap, "%s:%lu: %s", path, (unsigned long)parser.problem_mark.line + 1,
                         parser.problem ? parser.problem : "YAML syntax error");
            rc = DF_ECONFIG;
            goto out;
        }
        have_ev = true;
        switch (ev.type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (done) {
                rc = bad(err, errcap, path, &ev, "only one YAML document is allowed");
                goto out;
            }
            break;
        case YAML_STREAM_END_EVENT:
            rc = 0;
            goto out;
        case YAML_ALIAS_EVENT:
            rc = bad(err, errcap, path, &ev, "YAML aliases are not supported");
            goto out;
        case YAML_MAPPING_START_EVENT:
            if (in_map || done) {
                rc = bad(err, errcap, path, &ev, "nested mappings are not supported");
                goto out;
            }
            in_map = true;
            break;
        case YAML_MAPPING_END_EVENT:
            in_map = false;
            done = true;
            break;
        case YAML_SEQUENCE_START_EVENT:
            if (!in_map || !key || list.data) {
                rc = bad(err, errcap, path, &ev, "a list is only allowed as a value");
                goto out;
            }
            rc = df_buf_append(&list, "", 0); /* marks "inside a list" */
            if (rc < 0)
                goto out;
            break;
        case YAML_SEQUENCE_END_EVENT:
            rc = cb(key, list.data, key_line, arg);
            if (rc < 0)
                goto out;
            df_buf_free(&list);
            df_buf_init(&list, DF_CONFIG_VALUE_MAX);
            free(key);
            key = NULL;
            break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (!in_map) {
                rc = bad(err, errcap, path, &ev, "the file must be a mapping of key: value");
                goto out;
            }
            if (list.data) {
                if ((list.len > 0 && (rc = df_buf_append(&list, ",", 1)) < 0) ||
                    (rc = df_buf_append(&list, v, ev.data.scalar.length)) < 0) {
                    rc = bad(err, errcap, path, &ev, "list value too long");
                    goto out;
                }
            } else if (!key) {
                key = strdup(v);
                if (!key) {
                    rc = -ENOMEM;
                    goto out;
                }
                key_line = (unsigned)ev.start_mark.line + 1;
            } else {
                rc = cb(key, v, key_line, arg);
                if (rc < 0)
                    goto out;
                free(key);
                key = NULL;
            }
            break;
        }
        default:
            break;
        }
    }
out:
    if (have_ev)
        yaml_event_delete(&ev);
    yaml_parser_delete(&parser);
    df_buf_free(&list);
    free(key);
    free(text);
    return rc;
}
