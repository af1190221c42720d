//! dataplane user space: policy files, their compilation into kernel tables, and the loaded
//! XDP program. The `dataplane` binary is a thin caller.

pub mod compile;
pub mod config;
pub mod dataplane;
pub mod forward;
pub mod topology;
pub mod units;
