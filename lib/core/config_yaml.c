/*
 * YAML config flattening (see config_yaml.h for the output's shape).
 *
 * Built on libyaml's event parser, not its document loader: events arrive
 * one at a time and we keep only a stack of open collections, so memory is
 * bounded by the caps below rather than by the document's shape, and an
 * alias is refused the moment it appears instead of being expanded.
 *
 * The joined key lives in one buffer, `path`.  Each open collection
 * (frame) remembers `base`, the length of the key prefix it was opened
 * under; a mapping also remembers `keylen`, the length of path once its
 * current key was appended.  Children only ever write past their parent's
 * prefix, so a frame can always cut path back to its own length and find
 * its prefix intact.
 */
#include "core/config_yaml.h"

#include "core/core.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct {
    bool is_map;
    bool want_value; /* mapping: a key was read, its value is next */
    size_t base;     /* key prefix length for this collection */
    size_t keylen;   /* mapping: path length including the current key */
} frame_t;

typedef struct {
    df_config_list_t *out;
    size_t alloc;
    char path[DF_CONFIG_KEY_MAX];
    frame_t stack[DF_CONFIG_DEPTH_MAX];
    int depth;
    int docs;
    char *err;
    size_t errcap;
} parse_t;

static int fail(parse_t *p, int rc, size_t line0, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Formats "line N: <message>" into the caller's buffer; returns rc. */
static int fail(parse_t *p, int rc, size_t line0, const char *fmt, ...)
{
    char msg[200];
    va_list ap;

    if (p->err && p->errcap) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        snprintf(p->err, p->errcap, "line %zu: %s", line0 + 1, msg);
    }
    return rc;
}

static int emit(parse_t *p, size_t keylen, const char *value, size_t vlen, size_t line0)
{
    df_config_entry_t *e;

    if (p->out->n >= DF_CONFIG_ENTRIES_MAX)
        return fail(p, DF_ETOOBIG, line0, "more than %d entries", DF_CONFIG_ENTRIES_MAX);
    if (p->out->n == p->alloc) {
        size_t nalloc = p->alloc ? p->alloc * 2 : 16;
        df_config_entry_t *ne = realloc(p->out->entries, nalloc * sizeof(*ne));
        if (!ne)
            return fail(p, -ENOMEM, line0, "out of memory");
        p->out->entries = ne;
        p->alloc = nalloc;
    }
    e = &p->out->entries[p->out->n];
    e->key = strndup(p->path, keylen);
    e->value = strndup(value, vlen);
    e->line = (int)DF_MIN(line0 + 1, (size_t)INT32_MAX);
    if (!e->key || !e->value) {
        free(e->key);
        free(e->value);
        return fail(p, -ENOMEM, line0, "out of memory");
    }
    p->out->n++;
    return 0;
}

/* A mapping key: path = path[0..f->base] + "." + key. */
static int set_key(parse_t *p, frame_t *f, const char *key, size_t klen, size_t line0)
{
    size_t need = f->base + (f->base ? 1 : 0) + klen;

    if (klen == 0)
        return fail(p, DF_ECONFIG, line0, "empty key");
    if (need >= sizeof(p->path))
        return fail(p, DF_ETOOBIG, line0, "key longer than %d bytes", DF_CONFIG_KEY_MAX - 1);
    if (f->base)
        p->path[f->base] = '.';
    memcpy(p->path + need - klen, key, klen);
    p->path[need] = '\0';
    f->keylen = need;
    f->want_value = true;
    return 0;
}

static int on_scalar(parse_t *p, const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    size_t vlen = ev->data.scalar.length;
    size_t line0 = ev->start_mark.line;
    frame_t *f;
    int rc;

    if (p->depth == 0) {
        /* "---" alone (or "~") is an empty document: no entries. */
        if (vlen == 0 || (vlen == 1 && v[0] == '~'))
            return 0;
        return fail(p, DF_ECONFIG, line0, "the document must be a mapping");
    }
    if (memchr(v, '\0', vlen))
        return fail(p, DF_ECONFIG, line0, "NUL byte in a scalar");
    f = &p->stack[p->depth - 1];
    if (!f->is_map)
        return emit(p, f->base, v, vlen, line0);
    if (!f->want_value)
        return set_key(p, f, v, vlen, line0);
    rc = emit(p, f->keylen, v, vlen, line0);
    f->want_value = false;
    return rc;
}

static int on_collection_start(parse_t *p, const yaml_event_t *ev, bool is_map)
{
    size_t line0 = ev->start_mark.line;
    frame_t *parent, *f;
    size_t base;

    if (p->depth == 0) {
        if (!is_map)
            return fail(p, DF_ECONFIG, line0, "the document must be a mapping");
        base = 0;
    } else {
        parent = &p->stack[p->depth - 1];
        if (parent->is_map && !parent->want_value)
            return fail(p, DF_ECONFIG, line0, "complex mapping keys are not supported");
        base = parent->is_map ? parent->keylen : parent->base;
    }
    if (p->depth >= DF_CONFIG_DEPTH_MAX)
        return fail(p, DF_ETOOBIG, line0, "nested deeper than %d levels", DF_CONFIG_DEPTH_MAX);
    f = &p->stack[p->depth++];
    memset(f, 0, sizeof(*f));
    f->is_map = is_map;
    f->base = base;
    return 0;
}

static void on_collection_end(parse_t *p)
{
    /* libyaml guarantees balanced start/end events. */
    if (p->depth > 0)
        p->depth--;
    if (p->depth > 0 && p->stack[p->depth - 1].is_map)
        p->stack[p->depth - 1].want_value = false;
}

static int on_event(parse_t *p, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (p->docs++ > 0)
            return fail(p, DF_ECONFIG, ev->start_mark.line, "more than one document");
        return 0;
    case YAML_ALIAS_EVENT:
        return fail(p, DF_ECONFIG, ev->start_mark.line, "aliases are not supported");
    case YAML_SCALAR_EVENT:
        return on_scalar(p, ev);
    case YAML_MAPPING_START_EVENT:
        return on_collection_start(p, ev, true);
    case YAML_SEQUENCE_START_EVENT:
        return on_collection_start(p, ev, false);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        on_collection_end(p);
        return 0;
    default:
        return 0;
    }
}

int df_config_yaml_parse(const char *data, size_t len, df_config_list_t *out, char *err,
                         size_t errcap)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    parse_t p;
    bool done = false;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    memset(&p, 0, sizeof(p));
    p.out = out;
    p.err = err;
    p.errcap = errcap;
    if (err && errcap)
        err[0] = '\0';
    if (len > DF_CONFIG_FILE_MAX)
        return fail(&p, DF_ETOOBIG, 0, "file larger than %u bytes", DF_CONFIG_FILE_MAX);

    if (!yaml_parser_initialize(&parser))
        return fail(&p, -ENOMEM, 0, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = fail(&p, DF_ECONFIG, parser.problem_mark.line, "%s%s%s",
                      parser.problem ? parser.problem : "syntax error",
                      parser.context ? " " : "", parser.context ? parser.context : "");
            break;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        rc = on_event(&p, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (rc < 0)
        df_config_list_free(out);
    return rc;
}

int df_config_yaml_load(const char *path, df_config_list_t *out, char *err, size_t errcap)
{
    char *data = NULL;
    size_t len = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = df_read_file(path, DF_CONFIG_FILE_MAX, &data, &len);
    if (rc < 0) {
        if (err && errcap)
            snprintf(err, errcap, "%s: %s", path,
                     rc == DF_ETOOBIG ? "file larger than 1 MiB" : df_strerror(rc));
        return rc;
    }
    rc = df_config_yaml_parse(data, len, out, err, errcap);
    if (rc < 0 && err && errcap) {
        /* Prefix the path: "file.yml: line 3: ..." */
        char msg[256];
        df_strlcpy(msg, err, sizeof(msg));
        snprintf(err, errcap, "%s: %s", path, msg);
    }
    free(data);
    return rc;
}

void df_config_list_free(df_config_list_t *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->n; i++) {
        free(list->entries[i].key);
        free(list->entries[i].value);
    }
    free(list->entries);
    list->entries = NULL;
    list->n = 0;
}

const char *df_config_get(const df_config_list_t *list, const char *key)
{
    for (size_t i = list->n; i > 0; i--)
        if (strcmp(list->entries[i - 1].key, key) == 0)
            return list->entries[i - 1].value;
    return NULL;
}
