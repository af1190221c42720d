//! dataplane user space: policy files, their compilation into kernel tables, and the loaded
//! XDP program. The `dataplane` binary is a thin caller.

#![deny(missing_docs)]

pub mod compile;
pub mod config;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod detach;
pub mod edit;
pub mod fleet;
pub mod forward;
pub mod ids;
pub mod kernel;
pub mod kernel_log;
pub mod metrics;
pub mod mounts;
pub mod netdev;
pub mod pins;
pub mod routes;
pub mod state;
pub mod units;
pub mod upgrade;
pub mod view;
