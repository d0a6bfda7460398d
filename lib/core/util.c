/* Small helpers: time, strings, hex, number/size/duration parsing, files. */
#include "core/core.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

uint64_t df_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

double df_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int df_strlcpy(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (cap == 0)
        return -ENAMETOOLONG;
    if (n >= cap) {
        memcpy(dst, src, cap - 1);
        dst[cap - 1] = '\0';
        return -ENAMETOOLONG;
    }
    memcpy(dst, src, n + 1);
    return 0;
}

void df_hex(const uint8_t *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int df_unhex(const char *in, uint8_t *out, size_t outlen)
{
    if (strlen(in) != outlen * 2)
        return -EINVAL;
    for (size_t i = 0; i < outlen; i++) {
        int hi = hexval((unsigned char)in[2 * i]), lo = hexval((unsigned char)in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int df_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!s || !*s)
        return -EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* Splits "123.5xyz" into a number and a suffix; the number may have a fraction. */
static int split_number(const char *text, double *num, const char **suffix)
{
    char *end;
    if (!text || !isdigit((unsigned char)text[0]))
        return -EINVAL;
    errno = 0;
    *num = strtod(text, &end);
    if (errno || end == text || *num < 0)
        return -EINVAL;
    *suffix = end;
    return 0;
}

int df_parse_size(const char *text, uint64_t *out)
{
    double num, mult = 1;
    const char *s;
    int rc = split_number(text, &num, &s);
    if (rc < 0)
        return rc;
    switch (toupper((unsigned char)*s)) {
    case 'K': mult = 1024.0; s++; break;
    case 'M': mult = 1024.0 * 1024; s++; break;
    case 'G': mult = 1024.0 * 1024 * 1024; s++; break;
    case 'T': mult = 1024.0 * 1024 * 1024 * 1024; s++; break;
    default: break;
    }
    if (mult > 1 && tolower((unsigned char)s[0]) == 'i' && toupper((unsigned char)s[1]) == 'B')
        s += 2;
    else if (toupper((unsigned char)*s) == 'B')
        s++;
    if (*s)
        return -EINVAL;
    num *= mult;
    if (num >= 18446744073709551615.0)
        return -ERANGE;
    *out = (uint64_t)num;
    return 0;
}

int df_parse_duration_ms(const char *text, uint64_t *out)
{
    double num, mult = 1000;
    const char *s;
    int rc = split_number(text, &num, &s);
    if (rc < 0)
        return rc;
    if (strcmp(s, "ms") == 0)
        mult = 1;
    else if (strcmp(s, "s") == 0 || *s == '\0')
        mult = 1000;
    else if (strcmp(s, "m") == 0)
        mult = 60000;
    else if (strcmp(s, "h") == 0)
        mult = 3600000;
    else
        return -EINVAL;
    num *= mult;
    if (num >= 1e18)
        return -ERANGE;
    *out = (uint64_t)num;
    return 0;
}

int df_parse_hostport(const char *text, char *host_out, size_t hostcap, uint16_t *port_out)
{
    const char *colon, *hstart, *hend;
    uint64_t port;

    if (!text)
        return -EINVAL;
    if (text[0] == '[') {
        hstart = text + 1;
        hend = strchr(hstart, ']');
        if (!hend || hend[1] != ':')
            return -EINVAL;
        colon = hend + 1;
    } else {
        hstart = text;
        colon = strrchr(text, ':');
        if (!colon)
            return -EINVAL;
        hend = colon;
    }
    if (hend == hstart || (size_t)(hend - hstart) >= hostcap)
        return -EINVAL;
    if (df_parse_u64(colon + 1, &port) < 0 || port > 65535)
        return -EINVAL;
    memcpy(host_out, hstart, (size_t)(hend - hstart));
    host_out[hend - hstart] = '\0';
    *port_out = (uint16_t)port;
    return 0;
}

int df_mkdir_p(const char *path, unsigned int mode)
{
    char tmp[PATH_MAX];
    size_t len;

    if (df_strlcpy(tmp, path, sizeof(tmp)) < 0)
        return -ENAMETOOLONG;
    len = strlen(tmp);
    while (len > 1 && tmp[len - 1] == '/')
        tmp[--len] = '\0';
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, (mode_t)mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, (mode_t)mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int df_mkdirs(const char *path)
{
    return df_mkdir_p(path, 0755);
}

int df_write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[PATH_MAX];
    int fd, rc = 0;
    const char *p = data;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        p += n;
        len -= (size_t)n;
    }
    if (fsync(fd) < 0) {
        rc = -errno;
        goto out;
    }
out:
    close(fd);
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

int df_read_file(const char *path, size_t cap, char **out, size_t *len_out)
{
    df_buf_t b;
    char chunk[8192];
    int fd, rc = 0;

    df_buf_init(&b, cap);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        rc = df_buf_append(&b, chunk, (size_t)n);
        if (rc < 0)
            break;
    }
    close(fd);
    if (rc == 0 && !b.data)
        rc = df_buf_append(&b, "", 0);
    if (rc < 0) {
        df_buf_free(&b);
        return rc;
    }
    *out = b.data;
    if (len_out)
        *len_out = b.len;
    return 0;
}

void df_errf(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errcap)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}
