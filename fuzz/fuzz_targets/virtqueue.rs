//! The device's virtqueue and descriptor-chain handling: `VirtioFsDevice::handle_event` on a
//! split queue the input writes into guest memory (descriptor table, indirect table,
//! available ring and its index, EVENT_IDX's used_event, where the ring indices start), with
//! FUSE requests from the input in the buffers, served by the real request path on a fresh
//! temporary share.
//!
//! Input: a config byte (bit 0 EVENT_IDX, bit 1 the hiprio queue instead of the request
//! queue, bits 2-4 the queue size 2..256), the ring start index, descriptors (an address
//! selector: inside the data area, the indirect table, or a raw 64-bit address; length;
//! flags; next), indirect-table descriptors, the available heads and index, used_event, then
//! the data area's bytes.
//!
//! Checks: the event is handled (never an error, never a panic, no hang: libFuzzer's
//! -timeout), the used index never moves past what the guest made available and every used
//! element names a head inside the queue, nothing changes outside the share, and no
//! descriptor is left open once the device is dropped.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use fuzz_harness::*;
use libfuzzer_sys::fuzz_target;
use vhost_user_backend::{VhostUserBackend, VringMutex, VringT};
use virtiofsd_kr::vhost::device::{QueueThreads, RequestThreads, VirtioFsDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

type Vring = VringMutex<GuestMemoryAtomic<Mem>>;

fn desc(c: &mut Cursor) -> Desc {
    let sel = c.u8();
    let addr = match sel {
        0..=0xdf => READABLE_BASE + u64::from(c.u32()) % (MEM_SIZE as u64 - READABLE_BASE),
        0xe0..=0xef => INDIRECT_TABLE,
        _ => c.u64(),
    };
    let len = match c.u8() {
        0..=0xef => u32::from(c.u16()),
        _ => c.u32(),
    };
    Desc {
        addr,
        len,
        flags: u16::from(c.u8()),
        next: c.u16(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let cfg = c.u8();
    let event_idx = cfg & 1 != 0;
    let hiprio = cfg & 2 != 0;
    let size: u16 = 1 << (1 + (cfg >> 2) % 8);
    let base = c.u16();

    let mem = new_memory();
    let descs: Vec<Desc> = (0..c.u8() as u16 % (size + 1))
        .map(|_| desc(&mut c))
        .collect();
    write_table(&mem, DESC_TABLE, &descs);
    let indirect: Vec<Desc> = (0..c.u8() % 32).map(|_| desc(&mut c)).collect();
    write_table(&mem, INDIRECT_TABLE, &indirect);
    let heads: Vec<u16> = (0..c.u8() as u16 % (size + 1))
        .map(|_| c.u16() % (size + 8))
        .collect();
    for (i, h) in heads.iter().enumerate() {
        let slot = (base as usize + i) % size as usize;
        mem.write_obj(*h, GuestAddress(AVAIL_RING + 4 + 2 * slot as u64))
            .unwrap();
    }
    let avail_idx = match c.u8() {
        0..=0xef => base.wrapping_add(heads.len() as u16),
        _ => c.u16(),
    };
    mem.write_obj(avail_idx, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    // used_event sits after the available ring's entries.
    mem.write_obj(c.u16(), GuestAddress(AVAIL_RING + 4 + 2 * u64::from(size)))
        .unwrap();
    mem.write_obj(base, GuestAddress(USED_RING + 2)).unwrap();
    let payload = c.rest();
    mem.write_slice(payload, GuestAddress(READABLE_BASE))
        .unwrap();

    let fds = open_fds();
    {
        let dir = ShareDir::new();
        let device = VirtioFsDevice::new(
            dir.request_core(),
            RequestThreads::Inline,
            None,
            QueueThreads::Shared { threads: 1 },
            1,
            Duration::ZERO,
        )
        .expect("device");
        let atomic = GuestMemoryAtomic::from(Arc::clone(&mem));
        device.update_memory(atomic.clone()).unwrap();
        device.set_event_idx(event_idx);
        let vrings: Vec<Vring> = (0..2)
            .map(|_| {
                let v = Vring::new(atomic.clone(), 1024).unwrap();
                v.set_queue_size(size);
                v.set_queue_info(DESC_TABLE, AVAIL_RING, USED_RING).unwrap();
                v.set_queue_event_idx(event_idx);
                v.set_queue_next_avail(base);
                v.set_queue_next_used(base);
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            })
            .collect();
        let event = if hiprio { 0 } else { 1 };
        device
            .handle_event(event, EventSet::IN, &vrings, 0)
            .expect("a queue event is always handled");
        // A second kick with nothing new: nothing more may be used.
        let used_once: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        device
            .handle_event(event, EventSet::IN, &vrings, 0)
            .expect("a queue event is always handled");
        let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        assert_eq!(used_once, used_idx, "a second kick used more buffers");

        let used = used_idx.wrapping_sub(base);
        let available = avail_idx.wrapping_sub(base);
        if available <= size {
            assert!(used <= available, "used {used} of {available} available");
        } else {
            assert_eq!(used, 0, "served a ring whose available index is impossible");
        }
        for i in 0..used.min(size) {
            let slot = (base.wrapping_add(i) % size) as u64;
            let id: u32 = mem
                .read_obj(GuestAddress(USED_RING + 4 + 8 * slot))
                .unwrap();
            assert!(
                id < u32::from(size),
                "used element names head {id} of a {size} queue"
            );
        }
        dir.check_escape();
        drop(vrings);
        drop(device);
    }
    assert_eq!(
        open_fds(),
        fds,
        "descriptors left open after the device was dropped: {:?}",
        fd_targets()
    );
});
