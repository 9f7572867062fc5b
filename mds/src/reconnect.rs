//! The reconnect phase after a restart (CephFS's `up:reconnect`).
//!
//! A mount may hold creates this MDS acknowledged early and lost when it stopped before
//! they were durable (docs/DURABILITY.md); it replays them when it sees the new incarnation.
//! Until it has, another client could take one of those names, or list a directory without
//! them. So a restarted MDS holds every namespace operation until each session it knew
//! before the restart has reconnected — sent a `Replay` (empty if it had nothing to
//! replay), closed, or expired — or until the reconnect timeout. Session management,
//! heartbeats, the invalidation stream, `Replay` itself and status are never held.

use cudele_journal::SessionId;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Default for how long the phase may last: a dead client's session expires after one
/// lease anyway (CephFS waits 45 s).
pub const RECONNECT_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// Operations never held: they manage sessions, replay, or only describe the server.
const NEVER_HELD: &[&str] = &["open_session", "close_session", "replay", "status", "dump"];

/// See the module documentation.
pub struct Reconnect {
    waiting_for: Mutex<BTreeSet<SessionId>>,
    /// Sessions known before the restart that have not replayed (or closed) yet: each may
    /// replay once, also after the phase timed out or when it is off (a replay is still
    /// checked against the session's own inode reservations).
    may_replay: Mutex<BTreeSet<SessionId>>,
    done: watch::Sender<bool>,
    replayed_records: std::sync::atomic::AtomicU64,
}

impl Reconnect {
    /// A phase that waits for `sessions` (those known before the restart); over at once
    /// when there are none.
    pub fn new(sessions: impl IntoIterator<Item = SessionId>) -> Self {
        let waiting_for: BTreeSet<SessionId> = sessions.into_iter().collect();
        let (done, _) = watch::channel(waiting_for.is_empty());
        if !waiting_for.is_empty() {
            tracing::info!(
                sessions = waiting_for.len(),
                "reconnect phase: waiting for the sessions known before the restart"
            );
        }
        Reconnect {
            may_replay: Mutex::new(waiting_for.clone()),
            waiting_for: Mutex::new(waiting_for),
            done,
            replayed_records: Default::default(),
        }
    }

    /// `session` reconnected (replayed), closed or expired.
    pub fn reconnected(&self, session: SessionId) {
        self.may_replay.lock().expect("reconnect lock poisoned").remove(&session);
        let mut waiting_for = self.waiting_for.lock().expect("reconnect lock poisoned");
        if waiting_for.remove(&session) && waiting_for.is_empty() {
            tracing::info!("reconnect phase over: every session reconnected");
            self.done.send_replace(true);
        }
    }

    /// The timeout: whoever has not reconnected by now loses what it would have replayed.
    pub fn end(&self) {
        let mut waiting_for = self.waiting_for.lock().expect("reconnect lock poisoned");
        if !waiting_for.is_empty() {
            tracing::warn!(sessions = ?*waiting_for, "reconnect phase timed out; these sessions did not reconnect");
            waiting_for.clear();
        }
        self.done.send_replace(true);
    }

    /// End the phase after `timeout` (spawn this once, on the MDS runtime).
    pub async fn end_after(self: std::sync::Arc<Self>, timeout: Duration) {
        let mut done = self.done.subscribe();
        if tokio::time::timeout(timeout, done.wait_for(|done| *done)).await.is_err() {
            self.end();
        }
    }

    /// Whether `session` may replay now: known before the restart, not replayed yet.
    pub fn awaits(&self, session: SessionId) -> bool {
        self.may_replay.lock().expect("reconnect lock poisoned").contains(&session)
    }

    /// Sessions not yet reconnected.
    pub fn pending(&self) -> usize {
        self.waiting_for.lock().expect("reconnect lock poisoned").len()
    }

    /// Count records a `Replay` re-applied.
    pub fn replayed(&self, records: u64) {
        self.replayed_records.fetch_add(records, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records re-applied from replays since start.
    pub fn replayed_records(&self) -> u64 {
        self.replayed_records.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Return once `operation` may run.
    pub async fn admit(&self, operation: &str) {
        // Every operation passes here: the usual case (no phase) reads one flag.
        if *self.done.borrow() || NEVER_HELD.contains(&operation) {
            return;
        }
        let mut done = self.done.subscribe();
        // The sender lives as long as self, so wait_for cannot fail while we are borrowed.
        let _ = done.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn operations_wait_until_every_known_session_reconnected() {
        let reconnect = Arc::new(Reconnect::new([3, 5]));
        reconnect.admit("replay").await; // never held
        let held = tokio::spawn({
            let reconnect = reconnect.clone();
            async move { reconnect.admit("create").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished(), "held while sessions 3 and 5 are out");
        reconnect.reconnected(3);
        reconnect.reconnected(42); // unknown: no effect
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished(), "5 is still out");
        assert_eq!(reconnect.pending(), 1);
        reconnect.reconnected(5);
        tokio::time::timeout(Duration::from_secs(5), held).await.expect("released").expect("task");
    }

    #[tokio::test]
    async fn the_timeout_ends_the_phase_and_no_sessions_means_no_phase() {
        Reconnect::new([]).admit("create").await;
        let reconnect = Arc::new(Reconnect::new([7]));
        tokio::spawn(reconnect.clone().end_after(Duration::from_millis(30)));
        tokio::time::timeout(Duration::from_secs(5), reconnect.admit("lookup")).await.expect("the timeout released it");
        assert_eq!(reconnect.pending(), 0);
    }
}
