/* A download's output, published only when complete (see outfile.h). */
#include "core/outfile.h"

#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINK_TRIES 64 /* hidden names tried before giving up (each taken by someone else) */

/* output's directory and base name (allocated, *base points into output). */
static int split(const char *output, char **dir, const char **base)
{
    const char *slash;

    *dir = NULL;
    if (!output || !*output)
        return -EINVAL;
    slash = strrchr(output, '/');
    *base = slash ? slash + 1 : output;
    if (!**base || strcmp(*base, ".") == 0 || strcmp(*base, "..") == 0)
        return -EINVAL;
    *dir = !slash ? strdup(".") : slash == output ? strdup("/") : strndup(output, (size_t)(slash - output));
    return *dir ? 0 : -ENOMEM;
}

/* ".NAME.dfly-" + suffix in dir; the name is shortened to fit NAME_MAX. */
static char *hidden_name(const char *dir, const char *base, const char *suffix)
{
    char *p = NULL;

    if (asprintf(&p, "%s/.%.200s.dfly-%s", dir, base, suffix) < 0)
        return NULL;
    return p;
}

/* The named fallback in of->dir (set); frees of->dir on failure. */
static int open_named(df_outfile_t *of, const char *base)
{
    int rc = 0;

    of->path = hidden_name(of->dir, base, "XXXXXX");
    if (!of->path)
        rc = -ENOMEM;
    else if ((of->fd = mkostemp(of->path, O_CLOEXEC)) < 0)
        rc = -errno;
    if (rc < 0) {
        free(of->dir);
        free(of->path);
        of->dir = of->path = NULL;
    }
    return rc;
}

/* Starts *of for output: of->dir set, no file yet. */
static int begin(df_outfile_t *of, const char *output, const char **base)
{
    of->fd = -1;
    of->path = NULL;
    return split(output, &of->dir, base);
}

int df_outfile_open_named(df_outfile_t *of, const char *output)
{
    const char *base;
    int rc = begin(of, output, &base);

    return rc < 0 ? rc : open_named(of, base);
}

int df_outfile_open(df_outfile_t *of, const char *output)
{
    const char *base;
    int rc = begin(of, output, &base);

    if (rc < 0)
        return rc;
    /* Without /proc the unnamed file could only be linked with
     * CAP_DAC_READ_SEARCH (AT_EMPTY_PATH): do not bet the download on it. */
    if (access("/proc/self/fd", X_OK) == 0) {
        of->fd = open(of->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (of->fd >= 0)
            return 0;
        /* EISDIR or EOPNOTSUPP: no O_TMPFILE here; anything else (EACCES,
         * ENOENT, ENOSPC) the named file will meet as well and report. */
        DF_LOG_D("outfile: no unnamed file in %s (%s): using a hidden name", of->dir, strerror(errno));
    }
    return open_named(of, base);
}

/* Gives the unnamed file of->fd the name target (which must not exist). */
static int link_unnamed(int fd, const char *target)
{
    char proc[64];

    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, target, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    if (errno != ENOENT && errno != EPERM)
        return -errno;
    /* No /proc any more: the same with the capability, if we have it. */
    return linkat(fd, "", AT_FDCWD, target, AT_EMPTY_PATH) == 0 ? 0 : -errno;
}

/* An existing output is replaced atomically: link to a hidden name, then
 * rename over it.  A kill between the two leaves the (complete, verified)
 * hidden file behind; the window is two system calls. */
static int link_replace(df_outfile_t *of, const char *output)
{
    const char *base = strrchr(output, '/') ? strrchr(output, '/') + 1 : output;
    int rc = -EEXIST;

    for (unsigned i = 0; i < LINK_TRIES && rc == -EEXIST; i++) {
        char suffix[48], *tmp;
        snprintf(suffix, sizeof(suffix), "%ld-%u-%u", (long)getpid(), i, (unsigned)(df_now_ms() & 0xffffff));
        tmp = hidden_name(of->dir, base, suffix);
        if (!tmp)
            return -ENOMEM;
        rc = link_unnamed(of->fd, tmp);
        if (rc == 0 && rename(tmp, output) < 0) {
            rc = -errno;
            unlink(tmp);
            if (rc == -EEXIST)
                rc = -EIO; /* never retry a failed rename with another name */
        }
        free(tmp);
    }
    return rc;
}

static void sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dfd < 0)
        return;
    if (fsync(dfd) < 0)
        DF_LOG_W("outfile: fsync of %s failed: %s", dir, strerror(errno));
    close(dfd);
}

int df_outfile_publish(df_outfile_t *of, const char *output, bool durable)
{
    const char *base;
    char *dir = NULL;
    int rc;

    if (of->fd < 0 || !of->dir)
        return -EINVAL;
    /* Linking or renaming into another directory could cross filesystems
     * and would not be the one atomic step: refused. */
    rc = split(output, &dir, &base);
    if (rc < 0)
        return rc;
    if (strcmp(dir, of->dir) != 0) {
        rc = -EXDEV;
        goto out;
    }
    if (fchmod(of->fd, 0644) < 0 || (durable && fsync(of->fd) < 0)) {
        rc = -errno;
        goto out;
    }
    if (of->path) {
        if (rename(of->path, output) < 0) {
            rc = -errno;
            goto out;
        }
        free(of->path);
        of->path = NULL;
    } else {
        rc = link_unnamed(of->fd, output);
        if (rc == -EEXIST)
            rc = link_replace(of, output);
        if (rc < 0)
            goto out;
    }
    if (durable)
        sync_dir(of->dir);
out:
    free(dir);
    return rc;
}

void df_outfile_close(df_outfile_t *of)
{
    if (of->fd >= 0)
        close(of->fd);
    of->fd = -1;
    if (of->path && unlink(of->path) < 0 && errno != ENOENT)
        DF_LOG_W("outfile: cannot remove %s: %s", of->path, strerror(errno));
    free(of->path);
    free(of->dir);
    of->path = of->dir = NULL;
}
