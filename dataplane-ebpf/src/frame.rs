//! Bounds-checked access to the XDP frame, in the pointer-compare form the verifier tracks.

use aya_ebpf::programs::XdpContext;
use dataplane_common::packet::PacketBytes;

/// Largest offset we add to a packet pointer: beyond any linear XDP frame (a page), and
/// small enough that offset + N stays under the verifier's 0xffff limit for range tracking.
const MAX_OFFSET: usize = 0x3fff;

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
        if offset > MAX_OFFSET {
            return None;
        }
        let at = self.start + offset;
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
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }
}
