//! Bounds-checked access to the XDP frame, in the pointer-compare form the verifier tracks.

use core::arch::asm;

use aya_ebpf::programs::XdpContext;
use dataplane_common::packet::PacketBytes;

use crate::verifier::{self, MAX_PACKET_OFFSET};

/// The frame of one XDP invocation.
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Frame {
        Frame {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Pointer to `N` writable bytes at `offset`, if inside the frame.
    #[inline(always)]
    pub fn slice_mut<const N: usize>(&self, offset: usize) -> Option<*mut [u8; N]> {
        // The verifier adds only bounded offsets to packet pointers; an offset read back from
        // memory (the parsed packet lives in a map) is unbounded until checked.
        if offset > MAX_PACKET_OFFSET {
            return None;
        }
        let at = self.start + verifier::packet_offset(offset);
        if at + N > self.end {
            return None;
        }
        Some(at as *mut [u8; N])
    }
}

impl PacketBytes for Frame {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: slice_mut checked that all N bytes lie inside the frame.
        self.slice_mut::<N>(offset)
            .map(|p| unsafe { read_words(p.cast::<u8>()) })
    }
}

/// Reads `N` bytes at `p` in as few loads as possible: 8-byte words, then a 4-, 2- and 1-byte
/// tail.
///
/// A plain unaligned read compiles to one load per byte: the BPF target may not assume that
/// misaligned access works, and telling LLVM it does (`allows-misaligned-mem-access`) lets
/// it misalign stack accesses too, which the verifier always refuses. For packet memory the
/// verifier accepts misaligned loads wherever the CPU handles them (x86-64, arm64), so the
/// loads are written out in assembly.
///
/// # Safety
/// `N` bytes at `p` must lie inside the frame, with the bounds check in a form the verifier
/// has seen.
#[inline(always)]
unsafe fn read_words<const N: usize>(p: *const u8) -> [u8; N] {
    /// The result, aligned so the words are stored whole.
    #[repr(C, align(8))]
    struct Words<const N: usize>([u8; N]);
    let mut out = Words([0u8; N]);
    let to = out.0.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= N {
        // SAFETY: inside both buffers; `to + i` is 8-byte aligned.
        unsafe { to.add(i).cast::<u64>().write(load::<8>(p.add(i))) };
        i += 8;
    }
    if i + 4 <= N {
        // SAFETY: as above, 4-byte aligned.
        unsafe { to.add(i).cast::<u32>().write(load::<4>(p.add(i)) as u32) };
        i += 4;
    }
    if i + 2 <= N {
        // SAFETY: as above, 2-byte aligned.
        unsafe { to.add(i).cast::<u16>().write(load::<2>(p.add(i)) as u16) };
        i += 2;
    }
    if i < N {
        // SAFETY: as above.
        unsafe { to.add(i).write(p.add(i).read()) };
    }
    out.0
}

/// One `SIZE`-byte load (2, 4 or 8) at `p`, whatever its alignment, zero-extended.
///
/// # Safety
/// As for [`read_words`].
#[inline(always)]
unsafe fn load<const SIZE: usize>(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: the caller's bounds; the instruction only reads.
    unsafe {
        match SIZE {
            8 => asm!("{v} = *(u64 *)({p} + 0)", v = lateout(reg) v, p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags)),
            4 => asm!("{v} = *(u32 *)({p} + 0)", v = lateout(reg) v, p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags)),
            _ => asm!("{v} = *(u16 *)({p} + 0)", v = lateout(reg) v, p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags)),
        }
    }
    v
}
