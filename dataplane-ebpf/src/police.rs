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
    /// Bits 0-1 the colour, 2-3 the signal, 4 repaired.
    #[inline(always)]
    fn pack(&self) -> u32 {
        let signal = match self.signal {
            Signal::None => 0,
            Signal::Mark => 1,
            Signal::Drop => 2,
        };
        self.colour as u32 | signal << 2 | u32::from(self.repaired) << 4
    }

    #[inline(always)]
    fn unpack(word: u32) -> Policed {
        Policed {
            colour: match word & 3 {
                0 => Colour::Green,
                1 => Colour::Yellow,
                _ => Colour::Red,
            },
            signal: match word >> 2 & 3 {
                0 => Signal::None,
                1 => Signal::Mark,
                _ => Signal::Drop,
            },
            repaired: word >> 4 & 1 != 0,
        }
    }

    const fn plain(colour: Colour) -> Policed {
        Policed {
            colour,
            signal: Signal::None,
            repaired: false,
        }
    }
}

/// How a bucket with AQM on its phantom queue takes a packet.
enum Admission {
    Admitted,
    /// Admitted and signalled (ECN-capable: to be marked).
    Marked,
    /// Signalled early and not ECN-capable: to be dropped, nothing charged.
    EarlyDrop,
    /// The bucket is full.
    Refused,
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
    if cfg.lease.is_on() && kind == Kind::Plain && !limited_link {
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
    let ids = u64::from(class) | u64::from(slot) << 16 | u64::from(iface_slot) << 32;
    let packet = u64::from(bytes)
        | u64::from(ecn_capable) << 32
        | u64::from(kind == Kind::Repair) << 33
        | u64::from(limited_link) << 34;
    // The flow's fair queue and epoch, where its class counts its flows (for fair shares or
    // to share its TCP window): in and out through the call's words.
    let flow = flow.filter(|_| cfg.fair.is_on() || cfg.window.is_on());
    let fair = match flow {
        // SAFETY: the flow entry's pointer (see classify::class_of); plain data.
        Some(f) => unsafe {
            FairWord::pack((*f).fair_tat_ns, (*f).fair_epoch, (*f).fair_epoch_units)
        },
        None => FairWord::ABSENT,
    };
    let result = dataplane_police(ids, u64::from(ifindex), packet, fair);
    if let (Some(f), Some((tat, epoch, units))) = (flow, FairWord::unpack(result)) {
        // SAFETY: as above.
        unsafe {
            (*f).fair_tat_ns = tat;
            (*f).fair_epoch = epoch;
            (*f).fair_epoch_units = units;
        }
    }
    Policed::unpack((result >> FairWord::FREE_BITS) as u32 & 0xff)
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

/// A flow's fair queue and epoch count (see `dataplane_common::fair`) as one word of the
/// policer's call: whether it is there (bit 0), its epoch's low bits (16-23), what it sent in
/// that epoch (24-31) and its queue's arrival time (32-63). Bits 8-15 are free for the
/// policer's result.
struct FairWord;

impl FairWord {
    const ABSENT: u64 = 0;
    /// Where the word leaves room.
    const FREE_BITS: u32 = 8;

    #[inline(always)]
    fn pack(tat_ns: u32, epoch: u8, units: u8) -> u64 {
        1 | u64::from(epoch) << 16 | u64::from(units) << 24 | u64::from(tat_ns) << 32
    }

    #[inline(always)]
    fn unpack(word: u64) -> Option<(u32, u8, u8)> {
        (word & 1 != 0).then_some(((word >> 32) as u32, (word >> 16) as u8, (word >> 24) as u8))
    }
}

/// The policer as a global BPF function, which the verifier checks once on its own rather
/// than along every path that reaches it (its compare-and-swap loops and branches, walked
/// again for each, take the program past the verifier's budget). Arguments and result are
/// packed words: `ids` the class (bits 0-15), the generation slot (16-23) and the interface
/// slot (32-63); `packet` its bytes (0-31), ECN-capable (32), a TCP retransmission (33),
/// and whether the interface has a link budget (34, looked up by `ifindex` only then);
/// `fair` the flow's fair queue ([`FairWord`]). The result is the flow's fair queue after
/// the packet (a [`FairWord`], absent when the flow keeps none) with [`Policed::pack`] in
/// its free bits 8-15.
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_police(ids: u64, ifindex: u64, packet: u64, fair: u64) -> u64 {
    let class = (ids & 0xffff) as u32 % MAX_CLASSES as u32;
    let slot = (ids >> 16 & 0xff) as u32 % GENERATION_SLOTS as u32;
    let Some(cfg) = CLASSES.get(class_config_index(slot, class)) else {
        return u64::from(Policed::plain(Colour::Yellow).pack()) << FairWord::FREE_BITS;
    };
    let link = if packet >> 34 & 1 != 0 {
        crate::maps::iface(ifindex as u32)
            .map(|i| &i.link)
            .filter(|l| l.is_limited())
    } else {
        None
    };
    let kind = if packet >> 33 & 1 != 0 {
        Kind::Repair
    } else {
        Kind::Plain
    };
    let mut flow = FairWord::unpack(fair);
    let policed = police_unpacked(
        class,
        cfg,
        link,
        (ids >> 32) as u32,
        packet as u32,
        packet >> 32 & 1 != 0,
        kind,
        &mut flow,
    );
    let fair = match flow {
        Some((tat, epoch, units)) => FairWord::pack(tat, epoch, units),
        None => FairWord::ABSENT,
    };
    fair | u64::from(policed.pack()) << FairWord::FREE_BITS
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn police_unpacked(
    class: u32,
    cfg: &ClassConfig,
    link: Option<&BucketParams>,
    iface_slot: u32,
    bytes: u32,
    ecn_capable: bool,
    kind: Kind,
    flow: &mut Option<(u32, u8, u8)>,
) -> Policed {
    let tcm = &cfg.policer;
    if !tcm.peak.is_limited() && !tcm.committed.is_limited() && link.is_none() {
        return Policed::plain(Colour::Yellow);
    }
    // The caller found this CPU's lease short of the packet (see `police`); a green packet
    // reserves the next one below.
    let lease = if cfg.lease.is_on() && kind == Kind::Plain && link.is_none() {
        CLASS_LEASES.get_ptr_mut(class)
    } else {
        None
    };
    // SAFETY: helper without preconditions.
    let now_ns = unsafe { bpf_ktime_get_ns() };
    let now = ns_to_ticks(now_ns);
    // The pipeline already bounded `class`, so this lookup cannot fail; if it ever did, the
    // packet is not punished for it (fail open).
    let Some(state) = POLICERS.get_ptr_mut(class) else {
        return Policed::plain(Colour::Green);
    };
    // SAFETY: map value pointer; fields are u64-aligned.
    let (committed_tat, peak_tat, aqm_state, window_state, fair_state) = unsafe {
        (
            core::ptr::addr_of_mut!((*state).committed_tat),
            core::ptr::addr_of_mut!((*state).peak_tat),
            core::ptr::addr_of_mut!((*state).aqm),
            core::ptr::addr_of_mut!((*state).window),
            core::ptr::addr_of_mut!((*state).fair),
        )
    };
    // The flows sharing the class (this one counted), and the flow's standing on the bucket
    // its class shares among its flows.
    let (sharing, standing) = match flow.as_mut() {
        Some(flow) => {
            // SAFETY: map value pointer, as in `update`.
            let (sharing, epoch, units) =
                unsafe { count_flow(&cfg.fair, state, flow, now_ns, bytes, lease) };
            let standing = if cfg.fair.is_on() {
                let (tat, bucket) = if cfg.fair.bucket == Aqm::PEAK {
                    (peak_tat, &tcm.peak)
                } else {
                    (committed_tat, &tcm.committed)
                };
                // SAFETY: map value pointer, as in `update`.
                unsafe { fair_standing(&cfg.fair, sharing, flow, tat, bucket, now_ns, bytes) }
            } else {
                Standing::Neutral
            };
            (flow.1, flow.2) = (epoch, units);
            (sharing, standing)
        }
        // SAFETY: map value pointer, as in `update`.
        None => (
            sharing_flows(&unsafe { core::ptr::read_volatile(fair_state) }),
            Standing::Neutral,
        ),
    };
    let on = |which: u32| {
        if cfg.fair.bucket == which {
            standing
        } else {
            Standing::Neutral
        }
    };
    let aqm = &cfg.aqm;
    let mut signal = Signal::None;
    let mut repaired = false;
    if tcm.peak.is_limited() {
        match take(
            Aqm::PEAK,
            peak_tat,
            &tcm.peak,
            aqm,
            aqm_state,
            now_ns,
            bytes,
            ecn_capable,
            kind,
            on(Aqm::PEAK),
            &mut repaired,
        ) {
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
        match take(
            Aqm::COMMITTED,
            committed_tat,
            &tcm.committed,
            aqm,
            aqm_state,
            now_ns,
            bytes,
            ecn_capable,
            kind,
            on(Aqm::COMMITTED),
            &mut repaired,
        ) {
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
        let (tat, bucket) = if cfg.window.bucket == Aqm::PEAK {
            (peak_tat, &tcm.peak)
        } else {
            (committed_tat, &tcm.committed)
        };
        // SAFETY: map value pointers, as in `update`.
        unsafe { steer_window(&cfg.window, window_state, tat, bucket, now_ns, sharing) };
    }
    let colour = match link {
        Some(link) => link_budget(colour, link, iface_slot, cfg.priority, now, bytes),
        None => colour,
    };
    if let Some(lease) = lease {
        if colour == Colour::Green && signal == Signal::None {
            // SAFETY: the per-CPU lease; the class's policer state.
            unsafe { take_lease(lease, cfg, state, now) };
        }
    }
    Policed {
        colour,
        signal,
        repaired,
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
