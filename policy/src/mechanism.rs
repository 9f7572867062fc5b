//! The seven Cudele mechanisms (paper Table 1), their names and the spellings a policies file may use.

use std::fmt;

/// A Cudele mechanism: a building block that policies compose (paper §3.1, Table 1).
///
/// The variants are declared in the order of Table 1, so a `BTreeSet<Mechanism>` iterates in it.
///
/// The paper's Table 1 swaps the one-line descriptions of the two applies; the text of §3.1.1 and
/// §5.1 (and DESIGN §5) is unambiguous, and the docs below follow the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    /// Client → MDS: one round-trip remote procedure call per metadata operation, applied by the MDS at
    /// once, so every client sees it (strong consistency).
    Rpcs,
    /// MDS: the MDS journal is streamed into the object store, so an acknowledged operation survives any
    /// crash (global durability for RPC-based subtrees).
    Stream,
    /// Client: the operation is applied to the client's local view of the subtree and appended to its
    /// in-memory journal; no RPC (the subtree is decoupled).
    AppendClientJournal,
    /// Client → MDS: the client journal is sent to the MDS and applied to its in-memory namespace (a
    /// merge, giving weak consistency); nothing is guaranteed while it runs.
    VolatileApply,
    /// Client → object store → MDS: the client journal is written to the object store and the MDS
    /// replays it into its persistent metadata store (a merge that is also globally durable).
    NonvolatileApply,
    /// Client: the client journal is written to the client's local disk (local durability).
    LocalPersist,
    /// Client: the client journal is written to the object store (global durability).
    GlobalPersist,
}

impl Mechanism {
    /// Every mechanism, in the order of the paper's Table 1.
    pub const ALL: [Mechanism; 7] = [
        Mechanism::Rpcs,
        Mechanism::Stream,
        Mechanism::AppendClientJournal,
        Mechanism::VolatileApply,
        Mechanism::NonvolatileApply,
        Mechanism::LocalPersist,
        Mechanism::GlobalPersist,
    ];

    /// The paper's name for the mechanism, e.g. `"Append Client Journal"`; this is also its `Display`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Rpcs => "RPCs",
            Mechanism::Stream => "Stream",
            Mechanism::AppendClientJournal => "Append Client Journal",
            Mechanism::VolatileApply => "Volatile Apply",
            Mechanism::NonvolatileApply => "Nonvolatile Apply",
            Mechanism::LocalPersist => "Local Persist",
            Mechanism::GlobalPersist => "Global Persist",
        }
    }

    /// Looks a mechanism up by any accepted spelling: case does not matter, and spaces, `_` and `-`
    /// between words are interchangeable or may be left out (`"append client journal"`,
    /// `"append_client_journal"`, `"AppendClientJournal"`, `"non-volatile apply"`). `"RPC"` is also
    /// accepted for `RPCs`.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        let key = normalise(name);
        if key == "rpc" {
            return Some(Mechanism::Rpcs);
        }
        Mechanism::ALL.into_iter().find(|mechanism| normalise(mechanism.name()) == key)
    }

    /// Whether this mechanism records each metadata operation as it happens (the MDS for `RPCs`, the
    /// client journal for `Append Client Journal`); every other mechanism consumes such a record.
    pub(crate) fn is_recorder(self) -> bool {
        matches!(self, Mechanism::Rpcs | Mechanism::AppendClientJournal)
    }

    /// Whether this mechanism makes updates survive some failure (`Stream`, the two persists, and
    /// `Nonvolatile Apply`, which goes through the object store).
    pub(crate) fn is_durability(self) -> bool {
        matches!(
            self,
            Mechanism::Stream | Mechanism::LocalPersist | Mechanism::GlobalPersist | Mechanism::NonvolatileApply
        )
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The comparison form of a name: lower case, with whitespace, `_` and `-` removed.
pub(crate) fn normalise(name: &str) -> String {
    name.chars().filter(|c| !(c.is_whitespace() || *c == '_' || *c == '-')).flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paper_spelling_names_its_mechanism() {
        // Proves the spellings used by the paper's Table 1, Table 2 and §3.3 examples all resolve.
        let spellings = [
            ("RPCs", Mechanism::Rpcs),
            ("rpcs", Mechanism::Rpcs),
            ("RPC", Mechanism::Rpcs),
            ("stream", Mechanism::Stream),
            ("Stream", Mechanism::Stream),
            ("append client journal", Mechanism::AppendClientJournal),
            ("append_client_journal", Mechanism::AppendClientJournal),
            ("Append Client Journal", Mechanism::AppendClientJournal),
            ("AppendClientJournal", Mechanism::AppendClientJournal),
            ("volatile apply", Mechanism::VolatileApply),
            ("volatile_apply", Mechanism::VolatileApply),
            ("nonvolatile apply", Mechanism::NonvolatileApply),
            ("Non-volatile Apply", Mechanism::NonvolatileApply),
            ("local persist", Mechanism::LocalPersist),
            ("local_persist", Mechanism::LocalPersist),
            ("global persist", Mechanism::GlobalPersist),
            ("GLOBAL-PERSIST", Mechanism::GlobalPersist),
        ];
        for (spelling, expected) in spellings {
            assert_eq!(Mechanism::from_name(spelling), Some(expected), "{spelling}");
        }
    }

    #[test]
    fn display_is_the_paper_name_and_parses_back() {
        // Proves Display gives Table 1's name and that name is itself an accepted spelling.
        for mechanism in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(&mechanism.to_string()), Some(mechanism));
        }
        assert_eq!(Mechanism::VolatileApply.to_string(), "Volatile Apply");
    }

    #[test]
    fn unknown_names_are_not_mechanisms() {
        // Proves near-misses and level names are not silently taken for mechanisms.
        for name in ["", "none", "weak", "global", "persist", "journal", "rpcss", "apply"] {
            assert_eq!(Mechanism::from_name(name), None, "{name}");
        }
    }
}
