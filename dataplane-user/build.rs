//! Builds the XDP object with Debian's rustc (which ships `core` for the BPF target) and
//! bpf-linker, so a plain `cargo build` always embeds an object built from the current source.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEFAULT_BPF_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let ebpf = root.join("dataplane-ebpf");
    for watched in [
        "dataplane-ebpf/src",
        "dataplane-ebpf/Cargo.toml",
        "dataplane-ebpf/Cargo.lock",
        "dataplane-ebpf/.cargo/config.toml",
        "dataplane-common/src",
        "dataplane-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=DATAPLANE_BPF_RUSTC");

    let rustc = env::var("DATAPLANE_BPF_RUSTC").unwrap_or_else(|_| DEFAULT_BPF_RUSTC.into());
    if !Path::new(&rustc).exists() {
        fail(&format!(
            "{rustc} not found: the eBPF build needs Debian's rustc-web and libstd-rust-web-dev-bpf. \
             Run `cargo xtask setup` (as root)."
        ));
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        fail("bpf-linker not found on PATH. Run `cargo xtask setup` (as root).");
    }

    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&ebpf)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir);
    // Our own cargo's settings must not leak into the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("RUSTC", &rustc).env("RUSTC_BOOTSTRAP", "1");
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail("building dataplane-ebpf failed (see the errors above)");
    }
    // `bench` holds the benchmark harness's helper programs (embedded only with the `bench`
    // feature).
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    for name in ["dataplane", "bench"] {
        let object = target_dir.join("bpfel-unknown-none/release").join(name);
        std::fs::copy(&object, out_dir.join(format!("{name}.bpf.o")))
            .unwrap_or_else(|e| fail(&format!("copying {} failed: {e}", object.display())));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
