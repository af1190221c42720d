//! Forwarding decisions: which packets the XDP program may forward itself, what the kernel's
//! route lookup (`bpf_fib_lookup`) result means, and the TTL / hop-limit decrement with its
//! incremental IPv4 checksum update. Whatever is not forwarded goes to the kernel, which
//! resolves neighbours, sends ICMP errors and fragments.

use crate::{checksum::replace_word, packet::PacketMeta, reason::Reason};

/// Result codes of `bpf_fib_lookup` (`BPF_FIB_LKUP_RET_*` in `uapi/linux/bpf.h`).
pub mod fib {
    /// Lookup succeeded: egress ifindex and both MACs are filled in.
    pub const SUCCESS: i64 = 0;
    /// Route is a blackhole.
    pub const BLACKHOLE: i64 = 1;
    /// Route is unreachable.
    pub const UNREACHABLE: i64 = 2;
    /// Route is prohibit.
    pub const PROHIBIT: i64 = 3;
    /// Not forwarded: local delivery, broadcast, multicast, no route.
    pub const NOT_FWDED: i64 = 4;
    /// Forwarding is disabled on the ingress device.
    pub const FWD_DISABLED: i64 = 5;
    /// The route needs lightweight-tunnel encapsulation.
    pub const UNSUPP_LWT: i64 = 6;
    /// No resolved neighbour entry for the next hop.
    pub const NO_NEIGH: i64 = 7;
    /// Larger than the egress MTU.
    pub const FRAG_NEEDED: i64 = 8;
    /// No source address (only with `BPF_FIB_LOOKUP_SRC`, which we do not ask for).
    pub const NO_SRC_ADDR: i64 = 9;
}

/// Address family values `bpf_fib_lookup` expects.
pub mod af {
    /// `AF_INET`.
    pub const INET: u8 = 2;
    /// `AF_INET6`.
    pub const INET6: u8 = 10;
}

use crate::wire::{ETH_HLEN, MAC_LEN};

/// `Ok` when the route lookup found a next hop to forward to; else why the kernel gets the
/// packet. Negative values are errors of the helper itself.
#[inline(always)]
pub const fn fib_verdict(ret: i64) -> Result<(), Reason> {
    match ret {
        fib::SUCCESS => Ok(()),
        fib::BLACKHOLE => Err(Reason::FibBlackhole),
        fib::UNREACHABLE => Err(Reason::FibUnreachable),
        fib::PROHIBIT => Err(Reason::FibProhibit),
        fib::NOT_FWDED => Err(Reason::FibNotForwarded),
        fib::FWD_DISABLED => Err(Reason::FibForwardingDisabled),
        fib::UNSUPP_LWT => Err(Reason::FibUnsupported),
        fib::NO_NEIGH => Err(Reason::FibNoNeighbour),
        fib::FRAG_NEEDED => Err(Reason::FibFragNeeded),
        _ => Err(Reason::FibOther),
    }
}

/// Whether a parsed frame is one the dataplane may forward: untagged, sent to the ingress
/// interface's own MAC. The addresses are checked by [`routable_v4`] / [`routable_v6`]. The
/// kernel's forwarding path applies the same checks (and drops or answers what fails them),
/// so passing such frames keeps its behaviour.
#[inline(always)]
pub fn forwardable(
    meta: &PacketMeta,
    dst_mac: &[u8; MAC_LEN],
    own_mac: &[u8; MAC_LEN],
) -> Result<(), Reason> {
    if meta.l3_offset != ETH_HLEN {
        return Err(Reason::VlanTagged);
    }
    if dst_mac != own_mac {
        return Err(Reason::NotOurMac);
    }
    Ok(())
}

/// Martian IPv4 sources and destinations the kernel refuses to forward: "this network"
/// (0/8), loopback (127/8), multicast or limited-broadcast sources. Only the first octets
/// decide.
#[inline(always)]
pub const fn routable_v4(src_first_octet: u8, dst_first_octet: u8) -> Result<(), Reason> {
    const THIS_NETWORK: u8 = 0;
    const LOOPBACK: u8 = 127;
    const MULTICAST_AND_ABOVE: u8 = 224;
    if src_first_octet == THIS_NETWORK
        || src_first_octet == LOOPBACK
        || src_first_octet >= MULTICAST_AND_ABOVE
        || dst_first_octet == THIS_NETWORK
        || dst_first_octet == LOOPBACK
    {
        Err(Reason::NotRoutable)
    } else {
        Ok(())
    }
}

/// IPv6 addresses the kernel does not forward: unspecified or multicast sources, loopback,
/// and link-local addresses on either side.
#[inline(always)]
pub fn routable_v6(src: &[u8; 16], dst: &[u8; 16]) -> Result<(), Reason> {
    let multicast = |a: &[u8; 16]| a[0] == 0xff;
    let link_local = |a: &[u8; 16]| a[0] == 0xfe && a[1] & 0xc0 == 0x80;
    // All zero but (maybe) the last byte: unspecified (::) and loopback (::1).
    let unspecified_or_loopback =
        |a: &[u8; 16]| a[..15].iter().all(|b| *b == 0) && (a[15] == 0 || a[15] == 1);
    if multicast(src)
        || link_local(src)
        || link_local(dst)
        || unspecified_or_loopback(src)
        || unspecified_or_loopback(dst)
    {
        Err(Reason::NotRoutable)
    } else {
        Ok(())
    }
}

/// The IPv4 TTL after one hop and the header checksum updated for it (RFC 1624), or
/// [`Reason::TtlExpired`] when the TTL would reach zero. `check` is the checksum as a
/// big-endian word.
#[inline(always)]
pub fn ipv4_decrement_ttl(ttl: u8, protocol: u8, check: u16) -> Result<(u8, u16), Reason> {
    if ttl <= 1 {
        return Err(Reason::TtlExpired);
    }
    let old = u16::from_be_bytes([ttl, protocol]);
    let new = u16::from_be_bytes([ttl - 1, protocol]);
    Ok((ttl - 1, replace_word(check, old, new)))
}

/// The IPv6 hop limit after one hop, or [`Reason::TtlExpired`] when it would reach zero.
#[inline(always)]
pub const fn ipv6_decrement_hop_limit(hop_limit: u8) -> Result<u8, Reason> {
    if hop_limit <= 1 {
        Err(Reason::TtlExpired)
    } else {
        Ok(hop_limit - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::IPV4_TTL_OFFSET;

    /// Full RFC 1071 checksum of a header whose checksum field is zero.
    fn full(header: &[u8; 20]) -> u16 {
        let mut sum: u32 = header
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn fib_results_map_to_reasons() {
        let table = [
            (fib::SUCCESS, Ok(())),
            (fib::BLACKHOLE, Err(Reason::FibBlackhole)),
            (fib::UNREACHABLE, Err(Reason::FibUnreachable)),
            (fib::PROHIBIT, Err(Reason::FibProhibit)),
            (fib::NOT_FWDED, Err(Reason::FibNotForwarded)),
            (fib::FWD_DISABLED, Err(Reason::FibForwardingDisabled)),
            (fib::UNSUPP_LWT, Err(Reason::FibUnsupported)),
            (fib::NO_NEIGH, Err(Reason::FibNoNeighbour)),
            (fib::FRAG_NEEDED, Err(Reason::FibFragNeeded)),
            (fib::NO_SRC_ADDR, Err(Reason::FibOther)),
            (-22, Err(Reason::FibOther)),
            (1000, Err(Reason::FibOther)),
        ];
        for (ret, want) in table {
            assert_eq!(fib_verdict(ret), want, "result code {ret}");
        }
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_right() {
        for ttl in 0..=255u8 {
            for protocol in [1u8, 6, 17, 255] {
                let mut h = [
                    0x45, 0x02, 0x05, 0xdc, 0xbe, 0xef, 0x40, 0x00, ttl, protocol, 0, 0, 198, 18,
                    1, 2, 198, 19, 0, 2,
                ];
                let check = full(&h);
                let got = ipv4_decrement_ttl(ttl, protocol, check);
                if ttl <= 1 {
                    assert_eq!(got, Err(Reason::TtlExpired));
                    continue;
                }
                h[IPV4_TTL_OFFSET] = ttl - 1;
                assert_eq!(
                    got,
                    Ok((ttl - 1, full(&h))),
                    "ttl {ttl} protocol {protocol}"
                );
            }
        }
    }

    #[test]
    fn hop_limit_decrement_stops_at_one() {
        assert_eq!(ipv6_decrement_hop_limit(0), Err(Reason::TtlExpired));
        assert_eq!(ipv6_decrement_hop_limit(1), Err(Reason::TtlExpired));
        assert_eq!(ipv6_decrement_hop_limit(2), Ok(1));
        assert_eq!(ipv6_decrement_hop_limit(255), Ok(254));
    }

    #[test]
    fn forwardable_checks_tags_and_mac() {
        let mac = [2, 0, 0, 0, 0, 1];
        let untagged = PacketMeta {
            l3_offset: ETH_HLEN,
            ..PacketMeta::default()
        };
        assert_eq!(forwardable(&untagged, &mac, &mac), Ok(()));
        assert_eq!(
            forwardable(&untagged, &[0xff; 6], &mac),
            Err(Reason::NotOurMac),
            "broadcast"
        );
        assert_eq!(
            forwardable(&untagged, &[2, 0, 0, 0, 0, 9], &mac),
            Err(Reason::NotOurMac),
            "another host's frame"
        );
        let tagged = PacketMeta {
            l3_offset: ETH_HLEN + 4,
            ..untagged
        };
        assert_eq!(forwardable(&tagged, &mac, &mac), Err(Reason::VlanTagged));
    }

    #[test]
    fn martian_v4_addresses_are_not_routed() {
        assert_eq!(routable_v4(198, 198), Ok(()));
        for (src, dst) in [(0, 198), (127, 198), (224, 198), (239, 198), (255, 198)] {
            assert_eq!(
                routable_v4(src, dst),
                Err(Reason::NotRoutable),
                "{src} -> {dst}"
            );
        }
        for dst in [0, 127] {
            assert_eq!(routable_v4(198, dst), Err(Reason::NotRoutable), "-> {dst}");
        }
    }

    #[test]
    fn link_local_and_special_v6_addresses_are_not_routed() {
        let a = |s: &str| s.parse::<core::net::Ipv6Addr>().expect("address").octets();
        assert_eq!(
            routable_v6(&a("2001:db8:1::2"), &a("2001:db8:ff::2")),
            Ok(())
        );
        // fec0::/10 is not link-local.
        assert_eq!(routable_v6(&a("fec0::1"), &a("2001:db8:ff::2")), Ok(()));
        for (src, dst) in [
            ("fe80::1", "2001:db8:ff::2"),
            ("2001:db8:1::2", "fe80::2"),
            ("febf::1", "2001:db8:ff::2"),
            ("ff02::1", "2001:db8:ff::2"),
            ("::", "2001:db8:ff::2"),
            ("::1", "2001:db8:ff::2"),
            ("2001:db8:1::2", "::1"),
        ] {
            assert_eq!(
                routable_v6(&a(src), &a(dst)),
                Err(Reason::NotRoutable),
                "{src} -> {dst}"
            );
        }
    }
}
