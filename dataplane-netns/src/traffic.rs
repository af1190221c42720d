//! Real traffic between namespaces, for the tests, the bench and the demo: paced UDP senders
//! (run inside a namespace), a counting UDP sink, RoCEv2 headers for UDP payloads, and TCP
//! bulk streams, RPCs and their server. Every loop is bounded in packets or time, or stops at
//! a flag.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Receive buffer asked for, so bursts are not lost in the socket.
const SINK_RCVBUF: libc::c_int = 32 << 20;
/// How often [`send_paced`] catches up with its rate.
const SEND_PACED_TICK: Duration = Duration::from_micros(200);
/// TCP socket timeouts, so every loop sees the stop flag within this.
const TCP_IO_TIMEOUT: Duration = Duration::from_millis(200);
/// Bytes per write of a bulk stream, and per read of the server.
const TCP_CHUNK: usize = 64 * 1024;

/// Counts UDP datagrams arriving at one address until dropped.
pub struct Sink {
    /// Datagrams received.
    pub packets: Arc<AtomicU64>,
    /// Payload bytes received.
    pub bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Binds `addr` (in the calling thread's namespace) and starts counting.
    pub fn bind(addr: SocketAddr) -> Sink {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        // SAFETY: setsockopt with a valid fd and an int option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&SINK_RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let packets = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, b, s) = (packets.clone(), bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    p.fetch_add(1, Ordering::Relaxed);
                    b.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Sink {
            packets,
            bytes,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams so far.
    pub fn count(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Waits until the count stops changing (bounded), then returns it.
    pub fn settle(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.count();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.count();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `payload`-byte datagrams to `dst` at `pps` for `duration` (at most `max` packets);
/// call it on a thread inside the sending namespace. Returns how many were sent.
pub fn send_paced(dst: SocketAddr, payload: usize, pps: u64, duration: Duration, max: u64) -> u64 {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind sender");
    pace(
        &socket,
        dst,
        pps,
        SEND_PACED_TICK,
        max,
        |elapsed| elapsed < duration,
        |_, datagram| datagram.resize(payload, 0x5a),
    )
}

/// Sends datagram `n` (written by `datagram(n, buffer)`) for n = 0, 1, ... from `socket` to
/// `dst` at `pps`, catching up every `tick`, while `keep_going(elapsed)` holds and at most
/// `limit` in all. Returns how many were sent.
pub fn pace(
    socket: &UdpSocket,
    dst: SocketAddr,
    pps: u64,
    tick: Duration,
    limit: u64,
    mut keep_going: impl FnMut(Duration) -> bool,
    mut datagram: impl FnMut(u64, &mut Vec<u8>),
) -> u64 {
    let start = Instant::now();
    let mut buffer = Vec::new();
    let mut sent = 0u64;
    while sent < limit {
        let elapsed = start.elapsed();
        if !keep_going(elapsed) {
            break;
        }
        let due = ((elapsed.as_secs_f64() * pps as f64) as u64).min(limit);
        while sent < due {
            datagram(sent, &mut buffer);
            // A full socket buffer (ENOBUFS) is retried on the next tick, never counted.
            if socket.send_to(&buffer, dst).is_err() {
                break;
            }
            sent += 1;
        }
        std::thread::sleep(tick);
    }
    sent
}

/// A UDP socket on any port whose datagrams carry `tos` in the IP header (e.g. ECT(0)).
pub fn udp_socket_with_tos(tos: libc::c_int) -> Option<UdpSocket> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    // SAFETY: setsockopt with a valid fd and an int value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_TOS,
            (&tos as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Some(socket)
}

/// A RoCEv2 Base Transport Header (IBA 9.2): opcode, flags, P_Key, destination QP, PSN.
pub fn roce_bth(opcode: u8, psn: u32) -> [u8; 12] {
    let qp: u32 = 0x00_00_11;
    [
        opcode,
        0x40, // migration state set, pad 0, transport version 0
        0xff,
        0xff, // default P_Key
        0,
        (qp >> 16) as u8,
        (qp >> 8) as u8,
        qp as u8,
        0x80, // ack requested
        (psn >> 16) as u8,
        (psn >> 8) as u8,
        psn as u8,
    ]
}

/// A request of `request` bytes answered by `response` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Rpc {
    /// Request size.
    pub request: usize,
    /// Response size.
    pub response: usize,
}

/// Whether a generator still runs: not stopped and before its deadline.
fn running(stop: &AtomicBool, deadline: Instant) -> bool {
    !stop.load(Ordering::Relaxed) && Instant::now() < deadline
}

/// A TCP connection to `to` with [`TCP_IO_TIMEOUT`] on reads and writes.
fn connect(to: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(TCP_IO_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(TCP_IO_TIMEOUT)).ok()?;
    Some(s)
}

/// A bulk TCP stream to `to`, as fast as the path lets it, until stopped or the deadline;
/// returns the bytes written.
pub fn tcp_stream(to: SocketAddr, stop: &AtomicBool, deadline: Instant) -> u64 {
    let Some(mut s) = connect(to) else {
        return 0;
    };
    let chunk = vec![0x5au8; TCP_CHUNK];
    let mut sent = 0;
    while running(stop, deadline) {
        match s.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    sent
}

/// RPCs to `to` one at a time (send the request, read the whole response) until stopped or
/// the deadline; returns how many completed.
pub fn tcp_rpcs(to: SocketAddr, rpc: Rpc, stop: &AtomicBool, deadline: Instant) -> u64 {
    let Some(mut s) = connect(to) else {
        return 0;
    };
    let request = vec![1u8; rpc.request];
    let mut response = vec![0u8; rpc.response];
    let mut done = 0;
    'rpcs: while running(stop, deadline) {
        if s.write_all(&request).is_err() {
            break;
        }
        let mut got = 0;
        while got < rpc.response {
            match s.read(&mut response[got..]) {
                Ok(0) => break 'rpcs,
                Ok(n) => got += n,
                Err(e) if is_timeout(&e) && running(stop, deadline) => {}
                Err(_) => break 'rpcs,
            }
        }
        done += 1;
    }
    done
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Accepts connections on `listener` until stopped: discards what arrives, or with `answer`
/// answers each whole request with a response. Returns the bytes received.
pub fn tcp_serve(listener: TcpListener, answer: Option<Rpc>, stop: &Arc<AtomicBool>) -> u64 {
    if listener.set_nonblocking(true).is_err() {
        return 0;
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let (stop, received) = (stop.clone(), received.clone());
                workers.push(std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(TCP_IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(TCP_IO_TIMEOUT));
                    let mut buf = vec![0u8; TCP_CHUNK];
                    let response = vec![2u8; answer.map_or(0, |rpc| rpc.response)];
                    let mut pending = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                received.fetch_add(n as u64, Ordering::Relaxed);
                                let Some(rpc) = answer else { continue };
                                pending += n;
                                while pending >= rpc.request {
                                    pending -= rpc.request;
                                    if s.write_all(&response).is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) if is_timeout(&e) => {}
                            Err(_) => break,
                        }
                    }
                }));
            }
            Err(e) if is_timeout(&e) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    for w in workers {
        let _ = w.join();
    }
    received.load(Ordering::Relaxed)
}
