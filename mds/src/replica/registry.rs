//! The MDS's registry of replica instances: which instances are live in which deployment,
//! their leases, and the load they report.
//!
//! An instance is either registered and live — every invalidation of its deployment goes to
//! it — or gone, and then it must drop its cache and register again before it caches
//! anything. There is no third state: an instance whose lease ran out is removed the moment
//! anyone notices (a heartbeat, a target lookup, the autoscaler), so a late heartbeat cannot
//! revive an instance that missed invalidations.

use crate::replica::settings::INSTANCES_TOTAL_MAX;
use cudele_proto::replica_pb;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub type InstanceId = u64;

/// Deployments that may wake one at a time (requests from clients that found no instance).
const WAKE_REQUESTS_MAX: usize = 1024;
/// Stopped instances whose last counters are kept one by one; past it they are folded into
/// per-deployment sums.
const RETIRED_INSTANCES_MAX: usize = 4096;

/// One registered instance.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: InstanceId,
    pub deployment: u32,
    pub address: String,
    pub pid: u32,
    /// The autoscaler's launch id, 0 for an instance started by hand.
    pub launch_id: u64,
    pub registered: Instant,
    /// Last heartbeat received plus the lease: the instance stops using its cache before.
    pub lease_expires: Instant,
    /// Being stopped: no longer listed for clients, still invalidated until it is gone.
    pub draining: bool,
    pub load: replica_pb::InstanceLoad,
    pub load_reported: Option<Instant>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("replicas are off on this MDS (--replica-deployments 0)")]
    Disabled,
    #[error("deployment {0} does not exist (the MDS has {1})")]
    NoSuchDeployment(u32, u32),
    #[error("too many instances registered ({INSTANCES_TOTAL_MAX})")]
    Full,
    #[error("an instance must register with the address it serves on")]
    NoAddress,
}

/// Counters an instance reports (cumulative over its process's life), summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedTotals {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub rejected: u64,
}

impl ServedTotals {
    fn of(load: &replica_pb::InstanceLoad) -> ServedTotals {
        ServedTotals {
            requests: load.requests_total,
            hits: load.hits_total,
            misses: load.misses_total,
            invalidations: load.invalidations_total,
            rejected: load.rejected_total,
        }
    }

    fn add(&mut self, other: &ServedTotals) {
        self.requests += other.requests;
        self.hits += other.hits;
        self.misses += other.misses;
        self.invalidations += other.invalidations;
        self.rejected += other.rejected;
    }

    fn max(self, other: ServedTotals) -> ServedTotals {
        ServedTotals {
            requests: self.requests.max(other.requests),
            hits: self.hits.max(other.hits),
            misses: self.misses.max(other.misses),
            invalidations: self.invalidations.max(other.invalidations),
            rejected: self.rejected.max(other.rejected),
        }
    }
}

/// One process, across its registrations (an instance that lost its registration registers
/// again under a new id, and its counters go on from where they were).
type ProcessKey = (u32, String, u32);

fn process_key(instance: &Instance) -> ProcessKey {
    (instance.deployment, instance.address.clone(), instance.pid)
}

struct RegistryState {
    instances: BTreeMap<InstanceId, Instance>,
    next_id: InstanceId,
    epoch: u64,
    wakes: Vec<u32>,
    /// Per deployment: instances launched, not registered yet (the autoscaler publishes it).
    launching: Vec<u32>,
    /// Last counters of processes with no live registration.
    retired: BTreeMap<ProcessKey, ServedTotals>,
    /// Per deployment: counters of retired processes folded away past [`RETIRED_INSTANCES_MAX`].
    folded: BTreeMap<u32, ServedTotals>,
    registrations: u64,
}

impl RegistryState {
    /// An instance left: keep what it served.
    fn retire(&mut self, instance: &Instance) {
        if self.retired.len() >= RETIRED_INSTANCES_MAX {
            for ((deployment, _, _), totals) in std::mem::take(&mut self.retired) {
                self.folded.entry(deployment).or_default().add(&totals);
            }
        }
        let totals = ServedTotals::of(&instance.load);
        let kept = self.retired.entry(process_key(instance)).or_default();
        *kept = kept.max(totals);
    }
}

pub struct Registry {
    deployments: u32,
    lease: Duration,
    heartbeat_interval: Duration,
    state: Mutex<RegistryState>,
}

impl Registry {
    pub fn new(deployments: u32, lease: Duration, heartbeat_interval: Duration) -> Registry {
        Registry {
            deployments,
            lease,
            heartbeat_interval,
            state: Mutex::new(RegistryState {
                instances: BTreeMap::new(),
                next_id: 1,
                epoch: 1,
                wakes: Vec::new(),
                launching: vec![0; deployments as usize],
                retired: BTreeMap::new(),
                folded: BTreeMap::new(),
                registrations: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().expect("replica registry lock poisoned")
    }

    pub fn deployments(&self) -> u32 {
        self.deployments
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    pub fn is_empty(&self) -> bool {
        self.lock().instances.is_empty()
    }

    pub fn register(
        &self,
        deployment: u32,
        address: String,
        pid: u32,
        launch_id: u64,
    ) -> Result<InstanceId, RegisterError> {
        if self.deployments == 0 {
            return Err(RegisterError::Disabled);
        }
        if deployment >= self.deployments {
            return Err(RegisterError::NoSuchDeployment(deployment, self.deployments));
        }
        if address.is_empty() {
            return Err(RegisterError::NoAddress);
        }
        let mut state = self.lock();
        remove_lapsed(&mut state, Instant::now());
        if state.instances.len() >= INSTANCES_TOTAL_MAX {
            return Err(RegisterError::Full);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.epoch += 1;
        state.registrations += 1;
        let now = Instant::now();
        state.instances.insert(
            id,
            Instance {
                id,
                deployment,
                address,
                pid,
                launch_id,
                registered: now,
                lease_expires: now + self.lease,
                draining: false,
                load: replica_pb::InstanceLoad::default(),
                load_reported: None,
            },
        );
        Ok(id)
    }

    /// Renew the lease and record the load; false if the instance is not registered (any
    /// more): it must drop its cache and register again.
    pub fn heartbeat(&self, id: InstanceId, load: Option<replica_pb::InstanceLoad>) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        remove_lapsed(&mut state, now);
        let Some(instance) = state.instances.get_mut(&id) else { return false };
        instance.lease_expires = now + self.lease;
        if let Some(load) = load {
            instance.load = load;
            instance.load_reported = Some(now);
        }
        true
    }

    pub fn deregister(&self, id: InstanceId) -> Option<Instance> {
        self.deregister_reporting(id, None)
    }

    /// Deregister with the instance's final load report (so nothing it served is lost).
    pub fn deregister_reporting(&self, id: InstanceId, load: Option<replica_pb::InstanceLoad>) -> Option<Instance> {
        let mut state = self.lock();
        let mut removed = state.instances.remove(&id);
        if let Some(instance) = &mut removed {
            if let Some(load) = load {
                instance.load = load;
            }
            state.retire(instance);
            state.epoch += 1;
        }
        removed
    }

    /// What each deployment's instances served (hits, misses, ...), live and gone, as of
    /// their last reports; indexed by deployment.
    pub fn served_totals(&self) -> Vec<ServedTotals> {
        let mut state = self.lock();
        remove_lapsed(&mut state, Instant::now());
        let mut totals = vec![ServedTotals::default(); self.deployments as usize];
        let live: std::collections::BTreeSet<ProcessKey> = state.instances.values().map(process_key).collect();
        let mut add = |deployment: u32, served: &ServedTotals| {
            if let Some(sum) = totals.get_mut(deployment as usize) {
                sum.add(served);
            }
        };
        for (deployment, served) in &state.folded {
            add(*deployment, served);
        }
        for (key, served) in &state.retired {
            // A process registered again reports its whole life itself.
            if !live.contains(key) {
                add(key.0, served);
            }
        }
        for instance in state.instances.values() {
            add(instance.deployment, &ServedTotals::of(&instance.load));
        }
        totals
    }

    /// Registrations accepted since the MDS started.
    pub fn registrations(&self) -> u64 {
        self.lock().registrations
    }

    /// Remove an instance that failed to acknowledge an invalidation. Returns it, so the
    /// caller can wait out its lease before acknowledging the write.
    pub fn declare_dead(&self, id: InstanceId) -> Option<Instance> {
        let removed = self.deregister(id);
        if let Some(instance) = &removed {
            tracing::warn!(instance = id, address = %instance.address, "replica instance declared dead");
        }
        removed
    }

    /// Remove instances whose lease ran out; returns them.
    pub fn remove_lapsed(&self) -> Vec<Instance> {
        remove_lapsed(&mut self.lock(), Instant::now())
    }

    /// Stop listing an instance for clients (it is being stopped). False if unknown.
    pub fn mark_draining(&self, id: InstanceId) -> bool {
        let mut state = self.lock();
        let Some(instance) = state.instances.get_mut(&id) else { return false };
        if !instance.draining {
            instance.draining = true;
            state.epoch += 1;
        }
        true
    }

    /// Every live instance of the deployments for which `wanted` is true.
    pub fn live_in(&self, wanted: impl Fn(u32) -> bool) -> Vec<Instance> {
        let mut state = self.lock();
        remove_lapsed(&mut state, Instant::now());
        state.instances.values().filter(|instance| wanted(instance.deployment)).cloned().collect()
    }

    /// The epoch and every registered instance (draining ones included).
    pub fn snapshot(&self) -> (u64, Vec<Instance>) {
        let mut state = self.lock();
        remove_lapsed(&mut state, Instant::now());
        (state.epoch, state.instances.values().cloned().collect())
    }

    /// A client found no instance of `deployment`.
    pub fn wake(&self, deployment: u32) {
        if deployment >= self.deployments {
            return;
        }
        let mut state = self.lock();
        if state.wakes.len() < WAKE_REQUESTS_MAX && !state.wakes.contains(&deployment) {
            state.wakes.push(deployment);
        }
    }

    pub fn take_wakes(&self) -> Vec<u32> {
        std::mem::take(&mut self.lock().wakes)
    }

    /// The autoscaler's count of instances of `deployment` launched and not registered yet.
    pub fn set_launching(&self, deployment: u32, count: u32) {
        if let Some(launching) = self.lock().launching.get_mut(deployment as usize) {
            *launching = count;
        }
    }

    /// Per deployment: instances launched and not registered yet.
    pub fn launching(&self) -> Vec<u32> {
        self.lock().launching.clone()
    }
}

fn remove_lapsed(state: &mut RegistryState, now: Instant) -> Vec<Instance> {
    let lapsed: Vec<InstanceId> =
        state.instances.values().filter(|instance| instance.lease_expires <= now).map(|instance| instance.id).collect();
    let mut removed = Vec::new();
    for id in lapsed {
        if let Some(instance) = state.instances.remove(&id) {
            tracing::info!(instance = id, address = %instance.address, "replica instance lease expired");
            state.retire(&instance);
            removed.push(instance);
        }
    }
    if !removed.is_empty() {
        state.epoch += 1;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat after the lease ran out does not revive the instance: it must register
    /// again (and so drop whatever it cached while invalidations were not reaching it).
    #[test]
    fn lapsed_instance_cannot_be_revived_by_a_late_heartbeat() {
        let registry = Registry::new(2, Duration::from_millis(30), Duration::from_millis(10));
        let id = registry.register(1, "127.0.0.1:1".into(), 1, 0).expect("register");
        assert!(registry.heartbeat(id, None));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!registry.heartbeat(id, None));
        assert!(registry.live_in(|_| true).is_empty());
    }

    /// Registration checks the deployment and that the feature is on; the epoch moves with
    /// membership.
    #[test]
    fn registration_is_validated_and_moves_the_epoch() {
        let off = Registry::new(0, Duration::from_secs(1), Duration::from_millis(100));
        assert_eq!(off.register(0, "a:1".into(), 1, 0), Err(RegisterError::Disabled));
        let registry = Registry::new(2, Duration::from_secs(10), Duration::from_millis(100));
        assert_eq!(registry.register(2, "a:1".into(), 1, 0), Err(RegisterError::NoSuchDeployment(2, 2)));
        let (epoch, _) = registry.snapshot();
        let id = registry.register(0, "a:1".into(), 1, 0).expect("register");
        let (after, instances) = registry.snapshot();
        assert!(after > epoch);
        assert_eq!(instances.len(), 1);
        assert_eq!(registry.live_in(|deployment| deployment == 1).len(), 0);
        assert!(registry.declare_dead(id).is_some());
        assert!(!registry.heartbeat(id, None));
    }

    /// Served totals include instances that left, and a process that registers again is
    /// counted once (its counters cover its whole life).
    #[test]
    fn served_totals_survive_departures_without_double_counting() {
        let registry = Registry::new(2, Duration::from_secs(10), Duration::from_millis(100));
        let load =
            |hits, misses| replica_pb::InstanceLoad { hits_total: hits, misses_total: misses, ..Default::default() };
        let first = registry.register(0, "a:1".into(), 10, 0).expect("register");
        let other = registry.register(1, "b:1".into(), 11, 0).expect("register");
        assert!(registry.heartbeat(first, Some(load(5, 1))));
        assert!(registry.heartbeat(other, Some(load(2, 2))));
        // Lost its registration, then came back as a new instance of the same process.
        registry.declare_dead(first).expect("dead");
        let again = registry.register(0, "a:1".into(), 10, 0).expect("register again");
        assert!(registry.heartbeat(again, Some(load(9, 3))));
        let totals = registry.served_totals();
        assert_eq!((totals[0].hits, totals[0].misses), (9, 3));
        assert_eq!((totals[1].hits, totals[1].misses), (2, 2));
        // Stopped for good, with a final report.
        registry.deregister_reporting(again, Some(load(12, 3))).expect("deregister");
        let totals = registry.served_totals();
        assert_eq!((totals[0].hits, totals[0].misses), (12, 3));
        assert_eq!(registry.registrations(), 3);
    }
}
