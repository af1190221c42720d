//! The harness runs end to end with tiny counts (`--smoke`) and writes BENCHMARKS.md with
//! every section and every plot, so it cannot rot between real benchmark runs. Its figures
//! mean nothing and nothing here checks a time.

use std::{path::PathBuf, process::Command};

/// Section headings BENCHMARKS.md must have (as `## N. Title`).
const SECTIONS: [&str; 7] = [
    "1. Per-packet cost",
    "2. Gateway throughput",
    "3. Policing accuracy",
    "4. Control plane",
    "5. TCP through a class",
    "6. Host and kernel agreement",
    "7. Kernels",
];
const PLOTS: [&str; 5] = [
    "per_packet.svg",
    "throughput.svg",
    "policing.svg",
    "control_plane.svg",
    "tcp.svg",
];

/// A scratch directory removed on drop, also when the test fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn smoke_run_writes_every_section_and_plot() {
    dataplane_lab::kernel::require_root();
    let dir =
        Scratch(std::env::temp_dir().join(format!("dataplane-bench-smoke-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let out = Command::new(env!("CARGO_BIN_EXE_dataplane-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&dir.0)
        .output()
        .expect("start dataplane-bench");
    assert!(
        out.status.success(),
        "dataplane-bench --smoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(dir.0.join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    for heading in ["## Machine", "## Targets"]
        .into_iter()
        .map(String::from)
        .chain(SECTIONS.iter().map(|s| format!("## {s}")))
    {
        assert!(md.contains(&heading), "BENCHMARKS.md lacks {heading:?}");
    }
    assert_eq!(md.matches("**Method.**").count(), SECTIONS.len());
    assert_eq!(
        md.matches("**What these numbers do not show.**").count(),
        SECTIONS.len()
    );
    assert!(!md.contains("section failed"), "{md}");
    for plot in PLOTS {
        assert!(
            md.contains(&format!("(bench/plots/{plot})")),
            "BENCHMARKS.md does not show {plot}"
        );
        let svg = std::fs::read_to_string(dir.0.join("bench/plots").join(plot))
            .unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{plot}");
    }
}
