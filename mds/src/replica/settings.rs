//! The MDS's replica options and the options it hands every instance it launches.

use std::path::PathBuf;
use std::time::Duration;

/// Most instances one deployment may run.
pub const INSTANCES_PER_DEPLOYMENT_MAX: u32 = 64;
/// Most instances registered at once, all deployments together.
pub const INSTANCES_TOTAL_MAX: usize = 512;
/// Instances a deployment gains in one autoscaling decision.
pub const SCALE_UP_STEP_MAX: u32 = 4;
/// Instances a deployment loses in one autoscaling decision.
pub const SCALE_DOWN_STEP_MAX: u32 = 4;
/// Longest demand window the autoscaler keeps (bounds its per-deployment history).
pub const DEMAND_WINDOW_MAX: Duration = Duration::from_secs(600);

/// Defaults of an instance's capacity and cache (shared by the MDS's and the replica's CLI).
pub const INSTANCE_CONCURRENCY_LIMIT_DEFAULT: u32 = 64;
pub const INSTANCE_QUEUE_LENGTH_MAX_DEFAULT: u32 = 1024;
pub const INSTANCE_CACHE_ITEMS_MAX_DEFAULT: usize = 1 << 20;

/// How a launched instance serves: its bounded capacity and its cache size.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceOptions {
    /// Requests served at once; more wait (up to `queue_length_max`).
    pub concurrency_limit: u32,
    /// Requests waiting for a slot before new ones are refused (RESOURCE_EXHAUSTED).
    pub queue_length_max: u32,
    /// Artificial time each request holds its slot: bounds an instance's capacity to about
    /// `concurrency_limit / service_time` requests per second without burning CPU, so that
    /// elasticity shows on a small machine. Zero: none.
    pub service_time: Duration,
    /// Cached items (attributes, entries, listing pages) before eviction.
    pub cache_items_max: usize,
    /// Host the instances listen on (the port is picked by the system).
    pub listen_host: String,
    /// Handed to instances so they present the MDS's shared secret.
    pub token_file: Option<PathBuf>,
    /// Handed to instances: the certificate and key they serve TLS with (the MDS's own),
    /// and the CA they verify the MDS with. Certificate set: instances serve TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
}

impl Default for InstanceOptions {
    fn default() -> Self {
        InstanceOptions {
            concurrency_limit: INSTANCE_CONCURRENCY_LIMIT_DEFAULT,
            queue_length_max: INSTANCE_QUEUE_LENGTH_MAX_DEFAULT,
            service_time: Duration::ZERO,
            cache_items_max: INSTANCE_CACHE_ITEMS_MAX_DEFAULT,
            listen_host: "127.0.0.1".to_string(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

/// Replica options of the MDS. `deployments == 0` turns the feature off.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSettings {
    pub deployments: u32,
    /// Instances per deployment the autoscaler keeps at least / at most.
    pub min_instances: u32,
    pub max_instances: u32,
    /// Average concurrent requests (in service or waiting) one instance should carry.
    pub target_concurrency: f64,
    /// Least time between two scaling decisions of one deployment (starting the first
    /// instance of a deployment below its minimum or woken from zero does not wait).
    pub cooldown: Duration,
    /// The demand averaged over this window sets the instance count, up and down, outside
    /// panic (Knative's stable window).
    pub stable_window: Duration,
    /// The demand averaged over this shorter window triggers panic when it reaches
    /// `panic_threshold` times what the current instances should carry; in panic the count
    /// follows the larger of both windows and never goes down, until a stable window has
    /// passed without panic.
    pub panic_window: Duration,
    pub panic_threshold: f64,
    /// With `min_instances == 0`: how long a deployment must have had no demand at all (no
    /// request in flight, no wake) before its last instance is stopped (idle reap).
    pub idle: Duration,
    /// An instance that sends no heartbeat for this long is dead; it stops serving from its
    /// cache by itself a little earlier.
    pub lease: Duration,
    /// How long a write waits for an instance's invalidation ACK before declaring it dead.
    pub ack_timeout: Duration,
    /// How often the autoscaler looks at the load.
    pub autoscale_interval: Duration,
    pub instance: InstanceOptions,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            deployments: 0,
            min_instances: 1,
            max_instances: 4,
            target_concurrency: 4.0,
            cooldown: Duration::from_millis(2_000),
            stable_window: Duration::from_millis(6_000),
            panic_window: Duration::from_millis(1_000),
            panic_threshold: 2.0,
            idle: Duration::from_millis(10_000),
            lease: Duration::from_millis(2_000),
            ack_timeout: Duration::from_millis(500),
            autoscale_interval: Duration::from_millis(250),
            instance: InstanceOptions::default(),
        }
    }
}

impl ReplicaSettings {
    pub fn enabled(&self) -> bool {
        self.deployments > 0
    }

    /// Refuse settings that cannot work, with a message naming the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.deployments > cudele_proto::partition::DEPLOYMENTS_MAX {
            return Err(format!(
                "--replica-deployments {} exceeds {}",
                self.deployments,
                cudele_proto::partition::DEPLOYMENTS_MAX
            ));
        }
        if self.min_instances > self.max_instances {
            return Err(format!("--replica-min {} exceeds --replica-max {}", self.min_instances, self.max_instances));
        }
        if self.max_instances > INSTANCES_PER_DEPLOYMENT_MAX {
            return Err(format!("--replica-max {} exceeds {INSTANCES_PER_DEPLOYMENT_MAX}", self.max_instances));
        }
        if self.enabled() && (self.deployments as usize) * (self.max_instances as usize) > INSTANCES_TOTAL_MAX {
            return Err(format!("deployments x --replica-max exceeds {INSTANCES_TOTAL_MAX} instances"));
        }
        if !(self.target_concurrency.is_finite() && self.target_concurrency > 0.0) {
            return Err("--replica-target-concurrency must be a positive number".to_string());
        }
        if !(self.panic_threshold.is_finite() && self.panic_threshold > 1.0) {
            return Err("--replica-panic-threshold must be a number above 1".to_string());
        }
        if self.stable_window.is_zero()
            || self.panic_window.is_zero()
            || self.panic_window > self.stable_window
            || self.stable_window > DEMAND_WINDOW_MAX
        {
            return Err(format!(
                "--replica-panic-window-ms must be positive and at most --replica-stable-window-ms, \
                 which is at most {} ms",
                DEMAND_WINDOW_MAX.as_millis()
            ));
        }
        if self.lease.is_zero() || self.ack_timeout.is_zero() || self.autoscale_interval.is_zero() {
            return Err("replica lease, ACK timeout and autoscale interval must be positive".to_string());
        }
        if self.instance.concurrency_limit == 0 {
            return Err("--replica-concurrency-limit must be positive".to_string());
        }
        if self.enabled() && self.instance.tls_cert.is_some() && self.instance.tls_ca.is_none() {
            // Instances dial the MDS, and the MDS dials them: both sides verify with the CA.
            return Err("--replica-deployments with --tls-cert needs --tls-ca (the CA that issued the MDS's \
                        certificate), for replica instances to verify the MDS and the MDS them"
                .to_string());
        }
        Ok(())
    }

    /// How often instances heartbeat: often enough for the autoscaler to see load promptly
    /// and for several beats to fit in one lease.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease / 4).min(HEARTBEAT_INTERVAL_MAX)
    }
}

/// Upper bound of the heartbeat interval (load reports drive the autoscaler).
pub const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_millis(250);
