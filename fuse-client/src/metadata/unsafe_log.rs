//! Records of creates the MDS acknowledged before they were durable ("unsafe" early
//! replies, as CephFS's), kept until a reply shows them durable and replayed if the MDS
//! restarted first (see `cudele_proto::early` and docs/DURABILITY.md).
//!
//! Incarnations are the MDS's start times, so a later one is larger: progress reported by
//! an older incarnation (a reply that was in flight across a restart) never moves us back.

use cudele_journal::Seq;
use cudele_proto::early::ReplyProgress;
use std::collections::BTreeMap;

/// A record awaiting durability: (MDS incarnation, seq) and its encoding.
pub type UnsafeRecord = ((u64, Seq), Vec<u8>);

#[derive(Debug, Default)]
pub struct UnsafeLog {
    /// The newest MDS incarnation seen.
    incarnation: u64,
    /// (incarnation, seq) -> encoded record.
    records: BTreeMap<(u64, Seq), Vec<u8>>,
    /// We saw the MDS restart and have not told it we reconnected (a `Replay`, empty if
    /// there is nothing to replay): it holds operations until every session it knew has.
    reconnect_due: bool,
}

impl UnsafeLog {
    /// Take in what a reply says. Returns true if records an older incarnation
    /// acknowledged are waiting to be replayed.
    pub fn observe(&mut self, progress: &ReplyProgress) -> bool {
        if let Some((seq, record)) = &progress.unsafe_record {
            self.records.insert((progress.incarnation, *seq), record.clone());
        }
        if progress.incarnation >= self.incarnation {
            if self.incarnation != 0 && progress.incarnation > self.incarnation {
                self.reconnect_due = true;
            }
            self.incarnation = progress.incarnation;
            let durable = progress.durable_seq;
            let incarnation = self.incarnation;
            // Durable in this incarnation: safe. (split_off keeps the map ordered.)
            let mut later = self.records.split_off(&(incarnation, durable + 1));
            self.records.retain(|(record_incarnation, _), _| *record_incarnation != incarnation);
            self.records.append(&mut later);
        }
        self.needs_replay()
    }

    /// A `Replay` is due: records an older incarnation acknowledged wait, or the MDS
    /// restarted and does not know yet that we reconnected.
    pub fn needs_replay(&self) -> bool {
        self.reconnect_due || self.records.keys().next().is_some_and(|(incarnation, _)| *incarnation < self.incarnation)
    }

    /// Remove and return, oldest first, the records older incarnations acknowledged.
    /// The records to replay, if a `Replay` is due (it may carry none: it also reports our
    /// reconnection). None: nothing is due (another thread replayed meanwhile).
    pub fn take_replay(&mut self) -> Option<Vec<UnsafeRecord>> {
        if !self.needs_replay() {
            return None;
        }
        self.reconnect_due = false;
        let newer = self.records.split_off(&(self.incarnation, 0));
        let older = std::mem::replace(&mut self.records, newer);
        Some(older.into_iter().collect())
    }

    /// Put back records whose replay failed (to be tried again).
    pub fn restore(&mut self, records: Vec<UnsafeRecord>) {
        self.reconnect_due = true;
        self.records.extend(records);
    }

    /// Records not yet known durable.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(incarnation: u64, durable_seq: u64, unsafe_seq: Option<u64>) -> ReplyProgress {
        ReplyProgress {
            incarnation,
            durable_seq,
            unsafe_record: unsafe_seq.map(|seq| (seq, format!("record {seq}").into_bytes())),
        }
    }

    #[test]
    fn records_are_dropped_once_durable_in_the_same_incarnation() {
        let mut log = UnsafeLog::default();
        assert!(!log.observe(&reply(10, 4, Some(5))));
        assert!(!log.observe(&reply(10, 5, Some(6))));
        assert_eq!(log.len(), 1, "seq 5 is durable, 6 is not");
        assert!(!log.observe(&reply(10, 9, None)));
        assert!(log.is_empty());
    }

    #[test]
    fn a_restart_before_durability_asks_for_replay_in_order() {
        let mut log = UnsafeLog::default();
        log.observe(&reply(10, 4, Some(5)));
        log.observe(&reply(10, 4, Some(6)));
        // The MDS restarted having kept only up to 5: positions of the new incarnation say
        // nothing about the old one's records.
        assert!(log.observe(&reply(20, 5, None)));
        let replay = log.take_replay().expect("due");
        assert_eq!(replay.iter().map(|(key, _)| *key).collect::<Vec<_>>(), vec![(10, 5), (10, 6)]);
        assert!(!log.needs_replay());
        log.restore(replay);
        assert!(log.needs_replay(), "a failed replay is tried again");
    }

    #[test]
    fn a_late_reply_from_an_older_incarnation_is_replayed_not_trusted() {
        let mut log = UnsafeLog::default();
        log.observe(&reply(20, 3, None));
        assert!(log.observe(&reply(10, 100, Some(7))), "its durable position means nothing now");
        assert_eq!(log.take_replay().expect("due").len(), 1);
        assert!(!log.observe(&reply(20, 4, Some(4))));
        assert!(log.is_empty());
    }

    #[test]
    fn a_restart_with_nothing_to_replay_still_asks_for_one_empty_replay() {
        let mut log = UnsafeLog::default();
        assert!(!log.observe(&reply(10, 4, None)), "the first incarnation seen is no restart");
        assert!(log.take_replay().is_none());
        assert!(log.observe(&reply(20, 0, None)), "a restart: report the reconnection");
        assert_eq!(log.take_replay(), Some(Vec::new()));
        assert!(log.take_replay().is_none(), "once");
        assert!(!log.observe(&reply(20, 1, None)));
        log.restore(Vec::new());
        assert!(log.needs_replay(), "a failed empty replay is sent again");
    }
}
