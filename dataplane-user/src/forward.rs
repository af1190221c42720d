//! Forwarding in user space: every registered interface goes into the redirect device map
//! (forwarded packets may leave by any of them), and interfaces whose policy entry says
//! `forward = true` get the FORWARD flag and their MAC in their interface entry. Its counters are read in
//! `counters`.

use aya::maps::{xdp::XdpMapError, DevMapHash, MapData};
use dataplane_common::maps::{names, IfaceConfig};

use crate::dataplane::{map_err, Dataplane, DataplaneError};

impl Dataplane {
    /// Makes registered interface `name` (`ifindex`) a redirect target and sets its
    /// forwarding flag and MAC. Called after `register_iface` wrote its entry; the
    /// entry is replaced whole, so packets see the old or the new one.
    pub(crate) fn register_forwarding(
        &mut self,
        name: &str,
        ifindex: u32,
        forward: bool,
    ) -> Result<(), DataplaneError> {
        let mac = mac_address(name)
            .map_err(|e| DataplaneError::Interface(format!("{name}: reading its MAC: {e}")))?;
        let devices = names::EGRESS_DEVICES;
        let mut map: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(devices)?).map_err(map_err(devices))?;
        map.insert(ifindex, ifindex, None, 0).map_err(|e| match e {
            XdpMapError::MapError(source) => DataplaneError::Map {
                map: devices.to_string(),
                source,
            },
            other => DataplaneError::Interface(format!("{name}: device map: {other}")),
        })?;

        let mut cfg = self.iface_config(ifindex)?.ok_or_else(|| {
            DataplaneError::Interface(format!("{name}: not registered before forwarding"))
        })?;
        cfg.mac = mac;
        cfg.flags = if forward {
            cfg.flags | IfaceConfig::FORWARD
        } else {
            cfg.flags & !IfaceConfig::FORWARD
        };
        self.set_iface_config(ifindex, cfg)
    }
}

/// The MAC address of interface `name` in the calling thread's network namespace.
pub fn mac_address(name: &str) -> std::io::Result<[u8; 6]> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an interface name",
        ));
    }
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes ifru_hwaddr of the ifreq we pass.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data) {
        *dst = src as u8;
    }
    Ok(mac)
}
