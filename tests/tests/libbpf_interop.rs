//! Operators inspect gateways with libbpf-based tools (bpftool and their own): our object must
//! load with libbpf, and our pinned maps must read with it and agree with what we report.

use std::process::Command;

use dataplane::{dataplane::EBPF_OBJECT, pins::PinLayout};
use dataplane_common::maps::{class_counter_index, names, ClassCounters};
use dataplane_lab::{
    frames::Frame,
    kernel::{require_root, run_once},
};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder};

#[test]
fn libbpf_loads_our_object_with_every_program_and_map() {
    require_root();
    let open = ObjectBuilder::default()
        .open_memory(EBPF_OBJECT)
        .expect("libbpf opens the object");
    let obj = open.load().expect("libbpf loads it (verifier included)");
    let progs: Vec<String> = obj
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    assert!(progs.iter().any(|p| p == "dataplane"), "{progs:?}");
    assert!(progs.iter().any(|p| p == "xdp_pass"), "{progs:?}");
    let maps: Vec<String> = obj
        .maps()
        .map(|m| m.name().to_string_lossy().into_owned())
        .collect();
    for name in names::ALL {
        assert!(
            maps.iter().any(|m| m == name),
            "libbpf sees map {name}: {maps:?}"
        );
    }
}

struct Pins(PinLayout);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove_version(dataplane::pins::LAYOUT_VERSION);
    }
}

#[test]
fn pinned_maps_read_with_libbpf_and_bpftool_agree_with_ours() {
    require_root();
    let layout = PinLayout::new(format!("/sys/fs/bpf/dp-libbpf-{}", std::process::id()));
    let _ = layout.remove_version(dataplane::pins::LAYOUT_VERSION);
    let pins = Pins(layout);
    let (mut dp, opened) =
        dataplane::dataplane::Dataplane::open_pinned(&pins.0, None).expect("pin");
    assert!(matches!(opened, dataplane::dataplane::Opened::Fresh));
    let policy = dataplane::config::Policy::from_toml_str(
        "[[class]]\nname = \"default\"\n[[class]]\nname = \"rdma\"\n[[rule]]\nclass = \"rdma\"\nprotocol = \"udp\"\ndst_port = 5001\n",
        "test",
    )
    .expect("policy");
    dp.register_interfaces(&policy, &["lo".to_string()])
        .expect("register lo");
    let generation = dp
        .apply(&dataplane::compile::CompiledPolicy::new(&policy))
        .expect("apply");
    let frame = Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2])
        .udp(50000, 5001)
        .build();
    let sent = 7;
    for _ in 0..sent {
        run_once(dp.program().expect("program"), &frame);
    }
    let ours = dp.class_counters(1, 1).expect("our read");
    assert_eq!(ours.packets, sent);

    // libbpf: the per-CPU counters, summed, equal ours.
    let map = MapHandle::from_pinned_path(pins.0.map(names::CLASS_COUNTERS))
        .expect("libbpf opens the pinned map");
    let key = class_counter_index(1, 1).to_ne_bytes();
    let per_cpu = map
        .lookup_percpu(&key, MapFlags::ANY)
        .expect("lookup")
        .expect("present");
    let packets: u64 = per_cpu
        .iter()
        .map(|v| {
            assert_eq!(v.len(), std::mem::size_of::<ClassCounters>());
            u64::from_ne_bytes(v[..8].try_into().expect("8 bytes"))
        })
        .sum();
    assert_eq!(packets, ours.packets, "libbpf reads the same count");
    let slot = MapHandle::from_pinned_path(pins.0.map(names::POLICY_SLOTS)).expect("slots");
    let active = MapHandle::from_pinned_path(pins.0.map(names::ACTIVE_SLOT)).expect("active");
    let active = active
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .expect("lookup")
        .expect("present");
    let header = slot
        .lookup(&active[..4], MapFlags::ANY)
        .expect("lookup")
        .expect("present");
    assert_eq!(
        u32::from_ne_bytes(header[..4].try_into().expect("4 bytes")),
        generation
    );

    // bpftool (libbpf inside) prints the pinned counters with their BTF field names.
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pins.0.map(names::CLASS_COUNTERS))
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"packets\"") && text.contains("\"ecn_marked_packets\""));
    let out = Command::new("bpftool")
        .args(["prog", "show", "pinned"])
        .arg(pins.0.program("dataplane"))
        .output()
        .expect("bpftool runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("xdp"));
}
