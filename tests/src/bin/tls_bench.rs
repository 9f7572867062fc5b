//! tls-bench: creates/s through a real `cudele mount` of a real `cudele-mds`, with TLS off and
//! on in the same run. Two MDSs (both with a token; one also with `--tls-cert/--tls-key`) and
//! one mount of each (the TLS one with `tls_ca=`) are up at once, and the repetitions
//! alternate between them, so load from elsewhere on the machine drifts over both alike. Each
//! sample creates `--files` new empty files (`openat(O_CREAT|O_EXCL)` + `close`, one thread)
//! in a fresh directory; the median per transport is reported, with the ratio.
//!
//! ```text
//! cargo build --release -p cudele-mds -p cudele-client -p cudele-e2e --bin tls-bench
//! target/release/tls-bench [--files 2000] [--repetitions 5] [--out bench-results/tls.json]
//! ```
//!
//! Needs root (FUSE mounts). Mounts are unmounted and MDSs killed by their guards, also on
//! error.

use anyhow::{Context, Result};
use clap::Parser;
use cudele_e2e::bench::{create_files, file_names, machine, median, timed, write_json};
use cudele_e2e::pki::TestPki;
use cudele_e2e::{write_secret_file, MdsProcess, Mount};
use serde_json::json;
use std::fs::File;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "tls-bench", about = "creates/s through a real mount with TLS off and on")]
struct Options {
    /// Files created per sample.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Samples per transport (alternating); the median is reported.
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One transport's MDS and mount. Fields drop in order: the mount before its MDS.
struct Target {
    name: &'static str,
    mount: Mount,
    _mds: MdsProcess,
    samples: Vec<f64>,
}

fn main() -> Result<()> {
    let options = Options::parse();
    let own_directory = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
    if std::env::var_os("CUDELE_BIN_DIR").is_none() {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("CUDELE_BIN_DIR", &own_directory);
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: tls-bench is a debug build; figures are not representative (use --release)");
    }
    let scratch = tempfile::tempdir()?;
    let root = scratch.path();
    let token = root.join("token");
    write_secret_file(&token, "tls-bench-secret\n")?;
    let pki = TestPki::generate(&root.join("pki"), "bench")?;
    let token_arg = token.display().to_string();

    let plain_mds = MdsProcess::start(&root.join("mds-plain"), &["--token-file", &token_arg])?;
    let mut tls_args = vec!["--token-file".to_string(), token_arg.clone()];
    tls_args.extend(pki.server_args());
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let tls_mds = MdsProcess::start(&root.join("mds-tls"), &tls_args)?;
    let plain_options = format!("token={}", token.display());
    let tls_options = format!("token={},tls_ca={}", token.display(), pki.ca.display());
    let plain_mount = Mount::start(plain_mds.address, &root.join("mnt-plain"), &root.join("j-plain"), &plain_options)?;
    let tls_mount = Mount::start(tls_mds.address, &root.join("mnt-tls"), &root.join("j-tls"), &tls_options)?;
    let mut targets = [
        Target { name: "plaintext", mount: plain_mount, _mds: plain_mds, samples: Vec::new() },
        Target { name: "tls", mount: tls_mount, _mds: tls_mds, samples: Vec::new() },
    ];

    let names = file_names(options.files);
    for repetition in 0..options.repetitions {
        for target in targets.iter_mut() {
            let directory = target.mount.path(format!("sample-{repetition}"));
            std::fs::create_dir(&directory).with_context(|| format!("mkdir {}", directory.display()))?;
            let handle = File::open(&directory)?;
            let (created, seconds) = timed(|| create_files(&handle, &directory, &names))?;
            let per_second = created as f64 / seconds;
            eprintln!("{:>9} sample {repetition}: {per_second:>8.0} creates/s", target.name);
            target.samples.push(per_second);
        }
    }
    let plain = median(targets[0].samples.clone());
    let tls = median(targets[1].samples.clone());
    let ratio = tls / plain;
    println!(
        "creates/s through a real mount, {} files x {} samples, median: plaintext {plain:.0}, TLS {tls:.0} \
         (TLS/plaintext {ratio:.3})",
        options.files, options.repetitions
    );
    if let Some(out) = &options.out {
        let results = json!({
            "description": "creates/s (openat O_CREAT|O_EXCL + close, one thread, empty files) through a cudele \
                            mount of a cudele-mds with a token; plaintext gRPC vs TLS (rustls, ring); samples \
                            alternate between the two",
            "machine": machine(),
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "files_per_sample": options.files,
            "plaintext": { "creates_per_second_median": plain, "samples": targets[0].samples },
            "tls": { "creates_per_second_median": tls, "samples": targets[1].samples },
            "tls_over_plaintext": ratio,
        });
        write_json(out, &results)?;
    }
    for target in targets.iter_mut() {
        target.mount.unmount()?;
    }
    Ok(())
}
