//! `LateReplies`: a request the backend has held past a deadline is answered for it.
//!
//! Owns the table of requests in the backend, the watchdog thread that answers those past the
//! deadline with ETIMEDOUT through their [`ReplyGate`] (so the late thread's own reply never
//! reaches guest memory the guest has got back), the count of answered requests whose backend
//! call has not returned yet (what a backend reads to stop calling on the request's thread),
//! and the stand-in that serves a queue while the thread serving it is stuck. This lets a
//! backend whose calls can hang (CephFS while no MDS answers) make its calls on the request's
//! own thread and still answer every request within the deadline.
//!
//! Must not: know what the backend does, or wait on anything a stuck call may hold: the
//! watchdog takes only its own table lock, a request's gate (held only while copying into
//! guest memory) and the ring lock (never held across a backend call).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::InHeader;
use fuse_backend_rs::transport::ReplyGate;
use tracing::{info, warn};

use crate::fuse::guard::read_prefix;
use crate::vhost::device::{
    complete, read_chain_prefix, reply_error, Chain, Direction, GuestMemory, Vring,
};

/// Shortest time between two "answered for the backend" warnings.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// How often a stand-in looks at its queue for new requests.
pub const STAND_IN_POLL: Duration = Duration::from_millis(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The gate of the request this thread is serving, for [`current_request_answered`].
    static CURRENT: RefCell<Option<Arc<ReplyGate>>> = const { RefCell::new(None) };
}

/// Whether the request this thread serves was answered in its place (its reply gate closed):
/// a backend call that returns after that drops what it made instead of handing it to a
/// guest that was told the request failed.
pub fn current_request_answered() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|g| g.is_closed()))
}

/// The queue a request came from, which a stand-in serves should the request's thread get
/// stuck, and the guest memory to serve it with.
pub struct ServingThread {
    pub queue: usize,
    pub mem: Arc<GuestMemory>,
}

/// Serves `vring` (device queue `queue`) while `keep_going` holds: what a stand-in runs.
pub type StandIn = Box<dyn Fn(&Vring, usize, &Arc<GuestMemory>, &dyn Fn() -> bool) + Send + Sync>;

struct InFlight {
    since: Instant,
    chain: Chain,
    vring: Vring,
    gate: Arc<ReplyGate>,
    serving: ServingThread,
    answered: bool,
}

#[derive(Default)]
struct Table {
    next: u64,
    live: HashMap<u64, InFlight>,
    /// The watchdog waits without a deadline (nothing in flight): `admit` must wake it.
    idle: bool,
    last_warning: Option<Instant>,
    unlogged: u64,
    in_outage: bool,
}

struct Shared {
    deadline: Duration,
    table: Mutex<Table>,
    wake: Condvar,
    /// Answered requests whose backend call has not returned.
    answered_running: Arc<AtomicUsize>,
    /// Per device queue: answered requests whose serving thread (see [`ServingThread`]) is
    /// still in the backend. A stand-in serves the queue while this is non-zero.
    stuck: Vec<AtomicUsize>,
    stand_in: OnceLock<StandIn>,
    answered_total: AtomicUsize,
}

/// See the module documentation.
pub struct LateReplies {
    shared: Arc<Shared>,
}

/// A request registered with [`LateReplies::admit`]; hand it back to [`LateReplies::end`].
pub struct Ticket {
    id: u64,
    gate: Arc<ReplyGate>,
}

impl Ticket {
    /// The gate the request's writer must pass.
    pub fn gate(&self) -> &Arc<ReplyGate> {
        &self.gate
    }
}

impl LateReplies {
    /// Answers requests held longer than `deadline`; `queues`: the device's queue count;
    /// `answered_running`: where to count answered requests whose call is still running (a
    /// backend reads it, see [`Self::answered_running`]). Starts the watchdog thread.
    pub fn new(
        deadline: Duration,
        queues: usize,
        answered_running: Arc<AtomicUsize>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            deadline,
            table: Mutex::new(Table::default()),
            wake: Condvar::new(),
            answered_running,
            stuck: (0..queues).map(|_| AtomicUsize::new(0)).collect(),
            stand_in: OnceLock::new(),
            answered_total: AtomicUsize::new(0),
        });
        let watched = Arc::clone(&shared);
        thread::Builder::new()
            .name("late-replies".into())
            .spawn(move || watchdog(&watched))?;
        Ok(LateReplies { shared })
    }

    /// What serves a queue while its thread is stuck (set once, by the device).
    pub fn set_stand_in(&self, stand_in: StandIn) {
        let _ = self.shared.stand_in.set(stand_in);
    }

    /// Requests answered in the backend's place so far.
    pub fn answered_total(&self) -> usize {
        self.shared.answered_total.load(Ordering::Relaxed)
    }

    /// Registers a request taken from its queue: from now on it is answered for the backend
    /// once it has waited the deadline, served or not.
    pub fn admit(&self, chain: &Chain, vring: &Vring, serving: ServingThread) -> Ticket {
        let gate = Arc::new(ReplyGate::new());
        let mut t = lock(&self.shared.table);
        let id = t.next;
        t.next = t.next.wrapping_add(1);
        t.live.insert(
            id,
            InFlight {
                since: Instant::now(),
                chain: chain.clone(),
                vring: vring.clone(),
                gate: Arc::clone(&gate),
                serving,
                answered: false,
            },
        );
        let wake = std::mem::take(&mut t.idle);
        drop(t);
        if wake {
            self.shared.wake.notify_one();
        }
        Ticket { id, gate }
    }

    /// This thread starts serving `ticket`'s request (see [`current_request_answered`]).
    pub fn enter(&self, ticket: &Ticket) {
        CURRENT.with(|c| *c.borrow_mut() = Some(Arc::clone(&ticket.gate)));
    }

    /// The request is served (or given up): whether it was answered in its place, in which
    /// case its chain is the guest's again and must not be completed.
    pub fn end(&self, ticket: Ticket) -> bool {
        CURRENT.with(|c| *c.borrow_mut() = None);
        let Some(done) = lock(&self.shared.table).live.remove(&ticket.id) else {
            return false;
        };
        if !done.answered {
            return false;
        }
        if let Some(n) = self.shared.stuck.get(done.serving.queue) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
        if self.shared.answered_running.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut t = lock(&self.shared.table);
            if std::mem::take(&mut t.in_outage) {
                let unlogged = std::mem::take(&mut t.unlogged);
                drop(t);
                info!(
                    "late replies: every request answered in the backend's place has come \
                     back from it ({unlogged} not logged individually, {} in all)",
                    self.answered_total()
                );
            }
        }
        true
    }
}

/// Answers every request past the deadline, then sleeps until the next one would be.
fn watchdog(shared: &Arc<Shared>) {
    let mut t = lock(&shared.table);
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut late = Vec::new();
        for (id, r) in t.live.iter() {
            if r.answered {
                continue;
            }
            let due = r.since + shared.deadline;
            if due <= now {
                late.push(*id);
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        let mut answered = 0;
        for id in late {
            if let Some(r) = t.live.get_mut(&id) {
                answered += u64::from(answer(shared, r));
            }
        }
        if answered > 0 {
            warn_throttled(shared, &mut t, answered);
        }
        t = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                shared
                    .wake
                    .wait_timeout(t, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => {
                t.idle = true;
                shared.wake.wait(t).unwrap_or_else(|p| p.into_inner())
            }
        };
    }
}

/// ETIMEDOUT into `r`'s chain and its buffer back to the guest, behind its gate; whether it
/// was answered here (false: its gate was closed already).
fn answer(shared: &Arc<Shared>, r: &mut InFlight) -> bool {
    let (chain, vring) = (&r.chain, &r.vring);
    let answered = r.gate.close_with(|| {
        let mut head = [0u8; std::mem::size_of::<InHeader>()];
        let filled = read_chain_prefix(chain, Direction::Readable, &mut head);
        let unique = read_prefix::<InHeader>(&head[..filled]).map_or(0, |h| h.unique);
        let len = reply_error(chain, unique, libc::ETIMEDOUT);
        complete(vring, chain.head_index(), len)
    });
    let Some(completed) = answered else {
        return false;
    };
    if let Err(e) = completed {
        warn!("late replies: returning an answered request's buffer: {e}");
    }
    r.answered = true;
    shared.answered_running.fetch_add(1, Ordering::AcqRel);
    shared.answered_total.fetch_add(1, Ordering::Relaxed);
    let s = &r.serving;
    if let Some(n) = shared.stuck.get(s.queue) {
        if n.fetch_add(1, Ordering::AcqRel) == 0 {
            start_stand_in(shared, r.vring.clone(), s.queue, Arc::clone(&s.mem));
        }
    }
    true
}

/// One warning per outage, then at most one every [`WARN_INTERVAL`].
fn warn_throttled(shared: &Shared, t: &mut Table, answered: u64) {
    t.in_outage = true;
    let now = Instant::now();
    if t.last_warning
        .is_some_and(|at| now.duration_since(at) < WARN_INTERVAL)
    {
        t.unlogged += answered;
        return;
    }
    t.last_warning = Some(now);
    let unlogged = std::mem::take(&mut t.unlogged);
    warn!(
        "late replies: {answered} request(s) held by the backend longer than {:?} answered \
         with ETIMEDOUT; their calls go on in the background ({} running, {unlogged} more \
         answered since the last warning, logged at most every {WARN_INTERVAL:?})",
        shared.deadline,
        shared.answered_running.load(Ordering::Acquire),
    );
}

/// A thread serving `queue` until its own thread is back from the backend.
fn start_stand_in(shared: &Arc<Shared>, vring: Vring, queue: usize, mem: Arc<GuestMemory>) {
    let s = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("stand-in-{queue}"))
        .spawn(move || {
            let Some(serve) = s.stand_in.get() else {
                return;
            };
            let keep_going = || {
                s.stuck
                    .get(queue)
                    .is_some_and(|n| n.load(Ordering::Acquire) > 0)
            };
            serve(&vring, queue, &mem, &keep_going);
        });
    if let Err(e) = spawned {
        warn!("late replies: no stand-in for queue {queue}: {e}");
    }
}
