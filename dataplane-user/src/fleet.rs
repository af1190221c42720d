//! A fleet of gateways through etcd. Every gateway takes its policy from one key, so all of
//! them apply the same revision (with the same validation and atomic switch as a policy
//! file), and publishes a report of its own under a key bound to a lease: the revision in
//! force, the last one it refused and why, its interfaces. `dataplane fleet status` reads the
//! reports of all gateways back. A gateway whose daemon stops drops out of the list when its
//! lease expires; its dataplane keeps forwarding.
//!
//! Classes with `fleet_budget = true` share their rate and ceiling across the fleet: every
//! gateway reports the demand it sees for each (the bytes per second offered to the class,
//! dropped ones included) under a leased key, reads everyone's, and enforces its own share
//! ([`shares`]): max-min fair by demand, above a floor so that a gateway whose traffic just
//! started is not starved before its demand is known. While etcd does not answer, shares stay
//! as they are; a gateway that disappears loses its share when its lease expires.
//!
//! Keys, under a prefix (default [`DEFAULT_PREFIX`]):
//! - `<prefix>/policy`: the policy, as text in the policy file format;
//! - `<prefix>/gateways/<name>`: each gateway's [`GatewayReport`], as JSON;
//! - `<prefix>/demand/<name>`: each gateway's demand per fleet class (bytes/s), as JSON.

use std::{collections::BTreeMap, time::Duration};

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
/// How often a gateway measures and reports its demand and recomputes its shares.
pub const SHARE_PERIOD: Duration = Duration::from_millis(250);
/// The part of a fleet budget set aside as floors, split equally among the gateways that
/// report: each has at least this share of an equal split, demand or not.
pub const SHARE_FLOOR: f64 = 0.03;
/// How long a member may take to answer the probe before a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
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

    /// The prefix of the gateways' demands.
    pub fn demands_prefix(&self) -> String {
        format!("{}/demand/", self.prefix)
    }

    /// This gateway's demand key.
    pub fn demand_key(&self) -> String {
        format!("{}{}", self.demands_prefix(), self.gateway)
    }
}

/// Demand per fleet class (bytes per second), by class name.
pub type Demands = BTreeMap<String, u64>;

/// Max-min fair shares of `budget` (bytes/s) among gateways with `demands` (bytes/s, one
/// each, in the same order as the result). Each gateway first gets an equal part of the
/// floor ([`SHARE_FLOOR`] of the budget); the rest fills demand above the floor, the smallest
/// first, up to a common level; what no demand takes is split equally, so a gateway whose
/// demand grows can take more at once. The shares add up to the budget.
pub fn shares(budget: u64, demands: &[u64]) -> Vec<u64> {
    let n = demands.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let floor = (budget as f64 * SHARE_FLOOR) as u64 / n;
    let mut rest = budget - floor * n;
    let excess: Vec<u64> = demands.iter().map(|d| d.saturating_sub(floor)).collect();
    // Water-filling: visit the demands from the smallest; each takes its excess or an equal
    // part of what is left, whichever is less.
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| excess[i]);
    let mut filled = vec![0u64; demands.len()];
    let mut left = n;
    for &i in &order {
        let take = excess[i].min(rest / left);
        filled[i] = take;
        rest -= take;
        left -= 1;
    }
    // What no demand took: equal parts (the remainder of the division to the first).
    let spare = rest / n;
    let mut remainder = rest - spare * n;
    filled
        .iter()
        .map(|f| {
            let extra = std::mem::take(&mut remainder);
            floor + f + spare + extra
        })
        .collect()
}

/// The share of each fleet class's budget (`budgets`, bytes/s) that gateway `own` enforces,
/// as a fraction of the budget, from every gateway's `demands` (by gateway name). A class
/// no gateway reports yet keeps a whole budget.
pub fn own_fractions(
    own: &str,
    budgets: &BTreeMap<String, u64>,
    demands: &BTreeMap<String, Demands>,
) -> BTreeMap<String, f64> {
    budgets
        .iter()
        .map(|(class, &budget)| {
            let gateways: Vec<(&String, u64)> = demands
                .iter()
                .map(|(gw, d)| (gw, d.get(class).copied().unwrap_or(0)))
                .collect();
            let fraction = match gateways.iter().position(|(gw, _)| *gw == own) {
                Some(me) if budget > 0 => {
                    let all: Vec<u64> = gateways.iter().map(|(_, d)| *d).collect();
                    shares(budget, &all)[me] as f64 / budget as f64
                }
                _ => 1.0,
            };
            (class.clone(), fraction)
        })
        .collect()
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
    /// Connects to the members of `config`'s endpoints that answer now (all of them when
    /// none does, so the error names them): a member that is down would otherwise take its
    /// turn among the requests and make each wait for its connection to time out.
    pub async fn connect(config: FleetConfig) -> Result<Fleet, FleetError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(REPORT_RENEWAL, REQUEST_TIMEOUT);
        let probes = config.endpoints.iter().map(|endpoint| async move {
            let probe = async {
                let options = ConnectOptions::new()
                    .with_connect_timeout(PROBE_TIMEOUT)
                    .with_timeout(PROBE_TIMEOUT);
                Client::connect([endpoint], Some(options))
                    .await?
                    .status()
                    .await
            };
            matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
                .then_some(endpoint)
        });
        let answering: Vec<&String> = futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        let endpoints: Vec<&String> = if answering.is_empty() {
            config.endpoints.iter().collect()
        } else {
            answering
        };
        let client = Client::connect(endpoints, Some(options))
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
        self.put_leased(self.config.report_key(), report, lease)
            .await
    }

    /// Publishes this gateway's `demand` under its key, bound to `lease`.
    pub async fn publish_demand(
        &mut self,
        lease: &ReportLease,
        demand: &Demands,
    ) -> Result<(), FleetError> {
        self.put_leased(self.config.demand_key(), demand, lease)
            .await
    }

    /// Writes `value` as JSON under `key`, bound to `lease`.
    async fn put_leased(
        &mut self,
        key: String,
        value: &impl Serialize,
        lease: &ReportLease,
    ) -> Result<(), FleetError> {
        let json = serde_json::to_vec(value).map_err(|e| FleetError::BadValue {
            key: key.clone(),
            why: e.to_string(),
        })?;
        self.client
            .put(key, json, Some(PutOptions::new().with_lease(lease.id)))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Every gateway's demand, by gateway name.
    pub async fn demands(&mut self) -> Result<BTreeMap<String, Demands>, FleetError> {
        let prefix = self.config.demands_prefix();
        let response = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.error(e))?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let gateway = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                serde_json::from_slice(kv.value())
                    .map(|d| (gateway, d))
                    .map_err(|e| FleetError::BadValue {
                        key,
                        why: e.to_string(),
                    })
            })
            .collect()
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

    #[test]
    fn shares_are_max_min_fair_above_a_floor() {
        // One gateway with all the demand, two idle: the idle ones keep their floors.
        let s = shares(1000, &[5000, 0, 0]);
        assert_eq!(s.iter().sum::<u64>(), 1000);
        assert_eq!((s[1], s[2]), (10, 10), "floors of an idle gateway");
        assert_eq!(s[0], 1000 - 20);
        // 50/30/20 of more than the budget: fair levels.
        let s = shares(1000, &[5000, 3000, 2000]);
        assert_eq!(s.iter().sum::<u64>(), 1000);
        assert!(
            s[0].abs_diff(s[1]) <= 1 && s[1].abs_diff(s[2]) <= 1,
            "{s:?}"
        );
        // A small demand gets what it asks; the rest is shared by the big ones.
        let s = shares(1000, &[5000, 100, 5000]);
        assert_eq!(s.iter().sum::<u64>(), 1000);
        assert_eq!(s[1], 100);
        assert!(s[0].abs_diff(s[2]) <= 1);
        // All demand within the budget: each gets it, and the spare equally.
        let s = shares(1000, &[200, 100, 0]);
        assert_eq!(s.iter().sum::<u64>(), 1000);
        assert!(s[0] >= 200 && s[1] >= 100 && s[2] > 0);
        assert!((s[0] - s[1]).abs_diff(100) <= 1, "{s:?}");
        assert!(shares(1000, &[]).is_empty());
    }

    #[test]
    fn a_gateway_s_fraction_follows_everyone_s_demand() {
        let budgets = BTreeMap::from([("bulk".to_string(), 1000u64)]);
        let demand = |d: u64| BTreeMap::from([("bulk".to_string(), d)]);
        let demands = BTreeMap::from([
            ("gw0".to_string(), demand(5000)),
            ("gw1".to_string(), demand(0)),
        ]);
        let own = own_fractions("gw0", &budgets, &demands);
        assert_eq!(own["bulk"], 0.985);
        assert_eq!(own_fractions("gw1", &budgets, &demands)["bulk"], 0.015);
        // Not reported yet (or etcd never answered): the whole budget.
        assert_eq!(own_fractions("gw9", &budgets, &demands)["bulk"], 1.0);
    }
}
