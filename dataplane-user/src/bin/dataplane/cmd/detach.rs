//! `dataplane detach`: through the daemon when one runs, else on the pins directly.

use dataplane::{
    control::{self, Request},
    detach::{self, DetachError},
};

use super::{call, Failed, EXIT_REJECTED};
use crate::args::{DetachArgs, Paths};

pub fn execute(paths: &Paths, args: DetachArgs) -> Result<(), Failed> {
    let pins = paths.layout();
    if let Some(version) = args.layout {
        if pins.remove_version(version).map_err(anyhow::Error::from)? {
            println!("removed layout v{version} under {}", pins.root().display());
        } else {
            println!("no layout v{version} under {}", pins.root().display());
        }
        return Ok(());
    }
    let run = paths.run();
    if control::is_running(&run.socket()) {
        return call(
            paths,
            &Request::Detach {
                ifaces: args.ifaces,
            },
        );
    }
    if args.ifaces.is_empty() {
        if detach::remove_all(&pins, &run).map_err(anyhow::Error::from)? {
            println!("detached; dataplane removed");
        } else {
            println!("nothing to detach under {}", pins.root().display());
        }
        return Ok(());
    }
    let mut state = run.read()?;
    for iface in &args.ifaces {
        detach::detach_link(&pins, state.as_mut(), iface).map_err(|e| Failed {
            code: match e {
                DetachError::NotAttached(_) => EXIT_REJECTED,
                DetachError::Pins(_) => 1,
            },
            error: e.into(),
        })?;
    }
    if let Some(state) = &state {
        run.write(state)?;
    }
    println!("detached from {}", args.ifaces.join(", "));
    Ok(())
}
