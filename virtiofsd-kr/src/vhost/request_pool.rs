//! Request threads beside the queue threads: where a request goes when its queue thread hands
//! it over.
//!
//! Owns the worker threads, the jobs waiting for them and when a worker is started. Two uses
//! (`device.rs` decides which): `--thread-pool-size N` starts N workers at once and every
//! request goes through them; `--overlap-threads N` starts workers only when the guest has more
//! than one data request waiting at a time, so that a batch's reads and writes wait on the disk
//! together instead of one after the other, and the queue thread takes back (`take`) whatever
//! no worker has picked up yet. It must not look inside a job: what a job is and how it is
//! served is the caller's.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use tracing::warn;

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
}

struct Shared<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    serve: Box<dyn Fn(J) + Send + Sync>,
}

struct State<J> {
    jobs: VecDeque<J>,
    /// Workers started (running or starting).
    workers: usize,
    /// Workers waiting on `ready`.
    idle: usize,
    closing: bool,
}

impl std::fmt::Display for PoolTotals {
    /// `started=N handed_over=N taken_back=N`, as the daemon logs it at exit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "started={} handed_over={} taken_back={}",
            self.started, self.handed_over, self.taken_back
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
                    closing: false,
                }),
                ready: Condvar::new(),
                serve: Box::new(serve),
            }),
            max_workers,
            spawn_failed: AtomicBool::new(false),
            handed_over: AtomicU64::new(0),
            taken_back: AtomicU64::new(0),
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

    /// Queues `job`. A worker is started for it when more jobs wait than workers are idle and
    /// the pool is below its size; otherwise an idle worker is woken. If a worker cannot be
    /// started the job stays queued for `take` or a running worker.
    pub fn submit(&self, job: J) {
        self.handed_over.fetch_add(1, Ordering::Relaxed);
        let start = {
            let mut state = self.shared.lock();
            state.jobs.push_back(job);
            if state.jobs.len() > state.idle && state.workers < self.max_workers {
                state.workers += 1;
                Some(state.workers - 1)
            } else {
                None
            }
        };
        match start {
            None => self.shared.ready.notify_one(),
            Some(index) => {
                if let Err(e) = self.spawn(index) {
                    self.shared.lock().workers -= 1;
                    if !self.spawn_failed.swap(true, Ordering::Relaxed) {
                        warn!("starting request worker {index}: {e}; its requests are served by the queue thread");
                    }
                    self.shared.ready.notify_one();
                }
            }
        }
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
        }
    }

    /// Workers started so far.
    pub fn workers(&self) -> usize {
        self.shared.lock().workers
    }

    fn spawn(&self, index: usize) -> io::Result<()> {
        let shared = self.shared.clone();
        thread::Builder::new()
            .name(format!("vfs-worker-{index}"))
            .spawn(move || shared.work())
            .map(drop)
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
                return;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            state.idle -= 1;
        }
    }
}

impl<J: Send + 'static> Drop for RequestPool<J> {
    /// Workers serve what is queued, then stop.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.ready.notify_all();
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
                taken_back: 1
            }
        );
        assert_eq!(
            pool.totals().to_string(),
            "started=1 handed_over=2 taken_back=1"
        );
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
}
