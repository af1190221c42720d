//! TCP window control (see `dataplane_common::window`): a SYN-ACK records its direction's
//! window scale in the return table; the other direction's data, once classified into a
//! class with window control, names that class there; the direction's ACKs then advertise
//! at most the class's window.

use dataplane_common::{
    checksum::replace_word,
    flow::FlowState,
    maps::{FlowKey, PolicySlot, ReturnEntry},
    packet::{tcp_handshake_options, PacketBytes, PacketMeta, TcpMeta},
    reason::Reason,
    window::{clamp_window, flow_window, rtt_average_us, rtt_sample_us},
    wire::TCP_MIN_HLEN,
};

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    frame::Frame,
    maps::{POLICERS, TCP_OPTIONS_SCRATCH, TCP_RETURNS},
};

/// Names `class` in the return table entry of the reply direction of a data-carrying flow
/// (once per flow entry), and takes the connection's round trip into the class's average
/// when its SYN was seen.
#[inline(always)]
pub fn register(meta: &PacketMeta, flow: &mut FlowState, class: u32, generation: u32) {
    if flow.flags & FlowState::RETURN_REGISTERED != 0 {
        return;
    }
    // Whether or not the handshake was seen: a connection without an entry stays without.
    flow.flags |= FlowState::RETURN_REGISTERED;
    let key = FlowKey::reply(meta);
    let mut syn_us = 0;
    if let Some(entry) = TCP_RETURNS.get_ptr_mut(key.hash()) {
        // SAFETY: LRU hash value pointer, valid for this run; plain data.
        let entry = unsafe { &mut *entry };
        if entry.key.same_flow(&key) {
            entry.class = class;
            entry.generation = generation;
            syn_us = entry.syn_us;
            entry.syn_us = 0;
        }
    }
    if syn_us != 0 {
        sample_round_trip(syn_us, class);
    }
}

/// Takes the round trip since a connection's SYN (at `syn_us`) into its class's average. A
/// call of its own (as are the other handshake steps) keeps the verifier's paths through the
/// pipeline few.
#[inline(never)]
fn sample_round_trip(syn_us: u32, class: u32) {
    let Some(state) = POLICERS.get_ptr_mut(class) else {
        return;
    };
    let Some(sample) = rtt_sample_us(syn_us, now_us()) else {
        return;
    };
    // SAFETY: map value pointer; one aligned word that another CPU may rewrite at the same
    // time (a lost sample only blurs the average). Only this step writes it.
    unsafe {
        let rtt = core::ptr::addr_of_mut!((*state).window.rtt_us);
        core::ptr::write_volatile(rtt, rtt_average_us(core::ptr::read_volatile(rtt), sample));
    }
}

/// The kernel clock in µs, wrapping (handshake times only: never on the data path).
#[inline(always)]
fn now_us() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000) as u32
}

/// On every TCP packet of a policy with window control: a SYN opens its reply direction's
/// entry with its time; a SYN-ACK records its window scale there; a pure ACK whose direction
/// is registered gets its class's window when that is narrower.
#[inline(always)]
pub fn on_tcp(
    frame: &Frame,
    meta: &PacketMeta,
    tcp: &TcpMeta,
    policy: &PolicySlot,
) -> Result<(), Reason> {
    if tcp.is_syn() {
        on_syn(meta);
        return Ok(());
    }
    if tcp.is_syn_ack() {
        on_syn_ack(frame, meta, tcp);
        return Ok(());
    }
    // Data segments (the policed direction, the hot path) stop here, before any key is built.
    if !tcp.is_pure_ack() {
        return Ok(());
    }
    let key = FlowKey::connection(meta);
    let hash = key.hash();
    // SAFETY: LRU hash values are plain data.
    let Some(entry) = (unsafe { TCP_RETURNS.get(hash) }) else {
        return Ok(());
    };
    if entry.generation != policy.generation || !entry.key.same_flow(&key) {
        return Ok(());
    }
    let Some(state) = POLICERS.get_ptr(entry.class) else {
        return Ok(());
    };
    // SAFETY: map value pointer; the flows' share is one aligned word another CPU may
    // rewrite.
    let share =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*state).window.flow_bytes)) };
    narrow(frame, tcp, entry, hash, share)
}

/// A SYN opens the entry of its reply direction with its time.
#[inline(never)]
fn on_syn(meta: &PacketMeta) {
    let key = FlowKey::reply(meta);
    let entry = ReturnEntry {
        key,
        syn_us: now_us(),
        ..ReturnEntry::default()
    };
    // As for a SYN-ACK: a failed insert only leaves the connection without a sample.
    let _ = TCP_RETURNS.insert(key.hash(), entry, 0);
}

/// A SYN-ACK records its direction's window scale and MSS: in the entry its SYN opened,
/// else in a new one.
#[inline(always)]
fn on_syn_ack(frame: &Frame, meta: &PacketMeta, tcp: &TcpMeta) {
    let Some(options) = handshake_options(frame, tcp) else {
        return;
    };
    let (window_scale, mss) = (options as u8, (options >> 8) as u16);
    let key = FlowKey::connection(meta);
    if let Some(entry) = TCP_RETURNS.get_ptr_mut(key.hash()) {
        // SAFETY: LRU hash value pointer, valid for this run; plain data.
        let entry = unsafe { &mut *entry };
        if entry.key.same_flow(&key) {
            entry.window_scale = window_scale;
            entry.mss = mss;
            return;
        }
    }
    let entry = ReturnEntry {
        key,
        window_scale,
        mss,
        ..ReturnEntry::default()
    };
    // A full table evicts the least recently used connection; a failed insert only
    // leaves this one without window control.
    let _ = TCP_RETURNS.insert(key.hash(), entry, 0);
}

/// The window scale a SYN-ACK announces (bits 0-7; 0 without the option: this side does not
/// scale, RFC 7323 §2.2) and its MSS (bits 8-23; 0 without the option); `None` when its
/// options cannot be read. One word, not a struct of options: each option's test, left to
/// the caller, would multiply the verifier's paths through the rest of the pipeline.
#[inline(never)]
fn handshake_options(frame: &Frame, tcp: &TcpMeta) -> Option<u32> {
    let options = TCP_OPTIONS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch; XDP does not nest on one CPU.
    let options = unsafe { &mut *options };
    let at = tcp.offset + TCP_MIN_HLEN;
    let len = tcp.header_len.saturating_sub(TCP_MIN_HLEN);
    // Fixed-size copies: the header length is a multiple of four.
    macro_rules! copy {
        ($($n:literal)*) => {
            match len {
                0 => return Some(0),
                $($n => options[..$n].copy_from_slice(&frame.bytes::<$n>(at)?),)*
                _ => return None,
            }
        };
    }
    copy!(4 8 12 16 20 24 28 32 36 40);
    Some(dataplane_handshake_options(len as u64))
}

/// Walks the first `len` bytes of options in the scratch, for [`handshake_options`]. A global
/// function, verified once on its own rather than along each of the pipeline's paths that
/// reach it (a fifth of the program's verification).
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_handshake_options(len: u64) -> u32 {
    let Some(options) = TCP_OPTIONS_SCRATCH.get_ptr(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch; XDP does not nest on one CPU.
    let found = tcp_handshake_options(unsafe { &*options }, len as usize);
    u32::from(found.window_scale.unwrap_or(0)) | u32::from(found.mss.unwrap_or(0)) << 8
}

/// Writes the flow's window under the flows' share `share_bytes` of the class window (see
/// [`flow_window`]) into the ACK's TCP header when it is narrower, with the checksum updated
/// incrementally.
#[inline(always)]
fn narrow(
    frame: &Frame,
    tcp: &TcpMeta,
    entry: &ReturnEntry,
    flow_hash: u64,
    share_bytes: u32,
) -> Result<(), Reason> {
    let h = frame
        .slice_mut::<{ TcpMeta::CHECKSUM_OFFSET + 2 }>(tcp.offset)
        .ok_or(Reason::RewriteFailed)?;
    // SAFETY: slice_mut checked the bytes lie inside the frame.
    let h = unsafe { &mut *h };
    let ack = TcpMeta::ACK_OFFSET;
    let ack = u32::from_be_bytes([h[ack], h[ack + 1], h[ack + 2], h[ack + 3]]);
    let window_bytes = flow_window(share_bytes, entry.mss, flow_hash, ack);
    let at = TcpMeta::WINDOW_OFFSET;
    let old = u16::from_be_bytes([h[at], h[at + 1]]);
    let Some(new) = clamp_window(old, entry.window_scale, window_bytes) else {
        return Ok(());
    };
    let sum_at = TcpMeta::CHECKSUM_OFFSET;
    let check = u16::from_be_bytes([h[sum_at], h[sum_at + 1]]);
    let check = replace_word(check, old, new).to_be_bytes();
    let new = new.to_be_bytes();
    h[at] = new[0];
    h[at + 1] = new[1];
    h[sum_at] = check[0];
    h[sum_at + 1] = check[1];
    Ok(())
}
