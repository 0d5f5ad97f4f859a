//! Request threads beside the queue threads: where a request goes when its queue thread hands
//! it over.
//!
//! Owns the worker threads, the jobs waiting for them and when a worker is started. Two uses
//! (`device.rs` decides which): `--thread-pool-size N` starts N workers at once and every
//! request goes through them; `--overlap-threads N` starts workers only when the guest has more
//! than one data request waiting at a time, so that a batch's reads and writes wait on the disk
//! together instead of one after the other, and the queue thread takes back (`take`) whatever
//! no worker has picked up yet. Dropping the pool ends its workers and waits for them (at most
//! [`EXIT_GRACE`]): whatever the serving function holds (the backend) is then released on the
//! dropping thread, before the process may exit (a CephFS client unmounts there). It must not
//! look inside a job: what a job is and how it is served is the caller's.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::warn;

/// How long dropping the pool waits for its workers to finish what they are serving.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("starting request worker thread {index}: {source}")]
    Spawn { index: usize, source: io::Error },
}

/// Worker threads serving jobs of type `J` with one shared function.
pub struct RequestPool<J: Send + 'static> {
    shared: Arc<Shared<J>>,
    max_workers: usize,
    /// A failed lazy start is reported once; later ones at debug level would hide nothing new.
    spawn_failed: AtomicBool,
    handed_over: AtomicU64,
    taken_back: AtomicU64,
    woken: AtomicU64,
    /// Every worker started, joined when the pool is dropped.
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// What a pool did, for the log at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTotals {
    /// Workers started.
    pub started: usize,
    /// Jobs submitted.
    pub handed_over: u64,
    /// Jobs the owner took back before a worker started them.
    pub taken_back: u64,
    /// Idle workers woken for a job.
    pub woken: u64,
}

struct Shared<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    /// Notified as each worker ends.
    gone: Condvar,
    serve: Box<dyn Fn(J) + Send + Sync>,
}

struct State<J> {
    jobs: VecDeque<J>,
    /// Workers started (running or starting).
    workers: usize,
    /// Workers waiting on `ready` that no `submit` has woken yet.
    idle: usize,
    /// Workers woken by `submit` that have not yet left `ready`'s wait. A job waits for one of
    /// these rather than waking another: a wake-up nobody needs is a system call on the queue
    /// thread and a sleep and wake-up on the worker's CPU.
    signalled: usize,
    closing: bool,
}

impl std::fmt::Display for PoolTotals {
    /// `started=N handed_over=N taken_back=N woken=N`, as the daemon logs it at exit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "started={} handed_over={} taken_back={} woken={}",
            self.started, self.handed_over, self.taken_back, self.woken
        )
    }
}

impl<J: Send + 'static> RequestPool<J> {
    /// A pool of at most `max_workers` threads, none started yet; `serve` runs every job.
    pub fn new(max_workers: usize, serve: impl Fn(J) + Send + Sync + 'static) -> Self {
        RequestPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    signalled: 0,
                    closing: false,
                }),
                ready: Condvar::new(),
                gone: Condvar::new(),
                serve: Box::new(serve),
            }),
            max_workers,
            spawn_failed: AtomicBool::new(false),
            handed_over: AtomicU64::new(0),
            taken_back: AtomicU64::new(0),
            woken: AtomicU64::new(0),
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Starts every worker now, so a pool that must exist fails at start-up, not later.
    pub fn start_all(&self) -> Result<(), PoolError> {
        loop {
            let index = {
                let mut state = self.shared.lock();
                if state.workers >= self.max_workers {
                    return Ok(());
                }
                state.workers += 1;
                state.workers - 1
            };
            if let Err(source) = self.spawn(index) {
                self.shared.lock().workers -= 1;
                return Err(PoolError::Spawn { index, source });
            }
        }
    }

    /// Queues `job`. An idle worker is woken for it unless enough are already on their way
    /// (one per queued job); with none idle, a worker is started while the pool is below its
    /// size. If a worker cannot be started the job stays queued for `take` or a running worker.
    pub fn submit(&self, job: J) {
        self.handed_over.fetch_add(1, Ordering::Relaxed);
        let action = {
            let mut state = self.shared.lock();
            state.jobs.push_back(job);
            state.next_helper(self.max_workers)
        };
        match action {
            Helper::None => {}
            Helper::Wake => self.wake(),
            Helper::Start(index) => {
                if let Err(e) = self.spawn(index) {
                    let wake = {
                        let mut state = self.shared.lock();
                        state.workers -= 1;
                        state.wake_idle()
                    };
                    if !self.spawn_failed.swap(true, Ordering::Relaxed) {
                        warn!("starting request worker {index}: {e}; its requests are served by the queue thread");
                    }
                    if wake {
                        self.wake();
                    }
                }
            }
        }
    }

    /// Wakes the worker `State::wake_idle` counted as woken.
    fn wake(&self) {
        self.woken.fetch_add(1, Ordering::Relaxed);
        self.shared.ready.notify_one();
    }

    /// Takes back the oldest job no worker has picked up yet.
    pub fn take(&self) -> Option<J> {
        let job = self.shared.lock().jobs.pop_front();
        if job.is_some() {
            self.taken_back.fetch_add(1, Ordering::Relaxed);
        }
        job
    }

    /// Counters since start.
    pub fn totals(&self) -> PoolTotals {
        PoolTotals {
            started: self.workers(),
            handed_over: self.handed_over.load(Ordering::Relaxed),
            taken_back: self.taken_back.load(Ordering::Relaxed),
            woken: self.woken.load(Ordering::Relaxed),
        }
    }

    /// Workers started so far.
    pub fn workers(&self) -> usize {
        self.shared.lock().workers
    }

    fn spawn(&self, index: usize) -> io::Result<()> {
        let shared = self.shared.clone();
        let handle = thread::Builder::new()
            .name(format!("vfs-worker-{index}"))
            .spawn(move || shared.work())?;
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Ok(())
    }
}

/// What a newly queued job needs (decided under the lock, done after it).
enum Helper {
    /// A worker already woken, or none to be had: the job waits for a running worker or `take`.
    None,
    /// Wake one idle worker.
    Wake,
    /// Start worker number N.
    Start(usize),
}

impl<J> State<J> {
    /// What the job just queued needs: nothing while the workers already woken outnumber the
    /// jobs waiting; else an idle worker, else a new one below `max_workers`.
    fn next_helper(&mut self, max_workers: usize) -> Helper {
        if self.jobs.len() <= self.signalled {
            Helper::None
        } else if self.wake_idle() {
            Helper::Wake
        } else if self.workers < max_workers {
            self.workers += 1;
            Helper::Start(self.workers - 1)
        } else {
            Helper::None
        }
    }

    /// Counts one idle worker as woken, if there is one; the caller then notifies `ready`.
    fn wake_idle(&mut self) -> bool {
        if self.idle == 0 {
            return false;
        }
        self.idle -= 1;
        self.signalled += 1;
        true
    }
}

impl<J> Shared<J> {
    /// The lock, even if a worker panicked while holding it: the queue of jobs is still
    /// consistent (every change to it is one push or pop), and the queue thread must not stop.
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker: serve jobs until the pool closes and nothing is left.
    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                (self.serve)(job);
                state = self.lock();
                continue;
            }
            if state.closing {
                state.workers -= 1;
                self.gone.notify_all();
                return;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            // Whoever leaves the wait takes one woken mark if there is one (a spurious
            // wake-up may take another's: the counts of waiting workers stay right), else
            // stops counting as idle.
            if state.signalled > 0 {
                state.signalled -= 1;
            } else {
                state.idle -= 1;
            }
        }
    }
}

impl<J: Send + 'static> Drop for RequestPool<J> {
    /// Workers serve what is queued, then stop; this waits for them (at most [`EXIT_GRACE`])
    /// and joins their threads, so that the serving function, and what it holds, goes with
    /// the pool on this thread. A worker still inside a request after that is left to finish
    /// on its own.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.ready.notify_all();
        let deadline = Instant::now() + EXIT_GRACE;
        while state.workers > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(
                    "{} request worker(s) still inside a request {}s after the pool closed; not waiting",
                    state.workers,
                    EXIT_GRACE.as_secs()
                );
                return;
            }
            state = self
                .shared
                .gone
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        let handles = std::mem::take(self.handles.get_mut().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            // Each has left its loop; it only drops its reference to the pool on the way out.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Barrier;
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn no_thread_is_started_before_a_job_needs_one() {
        let pool = RequestPool::new(4, |_: ()| {});
        assert_eq!(pool.workers(), 0);
    }

    #[test]
    fn start_all_starts_the_whole_pool_and_jobs_run() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool = RequestPool::new(3, move |n: u32| {
            tx.lock().unwrap().send(n).unwrap();
        });
        pool.start_all().unwrap();
        assert_eq!(pool.workers(), 3);
        for n in 0..10 {
            pool.submit(n);
        }
        let mut got: Vec<u32> = (0..10).map(|_| rx.recv_timeout(LONG).unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(pool.workers(), 3);
    }

    #[test]
    fn jobs_that_block_together_get_a_worker_each_up_to_the_size() {
        // Three jobs that can only finish together: they need three threads at once.
        let barrier = Arc::new(Barrier::new(3));
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let b = barrier.clone();
        let pool = RequestPool::new(3, move |n: u32| {
            b.wait();
            tx.lock().unwrap().send(n).unwrap();
        });
        for n in 0..3 {
            pool.submit(n);
        }
        for _ in 0..3 {
            rx.recv_timeout(LONG)
                .expect("the three jobs ran at the same time");
        }
        assert_eq!(pool.workers(), 3);
        // More jobs than the size: still at most three workers.
        for n in 0..6 {
            pool.submit(n);
        }
        for _ in 0..6 {
            rx.recv_timeout(LONG).unwrap();
        }
        assert_eq!(pool.workers(), 3);
    }

    #[test]
    fn a_job_no_worker_picked_up_can_be_taken_back() {
        // One worker, held inside a job: the next job waits in the queue.
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hold_rx = Mutex::new(hold_rx);
        let (started_tx, started_rx) = mpsc::channel();
        let started_tx = Mutex::new(started_tx);
        let pool = RequestPool::new(1, move |n: u32| {
            started_tx.lock().unwrap().send(n).unwrap();
            if n == 0 {
                hold_rx.lock().unwrap().recv_timeout(LONG).unwrap();
            }
        });
        pool.submit(0);
        assert_eq!(started_rx.recv_timeout(LONG).unwrap(), 0);
        pool.submit(1);
        assert_eq!(pool.take(), Some(1));
        assert_eq!(pool.take(), None);
        hold_tx.send(()).unwrap();
        assert_eq!(
            pool.totals(),
            PoolTotals {
                started: 1,
                handed_over: 2,
                taken_back: 1,
                woken: 0,
            }
        );
        assert_eq!(
            pool.totals().to_string(),
            "started=1 handed_over=2 taken_back=1 woken=0"
        );
    }

    /// What the serving function holds is released by the time the drop returns, not later
    /// on a worker thread (the daemon exits right after: a CephFS backend held there was
    /// never unmounted, and its MDS session outlived the process).
    #[test]
    fn dropping_the_pool_releases_the_serving_function_before_it_returns() {
        let held = Arc::new(());
        for _ in 0..20 {
            let in_serve = held.clone();
            let pool = RequestPool::new(2, move |_: u32| {
                let _ = &in_serve;
                thread::sleep(Duration::from_millis(1));
            });
            pool.submit(1);
            pool.submit(2);
            pool.submit(3);
            drop(pool);
            assert_eq!(
                Arc::strong_count(&held),
                1,
                "the serving function outlived the pool"
            );
        }
    }

    #[test]
    fn dropping_the_pool_serves_what_is_queued() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool = RequestPool::new(1, move |n: u32| {
            thread::sleep(Duration::from_millis(5));
            tx.lock().unwrap().send(n).unwrap();
        });
        for n in 0..5 {
            pool.submit(n);
        }
        drop(pool);
        let got: Vec<u32> = (0..5).map(|_| rx.recv_timeout(LONG).unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_pool_of_zero_never_starts_a_thread_and_keeps_jobs_for_take() {
        let pool = RequestPool::new(0, |_: u32| panic!("no worker may run"));
        pool.submit(7);
        assert_eq!(pool.workers(), 0);
        assert_eq!(pool.take(), Some(7));
    }

    fn state(jobs: usize, workers: usize, idle: usize, signalled: usize) -> State<u32> {
        State {
            jobs: (0..jobs as u32).collect(),
            workers,
            idle,
            signalled,
            closing: false,
        }
    }

    #[test]
    fn a_queued_job_wakes_an_idle_worker_only_when_none_woken_is_left_for_it() {
        // Two idle workers, one job: wake one.
        let mut s = state(1, 2, 2, 0);
        assert!(matches!(s.next_helper(4), Helper::Wake));
        assert_eq!((s.idle, s.signalled), (1, 1));
        // A second job while the first worker is still waking: wake the other.
        s.jobs.push_back(1);
        assert!(matches!(s.next_helper(4), Helper::Wake));
        assert_eq!((s.idle, s.signalled), (0, 2));
        // The owner took both back; a new job finds two workers on their way: no wake-up.
        s.jobs.clear();
        s.jobs.push_back(2);
        assert!(matches!(s.next_helper(4), Helper::None));
        // None idle, none woken: start one below the size, none at it.
        let mut s = state(1, 3, 0, 0);
        assert!(matches!(s.next_helper(4), Helper::Start(3)));
        assert_eq!(s.workers, 4);
        let mut s = state(1, 4, 0, 0);
        assert!(matches!(s.next_helper(4), Helper::None));
    }

    #[test]
    fn many_jobs_from_a_busy_owner_are_all_served_with_at_most_a_wake_up_each() {
        // Jobs come faster than four workers wake: every job runs, and the pool never wakes
        // more workers than jobs (before, every job notified the condition variable).
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool = RequestPool::new(4, move |n: u32| {
            if n % 7 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
            tx.lock().unwrap().send(n).unwrap();
        });
        pool.start_all().unwrap();
        let jobs = 2_000u32;
        let mut took = 0;
        for n in 0..jobs {
            pool.submit(n);
            if n % 16 == 15 {
                // As the queue thread does when its ring runs dry.
                while pool.take().is_some() {
                    took += 1;
                }
            }
        }
        let mut served: Vec<u32> = (0..jobs - took)
            .map(|_| rx.recv_timeout(LONG).unwrap())
            .collect();
        assert_eq!(served.len() as u32 + took, jobs);
        served.sort_unstable();
        served.dedup();
        assert_eq!(served.len() as u32 + took, jobs, "a job ran twice");
        let totals = pool.totals();
        assert_eq!(totals.taken_back, u64::from(took));
        assert!(
            totals.woken <= u64::from(jobs - took),
            "{totals}: more wake-ups than jobs served by workers"
        );
        // A job that wakes nobody (all four already woken or busy) must still be served:
        // the receive above would have timed out otherwise.
    }
}
