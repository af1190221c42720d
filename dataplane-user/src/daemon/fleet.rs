//! The daemon in a fleet: it takes every revision of the fleet's policy from etcd, keeps
//! its report current, measures its fleet classes' demand and enforces its share of their
//! budgets (see [`crate::fleet`]); while etcd does not answer, what is in force stays.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use super::{bounded_error, now_secs, ApplyError, Daemon};
use crate::{
    compile::class_config,
    config::ClassSpec,
    fleet::{
        own_fractions, Demands, Fleet, FleetConfig, FleetError, GatewayReport, Rejection,
        REPORT_RENEWAL, SHARE_PERIOD,
    },
};

/// The least change of a fleet share (a fraction of the budget) that is enforced.
const FLEET_SHARE_STEP: f64 = 0.005;
/// The first wait before reconnecting to etcd, and the longest.
const FLEET_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FLEET_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one etcd exchange of the follower may take before the connection counts as lost.
const FLEET_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Daemon {
    /// Applies revision `revision` of the fleet's policy (`text`; `None`: the key was
    /// deleted, and what is in force stays). A revision already in force is not applied
    /// again; a refused one is recorded for the fleet's report and the policy in force stays.
    pub(super) fn apply_fleet_policy(&mut self, revision: i64, text: Option<&str>, key: &str) {
        let Some(fleet) = &self.state.fleet else {
            return;
        };
        if revision == fleet.revision {
            return;
        }
        let Some(text) = text else {
            warn!(%key, revision, "the fleet's policy key was deleted; the policy in force stays");
            return;
        };
        let origin = format!("etcd {key}@{revision}");
        match self.apply_text(text, &origin) {
            Ok(generation) => {
                self.state.reloads_ok += 1;
                if let Some(fleet) = &mut self.state.fleet {
                    fleet.revision = revision;
                    fleet.rejected = None;
                }
                info!(generation, revision, "fleet policy applied");
                self.persist(format!("applied {origin}: generation {generation}"));
            }
            Err(e) => {
                let message = match e {
                    ApplyError::Rejected(m) | ApplyError::Failed(m) => m,
                };
                error!(
                    revision,
                    "fleet policy refused, the policy in force stays: {message}"
                );
                if let Some(fleet) = &mut self.state.fleet {
                    fleet.rejected = Some(Rejection {
                        revision,
                        error: bounded_error(message.clone()),
                    });
                }
                self.record_failure(message);
                if let Err(err) = self.save_state() {
                    error!("{err:#}");
                }
                self.publish_metrics_view();
            }
        }
    }

    /// Records whether etcd answers (saved for `status`, shown in the metrics).
    pub(super) fn set_fleet_connected(&mut self, connected: bool) {
        let Some(fleet) = &mut self.state.fleet else {
            return;
        };
        if fleet.connected == connected {
            return;
        }
        fleet.connected = connected;
        fleet.since = now_secs();
        if let Err(err) = self.save_state() {
            error!("{err:#}");
        }
        self.publish_metrics_view();
    }

    /// The kernel config of fleet class `spec` at this gateway's share; `None` for a class
    /// that is not a fleet class, or outside a fleet.
    pub(super) fn shared_class(
        &self,
        spec: &ClassSpec,
    ) -> Option<dataplane_common::maps::ClassConfig> {
        if !spec.fleet_budget || self.state.fleet.is_none() {
            return None;
        }
        let fraction = self.fleet_shares.get(&spec.name).copied().unwrap_or(1.0);
        let scale = |rate: u64| ((rate as f64 * fraction) as u64).max(1);
        let mut shared = spec.clone();
        if shared.rate_bytes_per_sec > 0 {
            shared.rate_bytes_per_sec = scale(shared.rate_bytes_per_sec);
        }
        shared.ceil_bytes_per_sec = shared.ceil_bytes_per_sec.map(scale);
        Some(class_config(&shared))
    }

    /// Each fleet class's budget (bytes/s): its ceiling, else its rate.
    pub(super) fn fleet_budgets(&self) -> std::collections::BTreeMap<String, u64> {
        self.policy
            .iter()
            .flat_map(|p| &p.classes)
            .filter(|c| c.fleet_budget)
            .map(|c| {
                let budget = c.ceil_bytes_per_sec.unwrap_or(c.rate_bytes_per_sec);
                (c.name.clone(), budget)
            })
            .collect()
    }

    /// Measures each fleet class's demand here: bytes per second offered to it on every
    /// interface (dropped ones included) since the last measurement.
    pub(super) fn measure_fleet_demand(&mut self) -> Demands {
        let now = Instant::now();
        let slots: Vec<u32> = self.state.ids.ifaces.values().copied().collect();
        let mut demand = Demands::new();
        for class in self.fleet_budgets().into_keys() {
            let Some(&id) = self.state.ids.classes.get(&class) else {
                continue;
            };
            let offered: u64 = slots
                .iter()
                .filter_map(|&slot| self.dp.class_counters(slot, id).ok())
                .map(|c| c.bytes)
                .sum();
            let rate = match self.fleet_offered.insert(class.clone(), (now, offered)) {
                Some((then, before)) => {
                    let secs = now.duration_since(then).as_secs_f64().max(1e-3);
                    (offered.saturating_sub(before) as f64 / secs) as u64
                }
                None => 0,
            };
            demand.insert(class, rate);
        }
        self.fleet_demand = demand.clone();
        demand
    }

    /// Enforces this gateway's new shares of the fleet classes (fractions of their budgets),
    /// in place in the generation in force.
    pub(super) fn set_fleet_shares(&mut self, shares: std::collections::BTreeMap<String, f64>) {
        // Demand moves a little all the time: a share changes only when it moves by more
        // than FLEET_SHARE_STEP of the budget.
        let changed: Vec<String> = shares
            .iter()
            .filter(|(class, f)| {
                self.fleet_shares
                    .get(*class)
                    .is_none_or(|old| (*f - old).abs() > FLEET_SHARE_STEP)
            })
            .map(|(class, _)| class.clone())
            .collect();
        for class in &changed {
            self.fleet_shares.insert(class.clone(), shares[class]);
        }
        self.fleet_shares
            .retain(|class, _| shares.contains_key(class));
        for class in changed {
            let spec = self
                .policy
                .as_ref()
                .and_then(|p| p.classes.iter().find(|c| c.name == class))
                .cloned();
            let (Some(spec), Some(&id)) = (spec, self.state.ids.classes.get(&class)) else {
                continue;
            };
            if let Some(config) = self.shared_class(&spec) {
                if let Err(e) = self.dp.set_live_class(id, &config) {
                    warn!(%class, "cannot enforce the fleet share: {e}");
                }
            }
        }
        self.publish_metrics_view();
    }

    /// What this gateway tells the fleet.
    pub(super) fn fleet_report(&self) -> GatewayReport {
        let fleet = self.state.fleet.clone().unwrap_or_default();
        GatewayReport {
            gateway: fleet.gateway,
            revision: fleet.revision,
            generation: self.state.generation,
            rejected: fleet.rejected,
            interfaces: self
                .wanted
                .iter()
                .map(|iface| {
                    let mode = self
                        .state
                        .attached
                        .get(iface)
                        .map(|m| m.label().to_string());
                    (iface.clone(), mode)
                })
                .collect(),
        }
    }
}

/// Follows the fleet for as long as the daemon runs: takes every revision of its policy,
/// keeps this gateway's report current, and reconnects with backoff while etcd does not
/// answer (the policy in force stays meanwhile: fail static).
pub(super) async fn follow_fleet(daemon: Arc<Mutex<Daemon>>, config: FleetConfig) {
    let mut backoff = FLEET_BACKOFF_MIN;
    loop {
        let lost = fleet_session(&daemon, &config, &mut backoff).await;
        {
            let mut daemon = daemon.lock().await;
            let was_connected = daemon.state.fleet.as_ref().is_some_and(|f| f.connected);
            if was_connected {
                warn!("etcd does not answer, the policy in force stays: {lost}");
            } else {
                debug!("etcd still does not answer: {lost}");
            }
            daemon.set_fleet_connected(false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FLEET_BACKOFF_MAX);
    }
}

/// One connection's worth of following; returns why it ended.
async fn fleet_session(
    daemon: &Mutex<Daemon>,
    config: &FleetConfig,
    backoff: &mut Duration,
) -> FleetError {
    let timed = |what: &'static str| FleetError::Ended {
        endpoints: config.endpoints.join(","),
        what,
    };
    let session = async {
        let mut fleet = Fleet::connect(config.clone()).await?;
        let (policy, read_at) = fleet.policy().await?;
        let watch = fleet.watch_policy(read_at).await?;
        let lease = fleet.report_lease().await?;
        Ok::<_, FleetError>((fleet, policy, watch, lease))
    };
    let (mut fleet, policy, mut watch, mut lease) =
        match tokio::time::timeout(FLEET_REQUEST_TIMEOUT * 2, session).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => return e,
            Err(_) => return timed("connecting"),
        };
    *backoff = FLEET_BACKOFF_MIN;
    let key = config.policy_key();
    let mut published = {
        let mut daemon = daemon.lock().await;
        daemon.set_fleet_connected(true);
        info!(endpoints = %config.endpoints.join(","), %key, gateway = %config.gateway,
            "following the fleet's policy");
        if let Some(policy) = policy {
            daemon.apply_fleet_policy(policy.revision, policy.text.as_deref(), &key);
        }
        daemon.fleet_report()
    };
    if let Err(e) = fleet.publish(&lease, &published).await {
        return e;
    }
    let mut renew = tokio::time::interval(REPORT_RENEWAL);
    let mut share = tokio::time::interval(SHARE_PERIOD);
    loop {
        tokio::select! {
            _ = share.tick() => {
                let (demand, budgets) = {
                    let mut daemon = daemon.lock().await;
                    (daemon.measure_fleet_demand(), daemon.fleet_budgets())
                };
                if !budgets.is_empty() {
                    let exchange = async {
                        fleet.publish_demand(&lease, &demand).await?;
                        fleet.demands().await
                    };
                    match tokio::time::timeout(FLEET_REQUEST_TIMEOUT, exchange).await {
                        Ok(Ok(demands)) => {
                            let fractions = own_fractions(&config.gateway, &budgets, &demands);
                            daemon.lock().await.set_fleet_shares(fractions);
                        }
                        Ok(Err(e)) => return e,
                        Err(_) => return timed("exchanging demands"),
                    }
                }
            }
            changes = watch.next() => match changes {
                // The last change is what stands; those before it were superseded.
                Ok(changes) => if let Some(last) = changes.last() {
                    daemon
                        .lock()
                        .await
                        .apply_fleet_policy(last.revision, last.text.as_deref(), &key);
                },
                Err(e) => return e,
            },
            _ = renew.tick() => {
                match tokio::time::timeout(FLEET_REQUEST_TIMEOUT, lease.renew()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e,
                    Err(_) => return timed("renewing the report's lease"),
                }
            }
        }
        let report = daemon.lock().await.fleet_report();
        if report != published {
            match tokio::time::timeout(FLEET_REQUEST_TIMEOUT, fleet.publish(&lease, &report)).await
            {
                Ok(Ok(())) => published = report,
                Ok(Err(e)) => return e,
                Err(_) => return timed("publishing the report"),
            }
        }
    }
}
