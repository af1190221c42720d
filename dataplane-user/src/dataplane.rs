//! The loaded XDP program and its maps: load, write a policy generation and switch to it in
//! one step, register interfaces, attach, read counters.

use std::{
    os::fd::AsFd,
    time::{Duration, Instant},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    },
    programs::{links::FdLink, ProgramError, TracePoint, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use dataplane_common::{
    classify::{
        field_table_index, pool_index, PrefixKey, RuleVector, PREFIX_KEY_HEADER_BITS,
        VECTORS_PER_SLOT,
    },
    flow::{cache_bits, cache_entries},
    maps::{
        class_config_index, class_counter_index, names, rule_class_index, ClassConfig,
        ClassCounters, FlowEntry, FlowKey, IfaceConfig, IfaceCounters, LinkState, PolicerState,
        PolicySlot,
    },
    policer::{ns_to_ticks, rescale_tat, BucketParams},
    programs::KernelLogLevel,
    GENERATION_SLOTS, IFINDEX_ARRAY_LIMIT, MAX_CLASSES, MAX_IFACES, MAX_RULES,
};

use crate::{
    compile::{CompiledPolicy, RuleTables},
    config::Policy,
    kernel::{KernelError, Verified},
    pins::{open_failure, pin_replacing, PinError, PinLayout, LAYOUT_VERSION},
    upgrade::Upgrade,
};

/// How [`Dataplane::open_pinned`] found the pin root.
#[derive(Debug)]
pub enum Opened {
    /// Nothing was pinned: loaded and pinned afresh.
    Fresh,
    /// This layout with this program: adopted as it runs.
    Adopted,
    /// Another build's dataplane runs (an older layout, or this layout with another
    /// program): this one is pinned beside it, sharing its state, and takes its links over
    /// in [`Dataplane::complete_upgrade`].
    Upgrading(Upgrade),
}

/// The ifindex of interface `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The eBPF object, built from this source tree by the build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));

/// The benchmark harness's helper programs (traffic generator, sink, flow varier, clock
/// probes), a separate object so the dataplane's own carries none of them.
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.bpf.o"));

pub use dataplane_common::programs::{
    DATAPLANE as PROGRAM_NAME, PASS as PASS_PROGRAM_NAME, REDIRECT_WATCHERS,
};

/// What can go wrong with the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Loading the object failed.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] EbpfError),
    /// The program could not be loaded, verified or attached.
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    /// This kernel cannot run the dataplane.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The kernel's verifier refused a program: its last word, the whole log kept in a file.
    #[error(
        "the kernel's verifier refused program {program} on {release}: {last_line} (the \
         verifier's whole log: {log})"
    )]
    Verifier {
        /// The program.
        program: &'static str,
        /// `uname -r`.
        release: String,
        /// The log's last line that says something.
        last_line: String,
        /// Where the whole log was written.
        log: String,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: String,
        /// Cause.
        source: MapError,
    },
    /// The object lacks a program we need.
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    /// The object lacks a map we need.
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    /// The policy does not fit the kernel tables.
    #[error("policy too large: {0}")]
    TooLarge(String),
    /// The interface is unknown or all slots are taken.
    #[error("interface {0}")]
    Interface(String),
    /// A kernel filesystem the program needs is absent and could not be mounted.
    #[error("mounting {fs} on {at}: {source}")]
    Mount {
        /// The filesystem.
        fs: &'static str,
        /// Where.
        at: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The embedded object could not be parsed.
    #[error("parsing the embedded eBPF object: {0}")]
    Object(String),
    /// Pinned state is missing, foreign or incompatible.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// Pinning failed.
    #[error("pinning {path}: {reason}")]
    Pin {
        /// The pin path.
        path: std::path::PathBuf,
        /// Cause.
        reason: String,
    },
}

/// The kernel's map type number from its info.
fn info_type(info: &aya::maps::MapInfo) -> u32 {
    info.map_type().map_or(u32::MAX, |t| t as u32)
}

/// Wraps a map error with the map's name.
pub(crate) fn map_err(map: &str) -> impl Fn(MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map {
        map: map.to_string(),
        source,
    }
}

/// How long a generation slot stays untouched after it stopped being live. A packet that
/// read the old slot number just before the switch is still being processed from it; XDP
/// runs each packet inside one RCU read section of a NAPI poll, which lasts well under this.
const SLOT_QUIESCENCE: Duration = Duration::from_millis(50);

/// The programs of a dataplane: owned by the loaded object, or opened from pins.
enum Programs {
    Loaded(Ebpf),
    Pinned(Box<PinnedPrograms>),
}

/// Programs opened from their pins.
struct PinnedPrograms {
    dataplane: Xdp,
    pass: Xdp,
    /// In [`REDIRECT_WATCHERS`] order.
    watchers: Vec<TracePoint>,
}

/// A loaded or adopted dataplane.
pub struct Dataplane {
    maps: std::collections::HashMap<String, Map>,
    programs: Programs,
    /// When the last policy switch happened (the idle slot was live until then).
    last_switch: Option<Instant>,
    /// What loading each XDP program cost (empty when adopted from pins).
    verified: Vec<Verified>,
}

/// The kernel's id of `map`.
fn map_id(map: &Map) -> Result<Option<u32>, DataplaneError> {
    let data: &MapData = match map {
        Map::Array(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::DevMapHash(m)
        | Map::RingBuf(m) => m,
        _ => return Ok(None),
    };
    Ok(Some(data.info().map_err(map_err("?"))?.id()))
}

/// What differs between the pinned map `data` and this binary's map `name` (type, key,
/// value, entries), or `None` when they match.
fn shape_differs(
    name: &str,
    def: &aya_obj::Map,
    data: &MapData,
) -> Result<Option<String>, DataplaneError> {
    let info = data.info().map_err(map_err(name))?;
    let expected = (
        def.map_type(),
        def.key_size(),
        def.value_size(),
        expected_entries(name, def)?,
    );
    let found = (
        info_type(&info),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    // Ring buffers are sized by the kernel; compare type and key only.
    let same = if def.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 {
        expected.0 == found.0
    } else {
        expected == found
    };
    Ok((!same)
        .then(|| format!("type/key/value/entries {found:?}, this binary expects {expected:?}")))
}

/// The entries this binary gives map `name`: the flow cache is sized at load by the
/// machine's CPUs (and the next layout of the upgrade test doubles the connection table).
fn expected_entries(name: &str, def: &aya_obj::Map) -> Result<u32, DataplaneError> {
    if name == names::FLOW_CACHE {
        return Ok(cache_entries(possible_cpus()?));
    }
    #[cfg(feature = "layout-next-test")]
    if name == names::TCP_RETURNS {
        return Ok(NEXT_TEST_RETURN_ENTRIES);
    }
    Ok(def.max_entries())
}

/// The connection table's entries in the next layout the upgrade test builds
/// (`layout-next-test`): a map whose shape changed, so its entries are copied, not shared.
#[cfg(feature = "layout-next-test")]
const NEXT_TEST_RETURN_ENTRIES: u32 = 2 * dataplane_common::RETURN_TABLE_ENTRIES as u32;

/// Fills this binary's fresh map `name` of `ebpf` with the entries of `old`, the map of that
/// name the upgraded dataplane had, where keys and values still fit; says what it did.
fn refill(ebpf: &Ebpf, name: &str, old: &MapData, cpus: u32) -> Result<(), DataplaneError> {
    use aya_obj::generated::bpf_map_type::*;
    let new: &MapData = match ebpf.map(name) {
        Some(
            Map::Array(m)
            | Map::PerCpuArray(m)
            | Map::HashMap(m)
            | Map::LruHashMap(m)
            | Map::LpmTrie(m),
        ) => m,
        // Ring buffers and device maps hold no state to carry (records, ifindexes the
        // daemon writes again).
        _ => {
            tracing::info!(map = name, "upgrade: starts afresh (nothing to carry over)");
            return Ok(());
        }
    };
    let (old_info, new_info) = (
        old.info().map_err(map_err(name))?,
        new.info().map_err(map_err(name))?,
    );
    let kind = info_type(&old_info);
    // Only maps keyed by content carry over: an array's index is often composite (slot ×
    // class, interface × class), and a resized array would put entries under other keys.
    let keyed = [
        BPF_MAP_TYPE_HASH,
        BPF_MAP_TYPE_LRU_HASH,
        BPF_MAP_TYPE_LPM_TRIE,
    ]
    .iter()
    .any(|t| *t as u32 == kind);
    let fits = keyed
        && kind == info_type(&new_info)
        && old_info.key_size() == new_info.key_size()
        && old_info.value_size() == new_info.value_size();
    if !fits {
        tracing::warn!(map = name, "upgrade: its layout changed; it starts afresh");
        return Ok(());
    }
    let copied = crate::upgrade::copy_entries(
        old,
        new,
        kind,
        (old_info.key_size(), old_info.value_size()),
        old_info.max_entries(),
        cpus,
    )
    .map_err(|e| DataplaneError::Object(format!("copying map {name}'s entries: {e}")))?;
    tracing::info!(
        map = name,
        copied = copied.entries,
        refused = copied.refused,
        "upgrade: entries carried over into the new map"
    );
    Ok(())
}

/// Whether every link pinned under `layout` runs program `id`.
fn links_run(layout: &PinLayout, id: u32) -> Result<bool, DataplaneError> {
    for iface in layout.attached() {
        let path = layout.link(iface.as_str());
        let link =
            aya::programs::links::PinnedLink::from_pin(&path).map_err(|e| DataplaneError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let info = FdLink::from(link).info().map_err(|e| DataplaneError::Pin {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if info.program_id() != id {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A digest of this binary's eBPF object (FNV-1a, 64 bits, in hex): which build pinned the
/// running program, as the daemon's state records it, without loading anything to compare.
pub fn object_digest() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| {
        let hash = EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    })
}

/// A refused load as one line: the verifier's last word, its whole log in a file (an
/// operator gets a sentence, not a dump of hundreds of thousands of lines).
fn refused(program: &'static str, error: ProgramError) -> DataplaneError {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &error
    else {
        return error.into();
    };
    let text = verifier_log.to_string();
    let last_line = crate::kernel::verifier_last_word(&text)
        .map_or_else(|| io_error.to_string(), str::to_string);
    let path = std::env::temp_dir().join(format!("dataplane-verifier-{program}.log"));
    let log = match std::fs::write(&path, text.as_bytes()) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("not kept: writing {} failed: {e}", path.display()),
    };
    DataplaneError::Verifier {
        program,
        release: crate::kernel::release(),
        last_line,
        log,
    }
}

/// Maps the program holds itself and user space never touches (section data such as
/// `.rodata`) have names starting with a dot; they are neither pinned nor adopted.
fn is_user_map(name: &str) -> bool {
    !name.starts_with('.')
}

impl Dataplane {
    /// Loads the object and the program into the kernel (verifier included), unpinned: it
    /// goes away with this value. No policy is active until [`Dataplane::apply`]; until then
    /// packets pass and count as `no_policy`.
    pub fn load() -> Result<Dataplane, DataplaneError> {
        Dataplane::load_sharing(None)
    }

    /// [`Dataplane::load`], sharing the maps of the dataplane pinned under `running` whose
    /// shape (type, key, value, entries) and meaning this binary's program keeps; the others
    /// are created afresh and, where their keys and values still fit, filled with the old
    /// entries (see [`crate::upgrade`]).
    fn load_sharing(running: Option<&PinLayout>) -> Result<Dataplane, DataplaneError> {
        crate::kernel::require_supported()?;
        let cpus = possible_cpus()?;
        let bits = cache_bits(cpus);
        let object = aya_obj::Object::parse(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Object(e.to_string()))?;
        let mut shared = Vec::new();
        let mut refilled = Vec::new();
        if let Some(running) = running {
            let shareable = |name: &str| is_user_map(name) && !names::SCRATCH.contains(&name);
            for (name, def) in object.maps.iter().filter(|(n, _)| shareable(n)) {
                let path = running.map(name);
                if !path.exists() {
                    continue;
                }
                let data = MapData::from_pin(&path).map_err(|e| open_failure(&path, e))?;
                let kept = crate::upgrade::meaning_kept(name, running.version(), LAYOUT_VERSION);
                match shape_differs(name, def, &data)? {
                    None if kept => shared.push((name.clone(), path)),
                    // Within one layout every map keeps its shape: another one was pinned by
                    // hand or by a build that should have moved the layout on.
                    Some(what) if running.version() == LAYOUT_VERSION => {
                        return Err(PinError::Incompatible { path, what }.into())
                    }
                    // A changed meaning starts afresh; a changed shape carries what fits.
                    Some(_) if kept => refilled.push((name.clone(), data)),
                    _ => {}
                }
            }
            // The policy's tables and the switch between generations are read together:
            // an old program still attached must never see a shared switch flip to tables
            // only the new program has. So they are shared all together or not at all (then
            // the daemon writes the policy into the new ones before any link moves).
            let whole = crate::upgrade::POLICY_MAPS
                .iter()
                .all(|m| shared.iter().any(|(name, _)| name == m));
            if !whole {
                shared.retain(|(name, _)| !crate::upgrade::POLICY_MAPS.contains(&name.as_str()));
                refilled.retain(|(name, _)| !crate::upgrade::POLICY_MAPS.contains(&name.as_str()));
            }
        }
        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::FLOW_CACHE_BITS, &bits, true)
            .map_max_entries(names::FLOW_CACHE, cache_entries(cpus));
        #[cfg(feature = "layout-next-test")]
        loader.map_max_entries(names::TCP_RETURNS, NEXT_TEST_RETURN_ENTRIES);
        for (name, path) in &shared {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for (name, old) in &refilled {
            refill(&ebpf, name, old, cpus)?;
        }
        let mut verified = Vec::new();
        for name in [PROGRAM_NAME, PASS_PROGRAM_NAME] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()?;
            let started = Instant::now();
            prog.load().map_err(|e| refused(name, e))?;
            let load_ms = started.elapsed().as_millis() as u64;
            verified.push(Verified {
                program: name.to_string(),
                instructions: prog.info()?.verified_instruction_count(),
                load_ms: Some(load_ms),
            });
        }
        for (name, _) in REDIRECT_WATCHERS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()?;
            prog.load()?;
        }
        let names: Vec<String> = ebpf
            .maps()
            .map(|(n, _)| n.to_string())
            .filter(|n| is_user_map(n))
            .collect();
        let maps = names
            .into_iter()
            .filter_map(|n| ebpf.take_map(&n).map(|m| (n, m)))
            .collect();
        let mut dp = Dataplane {
            maps,
            programs: Programs::Loaded(ebpf),
            last_switch: None,
            verified,
        };
        dp.array::<RuleVector>(names::VECTOR_POOL)?
            .set(0, RuleVector::ALL, 0)
            .map_err(map_err(names::VECTOR_POOL))?;
        Ok(dp)
    }

    /// The dataplane under `layout`'s pin root, and how it was found: adopted as it runs
    /// (this layout, this program: counters and policer state continue, nothing reloads),
    /// taken over from another build ([`Opened::Upgrading`]: this binary's program loaded
    /// beside it, sharing its state, nothing pinned or attached yet;
    /// [`Dataplane::complete_upgrade`] then moves its links and pins it), or loaded and
    /// pinned afresh.
    ///
    /// `pinned_object` is what the daemon's state says pinned the program
    /// ([`object_digest`]): when it is this binary's and every link runs the pinned program,
    /// the dataplane is adopted without loading anything; otherwise this binary's program is
    /// loaded to compare.
    pub fn open_pinned(
        layout: &PinLayout,
        pinned_object: Option<&str>,
    ) -> Result<(Dataplane, Opened), DataplaneError> {
        let older = layout.check_version()?;
        if layout.is_pinned() {
            if let Some(version) = older {
                // An upgrade stopped after this layout was pinned whole: finish moving links.
                let from = layout.of_version(version);
                return Ok((
                    Dataplane::adopt(layout)?,
                    Opened::Upgrading(Upgrade { from }),
                ));
            }
            let running = Xdp::from_pin(
                layout.program(PROGRAM_NAME),
                aya_obj::programs::XdpAttachType::Interface,
            )
            .map_err(|e| open_failure(&layout.program(PROGRAM_NAME), e))?;
            let links_run_it = links_run(layout, running.info()?.id())?;
            if links_run_it && pinned_object == Some(object_digest()) {
                return Ok((Dataplane::adopt(layout)?, Opened::Adopted));
            }
            // Adopted, unless the program pinned is another build's, or a link runs another
            // (a crash moved it before the pins followed).
            let dp = Dataplane::load_sharing(Some(layout))?;
            if links_run_it && running.info()?.tag() == dp.program()?.info()?.tag() {
                return Ok((Dataplane::adopt(layout)?, Opened::Adopted));
            }
            let from = layout.clone();
            return Ok((dp, Opened::Upgrading(Upgrade { from })));
        }
        match older {
            Some(version) => {
                let from = layout.of_version(version);
                if !from.is_pinned() {
                    return Err(PinError::Missing(from.program(PROGRAM_NAME)).into());
                }
                let dp = Dataplane::load_sharing(Some(&from))?;
                Ok((dp, Opened::Upgrading(Upgrade { from })))
            }
            None => {
                // Links without the program pin (deleted by hand): a dataplane runs from them;
                // say so, with the way out. Maps alone are what a crashed start left, replaced.
                if !layout.attached().is_empty() {
                    return Err(PinError::Missing(layout.program(PROGRAM_NAME)).into());
                }
                layout.prepare()?;
                let mut dp = Dataplane::load()?;
                dp.pin(layout)?;
                Ok((dp, Opened::Fresh))
            }
        }
    }

    /// Moves every link of the layout upgraded from to this dataplane's program
    /// (`bpf_link_update`: each packet meets the old program or the new, never neither),
    /// pins this dataplane and the links under `layout`, then removes the old layout's pins
    /// (when it was another version). Call once this dataplane's policy is in force; until
    /// then nothing of the old one has changed. Returns the interfaces moved.
    pub fn complete_upgrade(
        &mut self,
        layout: &PinLayout,
        upgrade: &Upgrade,
    ) -> Result<Vec<String>, DataplaneError> {
        let from = &upgrade.from;
        let same_layout = from.version() == layout.version();
        if !same_layout {
            // The new layout whole before any link moves: a crash from here on finds it
            // pinned and finishes the move (see `open_pinned`).
            self.pin(layout)?;
        }
        let mut moved = Vec::new();
        for iface in from.attached() {
            if self.move_link(layout, from, &iface)? {
                moved.push(iface);
            }
        }
        if same_layout {
            // The links stay where they are pinned; the programs' pins now name this
            // build's programs.
            self.pin(layout)?;
        } else if let Err(e) = layout.remove_version(from.version()) {
            // Every link has moved: what is left of the old layout holds nothing attached.
            tracing::warn!("upgrade done, but the old layout's pins stay: {e}");
        }
        Ok(moved)
    }

    /// Moves `iface`'s link of layout `from` to this dataplane's program and pins it in
    /// `layout`; false when the link was defunct (its device gone while no daemon ran),
    /// whose pin is dropped.
    fn move_link(
        &mut self,
        layout: &PinLayout,
        from: &PinLayout,
        iface: &str,
    ) -> Result<bool, DataplaneError> {
        let old = from.link(iface);
        let pin_error = |path: &std::path::Path, reason: String| DataplaneError::Pin {
            path: path.to_path_buf(),
            reason,
        };
        let link = aya::programs::links::PinnedLink::from_pin(&old)
            .map_err(|e| pin_error(&old, e.to_string()))?;
        let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(link))
            .map_err(|e| pin_error(&old, format!("not an XDP link: {e}")))?;
        let prog = self.xdp_mut(PROGRAM_NAME)?;
        let id = match prog.attach_to_link(link) {
            Ok(id) => id,
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                tracing::warn!(%iface, "its device is gone: its link is dropped, not moved");
                std::fs::remove_file(&old).map_err(|e| pin_error(&old, e.to_string()))?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let link =
            FdLink::try_from(prog.take_link(id)?).map_err(|e| pin_error(&old, e.to_string()))?;
        if from.version() != layout.version() {
            let new = layout.link(iface);
            // A crash between pinning the link here and unpinning it there left both.
            if !new.exists() {
                link.pin(&new).map_err(|e| pin_error(&new, e.to_string()))?;
            }
            std::fs::remove_file(&old)
                .map_err(|e| pin_error(&old, format!("removing the old link pin: {e}")))?;
        }
        Ok(true)
    }

    /// Opens the dataplane pinned under `layout`, checking every pinned map against the map
    /// this binary's program expects.
    pub fn adopt(layout: &PinLayout) -> Result<Dataplane, DataplaneError> {
        layout.check_version()?;
        let object = aya_obj::Object::parse(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Object(e.to_string()))?;
        let mut maps = std::collections::HashMap::new();
        for (name, def) in object.maps.iter().filter(|(n, _)| is_user_map(n)) {
            let path = layout.map(name);
            let data = MapData::from_pin(&path).map_err(|e| open_failure(&path, e))?;
            if let Some(what) = shape_differs(name, def, &data)? {
                return Err(PinError::Incompatible { path, what }.into());
            }
            maps.insert(
                name.clone(),
                Map::from_map_data(data).map_err(map_err(name))?,
            );
        }
        let open = |name: &'static str| -> Result<Xdp, DataplaneError> {
            let path = layout.program(name);
            Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface)
                .map_err(|e| open_failure(&path, e).into())
        };
        let watchers = REDIRECT_WATCHERS
            .iter()
            .map(|(name, _)| {
                let path = layout.program(name);
                TracePoint::from_pin(&path).map_err(|e| open_failure(&path, e).into())
            })
            .collect::<Result<_, DataplaneError>>()?;
        Ok(Dataplane {
            maps,
            programs: Programs::Pinned(Box::new(PinnedPrograms {
                dataplane: open(PROGRAM_NAME)?,
                pass: open(PASS_PROGRAM_NAME)?,
                watchers,
            })),
            last_switch: None,
            verified: Vec::new(),
        })
    }

    /// Pins every map and both programs under `layout` (the dataplane program last: its pin
    /// marks a complete layout). A map already pinned there is this one, shared; a program
    /// pinned there is another build's, replaced.
    pub fn pin(&mut self, layout: &PinLayout) -> Result<(), DataplaneError> {
        layout.prepare()?;
        // With nothing attached from this layout, another map pinned here is what a crash
        // half way through pinning left: replaced. With links, it is another dataplane's,
        // unless it is scratch space, which each program has its own of (an upgrade's).
        let unattached = layout.attached().is_empty();
        for (name, map) in &self.maps {
            let path = layout.map(name);
            if path.exists() {
                let pinned = MapData::from_pin(&path).map_err(|e| open_failure(&path, e))?;
                if map_id(map)? == Some(pinned.info().map_err(map_err(name))?.id()) {
                    continue;
                }
                if !unattached && !names::SCRATCH.contains(&name.as_str()) {
                    return Err(PinError::Incompatible {
                        path,
                        what: "another dataplane's map is pinned there".into(),
                    }
                    .into());
                }
            }
            pin_replacing(&path, |at| map.pin(at).map_err(|e| e.to_string()))?;
        }
        for (index, (name, _)) in REDIRECT_WATCHERS.iter().enumerate() {
            let watcher = self.watcher_mut(index)?;
            pin_replacing(&layout.program(name), |at| {
                watcher.pin(at).map_err(|e| e.to_string())
            })?;
        }
        for name in [PASS_PROGRAM_NAME, PROGRAM_NAME] {
            let prog = self.xdp_mut(name)?;
            pin_replacing(&layout.program(name), |at| {
                prog.pin(at).map_err(|e| e.to_string())
            })?;
        }
        Ok(())
    }

    /// Attaches the redirect-failure counters to the kernel's XDP tracepoints for as long as
    /// this value lives (a daemon's lifetime: frames lost while no daemon runs are not
    /// counted).
    pub fn watch_redirects(&mut self) -> Result<(), DataplaneError> {
        // aya finds a tracepoint's id under tracefs, which minimal systems leave unmounted.
        let tracefs = crate::mounts::TRACEFS;
        tracefs
            .ensure_mounted()
            .map_err(|source| DataplaneError::Mount {
                fs: tracefs.name(),
                at: tracefs.mount_point,
                source,
            })?;
        for (index, (_, event)) in REDIRECT_WATCHERS.iter().enumerate() {
            self.watcher_mut(index)?.attach("xdp", event)?;
        }
        Ok(())
    }

    fn watcher_mut(&mut self, index: usize) -> Result<&mut TracePoint, DataplaneError> {
        let name = REDIRECT_WATCHERS[index].0;
        match &mut self.programs {
            Programs::Loaded(ebpf) => Ok(ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()?),
            Programs::Pinned(p) => p
                .watchers
                .get_mut(index)
                .ok_or(DataplaneError::MissingProgram(name)),
        }
    }

    /// Attaches the dataplane program to `iface` (`mode`) and pins the link under `layout`,
    /// so it stays attached after this process exits.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: XdpMode,
        layout: &PinLayout,
    ) -> Result<(), DataplaneError> {
        let prog = self.xdp_mut(PROGRAM_NAME)?;
        let id = prog.attach(iface, mode)?;
        let link = prog.take_link(id)?;
        let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
            path: layout.link(iface),
            reason: format!("the kernel attached {iface} without a BPF link ({e}); it cannot outlive the daemon"),
        })?;
        let path = layout.link(iface);
        fd_link.pin(&path).map_err(|e| DataplaneError::Pin {
            path,
            reason: e.to_string(),
        })?;
        Ok(())
    }

    fn xdp_mut(&mut self, name: &'static str) -> Result<&mut Xdp, DataplaneError> {
        match &mut self.programs {
            Programs::Loaded(ebpf) => Ok(ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()?),
            Programs::Pinned(p) => match name {
                PROGRAM_NAME => Ok(&mut p.dataplane),
                PASS_PROGRAM_NAME => Ok(&mut p.pass),
                _ => Err(DataplaneError::MissingProgram(name)),
            },
        }
    }

    fn xdp(&self, name: &'static str) -> Result<&Xdp, DataplaneError> {
        match &self.programs {
            Programs::Loaded(ebpf) => Ok(ebpf
                .program(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()?),
            Programs::Pinned(p) => match name {
                PROGRAM_NAME => Ok(&p.dataplane),
                PASS_PROGRAM_NAME => Ok(&p.pass),
                _ => Err(DataplaneError::MissingProgram(name)),
            },
        }
    }

    /// What verifying each XDP program cost: measured at load, or (adopted from pins) the
    /// instruction count the kernel kept.
    pub fn verified(&self) -> Result<Vec<Verified>, DataplaneError> {
        if !self.verified.is_empty() {
            return Ok(self.verified.clone());
        }
        [PROGRAM_NAME, PASS_PROGRAM_NAME]
            .into_iter()
            .map(|name| {
                Ok(Verified {
                    program: name.to_string(),
                    instructions: self.xdp(name)?.info()?.verified_instruction_count(),
                    load_ms: None,
                })
            })
            .collect()
    }

    /// The dataplane XDP program (test runs need no more than a shared reference).
    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp(PROGRAM_NAME)
    }

    /// The pass-everything XDP program.
    pub fn pass_program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp(PASS_PROGRAM_NAME)
    }

    /// Attaches to `iface` (`mode`) for the lifetime of this value (unpinned).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        self.xdp_mut(PROGRAM_NAME)?.attach(iface, mode)?;
        Ok(())
    }

    /// Attaches the pass-everything program to `iface` (`mode`): a veth whose peer receives
    /// forwarded (redirected) frames needs an XDP program to accept them.
    pub fn attach_pass(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        self.xdp_mut(PASS_PROGRAM_NAME)?.attach(iface, mode)?;
        Ok(())
    }

    /// A map of the object by name, for modules that own their own maps' logic.
    pub(crate) fn map_mut(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.maps
            .get_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }

    /// A map of the object by name, read-only.
    pub(crate) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.maps.get(name).ok_or(DataplaneError::MissingMap(name))
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        Array::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    fn array_ro<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Array<&MapData, V>, DataplaneError> {
        Array::try_from(self.map(name)?).map_err(map_err(name))
    }

    /// Replaces the config of class `class` in the generation in force, in place (a fleet
    /// class's share moving): one map update, no new generation, so flows keep their cached
    /// classification. A packet being policed meanwhile sees the old or the new config.
    /// The class's buckets keep the backlog they hold in bytes (see `policer::rescale_tat`).
    pub fn set_live_class(
        &mut self,
        class: u32,
        config: &ClassConfig,
    ) -> Result<(), DataplaneError> {
        let (active, _) = self.slots()?;
        let index = class_config_index(active, class);
        let old = self
            .array_ro::<ClassConfig>(names::CLASSES)?
            .get(&index, 0)
            .map_err(map_err(names::CLASSES))?;
        self.array::<ClassConfig>(names::CLASSES)?
            .set(index, config, 0)
            .map_err(map_err(names::CLASSES))?;
        let mut state = self.policer_state(class)?;
        let now = ns_to_ticks(monotonic_ns());
        state.committed_tat = rescale_tat(
            state.committed_tat,
            now,
            &old.policer.committed,
            &config.policer.committed,
        );
        state.peak_tat = rescale_tat(state.peak_tat, now, &old.policer.peak, &config.policer.peak);
        // A packet policed between the read and this write may lose its charge: one packet.
        self.array::<PolicerState>(names::POLICERS)?
            .set(class, state, 0)
            .map_err(map_err(names::POLICERS))
    }

    fn slots(&self) -> Result<(u32, [PolicySlot; GENERATION_SLOTS]), DataplaneError> {
        let active = self
            .array_ro::<u32>(names::ACTIVE_SLOT)?
            .get(&0, 0)
            .map_err(map_err(names::ACTIVE_SLOT))?;
        let slots = self.array_ro::<PolicySlot>(names::POLICY_SLOTS)?;
        let mut out = [PolicySlot::default(); GENERATION_SLOTS];
        for (i, s) in out.iter_mut().enumerate() {
            *s = slots
                .get(&(i as u32), 0)
                .map_err(map_err(names::POLICY_SLOTS))?;
        }
        Ok((active % GENERATION_SLOTS as u32, out))
    }

    /// The generation in force (0 before the first policy).
    pub fn generation(&self) -> Result<u32, DataplaneError> {
        let (active, slots) = self.slots()?;
        Ok(slots[active as usize].generation)
    }

    /// Writes `policy` into the idle generation slot, then makes it live with one map write.
    /// Packets see either the old policy or the new one, never a mix; cached flows are
    /// reclassified because their generation tag no longer matches. Returns the generation.
    /// Refuses a policy that does not fit the kernel tables, before anything is written.
    pub fn check_fits(policy: &CompiledPolicy) -> Result<(), DataplaneError> {
        let tables = &policy.tables;
        if tables.vectors.len() > VECTORS_PER_SLOT as usize + 1 {
            return Err(DataplaneError::TooLarge(format!(
                "{} distinct rule vectors, at most {} fit",
                tables.vectors.len(),
                VECTORS_PER_SLOT + 1
            )));
        }
        if tables.rule_classes.len() > MAX_RULES || policy.classes.len() > MAX_CLASSES {
            return Err(DataplaneError::TooLarge(format!(
                "{} rules and {} classes, at most {MAX_RULES} and {MAX_CLASSES}",
                tables.rule_classes.len(),
                policy.classes.len()
            )));
        }
        Ok(())
    }

    /// Writes `policy` into the idle generation slot, then makes it live with one map write.
    /// Packets see either the old policy or the new one, never a mix; cached flows are
    /// reclassified because their generation tag no longer matches. Returns the generation.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<u32, DataplaneError> {
        Dataplane::check_fits(policy)?;
        let tables = &policy.tables;
        let (active, slots) = self.slots()?;
        let slot = if slots[active as usize].generation == 0 {
            active
        } else {
            (active + 1) % GENERATION_SLOTS as u32
        };
        let generation = slots.iter().map(|s| s.generation).max().unwrap_or(0) + 1;
        if let Some(wait) = self
            .last_switch
            .and_then(|t| SLOT_QUIESCENCE.checked_sub(t.elapsed()))
        {
            std::thread::sleep(wait);
        }

        let mut pool = self.array::<RuleVector>(names::VECTOR_POOL)?;
        for (id, v) in tables.vectors.iter().enumerate().skip(1) {
            pool.set(pool_index(slot, id as u32), v, 0)
                .map_err(map_err(names::VECTOR_POOL))?;
        }
        let mut table = self.array::<u32>(names::FIELD_TABLE)?;
        for (field, values) in &tables.field_tables {
            for (value, id) in values.iter().enumerate() {
                table
                    .set(
                        field_table_index(slot, *field, value as u32),
                        pool_index(slot, *id),
                        0,
                    )
                    .map_err(map_err(names::FIELD_TABLE))?;
            }
        }
        self.write_prefixes(slot, tables)?;
        let mut rules = self.array::<u32>(names::RULE_CLASSES)?;
        for (i, class) in tables.rule_classes.iter().enumerate() {
            rules
                .set(rule_class_index(slot, i as u32), class, 0)
                .map_err(map_err(names::RULE_CLASSES))?;
        }
        let mut classes = self.array::<ClassConfig>(names::CLASSES)?;
        for (id, c) in policy.classes.iter().enumerate() {
            classes
                .set(class_config_index(slot, id as u32), c, 0)
                .map_err(map_err(names::CLASSES))?;
        }
        let header = PolicySlot {
            generation,
            rule_words: tables.rule_words(),
            default_class: policy.default_class,
            active_fields: tables.active_fields,
            absent_vector: tables.absent_vector.map(|id| pool_index(slot, id)),
            flags: policy.slot_flags(),
            _pad: 0,
        };
        self.array::<PolicySlot>(names::POLICY_SLOTS)?
            .set(slot, header, 0)
            .map_err(map_err(names::POLICY_SLOTS))?;
        // The switch: one word.
        self.array::<u32>(names::ACTIVE_SLOT)?
            .set(0, slot, 0)
            .map_err(map_err(names::ACTIVE_SLOT))?;
        self.last_switch = Some(Instant::now());
        Ok(generation)
    }

    fn write_prefixes(&mut self, slot: u32, tables: &RuleTables) -> Result<(), DataplaneError> {
        let name = names::PREFIXES;
        let map = self.map_mut(name)?;
        let mut trie: LpmTrie<&mut MapData, PrefixKey, u32> =
            LpmTrie::try_from(map).map_err(map_err(name))?;
        let stale: Vec<Key<PrefixKey>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.data().slot) == slot)
            .collect();
        for k in &stale {
            trie.remove(k).map_err(map_err(name))?;
        }
        for (field, prefix, id) in &tables.prefixes {
            let key = Key::new(
                PREFIX_KEY_HEADER_BITS + u32::from(prefix.len),
                PrefixKey {
                    slot: slot as u8,
                    field: *field as u8,
                    addr: prefix.addr,
                    _pad: [0; 2],
                },
            );
            trie.insert(&key, pool_index(slot, *id), 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Registers interface `ifindex` under counter/rule slot `slot` (1..MAX_IFACES) with an
    /// optional link budget of `rate` bytes/s and `burst` bytes.
    pub fn register_iface(
        &mut self,
        ifindex: u32,
        slot: u32,
        link: Option<(u64, u64)>,
    ) -> Result<(), DataplaneError> {
        if slot == 0 || slot as usize >= MAX_IFACES {
            return Err(DataplaneError::Interface(format!(
                "slot {slot} outside 1..{MAX_IFACES}"
            )));
        }
        let cfg = IfaceConfig {
            slot,
            link: link.map_or(BucketParams::UNLIMITED, |(rate, burst)| {
                BucketParams::new(rate, burst)
            }),
            ..IfaceConfig::default()
        };
        self.set_iface_config(ifindex, cfg)
    }

    /// The entry of registered interface `ifindex`, if any.
    pub(crate) fn iface_config(&self, ifindex: u32) -> Result<Option<IfaceConfig>, DataplaneError> {
        if ifindex < IFINDEX_ARRAY_LIMIT as u32 {
            let cfg = self
                .array_ro::<IfaceConfig>(names::IFACES_BY_INDEX)?
                .get(&ifindex, 0)
                .map_err(map_err(names::IFACES_BY_INDEX))?;
            return Ok((cfg.slot != 0).then_some(cfg));
        }
        let name = names::IFACES;
        let ifaces: HashMap<&MapData, u32, IfaceConfig> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match ifaces.get(&ifindex, 0) {
            Ok(cfg) => Ok(Some(cfg)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Writes interface `ifindex`'s entry whole, so packets see the old or the new one.
    pub(crate) fn set_iface_config(
        &mut self,
        ifindex: u32,
        cfg: IfaceConfig,
    ) -> Result<(), DataplaneError> {
        if ifindex < IFINDEX_ARRAY_LIMIT as u32 {
            return self
                .array::<IfaceConfig>(names::IFACES_BY_INDEX)?
                .set(ifindex, cfg, 0)
                .map_err(map_err(names::IFACES_BY_INDEX));
        }
        let name = names::IFACES;
        let mut ifaces: HashMap<&mut MapData, u32, IfaceConfig> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        ifaces.insert(ifindex, cfg, 0).map_err(map_err(name))
    }

    /// Forgets interface `ifindex`'s entry (none is no error).
    fn remove_iface_config(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        if ifindex < IFINDEX_ARRAY_LIMIT as u32 {
            return self.set_iface_config(ifindex, IfaceConfig::default());
        }
        let name = names::IFACES;
        let mut ifaces: HashMap<&mut MapData, u32, IfaceConfig> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        match ifaces.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Registers the policy's interfaces (slot = position + 1) and then `attached` ones the
    /// policy does not name, all as forwarding egress devices, forwarding from those the
    /// policy marks `forward`. Interfaces missing on this host are skipped (their rules cannot
    /// match here) and returned so the caller can warn.
    pub fn register_interfaces(
        &mut self,
        policy: &Policy,
        attached: &[String],
    ) -> Result<Vec<String>, DataplaneError> {
        let mut slots: Vec<(String, u32)> = Vec::new();
        for name in policy.interfaces.iter().map(|i| &i.name).chain(attached) {
            if !slots.iter().any(|(n, _)| n == name) {
                slots.push((name.clone(), slots.len() as u32 + 1));
            }
        }
        self.register_slots(policy, &slots)
    }

    /// Registers interface `name` under `slot` for each pair, with the link budget the policy
    /// gives it. Interfaces missing on this host are skipped and returned.
    pub fn register_slots(
        &mut self,
        policy: &Policy,
        slots: &[(String, u32)],
    ) -> Result<Vec<String>, DataplaneError> {
        let mut missing = Vec::new();
        for (name, slot) in slots {
            let link = policy
                .interfaces
                .iter()
                .find(|i| &i.name == name)
                .and_then(|i| i.link_rate_bytes_per_sec.map(|r| (r, i.link_burst_bytes)));
            match ifindex(name) {
                Some(index) => {
                    self.register_iface(index, *slot, link)?;
                    let forward = policy
                        .interfaces
                        .iter()
                        .any(|s| &s.name == name && s.forward);
                    self.register_forwarding(name, index, forward)?;
                }
                None => missing.push(name.clone()),
            }
        }
        // Cached next hops name egress slots.
        self.route_generation()?.bump()?;
        Ok(missing)
    }

    /// Stops counting interface `name` under its own slot (it falls back to slot 0).
    pub fn unregister_iface(&mut self, name: &str) -> Result<(), DataplaneError> {
        let Some(index) = ifindex(name) else {
            return Ok(());
        };
        self.unregister_ifindex(index)
    }

    /// Forgets the interface registered under `ifindex` (a device that is gone).
    pub fn unregister_ifindex(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.remove_iface_config(ifindex)?;
        self.route_generation()?.bump().map(drop)
    }

    /// Sets the kernel log level; takes effect on the next packet.
    pub fn set_kernel_log_level(&mut self, level: KernelLogLevel) -> Result<(), DataplaneError> {
        self.array::<u32>(names::LOG_LEVEL)?
            .set(0, level as u32, 0)
            .map_err(map_err(names::LOG_LEVEL))
    }

    /// A handle on the route generation that the route watcher keeps in its own task.
    pub fn route_generation(&self) -> Result<RouteGeneration, DataplaneError> {
        let name = names::ROUTE_GENERATION;
        let Map::Array(data) = self.map(name)? else {
            return Err(map_err(name)(MapError::InvalidMapType { map_type: 0 }));
        };
        let fd =
            data.fd().as_fd().try_clone_to_owned().map_err(|e| {
                DataplaneError::Interface(format!("duplicating the {name} map: {e}"))
            })?;
        let data = MapData::from_fd(fd).map_err(map_err(name))?;
        Ok(RouteGeneration(
            Array::try_from(Map::Array(data)).map_err(map_err(name))?,
        ))
    }

    /// Kernel id of the dataplane program (what `bpftool prog` lists).
    pub fn program_id(&self) -> Result<u32, DataplaneError> {
        Ok(self.program()?.info()?.id())
    }

    /// Zeroes the counters and policer state of class id `class` on every interface slot,
    /// before the id is first given to a class.
    pub fn reset_class(&mut self, class: u32) -> Result<(), DataplaneError> {
        for slot in 0..MAX_IFACES as u32 {
            self.zero_per_cpu::<ClassCounters>(
                names::CLASS_COUNTERS,
                class_counter_index(slot, class),
            )?;
        }
        self.array::<PolicerState>(names::POLICERS)?
            .set(class, PolicerState::default(), 0)
            .map_err(map_err(names::POLICERS))
    }

    /// Zeroes the counters and link state of interface slot `slot` before it is first used.
    pub fn reset_iface(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.zero_per_cpu::<IfaceCounters>(names::IFACE_COUNTERS, slot)?;
        self.zero_per_cpu::<u64>(names::SPRAY_UNKEYED, slot)?;
        for class in 0..MAX_CLASSES as u32 {
            self.zero_per_cpu::<ClassCounters>(
                names::CLASS_COUNTERS,
                class_counter_index(slot, class),
            )?;
        }
        self.array::<LinkState>(names::LINKS)?
            .set(slot, LinkState::default(), 0)
            .map_err(map_err(names::LINKS))
    }

    fn zero_per_cpu<V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        index: u32,
    ) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| map_err(name)(MapError::IoError(e)))?;
        let zeros = PerCpuValues::try_from(vec![V::default(); cpus])
            .map_err(|e| map_err(name)(MapError::IoError(e)))?;
        let mut map: PerCpuArray<&mut MapData, V> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.set(index, zeros, 0).map_err(map_err(name))
    }

    /// Every flow the flow cache holds, with what it did: one entry per flow and generation,
    /// its counts summed over the CPUs that hold it (read one slot at a time: a flow evicted
    /// meanwhile is missing, never an error).
    pub fn flows(&self) -> Result<Vec<FlowEntry>, DataplaneError> {
        let cache = self.array_ro::<FlowEntry>(names::FLOW_CACHE)?;
        let mut flows: std::collections::HashMap<(FlowKey, u32), FlowEntry> =
            std::collections::HashMap::new();
        // Generation 0 is no policy's: a slot never filled.
        for entry in cache
            .iter()
            .filter_map(Result::ok)
            .filter(|e| e.generation != 0)
        {
            flows
                .entry((entry.key, entry.generation))
                .and_modify(|e| e.state.add_counts(&entry.state))
                .or_insert(entry);
        }
        Ok(flows.into_values().collect())
    }
}

/// The machine's possible CPUs (what per-CPU state is sized by).
fn possible_cpus() -> Result<u32, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| {
        DataplaneError::Interface(format!("counting the CPUs ({what}): {e}"))
    })?;
    Ok(u32::try_from(cpus).unwrap_or(u32::MAX))
}

/// The kernel's route generation (see `dataplane_common::flow::NextHop`): moving it puts
/// every flow's cached next hop out of date, so each flow's next packet looks its route up.
pub struct RouteGeneration(Array<MapData, u32>);

impl RouteGeneration {
    /// The generation now.
    pub fn get(&self) -> Result<u32, DataplaneError> {
        self.0.get(&0, 0).map_err(map_err(names::ROUTE_GENERATION))
    }

    /// Moves the generation on (never back to 0, which no next hop was looked up under) and
    /// returns the new one.
    pub fn bump(&mut self) -> Result<u32, DataplaneError> {
        let next = self.get()?.wrapping_add(1).max(1);
        self.0
            .set(0, next, 0)
            .map_err(map_err(names::ROUTE_GENERATION))?;
        Ok(next)
    }
}

/// The kernel clock the policer reads (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), in ns.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
