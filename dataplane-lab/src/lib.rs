//! The lab: what the privileged integration suites (`tests/`) and the benchmarks (`bench/`)
//! share. Namespaces, the routed topology and traffic come from `dataplane-netns` (re-exported
//! here: the `dataplane` binary's demo uses them too, and could not depend on this crate, which
//! depends on the product library); this crate adds what drives the product: the daemon
//! harness, kernel runs, admitted rates under load, the differential check, the TCP runner and its delay line, the
//! exporter and a Prometheus server, and scratch trees for tests that mount under them.

pub mod daemon;
pub mod delay;
pub mod differential;
pub mod etcd;
pub mod exporter;
pub mod frames;
pub mod kernel;
pub mod net;
pub mod netns;
pub mod prometheus;
pub mod rates;
pub mod rng;
pub mod scratch;
pub mod tcp;
pub mod topology;

pub use dataplane_netns::traffic;
