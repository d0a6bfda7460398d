/* dfly's gossip event payloads (lib/tracker/gossip_events.c): every kind
 * round-trips, encoders respect the byte budget (Serf's 512-byte user-event
 * limit), and the decoder refuses what is malformed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/piece.h"
#include "tracker/gossip_events.h"

#include <errno.h>
#include <string.h>

static const uint8_t TASK[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void test_sync_roundtrip(void **state)
{
    uint8_t buf[128];
    df_gev_t e;
    int n;

    (void)state;
    n = df_gev_encode_sync(buf, sizeof(buf), "node-a", TASK, DF_GEV_SYNC_DIGEST, 300);
    assert_true(n > 0);
    assert_int_equal(df_gev_decode(buf, (size_t)n, &e), 0);
    assert_int_equal(e.kind, DF_GEV_SYNC);
    assert_string_equal(e.sender, "node-a");
    assert_memory_equal(e.task, TASK, 32);
    assert_int_equal(e.what, DF_GEV_SYNC_DIGEST);
    assert_int_equal(e.first, 300);

    n = df_gev_encode_sync(buf, sizeof(buf), "node-a", TASK, DF_GEV_SYNC_HAVE, 0);
    assert_true(n > 0);
    assert_int_equal(df_gev_decode(buf, (size_t)n, &e), 0);
    assert_int_equal(e.what, DF_GEV_SYNC_HAVE);
    /* an unknown "what" is neither encoded nor decoded */
    assert_int_equal(df_gev_encode_sync(buf, sizeof(buf), "node-a", TASK, 4, 0), -EINVAL);
    buf[3 + 6 + 32] = 4;
    assert_int_equal(df_gev_decode(buf, (size_t)n, &e), DF_EPROTO);
    /* truncated, or trailing bytes */
    n = df_gev_encode_sync(buf, sizeof(buf), "node-a", TASK, DF_GEV_SYNC_HAVE, 0);
    assert_int_equal(df_gev_decode(buf, (size_t)n - 1, &e), DF_EPROTO);
    buf[n] = 0;
    assert_int_equal(df_gev_decode(buf, (size_t)n + 1, &e), DF_EPROTO);
    /* too small a budget */
    assert_int_equal(df_gev_encode_sync(buf, 20, "node-a", TASK, DF_GEV_SYNC_HAVE, 0), DF_ETOOBIG);
}

static void test_file_roundtrip(void **state)
{
    uint8_t buf[128], sha[32];
    df_gev_t e;
    int n;

    (void)state;
    memset(sha, 0xab, sizeof(sha));
    n = df_gev_encode_file(buf, sizeof(buf), "n9", TASK, sha);
    assert_int_equal(n, 3 + 2 + 32 + 32);
    assert_int_equal(df_gev_decode(buf, (size_t)n, &e), 0);
    assert_int_equal(e.kind, DF_GEV_FILE);
    assert_int_equal(e.ndigests, 1);
    assert_memory_equal(e.digests, sha, 32);
    assert_int_equal(df_gev_decode(buf, (size_t)n - 1, &e), DF_EPROTO);
    assert_int_equal(df_gev_encode_file(buf, 60, "n9", TASK, sha), DF_ETOOBIG);
}

/* A query response carries a DIGEST of as many pieces as fit in its
 * budget; every encoder stays within the 512-byte user-event budget. */
static void test_budgets(void **state)
{
    uint8_t buf[1024], dg[DF_GEV_DIGESTS_MAX * 32], bits[64];
    df_gev_t e;
    size_t fit = df_gev_digests_fit(900, "n1");
    uint32_t cursor = 0;
    int n;

    (void)state;
    assert_true(fit >= 20 && fit <= DF_GEV_DIGESTS_MAX);
    for (size_t i = 0; i < sizeof(dg); i++)
        dg[i] = (uint8_t)i;
    n = df_gev_encode_digest(buf, 900, "n1", TASK, 7, dg, fit);
    assert_true(n > 0 && n <= 900);
    assert_int_equal(df_gev_decode(buf, (size_t)n, &e), 0);
    assert_int_equal(e.first, 7);
    assert_int_equal(e.ndigests, fit);
    assert_memory_equal(e.digests, dg, fit * 32);
    /* one more than fits does not */
    assert_int_equal(df_gev_encode_digest(buf, 900, "n1", TASK, 7, dg, fit + 1), DF_ETOOBIG);

    /* alternate bits: the worst case for run-length HAVE; it is cut at the
     * budget and the cursor says where the next event starts */
    memset(bits, 0x55, sizeof(bits));
    n = df_gev_encode_have(buf, 508, "n1", TASK, true, bits, 512, &cursor);
    assert_true(n > 0 && n <= 508);
    assert_true(cursor > 0 && cursor < 512);
    assert_int_equal(df_gev_decode(buf, (size_t)n, &e), 0);
    assert_true(e.full);
    assert_int_equal(e.runs[0].first, 0);
    /* nothing from the cursor on was in this event, nothing before it was left out */
    assert_true(e.runs[e.nruns - 1].first + e.runs[e.nruns - 1].count <= cursor);
    assert_true(e.runs[e.nruns - 1].first + 2 >= cursor);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_roundtrip),
        cmocka_unit_test(test_file_roundtrip),
        cmocka_unit_test(test_budgets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
