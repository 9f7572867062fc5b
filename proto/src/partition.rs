//! The one partition function of the replica layer (DESIGN.md §7): which cache deployment
//! owns a directory. Clients route with it, replicas admit cache entries with it and the MDS
//! targets invalidations with it, so all three must call exactly this function.
//!
//! The key is a directory's inode number — the parent of the entries being looked up or
//! listed, or the home directory of an inode whose attributes are cached. Inode numbers never
//! change, so a rename moves no partition. The hash is Lamping and Veach's jump consistent
//! hash over a SplitMix64-mixed key: O(ln n) time, no memory, an even spread, and when the
//! number of deployments grows from n to n+1 only about 1/(n+1) of the keys move (all of them
//! to the new deployment).

/// Most cache deployments a namespace may be split into.
pub const DEPLOYMENTS_MAX: u32 = 1024;

/// The deployment (0..deployments) that owns directory `directory`. `deployments` of 0 or 1
/// both give 0.
pub fn deployment_of(directory: u64, deployments: u32) -> u32 {
    jump_consistent_hash(mix(directory), deployments.clamp(1, DEPLOYMENTS_MAX))
}

/// SplitMix64's finaliser: inode numbers are dense and sequential, jump hash wants keys whose
/// bits all vary.
fn mix(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// "A Fast, Minimal Memory, Consistent Hash Algorithm" (Lamping, Veach 2014), verbatim.
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    debug_assert!((0..i64::from(buckets)).contains(&bucket));
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: u64 = 100_000;

    /// The function is pinned: a change would silently split clients, replicas and the MDS
    /// of different versions across different partitions.
    #[test]
    fn values_are_stable() {
        let pinned: Vec<u32> = (1..=12).map(|ino| deployment_of(ino, 8)).collect();
        assert_eq!(pinned, vec![3, 0, 4, 7, 3, 5, 7, 5, 7, 5, 6, 7]);
        assert_eq!(deployment_of(1, 1), 0);
        assert_eq!(deployment_of(u64::MAX, 0), 0);
        for ino in 0..1000 {
            assert_eq!(deployment_of(ino, 5), deployment_of(ino, 5));
            assert!(deployment_of(ino, 5) < 5);
        }
    }

    /// The hash matches the published algorithm's reference values (go-jump's test table).
    #[test]
    fn jump_hash_matches_reference_values() {
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(42, 57), 43);
        assert_eq!(jump_consistent_hash(0xDEAD_10CC, 1), 0);
        assert_eq!(jump_consistent_hash(0xDEAD_10CC, 666), 361);
        assert_eq!(jump_consistent_hash(256, 1024), 520);
    }

    /// Sequential inode numbers spread evenly: every deployment within 5% of the mean.
    #[test]
    fn sequential_inodes_balance() {
        for deployments in [2u32, 3, 4, 7, 8, 16] {
            let mut counts = vec![0u64; deployments as usize];
            for ino in 1..=KEYS {
                counts[deployment_of(ino, deployments) as usize] += 1;
            }
            let mean = KEYS as f64 / f64::from(deployments);
            for (deployment, count) in counts.iter().enumerate() {
                let deviation = (*count as f64 - mean).abs() / mean;
                assert!(deviation < 0.05, "{deployments} deployments: #{deployment} has {count} (mean {mean})");
            }
        }
    }

    /// Growing from n to n+1 deployments moves about 1/(n+1) of the keys, all to the new one.
    #[test]
    fn growth_moves_few_keys_and_only_to_the_new_deployment() {
        for deployments in 1u32..12 {
            let mut moved = 0u64;
            for ino in 1..=KEYS {
                let before = deployment_of(ino, deployments);
                let after = deployment_of(ino, deployments + 1);
                if before != after {
                    assert_eq!(after, deployments, "key {ino} moved between old deployments");
                    moved += 1;
                }
            }
            let expected = KEYS as f64 / f64::from(deployments + 1);
            let ratio = moved as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{deployments}->{}: moved {moved}, expected {expected}",
                deployments + 1
            );
        }
    }
}
