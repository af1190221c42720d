//! Taking the dataplane off interfaces, for the daemon's `detach` requests and for the CLI
//! when no daemon runs.

use crate::{
    pins::{PinError, PinLayout, LAYOUT_VERSION},
    state::{RunDir, State},
};

/// Why an interface was not detached.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    /// No link of ours is pinned for it.
    #[error("{0} is not attached")]
    NotAttached(String),
    /// The pins could not be changed.
    #[error(transparent)]
    Pins(#[from] PinError),
}

/// Removes the whole dataplane: its links (detaching it everywhere), programs and maps, of
/// this layout and of an older one an upgrade has not finished with, and the run
/// directory's state. Returns whether one was pinned.
pub fn remove_all(layout: &PinLayout, run: &RunDir) -> Result<bool, PinError> {
    let older = layout.check_version()?;
    let mut removed = layout.remove_version(LAYOUT_VERSION)?;
    if let Some(version) = older {
        removed |= layout.remove_version(version)?;
    }
    run.clear();
    Ok(removed)
}

/// Detaches from `iface` (its link pin goes) and forgets it in `state`, when there is one.
pub fn detach_link(
    layout: &PinLayout,
    state: Option<&mut State>,
    iface: &str,
) -> Result<(), DetachError> {
    // Its link may still be in an older layout an upgrade has not finished with.
    let older = layout
        .check_version()?
        .map(|version| layout.of_version(version));
    let unpinned =
        layout.unpin_link(iface)? || older.map_or(Ok(false), |older| older.unpin_link(iface))?;
    if !unpinned {
        return Err(DetachError::NotAttached(iface.to_string()));
    }
    if let Some(state) = state {
        state.attached.remove(iface);
        state.ifindexes.remove(iface);
    }
    Ok(())
}
