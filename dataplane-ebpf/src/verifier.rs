//! What the verifiers of older kernels need spelled out.
//!
//! Kernels before about 6.8 keep a bound that a comparison finds only in the register that
//! was compared. LLVM may compare one copy of a value and then use another, reloaded from
//! the stack; 6.1 then refuses the pointer arithmetic that follows ("math between pkt
//! pointer and register with unbounded min value", "unbounded memory access"). Masking in
//! assembly bounds the very register the arithmetic uses, whatever LLVM does around it.

use core::arch::asm;

use dataplane_common::reason::REASON_COUNT;

/// Largest offset we add to a packet pointer: beyond any linear XDP frame (a page), and
/// small enough that offset + N stays under the verifier's 0xffff limit for range tracking.
pub const MAX_PACKET_OFFSET: usize = 0x3fff;

const REASON_MASK: usize = REASON_COUNT - 1;
const _: () = assert!(REASON_COUNT.is_power_of_two());

/// `offset` masked to [`MAX_PACKET_OFFSET`]; callers check the bound first, so the mask
/// changes nothing but the verifier's view.
#[inline(always)]
pub fn packet_offset(offset: usize) -> usize {
    let mut v = offset;
    // SAFETY: one ALU instruction on a register.
    unsafe {
        asm!("{v} &= {mask}", v = inout(reg) v, mask = const MAX_PACKET_OFFSET,
            options(pure, nomem, nostack, preserves_flags))
    };
    v
}

/// `index` masked to the reason counters' width (`Reason as usize` is always below it).
#[inline(always)]
pub fn reason_index(index: usize) -> usize {
    let mut v = index;
    // SAFETY: one ALU instruction on a register.
    unsafe {
        asm!("{v} &= {mask}", v = inout(reg) v, mask = const REASON_MASK,
            options(pure, nomem, nostack, preserves_flags))
    };
    v
}
