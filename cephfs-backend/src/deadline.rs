//! `DeadlinePool`: a fixed set of threads that runs blocking libcephfs calls, so that the
//! thread serving a guest request waits for them at most a deadline.
//!
//! libcephfs has no per-call timeout: a call that needs the MDS waits until an MDS is active
//! again, forever if none comes back, and the guest kernel has no FUSE request timeout. The
//! pool owns the worker threads (all started by [`DeadlinePool::new`], never more: when every
//! worker is stuck, new jobs wait in the queue and their callers time out), the job queue, and
//! the hand-over of each result. A caller waits up to the deadline and then gets ETIMEDOUT. A
//! job whose caller gave up before a worker took it is never run (a CREATE the guest was told
//! failed is not sent later); one that was already running finishes in the background and
//! its result is dropped on the worker thread, which releases what it holds (a `CephInode`
//! puts its reference, a `CephFile` closes). [`DeadlinePool::drop_later`] hands a value to
//! the workers to drop without waiting at all, and [`DeadlinePool::wait_idle`] waits (bounded)
//! until everything handed over is done. Timeouts are logged once per outage and then at
//! most every [`WARN_INTERVAL`], and the return of the cluster (every late call finished) once.
//!
//! Must not: call libcephfs or know about FUSE (jobs are plain closures owning `'static`
//! data), hand a job anything borrowed from the caller (guest memory above all: a late job
//! must never touch it), or start a thread after `new`.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Shortest time between two "calls are timing out" warnings.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent, so a poisoned lock (a panic
    // elsewhere while holding it) is still usable.
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A job; the worker lends it the pool's shared state.
type Job = Box<dyn FnOnce(&Shared) + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Jobs a worker has taken and not finished.
    running: usize,
    /// Set when the pool is dropped: workers finish the queue and exit.
    closed: bool,
}

/// What the warnings remember between two timeouts.
#[derive(Default)]
struct OutageLog {
    last_warning: Option<Instant>,
    /// Timeouts since the last warning that were not logged.
    unlogged: u64,
    /// A timeout was logged and the late calls have not all come back yet.
    in_outage: bool,
}

/// State shared by the pool handle and its workers.
struct Shared {
    queue: Mutex<Queue>,
    job_ready: Condvar,
    /// Signalled when the queue is empty and no job runs.
    all_done: Condvar,
    /// Calls whose caller gave up and that have not finished (or been skipped) yet.
    late: AtomicUsize,
    /// Calls that timed out since the pool started.
    timed_out: AtomicU64,
    outage: Mutex<OutageLog>,
    name: &'static str,
}

impl Shared {
    fn push(&self, job: Job) -> io::Result<()> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        q.jobs.push_back(job);
        drop(q);
        self.job_ready.notify_one();
        Ok(())
    }

    /// On a worker: the next job, `None` once the pool is closed and the queue empty.
    /// `finished`: the worker just finished a job.
    fn next_job(&self, finished: bool) -> Option<Job> {
        let mut q = lock(&self.queue);
        if finished {
            q.running -= 1;
            if q.running == 0 && q.jobs.is_empty() {
                self.all_done.notify_all();
            }
        }
        loop {
            if let Some(job) = q.jobs.pop_front() {
                q.running += 1;
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = match self.job_ready.wait(q) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    fn queued(&self) -> usize {
        lock(&self.queue).jobs.len()
    }

    /// A caller gave up on `what` after `timeout`; `started`: a worker was running it.
    fn call_timed_out(&self, what: &'static str, timeout: Duration, started: bool) {
        let late = self.late.fetch_add(1, Ordering::AcqRel) + 1;
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut log = lock(&self.outage);
        let due = log
            .last_warning
            .map_or(true, |at| now.duration_since(at) >= WARN_INTERVAL);
        if !due {
            log.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.unlogged);
        log.last_warning = Some(now);
        log.in_outage = true;
        drop(log);
        let waiting = if started {
            "running"
        } else {
            "queued behind stuck calls"
        };
        tracing::warn!(
            "{}: {what} ({waiting}) got no answer from the cluster within {timeout:?}: failing \
             it with ETIMEDOUT, libcephfs keeps waiting in the background; {late} call(s) \
             pending, {} queued, {unlogged} more timeout(s) since the last warning (logged at \
             most every {WARN_INTERVAL:?})",
            self.name,
            self.queued(),
        );
    }

    /// A call whose caller had given up finished (or was skipped) and its result is dropped.
    fn late_call_finished(&self) {
        if self.late.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut log = lock(&self.outage);
        if std::mem::take(&mut log.in_outage) {
            let unlogged = std::mem::take(&mut log.unlogged);
            drop(log);
            tracing::info!(
                "{}: every call that timed out has come back: the cluster answers again \
                 ({unlogged} timeout(s) not logged individually, {} in all)",
                self.name,
                self.timed_out.load(Ordering::Relaxed)
            );
        }
    }
}

enum SlotState<T> {
    Queued,
    Running,
    Done(io::Result<T>),
    /// The caller took the result.
    Taken,
    /// The caller gave up: the result, if any ever comes, is dropped by the worker.
    Abandoned,
}

/// The hand-over of one call's result between its caller and a worker.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    done: Condvar,
}

impl<T> Slot<T> {
    /// On a worker: runs `call` unless the caller already gave up, then hands over or drops
    /// the result.
    fn execute<F>(&self, call: F, shared: &Shared)
    where
        F: FnOnce() -> io::Result<T>,
    {
        {
            let mut state = lock(&self.state);
            if matches!(*state, SlotState::Abandoned) {
                drop(state);
                drop(call);
                shared.late_call_finished();
                return;
            }
            *state = SlotState::Running;
        }
        // A panic in a job must not take a worker away: it becomes EIO for the caller.
        let result = catch_unwind(AssertUnwindSafe(call))
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)));
        let mut state = lock(&self.state);
        if matches!(*state, SlotState::Abandoned) {
            drop(state);
            // Released here, on the worker: the caller is long gone.
            drop(result);
            shared.late_call_finished();
            return;
        }
        *state = SlotState::Done(result);
        drop(state);
        self.done.notify_one();
    }

    /// On the caller: the result, or ETIMEDOUT once `timeout` has passed.
    fn wait(&self, what: &'static str, timeout: Duration, shared: &Shared) -> io::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if matches!(*state, SlotState::Done(_)) {
                if let SlotState::Done(result) = std::mem::replace(&mut *state, SlotState::Taken) {
                    return result;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let started = matches!(*state, SlotState::Running);
                *state = SlotState::Abandoned;
                drop(state);
                shared.call_timed_out(what, timeout, started);
                return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            state = match self.done.wait_timeout(state, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// A fixed set of threads running calls whose callers wait at most `timeout` for them.
pub struct DeadlinePool {
    shared: Arc<Shared>,
    timeout: Duration,
    workers: usize,
}

impl std::fmt::Debug for DeadlinePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlinePool")
            .field("name", &self.shared.name)
            .field("timeout", &self.timeout)
            .field("workers", &self.workers)
            .field("late", &self.late_calls())
            .finish_non_exhaustive()
    }
}

impl DeadlinePool {
    /// Starts `workers` threads named `<name>-<n>`. Fails only if not one could start; when
    /// some could, it runs with those (and says so).
    pub fn new(name: &'static str, workers: usize, timeout: Duration) -> io::Result<DeadlinePool> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                running: 0,
                closed: false,
            }),
            job_ready: Condvar::new(),
            all_done: Condvar::new(),
            late: AtomicUsize::new(0),
            timed_out: AtomicU64::new(0),
            outage: Mutex::new(OutageLog::default()),
            name,
        });
        let mut started = 0;
        let mut last_error = None;
        for n in 0..workers.max(1) {
            let worker = Arc::clone(&shared);
            match thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    let mut finished = false;
                    while let Some(job) = worker.next_job(finished) {
                        // A panic in a job must not take a worker away (calls also turn it
                        // into EIO for their caller).
                        let _ = catch_unwind(AssertUnwindSafe(|| job(&worker)));
                        finished = true;
                    }
                }) {
                Ok(_) => started += 1,
                Err(e) => last_error = Some(e),
            }
        }
        let pool = DeadlinePool {
            shared,
            timeout,
            workers: started,
        };
        match last_error {
            None => Ok(pool),
            Some(e) if started == 0 => Err(e),
            Some(e) => {
                tracing::warn!("{name}: only {started} of {workers} worker threads started: {e}");
                Ok(pool)
            }
        }
    }

    /// Runs `call` on a worker and waits for its result at most the pool's timeout; past it,
    /// ETIMEDOUT (and the result, when it comes, is dropped on the worker). `what` names the
    /// call in the warning.
    pub fn run<T, F>(&self, what: &'static str, call: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Queued),
            done: Condvar::new(),
        });
        let job_slot = Arc::clone(&slot);
        self.shared.push(Box::new(move |shared: &Shared| {
            job_slot.execute(call, shared)
        }))?;
        slot.wait(what, self.timeout, &self.shared)
    }

    /// Drops `held` on a worker, without waiting: for what is released where nobody needs
    /// the outcome (a file closed at RELEASE). Behind stuck workers it waits in the queue,
    /// holding its resources, but never the caller.
    pub fn drop_later<T: Send + 'static>(&self, held: T) {
        // If the queue is closed the job (and `held`) is dropped right here.
        let _ = self.shared.push(Box::new(move |_: &Shared| drop(held)));
    }

    /// Waits until every job handed to the pool so far has finished (the queue is empty and
    /// no worker runs one), at most `limit`; whether they did.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut q = lock(&self.shared.queue);
        loop {
            if q.running == 0 && q.jobs.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            q = match self.shared.all_done.wait_timeout(q, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// How long callers wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Worker threads started.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Calls that timed out and have not come back (or been skipped) yet: non-zero while
    /// the cluster does not answer.
    pub fn late_calls(&self) -> usize {
        self.shared.late.load(Ordering::Acquire)
    }

    /// Calls that timed out since the pool started.
    pub fn timed_out_calls(&self) -> u64 {
        self.shared.timed_out.load(Ordering::Relaxed)
    }
}

impl Drop for DeadlinePool {
    /// Closes the queue without waiting: a worker stuck in libcephfs exits when its call
    /// returns (if ever), the others at once; the process may exit before either.
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.job_ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    use super::*;

    const SHORT: Duration = Duration::from_millis(200);

    fn errno(r: io::Result<impl Sized>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    /// Waits (bounded) until `cond` holds.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never: {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sets its flag when dropped: stands for a `CephInode`/`CephFile` in a late result.
    struct Released(Arc<AtomicBool>);

    impl Drop for Released {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn result_in_time_is_returned() {
        let pool = DeadlinePool::new("test-call", 2, Duration::from_secs(5)).expect("pool");
        assert_eq!(pool.workers(), 2);
        assert_eq!(pool.run("add", || Ok(40 + 2)).expect("in time"), 42);
        assert_eq!(
            errno(pool.run("fail", || -> io::Result<()> {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            })),
            Some(libc::ENOENT),
            "the call's own error comes through"
        );
        assert_eq!(pool.late_calls(), 0);
        assert_eq!(pool.timed_out_calls(), 0);
    }

    #[test]
    fn slow_call_times_out_and_its_late_result_is_dropped() {
        let pool = DeadlinePool::new("test-call", 1, SHORT).expect("pool");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let released = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&released);
        let t0 = Instant::now();
        let r = pool.run("stuck", move || {
            let _ = release_rx.recv();
            Ok(Released(flag))
        });
        let waited = t0.elapsed();
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        assert!(
            waited >= SHORT && waited < SHORT + Duration::from_secs(1),
            "waited {waited:?} for a {SHORT:?} timeout"
        );
        assert_eq!(pool.late_calls(), 1);
        assert_eq!(pool.timed_out_calls(), 1);
        assert!(
            !released.load(Ordering::SeqCst),
            "the call is still running"
        );
        // The cluster answers: the job finishes, nobody takes its result, it is released.
        release_tx.send(()).expect("job waits");
        eventually("late result dropped", || released.load(Ordering::SeqCst));
        eventually("late count back to 0", || pool.late_calls() == 0);
        // The worker is free again.
        assert_eq!(pool.run("after", || Ok(7)).expect("worker free"), 7);
    }

    #[test]
    fn jobs_queue_behind_busy_workers_and_abandoned_ones_never_run() {
        let pool = DeadlinePool::new("test-call", 1, SHORT).expect("pool");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let blocker = pool.run("blocker", move || {
            let _ = release_rx.recv();
            Ok(())
        });
        assert_eq!(errno(blocker), Some(libc::ETIMEDOUT));
        // The only worker is stuck: these wait in the queue and time out there.
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ran = Arc::clone(&ran);
            let t0 = Instant::now();
            let r = pool.run("queued", move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
            assert_eq!(errno(r), Some(libc::ETIMEDOUT));
            assert!(t0.elapsed() < SHORT + Duration::from_secs(1));
        }
        assert_eq!(pool.late_calls(), 4);
        assert_eq!(pool.workers(), 1, "no thread is added for the queue");
        release_tx.send(()).expect("blocker waits");
        eventually("queue drained", || pool.late_calls() == 0);
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "a call its caller gave up on before it started is never run"
        );
        assert_eq!(pool.run("after", || Ok(1)).expect("worker free"), 1);
    }

    #[test]
    fn queued_job_runs_when_a_worker_frees_in_time() {
        let pool = DeadlinePool::new("test-call", 1, Duration::from_secs(5)).expect("pool");
        let pool = Arc::new(pool);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                pool.run("busy", move || {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                    Ok("first")
                })
            })
        };
        started_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the only worker runs the first job");
        let second = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.run("second", || Ok("second")))
        };
        eventually("second job queued", || pool.shared.queued() == 1);
        release_tx.send(()).expect("busy waits");
        assert_eq!(busy.join().expect("thread").expect("in time"), "first");
        assert_eq!(second.join().expect("thread").expect("in time"), "second");
    }

    #[test]
    fn drop_later_does_not_wait_for_stuck_workers() {
        let pool = DeadlinePool::new("test-call", 1, SHORT).expect("pool");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let r = pool.run("stuck", move || {
            let _ = release_rx.recv();
            Ok(())
        });
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        let released = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        pool.drop_later(Released(Arc::clone(&released)));
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "drop_later waited"
        );
        assert!(
            !released.load(Ordering::SeqCst),
            "the only worker is stuck: the value waits in the queue"
        );
        release_tx.send(()).expect("job waits");
        eventually("value dropped by the freed worker", || {
            released.load(Ordering::SeqCst)
        });
        // Also after the pool is gone: the workers finish the queue before they exit.
        let released = Arc::new(AtomicBool::new(false));
        pool.drop_later(Released(Arc::clone(&released)));
        drop(pool);
        eventually("value dropped after the pool", || {
            released.load(Ordering::SeqCst)
        });
    }

    #[test]
    fn wait_idle_waits_for_queued_work_but_not_past_its_limit() {
        let pool = DeadlinePool::new("test-call", 2, SHORT).expect("pool");
        assert!(pool.wait_idle(Duration::ZERO), "a new pool is idle");
        let released = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&released);
        /// A close that takes a while.
        struct SlowRelease(Arc<AtomicBool>);
        impl Drop for SlowRelease {
            fn drop(&mut self) {
                thread::sleep(Duration::from_millis(100));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        // Handed over without waiting: wait_idle sees it through.
        pool.drop_later(SlowRelease(flag));
        assert!(pool.wait_idle(Duration::from_secs(5)));
        assert!(released.load(Ordering::SeqCst));
        // A stuck job: wait_idle gives up at its limit.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let r = pool.run("stuck", move || {
            let _ = release_rx.recv();
            Ok(())
        });
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        let t0 = Instant::now();
        assert!(!pool.wait_idle(SHORT));
        assert!(t0.elapsed() >= SHORT && t0.elapsed() < SHORT + Duration::from_secs(1));
        release_tx.send(()).expect("job waits");
        assert!(pool.wait_idle(Duration::from_secs(5)));
    }

    #[test]
    fn panicking_job_is_eio_and_keeps_the_worker() {
        let pool = DeadlinePool::new("test-call", 1, Duration::from_secs(5)).expect("pool");
        let r: io::Result<()> = pool.run("panics", || panic!("job panics on purpose"));
        assert_eq!(errno(r), Some(libc::EIO));
        assert_eq!(pool.run("after", || Ok(3)).expect("worker alive"), 3);
    }

    #[test]
    fn drop_with_a_stuck_job_returns_at_once() {
        let pool = DeadlinePool::new("test-call", 2, SHORT).expect("pool");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let released = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&released);
        let r = pool.run("stuck", move || {
            let _ = release_rx.recv();
            Ok(Released(flag))
        });
        assert_eq!(errno(r), Some(libc::ETIMEDOUT));
        let t0 = Instant::now();
        drop(pool);
        assert!(t0.elapsed() < Duration::from_millis(100), "drop waited");
        // The stuck job still finishes later and releases its result.
        release_tx.send(()).expect("job waits");
        eventually("late result dropped after the pool", || {
            released.load(Ordering::SeqCst)
        });
    }
}
