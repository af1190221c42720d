//! One file per subcommand, each a thin caller of the library; and what they share: the
//! exit codes scripts rely on and the request to the daemon.

pub mod class;
pub mod config;
pub mod detach;
pub mod fleet;
pub mod kernel;
pub mod manpages;
pub mod rule;
pub mod run;
pub mod stats;
pub mod status;
pub mod top;

use dataplane::{
    control::{self, ClientError, Failure, Request},
    daemon::DaemonError,
    state::StateError,
    view::ViewError,
};

use crate::args::Paths;

/// No daemon listens (for commands that change something).
pub const EXIT_NO_DAEMON: u8 = 3;
/// The config or change is invalid; nothing changed.
pub const EXIT_REJECTED: u8 = 4;

/// An error with the exit code scripts rely on.
pub struct Failed {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failed {
    fn from(error: anyhow::Error) -> Failed {
        Failed { code: 1, error }
    }
}

/// The library's errors end a command with exit code 1, worded as the library words them.
macro_rules! failed_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Failed {
            fn from(error: $error) -> Failed {
                anyhow::Error::from(error).into()
            }
        }
    )*};
}

failed_from!(DaemonError, StateError, ViewError);

/// Sends a changing request to the daemon and maps its answer to output and exit code.
pub fn call(paths: &Paths, request: &Request) -> Result<(), Failed> {
    let response = control::call(&paths.run().socket(), request).map_err(|e| Failed {
        code: match e {
            ClientError::NotRunning { .. } => EXIT_NO_DAEMON,
            ClientError::PermissionDenied { .. } | ClientError::Protocol { .. } => 1,
        },
        error: e.into(),
    })?;
    match response.failure {
        None => {
            println!("{}", response.message);
            Ok(())
        }
        Some(failure) => Err(Failed {
            code: match failure {
                Failure::Rejected => EXIT_REJECTED,
                Failure::Failed => 1,
            },
            error: anyhow::anyhow!(
                "{} (generation {} stays in force)",
                response.message,
                response.generation
            ),
        }),
    }
}
