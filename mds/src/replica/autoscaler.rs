//! The autoscaler: per deployment, how many replica instances run, from the load they report.
//!
//! Every tick ([`ReplicaSettings::autoscale_interval`]) and for each deployment:
//! - demand = the sum over its serving instances of their average concurrency (requests in
//!   service or waiting, averaged over their last heartbeat interval); a client that found no
//!   instance at all (Wake) counts as demand for one;
//! - desired = ceil(demand / target concurrency), clamped to [min, max];
//! - more wanted: launch the difference (at most [`SCALE_UP_STEP_MAX`] at once) unless the
//!   last change is younger than the cooldown (below min, launch at once);
//! - fewer wanted: only once the surplus has lasted the idle period (idle reap), and at most
//!   [`SCALE_DOWN_STEP_MAX`] per cooldown: the least loaded instance is taken off the client
//!   list (draining), and stopped a grace period later so clients learn of it first. It keeps
//!   receiving invalidations until it is gone.
//!
//! Instances launched but not registered count as capacity for [`LAUNCH_REGISTER_TIMEOUT`],
//! then are stopped. An instance whose process the launcher saw exit is declared dead at once
//! (faster failover than waiting for its lease).

use crate::replica::launcher::{InstanceLauncher, LaunchSpec};
use crate::replica::registry::{Instance, Registry};
use crate::replica::settings::{ReplicaSettings, SCALE_DOWN_STEP_MAX, SCALE_UP_STEP_MAX};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a launched instance may take to register before it is given up.
pub const LAUNCH_REGISTER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a draining instance stays up after leaving the client list (clients refresh
/// their routing tables within this).
pub const DRAIN_GRACE: Duration = Duration::from_millis(1_000);
/// Load reports older than this many heartbeat intervals do not count.
const LOAD_REPORT_STALE_INTERVALS: u32 = 4;

#[derive(Default)]
struct DeploymentState {
    /// Launched, not yet registered: launch id -> when.
    pending: BTreeMap<u64, Instant>,
    /// Taken off the client list: launch id -> when, stopped after [`DRAIN_GRACE`].
    draining: BTreeMap<u64, Instant>,
    last_change: Option<Instant>,
    surplus_since: Option<Instant>,
}

/// One deployment's scaling decision, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub deployment: u32,
    pub demand: f64,
    pub current: u32,
    pub desired: u32,
}

pub struct Autoscaler {
    registry: Arc<Registry>,
    launcher: Arc<dyn InstanceLauncher>,
    settings: ReplicaSettings,
    mds_address: String,
    deployments: Vec<DeploymentState>,
    next_launch_id: u64,
}

/// Instances the load asks for, before clamping.
pub fn desired_instances(demand: f64, target_concurrency: f64) -> u32 {
    if demand <= 0.0 || target_concurrency <= 0.0 {
        return 0;
    }
    (demand / target_concurrency).ceil().min(f64::from(u32::MAX)) as u32
}

impl Autoscaler {
    pub fn new(
        registry: Arc<Registry>,
        launcher: Arc<dyn InstanceLauncher>,
        settings: ReplicaSettings,
        mds_address: String,
    ) -> Autoscaler {
        let deployments = (0..settings.deployments).map(|_| DeploymentState::default()).collect();
        Autoscaler { registry, launcher, settings, mds_address, deployments, next_launch_id: 1 }
    }

    /// Tick until `shutdown` turns true, then stop every launched instance.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.settings.autoscale_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            self.tick(Instant::now());
        }
        let launcher = self.launcher.clone();
        let _ = tokio::task::spawn_blocking(move || launcher.stop_all()).await;
    }

    /// One round of decisions.
    pub fn tick(&mut self, now: Instant) -> Vec<Decision> {
        self.launcher.poll();
        for lapsed in self.registry.remove_lapsed() {
            if lapsed.launch_id != 0 {
                self.launcher.stop(lapsed.launch_id);
            }
        }
        let (_, instances) = self.registry.snapshot();
        // Processes known to be gone stop counting now rather than at their lease's end.
        let mut serving: Vec<Vec<Instance>> = vec![Vec::new(); self.deployments.len()];
        for instance in instances {
            if instance.launch_id != 0 && self.launcher.has_exited(instance.launch_id) {
                self.registry.declare_dead(instance.id);
                continue;
            }
            let Some(state) = self.deployments.get_mut(instance.deployment as usize) else { continue };
            state.pending.remove(&instance.launch_id);
            if !instance.draining {
                serving[instance.deployment as usize].push(instance);
            }
        }
        let wakes = self.registry.take_wakes();
        let fresh = self.registry.heartbeat_interval() * LOAD_REPORT_STALE_INTERVALS;
        let mut decisions = Vec::new();
        for (deployment, serving) in serving.iter().enumerate() {
            let index = deployment as u32;
            self.expire_pending(deployment, now);
            self.stop_drained(deployment, now);
            let demand: f64 = serving
                .iter()
                .filter(|instance| instance.load_reported.is_some_and(|at| now.saturating_duration_since(at) <= fresh))
                .map(|instance| instance.load.demand_milli as f64 / 1000.0)
                .sum();
            let woken = wakes.contains(&index);
            let state = &self.deployments[deployment];
            let current = serving.len() as u32 + state.pending.len() as u32;
            let mut desired = desired_instances(demand, self.settings.target_concurrency);
            if woken {
                desired = desired.max(1);
            }
            let desired = desired.clamp(self.settings.min_instances, self.settings.max_instances);
            decisions.push(Decision { deployment: index, demand, current, desired });
            let cooled = state.last_change.is_none_or(|at| now.saturating_duration_since(at) >= self.settings.cooldown);
            if desired > current {
                self.deployments[deployment].surplus_since = None;
                if cooled || current < self.settings.min_instances {
                    self.launch(index, (desired - current).min(SCALE_UP_STEP_MAX), now);
                }
            } else if desired < current {
                let surplus_since = *self.deployments[deployment].surplus_since.get_or_insert(now);
                if now.saturating_duration_since(surplus_since) >= self.settings.idle && cooled {
                    self.drain(index, serving, (current - desired).min(SCALE_DOWN_STEP_MAX), now);
                }
            } else {
                self.deployments[deployment].surplus_since = None;
            }
        }
        decisions
    }

    fn launch(&mut self, deployment: u32, count: u32, now: Instant) {
        for _ in 0..count {
            let launch_id = self.next_launch_id;
            self.next_launch_id += 1;
            let spec = LaunchSpec {
                launch_id,
                deployment,
                mds_address: self.mds_address.clone(),
                options: self.settings.instance.clone(),
            };
            match self.launcher.launch(&spec) {
                Ok(()) => {
                    self.deployments[deployment as usize].pending.insert(launch_id, now);
                }
                Err(error) => tracing::warn!(deployment, %error, "launching a replica instance failed"),
            }
        }
        self.deployments[deployment as usize].last_change = Some(now);
        tracing::info!(deployment, count, "scaling replicas up");
    }

    /// Take the `count` least loaded launched instances off the client list.
    fn drain(&mut self, deployment: u32, serving: &[Instance], count: u32, now: Instant) {
        let mut candidates: Vec<&Instance> = serving.iter().filter(|instance| instance.launch_id != 0).collect();
        candidates.sort_by_key(|instance| (instance.load.demand_milli, std::cmp::Reverse(instance.registered)));
        let state = &mut self.deployments[deployment as usize];
        let mut drained = 0;
        for instance in candidates.into_iter().take(count as usize) {
            if self.registry.mark_draining(instance.id) {
                state.draining.insert(instance.launch_id, now);
                drained += 1;
            }
        }
        if drained > 0 {
            state.last_change = Some(now);
            tracing::info!(deployment, drained, "scaling replicas down");
        }
    }

    fn expire_pending(&mut self, deployment: usize, now: Instant) {
        let state = &mut self.deployments[deployment];
        let expired: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, launched)| now.saturating_duration_since(**launched) >= LAUNCH_REGISTER_TIMEOUT)
            .map(|(launch_id, _)| *launch_id)
            .collect();
        for launch_id in expired {
            tracing::warn!(deployment, launch_id, "replica instance did not register in time; stopping it");
            state.pending.remove(&launch_id);
            self.launcher.stop(launch_id);
        }
        // Pending launches whose process already died stop counting.
        let launcher = &self.launcher;
        state.pending.retain(|launch_id, _| !launcher.has_exited(*launch_id));
    }

    fn stop_drained(&mut self, deployment: usize, now: Instant) {
        let state = &mut self.deployments[deployment];
        let due: Vec<u64> = state
            .draining
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= DRAIN_GRACE)
            .map(|(launch_id, _)| *launch_id)
            .collect();
        for launch_id in due {
            state.draining.remove(&launch_id);
            self.launcher.stop(launch_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::launcher::LaunchError;
    use cudele_proto::replica_pb;
    use std::sync::Mutex;

    /// Registers every launched instance at once, as a well-behaved cluster would.
    struct FakeLauncher {
        registry: Arc<Registry>,
        launched: Mutex<Vec<(u64, u32, u64)>>,
        stopped: Mutex<Vec<u64>>,
    }

    impl InstanceLauncher for FakeLauncher {
        fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
            let id = self
                .registry
                .register(spec.deployment, format!("fake:{}", spec.launch_id), 1, spec.launch_id)
                .expect("register");
            self.launched.lock().expect("lock").push((spec.launch_id, spec.deployment, id));
            Ok(())
        }
        fn stop(&self, launch_id: u64) {
            self.stopped.lock().expect("lock").push(launch_id);
            let instance =
                self.launched.lock().expect("lock").iter().find(|(l, _, _)| *l == launch_id).map(|(_, _, id)| *id);
            if let Some(id) = instance {
                self.registry.deregister(id);
            }
        }
        fn has_exited(&self, launch_id: u64) -> bool {
            self.stopped.lock().expect("lock").contains(&launch_id)
        }
        fn stop_all(&self) {}
    }

    fn report(registry: &Registry, demand: f64) {
        let (_, instances) = registry.snapshot();
        for instance in instances {
            let load = replica_pb::InstanceLoad { demand_milli: (demand * 1000.0) as u64, ..Default::default() };
            registry.heartbeat(instance.id, Some(load));
        }
    }

    fn live(registry: &Registry) -> usize {
        registry.snapshot().1.iter().filter(|instance| !instance.draining).count()
    }

    /// The autoscaler starts min instances, scales up with load after the cooldown, and back
    /// down one at a time only after the surplus outlasts the idle period.
    #[test]
    fn scales_up_with_load_and_down_after_idle() {
        let registry = Arc::new(Registry::new(1, Duration::from_secs(3600), Duration::from_secs(60)));
        let launcher = Arc::new(FakeLauncher {
            registry: registry.clone(),
            launched: Mutex::default(),
            stopped: Mutex::default(),
        });
        let settings = ReplicaSettings {
            deployments: 1,
            min_instances: 1,
            max_instances: 4,
            target_concurrency: 2.0,
            cooldown: Duration::from_secs(1),
            idle: Duration::from_secs(5),
            ..ReplicaSettings::default()
        };
        let mut autoscaler = Autoscaler::new(registry.clone(), launcher.clone(), settings, "mds:1".into());
        let start = Instant::now();
        autoscaler.tick(start);
        assert_eq!(live(&registry), 1);
        // Demand 7 per instance x 1 instance = 7 -> 4 instances (ceil(7/2) = 4), after cooldown only.
        report(&registry, 7.0);
        let decisions = autoscaler.tick(start + Duration::from_millis(100));
        assert_eq!(decisions[0].desired, 4);
        assert_eq!(live(&registry), 1, "cooldown holds the change");
        report(&registry, 7.0);
        autoscaler.tick(start + Duration::from_millis(1100));
        assert_eq!(live(&registry), 4);
        // Less load: nothing happens before the surplus has lasted the idle period.
        report(&registry, 1.0);
        autoscaler.tick(start + Duration::from_millis(2200));
        assert_eq!(live(&registry), 4);
        report(&registry, 1.0);
        autoscaler.tick(start + Duration::from_millis(7300));
        assert_eq!(live(&registry), 2, "demand 4 x 1.0 = 4 wants 2 instances");
        report(&registry, 0.0);
        autoscaler.tick(start + Duration::from_millis(7400));
        assert_eq!(live(&registry), 2, "cooldown spaces scale-down steps");
        for step in 0..10 {
            report(&registry, 0.0);
            autoscaler.tick(start + Duration::from_millis(8500 + 1100 * step));
        }
        assert_eq!(live(&registry), 1, "min holds");
        assert_eq!(desired_instances(0.0, 2.0), 0);
        assert_eq!(desired_instances(4.01, 2.0), 3);
    }
}
