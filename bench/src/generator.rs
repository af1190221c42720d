//! The gateway bench's traffic generator. It needs nothing a kernel build may refuse:
//! BPF_PROG_TEST_RUN with live frames is refused on some (`live_frames_allowed` tells), and
//! these kernels have no pktgen.
//!
//! Seeds: an AF_PACKET socket with a TX ring (TPACKET_V2) on the client's `seed` veth,
//! bypassing the qdisc, as netsniff-ng's `trafgen` sends. The kernel builds an skb per seed
//! and runs the veths' NAPI as bottom halves are re-enabled, frame by frame: about 1 µs a
//! frame, more than any gateway. So each seed is amplified: `bench_amplify` on the peer
//! veth sends `COPIES` copies of it out of `cli` in one broadcast redirect, and the gateway
//! receives them in one batch, as a NIC's ring would deliver them. The generator's cost is
//! still part of every figure; the bench measures it alone (frames dropped by XDP on
//! arrival at the gateway) and reports the gateways' costs net of it.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};

/// Frames in the ring, and each frame's slot: 2 KiB holds a 1514-byte frame and the ring's
/// header.
pub const RING_FRAMES: u32 = 512;
const FRAME_SLOT: u32 = 2048;
const RING_BLOCK: u32 = 1 << 16;
/// Where a frame's bytes start in its slot (TPACKET_V2 without PACKET_TX_HAS_OFF).
const DATA_OFFSET: usize =
    (std::mem::size_of::<libc::tpacket2_hdr>() + TPACKET_ALIGNMENT - 1) & !(TPACKET_ALIGNMENT - 1);
/// From linux/if_packet.h (the libc crate lacks these two).
const TPACKET_ALIGNMENT: usize = 16;
const TP_STATUS_AVAILABLE: u32 = 0;

/// An AF_PACKET socket bound to one interface, with its TX ring mapped.
pub struct PacketRing {
    socket: OwnedFd,
    ring: *mut u8,
    ring_len: usize,
    /// The next slot to fill.
    next: u32,
    /// The frame each slot holds now (re-copied only when the frame changes).
    loaded: Vec<u8>,
}

// SAFETY: the ring is this value's own mapping, used by one thread at a time (&mut self).
unsafe impl Send for PacketRing {}

impl PacketRing {
    /// A ring on interface `ifindex` of the calling thread's network namespace.
    pub fn open(ifindex: u32) -> Result<PacketRing> {
        // SAFETY: plain socket call; protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: fd is a new descriptor we own.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        set_option(
            &socket,
            libc::PACKET_VERSION,
            libc::tpacket_versions::TPACKET_V2 as libc::c_int,
        )
        .context("PACKET_VERSION TPACKET_V2")?;
        set_option(&socket, libc::PACKET_QDISC_BYPASS, 1 as libc::c_int)
            .context("PACKET_QDISC_BYPASS")?;
        let request = libc::tpacket_req {
            tp_block_size: RING_BLOCK,
            tp_block_nr: RING_FRAMES * FRAME_SLOT / RING_BLOCK,
            tp_frame_size: FRAME_SLOT,
            tp_frame_nr: RING_FRAMES,
        };
        set_option(&socket, libc::PACKET_TX_RING, request).context("PACKET_TX_RING")?;
        let ring_len = (RING_FRAMES * FRAME_SLOT) as usize;
        // SAFETY: maps the ring the kernel just made for this socket.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                socket.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the TX ring");
        }
        let ring = PacketRing {
            socket,
            ring: ring.cast(),
            ring_len,
            next: 0,
            loaded: Vec::new(),
        };
        // SAFETY: all zeroes is a valid sockaddr_ll before the fields are set.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        // Protocol 0: the socket sends and receives nothing (the frames carry their own
        // EtherType).
        address.sll_protocol = 0;
        address.sll_ifindex = ifindex as i32;
        // SAFETY: address is a valid sockaddr_ll of the given length.
        let bound = unsafe {
            libc::bind(
                ring.socket.as_raw_fd(),
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding the packet socket to ifindex {ifindex}"));
        }
        Ok(ring)
    }

    fn slot(&self, index: u32) -> *mut u8 {
        // SAFETY: index < RING_FRAMES, so the slot lies inside the mapping.
        unsafe { self.ring.add((index * FRAME_SLOT) as usize) }
    }

    /// Sends `count` copies of `frame`; returns how long it took, which includes the softirq
    /// work the frames trigger on this CPU.
    pub fn send(&mut self, frame: &[u8], count: u32) -> Result<Duration> {
        if frame.len() + DATA_OFFSET > FRAME_SLOT as usize {
            bail!("a {}-byte frame does not fit a ring slot", frame.len());
        }
        if self.loaded != frame {
            for index in 0..RING_FRAMES {
                // SAFETY: the frame fits its slot (checked above); no send is in flight.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        frame.as_ptr(),
                        self.slot(index).add(DATA_OFFSET),
                        frame.len(),
                    )
                };
            }
            self.loaded = frame.to_vec();
        }
        let start = Instant::now();
        let mut left = count;
        while left > 0 {
            let batch = left.min(RING_FRAMES);
            for _ in 0..batch {
                let slot = self.slot(self.next);
                let header = slot.cast::<libc::tpacket2_hdr>();
                // SAFETY: the slot is free (every send below waits for its frames), and
                // the kernel reads tp_status only after this store.
                unsafe {
                    (*header).tp_len = frame.len() as u32;
                    std::ptr::write_volatile(
                        std::ptr::addr_of_mut!((*header).tp_status),
                        libc::TP_STATUS_SEND_REQUEST,
                    );
                }
                self.next = (self.next + 1) % RING_FRAMES;
            }
            // Blocking: returns once every requested frame has been sent and released.
            // SAFETY: no buffer; the ring holds the frames.
            let sent = unsafe {
                libc::sendto(
                    self.socket.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    0,
                    std::ptr::null(),
                    0,
                )
            };
            if sent < 0 {
                return Err(std::io::Error::last_os_error()).context("sendto on the TX ring");
            }
            left -= batch;
        }
        let took = start.elapsed();
        // Frames the kernel refused stay flagged in their slots.
        for index in 0..RING_FRAMES {
            // SAFETY: inside the mapping; the kernel is done with every slot.
            let status = unsafe {
                std::ptr::read_volatile(std::ptr::addr_of!(
                    (*self.slot(index).cast::<libc::tpacket2_hdr>()).tp_status
                ))
            };
            if status != TP_STATUS_AVAILABLE {
                bail!("the kernel left ring frame {index} with status {status:#x}");
            }
        }
        Ok(took)
    }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

fn set_option<T>(socket: &OwnedFd, option: libc::c_int, value: T) -> std::io::Result<()> {
    // SAFETY: value is a plain struct or integer of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this kernel runs BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (some builds
/// refuse it with EPERM, even as root): `Err` names the refusal.
pub fn live_frames_allowed(pass: &Xdp) -> std::result::Result<(), String> {
    let frame = [0u8; 64];
    pass.test_run(TestRunOptions {
        data_in: Some(&frame),
        repeat: 1,
        attrs: TestRunAttrs::new().xdp_live_frames(1),
        ..TestRunOptions::default()
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}
