//! Types and decision logic shared by the XDP program (`dataplane-ebpf`) and user space.
//!
//! Everything here is `no_std`, allocation-free and host-testable: the kernel side is thin
//! glue that feeds packet bytes and map values into these functions.
#![no_std]
#![deny(missing_docs)]

pub mod action;
pub mod checksum;
pub mod classify;
pub mod fair;
pub mod flow;
pub mod forward;
pub mod maps;
pub mod packet;
pub mod policer;
pub mod programs;
pub mod reason;
pub mod spray;
pub mod window;
pub mod wire;

/// Most rules a policy may hold: one bit each in a [`classify::RuleVector`].
pub const MAX_RULES: usize = 16384;
/// 64-bit words in a rule bit-vector.
pub const RULE_WORDS: usize = MAX_RULES / 64;
/// Most classes a policy may define (class ids are `0..MAX_CLASSES`).
pub const MAX_CLASSES: usize = 256;
/// Interface slots: slot 0 counts traffic of interfaces no policy registered.
pub const MAX_IFACES: usize = 64;
/// Policy generations held at once: the active one and the one being written.
pub const GENERATION_SLOTS: usize = 2;
/// Rule bit-vectors stored at once, shared by both generation slots.
pub const VECTOR_POOL_ENTRIES: usize = 32768;
/// TCP connection directions the window-control return table holds (LRU).
pub const RETURN_TABLE_ENTRIES: usize = 131072;
/// Interfaces with an index below this are found by index in an array (one load); those
/// above it, on hosts that have created thousands of interfaces, in a hash table.
pub const IFINDEX_ARRAY_LIMIT: usize = 16384;
/// Prefix entries (all four address fields, both slots) the LPM trie holds.
pub const PREFIX_ENTRIES: usize = 4 * MAX_RULES + 64;
/// Strict priorities a class may have (0 lowest .. 7 highest).
pub const PRIORITY_LEVELS: usize = 8;
/// Deepest IPv6 extension-header chain we walk before giving up.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 6;
/// Most VLAN tags (802.1Q / 802.1ad) we parse.
pub const MAX_VLAN_TAGS: usize = 2;
/// UDP destination port of RoCEv2.
pub const ROCEV2_UDP_PORT: u16 = 4791;
/// UDP destination port of UET, Ultra Ethernet Transport (UEC 1.0 specification).
pub const UET_UDP_PORT: u16 = 4793;
/// RoCEv2 BTH opcode of a Congestion Notification Packet.
pub const ROCE_OPCODE_CNP: u8 = 0x81;
