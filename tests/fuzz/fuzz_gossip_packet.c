/*
 * libFuzzer target for the whole gossip receive path: an AES-GCM decrypt
 * attempt with a fixed keyring (a hit is unlikely but exercises the
 * checks), then df_gossip_packet_walk (CRC, compound, compress, nesting and
 * budgets) with every leaf handed to its memberlist decoder, and user
 * messages to the Serf decoders.  The same bytes also go through the TCP
 * stream framer and the push/pull decoders.  Besides memory errors it checks
 * contracts: decoders return 0 / DF_EPROTO / DF_ETOOBIG only, and a
 * decoded alive or ping re-encodes to something that decodes the same.
 */
#include "core/core.h"
#include "gossip/gossip_codec.h"
#include "gossip/gossip_crypto.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_rc(int rc)
{
    if (rc != 0 && rc != DF_EPROTO && rc != DF_ETOOBIG)
        abort();
}

static int ignore_cb(df_gossip_bytes_t a, df_gossip_bytes_t b, void *arg)
{
    return 0;
}

static int status_cb(df_gossip_bytes_t name, uint64_t lt, void *arg)
{
    return 0;
}

static int left_cb(df_gossip_bytes_t name, void *arg)
{
    return 0;
}

static int event_cb(size_t slot, uint64_t lt, df_gossip_bytes_t n, df_gossip_bytes_t p, void *arg)
{
    return 0;
}

static const df_serf_pushpull_cbs_t pp_cbs = {status_cb, left_cb, event_cb};

static void serf_leaf(const uint8_t *m, size_t len)
{
    df_serf_intent_t in;
    df_serf_user_event_t ev;
    df_serf_query_t q;
    df_serf_query_response_t qr;
    df_serf_relay_t r;
    df_serf_pushpull_t pp;
    df_serf_key_request_t kq;
    df_serf_key_response_t kr;

    switch (m[0]) {
    case DF_SERF_LEAVE:
    case DF_SERF_JOIN:
        check_rc(df_serf_intent_decode(m, len, m[0], &in));
        break;
    case DF_SERF_USER_EVENT:
        check_rc(df_serf_user_event_decode(m, len, &ev));
        break;
    case DF_SERF_QUERY:
        if (df_serf_query_decode(m, len, &q) == 0 && q.nfilters > 0 && q.filters[0].len > 0) {
            /* Key requests ride in query payloads. */
            if (q.payload.len > 0 && q.payload.p[0] == DF_SERF_KEY_REQUEST)
                check_rc(df_serf_key_request_decode(q.payload.p, q.payload.len, &kq));
        }
        break;
    case DF_SERF_QUERY_RESPONSE:
        if (df_serf_query_response_decode(m, len, &qr) == 0 && qr.payload.len > 0 &&
            qr.payload.p[0] == DF_SERF_KEY_RESPONSE)
            check_rc(df_serf_key_response_decode(qr.payload.p, qr.payload.len, &kr));
        break;
    case DF_SERF_RELAY:
        if (df_serf_relay_decode(m, len, &r) == 0 && r.inner.len > 0 && r.inner.p[0] != DF_SERF_RELAY)
            serf_leaf(r.inner.p, r.inner.len);
        break;
    case DF_SERF_PUSH_PULL:
        check_rc(df_serf_pushpull_decode(m, len, &pp, &pp_cbs, NULL));
        break;
    default:
        break;
    }
}

static int leaf_cb(const uint8_t *m, size_t len, void *arg)
{
    df_gossip_ping_t p, p2;
    df_gossip_indirect_ping_t ip;
    df_gossip_ack_t ack;
    df_gossip_nack_t nack;
    df_gossip_suspect_t s;
    df_gossip_alive_t a, a2;
    df_gossip_bytes_t b;
    df_buf_t out;

    df_buf_init(&out, 1 << 16);
    switch (m[0]) {
    case DF_GOSSIP_PING:
        if (df_gossip_ping_decode(m, len, &p) == 0) {
            if (df_gossip_ping_encode(&out, &p) != 0 ||
                df_gossip_ping_decode((uint8_t *)out.data, out.len, &p2) != 0 || p2.seq_no != p.seq_no ||
                p2.node.len != p.node.len)
                abort();
        }
        break;
    case DF_GOSSIP_INDIRECT_PING:
        check_rc(df_gossip_indirect_ping_decode(m, len, &ip));
        break;
    case DF_GOSSIP_ACK:
        check_rc(df_gossip_ack_decode(m, len, &ack));
        break;
    case DF_GOSSIP_NACK:
        check_rc(df_gossip_nack_decode(m, len, &nack));
        break;
    case DF_GOSSIP_SUSPECT:
    case DF_GOSSIP_DEAD:
        check_rc(df_gossip_suspect_decode(m, len, m[0], &s));
        break;
    case DF_GOSSIP_ALIVE:
        if (df_gossip_alive_decode(m, len, &a) == 0) {
            check_rc(df_serf_tags_decode(a.meta.p, a.meta.len, ignore_cb, NULL));
            if (df_gossip_alive_encode(&out, &a) != 0 ||
                df_gossip_alive_decode((uint8_t *)out.data, out.len, &a2) != 0 ||
                a2.incarnation != a.incarnation || a2.meta.len != a.meta.len || a2.has_vsn != a.has_vsn)
                abort();
        }
        break;
    case DF_GOSSIP_USER:
        if (df_gossip_user_unwrap(m, len, &b) == 0)
            serf_leaf(b.p, b.len);
        break;
    case DF_GOSSIP_ERR:
        check_rc(df_gossip_err_decode(m, len, &b));
        break;
    default:
        break;
    }
    df_buf_free(&out);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static df_gossip_keyring_t kr;
    static int init;
    static df_gossip_node_state_t nodes[64];
    static uint8_t plain[DF_GOSSIP_PACKET_MAX];
    df_gossip_pushpull_hdr_t hdr;
    df_gossip_bytes_t us;
    df_serf_pushpull_t spp;
    size_t plen, used;
    int rc;

    if (!init) {
        static const uint8_t key[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

        df_gossip_keyring_init(&kr);
        df_gossip_keyring_add(&kr, key, sizeof(key), true);
        init = 1;
    }
    if (size > DF_GOSSIP_PACKET_MAX)
        return 0;
    if (df_gossip_decrypt_packet(&kr, data, size, plain, sizeof(plain), &plen) == 0)
        check_rc(df_gossip_packet_walk(plain, plen, leaf_cb, NULL));
    check_rc(df_gossip_packet_walk(data, size, leaf_cb, NULL));

    /* The TCP side over the same bytes. */
    rc = df_gossip_stream_msg_len(data, size, &used);
    if (rc == 0 && used > size)
        abort();
    if (rc != 0 && rc != DF_EAGAIN)
        check_rc(rc);
    rc = df_gossip_pushpull_decode(data, size, &hdr, nodes, 64, &us, &used);
    if (rc == 0) {
        if (used > size || us.p + us.len > data + size)
            abort();
        if (us.len > 0 && us.p[0] == DF_SERF_PUSH_PULL)
            check_rc(df_serf_pushpull_decode(us.p, us.len, &spp, &pp_cbs, NULL));
    } else if (rc != DF_EAGAIN) {
        check_rc(rc);
    }
    return 0;
}
