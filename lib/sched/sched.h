/*
 * Scheduling policy: which source serves which piece to a requesting peer.
 * Pure functions over availability and load, no I/O, no clock, no global
 * state: the supernode calls them per PullPiece, dfdaemon calls them in
 * decentralized mode, the simulator calls them in tests.
 *
 * Policy (in order):
 *  1. only pieces the requester wants (neither holds nor is fetching) and
 *     some usable source holds are candidates;
 *  2. rarest first: fewest holders among peers (the seed does not count, so
 *     pieces no peer has yet come first); ties broken by a deterministic
 *     pseudo-random order from rand_seed, so concurrent requesters spread
 *     over different pieces;
 *  3. for a piece, a peer holding it is preferred over the seed: the seed's
 *     uplink is spent on pieces no peer has; among peers the least loaded
 *     (load/slots) wins;
 *  4. a source whose load reached its slots is not used (upload cap);
 *     excluded sources (down, failed or served bad bytes to this requester)
 *     are never used;
 *  5. at most max_assign assignments;
 *  6. when coming is given, the seed does not serve a piece that
 *     seed_piece_limit or more peers already hold (usable by this requester)
 *     or are fetching (coming[p]): those copies will be offered by peers,
 *     so the seed's uplink goes to pieces nobody has yet (BitTorrent's
 *     "super-seeding" idea).  Without it, requesters that start together
 *     all fetch the newest piece from the seed, and a piece whose holders
 *     are busy is sent by the seed again.
 */
#ifndef DF_SCHED_SCHED_H
#define DF_SCHED_SCHED_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *have;  /* bitmap of verified pieces this source holds (piece_count bits) */
    uint32_t slots;       /* max concurrent uploads */
    bool is_seed;         /* the supernode's seed (or the owner in gossip mode) */
    bool excluded;        /* never use for this requester */
} df_sched_source_t;

typedef struct {
    uint32_t piece_count;
    const uint8_t *want;               /* bitmap of pieces the requester may be given */
    const df_sched_source_t *sources;
    size_t nsources;
    uint32_t max_assign;
    uint64_t rand_seed;                /* tie-break; vary it per request */
    const uint32_t *coming;            /* per piece: transfers in flight (from any source)
                                        * to peers that will serve it; NULL = rule 6 off */
    uint32_t seed_piece_limit;         /* see rule 6; 0 = rule 6 off */
} df_sched_input_t;

typedef struct {
    uint32_t piece;
    uint32_t source;   /* index into sources */
} df_sched_assign_t;

/* Picks up to in->max_assign assignments into out (capacity max_assign).
 * load[i] is source i's current uploads; it is incremented for each
 * assignment made.  Returns the number of assignments.
 * Cost: O(piece_count * nsources) time; allocates O(piece_count) scratch
 * (returns 0 assignments if that allocation fails). */
size_t df_sched_pick(const df_sched_input_t *in, uint32_t *load, df_sched_assign_t *out);

#endif
