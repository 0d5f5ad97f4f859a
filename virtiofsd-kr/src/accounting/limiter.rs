//! Rate limits: two token buckets (bytes/s and ops/s), each with a burst, in a debt model.
//!
//! A request is served when no bucket is in debt, and charged afterwards with what it really
//! moved (so a bucket may go below zero). Before the queue takes the next descriptor chain,
//! [`RateLimiter::wait`] sleeps until every bucket has refilled to zero: the guest sees
//! backpressure (its requests wait in the virtqueue), never an error, and nothing spins.
//! Limits change at run time ([`RateLimiter::set_limits`]); unlimited costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The longest single sleep: limits changed at run time take effect within this.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Rate limits; 0 means unlimited. A burst of 0 means the default (a tenth of a second of the
/// rate, at least one 1 MiB request for bytes and one request for ops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub bytes_per_sec: u64,
    pub bytes_burst: u64,
    pub ops_per_sec: u64,
    pub ops_burst: u64,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec == 0 && self.ops_per_sec == 0
    }

    /// The burst actually used for bytes.
    pub fn effective_bytes_burst(&self) -> u64 {
        match self.bytes_burst {
            0 => (self.bytes_per_sec / 10).max(1 << 20),
            b => b,
        }
    }

    /// The burst actually used for ops.
    pub fn effective_ops_burst(&self) -> u64 {
        match self.ops_burst {
            0 => (self.ops_per_sec / 10).max(1),
            b => b,
        }
    }

    /// Parses the admin form: `bytes=20MiB ops=500 bytes-burst=4M ops-burst=50`, separated by
    /// spaces, newlines, commas or `&`; `0` or `off` is unlimited. Keys not given keep the
    /// values of `self`.
    pub fn updated(&self, text: &str) -> Result<Limits, String> {
        let mut out = *self;
        for pair in text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected key=value"))?;
            let number = |v: &str, size: bool| -> Result<u64, String> {
                if v.eq_ignore_ascii_case("off") {
                    return Ok(0);
                }
                if size {
                    crate::size::parse_size(v).map_err(|e| e.to_string())
                } else {
                    v.parse::<u64>()
                        .map_err(|_| format!("{v:?} is not a count"))
                }
            };
            match key {
                "bytes" | "bytes_per_sec" => out.bytes_per_sec = number(value, true)?,
                "bytes-burst" | "bytes_burst" => out.bytes_burst = number(value, true)?,
                "ops" | "ops_per_sec" => out.ops_per_sec = number(value, false)?,
                "ops-burst" | "ops_burst" => out.ops_burst = number(value, false)?,
                other => return Err(format!("unknown limit {other:?}")),
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bytes={} bytes-burst={} ops={} ops-burst={}",
            self.bytes_per_sec,
            self.effective_bytes_burst(),
            self.ops_per_sec,
            self.effective_ops_burst()
        )
    }
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Self {
        Bucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
        }
    }

    fn refill(&mut self, elapsed: f64) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
    }

    /// Seconds until the bucket is out of debt (0 when it is not in debt or unlimited).
    fn deficit_secs(&self) -> f64 {
        if self.rate > 0.0 && self.tokens < 0.0 {
            -self.tokens / self.rate
        } else {
            0.0
        }
    }
}

#[derive(Debug)]
struct State {
    limits: Limits,
    bytes: Bucket,
    ops: Bucket,
    last: Instant,
}

impl State {
    fn new(limits: Limits) -> Self {
        State {
            limits,
            bytes: Bucket::new(limits.bytes_per_sec, limits.effective_bytes_burst()),
            ops: Bucket::new(limits.ops_per_sec, limits.effective_ops_burst()),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.bytes.refill(elapsed);
        self.ops.refill(elapsed);
    }
}

/// The token buckets of one daemon.
#[derive(Debug)]
pub struct RateLimiter {
    active: AtomicBool,
    released: AtomicBool,
    state: Mutex<State>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        RateLimiter {
            active: AtomicBool::new(!limits.is_unlimited()),
            released: AtomicBool::new(false),
            state: Mutex::new(State::new(limits)),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.state
            .lock()
            .map(|s| s.limits)
            .unwrap_or_else(|p| p.into_inner().limits)
    }

    /// Replaces the limits; the buckets start full at the new burst.
    pub fn set_limits(&self, limits: Limits) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = State::new(limits);
        self.active.store(!limits.is_unlimited(), Ordering::Release);
    }

    /// Whether any limit is set (one atomic load).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Charges a served request that moved `bytes` data bytes.
    pub fn charge(&self, bytes: u64) {
        if !self.is_active() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.refill(Instant::now());
        state.bytes.tokens -= bytes as f64;
        state.ops.tokens -= 1.0;
    }

    /// How long until no bucket is in debt, at `now`.
    fn delay_at(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.refill(now);
        let secs = state.bytes.deficit_secs().max(state.ops.deficit_secs());
        Duration::from_secs_f64(secs.min(3600.0))
    }

    /// Ends every present and future wait at once (shutdown: the queue thread must not sit
    /// out a debt while the daemon stops).
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Sleeps (never spins) until the next request may be taken; returns the time waited.
    pub fn wait(&self) -> Duration {
        let mut start = None;
        while self.is_active() && !self.released.load(Ordering::Acquire) {
            let now = Instant::now();
            let delay = self.delay_at(now);
            if delay.is_zero() {
                break;
            }
            start.get_or_insert(now);
            std::thread::sleep(delay.min(MAX_SLEEP));
        }
        start.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::new(Limits::default());
        for _ in 0..1000 {
            l.charge(1 << 30);
        }
        assert!(l.wait() < Duration::from_millis(5));
    }

    #[test]
    fn debt_turns_into_the_right_delay() {
        let l = RateLimiter::new(Limits {
            bytes_per_sec: 10 * MIB,
            bytes_burst: MIB,
            ..Limits::default()
        });
        // Burst of 1 MiB, then 6 MiB charged: 5 MiB of debt at 10 MiB/s is half a second.
        l.charge(6 * MIB);
        let d = l.delay_at(Instant::now());
        assert!(
            d > Duration::from_millis(450) && d <= Duration::from_millis(500),
            "{d:?}"
        );
    }

    #[test]
    fn ops_limit_paces_requests() {
        let l = RateLimiter::new(Limits {
            ops_per_sec: 200,
            ops_burst: 1,
            ..Limits::default()
        });
        let start = Instant::now();
        for _ in 0..41 {
            l.wait();
            l.charge(0);
        }
        // 40 requests beyond the burst at 200/s take 0.2 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[test]
    fn release_ends_a_long_wait() {
        let l = std::sync::Arc::new(RateLimiter::new(Limits {
            bytes_per_sec: 1024,
            bytes_burst: 1024,
            ..Limits::default()
        }));
        l.charge(1 << 30);
        let waiter = {
            let l = l.clone();
            std::thread::spawn(move || l.wait())
        };
        std::thread::sleep(Duration::from_millis(150));
        l.release();
        let waited = waiter.join().unwrap();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn limits_parse_and_change() {
        let l = Limits::default()
            .updated("bytes=20MiB ops=500,ops-burst=7")
            .unwrap();
        assert_eq!(l.bytes_per_sec, 20 * MIB);
        assert_eq!(l.ops_per_sec, 500);
        assert_eq!(l.ops_burst, 7);
        assert_eq!(l.effective_bytes_burst(), 2 * MIB);
        let off = l.updated("bytes=off&ops=0").unwrap();
        assert!(off.is_unlimited());
        assert!(l.updated("bytes").is_err());
        assert!(l.updated("speed=1").is_err());
        assert!(l.updated("ops=1.5").is_err());
        let r = RateLimiter::new(l);
        assert!(r.is_active());
        r.set_limits(off);
        assert!(!r.is_active());
        assert_eq!(r.limits(), off);
    }
}
