//! The routed client → gateway → server topology (`dataplane_netns::topology`), and attaching
//! the dataplane to it.

pub use dataplane_netns::topology::*;

use aya::programs::XdpMode;
use dataplane::{
    config::Policy,
    dataplane::{Dataplane, DataplaneError},
};
use dataplane_netns::{in_netns, NetnsError};

/// What can go wrong while attaching the dataplane to a topology.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Attaching or registering the dataplane failed.
    #[error("dataplane in namespace {netns}: {source}")]
    Dataplane {
        /// The namespace.
        netns: String,
        /// The cause (boxed: the loader's errors carry a verifier log).
        source: Box<DataplaneError>,
    },
}

/// Attaching a [`Dataplane`] to a [`Topology`] (a trait: the topology's crate does not know the
/// product).
pub trait AttachTopology {
    /// Registers the policy's interfaces and the gateway's with `dp` and attaches it to every
    /// gateway interface, from inside the gateway namespace, and attaches the pass-everything
    /// program to the hosts' interfaces (a veth accepts redirected frames only with an XDP
    /// program on the receiving end). Returns the policy's interfaces missing here.
    fn attach(
        &self,
        dp: &mut Dataplane,
        policy: &Policy,
        mode: XdpMode,
    ) -> Result<Vec<String>, AttachError>;

    /// Attaches `dp`'s pass-everything program to every host's interface, so the veths accept
    /// frames the gateway redirects to them (for as long as `dp` lives).
    fn attach_pass_to_hosts(&self, dp: &mut Dataplane, mode: XdpMode) -> Result<(), AttachError>;
}

impl AttachTopology for Topology {
    fn attach(
        &self,
        dp: &mut Dataplane,
        policy: &Policy,
        mode: XdpMode,
    ) -> Result<Vec<String>, AttachError> {
        let ifaces = self.gateway_ifaces();
        let in_gateway = |source| AttachError::Dataplane {
            netns: self.gateway.clone(),
            source: Box::new(source),
        };
        let missing = in_netns(&self.gateway, || -> Result<_, DataplaneError> {
            let missing = dp.register_interfaces(policy, &ifaces)?;
            for iface in &ifaces {
                dp.attach(iface, mode)?;
            }
            Ok(missing)
        })?
        .map_err(in_gateway)?;
        self.attach_pass_to_hosts(dp, mode)?;
        Ok(missing)
    }

    fn attach_pass_to_hosts(&self, dp: &mut Dataplane, mode: XdpMode) -> Result<(), AttachError> {
        for host in self.hosts() {
            in_netns(&host.netns, || dp.attach_pass(&host.iface, mode))?.map_err(|source| {
                AttachError::Dataplane {
                    netns: host.netns.clone(),
                    source: Box::new(source),
                }
            })?;
        }
        Ok(())
    }
}
