//! QEMU: the accelerator, the NICs' network namespace, and one guest run with its console
//! streamed, logged and bounded in time.

use std::{
    collections::VecDeque,
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{kernels::Kernel, quiet, IO_TAG, MARK, ROOT_TAG};

/// The guest's NICs (renamed by MAC inside it); consecutive pairs are the two cables.
pub const NICS: [(&str, &str); 4] = [
    ("vcli", "52:54:00:d0:00:01"),
    ("vgin", "52:54:00:d0:00:02"),
    ("vgout", "52:54:00:d0:00:03"),
    ("vsrv", "52:54:00:d0:00:04"),
];
/// Queue pairs per NIC: several, so XDP attaches in driver mode.
pub const QUEUES: u32 = 4;
/// Network namespaces of this command are named `<prefix><pid>`.
const NETNS_PREFIX: &str = "dataplane-vm-";
/// From QEMU's start to the job's start.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// After the job ended, the guest has this long to power off; after the console closed,
/// QEMU has this long to exit.
const EXIT_GRACE: Duration = Duration::from_secs(30);
/// Console lines shown when a guest fails.
const TAIL_LINES: usize = 50;

pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The rate tests' scale (`DATAPLANE_TEST_RATE_SCALE`, see `dataplane_lab::rates`): the
    /// emulator's packet path carries about a tenth of a CPU's (measured under TCG: 1 Gbit/s
    /// of 1000-byte frames through BPF_PROG_TEST_RUN per CPU, 26 Mbit/s of iperf3 through
    /// the veths), so the suites scale their rates, bursts and pacing by this.
    pub fn rate_scale(&self) -> f64 {
        match self {
            Accel::Kvm => 1.0,
            Accel::Tcg => 0.1,
        }
    }

    /// KVM where it can run Debian's kernels, the emulator elsewhere, and why.
    pub fn choose() -> (Self, &'static str) {
        // kvm_pvm runs only guest kernels built for PVM; Debian's abort or hang under it.
        if Path::new("/sys/module/kvm_pvm").exists() {
            return (
                Accel::Tcg,
                "/dev/kvm is kvm_pvm, which runs only PVM guest kernels",
            );
        }
        match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(_) => (Accel::Kvm, "/dev/kvm is usable"),
            Err(_) => (Accel::Tcg, "no usable /dev/kvm"),
        }
    }

    fn args(&self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// A network namespace of this run holding the NICs' taps and the two cables (bridges);
/// deleting it removes them all.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create() -> Result<Self> {
        remove_stale();
        let ns = Self {
            name: format!("{NETNS_PREFIX}{}", std::process::id()),
        };
        quiet(Command::new("ip").args(["netns", "add", &ns.name]))?;
        for (cable, pair) in NICS.chunks(2).enumerate() {
            let bridge = format!("cable{cable}");
            ns.ip(&[
                "link",
                "add",
                &bridge,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ])?;
            for (name, _) in pair {
                let tap = tap(name);
                ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap", "multi_queue"])?;
                ns.ip(&["link", "set", &tap, "master", &bridge, "up"])?;
            }
            ns.ip(&["link", "set", &bridge, "up"])?;
        }
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        quiet(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    fn netdev_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (i, (name, mac)) in NICS.iter().enumerate() {
            args.extend([
                "-netdev".to_string(),
                format!(
                    "tap,id=n{i},ifname={},script=no,downscript=no,vhost=off,queues={QUEUES}",
                    tap(name)
                ),
                "-device".to_string(),
                format!(
                    "virtio-net-pci,netdev=n{i},mq=on,vectors={},mac={mac}",
                    2 * QUEUES + 2
                ),
            ]);
        }
        args
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = quiet(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn tap(nic: &str) -> String {
    format!("tap-{nic}")
}

/// Namespaces left by an earlier run that died without cleaning up (its process is gone).
fn remove_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if !super::running(pid) {
            eprintln!("removing network namespace {name} of an earlier run");
            if let Err(e) = quiet(Command::new("ip").args(["netns", "del", &name])) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// One guest run.
pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub accel: &'a Accel,
    pub memory: &'a str,
    pub smp: u32,
    pub netns: Option<&'a Netns>,
    pub share: &'a Path,
    pub console_log: &'a Path,
    pub timeout: Duration,
    pub interrupted: &'a Arc<AtomicBool>,
}

/// What the host saw of a run.
pub struct Run {
    /// From QEMU's start to the job's start.
    pub boot: Option<Duration>,
    /// When each `suite-start`/`suite-end` mark arrived, by the mark's text.
    pub marks: Vec<(String, Instant)>,
    /// The job's exit status, as the guest wrote it.
    pub exit_code: Option<i32>,
    /// Why the run gave no exit code (with the console's last lines).
    pub error: Option<String>,
}

enum Event {
    Line(String),
    Closed,
}

impl Guest<'_> {
    fn command(&self) -> Result<Command> {
        let share = self.share.to_str().context("share path is not UTF-8")?;
        let mut cmd = match self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(self.accel.args())
            .args([
                "-M",
                "q35",
                "-smp",
                &self.smp.to_string(),
                "-m",
                self.memory,
            ])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
            .args([
                "-fsdev",
                "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                &format!("virtio-9p-pci,fsdev=r,mount_tag={ROOT_TAG}"),
                "-fsdev",
                &format!("local,id=io,path={share},security_model=none"),
                "-device",
                &format!("virtio-9p-pci,fsdev=io,mount_tag={IO_TAG}"),
                "-device",
                "virtio-rng-pci",
            ]);
        if let Some(ns) = self.netns {
            cmd.args(ns.netdev_args());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; it makes QEMU die with this process, so a
        // killed xtask leaves no guest (and no namespace held open) behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Ok(cmd)
    }

    /// Boots, streams the console to stdout and the console log, and waits for the guest
    /// to power off, within the boot and job timeouts.
    pub fn run(&self) -> Result<Run> {
        let mut log = fs::File::create(self.console_log)
            .with_context(|| format!("creating {}", self.console_log.display()))?;
        let mut cmd = self.command()?;
        eprintln!("+ {cmd:?}");
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start QEMU: {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().context("QEMU's stdout")?;
        let stderr = child.stderr.take().context("QEMU's stderr")?;
        forward(stdout, "", tx.clone());
        forward(stderr, "qemu: ", tx);
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let mut run = Run {
            boot: None,
            marks: Vec::new(),
            exit_code: None,
            error: None,
        };
        let (mut job_start, mut job_end): (Option<Instant>, Option<Instant>) = (None, None);
        let mut open_streams = 2;
        while open_streams > 0 {
            if self.interrupted.load(Ordering::Relaxed) {
                stop(&mut child);
                bail!("interrupted");
            }
            let (limit, what, allowed) = match (job_start, job_end) {
                (_, Some(t)) => (t + EXIT_GRACE, "powering off", EXIT_GRACE),
                (Some(t), None) => (t + self.timeout, "the job", self.timeout),
                (None, None) => (start + BOOT_TIMEOUT, "the boot", BOOT_TIMEOUT),
            };
            let now = Instant::now();
            if now >= limit {
                stop(&mut child);
                run.error = Some(format!(
                    "{what} took longer than {}s; QEMU stopped",
                    allowed.as_secs()
                ));
                break;
            }
            match rx.recv_timeout((limit - now).min(Duration::from_millis(250))) {
                Ok(Event::Line(line)) => {
                    println!("{line}");
                    writeln!(log, "{line}").context("writing the console log")?;
                    if let Some(mark) = line.split_once(MARK).map(|(_, m)| m.trim()) {
                        if mark == "job-start" {
                            job_start = Some(Instant::now());
                            run.boot = Some(start.elapsed());
                        } else if mark.starts_with("job-end") {
                            job_end = Some(Instant::now());
                        }
                        run.marks.push((mark.to_string(), Instant::now()));
                    }
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Ok(Event::Closed) => open_streams -= 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = wait_bounded(&mut child)?;
        run.exit_code = fs::read_to_string(self.share.join("exit-code"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if run.exit_code.is_none() && run.error.is_none() {
            run.error = Some(format!(
                "the guest never wrote an exit code (QEMU {status}): it panicked, crashed or \
                 failed to set up"
            ));
        }
        if let Some(error) = &mut run.error {
            error.push_str(&format!(
                "\nlast {} console lines ({}):\n{}",
                tail.len(),
                self.console_log.display(),
                Vec::from(tail).join("\n")
            ));
        }
        Ok(run)
    }
}

/// Sends `reader`'s lines (without the serial console's CRs) to `tx`, then `Closed`.
fn forward(reader: impl Read + Send + 'static, prefix: &'static str, tx: mpsc::Sender<Event>) {
    thread::spawn(move || {
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send(Event::Line(format!("{prefix}{text}"))).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// QEMU's exit status once its console closed; killed if it lingers.
fn wait_bounded(child: &mut Child) -> Result<String> {
    let deadline = Instant::now() + EXIT_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            return Ok(status.to_string());
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop(child);
    Ok(format!(
        "did not exit within {}s of closing its console; killed",
        EXIT_GRACE.as_secs()
    ))
}
