//! Following the kernel's routing state: every route, rule, next-hop object, neighbour,
//! address or link change the kernel announces on rtnetlink moves the route generation, so
//! flows forwarded on a cached next hop look their route up again with their next packet
//! (see `dataplane_common::flow::NextHop`). What changed does not matter: a change is rare
//! next to packets, and one lookup per flow after it costs less than deciding which flows it
//! touched. A lost announcement (the socket's buffer overran) arrives as an overrun message
//! and moves the generation too.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use rtnetlink::{new_multicast_connection, MulticastGroup};
use tracing::{debug, warn};

use crate::dataplane::RouteGeneration;

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

/// Subscribes to the kernel's routing announcements in this network namespace and moves
/// `generation` on each, until the socket closes (then the caller opens a new one). The
/// subscription is in place when this returns; changes from before it are covered by one
/// move made here.
pub fn follow(mut generation: RouteGeneration) -> Result<tokio::task::JoinHandle<()>> {
    let (connection, _handle, mut messages) =
        new_multicast_connection(&GROUPS).context("subscribing to rtnetlink announcements")?;
    generation
        .bump()
        .context("moving the route generation on")?;
    let socket = tokio::spawn(connection);
    Ok(tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            debug!(kind = message.header.message_type, "routing changed");
            if let Err(e) = generation.bump() {
                warn!("cannot move the route generation on: {e}");
            }
        }
        socket.abort();
        warn!("the rtnetlink subscription closed");
    }))
}
