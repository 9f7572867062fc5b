//! The `Coordinator` gRPC service on the MDS: replica instances register and renew their
//! leases, clients list live instances, and replicas fill their caches. Fills run through
//! [`Mds::read`] exactly like `Mds.Lookup/GetAttr/Readdir` without a session (so EBUSY inside
//! a blocking decoupled subtree, and the reply only shows durable state), and also return
//! each inode's home directory, which replicas need for cache admission.

use crate::replica::registry::Registry;
use crate::server::Mds;
use crate::service::READDIR_ENTRIES_MAX;
use cudele_namespace::{Namespace, NsResult};
use cudele_proto::auth::Role;
use cudele_proto::convert::{attr_to_wire, kind_to_wire};
use cudele_proto::pb;
use cudele_proto::replica_pb::{self, coordinator_server};
use cudele_proto::status_from_error;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct CoordinatorService {
    pub mds: Arc<Mds>,
    pub registry: Arc<Registry>,
}

type Reply<T> = Result<Response<T>, Status>;

fn fill_attr(namespace: &Namespace, ino: u64) -> NsResult<replica_pb::FillAttrReply> {
    let record = namespace.record(ino)?;
    Ok(replica_pb::FillAttrReply { attr: Some(attr_to_wire(record)), home: record.parent })
}

/// Registration, leases and cache fills are for replica instances: the replica token of
/// the MDS that launched them, or an operator's admin token. Clients may only list
/// deployments and wake one.
fn require_replica<T>(request: &Request<T>) -> Result<(), Status> {
    match request.extensions().get::<Role>() {
        Some(role) if *role >= Role::Replica => Ok(()),
        _ => Err(status_from_error(cudele_namespace::NsError::Refused(
            "replica registration and cache fills need the replica or admin token".into(),
        ))),
    }
}

fn answer<T>(result: NsResult<T>) -> Reply<T> {
    result.map(Response::new).map_err(status_from_error)
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn register(&self, request: Request<replica_pb::RegisterRequest>) -> Reply<replica_pb::RegisterReply> {
        require_replica(&request)?;
        let request = request.into_inner();
        let instance = self
            .registry
            .register(request.deployment, request.address.clone(), request.pid, request.launch_id)
            .map_err(|error| Status::failed_precondition(error.to_string()))?;
        tracing::info!(
            instance,
            deployment = request.deployment,
            address = %request.address,
            pid = request.pid,
            launch_id = request.launch_id,
            "replica instance registered"
        );
        Ok(Response::new(replica_pb::RegisterReply {
            instance,
            lease_ms: self.registry.lease().as_millis() as u64,
            deployments: self.registry.deployments(),
            heartbeat_interval_ms: self.registry.heartbeat_interval().as_millis() as u64,
        }))
    }

    async fn heartbeat(&self, request: Request<replica_pb::HeartbeatRequest>) -> Reply<replica_pb::HeartbeatReply> {
        require_replica(&request)?;
        let request = request.into_inner();
        if self.registry.heartbeat(request.instance, request.load) {
            Ok(Response::new(replica_pb::HeartbeatReply { lease_ms: self.registry.lease().as_millis() as u64 }))
        } else {
            Err(Status::not_found(format!("instance {} is not registered; register again", request.instance)))
        }
    }

    async fn deregister(&self, request: Request<replica_pb::DeregisterRequest>) -> Reply<pb::Empty> {
        require_replica(&request)?;
        let request = request.into_inner();
        let instance = request.instance;
        if self.registry.deregister_reporting(instance, request.load).is_some() {
            tracing::info!(instance, "replica instance deregistered");
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_deployments(&self, _request: Request<pb::Empty>) -> Reply<replica_pb::DeploymentsReply> {
        let (epoch, instances) = self.registry.snapshot();
        let now = Instant::now();
        let launching = self.registry.launching();
        let mut list: Vec<replica_pb::Deployment> = (0..self.registry.deployments())
            .map(|index| replica_pb::Deployment {
                index,
                launching: launching.get(index as usize).copied().unwrap_or(0),
                ..Default::default()
            })
            .collect();
        for instance in instances {
            let Some(deployment) = list.get_mut(instance.deployment as usize) else { continue };
            if instance.draining {
                deployment.draining += 1;
            } else {
                deployment.instances.push(replica_pb::InstanceInfo {
                    instance: instance.id,
                    address: instance.address,
                    pid: instance.pid,
                    launch_id: instance.launch_id,
                    load: Some(instance.load),
                    lease_remaining_ms: instance.lease_expires.saturating_duration_since(now).as_millis() as u64,
                });
            }
        }
        Ok(Response::new(replica_pb::DeploymentsReply { deployments: self.registry.deployments(), epoch, list }))
    }

    async fn wake(&self, request: Request<replica_pb::WakeRequest>) -> Reply<pb::Empty> {
        self.registry.wake(request.into_inner().deployment);
        Ok(Response::new(pb::Empty {}))
    }

    async fn fill_lookup(&self, request: Request<pb::EntryRequest>) -> Reply<replica_pb::FillAttrReply> {
        require_replica(&request)?;
        let request = request.into_inner();
        self.mds.count_operation("replica_fill_lookup");
        answer(
            self.mds
                .read(0, request.parent, |namespace| {
                    let ino = namespace.lookup(request.parent, &request.name)?.ino;
                    fill_attr(namespace, ino)
                })
                .await,
        )
    }

    async fn fill_get_attr(&self, request: Request<pb::InoRequest>) -> Reply<replica_pb::FillAttrReply> {
        require_replica(&request)?;
        let ino = request.into_inner().ino;
        self.mds.count_operation("replica_fill_getattr");
        answer(self.mds.read(0, ino, |namespace| fill_attr(namespace, ino)).await)
    }

    async fn fill_readdir(&self, request: Request<pb::ReaddirRequest>) -> Reply<replica_pb::FillReaddirReply> {
        require_replica(&request)?;
        let request = request.into_inner();
        self.mds.count_operation("replica_fill_readdir");
        let limit = (request.limit as usize).clamp(1, READDIR_ENTRIES_MAX);
        answer(
            self.mds
                .read(0, request.ino, |namespace| {
                    let after = (!request.after.is_empty()).then_some(request.after.as_slice());
                    let entries = namespace.readdir(request.ino, after, limit + 1)?;
                    let end = entries.len() <= limit;
                    let mut reply = replica_pb::FillReaddirReply { entries: Vec::new(), end, homes: Vec::new() };
                    for entry in entries.into_iter().take(limit) {
                        let (attr, home) = match request.plus.then(|| namespace.record(entry.ino).ok()).flatten() {
                            Some(record) => (Some(attr_to_wire(record)), record.parent),
                            None => (None, 0),
                        };
                        reply.entries.push(pb::DirEntry {
                            name: entry.name,
                            ino: entry.ino,
                            kind: kind_to_wire(entry.kind) as i32,
                            attr,
                        });
                        reply.homes.push(home);
                    }
                    Ok(reply)
                })
                .await,
        )
    }
}
