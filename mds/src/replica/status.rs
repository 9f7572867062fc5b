//! The replica layer's part of `Mds.Status` (`cudele status`): per deployment, the instances
//! clients are routed to and what all its instances, live and gone, served from their caches.

use crate::replica::coherence::Coherence;
use cudele_proto::pb;
use std::sync::atomic::Ordering;

/// The replica status of the MDS whose coherence layer is `coherence`.
pub fn replica_status(coherence: &Coherence) -> pb::ReplicaStatus {
    let registry = coherence.registry();
    let deployments = registry.deployments();
    let mut list: Vec<pb::ReplicaDeploymentStatus> =
        (0..deployments).map(|index| pb::ReplicaDeploymentStatus { index, ..Default::default() }).collect();
    for (deployment, served) in list.iter_mut().zip(registry.served_totals()) {
        deployment.hits = served.hits;
        deployment.misses = served.misses;
        deployment.requests = served.requests;
        deployment.invalidations = served.invalidations;
        deployment.rejected = served.rejected;
    }
    for (deployment, launching) in list.iter_mut().zip(registry.launching()) {
        deployment.launching = launching;
    }
    let (_, instances) = registry.snapshot();
    for instance in instances {
        let Some(deployment) = list.get_mut(instance.deployment as usize) else { continue };
        if instance.draining {
            deployment.draining += 1;
        } else {
            deployment.instances += 1;
            deployment.demand_milli += instance.load.demand_milli;
        }
        deployment.cached_items += instance.load.cached_items;
    }
    pb::ReplicaStatus {
        deployments,
        list,
        registrations: registry.registrations(),
        invalidations_sent: coherence.stats.invalidations_sent.load(Ordering::Relaxed),
        instances_declared_dead: coherence.stats.instances_declared_dead.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::registry::Registry;
    use cudele_proto::replica_pb;
    use std::sync::Arc;
    use std::time::Duration;

    /// Instances are counted per deployment (draining and launching apart) and hits include
    /// departed ones.
    #[test]
    fn counts_instances_and_hits_per_deployment() {
        let registry = Arc::new(Registry::new(2, Duration::from_secs(10), Duration::from_millis(100)));
        let coherence = Coherence::new(registry.clone(), None, Duration::from_secs(1), None);
        let load = |hits| replica_pb::InstanceLoad { hits_total: hits, misses_total: 1, ..Default::default() };
        let serving = registry.register(1, "a:1".into(), 1, 0).expect("register");
        let draining = registry.register(1, "a:2".into(), 2, 0).expect("register");
        let gone = registry.register(0, "a:3".into(), 3, 0).expect("register");
        registry.heartbeat(serving, Some(load(4)));
        registry.heartbeat(draining, Some(load(6)));
        registry.mark_draining(draining);
        registry.deregister_reporting(gone, Some(load(7))).expect("deregister");
        registry.set_launching(0, 3);
        let status = replica_status(&coherence);
        assert_eq!(status.deployments, 2);
        let counts: Vec<(u32, u32, u64, u64)> =
            status.list.iter().map(|d| (d.instances, d.draining, d.hits, d.misses)).collect();
        assert_eq!(counts, vec![(0, 0, 7, 1), (1, 1, 10, 2)]);
        let launching: Vec<u32> = status.list.iter().map(|d| d.launching).collect();
        assert_eq!(launching, vec![3, 0]);
        assert_eq!(status.registrations, 3);
    }
}
