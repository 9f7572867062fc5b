//! `cudele decouple|merge|recouple|status DIR` and `cudele journal ...`: the command-line side
//! of programmable subtrees. Subtree commands act through the mount that owns the directory,
//! by setting the `cudele.*` virtual xattrs (as CephFS's ceph.dir.*); the journal tool reads
//! segments directly and merges through the MDS as an operator.

use crate::metadata::RemoteMetadata;
use crate::runtime::Blocking;
use crate::subtree::router::{DECOUPLE_XATTR, MERGE_XATTR, RECOUPLE_XATTR, STATUS_XATTR};
use cudele_journal::inspect::{export_json_lines, import_json_lines, inspect_segment};
use cudele_journal::store::{JournalStore, StoreOptions};
use cudele_proto::pb;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest status value read back from the mount.
const STATUS_VALUE_BYTES_MAX: usize = 64 * 1024;

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", path.display()))
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> Result<(), String> {
    let c_path = c_path(path)?;
    let c_name = CString::new(name).map_err(|_| "NUL in xattr name".to_string())?;
    // SAFETY: both strings are NUL-terminated and live across the call; value/len describe
    // a valid buffer.
    let result = unsafe { libc::setxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(format!(
            "{}: {error}{}",
            path.display(),
            if error.raw_os_error() == Some(libc::EOPNOTSUPP) { " (is it on a cudele mount?)" } else { "" }
        ));
    }
    Ok(())
}

fn get_xattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, String> {
    let c_path = c_path(path)?;
    let c_name = CString::new(name).map_err(|_| "NUL in xattr name".to_string())?;
    let mut buffer = vec![0u8; STATUS_VALUE_BYTES_MAX];
    // SAFETY: as for setxattr; the buffer is writable for its whole length.
    let length = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if length < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ENODATA) {
            return Err(format!("{}: not a decoupled subtree of this mount", path.display()));
        }
        return Err(format!("{}: {error}", path.display()));
    }
    buffer.truncate(length as usize);
    Ok(buffer)
}

/// `cudele decouple DIR --policy FILE`: validate the policy here (for a clear message naming
/// the file, key and problem), then hand it to the mount.
pub fn decouple(directory: &Path, policy_file: &Path) -> Result<(), String> {
    let policy = cudele_policy::Policy::from_file(policy_file).map_err(|error| error.to_string())?;
    if !policy.is_decoupled() {
        return Err(format!("{}: cell {} is strong: nothing to decouple", policy_file.display(), policy.cell()));
    }
    let text = std::fs::read(policy_file).map_err(|error| format!("{}: {error}", policy_file.display()))?;
    set_xattr(directory, DECOUPLE_XATTR, &text)?;
    println!("{}: decoupled ({})", directory.display(), policy.cell());
    Ok(())
}

/// A spinner on stderr (hidden when stderr is not a terminal) for one long step.
fn progress(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    spinner
}

pub fn merge(directory: &Path, recouple: bool) -> Result<(), String> {
    // Read the status first: after a recouple the subtree is gone from the mount.
    let before: serde_json::Value = serde_json::from_slice(&get_xattr(directory, STATUS_XATTR)?).unwrap_or_default();
    let unmerged = before.get("events_unmerged").and_then(|value| value.as_u64()).unwrap_or(0);
    let invisible = before.get("cell").and_then(|cell| cell.as_str()).is_some_and(|cell| cell.starts_with("invisible"));
    let action = match (recouple, invisible) {
        (true, true) => "recoupling (invisible: nothing is merged)".to_string(),
        (true, false) => format!("merging {unmerged} events and recoupling"),
        (false, _) => format!("merging {unmerged} events"),
    };
    let spinner = progress(format!("{}: {action}", directory.display()));
    let done = set_xattr(directory, if recouple { RECOUPLE_XATTR } else { MERGE_XATTR }, b"");
    spinner.finish_and_clear();
    done?;
    if recouple && invisible {
        println!(
            "{}: recoupled; {unmerged} invisible events were not merged (their persisted journal waits for \
             `cudele journal apply`)",
            directory.display()
        );
    } else if recouple {
        println!("{}: merged {unmerged} events and recoupled", directory.display());
    } else {
        let after: serde_json::Value = serde_json::from_slice(&get_xattr(directory, STATUS_XATTR)?).unwrap_or_default();
        let merge = &after["last_merge"];
        println!(
            "{}: merged {} events ({} applied, {} skipped, {} already merged)",
            directory.display(),
            unmerged,
            merge["events_applied"],
            merge["events_skipped"],
            merge["events_already_merged"]
        );
        if let Some(reasons) = merge["skip_reasons"].as_array().filter(|reasons| !reasons.is_empty()) {
            for reason in reasons {
                println!("  skipped: {}", reason.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

pub fn status(directory: &Path, json: bool) -> Result<(), String> {
    let value = get_xattr(directory, STATUS_XATTR)?;
    let status: serde_json::Value = serde_json::from_slice(&value).map_err(|error| error.to_string())?;
    if json {
        println!("{status}");
        return Ok(());
    }
    println!("subtree        {} (inode {})", directory.display(), status["root"]);
    println!("cell           {}", status["cell"].as_str().unwrap_or_default());
    let mechanisms: Vec<&str> = status["mechanisms"]
        .as_array()
        .map(|list| list.iter().filter_map(|m| m.as_str()).collect())
        .unwrap_or_default();
    println!("mechanisms     {}", mechanisms.join(", "));
    println!("owner session  {}", status["owner_session"]);
    println!("inodes left    {}", status["inodes_left"]);
    println!("not merged     {} events, {} bytes", status["events_unmerged"], status["bytes_unmerged"]);
    println!("not persisted  {} events", status["events_unpersisted"]);
    println!("merged through client journal event {}", status["merged_seq"]);
    Ok(())
}

/// Read a segment from a local file or, with `store`, an object.
fn read_journal(source: &str, store: Option<&str>) -> Result<Vec<u8>, String> {
    match store {
        None => std::fs::read(source).map_err(|error| format!("{source}: {error}")),
        Some(url) => {
            let objects = JournalStore::open(url, &StoreOptions::default()).map_err(|error| error.to_string())?;
            let runtime = Blocking::new("cudele-journal").map_err(|error| error.to_string())?;
            runtime
                .block_on(async {
                    objects.get(source).await.map_err(|error| cudele_namespace::NsError::Io(error.to_string()))
                })
                .map(|bytes| bytes.to_vec())
                .map_err(|error| format!("{source}: {error}"))
        }
    }
}

pub fn journal_inspect(source: &str, store: Option<&str>) -> Result<(), String> {
    let bytes = read_journal(source, store)?;
    let (inspection, _) = inspect_segment(&bytes).map_err(|error| format!("{source}: {error}"))?;
    println!("{}", serde_json::to_string_pretty(&inspection).map_err(|error| error.to_string())?);
    Ok(())
}

pub fn journal_export(source: &str, store: Option<&str>) -> Result<(), String> {
    let bytes = read_journal(source, store)?;
    let (_, records) = inspect_segment(&bytes).map_err(|error| format!("{source}: {error}"))?;
    print!("{}", export_json_lines(&records).map_err(|error| error.to_string())?);
    Ok(())
}

pub fn journal_import(json_file: &Path, output: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json_file).map_err(|error| format!("{}: {error}", json_file.display()))?;
    let segment = import_json_lines(&text).map_err(|error| format!("{}: {error}", json_file.display()))?;
    std::fs::write(output, segment).map_err(|error| format!("{}: {error}", output.display()))
}

/// `cudele journal apply`: merge a client journal into the decoupled subtree at `directory`
/// (an operator merge: any session may do it, e.g. after the owner died or for invisible
/// subtrees whose updates the system never merges).
pub fn journal_apply(
    source: &str,
    store: Option<&str>,
    directory: &Path,
    target: &crate::commands::MdsTarget,
    recouple: bool,
) -> Result<(), String> {
    let ino = std::fs::metadata(directory).map_err(|error| format!("{}: {error}", directory.display()))?.ino();
    let mut request = pb::MergeRequest { ino, recouple, operator: true, ..Default::default() };
    match store {
        // An object is read by the MDS itself (Nonvolatile Apply).
        Some(_) => request.journal_object = source.to_string(),
        None => request.journal = read_journal(source, None)?,
    }
    let events = if request.journal.is_empty() {
        "the journal object".to_string()
    } else {
        match inspect_segment(&request.journal) {
            Ok((_, records)) => format!("{} events", records.len()),
            Err(error) => return Err(format!("{source}: {error}")),
        }
    };
    let runtime = Blocking::new("cudele-journal").map_err(|error| error.to_string())?;
    let remote = RemoteMetadata::connect(target.remote_options(), runtime).map_err(|error| error.to_string())?;
    let spinner = progress(format!("{source}: applying {events} to {}", directory.display()));
    let reply = remote.merge_subtree(request);
    spinner.finish_and_clear();
    crate::metadata::Metadata::close(&remote);
    let reply = reply.map_err(|error| format!("merge into {}: {error}", directory.display()))?;
    println!(
        "{source}: {} applied, {} skipped, {} already merged; merged through {}",
        reply.events_applied, reply.events_skipped, reply.events_already_merged, reply.merged_seq
    );
    for reason in reply.skip_reasons {
        println!("  skipped: {reason}");
    }
    Ok(())
}
