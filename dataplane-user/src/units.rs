//! Human units for rates and sizes: parsing what people write in a policy file ("40Gbit",
//! "4MiB") into bytes, and formatting numbers back for the CLI ("40Gbit", "4MiB", "12.3 Mpps").
//!
//! Parsing is exact: the number is read as a decimal fraction and scaled with integer
//! arithmetic, then rounded to the nearest byte. Rates use SI prefixes (1 Gbit = 10^9 bits =
//! 125 000 000 bytes); sizes take both binary (KiB, MiB, ...) and SI (kB, MB, ...) prefixes.

/// What a rate may look like, quoted in every rate error.
pub const RATE_HELP: &str = "a rate is a positive number with a bit unit (bit, kbit, Mbit, Gbit, \
     Tbit; also written bps/Mbps/Gbps or bit/s) or a byte unit (B/s, kB/s, MB/s, GB/s, TB/s, \
     KiB/s, MiB/s, GiB/s, TiB/s; also Bps/MBps/GBps), e.g. \"40Gbit\" or \"1.5Gbit\"";

/// What a size may look like, quoted in every size error.
pub const SIZE_HELP: &str = "a size is a positive number of bytes, optionally with a unit \
     (B; KiB, MiB, GiB, TiB = powers of 1024; kB, MB, GB, TB = powers of 1000), \
     e.g. \"4MiB\", \"1500B\" or \"1500\"";

/// Why a rate or size could not be parsed. Every message says what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Nothing but whitespace.
    #[error("empty value; {help}")]
    Empty {
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
    /// The text does not start with a plain decimal number.
    #[error("`{input}` is not a number with a unit; {help}")]
    Malformed {
        /// The text as given.
        input: String,
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
    /// A minus sign.
    #[error("`{input}` is negative; {help}")]
    Negative {
        /// The text as given.
        input: String,
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
    /// A rate without a unit (bits or bytes would be a guess).
    #[error("`{input}` has no unit; {help}")]
    MissingUnit {
        /// The text as given.
        input: String,
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
    /// A unit we do not know, or one that is ambiguous.
    #[error("`{input}`: unknown unit `{unit}`; {help}")]
    UnknownUnit {
        /// The text as given.
        input: String,
        /// The unit part.
        unit: String,
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
    /// Zero, or so small it rounds to zero bytes.
    #[error("`{input}` is zero or rounds to zero bytes; {help}")]
    Zero {
        /// The text as given.
        input: String,
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
    /// More than 2^64 - 1 bytes (per second).
    #[error("`{input}` is too large (more than 2^64-1 bytes); {help}")]
    Overflow {
        /// The text as given.
        input: String,
        /// [`RATE_HELP`] or [`SIZE_HELP`].
        help: &'static str,
    },
}

/// A multiplier from "one unit" to bytes, as a fraction `num / den`.
#[derive(Clone, Copy)]
struct Scale {
    num: u128,
    den: u128,
}

const BITS_PER_BYTE: u128 = 8;
const KILO: u128 = 1_000;
const KIBI: u128 = 1_024;
/// Decimals kept by [`format_rate`] and [`format_bytes`].
const FORMAT_DECIMALS: u32 = 3;
/// Sizes below this many bytes that no unit shows exactly are printed as plain bytes.
const PLAIN_BYTES_BELOW: u64 = 100_000;

/// SI prefix letter (either case, as `tc` accepts "mbit") to its multiplier.
fn si_prefix(p: &str) -> Option<u128> {
    match p {
        "" => Some(1),
        "k" | "K" => Some(KILO),
        "m" | "M" => Some(KILO.pow(2)),
        "g" | "G" => Some(KILO.pow(3)),
        "t" | "T" => Some(KILO.pow(4)),
        _ => None,
    }
}

/// Binary prefix ("Ki", "Mi", ..., any case) to its multiplier.
fn binary_prefix(p: &str) -> Option<u128> {
    match p.to_ascii_lowercase().as_str() {
        "ki" => Some(KIBI),
        "mi" => Some(KIBI.pow(2)),
        "gi" => Some(KIBI.pow(3)),
        "ti" => Some(KIBI.pow(4)),
        _ => None,
    }
}

/// A rate unit to bytes per second per unit.
fn rate_scale(unit: &str) -> Option<Scale> {
    for suffix in ["bit/s", "bit", "bps"] {
        if let Some(p) = unit.strip_suffix(suffix) {
            return si_prefix(p).map(|num| Scale {
                num,
                den: BITS_PER_BYTE,
            });
        }
    }
    for suffix in ["B/s", "Bps"] {
        if let Some(p) = unit.strip_suffix(suffix) {
            return si_prefix(p)
                .or_else(|| binary_prefix(p))
                .map(|num| Scale { num, den: 1 });
        }
    }
    None
}

/// A size unit to bytes per unit.
fn size_scale(unit: &str) -> Option<Scale> {
    let num = match unit {
        "" | "B" => Some(1),
        "kB" | "KB" => Some(KILO),
        "MB" => Some(KILO.pow(2)),
        "GB" => Some(KILO.pow(3)),
        "TB" => Some(KILO.pow(4)),
        _ => match unit.strip_suffix('B').or_else(|| unit.strip_suffix('b')) {
            Some(p) => binary_prefix(p),
            None => None,
        },
    };
    num.map(|num| Scale { num, den: 1 })
}

/// A decimal number split off the front of a value: `mantissa / 10^decimals`, and the rest.
struct Number<'a> {
    mantissa: u128,
    decimals: u32,
    unit: &'a str,
}

/// Reads `digits[.digits]` (with `_` allowed between digits) off the front of `s`.
fn split_number<'a>(s: &'a str, help: &'static str) -> Result<Number<'a>, UnitError> {
    let malformed = || UnitError::Malformed {
        input: s.to_string(),
        help,
    };
    let overflow = || UnitError::Overflow {
        input: s.to_string(),
        help,
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let valid = |part: &str| part.starts_with(|c: char| c.is_ascii_digit()) && !part.contains('.');
    if !valid(whole) || frac.is_some_and(|f| !valid(f)) {
        return Err(malformed());
    }
    let mut mantissa: u128 = 0;
    let mut decimals: u32 = 0;
    let frac_digits = frac.unwrap_or("");
    for (i, c) in whole.chars().chain(frac_digits.chars()).enumerate() {
        let Some(d) = c.to_digit(10) else { continue };
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d)))
            .ok_or_else(overflow)?;
        if i >= whole.len() {
            decimals += 1;
        }
    }
    Ok(Number {
        mantissa,
        decimals,
        unit: unit.trim(),
    })
}

/// Scales `n` by `scale` to whole bytes, rounding half up.
fn to_bytes(n: &Number, scale: Scale, input: &str, help: &'static str) -> Result<u64, UnitError> {
    let overflow = || UnitError::Overflow {
        input: input.to_string(),
        help,
    };
    let num = n.mantissa.checked_mul(scale.num).ok_or_else(overflow)?;
    let den = 10u128
        .checked_pow(n.decimals)
        .and_then(|p| p.checked_mul(scale.den))
        .ok_or_else(overflow)?;
    let bytes = (num / den) + u128::from(num % den >= den - den / 2);
    let bytes = u64::try_from(bytes).map_err(|_| overflow())?;
    if bytes == 0 {
        return Err(UnitError::Zero {
            input: input.to_string(),
            help,
        });
    }
    Ok(bytes)
}

/// Trims `input` and rejects empty and negative values.
fn prepare<'a>(input: &'a str, help: &'static str) -> Result<&'a str, UnitError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(UnitError::Empty { help });
    }
    if s.starts_with('-') {
        return Err(UnitError::Negative {
            input: s.to_string(),
            help,
        });
    }
    Ok(s)
}

/// Parses a rate ("40Gbit", "1.5Gbit", "100Mbps", "5GB/s") into bytes per second.
///
/// Bit units use SI prefixes and are rounded to the nearest byte per second; a rate must
/// have a unit and must come to at least one byte per second.
pub fn parse_rate(input: &str) -> Result<u64, UnitError> {
    let s = prepare(input, RATE_HELP)?;
    let n = split_number(s, RATE_HELP)?;
    if n.unit.is_empty() {
        return Err(UnitError::MissingUnit {
            input: s.to_string(),
            help: RATE_HELP,
        });
    }
    let scale = rate_scale(n.unit).ok_or_else(|| UnitError::UnknownUnit {
        input: s.to_string(),
        unit: n.unit.to_string(),
        help: RATE_HELP,
    })?;
    to_bytes(&n, scale, s, RATE_HELP)
}

/// What a duration looks like.
pub const DURATION_HELP: &str = "a duration is a positive number with a unit (ns, us, ms, s), \
e.g. \"500us\" or \"2ms\"";

/// Parses a duration ("500us", "2ms", "1.5ms", "1s") into nanoseconds; a unit is required.
pub fn parse_duration_ns(input: &str) -> Result<u64, UnitError> {
    let s = prepare(input, DURATION_HELP)?;
    let n = split_number(s, DURATION_HELP)?;
    if n.unit.is_empty() {
        return Err(UnitError::MissingUnit {
            input: s.to_string(),
            help: DURATION_HELP,
        });
    }
    let ns_per_unit = match n.unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        unit => {
            return Err(UnitError::UnknownUnit {
                input: s.to_string(),
                unit: unit.to_string(),
                help: DURATION_HELP,
            })
        }
    };
    to_bytes(
        &n,
        Scale {
            num: ns_per_unit,
            den: 1,
        },
        s,
        DURATION_HELP,
    )
}

/// Formats nanoseconds exactly in the largest of ms, us, ns that divides them: "2ms", "500us".
pub fn format_duration_ns(ns: u64) -> String {
    if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// Parses a size ("4MiB", "64KiB", "1500B", "1500", "2MB") into bytes.
///
/// A bare number is bytes. Bare prefixes ("64K") are rejected as ambiguous between 1000 and
/// 1024; write "64KiB" or "64kB".
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let s = prepare(input, SIZE_HELP)?;
    let n = split_number(s, SIZE_HELP)?;
    let scale = size_scale(n.unit).ok_or_else(|| UnitError::UnknownUnit {
        input: s.to_string(),
        unit: n.unit.to_string(),
        help: SIZE_HELP,
    })?;
    to_bytes(&n, scale, s, SIZE_HELP)
}

/// `value / unit` with [`FORMAT_DECIMALS`] decimals, rounded, trailing zeros trimmed.
fn decimal(value: u128, unit: u128) -> String {
    let thousandths = rounded_thousandths(value, unit);
    let per = 10u128.pow(FORMAT_DECIMALS);
    let (whole, frac) = (thousandths / per, thousandths % per);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = FORMAT_DECIMALS as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// `value / unit` in thousandths, rounded half up.
fn rounded_thousandths(value: u128, unit: u128) -> u128 {
    let scaled = value * 10u128.pow(FORMAT_DECIMALS);
    (scaled + unit / 2) / unit
}

/// Whether `value / unit` has at most [`FORMAT_DECIMALS`] decimals.
fn exact_in(value: u128, unit: u128) -> bool {
    (value * 10u128.pow(FORMAT_DECIMALS)).is_multiple_of(unit)
}

/// Formats `value` in the largest of `units` (largest first) it reaches, with up to three
/// decimals; a value that would round up to 1000 of one unit moves to the next.
fn format_scaled(value: u128, units: &[(u128, &str)], carry: u128) -> String {
    let per = 10u128.pow(FORMAT_DECIMALS);
    for (i, &(unit, name)) in units.iter().enumerate() {
        if value < unit {
            continue;
        }
        if i > 0 && rounded_thousandths(value, unit) >= carry * per {
            let (bigger, bigger_name) = units[i - 1];
            return format!("{}{bigger_name}", decimal(value, bigger));
        }
        return format!("{}{name}", decimal(value, unit));
    }
    let (unit, name) = units[units.len() - 1];
    format!("{}{name}", decimal(value, unit))
}

/// Bit-rate units, largest first.
const RATE_UNITS: [(u128, &str); 5] = [
    (1_000_000_000_000, "Tbit"),
    (1_000_000_000, "Gbit"),
    (1_000_000, "Mbit"),
    (1_000, "kbit"),
    (1, "bit"),
];

/// Formats bytes per second as a bit rate: "40Gbit", "1.5Gbit", "800bit".
///
/// Up to three decimals in the largest unit reached; exact (and so [`parse_rate`] gives the
/// same number back) whenever the rate has at most three decimals in that unit, else within
/// 0.05%.
pub fn format_rate(bytes_per_sec: u64) -> String {
    let bits = u128::from(bytes_per_sec) * BITS_PER_BYTE;
    format_scaled(bits, &RATE_UNITS, KILO)
}

/// Binary size units, largest first.
const BINARY_SIZE_UNITS: [(u128, &str); 5] = [
    (1 << 40, "TiB"),
    (1 << 30, "GiB"),
    (1 << 20, "MiB"),
    (1 << 10, "KiB"),
    (1, "B"),
];

/// SI size units, largest first.
const SI_SIZE_UNITS: [(u128, &str); 5] = [
    (1_000_000_000_000, "TB"),
    (1_000_000_000, "GB"),
    (1_000_000, "MB"),
    (1_000, "kB"),
    (1, "B"),
];

/// The largest of `units` not above `value`.
fn largest_unit(value: u128, units: &[(u128, &'static str)]) -> (u128, &'static str) {
    units
        .iter()
        .copied()
        .find(|&(u, _)| u <= value)
        .unwrap_or(units[units.len() - 1])
}

/// Formats a size: "4MiB", "1.5MiB", "1500B", "50MB".
///
/// Prefers a binary unit that shows the size exactly with up to three decimals, then plain
/// bytes below 100 000, then an exact SI unit; otherwise the binary unit rounded to three
/// decimals (within 0.05%). Every exact form parses back to the same number with
/// [`parse_size`].
pub fn format_bytes(bytes: u64) -> String {
    let value = u128::from(bytes);
    let (unit, name) = largest_unit(value, &BINARY_SIZE_UNITS);
    if exact_in(value, unit) {
        return format!("{}{name}", decimal(value, unit));
    }
    if bytes < PLAIN_BYTES_BELOW {
        return format!("{bytes}B");
    }
    let (si_unit, si_name) = largest_unit(value, &SI_SIZE_UNITS);
    if exact_in(value, si_unit) {
        return format!("{}{si_name}", decimal(value, si_unit));
    }
    format_scaled(value, &BINARY_SIZE_UNITS, KIBI)
}

/// Packet-rate units, largest first.
const PPS_UNITS: [(f64, &str); 4] = [(1e9, "Gpps"), (1e6, "Mpps"), (1e3, "kpps"), (1.0, "pps")];
/// Significant digits [`format_pps`] shows.
const PPS_SIGNIFICANT_DIGITS: i32 = 3;

/// Formats a packet rate with three significant digits: "12.3 Mpps", "950 pps", "1.00 kpps".
pub fn format_pps(pps: f64) -> String {
    if !pps.is_finite() {
        return format!("{pps} pps");
    }
    if pps == 0.0 {
        return "0 pps".to_string();
    }
    // Round to three significant digits first so 999.96 kpps becomes 1.00 Mpps.
    let magnitude = pps.abs().log10().floor() as i32;
    let step = 10f64.powi(magnitude - (PPS_SIGNIFICANT_DIGITS - 1));
    let rounded = (pps / step).round() * step;
    let (unit, name) = PPS_UNITS
        .iter()
        .copied()
        .find(|&(u, _)| rounded.abs() >= u * (1.0 - 1e-9))
        .unwrap_or(PPS_UNITS[PPS_UNITS.len() - 1]);
    let v = rounded / unit;
    let decimals = match v.abs() {
        a if a < 10.0 - 1e-9 => 2,
        a if a < 100.0 - 1e-9 => 1,
        _ => 0,
    };
    format!("{v:.decimals$} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_exactly() {
        assert_eq!(parse_duration_ns("500us"), Ok(500_000));
        assert_eq!(parse_duration_ns("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_duration_ns("2s"), Ok(2_000_000_000));
        assert_eq!(parse_duration_ns(" 7ns "), Ok(7));
        assert!(matches!(
            parse_duration_ns("5"),
            Err(UnitError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration_ns("5m"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration_ns("-1ms"),
            Err(UnitError::Negative { .. })
        ));
        for ns in [1, 999, 1_000, 1_500_000, 3_000_000_000] {
            assert_eq!(parse_duration_ns(&format_duration_ns(ns)), Ok(ns));
        }
    }
    use proptest::prelude::*;

    #[test]
    fn parses_bit_rates_with_si_prefixes() {
        assert_eq!(parse_rate("40Gbit"), Ok(5_000_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("100Mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(187_500_000));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("500Kbit"), Ok(62_500));
        assert_eq!(parse_rate("10bit"), Ok(1), "1.25 bytes/s rounds to 1");
        assert_eq!(parse_rate("12bit"), Ok(2), "1.5 rounds half up");
        assert_eq!(parse_rate("1Tbit"), Ok(125_000_000_000));
        assert_eq!(
            parse_rate("100mbit"),
            Ok(12_500_000),
            "tc's lowercase spelling"
        );
        assert_eq!(parse_rate(" 40 Gbit "), Ok(5_000_000_000));
        assert_eq!(parse_rate("1_000Mbit"), Ok(125_000_000));
    }

    #[test]
    fn parses_bps_and_byte_rate_spellings() {
        assert_eq!(parse_rate("40Gbps"), Ok(5_000_000_000));
        assert_eq!(parse_rate("100Mbps"), Ok(12_500_000));
        assert_eq!(parse_rate("10Gbit/s"), Ok(1_250_000_000));
        assert_eq!(parse_rate("5GB/s"), Ok(5_000_000_000));
        assert_eq!(parse_rate("5GBps"), Ok(5_000_000_000), "capital B is bytes");
        assert_eq!(parse_rate("1MiB/s"), Ok(1_048_576));
        assert_eq!(parse_rate("800B/s"), Ok(800));
    }

    #[test]
    fn rejects_bad_rates_saying_what_is_accepted() {
        for bad in [
            "",
            "  ",
            "-1Gbit",
            "0Gbit",
            "0.0001bit",
            "Gbit",
            "fast",
            "1.Gbit",
            ".5Gbit",
            "1.2.3Gbit",
            "40",
            "40Gb",
            "40Gbitz",
            "40 G bit",
            "1e9bit",
        ] {
            let e = parse_rate(bad).expect_err(bad);
            assert!(e.to_string().contains("a rate is"), "{bad}: {e}");
        }
        assert!(matches!(
            parse_rate("-1Gbit"),
            Err(UnitError::Negative { .. })
        ));
        assert!(matches!(parse_rate("0Gbit"), Err(UnitError::Zero { .. })));
        assert!(matches!(
            parse_rate("40"),
            Err(UnitError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_rate("40Gb"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_rate("200000000Tbit"),
            Err(UnitError::Overflow { .. })
        ));
        assert!(matches!(
            parse_rate("999999999999999999999999999999999999999999Tbit"),
            Err(UnitError::Overflow { .. })
        ));
    }

    #[test]
    fn parses_sizes_binary_and_si() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("1500B"), Ok(1500));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
    }

    #[test]
    fn rejects_bad_sizes_saying_what_is_accepted() {
        for bad in [
            "",
            "-4MiB",
            "0",
            "0MiB",
            "64K",
            "4M",
            "4Mb",
            "lots",
            "4 MiB extra",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.to_string().contains("a size is"), "{bad}: {e}");
        }
        assert!(matches!(
            parse_size("64K"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("20000000TiB"),
            Err(UnitError::Overflow { .. })
        ));
    }

    #[test]
    fn formats_rates() {
        assert_eq!(format_rate(5_000_000_000), "40Gbit");
        assert_eq!(format_rate(187_500_000), "1.5Gbit");
        assert_eq!(format_rate(12_500_000), "100Mbit");
        assert_eq!(format_rate(62_500), "500kbit");
        assert_eq!(format_rate(1), "8bit");
        assert_eq!(format_rate(0), "0bit");
        assert_eq!(format_rate(125_000_000_000), "1Tbit");
        assert_eq!(
            format_rate(124_999_999),
            "1Gbit",
            "999.999992 Mbit rounds up a unit"
        );
        assert_eq!(format_rate(123_456_789), "987.654Mbit");
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_bytes(4 << 20), "4MiB");
        assert_eq!(format_bytes(3 << 19), "1.5MiB");
        assert_eq!(format_bytes(64 << 10), "64KiB");
        assert_eq!(format_bytes(1500), "1500B");
        assert_eq!(format_bytes(2_000_000), "2MB");
        assert_eq!(format_bytes(50_000_000), "50MB");
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(100), "100B");
        assert_eq!(format_bytes((1 << 30) - 1), "1GiB", "rounds up a unit");
        assert_eq!(format_bytes(123_456_789), "117.738MiB");
    }

    #[test]
    fn formats_packet_rates() {
        assert_eq!(format_pps(12_300_000.0), "12.3 Mpps");
        assert_eq!(format_pps(12_345_678.0), "12.3 Mpps");
        assert_eq!(format_pps(950.0), "950 pps");
        assert_eq!(format_pps(999_960.0), "1.00 Mpps");
        assert_eq!(format_pps(148_809_523.0), "149 Mpps");
        assert_eq!(format_pps(1_500.0), "1.50 kpps");
        assert_eq!(format_pps(2.0e9), "2.00 Gpps");
        assert_eq!(format_pps(0.0), "0 pps");
        assert_eq!(format_pps(0.5), "0.50 pps");
    }

    proptest! {
        #[test]
        fn rate_format_parse_is_close(bytes in 1u64..=u64::MAX / 16) {
            let text = format_rate(bytes);
            let back = parse_rate(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let tolerance = bytes / 2000 + 1;
            prop_assert!(back.abs_diff(bytes) <= tolerance, "{bytes} -> {text} -> {back}");
        }

        #[test]
        fn canonical_rates_round_trip_exactly(
            thousandths in 1_000u64..1_000_000,
            unit in prop::sample::select(vec!["Mbit", "Gbit", "Tbit"]),
        ) {
            let whole = thousandths / 1000;
            let frac = format!("{:03}", thousandths % 1000);
            let frac = frac.trim_end_matches('0');
            let text = if frac.is_empty() {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{frac}{unit}")
            };
            let bytes = parse_rate(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(format_rate(bytes), text);
        }

        #[test]
        fn size_format_parse_is_close(bytes in 1u64..=u64::MAX / 16) {
            let text = format_bytes(bytes);
            let back = parse_size(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(back.abs_diff(bytes) <= bytes / 2000 + 1, "{bytes} -> {text} -> {back}");
        }

        #[test]
        fn whole_unit_sizes_round_trip_exactly(n in 1u64..1024, shift in prop::sample::select(vec![0u32, 10, 20, 30, 40])) {
            let bytes = n << shift;
            prop_assert_eq!(parse_size(&format_bytes(bytes)), Ok(bytes));
        }

        #[test]
        fn small_sizes_round_trip_exactly(bytes in 1u64..PLAIN_BYTES_BELOW) {
            prop_assert_eq!(parse_size(&format_bytes(bytes)), Ok(bytes));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse_rate(&s);
            let _ = parse_size(&s);
        }
    }
}
