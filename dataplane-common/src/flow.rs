//! What the kernel keeps per flow, beside the flow's cached class: TCP's highest sequence
//! (so a retransmission is told from new data), the flow's next hop (so a forwarded flow
//! skips the route lookup) and the flow's own counters, which `dataplane top` reads. A policy
//! change starts every flow's entry afresh. Updated without atomics: a flow is steered to one
//! CPU by RSS, and a count lost to a rare race only blurs a display.

/// Per-flow state, in each flow-cache entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Sequence number just past the highest TCP data the flow has sent (valid with
    /// [`FlowState::TCP_SEEN`]).
    pub tcp_high: u32,
    /// [`FlowState::TCP_SEEN`] | [`FlowState::RETURN_REGISTERED`].
    pub flags: u32,
    /// Packets the flow offered.
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
    /// Of those, packets dropped.
    pub dropped_packets: u32,
    /// Packets newly marked CE.
    pub marked_packets: u32,
    /// TCP retransmissions admitted on the repair allowance (see `policer::repair_limit`).
    pub repaired_packets: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// What the route lookup answered for the flow's last forwarded packet.
    pub next_hop: NextHop,
}

/// The route lookup's answer for one flow (`bpf_fib_lookup`: egress, MACs, MTU), reused
/// while nothing it depends on can have changed: the route generation (bumped by the daemon on
/// every route, rule, neighbour, address or interface change the kernel reports) is the one it
/// was looked up under, it is younger than [`NextHop::MAX_AGE_JIFFIES`] (a bound on staleness
/// while no daemon runs), the packet carries the DSCP it was looked up with (routing rules may
/// select on it) and fits the egress MTU (a larger one goes to the lookup, which hands it to
/// the kernel to fragment or answer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Route generation of the lookup.
    pub route_generation: u32,
    /// Egress interface; 0 while the flow has no next hop.
    pub egress_ifindex: u32,
    /// The egress interface's counter slot.
    pub egress_slot: u16,
    /// The egress MTU the lookup reported.
    pub mtu: u16,
    /// The DSCP (TOS without the ECN bits) of the lookup.
    pub dscp: u8,
    /// Padding, always zero.
    pub _pad: u8,
    /// Next hop's MAC.
    pub dst_mac: [u8; 6],
    /// Egress interface's MAC.
    pub src_mac: [u8; 6],
    /// Low 32 bits of `jiffies` at the lookup.
    pub looked_up: u32,
}

impl NextHop {
    /// Oldest next hop used without a new lookup, in jiffies: 0.25 s at HZ=1000, 1 s at
    /// HZ=250. Route changes are followed through the route generation within milliseconds;
    /// this bounds how long a flow could follow a stale route while no daemon listens.
    pub const MAX_AGE_JIFFIES: u32 = 256;

    /// Whether a packet of `tot_len` bytes (the lookup's measure: the IP packet) and TOS `tos`
    /// may be forwarded on this next hop at route generation `route_generation` and `jiffies`.
    #[inline(always)]
    pub fn usable(&self, route_generation: u32, jiffies: u32, tos: u8, tot_len: u16) -> bool {
        self.egress_ifindex != 0
            && self.route_generation == route_generation
            && jiffies.wrapping_sub(self.looked_up) < Self::MAX_AGE_JIFFIES
            && self.dscp == tos >> 2
            && tot_len <= self.mtu
    }
}

impl FlowState {
    /// `tcp_high` holds a sequence number.
    pub const TCP_SEEN: u32 = 1;
    /// The flow's reply direction was registered for window control (entries start afresh
    /// with each policy generation, and so does this).
    pub const RETURN_REGISTERED: u32 = 2;

    /// Notes a TCP segment whose data ends at `end`; true when the segment resends data the
    /// flow already sent (it ends at or before the highest end seen).
    #[inline(always)]
    pub fn note_tcp_data(&mut self, end: u32) -> bool {
        if self.flags & Self::TCP_SEEN == 0 {
            self.flags |= Self::TCP_SEEN;
            self.tcp_high = end;
            return false;
        }
        // Sequence space wraps: compare by signed distance (RFC 793's SEQ_GT).
        if (end.wrapping_sub(self.tcp_high) as i32) > 0 {
            self.tcp_high = end;
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop() -> NextHop {
        NextHop {
            route_generation: 7,
            egress_ifindex: 3,
            egress_slot: 2,
            mtu: 1500,
            dscp: 10,
            _pad: 0,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            looked_up: u32::MAX - 10,
        }
    }

    #[test]
    fn a_next_hop_serves_its_route_generation_dscp_and_mtu_while_young() {
        let h = hop();
        let tos = 10 << 2;
        assert!(h.usable(7, u32::MAX - 10, tos, 1500));
        assert!(
            h.usable(7, 100, tos | 0b11, 64),
            "jiffies wrap; ECN bits do not matter"
        );
        assert!(!h.usable(8, u32::MAX, tos, 64), "routes changed");
        assert!(
            !h.usable(7, u32::MAX, 0, 64),
            "another DSCP may route elsewhere"
        );
        assert!(
            !h.usable(7, u32::MAX, tos, 1501),
            "too large: the lookup decides"
        );
        let old = (u32::MAX - 10).wrapping_add(NextHop::MAX_AGE_JIFFIES);
        assert!(!h.usable(7, old, tos, 64), "too old");
        assert!(h.usable(7, old - 1, tos, 64));
        assert!(!NextHop::default().usable(0, 0, 0, 0), "no next hop yet");
    }

    #[test]
    fn first_segment_is_new_data() {
        let mut f = FlowState::default();
        assert!(!f.note_tcp_data(1000));
        assert_eq!(f.tcp_high, 1000);
    }

    #[test]
    fn resent_data_is_a_retransmission_and_new_data_is_not() {
        let mut f = FlowState::default();
        assert!(!f.note_tcp_data(1448));
        assert!(!f.note_tcp_data(2896));
        assert!(f.note_tcp_data(1448), "resent first segment");
        assert!(
            f.note_tcp_data(2896),
            "resent highest segment (tail loss probe)"
        );
        assert!(!f.note_tcp_data(4344));
        assert_eq!(f.tcp_high, 4344);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut f = FlowState::default();
        assert!(!f.note_tcp_data(u32::MAX - 100));
        assert!(!f.note_tcp_data(1348), "new data across the wrap");
        assert!(
            f.note_tcp_data(u32::MAX - 100),
            "old data from before the wrap"
        );
        assert_eq!(f.tcp_high, 1348);
    }
}
