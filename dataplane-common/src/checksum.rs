//! Internet checksum helpers.

/// RFC 1624 eqn. 3: the IPv4 header checksum after one 16-bit header word changed from
/// `old` to `new` (all values in host order of the big-endian wire words).
#[inline(always)]
pub const fn replace_word(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check as u32 & 0xffff) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full RFC 1071 checksum of a header whose checksum field is zero.
    fn full(header: &[u8]) -> u16 {
        let mut sum: u32 = header
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut h = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0, 0, 198, 18, 0, 1, 198,
            19, 0, 2,
        ];
        let check = full(&h);
        for tos in 0..=255u8 {
            let old = u16::from_be_bytes([h[0], h[1]]);
            let mut h2 = h;
            h2[1] = tos;
            let new = u16::from_be_bytes([h2[0], h2[1]]);
            assert_eq!(replace_word(check, old, new), full(&h2), "tos {tos}");
        }
        h[1] = 0xff;
        assert_ne!(full(&h), check);
    }
}
