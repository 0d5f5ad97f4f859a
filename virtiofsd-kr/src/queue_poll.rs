//! Adaptive polling of a request queue before its thread goes to sleep.
//!
//! A guest that works file by file (create, stat, unlink) sends its next request a short
//! time after our reply. Sleeping in `epoll_wait` between them costs the guest's kick and our
//! thread's wake-up, which on a virtualised host are the larger part of a small request's
//! latency. So when the queue runs dry, its thread keeps watching the avail ring for a
//! window learned from the gaps it has seen, as QEMU's IOThreads do (`poll-max-ns`):
//! - a gap that fit in the window leaves it (slowly shrinking towards 1.5 × the gaps seen);
//! - a gap longer than the window but within the limit widens it to 1.5 × that gap;
//! - a gap beyond the limit halves it, so a guest that pauses longer (one slow random read
//!   at a time, or an idle guest) soon costs no polling at all.
//!
//! This module owns the window and the spin; it must not touch the ring itself (the caller
//! passes "is there more?") and never spins longer than `--poll-max-us`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Windows below this are not worth a spin: the window drops to zero instead.
const MIN_WINDOW_NS: u64 = 2_000;

/// The learned polling window of one queue. Each queue is served by exactly one thread, so
/// the atomics are only for sharing the device between threads, not for contention.
#[derive(Debug)]
pub struct QueuePoll {
    max_ns: u64,
    window_ns: AtomicU64,
    /// When the queue last ran dry with nothing seen in the window, as ns after `epoch`
    /// (0: not waiting, or already measured).
    dry_since_ns: AtomicU64,
    epoch: Instant,
    totals: PollTotals,
}

/// What polling did, for the log at exit: how often the queue ran dry with a window open,
/// how often the next request came within it, and the time spent spinning.
#[derive(Debug, Default)]
pub struct PollTotals {
    pub spins: AtomicU64,
    pub caught: AtomicU64,
    pub spun_ns: AtomicU64,
}

impl std::fmt::Display for PollTotals {
    /// `spins=N caught=N spun_ms=N`, as the daemon logs it at exit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "spins={} caught={} spun_ms={}",
            load(&self.spins),
            load(&self.caught),
            load(&self.spun_ns) / 1_000_000
        )
    }
}

impl QueuePoll {
    /// A poller that never spins longer than `max`; `Duration::ZERO` turns polling off.
    pub fn new(max: Duration) -> Self {
        QueuePoll {
            max_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            window_ns: AtomicU64::new(0),
            dry_since_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            totals: PollTotals::default(),
        }
    }

    /// Counters since start.
    pub fn totals(&self) -> &PollTotals {
        &self.totals
    }

    /// The current window (for tests and logs).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns.load(Ordering::Relaxed))
    }

    fn now_ns(&self) -> u64 {
        // Never 0, so 0 can mean "not waiting".
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Called when a kick woke the queue thread: the gap since the queue ran dry teaches the
    /// window.
    pub fn woke(&self) {
        let since = self.dry_since_ns.swap(0, Ordering::Relaxed);
        if since != 0 && self.max_ns != 0 {
            self.learn(self.now_ns().saturating_sub(since));
        }
    }

    /// Called when the queue ran dry. Spins for the current window, calling `more` until it
    /// says a request is waiting (returns true) or the window ends (returns false; the caller
    /// turns notifications back on and sleeps).
    pub fn spin(&self, mut more: impl FnMut() -> bool) -> bool {
        let window = self.window_ns.load(Ordering::Relaxed);
        let start = self.now_ns();
        if window != 0 {
            self.totals.spins.fetch_add(1, Ordering::Relaxed);
            loop {
                let spun = self.now_ns().saturating_sub(start);
                if more() {
                    self.totals.caught.fetch_add(1, Ordering::Relaxed);
                    self.totals.spun_ns.fetch_add(spun, Ordering::Relaxed);
                    self.learn(spun);
                    return true;
                }
                if spun >= window {
                    self.totals.spun_ns.fetch_add(spun, Ordering::Relaxed);
                    break;
                }
                // Let any thread waiting for this CPU (the VMM's vCPU or event loop, which
                // our reply just woke) run first: a spinning thread would otherwise keep it
                // waiting for up to a scheduler slice.
                std::thread::yield_now();
            }
        }
        if self.max_ns != 0 {
            self.dry_since_ns.store(start, Ordering::Relaxed);
        }
        false
    }

    /// Adjusts the window to a gap (time from running dry to the next request).
    fn learn(&self, gap_ns: u64) {
        let window = self.window_ns.load(Ordering::Relaxed);
        let wider = gap_ns.saturating_add(gap_ns / 2);
        let next = if gap_ns > self.max_ns {
            window / 2
        } else if gap_ns > window {
            wider.min(self.max_ns)
        } else {
            // Caught: drift down towards 1.5 × the gaps seen, so misses cost less.
            (window - window / 8).max(wider).min(self.max_ns)
        };
        let next = if next < MIN_WINDOW_NS { 0 } else { next };
        self.window_ns.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn poll(max_us: u64) -> QueuePoll {
        QueuePoll::new(Duration::from_micros(max_us))
    }

    #[test]
    fn starts_without_polling_and_does_not_call_more() {
        let p = poll(200);
        let mut calls = 0;
        assert!(!p.spin(|| {
            calls += 1;
            true
        }));
        assert_eq!(calls, 0);
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn a_gap_within_the_limit_widens_the_window_to_one_and_a_half_times_it() {
        let p = poll(200);
        p.learn(40 * US);
        assert_eq!(p.window(), Duration::from_micros(60));
        // A longer gap, still within the limit, widens it again, capped at the limit.
        p.learn(150 * US);
        assert_eq!(p.window(), Duration::from_micros(200));
    }

    #[test]
    fn gaps_beyond_the_limit_halve_the_window_down_to_off() {
        let p = poll(200);
        p.learn(100 * US);
        assert_eq!(p.window(), Duration::from_micros(150));
        let mut seen = vec![];
        for _ in 0..10 {
            p.learn(500 * US);
            seen.push(p.window().as_micros());
        }
        assert_eq!(&seen[..3], &[75, 37, 18]);
        assert_eq!(*seen.last().unwrap(), 0, "{seen:?}");
    }

    #[test]
    fn caught_gaps_let_the_window_drift_down_but_not_below_one_and_a_half_gaps() {
        let p = poll(200);
        p.learn(130 * US);
        assert_eq!(p.window(), Duration::from_micros(195));
        for _ in 0..50 {
            p.learn(10 * US);
        }
        assert_eq!(p.window(), Duration::from_micros(15));
    }

    #[test]
    fn zero_limit_never_polls_or_learns() {
        let p = poll(0);
        p.learn(1);
        assert_eq!(p.window(), Duration::ZERO);
        assert!(!p.spin(|| true));
        p.woke();
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn spin_returns_as_soon_as_more_work_appears() {
        let p = poll(10_000);
        p.learn(5_000 * US); // window 7.5 ms
        let mut calls = 0;
        assert!(p.spin(|| {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        assert_eq!(p.totals().spins.load(Ordering::Relaxed), 1);
        assert_eq!(p.totals().caught.load(Ordering::Relaxed), 1);
        assert!(p
            .totals()
            .to_string()
            .starts_with("spins=1 caught=1 spun_ms="));
    }

    #[test]
    fn a_spin_that_sees_nothing_ends_and_the_wake_up_teaches_the_gap() {
        let p = poll(200);
        p.learn(20 * US); // window 30 µs
        let before = Instant::now();
        assert!(!p.spin(|| false));
        assert!(before.elapsed() >= Duration::from_micros(30));
        assert_eq!(p.totals().caught.load(Ordering::Relaxed), 0);
        assert!(p.totals().spun_ns.load(Ordering::Relaxed) >= 30 * US);
        // The kick comes 1 ms after the queue ran dry: beyond the limit, so the window halves.
        std::thread::sleep(Duration::from_millis(1));
        p.woke();
        assert_eq!(p.window(), Duration::from_micros(15));
        // A second wake-up without a dry spell in between teaches nothing.
        p.woke();
        assert_eq!(p.window(), Duration::from_micros(15));
    }
}
