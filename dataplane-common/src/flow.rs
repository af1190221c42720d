//! What the kernel keeps per flow, beside the flow's cached class: TCP's highest sequence
//! (so a retransmission is told from new data) and the flow's own counters, which
//! `dataplane top` reads. A policy change starts every flow's entry afresh. Updated without atomics: a flow is steered to one CPU by RSS, and
//! a count lost to a rare race only blurs a display.

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
