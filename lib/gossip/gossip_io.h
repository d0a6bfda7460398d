/*
 * Runs one sans-I/O gossip node (gossip_node.h) on real sockets with
 * libevent: a UDP socket and a TCP listener on the same address and port
 * (memberlist's layout), one bufferevent per TCP exchange framed with
 * df_gossip_stream_msg_len, and one timer armed at the node's next wake-up.
 *
 * Used by dfdaemon's gossip mode (tracker_gossip.c) and by the test tool
 * tests/tools/gossip_driver.c.
 *
 * Contract: every call the owner makes on the node (df_gossip_user_event,
 * df_gossip_join, df_gossip_leave, ...) must be followed by
 * df_gossip_io_pump(), which sends what the node produced, delivers its
 * events to event_cb and re-arms the timer.  event_cb runs from inside
 * pump; it may call the node and pump again (the nested pump only marks
 * more work, the outer one loops).
 *
 * Caps: at most DF_GOSSIP_IO_CONNS_MAX TCP connections at once (an accept
 * over it is closed at once), a stream message over DF_GOSSIP_STREAM_MAX
 * bytes closes its connection, each connection lives at most
 * tcp_timeout_ms idle.
 */
#ifndef DF_GOSSIP_IO_H
#define DF_GOSSIP_IO_H
#ifndef DF_INTERNAL
#error "lib/gossip/gossip_io.h is private to libdfly"
#endif

#include "gossip/gossip_node.h"

#include <sys/socket.h>

#define DF_GOSSIP_IO_CONNS_MAX 128

struct event_base;
typedef struct df_gossip_io df_gossip_io_t;

typedef void (*df_gossip_io_event_cb)(const df_gossip_event_t *ev, void *arg);

typedef struct {
    struct event_base *base;      /* borrowed */
    struct sockaddr_storage bind; /* IPv4 or IPv6; port 0 = pick one (UDP first, TCP on the same) */
    df_gossip_config_t cfg;       /* addr/addr_len 0: advertise the bound address; port is
                                   * always the bound port */
    df_gossip_io_event_cb event_cb; /* may be NULL */
    void *arg;
} df_gossip_io_opts_t;

typedef struct {
    uint64_t udp_in, udp_out, udp_errors;   /* datagrams */
    uint64_t tcp_in, tcp_out, tcp_refused;  /* connections accepted / opened / over the cap */
    uint64_t stream_errors;                 /* malformed or rejected stream messages */
} df_gossip_io_stats_t;

/* Binds and creates the node.  opts is copied (cfg strings are copied by the
 * node).  0, -errno (bind failure: -EADDRINUSE...) or a node error. */
int df_gossip_io_new(const df_gossip_io_opts_t *opts, df_gossip_io_t **out);
/* Closes every socket and frees the node.  NULL is fine.  Not from inside
 * event_cb. */
void df_gossip_io_free(df_gossip_io_t *io);

/* The node, for API calls (follow each with df_gossip_io_pump). */
df_gossip_node_t *df_gossip_io_node(df_gossip_io_t *io);
void df_gossip_io_pump(df_gossip_io_t *io);
uint16_t df_gossip_io_port(const df_gossip_io_t *io);
void df_gossip_io_stats(const df_gossip_io_t *io, df_gossip_io_stats_t *out);

/* Joins through addr (4 or 16 bytes) and port; pumps. */
int df_gossip_io_join(df_gossip_io_t *io, const uint8_t *addr, size_t addr_len, uint16_t port);

#endif
