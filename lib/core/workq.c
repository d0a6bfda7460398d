/*
 * Worker threads with a bounded job queue; completions go back to the event
 * loop through an eventfd (contract in workq.h).
 *
 * Every accepted job sits in one list in submission order until its done
 * callback has run.  Jobs not yet taken by a worker are a suffix of that list
 * starting at next_run, so workers take them in order; the loop delivers from
 * the head while the head is finished, which keeps done callbacks in
 * submission order with any number of threads.  One mutex guards the list and
 * the job states; no lock is held while a work or done function runs.
 */
#include "core/workq.h"

#include "core/core.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE } job_state_t;

typedef struct job {
    df_work_fn work;
    df_work_done_fn done;
    void *arg;
    job_state_t state;
    struct job *next;
} job_t;

struct df_workq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *head, *tail;   /* outstanding jobs, submission order */
    job_t *next_run;      /* first job no worker has taken */
    unsigned n, cap;
    bool stopping;        /* workers take no more jobs */
    bool closing;         /* inside df_workq_free: submit refuses */
    unsigned nthreads;    /* started */
    pthread_t *threads;
    int efd;
    struct event *ev;
};

static void *worker_main(void *arg)
{
    df_workq_t *q = arg;
    const uint64_t one = 1;

    pthread_mutex_lock(&q->mu);
    for (;;) {
        job_t *j;
        while (!q->stopping && !q->next_run)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->stopping)
            break;
        j = q->next_run;
        q->next_run = j->next;
        j->state = JOB_RUNNING;
        pthread_mutex_unlock(&q->mu);
        j->work(j->arg);
        pthread_mutex_lock(&q->mu);
        j->state = JOB_DONE;
        /* An eventfd write only fails when the counter would overflow,
         * which a wake-up count cannot reach; the loop reads it to zero. */
        if (write(q->efd, &one, sizeof(one)) < 0) {
        }
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* Pops the head when it is finished (or when forced: inside free, after
 * the workers are joined); returns it with its status, or NULL. */
static job_t *pop_done(df_workq_t *q, bool force, int *status)
{
    job_t *j;

    pthread_mutex_lock(&q->mu);
    j = q->head;
    if (j && (force || j->state == JOB_DONE)) {
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        if (q->next_run == j)
            q->next_run = j->next;
        q->n--;
        *status = j->state == JOB_DONE ? 0 : -ECANCELED;
    } else {
        j = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return j;
}

static void deliver(df_workq_t *q, bool force)
{
    job_t *j;
    int status = 0;

    while ((j = pop_done(q, force, &status)) != NULL) {
        df_work_done_fn done = j->done;
        void *arg = j->arg;
        free(j);
        done(arg, status);
    }
}

static void efd_cb(evutil_socket_t fd, short what, void *arg)
{
    df_workq_t *q = arg;
    uint64_t v;

    if (read(fd, &v, sizeof(v)) < 0) {
        /* EAGAIN: a spurious wake-up; the list is the truth either way */
    }
    deliver(q, false);
}

int df_workq_new(struct event_base *base, unsigned nthreads, unsigned cap, df_workq_t **out)
{
    df_workq_t *q;
    sigset_t all, old;
    int rc = 0;

    *out = NULL;
    if (!base || nthreads == 0 || nthreads > 64 || cap == 0)
        return -EINVAL;
    q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->cap = cap;
    q->efd = -1;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->threads = calloc(nthreads, sizeof(*q->threads));
    if (!q->threads) {
        rc = -ENOMEM;
        goto out;
    }
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0) {
        rc = -errno;
        goto out;
    }
    q->ev = event_new(base, q->efd, EV_READ | EV_PERSIST, efd_cb, q);
    if (!q->ev || event_add(q->ev, NULL) < 0) {
        rc = -ENOMEM;
        goto out;
    }
    /* Workers block every signal: handlers (SIGINT, SIGTERM, libevent's
     * signal events) must run on the loop thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < nthreads; i++) {
        int e = pthread_create(&q->threads[i], NULL, worker_main, q);
        if (e != 0) {
            rc = -e;
            break;
        }
        q->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
out:
    if (rc < 0) {
        df_workq_free(q);
        return rc;
    }
    *out = q;
    return 0;
}

int df_workq_submit(df_workq_t *q, df_work_fn work, df_work_done_fn done, void *arg)
{
    job_t *j;

    if (q->closing)
        return -ECANCELED;
    if (q->n >= q->cap)
        return -EAGAIN; /* n changes only on this thread: no lock needed */
    j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->work = work;
    j->done = done;
    j->arg = arg;
    j->state = JOB_QUEUED;
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    if (!q->next_run)
        q->next_run = j;
    q->n++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

unsigned df_workq_pending(const df_workq_t *q)
{
    return q ? q->n : 0;
}

void df_workq_free(df_workq_t *q)
{
    if (!q)
        return;
    q->closing = true;
    pthread_mutex_lock(&q->mu);
    q->stopping = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (unsigned i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    /* No worker is left: every job is finished or was never started. */
    deliver(q, true);
    if (q->ev)
        event_free(q->ev);
    if (q->efd >= 0)
        close(q->efd);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q->threads);
    free(q);
}
