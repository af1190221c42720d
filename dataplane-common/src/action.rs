//! What a class does to a packet of each colour: pass (optionally rewriting DSCP), drop, or
//! ECN-mark (set CE on ECN-capable packets, drop the rest).

/// The verdict part of an action.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Let the packet through.
    #[default]
    Pass = 0,
    /// Drop it.
    Drop = 1,
    /// Set CE on ECT(0)/ECT(1) packets and pass them; drop non-ECT packets.
    Ecn = 2,
}

/// "Leave the DSCP alone".
pub const KEEP_DSCP: u8 = 0xff;

/// An action for one colour.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColourAction {
    /// [`Verdict`] as a byte.
    pub verdict: u8,
    /// DSCP to write on packets that pass, or [`KEEP_DSCP`].
    pub dscp: u8,
}

impl ColourAction {
    /// Pass unchanged.
    pub const PASS: ColourAction = ColourAction {
        verdict: Verdict::Pass as u8,
        dscp: KEEP_DSCP,
    };
    /// Drop.
    pub const DROP: ColourAction = ColourAction {
        verdict: Verdict::Drop as u8,
        dscp: KEEP_DSCP,
    };
    /// ECN-mark.
    pub const ECN: ColourAction = ColourAction {
        verdict: Verdict::Ecn as u8,
        dscp: KEEP_DSCP,
    };

    /// Pass and rewrite the DSCP.
    pub const fn remark(dscp: u8) -> ColourAction {
        ColourAction {
            verdict: Verdict::Pass as u8,
            dscp,
        }
    }
}

/// ECN codepoint "Congestion Experienced".
pub const ECN_CE: u8 = 0b11;
const ECN_MASK: u8 = 0b11;

/// What applying an action to a packet with DS field `tos` comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Pass with this DS field (equal to the old one when nothing changes).
    Pass {
        /// The new DS field.
        tos: u8,
        /// CE was newly set.
        ecn_marked: bool,
        /// DSCP was changed.
        remarked: bool,
    },
    /// Dropped by policy.
    Drop,
    /// ECN action on a non-ECT packet: dropped.
    DropNotEct,
}

/// Applies `action` to a packet whose DS field is `tos`.
#[inline(always)]
pub const fn apply(action: ColourAction, tos: u8) -> Outcome {
    let mut new = tos;
    let mut ecn_marked = false;
    if action.verdict == Verdict::Drop as u8 {
        return Outcome::Drop;
    }
    if action.verdict == Verdict::Ecn as u8 {
        if tos & ECN_MASK == 0 {
            return Outcome::DropNotEct;
        }
        ecn_marked = tos & ECN_MASK != ECN_CE;
        new |= ECN_CE;
    }
    if action.dscp != KEEP_DSCP {
        new = (action.dscp << 2) | (new & ECN_MASK);
    }
    Outcome::Pass {
        tos: new,
        ecn_marked,
        remarked: new >> 2 != tos >> 2,
    }
}

/// Whether the DS field `tos` says the sender understands ECN (ECT(0), ECT(1) or CE).
#[inline(always)]
pub const fn is_ecn_capable(tos: u8) -> bool {
    tos & ECN_MASK != 0
}

/// An early congestion signal on top of an action's outcome: CE on a packet that passes
/// (the caller signals only ECN-capable packets this way; it drops the others).
#[inline(always)]
pub const fn mark_ce(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Pass {
            tos,
            ecn_marked,
            remarked,
        } if is_ecn_capable(tos) => Outcome::Pass {
            tos: tos | ECN_CE,
            ecn_marked: ecn_marked || tos & ECN_MASK != ECN_CE,
            remarked,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_mark_sets_ce_once_and_keeps_drops() {
        let pass = apply(ColourAction::remark(10), 0b10);
        assert_eq!(
            mark_ce(pass),
            Outcome::Pass {
                tos: (10 << 2) | ECN_CE,
                ecn_marked: true,
                remarked: true
            }
        );
        let ce = apply(ColourAction::PASS, ECN_CE);
        assert_eq!(mark_ce(ce), ce, "already CE: nothing new");
        assert_eq!(mark_ce(Outcome::Drop), Outcome::Drop);
        assert!(is_ecn_capable(0b01) && is_ecn_capable(0b10) && !is_ecn_capable(0xfc));
    }

    #[test]
    fn ecn_marks_capable_and_drops_others() {
        assert_eq!(apply(ColourAction::ECN, 0b1010_0000), Outcome::DropNotEct);
        assert_eq!(
            apply(ColourAction::ECN, 0b1010_0010),
            Outcome::Pass {
                tos: 0b1010_0011,
                ecn_marked: true,
                remarked: false
            }
        );
        assert_eq!(
            apply(ColourAction::ECN, 0b1010_0001),
            Outcome::Pass {
                tos: 0b1010_0011,
                ecn_marked: true,
                remarked: false
            }
        );
        assert_eq!(
            apply(ColourAction::ECN, 0b1010_0011),
            Outcome::Pass {
                tos: 0b1010_0011,
                ecn_marked: false,
                remarked: false
            },
            "already CE: nothing new"
        );
    }

    #[test]
    fn remark_keeps_ecn_bits() {
        assert_eq!(
            apply(ColourAction::remark(10), (46 << 2) | 0b10),
            Outcome::Pass {
                tos: (10 << 2) | 0b10,
                ecn_marked: false,
                remarked: true
            }
        );
        assert_eq!(
            apply(ColourAction::remark(10), 10 << 2),
            Outcome::Pass {
                tos: 10 << 2,
                ecn_marked: false,
                remarked: false
            }
        );
        assert_eq!(apply(ColourAction::DROP, 0), Outcome::Drop);
        assert_eq!(
            apply(ColourAction::PASS, 0xb8),
            Outcome::Pass {
                tos: 0xb8,
                ecn_marked: false,
                remarked: false
            }
        );
    }
}
