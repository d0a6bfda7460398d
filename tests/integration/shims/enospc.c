/*
 * LD_PRELOAD shim for fault tests: pwrite(2) fails with ENOSPC at file
 * offsets at or past $DF_FAULT_PWRITE_FROM (bytes), as a full disk would for
 * the piece store's data file.  With $DF_FAULT_PWRITE_ARM (a path) set, only
 * while that file exists, so a test can fill the disk at a moment it
 * chooses.  Built by the test that uses it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

static int failing(off_t off)
{
    const char *s = getenv("DF_FAULT_PWRITE_FROM");
    const char *arm = getenv("DF_FAULT_PWRITE_ARM");
    if (arm && access(arm, F_OK) != 0)
        return 0;
    return s && off >= (off_t)strtoll(s, NULL, 10);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (failing(off)) {
        errno = ENOSPC;
        return -1;
    }
    if (!real)
        real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    return real(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (failing(off)) {
        errno = ENOSPC;
        return -1;
    }
    if (!real)
        real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    return real(fd, buf, n, off);
}
