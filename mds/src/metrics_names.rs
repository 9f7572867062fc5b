//! Every metric name the MDS exports, in one place (Prometheus naming: unit last).

pub const OPERATIONS_TOTAL: &str = "cudele_mds_operations_total";
pub const OPERATION_ERRORS_TOTAL: &str = "cudele_mds_operation_errors_total";
/// Replies sent before their event was durable (the client keeps the record for replay).
pub const EARLY_REPLIES_TOTAL: &str = "cudele_mds_early_replies_total";
pub const OPERATION_SECONDS: &str = "cudele_mds_operation_seconds";
pub const JOURNAL_BYTES_TOTAL: &str = "cudele_mds_journal_bytes_total";
pub const JOURNAL_EVENTS_TOTAL: &str = "cudele_mds_journal_events_total";
pub const JOURNAL_SEGMENTS_TOTAL: &str = "cudele_mds_journal_segments_total";
pub const JOURNAL_BATCH_EVENTS: &str = "cudele_mds_journal_batch_events";
pub const SEGMENTS_PENDING: &str = "cudele_mds_journal_segments_pending";
pub const STORE_APPLIED_SEQ: &str = "cudele_mds_store_applied_seq";
pub const SNAPSHOT_SEQ: &str = "cudele_mds_snapshot_seq";
pub const SESSIONS: &str = "cudele_mds_sessions";
pub const INODES: &str = "cudele_mds_inodes";
pub const INVALIDATIONS_TOTAL: &str = "cudele_mds_invalidations_total";
pub const SESSIONS_EXPIRED_TOTAL: &str = "cudele_mds_sessions_expired_total";
