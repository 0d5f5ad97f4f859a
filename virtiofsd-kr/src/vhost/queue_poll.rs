//! Polling a request queue before its thread goes to sleep, only where it pays.
//!
//! A guest that works file by file (create, stat, unlink) sends its next request a short
//! time after our reply. Sleeping in `epoll_wait` between them costs the guest a kick and our
//! thread a wake-up: [`WAKE_SAVING`] of latency per request. Watching the avail ring instead
//! for a while after the queue runs dry saves that latency when the next request comes
//! within the window, and costs a CPU for as long as the window runs. So:
//!
//! - **Only when it saves more than it costs.** Each queue keeps a decaying histogram of the
//!   gaps it has seen (from running dry to the next request; a gap that ended in a wake-up
//!   is counted without the wake-up). Its window is the one that maximises
//!   `P(gap <= window) * WAKE_SAVING - E[min(gap, window)]`: the guest time expected to be
//!   saved per dry spell less the CPU time expected to be spent spinning. When no window
//!   gains, the window is 0 and the queue sleeps at once, as without polling. Guests whose
//!   requests come more than a few tens of microseconds apart (one that waits on a disk, say)
//!   are therefore not polled at all. Polling is off unless `--poll-max-us` is given: in TCG
//!   guests on a shared machine it cost more CPU than it saved (docs/benchmarks.md).
//! - **A budget per daemon, not per queue.** At most one queue thread of a daemon spins at a
//!   time, and all of them together spin at most [`BUDGET_SHARE`] of one CPU over time (a
//!   token bucket holding at most [`BUDGET_BURST`]). With several request queues the worst
//!   case stays a fraction of one CPU, not one CPU per queue.
//! - **Backing off under CPU pressure.** Every turn of the spin yields the CPU; a yield that
//!   takes longer than [`PRESSURE_YIELD`] means another thread was waiting for this CPU (the
//!   VMM, other daemons on few cores). The spin ends and the whole daemon stops polling for
//!   a back-off that doubles while pressure persists (up to [`MAX_BACKOFF`]).
//! - **Never while the guest is idle.** A spin only follows requests just served, and a gap
//!   longer than `--poll-max-us` teaches the histogram that waiting does not pay.
//!
//! This module owns the windows, the budget and the spin; it must not touch the ring itself
//! (the caller passes "is there more?") and never spins longer than `--poll-max-us`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Guest latency a caught request saves: the guest's kick (a VM exit and an eventfd write by
/// the VMM) and our thread's wake-up from `epoll_wait`. Measured on this project's machine
/// (nested virtualisation): polling took ~40 µs off a guest `stat` (docs/benchmarks.md).
pub const WAKE_SAVING: Duration = Duration::from_micros(40);
/// Share of one CPU a daemon's queues may spend spinning, over time.
pub const BUDGET_SHARE: f64 = 0.25;
/// Spin time the budget can hold (what a burst of short gaps may use at once).
pub const BUDGET_BURST: Duration = Duration::from_millis(20);
/// A yield slower than this ran another thread: the CPU is wanted.
pub const PRESSURE_YIELD: Duration = Duration::from_micros(50);
/// First and longest daemon-wide pause of polling after pressure was seen.
pub const MIN_BACKOFF: Duration = Duration::from_millis(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Upper bounds of the gap histogram's buckets, ns; the last bucket holds longer gaps.
const BUCKET_EDGES_NS: [u64; 17] = [
    1_000, 2_000, 4_000, 8_000, 12_000, 16_000, 24_000, 32_000, 48_000, 64_000, 128_000, 256_000,
    512_000, 1_024_000, 2_048_000, 4_096_000, 8_192_000,
];
const BUCKETS: usize = BUCKET_EDGES_NS.len() + 1;
/// Each new gap weighs this much against all before it (about the last 32 gaps count).
const DECAY: f64 = 1.0 / 32.0;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Process-wide clock in ns since the first use, never 0 (0 means "not set").
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    nanos(EPOCH.get_or_init(Instant::now).elapsed()).max(1)
}

/// What every queue of one daemon shares: the spinner slot, the spin-time budget and the
/// pressure back-off.
#[derive(Debug)]
pub struct SpinBudget {
    share: f64,
    burst_ns: u64,
    /// A yield longer than this is CPU pressure.
    pressure_ns: u64,
    /// Held by the queue thread that spins.
    spinner: AtomicBool,
    /// Spin time available, ns; and when it was last topped up. Only changed by the holder
    /// of `spinner`.
    tokens_ns: AtomicU64,
    refilled_ns: AtomicU64,
    /// No polling before this time (ns); the current back-off length.
    backoff_until_ns: AtomicU64,
    backoff_ns: AtomicU64,
    totals: BudgetTotals,
}

/// What the budget refused, for the log at exit.
#[derive(Debug, Default)]
pub struct BudgetTotals {
    /// Spins not started: another queue was spinning, the budget was spent, or back-off.
    pub denied: AtomicU64,
    /// Spins ended because another thread wanted the CPU.
    pub pressure: AtomicU64,
}

impl SpinBudget {
    /// A budget of `share` of one CPU, holding at most `burst` (full at start).
    pub fn new(share: f64, burst: Duration) -> Self {
        SpinBudget {
            share: share.clamp(0.0, 1.0),
            burst_ns: nanos(burst),
            pressure_ns: nanos(PRESSURE_YIELD),
            spinner: AtomicBool::new(false),
            tokens_ns: AtomicU64::new(nanos(burst)),
            refilled_ns: AtomicU64::new(0),
            backoff_until_ns: AtomicU64::new(0),
            backoff_ns: AtomicU64::new(0),
            totals: BudgetTotals::default(),
        }
    }

    /// The daemon's budget: one per process, shared by every queue poller made with
    /// [`QueuePoll::new`].
    pub fn daemon() -> Arc<SpinBudget> {
        static DAEMON: OnceLock<Arc<SpinBudget>> = OnceLock::new();
        Arc::clone(DAEMON.get_or_init(|| Arc::new(SpinBudget::new(BUDGET_SHARE, BUDGET_BURST))))
    }

    /// The same budget, taking a yield longer than `threshold` for CPU pressure.
    pub fn with_pressure_threshold(mut self, threshold: Duration) -> Self {
        self.pressure_ns = nanos(threshold);
        self
    }

    pub fn totals(&self) -> &BudgetTotals {
        &self.totals
    }

    /// Takes the spinner slot and returns the spin time allowed now (at most `want`), or
    /// `None` (slot taken, back-off, or no budget; counted as denied).
    fn acquire(&self, want: u64, now: u64) -> Option<u64> {
        if now < self.backoff_until_ns.load(Ordering::Relaxed)
            || self
                .spinner
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            self.totals.denied.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let last = self.refilled_ns.swap(now, Ordering::Relaxed);
        let earned = (now.saturating_sub(last) as f64 * self.share) as u64;
        let tokens = self
            .tokens_ns
            .load(Ordering::Relaxed)
            .saturating_add(earned)
            .min(self.burst_ns);
        self.tokens_ns.store(tokens, Ordering::Relaxed);
        if tokens < want.min(MIN_SPIN_NS) {
            self.spinner.store(false, Ordering::Release);
            self.totals.denied.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(want.min(tokens))
    }

    /// Gives the slot back after spinning `spun` ns; `pressure` starts or lengthens the
    /// back-off, a spin without it shortens it.
    fn release(&self, spun: u64, pressure: bool, now: u64) {
        let tokens = self.tokens_ns.load(Ordering::Relaxed);
        self.tokens_ns
            .store(tokens.saturating_sub(spun), Ordering::Relaxed);
        let backoff = self.backoff_ns.load(Ordering::Relaxed);
        if pressure {
            self.totals.pressure.fetch_add(1, Ordering::Relaxed);
            let next = (backoff * 2).clamp(nanos(MIN_BACKOFF), nanos(MAX_BACKOFF));
            self.backoff_ns.store(next, Ordering::Relaxed);
            self.backoff_until_ns
                .store(now.saturating_add(next), Ordering::Relaxed);
        } else if backoff != 0 {
            self.backoff_ns.store(backoff / 2, Ordering::Relaxed);
        }
        self.spinner.store(false, Ordering::Release);
    }
}

/// The shortest spin worth starting.
const MIN_SPIN_NS: u64 = 1_000;

/// Decaying histogram of gaps: weight and summed gap (ns) per bucket.
#[derive(Debug, Clone)]
struct Gaps {
    weight: [f64; BUCKETS],
    sum_ns: [f64; BUCKETS],
}

impl Gaps {
    fn new() -> Self {
        Gaps {
            weight: [0.0; BUCKETS],
            sum_ns: [0.0; BUCKETS],
        }
    }

    fn observe(&mut self, gap_ns: u64) {
        for i in 0..BUCKETS {
            self.weight[i] *= 1.0 - DECAY;
            self.sum_ns[i] *= 1.0 - DECAY;
        }
        let b = BUCKET_EDGES_NS
            .iter()
            .position(|e| gap_ns <= *e)
            .unwrap_or(BUCKETS - 1);
        self.weight[b] += 1.0;
        self.sum_ns[b] += gap_ns as f64;
    }

    /// The window (a bucket edge up to `max_ns`) with the largest expected gain per dry
    /// spell, `P(gap <= w) * saving - E[min(gap, w)]`; 0 when none gains.
    fn best_window(&self, saving_ns: u64, max_ns: u64) -> u64 {
        let total: f64 = self.weight.iter().sum();
        if total <= 0.0 {
            return 0;
        }
        let (mut best, mut best_gain) = (0, 0.0);
        let (mut caught_w, mut caught_sum) = (0.0, 0.0);
        for (i, edge) in BUCKET_EDGES_NS.iter().enumerate() {
            if *edge > max_ns {
                break;
            }
            caught_w += self.weight[i];
            caught_sum += self.sum_ns[i];
            let p = caught_w / total;
            let cost = (caught_sum + (total - caught_w) * *edge as f64) / total;
            let gain = p * saving_ns as f64 - cost;
            if gain > best_gain {
                (best, best_gain) = (*edge, gain);
            }
        }
        best
    }
}

/// The polling window of one queue. Each queue is served by exactly one thread, so the lock
/// and atomics are only for sharing the device between threads, not for contention.
#[derive(Debug)]
pub struct QueuePoll {
    max_ns: u64,
    saving_ns: u64,
    window_ns: AtomicU64,
    gaps: Mutex<Gaps>,
    /// When the queue last ran dry with nothing caught (ns of [`now_ns`]; 0: not waiting).
    dry_since_ns: AtomicU64,
    budget: Arc<SpinBudget>,
    totals: PollTotals,
}

/// What polling did, for the log at exit: how often the queue ran dry with a window open,
/// how often the next request came within it, the time spent spinning, and how often the
/// daemon's budget refused a spin.
#[derive(Debug, Default)]
pub struct PollTotals {
    pub spins: AtomicU64,
    pub caught: AtomicU64,
    pub spun_ns: AtomicU64,
    pub denied: AtomicU64,
    /// Spins this queue ended because another thread wanted the CPU.
    pub pressure: AtomicU64,
}

impl std::fmt::Display for PollTotals {
    /// `spins=N caught=N spun_ms=N denied=N pressure=N`, as the daemon logs it at exit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "spins={} caught={} spun_ms={} denied={} pressure={}",
            load(&self.spins),
            load(&self.caught),
            load(&self.spun_ns) / 1_000_000,
            load(&self.denied),
            load(&self.pressure)
        )
    }
}

impl QueuePoll {
    /// A poller that never spins longer than `max` and shares the daemon's budget;
    /// `Duration::ZERO` turns polling off.
    pub fn new(max: Duration) -> Self {
        Self::with_budget(max, WAKE_SAVING, SpinBudget::daemon())
    }

    /// A poller with its own saving estimate and budget.
    pub fn with_budget(max: Duration, saving: Duration, budget: Arc<SpinBudget>) -> Self {
        QueuePoll {
            max_ns: nanos(max),
            saving_ns: nanos(saving),
            window_ns: AtomicU64::new(0),
            gaps: Mutex::new(Gaps::new()),
            dry_since_ns: AtomicU64::new(0),
            budget,
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

    /// Called when a kick woke the queue thread: the gap since the queue ran dry, less the
    /// wake-up that polling would have saved, teaches the window.
    pub fn woke(&self) {
        let since = self.dry_since_ns.swap(0, Ordering::Relaxed);
        if since != 0 && self.max_ns != 0 {
            let gap = now_ns().saturating_sub(since);
            self.learn(gap.saturating_sub(self.saving_ns));
        }
    }

    /// Called when the queue ran dry. Spins for the current window (if the daemon's budget
    /// allows), calling `more` until it says a request is waiting (returns true) or the
    /// window ends (returns false; the caller turns notifications back on and sleeps).
    pub fn spin(&self, mut more: impl FnMut() -> bool) -> bool {
        if self.max_ns == 0 {
            return false;
        }
        let window = self.window_ns.load(Ordering::Relaxed);
        let start = now_ns();
        let allowed = if window == 0 {
            None
        } else {
            let a = self.budget.acquire(window, start);
            if a.is_none() {
                self.totals.denied.fetch_add(1, Ordering::Relaxed);
            }
            a
        };
        if let Some(allowed) = allowed {
            self.totals.spins.fetch_add(1, Ordering::Relaxed);
            let mut pressure = false;
            loop {
                let spun = now_ns().saturating_sub(start);
                if more() {
                    self.totals.caught.fetch_add(1, Ordering::Relaxed);
                    self.totals.spun_ns.fetch_add(spun, Ordering::Relaxed);
                    self.budget.release(spun, false, start + spun);
                    self.learn(spun);
                    return true;
                }
                if spun >= allowed || pressure {
                    self.totals.spun_ns.fetch_add(spun, Ordering::Relaxed);
                    if pressure {
                        self.totals.pressure.fetch_add(1, Ordering::Relaxed);
                    }
                    self.budget.release(spun, pressure, start + spun);
                    break;
                }
                // Let any thread waiting for this CPU (the VMM's vCPU or event loop, which
                // our reply just woke) run first; if one did, the CPU is wanted: stop.
                let before = now_ns();
                std::thread::yield_now();
                pressure = now_ns().saturating_sub(before) > self.budget.pressure_ns;
            }
        }
        self.dry_since_ns.store(start, Ordering::Relaxed);
        false
    }

    /// Adds a gap (time from running dry to the next request) and re-chooses the window.
    fn learn(&self, gap_ns: u64) {
        let Ok(mut gaps) = self.gaps.lock() else {
            return;
        };
        gaps.observe(gap_ns.min(self.max_ns.saturating_add(1)));
        let w = gaps.best_window(self.saving_ns, self.max_ns);
        self.window_ns.store(w, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// A budget that never runs out and sees no pressure (this machine is shared: a yield
    /// may take long in any test); the budget and pressure have tests of their own.
    fn unlimited() -> Arc<SpinBudget> {
        Arc::new(
            SpinBudget::new(1.0, Duration::from_secs(1))
                .with_pressure_threshold(Duration::from_secs(10)),
        )
    }

    fn poll(max_us: u64) -> QueuePoll {
        QueuePoll::with_budget(Duration::from_micros(max_us), WAKE_SAVING, unlimited())
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
    fn short_gaps_open_a_window_that_covers_them() {
        let p = poll(200);
        for _ in 0..20 {
            p.learn(6 * US);
        }
        // The smallest bucket edge that catches 6 µs gaps: 8 µs.
        assert_eq!(p.window(), Duration::from_micros(8));
    }

    #[test]
    fn gaps_longer_than_the_saving_are_not_worth_a_spin() {
        // A TCG guest: ~100 µs between a reply and the next request. Spinning 100 µs to save
        // 40 µs loses, so the queue sleeps, although the gaps are within --poll-max-us.
        let p = poll(200);
        for _ in 0..50 {
            p.learn(100 * US);
        }
        assert_eq!(p.window(), Duration::ZERO);
        // Gaps just under the saving are worth it.
        let p = poll(200);
        for _ in 0..50 {
            p.learn(20 * US);
        }
        assert_eq!(p.window(), Duration::from_micros(24));
    }

    #[test]
    fn a_mix_is_polled_for_the_short_gaps_only() {
        // Half the gaps 5 µs, half 1 ms: spinning 8 µs catches half at a cost of ~6.5 µs
        // per dry spell and saves 20 µs; waiting any longer only costs.
        let p = poll(2_000);
        for _ in 0..40 {
            p.learn(5 * US);
            p.learn(1_000 * US);
        }
        assert_eq!(p.window(), Duration::from_micros(8));
    }

    #[test]
    fn the_window_never_exceeds_the_limit() {
        let p = QueuePoll::with_budget(
            Duration::from_micros(10),
            Duration::from_micros(1_000),
            unlimited(),
        );
        for _ in 0..50 {
            p.learn(30 * US);
        }
        assert!(p.window() <= Duration::from_micros(10), "{:?}", p.window());
    }

    #[test]
    fn an_idle_guest_closes_the_window() {
        let p = poll(200);
        for _ in 0..20 {
            p.learn(6 * US);
        }
        assert!(p.window() > Duration::ZERO);
        // Long pauses (idle, or a slow disk) outweigh the short gaps as they decay away.
        for _ in 0..100 {
            p.learn(50_000 * US);
        }
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn zero_limit_never_polls_or_learns() {
        let p = poll(0);
        p.learn(1);
        assert!(!p.spin(|| true));
        p.woke();
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn spin_returns_as_soon_as_more_work_appears() {
        // A long window (gaps of 5 ms, worth a second each), so a descheduled test thread
        // does not see it end.
        let p = QueuePoll::with_budget(
            Duration::from_millis(10),
            Duration::from_secs(1),
            unlimited(),
        );
        for _ in 0..20 {
            p.learn(5_000 * US);
        }
        assert_eq!(p.window(), Duration::from_micros(8_192));
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
        for _ in 0..20 {
            p.learn(20 * US);
        }
        assert_eq!(p.window(), Duration::from_micros(24));
        let before = Instant::now();
        assert!(!p.spin(|| false));
        assert!(before.elapsed() >= Duration::from_micros(24));
        assert_eq!(p.totals().caught.load(Ordering::Relaxed), 0);
        // The kick comes 2 ms after the queue ran dry; many such gaps close the window.
        std::thread::sleep(Duration::from_millis(3)); // the clock is at least 2 ms old
        for _ in 0..60 {
            p.dry_since_ns
                .store(now_ns().saturating_sub(2_000 * US), Ordering::Relaxed);
            p.woke();
        }
        assert_eq!(p.window(), Duration::ZERO);
        // A second wake-up without a dry spell in between teaches nothing.
        let g = p.gaps.lock().unwrap().weight;
        p.woke();
        assert_eq!(p.gaps.lock().unwrap().weight, g);
    }

    #[test]
    fn one_queue_of_a_daemon_spins_at_a_time() {
        let budget = Arc::new(SpinBudget::new(1.0, Duration::from_secs(1)));
        let now = now_ns();
        assert_eq!(budget.acquire(10 * US, now), Some(10 * US));
        // A second queue of the same daemon is refused while the first spins.
        assert_eq!(budget.acquire(10 * US, now), None);
        budget.release(5 * US, false, now);
        assert!(budget.acquire(10 * US, now).is_some());
        budget.release(0, false, now);
        assert_eq!(budget.totals().denied.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_budget_runs_out_and_refills_at_its_share() {
        // 10 % of a CPU, holding 100 µs.
        let budget = SpinBudget::new(0.1, Duration::from_micros(100));
        let t = now_ns();
        budget.refilled_ns.store(t, Ordering::Relaxed);
        assert_eq!(budget.acquire(80 * US, t), Some(80 * US));
        budget.release(80 * US, false, t);
        // 20 µs left: a 50 µs window gets 20.
        assert_eq!(budget.acquire(50 * US, t), Some(20 * US));
        budget.release(20 * US, false, t);
        assert_eq!(budget.acquire(50 * US, t), None, "spent");
        // 300 µs later 10 % of it, 30 µs, is back.
        assert_eq!(budget.acquire(50 * US, t + 300 * US), Some(30 * US));
        budget.release(0, false, t + 300 * US);
        // Never more than the burst.
        assert_eq!(budget.acquire(500 * US, t + 1_000_000 * US), Some(100 * US));
    }

    #[test]
    fn pressure_stops_every_queue_of_the_daemon_for_a_growing_back_off() {
        let budget = SpinBudget::new(1.0, Duration::from_secs(1));
        let t = now_ns();
        assert!(budget.acquire(10 * US, t).is_some());
        budget.release(3 * US, true, t);
        let first = nanos(MIN_BACKOFF);
        assert_eq!(budget.acquire(10 * US, t + first - 1), None);
        assert!(budget.acquire(10 * US, t + first).is_some());
        budget.release(3 * US, true, t + first);
        // Pressure again: twice as long.
        assert_eq!(budget.acquire(10 * US, t + first + 2 * first - 1), None);
        assert!(budget.acquire(10 * US, t + 3 * first).is_some());
        // A quiet spin halves it again.
        budget.release(US, false, t + 3 * first);
        assert_eq!(budget.backoff_ns.load(Ordering::Relaxed), first);
        assert_eq!(budget.totals().pressure.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn spinning_on_a_busy_cpu_backs_off() {
        // A thread that keeps this test's CPU busy: our yields hand it the CPU, and the slow
        // yield ends the spin. Pinned to one CPU so the two share it.
        // SAFETY: sched_setaffinity on the calling thread with a cpu_set_t on the stack.
        let pin = || unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        if !pin() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let hog = std::thread::spawn(move || {
            pin();
            let mut x = 0u64;
            while !s.load(Ordering::Relaxed) {
                x = x.wrapping_add(1);
            }
            x
        });
        std::thread::sleep(Duration::from_millis(20));
        let budget = Arc::new(SpinBudget::new(1.0, Duration::from_secs(1)));
        let p = QueuePoll::with_budget(
            Duration::from_millis(10),
            Duration::from_millis(100),
            Arc::clone(&budget),
        );
        for _ in 0..20 {
            p.learn(200 * US);
        }
        assert_eq!(p.window(), Duration::from_micros(256));
        assert!(!p.spin(|| false));
        // The next dry spell, right after, does not spin at all (the daemon backs off).
        let mut calls = 0;
        assert!(!p.spin(|| {
            calls += 1;
            true
        }));
        stop.store(true, Ordering::Relaxed);
        let _ = hog.join();
        assert_eq!(budget.totals().pressure.load(Ordering::Relaxed), 1);
        assert_eq!(calls, 0);
        assert_eq!(p.totals().denied.load(Ordering::Relaxed), 1);
        assert_eq!(p.totals().pressure.load(Ordering::Relaxed), 1);
    }
}
