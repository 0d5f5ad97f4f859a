//! A test vhost-user frontend: plays the VMM (like QEMU) on a virtio-fs daemon's socket.
//!
//! This module owns everything a VMM would own for one device: the guest memory (a memfd
//! mapped here and shared with the daemon through `SET_MEM_TABLE` or `ADD_MEM_REG`), the split
//! virtqueues laid out inside it, the vhost-user feature negotiation, the call/kick eventfds,
//! and the backend request channel (`BACKEND_REQ`, where DAX `SHMEM_MAP` requests will be
//! served by a [`VhostUserFrontendReqHandler`]). It knows nothing about FUSE: it moves byte
//! buffers through descriptor chains ([`TestFrontend::send`]) and, through the raw API
//! ([`TestFrontend::write_descriptor`], [`TestFrontend::push_avail`], ...), lets a test build
//! any chain a hostile driver could, to check that the device survives it.
//!
//! Guest memory layout (guest physical addresses):
//!
//! ```text
//! 0x0000_0000 + q * 0x1_0000   queue q: descriptor table, then avail ring, then used ring
//! 0x0020_0000 .. mem_size      data buffers (bump allocated, wrapping; zeroed when handed out)
//! ```
//!
//! [`TestFrontend::send`] publishes one chain and waits for the used ring to return it;
//! [`TestFrontend::post_request`] and [`TestFrontend::collect`] keep several chains in flight.
//! Descriptor slots rotate through the table and data buffers through the data area, so up to
//! a queue's worth of chains (and of buffer bytes) can be outstanding at once.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserMMap};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Queue 0 of a virtio-fs device: FORGET and INTERRUPT.
pub const HIPRIO_QUEUE: usize = 0;
/// Queue 1 of a virtio-fs device: every other request.
pub const REQUEST_QUEUE: usize = 1;
/// Queues this frontend sets up by default (the hiprio queue and one request queue, as a
/// Linux 6.1 guest uses); [`FrontendConfig::queues`] sets another number.
pub const NUM_QUEUES: usize = 2;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Where queue `q`'s rings start: `q * RING_STRIDE`.
const RING_STRIDE: u64 = 0x1_0000;
/// Offsets of the avail and used rings inside a queue's ring area (room for 1024 entries).
const AVAIL_OFFSET: u64 = 0x4000;
const USED_OFFSET: u64 = 0x5000;
/// Largest queue the ring areas have room for.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most queues the ring areas below [`DATA_BASE`] have room for.
pub const MAX_QUEUES: usize = (DATA_BASE / RING_STRIDE) as usize;
/// First guest address of the data buffer area.
pub const DATA_BASE: u64 = 0x20_0000;

/// Errors of the test frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("vhost-user {op}: {source}")]
    Vhost {
        op: &'static str,
        source: vhost::Error,
    },
    #[error("the backend does not offer {0}")]
    MissingFeature(&'static str),
    #[error("the backend offers {offered} queues, {needed} are needed")]
    TooFewQueues { offered: u64, needed: usize },
    #[error("creating guest memory: {0}")]
    Memfd(std::io::Error),
    #[error("mapping guest memory: {0}")]
    Mmap(vm_memory::mmap::FromRangesError),
    #[error("guest memory has no file-backed region to share")]
    NoSharedRegion,
    #[error("guest memory access at {addr:#x}: {source}")]
    Memory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("backend request channel: {0}")]
    BackendChannel(std::io::Error),
    #[error("bad configuration: {0}")]
    Config(&'static str),
    #[error("no queue {0}")]
    NoQueue(usize),
    #[error("queue {0} is already started")]
    QueueStarted(usize),
    #[error("{need} bytes do not fit in the {have}-byte data area")]
    NoSpace { need: u64, have: u64 },
    #[error("a chain of {len} descriptors does not fit in a queue of {size}")]
    ChainTooLong { len: usize, size: u16 },
    #[error("descriptor slot {slot} is outside a table of {size}")]
    SlotOutOfRange { slot: u16, size: u16 },
    #[error(
        "queue {queue}: no used buffer after {waited:?} (used ring advanced without a call: {used_advanced})"
    )]
    Timeout {
        queue: usize,
        waited: Duration,
        used_advanced: bool,
    },
    #[error(
        "queue {queue}: the device returned descriptor {got}, the pending chain is {expected}"
    )]
    UnexpectedUsed {
        queue: usize,
        expected: u16,
        got: u32,
    },
    #[error("queue {queue}: the device claims {len} bytes written into {capacity} writable bytes")]
    UsedLenTooLong {
        queue: usize,
        len: u32,
        capacity: u64,
    },
}

type Result<T> = std::result::Result<T, FrontendError>;

fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Vhost { op, source }
}

/// How the frontend shares guest memory with the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMessage {
    /// `SET_MEM_TABLE` (every VMM).
    SetMemTable,
    /// `ADD_MEM_REG` (QEMU when `CONFIGURE_MEM_SLOTS` is negotiated).
    AddMemRegion,
}

/// What the frontend negotiates and how it lays out the device.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Bytes of guest memory.
    pub mem_size: usize,
    /// Entries per virtqueue (a power of two, at most [`MAX_QUEUE_SIZE`]).
    pub queue_size: u16,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` when offered.
    pub event_idx: bool,
    /// Negotiate `VIRTIO_RING_F_INDIRECT_DESC` when offered.
    pub indirect_desc: bool,
    /// Negotiate `REPLY_ACK` when offered, so every vhost-user message is acknowledged.
    pub reply_ack: bool,
    /// Open the backend request channel when `BACKEND_REQ` is offered.
    pub backend_req: bool,
    /// Which message shares guest memory.
    pub memory_message: MemoryMessage,
    /// Negotiate the `SHMEM` protocol feature (DAX window) when offered, and read the
    /// backend's shared memory regions with `GET_SHMEM_CONFIG`.
    pub shmem: bool,
    /// How long [`TestFrontend::send`] waits for the used buffer: a deadline for a daemon that
    /// never answers, generous enough for a loaded CI machine (2 cores, guests under TCG and a
    /// sanitizer build beside it); a test expecting no reply waits its own shorter time.
    pub reply_timeout: Duration,
    /// Queues started at connect: the hiprio queue and `queues - 1` request queues, as a
    /// guest driver sets them up (QEMU starts only the queues the driver set up). More can be
    /// started later with [`TestFrontend::start_queue`], up to what the backend offers.
    pub queues: usize,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            mem_size: 64 << 20,
            queue_size: 256,
            event_idx: true,
            indirect_desc: true,
            reply_ack: true,
            backend_req: true,
            memory_message: MemoryMessage::SetMemTable,
            shmem: false,
            reply_timeout: Duration::from_secs(20),
            queues: NUM_QUEUES,
        }
    }
}

/// One split-virtqueue descriptor, exactly as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDescriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl RawDescriptor {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDescriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    /// The 16 little-endian bytes of a `struct virtq_desc`.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// One buffer of a chain built by [`TestFrontend::post_chain`]; `next` is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Segment {
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Segment {
            addr: addr.0,
            len,
            writable: false,
        }
    }

    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Segment {
            addr: addr.0,
            len,
            writable: true,
        }
    }
}

/// An element of the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the returned chain.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// The device's answer to one chain sent with [`TestFrontend::send`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Used length the device reported.
    pub len: u32,
    /// The first `len` bytes of the writable buffers, in chain order.
    pub bytes: Vec<u8>,
}

/// A chain published by [`TestFrontend::post_request`] that the device has not returned yet.
#[derive(Debug, Clone)]
pub struct PendingChain {
    /// Queue it was published on.
    pub queue: usize,
    /// Its head descriptor index.
    pub head: u16,
    /// Its writable buffers, in chain order.
    pub writable: Vec<(GuestAddress, u32)>,
}

/// Services the backend may ask of the frontend on the `BACKEND_REQ` channel; this default
/// one refuses everything (ENOSYS) and counts what it was asked. DAX tests will bring a
/// handler that maps `SHMEM_MAP` requests into a cache window.
#[derive(Debug, Default)]
pub struct RefusingHandler {
    /// Requests seen, by name, in arrival order.
    pub seen: Mutex<Vec<&'static str>>,
}

impl RefusingHandler {
    fn record(&self, what: &'static str) -> HandlerResult<u64> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(what);
        }
        Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

impl VhostUserFrontendReqHandler for RefusingHandler {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.record("config_change")
    }

    fn shmem_map(&self, _req: &VhostUserMMap, _fd: &dyn AsRawFd) -> HandlerResult<u64> {
        self.record("shmem_map")
    }

    fn shmem_unmap(&self, _req: &VhostUserMMap) -> HandlerResult<u64> {
        self.record("shmem_unmap")
    }
}

/// The frontend end of the backend request channel, served by its own thread.
struct BackendChannel {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BackendChannel {
    /// Starts serving `handler`; returns the channel and the descriptor to give the backend.
    fn start<H>(handler: Arc<H>, reply_ack: bool) -> Result<(Self, FrontendReqHandler<H>)>
    where
        H: VhostUserFrontendReqHandler + Send + Sync + 'static,
    {
        let mut server =
            FrontendReqHandler::new(handler).map_err(|e| vhost_err("backend channel")(e.into()))?;
        server.set_reply_ack_flag(reply_ack);
        let stop = Arc::new(AtomicBool::new(false));
        Ok((BackendChannel { stop, thread: None }, server))
    }

    /// Runs the server until the backend hangs up or the frontend is dropped.
    fn run<H>(&mut self, mut server: FrontendReqHandler<H>) -> Result<()>
    where
        H: VhostUserFrontendReqHandler + Send + Sync + 'static,
    {
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name("vu-backend-req".to_string())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match wait_readable(server.as_raw_fd(), Duration::from_millis(100)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => return,
                    }
                    match server.handle_request() {
                        Ok(_) => {}
                        // A refused or malformed request: the backend got its answer.
                        Err(vhost::vhost_user::Error::ReqHandlerError(_))
                        | Err(vhost::vhost_user::Error::InvalidMessage) => {}
                        Err(_) => return,
                    }
                }
            })
            .map_err(FrontendError::BackendChannel)?;
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn wait_readable(fd: RawFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count
        // of exactly one entry.
        let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(ret > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0);
    }
}

/// One split virtqueue as the driver sees it.
struct Virtqueue {
    size: u16,
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    kick: EventFd,
    call: EventFd,
    /// Next index the driver publishes in the avail ring.
    avail_idx: u16,
    /// Used entries the driver has consumed.
    used_seen: u16,
    /// Next descriptor slot to hand out (slots rotate through the table).
    next_slot: u16,
}

/// A vhost-user frontend with its guest memory and virtqueues, connected to one backend.
pub struct TestFrontend {
    // Declared first so it is dropped (and the daemon sees the hang-up) before the memory
    // it maps goes away here.
    vu: Frontend,
    backend_channel: Option<BackendChannel>,
    mem: GuestMemoryMmap<()>,
    /// By queue index; `None`: not started.
    queues: Vec<Option<Virtqueue>>,
    config: FrontendConfig,
    acked_features: u64,
    acked_protocol: VhostUserProtocolFeatures,
    alloc_next: u64,
}

impl TestFrontend {
    /// Connects with the default configuration (like QEMU's vhost-user-fs-pci).
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(socket, FrontendConfig::default())
    }

    /// Connects with `config`; backend requests go to a [`RefusingHandler`].
    pub fn connect_with(socket: impl AsRef<Path>, config: FrontendConfig) -> Result<Self> {
        Self::connect_with_handler(socket, config, Arc::new(RefusingHandler::default()))
    }

    /// Connects with `config`, serving backend requests with `handler`.
    pub fn connect_with_handler<H>(
        socket: impl AsRef<Path>,
        config: FrontendConfig,
        handler: Arc<H>,
    ) -> Result<Self>
    where
        H: VhostUserFrontendReqHandler + Send + Sync + 'static,
    {
        if !config.queue_size.is_power_of_two() || config.queue_size > MAX_QUEUE_SIZE {
            return Err(FrontendError::Config(
                "queue_size must be a power of two up to 1024",
            ));
        }
        if (config.mem_size as u64) <= DATA_BASE + 0x1000 {
            return Err(FrontendError::Config("mem_size leaves no room for data"));
        }
        if !(1..=MAX_QUEUES).contains(&config.queues) {
            return Err(FrontendError::Config("queues must be 1 to MAX_QUEUES"));
        }
        let mem = create_memory(config.mem_size)?;
        let vu = Frontend::connect(socket, config.queues as u64).map_err(vhost_err("connect"))?;
        let mut frontend = TestFrontend {
            vu,
            backend_channel: None,
            mem,
            queues: Vec::new(),
            config,
            acked_features: 0,
            acked_protocol: VhostUserProtocolFeatures::empty(),
            alloc_next: DATA_BASE,
        };
        frontend.negotiate(handler)?;
        frontend.setup_queues()?;
        Ok(frontend)
    }

    /// Feature and protocol negotiation, memory table, backend channel (QEMU's order).
    fn negotiate<H>(&mut self, handler: Arc<H>) -> Result<()>
    where
        H: VhostUserFrontendReqHandler + Send + Sync + 'static,
    {
        self.vu.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered = self.vu.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FrontendError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if offered & protocol_bit == 0 {
            return Err(FrontendError::MissingFeature(
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        let mut features = (1 << VIRTIO_F_VERSION_1) | protocol_bit;
        if self.config.event_idx {
            features |= offered & (1 << VIRTIO_RING_F_EVENT_IDX);
        }
        if self.config.indirect_desc {
            features |= offered & (1 << VIRTIO_RING_F_INDIRECT_DESC);
        }

        let offered_protocol = self
            .vu
            .get_protocol_features()
            .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
        let mut wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::CONFIG;
        if self.config.reply_ack {
            wanted |= VhostUserProtocolFeatures::REPLY_ACK;
        }
        if self.config.backend_req {
            wanted |=
                VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::BACKEND_SEND_FD;
        }
        if self.config.shmem {
            wanted |= VhostUserProtocolFeatures::SHMEM;
        }
        let protocol = offered_protocol & wanted;
        self.vu
            .set_protocol_features(protocol)
            .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        self.acked_protocol = protocol;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // From now on every request without a reply of its own is acknowledged, so a
            // refusal surfaces as an error of the call that caused it.
            self.vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = self
                .vu
                .get_queue_num()
                .map_err(vhost_err("GET_QUEUE_NUM"))?;
            if n < self.config.queues as u64 {
                return Err(FrontendError::TooFewQueues {
                    offered: n,
                    needed: self.config.queues,
                });
            }
        }

        let region = self.memory_region_info()?;
        match self.config.memory_message {
            MemoryMessage::SetMemTable => self
                .vu
                .set_mem_table(&[region])
                .map_err(vhost_err("SET_MEM_TABLE"))?,
            MemoryMessage::AddMemRegion => {
                if !protocol.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
                    return Err(FrontendError::MissingFeature("CONFIGURE_MEM_SLOTS"));
                }
                let slots = self
                    .vu
                    .get_max_mem_slots()
                    .map_err(vhost_err("GET_MAX_MEM_SLOTS"))?;
                if slots == 0 {
                    return Err(FrontendError::MissingFeature("a memory slot"));
                }
                self.vu
                    .add_mem_region(&region)
                    .map_err(vhost_err("ADD_MEM_REG"))?;
            }
        }

        if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let (mut channel, server) = BackendChannel::start(
                handler,
                protocol.contains(VhostUserProtocolFeatures::REPLY_ACK),
            )?;
            let fd = server.get_tx_raw_fd();
            self.vu
                .set_backend_request_fd(&fd)
                .map_err(vhost_err("SET_BACKEND_REQ_FD"))?;
            channel.run(server)?;
            self.backend_channel = Some(channel);
        }

        self.vu
            .set_features(features)
            .map_err(vhost_err("SET_FEATURES"))?;
        self.acked_features = features;
        Ok(())
    }

    /// The one memory region, as the backend must see it.
    fn memory_region_info(&self) -> Result<VhostUserMemoryRegionInfo> {
        let region = self
            .mem
            .iter()
            .next()
            .ok_or(FrontendError::NoSharedRegion)?;
        VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|_| FrontendError::NoSharedRegion)
    }

    /// The frontend's (VMM's) virtual address of guest address `gpa`, as vring addresses go
    /// on the wire.
    fn host_address(&self, gpa: GuestAddress) -> Result<u64> {
        self.mem
            .get_host_address(gpa)
            .map(|p| p as u64)
            .map_err(|source| FrontendError::Memory {
                addr: gpa.0,
                source,
            })
    }

    /// What QEMU does when the guest resets: stops every started queue (`SET_VRING_ENABLE 0`,
    /// `GET_VRING_BASE`), then starts the device again with the same features and memory
    /// table and fresh, empty rings. Returns the avail index the backend reported for each
    /// started queue when it stopped.
    pub fn restart_queues(&mut self) -> Result<Vec<u16>> {
        let started: Vec<usize> = (0..self.queues.len())
            .filter(|&q| self.queues[q].is_some())
            .collect();
        let mut bases = Vec::with_capacity(started.len());
        for &index in &started {
            self.vu
                .set_vring_enable(index, false)
                .map_err(vhost_err("SET_VRING_ENABLE"))?;
            let base = self
                .vu
                .get_vring_base(index)
                .map_err(vhost_err("GET_VRING_BASE"))?;
            bases.push(base as u16);
        }
        self.queues.clear();
        self.vu
            .set_features(self.acked_features)
            .map_err(vhost_err("SET_FEATURES"))?;
        let region = self.memory_region_info()?;
        self.vu
            .set_mem_table(&[region])
            .map_err(vhost_err("SET_MEM_TABLE"))?;
        for index in started {
            self.start_queue(index)?;
        }
        Ok(bases)
    }

    fn setup_queues(&mut self) -> Result<()> {
        for index in 0..self.config.queues {
            self.start_queue(index)?;
        }
        Ok(())
    }

    /// Sets up queue `index` and starts it as QEMU does when the guest driver has set it up
    /// (`SET_VRING_NUM`, `_ADDR`, `_BASE`, `_CALL`, `_KICK`, `_ENABLE`): at connect for the
    /// first [`FrontendConfig::queues`], later for a queue a driver starts after the others.
    pub fn start_queue(&mut self, index: usize) -> Result<()> {
        if index >= MAX_QUEUES {
            return Err(FrontendError::NoQueue(index));
        }
        if self.queues.get(index).is_some_and(Option::is_some) {
            return Err(FrontendError::QueueStarted(index));
        }
        let size = self.config.queue_size;
        let base = GuestAddress(index as u64 * RING_STRIDE);
        let queue = Virtqueue {
            size,
            desc_table: base,
            avail: GuestAddress(base.0 + AVAIL_OFFSET),
            used: GuestAddress(base.0 + USED_OFFSET),
            kick: EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?,
            avail_idx: 0,
            used_seen: 0,
            next_slot: 0,
        };
        // Rings start zeroed: flags 0 (interrupts wanted), idx 0.
        self.fill(queue.desc_table, RING_STRIDE as usize, 0)?;
        let addrs = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.host_address(queue.desc_table)?,
            used_ring_addr: self.host_address(queue.used)?,
            avail_ring_addr: self.host_address(queue.avail)?,
            log_addr: None,
        };
        self.vu
            .set_vring_num(index, size)
            .map_err(vhost_err("SET_VRING_NUM"))?;
        self.vu
            .set_vring_addr(index, &addrs)
            .map_err(vhost_err("SET_VRING_ADDR"))?;
        self.vu
            .set_vring_base(index, 0)
            .map_err(vhost_err("SET_VRING_BASE"))?;
        self.vu
            .set_vring_call(index, &queue.call)
            .map_err(vhost_err("SET_VRING_CALL"))?;
        self.vu
            .set_vring_kick(index, &queue.kick)
            .map_err(vhost_err("SET_VRING_KICK"))?;
        self.vu
            .set_vring_enable(index, true)
            .map_err(vhost_err("SET_VRING_ENABLE"))?;
        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        self.queues[index] = Some(queue);
        Ok(())
    }

    /// The virtio features acknowledged to the backend.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The backend's shared memory region sizes (`GET_SHMEM_CONFIG`; needs `SHMEM`).
    pub fn shmem_regions(&mut self) -> Result<Vec<u64>> {
        let config = self
            .vu
            .get_shmem_config()
            .map_err(vhost_err("GET_SHMEM_CONFIG"))?;
        let n = (config.nregions as usize).min(config.memory_sizes.len());
        Ok(config.memory_sizes[..n].to_vec())
    }

    /// The vhost-user protocol features acknowledged to the backend.
    pub fn acked_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.acked_protocol
    }

    /// Whether the backend request channel is open.
    pub fn has_backend_channel(&self) -> bool {
        self.backend_channel.is_some()
    }

    /// The configuration this frontend was connected with.
    pub fn config(&self) -> &FrontendConfig {
        &self.config
    }

    /// The vhost-user connection, for messages this type has no method for.
    pub fn vhost_user(&mut self) -> &mut Frontend {
        &mut self.vu
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Size of guest memory in bytes (the first address past it).
    pub fn mem_size(&self) -> u64 {
        self.config.mem_size as u64
    }

    /// Entries in queue `queue`.
    pub fn queue_size(&self, queue: usize) -> Result<u16> {
        Ok(self.queue(queue)?.size)
    }

    fn queue(&self, queue: usize) -> Result<&Virtqueue> {
        self.queues
            .get(queue)
            .and_then(Option::as_ref)
            .ok_or(FrontendError::NoQueue(queue))
    }

    fn queue_mut(&mut self, queue: usize) -> Result<&mut Virtqueue> {
        self.queues
            .get_mut(queue)
            .and_then(Option::as_mut)
            .ok_or(FrontendError::NoQueue(queue))
    }

    // ---- guest memory -------------------------------------------------------------------

    /// Reserves `len` zeroed bytes in the data area (8-byte aligned) and returns their address.
    /// The area is reused round-robin, so buffers are only valid until the next few requests.
    pub fn alloc(&mut self, len: usize) -> Result<GuestAddress> {
        let len64 = len as u64;
        let end = self.mem_size();
        let have = end - DATA_BASE;
        if len64 > have {
            return Err(FrontendError::NoSpace { need: len64, have });
        }
        if self.alloc_next + len64 > end {
            self.alloc_next = DATA_BASE;
        }
        let addr = GuestAddress(self.alloc_next);
        self.alloc_next = (self.alloc_next + len64 + 7) & !7;
        self.fill(addr, len, 0)?;
        Ok(addr)
    }

    /// Copies `bytes` into the data area and returns their address.
    pub fn stage(&mut self, bytes: &[u8]) -> Result<GuestAddress> {
        let addr = self.alloc(bytes.len())?;
        self.write_memory(addr, bytes)?;
        Ok(addr)
    }

    /// Writes `bytes` at guest address `addr`.
    pub fn write_memory(&self, addr: GuestAddress, bytes: &[u8]) -> Result<()> {
        self.mem
            .write_slice(bytes, addr)
            .map_err(|source| FrontendError::Memory {
                addr: addr.0,
                source,
            })
    }

    /// Reads `len` bytes at guest address `addr`.
    pub fn read_memory(&self, addr: GuestAddress, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_slice(&mut buf, addr)
            .map_err(|source| FrontendError::Memory {
                addr: addr.0,
                source,
            })?;
        Ok(buf)
    }

    fn fill(&self, addr: GuestAddress, len: usize, byte: u8) -> Result<()> {
        const CHUNK: usize = 1 << 16;
        let chunk = vec![byte; CHUNK.min(len)];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_memory(GuestAddress(addr.0 + done as u64), &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    fn write_u16(&self, addr: GuestAddress, value: u16) -> Result<()> {
        self.write_memory(addr, &value.to_le_bytes())
    }

    fn read_u32(&self, addr: GuestAddress) -> Result<u32> {
        let b = self.read_memory(addr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn load_used_idx(&self, queue: &Virtqueue) -> Result<u16> {
        let addr = GuestAddress(queue.used.0 + 2);
        self.mem
            .load::<u16>(addr, Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|source| FrontendError::Memory {
                addr: addr.0,
                source,
            })
    }

    // ---- raw virtqueue access -----------------------------------------------------------

    /// Hands out `n` descriptor slots of `queue` (rotating through the table, so consecutive
    /// requests use different heads).
    pub fn take_slots(&mut self, queue: usize, n: usize) -> Result<Vec<u16>> {
        let q = self.queue_mut(queue)?;
        if n > q.size as usize {
            return Err(FrontendError::ChainTooLong {
                len: n,
                size: q.size,
            });
        }
        let slots = (0..n)
            .map(|i| ((q.next_slot as usize + i) % q.size as usize) as u16)
            .collect();
        q.next_slot = ((q.next_slot as usize + n) % q.size as usize) as u16;
        Ok(slots)
    }

    /// Writes `desc` into slot `slot` of `queue`'s descriptor table (any slot below the queue
    /// size; the value itself is not checked).
    pub fn write_descriptor(&self, queue: usize, slot: u16, desc: RawDescriptor) -> Result<()> {
        let q = self.queue(queue)?;
        if slot >= q.size {
            return Err(FrontendError::SlotOutOfRange { slot, size: q.size });
        }
        self.write_memory(
            GuestAddress(q.desc_table.0 + 16 * u64::from(slot)),
            &desc.to_bytes(),
        )
    }

    /// Copies an indirect descriptor table into the data area; returns its address and
    /// byte length, for a descriptor with [`DESC_F_INDIRECT`].
    pub fn stage_indirect_table(&mut self, descs: &[RawDescriptor]) -> Result<(GuestAddress, u32)> {
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.to_bytes()).collect();
        let addr = self.stage(&bytes)?;
        Ok((addr, bytes.len() as u32))
    }

    /// Publishes `head` (any value, even one past the table) in `queue`'s avail ring and kicks.
    pub fn push_avail(&mut self, queue: usize, head: u16) -> Result<()> {
        self.push_avail_quiet(queue, head)?;
        self.kick(queue)
    }

    /// Publishes `head` in `queue`'s avail ring without kicking (to batch several chains).
    pub fn push_avail_quiet(&mut self, queue: usize, head: u16) -> Result<()> {
        let q = self.queue(queue)?;
        let (avail, size, idx) = (q.avail, q.size, q.avail_idx);
        let entry = GuestAddress(avail.0 + 4 + 2 * u64::from(idx % size));
        self.write_u16(entry, head)?;
        self.arm_used_event(queue)?;
        let new_idx = idx.wrapping_add(1);
        self.publish_avail_idx(queue, new_idx)?;
        self.queue_mut(queue)?.avail_idx = new_idx;
        Ok(())
    }

    fn event_idx(&self) -> bool {
        self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    /// With EVENT_IDX, asks for an interrupt as soon as the device adds a used entry past
    /// the ones consumed so far (`used_event`, like Linux's `virtqueue_enable_cb`).
    fn arm_used_event(&self, queue: usize) -> Result<()> {
        if !self.event_idx() {
            return Ok(());
        }
        let q = self.queue(queue)?;
        let addr = GuestAddress(q.avail.0 + 4 + 2 * u64::from(q.size));
        self.mem
            .store(q.used_seen.to_le(), addr, Ordering::SeqCst)
            .map_err(|source| FrontendError::Memory {
                addr: addr.0,
                source,
            })?;
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(())
    }

    /// Stores `idx` as `queue`'s avail index without touching the ring entries or this
    /// frontend's bookkeeping (for a driver that lies about how much it made available).
    pub fn publish_avail_idx(&self, queue: usize, idx: u16) -> Result<()> {
        let q = self.queue(queue)?;
        let addr = GuestAddress(q.avail.0 + 2);
        self.mem
            .store(idx.to_le(), addr, Ordering::Release)
            .map_err(|source| FrontendError::Memory {
                addr: addr.0,
                source,
            })
    }

    /// The avail index this frontend has published on `queue`.
    pub fn avail_idx(&self, queue: usize) -> Result<u16> {
        Ok(self.queue(queue)?.avail_idx)
    }

    /// Notifies the device that `queue` has new buffers.
    pub fn kick(&self, queue: usize) -> Result<()> {
        self.queue(queue)?
            .kick
            .write(1)
            .map_err(FrontendError::EventFd)
    }

    /// Kicks of `queue` the device has not consumed from its eventfd (reading them resets the
    /// count). The daemon registers kick eventfds edge-triggered and never reads them, so
    /// after N kicks this is N; a backend that reads its kicks leaves 0.
    pub fn unread_kicks(&self, queue: usize) -> Result<u64> {
        match self.queue(queue)?.kick.read() {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(FrontendError::EventFd(e)),
        }
    }

    /// Takes the next used element of `queue` if the device has added one.
    pub fn try_pop_used(&mut self, queue: usize) -> Result<Option<UsedElem>> {
        let q = self.queue(queue)?;
        let used_idx = self.load_used_idx(q)?;
        if used_idx == q.used_seen {
            return Ok(None);
        }
        let elem = GuestAddress(q.used.0 + 4 + 8 * u64::from(q.used_seen % q.size));
        let id = self.read_u32(elem)?;
        let len = self.read_u32(GuestAddress(elem.0 + 4))?;
        let q = self.queue_mut(queue)?;
        q.used_seen = q.used_seen.wrapping_add(1);
        Ok(Some(UsedElem { id, len }))
    }

    /// Waits up to `timeout` for the device to return a buffer on `queue` and signal the
    /// call eventfd.
    pub fn wait_used(&mut self, queue: usize, timeout: Duration) -> Result<UsedElem> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            if let Some(elem) = self.try_pop_used(queue)? {
                // Consume the interrupt that came with it (if it already came).
                let _ = self.queue(queue)?.call.read();
                return Ok(elem);
            }
            // Ask for the interrupt, then look again: an entry added before the request took
            // effect would not be signalled.
            self.arm_used_event(queue)?;
            if let Some(elem) = self.try_pop_used(queue)? {
                let _ = self.queue(queue)?.call.read();
                return Ok(elem);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FrontendError::Timeout {
                    queue,
                    waited: now - start,
                    used_advanced: false,
                });
            }
            let fd = self.queue(queue)?.call.as_raw_fd();
            let signalled = wait_readable(fd, deadline - now).map_err(FrontendError::EventFd)?;
            if signalled {
                let _ = self.queue(queue)?.call.read();
            } else if self.try_pop_used(queue)?.is_some() {
                // The device used the buffer but never told us.
                return Err(FrontendError::Timeout {
                    queue,
                    waited: start.elapsed(),
                    used_advanced: true,
                });
            }
        }
    }

    /// Whether the device returns nothing more on `queue` for `quiet` (drains what it does).
    pub fn drain_used(&mut self, queue: usize, quiet: Duration) -> Result<Vec<UsedElem>> {
        let mut got = Vec::new();
        loop {
            match self.wait_used(queue, quiet) {
                Ok(e) => got.push(e),
                Err(FrontendError::Timeout { .. }) => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }

    // ---- chains ---------------------------------------------------------------------------

    /// Writes `segments` as one chain into fresh slots of `queue`, linked in order, and
    /// publishes it; returns the head slot. Nothing checks that the segments make sense.
    pub fn post_chain(&mut self, queue: usize, segments: &[Segment]) -> Result<u16> {
        let slots = self.take_slots(queue, segments.len().max(1))?;
        self.write_chain(queue, &slots, segments)?;
        self.push_avail(queue, slots[0])?;
        Ok(slots[0])
    }

    /// Writes `segments` into descriptor `slots`, each linked to the next.
    fn write_chain(&self, queue: usize, slots: &[u16], segments: &[Segment]) -> Result<()> {
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut flags = if seg.writable { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = if last { 0 } else { slots[i + 1] };
            self.write_descriptor(
                queue,
                slots[i],
                RawDescriptor::new(seg.addr, seg.len, flags, next),
            )?;
        }
        Ok(())
    }

    /// Stages `readable` buffers and `writable` buffers of the given sizes, and publishes them
    /// as one chain on `queue` (kicking the device if `kick`).
    pub fn post_request(
        &mut self,
        queue: usize,
        readable: &[&[u8]],
        writable: &[usize],
        kick: bool,
    ) -> Result<PendingChain> {
        let mut segments = Vec::with_capacity(readable.len() + writable.len());
        for r in readable {
            let addr = self.stage(r)?;
            segments.push(Segment::readable(addr, r.len() as u32));
        }
        for w in writable {
            let addr = self.alloc(*w)?;
            segments.push(Segment::writable(addr, *w as u32));
        }
        let slots = self.take_slots(queue, segments.len().max(1))?;
        self.write_chain(queue, &slots, &segments)?;
        self.push_avail_quiet(queue, slots[0])?;
        if kick {
            self.kick(queue)?;
        }
        Ok(PendingChain {
            queue,
            head: slots[0],
            writable: segments
                .iter()
                .filter(|s| s.writable)
                .map(|s| (GuestAddress(s.addr), s.len))
                .collect(),
        })
    }

    /// The reply to `pending`, given the used element the device returned for it.
    pub fn complete(&self, pending: &PendingChain, used: UsedElem) -> Result<Reply> {
        let queue = pending.queue;
        if used.id != u32::from(pending.head) {
            return Err(FrontendError::UnexpectedUsed {
                queue,
                expected: pending.head,
                got: used.id,
            });
        }
        let capacity: u64 = pending.writable.iter().map(|w| u64::from(w.1)).sum();
        if u64::from(used.len) > capacity {
            return Err(FrontendError::UsedLenTooLong {
                queue,
                len: used.len,
                capacity,
            });
        }
        let mut bytes = Vec::with_capacity(used.len as usize);
        let mut left = used.len as usize;
        for (addr, len) in &pending.writable {
            if left == 0 {
                break;
            }
            let n = left.min(*len as usize);
            bytes.extend(self.read_memory(*addr, n)?);
            left -= n;
        }
        Ok(Reply {
            head: pending.head,
            len: used.len,
            bytes,
        })
    }

    /// Waits for every chain of `pending` (all on one queue) and returns the replies in the
    /// order the device completed them.
    pub fn collect(
        &mut self,
        mut pending: Vec<PendingChain>,
        timeout: Duration,
    ) -> Result<Vec<Reply>> {
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let queue = pending[0].queue;
            let left = deadline.saturating_duration_since(Instant::now());
            let used = self.wait_used(queue, left)?;
            let Some(i) = pending.iter().position(|p| u32::from(p.head) == used.id) else {
                return Err(FrontendError::UnexpectedUsed {
                    queue,
                    expected: pending[0].head,
                    got: used.id,
                });
            };
            let p = pending.swap_remove(i);
            replies.push(self.complete(&p, used)?);
        }
        Ok(replies)
    }

    /// Sends `readable` buffers followed by `writable` buffers of the given sizes as one chain
    /// on `queue`, waits for the device to return it, and reads back what it wrote.
    pub fn send_chain(
        &mut self,
        queue: usize,
        readable: &[&[u8]],
        writable: &[usize],
    ) -> Result<Reply> {
        let pending = self.post_request(queue, readable, writable, true)?;
        let timeout = self.config.reply_timeout;
        let used = self.wait_used(queue, timeout)?;
        self.complete(&pending, used)
    }

    /// Sends one request on the request queue: `readable` buffers (one descriptor each), then
    /// one writable buffer of `writable_len` bytes (none if 0).
    pub fn send(&mut self, readable: &[&[u8]], writable_len: usize) -> Result<Reply> {
        let writable: &[usize] = if writable_len == 0 {
            &[]
        } else {
            &[writable_len]
        };
        self.send_chain(REQUEST_QUEUE, readable, writable)
    }
}

impl Drop for TestFrontend {
    fn drop(&mut self) {
        // Stop the backend channel thread; the vhost-user socket closes when `vu` drops.
        self.backend_channel.take();
    }
}

/// A memfd of `size` bytes mapped shared as guest memory at guest address 0.
fn create_memory(size: usize) -> Result<GuestMemoryMmap<()>> {
    let fd = nix::sys::memfd::memfd_create(
        c"vm-tests-guest-ram",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| FrontendError::Memfd(e.into()))?;
    let file = File::from(fd);
    file.set_len(size as u64).map_err(FrontendError::Memfd)?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(FrontendError::Mmap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryRegion;

    #[test]
    fn descriptor_bytes_are_little_endian_virtq_desc() {
        let d = RawDescriptor::new(0x1122_3344_5566_7788, 0x99aa_bbcc, 0x0102, 0x0304);
        assert_eq!(
            d.to_bytes(),
            [
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xcc, 0xbb, 0xaa, 0x99, 0x02, 0x01,
                0x04, 0x03
            ]
        );
    }

    #[test]
    fn guest_memory_is_a_shared_file_mapping() {
        let mem = create_memory(4 << 20).unwrap();
        let region = mem.iter().next().unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        assert_eq!(info.guest_phys_addr, 0);
        assert_eq!(info.memory_size, 4 << 20);
        assert!(info.mmap_handle >= 0);
        // Writes through the mapping land in the file the daemon will map.
        mem.write_slice(b"hello", GuestAddress(4096)).unwrap();
        let mut buf = [0u8; 5];
        let file = region.file_offset().unwrap().file();
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, 4096).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
