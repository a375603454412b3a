//! Equality deletes applied by hash lookup.
//!
//! The crate's reader turns the rows of equality-delete files into one predicate per
//! deleted row, so its cost grows with rows × deleted keys. Meltwater takes the equality
//! deletes out of each file scan task (the crate has already chosen which delete files
//! apply to which data file, by partition and sequence number) and applies them itself:
//! each delete file is read once per scan into a set of its keys (a bitmap or a hash set
//! for one integer key, encoded rows otherwise; shared by every task it applies to), the
//! sets of the files on the same key columns that apply to a task are merged into one
//! (once per scan for each combination of files), and every data row is looked up once
//! in it (for an integer key, in a tight loop over the column's values). Position deletes
//! stay with the crate's reader, which turns them into row selections.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{cast, filter_record_batch, max, min};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use iceberg::io::FileIO;
use iceberg::scan::{FileScanTask, FileScanTaskDeleteFile};
use iceberg::spec::{DataContentType, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use tokio::sync::OnceCell;

/// The keys of one equality-delete file.
#[derive(Debug)]
enum KeySet {
    /// One integer key column (the common case: fast path without row encoding).
    Int(IntSet),
    /// Any other key: rows encoded with an Arrow row converter over `types`.
    Rows {
        types: Vec<DataType>,
        converter: RowConverter,
        keys: HashSet<Box<[u8]>, ahash::RandomState>,
    },
}

/// A set of integer keys: a bitmap over their range when it is dense enough (upserts
/// usually delete runs of nearby ids; a lookup is then a bit test in a small array),
/// else a hash set.
#[derive(Debug)]
enum IntSet {
    /// Key `min + i` is in the set when bit `i` is set, for `i < len` (the range
    /// `max - min + 1`; the bits past it are zero).
    Bitmap { min: i64, len: u64, bits: Vec<u64> },
    /// The keys, and the lowest and highest of them.
    Hash {
        keys: HashSet<i64, ahash::RandomState>,
        lo: i64,
        hi: i64,
    },
}

impl IntSet {
    fn new(keys: Vec<i64>) -> Self {
        let (Some(&min), Some(&max)) = (keys.iter().min(), keys.iter().max()) else {
            return IntSet::Hash {
                keys: HashSet::default(),
                lo: 0,
                hi: -1,
            };
        };
        let range = (max as i128 - min as i128 + 1) as u128;
        // At most 32 bits per key, or 8 Mbit (1 MiB) whatever the count.
        if range <= (keys.len() as u128 * 32).max(1 << 23) {
            let mut bits = vec![0u64; (range as usize).div_ceil(64)];
            for k in keys {
                let i = k.wrapping_sub(min) as u64;
                bits[(i / 64) as usize] |= 1 << (i % 64);
            }
            IntSet::Bitmap {
                min,
                len: range as u64,
                bits,
            }
        } else {
            let mut set = HashSet::with_capacity_and_hasher(keys.len(), ahash::RandomState::new());
            set.extend(keys);
            IntSet::Hash {
                keys: set,
                lo: min,
                hi: max,
            }
        }
    }

    /// Every key of the set, in no particular order.
    fn keys(&self) -> Vec<i64> {
        match self {
            IntSet::Bitmap { min, bits, .. } => {
                let mut keys = Vec::new();
                for (w, &word) in bits.iter().enumerate() {
                    let mut word = word;
                    while word != 0 {
                        let bit = word.trailing_zeros() as u64;
                        keys.push(min.wrapping_add((w as u64 * 64 + bit) as i64));
                        word &= word - 1;
                    }
                }
                keys
            }
            IntSet::Hash { keys, .. } => keys.iter().copied().collect(),
        }
    }

    /// Whether some key lies in `lo..=hi`, as far as the set's own bounds tell (a batch
    /// of data rows outside them keeps every row without a lookup).
    fn may_overlap(&self, lo: i64, hi: i64) -> bool {
        let (min, max) = match self {
            IntSet::Bitmap { min, len, .. } => (*min, min.wrapping_add(*len as i64 - 1)),
            IntSet::Hash { lo, hi, .. } => (*lo, *hi),
        };
        min <= max && lo <= max && hi >= min
    }

    #[cfg(test)]
    fn contains(&self, k: i64) -> bool {
        !self.keep_mask(&[k]).value(0)
    }

    /// For each of `values`, whether it is not in the set (the rows to keep).
    fn keep_mask(&self, values: &[i64]) -> BooleanBuffer {
        match self {
            IntSet::Bitmap { min, len, bits } => {
                let (min, len) = (*min, *len);
                // `k - min` wraps to at least `len` for every `k` below `min` (the range
                // ends at i64::MAX at most), so one comparison bounds both sides.
                BooleanBuffer::collect_bool(values.len(), |i| {
                    let d = values[i].wrapping_sub(min) as u64;
                    d >= len || bits[(d / 64) as usize] & (1 << (d % 64)) == 0
                })
            }
            IntSet::Hash { keys, .. } => {
                BooleanBuffer::collect_bool(values.len(), |i| !keys.contains(&values[i]))
            }
        }
    }
}

/// Delete files loaded during one scan, by path, and the merged key sets of the delete
/// files that apply together to a task, by their key columns and paths.
#[derive(Debug, Default)]
pub(crate) struct DeleteCache {
    files: Mutex<HashMap<String, Arc<OnceCell<Arc<KeySet>>>>>,
    merged: Mutex<HashMap<String, Arc<OnceCell<Arc<KeySet>>>>>,
}

/// The equality deletes of one task: for each list of key columns (by name in the data
/// batches), one key set, the union of the keys of every delete file on those columns
/// that applies to the task (an upsert writes one delete file per writer subtask, so a
/// row is looked up once, not once per subtask).
pub(crate) struct TaskDeletes {
    sets: Vec<(Vec<String>, Arc<KeySet>)>,
}

/// Takes the equality deletes out of `task` (the crate's reader keeps the position
/// deletes) and makes sure the task reads their key columns. Returns the names of the
/// columns added to the projection only for the deletes.
pub(crate) fn take_equality_deletes(
    task: &mut FileScanTask,
) -> Result<(Vec<FileScanTaskDeleteFile>, Vec<String>)> {
    let (eq, other): (Vec<_>, Vec<_>) = std::mem::take(&mut task.deletes)
        .into_iter()
        .partition(|d| d.file_type == DataContentType::EqualityDeletes);
    task.deletes = other;
    let mut added = Vec::new();
    for d in &eq {
        for id in d.equality_ids.iter().flatten() {
            if !task.project_field_ids.contains(id) {
                task.project_field_ids.push(*id);
                added.push(field_name(&task.schema, *id)?);
            }
        }
    }
    Ok((eq, added))
}

fn field_name(schema: &Schema, id: i32) -> Result<String> {
    schema
        .name_by_field_id(id)
        .map(str::to_string)
        .ok_or_else(|| {
            DataFusionError::Execution(format!(
                "an equality delete names field {id}, which the table schema does not have"
            ))
        })
}

impl DeleteCache {
    /// Loads (once per scan) the key sets of `deletes` for data rows whose key columns
    /// have the types in `task`'s schema.
    pub(crate) async fn load(
        &self,
        file_io: &FileIO,
        task: &FileScanTask,
        deletes: &[FileScanTaskDeleteFile],
    ) -> Result<TaskDeletes> {
        // The delete files by key columns, in the order first named.
        let mut groups: Vec<(Vec<i32>, Vec<&FileScanTaskDeleteFile>)> = Vec::new();
        for d in deletes {
            let ids = d.equality_ids.clone().unwrap_or_default();
            match groups.iter_mut().find(|(g, _)| *g == ids) {
                Some((_, files)) => files.push(d),
                None => groups.push((ids, vec![d])),
            }
        }
        let mut sets = Vec::new();
        for (ids, files) in groups {
            let names = ids
                .iter()
                .map(|id| field_name(&task.schema, *id))
                .collect::<Result<Vec<_>>>()?;
            let types = ids
                .iter()
                .map(|id| {
                    let field = task.schema.field_by_id(*id).expect("named above");
                    iceberg::arrow::type_to_arrow_type(&field.field_type)
                        .map_err(|e| DataFusionError::External(Box::new(e)))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut loaded = Vec::with_capacity(files.len());
            for d in &files {
                let cell = self
                    .files
                    .lock()
                    .expect("delete cache lock")
                    .entry(d.file_path.clone())
                    .or_default()
                    .clone();
                let set = cell
                    .get_or_try_init(|| load_key_set(file_io, &d.file_path, &names, types.clone()))
                    .await?
                    .clone();
                loaded.push(set);
            }
            let set = if loaded.len() == 1 {
                loaded.pop().expect("one set")
            } else {
                let mut paths: Vec<&str> = files.iter().map(|d| d.file_path.as_str()).collect();
                paths.sort_unstable();
                let key = format!("{ids:?}\n{}", paths.join("\n"));
                let cell = self
                    .merged
                    .lock()
                    .expect("delete cache lock")
                    .entry(key)
                    .or_default()
                    .clone();
                cell.get_or_try_init(|| async { merge(&loaded).map(Arc::new) })
                    .await?
                    .clone()
            };
            sets.push((names, set));
        }
        Ok(TaskDeletes { sets })
    }
}

/// One key set holding the keys of all `sets` (key sets on the same columns).
fn merge(sets: &[Arc<KeySet>]) -> Result<KeySet> {
    match sets.first().map(Arc::as_ref) {
        Some(KeySet::Int(_)) => {
            let mut keys = Vec::new();
            for set in sets {
                let KeySet::Int(ints) = set.as_ref() else {
                    return Err(mixed_keys());
                };
                keys.extend(ints.keys());
            }
            Ok(KeySet::Int(IntSet::new(keys)))
        }
        Some(KeySet::Rows { types, .. }) => {
            let mut keys: HashSet<Box<[u8]>, ahash::RandomState> = HashSet::default();
            for set in sets {
                let KeySet::Rows { keys: k, .. } = set.as_ref() else {
                    return Err(mixed_keys());
                };
                keys.extend(k.iter().cloned());
            }
            Ok(KeySet::Rows {
                types: types.clone(),
                converter: RowConverter::new(types.iter().cloned().map(SortField::new).collect())?,
                keys,
            })
        }
        None => Ok(KeySet::Int(IntSet::new(Vec::new()))),
    }
}

fn mixed_keys() -> DataFusionError {
    DataFusionError::Internal(
        "equality deletes on the same columns loaded as different key kinds".into(),
    )
}

/// A reader of the Parquet delete file `path` (errors name the `kind` of deletes).
pub(crate) async fn open_delete_file(
    file_io: &FileIO,
    path: &str,
    kind: &str,
) -> Result<ParquetRecordBatchReader> {
    let context =
        |e: String| DataFusionError::Execution(format!("reading the {kind} deletes {path}: {e}"));
    let bytes = file_io
        .new_input(path)
        .map_err(|e| context(e.to_string()))?
        .read()
        .await
        .map_err(|e| context(e.to_string()))?;
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| context(e.to_string()))?
        .build()
        .map_err(|e| context(e.to_string()))
}

async fn load_key_set(
    file_io: &FileIO,
    path: &str,
    names: &[String],
    types: Vec<DataType>,
) -> Result<Arc<KeySet>> {
    let context =
        |e: String| DataFusionError::Execution(format!("reading the equality deletes {path}: {e}"));
    let reader = open_delete_file(file_io, path, "equality").await?;
    let int_key = types.len() == 1 && matches!(types[0], DataType::Int64 | DataType::Int32);
    let mut ints: Vec<i64> = Vec::new();
    let mut rows: HashSet<Box<[u8]>, ahash::RandomState> = HashSet::default();
    let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())?;
    for batch in reader {
        let batch = batch.map_err(|e| context(e.to_string()))?;
        let mut columns = Vec::with_capacity(names.len());
        for (name, t) in names.iter().zip(&types) {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| context(format!("it has no column '{name}'")))?;
            columns.push(cast(column, t)?);
        }
        if int_key {
            let c = cast(&columns[0], &DataType::Int64)?;
            let c = c.as_primitive::<Int64Type>();
            if c.null_count() == 0 {
                ints.extend_from_slice(c.values());
            } else {
                ints.extend(c.iter().flatten());
            }
        } else {
            let encoded = converter.convert_columns(&columns)?;
            rows.extend(encoded.iter().map(|r| Box::<[u8]>::from(r.as_ref())));
        }
    }
    Ok(Arc::new(if int_key {
        KeySet::Int(IntSet::new(ints))
    } else {
        KeySet::Rows {
            types,
            converter,
            keys: rows,
        }
    }))
}

impl TaskDeletes {
    pub(crate) fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// `batch` without the rows whose key is in any of the delete files.
    pub(crate) fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut keep: Option<BooleanBuffer> = None;
        for (names, set) in &self.sets {
            let columns = names
                .iter()
                .map(|n| {
                    batch.column_by_name(n).cloned().ok_or_else(|| {
                        DataFusionError::Internal(format!("equality delete column {n} not read"))
                    })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let mask = match set.as_ref() {
                KeySet::Int(ints) => {
                    let c = match columns[0].data_type() {
                        DataType::Int64 => columns[0].clone(),
                        _ => cast(&columns[0], &DataType::Int64)?,
                    };
                    let c = c.as_primitive::<Int64Type>();
                    // Rows clustered by key (upserts of recent ids) mostly come in batches
                    // whose key range no deleted key falls in: two vectorized passes
                    // instead of a lookup per row.
                    let (Some(lo), Some(hi)) = (min(c), max(c)) else {
                        continue;
                    };
                    if !ints.may_overlap(lo, hi) {
                        continue;
                    }
                    let keep = ints.keep_mask(c.values());
                    // Rows with a NULL key are never deleted.
                    match c.nulls() {
                        Some(nulls) if nulls.null_count() > 0 => &keep | &!nulls.inner(),
                        _ => keep,
                    }
                }
                KeySet::Rows {
                    types,
                    converter,
                    keys,
                } => {
                    let columns = columns
                        .iter()
                        .zip(types)
                        .map(|(c, t)| Ok(cast(c, t)?))
                        .collect::<Result<Vec<_>>>()?;
                    let encoded = converter.convert_columns(&columns)?;
                    BooleanBuffer::collect_bool(encoded.num_rows(), |i| {
                        !keys.contains(encoded.row(i).as_ref())
                    })
                }
            };
            keep = Some(match keep {
                None => mask,
                Some(k) => &k & &mask,
            });
        }
        let Some(keep) = keep else {
            return Ok(batch);
        };
        match keep.count_set_bits() {
            n if n == batch.num_rows() => Ok(batch),
            0 => Ok(batch.slice(0, 0)),
            _ => Ok(filter_record_batch(&batch, &BooleanArray::new(keep, None))?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[i64]) -> IntSet {
        IntSet::new(keys.to_vec())
    }

    #[test]
    fn dense_keys_use_a_bitmap_and_sparse_ones_a_hash() {
        let dense = set(&[-3, 0, 5, 63, 64, 1000]);
        assert!(matches!(dense, IntSet::Bitmap { .. }));
        for k in [-3, 0, 5, 63, 64, 1000] {
            assert!(dense.contains(k), "{k}");
        }
        for k in [i64::MIN, -4, -2, 1, 62, 65, 999, 1001, i64::MAX] {
            assert!(!dense.contains(k), "{k}");
        }
        let sparse = set(&[i64::MIN, 0, i64::MAX]);
        assert!(matches!(sparse, IntSet::Hash { .. }));
        assert!(sparse.contains(i64::MIN) && sparse.contains(0) && sparse.contains(i64::MAX));
        assert!(!sparse.contains(1));
        assert!(!set(&[]).contains(0));
    }

    #[test]
    fn bounds_tell_batches_no_key_can_be_in() {
        for keys in [vec![10, 20, 30], vec![i64::MIN, 10, 30]] {
            let s = set(&keys);
            assert!(s.may_overlap(30, 40) && s.may_overlap(0, 10) && s.may_overlap(15, 16));
            assert!(!s.may_overlap(31, i64::MAX));
        }
        assert!(!set(&[10, 20, 30]).may_overlap(i64::MIN, 9));
        assert!(!set(&[]).may_overlap(i64::MIN, i64::MAX));
    }
}
