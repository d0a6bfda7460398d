/* Growable byte buffer with a hard cap: every buffer fed from the network is
 * one of these, so a hostile sender cannot make us allocate without bound. */
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void df_buf_init(df_buf_t *b, size_t cap)
{
    memset(b, 0, sizeof(*b));
    b->cap = cap;
}

static int reserve(df_buf_t *b, size_t extra)
{
    size_t need, nalloc;
    char *p;

    if (extra > b->cap || b->len > b->cap - extra)
        return DF_ETOOBIG;
    need = b->len + extra + 1;
    if (need <= b->alloc)
        return 0;
    nalloc = b->alloc ? b->alloc : 256;
    while (nalloc < need)
        nalloc *= 2;
    if (nalloc > b->cap + 1)
        nalloc = b->cap + 1;
    p = realloc(b->data, nalloc);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->alloc = nalloc;
    return 0;
}

int df_buf_append(df_buf_t *b, const void *data, size_t len)
{
    int rc = reserve(b, len);
    if (rc < 0)
        return rc;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int df_buf_printf(df_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    rc = reserve(b, (size_t)n);
    if (rc < 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void df_buf_reset(df_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void df_buf_free(df_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->alloc = 0;
}
