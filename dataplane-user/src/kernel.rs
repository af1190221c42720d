//! The running kernel: what it offers the dataplane, probed and never assumed from its
//! version; whether the object can run on it; and what verifying the object cost.
//!
//! One object serves every supported kernel (6.1 and newer are tested, see README.md,
//! "Supported kernels", and docs/kernels.md). What a kernel lacks either refuses the start with one line naming
//! the kernel needed and the missing feature, or turns one use off, said in `status`,
//! `--version` and the metrics.

use std::{sync::OnceLock, time::Duration};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};
use serde::{Deserialize, Serialize};

use crate::mounts::TRACEFS;

/// The object variant this build loads: one for every supported kernel.
pub const VARIANT: &str = "full";

/// The verifier's budget per program (BPF_COMPLEXITY_LIMIT_INSNS, since Linux 5.2).
pub const VERIFIER_BUDGET: u32 = 1_000_000;

/// The features' names (metric labels), one constant each.
pub mod name {
    /// See [`super::FEATURES`].
    pub const ATOMICS: &str = "atomics";
    /// See [`super::FEATURES`].
    pub const XDP: &str = "xdp";
    /// See [`super::FEATURES`].
    pub const FIB_LOOKUP: &str = "fib_lookup";
    /// See [`super::FEATURES`].
    pub const LPM_TRIE: &str = "lpm_trie";
    /// See [`super::FEATURES`].
    pub const DEVMAP_HASH: &str = "devmap_hash";
    /// See [`super::FEATURES`].
    pub const LRU_HASH: &str = "lru_hash";
    /// See [`super::FEATURES`].
    pub const RINGBUF: &str = "ringbuf";
    /// See [`super::FEATURES`].
    pub const XDP_TRACEPOINTS: &str = "xdp_tracepoints";
    /// See [`super::FEATURES`].
    pub const VERIFIED_INSNS: &str = "verified_insns";
}

/// What a missing feature means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Without {
    /// The dataplane refuses to start.
    Refuse,
    /// The dataplane runs without this use of it.
    RunsWithout,
}

/// A kernel facility the dataplane uses.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// Short name (metric label).
    pub name: &'static str,
    /// What the kernel offers.
    pub what: &'static str,
    /// The mainline release that brought it.
    pub since: &'static str,
    /// What the dataplane does with it.
    pub used_for: &'static str,
    /// What happens without it.
    pub without: Without,
}

/// Every facility the dataplane probes for, in the order `status` lists them.
pub const FEATURES: [Feature; 9] = [
    Feature {
        name: name::ATOMICS,
        what: "BPF atomic compare-and-exchange, fetch-add and fetch-or",
        since: "5.12",
        used_for: "exact shared policers and flow counts across CPUs",
        without: Without::Refuse,
    },
    Feature {
        name: name::XDP,
        what: "XDP programs",
        since: "4.8",
        used_for: "the dataplane itself",
        without: Without::Refuse,
    },
    Feature {
        name: name::FIB_LOOKUP,
        what: "bpf_fib_lookup from XDP",
        since: "4.18",
        used_for: "forwarding",
        without: Without::Refuse,
    },
    Feature {
        name: name::LPM_TRIE,
        what: "LPM trie maps",
        since: "4.11",
        used_for: "address prefixes of the rules",
        without: Without::Refuse,
    },
    Feature {
        name: name::DEVMAP_HASH,
        what: "DEVMAP_HASH maps",
        since: "5.4",
        used_for: "redirects to egress interfaces",
        without: Without::Refuse,
    },
    Feature {
        name: name::LRU_HASH,
        what: "LRU hash maps",
        since: "4.10",
        used_for: "TCP window control's connection table",
        without: Without::Refuse,
    },
    Feature {
        name: name::RINGBUF,
        what: "BPF ring buffers",
        since: "5.8",
        used_for: "kernel log lines",
        without: Without::Refuse,
    },
    Feature {
        name: name::XDP_TRACEPOINTS,
        what: "the xdp:xdp_redirect_err and xdp:xdp_devmap_xmit tracepoints",
        since: "4.18",
        used_for: "counting frames lost in redirects",
        without: Without::RunsWithout,
    },
    Feature {
        name: name::VERIFIED_INSNS,
        what: "the verifier's instruction count in program info",
        since: "5.16",
        used_for: "reporting the verifier's headroom",
        without: Without::RunsWithout,
    },
];

/// One probed feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    /// [`Feature::name`].
    pub name: String,
    /// Whether the kernel has it.
    pub present: bool,
    /// Why it is missing (what the probe saw); empty when present.
    pub why_not: String,
}

/// The kernel's features as probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSupport {
    /// `uname -r`.
    pub release: String,
    /// [`VARIANT`].
    pub variant: String,
    /// One per [`FEATURES`] entry, in order.
    pub features: Vec<Probed>,
}

/// What keeps the dataplane from starting on this kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A feature the dataplane cannot do without is missing.
    #[error(
        "this kernel ({release}) lacks {what} ({why_not}), which the dataplane needs for \
         {used_for}: it needs Linux {since} or newer (tested: 6.1 and newer; see README.md, \
         Supported kernels)"
    )]
    Missing {
        /// `uname -r`.
        release: String,
        /// [`Feature::what`].
        what: &'static str,
        /// What the probe saw.
        why_not: String,
        /// [`Feature::used_for`].
        used_for: &'static str,
        /// [`Feature::since`].
        since: &'static str,
    },
    /// The probes themselves could not run (no CAP_BPF, no bpf syscall).
    #[error("probing the kernel's BPF features failed: {0} (the dataplane needs root or CAP_BPF and CAP_NET_ADMIN)")]
    Probe(String),
}

impl KernelSupport {
    /// Probes this kernel (once per process; later calls return the first answer).
    pub fn probe() -> Result<&'static KernelSupport, KernelError> {
        static PROBED: OnceLock<Result<KernelSupport, String>> = OnceLock::new();
        PROBED
            .get_or_init(probe_all)
            .as_ref()
            .map_err(|e| KernelError::Probe(e.clone()))
    }

    /// Why feature `name` is missing; `None` when present.
    pub fn missing(&self, name: &str) -> Option<&str> {
        self.features
            .iter()
            .find(|f| f.name == name)
            .map_or(Some("not probed"), |f| {
                (!f.present).then_some(f.why_not.as_str())
            })
    }

    /// `Err` naming the first missing feature the dataplane cannot run without.
    pub fn require(&self) -> Result<(), KernelError> {
        for (feature, probed) in FEATURES.iter().zip(&self.features) {
            if !probed.present && feature.without == Without::Refuse {
                return Err(KernelError::Missing {
                    release: self.release.clone(),
                    what: feature.what,
                    why_not: probed.why_not.clone(),
                    used_for: feature.used_for,
                    since: feature.since,
                });
            }
        }
        Ok(())
    }

    /// One line: the kernel, the variant and the features that are off, with why.
    pub fn summary(&self) -> String {
        let off: Vec<String> = FEATURES
            .iter()
            .zip(&self.features)
            .filter(|(_, p)| !p.present)
            .map(|(f, p)| format!("{} off ({}: {})", f.name, f.what, p.why_not))
            .collect();
        format!(
            "kernel {}: object variant {}; {}",
            self.release,
            self.variant,
            if off.is_empty() {
                format!("all {} features on", self.features.len())
            } else {
                off.join("; ")
            }
        )
    }
}

/// Probes this kernel and the dataplane can start on it; else the one line saying why not.
pub fn require_supported() -> Result<&'static KernelSupport, KernelError> {
    let support = KernelSupport::probe()?;
    support.require()?;
    Ok(support)
}

fn probe_all() -> Result<KernelSupport, String> {
    let release = release();
    let mut features = Vec::with_capacity(FEATURES.len());
    for feature in FEATURES {
        let outcome = match feature.name {
            name::ATOMICS => probe_atomics(),
            name::XDP => program(ProgramType::Xdp),
            name::FIB_LOOKUP => helper(BpfHelper::BPF_FUNC_fib_lookup),
            name::LPM_TRIE => map(MapType::LpmTrie),
            name::DEVMAP_HASH => map(MapType::DevMapHash),
            name::LRU_HASH => map(MapType::LruHash),
            name::RINGBUF => map(MapType::RingBuf),
            name::XDP_TRACEPOINTS => Ok(xdp_tracepoints()),
            name::VERIFIED_INSNS => Ok(verified_insns(&release)),
            other => Err(format!("no probe for {other}")),
        }?;
        features.push(Probed {
            name: feature.name.to_string(),
            present: outcome.is_none(),
            why_not: outcome.unwrap_or_default(),
        });
    }
    Ok(KernelSupport {
        release,
        variant: VARIANT.to_string(),
        features,
    })
}

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A probe's answer: `None` present, `Some(why)` missing.
type Outcome = Result<Option<String>, String>;

fn program(kind: ProgramType) -> Outcome {
    match is_program_supported(kind) {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some("the kernel refuses the program type".into())),
        Err(e) => Err(e.to_string()),
    }
}

fn helper(helper: BpfHelper) -> Outcome {
    match is_helper_supported(ProgramType::Xdp, helper) {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some("the verifier does not know the helper in XDP".into())),
        Err(e) => Err(e.to_string()),
    }
}

fn map(kind: MapType) -> Outcome {
    match is_map_supported(kind) {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some("the kernel refuses the map type".into())),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the tracepoints of the redirect-failure counters exist (tracefs mounted where
/// the system has not).
fn xdp_tracepoints() -> Option<String> {
    if let Err(e) = TRACEFS.ensure_mounted() {
        return Some(format!(
            "tracefs is not mounted and mounting it failed: {e}"
        ));
    }
    let missing: Vec<&str> = crate::dataplane::REDIRECT_WATCHERS
        .iter()
        .map(|(_, event)| *event)
        .filter(|event| {
            !std::path::Path::new(TRACEFS.mount_point)
                .join("events/xdp")
                .join(event)
                .exists()
        })
        .collect();
    (!missing.is_empty()).then(|| format!("no tracepoint xdp:{}", missing.join(", xdp:")))
}

/// Program info carries `verified_insns` from 5.16: the probe is the version, because a
/// program's count of 0 reads the same as an absent field.
fn verified_insns(release: &str) -> Option<String> {
    let mut parts = release.split(['.', '-', '+']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    ((major, minor) < (5, 16)).then(|| "program info has no verified_insns before 5.16".into())
}

/// Loads a seven-instruction XDP program with a 64-bit compare-and-exchange on its stack:
/// kernels before 5.12 refuse the instruction ("BPF_STX uses reserved fields", EINVAL).
fn probe_atomics() -> Outcome {
    const ALU64_MOV_K: u8 = 0xb7;
    const STX_MEM_DW: u8 = 0x7b;
    const STX_ATOMIC_DW: u8 = 0xdb;
    const EXIT: u8 = 0x95;
    const CMPXCHG: i32 = 0xf1;
    const XDP_PASS: i32 = 2;
    let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
        off,
        imm,
    };
    let program = [
        insn(ALU64_MOV_K, 1, 0, 0, 0),
        insn(STX_MEM_DW, 10, 1, -8, 0),
        insn(ALU64_MOV_K, 0, 0, 0, 0),
        insn(ALU64_MOV_K, 1, 0, 0, 1),
        insn(STX_ATOMIC_DW, 10, 1, -8, CMPXCHG),
        insn(ALU64_MOV_K, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    // SAFETY: all zeroes is a valid bpf_attr; the fields set are those of BPF_PROG_LOAD.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the union's BPF_PROG_LOAD member.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
    load.insn_cnt = program.len() as u32;
    load.insns = program.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    load.log_level = 1;
    load.log_size = log.len() as u32;
    load.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: the attr and every buffer it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the program's descriptor, ours to close.
        unsafe { libc::close(fd as i32) };
        return Ok(None);
    }
    let error = std::io::Error::last_os_error();
    let said = String::from_utf8_lossy(&log);
    match error.raw_os_error() {
        Some(libc::EINVAL) => Ok(Some(
            match verifier_last_word(said.trim_end_matches('\0')) {
                Some(said) => format!("the verifier says \"{said}\""),
                None => "the kernel refuses BPF_ATOMIC instructions".into(),
            },
        )),
        _ => Err(format!("loading a probe program: {error}")),
    }
}

/// The last line of a verifier log that says something (not its statistics).
pub fn verifier_last_word(log: &str) -> Option<&str> {
    log.lines().rev().map(str::trim).find(|l| {
        !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time")
    })
}

/// What loading and verifying one program cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Program name.
    pub program: String,
    /// Instructions the verifier processed (None before 5.16).
    pub instructions: Option<u32>,
    /// Wall time of the load, most of it the verifier's (unknown for a program adopted from
    /// its pins).
    pub load_ms: Option<u64>,
}

impl Verified {
    /// The share of [`VERIFIER_BUDGET`] the program took.
    pub fn budget_share(&self) -> Option<f64> {
        self.instructions
            .map(|n| f64::from(n) / f64::from(VERIFIER_BUDGET))
    }

    /// "124192 instructions (12% of the verifier's 1000000), loaded in 0.2 s".
    pub fn describe(&self) -> String {
        let time = self.load_ms.map_or(String::new(), |ms| {
            format!(
                ", loaded in {:.1} s",
                Duration::from_millis(ms).as_secs_f64()
            )
        });
        match (self.instructions, self.budget_share()) {
            (Some(n), Some(share)) => format!(
                "{n} instructions ({:.0}% of the verifier's {VERIFIER_BUDGET}){time}",
                share * 100.0,
            ),
            _ => format!("instructions not counted by this kernel{time}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_has_a_probe_and_a_unique_name() {
        for (i, f) in FEATURES.iter().enumerate() {
            assert!(
                FEATURES[..i].iter().all(|g| g.name != f.name),
                "{} twice",
                f.name
            );
            assert!(!f.what.is_empty() && !f.used_for.is_empty() && !f.since.is_empty());
        }
    }

    #[test]
    fn the_last_word_of_a_verifier_log_skips_its_statistics() {
        let log =
            "0: (b7) r1 = 0\nBPF_STX uses reserved fields\nprocessed 0 insns (limit 1000000) \
                   max_states_per_insn 0\n";
        assert_eq!(
            verifier_last_word(log),
            Some("BPF_STX uses reserved fields")
        );
        assert_eq!(verifier_last_word("processed 1 insns\n"), None);
    }

    #[test]
    fn verified_insns_follows_the_release() {
        assert!(verified_insns("5.10.0-46-amd64").is_some());
        assert!(verified_insns("5.15.0-100-generic").is_some());
        assert!(verified_insns("5.16.0").is_none());
        assert!(verified_insns("6.1.0-57-amd64").is_none());
        assert!(verified_insns("7.2.13+deb14-amd64").is_none());
    }

    #[test]
    fn a_missing_required_feature_is_one_line_naming_the_kernel_needed() {
        let support = KernelSupport {
            release: "5.10.0-46-amd64".into(),
            variant: VARIANT.into(),
            features: FEATURES
                .iter()
                .map(|f| Probed {
                    name: f.name.into(),
                    present: f.name != name::ATOMICS,
                    why_not: if f.name == name::ATOMICS {
                        "the verifier says \"BPF_STX uses reserved fields\"".into()
                    } else {
                        String::new()
                    },
                })
                .collect(),
        };
        let err = support.require().expect_err("refused").to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("5.10.0-46-amd64"), "{err}");
        assert!(err.contains("Linux 5.12 or newer"), "{err}");
        assert!(err.contains("compare-and-exchange"), "{err}");
        assert!(support.summary().contains("atomics off"));
    }

    #[test]
    fn an_optional_feature_missing_is_said_not_refused() {
        let support = KernelSupport {
            release: "6.1.0-57-amd64".into(),
            variant: VARIANT.into(),
            features: FEATURES
                .iter()
                .map(|f| Probed {
                    name: f.name.into(),
                    present: f.name != name::XDP_TRACEPOINTS,
                    why_not: "no tracepoint xdp:xdp_devmap_xmit".into(),
                })
                .collect(),
        };
        assert!(support.require().is_ok());
        assert!(support.summary().contains("xdp_tracepoints off"));
    }
}
