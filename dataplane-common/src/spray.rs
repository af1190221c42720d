//! Transports that spray one connection over many UDP source ports, and what names their
//! connections instead.
//!
//! RoCEv2 NICs take the UDP source port as ECMP entropy (multipath RoCE rotates it), and UET
//! (Ultra Ethernet Transport, UDP 4793) spreads the packets of one connection over entropy
//! values carried in the source port. Keyed on its 5-tuple, one such connection would be
//! hundreds of flows: it would churn the flow cache, multiply the flow count that fair
//! shares divide by, and spread over hundreds of `top` rows. So their flow key
//! ([`crate::maps::FlowKey::of`]) holds the connection the transport names in its own header
//! in place of the source port, and the source port, being entropy, is no classification
//! input either ([`crate::packet::PacketMeta::rule_src_port`]): a cached class must hold for
//! every packet its key stands for. Nothing in the pipeline rewrites ports: the entropy a
//! sender chose reaches the fabric as sent.
//!
//! - **RoCEv2** (UDP destination port 4791): the destination QP of the base transport header
//!   (IBA 9.2; bytes 5..8 of the BTH). Each direction of a reliable connection is sent to its
//!   peer's QP, and a CNP to the QP of the sender it slows down, so each is one flow. Meta's
//!   RoCE fabric (SIGCOMM 2024) hashes on the same field for the same reason. The BTH opcode
//!   stays in the key (rules match on it: a CNP and the data of one QP keep their classes).
//! - **UET** (UDP destination port 4793): the source PDC id of the packet delivery (PDS)
//!   header; see [`uet_connection`] for the offsets and why this one.

use crate::{
    packet::PacketBytes,
    wire::{
        ROCE_BTH_DEST_QP_OFFSET, UET_PDS_PDC_HLEN, UET_PDS_SPDCID_OFFSET, UET_TSS_HLEN,
        UET_TSS_SSI_LEN,
    },
};

/// The connection of a UET packet without a PDC (RUDI and UUD are connectionless): its
/// addresses alone name it. Outside the 16 bits of a PDC id, so never a PDC's.
pub const UET_CONNECTIONLESS: u32 = 1 << 16;

/// PDS types (the prologue's upper five bits; UEC 1.0.1, as Wireshark's dissector lists them).
mod pds_type {
    /// Not a PDS header: the transport security header (TSS) comes first.
    pub const TSS: u8 = 1;
    /// Reliable unordered delivery request.
    pub const RUD_REQ: u8 = 2;
    /// Reliable ordered delivery request.
    pub const ROD_REQ: u8 = 3;
    /// Reliable unordered delivery for idempotent operations: request.
    pub const RUDI_REQ: u8 = 4;
    /// RUDI response.
    pub const RUDI_RESP: u8 = 5;
    /// Unreliable unordered delivery request.
    pub const UUD_REQ: u8 = 6;
    /// ACK (the first of ACK, ACK_CC, ACK_CCX, NACK, control, NACK_CCX).
    pub const ACK: u8 = 7;
    /// ROD request with congestion-control state, the last type with a PDC.
    pub const ROD_CC_REQ: u8 = 14;
}

/// Bytes of the fixed PDS header of the connectionless types: RUDI (prologue, reserved,
/// packet id) and UUD (prologue, reserved).
const UET_PDS_RUDI_HLEN: usize = 8;
const UET_PDS_UUD_HLEN: usize = 4;
/// The TSS header's SP bit (an SSI word follows the first one), in its first byte.
const UET_TSS_SP: u8 = 0x04;

/// The connection a RoCEv2 packet names: the destination QP, from the first eight bytes of
/// its BTH (the caller checked the whole BTH lies inside the packet).
#[inline(always)]
pub fn roce_connection(bth: [u8; 8]) -> u32 {
    let qp = &bth[ROCE_BTH_DEST_QP_OFFSET..ROCE_BTH_DEST_QP_OFFSET + 3];
    u32::from(qp[0]) << 16 | u32::from(qp[1]) << 8 | u32::from(qp[2])
}

/// The connection a UET packet names, from the UDP payload at `start` of an IP packet that
/// ends at `end`; `None` when the header is cut short (by the packet, not only the frame)
/// or of a reserved type: the packet is then keyed on its 5-tuple (and counted), never
/// dropped.
///
/// Offsets used: the UEC 1.0 specification's own text was not available here; these follow
/// Wireshark's UET dissector (`epan/dissectors/packet-uet.c`, written against
/// UE-Specification-1.0.1), checked against the PDS field list Ixia's UET templates carry:
///
/// - Over UDP 4793 the PDS header starts the UDP payload (the 4-byte entropy header exists
///   only for UET directly over IP; over UDP the source port is the entropy).
/// - Its 2-byte prologue: type (upper 5 bits), next header or control type (4 bits), flags
///   (7 bits). Type 1 is instead the TSS (security) header: 12 bytes, 16 when its SP bit
///   (0x04 of its first byte) is set; the PDS header follows it in the clear.
/// - Every type with a PDC (RUD and ROD requests with or without CC state, ACK, ACK_CC,
///   ACK_CCX, NACK, NACK_CCX, control) has, after the prologue, 2 + 4 bytes of
///   type-specific fields (PSN offset and PSN, NACK code and PSN, ...), then the source PDC
///   id at bytes 8..10 and the destination PDC id at bytes 10..12. In a request or control
///   packet with SYN set, bytes 10..12 carry the PDC mode and PSN offset instead: the target
///   has not assigned its PDC yet.
/// - RUDI and UUD are connectionless: no PDC id; their key is the address pair
///   ([`UET_CONNECTIONLESS`]).
///
/// The key takes the source PDC id alone: it names the PDC at its sender, whose address is
/// in the key too, and it is there from the connection's first packet, where the
/// destination PDC id is missing (keyed on both, a connection's SYN packets would be another
/// flow than the rest). Each direction of a PDC is one flow, as each direction of a RoCE
/// connection is.
#[inline(always)]
pub fn uet_connection<P: PacketBytes + ?Sized>(pkt: &P, start: usize, end: usize) -> Option<u32> {
    let [first] = pkt.bytes::<1>(start)?;
    let (pds, kind) = if first >> 3 == pds_type::TSS {
        let ssi = if first & UET_TSS_SP != 0 {
            UET_TSS_SSI_LEN
        } else {
            0
        };
        let pds = start + UET_TSS_HLEN + ssi;
        let [b] = pkt.bytes::<1>(pds)?;
        (pds, b >> 3)
    } else {
        (start, first >> 3)
    };
    let (header_len, connection) = match kind {
        pds_type::RUD_REQ | pds_type::ROD_REQ | pds_type::ACK..=pds_type::ROD_CC_REQ => {
            let h: [u8; UET_PDS_PDC_HLEN] = pkt.bytes(pds)?;
            let at = UET_PDS_SPDCID_OFFSET;
            (
                UET_PDS_PDC_HLEN,
                u32::from(u16::from_be_bytes([h[at], h[at + 1]])),
            )
        }
        pds_type::RUDI_REQ | pds_type::RUDI_RESP => (UET_PDS_RUDI_HLEN, UET_CONNECTIONLESS),
        pds_type::UUD_REQ => (UET_PDS_UUD_HLEN, UET_CONNECTIONLESS),
        _ => return None,
    };
    // The whole header inside the IP packet (Ethernet padding is not a header).
    (pds + header_len <= end).then_some(connection)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// A PDS header of `kind` with flags `flags` and source PDC id `spdcid`, destination
    /// PDC id `dpdcid`.
    fn pds(kind: u8, flags: u8, spdcid: u16, dpdcid: u16) -> Vec<u8> {
        let prologue = u16::from(kind) << 11 | u16::from(flags & 0x7f);
        let mut h = Vec::new();
        h.extend_from_slice(&prologue.to_be_bytes());
        h.extend_from_slice(&[0xff, 0xfe]); // clear PSN offset / ACK PSN offset
        h.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // PSN
        h.extend_from_slice(&spdcid.to_be_bytes());
        h.extend_from_slice(&dpdcid.to_be_bytes());
        h
    }

    fn key(payload: &[u8]) -> Option<u32> {
        uet_connection(payload, 0, payload.len())
    }

    #[test]
    fn the_destination_qp_names_a_roce_connection() {
        let bth = [0x0a, 0x40, 0xff, 0xff, 0x00, 0xab, 0xcd, 0xef];
        assert_eq!(roce_connection(bth), 0x00ab_cdef);
        let mut other = bth;
        other[4] = 0xff; // the reserved byte before the QP (FECN/BECN live there)
        other[0] = 0x81; // a CNP to the same QP
        assert_eq!(roce_connection(other), 0x00ab_cdef);
    }

    #[test]
    fn every_pdc_type_is_keyed_on_its_source_pdc_id() {
        for kind in [2, 3, 7, 8, 9, 10, 11, 12, 13, 14] {
            let mut p = pds(kind, 0, 0x1234, 0x5678);
            p.extend_from_slice(&[0xaa; 16]); // CC state, SES header, data
            assert_eq!(key(&p), Some(0x1234), "type {kind}");
        }
    }

    #[test]
    fn a_syn_packet_and_the_rest_of_its_connection_share_a_key() {
        const SYN: u8 = 0x04;
        // With SYN the destination PDC id's bytes hold the PDC mode and PSN offset.
        let syn = pds(2, SYN, 77, 0x8003);
        let established = pds(2, 0, 77, 9);
        assert_eq!(key(&syn), key(&established));
        assert_ne!(key(&pds(2, 0, 78, 9)), key(&established), "another PDC");
    }

    #[test]
    fn connectionless_types_are_keyed_on_addresses_alone() {
        let rudi = [4 << 3, 0, 0, 0, 0, 0, 0, 1];
        let uud = [6 << 3, 0, 0, 0];
        assert_eq!(key(&rudi), Some(UET_CONNECTIONLESS));
        assert_eq!(key(&uud), Some(UET_CONNECTIONLESS));
        assert_eq!(key(&rudi[..7]), None, "a RUDI header cut short");
        assert_eq!(key(&uud[..3]), None, "a UUD header cut short");
    }

    #[test]
    fn a_tss_header_is_skipped_with_and_without_its_ssi() {
        let inner = pds(7, 0, 0x0bad, 1);
        for sp in [false, true] {
            let mut p = Vec::from([1 << 3 | if sp { UET_TSS_SP } else { 0 }, 0, 0, 9]);
            if sp {
                p.extend_from_slice(&[0, 0, 0, 5]); // SSI
            }
            p.extend_from_slice(&[0; 8]); // TSC
            p.extend_from_slice(&inner);
            assert_eq!(key(&p), Some(0x0bad), "SP {sp}");
            assert_eq!(key(&p[..p.len() - 1]), None, "SP {sp}, PDS cut short");
        }
    }

    #[test]
    fn reserved_types_and_short_headers_fall_back() {
        for kind in [0, 15, 16, 31] {
            assert_eq!(key(&pds(kind, 0, 1, 2)), None, "type {kind}");
        }
        let p = pds(2, 0, 1, 2);
        for len in 0..p.len() {
            assert_eq!(key(&p[..len]), None, "{len} bytes");
        }
        // Bytes past the IP packet's end (Ethernet padding) are no header.
        assert_eq!(uet_connection(&p[..], 0, p.len() - 1), None);
        assert_eq!(uet_connection(&p[..], 0, p.len()), Some(1));
        // The header may start anywhere in the frame.
        let mut framed = Vec::from([0u8; 42]);
        framed.extend_from_slice(&p);
        assert_eq!(uet_connection(&framed[..], 42, framed.len()), Some(1));
    }
}
