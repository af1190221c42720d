//! Police: the class's two-rate three-colour marker, then the interface's link budget with
//! priority watermarks. Shared state is updated with compare-and-swap so the rates hold
//! exactly across CPUs (per-CPU buckets would over-admit by the number of CPUs).

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_common::{
    maps::{ClassConfig, IfaceConfig},
    policer::{gcra_admit, gcra_force, ns_to_ticks, priority_limit, BucketParams, Colour},
};

use crate::maps::{LINKS, POLICERS};

/// Compare-and-swap attempts before a bucket update counts as non-conforming. Each failed
/// attempt means another CPU just updated the bucket; the bound keeps the verifier happy and
/// errs on the side of not over-admitting.
const CAS_ATTEMPTS: usize = 4;

/// Applies `next` to the timestamp at `tat` atomically; false when `next` refuses or the
/// attempts run out.
#[inline(always)]
fn update(tat: *mut u64, next: impl Fn(u64) -> Option<u64>) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        // SAFETY: `tat` points into a map value that lives as long as the program runs.
        // An intrinsic atomic load does not lower on BPF, a volatile read does.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let Some(new) = next(old) else {
            return false;
        };
        // SAFETY: as above; BPF_CMPXCHG (cpu v3) on an aligned u64.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, old, new,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}

#[inline(always)]
fn admit(tat: *mut u64, bucket: &BucketParams, now: u64, bytes: u32) -> bool {
    let cost = bucket.cost(bytes);
    update(tat, |old| gcra_admit(old, now, cost, bucket.burst_ticks))
}

/// The colour of a packet of `bytes` in class `class`, after the link budget of `iface`.
#[inline(always)]
pub fn colour(
    class: u32,
    cfg: &ClassConfig,
    iface: Option<&IfaceConfig>,
    iface_slot: u32,
    bytes: u32,
) -> Colour {
    let tcm = &cfg.policer;
    let link = iface.map(|i| &i.link).filter(|l| l.is_limited());
    if !tcm.peak.is_limited() && !tcm.committed.is_limited() && link.is_none() {
        return Colour::Yellow;
    }
    // SAFETY: helper without preconditions.
    let now = ns_to_ticks(unsafe { bpf_ktime_get_ns() });
    // The pipeline already bounded `class`, so this lookup cannot fail; if it ever did, the
    // packet is not punished for it (fail open).
    let Some(state) = POLICERS.get_ptr_mut(class) else {
        return Colour::Green;
    };
    // SAFETY: map value pointer; fields are u64-aligned.
    let (committed_tat, peak_tat) = unsafe {
        (
            core::ptr::addr_of_mut!((*state).committed_tat),
            core::ptr::addr_of_mut!((*state).peak_tat),
        )
    };
    if tcm.peak.is_limited() && !admit(peak_tat, &tcm.peak, now, bytes) {
        return Colour::Red;
    }
    let colour = if tcm.committed.is_limited() && admit(committed_tat, &tcm.committed, now, bytes) {
        Colour::Green
    } else {
        Colour::Yellow
    };
    match link {
        Some(link) => link_budget(colour, link, iface_slot, cfg.priority, now, bytes),
        None => colour,
    }
}

/// Guaranteed (green) traffic always takes its share of the link; excess (yellow) traffic
/// only while the budget's backlog is under its priority's watermark, else it turns red.
#[inline(always)]
fn link_budget(
    colour: Colour,
    link: &BucketParams,
    iface_slot: u32,
    priority: u8,
    now: u64,
    bytes: u32,
) -> Colour {
    let Some(state) = LINKS.get_ptr_mut(iface_slot) else {
        return colour;
    };
    // SAFETY: map value pointer.
    let tat = unsafe { core::ptr::addr_of_mut!((*state).tat) };
    let cost = link.cost(bytes);
    match colour {
        Colour::Green => {
            // Room above the burst, so guaranteed traffic arriving while excess traffic has
            // filled the budget is still charged, not forgiven by the cap.
            let cap = link.burst_ticks.saturating_mul(2);
            update(tat, |old| Some(gcra_force(old, now, cost, cap)));
            Colour::Green
        }
        Colour::Yellow => {
            let limit = priority_limit(link.burst_ticks, priority);
            if update(tat, |old| gcra_admit(old, now, cost, limit)) {
                Colour::Yellow
            } else {
                Colour::Red
            }
        }
        Colour::Red => Colour::Red,
    }
}
