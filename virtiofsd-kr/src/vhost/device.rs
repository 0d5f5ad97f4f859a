//! The vhost-user virtio-fs device: queues in, FUSE server calls, replies out.
//!
//! Owns the virtio side of a request: popping descriptor chains, turning them into
//! fuse-backend-rs `Reader`/`Writer`s, asking the `RequestGuard`, calling the `Server`,
//! returning used buffers and notifying the guest. It must not know how the backend stores
//! files, and never trusts a length, index or opcode the guest wrote.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{
    reader_and_writer, FsCacheReqHandler, ReplyGate, VirtioFsWriter, Writer,
};
use tracing::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringMutex, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::accounting::meter::Outcome;
use crate::accounting::Accounting;
use crate::fuse::export::take_written;
use crate::fuse::guard::{
    error_reply, inspect_prefix, is_no_reply, read_prefix, RequestGuard, Verdict, PEEK_LEN,
};
use crate::vhost::dax::{DaxRequest, DaxWindow, SHMEM_PROTOCOL_FEATURE};
use crate::vhost::late_reply::{LateReplies, ServingThread, Ticket};
use crate::vhost::queue_poll::QueuePoll;
use crate::vhost::request_pool::{PoolError, PoolTotals, RequestPool};

/// Queue 0 carries FORGET and INTERRUPT; the request queues follow it.
pub const HIPRIO_QUEUE_INDEX: usize = 0;
/// Most request queues a daemon offers (`--request-queues`). Linux 6.1 uses one; Linux >= 6.10
/// spreads requests over as many as the VMM configures (QEMU's `num-request-queues`), one per
/// group of CPUs.
pub const MAX_REQUEST_QUEUES: usize = 16;
/// Most queues in all: the high-priority queue plus the request queues.
pub const MAX_QUEUES: usize = HIPRIO_QUEUE_INDEX + 1 + MAX_REQUEST_QUEUES;
/// Guest memory regions a frontend is expected to share (QEMU: one per RAM block; a guest
/// with hot-plugged DIMMs has more). A frontend may send up to 509 (`GET_MAX_MEM_SLOTS`); this
/// is only what [`descriptors_to_serve`] counts on.
pub const EXPECTED_MEMORY_REGIONS: u64 = 8;
/// Descriptors one vhost-user message may carry (`MAX_ATTACHED_FD_ENTRIES`): the kernel needs
/// a free slot for each before the daemon can even look at the message.
const MESSAGE_DESCRIPTORS: u64 = vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES as u64;

/// Descriptors the device holds once a frontend has started all `request_queues` request
/// queues and the hiprio queue: per vring thread (at most one per queue) its epoll and its
/// copy of the exit event's two ends; per queue the kick, call and error eventfds the
/// frontend sends; the connection and the backend request channel; the guest memory files
/// ([`EXPECTED_MEMORY_REGIONS`]); and room for one message's descriptors in flight.
pub fn descriptors_to_serve(request_queues: usize) -> u64 {
    const PER_THREAD: u64 = 3;
    const PER_QUEUE: u64 = 3;
    const CHANNELS: u64 = 2;
    let queues = (HIPRIO_QUEUE_INDEX + 1 + request_queues) as u64;
    queues * (PER_THREAD + PER_QUEUE) + CHANNELS + EXPECTED_MEMORY_REGIONS + MESSAGE_DESCRIPTORS
}

/// How the queues are spread over vring threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueThreads {
    /// The request queues spread round-robin over at most `threads` threads (one per queue
    /// when there are as many), the hiprio queue with the first, as the reference virtiofsd
    /// does with its one thread. A guest `unlink()` ends in a FORGET on the hiprio queue:
    /// served by the thread that is already awake, it costs no second thread's wake-up (in a
    /// TCG guest, unlink was 6 % slower with a thread per queue; `docs/benchmarks.md`). More
    /// threads than CPUs only add wake-ups: a thread that finds several of its queues busy
    /// serves them in one wake-up. For backends whose requests never wait long.
    Shared { threads: usize },
    /// A thread per queue: a request that waits (a rate limit, a cluster that does not
    /// answer) does not hold up FORGET and INTERRUPT on the hiprio queue, nor another queue.
    PerQueue,
}

impl QueueThreads {
    /// The queues each vring thread serves (bit i: queue i) for `request_queues` request
    /// queues (see the variants).
    fn masks(self, request_queues: usize) -> Vec<u64> {
        const HIPRIO: u64 = 1 << HIPRIO_QUEUE_INDEX;
        let request = |i: usize| 1u64 << (HIPRIO_QUEUE_INDEX + 1 + i);
        match self {
            QueueThreads::Shared { threads } => {
                let threads = threads.clamp(1, request_queues.max(1));
                (0..threads)
                    .map(|t| {
                        let mine = (t..request_queues)
                            .step_by(threads)
                            .fold(0, |m, i| m | request(i));
                        if t == 0 {
                            mine | HIPRIO
                        } else {
                            mine
                        }
                    })
                    .collect()
            }
            QueueThreads::PerQueue => std::iter::once(HIPRIO)
                .chain((0..request_queues).map(request))
                .collect(),
        }
    }
}

/// The device queue index of `device_event` on vring thread `thread_id` (the n-th queue of
/// that thread's mask).
fn queue_of(masks: &[u64], thread_id: usize, device_event: u16) -> Option<usize> {
    let mask = *masks.get(thread_id)?;
    (0..MAX_QUEUES)
        .filter(|q| mask & (1 << q) != 0)
        .nth(device_event as usize)
}
/// Largest queue the frontend may configure (QEMU 7.2 allows up to 1024).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Length of the tag field in the virtio-fs configuration space.
pub const TAG_LEN: usize = 36;

pub(crate) type GuestMemory = GuestMemoryMmap<()>;
pub(crate) type Chain = DescriptorChain<Arc<GuestMemory>>;
pub(crate) type Vring = VringMutex<GuestMemoryAtomic<GuestMemory>>;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("event {0} is not a queue of this device")]
    UnknownEvent(u16),
    #[error("unexpected epoll event set {0:?}")]
    UnexpectedEvents(EventSet),
    #[error("queue event before the frontend sent a memory table")]
    NoMemory,
    #[error("reading the available ring: {0}")]
    QueueIter(virtio_queue::Error),
    #[error("returning a used buffer: {0}")]
    AddUsed(virtio_queue::Error),
    #[error("notifying the guest: {0}")]
    Signal(io::Error),
    #[error("tag {0:?} is longer than {TAG_LEN} bytes")]
    TagTooLong(String),
    #[error("creating the exit event: {0}")]
    ExitEvent(io::Error),
    #[error("{0} request queues: 1 to {MAX_REQUEST_QUEUES} are supported")]
    RequestQueues(usize),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl From<DeviceError> for io::Error {
    fn from(e: DeviceError) -> Self {
        io::Error::other(e)
    }
}

/// What every request needs, shared by the queue thread and the worker pool.
pub struct RequestCore<F: FileSystem + Sync> {
    server: Server<F>,
    guard: RequestGuard,
    dax: Option<Arc<DaxWindow>>,
    acct: Option<Arc<Accounting>>,
    late: Option<Arc<LateReplies>>,
    /// Whether a request too broken to answer was logged already (see [`Self::drop_broken`]).
    broken_seen: AtomicBool,
}

impl<F: FileSystem + Send + Sync + 'static> RequestCore<F> {
    pub fn new(fs: F, guard: RequestGuard, dax: Option<Arc<DaxWindow>>) -> Self {
        RequestCore {
            server: Server::new(fs),
            guard,
            dax,
            acct: None,
            late: None,
            broken_seen: AtomicBool::new(false),
        }
    }

    /// Logs a request dropped unanswered (used length 0) because it is too broken to answer:
    /// the first at warn level, later ones at debug, so a guest sending them in a loop cannot
    /// flood the host's logs.
    fn drop_broken(&self, why: std::fmt::Arguments) -> u32 {
        if self.broken_seen.swap(true, Ordering::Relaxed) {
            debug!("dropping request: {why}");
        } else {
            warn!("dropping request: {why} (further ones logged at debug level)");
        }
        0
    }

    /// Requests the backend holds longer than `late`'s deadline are answered for it (see
    /// [`LateReplies`]).
    pub fn with_late_replies(mut self, late: Arc<LateReplies>) -> Self {
        self.late = Some(late);
        self
    }

    /// Registers a chain just taken from device queue `queue` with the late replies, if
    /// there are any: from now on it is answered in the backend's place once it has waited
    /// the deadline, also while it waits behind another request (`mem`: to serve the queue
    /// with, should its thread get stuck).
    pub fn admit(
        &self,
        chain: &Chain,
        vring: &Vring,
        queue: usize,
        mem: &Arc<GuestMemory>,
    ) -> Option<Ticket> {
        let late = self.late.as_ref()?;
        let serving = ServingThread {
            queue,
            mem: Arc::clone(mem),
        };
        Some(late.admit(chain, vring, serving))
    }

    /// Serves one chain on this thread and returns its buffer to `vring`, unless the request
    /// was answered in its place (then the chain is the guest's again); one answered before
    /// it started is not served at all.
    pub fn serve_and_complete(
        &self,
        chain: &Chain,
        vring: &Vring,
        ticket: Option<Ticket>,
    ) -> Result<(), DeviceError> {
        let (Some(late), Some(ticket)) = (&self.late, ticket) else {
            let len = self.serve_chain(chain);
            return complete(vring, chain.head_index(), len);
        };
        let len = if ticket.gate().is_closed() {
            0
        } else {
            late.enter(&ticket);
            self.serve_gated(chain, Some(ticket.gate()))
        };
        if late.end(ticket) {
            return Ok(());
        }
        complete(vring, chain.head_index(), len)
    }

    /// Meters every request into `acct` and lets its rate limiter pace the request queue.
    pub fn with_accounting(mut self, acct: Arc<Accounting>) -> Self {
        self.acct = Some(acct);
        self
    }

    /// Serves one descriptor chain and returns the number of bytes written into it; with
    /// accounting, meters what the reply moved and charges the rate limiter.
    ///
    /// Every path returns: a chain too broken to answer gets a used length of 0, never a panic.
    pub fn serve_chain(&self, chain: &Chain) -> u32 {
        self.serve_gated(chain, None)
    }

    /// [`Self::serve_chain`] with every write into the chain behind `gate`.
    fn serve_gated(&self, chain: &Chain, gate: Option<&Arc<ReplyGate>>) -> u32 {
        let Some(acct) = &self.acct else {
            return self.serve(chain, &mut Seen::default(), gate);
        };
        let start = Instant::now();
        let mut seen = Seen::default();
        take_written(); // nothing from an earlier request may count for this one
        let len = self.serve(chain, &mut seen, gate);
        if let Some(outcome) = metered_outcome(chain, len, &seen, take_written()) {
            acct.meter.record(&outcome, start.elapsed());
            if !is_no_reply(outcome.opcode) {
                acct.limiter
                    .charge(outcome.read_bytes.saturating_add(outcome.written_bytes));
            }
        }
        len
    }

    fn serve(&self, chain: &Chain, seen: &mut Seen, gate: Option<&Arc<ReplyGate>>) -> u32 {
        let mem = chain.memory();
        // A reply written here, not through the writer, passes the gate too.
        let reply_error = |chain: &Chain, unique: u64, errno: i32| match gate {
            None => reply_error(chain, unique, errno),
            Some(g) => g
                .pass(|| Ok(reply_error(chain, unique, errno)))
                .unwrap_or(0),
        };
        // Both parts from one walk of the chain (fuse-backend-rs hunk 19).
        let (reader, writer) = match reader_and_writer(mem, chain.clone()) {
            Ok(parts) => parts,
            Err(e) => return self.drop_broken(format_args!("unusable descriptors: {e}")),
        };
        // The in-header first; the fixed body after it only for the requests the guard looks
        // into (OPEN, SETUPMAPPING on a read-only export). Copied from the reader's buffers,
        // which consumes nothing: walking the chain again cost about 350 instructions a
        // descriptor.
        let mut prefix = [0u8; PEEK_LEN];
        let mut peeked = reader.peek(&mut prefix[..IN_HEADER]);
        if peeked == IN_HEADER
            && read_prefix::<InHeader>(&prefix).is_some_and(|h| self.guard.needs_body(h.opcode))
        {
            peeked = reader.peek(&mut prefix);
        }
        let Some((header, verdict)) = inspect_prefix(&self.guard, &prefix[..peeked]) else {
            return self.drop_broken(format_args!("shorter than a FUSE header"));
        };
        // The opcode as the guard saw it (this copy is what gets metered; the server reads the
        // header again, so the checks that must hold are repeated behind it: see guard.rs).
        seen.opcode = Some(header.opcode);
        if let Verdict::Refuse(errno) = verdict {
            debug!(opcode = header.opcode, errno, "request refused by guard");
            return reply_error(chain, header.unique, errno);
        }
        let writer = match gate {
            Some(g) => writer.with_gate(Arc::clone(g)),
            None => writer,
        };
        // Only mapping requests need the window; other requests skip the Arc clone.
        let mut dax = match (&self.dax, header.opcode) {
            (Some(window), op) if is_mapping_opcode(op) => Some(DaxRequest {
                window: window.clone(),
            }),
            _ => None,
        };
        let vu_req = dax.as_mut().map(|r| r as &mut dyn FsCacheReqHandler);
        // A new INIT or DESTROY: the guest's mappings of the mount before are still live in the
        // VMM (a guest sends no REMOVEMAPPING at umount), and the next mount would map over them.
        if let Some(window) = &self.dax {
            if header.opcode == Opcode::Init as u32 || header.opcode == Opcode::Destroy as u32 {
                window.unmap_all();
            }
        }
        let served = self
            .server
            .handle_message(reader, Writer::VirtioFs(writer), vu_req, None);
        if let Some(window) = &self.dax {
            if may_change_file_size(header.opcode) {
                window.refresh_tails();
            }
        }
        match served {
            Ok(len) => u32::try_from(len).unwrap_or(0),
            Err(e) => {
                debug!(opcode = header.opcode, "malformed request: {e}");
                if is_no_reply(header.opcode) {
                    0
                } else {
                    reply_error(chain, header.unique, libc::EINVAL)
                }
            }
        }
    }
}

/// What serving a chain learnt about the request, for metering.
#[derive(Default)]
struct Seen {
    opcode: Option<u32>,
}

/// `fuse_out_header`.
const OUT_HEADER: u32 = 16;

/// What a served request moved. READ bytes come from the used length (trusted: we returned
/// it); WRITE bytes from what the backend reported writing on this thread (`written`, tallied
/// by `ExportFs::write`), never from the reply in guest memory, which the guest could rewrite
/// to lower its own count. Only the errno of a bare error reply is read back from the chain,
/// so a guest can at worst distort its own error statistics.
fn metered_outcome(chain: &Chain, len: u32, seen: &Seen, written: u64) -> Option<Outcome> {
    let opcode = seen.opcode?;
    let mut outcome = Outcome {
        opcode,
        ..Outcome::default()
    };
    if opcode == Opcode::Write as u32 {
        outcome.written_bytes = written;
    }
    if len == OUT_HEADER {
        let mut reply = [0u8; OUT_HEADER as usize];
        if read_chain_prefix(chain, Direction::Writable, &mut reply) == reply.len() {
            let error = i32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
            outcome.errno = error.checked_neg().unwrap_or(0).max(0);
        }
    } else if opcode == Opcode::Read as u32 && len > OUT_HEADER {
        outcome.read_bytes = u64::from(len - OUT_HEADER);
    }
    Some(outcome)
}

/// `fuse_in_header`: what the guard needs of every request.
const IN_HEADER: usize = std::mem::size_of::<InHeader>();

/// Which descriptors of a chain to read.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    /// The request the guest wrote.
    Readable,
    /// The reply the daemon wrote.
    Writable,
}

/// Copies the first bytes of the chain's readable or writable part into `buf`, across
/// descriptor boundaries, without allocating; returns how many bytes were filled.
pub(crate) fn read_chain_prefix(chain: &Chain, part: Direction, buf: &mut [u8]) -> usize {
    use vm_memory::Bytes;
    let mem = chain.memory();
    let descriptors = match part {
        Direction::Readable => chain.clone().readable(),
        Direction::Writable => chain.clone().writable(),
    };
    let mut filled = 0;
    for desc in descriptors {
        if filled == buf.len() {
            break;
        }
        let want = (buf.len() - filled).min(desc.len() as usize);
        if mem
            .read_slice(&mut buf[filled..filled + want], desc.addr())
            .is_err()
        {
            break;
        }
        filled += want;
        if filled == buf.len() {
            // Not one descriptor more than needed (each is a read of guest memory).
            break;
        }
    }
    filled
}

/// Requests after which a padded DAX mapping (one past the end of its file) is checked
/// against its file's size (`DaxWindow::refresh_tails`): changes through FUSE, syncs, and the
/// attribute requests by which the guest learns of a change on the host.
fn may_change_file_size(opcode: u32) -> bool {
    [
        Opcode::Write,
        Opcode::Setattr,
        Opcode::Fallocate,
        Opcode::CopyFileRange,
        Opcode::Fsync,
        Opcode::SyncFs,
        Opcode::Flush,
        Opcode::Release,
        Opcode::Getattr,
        Opcode::Lookup,
    ]
    .iter()
    .any(|op| *op as u32 == opcode)
}

fn is_mapping_opcode(opcode: u32) -> bool {
    opcode == Opcode::SetupMapping as u32 || opcode == Opcode::RemoveMapping as u32
}

/// Writes a bare error reply into the chain's writable part; returns its length, or 0 if the
/// guest gave no room for one.
pub(crate) fn reply_error(chain: &Chain, unique: u64, errno: i32) -> u32 {
    let out = error_reply(unique, errno);
    let written = VirtioFsWriter::new(chain.memory(), chain.clone())
        .ok()
        .and_then(|mut w| std::io::Write::write_all(&mut w, out.as_slice()).ok());
    match written {
        Some(()) => out.len,
        None => 0,
    }
}

/// Logs a guest-caused ring error: the first at warn level, later ones at debug, so a guest
/// cannot flood the host's logs.
fn report_ring_error(seen: &AtomicBool, e: &DeviceError) {
    if seen.swap(true, Ordering::Relaxed) {
        debug!("virtqueue error: {e}");
    } else {
        warn!("virtqueue error (further ones logged at debug level): {e}");
    }
}

/// Whether the guest has made a chain available that we have not taken yet.
/// A queue the frontend has not set up (a guest using fewer request queues than offered,
/// whose queues share a thread with used ones) has nothing: its ring addresses mean nothing.
fn has_available(vring: &Vring, mem: &GuestMemory) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue.ready()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Returns a chain's used buffer and tells the guest if it asked to be told.
pub(crate) fn complete(vring: &Vring, head: u16, len: u32) -> Result<(), DeviceError> {
    // One lock for both steps: VringMutex's add_used and needs_notification lock each.
    let notify = {
        let mut state = vring.get_mut();
        state.add_used(head, len).map_err(DeviceError::AddUsed)?;
        state.needs_notification().map_err(DeviceError::AddUsed)?
    };
    if notify {
        vring.signal_used_queue().map_err(DeviceError::Signal)?;
    }
    Ok(())
}

/// What serves a queue while the thread serving it is stuck in the backend (see
/// [`LateReplies`]): it takes the queue's requests as they come (polling: the stuck thread
/// turned the queue's notifications off) and serves them in turn, until that thread is back.
/// No rate limit applies meanwhile (the backend is not answering anyway).
fn stand_in<F: FileSystem + Send + Sync + 'static>(
    core: std::sync::Weak<RequestCore<F>>,
    seen: Arc<AtomicBool>,
) -> crate::vhost::late_reply::StandIn {
    Box::new(move |vring, queue, mem, keep_going| {
        while keep_going() {
            let Some(core) = core.upgrade() else { return };
            let chains: Vec<Chain> = {
                let mut state = vring.get_mut();
                match state.get_queue_mut().iter(Arc::clone(mem)) {
                    Ok(available) => available.collect(),
                    Err(e) => {
                        report_ring_error(&seen, &DeviceError::QueueIter(e));
                        Vec::new()
                    }
                }
            };
            if chains.is_empty() {
                drop(core);
                std::thread::sleep(crate::vhost::late_reply::STAND_IN_POLL);
                continue;
            }
            let tickets: Vec<Option<Ticket>> = chains
                .iter()
                .map(|chain| core.admit(chain, vring, queue, mem))
                .collect();
            for (chain, ticket) in chains.iter().zip(tickets) {
                if let Err(e) = core.serve_and_complete(chain, vring, ticket) {
                    report_ring_error(&seen, &e);
                }
            }
        }
    })
}

/// A request handed to a worker: the chain, the ring its used buffer goes back to and its
/// registration with the late replies.
type Job = (Chain, Vring, Option<Ticket>);

/// How requests reach worker threads (`request_pool.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestThreads {
    /// Every request is served on its queue's thread.
    Inline,
    /// `--thread-pool-size N`: every request goes to one of N workers, as in the reference
    /// virtiofsd; the queue thread only pops chains.
    Pool(usize),
    /// `--overlap-threads N`: the queue thread serves requests itself, but when it takes more
    /// than one at a time, the batch's data requests after the first go to up to N workers
    /// (started when first needed), so their disk waits overlap. What no worker has picked up
    /// when the ring runs dry the queue thread takes back.
    Overlap(usize),
}

/// Data requests: the ones that wait on the disk, worth a second thread when several wait.
/// Metadata requests cost a few microseconds of host time, less than waking a worker.
fn is_data_opcode(opcode: u32) -> bool {
    opcode == Opcode::Read as u32
        || opcode == Opcode::Write as u32
        || opcode == Opcode::Fsync as u32
        || opcode == Opcode::SyncFs as u32
        || opcode == Opcode::Fallocate as u32
}

/// The opcode the guest wrote into a chain's header, if the header is there (the guard checks
/// the whole header again when the request is served).
fn peek_opcode(chain: &Chain) -> Option<u32> {
    let mut head = [0u8; std::mem::size_of::<InHeader>()];
    let filled = read_chain_prefix(chain, Direction::Readable, &mut head);
    read_prefix::<InHeader>(&head[..filled]).map(|h| h.opcode)
}

/// The vhost-user backend of one virtio-fs device.
pub struct VirtioFsDevice<F: FileSystem + Send + Sync + 'static> {
    core: Arc<RequestCore<F>>,
    pool: Option<RequestPool<Job>>,
    /// Whether the pool serves every request or only overlaps a batch's data requests.
    overlap: bool,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemory>>>,
    event_idx: AtomicBool,
    /// Shared with the workers: one warning per daemon, whichever thread meets the error.
    ring_error_seen: Arc<AtomicBool>,
    tag: Option<[u8; TAG_LEN]>,
    exit: (EventConsumer, EventNotifier),
    /// Request queues offered (`GET_QUEUE_NUM` answers one more, for the hiprio queue).
    request_queues: usize,
    /// The queues of each vring thread (see [`QueueThreads`]).
    masks: Vec<u64>,
    /// One per request queue.
    polls: Vec<QueuePoll>,
    /// Requests taken from each queue (index: device queue), logged at exit.
    taken: Vec<AtomicU64>,
    /// The queues being served, a bit each (`queue_served`): a thread going round again looks
    /// at its other queues only if the frontend started them. A guest of one request queue
    /// leaves most of a thread's queues unstarted, and looking at one costs its ring lock.
    served: AtomicU64,
}

impl<F: FileSystem + Send + Sync + 'static> VirtioFsDevice<F> {
    pub fn new(
        core: RequestCore<F>,
        request_threads: RequestThreads,
        tag: Option<&str>,
        threads: QueueThreads,
        request_queues: usize,
        poll_max: Duration,
    ) -> Result<Self, DeviceError> {
        if !(1..=MAX_REQUEST_QUEUES).contains(&request_queues) {
            return Err(DeviceError::RequestQueues(request_queues));
        }
        let tag = match tag {
            None => None,
            Some(t) if t.len() > TAG_LEN => return Err(DeviceError::TagTooLong(t.to_string())),
            Some(t) => {
                let mut bytes = [0u8; TAG_LEN];
                bytes[..t.len()].copy_from_slice(t.as_bytes());
                Some(bytes)
            }
        };
        let core = Arc::new(core);
        let ring_error_seen = Arc::new(AtomicBool::new(false));
        let serve = |core: Arc<RequestCore<F>>| {
            let seen = ring_error_seen.clone();
            move |(chain, vring, ticket): Job| {
                if let Err(e) = core.serve_and_complete(&chain, &vring, ticket) {
                    report_ring_error(&seen, &e);
                }
            }
        };
        let (pool, overlap) = match request_threads {
            RequestThreads::Inline | RequestThreads::Pool(0) | RequestThreads::Overlap(0) => {
                (None, false)
            }
            RequestThreads::Pool(n) => {
                let pool = RequestPool::new(n, serve(core.clone()));
                pool.start_all()?;
                (Some(pool), false)
            }
            RequestThreads::Overlap(n) => (Some(RequestPool::new(n, serve(core.clone()))), true),
        };
        if let Some(late) = &core.late {
            late.set_stand_in(stand_in(Arc::downgrade(&core), ring_error_seen.clone()));
        }
        let exit =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(DeviceError::ExitEvent)?;
        Ok(VirtioFsDevice {
            core,
            pool,
            overlap,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            ring_error_seen,
            tag,
            exit,
            request_queues,
            masks: threads.masks(request_queues),
            polls: (0..request_queues)
                .map(|_| QueuePoll::new(poll_max))
                .collect(),
            taken: (0..=request_queues).map(|_| AtomicU64::new(0)).collect(),
            served: AtomicU64::new(0),
        })
    }

    /// Requests taken from each queue so far (index 0: the hiprio queue).
    pub fn requests_per_queue(&self) -> Vec<u64> {
        self.taken
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Logs a guest-caused ring error: the first at warn level, later ones at debug, so a
    /// guest cannot flood the host's logs.
    fn report_ring_error(&self, e: &DeviceError) {
        report_ring_error(&self.ring_error_seen, e);
    }

    /// The request queues' polling counters, for the log at exit.
    pub fn poll_totals(&self) -> impl Iterator<Item = &crate::vhost::queue_poll::PollTotals> {
        self.polls.iter().map(QueuePoll::totals)
    }

    /// Whether anything still holds the request core (and the backend in it), once the
    /// device is gone: at exit nothing should, or the backend was never closed.
    pub fn core_watch(&self) -> std::sync::Weak<RequestCore<F>> {
        Arc::downgrade(&self.core)
    }

    /// What the request workers did (`None` when requests are all served inline).
    pub fn pool_totals(&self) -> Option<PoolTotals> {
        self.pool.as_ref().map(RequestPool::totals)
    }

    /// Tells the queue threads to stop (used on shutdown).
    pub fn notify_exit(&self) {
        if let Some(acct) = &self.core.acct {
            acct.limiter.release();
        }
        let _ = self.exit.1.notify();
    }

    fn memory(&self) -> Result<Arc<GuestMemory>, DeviceError> {
        // `let else`, not `ok_or(error)`: an error value made on every call is dropped
        // through its drop glue when unused (a call per request, seen in callgrind).
        let mem = self.mem.read().map_err(|_| DeviceError::NoMemory)?;
        let Some(mem) = mem.as_ref() else {
            return Err(DeviceError::NoMemory);
        };
        Ok(mem.memory().into_inner())
    }

    /// Serves one request on this thread and returns its buffer to `vring`.
    fn serve_here(&self, vring: &Vring, chain: &Chain, ticket: Option<Ticket>) {
        if let Err(e) = self.core.serve_and_complete(chain, vring, ticket) {
            self.report_ring_error(&e);
        }
    }

    /// Serves those of `queues` that have requests waiting (see `process_queue`).
    fn serve_waiting(&self, queues: &[(usize, &Vring)], mem: &GuestMemory) {
        for (queue, vring) in queues {
            if has_available(vring, mem) {
                if let Err(e) = self.process_queue(vring, *queue, &[]) {
                    self.report_ring_error(&e);
                }
            }
        }
    }

    /// Serves everything available on one queue. With EVENT_IDX, notifications stay off while
    /// we drain and we re-check after turning them back on, so no kick is lost.
    ///
    /// On a request queue with a rate limit in force, chains are taken one at a time and
    /// only when the limiter is out of debt: requests over the limit wait in the ring.
    ///
    /// Where a chain is served is [`RequestThreads`]'s choice: here, by the pool, or (overlap)
    /// here unless it is a data request taken together with an earlier one.
    ///
    /// A request queue that runs dry is polled for a while ([`QueuePoll`]) before its
    /// notifications go back on. While it polls, and each time it goes round again instead of
    /// returning to `epoll_wait`, the thread's `others` queues (the hiprio queue when one
    /// thread serves both) are served if they have requests, so a busy request queue never
    /// holds up FORGET and INTERRUPT.
    fn process_queue(
        &self,
        vring: &Vring,
        queue: usize,
        others: &[(usize, &Vring)],
    ) -> Result<(), DeviceError> {
        let mem = self.memory()?;
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let throttle = queue != HIPRIO_QUEUE_INDEX;
        let limiter = self.core.acct.as_ref().filter(|_| throttle);
        // Request queues are polled when they run dry; the hiprio queue (FORGET, INTERRUPT:
        // nobody waits for a reply) is not.
        let poll = queue
            .checked_sub(HIPRIO_QUEUE_INDEX + 1)
            .and_then(|i| self.polls.get(i));
        if let Some(poll) = poll {
            poll.woke();
        }
        let mut chains: Vec<(Chain, Option<Ticket>)> = Vec::new();
        // Whether this call handed data requests to the overlap helpers (only then can one
        // be waiting for a helper when the queue runs dry: see below).
        let mut handed = false;
        loop {
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(DeviceError::QueueIter)?;
            }
            loop {
                let batch = match limiter {
                    Some(acct) if acct.limiter.is_active() => {
                        let waited = acct.limiter.wait();
                        if !waited.is_zero() {
                            acct.meter.add_throttled(waited);
                        }
                        1
                    }
                    _ => usize::MAX,
                };
                {
                    let mut state = vring.get_mut();
                    chains.extend(
                        state
                            .get_queue_mut()
                            .iter(mem.clone())
                            .map_err(DeviceError::QueueIter)?
                            .take(batch)
                            .map(|chain| (chain, None)),
                    );
                }
                // Answered in the backend's place if they wait too long, also behind another
                // request of the batch that is stuck.
                for (chain, ticket) in chains.iter_mut() {
                    *ticket = self.core.admit(chain, vring, queue, &mem);
                }
                let taken = chains.len();
                if let Some(n) = self.taken.get(queue) {
                    n.fetch_add(taken as u64, Ordering::Relaxed);
                }
                match &self.pool {
                    Some(pool) if !self.overlap => {
                        for (chain, ticket) in chains.drain(..) {
                            pool.submit((chain, vring.clone(), ticket));
                        }
                    }
                    Some(pool) if taken > 1 => {
                        // The data requests after the first go to workers before this thread
                        // starts on the first, so their disk waits overlap with its own.
                        let mut first = true;
                        chains.retain_mut(|(chain, ticket)| {
                            let keep = first || !peek_opcode(chain).is_some_and(is_data_opcode);
                            first = false;
                            if !keep {
                                pool.submit((chain.clone(), vring.clone(), ticket.take()));
                                handed = true;
                            }
                            keep
                        });
                    }
                    _ => {}
                }
                for (chain, ticket) in chains.drain(..) {
                    self.serve_here(vring, &chain, ticket);
                }
                if taken < batch {
                    break;
                }
            }
            // Ran dry. Requests handed to workers that none has started yet are this
            // thread's again: it is free, and a worker may still be waking. Not looked for
            // when this call handed none (most wake-ups: one request), which saves the pool's
            // lock per request.
            if let Some(pool) = self.pool.as_ref().filter(|_| self.overlap && handed) {
                while let Some((chain, ring, ticket)) = pool.take() {
                    self.serve_here(&ring, &chain, ticket);
                }
            }
            if let Some(poll) = poll {
                let caught = poll.spin(|| {
                    self.serve_waiting(others, &mem);
                    has_available(vring, &mem)
                });
                if caught {
                    continue;
                }
            }
            if !event_idx
                || !vring
                    .enable_notification()
                    .map_err(DeviceError::QueueIter)?
            {
                // Back to epoll_wait, which sees the other queues' kicks.
                return Ok(());
            }
            // Going round again without epoll_wait (the spin above serves them as it turns):
            // the thread's other queues first, so a guest that keeps this one busy (each
            // request posted before we look again) never holds up FORGET and INTERRUPT.
            // Not on the way out: checking them there cost every request about 300
            // instructions (a ring lock and an avail index read per queue).
            self.serve_waiting(others, &mem);
        }
    }
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserBackend for VirtioFsDevice<F> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        HIPRIO_QUEUE_INDEX + 1 + self.request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// See [`QueueThreads`].
    fn queues_per_thread(&self) -> Vec<u64> {
        self.masks.clone()
    }

    fn queue_served(&self, index: usize, served: bool) {
        let Some(bit) = u32::try_from(index).ok().and_then(|i| 1u64.checked_shl(i)) else {
            return;
        };
        // Said once per change: a guest that never got an answer shows whether its driver
        // ever started the queues (a hang before the first request is told from a lost one).
        let before = if served {
            self.served.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.served.fetch_and(!bit, Ordering::AcqRel)
        };
        if (before & bit != 0) != served {
            info!(
                queue = index,
                "queue {}",
                if served { "started" } else { "stopped" }
            );
        }
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut features = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.tag.is_some() {
            features |= VhostUserProtocolFeatures::CONFIG;
        }
        if self.core.dax.is_some() {
            features |= SHMEM_PROTOCOL_FEATURE;
        }
        features
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        match &self.core.dax {
            Some(window) => Ok(window.shmem_config()),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no DAX window (start with --dax-window)",
            )),
        }
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        if let Some(window) = &self.core.dax {
            window.set_channel(backend);
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let Some(tag) = self.tag else {
            return Vec::new();
        };
        let mut config = tag.to_vec();
        config.extend_from_slice(&(self.request_queues as u32).to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        let mut slot = self
            .mem
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))?;
        *slot = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(DeviceError::UnexpectedEvents(evset).into());
        }
        // Each thread gets its own queues, numbered from 0 in `device_event`.
        // `let else`, not `ok_or(error)`: see `memory`.
        let (Some(queue), Some(vring)) = (
            queue_of(&self.masks, thread_id, device_event),
            vrings.get(device_event as usize),
        ) else {
            return Err(DeviceError::UnknownEvent(device_event).into());
        };
        // This thread's other queues (at most MAX_QUEUES - 1: no allocation per event).
        // One pass over the thread's mask: its n-th queue is `vrings[n]`.
        // Only those the frontend started: the others have nothing to serve.
        let mut others = [(queue, vring); MAX_QUEUES];
        let mut n = 0;
        let mask = self.masks.get(thread_id).copied().unwrap_or(0);
        let served = self.served.load(Ordering::Acquire);
        let mine = (0..MAX_QUEUES).filter(|q| mask & (1 << q) != 0);
        for (q, v) in mine.zip(vrings) {
            if q != queue && served & (1 << q) != 0 {
                others[n] = (q, v);
                n += 1;
            }
        }
        // A broken ring (bad avail index or head) is the guest's fault: report it and keep
        // this queue thread alive, so the next kick after a reset is served. Returning the
        // error would end the thread and silence the queue for good.
        // Only a request queue serves the others when it runs dry: the hiprio queue's
        // requests are quick, and a request queue served from there could poll.
        let others = if queue == HIPRIO_QUEUE_INDEX {
            &others[..0]
        } else {
            &others[..n]
        };
        if let Err(e) = self.process_queue(vring, queue, others) {
            self.report_ring_error(&e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod queue_thread_tests {
    use super::*;

    #[test]
    fn every_queue_has_exactly_one_thread() {
        let layouts = (1..=MAX_REQUEST_QUEUES + 1)
            .map(|threads| QueueThreads::Shared { threads })
            .chain([QueueThreads::PerQueue]);
        for layout in layouts {
            for rq in 1..=MAX_REQUEST_QUEUES {
                let masks = layout.masks(rq);
                let queues = HIPRIO_QUEUE_INDEX + 1 + rq;
                for q in 0..queues {
                    let owners = masks.iter().filter(|m| *m & (1 << q) != 0).count();
                    assert_eq!(owners, 1, "{layout:?} {rq}: queue {q}");
                }
                assert_eq!(masks.iter().fold(0, |a, m| a | m), (1 << queues) - 1);
                // At most the threads asked for, never more than a thread per request queue;
                // the hiprio queue shares the first or has its own.
                let threads = match layout {
                    QueueThreads::Shared { threads } => threads.min(rq),
                    QueueThreads::PerQueue => rq + 1,
                };
                assert_eq!(masks.len(), threads, "{layout:?} {rq}");
                assert!(
                    masks.iter().all(|m| *m != 0),
                    "{layout:?} {rq}: idle thread"
                );
            }
        }
    }

    #[test]
    fn shared_threads_take_the_request_queues_round_robin() {
        // Four request queues (device queues 1-4) on two threads: 1 and 3 with the hiprio
        // queue on the first, 2 and 4 on the second.
        let masks = QueueThreads::Shared { threads: 2 }.masks(4);
        assert_eq!(masks, vec![0b01011, 0b10100]);
        assert_eq!(queue_of(&masks, 0, 0), Some(HIPRIO_QUEUE_INDEX));
        assert_eq!(queue_of(&masks, 0, 2), Some(3));
        assert_eq!(queue_of(&masks, 1, 1), Some(4));
        assert_eq!(QueueThreads::Shared { threads: 1 }.masks(3), vec![0b1111]);
        assert_eq!(QueueThreads::Shared { threads: 0 }.masks(2), vec![0b111]);
    }

    #[test]
    fn thread_local_events_map_to_device_queues() {
        let per_queue = QueueThreads::PerQueue.masks(1);
        assert_eq!(queue_of(&per_queue, 0, 0), Some(HIPRIO_QUEUE_INDEX));
        assert_eq!(queue_of(&per_queue, 1, 0), Some(HIPRIO_QUEUE_INDEX + 1));
        assert_eq!(queue_of(&per_queue, 0, 1), None);
        assert_eq!(queue_of(&per_queue, 2, 0), None);
        let shared = QueueThreads::Shared { threads: 1 }.masks(1);
        assert_eq!(queue_of(&shared, 0, 0), Some(HIPRIO_QUEUE_INDEX));
        assert_eq!(queue_of(&shared, 0, 1), Some(HIPRIO_QUEUE_INDEX + 1));
        assert_eq!(queue_of(&shared, 0, 2), None);
        assert_eq!(queue_of(&shared, 1, 0), None);
        // Four request queues: thread i serves request queue i (+ hiprio on thread 0).
        let shared = QueueThreads::Shared { threads: 4 }.masks(4);
        assert_eq!(queue_of(&shared, 0, 1), Some(1));
        assert_eq!(queue_of(&shared, 3, 0), Some(4));
        assert_eq!(queue_of(&shared, 3, 1), None);
        let per_queue = QueueThreads::PerQueue.masks(4);
        assert_eq!(queue_of(&per_queue, 4, 0), Some(4));
        assert_eq!(queue_of(&per_queue, 5, 0), None);
    }
}
