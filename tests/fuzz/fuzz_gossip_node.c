/*
 * libFuzzer target for the gossip node's state machine (lib/gossip/
 * gossip_node.c), where fuzz_gossip_packet covers the codec alone.  The
 * input is a script of records, each `u8 op | u16 BE len | len bytes`:
 *   op%8 == 0  a UDP datagram from 10.0.0.<b0>:7946
 *   op%8 == 1  an inbound TCP message (stream id = record index)
 *   op%8 == 2  the reply on the last stream the node opened
 *   op%8 == 3  time passes: u16 of the bytes, in ms (timers fire)
 *   op%8 == 4  join 10.0.0.<b0>:7946
 *   op%8 == 5  send a user event (name and payload from the bytes)
 *   op%8 == 6  leave
 *   op%8 == 7  send a query / answer the last query delivered
 * After each record the outputs and events are drained.  Besides memory
 * errors it checks contracts: receive calls return only documented codes,
 * datagrams stay within 64 KiB, the member table within its cap.
 */
#include "core/core.h"
#include "gossip/gossip_codec.h"
#include "gossip/gossip_node.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t last_open, q_ltime;
static uint32_t q_id;
static int have_query;

static void drain(df_gossip_node_t *n)
{
    df_gossip_output_t o;
    df_gossip_event_t ev;

    while (df_gossip_next_output(n, &o)) {
        if (o.kind == DF_GOSSIP_OUT_UDP && o.len > DF_GOSSIP_PACKET_MAX)
            abort();
        if (o.kind == DF_GOSSIP_OUT_STREAM_OPEN)
            last_open = o.stream_id;
        if (o.addr_len != 4 && o.addr_len != 16)
            abort();
    }
    while (df_gossip_next_event(n, &ev)) {
        if (ev.kind == DF_GOSSIP_EV_QUERY) {
            q_ltime = ev.ltime;
            q_id = ev.query_id;
            have_query = 1;
        }
        if (strlen(ev.name) > DF_GOSSIP_NAME_MAX)
            abort();
    }
    if (df_gossip_count(n, DF_GOSSIP_STATUS_ALIVE) > DF_GOSSIP_MEMBERS_MAX)
        abort();
}

static void check_stream_rc(int rc)
{
    if (rc != 0 && rc != DF_EPROTO && rc != DF_ETOOBIG && rc != -EBADMSG && rc != -ENOKEY && rc != -ENOMEM)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *keys[] = {"role"}, *vals[] = {"fuzz"};
    df_gossip_config_t cfg;
    df_gossip_node_t *n;
    uint64_t now = 1000;
    size_t pos = 0, rec = 0;
    uint8_t from[4] = {10, 0, 0, 1};

    df_gossip_config_default(&cfg);
    cfg.name = "fuzz";
    memcpy(cfg.addr, from, 4);
    cfg.addr_len = 4;
    cfg.port = 7946;
    cfg.tag_keys = keys;
    cfg.tag_values = vals;
    cfg.ntags = 1;
    cfg.seed = 1;
    if (df_gossip_node_new(&cfg, now, &n) < 0)
        abort();
    last_open = 0;
    have_query = 0;
    while (pos + 3 <= size && rec < 256) {
        uint8_t op = data[pos];
        size_t len = ((size_t)data[pos + 1] << 8) | data[pos + 2];
        const uint8_t *b = data + pos + 3;
        int rc;

        if (len > size - pos - 3)
            len = size - pos - 3;
        pos += 3 + len;
        rec++;
        from[3] = len ? b[0] : 2;
        switch (op % 8) {
        case 0:
            rc = df_gossip_recv_packet(n, from, 4, 7946, b, len, now);
            if (rc != 0 && rc != -ENOMEM)
                abort();
            break;
        case 1:
            check_stream_rc(df_gossip_recv_stream(n, rec, true, from, 4, 7946, b, len, now));
            break;
        case 2:
            check_stream_rc(df_gossip_recv_stream(n, last_open, false, from, 4, 7946, b, len, now));
            break;
        case 3:
            now += len >= 2 ? ((uint64_t)b[0] << 8 | b[1]) : 1000;
            df_gossip_tick(n, now);
            break;
        case 4:
            df_gossip_join(n, from, 4, 7946, len & 1, now);
            break;
        case 5: {
            char name[16];
            size_t nl = len < 15 ? len : 15, i;
            for (i = 0; i < nl; i++)
                name[i] = (char)('a' + b[i] % 26);
            name[nl] = '\0';
            df_gossip_user_event(n, name, b, len, len & 1, now);
            break;
        }
        case 6:
            df_gossip_leave(n, now);
            break;
        case 7:
            if (have_query && (len & 1))
                df_gossip_respond(n, q_ltime, q_id, b, len, now);
            else
                df_gossip_query(n, "q", b, len > 64 ? 64 : len, NULL, 0, true, 0, now, NULL);
            break;
        }
        drain(n);
    }
    df_gossip_node_free(n);
    return 0;
}
