//! Replica coherence on the MDS (λFS §3.5, Algorithm 1): before a mutation is acknowledged,
//! every live instance of each affected deployment drops what the mutation changed and
//! acknowledges; an instance that does not acknowledge in time is declared dead, and the
//! write waits until that instance's lease has run out (it stops serving from its cache by
//! itself before then), unless its launcher knows its process is gone.
//!
//! Which deployments, computed under the namespace lock right after the event is applied
//! (so no later mutation can have moved anything yet) by [`Coherence::plan`]:
//! - each touched directory entry `(parent, name)` -> the deployment of `parent` (entries
//!   and listing pages are keyed by their directory);
//! - each touched inode that still exists -> the deployment of its home, the
//!   `InodeRecord::parent` the MDS records (attributes are keyed by it). The home only changes
//!   by rename, which also touches the old entry, so the old home's deployment is targeted too;
//! - touched inodes that no longer exist -> every deployment (their home is gone with them,
//!   and removal must reach attributes, entries and listings keyed by them);
//! - a renamed directory and a decoupled one -> a subtree invalidation in every deployment
//!   (what is allowed below it — EBUSY in a blocking decoupled subtree — changed).
//!
//! Every targeted instance receives the whole set of keys; dropping more than needed is safe.
//!
//! Invariant: when a mutation's acknowledgement leaves the MDS, no instance that could serve
//! a value older than it still holds that value — it dropped it and ACKed, or its lease ran
//! out, or its process is gone.

use crate::replica::launcher::InstanceLauncher;
use crate::replica::registry::{Instance, InstanceId, Registry};
use cudele_journal::{Event, Ino};
use cudele_namespace::{Namespace, Touched};
use cudele_proto::partition::deployment_of;
use cudele_proto::pb;
use cudele_proto::replica_pb::{self, replica_client::ReplicaClient};
use cudele_proto::routing::{lazy_channel, Headers, ReplicaApi};
use cudele_proto::transport::ClientTls;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a write waiting out a dead instance's lease asks whether its process exited.
const FENCE_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Channels to instances kept before unused ones are pruned.
const INSTANCE_CLIENTS_MAX: usize = 1024;

/// What one mutation must invalidate in the replicas.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InvalidationPlan {
    /// Every deployment (removals, subtrees), else only `deployments`.
    pub all: bool,
    pub deployments: BTreeSet<u32>,
    pub inodes: Vec<Ino>,
    pub entries: Vec<(Ino, Vec<u8>)>,
    pub removed: Vec<Ino>,
    pub subtrees: Vec<Ino>,
}

impl InvalidationPlan {
    fn targets(&self, deployment: u32) -> bool {
        self.all || self.deployments.contains(&deployment)
    }
}

/// Counters for status and tests.
#[derive(Debug, Default)]
pub struct CoherenceStats {
    pub invalidations_sent: AtomicU64,
    pub instances_declared_dead: AtomicU64,
    pub fence_waits: AtomicU64,
}

pub struct Coherence {
    registry: Arc<Registry>,
    launcher: Option<Arc<dyn InstanceLauncher>>,
    ack_timeout: Duration,
    token: Option<String>,
    /// The CA that issued the instances' certificates (None: plaintext to instances).
    tls: Option<ClientTls>,
    clients: Mutex<HashMap<InstanceId, ReplicaApi>>,
    next_invalidation: AtomicU64,
    pub stats: CoherenceStats,
}

impl Coherence {
    pub fn new(
        registry: Arc<Registry>,
        launcher: Option<Arc<dyn InstanceLauncher>>,
        ack_timeout: Duration,
        token: Option<String>,
    ) -> Coherence {
        Coherence {
            registry,
            launcher,
            ack_timeout,
            token,
            tls: None,
            clients: Mutex::new(HashMap::new()),
            next_invalidation: AtomicU64::new(1),
            stats: CoherenceStats::default(),
        }
    }

    /// Dial instances over TLS, verifying them with this CA.
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Coherence {
        self.tls = tls;
        self
    }

    /// Replicas off: plans are always empty.
    pub fn disabled() -> Coherence {
        Coherence::new(
            Arc::new(Registry::new(0, Duration::from_secs(1), Duration::from_secs(1))),
            None,
            Duration::from_secs(1),
            None,
        )
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// What the just-applied `events` (which changed `touched`) invalidate. Call under the
    /// namespace lock, right after applying. None when nothing needs to be sent: replicas
    /// off, no instance registered (one registering later fills after this mutation), or
    /// nothing cached could have changed.
    pub fn plan<'a>(
        &self,
        namespace: &Namespace,
        touched: &Touched,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Option<InvalidationPlan> {
        let deployments = self.registry.deployments();
        if deployments == 0 || self.registry.is_empty() {
            return None;
        }
        Some(plan_invalidation(namespace, touched, events, deployments)).filter(|plan| {
            !(plan.inodes.is_empty() && plan.entries.is_empty() && plan.removed.is_empty() && plan.subtrees.is_empty())
        })
    }

    fn client(&self, instance: &Instance) -> Option<ReplicaApi> {
        let mut clients = self.clients.lock().expect("replica clients lock poisoned");
        if let Some(client) = clients.get(&instance.id) {
            return Some(client.clone());
        }
        if clients.len() >= INSTANCE_CLIENTS_MAX {
            let (_, live) = self.registry.snapshot();
            clients.retain(|id, _| live.iter().any(|instance| instance.id == *id));
        }
        let channel = match lazy_channel(&instance.address, self.tls.as_ref()) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(address = %instance.address, %error, "bad replica address");
                return None;
            }
        };
        let client = ReplicaClient::with_interceptor(channel, Headers { token: self.token.clone(), session: None });
        clients.insert(instance.id, client.clone());
        Some(client)
    }

    fn forget_client(&self, id: InstanceId) {
        self.clients.lock().expect("replica clients lock poisoned").remove(&id);
    }

    /// Send the plan to every live instance it targets and wait for their ACKs; declare the
    /// silent ones dead and wait out their leases. Returns once no instance can serve what
    /// the mutation changed.
    pub async fn invalidate(&self, plan: Option<InvalidationPlan>) {
        let Some(plan) = plan else { return };
        let targets = self.registry.live_in(|deployment| plan.targets(deployment));
        if targets.is_empty() {
            return;
        }
        let id = self.next_invalidation.fetch_add(1, Ordering::Relaxed);
        let request = replica_pb::InvalidateRequest {
            instance: 0,
            id,
            inodes: plan.inodes.clone(),
            entries: plan
                .entries
                .iter()
                .map(|(parent, name)| pb::EntryInvalidation { parent: *parent, name: name.clone() })
                .collect(),
            removed: plan.removed.clone(),
            subtrees: plan.subtrees.clone(),
        };
        let sends = targets.iter().map(|instance| {
            let client = self.client(instance);
            let request = replica_pb::InvalidateRequest { instance: instance.id, ..request.clone() };
            async move {
                let Some(mut client) = client else { return false };
                match tokio::time::timeout(self.ack_timeout, client.invalidate(request)).await {
                    Ok(Ok(reply)) => reply.into_inner().id == id,
                    Ok(Err(status)) => {
                        tracing::debug!(instance = instance.id, %status, "invalidation failed");
                        false
                    }
                    Err(_) => false,
                }
            }
        });
        let acknowledged = futures::future::join_all(sends).await;
        self.stats.invalidations_sent.fetch_add(targets.len() as u64, Ordering::Relaxed);
        // Instances that did not acknowledge: (launch id, lease end).
        let mut fenced = Vec::new();
        for (instance, acknowledged) in targets.iter().zip(acknowledged) {
            if acknowledged {
                continue;
            }
            self.forget_client(instance.id);
            // Already gone (deregistered or lapsed meanwhile) counts as dead too.
            let dead = self.registry.declare_dead(instance.id).unwrap_or_else(|| instance.clone());
            self.stats.instances_declared_dead.fetch_add(1, Ordering::Relaxed);
            fenced.push((dead.launch_id, dead.lease_expires));
        }
        if !fenced.is_empty() {
            self.stats.fence_waits.fetch_add(1, Ordering::Relaxed);
            self.wait_out(fenced).await;
        }
    }

    /// Return once every fenced instance's lease has run out or its launcher has seen its
    /// process exit (a killed process takes a moment to be reaped, so keep asking).
    async fn wait_out(&self, mut fenced: Vec<(u64, std::time::Instant)>) {
        loop {
            let now = std::time::Instant::now();
            fenced.retain(|(launch_id, lease_expires)| {
                let exited =
                    *launch_id != 0 && self.launcher.as_ref().is_some_and(|launcher| launcher.has_exited(*launch_id));
                !exited && *lease_expires > now
            });
            if fenced.is_empty() {
                return;
            }
            tokio::time::sleep(FENCE_POLL_INTERVAL).await;
        }
    }
}

/// The deployments and keys a mutation invalidates (see the module documentation).
pub fn plan_invalidation<'a>(
    namespace: &Namespace,
    touched: &Touched,
    events: impl IntoIterator<Item = &'a Event>,
    deployments: u32,
) -> InvalidationPlan {
    let mut plan = InvalidationPlan::default();
    for (parent, name) in touched.dentries() {
        plan.deployments.insert(deployment_of(*parent, deployments));
        plan.entries.push((*parent, name.clone()));
    }
    for ino in touched.inodes() {
        match namespace.record(ino) {
            Ok(record) => {
                plan.deployments.insert(deployment_of(record.parent, deployments));
                plan.inodes.push(ino);
            }
            Err(_) => {
                plan.all = true;
                plan.removed.push(ino);
            }
        }
    }
    for event in events {
        match event {
            Event::Rename { source_parent, source_name, target_parent, target_name, .. } => {
                for (parent, name) in [(*source_parent, source_name), (*target_parent, target_name)] {
                    let moved = namespace.child_of(parent, name);
                    if let Some(ino) =
                        moved.filter(|ino| namespace.record(*ino).is_ok_and(|record| record.is_directory()))
                    {
                        plan.all = true;
                        if !plan.subtrees.contains(&ino) {
                            plan.subtrees.push(ino);
                        }
                    }
                }
            }
            Event::Decouple { ino, .. } => {
                plan.all = true;
                plan.subtrees.push(*ino);
            }
            _ => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::{RenameMode, Timestamp};

    fn mkdir(namespace: &mut Namespace, parent: Ino, name: &str) -> (Ino, Touched) {
        let ino = namespace.next_ino();
        let event =
            Event::Mkdir { parent, name: name.into(), ino, mode: 0o755, uid: 0, gid: 0, time: Timestamp::default() };
        let touched = namespace.apply(&event).expect("mkdir");
        (ino, touched)
    }

    fn create(namespace: &mut Namespace, parent: Ino, name: &str) -> (Ino, Touched) {
        let ino = namespace.next_ino();
        let event = Event::Create {
            parent,
            name: name.into(),
            ino,
            kind: cudele_journal::FileKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            time: Timestamp::default(),
        };
        let touched = namespace.apply(&event).expect("create");
        (ino, touched)
    }

    /// A create targets the new entry's directory and the directory's own home, not everyone.
    #[test]
    fn create_targets_the_parent_and_the_parents_home() {
        let mut namespace = Namespace::default();
        let (directory, _) = mkdir(&mut namespace, 1, "d");
        let (file, touched) = create(&mut namespace, directory, "f");
        let plan = plan_invalidation(&namespace, &touched, std::iter::empty(), 64);
        assert!(!plan.all);
        let expected: BTreeSet<u32> = [deployment_of(directory, 64), deployment_of(1, 64)].into_iter().collect();
        assert_eq!(plan.deployments, expected);
        assert!(plan.entries.contains(&(directory, b"f".to_vec())));
        assert!(plan.inodes.contains(&file) && plan.inodes.contains(&directory));
        assert!(plan.subtrees.is_empty() && plan.removed.is_empty());
    }

    /// An unlink of a file's last name reaches every deployment (the inode is gone).
    #[test]
    fn removal_targets_every_deployment() {
        let mut namespace = Namespace::default();
        let (directory, _) = mkdir(&mut namespace, 1, "d");
        let (file, _) = create(&mut namespace, directory, "f");
        let event = Event::Unlink { parent: directory, name: b"f".to_vec(), time: Timestamp::default() };
        let touched = namespace.apply(&event).expect("unlink");
        let plan = plan_invalidation(&namespace, &touched, [&event], 8);
        assert!(plan.all);
        assert_eq!(plan.removed, vec![file]);
    }

    /// Renaming a directory invalidates its subtree everywhere; renaming a file does not.
    #[test]
    fn directory_rename_is_a_subtree_invalidation() {
        let mut namespace = Namespace::default();
        let (directory, _) = mkdir(&mut namespace, 1, "d");
        let (target, _) = mkdir(&mut namespace, 1, "t");
        create(&mut namespace, directory, "f");
        let event = Event::Rename {
            source_parent: directory,
            source_name: b"f".to_vec(),
            target_parent: target,
            target_name: b"g".to_vec(),
            mode: RenameMode::Replace,
            time: Timestamp::default(),
        };
        let touched = namespace.apply(&event).expect("rename file");
        let plan = plan_invalidation(&namespace, &touched, [&event], 8);
        assert!(plan.subtrees.is_empty() && !plan.all);
        assert!(plan.deployments.contains(&deployment_of(directory, 8)));
        assert!(plan.deployments.contains(&deployment_of(target, 8)));
        let event = Event::Rename {
            source_parent: 1,
            source_name: b"d".to_vec(),
            target_parent: target,
            target_name: b"d2".to_vec(),
            mode: RenameMode::Replace,
            time: Timestamp::default(),
        };
        let touched = namespace.apply(&event).expect("rename directory");
        let plan = plan_invalidation(&namespace, &touched, [&event], 8);
        assert!(plan.all);
        assert_eq!(plan.subtrees, vec![directory]);
    }
}
