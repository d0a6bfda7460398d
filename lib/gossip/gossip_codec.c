/*
 * memberlist 0.2.2 / Serf 0.9.4 wire codec (see gossip_codec.h and
 * shared/specs/serf-wire.md).
 *
 * Decoding goes in two steps for every msgpack object:
 *   1. mp_skip() walks the bytes without allocating, checking that the
 *      object is complete, well formed and at most DF_GOSSIP_MSGPACK_DEPTH
 *      deep, and finds where it ends.  This matters because msgpack-c
 *      allocates an array's or map's element table from the *declared*
 *      count before reading any element: a 5-byte `dd ffffffff` would ask
 *      for 100 GB.  Once mp_skip() has seen every element exist, the
 *      allocation is bounded by the input size (about 48 bytes per input
 *      byte in the worst case, maps of nils).
 *   2. msgpack-c's msgpack_unpack_next() builds the object tree over the
 *      validated bytes; its strings point into our buffer, so the
 *      df_gossip_bytes_t we hand out do too and the tree (its zone) can be
 *      freed before returning.
 * Fields are then matched by exact, case-sensitive name like go-msgpack
 * does: unknown keys are skipped, missing keys keep their zero value, nil is
 * accepted for any field, a bin value for a string field is rejected (Go
 * rejects it too), integers must fit their Go type.
 *
 * Encoding uses msgpack-c's packer writing straight into the caller's capped
 * df_buf_t.  To produce Go's bytes exactly we (a) write struct keys in
 * sorted order by hand, (b) use msgpack_pack_v4raw for strings and byte
 * slices (the old raw family: never str8 d9, never bin), (c) write nil for
 * nil byte slices and "" for nil strings, and (d) rely on msgpack-c's
 * smallest-form integers, which match go-msgpack's.
 */
#include "gossip/gossip_codec.h"
#include "gossip/lzw.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include <msgpack.h>
#include <zlib.h>

const uint8_t df_gossip_serf_vsn[6] = {1, 5, 2, 2, 5, 5};

/* StatusLTimes / LeftMembers entries in one Serf push/pull. */
#define SERF_MEMBERS_MAX (4 * DF_GOSSIP_PUSHPULL_NODES_MAX)

/* ====================================================== msgpack validation */

/* Reads an nbytes big-endian unsigned at b[*p]. */
static int rd_be(const uint8_t *b, size_t len, size_t *p, unsigned nbytes, uint64_t *v)
{
    unsigned i;

    if (len - *p < nbytes)
        return DF_EAGAIN;
    *v = 0;
    for (i = 0; i < nbytes; i++)
        *v = *v << 8 | b[*p + i];
    *p += nbytes;
    return 0;
}

/* Validates the object at b[*pos] and moves *pos past it.  DF_EAGAIN when
 * the bytes end inside the object (a stream reader may wait for more; a
 * datagram decoder turns it into DF_EPROTO), DF_EPROTO for 0xc1 or nesting
 * deeper than DF_GOSSIP_MSGPACK_DEPTH.  Loops are bounded by len: every
 * element consumes at least one byte, so an absurd declared count simply
 * runs out of input. */
static int mp_skip(const uint8_t *b, size_t len, size_t *pos, unsigned depth)
{
    size_t p = *pos;
    uint64_t n = 0, data = 0, i;
    unsigned lenbytes = 0, extra = 0;
    int rc, container = 0; /* 1 array, 2 map */
    uint8_t c;

    if (depth > DF_GOSSIP_MSGPACK_DEPTH)
        return DF_EPROTO;
    if (p >= len)
        return DF_EAGAIN;
    c = b[p++];
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        data = 0;
    } else if (c <= 0x8f) {
        container = 2;
        n = c & 0x0f;
    } else if (c <= 0x9f) {
        container = 1;
        n = c & 0x0f;
    } else if (c <= 0xbf) {
        data = c & 0x1f;
    } else {
        switch (c) {
        case 0xc4: case 0xd9: lenbytes = 1; break;           /* bin8, str8 */
        case 0xc5: case 0xda: lenbytes = 2; break;           /* bin16, raw16 */
        case 0xc6: case 0xdb: lenbytes = 4; break;           /* bin32, raw32 */
        case 0xc7: lenbytes = 1; extra = 1; break;           /* ext8: len, type */
        case 0xc8: lenbytes = 2; extra = 1; break;
        case 0xc9: lenbytes = 4; extra = 1; break;
        case 0xca: data = 4; break;                          /* float32 */
        case 0xcb: data = 8; break;                          /* float64 */
        case 0xcc: case 0xd0: data = 1; break;
        case 0xcd: case 0xd1: data = 2; break;
        case 0xce: case 0xd2: data = 4; break;
        case 0xcf: case 0xd3: data = 8; break;
        case 0xd4: data = 2; break;                          /* fixext 1..16 (+type) */
        case 0xd5: data = 3; break;
        case 0xd6: data = 5; break;
        case 0xd7: data = 9; break;
        case 0xd8: data = 17; break;
        case 0xdc: container = 1; lenbytes = 2; break;
        case 0xdd: container = 1; lenbytes = 4; break;
        case 0xde: container = 2; lenbytes = 2; break;
        case 0xdf: container = 2; lenbytes = 4; break;
        default: return DF_EPROTO;                           /* 0xc1: never used */
        }
        if (lenbytes) {
            rc = rd_be(b, len, &p, lenbytes, container ? &n : &data);
            if (rc < 0)
                return rc;
            data += extra;
        }
    }
    if (container == 0) {
        if (len - p < data)
            return DF_EAGAIN;
        *pos = p + (size_t)data;
        return 0;
    }
    if (container == 2)
        n *= 2; /* n <= 2^32-1: no overflow in 64 bits */
    for (i = 0; i < n; i++) {
        rc = mp_skip(b, len, &p, depth + 1);
        if (rc < 0)
            return rc;
    }
    *pos = p;
    return 0;
}

/* Validates then unpacks the object at b[*pos]; *pos moves past it. */
static int unpack_at(const uint8_t *b, size_t len, size_t *pos, msgpack_unpacked *u)
{
    size_t end = *pos, off = 0;
    msgpack_unpack_return r;
    int rc = mp_skip(b, len, &end, 0);

    if (rc < 0)
        return rc;
    r = msgpack_unpack_next(u, (const char *)b + *pos, end - *pos, &off);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        return -ENOMEM;
    if (r != MSGPACK_UNPACK_SUCCESS || off != end - *pos)
        return DF_EPROTO; /* e.g. deeper than msgpack-c's own stack */
    *pos = end;
    return 0;
}

/* A datagram-style body: type byte, then exactly one map object filling the
 * rest of the buffer.  *map is NULL for a nil body (a zero struct). */
static int body_begin(const uint8_t *buf, size_t len, uint8_t type, msgpack_unpacked *u,
                      const msgpack_object_map **map)
{
    size_t pos = 1;
    int rc;

    if (len < 1 || buf[0] != type)
        return DF_EPROTO;
    if (len > DF_GOSSIP_STREAM_UNZIP_MAX)
        return DF_ETOOBIG;
    rc = unpack_at(buf, len, &pos, u);
    if (rc == DF_EAGAIN)
        return DF_EPROTO; /* truncated */
    if (rc < 0)
        return rc;
    if (pos != len)
        return DF_EPROTO; /* trailing bytes */
    if (u->data.type == MSGPACK_OBJECT_NIL) {
        *map = NULL;
        return 0;
    }
    if (u->data.type != MSGPACK_OBJECT_MAP)
        return DF_EPROTO;
    *map = &u->data.via.map;
    return 0;
}

/* ============================================================ field readers */

static bool key_is(const msgpack_object *k, const char *name)
{
    size_t n = strlen(name);

    return k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0;
}

/* Struct keys must be strings (go-msgpack decodes them as a string). */
static int check_key(const msgpack_object *k)
{
    return k->type == MSGPACK_OBJECT_STR ? 0 : DF_EPROTO;
}

static int get_uint(const msgpack_object *o, uint64_t max, uint64_t *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        *out = 0;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > max)
            return DF_EPROTO;
        *out = o->via.u64;
        return 0;
    default:
        return DF_EPROTO; /* negative into unsigned is an error in Go too */
    }
}

static int get_u32(const msgpack_object *o, uint32_t *out)
{
    uint64_t v;
    int rc = get_uint(o, UINT32_MAX, &v);

    if (rc == 0)
        *out = (uint32_t)v;
    return rc;
}

static int get_u16(const msgpack_object *o, uint16_t *out)
{
    uint64_t v;
    int rc = get_uint(o, UINT16_MAX, &v);

    if (rc == 0)
        *out = (uint16_t)v;
    return rc;
}

static int get_int(const msgpack_object *o, int64_t *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        *out = 0;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX)
            return DF_EPROTO;
        *out = (int64_t)o->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = o->via.i64;
        return 0;
    default:
        return DF_EPROTO;
    }
}

static int get_bool(const msgpack_object *o, bool *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        *out = false;
        return 0;
    case MSGPACK_OBJECT_BOOLEAN:
        *out = o->via.boolean;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: /* go-msgpack takes 0/1 for a bool */
        if (o->via.u64 > 1)
            return DF_EPROTO;
        *out = o->via.u64 == 1;
        return 0;
    default:
        return DF_EPROTO;
    }
}

/* Empty fields point here, never at NULL: callers memcpy/memcmp them with
 * their length, and a NULL pointer is undefined behaviour even for 0 bytes. */
static const uint8_t empty_bytes[1];
/* A nil []byte decodes to this (also non-NULL), so re-encoding keeps nil. */
static const uint8_t nil_bytes[1];

bool df_gossip_bytes_is_nil(df_gossip_bytes_t b)
{
    return !b.p || b.p == nil_bytes;
}

/* A Go string field: raw/str or nil.  bin is rejected like Go does. */
static int get_str(const msgpack_object *o, size_t cap, df_gossip_bytes_t *out)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        out->p = nil_bytes;
        out->len = 0;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_STR)
        return DF_EPROTO;
    if (o->via.str.size > cap)
        return DF_ETOOBIG;
    out->p = o->via.str.size ? (const uint8_t *)o->via.str.ptr : empty_bytes;
    out->len = o->via.str.size;
    return 0;
}

/* A Go []byte field: raw/str, bin or nil. */
static int get_raw(const msgpack_object *o, size_t cap, df_gossip_bytes_t *out)
{
    if (o->type == MSGPACK_OBJECT_BIN) {
        if (o->via.bin.size > cap)
            return DF_ETOOBIG;
        out->p = o->via.bin.size ? (const uint8_t *)o->via.bin.ptr : empty_bytes;
        out->len = o->via.bin.size;
        return 0;
    }
    return get_str(o, cap, out);
}

/* Vsn []uint8: Go sends raw bytes; an array of small ints also decodes in
 * Go.  Exactly 6 entries, or none (very old senders).  1..5 entries would
 * panic a Go node and more than 6 is nonsense: both DF_EPROTO. */
static int get_vsn(const msgpack_object *o, bool *has, uint8_t vsn[6])
{
    df_gossip_bytes_t b;
    uint64_t v;
    uint32_t i;
    int rc;

    if (o->type == MSGPACK_OBJECT_ARRAY) {
        if (o->via.array.size == 0) {
            *has = false;
            return 0;
        }
        if (o->via.array.size != 6)
            return DF_EPROTO;
        for (i = 0; i < 6; i++) {
            rc = get_uint(&o->via.array.ptr[i], UINT8_MAX, &v);
            if (rc < 0)
                return rc;
            vsn[i] = (uint8_t)v;
        }
        *has = true;
        return 0;
    }
    rc = get_raw(o, 6, &b);
    if (rc == DF_ETOOBIG)
        return DF_EPROTO;
    if (rc < 0)
        return rc;
    if (b.len == 0) {
        *has = false;
        return 0;
    }
    if (b.len != 6)
        return DF_EPROTO;
    memcpy(vsn, b.p, 6);
    *has = true;
    return 0;
}

/* ================================================================ encoding */

typedef struct {
    msgpack_packer pk;
    df_buf_t *out;
    size_t start;
    int rc;
} enc_t;

static int buf_write(void *data, const char *p, size_t n)
{
    return df_buf_append(data, p, n);
}

static void enc_begin(enc_t *e, df_buf_t *out)
{
    e->out = out;
    e->start = out->len;
    e->rc = 0;
    msgpack_packer_init(&e->pk, out, buf_write);
}

static void put_bytes(enc_t *e, const void *p, size_t n)
{
    if (e->rc == 0)
        e->rc = df_buf_append(e->out, p, n);
}

static void put_u8(enc_t *e, uint8_t b)
{
    put_bytes(e, &b, 1);
}

/* The packer functions return the write callback's code. */
#define ENC(e, call)                                                                               \
    do {                                                                                           \
        if ((e)->rc == 0)                                                                          \
            (e)->rc = (call);                                                                      \
    } while (0)

static void pk_map(enc_t *e, size_t n)
{
    ENC(e, msgpack_pack_map(&e->pk, n));
}

static void pk_array(enc_t *e, size_t n)
{
    ENC(e, msgpack_pack_array(&e->pk, n));
}

static void pk_rawn(enc_t *e, const void *p, size_t n)
{
    ENC(e, msgpack_pack_v4raw(&e->pk, n));
    if (n)
        ENC(e, msgpack_pack_v4raw_body(&e->pk, p, n));
}

static void pk_key(enc_t *e, const char *k)
{
    pk_rawn(e, k, strlen(k));
}

/* A Go []byte: nil stays nil. */
static void pk_raw(enc_t *e, df_gossip_bytes_t b)
{
    if (!b.p || b.p == nil_bytes) {
        ENC(e, msgpack_pack_nil(&e->pk));
        return;
    }
    pk_rawn(e, b.p, b.len);
}

/* A Go string: there is no nil string, it is "". */
static void pk_str(enc_t *e, df_gossip_bytes_t b)
{
    pk_rawn(e, b.p, b.p ? b.len : 0);
}

static void pk_uint(enc_t *e, uint64_t v)
{
    ENC(e, msgpack_pack_uint64(&e->pk, v));
}

static void pk_int(enc_t *e, int64_t v)
{
    ENC(e, msgpack_pack_int64(&e->pk, v));
}

static void pk_bool(enc_t *e, bool v)
{
    ENC(e, v ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk));
}

static void pk_vsn(enc_t *e, bool has, const uint8_t vsn[6])
{
    if (!has) {
        ENC(e, msgpack_pack_nil(&e->pk));
        return;
    }
    pk_rawn(e, vsn, 6);
}

/* Restores the buffer on failure. */
static int enc_end(enc_t *e)
{
    if (e->rc < 0) {
        e->out->len = e->start;
        if (e->out->data)
            e->out->data[e->start] = '\0';
    }
    return e->rc;
}

/* ========================================================= memberlist msgs */

/* The memberlist messages are flat Go structs: one table per message says
 * each field's key, type, place in the C struct and cap, in the order the
 * encoder writes them (Go's sorted keys).  Decoding takes the keys in any
 * order and ignores unknown ones, as go-msgpack does. */
typedef enum { FT_U64, FT_U32, FT_U16, FT_BOOL, FT_STR, FT_RAW, FT_VSN } field_type_t;

typedef struct {
    const char *key;
    field_type_t type;
    size_t off;        /* of the value in the message struct */
    size_t cap;        /* FT_STR, FT_RAW: longest value accepted */
    size_t has_off;    /* FT_VSN: offset of its `has` bool */
    bool omit_empty;   /* encoder leaves the key out when empty/zero (Go omitempty) */
} field_t;

#define FIELD(st, k, t, member, c) {k, t, offsetof(st, member), c, 0, false}
#define FIELD_OMIT(st, k, t, member, c) {k, t, offsetof(st, member), c, 0, true}

static int get_field(const msgpack_object *v, const field_t *f, uint8_t *m)
{
    switch (f->type) {
    case FT_U64:
        return get_uint(v, UINT64_MAX, (uint64_t *)(m + f->off));
    case FT_U32:
        return get_u32(v, (uint32_t *)(m + f->off));
    case FT_U16:
        return get_u16(v, (uint16_t *)(m + f->off));
    case FT_BOOL:
        return get_bool(v, (bool *)(m + f->off));
    case FT_STR:
        return get_str(v, f->cap, (df_gossip_bytes_t *)(m + f->off));
    case FT_RAW:
        return get_raw(v, f->cap, (df_gossip_bytes_t *)(m + f->off));
    case FT_VSN:
        return get_vsn(v, (bool *)(m + f->has_off), m + f->off);
    }
    return DF_EPROTO;
}

/* Decodes a body of this type into m (msize bytes, zeroed first). */
static int decode_fields(const uint8_t *buf, size_t len, uint8_t type, const field_t *f, size_t nf, void *m,
                         size_t msize)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    uint32_t i;
    int rc;

    msgpack_unpacked_init(&u);
    memset(m, 0, msize);
    rc = body_begin(buf, len, type, &u, &map);
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        for (size_t j = 0; j < nf; j++)
            if (key_is(k, f[j].key)) {
                rc = get_field(v, &f[j], m);
                break;
            }
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

static bool field_empty(const field_t *f, const uint8_t *m)
{
    switch (f->type) {
    case FT_U64:
        return *(const uint64_t *)(m + f->off) == 0;
    case FT_U32:
        return *(const uint32_t *)(m + f->off) == 0;
    case FT_U16:
        return *(const uint16_t *)(m + f->off) == 0;
    case FT_BOOL:
        return !*(const bool *)(m + f->off);
    case FT_STR:
    case FT_RAW:
        return ((const df_gossip_bytes_t *)(m + f->off))->len == 0;
    case FT_VSN:
        return !*(const bool *)(m + f->has_off);
    }
    return false;
}

static void put_field(enc_t *e, const field_t *f, const uint8_t *m)
{
    switch (f->type) {
    case FT_U64:
        pk_uint(e, *(const uint64_t *)(m + f->off));
        break;
    case FT_U32:
        pk_uint(e, *(const uint32_t *)(m + f->off));
        break;
    case FT_U16:
        pk_uint(e, *(const uint16_t *)(m + f->off));
        break;
    case FT_BOOL:
        pk_bool(e, *(const bool *)(m + f->off));
        break;
    case FT_STR:
        pk_str(e, *(const df_gossip_bytes_t *)(m + f->off));
        break;
    case FT_RAW:
        pk_raw(e, *(const df_gossip_bytes_t *)(m + f->off));
        break;
    case FT_VSN:
        pk_vsn(e, *(const bool *)(m + f->has_off), m + f->off);
        break;
    }
}

/* The header (type byte(s)), then a map of the fields (omit_empty ones only
 * when set). */
static int encode_fields(df_buf_t *out, const uint8_t *hdr, size_t hlen, const field_t *f, size_t nf,
                         const void *m)
{
    const uint8_t *mb = m;
    size_t n = 0;
    enc_t e;

    for (size_t j = 0; j < nf; j++)
        n += !(f[j].omit_empty && field_empty(&f[j], mb));
    enc_begin(&e, out);
    put_bytes(&e, hdr, hlen);
    pk_map(&e, n);
    for (size_t j = 0; j < nf; j++) {
        if (f[j].omit_empty && field_empty(&f[j], mb))
            continue;
        pk_key(&e, f[j].key);
        put_field(&e, &f[j], mb);
    }
    return enc_end(&e);
}

static const field_t ping_fields[] = {
    FIELD(df_gossip_ping_t, "Node", FT_STR, node, DF_GOSSIP_NAME_MAX),
    FIELD(df_gossip_ping_t, "SeqNo", FT_U32, seq_no, 0),
    FIELD_OMIT(df_gossip_ping_t, "SourceAddr", FT_RAW, source_addr, DF_GOSSIP_ADDR_MAX),
    FIELD_OMIT(df_gossip_ping_t, "SourceNode", FT_STR, source_node, DF_GOSSIP_NAME_MAX),
    FIELD_OMIT(df_gossip_ping_t, "SourcePort", FT_U16, source_port, 0),
};

static const field_t indirect_ping_fields[] = {
    FIELD(df_gossip_indirect_ping_t, "Nack", FT_BOOL, nack, 0),
    FIELD(df_gossip_indirect_ping_t, "Node", FT_STR, node, DF_GOSSIP_NAME_MAX),
    FIELD(df_gossip_indirect_ping_t, "Port", FT_U16, port, 0),
    FIELD(df_gossip_indirect_ping_t, "SeqNo", FT_U32, seq_no, 0),
    FIELD_OMIT(df_gossip_indirect_ping_t, "SourceAddr", FT_RAW, source_addr, DF_GOSSIP_ADDR_MAX),
    FIELD_OMIT(df_gossip_indirect_ping_t, "SourceNode", FT_STR, source_node, DF_GOSSIP_NAME_MAX),
    FIELD_OMIT(df_gossip_indirect_ping_t, "SourcePort", FT_U16, source_port, 0),
    FIELD(df_gossip_indirect_ping_t, "Target", FT_RAW, target, DF_GOSSIP_ADDR_MAX),
};

static const field_t ack_fields[] = {
    FIELD(df_gossip_ack_t, "Payload", FT_RAW, payload, DF_GOSSIP_PAYLOAD_MAX),
    FIELD(df_gossip_ack_t, "SeqNo", FT_U32, seq_no, 0),
};

static const field_t nack_fields[] = {
    FIELD(df_gossip_nack_t, "SeqNo", FT_U32, seq_no, 0),
};

static const field_t suspect_fields[] = {
    FIELD(df_gossip_suspect_t, "From", FT_STR, from, DF_GOSSIP_NAME_MAX),
    FIELD(df_gossip_suspect_t, "Incarnation", FT_U32, incarnation, 0),
    FIELD(df_gossip_suspect_t, "Node", FT_STR, node, DF_GOSSIP_NAME_MAX),
};

static const field_t alive_fields[] = {
    FIELD(df_gossip_alive_t, "Addr", FT_RAW, addr, DF_GOSSIP_ADDR_MAX),
    FIELD(df_gossip_alive_t, "Incarnation", FT_U32, incarnation, 0),
    FIELD(df_gossip_alive_t, "Meta", FT_RAW, meta, DF_GOSSIP_META_MAX),
    FIELD(df_gossip_alive_t, "Node", FT_STR, node, DF_GOSSIP_NAME_MAX),
    FIELD(df_gossip_alive_t, "Port", FT_U16, port, 0),
    {"Vsn", FT_VSN, offsetof(df_gossip_alive_t, vsn), 0, offsetof(df_gossip_alive_t, has_vsn), false},
};

static const field_t err_fields[] = {
    {"Error", FT_STR, 0, DF_GOSSIP_PAYLOAD_MAX, 0, false}, /* the message is one df_gossip_bytes_t */
};

#define DECODE(type, fields, m) decode_fields(buf, len, type, fields, DF_ARRAY_LEN(fields), m, sizeof(*(m)))
#define ENCODE(type, fields, m) encode_fields(out, (const uint8_t[]){type}, 1, fields, DF_ARRAY_LEN(fields), m)

int df_gossip_ping_decode(const uint8_t *buf, size_t len, df_gossip_ping_t *m)
{
    return DECODE(DF_GOSSIP_PING, ping_fields, m);
}

int df_gossip_ping_encode(df_buf_t *out, const df_gossip_ping_t *m)
{
    return ENCODE(DF_GOSSIP_PING, ping_fields, m);
}

int df_gossip_indirect_ping_decode(const uint8_t *buf, size_t len, df_gossip_indirect_ping_t *m)
{
    return DECODE(DF_GOSSIP_INDIRECT_PING, indirect_ping_fields, m);
}

int df_gossip_indirect_ping_encode(df_buf_t *out, const df_gossip_indirect_ping_t *m)
{
    return ENCODE(DF_GOSSIP_INDIRECT_PING, indirect_ping_fields, m);
}

int df_gossip_ack_decode(const uint8_t *buf, size_t len, df_gossip_ack_t *m)
{
    return DECODE(DF_GOSSIP_ACK, ack_fields, m);
}

int df_gossip_ack_encode(df_buf_t *out, const df_gossip_ack_t *m)
{
    return ENCODE(DF_GOSSIP_ACK, ack_fields, m);
}

int df_gossip_nack_decode(const uint8_t *buf, size_t len, df_gossip_nack_t *m)
{
    return DECODE(DF_GOSSIP_NACK, nack_fields, m);
}

int df_gossip_nack_encode(df_buf_t *out, const df_gossip_nack_t *m)
{
    return ENCODE(DF_GOSSIP_NACK, nack_fields, m);
}

int df_gossip_suspect_decode(const uint8_t *buf, size_t len, uint8_t type, df_gossip_suspect_t *m)
{
    if (type != DF_GOSSIP_SUSPECT && type != DF_GOSSIP_DEAD)
        return -EINVAL;
    return DECODE(type, suspect_fields, m);
}

int df_gossip_suspect_encode(df_buf_t *out, uint8_t type, const df_gossip_suspect_t *m)
{
    if (type != DF_GOSSIP_SUSPECT && type != DF_GOSSIP_DEAD)
        return -EINVAL;
    return ENCODE(type, suspect_fields, m);
}

int df_gossip_alive_decode(const uint8_t *buf, size_t len, df_gossip_alive_t *m)
{
    return DECODE(DF_GOSSIP_ALIVE, alive_fields, m);
}

int df_gossip_alive_encode(df_buf_t *out, const df_gossip_alive_t *m)
{
    return ENCODE(DF_GOSSIP_ALIVE, alive_fields, m);
}

int df_gossip_err_decode(const uint8_t *buf, size_t len, df_gossip_bytes_t *error)
{
    return DECODE(DF_GOSSIP_ERR, err_fields, error);
}

int df_gossip_err_encode(df_buf_t *out, df_gossip_bytes_t error)
{
    return ENCODE(DF_GOSSIP_ERR, err_fields, &error);
}

/* ================================================================ push/pull */

static int node_state_from(const msgpack_object *o, df_gossip_node_state_t *n)
{
    const msgpack_object_map *map;
    uint64_t state = 0;
    uint32_t i;
    int rc = 0;

    memset(n, 0, sizeof(*n));
    if (o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        return DF_EPROTO;
    map = &o->via.map;
    for (i = 0; rc == 0 && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "Name"))
            rc = get_str(v, DF_GOSSIP_NAME_MAX, &n->name);
        else if (key_is(k, "Addr"))
            rc = get_raw(v, DF_GOSSIP_ADDR_MAX, &n->addr);
        else if (key_is(k, "Port"))
            rc = get_u16(v, &n->port);
        else if (key_is(k, "Meta"))
            rc = get_raw(v, DF_GOSSIP_META_MAX, &n->meta);
        else if (key_is(k, "Incarnation"))
            rc = get_u32(v, &n->incarnation);
        else if (key_is(k, "State"))
            rc = get_uint(v, DF_GOSSIP_STATE_LEFT, &state);
        else if (key_is(k, "Vsn"))
            rc = get_vsn(v, &n->has_vsn, n->vsn);
    }
    n->state = (uint8_t)state;
    return rc;
}

/* The push/pull message, with or without decoding the node states (nodes ==
 * NULL: only validate and measure them).  Returns DF_EAGAIN for an
 * incomplete prefix. */
static int pushpull_parse(const uint8_t *buf, size_t len, df_gossip_pushpull_hdr_t *hdr,
                          df_gossip_node_state_t *nodes, size_t cap, df_gossip_bytes_t *user_state,
                          size_t *consumed)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    size_t pos = 1;
    int64_t nn = 0, usl = 0;
    uint32_t i;
    int rc;

    memset(hdr, 0, sizeof(*hdr));
    if (len < 1)
        return DF_EAGAIN;
    if (buf[0] != DF_GOSSIP_PUSH_PULL)
        return DF_EPROTO;
    msgpack_unpacked_init(&u);
    rc = unpack_at(buf, len, &pos, &u);
    if (rc < 0)
        goto out;
    if (u.data.type != MSGPACK_OBJECT_MAP) {
        rc = DF_EPROTO;
        goto out;
    }
    map = &u.data.via.map;
    for (i = 0; rc == 0 && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "Join"))
            rc = get_bool(v, &hdr->join);
        else if (key_is(k, "Nodes"))
            rc = get_int(v, &nn);
        else if (key_is(k, "UserStateLen"))
            rc = get_int(v, &usl);
    }
    if (rc < 0)
        goto out;
    /* Go's `int` fields: negative counts would panic make(); refuse. */
    if (nn < 0 || usl < 0) {
        rc = DF_EPROTO;
        goto out;
    }
    if (nn > DF_GOSSIP_PUSHPULL_NODES_MAX || (nodes && (size_t)nn > cap) ||
        usl > (int64_t)DF_GOSSIP_STREAM_UNZIP_MAX) {
        rc = DF_ETOOBIG;
        goto out;
    }
    hdr->nodes = (uint32_t)nn;
    hdr->user_state_len = (uint32_t)usl;
    for (i = 0; i < hdr->nodes; i++) {
        rc = unpack_at(buf, len, &pos, &u);
        if (rc < 0)
            goto out;
        if (nodes) {
            rc = node_state_from(&u.data, &nodes[i]);
            if (rc < 0)
                goto out;
        } else if (u.data.type != MSGPACK_OBJECT_MAP && u.data.type != MSGPACK_OBJECT_NIL) {
            rc = DF_EPROTO;
            goto out;
        }
    }
    if (len - pos < hdr->user_state_len) {
        rc = DF_EAGAIN;
        goto out;
    }
    if (user_state) {
        user_state->p = buf + pos;
        user_state->len = hdr->user_state_len;
    }
    pos += hdr->user_state_len;
    if (pos > DF_GOSSIP_STREAM_UNZIP_MAX) {
        rc = DF_ETOOBIG;
        goto out;
    }
    *consumed = pos;
out:
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_gossip_pushpull_decode(const uint8_t *buf, size_t len, df_gossip_pushpull_hdr_t *hdr,
                              df_gossip_node_state_t *nodes, size_t cap, df_gossip_bytes_t *user_state,
                              size_t *consumed)
{
    if (!nodes)
        return -EINVAL;
    return pushpull_parse(buf, len, hdr, nodes, cap, user_state, consumed);
}

int df_gossip_pushpull_encode(df_buf_t *out, bool join, const df_gossip_node_state_t *nodes, size_t n,
                              const uint8_t *user_state, size_t user_state_len)
{
    enc_t e;
    size_t i;

    if (n > DF_GOSSIP_PUSHPULL_NODES_MAX || user_state_len > DF_GOSSIP_STREAM_UNZIP_MAX)
        return DF_ETOOBIG;
    enc_begin(&e, out);
    put_u8(&e, DF_GOSSIP_PUSH_PULL);
    pk_map(&e, 3);
    pk_key(&e, "Join");
    pk_bool(&e, join);
    pk_key(&e, "Nodes");
    pk_uint(&e, n);
    pk_key(&e, "UserStateLen");
    pk_uint(&e, user_state_len);
    for (i = 0; i < n; i++) {
        const df_gossip_node_state_t *s = &nodes[i];

        pk_map(&e, 7);
        pk_key(&e, "Addr");
        pk_raw(&e, s->addr);
        pk_key(&e, "Incarnation");
        pk_uint(&e, s->incarnation);
        pk_key(&e, "Meta");
        pk_raw(&e, s->meta);
        pk_key(&e, "Name");
        pk_str(&e, s->name);
        pk_key(&e, "Port");
        pk_uint(&e, s->port);
        pk_key(&e, "State");
        pk_uint(&e, s->state);
        pk_key(&e, "Vsn");
        pk_vsn(&e, s->has_vsn, s->vsn);
    }
    if (user_state_len)
        put_bytes(&e, user_state, user_state_len);
    return enc_end(&e);
}

/* =================================================================== framing */

int df_gossip_compound_split(const uint8_t *buf, size_t len, df_gossip_bytes_t parts[DF_GOSSIP_COMPOUND_MAX],
                             size_t *nparts, size_t *truncated)
{
    size_t n, i, pos, plen;

    *nparts = 0;
    *truncated = 0;
    if (len < 2 || buf[0] != DF_GOSSIP_COMPOUND)
        return DF_EPROTO; /* "missing compound length byte" */
    n = buf[1];
    /* Go computes numParts*2 in uint8 and mis-slices from 128 parts on; we
     * do the arithmetic right, which agrees with Go for every n < 128. */
    if (len - 2 < 2 * n)
        return DF_EPROTO; /* "truncated len slice" */
    pos = 2 + 2 * n;
    for (i = 0; i < n; i++) {
        plen = (size_t)buf[2 + 2 * i] << 8 | buf[3 + 2 * i];
        if (len - pos < plen) {
            *truncated = n - i;
            break;
        }
        parts[i].p = buf + pos;
        parts[i].len = plen;
        pos += plen;
        (*nparts)++;
    }
    return 0;
}

int df_gossip_compound_encode(df_buf_t *out, const df_gossip_bytes_t *parts, size_t nparts)
{
    enc_t e;
    size_t i;

    if (nparts > DF_GOSSIP_COMPOUND_SEND_MAX)
        return DF_ETOOBIG;
    for (i = 0; i < nparts; i++) {
        if (parts[i].len > UINT16_MAX)
            return DF_ETOOBIG;
    }
    enc_begin(&e, out);
    put_u8(&e, DF_GOSSIP_COMPOUND);
    put_u8(&e, (uint8_t)nparts);
    for (i = 0; i < nparts; i++) {
        put_u8(&e, (uint8_t)(parts[i].len >> 8));
        put_u8(&e, (uint8_t)parts[i].len);
    }
    for (i = 0; i < nparts; i++)
        put_bytes(&e, parts[i].p, parts[i].len);
    return enc_end(&e);
}

int df_gossip_crc_unwrap(const uint8_t *buf, size_t len, df_gossip_bytes_t *inner)
{
    uint32_t want, got;

    if (len < 5 || buf[0] != DF_GOSSIP_HAS_CRC)
        return DF_EPROTO;
    want = (uint32_t)buf[1] << 24 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 8 | buf[4];
    got = (uint32_t)crc32_z(0, buf + 5, len - 5);
    if (want != got)
        return DF_EPROTO;
    inner->p = buf + 5;
    inner->len = len - 5;
    return 0;
}

int df_gossip_crc_wrap(df_buf_t *out, const uint8_t *msg, size_t len)
{
    uint32_t crc = (uint32_t)crc32_z(0, msg, len);
    uint8_t hdr[5] = {DF_GOSSIP_HAS_CRC, (uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8),
                      (uint8_t)crc};
    enc_t e;

    enc_begin(&e, out);
    put_bytes(&e, hdr, sizeof(hdr));
    put_bytes(&e, msg, len);
    return enc_end(&e);
}

int df_gossip_decompress(const uint8_t *buf, size_t len, df_buf_t *out)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    df_gossip_bytes_t zbuf = {0};
    uint64_t algo = 0;
    uint32_t i;
    int rc;

    msgpack_unpacked_init(&u);
    rc = body_begin(buf, len, DF_GOSSIP_COMPRESS, &u, &map);
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "Algo"))
            rc = get_uint(v, UINT8_MAX, &algo);
        else if (key_is(k, "Buf"))
            rc = get_raw(v, len, &zbuf);
    }
    if (rc == 0 && algo != 0)
        rc = DF_EPROTO; /* "Cannot decompress unknown algorithm" */
    if (rc == 0)
        rc = df_lzw_decode(zbuf.p, zbuf.len, out);
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_gossip_compress(df_buf_t *out, const uint8_t *msg, size_t len)
{
    df_buf_t z;
    enc_t e;
    int rc;

    df_buf_init(&z, out->cap);
    rc = df_lzw_encode(msg, len, &z);
    if (rc < 0)
        goto out;
    enc_begin(&e, out);
    put_u8(&e, DF_GOSSIP_COMPRESS);
    pk_map(&e, 2);
    pk_key(&e, "Algo");
    pk_uint(&e, 0);
    pk_key(&e, "Buf");
    pk_rawn(&e, z.data, z.len);
    rc = enc_end(&e);
out:
    df_buf_free(&z);
    return rc;
}

typedef struct {
    df_gossip_msg_cb cb;
    void *arg;
    size_t unzip_left; /* decompression budget for the whole packet */
    int first_err;     /* first framing error, reported at the end */
} walk_t;

static void walk_note(walk_t *w, int err)
{
    if (w->first_err == 0)
        w->first_err = err;
}

/* Returns < 0 only for a callback's stop code; framing errors are noted. */
static int walk(walk_t *w, const uint8_t *buf, size_t len, unsigned depth)
{
    df_gossip_bytes_t parts[DF_GOSSIP_COMPOUND_MAX];
    size_t n, trunc, i;
    df_buf_t z;
    int rc;

    if (len == 0) {
        walk_note(w, DF_EPROTO);
        return 0;
    }
    if ((buf[0] == DF_GOSSIP_COMPOUND || buf[0] == DF_GOSSIP_COMPRESS) && depth >= DF_GOSSIP_NEST_MAX) {
        walk_note(w, DF_ETOOBIG);
        return 0;
    }
    switch (buf[0]) {
    case DF_GOSSIP_COMPOUND:
        rc = df_gossip_compound_split(buf, len, parts, &n, &trunc);
        if (rc < 0) {
            walk_note(w, rc);
            return 0;
        }
        for (i = 0; i < n; i++) {
            rc = walk(w, parts[i].p, parts[i].len, depth + 1);
            if (rc < 0)
                return rc;
        }
        if (trunc)
            walk_note(w, DF_EPROTO);
        return 0;
    case DF_GOSSIP_COMPRESS:
        /* The budget is shared by the whole packet, so nesting cannot
         * multiply it. */
        df_buf_init(&z, w->unzip_left);
        rc = df_gossip_decompress(buf, len, &z);
        if (rc < 0) {
            walk_note(w, rc);
            rc = 0;
        } else {
            w->unzip_left -= z.len;
            rc = walk(w, (const uint8_t *)z.data, z.len, depth + 1);
        }
        df_buf_free(&z);
        return rc;
    default:
        return w->cb(buf, len, w->arg);
    }
}

int df_gossip_packet_walk(const uint8_t *buf, size_t len, df_gossip_msg_cb cb, void *arg)
{
    walk_t w = {.cb = cb, .arg = arg, .unzip_left = DF_GOSSIP_UNZIP_MAX};
    df_gossip_bytes_t inner;
    int rc;

    if (len > DF_GOSSIP_PACKET_MAX)
        return DF_ETOOBIG;
    /* The CRC wrapper is only looked for outermost (ingestPacket). */
    if (len >= 5 && buf[0] == DF_GOSSIP_HAS_CRC) {
        rc = df_gossip_crc_unwrap(buf, len, &inner);
        if (rc < 0)
            return rc;
        buf = inner.p;
        len = inner.len;
    }
    rc = walk(&w, buf, len, 0);
    return rc < 0 ? rc : w.first_err;
}

int df_gossip_stream_msg_len(const uint8_t *buf, size_t len, size_t *msglen)
{
    df_gossip_pushpull_hdr_t hdr;
    msgpack_unpacked u;
    size_t pos = 1;
    int64_t ulen = 0;
    uint64_t elen;
    uint32_t i;
    int rc;

    if (len < 1)
        return DF_EAGAIN;
    switch (buf[0]) {
    case DF_GOSSIP_PING:
    case DF_GOSSIP_ACK:
    case DF_GOSSIP_COMPRESS:
    case DF_GOSSIP_ERR:
        rc = mp_skip(buf, len, &pos, 0);
        if (rc < 0)
            return rc;
        break;
    case DF_GOSSIP_PUSH_PULL:
        return pushpull_parse(buf, len, &hdr, NULL, 0, NULL, msglen);
    case DF_GOSSIP_USER:
        /* 08 {UserMsgLen} body: a user stream (Serf never sends one). */
        msgpack_unpacked_init(&u);
        rc = unpack_at(buf, len, &pos, &u);
        if (rc == 0 && u.data.type != MSGPACK_OBJECT_MAP)
            rc = DF_EPROTO;
        for (i = 0; rc == 0 && i < u.data.via.map.size; i++) {
            const msgpack_object *k = &u.data.via.map.ptr[i].key;

            if ((rc = check_key(k)) == 0 && key_is(k, "UserMsgLen"))
                rc = get_int(&u.data.via.map.ptr[i].val, &ulen);
        }
        msgpack_unpacked_destroy(&u);
        if (rc < 0)
            return rc;
        if (ulen < 0)
            return DF_EPROTO;
        if (ulen > (int64_t)DF_GOSSIP_STREAM_UNZIP_MAX)
            return DF_ETOOBIG;
        if (len - pos < (uint64_t)ulen)
            return DF_EAGAIN;
        pos += (size_t)ulen;
        break;
    case DF_GOSSIP_ENCRYPT:
        rc = rd_be(buf, len, &pos, 4, &elen);
        if (rc < 0)
            return rc;
        if (elen > DF_GOSSIP_STREAM_UNZIP_MAX)
            return DF_ETOOBIG;
        if (len - pos < elen)
            return DF_EAGAIN;
        pos += (size_t)elen;
        break;
    default:
        return DF_EPROTO; /* "Received invalid msgType" */
    }
    if (pos > DF_GOSSIP_STREAM_UNZIP_MAX)
        return DF_ETOOBIG;
    *msglen = pos;
    return 0;
}

int df_gossip_user_unwrap(const uint8_t *buf, size_t len, df_gossip_bytes_t *serf_msg)
{
    if (len < 2 || buf[0] != DF_GOSSIP_USER)
        return DF_EPROTO; /* a user message with no Serf type byte */
    serf_msg->p = buf + 1;
    serf_msg->len = len - 1;
    return 0;
}

/* ============================================================ Serf messages */

/* Serf encoders: 08 serfType body. */
static void serf_begin(enc_t *e, df_buf_t *out, uint8_t type)
{
    enc_begin(e, out);
    put_u8(e, DF_GOSSIP_USER);
    put_u8(e, type);
}

static const field_t join_fields[] = {
    FIELD(df_serf_intent_t, "LTime", FT_U64, ltime, 0),
    FIELD(df_serf_intent_t, "Node", FT_STR, node, DF_GOSSIP_NAME_MAX),
};

static const field_t leave_fields[] = {
    FIELD(df_serf_intent_t, "LTime", FT_U64, ltime, 0),
    FIELD(df_serf_intent_t, "Node", FT_STR, node, DF_GOSSIP_NAME_MAX),
    FIELD(df_serf_intent_t, "Prune", FT_BOOL, prune, 0),
};

static const field_t user_event_fields[] = {
    FIELD(df_serf_user_event_t, "CC", FT_BOOL, cc, 0),
    FIELD(df_serf_user_event_t, "LTime", FT_U64, ltime, 0),
    FIELD(df_serf_user_event_t, "Name", FT_STR, name, DF_GOSSIP_NAME_MAX),
    FIELD(df_serf_user_event_t, "Payload", FT_RAW, payload, DF_SERF_EVENT_SIZE_MAX),
};

/* A Serf message inside a memberlist user message: 08 <serf type> map. */
#define SERF_ENCODE(type, fields, m)                                                                   \
    encode_fields(out, (const uint8_t[]){DF_GOSSIP_USER, type}, 2, fields, DF_ARRAY_LEN(fields), m)

int df_serf_intent_decode(const uint8_t *buf, size_t len, uint8_t type, df_serf_intent_t *m)
{
    if (type == DF_SERF_JOIN)
        return DECODE(type, join_fields, m);
    if (type == DF_SERF_LEAVE)
        return DECODE(type, leave_fields, m);
    return -EINVAL;
}

int df_serf_intent_encode(df_buf_t *out, uint8_t type, const df_serf_intent_t *m)
{
    if (type == DF_SERF_JOIN)
        return SERF_ENCODE(type, join_fields, m);
    if (type == DF_SERF_LEAVE)
        return SERF_ENCODE(type, leave_fields, m);
    return -EINVAL;
}

int df_serf_user_event_decode(const uint8_t *buf, size_t len, df_serf_user_event_t *m)
{
    int rc = DECODE(DF_SERF_USER_EVENT, user_event_fields, m);

    if (rc == 0 && m->name.len + m->payload.len > DF_SERF_EVENT_SIZE_MAX)
        rc = DF_ETOOBIG;
    return rc;
}

int df_serf_user_event_encode(df_buf_t *out, const df_serf_user_event_t *m)
{
    if (m->name.len > DF_GOSSIP_NAME_MAX || m->name.len + m->payload.len > DF_SERF_EVENT_SIZE_MAX)
        return DF_ETOOBIG;
    return SERF_ENCODE(DF_SERF_USER_EVENT, user_event_fields, m);
}

int df_serf_query_decode(const uint8_t *buf, size_t len, df_serf_query_t *m)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    uint64_t rf = 0;
    uint32_t i, j;
    int rc;

    msgpack_unpacked_init(&u);
    memset(m, 0, sizeof(*m));
    m->filters_nil = true;
    rc = body_begin(buf, len, DF_SERF_QUERY, &u, &map);
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "LTime")) {
            rc = get_uint(v, UINT64_MAX, &m->ltime);
        } else if (key_is(k, "ID")) {
            rc = get_u32(v, &m->id);
        } else if (key_is(k, "Addr")) {
            rc = get_raw(v, DF_GOSSIP_ADDR_MAX, &m->addr);
        } else if (key_is(k, "Port")) {
            rc = get_u16(v, &m->port);
        } else if (key_is(k, "SourceNode")) {
            rc = get_str(v, DF_GOSSIP_NAME_MAX, &m->source_node);
        } else if (key_is(k, "Filters")) {
            m->nfilters = 0;
            m->filters_nil = v->type == MSGPACK_OBJECT_NIL;
            if (m->filters_nil)
                continue;
            if (v->type != MSGPACK_OBJECT_ARRAY) {
                rc = DF_EPROTO;
                break;
            }
            if (v->via.array.size > DF_SERF_FILTERS_MAX) {
                rc = DF_ETOOBIG;
                break;
            }
            for (j = 0; rc == 0 && j < v->via.array.size; j++)
                rc = get_raw(&v->via.array.ptr[j], DF_GOSSIP_PAYLOAD_MAX, &m->filters[j]);
            m->nfilters = v->via.array.size;
        } else if (key_is(k, "Flags")) {
            rc = get_u32(v, &m->flags);
        } else if (key_is(k, "RelayFactor")) {
            rc = get_uint(v, UINT8_MAX, &rf);
            m->relay_factor = (uint8_t)rf;
        } else if (key_is(k, "Timeout")) {
            rc = get_int(v, &m->timeout_ns);
        } else if (key_is(k, "Name")) {
            rc = get_str(v, DF_GOSSIP_NAME_MAX, &m->name);
        } else if (key_is(k, "Payload")) {
            rc = get_raw(v, DF_GOSSIP_PAYLOAD_MAX, &m->payload);
        }
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_query_encode(df_buf_t *out, const df_serf_query_t *m)
{
    enc_t e;
    size_t i;

    if (m->nfilters > DF_SERF_FILTERS_MAX)
        return DF_ETOOBIG;
    serf_begin(&e, out, DF_SERF_QUERY);
    pk_map(&e, 11);
    pk_key(&e, "Addr");
    pk_raw(&e, m->addr);
    pk_key(&e, "Filters");
    if (m->nfilters == 0 && m->filters_nil) {
        ENC(&e, msgpack_pack_nil(&e.pk));
    } else {
        pk_array(&e, m->nfilters);
        for (i = 0; i < m->nfilters; i++)
            pk_raw(&e, m->filters[i]);
    }
    pk_key(&e, "Flags");
    pk_uint(&e, m->flags);
    pk_key(&e, "ID");
    pk_uint(&e, m->id);
    pk_key(&e, "LTime");
    pk_uint(&e, m->ltime);
    pk_key(&e, "Name");
    pk_str(&e, m->name);
    pk_key(&e, "Payload");
    pk_raw(&e, m->payload);
    pk_key(&e, "Port");
    pk_uint(&e, m->port);
    pk_key(&e, "RelayFactor");
    pk_uint(&e, m->relay_factor);
    pk_key(&e, "SourceNode");
    pk_str(&e, m->source_node);
    pk_key(&e, "Timeout");
    pk_int(&e, m->timeout_ns);
    return enc_end(&e);
}

int df_serf_query_response_decode(const uint8_t *buf, size_t len, df_serf_query_response_t *m)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    uint32_t i;
    int rc;

    msgpack_unpacked_init(&u);
    memset(m, 0, sizeof(*m));
    rc = body_begin(buf, len, DF_SERF_QUERY_RESPONSE, &u, &map);
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "LTime"))
            rc = get_uint(v, UINT64_MAX, &m->ltime);
        else if (key_is(k, "ID"))
            rc = get_u32(v, &m->id);
        else if (key_is(k, "From"))
            rc = get_str(v, DF_GOSSIP_NAME_MAX, &m->from);
        else if (key_is(k, "Flags"))
            rc = get_u32(v, &m->flags);
        else if (key_is(k, "Payload"))
            rc = get_raw(v, DF_GOSSIP_PAYLOAD_MAX, &m->payload);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_query_response_encode(df_buf_t *out, const df_serf_query_response_t *m)
{
    enc_t e;

    serf_begin(&e, out, DF_SERF_QUERY_RESPONSE);
    pk_map(&e, 5);
    pk_key(&e, "Flags");
    pk_uint(&e, m->flags);
    pk_key(&e, "From");
    pk_str(&e, m->from);
    pk_key(&e, "ID");
    pk_uint(&e, m->id);
    pk_key(&e, "LTime");
    pk_uint(&e, m->ltime);
    pk_key(&e, "Payload");
    pk_raw(&e, m->payload);
    return enc_end(&e);
}

int df_serf_relay_decode(const uint8_t *buf, size_t len, df_serf_relay_t *m)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    size_t pos = 1;
    uint32_t i, j;
    int rc;

    memset(m, 0, sizeof(*m));
    if (len < 1 || buf[0] != DF_SERF_RELAY)
        return DF_EPROTO;
    msgpack_unpacked_init(&u);
    rc = unpack_at(buf, len, &pos, &u);
    if (rc == DF_EAGAIN)
        rc = DF_EPROTO;
    if (rc == 0 && u.data.type != MSGPACK_OBJECT_MAP)
        rc = DF_EPROTO;
    map = rc == 0 ? &u.data.via.map : NULL;
    for (i = 0; rc == 0 && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "DestName")) {
            rc = get_str(v, DF_GOSSIP_NAME_MAX, &m->dest_name);
        } else if (key_is(k, "DestAddr")) {
            if (v->type == MSGPACK_OBJECT_NIL)
                continue;
            if (v->type != MSGPACK_OBJECT_MAP) {
                rc = DF_EPROTO;
                break;
            }
            for (j = 0; rc == 0 && j < v->via.map.size; j++) {
                const msgpack_object *k2 = &v->via.map.ptr[j].key, *v2 = &v->via.map.ptr[j].val;

                if ((rc = check_key(k2)) < 0)
                    break;
                if (key_is(k2, "IP"))
                    rc = get_raw(v2, DF_GOSSIP_ADDR_MAX, &m->dest_ip);
                else if (key_is(k2, "Port"))
                    rc = get_int(v2, &m->dest_port);
                else if (key_is(k2, "Zone"))
                    rc = get_str(v2, DF_GOSSIP_NAME_MAX, &m->dest_zone);
            }
        }
    }
    if (rc == 0) {
        /* The inner message must at least carry its Serf type byte. */
        if (pos >= len) {
            rc = DF_EPROTO;
        } else {
            m->inner.p = buf + pos;
            m->inner.len = len - pos;
        }
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_relay_encode(df_buf_t *out, const df_serf_relay_t *m)
{
    enc_t e;

    serf_begin(&e, out, DF_SERF_RELAY);
    pk_map(&e, 2);
    pk_key(&e, "DestAddr");
    pk_map(&e, 3);
    pk_key(&e, "IP");
    pk_raw(&e, m->dest_ip);
    pk_key(&e, "Port");
    pk_int(&e, m->dest_port);
    pk_key(&e, "Zone");
    pk_str(&e, m->dest_zone);
    pk_key(&e, "DestName");
    pk_str(&e, m->dest_name);
    put_bytes(&e, m->inner.p, m->inner.len);
    return enc_end(&e);
}

static const field_t key_request_fields[] = {
    FIELD(df_serf_key_request_t, "Key", FT_RAW, key, 32),
};

int df_serf_key_request_decode(const uint8_t *buf, size_t len, df_serf_key_request_t *m)
{
    return DECODE(DF_SERF_KEY_REQUEST, key_request_fields, m);
}

int df_serf_key_request_encode(df_buf_t *out, const df_serf_key_request_t *m)
{
    return ENCODE(DF_SERF_KEY_REQUEST, key_request_fields, m);
}

int df_serf_key_response_decode(const uint8_t *buf, size_t len, df_serf_key_response_t *m)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    uint32_t i, j;
    int rc;

    msgpack_unpacked_init(&u);
    memset(m, 0, sizeof(*m));
    m->keys_nil = true;
    rc = body_begin(buf, len, DF_SERF_KEY_RESPONSE, &u, &map);
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "Result")) {
            rc = get_bool(v, &m->result);
        } else if (key_is(k, "Message")) {
            rc = get_str(v, DF_GOSSIP_PAYLOAD_MAX, &m->message);
        } else if (key_is(k, "PrimaryKey")) {
            rc = get_str(v, 64, &m->primary_key);
        } else if (key_is(k, "Keys")) {
            m->nkeys = 0;
            m->keys_nil = v->type == MSGPACK_OBJECT_NIL;
            if (m->keys_nil)
                continue;
            if (v->type != MSGPACK_OBJECT_ARRAY) {
                rc = DF_EPROTO;
                break;
            }
            if (v->via.array.size > DF_SERF_KEYS_MAX) {
                rc = DF_ETOOBIG;
                break;
            }
            for (j = 0; rc == 0 && j < v->via.array.size; j++)
                rc = get_str(&v->via.array.ptr[j], 64, &m->keys[j]);
            m->nkeys = v->via.array.size;
        }
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_key_response_encode(df_buf_t *out, const df_serf_key_response_t *m)
{
    enc_t e;
    size_t i;

    if (m->nkeys > DF_SERF_KEYS_MAX)
        return DF_ETOOBIG;
    enc_begin(&e, out);
    put_u8(&e, DF_SERF_KEY_RESPONSE);
    pk_map(&e, 4);
    pk_key(&e, "Keys");
    if (m->nkeys == 0 && m->keys_nil) {
        ENC(&e, msgpack_pack_nil(&e.pk));
    } else {
        pk_array(&e, m->nkeys);
        for (i = 0; i < m->nkeys; i++)
            pk_str(&e, m->keys[i]);
    }
    pk_key(&e, "Message");
    pk_str(&e, m->message);
    pk_key(&e, "PrimaryKey");
    pk_str(&e, m->primary_key);
    pk_key(&e, "Result");
    pk_bool(&e, m->result);
    return enc_end(&e);
}

/* One Events ring slot: nil or userEvents{Events: [{Name, Payload}], LTime}. */
static int slot_decode(const msgpack_object *o, size_t slot, const df_serf_pushpull_cbs_t *cbs, void *arg)
{
    const msgpack_object *evs = NULL;
    uint64_t ltime = 0;
    df_gossip_bytes_t name, payload;
    uint32_t i, j;
    int rc = 0;

    if (o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        return DF_EPROTO;
    for (i = 0; rc == 0 && i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "LTime"))
            rc = get_uint(v, UINT64_MAX, &ltime);
        else if (key_is(k, "Events"))
            evs = v;
    }
    if (rc < 0 || !evs || evs->type == MSGPACK_OBJECT_NIL)
        return rc;
    if (evs->type != MSGPACK_OBJECT_ARRAY)
        return DF_EPROTO;
    if (evs->via.array.size > DF_SERF_SLOT_EVENTS_MAX)
        return DF_ETOOBIG;
    for (i = 0; i < evs->via.array.size; i++) {
        const msgpack_object *ev = &evs->via.array.ptr[i];

        memset(&name, 0, sizeof(name));
        memset(&payload, 0, sizeof(payload));
        if (ev->type != MSGPACK_OBJECT_MAP && ev->type != MSGPACK_OBJECT_NIL)
            return DF_EPROTO;
        for (j = 0; rc == 0 && ev->type == MSGPACK_OBJECT_MAP && j < ev->via.map.size; j++) {
            const msgpack_object *k = &ev->via.map.ptr[j].key, *v = &ev->via.map.ptr[j].val;

            if ((rc = check_key(k)) < 0)
                break;
            if (key_is(k, "Name"))
                rc = get_str(v, DF_GOSSIP_NAME_MAX, &name);
            else if (key_is(k, "Payload"))
                rc = get_raw(v, DF_SERF_EVENT_SIZE_MAX, &payload);
        }
        if (rc < 0)
            return rc;
        if (cbs && cbs->event_cb) {
            rc = cbs->event_cb(slot, ltime, name, payload, arg);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int df_serf_pushpull_decode(const uint8_t *buf, size_t len, df_serf_pushpull_t *m,
                            const df_serf_pushpull_cbs_t *cbs, void *arg)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    const msgpack_object *status = NULL, *left = NULL, *events = NULL;
    df_gossip_bytes_t name;
    uint64_t lt;
    uint32_t i;
    int rc;

    msgpack_unpacked_init(&u);
    memset(m, 0, sizeof(*m));
    rc = body_begin(buf, len, DF_SERF_PUSH_PULL, &u, &map);
    /* Scalars first, then the collections in MergeRemoteState's order (left
     * members, statuses, events), whatever order the keys came in. */
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "LTime"))
            rc = get_uint(v, UINT64_MAX, &m->ltime);
        else if (key_is(k, "EventLTime"))
            rc = get_uint(v, UINT64_MAX, &m->event_ltime);
        else if (key_is(k, "QueryLTime"))
            rc = get_uint(v, UINT64_MAX, &m->query_ltime);
        else if (key_is(k, "StatusLTimes"))
            status = v;
        else if (key_is(k, "LeftMembers"))
            left = v;
        else if (key_is(k, "Events"))
            events = v;
    }
    if (rc < 0)
        goto out;
    if (left && left->type != MSGPACK_OBJECT_NIL) {
        if (left->type != MSGPACK_OBJECT_ARRAY) {
            rc = DF_EPROTO;
            goto out;
        }
        if (left->via.array.size > SERF_MEMBERS_MAX) {
            rc = DF_ETOOBIG;
            goto out;
        }
        for (i = 0; i < left->via.array.size; i++) {
            rc = get_str(&left->via.array.ptr[i], DF_GOSSIP_NAME_MAX, &name);
            if (rc == 0 && cbs && cbs->left_cb)
                rc = cbs->left_cb(name, arg);
            if (rc < 0)
                goto out;
        }
        m->nleft = left->via.array.size;
    }
    if (status && status->type != MSGPACK_OBJECT_NIL) {
        if (status->type != MSGPACK_OBJECT_MAP) {
            rc = DF_EPROTO;
            goto out;
        }
        if (status->via.map.size > SERF_MEMBERS_MAX) {
            rc = DF_ETOOBIG;
            goto out;
        }
        for (i = 0; i < status->via.map.size; i++) {
            rc = get_str(&status->via.map.ptr[i].key, DF_GOSSIP_NAME_MAX, &name);
            if (rc == 0)
                rc = get_uint(&status->via.map.ptr[i].val, UINT64_MAX, &lt);
            if (rc == 0 && cbs && cbs->status_cb)
                rc = cbs->status_cb(name, lt, arg);
            if (rc < 0)
                goto out;
        }
        m->nstatus = status->via.map.size;
    }
    if (events && events->type != MSGPACK_OBJECT_NIL) {
        if (events->type != MSGPACK_OBJECT_ARRAY) {
            rc = DF_EPROTO;
            goto out;
        }
        if (events->via.array.size > DF_SERF_EVENT_SLOTS_MAX) {
            rc = DF_ETOOBIG;
            goto out;
        }
        for (i = 0; i < events->via.array.size; i++) {
            rc = slot_decode(&events->via.array.ptr[i], i, cbs, arg);
            if (rc < 0)
                goto out;
        }
        m->nslots = events->via.array.size;
    }
out:
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_pushpull_encode(df_buf_t *out, const df_serf_pushpull_enc_t *m)
{
    enc_t e;
    size_t i, j;

    if (m->nstatus > SERF_MEMBERS_MAX || m->nleft > SERF_MEMBERS_MAX || m->nslots > DF_SERF_EVENT_SLOTS_MAX)
        return DF_ETOOBIG;
    enc_begin(&e, out);
    put_u8(&e, DF_SERF_PUSH_PULL);
    pk_map(&e, 6);
    pk_key(&e, "EventLTime");
    pk_uint(&e, m->event_ltime);
    pk_key(&e, "Events");
    pk_array(&e, m->nslots);
    for (i = 0; i < m->nslots; i++) {
        const df_serf_event_slot_t *s = m->slots[i];

        if (!s) {
            ENC(&e, msgpack_pack_nil(&e.pk));
            continue;
        }
        pk_map(&e, 2);
        pk_key(&e, "Events");
        pk_array(&e, s->n);
        for (j = 0; j < s->n; j++) {
            pk_map(&e, 2);
            pk_key(&e, "Name");
            pk_str(&e, s->names[j]);
            pk_key(&e, "Payload");
            pk_raw(&e, s->payloads[j]);
        }
        pk_key(&e, "LTime");
        pk_uint(&e, s->ltime);
    }
    pk_key(&e, "LTime");
    pk_uint(&e, m->ltime);
    pk_key(&e, "LeftMembers");
    pk_array(&e, m->nleft);
    for (i = 0; i < m->nleft; i++)
        pk_str(&e, m->left[i]);
    pk_key(&e, "QueryLTime");
    pk_uint(&e, m->query_ltime);
    pk_key(&e, "StatusLTimes");
    pk_map(&e, m->nstatus);
    for (i = 0; i < m->nstatus; i++) {
        pk_str(&e, m->status[i].name);
        pk_uint(&e, m->status[i].ltime);
    }
    return enc_end(&e);
}

/* ==================================================================== tags */

int df_serf_tags_decode(const uint8_t *meta, size_t len,
                        int (*cb)(df_gossip_bytes_t key, df_gossip_bytes_t value, void *arg), void *arg)
{
    static const uint8_t role[] = "role";
    msgpack_unpacked u;
    df_gossip_bytes_t k, v;
    size_t pos = 1;
    uint32_t i;
    int rc;

    if (len > DF_GOSSIP_META_MAX)
        return DF_ETOOBIG;
    if (len == 0 || meta[0] != 0xff) {
        /* Serf protocol < 3: Meta is the role.  Empty Meta -> role "". */
        k.p = role;
        k.len = 4;
        v.p = meta;
        v.len = len;
        return cb ? cb(k, v, arg) : 0;
    }
    msgpack_unpacked_init(&u);
    rc = unpack_at(meta, len, &pos, &u);
    if (rc == DF_EAGAIN || (rc == 0 && pos != len))
        rc = DF_EPROTO;
    if (rc == 0 && u.data.type != MSGPACK_OBJECT_MAP && u.data.type != MSGPACK_OBJECT_NIL)
        rc = DF_EPROTO;
    for (i = 0; rc == 0 && u.data.type == MSGPACK_OBJECT_MAP && i < u.data.via.map.size; i++) {
        rc = get_str(&u.data.via.map.ptr[i].key, DF_GOSSIP_META_MAX, &k);
        if (rc == 0)
            rc = get_str(&u.data.via.map.ptr[i].val, DF_GOSSIP_META_MAX, &v);
        if (rc == 0 && cb)
            rc = cb(k, v, arg);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_tags_encode(df_buf_t *out, const df_gossip_bytes_t *keys, const df_gossip_bytes_t *values,
                        size_t n)
{
    enc_t e;
    size_t i;

    enc_begin(&e, out);
    put_u8(&e, 0xff);
    pk_map(&e, n);
    for (i = 0; i < n; i++) {
        pk_str(&e, keys[i]);
        pk_str(&e, values[i]);
    }
    if (e.rc == 0 && out->len - e.start > DF_GOSSIP_META_MAX)
        e.rc = DF_ETOOBIG; /* MetaMaxSize: Serf refuses such tags */
    return enc_end(&e);
}

/* ========================================================== query filters */

int df_serf_filter_nodes_match(const uint8_t *f, size_t len, df_gossip_bytes_t name, bool *match)
{
    msgpack_unpacked u;
    df_gossip_bytes_t s;
    size_t pos = 1;
    uint32_t i;
    int rc;

    *match = false;
    if (len < 1 || f[0] != DF_SERF_FILTER_NODE)
        return DF_EPROTO;
    msgpack_unpacked_init(&u);
    rc = unpack_at(f, len, &pos, &u);
    if (rc == DF_EAGAIN || (rc == 0 && pos != len))
        rc = DF_EPROTO;
    if (rc == 0 && u.data.type != MSGPACK_OBJECT_ARRAY && u.data.type != MSGPACK_OBJECT_NIL)
        rc = DF_EPROTO;
    for (i = 0; rc == 0 && u.data.type == MSGPACK_OBJECT_ARRAY && i < u.data.via.array.size; i++) {
        rc = get_str(&u.data.via.array.ptr[i], DF_GOSSIP_NAME_MAX, &s);
        if (rc == 0 && s.len == name.len && (s.len == 0 || memcmp(s.p, name.p, s.len) == 0))
            *match = true;
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int df_serf_filter_nodes_encode(df_buf_t *out, const df_gossip_bytes_t *names, size_t n)
{
    enc_t e;
    size_t i;

    enc_begin(&e, out);
    put_u8(&e, DF_SERF_FILTER_NODE);
    pk_array(&e, n);
    for (i = 0; i < n; i++)
        pk_str(&e, names[i]);
    return enc_end(&e);
}

int df_serf_filter_tag_decode(const uint8_t *f, size_t len, df_gossip_bytes_t *tag, df_gossip_bytes_t *expr)
{
    msgpack_unpacked u;
    const msgpack_object_map *map;
    uint32_t i;
    int rc;

    tag->p = expr->p = NULL;
    tag->len = expr->len = 0;
    if (len < 1 || f[0] != DF_SERF_FILTER_TAG)
        return DF_EPROTO;
    msgpack_unpacked_init(&u);
    rc = body_begin(f, len, DF_SERF_FILTER_TAG, &u, &map);
    for (i = 0; rc == 0 && map && i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;

        if ((rc = check_key(k)) < 0)
            break;
        if (key_is(k, "Tag"))
            rc = get_str(v, DF_GOSSIP_META_MAX, tag);
        else if (key_is(k, "Expr"))
            rc = get_str(v, DF_GOSSIP_META_MAX, expr);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}
