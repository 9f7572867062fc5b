//! mds-bench: metadata throughput of a real `cudele-mds` through gRPC — creates/s and
//! getattrs/s with 1, 4 and 16 concurrent clients (each its own session and connection, each
//! creating in its own directory), journal bytes per create (from the Status RPC and from the
//! segment objects on disk), and how busy the CPUs were. Writes JSON (default
//! `bench-results/mds.json`) with the machine it ran on.
//!
//! Build and run in release, so both this binary and the MDS it starts are optimised:
//!
//! ```text
//! cargo build --release -p cudele-mds -p cudele-e2e
//! target/release/mds-bench [--clients 1,4,16] [--seconds 5] [--max-ops N] [--out PATH]
//! ```
//!
//! The MDS binary is looked for next to this one (or in `CUDELE_BIN_DIR`). Each point gets a
//! fresh MDS and data dir; snapshots are pushed out of the measurement window so no segment
//! is trimmed while bytes are counted.

use anyhow::{bail, Context, Result};
use cudele_e2e::bench::{self, busy_fraction, machine_cpu_jiffies, nproc, SATURATION_FRACTION};
use cudele_e2e::{segment_objects, Api, MdsProcess};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: u64 = 1;
/// How often each client renews its session lease (the MDS default lease is 10 s).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

struct Options {
    clients: Vec<usize>,
    seconds: f64,
    /// Stop a phase after this many operations per client, if it comes before the time.
    max_ops: Option<u64>,
    out: PathBuf,
}

fn usage() -> &'static str {
    "usage: mds-bench [--clients 1,4,16] [--seconds 5] [--max-ops N] [--out bench-results/mds.json]"
}

fn parse_options() -> Result<Options> {
    let mut options =
        Options { clients: vec![1, 4, 16], seconds: 5.0, max_ops: None, out: PathBuf::from("bench-results/mds.json") };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().with_context(|| format!("{argument} needs a value; {}", usage()));
        match argument.as_str() {
            "--clients" => {
                options.clients = value()?
                    .split(',')
                    .map(|count| count.trim().parse::<usize>().context("--clients takes numbers like 1,4,16"))
                    .collect::<Result<_>>()?;
                if options.clients.contains(&0) {
                    bail!("--clients: a point needs at least one client");
                }
            }
            "--seconds" => options.seconds = value()?.parse().context("--seconds takes a number")?,
            "--max-ops" => options.max_ops = Some(value()?.parse().context("--max-ops takes a number")?),
            "--out" => options.out = PathBuf::from(value()?),
            "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown option {other}; {}", usage()),
        }
    }
    Ok(options)
}

/// The machine, and how busy it was at the start (other work on it skews the figures).
fn machine() -> Value {
    let mut machine = bench::machine();
    machine["loadavg_at_start"] = json!(bench::loadavg());
    machine["temp_dir"] = json!(std::env::temp_dir());
    machine
}

/// CPU seconds `pid` has used so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    bench::cpu_seconds(pid).with_context(|| format!("reading /proc/{pid}/stat"))
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// What one phase (all clients doing one operation) measured.
struct Phase {
    operations: u64,
    wall: Duration,
    latencies: Vec<Duration>,
    mds_cpu_seconds: f64,
    bench_cpu_seconds: f64,
    /// Fraction of all CPUs busy during the phase (any process, ours included).
    machine_busy_fraction: f64,
}

impl Phase {
    fn to_json(&self) -> Value {
        let wall = self.wall.as_secs_f64();
        let mds_cores = self.mds_cpu_seconds / wall;
        let bench_cores = self.bench_cpu_seconds / wall;
        let ours_saturated = mds_cores + bench_cores >= SATURATION_FRACTION * nproc() as f64;
        let machine_saturated = self.machine_busy_fraction >= SATURATION_FRACTION;
        let saturated = ours_saturated || machine_saturated;
        json!({
            "operations": self.operations,
            "seconds": wall,
            "per_second": self.operations as f64 / wall,
            "latency_us": {
                "p50": percentile(&self.latencies, 0.50),
                "p90": percentile(&self.latencies, 0.90),
                "p99": percentile(&self.latencies, 0.99),
                "max": percentile(&self.latencies, 1.0),
            },
            "mds_cpu_cores": mds_cores,
            "bench_cpu_cores": bench_cores,
            "machine_busy_fraction": self.machine_busy_fraction,
            "cpu_saturated": saturated,
            "note": if ours_saturated {
                format!(
                    "CPU-bound: the MDS used {mds_cores:.2} and the benchmark clients {bench_cores:.2} of {} cores; \
                     the figure measures this machine's CPU, not the MDS's limit",
                    nproc()
                )
            } else if machine_saturated {
                format!(
                    "CPU-bound by other work: the machine's CPUs were {:.0}% busy (the MDS used {mds_cores:.2} and \
                     the benchmark clients {bench_cores:.2} of {} cores); the figure understates the MDS",
                    self.machine_busy_fraction * 100.0,
                    nproc()
                )
            } else {
                String::new()
            },
        })
    }
}

/// Run `operation` from every client until the deadline (or `max_ops` each).
async fn run_phase<F, Fut>(
    clients: &[Api],
    seconds: f64,
    max_ops: Option<u64>,
    mds_pid: u32,
    operation: F,
) -> Result<Phase>
where
    F: Fn(Api, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let machine_before = machine_cpu_jiffies();
    let mds_cpu_before = cpu_seconds(mds_pid)?;
    let bench_cpu_before = cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, api)| {
            let operation = operation.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut count = 0u64;
                while Instant::now() < deadline && max_ops.is_none_or(|max| count < max) {
                    let begun = Instant::now();
                    operation(api.clone(), index, count).await?;
                    latencies.push(begun.elapsed());
                    count += 1;
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = started.elapsed();
    latencies.sort();
    let machine_after = machine_cpu_jiffies();
    let machine_busy_fraction = busy_fraction(machine_before, machine_after);
    Ok(Phase {
        machine_busy_fraction,
        operations: latencies.len() as u64,
        wall,
        latencies,
        mds_cpu_seconds: cpu_seconds(mds_pid)? - mds_cpu_before,
        bench_cpu_seconds: cpu_seconds(std::process::id())? - bench_cpu_before,
    })
}

fn segment_totals(objects: &Path) -> (u64, u64) {
    let segments = segment_objects(objects);
    (segments.len() as u64, segments.iter().map(|(_, bytes)| bytes).sum())
}

/// One point: a fresh MDS, `client_count` sessions, a create phase then a getattr phase.
async fn measure(client_count: usize, options: &Options) -> Result<Value> {
    let directory = tempfile::tempdir()?;
    let data_dir = directory.path().join("data");
    // Snapshots (and the trims after them) stay out of the measurement window.
    let mut mds = MdsProcess::start(&data_dir, &["--snapshot-interval-ms", "86400000"])?;
    let pid = mds.pid().context("mds pid")?;
    let mut clients = Vec::new();
    let mut homes = Vec::new();
    let mut heartbeats = Vec::new();
    for index in 0..client_count {
        let mut api = Api::open(mds.address, None, &format!("bench-{index}")).await?;
        homes.push(api.mkdir(ROOT, format!("client-{index}"), 0o755).await?.ino);
        // Like a mount, keep the session's lease fresh (a point outlasts the default lease).
        let mut heartbeat_client = api.client.clone();
        heartbeats.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                if heartbeat_client.heartbeat(cudele_proto::pb::Empty {}).await.is_err() {
                    return;
                }
            }
        }));
        clients.push(api);
    }
    let mut status_api = clients[0].clone();
    let before = status_api.status().await?;
    let (segments_before, segment_bytes_before) = segment_totals(&data_dir.join("objects"));

    let created: std::sync::Arc<Vec<std::sync::Mutex<Vec<u64>>>> =
        std::sync::Arc::new((0..client_count).map(|_| std::sync::Mutex::new(Vec::new())).collect());
    let homes = std::sync::Arc::new(homes);
    let creates = run_phase(&clients, options.seconds, options.max_ops, pid, {
        let created = created.clone();
        let homes = homes.clone();
        move |mut api: Api, index: usize, count: u64| {
            let created = created.clone();
            let homes = homes.clone();
            async move {
                let attr = api.create(homes[index], format!("f{count}"), 0o644).await?;
                created[index].lock().expect("created lock").push(attr.ino);
                Ok(())
            }
        }
    })
    .await?;
    let after = status_api.status().await?;
    let (segments_after, segment_bytes_after) = segment_totals(&data_dir.join("objects"));

    let getattrs = run_phase(&clients, options.seconds, options.max_ops, pid, {
        let created = created.clone();
        move |mut api: Api, index: usize, count: u64| {
            let created = created.clone();
            async move {
                let ino = {
                    let inodes = created[index].lock().expect("created lock");
                    inodes[(count as usize) % inodes.len()]
                };
                api.getattr(ino).await?;
                Ok(())
            }
        }
    })
    .await?;
    let dump = status_api.dump().await?;
    if !dump.invariant_violation.is_empty() {
        bail!("namespace invariant violated after the run: {}", dump.invariant_violation);
    }
    for heartbeat in heartbeats {
        heartbeat.abort();
    }
    mds.kill();

    let create_count = creates.operations.max(1) as f64;
    let journal_events = after.journal_events - before.journal_events;
    let journal_bytes = after.journal_bytes - before.journal_bytes;
    let segments = segments_after - segments_before;
    Ok(json!({
        "clients": client_count,
        "creates": creates.to_json(),
        "getattrs": getattrs.to_json(),
        "journal": {
            "events": journal_events,
            "bytes": journal_bytes,
            "bytes_per_create": journal_bytes as f64 / create_count,
            "bytes_per_event": journal_bytes as f64 / journal_events.max(1) as f64,
            "segments_written": segments,
            "creates_per_segment": create_count / segments.max(1) as f64,
            "segment_object_bytes_on_disk": segment_bytes_after - segment_bytes_before,
            "segment_object_bytes_per_create": (segment_bytes_after - segment_bytes_before) as f64 / create_count,
        },
    }))
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let own_directory = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
    if std::env::var_os("CUDELE_BIN_DIR").is_none() {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("CUDELE_BIN_DIR", &own_directory);
    }
    let mds_binary = cudele_e2e::binary("cudele-mds");
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    if profile != "release" {
        eprintln!("warning: mds-bench is a debug build; figures are not representative (use --release)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut points = Vec::new();
    for &client_count in &options.clients {
        let point = runtime.block_on(measure(client_count, &options))?;
        println!(
            "{client_count:>3} clients: {:>9.0} creates/s (p99 {:>7.0} us){}  {:>9.0} getattrs/s (p99 {:>6.0} us){}  \
             journal {:.1} B/create ({:.1} creates/segment, {:.1} B/create on disk)",
            point["creates"]["per_second"].as_f64().unwrap_or_default(),
            point["creates"]["latency_us"]["p99"].as_f64().unwrap_or_default(),
            if point["creates"]["cpu_saturated"].as_bool() == Some(true) { " [CPU-bound]" } else { "" },
            point["getattrs"]["per_second"].as_f64().unwrap_or_default(),
            point["getattrs"]["latency_us"]["p99"].as_f64().unwrap_or_default(),
            if point["getattrs"]["cpu_saturated"].as_bool() == Some(true) { " [CPU-bound]" } else { "" },
            point["journal"]["bytes_per_create"].as_f64().unwrap_or_default(),
            point["journal"]["creates_per_segment"].as_f64().unwrap_or_default(),
            point["journal"]["segment_object_bytes_per_create"].as_f64().unwrap_or_default(),
        );
        points.push(point);
    }
    let results = json!({
        "benchmark": "mds-bench",
        "description": "creates/s and getattrs/s through gRPC against one cudele-mds (local object directory, \
                        acknowledged after the journal segment is durable), journal bytes per create",
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "profile": profile,
        "mds_binary": mds_binary,
        "seconds_per_phase": options.seconds,
        "max_ops_per_client": options.max_ops,
        "machine": machine(),
        "points": points,
    });
    if let Some(parent) = options.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", options.out.display()))?;
    println!("results written to {}", options.out.display());
    Ok(())
}
