//! The guest's second stage (PID 1 after switch_root, run from the share) and its jobs.

use std::path::Path;

use super::{kernels::Kernel, qemu::NICS, suites::Suite, MARK};

/// Modules the tests use, loaded before the job (no udev); a kernel without one is logged,
/// not failed (the test that needs it will say so).
const TEST_MODULES: &[&str] = &[
    "virtio_rng",
    "veth",
    "virtio_net",
    "tun",
    "bridge",
    "macvlan",
    "vxlan",
    "ifb",
    "8021q",
    "sch_htb",
    "sch_tbf",
    "sch_fq",
    "sch_fq_codel",
    "sch_cake",
    "sch_netem",
    "sch_red",
    "sch_ingress",
    "cls_bpf",
    "act_mirred",
    "nf_tables",
    "tcp_bbr",
];
/// Bounds the wait for each NIC to appear (tenths of a second).
const NIC_WAIT_TENTHS: u32 = 100;

/// Single-quoted for sh.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// guest.sh: the new root's mounts and modules, the NICs, then the job as root in
/// `workdir`; its output goes to the console and `job.log`, its exit status to `exit-code`.
pub fn stage2(kernel: &Kernel, workdir: &Path, nics: bool) -> String {
    // One modprobe for all (each process start costs a few hundred ms under emulation), of
    // the modules this kernel has (the host's modprobe reads the extracted tree).
    let (have, lack): (Vec<&str>, Vec<&str>) =
        TEST_MODULES.iter().partition(|m| kernel.has_module(m));
    let have = have.join(" ");
    let lack = if lack.is_empty() {
        "none".to_string()
    } else {
        lack.join(" ")
    };
    let mut s = format!(
        r#"#!/bin/sh
export HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() {{ echo "{MARK} $*"; }}
fail() {{ say "setup failed: $*"; sync; busybox poweroff -f; echo o > /proc/sysrq-trigger; sleep 10; }}
mount -t proc proc /proc || fail "mounting /proc"
mount -t sysfs sysfs /sys || fail "mounting /sys"
mount -t devtmpfs devtmpfs /dev || fail "mounting /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts || fail "mounting /dev/pts"
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm || fail "mounting /dev/shm"
ln -sfn /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mounting /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "mounting /tmp"
mount -t bpf bpf /sys/fs/bpf || fail "mounting bpffs"
mount -t tracefs tracefs /sys/kernel/tracing || fail "mounting tracefs"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mounting cgroup2"
hostname dataplane-vm
ip link set lo up || fail "bringing lo up"
modprobe -a {have} || fail "modprobe -a {have}"
say "modules this kernel lacks: {lack}"
"#,
    );
    if nics {
        s.push_str(&format!(
            r#"nic() {{
    i=0
    while [ $i -lt {NIC_WAIT_TENTHS} ]; do
        for d in /sys/class/net/*; do
            if [ "$(cat "$d/address")" = "$1" ]; then
                ip link set dev "${{d##*/}}" name "$2" || fail "renaming ${{d##*/}} to $2"
                ethtool -L "$2" combined {queues} || fail "ethtool -L $2 combined {queues}"
                ip link set dev "$2" up || fail "bringing $2 up"
                return
            fi
        done
        sleep 0.1
        i=$((i + 1))
    done
    fail "no NIC with MAC $1 for $2"
}}
"#,
            queues = super::qemu::QUEUES,
        ));
        for (name, mac) in NICS {
            s.push_str(&format!("nic {mac} {name}\n"));
        }
        // Carrier comes up asynchronously after `ip link set up`; the job starts with all.
        let names = NICS.map(|(name, _)| name).join(" ");
        s.push_str(&format!(
            r#"i=0
while :; do
    down=
    for n in {names}; do [ "$(cat /sys/class/net/$n/carrier)" = 1 ] || down="$down $n"; done
    [ -z "$down" ] && break
    [ $i -lt {NIC_WAIT_TENTHS} ] || fail "no carrier on$down"
    sleep 0.1
    i=$((i + 1))
done
"#
        ));
    }
    s.push_str(&format!(
        r#"cd {workdir} || fail "cd {workdir}"
say job-start
{{ sh /vm/job.sh </dev/null; echo $? >/vm/job.rc; }} 2>&1 | tee /vm/job.log
rc=$(cat /vm/job.rc)
say "job-end $rc"
echo "$rc" >/vm/exit-code
sync
busybox poweroff -f
echo o > /proc/sysrq-trigger
sleep 10
"#,
        workdir = quote(&workdir.display().to_string()),
    ));
    s
}

/// job.sh for `--exec`.
pub fn exec_job(command: &str) -> String {
    format!("#!/bin/sh\n{command}\n")
}

/// job.sh for test suites: each suite's binary in its package's directory (as cargo runs
/// it), its output also in `suite-<name>.log`, its exit status in `suite-<name>.rc`, between
/// start and end marks the host times; the rate tests scaled by `rate_scale`.
pub fn suites_job(suites: &[Suite], test_threads: u32, rate_scale: f64) -> String {
    let mut s = format!("#!/bin/sh\nfailed=0\nexport DATAPLANE_TEST_RATE_SCALE={rate_scale}\n");
    for suite in suites {
        let args: Vec<String> = suite.args.iter().map(|a| quote(a)).collect();
        let args = args.join(" ");
        let name = suite.name;
        s.push_str(&format!(
            r#"echo "{MARK} suite-start {name}"
{{ cd {dir} && {exe} --test-threads={test_threads} {args}; echo $? >/vm/suite-{name}.rc; }} 2>&1 | tee /vm/suite-{name}.log
echo "{MARK} suite-end {name}"
[ "$(cat /vm/suite-{name}.rc)" = 0 ] || failed=1
"#,
            dir = quote(&suite.dir.display().to_string()),
            exe = quote(&suite.executable.display().to_string()),
        ));
    }
    s.push_str("exit $failed\n");
    s
}
