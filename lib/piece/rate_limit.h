/*
 * Token-bucket rate limiters.  Pure arithmetic over a caller-supplied clock
 * (milliseconds), so tests drive time.  A download is limited by its own
 * bucket and the host's bucket: df_rate_limit_take() asks both.
 */
#ifndef DF_PIECE_RATE_LIMIT_H
#define DF_PIECE_RATE_LIMIT_H
#ifndef DF_INTERNAL
#error "private to libdfly"
/* Debt mode, for transfers that cannot take part of a chunk (a curl write
 * callback must consume all or nothing): df_rate_limit_debt_take() always
 * takes len, letting buckets go negative; df_rate_limit_debt_wait() is 0
 * when every bucket is non-negative, else the milliseconds until they all
 * are.  Over time the rate is exact; the overshoot is one chunk. */
uint64_t df_rate_limit_debt_wait(df_rate_limit_t *const *rls, int n, uint64_t now_ms);
void df_rate_limit_debt_take(df_rate_limit_t *const *rls, int n, uint64_t len, uint64_t now_ms);

#endif

#include <stdint.h>

typedef struct {
    uint64_t rate;     /* bytes per second; 0 = unlimited */
    uint64_t burst;    /* bucket depth in bytes */
    double tokens;
    uint64_t last_ms;
} df_rate_limit_t;

/* rate 0 = unlimited.  Burst defaults to max(64 KiB, rate/20) (50 ms worth). */
void df_rate_limit_init(df_rate_limit_t *rl, uint64_t rate, uint64_t now_ms);
void df_rate_limit_set_rate(df_rate_limit_t *rl, uint64_t rate, uint64_t now_ms);

/* Consumes up to `want` bytes from every non-NULL limiter in rls[0..n).
 * Returns the bytes granted (the minimum all of them allow, possibly 0).
 * When it grants less than want, *wait_ms is how long until at least one
 * more chunk can be granted (>= 1).  Unlimited limiters grant everything. */
uint64_t df_rate_limit_take(df_rate_limit_t *const *rls, int n, uint64_t want, uint64_t now_ms,
                            uint64_t *wait_ms);

/* Debt mode, for transfers that cannot take part of a chunk (a curl write
 * callback must consume all or nothing): df_rate_limit_debt_take() always
 * takes len, letting buckets go negative; df_rate_limit_debt_wait() is 0
 * when every bucket is non-negative, else the milliseconds until they all
 * are.  Over time the rate is exact; the overshoot is one chunk. */
uint64_t df_rate_limit_debt_wait(df_rate_limit_t *const *rls, int n, uint64_t now_ms);
void df_rate_limit_debt_take(df_rate_limit_t *const *rls, int n, uint64_t len, uint64_t now_ms);

#endif
