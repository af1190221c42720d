//! Classify: flow-cache lookup, else the AND of the per-field rule vectors.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::bpf_get_smp_processor_id};
use dataplane_common::{
    classify::{
        field_table_index, lowest_common_rule, AddrField, Field, PrefixKey, RuleVector,
        ALL_RULES_VECTOR, FIELD_COUNT, PREFIX_KEY_HEADER_BITS,
    },
    flow::{admit, cache_set, FlowState},
    maps::{rule_class_index, FlowEntry, FlowKey, IfaceCounters, PolicySlot},
    packet::PacketMeta,
    reason::Reason,
    GENERATION_SLOTS,
};

use crate::maps::{
    flow_cache_bits, PacketScratch, FIELD_TABLE, FLOW_CACHE, PACKET_SCRATCH, POLICY_SLOTS,
    PREFIXES, RULE_CLASSES, VECTOR_POOL,
};

/// The class of `meta`, from this CPU's flow table when it holds the flow at this
/// generation, and the flow's entry state (a new flow's first packet, and the first of each
/// flow after a policy change, start it afresh; a flow its set refuses has none). The flow
/// key's hash is left in `scratch` (the scratch `meta` lies in) for the policer.
#[inline(always)]
pub fn class_of(
    meta: &PacketMeta,
    scratch: *mut PacketScratch,
    iface_slot: u32,
    slot: u32,
    policy: &PolicySlot,
    counters: Option<*mut IfaceCounters>,
) -> Result<(u32, Option<*mut FlowState>), Reason> {
    if policy.flags & PolicySlot::FLOW_CACHE == 0 {
        bump(counters, |c| c.flow_cache_misses += 1);
        return Ok((rule_class(iface_slot, slot)?, None));
    }
    let key = FlowKey::of(meta, iface_slot as u8);
    let hash = key.hash();
    // SAFETY: the per-CPU scratch, past the PacketMeta that `meta` borrows.
    unsafe { core::ptr::addr_of_mut!((*scratch).flow_hash).write(hash) };
    // SAFETY: helper without preconditions; the program runs with migration disabled, so
    // the CPU stays the same until it returns.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let set = cache_set(cpu, flow_cache_bits(), hash);
    let (Some(first), Some(second)) =
        (FLOW_CACHE.get_ptr_mut(set), FLOW_CACHE.get_ptr_mut(set + 1))
    else {
        // A table not sized for this CPU (an object loaded without our loader) caches nothing.
        bump(counters, |c| c.flow_cache_misses += 1);
        return Ok((rule_class(iface_slot, slot)?, None));
    };
    // SAFETY: array values, valid for this run; only this CPU uses its part of the table,
    // and XDP does not nest on one CPU.
    let (first, second) = unsafe { (&mut *first, &mut *second) };
    for entry in [&mut *first, &mut *second] {
        if entry.generation == policy.generation && entry.key.same_flow(&key) {
            bump(counters, |c| c.flow_cache_hits += 1);
            entry.state.note_hit();
            return Ok((entry.class, Some(core::ptr::addr_of_mut!(entry.state))));
        }
    }
    bump(counters, |c| c.flow_cache_misses += 1);
    let class = rule_class(iface_slot, slot)?;
    let entry = match admit(policy.generation, first, second) {
        Some(0) => first,
        Some(_) => second,
        // Both entries hold flows that still send: this one is classified, not cached.
        None => return Ok((class, None)),
    };
    *entry = FlowEntry {
        key,
        generation: policy.generation,
        class,
        state: FlowState::CACHED,
    };
    Ok((class, Some(core::ptr::addr_of_mut!(entry.state))))
}

#[inline(always)]
fn bump(counters: Option<*mut IfaceCounters>, f: impl FnOnce(&mut IfaceCounters)) {
    if let Some(c) = counters {
        // SAFETY: per-CPU value; XDP does not nest on one CPU.
        f(unsafe { &mut *c });
    }
}

/// The class the rule tables of generation slot `slot` give the parsed packet.
#[inline(always)]
fn rule_class(iface_slot: u32, slot: u32) -> Result<u32, Reason> {
    let class = dataplane_classify(iface_slot, slot);
    u32::try_from(class).map_err(|_| Reason::ClassifierMiss)
}

/// The rule tables as a global BPF function, which the verifier checks once on its own
/// rather than along every path that reaches it: a static one's field lookups and its loop
/// over the rule words, walked again for every parse path and every path after it, take
/// the program past the verifier's budget. It reads the parsed packet from the parser's
/// scratch space and the policy from its slot; it returns the class, or -1 when a table
/// lookup fails (`Reason::ClassifierMiss`).
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_classify(iface_slot: u32, slot: u32) -> i64 {
    let slot = slot % GENERATION_SLOTS as u32;
    let (Some(meta), Some(policy)) = (PACKET_SCRATCH.get_ptr(0), POLICY_SLOTS.get(slot)) else {
        return -1;
    };
    // SAFETY: the per-CPU scratch the parser filled for this packet (see main::pipeline);
    // XDP does not nest on one CPU.
    let meta = unsafe { &*meta.cast::<PacketMeta>() };
    match classify(meta, iface_slot, slot, policy) {
        Ok(class) => i64::from(class),
        Err(_) => -1,
    }
}

/// Runs the compiled rule tables of generation slot `slot`.
#[inline(always)]
fn classify(
    meta: &PacketMeta,
    iface_slot: u32,
    slot: u32,
    policy: &PolicySlot,
) -> Result<u32, Reason> {
    let active = policy.active_fields;
    let absent = &policy.absent_vector;
    let table = |field: Field, value: Option<u32>| -> Result<u32, Reason> {
        if active & field.bit() == 0 {
            return Ok(ALL_RULES_VECTOR);
        }
        match value {
            Some(v) => FIELD_TABLE
                .get(field_table_index(slot, field, v))
                .copied()
                .ok_or(Reason::ClassifierMiss),
            None => Ok(absent[field as usize]),
        }
    };
    let prefix = |field: Field, addr: &[u8; 16]| -> Result<u32, Reason> {
        if active & field.bit() == 0 {
            return Ok(ALL_RULES_VECTOR);
        }
        let key = Key::new(
            PREFIX_KEY_HEADER_BITS + 128,
            PrefixKey {
                slot: slot as u8,
                field: AddrField::of(meta.family, field) as u8,
                addr: *addr,
                _pad: [0; 2],
            },
        );
        PREFIXES.get(&key).copied().ok_or(Reason::ClassifierMiss)
    };
    let ports = meta.has_ports;
    let indices: [u32; FIELD_COUNT] = [
        prefix(Field::SrcAddr, &meta.src)?,
        prefix(Field::DstAddr, &meta.dst)?,
        table(Field::Protocol, Some(u32::from(meta.protocol)))?,
        table(Field::SrcPort, meta.rule_src_port())?,
        table(Field::DstPort, ports.then_some(u32::from(meta.dst_port)))?,
        table(Field::Dscp, Some(u32::from(meta.dscp())))?,
        table(
            Field::Iface,
            Some(iface_slot % dataplane_common::MAX_IFACES as u32),
        )?,
        table(Field::RoceOpcode, meta.roce_opcode.map(u32::from))?,
    ];
    let vector = |i: usize| -> Result<&RuleVector, Reason> {
        VECTOR_POOL.get(indices[i]).ok_or(Reason::ClassifierMiss)
    };
    let vectors = [
        vector(0)?,
        vector(1)?,
        vector(2)?,
        vector(3)?,
        vector(4)?,
        vector(5)?,
        vector(6)?,
        vector(7)?,
    ];
    match lowest_common_rule(&vectors, policy.rule_words) {
        Some(rule) => RULE_CLASSES
            .get(rule_class_index(slot, rule))
            .copied()
            .ok_or(Reason::ClassifierMiss),
        None => Ok(policy.default_class),
    }
}
