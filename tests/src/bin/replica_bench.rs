//! replica_bench: elastic metadata cache replicas under bursty load (λFS §5.2, Figure 8).
//!
//! Part 1 (elastic): a real `cudele-mds` with replica deployments and its autoscaler; open-loop
//! clients run the λFS industrial mix — read 69.22%, stat 17%, ls 9.01%, create 2.7%, mv 1.3%,
//! delete 0.75%, mkdirs 0.02% — at a target rate drawn from a Pareto distribution (α = 2,
//! scale `--base-rate`, capped at `--rate-max`) every `--phase-s` seconds. Operations not
//! completed in time roll over (bounded backlog). Reads go through
//! `cudele_proto::routing::RoutedReader` (replicas, retry, MDS fallback), writes to the MDS.
//! Recorded: throughput per second with the live instance count, latency percentiles and CDF,
//! replica-seconds spent versus static provisioning for the observed peak.
//!
//! Part 2 (scaling): read throughput of a fixed number of instances (closed loop), one fresh
//! MDS per count, and the scaling efficiency thr(k) / (k * thr(1)).
//!
//! Each instance's capacity is bounded by `--concurrency-limit` and `--service-time-us` (an
//! artificial hold, not CPU work), so elasticity is visible on a small machine; every second
//! in which the machine's CPUs were at least 90% busy is labelled saturated. Results: JSON and
//! PNG in `--output` (default `bench-results/replica`), with the machine they ran on.
//!
//! ```text
//! cargo build -p cudele-mds -p cudele-e2e --bin replica_bench
//! target/debug/replica_bench [--duration-s 90] [--phase-s 15] [--clients 64] [--cores 2] ...
//! ```

use anyhow::{Context, Result};
use clap::Parser;
use cudele_e2e::{Api, MdsProcess};
use cudele_proto::pb;
use cudele_proto::replica_pb::coordinator_client::CoordinatorClient;
use cudele_proto::routing::{is_answer, ReadSource, RoutedReader, RoutingOptions};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Pareto shape of the target rate (λFS §5.2.1).
const PARETO_ALPHA: f64 = 2.0;
/// How often the dispatcher releases operations.
const DISPATCH_TICK: Duration = Duration::from_millis(10);
/// Operations waiting to be issued before new ones are dropped (and counted).
const BACKLOG_OPERATIONS_MAX: usize = 20_000;
/// How often live instances and CPU use are sampled.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
/// A second whose CPUs were at least this busy is labelled saturated.
const SATURATED_CPU_FRACTION: f64 = 0.9;
/// Entries per ls (one readdir page).
const LS_PAGE_ENTRIES: u32 = 256;
/// Points of the latency CDF written to JSON.
const CDF_POINTS: usize = 200;
/// Attempts to find an existing file before an operation gives up on its pick.
const PICK_ATTEMPTS_MAX: usize = 8;
/// Seconds at the start of a scaling step left out of its throughput (warm-up).
const SCALING_WARMUP: Duration = Duration::from_secs(2);
/// How often the clients' MDS sessions renew their leases (the MDS's default lease is 10 s).
const SESSION_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How long the autoscaler may take to bring up a scaling step's instances.
const INSTANCES_UP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone)]
#[command(about = "Elastic replica benchmark: λFS industrial mix under Pareto-bursty load")]
struct Options {
    /// Total length of the elastic run (λFS §5.2.1 runs its workload for 5 minutes).
    #[arg(long, default_value_t = 300)]
    duration_s: u64,
    /// Length of one constant-rate phase.
    #[arg(long, default_value_t = 15)]
    phase_s: u64,
    /// Pareto scale (the least target rate), operations per second.
    #[arg(long, default_value_t = 200.0)]
    base_rate: f64,
    /// Cap of the target rate as a multiple of --base-rate (λFS §5.2.1: "spikes up to 7x
    /// greater than the base throughput").
    #[arg(long, default_value_t = 7.0)]
    spike_max: f64,
    /// Concurrent client tasks (they share one routed reader and write through MDS sessions).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Worker threads of this benchmark's runtime (the MDS and instances are separate processes).
    #[arg(long, default_value_t = 2)]
    cores: usize,
    #[arg(long, default_value_t = 2)]
    deployments: u32,
    #[arg(long, default_value_t = 1)]
    replica_min: u32,
    #[arg(long, default_value_t = 8)]
    replica_max: u32,
    #[arg(long, default_value_t = 1.0)]
    target_concurrency: f64,
    #[arg(long, default_value_t = 2)]
    concurrency_limit: u32,
    #[arg(long, default_value_t = 4_000)]
    service_time_us: u64,
    #[arg(long, default_value_t = 2_000)]
    cooldown_ms: u64,
    /// With --replica-min 0: how long a deployment without demand keeps its last instance.
    #[arg(long, default_value_t = 6_000)]
    idle_ms: u64,
    /// The autoscaler's stable window (its average demand sets the count, up and down).
    #[arg(long, default_value_t = 6_000)]
    stable_window_ms: u64,
    /// The autoscaler's panic window (a burst of twice the target scales up at once).
    #[arg(long, default_value_t = 1_000)]
    panic_window_ms: u64,
    #[arg(long, default_value_t = 2.0)]
    panic_threshold: f64,
    #[arg(long, default_value_t = 128)]
    directories: usize,
    #[arg(long, default_value_t = 12)]
    files_per_directory: usize,
    /// Instance counts of the scaling part (the flag without values skips it). Each count is
    /// run twice: with the bounded instance capacity above, and unbounded (no service time:
    /// CPU-bound).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,2,4,8")]
    scaling_instances: Vec<u32>,
    #[arg(long, default_value_t = 7)]
    scaling_step_s: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = "bench-results/replica")]
    output: PathBuf,
    /// Only redraw OUTPUT/replica_bench.png from OUTPUT/replica_bench.json (no run).
    #[arg(long)]
    replot: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Read,
    Stat,
    Ls,
    Create,
    Move,
    Delete,
    Mkdirs,
}

const MIX: [(Operation, f64); 7] = [
    (Operation::Read, 69.22),
    (Operation::Stat, 17.0),
    (Operation::Ls, 9.01),
    (Operation::Create, 2.7),
    (Operation::Move, 1.3),
    (Operation::Delete, 0.75),
    (Operation::Mkdirs, 0.02),
];

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Stat => "stat",
            Operation::Ls => "ls",
            Operation::Create => "create",
            Operation::Move => "mv",
            Operation::Delete => "delete",
            Operation::Mkdirs => "mkdirs",
        }
    }

    fn pick(rng: &mut StdRng) -> Operation {
        let total: f64 = MIX.iter().map(|(_, weight)| weight).sum();
        let mut point = rng.random_range(0.0..total);
        for (operation, weight) in MIX {
            if point < weight {
                return operation;
            }
            point -= weight;
        }
        Operation::Read
    }
}

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Served by a replica's cache.
    ReplicaCache,
    /// Served by a replica that read through (fill or pass-through).
    ReplicaFilled,
    /// Served by the MDS (writes, and reads that fell back).
    Mds,
    /// An errno answer (ENOENT of a file another client just removed, ...).
    Answer,
    /// Transport or server failure that reached the application.
    Failure,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u32,
    operation: Operation,
    latency_us: u32,
    outcome: Outcome,
}

struct Directory {
    ino: u64,
    files: Vec<(String, u64)>,
}

/// The clients' shared picture of the namespace (to pick existing targets).
struct Model {
    directories: Vec<Directory>,
    next_name: u64,
}

impl Model {
    fn pick_file(&self, rng: &mut StdRng) -> Option<(u64, String, u64)> {
        for _ in 0..PICK_ATTEMPTS_MAX {
            let directory = &self.directories[rng.random_range(0..self.directories.len())];
            if directory.files.is_empty() {
                continue;
            }
            let (name, ino) = &directory.files[rng.random_range(0..directory.files.len())];
            return Some((directory.ino, name.clone(), *ino));
        }
        None
    }

    fn take_file(&mut self, rng: &mut StdRng) -> Option<(u64, String, u64)> {
        for _ in 0..PICK_ATTEMPTS_MAX {
            let index = rng.random_range(0..self.directories.len());
            let directory = &mut self.directories[index];
            if directory.files.is_empty() {
                continue;
            }
            let position = rng.random_range(0..directory.files.len());
            let (name, ino) = directory.files.swap_remove(position);
            return Some((directory.ino, name, ino));
        }
        None
    }

    fn fresh_name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name)
    }
}

/// Busy fraction of all CPUs between two /proc/stat readings.
struct CpuReading {
    busy: u64,
    total: u64,
}

fn read_cpu() -> Option<CpuReading> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|field| field.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuReading { busy: total.saturating_sub(idle), total })
}

fn busy_fraction(before: &CpuReading, after: &CpuReading) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    after.busy.saturating_sub(before.busy) as f64 / total as f64
}

fn machine() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find(|line| line.starts_with("model name")).map(|line| line.to_string()))
        .and_then(|line| line.split(':').nth(1).map(|model| model.trim().to_string()))
        .unwrap_or_default();
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().next().map(|line| line.to_string()))
        .and_then(|line| line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|cpus| cpus.get()).unwrap_or(1),
        "cpu_model": cpu_model,
        "memory_gib": memory_kib as f64 / (1024.0 * 1024.0),
        "kernel": kernel,
        // Other work on the machine shares its CPUs with this run.
        "load_average_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
        "build_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn latency_summary(mut latencies: Vec<u32>) -> Value {
    latencies.sort_unstable();
    json!({
        "count": latencies.len(),
        "p50_us": percentile(&latencies, 0.5),
        "p90_us": percentile(&latencies, 0.9),
        "p99_us": percentile(&latencies, 0.99),
        "p999_us": percentile(&latencies, 0.999),
        "max_us": latencies.last().copied().unwrap_or(0),
    })
}

/// Reads per second one instance serves with every slot busy (concurrency limit / service
/// time); None without a service time (the instance is bounded by the CPUs only).
fn nominal_reads_per_second(options: &Options) -> Option<f64> {
    (options.service_time_us > 0).then(|| f64::from(options.concurrency_limit) / (options.service_time_us as f64 / 1e6))
}

/// Start an MDS with replicas configured from `options`, `min..=max` instances per deployment.
fn start_mds(options: &Options, data_dir: &Path, deployments: u32, min: u32, max: u32) -> Result<MdsProcess> {
    let settings = [
        ("target-concurrency", options.target_concurrency.to_string()),
        ("concurrency-limit", options.concurrency_limit.to_string()),
        ("service-time-us", options.service_time_us.to_string()),
        ("cooldown-ms", options.cooldown_ms.to_string()),
        ("idle-ms", options.idle_ms.to_string()),
        ("stable-window-ms", options.stable_window_ms.to_string()),
        ("panic-window-ms", options.panic_window_ms.to_string()),
        ("panic-threshold", options.panic_threshold.to_string()),
    ];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(name, value)| (*name, value.as_str())).collect();
    MdsProcess::start_with_replicas(data_dir, (deployments, min, max), &settings)
}

/// Live (listed) instances per deployment.
async fn live_instances(mds: &MdsProcess) -> Result<(Vec<usize>, f64)> {
    let mut coordinator = CoordinatorClient::connect(mds.url()).await?;
    let reply = coordinator.list_deployments(pb::Empty {}).await?.into_inner();
    let counts = reply.list.iter().map(|deployment| deployment.instances.len()).collect();
    let demand = reply
        .list
        .iter()
        .flat_map(|deployment| deployment.instances.iter())
        .filter_map(|instance| instance.load.as_ref())
        .map(|load| load.demand_milli as f64 / 1000.0)
        .sum();
    Ok((counts, demand))
}

async fn wait_for_instances(mds: &MdsProcess, per_deployment: usize) -> Result<()> {
    let deadline = Instant::now() + INSTANCES_UP_TIMEOUT;
    loop {
        let (counts, _) = live_instances(mds).await?;
        if counts.iter().all(|count| *count >= per_deployment) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "instances did not come up: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create the benchmark's namespace: directories of files, through one session.
async fn populate(api: &mut Api, options: &Options) -> Result<Model> {
    let top = api.mkdir(1, "bench", 0o755).await.context("mkdir bench")?.ino;
    let mut directories = Vec::new();
    for index in 0..options.directories {
        let ino = api.mkdir(top, format!("d{index}"), 0o755).await?.ino;
        let mut files = Vec::new();
        for number in 0..options.files_per_directory {
            let name = format!("f{number}");
            let file = api.create(ino, &name, 0o644).await?.ino;
            files.push((name, file));
        }
        directories.push(Directory { ino, files });
    }
    Ok(Model { directories, next_name: 0 })
}

/// Run one operation; returns its outcome.
async fn perform(
    operation: Operation,
    reader: &RoutedReader,
    api: &mut Api,
    model: &Mutex<Model>,
    rng: &mut StdRng,
) -> Outcome {
    let read_outcome = |source: ReadSource| match source {
        ReadSource::Replica { cached: true, .. } => Outcome::ReplicaCache,
        ReadSource::Replica { cached: false, .. } => Outcome::ReplicaFilled,
        ReadSource::Mds => Outcome::Mds,
    };
    let status_outcome = |status: &tonic::Status| if is_answer(status) { Outcome::Answer } else { Outcome::Failure };
    let lock = || model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match operation {
        Operation::Read | Operation::Stat => {
            let Some((directory, name, ino)) = lock().pick_file(rng) else { return Outcome::Answer };
            let result = if operation == Operation::Read {
                reader.lookup(directory, name.as_bytes()).await
            } else {
                reader.getattr(ino, Some(directory)).await
            };
            match result {
                Ok(read) => read_outcome(read.source),
                Err(status) => status_outcome(&status),
            }
        }
        Operation::Ls => {
            let directory = {
                let model = lock();
                model.directories[rng.random_range(0..model.directories.len())].ino
            };
            match reader.readdir(directory, b"", LS_PAGE_ENTRIES, false).await {
                Ok(page) => read_outcome(page.source),
                Err(status) => status_outcome(&status),
            }
        }
        Operation::Create => {
            let (index, directory, name) = {
                let mut model = lock();
                let index = rng.random_range(0..model.directories.len());
                let name = model.fresh_name("n");
                (index, model.directories[index].ino, name)
            };
            match api.create(directory, &name, 0o644).await {
                Ok(attr) => {
                    lock().directories[index].files.push((name, attr.ino));
                    Outcome::Mds
                }
                Err(status) => status_outcome(&status),
            }
        }
        Operation::Move => {
            let (source, target_index, target, new_name) = {
                let mut model = lock();
                let Some(source) = model.take_file(rng) else { return Outcome::Answer };
                let target_index = rng.random_range(0..model.directories.len());
                let new_name = model.fresh_name("m");
                (source, target_index, model.directories[target_index].ino, new_name)
            };
            let (directory, name, ino) = source;
            match api.rename(directory, &name, target, &new_name, pb::RenameMode::RenameNoreplace).await {
                Ok(()) => {
                    lock().directories[target_index].files.push((new_name, ino));
                    Outcome::Mds
                }
                Err(status) => status_outcome(&status),
            }
        }
        Operation::Delete => {
            let Some((directory, name, _)) = lock().take_file(rng) else { return Outcome::Answer };
            match api.unlink(directory, &name).await {
                Ok(()) => Outcome::Mds,
                Err(status) => status_outcome(&status),
            }
        }
        Operation::Mkdirs => {
            let (parent, name) = {
                let mut model = lock();
                let parent = model.directories[rng.random_range(0..model.directories.len())].ino;
                (parent, model.fresh_name("dir"))
            };
            match api.mkdir(parent, &name, 0o755).await {
                Ok(attr) => {
                    lock().directories.push(Directory { ino: attr.ino, files: Vec::new() });
                    Outcome::Mds
                }
                Err(status) => status_outcome(&status),
            }
        }
    }
}

/// Renew a session's lease until `stop` turns true.
fn keep_session_alive(mut api: Api, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            tokio::time::sleep(SESSION_HEARTBEAT_INTERVAL).await;
            if stop.load(Ordering::Acquire) {
                break;
            }
            if let Err(status) = api.client.heartbeat(pb::Empty {}).await {
                eprintln!("session heartbeat failed: {status}");
            }
        }
    });
}

/// One sample of the monitor.
#[derive(Clone, Debug)]
struct MonitorSample {
    at_ms: u64,
    /// Instances clients are routed to.
    live: usize,
    /// Running instance processes: live, draining and launching (what the deployments cost).
    running: usize,
    demand: f64,
    /// Per deployment: listed instances and their summed reported demand.
    live_per_deployment: Vec<usize>,
    demand_per_deployment: Vec<f64>,
}

/// Part 1: the elastic run.
async fn run_elastic(options: &Options, directory: &Path) -> Result<Value> {
    let mds = start_mds(options, directory, options.deployments, options.replica_min, options.replica_max)?;
    wait_for_instances(&mds, options.replica_min as usize).await?;
    let mut setup = Api::open(mds.address, None, "bench-setup").await?;
    let model = Arc::new(Mutex::new(populate(&mut setup, options).await?));
    let reader = Arc::new(RoutedReader::connect(&mds.address.to_string(), reader_options(mds.address).await?).await?);

    let mut rng = StdRng::seed_from_u64(options.seed);
    let phases = options.duration_s.div_ceil(options.phase_s.max(1));
    let rates: Vec<f64> = (0..phases)
        .map(|_| {
            let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
            (options.base_rate / uniform.powf(1.0 / PARETO_ALPHA)).min(options.base_rate * options.spike_max)
        })
        .collect();
    eprintln!("phase target rates (ops/s): {:?}", rates.iter().map(|rate| rate.round()).collect::<Vec<_>>());

    let tokens = Arc::new(Semaphore::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in 0..options.clients {
        let (tokens, stop, reader, model) = (tokens.clone(), stop.clone(), reader.clone(), model.clone());
        let mut api = Api::open(mds.address, None, &format!("bench-client-{client}")).await?;
        keep_session_alive(api.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(options.seed.wrapping_add(1 + client as u64));
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let Ok(permit) = tokens.acquire().await else { break };
                permit.forget();
                let operation = Operation::pick(&mut rng);
                let begun = Instant::now();
                let outcome = perform(operation, &reader, &mut api, &model, &mut rng).await;
                let done = Instant::now();
                samples.push(Sample {
                    at_ms: done.saturating_duration_since(started).as_millis() as u32,
                    operation,
                    latency_us: done.saturating_duration_since(begun).as_micros().min(u128::from(u32::MAX)) as u32,
                    outcome,
                });
            }
            samples
        }));
    }

    let monitor = {
        let stop = stop.clone();
        let mds_url = mds.url();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut cpu = Vec::new();
            let mut last_cpu = read_cpu();
            let mut last_cpu_at = Instant::now();
            let Ok(mut coordinator) = CoordinatorClient::connect(mds_url).await else { return (samples, cpu) };
            while !stop.load(Ordering::Acquire) {
                if let Ok(reply) = coordinator.list_deployments(pb::Empty {}).await {
                    let reply = reply.into_inner();
                    let live_per_deployment: Vec<usize> =
                        reply.list.iter().map(|deployment| deployment.instances.len()).collect();
                    let running = reply
                        .list
                        .iter()
                        .map(|deployment| {
                            deployment.instances.len() + deployment.draining as usize + deployment.launching as usize
                        })
                        .sum();
                    let demand_per_deployment: Vec<f64> = reply
                        .list
                        .iter()
                        .map(|deployment| {
                            deployment
                                .instances
                                .iter()
                                .filter_map(|instance| instance.load.as_ref())
                                .map(|load| load.demand_milli as f64 / 1000.0)
                                .sum()
                        })
                        .collect();
                    samples.push(MonitorSample {
                        at_ms: started.elapsed().as_millis() as u64,
                        live: live_per_deployment.iter().sum(),
                        running,
                        demand: demand_per_deployment.iter().sum(),
                        live_per_deployment,
                        demand_per_deployment,
                    });
                }
                if last_cpu_at.elapsed() >= Duration::from_secs(1) {
                    let now = read_cpu();
                    if let (Some(before), Some(after)) = (&last_cpu, &now) {
                        cpu.push((started.elapsed().as_secs_f64(), busy_fraction(before, after)));
                    }
                    last_cpu = now;
                    last_cpu_at = Instant::now();
                }
                tokio::time::sleep(MONITOR_INTERVAL).await;
            }
            (samples, cpu)
        })
    };

    // The dispatcher: release operations at the phase's rate; unfinished ones roll over.
    let duration = Duration::from_secs(options.duration_s);
    let mut credit = 0.0f64;
    let mut last = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(DISPATCH_TICK).await;
        let now = Instant::now();
        let phase = (started.elapsed().as_secs() / options.phase_s.max(1)) as usize;
        let rate = rates.get(phase).copied().unwrap_or(options.base_rate);
        credit += rate * now.saturating_duration_since(last).as_secs_f64();
        last = now;
        let whole = credit.floor();
        credit -= whole;
        let whole = whole as usize;
        let room = BACKLOG_OPERATIONS_MAX.saturating_sub(tokens.available_permits());
        if whole > room {
            dropped.fetch_add((whole - room) as u64, Ordering::Relaxed);
        }
        tokens.add_permits(whole.min(room));
    }
    stop.store(true, Ordering::Release);
    let backlog_left = tokens.available_permits();
    tokens.close();
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.context("client task")?);
    }
    let (monitor_samples, cpu) = monitor.await.context("monitor task")?;
    let elapsed = started.elapsed().as_secs_f64();

    // Timeline per second.
    let seconds = options.duration_s as usize;
    let mut timeline = Vec::new();
    for second in 0..seconds {
        let in_second: Vec<&Sample> = samples.iter().filter(|sample| sample.at_ms as usize / 1000 == second).collect();
        let in_monitor: Vec<&MonitorSample> =
            monitor_samples.iter().filter(|sample| sample.at_ms as usize / 1000 == second).collect();
        let mean = |count: fn(&MonitorSample) -> usize| {
            if in_monitor.is_empty() {
                0.0
            } else {
                in_monitor.iter().map(|sample| count(sample)).sum::<usize>() as f64 / in_monitor.len() as f64
            }
        };
        let cpu_busy = cpu.iter().find(|(at, _)| *at as usize == second + 1).map(|(_, busy)| *busy).unwrap_or(0.0);
        let phase = second / options.phase_s.max(1) as usize;
        let count = |outcome: Outcome| in_second.iter().filter(|sample| sample.outcome == outcome).count();
        timeline.push(json!({
            "second": second,
            "target_ops": rates.get(phase).copied().unwrap_or(0.0),
            "completed_ops": in_second.len(),
            "replica_cache": count(Outcome::ReplicaCache),
            "replica_filled": count(Outcome::ReplicaFilled),
            "mds": count(Outcome::Mds),
            "answers": count(Outcome::Answer),
            "failures": count(Outcome::Failure),
            "live_instances": mean(|sample| sample.live),
            "running_instances": mean(|sample| sample.running),
            "cpu_busy": cpu_busy,
            "cpu_saturated": cpu_busy >= SATURATED_CPU_FRACTION,
        }));
    }
    let mut latency = serde_json::Map::new();
    for (operation, _) in MIX {
        let latencies: Vec<u32> =
            samples.iter().filter(|sample| sample.operation == operation).map(|sample| sample.latency_us).collect();
        latency.insert(operation.name().to_string(), latency_summary(latencies));
    }
    let all: Vec<u32> = samples.iter().map(|sample| sample.latency_us).collect();
    latency.insert("all".to_string(), latency_summary(all.clone()));
    let mut sorted = all;
    sorted.sort_unstable();
    let cdf: Vec<Value> = (0..=CDF_POINTS)
        .map(|point| {
            let fraction = point as f64 / CDF_POINTS as f64;
            json!({ "fraction": fraction, "latency_us": percentile(&sorted, fraction) })
        })
        .collect();
    // Replica-seconds: running instance processes (routed, draining and starting up) integrated
    // over time; static provisioning for the peak.
    let mut replica_seconds = 0.0;
    for pair in monitor_samples.windows(2) {
        replica_seconds += pair[0].running as f64 * (pair[1].at_ms.saturating_sub(pair[0].at_ms)) as f64 / 1000.0;
    }
    let peak = monitor_samples.iter().map(|sample| sample.live).max().unwrap_or(0);
    let covered = match (monitor_samples.first(), monitor_samples.last()) {
        (Some(first), Some(last)) => (last.at_ms.saturating_sub(first.at_ms)) as f64 / 1000.0,
        _ => 0.0,
    };
    let static_peak = peak as f64 * covered;
    // A second baseline, from the offered load rather than from what the autoscaler chose:
    // per deployment, the instances whose nominal capacity (concurrency limit / service
    // time) carries its share of the peak phase's reads, run for the whole time.
    let read_fraction = MIX
        .iter()
        .filter(|(operation, _)| matches!(operation, Operation::Read | Operation::Stat | Operation::Ls))
        .map(|(_, weight)| weight)
        .sum::<f64>()
        / MIX.iter().map(|(_, weight)| weight).sum::<f64>();
    // Without a service time, as if it were 1 µs: any read load needs an instance.
    let instance_capacity_reads =
        nominal_reads_per_second(options).unwrap_or(f64::from(options.concurrency_limit) * 1e6);
    let peak_rate = rates.iter().copied().fold(0.0, f64::max);
    let directory_shares: Vec<f64> = {
        // Reads pick a directory uniformly, so a deployment's share is its share of them.
        let model = model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let deployments = options.deployments.max(1);
        let mut counts = vec![0usize; deployments as usize];
        for directory in model.directories.iter().take(options.directories) {
            counts[cudele_proto::partition::deployment_of(directory.ino, deployments) as usize] += 1;
        }
        counts.iter().map(|count| *count as f64 / options.directories.max(1) as f64).collect()
    };
    let capacity_instances: u32 = directory_shares
        .iter()
        .map(|share| {
            ((peak_rate * read_fraction * share / instance_capacity_reads).ceil() as u32)
                .clamp(options.replica_min, options.replica_max)
        })
        .sum();
    let static_capacity = f64::from(capacity_instances) * covered;
    // A third: per deployment, the instances its sustained peak demand needs at the target
    // concurrency — the median of its reported demand within each phase, the largest over
    // phases — so that a transient (the backlog of the first seconds) does not set it.
    let phase_ms = options.phase_s.max(1) * 1000;
    let instances_for = |demand: f64| {
        ((demand / options.target_concurrency).ceil() as u32).clamp(options.replica_min, options.replica_max)
    };
    // Per deployment, per phase: the median reported demand.
    let phase_demand: Vec<Vec<f64>> = (0..options.deployments as usize)
        .map(|deployment| {
            (0..rates.len() as u64)
                .map(|phase| {
                    let mut demands: Vec<f64> = monitor_samples
                        .iter()
                        .filter(|sample| sample.at_ms / phase_ms == phase)
                        .filter_map(|sample| sample.demand_per_deployment.get(deployment).copied())
                        .collect();
                    demands.sort_by(f64::total_cmp);
                    demands.get(demands.len() / 2).copied().unwrap_or(0.0)
                })
                .collect()
        })
        .collect();
    let sustained_peak_demand: Vec<f64> =
        phase_demand.iter().map(|phases| phases.iter().copied().fold(0.0, f64::max)).collect();
    let sustained_instances: u32 = sustained_peak_demand.iter().map(|demand| instances_for(*demand)).sum();
    // The ideal elastic policy (an oracle): each phase, from its first instant, exactly the
    // instances that phase's median demand needs — no reaction lag, no start-up cost. The gap
    // between it and the autoscaler is the autoscaler's overhead; the gap between it and
    // static provisioning is what the load's burstiness allows at best.
    let phase_seconds = |phase: usize| {
        let start = phase as f64 * options.phase_s as f64;
        (covered - start).clamp(0.0, options.phase_s as f64)
    };
    let oracle: f64 = phase_demand
        .iter()
        .map(|phases| {
            phases
                .iter()
                .enumerate()
                .map(|(phase, demand)| f64::from(instances_for(*demand)) * phase_seconds(phase))
                .sum::<f64>()
        })
        .sum();
    let static_sustained = f64::from(sustained_instances) * covered;
    let count = |outcome: Outcome| samples.iter().filter(|sample| sample.outcome == outcome).count();
    let reads = count(Outcome::ReplicaCache) + count(Outcome::ReplicaFilled);
    let saturated_seconds = timeline.iter().filter(|second| second["cpu_saturated"] == json!(true)).count();
    let peak_demand = monitor_samples.iter().map(|sample| sample.demand).fold(0.0, f64::max);
    let _ = live_instances(&mds).await;
    Ok(json!({
        "phases": rates.iter().enumerate().map(|(index, rate)| json!({
            "start_s": index as u64 * options.phase_s, "target_ops": rate })).collect::<Vec<_>>(),
        "elapsed_s": elapsed,
        "operations": samples.len(),
        "throughput_ops": samples.len() as f64 / elapsed,
        "outcomes": {
            "replica_cache": count(Outcome::ReplicaCache),
            "replica_filled": count(Outcome::ReplicaFilled),
            "mds": count(Outcome::Mds),
            "answers": count(Outcome::Answer),
            "failures": count(Outcome::Failure),
            "dropped_backlog": dropped.load(Ordering::Relaxed),
            "backlog_left": backlog_left,
        },
        "replica_cache_hit_fraction": if reads == 0 { 0.0 } else { count(Outcome::ReplicaCache) as f64 / reads as f64 },
        "routing": {
            "replica_answers": reader.stats.replica_answers.load(Ordering::Relaxed),
            "replica_failures": reader.stats.replica_failures.load(Ordering::Relaxed),
            "mds_fallbacks": reader.stats.mds_fallbacks.load(Ordering::Relaxed),
        },
        "latency": latency,
        "latency_cdf": cdf,
        "replica_seconds": {
            "elastic": replica_seconds,
            "static_peak": static_peak,
            "peak_instances": peak,
            "fraction_of_static": if static_peak > 0.0 { replica_seconds / static_peak } else { 0.0 },
            "static_capacity": static_capacity,
            "capacity_instances": capacity_instances,
            "capacity_basis": "per deployment ceil(peak phase rate x read share x deployment's directory share / \
                               (concurrency_limit / service_time)), clamped to [replica_min, replica_max]",
            "deployment_directory_shares": directory_shares,
            "fraction_of_static_capacity": if static_capacity > 0.0 { replica_seconds / static_capacity } else { 0.0 },
            "static_sustained_peak": static_sustained,
            "sustained_peak_instances": sustained_instances,
            "sustained_peak_demand_per_deployment": sustained_peak_demand,
            "sustained_basis": "per deployment ceil(largest per-phase median of its reported demand / target_concurrency), \
                                clamped to [replica_min, replica_max]",
            "fraction_of_static_sustained": if static_sustained > 0.0 { replica_seconds / static_sustained } else { 0.0 },
            "oracle": oracle,
            "oracle_basis": "per deployment and phase ceil(the phase's median reported demand / target_concurrency), \
                             clamped to [replica_min, replica_max], from the phase's first instant",
            "oracle_fraction_of_static_sustained": if static_sustained > 0.0 { oracle / static_sustained } else { 0.0 },
            "elastic_over_oracle": if oracle > 0.0 { replica_seconds / oracle } else { 0.0 },
        },
        "peak_reported_demand": peak_demand,
        "cpu_saturated_seconds": saturated_seconds,
        "timeline": timeline,
        "instances": monitor_samples.iter().map(|sample| json!({
            "at_ms": sample.at_ms, "live": sample.live, "running": sample.running, "demand": sample.demand,
            "live_per_deployment": sample.live_per_deployment,
            "demand_per_deployment": sample.demand_per_deployment })).collect::<Vec<_>>(),
    }))
}

/// Part 2: closed-loop read throughput with a fixed number of instances, each count with the
/// instances' bounded capacity (`bounded`) or without it (no service time, a concurrency
/// limit as large as the clients: the instances are as fast as the CPUs let them be).
async fn run_scaling(options: &Options, root: &Path, bounded: bool) -> Result<Value> {
    let mut options = options.clone();
    if !bounded {
        options.service_time_us = 0;
        options.concurrency_limit = u32::try_from(options.clients).unwrap_or(u32::MAX).max(1);
    }
    let options = &options;
    let label = if bounded { "bounded" } else { "unbounded" };
    let mut steps = Vec::new();
    for (index, instances) in options.scaling_instances.iter().copied().enumerate() {
        let directory = root.join(format!("scaling-{label}-{index}"));
        std::fs::create_dir_all(&directory)?;
        let mds = start_mds(options, &directory, 1, instances, instances)?;
        wait_for_instances(&mds, instances as usize).await?;
        let mut api = Api::open(mds.address, None, "scaling-setup").await?;
        let top = api.mkdir(1, "s", 0o755).await?.ino;
        let mut names = Vec::new();
        for number in 0..64 {
            api.create(top, format!("f{number}"), 0o644).await?;
            names.push(format!("f{number}"));
        }
        let reader =
            Arc::new(RoutedReader::connect(&mds.address.to_string(), reader_options(mds.address).await?).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicU64::new(0));
        let counting = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client in 0..options.clients {
            let (reader, stop, counted, counting, names) =
                (reader.clone(), stop.clone(), counted.clone(), counting.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                let mut round = client;
                while !stop.load(Ordering::Acquire) {
                    round += 1;
                    let ok = reader.lookup(top, names[round % names.len()].as_bytes()).await.is_ok();
                    if ok && counting.load(Ordering::Acquire) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(SCALING_WARMUP).await;
        let cpu_before = read_cpu();
        counting.store(true, Ordering::Release);
        let measured_from = Instant::now();
        let window =
            Duration::from_secs(options.scaling_step_s).saturating_sub(SCALING_WARMUP).max(Duration::from_secs(1));
        tokio::time::sleep(window).await;
        counting.store(false, Ordering::Release);
        let seconds = measured_from.elapsed().as_secs_f64();
        let cpu_after = read_cpu();
        stop.store(true, Ordering::Release);
        for task in tasks {
            task.await.context("scaling client")?;
        }
        let busy = match (&cpu_before, &cpu_after) {
            (Some(before), Some(after)) => busy_fraction(before, after),
            _ => 0.0,
        };
        let throughput = counted.load(Ordering::Relaxed) as f64 / seconds;
        let capacity = nominal_reads_per_second(options).map(|per_instance| f64::from(instances) * per_instance);
        eprintln!(
            "scaling ({label}): {instances} instance(s): {throughput:.0} lookups/s (CPU {:.0}% busy)",
            busy * 100.0
        );
        steps.push(json!({
            "instances": instances,
            "reads_per_second": throughput,
            "nominal_capacity_reads_per_second": capacity,
            "cpu_busy": busy,
            "cpu_saturated": busy >= SATURATED_CPU_FRACTION,
            "replica_answers": reader.stats.replica_answers.load(Ordering::Relaxed),
            "mds_fallbacks": reader.stats.mds_fallbacks.load(Ordering::Relaxed),
        }));
    }
    let base = steps.first().and_then(|step| step["reads_per_second"].as_f64()).unwrap_or(0.0);
    for step in &mut steps {
        let instances = step["instances"].as_f64().unwrap_or(1.0);
        let throughput = step["reads_per_second"].as_f64().unwrap_or(0.0);
        step["efficiency"] = json!(if base > 0.0 { throughput / (instances * base) } else { 0.0 });
    }
    Ok(json!({
        "instance_concurrency_limit": options.concurrency_limit,
        "instance_service_time_us": options.service_time_us,
        "steps": steps,
    }))
}

/// Colour of the running-instances line.
const ORANGE: RGBColor = RGBColor(230, 140, 0);
/// The issue's scaling target, drawn on the efficiency plot.
const SCALING_EFFICIENCY_TARGET: f64 = 0.7;

/// Throughput over time with live instances, the latency CDF, replica-seconds, scaling.
fn plot(results: &Value, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(520);
    let bottom_panels = bottom.split_evenly((1, 3));
    let elastic = &results["elastic"];
    let timeline = elastic["timeline"].as_array().cloned().unwrap_or_default();
    let seconds = timeline.len().max(1) as f64;
    let value = |entry: &Value, key: &str| entry[key].as_f64().unwrap_or(0.0);
    let peak_ops =
        timeline.iter().map(|entry| value(entry, "completed_ops").max(value(entry, "target_ops"))).fold(1.0, f64::max)
            * 1.1;
    let peak_live = timeline.iter().map(|entry| value(entry, "running_instances")).fold(1.0, f64::max) + 1.0;
    let saturated = elastic["cpu_saturated_seconds"].as_u64().unwrap_or(0);
    let title = format!(
        "λFS industrial mix, Pareto(α=2) bursts — throughput and live replica instances ({saturated} s CPU-saturated, red)"
    );
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, 0f64..peak_ops)?
        .set_secondary_coord(0f64..seconds, 0f64..peak_live);
    chart.configure_mesh().x_desc("time (s)").y_desc("operations / s").draw()?;
    chart.configure_secondary_axes().y_desc("instances").draw()?;
    for entry in &timeline {
        if entry["cpu_saturated"] == json!(true) {
            let second = value(entry, "second");
            chart.draw_series(std::iter::once(Rectangle::new(
                [(second, 0.0), (second + 1.0, peak_ops * 0.03)],
                RED.mix(0.6).filled(),
            )))?;
        }
    }
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|entry| (value(entry, "second"), value(entry, "target_ops"))),
            &BLACK.mix(0.4),
        ))?
        .label("target rate")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|entry| (value(entry, "second"), value(entry, "completed_ops"))),
            &BLUE,
        ))?
        .label("completed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(
            timeline.iter().map(|entry| (value(entry, "second"), value(entry, "live_instances"))),
            GREEN.stroke_width(2),
        ))?
        .label("routed instances (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(
            timeline.iter().map(|entry| (value(entry, "second"), value(entry, "running_instances"))),
            &ORANGE,
        ))?
        .label("running instances, incl. starting and draining (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    // Latency CDF (log x).
    let cdf: Vec<(f64, f64)> = elastic["latency_cdf"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .map(|point| {
                    (
                        point["latency_us"].as_f64().unwrap_or(1.0).max(1.0) / 1000.0,
                        point["fraction"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let latency_max = cdf.iter().map(|(latency, _)| *latency).fold(1.0, f64::max);
    let latency_min = cdf.iter().map(|(latency, _)| *latency).fold(latency_max, f64::min).max(0.01);
    let mut chart = ChartBuilder::on(&bottom_panels[0])
        .caption("latency CDF (all operations)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((latency_min..latency_max * 1.1).log_scale(), 0f64..1.0)?;
    chart.configure_mesh().x_desc("latency (ms)").y_desc("fraction").draw()?;
    chart.draw_series(LineSeries::new(cdf, &BLUE))?;

    // Replica-seconds: elastic versus three ways of provisioning statically for the peak.
    let seconds = |key: &str| elastic["replica_seconds"][key].as_f64().unwrap_or(0.0);
    let bars = [
        ("elastic", seconds("elastic"), GREEN.mix(0.9)),
        ("ideal elastic (oracle)", seconds("oracle"), GREEN.mix(0.45)),
        ("static: observed peak", seconds("static_peak"), BLACK.mix(0.5)),
        ("static: sustained peak", seconds("static_sustained_peak"), BLACK.mix(0.35)),
        ("static: nominal capacity", seconds("static_capacity"), BLACK.mix(0.2)),
    ];
    let tallest = bars.iter().map(|(_, value, _)| *value).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom_panels[1])
        .caption("replica-seconds", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..bars.len() as f64, 0f64..tallest * 1.3)?;
    chart.configure_mesh().disable_x_mesh().disable_x_axis().y_desc("instance-seconds").draw()?;
    for (index, (name, value, colour)) in bars.iter().enumerate() {
        let left = index as f64 + 0.15;
        chart.draw_series([Rectangle::new([(left, 0.0), (left + 0.7, *value)], colour.filled())])?;
        // Name and value above each bar (the axis has no room for four names).
        let lines = [name.to_string(), format!("{value:.0}")];
        for (line_index, line) in lines.iter().enumerate() {
            let height = value + tallest * (0.12 - 0.06 * line_index as f64);
            chart.draw_series([Text::new(line.clone(), (left, height), ("sans-serif", 12))])?;
        }
    }

    // Scaling efficiency thr(k) / (k thr(1)), bounded and CPU-bound (their throughputs differ
    // by two orders of magnitude, so the panel compares them by efficiency).
    let series = |kind: &str| -> Vec<(f64, f64)> {
        results["scaling"][kind]["steps"]
            .as_array()
            .map(|steps| steps.iter().map(|step| (value(step, "instances"), value(step, "efficiency"))).collect())
            .unwrap_or_default()
    };
    let kinds = [("bounded", "bounded instances", BLUE), ("unbounded", "unbounded (CPU-bound)", MAGENTA)];
    let max_instances =
        kinds.iter().flat_map(|(kind, _, _)| series(kind)).map(|(instances, _)| instances).fold(1.0, f64::max);
    let max_efficiency =
        kinds.iter().flat_map(|(kind, _, _)| series(kind)).map(|(_, efficiency)| efficiency).fold(1.2, f64::max);
    let mut chart = ChartBuilder::on(&bottom_panels[2])
        .caption("read scaling efficiency (closed loop)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..max_instances + 0.5, 0f64..max_efficiency * 1.1)?;
    chart.configure_mesh().x_desc("instances").y_desc("thr(k) / (k x thr(1))").draw()?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.5, SCALING_EFFICIENCY_TARGET), (max_instances + 0.5, SCALING_EFFICIENCY_TARGET)],
            BLACK.mix(0.4),
        ))?
        .label("target 0.7")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    for (kind, name, colour) in kinds {
        let points = series(kind);
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, &colour).point_size(4))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

async fn run(options: Options) -> Result<()> {
    std::fs::create_dir_all(&options.output).with_context(|| format!("creating {}", options.output.display()))?;
    let scratch = tempfile::tempdir()?;
    let elastic_dir = scratch.path().join("elastic");
    std::fs::create_dir_all(&elastic_dir)?;
    let elastic = run_elastic(&options, &elastic_dir).await?;
    let scaling = if options.scaling_instances.is_empty() {
        json!({})
    } else {
        json!({
            "bounded": run_scaling(&options, scratch.path(), true).await?,
            "unbounded": run_scaling(&options, scratch.path(), false).await?,
        })
    };
    let results = json!({
        "benchmark": "replica_bench",
        "machine": machine(),
        "parameters": {
            "duration_s": options.duration_s,
            "phase_s": options.phase_s,
            "pareto_alpha": PARETO_ALPHA,
            "base_rate_ops": options.base_rate,
            "spike_max_times_base": options.spike_max,
            "clients": options.clients,
            "bench_worker_threads": options.cores,
            "deployments": options.deployments,
            "replica_min": options.replica_min,
            "replica_max": options.replica_max,
            "target_concurrency": options.target_concurrency,
            "instance_concurrency_limit": options.concurrency_limit,
            "instance_service_time_us": options.service_time_us,
            "cooldown_ms": options.cooldown_ms,
            "idle_ms": options.idle_ms,
            "stable_window_ms": options.stable_window_ms,
            "panic_window_ms": options.panic_window_ms,
            "panic_threshold": options.panic_threshold,
            "directories": options.directories,
            "files_per_directory": options.files_per_directory,
            "seed": options.seed,
            "mix_percent": MIX.iter().map(|(operation, weight)| (operation.name().to_string(), json!(weight))).collect::<serde_json::Map<_, _>>(),
        },
        "note": "Instance capacity is bounded by an artificial service time (a timer hold, not CPU work); \
                 seconds with >= 90% of all CPUs busy are labelled cpu_saturated. The benchmark's clients, \
                 the MDS and every instance share this machine.",
        "elastic": elastic,
        "scaling": scaling,
    });
    let json_path = options.output.join("replica_bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    let png_path = options.output.join("replica_bench.png");
    plot(&results, &png_path)?;
    let elastic = &results["elastic"];
    eprintln!(
        "elastic: {:.0} ops/s over {:.0} s; p50 {} us, p99 {} us; replica-seconds {:.0} vs static peak {:.0} ({:.0}%), \
         vs static for the sustained peak {:.0} ({:.0}%), vs static at nominal capacity {:.0} ({:.0}%); \
         ideal elastic (oracle) {:.0} ({:.0}% of the sustained-peak static); cache hits {:.1}% of replica reads; failures {}; CPU-saturated seconds {}",
        elastic["throughput_ops"].as_f64().unwrap_or(0.0),
        elastic["elapsed_s"].as_f64().unwrap_or(0.0),
        elastic["latency"]["all"]["p50_us"],
        elastic["latency"]["all"]["p99_us"],
        elastic["replica_seconds"]["elastic"].as_f64().unwrap_or(0.0),
        elastic["replica_seconds"]["static_peak"].as_f64().unwrap_or(0.0),
        elastic["replica_seconds"]["fraction_of_static"].as_f64().unwrap_or(0.0) * 100.0,
        elastic["replica_seconds"]["static_sustained_peak"].as_f64().unwrap_or(0.0),
        elastic["replica_seconds"]["fraction_of_static_sustained"].as_f64().unwrap_or(0.0) * 100.0,
        elastic["replica_seconds"]["static_capacity"].as_f64().unwrap_or(0.0),
        elastic["replica_seconds"]["fraction_of_static_capacity"].as_f64().unwrap_or(0.0) * 100.0,
        elastic["replica_seconds"]["oracle"].as_f64().unwrap_or(0.0),
        elastic["replica_seconds"]["oracle_fraction_of_static_sustained"].as_f64().unwrap_or(0.0) * 100.0,
        elastic["replica_cache_hit_fraction"].as_f64().unwrap_or(0.0) * 100.0,
        elastic["outcomes"]["failures"],
        elastic["cpu_saturated_seconds"],
    );
    eprintln!("wrote {} and {}", json_path.display(), png_path.display());
    Ok(())
}

fn main() -> Result<()> {
    let options = Options::parse();
    if options.replot {
        let json_path = options.output.join("replica_bench.json");
        let text = std::fs::read_to_string(&json_path).with_context(|| format!("reading {}", json_path.display()))?;
        let results: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", json_path.display()))?;
        return plot(&results, &options.output.join("replica_bench.png"));
    }
    // The MDS binary sits next to this one (target/<profile>/), unless told otherwise.
    if std::env::var_os("CUDELE_BIN_DIR").is_none() {
        if let Some(directory) = std::env::current_exe()?.parent() {
            std::env::set_var("CUDELE_BIN_DIR", directory);
        }
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(options.cores.max(1)).enable_all().build()?;
    runtime.block_on(run(options))
}

/// Routing options whose MDS fallback reads in a session of its own (calls need one).
async fn reader_options(address: std::net::SocketAddr) -> Result<RoutingOptions> {
    let (_, _, credential) = cudele_e2e::connect_session_with_credential(address, None, "bench-reader").await?;
    Ok(RoutingOptions { session: Some(credential), ..RoutingOptions::default() })
}
