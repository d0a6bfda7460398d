/*
 * supernode: the tracker, scheduler and seed cache of a dfly cluster.
 *
 * A thin program over libdfly's public API: parse flags (over an optional
 * YAML file), start df_supernode on an event loop, stop cleanly on SIGINT or
 * SIGTERM.
 */
#include <dfly/dfly.h>

#include <event2/event.h>

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: supernode [options]\n"
            "  --listen HOST:PORT       API, metrics and seed pieces (default 0.0.0.0:8002)\n"
            "  --data-dir DIR           seed cache (default /var/lib/dfly/supernode)\n"
            "  --advertise-ip IP        address peers use to fetch seed pieces\n"
            "                           (default: the listen host, or 127.0.0.1 for 0.0.0.0)\n"
            "  --cache-limit SIZE       seed cache budget, e.g. 20G (default unlimited)\n"
            "  --peer-timeout DUR       drop peers silent this long (default 60s)\n"
            "  --origin-timeout DUR     origin connect/stall limit (default 30s)\n"
            "  --peer-upload-slots N    concurrent uploads per peer (default 4)\n"
            "  --seed-upload-slots N    concurrent uploads from the seed (default 16)\n"
            "  --seed-piece-limit N     the seed does not send a piece N uploading peers hold\n"
            "                           or fetch (default 1; 0 = no such rule)\n"
            "  --batch-pieces N         max pieces in one pull answer (default 8, at most 64)\n"
            "  --piece-size SIZE        force a piece size (default: by file length)\n"
            "  --hash-threads N         1: the seed hashes pieces and the file on a thread\n"
            "                           off the event loop (default); 0: on the loop\n"
            "  --config FILE            YAML file, keys as the long flags; flags override it\n"
            "  --log-level LEVEL        error, warn, info (default) or debug\n"
            "  --version, --help\n");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    fprintf(stderr, "supernode: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    event_base_loopbreak(arg);
}

static int parse_slots(const char *s, uint32_t *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || v == 0 || v > 1u << 20)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

enum {
    OPT_LISTEN = 256, OPT_DATA_DIR, OPT_ADVERTISE, OPT_CACHE_LIMIT, OPT_PEER_TIMEOUT,
    OPT_ORIGIN_TIMEOUT, OPT_PIECE_SIZE, OPT_CONFIG, OPT_LOG_LEVEL, OPT_VERSION, OPT_HELP,
    OPT_PEER_SLOTS, OPT_SEED_SLOTS, OPT_SEED_PIECE_LIMIT, OPT_BATCH,
    OPT_HASH_THREADS,
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"data-dir", required_argument, NULL, OPT_DATA_DIR},
        {"advertise-ip", required_argument, NULL, OPT_ADVERTISE},
        {"cache-limit", required_argument, NULL, OPT_CACHE_LIMIT},
        {"peer-timeout", required_argument, NULL, OPT_PEER_TIMEOUT},
        {"origin-timeout", required_argument, NULL, OPT_ORIGIN_TIMEOUT},
        {"peer-upload-slots", required_argument, NULL, OPT_PEER_SLOTS},
        {"seed-upload-slots", required_argument, NULL, OPT_SEED_SLOTS},
        {"seed-piece-limit", required_argument, NULL, OPT_SEED_PIECE_LIMIT},
        {"batch-pieces", required_argument, NULL, OPT_BATCH},
        {"piece-size", required_argument, NULL, OPT_PIECE_SIZE},
        {"hash-threads", required_argument, NULL, OPT_HASH_THREADS},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    static char host[256];
    df_supernode_config_t cfg;
    df_supernode_t *sn = NULL;
    struct event_base *base = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    const char *config = NULL;
    df_log_level_t level = DF_LOG_INFO;
    bool level_set = false;
    char err[512];
    int c, rc, status = 1;

    df_log_setup("supernode", DF_LOG_INFO);
    df_supernode_config_init(&cfg);

    /* Pass 1: --config, --help, --version (the file goes under the flags). */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == OPT_CONFIG)
            config = optarg;
        else if (c == OPT_HELP) {
            usage(stdout);
            return 0;
        } else if (c == OPT_VERSION) {
            printf("supernode %s\n", df_version());
            return 0;
        }
    }
    if (config) {
        rc = df_supernode_config_load(&cfg, config, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "supernode: %s\n", err[0] ? err : df_strerror(rc));
            return 2;
        }
    }

    /* Pass 2: every flag, over the file. */
    opterr = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case OPT_LISTEN:
            bad = df_parse_hostport(optarg, host, sizeof(host), &cfg.listen_port) < 0;
            cfg.listen_host = host;
            break;
        case OPT_DATA_DIR: cfg.data_dir = optarg; break;
        case OPT_ADVERTISE: cfg.advertise_ip = optarg; break;
        case OPT_CACHE_LIMIT: bad = df_parse_size(optarg, &cfg.cache_limit_bytes) < 0; break;
        case OPT_PIECE_SIZE: bad = df_parse_size(optarg, &cfg.piece_size) < 0; break;
        case OPT_PEER_TIMEOUT:
            bad = df_parse_duration_ms(optarg, &cfg.peer_timeout_ms) < 0 || !cfg.peer_timeout_ms;
            break;
        case OPT_ORIGIN_TIMEOUT:
            bad = df_parse_duration_ms(optarg, &cfg.origin_timeout_ms) < 0 || !cfg.origin_timeout_ms;
            break;
        case OPT_PEER_SLOTS: bad = parse_slots(optarg, &cfg.peer_upload_slots) < 0; break;
        case OPT_SEED_SLOTS: bad = parse_slots(optarg, &cfg.seed_upload_slots) < 0; break;
        case OPT_SEED_PIECE_LIMIT: {
            char *end;
            unsigned long n = strtoul(optarg, &end, 10);
            bad = !*optarg || *end || optarg[0] == '-' || n > 1024;
            if (!bad)
                cfg.seed_piece_limit = (uint32_t)n;
            break;
        }
        case OPT_BATCH: bad = parse_slots(optarg, &cfg.batch_pieces) < 0; break;
        case OPT_HASH_THREADS:
            bad = (optarg[0] != '0' && optarg[0] != '1') || optarg[1];
            if (!bad)
                cfg.hash_threads = (uint32_t)(optarg[0] - '0');
            break;
        case OPT_LOG_LEVEL:
            bad = df_parse_log_level(optarg, &level) < 0;
            level_set = true;
            break;
        case OPT_CONFIG:
            break;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            const char *name = "?";
            for (const struct option *o = opts; o->name; o++)
                if (o->val == c)
                    name = o->name;
            fprintf(stderr, "supernode: invalid value for --%s: \"%s\"\n", name, optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "supernode: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (level_set)
        df_log_setup("supernode", level);

    /* A peer vanishing mid-reply must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (!base) {
        fprintf(stderr, "supernode: cannot create the event loop\n");
        goto out;
    }
    rc = df_supernode_new(base, &cfg, &sn);
    if (rc < 0) {
        fprintf(stderr, "supernode: cannot start: %s\n", df_strerror(rc));
        goto out;
    }
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) < 0 || evsignal_add(sigterm, NULL) < 0) {
        fprintf(stderr, "supernode: cannot install signal handlers\n");
        goto out;
    }
    {
        /* One line for scripts and tests to wait on (info level). */
        df_log_level_t cur = level_set ? level : DF_LOG_INFO;
        if (cur >= DF_LOG_INFO)
            fprintf(stderr, "supernode listening on %s:%u\n", cfg.listen_host,
                    (unsigned)df_supernode_port(sn));
    }
    event_base_dispatch(base);
    status = 0;
out:
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    df_supernode_free(sn);
    if (base)
        event_base_free(base);
    return status;
}
