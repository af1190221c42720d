//! Kernel-side log lines in aya-log's record format, gated by the LOG_LEVEL map user space
//! sets at runtime. Off by default: then an outcome costs one array read here and nothing else.
//!
//! The records go to a BTF ring buffer named `AYA_LOGS`, which aya-log's user-space reader
//! finds by name; the aya-log-ebpf macros are not used because they declare that buffer as a
//! legacy (non-BTF) map, which libbpf (and so bpftool and libbpf-based operator tools) refuses
//! to load.

use aya_ebpf::{bindings::xdp_md, maps::ring_buf::RingBufBytes, programs::XdpContext};
use aya_log_common::{ArgumentKind, DisplayHint, Level, LogValueLength, RecordFieldKind};
use dataplane_common::{programs::KernelLogLevel, reason::Reason};

use crate::maps::{AYA_LOGS, LOG_LEVEL};

const LEVEL_ERROR: u32 = KernelLogLevel::Error as u32;
const LEVEL_DEBUG: u32 = KernelLogLevel::Debug as u32;
/// Ring-buffer room reserved per record (a power of two, as aya-log does).
const RECORD_CAPACITY: usize = 256;
/// Target of every record (the daemon's `tracing` target for kernel lines).
const TARGET: &str = "dataplane::kernel";

#[inline(always)]
fn level() -> u32 {
    LOG_LEVEL.get(0).copied().unwrap_or(0)
}

/// One aya-log record being written into the ring buffer.
struct Record<'a> {
    buf: RingBufBytes<'a>,
    /// Bytes written so far, the leading size field included.
    pos: usize,
}

impl Record<'_> {
    /// Appends one field: kind, length, value.
    #[inline(always)]
    fn put(&mut self, kind: u8, value: &[u8]) -> Option<()> {
        let len = LogValueLength::try_from(value.len()).ok()?.to_ne_bytes();
        let dst = self.buf.get_mut(self.pos..)?.get_mut(..3 + value.len())?;
        dst[0] = kind;
        dst[1..3].copy_from_slice(&len);
        dst[3..].copy_from_slice(value);
        self.pos += 3 + value.len();
        Some(())
    }

    /// Header fields, then the format string's literals and arguments, each argument after
    /// its display hint; last, the total size in front.
    #[inline(always)]
    fn fill(&mut self, level: Level, ifindex: u32, what: &str) -> Option<()> {
        let level: u8 = level.into();
        let hint: u8 = DisplayHint::Default.into();
        self.put(RecordFieldKind::Target.into(), TARGET.as_bytes())?;
        self.put(RecordFieldKind::Level.into(), &[level])?;
        self.put(RecordFieldKind::Module.into(), module_path!().as_bytes())?;
        self.put(RecordFieldKind::File.into(), file!().as_bytes())?;
        self.put(RecordFieldKind::Line.into(), &line!().to_ne_bytes())?;
        self.put(RecordFieldKind::NumArgs.into(), &6u32.to_ne_bytes())?;
        self.put(ArgumentKind::Str.into(), b"ifindex ")?;
        self.put(ArgumentKind::DisplayHint.into(), &[hint])?;
        self.put(ArgumentKind::U32.into(), &ifindex.to_ne_bytes())?;
        self.put(ArgumentKind::Str.into(), b": ")?;
        self.put(ArgumentKind::DisplayHint.into(), &[hint])?;
        self.put(ArgumentKind::Str.into(), what.as_bytes())?;
        let size = LogValueLength::try_from(self.pos).ok()?.to_ne_bytes();
        self.buf.get_mut(..2)?.copy_from_slice(&size);
        Some(())
    }
}

/// Writes "ifindex <ifindex>: <what>" at `level` as one aya-log record, encoded straight into
/// the ring buffer so the stack holds no copy. When the ring is full or the record does not
/// fit, the line is lost; the packet is not affected.
#[inline(always)]
fn write(level: Level, ifindex: u32, what: &str) {
    let Some(buf) = AYA_LOGS.reserve_bytes(RECORD_CAPACITY, 0) else {
        return;
    };
    let mut record = Record {
        buf,
        pos: core::mem::size_of::<LogValueLength>(),
    };
    match record.fill(level, ifindex, what) {
        Some(()) => record.buf.submit(0),
        None => record.buf.discard(0),
    }
}

/// Logs an outcome other than "passed by policy": drops and passes-to-kernel at debug, states
/// that should never happen at error. Not inlined: the record is built on the stack, which
/// the pipeline's frame leaves no room for.
#[inline(never)]
fn emit(raw: *mut xdp_md, reason: Reason, level: u32) {
    let ifindex = XdpContext::new(raw).ingress_ifindex() as u32;
    match reason {
        Reason::ClassifierMiss if level >= LEVEL_ERROR => {
            write(Level::Error, ifindex, "classifier returned no class");
        }
        _ if level >= LEVEL_DEBUG => {
            write(Level::Debug, ifindex, reason.label());
        }
        _ => {}
    }
}

/// Logs `reason` for the packet of context `ctx` if the level asks for it. Takes the raw
/// context pointer: a reference would pin the context to the pipeline's crowded stack.
#[inline(always)]
pub fn outcome(ctx: *mut xdp_md, reason: Reason) {
    let level = level();
    if level != 0 {
        emit(ctx, reason, level);
    }
}
