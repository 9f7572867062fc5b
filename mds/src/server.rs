//! The MDS core: the namespace behind one lock, the journal, sessions and the pipeline every
//! request follows. Mutations: build an event, apply it (validation included), append it to
//! the journal — all under the write lock, so journal order is apply order — then, without
//! the lock, wait until the event is durable and other clients invalidated their caches.
//! Reads wait until everything they observed is durable, so nobody sees state a crash could
//! take back.

use crate::journal_writer::JournalWriter;
use crate::metrics_names;
use crate::persist::PersistProgress;
use crate::reconnect::Reconnect;
use crate::replica::coherence::Coherence;
use crate::sessions::{Sessions, SESSIONS_MAX};
use cudele_journal::{Event, Ino, Seq, SessionId};
use cudele_namespace::{Namespace, NsError, NsResult};
use cudele_proto::auth::{credential_verifier, Credential};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Most events awaiting durability for which the MDS still replies early: bounds what an
/// MDS crash can take back (clients replay it) and what a client keeps for replay.
pub const UNSAFE_EVENTS_MAX: u64 = 1 << 16;
/// Inode numbers reserved (journaled) at a time for creates answered early.
pub const UNSAFE_INODE_BLOCK: u64 = 4096;

/// An early reply's event, encoded as a journal record (seq + event) for the client to
/// keep until it is durable (see `cudele_proto::early`).
pub struct Unsafe {
    pub seq: Seq,
    pub record: Vec<u8>,
}

/// Inode numbers for early-answered creates: reserved by an AllocateInodes event that
/// must be durable (at `ready_seq`) before any of them goes out in an early reply.
#[derive(Default)]
struct UnsafeBlock {
    next: Ino,
    end: Ino,
    ready_seq: Seq,
}

/// The newest journal position, and the newest one appended by anyone but its author: for
/// any session, the last event another session made (what a read by it must wait for).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Authors {
    last: Seq,
    last_author: SessionId,
    /// The newest position not appended by `last_author`.
    last_by_others: Seq,
}

impl Authors {
    /// `author` appended everything up to `seq` that is not recorded yet.
    pub fn record(&mut self, seq: Seq, author: SessionId) {
        if author != self.last_author {
            self.last_by_others = self.last;
            self.last_author = author;
        }
        self.last = seq;
    }

    /// The newest position appended by a session other than `reader` (0: none; session 0,
    /// the MDS itself, counts as another session for every reader).
    pub fn last_not_by(&self, reader: SessionId) -> Seq {
        if reader == self.last_author && reader != 0 {
            self.last_by_others
        } else {
            self.last
        }
    }
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub applied: u64,
    pub already_applied: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

impl ReplaySummary {
    fn fail(&mut self, record: &cudele_journal::Record, reason: &str) {
        self.failed += 1;
        if self.failures.len() < MERGE_SKIP_REASONS_REPORTED_MAX {
            self.failures.push(format!("record {} ({}): {reason}", record.seq, record.event.kind_name()));
        }
    }
}

pub struct Mds {
    namespace: RwLock<Namespace>,
    /// Each session's block of inode numbers for creates answered early (reserved with the
    /// session as owner, so a replay can be checked against it). Taken only under the
    /// namespace write lock.
    unsafe_blocks: Mutex<HashMap<SessionId, UnsafeBlock>>,
    /// Who appended the latest events (updated under the namespace write lock).
    authors: Mutex<Authors>,
    /// The process's start time (ns): clients learn from a change that unsafe records not
    /// yet durable may have been lost, and replay them; a later start has a larger value.
    pub incarnation: u64,
    pub journal: Arc<JournalWriter>,
    pub sessions: Sessions,
    pub progress: Arc<PersistProgress>,
    pub object_store_url: String,
    pub objects: Arc<cudele_journal::store::JournalStore>,
    pub started: Instant,
    operations: Mutex<BTreeMap<&'static str, u64>>,
    /// Cache replicas to invalidate before a mutation is acknowledged (DESIGN.md §7).
    pub replicas: Arc<Coherence>,
    /// Holds namespace operations after a restart until the sessions known before it
    /// reconnected (see `crate::reconnect`).
    pub reconnect: Arc<Reconnect>,
    /// Merges running at once (each holds its decoded client journal).
    pub merge_slots: tokio::sync::Semaphore,
}

/// Merges the MDS runs at once; more wait.
pub const MERGES_CONCURRENT_MAX: usize = 2;

impl Mds {
    pub fn new(
        namespace: Namespace,
        journal: Arc<JournalWriter>,
        sessions: Sessions,
        progress: Arc<PersistProgress>,
        object_store_url: String,
        objects: Arc<cudele_journal::store::JournalStore>,
        replicas: Arc<Coherence>,
    ) -> Self {
        // Sessions known from before a restart get a fresh lease so their mounts can resume,
        // and the reconnect phase waits for them.
        for session in namespace.sessions() {
            sessions.activate(session.session, String::from_utf8_lossy(&session.client).into_owned(), session.verifier);
        }
        // Sessions from before credentials cannot authenticate a Replay: do not wait for them.
        let reconnect = Reconnect::new(
            namespace.sessions().filter(|session| session.verifier.is_some()).map(|session| session.session),
        );
        Mds {
            reconnect: Arc::new(reconnect),
            namespace: RwLock::new(namespace),
            unsafe_blocks: Mutex::new(HashMap::new()),
            authors: Mutex::new(Authors::default()),
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64),
            journal,
            sessions,
            progress,
            object_store_url,
            objects,
            started: Instant::now(),
            operations: Mutex::new(BTreeMap::new()),
            replicas,
            merge_slots: tokio::sync::Semaphore::new(MERGES_CONCURRENT_MAX),
        }
    }

    pub fn count_operation(&self, operation: &'static str) {
        *self.operations.lock().expect("operations lock poisoned").entry(operation).or_default() += 1;
    }

    pub fn operation_counts(&self) -> BTreeMap<&'static str, u64> {
        self.operations.lock().expect("operations lock poisoned").clone()
    }

    /// Run `read` on the namespace for `origin`, which must be allowed to see `ino` (EBUSY
    /// inside another session's blocking decoupled subtree); return once everything it could
    /// have seen is durable.
    pub async fn read<R>(
        &self,
        origin: SessionId,
        ino: Ino,
        read: impl FnOnce(&Namespace) -> NsResult<R>,
    ) -> NsResult<R> {
        let (result, observed) = {
            let namespace = self.namespace.read().expect("namespace lock poisoned");
            let result = check_access(&namespace, origin, ino).and_then(|()| read(&namespace));
            self.sessions.note_interest(origin, [ino]);
            // The reader's own changes need not be durable for it to see them (its early
            // replies it replays itself); everyone else's must be.
            (result, self.authors().last_not_by(origin))
        };
        if observed > self.journal.durable_seq() {
            self.journal.wait_durable(observed).await.map_err(NsError::Io)?;
        }
        result
    }

    /// Apply the event `build` makes from the current namespace; `reply` reads the result
    /// under the same lock. Returns once the event is durable and other sessions have
    /// dropped what it changed.
    pub async fn mutate<R>(
        &self,
        origin: SessionId,
        build: impl FnOnce(&Namespace) -> NsResult<Event>,
        reply: impl FnOnce(&Namespace, &Event) -> R,
    ) -> NsResult<R> {
        let (result, _) = self.mutate_with(origin, false, |namespace, _| build(namespace), reply).await?;
        Ok(result)
    }

    /// [`Mds::mutate`] for events that may create an inode: `build` gets the number a new
    /// inode takes. With `early` (the client keeps and replays unsafe records), the reply
    /// may come before the event is durable — then it carries the [`Unsafe`] record — as
    /// long as fewer than [`UNSAFE_EVENTS_MAX`] events await durability and the inode
    /// comes from a block reserved durably beforehand, so that an inode handed out in an
    /// early reply is never handed out again by an MDS that lost the reply's event.
    pub async fn mutate_with<R>(
        &self,
        origin: SessionId,
        early: bool,
        build: impl FnOnce(&Namespace, Ino) -> NsResult<Event>,
        reply: impl FnOnce(&Namespace, &Event) -> R,
    ) -> NsResult<(R, Option<Unsafe>)> {
        let (seq, touched, result, replica_plan, unsafe_event) = {
            let mut namespace = self.namespace.write().expect("namespace lock poisoned");
            let early = early && origin != 0;
            let mut blocks = self.unsafe_blocks.lock().expect("unsafe block lock poisoned");
            let mut no_block = UnsafeBlock::default();
            let block = if early { blocks.entry(origin).or_default() } else { &mut no_block };
            let backlog = self.journal.last_assigned().saturating_sub(self.journal.durable_seq());
            let mut reply_early = early && backlog < UNSAFE_EVENTS_MAX;
            if reply_early && block.next >= block.end {
                // A fresh block for this session, journaled ahead of the event (this reply
                // waits for both); the session record keeps the range, so a replay after a
                // restart can only name numbers from it.
                let range = namespace.peek_range(UNSAFE_INODE_BLOCK);
                let reservation = Event::AllocateInodes { owner: origin, range };
                let reserved = namespace.apply(&reservation)?;
                let ready_seq = self.journal.append(reservation, namespace.store_ops(&reserved));
                self.appended(ready_seq, origin);
                *block = UnsafeBlock { next: range.start, end: range.end, ready_seq };
                reply_early = false;
            }
            let new_ino = if early && block.next < block.end { block.next } else { namespace.next_ino() };
            let event = build(&namespace, new_ino)?;
            // Everything the journal writer would refuse is refused here, before apply:
            // nothing an RPC accepted can make the writer stop.
            cudele_namespace::validate_event(&event)?;
            namespace.check_limits(&event)?;
            check_interference(&namespace, origin, &event)?;
            let touched = namespace.apply(&event)?;
            self.note_touched(origin, &touched);
            if touched.inodes().any(|ino| ino == new_ino) && new_ino == block.next {
                block.next += 1;
            }
            // The block's reservation must be durable before an early reply relies on it.
            reply_early &= self.journal.durable_seq() >= block.ready_seq;
            let replica_plan = self.replicas.plan(&namespace, &touched, [&event]);
            let result = reply(&namespace, &event);
            let changes = namespace.store_ops(&touched);
            let unsafe_event = reply_early.then(|| event.clone());
            let seq = self.journal.append(event, changes);
            self.appended(seq, origin);
            (seq, touched, result, replica_plan, unsafe_event)
        };
        metrics::gauge!(metrics_names::INODES).set(self.inode_count() as f64);
        let unsafe_record = unsafe_event.map(|event| {
            let mut record = Vec::new();
            cudele_journal::codec::encode_record(&cudele_journal::Record { seq, event }, &mut record);
            Unsafe { seq, record }
        });
        let durable_wait = if unsafe_record.is_some() { None } else { Some(seq) };
        self.finish(origin, durable_wait, touched, replica_plan).await?;
        Ok((result, unsafe_record))
    }

    /// The tail every change shares: wait until `durable` (if any) is durable, then until
    /// cache replicas and other sessions dropped what the change touched.
    async fn finish(
        &self,
        origin: SessionId,
        durable: Option<Seq>,
        touched: cudele_namespace::Touched,
        replica_plan: Option<crate::replica::coherence::InvalidationPlan>,
    ) -> NsResult<()> {
        if let Some(seq) = durable {
            self.journal.wait_durable(seq).await.map_err(NsError::Io)?;
        }
        self.replicas.invalidate(replica_plan).await;
        let inodes: Vec<Ino> = touched.inodes().collect();
        let entries: Vec<(Ino, Vec<u8>)> = touched.dentries().cloned().collect();
        // Replicas serve reads the MDS does not see, so with replicas every session may cache
        // anything.
        let broadcast = self.replicas.registry().deployments() > 0;
        let unresponsive = self.sessions.invalidate(origin, inodes, entries, broadcast).await;
        for session in unresponsive {
            tracing::warn!(session, "session did not acknowledge an invalidation in time; expiring it");
            self.expire_session(session).await;
        }
        Ok(())
    }

    /// Re-apply create-like records a client got early replies for from an MDS that lost
    /// them (it restarted before they were durable). Idempotent: a record whose inode
    /// exists is skipped. Applied records form one atomic group; returns once durable.
    ///
    /// Trusted only as far as it can be checked: accepted from a session the restarted MDS
    /// knew, during the reconnect phase and before that session reconnected, and only for
    /// creates of inode numbers reserved for that very session. A replay breaking any of
    /// these is refused whole (nothing applied), naming the first offending record.
    pub async fn replay(&self, origin: SessionId, records: Vec<cudele_journal::Record>) -> NsResult<ReplaySummary> {
        let mut summary = ReplaySummary::default();
        if !self.reconnect.awaits(origin) {
            if records.is_empty() {
                // "I have nothing to replay": harmless at any time.
                return Ok(summary);
            }
            return Err(NsError::Refused(format!(
                "session {origin} may not replay: replays are accepted only after a restart, once, from a \
                 session the restarted MDS knew"
            )));
        }
        let (seq, touched, replica_plan) = {
            let mut namespace = self.namespace.write().expect("namespace lock poisoned");
            let refused = check_replay(&namespace, origin, &records);
            if let Err(error) = refused {
                drop(namespace);
                // It had its chance: the phase does not wait for it any longer.
                self.reconnect.reconnected(origin);
                tracing::warn!(origin, %error, "replay refused");
                return Err(error);
            }
            let mut group = Vec::new();
            let mut touched = cudele_namespace::Touched::default();
            for record in records {
                let ino = created_ino(&record.event);
                if namespace.record(ino).is_ok() {
                    summary.already_applied += 1;
                    continue;
                }
                let applied = cudele_namespace::validate_event(&record.event)
                    .and_then(|()| check_interference(&namespace, origin, &record.event))
                    .and_then(|()| namespace.apply(&record.event));
                match applied {
                    Ok(event_touched) => {
                        summary.applied += 1;
                        group.push(record.event);
                        touched.extend(&event_touched);
                    }
                    Err(error) => summary.fail(&record, &error.to_string()),
                }
            }
            if group.is_empty() {
                drop(namespace);
                self.reconnect.reconnected(origin);
                return Ok(summary);
            }
            self.note_touched(origin, &touched);
            let replica_plan = self.replicas.plan(&namespace, &touched, group.iter());
            let seq = self.journal.append_group(with_group_store_ops(&namespace, group, &[&touched]));
            self.appended(seq, origin);
            (seq, touched, replica_plan)
        };
        if summary.failed > 0 {
            tracing::warn!(origin, failed = summary.failed, reasons = ?summary.failures, "replayed records refused");
        }
        self.finish(origin, Some(seq), touched, replica_plan).await?;
        tracing::info!(
            origin,
            applied = summary.applied,
            "re-applied creates a previous incarnation acknowledged early"
        );
        self.reconnect.replayed(summary.applied);
        self.reconnect.reconnected(origin);
        Ok(summary)
    }

    /// Open a session for `client`: journal it with the verifier of a fresh secret and
    /// return the credential (id + secret), which only the caller ever sees.
    pub async fn open_session(&self, client: String) -> NsResult<Credential> {
        if self.sessions.count() >= SESSIONS_MAX {
            return Err(NsError::NoSpace("too many sessions"));
        }
        let client_bytes = client.clone().into_bytes();
        let secret = Credential::generate(0).secret;
        let credential = self
            .mutate(
                0,
                |namespace| {
                    let session = namespace.next_session_id();
                    Ok(Event::SessionOpenVerified {
                        session,
                        client: client_bytes,
                        time: cudele_journal::Timestamp::now(),
                        verifier: credential_verifier(session, &secret),
                    })
                },
                |_, event| match event {
                    Event::SessionOpenVerified { session, .. } => Credential { session: *session, secret },
                    _ => unreachable!("built a SessionOpenVerified event"),
                },
            )
            .await?;
        self.sessions.activate(credential.session, client, Some(credential.verifier()));
        Ok(credential)
    }

    /// Resume a session known to the namespace (a client reconnecting after an MDS restart,
    /// or after its lease lapsed without the session being closed): only with its secret.
    pub fn resume_session(&self, credential: &Credential) -> bool {
        let session = credential.session;
        if self.sessions.authenticate(credential) {
            return self.sessions.renew(session);
        }
        let known = self
            .namespace
            .read()
            .expect("namespace lock poisoned")
            .session(session)
            .filter(|record| record.verifier.is_some_and(|verifier| credential.verifies(&verifier)))
            .map(|record| (String::from_utf8_lossy(&record.client).into_owned(), record.verifier));
        match known {
            Some((client, verifier)) if !self.sessions.is_live(session) => {
                self.sessions.activate(session, client, verifier);
                true
            }
            _ => false,
        }
    }

    pub async fn close_session(&self, session: SessionId) -> NsResult<()> {
        // Journal the close first: once it applied, no heartbeat can resume the session
        // (resume_session looks it up in the namespace); then stop its lease.
        let closed = self.mutate(0, |_| Ok(Event::SessionClose { session }), |_, _| ()).await;
        self.sessions.remove(session);
        self.unsafe_blocks.lock().expect("unsafe block lock poisoned").remove(&session);
        self.reconnect.reconnected(session);
        closed
    }

    pub async fn expire_session(&self, session: SessionId) {
        metrics::counter!(metrics_names::SESSIONS_EXPIRED_TOTAL).increment(1);
        // Boxed: closing is itself a mutation, whose invalidations could expire sessions.
        if let Err(error) = Box::pin(self.close_session(session)).await {
            if error != NsError::NotFound {
                tracing::warn!(session, %error, "closing an expired session failed");
            }
        }
    }

    fn authors(&self) -> std::sync::MutexGuard<'_, Authors> {
        self.authors.lock().expect("authors lock poisoned")
    }

    /// `origin` appended journal events up to `seq` (call under the namespace write lock).
    fn appended(&self, seq: Seq, origin: SessionId) {
        self.authors().record(seq, origin);
    }

    /// `origin` learns (and may cache) what its change touched: the inodes and the
    /// directories whose entries changed.
    fn note_touched(&self, origin: SessionId, touched: &cudele_namespace::Touched) {
        let directories = touched.dentries().map(|(parent, _)| *parent);
        self.sessions.note_interest(origin, touched.inodes().chain(directories));
    }

    /// Inodes a read reveals beyond the one it names (a lookup's child, a listing's
    /// entries): call from inside the read closure, under the namespace lock.
    pub fn note_interest(&self, origin: SessionId, inodes: impl IntoIterator<Item = Ino>) {
        self.sessions.note_interest(origin, inodes);
    }

    /// Return once every event appended so far is durable (fsync).
    pub async fn wait_all_durable(&self) -> NsResult<()> {
        self.journal.wait_durable(self.journal.last_assigned()).await.map_err(NsError::Io)
    }

    pub fn inode_count(&self) -> u64 {
        self.namespace.read().expect("namespace lock poisoned").inode_count()
    }

    pub fn applied_seq(&self) -> Seq {
        self.progress.applied_seq.load(Ordering::Relaxed)
    }
}

/// The inode a create-like event makes (the root for other events).
pub fn created_ino(event: &Event) -> Ino {
    match event {
        Event::Create { ino, .. } | Event::Mkdir { ino, .. } | Event::Symlink { ino, .. } | Event::Link { ino, .. } => {
            *ino
        }
        _ => cudele_journal::ROOT_INO,
    }
}

/// The trust checks of a merge into the subtree at `subtree`, run over the whole journal
/// before any of it applies, so that a merge breaking one is refused whole: no event of a
/// kind only the MDS journals; creates only of inode numbers handed to the subtree's owner
/// (its decoupling's range or ranges it allocated since); and, under `interfere_policy:
/// block` — nobody else changed the subtree, so nothing the owner touched can have left it —
/// no reference to an existing inode outside the subtree. (Under `allow` such an event is
/// skipped, as other clients may have moved things out; it never edits anything outside.)
fn check_merge(
    namespace: &Namespace,
    subtree: Ino,
    owner: Option<SessionId>,
    records: &[cudele_journal::Record],
) -> NsResult<()> {
    let decoupling = namespace.record(subtree)?.decoupling.as_ref();
    let session = owner.and_then(|owner| namespace.session(owner));
    let handed_out = |ino: Ino| {
        decoupling.is_some_and(|decoupling| decoupling.range.contains(ino))
            || session.is_some_and(|session| session.owns_ino(ino))
    };
    let outside_refused = decoupling.is_some_and(|decoupling| policy_blocks(&decoupling.policy));
    for record in records {
        let refuse =
            |why: String| Err(NsError::Refused(format!("event {} ({}): {why}", record.seq, record.event.kind_name())));
        match &record.event {
            Event::Create { ino, .. } | Event::Mkdir { ino, .. } | Event::Symlink { ino, .. } => {
                if owner.is_some() && !handed_out(*ino) {
                    return refuse(format!("inode {ino} was not handed to the subtree's owner"));
                }
            }
            Event::Decouple { .. }
            | Event::Recouple { .. }
            | Event::SetPolicy { .. }
            | Event::AllocateInodes { .. }
            | Event::SessionOpen { .. }
            | Event::SessionOpenVerified { .. }
            | Event::SessionClose { .. }
            | Event::Merged { .. } => return refuse("a client journal may not hold this kind of event".into()),
            Event::Link { .. }
            | Event::Unlink { .. }
            | Event::Rmdir { .. }
            | Event::Rename { .. }
            | Event::SetAttr { .. }
            | Event::SetXattr { .. }
            | Event::RemoveXattr { .. }
            | Event::SetLayout { .. } => {}
        }
        if outside_refused {
            for referenced in referenced_inodes(&record.event) {
                if !handed_out(referenced)
                    && namespace.record(referenced).is_ok()
                    && !namespace.inode_inside(subtree, referenced)
                {
                    return refuse(format!("inode {referenced} is outside the decoupled subtree"));
                }
            }
        }
    }
    Ok(())
}

/// The existing inodes an event names (parents and targets; not the one a create makes).
fn referenced_inodes(event: &Event) -> Vec<Ino> {
    match event {
        Event::Create { parent, .. }
        | Event::Mkdir { parent, .. }
        | Event::Symlink { parent, .. }
        | Event::Unlink { parent, .. }
        | Event::Rmdir { parent, .. } => vec![*parent],
        Event::Link { ino, parent, .. } => vec![*ino, *parent],
        Event::Rename { source_parent, target_parent, .. } => vec![*source_parent, *target_parent],
        Event::SetAttr { ino, .. }
        | Event::SetXattr { ino, .. }
        | Event::RemoveXattr { ino, .. }
        | Event::SetLayout { ino, .. }
        | Event::Decouple { ino, .. }
        | Event::Recouple { ino }
        | Event::SetPolicy { ino, .. }
        | Event::Merged { ino, .. } => vec![*ino],
        Event::AllocateInodes { .. }
        | Event::SessionOpen { .. }
        | Event::SessionOpenVerified { .. }
        | Event::SessionClose { .. } => Vec::new(),
    }
}

/// The trust checks of a replay (see [`Mds::replay`]): only creates, only of inode numbers
/// reserved for `origin`, no more records than a session may hold unsafe.
fn check_replay(namespace: &Namespace, origin: SessionId, records: &[cudele_journal::Record]) -> NsResult<()> {
    let Some(session) = namespace.session(origin) else {
        return Err(NsError::Refused(format!("session {origin} is not known to the namespace")));
    };
    if records.len() as u64 > UNSAFE_EVENTS_MAX {
        return Err(NsError::Refused(format!(
            "{} records: a session never holds more than {UNSAFE_EVENTS_MAX} unsafe ones",
            records.len()
        )));
    }
    for record in records {
        let ino = match &record.event {
            Event::Create { ino, .. } | Event::Mkdir { ino, .. } | Event::Symlink { ino, .. } => *ino,
            other => {
                return Err(NsError::Refused(format!(
                    "record {} ({}): only creates, mkdirs and symlinks are ever answered early",
                    record.seq,
                    other.kind_name()
                )))
            }
        };
        if !session.owns_ino(ino) {
            return Err(NsError::Refused(format!(
                "record {} ({}): inode {ino} was not reserved for session {origin}",
                record.seq,
                record.event.kind_name()
            )));
        }
    }
    Ok(())
}

/// Inside a subtree decoupled with `interfere_policy: block`, every other session's
/// operation fails with EBUSY; parents stay usable. (Reads are refused by the service layer.)
/// A rename is checked on both parents and on what it moves or replaces: a blocking
/// decoupled root, or a directory holding one, moves only with its owner.
pub fn check_interference(namespace: &Namespace, origin: SessionId, event: &Event) -> NsResult<()> {
    if let Event::Rename { source_parent, source_name, target_parent, target_name, .. } = event {
        for (parent, name) in [(source_parent, source_name), (target_parent, target_name)] {
            if let Some(child) = namespace.child_of(*parent, name) {
                check_access(namespace, origin, child)?;
                check_holds_no_blocked_subtree(namespace, origin, child)?;
            }
        }
    }
    let inodes: Vec<Ino> = match event {
        Event::Create { parent, .. }
        | Event::Mkdir { parent, .. }
        | Event::Symlink { parent, .. }
        | Event::Unlink { parent, .. }
        | Event::Rmdir { parent, .. } => vec![*parent],
        Event::Link { ino, parent, .. } => vec![*ino, *parent],
        Event::Rename { source_parent, target_parent, .. } => vec![*source_parent, *target_parent],
        Event::SetAttr { ino, .. }
        | Event::SetXattr { ino, .. }
        | Event::RemoveXattr { ino, .. }
        | Event::SetLayout { ino, .. } => vec![*ino],
        _ => Vec::new(),
    };
    for ino in inodes {
        check_access(namespace, origin, ino)?;
    }
    Ok(())
}

/// EBUSY if directory `ino` holds a subtree another session decoupled with
/// `interfere_policy: block` (renaming it would move their files).
fn check_holds_no_blocked_subtree(namespace: &Namespace, origin: SessionId, ino: Ino) -> NsResult<()> {
    if !namespace.record(ino).is_ok_and(|record| record.is_directory()) {
        return Ok(());
    }
    for (root, decoupling) in namespace.decoupled_roots() {
        if decoupling.owner != origin && policy_blocks(&decoupling.policy) && namespace.is_ancestor_of(ino, root) {
            return Err(NsError::Busy("the directory holds a subtree decoupled by another client"));
        }
    }
    Ok(())
}

/// EBUSY if `ino` lies in a subtree another session decoupled with `interfere_policy: block`.
pub fn check_access(namespace: &Namespace, origin: SessionId, ino: Ino) -> NsResult<()> {
    let Ok(record) = namespace.record(ino) else { return Ok(()) };
    let directory = if record.is_directory() { ino } else { record.parent };
    if let Some((_, decoupling)) = namespace.decoupled_ancestor(directory) {
        if decoupling.owner != origin && policy_blocks(&decoupling.policy) {
            return Err(NsError::Busy("the subtree is decoupled by another client (interfere_policy: block)"));
        }
    }
    Ok(())
}

/// Whether a policies.yml text asks to block other clients. It was validated when the
/// subtree was decoupled; text that no longer parses blocks, the safe side.
fn policy_blocks(policy: &[u8]) -> bool {
    match std::str::from_utf8(policy).ok().and_then(|text| cudele_policy::Policy::parse(text, "policies.yml").ok()) {
        Some(policy) => policy.interfere() == cudele_policy::Interference::Block,
        None => true,
    }
}

/// What a merge did, for the reply and `cudele status`.
#[derive(Debug, Default)]
pub struct MergeSummary {
    pub applied: u64,
    pub skipped: u64,
    pub already_merged: u64,
    pub merged_seq: Seq,
    pub skip_reasons: Vec<String>,
}

/// Skip reasons reported per merge (the count is always exact).
const MERGE_SKIP_REASONS_REPORTED_MAX: usize = 16;

impl Mds {
    /// Decouple directory `ino` for `origin` under `policy_text`: journal the decoupling with a
    /// fresh inode range, and return the range with a snapshot of the subtree.
    pub async fn decouple(
        &self,
        origin: SessionId,
        ino: Ino,
        policy_text: Vec<u8>,
    ) -> NsResult<(cudele_journal::InodeRange, Vec<cudele_namespace::StoreOp>)> {
        if origin == 0 {
            return Err(NsError::InvalidArgument("decoupling needs a session"));
        }
        let text = std::str::from_utf8(&policy_text).map_err(|_| NsError::InvalidArgument("policy is not UTF-8"))?;
        let policy = cudele_policy::Policy::parse(text, "policies.yml").map_err(|error| {
            tracing::info!(%error, "decouple refused: bad policy");
            NsError::InvalidArgument("invalid policies.yml (see the client's message)")
        })?;
        if !policy.is_decoupled() {
            return Err(NsError::InvalidArgument("the policy's consistency is strong: nothing to decouple"));
        }
        if ino == cudele_journal::ROOT_INO {
            return Err(NsError::Refused("the root cannot be decoupled: it would lock out every other client".into()));
        }
        let count = policy.allocated_inodes();
        let blocks = policy.interfere() == cudele_policy::Interference::Block;
        let (range, ops, (inodes, entries)) = self
            .mutate(
                origin,
                |namespace| {
                    // No overlap with any decoupled subtree: not inside one (apply checks
                    // that) and not above one, whose files would change hands.
                    if namespace.decoupled_roots().any(|(root, _)| root != ino && namespace.is_ancestor_of(ino, root)) {
                        return Err(NsError::Busy("a subtree below is decoupled already"));
                    }
                    Ok(Event::Decouple { ino, owner: origin, range: namespace.peek_range(count), policy: policy_text })
                },
                |namespace, event| match event {
                    Event::Decouple { range, .. } => namespace.subtree_ops(ino).map(|ops| {
                        let cached = if blocks { subtree_cache_keys(namespace, ino) } else { Default::default() };
                        (*range, ops, cached)
                    }),
                    _ => Err(NsError::Io("built a Decouple event".into())),
                },
            )
            .await??;
        // Under block, other mounts must stop answering from what they cached below the
        // directory (they would serve stat and read without asking, hence without EBUSY):
        // drop it there before the decoupling client gets its reply and starts working.
        // In batches, so a large subtree does not make one oversized push message.
        let mut inodes = inodes.into_iter().peekable();
        let mut entries = entries.into_iter().peekable();
        while inodes.peek().is_some() || entries.peek().is_some() {
            let inode_batch: Vec<Ino> = inodes.by_ref().take(INVALIDATION_BATCH_MAX).collect();
            let entry_batch: Vec<(Ino, Vec<u8>)> = entries.by_ref().take(INVALIDATION_BATCH_MAX).collect();
            for session in self.sessions.invalidate(origin, inode_batch, entry_batch, true).await {
                self.expire_session(session).await;
            }
        }
        Ok((range, ops))
    }

    /// Replay a client journal into the decoupled subtree at `ino` (decoupled wins), journal
    /// the result as one atomic group ending with a `Merged` marker, and optionally recouple.
    /// An operator may also apply a journal to a directory recoupled since (an invisible
    /// subtree's, which recouples unmerged): same rules, but with no merge position kept,
    /// re-applying skips the creates and repeats attribute changes.
    pub async fn merge(
        &self,
        origin: SessionId,
        ino: Ino,
        records: Vec<cudele_journal::Record>,
        recouple: bool,
        operator: bool,
    ) -> NsResult<MergeSummary> {
        let started = Instant::now();
        let (seq, touched, summary, replica_plan) = {
            let mut namespace = self.namespace.write().expect("namespace lock poisoned");
            let record = namespace.record(ino)?;
            let owner = match record.decoupling.as_ref() {
                Some(decoupling) => Some(decoupling.owner),
                // An operator applying a journal whose subtree was recoupled since: invisible
                // subtrees recouple without merging (at `cudele recouple` or unmount), and
                // `cudele journal apply` lands their persisted journal later. Same rules, but
                // no decoupling holds a merge position: replay from the journal's start.
                None if operator && record.is_directory() => None,
                None if operator => return Err(NsError::NotDirectory),
                None => return Err(NsError::InvalidArgument("the directory is not decoupled")),
            };
            if owner.is_some_and(|owner| owner != origin) && !operator {
                return Err(NsError::Busy("the subtree is decoupled by another client"));
            }
            check_merge(&namespace, ino, owner, &records)?;
            let position = match owner {
                Some(owner) => namespace.merge_position(ino, owner)?,
                None => records.first().map_or(0, |record| record.seq.saturating_sub(1)),
            };
            let mut summary = MergeSummary { merged_seq: position, ..Default::default() };
            let mut expected = summary.merged_seq + 1;
            let mut group = Vec::new();
            let mut touched = cudele_namespace::Touched::default();
            let mut marker_touched = cudele_namespace::Touched::default();
            for record in &records {
                if record.seq < expected {
                    summary.already_merged += 1;
                    continue;
                }
                if record.seq != expected {
                    // Nothing applied yet for this journal would be consistent with a gap.
                    if group.is_empty() {
                        return Err(NsError::InvalidArgument("client journal gap: events are missing"));
                    }
                    break;
                }
                expected += 1;
                if let Err(error) = cudele_namespace::validate_event(&record.event) {
                    summary.skipped += 1;
                    push_reason(&mut summary, record, &error.to_string());
                    continue;
                }
                match namespace.merge_event(ino, &record.event) {
                    cudele_namespace::MergeStep::Applied(applied) => {
                        summary.applied += 1;
                        for (event, event_touched) in applied {
                            group.push(event);
                            touched.extend(&event_touched);
                        }
                    }
                    cudele_namespace::MergeStep::Skipped(reason) => {
                        summary.skipped += 1;
                        push_reason(&mut summary, record, reason);
                    }
                }
            }
            let through_seq = expected - 1;
            if through_seq > summary.merged_seq {
                if let Some(owner) = owner {
                    let marker = Event::Merged { ino, owner, through_seq };
                    marker_touched = namespace.apply(&marker)?;
                    group.push(marker);
                }
                summary.merged_seq = through_seq;
            }
            // A subtree recoupled already has nothing to recouple.
            if recouple && owner.is_some() {
                let event = Event::Recouple { ino };
                let recouple_touched = namespace.apply(&event)?;
                group.push(event);
                touched.extend(&recouple_touched);
            }
            self.note_touched(origin, &touched);
            let replica_plan = self.replicas.plan(&namespace, &touched, group.iter());
            let group = with_group_store_ops(&namespace, group, &[&touched, &marker_touched]);
            let seq = self.journal.append_group(group);
            self.appended(seq, origin);
            (seq, touched, summary, replica_plan)
        };
        let applied_ms = started.elapsed().as_secs_f64() * 1e3;
        self.journal.wait_durable(seq).await.map_err(NsError::Io)?;
        let durable_ms = started.elapsed().as_secs_f64() * 1e3;
        self.finish(origin, None, touched, replica_plan).await?;
        tracing::debug!(applied_ms, durable_ms, total_ms = started.elapsed().as_secs_f64() * 1e3, "merge phases");
        Ok(summary)
    }
}

/// The events of one atomic group with their store changes: computed once for everything
/// the group touched and carried by its last event (a group is durable, and flushed to the
/// metadata store, whole), instead of once per event — a merge of 100,000 creates in one
/// directory would otherwise encode the directory's inode 100,000 times.
fn with_group_store_ops(
    namespace: &Namespace,
    events: Vec<Event>,
    touched: &[&cudele_namespace::Touched],
) -> Vec<(Event, Vec<cudele_namespace::StoreOp>)> {
    let count = events.len();
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let changes = if index + 1 == count {
                touched.iter().flat_map(|touched| namespace.store_ops(touched)).collect()
            } else {
                Vec::new()
            };
            (event, changes)
        })
        .collect()
}

/// Inodes (and, separately, directory entries) per invalidation sent when a blocking
/// subtree is decoupled: keeps each push message far below gRPC's 4 MiB default.
const INVALIDATION_BATCH_MAX: usize = 8192;

/// Every inode and directory entry below directory `root`: what a client may have cached
/// inside a subtree.
fn subtree_cache_keys(namespace: &Namespace, root: Ino) -> (Vec<Ino>, Vec<(Ino, Vec<u8>)>) {
    let mut inodes = vec![root];
    let mut entries = Vec::new();
    let mut directories = vec![root];
    while let Some(directory) = directories.pop() {
        for entry in namespace.readdir(directory, None, usize::MAX).unwrap_or_default() {
            inodes.push(entry.ino);
            if entry.kind == cudele_journal::FileKind::Directory {
                directories.push(entry.ino);
            }
            entries.push((directory, entry.name));
        }
    }
    (inodes, entries)
}

fn push_reason(summary: &mut MergeSummary, record: &cudele_journal::Record, reason: &str) {
    if summary.skip_reasons.len() < MERGE_SKIP_REASONS_REPORTED_MAX {
        summary.skip_reasons.push(format!("event {} ({}): {reason}", record.seq, record.event.kind_name()));
    }
}

#[cfg(test)]
mod authors_tests {
    use super::Authors;

    #[test]
    fn a_reader_waits_for_everyone_else_s_latest_event_only() {
        let mut authors = Authors::default();
        authors.record(1, 7);
        authors.record(2, 7);
        assert_eq!(authors.last_not_by(7), 0, "only 7's own events");
        assert_eq!(authors.last_not_by(8), 2);
        authors.record(3, 8);
        assert_eq!(authors.last_not_by(7), 3);
        assert_eq!(authors.last_not_by(8), 2);
        authors.record(5, 8); // a group 4..=5
        assert_eq!(authors.last_not_by(8), 2);
        authors.record(6, 0);
        assert_eq!(authors.last_not_by(0), 6, "session 0 waits for everything");
        assert_eq!(authors.last_not_by(8), 6);
    }
}
