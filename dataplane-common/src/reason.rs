//! Every outcome that is not "passed or forwarded by policy", counted per interface.

/// Why a packet left the pipeline early, or was dropped by policy.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Shorter than an Ethernet header.
    TruncatedEthernet = 0,
    /// A VLAN tag cut short.
    TruncatedVlan = 1,
    /// More than [`crate::MAX_VLAN_TAGS`] VLAN tags.
    TooManyVlanTags = 2,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): handed to the kernel unclassified.
    NotIp = 3,
    /// IPv4 header (with its options) cut short.
    TruncatedIpv4 = 4,
    /// IPv4 version or IHL field invalid (IHL < 5).
    BadIpv4Header = 5,
    /// IPv6 fixed header cut short or version field invalid.
    TruncatedIpv6 = 6,
    /// IPv6 extension-header chain longer than we walk, or cut short.
    BadIpv6ExtensionChain = 7,
    /// IP total/payload length disagrees with the frame.
    BadIpLength = 8,
    /// TCP/UDP/ICMP header cut short.
    TruncatedL4 = 9,
    /// UDP 4791 without a whole RoCEv2 base transport header.
    TruncatedRoce = 10,
    /// No policy loaded yet: passed unclassified.
    NoPolicy = 11,
    /// A classifier table had no entry it should have had: passed (fail open).
    ClassifierMiss = 12,
    /// Dropped by a class action.
    PolicyDrop = 13,
    /// ECN action on a packet that is not ECN-capable: dropped.
    EcnNotCapable = 14,
    /// The packet could not be rewritten (header moved out of reach): passed unchanged.
    RewriteFailed = 15,
    /// Forwarding: the route is a blackhole.
    FibBlackhole = 16,
    /// Forwarding: the route is unreachable.
    FibUnreachable = 17,
    /// Forwarding: the route is prohibit.
    FibProhibit = 18,
    /// Forwarding: not a unicast route to forward on (local delivery, broadcast, multicast,
    /// no route at all): the kernel handles it.
    FibNotForwarded = 19,
    /// Forwarding: IP forwarding is disabled on the ingress interface (sysctl).
    FibForwardingDisabled = 20,
    /// Forwarding: the route needs encapsulation (lightweight tunnel) the helper does not do.
    FibUnsupported = 21,
    /// Forwarding: the next hop's link-layer address is not resolved yet; the kernel
    /// resolves it (ARP / neighbour discovery) and forwards this packet itself.
    FibNoNeighbour = 22,
    /// Forwarding: larger than the egress MTU; the kernel fragments or sends
    /// "packet too big".
    FibFragNeeded = 23,
    /// Forwarding: the route lookup failed in another way (an error or a result code this
    /// build does not know).
    FibOther = 24,
    /// Forwarding: TTL / hop limit would reach zero; the kernel sends ICMP time exceeded.
    TtlExpired = 25,
    /// Forwarding: the destination MAC is not the ingress interface's (broadcast,
    /// multicast, or another host's frame seen in promiscuous mode).
    NotOurMac = 26,
    /// Forwarding: VLAN-tagged frames are left to the kernel's VLAN devices.
    VlanTagged = 27,
    /// Forwarding: an address a router must not forward (loopback, link-local,
    /// unspecified, multicast or limited-broadcast source).
    NotRoutable = 28,
    /// Forwarding: the egress interface is not registered with the dataplane; the kernel
    /// forwards the packet.
    EgressNotRegistered = 29,
    /// Forwarding: the egress interface is missing from the redirect device map.
    RedirectFailed = 30,
    /// A per-CPU scratch map had no value (it always has one): passed (fail open).
    ScratchUnavailable = 31,
}

/// Number of [`Reason`] variants (the width of the per-interface reason counters).
pub const REASON_COUNT: usize = 32;

impl Reason {
    /// All variants, in index order.
    pub const ALL: [Reason; REASON_COUNT] = [
        Reason::TruncatedEthernet,
        Reason::TruncatedVlan,
        Reason::TooManyVlanTags,
        Reason::NotIp,
        Reason::TruncatedIpv4,
        Reason::BadIpv4Header,
        Reason::TruncatedIpv6,
        Reason::BadIpv6ExtensionChain,
        Reason::BadIpLength,
        Reason::TruncatedL4,
        Reason::TruncatedRoce,
        Reason::NoPolicy,
        Reason::ClassifierMiss,
        Reason::PolicyDrop,
        Reason::EcnNotCapable,
        Reason::RewriteFailed,
        Reason::FibBlackhole,
        Reason::FibUnreachable,
        Reason::FibProhibit,
        Reason::FibNotForwarded,
        Reason::FibForwardingDisabled,
        Reason::FibUnsupported,
        Reason::FibNoNeighbour,
        Reason::FibFragNeeded,
        Reason::FibOther,
        Reason::TtlExpired,
        Reason::NotOurMac,
        Reason::VlanTagged,
        Reason::NotRoutable,
        Reason::EgressNotRegistered,
        Reason::RedirectFailed,
        Reason::ScratchUnavailable,
    ];

    /// Metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::TruncatedEthernet => "truncated_ethernet",
            Reason::TruncatedVlan => "truncated_vlan",
            Reason::TooManyVlanTags => "too_many_vlan_tags",
            Reason::NotIp => "not_ip",
            Reason::TruncatedIpv4 => "truncated_ipv4",
            Reason::BadIpv4Header => "bad_ipv4_header",
            Reason::TruncatedIpv6 => "truncated_ipv6",
            Reason::BadIpv6ExtensionChain => "bad_ipv6_extension_chain",
            Reason::BadIpLength => "bad_ip_length",
            Reason::TruncatedL4 => "truncated_l4",
            Reason::TruncatedRoce => "truncated_roce",
            Reason::NoPolicy => "no_policy",
            Reason::ClassifierMiss => "classifier_miss",
            Reason::PolicyDrop => "policy_drop",
            Reason::EcnNotCapable => "ecn_not_capable",
            Reason::RewriteFailed => "rewrite_failed",
            Reason::FibBlackhole => "fib_blackhole",
            Reason::FibUnreachable => "fib_unreachable",
            Reason::FibProhibit => "fib_prohibit",
            Reason::FibNotForwarded => "fib_not_forwarded",
            Reason::FibForwardingDisabled => "fib_forwarding_disabled",
            Reason::FibUnsupported => "fib_unsupported",
            Reason::FibNoNeighbour => "fib_no_neighbour",
            Reason::FibFragNeeded => "fib_frag_needed",
            Reason::FibOther => "fib_other",
            Reason::TtlExpired => "ttl_expired",
            Reason::NotOurMac => "not_our_mac",
            Reason::VlanTagged => "vlan_tagged",
            Reason::NotRoutable => "not_routable",
            Reason::EgressNotRegistered => "egress_not_registered",
            Reason::RedirectFailed => "redirect_failed",
            Reason::ScratchUnavailable => "scratch_unavailable",
        }
    }

    /// A malformed frame: cut short or with an invalid header field. Not IP (`not_ip`) is
    /// ordinary traffic the dataplane does not classify, and the other outcomes come after
    /// a successful parse, so none of those are parse errors.
    pub const fn is_parse_error(self) -> bool {
        match self {
            Reason::TruncatedEthernet
            | Reason::TruncatedVlan
            | Reason::TooManyVlanTags
            | Reason::TruncatedIpv4
            | Reason::BadIpv4Header
            | Reason::TruncatedIpv6
            | Reason::BadIpv6ExtensionChain
            | Reason::BadIpLength
            | Reason::TruncatedL4
            | Reason::TruncatedRoce => true,
            Reason::NotIp
            | Reason::NoPolicy
            | Reason::ClassifierMiss
            | Reason::PolicyDrop
            | Reason::EcnNotCapable
            | Reason::RewriteFailed
            | Reason::FibBlackhole
            | Reason::FibUnreachable
            | Reason::FibProhibit
            | Reason::FibNotForwarded
            | Reason::FibForwardingDisabled
            | Reason::FibUnsupported
            | Reason::FibNoNeighbour
            | Reason::FibFragNeeded
            | Reason::FibOther
            | Reason::TtlExpired
            | Reason::NotOurMac
            | Reason::VlanTagged
            | Reason::NotRoutable
            | Reason::EgressNotRegistered
            | Reason::RedirectFailed
            | Reason::ScratchUnavailable => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_labels_are_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(!r.label().is_empty());
            for other in &Reason::ALL[..i] {
                assert_ne!(other.label(), r.label());
            }
        }
    }
}
