//! Random policies never panic the parser, and whatever it accepts is a consistent, round-tripping policy.

use proptest::prelude::*;

use cudele_policy::{Cell, Consistency, Durability, Mechanism, Policy};

/// Names the parser knows, near-misses, and junk, to build values from.
const WORDS: &[&str] = &[
    "RPCs",
    "rpc",
    "stream",
    "append client journal",
    "append_client_journal",
    "volatile apply",
    "nonvolatile apply",
    "Non-volatile Apply",
    "local persist",
    "global_persist",
    "none",
    "weak",
    "strong",
    "invisible",
    "local",
    "global",
    "journal",
    "",
    "+",
    "|||",
    "||",
    "(",
    ")",
    "#",
    ":",
    "\"",
    "'",
    "ümlaut",
];

/// Only names the parser accepts somewhere, so that a good share of random policies are valid.
const VALID_WORDS: &[&str] = &[
    "RPCs",
    "stream",
    "append client journal",
    "volatile apply",
    "nonvolatile apply",
    "local persist",
    "global persist",
    "none",
    "weak",
    "invisible",
    "local",
    "global",
];

const KEYS: &[&str] =
    &["consistency", "durability", "allocated_inodes", "interfere_policy", "sync_interval", "consistancy"];

const SCALARS: &[&str] = &[
    "0",
    "1",
    "100",
    "-1",
    "4294967296",
    "4294967297",
    "1e9",
    "2.5",
    "true",
    "~",
    "[]",
    "{}",
    "block",
    "allow",
    "BLOCK",
    "5s",
    "500ms",
    "99ms",
    "2m",
    "1h",
    "25h",
    "soon",
];

/// A composition-like value: words joined by operators, sometimes with stray parentheses.
fn expression() -> impl Strategy<Value = String> {
    expression_of(WORDS, &[" + ", " ||| ", " ", "+", " ) ", " ( "])
}

fn expression_of(words: &'static [&'static str], operators: &'static [&'static str]) -> impl Strategy<Value = String> {
    let word = proptest::sample::select(words);
    let operator = proptest::sample::select(operators);
    (word.clone(), proptest::collection::vec((operator, word), 0..5)).prop_map(|(first, rest)| {
        let mut text = first.to_string();
        for (operator, word) in rest {
            text.push_str(operator);
            text.push_str(word);
        }
        text
    })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        expression(),
        expression().prop_map(|text| format!("\"{}\"", text.replace('"', ""))),
        proptest::sample::select(SCALARS).prop_map(str::to_string),
    ]
}

fn document() -> impl Strategy<Value = String> {
    proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6)
        .prop_map(|entries| entries.into_iter().map(|(key, value)| format!("{key}: {value}\n")).collect())
}

/// Checks what must hold of any accepted policy.
fn check_accepted(policy: &Policy) -> Result<(), TestCaseError> {
    let mechanisms = policy.mechanisms();
    let cell = policy.cell();
    if mechanisms.contains(&Mechanism::NonvolatileApply) {
        prop_assert_eq!(cell, Cell::new(Consistency::Weak, Durability::Global));
    } else {
        prop_assert_eq!(&mechanisms, &cell.mechanisms(), "{}", cell);
    }
    prop_assert_eq!(policy.is_decoupled(), !mechanisms.contains(&Mechanism::Rpcs));
    prop_assert!(policy.sync_interval().is_none() || cell.consistency == Consistency::Weak);
    let text = policy.to_yaml();
    let reparsed = Policy::parse(&text, "canonical");
    prop_assert!(reparsed.is_ok(), "{}: {:?}", text, reparsed.err().map(|error| error.to_string()));
    prop_assert_eq!(&reparsed.unwrap(), policy);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        // Proves the parser returns a result, accepting or not, for any string at all.
        if let Ok(policy) = Policy::parse(&text, "random") {
            check_accepted(&policy)?;
        }
    }

    #[test]
    fn policy_shaped_documents_never_panic_and_accepted_ones_are_sound(text in document()) {
        // Proves random mixes of keys, mechanism names, operators and scalars are handled, and every
        // accepted policy is in the cell of its mechanisms and round-trips through to_yaml.
        match Policy::parse(&text, "random.yml") {
            Ok(policy) => check_accepted(&policy)?,
            Err(error) => {
                prop_assert_eq!(error.file.as_str(), "random.yml");
                prop_assert!(!error.message.is_empty());
            }
        }
    }

    #[test]
    fn composition_values_never_panic(
        consistency in expression_of(VALID_WORDS, &[" + ", " ||| "]),
        durability in expression_of(VALID_WORDS, &[" + ", " ||| "]),
    ) {
        // Proves random compositions in both keys are accepted soundly or rejected with an error naming a key.
        let text = format!("consistency: \"{}\"\ndurability: \"{}\"\n", consistency.replace('"', ""), durability.replace('"', ""));
        match Policy::parse(&text, "random.yml") {
            Ok(policy) => check_accepted(&policy)?,
            Err(error) => prop_assert!(error.key.is_some(), "{}", error),
        }
    }
}
