//! policies.yml parsing through the public API: every cell, level names, defaults, each rejection,
//! error locations, files, and the canonical text round trip.

use std::collections::BTreeSet;
use std::time::Duration;

use cudele_policy::{
    Cell, Composition, Consistency, Durability, ErrorKind, Interference, Location, Mechanism, Policy, PolicyError,
    Preset, ALLOCATED_INODES_MAX, POLICY_TEXT_BYTES_MAX,
};
use Mechanism::*;

fn parse(text: &str) -> Policy {
    Policy::parse(text, "test.yml").unwrap_or_else(|error| panic!("{text:?}: {error}"))
}

fn reject(text: &str) -> PolicyError {
    match Policy::parse(text, "test.yml") {
        Ok(policy) => panic!("{text:?} was accepted as {}", policy.cell()),
        Err(error) => error,
    }
}

fn set(mechanisms: &[Mechanism]) -> BTreeSet<Mechanism> {
    mechanisms.iter().copied().collect()
}

fn cell(consistency: Consistency, durability: Durability) -> Cell {
    Cell::new(consistency, durability)
}

#[test]
fn empty_files_mean_the_defaults() {
    // Proves an empty file, or one with only comments, is the paper's default: RPCs + stream, 100, allow.
    for text in ["", "\n", "# nothing here\n# at all\n", "---\n"] {
        let policy = parse(text);
        assert_eq!(policy, Policy::default(), "{text:?}");
    }
    let policy = Policy::default();
    assert_eq!(policy.cell(), cell(Consistency::Strong, Durability::Global));
    assert_eq!(policy.mechanisms(), set(&[Rpcs, Stream]));
    assert_eq!(policy.allocated_inodes(), 100);
    assert_eq!(policy.interfere(), Interference::Allow);
    assert_eq!(policy.sync_interval(), None);
    assert!(!policy.is_decoupled());
}

#[test]
fn every_cell_from_its_table_2_mechanisms() {
    // Proves each Table 2 composition, split over the two keys as the paper's examples do, lands in its cell.
    use Consistency::{Invisible, Strong, Weak};
    let cases = [
        ("append client journal", "none", cell(Invisible, Durability::None)),
        ("append client journal + volatile apply", "none", cell(Weak, Durability::None)),
        ("RPCs", "none", cell(Strong, Durability::None)),
        ("append client journal", "local persist", cell(Invisible, Durability::Local)),
        ("append client journal + volatile apply", "local persist", cell(Weak, Durability::Local)),
        ("RPCs", "local persist", cell(Strong, Durability::Local)),
        ("append client journal", "global persist", cell(Invisible, Durability::Global)),
        ("append client journal + volatile apply", "global persist", cell(Weak, Durability::Global)),
        ("RPCs", "stream", cell(Strong, Durability::Global)),
    ];
    for (consistency, durability, expected) in cases {
        let policy = parse(&format!("consistency: {consistency}\ndurability: {durability}\n"));
        assert_eq!(policy.cell(), expected, "{consistency} / {durability}");
        assert_eq!(policy.mechanisms(), expected.mechanisms(), "{consistency} / {durability}");
        assert_eq!(policy.is_decoupled(), expected.consistency != Strong);
    }
}

#[test]
fn every_cell_from_one_line_as_table_2_writes_it() {
    // Proves the whole cell may be written in `consistency`, in Table 2's own order and spelling.
    use Consistency::{Invisible, Weak};
    let cases = [
        ("append client journal + local persist", cell(Invisible, Durability::Local)),
        ("append client journal + local persist + volatile apply", cell(Weak, Durability::Local)),
        ("append client journal + global persist", cell(Invisible, Durability::Global)),
        ("append client journal + global persist + volatile apply", cell(Weak, Durability::Global)),
        ("RPCs + local persist", cell(Consistency::Strong, Durability::Local)),
        ("RPCs + stream", cell(Consistency::Strong, Durability::Global)),
    ];
    for (consistency, expected) in cases {
        let policy = parse(&format!("consistency: {consistency}\n"));
        assert_eq!(policy.cell(), expected, "{consistency}");
        assert!(policy.durability().is_none(), "{consistency}: the durability default must not be added");
    }
}

#[test]
fn every_cell_from_level_names() {
    // Proves `consistency: <level>` and `durability: <level>` expand to exactly the cell's Table 2 mechanisms.
    for expected in Cell::ALL {
        let text = format!("consistency: {}\ndurability: {}\n", expected.consistency, expected.durability);
        let policy = parse(&text);
        assert_eq!(policy.cell(), expected, "{text}");
        assert_eq!(policy.mechanisms(), expected.mechanisms(), "{text}");
        assert_eq!(policy, Policy::for_cell(expected), "{text}");
    }
    // Level names are case-insensitive and mix with mechanism expressions on the other key.
    assert_eq!(parse("consistency: WEAK\ndurability: Local\n").cell(), cell(Consistency::Weak, Durability::Local));
    let policy = parse("consistency: append client journal\ndurability: global\n");
    assert_eq!(policy.mechanisms(), set(&[AppendClientJournal, GlobalPersist]));
    let policy = parse("consistency: rpcs\ndurability: global\n");
    assert_eq!(policy.mechanisms(), set(&[Rpcs, Stream]));
    let policy = parse("durability: local\n");
    assert_eq!(policy.mechanisms(), set(&[Rpcs, LocalPersist]));
}

#[test]
fn paper_spellings_are_accepted() {
    // Proves the paper's §3.3 DeltaFS and BatchFS configurations (JSON style, snake_case, quoted numbers) parse.
    let deltafs = r#"{"allocated_inodes": "100000", "interfere_policy": "block",
                      "consistency": "append_client_journal", "durability": "local_persist"}"#;
    let policy = parse(deltafs);
    assert_eq!(policy.cell(), cell(Consistency::Invisible, Durability::Local));
    assert_eq!(policy.allocated_inodes(), 100_000);
    assert_eq!(policy.interfere(), Interference::Block);
    let batchfs = "\"allocated_inodes\": \"100000\"\n\"interfere_policy\": \"block\"\n\
                   \"consistency\": \"append_client_journal+volatile_apply\"\n\"durability\": \"local_persist\"\n";
    let policy = parse(batchfs);
    assert_eq!(policy, Preset::BatchFs.policy());
    let shouting = parse("consistency: APPEND CLIENT JOURNAL + Volatile-Apply\ndurability: Local_Persist\n");
    assert_eq!(shouting.cell(), cell(Consistency::Weak, Durability::Local));
    assert_eq!(parse("consistency: rpcs\ndurability: STREAM\n"), Policy::default());
}

#[test]
fn nonvolatile_apply_is_weak_and_global() {
    // Proves the documented mapping: nonvolatile apply merges through the object store, so weak/global.
    let weak_global = cell(Consistency::Weak, Durability::Global);
    let policy = parse("consistency: append client journal + nonvolatile apply\n");
    assert_eq!(policy.cell(), weak_global);
    assert_eq!(policy.mechanisms(), set(&[AppendClientJournal, NonvolatileApply]));
    assert!(policy.durability().is_none(), "nonvolatile apply covers durability, so no default is added");
    // With global persist (its first half) spelled out, or `durability: global`, it is the same cell.
    let policy = parse("consistency: append client journal + nonvolatile apply\ndurability: global persist\n");
    assert_eq!(policy.cell(), weak_global);
    let policy = parse("consistency: append client journal + nonvolatile apply\ndurability: global\n");
    assert_eq!(policy.mechanisms(), set(&[AppendClientJournal, NonvolatileApply, GlobalPersist]));
}

#[test]
fn defaults_fill_only_the_axis_left_open() {
    // Proves the default-resolution rules: RPCs unless durability records; global durability unless consistency persists.
    let policy = parse("durability: local persist\n");
    assert_eq!(policy.consistency(), &Composition::Mechanism(Rpcs));
    assert_eq!(policy.cell(), cell(Consistency::Strong, Durability::Local));
    let policy = parse("consistency: append client journal + volatile apply\n");
    assert_eq!(policy.durability(), &Composition::Mechanism(GlobalPersist));
    assert_eq!(policy.cell(), cell(Consistency::Weak, Durability::Global));
    let policy = parse("consistency: RPCs\n");
    assert_eq!(policy.durability(), &Composition::Mechanism(Stream));
    let policy = parse("durability: append client journal + local persist\n");
    assert!(policy.consistency().is_none());
    assert_eq!(policy.cell(), cell(Consistency::Invisible, Durability::Local));
}

#[test]
fn compositions_keep_their_structure() {
    // Proves `+` and `|||` are kept as an AST (sequence of a parallel here) and flattened to a set.
    let policy = parse("consistency: append client journal + (local persist ||| volatile apply)\n");
    let expected = Composition::Seq(vec![
        Composition::Mechanism(AppendClientJournal),
        Composition::Par(vec![Composition::Mechanism(LocalPersist), Composition::Mechanism(VolatileApply)]),
    ]);
    assert_eq!(policy.consistency(), &expected);
    assert_eq!(policy.mechanisms(), set(&[AppendClientJournal, LocalPersist, VolatileApply]));
    assert_eq!(policy.cell(), cell(Consistency::Weak, Durability::Local));
}

#[test]
fn settings_are_read() {
    // Proves allocated_inodes, interfere_policy and sync_interval values, including the bounds themselves.
    let policy = parse(
        "consistency: weak\ndurability: local\nallocated_inodes: 4294967296\ninterfere_policy: BLOCK\nsync_interval: 500ms\n",
    );
    assert_eq!(policy.allocated_inodes(), ALLOCATED_INODES_MAX);
    assert_eq!(policy.interfere(), Interference::Block);
    assert_eq!(policy.sync_interval(), Some(Duration::from_millis(500)));
    let policy = parse("consistency: weak\nsync_interval: 30\nallocated_inodes: 1\n");
    assert_eq!(policy.sync_interval(), Some(Duration::from_secs(30)));
    assert_eq!(policy.allocated_inodes(), 1);
}

/// One rejection: the policy text, the key the error must name (None for whole-file problems), its
/// kind, and fragments its message must contain.
struct Rejection {
    text: &'static str,
    key: Option<&'static str>,
    kind: ErrorKind,
    fragments: &'static [&'static str],
}

const REJECTIONS: &[Rejection] = &[
    // Unknown and repeated keys.
    Rejection {
        text: "consistancy: RPCs\n",
        key: Some("consistancy"),
        kind: ErrorKind::UnknownKey,
        fragments: &[
            "unknown key",
            "did you mean `consistency`?",
            "consistency, durability, allocated_inodes, interfere_policy, sync_interval",
        ],
    },
    Rejection {
        text: "colour: blue\n",
        key: Some("colour"),
        kind: ErrorKind::UnknownKey,
        fragments: &["unknown key", "valid keys are"],
    },
    Rejection {
        text: "7: RPCs\n",
        key: None,
        kind: ErrorKind::UnknownKey,
        fragments: &["keys are names", "the number 7"],
    },
    Rejection {
        text: "durability: none\ndurability: none\n",
        key: Some("durability"),
        kind: ErrorKind::DuplicateKey,
        fragments: &["more than once"],
    },
    // Unknown names.
    Rejection {
        text: "consistency: append client jurnal\n",
        key: Some("consistency"),
        kind: ErrorKind::UnknownName,
        fragments: &["unknown mechanism `append client jurnal`", "did you mean `Append Client Journal`?"],
    },
    Rejection {
        text: "durability: local persist global persist\n",
        key: Some("durability"),
        kind: ErrorKind::UnknownName,
        fragments: &["did you forget `+` or `|||` between `Local Persist` and `Global Persist`?"],
    },
    Rejection {
        text: "consistency: none\n",
        key: Some("consistency"),
        kind: ErrorKind::UnknownName,
        fragments: &["`none` is a durability level"],
    },
    Rejection {
        text: "durability: strong\n",
        key: Some("durability"),
        kind: ErrorKind::UnknownName,
        fragments: &["`strong` is a consistency level"],
    },
    Rejection {
        text: "consistency: weak + local persist\n",
        key: Some("consistency"),
        kind: ErrorKind::UnknownName,
        fragments: &["`weak` is a consistency level, which must be the whole value"],
    },
    Rejection {
        text: "interfere_policy: deny\n",
        key: Some("interfere_policy"),
        kind: ErrorKind::UnknownName,
        fragments: &["unknown interfere policy `deny`", "`block`", "`allow`"],
    },
    // Composition syntax.
    Rejection {
        text: "consistency: rpcs || stream\n",
        key: Some("consistency"),
        kind: ErrorKind::CompositionSyntax,
        fragments: &["`||` is not an operator", "`|||`"],
    },
    Rejection {
        text: "consistency: \"rpcs +\"\n",
        key: Some("consistency"),
        kind: ErrorKind::CompositionSyntax,
        fragments: &["expected a mechanism", "after `+`"],
    },
    Rejection {
        text: "consistency: (rpcs\n",
        key: Some("consistency"),
        kind: ErrorKind::CompositionSyntax,
        fragments: &["never closed"],
    },
    Rejection {
        text: "consistency: \"\"\n",
        key: Some("consistency"),
        kind: ErrorKind::CompositionSyntax,
        fragments: &["empty"],
    },
    // Nonsensical compositions (paper §3.2).
    Rejection {
        text: "consistency: RPCs + append client journal\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`RPCs` and `Append Client Journal` both record every operation"],
    },
    Rejection {
        text: "consistency: RPCs\ndurability: append client journal + local persist\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`RPCs` (in `consistency`)", "`Append Client Journal` (in `durability`)"],
    },
    Rejection {
        text: "consistency: RPCs\ndurability: stream + local persist\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Local Persist` gives local durability and `Stream` global durability", "keep one"],
    },
    Rejection {
        text: "consistency: append client journal\ndurability: stream\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Stream` (in `durability`) streams the MDS journal", "use `Global Persist`"],
    },
    Rejection {
        text: "consistency: volatile apply\ndurability: none\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["no mechanism records the operations", "`Volatile Apply` only works on such a record"],
    },
    Rejection {
        text: "consistency: RPCs + volatile apply\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Volatile Apply` works on a client journal, but with `RPCs` the client keeps none"],
    },
    Rejection {
        text: "durability: global persist\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Global Persist` (in `durability`)", "`RPCs` (the default `consistency`)", "use `Stream`"],
    },
    Rejection {
        text: "consistency: append client journal\ndurability: local persist ||| global persist\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Local Persist` gives local durability and `Global Persist` global durability"],
    },
    Rejection {
        text: "consistency: append client journal + nonvolatile apply\ndurability: local persist\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &[
            "`Local Persist` (in `durability`) gives local durability",
            "`Nonvolatile Apply` (in `consistency`) global",
        ],
    },
    Rejection {
        text: "consistency: append client journal + volatile apply + nonvolatile apply\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["both merge the client journal; choose one"],
    },
    Rejection {
        text: "consistency: volatile apply + append client journal\ndurability: none\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &[
            "`Volatile Apply` comes before `Append Client Journal`",
            "write `Append Client Journal + Volatile Apply`",
        ],
    },
    Rejection {
        text: "consistency: append client journal ||| local persist\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Local Persist` runs in parallel with `Append Client Journal`"],
    },
    Rejection {
        text: "consistency: append client journal + local persist\ndurability: local persist\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`Local Persist` appears in both `consistency` and `durability`"],
    },
    Rejection {
        text: "consistency: RPCs + RPCs\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["`RPCs` appears more than once"],
    },
    // Level names are promises.
    Rejection {
        text: "consistency: append client journal + nonvolatile apply\ndurability: none\n",
        key: Some("durability"),
        kind: ErrorKind::Nonsensical,
        fragments: &["is `none`", "which give global durability"],
    },
    Rejection {
        text: "consistency: invisible\ndurability: volatile apply\n",
        key: Some("consistency"),
        kind: ErrorKind::Nonsensical,
        fragments: &["is `invisible`", "which give weak consistency"],
    },
    // allocated_inodes.
    Rejection {
        text: "allocated_inodes: 0\n",
        key: Some("allocated_inodes"),
        kind: ErrorKind::OutOfRange,
        fragments: &["at least 1"],
    },
    Rejection {
        text: "allocated_inodes: -5\n",
        key: Some("allocated_inodes"),
        kind: ErrorKind::OutOfRange,
        fragments: &["at least 1"],
    },
    Rejection {
        text: "allocated_inodes: 4294967297\n",
        key: Some("allocated_inodes"),
        kind: ErrorKind::OutOfRange,
        fragments: &["4294967297 is more than", "4294967296"],
    },
    Rejection {
        text: "allocated_inodes: 340282366920938463463374607431768211455\n",
        key: Some("allocated_inodes"),
        kind: ErrorKind::OutOfRange,
        fragments: &["more than the most one decoupled subtree may reserve"],
    },
    Rejection {
        text: "allocated_inodes: many\n",
        key: Some("allocated_inodes"),
        kind: ErrorKind::WrongType,
        fragments: &["expected a whole number", "the string `many`"],
    },
    Rejection {
        text: "allocated_inodes: 2.5\n",
        key: Some("allocated_inodes"),
        kind: ErrorKind::WrongType,
        fragments: &["a number with a fraction"],
    },
    // sync_interval.
    Rejection {
        text: "consistency: weak\nsync_interval: soon\n",
        key: Some("sync_interval"),
        kind: ErrorKind::OutOfRange,
        fragments: &["`soon` is not a duration"],
    },
    Rejection {
        text: "consistency: weak\nsync_interval: 0\n",
        key: Some("sync_interval"),
        kind: ErrorKind::OutOfRange,
        fragments: &["shorter than the shortest interval"],
    },
    Rejection {
        text: "consistency: weak\nsync_interval: 2d\n",
        key: Some("sync_interval"),
        kind: ErrorKind::OutOfRange,
        fragments: &["not a duration"],
    },
    Rejection {
        text: "consistency: weak\nsync_interval: 48h\n",
        key: Some("sync_interval"),
        kind: ErrorKind::OutOfRange,
        fragments: &["longer than the longest interval"],
    },
    Rejection {
        text: "consistency: weak\nsync_interval: 1.5\n",
        key: Some("sync_interval"),
        kind: ErrorKind::OutOfRange,
        fragments: &["`500ms`"],
    },
    Rejection {
        text: "sync_interval: 5s\n",
        key: Some("sync_interval"),
        kind: ErrorKind::Nonsensical,
        fragments: &["strong/global", "already visible"],
    },
    Rejection {
        text: "consistency: invisible\ndurability: local\nsync_interval: 5s\n",
        key: Some("sync_interval"),
        kind: ErrorKind::Nonsensical,
        fragments: &["invisible/local", "never merged by the system"],
    },
    // Wrong YAML types and shapes.
    Rejection {
        text: "consistency: [RPCs, stream]\n",
        key: Some("consistency"),
        kind: ErrorKind::WrongType,
        fragments: &["found a list"],
    },
    Rejection {
        text: "durability: {local: persist}\n",
        key: Some("durability"),
        kind: ErrorKind::WrongType,
        fragments: &["found a mapping"],
    },
    Rejection {
        text: "durability: 3\n",
        key: Some("durability"),
        kind: ErrorKind::WrongType,
        fragments: &["found the number 3"],
    },
    Rejection {
        text: "durability:\n",
        key: Some("durability"),
        kind: ErrorKind::WrongType,
        fragments: &["has no value", "`none`"],
    },
    Rejection {
        text: "interfere_policy: false\n",
        key: Some("interfere_policy"),
        kind: ErrorKind::WrongType,
        fragments: &["found a boolean"],
    },
    Rejection {
        text: "sync_interval: [5s]\n",
        key: Some("sync_interval"),
        kind: ErrorKind::WrongType,
        fragments: &["found a list"],
    },
    Rejection {
        text: "- consistency: RPCs\n",
        key: None,
        kind: ErrorKind::Syntax,
        fragments: &["a mapping of keys to values", "a list"],
    },
    Rejection {
        text: "RPCs + stream\n",
        key: None,
        kind: ErrorKind::Syntax,
        fragments: &["a mapping of keys to values", "the string `RPCs + stream`"],
    },
    Rejection {
        text: "consistency: 'RPCs'\n  durability: stream\n",
        key: None,
        kind: ErrorKind::Syntax,
        fragments: &["at line 2"],
    },
    Rejection {
        text: "consistency: \"RPCs\n",
        key: Some("consistency"),
        kind: ErrorKind::Syntax,
        fragments: &["quoted scalar"],
    },
];

#[test]
fn rejections_name_the_file_the_key_and_the_problem() {
    // Proves every kind of bad policy is refused, and the error names test.yml, the key and what is wrong.
    for rejection in REJECTIONS {
        let error = reject(rejection.text);
        let shown = error.to_string();
        assert_eq!(error.file, "test.yml", "{shown}");
        assert!(shown.starts_with("test.yml"), "{shown}");
        assert_eq!(error.key.as_deref(), rejection.key, "{:?}: {shown}", rejection.text);
        if let Some(key) = rejection.key {
            assert!(shown.contains(&format!("key `{key}`")), "{shown}");
        }
        assert_eq!(error.kind, rejection.kind, "{:?}: {shown}", rejection.text);
        for fragment in rejection.fragments {
            assert!(shown.contains(fragment), "{:?}: expected {fragment:?} in: {shown}", rejection.text);
        }
    }
}

#[test]
fn errors_point_at_the_line_and_column() {
    // Proves value errors point at the value, key errors at the key, and multi-key errors at the blamed key's line.
    let error = reject("consistency: RPCs\n\ninterfere_policy: sometimes\n");
    assert_eq!(error.location, Some(Location { line: 3, column: 19 }));
    assert!(error.to_string().starts_with("test.yml:3:19: key `interfere_policy`: "), "{error}");
    let error = reject("# header\nconsistency: weak\ndurabilty: local\n");
    assert_eq!(error.location, Some(Location { line: 3, column: 1 }));
    let error = reject("durability: stream\n# note\nconsistency: append client journal\n");
    assert_eq!(error.key.as_deref(), Some("durability"));
    assert_eq!(error.location, Some(Location { line: 1, column: 1 }));
    let error = reject("consistency: append client journal\ndurability: stream\n");
    assert_eq!(error.location, Some(Location { line: 2, column: 1 }));
}

#[test]
fn to_yaml_round_trips() {
    // Proves the canonical text parses back to an equal policy, and is itself stable.
    let mut policies: Vec<Policy> = Cell::ALL.into_iter().map(Policy::for_cell).collect();
    policies.extend(Preset::ALL.map(Preset::policy));
    for text in [
        "consistency: append client journal + (local persist ||| volatile apply)\n",
        "consistency: append client journal + nonvolatile apply\n",
        "consistency: append client journal + nonvolatile apply\ndurability: global persist\n",
        "consistency: append client journal + local persist + volatile apply\n",
        "durability: append client journal + global persist\n",
        "consistency: weak\ndurability: none\nsync_interval: 1500ms\nallocated_inodes: 7\ninterfere_policy: block\n",
        "consistency: weak\nsync_interval: 2m\n",
        "consistency: RPCs + stream\n",
    ] {
        policies.push(parse(text));
    }
    for policy in policies {
        let text = policy.to_yaml();
        let reparsed = Policy::parse(&text, "canonical.yml").unwrap_or_else(|error| panic!("{text}\n{error}"));
        assert_eq!(reparsed, policy, "{text}");
        assert_eq!(reparsed.to_yaml(), text);
    }
}

#[test]
fn to_yaml_is_readable() {
    // Proves the canonical text uses the paper's names and writes every setting.
    assert_eq!(
        Policy::default().to_yaml(),
        "consistency: \"RPCs\"\ndurability: \"Stream\"\nallocated_inodes: 100\ninterfere_policy: allow\n"
    );
    assert_eq!(
        parse("consistency: weak\ndurability: none\nsync_interval: 5s\n").to_yaml(),
        "consistency: \"Append Client Journal + Volatile Apply\"\ndurability: none\nallocated_inodes: 100\ninterfere_policy: allow\nsync_interval: 5s\n"
    );
}

#[test]
fn from_file_names_the_path() {
    // Proves files are read, and missing, non-UTF-8 and oversized files are refused with their path.
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("batchfs.yml");
    std::fs::write(&path, "consistency: weak\ndurability: local\n").unwrap();
    assert_eq!(Policy::from_file(&path).unwrap().cell(), cell(Consistency::Weak, Durability::Local));

    std::fs::write(&path, "consistency: weak\ndurability: lcal\n").unwrap();
    let error = Policy::from_file(&path).unwrap_err();
    assert_eq!(error.file, path.display().to_string());
    assert!(error.to_string().starts_with(&format!("{}:2:13: key `durability`", path.display())), "{error}");

    let missing = directory.path().join("missing.yml");
    let error = Policy::from_file(&missing).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Io);
    assert!(error.to_string().contains("missing.yml"), "{error}");
    assert!(std::error::Error::source(&error).is_some());

    std::fs::write(&path, b"consistency: \xff\n").unwrap();
    assert!(Policy::from_file(&path).unwrap_err().to_string().contains("not UTF-8"));

    std::fs::write(&path, format!("# {}\n", "x".repeat(POLICY_TEXT_BYTES_MAX))).unwrap();
    assert!(Policy::from_file(&path).unwrap_err().to_string().contains("larger than"));
}

#[test]
fn oversized_text_is_refused() {
    // Proves parse bounds its input as from_file does.
    let text = format!("# {}\n", "x".repeat(POLICY_TEXT_BYTES_MAX));
    assert!(reject(&text).to_string().contains("at most 65536"));
}
