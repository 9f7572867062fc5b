//! Every policy file in examples/policies parses, lands in the cell its name promises, matches its
//! preset where it has one, and survives a round trip through `to_yaml`.

use std::path::PathBuf;
use std::time::Duration;

use cudele_policy::{Cell, Consistency, Durability, Policy, Preset};

fn examples_directory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

fn expected_cell(file_name: &str) -> Option<Cell> {
    use Consistency::{Invisible, Strong, Weak};
    let cell = match file_name {
        "posix.yml" => Cell::new(Strong, Durability::Global),
        "strong-local.yml" => Cell::new(Strong, Durability::Local),
        "strong-none.yml" => Cell::new(Strong, Durability::None),
        "batchfs.yml" => Cell::new(Weak, Durability::Local),
        "checkpoint.yml" => Cell::new(Weak, Durability::Global),
        "weak-global.yml" => Cell::new(Weak, Durability::Global),
        "weak-sync.yml" => Cell::new(Weak, Durability::Global),
        "weak-none.yml" => Cell::new(Weak, Durability::None),
        "deltafs.yml" => Cell::new(Invisible, Durability::Local),
        "invisible-global.yml" => Cell::new(Invisible, Durability::Global),
        "ramdisk.yml" => Cell::new(Invisible, Durability::None),
        _ => return None,
    };
    Some(cell)
}

#[test]
fn every_example_parses_to_its_cell() {
    // Proves each example file is valid, in the expected cell, and canonicalises without change of meaning.
    let mut entries: Vec<PathBuf> = std::fs::read_dir(examples_directory())
        .expect("examples/policies exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yml" || extension == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 6, "expected the example policies, found {entries:?}");
    for path in entries {
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let policy = Policy::from_file(&path).unwrap_or_else(|error| panic!("{error}"));
        let expected = expected_cell(&file_name)
            .unwrap_or_else(|| panic!("{file_name} is not listed in tests/examples.rs; add its expected cell"));
        assert_eq!(policy.cell(), expected, "{file_name}");
        let reparsed = Policy::parse(&policy.to_yaml(), &file_name).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(reparsed, policy, "{file_name} round trip");
    }
}

#[test]
fn every_cell_has_an_example() {
    // Proves the examples cover the whole consistency x durability table.
    for cell in Cell::ALL {
        let covered = std::fs::read_dir(examples_directory())
            .unwrap()
            .filter_map(|entry| expected_cell(&entry.unwrap().file_name().to_string_lossy()))
            .any(|example_cell| example_cell == cell);
        assert!(covered, "no example policy for {cell}");
    }
}

#[test]
fn preset_examples_equal_their_presets() {
    // Proves `<preset>.yml` and `Preset::<preset>` are the same policy, so the CLI may offer either.
    for preset in Preset::ALL {
        let path = examples_directory().join(format!("{}.yml", preset.name()));
        let policy = Policy::from_file(&path).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(policy, preset.policy(), "{}", path.display());
    }
}

#[test]
fn weak_sync_example_sets_its_interval() {
    // Proves the namespace-sync example carries the interval its comments promise.
    let policy = Policy::from_file(examples_directory().join("weak-sync.yml")).unwrap();
    assert_eq!(policy.sync_interval(), Some(Duration::from_secs(5)));
}
