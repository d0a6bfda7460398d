/* Unit tests for the supernode's defaults and YAML config loading
 * (lib/supernode/config.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static void write_yaml(const char *text)
{
    FILE *f;
    snprintf(path, sizeof(path), "/tmp/test_sn_config.%d.yml", (int)getpid());
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_defaults(void **state)
{
    df_supernode_config_t c;

    (void)state;
    df_supernode_config_init(&c);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 8002);
    assert_string_equal(c.data_dir, "/var/lib/dfly/supernode");
    assert_null(c.advertise_ip);
    assert_int_equal(c.peer_timeout_ms, 60000);
    assert_int_equal(c.origin_timeout_ms, 30000);
    assert_int_equal(c.peer_upload_slots, 4);
    assert_int_equal(c.seed_upload_slots, 16);
    assert_int_equal(c.batch_pieces, 8);
    assert_int_equal(c.piece_size, 0);
    assert_int_equal(c.hash_threads, 1);
    assert_int_equal(c.cache_limit_bytes, 0);
}

static void test_load(void **state)
{
    df_supernode_config_t c;
    char err[256] = "";

    (void)state;
    df_supernode_config_init(&c);
    write_yaml("listen: '[::1]:9000'\n"
               "data-dir: /srv/sn\n"
               "advertise-ip: 10.1.2.3\n"
               "cache-limit: 20G\n"
               "peer-timeout: 90s\n"
               "origin-timeout: 1500ms\n"
               "peer-upload-slots: 6\n"
               "seed-upload-slots: 16\n"
               "batch-pieces: 12\n"
               "piece-size: 1M\n"
               "hash-threads: 0\n"
               "log-level: info\n");
    assert_int_equal(df_supernode_config_load(&c, path, err, sizeof(err)), 0);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 9000);
    assert_string_equal(c.data_dir, "/srv/sn");
    assert_string_equal(c.advertise_ip, "10.1.2.3");
    assert_int_equal(c.cache_limit_bytes, 20ull << 30);
    assert_int_equal(c.peer_timeout_ms, 90000);
    assert_int_equal(c.origin_timeout_ms, 1500);
    assert_int_equal(c.peer_upload_slots, 6);
    assert_int_equal(c.seed_upload_slots, 16);
    assert_int_equal(c.batch_pieces, 12);
    assert_int_equal(c.piece_size, 1u << 20);
    assert_int_equal(c.hash_threads, 0);
    unlink(path);
}

static void test_errors(void **state)
{
    static const char *bad[] = {
        "listen: nohost\n",      "cache-limit: lots\n", "peer-timeout: 0\n", "peer-upload-slots: 0\n",
        "log-level: chatty\n",   "data-dir: ''\n",      "unknown-key: 1\n",  "listen: [a\n",
        "hash-threads: 2\n",
    };
    df_supernode_config_t c;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        df_supernode_config_init(&c);
        err[0] = '\0';
        write_yaml(bad[i]);
        if (df_supernode_config_load(&c, path, err, sizeof(err)) == 0)
            fail_msg("accepted: %s", bad[i]);
        assert_true(err[0] != '\0');
    }
    unlink(path);
    assert_true(df_supernode_config_load(&c, "/nonexistent/sn.yml", err, sizeof(err)) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
