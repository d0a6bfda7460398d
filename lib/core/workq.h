/*
 * A small pool of worker threads for CPU work that must not hold the event
 * loop (SHA-256 of a piece read back from the page cache).
 *
 * Threads: the loop thread owns the queue and is the only one that submits,
 * frees and receives completions; workers only run a job's work function and
 * signal.  A worker never touches libevent: it appends the finished job under
 * the queue's mutex and writes to an eventfd, whose read event (owned by the
 * loop) delivers completions.  So the event base needs no locking
 * (evthread_use_pthreads) and the application's base is used as it is.
 *
 * Order: done callbacks run on the loop in submission order, whatever the
 * number of threads (a job finished early waits for the ones before it).
 * With one thread, work functions also run in submission order.
 */
#ifndef DF_CORE_WORKQ_H
#define DF_CORE_WORKQ_H
#ifndef DF_INTERNAL
#error "lib/core/workq.h is private to libdfly"
#endif

#include <event2/event.h>

typedef struct df_workq df_workq_t;

/* Runs on a worker thread: may only touch what arg owns (no libevent, no
 * loop-thread state). */
typedef void (*df_work_fn)(void *arg);
/* Runs on the loop thread exactly once per accepted job: status 0 when work
 * ran, -ECANCELED when the queue was freed before work started (work never
 * ran).  The callback may submit new jobs (except from inside df_workq_free)
 * and owns arg again. */
typedef void (*df_work_done_fn)(void *arg, int status);

/* nthreads >= 1 workers, at most cap jobs accepted and not yet delivered.
 * 0, -EINVAL or -errno (thread or eventfd creation). */
int df_workq_new(struct event_base *base, unsigned nthreads, unsigned cap, df_workq_t **out);

/* Queues work(arg) and later done(arg, status) on the loop; never calls done
 * from inside this call.  -EAGAIN when cap jobs are outstanding (the caller
 * does the work itself), -ENOMEM; on error nothing is queued. */
int df_workq_submit(df_workq_t *q, df_work_fn work, df_work_done_fn done, void *arg);

/* Jobs accepted and whose done callback has not run yet. */
unsigned df_workq_pending(const df_workq_t *q);

/* Stops the workers: jobs being worked on finish, jobs not started are
 * cancelled; then every outstanding done callback runs, from inside this
 * call, in submission order (status 0 or -ECANCELED); then the threads are
 * joined and everything is released.  Accepts NULL.  Loop thread only. */
void df_workq_free(df_workq_t *q);

#endif
