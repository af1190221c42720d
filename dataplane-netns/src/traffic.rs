//! Real UDP traffic for daemon tests: a paced sender (run inside a namespace) and a counting
//! sink. Every loop is bounded in packets and time.

use std::{
    net::{SocketAddr, UdpSocket},
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
    let data = vec![0x5au8; payload];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < max {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = ((elapsed.as_secs_f64() * pps as f64) as u64).min(max);
        while sent < due {
            // A full socket buffer (ENOBUFS) is retried on the next tick, never counted.
            if socket.send_to(&data, dst).is_ok() {
                sent += 1;
            } else {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    sent
}
