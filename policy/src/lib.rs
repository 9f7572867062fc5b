//! cudele-policy: `policies.yml` parsing and validation, the mechanism-composition language, the
//! consistency x durability cells and named presets (Cudele paper §3, DESIGN §5).
//!
//! ```
//! use cudele_policy::{Policy, Mechanism};
//!
//! let text = "
//! consistency: append client journal + volatile apply
//! durability: local persist
//! allocated_inodes: 100000
//! interfere_policy: block
//! ";
//! let policy = Policy::parse(text, "batchfs.yml")?;
//! assert_eq!(policy.cell().to_string(), "weak/local");
//! assert!(policy.is_decoupled());
//! assert!(policy.mechanisms().contains(&Mechanism::VolatileApply));
//! assert_eq!(Policy::parse(&policy.to_yaml(), "canonical")?, policy);
//! # Ok::<(), cudele_policy::PolicyError>(())
//! ```
//!
//! # policies.yml
//!
//! A YAML mapping; every key is optional and an empty file (or one of only comments) gives all
//! defaults. Unknown keys, keys given twice and values of the wrong type are errors.
//!
//! | key | default | value |
//! |---|---|---|
//! | `consistency` | `RPCs` | a composition of mechanisms, or a level: `invisible`, `weak`, `strong` |
//! | `durability` | global: `stream` with RPCs, `global persist` when decoupled | a composition, or a level: `none`, `local`, `global` |
//! | `allocated_inodes` | `100` | inodes reserved for the decoupling client, 1 ..= [`ALLOCATED_INODES_MAX`] (a quoted number is accepted, as in the paper's example) |
//! | `interfere_policy` | `allow` | `block` or `allow` (see [`Interference`]) |
//! | `sync_interval` | none | weak policies only: merge the client journal on this timer; `5s`, `500ms`, `2m`, `1h` or whole seconds, [`SYNC_INTERVAL_MIN_MS`] ms ..= [`SYNC_INTERVAL_MAX_SECONDS`] s |
//!
//! ## Compositions
//!
//! Mechanism names are case-insensitive and may use spaces, `_` or `-` between words (`RPCs`,
//! `append_client_journal`, `Non-volatile Apply`). `a + b` runs `b` after `a` completes; `a ||| b`
//! runs them at the same time; `+` binds tighter than `|||`; parentheses group. See [`Composition`]
//! for the grammar. Within one expression, each mechanism appears once, and a mechanism that works on
//! a record (Stream and Local Persist on the operations of RPCs; the persists and applies on the
//! client journal) must come after the recorder with `+`, not before it nor beside it with `|||`:
//! `append client journal + (local persist ||| volatile apply)` is fine,
//! `volatile apply + append client journal` is not.
//!
//! ## The policy is the union of both keys
//!
//! A policy's mechanisms are the union of the `consistency` and `durability` expressions; either key
//! may hold any mechanism, so the paper's one-line form of a cell
//! (`consistency: append client journal + local persist + volatile apply`) works too. The union
//! must name exactly one recorder (`RPCs`, or `append client journal` to decouple) and only what
//! works on it, and at most one apply and one durability: RPCs with append client journal, stream
//! without RPCs, global persist or an apply with RPCs, volatile with nonvolatile apply, local persist
//! with any global mechanism, and a mechanism in both keys are rejected with the reason. A default
//! only fills an axis the other key leaves open: `consistency` defaults to `RPCs` unless `durability`
//! names a recorder, and `durability` defaults to global durability unless `consistency` names a
//! durability mechanism. The default durability is the paper's `stream` for RPCs; `stream` cannot
//! run without RPCs, so for a decoupled subtree the same (global) durability is `global persist`.
//!
//! ## Level names
//!
//! A key's whole value may be a level name from the paper's Table 2, which expands to that cell's
//! mechanisms: `consistency: invisible` = `append client journal`, `weak` = `append client journal +
//! volatile apply`, `strong` = `RPCs`; `durability: none` = no mechanism, `local` = `local persist`,
//! `global` = `global persist` when the consistency decouples (names `append client journal`) and
//! `stream` otherwise. A level is also a promise: if the other key's mechanisms move the policy to
//! another consistency or durability (`consistency: invisible` with a `volatile apply` in
//! `durability`), it is an error.
//!
//! ## The cells (Table 2)
//!
//! | durability \ consistency | invisible | weak | strong |
//! |---|---|---|---|
//! | none | append client journal | append client journal + volatile apply | RPCs |
//! | local | append client journal + local persist | append client journal + local persist + volatile apply | RPCs + local persist |
//! | global | append client journal + global persist | append client journal + global persist + volatile apply | RPCs + stream |
//!
//! Nonvolatile Apply writes the client journal to the object store and has the MDS replay it into
//! its persistent store: it merges (weak) and is globally durable in one mechanism, so `append
//! client journal + nonvolatile apply` is also weak/global, with or without `global persist` (which
//! is its first half). With `local persist` it is rejected: global already covers local.
//!
//! # Layout
//! - [`mechanism`]: [`Mechanism`], the seven mechanisms of Table 1 and their accepted spellings.
//! - [`composition`]: [`Composition`], the `+` / `|||` language: parser, normal form, canonical text.
//! - [`cell`]: [`Consistency`], [`Durability`] and [`Cell`], the table and each cell's mechanisms.
//! - `rules`: the checks on the union of both keys, which reject nonsense and find the cell.
//! - `document`: reading the YAML mapping, each value checked where yaml_serde can locate it.
//! - `interval`: `sync_interval` durations.
//! - [`policy`]: [`Policy`], defaults, level names, `to_yaml`; [`Interference`].
//! - [`preset`]: [`Preset`], named policies (posix, batchfs, deltafs, checkpoint, ramdisk).
//! - [`error`]: [`PolicyError`], the crate's one error type: file, key, message, location, kind.

pub mod cell;
pub mod composition;
mod document;
pub mod error;
mod interval;
pub mod mechanism;
pub mod policy;
pub mod preset;
mod rules;

pub use cell::{Cell, Consistency, Durability};
pub use composition::{Composition, COMPOSITION_NESTING_MAX, COMPOSITION_TEXT_BYTES_MAX};
pub use error::{ErrorKind, Location, PolicyError};
pub use interval::{SYNC_INTERVAL_MAX_SECONDS, SYNC_INTERVAL_MIN_MS};
pub use mechanism::Mechanism;
pub use policy::{Interference, Policy, ALLOCATED_INODES_DEFAULT, ALLOCATED_INODES_MAX, POLICY_TEXT_BYTES_MAX};
pub use preset::Preset;
