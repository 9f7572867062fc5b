//! The mechanism-composition language: `+` (in sequence), `|||` (in parallel), parentheses.
//!
//! Grammar (whitespace is free around operators; names are case-insensitive):
//!
//! ```text
//! parallel := sequence ( "|||" sequence )*
//! sequence := term ( "+" term )*
//! term     := mechanism-name | "(" parallel ")"
//! ```
//!
//! `+` binds tighter than `|||`, as `;` binds tighter than `|||` in CSP: `a + b ||| c` is
//! `(a + b) ||| c`. Parsed expressions are normalised — a one-element sequence is its element, a
//! sequence inside a sequence (or a parallel inside a parallel) is flattened — so that equal meaning
//! gives equal trees and [`Composition`]'s `Display` parses back to the same tree.

use std::collections::BTreeSet;
use std::fmt;

use crate::cell::{Consistency, Durability};
use crate::error::{closest, ErrorKind, Problem};
use crate::mechanism::{normalise, Mechanism};

/// Longest composition expression accepted, in bytes.
pub const COMPOSITION_TEXT_BYTES_MAX: usize = 512;

/// Deepest parenthesis nesting accepted in a composition expression.
pub const COMPOSITION_NESTING_MAX: usize = 8;

/// A parsed composition of mechanisms.
///
/// Normal form, which every `Composition` this crate returns is in: `Seq` and `Par` have at least two
/// parts, except that the empty `Seq` ([`Composition::NONE`]) means "no mechanism" (`durability: none`);
/// no `Seq` is directly inside a `Seq`, no `Par` directly inside a `Par`; each mechanism appears once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Composition {
    /// A single mechanism.
    Mechanism(Mechanism),
    /// Parts run one after another (`a + b`): each starts when the one before it completes.
    Seq(Vec<Composition>),
    /// Parts run at the same time (`a ||| b`); the composition completes when all of them have.
    Par(Vec<Composition>),
}

impl Composition {
    /// The empty composition: no mechanism at all (`durability: none`). Displays as `none`.
    pub const NONE: Composition = Composition::Seq(Vec::new());

    /// Every mechanism in the composition.
    pub fn mechanisms(&self) -> BTreeSet<Mechanism> {
        let mut mechanisms = BTreeSet::new();
        self.for_each_mechanism(&mut |mechanism| {
            mechanisms.insert(mechanism);
        });
        mechanisms
    }

    /// Whether this is the empty composition.
    pub fn is_none(&self) -> bool {
        matches!(self, Composition::Seq(parts) if parts.is_empty())
    }

    fn for_each_mechanism(&self, visit: &mut impl FnMut(Mechanism)) {
        match self {
            Composition::Mechanism(mechanism) => visit(*mechanism),
            Composition::Seq(parts) | Composition::Par(parts) => {
                parts.iter().for_each(|part| part.for_each_mechanism(visit));
            }
        }
    }

    /// `parts` in sequence, normalised.
    fn sequence(parts: Vec<Composition>) -> Composition {
        Composition::normalised(parts, true)
    }

    /// `parts` in parallel, normalised.
    fn parallel(parts: Vec<Composition>) -> Composition {
        Composition::normalised(parts, false)
    }

    fn normalised(parts: Vec<Composition>, sequence: bool) -> Composition {
        let mut flat = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Composition::Seq(inner) if sequence => flat.extend(inner),
                Composition::Par(inner) if !sequence => flat.extend(inner),
                other => flat.push(other),
            }
        }
        if flat.len() == 1 {
            return flat.remove(0);
        }
        if sequence {
            Composition::Seq(flat)
        } else {
            Composition::Par(flat)
        }
    }
}

impl fmt::Display for Composition {
    /// The canonical text: Table 1 names, ` + `, ` ||| `, and parentheses only around a parallel
    /// inside a sequence. The empty composition is `none`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Composition::Mechanism(mechanism) => write!(formatter, "{mechanism}"),
            Composition::Seq(parts) if parts.is_empty() => formatter.write_str("none"),
            Composition::Seq(parts) => {
                write_parts(formatter, parts, " + ", |part| !matches!(part, Composition::Mechanism(_)))
            }
            Composition::Par(parts) => {
                write_parts(formatter, parts, " ||| ", |part| matches!(part, Composition::Par(_)))
            }
        }
    }
}

fn write_parts(
    formatter: &mut fmt::Formatter<'_>,
    parts: &[Composition],
    operator: &str,
    needs_parentheses: impl Fn(&Composition) -> bool,
) -> fmt::Result {
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            formatter.write_str(operator)?;
        }
        if needs_parentheses(part) {
            write!(formatter, "({part})")?;
        } else {
            write!(formatter, "{part}")?;
        }
    }
    Ok(())
}

/// Parses a composition expression and checks it on its own: known names, sound syntax, each
/// mechanism once, and each mechanism after the one whose record it works on (see [`check_order`]).
/// Level names (`weak`, `global`, ...) are the caller's business and are rejected here.
pub(crate) fn parse_expression(text: &str) -> Result<Composition, Problem> {
    if text.len() > COMPOSITION_TEXT_BYTES_MAX {
        return Err(Problem::new(
            ErrorKind::CompositionSyntax,
            format!("the composition is {} bytes long; at most {COMPOSITION_TEXT_BYTES_MAX} are accepted", text.len()),
        ));
    }
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(Problem::new(
            ErrorKind::CompositionSyntax,
            "the value is empty; name mechanisms (e.g. `append client journal + volatile apply`) or a level",
        ));
    }
    let mut parser = Parser { tokens, position: 0 };
    let composition = parser.parallel(0)?;
    if let Some(token) = parser.tokens.get(parser.position) {
        return Err(syntax(format!("unexpected {} with no matching `(`", token.describe())));
    }
    check_duplicates(&composition)?;
    check_order(&composition)?;
    Ok(composition)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Name(String),
    Plus,
    Parallel,
    Open,
    Close,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Name(name) => format!("mechanism `{name}`"),
            Token::Plus => "`+`".to_string(),
            Token::Parallel => "`|||`".to_string(),
            Token::Open => "`(`".to_string(),
            Token::Close => "`)`".to_string(),
        }
    }
}

fn syntax(message: String) -> Problem {
    Problem::new(ErrorKind::CompositionSyntax, message)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c.is_whitespace()
}

fn tokenize(text: &str) -> Result<Vec<Token>, Problem> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '+' => {
                chars.next();
                tokens.push(Token::Plus);
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '|' => {
                let mut bars = 0;
                while chars.next_if(|&(_, c)| c == '|').is_some() {
                    bars += 1;
                }
                if bars != 3 {
                    return Err(syntax(format!(
                        "`{}` is not an operator; write `+` to run mechanisms in sequence or `|||` to run them in parallel",
                        "|".repeat(bars)
                    )));
                }
                tokens.push(Token::Parallel);
            }
            c if is_name_char(c) => {
                let mut end = start;
                while let Some((index, c)) = chars.next_if(|&(_, c)| is_name_char(c)) {
                    end = index + c.len_utf8();
                }
                let name = text[start..end].split_whitespace().collect::<Vec<_>>().join(" ");
                tokens.push(Token::Name(name));
            }
            other => {
                return Err(syntax(format!(
                    "unexpected character `{}`; a composition is mechanism names joined by `+` (in sequence) or `|||` (in parallel)",
                    other.escape_debug()
                )));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn next_if(&mut self, expected: &Token) -> bool {
        if self.tokens.get(self.position) == Some(expected) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn parallel(&mut self, depth: usize) -> Result<Composition, Problem> {
        let mut parts = vec![self.sequence(depth)?];
        while self.next_if(&Token::Parallel) {
            parts.push(self.sequence(depth)?);
        }
        Ok(Composition::parallel(parts))
    }

    fn sequence(&mut self, depth: usize) -> Result<Composition, Problem> {
        let mut parts = vec![self.term(depth)?];
        while self.next_if(&Token::Plus) {
            parts.push(self.term(depth)?);
        }
        Ok(Composition::sequence(parts))
    }

    fn term(&mut self, depth: usize) -> Result<Composition, Problem> {
        let previous = self.position.checked_sub(1).and_then(|index| self.tokens.get(index)).cloned();
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        match token {
            Some(Token::Name(name)) => mechanism(&name).map(Composition::Mechanism),
            Some(Token::Open) => {
                if depth + 1 > COMPOSITION_NESTING_MAX {
                    return Err(syntax(format!("parentheses nest deeper than {COMPOSITION_NESTING_MAX} levels")));
                }
                let inner = self.parallel(depth + 1)?;
                if !self.next_if(&Token::Close) {
                    return Err(syntax("a `(` is never closed; add the matching `)`".to_string()));
                }
                Ok(inner)
            }
            found => {
                let after = match previous {
                    Some(previous) => format!(" after {}", previous.describe()),
                    None => " at the start".to_string(),
                };
                let found = match found {
                    Some(token) => format!("found {}", token.describe()),
                    None => "the value ends".to_string(),
                };
                Err(syntax(format!("expected a mechanism or `(`{after}, but {found}")))
            }
        }
    }
}

/// The mechanism `name` stands for, or a problem that says what it might have meant.
fn mechanism(name: &str) -> Result<Mechanism, Problem> {
    if let Some(mechanism) = Mechanism::from_name(name) {
        return Ok(mechanism);
    }
    let known = Mechanism::ALL.map(Mechanism::name).join(", ");
    let hint = if let Some(level) = Consistency::from_name(name) {
        format!(
            "`{level}` is a consistency level, which must be the whole value (`consistency: {level}`), not part of a composition"
        )
    } else if let Some(level) = Durability::from_name(name) {
        format!(
            "`{level}` is a durability level, which must be the whole value (`durability: {level}`), not part of a composition"
        )
    } else if let Some((first, second)) = split_into_two_mechanisms(name) {
        format!("did you forget `+` or `|||` between `{first}` and `{second}`?")
    } else if let Some(suggestion) = closest(&normalise(name), Mechanism::ALL.map(Mechanism::name)) {
        format!("did you mean `{suggestion}`?")
    } else {
        String::new()
    };
    let separator = if hint.is_empty() { "" } else { "; " };
    Err(Problem::new(
        ErrorKind::UnknownName,
        format!("unknown mechanism `{name}`{separator}{hint}; the mechanisms are {known}"),
    ))
}

/// `name` as two mechanism names written with no operator between them, e.g. `local persist volatile apply`.
fn split_into_two_mechanisms(name: &str) -> Option<(Mechanism, Mechanism)> {
    let key = normalise(name);
    Mechanism::ALL.into_iter().find_map(|first| {
        let rest = key.strip_prefix(&normalise(first.name()))?;
        Mechanism::ALL.into_iter().find(|second| normalise(second.name()) == rest).map(|second| (first, second))
    })
}

fn check_duplicates(composition: &Composition) -> Result<(), Problem> {
    let mut seen = BTreeSet::new();
    let mut repeated = None;
    composition.for_each_mechanism(&mut |mechanism| {
        if !seen.insert(mechanism) && repeated.is_none() {
            repeated = Some(mechanism);
        }
    });
    match repeated {
        Some(mechanism) => Err(Problem::new(
            ErrorKind::Nonsensical,
            format!("`{mechanism}` appears more than once in `{composition}`; name each mechanism once"),
        )),
        None => Ok(()),
    }
}

/// Whether `consumer` works on the record that `recorder` writes: Stream and Local Persist on the
/// operations RPCs send, the persists and applies on the client journal.
fn consumes(consumer: Mechanism, recorder: Mechanism) -> bool {
    match recorder {
        Mechanism::Rpcs => matches!(consumer, Mechanism::Stream | Mechanism::LocalPersist),
        Mechanism::AppendClientJournal => matches!(
            consumer,
            Mechanism::VolatileApply | Mechanism::NonvolatileApply | Mechanism::LocalPersist | Mechanism::GlobalPersist
        ),
        _ => false,
    }
}

/// Rejects a mechanism that comes before, or runs in parallel with, the mechanism whose record it
/// works on (`volatile apply + append client journal`, `append client journal ||| local persist`):
/// there is nothing to apply or persist until the operation is recorded. Pairs that can never go
/// together (RPCs and Volatile Apply) are left to [`crate::rules`], which says why. Expects no
/// duplicates, so that each pair of mechanisms meets at exactly one `Seq` or `Par`.
pub(crate) fn check_order(composition: &Composition) -> Result<(), Problem> {
    let (parts, sequence) = match composition {
        Composition::Mechanism(_) => return Ok(()),
        Composition::Seq(parts) => (parts, true),
        Composition::Par(parts) => (parts, false),
    };
    let mechanisms: Vec<BTreeSet<Mechanism>> = parts.iter().map(Composition::mechanisms).collect();
    for (recorder_index, recorders) in mechanisms.iter().enumerate() {
        for (consumer_index, consumers) in mechanisms.iter().enumerate() {
            if recorder_index == consumer_index || (sequence && consumer_index > recorder_index) {
                continue;
            }
            for &recorder in recorders.iter().filter(|mechanism| mechanism.is_recorder()) {
                if let Some(&consumer) = consumers.iter().find(|&&consumer| consumes(consumer, recorder)) {
                    let relation = if sequence { "comes before" } else { "runs in parallel with" };
                    return Err(Problem::new(
                        ErrorKind::Nonsensical,
                        format!(
                            "`{consumer}` {relation} `{recorder}`, but it works on the operations `{recorder}` records; write `{recorder} + {consumer}`"
                        ),
                    ));
                }
            }
        }
    }
    parts.iter().try_for_each(check_order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Mechanism::*;

    fn leaf(mechanism: Mechanism) -> Composition {
        Composition::Mechanism(mechanism)
    }

    #[test]
    fn plus_binds_tighter_than_parallel() {
        // Proves the precedence decision: `a + b ||| c` is `(a + b) ||| c`, and `a + (b ||| c)` needs parentheses.
        let parsed = parse_expression("local persist + global persist ||| volatile apply").unwrap();
        let expected = Composition::Par(vec![
            Composition::Seq(vec![leaf(LocalPersist), leaf(GlobalPersist)]),
            leaf(VolatileApply),
        ]);
        assert_eq!(parsed, expected);
        assert_eq!(parsed.to_string(), "Local Persist + Global Persist ||| Volatile Apply");
        let grouped = parse_expression("local persist + (global persist ||| volatile apply)").unwrap();
        assert_eq!(
            grouped,
            Composition::Seq(vec![
                leaf(LocalPersist),
                Composition::Par(vec![leaf(GlobalPersist), leaf(VolatileApply)])
            ])
        );
    }

    #[test]
    fn parentheses_group_and_normalise() {
        // Proves grouping, flattening of nested sequences and the canonical Display.
        let parsed = parse_expression("append_client_journal + (local_persist ||| volatile_apply)").unwrap();
        assert_eq!(
            parsed,
            Composition::Seq(vec![
                leaf(AppendClientJournal),
                Composition::Par(vec![leaf(LocalPersist), leaf(VolatileApply)])
            ])
        );
        assert_eq!(parsed.to_string(), "Append Client Journal + (Local Persist ||| Volatile Apply)");
        let flattened = parse_expression("(append client journal + local persist) + ((volatile apply))").unwrap();
        assert_eq!(
            flattened,
            Composition::Seq(vec![leaf(AppendClientJournal), leaf(LocalPersist), leaf(VolatileApply)])
        );
        assert_eq!(parse_expression("(RPCs)").unwrap(), leaf(Rpcs));
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        // Proves each malformed expression is rejected with a message naming the problem.
        let cases = [
            ("rpcs +", "expected a mechanism or `(` after `+`, but the value ends"),
            ("+ rpcs", "at the start"),
            ("rpcs || stream", "`||` is not an operator"),
            ("rpcs | stream", "`|` is not an operator"),
            ("rpcs ||||| stream", "`|||||` is not an operator"),
            ("(rpcs + stream", "never closed"),
            ("rpcs + stream)", "no matching `(`"),
            ("rpcs, stream", "unexpected character `,`"),
            ("()", "expected a mechanism or `(` after `(`, but found `)`"),
            ("   ", "the value is empty"),
        ];
        for (text, expected) in cases {
            let problem = parse_expression(text).unwrap_err();
            assert_eq!(problem.kind, ErrorKind::CompositionSyntax, "{text}");
            assert!(problem.message.contains(expected), "{text}: {}", problem.message);
        }
    }

    #[test]
    fn unknown_names_get_a_hint() {
        // Proves unknown-mechanism messages suggest the likely fix.
        let cases = [
            ("volatle apply", "did you mean `Volatile Apply`?"),
            (
                "local persist volatile apply",
                "did you forget `+` or `|||` between `Local Persist` and `Volatile Apply`?",
            ),
            ("append client journal + weak", "`weak` is a consistency level"),
            ("rpcs + global", "`global` is a durability level"),
            ("frobnicate", "the mechanisms are RPCs, Stream"),
        ];
        for (text, expected) in cases {
            let problem = parse_expression(text).unwrap_err();
            assert_eq!(problem.kind, ErrorKind::UnknownName, "{text}");
            assert!(problem.message.contains(expected), "{text}: {}", problem.message);
        }
    }

    #[test]
    fn repeated_and_misordered_mechanisms_are_rejected() {
        // Proves duplicates and consumers placed before (or beside) their recorder are nonsensical.
        let cases = [
            ("local persist + local persist", "`Local Persist` appears more than once"),
            ("volatile apply + append client journal", "`Volatile Apply` comes before `Append Client Journal`"),
            (
                "append client journal ||| global persist",
                "`Global Persist` runs in parallel with `Append Client Journal`",
            ),
            ("stream + rpcs", "`Stream` comes before `RPCs`"),
            ("rpcs ||| stream", "write `RPCs + Stream`"),
        ];
        for (text, expected) in cases {
            let problem = parse_expression(text).unwrap_err();
            assert_eq!(problem.kind, ErrorKind::Nonsensical, "{text}");
            assert!(problem.message.contains(expected), "{text}: {}", problem.message);
        }
        // Consumers of the same journal may run in parallel once it exists.
        assert!(parse_expression("append client journal + (global persist ||| volatile apply)").is_ok());
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        // Proves the parser refuses pathological inputs instead of recursing or scanning without bound.
        let deep =
            format!("{}rpcs{}", "(".repeat(COMPOSITION_NESTING_MAX + 1), ")".repeat(COMPOSITION_NESTING_MAX + 1));
        assert!(parse_expression(&deep).unwrap_err().message.contains("nest deeper"));
        let allowed = format!("{}rpcs{}", "(".repeat(COMPOSITION_NESTING_MAX), ")".repeat(COMPOSITION_NESTING_MAX));
        assert_eq!(parse_expression(&allowed).unwrap(), leaf(Rpcs));
        let long = "rpcs ".repeat(COMPOSITION_TEXT_BYTES_MAX);
        assert!(parse_expression(&long).unwrap_err().message.contains("bytes long"));
    }

    fn arbitrary_composition() -> impl Strategy<Value = Composition> {
        let leaf = proptest::sample::select(Mechanism::ALL.to_vec()).prop_map(Composition::Mechanism);
        leaf.prop_recursive(4, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..4).prop_map(Composition::sequence),
                proptest::collection::vec(inner, 1..4).prop_map(Composition::parallel),
            ]
        })
    }

    proptest! {
        #[test]
        fn display_parses_back_or_is_rejected_for_meaning(composition in arbitrary_composition()) {
            // Proves Display of any normalised tree is valid syntax: it parses back to the same tree, or
            // is refused only for what it means (duplicates, order), never for how it is written.
            match parse_expression(&composition.to_string()) {
                Ok(parsed) => prop_assert_eq!(parsed, composition),
                Err(problem) => prop_assert_eq!(problem.kind, ErrorKind::Nonsensical, "{}", problem.message),
            }
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "[a-zA-Z_ +|()\\-,]{0,80}") {
            // Proves the tokenizer and parser return a result for any input built from the grammar's characters.
            let _ = parse_expression(&text);
        }
    }
}
