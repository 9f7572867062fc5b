//! Crash test: concurrent clients mutate while the MDS is killed with SIGKILL at a random
//! moment, then restarted on the same data dir; every acknowledged mutation must be there and
//! the namespace invariants must hold.
//!
//! Each client works in its own directory (files, symlinks, subdirectories, hard links,
//! renames and exchanges, chmod, truncate, xattrs) and in one shared directory (names
//! carrying its prefix), and keeps a model of its part of the namespace updated after every
//! acknowledged reply. The one request in flight when the MDS died may or may not have
//! happened: the observed state must equal the model, or the model with that request applied.
//!
//! The MDS runs with a 50 ms flush interval and a 300 ms snapshot interval, so kills land
//! during flushes, snapshots and segment trims. Random choices come from one seed, printed at
//! the start; `CUDELE_CRASH_SEED=<seed>` replays it (up to thread scheduling) and
//! `CUDELE_CRASH_ITERATIONS=<n>` runs longer than the default 20 iterations.

use cudele_e2e::{errno_of, Api, MdsProcess};
use cudele_proto::pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ROOT: u64 = 1;
const CLIENTS: usize = 4;
const ITERATIONS_DEFAULT: usize = 20;
/// Kill the MDS this long after the clients start (uniformly chosen).
const KILL_DELAY_MIN_MS: u64 = 5;
const KILL_DELAY_MAX_MS: u64 = 700;
/// Upper bound on one RPC; a request the dead MDS never answers fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries per client above which the clients prefer removing things.
const ENTRIES_SOFT_MAX: usize = 60;
/// No reconnect phase: these clients ask for no early replies, so they never have anything to
/// replay, and they do not report reconnecting (a restarted MDS would hold every operation
/// for the reconnect timeout waiting for them).
const MDS_ARGS: [&str; 8] = [
    "--flush-interval-ms",
    "50",
    "--snapshot-interval-ms",
    "300",
    "--lease-ms",
    "120000",
    "--reconnect-timeout-ms",
    "0",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Symlink,
    Directory,
}

impl Kind {
    fn wire(self) -> i32 {
        match self {
            Kind::File => pb::FileKind::Regular as i32,
            Kind::Symlink => pb::FileKind::Symlink as i32,
            Kind::Directory => pb::FileKind::Directory as i32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: Kind,
    perm: u32,
    /// Bytes for files and symlinks (directories: computed from the entries).
    size: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// One client's part of the namespace: its home directory's subtree and its prefixed names
/// in the shared directory.
#[derive(Clone, Debug)]
struct Model {
    home: u64,
    shared: u64,
    prefix: String,
    entries: BTreeMap<(u64, String), u64>,
    nodes: BTreeMap<u64, Node>,
    /// Makes every generated name fresh, across iterations too.
    counter: u64,
}

/// A mutation a client sends.
#[derive(Clone, Debug)]
enum Op {
    Create {
        parent: u64,
        name: String,
        mode: u32,
    },
    Symlink {
        parent: u64,
        name: String,
        target: String,
    },
    Mkdir {
        name: String,
        mode: u32,
    },
    Unlink {
        parent: u64,
        name: String,
    },
    Rmdir {
        name: String,
    },
    Rename {
        parent: u64,
        name: String,
        new_parent: u64,
        new_name: String,
    },
    /// RENAME_EXCHANGE of two file/symlink names.
    Exchange {
        parent: u64,
        name: String,
        new_parent: u64,
        new_name: String,
    },
    Link {
        ino: u64,
        parent: u64,
        name: String,
    },
    Chmod {
        ino: u64,
        mode: u32,
    },
    Truncate {
        ino: u64,
        size: u64,
    },
    SetXattr {
        ino: u64,
        name: String,
        value: Vec<u8>,
    },
}

/// One inode as a client observes it: kind, permission bits, size, link count, xattrs.
type NodeView = (Kind, u32, u64, u32, BTreeMap<String, Vec<u8>>);

/// What the namespace looks like from one client's point of view; compared for equality.
#[derive(Debug, PartialEq, Eq)]
struct View {
    entries: BTreeMap<(u64, String), u64>,
    nodes: BTreeMap<u64, NodeView>,
}

impl Model {
    fn new(home: u64, shared: u64, client: usize) -> Model {
        Model {
            home,
            shared,
            prefix: format!("c{client}-"),
            entries: BTreeMap::new(),
            nodes: BTreeMap::new(),
            counter: 0,
        }
    }

    fn fresh_name(&mut self, tag: &str) -> String {
        self.counter += 1;
        format!("{}{tag}{}", self.prefix, self.counter)
    }

    fn subdirectories(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, node)| node.kind == Kind::Directory).map(|(ino, _)| *ino).collect()
    }

    /// Entries naming files or symlinks.
    fn leaf_entries(&self) -> Vec<((u64, String), u64)> {
        self.entries
            .iter()
            .filter(|(_, ino)| self.nodes[ino].kind != Kind::Directory)
            .map(|(key, ino)| (key.clone(), *ino))
            .collect()
    }

    fn regular_files(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, node)| node.kind == Kind::File).map(|(ino, _)| *ino).collect()
    }

    fn parents(&self) -> Vec<u64> {
        let mut parents = vec![self.home, self.shared];
        parents.extend(self.subdirectories());
        parents
    }

    /// A mutation that must succeed on the current state.
    fn generate(&mut self, rng: &mut StdRng) -> Op {
        let crowded = self.entries.len() > ENTRIES_SOFT_MAX;
        loop {
            let parents = self.parents();
            let parent = parents[rng.random_range(0..parents.len())];
            let leaves = self.leaf_entries();
            let choice = rng.random_range(0..100);
            let op = match choice {
                0..=19 if !crowded => Some(Op::Create {
                    parent,
                    name: self.fresh_name("f"),
                    mode: [0o644, 0o600, 0o755][rng.random_range(0..3)],
                }),
                20..=24 if !crowded => Some(Op::Symlink {
                    parent,
                    name: self.fresh_name("s"),
                    target: format!("target-{}", rng.random_range(0..1000)),
                }),
                25..=29 if !crowded && self.subdirectories().len() < 6 => {
                    Some(Op::Mkdir { name: self.fresh_name("d"), mode: 0o755 })
                }
                30..=44 if !leaves.is_empty() => {
                    let ((parent, name), _) = leaves[rng.random_range(0..leaves.len())].clone();
                    Some(Op::Unlink { parent, name })
                }
                45..=49 => {
                    let empty: Vec<u64> = self
                        .subdirectories()
                        .into_iter()
                        .filter(|directory| !self.entries.keys().any(|(parent, _)| parent == directory))
                        .collect();
                    empty.first().map(|directory| {
                        let name = self.entries.iter().find(|(_, ino)| *ino == directory).expect("named").0 .1.clone();
                        Op::Rmdir { name }
                    })
                }
                50..=64 if !leaves.is_empty() => {
                    let ((source_parent, name), _) = leaves[rng.random_range(0..leaves.len())].clone();
                    // Sometimes replace another file or symlink, else take a fresh name.
                    let (new_parent, new_name) = if rng.random_bool(0.3) {
                        leaves[rng.random_range(0..leaves.len())].0.clone()
                    } else {
                        (parent, self.fresh_name("r"))
                    };
                    Some(Op::Rename { parent: source_parent, name, new_parent, new_name })
                }
                65..=67 => {
                    let directories = self.subdirectories();
                    (!directories.is_empty()).then(|| {
                        let directory = directories[rng.random_range(0..directories.len())];
                        let name = self.entries.iter().find(|(_, ino)| **ino == directory).expect("named").0 .1.clone();
                        Op::Rename { parent: self.home, name, new_parent: self.home, new_name: self.fresh_name("d") }
                    })
                }
                68..=70 if leaves.len() >= 2 => {
                    let ((parent, name), _) = leaves[rng.random_range(0..leaves.len())].clone();
                    let ((new_parent, new_name), _) = leaves[rng.random_range(0..leaves.len())].clone();
                    Some(Op::Exchange { parent, name, new_parent, new_name })
                }
                71..=77 if !leaves.is_empty() && !crowded => {
                    let (_, ino) = leaves[rng.random_range(0..leaves.len())];
                    Some(Op::Link { ino, parent, name: self.fresh_name("l") })
                }
                78..=85 => {
                    let files = self.regular_files();
                    (!files.is_empty()).then(|| Op::Chmod {
                        ino: files[rng.random_range(0..files.len())],
                        mode: [0o644, 0o600, 0o4755, 0o2750, 0o640][rng.random_range(0..5)],
                    })
                }
                86..=92 => {
                    let files = self.regular_files();
                    (!files.is_empty()).then(|| Op::Truncate {
                        ino: files[rng.random_range(0..files.len())],
                        size: rng.random_range(0..1 << 30),
                    })
                }
                93..=99 => {
                    let files = self.regular_files();
                    (!files.is_empty()).then(|| Op::SetXattr {
                        ino: files[rng.random_range(0..files.len())],
                        name: format!("user.k{}", rng.random_range(0..4)),
                        value: vec![rng.random::<u8>(); rng.random_range(0..64)],
                    })
                }
                _ => None,
            };
            if let Some(op) = op {
                return op;
            }
        }
    }

    /// Drop the name `key`; the inode goes with its last name.
    fn remove_entry(&mut self, key: &(u64, String)) {
        let ino = self.entries.remove(key).expect("entry exists in the model");
        if !self.entries.values().any(|other| *other == ino) {
            self.nodes.remove(&ino);
        }
    }

    /// The model after `op` succeeded; `created` is the inode a create-like op made.
    fn apply(&mut self, op: &Op, created: Option<u64>) {
        let node = |kind, perm, size| Node { kind, perm, size, xattrs: BTreeMap::new() };
        match op {
            Op::Create { parent, name, mode } => {
                let ino = created.expect("created inode");
                self.entries.insert((*parent, name.clone()), ino);
                self.nodes.insert(ino, node(Kind::File, *mode, 0));
            }
            Op::Symlink { parent, name, target } => {
                let ino = created.expect("created inode");
                self.entries.insert((*parent, name.clone()), ino);
                self.nodes.insert(ino, node(Kind::Symlink, 0o777, target.len() as u64));
            }
            Op::Mkdir { name, mode } => {
                let ino = created.expect("created inode");
                self.entries.insert((self.home, name.clone()), ino);
                self.nodes.insert(ino, node(Kind::Directory, *mode, 0));
            }
            Op::Unlink { parent, name } => self.remove_entry(&(*parent, name.clone())),
            Op::Rmdir { name } => self.remove_entry(&(self.home, name.clone())),
            Op::Rename { parent, name, new_parent, new_name } => {
                let source = (*parent, name.clone());
                let target = (*new_parent, new_name.clone());
                let ino = self.entries[&source];
                match self.entries.get(&target) {
                    Some(existing) if *existing == ino => return, // two names of one inode: no-op
                    Some(_) => self.remove_entry(&target),
                    None => {}
                }
                self.entries.remove(&source);
                self.entries.insert(target, ino);
            }
            Op::Exchange { parent, name, new_parent, new_name } => {
                let source = (*parent, name.clone());
                let target = (*new_parent, new_name.clone());
                let (source_ino, target_ino) = (self.entries[&source], self.entries[&target]);
                self.entries.insert(source, target_ino);
                self.entries.insert(target, source_ino);
            }
            Op::Link { ino, parent, name } => {
                self.entries.insert((*parent, name.clone()), *ino);
            }
            Op::Chmod { ino, mode } => self.nodes.get_mut(ino).expect("node").perm = *mode,
            Op::Truncate { ino, size } => self.nodes.get_mut(ino).expect("node").size = *size,
            Op::SetXattr { ino, name, value } => {
                self.nodes.get_mut(ino).expect("node").xattrs.insert(name.clone(), value.clone());
            }
        }
    }

    fn view(&self) -> View {
        let nodes = self
            .nodes
            .iter()
            .map(|(ino, node)| {
                let names = self.entries.values().filter(|other| *other == ino).count() as u32;
                let (size, nlink) = match node.kind {
                    Kind::Directory => (self.entries.keys().filter(|(parent, _)| parent == ino).count() as u64, 2),
                    _ => (node.size, names),
                };
                (*ino, (node.kind, node.perm, size, nlink, node.xattrs.clone()))
            })
            .collect();
        View { entries: self.entries.clone(), nodes }
    }
}

/// Send `op`; `Ok(Some(ino))` for ops that create an inode.
async fn execute(api: &mut Api, op: &Op, home: u64) -> Result<Option<u64>, tonic::Status> {
    let mode = pb::RenameMode::RenameReplace;
    let call = async {
        Ok(match op {
            Op::Create { parent, name, mode } => Some(api.create(*parent, name, *mode).await?.ino),
            Op::Symlink { parent, name, target } => Some(api.symlink(*parent, name, target).await?.ino),
            Op::Mkdir { name, mode } => Some(api.mkdir(home, name, *mode).await?.ino),
            Op::Unlink { parent, name } => api.unlink(*parent, name).await.map(|_| None)?,
            Op::Rmdir { name } => api.rmdir(home, name).await.map(|_| None)?,
            Op::Rename { parent, name, new_parent, new_name } => {
                api.rename(*parent, name, *new_parent, new_name, mode).await.map(|_| None)?
            }
            Op::Exchange { parent, name, new_parent, new_name } => {
                api.rename(*parent, name, *new_parent, new_name, pb::RenameMode::RenameExchange).await.map(|_| None)?
            }
            Op::Link { ino, parent, name } => api.link(*ino, *parent, name).await.map(|_| None)?,
            Op::Chmod { ino, mode } => {
                api.setattr(pb::SetAttrRequest { ino: *ino, mode: Some(*mode), ..Default::default() }).await?;
                None
            }
            Op::Truncate { ino, size } => {
                api.setattr(pb::SetAttrRequest { ino: *ino, size: Some(*size), ..Default::default() }).await?;
                None
            }
            Op::SetXattr { ino, name, value } => {
                api.set_xattr(*ino, name, value, pb::XattrMode::XattrUpsert).await.map(|_| None)?
            }
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded("request timed out")),
    }
}

/// How one client's run ended.
struct ClientRun {
    model: Model,
    /// The request that got no reply (the MDS died): it may or may not have happened.
    in_flight: Option<Op>,
    acknowledged: u64,
    /// A reply that carried an errno: the MDS refused a mutation the model says is valid.
    refused: Option<String>,
}

/// Mutate until a request fails (the MDS was killed).
async fn run_client(address: std::net::SocketAddr, mut model: Model, seed: u64, name: String) -> ClientRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut api = match Api::open(address, None, &name).await {
        Ok(api) => api,
        Err(_) => return ClientRun { model, in_flight: None, acknowledged: 0, refused: None },
    };
    let mut acknowledged = 0;
    loop {
        let op = model.generate(&mut rng);
        match execute(&mut api, &op, model.home).await {
            Ok(created) => {
                model.apply(&op, created);
                acknowledged += 1;
            }
            Err(status) if status.metadata().get(cudele_proto::status::ERRNO_METADATA_KEY).is_some() => {
                let refused = format!("{name}: {op:?} refused with errno {}: {status:?}", errno_of(&status));
                return ClientRun { model, in_flight: None, acknowledged, refused: Some(refused) };
            }
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                let refused = format!("{name}: session rejected mid-run: {status:?}");
                return ClientRun { model, in_flight: None, acknowledged, refused: Some(refused) };
            }
            Err(_) => return ClientRun { model, in_flight: Some(op), acknowledged, refused: None },
        }
    }
}

/// Read one client's part of the namespace from the MDS.
async fn observe(api: &mut Api, model: &Model) -> View {
    let mut entries = BTreeMap::new();
    let mut directories = vec![model.home];
    let mut index = 0;
    while index < directories.len() {
        let directory = directories[index];
        index += 1;
        for entry in api.readdir_all(directory, 64).await.expect("readdir") {
            if entry.kind == pb::FileKind::Directory as i32 {
                directories.push(entry.ino);
            }
            entries.insert((directory, String::from_utf8(entry.name).expect("utf-8 name")), entry.ino);
        }
    }
    for entry in api.readdir_all(model.shared, 64).await.expect("readdir shared") {
        let name = String::from_utf8(entry.name).expect("utf-8 name");
        if name.starts_with(&model.prefix) {
            entries.insert((model.shared, name), entry.ino);
        }
    }
    let mut nodes = BTreeMap::new();
    for ino in entries.values() {
        if nodes.contains_key(ino) {
            continue;
        }
        let attr = api.getattr(*ino).await.expect("getattr");
        let kind = match pb::FileKind::try_from(attr.kind).expect("kind") {
            pb::FileKind::Regular => Kind::File,
            pb::FileKind::Symlink => Kind::Symlink,
            pb::FileKind::Directory => Kind::Directory,
            other => panic!("unexpected kind {other:?}"),
        };
        assert_eq!(kind.wire(), attr.kind);
        let mut xattrs = BTreeMap::new();
        let list = api.list_xattr(*ino, 0).await.expect("listxattr");
        for name in list.split(|byte| *byte == 0).filter(|name| !name.is_empty()) {
            let value = api.get_xattr(*ino, name, 0).await.expect("getxattr");
            xattrs.insert(String::from_utf8(name.to_vec()).expect("utf-8 xattr name"), value);
        }
        nodes.insert(*ino, (kind, attr.perm, attr.size, attr.nlink, xattrs));
    }
    View { entries, nodes }
}

/// The model that matches what the MDS holds: the acknowledged state, or that state plus the
/// request that was in flight. Panics with both views if neither matches.
async fn verify(api: &mut Api, run: &ClientRun, context: &str) -> Model {
    let observed = observe(api, &run.model).await;
    let mut candidates = vec![run.model.clone()];
    if let Some(op) = &run.in_flight {
        let created = match op {
            Op::Create { parent, name, .. } | Op::Symlink { parent, name, .. } => {
                observed.entries.get(&(*parent, name.clone())).copied()
            }
            Op::Mkdir { name, .. } => observed.entries.get(&(run.model.home, name.clone())).copied(),
            _ => Some(0),
        };
        if let Some(created) = created {
            let mut applied = run.model.clone();
            applied.apply(op, Some(created));
            candidates.push(applied);
        }
    }
    for candidate in candidates {
        if candidate.view() == observed {
            return candidate;
        }
    }
    let expected = run.model.view();
    let missing: Vec<_> = expected.entries.iter().filter(|(key, ino)| observed.entries.get(key) != Some(ino)).collect();
    let unexpected: Vec<_> =
        observed.entries.iter().filter(|(key, ino)| expected.entries.get(key) != Some(ino)).collect();
    let differing: Vec<_> = expected
        .nodes
        .iter()
        .filter(|(ino, node)| observed.nodes.get(ino) != Some(node))
        .map(|(ino, node)| (ino, node, observed.nodes.get(ino)))
        .collect();
    panic!(
        "{context}: client {} lost acknowledged mutations.\n in flight: {:?}\n entries expected but \
         missing/different: {missing:?}\n entries not expected: {unexpected:?}\n nodes differing (expected, \
         observed): {differing:?}",
        run.model.prefix, run.in_flight
    );
}

fn seed_from_env() -> u64 {
    match std::env::var("CUDELE_CRASH_SEED") {
        Ok(text) => text.trim().parse().expect("CUDELE_CRASH_SEED must be a u64"),
        Err(_) => rand::random(),
    }
}

fn iterations_from_env() -> usize {
    std::env::var("CUDELE_CRASH_ITERATIONS")
        .ok()
        .map(|text| text.trim().parse().expect("CUDELE_CRASH_ITERATIONS must be a number"))
        .unwrap_or(ITERATIONS_DEFAULT)
}

/// Every acknowledged mutation of concurrent clients survives SIGKILL of the MDS at random
/// moments (including during flush, snapshot and trim), and the invariants hold after each
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_mutations_survive_sigkill() {
    let seed = seed_from_env();
    let iterations = iterations_from_env();
    eprintln!("crash test: seed {seed}, {iterations} iterations (replay: CUDELE_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let directory = tempfile::tempdir().unwrap();
    let mut mds = MdsProcess::start(directory.path(), &MDS_ARGS).unwrap();

    let mut setup = Api::open(mds.address, None, "setup").await.unwrap();
    let shared = setup.mkdir(ROOT, "shared", 0o777).await.unwrap().ino;
    let mut models = Vec::new();
    for client in 0..CLIENTS {
        let home = setup.mkdir(ROOT, format!("client-{client}"), 0o755).await.unwrap().ino;
        models.push(Model::new(home, shared, client));
    }

    let started = Instant::now();
    let mut acknowledged_total = 0;
    let mut in_flight_total = 0;
    for iteration in 0..iterations {
        let context = format!("seed {seed} iteration {iteration}");
        let tasks: Vec<_> = models
            .drain(..)
            .enumerate()
            .map(|(client, model)| {
                let client_seed = seed ^ ((iteration as u64) << 32) ^ client as u64;
                tokio::spawn(run_client(mds.address, model, client_seed, format!("crash-{iteration}-{client}")))
            })
            .collect();
        let kill_delay = Duration::from_millis(rng.random_range(KILL_DELAY_MIN_MS..=KILL_DELAY_MAX_MS));
        tokio::time::sleep(kill_delay).await;
        mds.kill();
        let mut runs = Vec::new();
        for task in tasks {
            runs.push(
                tokio::time::timeout(Duration::from_secs(120), task).await.expect("client stopped").expect("client"),
            );
        }
        for run in &runs {
            if let Some(refused) = &run.refused {
                panic!("{context}: {refused}");
            }
        }
        mds.restart().unwrap_or_else(|error| panic!("{context}: restart after SIGKILL failed: {error:#}"));
        let mut checker = Api::open(mds.address, None, "checker").await.unwrap();
        for run in &runs {
            models.push(verify(&mut checker, run, &context).await);
        }
        let dump = checker.dump().await.unwrap();
        assert_eq!(dump.invariant_violation, "", "{context}: invariants broken after restart:\n{}", dump.dump);
        let acknowledged: u64 = runs.iter().map(|run| run.acknowledged).sum();
        let in_flight = runs.iter().filter(|run| run.in_flight.is_some()).count();
        acknowledged_total += acknowledged;
        in_flight_total += in_flight;
        eprintln!(
            "iteration {iteration}: killed after {kill_delay:?}; {acknowledged} acknowledged mutations, \
             {in_flight} in flight; verified"
        );
    }

    // A clean stop (drain + final snapshot) and restart keeps the namespace exactly.
    let mut checker = Api::open(mds.address, None, "final").await.unwrap();
    let before = checker.checked_dump().await;
    mds.stop().unwrap();
    mds.restart().unwrap();
    let mut checker = Api::open(mds.address, None, "final").await.unwrap();
    assert_eq!(checker.checked_dump().await, before, "seed {seed}: SIGTERM + restart changed the namespace");
    let snapshots: Vec<String> = std::fs::read_dir(directory.path().join("objects/snapshots"))
        .map(|listing| {
            listing
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "crash test done in {:?}: {acknowledged_total} acknowledged mutations, {in_flight_total} in flight at \
         kills, snapshot objects present: {snapshots:?}",
        started.elapsed()
    );
    assert!(acknowledged_total > 0, "the clients never got a mutation acknowledged");
}
