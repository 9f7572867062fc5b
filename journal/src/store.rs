//! The object store that holds journal segments and snapshots: opening it from a URL (local
//! directory, memory, S3), and [`JournalStore`], whose puts are durable once they return.
//!
//! Why a wrapper: object_store's `LocalFileSystem::put` writes a staging file and renames it
//! into place without any fsync (object_store 0.12.5 `src/local.rs`, `put_opts`). After a power
//! loss the object may be missing although the put returned, or present under its final name
//! with lost contents. The journal acknowledges a mutation once its segment is in the store, so
//! for local directories [`JournalStore`] writes the object itself: staging file, fsync,
//! rename, fsync of the directory (and of any directory it had to create). S3 puts are durable
//! when acknowledged; memory stores are never durable and exist for tests.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::path::{Path as FilesystemPath, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::error::JournalError;

/// How to reach an S3-compatible store. Unset fields fall back to the `AWS_*` environment
/// variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_ALLOW_HTTP`, ...), as read by `AmazonS3Builder::from_env`.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// e.g. `http://127.0.0.1:9000` for MinIO or moto; unset means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (false keeps the environment's choice, which defaults to no).
    pub allow_http: bool,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Where a store URL points.
#[derive(Debug)]
enum StoreLocation {
    Memory,
    Local(PathBuf),
    S3 { bucket: String, prefix: Option<String> },
}

const SUPPORTED_URLS: &str = "expected file:///absolute/dir, a plain path, memory:// or s3://bucket[/prefix]";

fn parse_store_url(url: &str) -> Result<StoreLocation, JournalError> {
    let invalid = |reason: String| JournalError::InvalidStoreUrl { url: url.to_owned(), reason };
    if url.is_empty() {
        return Err(invalid(SUPPORTED_URLS.to_owned()));
    }
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        // No scheme: a filesystem path, absolute or relative to the working directory.
        Err(url::ParseError::RelativeUrlWithoutBase) => return Ok(StoreLocation::Local(PathBuf::from(url))),
        Err(error) => return Err(invalid(format!("{error}; {SUPPORTED_URLS}"))),
    };
    match parsed.scheme() {
        "memory" => Ok(StoreLocation::Memory),
        "file" => {
            let path =
                parsed.to_file_path().map_err(|()| invalid(format!("not a local absolute path; {SUPPORTED_URLS}")))?;
            Ok(StoreLocation::Local(path))
        }
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default();
            if bucket.is_empty() {
                return Err(invalid("no bucket name (s3://bucket[/prefix])".to_owned()));
            }
            let prefix = parsed.path().trim_matches('/');
            let prefix = (!prefix.is_empty()).then(|| prefix.to_owned());
            Ok(StoreLocation::S3 { bucket: bucket.to_owned(), prefix })
        }
        other => Err(invalid(format!("unknown scheme {other:?}; {SUPPORTED_URLS}"))),
    }
}

/// Opens the object store a URL names: `file:///abs/dir` or a plain path (a local directory,
/// created if missing), `memory://` (a new, empty in-memory store on every call) or
/// `s3://bucket[/prefix]` (configured from `options`, then the `AWS_*` environment).
///
/// Puts through the returned handle are not durable on a local directory: write journal
/// objects through [`JournalStore`] (e.g. [`JournalStore::open`]) instead.
pub fn open_object_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>, JournalError> {
    Ok(JournalStore::open(url, options)?.inner)
}

fn open_s3(
    url: &str,
    bucket: &str,
    prefix: Option<&str>,
    options: &StoreOptions,
) -> Result<Arc<dyn ObjectStore>, JournalError> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(access_key_id) = &options.access_key_id {
        builder = builder.with_access_key_id(access_key_id);
    }
    if let Some(secret_access_key) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret_access_key);
    }
    if options.allow_http {
        builder = builder.with_allow_http(true);
    }
    let s3 = builder
        .build()
        .map_err(|error| JournalError::InvalidStoreUrl { url: url.to_owned(), reason: error.to_string() })?;
    Ok(match prefix {
        Some(prefix) => Arc::new(PrefixStore::new(s3, prefix)),
        None => Arc::new(s3),
    })
}

/// One object found by [`JournalStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Path relative to the store (and to its prefix), e.g. `journal/00000000000000000001.seg`.
    pub path: String,
    pub size_bytes: u64,
}

/// The object store as the journal uses it: a put has reached stable storage when it returns
/// (see the module documentation for why local directories need this wrapper).
#[derive(Clone)]
pub struct JournalStore {
    inner: Arc<dyn ObjectStore>,
    local: Option<Arc<LocalDirectory>>,
}

/// What a local store needs to write objects durably itself.
struct LocalDirectory {
    /// Maps object paths to files exactly as `inner` does.
    filesystem: Arc<LocalFileSystem>,
    root: PathBuf,
    /// Directories whose entries up to `root` are known to be on stable storage.
    durable_directories: Mutex<HashSet<PathBuf>>,
}

impl fmt::Debug for JournalStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "JournalStore({})", self.inner)
    }
}

impl fmt::Display for JournalStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, formatter)
    }
}

impl JournalStore {
    /// Opens a store from a URL; see [`open_object_store`] for the forms accepted.
    pub fn open(url: &str, options: &StoreOptions) -> Result<JournalStore, JournalError> {
        match parse_store_url(url)? {
            StoreLocation::Memory => Ok(JournalStore::memory()),
            StoreLocation::Local(path) => JournalStore::local(path),
            StoreLocation::S3 { bucket, prefix } => {
                Ok(JournalStore::from_object_store(open_s3(url, &bucket, prefix.as_deref(), options)?))
            }
        }
    }

    /// A new, empty, non-durable in-memory store.
    pub fn memory() -> JournalStore {
        JournalStore::from_object_store(Arc::new(InMemory::new()))
    }

    /// A store in the local directory `root`, created (durably) if missing.
    pub fn local(root: impl AsRef<FilesystemPath>) -> Result<JournalStore, JournalError> {
        let root = root.as_ref();
        create_directory_durably(root)?;
        let root = std::fs::canonicalize(root).map_err(io_error("canonicalize", root))?;
        let filesystem = LocalFileSystem::new_with_prefix(&root).map_err(|cause| JournalError::ObjectStore {
            operation: "open",
            path: root.display().to_string(),
            cause,
        })?;
        let filesystem = Arc::new(filesystem);
        Ok(JournalStore {
            inner: filesystem.clone(),
            local: Some(Arc::new(LocalDirectory { filesystem, root, durable_directories: Mutex::default() })),
        })
    }

    /// Wraps a store whose puts are durable when they return (S3, or a test wrapper around
    /// one). Do not pass a `LocalFileSystem` here: use [`JournalStore::local`].
    pub fn from_object_store(inner: Arc<dyn ObjectStore>) -> JournalStore {
        JournalStore { inner, local: None }
    }

    /// The underlying store, for reads and for operations this type does not offer
    /// (conditional updates, ranges). Puts through it skip the local-directory fsyncs.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The directory of a local store; `None` for memory and S3.
    pub fn local_root(&self) -> Option<&FilesystemPath> {
        self.local.as_deref().map(|local| local.root.as_path())
    }

    /// Writes `bytes` at `path`, replacing any object there; durable when it returns.
    /// Readers see the old object or the new one, never a mix.
    pub async fn put(&self, path: &str, bytes: impl Into<Bytes>) -> Result<(), JournalError> {
        self.put_with_mode(path, bytes.into(), PutMode::Overwrite).await
    }

    /// Like [`JournalStore::put`], but fails with [`JournalError::AlreadyExists`] if an
    /// object is already at `path` (so two writers can never replace each other's segment).
    pub async fn put_if_absent(&self, path: &str, bytes: impl Into<Bytes>) -> Result<(), JournalError> {
        self.put_with_mode(path, bytes.into(), PutMode::Create).await
    }

    async fn put_with_mode(&self, path: &str, bytes: Bytes, mode: PutMode) -> Result<(), JournalError> {
        let location = object_path(path)?;
        match &self.local {
            Some(local) => {
                let local = Arc::clone(local);
                let path = path.to_owned();
                let replace = matches!(mode, PutMode::Overwrite);
                run_blocking(move || local.write_durably(&path, &location, &bytes, replace)).await
            }
            None => {
                let options = PutOptions { mode, ..PutOptions::default() };
                self.inner.put_opts(&location, PutPayload::from_bytes(bytes), options).await.map_err(|cause| {
                    match cause {
                        // Nothing is missing but the bucket itself: keep the store's words for it.
                        object_store::Error::NotFound { .. } => {
                            JournalError::ObjectStore { operation: "put", path: path.to_owned(), cause }
                        }
                        cause => store_error("put", path, cause),
                    }
                })?;
                Ok(())
            }
        }
    }

    /// The whole object at `path`; [`JournalError::NotFound`] if there is none.
    pub async fn get(&self, path: &str) -> Result<Bytes, JournalError> {
        let location = object_path(path)?;
        let result = self.inner.get(&location).await.map_err(|cause| store_error("get", path, cause))?;
        result.bytes().await.map_err(|cause| store_error("get", path, cause))
    }

    /// Removes the object at `path`; removing a missing object succeeds (trims are retried).
    pub async fn delete(&self, path: &str) -> Result<(), JournalError> {
        let location = object_path(path)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(cause) => return Err(store_error("delete", path, cause)),
        }
        let Some(local) = &self.local else { return Ok(()) };
        // Make the removal durable too (also when a retried delete finds the object gone), so
        // a trimmed segment does not come back after a crash.
        let local = Arc::clone(local);
        run_blocking(move || {
            let file = local.file_path(&location)?;
            match file.parent().map(sync_directory) {
                Some(Err(JournalError::Io { cause, .. })) if cause.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Some(result) => result,
                None => Ok(()),
            }
        })
        .await
    }

    /// Every object whose path starts with the folder `prefix` (whole path segments:
    /// `journal` matches `journal/x` but not `journals/x`; `""` lists everything), sorted by
    /// path.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, JournalError> {
        let folder = prefix.strip_suffix('/').unwrap_or(prefix);
        let location = if folder.is_empty() { None } else { Some(object_path(folder)?) };
        let mut objects: Vec<ListedObject> = self
            .inner
            .list(location.as_ref())
            .map_ok(|meta| ListedObject { path: meta.location.to_string(), size_bytes: meta.size })
            .try_collect()
            .await
            .map_err(|cause| store_error("list", prefix, cause))?;
        objects.sort_by(|left, right| left.path.cmp(&right.path));
        Ok(objects)
    }
}

impl LocalDirectory {
    fn file_path(&self, location: &ObjectPath) -> Result<PathBuf, JournalError> {
        self.filesystem.path_to_filesystem(location).map_err(|cause| store_error("map", location.as_ref(), cause))
    }

    /// Staging file, fsync, rename (or link, when not replacing), fsync of the directory.
    fn write_durably(
        &self,
        path: &str,
        location: &ObjectPath,
        bytes: &[u8],
        replace: bool,
    ) -> Result<(), JournalError> {
        let target = self.file_path(location)?;
        let directory = target.parent().ok_or_else(|| JournalError::InvalidObjectPath {
            path: path.to_owned(),
            reason: "no parent directory".into(),
        })?;
        self.ensure_durable_directory(directory)?;
        let (mut staging_file, staging_path) = create_staging_file(&target)?;
        let result = (|| {
            staging_file.write_all(bytes).map_err(io_error("write", &staging_path))?;
            staging_file.sync_all().map_err(io_error("fsync", &staging_path))?;
            drop(staging_file);
            if replace {
                std::fs::rename(&staging_path, &target).map_err(io_error("rename into place", &target))?;
            } else {
                // A hard link fails if the target exists, which rename would silently replace.
                match std::fs::hard_link(&staging_path, &target) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(JournalError::AlreadyExists { path: path.to_owned() });
                    }
                    Err(error) => return Err(io_error("link into place", &target)(error)),
                }
                std::fs::remove_file(&staging_path).map_err(io_error("remove staging file", &staging_path))?;
            }
            sync_directory(directory)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staging_path); // best effort; listings ignore staging names
        }
        result
    }

    /// Creates `directory` if needed and fsyncs every directory from its parent up to the
    /// root, once per process, so that its entry survives a crash.
    fn ensure_durable_directory(&self, directory: &FilesystemPath) -> Result<(), JournalError> {
        if self.durable_directories().contains(directory) {
            return Ok(());
        }
        std::fs::create_dir_all(directory).map_err(io_error("create directory", directory))?;
        let mut current = directory;
        while current != self.root {
            let Some(parent) = current.parent() else { break };
            sync_directory(parent)?;
            current = parent;
        }
        self.durable_directories().insert(directory.to_path_buf());
        Ok(())
    }

    fn durable_directories(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        // The set is only a cache of fsyncs already done; a poisoned lock cannot leave it wrong.
        self.durable_directories.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Staging files are named `<target>#<digits>`, the convention of object_store's own staging
/// files, which `LocalFileSystem` leaves out of listings and refuses to read.
fn create_staging_file(target: &FilesystemPath) -> Result<(std::fs::File, PathBuf), JournalError> {
    const STAGING_ATTEMPTS_MAX: u32 = 1000;
    for attempt in 1..=STAGING_ATTEMPTS_MAX {
        let mut staging_name = target.as_os_str().to_owned();
        staging_name.push(format!("#{attempt}"));
        let staging_path = PathBuf::from(staging_name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&staging_path) {
            Ok(file) => return Ok((file, staging_path)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(io_error("create staging file", &staging_path)(error)),
        }
    }
    Err(io_error("create staging file", target)(std::io::Error::other(format!(
        "{STAGING_ATTEMPTS_MAX} staging files already exist"
    ))))
}

/// Creates `directory` and any missing parents, fsyncing the parent of each one created.
fn create_directory_durably(directory: &FilesystemPath) -> Result<(), JournalError> {
    if directory.is_dir() {
        return Ok(());
    }
    if let Some(parent) = directory.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        create_directory_durably(parent)?;
    }
    match std::fs::create_dir(directory) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io_error("create directory", directory)(error)),
    }
    let parent = match directory.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => FilesystemPath::new("."),
    };
    sync_directory(parent)
}

fn sync_directory(directory: &FilesystemPath) -> Result<(), JournalError> {
    std::fs::File::open(directory).and_then(|handle| handle.sync_all()).map_err(io_error("fsync directory", directory))
}

fn object_path(path: &str) -> Result<ObjectPath, JournalError> {
    let invalid = |reason: String| JournalError::InvalidObjectPath { path: path.to_owned(), reason };
    let location = ObjectPath::parse(path).map_err(|error| invalid(error.to_string()))?;
    if location.as_ref().is_empty() {
        return Err(invalid("empty path".to_owned()));
    }
    // Path::parse drops a leading '/'; refuse it so one object has one spelling.
    if location.as_ref() != path {
        return Err(invalid("not in canonical form (no leading or trailing '/')".to_owned()));
    }
    if location
        .filename()
        .and_then(|name| name.rsplit_once('#'))
        .is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|byte| byte.is_ascii_digit()))
    {
        return Err(invalid("names ending in '#<digits>' are reserved for local staging files".to_owned()));
    }
    Ok(location)
}

fn store_error(operation: &'static str, path: &str, cause: object_store::Error) -> JournalError {
    match cause {
        object_store::Error::NotFound { .. } => JournalError::NotFound { path: path.to_owned() },
        object_store::Error::AlreadyExists { .. } => JournalError::AlreadyExists { path: path.to_owned() },
        cause => JournalError::ObjectStore { operation, path: path.to_owned(), cause },
    }
}

fn io_error(operation: &'static str, path: &FilesystemPath) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |cause| JournalError::Io { operation, path, cause }
}

/// Runs filesystem work off the async executor when there is one (as object_store does).
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn_blocking(work).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(JournalError::Io {
                operation: "run blocking filesystem work",
                path: PathBuf::new(),
                cause: std::io::Error::other(error.to_string()),
            }),
        },
        Err(_) => work(),
    }
}

/// Object-store prefix of globally persisted client journals (the only prefix besides
/// `data/` that clients write; docs/SECURITY.md).
pub const CLIENT_JOURNAL_PREFIX: &str = "client-journals/";

/// Where a subtree's client journal lives in the object store: one object per subtree and
/// session, replaced at each persist (it always holds every unmerged event). A merge by a
/// client may name only its own.
pub fn client_journal_object(subtree: crate::Ino, session: crate::SessionId) -> String {
    format!("{CLIENT_JOURNAL_PREFIX}{subtree:016x}/{session:016x}.seg")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every URL form maps to the intended backend; unknown schemes are refused by name.
    #[test]
    fn parse_urls() {
        assert!(matches!(parse_store_url("memory://"), Ok(StoreLocation::Memory)));
        assert!(
            matches!(parse_store_url("file:///var/lib/cudele"), Ok(StoreLocation::Local(path)) if path == FilesystemPath::new("/var/lib/cudele"))
        );
        assert!(
            matches!(parse_store_url("/var/lib/cudele"), Ok(StoreLocation::Local(path)) if path == FilesystemPath::new("/var/lib/cudele"))
        );
        assert!(
            matches!(parse_store_url("data/store"), Ok(StoreLocation::Local(path)) if path == FilesystemPath::new("data/store"))
        );
        assert!(
            matches!(parse_store_url("s3://bucket"), Ok(StoreLocation::S3 { bucket, prefix: None }) if bucket == "bucket")
        );
        assert!(matches!(
            parse_store_url("s3://bucket/a/b/"),
            Ok(StoreLocation::S3 { bucket, prefix: Some(prefix) }) if bucket == "bucket" && prefix == "a/b"
        ));
        for bad in ["", "gs://bucket", "s3:///prefix", "file://host/x"] {
            let error = parse_store_url(bad).expect_err("unsupported URL");
            assert!(error.to_string().contains("object store URL"), "{error}");
        }
    }

    /// Secrets never reach logs through Debug.
    #[test]
    fn options_debug_redacts_secret() {
        let options = StoreOptions { secret_access_key: Some("hunter2".into()), ..StoreOptions::default() };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
