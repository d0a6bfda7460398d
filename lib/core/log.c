/* Logging to stderr with a program prefix, level and wall-clock time.  One
 * process-wide threshold; every line is written with one write(2) so lines
 * from several processes sharing a terminal do not interleave mid-line. */
#include "core/core.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static df_log_level_t g_level = DF_LOG_INFO;
static char g_prog[32] = "dfly";

void df_log_setup(const char *prog, df_log_level_t level)
{
    if (prog)
        df_strlcpy(g_prog, prog, sizeof(g_prog));
    g_level = level;
}

bool df__log_enabled(df_log_level_t level)
{
    return level <= g_level;
}

void df__log(df_log_level_t level, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    char line[2048];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n;

    if (level > g_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld %s[%d] %s: ", tm.tm_hour, tm.tm_min,
                 tm.tm_sec, ts.tv_nsec / 1000000, g_prog, (int)getpid(), names[level]);
    if (n < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (int)strlen(line);
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, (size_t)n) < 0) {
        /* nothing sensible to do when stderr is gone */
    }
}
