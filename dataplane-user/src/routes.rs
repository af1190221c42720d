//! Following the kernel's routing state: every route, rule, next-hop object, neighbour,
//! address or link change the kernel announces on rtnetlink moves the route generation, so
//! flows forwarded on a cached next hop look their route up again with their next packet
//! (see `dataplane_common::flow::NextHop`). What changed does not matter: a change is rare
//! next to packets, and one lookup per flow after it costs less than deciding which flows it
//! touched. A lost announcement (the socket's buffer overran) arrives as an overrun message
//! and moves the generation too.

use std::sync::Arc;

use futures_util::StreamExt;
use rtnetlink::{new_multicast_connection, MulticastGroup};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::dataplane::{DataplaneError, RouteGeneration};

/// Why following the routing announcements could not start.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The rtnetlink subscription failed.
    #[error("subscribing to rtnetlink announcements: {0}")]
    Subscribe(#[source] std::io::Error),
    /// The route generation could not be moved on.
    #[error("moving the route generation on: {0}")]
    Generation(#[source] DataplaneError),
}

/// The announcements that can change what a route lookup answers.
const GROUPS: [MulticastGroup; 9] = [
    MulticastGroup::Link,
    MulticastGroup::Neigh,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Ipv6Rule,
    MulticastGroup::Nexthop,
];

/// `RTM_NEWLINK` and `RTM_DELLINK`: an interface appeared, changed or went away.
const LINK_MESSAGES: [u16; 2] = [16, 17];

/// Subscribes to the kernel's routing announcements in this network namespace and moves
/// `generation` on each, until the socket closes (then the caller opens a new one); link
/// announcements also wake `links` (the daemon follows its interfaces then, not only on its
/// next watch tick). The subscription is in place when this returns; changes from before it
/// are covered by one move made here.
pub fn follow(
    mut generation: RouteGeneration,
    links: Arc<Notify>,
) -> Result<tokio::task::JoinHandle<()>, FollowError> {
    let (connection, _handle, mut messages) =
        new_multicast_connection(&GROUPS).map_err(FollowError::Subscribe)?;
    generation.bump().map_err(FollowError::Generation)?;
    let socket = tokio::spawn(connection);
    Ok(tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let kind = message.header.message_type;
            debug!(kind, "routing changed");
            if LINK_MESSAGES.contains(&kind) {
                links.notify_one();
            }
            if let Err(e) = generation.bump() {
                warn!("cannot move the route generation on: {e}");
            }
        }
        socket.abort();
        warn!("the rtnetlink subscription closed");
    }))
}
