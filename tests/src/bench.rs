//! What the benchmark binaries (fs-bench, mds-bench, subtree_bench) share: the machine they ran
//! on, CPU accounting from /proc (and the rule that flags a phase as CPU-saturated), timed
//! phases of one thread per directory released together, median, JSON output and a grouped
//! bar chart.

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{json, Map, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// A phase during which the machine's CPUs were at least this busy was CPU-bound.
pub const SATURATION_FRACTION: f64 = 0.9;
/// /proc/stat counts in 10 ms ticks: shorter phases give no usable busy fraction.
pub const CPU_SAMPLE_SECONDS_MIN: f64 = 0.2;

// ----- machine and CPU accounting -----

pub fn nproc() -> usize {
    std::thread::available_parallelism().map(|count| count.get()).unwrap_or(1)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

/// CPU count and model, kernel and memory of this machine, for the JSON.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, name)| name.trim())
        })
        .unwrap_or("unknown")
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let memory_kib = std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().find_map(|line| {
        line.strip_prefix("MemTotal:").and_then(|rest| rest.trim().trim_end_matches(" kB").parse::<u64>().ok())
    });
    json!({ "nproc": nproc(), "cpu_model": model, "kernel": kernel, "memory_kib": memory_kib })
}

/// The saturation rule as a sentence, for the JSON.
pub fn saturation_rule() -> String {
    format!(
        "cpu_saturated: the machine's CPUs (all processes, /proc/stat) were ≥ {:.0}% busy during the phase; only \
         judged for phases of ≥ {CPU_SAMPLE_SECONDS_MIN} s (cpu_sample_reliable)",
        SATURATION_FRACTION * 100.0
    )
}

/// CPU seconds (user + system) process `pid` has used so far; None once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 12 and 13 after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / ticks_per_second)
}

/// Busy and total jiffies of the whole machine so far, from /proc/stat.
pub fn machine_cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|value| value.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let total: u64 = values.iter().take(8).sum();
    (total.saturating_sub(idle), total)
}

/// The fraction of all CPUs busy between two [`machine_cpu_jiffies`] readings.
pub fn busy_fraction(before: (u64, u64), after: (u64, u64)) -> f64 {
    after.0.saturating_sub(before.0) as f64 / after.1.saturating_sub(before.1).max(1) as f64
}

/// The process whose command line is `cudele mount ... MOUNTPOINT ...` (the mount daemon).
pub fn find_mount_daemon(mountpoint: &Path) -> Option<u32> {
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let arguments: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
        let is_cudele = arguments.first().is_some_and(|program| program.ends_with(b"cudele"));
        (is_cudele && arguments.contains(&&b"mount"[..]) && arguments.contains(&wanted)).then_some(pid)
    })
}

/// A process whose CPU use each phase reports.
#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    pub pid: u32,
}

impl Server {
    pub fn new(name: impl Into<String>, pid: u32) -> Server {
        Server { name: name.into(), pid }
    }
}

/// This program's name (the first entry of a phase's `cpu_cores`).
fn own_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|stem| stem.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "benchmark".to_string())
}

/// CPU use over an interval: the machine's busy fraction and each watched process's cores.
pub struct CpuWatch {
    machine_before: (u64, u64),
    self_before: Option<f64>,
    servers_before: Vec<(Server, Option<f64>)>,
}

impl CpuWatch {
    pub fn start(servers: &[Server]) -> CpuWatch {
        let servers_before = servers.iter().map(|server| (server.clone(), cpu_seconds(server.pid))).collect();
        CpuWatch { machine_before: machine_cpu_jiffies(), self_before: cpu_seconds(std::process::id()), servers_before }
    }

    /// (machine busy fraction, cores per process with this program first) over `wall`.
    pub fn finish(&self, wall: Duration) -> (f64, Vec<(String, f64)>) {
        let machine_after = machine_cpu_jiffies();
        let seconds = wall.as_secs_f64().max(1e-9);
        let mut cpu_cores = vec![(
            own_name(),
            match (self.self_before, cpu_seconds(std::process::id())) {
                (Some(before), Some(after)) => (after - before) / seconds,
                _ => 0.0,
            },
        )];
        for (server, before) in &self.servers_before {
            if let (Some(before), Some(after)) = (before, cpu_seconds(server.pid)) {
                cpu_cores.push((server.name.clone(), (after - before) / seconds));
            }
        }
        (busy_fraction(self.machine_before, machine_after), cpu_cores)
    }
}

// ----- phases -----

/// What one phase (every thread doing one operation over its files) measured.
pub struct Phase {
    pub operations: u64,
    pub wall: Duration,
    pub machine_busy_fraction: f64,
    /// (name, cores used on average during the phase), the benchmark's own threads first.
    pub cpu_cores: Vec<(String, f64)>,
}

impl Phase {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn reliable(&self) -> bool {
        self.wall.as_secs_f64() >= CPU_SAMPLE_SECONDS_MIN
    }

    pub fn saturated(&self) -> bool {
        self.reliable() && self.machine_busy_fraction >= SATURATION_FRACTION
    }

    pub fn to_json(&self) -> Value {
        let cores: Map<String, Value> =
            self.cpu_cores.iter().map(|(name, cores)| (name.clone(), json!(cores))).collect();
        json!({
            "operations": self.operations,
            "seconds": self.wall.as_secs_f64(),
            "per_second": self.per_second(),
            "machine_busy_fraction": self.machine_busy_fraction,
            "cpu_sample_reliable": self.reliable(),
            "cpu_saturated": self.saturated(),
            "cpu_cores": cores,
        })
    }
}

/// Run `operation(directory handle, directory path)` on one thread per directory, all
/// released together; the wall time is from the first thread's start to the last thread's end.
pub fn run_phase<F>(directories: &[PathBuf], servers: &[Server], operation: F) -> Result<Phase>
where
    F: Fn(&File, &Path) -> Result<u64> + Sync,
{
    let handles = directories
        .iter()
        .map(|directory| File::open(directory).with_context(|| format!("opening {}", directory.display())))
        .collect::<Result<Vec<File>>>()?;
    let barrier = Barrier::new(directories.len() + 1);
    let (results, watch) = std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .iter()
            .zip(directories)
            .map(|(handle, directory)| {
                let barrier = &barrier;
                let operation = &operation;
                scope.spawn(move || {
                    barrier.wait();
                    // Each thread times itself: the main thread may be scheduled late.
                    let started = Instant::now();
                    let operations = operation(handle, directory);
                    (started, Instant::now(), operations)
                })
            })
            .collect();
        let watch = CpuWatch::start(servers);
        barrier.wait();
        let results: Vec<(Instant, Instant, Result<u64>)> = workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| {
                    let now = Instant::now();
                    (now, now, Err(anyhow!("a benchmark thread panicked")))
                })
            })
            .collect();
        (results, watch)
    });
    let first_start = results.iter().map(|(started, _, _)| *started).min().context("no threads")?;
    let last_end = results.iter().map(|(_, ended, _)| *ended).max().context("no threads")?;
    let wall = last_end.duration_since(first_start);
    let (machine_busy_fraction, cpu_cores) = watch.finish(wall);
    let mut operations = 0;
    for (_, _, result) in results {
        operations += result?;
    }
    Ok(Phase { operations, wall, machine_busy_fraction, cpu_cores })
}

/// `count` file names that sort in creation order.
pub fn file_names(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("f{index:07}")).collect()
}

/// Create (`openat(O_CREAT|O_EXCL|O_WRONLY)` + close) every name in `directory`: the create
/// operation of the benchmarks' create phases. Returns how many.
pub fn create_files(directory: &File, path: &Path, names: &[String]) -> Result<u64> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    for name in names {
        // Dropping the descriptor closes it: create + close is the measured unit.
        drop(
            openat(directory, name.as_str(), flags, Mode::from_bits_truncate(0o644))
                .with_context(|| format!("creating {}/{name}", path.display()))?,
        );
    }
    Ok(names.len() as u64)
}

// ----- small helpers -----

/// Time an action; seconds.
pub fn timed<T>(action: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let started = Instant::now();
    let value = action()?;
    Ok((value, started.elapsed().as_secs_f64()))
}

/// The median of `values` (the upper one of an even count; 0 when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|left, right| left.partial_cmp(right).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Write `value` as pretty JSON, creating the parent directory.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

// ----- plots -----

/// A colour per series, in order.
pub fn series_colour(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(120, 120, 120),
    ];
    COLOURS[index % COLOURS.len()]
}

/// One series of a grouped bar chart: a value per group (None: no bar), and whether the
/// measurement behind each bar was CPU-saturated (drawn with a black outline).
pub struct BarSeries {
    pub label: String,
    pub values: Vec<Option<f64>>,
    pub saturated: Vec<bool>,
}

/// A grouped bar chart.
pub struct BarChart<'a> {
    pub title: &'a str,
    pub y_description: &'a str,
    /// The groups along the x axis.
    pub groups: &'a [String],
    pub series: &'a [BarSeries],
    pub log_scale: bool,
    /// Write each bar's value above it with this many decimals.
    pub value_decimals: usize,
}

/// Draw `chart` as a PNG at `path`: bars per series side by side within each group.
pub fn plot_bars(chart: &BarChart, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let root = BitMapBackend::new(path, (1200, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let values: Vec<f64> =
        chart.series.iter().flat_map(|series| series.values.iter().flatten().copied()).filter(|v| *v > 0.0).collect();
    let highest = values.iter().copied().fold(1e-9, f64::max);
    let lowest = values.iter().copied().fold(highest, f64::min);
    let groups = chart.groups.len().max(1) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(chart.title, ("sans-serif", 20)).margin(15).x_label_area_size(40).y_label_area_size(80);
    if chart.log_scale {
        let (low, high) = (lowest / 2.0, highest * 4.0);
        draw_bars(builder.build_cartesian_2d(0f64..groups, (low..high).log_scale())?, low, chart)?;
    } else {
        draw_bars(builder.build_cartesian_2d(0f64..groups, 0f64..highest * 1.3)?, 0.0, chart)?;
    }
    root.present()?;
    Ok(())
}

/// The axes, bars (outlined when saturated), values and legend of [`plot_bars`], on a linear
/// or a log y axis whose bottom is `low`.
fn draw_bars<'a, Y>(
    mut drawn: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    low: f64,
    chart: &BarChart,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let width = 0.8 / chart.series.len().max(1) as f64;
    let left = |group: usize, index: usize| group as f64 + 0.1 + index as f64 * width;
    let x_formatter = |x: &f64| {
        let group = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 0.01 && group < chart.groups.len() {
            chart.groups[group].clone()
        } else {
            String::new()
        }
    };
    drawn
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(chart.groups.len() * 2 + 1)
        .x_label_formatter(&x_formatter)
        .x_label_style(("sans-serif", 15))
        .y_label_formatter(&|value| format!("{value:.*}", chart.value_decimals))
        .y_desc(chart.y_description)
        .draw()?;
    for (index, series) in chart.series.iter().enumerate() {
        let colour = series_colour(index);
        let mut bars = Vec::new();
        let mut texts = Vec::new();
        for (group, value) in series.values.iter().enumerate() {
            let Some(value) = value else { continue };
            let top = value.max(low);
            let corners = [(left(group, index), low), (left(group, index) + width * 0.9, top)];
            bars.push(Rectangle::new(corners, colour.filled()));
            if series.saturated.get(group).copied().unwrap_or(false) {
                bars.push(Rectangle::new(corners, BLACK.stroke_width(2)));
            }
            texts.push(Text::new(
                format!("{value:.*}", chart.value_decimals),
                (left(group, index), top),
                ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Bottom)),
            ));
        }
        drawn
            .draw_series(bars)?
            .label(series.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
        drawn.draw_series(texts)?;
    }
    drawn
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
