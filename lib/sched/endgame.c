/*
 * Endgame policy (see endgame.h).  The arithmetic is in doubles: the
 * products (bytes x milliseconds) overflow 64 bits for large pieces and
 * long downloads, and a relative error of 1e-16 does not move a decision
 * made with a factor of 3.
 */
#include "sched/endgame.h"

bool df_endgame_active(uint32_t piece_count, uint32_t have, uint32_t inflight, uint32_t hashing)
{
    return inflight > 0 && (uint64_t)have + inflight + hashing >= piece_count;
}

bool df_endgame_should_abandon(const df_endgame_fetch_t *f)
{
    double left_ms, share_ms;

    if (f->age_ms < DF_ENDGAME_MIN_AGE_MS || f->inflight == 0 || f->done == 0 || f->elapsed_ms == 0 ||
        f->got > f->length)
        return false;
    if (f->got == f->length)
        return false; /* nothing left to wait for */
    if (f->got == 0)
        return true; /* not a byte in DF_ENDGAME_MIN_AGE_MS: projected forever */
    /* what this fetch still needs at its own rate so far ... */
    left_ms = (double)(f->length - f->got) * (double)f->age_ms / (double)f->got;
    /* ... against a whole piece at its share of the download's average rate */
    share_ms = (double)f->length * (double)f->inflight * (double)f->elapsed_ms / (double)f->done;
    return left_ms > DF_ENDGAME_SLOWDOWN * share_ms;
}
