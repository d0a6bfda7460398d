/*
 * Internals shared by the peer (peer.c) and its downloads (download.c).
 */
#ifndef DF_ENGINE_PEER_INTERNAL_H
#define DF_ENGINE_PEER_INTERNAL_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "core/core.h"
#include "core/workq.h"
#include "net/http_client.h"
#include "piece/piece_store.h"
#include "piece/rate_limit.h"
#include "tracker/tracker.h"

#include <event2/event.h>

typedef struct df_download df_download_t;

struct df_peer {
    struct event_base *base;
    df_peer_config_t cfg;       /* strings below are owned copies */
    char *home_dir;
    char *upload_host;
    char **nodes;               /* NULL-terminated */
    df_http_t *http;
    df_workq_t *hashq;          /* piece verification off the loop; NULL = on the loop */
    df_store_t *store;
    df_tracker_t *tracker;      /* NULL when no supernode is configured */
    struct evhttp *evh;         /* upload server listener; NULL when not serving */
    struct df_upload_server *up;
    uint16_t upload_port;
    char advertise_ip[64];
    char hostname[128];
    char peer_id[DF_PEER_ID_MAX]; /* assigned by the tracker at the first Register */
    df_rate_limit_t host_rl;    /* --totallimit, shared by every download */
    df_download_t *downloads;
    struct event *tick;         /* heartbeat and GC */
    uint64_t last_heartbeat_ms;
    uint64_t last_gc_ms;
    bool gc_soon;               /* a download ended: GC at the next tick, not in 30 s */
    struct event *leave_timer;  /* df_peer_leave() */
    void (*leave_cb)(void *arg);
    void *leave_arg;
    bool leave_fired;
    df_peer_stats_t stats;      /* the counters; present values are filled by df_peer_stats() */
    bool gossip;                /* tracker is tracker_gossip.c's */
    struct seed_ctx *seeds;     /* gossip seed downloads running (their done contexts) */
    char **gossip_join;         /* owned copies, NULL-terminated */
};

/* Cancels every download without calling their callbacks (peer teardown). */
void df__download_cancel_all(df_peer_t *peer);
/* Downloads started and not yet finished. */
uint32_t df__download_count_active(const df_peer_t *peer);

#endif
