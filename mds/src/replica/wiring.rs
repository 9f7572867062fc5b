//! Building the MDS side of the replica layer from its settings, and attaching it to the
//! running MDS (the coordinator service and the autoscaler task). `run.rs` calls these so
//! that the server core only sees [`Coherence`].

use crate::replica::autoscaler::Autoscaler;
use crate::replica::coherence::Coherence;
use crate::replica::coordinator::CoordinatorService;
use crate::replica::launcher::{InstanceLauncher, LocalProcessLauncher};
use crate::replica::registry::Registry;
use crate::replica::settings::ReplicaSettings;
use crate::server::Mds;
use anyhow::{Context, Result};
use cudele_proto::transport::ClientTls;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct ReplicaLayer {
    pub settings: ReplicaSettings,
    pub registry: Arc<Registry>,
    pub coherence: Arc<Coherence>,
    pub launcher: Option<Arc<dyn InstanceLauncher>>,
    /// The credential of the instances this MDS launches (random, made at start; None when
    /// the MDS runs without tokens).
    pub replica_token: Option<String>,
}

impl ReplicaLayer {
    /// The registry, coherence and (when replicas are on) the local-process launcher; `tls`
    /// verifies the instances' certificates when the MDS dials them (invalidations).
    pub fn new(settings: ReplicaSettings, token: Option<String>, tls: Option<ClientTls>) -> Result<ReplicaLayer> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let registry = Arc::new(Registry::new(settings.deployments, settings.lease, settings.heartbeat_interval()));
        let replica_token = token.is_some().then(|| {
            let mut secret = [0u8; 16];
            rand::Rng::fill(&mut rand::rng(), &mut secret);
            secret.iter().map(|byte| format!("{byte:02x}")).collect::<String>()
        });
        let launcher: Option<Arc<dyn InstanceLauncher>> = if settings.enabled() {
            let launcher = LocalProcessLauncher::current_exe().context("finding the cudele-mds executable")?;
            Some(Arc::new(launcher.with_replica_token(replica_token.clone())))
        } else {
            None
        };
        let coherence =
            Arc::new(Coherence::new(registry.clone(), launcher.clone(), settings.ack_timeout, token).with_tls(tls));
        Ok(ReplicaLayer { settings, registry, coherence, launcher, replica_token })
    }

    pub fn coordinator_service(&self, mds: Arc<Mds>) -> CoordinatorService {
        CoordinatorService { mds, registry: self.registry.clone() }
    }

    /// Start the autoscaler (replicas on only); it stops its instances when `shutdown` turns.
    pub fn spawn_autoscaler(&self, mds_address: SocketAddr, shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let launcher = self.launcher.clone()?;
        let autoscaler =
            Autoscaler::new(self.registry.clone(), launcher, self.settings.clone(), reachable(mds_address).to_string());
        Some(tokio::spawn(autoscaler.run(shutdown)))
    }
}

/// The address local instances dial: a wildcard listen address becomes loopback.
fn reachable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port()),
        _ => address,
    }
}
