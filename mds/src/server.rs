//! The MDS core: the namespace behind one lock, the journal, sessions and the pipeline every
//! request follows. Mutations: build an event, apply it (validation included), append it to
//! the journal — all under the write lock, so journal order is apply order — then, without
//! the lock, wait until the event is durable and other clients invalidated their caches.
//! Reads wait until everything they observed is durable, so nobody sees state a crash could
//! take back.

use crate::journal_writer::JournalWriter;
use crate::metrics_names;
use crate::persist::PersistProgress;
use crate::sessions::Sessions;
use cudele_journal::{Event, Ino, Seq, SessionId};
use cudele_namespace::{Namespace, NsError, NsResult};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub struct Mds {
    namespace: RwLock<Namespace>,
    pub journal: Arc<JournalWriter>,
    pub sessions: Sessions,
    pub progress: Arc<PersistProgress>,
    pub object_store_url: String,
    pub started: Instant,
    operations: Mutex<BTreeMap<&'static str, u64>>,
}

impl Mds {
    pub fn new(
        namespace: Namespace,
        journal: Arc<JournalWriter>,
        sessions: Sessions,
        progress: Arc<PersistProgress>,
        object_store_url: String,
    ) -> Self {
        // Sessions known from before a restart get a fresh lease so their mounts can resume.
        for session in namespace.sessions() {
            sessions.activate(session.session, String::from_utf8_lossy(&session.client).into_owned());
        }
        Mds {
            namespace: RwLock::new(namespace),
            journal,
            sessions,
            progress,
            object_store_url,
            started: Instant::now(),
            operations: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn count_operation(&self, operation: &'static str) {
        *self.operations.lock().expect("operations lock poisoned").entry(operation).or_default() += 1;
    }

    pub fn operation_counts(&self) -> BTreeMap<&'static str, u64> {
        self.operations.lock().expect("operations lock poisoned").clone()
    }

    /// Run `read` on the namespace; return once everything it could have seen is durable.
    pub async fn read<R>(&self, read: impl FnOnce(&Namespace) -> NsResult<R>) -> NsResult<R> {
        let (result, observed) = {
            let namespace = self.namespace.read().expect("namespace lock poisoned");
            (read(&namespace), self.journal.last_assigned())
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
        let (seq, touched, result) = {
            let mut namespace = self.namespace.write().expect("namespace lock poisoned");
            let event = build(&namespace)?;
            cudele_namespace::validate_event(&event)?;
            let touched = namespace.apply(&event)?;
            let result = reply(&namespace, &event);
            let changes = namespace.store_ops(&touched);
            let seq = self.journal.append(event, changes);
            (seq, touched, result)
        };
        metrics::gauge!(metrics_names::INODES).set(self.inode_count() as f64);
        self.journal.wait_durable(seq).await.map_err(NsError::Io)?;
        let inodes: Vec<Ino> = touched.inodes().collect();
        let entries: Vec<(Ino, Vec<u8>)> = touched.dentries().cloned().collect();
        let unresponsive = self.sessions.invalidate(origin, inodes, entries).await;
        for session in unresponsive {
            tracing::warn!(session, "session did not acknowledge an invalidation in time; expiring it");
            self.expire_session(session).await;
        }
        Ok(result)
    }

    pub async fn open_session(&self, client: String) -> NsResult<SessionId> {
        let client_bytes = client.clone().into_bytes();
        let session = self
            .mutate(
                0,
                |namespace| {
                    Ok(Event::SessionOpen {
                        session: namespace.next_session_id(),
                        client: client_bytes,
                        time: cudele_journal::Timestamp::now(),
                    })
                },
                |_, event| match event {
                    Event::SessionOpen { session, .. } => *session,
                    _ => unreachable!("built a SessionOpen event"),
                },
            )
            .await?;
        self.sessions.activate(session, client);
        Ok(session)
    }

    /// Resume a session known to the namespace (a client reconnecting after an MDS restart).
    pub fn resume_session(&self, session: SessionId) -> bool {
        if self.sessions.renew(session) {
            return true;
        }
        let known = self
            .namespace
            .read()
            .expect("namespace lock poisoned")
            .sessions()
            .find(|record| record.session == session)
            .map(|record| String::from_utf8_lossy(&record.client).into_owned());
        match known {
            Some(client) => {
                self.sessions.activate(session, client);
                true
            }
            None => false,
        }
    }

    pub async fn close_session(&self, session: SessionId) -> NsResult<()> {
        self.sessions.remove(session);
        let known =
            self.namespace.read().expect("namespace lock poisoned").sessions().any(|record| record.session == session);
        if !known {
            return Err(NsError::NotFound);
        }
        self.mutate(0, |_| Ok(Event::SessionClose { session }), |_, _| ()).await
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

    pub fn inode_count(&self) -> u64 {
        self.namespace.read().expect("namespace lock poisoned").inode_count()
    }

    pub fn applied_seq(&self) -> Seq {
        self.progress.applied_seq.load(Ordering::Relaxed)
    }
}
