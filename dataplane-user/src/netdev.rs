//! What the kernel says of a network device, asked over netlink:
//! - whether it can take frames another interface's XDP program redirects to it: its XDP
//!   features (`NETDEV_XDP_ACT_NDO_XMIT`), from the generic-netlink family `netdev` (the same
//!   source as `ynl --family netdev --do dev-get`). A veth has it only while its peer has an
//!   XDP program or GRO on; without it, every frame the dataplane forwards there is lost;
//! - which XDP program is attached to it (`IFLA_XDP_PROG_ID`, rtnetlink), so an adopted
//!   attachment is checked on the device itself, not only in the pins;
//! - whether XDP would transmit through it in a driver's locked shared-queue mode (its
//!   driver and channels, from the ethtool ioctl, as `ethtool -i` and `ethtool -l` read them).

use std::io;

use netlink_sys::{
    protocols::{NETLINK_GENERIC, NETLINK_ROUTE},
    Socket, SocketAddr,
};

/// Generic netlink's controller and its command and attributes (`linux/genetlink.h`).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The `netdev` family's command and attributes (`linux/netdev.h`).
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes redirected frames.
const NDO_XMIT: u64 = 1 << 2;
/// Netlink message header flags and types.
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// rtnetlink's link request and the attributes of its answer (`linux/rtnetlink.h`,
/// `linux/if_link.h`): `struct ifinfomsg` follows the netlink header.
const RTM_GETLINK: u16 = 18;
const IFINFOMSG_LEN: usize = 16;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;

/// A netlink attribute: type and payload (padding to four bytes added).
fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLA_HDRLEN + payload.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// A netlink request of type `kind`: netlink header, the family's own header, attributes.
fn message(kind: u16, header: &[u8], attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + header.len() + attributes.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
    m.extend_from_slice(header);
    m.extend_from_slice(attributes);
    m
}

/// A generic-netlink request: genl header (`command`, version 1), attributes.
fn request(family: u16, command: u8, attributes: &[u8]) -> Vec<u8> {
    message(family, &[command, 1, 0, 0], attributes)
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply")
}

/// The attributes of the first message of a reply (after its family header of
/// `header_len` bytes), or the error the kernel answered with.
fn reply_attributes(reply: &[u8], header_len: usize) -> io::Result<&[u8]> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    let len = word(0).ok_or_else(malformed)? as usize;
    let message = reply.get(..len).ok_or_else(malformed)?;
    let message_type = u16::from_ne_bytes([message[4], message[5]]);
    if message_type == NLMSG_ERROR {
        let code = word(NLMSG_HDRLEN).ok_or_else(malformed)? as i32;
        return Err(io::Error::from_raw_os_error(-code));
    }
    message
        .get(NLMSG_HDRLEN + header_len..)
        .ok_or_else(malformed)
}

/// The payload of attribute `kind` in the first message of a generic-netlink reply.
fn reply_attribute(reply: &[u8], kind: u16) -> io::Result<Option<&[u8]>> {
    find_attribute(reply_attributes(reply, GENL_HDRLEN)?, kind)
}

/// The payload of attribute `kind` among `attributes` (top level or nested).
fn find_attribute(attributes: &[u8], kind: u16) -> io::Result<Option<&[u8]>> {
    let mut rest = attributes;
    while rest.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        // The top bits of the type are flags (nested, byte order).
        let this = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(malformed());
        }
        if this == kind {
            return Ok(Some(&rest[NLA_HDRLEN..len]));
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(None)
}

/// The XDP program attached to interface `ifindex` of this network namespace (its kernel id;
/// `None` when there is none).
pub fn attached_xdp_program(ifindex: u32) -> io::Result<Option<u32>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // struct ifinfomsg: family AF_UNSPEC, type, index, flags, change.
    let mut ifinfo = [0u8; IFINFOMSG_LEN];
    ifinfo[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let reply = ask(&socket, &message(RTM_GETLINK, &ifinfo, &[]))?;
    let Some(xdp) = find_attribute(reply_attributes(&reply, IFINFOMSG_LEN)?, IFLA_XDP)? else {
        return Ok(None);
    };
    Ok(find_attribute(xdp, IFLA_XDP_PROG_ID)?
        .and_then(|id| id.get(..4)?.try_into().ok())
        .map(u32::from_ne_bytes)
        .filter(|id| *id != 0))
}

/// One request, one reply.
fn ask(socket: &Socket, message: &[u8]) -> io::Result<Vec<u8>> {
    socket.send(message, 0)?;
    // Room for a link message with every attribute a NIC with many VFs reports.
    let mut reply = Vec::with_capacity(64 << 10);
    socket.recv(&mut reply, 0)?;
    Ok(reply)
}

/// Asks the kernel about interfaces of this network namespace.
pub struct XdpFeatures {
    socket: Socket,
    family: u16,
}

impl XdpFeatures {
    /// Opens the generic-netlink socket and resolves the `netdev` family; `None` on a kernel
    /// without it (before 6.3), which cannot say.
    pub fn open() -> io::Result<Option<XdpFeatures>> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let name = attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        let reply = match ask(&socket, &request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &name)) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let family = match reply_attribute(&reply, CTRL_ATTR_FAMILY_ID) {
            Ok(Some(id)) if id.len() >= 2 => u16::from_ne_bytes([id[0], id[1]]),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
            _ => return Ok(None),
        };
        Ok(Some(XdpFeatures { socket, family }))
    }

    /// Whether interface `ifindex` takes redirected XDP frames.
    pub fn takes_redirects(&self, ifindex: u32) -> io::Result<bool> {
        let index = attribute(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
        let reply = ask(
            &self.socket,
            &request(self.family, NETDEV_CMD_DEV_GET, &index),
        )?;
        let features = reply_attribute(&reply, NETDEV_A_DEV_XDP_FEATURES)?
            .and_then(|v| v.get(..8)?.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or(0);
        Ok(features & NDO_XMIT != 0)
    }
}

/// `SIOCETHTOOL` commands and the parts of their structs we read (`linux/ethtool.h`).
const ETHTOOL_GDRVINFO: u32 = 0x3;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
/// `struct ethtool_drvinfo`: the command, then the driver's name (32 bytes), then more.
const DRVINFO_LEN: usize = 196;
/// `struct ethtool_channels`: the command, then max rx, tx, other, combined, then the
/// current counts in the same order.
const CHANNELS_WORDS: usize = 9;

/// Why XDP frames redirected out of `iface` would go through a queue its driver locks and
/// shares among CPUs (the driver's "slower locked tx mode"), judged before an XDP program is
/// attached; `None` when they would not, or the driver does not say. virtio_net gives XDP a
/// transmit queue pair per possible CPU beside the queue pairs in use, and falls back to the
/// shared locked queues when the device has too few (Linux's virtnet_xdp_set).
pub fn xdp_tx_locked(iface: &str, cpus: u32) -> io::Result<Option<String>> {
    let mut info = [0u8; DRVINFO_LEN];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    ethtool(iface, &mut info)?;
    let driver = info[4..36].split(|b| *b == 0).next().unwrap_or_default();
    if driver != b"virtio_net" {
        return Ok(None);
    }
    let mut channels = [0u32; CHANNELS_WORDS];
    channels[0] = ETHTOOL_GCHANNELS;
    // SAFETY: plain words, viewed as their bytes for the ioctl.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(channels.as_mut_ptr().cast::<u8>(), CHANNELS_WORDS * 4)
    };
    ethtool(iface, bytes)?;
    let (max, combined) = (channels[4], channels[8]);
    Ok(locked_reason(iface, max, combined, cpus))
}

/// The virtio_net rule on its numbers: locked when the queue pairs in use and one per CPU
/// exceed the device's.
fn locked_reason(iface: &str, max: u32, combined: u32, cpus: u32) -> Option<String> {
    (combined + cpus > max).then(|| {
        let fix = if cpus < max {
            format!("`ethtool -L {iface} combined {}` avoids it", max - cpus)
        } else {
            format!("give its device more than {cpus} queue pairs (one per CPU) to avoid it")
        };
        format!(
            "XDP frames redirected out of {iface} go through the driver's slower locked \
             shared queues: virtio_net needs a queue pair per CPU ({cpus}) beside the {combined} \
             in use, and the device has {max}; {fix}"
        )
    })
}

/// One `SIOCETHTOOL` request on `iface`, `data` in and out.
fn ethtool(iface: &str, data: &mut [u8]) -> io::Result<()> {
    // SAFETY: all zeroes is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = *from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: a datagram socket only to carry the ioctl.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `request` names the interface and points at `data`, which holds the
    // command's struct and outlives the call.
    let rc = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, std::ptr::addr_of_mut!(request)) };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: our own descriptor.
    unsafe { libc::close(socket) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_net_locks_where_a_queue_pair_per_cpu_does_not_fit() {
        // Four queue pairs, two CPUs: two in use leave room, four do not.
        assert_eq!(locked_reason("eth0", 4, 2, 2), None);
        let why = locked_reason("eth0", 4, 4, 2).expect("locked");
        assert!(why.contains("ethtool -L eth0 combined 2"), "{why}");
        let why = locked_reason("eth0", 1, 1, 2).expect("locked");
        assert!(why.contains("more than 2 queue pairs"), "{why}");
    }

    #[test]
    fn only_virtio_net_is_judged() {
        // Loopback has no ethtool driver info (an error) and is never called locked.
        assert!(!matches!(xdp_tx_locked("lo", 2), Ok(Some(_))));
        assert!(xdp_tx_locked("no-such-device0", 2).is_err());
    }

    #[test]
    fn attributes_are_padded_and_found_again() {
        let a = attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        assert_eq!(a.len(), 12);
        let mut reply = request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &a);
        reply.extend_from_slice(&attribute(CTRL_ATTR_FAMILY_ID, &42u16.to_ne_bytes()));
        let len = reply.len() as u32;
        reply[..4].copy_from_slice(&len.to_ne_bytes());
        let id = reply_attribute(&reply, CTRL_ATTR_FAMILY_ID)
            .expect("well formed")
            .expect("present");
        assert_eq!(u16::from_ne_bytes([id[0], id[1]]), 42);
        assert_eq!(
            reply_attribute(&reply, CTRL_ATTR_FAMILY_NAME).expect("ok"),
            Some(&b"netdev\0"[..])
        );
        assert_eq!(reply_attribute(&reply, 9).expect("ok"), None);
    }

    #[test]
    fn nested_attributes_are_found_after_the_link_header() {
        let nested = attribute(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes());
        let mut reply = message(16, &[0; IFINFOMSG_LEN], &attribute(3, b"eth0\0"));
        reply.extend_from_slice(&attribute(IFLA_XDP, &nested));
        let len = reply.len() as u32;
        reply[..4].copy_from_slice(&len.to_ne_bytes());
        let xdp = find_attribute(
            reply_attributes(&reply, IFINFOMSG_LEN).expect("ok"),
            IFLA_XDP,
        )
        .expect("well formed")
        .expect("present");
        let id = find_attribute(xdp, IFLA_XDP_PROG_ID)
            .expect("well formed")
            .expect("present");
        assert_eq!(id, 77u32.to_ne_bytes());
    }

    #[test]
    fn errors_and_truncation_are_reported_not_read_past() {
        let mut error = request(NLMSG_ERROR, 0, &[]);
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.truncate(NLMSG_HDRLEN);
        error.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let len = error.len() as u32;
        error[..4].copy_from_slice(&len.to_ne_bytes());
        let e = reply_attribute(&error, 1).expect_err("an error reply");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        let mut bad = request(GENL_ID_CTRL, 0, &attribute(1, &[0; 8]));
        bad[NLMSG_HDRLEN + GENL_HDRLEN..][..2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(reply_attribute(&bad, 1).is_err());
        assert!(reply_attribute(&[1, 2], 1).is_err());
    }
}
