//! Upgrades in place, without a gap in forwarding or policing: a daemon finding a dataplane
//! pinned by another build (an older layout, or this layout with another program) loads its
//! own program beside it, sharing every map whose layout allows (so counters, policer state,
//! class ids and flows carry over, and the old program keeps updating the same state until
//! the swap), copies the entries of the maps that changed where their keys and values
//! still fit, pins the new layout whole, and only then moves each interface's XDP link to the
//! new program with `bpf_link_update` (atomic: every packet meets one program or the other).
//! The old layout's pins go last. Downgrades are refused ([`crate::pins::PinError`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};
use dataplane_common::maps::names;

use crate::pins::{PinLayout, CHANGED_MEANING};

/// A dataplane being taken over: the layout whose links still carry traffic.
#[derive(Clone, Debug)]
pub struct Upgrade {
    pub(crate) from: PinLayout,
}

impl Upgrade {
    /// The layout version upgraded from (this binary's own when only the program changes).
    pub fn from_version(&self) -> u32 {
        self.from.version()
    }

    /// Interfaces whose links still run the old program.
    pub fn attached(&self) -> Vec<String> {
        self.from.attached()
    }
}

/// The maps a policy generation lives in, read together by the program: shared all together
/// or none (see `Dataplane::load_sharing`). The flow cache belongs with them: its entries
/// hold classes tagged with the generation that computed them.
pub const POLICY_MAPS: [&str; 8] = [
    names::ACTIVE_SLOT,
    names::POLICY_SLOTS,
    names::CLASSES,
    names::RULE_CLASSES,
    names::FIELD_TABLE,
    names::VECTOR_POOL,
    names::PREFIXES,
    names::FLOW_CACHE,
];

/// Whether map `name` of layout `from` may be shared by this binary's program, its shape
/// being the same: not when a layout between changed its meaning.
pub(crate) fn meaning_kept(name: &str, from: u32, to: u32) -> bool {
    !CHANGED_MEANING
        .iter()
        .any(|(version, map)| *map == name && *version > from && *version <= to)
}

/// What copying a map's entries found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries copied.
    pub entries: u64,
    /// Entries the new map refused (it is smaller, say).
    pub refused: u64,
}

/// Copies the entries of `from` (at most `max_entries` of them) into `to`, both maps of
/// `kind` with the same (key, value) sizes (per CPU: the value per possible CPU). Ring
/// buffers, device and program maps have no entries to carry (their values are file
/// descriptors or records): callers skip them. The walk is bounded: a key another CPU
/// deletes under it restarts BPF_MAP_GET_NEXT_KEY from the first key.
pub(crate) fn copy_entries(
    from: &MapData,
    to: &MapData,
    kind: u32,
    (key_size, value_size): (u32, u32),
    max_entries: u32,
    cpus: u32,
) -> std::io::Result<Copied> {
    let per_cpu = [
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH,
        bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH,
    ]
    .iter()
    .any(|t| *t as u32 == kind);
    let value_len = if per_cpu {
        (value_size as usize).next_multiple_of(8) * cpus as usize
    } else {
        value_size as usize
    };
    let (from, to) = (from.fd().as_fd(), to.fd().as_fd());
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut value = vec![0u8; value_len];
    let mut copied = Copied::default();
    // The first key: a null key asks for it (BPF_MAP_GET_NEXT_KEY's documented start).
    let mut first = true;
    for _ in 0..2 * u64::from(max_entries) {
        let found = next_key(from, (!first).then_some(&key[..]), &mut next)?;
        if !found {
            return Ok(copied);
        }
        first = false;
        key.copy_from_slice(&next);
        // A key gone between the two calls (an LRU eviction) is skipped.
        if !lookup(from, &key, &mut value)? {
            continue;
        }
        if update(to, &key, &value)? {
            copied.entries += 1;
        } else {
            copied.refused += 1;
        }
    }
    Ok(copied)
}

fn map_attr(fd: BorrowedFd<'_>, key: *const u8, value: u64) -> bpf_attr {
    // SAFETY: all zeroes is a valid bpf_attr; the element-command fields are set below.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the union's element-command member.
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = fd.as_raw_fd() as u32;
    u.key = key as u64;
    u.__bindgen_anon_1.value = value;
    attr
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr whose pointers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The key after `key` (the first with `None`) into `next`; false at the end.
fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> std::io::Result<bool> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    let mut attr = map_attr(fd, key, next.as_mut_ptr() as u64);
    match sys_bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> std::io::Result<bool> {
    let mut attr = map_attr(fd, key.as_ptr(), value.as_mut_ptr() as u64);
    match sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes one entry; false where the map has no room for it (full, or the index beyond a
/// smaller array).
fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> std::io::Result<bool> {
    let mut attr = map_attr(fd, key.as_ptr(), value.as_ptr() as u64);
    match sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_whose_meaning_changed_in_between_is_not_shared() {
        // No layout has changed a map's meaning yet: every map of the same shape carries over.
        for (version, map) in CHANGED_MEANING {
            assert!(!meaning_kept(map, version - 1, *version));
            assert!(meaning_kept(map, *version, version + 1));
        }
        assert!(meaning_kept("CLASS_COUNTERS", 7, 8));
    }
}
