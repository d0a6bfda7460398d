/*
 * dfget: download one URL through dfly.
 *
 * Flags follow Dragonfly 1.x's dfget (short forms -u -o -m -i -s -e -p -f -n
 * -b).  Everything is validated before any work starts; a usage error exits
 * 2, a failed download 1, success 0.
 *
 * Two ways to run a download:
 *   - a dfdaemon runs with the same --home (<home>/dfdaemon.sock answers):
 *     the request is handed to it (df_daemon_download) and this process only
 *     shows progress.  The daemon's own --node/--totallimit apply then;
 *   - otherwise the engine runs in this process for this one download: an
 *     event_base, a df_peer and df_peer_download.
 *
 * In-process peers and their home directory.  A peer owns its home_dir (piece
 * store, temp files), so two dfgets started at once on one --home must not
 * share one.  Each in-process dfget therefore takes <home>/peer-<pid>, holds an
 * flock on <home>/peer-<pid>/.lock for its whole life, and removes the
 * directory when it ends (its store is useless to the next run: nothing would
 * serve it in between; a dfdaemon is what keeps a cache).  A dfget killed
 * with SIGKILL leaves its directory behind; the next in-process dfget sweeps
 * every peer-* directory whose lock it can take.  Creation and the sweep both
 * happen under <home>/peers.lock, so the sweep never sees a directory that is
 * being created and not yet locked.
 *
 * Signals.  SIGINT/SIGTERM stop the download and leave nothing at the output
 * path (the engine and the daemon both write it by rename only, on success).
 * In-process they are libevent signal events: the loop stops and everything
 * is freed normally.  While waiting on the daemon (a blocking call) the
 * handler writes the prepared "failed: canceled" summary (and JSON line) with
 * write(2) and _exits; closing the socket tells the daemon to drop the copy.
 */
#include <dfly/dfly.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define LIST_MAX 64           /* --header / --filter entries */
#define DEFAULT_NODE "127.0.0.1:8002"

typedef struct {
    const char *url;
    char output[PATH_MAX];
    char digest[160];
    const char *identifier;
    const char *filter[LIST_MAX + 1];
    char *filter_buf;         /* --filter split in place */
    const char *headers[LIST_MAX + 1];
    size_t nheaders;
    char **nodes;             /* df_parse_node_list() */
    bool nodes_given;
    uint64_t local_limit;
    uint64_t total_limit;
    uint64_t hash_threads;    /* UINT64_MAX: the library's default */
    uint64_t timeout_ms;
    df_pattern_t pattern;
    bool notbs, showbar, json, fsync_output;
    const char *call_system;
    char home[PATH_MAX];
    df_log_level_t level;
} opts_t;

/* Progress bar state; the bar is drawn only when stderr is a terminal. */
typedef struct {
    bool on;
    bool drawn;
    uint64_t last_ms;
    double t0;
} bar_t;

typedef struct {
    struct event_base *base;
    df_download_result_t res;
    bool done;
    bool canceled;
    bool left;                /* df_peer_leave finished */
    bar_t *bar;
} run_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dfget -u URL [-o FILE] [options]\n"
            "  -u, --url URL            source URL (http or https)\n"
            "  -o, --output FILE        target file (default: last URL path segment in the\n"
            "                           current directory); must not be a directory\n"
            "  -n, --node H:P[,H:P...]  supernodes (default " DEFAULT_NODE ")\n"
            "  -m, --md5 HEX            expected MD5 of the whole file\n"
            "      --digest ALG:HEX     expected digest, ALG sha256|sha512|md5\n"
            "  -i, --identifier ID      extra task id discriminator\n"
            "  -f, --filter K1&K2       query keys dropped from the task URL\n"
            "      --header 'K: V'      header for the origin (repeatable)\n"
            "  -s, --locallimit RATE    this download's rate limit (e.g. 20M)\n"
            "      --totallimit RATE    host-wide rate limit of the in-process peer\n"
            "      --hash-threads N     threads verifying pieces off the event loop\n"
            "                           (default 1; 0 = on the loop)\n"
            "  -p, --pattern P          p2p (default), cdn or source\n"
            "      --notbs              never fall back to the origin\n"
            "      --fsync              flush the file to disk before it appears at -o\n"
            "                           (survives a power loss; costs the disk's write-back)\n"
            "  -e, --timeout DUR        whole-download timeout (e.g. 30s, 5m)\n"
            "      --callsystem NAME    caller name for logs\n"
            "  -b, --showbar            progress bar (when stderr is a terminal)\n"
            "      --home DIR           work home (default $HOME/.dfly)\n"
            "      --json               print the result as one JSON line on stdout\n"
            "      --log-level L        error, warn (default), info or debug\n"
            "      --version            print the version and exit\n"
            "  -h, --help               this help\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("dfget: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nusage: dfget -u URL [-o FILE] [options]; 'dfget --help' lists them\n", stderr);
    return 2;
}

/* ------------------------------------------------------------ validation */

/* The URL must be http(s)://host...; *path_out points at its path (or ""). */
static int check_url(const char *url, const char **path_out)
{
    const char *rest;

    if (strncasecmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        rest = url + 8;
    else
        return -EINVAL;
    if (*rest == '\0' || *rest == '/' || *rest == '?' || *rest == '#')
        return -EINVAL;
    rest += strcspn(rest, "/?#");
    *path_out = rest;
    return 0;
}

/* Last path segment of the URL, the default output name. */
static int default_output(const char *path, char *out, size_t cap)
{
    size_t plen = strcspn(path, "?#"), start = plen;

    while (start > 0 && path[start - 1] != '/')
        start--;
    if (start == plen)
        return -EINVAL;
    if ((plen - start == 1 && path[start] == '.') ||
        (plen - start == 2 && path[start] == '.' && path[start + 1] == '.'))
        return -EINVAL;
    if (plen - start >= cap)
        return -ENAMETOOLONG;
    memcpy(out, path + start, plen - start);
    out[plen - start] = '\0';
    return 0;
}

/* Makes path absolute against the current directory, in place. */
static int make_absolute(char *path, size_t cap)
{
    char cwd[PATH_MAX], tmp[PATH_MAX];
    int n;

    if (path[0] == '/')
        return 0;
    if (!getcwd(cwd, sizeof(cwd)))
        return -errno;
    n = snprintf(tmp, sizeof(tmp), "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path);
    if (n < 0 || (size_t)n >= sizeof(tmp) || (size_t)n >= cap)
        return -ENAMETOOLONG;
    memcpy(path, tmp, (size_t)n + 1);
    return 0;
}

enum {
    OPT_DIGEST = 256,
    OPT_HEADER,
    OPT_TOTALLIMIT,
    OPT_HASH_THREADS,
    OPT_NOTBS,
    OPT_FSYNC,
    OPT_CALLSYSTEM,
    OPT_HOME,
    OPT_JSON,
    OPT_LOGLEVEL,
    OPT_VERSION,
};

static const struct option long_opts[] = {
    {"url", required_argument, NULL, 'u'},
    {"output", required_argument, NULL, 'o'},
    {"node", required_argument, NULL, 'n'},
    {"md5", required_argument, NULL, 'm'},
    {"digest", required_argument, NULL, OPT_DIGEST},
    {"identifier", required_argument, NULL, 'i'},
    {"filter", required_argument, NULL, 'f'},
    {"header", required_argument, NULL, OPT_HEADER},
    {"locallimit", required_argument, NULL, 's'},
    {"totallimit", required_argument, NULL, OPT_TOTALLIMIT},
    {"hash-threads", required_argument, NULL, OPT_HASH_THREADS},
    {"pattern", required_argument, NULL, 'p'},
    {"notbs", no_argument, NULL, OPT_NOTBS},
    {"fsync", no_argument, NULL, OPT_FSYNC},
    {"timeout", required_argument, NULL, 'e'},
    {"callsystem", required_argument, NULL, OPT_CALLSYSTEM},
    {"showbar", no_argument, NULL, 'b'},
    {"home", required_argument, NULL, OPT_HOME},
    {"json", no_argument, NULL, OPT_JSON},
    {"log-level", required_argument, NULL, OPT_LOGLEVEL},
    {"version", no_argument, NULL, OPT_VERSION},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static void opts_free(opts_t *o)
{
    df_node_list_free(o->nodes);
    free(o->filter_buf);
}

/* Parses and validates argv into o.  Returns -1 to go on, else an exit code
 * (0 after --help/--version, 2 on a usage error). */
static int parse_args(int argc, char **argv, opts_t *o)
{
    const char *md5 = NULL, *digest = NULL, *output = NULL, *url_path;
    char md5buf[64];
    struct stat st;
    int c, rc;

    memset(o, 0, sizeof(*o));
    o->level = DF_LOG_WARN;
    o->hash_threads = UINT64_MAX;
    o->pattern = DF_PATTERN_P2P;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":u:o:n:m:i:f:s:p:e:bh", long_opts, NULL)) != -1) {
        switch (c) {
        case 'u': o->url = optarg; break;
        case 'o': output = optarg; break;
        case 'n':
            df_node_list_free(o->nodes);
            o->nodes = NULL;
            rc = df_parse_node_list(optarg, &o->nodes);
            if (rc == -ENOMEM)
                return usage_error("out of memory");
            if (rc < 0)
                return usage_error("bad --node \"%s\" (want host[:port][,host[:port]...])", optarg);
            o->nodes_given = true;
            break;
        case 'm': md5 = optarg; break;
        case OPT_DIGEST: digest = optarg; break;
        case 'i': o->identifier = optarg; break;
        case 'f': {
            size_t n = 0;
            char *p;
            free(o->filter_buf);
            o->filter_buf = strdup(optarg);
            if (!o->filter_buf)
                return usage_error("out of memory");
            memset(o->filter, 0, sizeof(o->filter));
            /* Split "k1&k2" in place; empty keys are skipped. */
            for (p = o->filter_buf; *p;) {
                size_t len = strcspn(p, "&");
                if (len > 0) {
                    if (n >= LIST_MAX)
                        return usage_error("too many --filter keys (at most %d)", LIST_MAX);
                    o->filter[n++] = p;
                }
                p += len;
                if (*p == '&')
                    *p++ = '\0';
            }
            break;
        }
        case OPT_HEADER:
            if (!df_header_line_ok(optarg))
                return usage_error("bad --header \"%s\" (want 'Name: value')", optarg);
            if (o->nheaders >= LIST_MAX)
                return usage_error("too many --header (at most %d)", LIST_MAX);
            o->headers[o->nheaders++] = optarg;
            break;
        case 's':
            if (df_parse_size(optarg, &o->local_limit) < 0)
                return usage_error("bad --locallimit \"%s\" (e.g. 512K, 20M)", optarg);
            break;
        case OPT_TOTALLIMIT:
            if (df_parse_size(optarg, &o->total_limit) < 0)
                return usage_error("bad --totallimit \"%s\" (e.g. 512K, 20M)", optarg);
            break;
        case OPT_HASH_THREADS:
            if (optarg[0] < '0' || optarg[0] > '9' || optarg[1] != '\0' ||
                (o->hash_threads = (uint64_t)(optarg[0] - '0')) > 8)
                return usage_error("bad --hash-threads \"%s\" (0 to 8)", optarg);
            break;
        case 'p':
            if (strcmp(optarg, "p2p") == 0)
                o->pattern = DF_PATTERN_P2P;
            else if (strcmp(optarg, "cdn") == 0)
                o->pattern = DF_PATTERN_CDN;
            else if (strcmp(optarg, "source") == 0)
                o->pattern = DF_PATTERN_SOURCE;
            else
                return usage_error("bad --pattern \"%s\" (p2p, cdn or source)", optarg);
            break;
        case OPT_NOTBS: o->notbs = true; break;
        case OPT_FSYNC: o->fsync_output = true; break;
        case 'e':
            if (df_parse_duration_ms(optarg, &o->timeout_ms) < 0)
                return usage_error("bad --timeout \"%s\" (e.g. 30s, 5m, 1500ms)", optarg);
            break;
        case OPT_CALLSYSTEM: o->call_system = optarg; break;
        case 'b': o->showbar = true; break;
        case OPT_HOME:
            if (!*optarg || snprintf(o->home, sizeof(o->home), "%s", optarg) >= (int)sizeof(o->home))
                return usage_error("bad --home");
            break;
        case OPT_JSON: o->json = true; break;
        case OPT_LOGLEVEL:
            if (df_parse_log_level(optarg, &o->level) < 0)
                return usage_error("bad --log-level \"%s\" (error, warn, info, debug)", optarg);
            break;
        case OPT_VERSION: printf("dfget %s\n", df_version()); return 0;
        case 'h': usage(stdout); return 0;
        case ':': return usage_error("option %s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument \"%s\"", argv[optind]);
    if (!o->url)
        return usage_error("missing -u/--url");
    if (check_url(o->url, &url_path) < 0)
        return usage_error("bad URL \"%s\" (want http://host/... or https://host/...)", o->url);

    if (md5) {
        if (snprintf(md5buf, sizeof(md5buf), "md5:%s", md5) >= (int)sizeof(md5buf) ||
            df_digest_normalize(md5buf, o->digest, sizeof(o->digest)) < 0)
            return usage_error("bad --md5 \"%s\" (want 32 hex digits)", md5);
    }
    if (digest) {
        char d[sizeof(o->digest)];
        if (df_digest_normalize(digest, d, sizeof(d)) < 0)
            return usage_error("bad --digest \"%s\" (want sha256:HEX, sha512:HEX or md5:HEX)", digest);
        if (md5 && strcmp(d, o->digest) != 0)
            return usage_error("--md5 and --digest disagree");
        memcpy(o->digest, d, sizeof(d));
    }

    if (output) {
        if (snprintf(o->output, sizeof(o->output), "%s", output) >= (int)sizeof(o->output) || !*output)
            return usage_error("bad --output");
    } else if (default_output(url_path, o->output, sizeof(o->output)) < 0) {
        return usage_error("cannot name the output after the URL; give -o FILE");
    }
    if (o->output[strlen(o->output) - 1] == '/' || (stat(o->output, &st) == 0 && S_ISDIR(st.st_mode)))
        return usage_error("output \"%s\" is a directory", o->output);
    if (make_absolute(o->output, sizeof(o->output)) < 0)
        return usage_error("output path too long");
    {
        /* The directory must exist: the result is renamed into it. */
        char dir[PATH_MAX];
        char *slash;
        memcpy(dir, o->output, sizeof(dir));
        slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
        if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
            return usage_error("output directory \"%s\" does not exist", dir);
    }

    if (!o->home[0] && df_default_home(o->home, sizeof(o->home)) < 0)
        return usage_error("$HOME is too long");
    if (make_absolute(o->home, sizeof(o->home)) < 0)
        return usage_error("--home path too long");
    if (!o->nodes && df_parse_node_list(DEFAULT_NODE, &o->nodes) < 0)
        return usage_error("out of memory");
    return -1;
}

/* -------------------------------------------------------- progress, result */

static void human(uint64_t n, char *out, size_t cap)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(out, cap, u ? "%.1f%s" : "%.0f%s", v, units[u]);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bar_draw(bar_t *b, const df_progress_t *p, bool force)
{
    char done[32], total[32], rate[32], line[160], hashes[31];
    double now = now_s(), secs = now - b->t0;
    uint64_t ms = (uint64_t)(now * 1000);
    int pct = 0, n;

    if (!b->on || (!force && ms - b->last_ms < 100))
        return;
    b->last_ms = ms;
    if (p->length)
        pct = (int)(p->done * 100 / p->length);
    for (int i = 0; i < 30; i++)
        hashes[i] = i < pct * 30 / 100 ? '#' : ' ';
    hashes[30] = '\0';
    human(p->done, done, sizeof(done));
    human(p->length, total, sizeof(total));
    human(secs > 0.05 ? (uint64_t)((double)p->done / secs) : 0, rate, sizeof(rate));
    n = snprintf(line, sizeof(line), "\r[%s] %3d%% %s/%s %s/s\033[K", hashes, pct, done,
                 p->length ? total : "?", rate);
    if (n <= 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = (int)sizeof(line) - 1;
    if (write(STDERR_FILENO, line, (size_t)n) > 0)
        b->drawn = true;
}

static void bar_end(bar_t *b)
{
    if (b->on && b->drawn && write(STDERR_FILENO, "\r\033[K", 4) < 0) {
        /* stderr gone: nothing to clean */
    }
    b->drawn = false;
}

static void report(const opts_t *o, const df_download_result_t *res)
{
    if (res->status == 0) {
        fprintf(stderr,
                "dfget: ok task=%s length=%llu seconds=%.3f peers=%llu supernode=%llu origin=%llu "
                "back_source=%s%s%s\n",
                res->task_id[0] ? res->task_id : "-", (unsigned long long)res->length, res->seconds,
                (unsigned long long)res->bytes_from_peers, (unsigned long long)res->bytes_from_supernode,
                (unsigned long long)res->bytes_from_origin, res->back_source ? "yes" : "no",
                res->reason[0] ? " " : "", res->reason);
    } else {
        fprintf(stderr, "dfget: failed: %s%s%s\n", df_strerror(res->status), res->reason[0] ? ": " : "",
                res->reason);
    }
    if (o->json) {
        char *js = df_download_result_json(res);
        if (js) {
            printf("%s\n", js);
            fflush(stdout);
            free(js);
        }
    }
}

static void fail_result(df_download_result_t *res, int code, const char *why)
{
    memset(res, 0, sizeof(*res));
    res->status = code;
    snprintf(res->reason, sizeof(res->reason), "%s", why);
}

/* ------------------------------------------------------- daemon mode */

/* Prepared before the blocking daemon call; the handler only write(2)s them. */
static char *g_sig_text;
static size_t g_sig_text_len;
static char *g_sig_json;
static size_t g_sig_json_len;

static void on_signal_blocking(int sig)
{
    (void)sig;
    if (g_sig_text && write(STDERR_FILENO, g_sig_text, g_sig_text_len) < 0) {
        /* nothing to do */
    }
    if (g_sig_json && write(STDOUT_FILENO, g_sig_json, g_sig_json_len) < 0) {
        /* nothing to do */
    }
    _exit(1);
}

static int prepare_cancel_text(const opts_t *o)
{
    df_download_result_t res;
    char buf[256];
    char *js;
    int n;

    fail_result(&res, DF_ECANCELED, "interrupted");
    n = snprintf(buf, sizeof(buf), "%sdfget: failed: %s: %s\n", o->showbar && isatty(2) ? "\r\033[K" : "",
                 df_strerror(res.status), res.reason);
    if (n < 0 || (size_t)n >= sizeof(buf) || !(g_sig_text = strdup(buf)))
        return -ENOMEM;
    g_sig_text_len = (size_t)n;
    if (o->json) {
        js = df_download_result_json(&res);
        if (!js)
            return -ENOMEM;
        n = (int)strlen(js);
        g_sig_json = malloc((size_t)n + 2);
        if (!g_sig_json) {
            free(js);
            return -ENOMEM;
        }
        memcpy(g_sig_json, js, (size_t)n);
        g_sig_json[n] = '\n';
        g_sig_json[n + 1] = '\0';
        g_sig_json_len = (size_t)n + 1;
        free(js);
    }
    return 0;
}

static void set_blocking_handlers(bool on)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on ? on_signal_blocking : SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void on_progress(const df_progress_t *p, void *arg)
{
    bar_draw(arg, p, false);
}

/* ----------------------------------------------------- in-process mode */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if ((flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT)
        fprintf(stderr, "dfget: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Removes peer-* directories of dead dfgets.  Called with peers.lock held. */
static void sweep_stale(const char *home)
{
    DIR *dir = opendir(home);
    struct dirent *de;

    if (!dir)
        return;
    while ((de = readdir(dir)) != NULL) {
        char path[PATH_MAX], lock[PATH_MAX + 8];
        int fd;

        if (strncmp(de->d_name, "peer-", 5) != 0)
            continue;
        if (snprintf(path, sizeof(path), "%s/%s", home, de->d_name) >= (int)sizeof(path) ||
            snprintf(lock, sizeof(lock), "%s/.lock", path) >= (int)sizeof(lock))
            continue;
        fd = open(lock, O_RDWR | O_CLOEXEC);
        if (fd < 0 && errno != ENOENT)
            continue;
        /* No lock file: created and abandoned before locking (creation is
         * serialized by peers.lock, so nobody is creating it now). */
        if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) == 0) {
            rm_tree(path);
        }
        if (fd >= 0)
            close(fd);
    }
    closedir(dir);
}

/* Creates and locks <home>/peer-<pid>; *lock_fd stays open (and locked)
 * until the directory is removed. */
static int make_peer_dir(const char *home, char *out, size_t cap, int *lock_fd)
{
    char glock[PATH_MAX + 16], lock[PATH_MAX + 8];
    int gfd = -1, rc = 0;

    *lock_fd = -1;
    if (snprintf(glock, sizeof(glock), "%s/peers.lock", home) >= (int)sizeof(glock) ||
        snprintf(out, cap, "%s/peer-%d", home, (int)getpid()) >= (int)cap ||
        snprintf(lock, sizeof(lock), "%s/.lock", out) >= (int)sizeof(lock))
        return -ENAMETOOLONG;
    gfd = open(glock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (gfd < 0)
        return -errno;
    if (flock(gfd, LOCK_EX) < 0) {
        rc = -errno;
        goto out;
    }
    sweep_stale(home);
    if (mkdir(out, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        goto out;
    }
    *lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*lock_fd < 0 || flock(*lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = -errno;
        if (*lock_fd >= 0)
            close(*lock_fd);
        *lock_fd = -1;
    }
out:
    close(gfd); /* also releases peers.lock */
    return rc;
}

static void on_done(const df_download_result_t *res, void *arg)
{
    run_t *r = arg;
    r->res = *res;
    r->done = true;
    event_base_loopbreak(r->base);
}

static void on_progress_loop(const df_progress_t *p, void *arg)
{
    run_t *r = arg;
    bar_draw(r->bar, p, false);
}

static void on_left(void *arg)
{
    run_t *r = arg;
    r->left = true;
    event_base_loopbreak(r->base);
}

static void on_signal_loop(evutil_socket_t sig, short what, void *arg)
{
    run_t *r = arg;
    (void)what;
    (void)sig;
    r->canceled = true;
    event_base_loopbreak(r->base);
}

static void run_in_process(const opts_t *o, const df_download_req_t *req, bar_t *bar,
                           df_download_result_t *res)
{
    char peer_dir[PATH_MAX];
    struct event *sigint = NULL, *sigterm = NULL;
    df_peer_config_t pc;
    df_peer_t *peer = NULL;
    int lock_fd = -1, rc;
    run_t r;

    memset(&r, 0, sizeof(r));
    r.bar = bar;
    r.base = event_base_new();
    if (!r.base) {
        fail_result(res, -ENOMEM, "cannot create the event loop");
        return;
    }
    sigint = evsignal_new(r.base, SIGINT, on_signal_loop, &r);
    sigterm = evsignal_new(r.base, SIGTERM, on_signal_loop, &r);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) < 0 || evsignal_add(sigterm, NULL) < 0) {
        fail_result(res, -ENOMEM, "cannot watch signals");
        goto out;
    }
    rc = make_peer_dir(o->home, peer_dir, sizeof(peer_dir), &lock_fd);
    if (rc < 0) {
        fail_result(res, rc, "cannot prepare the peer directory");
        goto out;
    }
    df_peer_config_init(&pc);
    pc.home_dir = peer_dir;
    pc.nodes = (const char **)o->nodes;
    pc.total_limit_bps = o->total_limit;
    if (o->hash_threads != UINT64_MAX)
        pc.hash_threads = (uint32_t)o->hash_threads;
    /* cdn: fetch through the supernode and serve nobody; source: no P2P. */
    pc.serve = o->pattern == DF_PATTERN_P2P;
    pc.ephemeral = true; /* peer_dir is removed below */
    rc = df_peer_new(r.base, &pc, &peer);
    if (rc < 0) {
        fail_result(res, rc, "cannot start the peer");
        goto out;
    }
    rc = df_peer_download(peer, req, on_progress_loop, on_done, &r);
    if (rc < 0) {
        fail_result(res, rc, "cannot start the download");
        goto out;
    }
    while (!r.done && !r.canceled) {
        if (event_base_dispatch(r.base) < 0) {
            fail_result(res, -EIO, "event loop failure");
            goto out;
        }
        if (!r.done && !r.canceled && event_base_got_break(r.base) == 0 &&
            event_base_got_exit(r.base) == 0) {
            /* No events left and no result: the engine lost the download. */
            fail_result(res, DF_ETASK, "the engine stopped without a result");
            goto out;
        }
    }
    if (r.done)
        *res = r.res;
    else
        fail_result(res, DF_ECANCELED, "interrupted");
    /* Tell the supernode we stop serving, or it would keep sending other
     * peers here for pieces.  Bounded by the engine (1 s); a second signal
     * cuts it short. */
    r.canceled = false;
    r.left = false;
    if (df_peer_leave(peer, on_left, &r) == 0) {
        while (!r.left && !r.canceled && event_base_dispatch(r.base) == 0 &&
               event_base_got_break(r.base))
            ;
    }
out:
    /* A freed peer cancels its download without calling back; r stays
     * untouched from here on. */
    df_peer_free(peer);
    if (lock_fd >= 0) {
        rm_tree(peer_dir);
        close(lock_fd);
    }
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    event_base_free(r.base);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    df_download_result_t res;
    df_download_req_t req;
    char sock[PATH_MAX + 16];
    bool via_daemon_ignored = false;
    bar_t bar;
    opts_t o;
    int rc;

    signal(SIGPIPE, SIG_IGN);
    rc = parse_args(argc, argv, &o);
    if (rc >= 0) {
        opts_free(&o);
        return rc;
    }
    df_log_setup("dfget", o.level);

    memset(&req, 0, sizeof(req));
    req.url = o.url;
    req.output = o.output;
    req.digest = o.digest[0] ? o.digest : NULL;
    req.identifier = o.identifier;
    req.filter = o.filter[0] ? o.filter : NULL;
    req.headers = o.nheaders ? o.headers : NULL;
    req.local_limit_bps = o.local_limit;
    req.timeout_ms = o.timeout_ms;
    req.pattern = o.pattern;
    req.no_back_source = o.notbs;
    req.durable = o.fsync_output;
    req.call_system = o.call_system;

    memset(&bar, 0, sizeof(bar));
    bar.on = o.showbar && isatty(STDERR_FILENO);
    bar.t0 = now_s();

    rc = df_mkdir_p(o.home, 0700);
    if (rc < 0) {
        fail_result(&res, rc, "cannot create the home directory");
        goto done;
    }
    snprintf(sock, sizeof(sock), "%s/dfdaemon.sock", o.home);
    if (prepare_cancel_text(&o) < 0) {
        fail_result(&res, -ENOMEM, "out of memory");
        goto done;
    }
    set_blocking_handlers(true);
    rc = df_daemon_download(sock, &req, on_progress, &bar, &res);
    set_blocking_handlers(false);
    if (rc == -ENOENT || rc == -ECONNREFUSED) {
        run_in_process(&o, &req, &bar, &res);
    } else if (rc < 0) {
        /* A daemon was there but the exchange failed (it died, refused us
         * with EACCES, or spoke garbage): not silently retried in-process,
         * since the daemon may still be downloading to the same place. */
        char why[PATH_MAX + 64];
        snprintf(why, sizeof(why), "talking to the dfdaemon at %s", sock);
        fail_result(&res, rc, why);
    } else if (o.nodes_given || o.total_limit) {
        via_daemon_ignored = true;
    }
done:
    bar_end(&bar);
    if (via_daemon_ignored) {
        /* The daemon's peer has its own supernodes and host-wide limit. */
        fprintf(stderr, "dfget: note: --node/--totallimit ignored; the dfdaemon at %s used its own\n",
                sock);
    }
    report(&o, &res);
    free(g_sig_text);
    free(g_sig_json);
    opts_free(&o);
    return res.status == 0 ? 0 : 1;
}
