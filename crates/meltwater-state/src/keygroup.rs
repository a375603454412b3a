//! Key groups: how keys map to state partitions and subtasks.

use std::sync::Arc;

use ahash::RandomState;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt16Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::UInt16Type;
use datafusion::common::hash_utils::create_hashes;
use datafusion::error::Result;

/// Key groups per job unless `SET 'pipeline.max-parallelism'` says otherwise.
pub const DEFAULT_KEY_GROUPS: u16 = 128;

/// The column holding each row's key group in snapshots of keyed state.
pub const KEY_GROUP_COLUMN: &str = "__key_group";

/// Fixed seeds: a key's hash must be the same in every process and every run, since
/// checkpoints store state by key group.
fn random_state() -> RandomState {
    RandomState::with_seeds(0x6d65_6c74, 0x7761_7465, 0x7273_7461, 0x7465_2121)
}

/// A stable 64-bit hash of each row's key (all `keys` columns together). With no
/// columns every row hashes to 0 (a global aggregate has a single key).
pub fn key_group_hashes(keys: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
    let mut hashes = vec![0u64; rows];
    if !keys.is_empty() {
        create_hashes(keys, &random_state(), &mut hashes)?;
    }
    Ok(hashes)
}

/// Each row's key group.
pub fn key_groups(keys: &[ArrayRef], rows: usize, key_group_count: u16) -> Result<Vec<u16>> {
    let n = key_group_count.max(1) as u64;
    Ok(key_group_hashes(keys, rows)?
        .into_iter()
        .map(|h| (mix(h) % n) as u16)
        .collect())
}

/// Spreads ahash output once more so small key-group counts use every bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The subtask (of `parallelism`) that owns key group `kg` (Flink's assignment:
/// contiguous ranges of near-equal size).
pub fn subtask_for_key_group(kg: u16, key_group_count: u16, parallelism: usize) -> usize {
    (kg as usize * parallelism) / key_group_count.max(1) as usize
}

/// The key groups a subtask owns: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupRange {
    pub start: u16,
    pub end: u16,
}

impl KeyGroupRange {
    /// The range of subtask `index` of `parallelism`, inverse of [`subtask_for_key_group`].
    pub fn of_subtask(index: usize, key_group_count: u16, parallelism: usize) -> Self {
        let n = key_group_count as usize;
        let start = (index * n).div_ceil(parallelism);
        let end = ((index + 1) * n).div_ceil(parallelism);
        Self {
            start: start as u16,
            end: end as u16,
        }
    }

    pub fn contains(&self, kg: u16) -> bool {
        self.start <= kg && kg < self.end
    }

    /// The rows of a snapshot batch (with a [`KEY_GROUP_COLUMN`]) in this range, without
    /// that column.
    pub fn select(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let idx = batch.schema().index_of(KEY_GROUP_COLUMN)?;
        let groups = batch.column(idx).as_primitive::<UInt16Type>();
        let mask: datafusion::arrow::array::BooleanArray = groups
            .iter()
            .map(|g| Some(g.is_some_and(|g| self.contains(g))))
            .collect();
        let mut filtered = filter_record_batch(batch, &mask)?;
        filtered.remove_column(idx);
        Ok(filtered)
    }
}

/// Prepends a [`KEY_GROUP_COLUMN`] to a snapshot batch.
pub fn with_key_groups(batch: &RecordBatch, groups: Vec<u16>) -> Result<RecordBatch> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = vec![Arc::new(Field::new(
        KEY_GROUP_COLUMN,
        DataType::UInt16,
        false,
    ))];
    fields.extend(batch.schema().fields().iter().cloned());
    let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt16Array::from(groups))];
    columns.extend(batch.columns().iter().cloned());
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    #[test]
    fn ranges_cover_all_groups_and_agree_with_assignment() {
        for p in 1..=13usize {
            let mut next = 0u16;
            for i in 0..p {
                let r = KeyGroupRange::of_subtask(i, 128, p);
                assert_eq!(r.start, next, "p={p} i={i}");
                for kg in r.start..r.end {
                    assert_eq!(subtask_for_key_group(kg, 128, p), i, "p={p} kg={kg}");
                }
                next = r.end;
            }
            assert_eq!(next, 128);
        }
    }

    #[test]
    fn hashes_are_stable_and_spread() {
        let keys: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b", "a"])),
            Arc::new(Int64Array::from(vec![1, 1, 1])),
        ];
        let g = key_groups(&keys, 3, 128).unwrap();
        assert_eq!(g[0], g[2]);
        // Pinned: a change here would orphan every stored checkpoint.
        assert_eq!(g, key_groups(&keys, 3, 128).unwrap());
        let many: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10_000));
        let g = key_groups(&[many], 10_000, 128).unwrap();
        let mut counts = [0usize; 128];
        for x in g {
            counts[x as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40 && c < 120), "{counts:?}");
    }
}
