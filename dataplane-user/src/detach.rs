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

/// Removes the whole dataplane: its links (detaching it everywhere), programs and maps, and
/// the run directory's state. Returns whether one was pinned.
pub fn remove_all(layout: &PinLayout, run: &RunDir) -> Result<bool, PinError> {
    let removed = layout.remove_version(LAYOUT_VERSION)?;
    run.clear();
    Ok(removed)
}

/// Detaches from `iface` (its link pin goes) and forgets it in `state`, when there is one.
pub fn detach_link(
    layout: &PinLayout,
    state: Option<&mut State>,
    iface: &str,
) -> Result<(), DetachError> {
    if !layout.unpin_link(iface)? {
        return Err(DetachError::NotAttached(iface.to_string()));
    }
    if let Some(state) = state {
        state.attached.remove(iface);
        state.ifindexes.remove(iface);
    }
    Ok(())
}
