//! The Prometheus exporter: what one scrape reports ([`MetricsSnapshot`]), how it is read
//! from the kernel ([`CounterReader`], [`snapshot`]) and written out ([`encode`], with
//! prometheus-client). [`http`] serves it on `/metrics`.
//!
//! Every scrape reads the per-CPU counters afresh and sums them over CPUs; nothing is cached
//! and nothing is counted in user space. Labels are bounded by the configuration
//! (interfaces × classes, plus fixed sets of reasons, colours and results); nothing is
//! labelled per flow or per address.
//!
//! | metric | labels | |
//! |---|---|---|
//! | `dataplane_class_packets_total`, `dataplane_class_bytes_total` | iface, class | every classified packet |
//! | `dataplane_class_dropped_packets_total`, `dataplane_class_dropped_bytes_total` | iface, class | dropped by policy |
//! | `dataplane_class_ecn_marked_packets_total` | iface, class | newly marked CE |
//! | `dataplane_class_early_marked_packets_total`, `dataplane_class_early_dropped_packets_total` | iface, class | early signals of the phantom queue's AQM, and the fair shares' marks (subsets of the marked and dropped) |
//! | `dataplane_class_repaired_packets_total` | iface, class | TCP retransmissions admitted on the repair allowance |
//! | `dataplane_class_remarked_packets_total` | iface, class | DSCP rewritten |
//! | `dataplane_class_forwarded_packets_total` | iface, class | forwarded past the kernel stack, by egress interface |
//! | `dataplane_class_colour_packets_total` | iface, class, colour | green / yellow / red |
//! | `dataplane_parse_errors_total` | iface, reason | the [`Reason::is_parse_error`] reasons |
//! | `dataplane_reason_packets_total` | iface, reason | every [`Reason`] (early exits and drops) |
//! | `dataplane_flow_cache_lookups_total` | iface, result (`hit`/`miss`) | |
//! | `dataplane_route_lookups_total` | iface | route lookups of packets arriving there (none for a flow on a valid cached next hop) |
//! | `dataplane_redirect_failures_total` | iface | frames forwarded out of it that it could not take |
//! | `dataplane_spray_unkeyed_packets_total` | iface | packets of a sprayed transport (UET) whose header was cut short, keyed on their 5-tuple instead of their connection |
//! | `dataplane_class_rate_bytes_per_second` | class | committed rate; 0 = no guarantee |
//! | `dataplane_class_ceil_bytes_per_second` | class | peak rate; absent = unlimited |
//! | `dataplane_class_priority` | class | 0 ..= 7 |
//! | `dataplane_class_phantom_backlog_seconds` | class | the enforcing bucket's backlog: how long a shaper at its rate would hold the next packet; 0 within rate |
//! | `dataplane_class_tcp_window_bytes` | class | the window the class's TCP window control advertises to each of its flows (its share of the class window); 0 while it narrows none |
//! | `dataplane_class_tcp_round_trip_seconds` | class | the round trip of the class's TCP connections, measured from their handshakes; 0 before one |
//! | `dataplane_xdp_attached` | iface, mode (`native`/`generic`, `none` when detached) | 1 while attached |
//! | `dataplane_config_generation` | | policy generation in force |
//! | `dataplane_policy_revision` | | with `run --etcd`: the etcd revision of the fleet policy in force |
//! | `dataplane_etcd_connected` | | with `run --etcd`: 1 while etcd answers, 0 while not |
//! | `dataplane_class_fleet_share_bytes_per_second` | class | with `run --etcd`, per fleet class: this gateway's share of its budget |
//! | `dataplane_class_fleet_demand_bytes_per_second` | class | with `run --etcd`, per fleet class: the demand this gateway reports |
//! | `dataplane_config_reloads_total` | result (`ok`/`error`) | |
//! | `dataplane_kernel_info` | release, variant | always 1: the kernel and the object variant loaded on it |
//! | `dataplane_kernel_feature` | feature | 1 while the kernel offers it, 0 while not (see `dataplane kernel`) |
//! | `dataplane_verifier_instructions` | program | instructions the verifier processed loading it (of its 1 000 000) |
//! | `dataplane_build_info` | version | always 1 |

pub mod http;

use std::fmt;

use dataplane_common::{
    maps::{ClassCounters, IfaceCounters},
    policer::{Colour, COLOURS},
    reason::Reason,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::Registry,
};

pub use crate::state::AttachMode;
use crate::{
    config::{ClassSpec, Policy},
    dataplane::DataplaneError,
    kernel::{KernelSupport, Verified},
};

pub use crate::counters::CounterReader;

/// Where `dataplane run` serves metrics unless told otherwise: loopback only, on a port
/// outside the Prometheus exporter allocations (9100 and up, which are all taken) and below
/// Linux's ephemeral range.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:19847";

/// The version in `dataplane_build_info`.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything one scrape reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Policy generation in force (0 before the first policy).
    pub generation: u32,
    /// Policy reloads since start.
    pub reloads: Reloads,
    /// Classes in policy order, as configured.
    pub classes: Vec<ClassInfo>,
    /// Phantom backlog of each class (seconds), in the order of `classes`.
    pub phantom_backlog_seconds: Vec<f64>,
    /// TCP window of each class (bytes; 0 = none), in the order of `classes`.
    pub tcp_window_bytes: Vec<u64>,
    /// Round trip of each class's TCP connections (seconds; 0 before one), in the order of
    /// `classes`.
    pub tcp_round_trip_seconds: Vec<f64>,
    /// Interfaces and their counters.
    pub ifaces: Vec<IfaceSample>,
    /// The daemon's standing with its fleet, when it has one.
    pub fleet: Option<FleetView>,
    /// The kernel and what verifying the object cost on it (absent where not probed).
    pub kernel: Option<KernelView>,
}

/// What the metrics say of the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelView {
    /// Its features as probed.
    pub support: KernelSupport,
    /// What verifying each XDP program cost.
    pub verified: Vec<Verified>,
}

/// Policy reloads since start, by result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloads {
    /// Applied.
    pub ok: u64,
    /// Refused (bad file, or the kernel tables rejected it); the old policy stayed.
    pub error: u64,
}

/// A class as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Class name.
    pub name: String,
    /// Committed rate; 0 = no guarantee.
    pub rate_bytes_per_sec: u64,
    /// Peak rate; `None` = unlimited.
    pub ceil_bytes_per_sec: Option<u64>,
    /// Priority 0 (lowest) ..= 7.
    pub priority: u8,
}

impl From<&ClassSpec> for ClassInfo {
    fn from(c: &ClassSpec) -> ClassInfo {
        ClassInfo {
            name: c.name.clone(),
            rate_bytes_per_sec: c.rate_bytes_per_sec,
            ceil_bytes_per_sec: c.ceil_bytes_per_sec,
            priority: c.priority,
        }
    }
}

/// `mode` label of an interface the program is not attached to.
const DETACHED_LABEL: &str = "none";

/// One interface's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSample {
    /// Interface name.
    pub name: String,
    /// Attach mode, `None` while not attached.
    pub attached: Option<AttachMode>,
    /// Per-reason and flow-cache counters, summed over CPUs.
    pub counters: IfaceCounters,
    /// Packets of a sprayed transport keyed on their 5-tuple (a header cut short).
    pub spray_unkeyed: u64,
    /// Per-class counters, in the order of [`MetricsSnapshot::classes`].
    pub classes: Vec<ClassSample>,
}

/// One class's counters on one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassSample {
    /// Classifier, policer and action counters, summed over CPUs.
    pub counters: ClassCounters,
    /// Packets forwarded past the kernel stack.
    pub forwarded_packets: u64,
}

/// An interface to report: its name, its counter slot (as `Dataplane::register_interfaces`
/// assigned it) and how the program is attached to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Interface name.
    pub name: String,
    /// Counter slot, 1..MAX_IFACES.
    pub slot: u32,
    /// Attach mode, `None` while not attached.
    pub attached: Option<AttachMode>,
}

/// The configuration a scrape reports against: the classes in force with their kernel ids
/// (stable across reloads, see [`crate::ids`]), the interfaces, generation and reloads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigView {
    /// Classes in policy order, each with its kernel class id.
    pub classes: Vec<(ClassInfo, u32)>,
    /// Interfaces to report.
    pub ifaces: Vec<Iface>,
    /// Policy generation in force.
    pub generation: u32,
    /// Reloads so far.
    pub reloads: Reloads,
    /// The daemon's standing with its fleet, when it has one.
    pub fleet: Option<FleetView>,
    /// The kernel, as the daemon probed it.
    pub kernel: Option<KernelView>,
}

/// What the metrics say of a daemon's fleet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetView {
    /// Whether etcd answers.
    pub connected: bool,
    /// The etcd revision of the policy in force.
    pub revision: i64,
    /// Per fleet class: (name, this gateway's share of the budget, its measured demand), in
    /// bytes per second.
    pub classes: Vec<(String, u64, u64)>,
}

impl ConfigView {
    /// The view of `policy` compiled with ids in file order ([`crate::compile::CompiledPolicy::new`]).
    pub fn in_file_order(
        policy: &Policy,
        ifaces: Vec<Iface>,
        generation: u32,
        reloads: Reloads,
    ) -> ConfigView {
        ConfigView {
            classes: policy
                .classes
                .iter()
                .zip(0..)
                .map(|(c, id)| (ClassInfo::from(c), id))
                .collect(),
            ifaces,
            generation,
            reloads,
            fleet: None,
            kernel: None,
        }
    }
}

/// Reads the counters of every interface and class of `view`.
pub fn snapshot(
    reader: &CounterReader,
    view: &ConfigView,
) -> Result<MetricsSnapshot, DataplaneError> {
    let ifaces = view
        .ifaces
        .iter()
        .map(|iface| {
            let classes = view
                .classes
                .iter()
                .map(|(_, class)| {
                    Ok(ClassSample {
                        counters: reader.class_counters(iface.slot, *class)?,
                        // Counted by egress interface: what left through this one.
                        forwarded_packets: reader.forward_counters(iface.slot, *class)?.packets,
                    })
                })
                .collect::<Result<_, DataplaneError>>()?;
            Ok(IfaceSample {
                name: iface.name.clone(),
                attached: iface.attached,
                counters: reader.iface_counters(iface.slot)?,
                spray_unkeyed: reader.spray_unkeyed(iface.slot)?,
                classes,
            })
        })
        .collect::<Result<_, DataplaneError>>()?;
    let phantom_backlog_seconds = view
        .classes
        .iter()
        .map(|(info, class)| {
            // The enforcing bucket: the committed one with a rate, else the peak one.
            if info.rate_bytes_per_sec > 0 {
                reader.phantom_backlog(*class, true)
            } else if info.ceil_bytes_per_sec.is_some() {
                reader.phantom_backlog(*class, false)
            } else {
                Ok(0.0)
            }
        })
        .collect::<Result<_, DataplaneError>>()?;
    let windows = view
        .classes
        .iter()
        .map(|(_, class)| reader.policer_state(*class))
        .collect::<Result<Vec<_>, DataplaneError>>()?;
    Ok(MetricsSnapshot {
        generation: view.generation,
        reloads: view.reloads,
        classes: view.classes.iter().map(|(c, _)| c.clone()).collect(),
        phantom_backlog_seconds,
        tcp_window_bytes: windows
            .iter()
            .map(|s| u64::from(s.window.flow_bytes))
            .collect(),
        tcp_round_trip_seconds: windows
            .iter()
            .map(|s| f64::from(s.window.rtt_us) / 1e6)
            .collect(),
        ifaces,
        fleet: view.fleet.clone(),
        kernel: view.kernel.clone(),
    })
}

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for).
    OpenMetrics,
    /// Prometheus text 0.0.4 (for clients that do not ask for OpenMetrics).
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    /// The `Content-Type` of the format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Writes `snapshot` in `format`.
pub fn encode(snapshot: MetricsSnapshot, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(snapshot)));
    let mut out = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
    }
    Ok(out)
}

/// A per-class counter: name without `_total` (the encoder adds it), help, value.
type ClassCounterDef = (&'static str, &'static str, fn(&ClassSample) -> u64);

const CLASS_COUNTERS: [ClassCounterDef; 10] = [
    (
        "dataplane_class_packets",
        "Packets classified into the class.",
        |s| s.counters.packets,
    ),
    (
        "dataplane_class_bytes",
        "Bytes (whole frames) classified into the class.",
        |s| s.counters.bytes,
    ),
    (
        "dataplane_class_dropped_packets",
        "Packets of the class dropped by policy (including non-ECT packets under an ECN action).",
        |s| s.counters.dropped_packets,
    ),
    (
        "dataplane_class_dropped_bytes",
        "Bytes of the class dropped by policy.",
        |s| s.counters.dropped_bytes,
    ),
    (
        "dataplane_class_ecn_marked_packets",
        "Packets of the class newly marked ECN CE.",
        |s| s.counters.ecn_marked_packets,
    ),
    (
        "dataplane_class_early_marked_packets",
        "Packets of the class marked CE early by the phantom queue's AQM or, being over their flow's fair share, by flow fairness (the bucket still had room).",
        |s| s.counters.early_marked_packets,
    ),
    (
        "dataplane_class_early_dropped_packets",
        "Packets of the class dropped early by the phantom queue's AQM (not ECN-capable; the bucket still had room).",
        |s| s.counters.early_dropped_packets,
    ),
    (
        "dataplane_class_repaired_packets",
        "TCP retransmissions of the class admitted on the repair allowance (the bucket alone would have dropped them).",
        |s| s.counters.repaired_packets,
    ),
    (
        "dataplane_class_remarked_packets",
        "Packets of the class whose DSCP was rewritten.",
        |s| s.counters.remarked_packets,
    ),
    (
        "dataplane_class_forwarded_packets",
        "Packets of the class forwarded by the dataplane past the kernel stack.",
        |s| s.forwarded_packets,
    ),
];

/// A gauge family with one value per class (`values` in the order of `classes`).
fn class_gauge<V: EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    classes: &[ClassInfo],
    values: &[V],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (class, value) in classes.iter().zip(values) {
        let labels = [("class", class.name.as_str())];
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Colour label values, by [`Colour`] index.
const COLOUR_LABELS: [(Colour, &str); COLOURS] = [
    (Colour::Green, "green"),
    (Colour::Yellow, "yellow"),
    (Colour::Red, "red"),
];

/// One scrape's metrics, for prometheus-client.
#[derive(Debug)]
struct Exposition(MetricsSnapshot);

impl Exposition {
    /// Every (iface, class) pair with its sample.
    fn class_samples(&self) -> impl Iterator<Item = (&str, &str, &ClassSample)> {
        self.0.ifaces.iter().flat_map(|iface| {
            self.0
                .classes
                .iter()
                .zip(&iface.classes)
                .map(|(class, sample)| (iface.name.as_str(), class.name.as_str(), sample))
        })
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        for (name, help, value) in CLASS_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (iface, class, sample) in self.class_samples() {
                let labels = [("iface", iface), ("class", class)];
                ConstCounter::new(value(sample)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "dataplane_class_colour_packets",
            "Packets of the class by policer colour: green within rate, yellow above rate within ceil, red above ceil.",
            None,
            MetricType::Counter,
        )?;
        for (iface, class, sample) in self.class_samples() {
            for (colour, label) in COLOUR_LABELS {
                let labels = [("iface", iface), ("class", class), ("colour", label)];
                let value = sample.counters.colour_packets[colour as usize];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        for (name, help, parse_errors_only) in [
            (
                "dataplane_parse_errors",
                "Malformed frames (passed unclassified), by reason.",
                true,
            ),
            (
                "dataplane_reason_packets",
                "Packets that left the pipeline early or were dropped, by reason.",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for iface in &s.ifaces {
                for reason in Reason::ALL {
                    if parse_errors_only && !reason.is_parse_error() {
                        continue;
                    }
                    let labels = [("iface", iface.name.as_str()), ("reason", reason.label())];
                    let value = iface.counters.reasons[reason as usize];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "dataplane_flow_cache_lookups",
            "Flow-cache lookups by result (a miss classifies through the rule tables).",
            None,
            MetricType::Counter,
        )?;
        for iface in &s.ifaces {
            let c = &iface.counters;
            for (result, value) in [("hit", c.flow_cache_hits), ("miss", c.flow_cache_misses)] {
                let labels = [("iface", iface.name.as_str()), ("result", result)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        for (name, help, value) in [
            (
                "dataplane_route_lookups",
                "Route lookups (bpf_fib_lookup) for packets arriving on the interface; a \
                 forwarded flow on a valid cached next hop needs none.",
                (|c| c.route_lookups) as fn(&IfaceCounters) -> u64,
            ),
            (
                "dataplane_redirect_failures",
                "Frames forwarded out of the interface that it could not take (failed \
                 redirect or dropped by the egress), counted while the daemon runs.",
                |c| c.redirect_failures,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for iface in &s.ifaces {
                let labels = [("iface", iface.name.as_str())];
                ConstCounter::new(value(&iface.counters)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "dataplane_spray_unkeyed_packets",
            "Packets of a sprayed transport (UET) whose header was cut short or of a reserved \
             type, keyed on their 5-tuple instead of their connection.",
            None,
            MetricType::Counter,
        )?;
        for iface in &s.ifaces {
            let labels = [("iface", iface.name.as_str())];
            ConstCounter::new(iface.spray_unkeyed).encode(family.encode_family(&labels)?)?;
        }

        for (name, help, value) in [
            (
                "dataplane_class_rate_bytes_per_second",
                "Committed (guaranteed) rate of the class; 0 = no guarantee.",
                (|c| Some(c.rate_bytes_per_sec)) as fn(&ClassInfo) -> Option<u64>,
            ),
            (
                "dataplane_class_ceil_bytes_per_second",
                "Peak rate of the class; absent for a class without a ceiling.",
                |c| c.ceil_bytes_per_sec,
            ),
            (
                "dataplane_class_priority",
                "Priority of the class on the link budget, 0 (lowest) to 7.",
                |c| Some(u64::from(c.priority)),
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for class in &s.classes {
                if let Some(v) = value(class) {
                    let labels = [("class", class.name.as_str())];
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        class_gauge(
            &mut encoder,
            "dataplane_class_phantom_backlog_seconds",
            "Backlog of the class's enforcing bucket: how long a shaper at its rate would hold the next packet (0 within rate); the AQM signals while it stays above aqm_target.",
            &s.classes,
            &s.phantom_backlog_seconds,
        )?;
        class_gauge(
            &mut encoder,
            "dataplane_class_tcp_window_bytes",
            "The receive window the class's TCP window control advertises to each of its flows on their returning ACKs: its share of the class window (0 while it narrows none).",
            &s.classes,
            &s.tcp_window_bytes,
        )?;
        class_gauge(
            &mut encoder,
            "dataplane_class_tcp_round_trip_seconds",
            "The round trip of the class's TCP connections as its window control measures it (SYN to first data at the gateway, averaged; 0 before one).",
            &s.classes,
            &s.tcp_round_trip_seconds,
        )?;

        let mut family = encoder.encode_descriptor(
            "dataplane_xdp_attached",
            "1 while the XDP program is attached to the interface, in the labelled mode.",
            None,
            MetricType::Gauge,
        )?;
        for iface in &s.ifaces {
            let mode = iface.attached.map_or(DETACHED_LABEL, AttachMode::label);
            let labels = [("iface", iface.name.as_str()), ("mode", mode)];
            ConstGauge::new(u64::from(iface.attached.is_some()))
                .encode(family.encode_family(&labels)?)?;
        }

        if let Some(fleet) = &s.fleet {
            for (name, help, value) in [
                (
                    "dataplane_class_fleet_share_bytes_per_second",
                    "The share of a fleet class's budget (its ceil, else its rate) this gateway enforces.",
                    (|c| c.1) as fn(&(String, u64, u64)) -> u64,
                ),
                (
                    "dataplane_class_fleet_demand_bytes_per_second",
                    "The demand this gateway reports for a fleet class: bytes per second offered to it here, dropped ones included.",
                    |c| c.2,
                ),
            ] {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for class in &fleet.classes {
                    let labels = [("class", class.0.as_str())];
                    ConstGauge::new(value(class)).encode(family.encode_family(&labels)?)?;
                }
            }
            ConstGauge::new(fleet.revision).encode(encoder.encode_descriptor(
                "dataplane_policy_revision",
                "The etcd revision of the fleet policy in force (run --etcd); 0 before the first.",
                None,
                MetricType::Gauge,
            )?)?;
            ConstGauge::new(i64::from(fleet.connected)).encode(encoder.encode_descriptor(
                "dataplane_etcd_connected",
                "1 while the fleet's etcd answers; 0 while it does not (the policy in force stays).",
                None,
                MetricType::Gauge,
            )?)?;
        }

        ConstGauge::new(u64::from(s.generation)).encode(encoder.encode_descriptor(
            "dataplane_config_generation",
            "Generation of the policy in force (0 before the first).",
            None,
            MetricType::Gauge,
        )?)?;

        let mut family = encoder.encode_descriptor(
            "dataplane_config_reloads",
            "Policy reloads by result; after an error the previous policy stays in force.",
            None,
            MetricType::Counter,
        )?;
        for (result, value) in [("ok", s.reloads.ok), ("error", s.reloads.error)] {
            ConstCounter::new(value).encode(family.encode_family(&[("result", result)])?)?;
        }

        if let Some(kernel) = &s.kernel {
            Info::new([
                ("release", kernel.support.release.as_str()),
                ("variant", kernel.support.variant.as_str()),
            ])
            .encode(encoder.encode_descriptor(
                "dataplane_kernel",
                "The running kernel and the object variant loaded on it.",
                None,
                MetricType::Info,
            )?)?;
            let mut family = encoder.encode_descriptor(
                "dataplane_kernel_feature",
                "1 while the kernel offers a BPF feature the dataplane uses, 0 while not (`dataplane kernel` says why).",
                None,
                MetricType::Gauge,
            )?;
            for f in &kernel.support.features {
                ConstGauge::new(i64::from(f.present))
                    .encode(family.encode_family(&[("feature", f.name.as_str())])?)?;
            }
            let mut family = encoder.encode_descriptor(
                "dataplane_verifier_instructions",
                "Instructions the kernel's verifier processed loading the program (its budget: 1000000).",
                None,
                MetricType::Gauge,
            )?;
            for v in &kernel.verified {
                if let Some(n) = v.instructions {
                    ConstGauge::new(i64::from(n))
                        .encode(family.encode_family(&[("program", v.program.as_str())])?)?;
                }
            }
        }

        Info::new([("version", BUILD_VERSION)]).encode(encoder.encode_descriptor(
            "dataplane_build",
            "Version of the running dataplane.",
            None,
            MetricType::Info,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_snapshot() -> MetricsSnapshot {
        let class = |name: &str, ceil| ClassInfo {
            name: name.into(),
            rate_bytes_per_sec: 1000,
            ceil_bytes_per_sec: ceil,
            priority: 3,
        };
        let mut counters = ClassCounters {
            packets: 7,
            bytes: 700,
            repaired_packets: 2,
            ..ClassCounters::default()
        };
        counters.colour_packets[Colour::Yellow as usize] = 7;
        let mut iface_counters = IfaceCounters::default();
        iface_counters.reasons[Reason::TruncatedL4 as usize] = 2;
        iface_counters.reasons[Reason::NotIp as usize] = 5;
        MetricsSnapshot {
            generation: 3,
            reloads: Reloads { ok: 2, error: 1 },
            classes: vec![class("bulk", Some(2000)), class("default", None)],
            phantom_backlog_seconds: vec![0.0025, 0.0],
            tcp_window_bytes: vec![2896, 0],
            tcp_round_trip_seconds: vec![0.005, 0.0],
            fleet: Some(FleetView {
                connected: false,
                revision: 42,
                classes: vec![("bulk".into(), 750, 2000)],
            }),
            kernel: Some(KernelView {
                support: KernelSupport {
                    release: "6.1.0-57-amd64".into(),
                    variant: crate::kernel::VARIANT.into(),
                    features: crate::kernel::FEATURES
                        .iter()
                        .map(|f| crate::kernel::Probed {
                            name: f.name.into(),
                            present: f.name != crate::kernel::name::XDP_TRACEPOINTS,
                            why_not: String::new(),
                        })
                        .collect(),
                },
                verified: vec![Verified {
                    program: "dataplane".into(),
                    instructions: Some(306_280),
                    load_ms: Some(6_500),
                }],
            }),
            ifaces: vec![IfaceSample {
                name: "eth0".into(),
                attached: Some(AttachMode::Generic),
                counters: iface_counters,
                spray_unkeyed: 3,
                classes: vec![
                    ClassSample {
                        counters,
                        forwarded_packets: 4,
                    },
                    ClassSample::default(),
                ],
            }],
        }
    }

    #[test]
    fn text_format_has_the_documented_series() {
        let text = encode(sample_snapshot(), Format::PrometheusText).expect("encodes");
        for line in [
            "# TYPE dataplane_class_packets_total counter",
            r#"dataplane_class_packets_total{iface="eth0",class="bulk"} 7"#,
            r#"dataplane_class_bytes_total{iface="eth0",class="bulk"} 700"#,
            r#"dataplane_class_forwarded_packets_total{iface="eth0",class="bulk"} 4"#,
            r#"dataplane_class_colour_packets_total{iface="eth0",class="bulk",colour="yellow"} 7"#,
            r#"dataplane_class_dropped_packets_total{iface="eth0",class="default"} 0"#,
            r#"dataplane_parse_errors_total{iface="eth0",reason="truncated_l4"} 2"#,
            r#"dataplane_reason_packets_total{iface="eth0",reason="not_ip"} 5"#,
            r#"dataplane_flow_cache_lookups_total{iface="eth0",result="miss"} 0"#,
            r#"dataplane_route_lookups_total{iface="eth0"} 0"#,
            r#"dataplane_redirect_failures_total{iface="eth0"} 0"#,
            r#"dataplane_spray_unkeyed_packets_total{iface="eth0"} 3"#,
            r#"dataplane_class_rate_bytes_per_second{class="bulk"} 1000"#,
            r#"dataplane_class_ceil_bytes_per_second{class="bulk"} 2000"#,
            r#"dataplane_class_priority{class="default"} 3"#,
            r#"dataplane_class_phantom_backlog_seconds{class="bulk"} 0.0025"#,
            r#"dataplane_class_tcp_window_bytes{class="bulk"} 2896"#,
            r#"dataplane_class_tcp_round_trip_seconds{class="bulk"} 0.005"#,
            r#"dataplane_class_repaired_packets_total{iface="eth0",class="bulk"} 2"#,
            r#"dataplane_xdp_attached{iface="eth0",mode="generic"} 1"#,
            "dataplane_config_generation 3",
            "dataplane_policy_revision 42",
            r#"dataplane_class_fleet_share_bytes_per_second{class="bulk"} 750"#,
            r#"dataplane_class_fleet_demand_bytes_per_second{class="bulk"} 2000"#,
            "dataplane_etcd_connected 0",
            r#"dataplane_config_reloads_total{result="ok"} 2"#,
            r#"dataplane_config_reloads_total{result="error"} 1"#,
            r#"dataplane_kernel_info{release="6.1.0-57-amd64",variant="full"} 1"#,
            r#"dataplane_kernel_feature{feature="atomics"} 1"#,
            r#"dataplane_kernel_feature{feature="xdp_tracepoints"} 0"#,
            r#"dataplane_verifier_instructions{program="dataplane"} 306280"#,
            &format!(r#"dataplane_build_info{{version="{BUILD_VERSION}"}} 1"#),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Not-IP traffic is not a parse error; an unlimited class has no ceiling series.
        assert!(!text.contains(r#"dataplane_parse_errors_total{iface="eth0",reason="not_ip"}"#));
        assert!(!text.contains(r#"dataplane_class_ceil_bytes_per_second{class="default"}"#));
    }

    #[test]
    fn open_metrics_ends_with_eof_and_detached_interfaces_read_zero() {
        let mut snap = sample_snapshot();
        snap.ifaces[0].attached = None;
        let text = encode(snap, Format::OpenMetrics).expect("encodes");
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE dataplane_class_packets counter\n"));
        assert!(text.contains(r#"dataplane_xdp_attached{iface="eth0",mode="none"} 0"#));
    }

    #[test]
    fn negotiation_prefers_open_metrics_only_when_asked() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
    }

    #[test]
    fn default_address_is_loopback() {
        let addr: std::net::SocketAddr = DEFAULT_METRICS_ADDR.parse().expect("an address");
        assert!(addr.ip().is_loopback());
    }
}
