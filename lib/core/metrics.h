/*
 * A tiny Prometheus metrics registry rendering the text exposition format
 * (version 0.0.4): counters, gauges and histograms with fixed buckets, each
 * series optionally carrying up to DF_METRICS_MAX_LABELS label pairs.
 *
 * Series are registered once (get-or-create by name + labels) and updated
 * through the returned handle, which lives as long as the registry.  Series
 * of the same name form one family: one # HELP and one # TYPE line, emitted
 * where the name was first registered; families and series render in
 * registration order, so the output is stable and testable.
 *
 * Names are checked at registration: [a-zA-Z_:][a-zA-Z0-9_:]*, prefix
 * "dfly_", and counters must end in "_total" (use base units in names:
 * _seconds, _bytes).  Label names: [a-zA-Z_][a-zA-Z0-9_]*, not "__"-prefixed,
 * and "le" is reserved for histogram buckets.
 *
 * Values that live elsewhere (an upload server's byte counter) are copied in
 * by collect callbacks, run at the start of every df_metrics_render().
 *
 * Single-threaded: no locking.  Caps: DF_METRICS_MAX_SERIES series,
 * DF_METRICS_MAX_BUCKETS buckets, bounded name/help/label lengths.
 */
#ifndef DF_CORE_METRICS_H
#define DF_CORE_METRICS_H
#ifndef DF_INTERNAL
#error "lib/core/metrics.h is private to libdfly"
#endif

#include "core/core.h"

#include <stddef.h>
#include <stdint.h>

#define DF_METRICS_MAX_SERIES 512
#define DF_METRICS_MAX_LABELS 4
#define DF_METRICS_MAX_BUCKETS 16
#define DF_METRICS_MAX_COLLECTORS 16
#define DF_METRICS_NAME_MAX 96      /* metric and label names, bytes incl. NUL */
#define DF_METRICS_HELP_MAX 256     /* help text */
#define DF_METRICS_VALUE_MAX 128    /* a label value */

/* The Content-Type of df_metrics_render()'s output. */
#define DF_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct df_metrics df_metrics_t;
typedef struct df_metric df_metric_t;

typedef enum { DF_METRIC_COUNTER = 0, DF_METRIC_GAUGE, DF_METRIC_HISTOGRAM } df_metric_type_t;

typedef struct {
    const char *name;
    const char *value;
} df_metric_label_t;

/* Collect callback: update series from their real sources, before render. */
typedef void (*df_metrics_collect_cb)(df_metrics_t *m, void *arg);

int df_metrics_new(df_metrics_t **out);
/* Frees the registry and every series handle it gave out.  NULL is fine. */
void df_metrics_free(df_metrics_t *m);

/* Get-or-create a series.  help is the family's help text (the first
 * registration's wins).  labels[0..nlabels) are copied; nlabels may be 0
 * with labels NULL.  Registering an existing name with a different type (or,
 * for histograms, different buckets) is -EINVAL.  *out is owned by m.
 * 0, -EINVAL (bad name/label/type clash), -ENAMETOOLONG, DF_ETOOBIG (series
 * cap), -ENOMEM. */
int df_metrics_counter(df_metrics_t *m, const char *name, const char *help,
                       const df_metric_label_t *labels, size_t nlabels, df_metric_t **out);
int df_metrics_gauge(df_metrics_t *m, const char *name, const char *help,
                     const df_metric_label_t *labels, size_t nlabels, df_metric_t **out);
/* buckets: nbuckets (1..DF_METRICS_MAX_BUCKETS) finite, strictly increasing
 * upper bounds; the +Inf bucket is implicit. */
int df_metrics_histogram(df_metrics_t *m, const char *name, const char *help,
                         const double *buckets, size_t nbuckets, const df_metric_label_t *labels,
                         size_t nlabels, df_metric_t **out);

/* Runs cb(m, arg) at the start of every render.  0 or DF_ETOOBIG. */
int df_metrics_add_collector(df_metrics_t *m, df_metrics_collect_cb cb, void *arg);

/* Updates.  Each is a no-op on NULL or on a series of the wrong type, so a
 * failed registration never crashes the caller. */
void df_metric_inc(df_metric_t *s);               /* counter, gauge: +1 */
void df_metric_add(df_metric_t *s, double v);     /* counter (v >= 0 only), gauge */
void df_metric_set(df_metric_t *s, double v);     /* gauge; counter only upwards
                                                   * (for collectors copying a
                                                   * monotonic total) */
void df_metric_observe(df_metric_t *s, double v); /* histogram */
double df_metric_value(const df_metric_t *s);     /* counter/gauge value; histogram sum */

/* Appends the exposition text to out.  0, or the first error from out
 * (DF_ETOOBIG when out's cap is reached; out then holds a truncated text). */
int df_metrics_render(df_metrics_t *m, df_buf_t *out);

#endif
