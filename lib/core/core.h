/*
 * Library-internal core: logging macros, capped buffers, small helpers.
 * Only libdfly's own sources include this.
 */
#ifndef DF_CORE_CORE_H
#define DF_CORE_CORE_H
#ifndef DF_INTERNAL
#error "lib/core/core.h is private to libdfly"
#endif

#include <dfly/dfly.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DF_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DF_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- logging */
void df__log(df_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool df__log_enabled(df_log_level_t level);
#define DF_LOG_E(...) df__log(DF_LOG_ERROR, __VA_ARGS__)
#define DF_LOG_W(...) df__log(DF_LOG_WARN, __VA_ARGS__)
#define DF_LOG_I(...) df__log(DF_LOG_INFO, __VA_ARGS__)
#define DF_LOG_D(...)                                                                              \
    do {                                                                                           \
        if (df__log_enabled(DF_LOG_DEBUG))                                                         \
            df__log(DF_LOG_DEBUG, __VA_ARGS__);                                                    \
    } while (0)

/* ---- capped growable buffer (curl's dynbuf idea): appends past cap fail
 * with DF_ETOOBIG and leave the buffer as it was. */
typedef struct {
    char *data;   /* always NUL-terminated when non-NULL */
    size_t len;
    size_t alloc;
    size_t cap;   /* hard limit on len */
} df_buf_t;

void df_buf_init(df_buf_t *b, size_t cap);
int df_buf_append(df_buf_t *b, const void *data, size_t len);
int df_buf_printf(df_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void df_buf_reset(df_buf_t *b);   /* len = 0, keeps memory */
void df_buf_free(df_buf_t *b);

/* ---- time */
uint64_t df_now_ms(void);         /* CLOCK_MONOTONIC */
double df_now_s(void);

/* ---- strings */
/* Copies at most cap-1 bytes and always terminates; returns -ENAMETOOLONG
 * (copying what fits) when src did not fit. */
int df_strlcpy(char *dst, const char *src, size_t cap);
/* Lower-case hex of len bytes into out (2*len+1 bytes). */
void df_hex(const uint8_t *in, size_t len, char *out);
/* Decodes exactly outlen bytes of hex; 0 or -EINVAL. */
int df_unhex(const char *in, uint8_t *out, size_t outlen);
/* Formats a one-line error message into err (errcap bytes; nothing when
 * err is NULL or errcap 0), truncating what does not fit. */
void df_errf(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Parses a non-negative decimal uint64 that fills the whole string. */
int df_parse_u64(const char *s, uint64_t *out);

/* ---- files */
/* df_mkdir_p(path, 0755). */
int df_mkdirs(const char *path);
/* Writes data to path atomically (tmp file + fsync + rename). */
int df_write_file_atomic(const char *path, const void *data, size_t len);
/* Reads a whole file of at most cap bytes into *out (malloc'ed, NUL-terminated). */
int df_read_file(const char *path, size_t cap, char **out, size_t *len_out);

#endif
