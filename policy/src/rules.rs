//! The rules that reject nonsensical unions of mechanisms (paper §3.2) and map the rest to a cell.
//!
//! A policy's mechanisms are the union of its `consistency` and `durability` expressions. The union
//! must name one recorder (`RPCs` or `Append Client Journal`), only mechanisms that work on what that
//! recorder writes, at most one apply and at most one durability. What passes is exactly the nine
//! cells of Table 2 plus the Nonvolatile Apply variant of weak/global.

use std::collections::BTreeSet;

use crate::cell::Cell;
use crate::composition::Composition;
use crate::document::Key;
use crate::error::{ErrorKind, Problem};
use crate::mechanism::Mechanism;

/// Where the mechanisms of one key came from.
pub(crate) struct Source<'a> {
    pub(crate) key: Key,
    pub(crate) composition: &'a Composition,
    /// The key was absent and this is its default.
    pub(crate) defaulted: bool,
}

/// A rule broken, and the key a user should look at to fix it.
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) key: Key,
    pub(crate) problem: Problem,
}

/// Checks the union of `consistency` and `durability` and returns its cell.
pub(crate) fn check(consistency: Source<'_>, durability: Source<'_>) -> Result<Cell, Violation> {
    let sources = [consistency, durability];
    let union: BTreeSet<Mechanism> = sources.iter().flat_map(|source| source.composition.mechanisms()).collect();
    let has = |mechanism: Mechanism| union.contains(&mechanism);

    let [consistency, durability] = &sources;
    let consistency_mechanisms = consistency.composition.mechanisms();
    if let Some(&repeated) = consistency_mechanisms.intersection(&durability.composition.mechanisms()).next() {
        return Err(Violation {
            key: Key::Durability,
            problem: Problem::new(
                ErrorKind::Nonsensical,
                format!("`{repeated}` appears in both `consistency` and `durability`; name it once"),
            ),
        });
    }
    if has(Mechanism::Rpcs) && has(Mechanism::AppendClientJournal) {
        return Err(violation(&sources, &[Mechanism::Rpcs, Mechanism::AppendClientJournal], |names| {
            format!(
                "{} and {} both record every operation (at the MDS, or in a client journal), so they cannot be combined (paper §3.2); use RPCs for strong consistency or Append Client Journal to decouple the subtree",
                names.of(Mechanism::Rpcs),
                names.of(Mechanism::AppendClientJournal)
            )
        }));
    }
    if !has(Mechanism::Rpcs) && !has(Mechanism::AppendClientJournal) {
        return Err(Violation {
            key: Key::Consistency,
            problem: Problem::new(
                ErrorKind::Nonsensical,
                format!(
                    "no mechanism records the operations{}; add `RPCs` for strong consistency or `Append Client Journal` to decouple the subtree",
                    describe_consumers(&sources)
                ),
            ),
        });
    }
    if has(Mechanism::Stream) && !has(Mechanism::Rpcs) {
        return Err(violation(&sources, &[Mechanism::Stream, Mechanism::AppendClientJournal], |names| {
            format!(
                "{} streams the MDS journal, but with {} operations go to the client journal instead; for global durability of a decoupled subtree use `Global Persist`",
                names.of(Mechanism::Stream),
                names.of(Mechanism::AppendClientJournal)
            )
        }));
    }
    if has(Mechanism::Rpcs) {
        for client_side in [Mechanism::GlobalPersist, Mechanism::VolatileApply, Mechanism::NonvolatileApply] {
            if has(client_side) {
                let remedy = if client_side == Mechanism::GlobalPersist {
                    "for strong consistency with global durability use `Stream`"
                } else {
                    "the MDS applies each operation as it arrives; to merge later, decouple with `Append Client Journal` instead of RPCs"
                };
                return Err(violation(&sources, &[Mechanism::Rpcs, client_side], |names| {
                    format!(
                        "{} works on a client journal, but with {} the client keeps none: {remedy}",
                        names.of(client_side),
                        names.of(Mechanism::Rpcs)
                    )
                }));
            }
        }
    }
    if has(Mechanism::VolatileApply) && has(Mechanism::NonvolatileApply) {
        return Err(violation(&sources, &[Mechanism::VolatileApply, Mechanism::NonvolatileApply], |names| {
            format!(
                "{} and {} both merge the client journal; choose one (Nonvolatile Apply goes through the object store and is durable, Volatile Apply is faster)",
                names.of(Mechanism::VolatileApply),
                names.of(Mechanism::NonvolatileApply)
            )
        }));
    }
    if has(Mechanism::LocalPersist) {
        let global = [Mechanism::Stream, Mechanism::GlobalPersist, Mechanism::NonvolatileApply]
            .into_iter()
            .find(|&mechanism| has(mechanism));
        if let Some(global) = global {
            return Err(violation(&sources, &[Mechanism::LocalPersist, global], |names| {
                format!(
                    "{} gives local durability and {} global durability; global already covers local (paper §3.2), so keep one",
                    names.of(Mechanism::LocalPersist),
                    names.of(global)
                )
            }));
        }
    }
    debug_assert!(union.iter().filter(|mechanism| mechanism.is_recorder()).count() == 1);
    Ok(Cell::of(&union))
}

/// The broken rule involving `involved`, blamed on their key, or on `durability` when they span both.
fn violation(sources: &[Source<'_>; 2], involved: &[Mechanism], text: impl FnOnce(&Names<'_>) -> String) -> Violation {
    let names = Names { sources, spans_keys: false };
    let keys: BTreeSet<Key> = involved.iter().map(|&mechanism| names.origin(mechanism).key).collect();
    let names = Names { sources, spans_keys: keys.len() > 1 };
    let key = if names.spans_keys { Key::Durability } else { keys.into_iter().next().unwrap_or(Key::Consistency) };
    Violation { key, problem: Problem::new(ErrorKind::Nonsensical, text(&names)) }
}

/// Names the mechanisms of a broken rule, with their key when the rule spans both keys or a default.
struct Names<'a> {
    sources: &'a [Source<'a>; 2],
    spans_keys: bool,
}

impl Names<'_> {
    fn origin(&self, mechanism: Mechanism) -> &Source<'_> {
        self.sources
            .iter()
            .find(|source| source.composition.mechanisms().contains(&mechanism))
            .expect("a rule only involves mechanisms of the union")
    }

    fn of(&self, mechanism: Mechanism) -> String {
        let source = self.origin(mechanism);
        if source.defaulted {
            format!("`{mechanism}` (the default `{}`)", source.key.name())
        } else if self.spans_keys {
            format!("`{mechanism}` (in `{}`)", source.key.name())
        } else {
            format!("`{mechanism}`")
        }
    }
}

/// ` (`A`, `B` only work on such a record)`, naming the mechanisms the user wrote (not defaults).
fn describe_consumers(sources: &[Source<'_>]) -> String {
    let written: BTreeSet<Mechanism> =
        sources.iter().filter(|source| !source.defaulted).flat_map(|source| source.composition.mechanisms()).collect();
    let names: Vec<String> = written.iter().map(|mechanism| format!("`{mechanism}`")).collect();
    match names.len() {
        0 => String::new(),
        1 => format!(" ({} only works on such a record)", names[0]),
        _ => format!(" ({} only work on such a record)", names.join(", ")),
    }
}
