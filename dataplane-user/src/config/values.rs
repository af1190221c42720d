//! Parsers and printers of the values a rule holds: prefixes, port and opcode ranges,
//! protocols.

use std::net::IpAddr;

use dataplane_common::{
    classify::{mask, Prefix, Range},
    packet::{ipproto, Family},
    ROCE_OPCODE_CNP,
};

use super::schema::Scalar;

/// Largest port number.
pub(super) const MAX_PORT: u32 = u16::MAX as u32;
/// Largest IP protocol number and RoCE opcode.
pub(super) const MAX_BYTE: u32 = u8::MAX as u32;

/// Named RoCEv2 BTH opcode ranges (IBA transport type in the upper three bits).
pub(super) const ROCE_OPCODE_NAMES: [(&str, Range); 5] = [
    ("cnp", Range::one(ROCE_OPCODE_CNP as u32)),
    ("rc", Range { lo: 0x00, hi: 0x1f }),
    ("uc", Range { lo: 0x20, hi: 0x3f }),
    ("rd", Range { lo: 0x40, hi: 0x5f }),
    ("ud", Range { lo: 0x60, hi: 0x7f }),
];

/// Named IP protocols.
pub(super) const PROTOCOL_NAMES: [(&str, u8); 4] = [
    ("tcp", ipproto::TCP),
    ("udp", ipproto::UDP),
    ("icmp", ipproto::ICMP),
    ("icmpv6", ipproto::ICMPV6),
];

/// Parses "a.b.c.d/len", "x::/len" or a bare address (a host prefix).
pub(super) fn parse_prefix(s: &str) -> Result<Prefix, String> {
    let (addr_text, len_text) = match s.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (s.trim(), None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!("\"{addr_text}\" is not an IPv4 or IPv6 address (expected e.g. \"198.18.0.0/15\" or \"2001:db8::/32\")")
    })?;
    let (family, bytes, max_len) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (Family::V4, b, 32u8)
        }
        IpAddr::V6(a) => (Family::V6, a.octets(), 128u8),
    };
    let len = match len_text {
        None => max_len,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max_len)
            .ok_or_else(|| format!("prefix length \"{l}\" in \"{s}\" is not in 0..={max_len}"))?,
    };
    let masked = mask(&bytes, len);
    if masked != bytes {
        let network = Prefix {
            family,
            addr: masked,
            len,
        };
        return Err(format!(
            "\"{s}\" has host bits set; did you mean \"{}\"?",
            prefix_string(&network)
        ));
    }
    Ok(Prefix {
        family,
        addr: bytes,
        len,
    })
}

/// "198.18.0.0/15".
pub(super) fn prefix_string(p: &Prefix) -> String {
    let addr = match p.family {
        Family::V4 => IpAddr::from([p.addr[0], p.addr[1], p.addr[2], p.addr[3]]),
        Family::V6 => IpAddr::from(p.addr),
    };
    format!("{addr}/{}", p.len)
}

/// A number, decimal or "0x" hex.
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// An integer, or a string "n" or "lo-hi", within `0..=max`.
pub(super) fn parse_range(v: &Scalar, max: u32, what: &str) -> Result<Range, String> {
    let out_of_range = || format!("{v} is out of range: {what} is 0..={max}");
    let (lo, hi) = match v {
        Scalar::Int(i) => {
            let n = u32::try_from(*i).map_err(|_| out_of_range())?;
            (n, n)
        }
        Scalar::Str(s) => {
            let malformed = || format!("{v} is not {what} or a range like \"8000-8002\"");
            match s.split_once('-') {
                Some((l, h)) => (
                    parse_number(l).ok_or_else(malformed)?,
                    parse_number(h).ok_or_else(malformed)?,
                ),
                None => {
                    let n = parse_number(s).ok_or_else(malformed)?;
                    (n, n)
                }
            }
        }
    };
    if lo > max || hi > max {
        return Err(out_of_range());
    }
    if lo > hi {
        return Err(format!("{v} is an empty range: {lo} is above {hi}"));
    }
    Ok(Range { lo, hi })
}

/// "tcp", "udp", "icmp", "icmpv6" or a number, spelt exactly so: another case or surrounding
/// spaces are refused rather than read as something.
pub(super) fn parse_protocol(v: &Scalar) -> Result<u8, String> {
    let accepted = "expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\" (lowercase, no spaces) or a \
                    number 0..=255";
    let n = match v {
        Scalar::Int(i) => u32::try_from(*i).ok(),
        Scalar::Str(s) if s.trim() != s => None,
        Scalar::Str(s) => PROTOCOL_NAMES
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, p)| u32::from(*p))
            .or_else(|| parse_number(s)),
    };
    n.filter(|n| *n <= MAX_BYTE)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| format!("{v} is not a protocol; {accepted}"))
}

/// "tcp" for 6, "132" for SCTP.
pub(super) fn protocol_name(p: u8) -> String {
    PROTOCOL_NAMES
        .iter()
        .find(|(_, n)| *n == p)
        .map_or_else(|| p.to_string(), |(name, _)| (*name).to_string())
}

/// A RoCEv2 opcode name, number or range.
pub(super) fn parse_roce_opcode(v: &Scalar) -> Result<Range, String> {
    if let Scalar::Str(s) = v {
        if let Some((_, r)) = ROCE_OPCODE_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        {
            return Ok(*r);
        }
    }
    parse_range(v, MAX_BYTE, "an opcode").map_err(|r| {
        format!("{r}; expected \"cnp\", \"rc\", \"uc\", \"rd\", \"ud\", a number (\"0x81\") or a range (\"0x00-0x1f\")")
    })
}
