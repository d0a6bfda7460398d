/*
 * Token buckets over a caller-supplied millisecond clock.
 *
 * A bucket fills at `rate` bytes per second up to `burst` bytes and starts
 * full.  df_rate_limit_take() asks several buckets at once (the download's
 * own and the host-wide one) and grants the minimum of what they all hold,
 * taking it from each, so the tightest limit wins and no bucket is charged
 * for bytes another refused.
 *
 * The clock may step backwards (a caller mixing clocks, or two limiters
 * initialised at different times): elapsed time is then taken as zero.
 */
#include "core/core.h"
#include "piece/rate_limit.h"

#include <math.h>

#define BURST_MIN (64u * 1024u)

static uint64_t default_burst(uint64_t rate)
{
    return DF_MAX((uint64_t)BURST_MIN, rate / 20);
}

static void refill(df_rate_limit_t *rl, uint64_t now_ms)
{
    if (now_ms > rl->last_ms) {
        rl->tokens += (double)rl->rate * (double)(now_ms - rl->last_ms) / 1000.0;
        if (rl->tokens > (double)rl->burst)
            rl->tokens = (double)rl->burst;
        rl->last_ms = now_ms;
    }
}

void df_rate_limit_init(df_rate_limit_t *rl, uint64_t rate, uint64_t now_ms)
{
    rl->rate = rate;
    rl->burst = rate ? default_burst(rate) : 0;
    rl->tokens = (double)rl->burst;
    rl->last_ms = now_ms;
}

/* Tokens earned at the old rate are kept (up to the new burst), so changing
 * the rate neither grants nor loses a burst. */
void df_rate_limit_set_rate(df_rate_limit_t *rl, uint64_t rate, uint64_t now_ms)
{
    if (rl->rate)
        refill(rl, now_ms);
    else
        rl->tokens = 0;
    rl->rate = rate;
    rl->burst = rate ? default_burst(rate) : 0;
    if (rl->tokens > (double)rl->burst)
        rl->tokens = (double)rl->burst;
    if (now_ms > rl->last_ms)
        rl->last_ms = now_ms;
}

/* Milliseconds until rl holds `need` tokens (>= 1). */
static uint64_t wait_for(const df_rate_limit_t *rl, uint64_t need)
{
    double missing = (double)need - rl->tokens, ms;

    if (missing <= 0)
        return 1;
    ms = ceil(missing * 1000.0 / (double)rl->rate);
    if (ms < 1)
        return 1;
    if (ms > 1e15)
        return (uint64_t)1e15;
    return (uint64_t)ms;
}

uint64_t df_rate_limit_take(df_rate_limit_t *const *rls, int n, uint64_t want, uint64_t now_ms,
                            uint64_t *wait_ms)
{
    uint64_t grant = want, wait = 0;

    for (int i = 0; i < n; i++) {
        df_rate_limit_t *rl = rls[i];
        uint64_t have;

        if (!rl || rl->rate == 0)
            continue;
        refill(rl, now_ms);
        have = rl->tokens <= 0 ? 0 : (uint64_t)rl->tokens;
        grant = DF_MIN(grant, have);
    }
    for (int i = 0; i < n; i++)
        if (rls[i] && rls[i]->rate)
            rls[i]->tokens -= (double)grant;
    if (grant >= want)
        return grant;

    /* Wait until every limited bucket holds one more "chunk": about 10 ms
     * worth of its rate (at least a byte, at most its burst and what is
     * still wanted).  Waiting for a single byte would wake a slow download
     * every millisecond to move a few bytes. */
    for (int i = 0; i < n; i++) {
        const df_rate_limit_t *rl = rls[i];
        uint64_t chunk;

        if (!rl || rl->rate == 0)
            continue;
        chunk = DF_MAX(rl->rate / 100, (uint64_t)1);
        chunk = DF_MIN(chunk, rl->burst);
        chunk = DF_MIN(chunk, want - grant);
        wait = DF_MAX(wait, wait_for(rl, chunk));
    }
    if (wait_ms)
        *wait_ms = wait ? wait : 1;
    return grant;
}

uint64_t df_rate_limit_debt_wait(df_rate_limit_t *const *rls, int n, uint64_t now_ms)
{
    uint64_t wait = 0;

    for (int i = 0; i < n; i++) {
        df_rate_limit_t *rl = rls[i];
        if (!rl || rl->rate == 0)
            continue;
        refill(rl, now_ms);
        if (rl->tokens < 0)
            wait = DF_MAX(wait, wait_for(rl, 0));
    }
    return wait;
}

void df_rate_limit_debt_take(df_rate_limit_t *const *rls, int n, uint64_t len, uint64_t now_ms)
{
    for (int i = 0; i < n; i++) {
        df_rate_limit_t *rl = rls[i];
        if (!rl || rl->rate == 0)
            continue;
        refill(rl, now_ms);
        rl->tokens -= (double)len;
    }
}
