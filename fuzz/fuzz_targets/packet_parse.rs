//! The packet parser on arbitrary bytes: it must never panic, and what it accepts must be
//! self-consistent (offsets inside the frame).
#![no_main]

use dataplane_common::packet::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(meta) = parse(frame) {
        assert!(meta.l3_offset < frame.len());
        if let Some(tcp) = meta.tcp {
            assert!(tcp.offset + 20 <= frame.len());
            assert!(tcp.header_len >= 20 && tcp.header_len <= 60);
        }
    }
});
