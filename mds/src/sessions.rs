//! Live client sessions: leases, the invalidation push channel, and waiting for
//! acknowledgements so a write returns only after every other client dropped what it cached.

use crate::metrics_names;
use cudele_journal::{Ino, SessionId};
use cudele_proto::auth::Credential;
use cudele_proto::pb;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Invalidation batches queued per subscriber before it counts as unresponsive.
pub const SUBSCRIBER_QUEUE_LENGTH_MAX: usize = 1024;
/// Inodes tracked per session as possibly cached there; past this the session gets every
/// invalidation again (as if it cached everything). About 16 MiB per session at most.
pub const INTEREST_INODES_MAX: usize = 1 << 20;
/// Live sessions at once; OpenSession past it fails with ENOSPC (RESOURCE_EXHAUSTED).
pub const SESSIONS_MAX: usize = 4096;

pub type InvalidationSender = mpsc::Sender<Result<pb::Invalidation, tonic::Status>>;

struct LiveSession {
    client: String,
    /// SHA-256 of the session's secret; None for a session from before credentials, which
    /// no call can authenticate as.
    verifier: Option<[u8; 32]>,
    lease_expires: Instant,
    subscriber: Option<InvalidationSender>,
    waiting_acks: HashMap<u64, oneshot::Sender<()>>,
    /// What the session may cache (CephFS's capabilities, coarsely): every inode it was sent
    /// attributes, entries or contents of since it subscribed. Recorded under the namespace
    /// lock of the read or write that revealed it, so a write that follows is sure to see
    /// it. Invalidations go only to sessions interested in what a write touched.
    interest: Interest,
}

#[derive(Default)]
struct Interest {
    inodes: HashSet<Ino>,
    /// Too many to track: the session may cache anything.
    everything: bool,
}

impl Interest {
    fn note(&mut self, inodes: impl IntoIterator<Item = Ino>) {
        if self.everything {
            return;
        }
        self.inodes.extend(inodes);
        if self.inodes.len() > INTEREST_INODES_MAX {
            self.inodes = HashSet::new();
            self.everything = true;
        }
    }

    fn covers(&self, ino: Ino) -> bool {
        self.everything || self.inodes.contains(&ino)
    }
}

pub struct Sessions {
    live: Mutex<HashMap<SessionId, LiveSession>>,
    next_invalidation_id: AtomicU64,
    pub lease: Duration,
    pub ack_timeout: Duration,
}

/// What a session looks like to `cudele status`.
pub struct SessionView {
    pub session: SessionId,
    pub client: String,
    pub lease_remaining: Duration,
}

impl Sessions {
    pub fn new(lease: Duration, ack_timeout: Duration) -> Self {
        Sessions { live: Mutex::new(HashMap::new()), next_invalidation_id: AtomicU64::new(1), lease, ack_timeout }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, LiveSession>> {
        self.live.lock().expect("sessions lock poisoned")
    }

    /// Start (or, after an MDS restart, resume) a session's lease.
    pub fn activate(&self, session: SessionId, client: String, verifier: Option<[u8; 32]>) {
        let lease_expires = Instant::now() + self.lease;
        self.lock().insert(
            session,
            LiveSession {
                client,
                verifier,
                lease_expires,
                subscriber: None,
                waiting_acks: HashMap::new(),
                interest: Interest::default(),
            },
        );
        metrics::gauge!(metrics_names::SESSIONS).set(self.lock().len() as f64);
    }

    /// Renew the lease; false if the session is not live (expired or unknown).
    pub fn renew(&self, session: SessionId) -> bool {
        match self.lock().get_mut(&session) {
            Some(live) => {
                live.lease_expires = Instant::now() + self.lease;
                true
            }
            None => false,
        }
    }

    pub fn is_live(&self, session: SessionId) -> bool {
        self.lock().contains_key(&session)
    }

    /// Whether `credential` is that of a live session (its secret matches the verifier).
    pub fn authenticate(&self, credential: &Credential) -> bool {
        self.lock()
            .get(&credential.session)
            .and_then(|live| live.verifier.as_ref())
            .is_some_and(|verifier| credential.verifies(verifier))
    }

    /// Live sessions now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn remove(&self, session: SessionId) -> bool {
        let removed = self.lock().remove(&session).is_some();
        metrics::gauge!(metrics_names::SESSIONS).set(self.lock().len() as f64);
        removed
    }

    /// Sessions whose lease ran out.
    pub fn expired(&self) -> Vec<SessionId> {
        let now = Instant::now();
        self.lock().iter().filter(|(_, live)| live.lease_expires <= now).map(|(session, _)| *session).collect()
    }

    pub fn subscribe(&self, session: SessionId) -> Option<mpsc::Receiver<Result<pb::Invalidation, tonic::Status>>> {
        let mut live = self.lock();
        let entry = live.get_mut(&session)?;
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE_LENGTH_MAX);
        entry.subscriber = Some(sender);
        entry.interest = Interest::default();
        // A client (re)subscribes with an empty cache, so invalidations it was sent before
        // are satisfied: acknowledge them rather than leave their writers to time out.
        for (_, waiter) in entry.waiting_acks.drain() {
            let _ = waiter.send(());
        }
        Some(receiver)
    }

    /// Drop every push channel (the streams end); used at shutdown.
    pub fn end_subscriptions(&self) {
        for live in self.lock().values_mut() {
            live.subscriber = None;
            live.waiting_acks.clear();
        }
    }

    /// `session` was sent what it may cache about `inodes` (call under the namespace lock
    /// of the operation that revealed them).
    pub fn note_interest(&self, session: SessionId, inodes: impl IntoIterator<Item = Ino>) {
        if session == 0 {
            return;
        }
        if let Some(live) = self.lock().get_mut(&session) {
            live.interest.note(inodes);
        }
    }

    pub fn acknowledge(&self, session: SessionId, id: u64) {
        if let Some(waiter) = self.lock().get_mut(&session).and_then(|live| live.waiting_acks.remove(&id)) {
            let _ = waiter.send(());
        }
    }

    /// Up to `limit` sessions with ids above `after`, by id, and how many are live in all.
    pub fn view(&self, after: SessionId, limit: usize) -> (Vec<SessionView>, usize) {
        let now = Instant::now();
        let live = self.lock();
        let total = live.len();
        let mut views: Vec<SessionView> = live
            .iter()
            .filter(|(session, _)| **session > after)
            .map(|(session, live)| SessionView {
                session: *session,
                client: live.client.clone(),
                lease_remaining: live.lease_expires.saturating_duration_since(now),
            })
            .collect();
        drop(live);
        views.sort_by_key(|view| view.session);
        views.truncate(limit);
        (views, total)
    }

    /// Tell every subscribed session but `origin` to drop `inodes` and `entries` — those it
    /// may cache, or all with `broadcast` — and wait for their acknowledgements. Returns the sessions that did not acknowledge in time;
    /// the caller expires them, since their caches can no longer be trusted.
    pub async fn invalidate(
        &self,
        origin: SessionId,
        inodes: Vec<Ino>,
        entries: Vec<(Ino, Vec<u8>)>,
        broadcast: bool,
    ) -> Vec<SessionId> {
        if inodes.is_empty() && entries.is_empty() {
            return Vec::new();
        }
        let mut waits = Vec::new();
        let mut unresponsive = Vec::new();
        {
            let mut live = self.lock();
            for (session, state) in live.iter_mut() {
                if *session == origin {
                    continue;
                }
                let Some(subscriber) = &state.subscriber else { continue };
                let interest = &state.interest;
                let inodes: Vec<Ino> =
                    inodes.iter().copied().filter(|ino| broadcast || interest.covers(*ino)).collect();
                let entries: Vec<pb::EntryInvalidation> = entries
                    .iter()
                    .filter(|(parent, _)| broadcast || interest.covers(*parent))
                    .map(|(parent, name)| pb::EntryInvalidation { parent: *parent, name: name.clone() })
                    .collect();
                if inodes.is_empty() && entries.is_empty() {
                    continue; // it has nothing this write changed
                }
                let id = self.next_invalidation_id.fetch_add(1, Ordering::Relaxed);
                let message = pb::Invalidation { id, inodes, entries };
                let (sender, receiver) = oneshot::channel();
                if subscriber.try_send(Ok(message)).is_err() {
                    unresponsive.push(*session);
                    continue;
                }
                state.waiting_acks.insert(id, sender);
                waits.push((*session, receiver));
            }
        }
        metrics::counter!(metrics_names::INVALIDATIONS_TOTAL).increment(waits.len() as u64);
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        for (session, receiver) in waits {
            match tokio::time::timeout_at(deadline, receiver).await {
                Ok(Ok(())) => {}
                _ => unresponsive.push(session),
            }
        }
        unresponsive
    }
}
