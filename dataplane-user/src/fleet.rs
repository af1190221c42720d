//! A fleet of gateways through etcd. Every gateway takes its policy from one key, so all of
//! them apply the same revision (with the same validation and atomic switch as a policy
//! file), and publishes a report of its own under a key bound to a lease: the revision in
//! force, the last one it refused and why, its interfaces. `dataplane fleet status` reads the
//! reports of all gateways back. A gateway whose daemon stops drops out of the list when its
//! lease expires; its dataplane keeps forwarding.
//!
//! Keys, under a prefix (default [`DEFAULT_PREFIX`]):
//! - `<prefix>/policy`: the policy, as text in the policy file format;
//! - `<prefix>/gateways/<name>`: each gateway's [`GatewayReport`], as JSON.

use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};

/// Where a fleet's keys live unless told otherwise.
pub const DEFAULT_PREFIX: &str = "/dataplane";
/// How long a gateway's report outlives its daemon (seconds): the lease's time to live.
pub const REPORT_TTL_SECS: i64 = 5;
/// How often a report's lease is renewed: well within its time to live.
pub const REPORT_RENEWAL: Duration = Duration::from_secs(1);
/// How long connecting to etcd, and each request, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a gateway finds its fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Key prefix of the fleet.
    pub prefix: String,
    /// This gateway's name in the fleet.
    pub gateway: String,
}

impl FleetConfig {
    /// The policy's key.
    pub fn policy_key(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    /// The prefix of the gateways' reports.
    pub fn reports_prefix(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    /// This gateway's report key.
    pub fn report_key(&self) -> String {
        format!("{}{}", self.reports_prefix(), self.gateway)
    }
}

/// What a gateway tells the fleet about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// The gateway's name.
    pub gateway: String,
    /// The etcd revision of the policy in force (0 while none from etcd is).
    pub revision: i64,
    /// The dataplane's policy generation.
    pub generation: u32,
    /// The newest revision the gateway refused, and why (cleared when a newer one applies).
    pub rejected: Option<Rejection>,
    /// The interfaces it runs on, each with its attach mode (`None`: not attached).
    pub interfaces: Vec<(String, Option<String>)>,
}

/// A policy revision a gateway refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The revision.
    pub revision: i64,
    /// Why (the validation error, as `config check` gives it).
    pub error: String,
}

/// A revision of the policy key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRevision {
    /// The key's modification revision.
    pub revision: i64,
    /// The policy text; `None` when the key was deleted (the gateways keep what is in force).
    pub text: Option<String>,
}

/// What can go wrong talking to the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd did not answer or refused a request.
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// A value in the fleet's keys is not what it should be.
    #[error("{key}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A watch or a lease ended (the server closed it, or the lease expired).
    #[error("etcd at {endpoints}: {what} ended")]
    Ended {
        /// The endpoints.
        endpoints: String,
        /// What ended.
        what: &'static str,
    },
}

/// A connection to the fleet's etcd cluster.
pub struct Fleet {
    client: Client,
    config: FleetConfig,
}

impl Fleet {
    /// Connects to `config`'s endpoints (any member that answers).
    pub async fn connect(config: FleetConfig) -> Result<Fleet, FleetError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(REPORT_RENEWAL, REQUEST_TIMEOUT);
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|source| etcd_error(&config, source))?;
        Ok(Fleet { client, config })
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The policy as it stands, and the store's revision it was read at (watch from after
    /// it to miss no change).
    pub async fn policy(&mut self) -> Result<(Option<PolicyRevision>, i64), FleetError> {
        let key = self.config.policy_key();
        let response = self
            .client
            .get(key.as_str(), None)
            .await
            .map_err(|e| self.error(e))?;
        let read_at = response.header().map_or(0, |h| h.revision());
        let policy = match response.kvs().first() {
            Some(kv) => Some(PolicyRevision {
                revision: kv.mod_revision(),
                text: Some(text_of(&key, kv.value())?),
            }),
            None => None,
        };
        Ok((policy, read_at))
    }

    /// Watches the policy key for changes after store revision `after`.
    pub async fn watch_policy(&mut self, after: i64) -> Result<PolicyWatch, FleetError> {
        let key = self.config.policy_key();
        let stream = self
            .client
            .watch(
                key.as_str(),
                Some(WatchOptions::new().with_start_revision(after + 1)),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(PolicyWatch {
            stream,
            key,
            endpoints: self.config.endpoints.join(","),
        })
    }

    /// Writes `text` as the fleet's policy; returns its revision.
    pub async fn push_policy(&mut self, text: &str) -> Result<i64, FleetError> {
        let response = self
            .client
            .put(self.config.policy_key(), text, None)
            .await
            .map_err(|e| self.error(e))?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Every gateway's report, by name.
    pub async fn reports(&mut self) -> Result<Vec<GatewayReport>, FleetError> {
        let prefix = self.config.reports_prefix();
        let response = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.error(e))?;
        let mut reports = response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                serde_json::from_slice(kv.value()).map_err(|e| FleetError::BadValue {
                    key,
                    why: e.to_string(),
                })
            })
            .collect::<Result<Vec<GatewayReport>, _>>()?;
        reports.sort_by(|a, b| a.gateway.cmp(&b.gateway));
        Ok(reports)
    }

    /// A lease for this gateway's report, renewed by [`ReportLease::renew`].
    pub async fn report_lease(&mut self) -> Result<ReportLease, FleetError> {
        let granted = self
            .client
            .lease_grant(REPORT_TTL_SECS, None)
            .await
            .map_err(|e| self.error(e))?;
        let (keeper, responses) = self
            .client
            .lease_keep_alive(granted.id())
            .await
            .map_err(|e| self.error(e))?;
        Ok(ReportLease {
            id: granted.id(),
            keeper,
            responses,
            endpoints: self.config.endpoints.join(","),
        })
    }

    /// Publishes `report` under this gateway's key, bound to `lease`.
    pub async fn publish(
        &mut self,
        lease: &ReportLease,
        report: &GatewayReport,
    ) -> Result<(), FleetError> {
        let value = serde_json::to_vec(report).map_err(|e| FleetError::BadValue {
            key: self.config.report_key(),
            why: e.to_string(),
        })?;
        self.client
            .put(
                self.config.report_key(),
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    fn error(&self, source: etcd_client::Error) -> FleetError {
        etcd_error(&self.config, source)
    }
}

fn etcd_error(config: &FleetConfig, source: etcd_client::Error) -> FleetError {
    FleetError::Etcd {
        endpoints: config.endpoints.join(","),
        source,
    }
}

fn text_of(key: &str, value: &[u8]) -> Result<String, FleetError> {
    String::from_utf8(value.to_vec()).map_err(|_| FleetError::BadValue {
        key: key.to_string(),
        why: "not UTF-8 text".into(),
    })
}

/// Changes of the policy key, in order.
pub struct PolicyWatch {
    stream: WatchStream,
    key: String,
    endpoints: String,
}

impl PolicyWatch {
    /// The next revisions of the policy key (a response may carry several; the last one is
    /// what stands). Ends with an error when the watch does.
    pub async fn next(&mut self) -> Result<Vec<PolicyRevision>, FleetError> {
        loop {
            let response = self
                .stream
                .message()
                .await
                .map_err(|source| FleetError::Etcd {
                    endpoints: self.endpoints.clone(),
                    source,
                })?
                .ok_or_else(|| FleetError::Ended {
                    endpoints: self.endpoints.clone(),
                    what: "the policy watch",
                })?;
            if response.canceled() {
                return Err(FleetError::Ended {
                    endpoints: self.endpoints.clone(),
                    what: "the policy watch",
                });
            }
            let changes = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(match event.event_type() {
                        EventType::Put => {
                            text_of(&self.key, kv.value()).map(|text| PolicyRevision {
                                revision: kv.mod_revision(),
                                text: Some(text),
                            })
                        }
                        EventType::Delete => Ok(PolicyRevision {
                            revision: kv.mod_revision(),
                            text: None,
                        }),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }
}

/// The lease a gateway's report is bound to.
pub struct ReportLease {
    id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
    endpoints: String,
}

impl ReportLease {
    /// Renews the lease; an error when etcd does not answer or the lease has expired (the
    /// report is gone then, and a new lease is needed).
    pub async fn renew(&mut self) -> Result<(), FleetError> {
        let error = |source| FleetError::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        };
        self.keeper.keep_alive().await.map_err(error)?;
        let response = self
            .responses
            .message()
            .await
            .map_err(|source| FleetError::Etcd {
                endpoints: self.endpoints.clone(),
                source,
            })?;
        match response {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(FleetError::Ended {
                endpoints: self.endpoints.clone(),
                what: "the report's lease",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let config = FleetConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: DEFAULT_PREFIX.into(),
            gateway: "gw1".into(),
        };
        assert_eq!(config.policy_key(), "/dataplane/policy");
        assert_eq!(config.report_key(), "/dataplane/gateways/gw1");
        assert!(config.report_key().starts_with(&config.reports_prefix()));
    }

    #[test]
    fn a_report_round_trips_through_json() {
        let report = GatewayReport {
            gateway: "gw1".into(),
            revision: 42,
            generation: 3,
            rejected: Some(Rejection {
                revision: 43,
                error: "class[1].rate: bad".into(),
            }),
            interfaces: vec![("eth0".into(), Some("native".into()))],
        };
        let json = serde_json::to_string(&report).expect("serialises");
        assert_eq!(
            serde_json::from_str::<GatewayReport>(&json).expect("parses"),
            report
        );
    }
}
