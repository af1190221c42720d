//! Every map of the program, one line each on what it is for. Names are listed once more in
//! `dataplane_common::maps::names` for user space.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use dataplane_common::{
    classify::{PrefixKey, RuleVector, FIELD_TABLE_ENTRIES},
    flow::MIN_CACHE_BITS,
    maps::{
        ClassConfig, ClassCounters, FlowEntry, ForwardCounters, IfaceConfig, IfaceCounters,
        LinkState, PolicerState, PolicySlot, ReturnEntry,
    },
    packet::{PacketMeta, TCP_OPTIONS_ROOM},
    policer::Lease,
    GENERATION_SLOTS, IFINDEX_ARRAY_LIMIT, MAX_CLASSES, MAX_IFACES, MAX_RULES, PREFIX_ENTRIES,
    RETURN_TABLE_ENTRIES, VECTOR_POOL_ENTRIES,
};

/// Which generation slot is live; user space flips it in one write.
#[btf_map]
pub static ACTIVE_SLOT: Array<u32, 1> = Array::new();
/// Per slot: generation number, scan width, default class, absent-field vectors.
#[btf_map]
pub static POLICY_SLOTS: Array<PolicySlot, GENERATION_SLOTS> = Array::new();
/// Per slot and class id: policer parameters, colour actions, priority.
#[btf_map]
pub static CLASSES: Array<ClassConfig, { GENERATION_SLOTS * MAX_CLASSES }> = Array::new();
/// Per slot and rule index: the class the rule selects.
#[btf_map]
pub static RULE_CLASSES: Array<u32, { GENERATION_SLOTS * MAX_RULES }> = Array::new();
/// Per slot, field and value (ports, protocol, DSCP, iface, opcode): pool vector index.
#[btf_map]
pub static FIELD_TABLE: Array<u32, FIELD_TABLE_ENTRIES> = Array::new();
/// Per slot and address field, longest prefix: pool vector index.
#[btf_map]
pub static PREFIXES: LpmTrie<PrefixKey, u32, PREFIX_ENTRIES> = LpmTrie::new();
/// Deduplicated rule bit-vectors; index 0 is all ones.
#[btf_map]
pub static VECTOR_POOL: Array<RuleVector, VECTOR_POOL_ENTRIES> = Array::new();
/// Per class id: shared trTCM state, updated with compare-and-swap.
#[btf_map]
pub static POLICERS: Array<PolicerState, MAX_CLASSES> = Array::new();
/// Per CPU and class id: the CPU's green lease (`policer::LeaseParams`, `policer::Lease`).
#[btf_map]
pub static CLASS_LEASES: PerCpuArray<Lease, MAX_CLASSES> = PerCpuArray::new();
/// Registered interfaces by ifindex below `IFINDEX_ARRAY_LIMIT`: counter slot and link
/// budget (slot 0: not registered).
#[btf_map]
pub static IFACES_BY_INDEX: Array<IfaceConfig, IFINDEX_ARRAY_LIMIT> = Array::new();
/// Registered interfaces of larger ifindex.
#[btf_map]
pub static IFACES: HashMap<u32, IfaceConfig, MAX_IFACES> = HashMap::new();

/// The registered interface `ifindex`, if any.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceConfig> {
    if ifindex < IFINDEX_ARRAY_LIMIT as u32 {
        IFACES_BY_INDEX.get(ifindex).filter(|i| i.slot != 0)
    } else {
        // SAFETY: hash values are plain data, replaced whole by user space.
        unsafe { IFACES.get(ifindex) }
    }
}
/// Per interface slot: shared link-budget state.
#[btf_map]
pub static LINKS: Array<LinkState, MAX_IFACES> = Array::new();
/// Each CPU's flow table of two-entry sets (`flow::cache_set`): the flow's key and class,
/// tagged with the generation it was computed under. User space sizes it at load
/// (`flow::cache_entries`); the size here serves one CPU.
#[btf_map]
pub static FLOW_CACHE: Array<FlowEntry, { 1 << MIN_CACHE_BITS }> = Array::new();
/// log2 of each CPU's flow-table slots (`flow::cache_bits`), set by user space at load.
#[no_mangle]
static FLOW_CACHE_BITS: u32 = MIN_CACHE_BITS;

/// log2 of each CPU's flow-table slots.
#[inline(always)]
pub fn flow_cache_bits() -> u32 {
    // SAFETY: a plain read of a constant the loader set; volatile so the compiler does not
    // fold in the default.
    unsafe { core::ptr::read_volatile(&FLOW_CACHE_BITS) }
}
/// Reply direction of a TCP flow (by connection key hash) -> the class whose window its
/// ACKs advertise at most.
#[btf_map]
pub static TCP_RETURNS: LruHashMap<u64, ReturnEntry, RETURN_TABLE_ENTRIES> = LruHashMap::new();
/// Per interface slot and class: packets, bytes, colours, drops, marks.
#[btf_map]
pub static CLASS_COUNTERS: PerCpuArray<ClassCounters, { MAX_IFACES * MAX_CLASSES }> =
    PerCpuArray::new();
/// Per interface slot: outcomes by reason, flow-cache hits and misses.
#[btf_map]
pub static IFACE_COUNTERS: PerCpuArray<IfaceCounters, MAX_IFACES> = PerCpuArray::new();
/// Per interface slot: packets of a sprayed transport (UET) whose header was cut short or of
/// a reserved type, keyed on their 5-tuple instead of their connection.
#[btf_map]
pub static SPRAY_UNKEYED: PerCpuArray<u64, MAX_IFACES> = PerCpuArray::new();
/// Kernel log level set by user space at runtime (0 = off): checked before any log call, so
/// logging costs one array read when off.
#[btf_map]
pub static LOG_LEVEL: Array<u32, 1> = Array::new();
/// The route generation: user space bumps it on every routing change the kernel reports, and
/// a flow's cached next hop serves only the generation it was looked up under.
#[btf_map]
pub static ROUTE_GENERATION: Array<u32, 1> = Array::new();
/// Interfaces forwarded packets may leave by, keyed by ifindex: the redirect targets.
#[btf_map]
pub static EGRESS_DEVICES: DevMapHash<MAX_IFACES> = DevMapHash::new();
/// Per egress interface slot and class: forwarded packets and bytes.
#[btf_map]
pub static FORWARD_COUNTERS: PerCpuArray<ForwardCounters, { MAX_IFACES * MAX_CLASSES }> =
    PerCpuArray::new();
/// Scratch space for the route lookup's 64-byte parameter block (the verifier allows 512
/// bytes of stack, and the pipeline needs most of them).
#[btf_map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup, 1> = PerCpuArray::new();
/// Scratch space for a SYN-ACK's TCP options while their window scale is looked up.
#[btf_map]
pub static TCP_OPTIONS_SCRATCH: PerCpuArray<[u8; TCP_OPTIONS_ROOM], 1> = PerCpuArray::new();
/// Scratch space for the parsed packet (see [`PacketScratch`]).
#[btf_map]
pub static PACKET_SCRATCH: PerCpuArray<PacketScratch, 1> = PerCpuArray::new();

/// Room for one [`dataplane_common::packet::PacketMeta`]: parsed on the stack, its addresses
/// were split into single bytes and spilled into one 8-byte slot each, most of the stack.
/// The map value is plain words (PacketMeta is not `#[repr(C)]`, so it gets no BTF of its own).
/// After it, the hash of the packet's flow key, which the classifier leaves for the policer
/// (valid while the packet has a flow-cache entry).
#[repr(C)]
pub struct PacketScratch {
    words: [u64; core::mem::size_of::<PacketMeta>().div_ceil(8)],
    /// The packet's flow-key hash.
    pub flow_hash: u64,
}

const _: () =
    assert!(core::mem::align_of::<PacketMeta>() <= core::mem::align_of::<PacketScratch>());
/// Kernel log records in aya-log's format (read by aya-log's user-space reader by name).
#[btf_map]
pub static AYA_LOGS: RingBuf<(), { 1 << 17 }> = RingBuf::new();
