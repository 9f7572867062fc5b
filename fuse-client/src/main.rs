//! The `cudele` command: mount, umount, status, gc — and, when installed as
//! `/sbin/mount.fuse.cudele`, the mount(8) helper for `mount -t fuse.cudele`.

use clap::{Args, Parser, Subcommand};
use cudele_client::data::gc::GC_GRACE_DEFAULT_SECS;
use cudele_client::mount::{self, MountConfig};
use cudele_client::{commands, subtree_cli};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The program name mount(8) runs for `-t fuse.cudele`.
const MOUNT_HELPER_NAME: &str = "mount.fuse.cudele";
const SERVER_DEFAULT: &str = "127.0.0.1:7070";

/// cudele: a FUSE filesystem whose metadata server lets each subtree choose its own
/// consistency and durability.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount the namespace of the MDS at SERVER on MOUNTPOINT (returns once it is live).
    Mount {
        /// MDS address, host:port.
        server: String,
        mountpoint: PathBuf,
        /// Comma-separated options: token=FILE, tls_ca=FILE (connect over TLS, verifying the
        /// MDS with this CA certificate), store=URL (object store; default: the MDS's),
        /// allow_other (default) | noallow_other, ro, nosuid, nodev, noexec, noatime,
        /// threads=N (FUSE workers, default 4), fsname=NAME, log=FILE (daemon log),
        /// outage_timeout_ms=N. mount(8)'s generic options (defaults, noauto, _netdev,
        /// nofail, user, ...) are accepted and ignored.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground (log to stderr) instead of daemonising.
        #[arg(short = 'f', long)]
        foreground: bool,
    },
    /// Unmount; cleans up a dead mount whose process was killed, too.
    Umount { mountpoint: PathBuf },
    /// Decouple DIR: this mount runs its subtree locally under the policy (policies.yml).
    Decouple {
        directory: PathBuf,
        #[arg(long)]
        policy: PathBuf,
    },
    /// Merge DIR's client journal into the MDS now (weak subtrees).
    Merge { directory: PathBuf },
    /// Merge DIR (weak subtrees) and return it to the MDS's strong default.
    Recouple { directory: PathBuf },
    /// Inspect, export, import or apply journals (MDS segments and client journals).
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Show the MDS (sessions, operation counts, journal progress), or with DIR a decoupled
    /// subtree (cell, mechanisms, owner, inode range, unmerged events).
    Status {
        /// A decoupled directory on a cudele mount.
        directory: Option<PathBuf>,
        #[command(flatten)]
        mds: MdsArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete chunk objects no inode references (deleted files, bytes past a file's end).
    Gc {
        #[command(flatten)]
        mds: MdsArgs,
        /// Object store URL (default: the one the MDS uses).
        #[arg(long)]
        store: Option<String>,
        /// Leave objects younger than this alone (uploads in flight).
        #[arg(long, default_value_t = GC_GRACE_DEFAULT_SECS)]
        grace_secs: u64,
        /// Count what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Verify checksums and summarise: sequence range, events and bytes by kind.
    Inspect {
        /// A segment file, or with --store an object name (e.g. journal/00000000000000000001.seg).
        source: String,
        #[arg(long)]
        store: Option<String>,
    },
    /// Print the events as JSON lines.
    Export {
        source: String,
        #[arg(long)]
        store: Option<String>,
    },
    /// Build a segment file from JSON lines.
    Import { json: PathBuf, output: PathBuf },
    /// Merge a client journal into the decoupled subtree DIR as an operator.
    Apply {
        source: String,
        /// Read the journal from this object store (the MDS reads the object).
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        dir: PathBuf,
        /// Give the subtree back to the MDS afterwards.
        #[arg(long)]
        recouple: bool,
        #[command(flatten)]
        mds: MdsArgs,
    },
}

/// How a command reaches the MDS (status, gc, journal apply).
#[derive(Args, Debug)]
struct MdsArgs {
    /// MDS address, host:port.
    #[arg(long, env = "CUDELE_SERVER", default_value = SERVER_DEFAULT)]
    server: String,
    /// File holding the MDS's shared secret (mode 0600 or stricter).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the MDS's TLS certificate with; given, the command
    /// connects over TLS.
    #[arg(long, env = "CUDELE_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl MdsArgs {
    fn target(&self) -> Result<commands::MdsTarget, String> {
        commands::MdsTarget::load(&self.server, self.token_file.as_deref(), self.tls_ca.as_deref())
            .map_err(|error| error.to_string())
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUDELE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cudele_client=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn mount(config: MountConfig, foreground: bool) -> Result<(), cudele_client::error::ClientError> {
    if foreground {
        mount::run_foreground(&config, || eprintln!("cudele: mounted on {}", config.mountpoint.display()))
    } else {
        mount::run_daemonized(config)
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Mount { server, mountpoint, options, foreground } => {
            let mut config = MountConfig::new(server, mountpoint);
            for options in &options {
                config.apply_options(options).map_err(|error| error.to_string())?;
            }
            mount(config, foreground).map_err(|error| error.to_string())
        }
        Command::Umount { mountpoint } => mount::umount(&mountpoint).map_err(|error| error.to_string()),
        Command::Decouple { directory, policy } => subtree_cli::decouple(&directory, &policy),
        Command::Merge { directory } => subtree_cli::merge(&directory, false),
        Command::Recouple { directory } => subtree_cli::merge(&directory, true),
        Command::Journal(JournalCommand::Inspect { source, store }) => {
            subtree_cli::journal_inspect(&source, store.as_deref())
        }
        Command::Journal(JournalCommand::Export { source, store }) => {
            subtree_cli::journal_export(&source, store.as_deref())
        }
        Command::Journal(JournalCommand::Import { json, output }) => subtree_cli::journal_import(&json, &output),
        Command::Journal(JournalCommand::Apply { source, store, dir, recouple, mds }) => {
            subtree_cli::journal_apply(&source, store.as_deref(), &dir, &mds.target()?, recouple)
        }
        Command::Status { directory: Some(directory), json, .. } => subtree_cli::status(&directory, json),
        Command::Status { directory: None, mds, json } => {
            let target = mds.target()?;
            let status = commands::fetch_status(&target).map_err(|error| error.to_string())?;
            if json {
                println!("{}", commands::status_json(&status));
            } else {
                print!("{}", commands::status_table(&target.server, &status));
            }
            Ok(())
        }
        Command::Gc { mds, store, grace_secs, dry_run, json } => {
            let grace = Duration::from_secs(grace_secs);
            let report = commands::run_gc(&mds.target()?, store.as_deref(), grace, dry_run)
                .map_err(|error| error.to_string())?;
            if json {
                println!("{}", serde_json::to_string(&report).map_err(|error| error.to_string())?);
            } else {
                println!(
                    "scanned {} objects of {} inodes; {} {} objects of deleted files and {} unpublished \
                     ({} bytes); {} too recent to touch",
                    report.objects_scanned,
                    report.inodes_scanned,
                    if dry_run { "would delete" } else { "deleted" },
                    report.objects_of_deleted_inodes,
                    report.objects_unpublished,
                    report.bytes_freed,
                    report.objects_too_recent
                );
            }
            Ok(())
        }
    }
}

/// What mount(8) asked of the helper.
#[derive(Debug, PartialEq, Eq)]
struct HelperInvocation {
    source: String,
    mountpoint: PathBuf,
    options: Vec<String>,
    /// `-f`: fake it (mount(8) wants everything but the mount itself).
    fake: bool,
}

/// `mount.fuse.cudele SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`, as mount(8) calls helpers
/// (also `cudele SOURCE MOUNTPOINT -o OPTIONS`, as mount.fuse3 runs a subtype's program).
fn parse_helper_args(args: &[String]) -> Result<HelperInvocation, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        if arg == "-o" {
            index += 1;
            options.push(args.get(index).ok_or("-o needs a value")?.clone());
        } else if let Some(inline) = arg.strip_prefix("-o") {
            options.push(inline.to_string());
        } else if let Some(flags) = arg.strip_prefix('-').filter(|flags| !flags.is_empty()) {
            for flag in flags.chars() {
                match flag {
                    'f' => fake = true,
                    // sloppy, no-mtab, verbose: nothing to do.
                    's' | 'n' | 'v' => {}
                    other => return Err(format!("unknown helper flag -{other}")),
                }
            }
        } else {
            positional.push(arg.clone());
        }
        index += 1;
    }
    let [source, mountpoint] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.cudele SOURCE MOUNTPOINT [-o OPTIONS]".to_string())?;
    // The old `type#source` spelling of fuse(8) sources.
    let source = source.strip_prefix("cudele#").map(str::to_string).unwrap_or(source);
    Ok(HelperInvocation { source, mountpoint: PathBuf::from(mountpoint), options, fake })
}

fn run_helper(args: &[String]) -> Result<(), String> {
    let invocation = parse_helper_args(args)?;
    let mut config = MountConfig::new(invocation.source, invocation.mountpoint);
    for options in &invocation.options {
        config.apply_options(options).map_err(|error| error.to_string())?;
    }
    if invocation.fake {
        return Ok(());
    }
    mount::run_daemonized(config).map_err(|error| error.to_string())
}

/// Subcommands (and flags) the normal command line understands.
fn is_command_line(first: &str) -> bool {
    first.starts_with('-')
        || ["mount", "umount", "status", "gc", "decouple", "merge", "recouple", "journal", "help"].contains(&first)
}

fn main() -> ExitCode {
    init_logging();
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args.first().map(PathBuf::from).and_then(|path| path.file_name().map(|name| name.to_os_string()));
    let helper = invoked_as.is_some_and(|name| name == MOUNT_HELPER_NAME)
        || args.get(1).is_some_and(|first| !is_command_line(first) && args.len() >= 3);
    let result = if helper { run_helper(&args[1..]) } else { run(Cli::parse()) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cudele: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    /// mount(8)'s calling convention, with its flags and options in either place.
    #[test]
    fn helper_arguments() {
        let parsed =
            parse_helper_args(&strings(&["127.0.0.1:7070", "/mnt/x", "-n", "-o", "rw,token=/t"])).expect("parse");
        assert_eq!(
            parsed,
            HelperInvocation {
                source: "127.0.0.1:7070".into(),
                mountpoint: "/mnt/x".into(),
                options: vec!["rw,token=/t".into()],
                fake: false
            }
        );
        let parsed =
            parse_helper_args(&strings(&["-sv", "cudele#mds:7070", "/mnt/x", "-onoatime", "-f"])).expect("parse");
        assert_eq!(parsed.source, "mds:7070");
        assert_eq!(parsed.options, vec!["noatime".to_string()]);
        assert!(parsed.fake);
        assert!(parse_helper_args(&strings(&["only-one"])).is_err());
        assert!(parse_helper_args(&strings(&["a", "b", "-z"])).is_err());
    }

    #[test]
    fn command_line_parses() {
        Cli::try_parse_from(["cudele", "mount", "127.0.0.1:7070", "/mnt/x", "-o", "token=/t", "-f"]).expect("mount");
        Cli::try_parse_from(["cudele", "status", "--json"]).expect("status");
        Cli::try_parse_from(["cudele", "gc", "--server", "h:1", "--dry-run", "--grace-secs", "0"]).expect("gc");
        Cli::try_parse_from(["cudele", "status", "--server", "h:1", "--tls-ca", "/ca.pem", "--token-file", "/t"])
            .expect("status over TLS");
        assert!(is_command_line("mount") && !is_command_line("127.0.0.1:7070"));
    }
}
