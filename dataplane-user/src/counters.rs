//! Reading what the kernel counts and keeps: per-class, per-interface and forwarding counters
//! (summed over CPUs) and each class's shared policer state. One reader serves the CLI
//! (through [`Dataplane`]'s methods), the metrics exporter and the forwarding stats.

use std::borrow::Borrow;

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    Pod,
};
use dataplane_common::{
    maps::{
        class_counter_index, names, ClassCounters, ForwardCounters, IfaceCounters, PolicerState,
    },
    policer::{backlog_ns, ns_to_ticks},
};

use crate::dataplane::{map_err, monotonic_ns, Dataplane, DataplaneError};

/// The counter maps and the policer states, through handles of type `T`: borrowed from the
/// [`Dataplane`] ([`CounterReader::borrowed`], for one read), or file descriptors of its own
/// ([`CounterReader::new`]), so a scrape needs neither the [`Dataplane`] nor any lock its
/// owner holds (a reload can run meanwhile).
pub struct CounterReader<T: Borrow<MapData> = MapData> {
    policers: Array<T, PolicerState>,
    classes: PerCpuArray<T, ClassCounters>,
    ifaces: PerCpuArray<T, IfaceCounters>,
    forwarded: PerCpuArray<T, ForwardCounters>,
    spray_unkeyed: PerCpuArray<T, u64>,
}

/// One read through the dataplane's own handles, for the CLI and the tests.
impl Dataplane {
    /// Counters of `class` on interface slot `iface_slot`, summed over CPUs.
    pub fn class_counters(
        &self,
        iface_slot: u32,
        class: u32,
    ) -> Result<ClassCounters, DataplaneError> {
        CounterReader::borrowed(self)?.class_counters(iface_slot, class)
    }

    /// The class's shared policer state (see [`CounterReader::policer_state`]).
    pub fn policer_state(&self, class: u32) -> Result<PolicerState, DataplaneError> {
        CounterReader::borrowed(self)?.policer_state(class)
    }

    /// Packets and bytes of `class` forwarded out of interface slot `egress_slot`, summed
    /// over CPUs.
    pub fn forward_counters(
        &self,
        egress_slot: u32,
        class: u32,
    ) -> Result<ForwardCounters, DataplaneError> {
        CounterReader::borrowed(self)?.forward_counters(egress_slot, class)
    }

    /// Counters of interface slot `iface_slot`, summed over CPUs.
    pub fn iface_counters(&self, iface_slot: u32) -> Result<IfaceCounters, DataplaneError> {
        CounterReader::borrowed(self)?.iface_counters(iface_slot)
    }

    /// Packets of a sprayed transport that arrived on interface slot `iface_slot` with a
    /// header cut short, keyed on their 5-tuple (see [`CounterReader::spray_unkeyed`]).
    pub fn spray_unkeyed(&self, iface_slot: u32) -> Result<u64, DataplaneError> {
        CounterReader::borrowed(self)?.spray_unkeyed(iface_slot)
    }
}

impl CounterReader<MapData> {
    /// Opens the maps of `dp` anew (same kernel maps, new file descriptors).
    pub fn new(dp: &Dataplane) -> Result<CounterReader, DataplaneError> {
        Ok(CounterReader {
            policers: own_handle(dp, names::POLICERS, Map::Array)?,
            classes: own_handle(dp, names::CLASS_COUNTERS, Map::PerCpuArray)?,
            ifaces: own_handle(dp, names::IFACE_COUNTERS, Map::PerCpuArray)?,
            forwarded: own_handle(dp, names::FORWARD_COUNTERS, Map::PerCpuArray)?,
            spray_unkeyed: own_handle(dp, names::SPRAY_UNKEYED, Map::PerCpuArray)?,
        })
    }
}

impl<'a> CounterReader<&'a MapData> {
    /// Reads through `dp`'s own handles (no system call to set up).
    pub fn borrowed(dp: &'a Dataplane) -> Result<CounterReader<&'a MapData>, DataplaneError> {
        Ok(CounterReader {
            policers: typed(dp, names::POLICERS)?,
            classes: typed(dp, names::CLASS_COUNTERS)?,
            ifaces: typed(dp, names::IFACE_COUNTERS)?,
            forwarded: typed(dp, names::FORWARD_COUNTERS)?,
            spray_unkeyed: typed(dp, names::SPRAY_UNKEYED)?,
        })
    }
}

impl<T: Borrow<MapData>> CounterReader<T> {
    /// Counters of class id `class` on interface slot `iface_slot`, summed over CPUs.
    pub fn class_counters(
        &self,
        iface_slot: u32,
        class: u32,
    ) -> Result<ClassCounters, DataplaneError> {
        sum_over_cpus(
            &self.classes,
            names::CLASS_COUNTERS,
            class_counter_index(iface_slot, class),
            ClassCounters::add,
        )
    }

    /// Counters of interface slot `iface_slot`, summed over CPUs.
    pub fn iface_counters(&self, iface_slot: u32) -> Result<IfaceCounters, DataplaneError> {
        sum_over_cpus(
            &self.ifaces,
            names::IFACE_COUNTERS,
            iface_slot,
            IfaceCounters::add,
        )
    }

    /// Packets of a sprayed transport (UET) that arrived on interface slot `iface_slot` with
    /// a header cut short or of a reserved type, so keyed on their 5-tuple instead of their
    /// connection (`dataplane_common::spray`), summed over CPUs.
    pub fn spray_unkeyed(&self, iface_slot: u32) -> Result<u64, DataplaneError> {
        sum_over_cpus(
            &self.spray_unkeyed,
            names::SPRAY_UNKEYED,
            iface_slot,
            |sum, n| *sum += n,
        )
    }

    /// Packets and bytes of class id `class` forwarded out of interface slot `egress_slot`,
    /// summed over CPUs.
    pub fn forward_counters(
        &self,
        egress_slot: u32,
        class: u32,
    ) -> Result<ForwardCounters, DataplaneError> {
        sum_over_cpus(
            &self.forwarded,
            names::FORWARD_COUNTERS,
            class_counter_index(egress_slot, class),
            ForwardCounters::add,
        )
    }

    /// Class id `class`'s shared policer state: both buckets' TATs, the AQM's and the TCP
    /// window control's (its window and the round trip measured from its connections'
    /// handshakes, see `dataplane_common::window`).
    pub fn policer_state(&self, class: u32) -> Result<PolicerState, DataplaneError> {
        self.policers
            .get(&class, 0)
            .map_err(map_err(names::POLICERS))
    }

    /// The phantom backlog (seconds) of class id `class`: how far the theoretical arrival
    /// time of its enforcing bucket runs ahead of now (`committed` picks the committed bucket,
    /// else the peak one).
    pub fn phantom_backlog(&self, class: u32, committed: bool) -> Result<f64, DataplaneError> {
        let state = self.policer_state(class)?;
        let tat = if committed {
            state.committed_tat
        } else {
            state.peak_tat
        };
        Ok(backlog_ns(tat, ns_to_ticks(monotonic_ns())) as f64 / 1e9)
    }
}

/// Entry `index` of per-CPU map `map` (named `name`), summed over CPUs with `add`.
fn sum_over_cpus<T: Borrow<MapData>, V: Pod + Default>(
    map: &PerCpuArray<T, V>,
    name: &str,
    index: u32,
    add: fn(&mut V, &V),
) -> Result<V, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err(name))?;
    let mut sum = V::default();
    values.iter().for_each(|v| add(&mut sum, v));
    Ok(sum)
}

/// `dp`'s map `name` as a typed map (its type and value size checked).
fn typed<'a, M>(dp: &'a Dataplane, name: &'static str) -> Result<M, DataplaneError>
where
    M: TryFrom<&'a Map, Error = aya::maps::MapError>,
{
    M::try_from(dp.map(name)?).map_err(map_err(name))
}

/// A second handle on map `name` of `dp` (same kernel map, new file descriptor), of kind
/// `wrap`; its type and value size are checked on conversion, as the first handle's were.
fn own_handle<M>(
    dp: &Dataplane,
    name: &'static str,
    wrap: fn(MapData) -> Map,
) -> Result<M, DataplaneError>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    let (Map::Array(data) | Map::PerCpuArray(data)) = dp.map(name)? else {
        return Err(map_err(name)(aya::maps::MapError::InvalidName {
            name: name.to_string(),
        }));
    };
    let id = data.info().map_err(map_err(name))?.id();
    let copy = MapData::from_id(id).map_err(map_err(name))?;
    M::try_from(wrap(copy)).map_err(map_err(name))
}
