//! subtree_bench: programmable subtrees through real mounts of one real `cudele-mds`, after the
//! Cudele paper's evaluation:
//!
//! - `--figure9`: strong vs weak creates with 1..N clients. Each client is its own mount and
//!   creates files in its own directory; strong = the default policy (RPCs + stream, one RPC per
//!   create), weak = each client decouples its directory through its mount (`cudele decouple DIR
//!   --policy FILE`, by default batchfs.yml — weak/local — and weak-none.yml — weak/none, no
//!   fault tolerance), creates, then `cudele merge DIR`. Aggregate creates/s per client count and
//!   mode; the merges (all clients at once) are timed separately.
//! - `--figure10`: block vs allow under a rogue client. Client A decouples a directory
//!   (checkpoint.yml with `interfere_policy: block`, or the same with `allow`) and creates files
//!   while client B, another mount, hammers the same directory (creates of its own names, stats
//!   of A's names, creates of A's names). A's create throughput with no rogue (isolated), under
//!   block and under allow; B's outcomes (EBUSY under block, successes under allow); the merge's
//!   applied/skipped counts (`cudele status DIR --json`).
//! - `--sync`: namespace-sync overhead. One client creates a fixed number of files in a weak
//!   subtree (weak-sync.yml, weak/global) whose `sync_interval` is none or each of `--intervals-ms`;
//!   creates/s normalised to no sync, and how many syncs (merges at the MDS) ran meanwhile.
//!
//! With none of the three flags, all three run. Each writes `OUT_DIR/figure9.json` + `.png`,
//! `figure10.json` + `.png`, `sync_interval.json` + `.png`, with the machine, the load average,
//! and each phase's CPU use, flagged `cpu_saturated` when the machine's CPUs were ≥ 90% busy.
//!
//! ```text
//! cargo build --release -p cudele-mds -p cudele-client --bins
//! cargo build --release -p cudele-e2e --bin subtree_bench
//! target/release/subtree_bench [--figure9] [--figure10] [--sync] [--clients 1,2,4] [--files 2000]
//! ```
//!
//! Needs root and /dev/fuse. Mounts are unmounted and the MDS killed by pid by their guards
//! (`cudele_e2e::Mount`, `MdsProcess`), also on error.

use anyhow::{bail, Context, Result};
use clap::Parser;
use cudele_e2e::bench::{
    create_files, file_names, loadavg, machine, median, plot_bars, run_phase, saturation_rule, timed, write_json,
    BarChart, BarSeries, CpuWatch, Phase, Server,
};
use cudele_e2e::{MdsProcess, Mount};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How many of the rogue client's errors of one kind are listed by name in the JSON.
const ROGUE_ERRNO_KINDS_MAX: usize = 16;
/// How many merge skip reasons are copied into the JSON.
const SKIP_REASONS_SHOWN_MAX: usize = 5;

#[derive(Parser, Debug)]
#[command(name = "subtree_bench", about = "Cudele Figures 9 and 10 and namespace-sync overhead, through real mounts")]
struct Options {
    /// Run Figure 9 (strong vs weak creates with 1..N clients).
    #[arg(long)]
    figure9: bool,
    /// Run Figure 10 (block vs allow under a rogue client).
    #[arg(long)]
    figure10: bool,
    /// Run the namespace-sync overhead benchmark.
    #[arg(long)]
    sync: bool,
    /// Figure 9: client counts, comma-separated; each client is its own mount.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    clients: Vec<usize>,
    /// Figure 9: files each client creates in strong mode (one durable RPC each).
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Figure 9: files each client creates in weak mode (more, so that the phase lasts long
    /// enough to be timed and its CPU use sampled).
    #[arg(long, default_value_t = 20_000)]
    weak_files: usize,
    /// Figure 9: the weak policies (files in --policies), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "batchfs.yml,weak-none.yml")]
    weak_policies: Vec<String>,
    /// Figure 9: repetitions of each point (the median aggregate rate is reported).
    #[arg(long, default_value_t = 1)]
    figure9_repetitions: usize,
    /// Figure 10: files client A creates per sample.
    #[arg(long, default_value_t = 10_000)]
    figure10_files: usize,
    /// Figure 10: the decoupled policy; its interfere_policy is set to block or allow.
    #[arg(long, default_value = "checkpoint.yml")]
    figure10_policy: String,
    /// Namespace sync: intervals in milliseconds, comma-separated; 0 = no sync_interval.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,500,200,100")]
    intervals_ms: Vec<u64>,
    /// Namespace sync: files created per sample.
    #[arg(long, default_value_t = 20_000)]
    sync_files: usize,
    /// Namespace sync: the weak policy whose sync_interval is varied.
    #[arg(long, default_value = "weak-sync.yml")]
    sync_policy: String,
    /// Figure 10 and namespace sync: repetitions, interleaved across variants (median reported).
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Where the JSON and PNG files go.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// Directory holding the policy files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies"))]
    policies: PathBuf,
}

// ----- the cluster: one MDS, N mounts -----

/// One MDS and `mounts` mounts of it. Fields drop in order: the mounts unmount (merging what
/// is left) while the MDS still runs, then the MDS is killed, then the directories go.
struct Cluster {
    mounts: Vec<Mount>,
    mds: MdsProcess,
    scratch: tempfile::TempDir,
}

impl Cluster {
    fn start(mount_count: usize) -> Result<Cluster> {
        let scratch = tempfile::Builder::new().prefix("subtree-bench-").tempdir()?;
        let mds = MdsProcess::start(&scratch.path().join("mds"), &[])?;
        let mut mounts = Vec::new();
        for index in 0..mount_count {
            let mountpoint = scratch.path().join(format!("mount-{index}"));
            let journals = scratch.path().join(format!("journals-{index}"));
            mounts.push(Mount::start(mds.address, &mountpoint, &journals, "")?);
        }
        Ok(Cluster { mounts, mds, scratch })
    }

    /// The processes whose CPU use the phases report: the MDS and every mount.
    fn servers(&self) -> Vec<Server> {
        let mut servers: Vec<Server> = self.mds.pid().map(|pid| Server::new("cudele-mds", pid)).into_iter().collect();
        for (index, mount) in self.mounts.iter().enumerate() {
            if let Some(pid) = mount.pid() {
                servers.push(Server::new(format!("cudele-mount-{index}"), pid));
            }
        }
        servers
    }

    /// A policy file written into the scratch directory.
    fn write_policy(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The MDS's count of merge RPCs so far.
    fn merges_at_mds(&self) -> Result<u64> {
        let text = cli(&[
            OsStr::new("status"),
            OsStr::new("--server"),
            OsStr::new(&self.mds.address.to_string()),
            OsStr::new("--json"),
        ])?;
        let status: Value = serde_json::from_str(text.trim()).context("parsing the MDS status")?;
        Ok(status["operations"]["merge"].as_u64().unwrap_or(0))
    }

    /// Unmount every mount (errors reported), then stop the MDS by pid.
    fn stop(mut self) -> Result<()> {
        let mut errors = Vec::new();
        for mut mount in self.mounts.drain(..) {
            if let Err(error) = mount.unmount() {
                errors.push(format!("{error:#}"));
            }
        }
        if let Err(error) = self.mds.stop() {
            errors.push(format!("{error:#}"));
        }
        if !errors.is_empty() {
            bail!("stopping the cluster: {}", errors.join("; "));
        }
        Ok(())
    }
}

/// Run `cudele ARGS`; its stdout, or an error with its stderr.
fn cli(arguments: &[&OsStr]) -> Result<String> {
    let output = cudele_e2e::cudele(arguments)?;
    if !output.success() {
        bail!("cudele {arguments:?} failed ({}): {}", output.status, output.stderr.trim());
    }
    Ok(output.stdout)
}

fn decouple(directory: &Path, policy: &Path) -> Result<()> {
    cli(&[OsStr::new("decouple"), directory.as_os_str(), OsStr::new("--policy"), policy.as_os_str()]).map(drop)
}

fn merge(directory: &Path) -> Result<()> {
    cli(&[OsStr::new("merge"), directory.as_os_str()]).map(drop)
}

fn recouple(directory: &Path) -> Result<()> {
    cli(&[OsStr::new("recouple"), directory.as_os_str()]).map(drop)
}

fn subtree_status(directory: &Path) -> Result<Value> {
    let text = cli(&[OsStr::new("status"), directory.as_os_str(), OsStr::new("--json")])?;
    serde_json::from_str(text.trim()).with_context(|| format!("parsing the status of {}", directory.display()))
}

/// The outcome of a merge from `cudele status DIR --json` (`last_merge`), skip reasons cut short.
fn merge_outcome(status: &Value) -> Value {
    let last = &status["last_merge"];
    let reasons: Vec<Value> = last["skip_reasons"].as_array().cloned().unwrap_or_default();
    json!({
        "events_applied": last["events_applied"],
        "events_skipped": last["events_skipped"],
        "events_already_merged": last["events_already_merged"],
        "skip_reasons_first": reasons.iter().take(SKIP_REASONS_SHOWN_MAX).collect::<Vec<_>>(),
    })
}

fn policy_path(options: &Options, file: &str) -> Result<PathBuf> {
    let path = options.policies.join(file);
    if !path.exists() {
        bail!("{} is missing (set --policies to the examples/policies directory)", path.display());
    }
    Ok(path)
}

fn policy_text(options: &Options, file: &str) -> Result<String> {
    let path = policy_path(options, file)?;
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `text` with the top-level `key:` line replaced by `key: value` (appended if missing, removed
/// when `value` is None). Comments and other keys are kept.
fn with_key(text: &str, key: &str, value: Option<&str>) -> String {
    let prefix = format!("{key}:");
    let mut lines: Vec<String> = text.lines().filter(|line| !line.starts_with(&prefix)).map(str::to_string).collect();
    if let Some(value) = value {
        lines.push(format!("{key}: {value}"));
    }
    lines.join("\n") + "\n"
}

/// How many entries `directory` lists (through whichever mount it is on).
fn count_entries(directory: &Path) -> Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(directory).with_context(|| format!("listing {}", directory.display()))? {
        entry.with_context(|| format!("listing {}", directory.display()))?;
        count += 1;
    }
    Ok(count)
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The fields every result file starts with.
fn header(benchmark: &str, options: &Options) -> Result<Value> {
    let mut machine = machine();
    machine["loadavg_before"] = json!(loadavg());
    Ok(json!({
        "benchmark": benchmark,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "profile": profile(),
        "machine": machine,
        "policies_dir": options.policies,
        "saturation_rule": saturation_rule(),
    }))
}

/// Finish a result file: load after, wall time, failures; write the JSON.
fn finish(mut results: Value, started: Instant, failures: &[String], path: &Path) -> Result<()> {
    results["machine"]["loadavg_after"] = json!(loadavg());
    results["wall_seconds"] = json!(started.elapsed().as_secs_f64());
    results["failures"] = json!(failures);
    write_json(path, &results)?;
    println!("results written to {} (and .png)", path.display());
    if !failures.is_empty() {
        bail!("{} point(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

fn saturated_mark(phase: &Value) -> &'static str {
    if phase["cpu_saturated"].as_bool() == Some(true) {
        " [CPU-saturated]"
    } else {
        ""
    }
}

// ----- Figure 9 -----

/// How the clients of a Figure 9 point create: strong, or decoupled under a weak policy file.
#[derive(Clone)]
enum Mode {
    Strong,
    Weak(String),
}

impl Mode {
    fn key(&self) -> String {
        match self {
            Mode::Strong => "strong".to_string(),
            Mode::Weak(file) => format!("weak:{}", file.trim_end_matches(".yml")),
        }
    }
}

/// One Figure 9 sample: a fresh MDS and `clients` mounts, each creating in its own directory.
fn figure9_sample(mode: &Mode, clients: usize, options: &Options) -> Result<Value> {
    let cluster = Cluster::start(clients)?;
    let servers = cluster.servers();
    let directories: Vec<PathBuf> =
        cluster.mounts.iter().enumerate().map(|(index, mount)| mount.path(format!("client-{index}"))).collect();
    for directory in &directories {
        std::fs::create_dir(directory).with_context(|| format!("mkdir {}", directory.display()))?;
    }
    let files = match mode {
        Mode::Strong => options.files,
        Mode::Weak(_) => options.weak_files,
    };
    let mut decouple_seconds = Vec::new();
    if let Mode::Weak(file) = mode {
        let policy = policy_path(options, file)?;
        for directory in &directories {
            decouple_seconds.push(timed(|| decouple(directory, &policy))?.1);
        }
    }
    let names = file_names(files);
    let creates = run_phase(&directories, &servers, |handle, path| create_files(handle, path, &names))?;
    let mut point = json!({
        "mode": mode.key(),
        "clients": clients,
        "files_per_client": files,
        "creates": creates.to_json(),
        "creates_per_second": creates.per_second(),
        "creates_per_second_per_client": creates.per_second() / clients as f64,
    });
    if matches!(mode, Mode::Weak(_)) {
        point["decouple_seconds"] = json!(decouple_seconds);
        point["merge"] = figure9_merge(&directories, &servers)?;
        // Untimed: a blocking subtree stays EBUSY to the other mounts until it is given back.
        let mut recouple_seconds = Vec::new();
        for directory in &directories {
            recouple_seconds.push(timed(|| recouple(directory))?.1);
        }
        point["recouple_seconds"] = json!(recouple_seconds);
    }
    // Every client's files are visible to another mount (after the merge, for weak).
    let mut visible = Vec::new();
    for index in 0..clients {
        let other = &cluster.mounts[(index + 1) % clients];
        visible.push(count_entries(&other.path(format!("client-{index}")))?);
    }
    if visible.iter().any(|count| *count != files) {
        bail!("after the run another mount lists {visible:?} files per client directory, expected {files}");
    }
    point["files_visible_to_another_mount"] = json!(visible);
    cluster.stop()?;
    Ok(point)
}

/// Every client merges its subtree at once (`cudele merge DIR`, each through its own mount).
fn figure9_merge(directories: &[PathBuf], servers: &[Server]) -> Result<Value> {
    let mut events = 0;
    for directory in directories {
        events += subtree_status(directory)?["events_unmerged"].as_u64().unwrap_or(0);
    }
    let watch = CpuWatch::start(servers);
    let started = Instant::now();
    let per_client: Vec<Result<f64>> = std::thread::scope(|scope| {
        let merges: Vec<_> = directories
            .iter()
            .map(|directory| scope.spawn(move || timed(|| merge(directory)).map(|((), seconds)| seconds)))
            .collect();
        merges.into_iter().map(|merge| merge.join().unwrap_or_else(|_| bail!("a merge thread panicked"))).collect()
    });
    let wall = started.elapsed();
    let (machine_busy_fraction, cpu_cores) = watch.finish(wall);
    let per_client = per_client.into_iter().collect::<Result<Vec<f64>>>()?;
    let mut outcomes = Vec::new();
    for directory in directories {
        let status = subtree_status(directory)?;
        if status["events_unmerged"].as_u64() != Some(0) {
            bail!("{} still has unmerged events after cudele merge: {status}", directory.display());
        }
        outcomes.push(merge_outcome(&status));
    }
    let phase = Phase { operations: events, wall, machine_busy_fraction, cpu_cores };
    Ok(json!({
        "what": "all clients run `cudele merge DIR` at once; seconds = until the last finishes (CLI start-up \
                 included); per_second = events merged per second",
        "events": events,
        "seconds_per_client": per_client,
        "phase": phase.to_json(),
        "outcomes": outcomes,
    }))
}

fn run_figure9(options: &Options) -> Result<()> {
    let started = Instant::now();
    let mut results = header("subtree_bench --figure9", options)?;
    let modes: Vec<Mode> =
        std::iter::once(Mode::Strong).chain(options.weak_policies.iter().cloned().map(Mode::Weak)).collect();
    let mut failures = Vec::new();
    let mut points = Vec::new();
    for &clients in &options.clients {
        for mode in &modes {
            let mut samples = Vec::new();
            for repetition in 0..options.figure9_repetitions.max(1) {
                eprintln!("figure 9: {} with {clients} client(s), repetition {}", mode.key(), repetition + 1);
                match figure9_sample(mode, clients, options) {
                    Ok(sample) => samples.push(sample),
                    Err(error) => {
                        eprintln!("figure 9: {} with {clients} client(s): {error:#}", mode.key());
                        failures.push(format!("{} with {clients} client(s): {error:#}", mode.key()));
                        break;
                    }
                }
            }
            if samples.is_empty() {
                continue;
            }
            let rates: Vec<f64> =
                samples.iter().map(|sample| sample["creates_per_second"].as_f64().unwrap_or(0.0)).collect();
            let chosen = median(rates.clone());
            let mut point = samples
                .iter()
                .find(|sample| sample["creates_per_second"].as_f64() == Some(chosen))
                .cloned()
                .unwrap_or_else(|| samples[0].clone());
            point["samples_creates_per_second"] = json!(rates);
            println!(
                "{:<22} {clients} client(s): {:>9.0} creates/s aggregate ({:.0} per client){}{}",
                mode.key(),
                chosen,
                point["creates_per_second_per_client"].as_f64().unwrap_or(0.0),
                saturated_mark(&point["creates"]),
                match point["merge"]["phase"]["seconds"].as_f64() {
                    Some(seconds) => format!(
                        "; merge {} events in {seconds:.3} s{}",
                        point["merge"]["events"],
                        saturated_mark(&point["merge"]["phase"])
                    ),
                    None => String::new(),
                }
            );
            points.push(point);
        }
    }
    let strong_at = |clients: u64| {
        points
            .iter()
            .find(|point| point["mode"] == "strong" && point["clients"].as_u64() == Some(clients))
            .and_then(|point| point["creates_per_second"].as_f64())
    };
    let speedups: Vec<Value> = points
        .iter()
        .filter(|point| point["mode"] != "strong")
        .filter_map(|point| {
            let clients = point["clients"].as_u64()?;
            let strong = strong_at(clients)?;
            Some(json!({
                "mode": point["mode"],
                "clients": clients,
                "weak_over_strong_creates": point["creates_per_second"].as_f64()? / strong.max(1e-9),
            }))
        })
        .collect();
    results["method"] = json!(
        "per point: a fresh cudele-mds and one `cudele mount` per client; each client creates files \
         (openat O_CREAT|O_EXCL|O_WRONLY + close, one thread per client, all released together) in its own \
         directory on its own mount. strong: the default policy (RPCs + stream). weak:POLICY: each client first \
         decouples its directory through its mount with `cudele decouple DIR --policy POLICY`; after the creates \
         all clients run `cudele merge DIR` at once (timed separately). creates_per_second = all clients' creates \
         over the wall time from the first client's start to the last one's end. Then (untimed) each weak client \
         recouples, and another mount must list every client's files."
    );
    results["parameters"] = json!({
        "clients": options.clients,
        "files_per_client_strong": options.files,
        "files_per_client_weak": options.weak_files,
        "weak_policies": options.weak_policies,
        "repetitions": options.figure9_repetitions,
    });
    results["points"] = json!(points);
    results["weak_over_strong"] = json!(speedups);
    let groups: Vec<String> = options
        .clients
        .iter()
        .map(|clients| format!("{clients} client{}", if *clients == 1 { "" } else { "s" }))
        .collect();
    let series: Vec<BarSeries> = modes
        .iter()
        .map(|mode| {
            let point_of = |clients: usize| {
                points
                    .iter()
                    .find(|point| point["mode"] == mode.key() && point["clients"].as_u64() == Some(clients as u64))
            };
            BarSeries {
                label: match mode {
                    Mode::Strong => "strong (RPCs + stream)".to_string(),
                    Mode::Weak(file) => format!("weak ({file}), creates only"),
                },
                values: options
                    .clients
                    .iter()
                    .map(|clients| point_of(*clients).and_then(|point| point["creates_per_second"].as_f64()))
                    .collect(),
                saturated: options
                    .clients
                    .iter()
                    .map(|clients| {
                        point_of(*clients)
                            .is_some_and(|point| point["creates"]["cpu_saturated"].as_bool() == Some(true))
                    })
                    .collect(),
            }
        })
        .collect();
    let path = options.out_dir.join("figure9.json");
    plot_bars(
        &BarChart {
            title: "Figure 9: aggregate creates/s, strong vs weak, one mount per client (outlined = CPU-saturated)",
            y_description: "creates/s, all clients (log)",
            groups: &groups,
            series: &series,
            log_scale: true,
            value_decimals: 0,
        },
        &path.with_extension("png"),
    )?;
    finish(results, started, &failures, &path)
}

// ----- Figure 10 -----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Interference {
    /// Block policy, no rogue client.
    Isolated,
    Block,
    Allow,
}

impl Interference {
    fn key(self) -> &'static str {
        match self {
            Interference::Isolated => "isolated",
            Interference::Block => "block",
            Interference::Allow => "allow",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Interference::Isolated => "isolated (block, no rogue)",
            Interference::Block => "block + rogue",
            Interference::Allow => "allow + rogue",
        }
    }
}

const INTERFERENCES: [Interference; 3] = [Interference::Isolated, Interference::Block, Interference::Allow];

/// What the rogue client's operations returned.
#[derive(Default)]
struct RogueTally {
    operations: u64,
    succeeded: u64,
    own_creates_succeeded: u64,
    seconds: f64,
    errors: BTreeMap<String, u64>,
}

impl RogueTally {
    fn record(&mut self, result: std::io::Result<()>) -> bool {
        self.operations += 1;
        match result {
            Ok(()) => {
                self.succeeded += 1;
                true
            }
            Err(error) => {
                let name = match error.raw_os_error() {
                    Some(libc::EBUSY) => "EBUSY".to_string(),
                    Some(libc::ENOENT) => "ENOENT".to_string(),
                    Some(libc::EEXIST) => "EEXIST".to_string(),
                    Some(errno) => format!("errno {errno}"),
                    None => error.kind().to_string(),
                };
                if self.errors.len() < ROGUE_ERRNO_KINDS_MAX || self.errors.contains_key(&name) {
                    *self.errors.entry(name).or_default() += 1;
                }
                false
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "operations": self.operations,
            "seconds": self.seconds,
            "per_second": self.operations as f64 / self.seconds.max(1e-9),
            "succeeded": self.succeeded,
            "own_creates_succeeded": self.own_creates_succeeded,
            "ebusy": self.errors.get("EBUSY").copied().unwrap_or(0),
            "errors": self.errors,
        })
    }
}

/// The rogue client B, through its own mount, until `stop`: in turn, create a file of its own
/// (`rogue-N`), stat one of A's names (`fN`), create one of A's names (a conflict at merge).
fn rogue(directory: &Path, stop: &AtomicBool) -> RogueTally {
    let mut tally = RogueTally::default();
    let started = Instant::now();
    let create = |path: PathBuf| std::fs::OpenOptions::new().write(true).create_new(true).open(path).map(drop);
    let mut index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match index % 3 {
            0 => {
                if tally.record(create(directory.join(format!("rogue-{index:07}")))) {
                    tally.own_creates_succeeded += 1;
                }
            }
            1 => {
                tally.record(std::fs::symlink_metadata(directory.join(format!("f{index:07}"))).map(drop));
            }
            _ => {
                tally.record(create(directory.join(format!("f{index:07}"))));
            }
        }
        index += 1;
    }
    tally.seconds = started.elapsed().as_secs_f64();
    tally
}

/// One Figure 10 sample on the shared two-mount cluster: A decouples a fresh directory and
/// creates while (unless isolated) B hammers it; then A merges (timed) and recouples.
fn figure10_sample(
    cluster: &Cluster,
    interference: Interference,
    repetition: usize,
    policies: &BTreeMap<&'static str, PathBuf>,
    options: &Options,
) -> Result<Value> {
    let (a, b) = (&cluster.mounts[0], &cluster.mounts[1]);
    let name = format!("figure10-{}-{repetition}", interference.key());
    let (a_directory, b_directory) = (a.path(&name), b.path(&name));
    std::fs::create_dir(&a_directory).with_context(|| format!("mkdir {}", a_directory.display()))?;
    let policy = &policies[if interference == Interference::Allow { "allow" } else { "block" }];
    decouple(&a_directory, policy)?;
    let names = file_names(options.figure10_files);
    let servers = cluster.servers();
    let stop = AtomicBool::new(false);
    let (creates, tally) = std::thread::scope(|scope| {
        let rogue_thread = (interference != Interference::Isolated).then(|| scope.spawn(|| rogue(&b_directory, &stop)));
        let creates =
            run_phase(std::slice::from_ref(&a_directory), &servers, |handle, path| create_files(handle, path, &names));
        stop.store(true, Ordering::Relaxed);
        let tally = rogue_thread.map(|thread| thread.join().unwrap_or_default());
        (creates, tally)
    });
    let creates = creates?;
    let events = subtree_status(&a_directory)?["events_unmerged"].as_u64().unwrap_or(0);
    let ((), merge_seconds) = timed(|| merge(&a_directory))?;
    let merged = merge_outcome(&subtree_status(&a_directory)?);
    let ((), recouple_seconds) = timed(|| recouple(&a_directory))?;
    // After the recouple B sees every one of A's files (decoupled wins) and its own.
    let mut a_files_visible_to_b = 0;
    for name in &names {
        if std::fs::symlink_metadata(b_directory.join(name)).is_ok() {
            a_files_visible_to_b += 1;
        }
    }
    let listed_by_b = count_entries(&b_directory)?;
    let mut sample = json!({
        "interference": interference.key(),
        "repetition": repetition,
        "a_creates": creates.to_json(),
        "a_creates_per_second": creates.per_second(),
        "merge": {
            "events": events,
            "seconds": merge_seconds,
            "outcome": merged,
        },
        "recouple_seconds": recouple_seconds,
        "a_files_visible_to_b_after_recouple": a_files_visible_to_b,
        "entries_listed_by_b_after_recouple": listed_by_b,
    });
    if let Some(tally) = tally {
        sample["rogue"] = tally.to_json();
    }
    if a_files_visible_to_b != names.len() {
        bail!("B sees {a_files_visible_to_b} of A's {} files after the recouple: {sample}", names.len());
    }
    Ok(sample)
}

fn run_figure10(options: &Options) -> Result<()> {
    let started = Instant::now();
    let mut results = header("subtree_bench --figure10", options)?;
    let cluster = Cluster::start(2)?;
    let base = policy_text(options, &options.figure10_policy)?;
    let mut policies = BTreeMap::new();
    for setting in ["block", "allow"] {
        let text = with_key(&base, "interfere_policy", Some(setting));
        policies.insert(setting, cluster.write_policy(&format!("figure10-{setting}.yml"), &text)?);
    }
    let mut failures = Vec::new();
    let mut samples: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for repetition in 0..options.repetitions.max(1) {
        for interference in INTERFERENCES {
            if failures.iter().any(|failure: &String| failure.starts_with(interference.key())) {
                continue;
            }
            eprintln!("figure 10: {}, repetition {}", interference.key(), repetition + 1);
            match figure10_sample(&cluster, interference, repetition, &policies, options) {
                Ok(sample) => samples.entry(interference.key()).or_default().push(sample),
                Err(error) => {
                    eprintln!("figure 10: {}: {error:#}", interference.key());
                    failures.push(format!("{}: {error:#}", interference.key()));
                }
            }
        }
    }
    cluster.stop()?;
    let mut points = Vec::new();
    for interference in INTERFERENCES {
        let Some(list) = samples.get(interference.key()) else { continue };
        let rates: Vec<f64> =
            list.iter().map(|sample| sample["a_creates_per_second"].as_f64().unwrap_or(0.0)).collect();
        let chosen = median(rates.clone());
        let mut point = list
            .iter()
            .find(|sample| sample["a_creates_per_second"].as_f64() == Some(chosen))
            .cloned()
            .unwrap_or_else(|| list[0].clone());
        point["samples_a_creates_per_second"] = json!(rates);
        point["label"] = json!(interference.label());
        println!(
            "{:<28} A {:>8.0} creates/s{}{}; merge {} events in {:.3} s: {} applied, {} skipped",
            interference.label(),
            chosen,
            saturated_mark(&point["a_creates"]),
            match point.get("rogue") {
                Some(rogue) => format!(
                    "; rogue B {} ops ({} ok, {} EBUSY, errors {})",
                    rogue["operations"], rogue["succeeded"], rogue["ebusy"], rogue["errors"]
                ),
                None => String::new(),
            },
            point["merge"]["events"],
            point["merge"]["seconds"].as_f64().unwrap_or(0.0),
            point["merge"]["outcome"]["events_applied"],
            point["merge"]["outcome"]["events_skipped"],
        );
        points.push(point);
    }
    let isolated = points
        .iter()
        .find(|point| point["interference"] == "isolated")
        .and_then(|point| point["a_creates_per_second"].as_f64());
    if let Some(isolated) = isolated {
        for point in &mut points {
            let rate = point["a_creates_per_second"].as_f64().unwrap_or(0.0);
            point["a_creates_over_isolated"] = json!(rate / isolated.max(1e-9));
        }
    }
    results["method"] = json!(
        "one cudele-mds and two mounts, A and B. Per sample A creates a fresh directory, decouples it with the \
         policy (interfere_policy set to block, or allow), and creates N files in it (openat O_CREAT|O_EXCL + \
         close, one thread). Meanwhile (not for isolated) a rogue thread on mount B hammers the same directory \
         until A's creates end, cycling through: create its own file rogue-K, stat A's name fK, create A's name \
         fK (a conflict the merge resolves for A). Then A runs `cudele merge DIR` (timed; outcome from `cudele \
         status DIR --json`) and `cudele recouple DIR`, after which B must see all of A's files. Repetitions are \
         interleaved across the variants; the sample with the median A creates/s is reported."
    );
    results["parameters"] = json!({
        "files": options.figure10_files,
        "policy": options.figure10_policy,
        "repetitions": options.repetitions,
    });
    results["points"] = json!(points);
    let groups: Vec<String> = points
        .iter()
        .map(|point| {
            let label = point["label"].as_str().unwrap_or_default();
            match point.get("rogue") {
                Some(rogue) => format!("{label} (B: {} ok, {} EBUSY)", rogue["succeeded"], rogue["ebusy"]),
                None => label.to_string(),
            }
        })
        .collect();
    let series = [BarSeries {
        label: format!("client A creates/s ({} files, median of {})", options.figure10_files, options.repetitions),
        values: points.iter().map(|point| point["a_creates_per_second"].as_f64()).collect(),
        saturated: points.iter().map(|point| point["a_creates"]["cpu_saturated"].as_bool() == Some(true)).collect(),
    }];
    let path = options.out_dir.join("figure10.json");
    plot_bars(
        &BarChart {
            title: "Figure 10: decoupled client A's creates/s with a rogue client B (outlined = CPU-saturated)",
            y_description: "A creates/s",
            groups: &groups,
            series: &series,
            log_scale: false,
            value_decimals: 0,
        },
        &path.with_extension("png"),
    )?;
    finish(results, started, &failures, &path)
}

// ----- namespace sync -----

fn interval_label(interval_ms: u64) -> String {
    if interval_ms == 0 {
        "no sync".to_string()
    } else {
        format!("{interval_ms} ms")
    }
}

/// One sync sample: a fresh directory decoupled with the sync policy at `interval_ms`, N
/// creates (timed), the syncs the MDS saw meanwhile, a final merge (timed) and a recouple.
fn sync_sample(cluster: &Cluster, interval_ms: u64, repetition: usize, base: &str, options: &Options) -> Result<Value> {
    let mount = &cluster.mounts[0];
    let directory = mount.path(format!("sync-{interval_ms}-{repetition}"));
    std::fs::create_dir(&directory).with_context(|| format!("mkdir {}", directory.display()))?;
    let value = format!("{interval_ms}ms");
    let text = with_key(base, "sync_interval", (interval_ms > 0).then_some(value.as_str()));
    let policy = cluster.write_policy(&format!("sync-{interval_ms}.yml"), &text)?;
    decouple(&directory, &policy)?;
    let names = file_names(options.sync_files);
    let merges_before = cluster.merges_at_mds()?;
    let creates = run_phase(std::slice::from_ref(&directory), &cluster.servers(), |handle, path| {
        create_files(handle, path, &names)
    })?;
    let syncs = cluster.merges_at_mds()? - merges_before;
    let events_left = subtree_status(&directory)?["events_unmerged"].as_u64().unwrap_or(0);
    let ((), merge_seconds) = timed(|| merge(&directory))?;
    recouple(&directory)?;
    Ok(json!({
        "interval_ms": if interval_ms == 0 { Value::Null } else { json!(interval_ms) },
        "repetition": repetition,
        "creates": creates.to_json(),
        "creates_per_second": creates.per_second(),
        "syncs_during_creates": syncs,
        "events_unmerged_after_creates": events_left,
        "final_merge_seconds": merge_seconds,
    }))
}

fn run_sync(options: &Options) -> Result<()> {
    let started = Instant::now();
    let mut results = header("subtree_bench --sync", options)?;
    let base = policy_text(options, &options.sync_policy)?;
    let cluster = Cluster::start(1)?;
    let mut failures = Vec::new();
    let mut samples: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for repetition in 0..options.repetitions.max(1) {
        for &interval_ms in &options.intervals_ms {
            let label = interval_label(interval_ms);
            if failures.iter().any(|failure: &String| failure.starts_with(&format!("{label}:"))) {
                continue;
            }
            eprintln!("namespace sync: {label}, repetition {}", repetition + 1);
            match sync_sample(&cluster, interval_ms, repetition, &base, options) {
                Ok(sample) => samples.entry(interval_ms).or_default().push(sample),
                Err(error) => {
                    eprintln!("namespace sync: {label}: {error:#}");
                    failures.push(format!("{label}: {error:#}"));
                }
            }
        }
    }
    cluster.stop()?;
    let mut points = Vec::new();
    for &interval_ms in &options.intervals_ms {
        let Some(list) = samples.get(&interval_ms) else { continue };
        let rates: Vec<f64> = list.iter().map(|sample| sample["creates_per_second"].as_f64().unwrap_or(0.0)).collect();
        let chosen = median(rates.clone());
        let mut point = list
            .iter()
            .find(|sample| sample["creates_per_second"].as_f64() == Some(chosen))
            .cloned()
            .unwrap_or_else(|| list[0].clone());
        point["samples_creates_per_second"] = json!(rates);
        point["label"] = json!(interval_label(interval_ms));
        points.push(point);
    }
    let baseline = points
        .iter()
        .find(|point| point["interval_ms"].is_null())
        .and_then(|point| point["creates_per_second"].as_f64());
    for point in &mut points {
        if let Some(baseline) = baseline {
            let rate = point["creates_per_second"].as_f64().unwrap_or(0.0);
            point["normalised_to_no_sync"] = json!(rate / baseline.max(1e-9));
        }
        println!(
            "{:<10} {:>9.0} creates/s{}, {} syncs during the creates, final merge {:.3} s{}",
            point["label"].as_str().unwrap_or_default(),
            point["creates_per_second"].as_f64().unwrap_or(0.0),
            match point["normalised_to_no_sync"].as_f64() {
                Some(ratio) => format!(" ({ratio:.2} of no sync)"),
                None => String::new(),
            },
            point["syncs_during_creates"],
            point["final_merge_seconds"].as_f64().unwrap_or(0.0),
            saturated_mark(&point["creates"]),
        );
    }
    results["method"] = json!(
        "one cudele-mds and one mount. Per sample a fresh directory is decoupled with the sync policy whose \
         sync_interval is set to the interval (removed for no sync); one thread creates N files (openat \
         O_CREAT|O_EXCL + close). Each namespace sync is a merge (persist the client journal per the policy's \
         durability, then replay at the MDS) that holds the subtree while it runs; syncs_during_creates is the \
         MDS's merge-RPC count over the create phase. The mount checks intervals every 100 ms (SYNC_TICK_MS), and \
         the policy crate refuses intervals under 100 ms. Repetitions are interleaved; the sample with the \
         median creates/s is reported; normalised_to_no_sync = creates/s over the no-sync median."
    );
    results["parameters"] = json!({
        "files": options.sync_files,
        "intervals_ms": options.intervals_ms,
        "policy": options.sync_policy,
        "repetitions": options.repetitions,
    });
    results["points"] = json!(points);
    let groups: Vec<String> =
        points.iter().map(|point| point["label"].as_str().unwrap_or_default().to_string()).collect();
    let series = [BarSeries {
        label: format!(
            "creates/s normalised to no sync ({} files, median of {})",
            options.sync_files, options.repetitions
        ),
        values: points.iter().map(|point| point["normalised_to_no_sync"].as_f64()).collect(),
        saturated: points.iter().map(|point| point["creates"]["cpu_saturated"].as_bool() == Some(true)).collect(),
    }];
    let path = options.out_dir.join("sync_interval.json");
    plot_bars(
        &BarChart {
            title: "Namespace sync: creates/s vs sync_interval, normalised to no sync (outlined = CPU-saturated)",
            y_description: "creates/s / no sync",
            groups: &groups,
            series: &series,
            log_scale: false,
            value_decimals: 2,
        },
        &path.with_extension("png"),
    )?;
    finish(results, started, &failures, &path)
}

// ----- main -----

/// One of the three benchmarks.
type Run = fn(&Options) -> Result<()>;

fn main() -> Result<()> {
    let mut options = Options::parse();
    if options.clients.is_empty() || options.clients.contains(&0) {
        bail!("--clients needs counts ≥ 1");
    }
    if options.files == 0 || options.weak_files == 0 || options.figure10_files == 0 || options.sync_files == 0 {
        bail!("file counts must be ≥ 1");
    }
    if !(options.figure9 || options.figure10 || options.sync) {
        (options.figure9, options.figure10, options.sync) = (true, true, true);
    }
    if std::env::var_os("CUDELE_BIN_DIR").is_none() {
        let own_directory = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("CUDELE_BIN_DIR", &own_directory);
    }
    if !cudele_e2e::fuse_available() {
        bail!("/dev/fuse is not usable here (subtree_bench needs root and FUSE)");
    }
    if profile() != "release" {
        eprintln!("warning: subtree_bench is a debug build; build with --release for representative figures");
    }
    std::fs::create_dir_all(&options.out_dir).with_context(|| format!("creating {}", options.out_dir.display()))?;
    let mut errors = Vec::new();
    let runs: [(bool, &str, Run); 3] = [
        (options.figure9, "figure 9", run_figure9),
        (options.figure10, "figure 10", run_figure10),
        (options.sync, "namespace sync", run_sync),
    ];
    for (wanted, name, run) in runs {
        if wanted {
            if let Err(error) = run(&options) {
                eprintln!("{name}: {error:#}");
                errors.push(format!("{name}: {error:#}"));
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}
