//! [`PolicyError`], the crate's one error type: which file, which key, what is wrong, and where.

use std::fmt;

/// What kind of problem a [`PolicyError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be read: missing, unreadable, too large or not UTF-8.
    Io,
    /// The text is not YAML, or not a mapping of keys to values.
    Syntax,
    /// A key that policies.yml does not define (the message lists the valid keys).
    UnknownKey,
    /// The same key given twice.
    DuplicateKey,
    /// A value of the wrong YAML type, e.g. a list where a mechanism name belongs.
    WrongType,
    /// A name that is not a mechanism, level or setting Cudele defines.
    UnknownName,
    /// A composition expression that does not parse: operators, parentheses, length.
    CompositionSyntax,
    /// Mechanisms that parse but make no sense together (paper §3.2), or contradict a level name.
    Nonsensical,
    /// A number or duration that is malformed or outside its bounds.
    OutOfRange,
}

/// A 1-based position in a policies file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1.
    pub column: usize,
}

/// A policies file that cannot be used, with enough context to fix it.
///
/// Displays as ``file:line:column: key `key`: message``, leaving out the parts that are unknown.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}{}: {message}", LocationSuffix(.location), KeySuffix(.key))]
pub struct PolicyError {
    /// The file: its path for [`crate::Policy::from_file`], the given source name for
    /// [`crate::Policy::parse`].
    pub file: String,
    /// The key whose value is at fault; `None` when the problem is the file as a whole (unreadable,
    /// not YAML, not a mapping).
    pub key: Option<String>,
    /// What is wrong, and usually how to fix it.
    pub message: String,
    /// Where in the file, when it is known.
    pub location: Option<Location>,
    /// The kind of problem, for callers that react differently to each.
    pub kind: ErrorKind,
    /// The I/O error behind an [`ErrorKind::Io`] problem.
    #[source]
    source: Option<std::io::Error>,
}

impl PolicyError {
    pub(crate) fn new(file: &str, key: Option<&str>, problem: Problem, location: Option<Location>) -> PolicyError {
        PolicyError {
            file: file.to_string(),
            key: key.map(str::to_string),
            message: problem.message,
            location,
            kind: problem.kind,
            source: None,
        }
    }

    pub(crate) fn io(file: &str, message: String, source: Option<std::io::Error>) -> PolicyError {
        PolicyError { file: file.to_string(), key: None, message, location: None, kind: ErrorKind::Io, source }
    }
}

/// Renders `:line:column`, or nothing when the location is unknown.
struct LocationSuffix<'a>(&'a Option<Location>);

impl fmt::Display for LocationSuffix<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(location) => write!(formatter, ":{}:{}", location.line, location.column),
            None => Ok(()),
        }
    }
}

/// Renders ``: key `name` ``, or nothing when the problem is not about one key.
struct KeySuffix<'a>(&'a Option<String>);

impl fmt::Display for KeySuffix<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(formatter, ": key `{key}`"),
            None => Ok(()),
        }
    }
}

/// A problem found by one of the pure checks, before the file, key and location are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Problem {
        Problem { kind, message: message.into() }
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    let allowed_edits = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word, &candidate.to_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= allowed_edits)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance in characters. Inputs are short (names bounded by the composition length).
fn edit_distance(source: &str, target: &str) -> usize {
    let target: Vec<char> = target.chars().collect();
    let mut previous: Vec<usize> = (0..=target.len()).collect();
    for (source_index, source_char) in source.chars().enumerate() {
        let mut current = Vec::with_capacity(target.len() + 1);
        current.push(source_index + 1);
        for (target_index, target_char) in target.iter().enumerate() {
            let substitution = previous[target_index] + usize::from(source_char != *target_char);
            let deletion = previous[target_index + 1] + 1;
            let insertion = current[target_index] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous[target.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_location_key_and_message() {
        // Proves the rendered error carries every part a user needs to find and fix the problem.
        let problem = Problem::new(ErrorKind::UnknownKey, "unknown key");
        let error = PolicyError::new("p.yml", Some("consistancy"), problem, Some(Location { line: 2, column: 1 }));
        assert_eq!(error.to_string(), "p.yml:2:1: key `consistancy`: unknown key");
        let problem = Problem::new(ErrorKind::Syntax, "not a mapping");
        assert_eq!(PolicyError::new("p.yml", None, problem, None).to_string(), "p.yml: not a mapping");
    }

    #[test]
    fn closest_suggests_only_near_misses() {
        // Proves typo suggestions find the intended word and stay quiet for unrelated words.
        let keys = ["consistency", "durability", "allocated_inodes"];
        assert_eq!(closest("consistancy", keys), Some("consistency"));
        assert_eq!(closest("Durabilty", keys), Some("durability"));
        assert_eq!(closest("colour", keys), None);
    }
}
