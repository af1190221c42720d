//! A delay line on the server's return path, so TCP runs see a realistic round trip: this
//! kernel has no netem, and a veth path's round trip is tens of microseconds.
//!
//! In the server's namespace, the routes to the clients lead into a TUN device. A thread reads
//! each packet the server sends, holds it for the delay and sends it on to the gateway through
//! a packet socket on the server's veth, addressed to the gateway's MAC. The gateway sees the
//! packets as if the server had sent them late; the forward path is untouched.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    netns::{in_netns, netns_run},
    topology::Topology,
};
use anyhow::{bail, Context, Result};

/// The TUN device's name, in the server's own namespace (unique with it).
const TUN_NAME: &str = "delay0";
/// Packets held at most; more are dropped and counted (the line's memory is bounded).
const MAX_HELD: usize = 200_000;
/// The longest the thread sleeps without looking at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// A running delay line; dropping it stops the thread (the TUN device goes with its fd).
pub struct ReturnDelay {
    stop: Arc<AtomicBool>,
    counts: Arc<DelayCounts>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// What the line did.
#[derive(Debug, Default)]
pub struct DelayCounts {
    /// Packets sent on after their delay.
    pub delayed: AtomicU64,
    /// Packets dropped: the line was full or the packet socket refused them.
    pub dropped: AtomicU64,
}

impl ReturnDelay {
    /// Delays everything the server of `topo` sends to its clients by `delay`.
    pub fn start(topo: &Topology, delay: Duration) -> Result<ReturnDelay> {
        let server = &topo.server;
        let gateway_mac = mac_of(&topo.gateway, &server.gateway_iface)?;
        let (tun, packet, ifindex) = in_netns(&server.netns, || -> Result<_> {
            let tun = open_tun().context("opening a TUN device")?;
            // SAFETY: plain socket call; the fd is owned at once.
            let packet = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) };
            if packet < 0 {
                return Err(io::Error::last_os_error()).context("packet socket");
            }
            // SAFETY: a fresh fd nobody else owns.
            let packet = unsafe { OwnedFd::from_raw_fd(packet) };
            let name = std::ffi::CString::new(server.iface.as_str())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {} in {}", server.iface, server.netns);
            }
            Ok((tun, packet, ifindex))
        })??;
        let ns = server.netns.as_str();
        netns_run(ns, "ip", &["link", "set", TUN_NAME, "up"])?;
        for client in &topo.clients {
            netns_run(
                ns,
                "ip",
                &[
                    "route",
                    "add",
                    &format!("{}/32", client.v4),
                    "dev",
                    TUN_NAME,
                ],
            )?;
            netns_run(
                ns,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{}/128", client.v6),
                    "dev",
                    TUN_NAME,
                ],
            )?;
        }
        // Packets from the clients arrive on the veth while the route back leads elsewhere.
        for key in ["all", "default", server.iface.as_str()] {
            netns_run(
                ns,
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
            )?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(DelayCounts::default());
        let line = Line {
            tun,
            packet,
            ifindex,
            gateway_mac,
            delay,
        };
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || line.run(&stop, &counts))
        };
        Ok(ReturnDelay {
            stop,
            counts,
            thread: Some(thread),
        })
    }

    /// What the line did so far.
    pub fn counts(&self) -> &DelayCounts {
        &self.counts
    }

    /// Stops the line and reports whether its thread failed.
    pub fn stop(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result.context("delay line"),
            Some(Err(_)) => bail!("the delay line's thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for ReturnDelay {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The thread's side: both fds and where to send.
struct Line {
    tun: OwnedFd,
    packet: OwnedFd,
    ifindex: u32,
    gateway_mac: [u8; 6],
    delay: Duration,
}

impl Line {
    fn run(self, stop: &AtomicBool, counts: &DelayCounts) -> io::Result<()> {
        // Wake-ups as close to each packet's time as the timer allows.
        // SAFETY: prctl on this thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64) };
        let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while held.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, packet)) = held.pop_front() {
                    let counter = if self.send(&packet) {
                        &counts.delayed
                    } else {
                        &counts.dropped
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            let wait = held
                .front()
                .map_or(MAX_WAIT, |(due, _)| due.saturating_duration_since(now))
                .min(MAX_WAIT);
            self.wait_readable(wait)?;
            loop {
                // SAFETY: reads into a buffer of its stated length.
                let n =
                    unsafe { libc::read(self.tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                    return Err(e);
                }
                if held.len() >= MAX_HELD {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                held.push_back((Instant::now() + self.delay, buf[..n as usize].to_vec()));
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for the TUN device to have a packet.
    fn wait_readable(&self, wait: Duration) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
        };
        // SAFETY: one pollfd and a timespec that outlive the call.
        let r = unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends one IP packet to the gateway; false when the socket refused it.
    fn send(&self, packet: &[u8]) -> bool {
        let protocol: u16 = match packet.first().map(|b| b >> 4) {
            Some(4) => libc::ETH_P_IP as u16,
            Some(6) => libc::ETH_P_IPV6 as u16,
            _ => return false,
        };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = protocol.to_be();
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&self.gateway_mac);
        // SAFETY: the buffer and the address outlive the call; the length is the address's.
        let sent = unsafe {
            libc::sendto(
                self.packet.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        sent == packet.len() as isize
    }
}

/// A non-blocking TUN device (IP packets, no packet information header) named [`TUN_NAME`],
/// in the calling thread's namespace.
fn open_tun() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(TUN_NAME.bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq that outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The MAC address of `iface` in `netns`.
fn mac_of(netns: &str, iface: &str) -> Result<[u8; 6]> {
    let json = netns_run(netns, "ip", &["-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    let text = links[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {iface} in {json}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().with_context(|| format!("MAC {text}"))?;
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text}"))?;
    }
    Ok(mac)
}
