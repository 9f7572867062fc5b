//! The consistency x durability cells (paper Table 2, DESIGN §5) and the mechanisms of each.

use std::collections::BTreeSet;
use std::fmt;

use crate::composition::Composition;
use crate::mechanism::{normalise, Mechanism};

/// When other clients see a subtree's updates (paper §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Consistency {
    /// The system never merges the updates into the global namespace; an application or operator does
    /// it later with the journal tool.
    Invisible,
    /// The updates are merged later: when the client says so, when the subtree is recoupled or unmounted,
    /// and on the policy's namespace-sync interval.
    Weak,
    /// Every client sees every update as soon as it is acknowledged.
    Strong,
}

/// Which failures a subtree's updates survive (paper §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Updates are volatile: any failure of the component holding them loses them.
    None,
    /// Updates survive if the client node recovers (they are on its local disk).
    Local,
    /// Updates survive any failure: they are in the object store.
    Global,
}

/// One cell of the consistency x durability table; displays as `consistency/durability`, e.g.
/// `weak/global`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    /// The column: when other clients see updates.
    pub consistency: Consistency,
    /// The row: which failures updates survive.
    pub durability: Durability,
}

impl Consistency {
    /// Every consistency, weakest first.
    pub const ALL: [Consistency; 3] = [Consistency::Invisible, Consistency::Weak, Consistency::Strong];

    /// The paper's name: `invisible`, `weak` or `strong`; also accepted as a `consistency:` value.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Invisible => "invisible",
            Consistency::Weak => "weak",
            Consistency::Strong => "strong",
        }
    }

    /// The level named `name`, in any case.
    pub fn from_name(name: &str) -> Option<Consistency> {
        let key = normalise(name);
        Consistency::ALL.into_iter().find(|level| level.name() == key)
    }
}

impl Durability {
    /// Every durability, weakest first.
    pub const ALL: [Durability; 3] = [Durability::None, Durability::Local, Durability::Global];

    /// The paper's name: `none`, `local` or `global`; also accepted as a `durability:` value.
    pub fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Local => "local",
            Durability::Global => "global",
        }
    }

    /// The level named `name`, in any case.
    pub fn from_name(name: &str) -> Option<Durability> {
        let key = normalise(name);
        Durability::ALL.into_iter().find(|level| level.name() == key)
    }
}

impl Cell {
    /// All nine cells, row by row (durability none, local, global), each row from invisible to strong.
    pub const ALL: [Cell; 9] = {
        use Consistency::{Invisible, Strong, Weak};
        [
            Cell::new(Invisible, Durability::None),
            Cell::new(Weak, Durability::None),
            Cell::new(Strong, Durability::None),
            Cell::new(Invisible, Durability::Local),
            Cell::new(Weak, Durability::Local),
            Cell::new(Strong, Durability::Local),
            Cell::new(Invisible, Durability::Global),
            Cell::new(Weak, Durability::Global),
            Cell::new(Strong, Durability::Global),
        ]
    };

    /// The cell at `consistency` x `durability`.
    pub const fn new(consistency: Consistency, durability: Durability) -> Cell {
        Cell { consistency, durability }
    }

    /// The mechanisms of this cell in the paper's Table 2, e.g. weak/local = Append Client Journal +
    /// Local Persist + Volatile Apply. (Weak/global can also be reached with Nonvolatile Apply; see
    /// [`crate::Policy`].)
    pub fn mechanisms(self) -> BTreeSet<Mechanism> {
        let (consistency, durability) = self.compositions();
        consistency.mechanisms().union(&durability.mechanisms()).copied().collect()
    }

    /// The canonical `consistency` and `durability` expressions of this cell: the consistency
    /// mechanisms (`RPCs`, `Append Client Journal`, `Append Client Journal + Volatile Apply`) and the
    /// durability mechanism (none, `Local Persist`, and `Stream` or `Global Persist`).
    pub(crate) fn compositions(self) -> (Composition, Composition) {
        let consistency = consistency_composition(self.consistency);
        let durability = durability_composition(self.durability, self.consistency != Consistency::Strong);
        (consistency, durability)
    }

    /// The cell of a set of mechanisms that passed [`crate::rules`]: RPCs make it strong, a client
    /// journal with an apply weak, a client journal alone invisible; Stream, Global Persist and
    /// Nonvolatile Apply make it global, Local Persist local, and nothing none.
    pub(crate) fn of(mechanisms: &BTreeSet<Mechanism>) -> Cell {
        let consistency = if mechanisms.contains(&Mechanism::Rpcs) {
            Consistency::Strong
        } else if mechanisms.contains(&Mechanism::VolatileApply) || mechanisms.contains(&Mechanism::NonvolatileApply) {
            Consistency::Weak
        } else {
            Consistency::Invisible
        };
        let durability = if [Mechanism::Stream, Mechanism::GlobalPersist, Mechanism::NonvolatileApply]
            .iter()
            .any(|mechanism| mechanisms.contains(mechanism))
        {
            Durability::Global
        } else if mechanisms.contains(&Mechanism::LocalPersist) {
            Durability::Local
        } else {
            Durability::None
        };
        Cell::new(consistency, durability)
    }
}

/// What a `consistency:` level name expands to.
pub(crate) fn consistency_composition(consistency: Consistency) -> Composition {
    match consistency {
        Consistency::Invisible => Composition::Mechanism(Mechanism::AppendClientJournal),
        Consistency::Weak => Composition::Seq(vec![
            Composition::Mechanism(Mechanism::AppendClientJournal),
            Composition::Mechanism(Mechanism::VolatileApply),
        ]),
        Consistency::Strong => Composition::Mechanism(Mechanism::Rpcs),
    }
}

/// What a `durability:` level name expands to: global is `Global Persist` for a decoupled subtree (the
/// client journal goes to the object store) and `Stream` for an RPC-based one (the MDS journal does).
pub(crate) fn durability_composition(durability: Durability, decoupled: bool) -> Composition {
    match durability {
        Durability::None => Composition::NONE,
        Durability::Local => Composition::Mechanism(Mechanism::LocalPersist),
        Durability::Global if decoupled => Composition::Mechanism(Mechanism::GlobalPersist),
        Durability::Global => Composition::Mechanism(Mechanism::Stream),
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.consistency, self.durability)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mechanism::*;

    fn set(mechanisms: &[Mechanism]) -> BTreeSet<Mechanism> {
        mechanisms.iter().copied().collect()
    }

    #[test]
    fn every_cell_has_its_table_2_mechanisms() {
        // Proves the nine cells carry exactly the mechanisms of the paper's Table 2 / DESIGN §5.
        use Consistency::{Invisible, Strong, Weak};
        let table = [
            (Cell::new(Invisible, Durability::None), set(&[AppendClientJournal])),
            (Cell::new(Weak, Durability::None), set(&[AppendClientJournal, VolatileApply])),
            (Cell::new(Strong, Durability::None), set(&[Rpcs])),
            (Cell::new(Invisible, Durability::Local), set(&[AppendClientJournal, LocalPersist])),
            (Cell::new(Weak, Durability::Local), set(&[AppendClientJournal, LocalPersist, VolatileApply])),
            (Cell::new(Strong, Durability::Local), set(&[Rpcs, LocalPersist])),
            (Cell::new(Invisible, Durability::Global), set(&[AppendClientJournal, GlobalPersist])),
            (Cell::new(Weak, Durability::Global), set(&[AppendClientJournal, GlobalPersist, VolatileApply])),
            (Cell::new(Strong, Durability::Global), set(&[Rpcs, Stream])),
        ];
        assert_eq!(table.iter().map(|(cell, _)| *cell).collect::<Vec<_>>(), Cell::ALL);
        for (cell, mechanisms) in table {
            assert_eq!(cell.mechanisms(), mechanisms, "{cell}");
            assert_eq!(Cell::of(&mechanisms), cell, "{cell}");
        }
    }

    #[test]
    fn nonvolatile_apply_is_weak_and_global() {
        // Proves the documented mapping of Nonvolatile Apply: a merge (weak) through the object store (global).
        let weak_global = Cell::new(Consistency::Weak, Durability::Global);
        assert_eq!(Cell::of(&set(&[AppendClientJournal, NonvolatileApply])), weak_global);
        assert_eq!(Cell::of(&set(&[AppendClientJournal, GlobalPersist, NonvolatileApply])), weak_global);
    }

    #[test]
    fn cells_display_as_consistency_slash_durability() {
        // Proves the Display format other crates print in status output.
        assert_eq!(Cell::new(Consistency::Weak, Durability::Global).to_string(), "weak/global");
        assert_eq!(Cell::new(Consistency::Invisible, Durability::None).to_string(), "invisible/none");
    }

    #[test]
    fn level_names_parse_in_any_case() {
        // Proves the user-friendly level names are case-insensitive and distinct from mechanisms.
        assert_eq!(Consistency::from_name("Weak"), Some(Consistency::Weak));
        assert_eq!(Durability::from_name("GLOBAL"), Some(Durability::Global));
        assert_eq!(Durability::from_name("global persist"), None);
        assert_eq!(Consistency::from_name("rpcs"), None);
    }
}
