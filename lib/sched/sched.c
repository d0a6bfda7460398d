/*
 * The scheduling policy: given which sources hold which pieces and how busy
 * each source is, choose pieces for one requester and a source for each.
 *
 * Sans-I/O and deterministic: the result depends only on the input, load[]
 * and rand_seed (no clock, no global state, no libc rand()), so the supernode,
 * dfdaemon and the simulator get the same answer for the same question, and a
 * test can replay any run.
 *
 * Policy, in order (sched.h states the contract; this is how it is met):
 *
 *  1. Candidates.  Piece p is a candidate when want has bit p and at least
 *     one source that is not excluded and has slots > 0 holds it.  Whether
 *     that source still has a free slot is decided in step 3, per piece, as
 *     loads change while we assign.
 *
 *  2. Order.  Candidates are sorted by rarity: the number of non-seed sources
 *     holding the piece (excluded ones included: rarity is a property of the
 *     swarm, not of this requester).  Pieces no peer holds yet therefore come
 *     first, which is what gets them off the seed and into the swarm soonest.
 *     Equal rarity is ordered by a 64-bit mix of (rand_seed, piece), so two
 *     requesters pulling at the same time with different seeds start on
 *     different pieces instead of all asking for piece 0; the piece index is
 *     the last tie-break, so the order is total and qsort's instability
 *     cannot leak into the result.
 *
 *  3. Source.  For each candidate in that order, the usable holders are the
 *     non-excluded sources with load < slots.  A non-seed peer is preferred
 *     over any seed: the seed's uplink is the scarce resource and is spent on
 *     pieces no peer can serve.  Among peers (or, failing any, among seeds)
 *     the lowest load/slots ratio wins, compared exactly by cross
 *     multiplication; equal ratios are broken by a mix of (rand_seed, piece,
 *     source), then by index.  The chosen source's load is incremented, so a
 *     source never exceeds its slots within one call nor across calls that
 *     share load[].  A candidate with no usable holder left is skipped.
 *
 *  4. Stop after max_assign assignments.
 *
 * Cost: O(piece_count * nsources) to count holders and choose sources plus
 * O(c log c) to sort the c candidates; scratch is one array of c entries.
 */
#include "sched/sched.h"

#include "piece/piece.h"

#include <stdlib.h>

typedef struct {
    uint32_t piece;
    uint32_t rarity;  /* non-seed holders */
    uint64_t tie;     /* pseudo-random tie-break from rand_seed */
} candidate_t;

/* splitmix64's finalizer: a cheap, well-distributed 64-bit mix. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int cmp_candidate(const void *a, const void *b)
{
    const candidate_t *x = a, *y = b;

    if (x->rarity != y->rarity)
        return x->rarity < y->rarity ? -1 : 1;
    if (x->tie != y->tie)
        return x->tie < y->tie ? -1 : 1;
    if (x->piece != y->piece)
        return x->piece < y->piece ? -1 : 1;
    return 0;
}

static bool holds(const df_sched_source_t *s, uint32_t piece)
{
    return s->have && df_bitmap_test(s->have, piece);
}

/* Could s ever serve this requester (ignoring its current load)? */
static bool usable(const df_sched_source_t *s)
{
    return !s->excluded && s->slots > 0;
}

/* true when source a (load la) is a better choice than b (load lb):
 * lower load/slots, then the seeded tie-break, then lower index. */
static bool better(const df_sched_input_t *in, const uint32_t *load, uint32_t piece, size_t a,
                   size_t b)
{
    /* la/sa < lb/sb  <=>  la*sb < lb*sa; 32x32 bits cannot overflow 64. */
    uint64_t lhs = (uint64_t)load[a] * in->sources[b].slots;
    uint64_t rhs = (uint64_t)load[b] * in->sources[a].slots;
    uint64_t ta, tb;

    if (lhs != rhs)
        return lhs < rhs;
    ta = mix64(in->rand_seed ^ mix64(((uint64_t)piece << 32) ^ (uint64_t)a));
    tb = mix64(in->rand_seed ^ mix64(((uint64_t)piece << 32) ^ (uint64_t)b));
    if (ta != tb)
        return ta < tb;
    return a < b;
}

/* The source to use for piece, or -1 when no holder has a free slot (or
 * only the seed could serve it and rule 6 holds it back). */
static long choose_source(const df_sched_input_t *in, const uint32_t *load, uint32_t piece)
{
    long best_peer = -1, best_seed = -1;
    uint32_t holders = 0;

    for (size_t i = 0; i < in->nsources; i++) {
        const df_sched_source_t *s = &in->sources[i];
        long *best;

        if (!usable(s) || !holds(s, piece))
            continue;
        if (!s->is_seed)
            holders++;
        if (load[i] >= s->slots)
            continue;
        best = s->is_seed ? &best_seed : &best_peer;
        if (*best < 0 || better(in, load, piece, i, (size_t)*best))
            *best = (long)i;
    }
    if (best_peer >= 0)
        return best_peer;
    if (best_seed >= 0 && in->coming && in->seed_piece_limit &&
        holders + in->coming[piece] >= in->seed_piece_limit)
        return -1;
    return best_seed;
}

size_t df_sched_pick(const df_sched_input_t *in, uint32_t *load, df_sched_assign_t *out)
{
    candidate_t *cand = NULL;
    size_t ncand = 0, nout = 0;

    if (!in || !in->want || !in->sources || in->nsources == 0 || in->piece_count == 0 ||
        in->max_assign == 0 || !load || !out)
        return 0;
    /* The sources' indices must fit the assignment's uint32_t. */
    if (in->piece_count > DF_PIECE_COUNT_MAX || in->nsources > UINT32_MAX)
        return 0;

    /* Bounded by DF_PIECE_COUNT_MAX entries of 16 bytes. */
    cand = malloc((size_t)in->piece_count * sizeof(*cand));
    if (!cand)
        return 0;

    for (uint32_t p = 0; p < in->piece_count; p++) {
        uint32_t rarity = 0;
        bool servable = false;

        if (!df_bitmap_test(in->want, p))
            continue;
        for (size_t i = 0; i < in->nsources; i++) {
            const df_sched_source_t *s = &in->sources[i];
            if (!holds(s, p))
                continue;
            if (!s->is_seed)
                rarity++;
            if (usable(s))
                servable = true;
        }
        if (!servable)
            continue;
        cand[ncand].piece = p;
        cand[ncand].rarity = rarity;
        cand[ncand].tie = mix64(in->rand_seed ^ mix64((uint64_t)p));
        ncand++;
    }

    qsort(cand, ncand, sizeof(*cand), cmp_candidate);

    for (size_t k = 0; k < ncand && nout < in->max_assign; k++) {
        long src = choose_source(in, load, cand[k].piece);
        if (src < 0)
            continue;
        load[src]++;
        out[nout].piece = cand[k].piece;
        out[nout].source = (uint32_t)src;
        nout++;
    }

    free(cand);
    return nout;
}
