//! Reading a policies.yml document into its raw, per-key values, with each problem located.
//!
//! Each value is checked inside the YAML deserializer's visit of that value, so that yaml_serde
//! attaches the value's own line and column to the error; the structured problem (key, kind, message)
//! travels beside the error in [`State`]. Checks that need several keys are in [`crate::rules`] and
//! [`crate::policy`].

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::cell::{Consistency, Durability};
use crate::composition::{parse_expression, Composition};
use crate::error::{closest, ErrorKind, Location, Problem};
use crate::interval::{interval_from_seconds, parse_interval};
use crate::mechanism::normalise;
use crate::policy::{Interference, ALLOCATED_INODES_MAX};

/// The keys of a policies file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Key {
    Consistency,
    Durability,
    AllocatedInodes,
    InterferePolicy,
    SyncInterval,
}

impl Key {
    pub(crate) const ALL: [Key; 5] =
        [Key::Consistency, Key::Durability, Key::AllocatedInodes, Key::InterferePolicy, Key::SyncInterval];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Key::Consistency => "consistency",
            Key::Durability => "durability",
            Key::AllocatedInodes => "allocated_inodes",
            Key::InterferePolicy => "interfere_policy",
            Key::SyncInterval => "sync_interval",
        }
    }
}

/// A `consistency` or `durability` value: a level name (`Consistency` or `Durability`) or a
/// composition expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Spec<Level> {
    Level(Level),
    Expression(Composition),
}

/// The values present in a policies file, each valid on its own.
#[derive(Debug, Default)]
pub(crate) struct RawPolicy {
    pub(crate) consistency: Option<Spec<Consistency>>,
    pub(crate) durability: Option<Spec<Durability>>,
    pub(crate) allocated_inodes: Option<u64>,
    pub(crate) interfere: Option<Interference>,
    pub(crate) sync_interval: Option<Duration>,
}

/// Why a document could not be read: the key at fault (if any), the problem and where it is.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) key: Option<String>,
    pub(crate) problem: Problem,
    pub(crate) location: Option<Location>,
}

/// Reads `text` as a policies document. An empty document (or one of only comments) has no values.
pub(crate) fn read(text: &str) -> Result<RawPolicy, Failure> {
    let state = RefCell::new(State::default());
    let result = DocumentSeed { state: &state }.deserialize(yaml_serde::Deserializer::from_str(text));
    result.map_err(|error| {
        let location = error.location().map(|location| Location { line: location.line(), column: location.column() });
        let state = state.into_inner();
        match state.failure {
            Some((key, problem)) => Failure { key, problem, location },
            None => Failure {
                key: state.current_key.map(|key| key.name().to_string()),
                problem: Problem::new(ErrorKind::Syntax, error.to_string()),
                location,
            },
        }
    })
}

/// What the visitors share: the keys seen so far, the key whose value is being read, and the
/// structured form of the first problem found.
#[derive(Default)]
struct State {
    seen: BTreeSet<Key>,
    current_key: Option<Key>,
    failure: Option<(Option<String>, Problem)>,
}

/// A YAML node as the checks see it.
enum Scalar<'a> {
    Text(&'a str),
    Unsigned(u64),
    Negative,
    TooLarge,
    Fraction,
    Boolean,
    Null,
    List,
    Mapping,
    Tagged,
}

impl Scalar<'_> {
    fn describe(&self) -> String {
        match self {
            Scalar::Text(text) => format!("the string `{text}`"),
            Scalar::Unsigned(number) => format!("the number {number}"),
            Scalar::Negative => "a negative number".to_string(),
            Scalar::TooLarge => "a number too large for 64 bits".to_string(),
            Scalar::Fraction => "a number with a fraction".to_string(),
            Scalar::Boolean => "a boolean".to_string(),
            Scalar::Null => "no value".to_string(),
            Scalar::List => "a list".to_string(),
            Scalar::Mapping => "a mapping".to_string(),
            Scalar::Tagged => "a tagged value".to_string(),
        }
    }
}

type Check<'a, T> = Box<dyn FnOnce(Scalar<'_>) -> Result<T, (Option<String>, Problem)> + 'a>;

/// Visits one node, turns it into a [`Scalar`] and runs `check` on it, inside yaml_serde's visit so
/// that an error gets the node's location.
struct ScalarVisitor<'a, T> {
    state: &'a RefCell<State>,
    expecting: &'static str,
    check: Check<'a, T>,
}

impl<T> ScalarVisitor<'_, T> {
    fn finish<E: de::Error>(self, scalar: Scalar<'_>) -> Result<T, E> {
        (self.check)(scalar).map_err(|(key, problem)| {
            let message = problem.message.clone();
            self.state.borrow_mut().failure = Some((key, problem));
            E::custom(message)
        })
    }
}

impl<'de, T> Visitor<'de> for ScalarVisitor<'_, T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        self.finish(Scalar::Boolean)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        match u64::try_from(value) {
            Ok(value) => self.finish(Scalar::Unsigned(value)),
            Err(_) => self.finish(Scalar::Negative),
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        self.finish(Scalar::Unsigned(value))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<T, E> {
        match u64::try_from(value) {
            Ok(value) => self.finish(Scalar::Unsigned(value)),
            Err(_) if value < 0 => self.finish(Scalar::Negative),
            Err(_) => self.finish(Scalar::TooLarge),
        }
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<T, E> {
        match u64::try_from(value) {
            Ok(value) => self.finish(Scalar::Unsigned(value)),
            Err(_) => self.finish(Scalar::TooLarge),
        }
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        self.finish(Scalar::Fraction)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        self.finish(Scalar::Text(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.finish(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        self.finish(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        self.finish(Scalar::List)
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        self.finish(Scalar::Mapping)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        self.finish(Scalar::Tagged)
    }
}

struct DocumentSeed<'a> {
    state: &'a RefCell<State>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = RawPolicy;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawPolicy, D::Error> {
        deserializer.deserialize_any(DocumentVisitor { state: self.state })
    }
}

struct DocumentVisitor<'a> {
    state: &'a RefCell<State>,
}

impl DocumentVisitor<'_> {
    fn not_a_mapping<T, E: de::Error>(self, found: Scalar<'_>) -> Result<T, E> {
        let problem = Problem::new(
            ErrorKind::Syntax,
            format!(
                "a policies file is a mapping of keys to values (e.g. `consistency: RPCs`), but this one is {}",
                found.describe()
            ),
        );
        let message = problem.message.clone();
        self.state.borrow_mut().failure = Some((None, problem));
        Err(E::custom(message))
    }
}

impl<'de> Visitor<'de> for DocumentVisitor<'_> {
    type Value = RawPolicy;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a mapping of policy keys to values")
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawPolicy, E> {
        Ok(RawPolicy::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<RawPolicy, E> {
        Ok(RawPolicy::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::Boolean)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::Negative)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::Unsigned(value))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::TooLarge)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::TooLarge)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::Fraction)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawPolicy, E> {
        self.not_a_mapping(Scalar::Text(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<RawPolicy, A::Error> {
        self.not_a_mapping(Scalar::List)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<RawPolicy, A::Error> {
        self.not_a_mapping(Scalar::Tagged)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPolicy, A::Error> {
        let state = self.state;
        let mut raw = RawPolicy::default();
        while let Some(key) = map.next_key_seed(ScalarSeed(ScalarVisitor {
            state,
            expecting: "a policy key",
            check: Box::new(|scalar| check_key(scalar, &state.borrow().seen)),
        }))? {
            {
                let mut state = state.borrow_mut();
                state.seen.insert(key);
                state.current_key = Some(key);
            }
            match key {
                Key::Consistency => {
                    raw.consistency = Some(read_value(&mut map, state, key, "a consistency", check_consistency)?);
                }
                Key::Durability => {
                    raw.durability = Some(read_value(&mut map, state, key, "a durability", check_durability)?);
                }
                Key::AllocatedInodes => {
                    raw.allocated_inodes =
                        Some(read_value(&mut map, state, key, "an inode count", check_allocated_inodes)?);
                }
                Key::InterferePolicy => {
                    raw.interfere = Some(read_value(&mut map, state, key, "`block` or `allow`", check_interference)?);
                }
                Key::SyncInterval => {
                    raw.sync_interval = Some(read_value(&mut map, state, key, "a duration", check_sync_interval)?);
                }
            }
            state.borrow_mut().current_key = None;
        }
        Ok(raw)
    }
}

/// Reads the value of `key` and checks it with `check`.
fn read_value<'de, A: MapAccess<'de>, T>(
    map: &mut A,
    state: &RefCell<State>,
    key: Key,
    expecting: &'static str,
    check: fn(Scalar<'_>) -> Result<T, Problem>,
) -> Result<T, A::Error> {
    let check: Check<'_, T> =
        Box::new(move |scalar| check(scalar).map_err(|problem| (Some(key.name().to_string()), problem)));
    map.next_value_seed(ScalarSeed(ScalarVisitor { state, expecting, check }))
}

/// Runs a [`ScalarVisitor`] on the next node.
struct ScalarSeed<'a, T>(ScalarVisitor<'a, T>);

impl<'de, T> DeserializeSeed<'de> for ScalarSeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

fn valid_keys() -> String {
    Key::ALL.map(Key::name).join(", ")
}

fn check_key(scalar: Scalar<'_>, seen: &BTreeSet<Key>) -> Result<Key, (Option<String>, Problem)> {
    let Scalar::Text(text) = scalar else {
        let message = format!("keys are names, but this key is {}; valid keys are {}", scalar.describe(), valid_keys());
        return Err((None, Problem::new(ErrorKind::UnknownKey, message)));
    };
    let Some(key) = Key::ALL.into_iter().find(|key| key.name() == text) else {
        let hint = match closest(text, Key::ALL.map(Key::name)) {
            Some(suggestion) => format!(" (did you mean `{suggestion}`?)"),
            None => String::new(),
        };
        let message = format!("unknown key{hint}; valid keys are {}", valid_keys());
        return Err((Some(text.to_string()), Problem::new(ErrorKind::UnknownKey, message)));
    };
    if seen.contains(&key) {
        let message = "given more than once; give each key once".to_string();
        return Err((Some(text.to_string()), Problem::new(ErrorKind::DuplicateKey, message)));
    }
    Ok(key)
}

fn wrong_type(expected: &str, found: &Scalar<'_>) -> Problem {
    Problem::new(ErrorKind::WrongType, format!("expected {expected}, found {}", found.describe()))
}

const CONSISTENCY_EXPECTED: &str =
    "mechanisms such as `append client journal + volatile apply`, or a level: `invisible`, `weak` or `strong`";
const DURABILITY_EXPECTED: &str = "mechanisms such as `local persist`, or a level: `none`, `local` or `global`";

fn check_consistency(scalar: Scalar<'_>) -> Result<Spec<Consistency>, Problem> {
    let text = match scalar {
        Scalar::Text(text) => text,
        Scalar::Null => {
            return Err(Problem::new(
                ErrorKind::WrongType,
                format!("has no value; remove the key for the default (`RPCs`), or give {CONSISTENCY_EXPECTED}"),
            ))
        }
        other => return Err(wrong_type(CONSISTENCY_EXPECTED, &other)),
    };
    if let Some(level) = Consistency::from_name(text) {
        return Ok(Spec::Level(level));
    }
    if let Some(level) = Durability::from_name(text) {
        return Err(Problem::new(
            ErrorKind::UnknownName,
            format!("`{level}` is a durability level, not a consistency; give {CONSISTENCY_EXPECTED}"),
        ));
    }
    parse_expression(text).map(Spec::Expression)
}

fn check_durability(scalar: Scalar<'_>) -> Result<Spec<Durability>, Problem> {
    let text = match scalar {
        Scalar::Text(text) => text,
        Scalar::Null => {
            return Err(Problem::new(
                ErrorKind::WrongType,
                format!(
                    "has no value; write `none` for no durability, remove the key for the default (global), or give {DURABILITY_EXPECTED}"
                ),
            ))
        }
        other => return Err(wrong_type(DURABILITY_EXPECTED, &other)),
    };
    if let Some(level) = Durability::from_name(text) {
        return Ok(Spec::Level(level));
    }
    if let Some(level) = Consistency::from_name(text) {
        return Err(Problem::new(
            ErrorKind::UnknownName,
            format!("`{level}` is a consistency level, not a durability; give {DURABILITY_EXPECTED}"),
        ));
    }
    parse_expression(text).map(Spec::Expression)
}

fn check_allocated_inodes(scalar: Scalar<'_>) -> Result<u64, Problem> {
    let count = match scalar {
        Scalar::Unsigned(count) => count,
        // The paper's own example quotes the number: "allocated_inodes": "100000".
        Scalar::Text(text) if !text.trim().is_empty() && text.trim().bytes().all(|byte| byte.is_ascii_digit()) => {
            text.trim().parse().unwrap_or(u64::MAX)
        }
        Scalar::Negative => 0,
        Scalar::TooLarge => u64::MAX,
        other => return Err(wrong_type("a whole number of inodes, e.g. `100000`", &other)),
    };
    if count == 0 {
        return Err(Problem::new(
            ErrorKind::OutOfRange,
            "must be at least 1: the decoupled client needs inodes to create files",
        ));
    }
    if count > ALLOCATED_INODES_MAX {
        return Err(Problem::new(
            ErrorKind::OutOfRange,
            format!("{count} is more than the most one decoupled subtree may reserve, {ALLOCATED_INODES_MAX} (2^32)"),
        ));
    }
    Ok(count)
}

fn check_interference(scalar: Scalar<'_>) -> Result<Interference, Problem> {
    let Scalar::Text(text) = scalar else {
        return Err(wrong_type("`block` or `allow`", &scalar));
    };
    match normalise(text).as_str() {
        "block" => Ok(Interference::Block),
        "allow" => Ok(Interference::Allow),
        _ => {
            let hint = match closest(&normalise(text), ["block", "allow"]) {
                Some(suggestion) => format!(" (did you mean `{suggestion}`?)"),
                None => String::new(),
            };
            Err(Problem::new(
                ErrorKind::UnknownName,
                format!(
                    "unknown interfere policy `{text}`{hint}; use `block` (other clients get EBUSY inside the subtree) or `allow` (their updates apply, the decoupled client's win at merge)"
                ),
            ))
        }
    }
}

fn check_sync_interval(scalar: Scalar<'_>) -> Result<Duration, Problem> {
    match scalar {
        Scalar::Unsigned(seconds) => interval_from_seconds(seconds),
        Scalar::Text(text) => parse_interval(text),
        Scalar::Fraction => {
            Err(Problem::new(ErrorKind::OutOfRange, "a fraction of a second is written in milliseconds, e.g. `500ms`"))
        }
        Scalar::Negative => Err(Problem::new(ErrorKind::OutOfRange, "must be positive, e.g. `5s`")),
        other => Err(wrong_type("a duration such as `5s`, `500ms` or a whole number of seconds", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_comment_only_documents_have_no_values() {
        // Proves an empty policies file (or one with only comments or `---`) reads as all defaults.
        for text in ["", "\n\n", "# only a comment\n", "---\n", "--- # c\n...\n", "~"] {
            let raw = read(text).unwrap_or_else(|failure| panic!("{text:?}: {failure:?}"));
            assert!(
                raw.consistency.is_none() && raw.durability.is_none() && raw.allocated_inodes.is_none(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn value_problems_are_located_at_the_value() {
        // Proves a bad value's error points at that value's line and column.
        let failure = read("consistency: RPCs\nallocated_inodes: 0\n").unwrap_err();
        assert_eq!(failure.key.as_deref(), Some("allocated_inodes"));
        assert_eq!(failure.location, Some(Location { line: 2, column: 19 }));
        let failure = read("durability: stream\nconsistancy: RPCs\n").unwrap_err();
        assert_eq!(failure.key.as_deref(), Some("consistancy"));
        assert_eq!(failure.location, Some(Location { line: 2, column: 1 }));
    }
}
