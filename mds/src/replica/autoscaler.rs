//! The autoscaler: per deployment, how many replica instances run, from the load they report
//! (after Knative's KPA, which λFS §3.5 builds on: a stable window and a panic window).
//!
//! Every tick ([`ReplicaSettings::autoscale_interval`]) and for each deployment:
//! - demand = the sum over its instances (draining ones too: they still serve until clients
//!   drop them) of their average concurrency — requests in service or waiting, integrated
//!   over their last heartbeat interval; it is recorded in a per-deployment history;
//! - stable demand = its average over [`ReplicaSettings::stable_window`], panic demand = its
//!   average over the shorter [`ReplicaSettings::panic_window`];
//! - panic starts when the panic demand reaches [`ReplicaSettings::panic_threshold`] times
//!   what the current instances should carry (current x target concurrency), and lasts a
//!   stable window after the last such tick;
//! - desired = ceil(stable demand / target concurrency); in panic the larger of that, the
//!   panic window's count and the current count (no scale-down in panic); a client that
//!   found no instance at all (wake) asks for at least one; the last instance stays until the
//!   deployment has had no demand for [`ReplicaSettings::idle`] (idle reap, with min 0);
//!   clamped to [min, max];
//! - the count moves towards desired, in both directions, at most [`SCALE_UP_STEP_MAX`] /
//!   [`SCALE_DOWN_STEP_MAX`] instances per decision and one decision per cooldown (a
//!   deployment below min or at zero launches at once). Scaling down takes the least loaded
//!   instances off the client list (draining) and stops them a grace period later, so
//!   clients learn of it first; they receive invalidations until they are gone.
//!
//! Because both directions follow the same averaged demand, a short burst no longer ratchets
//! the count up for a whole idle period, and a drop in load releases instances as soon as
//! the stable average shows it rather than after a fixed wait.
//!
//! Instances launched but not registered count as capacity for [`LAUNCH_REGISTER_TIMEOUT`],
//! then are stopped. An instance whose process the launcher saw exit is declared dead at once
//! (faster failover than waiting for its lease).

use crate::replica::launcher::{InstanceLauncher, LaunchSpec};
use crate::replica::registry::{Instance, Registry};
use crate::replica::settings::{ReplicaSettings, SCALE_DOWN_STEP_MAX, SCALE_UP_STEP_MAX};
use std::collections::{BTreeMap, VecDeque};
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
/// Demand samples kept per deployment (one per tick; the stable window needs fewer).
const DEMAND_SAMPLES_MAX: usize = 4096;

#[derive(Default)]
struct DeploymentState {
    /// Launched, not yet registered: launch id -> when.
    pending: BTreeMap<u64, Instant>,
    /// Taken off the client list: launch id -> when, stopped after [`DRAIN_GRACE`].
    draining: BTreeMap<u64, Instant>,
    last_change: Option<Instant>,
    /// Demand at each tick, oldest first, no older than the stable window.
    demand_history: VecDeque<(Instant, f64)>,
    /// In panic until then: no scale-down.
    panic_until: Option<Instant>,
    /// Last tick with demand or a wake (the idle reap counts from it).
    last_active: Option<Instant>,
}

impl DeploymentState {
    fn record_demand(&mut self, now: Instant, demand: f64, window: Duration) {
        self.demand_history.push_back((now, demand));
        while self.demand_history.len() > DEMAND_SAMPLES_MAX
            || self.demand_history.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            self.demand_history.pop_front();
        }
    }

    /// Mean demand of the ticks younger than `window` (0 without any).
    fn average_demand(&self, now: Instant, window: Duration) -> f64 {
        let (sum, count) = self
            .demand_history
            .iter()
            .rev()
            .take_while(|(at, _)| now.saturating_duration_since(*at) < window)
            .fold((0.0, 0u32), |(sum, count), (_, demand)| (sum + demand, count + 1));
        if count == 0 {
            0.0
        } else {
            sum / f64::from(count)
        }
    }
}

/// One deployment's scaling decision, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub deployment: u32,
    /// Reported at this tick.
    pub demand: f64,
    /// Averaged over the stable and the panic window.
    pub stable_demand: f64,
    pub panic_demand: f64,
    pub panicking: bool,
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
        let mut reporting: Vec<Vec<Instance>> = vec![Vec::new(); self.deployments.len()];
        for instance in instances {
            if instance.launch_id != 0 && self.launcher.has_exited(instance.launch_id) {
                self.registry.declare_dead(instance.id);
                continue;
            }
            let Some(state) = self.deployments.get_mut(instance.deployment as usize) else { continue };
            state.pending.remove(&instance.launch_id);
            if !instance.draining {
                serving[instance.deployment as usize].push(instance.clone());
            }
            reporting[instance.deployment as usize].push(instance);
        }
        let wakes = self.registry.take_wakes();
        let fresh = self.registry.heartbeat_interval() * LOAD_REPORT_STALE_INTERVALS;
        let mut decisions = Vec::new();
        for (deployment, serving) in serving.iter().enumerate() {
            let index = deployment as u32;
            self.expire_pending(deployment, now);
            self.stop_drained(deployment, now);
            let demand: f64 = reporting[deployment]
                .iter()
                .filter(|instance| instance.load_reported.is_some_and(|at| now.saturating_duration_since(at) <= fresh))
                .map(|instance| instance.load.demand_milli as f64 / 1000.0)
                .sum();
            let woken = wakes.contains(&index);
            let settings = &self.settings;
            let target = settings.target_concurrency;
            let state = &mut self.deployments[deployment];
            let current = serving.len() as u32 + state.pending.len() as u32;
            state.record_demand(now, demand, settings.stable_window);
            if demand > 0.0 || woken {
                state.last_active = Some(now);
            }
            let stable_demand = state.average_demand(now, settings.stable_window);
            let panic_demand = state.average_demand(now, settings.panic_window);
            if panic_demand > 0.0 && panic_demand >= settings.panic_threshold * target * f64::from(current) {
                state.panic_until = Some(now + settings.stable_window);
            }
            let panicking = state.panic_until.is_some_and(|until| now < until);
            let mut desired = desired_instances(stable_demand, target);
            if panicking {
                desired = desired.max(desired_instances(panic_demand, target)).max(current);
            }
            if woken {
                desired = desired.max(1);
            }
            let recently_active = state.last_active.is_some_and(|at| now.saturating_duration_since(at) < settings.idle);
            if desired == 0 && current > 0 && recently_active {
                desired = 1;
            }
            let desired = desired.clamp(settings.min_instances, settings.max_instances);
            decisions.push(Decision {
                deployment: index,
                demand,
                stable_demand,
                panic_demand,
                panicking,
                current,
                desired,
            });
            let cooled = state.last_change.is_none_or(|at| now.saturating_duration_since(at) >= settings.cooldown);
            if desired > current {
                if cooled || current < settings.min_instances || current == 0 {
                    self.launch(index, (desired - current).min(SCALE_UP_STEP_MAX), now);
                }
            } else if desired < current && cooled {
                self.drain(index, serving, (current - desired).min(SCALE_DOWN_STEP_MAX), now);
            }
            self.registry.set_launching(index, self.deployments[deployment].pending.len() as u32);
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

    fn autoscaler(settings: ReplicaSettings) -> (Arc<Registry>, Autoscaler) {
        let registry = Arc::new(Registry::new(1, Duration::from_secs(3600), Duration::from_secs(60)));
        let launcher = Arc::new(FakeLauncher {
            registry: registry.clone(),
            launched: Mutex::default(),
            stopped: Mutex::default(),
        });
        let autoscaler = Autoscaler::new(registry.clone(), launcher, settings, "mds:1".into());
        (registry, autoscaler)
    }

    fn at(start: Instant, milliseconds: u64) -> Instant {
        start + Duration::from_millis(milliseconds)
    }

    /// A burst panics the autoscaler into scaling up after the cooldown without waiting for
    /// the stable window; it does not scale down in panic, then goes straight to what the
    /// stable demand needs, and never below min.
    #[test]
    fn panics_up_on_a_burst_and_scales_down_to_the_stable_demand() {
        let settings = ReplicaSettings {
            deployments: 1,
            min_instances: 1,
            max_instances: 4,
            target_concurrency: 2.0,
            cooldown: Duration::from_secs(1),
            stable_window: Duration::from_secs(4),
            panic_window: Duration::from_secs(1),
            panic_threshold: 2.0,
            idle: Duration::from_secs(5),
            ..ReplicaSettings::default()
        };
        let (registry, mut autoscaler) = autoscaler(settings);
        let start = Instant::now();
        autoscaler.tick(start);
        assert_eq!(live(&registry), 1);
        // Demand 7 on one instance: the panic window (with the idle tick before) says 3.5,
        // short of 2 x 2.0 x 1; the stable window wants 2, but the cooldown holds it.
        report(&registry, 7.0);
        let decisions = autoscaler.tick(at(start, 500));
        assert!(!decisions[0].panicking);
        assert_eq!(decisions[0].desired, 2);
        assert_eq!(live(&registry), 1, "cooldown holds the change");
        // Demand 7 over the whole panic window: panic, ceil(7 / 2) = 4 at once.
        report(&registry, 7.0);
        let decisions = autoscaler.tick(at(start, 1100));
        assert!(decisions[0].panicking);
        assert_eq!(decisions[0].desired, 4);
        assert_eq!(live(&registry), 4);
        // The load drops to 1 per instance (4 in all): no scale-down while in panic.
        report(&registry, 1.0);
        let decisions = autoscaler.tick(at(start, 2200));
        assert!(decisions[0].panicking);
        assert_eq!(live(&registry), 4, "no scale-down in panic");
        // Panic over (a stable window after its last tick): the stable average is 4, which
        // wants 2 instances, and the autoscaler goes there in one step.
        report(&registry, 1.0);
        let decisions = autoscaler.tick(at(start, 5200));
        assert!(!decisions[0].panicking);
        assert!((decisions[0].stable_demand - 4.0).abs() < 1e-9, "{decisions:?}");
        assert_eq!(live(&registry), 2, "demand 4 / target 2.0 wants 2 instances");
        report(&registry, 0.0);
        autoscaler.tick(at(start, 5400));
        assert_eq!(live(&registry), 2, "cooldown spaces scaling decisions");
        for step in 0..10 {
            report(&registry, 0.0);
            autoscaler.tick(at(start, 6500 + 1100 * step));
        }
        assert_eq!(live(&registry), 1, "min holds");
        assert_eq!(desired_instances(0.0, 2.0), 0);
        assert_eq!(desired_instances(4.01, 2.0), 3);
    }

    /// Demand that hovers around what the instances carry (250 ms reports alternating
    /// between 1.5 and 2.4, 1.95 on average, target 1.0 x 2 instances) neither panics nor
    /// ratchets the count up on its peaks.
    #[test]
    fn noisy_demand_does_not_ratchet_the_count_up() {
        let settings = ReplicaSettings {
            deployments: 1,
            min_instances: 2,
            max_instances: 4,
            target_concurrency: 1.0,
            cooldown: Duration::from_millis(500),
            ..ReplicaSettings::default()
        };
        let (registry, mut autoscaler) = autoscaler(settings);
        let start = Instant::now();
        autoscaler.tick(start);
        for step in 0..80u64 {
            report(&registry, if step % 2 == 0 { 0.75 } else { 1.2 });
            let decisions = autoscaler.tick(at(start, 250 * (step + 1)));
            assert!(!decisions[0].panicking, "step {step}: {decisions:?}");
            assert_eq!(live(&registry), 2, "step {step}: {decisions:?}");
        }
    }

    /// With min 0 a deployment keeps its last instance until it has had no demand for the
    /// idle period, then runs none; a wake (a client that found no instance) starts one at
    /// once, cooldown or not.
    #[test]
    fn scales_to_zero_after_idle_and_wakes_at_once() {
        let settings = ReplicaSettings {
            deployments: 1,
            min_instances: 0,
            max_instances: 4,
            target_concurrency: 1.0,
            cooldown: Duration::from_secs(1),
            stable_window: Duration::from_secs(1),
            panic_window: Duration::from_millis(500),
            idle: Duration::from_secs(2),
            ..ReplicaSettings::default()
        };
        let (registry, mut autoscaler) = autoscaler(settings);
        let start = Instant::now();
        autoscaler.tick(start);
        assert_eq!(live(&registry), 0, "nothing runs before anyone asks");
        registry.wake(0);
        autoscaler.tick(at(start, 100));
        assert_eq!(live(&registry), 1, "a wake starts an instance");
        report(&registry, 0.5);
        autoscaler.tick(at(start, 200));
        let mut milliseconds = 200;
        while milliseconds < 2100 {
            milliseconds += 100;
            report(&registry, 0.0);
            autoscaler.tick(at(start, milliseconds));
            assert_eq!(live(&registry), 1, "the last instance stays within the idle period ({milliseconds} ms)");
        }
        report(&registry, 0.0);
        autoscaler.tick(at(start, 2300));
        assert_eq!(live(&registry), 0, "idle for 2 s: scaled to zero");
        registry.wake(0);
        autoscaler.tick(at(start, 2400));
        assert_eq!(live(&registry), 1, "woken from zero within the cooldown");
    }

    /// Launched instances count as launching (published in the registry, which the
    /// deployments list and `cudele status` show) until they register.
    #[test]
    fn launched_instances_count_as_launching_until_they_register() {
        struct SlowLauncher(Mutex<Vec<LaunchSpec>>);
        impl InstanceLauncher for SlowLauncher {
            fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
                self.0.lock().expect("lock").push(spec.clone());
                Ok(())
            }
            fn stop(&self, _launch_id: u64) {}
            fn has_exited(&self, _launch_id: u64) -> bool {
                false
            }
            fn stop_all(&self) {}
        }
        let registry = Arc::new(Registry::new(2, Duration::from_secs(3600), Duration::from_secs(60)));
        let launcher = Arc::new(SlowLauncher(Mutex::default()));
        let settings =
            ReplicaSettings { deployments: 2, min_instances: 2, max_instances: 4, ..ReplicaSettings::default() };
        let mut autoscaler = Autoscaler::new(registry.clone(), launcher.clone(), settings, "mds:1".into());
        let start = Instant::now();
        autoscaler.tick(start);
        assert_eq!(registry.launching(), vec![2, 2]);
        let specs = launcher.0.lock().expect("lock").clone();
        let first = specs.iter().find(|spec| spec.deployment == 1).expect("a launch for deployment 1");
        registry.register(1, "slow:1".into(), 1, first.launch_id).expect("register");
        autoscaler.tick(at(start, 100));
        assert_eq!(registry.launching(), vec![2, 1], "the registered one is no longer launching");
        assert_eq!(launcher.0.lock().expect("lock").len(), 4, "launching instances count as capacity");
    }
}
