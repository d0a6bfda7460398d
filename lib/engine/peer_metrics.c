/*
 * dfdaemon's /metrics: a peer's statistics (df_peer_stats) in the Prometheus
 * text format, through the core metrics registry (core/metrics.h).
 *
 * Stateless: every render builds a fresh registry and copies the current
 * values in, so the peer carries no registry and nothing can drift between
 * the counters and what is shown.  A render is a few dozen series: cheap
 * next to a scrape interval.  The names are documented in docs/METRICS.md;
 * keep the two in step.
 */
#include "core/metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Far above what ~20 series need; a cap because the buffer API wants one. */
#define METRICS_CAP (64u * 1024u)

typedef struct {
    const char *name;
    const char *help;
    df_metric_type_t type;
    const char *label;  /* name of the one label, or NULL */
    const char *lvalue;
    double value;
} series_t;

static int add(df_metrics_t *m, const series_t *s)
{
    df_metric_label_t l = {s->label, s->lvalue};
    df_metric_t *h = NULL;
    int rc;

    if (s->type == DF_METRIC_COUNTER)
        rc = df_metrics_counter(m, s->name, s->help, s->label ? &l : NULL, s->label ? 1 : 0, &h);
    else
        rc = df_metrics_gauge(m, s->name, s->help, s->label ? &l : NULL, s->label ? 1 : 0, &h);
    if (rc < 0)
        return rc;
    df_metric_set(h, s->value);
    return 0;
}

/* Gossip mode: the node's membership and dfly's events (nothing in
 * supernode mode). */
static int add_gossip(const df_peer_t *peer, df_metrics_t *m)
{
    df_peer_gossip_stats_t g;
    int rc;

    if (df_peer_gossip_stats(peer, &g) < 0)
        return 0;
    const series_t series[] = {
        {"dfly_dfdaemon_gossip_members", "Gossip members by state", DF_METRIC_GAUGE, "state", "alive",
         (double)g.members_alive},
        {"dfly_dfdaemon_gossip_members", NULL, DF_METRIC_GAUGE, "state", "leaving", (double)g.members_leaving},
        {"dfly_dfdaemon_gossip_members", NULL, DF_METRIC_GAUGE, "state", "left", (double)g.members_left},
        {"dfly_dfdaemon_gossip_members", NULL, DF_METRIC_GAUGE, "state", "failed", (double)g.members_failed},
        {"dfly_dfdaemon_gossip_events_total", "dfly gossip events, by what happened to them", DF_METRIC_COUNTER,
         "result", "sent", (double)g.events_sent},
        {"dfly_dfdaemon_gossip_events_total", NULL, DF_METRIC_COUNTER, "result", "received",
         (double)g.events_received},
        {"dfly_dfdaemon_gossip_events_total", NULL, DF_METRIC_COUNTER, "result", "dropped",
         (double)g.events_dropped},
        {"dfly_dfdaemon_gossip_sync_total", "Availability repair queries (point to point), by direction",
         DF_METRIC_COUNTER, "result", "sent", (double)g.sync_sent},
        {"dfly_dfdaemon_gossip_sync_total", NULL, DF_METRIC_COUNTER, "result", "answered",
         (double)g.sync_answered},
        {"dfly_dfdaemon_gossip_probe_failures_total", "Members this node saw declared failed",
         DF_METRIC_COUNTER, NULL, NULL, (double)g.probe_failures},
        {"dfly_dfdaemon_gossip_tasks_owned", "Tasks this node owns (reads from the origin)", DF_METRIC_GAUGE,
         NULL, NULL, (double)g.tasks_owned},
        {"dfly_dfdaemon_gossip_seeds_total", "Seed downloads started as a task's owner", DF_METRIC_COUNTER,
         NULL, NULL, (double)g.seeds_started},
        {"dfly_dfdaemon_gossip_health_score", "Lifeguard local health score (0 = healthy)", DF_METRIC_GAUGE,
         NULL, NULL, (double)g.health_score},
        {"dfly_dfdaemon_gossip_dns_rounds_total", "--gossip-dns resolutions, by result", DF_METRIC_COUNTER,
         "result", "ok", (double)(g.dns_rounds - g.dns_failures)},
        {"dfly_dfdaemon_gossip_dns_rounds_total", NULL, DF_METRIC_COUNTER, "result", "failed",
         (double)g.dns_failures},
        {"dfly_dfdaemon_gossip_dns_joins_total", "Addresses found by DNS that were not members yet, joined",
         DF_METRIC_COUNTER, NULL, NULL, (double)g.dns_joins},
        {"dfly_dfdaemon_gossip_rejected_total", "Gossip messages dropped (encryption mismatch, malformed), and ours refused",
         DF_METRIC_COUNTER, "reason", "wrong_key", (double)g.rx_wrong_key},
        {"dfly_dfdaemon_gossip_rejected_total", NULL, DF_METRIC_COUNTER, "reason", "not_encrypted",
         (double)g.rx_unencrypted},
        {"dfly_dfdaemon_gossip_rejected_total", NULL, DF_METRIC_COUNTER, "reason", "unexpected_encryption",
         (double)g.rx_encrypted},
        {"dfly_dfdaemon_gossip_rejected_total", NULL, DF_METRIC_COUNTER, "reason", "refused_by_peer",
         (double)g.rx_refused},
        {"dfly_dfdaemon_gossip_rejected_total", NULL, DF_METRIC_COUNTER, "reason", "malformed",
         (double)g.rx_malformed},
        {"dfly_dfdaemon_gossip_broadcasts_pruned_total",
         "Broadcasts pruned from a full gossip queue before their last retransmit", DF_METRIC_COUNTER, NULL, NULL,
         (double)g.bcast_pruned},
    };
    for (size_t i = 0; i < DF_ARRAY_LEN(series); i++) {
        rc = add(m, &series[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int df_peer_metrics_render(const df_peer_t *peer, char **out, size_t *len_out)
{
    df_peer_stats_t st;
    df_metrics_t *m = NULL;
    df_buf_t b;
    int rc;

    df_peer_stats(peer, &st);
    /* In gossip mode the seed is the task's owner (another dfdaemon), not a
     * supernode: its bytes are labelled so. */
    df_peer_gossip_stats_t gs;
    const char *seed_label = df_peer_gossip_stats(peer, &gs) == 0 ? "owner" : "supernode";
    const series_t series[] = {
        {"dfly_dfdaemon_up", "Whether the dfdaemon is running", DF_METRIC_GAUGE, NULL, NULL, 1},
        {"dfly_dfdaemon_info", "Build information", DF_METRIC_GAUGE, "version", df_version(), 1},
        {"dfly_dfdaemon_downloads_active", "Downloads running now", DF_METRIC_GAUGE, NULL, NULL,
         (double)st.downloads_active},
        {"dfly_dfdaemon_downloads_total", "Downloads finished, by result", DF_METRIC_COUNTER, "result",
         "ok", (double)st.downloads_completed},
        {"dfly_dfdaemon_downloads_total", NULL, DF_METRIC_COUNTER, "result", "failed",
         (double)st.downloads_failed},
        {"dfly_dfdaemon_download_bytes_total", "Bytes downloaded, by where they came from",
         DF_METRIC_COUNTER, "source", "peer", (double)st.bytes_from_peers},
        {"dfly_dfdaemon_download_bytes_total", NULL, DF_METRIC_COUNTER, "source", seed_label,
         (double)st.bytes_from_supernode},
        {"dfly_dfdaemon_download_bytes_total", NULL, DF_METRIC_COUNTER, "source", "origin",
         (double)st.bytes_from_origin},
        {"dfly_dfdaemon_back_source_total", "Downloads that fell back to the origin", DF_METRIC_COUNTER,
         NULL, NULL, (double)st.back_source},
        {"dfly_dfdaemon_pieces_verified_total", "Pieces received and verified against their sha256",
         DF_METRIC_COUNTER, NULL, NULL, (double)st.pieces_verified},
        {"dfly_dfdaemon_digest_failures_total",
         "Pieces that failed verification, plus downloads that ended on a digest mismatch",
         DF_METRIC_COUNTER, NULL, NULL, (double)st.digest_failures},
        {"dfly_dfdaemon_upload_requests_total", "Piece requests answered by the upload server",
         DF_METRIC_COUNTER, NULL, NULL, (double)st.upload_requests},
        {"dfly_dfdaemon_upload_errors_total", "Piece requests answered with 4xx/5xx", DF_METRIC_COUNTER,
         NULL, NULL, (double)st.upload_errors},
        {"dfly_dfdaemon_upload_bytes_total", "Piece bytes served to other peers", DF_METRIC_COUNTER, NULL,
         NULL, (double)st.upload_bytes},
        {"dfly_dfdaemon_store_bytes", "Piece store size (every task's full length)", DF_METRIC_GAUGE, NULL,
         NULL, (double)st.store_bytes},
        {"dfly_dfdaemon_store_tasks", "Tasks in the piece store", DF_METRIC_GAUGE, NULL, NULL,
         (double)st.store_tasks},
        {"dfly_dfdaemon_store_evicted_total", "Tasks evicted by the store's GC (over the budget or unused too long)",
         DF_METRIC_COUNTER, NULL, NULL, (double)st.store_evicted},
    };

    df_buf_init(&b, METRICS_CAP);
    rc = df_metrics_new(&m);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < DF_ARRAY_LEN(series); i++) {
        rc = add(m, &series[i]);
        if (rc < 0)
            goto out;
    }
    rc = add_gossip(peer, m);
    if (rc < 0)
        goto out;
    rc = df_metrics_render(m, &b);
    if (rc < 0)
        goto out;
    if (!b.data) { /* nothing appended: cannot happen with the series above */
        rc = -EINVAL;
        goto out;
    }
    *out = b.data;
    *len_out = b.len;
    b.data = NULL; /* handed over */
out:
    df_buf_free(&b);
    df_metrics_free(m);
    return rc;
}
