//! Real traffic between network namespaces: sockets made inside a namespace, UDP receive with
//! the IP header fields the kernel reports (TTL / hop limit, TOS / traffic class), ICMP
//! errors from a socket's error queue, the kernel's forwarding counters, and iperf3.

use std::{
    io::{Read, Write},
    mem::size_of,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::netns::{in_netns, netns_command};

/// Runs `f` inside `netns`, for sockets that must live there.
fn inside<T: Send>(netns: &str, f: impl FnOnce() -> std::io::Result<T> + Send) -> T {
    in_netns(netns, f)
        .expect("entering the namespace")
        .unwrap_or_else(|e| panic!("socket in {netns}: {e}"))
}

/// Receive buffer of test sockets: bursts must not overflow it while the receiving thread
/// waits for a CPU (two CPUs also run the sender and the softirqs).
const RECEIVE_BUFFER: i32 = 8 << 20;

/// A UDP socket bound to `bind` inside `netns`.
pub fn udp_socket(netns: &str, bind: SocketAddr) -> UdpSocket {
    let s = inside(netns, || UdpSocket::bind(bind));
    set_int_option(
        s.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        RECEIVE_BUFFER,
    );
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    s
}

/// A TCP listener on `bind` inside `netns`.
pub fn tcp_listener(netns: &str, bind: SocketAddr) -> TcpListener {
    inside(netns, || TcpListener::bind(bind))
}

/// A TCP connection from inside `netns` to `to`.
pub fn tcp_connect(netns: &str, to: SocketAddr) -> TcpStream {
    inside(netns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
}

/// Sets an integer socket option.
pub fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: a valid descriptor and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// Asks the kernel to report TTL / hop limit and TOS / traffic class of received datagrams.
pub fn report_ip_fields(s: &UdpSocket, v6: bool) {
    let fd = s.as_raw_fd();
    if v6 {
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1);
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
    } else {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1);
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
    }
}

/// One received datagram and the IP fields the kernel reported with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Datagram {
    /// Payload length.
    pub len: usize,
    /// TTL or hop limit, when reported.
    pub hop_limit: Option<u8>,
    /// TOS / traffic class (DSCP and ECN), when reported.
    pub tos: Option<u8>,
}

/// Receives one datagram into `buf` with its control messages (see [`report_ip_fields`]);
/// `None` on timeout.
pub fn recv_datagram(s: &UdpSocket, buf: &mut [u8]) -> Option<Datagram> {
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: a valid descriptor and a msghdr describing live buffers.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "recvmsg: {e}"
        );
        return None;
    }
    let mut d = Datagram {
        len: n as usize,
        ..Datagram::default()
    };
    for (level, kind, value) in control_messages(&msg) {
        match (level, kind) {
            (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                d.hop_limit = Some(value as u8)
            }
            (libc::IPPROTO_IP, libc::IP_TOS) | (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                d.tos = Some(value as u8)
            }
            _ => {}
        }
    }
    Some(d)
}

/// (level, type, first int or byte of data) of each control message.
fn control_messages(msg: &libc::msghdr) -> Vec<(i32, i32, u32)> {
    let mut out = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
            let data = libc::CMSG_DATA(c);
            // IP_TOS and IP_TTL-style options come as one byte or one int.
            let value = if len >= 4 {
                std::ptr::read_unaligned(data.cast::<u32>())
            } else {
                u32::from(*data)
            };
            out.push(((*c).cmsg_level, (*c).cmsg_type, value));
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    out
}

/// An ICMP error the kernel queued on a socket with IP_RECVERR / IPV6_RECVERR set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// `SO_EE_ORIGIN_ICMP` (2) or `SO_EE_ORIGIN_ICMP6` (3).
    pub origin: u8,
    /// ICMP type.
    pub kind: u8,
    /// ICMP code.
    pub code: u8,
}

/// Waits up to `timeout` for an ICMP error on `s`'s error queue.
pub fn icmp_error(s: &UdpSocket, timeout: Duration) -> Option<IcmpError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut buf = [0u8; 256];
        let mut control = [0u64; 32];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as in recv_datagram.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 32]>();
        // SAFETY: as in recv_datagram.
        let n = unsafe {
            libc::recvmsg(
                s.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // SAFETY: as in control_messages; sock_extended_err follows the header.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let recverr = ((*c).cmsg_level, (*c).cmsg_type);
                if recverr == (libc::IPPROTO_IP, libc::IP_RECVERR)
                    || recverr == (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
                {
                    let e = std::ptr::read_unaligned(
                        libc::CMSG_DATA(c).cast::<libc::sock_extended_err>(),
                    );
                    return Some(IcmpError {
                        origin: e.ee_origin,
                        kind: e.ee_type,
                        code: e.ee_code,
                    });
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    None
}

/// Datagrams the kernel of `netns` forwarded itself: (IPv4 ForwDatagrams, IPv6
/// Ip6OutForwDatagrams).
pub fn kernel_forwarded(netns: &str) -> (u64, u64) {
    let read = |path: &str| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    };
    let (snmp, snmp6) = in_netns(netns, || {
        (
            read("/proc/thread-self/net/snmp"),
            read("/proc/thread-self/net/snmp6"),
        )
    })
    .expect("entering the namespace");
    // "Ip: Forwarding DefaultTTL ... ForwDatagrams ..." then a line of values.
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (
        ip.next().expect("Ip: names"),
        ip.next().expect("Ip: values"),
    );
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .expect("ForwDatagrams");
    let v6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Ip6OutForwDatagrams");
    (v4, v6)
}

/// Deterministic payload byte `i` of stream `seed`.
pub fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.rotate_left(17))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29);
    (x >> 56) as u8
}

/// Sends `bytes` of [`pattern`] over TCP from `client_netns` to a listener in `server_netns`
/// and checks every byte arrived intact and in order; returns the elapsed time.
pub fn tcp_transfer(
    client_netns: &str,
    server_netns: &str,
    server: SocketAddr,
    bytes: u64,
) -> Duration {
    const CHUNK: usize = 64 * 1024;
    let seed = u64::from(server.port()) << 32 | bytes;
    let listener = tcp_listener(server_netns, server);
    let start = Instant::now();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = vec![0u8; CHUNK];
            let mut at = 0u64;
            while at < bytes {
                let n = conn.read(&mut buf).expect("read: the stream stalled");
                assert!(n > 0, "connection closed after {at} of {bytes} bytes");
                for (k, b) in buf[..n].iter().enumerate() {
                    let i = at + k as u64;
                    assert_eq!(*b, pattern(seed, i), "byte {i} corrupted in transit");
                }
                at += n as u64;
            }
        });
        let mut conn = tcp_connect(client_netns, server);
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < bytes {
            let n = (bytes - at).min(CHUNK as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(seed, at + k as u64);
            }
            conn.write_all(&buf[..n])
                .expect("write: the stream stalled");
            at += n as u64;
        }
        receiver.join().expect("receiver");
    });
    start.elapsed()
}

/// Sends `count` UDP datagrams of `len` [`pattern`] bytes (the first 4 a sequence number)
/// from `from` to `to`, `per_batch` at a time every `gap`; returns what arrived at `to`.
pub fn udp_send_paced(
    from: &UdpSocket,
    to: &UdpSocket,
    count: u32,
    len: usize,
    per_batch: u32,
    gap: Duration,
) -> Vec<(Datagram, bool)> {
    let dst = to.local_addr().expect("receiver address");
    let seed = u64::from(dst.port());
    let received = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut out = Vec::new();
            let mut buf = vec![0u8; len + 64];
            while let Some(d) = recv_datagram(to, &mut buf) {
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let intact = d.len == len
                    && buf[4..len]
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == pattern(seed ^ u64::from(seq), i as u64));
                out.push((d, intact));
            }
            out
        });
        let mut buf = vec![0u8; len];
        let mut next = Instant::now();
        for seq in 0..count {
            buf[..4].copy_from_slice(&seq.to_be_bytes());
            for (i, b) in buf[4..].iter_mut().enumerate() {
                *b = pattern(seed ^ u64::from(seq), i as u64);
            }
            from.send_to(&buf, dst).expect("send");
            if (seq + 1) % per_batch == 0 {
                next += gap;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        receiver.join().expect("receiver")
    });
    received
}

/// One iperf3 run's receiver-side figures.
#[derive(Debug)]
pub struct IperfResult {
    /// Bytes per second received in each reporting interval, in order.
    pub interval_rates: Vec<f64>,
    /// Runs iperf3 aborted and that were repeated before this one (a measurement meant to
    /// overlap another one's may then not have).
    pub reruns: u32,
}

impl IperfResult {
    /// Mean received rate in bytes/s over the intervals, without the first and last
    /// (start-up and the partial end).
    pub fn steady_rate(&self) -> f64 {
        let inner = &self.interval_rates[1..self.interval_rates.len() - 1];
        inner.iter().sum::<f64>() / inner.len() as f64
    }
}

/// An iperf3 server waiting for one test; killed on drop.
pub struct IperfServer {
    child: Child,
    addr: SocketAddr,
}

impl IperfServer {
    /// Starts `iperf3 -s` on `addr` in `netns`, reporting every `interval`.
    pub fn start(netns: &str, addr: SocketAddr, interval: Duration) -> IperfServer {
        let child = netns_command(netns, "iperf3")
            .args(["-s", "--json", "-B"])
            .arg(addr.ip().to_string())
            .args(["-p", &addr.port().to_string()])
            .args(["-i", &format!("{}", interval.as_secs_f64())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 runs (cargo xtask setup installs it)");
        IperfServer { child, addr }
    }

    /// Runs the client from `client_netns` with `args` (e.g. `-u -b 80M -t 3`), retrying
    /// while the server is not yet listening; returns the server's (receiver's) figures,
    /// which the client fetches.
    pub fn run_client(self, client_netns: &str, args: &[&str]) -> IperfResult {
        let deadline = Instant::now() + Duration::from_secs(3);
        // iperf3 3.12 sometimes aborts a UDP run on a busy machine with EAGAIN on its control
        // socket; such a run is repeated, a bounded number of times.
        let mut aborted_runs = 0;
        let json = loop {
            let out = netns_command(client_netns, "iperf3")
                .args(["-c", &self.addr.ip().to_string()])
                .args(["-p", &self.addr.port().to_string()])
                .args(["--json", "--get-server-output"])
                .args(args)
                .output()
                .expect("iperf3 client runs");
            let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("iperf3 client output is not JSON ({e})"));
            // With --json, iperf3 3.12 reports errors in the output, not the exit status.
            match json["error"].as_str() {
                None if out.status.success() => break json,
                Some(e) if e.contains("unable to connect") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(e) if e.contains("Resource temporarily unavailable") && aborted_runs < 2 => {
                    aborted_runs += 1;
                    eprintln!("iperf3 run aborted ({e}); running it again");
                }
                _ => panic!("iperf3 client in {client_netns} failed: {json}"),
            }
        };
        let interval_rates = json["server_output_json"]["intervals"]
            .as_array()
            .unwrap_or_else(|| {
                panic!("iperf3 client output without the server's intervals: {json}")
            })
            .iter()
            .map(|i| {
                let sum = &i["sum"];
                sum["bytes"].as_f64().expect("bytes") / sum["seconds"].as_f64().expect("seconds")
            })
            .collect::<Vec<_>>();
        assert!(
            interval_rates.len() >= 3,
            "iperf3 reported {} intervals",
            interval_rates.len()
        );
        IperfResult {
            interval_rates,
            reruns: aborted_runs,
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[[interface]]` tables that make the dataplane forward on every gateway interface of
/// `topo`.
pub fn forwarding_interfaces(topo: &crate::topology::Topology) -> String {
    topo.gateway_ifaces()
        .iter()
        .map(|i| format!("[[interface]]\nname = \"{i}\"\nforward = true\n"))
        .collect()
}
