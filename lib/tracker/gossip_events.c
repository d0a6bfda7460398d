/*
 * dfly's gossip event payloads (format in gossip_events.h).  The decoder
 * reads from a network-fed buffer: every read is bounds-checked, every count
 * capped before it is used, nothing is allocated.
 */
#include "tracker/gossip_events.h"

#include "core/core.h"
#include "piece/piece.h"

#include <errno.h>
#include <string.h>

typedef struct {
    const uint8_t *p, *end;
    bool bad;
} rd_t;

static uint8_t rd_u8(rd_t *r)
{
    if (r->bad || r->p >= r->end) {
        r->bad = true;
        return 0;
    }
    return *r->p++;
}

static uint64_t rd_var(rd_t *r)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t b = rd_u8(r);
        if (r->bad)
            return 0;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    r->bad = true; /* more than 10 bytes */
    return 0;
}

static const uint8_t *rd_bytes(rd_t *r, size_t n)
{
    const uint8_t *p = r->p;
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    r->p += n;
    return p;
}

int df_gev_decode(const uint8_t *buf, size_t len, df_gev_t *out)
{
    rd_t r = {buf, buf + len, false};
    const uint8_t *p;
    size_t n;

    memset(out, 0, sizeof(*out));
    if (rd_u8(&r) != DF_GEV_VERSION)
        return DF_EPROTO;
    out->kind = (df_gev_kind_t)rd_u8(&r);
    n = rd_u8(&r);
    if (r.bad || n == 0 || n > DF_GEV_SENDER_MAX || !(p = rd_bytes(&r, n)) || memchr(p, 0, n))
        return DF_EPROTO;
    memcpy(out->sender, p, n);
    out->sender[n] = '\0';
    if (out->kind != DF_GEV_RECOVER) {
        if (!(p = rd_bytes(&r, 32)))
            return DF_EPROTO;
        memcpy(out->task, p, 32);
    }
    switch (out->kind) {
    case DF_GEV_START:
        out->length = rd_var(&r);
        out->piece_size = rd_var(&r);
        n = (size_t)rd_u8(&r) << 8;
        n |= rd_u8(&r);
        if (r.bad || n > DF_GEV_URL_MAX || (n && !(out->url = (const char *)rd_bytes(&r, n))))
            return DF_EPROTO;
        out->url_len = n;
        if (out->length && (out->piece_size == 0 || out->piece_size > DF_PIECE_SIZE_MAX ||
                            df_piece_count(out->length, out->piece_size) > DF_PIECE_COUNT_MAX))
            return DF_EPROTO;
        break;
    case DF_GEV_HAVE:
        out->full = rd_u8(&r) != 0;
        n = (size_t)rd_var(&r);
        if (r.bad || n > DF_GEV_RUNS_MAX)
            return DF_EPROTO;
        for (size_t i = 0; i < n; i++) {
            uint64_t first = rd_var(&r), count = rd_var(&r);
            if (r.bad || count == 0 || first >= DF_PIECE_COUNT_MAX || count > DF_PIECE_COUNT_MAX - first)
                return DF_EPROTO;
            out->runs[i].first = (uint32_t)first;
            out->runs[i].count = (uint32_t)count;
        }
        out->nruns = n;
        break;
    case DF_GEV_DIGEST: {
        uint64_t first = rd_var(&r);
        n = (size_t)rd_var(&r);
        if (r.bad || n == 0 || n > DF_GEV_DIGESTS_MAX || first >= DF_PIECE_COUNT_MAX ||
            n > DF_PIECE_COUNT_MAX - first || !(out->digests = rd_bytes(&r, n * 32)))
            return DF_EPROTO;
        out->first = (uint32_t)first;
        out->ndigests = n;
        break;
    }
    case DF_GEV_SYNC: {
        uint64_t first;
        out->what = rd_u8(&r);
        first = rd_var(&r);
        if (r.bad || out->what < DF_GEV_SYNC_HAVE || out->what > DF_GEV_SYNC_SHAPE || first > DF_PIECE_COUNT_MAX)
            return DF_EPROTO;
        out->first = (uint32_t)first;
        break;
    }
    case DF_GEV_FILE:
        if (!(out->digests = rd_bytes(&r, 32)))
            return DF_EPROTO;
        out->ndigests = 1;
        break;
    case DF_GEV_REMOVE:
    case DF_GEV_RECOVER:
        break;
    default:
        return DF_EPROTO;
    }
    return r.bad || r.p != r.end ? DF_EPROTO : 0;
}

/* ------------------------------------------------------------ encoders */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool full;
} wr_t;

static void wr_u8(wr_t *w, uint8_t b)
{
    if (w->len >= w->cap) {
        w->full = true;
        return;
    }
    w->p[w->len++] = b;
}

static void wr_var(wr_t *w, uint64_t v)
{
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        wr_u8(w, (uint8_t)(b | (v ? 0x80 : 0)));
    } while (v);
}

static void wr_bytes(wr_t *w, const void *p, size_t n)
{
    if (w->cap - w->len < n || w->len > w->cap) {
        w->full = true;
        return;
    }
    memcpy(w->p + w->len, p, n);
    w->len += n;
}

static size_t var_len(uint64_t v)
{
    size_t n = 1;
    while (v >>= 7)
        n++;
    return n;
}

static int wr_head(wr_t *w, df_gev_kind_t kind, const char *sender, const uint8_t *task)
{
    size_t n = strlen(sender);
    if (n == 0 || n > DF_GEV_SENDER_MAX)
        return -EINVAL;
    wr_u8(w, DF_GEV_VERSION);
    wr_u8(w, (uint8_t)kind);
    wr_u8(w, (uint8_t)n);
    wr_bytes(w, sender, n);
    if (task)
        wr_bytes(w, task, 32);
    return w->full ? DF_ETOOBIG : 0;
}

int df_gev_encode_start(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], uint64_t length,
                        uint64_t piece_size, const char *url)
{
    wr_t w = {out, 0, cap, false};
    size_t ulen = url ? strlen(url) : 0;
    int rc = wr_head(&w, DF_GEV_START, sender, task);

    if (rc < 0)
        return rc;
    wr_var(&w, length);
    wr_var(&w, piece_size);
    /* The url rides along only when it fits: the owner's shape matters
     * more, and a want without a url is still an announcement. */
    if (ulen > DF_GEV_URL_MAX || w.len + 2 + ulen > cap)
        ulen = 0;
    wr_u8(&w, (uint8_t)(ulen >> 8));
    wr_u8(&w, (uint8_t)ulen);
    wr_bytes(&w, url, ulen);
    return w.full ? DF_ETOOBIG : (int)w.len;
}

int df_gev_encode_simple(uint8_t *out, size_t cap, df_gev_kind_t kind, const char *sender,
                         const uint8_t task[32])
{
    wr_t w = {out, 0, cap, false};
    int rc = wr_head(&w, kind, sender, kind == DF_GEV_RECOVER ? NULL : task);
    return rc < 0 ? rc : (int)w.len;
}

int df_gev_encode_have(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], bool full,
                       const uint8_t *bits, uint32_t piece_count, uint32_t *cursor)
{
    wr_t w = {out, 0, cap, false};
    df_gev_run_t runs[DF_GEV_RUNS_MAX];
    size_t nruns = 0, base, used;
    uint32_t i = *cursor;
    int rc = wr_head(&w, DF_GEV_HAVE, sender, task);

    if (rc < 0)
        return rc;
    wr_u8(&w, full ? 1 : 0);
    base = w.len + 1; /* + the run count (one byte: at most 128 runs) */
    used = base;
    if (w.full || base > cap)
        return DF_ETOOBIG;
    while (i < piece_count && nruns < DF_GEV_RUNS_MAX) {
        uint32_t first, count;
        size_t need;
        if (!df_bitmap_test(bits, i)) {
            i++;
            continue;
        }
        first = i;
        while (i < piece_count && df_bitmap_test(bits, i))
            i++;
        count = i - first;
        need = var_len(first) + var_len(count);
        if (used + need > cap) {
            i = first; /* the next event starts here */
            break;
        }
        runs[nruns].first = first;
        runs[nruns].count = count;
        nruns++;
        used += need;
    }
    wr_var(&w, nruns);
    for (size_t k = 0; k < nruns; k++) {
        wr_var(&w, runs[k].first);
        wr_var(&w, runs[k].count);
    }
    *cursor = i;
    return w.full ? DF_ETOOBIG : (int)w.len;
}

int df_gev_encode_digest(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], uint32_t first,
                         const uint8_t *digests, size_t n)
{
    wr_t w = {out, 0, cap, false};
    int rc = wr_head(&w, DF_GEV_DIGEST, sender, task);

    if (rc < 0)
        return rc;
    if (n == 0 || n > DF_GEV_DIGESTS_MAX)
        return -EINVAL;
    wr_var(&w, first);
    wr_var(&w, n);
    wr_bytes(&w, digests, n * 32);
    return w.full ? DF_ETOOBIG : (int)w.len;
}

int df_gev_encode_sync(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], uint8_t what,
                       uint32_t first)
{
    wr_t w = {out, 0, cap, false};
    int rc = wr_head(&w, DF_GEV_SYNC, sender, task);

    if (rc < 0)
        return rc;
    if (what < DF_GEV_SYNC_HAVE || what > DF_GEV_SYNC_SHAPE)
        return -EINVAL;
    wr_u8(&w, what);
    wr_var(&w, first);
    return w.full ? DF_ETOOBIG : (int)w.len;
}

int df_gev_encode_file(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32],
                       const uint8_t sha256[32])
{
    wr_t w = {out, 0, cap, false};
    int rc = wr_head(&w, DF_GEV_FILE, sender, task);

    if (rc < 0)
        return rc;
    wr_bytes(&w, sha256, 32);
    return w.full ? DF_ETOOBIG : (int)w.len;
}

size_t df_gev_digests_fit(size_t cap, const char *sender)
{
    size_t fixed = 3 + strlen(sender) + 32 + 3 + 1; /* head, task, first (<= 3 bytes), n */
    size_t n = cap > fixed ? (cap - fixed) / 32 : 0;
    return n > DF_GEV_DIGESTS_MAX ? DF_GEV_DIGESTS_MAX : n;
}
