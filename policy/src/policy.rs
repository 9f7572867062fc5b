//! [`Policy`]: a validated policies file — its compositions, cell, inode allocation, interference
//! rule and namespace-sync interval — and its canonical text.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use crate::cell::{consistency_composition, durability_composition, Cell, Consistency, Durability};
use crate::composition::Composition;
use crate::document::{self, Key, Spec};
use crate::error::{ErrorKind, Location, PolicyError, Problem};
use crate::interval::format_interval;
use crate::mechanism::Mechanism;
use crate::rules::{self, Source};

/// Most inodes one decoupled subtree may reserve (`allocated_inodes`): 2^32. The 64-bit inode space
/// holds 2^32 ranges of this size, and a larger request is surely a mistake.
pub const ALLOCATED_INODES_MAX: u64 = 1 << 32;

/// `allocated_inodes` when the file does not say (paper §3.3).
pub const ALLOCATED_INODES_DEFAULT: u64 = 100;

/// Longest policies text accepted, in bytes; matches what a journal event may carry.
pub const POLICY_TEXT_BYTES_MAX: usize = 64 * 1024;

/// What happens to other clients' requests inside a decoupled subtree (`interfere_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Interference {
    /// Other clients get EBUSY ("Device or resource busy") for any operation inside the subtree while
    /// it is decoupled.
    Block,
    /// Other clients' updates are applied; at merge time the decoupled client's updates win.
    #[default]
    Allow,
}

impl Interference {
    /// The policies.yml spelling: `block` or `allow`.
    pub fn name(self) -> &'static str {
        match self {
            Interference::Block => "block",
            Interference::Allow => "allow",
        }
    }
}

impl fmt::Display for Interference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A subtree's consistency and durability policy, parsed from a policies file and fully validated.
///
/// The mechanisms are those of the `consistency` and `durability` expressions together; they always
/// form one cell of the consistency x durability table ([`Policy::cell`]). A `Policy` can only be
/// built valid: by [`Policy::parse`], [`Policy::from_file`], [`Policy::for_cell`], [`Policy::default`]
/// or a [`crate::Preset`]. To store or send one, use [`Policy::to_yaml`] and parse it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    consistency: Composition,
    durability: Composition,
    cell: Cell,
    allocated_inodes: u64,
    interfere: Interference,
    sync_interval: Option<Duration>,
}

impl Default for Policy {
    /// The paper's defaults, what an empty policies file gives: `RPCs` + `stream` (strong/global), 100
    /// allocated inodes, `allow`, no sync interval.
    fn default() -> Policy {
        Policy::for_cell(Cell::new(Consistency::Strong, Durability::Global))
    }
}

impl Policy {
    /// Parses and validates a policies file's text. `source_name` names the text in errors (a path, or
    /// e.g. `"<policy of /job42>"`).
    pub fn parse(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
        if text.len() > POLICY_TEXT_BYTES_MAX {
            let message =
                format!("the policies text is {} bytes; at most {POLICY_TEXT_BYTES_MAX} are accepted", text.len());
            return Err(PolicyError::new(source_name, None, Problem::new(ErrorKind::Syntax, message), None));
        }
        let raw = document::read(text).map_err(|failure| {
            PolicyError::new(source_name, failure.key.as_deref(), failure.problem, failure.location)
        })?;
        let reject = |key: Key, problem: Problem| {
            PolicyError::new(source_name, Some(key.name()), problem, locate_key(text, key.name()))
        };

        // Defaults fill an axis that neither key covers: RPCs unless `durability` names a recorder;
        // global durability (`stream` with RPCs, `global persist` when decoupled) unless
        // `consistency` already names a durability mechanism.
        let (consistency, consistency_level, consistency_defaulted) = match raw.consistency {
            Some(Spec::Level(level)) => (consistency_composition(level), Some(level), false),
            Some(Spec::Expression(composition)) => (composition, None, false),
            None => match &raw.durability {
                Some(Spec::Expression(durability)) if durability.mechanisms().iter().any(|m| m.is_recorder()) => {
                    (Composition::NONE, None, false)
                }
                _ => (Composition::Mechanism(Mechanism::Rpcs), None, true),
            },
        };
        let decoupled = consistency.mechanisms().contains(&Mechanism::AppendClientJournal);
        let (durability, durability_level, durability_defaulted) = match raw.durability {
            Some(Spec::Level(level)) => (durability_composition(level, decoupled), Some(level), false),
            Some(Spec::Expression(composition)) => (composition, None, false),
            None if consistency.mechanisms().iter().any(|m| m.is_durability()) => (Composition::NONE, None, false),
            None => (durability_composition(Durability::Global, decoupled), None, true),
        };

        let cell = rules::check(
            Source { key: Key::Consistency, composition: &consistency, defaulted: consistency_defaulted },
            Source { key: Key::Durability, composition: &durability, defaulted: durability_defaulted },
        )
        .map_err(|violation| reject(violation.key, violation.problem))?;
        let mechanisms = join_mechanisms(&consistency, &durability);
        if let Some(level) = consistency_level.filter(|&level| level != cell.consistency) {
            let message = format!(
                "is `{level}`, but with durability `{durability}` the mechanisms are {mechanisms}, which give {} consistency; write the mechanisms you mean instead of the level",
                cell.consistency
            );
            return Err(reject(Key::Consistency, Problem::new(ErrorKind::Nonsensical, message)));
        }
        if let Some(level) = durability_level.filter(|&level| level != cell.durability) {
            let message = format!(
                "is `{level}`, but with consistency `{consistency}` the mechanisms are {mechanisms}, which give {} durability; remove `durability` to take what they give, or change them",
                cell.durability
            );
            return Err(reject(Key::Durability, Problem::new(ErrorKind::Nonsensical, message)));
        }
        if raw.sync_interval.is_some() && cell.consistency != Consistency::Weak {
            let why = match cell.consistency {
                Consistency::Invisible => {
                    "its updates are never merged by the system; add `volatile apply` for weak consistency, or remove sync_interval"
                }
                _ => "every update is already visible to all clients; remove sync_interval",
            };
            let message = format!("a namespace-sync interval merges a decoupled client's updates on a timer, but this policy is {cell}: {why}");
            return Err(reject(Key::SyncInterval, Problem::new(ErrorKind::Nonsensical, message)));
        }
        Ok(Policy {
            consistency,
            durability,
            cell,
            allocated_inodes: raw.allocated_inodes.unwrap_or(ALLOCATED_INODES_DEFAULT),
            interfere: raw.interfere.unwrap_or_default(),
            sync_interval: raw.sync_interval,
        })
    }

    /// Reads and parses a policies file (at most [`POLICY_TEXT_BYTES_MAX`] bytes of UTF-8); errors
    /// name the file by its path.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|error| PolicyError::io(&name, format!("cannot open the policies file: {error}"), Some(error)))?;
        let mut bytes = Vec::new();
        file.take(POLICY_TEXT_BYTES_MAX as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| PolicyError::io(&name, format!("cannot read the policies file: {error}"), Some(error)))?;
        if bytes.len() > POLICY_TEXT_BYTES_MAX {
            let message = format!("the policies file is larger than {POLICY_TEXT_BYTES_MAX} bytes");
            return Err(PolicyError::io(&name, message, None));
        }
        let text = String::from_utf8(bytes)
            .map_err(|error| PolicyError::io(&name, format!("the policies file is not UTF-8: {error}"), None))?;
        Policy::parse(&text, &name)
    }

    /// The canonical policy of `cell` (its Table 2 mechanisms) with default settings: 100 allocated
    /// inodes, `allow`, no sync interval.
    pub fn for_cell(cell: Cell) -> Policy {
        let (consistency, durability) = cell.compositions();
        Policy {
            consistency,
            durability,
            cell,
            allocated_inodes: ALLOCATED_INODES_DEFAULT,
            interfere: Interference::Allow,
            sync_interval: None,
        }
    }

    /// This policy with another inode allocation and interference rule (for presets).
    pub(crate) fn with_decoupling(mut self, allocated_inodes: u64, interfere: Interference) -> Policy {
        assert!((1..=ALLOCATED_INODES_MAX).contains(&allocated_inodes));
        self.allocated_inodes = allocated_inodes;
        self.interfere = interfere;
        self
    }

    /// The `consistency` expression, after level names and defaults are expanded; empty only when the
    /// key was absent and `durability` named the recorder.
    pub fn consistency(&self) -> &Composition {
        &self.consistency
    }

    /// The `durability` expression, after level names and defaults are expanded; empty for
    /// `durability: none`, or when the key was absent and `consistency` named the durability mechanism.
    pub fn durability(&self) -> &Composition {
        &self.durability
    }

    /// The consistency x durability cell these mechanisms give.
    pub fn cell(&self) -> Cell {
        self.cell
    }

    /// Every mechanism of the policy: the union of both expressions.
    pub fn mechanisms(&self) -> BTreeSet<Mechanism> {
        self.consistency.mechanisms().union(&self.durability.mechanisms()).copied().collect()
    }

    /// Whether the subtree is decoupled: its client applies operations locally (Append Client Journal)
    /// instead of sending RPCs, i.e. the consistency is not strong.
    pub fn is_decoupled(&self) -> bool {
        self.cell.consistency != Consistency::Strong
    }

    /// How many inodes the MDS hands the decoupling client (1 ..= [`ALLOCATED_INODES_MAX`]).
    pub fn allocated_inodes(&self) -> u64 {
        self.allocated_inodes
    }

    /// What happens to other clients' requests inside the subtree while it is decoupled.
    pub fn interfere(&self) -> Interference {
        self.interfere
    }

    /// How often the system merges a weak subtree's updates into the global namespace, if on a timer
    /// (only weak policies have one).
    pub fn sync_interval(&self) -> Option<Duration> {
        self.sync_interval
    }

    /// The canonical policies.yml text of this policy; [`Policy::parse`] turns it back into an equal
    /// `Policy`. Mechanism names are Table 1's, every key is written except an empty expression whose
    /// axis the other key covers, and `durability: none` is written out.
    pub fn to_yaml(&self) -> String {
        let mut text = String::new();
        if !self.consistency.is_none() {
            let _ = writeln!(text, "consistency: \"{}\"", self.consistency);
        }
        if !self.durability.is_none() {
            let _ = writeln!(text, "durability: \"{}\"", self.durability);
        } else if !self.mechanisms().iter().any(|mechanism| mechanism.is_durability()) {
            let _ = writeln!(text, "durability: none");
        }
        let _ = writeln!(text, "allocated_inodes: {}", self.allocated_inodes);
        let _ = writeln!(text, "interfere_policy: {}", self.interfere);
        if let Some(interval) = self.sync_interval {
            let _ = writeln!(text, "sync_interval: {}", format_interval(interval));
        }
        text
    }
}

fn join_mechanisms(consistency: &Composition, durability: &Composition) -> String {
    let union: BTreeSet<Mechanism> = consistency.mechanisms().union(&durability.mechanisms()).copied().collect();
    union.iter().map(|mechanism| format!("`{mechanism}`")).collect::<Vec<_>>().join(", ")
}

/// Where `key` is written in `text`, for problems that involve several keys and so have no single
/// YAML node to point at: the first line whose first token is the key (bare or quoted) followed by
/// `:`. Best effort; `None` for keys written in flow style or absent.
fn locate_key(text: &str, key: &str) -> Option<Location> {
    text.lines().enumerate().find_map(|(index, line)| {
        let indent = line.len() - line.trim_start().len();
        let rest = line[indent..].strip_prefix(['"', '\'']).unwrap_or(&line[indent..]);
        let after = rest.strip_prefix(key)?;
        let after = after.strip_prefix(['"', '\'']).unwrap_or(after);
        after
            .trim_start()
            .starts_with(':')
            .then(|| Location { line: index + 1, column: line[..indent].chars().count() + 1 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_key_finds_block_keys_only() {
        // Proves the cross-key locator finds bare and quoted keys and ignores comments and values.
        let text = "# consistency: x\nallocated_inodes: 5\n  \"durability\" : none\nconsistency: RPCs\n";
        assert_eq!(locate_key(text, "durability"), Some(Location { line: 3, column: 3 }));
        assert_eq!(locate_key(text, "consistency"), Some(Location { line: 4, column: 1 }));
        assert_eq!(locate_key(text, "sync_interval"), None);
        assert_eq!(locate_key("{consistency: RPCs}", "consistency"), None);
    }
}
