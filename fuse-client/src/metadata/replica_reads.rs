//! Cache-miss reads of [`super::RemoteMetadata`] (lookup, getattr, readdir) served by the
//! MDS's elastic metadata cache replicas (DESIGN.md §7) through
//! `cudele_proto::routing::RoutedReader`, with the MDS as the fallback.
//!
//! Each read goes to a live instance of the deployment owning the directory in question (the
//! parent for lookup, the directory for readdir, the inode's home for getattr); a failed
//! instance is retried elsewhere with backoff and jitter, and when no instance answers the
//! read goes to the MDS through the caller's own call (its session, retries and session
//! reopening). An errno from a replica is the answer, with one exception: EBUSY. Replicas
//! read without a session, so a subtree decoupled with `interfere_policy: block` is EBUSY to
//! them even when this mount owns it; such reads are asked again of the MDS with our session,
//! which gives EBUSY to everyone but the owner — exactly what a read without replicas gets.
//!
//! Coherence needs nothing more here: the MDS invalidates every live instance (invalidate,
//! then ACK) before it invalidates the mounts and before it acknowledges a write, so a reply
//! from a replica is never older than a write whose acknowledgement preceded the read, and
//! the mount's own cache keeps its generation check (a reply that raced an invalidation is
//! returned but not cached).
//!
//! Homes: getattr is routed by the directory an inode lives in. Replies from replicas name
//! it (`home`); lookup and readdir replies from the MDS imply it (the parent, a good guess
//! that a reply corrects for hard links and renames). A guess routed to the wrong deployment
//! is still answered correctly, just not from a cache.

use crate::error::ClientError;
use crate::runtime::Blocking;
use crate::sync::{lock, AtomicU64, Mutex, Ordering};
use cudele_journal::{Ino, ROOT_INO};
use cudele_namespace::{NsError, NsResult};
use cudele_proto::pb;
use cudele_proto::routing::{RoutedReader, RoutingOptions, RoutingStats};
use cudele_proto::transport::ClientTls;
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;

/// Most inode homes remembered; past it the map starts over (homes are relearnt from replies).
pub const HOMES_MAX: usize = 1 << 18;

/// The `replicas=` mount option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplicaMode {
    /// Route cache-miss reads to replicas whenever the MDS lists replica deployments.
    #[default]
    Auto,
    /// Read everything from the MDS.
    Off,
}

impl FromStr for ReplicaMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" | "on" => Ok(ReplicaMode::Auto),
            "off" => Ok(ReplicaMode::Off),
            other => Err(format!("replicas={other}: expected auto, on or off")),
        }
    }
}

/// Counters of this mount's replica routing, besides the reader's own.
#[derive(Debug, Default)]
pub struct ReplicaReadStats {
    /// Reads the MDS answered because no instance did.
    pub mds_reads: AtomicU64,
    /// EBUSY answers of replicas asked again of the MDS with our session.
    pub busy_rechecks: AtomicU64,
}

/// The replica-routed read path of one mount.
pub struct ReplicaReads {
    reader: RoutedReader,
    homes: Mutex<HashMap<Ino, Ino>>,
    pub stats: ReplicaReadStats,
}

/// What a replica said, as this module uses it.
enum Answer<T> {
    /// The read's answer (value or errno).
    Final(NsResult<T>),
    /// Ask the MDS: no instance answered, or the answer depends on our session (EBUSY).
    AskMds,
}

impl ReplicaReads {
    /// A router for the MDS at `address` (`host:port`, or with a scheme), over TLS with `tls`. Lists the
    /// deployments once; an MDS without replicas makes every read go to it.
    pub async fn connect(
        address: &str,
        token: Option<String>,
        tls: Option<ClientTls>,
    ) -> Result<ReplicaReads, ClientError> {
        let options = RoutingOptions { token, session: None, tls, ..RoutingOptions::default() };
        let reader = RoutedReader::connect(address, options)
            .await
            .map_err(|error| ClientError::InvalidAddress { address: address.to_string(), reason: error.to_string() })?;
        match reader.table().deployments {
            0 => tracing::info!("the MDS lists no replica deployments (yet): reads go to it"),
            deployments => tracing::info!(deployments, "cache-miss reads go to replicas"),
        }
        Ok(ReplicaReads { reader, homes: Mutex::new(HashMap::new()), stats: ReplicaReadStats::default() })
    }

    /// The reader's routing counters (replica answers, cache answers, failures).
    pub fn routing_stats(&self) -> &RoutingStats {
        &self.reader.stats
    }

    /// Deployments the MDS listed last (0: replicas off there).
    pub fn deployments(&self) -> u32 {
        self.reader.table().deployments
    }

    /// The directory `ino` lives in, as far as we know.
    pub fn home(&self, ino: Ino) -> Option<Ino> {
        if ino == ROOT_INO {
            return Some(ROOT_INO);
        }
        lock(&self.homes).get(&ino).copied()
    }

    /// `ino` lives in `home` (a server said so, or the caller just put it there).
    pub fn note_home(&self, ino: Ino, home: Ino) {
        let mut homes = lock(&self.homes);
        if homes.len() >= HOMES_MAX && !homes.contains_key(&ino) {
            homes.clear();
        }
        homes.insert(ino, home);
    }

    /// `ino` was seen in `directory`: its home unless a reply said otherwise.
    fn guess_home(homes: &mut HashMap<Ino, Ino>, ino: Ino, directory: Ino) {
        if homes.len() >= HOMES_MAX && !homes.contains_key(&ino) {
            homes.clear();
        }
        homes.entry(ino).or_insert(directory);
    }

    fn answer<T, U>(&self, routed: Option<Result<T, tonic::Status>>, convert: impl FnOnce(T) -> U) -> Answer<U> {
        match routed {
            None => Answer::AskMds,
            Some(Ok(value)) => Answer::Final(Ok(convert(value))),
            Some(Err(status)) => match cudele_proto::error_from_status(&status) {
                NsError::Busy(_) => {
                    self.stats.busy_rechecks.fetch_add(1, Ordering::Relaxed);
                    Answer::AskMds
                }
                error => Answer::Final(Err(error)),
            },
        }
    }

    async fn lookup_routed(&self, parent: Ino, name: &[u8]) -> Answer<pb::AttrReply> {
        let routed = self.reader.try_lookup(parent, name).await;
        self.answer(routed, |read| {
            self.note_home(read.attr.ino, read.home.unwrap_or(parent));
            pb::AttrReply { attr: Some(read.attr) }
        })
    }

    async fn getattr_routed(&self, ino: Ino) -> Answer<pb::AttrReply> {
        let routed = self.reader.try_getattr(ino, self.home(ino)).await;
        self.answer(routed, |read| {
            if let Some(home) = read.home {
                self.note_home(ino, home);
            }
            pb::AttrReply { attr: Some(read.attr) }
        })
    }

    async fn readdir_routed(&self, request: &pb::ReaddirRequest) -> Answer<pb::ReaddirReply> {
        let routed = self.reader.try_readdir(request.ino, &request.after, request.limit, request.plus).await;
        self.answer(routed, |page| pb::ReaddirReply { entries: page.entries, end: page.end })
    }

    fn count_mds_read(&self) {
        self.stats.mds_reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// The replica read path of a mount with `mode` (None when off), for the MDS at `address`.
/// Lists the deployments once; an MDS without replicas makes every read go to it.
pub fn start(
    mode: ReplicaMode,
    address: &str,
    token: Option<String>,
    tls: Option<ClientTls>,
    runtime: &Blocking,
) -> Result<Option<ReplicaReads>, ClientError> {
    if mode == ReplicaMode::Off {
        return Ok(None);
    }
    let connected = runtime.block_on(async { Ok(ReplicaReads::connect(address, token, tls).await) });
    let connected = connected.map_err(|error| ClientError::Unreachable {
        address: address.to_string(),
        reason: format!("starting replica routing: {error}"),
    })?;
    connected.map(Some)
}

/// lookup(2) of `name` in `parent` through `replicas` when there are any, else (or when no
/// instance answers) through `from_mds`.
pub async fn lookup(
    replicas: Option<&ReplicaReads>,
    parent: Ino,
    name: &[u8],
    from_mds: impl Future<Output = NsResult<pb::AttrReply>>,
) -> NsResult<pb::AttrReply> {
    let Some(replicas) = replicas else { return from_mds.await };
    if let Answer::Final(answer) = replicas.lookup_routed(parent, name).await {
        return answer;
    }
    replicas.count_mds_read();
    let reply = from_mds.await?;
    if let Some(attr) = &reply.attr {
        replicas.note_home(attr.ino, parent);
    }
    Ok(reply)
}

/// getattr of `ino`, routed by its home; see [`lookup`].
pub async fn getattr(
    replicas: Option<&ReplicaReads>,
    ino: Ino,
    from_mds: impl Future<Output = NsResult<pb::AttrReply>>,
) -> NsResult<pb::AttrReply> {
    let Some(replicas) = replicas else { return from_mds.await };
    if let Answer::Final(answer) = replicas.getattr_routed(ino).await {
        return answer;
    }
    replicas.count_mds_read();
    from_mds.await
}

/// One readdir page of `request.ino`; see [`lookup`]. The entries' homes are noted.
pub async fn readdir(
    replicas: Option<&ReplicaReads>,
    request: &pb::ReaddirRequest,
    from_mds: impl Future<Output = NsResult<pb::ReaddirReply>>,
) -> NsResult<pb::ReaddirReply> {
    let Some(replicas) = replicas else { return from_mds.await };
    let reply = match replicas.readdir_routed(request).await {
        Answer::Final(answer) => answer?,
        Answer::AskMds => {
            replicas.count_mds_read();
            from_mds.await?
        }
    };
    let mut homes = lock(&replicas.homes);
    for entry in &reply.entries {
        ReplicaReads::guess_home(&mut homes, entry.ino, request.ino);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount option's values.
    #[test]
    fn modes_parse() {
        assert_eq!("off".parse::<ReplicaMode>(), Ok(ReplicaMode::Off));
        assert_eq!("on".parse::<ReplicaMode>(), Ok(ReplicaMode::Auto));
        assert_eq!("auto".parse::<ReplicaMode>(), Ok(ReplicaMode::Auto));
        assert!("maybe".parse::<ReplicaMode>().is_err());
    }

    /// Without replicas every read is the MDS's, untouched.
    #[tokio::test]
    async fn without_replicas_the_mds_answers() {
        let reply = pb::AttrReply { attr: Some(pb::Attr { ino: 7, ..Default::default() }) };
        let answered = lookup(None, 1, b"x", async { Ok(reply.clone()) }).await;
        assert_eq!(answered, Ok(reply));
        let failed = getattr(None, 7, async { Err(NsError::Busy("decoupled")) }).await;
        assert!(matches!(failed, Err(NsError::Busy(_))));
    }

    /// An MDS that lists no deployments (here: none reachable) sends every read to the MDS,
    /// and replies teach the reader where inodes live.
    #[tokio::test]
    async fn no_deployments_fall_back_and_learn_homes() {
        let replicas = ReplicaReads::connect("127.0.0.1:1", None, None).await.expect("reader");
        assert_eq!(replicas.deployments(), 0);
        let reply = pb::AttrReply { attr: Some(pb::Attr { ino: 42, ..Default::default() }) };
        let answered = lookup(Some(&replicas), 9, b"x", async { Ok(reply.clone()) }).await;
        assert_eq!(answered, Ok(reply));
        assert_eq!(replicas.home(42), Some(9));
        assert_eq!(replicas.home(ROOT_INO), Some(ROOT_INO));
        let request = pb::ReaddirRequest { ino: 9, after: Vec::new(), limit: 10, plus: false };
        let page = pb::ReaddirReply {
            entries: vec![
                pb::DirEntry { name: b"x".to_vec(), ino: 42, kind: 1, attr: None },
                pb::DirEntry { name: b"y".to_vec(), ino: 43, kind: 1, attr: None },
            ],
            end: true,
        };
        // A guess does not override what a reply said.
        replicas.note_home(42, 5);
        readdir(Some(&replicas), &request, async { Ok(page.clone()) }).await.expect("readdir");
        assert_eq!((replicas.home(42), replicas.home(43)), (Some(5), Some(9)));
        assert_eq!(replicas.stats.mds_reads.load(Ordering::Relaxed), 2);
    }
}
