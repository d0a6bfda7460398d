/* Unit tests for the Prometheus registry (lib/core/metrics.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static void collect(df_metrics_t *m, void *arg)
{
    df_metric_t *g = arg;
    (void)m;
    df_metric_set(g, 7);
}

static void test_render_exact(void **state)
{
    static const double bounds[] = {0.1, 0.5, 2};
    const df_metric_label_t seed[] = {{"role", "seed"}};
    const df_metric_label_t peer[] = {{"role", "peer"}};
    const df_metric_label_t odd[] = {{"path", "a\\b\"c\nd"}, {"code", "404"}};
    df_metrics_t *m = NULL;
    df_metric_t *c1, *c2, *c1again, *g, *h, *coll, *e;
    df_buf_t out;
    (void)state;

    assert_int_equal(df_metrics_new(&m), 0);
    assert_int_equal(df_metrics_counter(m, "dfly_upload_bytes_total", "Bytes served to peers.",
                                        seed, 1, &c1), 0);
    assert_int_equal(df_metrics_counter(m, "dfly_upload_bytes_total", "ignored", peer, 1, &c2), 0);
    assert_int_equal(df_metrics_counter(m, "dfly_upload_bytes_total", NULL, seed, 1, &c1again), 0);
    assert_ptr_equal(c1, c1again);
    assert_int_equal(df_metrics_gauge(m, "dfly_tasks", "Tasks known.\nSecond \\ line.", NULL, 0,
                                      &g), 0);
    assert_int_equal(df_metrics_histogram(m, "dfly_piece_seconds", "Piece fetch time.", bounds, 3,
                                          NULL, 0, &h), 0);
    assert_int_equal(df_metrics_gauge(m, "dfly_collected", "From a collector.", NULL, 0, &coll),
                     0);
    assert_int_equal(df_metrics_counter(m, "dfly_http_errors_total", "Errors.", odd, 2, &e), 0);
    assert_int_equal(df_metrics_add_collector(m, collect, coll), 0);

    df_metric_add(c1, 4194304);
    df_metric_add(c1, -5); /* ignored: counters only go up */
    df_metric_inc(c2);
    df_metric_set(g, 2.5);
    df_metric_add(g, -3);
    df_metric_observe(h, 0.05);
    df_metric_observe(h, 0.1); /* le is inclusive */
    df_metric_observe(h, 1);
    df_metric_observe(h, 10);
    df_metric_inc(e);
    df_metric_observe(c1, 1); /* wrong type: no-op */

    df_buf_init(&out, 1 << 16);
    assert_int_equal(df_metrics_render(m, &out), 0);
    assert_string_equal(out.data,
                        "# HELP dfly_upload_bytes_total Bytes served to peers.\n"
                        "# TYPE dfly_upload_bytes_total counter\n"
                        "dfly_upload_bytes_total{role=\"seed\"} 4194304\n"
                        "dfly_upload_bytes_total{role=\"peer\"} 1\n"
                        "# HELP dfly_tasks Tasks known.\\nSecond \\\\ line.\n"
                        "# TYPE dfly_tasks gauge\n"
                        "dfly_tasks -0.5\n"
                        "# HELP dfly_piece_seconds Piece fetch time.\n"
                        "# TYPE dfly_piece_seconds histogram\n"
                        "dfly_piece_seconds_bucket{le=\"0.1\"} 2\n"
                        "dfly_piece_seconds_bucket{le=\"0.5\"} 2\n"
                        "dfly_piece_seconds_bucket{le=\"2\"} 3\n"
                        "dfly_piece_seconds_bucket{le=\"+Inf\"} 4\n"
                        "dfly_piece_seconds_sum 11.15\n"
                        "dfly_piece_seconds_count 4\n"
                        "# HELP dfly_collected From a collector.\n"
                        "# TYPE dfly_collected gauge\n"
                        "dfly_collected 7\n"
                        "# HELP dfly_http_errors_total Errors.\n"
                        "# TYPE dfly_http_errors_total counter\n"
                        "dfly_http_errors_total{path=\"a\\\\b\\\"c\\nd\",code=\"404\"} 1\n");

    /* A too-small buffer fails cleanly. */
    df_buf_free(&out);
    df_buf_init(&out, 64);
    assert_int_equal(df_metrics_render(m, &out), DF_ETOOBIG);
    df_buf_free(&out);
    df_metrics_free(m);
}

static void test_histogram_labels(void **state)
{
    static const double bounds[] = {1};
    const df_metric_label_t l[] = {{"kind", "seed"}};
    df_metrics_t *m = NULL;
    df_metric_t *h;
    df_buf_t out;
    (void)state;

    assert_int_equal(df_metrics_new(&m), 0);
    assert_int_equal(df_metrics_histogram(m, "dfly_x_bytes", "X.", bounds, 1, l, 1, &h), 0);
    df_metric_observe(h, 3);
    df_buf_init(&out, 4096);
    assert_int_equal(df_metrics_render(m, &out), 0);
    assert_string_equal(out.data, "# HELP dfly_x_bytes X.\n"
                                  "# TYPE dfly_x_bytes histogram\n"
                                  "dfly_x_bytes_bucket{kind=\"seed\",le=\"1\"} 0\n"
                                  "dfly_x_bytes_bucket{kind=\"seed\",le=\"+Inf\"} 1\n"
                                  "dfly_x_bytes_sum{kind=\"seed\"} 3\n"
                                  "dfly_x_bytes_count{kind=\"seed\"} 1\n");
    df_buf_free(&out);
    df_metrics_free(m);
}

static void test_values(void **state)
{
    df_metrics_t *m = NULL;
    df_metric_t *g;
    df_buf_t out;
    (void)state;

    assert_int_equal(df_metrics_new(&m), 0);
    assert_int_equal(df_metrics_gauge(m, "dfly_v", "", NULL, 0, &g), 0);
    df_buf_init(&out, 4096);
    df_metric_set(g, 0.1);
    assert_int_equal(df_metrics_render(m, &out), 0);
    assert_non_null(strstr(out.data, "\ndfly_v 0.1\n"));
    df_buf_reset(&out);
    df_metric_set(g, INFINITY);
    assert_int_equal(df_metrics_render(m, &out), 0);
    assert_non_null(strstr(out.data, "\ndfly_v +Inf\n"));
    df_buf_reset(&out);
    df_metric_set(g, NAN);
    assert_int_equal(df_metrics_render(m, &out), 0);
    assert_non_null(strstr(out.data, "\ndfly_v NaN\n"));
    df_buf_reset(&out);
    df_metric_set(g, 1e20);
    assert_int_equal(df_metrics_render(m, &out), 0);
    assert_non_null(strstr(out.data, "\ndfly_v 1e+20\n"));
    df_buf_free(&out);
    df_metrics_free(m);
}

static void test_bad_names(void **state)
{
    static const double good[] = {1, 2}, bad[] = {2, 1};
    const df_metric_label_t le[] = {{"le", "x"}};
    const df_metric_label_t dunder[] = {{"__x", "x"}};
    const df_metric_label_t dup[] = {{"a", "x"}, {"a", "y"}};
    const df_metric_label_t five[] = {{"a", "1"}, {"b", "1"}, {"c", "1"}, {"d", "1"}, {"e", "1"}};
    df_metrics_t *m = NULL;
    df_metric_t *s;
    char longname[200];
    (void)state;

    assert_int_equal(df_metrics_new(&m), 0);
    assert_int_equal(df_metrics_counter(m, "dfly_requests", "", NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_counter(m, "requests_total", "", NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "dfly_tasks_total", "", NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "dfly_bad-name", "", NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "", "", NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "dfly_a", "", le, 1, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "dfly_a", "", dunder, 1, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "dfly_a", "", dup, 2, &s), -EINVAL);
    assert_int_equal(df_metrics_gauge(m, "dfly_a", "", five, 5, &s), -EINVAL);
    assert_int_equal(df_metrics_histogram(m, "dfly_h", "", bad, 2, NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_histogram(m, "dfly_h", "", good, 0, NULL, 0, &s), -EINVAL);
    memset(longname, 'a', sizeof(longname));
    memcpy(longname, "dfly_", 5);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(df_metrics_gauge(m, longname, "", NULL, 0, &s), -ENAMETOOLONG);

    /* Type clash and bucket clash with an existing family. */
    assert_int_equal(df_metrics_gauge(m, "dfly_a", "", NULL, 0, &s), 0);
    assert_int_equal(df_metrics_histogram(m, "dfly_a", "", good, 2, NULL, 0, &s), -EINVAL);
    assert_int_equal(df_metrics_histogram(m, "dfly_h", "", good, 2, NULL, 0, &s), 0);
    assert_int_equal(df_metrics_histogram(m, "dfly_h", "", good, 1, NULL, 0, &s), -EINVAL);
    df_metrics_free(m);
    df_metrics_free(NULL);
}

static void test_series_cap(void **state)
{
    df_metrics_t *m = NULL;
    df_metric_t *s;
    char v[16];
    int rc = 0, i;
    (void)state;

    assert_int_equal(df_metrics_new(&m), 0);
    for (i = 0; i < DF_METRICS_MAX_SERIES + 5 && rc == 0; i++) {
        df_metric_label_t l = {"n", v};
        snprintf(v, sizeof(v), "%d", i);
        rc = df_metrics_gauge(m, "dfly_many", "", &l, 1, &s);
    }
    assert_int_equal(rc, DF_ETOOBIG);
    assert_int_equal(i, DF_METRICS_MAX_SERIES + 1);
    df_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_histogram_labels),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_series_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
