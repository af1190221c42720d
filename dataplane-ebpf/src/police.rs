//! Police: the class's two-rate three-colour marker, then the interface's link budget with
//! priority watermarks. Shared state is updated with compare-and-swap so the rates hold
//! exactly across CPUs (per-CPU buckets would over-admit by the number of CPUs). Green
//! traffic of a class well under its rate spends per-CPU leases reserved in the shared
//! buckets beforehand (`policer::LeaseParams`): no clock read and no shared line per packet.

use core::intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_common::{
    fair::{
        charge, counted_units, epoch_of, note_leased, note_sent, roll, seen_bit, sharing_flows,
        standing, FairControl, FairState, Standing, SEEN_WORDS,
    },
    flow::FlowState,
    maps::{class_config_index, ClassConfig, IfaceConfig, PolicerState},
    policer::{
        aqm_due, aqm_signalled, backlog_ns, gcra_admit, gcra_force, lease_spend, ns_to_ticks,
        priority_limit, repair_limit, Aqm, AqmState, BucketParams, Colour, Lease, TICKS_PER_NS,
    },
    window::{share_window, window_update, WindowControl, WindowState},
    GENERATION_SLOTS, MAX_CLASSES,
};

use crate::maps::{CLASSES, CLASS_LEASES, LINKS, PACKET_SCRATCH, POLICERS};

/// Compare-and-swap attempts before a bucket update counts as non-conforming. Each failed
/// attempt means another CPU just updated the bucket; the bound keeps the verifier happy and
/// errs on the side of not over-admitting.
const CAS_ATTEMPTS: usize = 4;

/// Applies `next` to the timestamp at `tat` atomically; false when `next` refuses or the
/// attempts run out.
#[inline(always)]
fn update(tat: *mut u64, mut next: impl FnMut(u64) -> Option<u64>) -> bool {
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

/// What the packet is, as far as the buckets care.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything but a TCP retransmission.
    Plain,
    /// A TCP retransmission: it sees [`repair_limit`] and is never dropped early.
    Repair,
}

impl Kind {
    #[inline(always)]
    fn limit(self, bucket: &BucketParams) -> u64 {
        match self {
            Kind::Plain => bucket.burst_ticks,
            Kind::Repair => repair_limit(bucket.burst_ticks),
        }
    }
}

/// The bucket's test; sets `repaired` when only the repair allowance let the packet in.
#[inline(always)]
fn admit(
    tat: *mut u64,
    bucket: &BucketParams,
    now: u64,
    bytes: u32,
    kind: Kind,
    repaired: &mut bool,
) -> bool {
    let cost = bucket.cost(bytes);
    let limit = kind.limit(bucket);
    let mut over = false;
    let admitted = update(tat, |old| {
        let new = gcra_admit(old, now, cost, limit)?;
        over = kind == Kind::Repair && gcra_admit(old, now, cost, bucket.burst_ticks).is_none();
        Some(new)
    });
    *repaired |= admitted && over;
    admitted
}

/// An early congestion signal from a phantom queue's AQM.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// None: the packet goes on with its colour's action.
    None,
    /// Mark CE (the packet is ECN-capable and was charged to its buckets).
    Mark,
    /// Drop (not ECN-capable; charged to nothing, so the flow's next packets still fit).
    Drop,
}

/// A packet's colour and early signal.
pub struct Policed {
    pub colour: Colour,
    pub signal: Signal,
    /// A retransmission that only the repair allowance admitted.
    pub repaired: bool,
}

impl Policed {
    const fn plain(colour: Colour) -> Policed {
        Policed {
            colour,
            signal: Signal::None,
            repaired: false,
        }
    }
}

/// How a bucket with AQM on its phantom queue takes a packet.
#[derive(Clone, Copy)]
enum Admission {
    Admitted,
    /// Admitted and signalled (ECN-capable: to be marked).
    Marked,
    /// Signalled early and not ECN-capable: to be dropped, nothing charged.
    EarlyDrop,
    /// The bucket is full.
    Refused,
}

impl Admission {
    /// What [`dataplane_take`] returns: the admission in bits 0-1, whether only the repair
    /// allowance admitted the packet in bit 2.
    #[inline(always)]
    fn pack(self, repaired: bool) -> u64 {
        self as u64 | u64::from(repaired) << 2
    }

    #[inline(always)]
    fn unpack(word: u64) -> (Admission, bool) {
        let admission = match word & 3 {
            0 => Admission::Admitted,
            1 => Admission::Marked,
            2 => Admission::EarlyDrop,
            _ => Admission::Refused,
        };
        (admission, word >> 2 & 1 != 0)
    }
}

/// A bucket's test, with the AQM when it manages this bucket (`which`) and the flow's fair
/// standing when its class shares this bucket's rate among its flows (else
/// [`Standing::Neutral`]). A flow within its share is never signalled; one over it is marked, when ECN-capable, whatever the AQM's schedule (a flow
/// over its share that is not ECN-capable is left to the AQM and the bucket); otherwise a due AQM
/// signal goes to a packet the bucket takes (a packet it refuses is dropped anyway, a signal
/// of its own). An ECN-capable packet is charged and marked; any other is dropped and
/// charged to nothing, so the flow's next packets still fit.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn take(
    which: u32,
    tat: *mut u64,
    bucket: &BucketParams,
    aqm: &Aqm,
    state: *mut AqmState,
    now_ns: u64,
    bytes: u32,
    ecn_capable: bool,
    kind: Kind,
    standing: Standing,
    repaired: &mut bool,
) -> Admission {
    let now = ns_to_ticks(now_ns);
    let within = standing == Standing::Within;
    let plain = |admitted| {
        if admitted {
            Admission::Admitted
        } else {
            Admission::Refused
        }
    };
    let watched = aqm.bucket == which;
    // Fair shares signal by marks only: early drops are the AQM's, where it is on.
    let marked_over_share = standing == Standing::Over && ecn_capable;
    if !watched && !marked_over_share {
        return plain(admit(tat, bucket, now, bytes, kind, repaired));
    }
    // SAFETY: map value pointers, as in `update`. The AQM state is shared without a lock
    // (see `AqmState`) and written back only when it changes.
    let (old_tat, old) = unsafe {
        (
            core::ptr::read_volatile(tat),
            core::ptr::read_volatile(state),
        )
    };
    let mut new = old;
    let due = watched && aqm_due(aqm, &mut new, backlog_ns(old_tat, now), now_ns);
    let signal = !within && (marked_over_share || due);
    let admission = if !signal {
        plain(admit(tat, bucket, now, bytes, kind, repaired))
    } else if ecn_capable {
        if admit(tat, bucket, now, bytes, kind, repaired) {
            if due {
                aqm_signalled(aqm, &mut new, now_ns);
            }
            Admission::Marked
        } else {
            Admission::Refused
        }
    } else if kind == Kind::Repair {
        // Never the early drop: a lost retransmission costs a timeout.
        plain(admit(tat, bucket, now, bytes, kind, repaired))
    } else if gcra_admit(old_tat, now, bucket.cost(bytes), bucket.burst_ticks).is_some() {
        if due {
            aqm_signalled(aqm, &mut new, now_ns);
        }
        Admission::EarlyDrop
    } else {
        Admission::Refused
    };
    if watched && new != old {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(state, new) };
    }
    admission
}

/// The colour and early signal of a packet of `bytes` in class `class` of generation slot
/// `slot`, after the link budget of `iface`.
///
/// The exact path runs in stages, each a global BPF function the verifier checks once on
/// its own (the flow's fair share, each bucket, the window, the link budget, the lease):
/// inlined, their branches multiply along every path through them, and 6.1's verifier ran
/// out of its million instructions. Their arguments are packed words ([`Ids`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn police(
    class: u32,
    slot: u32,
    cfg: &ClassConfig,
    iface: Option<&IfaceConfig>,
    ifindex: u32,
    iface_slot: u32,
    bytes: u32,
    ecn_capable: bool,
    kind: Kind,
    flow: Option<*mut FlowState>,
) -> Policed {
    let limited_link = iface.is_some_and(|i| i.link.is_limited());
    // A class without rates on an interface without a link budget pays no call.
    let tcm = &cfg.policer;
    if !tcm.peak.is_limited() && !tcm.committed.is_limited() && !limited_link {
        return Policed::plain(Colour::Yellow);
    }
    // Green from this CPU's lease, without a call (but once per flow and epoch, to count the
    // flow): no clock, no shared line. Retransmissions and interfaces with a link budget
    // take the exact path.
    let leased = cfg.lease.is_on() && kind == Kind::Plain && !limited_link;
    if leased {
        if let Some(lease) = CLASS_LEASES.get_ptr_mut(class) {
            // SAFETY: per-CPU value; XDP does not nest on one CPU.
            let lease = unsafe { &mut *lease };
            if let Some(rest) = lease_spend(lease.left, bytes) {
                lease.left = rest;
                if let Some(flow) = flow.filter(|_| lease.count_units != 0) {
                    // SAFETY: the flow entry's pointer (see classify::class_of).
                    count_leased(class, lease, unsafe { &mut *flow }, bytes);
                }
                return Policed::plain(Colour::Green);
            }
        }
    }
    let ids = Ids::pack(class, slot, bytes);
    // SAFETY: helper without preconditions.
    let now_ns = unsafe { bpf_ktime_get_ns() };
    // The flow's fair queue and epoch, where its class counts its flows (for fair shares or
    // to share its TCP window): in and out through the stage's word.
    let flow = flow.filter(|_| cfg.fair.is_on() || cfg.window.is_on());
    let standing = match flow {
        Some(f) => {
            // SAFETY: the flow entry's pointer (see classify::class_of); plain data.
            let f = unsafe { &mut *f };
            let word = FairWord::pack(f.fair_tat_ns, f.fair_epoch, f.fair_epoch_units);
            let word = dataplane_fair(ids, now_ns, word, u64::from(leased));
            (f.fair_tat_ns, f.fair_epoch, f.fair_epoch_units) = FairWord::unpack(word);
            FairWord::standing(word)
        }
        None => Standing::Neutral,
    };
    let on = |which: u32| {
        if cfg.fair.bucket == which {
            standing
        } else {
            Standing::Neutral
        }
    };
    let packet = Ids::packet(ecn_capable, kind);
    let mut signal = Signal::None;
    let mut repaired = false;
    if tcm.peak.is_limited() {
        let word = dataplane_take(
            ids,
            now_ns,
            Aqm::PEAK,
            packet | Ids::standing(on(Aqm::PEAK)),
        );
        let (admission, repair) = Admission::unpack(word);
        repaired |= repair;
        match admission {
            Admission::Admitted => {}
            Admission::Marked => signal = Signal::Mark,
            // Not admitted: counted as what exceeds the peak.
            Admission::EarlyDrop => {
                return Policed {
                    colour: Colour::Red,
                    signal: Signal::Drop,
                    repaired: false,
                }
            }
            Admission::Refused => return Policed::plain(Colour::Red),
        }
    }
    let colour = if tcm.committed.is_limited() {
        let word = dataplane_take(
            ids,
            now_ns,
            Aqm::COMMITTED,
            packet | Ids::standing(on(Aqm::COMMITTED)),
        );
        let (admission, repair) = Admission::unpack(word);
        repaired |= repair;
        match admission {
            Admission::Admitted => Colour::Green,
            Admission::Marked => {
                signal = Signal::Mark;
                Colour::Green
            }
            // Not admitted: counted as what exceeds the rate.
            Admission::EarlyDrop => {
                return Policed {
                    colour: Colour::Yellow,
                    signal: Signal::Drop,
                    repaired: false,
                }
            }
            Admission::Refused => Colour::Yellow,
        }
    } else {
        Colour::Yellow
    };
    if cfg.window.is_on() {
        dataplane_steer_window(ids, now_ns);
    }
    let colour = if limited_link {
        let word = u64::from(colour as u32) | u64::from(cfg.priority) << 8;
        Colour::of(dataplane_link_budget(
            word | u64::from(iface_slot) << 32,
            u64::from(ifindex),
            now_ns,
            u64::from(bytes),
        ))
    } else {
        colour
    };
    if leased && colour == Colour::Green && signal == Signal::None {
        dataplane_take_lease(ids, now_ns);
    }
    Policed {
        colour,
        signal,
        repaired,
    }
}

/// The words the policer's stages take: `Ids::pack` the class (bits 0-15), the generation
/// slot (16-23) and the packet's bytes (32-63); `Ids::packet` and `Ids::standing` the
/// packet's ECN capability (bit 0), whether it is a TCP retransmission (1) and the flow's
/// fair standing (2-3).
struct Ids;

impl Ids {
    #[inline(always)]
    fn pack(class: u32, slot: u32, bytes: u32) -> u64 {
        u64::from(class & 0xffff) | u64::from(slot & 0xff) << 16 | u64::from(bytes) << 32
    }

    /// The class (bounded for map lookups), its config slot and the packet's bytes.
    #[inline(always)]
    fn unpack(ids: u64) -> (u32, u32, u32) {
        (
            (ids & 0xffff) as u32 % MAX_CLASSES as u32,
            (ids >> 16 & 0xff) as u32 % GENERATION_SLOTS as u32,
            (ids >> 32) as u32,
        )
    }

    #[inline(always)]
    fn packet(ecn_capable: bool, kind: Kind) -> u64 {
        u64::from(ecn_capable) | u64::from(kind == Kind::Repair) << 1
    }

    #[inline(always)]
    fn standing(standing: Standing) -> u64 {
        (standing as u64) << 2
    }

    #[inline(always)]
    fn unpack_packet(word: u64) -> (bool, Kind, Standing) {
        let kind = if word >> 1 & 1 != 0 {
            Kind::Repair
        } else {
            Kind::Plain
        };
        let standing = match word >> 2 & 3 {
            0 => Standing::Within,
            1 => Standing::Over,
            _ => Standing::Neutral,
        };
        (word & 1 != 0, kind, standing)
    }
}

/// Stage one, where the class counts its flows: notes the packet in its flow's epoch count
/// (counting the flow in its class once it has sent enough) and, where the class shares its
/// rate among its flows, charges the flow's fair queue. `fair` is the flow's [`FairWord`];
/// returns it after the packet, with the flow's [`Standing`] in its free bits. `leased`:
/// the class leases (the epoch's threshold is left in this CPU's lease).
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_fair(ids: u64, now_ns: u64, fair: u64, leased: u64) -> u64 {
    let (class, slot, bytes) = Ids::unpack(ids);
    let (Some(cfg), Some(state)) = (
        CLASSES.get(class_config_index(slot, class)),
        POLICERS.get_ptr_mut(class),
    ) else {
        return fair | (Standing::Neutral as u64) << FairWord::STANDING_BIT;
    };
    let lease = if leased != 0 {
        CLASS_LEASES.get_ptr_mut(class)
    } else {
        None
    };
    let mut flow = FairWord::unpack(fair);
    // SAFETY: map value pointer, as in `update`.
    let (sharing, epoch, units) =
        unsafe { count_flow(&cfg.fair, state, &flow, now_ns, bytes, lease) };
    let tcm = &cfg.policer;
    let standing = if cfg.fair.is_on() {
        // SAFETY: map value pointer; fields are u64-aligned.
        let (tat, bucket) = unsafe {
            if cfg.fair.bucket == Aqm::PEAK {
                (core::ptr::addr_of_mut!((*state).peak_tat), &tcm.peak)
            } else {
                (
                    core::ptr::addr_of_mut!((*state).committed_tat),
                    &tcm.committed,
                )
            }
        };
        // SAFETY: as above.
        unsafe { fair_standing(&cfg.fair, sharing, &mut flow, tat, bucket, now_ns, bytes) }
    } else {
        Standing::Neutral
    };
    (flow.1, flow.2) = (epoch, units);
    FairWord::pack(flow.0, flow.1, flow.2) | (standing as u64) << FairWord::STANDING_BIT
}

/// Stage two, once per limited bucket (`which`: [`Aqm::PEAK`] or [`Aqm::COMMITTED`]):
/// [`take`] with the packet's word ([`Ids::packet`], [`Ids::standing`]); returns
/// [`Admission::pack`].
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_take(ids: u64, now_ns: u64, which: u32, packet: u64) -> u64 {
    let (class, slot, bytes) = Ids::unpack(ids);
    let (Some(cfg), Some(state)) = (
        CLASSES.get(class_config_index(slot, class)),
        POLICERS.get_ptr_mut(class),
    ) else {
        // The pipeline bounded `class`, so this cannot fail; if it ever did, the packet is
        // not punished for it (fail open).
        return Admission::Admitted.pack(false);
    };
    let (ecn_capable, kind, standing) = Ids::unpack_packet(packet);
    // SAFETY: map value pointer; fields are u64-aligned.
    let (tat, bucket, aqm_state) = unsafe {
        let aqm_state = core::ptr::addr_of_mut!((*state).aqm);
        if which == Aqm::PEAK {
            (
                core::ptr::addr_of_mut!((*state).peak_tat),
                &cfg.policer.peak,
                aqm_state,
            )
        } else {
            (
                core::ptr::addr_of_mut!((*state).committed_tat),
                &cfg.policer.committed,
                aqm_state,
            )
        }
    };
    let mut repaired = false;
    let admission = take(
        which,
        tat,
        bucket,
        &cfg.aqm,
        aqm_state,
        now_ns,
        bytes,
        ecn_capable,
        kind,
        standing,
        &mut repaired,
    );
    admission.pack(repaired)
}

/// Stage three, where the class has window control: [`steer_window`] on the flows sharing
/// the class now. Returns 0 (a global function returns a scalar).
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_steer_window(ids: u64, now_ns: u64) -> u64 {
    let (class, slot, _) = Ids::unpack(ids);
    let (Some(cfg), Some(state)) = (
        CLASSES.get(class_config_index(slot, class)),
        POLICERS.get_ptr_mut(class),
    ) else {
        return 0;
    };
    let tcm = &cfg.policer;
    // SAFETY: map value pointer; fields are u64-aligned. The flow count is shared without a
    // lock (see `FairState`).
    unsafe {
        let sharing = sharing_flows(&core::ptr::read_volatile(core::ptr::addr_of!(
            (*state).fair
        )));
        let (tat, bucket) = if cfg.window.bucket == Aqm::PEAK {
            (core::ptr::addr_of_mut!((*state).peak_tat), &tcm.peak)
        } else {
            (
                core::ptr::addr_of_mut!((*state).committed_tat),
                &tcm.committed,
            )
        };
        steer_window(
            &cfg.window,
            core::ptr::addr_of_mut!((*state).window),
            tat,
            bucket,
            now_ns,
            sharing,
        );
    }
    0
}

/// Stage four, on an interface with a link budget: [`link_budget`]. `word`: the colour
/// (bits 0-7), the class's priority (8-15) and the interface slot (32-63); returns the
/// colour.
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_link_budget(word: u64, ifindex: u64, now_ns: u64, bytes: u64) -> u32 {
    let colour = Colour::of(word as u32 & 0xff);
    let Some(link) = crate::maps::iface(ifindex as u32)
        .map(|i| &i.link)
        .filter(|l| l.is_limited())
    else {
        return colour as u32;
    };
    link_budget(
        colour,
        link,
        (word >> 32) as u32,
        (word >> 8) as u8,
        ns_to_ticks(now_ns),
        bytes as u32,
    ) as u32
}

/// Stage five, for a green packet of a leasing class: [`take_lease`]. Returns 0.
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_take_lease(ids: u64, now_ns: u64) -> u64 {
    let (class, slot, _) = Ids::unpack(ids);
    let (Some(cfg), Some(state), Some(lease)) = (
        CLASSES.get(class_config_index(slot, class)),
        POLICERS.get_ptr_mut(class),
        CLASS_LEASES.get_ptr_mut(class),
    ) else {
        return 0;
    };
    // SAFETY: the per-CPU lease; the class's policer state.
    unsafe { take_lease(lease, cfg, state, ns_to_ticks(now_ns)) };
    0
}

/// Notes a packet spent from this CPU's `lease` in its flow's epoch count, and counts the
/// flow in its class when it has just sent enough ([`note_leased`]).
#[inline(always)]
fn count_leased(class: u32, lease: &Lease, flow: &mut FlowState, bytes: u32) {
    // Counted in this epoch already: the common case, no store.
    if flow.fair_epoch == lease.epoch as u8 && u32::from(flow.fair_epoch_units) >= lease.count_units
    {
        return;
    }
    let Some((tat, epoch, units, counted)) = note_leased(
        flow.fair_tat_ns,
        flow.fair_epoch,
        flow.fair_epoch_units,
        lease.epoch,
        bytes,
        lease.count_units as u8,
    ) else {
        return;
    };
    flow.fair_tat_ns = tat;
    flow.fair_epoch = epoch;
    flow.fair_epoch_units = units;
    if counted {
        dataplane_count_flow(u64::from(class), u64::from(lease.epoch));
    }
}

/// Counts the flow whose key hash the classifier left in the packet scratch among the flows
/// of class `class` in `epoch`, when the class's count is of that epoch (a lease's epoch may
/// be behind; the flow is then counted at the exact path). A global function, verified once.
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_count_flow(class: u64, epoch: u64) -> u64 {
    let Some(policer) = POLICERS.get_ptr_mut(class as u32 % MAX_CLASSES as u32) else {
        return 0;
    };
    // SAFETY: map value pointer; the count is shared without a lock (see `FairState`).
    let (state, seen) = unsafe {
        (
            core::ptr::addr_of_mut!((*policer).fair),
            core::ptr::addr_of_mut!((*policer).fair_seen).cast::<u64>(),
        )
    };
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*state).epoch)) } != epoch as u32 {
        return 0;
    }
    // SAFETY: as above.
    u64::from(unsafe { count_seen(state, seen) })
}

/// Counts the flow whose key hash the classifier left in the packet scratch in the class's
/// epoch count `state`, once whatever the CPUs its entries are on ([`seen_bit`]); whether
/// it was new.
///
/// # Safety
/// `state` and `seen` (of [`SEEN_WORDS`] words) point into the class's policer state.
#[inline(always)]
unsafe fn count_seen(state: *mut FairState, seen: *mut u64) -> bool {
    let flow_hash = PACKET_SCRATCH
        .get_ptr(0)
        // SAFETY: per-CPU scratch; XDP does not nest on one CPU.
        .map_or(0, |p| unsafe { (*p).flow_hash });
    let (word, bit) = seen_bit(flow_hash);
    // SAFETY: the caller's pointers; aligned words of the map value, `word` below SEEN_WORDS.
    let was = unsafe {
        atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(seen.add(word % SEEN_WORDS), bit)
    };
    if was & bit != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
            core::ptr::addr_of_mut!((*state).active),
            1,
        )
    };
    true
}

/// A flow's fair queue and epoch count (see `dataplane_common::fair`) as one word of
/// [`dataplane_fair`]: its epoch's low bits (16-23), what it sent in that epoch (24-31) and
/// its queue's arrival time (32-63); the stage's result adds the flow's standing (8-9).
struct FairWord;

impl FairWord {
    const STANDING_BIT: u32 = 8;

    #[inline(always)]
    fn pack(tat_ns: u32, epoch: u8, units: u8) -> u64 {
        u64::from(epoch) << 16 | u64::from(units) << 24 | u64::from(tat_ns) << 32
    }

    #[inline(always)]
    fn unpack(word: u64) -> (u32, u8, u8) {
        ((word >> 32) as u32, (word >> 16) as u8, (word >> 24) as u8)
    }

    #[inline(always)]
    fn standing(word: u64) -> Standing {
        match word >> Self::STANDING_BIT & 3 {
            0 => Standing::Within,
            1 => Standing::Over,
            _ => Standing::Neutral,
        }
    }
}

/// Reserves a lease in the class's buckets (peak first, then committed; the peak's share is
/// given back when the committed bucket refuses) and adds it to this CPU's `lease`. A bucket
/// refuses while the lease would leave its backlog above its lease limit.
///
/// # Safety
/// `lease` is this CPU's lease of the class; `state` the class's policer state.
#[inline(always)]
unsafe fn take_lease(lease: *mut Lease, cfg: &ClassConfig, state: *mut PolicerState, now: u64) {
    let (params, tcm) = (&cfg.lease, &cfg.policer);
    // SAFETY: the caller's pointer.
    let (committed_tat, peak_tat) = unsafe {
        (
            core::ptr::addr_of_mut!((*state).committed_tat),
            core::ptr::addr_of_mut!((*state).peak_tat),
        )
    };
    let peak_cost = tcm.peak.cost(params.bytes);
    if tcm.peak.is_limited()
        && !update(peak_tat, |old| {
            gcra_admit(old, now, peak_cost, params.peak_limit_ticks)
        })
    {
        return;
    }
    let committed_cost = tcm.committed.cost(params.bytes);
    if !update(committed_tat, |old| {
        gcra_admit(old, now, committed_cost, params.committed_limit_ticks)
    }) {
        if tcm.peak.is_limited() {
            // The reservation moved the peak's TAT to max(TAT, now) + cost: this undoes it.
            update(peak_tat, |old| Some(old.wrapping_sub(peak_cost)));
        }
        return;
    }
    // SAFETY: the caller's per-CPU pointer.
    unsafe { (*lease).left += params.bytes };
}

/// Notes the packet's `bytes` in its flow's epoch count (`flow`: its fair queue's arrival
/// time, its epoch and count) at `now_ns`, and counts the flow in
/// its class's epoch once it has sent enough in it ([`note_sent`]), once whatever the CPUs
/// its entries are on ([`seen_bit`]). Leaves the epoch and the threshold in this CPU's
/// `lease`, for the packets it covers to count their flows. Returns the flows sharing the
/// class and the flow's new epoch and count, for the caller to write once the flow's queue
/// is charged (`charge` reads the old epoch).
///
/// # Safety
/// `state` points into the class's policer state; `lease` is this CPU's lease of the class.
#[inline(always)]
unsafe fn count_flow(
    ctl: &FairControl,
    policer: *mut PolicerState,
    flow: &(u32, u8, u8),
    now_ns: u64,
    bytes: u32,
    lease: Option<*mut Lease>,
) -> (u32, u8, u8) {
    let epoch = epoch_of(now_ns);
    // SAFETY: the caller's pointer; the count is shared without a lock (see `FairState`).
    let (state, seen) = unsafe {
        (
            core::ptr::addr_of_mut!((*policer).fair),
            core::ptr::addr_of_mut!((*policer).fair_seen).cast::<u64>(),
        )
    };
    // SAFETY: as above.
    let old = unsafe { core::ptr::read_volatile(state) };
    let mut count = roll(old, epoch);
    if count != old {
        // SAFETY: as above; `seen` has SEEN_WORDS words.
        unsafe {
            core::ptr::write_volatile(state, count);
            for word in 0..SEEN_WORDS {
                core::ptr::write_volatile(seen.add(word), 0);
            }
        }
    }
    let threshold = counted_units(ctl.epoch_units, sharing_flows(&count));
    if let Some(lease) = lease {
        // SAFETY: this CPU's lease of the class; XDP does not nest on one CPU.
        unsafe {
            (*lease).epoch = epoch;
            (*lease).count_units = u32::from(threshold);
        }
    }
    let (flow_epoch, units, counted) = note_sent(flow.1, flow.2, epoch, bytes, threshold);
    // SAFETY: as above.
    if counted && unsafe { count_seen(state, seen) } {
        count.active += 1;
    }
    (sharing_flows(&count), flow_epoch, units)
}

/// Charges the packet to the flow's fair queue at its share of the class (`sharing` flows;
/// `flow` updated) and gives the flow's standing (see `dataplane_common::fair`).
///
/// # Safety
/// `tat` points into the class's policer state.
#[inline(always)]
unsafe fn fair_standing(
    ctl: &FairControl,
    sharing: u32,
    flow: &mut (u32, u8, u8),
    tat: *mut u64,
    bucket: &BucketParams,
    now_ns: u64,
    bytes: u32,
) -> Standing {
    let epoch = epoch_of(now_ns);
    // SAFETY: the caller's pointer.
    let class_tat = unsafe { core::ptr::read_volatile(tat) };
    let cost_ns = bucket.cost(bytes) / TICKS_PER_NS * u64::from(sharing);
    let (fair_backlog, fair_tat) = charge(
        flow.0,
        flow.1,
        epoch,
        now_ns,
        cost_ns,
        ctl.tolerance_ns.saturating_mul(2),
    );
    flow.0 = fair_tat;
    let now = ns_to_ticks(now_ns);
    standing(
        ctl,
        fair_backlog,
        backlog_ns(class_tat, now),
        bucket.burst_ticks / TICKS_PER_NS,
    )
}

/// Lets the class's window follow its phantom queue (at most once per period). The state is
/// changed in place, and only where it changes (`window_update` and `share_window` write
/// nothing otherwise), so the shared line stays clean between adjustments; CPUs racing at an
/// adjustment write the same values.
///
/// # Safety
/// `state` and `tat` point into the class's policer state.
#[inline(always)]
unsafe fn steer_window(
    ctl: &WindowControl,
    state: *mut WindowState,
    tat: *mut u64,
    bucket: &BucketParams,
    now_ns: u64,
    flows: u32,
) {
    // SAFETY: the caller's pointers: aligned words of a map value.
    let (state, tat) = unsafe { (&mut *state, core::ptr::read_volatile(tat)) };
    let backlog = backlog_ns(tat, ns_to_ticks(now_ns));
    let burst_ns = bucket.burst_ticks / TICKS_PER_NS;
    window_update(ctl, state, backlog, burst_ns, now_ns, flows);
    share_window(state, flows);
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
