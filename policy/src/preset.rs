//! Named presets: the systems the paper places in Table 2, ready to use without a policies file.

use std::fmt;

use crate::cell::{Cell, Consistency, Durability};
use crate::mechanism::normalise;
use crate::policy::{Interference, Policy};

/// Inodes a preset for a batch job reserves: the paper's DeltaFS and BatchFS examples (§3.3).
const BATCH_ALLOCATED_INODES: u64 = 100_000;

/// A named policy for a well-known way of using a subtree (paper §3.2, Figure 1).
///
/// Each preset has a commented policies file of the same name in `examples/policies/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// strong/global (`RPCs` + `stream`): POSIX as CephFS gives it, and the defaults of an empty file.
    Posix,
    /// weak/local (`append client journal + volatile apply`, `local persist`): a batch job creates files
    /// at local speed, keeps its journal on local disk and merges it when done; others are blocked.
    BatchFs,
    /// invisible/local (`append client journal`, `local persist`): the job's namespace stays on its
    /// clients' disks; middleware merges it later with the journal tool; others are blocked.
    DeltaFs,
    /// weak/global (`append client journal + volatile apply`, `global persist`): checkpoint files are
    /// written locally, the journal saved in the object store, and merged at the end of the phase.
    Checkpoint,
    /// invisible/none (`append client journal`, `durability: none`): scratch space in client memory,
    /// never merged, lost with the client.
    RamDisk,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 5] = [Preset::Posix, Preset::BatchFs, Preset::DeltaFs, Preset::Checkpoint, Preset::RamDisk];

    /// The preset's name, which is also its example file's stem: `posix`, `batchfs`, `deltafs`,
    /// `checkpoint`, `ramdisk`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Posix => "posix",
            Preset::BatchFs => "batchfs",
            Preset::DeltaFs => "deltafs",
            Preset::Checkpoint => "checkpoint",
            Preset::RamDisk => "ramdisk",
        }
    }

    /// The preset named `name`, in any case (`"BatchFS"`, `"ram-disk"`).
    pub fn from_name(name: &str) -> Option<Preset> {
        let key = normalise(name);
        Preset::ALL.into_iter().find(|preset| preset.name() == key)
    }

    /// The preset's cell.
    pub fn cell(self) -> Cell {
        match self {
            Preset::Posix => Cell::new(Consistency::Strong, Durability::Global),
            Preset::BatchFs => Cell::new(Consistency::Weak, Durability::Local),
            Preset::DeltaFs => Cell::new(Consistency::Invisible, Durability::Local),
            Preset::Checkpoint => Cell::new(Consistency::Weak, Durability::Global),
            Preset::RamDisk => Cell::new(Consistency::Invisible, Durability::None),
        }
    }

    /// The preset's policy: its cell's Table 2 mechanisms; the decoupled presets reserve 100000 inodes
    /// and block other clients, as the paper's DeltaFS and BatchFS examples do.
    pub fn policy(self) -> Policy {
        let policy = Policy::for_cell(self.cell());
        match self {
            Preset::Posix => policy,
            Preset::BatchFs | Preset::DeltaFs | Preset::Checkpoint | Preset::RamDisk => {
                policy.with_decoupling(BATCH_ALLOCATED_INODES, Interference::Block)
            }
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_their_papers_cells() {
        // Proves each preset lands in the cell the paper assigns the system it is named after.
        for preset in Preset::ALL {
            assert_eq!(preset.policy().cell(), preset.cell(), "{preset}");
            assert_eq!(Preset::from_name(preset.name()), Some(preset));
        }
        assert_eq!(Preset::Posix.policy(), Policy::default());
        assert_eq!(Preset::from_name("BatchFS"), Some(Preset::BatchFs));
        assert_eq!(Preset::from_name("ram-disk"), Some(Preset::RamDisk));
        assert_eq!(Preset::from_name("lustre"), None);
    }
}
