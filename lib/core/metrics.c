/*
 * Prometheus text-format registry (see metrics.h for the contract).
 *
 * Layout: a registry owns families (one per metric name: type, help,
 * histogram buckets) and series (one per label set).  Each family keeps its
 * series in a singly linked list in registration order; families are kept
 * in an array in registration order.  Every object is allocated once and
 * never moves, so df_metric_t handles stay valid until df_metrics_free().
 *
 * Rendering follows the text exposition format 0.0.4:
 *   # HELP <name> <help, with \ and newline escaped>
 *   # TYPE <name> counter|gauge|histogram
 *   <name>{<label>="<value, \ " newline escaped>",...} <value>
 * Histograms render cumulative <name>_bucket{...,le="<bound>"} lines ending
 * with le="+Inf", then <name>_sum and <name>_count.  Values use the shortest
 * decimal form that reads back exactly ("1", "0.25", "+Inf", "NaN").
 */
#include "core/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct family family_t;

struct df_metric {
    family_t *fam;
    df_metric_t *next;                                  /* next series of fam */
    size_t nlabels;
    char lname[DF_METRICS_MAX_LABELS][DF_METRICS_NAME_MAX];
    char lvalue[DF_METRICS_MAX_LABELS][DF_METRICS_VALUE_MAX];
    double value;                                       /* counter/gauge; histogram sum */
    uint64_t count;                                     /* histogram observations */
    uint64_t bucket[DF_METRICS_MAX_BUCKETS];            /* non-cumulative counts */
};

struct family {
    char name[DF_METRICS_NAME_MAX];
    char help[DF_METRICS_HELP_MAX];
    df_metric_type_t type;
    size_t nbuckets;
    double bounds[DF_METRICS_MAX_BUCKETS];
    df_metric_t *head, *tail;
};

typedef struct {
    df_metrics_collect_cb cb;
    void *arg;
} collector_t;

struct df_metrics {
    family_t *fam[DF_METRICS_MAX_SERIES]; /* a family has >= 1 series */
    size_t nfam;
    size_t nseries;
    collector_t coll[DF_METRICS_MAX_COLLECTORS];
    size_t ncoll;
};

int df_metrics_new(df_metrics_t **out)
{
    df_metrics_t *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    *out = m;
    return 0;
}

void df_metrics_free(df_metrics_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfam; i++) {
        df_metric_t *s = m->fam[i]->head;
        while (s) {
            df_metric_t *next = s->next;
            free(s);
            s = next;
        }
        free(m->fam[i]);
    }
    free(m);
}

/* ---- validation */

static bool name_char(char c, bool first, bool colon_ok)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
        return true;
    if (colon_ok && c == ':')
        return true;
    return !first && c >= '0' && c <= '9';
}

static int check_name(const char *name, bool is_label)
{
    size_t n;

    if (!name || !*name)
        return -EINVAL;
    n = strlen(name);
    if (n >= DF_METRICS_NAME_MAX)
        return -ENAMETOOLONG;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i], i == 0, !is_label))
            return -EINVAL;
    if (is_label && (strncmp(name, "__", 2) == 0 || strcmp(name, "le") == 0))
        return -EINVAL;
    return 0;
}

static int check_metric_name(const char *name, df_metric_type_t type)
{
    int rc = check_name(name, false);
    size_t n;

    if (rc < 0)
        return rc;
    n = strlen(name);
    if (strncmp(name, "dfly_", 5) != 0 || n == 5)
        return -EINVAL;
    if (type == DF_METRIC_COUNTER && (n <= 5 + 6 || strcmp(name + n - 6, "_total") != 0))
        return -EINVAL;
    /* Histograms own the _bucket/_sum/_count suffixes; a gauge ending in
     * _total would read as a counter. */
    if (type != DF_METRIC_COUNTER && n >= 6 && strcmp(name + n - 6, "_total") == 0)
        return -EINVAL;
    return 0;
}

static int check_labels(const df_metric_label_t *labels, size_t n)
{
    int rc;

    if (n > DF_METRICS_MAX_LABELS || (n && !labels))
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        rc = check_name(labels[i].name, true);
        if (rc < 0)
            return rc;
        if (!labels[i].value)
            return -EINVAL;
        if (strlen(labels[i].value) >= DF_METRICS_VALUE_MAX)
            return -ENAMETOOLONG;
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i].name, labels[j].name) == 0)
                return -EINVAL;
    }
    return 0;
}

/* Same label set (order-insensitive; names are unique within a set). */
static bool same_labels(const df_metric_t *s, const df_metric_label_t *labels, size_t n)
{
    if (s->nlabels != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < s->nlabels && !found; j++)
            found = strcmp(s->lname[j], labels[i].name) == 0 &&
                    strcmp(s->lvalue[j], labels[i].value) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* ---- registration */

static int get_or_create(df_metrics_t *m, df_metric_type_t type, const char *name, const char *help,
                         const double *buckets, size_t nbuckets, const df_metric_label_t *labels,
                         size_t nlabels, df_metric_t **out)
{
    family_t *fam = NULL, *newfam = NULL;
    df_metric_t *s;
    int rc;

    if (!m || !out)
        return -EINVAL;
    rc = check_metric_name(name, type);
    if (rc < 0)
        return rc;
    rc = check_labels(labels, nlabels);
    if (rc < 0)
        return rc;
    if (!help)
        help = "";
    if (strlen(help) >= DF_METRICS_HELP_MAX)
        return -ENAMETOOLONG;
    if (type == DF_METRIC_HISTOGRAM) {
        if (nbuckets == 0 || nbuckets > DF_METRICS_MAX_BUCKETS || !buckets)
            return -EINVAL;
        for (size_t i = 0; i < nbuckets; i++)
            if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
                return -EINVAL;
    }

    for (size_t i = 0; i < m->nfam && !fam; i++)
        if (strcmp(m->fam[i]->name, name) == 0)
            fam = m->fam[i];
    if (fam) {
        if (fam->type != type)
            return -EINVAL;
        if (type == DF_METRIC_HISTOGRAM &&
            (fam->nbuckets != nbuckets || memcmp(fam->bounds, buckets, nbuckets * sizeof(double))))
            return -EINVAL;
        for (s = fam->head; s; s = s->next) {
            if (same_labels(s, labels, nlabels)) {
                *out = s;
                return 0;
            }
        }
    }
    if (m->nseries >= DF_METRICS_MAX_SERIES)
        return DF_ETOOBIG;

    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    if (!fam) {
        newfam = fam = calloc(1, sizeof(*fam));
        if (!fam) {
            free(s);
            return -ENOMEM;
        }
        df_strlcpy(fam->name, name, sizeof(fam->name));
        df_strlcpy(fam->help, help, sizeof(fam->help));
        fam->type = type;
        fam->nbuckets = nbuckets;
        if (nbuckets)
            memcpy(fam->bounds, buckets, nbuckets * sizeof(double));
        /* nfam <= nseries < DF_METRICS_MAX_SERIES: fits. */
        m->fam[m->nfam++] = newfam;
    }
    s->fam = fam;
    s->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++) {
        df_strlcpy(s->lname[i], labels[i].name, sizeof(s->lname[i]));
        df_strlcpy(s->lvalue[i], labels[i].value, sizeof(s->lvalue[i]));
    }
    if (fam->tail)
        fam->tail->next = s;
    else
        fam->head = s;
    fam->tail = s;
    m->nseries++;
    *out = s;
    return 0;
}

int df_metrics_counter(df_metrics_t *m, const char *name, const char *help,
                       const df_metric_label_t *labels, size_t nlabels, df_metric_t **out)
{
    return get_or_create(m, DF_METRIC_COUNTER, name, help, NULL, 0, labels, nlabels, out);
}

int df_metrics_gauge(df_metrics_t *m, const char *name, const char *help,
                     const df_metric_label_t *labels, size_t nlabels, df_metric_t **out)
{
    return get_or_create(m, DF_METRIC_GAUGE, name, help, NULL, 0, labels, nlabels, out);
}

int df_metrics_histogram(df_metrics_t *m, const char *name, const char *help,
                         const double *buckets, size_t nbuckets, const df_metric_label_t *labels,
                         size_t nlabels, df_metric_t **out)
{
    return get_or_create(m, DF_METRIC_HISTOGRAM, name, help, buckets, nbuckets, labels, nlabels,
                         out);
}

int df_metrics_add_collector(df_metrics_t *m, df_metrics_collect_cb cb, void *arg)
{
    if (!m || !cb)
        return -EINVAL;
    if (m->ncoll >= DF_METRICS_MAX_COLLECTORS)
        return DF_ETOOBIG;
    m->coll[m->ncoll].cb = cb;
    m->coll[m->ncoll].arg = arg;
    m->ncoll++;
    return 0;
}

/* ---- updates */

void df_metric_inc(df_metric_t *s)
{
    df_metric_add(s, 1.0);
}

void df_metric_add(df_metric_t *s, double v)
{
    if (!s || s->fam->type == DF_METRIC_HISTOGRAM)
        return;
    /* A counter only goes up; !(v >= 0) also rejects NaN. */
    if (s->fam->type == DF_METRIC_COUNTER && !(v >= 0))
        return;
    s->value += v;
}

void df_metric_set(df_metric_t *s, double v)
{
    if (!s || s->fam->type == DF_METRIC_HISTOGRAM)
        return;
    if (s->fam->type == DF_METRIC_COUNTER && !(v >= s->value))
        return;
    s->value = v;
}

void df_metric_observe(df_metric_t *s, double v)
{
    family_t *f;
    size_t i;

    if (!s || s->fam->type != DF_METRIC_HISTOGRAM || isnan(v))
        return;
    f = s->fam;
    /* Bucket i counts bounds[i-1] < v <= bounds[i]; past the last bound the
     * observation is only in +Inf (count). */
    for (i = 0; i < f->nbuckets && v > f->bounds[i]; i++)
        ;
    if (i < f->nbuckets)
        s->bucket[i]++;
    s->count++;
    s->value += v;
}

double df_metric_value(const df_metric_t *s)
{
    return s ? s->value : 0.0;
}

/* ---- rendering */

/* Shortest decimal text of v that parses back to v; Prometheus spellings
 * for the non-finite values.  buf holds at least 32 bytes. */
static void format_value(double v, char *buf, size_t cap)
{
    if (isnan(v)) {
        snprintf(buf, cap, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, cap, v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        snprintf(buf, cap, "0"); /* also -0 */
    } else if (v == trunc(v) && fabs(v) < 1e15) {
        snprintf(buf, cap, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, cap, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
}

/* Appends s with \ and newline escaped, plus " when quoted. */
static int append_escaped(df_buf_t *out, const char *s, bool quoted)
{
    int rc = 0;

    for (; *s && rc == 0; s++) {
        if (*s == '\\')
            rc = df_buf_append(out, "\\\\", 2);
        else if (*s == '\n')
            rc = df_buf_append(out, "\\n", 2);
        else if (quoted && *s == '"')
            rc = df_buf_append(out, "\\\"", 2);
        else
            rc = df_buf_append(out, s, 1);
    }
    return rc;
}

/* name[suffix]{labels[,le="le"]} value\n */
static int render_line(df_buf_t *out, const df_metric_t *s, const char *suffix, const char *le,
                       double v)
{
    char num[64];
    int rc;

    rc = df_buf_printf(out, "%s%s", s->fam->name, suffix);
    if (rc == 0 && (s->nlabels || le)) {
        rc = df_buf_append(out, "{", 1);
        for (size_t i = 0; i < s->nlabels && rc == 0; i++) {
            rc = df_buf_printf(out, "%s%s=\"", i ? "," : "", s->lname[i]);
            if (rc == 0)
                rc = append_escaped(out, s->lvalue[i], true);
            if (rc == 0)
                rc = df_buf_append(out, "\"", 1);
        }
        if (rc == 0 && le)
            rc = df_buf_printf(out, "%sle=\"%s\"", s->nlabels ? "," : "", le);
        if (rc == 0)
            rc = df_buf_append(out, "}", 1);
    }
    if (rc == 0) {
        format_value(v, num, sizeof(num));
        rc = df_buf_printf(out, " %s\n", num);
    }
    return rc;
}

static int render_series(df_buf_t *out, const df_metric_t *s)
{
    const family_t *f = s->fam;
    char le[64];
    uint64_t cum = 0;
    int rc = 0;

    if (f->type != DF_METRIC_HISTOGRAM)
        return render_line(out, s, "", NULL, s->value);
    for (size_t i = 0; i < f->nbuckets && rc == 0; i++) {
        cum += s->bucket[i];
        format_value(f->bounds[i], le, sizeof(le));
        rc = render_line(out, s, "_bucket", le, (double)cum);
    }
    if (rc == 0)
        rc = render_line(out, s, "_bucket", "+Inf", (double)s->count);
    if (rc == 0)
        rc = render_line(out, s, "_sum", NULL, s->value);
    if (rc == 0)
        rc = render_line(out, s, "_count", NULL, (double)s->count);
    return rc;
}

int df_metrics_render(df_metrics_t *m, df_buf_t *out)
{
    static const char *const type_name[] = {"counter", "gauge", "histogram"};
    int rc = 0;

    for (size_t i = 0; i < m->ncoll; i++)
        m->coll[i].cb(m, m->coll[i].arg);

    for (size_t i = 0; i < m->nfam && rc == 0; i++) {
        const family_t *f = m->fam[i];

        rc = df_buf_printf(out, "# HELP %s ", f->name);
        if (rc == 0)
            rc = append_escaped(out, f->help, false);
        if (rc == 0)
            rc = df_buf_printf(out, "\n# TYPE %s %s\n", f->name, type_name[f->type]);
        for (const df_metric_t *s = f->head; s && rc == 0; s = s->next)
            rc = render_series(out, s);
    }
    return rc;
}
