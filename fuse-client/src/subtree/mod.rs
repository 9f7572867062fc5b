//! Decoupled subtrees on the client: the local view, its client journal, and the router that
//! makes them one more `Metadata` implementation.

pub mod control;
pub mod journal;
pub mod router;
pub mod view;

pub use control::RemoteControl;
pub use journal::{client_journal_file, client_journal_object, ClientJournal, CLIENT_JOURNAL_PREFIX};
pub use router::{MergeOutcome, MergeSource, SubtreeControl, SubtreeRouter, SubtreeStatus};
pub use view::DecoupledSubtree;
