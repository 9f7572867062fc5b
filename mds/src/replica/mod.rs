//! Elastic metadata cache replicas (DESIGN.md §7, after λFS §3.3–3.5): both the MDS side and
//! the replica process, which is `cudele-mds replica`.
//!
//! Layout:
//! - [`settings`]: the MDS's replica options (deployments, bounds, targets, leases) and the
//!   options every launched instance gets.
//! - [`registry`]: the live instances of each deployment, their leases and reported load.
//! - [`coherence`]: what a mutation invalidates (computed under the namespace lock), the
//!   invalidate-then-ACK fan-out before the mutation is acknowledged, fencing of dead instances.
//! - [`coordinator`]: the `Coordinator` gRPC service on the MDS (register, heartbeat, list,
//!   wake, cache fills).
//! - [`launcher`]: the [`launcher::InstanceLauncher`] interface and its local-process default.
//! - [`autoscaler`]: starts and stops instances per deployment from the load they report.
//! - [`cache`]: a replica's cache: admission by partition, invalidation, fill races.
//! - [`instance`]: the replica process: the `Replica` gRPC service, fills, lease, limits.
//! - [`status`]: the replica part of `Mds.Status` (instances, hits and misses per deployment).
//! - [`wiring`]: building the MDS side from settings and attaching it to a running MDS.
//!
//! The partition function itself lives in `cudele_proto::partition` so that clients share it
//! without linking the MDS.

pub mod autoscaler;
pub mod cache;
pub mod coherence;
pub mod coordinator;
pub mod instance;
pub mod launcher;
pub mod registry;
pub mod settings;
pub mod status;
pub mod wiring;
